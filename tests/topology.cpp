// SPDX-License-Identifier: MIT
// Tests of moa/topology (plans, layered and gossip topologies, checks, DOT) and moa/prompt.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include <moa/gossip/random_k.hpp>
#include <moa/prompt/aggregation.hpp>
#include <moa/topology/dot.hpp>
#include <moa/topology/gossip.hpp>
#include <moa/topology/layered.hpp>
#include <moa/topology/plan.hpp>

namespace {
std::vector<moa::call_id> inputs(const moa::plan& p, moa::call_id c) {
  auto in = p.inputs_of_call(c);
  return {in.begin(), in.end()};
}
}  // namespace

TEST_CASE("Topology.layered_plan_shape") {
  using t = moa::topology<moa::layer_list<moa::proposers<0, 1, 2, 3>, moa::proposers<3, 1>>,
                          moa::aggregator<2>>;
  const auto p = t::make_plan();
  REQUIRE(p.size() == 7);
  CHECK(p.group_count() == 3);
  CHECK(p[4].backend == 3);
  CHECK(p[5].backend == 1);
  CHECK(p[4].layer == 2);
  CHECK(inputs(p, 4) == std::vector<moa::call_id>{0, 1, 2, 3});
  CHECK(inputs(p, 6) == std::vector<moa::call_id>{4, 5});
  CHECK(p[6].role == moa::call_role::aggregator);
  CHECK(p[6].layer == 3);
  CHECK(p.sink() == 6);
  // The runtime form of the same topology gives the same plan.
  const auto rt = moa::layered_topology::from<t>();
  const auto q = rt.make_plan();
  REQUIRE(q.size() == p.size());
  for (moa::call_id c = 0; c < p.size(); ++c) {
    CHECK(q[c].backend == p[c].backend);
    CHECK(inputs(q, c) == inputs(p, c));
  }
  CHECK(rt.calls_per_prompt() == t::calls_per_prompt);
}

TEST_CASE("Topology.runtime_checks_name_the_fault") {
  moa::layered_topology t{{{0, 1, 2}, {0, 5}}, 1};
  CHECK_THROWS_WITH_AS(t.validate(3),
                       "moa: layer 2 lists proposer 5, but only 3 backends are given (valid "
                       "indices are 0 to 2)",
                       moa::topology_error);
  t.layers[1] = {1, 1};
  CHECK_THROWS_WITH_AS(t.validate(3), doctest::Contains("layer 2 lists backend 1 twice"),
                       moa::topology_error);
  t.layers[1] = {};
  CHECK_THROWS_WITH_AS(t.validate(3), doctest::Contains("layer 2 has no proposers"),
                       moa::topology_error);
  t.layers[1] = {0};
  t.aggregator = 9;
  CHECK_THROWS_WITH_AS(t.validate(3), doctest::Contains("the aggregator is backend 9"),
                       moa::topology_error);
  t.aggregator = 0;
  CHECK_NOTHROW(t.validate(3));
  CHECK_THROWS_WITH_AS(moa::require(moa::check_fanout(4, 4)),
                       doctest::Contains("fan-out k = 4 is larger than the 3 other devices"),
                       moa::topology_error);
}

TEST_CASE("Plan.builder_rejects_malformed_plans") {
  moa::plan p;
  CHECK_THROWS_WITH_AS(p.seal(), doctest::Contains("at least one call"), moa::topology_error);
  const auto g = p.add_group({});
  CHECK_THROWS_WITH_AS(p.add_group({3}), doctest::Contains("names call 3"), moa::topology_error);
  CHECK_THROWS_WITH_AS(p.add_call(0, 7, 1, moa::call_role::proposer),
                       doctest::Contains("input group 7"), moa::topology_error);
  const auto a = p.add_call(0, g, 1, moa::call_role::proposer);
  p.add_call(1, g, 1, moa::call_role::proposer);  // feeds nothing
  p.add_call(2, p.add_group({a}), 2, moa::call_role::aggregator);
  CHECK_THROWS_WITH_AS(p.seal(), doctest::Contains("call 1 feeds no later call"),
                       moa::topology_error);

  moa::plan d;
  const auto g0 = d.add_group({});
  const auto x = d.add_call(0, g0, 1, moa::call_role::proposer);
  d.add_call(0, d.add_group({x, x}), 2, moa::call_role::aggregator);
  CHECK_THROWS_WITH_AS(d.seal(), doctest::Contains("lists the same call twice"),
                       moa::topology_error);
}

TEST_CASE("Gossip.uniform_peers") {
  // k distinct peers, never the origin, each of the n - 1 others equally likely.
  const std::uint32_t n = 6;
  const moa::uniform_gossip g{3};
  moa::rng random(5);
  std::vector<int> hits(n, 0);
  std::uint32_t out[3];
  const int draws = 30000;
  for (int i = 0; i < draws; ++i) {
    const std::uint32_t origin = static_cast<std::uint32_t>(i % n);
    const auto k = g.select({origin, n, 1, &random, {}}, out);
    REQUIRE(k == 3);
    std::set<std::uint32_t> seen(out, out + 3);
    REQUIRE(seen.size() == 3);
    REQUIRE(seen.count(origin) == 0);
    for (auto d : out) {
      REQUIRE(d < n);
      ++hits[d];
    }
  }
  // Each device is picked with probability k / (n - 1) by the prompts of the other n - 1
  // devices: draws * k / n times in expectation. Binomial sd ~ 52; allow 5 sd.
  const double expected = draws * 3.0 / n;
  for (int h : hits) CHECK(std::abs(h - expected) < 5 * std::sqrt(expected));
}

TEST_CASE("Gossip.plan_per_prompt") {
  using edge = moa::gossip_topology<moa::devices<4>, moa::layers<2>, moa::random_k<2>>;
  moa::rng random(9);
  const auto p = edge::make_plan(3, random);
  REQUIRE(p.size() == edge::calls_per_prompt);
  CHECK(p[0].backend == 3);  // the origin answers in every layer...
  CHECK(p[3].backend == 3);
  CHECK(p[6].backend == 3);  // ...and aggregates
  CHECK(p[6].role == moa::call_role::aggregator);
  CHECK(inputs(p, 3) == std::vector<moa::call_id>{0, 1, 2});
  CHECK(inputs(p, 6) == std::vector<moa::call_id>{3, 4, 5});
  CHECK_THROWS_WITH_AS(edge::make_plan(4, random), doctest::Contains("origin 4 is not a device"),
                       moa::topology_error);
  // k = 0: the origin alone in every layer.
  moa::plan solo;
  moa::make_gossip_plan(1, 4, 2, moa::uniform_gossip{0}, random, solo);
  CHECK(solo.size() == 3);
  CHECK_THROWS_AS(moa::make_gossip_plan(1, 4, 2, moa::uniform_gossip{4}, random, solo),
                  moa::topology_error);
}

TEST_CASE("Prompt.references_are_numbered_under_instructions") {
  moa::aggregation_prompt prompt;
  prompt.instructions = "Combine.";
  const std::vector<moa::message> conversation{{moa::role::system, "Be brief."},
                                               {moa::role::user, "Q?"}};
  const std::vector<moa::reference> refs{{"first", "a", 0}, {"second", "b", 1}};
  const auto out = prompt.inject(conversation, refs);
  REQUIRE(out.size() == 3);
  CHECK(out[0].content == "Be brief.");  // the caller's system message keeps the first word
  CHECK(out[1].role == moa::role::system);
  CHECK(out[1].content == "Combine.\n\n[1] first\n\n[2] second\n");
  CHECK(out[2].content == "Q?");
  prompt.custom = [](std::span<const moa::message> c, std::span<const moa::reference> r) {
    std::vector<moa::message> v(c.begin(), c.end());
    v.push_back({moa::role::user, std::to_string(r.size()) + " refs"});
    return v;
  };
  CHECK(prompt.inject(conversation, refs).back().content == "2 refs");
}

TEST_CASE("Dot.plan_export") {
  using t = moa::topology<moa::layers<1, moa::proposers<0, 1>>, moa::aggregator<0>>;
  const auto p = t::make_plan();
  const std::vector<std::string> names{"al\"pha", "beta"};
  const auto dot = moa::to_dot(p, names);
  CHECK(dot.rfind("digraph moa {", 0) == 0);
  // A title that is not a DOT identifier is quoted and escaped (the one DOT writer's rule).
  CHECK(moa::to_dot(p, names, {}, "my \"net\"").rfind("digraph \"my \\\"net\\\"\" {", 0) == 0);
  CHECK(dot.find("c0 [label=\"al\\\"pha\\nproposer, layer 1\"]") != std::string::npos);
  CHECK(dot.find("c1 -> c2;") != std::string::npos);
  CHECK(dot.find("prompt -> c0;") != std::string::npos);
  CHECK(dot.find("c2 -> answer;") != std::string::npos);
  CHECK(dot.find("peripheries=2") != std::string::npos);
}
