// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Majority vote (self-consistency), and what the policies share: tie-breaking, answer forms,
/// the judge's request. Part of moa/aggregate/policies.hpp.

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "moa/aggregate/aggregator_concepts.hpp"
#include "moa/aggregate/any_aggregator.hpp"
#include "moa/aggregate/extractors.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/prompt/aggregation.hpp"

namespace moa {

// --- Policies ------------------------------------------------------------------------------------

/// @brief How a vote ends when several answers share the most votes.
enum class tie_break : std::uint8_t {
  first_in_plan_order,  ///< the tied answer given first (by the earliest call of the plan) wins
  fail,                 ///< a tie is an error (the run's aggregator_fallback applies)
};

/// @brief What a vote returns.
enum class answer_form : std::uint8_t {
  full_answer,  ///< the first full answer that voted for the winner
  extracted,    ///< the winning extracted answer alone (e.g. "42")
};

/// @brief What a judge does when its reply names no valid answer.
enum class on_invalid_reply : std::uint8_t {
  fail,           ///< the sink fails with the reason (the run's aggregator_fallback applies)
  majority_vote,  ///< fall back to a majority vote (flagged in the report)
  first_answer,   ///< fall back to the first answer in plan order (flagged in the report)
};

namespace detail {

struct vote_count {
  std::string key;
  std::size_t votes = 0;
  std::size_t first = 0;  // index of the first answer with this key
};

inline std::vector<vote_count> count_votes(std::span<const reference> answers,
                                           const answer_extractor& extract) {
  std::vector<vote_count> counts;
  counts.reserve(answers.size());
  for (std::size_t i = 0; i < answers.size(); ++i) {
    auto key = extract(answers[i].text);
    if (key.empty()) continue;  // an abstention
    auto it = std::find_if(counts.begin(), counts.end(),
                           [&](const vote_count& v) { return v.key == key; });
    if (it == counts.end())
      counts.push_back({std::move(key), 1, i});
    else
      ++it->votes;
  }
  return counts;
}

inline std::string numbered(std::string_view instructions, std::span<const reference> answers) {
  aggregation_prompt layout;
  layout.instructions = std::string(instructions);
  return layout.render(answers);
}

inline request judge_request(const policy_context& ctx, std::string_view instructions) {
  request r;
  r.sampling = ctx.prompt().sampling;
  r.messages.push_back({role::system, numbered(instructions, ctx.answers())});
  for (const auto& m : ctx.prompt().messages)
    if (m.role != role::system) r.messages.push_back(m);
  return r;
}

inline std::string join_picks(std::span<const std::size_t> picks) {
  std::string s;
  for (auto p : picks) s += (s.empty() ? "[" : ", [") + std::to_string(p + 1) + "]";
  return s;
}

}  // namespace detail

/// @brief Majority vote (self-consistency) over the answers, by a user-supplied extractor.
/// Tie-breaking: see `tie_break` (plan order by default). Abstentions (empty extractions) do not
/// vote; if every answer abstains the sink fails, naming the extractor as the likely cause.
///
/// @code{.cpp}
/// moa::vote_policy vote{.extract = moa::last_number{}, .returns = moa::answer_form::extracted};
/// @endcode
struct vote_policy {
  using moa_policy = aggregator_tag;
  answer_extractor extract = whole_answer{};
  moa::tie_break tie = tie_break::first_in_plan_order;
  answer_form returns = answer_form::full_answer;

  [[nodiscard]] std::string_view name() const noexcept { return "majority_vote"; }

  [[nodiscard]] std::string aggregate(policy_context& ctx) const {
    const auto answers = ctx.answers();
    const auto counts = detail::count_votes(answers, extract);
    if (counts.empty())
      MOA_THROW(backend_error("majority vote: none of the " + std::to_string(answers.size()) +
                              " answers holds an answer the extractor recognises; check the "
                              "extractor against the proposers' answers"));
    // counts is in order of first appearance, so the first maximum is the plan-order winner.
    auto best = counts.begin();
    for (auto it = counts.begin(); it != counts.end(); ++it)
      if (it->votes > best->votes) best = it;
    std::size_t tied = 0;
    for (const auto& v : counts) tied += v.votes == best->votes ? 1 : 0;
    if (tied > 1 && tie == tie_break::fail)
      MOA_THROW(backend_error("majority vote: " + std::to_string(tied) + " answers tie with " +
                              std::to_string(best->votes) +
                              " votes each (tie_break::fail); add proposers or use "
                              "tie_break::first_in_plan_order"));
    ctx.note("majority vote: \"" + best->key + "\" won with " + std::to_string(best->votes) +
             " of " + std::to_string(answers.size()) + " votes" +
             (tied > 1 ? " (a " + std::to_string(tied) + "-way tie, broken by plan order)" : ""));
    for (std::size_t i = 0; i < answers.size(); ++i)
      if (i == best->first || (i > best->first && extract(answers[i].text) == best->key))
        ctx.chose(i);
    return returns == answer_form::extracted ? best->key : std::string(answers[best->first].text);
  }
};

/// @brief Majority vote as a compile-time policy: `moa::topology<Layers, majority_vote<E>>`.
template <class Extractor = whole_answer, tie_break Tie = tie_break::first_in_plan_order,
          answer_form Form = answer_form::full_answer>
struct majority_vote : vote_policy {
  static constexpr std::size_t index = 0;  // no backend is called; any index of the pack fits
  majority_vote() : vote_policy{Extractor{}, Tie, Form} {}
};

/// @brief A judge backend picks the best answer by its number; the answer is returned verbatim.
/// The reply is parsed by parse_choice; one that names no valid answer fails the sink with the
/// reason, or falls back as `on_invalid` says (flagged in the report). With a single answer the
/// judge is not called.

}  // namespace moa
