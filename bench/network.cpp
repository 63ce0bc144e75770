// SPDX-License-Identifier: MIT
// The in-process network's own cost: per gossiped call beyond the backend's time (zero-latency
// backends, so everything measured is protocol: plan, fork, queue, join, reference injection),
// and sustained throughput at 0.9x the analytic limit over 10^5 prompts with memory flat; and
// hostile peers under least-loaded gossip (a device lying "load 0", one that never answers),
// measured against the all-honest network in the same run.
#include <benchmark/benchmark.h>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "moa/backends/synthetic.hpp"
#include "moa/gossip/load_aware.hpp"
#include "moa/gossip/random_k.hpp"
#include "moa/net/network.hpp"

namespace {

std::vector<moa::any_backend> zero_latency(std::size_t n) {
  std::vector<moa::any_backend> out;
  for (std::size_t i = 0; i < n; ++i) {
    std::string name = "d";
    name += std::to_string(i);
    out.emplace_back(moa::synthetic_backend({.name = name}));
  }
  return out;
}

double rss_mib() {  // current resident set, from /proc (ru_maxrss is a peak, not a level)
  std::ifstream in("/proc/self/statm");
  long pages = 0, resident = 0;
  in >> pages >> resident;
  return double(resident) * double(sysconf(_SC_PAGESIZE)) / (1 << 20);
}

// Prompts injected back to back (no sleeping between arrivals): the wall time per call is the
// protocol's cost, the backend costing only its hash of the request.
void BM_gossiped_call(benchmark::State& state) {
  const auto n = std::uint32_t(state.range(0));
  moa::net::network net(zero_latency(n), moa::uniform_gossip{2},
                        {.layers = 2, .keep_records = false});
  std::uint64_t prompts = 0;
  for (auto _ : state) {
    net.submit(prompts % n, {.messages = {{moa::role::user, "why is the sky blue?"}}});
    ++prompts;
    if (prompts % 256 == 0) net.wait();  // bounded in flight
  }
  net.wait();
  state.counters["calls"] = benchmark::Counter(double(prompts * 7));
  state.counters["per_call"] = benchmark::Counter(
      double(prompts * 7), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_gossiped_call)->Arg(4)->Arg(16)->UseRealTime()->Unit(benchmark::kMicrosecond);

// 10^5 prompts at 0.9x the analytic limit of zero-latency backends. Their service time is the
// protocol's own cost per call, measured first (prompts back to back); the limit is then
// 1 / (7 alpha) per user for n = 4, M = 2, k = 2. RSS before and after shows memory is flat.
void BM_sustained(benchmark::State& state) {
  constexpr std::uint32_t n = 4;
  for (auto _ : state) {
    moa::net::network net(
        zero_latency(n), moa::uniform_gossip{2},
        {.layers = 2, .time_unit = std::chrono::microseconds(1), .keep_records = false});
    std::vector<moa::net::arrival> burst(20000);
    for (std::size_t i = 0; i < burst.size(); ++i) burst[i] = {0, std::uint32_t(i % n)};
    const auto calibration = net.run(burst);
    double alpha = 0;  // us per call
    for (const auto& d : calibration.devices) alpha += d.mean_service / n;
    const std::vector<double> lambda(n, 0.9 / (7 * alpha));
    const auto arrivals = moa::net::poisson_arrivals(lambda, std::size_t(state.range(0)), 1);
    const double before = rss_mib();
    const auto r = net.run(arrivals);
    const double after = rss_mib();
    state.counters["alpha_us"] = alpha;
    state.counters["prompts_per_s"] = double(r.submitted) / (r.window * 1e-6);
    state.counters["rss_before_mib"] = before;
    state.counters["rss_after_mib"] = after;
    state.counters["mean_latency_us"] = r.mean_latency;
    state.counters["accounted"] = r.accounted() ? 1 : 0;
  }
}
BENCHMARK(BM_sustained)->Arg(100000)->Iterations(1)->UseRealTime()->Unit(benchmark::kSecond);

// Hostile peers: n = 4 devices with 1 ms services, least-loaded gossip (k = 1, M = 2), prompts
// born at devices 0-2 only (0.1 per ms each, utilisation ~0.5), 3,000 of them. Three networks
// in one run: all honest; device 3 lying "load 0" (it serves honestly); device 3 lying "load 0"
// and never answering (its calls hang until their 50 ms peer deadline). Reports the liar's
// share of peer calls against its fair share (1/4), and the median latency of the prompts in
// each network against the all-honest one.
struct hostile_run {
  double liar_share = 0;  // of peer calls (calls of layers 1..M sent to a device not the origin)
  double median_ms = 0;
  bool accounted = false;
};

hostile_run run_hostile(bool lying, bool silent) {
  constexpr std::uint32_t n = 4;
  std::vector<moa::any_backend> models;
  for (std::uint32_t i = 0; i < n; ++i) {
    moa::synthetic_backend::options_type o;
    o.name = "d" + std::to_string(i);
    o.latency = moa::latency_model::constant(std::chrono::milliseconds(1));
    o.timeout_rate = silent && i == 3 ? 1.0 : 0.0;
    o.seed = 7 + i;
    models.emplace_back(moa::synthetic_backend(std::move(o)));
  }
  moa::net::network_options opt;
  opt.layers = 2;
  opt.peer_timeout = std::chrono::milliseconds(50);
  if (lying || silent) {
    opt.claimed_loads.resize(n);
    opt.claimed_loads[3] = 0.0;
  }
  moa::net::network net(std::move(models), moa::least_loaded_gossip{.k = 1}, std::move(opt));
  const std::vector<double> lambda = {0.1, 0.1, 0.1, 0.0};
  const auto r = net.run(moa::net::poisson_arrivals(lambda, 3000, 5));
  hostile_run out;
  out.accounted = r.accounted();
  double peer = 0, to_liar = 0;
  std::vector<double> latency;
  for (const auto& p : r.prompts) {
    latency.push_back(p.latency);
    for (const auto& c : p.result.trace)
      if (c.role == moa::call_role::proposer && c.backend != p.origin) {
        peer += 1;
        to_liar += c.backend == 3 ? 1 : 0;
      }
  }
  std::nth_element(latency.begin(), latency.begin() + std::ptrdiff_t(latency.size() / 2),
                   latency.end());
  out.median_ms = latency[latency.size() / 2];
  out.liar_share = peer > 0 ? to_liar / peer : 0;
  return out;
}

void BM_hostile_peers(benchmark::State& state) {
  for (auto _ : state) {
    const auto honest = run_hostile(false, false);
    const auto liar = run_hostile(true, false);
    const auto silent = run_hostile(true, true);
    constexpr double fair = 1.0 / 4;
    state.counters["honest_median_ms"] = honest.median_ms;
    state.counters["liar_share_over_fair"] = liar.liar_share / fair;
    state.counters["liar_median_over_honest"] = liar.median_ms / honest.median_ms;
    state.counters["silent_share_over_fair"] = silent.liar_share / fair;
    state.counters["silent_median_over_honest"] = silent.median_ms / honest.median_ms;
    state.counters["accounted"] = honest.accounted && liar.accounted && silent.accounted ? 1 : 0;
  }
}
BENCHMARK(BM_hostile_peers)->Iterations(1)->UseRealTime()->Unit(benchmark::kSecond);

}  // namespace

BENCHMARK_MAIN();
