// SPDX-License-Identifier: MIT
#pragma once

// The per-run state of an aggregation policy, for moa::plan_run (moa/exec/plan_run.hpp): the
// policy's report, its moderator stop, and the thunks through which its own backend calls obey
// the run's deadline and stop token and are recorded.

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "moa/aggregate/aggregator_concepts.hpp"
#include "moa/aggregate/any_aggregator.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/core/result.hpp"

namespace moa::detail {

/// The per-run state of an aggregation policy: only runs with a policy make one.
///
/// Executors give it the run's limits and a way to call backend `b` (`invoke`), so that the
/// policy's own calls (judges, rankers) obey the run's deadline and stop token and are recorded.
struct policy_run {
  using invoke_fn = void (*)(const void* backends, std::uint32_t b, const request&, call_record&);
  using name_fn = const std::string& (*)(const void* backends, std::uint32_t b);

  policy_run(const any_aggregator& p, std::size_t plan_size, const void* backends,
             std::size_t count, invoke_fn invoke, name_fn name, clock::time_point t0,
             clock::time_point deadline, std::stop_token stop)
      : policy(p),
        backends_(backends),
        count_(count),
        invoke_(invoke),
        name_(name),
        t0_(t0),
        deadline_(deadline),
        stop_(std::move(stop)),
        next_id_(static_cast<call_id>(plan_size)) {
    report.policy = p.name();
  }

  const any_aggregator& policy;
  std::mutex mutex;
  aggregation_report report;     // guarded by mutex
  bool stopped = false;          // guarded by mutex: the moderator stopped the run
  std::string stop_reason;       // guarded by mutex
  std::vector<call_id> carried;  // guarded by mutex: what the sink reads after a stop

  /// A context for the policy: `local` collects its calls and notes, merged afterwards.
  struct access {
    policy_run* run;
    std::uint32_t layer;
    aggregation_report* local;
  };

  policy_context::backend_access backend_access(access& a) const noexcept {
    return {&a, &call_thunk, &name_thunk, count_};
  }

  /// Merges what one policy invocation recorded; returns the usage of its calls.
  usage merge(aggregation_report& local, bool at_sink) {
    usage used;
    std::lock_guard lock(mutex);
    for (auto& c : local.calls) {
      c.call = next_id_++;
      used += c.usage;
      report.calls.push_back(std::move(c));
    }
    for (auto& n : local.notes) report.notes.push_back(std::move(n));
    if (at_sink) report.chosen = std::move(local.chosen);
    report.fallback = report.fallback || local.fallback;
    if (!at_sink) report.extra_usage += used;
    return used;
  }

 private:
  static response call_thunk(void* self, std::uint32_t b, request& r, std::string_view purpose) {
    auto& a = *static_cast<access*>(self);
    const auto& run = *a.run;
    call_record rec;
    rec.backend = b;
    rec.backend_name = run.name_(run.backends_, b);
    rec.layer = a.layer;
    rec.role = call_role::aggregator;
    r.deadline = std::min(r.deadline, run.deadline_);
    r.stop = run.stop_;
    call_id next;
    {
      // Policies of different groups of a DAG plan may run at once; merge() advances next_id_.
      std::lock_guard lock(a.run->mutex);
      next = run.next_id_;
    }
    r.context = {next, a.layer, call_role::aggregator};
    const auto start = clock::now();
    rec.start = rec.end = start - run.t0_;
    if (run.stop_.stop_requested()) {
      rec.status = call_status::cancelled;
      rec.error = "the run was cancelled before this call started";
    } else if (start >= run.deadline_) {
      rec.status = call_status::timed_out;
      rec.error = "the run passed its deadline before this call started";
    } else {
      run.invoke_(run.backends_, b, r, rec);
      const auto end = clock::now();
      rec.end = end - run.t0_;
      if (rec.status == call_status::ok) {
        if (end > r.deadline) {
          rec.status = call_status::timed_out;
          rec.error = "answered after the run's deadline; the answer was not used";
        } else if (run.stop_.stop_requested()) {
          rec.status = call_status::cancelled;
          rec.error = "the run was cancelled";
        }
      }
    }
    a.local->notes.push_back(std::string(purpose) + ": " + rec.backend_name + " " +
                             std::string(to_string(rec.status)));
    response out;
    if (rec.ok()) {
      out.text = rec.text;
      out.usage = rec.usage;
      out.finish = rec.finish;
    }
    const bool ok = rec.ok();
    std::string why = ok ? std::string() : rec.error;
    const auto status = rec.status;
    const auto name = rec.backend_name;
    a.local->calls.push_back(std::move(rec));
    if (!ok)
      MOA_THROW(backend_error(std::string(purpose) + ": " + name + " " +
                              std::string(to_string(status)) + ": " + why));
    return out;
  }
  static std::string_view name_thunk(void* self, std::uint32_t b) {
    const auto& run = *static_cast<access*>(self)->run;
    return run.name_(run.backends_, b);
  }

  const void* backends_;
  std::size_t count_;
  invoke_fn invoke_;
  name_fn name_;
  clock::time_point t0_;
  clock::time_point deadline_;
  std::stop_token stop_;
  call_id next_id_;  // guarded by mutex
};

}  // namespace moa::detail
