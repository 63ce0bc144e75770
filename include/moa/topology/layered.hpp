// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Layered Mixture-of-Agents topologies, described at compile time (policies) or at run time
/// (layered_topology). Both produce the same moa::plan and go through the same checker.
///
/// @code{.cpp}
/// // Three proposers (pack indices 0, 1, 2) for two layers, aggregated by backend 1.
/// using classic = moa::topology<moa::layers<2, moa::proposers<0, 1, 2>>, moa::aggregator<1>>;
/// static_assert(classic::calls_per_prompt == 7);
///
/// // Different proposers per layer.
/// using narrowing = moa::topology<moa::layer_list<moa::proposers<0, 1, 2, 3>,
///                                                 moa::proposers<0, 1>>,
///                                 moa::aggregator<0>>;
/// @endcode

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "moa/aggregate/aggregator_concepts.hpp"
#include "moa/topology/check.hpp"
#include "moa/topology/plan.hpp"

namespace moa {

/// @brief The backends (indices into the pipeline's backend pack) proposing in one layer.
template <std::size_t... Indices>
struct proposers {
  static constexpr std::size_t size = sizeof...(Indices);
  static constexpr std::array<std::size_t, size> indices{Indices...};
};

/// @brief Marks "every device picked by the gossip strategy" as the proposer set of a layer of a
/// gossip topology.
struct gossip_peers {};

/// @brief M layers with the same proposer set. `layers<0, P>` is the aggregator alone.
template <std::size_t M, class Proposers = gossip_peers>
struct layers {
  static constexpr std::size_t count = M;
  using each = Proposers;
};

/// @brief One proposer set per layer, in order.
template <class... Proposers>
struct layer_list {
  static constexpr std::size_t count = sizeof...(Proposers);
};

/// @brief The backend that synthesises the final answer.
template <std::size_t Index>
struct aggregator {
  static constexpr std::size_t index = Index;
};

/// @brief Synthesis by backend `Index`: the default aggregation, the same as aggregator<Index>.
template <std::size_t Index>
using synthesis = aggregator<Index>;

namespace detail {

template <class Layers>
struct layer_table;

template <std::size_t M, std::size_t... Is>
struct layer_table<layers<M, proposers<Is...>>> {
  static constexpr std::array<std::size_t, M> sizes = [] {
    std::array<std::size_t, M> s{};
    s.fill(sizeof...(Is));
    return s;
  }();
  static constexpr std::array<std::size_t, M * sizeof...(Is)> flat = [] {
    std::array<std::size_t, M * sizeof...(Is)> f{};
    constexpr std::array<std::size_t, sizeof...(Is)> one{Is...};
    for (std::size_t m = 0; m < M; ++m)
      for (std::size_t i = 0; i < one.size(); ++i) f[m * one.size() + i] = one[i];
    return f;
  }();
};

template <std::size_t... Sizes>
constexpr std::size_t sum() noexcept {
  return (std::size_t{0} + ... + Sizes);
}

template <class... Ps>
struct layer_table<layer_list<Ps...>> {
  static constexpr std::array<std::size_t, sizeof...(Ps)> sizes{Ps::size...};
  static constexpr std::array<std::size_t, sum<Ps::size...>()> flat = [] {
    std::array<std::size_t, sum<Ps::size...>()> f{};
    std::size_t at = 0;
    auto append = [&](const auto& indices) {
      for (auto i : indices) f[at++] = i;
    };
    (append(Ps::indices), ...);
    return f;
  }();
};

template <class T>
inline constexpr bool is_layers_policy = false;
template <std::size_t M, std::size_t... Is>
inline constexpr bool is_layers_policy<layers<M, proposers<Is...>>> = true;
template <class... Ps>
inline constexpr bool is_layers_policy<layer_list<Ps...>> = true;

template <class T>
inline constexpr bool is_aggregator_policy = StaticAggregatorPolicy<T>;
template <std::size_t I>
inline constexpr bool is_aggregator_policy<aggregator<I>> = true;

template <class Table>
constexpr topology_check check_table(std::size_t aggregator, std::size_t backends) noexcept {
  std::size_t at = 0;
  for (std::size_t m = 0; m < Table::sizes.size(); ++m) {
    auto c = check_layer(std::span<const std::size_t>(Table::flat.data() + at, Table::sizes[m]),
                         m + 1, backends);
    if (!c.ok()) return c;
    at += Table::sizes[m];
  }
  return check_aggregator(aggregator, backends);
}

}  // namespace detail

/// @brief A layered MoA described in types. Checked against the backend pack when a pipeline is
/// made (indices in range); checked on its own here (no empty layer, no duplicate in a layer).
template <class Layers, class Aggregator>
struct topology {
  static_assert(detail::is_layers_policy<Layers>,
                "moa::topology: the first argument must be moa::layers<M, moa::proposers<...>> or "
                "moa::layer_list<moa::proposers<...>, ...>");
  static_assert(detail::is_aggregator_policy<Aggregator>,
                "moa::topology: the second argument must be moa::aggregator<index> or an "
                "aggregation policy (a default-constructible type with `using moa_policy = "
                "moa::aggregator_tag;`, `std::string aggregate(moa::policy_context&) const` and "
                "`static constexpr std::size_t index`); see moa/aggregate/aggregator_concepts.hpp");

  using table = detail::layer_table<Layers>;
  static constexpr std::size_t layer_count = Layers::count;
  static constexpr std::size_t aggregator_index = Aggregator::index;
  /// The aggregation policy (moa/aggregate/policies.hpp), or aggregator<I> for plain synthesis.
  using aggregator_type = Aggregator;
  static constexpr bool has_policy = !std::is_same_v<Aggregator, aggregator<Aggregator::index>>;
  static constexpr std::size_t calls_per_prompt = table::flat.size() + 1;

  /// The smallest backend pack this topology fits.
  static constexpr std::size_t min_backends = [] {
    std::size_t m = aggregator_index + 1;
    for (auto i : table::flat) m = i + 1 > m ? i + 1 : m;
    return m;
  }();

  // Faults that do not depend on the pack (empty layer, duplicate) are reported where the
  // topology is named; an unbounded pack size leaves only those.
  static_assert(
      (detail::static_require<detail::check_table<table>(Aggregator::index, std::size_t(-1))>(),
       true));

  /// Checks every layer against a pack of `backends` backends.
  static constexpr topology_check check(std::size_t backends) noexcept {
    return detail::check_table<table>(aggregator_index, backends);
  }

  /// Called by make_pipeline: a compile error that names the fault if the pack does not fit.
  template <std::size_t Backends>
  static constexpr void static_check() noexcept {
    detail::static_require<detail::check_table<table>(Aggregator::index, Backends)>();
  }

  static std::vector<std::vector<std::uint32_t>> layer_sets() {
    std::vector<std::vector<std::uint32_t>> out(layer_count);
    std::size_t at = 0;
    for (std::size_t m = 0; m < layer_count; ++m)
      for (std::size_t i = 0; i < table::sizes[m]; ++i)
        out[m].push_back(static_cast<std::uint32_t>(table::flat[at++]));
    return out;
  }

  static plan make_plan() {
    auto sets = layer_sets();
    return make_layered_plan(sets, static_cast<std::uint32_t>(aggregator_index));
  }
};

/// @brief A layered MoA described at run time (from a CLI, a config file, a search).
struct layered_topology {
  std::vector<std::vector<std::uint32_t>> layers;  ///< proposers of each layer, in order
  std::uint32_t aggregator = 0;

  /// The same topology as a compile-time one.
  template <class Topology>
  static layered_topology from() {
    return {Topology::layer_sets(), static_cast<std::uint32_t>(Topology::aggregator_index)};
  }

  /// Throws topology_error naming the fault if this does not fit `backends` backends.
  void validate(std::size_t backends) const {
    for (std::size_t m = 0; m < layers.size(); ++m) {
      std::vector<std::size_t> wide(layers[m].begin(), layers[m].end());
      require(check_layer(wide, m + 1, backends));
    }
    require(check_aggregator(aggregator, backends));
  }

  [[nodiscard]] std::size_t calls_per_prompt() const noexcept {
    std::size_t n = 1;
    for (const auto& l : layers) n += l.size();
    return n;
  }

  [[nodiscard]] plan make_plan() const { return make_layered_plan(layers, aggregator); }
};

}  // namespace moa
