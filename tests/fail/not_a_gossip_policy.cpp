// SPDX-License-Identifier: MIT
// build error: the third argument must be a gossip strategy
#include <moa/moa.hpp>

#ifdef MOA_SHOULD_FAIL
struct looks_like_gossip {  // has select() but did not opt in with moa_policy
  static constexpr std::size_t static_fanout = 1;
  std::size_t fanout() const { return 1; }
  std::size_t select(const moa::gossip_context&, std::span<std::uint32_t>) const { return 0; }
};
using edge = moa::gossip_topology<moa::devices<4>, moa::layers<2>, looks_like_gossip>;
#else
using edge = moa::gossip_topology<moa::devices<4>, moa::layers<2>, moa::random_k<1> >;
#endif

constexpr auto calls = edge::calls_per_prompt;
