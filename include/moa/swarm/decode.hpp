// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Graph decoding: a continuous adjacency matrix (a PSO particle) → a discrete DAG, following the
/// Heterogeneous Swarms method (Feng et al. 2025, "G-decode"):
///
/// 1. the out-degree weight of node i is d_i = Σ_{j≠i} w(i, j) (row = producer, as in
///    moa::dag_topology);
/// 2. the sink is the node with the lowest d_i (it should feed nobody);
/// 3. repeatedly, the remaining node with the highest d_i is placed and connected to the placed
///    node u with the highest w(v, u).
///
/// Every node but the sink gets exactly one outgoing edge towards a node placed before it, so the
/// result is an in-tree rooted at the sink: acyclic, one sink, every node reaches it. Nodes with
/// several inputs aggregate their references.
///
/// Each choice is greedy (top_p = 0, the default, deterministic) or sampled: softmax of the
/// weights (negated for the sink), restricted to the smallest set of best choices whose mass
/// exceeds top_p (nucleus sampling), renormalised, drawn with a seeded moa::rng.
///
/// Differences from the paper's code, on purpose: the diagonal is ignored rather than asserted
/// zero (PSO moves it freely); the sink score is -d_i rather than 1/d_i (defined for d_i <= 0);
/// the nucleus is renormalised proportionally rather than by a second softmax.
///
/// @code{.cpp}
/// Eigen::MatrixXd w = Eigen::MatrixXd::Random(5, 5).cwiseAbs();
/// Eigen::MatrixXd dag = moa::swarm::decode(w);              // greedy, 0/1 entries
/// Eigen::MatrixXd s = moa::swarm::decode(w, {.top_p = 0.8, .seed = 7});
/// @endcode

#include <Eigen/Core>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "moa/core/error.hpp"
#include "moa/core/random.hpp"

namespace moa::swarm {

/// @brief How decode() makes its choices.
struct decode_options {
  /// 0: greedy (always the best choice). In (0, 1): sample among the smallest set of best choices
  /// whose softmax mass exceeds top_p. >= 1: sample from the full softmax.
  double top_p = 0.0;
  /// Softmax temperature for sampled choices (weights are divided by it). Must be > 0.
  double temperature = 1.0;
  /// Seed of the sampler; ignored when greedy.
  std::uint64_t seed = 0;
};

namespace detail {

// Scratch space on the stack for the sizes a multi-LLM system has (a handful of models), on the
// heap beyond: decoding sits inside every utility call of the search, so it must not allocate.
inline constexpr std::size_t decode_stack_nodes = 32;

struct decode_scratch {
  double* degree;
  double* score;
  std::uint32_t* candidate;
  bool* placed;
};

inline void check_decode_input(const Eigen::Ref<const Eigen::MatrixXd>& w,
                               const decode_options& opt) {
  if (w.rows() != w.cols() || w.rows() == 0)
    MOA_THROW(invalid_argument("moa::swarm::decode: the weight matrix is " +
                               std::to_string(w.rows()) + "x" + std::to_string(w.cols()) +
                               "; it must be square with at least one node"));
  if (!w.allFinite())
    MOA_THROW(
        invalid_argument("moa::swarm::decode: the weight matrix has a NaN or infinite "
                         "entry; clamp particle positions to finite bounds"));
  if (!(opt.temperature > 0.0))
    MOA_THROW(invalid_argument("moa::swarm::decode: temperature must be > 0"));
  if (!(opt.top_p >= 0.0))
    MOA_THROW(invalid_argument("moa::swarm::decode: top_p must be >= 0 (0 means greedy)"));
}

// Picks one of candidate[0..count) by score: the argmax (lowest index on ties) when greedy,
// else a nucleus sample.
inline std::uint32_t choose(std::uint32_t* candidate, double* score, std::size_t count,
                            const decode_options& opt, rng& gen) noexcept {
  std::size_t best = 0;
  for (std::size_t k = 1; k < count; ++k)
    if (score[k] > score[best]) best = k;
  if (opt.top_p <= 0.0 || count == 1) return candidate[best];
  const double top = score[best];
  double total = 0.0;
  for (std::size_t k = 0; k < count; ++k)
    total += score[k] = std::exp((score[k] - top) / opt.temperature);
  // Insertion sort by probability, descending: count is the number of nodes, a handful.
  for (std::size_t k = 1; k < count; ++k) {
    const double s = score[k];
    const auto c = candidate[k];
    std::size_t j = k;
    for (; j > 0 && score[j - 1] < s; --j) {
      score[j] = score[j - 1];
      candidate[j] = candidate[j - 1];
    }
    score[j] = s;
    candidate[j] = c;
  }
  std::size_t keep = 0;
  double mass = 0.0;
  while (keep < count) {
    mass += score[keep++];
    if (mass > opt.top_p * total) break;
  }
  double r = gen.uniform() * mass;
  for (std::size_t k = 0; k + 1 < keep; ++k) {
    if (r < score[k]) return candidate[k];
    r -= score[k];
  }
  return candidate[keep - 1];
}

// The greedy decoder. Degrees do not change as nodes are placed, so "the remaining node of
// highest degree, lowest index on ties" is one stable sort of the nodes by degree, done once.
inline std::size_t decode_greedy(const Eigen::Ref<const Eigen::MatrixXd>& w,
                                 std::span<std::int32_t> parent, decode_scratch s) noexcept {
  const auto n = static_cast<std::size_t>(w.rows());
  Eigen::Map<Eigen::VectorXd> degree(s.degree, w.rows());
  degree.noalias() = w.rowwise().sum();
  degree -= w.diagonal();
  std::size_t sink = 0;
  for (std::size_t i = 1; i < n; ++i)
    if (s.degree[i] < s.degree[sink]) sink = i;
  parent[sink] = -1;
  // order = the other nodes by degree, descending, stable (insertion sort: n is a handful).
  std::uint32_t* order = s.candidate;
  std::size_t count = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (i == sink) continue;
    const double d = s.degree[i];
    std::size_t j = count++;
    for (; j > 0 && s.degree[order[j - 1]] < d; --j) order[j] = order[j - 1];
    order[j] = std::uint32_t(i);
  }
  // placed = sink, then order[0..k): node order[k] picks its target among them.
  for (std::size_t k = 0; k < count; ++k) {
    const auto v = Eigen::Index(order[k]);
    std::size_t best = sink;
    double best_w = w(v, Eigen::Index(sink));
    for (std::size_t q = 0; q < k; ++q) {
      const double x = w(v, Eigen::Index(order[q]));
      if (x > best_w || (x == best_w && order[q] < best)) {
        best = order[q];
        best_w = x;
      }
    }
    parent[std::size_t(v)] = std::int32_t(best);
  }
  return sink;
}

// Writes parent[v] (the node v feeds; -1 for the sink) and returns the sink.
inline std::size_t decode_parents(const Eigen::Ref<const Eigen::MatrixXd>& w,
                                  std::span<std::int32_t> parent, const decode_options& opt,
                                  decode_scratch s) {
  if (opt.top_p <= 0.0) return decode_greedy(w, parent, s);
  const auto n = static_cast<std::size_t>(w.rows());
  Eigen::Map<Eigen::VectorXd> degree(s.degree, w.rows());
  degree.noalias() = w.rowwise().sum();
  degree -= w.diagonal();
  for (std::size_t i = 0; i < n; ++i) s.placed[i] = false;
  rng gen(opt.seed);
  for (std::size_t i = 0; i < n; ++i) {
    s.candidate[i] = std::uint32_t(i);
    s.score[i] = -s.degree[i];
  }
  const std::size_t sink = choose(s.candidate, s.score, n, opt, gen);
  s.placed[sink] = true;
  parent[sink] = -1;
  for (std::size_t step = 1; step < n; ++step) {
    std::size_t count = 0;
    for (std::size_t i = 0; i < n; ++i)
      if (!s.placed[i]) {
        s.candidate[count] = std::uint32_t(i);
        s.score[count++] = s.degree[i];
      }
    const std::size_t v = choose(s.candidate, s.score, count, opt, gen);
    count = 0;
    for (std::size_t u = 0; u < n; ++u)
      if (s.placed[u]) {
        s.candidate[count] = std::uint32_t(u);
        s.score[count++] = w(Eigen::Index(v), Eigen::Index(u));
      }
    parent[v] = std::int32_t(choose(s.candidate, s.score, count, opt, gen));
    s.placed[v] = true;
  }
  return sink;
}

template <class F>
decltype(auto) with_decode_scratch(std::size_t n, F&& f) {
  if (n <= decode_stack_nodes) {
    std::array<double, decode_stack_nodes> degree, score;
    std::array<std::uint32_t, decode_stack_nodes> candidate;
    std::array<bool, decode_stack_nodes> placed;
    return f(decode_scratch{degree.data(), score.data(), candidate.data(), placed.data()});
  }
  std::vector<double> degree(n), score(n);
  std::vector<std::uint32_t> candidate(n);
  std::unique_ptr<bool[]> placed(new bool[n]);
  return f(decode_scratch{degree.data(), score.data(), candidate.data(), placed.get()});
}

}  // namespace detail

/// @brief Decodes into a parent list: `parent[v]` is the node v feeds, -1 for the sink, which is
/// returned. `parent` must have one entry per node. Allocation-free up to 32 nodes; the cheapest
/// form for utilities that compare graphs.
inline std::size_t decode_parents(Eigen::Ref<const Eigen::MatrixXd> weights,
                                  std::span<std::int32_t> parent, const decode_options& opt = {}) {
  detail::check_decode_input(weights, opt);
  if (parent.size() != std::size_t(weights.rows()))
    MOA_THROW(invalid_argument("moa::swarm::decode_parents: parent has " +
                               std::to_string(parent.size()) + " entries for " +
                               std::to_string(weights.rows()) + " nodes; give one per node"));
  return detail::with_decode_scratch(parent.size(), [&](detail::decode_scratch s) {
    return detail::decode_parents(weights, parent, opt, s);
  });
}

/// @brief Decodes into `out` (resized to n×n; 1 marks an edge i → j), reusing its storage.
inline void decode_into(Eigen::Ref<const Eigen::MatrixXd> weights, Eigen::MatrixXd& out,
                        const decode_options& opt = {}) {
  detail::check_decode_input(weights, opt);
  const auto n = static_cast<std::size_t>(weights.rows());
  auto fill = [&](std::span<std::int32_t> parent) {
    detail::with_decode_scratch(n, [&](detail::decode_scratch s) {
      return detail::decode_parents(weights, parent, opt, s);
    });
    out.setZero(weights.rows(), weights.cols());
    for (std::size_t v = 0; v < n; ++v)
      if (parent[v] >= 0) out(Eigen::Index(v), Eigen::Index(parent[v])) = 1.0;
  };
  if (n <= detail::decode_stack_nodes) {
    std::array<std::int32_t, detail::decode_stack_nodes> parent;
    fill(std::span<std::int32_t>(parent.data(), n));
  } else {
    std::vector<std::int32_t> parent(n);
    fill(parent);
  }
}

/// @brief Decodes a continuous adjacency matrix into a DAG (0/1 entries, `(i, j) = 1` when i
/// feeds j). Never modifies `weights`. Throws moa::invalid_argument for a non-square, empty or
/// non-finite matrix.
inline Eigen::MatrixXd decode(Eigen::Ref<const Eigen::MatrixXd> weights,
                              const decode_options& opt = {}) {
  Eigen::MatrixXd out;
  decode_into(weights, out, opt);
  return out;
}

}  // namespace moa::swarm
