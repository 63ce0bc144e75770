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

#include <algorithm>
#include <charconv>
#include <cstddef>
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
  bool truncated = false;   ///< cut by the context budget (rendered with a trailing "[...]")
};

/// @brief moa's token estimate for context budgets: one token per 4 bytes, rounded up.
///
/// Why bytes and not words: a budget must not be underestimated, and BPE tokenisers average about
/// 4 bytes per token on English prose (OpenAI's rule of thumb) but fewer on code, numbers and
/// non-Latin scripts, where a word count would be far too low. Leave headroom (say 20%) between
/// the budget and the model's real context for the instructions, the conversation and the answer.
constexpr std::size_t estimate_context_tokens(std::string_view text) noexcept {
  return (text.size() + 3) / 4;
}

/// @brief Shortens references so that their estimated tokens (estimate_context_tokens) sum to at
/// most `budget`, and returns the estimated tokens removed.
///
/// Fair share by water-filling: references shorter than an equal share of what is left are kept
/// whole, the others are cut to the same length, so one long answer cannot crowd out the rest.
/// Cuts fall on UTF-8 character boundaries; a cut reference is marked `truncated`.
inline std::size_t trim_references(std::span<reference> refs, std::size_t budget) {
  std::vector<std::size_t> sizes;
  sizes.reserve(refs.size());
  std::size_t total = 0;
  for (const auto& r : refs) total += sizes.emplace_back(estimate_context_tokens(r.text));
  if (total <= budget) return 0;
  // Water level: the largest share such that sum(min(size, share)) <= budget.
  std::sort(sizes.begin(), sizes.end());
  std::size_t left = budget, share = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    share = left / (sizes.size() - i);
    if (sizes[i] > share) break;
    left -= sizes[i];
  }
  std::size_t removed = 0;
  for (auto& r : refs) {
    const auto before = estimate_context_tokens(r.text);
    if (before <= share) continue;
    std::size_t bytes = share * 4;
    // Never split a UTF-8 sequence: back off over continuation bytes (10xxxxxx).
    while (bytes > 0 && (static_cast<unsigned char>(r.text[bytes]) & 0xC0) == 0x80) --bytes;
    r.text = r.text.substr(0, bytes);
    r.truncated = true;
    removed += before - estimate_context_tokens(r.text);
  }
  return removed;
}

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

  /// Context budget of the references, in estimated tokens (estimate_context_tokens); 0: none.
  /// Over budget, references are shortened by trim_references before the layout (`custom` too
  /// receives them trimmed), and the executors record the estimated tokens removed in
  /// call_record::trimmed_tokens.
  std::size_t token_budget = 0;

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
    constexpr std::string_view cut = " [...]";
    for (std::size_t i = 0; i < refs.size(); ++i)
      size += digits(i + 1) + 5 + refs[i].text.size() + (refs[i].truncated ? cut.size() : 0);
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
      if (refs[i].truncated) put(cut);
      *at++ = '\n';
    }
    return out;
  }

  /// The messages for a call that reads `refs`: the conversation, with a system message holding
  /// the references placed after the caller's own system message (if any), so the caller's
  /// instructions keep the first word.
  [[nodiscard]] std::vector<message> inject(std::span<const message> conversation,
                                            std::span<const reference> refs) const {
    std::size_t trimmed = 0;
    return inject(conversation, refs, trimmed);
  }

  /// As above, applying token_budget; `trimmed_tokens` receives the estimated tokens removed.
  [[nodiscard]] std::vector<message> inject(std::span<const message> conversation,
                                            std::span<const reference> refs,
                                            std::size_t& trimmed_tokens) const {
    trimmed_tokens = 0;
    std::vector<reference> cut;
    if (token_budget > 0) {
      cut.assign(refs.begin(), refs.end());
      trimmed_tokens = trim_references(cut, token_budget);
      if (trimmed_tokens > 0) refs = cut;
    }
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
