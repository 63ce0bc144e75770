// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Load-aware gossip: power of d choices on the queue lengths that devices gossip to each other.
///
/// Why: uniform gossip sends every device the same share of calls, so the slowest device bounds
/// the whole network (n = 4, M = 2, k = 2, one device three times slower: unstable above
/// lambda = 0.048 per user). Steering calls away from long queues lets the fast devices absorb
/// the slow one's share; the bound is then the slow device's own work, 1 / (3 (M + 1)) = 0.111.
/// Sampling d candidates, not all n - 1, keeps the choice O(d) and avoids herding, where every
/// origin picks the same momentarily short queue (Mitzenmacher, "The power of two choices").

#include <cstddef>
#include <cstdint>
#include <span>

#include "moa/core/random.hpp"
#include "moa/gossip/gossip_concepts.hpp"

namespace moa {

/// @brief Draws d distinct candidates among the other devices and keeps the k with the shortest
/// gossiped queues (`gossip_context::load`); ties go to the earlier draw, so they are random.
/// Without load information it is uniform_gossip. d = 0 means every other device.
///
/// @code{.cpp}
/// moa::least_loaded_gossip g{.k = 2, .d = 3};
/// double queues[] = {4, 0, 9, 1};
/// moa::rng random(1);
/// std::uint32_t peers[2];
/// g.select({.origin = 0, .devices = 4, .layer = 1, .random = &random, .load = queues}, peers);
/// // peers = {1, 3}: the two shortest queues among devices 1, 2, 3
/// @endcode
struct least_loaded_gossip {
  using moa_policy = gossip_tag;
  static constexpr std::size_t max_candidates = 64;
  /// Tells networks to refresh the loads before each layer is forked.
  static constexpr bool uses_load = true;
  std::size_t k = 1;
  std::size_t d = 0;

  [[nodiscard]] std::size_t fanout() const noexcept { return k; }

  std::size_t select(const gossip_context& ctx, std::span<std::uint32_t> out) const noexcept {
    const std::size_t others = ctx.devices ? ctx.devices - 1 : 0;
    std::size_t take = k < others ? k : others;
    if (take > out.size()) take = out.size();
    std::size_t pool = d == 0 ? others : (d < take ? take : (d < others ? d : others));
    if (pool > max_candidates) pool = max_candidates;
    if (take > pool) take = pool;
    std::uint32_t cand[max_candidates];
    const std::size_t drawn = sample_distinct(*ctx.random, others, std::span(cand, pool));
    // Floyd gives a uniform subset but not a uniform order; shuffle, so that taking the first k
    // (no loads) or breaking ties by position (equal loads) is uniform too.
    for (std::size_t i = drawn; i > 1; --i) {
      const auto j = static_cast<std::size_t>(ctx.random->below(i));
      const std::uint32_t t = cand[i - 1];
      cand[i - 1] = cand[j];
      cand[j] = t;
    }
    for (std::size_t i = 0; i < drawn; ++i)
      if (cand[i] >= ctx.origin) ++cand[i];
    if (ctx.load.size() >= ctx.devices) {
      // Partial selection sort: the k shortest queues, stable so ties keep the random order.
      for (std::size_t i = 0; i < take; ++i) {
        std::size_t best = i;
        for (std::size_t j = i + 1; j < drawn; ++j)
          if (ctx.load[cand[j]] < ctx.load[cand[best]]) best = j;
        const std::uint32_t chosen = cand[best];
        for (std::size_t j = best; j > i; --j) cand[j] = cand[j - 1];
        cand[i] = chosen;
      }
    }
    for (std::size_t i = 0; i < take; ++i) out[i] = cand[i];
    return take;
  }
};

/// @brief least_loaded_gossip with k and d fixed in the type (power of D choices for K peers).
template <std::size_t K, std::size_t D = 0>
struct power_of_d : least_loaded_gossip {
  static_assert(D == 0 || D >= K,
                "moa::power_of_d<K, D>: draw at least K candidates (D >= K), or D = 0 for all");
  static constexpr std::size_t static_fanout = K;
  constexpr power_of_d() noexcept : least_loaded_gossip{K, D} {}
};

static_assert(GossipPolicy<least_loaded_gossip>);
static_assert(GossipPolicy<power_of_d<2, 3>>);

}  // namespace moa
