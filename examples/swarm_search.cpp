// SPDX-License-Identifier: MIT
// Topology search over synthetic models with a planted best DAG (Heterogeneous Swarms, role step).
//
//   continuous adjacency (a particle) ──decode──> DAG ──run on models──> utility
//          ^                                                              │
//          └────────────────────── PSO update <──────────────────────────┘
//
// Each model answers well only when it is fed by its planted inputs, so the best utility (1.0)
// belongs to one DAG. The search prints its progress, the DAG it found (as DOT) and the
// JFK-score ranking of the models on that DAG.

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <moa/exec/executor.hpp>
#include <moa/swarm/evaluate.hpp>
#include <moa/swarm/execute.hpp>
#include <moa/swarm/jfk.hpp>
#include <moa/swarm/search.hpp>
#include <moa/topology/dag.hpp>

#include <moa/swarm/planted.hpp>

int main() {
  const std::vector<std::string> names = {"alpha", "beta", "gamma", "delta", "epsilon"};
  moa::swarm::planted_swarm bed(names.size(), 7, names);

  std::cout << "planted DAG:";
  for (std::size_t v = 0; v < bed.target.size(); ++v)
    if (bed.target[v] >= 0)
      std::cout << ' ' << names[v] << "->" << names[std::size_t(bed.target[v])];
  std::cout << '\n';

  moa::inline_executor ex;
  moa::swarm::executor_answerer answer(ex, bed.refs);
  const std::vector<moa::swarm::example> data = {
      {"Why is the sky blue?", ""}, {"What is 17 * 23?", ""}, {"Name a prime above 100.", ""}};
  //! [search]
  moa::swarm::dataset_utility utility(
      data, answer, [&](std::string_view a, std::string_view) { return bed.score(a); });
  moa::swarm::topology_search_options opt;
  opt.pso.seed = 3;
  opt.pso.target_utility = 1.0;  // the planted optimum: stop when found
  opt.pso.max_iterations = 200;
  opt.pso.patience = 100;
  auto found = moa::swarm::search_topology(
      names.size(), utility, opt, [](const moa::swarm::pso_progress& p) {
        std::printf("iteration %3zu  best %.2f  this iteration %.2f (mean %.2f)  evaluations %zu\n",
                    p.iteration, p.best_utility, p.iteration_best, p.iteration_mean, p.evaluations);
      });
  //! [search]
  std::cout << "cache: " << utility.cache().size() << " DAGs run, " << utility.cache().hits()
            << " repeats served from the cache\n";
  std::cout << found.best.to_dot(names, "found");

  bool planted = true;
  for (std::size_t v = 0; v < bed.target.size(); ++v) {
    std::int32_t parent = -1;
    for (std::size_t w = 0; w < bed.target.size(); ++w)
      if (found.best.has_edge(v, w)) parent = std::int32_t(w);
    planted = planted && parent == bed.target[v];
  }
  std::cout << (planted ? "found the planted DAG" : "did not find the planted DAG") << " (utility "
            << found.utility << ", " << found.iterations << " iterations)\n";

  // JFK-scores on the found DAG: random assignments of models to its nodes.
  auto jfk = moa::swarm::jfk_score(found.best.size(), names.size(),
                                   [&](std::span<const std::uint32_t> who) {
                                     moa::dag_topology dag = found.best;
                                     for (std::size_t v = 0; v < who.size(); ++v)
                                       dag.assign(v, who[v]);
                                     return utility(dag);
                                   },
                                   {.assignments = 40, .seed = 11});
  std::cout << "JFK ranking:\n";
  for (auto m : jfk.ranking())
    if (jfk.scores[m])
      std::printf("  %-8s %.3f (held %zu nodes)\n", names[m].c_str(), *jfk.scores[m],
                  jfk.node_counts[m]);
    else
      std::printf("  %-8s unscored\n", names[m].c_str());
  return planted ? 0 : 1;
}
