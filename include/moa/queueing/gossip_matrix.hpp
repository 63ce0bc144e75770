// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Gossip distributions as matrices, and a gossip strategy that samples any of them.
///
/// The queueing model needs one number per pair of devices: P(i, j), the probability that device
/// j is among the peers of a layer of a prompt born at i (the *inclusion matrix*; row i sums to
/// the number of peers k_i). The arrival rates, the stability verdict and the spectral helpers
/// all read P; `matrix_gossip` samples peer sets with exactly these marginals, so the simulator
/// and the formulas describe the same network.
///
/// | builder              | peers of device i                                        |
/// |----------------------|----------------------------------------------------------|
/// | `uniform_inclusion`  | k distinct of the other n - 1 (the paper's protocol)     |
/// | `graph_inclusion`    | min(k, deg i) distinct neighbours on a graph             |
/// | `weighted_inclusion` | k distinct, more often the heavier weights (capped at 1) |
///
/// When to use which: uniform for the paper's experiments; graph when devices only reach their
/// radio or network neighbours (loads then differ per device); weighted to steer work towards
/// faster devices.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "moa/gossip/gossip_concepts.hpp"
#include "moa/queueing/detail/check.hpp"

namespace moa::queueing {

namespace detail {

inline void require_square(const Eigen::Ref<const Eigen::MatrixXd>& m, const char* what) {
  if (m.rows() == 0 || m.cols() == 0)
    fail(std::string(what) + " is empty; give an n x n matrix with n >= 1 devices");
  if (m.rows() != m.cols())
    fail(std::string(what) + " is " + std::to_string(m.rows()) + " x " + std::to_string(m.cols()) +
         "; it must be square (one row and one column per device)");
  if (!m.allFinite()) fail(std::string(what) + " holds a non-finite value (nan or inf)");
}

/// Connectivity of the undirected graph with an edge wherever m(i, j) or m(j, i) is non-zero.
template <class = void>  // instantiated only where called (compile-time budget)
bool connected(const Eigen::Ref<const Eigen::MatrixXd>& m) {
  const auto n = static_cast<std::size_t>(m.rows());
  std::vector<char> seen(n, 0);
  std::vector<std::size_t> stack{0};
  seen[0] = 1;
  std::size_t count = 1;
  while (!stack.empty()) {
    const std::size_t i = stack.back();
    stack.pop_back();
    for (std::size_t j = 0; j < n; ++j) {
      const auto a = static_cast<Eigen::Index>(i), b = static_cast<Eigen::Index>(j);
      if (!seen[j] && (m(a, b) != 0 || m(b, a) != 0)) {
        seen[j] = 1;
        ++count;
        stack.push_back(j);
      }
    }
  }
  return count == n;
}

}  // namespace detail

/// @brief The most devices a dense inclusion matrix is built for (128 MiB); uniform gossip has
/// O(n) closed forms for any n (uniform_analyse, uniform_latency).
inline constexpr std::size_t max_dense_devices = 4096;

/// @brief Uniform gossip: k distinct peers among the n - 1 others, P(i, j) = k / (n - 1), i != j.
template <class = void>  // instantiated only where called (compile-time budget)
Eigen::MatrixXd uniform_inclusion(std::size_t n, std::size_t k) {
  detail::require_fanout(k, n);
  if (n > max_dense_devices)
    detail::fail("uniform_inclusion(" + std::to_string(n) + ", k) would be a dense " +
                 std::to_string(n) + " x " + std::to_string(n) +
                 " matrix; above 4096 devices use uniform_analyse / uniform_latency (O(n))");
  const auto size = static_cast<Eigen::Index>(n);
  Eigen::MatrixXd p = Eigen::MatrixXd::Constant(size, size, n > 1 ? double(k) / double(n - 1) : 0);
  p.diagonal().setZero();
  return p;
}

/// @brief Neighbours on a graph: device i picks min(k, deg i) distinct neighbours uniformly.
/// `adjacency(i, j) != 0` means i may send to j (the diagonal is ignored). The graph must be
/// connected (as undirected), and with k >= 1 every device needs a neighbour.
template <class = void>  // instantiated only where called (compile-time budget)
Eigen::MatrixXd graph_inclusion(const Eigen::Ref<const Eigen::MatrixXd>& adjacency, std::size_t k) {
  detail::require_square(adjacency, "the gossip graph's adjacency matrix");
  const auto n = adjacency.rows();
  detail::require_fanout(k, static_cast<std::size_t>(n));
  Eigen::MatrixXd a = adjacency;
  a.diagonal().setZero();
  if ((a.array() < 0).any())
    detail::fail("the gossip graph's adjacency matrix has a negative entry; use 0 for no edge");
  if (n > 1 && (a.array() == 0).all())
    detail::fail("the gossip graph has no edges; give every device at least one neighbour");
  if (!detail::connected(a))
    detail::fail(
        "the gossip graph is disconnected; prompts could never mix between its parts, "
        "so connect the components (or analyse them as separate networks)");
  Eigen::MatrixXd p = Eigen::MatrixXd::Zero(n, n);
  for (Eigen::Index i = 0; i < n; ++i) {
    double degree = 0;
    for (Eigen::Index j = 0; j < n; ++j) degree += a(i, j) != 0;
    if (degree == 0 && k > 0)
      detail::fail("device " + std::to_string(i) +
                   " has no out-neighbour in the gossip graph but k = " + std::to_string(k) +
                   "; add an edge from it");
    const double take = std::min(double(k), degree);
    for (Eigen::Index j = 0; j < n; ++j)
      if (a(i, j) != 0) p(i, j) = take / degree;
  }
  return p;
}

/// @brief Weighted gossip: row i picks k distinct peers with inclusion probabilities
/// proportional to weights(i, j), capped at 1 (the excess goes to the others), so row i sums to
/// min(k, number of positive weights).
template <class = void>  // instantiated only where called (compile-time budget)
Eigen::MatrixXd weighted_inclusion(const Eigen::Ref<const Eigen::MatrixXd>& weights,
                                   std::size_t k) {
  detail::require_square(weights, "the gossip weight matrix");
  const auto n = weights.rows();
  detail::require_fanout(k, static_cast<std::size_t>(n));
  Eigen::MatrixXd w = weights;
  w.diagonal().setZero();
  if ((w.array() < 0).any()) detail::fail("the gossip weight matrix has a negative entry");
  if (!detail::connected(w))
    detail::fail("the gossip weight matrix describes a disconnected graph");
  Eigen::MatrixXd p = Eigen::MatrixXd::Zero(n, n);
  for (Eigen::Index i = 0; i < n; ++i) {
    double positive = 0;
    for (Eigen::Index j = 0; j < n; ++j) positive += w(i, j) > 0;
    const double target = std::min(double(k), positive);
    // Cap and redistribute: entries pinned at 1 leave the rest of the target to the others.
    std::vector<char> pinned(static_cast<std::size_t>(n), 0);
    for (Eigen::Index round = 0; round <= n; ++round) {
      double free_weight = 0, pinned_count = 0;
      for (Eigen::Index j = 0; j < n; ++j) {
        if (pinned[std::size_t(j)])
          pinned_count += 1;
        else
          free_weight += w(i, j);
      }
      bool changed = false;
      for (Eigen::Index j = 0; j < n; ++j) {
        if (pinned[std::size_t(j)]) {
          p(i, j) = 1;
          continue;
        }
        p(i, j) = free_weight > 0 ? (target - pinned_count) * w(i, j) / free_weight : 0;
        if (p(i, j) > 1) {
          pinned[std::size_t(j)] = 1;
          changed = true;
        }
      }
      if (!changed) break;
    }
  }
  return p;
}

/// @brief A gossip strategy that samples peers with the inclusion probabilities of a matrix.
///
/// Systematic (Madow) sampling: with cumulative sums C_j of row i and one uniform u, device j is
/// picked when an integer m has C_{j-1} <= u + m < C_j. It gives exactly P(i, j) as marginal
/// and exactly k_i distinct peers when the row sums to the whole number k_i, in one pass and one
/// random number; only the marginals matter to the queueing model.
///
/// @code{.cpp}
/// Eigen::MatrixXd ring = ...;                       // adjacency of a ring of 8 devices
/// moa::queueing::matrix_gossip g(moa::queueing::graph_inclusion(ring, 2));
/// moa::plan p;
/// moa::rng random(1);
/// moa::make_gossip_plan(/*origin=*/3, 8, /*layers=*/2, g, random, p);
/// @endcode
class matrix_gossip {
 public:
  using moa_policy = gossip_tag;

  explicit matrix_gossip(const Eigen::Ref<const Eigen::MatrixXd>& inclusion)
      : n_(static_cast<std::size_t>(inclusion.rows())) {
    detail::require_square(inclusion, "the gossip inclusion matrix");
    cumulative_.resize(n_ * (n_ + 1));
    fanouts_.resize(n_);
    for (std::size_t i = 0; i < n_; ++i) {
      double c = 0;
      cumulative_[i * (n_ + 1)] = 0;
      for (std::size_t j = 0; j < n_; ++j) {
        const double p = inclusion(Eigen::Index(i), Eigen::Index(j));
        if (!(p >= 0 && p <= 1))
          detail::fail("inclusion probability P(" + std::to_string(i) + ", " + std::to_string(j) +
                       ") = " + detail::number(p) + " is not in [0, 1]");
        if (i == j && p != 0)
          detail::fail("inclusion matrix has P(" + std::to_string(i) + ", " + std::to_string(i) +
                       ") != 0; a device is never its own peer");
        c += p;
        cumulative_[i * (n_ + 1) + j + 1] = c;
      }
      const double whole = std::round(c);
      if (std::abs(c - whole) > 1e-9)
        detail::fail("row " + std::to_string(i) + " of the inclusion matrix sums to " +
                     detail::number(c) + "; rows must sum to a whole number of peers");
      fanouts_[i] = static_cast<std::size_t>(whole);
      fanout_ = std::max(fanout_, fanouts_[i]);
      // Absorb rounding so the last crossing is reached exactly k_i times.
      cumulative_[i * (n_ + 1) + n_] = whole;
    }
  }

  [[nodiscard]] std::size_t fanout() const noexcept { return fanout_; }
  /// Peers per layer for prompts born at `origin` (graphs: min(k, degree)).
  [[nodiscard]] std::size_t fanout_of(std::uint32_t origin) const noexcept {
    return fanouts_[origin];
  }
  [[nodiscard]] std::size_t devices() const noexcept { return n_; }

  std::size_t select(const gossip_context& ctx, std::span<std::uint32_t> out) const noexcept {
    if (ctx.origin >= n_) return 0;
    const double* c = cumulative_.data() + std::size_t(ctx.origin) * (n_ + 1);
    double target = ctx.random->uniform();
    std::size_t written = 0;
    for (std::size_t j = 0; j < n_ && written < out.size(); ++j)
      if (target < c[j + 1]) {  // c[j] <= target holds by construction
        out[written++] = static_cast<std::uint32_t>(j);
        target += 1;
      }
    return written;
  }

 private:
  std::size_t n_;
  std::size_t fanout_ = 0;
  std::vector<double> cumulative_;  // row-major, n + 1 per row
  std::vector<std::size_t> fanouts_;
};

static_assert(GossipPolicy<matrix_gossip>);

}  // namespace moa::queueing
