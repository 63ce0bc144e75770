// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// What a gossip strategy is. Writing a strategy needs only this header.
///
/// A gossip strategy picks, for a prompt born at device `origin`, the peers that answer it in one
/// layer. Requirements of GossipPolicy<G>:
/// 1. it opts in with `using moa_policy = moa::gossip_tag;` (so unrelated types with a `select`
///    member do not match by accident);
/// 2. `g.fanout()` returns the k it aims for, as std::size_t;
/// 3. `g.select(ctx, out)` writes at most `out.size()` distinct peers, none equal to
///    `ctx.origin`, each `< ctx.devices`, and returns how many it wrote.
/// @see moa/gossip/random_k.hpp for the catalogue of strategies.

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

#include "moa/core/random.hpp"

namespace moa {

struct gossip_tag {};

/// @brief What a strategy may look at when it picks peers.
struct gossip_context {
  std::uint32_t origin = 0;           ///< the device where the prompt was born
  std::uint32_t devices = 0;          ///< n
  std::uint32_t layer = 1;            ///< 1-based layer being forked
  moa::rng* random = nullptr;         ///< the caller's engine (never null when called by moa)
  std::span<const double> load = {};  ///< gossiped queue lengths per device, if known
};

template <class G>
concept GossipPolicy = requires {
  typename G::moa_policy;
}
&&std::same_as<typename G::moa_policy, gossip_tag>&& requires(const G& g, const gossip_context& ctx,
                                                              std::span<std::uint32_t> out) {
  { g.fanout() } -> std::convertible_to<std::size_t>;
  { g.select(ctx, out) } -> std::same_as<std::size_t>;
};

}  // namespace moa
