// SPDX-License-Identifier: MIT
// Tests of moa/topology/dag.hpp and moa/swarm/: DAG topologies, graph decoding, PSO, JFK-score.

#include <doctest/doctest.h>

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "moa/backends/synthetic.hpp"
#include "moa/backends/tunable_synthetic.hpp"
#include "moa/core/random.hpp"
#include "moa/exec/executor.hpp"
#include "moa/swarm/cost.hpp"
#include "moa/swarm/decode.hpp"
#include "moa/swarm/evaluate.hpp"
#include "moa/swarm/execute.hpp"
#include "moa/swarm/jfk.hpp"
#include "moa/swarm/joint.hpp"
#include "moa/swarm/pso.hpp"
#include "moa/swarm/search.hpp"
#include "moa/swarm/tunable.hpp"
#include "moa/topology/dag.hpp"
#include "moa/topology/plan.hpp"

namespace {

using layer_list = std::vector<std::vector<std::uint32_t>>;

// Same calls, same backends, same roles and layers, same inputs per call.
void require_same_plan(const moa::plan& a, const moa::plan& b) {
  REQUIRE(a.size() == b.size());
  for (moa::call_id c = 0; c < a.size(); ++c) {
    CAPTURE(c);
    CHECK(a[c].backend == b[c].backend);
    CHECK(a[c].layer == b[c].layer);
    CHECK(a[c].role == b[c].role);
    auto ia = a.inputs_of_call(c), ib = b.inputs_of_call(c);
    CHECK(std::vector<moa::call_id>(ia.begin(), ia.end()) ==
          std::vector<moa::call_id>(ib.begin(), ib.end()));
  }
  CHECK(a.group_count() == b.group_count());
}

std::string message_of(const moa::dag_topology& dag, std::size_t backends = 100) {
  try {
    dag.validate(backends);
  } catch (const moa::topology_error& e) {
    return e.what();
  }
  return "no error";
}

Eigen::MatrixXd edges(Eigen::Index n, std::initializer_list<std::pair<int, int>> list) {
  Eigen::MatrixXd a = Eigen::MatrixXd::Zero(n, n);
  for (auto [i, j] : list) a(i, j) = 1.0;
  return a;
}

}  // namespace

TEST_CASE("Dag.layered_moa_gives_the_layered_plan") {
  const std::vector<layer_list> cases = {
      {},                           // the aggregator alone
      {{0, 1, 2}},                  // one layer
      {{0, 1, 2}, {0, 1, 2}},       // classic 2-layer MoA
      {{0, 1, 2, 3}, {1, 2}, {3}},  // narrowing
      {{2, 2}, {0}},                // a backend twice in a layer (the DAG allows it)
  };
  for (const auto& layers : cases) {
    CAPTURE(layers.size());
    for (std::uint32_t aggregator : {0u, 1u}) {
      auto dag = moa::dag_topology::from_layers(layers, aggregator);
      dag.validate(4);
      require_same_plan(dag.make_plan(), moa::make_layered_plan(layers, aggregator));
    }
  }
}

TEST_CASE("Dag.hand_built_plan") {
  //   0 ──> 2 ──┐
  //   1 ──> 2   ├──> 4 (sink)
  //   1 ──> 3 ──┘
  //   0 ──────────> 4
  auto adj = edges(5, {{0, 2}, {1, 2}, {1, 3}, {2, 4}, {3, 4}, {0, 4}});
  moa::dag_topology dag(adj, {7, 8, 9, 7, 5});
  CHECK(dag.sink() == 4);
  CHECK(dag.depths() == std::vector<std::uint32_t>{1, 1, 2, 2, 3});
  auto p = dag.make_plan();
  REQUIRE(p.size() == 5);
  // Order by (depth, node): 0, 1, 2, 3, 4.
  CHECK(p[0].backend == 7);
  CHECK(p[1].backend == 8);
  CHECK(p[2].backend == 9);
  CHECK(p[3].backend == 7);
  CHECK(p[4].backend == 5);
  CHECK(p.inputs_of_call(0).empty());
  CHECK(p[0].group == p[1].group);  // both read the bare prompt
  auto in2 = p.inputs_of_call(2);
  CHECK(std::vector<moa::call_id>(in2.begin(), in2.end()) == std::vector<moa::call_id>{0, 1});
  auto in3 = p.inputs_of_call(3);
  CHECK(std::vector<moa::call_id>(in3.begin(), in3.end()) == std::vector<moa::call_id>{1});
  auto in4 = p.inputs_of_call(4);
  CHECK(std::vector<moa::call_id>(in4.begin(), in4.end()) == std::vector<moa::call_id>{0, 2, 3});
  CHECK(p.group_count() == 4);
  for (moa::call_id c = 0; c + 1 < p.size(); ++c) CHECK(p[c].role == moa::call_role::proposer);
  CHECK(p[4].role == moa::call_role::aggregator);
  CHECK(p[4].layer == 3);
  CHECK(p.sink() == 4);

  SUBCASE("node order is by depth, not by index") {
    // 2 ──> 0 ──> 1 (sink)
    moa::dag_topology chain(edges(3, {{2, 0}, {0, 1}}), {0, 1, 2});
    auto q = chain.make_plan();
    CHECK(q[0].backend == 2);
    CHECK(q[1].backend == 0);
    CHECK(q[2].backend == 1);
    CHECK(q[2].layer == 3);
  }
  SUBCASE("a single node is its own sink") {
    moa::dag_topology one(Eigen::MatrixXd::Zero(1, 1), {3});
    auto q = one.make_plan();
    REQUIRE(q.size() == 1);
    CHECK(q[0].role == moa::call_role::aggregator);
    CHECK(q.inputs_of_call(0).empty());
  }
}

TEST_CASE("Dag.invalid_graphs_are_rejected_with_the_fault") {
  CHECK(message_of(moa::dag_topology(Eigen::MatrixXd::Zero(2, 3), {0, 1})).find("must be square") !=
        std::string::npos);
  CHECK(message_of(moa::dag_topology(Eigen::MatrixXd(0, 0), {})).find("no nodes") !=
        std::string::npos);
  CHECK(message_of(moa::dag_topology(edges(2, {{0, 1}}), {0})).find("bind exactly one backend") !=
        std::string::npos);
  CHECK(message_of(moa::dag_topology(edges(2, {{0, 0}, {0, 1}}), {0, 1}))
            .find("node 0 feeds itself") != std::string::npos);
  const auto cycle =
      message_of(moa::dag_topology(edges(4, {{0, 1}, {1, 2}, {2, 1}, {2, 3}}), {0, 1, 2, 3}));
  CHECK(cycle.find("has a cycle (nodes 1, 2, 3") != std::string::npos);
  const auto two_sinks = message_of(moa::dag_topology(edges(4, {{0, 2}, {1, 3}}), {0, 1, 2, 3}));
  CHECK(two_sinks.find("nodes 2, 3 feed no other node") != std::string::npos);
  CHECK(two_sinks.find("exactly one sink") != std::string::npos);
  const auto isolated = message_of(moa::dag_topology(edges(3, {{0, 2}}), {0, 1, 2}));
  CHECK(isolated.find("nodes 1, 2 feed no other node") != std::string::npos);
  CHECK(message_of(moa::dag_topology(edges(2, {{0, 1}}), {0, 5}), 3)
            .find("node 1 is bound to backend 5, but only 3 backends") != std::string::npos);
  Eigen::MatrixXd nan = edges(2, {{0, 1}});
  nan(1, 0) = std::numeric_limits<double>::quiet_NaN();
  CHECK(message_of(moa::dag_topology(nan, {0, 1})).find("not finite") != std::string::npos);
  CHECK_THROWS_AS(
      (void)moa::dag_topology(edges(3, {{0, 1}, {1, 0}, {0, 2}}), {0, 1, 2}).make_plan(),
      moa::topology_error);
}

TEST_CASE("Dag.to_dot") {
  moa::dag_topology dag(edges(3, {{0, 2}, {1, 2}}), {1, 0, 1});
  const std::vector<std::string> names = {"qwen", "llama \"3\""};
  const auto dot = dag.to_dot(names);
  CHECK(dot.find("digraph moa_dag {") == 0);
  CHECK(dot.find("n0 [label=\"0: llama \\\"3\\\"\"];") != std::string::npos);
  CHECK(dot.find("n1 [label=\"1: qwen\"];") != std::string::npos);
  CHECK(dot.find("n2 [label=\"2: llama \\\"3\\\"\", shape=doublecircle];") != std::string::npos);
  CHECK(dot.find("n0 -> n2;") != std::string::npos);
  CHECK(dot.find("n1 -> n2;") != std::string::npos);
  CHECK(dag.to_dot().find("backend#1") != std::string::npos);
}

TEST_CASE("Swarm.decode_hand_built") {
  // Row sums: 0 → 2.0, 1 → 0.3 (lowest: sink), 2 → 1.5, 3 → 1.2.
  Eigen::MatrixXd w(4, 4);
  w << 0.0, 0.9, 0.3, 0.8,  //
      0.1, 0.0, 0.1, 0.1,   //
      0.2, 0.6, 0.0, 0.7,   //
      0.1, 0.9, 0.2, 0.0;
  const Eigen::MatrixXd before = w;
  // Order: sink 1, then 0 (2.0) → among {1}: 1; then 2 (1.5) → among {1, 0}: 1 (0.6 > 0.2);
  // then 3 (1.2) → among {1, 0, 2}: 1 (0.9).
  Eigen::MatrixXd d = moa::swarm::decode(w);
  CHECK(d == edges(4, {{0, 1}, {2, 1}, {3, 1}}));
  w(2, 0) = 0.8;  // now 2 prefers 0; its degree 2.1 also places it first
  d = moa::swarm::decode(w);
  CHECK(d == edges(4, {{2, 1}, {0, 1}, {3, 1}}));
  w(3, 2) = 1.0;  // 3: degree 2.0 ties with 0; lower index (0) first, then 3 prefers 2
  d = moa::swarm::decode(w);
  CHECK(d == edges(4, {{2, 1}, {0, 1}, {3, 2}}));
  CHECK(before(2, 0) == 0.2);

  std::vector<std::int32_t> parent(4);
  CHECK(moa::swarm::decode_parents(w, parent) == 1);
  CHECK(parent == std::vector<std::int32_t>{1, -1, 1, 2});

  CHECK_THROWS_WITH_AS(moa::swarm::decode(Eigen::MatrixXd::Zero(2, 3)),
                       doctest::Contains("must be square"), moa::invalid_argument);
  Eigen::MatrixXd bad = Eigen::MatrixXd::Zero(2, 2);
  bad(0, 1) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH_AS(moa::swarm::decode(bad), doctest::Contains("NaN or infinite"),
                       moa::invalid_argument);
}

TEST_CASE("Swarm.decode_property_valid_dag_single_sink_input_unchanged") {
  moa::rng gen(2024);
  Eigen::MatrixXd out;
  for (int trial = 0; trial < 10000; ++trial) {
    const auto n = Eigen::Index(1 + gen.below(trial % 50 == 0 ? 40 : 9));  // sometimes > 32
    Eigen::MatrixXd w(n, n);
    for (Eigen::Index j = 0; j < n; ++j)
      for (Eigen::Index i = 0; i < n; ++i) w(i, j) = 4.0 * gen.uniform() - 2.0;
    const Eigen::MatrixXd copy = w;
    const double top_p = trial % 3 == 0 ? 0.0 : (trial % 3 == 1 ? 0.7 : 1.0);
    moa::swarm::decode_into(w, out, {.top_p = top_p, .seed = gen()});
    REQUIRE((w.array() == copy.array()).all());
    REQUIRE(out.rows() == n);
    moa::dag_topology dag(out);
    REQUIRE_NOTHROW(dag.validate(std::size_t(n)));
    // An in-tree: every node but the sink has exactly one outgoing edge.
    REQUIRE(out.sum() == double(n - 1));
  }
}

TEST_CASE("Swarm.decode_sampling_is_seeded") {
  moa::rng gen(5);
  Eigen::MatrixXd w(6, 6);
  for (Eigen::Index j = 0; j < 6; ++j)
    for (Eigen::Index i = 0; i < 6; ++i) w(i, j) = gen.uniform();
  const auto a = moa::swarm::decode(w, {.top_p = 1.0, .seed = 11});
  CHECK(a == moa::swarm::decode(w, {.top_p = 1.0, .seed = 11}));
  bool differs = false;
  for (std::uint64_t s = 0; s < 50 && !differs; ++s)
    differs = moa::swarm::decode(w, {.top_p = 1.0, .seed = s}) != a;
  CHECK(differs);
  // A tiny nucleus keeps only the best choice: the greedy graph.
  CHECK(moa::swarm::decode(w, {.top_p = 1e-9, .seed = 3}) == moa::swarm::decode(w));
}

namespace {

// A random in-tree over n nodes: the planted optimum of the search tests.
std::vector<std::int32_t> random_tree(std::size_t n, std::uint64_t seed) {
  moa::rng gen(seed);
  std::vector<std::int32_t> order(n), parent(n, -1);
  for (std::size_t i = 0; i < n; ++i) order[i] = std::int32_t(i);
  for (std::size_t i = n - 1; i > 0; --i) std::swap(order[i], order[gen.below(i + 1)]);
  for (std::size_t k = 1; k < n; ++k) parent[std::size_t(order[k])] = order[gen.below(k)];
  return parent;
}

// Fraction of nodes whose decoded parent is the target's: 1 exactly at the target DAG.
struct tree_similarity {
  std::vector<std::int32_t> target;
  double operator()(const Eigen::MatrixXd& w) const {
    std::vector<std::int32_t> parent(target.size());
    moa::swarm::decode_parents(w, parent);
    std::size_t same = 0;
    for (std::size_t v = 0; v < target.size(); ++v) same += parent[v] == target[v];
    return double(same) / double(target.size());
  }
};

}  // namespace

TEST_CASE("Swarm.pso_finds_planted_dag") {
  // 5 nodes: 625 in-trees. A long step lets particles overshoot their attractors (the
  // normalised update alone never does), which this plateau-ridden utility needs; the box only
  // guards against overflow, since decoding ignores positive scaling. Random search with the
  // same number of evaluations finds about a third of the targets (docs/SWARM.md).
  constexpr std::size_t nodes = 5;
  const moa::swarm::pso_options opt{.step = 6.0,
                                    .patience = 100,
                                    .max_iterations = 200,
                                    .target_utility = 1.0,
                                    .lower = -1e6,
                                    .upper = 1e6,
                                    .threads = 1};
  int found = 0;
  std::size_t iterations = 0;
  for (std::uint64_t seed = 1; seed <= 100; ++seed) {
    tree_similarity u{random_tree(nodes, seed * 7919)};
    auto o = opt;
    o.seed = seed;
    auto start =
        moa::swarm::uniform_candidates<Eigen::MatrixXd>(10, nodes, nodes, 0.0, 1.0, seed, true);
    auto r = moa::swarm::optimize(std::move(start), u, o);
    found += r.best_utility == 1.0;
    iterations += r.iterations;
    CHECK(r.history.size() == r.iterations);
  }
  MESSAGE("found the planted DAG for ", found, " of 100 seeds, ", double(iterations) / 100.0,
          " iterations on average");
  CHECK(found >= 95);
}

TEST_CASE("Swarm.pso_same_seed_same_result_for_any_thread_count") {
  tree_similarity u{random_tree(6, 99)};
  auto run = [&](std::size_t threads) {
    auto start = moa::swarm::uniform_candidates<Eigen::MatrixXd>(10, 6, 6, 0.0, 1.0, 3, true);
    return moa::swarm::optimize(
        std::move(start), u,
        {.max_iterations = 30, .lower = 0, .upper = 1, .seed = 8, .threads = threads});
  };
  const auto one = run(1);
  for (std::size_t t : {2u, 4u}) {
    const auto many = run(t);
    CHECK(many.best == one.best);
    CHECK(many.history == one.history);
    CHECK(many.iterations == one.iterations);
  }
}

TEST_CASE("Swarm.pso_vector_candidate_stops_and_reports") {
  // A concave bowl with its top at (0.3, -0.2, 0.5).
  Eigen::VectorXd top(3);
  top << 0.3, -0.2, 0.5;
  std::vector<moa::swarm::pso_progress> seen;
  auto r = moa::swarm::optimize(
      moa::swarm::uniform_candidates<Eigen::VectorXd>(10, 3, 1, -1.0, 1.0, 4),
      [&](const Eigen::VectorXd& x) { return -(x - top).squaredNorm(); },
      {.patience = 30, .max_iterations = 300, .seed = 4, .threads = 2},
      [&](const moa::swarm::pso_progress& p) { seen.push_back(p); });
  CHECK((r.best - top).norm() < 0.25);
  CHECK(r.best_utility > seen.front().best_utility);
  REQUIRE(seen.size() == r.iterations);
  for (std::size_t k = 0; k < seen.size(); ++k) {
    CHECK(seen[k].iteration == k + 1);
    CHECK(seen[k].evaluations == 10 * (k + 1));
    if (k > 0) CHECK(seen[k].best_utility >= seen[k - 1].best_utility);
  }
  CHECK(r.stop != moa::swarm::pso_stop::target);

  SUBCASE("iteration cap") {
    auto c = moa::swarm::optimize(
        moa::swarm::uniform_candidates<Eigen::VectorXd>(4, 2, 1, -1.0, 1.0, 1),
        [](const Eigen::VectorXd& x) { return x.sum(); }, {.max_iterations = 3, .threads = 1});
    CHECK(c.iterations == 3);
    CHECK(c.stop == moa::swarm::pso_stop::max_iterations);
  }
  SUBCASE("bounds hold") {
    auto c = moa::swarm::optimize(
        moa::swarm::uniform_candidates<Eigen::VectorXd>(5, 2, 1, 0.0, 1.0, 1),
        [](const Eigen::VectorXd& x) { return x.sum(); },
        {.step = 5.0, .max_iterations = 20, .lower = 0.0, .upper = 1.0, .threads = 1});
    CHECK(c.best.minCoeff() >= 0.0);
    CHECK(c.best.maxCoeff() <= 1.0);
  }
  SUBCASE("a throwing utility propagates") {
    CHECK_THROWS_AS(moa::swarm::optimize(
                        moa::swarm::uniform_candidates<Eigen::VectorXd>(6, 2, 1, 0.0, 1.0, 1),
                        [](const Eigen::VectorXd&) -> double { throw std::runtime_error("boom"); },
                        {.threads = 3}),
                    std::runtime_error);
  }
  SUBCASE("invalid options") {
    CHECK_THROWS_AS(moa::swarm::particle_swarm<Eigen::VectorXd>({}, {}), moa::invalid_argument);
    CHECK_THROWS_AS(moa::swarm::particle_swarm<Eigen::VectorXd>(
                        moa::swarm::uniform_candidates<Eigen::VectorXd>(2, 2, 1, 0, 1, 1),
                        {.lower = 1.0, .upper = 0.0}),
                    moa::invalid_argument);
  }
}

namespace {

// Quality of each model: model 0 strong, model 5 broken, the rest in between.
constexpr double model_quality[] = {0.95, 0.6, 0.55, 0.5, 0.45, 0.0};

// A 4-node in-tree (0, 1, 2 → 3): the sink matters most, and a broken model anywhere hurts.
double system_utility(std::span<const std::uint32_t> who) {
  double u = 0.5 * model_quality[who[3]];
  for (std::size_t k = 0; k < 3; ++k) u += model_quality[who[k]] / 6.0;
  for (auto m : who)
    if (model_quality[m] == 0.0) u *= 0.5;
  return u;
}

}  // namespace

TEST_CASE("Swarm.jfk_ranks_strong_first_and_broken_last") {
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    CAPTURE(seed);
    auto jfk = moa::swarm::jfk_score(4, 6, system_utility,
                                     {.assignments = 60, .seed = seed, .threads = 2});
    const auto rank = jfk.ranking();
    CHECK(rank.front() == 0);
    CHECK(rank.back() == 5);
    REQUIRE(jfk.assignments.size() == 60);
    std::size_t total = 0;
    for (auto c : jfk.node_counts) total += c;
    CHECK(total == 60 * 4);
  }
}

TEST_CASE("Swarm.jfk_unscored_models_and_formula") {
  // One assignment of 2 nodes among 5 models: at most 2 models appear, 3 are unscored.
  auto jfk = moa::swarm::jfk_score(
      2, 5, [](std::span<const std::uint32_t> who) { return double(who[0] + 10 * who[1]); },
      {.assignments = 1, .seed = 9, .threads = 1});
  const auto& a = jfk.assignments[0];
  std::size_t scored = 0;
  for (std::size_t m = 0; m < 5; ++m) {
    const bool present = a[0] == m || a[1] == m;
    CHECK(jfk.scores[m].has_value() == present);
    scored += present;
    if (present) CHECK(*jfk.scores[m] == double(a[0] + 10 * a[1]));
  }
  const auto rank = jfk.ranking();
  for (std::size_t k = scored; k < 5; ++k) CHECK(!jfk.scores[rank[k]].has_value());

  // The weighting: a model holding 2 of the nodes counts twice.
  auto twice = moa::swarm::jfk_score(
      2, 2, [](std::span<const std::uint32_t> who) { return who[0] == who[1] ? 1.0 : 0.0; },
      {.assignments = 40, .seed = 4, .threads = 1});
  double weighted = 0.0, count = 0.0;
  for (std::size_t t = 0; t < 40; ++t)
    for (auto m : twice.assignments[t])
      if (m == 0) {
        weighted += twice.utilities[t];
        count += 1.0;
      }
  CHECK(*twice.scores[0] == doctest::Approx(weighted / count));
}

TEST_CASE("Dag.execution_matches_the_layered_plan_and_hand_built_references") {
  std::vector<moa::synthetic_backend> models;
  for (const char* name : {"a", "b", "c", "d"})
    models.emplace_back(moa::synthetic_options{.name = name});
  std::vector<moa::backend_ref> refs;
  for (auto& m : models) refs.emplace_back(m, std::string(m.name()));
  moa::inline_executor ex;
  const auto prompt = moa::make_request("Why is the sky blue?");

  const layer_list layers = {{0, 1, 2}, {1, 2}};
  const auto dag = moa::dag_topology::from_layers(layers, 3);
  const auto via_dag = ex.execute(dag.make_plan(), refs, prompt);
  const auto via_layers = ex.execute(moa::make_layered_plan(layers, 3), refs, prompt);
  REQUIRE(via_dag.ok());
  CHECK(via_dag.answer == via_layers.answer);
  CHECK(via_dag.answer.rfind("d answers ", 0) == 0);

  // 0 → 2, 1 → 2, 0 → 3, 2 → 3: the sink reads 0 and 2.
  moa::dag_topology hand(edges(4, {{0, 2}, {1, 2}, {0, 3}, {2, 3}}), {0, 1, 2, 3});
  const auto r = ex.execute(hand.make_plan(), refs, prompt);
  REQUIRE(r.ok());
  REQUIRE(r.trace.size() == 4);
  CHECK(r.trace[0].references.empty());
  CHECK(r.trace[2].references == std::vector<moa::call_id>{0, 1});
  CHECK(r.trace[3].references == std::vector<moa::call_id>{0, 2});

  moa::swarm::executor_answerer answer(ex, refs);
  CHECK(answer(hand, "Why is the sky blue?") == r.answer);
  CHECK_THROWS_AS(answer(moa::dag_topology(edges(2, {{0, 1}}), {0, 9}), "x"), moa::topology_error);
}

TEST_CASE("Swarm.scorers") {
  CHECK(moa::swarm::exact_match("  Paris\n", "paris") == 1.0);
  CHECK(moa::swarm::exact_match("Paris.", "Paris") == 0.0);
  CHECK(moa::swarm::extract_choice("The answer is (C).") == 'C');
  CHECK(moa::swarm::extract_choice("A plausible option is B, but the answer: D") == 'D');
  CHECK(moa::swarm::extract_choice("B") == 'B');
  CHECK(moa::swarm::extract_choice("no letter here") == std::nullopt);
  CHECK(moa::swarm::multiple_choice("I think (b)... no, the answer is B.", "(B)") == 1.0);
  CHECK(moa::swarm::multiple_choice("The answer is A", "B") == 0.0);
  CHECK(moa::swarm::multiple_choice("nothing", "B") == 0.0);
}

TEST_CASE("Swarm.dataset_utility_scores_in_parallel_and_caches") {
  // The answer is right when the sink is node 2 and node 0 feeds it directly.
  std::atomic<int> runs{0};
  auto answer = [&](const moa::dag_topology& dag, const std::string& prompt) {
    ++runs;
    const bool good = dag.sink() == 2 && dag.has_edge(0, 2);
    if (prompt == "throw") throw std::runtime_error("backend down");
    return good ? prompt + "!" : std::string("?");
  };
  std::vector<moa::swarm::example> data = {{"a", "A!"}, {"b", "b!"}, {"c", "x"}, {"throw", "x"}};
  moa::swarm::dataset_utility acc(data, answer, moa::swarm::exact_match, 3);
  moa::dag_topology good(edges(3, {{0, 2}, {1, 2}}));
  moa::dag_topology bad(edges(3, {{0, 1}, {2, 1}}));
  CHECK(acc(good) == doctest::Approx(0.5));
  CHECK(acc(bad) == 0.0);
  CHECK(runs == 8);
  CHECK(acc(good) == doctest::Approx(0.5));
  CHECK(runs == 8);
  CHECK(acc.cache().hits() == 1);
  CHECK(acc.cache().size() == 2);
  // Same shape, different assignment: a different key.
  moa::dag_topology reassigned = good;
  reassigned.assign(1, 0);
  CHECK(moa::swarm::topology_key(reassigned) != moa::swarm::topology_key(good));
  (void)acc(reassigned);
  CHECK(runs == 12);

  // As the utility of a search: finds a DAG with sink 2 fed by 0.
  auto found = moa::swarm::search_topology(3, acc,
                                           {.pso = {.step = 6.0,
                                                    .patience = 20,
                                                    .max_iterations = 60,
                                                    .target_utility = 0.5,
                                                    .lower = -1e6,
                                                    .upper = 1e6,
                                                    .seed = 5,
                                                    .threads = 2}});
  CHECK(found.utility == doctest::Approx(0.5));
  CHECK(found.best.sink() == 2);
  CHECK(found.best.has_edge(0, 2));
  CHECK(acc.cache().hits() > 0);
}

TEST_CASE("Swarm.dataset_utility_score_functions_see_the_prompt_when_they_take_three") {
  auto answer = [](const moa::dag_topology& dag, const std::string& prompt) {
    return prompt + "@" + std::to_string(dag.sink());
  };
  const std::vector<moa::swarm::example> data = {{"p1", "r1"}, {"p2", "r2"}, {"p3", "r3"}};
  const moa::dag_topology dag(edges(2, {{0, 1}}));  // sink 1
  std::mutex m;
  std::vector<std::string> seen;
  moa::swarm::dataset_utility with_prompt(
      data, answer,
      [&](std::string_view a, std::string_view r, std::string_view p) {
        std::lock_guard lock(m);
        seen.push_back(std::string(p) + "|" + std::string(a) + "|" + std::string(r));
        return p == "p2" ? 1.0 : 0.0;
      },
      2);
  CHECK(with_prompt(dag) == doctest::Approx(1.0 / 3.0));
  std::sort(seen.begin(), seen.end());
  CHECK(seen == std::vector<std::string>{"p1|p1@1|r1", "p2|p2@1|r2", "p3|p3@1|r3"});

  // Two arguments as before: a function, a lambda, a score_fn; three: a prompt_score_fn.
  CHECK(moa::swarm::dataset_utility(data, answer, moa::swarm::exact_match)(dag) == 0.0);
  CHECK(moa::swarm::dataset_utility(data, answer, [](std::string_view a, std::string_view) {
          return a.ends_with("@1") ? 1.0 : 0.0;
        })(dag) == 1.0);
  CHECK(moa::swarm::dataset_utility(data, answer,
                                    moa::swarm::score_fn(moa::swarm::exact_match))(dag) == 0.0);
  const moa::swarm::prompt_score_fn third = [](std::string_view a, std::string_view,
                                               std::string_view p) {
    return a.starts_with(p) ? 0.5 : 0.0;
  };
  CHECK(moa::swarm::dataset_utility(data, answer, third)(dag) == 0.5);
  // A callable that takes either gets the prompt.
  struct both {
    double operator()(std::string_view, std::string_view) const { return 0.25; }
    double operator()(std::string_view, std::string_view, std::string_view) const { return 0.75; }
  };
  CHECK(moa::swarm::dataset_utility(data, answer, both{})(dag) == 0.75);
  // A throwing score function scores 0, as a throwing answerer does.
  CHECK(moa::swarm::dataset_utility(
            data, answer, [](std::string_view, std::string_view, std::string_view p) -> double {
              if (p == "p1") throw std::runtime_error("judge down");
              return 1.0;
            })(dag) == doctest::Approx(2.0 / 3.0));
  // Empty score functions are refused when the utility is made, not at its first use.
  CHECK_THROWS_AS(moa::swarm::dataset_utility(data, answer, moa::swarm::score_fn{}),
                  moa::invalid_argument);
  CHECK_THROWS_AS(moa::swarm::dataset_utility(data, answer, moa::swarm::prompt_score_fn{}),
                  moa::invalid_argument);
  CHECK_THROWS_AS(
      moa::swarm::dataset_utility(
          data, answer, static_cast<double (*)(std::string_view, std::string_view)>(nullptr)),
      moa::invalid_argument);
  static_assert(moa::swarm::Scorer<decltype(&moa::swarm::multiple_choice)>);
  static_assert(moa::swarm::PromptScorer<moa::swarm::prompt_score_fn>);
  static_assert(!moa::swarm::PromptScorer<moa::swarm::score_fn>);
  static_assert(!moa::swarm::Scorer<int>);
  static_assert(!moa::swarm::Scorer<std::string (*)(std::string_view, std::string_view)>);
}

TEST_CASE("Swarm.search_topology_is_reproducible_and_reports_progress") {
  tree_similarity u{random_tree(5, 17)};
  // Similarity of the decoded DAG (as parents) to the target, from the DAG itself.
  auto dag_similarity = [&](const moa::dag_topology& dag) {
    std::size_t same = 0;
    for (std::size_t v = 0; v < 5; ++v) {
      std::int32_t parent = -1;
      for (std::size_t w = 0; w < 5; ++w)
        if (dag.has_edge(v, w)) parent = std::int32_t(w);
      same += parent == u.target[v];
    }
    return double(same) / 5.0;
  };
  std::size_t calls = 0;
  moa::swarm::topology_search_options opt;
  opt.pso.seed = 12;
  opt.pso.threads = 2;
  opt.pso.target_utility = 1.0;
  opt.pso.max_iterations = 200;
  opt.pso.patience = 100;
  auto a = moa::swarm::search_topology(5, dag_similarity, opt,
                                       [&](const moa::swarm::pso_progress&) { ++calls; });
  auto b = moa::swarm::search_topology(5, dag_similarity, opt);
  CHECK(a.best == b.best);
  CHECK(a.utility == b.utility);
  CHECK(calls == a.iterations);
  CHECK(a.utility == 1.0);
  CHECK(a.best == moa::swarm::decode_topology(a.weights));
  CHECK_NOTHROW(a.best.validate(5));

  opt.decode.top_p = 0.9;
  auto s1 = moa::swarm::search_topology(5, dag_similarity, opt);
  auto s2 = moa::swarm::search_topology(5, dag_similarity, opt);
  CHECK(s1.best == s2.best);
  CHECK(s1.best == moa::swarm::decode_topology(s1.weights, opt.decode));
}

namespace {

// A model whose quality is how close its two knobs are to a shared target (0.7, -0.4).
struct knob_model {
  Eigen::VectorXd p = Eigen::VectorXd::Zero(2);
  [[nodiscard]] Eigen::VectorXd parameters() const { return p; }
  void set_parameters(const Eigen::VectorXd& q) { p = q; }
  [[nodiscard]] double quality() const {
    Eigen::Vector2d t(0.7, -0.4);
    return std::exp(-(p - t).squaredNorm());
  }
};
static_assert(moa::Tunable<knob_model>);
static_assert(!moa::Tunable<int>);

}  // namespace

TEST_CASE("Swarm.weight_search_improves_tunable_models") {
  std::vector<knob_model> models(6);
  moa::rng gen(3);
  for (auto& m : models) {
    const double x = 4 * gen.uniform() - 2;  // two statements: argument order is unspecified
    m.p = Eigen::Vector2d(x, 4 * gen.uniform() - 2);
  }
  auto mean_quality = [&] {
    double q = 0;
    for (const auto& m : models) q += m.quality();
    return q / double(models.size());
  };
  const double before = mean_quality();
  std::vector<double> initial;
  for (const auto& m : models) initial.push_back(m.quality());
  // The system's utility: the mean quality of the models on its 3 nodes.
  auto utility = [&](std::span<const std::uint32_t> who) {
    double q = 0;
    for (auto m : who) q += models[m].quality();
    return q / double(who.size());
  };
  std::size_t iterations_seen = 0;
  auto r = moa::swarm::search_weights(std::span(models), 3, utility,
                                      {.pso = {.patience = 15, .max_iterations = 60, .seed = 2},
                                       .jfk = {.assignments = 12, .threads = 2}},
                                      [&](const moa::swarm::weight_search_progress& p) {
                                        ++iterations_seen;
                                        CHECK(p.jfk != nullptr);
                                      });
  CHECK(iterations_seen == r.iterations);
  CHECK(r.parameters.size() == 6);
  const double after = mean_quality();
  MESSAGE("mean model quality ", before, " -> ", after, " in ", r.iterations, " iterations");
  CHECK(after > before + 0.2);
  for (std::size_t m = 0; m < models.size(); ++m) CHECK(models[m].p == r.parameters[m]);

  std::vector<knob_model> mixed(2);
  mixed[1].p = Eigen::VectorXd::Zero(3);
  CHECK_THROWS_WITH_AS(moa::swarm::search_weights(std::span(mixed), 2, utility),
                       doctest::Contains("different lengths"), moa::invalid_argument);
}

TEST_CASE("Swarm.cost_aware_penalises_unstable_topologies") {
  // Three nodes feeding a sink; backend 0 is slow (mean service 2).
  moa::swarm::load_model load{
      .lambda = 0.2, .mean_service = {2.0, 0.5, 0.5}, .latency_weight = 0.01};
  moa::dag_topology spread(edges(3, {{0, 2}, {1, 2}}), {0, 1, 2});
  moa::dag_topology piled(edges(3, {{0, 2}, {1, 2}}), {0, 0, 0});  // rho_0 = 0.2 * 3 * 2 = 1.2
  const auto a = moa::swarm::dag_load(spread, load);
  CHECK(a.stable);
  CHECK(a.utilisation[0] == doctest::Approx(0.4));
  CHECK(a.bottleneck == 0);
  const auto b = moa::swarm::dag_load(piled, load);
  CHECK_FALSE(b.stable);
  CHECK(b.utilisation[0] == doctest::Approx(1.2));
  int runs = 0;
  auto u = moa::swarm::cost_aware(
      [&](const moa::dag_topology&) {
        ++runs;
        return 1.0;
      },
      load);
  CHECK(u(piled) == -1.0);
  CHECK(runs == 0);
  CHECK(u(spread) == doctest::Approx(1.0 - 0.01 * a.summed_sojourn));
  CHECK(runs == 1);
  CHECK_THROWS_AS(moa::swarm::dag_load(moa::dag_topology(edges(2, {{0, 1}}), {0, 7}), load),
                  moa::invalid_argument);
}

TEST_CASE("Swarm.weight_search_tunes_synthetic_backends_end_to_end") {
  // The whole weight step without a GPU: synthetic backends whose answers depend on their
  // parameters, run through a real plan by the inline executor.
  static_assert(moa::Tunable<moa::tunable_synthetic_backend>);
  static_assert(!moa::Tunable<moa::synthetic_backend>);
  const Eigen::Vector2d target(0.7, -0.4);
  std::vector<moa::tunable_synthetic_backend> models;
  moa::rng gen(5);
  for (int k = 0; k < 5; ++k) {
    const double x = 4 * gen.uniform() - 2;
    models.emplace_back(moa::tunable_synthetic_options{
        .name = "m" + std::to_string(k),
        .parameters = Eigen::Vector2d(x, 4 * gen.uniform() - 2),
        .tuned_answer = [target](const moa::request&, const Eigen::VectorXd& p) {
          return std::to_string(std::exp(-(p - target).squaredNorm()));
        }});
  }
  // A 2-node chain; the utility is the mean quality the nodes' models report in the trace.
  const moa::dag_topology chain(Eigen::Matrix2d{{0, 1}, {0, 0}});
  std::vector<moa::backend_ref> refs;
  for (auto& m : models) refs.emplace_back(m, std::string(m.name()));
  auto utility = [&](std::span<const std::uint32_t> who) {
    moa::dag_topology dag = chain;
    for (std::size_t v = 0; v < who.size(); ++v) dag.assign(v, who[v]);
    const auto r = moa::inline_executor{}.execute(dag.make_plan(), refs, moa::make_request("q"));
    double q = 0;
    for (const auto& rec : r.trace) q += std::stod(rec.text);
    return q / double(r.trace.size());
  };
  auto mean_quality = [&] {
    double q = 0;
    for (const auto& m : models) q += std::exp(-(m.parameters() - target).squaredNorm());
    return q / double(models.size());
  };
  const double before = mean_quality();
  const auto r =
      moa::swarm::search_weights(std::span(models), 2, utility,
                                 {.pso = {.patience = 15, .max_iterations = 60, .seed = 4},
                                  .jfk = {.assignments = 10, .threads = 2}});
  const double after = mean_quality();
  MESSAGE("synthetic backends: mean quality ", before, " -> ", after, " in ", r.iterations,
          " iterations");
  CHECK(after > before + 0.2);
  for (const auto& m : models) CHECK(m.parameters().size() == 2);
}

namespace {

// The joint loop's test bed: 4 tunable models with a planted best DAG (model k feeds
// target[k]) and a planted best weight vector (knob_model's). A system's utility is the
// fraction of its nodes placed as planted times the mean quality of the models on its nodes:
// the role step alone cannot raise the quality, the weight step alone cannot fix the roles.
struct planted_joint {
  std::vector<knob_model> models;
  std::vector<int> target;
  explicit planted_joint(std::uint64_t seed) : models(4), target(4, -1) {
    moa::rng gen(seed);
    for (auto& m : models) {
      const double x = 4 * gen.uniform() - 2;
      m.p = Eigen::Vector2d(x, 4 * gen.uniform() - 2);
    }
    std::vector<int> order = {0, 1, 2, 3};
    for (std::size_t i = 3; i > 0; --i) std::swap(order[i], order[gen.below(i + 1)]);
    for (std::size_t k = 1; k < 4; ++k) target[std::size_t(order[k])] = order[gen.below(k)];
  }
  double operator()(const moa::dag_topology& dag) const {
    const auto n = dag.size();
    double placed = 0, quality = 0;
    for (std::size_t v = 0; v < n; ++v) {
      const auto k = dag.backends()[v];
      int successor = -1, successors = 0;
      for (std::size_t w = 0; w < n; ++w)
        if (dag.has_edge(v, w)) successor = int(dag.backends()[w]), ++successors;
      placed += successors <= 1 && successor == target[k] ? 1.0 : 0.0;
      quality += models[k].quality();
    }
    return placed / double(n) * quality / double(n);
  }
};

}  // namespace

TEST_CASE("Swarm.joint_search_beats_either_step_alone") {
  const moa::swarm::swarm_search_options opt{
      .role = {.pso = {.step = 6.0,
                       .patience = 20,
                       .max_iterations = 60,
                       .lower = -1e6,
                       .upper = 1e6,
                       .threads = 1}},
      .weight = {.pso = {.patience = 15, .max_iterations = 60, .threads = 1},
                 .jfk = {.assignments = 12, .threads = 1}},
      .rounds = 6,
      .patience = 3};
  const std::size_t seeds = 12;
  double joint_sum = 0, role_sum = 0, weight_sum = 0;
  std::size_t better = 0;
  for (std::uint64_t s = 1; s <= seeds; ++s) {
    CAPTURE(s);
    // The role step alone, at the initial weights.
    planted_joint role_bed(s);
    auto role_opt = opt.role;
    role_opt.pso.seed = s;
    const double role_alone = moa::swarm::search_topology(4, role_bed, role_opt).utility;
    // The weight step alone, on the graph a random candidate decodes to.
    planted_joint weight_bed(s);
    const auto start = moa::swarm::uniform_candidates<Eigen::MatrixXd>(1, 4, 4, 0.0, 1.0, s, true);
    const auto graph = moa::swarm::decode_topology(start[0]);
    auto on_graph = [&](std::span<const std::uint32_t> who) {
      return weight_bed(moa::dag_topology(graph.adjacency(), {who.begin(), who.end()}));
    };
    auto weight_opt = opt.weight;
    weight_opt.pso.seed = s;
    double sampled = 0;
    (void)moa::swarm::search_weights(std::span(weight_bed.models), 4, on_graph, weight_opt,
                                     [&](const moa::swarm::weight_search_progress& p) {
                                       for (double u : p.jfk->utilities)
                                         sampled = std::max(sampled, u);
                                     });
    const double weight_alone = std::max(sampled, weight_bed(graph));
    // Both, alternated.
    planted_joint joint_bed(s);
    auto joint_opt = opt;
    joint_opt.seed = s;
    std::size_t rounds_seen = 0;
    const auto r = moa::swarm::search_swarm(std::span(joint_bed.models), joint_bed, joint_opt,
                                            [&](const moa::swarm::swarm_round&) { ++rounds_seen; });
    CHECK(rounds_seen == r.rounds);
    CHECK(r.history.size() == r.rounds);
    for (std::size_t i = 1; i < r.history.size(); ++i)
      CHECK(r.history[i].best_utility >= r.history[i - 1].best_utility);
    // The reported system is what it claims: its weights are applied and it scores its utility.
    for (std::size_t m = 0; m < 4; ++m) CHECK(joint_bed.models[m].p == r.parameters[m]);
    CHECK(joint_bed(r.best) == doctest::Approx(r.utility));
    CHECK(r.utility > role_alone);
    better += r.utility > weight_alone ? 1 : 0;
    MESSAGE("seed ", s, ": joint ", r.utility, " in ", r.rounds, " rounds, role alone ", role_alone,
            ", weight alone ", weight_alone);
    joint_sum += r.utility;
    role_sum += role_alone;
    weight_sum += weight_alone;
  }
  MESSAGE("mean utility over ", seeds, " seeds: joint ", joint_sum / seeds, ", role step alone ",
          role_sum / seeds, ", weight step alone ", weight_sum / seeds);
  // Seed 5 is the exception at the time of writing (0.43 against 0.47): the first role step, at
  // weights of quality ~0.05, settles on a wrong graph and the rounds run out; allow two.
  CHECK(better >= seeds - 2);
  CHECK(joint_sum / seeds > 0.8);
  CHECK(joint_sum > role_sum + 0.2 * seeds);
  CHECK(joint_sum > weight_sum + 0.2 * seeds);
}
