// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The workload model shared by the live side (synthetic backends, the in-process network) and
/// the simulator: one service-time distribution with one sampler, one arrival type, one Poisson
/// arrival process and one trace check. A simulated and a live run of the same configuration then
/// draw their times from the same code.
///
/// | service model | when to use                                                     |
/// |---------------|-----------------------------------------------------------------|
/// | `constant`    | M/D/1 checks; a model with a fixed output length                |
/// | `exponential` | the paper's analysis; M/M/1 checks                              |
/// | `lognormal`   | measured LLM latencies (right-skewed), from a mean and log-sd   |
/// | `empirical`   | replay a recorded list of inference times                       |
///
/// @code{.cpp}
/// auto s = moa::service_model::lognormal(/*mean=*/2.0, /*sigma=*/0.5);
/// moa::rng random(1);
/// double t = s.sample(random);
/// double lambda[] = {0.1, 0.0, 0.2};            // a silent user is allowed
/// auto arrivals = moa::poisson_arrivals(lambda, 1000, /*seed=*/1);
/// @endcode

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <numbers>
#include <span>
#include <string>
#include <vector>

#include "moa/core/error.hpp"
#include "moa/core/random.hpp"

namespace moa {

namespace detail {

[[noreturn]] inline void workload_fail(const std::string& what) {
  MOA_THROW(invalid_argument("moa: " + what));
}

/// A number for a message: "0.5" and "10000", not "0.500000"; nan and inf by name.
inline std::string number(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

/// Uniform in (0, 1]: safe to take the log of.
inline double open_uniform(rng& random) noexcept {
  return double((random() >> 11) + 1) * 0x1.0p-53;
}

/// Marsaglia and Tsang's ziggurat for the standard exponential (256 layers). Why not -log(u):
/// a simulator draws one exponential per event, and glibc's log was 18% of its time; the
/// ziggurat takes one 64-bit draw and a multiply 98.9% of the time, and is exact.
struct exponential_ziggurat {
  static constexpr double r = 7.69711747013104972;   // start of the tail
  static constexpr double v = 3.949659822581572e-3;  // area of each layer
  std::array<double, 257> x{};                       // layer widths, x[256] = 0
  std::array<double, 257> f{};                       // exp(-x)
  exponential_ziggurat() noexcept {
    x[0] = v / std::exp(-r);
    x[1] = r;
    for (std::size_t i = 2; i < 256; ++i) x[i] = -std::log(v / x[i - 1] + std::exp(-x[i - 1]));
    x[256] = 0;
    for (std::size_t i = 0; i <= 256; ++i) f[i] = std::exp(-x[i]);
  }
};

/// Built once at start-up (std::exp is not constexpr in C++20); read without a guard.
inline const exponential_ziggurat ziggurat_table{};

/// The ziggurat's rare paths (1.1% of draws), out of line so the fast path inlines small.
[[gnu::noinline]] inline double exponential_slow(rng& random, std::size_t i, double x) noexcept {
  const exponential_ziggurat& z = ziggurat_table;
  for (;;) {
    if (i == 0) return exponential_ziggurat::r - std::log(open_uniform(random));  // the tail
    if (z.f[i] + random.uniform() * (z.f[i + 1] - z.f[i]) < std::exp(-x)) return x;
    const std::uint64_t bits = random();
    i = bits & 0xff;
    x = double(bits >> 11) * 0x1.0p-53 * z.x[i];
    if (x < z.x[i + 1]) return x;
  }
}

/// A standard exponential variate (mean 1).
inline double standard_exponential(rng& random) noexcept {
  const std::uint64_t bits = random();
  const std::size_t i = bits & 0xff;
  const double x = double(bits >> 11) * 0x1.0p-53 * ziggurat_table.x[i];
  if (x < ziggurat_table.x[i + 1]) [[likely]]
    return x;  // inside the layer's rectangle, under the curve
  return exponential_slow(random, i, x);
}

/// A standard normal variate (Box-Muller, one per call: the model stays stateless, so it can be
/// shared across threads).
inline double standard_normal(rng& random) noexcept {
  const double u1 = open_uniform(random);
  const double u2 = random.uniform();
  return std::sqrt(-2 * std::log(u1)) * std::cos(2 * std::numbers::pi * u2);
}

}  // namespace detail

/// @brief A distribution of service (inference) times, cheap to copy (empirical samples are
/// shared). Times are in the caller's unit: the simulator's time unit, or nanoseconds for
/// moa::latency_model.
class service_model {
 public:
  enum class kind : std::uint8_t { constant, exponential, lognormal, empirical };

  /// Largest lognormal sigma accepted. Beyond it the median is below e^-8 of the mean and the
  /// mean of any feasible run rests on a handful of huge samples (SCV e^16 - 1 = 8.9e6); near
  /// sigma = 38, exp(sigma z - sigma^2 / 2) underflows and every draw is 0.
  static constexpr double max_sigma = 4.0;

  service_model() = default;  // exponential with mean 1

  static service_model constant(double mean) {
    require_mean(mean, "constant service time");
    return {kind::constant, mean, 0, {}};
  }
  static service_model exponential(double mean) {
    require_mean(mean, "exponential mean service time");
    return {kind::exponential, mean, 0, {}};
  }
  /// Lognormal with the given mean and standard deviation `sigma` of log(time), 0 <= sigma <= 4.
  static service_model lognormal(double mean, double sigma) {
    require_mean(mean, "lognormal mean service time");
    if (!(sigma >= 0) || !(sigma <= max_sigma))
      detail::workload_fail("lognormal sigma = " + detail::number(sigma) +
                            " must lie in [0, 4] (the standard deviation of log time; above 4 "
                            "the mean rests on a handful of samples)");
    return {kind::lognormal, mean, sigma, {}};
  }
  /// Draws uniformly from recorded inference times.
  static service_model empirical(std::vector<double> samples) {
    if (samples.empty())
      detail::workload_fail(
          "an empirical service model needs at least one recorded inference time");
    double sum = 0, squares = 0, cubes = 0;
    for (std::size_t i = 0; i < samples.size(); ++i) {
      if (!(samples[i] >= 0) || !std::isfinite(samples[i]))
        detail::workload_fail("recorded inference time samples[" + std::to_string(i) +
                              "] = " + detail::number(samples[i]) + " must be finite and >= 0");
      sum += samples[i];
      squares += samples[i] * samples[i];
      cubes += samples[i] * samples[i] * samples[i];
    }
    const double n = double(samples.size());
    if (!(sum > 0)) detail::workload_fail("recorded inference times are all zero");
    if (!std::isfinite(cubes))
      detail::workload_fail("recorded inference times are too large to cube; change the unit");
    service_model m{kind::empirical, sum / n, squares / n, {}};
    m.third_ = cubes / n;
    m.samples_ = std::make_shared<const std::vector<double>>(std::move(samples));
    m.data_ = m.samples_->data();
    m.size_ = m.samples_->size();
    return m;
  }

  [[nodiscard]] kind type() const noexcept { return kind_; }
  [[nodiscard]] double mean() const noexcept { return mean_ * scale_; }
  [[nodiscard]] double sigma() const noexcept { return kind_ == kind::lognormal ? b_ : 0.0; }
  /// E[S^2], for Pollaczek-Khinchine.
  [[nodiscard]] double second_moment() const noexcept {
    const double m = mean();
    switch (kind_) {
      case kind::constant:
        return m * m;
      case kind::exponential:
        return 2 * m * m;
      case kind::lognormal:
        return m * m * std::exp(b_ * b_);
      case kind::empirical:
        return b_ * scale_ * scale_;
    }
    return 0;
  }
  /// E[S^3], for the variance of M/G/1 waiting times (Takacs).
  [[nodiscard]] double third_moment() const noexcept {
    const double m = mean();
    switch (kind_) {
      case kind::constant:
        return m * m * m;
      case kind::exponential:
        return 6 * m * m * m;
      case kind::lognormal:
        return m * m * m * std::exp(3 * b_ * b_);
      case kind::empirical:
        return third_ * scale_ * scale_ * scale_;
    }
    return 0;
  }
  /// Squared coefficient of variation Var[S] / E[S]^2.
  [[nodiscard]] double scv() const noexcept {
    const double m = mean();
    return second_moment() / (m * m) - 1;
  }
  /// The same shape, `factor` times slower (device speeds).
  [[nodiscard]] service_model scaled(double factor) const {
    require_mean(factor, "service time scale factor");
    if (!std::isfinite(mean_ * scale_ * factor))
      detail::workload_fail("service time scale factor " + detail::number(factor) +
                            " makes the mean time infinite");
    service_model m = *this;
    m.scale_ *= factor;
    return m;
  }
  [[nodiscard]] const std::vector<double>* samples() const noexcept { return samples_.get(); }
  /// The factor applied to recorded samples (1 unless scaled()).
  [[nodiscard]] double scale_of_samples() const noexcept { return scale_; }

  /// The same distribution (kind, parameters and, for empirical, the same samples).
  [[nodiscard]] bool same_as(const service_model& o) const noexcept {
    return kind_ == o.kind_ && mean_ == o.mean_ && b_ == o.b_ && scale_ == o.scale_ &&
           data_ == o.data_;
  }

  /// One service time: the one sampler of moa, used by the simulator and the synthetic backend.
  double sample(rng& random) const noexcept {
    switch (kind_) {
      case kind::constant:
        return mean_ * scale_;
      case kind::exponential:
        return mean_ * scale_ * detail::standard_exponential(random);
      case kind::lognormal:
        return mean_ * scale_ * std::exp(b_ * detail::standard_normal(random) - b_ * b_ / 2);
      case kind::empirical:
        return scale_ * data_[random.below(size_)];
    }
    return 0;
  }

 private:
  service_model(kind k, double mean, double b, std::shared_ptr<const std::vector<double>> s)
      : kind_(k), mean_(mean), b_(b), samples_(std::move(s)) {}

  static void require_mean(double v, const char* what) {
    if (!(v > 0.0) || !std::isfinite(v))
      detail::workload_fail(std::string(what) + " = " + detail::number(v) +
                            " must be positive and finite; give the mean inference time");
  }

  kind kind_ = kind::exponential;
  double mean_ = 1;               // of the unscaled distribution
  double b_ = 0;                  // lognormal: sigma; empirical: E[S^2] unscaled
  double scale_ = 1;              // device speed factor
  double third_ = 0;              // empirical: E[S^3] unscaled
  const double* data_ = nullptr;  // empirical samples (owned by samples_)
  std::size_t size_ = 0;
  std::shared_ptr<const std::vector<double>> samples_;
};

/// @brief One prompt arrival: born at device `origin` at `time` (in the run's time unit).
struct arrival {
  double time = 0;
  std::uint32_t origin = 0;
};

/// @brief Checks a recorded trace for an `devices`-device network: origins in range, times finite,
/// >= 0 and sorted. Throws moa::invalid_argument naming the first bad entry.
inline void check_trace(std::span<const arrival> trace, std::size_t devices) {
  for (std::size_t i = 0; i < trace.size(); ++i) {
    if (trace[i].origin >= devices)
      detail::workload_fail("trace entry " + std::to_string(i) + " is born at device " +
                            std::to_string(trace[i].origin) + " of a " + std::to_string(devices) +
                            "-device network");
    if (!std::isfinite(trace[i].time) || trace[i].time < 0 ||
        (i > 0 && trace[i].time < trace[i - 1].time))
      detail::workload_fail("trace times must be finite, >= 0 and sorted; entry " +
                            std::to_string(i) + " is not");
  }
}

/// @brief Independent Poisson prompt streams, one per user, drawn as their superposition:
/// exponential gaps at the total rate, each prompt's user drawn in proportion to its rate (the
/// same process). One event source instead of n: a simulator's event heap then holds one
/// arrival, not one per user. Users with rate 0 are silent.
///
/// @code{.cpp}
/// double lambda[] = {0.1, 0.2};
/// moa::poisson_process users(lambda);
/// moa::rng random(1);
/// moa::arrival a = users.next(random);  // a.time > 0, a.origin in {0, 1}
/// @endcode
class poisson_process {
 public:
  poisson_process() = default;
  explicit poisson_process(std::span<const double> lambda) {
    if (lambda.empty()) detail::workload_fail("give at least one user's prompt rate (lambda)");
    if (lambda.size() > (std::size_t{1} << 31))
      detail::workload_fail("lambda has " + std::to_string(lambda.size()) +
                            " users; at most 2^31 are supported");
    for (std::size_t i = 0; i < lambda.size(); ++i) {
      if (!(lambda[i] >= 0) || !std::isfinite(lambda[i]))
        detail::workload_fail("lambda[" + std::to_string(i) + "] = " + detail::number(lambda[i]) +
                              " must be finite and >= 0 (0: a silent user)");
      total_ += lambda[i];
    }
    if (!(total_ > 0))
      detail::workload_fail("every lambda is zero; give at least one user a positive rate");
    if (!std::isfinite(total_)) detail::workload_fail("the total prompt rate is infinite");
    users_ = static_cast<std::uint32_t>(lambda.size());
    bool equal = true;
    for (double l : lambda) equal = equal && l == lambda[0];
    if (!equal) build_alias(lambda);
  }

  [[nodiscard]] double total_rate() const noexcept { return total_; }
  [[nodiscard]] std::uint32_t users() const noexcept { return users_; }
  /// The time of the last arrival drawn (0 before the first).
  [[nodiscard]] double now() const noexcept { return now_; }

  /// The next arrival after the previous one.
  arrival next(rng& random) noexcept {
    now_ += detail::standard_exponential(random) / total_;
    return {now_, origin(random)};
  }

 private:
  // Walker's alias method (Vose's construction): O(1) per draw for any rates.
  void build_alias(std::span<const double> lambda) {
    const std::size_t n = lambda.size();
    probability_.resize(n);
    alias_.resize(n);
    std::vector<std::uint32_t> small, large;
    for (std::size_t i = 0; i < n; ++i) {
      probability_[i] = lambda[i] * double(n) / total_;
      (probability_[i] < 1 ? small : large).push_back(static_cast<std::uint32_t>(i));
    }
    while (!small.empty() && !large.empty()) {
      const std::uint32_t s = small.back(), l = large.back();
      small.pop_back();
      alias_[s] = l;
      probability_[l] -= 1 - probability_[s];
      if (probability_[l] < 1) {
        large.pop_back();
        small.push_back(l);
      }
    }
    // Leftovers (rounding) keep themselves, except silent users, which never do.
    std::uint32_t loud = 0;
    while (lambda[loud] == 0) ++loud;
    for (auto* rest : {&small, &large})
      for (std::uint32_t i : *rest) {
        probability_[i] = lambda[i] > 0 ? 2.0 : 0.0;
        alias_[i] = loud;
      }
  }

  std::uint32_t origin(rng& random) noexcept {
    const auto i = static_cast<std::uint32_t>(random.below(users_));
    if (alias_.empty()) return i;
    return random.uniform() < probability_[i] ? i : alias_[i];
  }

  double total_ = 0;
  double now_ = 0;
  std::uint32_t users_ = 0;
  std::vector<double> probability_;  // empty when every user has the same rate
  std::vector<std::uint32_t> alias_;
};

/// @brief The most arrivals poisson_arrivals materialises (4 GiB of them); longer runs should
/// draw from a moa::poisson_process as they go.
inline constexpr std::size_t max_materialised_arrivals = std::size_t{1} << 28;

/// @brief `prompts` Poisson arrivals of the users' rates (per time unit), sorted by time.
inline std::vector<arrival> poisson_arrivals(std::span<const double> lambda, std::size_t prompts,
                                             std::uint64_t seed) {
  poisson_process users(lambda);
  if (prompts > max_materialised_arrivals)
    detail::workload_fail("poisson_arrivals: " + std::to_string(prompts) +
                          " prompts asked; at most 2^28 are materialised");
  rng random(seed);
  std::vector<arrival> out;
  out.reserve(prompts);
  for (std::size_t p = 0; p < prompts; ++p) out.push_back(users.next(random));
  return out;
}

}  // namespace moa
