// SPDX-License-Identifier: MIT
// Tests of moa/exec (inline and concurrent executors, failure policy, deadlines, cancellation)
// and moa/pipeline.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <set>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <moa/backends/synthetic.hpp>
#include <moa/exec/executor.hpp>
#include <moa/exec/trace_views.hpp>
#include <moa/pipeline.hpp>

#include "each_executor.hpp"
#include "pool_probes.hpp"

using namespace std::chrono_literals;

namespace {

using classic = moa::topology<moa::layers<2, moa::proposers<0, 1, 2>>, moa::aggregator<1>>;

moa::synthetic_backend syn(std::string name, moa::synthetic_options o = {}) {
  o.name = std::move(name);
  return moa::synthetic_backend(std::move(o));
}

using moa_test::with_each_executor;

// A backend that ignores deadlines and stop tokens: only the concurrent executor can stop
// waiting for it.
struct stubborn_backend {
  std::chrono::milliseconds delay;
  moa::response generate(const moa::request&) const {
    std::this_thread::sleep_for(delay);
    moa::response r;
    r.text = "late";
    return r;
  }
};

struct throws_int {
  moa::response generate(const moa::request&) const { throw 42; }
};

}  // namespace

TEST_CASE("Exec.references_reach_the_right_calls") {
  with_each_executor([](const auto& ex) {
    auto pipe =
        moa::make_pipeline<classic>(syn("alpha", {.record = true}), syn("beta", {.record = true}),
                                    syn("gamma", {.record = true}));
    const auto r = pipe.run(ex, "Why is the sky blue?");
    REQUIRE(r.ok());
    REQUIRE(r.trace.size() == 7);
    // Layer 1 saw the bare prompt.
    const auto bare = moa::make_request("Why is the sky blue?");
    for (int c = 0; c < 3; ++c) {
      CHECK(r.trace[c].references.empty());
      CHECK(r.trace[c].text ==
            moa::synthetic_answer(r.trace[c].backend_name, moa::request_hash(bare)));
    }
    // Layer 2 saw the three layer-1 answers, numbered in proposer order under the aggregation
    // prompt, followed by the user's message.
    const auto alpha_log = pipe.backend<0>().received();
    REQUIRE(alpha_log.size() == 2);
    const auto& second = alpha_log[1];
    REQUIRE(second.messages.size() == 2);
    CHECK(second.messages[0].role == moa::role::system);
    const std::vector<moa::reference> expected{
        {r.trace[0].text, "alpha", 0}, {r.trace[1].text, "beta", 1}, {r.trace[2].text, "gamma", 2}};
    CHECK(second.messages[0].content == moa::aggregation_prompt{}.render(expected));
    CHECK(second.messages[1].content == "Why is the sky blue?");
    CHECK(second.context.layer == 2);
    // The aggregator (beta) saw layer 2's answers and gave the final answer.
    CHECK(r.trace[6].references == std::vector<moa::call_id>{3, 4, 5});
    CHECK(r.trace[6].backend_name == "beta");
    CHECK(r.answer == r.trace[6].text);
    const auto beta_log = pipe.backend<1>().received();
    REQUIRE(beta_log.size() == 3);
    CHECK(beta_log[2].context.role == moa::call_role::aggregator);
    CHECK(beta_log[2].messages[0].content.find(r.trace[5].text) != std::string::npos);
    // Usage is summed over every call.
    std::uint64_t total = 0;
    for (const auto& rec : r.trace) total += rec.usage.total();
    CHECK(r.usage.total() == total);
    CHECK(total > 0);
  });
}

TEST_CASE("Exec.inline_and_concurrent_agree") {
  auto pipe =
      moa::make_pipeline<classic>(syn("a"), syn("b"), syn("c", {.error_rate = 0.5, .seed = 3}));
  moa::concurrent_executor pool(4);
  for (int i = 0; i < 20; ++i) {
    const auto prompt = "prompt " + std::to_string(i);
    const auto a = pipe.run(prompt);
    const auto b = pipe.run(pool, prompt);
    REQUIRE(a.status == b.status);
    REQUIRE(a.answer == b.answer);
    for (std::size_t c = 0; c < a.trace.size(); ++c)
      REQUIRE(a.trace[c].status == b.trace[c].status);
  }
}

TEST_CASE("Exec.quorum_lets_a_layer_go_on_with_fewer_answers") {
  with_each_executor([](const auto& ex) {
    auto pipe =
        moa::make_pipeline<classic>(syn("ok1"), syn("ok2"), syn("broken", {.error_rate = 1}));
    auto r = pipe.run(ex, "q");
    REQUIRE(r.ok());
    CHECK(r.trace[2].status == moa::call_status::failed);
    CHECK(r.trace[2].error.find("injected failure") != std::string::npos);
    CHECK(r.trace[3].references == std::vector<moa::call_id>{0, 1});
    CHECK(r.failures().size() == 2);  // the broken proposer, in both layers

    moa::run_options strict;
    strict.quorum = 3;
    r = pipe.run(ex, "q", strict);
    CHECK(r.status == moa::run_status::failed);
    CHECK_FALSE(r.has_answer());
    CHECK(r.answer.empty());
    CHECK(r.trace[3].status == moa::call_status::skipped);
    CHECK(r.trace[3].error == "only 2 of its 3 inputs succeeded (quorum 3)");
    CHECK(r.error.find("call 2 (broken, proposer, layer 1) failed: synthetic backend 'broken': "
                       "injected failure") != std::string::npos);
    CHECK_THROWS_WITH_AS((void)r.value(), doctest::Contains("moa: run failed"), moa::run_error);
  });
}

TEST_CASE("Exec.all_proposers_failing_fails_the_run") {
  with_each_executor([](const auto& ex) {
    auto pipe = moa::make_pipeline<classic>(
        syn("x", {.error_rate = 1}), syn("y", {.error_rate = 1}),
        moa::synthetic_backend(
            {.name = "z", .answer = [](const moa::request&) { return std::string(); }}));
    const auto r = pipe.run(ex, "q");
    CHECK(r.status == moa::run_status::failed);
    CHECK(r.trace[2].status == moa::call_status::empty);
    CHECK(r.trace[6].status == moa::call_status::skipped);
    CHECK(r.error.find("call 2 (z, proposer, layer 1) empty") != std::string::npos);
    CHECK(r.error.find("call 6 (y, aggregator, layer 3)") != std::string::npos);
  });
}

TEST_CASE("Exec.aggregator_failure_degrades_or_fails_by_policy") {
  with_each_executor([](const auto& ex) {
    using t = moa::topology<moa::layers<1, moa::proposers<0, 1>>, moa::aggregator<2>>;
    auto pipe = moa::make_pipeline<t>(syn("p0"), syn("p1"), syn("agg", {.error_rate = 1}));
    auto r = pipe.run(ex, "q");
    CHECK(r.status == moa::run_status::degraded);
    CHECK(r.degraded());
    CHECK(r.answer == r.trace[0].text);
    CHECK(r.error.find("the aggregator failed") != std::string::npos);
    CHECK(r.error.find("answered with call 0 (p0") != std::string::npos);
    CHECK(r.value() == r.answer);

    moa::run_options opt;
    opt.on_aggregator_failure = moa::aggregator_fallback::fail;
    r = pipe.run(ex, "q", opt);
    CHECK(r.status == moa::run_status::failed);
    CHECK(r.answer.empty());
  });
}

TEST_CASE("Exec.call_timeout_drops_slow_proposers") {
  with_each_executor([](const auto& ex) {
    using t = moa::topology<moa::layers<1, moa::proposers<0, 1, 2>>, moa::aggregator<0>>;
    auto pipe = moa::make_pipeline<t>(syn("fast"), syn("fast2"),
                                      syn("slow", {.latency = moa::latency_model::constant(10s)}));
    moa::run_options opt;
    opt.call_timeout = 20ms;
    const auto r = pipe.run(ex, "q", opt);
    REQUIRE(r.ok());
    CHECK(r.trace[2].status == moa::call_status::timed_out);
    CHECK(r.trace[3].references == std::vector<moa::call_id>{0, 1});
  });
}

TEST_CASE("Exec.run_deadline_is_enforced_against_stubborn_backends") {
  using t = moa::topology<moa::layers<1, moa::proposers<0, 1>>, moa::aggregator<0>>;
  auto pipe = moa::make_pipeline<t>(syn("fast"), stubborn_backend{300ms});
  moa::concurrent_executor pool(2);
  moa::run_options opt;
  opt.timeout = 30ms;
  const auto r = pipe.run(pool, "q", opt);
  CHECK(r.status == moa::run_status::timed_out);
  CHECK(r.trace[1].status == moa::call_status::timed_out);
  CHECK(r.trace[1].error.find("while this call was running") != std::string::npos);
  CHECK(r.trace[2].status == moa::call_status::timed_out);
  CHECK(r.error.find("deadline") != std::string::npos);
}

TEST_CASE("Exec.cancellation") {
  with_each_executor([](const auto& ex) {
    auto pipe = moa::make_pipeline<classic>(syn("a"), syn("b"), syn("c"));
    std::stop_source source;
    source.request_stop();
    moa::run_options opt;
    opt.stop = source.get_token();
    const auto r = pipe.run(ex, "q", opt);
    CHECK(r.status == moa::run_status::cancelled);
    for (const auto& rec : r.trace) CHECK(rec.status == moa::call_status::cancelled);
  });
  // Cancelled mid-run: a backend that waits on the stop token is interrupted.
  using t = moa::topology<moa::layers<1, moa::proposers<0, 1>>, moa::aggregator<0>>;
  auto pipe = moa::make_pipeline<t>(syn("fast"),
                                    syn("slow", {.latency = moa::latency_model::constant(30s)}));
  moa::concurrent_executor pool(2);
  std::stop_source source;
  moa::run_options opt;
  opt.stop = source.get_token();
  opt.on_call = [&](const moa::call_record& rec) {
    if (rec.backend_name == "fast") source.request_stop();
  };
  const auto r = pipe.run(pool, "q", opt);
  CHECK(r.status == moa::run_status::cancelled);
  CHECK(r.trace[1].status == moa::call_status::cancelled);
}

TEST_CASE("Exec.backend_exceptions_of_any_type_are_recorded") {
  with_each_executor([](const auto& ex) {
    using t = moa::topology<moa::layers<1, moa::proposers<0, 1>>, moa::aggregator<0>>;
    auto pipe = moa::make_pipeline<t>(syn("fine"), throws_int{});
    const auto r = pipe.run(ex, "q");
    REQUIRE(r.ok());
    CHECK(r.trace[1].backend_name == "backend#1");
    CHECK(r.trace[1].error == "the backend threw an exception not derived from std::exception");
  });
}

TEST_CASE("Exec.observer_and_streaming") {
  with_each_executor([](const auto& ex) {
    auto pipe = moa::make_pipeline<classic>(syn("a"), syn("b"), syn("c"));
    std::atomic<int> seen{0};
    std::string streamed;
    moa::run_options opt;
    opt.on_call = [&](const moa::call_record&) { ++seen; };
    opt.on_token = [&](std::string_view t) { streamed += t; };
    const auto r = pipe.run(ex, "q", opt);
    REQUIRE(r.ok());
    CHECK(seen.load() == 7);
    CHECK(streamed == r.answer);  // only the aggregator streams
  });
}

TEST_CASE("Exec.bad_runs_are_rejected_with_a_reason" * doctest::timeout(30)) {
  moa::synthetic_backend a({.name = "a"});
  std::vector<moa::backend_ref> refs{moa::backend_ref(a, "a")};
  moa::plan p;
  p.add_call(1, p.add_group({}), 1, moa::call_role::aggregator);
  moa::inline_executor ex;
  CHECK_THROWS_WITH_AS(ex.execute(p, refs, moa::make_request("q")), doctest::Contains("not sealed"),
                       moa::invalid_argument);
  p.seal();
  CHECK_THROWS_WITH_AS(ex.execute(p, refs, moa::make_request("q")),
                       "moa: the plan calls backend 1 but only 1 backends were given",
                       moa::topology_error);
  moa::run_options opt;
  opt.quorum = 0;
  moa::plan ok;
  ok.add_call(0, ok.add_group({}), 1, moa::call_role::aggregator);
  ok.seal();
  CHECK_THROWS_WITH_AS(ex.execute(ok, refs, moa::make_request("q"), opt),
                       doctest::Contains("quorum must be at least 1"), moa::invalid_argument);
  CHECK_THROWS_AS(moa::concurrent_executor(0), moa::invalid_argument);
}

TEST_CASE("Exec.many_concurrent_runs_share_one_executor" * doctest::timeout(120)) {
  auto pipe =
      moa::make_pipeline<classic>(syn("a"), syn("b"), syn("c", {.error_rate = 0.2, .seed = 1}));
  moa::concurrent_executor pool(3);
  std::atomic<int> ok{0}, answered{0};
  const int per_thread = 250;
  {
    std::vector<std::jthread> callers;
    for (int t = 0; t < 4; ++t)
      callers.emplace_back([&, t] {
        for (int i = 0; i < per_thread; ++i) {
          const auto r = pipe.run(pool, "p" + std::to_string(t * per_thread + i));
          if (r.ok()) ++ok;
          if (r.has_answer()) ++answered;
        }
      });
  }
  // With a quorum of one and two healthy proposers, every run answers.
  CHECK(ok.load() == 4 * per_thread);
  CHECK(answered.load() == 4 * per_thread);
  const auto stats = pool.statistics();
  // At most one thread wake per dispatched call.
  CHECK(stats.wakes <= stats.submitted);
  CHECK(stats.submitted <= 4u * per_thread * 7u);
}

TEST_CASE("Pipeline.runtime_pipeline_matches_the_typed_one") {
  std::vector<moa::any_backend> backends;
  for (const char* name : {"a", "b", "c"}) backends.emplace_back(syn(name));
  moa::runtime_pipeline rt(std::move(backends), moa::layered_topology::from<classic>());
  auto typed = moa::make_pipeline<classic>(syn("a"), syn("b"), syn("c"));
  CHECK(rt.run("q").answer == typed.run("q").answer);
  CHECK(rt.names() == std::vector<std::string>{"a", "b", "c"});
  CHECK(rt.dot().find("digraph") == 0);

  std::vector<moa::any_backend> two;
  two.emplace_back(syn("a"));
  two.emplace_back(syn("b"));
  CHECK_THROWS_WITH_AS(
      moa::runtime_pipeline(std::move(two), moa::layered_topology::from<classic>()),
      doctest::Contains("lists proposer 2, but only 2 backends are given"), moa::topology_error);
  // Backends held by reference keep their state.
  moa::synthetic_backend mine({.name = "mine"});
  using one = moa::topology<moa::layers<0, moa::proposers<0>>, moa::aggregator<0>>;
  auto by_ref = moa::make_pipeline<one>(std::ref(mine));
  by_ref.run("x");
  CHECK(mine.calls() == 1);
}

TEST_CASE("Trace.views_over_a_run") {
  auto pipe = moa::make_pipeline<classic>(syn("a"), syn("b"), syn("c", {.error_rate = 1}));
  const auto r = pipe.run("q");
  REQUIRE(r.ok());
  std::vector<std::size_t> sizes;
  for (const auto& layer : moa::views::layers(r.trace))
    sizes.push_back(static_cast<std::size_t>(ranges::distance(layer)));
  CHECK(sizes == std::vector<std::size_t>{3, 3, 1});
  std::vector<moa::call_id> failed;
  for (const auto& c : moa::views::failed(r.trace)) failed.push_back(c.call);
  CHECK(failed == std::vector<moa::call_id>{2, 5});
  std::size_t answered = 0;
  for (auto text : moa::views::answers(r.trace)) {
    CHECK_FALSE(text.empty());
    ++answered;
  }
  CHECK(answered == 5);
  const auto per_backend = moa::usage_by_backend(r.trace);
  REQUIRE(per_backend.size() == 3);
  CHECK(per_backend.at("b").completion_tokens == 9);  // two proposals and the aggregation
  CHECK(per_backend.at("c").total() == 0);            // failed calls report no usage
  moa::usage sum;
  for (const auto& [name, u] : per_backend) sum += u;
  CHECK(sum == r.usage);
}

TEST_CASE("Exec.the_caller_runs_its_own_runs_queued_calls" * doctest::timeout(120)) {
  // The pool's only worker is held by run A; run B's calls can then only run if B's caller
  // runs them itself, and must all run on B's caller.
  moa::concurrent_executor ex(1);
  moa_test::gate held;
  moa_test::gate_backend g{&held};
  const std::vector<moa::backend_ref> a_refs{moa::backend_ref(g, "g0"), moa::backend_ref(g, "g1")};
  const auto a_plan = moa_test::one_layer(2);
  auto a = std::async(std::launch::async,
                      [&] { return ex.execute(a_plan, a_refs, moa::make_request("a")); });
  // A's caller holds one call, the worker the other.
  REQUIRE(held.wait_entered(2));

  moa_test::thread_log log;
  moa_test::thread_recorder rec{&log};
  const std::vector<moa::backend_ref> b_refs{
      moa::backend_ref(rec, "r0"), moa::backend_ref(rec, "r1"), moa::backend_ref(rec, "r2")};
  const auto b_plan = moa_test::one_layer(3);
  std::thread::id b_caller;
  auto b = std::async(std::launch::async, [&] {
    b_caller = std::this_thread::get_id();
    return ex.execute(b_plan, b_refs, moa::make_request("b"));
  });
  const bool b_in_time = b.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
  held.open();  // lets A end (and B, were it stuck behind the held worker)
  CHECK(b_in_time);
  CHECK(b.get().ok());
  CHECK(a.get().ok());
  CHECK(log.distinct() == std::set<std::thread::id>{b_caller});
  CHECK(ex.statistics().helped >= 2);  // B's queued proposers, taken from the pool's queue
}

TEST_CASE("Exec.a_run_with_a_deadline_leaves_its_calls_to_the_pool" * doctest::timeout(120)) {
  // A caller that may have to return at the deadline runs none of its run's calls.
  moa::concurrent_executor ex(2);
  moa_test::thread_log log;
  moa_test::thread_recorder rec{&log};
  const std::vector<moa::backend_ref> refs{moa::backend_ref(rec, "r0"),
                                           moa::backend_ref(rec, "r1")};
  moa::run_options opt;
  opt.timeout = std::chrono::minutes(10);
  for (int i = 0; i < 20; ++i)
    REQUIRE(ex.execute(moa_test::one_layer(2), refs, moa::make_request("x"), opt).ok());
  CHECK(log.distinct().count(std::this_thread::get_id()) == 0);
  CHECK(ex.statistics().helped == 0);
}

TEST_CASE("Exec.an_idle_pool_stops_spinning" * doctest::timeout(120)) {
  static_assert(moa::thread_pool::max_spin <= std::chrono::milliseconds(1));
  moa::concurrent_executor ex(2);
  auto pipe = moa::make_pipeline<classic>(syn("a"), syn("b"), syn("c"));
  for (int i = 0; i < 200; ++i) REQUIRE(pipe.run(ex, "p" + std::to_string(i)).ok());
  // Every worker ends parked once the work stops (within max_spin of its last task; the bound
  // here only guards against a hang on a slow, loaded machine).
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  auto s = ex.statistics();
  while ((s.spinning != 0 || s.parked != 2) && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    s = ex.statistics();
  }
  CHECK(s.spinning == 0);
  CHECK(s.parked == 2);
  CHECK(s.wakes <= s.submitted);
}
