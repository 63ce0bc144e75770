// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Role search: PSO over continuous adjacency matrices, each decoded into a DAG and scored by a
/// utility of the DAG (Heterogeneous Swarms, role step). Node i of the searched DAG runs model i.
///
/// @code{.cpp}
/// auto found = moa::swarm::search_topology(5, [&](const moa::dag_topology& dag) {
///   return accuracy(dag);          // e.g. a moa::swarm::dataset_utility
/// });
/// std::cout << found.best.to_dot(names) << found.utility << '\n';
/// @endcode

#include <Eigen/Core>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>

#include "moa/core/error.hpp"
#include "moa/core/random.hpp"
#include "moa/swarm/decode.hpp"
#include "moa/swarm/pso.hpp"
#include "moa/topology/dag.hpp"

namespace moa::swarm {

/// @brief Settings of the role search. The PSO defaults differ from pso_options' in three ways,
/// each measured on planted-DAG searches (docs/SWARM.md): a long step (6), so particles overshoot
/// their attractors on this plateau-ridden landscape; patience 30; and a wide box (±1e6) that
/// only guards against overflow, since decoding ignores positive scaling and common shifts.
struct topology_search_options {
  pso_options pso{.step = 6.0, .patience = 30, .max_iterations = 100, .lower = -1e6, .upper = 1e6};
  /// Greedy by default. With top_p > 0 each candidate is decoded with a seed derived from its
  /// entries, so a candidate always decodes to the same DAG and searches stay reproducible.
  decode_options decode{};
};

/// @brief The outcome of search_topology.
struct topology_search_result {
  dag_topology best{};        ///< the decoded best DAG, node i on backend i
  Eigen::MatrixXd weights{};  ///< the continuous matrix it was decoded from
  double utility = 0.0;
  std::size_t iterations = 0;
  std::size_t evaluations = 0;
  pso_stop stop = pso_stop::max_iterations;
};

/// @brief A topology utility: `u(dag)` is convertible to double; higher is better. Called from
/// several threads at once.
template <class U>
concept TopologyUtility = std::invocable<U&, const dag_topology&> &&
                          std::convertible_to < std::invoke_result_t<U&, const dag_topology&>,
double > ;

namespace detail {

inline std::uint64_t hash_matrix(const Eigen::Ref<const Eigen::MatrixXd>& w,
                                 std::uint64_t seed) noexcept {
  std::uint64_t h = seed;
  for (Eigen::Index j = 0; j < w.cols(); ++j)
    for (Eigen::Index i = 0; i < w.rows(); ++i)
      h = mix_seed(h, std::bit_cast<std::uint64_t>(w(i, j)));
  return h;
}

}  // namespace detail

/// @brief The DAG a candidate matrix stands for under `opt`.
inline dag_topology decode_topology(Eigen::Ref<const Eigen::MatrixXd> weights,
                                    const decode_options& opt = {}) {
  auto d = opt;
  if (opt.top_p > 0.0) d.seed = detail::hash_matrix(weights, opt.seed);
  return dag_topology(decode(weights, d));
}

/// @brief Searches a DAG over `models` models (one node each) maximising `utility`.
template <TopologyUtility Utility>
topology_search_result search_topology(std::size_t models, Utility&& utility,
                                       const topology_search_options& opt = {},
                                       const pso_progress_fn& progress = {}) {
  if (models == 0)
    MOA_THROW(invalid_argument("moa::swarm::search_topology: needs at least one model"));
  if (opt.pso.particles == 0)
    MOA_THROW(invalid_argument("moa::swarm::search_topology: needs at least one particle"));
  const auto n = Eigen::Index(models);
  auto start = uniform_candidates<Eigen::MatrixXd>(opt.pso.particles, n, n, 0.0, 1.0,
                                                   mix_seed(opt.pso.seed, 0x70b0), true);
  auto r = optimize(
      std::move(start),
      [&](const Eigen::MatrixXd& w) { return double(utility(decode_topology(w, opt.decode))); },
      opt.pso, progress);
  return {decode_topology(r.best, opt.decode),
          std::move(r.best),
          r.best_utility,
          r.iterations,
          r.evaluations,
          r.stop};
}

}  // namespace moa::swarm
