// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Is a distributed MoA network stable, and by how much? Per-device arrival rates from the
/// traffic equations, utilisations, the bottleneck, the margin and the largest stable scaling of
/// the arrival rates.
///
/// The model (Mitra, Kaswan, Ulukus 2024): user i sends prompts as a Poisson process of rate
/// lambda_i to its device i; in each of M layers the prompt is served by i and by the peers the
/// gossip strategy picks, and i aggregates once at the end. Device j serves calls with mean time
/// alpha_j. The network is stable iff every device's utilisation rho_j = alpha_j Lambda_j < 1,
/// where Lambda_j is the rate of calls reaching j.
///
/// Traffic equations. A prompt born at i makes V(i, j) calls on device j in expectation (the
/// *visit matrix*); for gossip V = (M + 1) I + M P with P the inclusion matrix. Calls never feed
/// back, so the traffic equations Lambda = V^T lambda are explicit; `jackson_arrival_rates`
/// solves the general open-network form Lambda = gamma + R^T Lambda for routings with feedback.
///
/// Two paths:
/// - uniform gossip (the paper's protocol): a closed form, no allocation, constexpr; what
///   `stability<Topology>` and `uniform_stability` use (tens of nanoseconds for n = 64);
/// - anything else (graphs, weights, layered and DAG plans): `analyse` with Eigen.
///
/// Theorem 1 of the paper is the uniform, homogeneous case: stable iff
/// alpha ((k + 1) M + 1) lambda < 1; with device speeds alpha_j the slowest device binds.
///
/// @code{.cpp}
/// using edge = moa::gossip_topology<moa::devices<4>, moa::layers<2>, moa::random_k<2>>;
/// constexpr auto v = moa::queueing::stability<edge>({.lambda = 0.1, .alpha = 1.0});
/// static_assert(v.stable);  // v.max_lambda == 1/7, v.utilisation[j] == 0.7
/// @endcode

#include <Eigen/Core>
#include <Eigen/LU>

#include <algorithm>
#include <array>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "moa/gossip/random_k.hpp"
#include "moa/queueing/detail/check.hpp"
#include "moa/queueing/formulas.hpp"
#include "moa/queueing/service.hpp"
#include "moa/topology/plan.hpp"

namespace moa::queueing {

/// @brief The verdict on a configuration, without per-device vectors (the allocation-free path).
///
/// @code{.cpp}
/// double lambda[] = {0.1}, alpha[] = {1.0};
/// moa::queueing::verdict v = moa::queueing::uniform_stability(4, 2, 2, lambda, alpha);
/// if (!v.stable) scale_down(v.max_scale);
/// @endcode
struct verdict {
  bool stable = false;
  double max_utilisation = 0;  ///< rho of the bottleneck
  double margin = 0;           ///< 1 - max_utilisation: the headroom (negative when unstable)
  double max_scale = 0;        ///< the network is stable for every s * lambda with s < max_scale
  std::size_t bottleneck = 0;  ///< the device with the largest utilisation (lowest index on ties)
};

/// @brief The verdict plus per-device arrival rates and utilisations.
///
/// @code{.cpp}
/// auto r = moa::queueing::analyse(lambda, alpha, moa::queueing::gossip_visits(2, p));
/// std::cout << r.arrival.transpose() << '\n' << r.utilisation.transpose() << '\n';
/// @endcode
struct stability_report : verdict {
  Eigen::VectorXd arrival;      ///< Lambda_j: calls per unit time reaching device j
  Eigen::VectorXd utilisation;  ///< rho_j = alpha_j Lambda_j
};

namespace detail {

constexpr verdict verdict_from_max(double max_rho, std::size_t bottleneck) noexcept {
  verdict v;
  v.max_utilisation = max_rho;
  v.margin = 1 - max_rho;
  v.stable = max_rho < 1;
  v.max_scale = max_rho > 0 ? 1 / max_rho : std::numeric_limits<double>::infinity();
  v.bottleneck = bottleneck;
  return v;
}

constexpr void require_rates(std::span<const double> values, std::size_t n, const char* name,
                             const char* fix, bool zero_allowed = false) {
  if (values.size() != 1 && values.size() != n)
    fail(std::string(name) + " has " + std::to_string(values.size()) + " entries for " +
         std::to_string(n) + " devices; give one per device, or a single value for all");
  for (std::size_t i = 0; i < values.size(); ++i) {
    if ((values[i] > 0.0 || (zero_allowed && values[i] == 0.0)) && values[i] < HUGE_VAL) continue;
    if (zero_allowed)  // message built only on failure
      fail(indexed(name, i) + " = " + number(values[i]) + " must be finite and >= 0; " + fix);
    require_positive(values[i], indexed(name, i), fix);
  }
}

}  // namespace detail

/// @brief Uniform gossip in closed form: Lambda_j = (M + 1) lambda_j + M k / (n - 1) (sum lambda
/// - lambda_j). `lambda` and `alpha` hold one value per device or one for all (a user's rate may
/// be 0: a silent user); `utilisation`, if not empty, receives rho_j (n entries). No allocation,
/// O(n) for any n.
constexpr verdict uniform_stability(std::size_t n, std::size_t layers, std::size_t k,
                                    std::span<const double> lambda, std::span<const double> alpha,
                                    std::span<double> utilisation = {}) {
  detail::require_fanout(k, n);
  detail::require_rates(lambda, n, "lambda",
                        "give each user's prompt rate (prompts per unit time; 0: a silent user)",
                        true);
  detail::require_rates(alpha, n, "alpha", "give each device's mean inference time");
  if (!utilisation.empty() && utilisation.size() != n)
    detail::fail("the utilisation output has " + std::to_string(utilisation.size()) +
                 " entries for " + std::to_string(n) + " devices");
  const double m = double(layers);
  const double share = n > 1 ? double(k) / double(n - 1) : 0.0;
  double total = 0;
  if (lambda.size() == 1)
    total = lambda[0] * double(n);
  else
    for (double l : lambda) total += l;
  double max_rho = -1;
  std::size_t bottleneck = 0;
  for (std::size_t j = 0; j < n; ++j) {
    const double own = lambda.size() == 1 ? lambda[0] : lambda[j];
    const double a = alpha.size() == 1 ? alpha[0] : alpha[j];
    const double rho = a * ((m + 1) * own + m * share * (total - own));
    if (!utilisation.empty()) utilisation[j] = rho;
    if (rho > max_rho) {
      max_rho = rho;
      bottleneck = j;
    }
  }
  return detail::verdict_from_max(max_rho, bottleneck);
}

/// @brief Theorem 1: the largest per-user rate a homogeneous, uniform-gossip network sustains,
/// 1 / (alpha ((k + 1) M + 1)) (stable for every lambda strictly below it).
constexpr double theorem1_limit(std::size_t layers, std::size_t k, double alpha) {
  detail::require_positive(alpha, "alpha", "give the mean inference time");
  return 1.0 / (alpha * (double(k + 1) * double(layers) + 1));
}

/// @brief Theorem 1 with device speeds: with uniform gossip and equal user rates every device
/// receives the same call rate, so the slowest device (alpha_max) binds.
constexpr double heterogeneous_limit(std::size_t layers, std::size_t k,
                                     std::span<const double> alpha) {
  if (alpha.empty()) detail::fail("alpha is empty; give each device's mean inference time");
  double slowest = 0;
  for (std::size_t j = 0; j < alpha.size(); ++j) {
    if (!(alpha[j] > 0.0) || !(alpha[j] < HUGE_VAL))
      detail::require_positive(alpha[j], detail::indexed("alpha", j),
                               "give each device's mean inference time");
    slowest = alpha[j] > slowest ? alpha[j] : slowest;
  }
  return theorem1_limit(layers, k, slowest);
}

/// @brief The rates of a typed stability query: one prompt rate per user, one mean inference
/// time per device.
struct rate_config {
  double lambda = 0;  ///< prompts per unit time, per user
  double alpha = 1;   ///< mean inference time of every device
};

/// @brief The verdict on a compile-time topology, with its per-device utilisations in a
/// std::array (no allocation; usable in constant expressions).
///
/// @code{.cpp}
/// auto v = moa::queueing::stability<edge>({.lambda = 0.1, .alpha = 1.0});
/// for (double rho : v.utilisation) std::cout << rho << ' ';
/// @endcode
template <std::size_t N>
struct static_verdict : verdict {
  double max_lambda = 0;  ///< the largest per-user rate (scaled uniformly) that stays stable
  std::array<double, N> utilisation{};
};

namespace detail {
template <class Topology>
constexpr void check_uniform_topology() {
  static_assert(std::is_base_of_v<uniform_gossip, typename Topology::gossip_type>,
                "moa::queueing::stability<T>: the closed form covers uniform gossip (random_k); "
                "for other strategies build the inclusion matrix and call analyse()");
}
}  // namespace detail

/// @brief Stability of a moa::gossip_topology with uniform gossip, per-user rates and per-device
/// mean inference times.
template <class Topology>
constexpr static_verdict<Topology::device_count> stability(
    const std::array<double, Topology::device_count>& lambda,
    const std::array<double, Topology::device_count>& alpha) {
  detail::check_uniform_topology<Topology>();
  static_verdict<Topology::device_count> out;
  static_cast<verdict&>(out) = uniform_stability(Topology::device_count, Topology::layer_count,
                                                 Topology::fanout, lambda, alpha, out.utilisation);
  double largest = 0;
  for (double l : lambda) largest = l > largest ? l : largest;
  out.max_lambda = largest * out.max_scale;
  return out;
}

/// @brief Stability of a moa::gossip_topology with uniform gossip, equal user rates and equal
/// devices (Theorem 1).
template <class Topology>
constexpr static_verdict<Topology::device_count> stability(const rate_config& rates) {
  detail::check_uniform_topology<Topology>();
  constexpr std::size_t n = Topology::device_count;
  detail::require_positive(rates.lambda, "lambda", "give the prompt rate per user");
  detail::require_positive(rates.alpha, "alpha", "give the mean inference time");
  // Every device carries the same load: one product, no loop over the devices.
  const double rho = rates.alpha * rates.lambda *
                     (double(Topology::fanout + 1) * double(Topology::layer_count) + 1);
  static_verdict<n> out;
  static_cast<verdict&>(out) = detail::verdict_from_max(rho, 0);
  out.utilisation.fill(rho);
  out.max_lambda = rates.lambda * out.max_scale;
  return out;
}

// --- The general path (Eigen) --------------------------------------------------------------

/// @brief The visit matrix of gossip: V = (M + 1) I + M P, V(i, j) the expected calls on device
/// j per prompt born at i, P the inclusion matrix (see gossip_matrix.hpp).
template <class = void>  // instantiated only where called (compile-time budget)
Eigen::MatrixXd gossip_visits(std::size_t layers,
                              const Eigen::Ref<const Eigen::MatrixXd>& inclusion) {
  if (inclusion.rows() == 0 || inclusion.rows() != inclusion.cols())
    detail::fail("the inclusion matrix must be square and non-empty (one row per device)");
  Eigen::MatrixXd v = double(layers) * inclusion;
  v.diagonal().array() += double(layers) + 1;
  return v;
}

/// @brief The visit matrix of a fixed plan per origin (layered, DAG): V(i, j) counts the calls
/// on backend j in `source(i)`. `source` maps an origin to a moa::plan (for a layered MoA with
/// one plan, return it for every origin).
template <class Source>
requires requires(Source& s, std::uint32_t o) {
  { s(o) } -> std::convertible_to<const moa::plan&>;
}
Eigen::MatrixXd plan_visits(Source&& source, std::size_t n) {
  if (n == 0) detail::fail("a network needs at least one device (n = 0)");
  const auto size = static_cast<Eigen::Index>(n);
  Eigen::MatrixXd v = Eigen::MatrixXd::Zero(size, size);
  for (std::uint32_t o = 0; o < n; ++o) {
    const moa::plan& p = source(o);
    for (const auto& c : p.calls()) {
      if (c.backend >= n)
        detail::fail("the plan of origin " + std::to_string(o) + " calls device " +
                     std::to_string(c.backend) + " of a " + std::to_string(n) + "-device network");
      v(o, c.backend) += 1;
    }
  }
  return v;
}

/// @brief The traffic equations: Lambda = V^T lambda.
template <class = void>  // instantiated only where called (compile-time budget)
Eigen::VectorXd arrival_rates(const Eigen::Ref<const Eigen::VectorXd>& lambda,
                              const Eigen::Ref<const Eigen::MatrixXd>& visits) {
  if (visits.rows() != visits.cols() || visits.rows() != lambda.size())
    detail::fail("the visit matrix is " + std::to_string(visits.rows()) + " x " +
                 std::to_string(visits.cols()) + " but lambda has " +
                 std::to_string(lambda.size()) + " entries; give an n x n matrix and n rates");
  for (Eigen::Index i = 0; i < lambda.size(); ++i)
    if (!(lambda(i) >= 0) || !std::isfinite(lambda(i)))
      detail::fail(detail::indexed("lambda", std::size_t(i)) + " = " + detail::number(lambda(i)) +
                   " must be finite and >= 0; give each user's prompt rate (0: a silent user)");
  if (!visits.allFinite() || (visits.array() < 0).any())
    detail::fail("the visit matrix must hold finite, non-negative expected call counts");
  return visits.transpose() * lambda;
}

/// @brief The general verdict: per-user rates, per-device mean inference times, any visit
/// matrix (gossip_visits for any inclusion matrix, plan_visits for fixed plans).
template <class = void>  // instantiated only where called (compile-time budget)
stability_report analyse(const Eigen::Ref<const Eigen::VectorXd>& lambda,
                         const Eigen::Ref<const Eigen::VectorXd>& alpha,
                         const Eigen::Ref<const Eigen::MatrixXd>& visits) {
  stability_report r;
  r.arrival = arrival_rates(lambda, visits);
  if (alpha.size() != lambda.size())
    detail::fail("alpha has " + std::to_string(alpha.size()) + " entries for " +
                 std::to_string(lambda.size()) + " devices; give one mean inference time each");
  for (Eigen::Index j = 0; j < alpha.size(); ++j)
    detail::require_positive(alpha(j), detail::indexed("alpha", std::size_t(j)),
                             "give each device's mean inference time");
  r.utilisation = alpha.cwiseProduct(r.arrival);
  Eigen::Index worst = 0;
  const double max_rho = r.utilisation.maxCoeff(&worst);
  static_cast<verdict&>(r) = detail::verdict_from_max(max_rho, std::size_t(worst));
  return r;
}

/// @brief Open-network traffic equations with feedback: Lambda = gamma + R^T Lambda, R(i, j) the
/// probability that a call finished at i sends a new call to j (retries, forwarding). Rows of R
/// must sum to at most 1 and traffic must eventually leave (spectral radius < 1).
template <class = void>  // instantiates Eigen's LU only where called (compile-time budget)
Eigen::VectorXd jackson_arrival_rates(const Eigen::Ref<const Eigen::VectorXd>& gamma,
                                      const Eigen::Ref<const Eigen::MatrixXd>& routing) {
  const auto n = gamma.size();
  if (n == 0 || routing.rows() != n || routing.cols() != n)
    detail::fail("jackson_arrival_rates needs n external rates and an n x n routing matrix");
  if (!gamma.allFinite() || (gamma.array() < 0).any())
    detail::fail("external arrival rates must be finite and >= 0");
  if (!routing.allFinite() || (routing.array() < 0).any() ||
      (routing.rowwise().sum().array() > 1 + 1e-12).any())
    detail::fail("routing probabilities must be >= 0 with rows summing to at most 1");
  const Eigen::MatrixXd system = Eigen::MatrixXd::Identity(n, n) - routing.transpose();
  Eigen::PartialPivLU<Eigen::MatrixXd> lu(system);
  Eigen::VectorXd lambda = lu.solve(gamma);
  if (!lambda.allFinite() || (lambda.array() < -1e-9).any() ||
      (system * lambda - gamma).norm() > 1e-9 * (1 + gamma.norm()))
    detail::fail(
        "the routing matrix keeps traffic in the network forever (I - R^T is "
        "singular); every call must eventually leave with positive probability");
  return lambda;
}

/// @brief End-to-end latency of a gossip prompt born at a device: M fork-join layers (the origin
/// and its peers) and the aggregation at the origin, from per-device M/G/1 sojourn times.
///
/// What each figure is (docs/QUEUEING.md has their errors against the simulator):
/// - `lower`: a bound for any dependence between branches, E[max] >= max E: per layer the larger
///   of the origin's mean sojourn and the mean sojourn of a peer drawn with the inclusion
///   probabilities;
/// - `upper`: a bound for any dependence and any service time with a finite variance: per layer
///   min over c of c + sum over branches of E[(R - c)+], each term bounded from the branch's mean
///   and variance alone (Lo/Scarf), peers weighted by their inclusion probabilities;
/// - `approx`: the estimate, lower + theta * cv * (I - lower) kept within [lower, upper], where I
///   is the mean of the slowest of independent exponential branches over the gossip's peer sets,
///   theta the Nelson-Tantawi factor at the branches' mean utilisation (exact interpolation for
///   homogeneous M/M/1 branches) and cv the branches' sojourn coefficient of variation.
/// The bounds are bounds *given* the per-device sojourn moments; those moments treat each device
/// as M/G/1 at its arrival rate (exact for first-layer calls, approximate for later layers,
/// whose arrivals come in forks), so the network can exceed `upper` where that approximation is
/// off. Infinite when a device is unstable.
struct latency_bounds {
  double lower = 0;   ///< a lower bound (see above)
  double approx = 0;  ///< the estimate; lower <= approx <= upper always
  double upper = 0;   ///< an upper bound (see above)
};

namespace detail {

/// Mean, variance and utilisation of an M/G/1 sojourn (Pollaczek-Khinchine, and Takacs for the
/// second moment of the wait). A device with no arrivals has the service time alone.
struct sojourn {
  double mean = 0, variance = 0, rho = 0;
};
inline sojourn mg1_sojourn(double arrival, const service_model& s) {
  const double m = s.mean(), m2 = s.second_moment(), m3 = s.third_moment();
  const double service_var = std::max(0.0, m2 - m * m);
  if (!(arrival > 0)) return {m, service_var, 0};
  const double rho = arrival * m;
  constexpr double inf = std::numeric_limits<double>::infinity();
  if (rho >= 1) return {inf, inf, rho};
  const double wq = arrival * m2 / (2 * (1 - rho));
  const double wq2 = 2 * wq * wq + arrival * m3 / (3 * (1 - rho));
  return {wq + m, std::max(0.0, wq2 - wq * wq) + service_var, rho};
}

/// Peers of one class: `weight` expected peers per layer with this sojourn.
struct peer_class {
  sojourn time;
  double weight = 0;
};

/// E[(R - c)+] <= ((mu - c) + sqrt(var + (mu - c)^2)) / 2 for any R of mean mu and variance var.
inline double excess_bound(const sojourn& r, double c) noexcept {
  const double d = r.mean - c;
  return (d + std::sqrt(r.variance + d * d)) / 2;
}

/// One fork-join layer of an origin with sojourn `o` and its peer classes (weights sum to k).
inline latency_bounds layer_latency(const sojourn& o, std::span<const peer_class> peers) {
  double k = 0, peer_mean = 0, rho_sum = o.rho, var_sum = o.variance, mean2_sum = o.mean * o.mean;
  double hi = o.mean + 10 * std::sqrt(o.variance), mean_max = o.mean;
  for (const auto& p : peers) {
    k += p.weight;
    peer_mean += p.weight * p.time.mean;
    rho_sum += p.weight * p.time.rho;
    var_sum += p.weight * p.time.variance;
    mean2_sum += p.weight * p.time.mean * p.time.mean;
    hi = std::max(hi, p.time.mean + 10 * std::sqrt(p.time.variance));
    mean_max = std::max(mean_max, p.time.mean);
  }
  if (k < 0.5) return {o.mean, o.mean, o.mean};  // no peers: the origin alone
  const double lower = std::max(o.mean, peer_mean / k);
  // Upper: min over c of a convex function, by golden-section search.
  auto bound = [&](double c) {
    double g = c + excess_bound(o, c);
    for (const auto& p : peers) g += p.weight * excess_bound(p.time, c);
    return g;
  };
  double a = 0, b = hi;
  constexpr double golden = 0.6180339887498949;
  double c1 = b - golden * (b - a), c2 = a + golden * (b - a);
  double g1 = bound(c1), g2 = bound(c2);
  for (int i = 0; i < 100; ++i) {
    if (g1 < g2) {
      b = c2;
      c2 = c1;
      g2 = g1;
      c1 = b - golden * (b - a);
      g1 = bound(c1);
    } else {
      a = c1;
      c1 = c2;
      g1 = g2;
      c2 = a + golden * (b - a);
      g2 = bound(c2);
    }
  }
  const double upper = std::max(lower, std::min(g1, g2));
  // I: E[max] of independent exponential branches, a peer drawn from the classes by weight.
  const double t_end = mean_max * (std::log(k + 1) + 36);
  constexpr int steps = 1024;  // Simpson; the integrand is smooth on the scale of the means
  const double h = t_end / steps;
  auto survival = [&](double t) {
    double mix = 0;
    for (const auto& p : peers) mix += p.weight * -std::expm1(-t / p.time.mean);
    return 1 - -std::expm1(-t / o.mean) * std::pow(mix / k, k);
  };
  double sum = survival(0) + survival(t_end);
  for (int i = 1; i < steps; ++i) sum += survival(i * h) * (i % 2 ? 4 : 2);
  const double independent = sum * h / 3;
  // theta: where Nelson-Tantawi puts homogeneous M/M/1 branches between max E and I.
  const auto branches = static_cast<std::size_t>(std::lround(k)) + 1;
  const double rho = std::clamp(rho_sum / (k + 1), 0.0, 0.999);
  double harmonic = 0;
  for (std::size_t i = 1; i <= branches; ++i) harmonic += 1.0 / double(i);
  const double theta =
      std::clamp((nelson_tantawi(branches, rho, 1 - rho) - 1) / (harmonic - 1), 0.0, 1.0);
  const double cv = std::sqrt(var_sum / mean2_sum);
  const double approx = std::clamp(lower + theta * cv * (independent - lower), lower, upper);
  return {lower, approx, upper};
}

inline latency_bounds end_to_end(const latency_bounds& layer, std::size_t layers, double own) {
  const double m = double(layers);
  return {m * layer.lower + own, m * layer.approx + own, m * layer.upper + own};
}

/// The service of a device from a unit-mean shape: the shape scaled to alpha.
inline service_model scaled_shape(const service_model& unit, double alpha) {
  return unit.scaled(alpha / unit.mean());
}

/// A unit-mean shape from a squared coefficient of variation: 0 constant, 1 exponential,
/// otherwise lognormal with that SCV (the three service models of the command line).
inline service_model shape_of_scv(double scv) {
  if (!(scv >= 0) || !std::isfinite(scv))
    fail("squared coefficient of variation = " + number(scv) +
         " must be finite and >= 0 (0: constant, 1: exponential)");
  if (scv == 0) return service_model::constant(1);
  if (scv == 1) return service_model::exponential(1);
  return service_model::lognormal(1, std::sqrt(std::log1p(scv)));
}

}  // namespace detail

/// @brief Latency of a prompt born at `origin` for any inclusion matrix; service times of device
/// j are `shape` (any mean; only its shape counts) scaled to mean alpha_j. O(n log n).
template <class = void>  // instantiated only where called (compile-time budget)
latency_bounds latency(const stability_report& report, std::size_t layers,
                       const Eigen::Ref<const Eigen::MatrixXd>& inclusion,
                       const Eigen::Ref<const Eigen::VectorXd>& alpha, std::uint32_t origin,
                       const service_model& shape) {
  const auto n = report.arrival.size();
  if (inclusion.rows() != n || inclusion.cols() != n || alpha.size() != n)
    detail::fail("latency: the report, inclusion matrix and alpha disagree on the device count");
  if (origin >= n) detail::fail("latency: origin " + std::to_string(origin) + " is not a device");
  constexpr double inf = std::numeric_limits<double>::infinity();
  if (!report.stable) return {inf, inf, inf};
  auto time_of = [&](Eigen::Index j) {
    return detail::mg1_sojourn(report.arrival(j), detail::scaled_shape(shape, alpha(j)));
  };
  std::vector<detail::peer_class> peers;
  for (Eigen::Index j = 0; j < n; ++j)
    if (j != origin && inclusion(origin, j) > 0)
      peers.push_back({time_of(j), inclusion(origin, j)});
  // Merge equal sojourns: a homogeneous network has one class, whatever n.
  std::sort(peers.begin(), peers.end(), [](const auto& a, const auto& b) {
    return std::tie(a.time.mean, a.time.variance, a.time.rho) <
           std::tie(b.time.mean, b.time.variance, b.time.rho);
  });
  std::vector<detail::peer_class> merged;
  for (const auto& p : peers)
    if (!merged.empty() && merged.back().time.mean == p.time.mean &&
        merged.back().time.variance == p.time.variance && merged.back().time.rho == p.time.rho)
      merged.back().weight += p.weight;
    else
      merged.push_back(p);
  const detail::sojourn own = time_of(origin);
  return detail::end_to_end(detail::layer_latency(own, merged), layers, own.mean);
}

/// @brief As above, service shape given by its squared coefficient of variation (0 constant,
/// 1 exponential, otherwise lognormal with that SCV).
template <class = void>  // instantiated only where called (compile-time budget)
latency_bounds latency(const stability_report& report, std::size_t layers,
                       const Eigen::Ref<const Eigen::MatrixXd>& inclusion,
                       const Eigen::Ref<const Eigen::VectorXd>& alpha, std::uint32_t origin,
                       double scv = 1.0) {
  return latency(report, layers, inclusion, alpha, origin, detail::shape_of_scv(scv));
}

/// @brief The verdict, arrival rates and utilisations of uniform gossip in O(n) memory and time
/// (no n x n matrix): what `analyse(lambda, alpha, gossip_visits(M, uniform_inclusion(n, k)))`
/// gives, for any n. A user's rate may be 0.
template <class = void>  // instantiated only where called (compile-time budget)
stability_report uniform_analyse(std::size_t n, std::size_t layers, std::size_t k,
                                 std::span<const double> lambda, std::span<const double> alpha) {
  detail::require_fanout(k, n);
  if (n > (std::size_t{1} << 27))  // two vectors of n doubles, checked before allocating them
    detail::fail("devices = " + std::to_string(n) +
                 " is more than uniform_analyse's 2^27; uniform_stability takes any n without "
                 "allocating");
  detail::require_rates(lambda, n, "lambda", "give each user's prompt rate (0: a silent user)",
                        true);
  detail::require_rates(alpha, n, "alpha", "give each device's mean inference time");
  stability_report r;
  const auto size = static_cast<Eigen::Index>(n);
  r.utilisation.resize(size);
  static_cast<verdict&>(r) = uniform_stability(
      n, layers, k, lambda, alpha, std::span<double>(r.utilisation.data(), std::size_t(size)));
  r.arrival.resize(size);
  for (Eigen::Index j = 0; j < size; ++j)
    r.arrival(j) = r.utilisation(j) / alpha[alpha.size() == 1 ? 0 : std::size_t(j)];
  return r;
}

/// @brief Latencies of uniform gossip in O(n) per distinct device (no n x n matrix): devices
/// with equal sojourns share one computation, so a homogeneous network of a million devices
/// costs one.
///
/// @code{.cpp}
/// double lambda[] = {0.1}, alpha[] = {1.0};
/// moa::queueing::uniform_latency lat(4, 2, 2, lambda, alpha);
/// moa::queueing::latency_bounds b = lat(0);  // b.lower <= b.approx <= b.upper
/// @endcode
class uniform_latency {
 public:
  uniform_latency(std::size_t n, std::size_t layers, std::size_t k, std::span<const double> lambda,
                  std::span<const double> alpha,
                  const service_model& shape = service_model::exponential(1))
      : report_(uniform_analyse(n, layers, k, lambda, alpha)), layers_(layers) {
    if (!report_.stable) return;
    const auto size = report_.arrival.size();
    class_of_.resize(std::size_t(size));
    std::vector<std::pair<std::tuple<double, double, double>, std::size_t>> keys;
    keys.reserve(std::size_t(size));
    for (Eigen::Index j = 0; j < size; ++j) {
      const auto t = detail::mg1_sojourn(
          report_.arrival(j),
          detail::scaled_shape(shape, alpha[alpha.size() == 1 ? 0 : std::size_t(j)]));
      keys.push_back({{t.mean, t.variance, t.rho}, std::size_t(j)});
    }
    std::sort(keys.begin(), keys.end());
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (i == 0 || keys[i].first != keys[i - 1].first) {
        const auto& [m, v, rho] = keys[i].first;
        classes_.push_back({{m, v, rho}, 0});
      }
      classes_.back().weight += 1;  // a count, until operator() weighs it
      class_of_[keys[i].second] = std::uint32_t(classes_.size() - 1);
    }
    share_ = n > 1 ? double(k) / double(n - 1) : 0.0;
    cache_.assign(classes_.size(), std::nullopt);
  }

  [[nodiscard]] const stability_report& report() const noexcept { return report_; }

  /// The latency of a prompt born at `origin`. Not thread-safe (results are cached per class).
  latency_bounds operator()(std::uint32_t origin) {
    if (origin >= report_.arrival.size())
      detail::fail("latency: origin " + std::to_string(origin) + " is not a device");
    constexpr double inf = std::numeric_limits<double>::infinity();
    if (!report_.stable) return {inf, inf, inf};
    const std::uint32_t c = class_of_[origin];
    if (!cache_[c]) {
      std::vector<detail::peer_class> peers;
      for (std::size_t i = 0; i < classes_.size(); ++i) {
        const double others = classes_[i].weight - (i == c ? 1 : 0);
        if (others > 0) peers.push_back({classes_[i].time, share_ * others});
      }
      cache_[c] = detail::end_to_end(detail::layer_latency(classes_[c].time, peers), layers_,
                                     classes_[c].time.mean);
    }
    return *cache_[c];
  }

 private:
  stability_report report_;
  std::size_t layers_;
  double share_ = 0;
  std::vector<detail::peer_class> classes_;  // weight: number of devices in the class
  std::vector<std::uint32_t> class_of_;
  std::vector<std::optional<latency_bounds>> cache_;
};

}  // namespace moa::queueing
