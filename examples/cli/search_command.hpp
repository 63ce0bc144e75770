// SPDX-License-Identifier: MIT
#pragma once

// `moa search`: a topology search (Heterogeneous Swarms role step) over synthetic models with a
// planted best DAG, one progress line per iteration, the best topology written as JSON and DOT.
//
//   moa search --models 5 --seed 7 --json best.json --dot best.dot

#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <moa/exec/executor.hpp>
#include <moa/swarm/evaluate.hpp>
#include <moa/swarm/execute.hpp>
#include <moa/swarm/search.hpp>
#include <moa/topology/dag.hpp>
#include <nlohmann/json.hpp>

#include "cli/planted_swarm.hpp"

namespace moa::cli {

struct search_settings {
  std::size_t models = 5;
  std::uint64_t seed = 1;
  std::uint64_t plant_seed = 7;
  std::size_t particles = 10;
  std::size_t iterations = 100;
  std::size_t patience = 30;
  double step = 6.0;
  double top_p = 0.0;
  std::size_t threads = 0;
  std::string json_path = "-";
  std::string dot_path{};
  bool quiet = false;
};

/// The best topology as JSON: nodes (with their models), edges, sink, utility, search stats.
inline nlohmann::json topology_json(const moa::swarm::topology_search_result& r,
                                    const std::vector<std::string>& names) {
  nlohmann::json j;
  const auto& dag = r.best;
  for (std::size_t v = 0; v < dag.size(); ++v)
    j["nodes"].push_back(
        {{"id", v}, {"backend", dag.backends()[v]}, {"name", names[dag.backends()[v]]}});
  j["edges"] = nlohmann::json::array();
  for (std::size_t v = 0; v < dag.size(); ++v)
    for (std::size_t w = 0; w < dag.size(); ++w)
      if (dag.has_edge(v, w)) j["edges"].push_back({v, w});
  j["sink"] = dag.sink();
  j["utility"] = r.utility;
  j["iterations"] = r.iterations;
  j["evaluations"] = r.evaluations;
  j["stop"] = std::string(moa::swarm::to_string(r.stop));
  return j;
}

inline void run_search(const search_settings& s) {
  if (s.models < 1 || s.models > 16)
    throw CLI::ValidationError("--models", "between 1 and 16 synthetic models");
  std::vector<std::string> names;
  for (std::size_t i = 0; i < s.models; ++i) names.push_back(model_name(i));
  planted_swarm bed(s.models, s.plant_seed, names);
  moa::inline_executor ex;
  moa::swarm::executor_answerer answer(ex, bed.refs);
  const std::vector<moa::swarm::example> data = {{"Why is the sky blue?", ""},
                                                 {"What is 17 * 23?", ""}};
  moa::swarm::dataset_utility utility(
      data, answer, [&](std::string_view a, std::string_view) { return bed.score(a); });
  moa::swarm::topology_search_options opt;
  opt.pso.particles = s.particles;
  opt.pso.max_iterations = s.iterations;
  opt.pso.patience = s.patience;
  opt.pso.step = s.step;
  opt.pso.seed = s.seed;
  opt.pso.threads = s.threads;
  opt.pso.target_utility = 1.0;
  opt.decode.top_p = s.top_p;
  auto r =
      moa::swarm::search_topology(s.models, utility, opt, [&](const moa::swarm::pso_progress& p) {
        if (!s.quiet)
          std::fprintf(
              stderr,
              "iteration %zu: best %.3f, this iteration %.3f (mean %.3f), %zu evaluations\n",
              p.iteration, p.best_utility, p.iteration_best, p.iteration_mean, p.evaluations);
      });
  const auto json = topology_json(r, names).dump(2);
  if (s.json_path == "-") {
    std::cout << json << '\n';
  } else {
    std::ofstream out(s.json_path);
    if (!(out << json << '\n'))
      throw CLI::RuntimeError("moa search: cannot write " + s.json_path, 1);
  }
  if (!s.dot_path.empty()) {
    std::ofstream out(s.dot_path);
    if (!(out << r.best.to_dot(names, "moa_search")))
      throw CLI::RuntimeError("moa search: cannot write " + s.dot_path, 1);
  }
  std::fprintf(stderr, "best utility %.3f after %zu iterations (%s)\n", r.utility, r.iterations,
               std::string(moa::swarm::to_string(r.stop)).c_str());
}

/// Adds `moa search` to the program.
inline void add_search_command(CLI::App& app) {
  auto settings = std::make_shared<search_settings>();
  auto* cmd = app.add_subcommand(
      "search",
      "Search a DAG topology (Heterogeneous Swarms PSO) over synthetic models with a "
      "planted best DAG; writes the best topology as JSON and DOT");
  cmd->add_option("--models", settings->models, "Number of models (one node each)")
      ->check(CLI::Range(1, 16))
      ->capture_default_str();
  cmd->add_option("--seed", settings->seed, "Seed of the search")->capture_default_str();
  cmd->add_option("--plant-seed", settings->plant_seed, "Seed of the planted best DAG")
      ->capture_default_str();
  cmd->add_option("--particles", settings->particles, "PSO particles")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--iterations", settings->iterations, "Iteration cap")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  cmd->add_option("--patience", settings->patience,
                  "Stop after this many iterations without "
                  "improvement")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  cmd->add_option("--step", settings->step, "PSO step length")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--top-p", settings->top_p, "Decode by top-p sampling (0: greedy)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--threads", settings->threads, "Utility threads (0: one per core)")
      ->capture_default_str();
  cmd->add_option("--json", settings->json_path,
                  "Where to write the best topology as JSON (-: stdout)")
      ->capture_default_str();
  cmd->add_option("--dot", settings->dot_path, "Where to write the best topology as DOT");
  cmd->add_flag("--quiet", settings->quiet, "No progress lines");
  cmd->callback([settings] { run_search(*settings); });
}

}  // namespace moa::cli
