// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Input checks shared by the queueing headers. Every message names the offending value and says
/// what to give instead, because these functions sit behind CLI options and JSON files.

#include <cmath>
#include <cstddef>
#include <string>

#include "moa/core/error.hpp"

namespace moa::queueing::detail {

[[noreturn]] inline void fail(const std::string& what) {
  MOA_THROW(moa::invalid_argument("moa::queueing: " + what));
}

inline std::string indexed(const char* name, std::size_t i) {
  return std::string(name) + "[" + std::to_string(i) + "]";
}

inline std::string number(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::string s = std::to_string(v);
  // to_string prints six decimals; trim the zeros so messages read "0.5", not "0.500000".
  if (s.find('.') != std::string::npos) {
    while (!s.empty() && s.back() == '0') s.pop_back();
    if (!s.empty() && s.back() == '.') s.pop_back();
  }
  return s;
}

/// Throws unless v is finite and > 0. `what` names the quantity, `fix` says what to give.
constexpr void require_positive(double v, const char* what, const char* fix) {
  if (!(v > 0.0) || !(v < HUGE_VAL))  // also rejects NaN and +inf
    fail(std::string(what) + " = " + number(v) + " must be positive and finite; " + fix);
}
inline void require_positive(double v, const std::string& what, const char* fix) {
  if (!(v > 0.0) || !(v < HUGE_VAL))
    fail(what + " = " + number(v) + " must be positive and finite; " + fix);
}

constexpr void require_fanout(std::size_t k, std::size_t n) {
  if (n == 0) fail("a network needs at least one device (n = 0)");
  if (k > n - 1)
    fail("gossip fan-out k = " + std::to_string(k) + " is larger than the " +
         std::to_string(n - 1) + " other devices; use k <= n - 1");
}

}  // namespace moa::queueing::detail
