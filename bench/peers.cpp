// SPDX-License-Identifier: MIT
// Same-run peer baselines: moa's executors against a oneTBB flow graph running the same DAG with
// the same work per node, on the same number of threads, in one run.
//
//   build/bench/bench/bench_peers                        # all modes; the ratio tables follow
//   build/bench/bench/bench_peers --benchmark_filter=sparse
//
// The DAG is a layered MoA of 3 layers x 4 proposers + an aggregator (13 calls) on zero-cost
// backends, so what is measured is orchestration. Each call's work is the same on both sides:
// the request of an input group is built once with moa's reference injection
// (aggregation_prompt::inject over the previous layer's answers, as moa's executors share it per
// group), then each call runs its backend through a moa::backend_ref and keeps the answer.
//
// Modes:
//   dense     one query at a time, back to back
//   inflight  many queries at once: 64 in flight for the flow graph and the async executor (they
//             accept work without blocking); the blocking paths (inline, concurrent) get one
//             calling thread per core, each running queries back to back
//   sparse    one query every 2 ms: the threads go idle between queries (p50 latency; the CPU
//             time includes what is burnt while idle, e.g. spinning)
// Per mode and path: us per query (wall), ns per call, process CPU time per query
// (getrusage: user + system, all threads) and context switches per query (ru_nvcsw + ru_nivcsw,
// all threads), and each moa figure as a ratio to the flow graph's in the same run.
//
// oneTBB is optional (Debian libtbb-dev): without it the moa paths are measured alone.
#include <benchmark/benchmark.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <moa/bench/overhead.hpp>
#include <moa/moa.hpp>

#if MOA_BENCH_TBB
#include <oneapi/tbb/flow_graph.h>
#include <oneapi/tbb/global_control.h>
#endif

namespace {

constexpr std::size_t layers = 3, width = 4, calls = layers * width + 1;
constexpr std::size_t threads = 2;     // the machine's cores; every path gets as many
constexpr std::size_t in_flight = 64;  // inflight mode, for the paths that accept it
constexpr auto sparse_gap = std::chrono::milliseconds(2);
using steady = std::chrono::steady_clock;

// The backends, the plan and the prompt every path shares.
struct setup {
  setup() : sync(width), async(width) {
    for (std::size_t i = 0; i < width; ++i) {
      refs.emplace_back(sync[i], "b" + std::to_string(i));
      async_refs.emplace_back(async[i], "b" + std::to_string(i));
    }
    moa::layered_topology t;
    std::vector<std::uint32_t> all;
    for (std::uint32_t i = 0; i < width; ++i) all.push_back(i);
    t.layers.assign(layers, all);
    plan = t.make_plan();
  }
  std::vector<moa::bench::zero_cost_backend> sync;
  std::vector<moa::bench::zero_cost_async_backend> async;
  std::vector<moa::backend_ref> refs;
  std::vector<moa::async_backend_ref> async_refs;
  moa::plan plan;
  moa::request prompt = moa::make_request("benchmark prompt");
  moa::aggregation_prompt injection{};
};

setup& shared() {
  static setup s;
  return s;
}

// --- Measurement -------------------------------------------------------------------------------

struct usage_mark {
  steady::time_point wall = steady::now();
  double cpu_s = 0;
  long switches = 0;
  static usage_mark now() {
    usage_mark m;
    rusage u{};
    ::getrusage(RUSAGE_SELF, &u);
    m.cpu_s = double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
              double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
    m.switches = u.ru_nvcsw + u.ru_nivcsw;
    return m;
  }
};

// Sets the counters the ratio tables read. `latency_us`: per-query latencies (sparse mode), whose
// median replaces the mean wall time per query.
void report(benchmark::State& state, const usage_mark& from, std::size_t queries,
            std::vector<double> latency_us = {}) {
  const auto to = usage_mark::now();
  const double q = double(std::max<std::size_t>(queries, 1));
  double us = std::chrono::duration<double, std::micro>(to.wall - from.wall).count() / q;
  if (!latency_us.empty()) {
    std::sort(latency_us.begin(), latency_us.end());
    us = latency_us[latency_us.size() / 2];
    state.counters["p99_us"] = latency_us[latency_us.size() * 99 / 100];
  }
  state.counters["us_per_query"] = us;
  state.counters["ns_per_call"] = us * 1e3 / double(calls);
  state.counters["cpu_us_per_query"] = (to.cpu_s - from.cpu_s) * 1e6 / q;
  state.counters["csw_per_query"] = double(to.switches - from.switches) / q;
}

// Runs `wave` (start `in_flight` queries, wait for them all) per iteration, after a warm-up.
template <class Wave>
void run_waves(benchmark::State& state, std::size_t in_flight, Wave&& wave) {
  for (int i = 0; i < 10; ++i) wave();
  const auto from = usage_mark::now();
  std::size_t n = 0;
  for (auto _ : state) {
    wave();
    n += in_flight;
  }
  report(state, from, n);
}

// Runs `query` (one whole query, blocking) per iteration in the given mode. Blocking paths only.
template <class Query>
void run_blocking(benchmark::State& state, const char* mode, Query&& query) {
  const std::string m = mode;
  if (m == "dense") {
    for (std::size_t i = 0; i < 100; ++i) query();  // warm caches, threads, allocator
    const auto from = usage_mark::now();
    std::size_t n = 0;
    for (auto _ : state) {
      query();
      ++n;
    }
    report(state, from, n);
  } else if (m == "sparse") {
    std::vector<double> lat;
    const auto from = usage_mark::now();
    auto next = steady::now();
    for (auto _ : state) {
      next += sparse_gap;
      std::this_thread::sleep_until(next);
      const auto t0 = steady::now();
      query();
      const auto took = std::chrono::duration<double>(steady::now() - t0);
      state.SetIterationTime(took.count());
      lat.push_back(took.count() * 1e6);
    }
    const std::size_t n = lat.size();
    report(state, from, n, std::move(lat));
  } else {  // inflight: one caller per core, each back to back; an iteration is one query each
    std::mutex mu;
    std::condition_variable cv;
    std::size_t round = 0, done = 0;  // guarded by mu
    bool stop = false;
    std::vector<std::jthread> callers;
    for (std::size_t c = 1; c < threads; ++c)
      callers.emplace_back([&] {
        std::size_t seen = 0;
        for (;;) {
          {
            std::unique_lock lock(mu);
            cv.wait(lock, [&] { return stop || round != seen; });
            if (stop) return;
            seen = round;
          }
          for (int k = 0; k < 16; ++k) query();
          std::lock_guard lock(mu);
          if (++done == threads - 1) cv.notify_all();
        }
      });
    const auto from = usage_mark::now();
    std::size_t n = 0;
    for (auto _ : state) {
      {
        std::lock_guard lock(mu);
        ++round;
        done = 0;
      }
      cv.notify_all();
      for (int k = 0; k < 16; ++k) query();
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return done == threads - 1; });
      n += 16 * threads;
    }
    report(state, from, n);
    {
      std::lock_guard lock(mu);
      stop = true;
    }
    cv.notify_all();
  }
}

// --- moa -------------------------------------------------------------------------------------

void bm_inline(benchmark::State& state, const char* mode) {
  auto& s = shared();
  moa::inline_executor ex;
  run_blocking(state, mode,
               [&] { benchmark::DoNotOptimize(ex.execute(s.plan, s.refs, s.prompt)); });
}

void bm_concurrent(benchmark::State& state, const char* mode) {
  auto& s = shared();
  moa::concurrent_executor ex(threads);
  run_blocking(state, mode,
               [&] { benchmark::DoNotOptimize(ex.execute(s.plan, s.refs, s.prompt)); });
}

void bm_async(benchmark::State& state, const char* mode) {
  auto& s = shared();
  moa::async_executor ex(threads);
  if (std::string(mode) != "inflight") {
    run_blocking(state, mode,
                 [&] { benchmark::DoNotOptimize(ex.execute(s.plan, s.async_refs, s.prompt)); });
    return;
  }
  std::mutex mu;
  std::condition_variable cv;
  std::size_t finished = 0;  // guarded by mu
  auto wave = [&] {
    {
      std::lock_guard lock(mu);
      finished = 0;
    }
    for (std::size_t i = 0; i < in_flight; ++i)
      ex.execute_async(s.plan, s.async_refs, s.prompt, {}, {}, [&](const moa::result& r) {
        benchmark::DoNotOptimize(r);
        std::lock_guard lock(mu);
        if (++finished == in_flight) cv.notify_all();
      });
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return finished == in_flight; });
  };
  run_waves(state, in_flight, wave);
}

// --- oneTBB flow graph -------------------------------------------------------------------------

#if MOA_BENCH_TBB
namespace flow = oneapi::tbb::flow;

// One query's DAG: per layer an input-group node (builds the layer's request once, with moa's
// injection over the previous layer's answers) feeding the layer's call nodes; the last group
// node feeds the aggregator's call. continue_node fires when all its predecessors have.
class tbb_query {
 public:
  explicit tbb_query(flow::graph& g) : start_(g) {
    auto& s = shared();
    for (std::size_t l = 0; l <= layers; ++l) {
      groups_.push_back(std::make_unique<node>(g, [this, l, &s](flow::continue_msg) {
        if (l == 0) {
          requests_[0] = s.prompt;
          return;
        }
        std::array<moa::reference, width> refs{};
        for (std::size_t i = 0; i < width; ++i) {
          const std::size_t c = (l - 1) * width + i;
          refs[i] = {answers_[c], s.refs[i].name(), std::uint32_t(c), false};
        }
        requests_[l] = s.prompt;
        requests_[l].messages = s.injection.inject(s.prompt.messages, refs);
      }));
      const std::size_t n = l < layers ? width : 1;
      for (std::size_t i = 0; i < n; ++i)
        calls_.push_back(std::make_unique<node>(g, [this, l, i, &s](flow::continue_msg) {
          answers_[l * width + i] = s.refs[i].generate(requests_[l]).text;
        }));
    }
    flow::make_edge(start_, *groups_[0]);
    for (std::size_t l = 0; l <= layers; ++l) {
      const std::size_t n = l < layers ? width : 1;
      for (std::size_t i = 0; i < n; ++i) {
        flow::make_edge(*groups_[l], *calls_[l * width + i]);
        if (l < layers) flow::make_edge(*calls_[l * width + i], *groups_[l + 1]);
      }
    }
  }
  void start() { start_.try_put(flow::continue_msg()); }
  [[nodiscard]] const std::string& answer() const { return answers_[layers * width]; }

 private:
  using node = flow::continue_node<flow::continue_msg>;
  flow::broadcast_node<flow::continue_msg> start_;
  std::vector<std::unique_ptr<node>> groups_, calls_;
  std::array<moa::request, layers + 1> requests_{};
  std::array<std::string, calls> answers_{};
};

void bm_tbb(benchmark::State& state, const char* mode) {
  oneapi::tbb::global_control limit(oneapi::tbb::global_control::max_allowed_parallelism, threads);
  flow::graph g;
  if (std::string(mode) != "inflight") {
    tbb_query q(g);
    run_blocking(state, mode, [&] {
      q.start();
      g.wait_for_all();
      benchmark::DoNotOptimize(q.answer());
    });
    return;
  }
  std::vector<std::unique_ptr<tbb_query>> qs;
  for (std::size_t i = 0; i < in_flight; ++i) qs.push_back(std::make_unique<tbb_query>(g));
  auto wave = [&] {
    for (auto& q : qs) q->start();
    g.wait_for_all();
  };
  run_waves(state, in_flight, wave);
}
#endif

// --- The ratio tables --------------------------------------------------------------------------

constexpr const char* modes[] = {"dense", "inflight", "sparse"};
constexpr const char* paths[] = {"tbb_flow_graph", "moa_inline", "moa_concurrent", "moa_async"};

class ratio_reporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& r : runs) {
      if (r.run_type != Run::RT_Iteration || r.error_occurred) continue;
      // "mode/path", without Google Benchmark's suffixes (/iterations:N, /real_time, ...).
      auto name = r.benchmark_name();
      if (const auto cut = name.find('/', name.find('/') + 1); cut != std::string::npos)
        name.erase(cut);
      auto& f = figures_[name];
      for (const char* c : {"us_per_query", "ns_per_call", "cpu_us_per_query", "csw_per_query"})
        if (const auto it = r.counters.find(c); it != r.counters.end()) f[c] = it->second.value;
    }
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    for (const char* mode : modes) {
      const auto peer = figures_.find(std::string(mode) + "/tbb_flow_graph");
      const bool has_peer = peer != figures_.end();
      std::printf("\n%s (3x4 + aggregator = %zu calls, %zu threads)%s\n", mode, calls, threads,
                  std::string(mode) == "sparse" ? ", us = median latency" : "");
      std::printf("  %-16s %12s %12s %14s %12s %12s %12s\n", "path", "us/query", "ns/call",
                  "CPU us/query", "csw/query", "us / peer", "CPU / peer");
      for (const char* path : paths) {
        const auto it = figures_.find(std::string(mode) + "/" + path);
        if (it == figures_.end()) continue;
        auto& f = it->second;
        auto ratio = [&](const char* c) {
          return has_peer && peer->second.at(c) > 0 ? f.at(c) / peer->second.at(c) : 0.0;
        };
        std::printf("  %-16s %12.2f %12.1f %14.2f %12.2f %11.2fx %11.2fx\n", path,
                    f.at("us_per_query"), f.at("ns_per_call"), f.at("cpu_us_per_query"),
                    f.at("csw_per_query"), ratio("us_per_query"), ratio("cpu_us_per_query"));
      }
      if (!has_peer) std::printf("  (no oneTBB in this build: no peer; Debian libtbb-dev)\n");
    }
  }

 private:
  std::map<std::string, std::map<std::string, double>> figures_;
};

}  // namespace

int main(int argc, char** argv) {
  // Timed sleeps (sparse mode) are rounded up by the timer slack, 50 us by default.
  ::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
  using fn = void (*)(benchmark::State&, const char*);
  std::vector<std::pair<const char*, fn>> runners {
#if MOA_BENCH_TBB
    {"tbb_flow_graph", bm_tbb},
#endif
        {"moa_inline", bm_inline}, {"moa_concurrent", bm_concurrent}, {
      "moa_async", bm_async
    }
  };
  for (const char* mode : modes)
    for (const auto& [name, run] : runners) {
      auto* b = benchmark::RegisterBenchmark((std::string(mode) + "/" + name).c_str(), run, mode);
      if (std::string(mode) == "sparse")
        b->UseManualTime()->Iterations(1000);  // 2 s of 2 ms gaps per path
      else
        b->UseRealTime();
    }
  benchmark::Initialize(&argc, argv);
  ratio_reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
