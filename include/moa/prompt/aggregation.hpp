// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Reference injection: how the answers of earlier calls reach a later call (a proposer of layer
/// 2+, or the aggregator). They arrive as numbered references inside a system message that tells
/// the model what to do with them, never as a bare concatenated string.
///
/// @code{.cpp}
/// moa::aggregation_prompt prompt;                       // moa's wording
/// prompt.instructions = "Merge these drafts into one answer.";  // or your own
/// auto messages = prompt.inject(conversation, refs);
/// @endcode

#include <charconv>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "moa/core/message.hpp"

namespace moa {

/// @brief One earlier answer handed to a call.
struct reference {
  std::string_view text;    ///< the answer
  std::string_view source;  ///< the backend that gave it
  std::uint32_t call = 0;   ///< its call in the plan
};

/// @brief The aggregation prompt and the way references are laid out.
struct aggregation_prompt {
  /// moa's own wording; replace it to suit your models.
  std::string instructions =
      "Several models have answered the user's latest message; their answers are listed below "
      "as numbered references. They may contain mistakes, gaps or bias. Weigh them against each "
      "other and your own knowledge, then write a single answer of your own that keeps what is "
      "right, corrects what is wrong and reads as one coherent reply. Do not refer to the "
      "references or to the models that wrote them.";

  /// Replaces the whole layout when set: receives the conversation and the references, returns
  /// the messages sent to the model.
  std::function<std::vector<message>(std::span<const message>, std::span<const reference>)>
      custom{};

  /// The system message holding the instructions and the numbered references.
  [[nodiscard]] std::string render(std::span<const reference> refs) const {
    // Sized exactly and written in place: this runs once per input group on the hot path, where
    // appending piece by piece cost more than the model-free call it prepares.
    constexpr auto digits = [](std::size_t n) {
      std::size_t d = 1;
      for (; n >= 10; n /= 10) ++d;
      return d;
    };
    std::size_t size = instructions.size() + 1;
    for (std::size_t i = 0; i < refs.size(); ++i) size += digits(i + 1) + 5 + refs[i].text.size();
    std::string out(size, '\0');
    char* at = out.data();
    auto put = [&at](std::string_view s) {
      std::memcpy(at, s.data(), s.size());
      at += s.size();
    };
    put(instructions);
    *at++ = '\n';
    for (std::size_t i = 0; i < refs.size(); ++i) {
      put("\n[");
      at = std::to_chars(at, at + digits(i + 1), i + 1).ptr;
      put("] ");
      put(refs[i].text);
      *at++ = '\n';
    }
    return out;
  }

  /// The messages for a call that reads `refs`: the conversation, with a system message holding
  /// the references placed after the caller's own system message (if any), so the caller's
  /// instructions keep the first word.
  [[nodiscard]] std::vector<message> inject(std::span<const message> conversation,
                                            std::span<const reference> refs) const {
    if (custom) return custom(conversation, refs);
    std::vector<message> out;
    out.reserve(conversation.size() + 1);
    auto it = conversation.begin();
    if (it != conversation.end() && it->role == role::system) out.push_back(*it++);
    out.push_back({role::system, render(refs)});
    out.insert(out.end(), it, conversation.end());
    return out;
  }
};

}  // namespace moa
