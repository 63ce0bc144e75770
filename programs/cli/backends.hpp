// SPDX-License-Identifier: MIT
#pragma once

// model_backend: the one way the programs turn a roster model into a backend, whatever its kind and
// whatever this build links: synthetic models always; "openai" endpoints with libcurl
// (MOA_CLI_OPENAI); "device" networks with ZeroMQ (MOA_CLI_ZMQ). A kind this build lacks is bad
// input (exit 2), named with what the build is missing.

#include <string>

#include <moa/backends/synthetic.hpp>
#include <moa/config/roster.hpp>
#include <moa/core/backend.hpp>
#include <moa/core/error.hpp>

#if MOA_CLI_OPENAI
#include <moa/config/roster_openai.hpp>
#endif
#if MOA_CLI_ZMQ
#include <moa/config/roster_device.hpp>
#endif

namespace moa::cli {

/// Throws config_error when this build cannot call models of `m`'s kind.
inline void require_backend_of(const moa::config::model_spec& m) {
  const auto missing = [&](const char* library) {
    MOA_THROW(moa::config::config_error("model \"" + m.name + "\" is of kind \"" + m.kind +
                                        "\", and this program was built without " + library));
  };
#if !MOA_CLI_OPENAI
  if (m.kind == "openai") missing("libcurl (the HTTP backend)");
#endif
#if !MOA_CLI_ZMQ
  if (m.kind == "device") missing("ZeroMQ (cppzmq)");
#endif
  (void)missing;
}

/// The backend of a roster model.
inline moa::any_backend model_backend(const moa::config::model_spec& m) {
  require_backend_of(m);
#if MOA_CLI_ZMQ
  if (m.kind == "device") return moa::any_backend(moa::config::make_device_backend(m));
#endif
#if MOA_CLI_OPENAI
  return moa::config::make_backend(m);
#else
  return moa::any_backend(moa::config::make_synthetic(m));
#endif
}

}  // namespace moa::cli
