// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// How an answer is scored: against a reference (exact match, multiple choice, last number), by
/// a judge model on a rubric (1-10), or by a judge comparing two answers (pairwise).
///
/// | scorer     | score of one item                                                    |
/// |------------|----------------------------------------------------------------------|
/// | `exact`    | 1 if the normalised answer equals the reference (case, spaces, "."). |
/// | `choice`   | 1 if the answer's choice letter is the reference's                   |
/// | `number`   | 1 if the last number of the answer is the reference's (GSM8K style)  |
/// | `rubric`   | the judge's rating 1-10, averaged over the turns                     |
/// | `pairwise` | 1 win, 0.5 tie, 0 loss against the reference layout, averaged over   |
/// |            | both presentation orders (position swapping)                         |
///
/// `rubric_judge` is the rubric judge as a score function of its own, for topology searches
/// (moa::swarm::dataset_utility, `moa search --utility judge`).

#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "moa/aggregator.hpp"
#include "moa/core/backend.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/eval/dataset.hpp"

namespace moa::eval {

/// @brief The scorers.
enum class scorer_kind : std::uint8_t { exact, choice, number, rubric, pairwise };

constexpr std::string_view to_string(scorer_kind k) noexcept {
  switch (k) {
    case scorer_kind::exact:
      return "exact";
    case scorer_kind::choice:
      return "choice";
    case scorer_kind::number:
      return "number";
    case scorer_kind::rubric:
      return "rubric";
    case scorer_kind::pairwise:
      return "pairwise";
  }
  return "?";
}

inline scorer_kind parse_scorer(std::string_view s) {
  for (auto k : {scorer_kind::exact, scorer_kind::choice, scorer_kind::number, scorer_kind::rubric,
                 scorer_kind::pairwise})
    if (to_string(k) == s) return k;
  MOA_THROW(invalid_argument("unknown scorer \"" + std::string(s) +
                             "\": use exact, choice, number, rubric or pairwise"));
}

/// @brief True for scorers that need a judge model.
constexpr bool needs_judge(scorer_kind k) noexcept {
  return k == scorer_kind::rubric || k == scorer_kind::pairwise;
}

/// @brief Scores an answer against a reference (exact, choice, number); 0 or 1. The extractors
/// are the aggregation policies' (moa/aggregate/policies.hpp), so a vote and its score agree.
inline double score_reference(scorer_kind k, std::string_view answer, std::string_view reference) {
  switch (k) {
    case scorer_kind::exact:
      return whole_answer{}(answer) == whole_answer{}(reference) ? 1.0 : 0.0;
    case scorer_kind::choice: {
      const option_letter letter{.first = 'A', .last = 'J'};
      const auto got = letter(answer);
      return !got.empty() && got == letter(reference) ? 1.0 : 0.0;
    }
    case scorer_kind::number: {
      const auto got = last_number{}(answer);
      return !got.empty() && got == last_number{}(reference) ? 1.0 : 0.0;
    }
    default:
      MOA_THROW(invalid_argument("moa::eval::score_reference: " + std::string(to_string(k)) +
                                 " needs a judge"));
  }
}

/// @brief One exchange of a conversation: what the user said and what the layout answered.
struct exchange {
  std::string_view user;
  std::string_view answer;
};

namespace detail {

inline void append_conversation(std::string& out, std::span<const exchange> turns,
                                std::string_view answer_label) {
  for (std::size_t t = 0; t < turns.size(); ++t) {
    out += "\n[User, turn " + std::to_string(t + 1) + "]\n";
    out += turns[t].user;
    out += "\n[" + std::string(answer_label) + ", turn " + std::to_string(t + 1) + "]\n";
    out += turns[t].answer;
    out += '\n';
  }
}

// The number inside the last "[[...]]" of a reply, if any.
inline std::optional<std::string> last_bracketed(std::string_view reply) {
  const auto close = reply.rfind("]]");
  if (close == std::string_view::npos) return std::nullopt;
  const auto open = reply.rfind("[[", close);
  if (open == std::string_view::npos) return std::nullopt;
  auto inner = reply.substr(open + 2, close - open - 2);
  while (!inner.empty() && inner.front() == ' ') inner.remove_prefix(1);
  while (!inner.empty() && inner.back() == ' ') inner.remove_suffix(1);
  return std::string(inner);
}

}  // namespace detail

/// @brief The rubric a judge rates one answer on (moa's wording; replaceable).
inline constexpr std::string_view default_rubric =
    "Rate how helpful, correct, relevant and clear the assistant's last answer is, considering "
    "the whole conversation. Be strict: a wrong answer is rated low however well it is written, "
    "and length alone earns nothing.";

/// @brief The judge's request for a rubric rating of the last turn of a conversation.
inline std::string rubric_prompt(std::span<const exchange> turns, std::string_view reference,
                                 std::string_view rubric = default_rubric) {
  std::string p =
      "You are an impartial judge of an AI assistant's answer.\n" + std::string(rubric) + "\n";
  if (!reference.empty())
    p += "\n[Reference answer to the last turn]\n" + std::string(reference) + "\n";
  detail::append_conversation(p, turns, "Assistant");
  p += "\nGive a short justification, then your rating from 1 to 10 in double brackets on the "
       "last line, exactly like this: Rating: [[7]]";
  return p;
}

/// @brief The rating in a judge's reply ("Rating: [[7]]"), if it holds one between 1 and 10.
inline std::optional<double> parse_rating(std::string_view reply) {
  const auto inner = detail::last_bracketed(reply);
  if (!inner || inner->empty()) return std::nullopt;
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(*inner, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (used != inner->size() || !(v >= 1.0 && v <= 10.0)) return std::nullopt;
  return v;
}

/// @brief What a rubric_judge has done: shared by its copies, read at any time.
struct judge_tally {
  std::size_t calls = 0;       ///< judge calls made
  std::size_t unrated = 0;     ///< replies holding no [[rating]] from 1 to 10
  std::size_t failed = 0;      ///< calls that threw (endpoint down, timeout, ...)
  std::size_t unanswered = 0;  ///< empty answers, scored 0 without a call
  moa::usage tokens{};         ///< over every call
};

/// @brief The rubric scorer's judge (rubric_prompt and parse_rating, as `moa eval --score rubric`
/// asks it) as a score function in [0, 1] of one answer to its prompt: rating 1 → 0, 10 → 1.
/// Its arguments are those of a moa::swarm::dataset_utility score function that sees the prompt,
/// (answer, reference, prompt), so it is an LLM-judge utility for `moa search`:
///
/// @code{.cpp}
/// moa::eval::rubric_judge judge(moa::config::make_backend(roster.model("qwen")));
/// moa::swarm::dataset_utility quality(data, answerer, judge);   // data: (prompt, reference)
/// auto found = moa::swarm::search_topology(n, quality);
/// auto t = judge.tally();                                      // calls, tokens, failures
/// @endcode
///
/// Unlike `moa eval`, which leaves an item the judge gave no rating out of the score, a judge
/// that fails (the call throws, or the reply holds no rating) scores 0 here: a search compares
/// topologies by their mean over the same items, and a mean over the items the judge happened to
/// rate would reward a topology whose answers make the judge fail. An empty answer (a failed run)
/// scores 0 without a call, as a layout without an answer does in `moa eval`. The judge's request
/// asks for temperature 0 (a roster model's own temperature wins, as it does in `moa eval`).
/// Copies share the judge and the tally; calls may come from several threads at once, as they
/// do to any backend of a search.
class rubric_judge {
 public:
  explicit rubric_judge(any_backend judge, std::string rubric = std::string(default_rubric))
      : state_(std::make_shared<state>(std::move(judge), std::move(rubric))) {
    if (state_->rubric.empty())
      MOA_THROW(invalid_argument("moa::eval::rubric_judge: the rubric is empty"));
  }

  /// The judge's rating (1-10) of `answer` to `prompt`, or nullopt when the call failed or the
  /// reply holds none. `reference` is shown to the judge when not empty.
  [[nodiscard]] std::optional<double> rate(std::string_view prompt, std::string_view answer,
                                           std::string_view reference = {}) const {
    const exchange turn{prompt, answer};
    request r;
    r.messages.push_back({role::user, rubric_prompt({&turn, 1}, reference, state_->rubric)});
    r.sampling.temperature = 0.0;
    response reply;
    try {
      reply = state_->judge.generate(r);
    } catch (const std::exception&) {
      // The search goes on without this rating; the tally reports the failures.
      std::lock_guard lock(state_->mutex);
      ++state_->tally.calls;
      ++state_->tally.failed;
      return std::nullopt;
    }
    const auto rating = parse_rating(reply.text);
    std::lock_guard lock(state_->mutex);
    ++state_->tally.calls;
    state_->tally.tokens += reply.usage;
    if (!rating) ++state_->tally.unrated;
    return rating;
  }

  /// The score of `answer` to `prompt`: (rating - 1) / 9, 0 when there is no rating.
  double operator()(std::string_view answer, std::string_view reference,
                    std::string_view prompt) const {
    if (answer.find_first_not_of(" \t\r\n") == std::string_view::npos) {
      std::lock_guard lock(state_->mutex);
      ++state_->tally.unanswered;
      return 0.0;
    }
    const auto rating = rate(prompt, answer, reference);
    return rating ? (*rating - 1.0) / 9.0 : 0.0;
  }

  [[nodiscard]] judge_tally tally() const {
    std::lock_guard lock(state_->mutex);
    return state_->tally;
  }

 private:
  struct state {
    state(any_backend j, std::string r) : judge(std::move(j)), rubric(std::move(r)) {}
    any_backend judge;
    std::string rubric;
    std::mutex mutex;
    judge_tally tally;
  };
  std::shared_ptr<state> state_;
};

/// @brief The judge's request comparing two assistants' conversations (A shown first).
inline std::string pairwise_prompt(std::span<const exchange> a, std::span<const exchange> b,
                                   std::string_view reference = {}) {
  std::string p =
      "You are an impartial judge. Two AI assistants, A and B, answered the same user. Decide "
      "which answered better: more helpful, correct, relevant and clear. The order in which they "
      "are shown and the length of their answers must not influence you.\n";
  if (!reference.empty())
    p += "\n[Reference answer to the last turn]\n" + std::string(reference) + "\n";
  p += "\n=== Assistant A ===";
  detail::append_conversation(p, a, "Assistant A");
  p += "\n=== Assistant B ===";
  detail::append_conversation(p, b, "Assistant B");
  p += "\nExplain briefly, then give your verdict on the last line: [[A]] if A is better, [[B]] "
       "if B is better, [[C]] for a tie.";
  return p;
}

/// @brief A pairwise verdict: 1 if the first-shown (A) won, 0 if B won, 0.5 for a tie; empty when
/// the reply holds no verdict.
inline std::optional<double> parse_verdict(std::string_view reply) {
  const auto inner = detail::last_bracketed(reply);
  if (!inner) return std::nullopt;
  if (*inner == "A") return 1.0;
  if (*inner == "B") return 0.0;
  if (*inner == "C") return 0.5;
  return std::nullopt;
}

}  // namespace moa::eval
