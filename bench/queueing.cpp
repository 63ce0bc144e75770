// SPDX-License-Identifier: MIT
// Benchmarks of moa/queueing, each next to a baseline measured in the same run:
//   - simulator events/s for n=4, M=2, k=2 (target >= 20 M/s on one core), against the same
//     engine fed full plans (make_gossip_plan per prompt) and a textbook simulator
//     (std::priority_queue of std::function events, a plan and a shared_ptr per prompt);
//   - replications on 1 and 2 threads (the speed-up is the ratio of their times);
//   - ns per stability verdict for n = 64: closed form, typed entry, Eigen traffic equations;
//   - ns per prompt of the adaptive layout policy (decide + the prompt's service observations),
//     n = 4 and n = 64 with five allowed layouts (target < 1 us), next to one closed-form verdict.
// Run: ./build/bench/bench_queueing --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <deque>
#include <functional>
#include <memory>
#include <queue>
#include <vector>

#include <moa/gossip/random_k.hpp>
#include <moa/queueing/adaptive.hpp>
#include <moa/queueing/gossip_matrix.hpp>
#include <moa/queueing/simulator.hpp>
#include <moa/queueing/stability.hpp>
#include <moa/topology/gossip.hpp>

namespace q = moa::queueing;

namespace {

q::sim_config edge_config(double horizon) {
  q::sim_config cfg;
  cfg.lambda.assign(4, 0.1);  // rho = 0.7 at every device
  cfg.service = {q::service_model::exponential(1.0)};
  cfg.horizon = horizon;
  cfg.warmup = horizon / 10;
  return cfg;
}

void report_events(benchmark::State& state, std::uint64_t events) {
  state.counters["events/s"] = benchmark::Counter(double(events), benchmark::Counter::kIsRate);
}

// The measured loop of the simulator benchmarks: one whole simulation per iteration.
template <class Source>
void simulate_each_iteration(benchmark::State& state, const q::sim_config& cfg, Source& source) {
  std::uint64_t events = 0;
  for (auto _ : state) {
    auto r = q::simulate(cfg, source);
    events += r.events;
    benchmark::DoNotOptimize(r.mean_latency);
  }
  report_events(state, events);
}

void simulate_shaped(benchmark::State& state) {
  const auto cfg = edge_config(2e5);
  q::gossip_source source(4, 2, moa::uniform_gossip{2});
  simulate_each_iteration(state, cfg, source);
}
BENCHMARK(simulate_shaped)->Unit(benchmark::kMillisecond);

// Scaling with n: the gossip model (M = 2, k = 2) at 0.8 load on every device, with the same
// number of events per run (8 M) whatever n, so the figures compare the per-event cost only.
// Issue 15 targets: >= 25 M events/s at n = 4, n = 16,384 within 2x of n = 4.
void simulate_scaling(benchmark::State& state) {
  const auto n = static_cast<std::uint32_t>(state.range(0));
  const double lambda = 0.8 / 7;  // rho = alpha ((k + 1) M + 1) lambda
  q::sim_config cfg;
  cfg.lambda.assign(n, lambda);
  cfg.service = {q::service_model::exponential(1.0)};
  cfg.horizon = 8e6 / (double(n) * 8 * lambda);  // 8 events per prompt
  cfg.warmup = cfg.horizon / 10;
  q::gossip_source source(n, 2, moa::uniform_gossip{2});
  simulate_each_iteration(state, cfg, source);
}
BENCHMARK(simulate_scaling)->Arg(4)->Arg(64)->Arg(1024)->Arg(16384)->Unit(benchmark::kMillisecond);

// Baseline 1: the same engine, but every prompt builds and seals a full moa::plan.
void simulate_full_plans(benchmark::State& state) {
  const auto cfg = edge_config(2e5);
  moa::plan scratch;
  auto source = [&](std::uint32_t origin, moa::rng& r) -> const moa::plan& {
    moa::make_gossip_plan(origin, 4, 2, moa::uniform_gossip{2}, r, scratch);
    return scratch;
  };
  simulate_each_iteration(state, cfg, source);
}
BENCHMARK(simulate_full_plans)->Unit(benchmark::kMillisecond);

// Baseline 2: a textbook simulator. Same model, same random engine.
struct naive_simulator {
  struct prompt {
    moa::plan plan;
    std::vector<std::uint32_t> pending;
    double birth = 0;
  };
  struct job {
    std::shared_ptr<prompt> p;
    moa::call_id call;
  };
  struct event {
    double time;
    std::function<void()> action;
    bool operator>(const event& o) const { return time > o.time; }
  };
  std::priority_queue<event, std::vector<event>, std::greater<>> events;
  std::vector<std::deque<job>> queues = std::vector<std::deque<job>>(4);
  moa::rng random{1};
  double now = 0, latency = 0;
  std::uint64_t count = 0;

  double exp(double mean) { return -mean * std::log(1 - random.uniform()); }
  void arrive(std::uint32_t user) {
    events.push({now + exp(10.0), [this, user] { arrive(user); }});
    auto p = std::make_shared<prompt>();
    moa::make_gossip_plan(user, 4, 2, moa::uniform_gossip{2}, random, p->plan);
    p->birth = now;
    for (std::size_t g = 0; g < p->plan.group_count(); ++g)
      p->pending.push_back(std::uint32_t(p->plan.inputs_of(moa::group_id(g)).size()));
    for (auto c : p->plan.calls_of(0)) dispatch({p, c});
  }
  void dispatch(job j) {
    auto& queue = queues[j.p->plan[j.call].backend];
    queue.push_back(std::move(j));
    if (queue.size() == 1) start(queue.front());
  }
  void start(const job& j) {
    const auto device = j.p->plan[j.call].backend;
    events.push({now + exp(1.0), [this, device] { complete(device); }});
  }
  void complete(std::uint32_t device) {
    job j = std::move(queues[device].front());
    queues[device].pop_front();
    if (!queues[device].empty()) start(queues[device].front());
    if (j.call == j.p->plan.sink()) {
      latency += now - j.p->birth;
      return;
    }
    for (auto g : j.p->plan.consumers_of(j.call))
      if (--j.p->pending[g] == 0)
        for (auto c : j.p->plan.calls_of(g)) dispatch({j.p, c});
  }
  std::uint64_t run(double horizon) {
    for (std::uint32_t u = 0; u < 4; ++u) events.push({exp(10.0), [this, u] { arrive(u); }});
    while (!events.empty() && events.top().time <= horizon) {
      auto e = events.top();
      events.pop();
      now = e.time;
      e.action();
      ++count;
    }
    return count;
  }
};

void simulate_naive_baseline(benchmark::State& state) {
  std::uint64_t events = 0;
  for (auto _ : state) {
    naive_simulator sim;
    events += sim.run(2e5);
    benchmark::DoNotOptimize(sim.latency);
  }
  report_events(state, events);
}
BENCHMARK(simulate_naive_baseline)->Unit(benchmark::kMillisecond);

// Replications: the same 8 runs on 1 and on 2 threads (wall time; speed-up = ratio).
void replicate_threads(benchmark::State& state) {
  const auto cfg = edge_config(1e5);
  q::gossip_source source(4, 2, moa::uniform_gossip{2});
  std::uint64_t events = 0;
  for (auto _ : state) {
    auto r = q::replicate(cfg, source, 8, std::size_t(state.range(0)));
    for (const auto& run : r.runs) events += run.events;
  }
  report_events(state, events);
}
BENCHMARK(replicate_threads)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

// --- Analytic stability, n = 64 ------------------------------------------------------------
using big = moa::gossip_topology<moa::devices<64>, moa::layers<3>, moa::random_k<4>>;

void stability_typed(benchmark::State& state) {
  q::rate_config rates{.lambda = 0.01, .alpha = 1.0};
  for (auto _ : state) {
    benchmark::DoNotOptimize(rates);
    auto v = q::stability<big>(rates);
    benchmark::DoNotOptimize(v);
  }
}
BENCHMARK(stability_typed);

void stability_closed_form(benchmark::State& state) {
  std::vector<double> lambda(64), alpha(64), rho(64);
  for (std::size_t i = 0; i < 64; ++i) {
    lambda[i] = 0.005 + 0.0001 * double(i);
    alpha[i] = 0.5 + 0.01 * double(i);
  }
  for (auto _ : state) {
    benchmark::DoNotOptimize(lambda.data());
    auto v = q::uniform_stability(64, 3, 4, lambda, alpha, rho);
    benchmark::DoNotOptimize(v);
    benchmark::ClobberMemory();
  }
}
BENCHMARK(stability_closed_form);

// Baseline: the general path (Eigen), visit matrix prepared once or built per call.
void stability_eigen_prepared(benchmark::State& state) {
  const Eigen::VectorXd lambda = Eigen::VectorXd::LinSpaced(64, 0.005, 0.0113);
  const Eigen::VectorXd alpha = Eigen::VectorXd::LinSpaced(64, 0.5, 1.13);
  const Eigen::MatrixXd visits = q::gossip_visits(3, q::uniform_inclusion(64, 4));
  for (auto _ : state) {
    auto r = q::analyse(lambda, alpha, visits);
    benchmark::DoNotOptimize(r.max_scale);
  }
}
BENCHMARK(stability_eigen_prepared);

void stability_eigen_from_scratch(benchmark::State& state) {
  const Eigen::VectorXd lambda = Eigen::VectorXd::LinSpaced(64, 0.005, 0.0113);
  const Eigen::VectorXd alpha = Eigen::VectorXd::LinSpaced(64, 0.5, 1.13);
  for (auto _ : state) {
    auto r = q::analyse(lambda, alpha, q::gossip_visits(3, q::uniform_inclusion(64, 4)));
    benchmark::DoNotOptimize(r.max_scale);
  }
}
BENCHMARK(stability_eigen_from_scratch);

// --- The adaptive layout policy -------------------------------------------------------------
// One prompt: a decision and the service times of its (k+1)M+1 = 7 calls. Poisson arrivals at
// 0.6x the (2, 2) limit with one device 3x slower, so the policy keeps (2, 2) and evaluates the
// current layout and, past the hold, the better ones: its usual path.
void adaptive_decide(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  q::adaptive_config cfg;
  cfg.devices = n;
  cfg.prior_service.assign(n, 1.0);
  cfg.prior_service[n - 1] = 3.0;
  q::adaptive_policy policy(cfg);
  const double lambda = 0.6 / (3.0 * 7.0);  // per user
  moa::rng random(7);
  double now = 0;
  std::uint64_t admitted = 0;
  for (auto _ : state) {
    now += moa::detail::standard_exponential(random) / (lambda * double(n));
    const auto origin = static_cast<std::uint32_t>(random() % n);
    const q::layout_decision d = policy.decide(origin, now);
    admitted += d.admitted;
    for (std::uint32_t c = 0; c < 7; ++c)
      policy.observe_service(static_cast<std::uint32_t>((origin + c) % n), 1.0);
    benchmark::DoNotOptimize(d);
  }
  state.counters["admitted"] = double(admitted);
  state.counters["changes"] = double(policy.changes());
}
BENCHMARK(adaptive_decide)->Arg(4)->Arg(64);

}  // namespace

BENCHMARK_MAIN();
