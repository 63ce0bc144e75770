// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Parsing a judge's reply: which of the numbered answers it chose, or ranked, or why the reply
/// is invalid. A judge's reply is never guessed at. Part of moa/aggregate/policies.hpp.

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

#include "moa/aggregate/extractors.hpp"
#include "moa/core/error.hpp"

namespace moa {

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

}  // namespace moa
