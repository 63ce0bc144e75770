// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// CSV export of simulation results, written by hand (no dependency): the per-device time series
/// and a per-device summary, both with a header row, ready for gnuplot or a spreadsheet.
///
/// @code{.cpp}
/// cfg.sample_period = 10;
/// auto r = moa::queueing::simulate(cfg, source);
/// std::ofstream out("queues.csv");
/// moa::queueing::write_series_csv(out, r.series);  // time,device0,device1,...
/// @endcode

#include <cstddef>
#include <ostream>

#include "moa/queueing/simulator.hpp"

namespace moa::queueing {

/// @brief One row per sample: `time,device0,...,device{n-1}` (number in system).
inline void write_series_csv(std::ostream& out, const time_series& s) {
  out << "time";
  for (std::size_t d = 0; d < s.devices; ++d) out << ",device" << d;
  out << '\n';
  for (std::size_t i = 0; i < s.time.size(); ++i) {
    out << s.time[i];
    for (std::size_t d = 0; d < s.devices; ++d) out << ',' << s.queue[i * s.devices + d];
    out << '\n';
  }
}

/// @brief One row per device: `device,mean_queue,utilisation,throughput,growth_rate,completed`.
inline void write_devices_csv(std::ostream& out, const run_result& r) {
  out << "device,mean_queue,utilisation,throughput,growth_rate,completed\n";
  for (std::size_t d = 0; d < r.devices.size(); ++d) {
    const auto& x = r.devices[d];
    out << d << ',' << x.mean_queue << ',' << x.utilisation << ',' << x.throughput << ','
        << x.growth_rate << ',' << x.completed << '\n';
  }
}

}  // namespace moa::queueing
