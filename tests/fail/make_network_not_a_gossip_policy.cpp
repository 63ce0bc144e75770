// SPDX-License-Identifier: MIT
// build error: the third argument must be a gossip strategy
#include <moa/backends/synthetic.hpp>
#include <moa/net/network.hpp>

#ifdef MOA_SHOULD_FAIL
struct looks_like_gossip {  // has select() but did not opt in with moa_policy
  static constexpr std::size_t static_fanout = 1;
  std::size_t fanout() const { return 1; }
  std::size_t select(const moa::gossip_context&, std::span<std::uint32_t>) const { return 0; }
};
using edge = moa::gossip_topology<moa::devices<2>, moa::layers<1>, looks_like_gossip>;
#else
using edge = moa::gossip_topology<moa::devices<2>, moa::layers<1>, moa::random_k<1> >;
#endif
using b = moa::synthetic_backend;

auto make() {
  return moa::net::make_network<edge>(b{}, b{});
}
