// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// A fork-join pool for the swarm: runs f(0..count) on a fixed set of threads plus the caller.
///
/// Separate from moa::thread_pool (exec/) on purpose: the search needs only "evaluate every
/// particle, then continue", called once per iteration, and keeping its threads parked on one
/// condition variable makes a batch cost one wake-up rather than one queued task per particle.
/// Results never depend on which thread ran which index, so searches are reproducible for any
/// thread count.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <stop_token>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace moa::swarm::detail {

/// Threads for `work` items: `threads` (0: one per core), at most one per item, at least one.
inline std::size_t resolve_threads(std::size_t threads, std::size_t work) {
  if (threads == 0) threads = std::max<std::size_t>(1, std::thread::hardware_concurrency());
  return std::max<std::size_t>(1, std::min(threads, work));
}

class fork_join_pool {
 public:
  /// `threads` counts the caller: 0 picks std::thread::hardware_concurrency(), 1 runs inline.
  explicit fork_join_pool(std::size_t threads) {
    if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
    workers_.reserve(threads - 1);
    for (std::size_t t = 1; t < threads; ++t)
      workers_.emplace_back([this](std::stop_token st) { work(st); });
  }
  fork_join_pool(const fork_join_pool&) = delete;
  fork_join_pool& operator=(const fork_join_pool&) = delete;
  ~fork_join_pool() {
    for (auto& w : workers_) w.request_stop();
    {
      std::lock_guard lock(mutex_);  // no worker may miss the wake-up between check and wait
    }
    wake_.notify_all();
  }

  [[nodiscard]] std::size_t threads() const noexcept { return workers_.size() + 1; }

  /// Calls f(i) for every i in [0, count), in parallel; rethrows the first exception thrown
  /// (remaining indices are skipped once one throws). Not reentrant.
  template <class F>
  void run(std::size_t count, F&& f) {
    if (count == 0) return;
    if (workers_.empty() || count == 1) {
      for (std::size_t i = 0; i < count; ++i) f(i);
      return;
    }
    job_ = [](void* fn, std::size_t i) { (*static_cast<std::remove_reference_t<F>*>(fn))(i); };
    fn_ = const_cast<void*>(static_cast<const void*>(std::addressof(f)));
    count_ = count;
    next_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    {
      std::lock_guard lock(mutex_);
      finished_ = 0;
      ++generation_;
    }
    wake_.notify_all();
    drain();
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return finished_ == workers_.size(); });
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  }

 private:
  void drain() {
    for (;;) {
      const std::size_t i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= count_) return;
      try {
        job_(fn_, i);
      } catch (...) {
        std::lock_guard lock(mutex_);
        if (!error_) error_ = std::current_exception();
        next_.store(count_, std::memory_order_relaxed);
      }
    }
  }

  void work(std::stop_token st) {
    std::uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return st.stop_requested() || generation_ != seen; });
        if (st.stop_requested()) return;
        seen = generation_;
      }
      drain();
      {
        std::lock_guard lock(mutex_);
        ++finished_;
      }
      done_.notify_one();
    }
  }

  // Written by run() before the generation bump (under mutex_), read by workers after they see
  // it (under mutex_): the mutex orders them.
  void (*job_)(void*, std::size_t) = nullptr;
  void* fn_ = nullptr;
  std::size_t count_ = 0;
  std::atomic<std::size_t> next_{0};
  std::exception_ptr error_{};

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::uint64_t generation_ = 0;
  std::size_t finished_ = 0;
  std::vector<std::jthread> workers_;  // last: joined before the members above are destroyed
};

}  // namespace moa::swarm::detail
