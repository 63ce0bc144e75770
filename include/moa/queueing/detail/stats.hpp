// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Small statistics for the simulator: a log-bucketed latency histogram (constant memory and
/// O(1) per sample, so runs of any length can report percentiles) and Student-t intervals.

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

namespace moa::queueing::detail {

/// Buckets from a double's exponent and top 7 mantissa bits: 128 per octave, so a percentile is
/// off by at most 1/256 of its value. Covers 2^-40 .. 2^40 time units; values outside are clamped.
class log_histogram {
 public:
  static constexpr int mantissa_bits = 7;
  static constexpr std::uint64_t low = std::uint64_t(1023 - 40) << mantissa_bits;
  static constexpr std::size_t buckets = std::size_t(80) << mantissa_bits;

  log_histogram() : counts_(buckets, 0) {}

  void add(double x) noexcept {
    const auto key = std::bit_cast<std::uint64_t>(x) >> (52 - mantissa_bits);
    const std::uint64_t i = key < low ? 0 : std::min<std::uint64_t>(key - low, buckets - 1);
    ++counts_[i];
    ++total_;
  }
  void clear() noexcept {
    std::fill(counts_.begin(), counts_.end(), 0);
    total_ = 0;
  }
  [[nodiscard]] std::uint64_t count() const noexcept { return total_; }

  /// The q-quantile (0 < q <= 1), as the midpoint of its bucket; NaN when empty.
  [[nodiscard]] double quantile(double q) const noexcept {
    if (total_ == 0) return std::nan("");
    const auto rank = static_cast<std::uint64_t>(std::ceil(q * double(total_)));
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < buckets; ++i) {
      seen += counts_[i];
      if (seen >= std::max<std::uint64_t>(rank, 1)) {
        const std::uint64_t bits =
            ((i + low) << (52 - mantissa_bits)) | (std::uint64_t{1} << (51 - mantissa_bits));
        return std::bit_cast<double>(bits);
      }
    }
    return std::nan("");
  }

 private:
  std::vector<std::uint64_t> counts_;
  std::uint64_t total_ = 0;
};

/// Two-sided 95% Student-t quantile for `df` degrees of freedom.
inline double t95(std::size_t df) noexcept {
  static constexpr std::array<double, 30> table{
      12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
      2.201,  2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
      2.080,  2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042};
  if (df == 0) return std::nan("");
  if (df <= table.size()) return table[df - 1];
  return 1.95996 + 2.4 / double(df);  // matches the table at 30 within 0.001
}

/// Least-squares slope of y against x and its t statistic (slope / standard error).
struct slope_fit {
  double slope = 0;
  double t = 0;
};
inline slope_fit fit_slope(std::span<const double> x, std::span<const double> y) noexcept {
  const std::size_t n = x.size();
  if (n < 3) return {};
  double mx = 0, my = 0;
  for (std::size_t i = 0; i < n; ++i) {
    mx += x[i];
    my += y[i];
  }
  mx /= double(n);
  my /= double(n);
  double sxx = 0, sxy = 0;
  for (std::size_t i = 0; i < n; ++i) {
    sxx += (x[i] - mx) * (x[i] - mx);
    sxy += (x[i] - mx) * (y[i] - my);
  }
  if (sxx <= 0) return {};
  const double b = sxy / sxx;
  double ssr = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double r = y[i] - my - b * (x[i] - mx);
    ssr += r * r;
  }
  const double se = std::sqrt(ssr / double(n - 2) / sxx);
  const double t = se > 0 ? b / se : (b > 0 ? HUGE_VAL : (b < 0 ? -HUGE_VAL : 0.0));
  return {b, t};
}

}  // namespace moa::queueing::detail
