// SPDX-License-Identifier: MIT
// build error: the topology must be a moa::gossip_topology
#include <moa/backends/synthetic.hpp>
#include <moa/net/network.hpp>
#include <moa/topology/layered.hpp>

#ifdef MOA_SHOULD_FAIL
using edge = moa::topology<moa::layers<1, moa::proposers<0, 1>>, moa::aggregator<0>>;
#else
using edge = moa::gossip_topology<moa::devices<2>, moa::layers<1>, moa::random_k<1>>;
#endif
using b = moa::synthetic_backend;

auto make() {
  return moa::net::make_network<edge>(b{}, b{});
}
