// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Input checks shared by the queueing headers. Every message names the offending value and says
/// what to give instead, because these functions sit behind CLI options and JSON files.

#include <cmath>
#include <cstddef>
#include <string>

#include "moa/core/error.hpp"
#include "moa/core/workload.hpp"
#include "moa/topology/check.hpp"

namespace moa::queueing::detail {

[[noreturn]] inline void fail(const std::string& what) {
  MOA_THROW(moa::invalid_argument("moa::queueing: " + what));
}

inline std::string indexed(const char* name, std::size_t i) {
  return std::string(name) + "[" + std::to_string(i) + "]";
}

using moa::detail::number;

/// Throws unless v is finite and > 0. `what` names the quantity, `fix` says what to give.
constexpr void require_positive(double v, const char* what, const char* fix) {
  if (!(v > 0.0) || !(v < HUGE_VAL))  // also rejects NaN and +inf
    fail(std::string(what) + " = " + number(v) + " must be positive and finite; " + fix);
}
inline void require_positive(double v, const std::string& what, const char* fix) {
  if (!(v > 0.0) || !(v < HUGE_VAL))
    fail(what + " = " + number(v) + " must be positive and finite; " + fix);
}

/// The most devices the simulator and the dense-matrix analysis take, checked before anything is
/// allocated (a device costs the simulator 128 bytes; the O(n) closed forms take any n).
inline constexpr std::size_t max_devices = std::size_t{1} << 24;
/// The most calls one prompt's plan may make in the simulator ((k + 1) M + 1 for gossip).
inline constexpr std::size_t max_plan_calls = std::size_t{1} << 20;

/// The fan-out check of every topology (moa::check_fanout), so a bad k throws the same
/// moa::topology_error here as in the topologies and the networks.
constexpr void require_fanout(std::size_t k, std::size_t n) {
  if (const topology_check c = check_fanout(k, n); !c.ok()) moa::require(c);
}

}  // namespace moa::queueing::detail
