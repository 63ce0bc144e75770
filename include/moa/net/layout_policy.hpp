// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// What a ZeroMQ device (moa/net/zmq_device.hpp) asks of a layout policy at the origin: each
/// prompt's (M, k) or its refusal, fed by the device's own service times and by its peers'
/// (checked) reports. An interface, so that moa::net stays free of the queueing component's
/// dependencies (Eigen): moa/net/adaptive.hpp implements it with moa::queueing::adaptive_policy
/// (`moa::net::adaptive_origin`), the same policy as the simulator's and the in-process network's.
///
/// Implementations are thread-safe: the device decides, reports and reads estimates on its I/O
/// thread and records service times from its workers. Times are milliseconds since the device
/// started; rates are per millisecond.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace moa::net {

/// @brief A prompt's layout, or its refusal, as a layout policy decided it.
struct layout_verdict {
  bool admitted = true;
  std::uint32_t layers = 0;  ///< M
  std::uint32_t fanout = 0;  ///< k
  std::string reason{};      ///< e.g. held, downgraded, over_capacity
  std::string why{};         ///< one line for the prompt's trace
};

/// @brief What the policy counted, for a device's stats.
struct layout_counts {
  std::vector<std::pair<std::string, std::uint64_t>> admitted;  ///< per allowed layout, "MxK"
  std::uint64_t refused = 0;
  std::uint64_t changes = 0;
};

/// @brief A layout policy at one origin device (see the file comment).
class origin_layout_policy {
 public:
  virtual ~origin_layout_policy() = default;
  /// The devices of the network it models, and this origin's index.
  [[nodiscard]] virtual std::uint32_t devices() const = 0;
  [[nodiscard]] virtual std::uint32_t origin() const = 0;
  /// The allowed layouts (M, k): a peer's calls may name any layer and call of the largest.
  [[nodiscard]] virtual std::vector<std::pair<std::uint32_t, std::uint32_t>> layouts() const = 0;
  /// The layout of a prompt born at `now_ms`, or its refusal.
  virtual layout_verdict decide(double now_ms) = 0;
  /// One call this device served took `ms`.
  virtual void observe_service(double ms) = 0;
  /// Device d's own estimates, as the device checked them: its origin's prompt rate (per ms) and
  /// its mean service time (ms, > 0).
  virtual void report_rate(std::uint32_t d, double per_ms) = 0;
  virtual void report_service(std::uint32_t d, double ms) = 0;
  /// This origin's estimates of itself at `now_ms`, to gossip: {prompts per ms, service ms}.
  [[nodiscard]] virtual std::pair<double, double> own(double now_ms) const = 0;
  /// Every device's estimates the next decision uses: rates per ms, service times in ms.
  [[nodiscard]] virtual std::pair<std::vector<double>, std::vector<double>> estimates(
      double now_ms) const = 0;
  [[nodiscard]] virtual layout_counts counts() const = 0;
};

}  // namespace moa::net
