// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The joint loop of Heterogeneous Swarms (Feng et al. 2025): alternate the role step (PSO over
/// DAG topologies, search_topology) and the weight step (JFK-guided PSO over model weights,
/// search_weights) for a number of rounds, keeping the all-time best system (graph, assignment of
/// models to nodes, weights) and promoting the best assignment the JFK-scoring sampled when it
/// beats everything seen.
///
/// @code{.cpp}
/// std::vector<my_tunable_model> models = ...;           // moa::Tunable
/// auto found = moa::swarm::search_swarm(std::span(models), [&](const moa::dag_topology& dag) {
///   return accuracy(dag);   // runs dag (node v on models[dag.backends()[v]]) with the current
///   weights
/// });
/// // found.best, found.parameters (also applied to the models), found.utility, found.history
/// @endcode
///
/// The utility must reflect the models' current weights: a cache keyed by topology alone (such
/// as dataset_utility's) must be cleared when weights change, or be left out.

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <mutex>
#include <span>
#include <vector>

#include "moa/core/error.hpp"
#include "moa/core/random.hpp"
#include "moa/swarm/search.hpp"
#include "moa/swarm/tunable.hpp"
#include "moa/topology/dag.hpp"

namespace moa::swarm {

/// @brief Settings of the joint search.
struct swarm_search_options {
  topology_search_options role{};
  weight_search_options weight{};
  std::size_t rounds = 5;    ///< role step + weight step, at most this many times
  std::size_t patience = 2;  ///< stop after this many rounds without a better all-time best
  std::uint64_t seed = 1;    ///< mixed into both steps' seeds, per round
};

/// @brief One round of the joint search, for progress and the history.
struct swarm_round {
  std::size_t round = 0;         ///< 1-based
  double role_utility = 0.0;     ///< the best graph of the role step, with the round's weights
  double weight_utility = 0.0;   ///< that graph after the weight step (models on their nodes)
  double best_assignment = 0.0;  ///< the best utility the JFK-scoring sampled this round
  double best_utility = 0.0;     ///< all-time best after this round
  bool promoted = false;         ///< the all-time best is now a JFK assignment
  std::size_t evaluations = 0;   ///< utility calls this round
};

/// @brief The outcome of search_swarm.
struct swarm_search_result {
  dag_topology best{};                        ///< node v runs model best.backends()[v]
  std::vector<Eigen::VectorXd> parameters{};  ///< the models' weights of the best system (applied)
  double utility = -std::numeric_limits<double>::infinity();
  std::size_t rounds = 0;
  std::size_t evaluations = 0;
  std::vector<swarm_round> history{};
};

/// @brief Jointly searches roles (the DAG) and weights of tunable `models`; `utility(dag)` is the
/// quality of a system, node v running `models[dag.backends()[v]]` with its current weights.
template <Tunable B, TopologyUtility Utility>
swarm_search_result search_swarm(std::span<B> models, Utility&& utility,
                                 const swarm_search_options& opt = {},
                                 const std::function<void(const swarm_round&)>& progress = {}) {
  if (models.empty())
    MOA_THROW(invalid_argument("moa::swarm::search_swarm: needs at least one model"));
  if (opt.rounds == 0) MOA_THROW(invalid_argument("moa::swarm::search_swarm: rounds must be >= 1"));
  const std::size_t n = models.size();
  auto snapshot = [&] {
    std::vector<Eigen::VectorXd> p;
    p.reserve(n);
    for (const auto& m : models) p.push_back(Eigen::VectorXd(m.parameters()));
    return p;
  };
  auto apply = [&](const std::vector<Eigen::VectorXd>& p) {
    for (std::size_t m = 0; m < n; ++m) models[m].set_parameters(p[m]);
  };
  auto call = [&](const dag_topology& d) { return double(utility(d)); };

  swarm_search_result out;
  std::size_t stale = 0;
  for (std::size_t round = 1; round <= opt.rounds && stale < opt.patience; ++round) {
    swarm_round info;
    info.round = round;
    const double before = out.utility;

    // Role step: the best graph for the current weights (node i runs model i).
    auto role_opt = opt.role;
    role_opt.pso.seed = mix_seed(mix_seed(opt.seed, opt.role.pso.seed), 2 * round);
    const auto role = search_topology(n, utility, role_opt);
    info.role_utility = role.utility;
    info.evaluations += role.evaluations;
    if (role.utility > out.utility) {
      out.best = role.best;
      out.parameters = snapshot();
      out.utility = role.utility;
    }

    // Weight step on that graph: models are scored by JFK over random assignments of models to
    // its nodes. The best assignment sampled is remembered with the weights it ran with.
    const auto graph = role.best;
    auto on_graph = [&](std::span<const std::uint32_t> who) {
      return call(
          dag_topology(graph.adjacency(), std::vector<std::uint32_t>(who.begin(), who.end())));
    };
    double sampled_best = -std::numeric_limits<double>::infinity();
    dag_topology sampled_graph;
    std::vector<Eigen::VectorXd> sampled_params;
    auto weight_opt = opt.weight;
    weight_opt.pso.seed = mix_seed(mix_seed(opt.seed, opt.weight.pso.seed), 2 * round + 1);
    weight_opt.jfk.seed = mix_seed(opt.weight.jfk.seed, round);
    const auto weights = search_weights(
        models, graph.size(), on_graph, weight_opt, [&](const weight_search_progress& p) {
          // Called after the iteration's assignments ran, before the swarm moves: the models
          // still hold the weights those assignments ran with.
          const auto& jfk = *p.jfk;
          for (std::size_t t = 0; t < jfk.utilities.size(); ++t)
            if (jfk.utilities[t] > sampled_best) {
              sampled_best = jfk.utilities[t];
              sampled_graph = dag_topology(graph.adjacency(), jfk.assignments[t]);
              sampled_params = snapshot();
            }
        });
    info.evaluations += weights.evaluations;
    // The models now hold their personal bests: the graph as found, each model on its node.
    info.weight_utility = call(graph);
    ++info.evaluations;
    info.best_assignment = sampled_best;
    if (info.weight_utility > out.utility) {
      out.best = graph;
      out.parameters = snapshot();
      out.utility = info.weight_utility;
    }
    if (sampled_best > out.utility) {
      out.best = std::move(sampled_graph);
      out.parameters = std::move(sampled_params);
      out.utility = sampled_best;
      info.promoted = true;
    }
    // The next round starts from the all-time best weights.
    apply(out.parameters);
    stale = out.utility > before ? 0 : stale + 1;
    info.best_utility = out.utility;
    out.evaluations += info.evaluations;
    out.rounds = round;
    out.history.push_back(info);
    if (progress) progress(info);
  }
  return out;
}

}  // namespace moa::swarm
