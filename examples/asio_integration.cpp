// SPDX-License-Identifier: MIT
// moa inside an Asio event loop: runs are scheduled on an io_context, the backends are
// asynchronous (an Asio timer stands in for an HTTP request), and no thread waits for a call.
//
//   prompt ──┬── alpha ──┬── alpha ──┐
//            ├── beta  ──┼── beta  ──┼── vote ── answer     2 layers x 3, majority vote
//            └── gamma ──┴── gamma ──┘
//
// 2,000 runs are started at once on an io_context served by 2 threads; each call "takes" 2 ms.
// With a thread per call this would need 6,000 threads; here it needs the 2 the loop has. A
// second part cancels a run while its calls are in flight.
#include <asio.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <future>
#include <memory>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <moa/aggregator.hpp>
#include <moa/moa.hpp>

namespace {

// Makes an io_context a moa::Scheduler: three lines.
struct io_scheduler {
  asio::io_context& io;
  void post(moa::scheduled_task t) { asio::post(io, std::move(t)); }
};
static_assert(moa::Scheduler<io_scheduler>);

// An asynchronous backend: starts a timer and returns; the timer's handler completes the call.
// A real one would start an HTTP request on the same io_context.
class timer_backend {
 public:
  timer_backend(asio::io_context& io, std::string name, std::chrono::milliseconds latency)
      : io_(&io), name_(std::move(name)), latency_(latency) {}

  void generate_async(const moa::request& r, moa::completion done) const {
    auto timer = std::make_shared<asio::steady_timer>(*io_, latency_);
    // The answer: "42" from every model but gamma on the first layer, so the vote has work.
    std::string text = name_ == "gamma" && r.context.layer == 1 ? "41" : "42";
    timer->async_wait(
        [timer, text = std::move(text), done = std::move(done)](const std::error_code& ec) {
          if (ec) {
            done.fail(std::make_exception_ptr(moa::backend_error("timer: " + ec.message())));
            return;
          }
          moa::response resp;
          resp.text = "The answer is " + text + ".";
          done(std::move(resp));
        });
  }
  [[nodiscard]] std::string_view name() const { return name_; }

 private:
  asio::io_context* io_;
  std::string name_;
  std::chrono::milliseconds latency_;
};
static_assert(moa::AsyncBackend<timer_backend>);

}  // namespace

int main() {
  asio::io_context io;
  auto guard = asio::make_work_guard(io);  // keeps the loop alive between bursts
  std::vector<std::thread> loop;
  for (int i = 0; i < 2; ++i) loop.emplace_back([&io] { io.run(); });

  io_scheduler sched{io};
  moa::async_executor executor(sched);

  std::vector<timer_backend> backends;
  for (auto name : {"alpha", "beta", "gamma"})
    backends.emplace_back(io, name, std::chrono::milliseconds(2));
  std::vector<moa::async_backend_ref> refs;
  for (auto& b : backends) refs.emplace_back(b, std::string(b.name()));
  const auto plan = moa::layered_topology{{{0, 1, 2}, {0, 1, 2}}, 0}.make_plan();
  moa::run_options opt;
  opt.aggregation = moa::any_aggregator(
      moa::vote_policy{.extract = moa::last_number{}, .returns = moa::answer_form::extracted});

  //! [asio]
  constexpr int runs = 2000;
  std::atomic<int> ok{0}, agreed{0}, finished{0};
  std::promise<void> all_done;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < runs; ++i)
    executor.execute_async(plan, refs, moa::make_request("What is 6 x 7?"), opt, {},
                           [&](moa::result r) {  // runs on an io_context thread
                             if (r.ok()) ok.fetch_add(1);
                             if (r.answer == "42") agreed.fetch_add(1);
                             if (finished.fetch_add(1) + 1 == runs) all_done.set_value();
                           });
  all_done.get_future().wait();
  //! [asio]
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%d runs on 2 io_context threads: %d ok, %d answered 42, in %.0f ms\n", runs,
              ok.load(), agreed.load(), ms);

  // Cancel a run whose first-layer calls are in flight: the result comes back at once, the
  // calls are recorded as cancelled, and their late completions are dropped.
  std::vector<timer_backend> slow;
  for (auto name : {"alpha", "beta", "gamma"})
    slow.emplace_back(io, name, std::chrono::milliseconds(500));
  std::vector<moa::async_backend_ref> slow_refs;
  for (auto& b : slow) slow_refs.emplace_back(b, std::string(b.name()));
  std::stop_source stop;
  moa::run_options cancellable = opt;
  cancellable.stop = stop.get_token();
  auto f = executor.execute_async(plan, slow_refs, moa::make_request("?"), cancellable);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  stop.request_stop();
  const auto cancelled = f.get();
  std::printf("cancelled run: status %s; first call: %s (%s)\n",
              std::string(moa::to_string(cancelled.status)).c_str(),
              std::string(moa::to_string(cancelled.trace[0].status)).c_str(),
              cancelled.trace[0].error.c_str());

  guard.reset();
  for (auto& t : loop) t.join();  // the slow timers fire; their completions are dropped
  return ok.load() == runs && cancelled.status == moa::run_status::cancelled ? 0 : 1;
}
