// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// A device of a distributed MoA network: one FCFS queue with a capacity, served by one worker
/// (or a few, for devices that batch). It serves its own user's calls and the calls its peers
/// gossip to it, as in Algorithm 1 of Mitra, Kaswan and Ulukus (2024).
///
/// The device knows nothing of plans or prompts: a task is a function pointer plus a shared
/// owner (the network's per-prompt state), so the queue costs no allocation per call and the
/// device can be tested, measured and killed on its own.
///
/// Statistics are true time averages, as in the simulator: the number in system (waiting plus in
/// service) is integrated over time at every change, so `mean_queue` is comparable with the
/// simulator's `device_result::mean_queue` and with L of the queueing formulas.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "moa/core/error.hpp"
#include "moa/core/message.hpp"

namespace moa::net {

/// @brief How a device queues and serves.
struct device_options {
  /// Most calls in system (waiting + in service); a full device refuses new work. 0: unbounded.
  std::size_t capacity = 0;
  /// Calls served at once (1: the paper's single server; more for backends that batch).
  std::size_t concurrency = 1;
  /// Keep every service time, for calibrating a simulator on what the device really delivered.
  bool record_service = false;
  /// Hears each call's service time in seconds, on the worker, outside the device's lock (the
  /// network's adaptive layout policy reads it). Must be thread-safe with concurrency > 1.
  std::function<void(double)> on_service{};
};

/// @brief What a device measured since its statistics were last reset. Durations in seconds.
struct device_stats {
  double window = 0;        ///< measured time
  double mean_queue = 0;    ///< time-average number in system (waiting + in service)
  double utilisation = 0;   ///< busy fraction of its servers
  double mean_service = 0;  ///< busy time per completed call: backend time plus protocol work
  std::uint64_t accepted = 0;
  std::uint64_t completed = 0;
  std::uint64_t refused = 0;         ///< pushes refused because the queue was full
  std::uint64_t dropped = 0;         ///< queued calls handed back unserved (death or stop)
  std::size_t max_in_system = 0;     ///< the largest number in system seen
  std::vector<double> service = {};  ///< every service time (with record_service)
};

/// @brief One device: an FCFS queue with a capacity and its workers.
///
/// @code{.cpp}
/// moa::net::device d({.capacity = 8});
/// d.start();
/// auto owner = std::make_shared<int>(0);
/// d.try_push({[](void* o, std::uint64_t, bool served) { if (served) ++*static_cast<int*>(o); },
///             owner, 0});
/// d.stop();  // joins the worker; anything still queued is handed back with served == false
/// @endcode
class device {
 public:
  /// A unit of work: `run(owner.get(), arg, served)`. `served` is false when the device hands the
  /// task back unserved (it died or was stopped), so the owner can re-route it.
  struct task {
    void (*run)(void*, std::uint64_t, bool) = nullptr;
    std::shared_ptr<void> owner;
    std::uint64_t arg = 0;
    clock::time_point queued{};  ///< set by try_push
  };

  /// Why try_push did not take a task.
  enum class refusal : std::uint8_t { none, full, dead };

  explicit device(device_options opt = {}) : opt_(opt) {
    if (opt_.concurrency == 0)
      MOA_THROW(invalid_argument("moa::net::device: concurrency must be at least 1"));
    if (opt_.capacity != 0 && opt_.capacity < opt_.concurrency)
      MOA_THROW(invalid_argument("moa::net::device: capacity " + std::to_string(opt_.capacity) +
                                 " is below concurrency " + std::to_string(opt_.concurrency) +
                                 "; give capacity >= concurrency, or 0 for unbounded"));
    reset_stats(clock::now());
  }
  device(const device&) = delete;
  device& operator=(const device&) = delete;
  ~device() { stop(); }

  [[nodiscard]] const device_options& options() const noexcept { return opt_; }

  /// Starts the workers (idempotent).
  void start() {
    std::lock_guard lock(mutex_);
    if (!workers_.empty() || dead_) return;
    for (std::size_t i = 0; i < opt_.concurrency; ++i)
      workers_.emplace_back([this](std::stop_token st) { work(st); });
  }

  /// Queues a task, or says why not. Never blocks on the task itself.
  refusal try_push(task t) {
    {
      std::lock_guard lock(mutex_);
      if (dead_ || stopping_) return refusal::dead;
      if (opt_.capacity != 0 && in_system_ >= opt_.capacity) {
        ++refused_;
        return refusal::full;
      }
      const auto now = clock::now();
      advance(now);
      ++in_system_;
      load_.store(in_system_, std::memory_order_relaxed);
      max_in_system_ = std::max(max_in_system_, in_system_);
      ++accepted_;
      t.queued = now;
      queue_.push_back(std::move(t));
    }
    ready_.notify_one();
    return refusal::none;
  }

  /// Calls in system now (waiting + in service): what the device gossips to its peers.
  [[nodiscard]] std::size_t load() const noexcept { return load_.load(std::memory_order_relaxed); }
  [[nodiscard]] bool alive() const noexcept { return !dead_flag_.load(std::memory_order_acquire); }
  /// Requested when the device dies: handed to backends so a call in service stops early.
  [[nodiscard]] std::stop_token stop_token() const noexcept { return stop_.get_token(); }

  /// Kills the device: it refuses all work from now on, its in-service calls are asked to stop
  /// and every queued task is handed back unserved, on the calling thread.
  void kill() { shut(true); }

  /// Stops the workers after their current call; queued tasks are handed back unserved.
  void stop() { shut(false); }

  /// Restarts the statistics at `now` (the number in system carries over).
  void reset_stats(clock::time_point now) {
    std::lock_guard lock(mutex_);
    since_ = last_ = now;
    area_ = busy_ = 0;
    accepted_ = completed_ = refused_ = dropped_ = 0;
    max_in_system_ = in_system_;
    service_.clear();
  }

  /// The statistics from the last reset until `now`.
  [[nodiscard]] device_stats stats(clock::time_point now) const {
    std::lock_guard lock(mutex_);
    device_stats s;
    const double t = seconds(now - since_);
    const double area = area_ + (now > last_ ? double(in_system_) * seconds(now - last_) : 0.0);
    s.window = t;
    s.mean_queue = t > 0 ? area / t : 0;
    s.utilisation = t > 0 ? busy_ / (t * double(opt_.concurrency)) : 0;
    s.mean_service = completed_ ? busy_ / double(completed_) : 0;
    s.accepted = accepted_;
    s.completed = completed_;
    s.refused = refused_;
    s.dropped = dropped_;
    s.max_in_system = max_in_system_;
    s.service = service_;
    return s;
  }

 private:
  static double seconds(clock::duration d) noexcept {
    return std::chrono::duration<double>(d).count();
  }
  // Integrates the number in system up to `now` (caller holds the mutex).
  void advance(clock::time_point now) noexcept {
    if (now > last_) {
      area_ += double(in_system_) * seconds(now - last_);
      last_ = now;
    }
  }

  void shut(bool die) {
    std::deque<task> orphans;
    std::vector<std::jthread> workers;
    {
      std::lock_guard lock(mutex_);
      if (die) {
        dead_ = true;
        dead_flag_.store(true, std::memory_order_release);
        stop_.request_stop();
      }
      stopping_ = true;
      orphans.swap(queue_);
      advance(clock::now());
      in_system_ -= orphans.size();
      load_.store(in_system_, std::memory_order_relaxed);
      dropped_ += orphans.size();
      if (!die) workers.swap(workers_);
    }
    ready_.notify_all();
    for (auto& t : orphans) t.run(t.owner.get(), t.arg, false);
    workers.clear();  // joins; a killed device's workers are joined by the destructor
    if (!die) {
      std::lock_guard lock(mutex_);
      stopping_ = false;
    }
  }

  void work(const std::stop_token& st) {
    // A call's service starts when the server could take it: when it was queued, or when this
    // worker finished its previous call. Thread wake-up and scheduling delays then count as
    // service, as they do for the queue behind it, so measured service times calibrate a
    // simulator exactly (they would hide in waiting time otherwise).
    clock::time_point free_since{};
    for (;;) {
      task t;
      {
        std::unique_lock lock(mutex_);
        ready_.wait(lock,
                    [&] { return stopping_ || dead_ || st.stop_requested() || !queue_.empty(); });
        if (stopping_ || dead_ || st.stop_requested()) return;
        t = std::move(queue_.front());
        queue_.pop_front();
      }
      const auto began = std::max(t.queued, free_since);
      t.run(t.owner.get(), t.arg, true);
      t.owner.reset();  // release the prompt before the bookkeeping, not at the next pop
      const auto ended = clock::now();
      free_since = ended;
      if (opt_.on_service) opt_.on_service(seconds(ended - began));
      std::lock_guard lock(mutex_);
      advance(ended);
      --in_system_;
      load_.store(in_system_, std::memory_order_relaxed);
      if (began >= since_) {  // calls begun before a reset count in neither window
        busy_ += seconds(ended - began);
        ++completed_;
        if (opt_.record_service) service_.push_back(seconds(ended - began));
      }
    }
  }

  device_options opt_;
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<task> queue_;
  std::vector<std::jthread> workers_;
  std::stop_source stop_;
  std::atomic<std::size_t> load_{0};
  std::atomic<bool> dead_flag_{false};
  bool dead_ = false;
  bool stopping_ = false;
  std::size_t in_system_ = 0;
  std::size_t max_in_system_ = 0;
  clock::time_point since_{}, last_{};
  double area_ = 0, busy_ = 0;
  std::uint64_t accepted_ = 0, completed_ = 0, refused_ = 0, dropped_ = 0;
  std::vector<double> service_;
};

}  // namespace moa::net
