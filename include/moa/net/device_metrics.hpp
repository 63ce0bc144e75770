// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// An operator's view of one ZeroMQ device: a snapshot of its counters (taken on the device's I/O
/// thread, read by any thread), rendered as Prometheus text (format 0.0.4) for GET /metrics and
/// judged for GET /health. The HTTP side is moa/serve/status_endpoint.hpp; `moa device --metrics`
/// joins them. Metric names and the health rule are in docs/NETWORK.md ("Metrics and health").

#include <array>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace moa::net {

/// @brief Latencies of the prompts born at a device, in Prometheus histogram buckets (seconds).
struct latency_histogram {
  static constexpr std::array<double, 12> bounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                    0.1,   0.25,   0.5,   1.0,  2.5,   10.0};
  std::array<std::uint64_t, bounds.size()> counts{};  ///< cumulative: at most bounds[i]
  std::uint64_t count = 0;
  double sum = 0;

  void add(double seconds) {
    ++count;
    sum += seconds;
    for (std::size_t i = 0; i < bounds.size(); ++i)
      if (seconds <= bounds[i]) ++counts[i];
  }
};

/// @brief What a device's origin believes of one device (itself included).
struct peer_snapshot {
  bool alive = true;
  double effective = 0;    ///< the load gossip uses (moa::net::peer_view)
  double reported = 0;     ///< its own report, clamped
  double outstanding = 0;  ///< calls this origin has there
  double implied = 0;      ///< the queue its latencies imply
};

/// @brief One device's counters at one moment.
struct device_snapshot {
  std::uint32_t device = 0;
  bool running = false;  ///< serving (after bind, before the drain)
  bool stopping = false;
  std::size_t queued = 0;     ///< calls in this device's queue or service
  std::size_t in_flight = 0;  ///< prompts born here, not yet answered
  double utilisation = 0;     ///< time-average fraction of its servers busy
  std::uint64_t submitted = 0, complete = 0, degraded = 0, failed = 0, refused = 0;
  std::uint64_t over_capacity = 0;  ///< of the refused, by the adaptive policy's admission
  std::uint64_t served = 0;         ///< calls served here (its own and its peers')
  std::uint64_t refusals = 0, reroutes = 0, timeouts = 0, lost = 0;
  std::uint64_t malformed = 0, dropped = 0, expired = 0;
  std::uint64_t dead_peers = 0;  ///< peers declared dead (or failed), over the run
  std::vector<peer_snapshot> peers;
  latency_histogram latency;

  [[nodiscard]] std::size_t peers_alive() const noexcept {
    std::size_t n = 0;
    for (std::size_t j = 0; j < peers.size(); ++j) n += j != device && peers[j].alive ? 1 : 0;
    return n;
  }
};

/// @brief The snapshot as Prometheus text (format 0.0.4), every series labelled with the device.
inline std::string render_prometheus(const device_snapshot& s) {
  std::ostringstream os;
  const std::string dev = "device=\"" + std::to_string(s.device) + "\"";
  const auto metric = [&](const char* name, const char* type, const char* help) {
    os << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
  };
  const auto one = [&](const char* name, const char* type, const char* help, auto value) {
    metric(name, type, help);
    os << name << '{' << dev << "} " << value << '\n';
  };
  one("moa_device_up", "gauge", "1 while the device serves, 0 once it is stopping.",
      s.running && !s.stopping ? 1 : 0);
  one("moa_device_queue_length", "gauge", "Calls in the device's queue or in service.", s.queued);
  one("moa_device_utilisation", "gauge", "Time-average fraction of the device's servers busy.",
      s.utilisation);
  one("moa_device_prompts_in_flight", "gauge", "Prompts born here and not yet answered.",
      s.in_flight);
  metric("moa_device_prompts_total", "counter",
         "Prompts submitted here, by outcome (submitted = every submit; refused ones end there; "
         "over_capacity: those of the refused the adaptive policy turned away).");
  for (const auto& [what, n] : {std::pair{"submitted", s.submitted},
                                {"complete", s.complete},
                                {"degraded", s.degraded},
                                {"failed", s.failed},
                                {"refused", s.refused},
                                {"over_capacity", s.over_capacity}})
    os << "moa_device_prompts_total{" << dev << ",outcome=\"" << what << "\"} " << n << '\n';
  one("moa_device_calls_served_total", "counter", "Calls served by this device's model.", s.served);
  metric("moa_device_call_events_total", "counter",
         "This device's calls as origin: refused by a full queue, re-routed, timed out, lost.");
  for (const auto& [what, n] : {std::pair{"refused", s.refusals},
                                {"rerouted", s.reroutes},
                                {"timed_out", s.timeouts},
                                {"lost", s.lost}})
    os << "moa_device_call_events_total{" << dev << ",event=\"" << what << "\"} " << n << '\n';
  metric("moa_device_drops_total", "counter",
         "Messages or calls dropped, by reason: malformed, not allowed (ids, origins, answers "
         "from the wrong device), expired (deadline passed in the queue).");
  for (const auto& [what, n] :
       {std::pair{"malformed", s.malformed}, {"not_allowed", s.dropped}, {"expired", s.expired}})
    os << "moa_device_drops_total{" << dev << ",reason=\"" << what << "\"} " << n << '\n';
  one("moa_device_dead_peers_total", "counter", "Peers declared dead or failed.", s.dead_peers);
  one("moa_device_peers_alive", "gauge", "Peers this device considers alive now.", s.peers_alive());
  metric("moa_device_peer_load", "gauge",
         "What this device, as origin, believes of each device's load: the effective load "
         "gossip uses and its parts (reported, outstanding, implied by latency).");
  for (std::size_t j = 0; j < s.peers.size(); ++j) {
    const auto& p = s.peers[j];
    for (const auto& [what, v] : {std::pair{"effective", p.effective},
                                  {"reported", p.reported},
                                  {"outstanding", p.outstanding},
                                  {"implied", p.implied}})
      os << "moa_device_peer_load{" << dev << ",peer=\"" << j << "\",kind=\"" << what << "\"} " << v
         << '\n';
  }
  metric("moa_device_prompt_latency_seconds", "histogram",
         "Latency of the prompts born here, submit to result (answered or failed).");
  for (std::size_t i = 0; i < latency_histogram::bounds.size(); ++i)
    os << "moa_device_prompt_latency_seconds_bucket{" << dev << ",le=\""
       << latency_histogram::bounds[i] << "\"} " << s.latency.counts[i] << '\n';
  os << "moa_device_prompt_latency_seconds_bucket{" << dev << ",le=\"+Inf\"} " << s.latency.count
     << '\n'
     << "moa_device_prompt_latency_seconds_sum{" << dev << "} " << s.latency.sum << '\n'
     << "moa_device_prompt_latency_seconds_count{" << dev << "} " << s.latency.count << '\n';
  return os.str();
}

/// @brief GET /health: 200 while the device serves and reaches at least one peer; 503 before it
/// serves, while it stops, or when every peer is dead (its prompts could only run alone). The
/// body is JSON: `{"status": "ok"|"starting"|"stopping"|"isolated", ...}`.
inline std::pair<unsigned, std::string> health(const device_snapshot& s) {
  const char* status = s.stopping             ? "stopping"
                       : !s.running           ? "starting"
                       : s.peers_alive() == 0 ? "isolated"
                                              : "ok";
  const bool ok = std::string(status) == "ok";
  std::string body = "{\"status\":\"" + std::string(status) +
                     "\",\"device\":" + std::to_string(s.device) +
                     ",\"peers_alive\":" + std::to_string(s.peers_alive()) +
                     ",\"in_flight\":" + std::to_string(s.in_flight) +
                     ",\"queued\":" + std::to_string(s.queued) + "}";
  return {ok ? 200u : 503u, std::move(body)};
}

}  // namespace moa::net
