// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// JFK-score: how much each model contributes to a multi-LLM system of a given shape
/// (Heterogeneous Swarms, Feng et al. 2025).
///
/// For a fixed graph of `nodes` nodes, T assignments of models to nodes are drawn uniformly with
/// replacement (a model may hold several nodes, or none). Each assignment t is scored by the
/// utility u_t. With c_{t,m} the number of nodes model m holds in assignment t,
///
///     JFK(m) = Σ_t c_{t,m} · u_t  /  Σ_t c_{t,m}
///
/// the utility of the systems the model took part in, weighted by how much of each it made up.
/// A model that held no node in any assignment has no score (std::nullopt), not 0/0.
///
/// @code{.cpp}
/// auto jfk = moa::swarm::jfk_score(4, 6, [&](std::span<const std::uint32_t> who) {
///   return evaluate(graph, who);             // who[node] = model on that node
/// }, {.assignments = 32, .seed = 7});
/// for (auto m : jfk.ranking()) std::cout << m << ' ' << jfk.scores[m].value_or(NAN) << '\n';
/// @endcode

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "moa/core/error.hpp"
#include "moa/core/random.hpp"
#include "moa/swarm/detail/parallel.hpp"

namespace moa::swarm {

/// @brief JFK-score settings.
struct jfk_options {
  std::size_t assignments = 20;  ///< T, the number of random assignments evaluated
  std::uint64_t seed = 1;
  std::size_t threads = 0;  ///< utility threads, the caller included; 0: one per core
};

/// @brief Scores per model, and the assignments they came from.
struct jfk_result {
  std::vector<std::optional<double>> scores;            ///< per model; nullopt: never held a node
  std::vector<std::size_t> node_counts;                 ///< Σ_t c_{t,m}
  std::vector<std::vector<std::uint32_t>> assignments;  ///< [t][node] = model
  std::vector<double> utilities;                        ///< u_t

  /// Models by score, best first; unscored models last, by index. Ties keep index order.
  [[nodiscard]] std::vector<std::size_t> ranking() const {
    std::vector<std::size_t> order(scores.size());
    for (std::size_t m = 0; m < order.size(); ++m) order[m] = m;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      if (scores[a].has_value() != scores[b].has_value()) return scores[a].has_value();
      return scores[a].has_value() && *scores[a] > *scores[b];
    });
    return order;
  }
};

/// @brief An assignment utility: `u(assignment)` with `assignment[node]` the model on that node.
template <class U>
concept AssignmentUtility =
    std::invocable<U&, std::span<const std::uint32_t>> &&
    std::convertible_to < std::invoke_result_t<U&, std::span<const std::uint32_t>>,
double > ;

namespace detail {

template <class Utility>
jfk_result jfk_score(std::size_t nodes, std::size_t models, Utility& utility,
                     const jfk_options& opt, fork_join_pool& pool) {
  if (nodes == 0 || models == 0)
    MOA_THROW(invalid_argument("moa::swarm::jfk_score: needs at least one node and one model"));
  if (opt.assignments == 0)
    MOA_THROW(invalid_argument("moa::swarm::jfk_score: assignments (T) must be >= 1"));
  jfk_result out;
  rng gen(opt.seed);
  out.assignments.assign(opt.assignments, std::vector<std::uint32_t>(nodes));
  for (auto& a : out.assignments)
    for (auto& m : a) m = std::uint32_t(gen.below(models));
  out.utilities.assign(opt.assignments, 0.0);
  pool.run(opt.assignments, [&](std::size_t t) {
    out.utilities[t] = double(utility(std::span<const std::uint32_t>(out.assignments[t])));
  });
  std::vector<double> weighted(models, 0.0);
  out.node_counts.assign(models, 0);
  for (std::size_t t = 0; t < opt.assignments; ++t)
    for (auto m : out.assignments[t]) {
      weighted[m] += out.utilities[t];
      ++out.node_counts[m];
    }
  out.scores.resize(models);
  for (std::size_t m = 0; m < models; ++m)
    if (out.node_counts[m] > 0) out.scores[m] = weighted[m] / double(out.node_counts[m]);
  return out;
}

}  // namespace detail

/// @brief JFK-scores of `models` models on a graph of `nodes` nodes. `utility` is called for the
/// T assignments in parallel (it must be thread-safe); the assignments depend only on the seed.
template <AssignmentUtility Utility>
jfk_result jfk_score(std::size_t nodes, std::size_t models, Utility&& utility,
                     const jfk_options& opt = {}) {
  detail::fork_join_pool pool(detail::resolve_threads(opt.threads, opt.assignments));
  return detail::jfk_score(nodes, models, utility, opt, pool);
}

}  // namespace moa::swarm
