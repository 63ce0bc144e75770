// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The adaptive layout policy in the simulator: adaptive_source (a plan source that asks an
/// adaptive_policy for each prompt's layout and admission, in virtual time, and records what
/// happened per phase and per time bin), and run_ramp, the load-ramp experiment: a staircase of
/// Poisson loads, given as fractions of a reference layout's stability limit, run once with the
/// adaptive policy and once with the reference layout fixed, on the same arrivals.
///
/// @code{.cpp}
/// moa::queueing::ramp_config cfg;           // n = 4, one device 3x slower, (2, 2) reference
/// auto r = moa::queueing::run_ramp(cfg);    // loads 0.5x .. 2x the (2, 2) limit
/// for (const auto& p : r.adaptive) std::cout << p.load << ' ' << p.p99 << ' ' << p.refused <<
/// '\n';
/// @endcode

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "moa/core/random.hpp"
#include "moa/gossip/random_k.hpp"
#include "moa/queueing/adaptive.hpp"
#include "moa/queueing/detail/check.hpp"
#include "moa/queueing/plan_source.hpp"
#include "moa/queueing/simulator.hpp"

namespace moa::queueing {

/// @brief What happened to the prompts born in one phase of a run.
struct phase_report {
  double start = 0, end = 0;
  double load = 0;                       ///< per-user rate, as a fraction of the reference limit
  std::uint64_t arrived = 0;             ///< prompts offered
  std::uint64_t refused = 0;             ///< refused at once (admission control)
  std::vector<std::uint64_t> at_layout;  ///< admitted, per allowed layout
  std::uint64_t completed = 0;           ///< admitted prompts that ended before the horizon
  double mean_latency = 0, p99 = 0;      ///< over the completed ones (NaN: none)
  double mean_queue = 0, end_queue = 0;  ///< calls in the network (all devices), mean and at end
};

/// @brief One time bin of a run, for the plot.
struct ramp_sample {
  double time = 0;          ///< the bin's start
  double load = 0;          ///< offered per-user rate as a fraction of the reference limit
  double mean_layers = 0;   ///< mean M of the prompts admitted in the bin (NaN: none)
  double mean_calls = 0;    ///< mean (k + 1) M + 1 of those prompts
  double refused = 0;       ///< share of the bin's prompts refused
  double queue = 0;         ///< calls in the network at the bin's start
  double mean_latency = 0;  ///< of the prompts born in the bin that completed (NaN: none)
};

/// @brief A PlanSource (ObservingPlanSource) that draws uniform-gossip plans of the layout an
/// adaptive_policy chooses per prompt, or of one fixed layout without a policy, and records per
/// phase (by birth time) and per time bin. Copyable, so replicate() can run it.
class adaptive_source {
 public:
  /// Adaptive: every allowed layout of the policy.
  adaptive_source(adaptive_policy policy, std::vector<double> phase_ends, double bin)
      : policy_(std::move(policy)),
        layouts_(policy_->config().allowed),
        n_(static_cast<std::uint32_t>(policy_->config().devices)) {
    init(std::move(phase_ends), bin);
  }
  /// Static: one layout for every prompt, everything admitted.
  adaptive_source(std::size_t devices, layout fixed, std::vector<double> phase_ends, double bin)
      : layouts_{fixed}, n_(static_cast<std::uint32_t>(devices)) {
    init(std::move(phase_ends), bin);
  }

  bool admit(std::uint32_t origin, double now) {
    std::uint32_t index = 0;
    bool admitted = true;
    if (policy_) {
      const layout_decision d = policy_->decide(origin, now);
      index = d.index;
      admitted = d.admitted;
    }
    current_ = index;
    phase_report& p = phases_[phase_of(now)];
    ++p.arrived;
    bin& b = bin_at(now);
    ++b.arrived;
    if (!admitted) {
      ++p.refused;
      ++b.refused;
      return false;
    }
    ++p.at_layout[index];
    ++b.admitted;
    b.layers += layouts_[index].layers;
    b.calls += double(layouts_[index].calls());
    ++admitted_;
    return true;
  }

  const plan& operator()(std::uint32_t origin, rng& random) {
    return sources_[current_](origin, random);
  }
  const plan* draw(std::uint32_t origin, rng& random, std::span<std::uint32_t> devices) {
    return sources_[current_].draw(origin, random, devices);
  }

  void served(std::uint32_t device, double duration, double) {
    if (policy_) policy_->observe_service(device, duration);
  }

  void finished(double birth, double now) {
    const double latency = now - birth;
    latencies_[phase_of(birth)].push_back(latency);
    bin& b = bin_at(birth);
    ++b.completed;
    b.latency += latency;
    ++completed_;
  }

  [[nodiscard]] const std::optional<adaptive_policy>& policy() const noexcept { return policy_; }
  [[nodiscard]] std::uint64_t admitted() const noexcept { return admitted_; }
  [[nodiscard]] std::uint64_t completed() const noexcept { return completed_; }

  /// The per-phase figures; `loads` and the run's queue series (sample_period = bin) fill in
  /// the phases' loads and queues.
  [[nodiscard]] std::vector<phase_report> phases(std::span<const double> loads,
                                                 const time_series& series) const {
    std::vector<phase_report> out = phases_;
    for (std::size_t i = 0; i < out.size(); ++i) {
      phase_report& p = out[i];
      p.load = i < loads.size() ? loads[i] : 0;
      std::vector<double> l = latencies_[i];
      p.completed = l.size();
      if (l.empty()) {
        p.mean_latency = p.p99 = std::numeric_limits<double>::quiet_NaN();
      } else {
        double sum = 0;
        for (double x : l) sum += x;
        p.mean_latency = sum / double(l.size());
        const auto k = static_cast<std::size_t>(std::ceil(0.99 * double(l.size()))) - 1;
        std::nth_element(l.begin(), l.begin() + std::ptrdiff_t(k), l.end());
        p.p99 = l[k];
      }
      double total = 0;
      std::size_t samples = 0;
      for (std::size_t s = 0; s < series.time.size(); ++s) {
        if (series.time[s] < p.start || series.time[s] >= p.end) continue;
        double q = 0;
        for (std::size_t d = 0; d < series.devices; ++d) q += series.queue[s * series.devices + d];
        total += q;
        ++samples;
        p.end_queue = q;
      }
      p.mean_queue = samples ? total / double(samples) : 0;
    }
    return out;
  }

  /// The time bins, with `limit` (the reference per-user rate) to express load as a fraction.
  [[nodiscard]] std::vector<ramp_sample> samples(double limit, const time_series& series) const {
    std::vector<ramp_sample> out(bins_.size());
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (std::size_t i = 0; i < bins_.size(); ++i) {
      const bin& b = bins_[i];
      ramp_sample& s = out[i];
      s.time = double(i) * bin_;
      s.load = double(b.arrived) / bin_ / double(n_) / limit;
      s.mean_layers = b.admitted ? b.layers / double(b.admitted) : nan;
      s.mean_calls = b.admitted ? b.calls / double(b.admitted) : nan;
      s.refused = b.arrived ? double(b.refused) / double(b.arrived) : 0;
      s.mean_latency = b.completed ? b.latency / double(b.completed) : nan;
      if (i < series.time.size())
        for (std::size_t d = 0; d < series.devices; ++d)
          s.queue += series.queue[i * series.devices + d];
    }
    return out;
  }

 private:
  struct bin {
    std::uint64_t arrived = 0, refused = 0, admitted = 0, completed = 0;
    double layers = 0, calls = 0, latency = 0;
  };

  void init(std::vector<double> phase_ends, double width) {
    if (phase_ends.empty()) detail::fail("give at least one phase");
    detail::require_positive(width, "bin width", "give the plot's time step");
    for (const layout& l : layouts_) sources_.emplace_back(n_, l.layers, uniform_gossip{l.fanout});
    ends_ = std::move(phase_ends);
    double start = 0;
    for (double e : ends_) {
      if (!(e > start)) detail::fail("phase ends must increase");
      phase_report p;
      p.start = start;
      p.end = e;
      p.at_layout.assign(layouts_.size(), 0);
      phases_.push_back(p);
      start = e;
    }
    latencies_.resize(ends_.size());
    bin_ = width;
    const double bins = std::ceil(ends_.back() / width);
    if (bins > 1e7) detail::fail("more than 10^7 time bins; give a wider bin");
    bins_.resize(static_cast<std::size_t>(bins));
  }

  std::size_t phase_of(double t) const noexcept {
    const auto it = std::upper_bound(ends_.begin(), ends_.end(), t);
    return it == ends_.end() ? ends_.size() - 1 : std::size_t(it - ends_.begin());
  }
  bin& bin_at(double t) noexcept {
    const auto i = static_cast<std::size_t>(std::max(0.0, t / bin_));
    return bins_[std::min(i, bins_.size() - 1)];
  }

  std::optional<adaptive_policy> policy_;
  std::vector<layout> layouts_;
  std::uint32_t n_;
  std::vector<gossip_source<uniform_gossip>> sources_;
  std::uint32_t current_ = 0;
  std::vector<double> ends_;
  std::vector<phase_report> phases_;
  std::vector<std::vector<double>> latencies_;
  std::vector<bin> bins_;
  double bin_ = 1;
  std::uint64_t admitted_ = 0, completed_ = 0;
};

/// @brief The ramp experiment's settings. The policy's devices and prior service times default
/// to the network's (devices, alpha).
struct ramp_config {
  std::size_t devices = 4;
  std::vector<double> alpha{1, 1, 1, 3};  ///< mean service time per device (or one for all)
  layout reference{2, 2};                 ///< the static layout; loads are fractions of its limit
  std::vector<double> loads{0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0};
  double phase_length = 20000;  ///< virtual time per load step
  double drain = -1;            ///< time after the last arrival (< 0: one phase)
  double bin = -1;              ///< plot step (< 0: phase_length / 40)
  std::uint64_t seed = 1;
  /// Per-user rate of load 1; 0: the reference layout's limit at `alpha`. Set it to replay the
  /// arrivals of one ramp on devices of other speeds (a simulator calibrated on a live run).
  double limit = 0;
  adaptive_config policy;  ///< devices and prior_service filled in when left at their defaults
};

/// @brief Both runs of a ramp, per phase and per time bin.
struct ramp_report {
  double limit = 0;  ///< the reference layout's per-user stability limit
  std::vector<phase_report> adaptive, fixed;
  std::vector<ramp_sample> adaptive_series, fixed_series;
  run_result adaptive_run, fixed_run;
  std::uint64_t adaptive_admitted = 0, adaptive_completed = 0, fixed_completed = 0,
                fixed_admitted = 0;
  std::uint64_t changes = 0;  ///< layout changes of the adaptive policy
  std::vector<layout> layouts;
};

/// @brief Poisson arrivals at per-user rate loads[p] * limit in phase p (equal users), each phase
/// `length` long; fixed seed.
inline std::vector<arrival> ramp_arrivals(std::size_t devices, std::span<const double> loads,
                                          double limit, double length, std::uint64_t seed) {
  std::vector<arrival> out;
  rng random(mix_seed(seed, 0x7a3b));
  double start = 0;
  for (double f : loads) {
    const std::vector<double> rates(devices, f * limit);
    poisson_process users(rates);
    for (arrival a = users.next(random); a.time < length; a = users.next(random))
      out.push_back({start + a.time, a.origin});
    start += length;
  }
  return out;
}

/// @brief Runs the ramp with the adaptive policy and with the reference layout fixed, on the same
/// arrivals and seeds. Exponential service times with mean alpha_j on device j.
inline ramp_report run_ramp(const ramp_config& c) {
  if (c.devices < 2 || c.devices > 4096) detail::fail("the ramp takes 2 to 4096 devices");
  detail::require_rates(c.alpha, c.devices, "alpha", "give each device's mean inference time");
  if (c.loads.empty() || c.loads.size() > 1000)
    detail::fail("give 1 to 1000 load steps (fractions of the reference limit)");
  for (double f : c.loads)
    if (!(f > 0 && f <= 10)) detail::fail("load steps must lie in (0, 10] times the limit");
  detail::require_positive(c.phase_length, "phase_length", "give the virtual time per load step");
  detail::require_fanout(c.reference.fanout, c.devices);
  std::vector<double> alpha(c.devices);
  for (std::size_t j = 0; j < c.devices; ++j)
    alpha[j] = c.alpha.size() == 1 ? c.alpha[0] : c.alpha[j];
  ramp_report r;
  const double one = 1;
  const verdict v = uniform_stability(c.devices, c.reference.layers, c.reference.fanout,
                                      std::span<const double>(&one, 1), alpha);
  r.limit = v.max_scale;
  if (c.limit != 0) {
    detail::require_positive(c.limit, "limit", "give the per-user rate of load 1, or 0");
    r.limit = c.limit;
  }
  const double length = c.phase_length;
  const double drain = c.drain < 0 ? length : c.drain;
  const double bin = c.bin > 0 ? c.bin : length / 40;
  std::vector<double> ends;
  for (std::size_t p = 1; p <= c.loads.size(); ++p) ends.push_back(length * double(p));
  ends.back() += drain;  // the last phase's prompts drain before the horizon

  sim_config cfg;
  cfg.devices = c.devices;
  cfg.lambda.assign(c.devices, r.limit);
  cfg.trace = ramp_arrivals(c.devices, c.loads, r.limit, length, c.seed);
  if (cfg.trace.empty()) detail::fail("the ramp has no arrivals; give longer phases");
  for (double a : alpha) cfg.service.push_back(service_model::exponential(a));
  cfg.horizon = ends.back();
  cfg.warmup = 0;
  cfg.seed = c.seed;
  cfg.sample_period = bin;

  adaptive_config pc = c.policy;
  if (pc.devices == 0) pc.devices = c.devices;
  if (pc.prior_service.size() == 1 && pc.prior_service[0] == 1.0) pc.prior_service = alpha;
  adaptive_source adaptive(adaptive_policy(pc), ends, bin);
  r.adaptive_run = simulate(cfg, adaptive);
  r.adaptive = adaptive.phases(c.loads, r.adaptive_run.series);
  r.adaptive_series = adaptive.samples(r.limit, r.adaptive_run.series);
  r.adaptive_admitted = adaptive.admitted();
  r.adaptive_completed = adaptive.completed();
  r.changes = adaptive.policy()->changes();
  r.layouts = pc.allowed;

  adaptive_source fixed(c.devices, c.reference, ends, bin);
  r.fixed_run = simulate(cfg, fixed);
  r.fixed = fixed.phases(c.loads, r.fixed_run.series);
  r.fixed_series = fixed.samples(r.limit, r.fixed_run.series);
  r.fixed_admitted = fixed.admitted();
  r.fixed_completed = fixed.completed();
  return r;
}

}  // namespace moa::queueing
