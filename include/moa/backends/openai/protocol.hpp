// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The wire format of OpenAI-compatible chat completions, without any HTTP: the request body,
/// the answer parser, the error parser, and a server-sent-events (SSE) parser with a stream
/// accumulator. Kept apart from the transport so that each is tested on recorded server answers
/// and fuzzed on its own. Needs nlohmann-json only.
///
/// @code{.cpp}
/// moa::openai::wire_context ctx{.url = "http://127.0.0.1:8080/v1/chat/completions"};
/// moa::response r = moa::openai::parse_response(body, ctx);           // or throws http_error
///
/// moa::openai::sse_parser sse;                                         // a stream, chunk by chunk
/// moa::openai::stream_accumulator acc(ctx);
/// auto print = [](std::string_view token) { std::cout << token; };
/// sse.feed(bytes, [&](std::string_view data) { acc.on_data(data, print); });
/// moa::response done = acc.finish();                                   // throws if cut
/// @endcode

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "moa/backends/openai/errors.hpp"
#include "moa/core/message.hpp"

namespace moa::openai {

/// @brief What a parser knows about the call it parses, for the errors it throws.
struct wire_context {
  std::string url{};         ///< the endpoint
  std::string request_id{};  ///< the `x-request-id` header, if any
  int status = 200;          ///< the HTTP status
};

namespace detail {

/// Length of the valid UTF-8 sequence at the start of `s` (1 to 4), or 0 when it is not one
/// (a stray continuation byte, an overlong form, a surrogate, a code point past U+10FFFF, a cut).
inline std::size_t utf8_sequence(std::string_view s) noexcept {
  const auto b = [&s](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char c = b(0);
  if (c < 0x80) return 1;
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // the range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (s.size() < n || b(1) < lo || b(1) > hi) return 0;
  for (std::size_t i = 2; i < n; ++i)
    if (b(i) < 0x80 || b(i) > 0xBF) return 0;
  return n;
}

/// Text a server sent, made safe to show and to serialise: at most `limit` bytes (cut at a
/// character boundary, "..." marking the cut), invalid UTF-8 replaced by U+FFFD, control
/// characters but newline replaced by spaces. Never throws on bad bytes.
inline std::string snippet(std::string_view s, std::size_t limit = 200) {
  std::string out;
  out.reserve(std::min(s.size(), limit) + 3);
  std::size_t i = 0;
  while (i < s.size()) {
    const std::size_t n = utf8_sequence(s.substr(i));
    const std::size_t take = n == 0 ? 1 : n;
    if (out.size() + (n == 0 ? 3 : n) > limit) break;
    if (n == 0)
      out += "\xEF\xBF\xBD";  // U+FFFD
    else if (n == 1 && static_cast<unsigned char>(s[i]) < 0x20 && s[i] != '\n')
      out += ' ';
    else
      out.append(s.substr(i, n));
    i += take;
  }
  if (i < s.size()) out += "...";
  return out;
}

/// `s` with invalid UTF-8 replaced by U+FFFD and no length limit (header values, ids).
inline std::string valid_utf8(std::string_view s) {
  return snippet(s, std::string_view::npos);
}

inline std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

inline http_error_info info_from(const wire_context& ctx, http_failure kind, std::string message) {
  http_error_info i;
  i.kind = kind;
  i.status = ctx.status;
  i.server_message = std::move(message);
  i.request_id = ctx.request_id;
  i.url = ctx.url;
  return i;
}

[[noreturn]] inline void fail(const wire_context& ctx, http_failure kind, std::string message) {
  MOA_THROW(http_error(info_from(ctx, kind, std::move(message))));
}

// Parses without exceptions escaping as json types: malformed input is an http_error. Invalid
// UTF-8 inside strings is rejected by nlohmann's lexer, which is what we want from a server.
inline nlohmann::json parse_json(std::string_view text, const wire_context& ctx) {
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail(ctx, http_failure::malformed_json, "got '" + snippet(text) + "'");
  return j;
}

inline std::string string_field(const nlohmann::json& j, std::string_view key) {
  if (!j.is_object()) return {};
  auto it = j.find(key);
  if (it == j.end()) return {};
  if (it->is_string()) return it->get<std::string>();
  if (it->is_number_integer()) return std::to_string(it->get<std::int64_t>());
  return {};
}

inline std::uint64_t count_field(const nlohmann::json& j, std::string_view key) {
  auto it = j.find(key);
  if (it == j.end()) return 0;
  if (it->is_number_unsigned()) return it->get<std::uint64_t>();
  if (it->is_number_integer()) return static_cast<std::uint64_t>(std::max<std::int64_t>(0, *it));
  return 0;
}

inline moa::usage parse_usage(const nlohmann::json& j) {
  moa::usage u;
  auto it = j.find("usage");
  if (it == j.end() || !it->is_object()) return u;
  u.prompt_tokens = count_field(*it, "prompt_tokens");
  u.completion_tokens = count_field(*it, "completion_tokens");
  return u;
}

inline finish_reason parse_finish(const nlohmann::json& choice, bool& present) {
  present = false;
  auto it = choice.find("finish_reason");
  if (it == choice.end() || !it->is_string()) return finish_reason::unknown;
  present = true;
  const auto& s = it->get_ref<const std::string&>();
  if (s == "stop" || s == "eos" || s == "tool_calls" || s == "function_call")
    return finish_reason::stop;
  if (s == "length") return finish_reason::length;
  return finish_reason::unknown;
}

// True when an error names the context window: llama.cpp `exceed_context_size_error`, OpenAI
// `context_length_exceeded`, vLLM/others "maximum context length ...".
inline bool names_context(std::string_view type, std::string_view message) {
  const auto t = lower(type), m = lower(message);
  return t.find("context") != std::string::npos || m.find("context length") != std::string::npos ||
         m.find("context size") != std::string::npos ||
         m.find("context window") != std::string::npos ||
         m.find("maximum context") != std::string::npos;
}

}  // namespace detail

/// @brief The error a non-2xx answer stands for, built from its body. Understands
/// `{"error": {"message", "type", "code"}}` (OpenAI, llama.cpp, vLLM), `{"error": "text"}`,
/// `{"message": ...}`, `{"detail": ...}` and plain text. Context-window errors become
/// context_length_error.
inline http_error_info parse_error_info(std::string_view body, const wire_context& ctx) {
  auto info = detail::info_from(ctx, http_failure::status, {});
  auto j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object()) {
    const nlohmann::json* e = &j;
    if (auto it = j.find("error"); it != j.end()) {
      if (it->is_string()) info.server_message = it->get<std::string>();
      if (it->is_object()) e = &*it;
    }
    if (info.server_message.empty()) info.server_message = detail::string_field(*e, "message");
    if (info.server_message.empty()) {
      if (auto d = e->find("detail"); d != e->end())
        info.server_message = d->is_string() ? d->get<std::string>() : d->dump();
    }
    info.server_type = detail::string_field(*e, "type");
    const auto code = detail::string_field(*e, "code");
    if (!code.empty() && code != std::to_string(ctx.status))
      info.server_type += (info.server_type.empty() ? "" : "/") + code;
  }
  if (info.server_message.empty()) info.server_message = detail::snippet(body, 300);
  if (ctx.status >= 400 && ctx.status < 500 && ctx.status != 429 &&
      detail::names_context(info.server_type, info.server_message))
    info.kind = http_failure::context_length;
  return info;
}

/// @brief Throws the typed error of a non-2xx answer (see parse_error_info).
[[noreturn]] inline void throw_status_error(std::string_view body, const wire_context& ctx,
                                            int attempts = 1, double retry_after_s = -1.0) {
  auto info = parse_error_info(body, ctx);
  info.attempts = attempts;
  info.retry_after_s = retry_after_s;
  if (info.kind == http_failure::context_length) MOA_THROW(context_length_error(std::move(info)));
  MOA_THROW(http_error(std::move(info)));
}

/// @brief Parses a non-streaming chat completion (`object: chat.completion`).
///
/// Throws http_error: malformed_json (not JSON), status (a JSON `error` object in a 2xx answer),
/// missing_field (no `choices`, or no string `choices[0].message.content`), empty_choices.
/// `usage` is optional (zero when absent); an empty content is returned as is, and the executor
/// records the call as `empty`.
inline response parse_response(std::string_view body, const wire_context& ctx = {}) {
  const auto j = detail::parse_json(body, ctx);
  if (!j.is_object())
    detail::fail(ctx, http_failure::malformed_json,
                 "expected a JSON object, got '" + detail::snippet(body) + "'");
  wire_context c = ctx;
  if (c.request_id.empty()) c.request_id = detail::string_field(j, "id");
  if (j.contains("error")) throw_status_error(body, c);
  auto choices = j.find("choices");
  if (choices == j.end() || !choices->is_array())
    detail::fail(c, http_failure::missing_field,
                 "the array 'choices' (got '" + detail::snippet(body) + "')");
  if (choices->empty()) detail::fail(c, http_failure::empty_choices, detail::snippet(body));
  const auto& choice = choices->front();
  if (!choice.is_object())
    detail::fail(c, http_failure::missing_field, "an object in 'choices[0]'");
  auto msg = choice.find("message");
  if (msg == choice.end() || !msg->is_object())
    detail::fail(c, http_failure::missing_field, "'choices[0].message'");
  auto content = msg->find("content");
  if (content == msg->end() || !content->is_string())
    detail::fail(c, http_failure::missing_field,
                 "a string 'choices[0].message.content' (tool calls and refusals are not "
                 "supported)");
  response out;
  out.text = content->get<std::string>();
  bool has_finish = false;
  out.finish = detail::parse_finish(choice, has_finish);
  out.usage = detail::parse_usage(j);
  out.model = detail::string_field(j, "model");
  return out;
}

/// @brief Splits a server-sent-events byte stream into events, as the WHATWG spec says: lines
/// end in LF, CRLF or CR; `data:` lines (one optional space after the colon) are joined with LF;
/// a blank line dispatches the event; `:` lines are comments; other fields are ignored. Bytes may
/// arrive cut anywhere, across calls to feed().
///
/// Only events with data are dispatched. An event still open when the stream ends is lost
/// (pending() tells), as the spec says: a cut stream must not look complete.
class sse_parser {
 public:
  /// Feeds bytes; calls `on_event(std::string_view data)` for every complete event.
  template <class F>
  void feed(std::string_view bytes, F&& on_event) {
    for (char ch : bytes) {
      if (skip_lf_) {
        skip_lf_ = false;
        if (ch == '\n') continue;
      }
      if (ch == '\r' || ch == '\n') {
        skip_lf_ = ch == '\r';
        end_line(on_event);
        continue;
      }
      if (line_.size() >= max_line) {
        overflow_ = true;  // a runaway line: keep counting, stop storing
        continue;
      }
      line_ += ch;
    }
  }

  /// True when bytes of an unfinished event are buffered.
  [[nodiscard]] bool pending() const noexcept { return !line_.empty() || has_data_; }
  /// True when a line longer than max_line was cut (its event is dropped).
  [[nodiscard]] bool overflowed() const noexcept { return overflow_; }

  static constexpr std::size_t max_line = std::size_t{16} << 20;

 private:
  template <class F>
  void end_line(F& on_event) {
    if (line_.empty()) {
      if (has_data_ && !overflow_) on_event(std::string_view(data_));
      data_.clear();
      has_data_ = false;
      return;
    }
    const std::string_view line(line_);
    if (line.front() != ':') {
      const auto colon = line.find(':');
      const auto field = line.substr(0, colon);
      std::string_view value;
      if (colon != std::string_view::npos) {
        value = line.substr(colon + 1);
        if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      }
      if (field == "data") {
        if (has_data_) data_ += '\n';
        data_ += value;
        has_data_ = true;
      }
    }
    line_.clear();
  }

  std::string line_;
  std::string data_;
  bool has_data_ = false;
  bool skip_lf_ = false;
  bool overflow_ = false;
};

/// @brief Builds a response from the `data:` payloads of a streamed chat completion
/// (`object: chat.completion.chunk`), handing each piece of content to a callback as it comes.
///
/// A stream is complete after `[DONE]`, or when it ended after a chunk with a finish reason
/// (some servers omit `[DONE]`). finish() throws http_error stream_cut otherwise, and
/// empty_choices when no chunk carried a choice.
class stream_accumulator {
 public:
  explicit stream_accumulator(wire_context ctx = {}) : ctx_(std::move(ctx)) {}

  /// Handles one event. `on_token(std::string_view)` receives every non-empty content delta.
  template <class F>
  void on_data(std::string_view data, F&& on_token) {
    if (done_) return;  // nothing counts after [DONE]
    if (data == "[DONE]") {
      done_ = true;
      return;
    }
    const auto j = detail::parse_json(data, ctx_);
    if (!j.is_object())
      detail::fail(ctx_, http_failure::malformed_json,
                   "expected a JSON object in the stream, got '" + detail::snippet(data) + "'");
    if (ctx_.request_id.empty()) ctx_.request_id = detail::string_field(j, "id");
    if (j.contains("error")) {
      // llama.cpp and others report a failure inside a 200 stream as an `error` event.
      wire_context c = ctx_;
      if (auto e = j.find("error"); e->is_object())
        if (auto code = e->find("code"); code != e->end() && code->is_number_integer())
          c.status = code->get<int>();
      throw_status_error(data, c);
    }
    if (auto m = detail::string_field(j, "model"); !m.empty()) out_.model = std::move(m);
    if (auto u = j.find("usage"); u != j.end() && u->is_object())
      out_.usage = detail::parse_usage(j);
    auto choices = j.find("choices");
    if (choices == j.end()) {
      if (!j.contains("usage"))
        detail::fail(ctx_, http_failure::missing_field,
                     "the array 'choices' in a stream chunk (got '" + detail::snippet(data) + "')");
      return;
    }
    if (!choices->is_array())
      detail::fail(ctx_, http_failure::missing_field, "an array 'choices' in a stream chunk");
    if (choices->empty()) return;  // the usage-only chunk of stream_options.include_usage
    const auto& choice = choices->front();
    if (!choice.is_object())
      detail::fail(ctx_, http_failure::missing_field, "an object in a chunk's 'choices[0]'");
    saw_choice_ = true;
    if (auto delta = choice.find("delta"); delta != choice.end() && delta->is_object()) {
      if (auto c = delta->find("content"); c != delta->end() && c->is_string()) {
        const auto& piece = c->get_ref<const std::string&>();
        if (!piece.empty()) {
          out_.text += piece;
          ++tokens_;
          on_token(std::string_view(piece));
        }
      }
    }
    bool has_finish = false;
    const auto f = detail::parse_finish(choice, has_finish);
    if (has_finish) {
      out_.finish = f;
      finished_ = true;
    }
  }

  /// The whole answer; throws http_error when the stream was not complete.
  [[nodiscard]] response finish() const {
    if (!done_ && !finished_)
      detail::fail(
          ctx_, http_failure::stream_cut,
          "no [DONE] and no finish reason after " + std::to_string(tokens_) + " content chunks");
    if (!saw_choice_)
      detail::fail(ctx_, http_failure::empty_choices, "no chunk of the stream carried a choice");
    response r = out_;
    if (!finished_) r.finish = finish_reason::unknown;
    return r;
  }

  [[nodiscard]] bool done() const noexcept { return done_; }
  /// Content chunks delivered so far: a stream that delivered some cannot be retried.
  [[nodiscard]] std::size_t chunks() const noexcept { return tokens_; }
  [[nodiscard]] const std::string& request_id() const noexcept { return ctx_.request_id; }

 private:
  wire_context ctx_;
  response out_{};
  std::size_t tokens_ = 0;
  bool done_ = false;
  bool finished_ = false;
  bool saw_choice_ = false;
};

/// @brief The JSON body of `POST /chat/completions` for a request.
///
/// `model` is omitted when empty (llama.cpp serves one model and ignores it). `extra` is merged
/// last, so it can add server-specific parameters (`{"ignore_eos": true, "top_k": 40}`) or
/// override moa's. Invalid UTF-8 in messages (answers of other models can hold some) is replaced
/// by U+FFFD rather than failing the call.
inline std::string build_request_body(const request& r, std::string_view model, bool stream,
                                      const nlohmann::json& extra = {}, bool stream_usage = true) {
  nlohmann::json body = nlohmann::json::object();
  if (!model.empty()) body["model"] = model;
  auto& messages = body["messages"] = nlohmann::json::array();
  for (const auto& m : r.messages)
    messages.push_back({{"role", to_string(m.role)}, {"content", m.content}});
  if (r.sampling.max_tokens > 0) body["max_tokens"] = r.sampling.max_tokens;
  body["temperature"] = r.sampling.temperature;
  if (r.sampling.seed) body["seed"] = *r.sampling.seed;
  if (!r.sampling.stop.empty()) body["stop"] = r.sampling.stop;
  if (stream) {
    body["stream"] = true;
    if (stream_usage) body["stream_options"] = {{"include_usage", true}};
  }
  if (extra.is_object()) body.merge_patch(extra);
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace moa::openai
