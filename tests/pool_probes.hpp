// SPDX-License-Identifier: MIT
// Backends that make the pool's scheduling observable: a gate that holds threads until opened,
// and a recorder of the threads calls ran on.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <moa/core/backend.hpp>
#include <moa/topology/layered.hpp>

namespace moa_test {

// Calls of a gate_backend block until open() (or 60 s, so a broken executor fails the test
// instead of hanging it).
struct gate {
  std::mutex mutex;
  std::condition_variable cv;
  int entered = 0;
  bool opened = false;
  void open() {
    {
      std::lock_guard lock(mutex);
      opened = true;
    }
    cv.notify_all();
  }
  // Waits until `n` calls are held; false after 60 s.
  bool wait_entered(int n) {
    std::unique_lock lock(mutex);
    return cv.wait_for(lock, std::chrono::seconds(60), [&] { return entered >= n; });
  }
};

struct gate_backend {
  gate* g;
  moa::response generate(const moa::request&) const {
    std::unique_lock lock(g->mutex);
    ++g->entered;
    g->cv.notify_all();
    g->cv.wait_for(lock, std::chrono::seconds(60), [&] { return g->opened; });
    moa::response r;
    r.text = "held";
    return r;
  }
};

// Records the thread each call ran on.
struct thread_log {
  std::mutex mutex;
  std::vector<std::thread::id> ids;
  [[nodiscard]] std::set<std::thread::id> distinct() {
    std::lock_guard lock(mutex);
    return {ids.begin(), ids.end()};
  }
};

struct thread_recorder {
  thread_log* log;
  moa::response generate(const moa::request&) const {
    {
      std::lock_guard lock(log->mutex);
      log->ids.push_back(std::this_thread::get_id());
    }
    moa::response r;
    r.text = "seen";
    return r;
  }
};

// One layer of `width` proposers (backends 0..width-1) and an aggregator (backend 0).
inline moa::plan one_layer(std::uint32_t width) {
  moa::layered_topology t;
  std::vector<std::uint32_t> all;
  for (std::uint32_t i = 0; i < width; ++i) all.push_back(i);
  t.layers.push_back(all);
  return t.make_plan();
}

}  // namespace moa_test
