// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// How a run behaves when calls fail, how long it may take, and how it reports progress.

#include <chrono>
#include <cstddef>
#include <functional>
#include <stop_token>
#include <string_view>

#include "moa/aggregate/any_aggregator.hpp"
#include "moa/core/message.hpp"
#include "moa/core/result.hpp"
#include "moa/prompt/aggregation.hpp"

namespace moa {

/// @brief What to do when the aggregator (the sink of the plan) fails.
enum class aggregator_fallback : std::uint8_t {
  degrade,  ///< answer with the first successful input of the aggregator, flagged as degraded
  fail,     ///< end the run with an error
};

/// @brief Options of one run. The defaults suit interactive use: quorum of one, degraded answers
/// allowed, no deadline.
///
/// @code{.cpp}
/// moa::run_options opt;
/// opt.quorum = 2;                                   // a layer needs two answers to go on
/// opt.timeout = std::chrono::seconds(30);           // bounds the whole run
/// opt.call_timeout = std::chrono::seconds(10);      // bounds each call
/// opt.on_token = [](std::string_view t) { std::cout << t << std::flush; };  // stream the answer
/// @endcode
struct run_options {
  /// A call that reads earlier answers runs only if at least min(quorum, inputs) of them
  /// succeeded; otherwise it is skipped, and a skipped sink fails the run. Must be >= 1.
  std::size_t quorum = 1;
  aggregator_fallback on_aggregator_failure = aggregator_fallback::degrade;
  /// Bounds the whole run (from the start of execute). The request's own deadline also applies.
  clock::duration timeout = clock::duration::max();
  /// Bounds each call; a call answering later is recorded as timed out and its answer unused.
  clock::duration call_timeout = clock::duration::max();
  /// Cancels the run; also handed to every backend through request::stop.
  std::stop_token stop{};
  /// Wording and layout of reference injection; nullptr means moa's default.
  const aggregation_prompt* prompt = nullptr;
  /// Called after every call, in completion order. The concurrent executor calls it from its
  /// workers, one call at a time; never after execute() has returned.
  std::function<void(const call_record&)> on_call{};
  /// Streams the sink's answer token by token (through generate_stream). Not used when an
  /// aggregation policy decides the answer.
  std::function<void(std::string_view)> on_token{};
  /// Decides the final answer (and, for sparse policies, what each layer passes on); empty: the
  /// sink is an ordinary call of its backend. Pipelines of a topology with a policy set it.
  /// See moa/aggregate/policies.hpp.
  any_aggregator aggregation{};
};

}  // namespace moa
