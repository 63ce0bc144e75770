// SPDX-License-Identifier: MIT
#pragma once

// The state of one run of moa::async_executor: the asynchronous dispatcher of moa::plan_run.
// Calls of asynchronous backends are started on the thread that readied them; calls of
// synchronous backends (and policy work) are posted to a scheduler. Each call has an atomic phase
// (queued, running, completing, done) so a duplicate or late completion is dropped by one
// compare-exchange, and the run ends at once on cancellation or at its deadline.

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <vector>

#include "moa/core/async_backend.hpp"
#include "moa/core/backend.hpp"
#include "moa/core/message.hpp"
#include "moa/core/result.hpp"
#include "moa/exec/plan_run.hpp"
#include "moa/exec/run_options.hpp"
#include "moa/exec/scheduler.hpp"
#include "moa/topology/plan.hpp"

namespace moa::detail {

/// Reference-counted by the tasks and completions that touch it, so late completions land in
/// memory that is still alive.
class async_run final : public completion_target, public std::enable_shared_from_this<async_run> {
 public:
  using on_done_fn = std::function<void(result)>;

  async_run(const plan& p, std::span<const backend_ref> sync, std::span<const async_backend_ref> as,
            const request& prompt, const run_options& opt, std::shared_ptr<const void> keep_alive,
            scheduler_ref sched, scheduler_ref lane, deadline_timer& timer, on_done_fn on_done)
      : plan_(p),
        sync_(sync),
        async_(as),
        prompt_(prompt),
        opt_(opt),
        keep_alive_(std::move(keep_alive)),
        sched_(sched),
        lane_(lane),
        timer_(timer),
        on_done_(std::move(on_done)),
        run_(plan_, prompt_, opt_),
        requests_(p.size()),
        phase_(std::make_unique<std::atomic<std::uint8_t>[]>(p.size())) {
    run_.describe([this](std::uint32_t b) -> const std::string& { return backend_name(b); });
    if (async_.empty()) {
      run_.use_policy(sync_);
    } else {
      run_.use_policy(
          async_.data(), async_.size(),
          [](const void* b, std::uint32_t i, const request& r, call_record& rec) {
            try {
              record_response(rec, static_cast<const async_backend_ref*>(b)[i].generate(r));
            } catch (...) {
              record_exception(rec, std::current_exception());
            }
          },
          [](const void* b, std::uint32_t i) -> const std::string& {
            return static_cast<const async_backend_ref*>(b)[i].name();
          });
      uses_lane_ = run_.has_policy();
    }
    run_.arm();
  }

  /// Posts the run's start to the scheduler (so the caller never runs backend work).
  void launch() { sched_.post({&start_entry, shared_from_this(), 0}); }

  /// True when the run may end early (a deadline, or a stop token that can stop): a thread
  /// waiting for it must stay free to return then, so it must not run the run's calls.
  [[nodiscard]] bool bounded() const noexcept {
    return run_.deadline() != clock::time_point::max() || run_.stop().stop_possible();
  }

  void complete(std::uint32_t c, response* r, std::exception_ptr e) noexcept override {
    std::uint8_t expected = running;
    if (!phase_[c].compare_exchange_strong(expected, completing, std::memory_order_acq_rel))
      return;  // a duplicate or late completion
    auto& rec = run_.record(c);
    if (r != nullptr) {
      // Only the sink's completion reads the flag its dispatch wrote (other calls race it).
      if (c == plan_.sink() && whole_answer_as_token_ && !r->text.empty()) {
        try {
          on_token_(r->text);
        } catch (...) {  // as on the synchronous path, a throwing callback fails the call
          record_exception(rec, std::current_exception());
          r = nullptr;
        }
      }
      if (r != nullptr) record_response(rec, std::move(*r));
    } else {
      record_exception(rec, e);
    }
    run_.ended(c, clock::now(), requests_[c].deadline);
    finish(c);
  }

  void on_deadline() noexcept override { abandon(false); }

  // The dispatcher (plan_run's Dispatcher concept).
  void dispatch(call_id c) {
    const auto& call = plan_[c];
    const auto now = clock::now();
    if (!run_.may_start(c, now)) {
      finish(c);
      return;
    }
    auto& req = requests_[c];
    req.messages = run_.messages(call.group);
    run_.share(req);
    run_.prepare(c, now, req);
    phase_[c].store(running, std::memory_order_relaxed);
    const bool local = run_.policy_decides(c);
    if (!local && !async_.empty() && async_[call.backend].is_async()) {
      const auto& backend = async_[call.backend];
      try {
        if (streams_tokens(c) && backend.streams_async())
          backend.start_stream(req, token_callback(on_token_), completion(shared_from_this(), c));
        else {
          // No streaming form: complete() hands the whole answer to on_token as one token, as
          // generate_stream does for a synchronous backend without a streaming form.
          if (streams_tokens(c)) whole_answer_as_token_ = true;  // the sink's own flag
          backend.start(req, completion(shared_from_this(), c));
        }
      } catch (...) {
        complete(c, nullptr, std::current_exception());
      }
    } else if (local && uses_lane_) {
      lane_.post({&call_entry, shared_from_this(), c});
    } else {
      sched_.post({&call_entry, shared_from_this(), c});
    }
  }
  void skipped(call_id c) { finish(c); }

 private:
  static constexpr std::uint8_t queued = 0, running = 1, completing = 2, done = 3;

  // Only the sink streams, to the caller's on_token; a policy at the sink does not stream.
  [[nodiscard]] bool streams_tokens(call_id c) const noexcept {
    return c == plan_.sink() && static_cast<bool>(opt_.on_token);
  }

  const std::string& backend_name(std::uint32_t b) const noexcept {
    return async_.empty() ? sync_[b].name() : async_[b].name();
  }

  static void start_entry(void* self, std::uint32_t) { static_cast<async_run*>(self)->start(); }
  static void call_entry(void* self, std::uint32_t c) {
    static_cast<async_run*>(self)->run_sync_call(c);
  }
  static void ready_entry(void* self, std::uint32_t g) { static_cast<async_run*>(self)->ready(g); }

  // Policy work that may call backends (a sparse selection before group g, the policy at the
  // sink) runs on the executor's policy lane when backends are asynchronous: a policy's call
  // parks its thread until the completion, and on the scheduler's own thread that completion may
  // never come (an event loop waiting on itself), or would stall every other transfer on it (an
  // HTTP client's I/O thread).
  [[nodiscard]] bool on_lane(group_id g) const noexcept {
    return uses_lane_ && run_.policy_selects() && !plan_.inputs_of(g).empty();
  }

  void start() {
    if (run_.stop().stop_possible()) {
      // Runs the callback at once if stop was already requested.
      stop_callback_.emplace(run_.stop(), stopper{weak_from_this()});
    }
    if (run_.deadline() != clock::time_point::max())
      timer_.schedule(run_.deadline(), weak_from_this());
    for (group_id g = 0; g < plan_.group_count(); ++g)
      if (plan_.inputs_of(g).empty()) ready(g);
  }

  struct stopper {
    std::weak_ptr<async_run> run;
    void operator()() const noexcept {
      if (auto r = run.lock()) r->abandon(true);
    }
  };

  void ready(group_id g) {
    if (abandoned_.load(std::memory_order_acquire)) return;
    run_.ready(g, *this);
  }

  // A synchronous backend's call (or the policy at the sink), on a scheduler thread.
  void run_sync_call(call_id c) {
    if (abandoned_.load(std::memory_order_acquire)) return;
    std::uint8_t expected = running;
    if (!phase_[c].compare_exchange_strong(expected, completing, std::memory_order_acq_rel)) return;
    auto& rec = run_.record(c);
    const auto& req = requests_[c];
    if (async_.empty() || run_.policy_decides(c)) {
      run_.invoke(c, async_.empty() ? sync_[plan_[c].backend] : backend_ref(), req);
    } else {
      try {
        const auto& backend = async_[plan_[c].backend];
        record_response(rec, streams_tokens(c)
                                 ? backend.generate_stream(req, token_callback(on_token_))
                                 : backend.generate(req));
      } catch (...) {
        record_exception(rec, std::current_exception());
      }
    }
    run_.ended(c, clock::now(), req.deadline);
    finish(c);
  }

  // Publishes call c, readies the groups it completes, and delivers the run after the last.
  void finish(call_id c) {
    phase_[c].store(done, std::memory_order_release);
    if (opt_.on_call) {
      std::lock_guard lock(callback_mutex_);
      if (!abandoned_.load(std::memory_order_relaxed)) opt_.on_call(run_.record(c));
    }
    const bool last = run_.complete(c, [this](group_id g) {
      if (on_lane(g))
        lane_.post({&ready_entry, shared_from_this(), g});
      else
        ready(g);
    });
    if (!last || delivered_.exchange(true, std::memory_order_acq_rel)) return;
    // Every call is done; nothing touches the records again.
    deliver(run_.conclude(clock::now(), run_.stop().stop_requested()));
  }

  // Ends the run now (deadline or cancellation), recording calls not done.
  void abandon(bool cancelled) noexcept {
    if (delivered_.exchange(true, std::memory_order_acq_rel)) return;
    {
      std::lock_guard lock(callback_mutex_);
      abandoned_.store(true, std::memory_order_release);
    }
    result res;
    try {
      res = run_.abandon(
          clock::now(), cancelled,
          [this](call_id c) {
            const auto ph = phase_[c].load(std::memory_order_acquire);
            return ph == done     ? call_progress::finished
                   : ph == queued ? call_progress::queued
                                  : call_progress::running;
          },
          [this](std::uint32_t b) -> const std::string& { return backend_name(b); });
    } catch (...) {
      res.status = run_status::failed;
      res.error = "moa: out of memory while ending an abandoned run";
    }
    deliver(std::move(res));
  }

  void deliver(result res) noexcept {
    // A callback that throws breaks the noexcept contract of completions: std::terminate.
    on_done_(std::move(res));
    // The stop callback stays registered until the state dies: resetting it here could race
    // with its own registration when stop was requested before the run started.
  }

  // Copies, so that completions arriving after an abandoned run never see dangling state.
  const plan plan_;
  std::span<const backend_ref> sync_;
  std::span<const async_backend_ref> async_;
  const request prompt_;
  const run_options opt_;
  // The sink's tokens go to the caller's on_token; token_callback needs a mutable callable.
  std::function<void(std::string_view)> on_token_{opt_.on_token};
  bool whole_answer_as_token_ = false;  // written before the sink starts, read at its completion
  std::shared_ptr<const void> keep_alive_;
  scheduler_ref sched_;
  scheduler_ref lane_;  // policy work with asynchronous backends (see on_lane)
  bool uses_lane_ = false;
  deadline_timer& timer_;
  on_done_fn on_done_;
  plan_run run_;
  std::vector<request> requests_;  // each call's request, alive until its completion
  std::unique_ptr<std::atomic<std::uint8_t>[]> phase_;
  std::atomic<bool> delivered_{false};
  std::atomic<bool> abandoned_{false};
  std::mutex callback_mutex_;
  std::optional<std::stop_callback<stopper>> stop_callback_;
};

}  // namespace moa::detail
