// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Statistics of an evaluation: percentile bootstrap intervals over items, nearest-rank
/// percentiles, and the logistic regression behind a length-controlled win rate.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include <Eigen/Dense>

#include "moa/core/error.hpp"
#include "moa/core/random.hpp"

namespace moa::eval {

/// @brief An estimate with a confidence interval.
struct interval {
  double value = 0.0;
  double low = 0.0;
  double high = 0.0;
};

/// @brief The mean of `v` (0 when empty).
inline double mean(std::span<const double> v) noexcept {
  double s = 0.0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / double(v.size());
}

/// @brief The nearest-rank percentile `q` in [0, 1] of `v` (0 when empty).
inline double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const auto rank = static_cast<std::size_t>(std::ceil(q * double(v.size())));
  return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
}

/// @brief Percentile bootstrap of a statistic of n items: `stat(indices)` computes it on a
/// resample (indices drawn with replacement). Items, not calls, are resampled, because items are
/// the independent units. Deterministic for a seed.
inline interval bootstrap(std::size_t n,
                          const std::function<double(std::span<const std::size_t>)>& stat,
                          std::size_t resamples = 2000, double confidence = 0.95,
                          std::uint64_t seed = 1) {
  if (!(confidence > 0.0 && confidence < 1.0))
    MOA_THROW(invalid_argument("moa::eval::bootstrap: confidence must be in (0, 1)"));
  std::vector<std::size_t> idx(n);
  for (std::size_t i = 0; i < n; ++i) idx[i] = i;
  interval out{stat(idx), 0, 0};
  if (n == 0 || resamples == 0) {
    out.low = out.high = out.value;
    return out;
  }
  rng random(seed);
  std::vector<double> stats(resamples);
  for (auto& s : stats) {
    for (auto& i : idx) i = random.below(n);
    s = stat(idx);
  }
  std::sort(stats.begin(), stats.end());
  const double tail = (1.0 - confidence) / 2.0;
  auto at = [&](double q) {
    const auto k = static_cast<std::size_t>(std::floor(q * double(resamples - 1) + 0.5));
    return stats[std::min(k, resamples - 1)];
  };
  out.low = at(tail);
  out.high = at(1.0 - tail);
  return out;
}

/// @brief The bootstrap interval of the mean of `values`.
inline interval bootstrap_mean(std::span<const double> values, std::size_t resamples = 2000,
                               double confidence = 0.95, std::uint64_t seed = 1) {
  return bootstrap(
      values.size(),
      [values](std::span<const std::size_t> idx) {
        double s = 0.0;
        for (auto i : idx) s += values[i];
        return idx.empty() ? 0.0 : s / double(idx.size());
      },
      resamples, confidence, seed);
}

/// @brief Logistic regression y ~ sigmoid(X b) by Newton's method (IRLS), for targets y in
/// [0, 1] (a tie counts one half) and a small ridge penalty so separable data stays finite.
inline Eigen::VectorXd fit_logistic(const Eigen::MatrixXd& X, const Eigen::VectorXd& y,
                                    double ridge = 1e-4, int iterations = 50) {
  const auto p = X.cols();
  Eigen::VectorXd b = Eigen::VectorXd::Zero(p);
  for (int it = 0; it < iterations; ++it) {
    const Eigen::VectorXd mu =
        (-(X * b).array()).exp().unaryExpr([](double e) { return 1.0 / (1.0 + e); }).matrix();
    const Eigen::VectorXd w = (mu.array() * (1.0 - mu.array())).max(1e-12).matrix();
    Eigen::MatrixXd H = X.transpose() * w.asDiagonal() * X;
    H.diagonal().array() += ridge * double(X.rows());
    const Eigen::VectorXd g = X.transpose() * (y - mu) - ridge * double(X.rows()) * b;
    const Eigen::VectorXd step = H.ldlt().solve(g);
    b += step;
    if (step.lpNorm<Eigen::Infinity>() < 1e-10) break;
  }
  return b;
}

/// @brief One pairwise judgement for the length-controlled win rate.
struct judgement {
  double outcome = 0.5;       ///< 1: the candidate won, 0: the reference won, 0.5: a tie
  double length_delta = 0.0;  ///< candidate length minus reference length (characters)
};

/// @brief The length-controlled win rate, in the manner of AlpacaEval 2.0: fit
/// `P(win) = sigmoid(theta + phi * tanh(delta / sd(delta)))` over the judgements, then report
/// the win rate with the length term removed, sigmoid(theta). AlpacaEval's fit also carries a
/// per-instruction difficulty learnt across many models; with two layouts it is not identifiable,
/// so it is left out (stated in docs/EVAL.md).
inline double length_controlled_win_rate(std::span<const judgement> js) {
  if (js.empty()) return 0.0;
  const auto n = static_cast<Eigen::Index>(js.size());
  double m = 0.0, ss = 0.0;
  for (const auto& j : js) m += j.length_delta;
  m /= double(js.size());
  for (const auto& j : js) ss += (j.length_delta - m) * (j.length_delta - m);
  const double sd = std::sqrt(ss / double(js.size()));
  Eigen::MatrixXd X(n, 2);
  Eigen::VectorXd y(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    X(i, 0) = 1.0;
    X(i, 1) = sd > 0 ? std::tanh(js[std::size_t(i)].length_delta / sd) : 0.0;
    y(i) = js[std::size_t(i)].outcome;
  }
  const auto b = fit_logistic(X, y);
  return 1.0 / (1.0 + std::exp(-b(0)));
}

}  // namespace moa::eval
