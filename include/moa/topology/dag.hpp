// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Runtime DAG topologies: any directed acyclic graph of model calls with one sink (Heterogeneous
/// Swarms, Feng et al. 2025). A DAG turns into a moa::plan, so it runs on the same executors and
/// simulator as layered and gossip topologies.
///
/// Edge convention: `adjacency(i, j) != 0` means node i feeds node j (row = producer, column =
/// consumer). The diagonal must be zero. This is the convention of the paper's code, where the
/// row sum is a node's out-degree.
///
/// @code{.cpp}
/// //  0 ──┐
/// //      ├──> 2 (sink, backend 0)
/// //  1 ──┘
/// Eigen::MatrixXd adj = Eigen::MatrixXd::Zero(3, 3);
/// adj(0, 2) = adj(1, 2) = 1;
/// moa::dag_topology dag(adj, {1, 2, 0});   // node i runs on backend backends[i]
/// dag.validate(3);                         // throws moa::topology_error naming the fault
/// moa::plan p = dag.make_plan();
/// std::cout << dag.to_dot();
/// @endcode

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/topology/detail/dot_writer.hpp"
#include "moa/topology/plan.hpp"

namespace moa {

/// @brief A DAG of model calls: node i runs on backend `backends()[i]`; `adjacency()(i, j) != 0`
/// means i's answer is a reference of j. Exactly one node (the sink) feeds nothing and gives the
/// answer; every other node must reach it.
///
/// Nodes without inputs get the bare prompt; a node with inputs gets their answers as references.
/// The same backend may run several nodes.
///
/// @code{.cpp}
/// auto dag = moa::dag_topology::from_layers(std::vector<std::vector<std::uint32_t>>{{0, 1}}, 2);
/// moa::plan p = dag.make_plan();  // the same plan as moa::make_layered_plan
/// @endcode
class dag_topology {
 public:
  dag_topology() = default;

  /// Takes the graph as given; call validate() (or make_plan(), which validates) to check it.
  dag_topology(Eigen::MatrixXd adjacency, std::vector<std::uint32_t> backends)
      : adjacency_(std::move(adjacency)), backends_(std::move(backends)) {}

  /// Node i on backend i: the shape of a role search, where every model is one node.
  explicit dag_topology(Eigen::MatrixXd adjacency) : adjacency_(std::move(adjacency)) {
    backends_.resize(static_cast<std::size_t>(adjacency_.rows()));
    for (std::size_t i = 0; i < backends_.size(); ++i) backends_[i] = std::uint32_t(i);
  }

  /// A layered MoA as a DAG: one node per proposer per layer (in order), complete bipartite
  /// edges between consecutive layers, the last layer feeding the aggregator (the last node).
  static dag_topology from_layers(std::span<const std::vector<std::uint32_t>> layers,
                                  std::uint32_t aggregator) {
    std::size_t n = 1;
    for (const auto& l : layers) n += l.size();
    const auto size = static_cast<Eigen::Index>(n);
    Eigen::MatrixXd adj = Eigen::MatrixXd::Zero(size, size);
    std::vector<std::uint32_t> backends;
    backends.reserve(n);
    std::size_t previous_first = 0, previous_count = 0;
    for (const auto& l : layers) {
      const std::size_t first = backends.size();
      for (std::size_t k = 0; k < l.size(); ++k)
        for (std::size_t p = 0; p < previous_count; ++p)
          adj(Eigen::Index(previous_first + p), Eigen::Index(first + k)) = 1.0;
      backends.insert(backends.end(), l.begin(), l.end());
      previous_first = first;
      previous_count = l.size();
    }
    for (std::size_t p = 0; p < previous_count; ++p)
      adj(Eigen::Index(previous_first + p), size - 1) = 1.0;
    backends.push_back(aggregator);
    return dag_topology(std::move(adj), std::move(backends));
  }

  [[nodiscard]] std::size_t size() const noexcept { return backends_.size(); }
  [[nodiscard]] const Eigen::MatrixXd& adjacency() const noexcept { return adjacency_; }
  [[nodiscard]] std::span<const std::uint32_t> backends() const noexcept { return backends_; }
  [[nodiscard]] bool has_edge(std::size_t from, std::size_t to) const noexcept {
    return adjacency_(Eigen::Index(from), Eigen::Index(to)) != 0.0;
  }
  /// Rebinds node i to backend `b` (assignments of models to nodes, as in the JFK-score).
  void assign(std::size_t node, std::uint32_t b) { backends_.at(node) = b; }

  /// Checks the structure: square, non-empty, finite, one backend per node, no self-loop,
  /// acyclic, exactly one sink (which every node then reaches). Throws topology_error.
  void validate() const {
    const auto rows = adjacency_.rows(), cols = adjacency_.cols();
    if (rows != cols)
      MOA_THROW(topology_error("moa::dag_topology: the adjacency matrix is " +
                               std::to_string(rows) + "x" + std::to_string(cols) +
                               "; it must be square (one row and one column per node)"));
    if (rows == 0)
      MOA_THROW(
          topology_error("moa::dag_topology: the graph has no nodes; a DAG needs at least "
                         "one node (the sink)"));
    if (backends_.size() != std::size_t(rows))
      MOA_THROW(
          topology_error("moa::dag_topology: the adjacency matrix has " + std::to_string(rows) +
                         " nodes but " + std::to_string(backends_.size()) +
                         " backend indices are given; bind exactly one backend to every node"));
    const std::size_t n = size();
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j) {
        const double a = adjacency_(Eigen::Index(i), Eigen::Index(j));
        if (!std::isfinite(a))
          MOA_THROW(topology_error("moa::dag_topology: adjacency(" + std::to_string(i) + ", " +
                                   std::to_string(j) +
                                   ") is not finite; use 0 for no edge and 1 for an edge"));
      }
    for (std::size_t i = 0; i < n; ++i)
      if (has_edge(i, i))
        MOA_THROW(topology_error("moa::dag_topology: node " + std::to_string(i) +
                                 " feeds itself (adjacency(" + std::to_string(i) + ", " +
                                 std::to_string(i) + ") != 0); set the diagonal to zero"));
    if (topological_order_or_empty().size() != n)
      MOA_THROW(topology_error("moa::dag_topology: the graph has a cycle (nodes " +
                               unordered_nodes() +
                               " are on it or fed by it); remove an edge of the cycle so that "
                               "answers flow one way"));
    std::vector<std::size_t> sinks;
    for (std::size_t i = 0; i < n; ++i)
      if (out_degree(i) == 0) sinks.push_back(i);
    // Acyclic with a single node of out-degree zero: following edges from any node must end at
    // that node, so "every node reaches the sink" needs no separate walk.
    if (sinks.size() != 1) {
      std::string list;
      for (auto s : sinks) list += (list.empty() ? "" : ", ") + std::to_string(s);
      MOA_THROW(topology_error(
          "moa::dag_topology: nodes " + list +
          " feed no other node, but a DAG topology needs exactly one sink (the node that gives "
          "the answer); connect all but one of them to a later node, or remove them"));
    }
  }

  /// validate(), and also that every backend index is below `backend_count`.
  void validate(std::size_t backend_count) const {
    validate();
    for (std::size_t i = 0; i < backends_.size(); ++i)
      if (backends_[i] >= backend_count)
        MOA_THROW(topology_error(
            "moa::dag_topology: node " + std::to_string(i) + " is bound to backend " +
            std::to_string(backends_[i]) + ", but only " + std::to_string(backend_count) +
            " backends are given (valid indices are 0 to " +
            (backend_count ? std::to_string(backend_count - 1) : std::string("none")) + ")"));
  }

  /// The node that gives the answer. Requires a valid graph.
  [[nodiscard]] std::size_t sink() const {
    validate();
    for (std::size_t i = 0; i < size(); ++i)
      if (out_degree(i) == 0) return i;
    return size() - 1;  // unreachable after validate()
  }

  /// Longest-path depth of each node, 1-based (sources are 1). Requires an acyclic graph.
  [[nodiscard]] std::vector<std::uint32_t> depths() const {
    validate();
    std::vector<std::uint32_t> depth(size(), 1);
    for (std::size_t v : topological_order_or_empty())
      for (std::size_t w = 0; w < size(); ++w)
        if (has_edge(v, w)) depth[w] = std::max(depth[w], depth[v] + 1);
    return depth;
  }

  /// Validates and builds the plan. Calls are ordered by (depth, node index), so the sink, which
  /// is deeper than every node feeding it, is last; a layered MoA keeps its layer order. Calls
  /// with the same set of inputs share one input group.
  [[nodiscard]] plan make_plan() const {
    const auto depth = depths();
    const std::size_t n = size();
    std::vector<std::size_t> order(n);
    for (std::size_t i = 0; i < n; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return depth[a] < depth[b]; });
    std::vector<call_id> call_of(n);
    std::map<std::vector<call_id>, group_id> groups;
    plan p;
    std::vector<call_id> inputs;
    for (std::size_t k = 0; k < n; ++k) {
      const std::size_t v = order[k];
      inputs.clear();
      for (std::size_t u = 0; u < n; ++u)
        if (has_edge(u, v)) inputs.push_back(call_of[u]);
      std::sort(inputs.begin(), inputs.end());
      auto [it, fresh] = groups.try_emplace(inputs, group_id{0});
      if (fresh) it->second = p.add_group(inputs);
      call_of[v] = p.add_call(backends_[v], it->second, depth[v],
                              k + 1 == n ? call_role::aggregator : call_role::proposer);
    }
    p.seal();
    return p;
  }

  /// Graphviz DOT. Nodes are labelled "node: name" where `names[backend]` is the backend's name
  /// (or "backend#b" when names are not given); the sink is drawn as a double circle.
  [[nodiscard]] std::string to_dot(std::span<const std::string> names = {},
                                   std::string_view graph_name = "moa_dag") const {
    detail::dot_writer dot(graph_name);
    std::size_t sink_node = size();
    for (std::size_t i = 0; i < size(); ++i)
      if (out_degree(i) == 0) sink_node = sink_node == size() ? i : size() + 1;
    for (std::size_t i = 0; i < size(); ++i) {
      const auto b = backends_[i];
      const std::string name = b < names.size() ? names[b] : "backend#" + std::to_string(b);
      dot.node("n" + std::to_string(i), std::to_string(i) + ": " + name,
               i == sink_node ? "shape=doublecircle" : "");
    }
    for (std::size_t i = 0; i < size(); ++i)
      for (std::size_t j = 0; j < size(); ++j)
        if (i != j && std::size_t(adjacency_.rows()) == size() && has_edge(i, j))
          dot.edge("n" + std::to_string(i), "n" + std::to_string(j));
    return std::move(dot).finish();
  }

  friend bool operator==(const dag_topology& a, const dag_topology& b) {
    if (a.backends_ != b.backends_ || a.adjacency_.rows() != b.adjacency_.rows() ||
        a.adjacency_.cols() != b.adjacency_.cols())
      return false;
    return ((a.adjacency_.array() != 0.0) == (b.adjacency_.array() != 0.0)).all();
  }

 private:
  [[nodiscard]] std::size_t out_degree(std::size_t i) const noexcept {
    std::size_t d = 0;
    for (std::size_t j = 0; j < size(); ++j) d += (j != i && has_edge(i, j)) ? 1 : 0;
    return d;
  }

  // Kahn's algorithm, smallest ready index first; shorter than size() when there is a cycle.
  [[nodiscard]] std::vector<std::size_t> topological_order_or_empty() const {
    const std::size_t n = size();
    std::vector<std::size_t> indegree(n, 0), order;
    order.reserve(n);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j)
        if (has_edge(i, j)) ++indegree[j];
    std::vector<bool> done(n, false);
    for (bool progress = true; progress;) {
      progress = false;
      for (std::size_t v = 0; v < n; ++v) {
        if (done[v] || indegree[v] != 0) continue;
        done[v] = true;
        order.push_back(v);
        progress = true;
        for (std::size_t w = 0; w < n; ++w)
          if (has_edge(v, w)) --indegree[w];
      }
    }
    return order;
  }

  // The nodes Kahn's algorithm could not place, so the message says where to look.
  [[nodiscard]] std::string unordered_nodes() const {
    const auto order = topological_order_or_empty();
    std::vector<bool> placed(size(), false);
    for (auto v : order) placed[v] = true;
    std::string list;
    for (std::size_t v = 0; v < size(); ++v)
      if (!placed[v]) list += (list.empty() ? "" : ", ") + std::to_string(v);
    return list;
  }

  Eigen::MatrixXd adjacency_{};
  std::vector<std::uint32_t> backends_{};
};

}  // namespace moa
