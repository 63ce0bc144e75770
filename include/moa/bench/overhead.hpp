// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Micro-benchmarks of a topology's orchestration: what moa itself costs per call and per run
/// with backends that cost nothing, and how close a run comes to its critical path when the
/// backends have a latency model. For the inline, concurrent and asynchronous paths.
///
/// | function                 | measures                                                      |
/// |--------------------------|---------------------------------------------------------------|
/// | `measure_overhead`       | ns per call and per run (mean, p50, p90, p99, max) with       |
/// |                          | zero-cost backends; throughput with many async runs in flight |
/// | `measure_critical_path`  | makespan / critical path with latency-model backends          |
///
/// @code{.cpp}
/// #include <moa/bench/overhead.hpp>
/// using mine = moa::topology<moa::layers<3, moa::proposers<0, 1, 2, 3>>, moa::aggregator<0>>;
/// const auto plan = mine::make_plan();
/// for (auto how : moa::bench::all_paths) {
///   auto o = moa::bench::measure_overhead(plan, how);
///   auto e = moa::bench::measure_critical_path(plan, how,
///                                              moa::latency_model::constant(std::chrono::milliseconds(5)));
///   std::cout << moa::bench::to_string(how) << ": " << o.per_call_ns.p50 << " ns/call, "
///             << e.ratio.mean << " x critical path\n";
/// }
/// @endcode
///
/// Numbers depend on the machine and its load: compare paths and layouts measured in the same
/// process, not against figures from elsewhere.

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "moa/aggregate/any_aggregator.hpp"
#include "moa/backends/synthetic.hpp"
#include "moa/core/backend.hpp"
#include "moa/core/result.hpp"
#include "moa/exec/async.hpp"
#include "moa/exec/executor.hpp"
#include "moa/exec/run_options.hpp"
#include "moa/topology/plan.hpp"

namespace moa::bench {

/// @brief Which executor runs the plan.
enum class path : std::uint8_t {
  inline_executor,      ///< moa::inline_executor, on the calling thread
  concurrent_executor,  ///< moa::concurrent_executor, one run at a time
  async_executor,       ///< moa::async_executor, `in_flight` runs at once
};

inline constexpr std::array<path, 3> all_paths{path::inline_executor, path::concurrent_executor,
                                               path::async_executor};

constexpr std::string_view to_string(path p) noexcept {
  switch (p) {
    case path::inline_executor:
      return "inline";
    case path::concurrent_executor:
      return "concurrent";
    case path::async_executor:
      return "async";
  }
  return "?";
}

/// @brief A backend that answers at no cost: what orchestration overhead is measured against.
struct zero_cost_backend {
  std::string answer = "x";
  response generate(const request&) const {
    response r;
    r.text = answer;
    return r;
  }
};

/// @brief An asynchronous backend that answers at no cost, completing inside generate_async.
struct zero_cost_async_backend {
  std::string answer = "x";
  void generate_async(const request&, const completion& done) const {
    response r;
    r.text = answer;
    done(std::move(r));
  }
};

/// @brief Mean and percentiles of a set of samples.
struct distribution {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
  std::size_t count = 0;

  /// Summarises `samples` (reordered).
  static distribution of(std::vector<double>& samples) {
    distribution d;
    d.count = samples.size();
    if (samples.empty()) return d;
    std::sort(samples.begin(), samples.end());
    double sum = 0;
    for (double s : samples) sum += s;
    d.mean = sum / double(samples.size());
    auto at = [&](double q) {
      const auto i = std::size_t(q * double(samples.size() - 1) + 0.5);
      return samples[std::min(i, samples.size() - 1)];
    };
    d.p50 = at(0.50);
    d.p90 = at(0.90);
    d.p99 = at(0.99);
    d.max = samples.back();
    return d;
  }
  [[nodiscard]] distribution scaled(double f) const noexcept {
    return {mean * f, p50 * f, p90 * f, p99 * f, max * f, count};
  }
};

/// @brief Settings of measure_overhead.
struct overhead_options {
  std::size_t runs = 2000;   ///< runs measured
  std::size_t warmup = 200;  ///< runs before measuring (allocator, caches, thread start)
  /// Pool threads of the concurrent and async paths; 0: the widest input group of the plan.
  std::size_t threads = 0;
  /// Async path: runs started at once. 1 measures latency; many (say 10,000) measure throughput.
  std::size_t in_flight = 1;
  /// Async path: use asynchronous zero-cost backends (completing inline) rather than synchronous
  /// ones posted to the pool.
  bool async_backends = true;
  /// What every zero-cost backend answers ("[1]" lets a judge policy parse a valid choice).
  std::string answer = "x";
  /// An aggregation policy to include in what is measured (empty: synthesis by a backend).
  any_aggregator aggregation{};
};

/// @brief What measure_overhead found. Times in nanoseconds of wall-clock time.
struct overhead_report {
  bench::path path = path::inline_executor;
  std::size_t calls_per_run = 0;
  std::size_t runs = 0;
  std::size_t threads = 0;     ///< 0 for the inline path
  std::size_t in_flight = 1;   ///< runs in flight at once
  distribution per_run_ns{};   ///< latency of one run, start to result
  distribution per_call_ns{};  ///< per_run_ns divided by calls_per_run
  /// Wall time of all measured runs divided by their calls: with many runs in flight, the cost
  /// per call in throughput (what a server pays); equals per_call_ns.mean for one in flight.
  double throughput_ns_per_call = 0;
  std::size_t failed_runs = 0;  ///< runs that did not end ok (should be 0)
};

namespace detail {

inline std::size_t widest_group(const plan& p) {
  std::size_t w = 1;
  for (group_id g = 0; g < p.group_count(); ++g) w = std::max(w, p.calls_of(g).size());
  return w;
}

using ns = std::chrono::duration<double, std::nano>;

}  // namespace detail

/// @brief Measures moa's orchestration overhead on plan `p` with zero-cost backends.
///
/// Every backend index of the plan gets a zero-cost backend, so what is timed is moa: dispatch,
/// request building, reference injection, the trace, thread hand-offs.
inline overhead_report measure_overhead(const plan& p, path how, const overhead_options& opt = {}) {
  if (!p.sealed())
    MOA_THROW(invalid_argument("moa::bench: the plan is not sealed; call plan::seal() first"));
  if (opt.runs == 0) MOA_THROW(invalid_argument("moa::bench: runs must be at least 1"));
  const std::size_t n = p.backend_span();
  std::vector<zero_cost_backend> sync(n, zero_cost_backend{opt.answer});
  std::vector<zero_cost_async_backend> async(n, zero_cost_async_backend{opt.answer});
  std::vector<backend_ref> refs;
  std::vector<async_backend_ref> async_refs;
  for (std::size_t i = 0; i < n; ++i) {
    refs.emplace_back(sync[i], "b" + std::to_string(i));
    if (opt.async_backends)
      async_refs.emplace_back(async[i], "b" + std::to_string(i));
    else
      async_refs.emplace_back(sync[i], "b" + std::to_string(i));
  }
  const auto prompt = make_request("benchmark prompt");
  run_options ro;
  ro.aggregation = opt.aggregation;

  overhead_report rep;
  rep.path = how;
  rep.calls_per_run = p.size();
  rep.runs = opt.runs;
  rep.threads =
      how == path::inline_executor ? 0 : (opt.threads ? opt.threads : detail::widest_group(p));
  rep.in_flight = how == path::async_executor ? std::max<std::size_t>(1, opt.in_flight) : 1;

  std::vector<double> samples;
  samples.reserve(opt.runs);
  const auto per_run = [&](auto&& run_once) {
    for (std::size_t i = 0; i < opt.warmup; ++i) (void)run_once();
    const auto start = clock::now();
    for (std::size_t i = 0; i < opt.runs; ++i) {
      const auto t0 = clock::now();
      const auto r = run_once();
      samples.push_back(detail::ns(clock::now() - t0).count());
      if (!r.ok()) ++rep.failed_runs;
    }
    return detail::ns(clock::now() - start).count();
  };

  double total = 0;
  switch (how) {
    case path::inline_executor: {
      inline_executor ex;
      total = per_run([&] { return ex.execute(p, refs, prompt, ro); });
      break;
    }
    case path::concurrent_executor: {
      concurrent_executor ex(rep.threads);
      total = per_run([&] { return ex.execute(p, refs, prompt, ro); });
      break;
    }
    case path::async_executor: {
      async_executor ex(rep.threads);
      if (rep.in_flight == 1) {
        total = per_run([&] { return ex.execute(p, async_refs, prompt, ro); });
        break;
      }
      // Throughput: keep `in_flight` runs going; each run's latency is submit to callback.
      std::mutex m;
      std::condition_variable cv;
      std::size_t finished = 0, failed = 0, target = 0;  // guarded by m
      std::vector<double> latencies;
      latencies.reserve(opt.runs + opt.warmup);
      auto batch = [&](std::size_t count, bool keep) {
        const auto start = clock::now();
        std::size_t started = 0;
        {
          std::lock_guard lock(m);
          finished = 0;
        }
        while (started < count) {
          const std::size_t wave = std::min(rep.in_flight, count - started);
          for (std::size_t i = 0; i < wave; ++i, ++started) {
            const auto t0 = clock::now();
            ex.execute_async(p, async_refs, prompt, ro, {}, [&, t0, keep](const result& r) {
              const auto took = detail::ns(clock::now() - t0).count();
              std::lock_guard lock(m);
              if (keep) latencies.push_back(took);
              if (!r.ok()) ++failed;
              if (++finished == target) cv.notify_all();
            });
          }
          std::unique_lock lock(m);
          target = started;  // the end of this wave
          cv.wait(lock, [&] { return finished == target; });
        }
        return detail::ns(clock::now() - start).count();
      };
      batch(opt.warmup, false);
      failed = 0;
      total = batch(opt.runs, true);
      samples = std::move(latencies);
      rep.failed_runs = failed;
      break;
    }
  }
  rep.per_run_ns = distribution::of(samples);
  rep.per_call_ns = rep.per_run_ns.scaled(1.0 / double(rep.calls_per_run));
  rep.throughput_ns_per_call = total / double(opt.runs * rep.calls_per_run);
  return rep;
}

/// @brief Settings of measure_critical_path.
struct efficiency_options {
  std::size_t runs = 20;
  std::size_t threads = 0;  ///< 0: the widest input group of the plan
  std::uint64_t seed = 1;   ///< seeds the latency draws of the synthetic backends
};

/// @brief What measure_critical_path found.
struct efficiency_report {
  bench::path path = path::inline_executor;
  std::size_t runs = 0;
  /// Makespan divided by the run's critical path (the longest chain of calls, each call's
  /// service time: from when the backend started running it to when it answered, so time a call
  /// waited for a thread counts against the executor, not as call time): 1.0 is perfect; the
  /// inline path is the sum of all calls by design.
  distribution ratio{};
  distribution makespan_ms{};
  distribution critical_path_ms{};
};

/// @brief The critical path of a run: the longest chain of dependent calls, call c lasting
/// `duration(c)`.
template <class Duration>
clock::duration critical_path_with(const plan& p, Duration&& duration) {
  std::vector<clock::duration> finish(p.size(), clock::duration::zero());
  for (call_id c = 0; c < p.size(); ++c) {
    clock::duration before = clock::duration::zero();
    for (call_id in : p.inputs_of_call(c)) before = std::max(before, finish[in]);
    finish[c] = before + duration(c);
  }
  return finish[p.sink()];
}

/// @brief The critical path of a finished run, with the calls' durations as the trace has them
/// (from dispatch to answer: on a pool, that includes any wait for a thread).
inline clock::duration critical_path(const plan& p, std::span<const call_record> trace) {
  return critical_path_with(p, [&trace](call_id c) { return trace[c].duration(); });
}

namespace detail {

/// The service times of a run's calls, logged by the backends themselves when they start
/// running a call (a trace stamps a call's start at dispatch). Keyed by the answer, which names
/// the backend and hashes the request: unique per call of a run.
struct service_log {
  std::mutex mutex;
  std::unordered_map<std::string, std::vector<clock::duration>> ran;

  /// The service time of the call that answered `text`, if it was logged.
  std::optional<clock::duration> take(const std::string& text) {
    std::lock_guard lock(mutex);
    auto it = ran.find(text);
    if (it == ran.end() || it->second.empty()) return std::nullopt;
    const auto d = it->second.back();
    it->second.pop_back();
    return d;
  }
};

/// A synthetic backend that logs how long each call ran once it started running.
struct timed_backend {
  const synthetic_backend* inner;
  service_log* log;

  response generate(const request& r) const {
    const auto started = clock::now();
    response out = inner->generate(r);
    const auto ran = clock::now() - started;
    std::lock_guard lock(log->mutex);
    log->ran[out.text].push_back(ran);
    return out;
  }
};

}  // namespace detail

/// @brief Runs plan `p` with synthetic backends whose latency follows `latency`, and reports
/// makespan / critical path.
inline efficiency_report measure_critical_path(const plan& p, path how,
                                               const latency_model& latency,
                                               const efficiency_options& opt = {}) {
  if (!p.sealed())
    MOA_THROW(invalid_argument("moa::bench: the plan is not sealed; call plan::seal() first"));
  const std::size_t n = p.backend_span();
  std::vector<synthetic_backend> backends;
  backends.reserve(n);
  for (std::size_t i = 0; i < n; ++i)
    backends.emplace_back(synthetic_options{
        .name = "b" + std::to_string(i), .latency = latency, .seed = opt.seed + i});
  detail::service_log log;
  std::vector<detail::timed_backend> timed;
  timed.reserve(n);
  for (const auto& b : backends) timed.push_back({&b, &log});
  std::vector<backend_ref> refs;
  for (std::size_t i = 0; i < n; ++i) refs.emplace_back(timed[i], std::string(backends[i].name()));
  const std::size_t threads = opt.threads ? opt.threads : detail::widest_group(p);
  inline_executor inl;
  std::optional<concurrent_executor> conc;
  std::optional<async_executor> as;
  if (how == path::concurrent_executor) conc.emplace(threads);
  if (how == path::async_executor) as.emplace(threads);
  std::vector<double> ratio, makespan, critical;
  for (std::size_t i = 0; i < opt.runs; ++i) {
    // A different prompt per run: the synthetic latency draws depend on it.
    const auto prompt = make_request("critical path " + std::to_string(i));
    const auto r = how == path::inline_executor       ? inl.execute(p, refs, prompt)
                   : how == path::concurrent_executor ? conc->execute(p, refs, prompt)
                                                      : as->execute(p, refs, prompt);
    using ms = std::chrono::duration<double, std::milli>;
    // A call that never ran (failed before its backend started) counts as its trace says.
    const double cp = ms(critical_path_with(p, [&](call_id c) {
                        return log.take(r.trace[c].text).value_or(r.trace[c].duration());
                      })).count();
    log.ran.clear();
    const double mk = ms(r.elapsed).count();
    makespan.push_back(mk);
    critical.push_back(cp);
    ratio.push_back(cp > 0 ? mk / cp : 0.0);
  }
  efficiency_report rep;
  rep.path = how;
  rep.runs = opt.runs;
  rep.ratio = distribution::of(ratio);
  rep.makespan_ms = distribution::of(makespan);
  rep.critical_path_ms = distribution::of(critical);
  return rep;
}

}  // namespace moa::bench
