// SPDX-License-Identifier: MIT
// build error: gossip fan-out k is larger than n-1
#include <moa/backends/synthetic.hpp>
#include <moa/net/network.hpp>

#ifdef MOA_SHOULD_FAIL
using edge = moa::gossip_topology<moa::devices<3>, moa::layers<1>, moa::random_k<3>>;
#else
using edge = moa::gossip_topology<moa::devices<3>, moa::layers<1>, moa::random_k<2>>;
#endif
using b = moa::synthetic_backend;

auto make() {
  return moa::net::make_network<edge>(b{}, b{}, b{});
}
