// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The runtime form of an aggregation policy: what run_options and runtime pipelines hold.

#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "moa/aggregate/aggregator_concepts.hpp"

namespace moa {

/// @brief A type-erased, shareable aggregation policy (any type modelling AggregatorPolicy).
/// Empty by default: the plan's sink is then an ordinary call (synthesis by its backend).
///
/// Immutable once made, so one policy may serve many concurrent runs.
///
/// @code{.cpp}
/// moa::run_options opt;
/// opt.aggregation = moa::any_aggregator(moa::vote_policy{.extract = moa::last_number{}});
/// auto r = pipeline.run("What is 6 x 7?", opt);
/// std::cout << r.answer << '\n' << r.aggregation->notes.front() << '\n';
/// @endcode
class any_aggregator {
 public:
  any_aggregator() = default;

  template <class P>
  requires(!std::same_as<std::remove_cvref_t<P>, any_aggregator> &&
           AggregatorPolicy<std::remove_cvref_t<P>>) explicit any_aggregator(P&& policy)
      : self_(std::make_shared<const model<std::remove_cvref_t<P>>>(std::forward<P>(policy))) {}

  explicit operator bool() const noexcept { return self_ != nullptr; }

  [[nodiscard]] std::string name() const { return self_ ? self_->name() : std::string(); }
  /// True when the policy selects answers between layers (LayerSelectingPolicy).
  [[nodiscard]] bool selects() const noexcept { return self_ && self_->selects(); }

  [[nodiscard]] std::string aggregate(policy_context& ctx) const { return self_->aggregate(ctx); }
  [[nodiscard]] selection select(policy_context& ctx) const { return self_->select(ctx); }

 private:
  struct concept_t {
    virtual ~concept_t() = default;
    [[nodiscard]] virtual std::string name() const = 0;
    [[nodiscard]] virtual bool selects() const noexcept = 0;
    [[nodiscard]] virtual std::string aggregate(policy_context&) const = 0;
    [[nodiscard]] virtual selection select(policy_context&) const = 0;
  };
  template <class P>
  struct model final : concept_t {
    explicit model(P p) : policy(std::move(p)) {}
    [[nodiscard]] std::string name() const override {
      if constexpr (requires {
                      { policy.name() } -> std::convertible_to<std::string_view>;
                    })
        return std::string(std::string_view(policy.name()));
      else
        return "custom policy";
    }
    [[nodiscard]] bool selects() const noexcept override { return LayerSelectingPolicy<P>; }
    [[nodiscard]] std::string aggregate(policy_context& ctx) const override {
      return policy.aggregate(ctx);
    }
    [[nodiscard]] selection select(policy_context& ctx) const override {
      if constexpr (LayerSelectingPolicy<P>) {
        return policy.select(ctx);
      } else {
        // Not selecting: every answer goes on, in order.
        selection all;
        for (std::size_t i = 0; i < ctx.answers().size(); ++i) all.keep.push_back(i);
        return all;
      }
    }
    P policy;
  };
  std::shared_ptr<const concept_t> self_;
};

}  // namespace moa
