// SPDX-License-Identifier: MIT
#pragma once

// A synthetic backend with planted answers, for the tests of aggregation policies on every
// executor and network.

#include <string>
#include <utility>

#include "moa/backends/synthetic.hpp"

namespace moa_test {

// Answers `text` as a proposer and `judged` when asked as an aggregator (the sink, or a policy's
// judge, ranker or fuser). With `record`, it keeps the requests it received.
inline moa::synthetic_backend planted(std::string name, std::string text, std::string judged = "",
                                      bool record = false) {
  moa::synthetic_options o;
  o.name = std::move(name);
  o.record = record;
  o.answer = [text = std::move(text), judged = std::move(judged)](const moa::request& r) {
    return r.context.role == moa::call_role::aggregator ? judged : text;
  };
  return moa::synthetic_backend(std::move(o));
}

}  // namespace moa_test
