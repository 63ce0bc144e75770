// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The plan: the one model of execution. Every topology (layered, gossip, DAG) turns a prompt into
/// a plan, a small DAG of calls; executors run plans live and the simulator runs them in virtual
/// time.
///
/// A plan stores calls in topological order. Calls that receive the same inputs share an *input
/// group*, so the request holding those references is built once per group and not once per
/// call: in a layered MoA every proposer of layer m+1 and the aggregator read the same answers.
///
/// @code{.cpp}
/// moa::plan p;
/// auto first = p.add_group({});                       // no inputs: the bare prompt
/// auto a = p.add_call(0, first, 1, moa::call_role::proposer);
/// auto b = p.add_call(1, first, 1, moa::call_role::proposer);
/// auto refs = p.add_group({a, b});                    // both answers as references
/// p.add_call(2, refs, 2, moa::call_role::aggregator);  // the last call is the sink
/// p.seal();
/// @endcode

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <vector>

#include "moa/core/error.hpp"
#include "moa/core/message.hpp"

namespace moa {

using call_id = std::uint32_t;
using group_id = std::uint32_t;

class plan {
 public:
  struct call {
    std::uint32_t backend = 0;  ///< index into the backend set (the device, in a network)
    group_id group = 0;         ///< whose answers this call receives
    std::uint32_t layer = 0;    ///< 1-based depth, for traces and role-dependent latency
    call_role role = call_role::proposer;
  };

  /// Adds an input group; every input must be a call already in the plan.
  group_id add_group(std::span<const call_id> inputs) {
    for (call_id in : inputs)
      if (in >= calls_.size())
        MOA_THROW(topology_error("moa::plan: an input group names call " + std::to_string(in) +
                                 ", which is not in the plan yet; add calls before the groups "
                                 "that read them"));
    groups_.push_back(
        {static_cast<std::uint32_t>(inputs_.size()), static_cast<std::uint32_t>(inputs.size())});
    inputs_.insert(inputs_.end(), inputs.begin(), inputs.end());
    sealed_ = false;
    return static_cast<group_id>(groups_.size() - 1);
  }
  group_id add_group(std::initializer_list<call_id> inputs) {
    return add_group(std::span<const call_id>(inputs.begin(), inputs.size()));
  }

  /// Adds a call of `backend` reading the answers of `group`.
  call_id add_call(std::uint32_t backend, group_id group, std::uint32_t layer, call_role role) {
    if (group >= groups_.size())
      MOA_THROW(topology_error("moa::plan: call added with input group " + std::to_string(group) +
                               ", but the plan has " + std::to_string(groups_.size()) +
                               " groups; add the group first"));
    calls_.push_back({backend, group, layer, role});
    sealed_ = false;
    return static_cast<call_id>(calls_.size() - 1);
  }

  /// Validates the plan and computes the tables executors need. The last call is the sink.
  /// Throws topology_error if the plan is empty, or if a call or group feeds nothing.
  void seal() {
    if (calls_.empty())
      MOA_THROW(topology_error("moa::plan: a plan needs at least one call (the sink)"));
    const auto n = calls_.size();
    const auto g = groups_.size();
    // Group -> calls reading it, as a CSR table.
    group_call_first_.assign(g + 1, 0);
    for (const auto& c : calls_) ++group_call_first_[c.group + 1];
    for (std::size_t i = 0; i < g; ++i) group_call_first_[i + 1] += group_call_first_[i];
    group_calls_.resize(n);
    {
      auto cursor = group_call_first_;
      for (std::size_t i = 0; i < n; ++i) group_calls_[cursor[calls_[i].group]++] = call_id(i);
    }
    // Call -> groups consuming it. Calls of one group are in one slice, so a call's answer
    // reaches each consumer group once even if listed twice (duplicates are removed).
    call_consumer_first_.assign(n + 1, 0);
    for (std::size_t gi = 0; gi < g; ++gi)
      for (call_id in : inputs_of(group_id(gi))) ++call_consumer_first_[in + 1];
    for (std::size_t i = 0; i < n; ++i) call_consumer_first_[i + 1] += call_consumer_first_[i];
    call_consumers_.resize(inputs_.size());
    {
      auto cursor = call_consumer_first_;
      for (std::size_t gi = 0; gi < g; ++gi)
        for (call_id in : inputs_of(group_id(gi))) call_consumers_[cursor[in]++] = group_id(gi);
    }
    for (std::size_t gi = 0; gi < g; ++gi) {
      if (calls_of(group_id(gi)).empty())
        MOA_THROW(topology_error("moa::plan: input group " + std::to_string(gi) +
                                 " is read by no call; remove it"));
      auto in = inputs_of(group_id(gi));
      std::vector<call_id> sorted(in.begin(), in.end());
      std::sort(sorted.begin(), sorted.end());
      if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
        MOA_THROW(topology_error("moa::plan: input group " + std::to_string(gi) +
                                 " lists the same call twice"));
    }
    for (std::size_t i = 0; i + 1 < n; ++i) {
      if (consumers_of(call_id(i)).empty())
        MOA_THROW(topology_error("moa::plan: call " + std::to_string(i) +
                                 " feeds no later call, so its answer would be lost; every call "
                                 "but the last (the sink) must be an input of another"));
    }
    // A group's calls must come after all of its inputs (inputs precede by construction, since
    // add_group only accepts existing calls), so the order of calls_ is topological.
    sealed_ = true;
  }

  [[nodiscard]] bool sealed() const noexcept { return sealed_; }
  [[nodiscard]] std::size_t size() const noexcept { return calls_.size(); }
  [[nodiscard]] std::size_t group_count() const noexcept { return groups_.size(); }
  [[nodiscard]] call_id sink() const noexcept { return call_id(calls_.size() - 1); }
  [[nodiscard]] std::span<const call> calls() const noexcept { return calls_; }
  [[nodiscard]] const call& operator[](call_id c) const noexcept { return calls_[c]; }

  [[nodiscard]] std::span<const call_id> inputs_of(group_id g) const noexcept {
    return {inputs_.data() + groups_[g].first, groups_[g].count};
  }
  [[nodiscard]] std::span<const call_id> inputs_of_call(call_id c) const noexcept {
    return inputs_of(calls_[c].group);
  }
  /// Calls reading group g (valid after seal()).
  [[nodiscard]] std::span<const call_id> calls_of(group_id g) const noexcept {
    return {group_calls_.data() + group_call_first_[g],
            group_call_first_[g + 1] - group_call_first_[g]};
  }
  /// Groups reading call c's answer (valid after seal()).
  [[nodiscard]] std::span<const group_id> consumers_of(call_id c) const noexcept {
    return {call_consumers_.data() + call_consumer_first_[c],
            call_consumer_first_[c + 1] - call_consumer_first_[c]};
  }
  /// The largest backend index used plus one.
  [[nodiscard]] std::uint32_t backend_span() const noexcept {
    std::uint32_t m = 0;
    for (const auto& c : calls_) m = std::max(m, c.backend + 1);
    return m;
  }

  /// Empties the plan but keeps its memory, for plans rebuilt per prompt (gossip).
  void clear() noexcept {
    calls_.clear();
    groups_.clear();
    inputs_.clear();
    sealed_ = false;
  }

 private:
  struct group_slice {
    std::uint32_t first;
    std::uint32_t count;
  };
  std::vector<call> calls_;
  std::vector<group_slice> groups_;
  std::vector<call_id> inputs_;
  std::vector<std::uint32_t> group_call_first_;
  std::vector<call_id> group_calls_;
  std::vector<std::uint32_t> call_consumer_first_;
  std::vector<group_id> call_consumers_;
  bool sealed_ = false;
};

/// @brief The plan of a layered MoA: `layers[m]` lists the backends proposing in layer m+1; the
/// aggregator reads the last layer. With no layers the plan is the aggregator alone.
inline plan make_layered_plan(std::span<const std::vector<std::uint32_t>> layers,
                              std::uint32_t aggregator) {
  plan p;
  std::vector<call_id> previous;
  std::uint32_t depth = 0;
  for (const auto& proposers : layers) {
    ++depth;
    const group_id g = p.add_group(previous);
    previous.clear();
    for (auto b : proposers) previous.push_back(p.add_call(b, g, depth, call_role::proposer));
  }
  p.add_call(aggregator, p.add_group(previous), depth + 1, call_role::aggregator);
  p.seal();
  return p;
}

}  // namespace moa
