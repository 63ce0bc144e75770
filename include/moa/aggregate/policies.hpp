// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The catalogue of aggregation policies: how a run turns the last layer's answers into one, and
/// (sparse) which answers each layer passes on.
///
/// The policies, each with its runtime form / compile-time form, the backend calls it makes at
/// the sink, and what it returns:
/// - `aggregator<I>` (no policy): 1 call, synthesis by I; a new answer.
/// - `vote_policy` / `majority_vote<Extractor>`: no call; the winning answer.
/// - `judge_policy` / `judge_select<I>`: 1 call, the judge picks by index; one of the answers.
/// - `rank_fuse_policy` / `rank_fuse<J, F, Top>`: 2 calls, J ranks and F fuses the top; a new
///   answer.
/// - `sparse_policy` / `sparse<J, Keep, Moderator>`: 1 ranking call per layer (J keeps Keep) plus
///   the synthesis; a new answer.
///
/// When to use:
/// - **synthesis** (`moa::aggregator<I>`, the default): open-ended answers (explanations, code,
///   prose) that benefit from merging; costs one call.
/// - **majority_vote** (self-consistency): questions with a short checkable answer (a number, an
///   option letter) and an extractor that finds it; costs nothing beyond the proposers and is
///   immune to an aggregator's hallucination. Ties are broken by plan order: among the answers
///   with the most votes, the one given first (by the first proposer in the topology's order)
///   wins; `tie_break::fail` makes a tie an error instead.
/// - **judge_select**: answers that cannot be merged or voted (code that must compile as a whole,
///   a single plan) when one model can judge; the answer is a proposer's text verbatim. A reply
///   naming no valid answer is an error, or a fallback you choose (`on_invalid_reply`), never a
///   silent pick.
/// - **rank_fuse**: many proposers, some weak: rank them, then synthesise only the best few,
///   so weak answers do not dilute the fusion.
/// - **sparse** (Sparse Mixture-of-Agents): deep layered runs where passing every answer to every
///   proposer costs too many tokens; a judge keeps the best `Keep` answers per layer and an
///   optional moderator stops early when the answers agree, skipping the remaining layers (the
///   report counts the calls saved).
///
/// Answer extractors (for voting and moderators): `whole_answer` (trimmed, case-folded text),
/// `last_number` (the last number, normalised: "1,000.50" -> "1000.5"), `option_letter`
/// (a multiple-choice letter). Any `std::string(std::string_view)` callable works; an empty
/// result is an abstention.
///
/// @code{.cpp}
/// // Compile time: three proposers, two layers, the final number by majority vote.
/// using voted = moa::topology<moa::layers<2, moa::proposers<0, 1, 2>>,
///                             moa::majority_vote<moa::last_number>>;
/// auto pipe = moa::make_pipeline<voted>(a, b, c);
/// // Run time: the same policy for a runtime pipeline.
/// moa::runtime_pipeline rp(std::move(backends), topology,
///                          moa::any_aggregator(moa::vote_policy{.extract = moa::last_number{}}));
/// @endcode

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
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/prompt/aggregation.hpp"

namespace moa {

// --- Answer extractors ---------------------------------------------------------------------------

namespace detail {
constexpr bool is_space(char c) noexcept {
  return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}
constexpr bool is_digit(char c) noexcept {
  return c >= '0' && c <= '9';
}
constexpr bool is_alnum(char c) noexcept {
  return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
constexpr char to_lower(char c) noexcept {
  return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c;
}
}  // namespace detail

/// @brief The whole answer, trimmed, with whitespace runs collapsed, trailing `.`/`!` removed and
/// ASCII letters lower-cased: "  Paris. " and "paris" vote together.
struct whole_answer {
  std::string operator()(std::string_view text) const {
    std::string out;
    out.reserve(text.size());
    bool space = false;
    for (char c : text) {
      if (detail::is_space(c)) {
        space = !out.empty();
        continue;
      }
      if (space) out += ' ';
      space = false;
      out += detail::to_lower(c);
    }
    while (!out.empty() && (out.back() == '.' || out.back() == '!')) out.pop_back();
    return out;
  }
};

/// @brief The last number in the answer, normalised so that equal values vote together:
/// thousands separators and a leading '+' dropped, trailing fractional zeros removed
/// ("The answer is 1,000.50." -> "1000.5"; "-0" -> "0"). Empty when there is none.
struct last_number {
  std::string operator()(std::string_view text) const {
    std::size_t end = text.size();
    // Find the last digit, then walk back over the number it ends.
    while (end > 0 && !detail::is_digit(text[end - 1])) --end;
    if (end == 0) return {};
    std::size_t begin = end;
    while (begin > 0) {
      const char c = text[begin - 1];
      if (detail::is_digit(c)) {
        --begin;
      } else if ((c == ',' || c == '.') && begin >= 2 && detail::is_digit(text[begin - 2])) {
        --begin;
      } else {
        break;
      }
    }
    const bool negative = begin > 0 && text[begin - 1] == '-';
    std::string digits;
    std::size_t dot = std::string::npos;
    const auto body = text.substr(begin, end - begin);
    // English notation: commas group thousands, a single '.' is the decimal point (several
    // dots, as in "1.000.000", group thousands too).
    const auto last_dot = body.rfind('.');
    const bool has_decimal = last_dot != std::string_view::npos && body.find('.') == last_dot;
    for (std::size_t i = 0; i < body.size(); ++i) {
      if (body[i] == ',' || (body[i] == '.' && !(has_decimal && i == last_dot))) continue;
      if (body[i] == '.') dot = digits.size();
      digits += body[i];
    }
    if (dot != std::string::npos) {
      while (!digits.empty() && digits.back() == '0') digits.pop_back();
      if (!digits.empty() && digits.back() == '.') digits.pop_back();
    }
    std::size_t lead = 0;
    while (lead + 1 < digits.size() && digits[lead] == '0' && digits[lead + 1] != '.') ++lead;
    digits.erase(0, lead);
    if (digits == "0" || digits.empty()) return "0";
    return negative ? "-" + digits : digits;
  }
};

/// @brief A multiple-choice letter between `first` and `last` (upper case): the last one written
/// as "(B)", "[B]" or "B)" if any, else the last standalone capital letter in range. Empty when
/// there is none. Beware of the article "A" in prose: prefer prompts that ask for "(X)".
struct option_letter {
  char first = 'A';
  char last = 'E';
  std::string operator()(std::string_view text) const {
    char marked = 0, bare = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
      const char c = text[i];
      if (c < first || c > last) continue;
      const char before = i > 0 ? text[i - 1] : ' ';
      const char after = i + 1 < text.size() ? text[i + 1] : ' ';
      if (detail::is_alnum(before) || detail::is_alnum(after)) continue;
      bare = c;
      if (before == '(' || before == '[' || after == ')' || after == ']') marked = c;
    }
    const char pick = marked ? marked : bare;
    return pick ? std::string(1, pick) : std::string();
  }
};

/// @brief An answer extractor as stored by the runtime policies.
using answer_extractor = std::function<std::string(std::string_view)>;

// --- Parsing a judge's reply ---------------------------------------------------------------------

/// @brief The standalone integers in `text`, in order: digit runs not glued to a letter, another
/// digit, or a decimal point ("[2]", "#2", "2)", "answer 2." count; "2nd", "v2", "2.5" do not).
inline std::vector<std::size_t> standalone_numbers(std::string_view text) {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < text.size();) {
    if (!detail::is_digit(text[i])) {
      ++i;
      continue;
    }
    std::size_t j = i;
    std::size_t value = 0;
    bool huge = false;
    while (j < text.size() && detail::is_digit(text[j])) {
      huge = huge || value > 100000;
      value = value * 10 + std::size_t(text[j] - '0');
      ++j;
    }
    const char before = i > 0 ? text[i - 1] : ' ';
    const char after = j < text.size() ? text[j] : ' ';
    const bool decimal_after = after == '.' && j + 1 < text.size() && detail::is_digit(text[j + 1]);
    const bool decimal_before = before == '.' && i >= 2 && detail::is_digit(text[i - 2]);
    if (!detail::is_alnum(before) && !detail::is_alnum(after) && !decimal_after &&
        !decimal_before && !huge)
      out.push_back(value);
    i = j;
  }
  return out;
}

/// @brief The outcome of parsing a judge's reply: the 0-based answer(s), or what was wrong.
struct judge_parse {
  std::vector<std::size_t> picks{};  ///< 0-based, in the judge's order
  std::string problem{};             ///< empty when the reply was valid
  [[nodiscard]] bool ok() const noexcept { return problem.empty(); }
};

namespace detail {
inline std::string quote(std::string_view reply) {
  constexpr std::size_t shown = 80;
  std::string q =
      "\"" + std::string(reply.substr(0, shown)) + (reply.size() > shown ? "...\"" : "\"");
  for (auto& c : q)
    if (c == '\n') c = ' ';
  return q;
}
}  // namespace detail

/// @brief Parses a judge's choice of one of `n` answers (numbered from 1 in the prompt).
///
/// Valid: exactly one distinct standalone number in 1..n ("2", "[2]", "Answer 2 is best."), or,
/// when several numbers appear, exactly one distinct number written in brackets ("[2]"). Anything
/// else (no number, a number out of range, several candidates) is invalid, with the reason: a
/// judge's reply is never guessed at.
inline judge_parse parse_choice(std::string_view reply, std::size_t n) {
  judge_parse out;
  auto numbers = standalone_numbers(reply);
  std::sort(numbers.begin(), numbers.end());
  numbers.erase(std::unique(numbers.begin(), numbers.end()), numbers.end());
  auto in_range = [n](std::size_t v) { return v >= 1 && v <= n; };
  if (numbers.size() > 1) {
    // Several numbers: a single bracketed one is the marked choice ("[2] is better than 1").
    std::vector<std::size_t> bracketed;
    for (std::size_t at = reply.find('['); at != std::string_view::npos;
         at = reply.find('[', at + 1)) {
      const auto close = reply.find(']', at);
      if (close == std::string_view::npos) break;
      const auto inner = standalone_numbers(reply.substr(at + 1, close - at - 1));
      if (inner.size() == 1 && close - at - 1 <= 4) bracketed.push_back(inner[0]);
    }
    std::sort(bracketed.begin(), bracketed.end());
    bracketed.erase(std::unique(bracketed.begin(), bracketed.end()), bracketed.end());
    if (bracketed.size() == 1) numbers = bracketed;
  }
  if (numbers.size() == 1 && in_range(numbers[0])) {
    out.picks.push_back(numbers[0] - 1);
    return out;
  }
  const auto range = "between 1 and " + std::to_string(n);
  if (numbers.empty())
    out.problem = "the judge's reply " + detail::quote(reply) + " names no answer " + range;
  else if (numbers.size() == 1)
    out.problem = "the judge's reply " + detail::quote(reply) + " names answer " +
                  std::to_string(numbers[0]) + ", which is not " + range;
  else
    out.problem = "the judge's reply " + detail::quote(reply) +
                  " names several answers; it must name exactly one " + range;
  out.problem += "; ask the judge to reply with one number in brackets, e.g. [1]";
  return out;
}

/// @brief Parses a judge's ranking of `n` answers, best first ("[2] > [3] > [1]", "2, 3, 1").
///
/// Valid when every standalone number is in 1..n and at least `need` distinct answers are
/// named; repeats keep their first position. Otherwise invalid, with the reason.
inline judge_parse parse_ranking(std::string_view reply, std::size_t n, std::size_t need) {
  judge_parse out;
  for (auto v : standalone_numbers(reply)) {
    if (v < 1 || v > n) {
      out.picks.clear();
      out.problem = "the judge's ranking " + detail::quote(reply) + " names answer " +
                    std::to_string(v) + ", which is not between 1 and " + std::to_string(n);
      return out;
    }
    if (std::find(out.picks.begin(), out.picks.end(), v - 1) == out.picks.end())
      out.picks.push_back(v - 1);
  }
  if (out.picks.size() < need) {
    out.problem = "the judge's ranking " + detail::quote(reply) + " names " +
                  std::to_string(out.picks.size()) + " distinct answers; at least " +
                  std::to_string(need) + " are needed (ask for a list such as [2] > [1] > [3])";
    out.picks.clear();
  }
  return out;
}

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
struct agreement {
  answer_extractor extract = whole_answer{};
  double min_share = 1.0;
  bool operator()(std::span<const reference> answers, std::string& why) const {
    if (answers.size() < 2) return false;
    const auto counts = detail::count_votes(answers, extract);
    std::size_t most = 0;
    std::string key;
    for (const auto& v : counts)
      if (v.votes > most) {
        most = v.votes;
        key = v.key;
      }
    if (most < 2 || double(most) < min_share * double(answers.size())) return false;
    why = std::to_string(most) + " of " + std::to_string(answers.size()) + " answers agree on \"" +
          key + "\"";
    return true;
  }
};

/// @brief Sparse Mixture-of-Agents: before every layer (and the final aggregation) a judge keeps
/// the best `keep` answers; an optional moderator stops the run early when the answers agree, and
/// the remaining layers are skipped (their calls are `skipped` in the trace with the reason, and
/// counted in aggregation_report::calls_saved). The final answer is synthesised by the plan's sink
/// backend from the kept answers, or by `final_policy` when set.
struct sparse_policy {
  using moa_policy = aggregator_tag;
  std::optional<std::uint32_t> judge{};  ///< ranks each layer's answers; default: the sink backend
  std::size_t keep = 2;                  ///< answers passed on per layer (j)
  /// Stops early when it returns true (and says why); empty: never.
  std::function<bool(std::span<const reference>, std::string&)> moderator{};
  on_invalid_ranking on_invalid = on_invalid_ranking::keep_all;
  any_aggregator final_policy{};  ///< the final aggregation; empty: synthesis by the sink backend
  std::string instructions = detail::ranking_instructions();

  [[nodiscard]] std::string_view name() const noexcept { return "sparse"; }

  [[nodiscard]] selection select(policy_context& ctx) const {
    if (keep == 0) MOA_THROW(invalid_argument("sparse: keep must be at least 1"));
    selection s;
    if (moderator && moderator(ctx.answers(), s.why)) {
      s.stop = true;
      for (std::size_t i = 0; i < ctx.answers().size(); ++i) s.keep.push_back(i);
      return s;
    }
    s.keep = detail::rank_top(ctx, judge.value_or(ctx.backend()), keep, on_invalid, instructions,
                              "sparse: rank");
    return s;
  }

  [[nodiscard]] std::string aggregate(policy_context& ctx) const {
    if (final_policy) return final_policy.aggregate(ctx);
    for (std::size_t i = 0; i < ctx.answers().size(); ++i) ctx.chose(i);
    return ctx.call(ctx.backend(), ctx.synthesis_request(ctx.answers()), "sparse: synthesise").text;
  }
};

/// @brief No moderator: sparse runs every layer.
struct no_moderator {};

/// @brief A compile-time moderator: stop when at least `Percent`% of the answers agree by
/// `Extractor`.
template <class Extractor = whole_answer, unsigned Percent = 100>
struct agreement_of {
  static_assert(Percent >= 1 && Percent <= 100, "moa::agreement_of: Percent is in 1..100");
};

/// @brief Sparse MoA as a compile-time policy: `Judge` keeps the best `Keep` answers per layer,
/// `Moderator` (no_moderator or agreement_of<E, P>) may stop early, `Aggregator` synthesises.
template <std::size_t Judge, std::size_t Keep, class Moderator = no_moderator,
          std::size_t Aggregator = Judge>
struct sparse : sparse_policy {
  static_assert(Keep >= 1, "moa::sparse: Keep (answers passed on per layer) must be at least 1");
  static constexpr std::size_t index = Aggregator;
  sparse() {
    judge = static_cast<std::uint32_t>(Judge);
    keep = Keep;
    set_moderator(static_cast<Moderator*>(nullptr));
  }

 private:
  void set_moderator(no_moderator*) {}
  template <class E, unsigned P>
  void set_moderator(agreement_of<E, P>*) {
    moderator = agreement{E{}, double(P) / 100.0};
  }
};

static_assert(AggregatorPolicy<vote_policy>);
static_assert(StaticAggregatorPolicy<majority_vote<>>);
static_assert(StaticAggregatorPolicy<judge_select<0>>);
static_assert(StaticAggregatorPolicy<rank_fuse<0, 1>>);
static_assert(LayerSelectingPolicy<sparse_policy>);
static_assert(StaticAggregatorPolicy<sparse<0, 2>>);

}  // namespace moa
