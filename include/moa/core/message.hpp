// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The vocabulary every backend speaks: a chat request in, a response out.

#include <chrono>
#include <cstdint>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

namespace moa {

using clock = std::chrono::steady_clock;

/// @brief Who said a chat message.
enum class role : std::uint8_t { system, user, assistant };

constexpr std::string_view to_string(role r) noexcept {
  switch (r) {
    case role::system:
      return "system";
    case role::user:
      return "user";
    case role::assistant:
      return "assistant";
  }
  return "?";
}

/// @brief One chat message.
struct message {
  moa::role role = role::user;
  std::string content{};

  friend bool operator==(const message&, const message&) = default;
};

/// @brief Sampling parameters forwarded to the backend. Backends ignore what they cannot honour.
struct sampling {
  int max_tokens = 512;
  double temperature = 0.7;
  std::optional<std::uint64_t> seed{};
  std::vector<std::string> stop{};
};

/// @brief A call's position in a plan (moa::plan), and an input group's.
using call_id = std::uint32_t;
using group_id = std::uint32_t;

/// @brief What a call is for, so that a backend (or a latency model) can tell an aggregation
/// prompt from a first-layer proposal.
enum class call_role : std::uint8_t { proposer, aggregator };

constexpr std::string_view to_string(call_role r) noexcept {
  return r == call_role::proposer ? "proposer" : "aggregator";
}

/// @brief Where a call sits in its plan. Filled in by the executor; informational for backends.
struct call_context {
  std::uint32_t call = 0;   ///< index of the call in its plan
  std::uint32_t layer = 0;  ///< 1-based layer; the aggregator of an M-layer MoA has layer M + 1
  call_role role = call_role::proposer;
};

/// @brief A chat request.
///
/// `deadline` and `stop` are the two ways a caller bounds a call: a backend that can give up
/// early should honour both. The concurrent executor enforces the deadline even for backends
/// that ignore it (it stops waiting); the inline executor relies on the backend.
struct request {
  std::vector<message> messages{};
  moa::sampling sampling{};
  clock::time_point deadline = clock::time_point::max();
  std::stop_token stop{};
  call_context context{};

  /// The last user message, or empty: what synthetic backends and logs show as "the prompt".
  [[nodiscard]] std::string_view prompt() const noexcept {
    for (auto it = messages.rbegin(); it != messages.rend(); ++it)
      if (it->role == role::user) return it->content;
    return {};
  }
};

/// @brief Builds a request holding one user message.
inline request make_request(std::string prompt) {
  request r;
  r.messages.push_back({role::user, std::move(prompt)});
  return r;
}

/// @brief Why generation ended.
enum class finish_reason : std::uint8_t { stop, length, cancelled, unknown };

constexpr std::string_view to_string(finish_reason f) noexcept {
  switch (f) {
    case finish_reason::stop:
      return "stop";
    case finish_reason::length:
      return "length";
    case finish_reason::cancelled:
      return "cancelled";
    case finish_reason::unknown:
      return "unknown";
  }
  return "?";
}

/// @brief Token counts of one call, or summed over many.
struct usage {
  std::uint64_t prompt_tokens = 0;
  std::uint64_t completion_tokens = 0;

  [[nodiscard]] constexpr std::uint64_t total() const noexcept {
    return prompt_tokens + completion_tokens;
  }
  constexpr usage& operator+=(const usage& o) noexcept {
    prompt_tokens += o.prompt_tokens;
    completion_tokens += o.completion_tokens;
    return *this;
  }
  friend constexpr usage operator+(usage a, const usage& b) noexcept { return a += b; }
  friend bool operator==(const usage&, const usage&) = default;
};

/// @brief Timings a backend reports about itself (the executor measures wall time separately).
struct timings {
  std::chrono::nanoseconds time_to_first_token{0};
  std::chrono::nanoseconds generation{0};
};

/// @brief A backend's answer.
struct response {
  std::string text{};
  finish_reason finish = finish_reason::stop;
  moa::usage usage{};
  moa::timings timings{};
  std::string model{};  ///< which model answered; the executor fills in the backend's name if empty
};

}  // namespace moa
