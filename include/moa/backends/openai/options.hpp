// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Settings of the OpenAI-compatible HTTP backend (moa/backends/openai.hpp): where it posts, how
/// it retries, and the limits a slow or hostile server meets (docs/HTTP.md, "Limits").

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace moa {

/// @brief When and how often a failed call is tried again.
///
/// Retried: no connection (refused, reset, DNS), HTTP 429 and 5xx, a stream that broke before
/// its first token. Never retried: other 4xx (the request is wrong; repeating it cannot help), a
/// context-length error, a stream that already delivered tokens (they reached the callback).
/// The wait before attempt n+1 is `min(max_backoff, initial_backoff * multiplier^(n-1))`, of
/// which a random fraction up to `jitter` is taken off (so that clients that failed together do
/// not retry together), and at least the server's `Retry-After`. No wait passes the request's
/// deadline: the last error is thrown instead.
struct retry_policy {
  int max_attempts = 3;  ///< attempts in all, the first included; 1 disables retries
  std::chrono::milliseconds initial_backoff{200};
  std::chrono::milliseconds max_backoff{5000};
  double multiplier = 2.0;
  double jitter = 0.5;  ///< in [0, 1]
  /// A longer Retry-After is not waited for: the error is thrown at once.
  std::chrono::milliseconds max_retry_after{30000};

  /// The wait after `attempt` failed attempts (attempt >= 1), for a uniform draw `u` in [0, 1).
  [[nodiscard]] std::chrono::nanoseconds backoff(int attempt, double u) const noexcept {
    double d = static_cast<double>(std::chrono::nanoseconds(initial_backoff).count());
    const double cap = static_cast<double>(std::chrono::nanoseconds(max_backoff).count());
    for (int i = 1; i < attempt && d < cap; ++i) d *= multiplier;
    d = std::min(d, cap);
    d *= 1.0 - std::clamp(jitter, 0.0, 1.0) * std::clamp(u, 0.0, 1.0);
    return std::chrono::nanoseconds(static_cast<std::int64_t>(d));
  }
};

/// @brief Settings of an openai_backend.
struct openai_options {
  /// Up to and including the API version: moa posts to `{base_url}/chat/completions`.
  std::string base_url = "http://127.0.0.1:8080/v1";
  std::string model{};    ///< sent as `model`; omitted when empty (llama.cpp serves one model)
  std::string api_key{};  ///< sent as `Authorization: Bearer ...`; empty: read api_key_env
  /// The environment variable holding the key when api_key is empty (nothing sent if unset).
  std::string api_key_env = "OPENAI_API_KEY";
  std::string name{};  ///< the name in traces; empty: the model, else the base URL
  retry_policy retry{};
  std::chrono::milliseconds connect_timeout{10000};
  /// The longest a call may take, retries and their waits included, when the request's own
  /// deadline is later or absent: a server that accepts and then says nothing cannot hang the
  /// caller. 0 means no limit but the request's deadline (explicitly unlimited).
  std::chrono::milliseconds timeout{300000};
  /// Merged into every request body last (JSON merge patch): server-specific parameters such as
  /// `{"ignore_eos": true, "top_k": 40}`, or overrides of moa's (`null` removes a field).
  nlohmann::json extra = nlohmann::json::object();
  bool stream_usage = true;  ///< ask streams for a final usage chunk (stream_options.include_usage)
  /// A larger answer is an error (http_failure::too_large), whether whole or streamed: what a
  /// stream delivered counts in full, so an endless stream ends at this many bytes.
  std::size_t max_response_bytes = std::size_t{64} << 20;
  std::vector<std::string> headers{};  ///< extra HTTP headers, "Name: value"
};

}  // namespace moa
