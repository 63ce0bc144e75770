// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Gossip strategies: the catalogue. Each has a runtime form (k, and its data, given at run
/// time) and a compile-time form (k in the type, for moa::gossip_topology's checks).
///
/// | runtime (header)                    | compile time       | picks per layer               |
/// |-------------------------------------|--------------------|-------------------------------|
/// | `uniform_gossip` (random_k.hpp)     | `random_k<K>`      | k uniformly among the n - 1   |
/// | `graph_gossip` (graph.hpp)          | `neighbours_k<K>`  | k of the origin's neighbours  |
/// | `round_robin_gossip` (round_robin)  | `round_robin_k<K>` | the next k in cyclic order    |
/// | `least_loaded_gossip` (load_aware)  | `power_of_d<K, D>` | k shortest queues of d drawn  |
/// | `queueing::matrix_gossip`           | -                  | by inclusion probabilities    |
///
/// When to use:
/// - uniform: the paper's protocol; equal devices and equal users; what the closed-form
///   stability analysis assumes;
/// - graph: devices that can only reach some others (radio range, regions);
/// - round robin: equal devices, and the fewest surprises (no sampling noise in the load);
/// - load aware: devices of different speeds, or bursty users: steers calls away from long
///   queues and can reach the capacity bound where uniform gossip is bound by the slowest device;
/// - matrix: a static steering computed offline (for example from the traffic equations).
///
/// moa/gossip/strategies.hpp includes them all.

#include <cstddef>
#include <cstdint>
#include <span>

#include "moa/core/random.hpp"
#include "moa/gossip/gossip_concepts.hpp"

namespace moa {

/// @brief k distinct peers drawn uniformly from the n - 1 other devices (Floyd's sampling: k
/// draws, no allocation, exact uniformity over k-subsets).
struct uniform_gossip {
  using moa_policy = gossip_tag;
  std::size_t k = 1;

  [[nodiscard]] std::size_t fanout() const noexcept { return k; }

  std::size_t select(const gossip_context& ctx, std::span<std::uint32_t> out) const noexcept {
    const std::size_t others = ctx.devices ? ctx.devices - 1 : 0;
    const std::size_t want = k < others ? k : others;
    const std::size_t take = want < out.size() ? want : out.size();
    // Indices count the other devices, skipping the origin.
    const std::size_t written = sample_distinct(*ctx.random, others, out.first(take));
    for (std::size_t i = 0; i < written; ++i)
      if (out[i] >= ctx.origin) ++out[i];
    return written;
  }
};

/// @brief uniform_gossip with k fixed in the type, so a topology can check k <= n - 1 at
/// compile time.
template <std::size_t K>
struct random_k : uniform_gossip {
  static constexpr std::size_t static_fanout = K;
  constexpr random_k() noexcept : uniform_gossip{K} {}
};

static_assert(GossipPolicy<uniform_gossip>);
static_assert(GossipPolicy<random_k<2>>);

}  // namespace moa
