// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The messages of the ZeroMQ network of processes, and their encoding (JSON through
/// nlohmann-json; a peer is untrusted input, so decoding validates every field and never throws).
///
/// | type      | from -> to        | carries                                                     |
/// |-----------|-------------------|-------------------------------------------------------------|
/// | `call`    | origin -> peer    | prompt, origin, call, layer, role, messages, budget_ms      |
/// | `answer`  | peer -> origin    | prompt, call, status, text, error, usage                    |
/// | `refused` | peer -> origin    | prompt, call (the peer's queue is full)                     |
/// | `ping`    | device -> peers   | nothing more: every message carries its sender and its load |
/// | `submit`  | client -> device  | messages, tag: a prompt born at that device                 |
/// | `result`  | device -> client  | tag, status, text, error, missing, latency_ms, trace [,
/// layout, refusal] | | `stats`   | client <-> device | request; the reply is a `result` whose text
/// is JSON stats   | | `stop`    | client -> device  | the device stops gracefully (see zmq_device)
/// and exits      | | `leaving` | device -> peers   | nothing more: the sender is stopping; treat
/// it as dead now  |
///
/// Every message carries `from` (the sender's device index, or a client's) and `load` (its
/// number of calls in system): load-aware gossip runs on these, and any message is a heartbeat.
/// A device running the adaptive layout policy adds `origin_rate` and `service_ms` to every
/// message to its peers (its own estimates, which the peers check: moa/net/zmq_device.hpp); a
/// result may carry the prompt's `layout` decision, or a typed `refusal`. All four are optional:
/// older senders omit them, older receivers ignore them.

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "moa/core/message.hpp"
#include "moa/core/result.hpp"

namespace moa::net::wire {

enum class kind : std::uint8_t {
  call,
  answer,
  refused,
  ping,
  submit,
  result,
  stats,
  stop,
  leaving
};

constexpr std::string_view to_string(kind k) noexcept {
  constexpr std::string_view names[] = {"call",   "answer", "refused", "ping",   "submit",
                                        "result", "stats",  "stop",    "leaving"};
  return names[static_cast<std::size_t>(k)];
}

/// The most prompts per second a device may say it originates (more is not a number, it is an
/// attack), and the longest mean service time it may claim (ms): larger values are malformed.
inline constexpr double max_reported_rate = 1e7;
inline constexpr double max_reported_service_ms = 1e9;
/// The longest layout reason and explanation a result may carry.
inline constexpr std::size_t max_layout_text = 1024;

/// @brief The layout an origin's adaptive policy chose for a prompt (moa/queueing/adaptive.hpp).
struct layout_note {
  std::uint32_t layers = 0;  ///< M
  std::uint32_t fanout = 0;  ///< k
  std::string reason{};      ///< warming_up, held, upgraded, downgraded, at_smallest, over_capacity
  std::string why{};         ///< one line: the layout, the reason, the bottleneck's utilisation
};

/// @brief One message of the protocol. Fields a type does not use keep their defaults.
struct envelope {
  wire::kind type = kind::ping;
  std::uint32_t from = 0;
  std::uint64_t load = 0;
  std::uint64_t prompt = 0;
  std::uint32_t origin = 0;
  std::uint32_t call = 0;
  std::uint32_t layer = 0;
  call_role role = call_role::proposer;
  std::vector<message> messages{};
  double budget_ms = 0;  ///< call: time the origin still waits for it (0: no deadline)
  call_status status = call_status::ok;
  std::string text{};
  std::string error{};
  std::uint64_t prompt_tokens = 0, completion_tokens = 0;
  std::string tag{};
  std::uint32_t missing = 0;
  double latency_ms = 0;
  /// result: every call of the prompt (call, device, name, layer, role, status, start_ms,
  /// end_ms, error; not the calls' texts). Optional on the wire: absent reads as empty.
  std::vector<call_record> trace{};
  /// Any message from a device with the adaptive policy: the prompts per second born at it (its
  /// own estimate) and its mean service time per call (ms). Absent: not reported.
  std::optional<double> origin_rate{};
  std::optional<double> service_ms{};
  /// result: the layout its origin's adaptive policy chose (absent: the fixed layout).
  std::optional<layout_note> layout{};
  /// result: a refusal's type, e.g. "over_capacity" (admission control); empty: none typed.
  std::string refusal{};
};

/// The most calls a result's trace may list (a plan of 64 layers of 256 devices, and then some).
inline constexpr std::size_t max_trace_calls = 1 << 16;

/// A result's trace as the wire (and `moa submit --format json`) shows it.
/// A result's layout decision as JSON, on the wire and in `moa submit --format json` alike.
inline nlohmann::json layout_json(const layout_note& l) {
  return {{"layers", l.layers}, {"fanout", l.fanout}, {"reason", l.reason}, {"why", l.why}};
}

inline nlohmann::json trace_json(const std::vector<call_record>& trace) {
  auto out = nlohmann::json::array();
  for (const auto& c : trace)
    out.push_back({{"call", c.call},
                   {"device", c.backend},
                   {"name", c.backend_name},
                   {"layer", c.layer},
                   {"role", moa::to_string(c.role)},
                   {"status", moa::to_string(c.status)},
                   {"start_ms", std::chrono::duration<double, std::milli>(c.start).count()},
                   {"end_ms", std::chrono::duration<double, std::milli>(c.end).count()},
                   {"error", c.error}});
  return out;
}

/// A result's status as the wire and the client name it: ok, degraded (an answer, some calls
/// missing) or failed (no answer).
inline std::string_view result_status(const envelope& e) noexcept {
  return e.error.empty() && e.missing == 0 ? "ok" : e.text.empty() ? "failed" : "degraded";
}

inline std::string encode(const envelope& e) {
  nlohmann::json j = {{"type", to_string(e.type)}, {"from", e.from}, {"load", e.load}};
  if (e.origin_rate) j["origin_rate"] = *e.origin_rate;
  if (e.service_ms) j["service_ms"] = *e.service_ms;
  switch (e.type) {
    case kind::call:
      j["messages"] = nlohmann::json::array();
      for (const auto& m : e.messages)
        j["messages"].push_back({{"role", moa::to_string(m.role)}, {"content", m.content}});
      j["layer"] = e.layer;
      j["role"] = moa::to_string(e.role);
      j["budget_ms"] = e.budget_ms;
      [[fallthrough]];
    case kind::answer:
    case kind::refused:
      j["prompt"] = e.prompt;
      j["origin"] = e.origin;
      j["call"] = e.call;
      if (e.type == kind::answer) {
        j["status"] = moa::to_string(e.status);
        j["text"] = e.text;
        j["error"] = e.error;
        j["usage"] = {e.prompt_tokens, e.completion_tokens};
      }
      break;
    case kind::submit:
      j["messages"] = nlohmann::json::array();
      for (const auto& m : e.messages)
        j["messages"].push_back({{"role", moa::to_string(m.role)}, {"content", m.content}});
      j["tag"] = e.tag;
      break;
    case kind::result:
      j["tag"] = e.tag;
      j["status"] = result_status(e);
      j["text"] = e.text;
      j["error"] = e.error;
      j["missing"] = e.missing;
      j["latency_ms"] = e.latency_ms;
      j["trace"] = trace_json(e.trace);
      if (e.layout) j["layout"] = layout_json(*e.layout);
      if (!e.refusal.empty()) j["refusal"] = e.refusal;
      break;
    case kind::ping:
    case kind::stats:
    case kind::stop:
    case kind::leaving:
      break;
  }
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

/// @brief A decoded message, or why the bytes are not one.
struct decoded {
  std::optional<envelope> message;
  std::string error;
};

namespace detail {

template <class T>
bool take(const nlohmann::json& j, const char* key, T& out, std::string& error) {
  const auto it = j.find(key);
  if (it == j.end()) {
    error = std::string("missing field '") + key + "'";
    return false;
  }
  if constexpr (std::is_same_v<T, std::string>) {
    if (!it->is_string()) {
      error = std::string("field '") + key + "' is not a string";
      return false;
    }
    out = it->template get<std::string>();
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!it->is_number()) {
      error = std::string("field '") + key + "' is not a number";
      return false;
    }
    out = it->template get<T>();
    if (!(out >= 0) || out > 1e12) {
      error = std::string("field '") + key + "' is out of range";
      return false;
    }
  } else {
    if (!it->is_number_unsigned() ||
        it->template get<std::uint64_t>() > std::numeric_limits<T>::max()) {
      error = std::string("field '") + key + "' is not an unsigned integer in range";
      return false;
    }
    out = static_cast<T>(it->template get<std::uint64_t>());
  }
  return true;
}

inline bool take_role(const nlohmann::json& j, call_role& out, std::string& error) {
  std::string r;
  if (!take(j, "role", r, error)) return false;
  if (r != "proposer" && r != "aggregator") {
    error = "unknown call role";
    return false;
  }
  out = r == "proposer" ? call_role::proposer : call_role::aggregator;
  return true;
}

inline bool take_status(const nlohmann::json& j, call_status& out, std::string& error) {
  std::string s;
  if (!take(j, "status", s, error)) return false;
  for (int k = 0; k <= int(call_status::skipped); ++k)
    if (s == moa::to_string(call_status(k))) {
      out = call_status(k);
      return true;
    }
  error = "unknown call status";
  return false;
}

inline bool take_ms(const nlohmann::json& j, const char* key, clock::duration& out,
                    std::string& error) {
  double ms = 0;
  if (!take(j, key, ms, error)) return false;
  out = std::chrono::duration_cast<clock::duration>(std::chrono::duration<double, std::milli>(ms));
  return true;
}

// A result's trace: optional; when there, every entry whole and typed.
inline bool take_trace(const nlohmann::json& j, std::vector<call_record>& out, std::string& error) {
  const auto it = j.find("trace");
  if (it == j.end()) return true;
  if (!it->is_array() || it->size() > max_trace_calls) {
    error =
        "field 'trace' is not an array of at most " + std::to_string(max_trace_calls) + " calls";
    return false;
  }
  for (const auto& c : *it) {
    if (!c.is_object()) {
      error = "a trace entry is not an object";
      return false;
    }
    call_record r;
    if (!take(c, "call", r.call, error) || !take(c, "device", r.backend, error) ||
        !take(c, "name", r.backend_name, error) || !take(c, "layer", r.layer, error) ||
        !take_role(c, r.role, error) || !take_status(c, r.status, error) ||
        !take_ms(c, "start_ms", r.start, error) || !take_ms(c, "end_ms", r.end, error) ||
        !take(c, "error", r.error, error))
      return false;
    out.push_back(std::move(r));
  }
  return true;
}

// An optional estimate: absent is fine; present, a number in [0, most].
inline bool take_estimate(const nlohmann::json& j, const char* key, double most,
                          std::optional<double>& out, std::string& error) {
  if (!j.contains(key)) return true;
  double v = 0;
  if (!take(j, key, v, error)) return false;
  if (v > most) {
    error = std::string("field '") + key + "' is out of range";
    return false;
  }
  out = v;
  return true;
}

inline bool take_short(const nlohmann::json& j, const char* key, std::string& out,
                       std::string& error) {
  if (!take(j, key, out, error)) return false;
  if (out.size() > max_layout_text) {
    error = std::string("field '") + key + "' is too long";
    return false;
  }
  return true;
}

// A result's layout and refusal: optional; when there, whole and typed.
inline bool take_layout(const nlohmann::json& j, envelope& e, std::string& error) {
  if (j.contains("refusal") && !take_short(j, "refusal", e.refusal, error)) return false;
  const auto it = j.find("layout");
  if (it == j.end()) return true;
  if (!it->is_object()) {
    error = "field 'layout' is not an object";
    return false;
  }
  layout_note l;
  if (!take(*it, "layers", l.layers, error) || !take(*it, "fanout", l.fanout, error) ||
      !take_short(*it, "reason", l.reason, error) || !take_short(*it, "why", l.why, error))
    return false;
  e.layout = std::move(l);
  return true;
}

inline bool take_messages(const nlohmann::json& j, std::vector<message>& out, std::string& error) {
  const auto it = j.find("messages");
  if (it == j.end() || !it->is_array()) {
    error = "field 'messages' is missing or not an array";
    return false;
  }
  for (const auto& m : *it) {
    if (!m.is_object()) {
      error = "a message is not an object";
      return false;
    }
    std::string r, content;
    if (!take(m, "role", r, error) || !take(m, "content", content, error)) return false;
    message msg;
    if (r == "system")
      msg.role = role::system;
    else if (r == "user")
      msg.role = role::user;
    else if (r == "assistant")
      msg.role = role::assistant;
    else {
      error = "unknown message role '" + r.substr(0, 32) + "'";
      return false;
    }
    msg.content = std::move(content);
    out.push_back(std::move(msg));
  }
  return true;
}

}  // namespace detail

/// @brief Decodes one message; never throws. Unknown fields are ignored (newer senders).
inline decoded decode(std::string_view bytes) {
  decoded out;
  const auto j = nlohmann::json::parse(bytes.begin(), bytes.end(), nullptr, false);
  if (j.is_discarded()) return {std::nullopt, "not JSON (or truncated)"};
  if (!j.is_object()) return {std::nullopt, "not a JSON object"};
  envelope e;
  std::string& err = out.error;
  std::string type;
  if (!detail::take(j, "type", type, err)) return out;
  bool known = false;
  for (int k = 0; k <= int(kind::leaving); ++k)
    if (type == to_string(kind(k))) {
      e.type = kind(k);
      known = true;
    }
  if (!known) return {std::nullopt, "unknown message type '" + type.substr(0, 32) + "'"};
  if (!detail::take(j, "from", e.from, err) || !detail::take(j, "load", e.load, err)) return out;
  if (!detail::take_estimate(j, "origin_rate", max_reported_rate, e.origin_rate, err) ||
      !detail::take_estimate(j, "service_ms", max_reported_service_ms, e.service_ms, err))
    return out;
  const bool per_call = e.type == kind::call || e.type == kind::answer || e.type == kind::refused;
  if (per_call &&
      (!detail::take(j, "prompt", e.prompt, err) || !detail::take(j, "origin", e.origin, err) ||
       !detail::take(j, "call", e.call, err)))
    return out;
  if (e.type == kind::call) {
    if (!detail::take_messages(j, e.messages, err) || !detail::take(j, "layer", e.layer, err) ||
        !detail::take_role(j, e.role, err) || !detail::take(j, "budget_ms", e.budget_ms, err))
      return out;
  }
  if (e.type == kind::answer) {
    if (!detail::take_status(j, e.status, err) || !detail::take(j, "text", e.text, err) ||
        !detail::take(j, "error", e.error, err))
      return out;
    const auto u = j.find("usage");
    if (u == j.end() || !u->is_array() || u->size() != 2 || !(*u)[0].is_number_unsigned() ||
        !(*u)[1].is_number_unsigned())
      return {std::nullopt, "field 'usage' is not a pair of token counts"};
    e.prompt_tokens = (*u)[0].get<std::uint64_t>();
    e.completion_tokens = (*u)[1].get<std::uint64_t>();
  }
  if (e.type == kind::submit &&
      (!detail::take_messages(j, e.messages, err) || !detail::take(j, "tag", e.tag, err)))
    return out;
  if (e.type == kind::result) {
    if (!detail::take(j, "tag", e.tag, err) || !detail::take(j, "text", e.text, err) ||
        !detail::take(j, "error", e.error, err) || !detail::take(j, "missing", e.missing, err) ||
        !detail::take(j, "latency_ms", e.latency_ms, err) || !detail::take_trace(j, e.trace, err) ||
        !detail::take_layout(j, e, err))
      return out;
  }
  out.message = std::move(e);
  return out;
}

}  // namespace moa::net::wire
