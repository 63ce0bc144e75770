// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Typed errors of the OpenAI-compatible HTTP backend (moa/backends/openai.hpp).
///
/// Every way a call to an endpoint can fail becomes an http_error carrying what a person needs to
/// act on it: the kind of failure, the HTTP status (0 when there was no HTTP answer), the server's
/// own message, the request id (the `x-request-id` header, else the completion id) and how many
/// attempts were made. A prompt longer than the model's context is a context_length_error, so a
/// caller can trim and retry. A call that passes its deadline throws moa::timeout_error and a
/// cancelled one moa::cancelled_error, so that executors classify them as such.
///
/// @code{.cpp}
/// try {
///   auto r = backend.generate(req);
/// } catch (const moa::context_length_error& e) {
///   // shorten the prompt: e.server_message() says by how much
/// } catch (const moa::http_error& e) {
///   std::cerr << e.what() << " (status " << e.status() << ", id " << e.request_id() << ")\n";
/// }
/// @endcode

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "moa/core/error.hpp"

namespace moa {

/// @brief What went wrong with an HTTP call.
enum class http_failure : std::uint8_t {
  connection,      ///< no HTTP answer: refused, reset, DNS, TLS (retried)
  status,          ///< a non-2xx status (429 and 5xx retried, other 4xx not)
  context_length,  ///< the prompt does not fit the model's context (a 400; see
                   ///< context_length_error)
  malformed_json,  ///< the body is not the JSON it should be
  missing_field,   ///< the JSON lacks a field moa needs (choices[0].message.content, ...)
  empty_choices,   ///< `choices` is empty: the server answered nothing
  stream_cut,      ///< the event stream ended before `[DONE]` or a finish reason
  too_large,       ///< the body exceeded openai_options::max_response_bytes
};

constexpr std::string_view to_string(http_failure f) noexcept {
  switch (f) {
    case http_failure::connection:
      return "connection";
    case http_failure::status:
      return "status";
    case http_failure::context_length:
      return "context_length";
    case http_failure::malformed_json:
      return "malformed_json";
    case http_failure::missing_field:
      return "missing_field";
    case http_failure::empty_choices:
      return "empty_choices";
    case http_failure::stream_cut:
      return "stream_cut";
    case http_failure::too_large:
      return "too_large";
  }
  return "?";
}

/// @brief Details of a failed HTTP call; what http_error is built from.
struct http_error_info {
  http_failure kind = http_failure::status;
  int status = 0;               ///< HTTP status, 0 when no answer came
  std::string server_message;   ///< the server's `error.message`, or what moa saw
  std::string server_type;      ///< the server's `error.type` or `error.code`, when given
  std::string request_id;       ///< `x-request-id` header, else the completion `id`
  std::string url;              ///< where the request went
  int attempts = 1;             ///< attempts made, retries included
  double retry_after_s = -1.0;  ///< the server's `Retry-After`, in seconds (-1: none)
};

/// @brief An OpenAI-compatible endpoint failed: HTTP status, malformed answer, cut stream, ...
///
/// what() reads as one sentence naming the endpoint, the status, the server's message, the request
/// id and what to do; the accessors give the same facts to code.
class http_error : public backend_error {
 public:
  explicit http_error(http_error_info info)
      : backend_error(describe(info)), info_(std::move(info)) {}

  [[nodiscard]] http_failure kind() const noexcept { return info_.kind; }
  [[nodiscard]] int status() const noexcept { return info_.status; }
  [[nodiscard]] const std::string& server_message() const noexcept { return info_.server_message; }
  [[nodiscard]] const std::string& server_type() const noexcept { return info_.server_type; }
  [[nodiscard]] const std::string& request_id() const noexcept { return info_.request_id; }
  [[nodiscard]] const std::string& url() const noexcept { return info_.url; }
  [[nodiscard]] int attempts() const noexcept { return info_.attempts; }
  [[nodiscard]] const http_error_info& info() const noexcept { return info_; }

  /// True for failures worth another attempt: no connection, 429, 5xx.
  [[nodiscard]] bool retryable() const noexcept { return retryable(info_.kind, info_.status); }
  static constexpr bool retryable(http_failure kind, int status) noexcept {
    return kind == http_failure::connection ||
           (kind == http_failure::status && (status == 429 || (status >= 500 && status <= 599)));
  }

 private:
  static std::string describe(const http_error_info& i) {
    std::string s = "moa::openai: ";
    if (!i.url.empty()) s += i.url + ": ";
    switch (i.kind) {
      case http_failure::connection:
        s += "no answer from the server (" + i.server_message +
             "); check that it runs and that base_url is right";
        break;
      case http_failure::status:
        s += "HTTP " + std::to_string(i.status) + (i.server_message.empty() ? "" : ": ") +
             i.server_message;
        if (i.status == 401 || i.status == 403)
          s += " (check the API key: openai_options::api_key or the variable named by api_key_env)";
        else if (i.status == 404)
          s += " (check base_url: moa posts to {base_url}/chat/completions)";
        else if (i.status == 429)
          s += " (rate limited; raise retry.max_attempts or slow down)";
        break;
      case http_failure::context_length:
        s += "the prompt does not fit the model's context (HTTP " + std::to_string(i.status) +
             ": " + i.server_message +
             "); shorten it, lower max_tokens, or set aggregation_prompt::token_budget";
        break;
      case http_failure::malformed_json:
        s += "the server's answer is not valid JSON (" + i.server_message +
             "); is base_url an OpenAI-compatible endpoint?";
        break;
      case http_failure::missing_field:
        s += "the server's answer lacks " + i.server_message;
        break;
      case http_failure::empty_choices:
        s += "the server answered with no choices";
        if (!i.server_message.empty()) s += " (" + i.server_message + ")";
        break;
      case http_failure::stream_cut:
        s += "the event stream ended before it was complete (" + i.server_message + ")";
        break;
      case http_failure::too_large:
        s += "the answer is larger than openai_options::max_response_bytes (" + i.server_message +
             ")";
        break;
    }
    if (!i.server_type.empty()) s += " [" + i.server_type + "]";
    if (!i.request_id.empty()) s += " [request id " + i.request_id + "]";
    if (i.attempts > 1) s += " [after " + std::to_string(i.attempts) + " attempts]";
    return s;
  }

  http_error_info info_;
};

/// @brief The prompt (with max_tokens) does not fit the model's context window: a 400 whose
/// error names the context (llama.cpp `exceed_context_size_error`, OpenAI
/// `context_length_exceeded`, vLLM "maximum context length"). Not retried.
class context_length_error : public http_error {
 public:
  explicit context_length_error(http_error_info info)
      : http_error((info.kind = http_failure::context_length, std::move(info))) {}
};

}  // namespace moa
