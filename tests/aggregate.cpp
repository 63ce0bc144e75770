// SPDX-License-Identifier: MIT
// Tests of moa/aggregate (aggregation and selection policies) with planted answers, through both
// executors, compile-time topologies and runtime pipelines.
#include <doctest/doctest.h>

#include <atomic>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <moa/aggregator.hpp>
#include <moa/backends/synthetic.hpp>
#include <moa/exec/executor.hpp>
#include <moa/pipeline.hpp>

#include "each_executor.hpp"
#include "planted.hpp"

namespace {

using moa_test::with_each_executor;

using moa_test::planted;

bool contains(const std::string& s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("Aggregate.extractors") {
  const moa::last_number num;
  CHECK(num("The answer is 42.") == "42");
  CHECK(num("first 3, then 1,000.50 apples") == "1000.5");
  CHECK(num("x = -7") == "-7");
  CHECK(num("-0") == "0");
  CHECK(num("0.500") == "0.5");
  CHECK(num("007") == "7");
  CHECK(num("no digits") == "");
  const moa::whole_answer whole;
  CHECK(whole("  Paris. ") == "paris");
  CHECK(whole("New\n  York!") == "new york");
  const moa::option_letter letter;
  CHECK(letter("I think the answer is (C).") == "C");
  CHECK(letter("A cat. Answer: B") == "B");
  CHECK(letter("[D] because A is wrong") == "D");
  CHECK(letter("no option here") == "");
}

TEST_CASE("Aggregate.parse_choice_is_strict") {
  CHECK(moa::parse_choice("2", 3).picks == std::vector<std::size_t>{1});
  CHECK(moa::parse_choice("[3]", 3).picks == std::vector<std::size_t>{2});
  CHECK(moa::parse_choice("Answer 1 is best.", 3).picks == std::vector<std::size_t>{0});
  CHECK(moa::parse_choice("**2**", 3).picks == std::vector<std::size_t>{1});
  CHECK(moa::parse_choice("[3] is better than 1", 3).picks == std::vector<std::size_t>{2});
  CHECK(moa::parse_choice("2, definitely 2", 3).picks == std::vector<std::size_t>{1});
  // Invalid replies are never guessed at, and say why.
  const auto none = moa::parse_choice("I like them all", 3);
  CHECK(!none.ok());
  CHECK(contains(none.problem, "names no answer between 1 and 3"));
  const auto far = moa::parse_choice("7", 3);
  CHECK(!far.ok());
  CHECK(contains(far.problem, "names answer 7, which is not between 1 and 3"));
  CHECK(contains(moa::parse_choice("1 or 2", 3).problem, "several answers"));
  CHECK(!moa::parse_choice("2.5", 3).ok());
  CHECK(!moa::parse_choice("the 2nd", 3).ok());
  CHECK(!moa::parse_choice("0", 3).ok());
  CHECK(!moa::parse_choice("", 3).ok());
  CHECK(!moa::parse_choice("99999999999999999999999", 3).ok());

  CHECK(moa::parse_ranking("[2] > [3] > [1]", 3, 2).picks == std::vector<std::size_t>{1, 2, 0});
  CHECK(moa::parse_ranking("3, 3, 1", 3, 2).picks == std::vector<std::size_t>{2, 0});
  CHECK(contains(moa::parse_ranking("[2] > [5]", 3, 1).problem, "names answer 5"));
  CHECK(contains(moa::parse_ranking("[2]", 3, 2).problem, "at least 2 are needed"));
  CHECK(!moa::parse_ranking("none", 3, 1).ok());
}

TEST_CASE("Aggregate.majority_vote_picks_the_planted_majority") {
  using voted =
      moa::topology<moa::layers<1, moa::proposers<0, 1, 2>>, moa::majority_vote<moa::last_number>>;
  static_assert(voted::has_policy);
  static_assert(voted::calls_per_prompt == 4);
  with_each_executor([](const auto& ex) {
    auto pipe = moa::make_pipeline<voted>(planted("a", "I get 41."), planted("b", "It is 42."),
                                          planted("c", "Surely 42, no doubt."));
    const auto r = pipe.run(ex, moa::make_request("What is 6 x 7?"));
    REQUIRE(r.ok());
    CHECK(r.answer == "It is 42.");
    REQUIRE(r.aggregation);
    CHECK(r.aggregation->policy == "majority_vote");
    CHECK(r.aggregation->chosen == std::vector<moa::call_id>{1, 2});
    CHECK(r.aggregation->calls.empty());
    CHECK(contains(r.aggregation->notes.at(0), "\"42\" won with 2 of 3 votes"));
    // The sink is the vote, not a backend call: backend 0 answered once (as a proposer).
    CHECK(pipe.backend<0>().calls() == 1);
    CHECK(r.trace[3].backend_name == "majority_vote");
    CHECK(r.trace[3].usage.total() == 0);
    CHECK(r.trace[3].references == std::vector<moa::call_id>{0, 1, 2});
  });
}

TEST_CASE("Aggregate.majority_vote_runtime_form_and_extracted_answer") {
  std::vector<moa::any_backend> backends;
  backends.emplace_back(planted("a", "(B)"));
  backends.emplace_back(planted("b", "answer (C)"));
  backends.emplace_back(planted("c", "I pick (C)."));
  moa::runtime_pipeline pipe(
      std::move(backends), moa::layered_topology{{{0, 1, 2}}, 0},
      moa::any_aggregator(moa::vote_policy{.extract = moa::option_letter{},
                                           .returns = moa::answer_form::extracted}));
  const auto r = pipe.run("Which option?");
  REQUIRE(r.ok());
  CHECK(r.answer == "C");
}

TEST_CASE("Aggregate.majority_vote_ties_are_documented") {
  using voted =
      moa::topology<moa::layers<1, moa::proposers<0, 1, 2>>, moa::majority_vote<moa::last_number>>;
  using strict = moa::topology<moa::layers<1, moa::proposers<0, 1, 2>>,
                               moa::majority_vote<moa::last_number, moa::tie_break::fail>>;
  with_each_executor([](const auto& ex) {
    // All different: a three-way tie, won by the first proposer in plan order.
    auto pipe = moa::make_pipeline<voted>(planted("a", "1"), planted("b", "2"), planted("c", "3"));
    const auto r = pipe.run(ex, moa::make_request("?"));
    REQUIRE(r.ok());
    CHECK(r.answer == "1");
    CHECK(contains(r.aggregation->notes.at(0), "3-way tie, broken by plan order"));
    // tie_break::fail: the sink fails, and the run says so (degraded, with the reason)...
    auto fail = moa::make_pipeline<strict>(planted("a", "1"), planted("b", "2"), planted("c", "3"));
    const auto d = fail.run(ex, moa::make_request("?"));
    CHECK(d.degraded());
    CHECK(contains(d.error, "3 answers tie with 1 votes each"));
    // ...or fails outright when the caller wants no fallback.
    moa::run_options strict_opt;
    strict_opt.on_aggregator_failure = moa::aggregator_fallback::fail;
    const auto f = fail.run(ex, moa::make_request("?"), strict_opt);
    CHECK(f.status == moa::run_status::failed);
    CHECK(contains(f.error, "majority_vote"));
  });
}

TEST_CASE("Aggregate.majority_vote_adversarial_answers") {
  using voted =
      moa::topology<moa::layers<1, moa::proposers<0, 1, 2>>, moa::majority_vote<moa::last_number>>;
  with_each_executor([](const auto& ex) {
    // All empty: no proposer succeeded, the vote is skipped, the run fails naming the calls.
    auto empty = moa::make_pipeline<voted>(planted("a", ""), planted("b", ""), planted("c", ""));
    const auto e = empty.run(ex, moa::make_request("?"));
    CHECK(e.status == moa::run_status::failed);
    CHECK(contains(e.error, "empty answer"));
    CHECK(e.trace[3].status == moa::call_status::skipped);
    // Nothing the extractor recognises: the vote fails with the reason; never a silent pick.
    auto words =
        moa::make_pipeline<voted>(planted("a", "yes"), planted("b", "no"), planted("c", "maybe"));
    const auto w = words.run(ex, moa::make_request("?"));
    CHECK(w.degraded());
    CHECK(contains(w.error, "none of the 3 answers holds an answer the extractor recognises"));
  });
}

TEST_CASE("Aggregate.judge_selects_by_index") {
  // Proposers 0..2; backend 3 judges.
  using judged = moa::topology<moa::layers<1, moa::proposers<0, 1, 2>>, moa::judge_select<3>>;
  with_each_executor([](const auto& ex) {
    auto pipe = moa::make_pipeline<judged>(
        planted("a", "alpha's answer"), planted("b", "beta's answer"),
        planted("c", "gamma's answer"), planted("judge", "", "Clearly [2].", true));
    const auto r = pipe.run(ex, moa::make_request("Pick one"));
    REQUIRE(r.ok());
    CHECK(r.answer == "beta's answer");
    REQUIRE(r.aggregation);
    CHECK(r.aggregation->chosen == std::vector<moa::call_id>{1});
    REQUIRE(r.aggregation->calls.size() == 1);
    const auto& call = r.aggregation->calls[0];
    CHECK(call.backend_name == "judge");
    CHECK(call.call == 4);  // numbered after the plan's calls
    CHECK(call.text == "Clearly [2].");
    // The judge saw the numbered candidates and the user's message.
    const auto seen = pipe.template backend<3>().received();
    REQUIRE(seen.size() == 1);
    CHECK(contains(seen[0].messages[0].content, "[2] beta's answer"));
    CHECK(seen[0].messages.back().content == "Pick one");
    // The judge's tokens are counted: in the sink's record and in the run's usage.
    CHECK(r.trace[3].usage == call.usage);
    std::uint64_t total = 0;
    for (const auto& c : r.trace) total += c.usage.total();
    CHECK(r.usage.total() == total);
  });
}

TEST_CASE("Aggregate.judge_nonsense_is_an_error_or_an_explicit_fallback") {
  using t = moa::topology<moa::layers<1, moa::proposers<0, 1, 2>>, moa::judge_select<3>>;
  using to_vote = moa::topology<moa::layers<1, moa::proposers<0, 1, 2>>,
                                moa::judge_select<3, moa::on_invalid_reply::majority_vote>>;
  using to_first = moa::topology<moa::layers<1, moa::proposers<0, 1, 2>>,
                                 moa::judge_select<3, moa::on_invalid_reply::first_answer>>;
  with_each_executor([](const auto& ex) {
    auto make = [](auto tag) {
      using T = typename decltype(tag)::type;
      return moa::make_pipeline<T>(planted("a", "x"), planted("b", "y"), planted("c", "y"),
                                   planted("judge", "", "They are all lovely."));
    };
    moa::run_options strict;
    strict.on_aggregator_failure = moa::aggregator_fallback::fail;
    const auto e = make(std::type_identity<t>{}).run(ex, moa::make_request("?"), strict);
    CHECK(e.status == moa::run_status::failed);
    CHECK(contains(e.error, "names no answer between 1 and 3"));
    CHECK(!e.aggregation->fallback);

    const auto v = make(std::type_identity<to_vote>{}).run(ex, moa::make_request("?"));
    REQUIRE(v.ok());
    CHECK(v.answer == "y");
    CHECK(v.aggregation->fallback);
    CHECK(contains(v.aggregation->notes.back(), "won with 2 of 3"));

    const auto f = make(std::type_identity<to_first>{}).run(ex, moa::make_request("?"));
    REQUIRE(f.ok());
    CHECK(f.answer == "x");
    CHECK(f.aggregation->fallback);
  });
}

TEST_CASE("Aggregate.judge_that_fails_is_reported") {
  std::vector<moa::any_backend> backends;
  backends.emplace_back(planted("a", "x"));
  backends.emplace_back(planted("b", "y"));
  backends.emplace_back(moa::synthetic_backend({.name = "broken", .error_rate = 1.0}));
  moa::runtime_pipeline pipe(std::move(backends), moa::layered_topology{{{0, 1}}, 2},
                             moa::any_aggregator(moa::judge_policy{}));
  const auto r = pipe.run("?");
  CHECK(r.degraded());
  CHECK(contains(r.error, "judge: pick one: broken failed"));
  REQUIRE(r.aggregation->calls.size() == 1);
  CHECK(r.aggregation->calls[0].status == moa::call_status::failed);
}

TEST_CASE("Aggregate.rank_then_fuse_fuses_only_the_top") {
  // Proposers 0..3; backend 4 ranks, backend 5 fuses the best two.
  using t = moa::topology<moa::layers<1, moa::proposers<0, 1, 2, 3>>, moa::rank_fuse<4, 5, 2>>;
  with_each_executor([](const auto& ex) {
    auto pipe = moa::make_pipeline<t>(planted("a", "A-text"), planted("b", "B-text"),
                                      planted("c", "C-text"), planted("d", "D-text"),
                                      planted("ranker", "", "[3] > [1] > [2] > [4]"),
                                      planted("fuser", "", "fused", true));
    const auto r = pipe.run(ex, moa::make_request("?"));
    REQUIRE(r.ok());
    CHECK(r.answer == "fused");
    CHECK(r.aggregation->chosen == std::vector<moa::call_id>{2, 0});
    REQUIRE(r.aggregation->calls.size() == 2);
    CHECK(r.aggregation->calls[0].backend_name == "ranker");
    CHECK(r.aggregation->calls[1].backend_name == "fuser");
    const auto seen = pipe.template backend<5>().received();
    REQUIRE(seen.size() == 1);
    const auto& sys = seen[0].messages[0].content;
    CHECK(contains(sys, "[1] C-text"));
    CHECK(contains(sys, "[2] A-text"));
    CHECK(!contains(sys, "B-text"));
    CHECK(!contains(sys, "D-text"));
  });
}

TEST_CASE("Aggregate.rank_then_fuse_invalid_ranking") {
  auto make = [](moa::on_invalid_ranking on_invalid) {
    std::vector<moa::any_backend> backends;
    for (auto name : {"a", "b", "c"}) backends.emplace_back(planted(name, std::string(name) + "!"));
    backends.emplace_back(planted("judge", "", "[1] > [9]"));
    moa::rank_fuse_policy p;
    p.top = 2;
    p.on_invalid = on_invalid;
    return moa::runtime_pipeline(std::move(backends), moa::layered_topology{{{0, 1, 2}}, 3},
                                 moa::any_aggregator(std::move(p)));
  };
  const auto fail = make(moa::on_invalid_ranking::fail).run("?");
  CHECK(fail.degraded());
  CHECK(contains(fail.error, "names answer 9"));
  const auto all = make(moa::on_invalid_ranking::keep_all).run("?");
  REQUIRE(all.ok());
  CHECK(all.aggregation->fallback);
  CHECK(all.aggregation->chosen == std::vector<moa::call_id>{0, 1, 2});
}

TEST_CASE("Aggregate.sparse_keeps_the_best_j_between_layers") {
  // Three layers of three; backend 3 ranks every layer (keeps 2) and synthesises at the end.
  using t = moa::topology<moa::layers<3, moa::proposers<0, 1, 2>>, moa::sparse<3, 2>>;
  with_each_executor([](const auto& ex) {
    auto answer = [](std::string name) {
      return [name](const moa::request& r) {
        return name + " says " + std::to_string(r.context.layer);
      };
    };
    auto prop = [&](std::string name) {
      return moa::synthetic_backend({.name = name, .answer = answer(name)});
    };
    auto pipe = moa::make_pipeline<t>(prop("a"), prop("b"), prop("c"),
                                      planted("judge", "", "[3] > [2] > [1]"));
    const auto r = pipe.run(ex, moa::make_request("?"));
    REQUIRE(r.ok());
    // Layer 2 and 3 calls, and the sink, received the two best answers (c then b).
    CHECK(r.trace[3].references == std::vector<moa::call_id>{2, 1});
    CHECK(r.trace[6].references == std::vector<moa::call_id>{5, 4});
    CHECK(r.trace[9].references == std::vector<moa::call_id>{8, 7});
    const auto& rep = *r.aggregation;
    CHECK(rep.references_dropped == 3);
    CHECK(rep.calls_saved == 0);
    CHECK(rep.stopped_before_layer == 0);
    // Three rankings (before layers 2, 3 and the sink) and the synthesis.
    REQUIRE(rep.calls.size() == 4);
    CHECK(r.answer == "[3] > [2] > [1]");  // the judge's planted synthesis
    // The rankings' tokens are in the run's usage although no trace record holds them.
    std::uint64_t traced = 0;
    for (const auto& c : r.trace) traced += c.usage.total();
    CHECK(r.usage.total() == traced + rep.extra_usage.total());
    CHECK(rep.extra_usage.total() > 0);
  });
}

TEST_CASE("Aggregate.sparse_moderator_stops_early_and_counts_the_calls_saved") {
  using t = moa::topology<moa::layers<3, moa::proposers<0, 1, 2>>,
                          moa::sparse<3, 2, moa::agreement_of<moa::last_number>>>;
  with_each_executor([](const auto& ex) {
    auto pipe = moa::make_pipeline<t>(planted("a", "It is 42"), planted("b", "42."),
                                      planted("c", "I say 42"), planted("judge", "", "final 42"));
    const auto r = pipe.run(ex, moa::make_request("?"));
    REQUIRE(r.ok());
    CHECK(r.answer == "final 42");
    const auto& rep = *r.aggregation;
    CHECK(rep.stopped_before_layer == 2);
    CHECK(rep.calls_saved == 6);
    for (moa::call_id c = 3; c < 9; ++c) {
      CHECK(r.trace[c].status == moa::call_status::skipped);
      CHECK(contains(r.trace[c].error, "moderator stopped the run before layer 2"));
    }
    // The sink synthesised from layer 1's answers, and nothing failed.
    CHECK(r.trace[9].references == std::vector<moa::call_id>{0, 1, 2});
    CHECK(r.error.empty());
    CHECK(pipe.template backend<0>().calls() == 1);
    CHECK(contains(rep.notes.front(), "3 of 3 answers agree on \"42\""));
  });
}

TEST_CASE("Aggregate.sparse_moderator_does_not_stop_on_disagreement") {
  moa::sparse_policy p;
  p.keep = 3;
  p.moderator = moa::agreement{moa::last_number{}, 1.0};
  std::vector<moa::any_backend> backends;
  backends.emplace_back(planted("a", "1"));
  backends.emplace_back(planted("b", "2"));
  backends.emplace_back(planted("c", "2", "synth"));
  moa::runtime_pipeline pipe(std::move(backends), moa::layered_topology{{{0, 1, 2}, {0, 1, 2}}, 2},
                             moa::any_aggregator(std::move(p)));
  const auto r = pipe.run("?");
  REQUIRE(r.ok());
  CHECK(r.aggregation->calls_saved == 0);
  CHECK(r.trace[3].status == moa::call_status::ok);
  // keep >= answers: no ranking call, only the synthesis.
  CHECK(r.aggregation->calls.size() == 1);
}

namespace {
// A policy written against the concept header alone.
struct longest {
  using moa_policy = moa::aggregator_tag;
  static constexpr std::size_t index = 0;
  std::string aggregate(moa::policy_context& ctx) const {
    std::size_t best = 0;
    for (std::size_t i = 1; i < ctx.answers().size(); ++i)
      if (ctx.answers()[i].text.size() > ctx.answers()[best].text.size()) best = i;
    ctx.chose(best);
    return std::string(ctx.answers()[best].text);
  }
};
struct unrelated {  // has aggregate() but did not opt in
  std::string aggregate(moa::policy_context&) const { return {}; }
};
}  // namespace

TEST_CASE("Aggregate.custom_policies_and_concepts") {
  static_assert(moa::StaticAggregatorPolicy<longest>);
  static_assert(!moa::AggregatorPolicy<unrelated>);
  static_assert(!moa::AggregatorPolicy<int>);
  static_assert(!moa::LayerSelectingPolicy<moa::vote_policy>);
  static_assert(moa::LayerSelectingPolicy<moa::sparse<0, 1>>);
  static_assert(std::is_same_v<moa::synthesis<1>, moa::aggregator<1>>);
  using t = moa::topology<moa::layers<1, moa::proposers<0, 1>>, longest>;
  auto pipe = moa::make_pipeline<t>(planted("a", "short"), planted("b", "much longer"));
  const auto r = pipe.run("?");
  REQUIRE(r.ok());
  CHECK(r.answer == "much longer");
  CHECK(r.aggregation->policy == "custom policy");
  // A run's own policy overrides the pipeline's.
  moa::run_options opt;
  opt.aggregation = moa::any_aggregator(moa::vote_policy{});
  CHECK(pipe.run("?", opt).aggregation->policy == "majority_vote");
}

TEST_CASE("Aggregate.policies_under_concurrent_runs") {
  using voted =
      moa::topology<moa::layers<2, moa::proposers<0, 1, 2>>, moa::majority_vote<moa::last_number>>;
  auto pipe = moa::make_pipeline<voted>(planted("a", "41"), planted("b", "42"), planted("c", "42"));
  moa::concurrent_executor ex(4);
  std::vector<std::thread> callers;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t)
    callers.emplace_back([&] {
      for (int i = 0; i < 50; ++i)
        if (pipe.run(ex, moa::make_request("?")).answer == "42") ok.fetch_add(1);
    });
  for (auto& c : callers) c.join();
  CHECK(ok.load() == 200);
}
