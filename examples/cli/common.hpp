// SPDX-License-Identifier: MIT
#pragma once

// Helpers shared by the subcommands of the moa program.

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

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

}  // namespace moa::cli
