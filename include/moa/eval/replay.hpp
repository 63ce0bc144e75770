// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The Distributed MoA experiment from measured times: replay N prompts through a gossip network
/// of n devices whose inference times were measured per device and per layer, for each (M, k)
/// configuration, and tabulate the mean latency and the average queue size.
///
/// The experiment is *transient*: N prompts arrive (at recorded times, or Poisson per user), every
/// call runs, and the figures are taken over the whole run, from time 0 to the last completion —
/// not a steady state, which is what moa::queueing::simulate estimates.
///
/// Protocol, as the paper's (and moa::net::network's): a prompt born at device o is answered in
/// each of M layers by o and k distinct peers drawn uniformly from the other devices (afresh per
/// layer), each call of layer m + 1 queued once every call of layer m has finished, then
/// aggregated at o. With M = 0 the origin answers alone (one call). Each device serves its calls
/// one at a time, first come first served.
///
/// Service times are replayed, not drawn: prompt j's call on device d in layer m takes the
/// measured time `layers[m][j mod count]` of that device (the aggregation: `aggregate[j mod
/// count]`), so prompt j stands for the j-th measured prompt, as when measured times of a small
/// prompt set are replayed.
///
/// Definitions (docs/EVAL.md):
/// - **mean latency**: the mean over the N prompts of (completion of its aggregation − arrival);
/// - **average queue size**: per device, the time average over [0, end of the last prompt] of the
///   number of calls at the device — waiting *and* in service — then the mean over devices. It is
///   neither the M/M/1 waiting queue L_q (which excludes the call in service) nor a steady-state
///   mean number in system: it includes the ramp-up and the drain of a finite run.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <fstream>
#include <functional>
#include <iomanip>
#include <ostream>
#include <queue>
#include <span>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "moa/core/error.hpp"
#include "moa/core/random.hpp"
#include "moa/queueing/service.hpp"

namespace moa::eval {

/// @brief Measured inference times of one device.
struct measured_device {
  std::string name{};
  std::vector<std::vector<double>> layers{};  ///< [layer][prompt]: proposal times per layer
  std::vector<double> aggregate{};            ///< [prompt]: aggregation times
};

/// @brief Measured times of every device, and optionally recorded arrivals.
struct measured_times {
  std::vector<measured_device> devices{};
  std::vector<queueing::arrival> arrivals{};  ///< optional; replaces Poisson arrivals
  std::string unit = "s";
};

/// @brief One configuration of the experiment.
struct replay_config {
  std::size_t layers = 0;  ///< M
  std::size_t peers = 0;   ///< k
};

/// @brief One row of the table.
struct replay_row {
  replay_config config{};
  std::size_t calls_per_prompt = 0;  ///< (k + 1) M + 1
  double mean_latency = 0;
  double max_latency = 0;
  double average_queue_size = 0;
  std::vector<double> device_queue_size{};  ///< per device, same definition
  double makespan = 0;                      ///< end of the last prompt
};

/// @brief Reads a measured-times file (JSON); every fault names the key and the allowed values.
///
/// @code{.json}
/// {"unit": "s",
///  "devices": [{"name": "jetson-0", "layers": [[2.1, 1.9], [2.3, 2.0]], "aggregate": [2.9, 3.1]},
///              {"name": "jetson-1", "layers": [[4.0, 3.2], [4.4, 3.5]], "aggregate": [5.0, 4.1]}],
///  "arrivals": [{"time": 0, "origin": 0}, {"time": 1.5, "origin": 1}]}
/// @endcode
inline measured_times parse_measured_times(const nlohmann::json& j, const std::string& source) {
  auto fail = [&](const std::string& what) { MOA_THROW(invalid_argument(source + ": " + what)); };
  if (!j.is_object()) fail("expected a JSON object with \"devices\"");
  for (auto it = j.begin(); it != j.end(); ++it)
    if (it.key() != "devices" && it.key() != "arrivals" && it.key() != "unit")
      fail(it.key() + " is not a known key (known: devices, arrivals, unit)");
  measured_times out;
  if (j.contains("unit")) {
    if (!j["unit"].is_string()) fail("unit must be a string");
    out.unit = j["unit"];
  }
  auto times = [&](const nlohmann::json& v, const std::string& path) {
    if (!v.is_array() || v.empty()) fail(path + " must be a non-empty list of times");
    std::vector<double> t;
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_number() || !(v[i].get<double>() > 0) || !std::isfinite(v[i].get<double>()))
        fail(path + "[" + std::to_string(i) + "] must be a finite time > 0");
      t.push_back(v[i].get<double>());
    }
    return t;
  };
  const auto devices = j.find("devices");
  if (devices == j.end() || !devices->is_array() || devices->size() < 1)
    fail("devices must be a non-empty list of {name, layers, aggregate}");
  for (std::size_t d = 0; d < devices->size(); ++d) {
    const auto& v = (*devices)[d];
    const auto path = "devices[" + std::to_string(d) + "]";
    if (!v.is_object()) fail(path + " must be an object");
    for (auto it = v.begin(); it != v.end(); ++it)
      if (it.key() != "name" && it.key() != "layers" && it.key() != "aggregate")
        fail(path + "." + it.key() + " is not a known key (known: name, layers, aggregate)");
    measured_device dev;
    dev.name = v.value("name", "device" + std::to_string(d));
    if (!v.contains("layers") || !v["layers"].is_array())
      fail(path + ".layers must be a list of layers, each a list of times");
    for (std::size_t m = 0; m < v["layers"].size(); ++m)
      dev.layers.push_back(times(v["layers"][m], path + ".layers[" + std::to_string(m) + "]"));
    if (!v.contains("aggregate")) fail(path + ".aggregate is missing (aggregation times)");
    dev.aggregate = times(v["aggregate"], path + ".aggregate");
    if (d > 0 && dev.layers.size() != out.devices[0].layers.size())
      fail(path + ".layers has " + std::to_string(dev.layers.size()) + " layers, devices[0] has " +
           std::to_string(out.devices[0].layers.size()) + "; measure every device on every layer");
    out.devices.push_back(std::move(dev));
  }
  if (const auto a = j.find("arrivals"); a != j.end()) {
    if (!a->is_array()) fail("arrivals must be a list of {time, origin}");
    for (std::size_t i = 0; i < a->size(); ++i) {
      const auto& v = (*a)[i];
      const auto path = "arrivals[" + std::to_string(i) + "]";
      if (!v.is_object() || !v.contains("time") || !v["time"].is_number() ||
          !v.contains("origin") || !v["origin"].is_number_unsigned())
        fail(path + " must be {\"time\": t >= 0, \"origin\": device index}");
      const double t = v["time"];
      const auto o = v["origin"].get<std::uint64_t>();
      if (!(t >= 0) || !std::isfinite(t) || (i > 0 && t < out.arrivals.back().time))
        fail(path + ".time must be finite, >= 0 and not before the previous arrival");
      if (o >= out.devices.size())
        fail(path + ".origin = " + std::to_string(o) + " names no device (there are " +
             std::to_string(out.devices.size()) + ")");
      out.arrivals.push_back({t, std::uint32_t(o)});
    }
  }
  return out;
}

/// @brief Reads a measured-times file.
inline measured_times load_measured_times(const std::string& path) {
  std::ifstream in(path);
  if (!in) MOA_THROW(invalid_argument(path + ": cannot open"));
  auto j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) MOA_THROW(invalid_argument(path + ": not valid JSON"));
  return parse_measured_times(j, path);
}

/// @brief `prompts` Poisson arrivals at `rate` per user (each device a user), seeded.
inline std::vector<queueing::arrival> poisson_arrivals(std::size_t devices, double rate,
                                                       std::size_t prompts, std::uint64_t seed) {
  if (!(rate > 0) || !std::isfinite(rate))
    MOA_THROW(invalid_argument("the arrival rate per user must be finite and > 0"));
  if (devices == 0) MOA_THROW(invalid_argument("no devices"));
  rng random(seed);
  std::vector<queueing::arrival> out;
  double t = 0;
  for (std::size_t i = 0; i < prompts; ++i) {
    // The merged stream of n users is Poisson at n * rate, each arrival's user uniform.
    t += -std::log(1.0 - random.uniform()) / (rate * double(devices));
    out.push_back({t, std::uint32_t(random.below(devices))});
  }
  return out;
}

/// @brief Replays `arrivals` through the network for one configuration.
inline replay_row replay(const measured_times& times, std::span<const queueing::arrival> arrivals,
                         replay_config config, std::uint64_t seed = 1) {
  const std::size_t n = times.devices.size();
  if (n == 0) MOA_THROW(invalid_argument("replay: no devices"));
  if (arrivals.empty()) MOA_THROW(invalid_argument("replay: no prompts"));
  if (config.layers > times.devices[0].layers.size())
    MOA_THROW(invalid_argument("replay: M = " + std::to_string(config.layers) + " layers, but " +
                               std::to_string(times.devices[0].layers.size()) +
                               " were measured; measure more layers or lower M"));
  if (config.peers > n - 1)
    MOA_THROW(invalid_argument("replay: k = " + std::to_string(config.peers) +
                               " peers is more than the " + std::to_string(n - 1) +
                               " other devices"));
  if (config.layers == 0 && config.peers != 0)
    MOA_THROW(invalid_argument("replay: with M = 0 the origin answers alone; k must be 0"));
  for (const auto& a : arrivals)
    if (a.origin >= n) MOA_THROW(invalid_argument("replay: an arrival names no device"));

  struct call {
    std::size_t prompt;
    double service;
  };
  struct prompt_state {
    std::size_t layer = 0;    // 1..M proposals, M + 1 aggregation
    std::size_t pending = 0;  // calls of the layer not finished
    double done = 0;
  };
  struct device_state {
    std::deque<call> queue;  // the first is in service when busy
    bool busy = false;
    double area = 0, last = 0;
  };
  std::vector<prompt_state> prompts(arrivals.size());
  std::vector<device_state> dev(n);
  // Events: (time, sequence, kind, index): arrivals of prompt i, completions at device d. The
  // sequence orders simultaneous events as they were scheduled, so the replay is deterministic.
  using event = std::tuple<double, std::uint64_t, int, std::size_t>;
  std::priority_queue<event, std::vector<event>, std::greater<>> events;
  std::uint64_t sequence = 0;
  for (std::size_t i = 0; i < arrivals.size(); ++i)
    events.emplace(arrivals[i].time, sequence++, 0, i);

  auto account = [&](device_state& d, double now) {
    d.area += double(d.queue.size()) * (now - d.last);
    d.last = now;
  };
  auto start_next = [&](std::size_t d, double now) {
    auto& s = dev[d];
    if (s.busy || s.queue.empty()) return;
    s.busy = true;
    events.emplace(now + s.queue.front().service, sequence++, 1, d);
  };
  auto enqueue = [&](std::size_t d, std::size_t p, double service, double now) {
    account(dev[d], now);
    dev[d].queue.push_back({p, service});
    start_next(d, now);
  };
  // Queues the calls of prompt p's current layer.
  auto issue_layer = [&](std::size_t p, double now) {
    auto& ps = prompts[p];
    const auto origin = arrivals[p].origin;
    if (ps.layer > config.layers) {
      const auto& agg = times.devices[origin].aggregate;
      ps.pending = 1;
      enqueue(origin, p, agg[p % agg.size()], now);
      return;
    }
    // The origin and k distinct peers, drawn afresh for this prompt and layer.
    rng random(mix_seed(mix_seed(seed, p), ps.layer));
    std::vector<std::size_t> others;
    for (std::size_t d = 0; d < n; ++d)
      if (d != origin) others.push_back(d);
    for (std::size_t i = 0; i < config.peers; ++i)
      std::swap(others[i], others[i + random.below(others.size() - i)]);
    ps.pending = config.peers + 1;
    auto run_on = [&](std::size_t d) {
      const auto& t = times.devices[d].layers[ps.layer - 1];
      enqueue(d, p, t[p % t.size()], now);
    };
    run_on(origin);
    for (std::size_t i = 0; i < config.peers; ++i) run_on(others[i]);
  };

  double end = 0;
  while (!events.empty()) {
    const auto [now, seq, kind, index] = events.top();
    events.pop();
    (void)seq;
    if (kind == 0) {
      prompts[index].layer = 1;
      issue_layer(index, now);
      continue;
    }
    auto& s = dev[index];
    account(s, now);
    const auto p = s.queue.front().prompt;
    s.queue.pop_front();
    s.busy = false;
    start_next(index, now);
    if (--prompts[p].pending == 0) {
      if (prompts[p].layer == config.layers + 1) {
        prompts[p].done = now;
        end = std::max(end, now);
      } else {
        ++prompts[p].layer;
        issue_layer(p, now);
      }
    }
  }

  replay_row row;
  row.config = config;
  row.calls_per_prompt = (config.peers + 1) * config.layers + 1;
  row.makespan = end;
  for (std::size_t p = 0; p < prompts.size(); ++p) {
    const double latency = prompts[p].done - arrivals[p].time;
    row.mean_latency += latency / double(prompts.size());
    row.max_latency = std::max(row.max_latency, latency);
  }
  for (auto& d : dev) {
    account(d, end);
    const double q = end > 0 ? d.area / end : 0.0;
    row.device_queue_size.push_back(q);
    row.average_queue_size += q / double(n);
  }
  return row;
}

/// @brief The paper's table: one row per configuration.
inline std::vector<replay_row> replay_table(const measured_times& times,
                                            std::span<const queueing::arrival> arrivals,
                                            std::span<const replay_config> configs,
                                            std::uint64_t seed = 1) {
  std::vector<replay_row> rows;
  for (const auto& c : configs) rows.push_back(replay(times, arrivals, c, seed));
  return rows;
}

/// @brief Prints the table with its definitions.
inline void print_replay_table(std::ostream& os, const std::vector<replay_row>& rows,
                               std::size_t prompts, const std::string& unit) {
  const auto flags = os.flags();
  const auto precision = os.precision();
  os << "Distributed MoA, transient replay of " << prompts
     << " prompts from measured inference times\n"
     << std::left << std::setw(6) << "M" << std::setw(6) << "k" << std::right << std::setw(8)
     << "calls" << std::setw(18) << ("mean latency " + unit) << std::setw(18)
     << ("max latency " + unit) << std::setw(18) << "avg queue size" << std::setw(14)
     << ("makespan " + unit) << '\n';
  for (const auto& r : rows)
    os << std::left << std::setw(6) << r.config.layers << std::setw(6) << r.config.peers
       << std::right << std::setw(8) << r.calls_per_prompt << std::fixed << std::setprecision(3)
       << std::setw(18) << r.mean_latency << std::setw(18) << r.max_latency << std::setw(18)
       << r.average_queue_size << std::setw(14) << r.makespan << '\n';
  os << "mean latency: mean over prompts of (end of its aggregation - its arrival).\n"
        "avg queue size: per device, the time average over [0, makespan] of the calls at the "
        "device,\n  waiting and in service, then the mean over devices; not the M/M/1 waiting "
        "queue Lq,\n  and not a steady state: the ramp-up and drain of the finite run are "
        "included.\n";
  os.flags(flags);
  os.precision(precision);
}

}  // namespace moa::eval
