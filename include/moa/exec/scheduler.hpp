// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Where asynchronous work runs: the Scheduler concept (anything with `post(task)`: moa's
/// thread_pool, an Asio io_context behind an adapter, a server's own pool), its type erasure, and
/// the one timer thread that fires run deadlines.

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <queue>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "moa/core/async_backend.hpp"
#include "moa/core/message.hpp"
#include "moa/exec/thread_pool.hpp"

namespace moa {

/// @brief A unit of work posted to a Scheduler: a plain copyable callable (`task()` runs it).
using scheduled_task = thread_pool::task;

/// @brief Something moa can post work to.
///
/// Requirements:
/// 1. `s.post(t)` accepts a moa::scheduled_task `t` (a copyable callable taking no argument) and
///    arranges for `t()` to run soon on one of its threads; it may run it inline only if the
///    caller may block (moa never posts while holding a lock).
/// moa::thread_pool models it; for Asio: `struct io { asio::io_context& c; void post(auto t) {
/// asio::post(c, std::move(t)); } };`.
template <class S>
concept Scheduler = requires(S& s, scheduled_task t) {
  s.post(std::move(t));
};

static_assert(Scheduler<thread_pool>);

namespace detail {

/// A type-erased Scheduler reference.
class scheduler_ref {
 public:
  template <Scheduler S>
  requires(!std::same_as<std::remove_cv_t<S>, scheduler_ref>)  // copies stay copies
      explicit scheduler_ref(S& s) noexcept
      : object_(std::addressof(s)),
        post_([](void* o, scheduled_task&& t) { static_cast<S*>(o)->post(std::move(t)); }) {}
  void post(scheduled_task t) const { post_(object_, std::move(t)); }

 private:
  void* object_;
  void (*post_)(void*, scheduled_task&&);
};

/// One thread that fires run deadlines: the earliest first.
class deadline_timer {
 public:
  deadline_timer() = default;
  deadline_timer(const deadline_timer&) = delete;
  deadline_timer& operator=(const deadline_timer&) = delete;
  ~deadline_timer() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  void schedule(clock::time_point at, std::weak_ptr<completion_target> run) {
    {
      std::lock_guard lock(mutex_);
      if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
      queue_.push({at, std::move(run)});
    }
    cv_.notify_all();
  }

 private:
  struct entry {
    clock::time_point at;
    std::weak_ptr<completion_target> run;
    bool operator>(const entry& o) const noexcept { return at > o.at; }
  };
  void loop() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      if (queue_.empty()) {
        cv_.wait(lock);
        continue;
      }
      const auto at = queue_.top().at;
      if (clock::now() < at) {
        cv_.wait_until(lock, at);
        continue;
      }
      auto run = queue_.top().run.lock();
      queue_.pop();
      lock.unlock();
      if (run) run->on_deadline();
      run.reset();
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::priority_queue<entry, std::vector<entry>, std::greater<>> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace detail

}  // namespace moa
