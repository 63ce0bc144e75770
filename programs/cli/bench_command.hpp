// SPDX-License-Identifier: MIT
#pragma once

// `moa bench`: the orchestration overhead of a layered topology (ns per call and per run, with
// percentiles, on zero-cost backends) and its critical-path efficiency under a latency model, for
// the inline, concurrent and asynchronous paths (moa/bench/overhead.hpp).

#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <moa/aggregator.hpp>
#include <moa/bench/overhead.hpp>
#include <moa/moa.hpp>

#include "cli/common.hpp"

namespace moa::cli {

struct bench_settings {
  std::size_t layers = 3;
  std::size_t proposers = 4;
  std::string path = "all";
  std::size_t runs = 2000;
  std::size_t threads = 0;
  std::size_t in_flight = 1;
  policy_options policy;  // synthesis, vote or judge: what zero-cost backends can answer
  latency_options latency{"constant", 5.0, 0.5};
  std::size_t latency_runs = 20;
};

inline void print_overhead(const moa::bench::overhead_report& o) {
  const auto& c = o.per_call_ns;
  const auto& r = o.per_run_ns;
  std::printf("%-11s %6zu %8zu %8zu %9.1f %9.1f %9.1f %10.1f %10.1f %10.1f %12.1f\n",
              std::string(moa::bench::to_string(o.path)).c_str(), o.calls_per_run, o.threads,
              o.in_flight, c.p50, c.p90, c.p99, r.p50, r.p90, r.p99, o.throughput_ns_per_call);
}

inline int bench_command(const bench_settings& s) {
  moa::layered_topology topology;
  std::vector<std::uint32_t> all;
  for (std::uint32_t i = 0; i < s.proposers; ++i) all.push_back(i);
  topology.layers.assign(s.layers, all);
  const auto plan = topology.make_plan();

  moa::bench::overhead_options opt;
  opt.runs = s.runs;
  opt.warmup = std::max<std::size_t>(10, s.runs / 10);
  opt.threads = s.threads;
  opt.in_flight = s.in_flight;
  opt.aggregation = moa::config::make_policy(s.policy);
  if (s.policy.name == "judge")
    opt.answer = "[1]";  // every zero-cost backend, the judge included, names answer 1
  std::vector<moa::bench::path> paths;
  for (auto p : moa::bench::all_paths)
    if (s.path == "all" || s.path == moa::bench::to_string(p)) paths.push_back(p);

  std::printf("topology: %zu layers x %zu proposers + aggregator (%zu calls per run), policy %s\n",
              s.layers, s.proposers, plan.size(), s.policy.name.c_str());
  std::printf("\norchestration overhead, zero-cost backends, %zu runs (ns)\n", s.runs);
  std::printf("%-11s %6s %8s %8s %9s %9s %9s %10s %10s %10s %12s\n", "path", "calls", "threads",
              "inflight", "call p50", "call p90", "call p99", "run p50", "run p90", "run p99",
              "thru ns/call");
  int failed = 0;
  for (auto p : paths) {
    const auto o = moa::bench::measure_overhead(plan, p, opt);
    print_overhead(o);
    failed += o.failed_runs > 0;
  }
  if (s.latency.mean_ms > 0 && s.latency_runs > 0) {
    const auto model = s.latency.model();
    std::printf(
        "\ncritical-path efficiency, %s %.2f ms backends, %zu runs (makespan / critical "
        "path; 1.00 is ideal)\n",
        s.latency.shape.c_str(), s.latency.mean_ms, s.latency_runs);
    std::printf("%-11s %8s %8s %8s %12s %12s\n", "path", "mean", "p90", "worst", "makespan ms",
                "critical ms");
    for (auto p : paths) {
      const auto e = moa::bench::measure_critical_path(
          plan, p, model, {.runs = s.latency_runs, .threads = s.threads});
      std::printf("%-11s %8.3f %8.3f %8.3f %12.2f %12.2f\n",
                  std::string(moa::bench::to_string(p)).c_str(), e.ratio.mean, e.ratio.p90,
                  e.ratio.max, e.makespan_ms.mean, e.critical_path_ms.mean);
    }
  }
  return failed ? 1 : 0;
}

/// Registers `moa bench` on `app`.
inline void add_bench_command(CLI::App& app, int& exit_code) {
  auto s = std::make_shared<bench_settings>();
  auto* cmd = app.add_subcommand(
      "bench",
      "Measure a layered topology's orchestration overhead (zero-cost backends) and its "
      "critical-path efficiency (latency-model backends) on the inline, concurrent and async "
      "paths");
  cmd->add_option("-l,--layers", s->layers, "Proposer layers M")
      ->capture_default_str()
      ->transform(count_in(0, max_models));
  cmd->add_option("-p,--proposers", s->proposers, "Proposers per layer")
      ->capture_default_str()
      ->transform(count_in(1, max_models));
  cmd->add_option("--path", s->path, "inline, concurrent, async or all")
      ->capture_default_str()
      ->check(CLI::IsMember({"inline", "concurrent", "async", "all"}));
  cmd->add_option("-n,--runs", s->runs, "Runs measured per path")
      ->capture_default_str()
      ->transform(count_in(1, 10000000));
  cmd->add_option("--threads", s->threads, "Pool threads (0: the widest layer)")
      ->capture_default_str()
      ->transform(count_in(0, 1024));
  cmd->add_option("--in-flight", s->in_flight, "Async path: runs started at once (throughput)")
      ->capture_default_str()
      ->transform(count_in(1, 100000));
  cmd->add_option("--policy", s->policy.name, "Aggregation: synthesis, vote or judge")
      ->capture_default_str()
      ->check(CLI::IsMember({"synthesis", "vote", "judge"}));
  cmd->add_option("--latency", s->latency.shape,
                  "Latency model of the efficiency runs: constant, exponential, lognormal")
      ->capture_default_str()
      ->check(CLI::IsMember({"constant", "exponential", "lognormal"}));
  cmd->add_option("--latency-ms", s->latency.mean_ms,
                  "Mean latency of the efficiency runs in ms (0: skip them)")
      ->capture_default_str()
      ->check(number_in(0, 60000));
  cmd->add_option("--latency-runs", s->latency_runs, "Runs of the efficiency measurement")
      ->capture_default_str()
      ->transform(count_in(0, 100000));
  cmd->callback([s, &exit_code] { exit_code = bench_command(*s); });
}

}  // namespace moa::cli
