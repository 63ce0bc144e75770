// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Particle swarm optimisation, generic over the thing optimised (an adjacency matrix for role
/// search, a parameter vector for weight search) and over the utility.
///
/// Update of particle i (Heterogeneous Swarms / Model Swarms):
///
///     r_v, r_c, r_s, r_r ~ U(0, 1);  w = (r_v·inertia, r_c·cognitive, r_s·social, r_r·repel) / Σ
///     v_i ← w_v·v_i + w_c·(p_i − x_i) + w_s·(g − x_i) − w_r·(g_worst − x_i)
///     x_i ← clamp(x_i + step·v_i, lower, upper)
///
/// with p_i the particle's best position, g the swarm's best and g_worst the worst position seen.
/// Normalising the random weights keeps the velocity a convex mix of directions, so `step` alone
/// sets how far a particle moves. A particle whose best has not improved for `restart_patience`
/// iterations restarts from its best with zero velocity; the search stops when the swarm's best
/// has not improved for `patience` iterations, at `max_iterations`, or at `target_utility`.
///
/// All random draws happen on the calling thread, in particle order; only the utility runs in
/// parallel. The same seed therefore gives the same result for any thread count, provided the
/// utility is a deterministic function of the candidate.
///
/// @code{.cpp}
/// auto start = moa::swarm::uniform_candidates<Eigen::VectorXd>(10, 3, 1, -1.0, 1.0, 42);
/// auto r = moa::swarm::optimize(std::move(start),
///     [](const Eigen::VectorXd& x) { return -x.squaredNorm(); },
///     {.max_iterations = 100, .seed = 42});
/// // r.best is close to zero; r.best_utility close to 0
/// @endcode

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "moa/core/error.hpp"
#include "moa/core/random.hpp"
#include "moa/swarm/detail/parallel.hpp"

namespace moa::swarm {

/// @brief What a particle swarm can move: a plain, dense Eigen matrix or vector of doubles
/// (`Eigen::MatrixXd`, `Eigen::VectorXd`, fixed sizes too). Expressions do not qualify: particles
/// own their storage.
template <class C>
concept SwarmCandidate =
    std::derived_from<C, Eigen::PlainObjectBase<C>> && std::same_as<typename C::Scalar, double>;

/// @brief A utility: `u(candidate)` is convertible to double; higher is better. It is called from
/// several threads at once and must be safe for that.
template <class U, class C>
concept UtilityFor =
    std::invocable<U&, const C&> && std::convertible_to < std::invoke_result_t<U&, const C&>,
double > ;

/// @brief How the four random weights of the update are drawn.
enum class pso_weights : std::uint8_t {
  /// One set per particle and iteration (the paper's code). Every move then stays in the affine
  /// span of the positions seen, which suits weight vectors of millions of coordinates (random
  /// per-coordinate weights would be noise) but can trap a small swarm in a subspace.
  per_particle,
  /// One set per coordinate, as in classic PSO: explores every direction. The default, because
  /// decoded adjacency matrices need it (10 particles in an 8×8 matrix span only 9 of 64
  /// dimensions, and the planted-optimum tests fail in per_particle mode).
  per_coordinate,
};

/// @brief PSO settings. Defaults are those of the paper's code where it has them (inertia 0.4,
/// cognitive 0.3, social 0.3, repel 0.3, step 1, patience 10, 10 particles); the rest are ours.
struct pso_options {
  std::size_t particles = 10;  ///< used by helpers that create the swarm (search_topology, ...)
  double inertia = 0.4;        ///< pull of the particle's own velocity
  double cognitive = 0.3;      ///< pull towards its personal best
  double social = 0.3;         ///< pull towards the swarm's best
  double repel = 0.3;          ///< push away from the worst position seen
  double step = 1.0;           ///< step length multiplying the velocity
  double step_decay = 1.0;     ///< step ← max(step·step_decay, min_step) after each move
  double min_step = 0.0;
  std::size_t patience = 10;         ///< stop after this many iterations without a better best
  std::size_t restart_patience = 5;  ///< restart a particle stuck this long at its best
  std::size_t max_iterations = 50;   ///< iteration cap (one iteration evaluates every particle)
  double target_utility = std::numeric_limits<double>::infinity();  ///< stop once reached
  double lower = -std::numeric_limits<double>::infinity();          ///< position bounds
  double upper = std::numeric_limits<double>::infinity();
  std::uint64_t seed = 42;
  std::size_t threads = 0;  ///< utility threads, the caller included; 0: one per core
  pso_weights weights = pso_weights::per_coordinate;
};

/// @brief Why a search stopped.
enum class pso_stop : std::uint8_t { patience, max_iterations, target };

inline std::string_view to_string(pso_stop s) noexcept {
  switch (s) {
    case pso_stop::patience:
      return "patience";
    case pso_stop::max_iterations:
      return "max_iterations";
    case pso_stop::target:
      return "target";
  }
  return "?";
}

/// @brief What the progress callback sees after each iteration.
struct pso_progress {
  std::size_t iteration = 0;    ///< 1-based
  double best_utility = 0.0;    ///< best ever
  double iteration_best = 0.0;  ///< best of this iteration's positions
  double iteration_mean = 0.0;  ///< mean of this iteration's evaluated positions
  double step = 0.0;            ///< step length used for the next move
  std::size_t evaluations = 0;  ///< utility calls so far
  std::size_t since_improvement = 0;
};

using pso_progress_fn = std::function<void(const pso_progress&)>;

/// @brief The outcome of optimize().
template <SwarmCandidate C>
struct pso_result {
  C best{};
  double best_utility = -std::numeric_limits<double>::infinity();
  std::size_t iterations = 0;
  std::size_t evaluations = 0;
  pso_stop stop = pso_stop::max_iterations;
  std::vector<double> history{};  ///< best utility after each iteration
};

/// @brief The state of a particle swarm, stepped by hand: evaluate positions(), observe() their
/// utilities, move(); repeat until done(). optimize() drives it with a utility per particle; the
/// weight search drives it with utilities computed jointly (JFK-scores).
///
/// @code{.cpp}
/// moa::swarm::particle_swarm<Eigen::VectorXd> swarm(start, {.seed = 1});
/// std::vector<double> u(swarm.size());
/// for (;;) {
///   for (std::size_t i = 0; i < swarm.size(); ++i) u[i] = f(swarm.positions()[i]);
///   swarm.observe(u);
///   if (swarm.done()) break;
///   swarm.move();
/// }
/// @endcode
template <SwarmCandidate C>
class particle_swarm {
 public:
  particle_swarm(std::vector<C> initial, const pso_options& opt = {})
      : opt_(opt), rng_(opt.seed), x_(std::move(initial)), step_(opt.step) {
    if (x_.empty())
      MOA_THROW(
          invalid_argument("moa::swarm::particle_swarm: no particles; give at least one "
                           "initial position"));
    for (const auto& x : x_)
      if (x.rows() != x_.front().rows() || x.cols() != x_.front().cols())
        MOA_THROW(
            invalid_argument("moa::swarm::particle_swarm: initial positions differ in "
                             "shape; every particle must have the shape of the first"));
    if (!(opt.inertia >= 0 && opt.cognitive >= 0 && opt.social >= 0 && opt.repel >= 0))
      MOA_THROW(
          invalid_argument("moa::swarm::particle_swarm: inertia, cognitive, social and "
                           "repel must be >= 0"));
    if (!(opt.lower <= opt.upper))
      MOA_THROW(invalid_argument("moa::swarm::particle_swarm: lower bound above upper bound"));
    if (opt.max_iterations == 0)
      MOA_THROW(invalid_argument("moa::swarm::particle_swarm: max_iterations must be >= 1"));
    for (auto& x : x_) x = x.cwiseMax(opt.lower).cwiseMin(opt.upper);
    // Initial velocities point at another particle picked at random (as in the Model Swarms
    // code): zero velocities would start the swarm with no momentum and no spread of directions.
    v_.resize(x_.size());
    for (std::size_t i = 0; i < x_.size(); ++i) {
      v_[i].setZero(x_.front().rows(), x_.front().cols());
      if (x_.size() > 1) {
        auto j = std::size_t(rng_.below(x_.size() - 1));
        j += j >= i ? 1 : 0;
        v_[i] = x_[j] - x_[i];
      }
    }
    pbest_ = x_;
    pbest_u_.assign(x_.size(), -inf());
    stale_.assign(x_.size(), 0);
    gbest_ = x_.front();
    gworst_ = x_.front();
  }

  [[nodiscard]] std::size_t size() const noexcept { return x_.size(); }
  [[nodiscard]] std::span<const C> positions() const noexcept { return x_; }
  [[nodiscard]] std::span<const C> personal_bests() const noexcept { return pbest_; }
  [[nodiscard]] std::span<const double> personal_best_utilities() const noexcept {
    return pbest_u_;
  }
  [[nodiscard]] const C& best() const noexcept { return gbest_; }
  [[nodiscard]] double best_utility() const noexcept { return gbest_u_; }
  [[nodiscard]] const C& worst() const noexcept { return gworst_; }
  [[nodiscard]] double worst_utility() const noexcept { return gworst_u_; }
  [[nodiscard]] std::size_t iteration() const noexcept { return iteration_; }
  [[nodiscard]] std::size_t since_improvement() const noexcept { return since_improvement_; }
  [[nodiscard]] double step() const noexcept { return step_; }
  [[nodiscard]] const pso_options& options() const noexcept { return opt_; }

  /// Records the utilities of the current positions (one per particle) and counts an iteration.
  /// NaN means "not evaluated": the particle's bests are left alone (a model that held no node
  /// in any JFK assignment has no score, and must not become the swarm's worst by accident).
  void observe(std::span<const double> utilities) {
    if (utilities.size() != x_.size())
      MOA_THROW(invalid_argument(
          "moa::swarm::particle_swarm::observe: " + std::to_string(utilities.size()) +
          " utilities for " + std::to_string(x_.size()) + " particles"));
    bool improved = false;
    last_best_ = -inf();
    double sum = 0.0;
    std::size_t counted = 0;
    for (std::size_t i = 0; i < x_.size(); ++i) {
      const double u = utilities[i];
      if (std::isnan(u)) {
        ++stale_[i];
        continue;
      }
      sum += u;
      ++counted;
      last_best_ = std::max(last_best_, u);
      if (u > pbest_u_[i]) {
        pbest_[i] = x_[i];
        pbest_u_[i] = u;
        stale_[i] = 0;
      } else {
        ++stale_[i];
      }
      if (u > gbest_u_) {
        gbest_ = x_[i];
        gbest_u_ = u;
        improved = true;
      }
      if (u < gworst_u_) {
        gworst_ = x_[i];
        gworst_u_ = u;
      }
    }
    last_mean_ = counted ? sum / double(counted) : std::numeric_limits<double>::quiet_NaN();
    since_improvement_ = improved ? 0 : since_improvement_ + 1;
    ++iteration_;
  }

  /// True when the search should stop; why() says which rule fired.
  [[nodiscard]] bool done() const noexcept {
    return gbest_u_ >= opt_.target_utility || iteration_ >= opt_.max_iterations ||
           since_improvement_ >= opt_.patience;
  }
  [[nodiscard]] pso_stop why() const noexcept {
    if (gbest_u_ >= opt_.target_utility) return pso_stop::target;
    if (since_improvement_ >= opt_.patience) return pso_stop::patience;
    return pso_stop::max_iterations;
  }

  /// Moves every particle once (velocity update, step, bounds, restarts), then decays the step.
  void move() {
    for (std::size_t i = 0; i < x_.size(); ++i) {
      // Four draws per particle, even for a restarting one, so that the stream of random numbers
      // a particle sees does not depend on the others' restarts.
      const double wv = rng_.uniform() * opt_.inertia;
      const double wc = rng_.uniform() * opt_.cognitive;
      const double ws = rng_.uniform() * opt_.social;
      const double wr = rng_.uniform() * opt_.repel;
      if (stale_[i] >= opt_.restart_patience && pbest_u_[i] > -inf()) {
        x_[i] = pbest_[i];
        v_[i].setZero();
        stale_[i] = 0;
        continue;
      }
      if (opt_.weights == pso_weights::per_particle) {
        const double total = wv + wc + ws + wr;
        if (total > 0.0) {
          const double k = 1.0 / total;
          v_[i] = (wv * k) * v_[i] + (wc * k) * (pbest_[i] - x_[i]) + (ws * k) * (gbest_ - x_[i]) -
                  (wr * k) * (gworst_ - x_[i]);
        }
      } else {
        move_per_coordinate(i, wv, wc, ws, wr);
      }
      x_[i] += step_ * v_[i];
      keep_in_bounds(x_[i]);
    }
    step_ = std::max(step_ * opt_.step_decay, opt_.min_step);
  }

  /// The progress record of the last observed iteration.
  [[nodiscard]] pso_progress progress(std::size_t evaluations) const noexcept {
    return {iteration_, gbest_u_, last_best_, last_mean_, step_, evaluations, since_improvement_};
  }

 private:
  static constexpr double inf() noexcept { return std::numeric_limits<double>::infinity(); }

  // Reflects coordinates that left [lower, upper] back inside (clamping what overshoots by more
  // than the width). Clamping alone parks coordinates on the bounds, where decoded graphs are
  // decided by index order on ties; the planted-DAG tests find half as many optima that way.
  void keep_in_bounds(C& x) const noexcept {
    const double lo = opt_.lower, hi = opt_.upper;
    double* p = x.data();
    for (Eigen::Index k = 0; k < x.size(); ++k) {
      if (p[k] > hi) p[k] = hi - (p[k] - hi);
      if (p[k] < lo) p[k] = lo + (lo - p[k]);
      p[k] = std::min(std::max(p[k], lo), hi);
    }
  }

  // Fresh weights for every coordinate after the first (which takes the four already drawn).
  void move_per_coordinate(std::size_t i, double wv, double wc, double ws, double wr) noexcept {
    double* v = v_[i].data();
    const double* x = x_[i].data();
    const double* p = pbest_[i].data();
    const double* g = gbest_.data();
    const double* b = gworst_.data();
    const auto size = v_[i].size();
    for (Eigen::Index k = 0; k < size; ++k) {
      if (k > 0) {
        wv = rng_.uniform() * opt_.inertia;
        wc = rng_.uniform() * opt_.cognitive;
        ws = rng_.uniform() * opt_.social;
        wr = rng_.uniform() * opt_.repel;
      }
      const double total = wv + wc + ws + wr;
      if (!(total > 0.0)) continue;
      v[k] = (wv * v[k] + wc * (p[k] - x[k]) + ws * (g[k] - x[k]) - wr * (b[k] - x[k])) / total;
    }
  }

  pso_options opt_;
  rng rng_;
  std::vector<C> x_, v_, pbest_;
  std::vector<double> pbest_u_;
  std::vector<std::size_t> stale_;
  C gbest_{}, gworst_{};
  double gbest_u_ = -inf();
  double gworst_u_ = inf();
  double step_ = 1.0;
  double last_best_ = -inf(), last_mean_ = 0.0;
  std::size_t iteration_ = 0;
  std::size_t since_improvement_ = 0;
};

/// @brief `count` candidates of shape rows×cols with entries uniform in [lo, hi), seeded.
/// With `zero_diagonal`, square candidates get a zero diagonal (no self-loops to decode).
template <SwarmCandidate C>
std::vector<C> uniform_candidates(std::size_t count, Eigen::Index rows, Eigen::Index cols,
                                  double lo, double hi, std::uint64_t seed,
                                  bool zero_diagonal = false) {
  rng gen(seed);
  std::vector<C> out(count);
  for (auto& c : out) {
    c.resize(rows, cols);
    for (Eigen::Index j = 0; j < cols; ++j)
      for (Eigen::Index i = 0; i < rows; ++i)
        c(i, j) = (zero_diagonal && i == j) ? 0.0 : lo + (hi - lo) * gen.uniform();
  }
  return out;
}

/// @brief Runs PSO from `initial` (one position per particle), evaluating `utility` for all
/// particles of an iteration in parallel on `opt.threads` threads.
template <SwarmCandidate C, UtilityFor<C> Utility>
pso_result<C> optimize(std::vector<C> initial, Utility&& utility, const pso_options& opt = {},
                       const pso_progress_fn& progress = {}) {
  particle_swarm<C> swarm(std::move(initial), opt);
  detail::fork_join_pool pool(detail::resolve_threads(opt.threads, swarm.size()));
  std::vector<double> u(swarm.size());
  pso_result<C> out;
  for (;;) {
    const auto positions = swarm.positions();
    pool.run(swarm.size(), [&](std::size_t i) { u[i] = double(utility(positions[i])); });
    out.evaluations += swarm.size();
    swarm.observe(u);
    out.history.push_back(swarm.best_utility());
    if (progress) progress(swarm.progress(out.evaluations));
    if (swarm.done()) break;
    swarm.move();
  }
  out.best = swarm.best();
  out.best_utility = swarm.best_utility();
  out.iterations = swarm.iteration();
  out.stop = swarm.why();
  return out;
}

}  // namespace moa::swarm
