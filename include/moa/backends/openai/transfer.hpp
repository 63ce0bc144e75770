// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// One HTTP attempt of the OpenAI-compatible backend (moa/backends/openai.hpp), whichever path
/// drives it: libcurl's handles, what curl's callbacks collect (headers, the body or the event
/// stream, under the byte cap), and the helpers both paths share (Retry-After, URL redaction, the
/// scheme check). Internal: the backend is the interface.

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <memory>
#include <random>
#include <string>
#include <string_view>

#include "moa/backends/openai/options.hpp"
#include "moa/backends/openai/protocol.hpp"
#include "moa/core/backend.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"

namespace moa {

namespace openai::detail {

inline void global_init() {
  // curl_global_init is not thread-safe on every libcurl build: do it once, before any handle.
  static const bool done = [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
      MOA_THROW(backend_error("moa::openai: curl_global_init failed"));
    return true;
  }();
  (void)done;
}

struct curl_slist_deleter {
  void operator()(curl_slist* l) const noexcept { curl_slist_free_all(l); }
};
using header_list = std::unique_ptr<curl_slist, curl_slist_deleter>;

/// A transfer's pair of handles. The multi handle gives the call a poll it can wake (stop) and
/// bound (deadline); it also keeps the connection cache, so a reused pair reuses its connection.
struct handle {
  CURL* easy = curl_easy_init();
  CURLM* multi = curl_multi_init();
  handle() {
    if (!easy || !multi) MOA_THROW(backend_error("moa::openai: cannot create a curl handle"));
  }
  handle(const handle&) = delete;
  handle& operator=(const handle&) = delete;
  ~handle() {
    curl_multi_cleanup(multi);
    curl_easy_cleanup(easy);
  }
};

/// What one attempt collects while curl runs its callbacks.
struct transfer {
  CURL* easy = nullptr;
  const openai_options* opt = nullptr;
  openai::wire_context ctx{};
  bool want_stream = false;
  token_callback* on_token = nullptr;
  clock::time_point started{};
  clock::time_point first_token{};

  bool decided = false;    // status known and the body's kind chosen
  bool streaming = false;  // the body is parsed as SSE as it comes
  std::string body{};      // the whole body when not streaming
  std::string retry_after{};
  std::string content_type{};
  openai::sse_parser sse{};
  openai::stream_accumulator acc{};
  std::exception_ptr error{};  // thrown by a parser or the token callback, rethrown after curl
  std::size_t received = 0;    // body bytes, whole or streamed
  bool too_large = false;

  void decide() {
    decided = true;
    long status = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    ctx.status = static_cast<int>(status);
    // Parse as a stream only a 2xx event stream: an error answer to a stream request is JSON.
    streaming = want_stream && status >= 200 && status < 300 &&
                openai::detail::lower(content_type).find("text/event-stream") != std::string::npos;
    if (streaming) acc = openai::stream_accumulator(ctx);
  }

  static std::size_t on_write(char* data, std::size_t size, std::size_t n, void* self) noexcept {
    auto& t = *static_cast<transfer*>(self);
    const std::string_view bytes(data, size * n);
    try {
      if (!t.decided) t.decide();
      t.received += bytes.size();
      if (t.received > t.opt->max_response_bytes) {
        t.too_large = true;
        return 0;
      }
      if (t.streaming) {
        t.sse.feed(bytes, [&t](std::string_view event) {
          t.acc.on_data(event, [&t](std::string_view token) {
            if (t.first_token == clock::time_point{}) t.first_token = clock::now();
            if (t.on_token) (*t.on_token)(token);
          });
        });
      } else {
        t.body.append(bytes);
      }
    } catch (...) {
      t.error = std::current_exception();
      return 0;  // aborts the transfer; the exception is rethrown by the caller
    }
    return bytes.size();
  }

  static std::size_t on_header(char* data, std::size_t size, std::size_t n, void* self) noexcept {
    auto& t = *static_cast<transfer*>(self);
    std::string_view line(data, size * n);
    try {
      if (line.substr(0, 5) == "HTTP/") {  // a new answer (after 100 Continue): forget the last
        t.retry_after.clear();
        t.content_type.clear();
        return line.size();
      }
      const auto colon = line.find(':');
      if (colon == std::string_view::npos) return line.size();
      const auto name = openai::detail::lower(line.substr(0, colon));
      auto value = line.substr(colon + 1);
      while (!value.empty() && (value.front() == ' ' || value.front() == '\t'))
        value.remove_prefix(1);
      while (!value.empty() &&
             (value.back() == '\r' || value.back() == '\n' || value.back() == ' '))
        value.remove_suffix(1);
      if (name == "x-request-id" || name == "request-id")
        t.ctx.request_id = openai::detail::snippet(value, 200);
      else if (name == "retry-after")
        t.retry_after = std::string(value);
      else if (name == "content-type")
        t.content_type = std::string(value);
    } catch (...) {
      return 0;  // out of memory on a header: abort
    }
    return line.size();
  }
};

/// One attempt: what curl's callbacks fill in, the headers and curl's message. curl keeps their
/// addresses while the transfer runs, so an attempt never moves.
struct attempt {
  transfer t{};
  header_list headers{};
  char curl_message[CURL_ERROR_SIZE] = {};
  attempt() = default;
  attempt(const attempt&) = delete;
  attempt& operator=(const attempt&) = delete;
};

/// Seconds a `Retry-After` value asks for: delta-seconds or an HTTP date; -1 when absent or bad.
inline double parse_retry_after(const std::string& value) {
  if (value.empty()) return -1.0;
  if (std::all_of(value.begin(), value.end(), [](unsigned char c) { return std::isdigit(c); }))
    return std::strtod(value.c_str(), nullptr);
  const auto when = curl_getdate(value.c_str(), nullptr);
  if (when < 0) return -1.0;
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  return std::max<double>(0.0, static_cast<double>(when - now));
}

/// `url` as it may be shown: without the user:password of its authority and without its query
/// and fragment (where API keys travel), each replaced by `***`.
inline std::string redact_url(std::string_view url) {
  const auto scheme = url.find("://");
  const std::size_t start = scheme == std::string_view::npos ? 0 : scheme + 3;
  auto end = url.find_first_of("/?#", start);
  if (end == std::string_view::npos) end = url.size();
  std::string out(url.substr(0, start));
  auto authority = url.substr(start, end - start);
  if (const auto at = authority.rfind('@'); at != std::string_view::npos) {
    out += "***@";
    authority.remove_prefix(at + 1);
  }
  out += authority;
  const auto rest = url.substr(end);
  const auto q = rest.find_first_of("?#");
  out += rest.substr(0, q);
  if (q != std::string_view::npos) out += "?***";
  return openai::detail::snippet(out, 2048);
}

/// True for the schemes the backend speaks: http:// and https:// (any case).
inline bool http_scheme(std::string_view url) {
  const auto head = openai::detail::lower(url.substr(0, 8));
  return head.rfind("http://", 0) == 0 || head.rfind("https://", 0) == 0;
}

inline double uniform01() {
  thread_local std::mt19937_64 gen{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.0, 1.0)(gen);
}

}  // namespace openai::detail

}  // namespace moa
