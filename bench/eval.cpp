// SPDX-License-Identifier: MIT
// Benchmarks of moa/eval: the harness's overhead per item with a zero-cost backend (target
// < 50 us), against the bare pipeline run of the same item measured in the same run; and the
// throughput at 64 items in flight against backends of a fixed 10 ms latency, against the
// endpoints' own limit (64 calls per 10 ms).
//
//   cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOA_BUILD_BENCH=ON
//   cmake --build build-bench --target bench_eval && ./build-bench/bench/bench_eval

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "moa/config/roster.hpp"
#include "moa/eval/harness.hpp"

namespace {

struct zero_cost {
  moa::response generate(const moa::request&) const { return {.text = "42", .usage = {3, 1}}; }
};

struct fixed_latency {
  moa::response generate(const moa::request&) const {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return {.text = "42", .usage = {3, 1}};
  }
};

moa::eval::dataset items(std::size_t n) {
  moa::eval::dataset d{.name = "bench"};
  for (std::size_t i = 0; i < n; ++i)
    d.items.push_back(
        {.id = std::to_string(i), .turns = {"q" + std::to_string(i)}, .references = {"42"}});
  return d;
}

moa::config::roster one_model(std::size_t concurrency) {
  return moa::config::parse_roster(nlohmann::json{{"concurrency_per_endpoint", concurrency},
                                                  {"models", {{"m", {{"kind", "synthetic"}}}}}});
}

std::string scratch() {
  return (std::filesystem::temp_directory_path() /
          ("moa_bench_eval_" + std::to_string(::getpid()) + ".jsonl"))
      .string();
}

// The baseline: the same single-model layout run item after item, no harness.
void BM_bare_pipeline(benchmark::State& state) {
  std::vector<moa::any_backend> b;
  b.emplace_back(zero_cost{});
  moa::runtime_pipeline p(std::move(b), moa::layered_topology{{}, 0});
  const auto data = items(1000);
  for (auto _ : state)
    for (const auto& it : data.items) benchmark::DoNotOptimize(p.run(it.turns[0]));
  state.SetItemsProcessed(state.iterations() * std::int64_t(data.items.size()));
}
BENCHMARK(BM_bare_pipeline)->Unit(benchmark::kMillisecond);

// The harness: scoring, a JSON record written to the results file per item, the report.
void BM_harness(benchmark::State& state) {
  const auto roster = one_model(4);
  const auto data = items(1000);
  const auto path = scratch();
  moa::eval::eval_options opt;
  opt.scorer = moa::eval::scorer_kind::number;
  opt.in_flight = 1;
  opt.concurrent_calls = false;
  opt.resamples = 0;
  opt.results_path = state.range(0) ? path : "";
  for (auto _ : state) {
    std::filesystem::remove(path);
    benchmark::DoNotOptimize(moa::eval::evaluate(
        roster, data, {"m"}, opt, [](const auto&) { return moa::any_backend(zero_cost{}); }));
  }
  std::filesystem::remove(path);
  state.SetItemsProcessed(state.iterations() * std::int64_t(data.items.size()));
  state.SetLabel(state.range(0) ? "results file" : "in memory");
}
BENCHMARK(BM_harness)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

// 640 items, 64 in flight, 10 ms per call, endpoint limit 64: the endpoints allow 6400 items/s.
void BM_latency_model_64_in_flight(benchmark::State& state) {
  const auto roster = one_model(64);
  const auto data = items(640);
  moa::eval::eval_options opt;
  opt.scorer = moa::eval::scorer_kind::number;
  opt.in_flight = 64;
  opt.concurrent_calls = false;
  opt.resamples = 0;
  for (auto _ : state)
    benchmark::DoNotOptimize(moa::eval::evaluate(
        roster, data, {"m"}, opt, [](const auto&) { return moa::any_backend(fixed_latency{}); }));
  state.SetItemsProcessed(state.iterations() * std::int64_t(data.items.size()));
  state.counters["endpoint_bound_items_per_s"] = 6400;
}
BENCHMARK(BM_latency_model_64_in_flight)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
