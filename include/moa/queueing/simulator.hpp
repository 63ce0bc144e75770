// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// A discrete-event simulator of a distributed MoA network, in virtual time.
///
/// Semantics: prompts arrive per user (Poisson of rate lambda_i, or a replayed trace); each gets
/// a moa::plan from a *plan source*; a call is queued FCFS at its device once every call of its
/// input group has finished (fork-join), and the plan's last call (the aggregation at the origin,
/// for gossip) ends the prompt. One server per device, service times from a service_model per
/// device and role. Any plan runs: gossip, layered, DAG. Load-aware gossip (strategies that read
/// gossip_context::load) runs too: the source sees every device's number in system at birth and
/// redraws each later layer's peers when that layer is forked (LoadAwarePlanSource).
///
/// Why it is fast (tens of millions of events per second on one core, and nearly as many at
/// n = 16,384): events are 16-byte PODs in a 4-ary heap that holds one arrival (the users'
/// superposition) and one completion per busy device; devices, prompts and service models are
/// laid out for the event loop (see detail/engine.hpp); nothing is allocated per event once the
/// arenas have grown; and a source that can *draw* only the devices of a fixed-shape plan
/// (gossip_source) skips building a plan per prompt.
///
/// Statistics: time integrals of each device's number in system (a true integral, updated at
/// every change), busy time, completions, latency (mean exact, percentiles from a log histogram
/// within 0.4%), all restarted at the warm-up time. Batch means of the backlog and of each
/// device's offered load feed the verdict: stable, inconclusive or unstable (run_result::verdict).
///
/// @code{.cpp}
/// moa::queueing::sim_config cfg;
/// cfg.lambda.assign(4, 0.1);                                          // 4 users
/// cfg.service = {moa::queueing::service_model::exponential(1.0)};     // every device
/// cfg.horizon = 1e5;
/// cfg.warmup = 1e4;
/// moa::queueing::gossip_source source(4, /*layers=*/2, moa::uniform_gossip{2});
/// moa::queueing::run_result r = moa::queueing::simulate(cfg, source);
/// auto many = moa::queueing::replicate(cfg, source, /*replications=*/8);  // in parallel
/// moa::queueing::gossip_source aware(4, 2, moa::least_loaded_gossip{.k = 2, .d = 0});
/// auto steered = moa::queueing::simulate(cfg, aware);  // peers picked on the simulated queues
/// @endcode

#include <algorithm>
#include <atomic>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include "moa/core/random.hpp"
#include "moa/queueing/detail/check.hpp"
#include "moa/queueing/detail/engine.hpp"
#include "moa/queueing/detail/stats.hpp"
#include "moa/queueing/plan_source.hpp"
#include "moa/queueing/service.hpp"
#include "moa/queueing/sim_types.hpp"

namespace moa::queueing {

/// @brief One run with `cfg.seed`.
template <PlanSource Source>
run_result simulate(const sim_config& cfg, Source& source) {
  return detail::engine<Source>(cfg, source, cfg.seed).run();
}

/// @brief A mean and the half-width of its 95% confidence interval over replications.
struct estimate {
  double mean = 0;
  double half_width = 0;
  [[nodiscard]] bool contains(double x) const noexcept {
    return x >= mean - half_width && x <= mean + half_width;
  }
};

/// @brief Independent replications of a run and their 95% confidence intervals.
///
/// @code{.cpp}
/// auto rep = moa::queueing::replicate(cfg, source, 8);
/// std::cout << rep.mean_latency.mean << " +- " << rep.mean_latency.half_width << '\n';
/// @endcode
struct replicated_result {
  std::vector<run_result> runs;
  estimate mean_latency, p50, p95, p99, throughput, growth_rate;
  std::vector<estimate> mean_queue, utilisation, device_throughput;
  std::size_t unstable_runs = 0;      ///< runs whose verdict is `unstable`
  std::size_t inconclusive_runs = 0;  ///< runs whose verdict is `inconclusive`
  bool stable = true;                 ///< more than half the replications were found stable
};

namespace detail {
template <class F>
estimate over_runs(const std::vector<run_result>& runs, F&& get) {
  double sum = 0;
  for (const auto& r : runs) sum += get(r);
  const double n = double(runs.size());
  const double mean = sum / n;
  if (runs.size() < 2) return {mean, std::numeric_limits<double>::infinity()};
  double ss = 0;
  for (const auto& r : runs) ss += (get(r) - mean) * (get(r) - mean);
  return {mean, t95(runs.size() - 1) * std::sqrt(ss / (n - 1) / n)};
}
}  // namespace detail

/// @brief `replications` independent runs, replication r seeded with mix_seed(cfg.seed, r), run
/// in parallel on `threads` threads (0: all cores). Each thread works on its own copy of
/// `source`, so the source must be copyable. `on_done(completed, total)`, if given, is called
/// (serialised) after each run, for progress reports.
template <PlanSource Source, class Progress = void (*)(std::size_t, std::size_t)>
requires std::copy_constructible<Source> replicated_result replicate(const sim_config& cfg,
                                                                     const Source& source,
                                                                     std::size_t replications,
                                                                     std::size_t threads = 0,
                                                                     Progress on_done = nullptr) {
  if (replications == 0) detail::fail("replications must be at least 1");
  detail::validate(cfg, cfg.devices ? cfg.devices : cfg.lambda.size());
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  threads = std::min(threads, replications);
  replicated_result out;
  out.runs.resize(replications);
  std::atomic<std::size_t> next{0};
  std::size_t completed = 0;
  std::mutex mutex;  // guards `failure`, `completed` and the progress callback
  std::exception_ptr failure;
  auto work = [&] {
    Source mine(source);
    for (std::size_t r; (r = next.fetch_add(1)) < replications;) {
      try {
        out.runs[r] = detail::engine<Source>(cfg, mine, mix_seed(cfg.seed, r)).run();
      } catch (...) {
        const std::lock_guard lock(mutex);
        if (!failure) failure = std::current_exception();
      }
      const std::lock_guard lock(mutex);
      ++completed;
      if constexpr (std::is_pointer_v<Progress>) {
        if (on_done) on_done(completed, replications);
      } else {
        on_done(completed, replications);
      }
    }
  };
  {
    std::vector<std::jthread> pool;
    for (std::size_t t = 1; t < threads; ++t) pool.emplace_back(work);
    work();
  }
  if (failure) std::rethrow_exception(failure);
  const auto& runs = out.runs;
  out.mean_latency = detail::over_runs(runs, [](const run_result& r) { return r.mean_latency; });
  out.p50 = detail::over_runs(runs, [](const run_result& r) { return r.p50; });
  out.p95 = detail::over_runs(runs, [](const run_result& r) { return r.p95; });
  out.p99 = detail::over_runs(runs, [](const run_result& r) { return r.p99; });
  out.throughput = detail::over_runs(runs, [](const run_result& r) { return r.throughput; });
  out.growth_rate = detail::over_runs(runs, [](const run_result& r) { return r.growth_rate; });
  const std::size_t n = runs[0].devices.size();
  for (std::size_t i = 0; i < n; ++i) {
    out.mean_queue.push_back(
        detail::over_runs(runs, [i](const run_result& r) { return r.devices[i].mean_queue; }));
    out.utilisation.push_back(
        detail::over_runs(runs, [i](const run_result& r) { return r.devices[i].utilisation; }));
    out.device_throughput.push_back(
        detail::over_runs(runs, [i](const run_result& r) { return r.devices[i].throughput; }));
  }
  std::size_t stable_runs = 0;
  for (const auto& r : runs) {
    stable_runs += r.stable ? 1 : 0;
    out.unstable_runs += r.verdict == run_result::finding::unstable ? 1 : 0;
    out.inconclusive_runs += r.verdict == run_result::finding::inconclusive ? 1 : 0;
  }
  out.stable = stable_runs * 2 > runs.size();
  return out;
}

}  // namespace moa::queueing
