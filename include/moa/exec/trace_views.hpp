// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Lazy views over a run's trace, built on range-v3 where C++20's standard ranges stop
/// (`chunk_by` and `enumerate` arrive only in C++23). Kept out of moa.hpp: including range-v3
/// views costs compile time that only users of these views should pay.
///
/// @code{.cpp}
/// #include <moa/exec/trace_views.hpp>
/// for (const auto& layer : moa::views::layers(r.trace))        // contiguous runs of one layer
///   std::cout << ranges::distance(layer) << " calls\n";
/// for (const auto& call : moa::views::failed(r.trace)) std::cerr << call.error << '\n';
/// auto per_model = moa::usage_by_backend(r.trace);               // name -> summed usage
/// @endcode

#include <map>
#include <range/v3/view/chunk_by.hpp>
#include <range/v3/view/filter.hpp>
#include <range/v3/view/transform.hpp>
#include <span>
#include <string>
#include <string_view>

#include "moa/core/message.hpp"
#include "moa/core/result.hpp"

namespace moa {
namespace views {

/// @brief The trace cut into runs of calls of the same layer (plan order keeps layers
/// contiguous in layered and gossip plans; a DAG plan may give one layer several runs).
inline auto layers(std::span<const call_record> trace) {
  return trace | ranges::views::chunk_by(
                     [](const call_record& a, const call_record& b) { return a.layer == b.layer; });
}

/// @brief The calls that did not succeed.
inline auto failed(std::span<const call_record> trace) {
  return trace | ranges::views::filter([](const call_record& c) { return !c.ok(); });
}

/// @brief The answers of the calls that succeeded, in plan order.
inline auto answers(std::span<const call_record> trace) {
  return trace | ranges::views::filter([](const call_record& c) { return c.ok(); }) |
         ranges::views::transform([](const call_record& c) { return std::string_view(c.text); });
}

}  // namespace views

/// @brief Token usage summed per backend name (a model used under one name in several calls is
/// counted once, with all its calls).
inline std::map<std::string, usage, std::less<>> usage_by_backend(
    std::span<const call_record> trace) {
  std::map<std::string, usage, std::less<>> out;
  for (const auto& c : trace) out[c.backend_name] += c.usage;
  return out;
}

}  // namespace moa
