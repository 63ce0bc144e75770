// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Service-time (inference-time) models for the simulator, and recorded arrivals for replay.
///
/// | model         | when to use                                                     |
/// |---------------|-----------------------------------------------------------------|
/// | `constant`    | M/D/1 checks; a model with a fixed output length                |
/// | `exponential` | the paper's analysis; M/M/1 checks                              |
/// | `lognormal`   | measured LLM latencies (right-skewed), from a mean and log-sd   |
/// | `empirical`   | replay a recorded list of inference times                       |

#include <cmath>
#include <cstdint>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

#include "moa/core/random.hpp"
#include "moa/queueing/detail/check.hpp"

namespace moa::queueing {

namespace detail {
/// Uniform in (0, 1]: safe to take the log of.
inline double open_uniform(rng& random) noexcept {
  return double((random() >> 11) + 1) * 0x1.0p-53;
}
/// A standard exponential. -log(u) rather than -log1p(-u): glibc's log is about 2.5x faster, and
/// with u in (0, 1] both are exact to rounding where it matters (u near 1 is rare and small).
inline double standard_exponential(rng& random) noexcept {
  return -std::log(open_uniform(random));
}
}  // namespace detail

/// @brief A distribution of inference times, cheap to copy (empirical samples are shared).
///
/// @code{.cpp}
/// auto s = moa::queueing::service_model::lognormal(/*mean=*/2.0, /*sigma=*/0.5);
/// moa::rng random(1);
/// double t = s.sample(random);
/// double cs2 = s.scv();  // for M/G/1 estimates
/// @endcode
class service_model {
 public:
  enum class kind : std::uint8_t { constant, exponential, lognormal, empirical };

  service_model() = default;  // exponential with mean 1

  static service_model constant(double mean) {
    detail::require_positive(mean, "constant service time", "give the inference time");
    return {kind::constant, mean, 0, {}};
  }
  static service_model exponential(double mean) {
    detail::require_positive(mean, "exponential mean service time", "give the inference time");
    return {kind::exponential, mean, 0, {}};
  }
  /// Lognormal with the given mean and standard deviation `sigma` of log(time).
  static service_model lognormal(double mean, double sigma) {
    detail::require_positive(mean, "lognormal mean service time", "give the inference time");
    if (!(sigma >= 0) || !std::isfinite(sigma))
      detail::fail("lognormal sigma = " + detail::number(sigma) +
                   " must be finite and >= 0 (the standard deviation of log time)");
    return {kind::lognormal, mean, sigma, {}};
  }
  /// Draws uniformly from recorded inference times.
  static service_model empirical(std::vector<double> samples) {
    if (samples.empty())
      detail::fail("an empirical service model needs at least one recorded inference time");
    double sum = 0, squares = 0;
    for (std::size_t i = 0; i < samples.size(); ++i) {
      if (!(samples[i] >= 0) || !std::isfinite(samples[i]))
        detail::fail("recorded inference time " + detail::indexed("samples", i) + " = " +
                     detail::number(samples[i]) + " must be finite and >= 0");
      sum += samples[i];
      squares += samples[i] * samples[i];
    }
    const double n = double(samples.size());
    if (!(sum > 0)) detail::fail("recorded inference times are all zero");
    service_model m{kind::empirical, sum / n, squares / n, {}};
    m.samples_ = std::make_shared<const std::vector<double>>(std::move(samples));
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
  /// Squared coefficient of variation Var[S] / E[S]^2.
  [[nodiscard]] double scv() const noexcept {
    const double m = mean();
    return second_moment() / (m * m) - 1;
  }
  /// The same shape, `factor` times slower (device speeds).
  [[nodiscard]] service_model scaled(double factor) const {
    detail::require_positive(factor, "service time scale factor", "give a positive factor");
    service_model m = *this;
    m.scale_ *= factor;
    return m;
  }
  [[nodiscard]] const std::vector<double>* samples() const noexcept { return samples_.get(); }
  /// The factor applied to recorded samples (1 unless scaled()).
  [[nodiscard]] double scale_of_samples() const noexcept { return scale_; }

  /// One inference time.
  double sample(rng& random) const noexcept {
    switch (kind_) {
      case kind::constant:
        return mean_ * scale_;
      case kind::exponential:
        return mean_ * scale_ * detail::standard_exponential(random);
      case kind::lognormal: {
        const double z = standard_normal(random);
        return mean_ * scale_ * std::exp(b_ * z - b_ * b_ / 2);
      }
      case kind::empirical:
        return scale_ * (*samples_)[random.below(samples_->size())];
    }
    return 0;
  }

  /// Box-Muller; one normal per call keeps the model stateless (shared across threads).
  static double standard_normal(rng& random) noexcept {
    const double u1 = detail::open_uniform(random);
    const double u2 = random.uniform();
    return std::sqrt(-2 * std::log(u1)) * std::cos(2 * std::numbers::pi * u2);
  }

 private:
  service_model(kind k, double mean, double b, std::shared_ptr<const std::vector<double>> s)
      : kind_(k), mean_(mean), b_(b), samples_(std::move(s)) {}

  kind kind_ = kind::exponential;
  double mean_ = 1;   // of the unscaled distribution
  double b_ = 0;      // lognormal: sigma; empirical: E[S^2] unscaled
  double scale_ = 1;  // device speed factor
  std::shared_ptr<const std::vector<double>> samples_;
};

/// @brief One recorded prompt arrival, for trace replay.
struct arrival {
  double time = 0;
  std::uint32_t origin = 0;
};

}  // namespace moa::queueing
