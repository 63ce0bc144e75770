// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// What the simulator takes (sim_config) and what it gives back (run_result).

#include <cstddef>
#include <cstdint>
#include <vector>

#include "moa/queueing/service.hpp"

namespace moa::queueing {

/// @brief What to simulate: arrivals, service times, run length and what to record.
///
/// @code{.cpp}
/// moa::queueing::sim_config cfg;
/// cfg.lambda = {0.1, 0.1, 0.2, 0.05};
/// cfg.service = {moa::queueing::service_model::lognormal(1.0, 0.5)};
/// cfg.aggregator_service = {moa::queueing::service_model::lognormal(1.5, 0.5)};
/// @endcode
struct sim_config {
  std::size_t devices = 0;     ///< n; 0 takes lambda.size()
  std::vector<double> lambda;  ///< Poisson prompt rate per user (0 = silent user)
  std::vector<arrival> trace;  ///< if not empty, replayed instead of Poisson (sorted by time)
  std::vector<service_model> service;             ///< one for all devices, or one per device
  std::vector<service_model> aggregator_service;  ///< for aggregator calls; empty = `service`
  double horizon = 1e4;                           ///< virtual time at which the run stops
  double warmup = 0;                              ///< statistics restart at this time
  std::uint64_t seed = 1;                         ///< replication r uses mix_seed(seed, r)
  std::size_t batches = 32;  ///< batch means for the instability detector, 4 to 4096
  double sample_period = 0;  ///< > 0: record every device's number in system this often
  std::size_t max_backlog = std::size_t{1} << 22;  ///< calls in system before giving up
};

/// @brief Per-device figures over the measured window.
struct device_result {
  double mean_queue = 0;   ///< time-average number in system (queue + in service)
  double utilisation = 0;  ///< fraction of time busy
  double throughput = 0;   ///< calls completed per unit time
  double growth_rate = 0;  ///< slope of the outstanding calls owed by the device (per unit time)
  /// Measured offered load: work arriving per unit time (busy time plus the change in the work
  /// queued, over the window). Below 1 in a stable network; it estimates rho_j.
  double offered_load = 0;
  std::uint64_t completed = 0;
};

/// @brief Number in system of every device at regular times (row-major: time x device).
struct time_series {
  std::size_t devices = 0;
  std::vector<double> time;
  std::vector<std::uint32_t> queue;
};

/// @brief The figures of one simulation run.
///
/// @code{.cpp}
/// auto r = moa::queueing::simulate(cfg, source);
/// if (!r.stable) std::cout << "backlog grows by " << r.growth_rate << " calls per unit time\n";
/// @endcode
struct run_result {
  std::vector<device_result> devices;
  double mean_latency = 0;
  double p50 = 0, p95 = 0, p99 = 0;
  double throughput = 0;      ///< prompts completed per unit time
  std::uint64_t prompts = 0;  ///< prompts completed in the window
  std::uint64_t events = 0;   ///< arrivals + completions processed (whole run)
  double window = 0;          ///< measured time (end - warm-up)
  /// What the run shows: `unstable` when the outstanding calls grow linearly and some device's
  /// measured offered load is at least 1 (or max_backlog was hit); `inconclusive` when not, but
  /// some device's offered load is not significantly below 1 (rho >= 1, or a run too short to
  /// tell); `stable` otherwise. docs/QUEUEING.md gives the measured error rates.
  enum class finding : std::uint8_t { stable, inconclusive, unstable };
  finding verdict = finding::stable;
  bool stable = true;             ///< verdict == stable: rho >= 1 is never reported stable
  bool truncated = false;         ///< stopped early at max_backlog
  double offered_load = 0;        ///< the largest device offered load (see device_result)
  double offered_load_upper = 0;  ///< its one-sided upper confidence bound (batch means)
  double growth_rate = 0;         ///< slope of all outstanding calls (per unit time)
  double growth_t = 0;            ///< its t statistic over batch means
  time_series series;
};

}  // namespace moa::queueing
