// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// JSON export of simulation results and stability reports. The only queueing header that needs
/// nlohmann-json, so the others stay free of optional dependencies.
///
/// @code{.cpp}
/// #include <moa/queueing/json.hpp>
/// std::cout << moa::queueing::to_json(moa::queueing::simulate(cfg, source)).dump(2);
/// @endcode

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstddef>

#include "moa/queueing/simulator.hpp"
#include "moa/queueing/stability.hpp"

namespace moa::queueing {

namespace detail {
// JSON has no inf or nan: write null, which readers take as "no value".
inline nlohmann::json finite_or_null(double x) {
  return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr);
}
}  // namespace detail

/// @brief A run as JSON: summary, per-device figures and, if recorded, the time series.
inline nlohmann::json to_json(const run_result& r) {
  using detail::finite_or_null;
  nlohmann::json devices = nlohmann::json::array();
  for (const auto& d : r.devices)
    devices.push_back({{"mean_queue", finite_or_null(d.mean_queue)},
                       {"utilisation", finite_or_null(d.utilisation)},
                       {"throughput", finite_or_null(d.throughput)},
                       {"growth_rate", finite_or_null(d.growth_rate)},
                       {"offered_load", finite_or_null(d.offered_load)},
                       {"completed", d.completed}});
  const char* verdict = r.verdict == run_result::finding::stable         ? "stable"
                        : r.verdict == run_result::finding::inconclusive ? "inconclusive"
                                                                         : "unstable";
  nlohmann::json j = {{"stable", r.stable},
                      {"verdict", verdict},
                      {"offered_load", finite_or_null(r.offered_load)},
                      {"offered_load_upper", finite_or_null(r.offered_load_upper)},
                      {"truncated", r.truncated},
                      {"growth_rate", finite_or_null(r.growth_rate)},
                      {"mean_latency", finite_or_null(r.mean_latency)},
                      {"p50", finite_or_null(r.p50)},
                      {"p95", finite_or_null(r.p95)},
                      {"p99", finite_or_null(r.p99)},
                      {"throughput", finite_or_null(r.throughput)},
                      {"prompts", r.prompts},
                      {"events", r.events},
                      {"window", r.window},
                      {"devices", devices}};
  if (!r.series.time.empty()) {
    nlohmann::json rows = nlohmann::json::array();
    for (std::size_t i = 0; i < r.series.time.size(); ++i) {
      nlohmann::json row = {{"time", r.series.time[i]}};
      nlohmann::json q = nlohmann::json::array();
      for (std::size_t d = 0; d < r.series.devices; ++d)
        q.push_back(r.series.queue[i * r.series.devices + d]);
      row["queue"] = q;
      rows.push_back(row);
    }
    j["series"] = rows;
  }
  return j;
}

/// @brief A stability report as JSON.
inline nlohmann::json to_json(const stability_report& r) {
  nlohmann::json arrival = nlohmann::json::array(), rho = nlohmann::json::array();
  for (Eigen::Index i = 0; i < r.arrival.size(); ++i) {
    arrival.push_back(r.arrival(i));
    rho.push_back(r.utilisation(i));
  }
  return {{"stable", r.stable},         {"max_utilisation", r.max_utilisation},
          {"margin", r.margin},         {"max_scale", detail::finite_or_null(r.max_scale)},
          {"bottleneck", r.bottleneck}, {"arrival", arrival},
          {"utilisation", rho}};
}

}  // namespace moa::queueing
