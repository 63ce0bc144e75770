// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The load-adaptive layout policy: which (M, k) each prompt gets, and whether it is admitted,
/// from live estimates of the arrival rates and service times and the stability analysis.
///
/// One implementation for every network: the simulator drives it in virtual time
/// (adaptive_source), the in-process network in wall-clock seconds. The caller gives the time;
/// the policy never reads a clock.
///
/// Estimates (all kept in O(1) per event):
/// - each origin's arrival rate: an exponentially decayed count c_i of its arrivals with time
///   constant `rate_window`, divided by the window actually elapsed (no start-up bias). Counts are
///   Poisson, so the bottleneck's load sum_i w_i lambda_i (w_i its visits per prompt of origin i)
///   has relative variance about sum_i w_i^2 c_i / (sum_i w_i c_i)^2;
/// - each device's mean service time: an exponentially weighted mean over about `service_window`
///   calls (the exact mean before that), started from `prior_service` with the weight of one
///   call, with its variance; relative standard error sd / (mean sqrt(n_eff)).
///
/// Decision. With uniform gossip every layout's per-device utilisation comes from the traffic
/// equations in closed form (uniform_stability: rho_j = alpha_j ((M+1) lambda_j + M k / (n-1)
/// (sum lambda - lambda_j))). The layout choice is conservative: it uses the bottleneck's
/// utilisation times (1 + z rse), rse the relative standard errors of its load and of its service
/// time in quadrature. Layouts are ranked by quality (a user's table, e.g. measured with
/// `moa eval`, or by default the call count (k+1)M+1: more calls, better answers).
/// - The first `warmup_arrivals` prompts take the best layout: there is no evidence of load yet.
/// - The current layout is kept while its conservative utilisation is below `target` (and its
///   p99 estimate below `latency_objective`).
/// - Over target: the policy moves at once to the best layout that fits (down is never delayed).
/// - A better layout is taken only when it fits with room to spare (utilisation below
///   target * (1 - hysteresis), p99 below objective * (1 - hysteresis)) and the current one has
///   been held for at least `hold` time: the hysteresis band and the hold keep the choice from
///   oscillating under constant load.
/// - Admission: when even the smallest layout (fewest calls) does not fit and the *lower* bound
///   of its utilisation, point * (1 - z rse), is at or over `target`, prompts are admitted in the
///   proportion target / point (a deterministic credit, no random draw) and the others refused
///   at once with `layout_reason::over_capacity`. Admitted prompts then load the bottleneck at
///   the target, so nothing admitted waits in a diverging queue; and a refusal needs evidence of
///   overload, not just an uncertain estimate, because it turns a user away.
///
/// The p99 estimate (only when a latency objective is set) treats every call as if served at the
/// bottleneck as an M/M/1 queue: mean ~ (M H_{k+1} + 1) alpha_b / (1 - rho_b) and p99 ~ ln(100)
/// times the mean (exact for one exponential stage, an over-estimate for a sum of stages).
///
/// Not thread-safe: the in-process network serialises its calls.
///
/// @code{.cpp}
/// moa::queueing::adaptive_config cfg;
/// cfg.devices = 4;
/// cfg.prior_service = {1.0, 1.0, 1.0, 3.0};
/// cfg.allowed = {{2, 2}, {1, 2}, {1, 1}};
/// moa::queueing::adaptive_policy policy(cfg);
/// auto d = policy.decide(/*origin=*/0, /*now=*/12.5);
/// if (d.admitted) run_with(d.layers, d.fanout); else refuse(d.why());
/// policy.observe_service(/*device=*/3, /*seconds=*/2.9);
/// @endcode

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "moa/queueing/detail/check.hpp"
#include "moa/queueing/stability.hpp"

namespace moa::queueing {

/// @brief One allowed layout: M proposer layers, k gossip peers per layer, and its quality
/// (larger is better; NaN takes the call count (k + 1) M + 1).
struct layout {
  std::uint32_t layers = 2;
  std::uint32_t fanout = 2;
  double quality = std::numeric_limits<double>::quiet_NaN();
  [[nodiscard]] constexpr std::uint64_t calls() const noexcept {
    return (std::uint64_t{fanout} + 1) * layers + 1;
  }
};

/// @brief Why a prompt got its layout, or was refused.
enum class layout_reason : std::uint8_t {
  warming_up,    ///< too few arrivals seen to estimate the load: the start layout
  held,          ///< the current layout still fits under the target
  upgraded,      ///< a better layout fits with room to spare (past the hysteresis and the hold)
  downgraded,    ///< the current layout went over the target; the best that fits was taken
  at_smallest,   ///< nothing fits; the smallest layout, with admission control
  over_capacity  ///< refused: the smallest layout is over the target at the offered load
};

inline constexpr std::string_view to_string(layout_reason r) noexcept {
  switch (r) {
    case layout_reason::warming_up:
      return "warming_up";
    case layout_reason::held:
      return "held";
    case layout_reason::upgraded:
      return "upgraded";
    case layout_reason::downgraded:
      return "downgraded";
    case layout_reason::at_smallest:
      return "at_smallest";
    case layout_reason::over_capacity:
      return "over_capacity";
  }
  return "unknown";
}

/// @brief The policy's decision for one prompt: what to record in its trace.
struct layout_decision {
  bool admitted = true;
  std::uint32_t index = 0;  ///< into adaptive_config::allowed (as given)
  std::uint32_t layers = 0;
  std::uint32_t fanout = 0;
  layout_reason reason = layout_reason::held;
  double utilisation = 0;  ///< the chosen layout's conservative bottleneck utilisation
  double p99 = 0;          ///< its p99 estimate (0 without a latency objective)
  std::uint32_t bottleneck = 0;
  double offered_rate = 0;  ///< the estimated total prompt rate

  /// One line for a trace: "M=2 k=2 held: rho<=0.61 at device 3, 0.095 prompts/unit".
  [[nodiscard]] std::string why() const {
    std::string s = admitted ? "M=" + std::to_string(layers) + " k=" + std::to_string(fanout) + " "
                             : std::string("refused ");
    s += to_string(reason);
    s += ": rho<=" + detail::number(utilisation) + " at device " + std::to_string(bottleneck);
    if (p99 > 0) s += ", p99~" + detail::number(p99);
    s += ", " + detail::number(offered_rate) + " prompts/unit";
    return s;
  }
};

/// @brief The policy's settings; `check()` names the first bad one.
struct adaptive_config {
  std::size_t devices = 0;
  std::vector<layout> allowed{{2, 2}, {2, 1}, {1, 2}, {1, 1}, {1, 0}};
  std::vector<double> prior_service{1.0};  ///< mean service time per device, or one for all
  double target = 0.8;                     ///< utilisation target of the bottleneck, in (0, 1)
  double hysteresis = 0.2;                 ///< upgrade margin, in [0, 1)
  double rate_window = 1000;               ///< time constant of the rate estimates (> 0)
  double warmup_arrivals = 50;             ///< arrivals seen before the first change (>= 0)
  double service_window = 256;             ///< calls in the service-time mean, >= 1
  double z = 1.645;                        ///< standard errors added (>= 0; 1.645: 95% one-sided)
  double hold = -1;                        ///< least time between upgrades; < 0: rate_window
  double latency_objective = std::numeric_limits<double>::infinity();  ///< p99 bound (> 0)

  void check() const {
    if (devices < 2) detail::fail("the adaptive policy needs at least 2 devices");
    if (allowed.empty()) detail::fail("give at least one allowed layout (M, k)");
    if (allowed.size() > 64) detail::fail("at most 64 allowed layouts");
    for (std::size_t i = 0; i < allowed.size(); ++i) {
      const layout& l = allowed[i];
      if (l.layers < 1 || l.layers > 64)
        detail::fail(detail::indexed("allowed", i) + ": layers = " + std::to_string(l.layers) +
                     " must lie in [1, 64]");
      detail::require_fanout(l.fanout, devices);
      if (!std::isnan(l.quality) && !std::isfinite(l.quality))
        detail::fail(detail::indexed("allowed", i) + ": quality must be finite");
    }
    detail::require_rates(prior_service, devices, "prior_service",
                          "give each device's expected mean inference time");
    if (!(target > 0 && target < 1))
      detail::fail("target utilisation = " + detail::number(target) + " must lie in (0, 1)");
    if (!(hysteresis >= 0 && hysteresis < 1))
      detail::fail("hysteresis = " + detail::number(hysteresis) + " must lie in [0, 1)");
    detail::require_positive(rate_window, "rate_window", "give the rate estimate's time constant");
    if (!(warmup_arrivals >= 0) || !std::isfinite(warmup_arrivals))
      detail::fail("warmup_arrivals = " + detail::number(warmup_arrivals) + " must be >= 0");
    if (!(service_window >= 1) || !std::isfinite(service_window))
      detail::fail("service_window = " + detail::number(service_window) + " must be >= 1");
    if (!(z >= 0) || !std::isfinite(z)) detail::fail("z = " + detail::number(z) + " must be >= 0");
    if (!std::isfinite(hold) && !std::isnan(hold)) detail::fail("hold must be finite");
    if (std::isnan(hold)) detail::fail("hold must be a number");
    if (!(latency_objective > 0))
      detail::fail("latency_objective = " + detail::number(latency_objective) + " must be > 0");
  }
};

/// @brief The adaptive layout policy (see the file comment).
class adaptive_policy {
 public:
  explicit adaptive_policy(adaptive_config cfg) : cfg_(std::move(cfg)) {
    cfg_.check();
    const std::size_t n = cfg_.devices;
    hold_ = cfg_.hold < 0 ? cfg_.rate_window : cfg_.hold;
    order_.resize(cfg_.allowed.size());
    std::iota(order_.begin(), order_.end(), std::uint32_t{0});
    auto quality = [&](std::uint32_t i) {
      const layout& l = cfg_.allowed[i];
      return std::isnan(l.quality) ? double(l.calls()) : l.quality;
    };
    std::stable_sort(order_.begin(), order_.end(), [&](std::uint32_t a, std::uint32_t b) {
      if (quality(a) != quality(b)) return quality(a) > quality(b);
      return cfg_.allowed[a].calls() < cfg_.allowed[b].calls();
    });
    smallest_ = 0;
    for (std::uint32_t r = 1; r < order_.size(); ++r)
      if (cfg_.allowed[order_[r]].calls() < cfg_.allowed[order_[smallest_]].calls()) smallest_ = r;
    count_.assign(n, 0.0);
    rate_.assign(n, 0.0);
    mean_.resize(n);
    var_.assign(n, 0.0);
    seen_.assign(n, 0.0);
    for (std::size_t j = 0; j < n; ++j)
      mean_[j] = cfg_.prior_service.size() == 1 ? cfg_.prior_service[0] : cfg_.prior_service[j];
    prompts_.assign(cfg_.allowed.size(), 0);
    // Start at the best layout: with no arrivals seen, everything fits.
    current_ = 0;
  }

  /// Records an arrival at `origin` at time `now` (non-decreasing) and decides its layout.
  layout_decision decide(std::uint32_t origin, double now) {
    if (origin >= cfg_.devices)
      detail::fail("origin " + std::to_string(origin) + " of a " + std::to_string(cfg_.devices) +
                   "-device network");
    if (!(now >= last_)) now = last_;  // a clock that steps back, or NaN: keep the last time
    if (!started_) {
      start_ = now;
      started_ = true;
    }
    const double decay = std::exp(-(now - last_) / cfg_.rate_window);
    last_ = now;
    decay_all_ *= decay;
    count_[origin] += 1 / decay_all_;  // counts kept in the scale of decay_all_ (O(1) update)
    if (decay_all_ < 1e-200) renormalise();
    // The window actually elapsed: tau (1 - e^{-t/tau}), so early rates are not biased low.
    const double elapsed = cfg_.rate_window * -std::expm1(-(now - start_) / cfg_.rate_window);
    // Origins whose own estimates are reported (report_arrival_rate): as if their count had been
    // observed here over this window, so its Poisson uncertainty enters the decision too.
    for (std::size_t i = 0; i < reported_rate_.size(); ++i)
      if (reported_rate_[i] >= 0 && i != origin)
        count_[i] = reported_rate_[i] * elapsed / decay_all_;
    const double norm = elapsed > 0 ? 1 / elapsed : 0;
    double total_rate = 0;
    for (std::size_t i = 0; i < cfg_.devices; ++i) {
      rate_[i] = count_[i] * decay_all_ * norm;
      total_rate += rate_[i];
    }
    layout_decision d;
    d.offered_rate = total_rate;
    if (++arrivals_ <= cfg_.warmup_arrivals) {
      // No evidence of load yet: the start layout, everything admitted.
      const layout& l = cfg_.allowed[order_[current_]];
      d.index = order_[current_];
      d.layers = l.layers;
      d.fanout = l.fanout;
      d.reason = layout_reason::warming_up;
      ++prompts_[d.index];
      return d;
    }
    const std::uint32_t before = current_;
    fit cur = evaluate(current_);
    if (fits(cur, 1)) {
      d.reason = layout_reason::held;
      if (current_ > 0 && now - changed_ >= hold_) {
        for (std::uint32_t r = 0; r < current_; ++r) {
          const fit better = evaluate(r);
          if (fits(better, 1 - cfg_.hysteresis)) {
            current_ = r;
            cur = better;
            d.reason = layout_reason::upgraded;
            break;
          }
        }
      }
    } else {
      d.reason = layout_reason::at_smallest;
      std::uint32_t chosen = smallest_;
      fit chosen_fit = current_ == smallest_ ? cur : evaluate(smallest_);
      for (std::uint32_t r = 0; r < order_.size(); ++r) {
        if (r == current_) continue;
        const fit f = evaluate(r);
        if (fits(f, 1)) {
          chosen = r;
          chosen_fit = f;
          d.reason = layout_reason::downgraded;
          break;
        }
      }
      current_ = chosen;
      cur = chosen_fit;
    }
    if (current_ != before) {
      changed_ = now;
      ++changes_;
    }
    const layout& l = cfg_.allowed[order_[current_]];
    d.index = order_[current_];
    d.layers = l.layers;
    d.fanout = l.fanout;
    d.utilisation = cur.rho;
    d.p99 = cur.p99;
    d.bottleneck = cur.bottleneck;
    if (d.reason == layout_reason::at_smallest && cur.low >= cfg_.target) {
      // Admit the proportion that loads the bottleneck at the target. Refusing turns users away,
      // so it waits for the lower confidence bound, not the upper one, to pass the target.
      credit_ += cfg_.target / cur.point;
      if (credit_ >= 1) {
        credit_ -= 1;
      } else {
        d.admitted = false;
        d.reason = layout_reason::over_capacity;
        ++refused_;
        return d;
      }
    } else {
      credit_ = 0;
    }
    ++prompts_[d.index];
    return d;
  }

  /// Records one call's service time on `device` (in the unit of `now`).
  void observe_service(std::uint32_t device, double duration) {
    if (device >= cfg_.devices || !(duration >= 0) || !std::isfinite(duration)) return;
    seen_[device] += 1;
    const double w = 1 / std::min(seen_[device] + 1, cfg_.service_window);  // the prior: 1 call
    const double delta = duration - mean_[device];
    mean_[device] += w * delta;
    var_[device] = (1 - w) * (var_[device] + w * delta * delta);
  }

  /// Origin `origin`'s arrival rate (per time unit) as that origin estimates it itself: for
  /// networks where each origin runs a policy of its own and sees only its own arrivals (the
  /// ZeroMQ devices gossip their rates). From the next decision on it stands for that origin's
  /// count, until the next report. Reports that are negative, NaN or infinite are ignored; the
  /// caller checks and clamps what it was told.
  void report_arrival_rate(std::uint32_t origin, double rate) {
    if (origin >= cfg_.devices || !(rate >= 0) || !std::isfinite(rate)) return;
    if (reported_rate_.empty()) reported_rate_.assign(cfg_.devices, -1.0);
    reported_rate_[origin] = rate;
  }

  /// Device `device`'s mean service time as it is reported (by the device, checked by the
  /// caller): replaces this policy's estimate. A report carries no spread, so its variance is
  /// taken as 0. Reports that are not positive and finite are ignored.
  void report_service(std::uint32_t device, double mean) {
    if (device >= cfg_.devices || !(mean > 0) || !std::isfinite(mean)) return;
    mean_[device] = mean;
    var_[device] = 0;
  }

  /// `origin`'s arrival rate (per time unit) at time `now`, from the arrivals decided here: what
  /// a device reports of itself. 0 before two arrivals span some time.
  [[nodiscard]] double rate_estimate(std::uint32_t origin, double now) const {
    if (origin >= cfg_.devices || !started_) return 0;
    if (!(now >= last_)) now = last_;
    const double elapsed = cfg_.rate_window * -std::expm1(-(now - start_) / cfg_.rate_window);
    if (!(elapsed > 0)) return 0;
    return count_[origin] * decay_all_ * std::exp(-(now - last_) / cfg_.rate_window) / elapsed;
  }

  [[nodiscard]] const adaptive_config& config() const noexcept { return cfg_; }
  /// Prompts admitted at each allowed layout (indexed as adaptive_config::allowed).
  [[nodiscard]] std::span<const std::uint64_t> admitted() const noexcept { return prompts_; }
  [[nodiscard]] std::uint64_t refused() const noexcept { return refused_; }
  /// How many times the layout changed.
  [[nodiscard]] std::uint64_t changes() const noexcept { return changes_; }
  /// The estimated prompt rate of each origin at the last decision.
  [[nodiscard]] std::span<const double> arrival_rates() const noexcept { return rate_; }
  /// The estimated mean service time of each device.
  [[nodiscard]] std::span<const double> service_means() const noexcept { return mean_; }

 private:
  struct fit {
    double rho = 0;    // conservative: point * (1 + z rse)
    double point = 0;  // the estimate itself
    double low = 0;    // point * (1 - z rse)
    double p99 = 0;
    std::uint32_t bottleneck = 0;
  };

  [[nodiscard]] bool fits(const fit& f, double scale) const noexcept {
    return f.rho < cfg_.target * scale && f.p99 < cfg_.latency_objective * scale;
  }

  // The conservative bottleneck utilisation (and p99 estimate) of the layout ranked r.
  fit evaluate(std::uint32_t r) const {
    const layout& l = cfg_.allowed[order_[r]];
    const verdict v = uniform_stability(cfg_.devices, l.layers, l.fanout, rate_, mean_);
    const std::size_t b = v.bottleneck;
    // rho_b = alpha_b sum_i w_i lambda_i with w_b = M + 1 and w_i = M k / (n - 1) for the other
    // origins; each lambda_i rests on a (decayed) Poisson count c_i, so the relative variance of
    // the sum is sum_i w_i^2 c_i / (sum_i w_i c_i)^2.
    const double own = double(l.layers) + 1;
    const double peer = double(l.layers) * double(l.fanout) / double(cfg_.devices - 1);
    double weighted = 0, squares = 0;
    for (std::size_t i = 0; i < cfg_.devices; ++i) {
      const double w = i == b ? own : peer;
      weighted += w * count_[i];
      squares += w * w * count_[i];
    }
    // count_ is kept divided by decay_all_: the ratio needs one factor of it back.
    const double rate_var = weighted > 0 ? squares / (weighted * weighted) / decay_all_ : 1;
    const double n_eff = std::min(seen_[b] + 1, cfg_.service_window);
    const double service_rse = std::sqrt(var_[b] / n_eff) / mean_[b];
    const double rse = std::sqrt(rate_var + service_rse * service_rse);
    fit f{.rho = v.max_utilisation * (1 + cfg_.z * rse),
          .point = v.max_utilisation,
          .low = v.max_utilisation * std::max(0.0, 1 - cfg_.z * rse),
          .bottleneck = static_cast<std::uint32_t>(b)};
    if (std::isfinite(cfg_.latency_objective)) {
      if (f.rho >= 1) {
        f.p99 = std::numeric_limits<double>::infinity();
      } else {
        double h = 0;
        for (std::uint32_t i = 1; i <= l.fanout + 1; ++i) h += 1.0 / i;
        f.p99 = std::log(100.0) * (l.layers * h + 1) * mean_[b] / (1 - f.rho);
      }
    }
    return f;
  }

  void renormalise() {
    for (double& c : count_) c *= decay_all_;
    decay_all_ = 1;
  }

  adaptive_config cfg_;
  double hold_ = 0;
  std::vector<std::uint32_t> order_;  // allowed indices, best quality first
  std::uint32_t smallest_ = 0;        // rank of the fewest-calls layout
  std::uint32_t current_ = 0;         // rank of the current layout
  std::vector<double> count_;         // decayed arrival counts, divided by decay_all_
  std::vector<double> rate_;
  std::vector<double> mean_, var_, seen_;
  std::vector<std::uint64_t> prompts_;
  std::vector<double> reported_rate_;  // per origin, < 0: none (empty until the first report)
  double decay_all_ = 1;
  double last_ = 0, start_ = 0, changed_ = 0, credit_ = 0;
  bool started_ = false;
  std::uint64_t refused_ = 0, changes_ = 0, arrivals_ = 0;
};

}  // namespace moa::queueing
