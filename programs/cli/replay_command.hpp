// SPDX-License-Identifier: MIT
#pragma once

// `moa replay`: the Distributed MoA experiment from measured inference times (docs/EVAL.md):
// N prompts replayed through the gossip network for each (M, k) configuration, and the table of
// mean latency and average queue size.
//
//   moa replay --times examples/data/measured_times.json --prompts 20 --rate 0.02

#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <moa/eval/replay.hpp>
#include <nlohmann/json.hpp>

#include "cli/common.hpp"

namespace moa::cli {

struct replay_settings {
  std::string times_path{};
  std::size_t prompts = 20;
  double rate = 0.02;
  std::uint64_t seed = 1;
  std::vector<std::string> configs{};
  std::string format = "table";
};

/// "M:k" -> a configuration.
inline moa::eval::replay_config parse_replay_config(const std::string& text) {
  const auto colon = text.find(':');
  std::size_t m = 0, k = 0, used_m = 0, used_k = 0;
  try {
    if (colon == std::string::npos) throw std::invalid_argument(text);
    m = std::stoul(text.substr(0, colon), &used_m);
    k = std::stoul(text.substr(colon + 1), &used_k);
  } catch (const std::exception&) {
    used_m = 0;
  }
  if (colon == std::string::npos || used_m != colon || used_k != text.size() - colon - 1 ||
      text[0] == '-' || text[colon + 1] == '-')
    throw CLI::ValidationError("--config", "\"" + text + "\" is not M:k (layers:peers, e.g. 2:1)");
  return {m, k};
}

inline void run_replay(const replay_settings& s) {
  check_input_file(s.times_path, "--times", std::uintmax_t{64} << 20);
  std::optional<moa::eval::measured_times> loaded;
  try {
    loaded.emplace(moa::eval::load_measured_times(s.times_path));
  } catch (const nlohmann::json::exception& e) {
    reject("--times", s.times_path + ": " + e.what());
  }
  const auto& times = *loaded;
  const auto arrivals =
      times.arrivals.empty()
          ? moa::eval::poisson_arrivals(times.devices.size(), s.rate, s.prompts, s.seed)
          : times.arrivals;
  std::vector<moa::eval::replay_config> configs;
  for (const auto& c : s.configs) configs.push_back(parse_replay_config(c));
  if (configs.empty()) {
    // Every measured depth with every fan-out, after the origin alone.
    configs.push_back({0, 0});
    for (std::size_t m = 1; m <= times.devices[0].layers.size(); ++m)
      for (std::size_t k = 1; k < times.devices.size(); ++k) configs.push_back({m, k});
  }
  const auto rows = moa::eval::replay_table(times, arrivals, configs, s.seed);
  if (s.format == "json") {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& r : rows)
      j.push_back({{"M", r.config.layers},
                   {"k", r.config.peers},
                   {"calls_per_prompt", r.calls_per_prompt},
                   {"mean_latency", r.mean_latency},
                   {"max_latency", r.max_latency},
                   {"average_queue_size", r.average_queue_size},
                   {"device_queue_size", r.device_queue_size},
                   {"makespan", r.makespan}});
    std::cout << j.dump(2) << '\n';
    return;
  }
  moa::eval::print_replay_table(std::cout, rows, arrivals.size(), times.unit);
}

/// Adds `moa replay` to the program.
inline void add_replay_command(CLI::App& app) {
  auto s = std::make_shared<replay_settings>();
  auto* cmd = app.add_subcommand(
      "replay",
      "Distributed MoA from measured inference times: replay N prompts through the gossip "
      "network for each (M, k) and print mean latency and average queue size");
  cmd->add_option("--times", s->times_path,
                  "Measured times (JSON: devices with per-layer and aggregation times; optional "
                  "arrivals)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--prompts", s->prompts, "Prompts replayed (without recorded arrivals)")
      ->transform(count_in(1, 10000000))
      ->capture_default_str();
  cmd->add_option("--rate", s->rate, "Poisson prompt rate per user (without recorded arrivals)")
      ->check(number_in(0, 1e6, true))
      ->capture_default_str();
  cmd->add_option("--seed", s->seed, "Seed of arrivals and peer draws")
      ->capture_default_str()
      ->transform(any_seed());
  cmd->add_option("--config", s->configs,
                  "A configuration M:k (repeat; default: 0:0, then every measured M with every "
                  "k from 1 to n-1)");
  cmd->add_option("--format", s->format, "table or json")
      ->check(CLI::IsMember({"table", "json"}))
      ->capture_default_str();
  cmd->callback([s] { run_replay(*s); });
}

}  // namespace moa::cli
