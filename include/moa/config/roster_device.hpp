// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The backend of a roster model of kind "device": a ZeroMQ device network reached through one
/// of its devices (moa/net/zmq_client.hpp). Kept apart from moa/config/roster.hpp so rosters
/// need no ZeroMQ unless they name a device.
///
/// @code{.json}
/// "models": {
///   "edge": {"kind": "device", "endpoint": "tcp://10.0.0.7:5550", "timeout_ms": 120000,
///            "key_file": "client.key", "server_key_file": "device0.pub"}
/// }
/// @endcode
///
/// Key files are read when the backend is made (relative paths are beside the roster file);
/// a missing, unreadable or group-readable secret key is a config_error naming the model's key.

#include <chrono>
#include <exception>
#include <string>

#include "moa/config/roster.hpp"
#include "moa/net/zmq_client.hpp"
#include "moa/net/zmq_security.hpp"

namespace moa::config {

/// A call to a device waits this long when the roster gives no timeout_ms: a gossip MoA of
/// several layers of real models takes minutes, not the seconds of one model's call.
inline constexpr std::chrono::minutes default_device_timeout{10};

/// @brief The client options of a kind "device" model, its keys loaded and checked.
inline net::zmq_client_options to_client_options(const model_spec& m) {
  if (m.kind != "device")
    MOA_THROW(config_error("model \"" + m.name + "\" is not of kind \"device\""));
  net::zmq_client_options o;
  o.device = m.endpoint;
  o.insecure_plaintext = m.insecure_plaintext;
  const std::string at = "roster: models." + m.name + ".";
  try {
    if (!m.insecure_plaintext) {
      o.keys = net::load_key_pair(m.key_file);
      const auto server = net::load_public_keys(m.server_key_file);
      if (server.size() != 1)
        MOA_THROW(config_error(at + "server_key_file: '" + m.server_key_file + "' holds " +
                               std::to_string(server.size()) +
                               " keys; give the device's own NAME.pub"));
      o.server_key = server[0];
    }
  } catch (const config_error&) {
    throw;
  } catch (const std::exception& e) {
    MOA_THROW(config_error(at + (o.keys ? "server_key_file" : "key_file") + ": " + e.what()));
  }
  return o;
}

/// @brief The backend of a kind "device" model.
inline net::device_backend make_device_backend(const model_spec& m) {
  auto o = to_client_options(m);
  const auto timeout = m.timeout.count() > 0
                           ? std::chrono::duration_cast<clock::duration>(m.timeout)
                           : std::chrono::duration_cast<clock::duration>(default_device_timeout);
  try {
    return net::device_backend(std::move(o), timeout, m.name);
  } catch (const invalid_argument& e) {
    MOA_THROW(config_error("roster: models." + m.name + ".endpoint: " + e.what()));
  }
}

}  // namespace moa::config
