// SPDX-License-Identifier: MIT
#pragma once

// Helpers shared by the subcommands of the moa program.

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include <moa/aggregator.hpp>
#include <moa/backends/synthetic.hpp>

namespace moa::cli {

/// Names for the embedded synthetic models, so traces read as distinct models.
inline std::string model_name(std::size_t i) {
  static const char* const names[] = {"alpha",   "beta", "gamma", "delta",
                                      "epsilon", "zeta", "eta",   "theta"};
  return i < std::size(names) ? names[i] : "model" + std::to_string(i);
}

/// Progress goes to stderr, and only when it is a terminal: pipes and CI logs stay clean.
inline bool progress_wanted() {
  return ::isatty(STDERR_FILENO) == 1;
}

/// The latency options every subcommand that runs synthetic models accepts.
struct latency_options {
  std::string shape = "zero";
  double mean_ms = 0.0;
  double sigma = 0.5;

  [[nodiscard]] moa::latency_model model() const {
    const auto mean = std::chrono::nanoseconds(static_cast<std::int64_t>(mean_ms * 1e6));
    if (shape == "zero") return moa::latency_model::zero();
    if (shape == "constant") return moa::latency_model::constant(mean);
    if (shape == "exponential") return moa::latency_model::exponential(mean);
    return moa::latency_model::lognormal(mean, sigma);
  }
};

/// The aggregation policy of the subcommands that run MoA (moa/aggregate/policies.hpp).
struct policy_options {
  std::string name = "synthesis";  ///< synthesis, vote, judge, rank-fuse or sparse
  std::string extract = "whole";   ///< what vote and the moderator compare: whole, number, letter
  std::optional<std::uint32_t> judge;  ///< judges or ranks; default: the plan's sink backend
  std::size_t top = 2;                 ///< rank-fuse: answers fused
  std::size_t keep = 2;                ///< sparse: answers passed on per layer
  bool moderate = false;               ///< sparse: stop early when every answer agrees

  [[nodiscard]] moa::answer_extractor extractor() const {
    if (extract == "number") return moa::last_number{};
    if (extract == "letter") return moa::option_letter{};
    return moa::whole_answer{};
  }

  /// The policy; empty for synthesis (the topology's aggregator).
  [[nodiscard]] moa::any_aggregator make() const {
    if (name == "vote") return moa::any_aggregator(moa::vote_policy{.extract = extractor()});
    if (name == "judge")
      return moa::any_aggregator(moa::judge_policy{.judge = judge, .extract = extractor()});
    if (name == "rank-fuse")
      return moa::any_aggregator(moa::rank_fuse_policy{.judge = judge, .top = top});
    if (name == "sparse") {
      moa::sparse_policy p{.judge = judge, .keep = keep};
      if (moderate) p.moderator = moa::agreement{.extract = extractor()};
      return moa::any_aggregator(std::move(p));
    }
    return {};
  }
};

}  // namespace moa::cli
