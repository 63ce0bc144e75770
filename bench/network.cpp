// SPDX-License-Identifier: MIT
// The in-process network's own cost: per gossiped call beyond the backend's time (zero-latency
// backends, so everything measured is protocol: plan, fork, queue, join, reference injection),
// and sustained throughput at 0.9x the analytic limit over 10^5 prompts with memory flat;
// hostile peers under least-loaded gossip (a device lying "load 0", one that never answers),
// measured against the all-honest network in the same run. With cppzmq: the ZeroMQ devices'
// gossiped call authenticated and encrypted (CURVE) against plain text, on loopback, in the same
// run.
#include <benchmark/benchmark.h>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "moa/backends/synthetic.hpp"
#include "moa/gossip/load_aware.hpp"
#include "moa/gossip/random_k.hpp"
#include "moa/net/network.hpp"
#if MOA_BENCH_ZMQ
#include <zmq.hpp>

#include <memory>
#include <stdexcept>
#include <stop_token>
#include <thread>

#include "moa/net/zmq_device.hpp"
#include "moa/net/zmq_security.hpp"
#include "moa/net/zmq_wire.hpp"
#endif

namespace {

std::vector<moa::any_backend> zero_latency(std::size_t n) {
  std::vector<moa::any_backend> out;
  for (std::size_t i = 0; i < n; ++i) {
    std::string name = "d";
    name += std::to_string(i);
    out.emplace_back(moa::synthetic_backend({.name = name}));
  }
  return out;
}

double rss_mib() {  // current resident set, from /proc (ru_maxrss is a peak, not a level)
  std::ifstream in("/proc/self/statm");
  long pages = 0, resident = 0;
  in >> pages >> resident;
  return double(resident) * double(sysconf(_SC_PAGESIZE)) / (1 << 20);
}

// Prompts injected back to back (no sleeping between arrivals): the wall time per call is the
// protocol's cost, the backend costing only its hash of the request.
void BM_gossiped_call(benchmark::State& state) {
  const auto n = std::uint32_t(state.range(0));
  moa::net::network net(zero_latency(n), moa::uniform_gossip{2},
                        {.layers = 2, .keep_records = false});
  std::uint64_t prompts = 0;
  for (auto _ : state) {
    net.submit(prompts % n, {.messages = {{moa::role::user, "why is the sky blue?"}}});
    ++prompts;
    if (prompts % 256 == 0) net.wait();  // bounded in flight
  }
  net.wait();
  state.counters["calls"] = benchmark::Counter(double(prompts * 7));
  state.counters["per_call"] = benchmark::Counter(
      double(prompts * 7), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_gossiped_call)->Arg(4)->Arg(16)->UseRealTime()->Unit(benchmark::kMicrosecond);

// 10^5 prompts at 0.9x the analytic limit of zero-latency backends. Their service time is the
// protocol's own cost per call, measured first (prompts back to back); the limit is then
// 1 / (7 alpha) per user for n = 4, M = 2, k = 2. RSS before and after shows memory is flat.
void BM_sustained(benchmark::State& state) {
  constexpr std::uint32_t n = 4;
  for (auto _ : state) {
    moa::net::network net(
        zero_latency(n), moa::uniform_gossip{2},
        {.layers = 2, .time_unit = std::chrono::microseconds(1), .keep_records = false});
    std::vector<moa::net::arrival> burst(20000);
    for (std::size_t i = 0; i < burst.size(); ++i) burst[i] = {0, std::uint32_t(i % n)};
    const auto calibration = net.run(burst);
    double alpha = 0;  // us per call
    for (const auto& d : calibration.devices) alpha += d.mean_service / n;
    const std::vector<double> lambda(n, 0.9 / (7 * alpha));
    const auto arrivals = moa::net::poisson_arrivals(lambda, std::size_t(state.range(0)), 1);
    const double before = rss_mib();
    const auto r = net.run(arrivals);
    const double after = rss_mib();
    state.counters["alpha_us"] = alpha;
    state.counters["prompts_per_s"] = double(r.submitted) / (r.window * 1e-6);
    state.counters["rss_before_mib"] = before;
    state.counters["rss_after_mib"] = after;
    state.counters["mean_latency_us"] = r.mean_latency;
    state.counters["accounted"] = r.accounted() ? 1 : 0;
  }
}
BENCHMARK(BM_sustained)->Arg(100000)->Iterations(1)->UseRealTime()->Unit(benchmark::kSecond);

// Hostile peers: n = 4 devices with 1 ms services, least-loaded gossip (k = 1, M = 2), prompts
// born at devices 0-2 only (0.1 per ms each, utilisation ~0.5), 3,000 of them. Three networks
// in one run: all honest; device 3 lying "load 0" (it serves honestly); device 3 lying "load 0"
// and never answering (its calls hang until their 50 ms peer deadline). Reports the liar's
// share of peer calls against its fair share (1/4), and the median latency of the prompts in
// each network against the all-honest one.
struct hostile_run {
  double liar_share = 0;  // of peer calls (calls of layers 1..M sent to a device not the origin)
  double median_ms = 0;
  bool accounted = false;
};

hostile_run run_hostile(bool lying, bool silent) {
  constexpr std::uint32_t n = 4;
  std::vector<moa::any_backend> models;
  for (std::uint32_t i = 0; i < n; ++i) {
    moa::synthetic_backend::options_type o;
    o.name = "d" + std::to_string(i);
    o.latency = moa::latency_model::constant(std::chrono::milliseconds(1));
    o.timeout_rate = silent && i == 3 ? 1.0 : 0.0;
    o.seed = 7 + i;
    models.emplace_back(moa::synthetic_backend(std::move(o)));
  }
  moa::net::network_options opt;
  opt.layers = 2;
  opt.peer_timeout = std::chrono::milliseconds(50);
  if (lying || silent) {
    opt.claimed_loads.resize(n);
    opt.claimed_loads[3] = 0.0;
  }
  moa::net::network net(std::move(models), moa::least_loaded_gossip{.k = 1}, std::move(opt));
  const std::vector<double> lambda = {0.1, 0.1, 0.1, 0.0};
  const auto r = net.run(moa::net::poisson_arrivals(lambda, 3000, 5));
  hostile_run out;
  out.accounted = r.accounted();
  double peer = 0, to_liar = 0;
  std::vector<double> latency;
  for (const auto& p : r.prompts) {
    latency.push_back(p.latency);
    for (const auto& c : p.result.trace)
      if (c.role == moa::call_role::proposer && c.backend != p.origin) {
        peer += 1;
        to_liar += c.backend == 3 ? 1 : 0;
      }
  }
  std::nth_element(latency.begin(), latency.begin() + std::ptrdiff_t(latency.size() / 2),
                   latency.end());
  out.median_ms = latency[latency.size() / 2];
  out.liar_share = peer > 0 ? to_liar / peer : 0;
  return out;
}

void BM_hostile_peers(benchmark::State& state) {
  for (auto _ : state) {
    const auto honest = run_hostile(false, false);
    const auto liar = run_hostile(true, false);
    const auto silent = run_hostile(true, true);
    constexpr double fair = 1.0 / 4;
    state.counters["honest_median_ms"] = honest.median_ms;
    state.counters["liar_share_over_fair"] = liar.liar_share / fair;
    state.counters["liar_median_over_honest"] = liar.median_ms / honest.median_ms;
    state.counters["silent_share_over_fair"] = silent.liar_share / fair;
    state.counters["silent_median_over_honest"] = silent.median_ms / honest.median_ms;
    state.counters["accounted"] = honest.accounted && liar.accounted && silent.accounted ? 1 : 0;
  }
}
BENCHMARK(BM_hostile_peers)->Iterations(1)->UseRealTime()->Unit(benchmark::kSecond);
#if MOA_BENCH_ZMQ
// Wall time per gossiped call of 3 ZeroMQ devices on 127.0.0.1 (zero-latency backends, M = 2,
// k = 2: 7 calls a prompt, 6 of them over the wire), prompts submitted by one client with 32 in
// flight; `secure` with CURVE keys on every socket, else plain text.
double zmq_us_per_call(bool secure, int prompts) {
  using moa::net::curve_client;
  using moa::net::generate_key_pair;
  using moa::net::key_pair;
  namespace wire = moa::net::wire;
  constexpr std::uint32_t n = 3;
  std::vector<std::string> addresses;
  {  // free ports: bound by the kernel, then released; ending the context waits for the release
    zmq::context_t probes(1);
    for (std::uint32_t i = 0; i < n; ++i) {
      zmq::socket_t probe(probes, zmq::socket_type::router);
      probe.set(zmq::sockopt::linger, 0);
      probe.bind("tcp://127.0.0.1:*");
      addresses.push_back(probe.get(zmq::sockopt::last_endpoint));
    }
  }
  zmq::context_t ctx(1);
  std::vector<key_pair> keys;
  for (std::uint32_t i = 0; i < n; ++i) keys.push_back(generate_key_pair());
  const auto client_keys = generate_key_pair();
  using zmq_device = moa::net::zmq_device<moa::uniform_gossip>;
  std::vector<std::unique_ptr<zmq_device>> devices;
  for (std::uint32_t i = 0; i < n; ++i) {
    moa::net::zmq_device_options opt;
    opt.index = i;
    opt.addresses = addresses;
    opt.log = nullptr;
    opt.security.insecure_plaintext = !secure;
    if (secure) {
      opt.security.keys = keys[i];
      for (const auto& k : keys) opt.security.device_keys.push_back(k.public_key);
      opt.security.client_keys = {client_keys.public_key};
    }
    devices.push_back(std::make_unique<zmq_device>(
        moa::any_backend(moa::synthetic_backend({.name = "d" + std::to_string(i)})),
        moa::uniform_gossip{2}, opt));
  }
  std::vector<std::jthread> threads;
  for (auto& d : devices) threads.emplace_back([&d](std::stop_token st) { d->run(st); });
  zmq::socket_t client(ctx, zmq::socket_type::dealer);
  client.set(zmq::sockopt::linger, 0);
  client.set(zmq::sockopt::rcvtimeo, 10000);  // a bench that hangs measures nothing
  if (secure) curve_client(client, client_keys, keys[0].public_key);
  client.connect(addresses[0]);
  const auto run = [&](int count) {
    int sent = 0, received = 0;
    while (received < count) {
      while (sent < count && sent - received < 32) {
        wire::envelope e;
        e.type = wire::kind::submit;
        e.tag = std::to_string(sent++);
        e.messages = {{moa::role::user, "why is the sky blue?"}};
        const auto bytes = wire::encode(e);
        client.send(zmq::buffer(bytes), zmq::send_flags::none);
      }
      zmq::message_t m;
      if (!client.recv(m)) throw std::runtime_error("bench_network: no result within 10 s");
      ++received;
    }
  };
  run(200);  // handshakes, heartbeats, warm caches
  const auto start = std::chrono::steady_clock::now();
  run(prompts);
  const double us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
  for (auto& t : threads) t.request_stop();
  threads.clear();
  return us / (prompts * 7.0);
}

// Both modes in one run, alternated (plain, keyed, plain, keyed, ...) so machine noise hits
// both alike; the ratio of the medians is the figure (target: within 1.5x).
void BM_zmq_curve_overhead(benchmark::State& state) {
  for (auto _ : state) {
    std::vector<double> plain, keyed;
    for (int round = 0; round < 5; ++round) {
      plain.push_back(zmq_us_per_call(false, 2000));
      keyed.push_back(zmq_us_per_call(true, 2000));
    }
    std::sort(plain.begin(), plain.end());
    std::sort(keyed.begin(), keyed.end());
    state.counters["plain_us_per_call"] = plain[2];
    state.counters["curve_us_per_call"] = keyed[2];
    state.counters["curve_over_plain"] = keyed[2] / plain[2];
  }
}
BENCHMARK(BM_zmq_curve_overhead)->Iterations(1)->UseRealTime()->Unit(benchmark::kSecond);
#endif

}  // namespace

BENCHMARK_MAIN();
