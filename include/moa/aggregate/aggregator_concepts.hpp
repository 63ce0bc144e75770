// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// What an aggregation policy is. Writing a policy needs only this header.
///
/// An aggregation policy decides the final answer of a run from the answers of the last layer
/// (the sink of the plan), and may also choose which answers each layer passes on to the next
/// (sparse propagation). Requirements of AggregatorPolicy<P>:
/// 1. it opts in with `using moa_policy = moa::aggregator_tag;` (so that an unrelated type with
///    an `aggregate` member does not match by accident);
/// 2. `p.aggregate(ctx)` returns the final answer as std::string, for `const P& p` and
///    `moa::policy_context& ctx`; it reports failure by throwing (the executor records the sink
///    as failed with the message, and the run's aggregator_fallback applies).
///
/// Optional, each checked on its own:
/// - LayerSelectingPolicy<P>: `p.select(ctx)` returns a moa::selection, called for every input
///   group of the plan before its calls run: the answers it keeps (and in which order) are the
///   only ones the group's calls receive, and `stop = true` skips every later layer;
/// - `p.name()` convertible to std::string_view, shown in the report.
///
/// A policy used as the second argument of `moa::topology<Layers, P>` must also be default
/// constructible and name its sink backend as `static constexpr std::size_t index`
/// (StaticAggregatorPolicy), so the topology checker can check it against the backend pack.
///
/// @code{.cpp}
/// struct longest {                         // picks the longest answer: no backend call
///   using moa_policy = moa::aggregator_tag;
///   static constexpr std::size_t index = 0;
///   std::string aggregate(moa::policy_context& ctx) const {
///     const auto a = ctx.answers();
///     if (a.empty()) throw std::runtime_error("longest: no answer to choose from");
///     auto best = std::ranges::max_element(a, {}, [](const auto& r) { return r.text.size(); });
///     ctx.chose(std::size_t(best - a.begin()));
///     return std::string(best->text);
///   }
/// };
/// using t = moa::topology<moa::layers<1, moa::proposers<0, 1, 2>>, longest>;
/// @endcode
/// @see moa/aggregate/policies.hpp for the catalogue of policies.

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/core/result.hpp"
#include "moa/prompt/aggregation.hpp"

namespace moa {

/// @brief The opt-in tag of aggregation policies: `using moa_policy = moa::aggregator_tag;`.
struct aggregator_tag {};

/// @brief What a LayerSelectingPolicy decided about the answers reaching an input group.
struct selection {
  std::vector<std::size_t> keep{};  ///< indices into policy_context::answers(), in order
  bool stop = false;                ///< the answers agree: skip every later layer
  std::string why{};                ///< shown in the report
};

/// @brief What a policy sees and may do: the answers, the caller's request, backend calls (each
/// recorded in the run's aggregation_report) and notes. Made by the executors.
class policy_context {
 public:
  /// How the executor lets a policy reach the backends (filled in by moa::detail).
  struct backend_access {
    void* self = nullptr;
    /// Calls backend `b` with `r`, records the call, returns its response or throws if it did
    /// not succeed.
    response (*call)(void* self, std::uint32_t b, request& r, std::string_view purpose) = nullptr;
    std::string_view (*name)(void* self, std::uint32_t b) = nullptr;
    std::size_t count = 0;
  };

  policy_context(std::span<const reference> answers, const request& prompt, std::uint32_t layer,
                 std::uint32_t backend, const aggregation_prompt& layout, backend_access access,
                 aggregation_report& report) noexcept
      : answers_(answers),
        prompt_(prompt),
        layer_(layer),
        backend_(backend),
        layout_(layout),
        access_(access),
        report_(report) {}

  /// The answers to aggregate or select from: the successful inputs, in plan order.
  [[nodiscard]] std::span<const reference> answers() const noexcept { return answers_; }
  /// The caller's request (its conversation, sampling, deadline).
  [[nodiscard]] const request& prompt() const noexcept { return prompt_; }
  /// The layer of the calls that will read the result (the sink's layer at the sink).
  [[nodiscard]] std::uint32_t layer() const noexcept { return layer_; }
  /// The backend of the plan's sink (the `index` of a StaticAggregatorPolicy).
  [[nodiscard]] std::uint32_t backend() const noexcept { return backend_; }
  [[nodiscard]] std::size_t backend_count() const noexcept { return access_.count; }
  [[nodiscard]] std::string_view backend_name(std::uint32_t b) const {
    check_backend(b);
    return access_.name(access_.self, b);
  }

  /// The request moa's synthesis would send for `refs` (the run's aggregation_prompt).
  [[nodiscard]] request synthesis_request(std::span<const reference> refs) const {
    request r;
    r.messages = layout_.inject(prompt_.messages, refs);
    r.sampling = prompt_.sampling;
    return r;
  }

  /// Calls backend `b`; the run's deadline and stop token are applied, and the call is recorded
  /// in the report (with `purpose` as its note). Throws backend_error if the call failed,
  /// timed out or answered nothing.
  response call(std::uint32_t b, request r, std::string_view purpose) {
    check_backend(b);
    return access_.call(access_.self, b, r, purpose);
  }

  /// Records a decision, in words, in the report.
  void note(std::string text) { report_.notes.push_back(std::move(text)); }
  /// Records that the policy fell back (and why): the run is still ok, but flagged.
  void fallback(std::string why) {
    report_.fallback = true;
    note(std::move(why));
  }
  /// Records the answers (indices into answers()) the final answer came from.
  void chose(std::size_t index) {
    if (index < answers_.size()) report_.chosen.push_back(answers_[index].call);
  }

 private:
  void check_backend(std::uint32_t b) const {
    if (b >= access_.count)
      MOA_THROW(invalid_argument("moa: the policy asked for backend " + std::to_string(b) +
                                 " but the run has " + std::to_string(access_.count) +
                                 " backends; check the policy's judge/fuser index"));
  }

  std::span<const reference> answers_;
  const request& prompt_;
  std::uint32_t layer_;
  std::uint32_t backend_;
  const aggregation_prompt& layout_;
  backend_access access_;
  aggregation_report& report_;
};

/// @brief Requirement 1: the type opted in with `using moa_policy = moa::aggregator_tag;`.
template <class P>
concept OptsIntoAggregation = requires {
  typename P::moa_policy;
}
&&std::same_as<typename P::moa_policy, aggregator_tag>;

/// @brief Requirement 2: `p.aggregate(ctx)` returns the final answer as std::string.
template <class P>
concept AggregatesAnswers = requires(const P& p, policy_context& ctx) {
  { p.aggregate(ctx) } -> std::same_as<std::string>;
};

/// @brief An aggregation policy: requirements 1 and 2 above.
/// @see LayerSelectingPolicy, StaticAggregatorPolicy, any_aggregator
template <class P>
concept AggregatorPolicy = OptsIntoAggregation<P> && AggregatesAnswers<P>;

/// @brief A policy that also selects the answers passed from layer to layer.
template <class P>
concept LayerSelectingPolicy = AggregatorPolicy<P> && requires(const P& p, policy_context& ctx) {
  { p.select(ctx) } -> std::same_as<selection>;
};

/// @brief A policy usable as `moa::topology<Layers, P>`: default constructible, with its sink
/// backend as `P::index`.
template <class P>
concept StaticAggregatorPolicy = AggregatorPolicy<P> && std::default_initializable<P> && requires {
  { P::index } -> std::convertible_to<std::size_t>;
};

}  // namespace moa
