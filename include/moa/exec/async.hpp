// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Asynchronous runs: start a run and get a std::future or a completion callback; drive backends
/// that are asynchronous themselves (start a call, get called back) without parking a thread per
/// call; schedule everything on the caller's own executor (a thread pool, an event loop).
///
/// | piece                   | what it is                                                      |
/// |-------------------------|-----------------------------------------------------------------|
/// | `Scheduler`             | something you can `post(task)` to: moa::thread_pool, an Asio    |
/// |                         | io_context behind a three-line adapter, your server's pool      |
/// | `AsyncBackend`          | `b.generate_async(const request&, moa::completion)`: starts a   |
/// |                         | call and returns at once; the backend calls the completion later |
/// | `async_backend_ref`     | a handle on an async backend, or on a synchronous one           |
/// | `async_executor`        | runs plans: `execute_async(...)` -> future or callback          |
///
/// Synchronous backends keep working unchanged: their calls are posted to the scheduler and
/// block one of its threads while they run, as on the concurrent executor. Asynchronous backends
/// are started on whichever thread readied their inputs and complete on whichever thread calls
/// the completion; no thread waits for them.
///
/// @code{.cpp}
/// moa::thread_pool pool(2);                 // or your own Scheduler
/// moa::async_executor ex(pool);
/// std::future<moa::result> f = pipeline.run_async(ex, moa::make_request("Why is the sky blue?"));
/// ex.execute_async(plan, async_refs, request, opt, {}, [](moa::result r) { use(r); });
/// @endcode
///
/// Cancellation (run_options::stop or the request's stop token) and deadlines end the run at once,
/// even while calls are in flight: the result is delivered with those calls cancelled or timed
/// out, and their late completions are dropped. Deadlines are watched by one timer thread per
/// executor, started the first time a run has one.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <span>
#include <stop_token>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "moa/core/async_backend.hpp"
#include "moa/core/backend.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/core/result.hpp"
#include "moa/exec/detail/async_run.hpp"
#include "moa/exec/executor.hpp"
#include "moa/exec/run_options.hpp"
#include "moa/exec/scheduler.hpp"
#include "moa/exec/thread_pool.hpp"
#include "moa/topology/plan.hpp"

namespace moa {

/// @brief Runs plans asynchronously on a Scheduler: execute_async() returns at once with a
/// std::future, or calls a callback with the result.
///
/// The callback runs on the thread that ended the run: a scheduler thread, the thread that
/// completed the last backend call, the thread that requested stop, or the deadline timer's. Keep
/// it short (post onward for heavy work); it must not throw. on_call observers are serialised and
/// never called after the result was delivered.
///
/// The scheduler, the backends and the span of refs must outlive every run (or be kept alive by
/// `keep_alive`; pipelines pass their storage); destroy the executor only after its runs ended.
/// execute() (the Executor concept) waits for the future: never call it from a thread the
/// scheduler needs to make progress (e.g. from inside a single-threaded io_context).
///
/// @code{.cpp}
/// asio::io_context io;
/// struct on_io { asio::io_context& io; void post(moa::scheduled_task t) { asio::post(io, t); } };
/// on_io sched{io};
/// moa::async_executor ex(sched);
/// ex.execute_async(plan, refs, moa::make_request("hi"), {}, {}, [](moa::result r) { ... });
/// io.run();
/// @endcode
class async_executor {
 public:
  /// Threads of the policy lane: aggregation policies that call backends (judge, rank-fuse,
  /// sparse) make those calls there when the backends are asynchronous, so a policy never parks
  /// a scheduler thread that the completion it waits for may need. Each policy call in flight
  /// holds one lane thread; runs beyond that wait their turn for the policy step only.
  static constexpr std::size_t default_policy_threads = 4;

  /// Runs on a pool of its own with `threads` threads.
  explicit async_executor(std::size_t threads = 2,
                          std::size_t policy_threads = default_policy_threads)
      : own_(std::make_unique<thread_pool>(threads)),
        sched_(*own_),
        lane_threads_(checked_lane(policy_threads)) {}

  /// Runs on the caller's scheduler, which must outlive the executor's runs.
  template <Scheduler S>
  requires(!std::same_as<std::remove_cvref_t<S>, async_executor>) explicit async_executor(
      S& s, std::size_t policy_threads = default_policy_threads)
      : sched_(s), lane_threads_(checked_lane(policy_threads)) {}

  async_executor(const async_executor&) = delete;
  async_executor& operator=(const async_executor&) = delete;

  /// Starts a run; the future holds its result.
  std::future<result> execute_async(const plan& p, std::span<const backend_ref> backends,
                                    const request& prompt, const run_options& opt = {},
                                    const std::shared_ptr<const void>& keep_alive = {}) const {
    return with_future([&](auto done) { start(p, backends, {}, prompt, opt, keep_alive, done); });
  }
  std::future<result> execute_async(const plan& p, std::span<const async_backend_ref> backends,
                                    const request& prompt, const run_options& opt = {},
                                    const std::shared_ptr<const void>& keep_alive = {}) const {
    return with_future([&](auto done) { start(p, {}, backends, prompt, opt, keep_alive, done); });
  }
  /// Starts a run; `on_done` receives its result (see the class comment for the thread).
  void execute_async(const plan& p, std::span<const backend_ref> backends, const request& prompt,
                     const run_options& opt, const std::shared_ptr<const void>& keep_alive,
                     std::function<void(result)> on_done) const {
    start(p, backends, {}, prompt, opt, keep_alive, std::move(on_done));
  }
  void execute_async(const plan& p, std::span<const async_backend_ref> backends,
                     const request& prompt, const run_options& opt,
                     const std::shared_ptr<const void>& keep_alive,
                     std::function<void(result)> on_done) const {
    start(p, {}, backends, prompt, opt, keep_alive, std::move(on_done));
  }

  /// Runs and waits (the Executor concept). On the executor's own pool, the waiting thread runs
  /// the run's queued work itself, as the concurrent executor's caller does, unless the run has
  /// a deadline or a stop token (it must stay free to return then).
  result execute(const plan& p, std::span<const backend_ref> backends, const request& prompt,
                 const run_options& opt = {},
                 const std::shared_ptr<const void>& keep_alive = {}) const {
    return start_and_wait(p, backends, {}, prompt, opt, keep_alive);
  }
  result execute(const plan& p, std::span<const async_backend_ref> backends, const request& prompt,
                 const run_options& opt = {},
                 const std::shared_ptr<const void>& keep_alive = {}) const {
    return start_and_wait(p, {}, backends, prompt, opt, keep_alive);
  }

 private:
  static std::size_t checked_lane(std::size_t threads) {
    if (threads == 0)
      MOA_THROW(invalid_argument(
          "moa::async_executor: policy_threads must be at least 1 (policies that call backends "
          "run there when the backends are asynchronous)"));
    return threads;
  }

  template <class Start>
  static std::future<result> with_future(Start start) {
    auto promise = std::make_shared<std::promise<result>>();
    auto future = promise->get_future();
    start([promise](result r) { promise->set_value(std::move(r)); });
    return future;
  }

  std::shared_ptr<detail::async_run> start(const plan& p, std::span<const backend_ref> sync,
                                           std::span<const async_backend_ref> as,
                                           const request& prompt, const run_options& opt,
                                           const std::shared_ptr<const void>& keep_alive,
                                           std::function<void(result)> on_done) const {
    if (!on_done)
      MOA_THROW(invalid_argument("moa::async_executor: the completion callback is empty"));
    if (as.empty())
      check_run(p, sync, opt);
    else
      check_run(p, as, opt, "async_backend_ref");
    auto run = std::make_shared<detail::async_run>(
        p, sync, as, prompt, opt, keep_alive, sched_,
        opt.aggregation && !as.empty() ? policy_lane() : sched_, timer_, std::move(on_done));
    run->launch();
    return run;
  }

  // execute(): a future would park the caller at once and cost a wake at the end; the caller
  // instead helps (own pool, unbounded run), then spins briefly, and only then sleeps.
  result start_and_wait(const plan& p, std::span<const backend_ref> sync,
                        std::span<const async_backend_ref> as, const request& prompt,
                        const run_options& opt,
                        const std::shared_ptr<const void>& keep_alive) const {
    struct waiter {
      result res;
      std::atomic<bool> ready{false};  // res is written
      std::mutex mutex;
      std::condition_variable cv;
      bool sleeping = false;  // under mutex
    };
    auto w = std::make_shared<waiter>();
    auto run = start(p, sync, as, prompt, opt, keep_alive, [w](result r) {
      w->res = std::move(r);
      std::lock_guard lock(w->mutex);
      w->ready.store(true, std::memory_order_release);
      if (w->sleeping) w->cv.notify_one();
    });
    const auto ready = [&] { return w->ready.load(std::memory_order_acquire); };
    if (own_ && !run->bounded()) {
      own_->help(run.get(), ready);
    } else {
      detail::spin_until(ready, thread_pool::max_spin);
    }
    run.reset();  // the run's last owner may be a task still queued or a completion in flight
    std::unique_lock lock(w->mutex);
    w->sleeping = true;
    w->cv.wait(lock, ready);
    return std::move(w->res);
  }

  detail::scheduler_ref policy_lane() const {
    std::call_once(lane_once_, [this] { lane_ = std::make_unique<thread_pool>(lane_threads_); });
    return detail::scheduler_ref(*lane_);
  }

  // Destroyed in reverse: the pool drains its queued tasks (which may schedule deadlines) while
  // the timer is still alive.
  mutable detail::deadline_timer timer_;
  std::unique_ptr<thread_pool> own_;
  detail::scheduler_ref sched_;
  std::size_t lane_threads_ = default_policy_threads;
  mutable std::once_flag lane_once_;
  mutable std::unique_ptr<thread_pool> lane_;  // made by the first policy run on async backends
};

static_assert(Executor<async_executor>);

}  // namespace moa
