// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// What a run returns: the answer (or why there is none), and a trace of every call. It lives in
/// core/ because everything above the executors reads it: aggregation policies, backends, networks.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iomanip>
#include <memory>
#include <ostream>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "moa/core/error.hpp"
#include "moa/core/message.hpp"

namespace moa {

/// @brief How one call ended.
enum class call_status : std::uint8_t {
  ok,         ///< answered with non-empty text
  failed,     ///< the backend threw
  timed_out,  ///< passed its deadline (the answer, if any came, was discarded)
  empty,      ///< answered with empty text
  cancelled,  ///< the run was cancelled before or during the call
  skipped,    ///< never run: too few of its inputs succeeded, or the run ended first
};

constexpr std::string_view to_string(call_status s) noexcept {
  switch (s) {
    case call_status::ok:
      return "ok";
    case call_status::failed:
      return "failed";
    case call_status::timed_out:
      return "timed_out";
    case call_status::empty:
      return "empty";
    case call_status::cancelled:
      return "cancelled";
    case call_status::skipped:
      return "skipped";
  }
  return "?";
}

/// @brief The calls whose answers a call received. Calls of one input group share one list, so
/// recording it costs one allocation per group, not one per call.
class call_list {
 public:
  call_list() = default;
  explicit call_list(std::shared_ptr<const std::vector<call_id>> ids) noexcept
      : ids_(std::move(ids)) {}

  [[nodiscard]] std::span<const call_id> span() const noexcept {
    return ids_ ? std::span<const call_id>(*ids_) : std::span<const call_id>();
  }
  [[nodiscard]] std::size_t size() const noexcept { return span().size(); }
  [[nodiscard]] bool empty() const noexcept { return span().empty(); }
  [[nodiscard]] call_id operator[](std::size_t i) const noexcept { return span()[i]; }
  [[nodiscard]] auto begin() const noexcept { return span().begin(); }
  [[nodiscard]] auto end() const noexcept { return span().end(); }
  [[nodiscard]] std::vector<call_id> to_vector() const { return {begin(), end()}; }

  friend bool operator==(const call_list& a, const call_list& b) noexcept {
    return std::ranges::equal(a.span(), b.span());
  }
  friend bool operator==(const call_list& a, const std::vector<call_id>& b) noexcept {
    return std::ranges::equal(a.span(), b);
  }
  friend std::ostream& operator<<(std::ostream& os, const call_list& l) {
    os << '{';
    for (std::size_t i = 0; i < l.size(); ++i) os << (i ? ", " : "") << l[i];
    return os << '}';
  }

 private:
  std::shared_ptr<const std::vector<call_id>> ids_;
};

/// @brief One call of a run, as it happened.
struct call_record {
  call_id call = 0;
  std::uint32_t backend = 0;
  std::string backend_name{};
  std::uint32_t layer = 0;
  call_role role = call_role::proposer;
  call_status status = call_status::skipped;
  clock::duration start{0};  ///< since the run started
  clock::duration end{0};
  moa::usage usage{};
  finish_reason finish = finish_reason::unknown;
  std::string text{};      ///< the answer (kept even when it was not used, e.g. timed out)
  std::string error{};     ///< why it failed, for every status but ok
  call_list references{};  ///< the calls whose answers it received, in order
  /// Estimated tokens cut from its references by aggregation_prompt::token_budget (0: none).
  std::uint64_t trimmed_tokens = 0;

  [[nodiscard]] bool ok() const noexcept { return status == call_status::ok; }
  [[nodiscard]] clock::duration duration() const noexcept { return end - start; }
};

/// @brief Every call of a run, in plan order.
using trace = std::vector<call_record>;

/// @brief Prints a trace as a table, one call a line.
inline std::ostream& operator<<(std::ostream& os, std::span<const call_record> t) {
  using ms = std::chrono::duration<double, std::milli>;
  os << std::left << std::setw(5) << "call" << std::setw(6) << "layer" << std::setw(11) << "role"
     << std::setw(14) << "backend" << std::setw(10) << "status" << std::right << std::setw(10)
     << "start ms" << std::setw(10) << "end ms" << std::setw(8) << "tok in" << std::setw(8)
     << "tok out"
     << "  refs\n";
  for (const auto& r : t) {
    std::ostringstream refs;
    for (std::size_t i = 0; i < r.references.size(); ++i) refs << (i ? "," : "") << r.references[i];
    os << std::left << std::setw(5) << r.call << std::setw(6) << r.layer << std::setw(11)
       << to_string(r.role) << std::setw(14) << r.backend_name << std::setw(10)
       << to_string(r.status) << std::right << std::fixed << std::setprecision(2) << std::setw(10)
       << ms(r.start).count() << std::setw(10) << ms(r.end).count() << std::setw(8)
       << r.usage.prompt_tokens << std::setw(8) << r.usage.completion_tokens << "  "
       << (refs.str().empty() ? "-" : refs.str());
    if (r.trimmed_tokens > 0) os << "  [references trimmed by ~" << r.trimmed_tokens << " tok]";
    if (!r.error.empty()) os << "  (" << r.error << ')';
    os << '\n';
  }
  return os;
}
inline std::ostream& operator<<(std::ostream& os, const trace& t) {
  return os << std::span<const call_record>(t);
}

/// @brief How a run ended.
enum class run_status : std::uint8_t {
  ok,         ///< the sink answered
  degraded,   ///< the aggregator failed; the answer is the best earlier one (see error)
  failed,     ///< no answer: too many calls failed (error names them)
  timed_out,  ///< the run's deadline passed first
  cancelled,  ///< the stop token was triggered
};

constexpr std::string_view to_string(run_status s) noexcept {
  switch (s) {
    case run_status::ok:
      return "ok";
    case run_status::degraded:
      return "degraded";
    case run_status::failed:
      return "failed";
    case run_status::timed_out:
      return "timed_out";
    case run_status::cancelled:
      return "cancelled";
  }
  return "?";
}

/// @brief What an aggregation policy (moa/aggregator.hpp) decided during a run, and the calls it
/// made that are not calls of the plan (judges, rankers, moderators). Absent (null) in the
/// result of a run without a policy.
struct aggregation_report {
  std::string policy{};  ///< the policy's name, e.g. "majority_vote"
  /// Backend calls the policy made, in the order made. Their `call` ids continue after the plan's
  /// (plan size, plan size + 1, ...), so they never collide with a trace index.
  std::vector<call_record> calls{};
  std::vector<std::string> notes{};    ///< every decision, in order, in words
  std::vector<call_id> chosen{};       ///< the plan calls whose answers the final answer came from
  std::size_t calls_saved = 0;         ///< plan calls skipped because a moderator stopped early
  std::size_t references_dropped = 0;  ///< answers a selection did not pass on to the next layer
  std::uint32_t stopped_before_layer = 0;  ///< the first layer skipped by the moderator; 0: none
  bool fallback = false;                   ///< a policy fell back (a judge named no valid answer)
  /// Usage of the policy's calls that the trace does not already count (calls made between
  /// layers); result::usage includes it.
  moa::usage extra_usage{};
};

/// @brief The outcome of one run: an answer, a degraded answer (flagged, with what was missing)
/// or an explicit error. Never silently empty.
struct result {
  run_status status = run_status::failed;
  std::string answer{};  ///< empty unless ok() or degraded()
  std::string error{};   ///< what went wrong, naming the failed calls; empty when ok()
  moa::trace trace{};
  moa::usage usage{};  ///< summed over every call that reported usage
  clock::duration elapsed{0};
  /// What the aggregation policy decided (null when the run had none).
  std::shared_ptr<const aggregation_report> aggregation{};

  /// True when there is an answer from the sink.
  [[nodiscard]] bool ok() const noexcept { return status == run_status::ok; }
  /// True when there is an answer, but not from the sink.
  [[nodiscard]] bool degraded() const noexcept { return status == run_status::degraded; }
  [[nodiscard]] bool has_answer() const noexcept { return ok() || degraded(); }

  /// The answer, or run_error carrying `error`.
  [[nodiscard]] const std::string& value() const {
    if (!has_answer())
      MOA_THROW(run_error("moa: run " + std::string(to_string(status)) + ": " + error));
    return answer;
  }

  /// Calls that did not succeed.
  [[nodiscard]] std::vector<const call_record*> failures() const {
    std::vector<const call_record*> out;
    for (const auto& r : trace)
      if (!r.ok()) out.push_back(&r);
    return out;
  }
};

}  // namespace moa
