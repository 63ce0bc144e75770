// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The adaptive layout policy (moa/queueing/adaptive.hpp) on the in-process network: one policy
/// per network, behind a mutex, fed by network_options::choose_layout (each prompt's decision,
/// in the network's time units since the run started) and network_options::on_service (every
/// call's service time). The same policy object as the simulator's; only the clock differs.
///
/// @code{.cpp}
/// moa::net::network_options opt{.layers = 2};
/// moa::queueing::adaptive_config cfg;
/// cfg.devices = 4;
/// cfg.prior_service = {1.0, 1.0, 1.0, 3.0};  // in time units
/// auto policy = moa::net::use_adaptive(opt, cfg);
/// moa::net::network net(models, moa::uniform_gossip{2}, opt);
/// auto report = net.run(arrivals);       // report.refused, each record's `layout`
/// auto counts = policy->snapshot();      // prompts per allowed layout, refusals, changes
/// @endcode
///
/// And on a ZeroMQ device (moa/net/zmq_device.hpp), one policy per origin process, in ms:
/// @code{.cpp}
/// moa::net::zmq_device_options opt;  // index, addresses, keys...
/// opt.adaptive = moa::net::adaptive_origin(cfg, opt.index);  // cfg.devices = the network's size
/// @endcode

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "moa/net/layout_policy.hpp"
#include "moa/net/network.hpp"
#include "moa/queueing/adaptive.hpp"

namespace moa::net {

/// @brief An adaptive_policy shared by a network's threads.
class shared_adaptive_policy {
 public:
  explicit shared_adaptive_policy(queueing::adaptive_config cfg) : policy_(std::move(cfg)) {}

  layout_choice choose(std::uint32_t origin, double now) {
    const std::lock_guard lock(mutex_);
    const queueing::layout_decision d = policy_.decide(origin, now);
    return {d.admitted, d.layers, d.fanout, d.why()};
  }

  void observe(std::uint32_t device, double duration) {
    const std::lock_guard lock(mutex_);
    policy_.observe_service(device, duration);
  }

  /// What the policy counted so far.
  struct counts {
    std::vector<std::uint64_t> admitted;  ///< per allowed layout
    std::uint64_t refused = 0;
    std::uint64_t changes = 0;
  };
  [[nodiscard]] counts snapshot() const {
    const std::lock_guard lock(mutex_);
    const auto a = policy_.admitted();
    return {{a.begin(), a.end()}, policy_.refused(), policy_.changes()};
  }

 private:
  mutable std::mutex mutex_;
  queueing::adaptive_policy policy_;
};

/// @brief Sets `opt.choose_layout` and `opt.on_service` to one adaptive policy built from `cfg`
/// (times in the network's time units) and returns it, to read its counts.
inline std::shared_ptr<shared_adaptive_policy> use_adaptive(network_options& opt,
                                                            queueing::adaptive_config cfg) {
  auto policy = std::make_shared<shared_adaptive_policy>(std::move(cfg));
  opt.choose_layout = [policy](std::uint32_t origin, double now) {
    return policy->choose(origin, now);
  };
  opt.on_service = [policy](std::uint32_t device, double duration) {
    policy->observe(device, duration);
  };
  return policy;
}

/// @brief The adaptive policy at one origin of a ZeroMQ network (origin_layout_policy): it sees
/// only the prompts born at its device and the calls its device serves, so the other origins'
/// rates and the other devices' service times come from their reports (gossiped, checked by the
/// device: docs/ADAPTIVE.md). Until a device reports, its prior service time stands.
class adaptive_origin_policy final : public origin_layout_policy {
 public:
  adaptive_origin_policy(queueing::adaptive_config cfg, std::uint32_t origin)
      : policy_(std::move(cfg)), origin_(origin), reported_(policy_.config().devices, 0.0) {
    if (origin_ >= policy_.config().devices)
      MOA_THROW(invalid_argument("moa::net::adaptive_origin_policy: origin " +
                                 std::to_string(origin_) + " of a " +
                                 std::to_string(policy_.config().devices) + "-device network"));
  }

  [[nodiscard]] std::uint32_t devices() const override {
    return std::uint32_t(policy_.config().devices);
  }
  [[nodiscard]] std::uint32_t origin() const override { return origin_; }
  [[nodiscard]] std::vector<std::pair<std::uint32_t, std::uint32_t>> layouts() const override {
    std::vector<std::pair<std::uint32_t, std::uint32_t>> out;
    for (const auto& l : policy_.config().allowed) out.emplace_back(l.layers, l.fanout);
    return out;
  }
  layout_verdict decide(double now_ms) override {
    const std::lock_guard lock(mutex_);
    const queueing::layout_decision d = policy_.decide(origin_, now_ms);
    return {d.admitted, d.layers, d.fanout, std::string(queueing::to_string(d.reason)), d.why()};
  }
  void observe_service(double ms) override {
    const std::lock_guard lock(mutex_);
    policy_.observe_service(origin_, ms);
  }
  void report_rate(std::uint32_t d, double per_ms) override {
    if (d == origin_ || d >= reported_.size()) return;  // its own rate it counts itself
    const std::lock_guard lock(mutex_);
    reported_[d] = per_ms;
    policy_.report_arrival_rate(d, per_ms);
  }
  void report_service(std::uint32_t d, double ms) override {
    if (d == origin_) return;  // its own service time it measures itself
    const std::lock_guard lock(mutex_);
    policy_.report_service(d, ms);
  }
  [[nodiscard]] std::pair<double, double> own(double now_ms) const override {
    const std::lock_guard lock(mutex_);
    return {policy_.rate_estimate(origin_, now_ms), policy_.service_means()[origin_]};
  }
  [[nodiscard]] std::pair<std::vector<double>, std::vector<double>> estimates(
      double now_ms) const override {
    const std::lock_guard lock(mutex_);
    std::vector<double> rates = reported_;
    rates[origin_] = policy_.rate_estimate(origin_, now_ms);
    const auto s = policy_.service_means();
    return {std::move(rates), {s.begin(), s.end()}};
  }
  [[nodiscard]] layout_counts counts() const override {
    const std::lock_guard lock(mutex_);
    layout_counts c;
    const auto& allowed = policy_.config().allowed;
    for (std::size_t i = 0; i < allowed.size(); ++i) {
      const auto name = std::to_string(allowed[i].layers) + "x" + std::to_string(allowed[i].fanout);
      const auto same = std::find_if(c.admitted.begin(), c.admitted.end(),
                                     [&name](const auto& e) { return e.first == name; });
      if (same == c.admitted.end())
        c.admitted.emplace_back(name, policy_.admitted()[i]);
      else
        same->second += policy_.admitted()[i];
    }
    c.refused = policy_.refused();
    c.changes = policy_.changes();
    return c;
  }

 private:
  mutable std::mutex mutex_;
  queueing::adaptive_policy policy_;
  std::uint32_t origin_;
  std::vector<double> reported_;  // the other origins' rates as reported, per ms
};

/// @brief The adaptive policy for a ZeroMQ device's `zmq_device_options::adaptive` (times in
/// ms; `cfg.devices` the network's size, `origin` the device's index).
inline std::shared_ptr<origin_layout_policy> adaptive_origin(queueing::adaptive_config cfg,
                                                             std::uint32_t origin) {
  return std::make_shared<adaptive_origin_policy>(std::move(cfg), origin);
}

}  // namespace moa::net
