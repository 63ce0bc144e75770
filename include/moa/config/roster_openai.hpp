// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Backends from a roster: OpenAI-compatible endpoints (libcurl + nlohmann-json) and the
/// synthetic models. Kept apart from moa/config/roster.hpp so reading a roster needs no libcurl.

#include <utility>

#include "moa/backends/openai.hpp"
#include "moa/config/roster.hpp"

namespace moa::config {

/// @brief The openai_options of a roster model, with the environment resolved as the OpenAI
/// clients resolve it ($OPENAI_BASE_URL, $OPENAI_API_KEY).
inline openai_options to_openai_options(const model_spec& m, const env_lookup& env = process_env) {
  openai_options o;
  o.base_url = resolved_endpoint(m, env);
  o.model = m.model;
  o.api_key = m.api_key;
  o.api_key_env = resolved_key_env(m);
  o.name = m.name;
  if (m.timeout.count() > 0) o.timeout = m.timeout;  // 0: the backend's default
  o.retry.max_attempts = m.retries + 1;
  o.extra = {{"max_tokens", m.max_tokens}, {"temperature", m.temperature}};
  return o;
}

/// @brief The backend of a roster model, whatever its kind.
/// A kind "device" model needs ZeroMQ: moa/config/roster_device.hpp's make_device_backend.
inline any_backend make_backend(const model_spec& m) {
  if (m.kind == "synthetic") return any_backend(make_synthetic(m));
  if (m.kind == "device")
    MOA_THROW(config_error("model \"" + m.name +
                           "\" is a device network: its backend needs ZeroMQ "
                           "(moa/config/roster_device.hpp, make_device_backend)"));
  return any_backend(openai_backend(to_openai_options(m)));
}

}  // namespace moa::config
