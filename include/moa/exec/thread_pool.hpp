// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The worker pool behind the concurrent executor.
///
/// Hand-written because the executor's contract is narrow and measured: one queue, tasks that are
/// a function pointer plus a shared owner (no allocation per task), and at most one thread wake
/// per submitted task (a sleeping worker is woken only when there is one). A general pool
/// (Taskflow, BS::thread_pool) would add a dependency for less control over exactly that.

#include <atomic>
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

namespace moa {

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
    std::uint64_t wakes = 0;  ///< notify calls made to wake a sleeping worker
  };

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
      ++stats_.submitted;
      if (sleeping_ > 0) {
        // A worker already asked to wake but not yet running counts as awake: without this,
        // a burst of submits would notify the same sleeper repeatedly.
        if (pending_wakes_ < sleeping_) {
          ++pending_wakes_;
          ++stats_.wakes;
          wake = true;
        }
      }
    }
    if (wake) ready_.notify_one();
  }

  /// The same as submit(): makes the pool a moa::Scheduler (moa/exec/async.hpp).
  void post(task t) { submit(std::move(t)); }

  [[nodiscard]] std::size_t size() const noexcept { return workers_.size(); }

  [[nodiscard]] stats statistics() const {
    std::lock_guard lock(mutex_);
    return stats_;
  }

 private:
  void work(const std::stop_token&) {
    std::unique_lock lock(mutex_);
    for (;;) {
      if (queue_.empty()) {
        if (stopping_) return;
        // Account for every wake-up, not only those that find work: a woken worker whose task
        // was taken by a busy one must still clear its pending wake, or later submits would
        // think a wake is on its way and leave tasks queued behind sleeping workers.
        ++sleeping_;
        ready_.wait(lock);
        --sleeping_;
        if (pending_wakes_ > 0) --pending_wakes_;
        continue;
      }
      task t = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      t.run(t.owner.get(), t.arg);
      t.owner.reset();  // release outside the lock: it may free a run
      lock.lock();
    }
  }

  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<task> queue_;
  std::size_t sleeping_ = 0;
  std::size_t pending_wakes_ = 0;
  bool stopping_ = false;
  stats stats_;
  std::vector<std::jthread> workers_;  // last: joined first, while the rest is still alive
};

}  // namespace moa
