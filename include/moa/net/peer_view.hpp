// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// What an origin believes about each device's load: the device's own report, checked against
/// what the origin observes itself. Shared by the in-process network (moa/net/network.hpp) and
/// the ZeroMQ device (moa/net/zmq_device.hpp), through moa::net::origin_run, which opens a
/// ticket when it sends a call and closes it when the call is answered, times out, or is lost.
///
/// Why: least-loaded gossip sends a layer's calls to the devices that say they are least loaded,
/// so a device that lies "load 0" would attract nearly every call, and one that pings but never
/// answers would hold every prompt to the peer deadline. The rule (docs/NETWORK.md, "Loads are
/// checked"): a device's effective load is the largest of
/// - its report, clamped to [0, max_load] (NaN counts as max_load);
/// - the calls this origin has outstanding at it (a lower bound on its queue nobody can lie
///   about);
/// - the queue its response times imply: the EWMA of its observed latencies (answer, or the
///   timeout for a call it let pass) divided by the network's typical service time, minus one;
///   the typical service time is the median over devices of each one's EWMA of
///   latency / (load at send + 1), where the load at send is the larger of its report and the
///   origin's outstanding calls there. A median, so one liar cannot move it. The implied queue
///   fades with a half-life since the device's last observation, so a device the origin stopped
///   using is tried again instead of starved for ever.
/// A device that lets `strikes` calls in a row pass their deadline (an answer saying the deadline
/// passed counts too) is failed for `failed_for`: the origin sends it nothing, whatever it reports.
///
/// Thread-safe (one mutex): the in-process network's prompts of one origin run on many threads.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "moa/core/error.hpp"
#include "moa/net/device.hpp"

namespace moa::net {

/// @brief How far an origin trusts the devices' load reports (see peer_view).
struct peer_view_options {
  double max_load = double(1u << 20);  ///< reports are clamped to [0, max_load]
  double weight = 0.2;                 ///< of a new latency sample in the EWMAs, in (0, 1]
  std::uint32_t strikes = 3;           ///< calls in a row past their deadline that fail a device
  clock::duration failed_for = std::chrono::seconds(1);  ///< how long a failed device is avoided
  clock::duration half_life = std::chrono::seconds(1);   ///< of the latency-implied queue
};

/// @brief One origin's view of every device's load (see the file comment for the rule).
class peer_view {
 public:
  /// What a call carries from its send to its end: when it was sent, and the load it found.
  struct ticket {
    clock::time_point at{};
    double load = 0;
  };

  explicit peer_view(std::uint32_t devices, peer_view_options opt = {})
      : opt_(opt), peers_(devices) {
    if (!(opt_.weight > 0 && opt_.weight <= 1))
      MOA_THROW(invalid_argument("moa::net::peer_view: weight must be in (0, 1]"));
    if (!(opt_.max_load >= 0))
      MOA_THROW(invalid_argument("moa::net::peer_view: max_load must be at least 0"));
    if (opt_.strikes == 0)
      MOA_THROW(invalid_argument("moa::net::peer_view: strikes must be at least 1"));
    if (opt_.half_life <= clock::duration::zero())
      MOA_THROW(invalid_argument("moa::net::peer_view: half_life must be positive"));
  }

  [[nodiscard]] std::uint32_t devices() const noexcept { return std::uint32_t(peers_.size()); }
  [[nodiscard]] const peer_view_options& options() const noexcept { return opt_; }

  /// Device d says its load is `load` (clamped).
  void report(std::uint32_t d, double load) {
    std::lock_guard lock(m_);
    peers_.at(d).reported = clamp(load);
  }

  /// A call goes to d now; close the ticket with answered, missed or released.
  ticket sent(std::uint32_t d, clock::time_point now) {
    std::lock_guard lock(m_);
    auto& p = peers_.at(d);
    const ticket t{now, std::max(p.reported, double(p.outstanding))};
    ++p.outstanding;
    return t;
  }

  /// d answered the call of ticket t at `now` (any status: it answered).
  void answered(std::uint32_t d, const ticket& t, clock::time_point now) {
    std::lock_guard lock(m_);
    auto& p = close(d);
    p.strikes = 0;
    const double latency = seconds(now - t.at);
    observe(p, latency, now);
    const double service = latency / (t.load + 1);
    p.service = p.has_service ? mix(p.service, service) : service;
    p.has_service = true;
    typical_ = median_service();
  }

  /// d let the call of ticket t pass its deadline (noticed at `now`). True when this failed d.
  bool missed(std::uint32_t d, const ticket& t, clock::time_point now) {
    std::lock_guard lock(m_);
    auto& p = close(d);
    observe(p, seconds(now - t.at), now);
    if (++p.strikes < opt_.strikes) return false;
    p.strikes = 0;
    p.failed_until = now + opt_.failed_for;
    return true;
  }

  /// The call of a ticket to d ended without telling anything about d (refused, lost with it,
  /// or its prompt ended first).
  void released(std::uint32_t d) {
    std::lock_guard lock(m_);
    (void)close(d);
  }

  /// Whether d is failed (let `strikes` calls in a row pass their deadline) at `now`.
  [[nodiscard]] bool failed(std::uint32_t d, clock::time_point now) const {
    std::lock_guard lock(m_);
    return now < peers_.at(d).failed_until;
  }

  /// d's effective load at `now`: the largest of its clamped report, the calls outstanding at it
  /// and the queue its latencies imply.
  [[nodiscard]] double load(std::uint32_t d, clock::time_point now) const {
    std::lock_guard lock(m_);
    const auto& p = peers_.at(d);
    return std::max({p.reported, double(p.outstanding), implied(p, now)});
  }

  /// The parts of d's effective load, for metrics and tests; `latency` (the EWMA of its calls'
  /// latencies) and `service` (of latency / (load at send + 1)) in seconds, 0 before any.
  struct parts {
    double reported = 0, outstanding = 0, implied = 0, latency = 0, service = 0;
  };
  [[nodiscard]] parts explain(std::uint32_t d, clock::time_point now) const {
    std::lock_guard lock(m_);
    const auto& p = peers_.at(d);
    return {p.reported, double(p.outstanding), implied(p, now), p.latency,
            p.has_service ? p.service : 0.0};
  }

 private:
  struct peer {
    double reported = 0;
    std::size_t outstanding = 0;
    double latency = 0;  // EWMA, seconds
    bool has_latency = false;
    double service = 0;  // EWMA of latency / (load at send + 1), seconds
    bool has_service = false;
    clock::time_point seen{};
    std::uint32_t strikes = 0;
    clock::time_point failed_until = clock::time_point::min();
  };

  static double seconds(clock::duration d) {
    return std::max(0.0, std::chrono::duration<double>(d).count());
  }
  double clamp(double x) const {
    if (std::isnan(x)) return opt_.max_load;
    return std::clamp(x, 0.0, opt_.max_load);
  }
  double mix(double old, double sample) const {
    return opt_.weight * sample + (1 - opt_.weight) * old;
  }
  peer& close(std::uint32_t d) {
    auto& p = peers_.at(d);
    if (p.outstanding > 0) --p.outstanding;
    return p;
  }
  void observe(peer& p, double latency, clock::time_point now) {
    p.latency = p.has_latency ? mix(p.latency, latency) : latency;
    p.has_latency = true;
    p.seen = now;
  }
  double median_service() {
    scratch_.clear();
    for (const auto& p : peers_)
      if (p.has_service) scratch_.push_back(p.service);
    if (scratch_.empty()) return 0;
    const auto mid = scratch_.begin() + std::ptrdiff_t(scratch_.size() / 2);
    std::nth_element(scratch_.begin(), mid, scratch_.end());
    return *mid;
  }
  double implied(const peer& p, clock::time_point now) const {
    if (!p.has_latency || !(typical_ > 0)) return 0;
    const double queue = std::min(std::max(0.0, p.latency / typical_ - 1), opt_.max_load);
    const double age = seconds(now - p.seen) / seconds(opt_.half_life);
    return queue * std::exp2(-age);
  }

  peer_view_options opt_;
  std::vector<peer> peers_;
  double typical_ = 0;  // median service time over devices, seconds
  std::vector<double> scratch_;
  mutable std::mutex m_;
};

}  // namespace moa::net
