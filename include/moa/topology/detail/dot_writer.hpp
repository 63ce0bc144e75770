// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The one Graphviz DOT writer of moa: plans (moa/topology/dot.hpp) and DAG topologies
/// (moa::dag_topology::to_dot) both write through it, so quoting and escaping are done once.

#include <string>
#include <string_view>
#include <utility>

namespace moa::detail {

/// A DOT string body: quotes and backslashes escaped, newlines as DOT's `\n`.
inline std::string dot_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

/// A DOT ID: bare when it is an identifier ([A-Za-z_][A-Za-z0-9_]*), quoted and escaped
/// otherwise, so any title is safe.
inline std::string dot_id(std::string_view s) {
  bool bare = !s.empty() && !(s[0] >= '0' && s[0] <= '9');
  for (char c : s)
    bare = bare &&
           ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_');
  return bare ? std::string(s) : "\"" + dot_escape(s) + "\"";
}

/// Builds a left-to-right digraph line by line.
class dot_writer {
 public:
  explicit dot_writer(std::string_view title) : out_("digraph " + dot_id(title) + " {\n") {
    line("rankdir=LR;");
  }
  /// A raw statement (attributes, ranks), indented and ended by a newline.
  void line(std::string_view statement) {
    out_ += "  ";
    out_ += statement;
    out_ += '\n';
  }
  /// `id [label="label", attributes];` with the label escaped.
  void node(std::string_view id, std::string_view label, std::string_view attributes = {}) {
    out_ += "  ";
    out_ += id;
    out_ += " [label=\"" + dot_escape(label) + "\"";
    if (!attributes.empty()) {
      out_ += ", ";
      out_ += attributes;
    }
    out_ += "];\n";
  }
  void edge(std::string_view from, std::string_view to) {
    out_ += "  ";
    out_ += from;
    out_ += " -> ";
    out_ += to;
    out_ += ";\n";
  }
  std::string finish() && {
    out_ += "}\n";
    return std::move(out_);
  }

 private:
  std::string out_;
};

}  // namespace moa::detail
