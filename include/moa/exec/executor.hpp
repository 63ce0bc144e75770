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
#include <chrono>
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
#include "moa/core/result.hpp"
#include "moa/exec/plan_run.hpp"
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
    check_run(p, backends, opt);
    // Plan order is a topological order: the inline dispatcher needs no countdowns, and a group
    // is built when its first call comes, into the one request it reuses.
    plan_run run(p, prompt, opt);
    run.describe([&](std::uint32_t b) -> const std::string& { return backends[b].name(); });
    run.use_policy(backends);
    request work;
    run.share(work);
    std::optional<group_id> built;
    std::optional<std::string> skip_reason;
    // Inline calls run back to back, so the end of one call is the start of the next: one clock
    // read per call instead of two.
    auto now = run.t0();
    for (call_id c = 0; c < p.size(); ++c) {
      const auto& call = p[c];
      if (!run.may_start(c, now)) continue;
      if (built != call.group) {
        skip_reason = run.build_into(call.group, work.messages);
        built = call.group;
      }
      auto& rec = run.record(c);
      if (skip_reason) {
        rec.status = call_status::skipped;
        rec.error = *skip_reason;
        continue;
      }
      run.prepare(c, now, work);
      run.invoke(c, backends[call.backend], work);
      now = clock::now();
      run.ended(c, now, work.deadline);
      if (opt.on_call) opt.on_call(rec);
    }
    return run.conclude(now, run.stop().stop_requested());
  }
};

/// @brief Runs calls in parallel on a thread pool: all calls of a layer at once, each call as
/// soon as its inputs are ready, the aggregator last.
///
/// The thread that finishes the last input of a group runs one of the group's calls itself and
/// hands the others to the pool, so a dispatched call costs at most one thread wake (none when a
/// worker is spinning), and the calling thread takes part in the run instead of only waiting:
/// while its run is unfinished it runs the run's own queued calls (never another run's), and
/// spins briefly before it sleeps. A run's deadline and stop token are enforced even against
/// backends that ignore them: execute() stops waiting, records the calls still running as timed
/// out or cancelled, and returns; their late answers are dropped. So the caller of a run with a
/// deadline or a stop token runs none of its calls (one it ran could not be abandoned).
///
/// Thread-safety: many runs may execute at once on one executor. Backends (and the span of
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
    check_run(p, backends, opt);
    auto run = std::make_shared<state>(p, backends, prompt, opt, keep_alive, pool_);
    run->start();
    return run->wait();
  }

 private:
  class state : public std::enable_shared_from_this<state> {
   public:
    state(const plan& p, std::span<const backend_ref> backends, const request& prompt,
          const run_options& opt, std::shared_ptr<const void> keep_alive, thread_pool& pool)
        : copies_(may_end_early(prompt, opt)
                      ? std::make_unique<const copies>(copies{p, prompt, opt})
                      : nullptr),
          plan_(copies_ ? copies_->p : p),
          backends_(backends),
          prompt_(copies_ ? copies_->prompt : prompt),
          opt_(copies_ ? copies_->opt : opt),
          keep_alive_(std::move(keep_alive)),
          pool_(pool),
          run_(plan_, prompt_, opt_),
          phase_(std::make_unique<std::atomic<std::uint8_t>[]>(p.size())) {
      run_.describe([&](std::uint32_t b) -> const std::string& { return backends[b].name(); });
      run_.use_policy(backends_);
      run_.arm();
    }

    void start() {
      here h{*this};
      run_.start(h);
      // The caller takes a call itself only when nothing can make it stop waiting early: a call
      // it runs cannot be abandoned at the deadline or on cancellation.
      if (bounded() && h.mine)
        pool_.submit({&task_entry, shared_from_this(), *h.mine});
      else
        drain(h.mine);
    }

    result wait() {
      bool deadline_hit = false;
      bool cancelled = false;
      const auto& stop = run_.stop();
      const auto deadline = run_.deadline();
      if (bounded()) {
        // Spin briefly before sleeping (the last calls are often microseconds from done), but
        // run nothing: the caller must be free to return at the deadline or on cancellation.
        detail::spin_until(
            [&] {
              return finished_.load(std::memory_order_acquire) || stop.stop_requested() ||
                     clock::now() >= deadline;
            },
            caller_spin);
      } else {
        help();
      }
      {
        std::unique_lock lock(done_mutex_);
        waiting_ = true;
        const auto is_done = [this] { return done_; };
        const bool finished = run_.deadline() == clock::time_point::max()
                                  ? done_cv_.wait(lock, stop, is_done)
                                  : done_cv_.wait_until(lock, stop, run_.deadline(), is_done);
        cancelled = stop.stop_requested();
        deadline_hit = !finished && !cancelled;
      }
      if (done_ready())  // every call is done and no thread touches the records again
        return run_.conclude(clock::now(), cancelled, deadline_hit);
      {
        std::lock_guard lock(callback_mutex_);
        abandoned_.store(true, std::memory_order_release);
      }
      return run_.abandon(
          clock::now(), cancelled,
          [this](call_id c) {
            const auto ph = phase_[c].load(std::memory_order_acquire);
            return ph == done      ? call_progress::finished
                   : ph == running ? call_progress::running
                                   : call_progress::queued;
          },
          [this](std::uint32_t b) -> const std::string& { return backends_[b].name(); });
    }

   private:
    // How long a waiting caller spins (for its run's end or its run's queued calls) before it
    // sleeps: as long as an idle worker at most.
    static constexpr std::chrono::microseconds caller_spin = thread_pool::max_spin;

    [[nodiscard]] bool bounded() const noexcept {
      return run_.deadline() != clock::time_point::max() || run_.stop().stop_possible();
    }

    // The caller of an unbounded run runs the run's own queued calls (which would otherwise wait
    // for a worker while this thread sleeps), never another run's, whose calls may be long and
    // would delay this run's return.
    void help() {
      pool_.help(this, [this] { return finished_.load(std::memory_order_acquire); });
    }

    // The dispatcher of one thread: the first ready call stays on it, the others go to the pool.
    struct here {
      state& s;
      std::optional<call_id> mine{};
      void dispatch(call_id c) {
        if (!mine)
          mine = c;
        else
          s.pool_.submit({&task_entry, s.shared_from_this(), c});
      }
      void skipped(call_id c) { s.finish(c, *this); }
    };

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

    std::optional<call_id> run_call(call_id c) {
      if (abandoned_.load(std::memory_order_acquire)) return std::nullopt;
      phase_[c].store(running, std::memory_order_relaxed);
      const auto now = clock::now();
      if (run_.may_start(c, now)) {
        const auto& call = plan_[c];
        request req;
        req.messages = run_.messages(call.group);
        run_.share(req);
        run_.prepare(c, now, req);
        run_.invoke(c, backends_[call.backend], req);
        run_.ended(c, clock::now(), req.deadline);
      }
      here h{*this};
      finish(c, h);
      return h.mine;
    }

    // Publishes call c and readies the groups it completes.
    void finish(call_id c, here& h) {
      phase_[c].store(done, std::memory_order_release);
      if (opt_.on_call) {
        std::lock_guard lock(callback_mutex_);
        if (!abandoned_.load(std::memory_order_relaxed)) opt_.on_call(run_.record(c));
      }
      if (run_.complete(c, [&](group_id g) { run_.ready(g, h); })) {
        std::lock_guard lock(done_mutex_);
        done_ = true;
        // Set after done_, so a caller that sees it finds done_ set once it takes the lock.
        finished_.store(true, std::memory_order_release);
        if (waiting_) done_cv_.notify_all();  // a caller that saw finished_ never sleeps
      }
    }

    // A run that may be abandoned (it has a deadline or a stop token) copies the plan, the
    // request and the options, so that threads still running after execute() returned never see
    // dangling state. A run that cannot end early returns only after its last call is done, so
    // it reads the caller's and saves those allocations on every run.
    struct copies {
      plan p;
      request prompt;
      run_options opt;
    };
    static bool may_end_early(const request& prompt, const run_options& opt) noexcept {
      return prompt.deadline != clock::time_point::max() || opt.timeout != clock::duration::max() ||
             opt.stop.stop_possible() || prompt.stop.stop_possible();
    }
    std::unique_ptr<const copies> copies_;
    const plan& plan_;
    std::span<const backend_ref> backends_;
    const request& prompt_;
    const run_options& opt_;
    std::shared_ptr<const void> keep_alive_;
    thread_pool& pool_;
    plan_run run_;
    std::unique_ptr<std::atomic<std::uint8_t>[]> phase_;
    std::atomic<bool> abandoned_{false};
    std::atomic<bool> finished_{false};  // done_, readable by a spinning caller without the lock
    std::mutex callback_mutex_;
    std::mutex done_mutex_;
    std::condition_variable_any done_cv_;
    bool done_ = false;
    bool waiting_ = false;  // the caller sleeps (or is about to) on done_cv_; under done_mutex_
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
