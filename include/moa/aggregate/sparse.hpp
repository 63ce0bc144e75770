// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Sparse Mixture-of-Agents: a judge keeps the best answers between layers; a moderator may
/// stop the run early. Part of moa/aggregate/policies.hpp.

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "moa/aggregate/aggregator_concepts.hpp"
#include "moa/aggregate/any_aggregator.hpp"
#include "moa/aggregate/extractors.hpp"
#include "moa/aggregate/judge.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/prompt/aggregation.hpp"

namespace moa {

struct agreement {
  answer_extractor extract = whole_answer{};
  double min_share = 1.0;
  bool operator()(std::span<const reference> answers, std::string& why) const {
    if (answers.size() < 2) return false;
    const auto counts = detail::count_votes(answers, extract);
    std::size_t most = 0;
    std::string key;
    for (const auto& v : counts)
      if (v.votes > most) {
        most = v.votes;
        key = v.key;
      }
    if (most < 2 || double(most) < min_share * double(answers.size())) return false;
    why = std::to_string(most) + " of " + std::to_string(answers.size()) + " answers agree on \"" +
          key + "\"";
    return true;
  }
};

/// @brief Sparse Mixture-of-Agents: before every layer (and the final aggregation) a judge keeps
/// the best `keep` answers; an optional moderator stops the run early when the answers agree, and
/// the remaining layers are skipped (their calls are `skipped` in the trace with the reason, and
/// counted in aggregation_report::calls_saved). The final answer is synthesised by the plan's sink
/// backend from the kept answers, or by `final_policy` when set.
struct sparse_policy {
  using moa_policy = aggregator_tag;
  std::optional<std::uint32_t> judge{};  ///< ranks each layer's answers; default: the sink backend
  std::size_t keep = 2;                  ///< answers passed on per layer (j)
  /// Stops early when it returns true (and says why); empty: never.
  std::function<bool(std::span<const reference>, std::string&)> moderator{};
  on_invalid_ranking on_invalid = on_invalid_ranking::keep_all;
  any_aggregator final_policy{};  ///< the final aggregation; empty: synthesis by the sink backend
  std::string instructions = detail::ranking_instructions();

  [[nodiscard]] std::string_view name() const noexcept { return "sparse"; }

  [[nodiscard]] selection select(policy_context& ctx) const {
    if (keep == 0) MOA_THROW(invalid_argument("sparse: keep must be at least 1"));
    selection s;
    if (moderator && moderator(ctx.answers(), s.why)) {
      s.stop = true;
      for (std::size_t i = 0; i < ctx.answers().size(); ++i) s.keep.push_back(i);
      return s;
    }
    s.keep = detail::rank_top(ctx, judge.value_or(ctx.backend()), keep, on_invalid, instructions,
                              "sparse: rank");
    return s;
  }

  [[nodiscard]] std::string aggregate(policy_context& ctx) const {
    if (final_policy) return final_policy.aggregate(ctx);
    for (std::size_t i = 0; i < ctx.answers().size(); ++i) ctx.chose(i);
    return ctx.call(ctx.backend(), ctx.synthesis_request(ctx.answers()), "sparse: synthesise").text;
  }
};

/// @brief No moderator: sparse runs every layer.
struct no_moderator {};

/// @brief A compile-time moderator: stop when at least `Percent`% of the answers agree by
/// `Extractor`.
template <class Extractor = whole_answer, unsigned Percent = 100>
struct agreement_of {
  static_assert(Percent >= 1 && Percent <= 100, "moa::agreement_of: Percent is in 1..100");
};

/// @brief Sparse MoA as a compile-time policy: `Judge` keeps the best `Keep` answers per layer,
/// `Moderator` (no_moderator or agreement_of<E, P>) may stop early, `Aggregator` synthesises.
template <std::size_t Judge, std::size_t Keep, class Moderator = no_moderator,
          std::size_t Aggregator = Judge>
struct sparse : sparse_policy {
  static_assert(Keep >= 1, "moa::sparse: Keep (answers passed on per layer) must be at least 1");
  static constexpr std::size_t index = Aggregator;
  sparse() {
    judge = static_cast<std::uint32_t>(Judge);
    keep = Keep;
    set_moderator(static_cast<Moderator*>(nullptr));
  }

 private:
  void set_moderator(no_moderator*) {}
  template <class E, unsigned P>
  void set_moderator(agreement_of<E, P>*) {
    moderator = agreement{E{}, double(P) / 100.0};
  }
};

static_assert(AggregatorPolicy<vote_policy>);
static_assert(StaticAggregatorPolicy<majority_vote<>>);
static_assert(StaticAggregatorPolicy<judge_select<0>>);
static_assert(StaticAggregatorPolicy<rank_fuse<0, 1>>);
static_assert(LayerSelectingPolicy<sparse_policy>);
static_assert(StaticAggregatorPolicy<sparse<0, 2>>);

}  // namespace moa
