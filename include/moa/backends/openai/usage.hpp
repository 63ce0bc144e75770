// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Token usage of a run over OpenAI-compatible backends, per model and in all.

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <string>
#include <vector>

#include "moa/core/message.hpp"
#include "moa/core/result.hpp"

namespace moa {

namespace openai {

/// @brief Token usage of a run, per model (the backend name in the trace) and in all.
struct usage_report {
  struct entry {
    std::string model;
    moa::usage usage{};
    std::size_t calls = 0;  ///< calls of the run on this model
  };
  std::vector<entry> per_model;  ///< in order of first appearance in the trace
  moa::usage total{};
};

/// @brief Sums the usage the servers reported, per model (backend name) and for the run.
inline usage_report summarize_usage(const result& r) {
  usage_report out;
  for (const auto& call : r.trace) {
    auto it = std::find_if(out.per_model.begin(), out.per_model.end(),
                           [&](const auto& e) { return e.model == call.backend_name; });
    if (it == out.per_model.end()) {
      out.per_model.push_back({call.backend_name, {}, 0});
      it = std::prev(out.per_model.end());
    }
    it->usage += call.usage;
    ++it->calls;
    out.total += call.usage;
  }
  return out;
}

}  // namespace openai

}  // namespace moa
