// SPDX-License-Identifier: MIT
// Benchmarks of moa/swarm: graph decoding of an 8-node matrix (target < 1 us) and the overhead of
// one PSO iteration, utility calls excluded, for 10 particles of 8x8 (target < 10 us). Baselines
// in the same run: a naive decode that copies and sorts, and the paper's per-particle weights.
//
//   cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOA_BUILD_BENCH=ON
//   cmake --build build-bench --target bench_swarm && ./build-bench/bench/bench_swarm

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "moa/core/random.hpp"
#include "moa/swarm/decode.hpp"
#include "moa/swarm/pso.hpp"

namespace {

Eigen::MatrixXd random_matrix(Eigen::Index n, std::uint64_t seed) {
  moa::rng gen(seed);
  Eigen::MatrixXd w(n, n);
  for (Eigen::Index j = 0; j < n; ++j)
    for (Eigen::Index i = 0; i < n; ++i) w(i, j) = i == j ? 0.0 : gen.uniform();
  return w;
}

// The straightforward port of the paper's decoder: copies the matrix, keeps node lists in
// vectors, sorts the remaining nodes by out-degree and allocates its output.
Eigen::MatrixXd naive_decode(const Eigen::MatrixXd& weights) {
  Eigen::MatrixXd w = weights;
  const auto n = w.rows();
  w.diagonal().setZero();
  Eigen::VectorXd degree = w.rowwise().sum();
  std::vector<Eigen::Index> remaining(static_cast<std::size_t>(n)), placed;
  std::iota(remaining.begin(), remaining.end(), Eigen::Index(0));
  auto sink = std::min_element(remaining.begin(), remaining.end(),
                               [&](auto a, auto b) { return degree(a) < degree(b); });
  placed.push_back(*sink);
  remaining.erase(sink);
  std::sort(remaining.begin(), remaining.end(),
            [&](auto a, auto b) { return degree(a) > degree(b); });
  Eigen::MatrixXd out = Eigen::MatrixXd::Zero(n, n);
  for (auto v : remaining) {
    auto u = *std::max_element(placed.begin(), placed.end(),
                               [&](auto a, auto b) { return w(v, a) < w(v, b); });
    out(v, u) = 1.0;
    placed.push_back(v);
  }
  return out;
}

void decode_greedy_8(benchmark::State& state) {
  const auto w = random_matrix(8, 1);
  Eigen::MatrixXd out(8, 8);
  for (auto _ : state) {
    moa::swarm::decode_into(w, out);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
}
BENCHMARK(decode_greedy_8);

void decode_parents_8(benchmark::State& state) {
  const auto w = random_matrix(8, 1);
  std::vector<std::int32_t> parent(8);
  for (auto _ : state) {
    benchmark::DoNotOptimize(moa::swarm::decode_parents(w, parent));
    benchmark::ClobberMemory();
  }
}
BENCHMARK(decode_parents_8);

void decode_allocating_8(benchmark::State& state) {
  const auto w = random_matrix(8, 1);
  for (auto _ : state) {
    Eigen::MatrixXd out = moa::swarm::decode(w);
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(decode_allocating_8);

void decode_top_p_8(benchmark::State& state) {
  const auto w = random_matrix(8, 1);
  Eigen::MatrixXd out(8, 8);
  std::uint64_t seed = 0;
  for (auto _ : state) {
    moa::swarm::decode_into(w, out, {.top_p = 0.9, .seed = ++seed});
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(decode_top_p_8);

void baseline_naive_decode_8(benchmark::State& state) {
  const auto w = random_matrix(8, 1);
  for (auto _ : state) {
    Eigen::MatrixXd out = naive_decode(w);
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(baseline_naive_decode_8);

// One iteration = observe the utilities + move every particle; the utilities are precomputed
// so only the swarm's own work is timed.
void pso_iteration(benchmark::State& state, moa::swarm::pso_weights weights) {
  auto start = moa::swarm::uniform_candidates<Eigen::MatrixXd>(10, 8, 8, 0.0, 1.0, 7, true);
  moa::swarm::particle_swarm<Eigen::MatrixXd> swarm(
      std::move(start),
      {.max_iterations = std::size_t(-1), .lower = -1e6, .upper = 1e6, .weights = weights});
  moa::rng gen(3);
  std::vector<std::vector<double>> utilities(64, std::vector<double>(10));
  for (auto& u : utilities)
    for (auto& x : u) x = gen.uniform();
  std::size_t k = 0;
  for (auto _ : state) {
    swarm.observe(utilities[k++ % utilities.size()]);
    swarm.move();
    benchmark::DoNotOptimize(swarm.positions().data());
  }
}
BENCHMARK_CAPTURE(pso_iteration, 10x8x8_per_coordinate, moa::swarm::pso_weights::per_coordinate);
BENCHMARK_CAPTURE(pso_iteration, 10x8x8_per_particle, moa::swarm::pso_weights::per_particle);

// The whole optimize() loop with a trivial utility, per iteration: adds the evaluation loop and
// the progress bookkeeping (one thread, so no pool wake-ups).
void pso_optimize_per_iteration(benchmark::State& state) {
  std::size_t iterations = 0;
  for (auto _ : state) {
    auto start = moa::swarm::uniform_candidates<Eigen::MatrixXd>(10, 8, 8, 0.0, 1.0, 7, true);
    auto r =
        moa::swarm::optimize(std::move(start), [](const Eigen::MatrixXd& w) { return w(0, 1); },
                             {.patience = 1000, .max_iterations = 100, .seed = 1, .threads = 1});
    iterations += r.iterations;
    benchmark::DoNotOptimize(r.best_utility);
  }
  state.counters["per_iteration_ns"] = benchmark::Counter(
      double(iterations), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(pso_optimize_per_iteration)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
