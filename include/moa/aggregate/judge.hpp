// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Policies that ask a judge: judge selection, and rank-then-fuse. Part of
/// moa/aggregate/policies.hpp.

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
#include "moa/aggregate/judge_parse.hpp"
#include "moa/aggregate/vote.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/prompt/aggregation.hpp"

namespace moa {

struct judge_policy {
  using moa_policy = aggregator_tag;
  std::optional<std::uint32_t> judge{};  ///< the judge backend; default: the plan's sink backend
  on_invalid_reply on_invalid = on_invalid_reply::fail;
  answer_extractor extract = whole_answer{};  ///< for the majority_vote fallback
  std::string instructions =
      "Several candidate answers to the user's latest message are listed below, numbered. Decide "
      "which one is the most correct and helpful. Reply with its number in brackets, for example "
      "[1], and nothing else.";

  [[nodiscard]] std::string_view name() const noexcept { return "judge_select"; }

  [[nodiscard]] std::string aggregate(policy_context& ctx) const {
    const auto answers = ctx.answers();
    if (answers.size() == 1) {
      ctx.note("judge: a single answer, chosen without asking the judge");
      ctx.chose(0);
      return std::string(answers[0].text);
    }
    const auto who = judge.value_or(ctx.backend());
    const auto reply = ctx.call(who, detail::judge_request(ctx, instructions), "judge: pick one");
    const auto parsed = parse_choice(reply.text, answers.size());
    if (parsed.ok()) {
      const auto pick = parsed.picks[0];
      ctx.note("judge " + std::string(ctx.backend_name(who)) + " chose [" +
               std::to_string(pick + 1) + "] of " + std::to_string(answers.size()));
      ctx.chose(pick);
      return std::string(answers[pick].text);
    }
    switch (on_invalid) {
      case on_invalid_reply::fail:
        break;
      case on_invalid_reply::majority_vote:
        ctx.fallback("judge: " + parsed.problem + "; fell back to a majority vote");
        return vote_policy{extract, tie_break::first_in_plan_order, answer_form::full_answer}
            .aggregate(ctx);
      case on_invalid_reply::first_answer:
        ctx.fallback("judge: " + parsed.problem + "; fell back to the first answer");
        ctx.chose(0);
        return std::string(answers[0].text);
    }
    MOA_THROW(backend_error("judge_select: " + parsed.problem));
  }
};

/// @brief Judge selection as a compile-time policy: backend `Judge` picks.
template <std::size_t Judge, on_invalid_reply OnInvalid = on_invalid_reply::fail>
struct judge_select : judge_policy {
  static constexpr std::size_t index = Judge;
  judge_select() {
    judge = static_cast<std::uint32_t>(Judge);
    on_invalid = OnInvalid;
  }
};

/// @brief What a ranking judge does when its reply is not a valid ranking.
enum class on_invalid_ranking : std::uint8_t {
  fail,      ///< the call fails with the reason
  keep_all,  ///< keep every answer in plan order (flagged in the report)
};

namespace detail {

inline const std::string& ranking_instructions() {
  static const std::string s =
      "Several candidate answers to the user's latest message are listed below, numbered. Rank "
      "them from best to worst. Reply with their numbers in brackets, best first, separated by "
      "'>', for example [2] > [1] > [3], and nothing else.";
  return s;
}

// Ranks ctx.answers() by `judge` and returns the best `top` (0-based, best first).
inline std::vector<std::size_t> rank_top(policy_context& ctx, std::uint32_t judge, std::size_t top,
                                         on_invalid_ranking on_invalid,
                                         const std::string& instructions, std::string_view who) {
  const auto n = ctx.answers().size();
  std::vector<std::size_t> all(n);
  for (std::size_t i = 0; i < n; ++i) all[i] = i;
  if (n <= top) return all;
  const auto reply = ctx.call(judge, judge_request(ctx, instructions), who);
  auto parsed = parse_ranking(reply.text, n, top);
  if (!parsed.ok()) {
    if (on_invalid == on_invalid_ranking::fail)
      MOA_THROW(backend_error(std::string(who) + ": " + parsed.problem));
    ctx.fallback(std::string(who) + ": " + parsed.problem + "; kept every answer");
    return all;
  }
  parsed.picks.resize(top);
  return parsed.picks;
}

}  // namespace detail

/// @brief Rank then fuse: a judge ranks the answers (listwise), the fuser synthesises only the
/// best `top`. With `top` or fewer answers the ranking call is skipped.
struct rank_fuse_policy {
  using moa_policy = aggregator_tag;
  std::optional<std::uint32_t> judge{};  ///< ranks; default: the plan's sink backend
  std::optional<std::uint32_t> fuser{};  ///< synthesises; default: the plan's sink backend
  std::size_t top = 2;
  on_invalid_ranking on_invalid = on_invalid_ranking::fail;
  std::string instructions = detail::ranking_instructions();

  [[nodiscard]] std::string_view name() const noexcept { return "rank_fuse"; }

  [[nodiscard]] std::string aggregate(policy_context& ctx) const {
    if (top == 0)
      MOA_THROW(invalid_argument("rank_fuse: top must be at least 1 (answers to fuse)"));
    const auto j = judge.value_or(ctx.backend());
    const auto picks = detail::rank_top(ctx, j, top, on_invalid, instructions, "rank_fuse: rank");
    std::vector<reference> best;
    for (auto p : picks) {
      best.push_back(ctx.answers()[p]);
      ctx.chose(p);
    }
    ctx.note("rank_fuse: fusing " + detail::join_picks(picks) + " of " +
             std::to_string(ctx.answers().size()));
    return ctx.call(fuser.value_or(ctx.backend()), ctx.synthesis_request(best), "rank_fuse: fuse")
        .text;
  }
};

/// @brief Rank then fuse as a compile-time policy: `Judge` ranks, `Fuser` fuses the best `Top`.
template <std::size_t Judge, std::size_t Fuser, std::size_t Top = 2>
struct rank_fuse : rank_fuse_policy {
  static_assert(Top >= 1, "moa::rank_fuse: Top (the answers fused) must be at least 1");
  static constexpr std::size_t index = Fuser;
  rank_fuse() {
    judge = static_cast<std::uint32_t>(Judge);
    fuser = static_cast<std::uint32_t>(Fuser);
    top = Top;
  }
};

/// @brief A moderator that declares agreement when at least `min_share` of the answers (and at
/// least two) extract to the same key.

}  // namespace moa
