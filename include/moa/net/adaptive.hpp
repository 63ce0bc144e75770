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

#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

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

}  // namespace moa::net
