// SPDX-License-Identifier: MIT
// Tests of moa/exec/async.hpp: futures and callbacks, asynchronous backends driven without a
// thread per call, the caller's scheduler, cancellation and deadlines with calls in flight, and
// thousands of concurrent runs on two threads (run under ThreadSanitizer by scripts/test.sh).
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <moa/aggregator.hpp>
#include <moa/backends/synthetic.hpp>
#include <moa/exec/async.hpp>
#include <moa/pipeline.hpp>

#include "pool_probes.hpp"

using namespace std::chrono_literals;

namespace {

// A scheduler the test drains by hand, on its own thread: proves what runs where.
struct manual_scheduler {
  std::mutex mutex;
  std::deque<moa::scheduled_task> queue;
  std::size_t posts = 0;
  void post(moa::scheduled_task t) {
    std::lock_guard lock(mutex);
    queue.push_back(std::move(t));
    ++posts;
  }
  bool run_one() {
    moa::scheduled_task t;
    {
      std::lock_guard lock(mutex);
      if (queue.empty()) return false;
      t = std::move(queue.front());
      queue.pop_front();
    }
    t();
    return true;
  }
};

// An asynchronous backend whose calls wait in a queue until the test completes them: no thread
// is attached to a call in flight.
class deferred_backend {
 public:
  explicit deferred_backend(std::string name) : name_(std::move(name)) {}
  void generate_async(const moa::request& r, moa::completion done) {
    std::lock_guard lock(state_->mutex);
    state_->pending.push_back(call{&r, std::move(done)});
  }
  [[nodiscard]] std::string_view name() const { return name_; }
  // Completes every call started so far with the synthetic backend's answer; returns how many.
  std::size_t complete_all() {
    std::deque<call> now;
    {
      std::lock_guard lock(state_->mutex);
      now.swap(state_->pending);
    }
    for (auto& p : now) {
      moa::response r;
      r.text = moa::synthetic_answer(name_, moa::request_hash(*p.request));
      p.done(std::move(r));
    }
    return now.size();
  }
  std::size_t in_flight() const {
    std::lock_guard lock(state_->mutex);
    return state_->pending.size();
  }

 private:
  struct call {
    const moa::request* request;
    moa::completion done;
  };
  struct state {
    mutable std::mutex mutex;
    std::deque<call> pending;
  };
  std::string name_;
  std::shared_ptr<state> state_ = std::make_shared<state>();
};
static_assert(moa::AsyncBackend<deferred_backend>);
static_assert(!moa::Backend<deferred_backend>);

// An asynchronous backend with zero latency that completes from the pool, as an I/O reactor
// would: the answer is the synthetic backend's, so runs can be checked against the inline
// executor.
struct posted_backend {
  std::string name;
  moa::thread_pool* pool;
  void generate_async(const moa::request& r, moa::completion done) const {
    struct job {
      const moa::request* r;
      std::string name;
      moa::completion done;
    };
    auto j = std::make_shared<job>(job{&r, name, std::move(done)});
    pool->submit({[](void* o, std::uint32_t) {
                    auto& jb = *static_cast<job*>(o);
                    moa::response resp;
                    resp.text = moa::synthetic_answer(jb.name, moa::request_hash(*jb.r));
                    jb.done(std::move(resp));
                  },
                  j, 0});
  }
};

// An event loop's backend: completes by posting to `loop`, and answers a judge with `verdict`.
struct loop_backend {
  std::string name;
  moa::thread_pool* loop;
  std::string verdict = "[2]";
  void generate_async(const moa::request& r, moa::completion done) const {
    struct job {
      std::string text;
      moa::completion done;
    };
    auto j = std::make_shared<job>(job{r.context.role == moa::call_role::aggregator
                                           ? verdict
                                           : moa::synthetic_answer(name, moa::request_hash(r)),
                                       std::move(done)});
    loop->submit({[](void* o, std::uint32_t) {
                    auto& jb = *static_cast<job*>(o);
                    moa::response resp;
                    resp.text = jb.text;
                    jb.done(std::move(resp));
                  },
                  j, 0});
  }
};

// Completes at once, inside generate_async, or fails there.
struct immediate_backend {
  std::string name;
  bool fail = false;
  void generate_async(const moa::request& r, const moa::completion& done) const {
    if (fail) {
      done.fail(std::make_exception_ptr(moa::backend_error("immediate: planted failure")));
      return;
    }
    moa::response resp;
    resp.text = moa::synthetic_answer(name, moa::request_hash(r));
    done(std::move(resp));
  }
};

// Streams its answer word by word from inside generate_stream_async, then completes.
struct streaming_immediate_backend {
  std::string name;
  void generate_async(const moa::request& r, const moa::completion& done) const {
    moa::response resp;
    resp.text = moa::synthetic_answer(name, moa::request_hash(r));
    done(std::move(resp));
  }
  void generate_stream_async(const moa::request& r, moa::token_callback on_token,
                             const moa::completion& done) const {
    moa::response resp;
    resp.text = moa::synthetic_answer(name, moa::request_hash(r));
    for (std::size_t at = 0; at < resp.text.size();) {
      const auto space = resp.text.find(' ', at);
      const auto end = space == std::string::npos ? resp.text.size() : space + 1;
      on_token(std::string_view(resp.text).substr(at, end - at));
      at = end;
    }
    done(std::move(resp));
  }
};

moa::plan two_by_three() {
  return moa::layered_topology{{{0, 1, 2}, {0, 1, 2}}, 0}.make_plan();
}

// The answer the inline executor gives with synthetic backends named a, b, c.
std::string expected_answer(const std::string& prompt) {
  std::vector<moa::synthetic_backend> syn;
  for (auto n : {"a", "b", "c"}) syn.emplace_back(moa::synthetic_options{.name = n});
  std::vector<moa::backend_ref> refs;
  for (auto& s : syn) refs.emplace_back(s, std::string(s.name()));
  return moa::inline_executor{}.execute(two_by_three(), refs, moa::make_request(prompt)).answer;
}

}  // namespace

TEST_CASE("Async.future_and_callback_match_the_inline_executor") {
  using classic = moa::topology<moa::layers<2, moa::proposers<0, 1, 2>>, moa::aggregator<0>>;
  auto pipe = moa::make_pipeline<classic>(moa::synthetic_backend({.name = "a"}),
                                          moa::synthetic_backend({.name = "b"}),
                                          moa::synthetic_backend({.name = "c"}));
  moa::async_executor ex(2);
  const auto want = pipe.run("Why?");
  auto f = pipe.run_async(ex, moa::make_request("Why?"));
  const auto got = f.get();
  REQUIRE(got.ok());
  CHECK(got.answer == want.answer);
  CHECK(got.trace.size() == 7);
  CHECK(got.trace[6].references == std::vector<moa::call_id>{3, 4, 5});

  std::promise<moa::result> p;
  pipe.run_async(ex, moa::make_request("Why?"), {},
                 [&p](moa::result r) { p.set_value(std::move(r)); });
  CHECK(p.get_future().get().answer == want.answer);
  // The blocking form (the Executor concept) too.
  CHECK(pipe.run(ex, "Why?").answer == want.answer);
}

TEST_CASE("Async.async_backends_are_driven_without_parking_threads") {
  // Everything runs on the test thread: the scheduler is drained by hand and the backends are
  // completed by hand. 500 runs in flight at once hold no thread.
  manual_scheduler sched;
  moa::async_executor ex(sched);
  std::vector<deferred_backend> backends{deferred_backend("a"), deferred_backend("b"),
                                         deferred_backend("c")};
  std::vector<moa::async_backend_ref> refs;
  for (auto& b : backends) refs.emplace_back(b, std::string(b.name()));
  const auto plan = two_by_three();
  constexpr int runs = 500;
  std::vector<std::optional<moa::result>> results(runs);
  for (int i = 0; i < runs; ++i)
    ex.execute_async(plan, refs, moa::make_request("prompt " + std::to_string(i % 7)), {}, {},
                     [&results, i](moa::result r) { results[i] = std::move(r); });
  CHECK(sched.posts == runs);  // only the starts: no call was posted
  std::size_t completed = 0;
  for (bool progress = true; progress;) {
    progress = false;
    while (sched.run_one()) progress = true;
    for (auto& b : backends) {
      const auto n = b.complete_all();
      completed += n;
      progress = progress || n > 0;
    }
  }
  CHECK(completed == std::size_t(runs) * 7);
  CHECK(sched.posts == runs);
  for (int i = 0; i < runs; ++i) {
    REQUIRE(results[i].has_value());
    REQUIRE(results[i]->ok());
    CHECK(results[i]->answer == expected_answer("prompt " + std::to_string(i % 7)));
  }
}

TEST_CASE("Async.thousands_of_concurrent_runs_on_two_threads" * doctest::timeout(120)) {
  moa::thread_pool pool(2);
  moa::async_executor ex(pool);
  std::vector<posted_backend> backends{{"a", &pool}, {"b", &pool}, {"c", &pool}};
  std::vector<moa::async_backend_ref> refs;
  for (auto& b : backends) refs.emplace_back(b, b.name);
  const auto plan = two_by_three();
  std::vector<std::string> want;
  for (int k = 0; k < 5; ++k) want.push_back(expected_answer("p" + std::to_string(k)));
  constexpr int runs = 3000;
  std::atomic<int> ok{0}, right{0}, delivered{0};
  std::mutex m;
  std::condition_variable cv;
  for (int i = 0; i < runs; ++i)
    ex.execute_async(plan, refs, moa::make_request("p" + std::to_string(i % 5)), {}, {},
                     [&, i](moa::result r) {
                       if (r.ok()) ok.fetch_add(1);
                       if (r.answer == want[i % 5]) right.fetch_add(1);
                       if (delivered.fetch_add(1) + 1 == runs) {
                         std::lock_guard lock(m);
                         cv.notify_all();
                       }
                     });
  std::unique_lock lock(m);
  cv.wait(lock, [&] { return delivered.load() == runs; });
  CHECK(ok.load() == runs);
  CHECK(right.load() == runs);
}

TEST_CASE("Async.sync_and_async_backends_mix" * doctest::timeout(60)) {
  moa::async_executor ex(2);
  moa::synthetic_backend a({.name = "a"});
  immediate_backend b{"b"};
  moa::synthetic_backend c({.name = "c", .latency = moa::latency_model::constant(1ms)});
  std::vector<moa::async_backend_ref> refs{{a, "a"}, {b, "b"}, {c, "c"}};
  CHECK(!refs[0].is_async());
  CHECK(refs[1].is_async());
  std::vector<std::future<moa::result>> fs;
  for (int i = 0; i < 200; ++i)
    fs.push_back(ex.execute_async(two_by_three(), refs, moa::make_request("mix")));
  const auto want = expected_answer("mix");
  for (auto& f : fs) CHECK(f.get().answer == want);
}

TEST_CASE("Async.failures_follow_the_failure_policy") {
  moa::async_executor ex(2);
  immediate_backend a{"a"}, b{"b", true}, c{"c"};
  std::vector<moa::async_backend_ref> refs{{a, "a"}, {b, "b"}, {c, "c"}};
  const auto r = ex.execute(two_by_three(), refs, moa::make_request("?"));
  CHECK(r.ok());
  CHECK(r.trace[1].status == moa::call_status::failed);
  CHECK(r.trace[1].error == "immediate: planted failure");
  CHECK(r.trace[3].references == std::vector<moa::call_id>{0, 2});
}

TEST_CASE("Async.cancellation_ends_the_run_with_calls_in_flight" * doctest::timeout(60)) {
  moa::async_executor ex(2);
  std::vector<deferred_backend> backends{deferred_backend("a"), deferred_backend("b"),
                                         deferred_backend("c")};
  std::vector<moa::async_backend_ref> refs;
  for (auto& b : backends) refs.emplace_back(b, std::string(b.name()));
  std::stop_source stop;
  moa::run_options opt;
  opt.stop = stop.get_token();
  std::atomic<int> observed_after{0};
  std::atomic<bool> delivered{false};
  opt.on_call = [&](const moa::call_record&) {
    if (delivered.load()) observed_after.fetch_add(1);
  };
  auto f = ex.execute_async(two_by_three(), refs, moa::make_request("?"), opt);
  while (backends[0].in_flight() + backends[1].in_flight() + backends[2].in_flight() < 3)
    std::this_thread::yield();
  stop.request_stop();
  const auto r = f.get();
  delivered.store(true);
  CHECK(r.status == moa::run_status::cancelled);
  CHECK(r.trace[0].status == moa::call_status::cancelled);
  CHECK(r.trace[0].error.find("while this call was running") != std::string::npos);
  CHECK(r.trace[6].error.find("before this call started") != std::string::npos);
  // Late answers are dropped: completing them now touches only memory the run still owns.
  for (auto& b : backends) CHECK(b.complete_all() == 1);
  CHECK(observed_after.load() == 0);
}

TEST_CASE("Async.stop_requested_before_the_run_starts") {
  moa::async_executor ex(1);
  immediate_backend a{"a"};
  std::vector<moa::async_backend_ref> refs{{a, "a"}, {a, "b"}, {a, "c"}};
  std::stop_source stop;
  stop.request_stop();
  moa::run_options opt;
  opt.stop = stop.get_token();
  const auto r = ex.execute(two_by_three(), refs, moa::make_request("?"), opt);
  CHECK(r.status == moa::run_status::cancelled);
}

TEST_CASE("Async.deadline_ends_the_run_with_calls_in_flight" * doctest::timeout(60)) {
  moa::async_executor ex(2);
  std::vector<deferred_backend> backends{deferred_backend("a"), deferred_backend("b"),
                                         deferred_backend("c")};
  std::vector<moa::async_backend_ref> refs;
  for (auto& b : backends) refs.emplace_back(b, std::string(b.name()));
  moa::run_options opt;
  opt.timeout = 20ms;
  const auto r = ex.execute(two_by_three(), refs, moa::make_request("?"), opt);
  CHECK(r.status == moa::run_status::timed_out);
  CHECK(r.trace[0].status == moa::call_status::timed_out);
  CHECK(r.error.find("deadline") != std::string::npos);
  for (auto& b : backends) b.complete_all();  // late: dropped
}

TEST_CASE("Async.policies_run_on_the_async_path") {
  using voted =
      moa::topology<moa::layers<2, moa::proposers<0, 1, 2>>, moa::majority_vote<moa::last_number>>;
  auto answer = [](std::string text) {
    return moa::synthetic_backend(
        {.name = text, .answer = [text](const moa::request&) { return text; }});
  };
  auto pipe = moa::make_pipeline<voted>(answer("41"), answer("42"), answer("42"));
  moa::async_executor ex(2);
  const auto r = pipe.run_async(ex, moa::make_request("?")).get();
  REQUIRE(r.ok());
  CHECK(r.answer == "42");
  REQUIRE(r.aggregation);
  CHECK(r.aggregation->chosen == std::vector<moa::call_id>{4, 5});
  // With asynchronous backends too (the vote itself runs on the scheduler).
  immediate_backend a{"a"}, b{"b"}, c{"c"};
  std::vector<moa::async_backend_ref> refs{{a, "a"}, {b, "b"}, {c, "c"}};
  moa::run_options opt;
  opt.aggregation = moa::any_aggregator(moa::vote_policy{});
  const auto v = ex.execute(two_by_three(), refs, moa::make_request("?"), opt);
  REQUIRE(v.ok());
  CHECK(v.answer == v.trace[3].text);  // all different: plan order breaks the tie
}

TEST_CASE("Async.rejects_bad_input_with_a_reason") {
  moa::async_executor ex(1);
  std::vector<moa::async_backend_ref> refs(1);
  CHECK_THROWS_WITH_AS(ex.execute(two_by_three(), refs, moa::make_request("?")),
                       doctest::Contains("the plan calls backend 2 but only 1"),
                       moa::topology_error);
}

TEST_CASE("Async.the_sink_streams_to_on_token") {
  const auto expected = expected_answer("stream me");
  moa::async_executor ex(2);
  const auto plan = two_by_three();
  auto run_with = [&](std::span<const moa::async_backend_ref> refs) {
    std::vector<std::string> tokens;
    std::mutex mutex;  // the sink is one call, but its tokens may arrive on a pool thread
    moa::run_options opt;
    opt.on_token = [&](std::string_view t) {
      std::lock_guard lock(mutex);
      tokens.emplace_back(t);
    };
    const auto r = ex.execute_async(plan, refs, moa::make_request("stream me"), opt).get();
    REQUIRE(r.ok());
    CHECK(r.answer == expected);
    std::string joined;
    for (const auto& t : tokens) joined += t;
    CHECK(joined == r.answer);  // only the sink streams: proposers' text never reaches on_token
    return tokens.size();
  };
  SUBCASE("an asynchronous backend that streams: token by token") {
    std::vector<streaming_immediate_backend> b{{"a"}, {"b"}, {"c"}};
    std::vector<moa::async_backend_ref> refs;
    for (auto& x : b) refs.emplace_back(x, x.name);
    CHECK(refs[0].streams_async());
    CHECK(run_with(refs) == 3);  // "a answers <hash>": three words
  }
  SUBCASE("an asynchronous backend without a streaming form: the answer as one token") {
    std::vector<immediate_backend> b{{"a"}, {"b"}, {"c"}};
    std::vector<moa::async_backend_ref> refs;
    for (auto& x : b) refs.emplace_back(x, x.name);
    CHECK_FALSE(refs[0].streams_async());
    CHECK(run_with(refs) == 1);
  }
  SUBCASE("synchronous backends on the async executor stream as on the others") {
    std::vector<moa::synthetic_backend> b;
    for (auto n : {"a", "b", "c"}) b.emplace_back(moa::synthetic_options{.name = n});
    std::vector<moa::async_backend_ref> refs;
    for (auto& x : b) refs.emplace_back(x, std::string(x.name()));
    CHECK(run_with(refs) == 3);  // synthetic_backend::generate_stream: word by word
  }
}

TEST_CASE("Async.policies_that_call_backends_never_starve_the_scheduler" * doctest::timeout(120)) {
  // One scheduler thread, and backends that complete on that same thread (an event loop). A
  // judge's call made from the loop's thread would wait for a completion only that thread can
  // deliver: the executor makes policy calls on a lane of its own instead.
  moa::thread_pool loop(1);
  moa::async_executor ex(loop);
  std::vector<loop_backend> backends{{"a", &loop}, {"b", &loop}, {"c", &loop}};
  std::vector<moa::async_backend_ref> refs;
  for (auto& b : backends) refs.emplace_back(b, b.name);
  const auto plan = two_by_three();
  auto run_all = [&](moa::any_aggregator policy, std::size_t runs) {
    moa::run_options opt;
    opt.aggregation = std::move(policy);
    std::vector<std::future<moa::result>> futures;
    for (std::size_t i = 0; i < runs; ++i)
      futures.push_back(
          ex.execute_async(plan, refs, moa::make_request("q" + std::to_string(i)), opt));
    std::vector<moa::result> out;
    for (auto& f : futures) {
      if (f.wait_for(60s) != std::future_status::ready) {
        FAIL_CHECK("a run never ended: the scheduler is starved");
        std::quick_exit(1);  // its threads are stuck; do not hang in destructors
      }
      out.push_back(f.get());
    }
    return out;
  };
  SUBCASE("judge at the sink") {
    for (const auto& r : run_all(moa::any_aggregator(moa::judge_policy{}), 64)) {
      REQUIRE(r.ok());
      CHECK(r.answer == r.trace[4].text);  // "[2]": the second answer of the last layer
    }
  }
  SUBCASE("sparse selection between layers") {
    for (const auto& r :
         run_all(moa::any_aggregator(moa::sparse_policy{.keep = 1, .final_policy = {}}), 64)) {
      REQUIRE(r.ok());
      CHECK(r.trace[3].references.to_vector() == std::vector<moa::call_id>{1});  // judge said [2]
    }
  }
}

TEST_CASE("Async.execute_runs_its_own_run_while_the_pool_is_busy" * doctest::timeout(120)) {
  // The executor's only thread is held by run A's call: run B, waited for with execute(), runs
  // on its caller (the run's start and its calls, taken from the pool's queue).
  moa::async_executor ex(1);
  moa_test::gate held;
  moa_test::gate_backend g{&held};
  const std::vector<moa::backend_ref> a_refs{moa::backend_ref(g, "g0")};
  auto a = ex.execute_async(moa_test::one_layer(1), a_refs, moa::make_request("a"));
  REQUIRE(held.wait_entered(1));

  moa_test::thread_log log;
  moa_test::thread_recorder rec{&log};
  const std::vector<moa::backend_ref> b_refs{moa::backend_ref(rec, "r0"),
                                             moa::backend_ref(rec, "r1")};
  std::thread::id b_caller;
  auto b = std::async(std::launch::async, [&] {
    b_caller = std::this_thread::get_id();
    return ex.execute(moa_test::one_layer(2), b_refs, moa::make_request("b"));
  });
  const bool b_in_time = b.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
  held.open();
  CHECK(b_in_time);
  CHECK(b.get().ok());
  CHECK(a.get().ok());
  CHECK(log.distinct() == std::set<std::thread::id>{b_caller});
}
