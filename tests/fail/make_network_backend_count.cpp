// SPDX-License-Identifier: MIT
// build error: network_backend_count_mismatch<4, ?3>
#include <moa/backends/synthetic.hpp>
#include <moa/net/network.hpp>

using edge = moa::gossip_topology<moa::devices<4>, moa::layers<2>, moa::random_k<2>>;
using b = moa::synthetic_backend;

#ifdef MOA_SHOULD_FAIL
auto make() {
  return moa::net::make_network<edge>(b{}, b{}, b{});
}
#else
auto make() {
  return moa::net::make_network<edge>(b{}, b{}, b{}, b{});
}
#endif
