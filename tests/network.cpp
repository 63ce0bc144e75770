// SPDX-License-Identifier: MIT
// Gossip strategies, devices and the in-process network; the live network is checked against the
// discrete-event simulator on the same configuration.
//
// Timing: the live network sleeps through millisecond service times, so these tests measure wall
// time. They stay robust on loaded CI machines (and under TSan) by comparing the live network
// with a simulator fed the same arrivals, the same per-prompt plans and the service times the
// devices really delivered (common random numbers): what remains is the protocol, which is what
// is under test. Tolerances are statistical and generous elsewhere.
#include <doctest/doctest.h>

// g++ 12 at -O3 warns falsely on string concatenation inlined from synthetic_backend's
// constructor (-Wrestrict, GCC PR 105651).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wrestrict"
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <queue>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "moa/aggregate/policies.hpp"
#include "moa/backends/synthetic.hpp"
#include "moa/gossip/strategies.hpp"
#include "moa/net/adaptive.hpp"
#include "moa/net/device.hpp"
#include "moa/net/network.hpp"
#include "moa/net/peer_view.hpp"
#include "moa/queueing/adaptive_sim.hpp"
#include "moa/queueing/simulator.hpp"
#include "moa/queueing/stability.hpp"
#include "moa/topology/gossip.hpp"
#include "planted.hpp"

using namespace std::chrono_literals;

namespace {

std::vector<std::uint32_t> pick(const auto& g, std::uint32_t origin, std::uint32_t n,
                                moa::rng& random, std::span<const double> load = {}) {
  std::vector<std::uint32_t> out(g.fanout());
  const std::size_t got = g.select({origin, n, 1, &random, load}, out);
  out.resize(got);
  return out;
}

void check_peers(const std::vector<std::uint32_t>& peers, std::uint32_t origin, std::uint32_t n) {
  std::set<std::uint32_t> seen(peers.begin(), peers.end());
  CHECK(seen.size() == peers.size());
  for (auto p : peers) {
    CHECK(p != origin);
    CHECK(p < n);
  }
}

std::vector<moa::any_backend> synthetic_devices(std::span<const double> service_ms,
                                                bool exponential = false, std::uint64_t seed = 7) {
  std::vector<moa::any_backend> out;
  for (std::size_t i = 0; i < service_ms.size(); ++i) {
    const auto mean = std::chrono::nanoseconds(std::int64_t(service_ms[i] * 1e6));
    out.emplace_back(
        moa::synthetic_backend({.name = "d" + std::to_string(i),
                                .latency = exponential ? moa::latency_model::exponential(mean)
                                                       : moa::latency_model::constant(mean),
                                .seed = seed + i}));
  }
  return out;
}

// Replays the plans a live run used, prompt by prompt, for the simulator (gossip shape: M layers
// of k + 1 calls, then the aggregator).
struct replayed_plans {
  std::vector<std::vector<std::uint32_t>> devices;
  std::uint32_t layers = 0;
  std::size_t next = 0;
  moa::plan p;
  const moa::plan& operator()(std::uint32_t, moa::rng&) {
    const auto& d = devices.at(next++);
    const std::size_t width = (d.size() - 1) / layers;
    p.clear();
    std::vector<moa::call_id> previous;
    std::size_t at = 0;
    for (std::uint32_t layer = 1; layer <= layers; ++layer) {
      const auto g = p.add_group(previous);
      previous.clear();
      for (std::size_t i = 0; i < width; ++i)
        previous.push_back(p.add_call(d[at++], g, layer, moa::call_role::proposer));
    }
    p.add_call(d[at], p.add_group(previous), layers + 1, moa::call_role::aggregator);
    p.seal();
    return p;
  }
};

struct comparison {
  double live_queue = 0, sim_queue = 0, live_latency = 0, sim_latency = 0;
};

// The simulator on the live run's own configuration: same arrivals, same plans, and each device's
// measured service times.
comparison simulate_like(const moa::net::network_report& live,
                         std::span<const moa::net::arrival> arrivals, std::uint32_t layers) {
  moa::queueing::sim_config cfg;
  cfg.devices = live.devices.size();
  for (const auto& a : arrivals) cfg.trace.push_back({a.time, a.origin});
  for (const auto& d : live.devices)
    cfg.service.push_back(moa::queueing::service_model::empirical(d.service));
  cfg.horizon = live.window;
  cfg.warmup = 0;
  replayed_plans source;
  source.layers = layers;
  for (const auto& r : live.prompts) source.devices.push_back(r.devices());
  const auto sim = moa::queueing::simulate(cfg, source);
  comparison c;
  for (std::size_t i = 0; i < live.devices.size(); ++i) {
    c.live_queue += live.devices[i].mean_queue;
    c.sim_queue += sim.devices[i].mean_queue;
  }
  c.live_latency = live.mean_latency;
  c.sim_latency = sim.mean_latency;
  return c;
}

using moa_test::planted;

}  // namespace

// --- gossip strategies --------------------------------------------------------------------------

TEST_CASE("Gossip.graph_picks_only_neighbours") {
  auto ring = moa::graph_gossip::ring(6, 2);  // i - 1 and i + 1
  moa::rng random(3);
  std::vector<int> hits(6, 0);
  for (int t = 0; t < 2000; ++t) {
    auto peers = pick(ring, 2, 6, random);
    REQUIRE(peers.size() == 2);
    check_peers(peers, 2, 6);
    for (auto p : peers) ++hits[p];
  }
  CHECK(hits[1] == 2000);
  CHECK(hits[3] == 2000);
  CHECK(hits[0] + hits[4] + hits[5] == 0);

  // A star: the hub's leaves take turns uniformly, a leaf only ever gossips to the hub.
  moa::graph_gossip star({{1, 2, 3, 4}, {0}, {0}, {0}, {0}}, 1);
  CHECK(star.fanout_of(1) == 1);
  std::vector<int> leaf(5, 0);
  for (int t = 0; t < 4000; ++t) ++leaf[pick(star, 0, 5, random).at(0)];
  for (int j = 1; j < 5; ++j) CHECK(std::abs(leaf[j] - 1000) < 150);  // ~5 sigma
  CHECK(pick(star, 3, 5, random) == std::vector<std::uint32_t>{0});

  CHECK_THROWS_WITH_AS(moa::graph_gossip({{0}}, 1), doctest::Contains("itself"),
                       moa::invalid_argument);
  CHECK_THROWS_WITH_AS(moa::graph_gossip({{1, 1}, {0}}, 1), doctest::Contains("twice"),
                       moa::invalid_argument);
}

TEST_CASE("Gossip.round_robin_is_exactly_even") {
  moa::round_robin_gossip rr(2);
  moa::rng random(1);
  std::vector<int> hits(5, 0);
  for (int t = 0; t < 8; ++t) {  // 8 layers x 2 peers = 16 picks over 4 others: 4 each
    auto peers = pick(rr, 1, 5, random);
    check_peers(peers, 1, 5);
    for (auto p : peers) ++hits[p];
  }
  CHECK(hits == std::vector<int>{4, 0, 4, 4, 4});
  // Copies share the rotation (a network copies its strategy).
  moa::round_robin_gossip copy = rr;
  CHECK(pick(copy, 1, 5, random) == std::vector<std::uint32_t>{0, 2});
  static_assert(moa::round_robin_k<3>::static_fanout == 3);
}

TEST_CASE("Gossip.least_loaded_picks_the_shortest_queues") {
  moa::least_loaded_gossip g{.k = 2, .d = 0};
  moa::rng random(5);
  const double load[] = {4, 0, 9, 1, 7};
  for (int t = 0; t < 50; ++t) {
    auto peers = pick(g, 0, 5, random, load);
    std::sort(peers.begin(), peers.end());
    CHECK(peers == std::vector<std::uint32_t>{1, 3});
  }
  // Power of two choices for one peer: never the longest queue of the four others... unless it is
  // one of both candidates drawn and the other is longer, which cannot happen for the longest.
  moa::power_of_d<1, 2> two;
  std::vector<int> hits(5, 0);
  for (int t = 0; t < 3000; ++t) ++hits[pick(two, 0, 5, random, load).at(0)];
  CHECK(hits[2] == 0);       // 9: longest, never the shorter of two
  CHECK(hits[1] > hits[3]);  // 0 beats everything it meets
  CHECK(hits[3] > hits[4]);
  // Without loads it is uniform.
  std::vector<int> flat(5, 0);
  for (int t = 0; t < 4000; ++t)
    for (auto p : pick(g, 0, 5, random)) ++flat[p];
  for (int j = 1; j < 5; ++j) CHECK(std::abs(flat[j] - 2000) < 160);
}

TEST_CASE("Gossip.strategies_build_plans") {
  moa::rng random(2);
  moa::plan p;
  moa::make_gossip_plan(0, 4, 2, moa::round_robin_k<2>{}, random, p);
  CHECK(p.size() == 7);
  moa::make_gossip_plan(1, 4, 2, moa::power_of_d<2, 3>{}, random, p);
  CHECK(p.size() == 7);
  moa::make_gossip_plan(0, 6, 1, moa::graph_gossip::ring(6, 2), random, p);
  CHECK(p.size() == 4);
  using edge = moa::gossip_topology<moa::devices<4>, moa::layers<2>, moa::power_of_d<2>>;
  static_assert(edge::calls_per_prompt == 7);
}

// --- device -------------------------------------------------------------------------------------

TEST_CASE("Network.device_refuses_when_full_and_measures_time_averages" * doctest::timeout(30)) {
  // Declared before the device: its destructor joins a worker still serving the 200 ms call.
  std::atomic<int> served{0}, handed_back{0};
  moa::net::device d({.capacity = 2, .record_service = true});
  auto owner = std::make_shared<int>(0);
  // Two calls of 40 ms on one server: in system 2 for 40 ms then 1 for 40 ms -> mean 1.5.
  static std::atomic<int>* counters[2];
  counters[0] = &served;
  counters[1] = &handed_back;
  auto task = [&](std::uint64_t ms) {
    return moa::net::device::task{
        [](void*, std::uint64_t sleep_ms, bool s) {
          if (s) {
            std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
            ++*counters[0];
          } else {
            ++*counters[1];
          }
        },
        owner, ms};
  };
  const auto t0 = moa::clock::now();
  d.reset_stats(t0);
  REQUIRE(d.try_push(task(40)) == moa::net::device::refusal::none);
  REQUIRE(d.try_push(task(40)) == moa::net::device::refusal::none);
  CHECK(d.try_push(task(40)) == moa::net::device::refusal::full);
  d.start();
  while (served.load() < 2) std::this_thread::sleep_for(1ms);
  std::this_thread::sleep_for(5ms);
  const auto s = d.stats(moa::clock::now());
  CHECK(s.refused == 1);
  CHECK(s.completed == 2);
  CHECK(s.max_in_system == 2);
  CHECK(s.service.size() == 2);
  // area = 2 * T1 + 1 * T2 over a window slightly longer than T1 + T2.
  const double expected = (2 * s.service[0] + s.service[1]) / s.window;
  CHECK(s.mean_queue == doctest::Approx(expected).epsilon(0.05));
  // Busy time over the window, whatever the scheduler's wake-up delays made the window.
  CHECK(s.utilisation == doctest::Approx((s.service[0] + s.service[1]) / s.window).epsilon(0.05));
  // A killed device hands its queue back and refuses everything.
  REQUIRE(d.try_push(task(200)) == moa::net::device::refusal::none);
  REQUIRE(d.try_push(task(1)) == moa::net::device::refusal::none);
  std::this_thread::sleep_for(20ms);
  d.kill();
  CHECK(handed_back.load() >= 1);
  CHECK(d.try_push(task(1)) == moa::net::device::refusal::dead);
  CHECK(!d.alive());
  CHECK_THROWS_AS(moa::net::device({.capacity = 1, .concurrency = 2}), moa::invalid_argument);
}

// --- in-process network ------------------------------------------------------------------------

TEST_CASE("Network.plan_references_and_traces" * doctest::timeout(30)) {
  const double ms[] = {0.2, 0.2, 0.2, 0.2};
  moa::net::network net(synthetic_devices(ms), moa::uniform_gossip{2}, {.layers = 2});
  const moa::net::arrival arrivals[] = {{0, 0}, {1, 1}, {2, 2}, {3, 3}};
  const auto r = net.run(arrivals);
  REQUIRE(r.prompts.size() == 4);
  CHECK(r.complete == 4);
  for (const auto& p : r.prompts) {
    REQUIRE(p.result.trace.size() == 7);
    CHECK(p.result.ok());
    CHECK(p.result.answer.starts_with("d" + std::to_string(p.origin) + " answers"));
    const auto d = p.devices();
    CHECK(d[0] == p.origin);  // the origin answers every layer and aggregates
    CHECK(d[3] == p.origin);
    CHECK(d[6] == p.origin);
    CHECK(p.result.trace[3].references == std::vector<moa::call_id>{0, 1, 2});
    CHECK(p.result.trace[6].references == std::vector<moa::call_id>{3, 4, 5});
    CHECK(p.result.trace[6].role == moa::call_role::aggregator);
    CHECK(p.result.trace[3].start >= p.result.trace[2].end);  // join before the next layer
  }
  CHECK_THROWS_AS(net.submit(9, {}), moa::invalid_argument);
}

TEST_CASE("Network.matches_the_simulator_at_0_8_of_the_limit" * doctest::timeout(180)) {
  constexpr std::uint32_t n = 4, layers = 2, k = 2;
  // 4 ms services: thread wake-ups (0.1-0.2 ms per call under a sanitizer on a busy 2-core
  // machine) then raise the load from 0.8 to ~0.84, not to ~0.94 as with 1 ms, where the mean
  // queue is so sensitive to the service time that 2,000 prompts cannot pin it within 10%.
  constexpr double alpha = 4.0;  // ms
  const double limit = moa::queueing::theorem1_limit(layers, k, alpha);
  const std::vector<double> lambda(n, 0.8 * limit);
  const std::vector<double> ms(n, alpha);
  const auto arrivals = moa::net::poisson_arrivals(lambda, 2000, 11);
  moa::net::network net(synthetic_devices(ms), moa::uniform_gossip{k},
                        {.layers = layers, .device = {.record_service = true}});
  const auto live = net.run(arrivals);

  // Every prompt accounted for, and answered.
  CHECK(live.submitted == 2000);
  CHECK(live.accounted());
  CHECK(live.complete == 2000);
  REQUIRE(live.prompts.size() == 2000);
  for (std::size_t i = 0; i < live.prompts.size(); ++i) CHECK(live.prompts[i].id == i);

  const auto c = simulate_like(live, arrivals, layers);
  double service = 0;
  for (const auto& d : live.devices) service += d.mean_service / n;
  MESSAGE("mean service " << service << " ms (configured " << alpha << "); queue: live "
                          << c.live_queue << " sim " << c.sim_queue << "; latency: live "
                          << c.live_latency << " sim " << c.sim_latency);
  // A sanitizer slows the live run's own hand-offs (not modelled by the simulator) by several
  // times, and CI runs two such tests at once on two cores: there the tolerance is wider.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  constexpr double tolerance = 0.15;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
  constexpr double tolerance = 0.15;
#else
  constexpr double tolerance = 0.10;
#endif
#else
  constexpr double tolerance = 0.10;
#endif
  CHECK(c.live_queue == doctest::Approx(c.sim_queue).epsilon(tolerance));
  CHECK(c.live_latency == doctest::Approx(c.sim_latency).epsilon(tolerance));
  // Utilisation matches the traffic equations at the delivered service time (generous: the
  // arrival count over a finite window fluctuates).
  for (const auto& d : live.devices)
    CHECK(d.utilisation == doctest::Approx(0.8 * d.mean_service / alpha).epsilon(0.15));
}

TEST_CASE("Network.bounded_queues_at_1_2_of_the_limit" * doctest::timeout(120)) {
  constexpr std::uint32_t n = 4, layers = 2, k = 2;
  constexpr std::size_t capacity = 4;
  const double limit = moa::queueing::theorem1_limit(layers, k, 1.0);
  const std::vector<double> lambda(n, 1.2 * limit);
  const std::vector<double> ms(n, 1.0);
  const auto arrivals = moa::net::poisson_arrivals(lambda, 800, 12);
  moa::net::network net(synthetic_devices(ms), moa::uniform_gossip{k},
                        {.layers = layers, .device = {.capacity = capacity}});
  const auto r = net.run(arrivals);
  CHECK(r.submitted == 800);
  CHECK(r.accounted());
  CHECK(r.prompts.size() == 800);
  std::uint64_t refused = 0;
  for (const auto& d : r.devices) {
    CHECK(d.max_in_system <= capacity);
    refused += d.refused;
  }
  CHECK(r.refusals > 0);
  CHECK(refused == r.refusals);
  MESSAGE("complete " << r.complete << ", degraded " << r.degraded << ", failed " << r.failed
                      << ", refusals " << r.refusals << ", re-routed " << r.reroutes);
  for (const auto& p : r.prompts) {
    if (p.failed()) {
      CHECK(!p.result.error.empty());
    } else if (p.degraded()) {
      CHECK(!p.missing.empty());
      CHECK(!p.result.answer.empty());
      for (auto c : p.missing) CHECK(!p.result.trace[c].error.empty());
    }
  }
}

TEST_CASE("Network.killed_device_is_routed_around" * doctest::timeout(120)) {
  constexpr std::uint32_t n = 4, layers = 2, k = 2;
  const double limit = moa::queueing::theorem1_limit(layers, k, 1.0);
  const std::vector<double> lambda(n, 0.4 * limit);
  const std::vector<double> ms(n, 1.0);
  const auto arrivals = moa::net::poisson_arrivals(lambda, 600, 13);
  moa::net::network net(synthetic_devices(ms), moa::uniform_gossip{k},
                        {.layers = layers, .peer_timeout = 200ms});
  const double kill_at = arrivals[arrivals.size() / 3].time;
  // When the kill really happened, measured from before the run started: a busy machine may wake
  // the killer late, and only prompts born after the kill returned must avoid device 3. The
  // network's own clock starts later than t0, so this errs on the safe side.
  std::atomic<double> killed_at{0};
  const auto t0 = moa::clock::now();
  std::jthread killer([&] {
    std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(kill_at));
    net.kill(3);
    killed_at = std::chrono::duration<double, std::milli>(moa::clock::now() - t0).count();
  });
  const auto r = net.run(arrivals);
  killer.join();
  CHECK(r.accounted());
  REQUIRE(r.prompts.size() == 600);
  CHECK(r.lost + r.refusals + r.reroutes > 0);
  std::size_t late_survivors = 0;
  for (const auto& p : r.prompts) {
    const bool after = p.born > killed_at.load() + 1;
    if (p.origin == 3) {
      // Born at the dead device: answered before it died, or refused with an explicit error.
      CHECK((p.result.has_answer() || p.result.error.find("dead") != std::string::npos));
      if (after) CHECK(p.failed());
    } else {
      CHECK_MESSAGE(p.result.has_answer(), p.result.error);  // calls to the dead re-routed
    }
    if (after && p.origin != 3) {
      ++late_survivors;
      for (auto d : p.devices()) CHECK(d != 3);
    }
  }
  CHECK(late_survivors > 100);
  CHECK(r.devices[3].completed < r.devices[0].completed);
}

TEST_CASE("Network.silent_peer_is_skipped_at_its_deadline" * doctest::timeout(60)) {
  std::vector<moa::any_backend> models;
  for (int i = 0; i < 4; ++i)
    models.emplace_back(moa::synthetic_backend({.name = std::string(1, 'd') + char('0' + i),
                                                .latency = moa::latency_model::constant(200us),
                                                .timeout_rate = i == 2 ? 1.0 : 0.0,
                                                .hang_limit = 5s}));
  moa::net::network net(std::move(models), moa::uniform_gossip{2},
                        {.layers = 1, .device = {.concurrency = 4}, .peer_timeout = 30ms});
  std::vector<moa::net::arrival> arrivals;
  for (int i = 0; i < 40; ++i) arrivals.push_back({2.0 * i, std::uint32_t(i % 4 == 2 ? 0 : i % 4)});
  const auto r = net.run(arrivals);
  CHECK(r.accounted());
  CHECK(r.timeouts > 0);
  for (const auto& p : r.prompts) {
    CHECK(p.result.has_answer());
    bool used_silent = false;
    for (const auto& c : p.result.trace) used_silent = used_silent || c.backend == 2;
    if (used_silent) {
      CHECK(p.degraded());
      CHECK(p.latency < 200);  // skipped at 30 ms, not waited for 5 s
      for (auto c : p.missing)
        CHECK(p.result.trace[c].error.find("peer deadline") != std::string::npos);
    } else {
      CHECK(p.complete());
    }
  }
}

// --- aggregation policies on the network: the same plan run as the executors -------------------

TEST_CASE("Network.majority_vote_decides_at_the_origin" * doctest::timeout(30)) {
  // d0 dissents; every layer of 3 (origin + 2 peers of 4) holds at least two "42"s.
  std::vector<moa::any_backend> models;
  models.push_back(planted("d0", "I get 41.", "the aggregator must not be asked"));
  for (int i = 1; i < 4; ++i)
    models.push_back(planted("d" + std::to_string(i), "It is 42.", "not asked either"));
  moa::net::network_options opt;
  opt.layers = 1;
  opt.aggregation = moa::any_aggregator(moa::majority_vote<moa::last_number>{});
  moa::net::network net(std::move(models), moa::uniform_gossip{2}, opt);
  const moa::net::arrival arrivals[] = {{0, 0}, {0.1, 1}, {0.2, 2}, {0.3, 3}, {0.4, 0}};
  const auto r = net.run(arrivals);
  REQUIRE(r.prompts.size() == 5);
  CHECK(r.complete == 5);
  for (const auto& p : r.prompts) {
    INFO("prompt " << p.id << " from " << p.origin << ": " << p.result.error);
    REQUIRE(p.result.ok());
    CHECK(p.result.answer == "It is 42.");
    REQUIRE(p.result.aggregation);
    CHECK(p.result.aggregation->policy == "majority_vote");
    CHECK(p.result.aggregation->calls.empty());
    REQUIRE(p.result.trace.size() == 4);
    const auto& sink = p.result.trace[3];
    CHECK(sink.backend_name == "majority_vote");  // the vote, not the origin's backend
    CHECK(sink.references == std::vector<moa::call_id>{0, 1, 2});
    CHECK(sink.usage.total() == 0);
    CHECK(p.result.aggregation->chosen.size() >= 2);
  }
}

TEST_CASE("Network.judge_picks_through_the_network" * doctest::timeout(30)) {
  // Device 3 judges every prompt (it is also a proposer); it names the second answer.
  std::vector<moa::any_backend> models;
  for (int i = 0; i < 3; ++i)
    models.push_back(planted("d" + std::to_string(i), "answer of d" + std::to_string(i)));
  models.push_back(planted("judge", "answer of the judge", "Clearly [2]."));
  moa::net::network_options opt;
  opt.layers = 1;
  opt.aggregation = moa::any_aggregator(moa::judge_policy{.judge = 3});
  moa::net::network net(std::move(models), moa::uniform_gossip{2}, opt);
  const moa::net::arrival arrivals[] = {{0, 0}, {0.1, 1}, {0.2, 2}};
  const auto r = net.run(arrivals);
  REQUIRE(r.prompts.size() == 3);
  for (const auto& p : r.prompts) {
    INFO("prompt " << p.id << ": " << p.result.error);
    REQUIRE(p.result.ok());
    // The judge picked [2]: the answer of the layer's second call.
    CHECK(p.result.answer == p.result.trace[1].text);
    REQUIRE(p.result.aggregation);
    CHECK(p.result.aggregation->chosen == std::vector<moa::call_id>{1});
    REQUIRE(p.result.aggregation->calls.size() == 1);
    const auto& judge = p.result.aggregation->calls[0];
    CHECK(judge.backend_name == "judge");
    CHECK(judge.call == 4);  // numbered after the plan's calls
    CHECK(judge.text == "Clearly [2].");
    CHECK(p.result.trace[3].usage == judge.usage);
  }
}

TEST_CASE("Network.sparse_policy_selects_between_layers" * doctest::timeout(30)) {
  // Two layers; device 3 ranks (keeps the best 2 of 3) before layer 2 and synthesises.
  std::vector<moa::any_backend> models;
  for (int i = 0; i < 3; ++i)
    models.push_back(planted("d" + std::to_string(i), "answer of d" + std::to_string(i),
                             "synthesis of d" + std::to_string(i)));
  models.push_back(planted("ranker", "answer of the ranker", "[3] > [1] > [2]"));
  moa::net::network_options opt;
  opt.layers = 2;
  opt.aggregation = moa::any_aggregator(moa::sparse_policy{.judge = 3, .keep = 2});
  moa::net::network net(std::move(models), moa::uniform_gossip{2}, opt);
  const moa::net::arrival arrivals[] = {{0, 0}, {0.1, 1}};
  const auto r = net.run(arrivals);
  for (const auto& p : r.prompts) {
    INFO("prompt " << p.id << ": " << p.result.error);
    REQUIRE(p.result.ok());
    // Layer 2 read the two best of layer 1 ([3] then [1]), as in the executors.
    CHECK(p.result.trace[3].references == std::vector<moa::call_id>{2, 0});
    REQUIRE(p.result.aggregation);
    CHECK(p.result.aggregation->references_dropped == 2);  // one before layer 2, one at the end
    CHECK(p.result.answer == "synthesis of d" + std::to_string(p.origin));
  }
}

TEST_CASE("Network.typed_by_its_gossip_topology" * doctest::timeout(30)) {
  using edge = moa::gossip_topology<moa::devices<3>, moa::layers<2>, moa::random_k<1>>;
  auto net = moa::net::make_network<edge>(moa::synthetic_backend({.name = "a"}),
                                          moa::synthetic_backend({.name = "b"}),
                                          moa::synthetic_backend({.name = "c"}));
  static_assert(std::is_same_v<decltype(net), moa::net::network<moa::random_k<1>>>);
  CHECK(net.size() == 3);
  CHECK(net.options().layers == 2);  // the topology's M, whatever the options said
  const moa::net::arrival arrivals[] = {{0, 0}, {0.1, 1}, {0.2, 2}};
  const auto r = net.run(arrivals);
  CHECK(r.complete == 3);
  for (const auto& p : r.prompts) CHECK(p.result.trace.size() == edge::calls_per_prompt);
  // With options: everything but the layers is the caller's.
  auto bounded = moa::net::make_network<edge>(
      moa::net::network_options{.layers = 7, .quorum = 2}, moa::synthetic_backend({.name = "a"}),
      moa::synthetic_backend({.name = "b"}), moa::synthetic_backend({.name = "c"}));
  CHECK(bounded.options().layers == 2);
  CHECK(bounded.options().quorum == 2);
}

TEST_CASE("Network.adaptive_policy_agrees_with_the_simulator_on_a_ramp") {
  // The same policy and the same arrivals, live (time unit 1 ms, exponential service) and in the
  // simulator: n = 4, one device 3x slower, (2, 2) or (1, 1), loads 0.3x, 1.5x and 3.5x the
  // (2, 2) limit (the last over (1, 1)'s capacity of 2.33x, so admission refuses there). The
  // simulator runs on the service times the live devices delivered (thread wake-ups count as
  // service, and more so under a sanitizer), as the network's other comparisons do.
  namespace q = moa::queueing;
  const std::vector<double> alpha{1, 1, 1, 3};
  q::ramp_config c;
  c.alpha = alpha;
  c.loads = {0.3, 1.5, 3.5};
  c.phase_length = 3000;
  c.drain = 0;
  c.seed = 5;
  c.policy.allowed = {{2, 2}, {1, 1}};
  c.policy.rate_window = 300;
  const double limit = 1.0 / 21;  // (2, 2) with the slowest device at 3

  moa::net::network_options opt{.layers = 2};
  q::adaptive_config pc = c.policy;
  pc.devices = alpha.size();
  pc.prior_service = alpha;
  const auto policy = moa::net::use_adaptive(opt, pc);
  moa::net::network net(synthetic_devices(alpha, /*exponential=*/true), moa::uniform_gossip{2},
                        opt);
  const auto arrivals = q::ramp_arrivals(alpha.size(), c.loads, limit, c.phase_length, c.seed);
  const auto live = net.run(arrivals);
  const auto counts = policy->snapshot();
  c.limit = limit;  // the same arrivals
  for (std::size_t j = 0; j < alpha.size(); ++j) c.alpha[j] = live.devices[j].mean_service;
  c.policy.prior_service = alpha;
  const auto sim = q::run_ramp(c);

  // Nothing admitted is lost; refusals are counted, typed and in the records.
  CHECK(live.accounted());
  CHECK(live.refused == counts.refused);
  CHECK(live.failed == live.refused);
  REQUIRE(live.prompts.size() == arrivals.size());
  for (const auto& p : live.prompts) {
    CHECK(!p.layout.empty());
    if (p.refused) CHECK(p.result.error.find("refused at admission") != std::string::npos);
  }
  // Shares of all arrivals: per layout and refused. The decisions are strongly correlated over a
  // rate window, so the run holds about (length / window) independent decisions per phase, 30
  // in all: a binomial share then has a standard error of at most 0.5 / sqrt(30) = 0.09, and
  // the 10% is about one of them.
  const double total = double(arrivals.size());
  std::uint64_t sim_refused = 0;
  std::vector<double> sim_share(c.policy.allowed.size(), 0.0);
  for (const auto& p : sim.adaptive) {
    sim_refused += p.refused;
    for (std::size_t l = 0; l < p.at_layout.size(); ++l) sim_share[l] += double(p.at_layout[l]);
  }
  REQUIRE(sim.adaptive_admitted + sim_refused == arrivals.size());
  MESSAGE("shares live/sim: (2,2) "
          << double(counts.admitted[0]) / total << " / " << sim_share[0] / total << ", (1,1) "
          << double(counts.admitted[1]) / total << " / " << sim_share[1] / total << ", refused "
          << double(counts.refused) / total << " / " << double(sim_refused) / total);
  for (std::size_t l = 0; l < sim_share.size(); ++l) {
    INFO("layout " << l << ": live " << double(counts.admitted[l]) / total << " sim "
                   << sim_share[l] / total);
    CHECK(std::abs(double(counts.admitted[l]) / total - sim_share[l] / total) <= 0.10);
  }
  INFO("refused: live " << double(counts.refused) / total << " sim "
                        << double(sim_refused) / total);
  CHECK(counts.refused > 0);
  CHECK(std::abs(double(counts.refused) - double(sim_refused)) / total <= 0.10);
}

// --- loads are checked, not believed (moa/net/peer_view.hpp) -------------------------------------
// Time is passed in, never read: these tests run on a clock of their own.

namespace {

moa::clock::time_point at(double units) {
  return moa::clock::time_point{} +
         std::chrono::duration_cast<moa::clock::duration>(std::chrono::duration<double>(units));
}

// n single-server FCFS devices with service time 1; each prompt, born at origin i % n every `gap`,
// sends one call to its origin and one to the peer its view says is least loaded (ties: the next
// device after the origin). Device `liar` reports load 0; device `silent` never answers (its calls
// time out after `timeout`). With `blind`, origins believe the reports. Returns the peer calls each
// device got, and counts the prompts whose peer call was answered.
struct share_run {
  std::vector<std::size_t> peer_calls;
  std::size_t answered = 0, prompts = 0;
};
share_run share_of_peer_calls(bool blind, int liar, int silent, std::size_t prompts = 4000) {
  constexpr std::uint32_t n = 4;
  constexpr double gap = 0.6, timeout = 20;
  std::vector<std::unique_ptr<moa::net::peer_view>> views;
  for (std::uint32_t i = 0; i < n; ++i)
    views.push_back(std::make_unique<moa::net::peer_view>(
        n, moa::net::peer_view_options{.failed_for = std::chrono::seconds(50),
                                       .half_life = std::chrono::seconds(20)}));
  struct pending {
    double when;
    std::uint32_t origin, device;
    moa::net::peer_view::ticket t;
    bool miss;
    bool operator>(const pending& o) const { return when > o.when; }
  };
  std::priority_queue<pending, std::vector<pending>, std::greater<>> events;
  std::vector<double> free_at(n, 0);
  std::vector<std::vector<double>> finishes(n);  // of calls in system, per device
  share_run r;
  r.peer_calls.assign(n, 0);
  moa::rng random(11);
  const auto queue = [&](std::uint32_t d, double t) {
    auto& f = finishes[d];
    f.erase(std::remove_if(f.begin(), f.end(), [&](double x) { return x <= t; }), f.end());
    return double(f.size());
  };
  const auto send = [&](std::uint32_t o, std::uint32_t d, double t) {
    const auto ticket = views[o]->sent(d, at(t));
    const double done = std::max(t, free_at[d]) + 1;
    free_at[d] = done;
    finishes[d].push_back(done);
    const bool miss = int(d) == silent;
    events.push({miss ? t + timeout : done, o, d, ticket, miss});
  };
  for (std::size_t i = 0; i < prompts; ++i) {
    const double t = double(i) * gap;
    while (!events.empty() && events.top().when <= t) {
      const auto e = events.top();
      events.pop();
      if (e.miss)
        (void)views[e.origin]->missed(e.device, e.t, at(e.when));
      else {
        views[e.origin]->answered(e.device, e.t, at(e.when));
        if (e.device != e.origin) ++r.answered;
      }
    }
    const auto o = std::uint32_t(i % n);
    send(o, o, t);
    std::optional<std::uint32_t> best;
    double best_load = 0;
    const auto offset = std::uint32_t(random.below(n - 1));  // ties: at random
    for (std::uint32_t j = 0; j + 1 < n; ++j) {
      const auto d = (o + 1 + (j + offset) % (n - 1)) % n;
      const double reported = int(d) == liar ? 0 : queue(d, t);
      views[o]->report(d, reported);
      if (!blind && views[o]->failed(d, at(t))) continue;
      const double l = blind ? reported : views[o]->load(d, at(t));
      if (!best || l < best_load) {
        best = d;
        best_load = l;
      }
    }
    ++r.prompts;
    ++r.peer_calls[*best];
    send(o, *best, t);
  }
  return r;
}

}  // namespace

TEST_CASE("PeerView.reports_are_clamped") {
  moa::net::peer_view v(3, {.max_load = 100});
  v.report(1, -5);
  CHECK(v.load(1, at(0)) == 0);
  v.report(1, std::numeric_limits<double>::quiet_NaN());
  CHECK(v.load(1, at(0)) == 100);
  v.report(1, 1e300);
  CHECK(v.load(1, at(0)) == 100);
  v.report(1, std::numeric_limits<double>::infinity());
  CHECK(v.load(1, at(0)) == 100);
  CHECK_THROWS_AS(moa::net::peer_view(2, {.weight = 0}), moa::invalid_argument);
  CHECK_THROWS_AS(moa::net::peer_view(2, {.strikes = 0}), moa::invalid_argument);
  CHECK_THROWS_AS(moa::net::peer_view(2, {.half_life = {}}), moa::invalid_argument);
}

TEST_CASE("PeerView.a_liar_carries_what_it_holds_and_what_its_latency_shows") {
  moa::net::peer_view v(4, {.weight = 1});
  v.report(3, 0);  // the liar
  std::vector<moa::net::peer_view::ticket> held;
  for (int i = 0; i < 7; ++i) held.push_back(v.sent(3, at(0)));
  CHECK(v.load(3, at(0)) == 7);  // the calls outstanding there, whatever it says
  for (std::size_t i = 0; i < held.size(); ++i) v.released(3);
  CHECK(v.load(3, at(0)) == 0);
  // Honest devices: latency (load + 1) x 1 s. The liar: load 0 but 6 s, i.e. a queue of 5.
  for (std::uint32_t d = 0; d < 3; ++d) {
    v.report(d, 2);
    v.answered(d, v.sent(d, at(10)), at(13));
  }
  v.answered(3, v.sent(3, at(10)), at(16));
  CHECK(v.load(3, at(16)) == doctest::Approx(5));
  CHECK(v.load(0, at(16)) == doctest::Approx(2));
  const auto p = v.explain(3, at(16));
  CHECK(p.reported == 0);
  CHECK(p.latency == doctest::Approx(6));
  // The implied queue fades with the half-life (1 s) since the last observation.
  CHECK(v.load(3, at(17)) == doctest::Approx(2.5));
}

TEST_CASE("PeerView.a_device_missing_its_deadlines_is_failed_then_forgiven") {
  moa::net::peer_view v(3, {.strikes = 3, .failed_for = std::chrono::seconds(5)});
  v.answered(1, v.sent(1, at(0)), at(1));
  v.answered(2, v.sent(2, at(0)), at(1));
  CHECK_FALSE(v.missed(2, v.sent(2, at(1)), at(3)));
  CHECK_FALSE(v.missed(2, v.sent(2, at(1)), at(3)));
  v.answered(2, v.sent(2, at(3)), at(4));  // an answer resets the count
  CHECK_FALSE(v.missed(2, v.sent(2, at(4)), at(6)));
  CHECK_FALSE(v.missed(2, v.sent(2, at(4)), at(6)));
  CHECK_FALSE(v.failed(2, at(6)));
  CHECK(v.missed(2, v.sent(2, at(4)), at(6)));
  CHECK(v.failed(2, at(6)));
  CHECK(v.failed(2, at(10.9)));
  CHECK_FALSE(v.failed(2, at(11)));
  CHECK(v.load(2, at(6)) > v.load(1, at(6)));  // its timeouts count as latency too
}

TEST_CASE("PeerView.a_lying_peer_gets_a_bounded_share_of_peer_calls") {
  const auto blind = share_of_peer_calls(true, 3, -1);
  const auto checked = share_of_peer_calls(false, 3, -1);
  const auto share = [](const share_run& r, int d) {
    return double(r.peer_calls[std::size_t(d)]) / double(r.prompts);
  };
  const double fair = 1.0 / 4;
  MESSAGE("liar's share of peer calls: believed " << share(blind, 3) << ", checked "
                                                  << share(checked, 3) << " (fair " << fair << ")");
  CHECK(share(blind, 3) > 1.75 * fair);  // the lie works when believed: the test has teeth
  CHECK(share(checked, 3) <= 1.5 * fair);
  CHECK(checked.answered + 20 > checked.prompts);  // all but the last few, still in service
}

TEST_CASE("PeerView.a_silent_peer_is_failed_and_loses_traffic") {
  const auto blind = share_of_peer_calls(true, -1, 2);
  const auto checked = share_of_peer_calls(false, -1, 2);
  MESSAGE("silent peer's calls: believed " << blind.peer_calls[2] << ", checked "
                                           << checked.peer_calls[2] << " of " << checked.prompts);
  CHECK(checked.peer_calls[2] * 5 < blind.peer_calls[2]);
  CHECK(double(checked.peer_calls[2]) / double(checked.prompts) < 0.05);
}

TEST_CASE("Network.a_lying_device_does_not_draw_the_peer_calls" * doctest::timeout(60)) {
  // Device 3 says "load 0" whatever it holds; least-loaded gossip with k = 1 would send it every
  // peer call of the other three origins (3/4 of them) if its word were taken.
  const double service[] = {1, 1, 1, 1};
  std::vector<std::optional<double>> claims(4);
  claims[3] = 0.0;
  moa::net::network net(synthetic_devices(service), moa::least_loaded_gossip{.k = 1},
                        {.layers = 1, .claimed_loads = claims});
  std::vector<moa::net::arrival> arrivals;
  for (int i = 0; i < 200; ++i) arrivals.push_back({3.0 * i, std::uint32_t(i % 4)});
  const auto r = net.run(arrivals);
  CHECK(r.accounted());
  std::vector<double> peer(4, 0);
  double total = 0;
  for (const auto& p : r.prompts) {
    CHECK((p.result.has_answer() || !p.result.error.empty()));
    for (const auto& c : p.result.trace)
      if (c.role == moa::call_role::proposer && c.backend != p.origin) {
        peer[c.backend] += 1;
        total += 1;
      }
  }
  // Its fair share is 1/4. Wall-clock paced (services really take 1 ms), so the bound is generous;
  // the exact one is PeerView.a_lying_peer_gets_a_bounded_share_of_peer_calls, on its own clock.
  MESSAGE("the liar's share of peer calls: " << peer[3] / total);
  CHECK(peer[3] / total < 0.6);
  CHECK_THROWS_AS(moa::net::network(synthetic_devices(service), moa::least_loaded_gossip{.k = 1},
                                    {.claimed_loads = {0.0}}),
                  moa::invalid_argument);
}

TEST_CASE("Network.a_device_that_never_answers_is_failed_and_loses_traffic" *
          doctest::timeout(60)) {
  std::vector<moa::any_backend> models;
  for (int i = 0; i < 4; ++i)
    models.emplace_back(moa::synthetic_backend({.name = std::string(1, 'd') + char('0' + i),
                                                .latency = moa::latency_model::constant(200us),
                                                .timeout_rate = i == 2 ? 1.0 : 0.0,
                                                .hang_limit = 5s}));
  // Uniform gossip keeps drawing it: only failing it (3 timeouts in a row) stops the calls.
  moa::net::network net(std::move(models), moa::uniform_gossip{1},
                        {.layers = 1,
                         .device = {.concurrency = 4},
                         .peer_timeout = 20ms,
                         .trust = {.failed_for = 60s}});
  std::vector<moa::net::arrival> arrivals;
  for (int i = 0; i < 120; ++i)
    arrivals.push_back({2.0 * i, std::uint32_t(i % 4 == 2 ? 0 : i % 4)});
  const auto r = net.run(arrivals);
  CHECK(r.accounted());
  std::size_t to_silent = 0;
  for (const auto& p : r.prompts) {
    CHECK(p.result.has_answer());  // answered, degraded at worst
    for (const auto& c : p.result.trace)
      to_silent += c.role == moa::call_role::proposer && c.backend == 2 ? 1 : 0;
  }
  // Each origin learns after 3 timeouts in a row (a few more may be in flight by then); its fair
  // share would be 40 (uniform gossip, k = 1 among 3 others).
  MESSAGE("calls that reached the silent device: " << to_silent << " of " << r.prompts.size());
  CHECK(to_silent < 30);
  for (std::uint32_t o : {0u, 1u, 3u}) CHECK(net.view_of(o).failed(2, moa::clock::now()));
}
