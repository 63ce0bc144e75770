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
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "moa/gossip/random_k.hpp"
#include "moa/queueing/detail/check.hpp"
#include "moa/queueing/formulas.hpp"
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
                             const char* fix) {
  if (values.size() != 1 && values.size() != n)
    fail(std::string(name) + " has " + std::to_string(values.size()) + " entries for " +
         std::to_string(n) + " devices; give one per device, or a single value for all");
  for (std::size_t i = 0; i < values.size(); ++i)
    if (!(values[i] > 0.0) || !(values[i] < HUGE_VAL))  // message built only on failure
      require_positive(values[i], indexed(name, i), fix);
}

}  // namespace detail

/// @brief Uniform gossip in closed form: Lambda_j = (M + 1) lambda_j + M k / (n - 1) (sum lambda
/// - lambda_j). `lambda` and `alpha` hold one value per device or one for all; `utilisation`, if
/// not empty, receives rho_j (n entries). No allocation.
constexpr verdict uniform_stability(std::size_t n, std::size_t layers, std::size_t k,
                                    std::span<const double> lambda, std::span<const double> alpha,
                                    std::span<double> utilisation = {}) {
  detail::require_fanout(k, n);
  detail::require_rates(lambda, n, "lambda",
                        "give each user's prompt rate (prompts per unit time)");
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
inline Eigen::MatrixXd gossip_visits(std::size_t layers,
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
inline Eigen::VectorXd arrival_rates(const Eigen::Ref<const Eigen::VectorXd>& lambda,
                                     const Eigen::Ref<const Eigen::MatrixXd>& visits) {
  if (visits.rows() != visits.cols() || visits.rows() != lambda.size())
    detail::fail("the visit matrix is " + std::to_string(visits.rows()) + " x " +
                 std::to_string(visits.cols()) + " but lambda has " +
                 std::to_string(lambda.size()) + " entries; give an n x n matrix and n rates");
  for (Eigen::Index i = 0; i < lambda.size(); ++i)
    detail::require_positive(lambda(i), detail::indexed("lambda", std::size_t(i)),
                             "give each user's prompt rate");
  if (!visits.allFinite() || (visits.array() < 0).any())
    detail::fail("the visit matrix must hold finite, non-negative expected call counts");
  return visits.transpose() * lambda;
}

/// @brief The general verdict: per-user rates, per-device mean inference times, any visit
/// matrix (gossip_visits for any inclusion matrix, plan_visits for fixed plans).
inline stability_report analyse(const Eigen::Ref<const Eigen::VectorXd>& lambda,
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
inline Eigen::VectorXd jackson_arrival_rates(const Eigen::Ref<const Eigen::VectorXd>& gamma,
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

/// @brief End-to-end latency estimates for a prompt born at `origin`.
struct latency_bounds {
  double lower = 0;   ///< sum of per-layer max of branch means, plus the aggregation
  double approx = 0;  ///< Nelson-Tantawi per layer (homogeneous M/M/1 approximation)
  double upper = 0;   ///< independent-exponential bound (M/M/1 sojourns; associated branches)
};

/// @brief Latency of a gossip prompt from per-device M/G/1 sojourn times.
///
/// Assumptions: each device is treated as an M/G/1 queue at its arrival rate (first-layer calls
/// do arrive as Poisson streams; later layers arrive after forks and are only approximately
/// Poisson), service with squared coefficient of variation `scv`. Per layer:
/// - lower: E[max of branches] >= max(W_origin, average W of a peer drawn by its inclusion
///   probability); any dependence;
/// - upper: the k slowest possible peers and the origin as independent exponentials of rates
///   1 / W_j; valid for scv = 1 (M/M/1 sojourns are exponential and fork-join sojourns are
///   associated);
/// - approx: Nelson-Tantawi with k + 1 branches at the mean utilisation of those branches.
/// The aggregation at the origin adds W_origin to each. Infinite when a device is unstable.
inline latency_bounds latency(const stability_report& report, std::size_t layers,
                              const Eigen::Ref<const Eigen::MatrixXd>& inclusion,
                              const Eigen::Ref<const Eigen::VectorXd>& alpha, std::uint32_t origin,
                              double scv = 1.0) {
  const auto n = report.arrival.size();
  if (inclusion.rows() != n || inclusion.cols() != n || alpha.size() != n)
    detail::fail("latency: the report, inclusion matrix and alpha disagree on the device count");
  if (origin >= n) detail::fail("latency: origin " + std::to_string(origin) + " is not a device");
  constexpr double inf = std::numeric_limits<double>::infinity();
  if (!report.stable) return {inf, inf, inf};
  Eigen::VectorXd w(n);
  for (Eigen::Index j = 0; j < n; ++j)
    w(j) = report.arrival(j) > 0 ? mg1(report.arrival(j), alpha(j), scv).sojourn : alpha(j);
  const double k_exact = inclusion.row(origin).sum();
  const auto k = static_cast<std::size_t>(std::lround(k_exact));
  // Candidates: the origin, then the peers with the largest sojourn among those it can reach.
  std::vector<Eigen::Index> peers;
  for (Eigen::Index j = 0; j < n; ++j)
    if (j != origin && inclusion(origin, j) > 0) peers.push_back(j);
  std::sort(peers.begin(), peers.end(), [&](auto a, auto b) { return w(a) > w(b); });
  peers.resize(std::min(peers.size(), k));
  std::vector<double> rates{1 / w(origin)};
  double rho_sum = report.utilisation(origin), alpha_sum = alpha(origin);
  for (auto j : peers) {
    rates.push_back(1 / w(j));
    rho_sum += report.utilisation(j);
    alpha_sum += alpha(j);
  }
  const double peer_mean = k_exact > 0 ? inclusion.row(origin).dot(w) / k_exact : 0.0;
  const double lower_layer = std::max(w(origin), peer_mean);
  const double upper_layer = expected_max_exponential(rates);
  const double branches = double(rates.size());
  const double approx_layer =
      nelson_tantawi(rates.size(), rho_sum / branches, alpha_sum / branches);
  const double m = double(layers);
  return {m * lower_layer + w(origin), m * approx_layer + w(origin), m * upper_layer + w(origin)};
}

}  // namespace moa::queueing
