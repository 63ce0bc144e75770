// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Gossip along a graph: a device only gossips to its neighbours (radio range, a rack, a
/// datacentre region), k of them drawn uniformly per layer.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "moa/core/error.hpp"
#include "moa/core/random.hpp"
#include "moa/gossip/gossip_concepts.hpp"

namespace moa {

/// @brief k peers drawn uniformly among the origin's neighbours on a graph (all of them when the
/// origin has at most k). Undirected or directed: row i lists whom device i may gossip to.
///
/// @code{.cpp}
/// // A ring of 6 devices, each gossiping to one of its two neighbours per layer.
/// moa::graph_gossip ring = moa::graph_gossip::ring(6, /*k=*/1);
/// moa::plan p;
/// moa::rng random(1);
/// moa::make_gossip_plan(/*origin=*/0, 6, /*layers=*/2, ring, random, p);
/// @endcode
class graph_gossip {
 public:
  using moa_policy = gossip_tag;

  graph_gossip() = default;
  /// `neighbours[i]`: the devices i may gossip to. Throws invalid_argument for a self-loop or a
  /// repeated neighbour.
  graph_gossip(std::vector<std::vector<std::uint32_t>> neighbours, std::size_t k)
      : k_(k), neighbours_(std::move(neighbours)) {
    for (std::size_t i = 0; i < neighbours_.size(); ++i) {
      const auto& row = neighbours_[i];
      for (std::size_t a = 0; a < row.size(); ++a) {
        if (row[a] == i)
          MOA_THROW(invalid_argument("moa::graph_gossip: device " + std::to_string(i) +
                                     " lists itself as a neighbour; remove the self-loop"));
        if (row[a] >= neighbours_.size())
          MOA_THROW(invalid_argument("moa::graph_gossip: device " + std::to_string(i) +
                                     " lists neighbour " + std::to_string(row[a]) + " of a " +
                                     std::to_string(neighbours_.size()) + "-device graph"));
        for (std::size_t b = 0; b < a; ++b)
          if (row[b] == row[a])
            MOA_THROW(invalid_argument("moa::graph_gossip: device " + std::to_string(i) +
                                       " lists neighbour " + std::to_string(row[a]) + " twice"));
      }
    }
  }

  /// The ring where device i neighbours i - r .. i + r (r = ceil(k / 2) hops each way).
  static graph_gossip ring(std::size_t n, std::size_t k) {
    std::vector<std::vector<std::uint32_t>> nb(n);
    const std::size_t reach = (k + 1) / 2;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t h = 1; h <= reach && 2 * h <= n; ++h) {
        nb[i].push_back(static_cast<std::uint32_t>((i + h) % n));
        if (2 * h < n) nb[i].push_back(static_cast<std::uint32_t>((i + n - h) % n));
      }
    return {std::move(nb), k};
  }

  [[nodiscard]] std::size_t fanout() const noexcept { return k_; }
  /// Peers per layer for prompts born at `origin`: min(k, degree).
  [[nodiscard]] std::size_t fanout_of(std::uint32_t origin) const noexcept {
    const std::size_t d = origin < neighbours_.size() ? neighbours_[origin].size() : 0;
    return d < k_ ? d : k_;
  }
  [[nodiscard]] std::span<const std::uint32_t> neighbours(std::uint32_t i) const noexcept {
    return i < neighbours_.size() ? std::span<const std::uint32_t>(neighbours_[i])
                                  : std::span<const std::uint32_t>();
  }

  std::size_t select(const gossip_context& ctx, std::span<std::uint32_t> out) const noexcept {
    const auto nb = neighbours(ctx.origin);
    std::size_t take = fanout_of(ctx.origin);
    if (take > out.size()) take = out.size();
    // Sample neighbour positions, then map them to device ids.
    const std::size_t written = sample_distinct(*ctx.random, nb.size(), out.first(take));
    for (std::size_t i = 0; i < written; ++i) out[i] = nb[out[i]];
    return written;
  }

 private:
  std::size_t k_ = 0;
  std::vector<std::vector<std::uint32_t>> neighbours_;
};

/// @brief graph_gossip with k fixed in the type; the graph is given at construction.
template <std::size_t K>
struct neighbours_k : graph_gossip {
  static constexpr std::size_t static_fanout = K;
  neighbours_k() = default;
  explicit neighbours_k(std::vector<std::vector<std::uint32_t>> neighbours)
      : graph_gossip(std::move(neighbours), K) {}
};

static_assert(GossipPolicy<graph_gossip>);
static_assert(GossipPolicy<neighbours_k<2>>);

}  // namespace moa
