// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The weight step of Heterogeneous Swarms: PSO over the parameters of tunable models, each model
/// a particle whose utility is its JFK-score in the current graph.
///
/// A model's parameters are whatever it exposes as an Eigen vector: LoRA or adapter weights, a
/// temperature, a prompt embedding, the knobs of a synthetic backend. All models in one search
/// expose vectors of the same length (PSO mixes them).
///
/// @code{.cpp}
/// struct knob_model {
///   Eigen::VectorXd p = Eigen::VectorXd::Zero(4);
///   Eigen::VectorXd parameters() const { return p; }
///   void set_parameters(const Eigen::VectorXd& q) { p = q; }
///   moa::response generate(const moa::request&);
/// };
/// static_assert(moa::Tunable<knob_model>);
/// std::vector<knob_model> models(6);
/// auto r = moa::swarm::search_weights(std::span(models), 4,
///     [&](std::span<const std::uint32_t> who) { return evaluate(graph, who); });
/// @endcode

#include <Eigen/Core>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "moa/core/error.hpp"
#include "moa/core/random.hpp"
#include "moa/swarm/jfk.hpp"
#include "moa/swarm/pso.hpp"

namespace moa {

/// @brief A model whose parameters can be read and written as an Eigen vector.
///
/// Requirements:
/// 1. `b.parameters()` on a const B is convertible to Eigen::VectorXd;
/// 2. `b.set_parameters(p)` accepts a `const Eigen::VectorXd&`.
///
/// set_parameters is only called while no utility runs, so it needs no locking.
template <class B>
concept Tunable = requires(B& b, const B& cb, const Eigen::VectorXd& p) {
  { cb.parameters() } -> std::convertible_to<Eigen::VectorXd>;
  b.set_parameters(p);
};

}  // namespace moa

namespace moa::swarm {

/// @brief Settings of the weight search. `pso.particles` is ignored: there is one particle per
/// model. The JFK seed advances every iteration so that models are not judged on the same
/// assignments forever.
struct weight_search_options {
  pso_options pso{};
  jfk_options jfk{};
};

/// @brief What the progress callback of the weight search sees after each iteration.
struct weight_search_progress {
  pso_progress pso{};
  const jfk_result* jfk = nullptr;  ///< this iteration's scores (valid during the call)
};

/// @brief The outcome: each model's best parameters (applied at the end) and their JFK-scores.
struct weight_search_result {
  std::vector<Eigen::VectorXd> parameters{};
  std::vector<std::optional<double>> scores{};  ///< best JFK-score per model; nullopt: never scored
  std::size_t iterations = 0;
  std::size_t evaluations = 0;  ///< utility calls
  pso_stop stop = pso_stop::max_iterations;
};

/// @brief Weight search on plain vectors: `apply(parameters)` installs one vector per model
/// before the assignments of an iteration are evaluated by `utility(assignment)`; at the end the
/// personal bests are applied.
template <class Apply, AssignmentUtility Utility>
requires std::invocable<Apply&, std::span<const Eigen::VectorXd>> weight_search_result
search_weights(std::vector<Eigen::VectorXd> initial, std::size_t nodes, Apply&& apply,
               Utility&& utility, const weight_search_options& opt = {},
               const std::function<void(const weight_search_progress&)>& progress = {}) {
  const std::size_t models = initial.size();
  particle_swarm<Eigen::VectorXd> swarm(std::move(initial), opt.pso);
  detail::fork_join_pool pool(detail::resolve_threads(opt.jfk.threads, opt.jfk.assignments));
  weight_search_result out;
  std::vector<double> u(models);
  for (;;) {
    apply(swarm.positions());
    auto jfk_opt = opt.jfk;
    jfk_opt.seed = mix_seed(opt.jfk.seed, swarm.iteration());
    const jfk_result jfk = detail::jfk_score(nodes, models, utility, jfk_opt, pool);
    out.evaluations += jfk_opt.assignments;
    for (std::size_t m = 0; m < models; ++m)
      u[m] = jfk.scores[m].value_or(std::numeric_limits<double>::quiet_NaN());
    swarm.observe(u);
    if (progress) progress({swarm.progress(out.evaluations), &jfk});
    if (swarm.done()) break;
    swarm.move();
  }
  const auto bests = swarm.personal_bests();
  out.parameters.assign(bests.begin(), bests.end());
  for (double s : swarm.personal_best_utilities())
    out.scores.push_back(s > -std::numeric_limits<double>::infinity() ? std::optional<double>(s)
                                                                      : std::nullopt);
  apply(std::span<const Eigen::VectorXd>(out.parameters));
  out.iterations = swarm.iteration();
  out.stop = swarm.why();
  return out;
}

/// @brief Weight search on tunable models: starts from their current parameters and leaves each
/// at its best. `utility(assignment)` must run the graph with `models[assignment[node]]` on each
/// node.
template <Tunable B, AssignmentUtility Utility>
weight_search_result search_weights(
    std::span<B> models, std::size_t nodes, Utility&& utility,
    const weight_search_options& opt = {},
    const std::function<void(const weight_search_progress&)>& progress = {}) {
  std::vector<Eigen::VectorXd> initial;
  initial.reserve(models.size());
  for (const auto& m : models) initial.push_back(Eigen::VectorXd(m.parameters()));
  for (const auto& p : initial)
    if (p.size() != initial.front().size())
      MOA_THROW(
          invalid_argument("moa::swarm::search_weights: models expose parameter vectors of "
                           "different lengths; PSO needs one length for all"));
  auto apply = [&](std::span<const Eigen::VectorXd> p) {
    for (std::size_t m = 0; m < models.size(); ++m) models[m].set_parameters(p[m]);
  };
  return search_weights(std::move(initial), nodes, apply, utility, opt, progress);
}

}  // namespace moa::swarm
