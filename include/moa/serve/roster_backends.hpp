// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The backend factory of moa::serve for rosters with OpenAI-compatible endpoints (libcurl +
/// nlohmann-json). Kept apart from moa/serve/openai_server.hpp so a server of synthetic models
/// needs no libcurl.

#include "moa/backends/openai.hpp"
#include "moa/config/roster_openai.hpp"
#include "moa/serve/openai_server.hpp"

namespace moa::serve {

/// @brief Every roster model, whatever its kind. OpenAI endpoints are called asynchronously (one
/// curl_multi I/O thread for all calls), so a run waiting on a model holds no thread.
inline model_handle roster_backends(const config::model_spec& m) {
  if (m.kind == "synthetic") return hold(config::make_synthetic(m), m.name);
  return hold(openai_backend(config::to_openai_options(m)), m.name);
}

}  // namespace moa::serve
