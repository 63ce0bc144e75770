// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The plan-run core: the state of one run of a plan, shared by every way moa executes plans.
///
/// A run counts down each input group's inputs; when a group has them all its request is built
/// once (references injected, the quorum checked, a sparse policy's selection applied), and each
/// of its calls is handed to a **dispatcher**, which says only *where* the call runs:
///
/// | dispatcher                        | a ready call runs                                     |
/// |-----------------------------------|-------------------------------------------------------|
/// | `inline_executor`                 | on the caller, in plan order (a topological order)    |
/// | `concurrent_executor`             | on the thread that readied it, or on the pool         |
/// | `async_executor`                  | on the user's Scheduler, or started on an async backend |
/// | `net::network`                    | in a device's FCFS queue, in this process             |
/// | `net::zmq_device`                 | in a peer's queue, over the wire                      |
///
/// When a call ends, its record goes back to the run (complete()), which readies the groups it
/// completes; the aggregation policy (if any) decides the answer at the sink; conclude() turns
/// the trace into the result with the failure policy (skip, degrade, fail). A fix to quorum,
/// re-routing or reference injection is made here once.
///
/// @code{.cpp}
/// struct here {                       // the smallest dispatcher: run every call at once
///   moa::plan_run& run;
///   std::span<const moa::backend_ref> backends;
///   void dispatch(moa::call_id c) {
///     moa::request req = run.call_request(c, moa::clock::now());
///     run.invoke(c, backends[run.plan()[c].backend], req);
///     done(c);
///   }
///   void skipped(moa::call_id c) { done(c); }
///   void done(moa::call_id c) { run.complete(c, [&](moa::group_id g) { run.ready(g, *this); }); }
/// };
/// @endcode

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "moa/aggregate/aggregator_concepts.hpp"
#include "moa/aggregate/any_aggregator.hpp"
#include "moa/core/backend.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/core/result.hpp"
#include "moa/exec/detail/policy_run.hpp"
#include "moa/exec/run_options.hpp"
#include "moa/prompt/aggregation.hpp"
#include "moa/topology/plan.hpp"

namespace moa {

/// @brief `t + d`, saturating at the end of time (deadlines of "never" stay never).
inline clock::time_point saturating_add(clock::time_point t, clock::duration d) noexcept {
  return d >= clock::time_point::max() - t ? clock::time_point::max() : t + d;
}

/// @brief Checks what every run needs, with messages that say what to fix. `Ref` is a backend
/// handle with `valid()` (backend_ref, async_backend_ref).
template <class Ref>
void check_run(const plan& p, std::span<const Ref> backends, const run_options& opt,
               std::string_view handle = "backend_ref") {
  if (!p.sealed())
    MOA_THROW(invalid_argument("moa: the plan is not sealed; call plan::seal() before executing"));
  if (p.backend_span() > backends.size())
    MOA_THROW(topology_error("moa: the plan calls backend " + std::to_string(p.backend_span() - 1) +
                             " but only " + std::to_string(backends.size()) +
                             " backends were given"));
  for (std::size_t i = 0; i < backends.size(); ++i)
    if (!backends[i].valid())
      MOA_THROW(invalid_argument("moa: backend " + std::to_string(i) + " is an empty " +
                                 std::string(handle)));
  if (opt.quorum == 0)
    MOA_THROW(
        invalid_argument("moa: run_options::quorum must be at least 1 (the number of "
                         "earlier answers a call needs)"));
}

/// @brief Records a backend's answer: ok, or empty (an empty answer is a failure of its own kind).
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

/// @brief Records what a backend threw: its deadline, a cancellation, or a failure.
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

/// @brief Calls a synchronous backend and records the outcome; never throws for a backend
/// failure. With `on_token` (non-null and set) the call streams.
inline void call_backend(const backend_ref& backend, const request& req, call_record& rec,
                         const std::function<void(std::string_view)>* on_token = nullptr) {
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

/// @brief Re-classifies a call that came back after its deadline or after cancellation.
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

/// @brief "call 3 (name, proposer, layer 2)": how errors name a call.
inline std::string name_call(const call_record& r) {
  return "call " + std::to_string(r.call) + " (" + r.backend_name + ", " +
         std::string(to_string(r.role)) + ", layer " + std::to_string(r.layer) + ")";
}

/// @brief How far a call had got when its run was cancelled or passed its deadline.
enum class call_progress : std::uint8_t { queued, running, finished };

/// @brief Where a ready call runs: `d.dispatch(c)` runs (or starts, or queues) call c, whose
/// request is plan_run::call_request(); `d.skipped(c)` is told of a call that will not run (its
/// record already says why). Either way the dispatcher hands the call back with complete().
template <class D>
concept Dispatcher = requires(D& d, call_id c) {
  d.dispatch(c);
  d.skipped(c);
};

/// @brief The state of one run of a plan: records, per-group countdowns, input groups built once,
/// the aggregation policy's state, and the run's limits. Dispatchers (see the file comment) own
/// one and decide where its calls run.
///
/// Thread-safety: complete() and ready() may be called from many threads at once (the countdowns
/// are atomic, and each group is built by the one thread that completed its last input); a call's
/// record is written only by whoever runs the call. The plan, the request and the options must
/// outlive the run.
class plan_run {
 public:
  /// A run starting at `t0`, ending at `deadline` at the latest, cancelled by `stop`.
  plan_run(const moa::plan& p, const request& prompt, const run_options& opt, clock::time_point t0,
           clock::time_point deadline, std::stop_token stop)
      : plan_(&p),
        prompt_(&prompt),
        opt_(&opt),
        t0_(t0),
        deadline_(deadline),
        stop_(std::move(stop)),
        records_(p.size()) {}

  /// A run starting now, with the executors' limits: the earlier of the request's deadline and
  /// `opt.timeout` from now, and `opt.stop` if it can stop, else the request's stop token.
  plan_run(const moa::plan& p, const request& prompt, const run_options& opt)
      : plan_run(p, prompt, opt, clock::now(), opt.timeout, prompt) {}

  plan_run(const plan_run&) = delete;
  plan_run& operator=(const plan_run&) = delete;

  [[nodiscard]] const moa::plan& plan() const noexcept { return *plan_; }
  [[nodiscard]] const request& prompt() const noexcept { return *prompt_; }
  [[nodiscard]] const run_options& options() const noexcept { return *opt_; }
  [[nodiscard]] clock::time_point t0() const noexcept { return t0_; }
  [[nodiscard]] clock::time_point deadline() const noexcept { return deadline_; }
  [[nodiscard]] const std::stop_token& stop() const noexcept { return stop_; }
  [[nodiscard]] call_record& record(call_id c) noexcept { return records_[c]; }
  [[nodiscard]] std::span<const call_record> records() const noexcept { return records_; }
  /// The messages of group g's request, once ready() built it.
  [[nodiscard]] const std::vector<message>& messages(group_id g) const noexcept {
    return groups_[g];
  }

  /// Fills the static part of every record; `name(b)` gives backend b's name.
  template <class Name>
  void describe(Name&& name) {
    for (call_id c = 0; c < plan_->size(); ++c) describe(c, name((*plan_)[c].backend));
  }
  void describe(call_id c, std::string_view backend_name) {
    auto& rec = records_[c];
    const auto& call = (*plan_)[c];
    rec.call = c;
    rec.backend = call.backend;
    rec.backend_name = backend_name;
    rec.layer = call.layer;
    rec.role = call.role;
  }

  // --- the aggregation policy ----------------------------------------------------------------

  /// Gives the run its policy state (when options().aggregation is set): the policy's own calls
  /// go to `invoke(backends, b, request, record)`, named by `name(backends, b)`.
  void use_policy(const void* backends, std::size_t count, detail::policy_run::invoke_fn invoke,
                  detail::policy_run::name_fn name) {
    if (!opt_->aggregation) return;
    policy_ = std::make_unique<detail::policy_run>(opt_->aggregation, plan_->size(), backends,
                                                   count, invoke, name, t0_, deadline_, stop_);
  }
  /// As above, over synchronous backends.
  void use_policy(std::span<const backend_ref> backends) {
    use_policy(
        backends.data(), backends.size(),
        [](const void* b, std::uint32_t i, const request& r, call_record& rec) {
          call_backend(static_cast<const backend_ref*>(b)[i], r, rec);
        },
        [](const void* b, std::uint32_t i) -> const std::string& {
          return static_cast<const backend_ref*>(b)[i].name();
        });
  }
  /// True when the run has an aggregation policy.
  [[nodiscard]] bool has_policy() const noexcept { return policy_ != nullptr; }
  /// True when call c is decided by the policy rather than run on its backend (the sink).
  [[nodiscard]] bool policy_decides(call_id c) const noexcept {
    return policy_ != nullptr && c == plan_->sink();
  }
  /// True when the policy selects answers between layers (and may call backends doing so).
  [[nodiscard]] bool policy_selects() const noexcept {
    return policy_ != nullptr && policy_->policy.selects();
  }

  // --- the countdown ------------------------------------------------------------------------

  /// Arms the countdowns and the groups' storage: dispatchers that run calls as their inputs
  /// complete call it once, before start() or ready(). The inline executor runs in plan order
  /// and needs neither (it builds with build_into()).
  void arm() {
    const auto groups = plan_->group_count();
    groups_.resize(groups);
    pending_ = std::make_unique<std::atomic<std::uint32_t>[]>(groups);
    for (group_id g = 0; g < groups; ++g)
      pending_[g].store(static_cast<std::uint32_t>(plan_->inputs_of(g).size()),
                        std::memory_order_relaxed);
    remaining_.store(static_cast<std::uint32_t>(plan_->size()), std::memory_order_relaxed);
  }

  /// Readies every group without inputs (the first layer).
  template <Dispatcher D>
  void start(D& d) {
    for (group_id g = 0; g < plan_->group_count(); ++g)
      if (plan_->inputs_of(g).empty()) ready(g, d);
  }

  /// Group g has all its inputs: builds its request once and hands each of its calls to `d`:
  /// dispatch() when it may run, skipped() (its record marked skipped, or cancelled) when not.
  template <Dispatcher D>
  void ready(group_id g, D& d) {
    const auto skip = build(g, groups_[g]);
    for (call_id c : plan_->calls_of(g)) {
      if (skip) {
        auto& rec = records_[c];
        const bool cancelled = stop_.stop_requested();
        rec.status = cancelled ? call_status::cancelled : call_status::skipped;
        rec.error = cancelled ? "the run was cancelled" : *skip;
        d.skipped(c);
      } else {
        d.dispatch(c);
      }
    }
  }

  /// Call c has its final record: counts down the groups that read it and calls `on_ready(g)`
  /// for each that now has all its inputs. True when c was the run's last call.
  template <class OnReady>
  bool complete(call_id c, OnReady&& on_ready) {
    for (group_id g : plan_->consumers_of(c))
      if (pending_[g].fetch_sub(1, std::memory_order_acq_rel) == 1) on_ready(g);
    return remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1;
  }

  // --- one call -----------------------------------------------------------------------------

  /// Whether call c may start at `now`: false, with its record marked cancelled or timed out,
  /// when the run was cancelled or passed its deadline. Sets the record's start.
  bool may_start(call_id c, clock::time_point now) {
    auto& rec = records_[c];
    rec.start = rec.end = now - t0_;
    if (stop_.stop_requested()) {
      rec.status = call_status::cancelled;
      rec.error = "the run was cancelled before this call started";
      return false;
    }
    if (now >= deadline_) {
      deadline_hit_.store(true, std::memory_order_relaxed);
      rec.status = call_status::timed_out;
      rec.error = "the run passed its deadline before this call started";
      return false;
    }
    return true;
  }

  /// Fills what every call's request shares: the caller's sampling and the run's stop token.
  void share(request& req) const {
    req.sampling = prompt_->sampling;
    req.stop = stop_;
  }
  /// Fills what is call c's own in a request (its context and deadline, starting at `now`);
  /// the messages are messages(group), the rest share()'s.
  void prepare(call_id c, clock::time_point now, request& req) const {
    const auto& call = (*plan_)[c];
    req.context = {c, call.layer, call.role};
    req.deadline = std::min(deadline_, saturating_add(now, opt_->call_timeout));
  }
  /// The whole request of call c starting at `now`.
  [[nodiscard]] request call_request(call_id c, clock::time_point now) const {
    request req;
    req.messages = groups_[(*plan_)[c].group];
    share(req);
    prepare(c, now, req);
    return req;
  }

  /// Runs call c on a synchronous backend (the sink streams to on_token), or lets the policy
  /// decide it at the sink.
  void invoke(call_id c, const backend_ref& backend, const request& req) {
    if (policy_decides(c))
      decide(c, records_[c]);
    else
      call_backend(backend, req, records_[c], c == plan_->sink() ? &opt_->on_token : nullptr);
  }

  /// Records the end of call c at `end` against its request's deadline.
  void ended(call_id c, clock::time_point end, clock::time_point call_deadline) {
    auto& rec = records_[c];
    rec.end = end - t0_;
    enforce_limits(rec, end, call_deadline, stop_);
    if (rec.status == call_status::timed_out && end >= deadline_)
      deadline_hit_.store(true, std::memory_order_relaxed);
  }

  /// Lets the policy decide the sink's answer from the sink's references, into `rec` (the sink's
  /// record or a copy of it): its text, and the usage of the calls the policy made.
  void decide(call_id c, call_record& rec) {
    std::vector<reference> refs;
    refs.reserve(rec.references.size());
    for (call_id in : rec.references)
      refs.push_back({records_[in].text, records_[in].backend_name, in});
    decide(*policy_, refs, (*plan_)[c].backend, rec);
  }
  /// As above, from copies of the sink's inputs (`inputs[i]` is the record of
  /// `rec.references[i]`): for a policy deciding on a thread other than the one that may
  /// conclude the run meanwhile (a network's device, when the sink's peer deadline passes).
  void decide(call_id c, call_record& rec, std::span<const call_record> inputs) {
    std::vector<reference> refs;
    refs.reserve(inputs.size());
    for (const auto& in : inputs) refs.push_back({in.text, in.backend_name, in.call});
    decide(*policy_, refs, (*plan_)[c].backend, rec);
  }
  /// Copies of the records that call c reads (see decide()).
  [[nodiscard]] std::vector<call_record> inputs_of(const call_record& rec) const {
    std::vector<call_record> out;
    out.reserve(rec.references.size());
    for (call_id in : rec.references) out.push_back(records_[in]);
    return out;
  }

  // --- the end ------------------------------------------------------------------------------

  /// The run's result, once every call is done (`cancelled`: the run's stop was requested).
  /// `deadline_hit`: the dispatcher saw the run's deadline pass.
  [[nodiscard]] result conclude(clock::time_point now, bool cancelled, bool deadline_hit = false) {
    result res;
    res.trace = std::move(records_);
    res.elapsed = now - t0_;
    conclude(res, deadline_hit || deadline_hit_.load(std::memory_order_relaxed), cancelled);
    return res;
  }

  /// The result of a run ended early (`cancelled`, or its deadline passed): finished calls as
  /// recorded, the others marked cancelled or timed out. `progress(c)` says how far call c got,
  /// `name(b)` names backend b (calls still running own their records: they are described anew).
  template <class Progress, class Name>
  [[nodiscard]] result abandon(clock::time_point now, bool cancelled, Progress progress,
                               Name name) {
    result res;
    res.trace.resize(plan_->size());
    const std::string why = cancelled ? "the run was cancelled" : "the run passed its deadline";
    for (call_id c = 0; c < plan_->size(); ++c) {
      auto& rec = res.trace[c];
      const call_progress where = progress(c);
      if (where == call_progress::finished) {
        rec = records_[c];
        continue;
      }
      const auto& call = (*plan_)[c];
      rec.call = c;
      rec.backend = call.backend;
      rec.backend_name = name(call.backend);
      rec.layer = call.layer;
      rec.role = call.role;
      rec.status = cancelled ? call_status::cancelled : call_status::timed_out;
      rec.error = why + (where == call_progress::running
                             ? " while this call was running; its answer will be dropped"
                             : " before this call started");
      rec.start = rec.end = now - t0_;
    }
    res.elapsed = now - t0_;
    conclude(res, !cancelled, cancelled);
    return res;
  }

 private:
  // Builds the messages of group g from the successful inputs, stamps the references on its
  // calls, or says why the group is skipped. With a policy, the policy selects the references
  // (sparse), may stop the run early, and the sink's group gets no injected messages (the policy
  // builds its own requests).
  std::optional<std::string> build(group_id g, std::vector<message>& messages) {
    const auto calls = plan_->calls_of(g);
    std::size_t trimmed = 0;
    call_list used;
    auto skip = build(g, messages, used, trimmed);
    for (call_id c : calls) {
      records_[c].references = used;
      records_[c].trimmed_tokens = trimmed;
    }
    return skip;
  }

 public:
  /// As ready() without dispatching: builds group g into `messages` (the inline executor builds
  /// into the request it reuses). The calls of g get their references.
  std::optional<std::string> build_into(group_id g, std::vector<message>& messages) {
    return build(g, messages);
  }

 private:
  std::optional<std::string> build(group_id g, std::vector<message>& messages, call_list& used,
                                   std::size_t& trimmed) {
    const auto& p = *plan_;
    auto inputs = p.inputs_of(g);
    if (inputs.empty()) {
      messages = prompt_->messages;
      return std::nullopt;
    }
    detail::policy_run* pol = policy_.get();
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
      const auto& r = records_[in];
      if (r.ok()) {
        refs[n++] = {r.text, r.backend_name, in};
        ids->push_back(in);
      }
    }
    const std::size_t needed = std::min(opt_->quorum, inputs.size());
    if (n < needed) {
      used = call_list(std::move(ids));
      return "only " + std::to_string(n) + " of its " + std::to_string(inputs.size()) +
             " inputs succeeded (quorum " + std::to_string(needed) + ")";
    }
    if (pol != nullptr && carried.empty() && pol->policy.selects()) {
      auto stop = select(*pol, g, refs, n, *ids, sink_group);
      if (stop) {
        used = call_list(std::move(ids));
        return stop;
      }
    }
    used = call_list(std::move(ids));
    if (sink_group) {
      messages = prompt_->messages;
      return std::nullopt;
    }
    messages = prompt_template().inject(prompt_->messages, refs.first(n), trimmed);
    return std::nullopt;
  }

  // A sparse policy's selection before group g: keeps some of the n references (moved to the
  // front, n updated) or stops the run; returns why the group is skipped, if it is.
  std::optional<std::string> select(detail::policy_run& pol, group_id g, std::span<reference> refs,
                                    std::size_t& n, std::vector<call_id>& ids, bool sink_group) {
    const auto& p = *plan_;
    const auto layer = p[p.calls_of(g).front()].layer;
    aggregation_report local;
    detail::policy_run::access a{&pol, layer, &local};
    policy_context ctx(refs.first(n), *prompt_, layer, p[p.calls_of(g).front()].backend,
                       prompt_template(), pol.backend_access(a), local);
    selection s;
    std::string failure;
    try {
      s = pol.policy.select(ctx);
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
      pol.merge(local, false);
      return "the aggregation policy '" + pol.report.policy + "' failed " + where + ": " + failure;
    }
    std::string kept_list;
    for (const auto& r : kept)
      kept_list += (kept_list.empty() ? "" : ", ") + std::to_string(r.call);
    local.notes.push_back(where + ": kept calls {" + kept_list + "} of " + std::to_string(n) +
                          (s.why.empty() ? "" : " (" + s.why + ")"));
    pol.merge(local, false);
    std::copy(kept.begin(), kept.end(), refs.begin());
    ids.clear();
    for (const auto& r : kept) ids.push_back(r.call);
    std::lock_guard lock(pol.mutex);
    pol.report.references_dropped += n - kept.size();
    n = kept.size();
    if (s.stop && !sink_group) {
      pol.stopped = true;
      pol.carried = ids;
      pol.report.stopped_before_layer = layer;
      pol.report.calls_saved += p.calls_of(g).size();
      pol.stop_reason = "skipped: the moderator stopped the run before layer " +
                        std::to_string(layer) + (s.why.empty() ? "" : " (" + s.why + ")");
      return pol.stop_reason;
    }
    return std::nullopt;
  }

  void decide(detail::policy_run& pol, std::span<const reference> refs, std::uint32_t backend,
              call_record& rec) {
    aggregation_report local;
    detail::policy_run::access a{&pol, rec.layer, &local};
    policy_context ctx(refs, *prompt_, rec.layer, backend, prompt_template(), pol.backend_access(a),
                       local);
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

  const aggregation_prompt& prompt_template() const {
    static const aggregation_prompt fallback;
    return opt_->prompt ? *opt_->prompt : fallback;
  }

  // The failure policy: turns a finished trace into the run's outcome.
  void conclude(result& res, bool deadline_hit, bool cancelled) {
    const auto& p = *plan_;
    for (const auto& r : res.trace) res.usage += r.usage;
    if (policy_) {
      std::lock_guard lock(policy_->mutex);
      res.usage += policy_->report.extra_usage;
      res.aggregation = std::make_shared<const aggregation_report>(policy_->report);
    }
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
    if (sink_ran && opt_->on_aggregator_failure == aggregator_fallback::degrade) {
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

  plan_run(const moa::plan& p, const request& prompt, const run_options& opt, clock::time_point t0,
           clock::duration timeout, const request& limits)
      : plan_run(p, prompt, opt, t0, std::min(limits.deadline, saturating_add(t0, timeout)),
                 opt.stop.stop_possible() ? opt.stop : limits.stop) {}

  const moa::plan* plan_;
  const request* prompt_;
  const run_options* opt_;
  clock::time_point t0_;
  clock::time_point deadline_;
  std::stop_token stop_;
  std::vector<call_record> records_;
  std::vector<std::vector<message>> groups_;
  std::unique_ptr<std::atomic<std::uint32_t>[]> pending_;
  std::atomic<std::uint32_t> remaining_{0};
  std::atomic<bool> deadline_hit_{false};
  std::unique_ptr<detail::policy_run> policy_;  // null without an aggregation policy
};

}  // namespace moa
