// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// One checker for topology invariants, used by compile-time topologies (as static_asserts that
/// name the offending index) and by runtime topologies (as topology_error with a message that
/// says what to change).

#include <cstddef>
#include <span>
#include <string>

#include "moa/core/error.hpp"

namespace moa {

enum class topology_fault {
  none,
  no_proposers,           ///< a layer lists no proposer
  duplicate_proposer,     ///< a layer lists the same backend twice
  proposer_out_of_range,  ///< a proposer index >= number of backends
  aggregator_out_of_range,
  fanout_too_large,  ///< gossip k > n - 1
  no_devices,
};

/// @brief Outcome of a check: which fault, in which layer (1-based), for which index, against
/// which limit.
struct topology_check {
  topology_fault fault = topology_fault::none;
  std::size_t layer = 0;
  std::size_t index = 0;
  std::size_t limit = 0;
  [[nodiscard]] constexpr bool ok() const noexcept { return fault == topology_fault::none; }
};

/// @brief Checks one layer's proposer list against `backends` backends.
constexpr topology_check check_layer(std::span<const std::size_t> proposers, std::size_t layer,
                                     std::size_t backends) noexcept {
  if (proposers.empty()) return {topology_fault::no_proposers, layer, 0, backends};
  for (std::size_t i = 0; i < proposers.size(); ++i) {
    if (proposers[i] >= backends)
      return {topology_fault::proposer_out_of_range, layer, proposers[i], backends};
    for (std::size_t j = 0; j < i; ++j)
      if (proposers[j] == proposers[i])
        return {topology_fault::duplicate_proposer, layer, proposers[i], backends};
  }
  return {};
}

constexpr topology_check check_aggregator(std::size_t aggregator, std::size_t backends) noexcept {
  if (aggregator >= backends)
    return {topology_fault::aggregator_out_of_range, 0, aggregator, backends};
  return {};
}

/// @brief Checks a gossip fan-out: k peers must exist among the other n - 1 devices.
constexpr topology_check check_fanout(std::size_t k, std::size_t devices) noexcept {
  if (devices == 0) return {topology_fault::no_devices, 0, 0, 0};
  if (k > devices - 1) return {topology_fault::fanout_too_large, 0, k, devices - 1};
  return {};
}

/// @brief The message a runtime topology throws for a failed check.
inline std::string describe(const topology_check& c) {
  const auto layer = std::to_string(c.layer);
  const auto index = std::to_string(c.index);
  const auto limit = std::to_string(c.limit);
  switch (c.fault) {
    case topology_fault::none:
      return "no fault";
    case topology_fault::no_proposers:
      return "moa: layer " + layer + " has no proposers; give every layer at least one backend";
    case topology_fault::duplicate_proposer:
      return "moa: layer " + layer + " lists backend " + index +
             " twice; a backend proposes at most once per layer";
    case topology_fault::proposer_out_of_range:
      return "moa: layer " + layer + " lists proposer " + index + ", but only " + limit +
             " backends are given (valid indices are 0 to " +
             (c.limit ? std::to_string(c.limit - 1) : std::string("none")) + ")";
    case topology_fault::aggregator_out_of_range:
      return "moa: the aggregator is backend " + index + ", but only " + limit +
             " backends are given";
    case topology_fault::fanout_too_large:
      return "moa: gossip fan-out k = " + index + " is larger than the " + limit +
             " other devices; use k <= n - 1";
    case topology_fault::no_devices:
      return "moa: a network needs at least one device";
  }
  return "moa: unknown topology fault";
}

/// @brief Throws topology_error if `c` is a fault.
inline void require(const topology_check& c) {
  if (!c.ok()) MOA_THROW(topology_error(describe(c)));
}

namespace detail {

// Instantiated only when a compile-time check fails: the template arguments in the compiler's
// "required from" line name the layer, the index and the limit, which a static_assert message
// cannot carry in C++20.
template <std::size_t Layer, std::size_t Index, std::size_t Backends>
struct proposer_index_out_of_range {
  static_assert(Index < Backends,
                "moa: proposer index out of range for the backend pack; see the template "
                "arguments <layer, index, number of backends> below");
};
template <std::size_t Layer, std::size_t Index>
struct duplicate_proposer_in_layer {
  static_assert(Layer == 0 && Layer == 1,
                "moa: duplicate proposer in a layer; each backend proposes at most once per "
                "layer (see <layer, index> below)");
};
template <std::size_t Layer>
struct layer_without_proposers {
  static_assert(Layer == 0 && Layer == 1,
                "moa: a layer has zero proposers; list at least one backend index in "
                "moa::proposers<...>");
};
template <std::size_t Index, std::size_t Backends>
struct aggregator_index_out_of_range {
  static_assert(Index < Backends,
                "moa: aggregator index out of range for the backend pack (see <index, number of "
                "backends> below)");
};
template <std::size_t K, std::size_t Others>
struct gossip_fanout_too_large {
  static_assert(K <= Others,
                "moa: gossip fan-out k is larger than n-1, the number of other devices (see <k, "
                "n-1> below)");
};

/// Turns a failed check into the compile error of its fault; a no-op when `C.ok()`.
template <topology_check C>
constexpr void static_require() noexcept {
  if constexpr (C.fault == topology_fault::no_proposers)
    (void)sizeof(layer_without_proposers<C.layer>);
  else if constexpr (C.fault == topology_fault::duplicate_proposer)
    (void)sizeof(duplicate_proposer_in_layer<C.layer, C.index>);
  else if constexpr (C.fault == topology_fault::proposer_out_of_range)
    (void)sizeof(proposer_index_out_of_range<C.layer, C.index, C.limit>);
  else if constexpr (C.fault == topology_fault::aggregator_out_of_range)
    (void)sizeof(aggregator_index_out_of_range<C.index, C.limit>);
  else if constexpr (C.fault == topology_fault::fanout_too_large)
    (void)sizeof(gossip_fanout_too_large<C.index, C.limit>);
  else if constexpr (C.fault == topology_fault::no_devices)
    static_assert(C.fault != topology_fault::no_devices,
                  "moa: a network needs at least one device");
}

}  // namespace detail
}  // namespace moa
