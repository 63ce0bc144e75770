// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Executors run a plan against a set of backends.
///
/// | executor              | runs calls                         | when to use                    |
/// |-----------------------|------------------------------------|--------------------------------|
/// | `inline_executor`     | one after another, on the caller   | tests, determinism, one core   |
/// | `concurrent_executor` | in parallel on a pool, as soon as their inputs are ready | real
/// backends |
///
/// Both implement the same failure policy (run_options) and return the same result.
///
/// @code{.cpp}
/// moa::concurrent_executor pool(8);
/// moa::result r = pool.execute(plan, backends, moa::make_request("Why is the sky blue?"));
/// @endcode

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stop_token>
#include <thread>
#include <vector>

#include "moa/core/backend.hpp"
#include "moa/exec/detail/run_common.hpp"
#include "moa/exec/result.hpp"
#include "moa/exec/run_options.hpp"
#include "moa/exec/thread_pool.hpp"
#include "moa/topology/plan.hpp"

namespace moa {

/// @brief Runs calls one after another on the calling thread, in plan order. Deterministic.
///
/// It cannot interrupt a backend: deadlines and cancellation are checked between calls and
/// handed to backends through the request, which well-behaved backends honour.
class inline_executor {
 public:
  result execute(const plan& p, std::span<const backend_ref> backends, const request& prompt,
                 const run_options& opt = {}, const std::shared_ptr<const void>& = {}) const {
    detail::check_run(p, backends, opt);
    const auto t0 = clock::now();
    const auto deadline = std::min(prompt.deadline, detail::saturating_add(t0, opt.timeout));
    result res;
    res.trace.resize(p.size());
    request work;
    work.sampling = prompt.sampling;
    work.stop = opt.stop.stop_possible() ? opt.stop : prompt.stop;
    const auto& stop = work.stop;
    const auto policy = detail::make_policy_run(opt, p, backends, t0, deadline, stop);
    std::optional<group_id> built;
    std::optional<std::string> skip_reason;
    call_list used;
    std::size_t trimmed = 0;
    bool deadline_hit = false;
    // Inline calls run back to back, so the end of one call is the start of the next: one clock
    // read per call instead of two.
    auto now = t0;
    for (call_id c = 0; c < p.size(); ++c) {
      auto& rec = res.trace[c];
      detail::describe_call(rec, p, c, backends);
      const auto& call = p[c];
      rec.start = rec.end = now - t0;
      if (stop.stop_requested()) {
        rec.status = call_status::cancelled;
        rec.error = "the run was cancelled before this call started";
        continue;
      }
      if (now >= deadline) {
        deadline_hit = true;
        rec.status = call_status::timed_out;
        rec.error = "the run passed its deadline before this call started";
        continue;
      }
      if (built != call.group) {
        skip_reason = detail::build_group(p, call.group, res.trace, prompt, opt, work.messages,
                                          used, trimmed, policy.get());
        built = call.group;
      }
      rec.references = used;
      rec.trimmed_tokens = trimmed;
      if (skip_reason) {
        rec.status = call_status::skipped;
        rec.error = *skip_reason;
        continue;
      }
      work.context = {c, call.layer, call.role};
      work.deadline = std::min(deadline, detail::saturating_add(now, opt.call_timeout));
      if (c == p.sink() && policy)
        detail::invoke_policy(*policy, p, c, res.trace, prompt, opt, rec);
      else
        detail::invoke(backends[call.backend], work, rec, c == p.sink() ? &opt.on_token : nullptr);
      now = clock::now();
      rec.end = now - t0;
      detail::enforce_limits(rec, now, work.deadline, stop);
      if (rec.status == call_status::timed_out && now >= deadline) deadline_hit = true;
      if (opt.on_call) opt.on_call(rec);
    }
    res.elapsed = now - t0;
    detail::conclude(res, p, opt, deadline_hit, stop.stop_requested());
    if (policy) detail::attach_report(res, *policy);
    return res;
  }
};

/// @brief Runs calls in parallel on a thread pool: all calls of a layer at once, each call as
/// soon as its inputs are ready, the aggregator last.
///
/// The thread that finishes the last input of a group runs one of the group's calls itself and
/// hands the others to the pool, so a dispatched call costs at most one thread wake, and the
/// calling thread takes part in the run instead of only waiting. A run's deadline and stop token
/// are enforced even against backends that ignore them: execute() stops waiting, records the
/// calls still running as timed out or cancelled, and returns; their late answers are dropped.
///
/// Thread-safe: many runs may execute at once on one executor. Backends (and the span of
/// backend_refs) must stay alive until the executor is destroyed, or be kept alive by the
/// `keep_alive` owner passed to execute() (pipelines do this).
class concurrent_executor {
 public:
  explicit concurrent_executor(std::size_t threads = default_threads()) : pool_(threads) {}

  static std::size_t default_threads() noexcept {
    // LLM calls mostly wait on I/O, so more threads than cores pays off.
    return std::max<std::size_t>(4, std::thread::hardware_concurrency());
  }

  [[nodiscard]] std::size_t threads() const noexcept { return pool_.size(); }
  [[nodiscard]] thread_pool::stats statistics() const { return pool_.statistics(); }

  result execute(const plan& p, std::span<const backend_ref> backends, const request& prompt,
                 const run_options& opt = {},
                 const std::shared_ptr<const void>& keep_alive = {}) const {
    detail::check_run(p, backends, opt);
    auto run = std::make_shared<state>(p, backends, prompt, opt, keep_alive, pool_);
    run->start();
    return run->wait();
  }

 private:
  class state : public std::enable_shared_from_this<state> {
   public:
    state(const plan& p, std::span<const backend_ref> backends, const request& prompt,
          const run_options& opt, std::shared_ptr<const void> keep_alive, thread_pool& pool)
        : plan_(p),
          backends_(backends),
          prompt_(prompt),
          opt_(opt),
          keep_alive_(std::move(keep_alive)),
          pool_(pool),
          t0_(clock::now()),
          deadline_(std::min(prompt.deadline, detail::saturating_add(t0_, opt.timeout))),
          records_(p.size()),
          phase_(std::make_unique<std::atomic<std::uint8_t>[]>(p.size())),
          pending_(std::make_unique<std::atomic<std::uint32_t>[]>(p.group_count())),
          groups_(p.group_count()),
          remaining_(static_cast<std::uint32_t>(p.size())) {
      stop_ = opt.stop.stop_possible() ? opt.stop : prompt.stop;
      policy_ = detail::make_policy_run(opt_, plan_, backends_, t0_, deadline_, stop_);
      for (group_id g = 0; g < p.group_count(); ++g)
        pending_[g].store(static_cast<std::uint32_t>(p.inputs_of(g).size()),
                          std::memory_order_relaxed);
      for (call_id c = 0; c < p.size(); ++c) detail::describe_call(records_[c], plan_, c, backends);
    }

    void start() {
      std::optional<call_id> mine;
      for (group_id g = 0; g < plan_.group_count(); ++g)
        if (plan_.inputs_of(g).empty()) ready(g, mine);
      // The caller takes a call itself only when nothing can make it stop waiting early: a call
      // it runs cannot be abandoned at the deadline or on cancellation.
      const bool bounded = deadline_ != clock::time_point::max() || stop_.stop_possible();
      if (bounded && mine)
        pool_.submit({&task_entry, shared_from_this(), *mine});
      else
        drain(mine);
    }

    result wait() {
      result res;
      bool deadline_hit = false;
      bool cancelled = false;
      {
        std::unique_lock lock(done_mutex_);
        const auto is_done = [this] { return done_; };
        const bool finished = deadline_ == clock::time_point::max()
                                  ? done_cv_.wait(lock, stop_, is_done)
                                  : done_cv_.wait_until(lock, stop_, deadline_, is_done);
        cancelled = stop_.stop_requested();
        deadline_hit = !finished && !cancelled;
      }
      const bool abandon = !done_ready();
      if (abandon) {
        {
          std::lock_guard lock(callback_mutex_);
          abandoned_.store(true, std::memory_order_release);
        }
        res.trace = detail::abandoned_trace(
            plan_, records_, cancelled, clock::now() - t0_,
            [this](call_id c) {
              const auto ph = phase_[c].load(std::memory_order_acquire);
              return ph == done      ? detail::call_progress::finished
                     : ph == running ? detail::call_progress::running
                                     : detail::call_progress::queued;
            },
            [this](std::uint32_t b) -> const std::string& { return backends_[b].name(); });
        res.elapsed = clock::now() - t0_;
      } else {
        // Every call is done and no thread touches records_ after the last completion.
        res.trace = std::move(records_);
        res.elapsed = clock::now() - t0_;
      }
      deadline_hit = deadline_hit || deadline_hit_.load(std::memory_order_relaxed);
      detail::conclude(res, plan_, opt_, deadline_hit, cancelled);
      if (policy_) detail::attach_report(res, *policy_);
      return res;
    }

   private:
    bool done_ready() {
      std::lock_guard lock(done_mutex_);
      return done_;
    }

    static constexpr std::uint8_t queued = 0, running = 1, done = 2;

    static void task_entry(void* self, std::uint32_t c) {
      std::optional<call_id> next = c;
      static_cast<state*>(self)->drain(next);
    }

    void drain(std::optional<call_id> next) {
      while (next) next = run_call(*next);
    }

    // Group g has all its inputs: build its request once, then dispatch its calls. One call is
    // returned in `mine` for the current thread (if it has none yet); the rest go to the pool.
    void ready(group_id g, std::optional<call_id>& mine) {
      auto& grp = groups_[g];
      const auto skip = detail::build_group(plan_, g, records_, prompt_, opt_, grp.messages,
                                            grp.used, grp.trimmed, policy_.get());
      for (call_id c : plan_.calls_of(g)) {
        records_[c].references = grp.used;
        records_[c].trimmed_tokens = grp.trimmed;
        if (skip) {
          detail::record_not_run(records_[c], *skip, stop_.stop_requested());
          finish(c, mine);
        } else if (!mine) {
          mine = c;
        } else {
          pool_.submit({&task_entry, shared_from_this(), c});
        }
      }
    }

    std::optional<call_id> run_call(call_id c) {
      std::optional<call_id> next;
      if (abandoned_.load(std::memory_order_acquire)) return next;
      auto& rec = records_[c];
      const auto& call = plan_[c];
      phase_[c].store(running, std::memory_order_relaxed);
      const auto now = clock::now();
      rec.start = rec.end = now - t0_;
      if (stop_.stop_requested()) {
        rec.status = call_status::cancelled;
        rec.error = "the run was cancelled before this call started";
      } else if (now >= deadline_) {
        deadline_hit_.store(true, std::memory_order_relaxed);
        rec.status = call_status::timed_out;
        rec.error = "the run passed its deadline before this call started";
      } else {
        request req;
        req.messages = groups_[call.group].messages;
        req.sampling = prompt_.sampling;
        req.stop = stop_;
        req.context = {c, call.layer, call.role};
        req.deadline = std::min(deadline_, detail::saturating_add(now, opt_.call_timeout));
        if (c == plan_.sink() && policy_)
          detail::invoke_policy(*policy_, plan_, c, records_, prompt_, opt_, rec);
        else
          detail::invoke(backends_[call.backend], req, rec,
                         c == plan_.sink() ? &opt_.on_token : nullptr);
        const auto end = clock::now();
        rec.end = end - t0_;
        detail::enforce_limits(rec, end, req.deadline, stop_);
        if (rec.status == call_status::timed_out && end >= deadline_)
          deadline_hit_.store(true, std::memory_order_relaxed);
      }
      finish(c, next);
      return next;
    }

    // Publishes call c and readies the groups it completes.
    void finish(call_id c, std::optional<call_id>& mine) {
      phase_[c].store(done, std::memory_order_release);
      if (opt_.on_call) {
        std::lock_guard lock(callback_mutex_);
        if (!abandoned_.load(std::memory_order_relaxed)) opt_.on_call(records_[c]);
      }
      for (group_id g : plan_.consumers_of(c))
        if (pending_[g].fetch_sub(1, std::memory_order_acq_rel) == 1) ready(g, mine);
      if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard lock(done_mutex_);
        done_ = true;
        done_cv_.notify_all();
      }
    }

    struct group_state {
      std::vector<message> messages;
      call_list used;
      std::size_t trimmed = 0;
    };

    // Copies, so that threads still running after an abandoned run never see dangling state.
    const plan plan_;
    std::span<const backend_ref> backends_;
    const request prompt_;
    const run_options opt_;
    std::shared_ptr<const void> keep_alive_;
    thread_pool& pool_;
    const clock::time_point t0_;
    const clock::time_point deadline_;
    std::stop_token stop_;
    std::vector<call_record> records_;
    std::unique_ptr<std::atomic<std::uint8_t>[]> phase_;
    std::unique_ptr<std::atomic<std::uint32_t>[]> pending_;
    std::vector<group_state> groups_;
    std::unique_ptr<detail::policy_run> policy_;  // null without an aggregation policy
    std::atomic<std::uint32_t> remaining_;
    std::atomic<bool> abandoned_{false};
    std::atomic<bool> deadline_hit_{false};
    std::mutex callback_mutex_;
    std::mutex done_mutex_;
    std::condition_variable_any done_cv_;
    bool done_ = false;
  };

  mutable thread_pool pool_;
};

/// @brief Something that runs plans: inline_executor, concurrent_executor, or your own.
template <class E>
concept Executor = requires(const E& e, const plan& p, std::span<const backend_ref> b,
                            const request& r, const run_options& o,
                            const std::shared_ptr<const void>& keep) {
  { e.execute(p, b, r, o, keep) } -> std::same_as<result>;
};

static_assert(Executor<inline_executor>);
static_assert(Executor<concurrent_executor>);

}  // namespace moa
