// SPDX-License-Identifier: MIT
#pragma once

// What both executors share: invoking one backend call and classifying its outcome, building the
// request of an input group, and turning the finished trace into a result.

#include <algorithm>
#include <chrono>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "moa/aggregate/aggregator_concepts.hpp"
#include "moa/aggregate/any_aggregator.hpp"
#include "moa/core/backend.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/exec/result.hpp"
#include "moa/exec/run_options.hpp"
#include "moa/prompt/aggregation.hpp"
#include "moa/topology/plan.hpp"

namespace moa::detail {

inline clock::time_point saturating_add(clock::time_point t, clock::duration d) noexcept {
  return d >= clock::time_point::max() - t ? clock::time_point::max() : t + d;
}

inline const aggregation_prompt& default_prompt() {
  static const aggregation_prompt p;
  return p;
}

/// Checks what every execute() needs, with messages that say what to fix.
inline void check_run(const plan& p, std::span<const backend_ref> backends,
                      const run_options& opt) {
  if (!p.sealed())
    MOA_THROW(invalid_argument("moa: the plan is not sealed; call plan::seal() before executing"));
  if (p.backend_span() > backends.size())
    MOA_THROW(topology_error("moa: the plan calls backend " + std::to_string(p.backend_span() - 1) +
                             " but only " + std::to_string(backends.size()) +
                             " backends were given"));
  for (std::size_t i = 0; i < backends.size(); ++i)
    if (!backends[i].valid())
      MOA_THROW(invalid_argument("moa: backend " + std::to_string(i) + " is an empty backend_ref"));
  if (opt.quorum == 0)
    MOA_THROW(
        invalid_argument("moa: run_options::quorum must be at least 1 (the number of "
                         "earlier answers a call needs)"));
}

/// Fills the static part of a record from the plan.
inline void describe_call(call_record& rec, const plan& p, call_id c, std::string_view name) {
  const auto& call = p[c];
  rec.call = c;
  rec.backend = call.backend;
  rec.backend_name = name;
  rec.layer = call.layer;
  rec.role = call.role;
}
inline void describe_call(call_record& rec, const plan& p, call_id c,
                          std::span<const backend_ref> backends) {
  describe_call(rec, p, c, backends[p[c].backend].name());
}

/// Records a call that will not run: its group was skipped (`why`), or the run was cancelled.
inline void record_not_run(call_record& rec, const std::string& why, bool cancelled) {
  rec.status = cancelled ? call_status::cancelled : call_status::skipped;
  rec.error = cancelled ? "the run was cancelled" : why;
}

/// How far a call had got when its run was cancelled or passed its deadline.
enum class call_progress : std::uint8_t { queued, running, finished };

/// The trace of a run ended early (`now` since it began): finished calls as recorded, the others
/// described and marked cancelled or timed out. `progress(c)` reads the executor's phase of call
/// c and `name(b)` the name of backend b.
template <class Progress, class Name>
trace abandoned_trace(const plan& p, std::span<const call_record> records, bool cancelled,
                      clock::duration now, Progress progress, Name name) {
  trace out(p.size());
  const std::string why = cancelled ? "the run was cancelled" : "the run passed its deadline";
  for (call_id c = 0; c < p.size(); ++c) {
    auto& rec = out[c];
    const call_progress where = progress(c);
    if (where == call_progress::finished) {
      rec = records[c];
      continue;
    }
    describe_call(rec, p, c, name(p[c].backend));
    rec.status = cancelled ? call_status::cancelled : call_status::timed_out;
    rec.error = why + (where == call_progress::running
                           ? " while this call was running; its answer will be dropped"
                           : " before this call started");
    rec.start = rec.end = now;
  }
  return out;
}

/// The per-run state of an aggregation policy: only runs with a policy make one.
///
/// Executors give it the run's limits and a way to call backend `b` (`invoke`), so that the
/// policy's own calls (judges, rankers) obey the run's deadline and stop token and are recorded.
struct policy_run {
  using invoke_fn = void (*)(const void* backends, std::uint32_t b, const request&, call_record&);
  using name_fn = const std::string& (*)(const void* backends, std::uint32_t b);

  policy_run(const any_aggregator& p, const plan& pl, const void* backends, std::size_t count,
             invoke_fn invoke, name_fn name, clock::time_point t0, clock::time_point deadline,
             std::stop_token stop)
      : policy(p),
        backends_(backends),
        count_(count),
        invoke_(invoke),
        name_(name),
        t0_(t0),
        deadline_(deadline),
        stop_(std::move(stop)),
        next_id_(static_cast<call_id>(pl.size())) {
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

/// Builds the messages of group g from the successful inputs, or says why the group is skipped.
/// `records` must hold the finished records of every input. `trimmed` receives the estimated
/// tokens the context budget cut from the references. With a policy (`pol`), the policy selects
/// the references (sparse), may stop the run early, and the sink's group gets no injected
/// messages (the policy builds its own requests).
inline std::optional<std::string> build_group(const plan& p, group_id g,
                                              std::span<const call_record> records,
                                              const request& prompt, const run_options& opt,
                                              std::vector<message>& messages, call_list& used,
                                              std::size_t& trimmed, policy_run* pol) {
  auto inputs = p.inputs_of(g);
  used = call_list();
  trimmed = 0;
  if (inputs.empty()) {
    messages = prompt.messages;
    return std::nullopt;
  }
  bool sink_group = false;
  std::vector<call_id> carried;
  if (pol != nullptr) {
    sink_group = p.calls_of(g).back() == p.sink();
    std::lock_guard lock(pol->mutex);
    if (pol->stopped) {
      if (!sink_group) {
        pol->report.calls_saved += p.calls_of(g).size();
        return pol->stop_reason;
      }
      carried = pol->carried;
      inputs = carried;
    }
  }
  constexpr std::size_t on_stack = 16;
  reference stack_refs[on_stack];
  std::vector<reference> heap_refs;
  std::span<reference> refs(stack_refs, on_stack);
  if (inputs.size() > on_stack) {
    heap_refs.resize(inputs.size());
    refs = heap_refs;
  }
  std::size_t n = 0;
  auto ids = std::make_shared<std::vector<call_id>>();
  ids->reserve(inputs.size());
  for (call_id in : inputs) {
    const auto& r = records[in];
    if (r.ok()) {
      refs[n++] = {r.text, r.backend_name, in};
      ids->push_back(in);
    }
  }
  const std::size_t needed = std::min(opt.quorum, inputs.size());
  if (n < needed) {
    used = call_list(std::move(ids));
    return "only " + std::to_string(n) + " of its " + std::to_string(inputs.size()) +
           " inputs succeeded (quorum " + std::to_string(needed) + ")";
  }
  if (pol != nullptr && carried.empty() && pol->policy.selects()) {
    const auto layer = p[p.calls_of(g).front()].layer;
    aggregation_report local;
    policy_run::access a{pol, layer, &local};
    policy_context ctx(refs.first(n), prompt, layer, p[p.calls_of(g).front()].backend,
                       opt.prompt ? *opt.prompt : default_prompt(), pol->backend_access(a), local);
    selection s;
    std::string failure;
    try {
      s = pol->policy.select(ctx);
    } catch (const std::exception& e) {
      failure = e.what();
    }
    std::vector<reference> kept;
    for (auto k : s.keep) {
      if (k >= n || std::any_of(kept.begin(), kept.end(),
                                [&](const reference& r) { return r.call == refs[k].call; })) {
        failure = "the policy's selection names answer " + std::to_string(k) +
                  ", which is out of range or repeated";
        break;
      }
      kept.push_back(refs[k]);
    }
    if (failure.empty() && kept.empty()) failure = "the policy's selection kept no answer";
    const auto where = "before layer " + std::to_string(layer);
    if (!failure.empty()) {
      pol->merge(local, false);
      return "the aggregation policy '" + pol->report.policy + "' failed " + where + ": " + failure;
    }
    std::string kept_list;
    for (const auto& r : kept)
      kept_list += (kept_list.empty() ? "" : ", ") + std::to_string(r.call);
    local.notes.push_back(where + ": kept calls {" + kept_list + "} of " + std::to_string(n) +
                          (s.why.empty() ? "" : " (" + s.why + ")"));
    pol->merge(local, false);
    std::copy(kept.begin(), kept.end(), refs.begin());
    ids->clear();
    for (const auto& r : kept) ids->push_back(r.call);
    {
      std::lock_guard lock(pol->mutex);
      pol->report.references_dropped += n - kept.size();
      if (s.stop && !sink_group) {
        pol->stopped = true;
        pol->carried = *ids;
        pol->report.stopped_before_layer = layer;
        pol->report.calls_saved += p.calls_of(g).size();
        pol->stop_reason = "skipped: the moderator stopped the run before layer " +
                           std::to_string(layer) + (s.why.empty() ? "" : " (" + s.why + ")");
        used = call_list(std::move(ids));
        return pol->stop_reason;
      }
    }
    n = kept.size();
  }
  used = call_list(std::move(ids));
  if (sink_group) {
    messages = prompt.messages;
    return std::nullopt;
  }
  const auto& tmpl = opt.prompt ? *opt.prompt : default_prompt();
  messages = tmpl.inject(prompt.messages, refs.first(n), trimmed);
  return std::nullopt;
}

/// As above, without a policy: the form executors outside moa/exec use.
inline std::optional<std::string> build_group(const plan& p, group_id g,
                                              std::span<const call_record> records,
                                              const request& prompt, const run_options& opt,
                                              std::vector<message>& messages, call_list& used,
                                              std::size_t& trimmed) {
  return build_group(p, g, records, prompt, opt, messages, used, trimmed, nullptr);
}

/// Records a backend's answer: ok, or empty (an empty answer is a failure of its own kind).
inline void record_response(call_record& rec, response&& resp) {
  rec.usage = resp.usage;
  rec.finish = resp.finish;
  rec.text = std::move(resp.text);
  if (rec.text.empty()) {
    rec.status = call_status::empty;
    rec.error = "the backend returned an empty answer";
  } else {
    rec.status = call_status::ok;
  }
}

/// Records what a backend threw: its deadline, a cancellation, or a failure with its message.
inline void record_exception(call_record& rec, const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const timeout_error& x) {
    rec.status = call_status::timed_out;
    rec.error = x.what();
  } catch (const cancelled_error& x) {
    rec.status = call_status::cancelled;
    rec.error = x.what();
  } catch (const std::exception& x) {
    rec.status = call_status::failed;
    rec.error = x.what();
  } catch (...) {
    rec.status = call_status::failed;
    rec.error = "the backend threw an exception not derived from std::exception";
  }
}

/// Calls the backend and records the outcome. Never throws for a backend failure.
inline void invoke(const backend_ref& backend, const request& req, call_record& rec,
                   const std::function<void(std::string_view)>* on_token) {
  try {
    response resp;
    if (on_token != nullptr && *on_token) {
      auto forward = [on_token](std::string_view t) { (*on_token)(t); };
      resp = backend.generate_stream(req, token_callback(forward));
    } else {
      resp = backend.generate(req);
    }
    record_response(rec, std::move(resp));
  } catch (...) {
    // Failures are the slow path: one rethrow there keeps a single mapping to call statuses.
    record_exception(rec, std::current_exception());
  }
}

/// Re-classifies a call that came back after its deadline or after cancellation.
inline void enforce_limits(call_record& rec, clock::time_point end, clock::time_point deadline,
                           const std::stop_token& stop) {
  if (rec.status != call_status::ok) return;
  if (end > deadline) {
    rec.status = call_status::timed_out;
    rec.error = "answered " +
                std::to_string(
                    std::chrono::duration_cast<std::chrono::microseconds>(end - deadline).count()) +
                " us after its deadline; the answer was not used";
  } else if (stop.stop_requested()) {
    rec.status = call_status::cancelled;
    rec.error = "the run was cancelled";
  }
}

inline std::string name_call(const call_record& r) {
  return "call " + std::to_string(r.call) + " (" + r.backend_name + ", " +
         std::string(to_string(r.role)) + ", layer " + std::to_string(r.layer) + ")";
}

/// Turns a finished trace into the run's outcome.
inline void conclude(result& res, const plan& p, const run_options& opt, bool deadline_hit,
                     bool cancelled) {
  for (const auto& r : res.trace) res.usage += r.usage;
  const auto& sink = res.trace[p.sink()];
  if (sink.ok()) {
    res.status = run_status::ok;
    res.answer = sink.text;
    return;
  }
  std::string failures;
  for (const auto& r : res.trace) {
    if (r.ok() || r.status == call_status::skipped) continue;
    if (!failures.empty()) failures += "; ";
    failures += name_call(r) + " " + std::string(to_string(r.status)) + ": " + r.error;
  }
  if (cancelled) {
    res.status = run_status::cancelled;
    res.error = "the run was cancelled" + (failures.empty() ? "" : " (" + failures + ")");
    return;
  }
  if (deadline_hit) {
    res.status = run_status::timed_out;
    res.error = "the run passed its deadline" + (failures.empty() ? "" : " (" + failures + ")");
    return;
  }
  const bool sink_ran = sink.status != call_status::skipped;
  if (sink_ran && opt.on_aggregator_failure == aggregator_fallback::degrade) {
    for (call_id in : p.inputs_of_call(p.sink())) {
      const auto& r = res.trace[in];
      if (!r.ok()) continue;
      res.status = run_status::degraded;
      res.answer = r.text;
      res.error = "the aggregator failed (" + failures + "); answered with " + name_call(r);
      return;
    }
  }
  res.status = run_status::failed;
  if (!sink_ran) failures += (failures.empty() ? "" : "; ") + name_call(sink) + " " + sink.error;
  res.error = failures;
}

/// Runs the sink of a run with a policy: the policy decides the answer from the sink's
/// references; the record holds its answer (backend_name is the policy's name) and the usage of
/// the calls it made, which the report lists.
inline void invoke_policy(policy_run& pol, const plan& p, call_id c,
                          std::span<const call_record> records, const request& prompt,
                          const run_options& opt, call_record& rec) {
  std::vector<reference> refs;
  refs.reserve(rec.references.size());
  for (call_id in : rec.references)
    refs.push_back({records[in].text, records[in].backend_name, in});
  aggregation_report local;
  policy_run::access a{&pol, rec.layer, &local};
  policy_context ctx(refs, prompt, rec.layer, p[c].backend,
                     opt.prompt ? *opt.prompt : default_prompt(), pol.backend_access(a), local);
  rec.backend_name = pol.report.policy;
  try {
    rec.text = pol.policy.aggregate(ctx);
    if (rec.text.empty()) {
      rec.status = call_status::empty;
      rec.error = "the aggregation policy '" + pol.report.policy + "' returned an empty answer";
    } else {
      rec.status = call_status::ok;
      rec.finish = finish_reason::stop;
    }
  } catch (const std::exception& e) {
    rec.status = call_status::failed;
    rec.error = "aggregation policy '" + pol.report.policy + "': " + e.what();
  } catch (...) {
    rec.status = call_status::failed;
    rec.error = "aggregation policy '" + pol.report.policy +
                "' threw an exception not derived from std::exception";
  }
  rec.usage = pol.merge(local, true);
}

/// Adds the policy's report (and the usage of its calls outside the trace) to a finished result.
inline void attach_report(result& res, policy_run& pol) {
  std::lock_guard lock(pol.mutex);
  res.usage += pol.report.extra_usage;
  res.aggregation = std::make_shared<const aggregation_report>(pol.report);
}

/// The policy state of a run over backend_refs (the inline and concurrent executors); null when
/// the run has no policy, so runs without one pay a pointer test.
inline std::unique_ptr<policy_run> make_policy_run(const run_options& opt, const plan& p,
                                                   std::span<const backend_ref> backends,
                                                   clock::time_point t0, clock::time_point deadline,
                                                   std::stop_token stop) {
  if (!opt.aggregation) return nullptr;
  return std::make_unique<policy_run>(
      opt.aggregation, p, backends.data(), backends.size(),
      [](const void* b, std::uint32_t i, const request& r, call_record& rec) {
        invoke(static_cast<const backend_ref*>(b)[i], r, rec, nullptr);
      },
      [](const void* b, std::uint32_t i) -> const std::string& {
        return static_cast<const backend_ref*>(b)[i].name();
      },
      t0, deadline, std::move(stop));
}

}  // namespace moa::detail
