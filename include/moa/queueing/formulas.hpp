// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Closed-form estimates for one FCFS queue and for a fork-join layer.
///
/// | function              | model                         | exact when                          |
/// |-----------------------|-------------------------------|-------------------------------------|
/// | `mm1`                 | Poisson in, exponential out   | always (steady state, rho < 1)      |
/// | `md1`                 | Poisson in, constant service  | always                              |
/// | `mg1`                 | Poisson in, any service       | always (Pollaczek-Khinchine)        |
/// | `kingman`             | renewal in, any service       | approximation; exact-ish at rho->1  |
/// | `fork_join_lower`     | max of the branch means       | a bound for any dependence          |
/// | `fork_join_upper`     | Aven's mean-variance bound    | a bound for any dependence          |
/// | `expected_max_exponential` | independent exponentials | an upper bound for associated       |
/// |                       |                               | branches (Nelson-Tantawi), so for   |
/// |                       |                               | M/M/1 fork-join sojourn times       |
/// | `nelson_tantawi`      | K homogeneous M/M/1 branches  | approximation, within a few percent |
///
/// Every estimate is for the steady state: with rho >= 1 the queue has none, and the functions
/// return `stable = false` with infinite lengths and times instead of throwing, so a sweep can
/// run across the stability boundary.
///
/// @code{.cpp}
/// auto q = moa::queueing::mm1(/*lambda=*/0.5, /*mean_service=*/1.0);
/// // q.rho == 0.5, q.number_in_system == 1.0, q.sojourn == 2.0
/// @endcode

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>

#include "moa/queueing/detail/check.hpp"

namespace moa::queueing {

/// @brief Steady-state figures of one queue: lengths in jobs, times in the unit of the service
/// time. `number_in_system` counts the job in service; `number_waiting` does not.
///
/// @code{.cpp}
/// moa::queueing::queue_estimate q = moa::queueing::md1(0.8, 1.0);
/// double wait = q.waiting;  // 2.0
/// @endcode
struct queue_estimate {
  double rho = 0;
  double number_in_system = 0;  ///< L
  double number_waiting = 0;    ///< Lq
  double sojourn = 0;           ///< W = Wq + E[S]
  double waiting = 0;           ///< Wq
  bool stable = false;
};

namespace detail {
inline queue_estimate from_waiting(double lambda, double mean_service, double wq) {
  const double rho = lambda * mean_service;
  return {rho, lambda * (wq + mean_service), lambda * wq, wq + mean_service, wq, true};
}
inline queue_estimate saturated(double rho) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  return {rho, inf, inf, inf, inf, false};
}
}  // namespace detail

/// M/G/1 by Pollaczek-Khinchine: Wq = lambda E[S^2] / (2 (1 - rho)), with E[S^2] given through
/// the squared coefficient of variation scv = Var[S] / E[S]^2 (1 exponential, 0 constant).
/// Assumes Poisson arrivals, i.i.d. service independent of arrivals, FCFS (any work-conserving
/// order gives the same L).
inline queue_estimate mg1(double lambda, double mean_service, double scv) {
  detail::require_positive(lambda, "arrival rate lambda", "give the mean prompts per unit time");
  detail::require_positive(mean_service, "mean service time", "give the mean inference time");
  if (!(scv >= 0) || !std::isfinite(scv))
    detail::fail("squared coefficient of variation = " + detail::number(scv) +
                 " must be finite and >= 0 (0: constant, 1: exponential)");
  const double rho = lambda * mean_service;
  if (rho >= 1) return detail::saturated(rho);
  const double second = (1 + scv) * mean_service * mean_service;
  return detail::from_waiting(lambda, mean_service, lambda * second / (2 * (1 - rho)));
}

/// M/M/1: L = rho / (1 - rho), W = 1 / (mu - lambda). Poisson arrivals, exponential service.
inline queue_estimate mm1(double lambda, double mean_service) {
  return mg1(lambda, mean_service, 1.0);
}

/// M/D/1: Lq = rho^2 / (2 (1 - rho)). Poisson arrivals, constant service.
inline queue_estimate md1(double lambda, double mean_service) {
  return mg1(lambda, mean_service, 0.0);
}

/// Kingman's G/G/1 approximation: Wq ~ rho / (1 - rho) * (ca2 + cs2) / 2 * E[S], with ca2 and cs2
/// the squared coefficients of variation of inter-arrival and service times. Exact for M/M/1,
/// asymptotically exact in heavy traffic, an approximation otherwise (it ignores third moments).
inline queue_estimate kingman(double lambda, double mean_service, double ca2, double cs2) {
  detail::require_positive(lambda, "arrival rate lambda", "give the mean prompts per unit time");
  detail::require_positive(mean_service, "mean service time", "give the mean inference time");
  if (!(ca2 >= 0) || !(cs2 >= 0) || !std::isfinite(ca2) || !std::isfinite(cs2))
    detail::fail("Kingman needs finite squared coefficients of variation >= 0, got ca2 = " +
                 detail::number(ca2) + ", cs2 = " + detail::number(cs2));
  const double rho = lambda * mean_service;
  if (rho >= 1) return detail::saturated(rho);
  return detail::from_waiting(lambda, mean_service,
                              rho / (1 - rho) * (ca2 + cs2) / 2 * mean_service);
}

/// Lower bound on the mean time of a fork-join layer: the layer ends with its slowest branch, so
/// E[max R_j] >= max E[R_j]. Holds for any dependence between branches.
inline double fork_join_lower(std::span<const double> branch_means) {
  if (branch_means.empty()) detail::fail("a fork-join layer needs at least one branch");
  return *std::max_element(branch_means.begin(), branch_means.end());
}

/// Upper bound on E[max R_j] from the branches' means and variances alone (Aven 1985):
/// E[max] <= mean + sqrt((K - 1) / K * sum_j (Var R_j + (E R_j - mean)^2)), mean the average of
/// the E R_j. Holds for any dependence, so it also covers branches that share queues.
inline double fork_join_upper(std::span<const double> branch_means,
                              std::span<const double> branch_variances) {
  if (branch_means.empty()) detail::fail("a fork-join layer needs at least one branch");
  if (branch_means.size() != branch_variances.size())
    detail::fail("fork_join_upper: " + std::to_string(branch_means.size()) + " means but " +
                 std::to_string(branch_variances.size()) +
                 " variances; give one of each per branch");
  const double k = static_cast<double>(branch_means.size());
  double avg = 0;
  for (double m : branch_means) avg += m;
  avg /= k;
  double spread = 0;
  for (std::size_t j = 0; j < branch_means.size(); ++j)
    spread += branch_variances[j] + (branch_means[j] - avg) * (branch_means[j] - avg);
  return avg + std::sqrt((k - 1) / k * spread);
}

/// E[max_j X_j] for independent exponentials of the given rates. Fork-join sojourn times are
/// associated random variables (Nelson and Tantawi 1988), so for M/M/1 branches, whose sojourn
/// times are exponential, this is an upper bound on the layer's mean time.
inline double expected_max_exponential(std::span<const double> rates) {
  if (rates.empty()) detail::fail("expected_max_exponential needs at least one rate");
  for (std::size_t j = 0; j < rates.size(); ++j)
    detail::require_positive(rates[j], detail::indexed("rate", j), "rates of exponentials are > 0");
  const auto [lo, hi] = std::minmax_element(rates.begin(), rates.end());
  if (*lo == *hi) {  // harmonic number: H_K / r
    double h = 0;
    for (std::size_t i = 1; i <= rates.size(); ++i) h += 1.0 / double(i);
    return h / *lo;
  }
  if (rates.size() <= 16) {
    // Inclusion-exclusion: E[max] = sum over non-empty subsets S of (-1)^{|S|+1} / sum_S r.
    double total = 0;
    const std::size_t subsets = std::size_t{1} << rates.size();
    for (std::size_t s = 1; s < subsets; ++s) {
      double r = 0;
      int bits = 0;
      for (std::size_t j = 0; j < rates.size(); ++j)
        if (s >> j & 1) {
          r += rates[j];
          ++bits;
        }
      total += (bits % 2 ? 1.0 : -1.0) / r;
    }
    return total;
  }
  // Many branches: integrate 1 - prod(1 - e^{-r t}) with Simpson's rule; the tail past
  // (ln K + 40) / r_min is below e^-40 of the mean.
  const double end = (std::log(double(rates.size())) + 40) / *lo;
  constexpr int steps = 20000;
  const double h = end / steps;
  auto f = [&](double t) {
    double p = 1;
    for (double r : rates) p *= -std::expm1(-r * t);
    return 1 - p;
  };
  double sum = f(0) + f(end);
  for (int i = 1; i < steps; ++i) sum += f(i * h) * (i % 2 ? 4 : 2);
  return sum * h / 3;
}

/// Nelson-Tantawi approximation of the mean response time of a fork-join job over K homogeneous
/// M/M/1 branches, each at utilisation rho with mean service time s:
/// R_K ~ [H_K / H_2 + 4 rho / 11 (1 - H_K / H_2)] (12 - rho) / 8 * s / (1 - rho).
/// Assumes every job forks onto all K branches; in a gossip network each branch also serves
/// other prompts, which the approximation folds into rho. Returns +inf when rho >= 1.
inline double nelson_tantawi(std::size_t branches, double rho, double mean_service) {
  if (branches == 0) detail::fail("nelson_tantawi needs at least one branch");
  detail::require_positive(mean_service, "mean service time", "give the mean inference time");
  if (!(rho >= 0)) detail::fail("utilisation rho = " + detail::number(rho) + " must be >= 0");
  if (rho >= 1) return std::numeric_limits<double>::infinity();
  const double r1 = mean_service / (1 - rho);
  if (branches == 1) return r1;
  double hk = 0;
  for (std::size_t i = 1; i <= branches; ++i) hk += 1.0 / double(i);
  const double ratio = hk / 1.5;
  return (ratio + 4 * rho / 11 * (1 - ratio)) * (12 - rho) / 8 * r1;
}

}  // namespace moa::queueing
