// SPDX-License-Identifier: MIT
#pragma once

// `moa run "prompt"`: a layered MoA on embedded synthetic models (no server needed).

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <moa/config/roster.hpp>
#include <moa/core/result_json.hpp>
#include <moa/moa.hpp>

#include "cli/backends.hpp"
#include "cli/common.hpp"

namespace moa::cli {

struct run_settings {
  std::string prompt;
  std::string prompt_file;
  std::size_t layers = 2;
  std::size_t proposers = 3;
  std::size_t aggregator = 0;
  std::string executor = "concurrent";
  std::size_t threads = moa::concurrent_executor::default_threads();
  std::string format = "table";
  latency_options latency;
  double error_rate = 0.0;
  std::uint64_t seed = 1;
  double timeout_ms = 0.0;
  double call_timeout_ms = 0.0;
  std::size_t quorum = 1;
  bool strict = false;
  std::string dot_file;
  // Real endpoints (OpenAI-compatible); empty: the embedded synthetic models.
  endpoint_flags endpoints{.api_key_env = "OPENAI_API_KEY"};
  // A roster file and the layout of it to run (default: its first layout, else its one model).
  std::string roster_path;
  std::string layout;
  policy_options policy;
  CLI::App* cmd = nullptr;  // which options the command line gave (they beat the roster)
};

/// The layout `moa run` runs and the roster its models come from. From a roster file: the chosen
/// layout, with the flags given on the command line beating the file (policy, tokens, timeout).
/// From flags: M layers of proposers 0..P-1 and aggregator A, its models alpha, beta, ... at the
/// --endpoint URLs (else $OPENAI_BASE_URL), or synthetic when there are none.
inline std::pair<moa::config::roster, moa::config::layout_spec> run_layout(const run_settings& s) {
  const auto given = [&](const char* option) { return cli::given(s.cmd, option); };
  if (!s.roster_path.empty()) {
    for (const char* flag :
         {"--layers", "--proposers", "--aggregator", "--endpoint", "--model", "--api-key-env",
          "--judge", "--latency", "--latency-ms", "--sigma", "--error-rate"})
      if (given(flag))
        reject(flag, std::string("is not used with --roster: the roster names the models and ") +
                         "layouts (pick one with --layout; a policy's judge is a roster model)");
    auto roster = read_roster(s.roster_path, "--roster");
    std::string name = s.layout;
    if (given("--layout") && name.empty())
      reject("--layout", "is empty: name a layout or model of the roster");
    if (name.empty()) {
      if (!roster.layouts.empty())
        name = roster.layouts.front().name;
      else if (roster.models.size() == 1)
        name = roster.models.front().name;
      else
        reject("--layout", "the roster has no layouts and " + std::to_string(roster.models.size()) +
                               " models: name the one to run");
    }
    moa::config::layout_spec l;
    try {
      l = roster.layout(name);
    } catch (const moa::config::config_error& e) {
      reject("--layout", e.what());
    }
    if (given("--policy")) l.policy = s.policy.name;
    if (given("--extract")) l.extract = s.policy.extract;
    if (given("--top")) l.top = s.policy.top;
    if (given("--keep")) l.keep = s.policy.keep;
    if (given("--moderate")) l.moderate = s.policy.moderate;
    for (auto& m : roster.models) {
      if (given("--max-tokens")) m.max_tokens = s.endpoints.max_tokens;
      if (given("--http-timeout-ms"))
        m.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(
            duration_ms(s.endpoints.http_timeout_ms));
    }
    return {std::move(roster), std::move(l)};
  }
  if (given("--layout")) reject("--layout", "names a layout of a roster: give --roster FILE");
  // Checked against the proposer count the user asked for, so an aggregator outside it is
  // reported rather than silently given a model of its own.
  moa::layered_topology check;
  check.layers.assign(s.layers, {});
  for (auto& layer : check.layers)
    for (std::size_t i = 0; i < s.proposers; ++i) layer.push_back(std::uint32_t(i));
  check.aggregator = static_cast<std::uint32_t>(s.aggregator);
  check.validate(std::max<std::size_t>(s.proposers, 1));
  const std::size_t count = std::max(s.proposers, s.aggregator + 1);
  if (s.policy.judge && *s.policy.judge >= count)
    MOA_THROW(moa::invalid_argument("--judge " + std::to_string(*s.policy.judge) +
                                    " names no backend: " + std::to_string(count) +
                                    " are given (0.." + std::to_string(count - 1) +
                                    "); raise --proposers or lower --judge"));
  moa::config::layout_spec l{.name = "run", .aggregator = model_name(s.aggregator)};
  std::vector<std::string> proposers;
  for (std::size_t i = 0; i < s.proposers; ++i) proposers.push_back(model_name(i));
  l.layers.assign(s.layers, proposers);
  l.policy = s.policy.name;
  l.extract = s.policy.extract;
  if (s.policy.judge) l.judge = model_name(*s.policy.judge);
  l.top = s.policy.top;
  l.keep = s.policy.keep;
  l.moderate = s.policy.moderate;
  // As the OpenAI clients do, $OPENAI_BASE_URL is the endpoint when none is given: a run never
  // answers from the synthetic models while the user meant a server.
  auto flags = s.endpoints;
#if MOA_CLI_OPENAI
  if (const auto base = moa::config::process_env("OPENAI_BASE_URL");
      flags.endpoints.empty() && base && !base->empty()) {
    for (const char* flag : {"--latency", "--latency-ms", "--sigma", "--error-rate"})
      if (given(flag))
        reject(flag,
               "shapes the embedded synthetic models, but $OPENAI_BASE_URL is set, so the "
               "models are called there; unset it or drop the option");
    flags.endpoints = {*base};
  }
#endif
  moa::config::roster roster;
  if (!flags.endpoints.empty())
    roster = moa::config::parse_roster({{"models", flags.models(count)}});
  return {std::move(roster), std::move(l)};
}

inline int run_command(run_settings& s) {
  // Everything that can be refused is refused before a backend is built or a file written.
  if (!s.prompt_file.empty())
    s.prompt = read_text(s.prompt_file, "--prompt-file", max_prompt_bytes);
  else if (s.prompt.size() > max_prompt_bytes)
    reject("prompt", "longer than " + std::to_string(max_prompt_bytes) + " bytes");
  output_file dot(s.dot_file, "--dot");
  const auto [roster, layout] = run_layout(s);
  // The layout's models in its own order: roster models by model_backend, the others synthetic,
  // each seeded by its place among alpha, beta, ... so a run is the same whatever the layout.
  const auto names = layout.models();
  std::vector<moa::any_backend> backends;
  for (const auto& name : names) {
    if (const auto* m = roster.find_model(name)) {
      backends.push_back(model_backend(*m));
      continue;
    }
    std::size_t i = 0;
    while (model_name(i) != name) ++i;
    backends.emplace_back(moa::synthetic_backend({.name = name,
                                                  .latency = s.latency.model(),
                                                  .error_rate = s.error_rate,
                                                  .seed = s.seed + i}));
  }
  const auto index = [&](const std::string& n) {
    return static_cast<std::uint32_t>(std::find(names.begin(), names.end(), n) - names.begin());
  };
  moa::runtime_pipeline pipeline(std::move(backends), moa::config::make_plan(layout));

  moa::run_options opt;
  opt.quorum = s.quorum;
  opt.aggregation = moa::config::make_policy(layout, index);
  if (s.strict) opt.on_aggregator_failure = moa::aggregator_fallback::fail;
  if (s.timeout_ms > 0) opt.timeout = duration_ms(s.timeout_ms);
  if (s.call_timeout_ms > 0) opt.call_timeout = duration_ms(s.call_timeout_ms);
  const bool progress = progress_wanted();
  std::atomic<std::size_t> done{0};
  const std::size_t total = pipeline.plan().size();
  if (progress)
    opt.on_call = [&](const moa::call_record&) {
      std::fprintf(stderr, "\r[%zu/%zu calls]", ++done, total);
    };

  auto request = moa::make_request(s.prompt);
  if (s.roster_path.empty() && !roster.models.empty()) {  // endpoints from flags
    request.sampling.max_tokens = s.endpoints.max_tokens;
    request.sampling.seed = s.seed;
  }
  moa::result r;
  if (s.executor == "inline") {
    r = pipeline.run(moa::inline_executor{}, request, opt);
  } else {
    moa::concurrent_executor executor(s.threads);
    r = pipeline.run(executor, request, opt);
  }
  if (progress) std::fprintf(stderr, "\r%*s\r", 24, "");

  std::ostringstream out;
  if (s.format == "json") {
    // Answers from servers may hold invalid UTF-8: replaced, never thrown on.
    out << moa::to_json(r).dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
  } else {
    out << "status: " << moa::to_string(r.status) << '\n';
    if (r.has_answer()) out << "answer: " << r.answer << '\n';
    if (!r.error.empty()) out << "error: " << r.error << '\n';
    out << "tokens: " << r.usage.prompt_tokens << " in, " << r.usage.completion_tokens << " out; "
        << std::chrono::duration<double, std::milli>(r.elapsed).count() << " ms\n";
    if (r.aggregation) {
      const auto& a = *r.aggregation;
      out << "policy: " << a.policy << " (" << a.calls.size() << " calls of its own";
      if (a.calls_saved > 0) out << ", " << a.calls_saved << " plan calls saved";
      out << (a.fallback ? ", fell back" : "") << ")\n";
      for (const auto& note : a.notes) out << "  " << note << '\n';
    }
    out << '\n' << r.trace;
  }
  std::cout << out.str();
  if (dot) {
    dot.stream() << pipeline.dot(r.trace);
    dot.finish();
  }
  return r.has_answer() ? 0 : 1;
}

inline void add_run_command(CLI::App& app, int& exit_code) {
  auto settings = std::make_shared<run_settings>();
  auto* cmd = app.add_subcommand(
      "run",
      "Run one prompt through a layered MoA of embedded synthetic models and print the "
      "answer and the trace of every call");
  auto* prompt = cmd->add_option("prompt", settings->prompt, "The prompt");
  auto* prompt_file = cmd->add_option("--prompt-file", settings->prompt_file,
                                      "Read the prompt from this file (-: stdin), at most " +
                                          std::to_string(max_prompt_bytes >> 20) + " MiB");
  prompt->excludes(prompt_file);
  prompt_file->excludes(prompt);
  cmd->add_option("-l,--layers", settings->layers,
                  "Number of proposer layers M (0: aggregator only)")
      ->capture_default_str()
      ->transform(count_in(0, max_models));
  cmd->add_option("-p,--proposers", settings->proposers, "Proposers per layer (models 0..P-1)")
      ->capture_default_str()
      ->transform(count_in(1, max_models));
  cmd->add_option("-a,--aggregator", settings->aggregator, "Index of the aggregating model")
      ->capture_default_str()
      ->transform(count_in(0, max_models - 1));
  cmd->add_option("-e,--executor", settings->executor, "inline (sequential) or concurrent")
      ->capture_default_str()
      ->check(CLI::IsMember({"inline", "concurrent"}));
  cmd->add_option("--threads", settings->threads, "Worker threads of the concurrent executor")
      ->capture_default_str()
      ->transform(count_in(1, 1024));
  cmd->add_option("-f,--format", settings->format, "Output: table or json")
      ->capture_default_str()
      ->check(CLI::IsMember({"table", "json"}));
  cmd->add_option("--latency", settings->latency.shape,
                  "Latency of the synthetic models: zero, constant, exponential, lognormal")
      ->capture_default_str()
      ->check(CLI::IsMember({"zero", "constant", "exponential", "lognormal"}));
  cmd->add_option("--latency-ms", settings->latency.mean_ms, "Mean latency in milliseconds")
      ->capture_default_str()
      ->check(number_in(0, max_latency_ms));
  cmd->add_option("--sigma", settings->latency.sigma, "Lognormal sigma (log-space sd)")
      ->capture_default_str()
      ->check(number_in(0, max_sigma));
  cmd->add_option("--error-rate", settings->error_rate, "Fraction of calls that fail")
      ->capture_default_str()
      ->check(number_in(0.0, 1.0));
  cmd->add_option("--seed", settings->seed, "Seed of the synthetic models")
      ->capture_default_str()
      ->transform(any_seed());
  cmd->add_option("--timeout-ms", settings->timeout_ms, "Deadline of the whole run")
      ->transform(timeout_ms());
  cmd->add_option("--call-timeout-ms", settings->call_timeout_ms, "Deadline of each call")
      ->transform(timeout_ms());
  cmd->add_option("-q,--quorum", settings->quorum, "Answers a layer needs to go on")
      ->capture_default_str()
      ->transform(count_in(1, max_models));
  cmd->add_flag("--strict", settings->strict,
                "Fail the run when the aggregator fails (default: degraded answer)");
  cmd->add_option("--policy", settings->policy.name,
                  "How the final answer is made: synthesis, vote, judge, rank-fuse or sparse")
      ->capture_default_str()
      ->check(CLI::IsMember({"synthesis", "vote", "judge", "rank-fuse", "sparse"}));
  cmd->add_option("--extract", settings->policy.extract,
                  "What vote and the sparse moderator compare: whole (answer), number, letter")
      ->capture_default_str()
      ->check(CLI::IsMember({"whole", "number", "letter"}));
  cmd->add_option("--judge", settings->policy.judge,
                  "Backend that judges or ranks (judge, rank-fuse, sparse; default: --aggregator)")
      ->transform(count_in(0, max_models - 1));
  cmd->add_option("--top", settings->policy.top, "rank-fuse: answers fused")
      ->capture_default_str()
      ->transform(count_in(1, max_models));
  cmd->add_option("--keep", settings->policy.keep, "sparse: answers passed on per layer")
      ->capture_default_str()
      ->transform(count_in(1, max_models));
  cmd->add_flag("--moderate", settings->policy.moderate,
                "sparse: stop early when every answer agrees (by --extract)");
  cmd->add_option("--dot", settings->dot_file,
                  "Write the run as Graphviz DOT to this file (-: stdout)");
  cmd->add_option("--roster", settings->roster_path,
                  "Roster file (JSON, docs/EVAL.md): the models and layouts; the options given "
                  "here beat it (--policy, --extract, --top, --keep, --moderate, --max-tokens, "
                  "--http-timeout-ms)");
  cmd->add_option("--layout", settings->layout,
                  "With --roster: the layout or model to run (default: its first layout by name)");
#if MOA_CLI_OPENAI
  cmd->add_option("--endpoint", settings->endpoints.endpoints,
                  "OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1 (repeatable; model i "
                  "uses endpoint i mod count; replaces the synthetic models)")
      ->allow_extra_args(false)
      ->check(http_url());
  cmd->add_option("--model", settings->endpoints.model, "Model name sent to the endpoints");
  cmd->add_option("--http-timeout-ms", settings->endpoints.http_timeout_ms,
                  "Deadline of each HTTP call when the run sets none earlier (0: 5 minutes)")
      ->capture_default_str()
      ->transform(timeout_ms());
  cmd->add_option("--api-key-env", settings->endpoints.api_key_env,
                  "Environment variable holding the API key")
      ->capture_default_str();
  cmd->add_option("--max-tokens", settings->endpoints.max_tokens,
                  "Tokens per answer (with --endpoint or --roster)")
      ->capture_default_str()
      ->transform(count_in(1, 1 << 20));
#endif
  settings->cmd = cmd;
  cmd->callback([settings, prompt, &exit_code] {
    if (settings->prompt_file.empty() && prompt->count() == 0)
      reject("prompt", "give the prompt as an argument or with --prompt-file FILE (-: stdin)");
    exit_code = run_command(*settings);
  });
}

}  // namespace moa::cli
