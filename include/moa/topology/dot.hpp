// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Graphviz export of a plan, optionally coloured by a run's trace.
///
/// @code{.cpp}
/// std::ofstream("moa.dot") << moa::to_dot(pipeline.plan(), pipeline.names());
/// // dot -Tsvg moa.dot -o moa.svg
/// @endcode

#include <span>
#include <string>
#include <string_view>

#include "moa/core/result.hpp"
#include "moa/topology/plan.hpp"

namespace moa {

namespace detail {
inline std::string dot_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}
}  // namespace detail

/// @brief The plan as a DOT digraph: one node per call (backend, role, layer), one edge per
/// reference, calls of a layer on one rank. With a trace, failed calls are drawn red and skipped
/// ones grey.
inline std::string to_dot(const plan& p, std::span<const std::string> names = {},
                          std::span<const call_record> trace = {}, std::string_view title = "moa") {
  std::string out = "digraph \"" + detail::dot_escape(title) +
                    "\" {\n  rankdir=LR;\n"
                    "  node [shape=box, style=rounded];\n  prompt [shape=ellipse];\n";
  std::uint32_t max_layer = 0;
  for (const auto& c : p.calls()) max_layer = std::max(max_layer, c.layer);
  for (std::uint32_t layer = 0; layer <= max_layer; ++layer) {
    std::string rank;
    for (call_id c = 0; c < p.size(); ++c)
      if (p[c].layer == layer) rank += " c" + std::to_string(c) + ";";
    if (!rank.empty()) out += "  { rank=same;" + rank + " }\n";
  }
  for (call_id c = 0; c < p.size(); ++c) {
    const auto& call = p[c];
    const std::string name = call.backend < names.size()
                                 ? names[call.backend]
                                 : "backend#" + std::to_string(call.backend);
    out += "  c" + std::to_string(c) + " [label=\"" + detail::dot_escape(name) + "\\n" +
           std::string(to_string(call.role)) + ", layer " + std::to_string(call.layer) + "\"";
    if (call.role == call_role::aggregator) out += ", peripheries=2";
    if (c < trace.size() && !trace[c].ok())
      out += trace[c].status == call_status::skipped ? ", color=grey, fontcolor=grey"
                                                     : ", color=red, fontcolor=red";
    out += "];\n";
    const auto inputs = p.inputs_of_call(c);
    if (inputs.empty()) out += "  prompt -> c" + std::to_string(c) + ";\n";
    for (call_id in : inputs)
      out += "  c" + std::to_string(in) + " -> c" + std::to_string(c) + ";\n";
  }
  out += "  answer [shape=ellipse];\n  c" + std::to_string(p.sink()) + " -> answer;\n}\n";
  return out;
}

}  // namespace moa
