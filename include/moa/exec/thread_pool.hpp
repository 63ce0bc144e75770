// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The worker pool behind the concurrent executor (and the async executor's own threads).
///
/// Hand-written because the executor's contract is narrow and measured: one queue, tasks that are
/// a function pointer plus a shared owner (no allocation per task), and as few thread wakes as
/// the work allows. A general pool (Taskflow, BS::thread_pool) would add a dependency for less
/// control over exactly that.
///
/// Why it spins: the calls of one run come in bursts a few microseconds apart (a layer's calls,
/// then the next layer's when the last of them ends). Parking a worker the moment the queue is
/// empty and waking it for the next layer costs a futex call on each side and a context switch,
/// tens of microseconds against calls that may take one. So an idle worker first spins, for an
/// adaptive budget (doubled when it parked and was woken within max_spin, halved when it was
/// woken after a longer idle, never above max_spin), and parks only after it; a submit wakes a
/// parked worker only for tasks beyond those the spinning workers will take, one at a time (see
/// claim_wake). The bound keeps an idle pool frugal: no thread spins longer than max_spin after its
/// last task.
///
/// Why callers may help: a thread that waits for tasks it submitted itself (a concurrent run's
/// caller) can run them with run_one_of() instead of sleeping while they sit in the queue.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <stop_token>
#include <thread>
#include <vector>

#include "moa/core/error.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace moa {

namespace detail {
/// One polite busy-wait step: tells the core a spin is on (less power, and the sibling
/// hyperthread gets the pipeline).
inline void spin_pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#else
  std::this_thread::yield();
#endif
}

/// Spins until `ready()` or `budget` has passed; true when `ready()`. After a short burst of
/// pauses it yields between checks: on a loaded machine (more runnable threads than cores) a
/// spinner that kept its core would take it from the very thread whose work it waits for.
template <class Ready>
bool spin_until(Ready&& ready, std::chrono::steady_clock::duration budget) {
  if (budget <= std::chrono::steady_clock::duration::zero()) return ready();
  const auto end = std::chrono::steady_clock::now() + budget;
  for (int i = 0; i < 32; ++i) {
    if (ready()) return true;
    spin_pause();
  }
  for (;;) {
    for (int i = 0; i < 4; ++i) {
      if (ready()) return true;
      std::this_thread::yield();
    }
    if (std::chrono::steady_clock::now() >= end) return ready();
  }
}

/// The pool's queue lock: its critical sections are a few instructions, and a std::mutex would
/// make the threads that meet there (spinning workers, a helping caller) sleep in the kernel,
/// which is the cost the spinning is there to avoid. It yields after a short spin, so a holder
/// that was preempted gets the core back.
class spin_mutex {
 public:
  void lock() noexcept {
    for (int n = 0;; ++n) {
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
      while (locked_.load(std::memory_order_relaxed)) {
        if (++n < 128)
          spin_pause();
        else
          std::this_thread::yield();
      }
    }
  }
  bool try_lock() noexcept {
    return !locked_.load(std::memory_order_relaxed) &&
           !locked_.exchange(true, std::memory_order_acquire);
  }
  void unlock() noexcept { locked_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> locked_{false};
};
}  // namespace detail

class thread_pool {
 public:
  /// A unit of work: `run(owner.get(), arg)`. The owner keeps what the task touches alive.
  struct task {
    void (*run)(void*, std::uint32_t) = nullptr;
    std::shared_ptr<void> owner;
    std::uint32_t arg = 0;
    /// Runs it: a task is also a plain callable, for schedulers that take any (moa::Scheduler).
    void operator()() const { run(owner.get(), arg); }
  };

  /// Counters for tests and benchmarks.
  struct stats {
    std::uint64_t submitted = 0;
    std::uint64_t wakes = 0;      ///< notify calls made to wake a parked worker
    std::uint64_t spin_hits = 0;  ///< idle spins that found a task (a park and a wake saved)
    std::uint64_t parks = 0;      ///< times a worker parked (went to sleep) after its spin
    std::uint64_t helped = 0;     ///< tasks run by a waiting caller through run_one_of()
    std::size_t spinning = 0;     ///< workers spinning now
    std::size_t parked = 0;       ///< workers parked now
  };

  /// The longest an idle worker spins before it parks.
  static constexpr std::chrono::microseconds max_spin{50};

  explicit thread_pool(std::size_t threads) {
    if (threads == 0) MOA_THROW(invalid_argument("moa::thread_pool: needs at least one thread"));
    workers_.reserve(threads);
    for (std::size_t i = 0; i < threads; ++i)
      workers_.emplace_back([this](std::stop_token st) { work(st); });
  }

  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  /// Finishes every queued task, then joins.
  ~thread_pool() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_all();
    workers_.clear();
  }

  void submit(task t) {
    bool wake = false;
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(t));
      queued_.store(queue_.size(), std::memory_order_release);
      ++stats_.submitted;
      wake = claim_wake();
    }
    if (wake) ready_.notify_one();
  }

  /// The same as submit(): makes the pool a moa::Scheduler (moa/exec/async.hpp).
  void post(task t) { submit(std::move(t)); }

  /// Runs, on the calling thread, the oldest queued task whose owner is `owner`; false when
  /// there is none. For a thread waiting on work it submitted itself: it never takes another
  /// owner's task, whose length it cannot know.
  bool run_one_of(const void* owner) {
    if (queued_.load(std::memory_order_acquire) == 0) return false;
    task t;
    {
      std::lock_guard lock(mutex_);
      const auto it = std::find_if(queue_.begin(), queue_.end(),
                                   [owner](const task& q) { return q.owner.get() == owner; });
      if (it == queue_.end()) return false;
      t = std::move(*it);
      queue_.erase(it);
      queued_.store(queue_.size(), std::memory_order_release);
      ++stats_.helped;
    }
    t.run(t.owner.get(), t.arg);
    return true;
  }

  /// For a thread waiting until `done()`: runs `owner`'s queued tasks, spinning up to max_spin
  /// between them; returns when `done()` (true) or when a spin saw nothing to do (false: the
  /// owner's work runs elsewhere, so the thread should sleep).
  template <class Done>
  bool help(const void* owner, Done&& done) {
    while (!done()) {
      if (run_one_of(owner)) continue;
      if (!detail::spin_until([&] { return done() || has_queued(); }, max_spin)) return false;
      // What was queued may be another owner's: then wait for done() alone, without taking it.
      if (!done() && !run_one_of(owner) && !detail::spin_until(done, max_spin)) return false;
    }
    return true;
  }

  /// True when a task is queued (a hint: it may be taken at once).
  [[nodiscard]] bool has_queued() const noexcept {
    return queued_.load(std::memory_order_acquire) != 0;
  }

  [[nodiscard]] std::size_t size() const noexcept { return workers_.size(); }

  [[nodiscard]] stats statistics() const {
    std::lock_guard lock(mutex_);
    auto s = stats_;
    s.spinning = spinning_;
    s.parked = parked_;
    return s;
  }

 private:
  // Under the lock: whether to wake a parked worker for the queued tasks. Each spinning worker
  // will take one of them: a wake is for the tasks beyond those. Wakes are chained, one at a
  // time: the woken worker wakes the next if tasks are still waiting when it takes its own. So
  // a burst of submits costs its submitter one wake at most (the futex call is on the critical
  // path of whoever submits), a burst that the submitter and the spinners absorb before the
  // woken worker arrives costs no second one, and a burst of long calls still reaches every
  // worker, one wake latency apart.
  bool claim_wake() {
    if (pending_wakes_ != 0 || parked_ == 0 || queue_.size() <= spinning_) return false;
    ++pending_wakes_;
    ++stats_.wakes;
    return true;
  }

  void work(const std::stop_token&) {
    // The adaptive spin budget of this worker (see the file comment).
    constexpr std::chrono::steady_clock::duration min_spin = std::chrono::microseconds(1);
    std::chrono::steady_clock::duration budget = max_spin;
    std::unique_lock lock(mutex_);
    for (;;) {
      if (!queue_.empty()) {
        task t = std::move(queue_.front());
        queue_.pop_front();
        queued_.store(queue_.size(), std::memory_order_release);
        const bool wake = claim_wake();
        lock.unlock();
        if (wake) ready_.notify_one();
        t.run(t.owner.get(), t.arg);
        t.owner.reset();  // release outside the lock: it may free a run
        lock.lock();
        continue;
      }
      if (stopping_) return;
      ++spinning_;
      lock.unlock();
      const bool found = detail::spin_until(
          [this] { return queued_.load(std::memory_order_acquire) != 0; }, budget);
      lock.lock();
      --spinning_;
      if (found) {
        ++stats_.spin_hits;
        continue;  // another thread may have taken it first: the loop looks again
      }
      // Checked under the lock that submit() holds: a task queued while this worker still
      // counted as spinning is seen here, so it is never left behind a parked worker.
      if (!queue_.empty()) continue;
      if (stopping_) return;
      // Account for every wake-up, not only those that find work: a woken worker whose task
      // was taken by a busy one must still clear its pending wake, or later submits would
      // think a wake is on its way and leave tasks queued behind parked workers.
      ++parked_;
      ++stats_.parks;
      const auto parked_at = std::chrono::steady_clock::now();
      ready_.wait(lock);
      --parked_;
      if (pending_wakes_ > 0) --pending_wakes_;
      // The budget follows the gaps this worker sees: woken soon after parking, a longer spin
      // would have saved the park and the wake; woken after a long idle, spinning was waste.
      if (std::chrono::steady_clock::now() - parked_at < max_spin)
        budget = std::min<std::chrono::steady_clock::duration>(budget * 2, max_spin);
      else
        budget = std::max<std::chrono::steady_clock::duration>(budget / 2, min_spin);
    }
  }

  mutable detail::spin_mutex mutex_;
  std::condition_variable_any ready_;
  std::deque<task> queue_;
  std::atomic<std::size_t> queued_{0};  // queue_.size(), for spinners and helpers without the lock
  std::size_t spinning_ = 0;
  std::size_t parked_ = 0;
  std::size_t pending_wakes_ = 0;
  bool stopping_ = false;
  stats stats_;
  std::vector<std::jthread> workers_;  // last: joined first, while the rest is still alive
};

}  // namespace moa
