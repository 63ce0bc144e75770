// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Round-robin gossip: each origin walks the other devices in a fixed cyclic order, k per layer,
/// so over n - 1 consecutive picks every peer gets exactly its share (no sampling noise).

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "moa/gossip/gossip_concepts.hpp"

namespace moa {

/// @brief The next k of the other n - 1 devices in cyclic order, one cursor per origin.
///
/// The cursors are shared by copies (a network copies its strategy) and advanced atomically, so
/// concurrent origins never take the same turn twice. Origins beyond `cursors` share a cursor
/// modulo that count: the rotation stays balanced on average, only less strictly.
///
/// @code{.cpp}
/// moa::round_robin_gossip rr{/*k=*/2};
/// moa::rng random(1);  // unused: round robin draws nothing
/// moa::plan p;
/// moa::make_gossip_plan(/*origin=*/0, 4, /*layers=*/2, rr, random, p);  // peers 1,2 then 3,1
/// @endcode
class round_robin_gossip {
 public:
  using moa_policy = gossip_tag;
  static constexpr std::size_t cursors = 256;

  round_robin_gossip() : round_robin_gossip(1) {}
  explicit round_robin_gossip(std::size_t k) : k_(k), turns_(std::make_shared<table>()) {}

  [[nodiscard]] std::size_t fanout() const noexcept { return k_; }

  std::size_t select(const gossip_context& ctx, std::span<std::uint32_t> out) const noexcept {
    const std::size_t others = ctx.devices ? ctx.devices - 1 : 0;
    std::size_t take = k_ < others ? k_ : others;
    if (take > out.size()) take = out.size();
    if (take == 0) return 0;
    const std::uint64_t turn =
        (*turns_)[ctx.origin % cursors].fetch_add(take, std::memory_order_relaxed);
    for (std::size_t i = 0; i < take; ++i) {
      auto peer = static_cast<std::uint32_t>((turn + i) % others);
      out[i] = peer >= ctx.origin ? peer + 1 : peer;
    }
    return take;
  }

 private:
  using table = std::array<std::atomic<std::uint64_t>, cursors>;
  std::size_t k_;
  std::shared_ptr<table> turns_;
};

/// @brief round_robin_gossip with k fixed in the type.
template <std::size_t K>
struct round_robin_k : round_robin_gossip {
  static constexpr std::size_t static_fanout = K;
  round_robin_k() : round_robin_gossip(K) {}
};

static_assert(GossipPolicy<round_robin_gossip>);
static_assert(GossipPolicy<round_robin_k<2>>);

}  // namespace moa
