// SPDX-License-Identifier: MIT
#pragma once

// `moa run "prompt"`: a layered MoA on embedded synthetic models (no server needed).

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <moa/moa.hpp>
#if MOA_CLI_OPENAI
#include <moa/backends/openai.hpp>
#endif

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
  std::vector<std::string> endpoints;
  std::string model;
  std::string api_key_env = "OPENAI_API_KEY";
  int max_tokens = 256;
  double http_timeout_ms = default_http_timeout_ms;
  policy_options policy;
};

inline nlohmann::json to_json(const moa::aggregation_report& a) {
  nlohmann::json calls = nlohmann::json::array();
  for (const auto& c : a.calls)
    calls.push_back({{"call", c.call},
                     {"backend", c.backend_name},
                     {"status", std::string(moa::to_string(c.status))},
                     {"text", c.text},
                     {"error", c.error}});
  return {{"policy", a.policy},           {"notes", a.notes},
          {"chosen", a.chosen},           {"calls", calls},
          {"calls_saved", a.calls_saved}, {"references_dropped", a.references_dropped},
          {"fallback", a.fallback}};
}

inline nlohmann::json to_json(const moa::result& r) {
  nlohmann::json calls = nlohmann::json::array();
  for (const auto& c : r.trace) {
    calls.push_back({{"call", c.call},
                     {"backend", c.backend_name},
                     {"layer", c.layer},
                     {"role", std::string(moa::to_string(c.role))},
                     {"status", std::string(moa::to_string(c.status))},
                     {"start_ms", std::chrono::duration<double, std::milli>(c.start).count()},
                     {"end_ms", std::chrono::duration<double, std::milli>(c.end).count()},
                     {"prompt_tokens", c.usage.prompt_tokens},
                     {"completion_tokens", c.usage.completion_tokens},
                     {"references", c.references.to_vector()},
                     {"text", c.text},
                     {"error", c.error}});
  }
  return {{"status", std::string(moa::to_string(r.status))},
          {"answer", r.answer},
          {"error", r.error},
          {"elapsed_ms", std::chrono::duration<double, std::milli>(r.elapsed).count()},
          {"usage",
           {{"prompt_tokens", r.usage.prompt_tokens},
            {"completion_tokens", r.usage.completion_tokens}}},
          {"trace", calls},
          {"aggregation", r.aggregation ? to_json(*r.aggregation) : nlohmann::json(nullptr)}};
}

inline int run_command(run_settings& s) {
  // Everything that can be refused is refused before a backend is built or a file written.
  if (!s.prompt_file.empty())
    s.prompt = read_text(s.prompt_file, "--prompt-file", max_prompt_bytes);
  else if (s.prompt.size() > max_prompt_bytes)
    reject("prompt", "longer than " + std::to_string(max_prompt_bytes) + " bytes");
  output_file dot(s.dot_file, "--dot");
  std::vector<moa::any_backend> backends;
  const std::size_t count = std::max(s.proposers, s.aggregator + 1);
#if MOA_CLI_OPENAI
  // Model i is endpoint i modulo the number of endpoints: one endpoint can play every model.
  for (std::size_t i = 0; i < count && !s.endpoints.empty(); ++i) {
    moa::openai_options o;
    o.base_url = s.endpoints[i % s.endpoints.size()];
    o.model = s.model;
    o.api_key_env = s.api_key_env;
    o.name = model_name(i);
    o.timeout =
        std::chrono::duration_cast<std::chrono::milliseconds>(duration_ms(s.http_timeout_ms));
    backends.emplace_back(moa::openai_backend(std::move(o)));
  }
#endif
  for (std::size_t i = backends.size(); i < count; ++i)
    backends.emplace_back(moa::synthetic_backend({.name = model_name(i),
                                                  .latency = s.latency.model(),
                                                  .error_rate = s.error_rate,
                                                  .seed = s.seed + i}));
  moa::layered_topology topology;
  std::vector<std::uint32_t> all;
  for (std::size_t i = 0; i < s.proposers; ++i) all.push_back(static_cast<std::uint32_t>(i));
  topology.layers.assign(s.layers, all);
  topology.aggregator = static_cast<std::uint32_t>(s.aggregator);
  // Validate against the proposer count the user asked for, so an aggregator outside it is
  // reported rather than silently given a backend of its own.
  topology.validate(std::max<std::size_t>(s.proposers, 1));
  if (s.policy.judge && *s.policy.judge >= count)
    MOA_THROW(moa::invalid_argument("--judge " + std::to_string(*s.policy.judge) +
                                    " names no backend: " + std::to_string(count) +
                                    " are given (0.." + std::to_string(count - 1) +
                                    "); raise --proposers or lower --judge"));
  moa::runtime_pipeline pipeline(std::move(backends), topology);

  moa::run_options opt;
  opt.quorum = s.quorum;
  opt.aggregation = s.policy.make();
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
  if (!s.endpoints.empty()) {
    request.sampling.max_tokens = s.max_tokens;
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
    out << to_json(r).dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
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
#if MOA_CLI_OPENAI
  cmd->add_option("--endpoint", settings->endpoints,
                  "OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1 (repeatable; model i "
                  "uses endpoint i mod count; replaces the synthetic models)")
      ->allow_extra_args(false)
      ->check(http_url());
  cmd->add_option("--model", settings->model, "Model name sent to the endpoints");
  cmd->add_option("--http-timeout-ms", settings->http_timeout_ms,
                  "Deadline of each HTTP call when the run sets none earlier")
      ->capture_default_str()
      ->transform(timeout_ms());
  cmd->add_option("--api-key-env", settings->api_key_env,
                  "Environment variable holding the API key")
      ->capture_default_str();
  cmd->add_option("--max-tokens", settings->max_tokens, "Tokens per answer (with --endpoint)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
#endif
  cmd->callback([settings, prompt, &exit_code] {
    if (settings->prompt_file.empty() && prompt->count() == 0)
      reject("prompt", "give the prompt as an argument or with --prompt-file FILE (-: stdin)");
    exit_code = run_command(*settings);
  });
}

}  // namespace moa::cli
