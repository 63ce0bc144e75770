// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Gossip strategies.
///
/// | strategy          | picks                                    | when to use                   |
/// |-------------------|------------------------------------------|-------------------------------|
/// | `uniform_gossip`  | k distinct peers uniformly among n - 1   | the paper's protocol; equal
/// devices | | `random_k<K>`     | the same, with k fixed at compile time   | static topologies |
///
/// More strategies (graph neighbours, round-robin, load-aware) live beside these.

#include <cstddef>
#include <cstdint>
#include <span>

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
    std::size_t written = 0;
    // Floyd: for j in [others - take, others), draw t in [0, j]; keep t unless already taken,
    // then keep j. Indices count the other devices, skipping the origin.
    for (std::size_t j = others - take; j < others; ++j) {
      auto t = static_cast<std::uint32_t>(ctx.random->below(j + 1));
      for (std::size_t i = 0; i < written; ++i)
        if (out[i] == t) {
          t = static_cast<std::uint32_t>(j);
          break;
        }
      out[written++] = t;
    }
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
