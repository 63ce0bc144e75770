// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Answer extractors, for voting and moderators: what an answer says, as a key that equal
/// answers share. Part of the policy catalogue (moa/aggregate/policies.hpp).

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

#include "moa/core/error.hpp"

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

}  // namespace moa
