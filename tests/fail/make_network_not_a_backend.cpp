// SPDX-License-Identifier: MIT
// build error: every argument after the options must be a backend
#include <moa/backends/synthetic.hpp>
#include <moa/net/network.hpp>

using edge = moa::gossip_topology<moa::devices<2>, moa::layers<1>, moa::random_k<1>>;
using b = moa::synthetic_backend;

#ifdef MOA_SHOULD_FAIL
struct not_a_model {};
auto make() {
  return moa::net::make_network<edge>(b{}, not_a_model{});
}
#else
auto make() {
  return moa::net::make_network<edge>(b{}, b{});
}
#endif
