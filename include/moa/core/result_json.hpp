// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// A run's result as JSON: its status, answer, usage, every call of the trace and what the
/// aggregation policy decided. One shape for every program that shows a run (`moa run --format
/// json`, the trace extension of `moa serve`). Needs nlohmann-json; the other core headers do not.
///
/// @code{.cpp}
/// #include <moa/core/result_json.hpp>
/// std::cout << moa::to_json(pipeline.run(ex, moa::make_request("Hi"))).dump(2);
/// @endcode

#include <chrono>

#include <nlohmann/json.hpp>

#include "moa/core/result.hpp"

namespace moa {

/// @brief One call as JSON: ids, layer, role, the model (backend) name, status, times in
/// milliseconds from the run's start, token counts, the calls it referenced, its text and error.
inline nlohmann::json to_json(const call_record& c) {
  using ms = std::chrono::duration<double, std::milli>;
  nlohmann::json refs = nlohmann::json::array();
  for (auto id : c.references) refs.push_back(id);
  return {{"call", c.call},
          {"layer", c.layer},
          {"role", std::string(to_string(c.role))},
          {"model", c.backend_name},
          {"status", std::string(to_string(c.status))},
          {"start_ms", ms(c.start).count()},
          {"end_ms", ms(c.end).count()},
          {"prompt_tokens", c.usage.prompt_tokens},
          {"completion_tokens", c.usage.completion_tokens},
          {"references", refs},
          {"text", c.text},
          {"error", c.error}};
}

/// @brief What an aggregation policy decided, with its own calls.
inline nlohmann::json to_json(const aggregation_report& a) {
  nlohmann::json calls = nlohmann::json::array();
  for (const auto& c : a.calls) calls.push_back(to_json(c));
  return {{"policy", a.policy},           {"notes", a.notes},
          {"chosen", a.chosen},           {"calls", calls},
          {"calls_saved", a.calls_saved}, {"references_dropped", a.references_dropped},
          {"fallback", a.fallback}};
}

/// @brief A run as JSON; `aggregation` is null when the run had no policy. Texts from servers may
/// hold invalid UTF-8: dump with `nlohmann::json::error_handler_t::replace`.
inline nlohmann::json to_json(const result& r) {
  nlohmann::json calls = nlohmann::json::array();
  for (const auto& c : r.trace) calls.push_back(to_json(c));
  return {{"status", std::string(to_string(r.status))},
          {"answer", r.answer},
          {"error", r.error},
          {"elapsed_ms", std::chrono::duration<double, std::milli>(r.elapsed).count()},
          {"usage",
           {{"prompt_tokens", r.usage.prompt_tokens},
            {"completion_tokens", r.usage.completion_tokens}}},
          {"trace", calls},
          {"aggregation", r.aggregation ? to_json(*r.aggregation) : nlohmann::json(nullptr)}};
}

}  // namespace moa
