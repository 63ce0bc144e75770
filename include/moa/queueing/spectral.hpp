// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Spectral helpers for gossip matrices: how fast do layers of gossip mix the devices' answers?
///
/// In every layer device i combines its own answer with its k peers'; in expectation that is one
/// step of the row-stochastic *averaging matrix* A = (I + P) / (1 + k_i), P the inclusion matrix.
/// The second-largest eigenvalue modulus (SLEM) of A sets the rate at which repeated layers drive
/// the devices to a consensus: ||A^t x - consensus|| shrinks like SLEM^t, so about
/// log(1/eps) / log(1/SLEM) layers reach precision eps. For symmetric doubly-stochastic matrices
/// this is a bound for every start; for other row-stochastic matrices it is the asymptotic rate.
///
/// Opt-in: moa/queueing.hpp does not include this header. Eigen's eigensolvers take seconds to
/// instantiate, so the functions that use them are templates (on the matrix type, defaulted to
/// Eigen::MatrixXd and never deduced: calls look and convert exactly as for plain functions) and
/// are instantiated only in the translation units that call them.
///
/// @code{.cpp}
/// #include <moa/queueing/spectral.hpp>
/// Eigen::MatrixXd a = moa::queueing::averaging_matrix(moa::queueing::uniform_inclusion(8, 2));
/// double gap = moa::queueing::spectral_gap(a);              // 1 - SLEM
/// double layers = moa::queueing::averaging_time(a, 1e-3);   // layers to reach 1e-3
/// @endcode

#include <Eigen/Core>
#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>
#include <complex>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include "moa/queueing/detail/check.hpp"
#include "moa/queueing/gossip_matrix.hpp"

namespace moa::queueing {

namespace detail {
/// A read-only view of a dense matrix of type M, in a non-deduced context (see @file).
template <class M>
using spectral_ref = std::type_identity_t<Eigen::Ref<const M>>;
}  // namespace detail

/// @brief The expected one-layer averaging matrix A = (I + P) / (1 + k_i) of an inclusion matrix.
inline Eigen::MatrixXd averaging_matrix(const Eigen::Ref<const Eigen::MatrixXd>& inclusion) {
  detail::require_square(inclusion, "the gossip inclusion matrix");
  if ((inclusion.array() < 0).any() || (inclusion.array() > 1).any())
    detail::fail("inclusion probabilities must lie in [0, 1]");
  Eigen::MatrixXd a = inclusion;
  a.diagonal().setOnes();
  const Eigen::VectorXd rows = a.rowwise().sum();
  for (Eigen::Index i = 0; i < a.rows(); ++i) a.row(i) /= rows(i);
  return a;
}

/// @brief The eigenvalue moduli of a square matrix, largest first.
template <class M = Eigen::MatrixXd>
Eigen::VectorXd eigenvalue_moduli(const detail::spectral_ref<M>& m) {
  detail::require_square(m, "the matrix");
  std::vector<double> mod;
  if (m.isApprox(m.transpose(), 1e-12)) {
    Eigen::SelfAdjointEigenSolver<M> es(m, Eigen::EigenvaluesOnly);
    for (Eigen::Index i = 0; i < m.rows(); ++i) mod.push_back(std::abs(es.eigenvalues()(i)));
  } else {
    Eigen::EigenSolver<M> es(m, false);
    for (Eigen::Index i = 0; i < m.rows(); ++i) mod.push_back(std::abs(es.eigenvalues()(i)));
  }
  std::sort(mod.begin(), mod.end(), std::greater<>());
  Eigen::VectorXd out(static_cast<Eigen::Index>(mod.size()));
  for (std::size_t i = 0; i < mod.size(); ++i) out(Eigen::Index(i)) = mod[i];
  return out;
}

/// @brief The second-largest eigenvalue modulus (SLEM) of a stochastic matrix; 0 for n = 1.
/// 1 means the chain does not mix (disconnected or periodic).
template <class M = Eigen::MatrixXd>
double second_eigenvalue(const detail::spectral_ref<M>& stochastic) {
  const Eigen::VectorXd mod = eigenvalue_moduli<M>(stochastic);
  return mod.size() > 1 ? std::min(1.0, mod(1)) : 0.0;
}

/// @brief 1 - SLEM: the larger, the fewer layers it takes to mix.
template <class M = Eigen::MatrixXd>
double spectral_gap(const detail::spectral_ref<M>& stochastic) {
  return 1 - second_eigenvalue<M>(stochastic);
}

/// @brief Layers until the distance to consensus falls by `epsilon`: log(1/eps) / log(1/SLEM).
/// +inf when the matrix does not mix, 0 when it mixes in one step (SLEM = 0).
template <class M = Eigen::MatrixXd>
double averaging_time(const detail::spectral_ref<M>& stochastic, double epsilon) {
  if (!(epsilon > 0 && epsilon < 1))
    detail::fail("averaging_time: epsilon = " + detail::number(epsilon) +
                 " must lie in (0, 1); it is the relative distance to consensus to reach");
  const double slem = second_eigenvalue<M>(stochastic);
  if (slem >= 1 - 1e-12) return std::numeric_limits<double>::infinity();
  if (slem <= 1e-12) return 0;  // round-off of an exact one-step mix
  return std::log(1 / epsilon) / std::log(1 / slem);
}

/// @brief Boyd et al. (2006), randomized gossip: with the expected symmetric doubly-stochastic
/// matrix W of one asynchronous exchange, the epsilon-averaging time is at most
/// 3 log(1/eps) / log(1/lambda_2(W)) exchanges.
template <class M = Eigen::MatrixXd>
double randomized_averaging_bound(const detail::spectral_ref<M>& expected_w, double epsilon) {
  if (!expected_w.isApprox(expected_w.transpose(), 1e-9))
    detail::fail("randomized_averaging_bound needs a symmetric (doubly-stochastic) matrix");
  const double t = averaging_time<M>(expected_w, epsilon);
  return 3 * t;
}

}  // namespace moa::queueing
