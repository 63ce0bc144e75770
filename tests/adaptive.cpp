// SPDX-License-Identifier: MIT
// Tests of the adaptive layout policy (moa/queueing/adaptive.hpp) and of its simulator source
// and load ramp (adaptive_sim.hpp). Fixed seeds; bounds derived from the stability formulas and
// from each run's length, never from wall-clock time.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include <moa/core/error.hpp>
#include <moa/queueing/adaptive.hpp>
#include <moa/queueing/adaptive_sim.hpp>
#include <moa/queueing/stability.hpp>

namespace q = moa::queueing;

namespace {

// Feeds the policy arrivals at exactly rate lambda[i] per origin i (evenly spaced, interleaved)
// for `windows` rate windows and returns the last decision.
q::layout_decision steady(q::adaptive_policy& policy, const std::vector<double>& lambda,
                          double windows) {
  const double end = windows * policy.config().rate_window;
  std::vector<double> next(lambda.size());
  for (std::size_t i = 0; i < lambda.size(); ++i) next[i] = 1 / lambda[i] * double(i + 1) / 8;
  q::layout_decision last;
  for (;;) {
    std::size_t o = 0;
    for (std::size_t i = 1; i < next.size(); ++i)
      if (next[i] < next[o]) o = i;
    if (next[o] > end) return last;
    last = policy.decide(static_cast<std::uint32_t>(o), next[o]);
    next[o] += 1 / lambda[o];
  }
}

q::adaptive_config exact(std::size_t n, std::vector<double> alpha) {
  q::adaptive_config c;
  c.devices = n;
  c.prior_service = std::move(alpha);
  c.z = 0;  // the point estimate: compared with the hand-computed limit
  c.allowed = {{2, 2}, {1, 1}};
  c.target = 0.8;
  c.rate_window = 1000;
  c.hysteresis = 0;  // back up as soon as the estimate settles under the target
  return c;
}

}  // namespace

TEST_CASE("Adaptive.homogeneous_decision_follows_theorem_1") {
  // (2, 2) loads every device at alpha ((k+1) M + 1) lambda = 7 lambda: under the target 0.8 up
  // to lambda = 0.8 / 7; (1, 1) at 3 lambda. Deterministic arrivals: the estimate is within
  // 0.5 / (lambda tau) of lambda, far below the 4% margins used.
  const double limit = 0.8 * q::theorem1_limit(2, 2, 1.0);
  CHECK(limit == doctest::Approx(0.8 / 7));
  {
    q::adaptive_policy p(exact(4, {1.0}));
    const auto d = steady(p, std::vector<double>(4, 0.96 * limit), 20);
    CHECK(d.admitted);
    CHECK(d.layers == 2);
    CHECK(d.fanout == 2);
    CHECK(d.utilisation == doctest::Approx(0.96 * 0.8).epsilon(0.01));
  }
  {
    q::adaptive_policy p(exact(4, {1.0}));
    const auto d = steady(p, std::vector<double>(4, 1.04 * limit), 20);
    CHECK(d.admitted);
    CHECK(d.layers == 1);
    CHECK(d.fanout == 1);
    CHECK(d.reason == q::layout_reason::held);  // taken long ago, then held
    CHECK(d.utilisation == doctest::Approx(3 * 1.04 * limit).epsilon(0.01));
  }
}

TEST_CASE("Adaptive.heterogeneous_decision_follows_the_traffic_equations") {
  // One device 3x slower: the slowest binds, rho = 3 * 7 lambda for (2, 2).
  const std::vector<double> alpha{1, 1, 1, 3};
  const double limit = 0.8 * q::heterogeneous_limit(2, 2, alpha);
  CHECK(limit == doctest::Approx(0.8 / 21));
  {
    q::adaptive_policy p(exact(4, alpha));
    const auto d = steady(p, std::vector<double>(4, 0.96 * limit), 20);
    CHECK(d.layers == 2);
    CHECK(d.bottleneck == 3);
  }
  {
    q::adaptive_policy p(exact(4, alpha));
    CHECK(steady(p, std::vector<double>(4, 1.04 * limit), 20).layers == 1);
  }
  // Unequal users, equal devices: rho_j = 3 lambda_j + (4 / 3) (sum - lambda_j) for (2, 2).
  // lambda = s * {1, 1, 1, 3}: rho_3 = s (9 + 4) = 13 s, rho_0 = s (3 + 20 / 3) = 9.67 s.
  const double s = 0.8 / 13;
  for (double f : {0.96, 1.04}) {
    q::adaptive_policy p(exact(4, {1.0}));
    const auto d = steady(p, {f * s, f * s, f * s, 3 * f * s}, 20);
    CHECK(d.layers == (f < 1 ? 2u : 1u));
    if (f < 1) CHECK(d.bottleneck == 3);
  }
}

TEST_CASE("Adaptive.quality_table_ranks_layouts") {
  // A table that prefers (1, 2) over (2, 1) although it makes fewer calls.
  auto c = exact(4, {1.0});
  c.allowed = {{2, 1, 0.5}, {1, 2, 0.9}, {1, 0, 0.1}};
  q::adaptive_policy p(c);
  const auto d = steady(p, std::vector<double>(4, 0.01), 5);
  CHECK(d.index == 1);
  CHECK(d.why().find("M=1 k=2") == 0);
}

TEST_CASE("Adaptive.constant_load_does_not_oscillate") {
  // Poisson load at a boundary of the default layouts (0.8x the (2, 2) limit sits where (2, 1)
  // and (1, 2) meet): changes are bounded by the hold (an upgrade waits `hold` after any change,
  // so at most two changes per hold), and in fact far rarer.
  q::ramp_config c;
  c.loads = {0.8};
  c.phase_length = 100000;
  const auto r = q::run_ramp(c);
  const double windows = (c.phase_length * 2) / c.policy.rate_window;  // phase + drain
  CHECK(double(r.changes) <= 2 * windows);
  CHECK(double(r.changes) <= windows / 4);
  // At a comfortably stable load (0.5x) the choice never moves.
  c.loads = {0.5};
  CHECK(q::run_ramp(c).changes == 0);
}

TEST_CASE("Adaptive.ramp_keeps_latency_where_the_static_layout_diverges") {
  q::ramp_config c;  // n = 4, alpha = {1, 1, 1, 3}, (2, 2) reference, loads 0.5x .. 2x
  c.phase_length = 10000;
  const auto r = q::run_ramp(c);
  CHECK(r.limit == doctest::Approx(1.0 / 21));
  REQUIRE(r.adaptive.size() == 7);
  // Comfortably stable: (2, 2) for >= 99% of the prompts.
  const auto& first = r.adaptive.front();
  CHECK(double(first.at_layout[0]) >= 0.99 * double(first.arrived));
  // Nothing admitted is lost: the drain lets every admitted prompt end.
  CHECK(r.adaptive_completed == r.adaptive_admitted);
  CHECK(r.fixed_completed < r.fixed_admitted);
  double worst = 0;
  for (const auto& p : r.adaptive) {
    CHECK(p.refused == 0);  // 2x (2, 2) is far below the (1, 0) layout's capacity (3.5x)
    worst = std::max(worst, p.p99);
  }
  // The static layout's p99 grows without bound past 1x; the adaptive one stays within 2x its
  // p99 at half load.
  CHECK(worst <= 2 * r.fixed.front().p99);
  CHECK(r.fixed.back().p99 > 50 * worst);
  CHECK(r.fixed.back().end_queue > 100 * r.adaptive.back().end_queue + 100);
}

TEST_CASE("Adaptive.admission_refuses_only_over_the_smallest_capacity") {
  // Only (1, 1): rho_slow = 3 * 3 lambda, so (1, 1)'s limit is 21 / 9 = 2.33x the (2, 2) limit.
  q::ramp_config c;
  c.policy.allowed = {{1, 1}};
  c.loads = {1.5, 3.5};  // 0.64 and 1.5 of (1, 1)'s capacity
  c.phase_length = 20000;
  const auto r = q::run_ramp(c);
  CHECK(r.adaptive[0].refused == 0);
  const auto& over = r.adaptive[1];
  REQUIRE(over.refused > 0);
  // The admitted share loads the bottleneck at the target: target / rho = 0.8 / 1.5.
  const double admitted = 1 - double(over.refused) / double(over.arrived);
  const double sd = std::sqrt(admitted * (1 - admitted) / double(over.arrived));
  CHECK(admitted == doctest::Approx(0.8 / 1.5).epsilon(0.05 + 4 * sd));
  CHECK(r.adaptive_completed == r.adaptive_admitted);  // refused at once, none lost after
  CHECK(r.adaptive.back().end_queue < 50);
}

TEST_CASE("Adaptive.decision_is_recorded_and_inputs_checked") {
  q::adaptive_config c;
  c.devices = 4;
  c.warmup_arrivals = 0;
  q::adaptive_policy p(c);
  const auto d = p.decide(0, 0);
  CHECK(d.admitted);
  CHECK(!d.why().empty());
  CHECK_THROWS_AS(p.decide(4, 1), moa::invalid_argument);
  auto bad = c;
  bad.target = 1.0;
  CHECK_THROWS_AS(q::adaptive_policy{bad}, moa::invalid_argument);
  bad = c;
  bad.allowed = {{2, 4}};  // k > n - 1
  CHECK_THROWS(q::adaptive_policy{bad});
  bad = c;
  bad.allowed.clear();
  CHECK_THROWS_AS(q::adaptive_policy{bad}, moa::invalid_argument);
  bad = c;
  bad.prior_service = {1, 2};
  CHECK_THROWS_AS(q::adaptive_policy{bad}, moa::invalid_argument);
}

// Across processes each origin sees only its own arrivals and serves only its own calls: the
// others' rates and service times arrive as reports (moa device --adaptive gossips them). With
// exact reports, a policy that sees one origin decides as the one that sees every arrival.
TEST_CASE("Adaptive.reports_stand_for_other_origins_and_devices") {
  const double s = 0.8 / 13;  // as above: lambda = s {1, 1, 1, 3} loads device 3 at 13 s
  for (double f : {0.96, 1.04}) {
    const std::vector<double> lambda{f * s, f * s, f * s, 3 * f * s};
    q::adaptive_policy one(exact(4, {1.0}));
    for (std::uint32_t j = 1; j < 4; ++j) one.report_arrival_rate(j, lambda[j]);
    q::layout_decision last;
    const double end = 20 * one.config().rate_window;
    for (double t = 1 / lambda[0]; t <= end; t += 1 / lambda[0]) last = one.decide(0, t);
    CHECK(last.layers == (f < 1 ? 2u : 1u));
    CHECK(last.offered_rate == doctest::Approx(f * s * 6).epsilon(0.02));
    CHECK(one.rate_estimate(0, end) == doctest::Approx(lambda[0]).epsilon(0.05));
  }
  // A slow device known only by its report: (2, 2) at 0.96 x its limit with alpha_3 = 3 fits,
  // at 1.04 x it does not; with the prior (1) it would fit both.
  const std::vector<double> alpha{1, 1, 1, 3};
  const double limit = 0.8 * q::heterogeneous_limit(2, 2, alpha);
  for (double f : {0.96, 1.04}) {
    q::adaptive_policy p(exact(4, {1.0}));
    p.report_service(3, 3.0);
    CHECK(p.service_means()[3] == 3.0);
    CHECK(steady(p, std::vector<double>(4, f * limit), 20).layers == (f < 1 ? 2u : 1u));
  }
  // Reports that are not numbers in range change nothing.
  q::adaptive_policy p(exact(4, {1.0}));
  p.report_service(1, -1);
  p.report_service(1, std::nan(""));
  p.report_service(1, 0);
  p.report_service(9, 2);
  p.report_arrival_rate(2, -1);
  p.report_arrival_rate(2, INFINITY);
  p.report_arrival_rate(9, 1);
  CHECK(p.service_means()[1] == 1.0);
  const auto d = p.decide(0, 0);
  CHECK(d.admitted);
  CHECK(p.rate_estimate(0, 0) == 0);  // one arrival spans no time
  CHECK(p.rate_estimate(7, 1) == 0);
}
