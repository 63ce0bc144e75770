// SPDX-License-Identifier: MIT
#pragma once

// `moa eval`: runs a dataset through layouts of a roster (single models and MoA configurations)
// and prints per layout the score with its bootstrap interval, tokens, latency, calls and cost.
//
//   moa eval --roster roster.json --dataset data.jsonl --score number --results out.jsonl
//   moa eval --endpoint http://127.0.0.1:8080/v1 --endpoint http://127.0.0.1:8081/v1 ...

#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <moa/config/roster.hpp>
#include <moa/eval/dataset.hpp>
#include <moa/eval/harness.hpp>
#include <moa/eval/plot.hpp>
#include <nlohmann/json.hpp>

#include "cli/backends.hpp"
#include "cli/common.hpp"
#include "cli/gnuplot.hpp"

namespace moa::cli {

struct eval_settings {
  std::string roster_path{};
  endpoint_flags endpoints{};
  std::vector<std::string> layouts{};
  std::string dataset_path{};
  std::string format = "jsonl";
  moa::eval::jsonl_fields fields{};
  std::string score = "exact";
  std::string judge{};
  std::string reference{};
  std::string results_path{};
  std::size_t in_flight = 8;
  bool sequential_calls = false;
  std::size_t resamples = 2000;
  double confidence = 0.95;
  std::uint64_t seed = 1;
  bool fsync = false;
  std::string json_path{};
  std::string plot_path{};
};

/// A roster of one model per --endpoint, named alpha, beta, ..., and a 2-layer MoA over all.
inline moa::config::roster endpoints_roster(const endpoint_flags& f) {
  nlohmann::json j = {{"models", f.models(f.endpoints.size())}};
  nlohmann::json layer = nlohmann::json::array();
  for (std::size_t i = 0; i < f.endpoints.size(); ++i) layer.push_back(model_name(i));
  if (f.endpoints.size() > 1)
    j["layouts"] = {
        {"moa",
         {{"layers", nlohmann::json::array({layer, layer})}, {"aggregator", model_name(0)}}}};
  return moa::config::parse_roster(j);
}

/// Sizes of the files `moa eval` reads whole.
inline constexpr std::uintmax_t max_roster_bytes = std::uintmax_t{16} << 20;
inline constexpr std::uintmax_t max_dataset_file_bytes = std::uintmax_t{256} << 20;

inline void run_eval(const eval_settings& s, int& exit_code) {
  if (s.roster_path.empty() == s.endpoints.endpoints.empty())
    throw CLI::ValidationError("--roster", "give a roster file or --endpoint URLs (one of them)");
  // Inputs and outputs are checked before anything is loaded or run.
  if (!s.roster_path.empty()) check_input_file(s.roster_path, "--roster", max_roster_bytes);
  check_input_file(s.dataset_path, "--dataset", max_dataset_file_bytes);
  if (!s.results_path.empty()) check_appendable(s.results_path, "--results");
  output_file json_out(s.json_path, "--json");
  const gnuplot_output plot(s.plot_path, "--plot");
  moa::config::roster roster;
  try {
    roster = s.roster_path.empty() ? endpoints_roster(s.endpoints)
                                   : moa::config::load_roster(s.roster_path);
  } catch (const nlohmann::json::exception& e) {
    reject("--roster", s.roster_path + ": " + e.what());
  }
  const auto data = moa::eval::load_dataset(s.dataset_path, s.format, s.fields);
  auto layouts = s.layouts;
  if (layouts.empty()) {
    // Every model that is not the judge, then every layout.
    for (const auto& m : roster.models)
      if (m.name != s.judge) layouts.push_back(m.name);
    for (const auto& l : roster.layouts) layouts.push_back(l.name);
  }
  moa::eval::eval_options opt;
  opt.scorer = moa::eval::parse_scorer(s.score);
  opt.judge = s.judge;
  opt.reference_layout = s.reference;
  opt.in_flight = s.in_flight;
  opt.concurrent_calls = !s.sequential_calls;
  opt.resamples = s.resamples;
  opt.confidence = s.confidence;
  opt.seed = s.seed;
  opt.results_path = s.results_path;
  opt.fsync = s.fsync;
  if (progress_wanted())
    opt.progress = [](std::size_t done, std::size_t total) {
      constexpr int width = 30;
      const int filled = total ? int(double(done) / double(total) * width) : width;
      std::fprintf(stderr, "\r[%.*s%*s] %zu/%zu", filled, "##############################",
                   width - filled, "", done, total);
      if (done == total) std::fputc('\n', stderr);
      std::fflush(stderr);
    };
  const moa::eval::backend_factory make = [](const moa::config::model_spec& m) {
    return model_backend(m);
  };
  const auto report = moa::eval::evaluate(roster, data, layouts, opt, make);
  if (report.torn_bytes)
    std::fprintf(stderr,
                 "moa eval: %s ended in a torn line (%zu bytes: a run was killed inside its "
                 "write); dropped it, and its item was run again\n",
                 s.results_path.c_str(), report.torn_bytes);
  std::cout << report;
  if (json_out) {
    json_out.stream() << moa::eval::to_json(report).dump(2) << '\n';
    json_out.finish();
  }
  if (plot) {
    plot.draw(moa::eval::plot_data(report),
              moa::eval::plot_script(report, plot.data_path(), plot.path()));
    std::cout << "wrote " << plot.path() << " (script " << plot.script_path() << ")\n";
  }
  if (!report.complete) exit_code = 1;
}

/// Adds `moa eval` to the program.
inline void add_eval_command(CLI::App& app, int& exit_code) {
  auto s = std::make_shared<eval_settings>();
  auto* cmd = app.add_subcommand(
      "eval",
      "Evaluate layouts (single models and MoA) on a dataset: score with a bootstrap interval, "
      "tokens, latency p50/p99, calls per item, cost; results streamed to a resumable JSONL file");
  cmd->add_option("--roster", s->roster_path, "Roster file (JSON): models and layouts")
      ->check(CLI::ExistingFile);
#if MOA_CLI_OPENAI
  cmd->add_option("--endpoint", s->endpoints.endpoints,
                  "Instead of a roster: an OpenAI-compatible base URL (repeat); the models are "
                  "named alpha, beta, ... and a 2-layer MoA \"moa\" over all is added");
  cmd->add_option("--model", s->endpoints.model, "With --endpoint: the model name sent");
  cmd->add_option("--max-tokens", s->endpoints.max_tokens, "With --endpoint: tokens per answer")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
#endif
  cmd->add_option("--layout", s->layouts,
                  "A layout or model of the roster to evaluate (repeat; default: every model "
                  "but the judge, then every layout)");
  cmd->add_option("--dataset", s->dataset_path, "The dataset file")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--format", s->format, "Dataset format")
      ->check(CLI::IsMember({"jsonl", "alpaca", "mt-bench", "csv"}))
      ->capture_default_str();
  cmd->add_option("--prompt-field", s->fields.prompt, "jsonl: the prompt field (string or turns)")
      ->capture_default_str();
  cmd->add_option("--reference-field", s->fields.reference, "jsonl: the reference field")
      ->capture_default_str();
  cmd->add_option("--id-field", s->fields.id, "jsonl: the id field (default: line number)")
      ->capture_default_str();
  cmd->add_option("--score", s->score, "Scorer")
      ->check(CLI::IsMember({"exact", "choice", "number", "rubric", "pairwise"}))
      ->capture_default_str();
  cmd->add_option("--judge", s->judge, "rubric/pairwise: the judging model (a roster name)");
  cmd->add_option("--reference", s->reference, "pairwise: the layout every other is compared with");
  cmd->add_option("--results", s->results_path,
                  "JSONL results file; an existing one is resumed (only missing items run)");
  cmd->add_option("--in-flight", s->in_flight, "Items run at once")
      ->transform(count_in(1, 4096))
      ->capture_default_str();
  cmd->add_flag("--sequential-calls", s->sequential_calls,
                "Run the calls of an item one after another (inline executor)");
  cmd->add_option("--bootstrap", s->resamples, "Bootstrap resamples")
      ->transform(count_in(0, 1000000))
      ->capture_default_str();
  cmd->add_option("--confidence", s->confidence, "Interval confidence")
      ->check(number_in(0.5, 0.999))
      ->capture_default_str();
  cmd->add_option("--seed", s->seed, "Bootstrap seed")
      ->capture_default_str()
      ->transform(any_seed());
  cmd->add_flag("--fsync", s->fsync, "fdatasync the results after every item");
  cmd->add_option("--json", s->json_path, "Also write the report as JSON");
  cmd->add_option("--plot", s->plot_path,
                  "Draw score against latency and cost (SVG, with gnuplot)");
  cmd->callback([s, &exit_code] { run_eval(*s, exit_code); });
}

}  // namespace moa::cli
