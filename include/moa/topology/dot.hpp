// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Graphviz export of a plan, optionally coloured by a run's trace.
///
/// @code{.cpp}
/// std::ofstream("moa.dot") << moa::to_dot(pipeline.plan(), pipeline.names());
/// // dot -Tsvg moa.dot -o moa.svg
/// @endcode

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "moa/core/result.hpp"
#include "moa/topology/detail/dot_writer.hpp"
#include "moa/topology/plan.hpp"

namespace moa {

/// @brief The plan as a DOT digraph: one node per call (backend, role, layer), one edge per
/// reference, calls of a layer on one rank. With a trace, failed calls are drawn red and skipped
/// ones grey.
namespace detail {
// A call's node name, "c<id>". Appended rather than `"c" + std::to_string(c)`: g++ 12 at -O2
// reports a false -Wrestrict inside that operator+ (GCC bug 105329), fatal with -Werror.
inline std::string node_id(call_id c) {
  std::string id = "c";
  id += std::to_string(c);
  return id;
}
}  // namespace detail

inline std::string to_dot(const plan& p, std::span<const std::string> names = {},
                          std::span<const call_record> trace = {}, std::string_view title = "moa") {
  detail::dot_writer dot(title);
  dot.line("node [shape=box, style=rounded];");
  dot.line("prompt [shape=ellipse];");
  std::uint32_t max_layer = 0;
  for (const auto& c : p.calls()) max_layer = std::max(max_layer, c.layer);
  for (std::uint32_t layer = 0; layer <= max_layer; ++layer) {
    std::string rank;
    for (call_id c = 0; c < p.size(); ++c)
      if (p[c].layer == layer) {
        rank += ' ';
        rank += detail::node_id(c);
        rank += ';';
      }
    if (!rank.empty()) dot.line("{ rank=same;" + rank + " }");
  }
  for (call_id c = 0; c < p.size(); ++c) {
    const auto& call = p[c];
    const std::string id = detail::node_id(c);
    const std::string name = call.backend < names.size()
                                 ? names[call.backend]
                                 : "backend#" + std::to_string(call.backend);
    std::string attributes = call.role == call_role::aggregator ? "peripheries=2" : "";
    if (c < trace.size() && !trace[c].ok())
      attributes += std::string(attributes.empty() ? "" : ", ") +
                    (trace[c].status == call_status::skipped ? "color=grey, fontcolor=grey"
                                                             : "color=red, fontcolor=red");
    dot.node(
        id,
        name + "\n" + std::string(to_string(call.role)) + ", layer " + std::to_string(call.layer),
        attributes);
    const auto inputs = p.inputs_of_call(c);
    if (inputs.empty()) dot.edge("prompt", id);
    for (call_id in : inputs) dot.edge(detail::node_id(in), id);
  }
  dot.line("answer [shape=ellipse];");
  dot.edge(detail::node_id(p.sink()), "answer");
  return std::move(dot).finish();
}

}  // namespace moa
