// SPDX-License-Identifier: MIT
// The ZeroMQ network of processes: 4 device processes (moa_device) on 127.0.0.1 started by the
// test, prompts submitted by a client socket, one device killed by its pid mid-run, malformed
// messages; every process is stopped at the end. Also the wire decoder on its own, and keys:
// key files, identity by key (squatters, strangers, forged answers), and keyed device processes
// answering `moa submit`.
#include <doctest/doctest.h>

// g++ 12 at -O3 warns falsely on inlined string concatenation (-Wrestrict, GCC PR 105651).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wrestrict"
#endif

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <zmq.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "cli/zmq_tsan.hpp"  // TSan: libzmq is not instrumented
#include "moa/aggregate/policies.hpp"
#include "moa/backends/synthetic.hpp"
#include "moa/config/roster_device.hpp"
#include "moa/gossip/strategies.hpp"
#include "moa/net/adaptive.hpp"
#include "moa/net/device_metrics.hpp"
#include "moa/net/zmq_client.hpp"
#include "moa/net/zmq_device.hpp"
#include "moa/net/zmq_security.hpp"
#include "moa/net/zmq_wire.hpp"
#include "planted.hpp"

extern char** environ;

using namespace std::chrono_literals;

namespace {

// A free loopback port: bound by the kernel, then released (the race with other processes is
// negligible on a test machine, and a collision fails loudly at bind).
int free_port(zmq::context_t& ctx) {
  zmq::socket_t s(ctx, zmq::socket_type::router);
  s.set(zmq::sockopt::linger, 0);
  s.bind("tcp://127.0.0.1:*");
  const std::string ep = s.get(zmq::sockopt::last_endpoint);
  return std::stoi(ep.substr(ep.rfind(':') + 1));
}

std::vector<std::string> loopback_addresses(zmq::context_t& ctx, std::size_t n) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < n; ++i)
    out.push_back("tcp://127.0.0.1:" + std::to_string(free_port(ctx)));
  return out;
}

std::string join(const std::vector<std::string>& parts) {  // as --peers wants them
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ",") + p;
  return out;
}

struct process {
  pid_t pid = -1;
  std::string log;
};

process spawn(const std::vector<std::string>& args, const std::string& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  process p;
  p.log = log;
  const int rc = posix_spawn(&p.pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  REQUIRE_MESSAGE(rc == 0, "cannot start " << args[0]);
  return p;
}

// Waits for a process to exit, up to `limit`; true if it did.
bool reap(pid_t pid, std::chrono::milliseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (std::chrono::steady_clock::now() < until) {
    if (waitpid(pid, &status, WNOHANG) == pid) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct outcome {
  std::string text, error;
  std::uint32_t missing = 0;
};

// A client: one DEALER per device; prompts are tagged so results can be matched.
struct client {
  zmq::context_t& ctx;
  std::vector<zmq::socket_t> sockets;
  std::map<std::string, outcome> results;

  client(zmq::context_t& c, const std::vector<std::string>& addresses) : ctx(c) {
    for (const auto& a : addresses) {
      sockets.emplace_back(ctx, zmq::socket_type::dealer);
      sockets.back().set(zmq::sockopt::linger, 0);
      sockets.back().connect(a);
    }
  }
  void send_raw(std::size_t device, std::string_view bytes) {
    sockets[device].send(zmq::buffer(bytes), zmq::send_flags::dontwait);
  }
  void send(std::size_t device, moa::net::wire::envelope e) {
    e.from = 1u << 30;  // a client, not a device
    send_raw(device, moa::net::wire::encode(e));
  }
  void submit(std::size_t device, const std::string& tag) {
    moa::net::wire::envelope e;
    e.type = moa::net::wire::kind::submit;
    e.tag = tag;
    e.messages = {{moa::role::user, "question " + tag}};
    send(device, e);
  }
  // Collects results until `want` are in or `limit` passes.
  void collect(std::size_t want, std::chrono::milliseconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (results.size() < want && std::chrono::steady_clock::now() < until) {
      std::vector<zmq::pollitem_t> items;
      for (auto& s : sockets) items.push_back({s.handle(), 0, ZMQ_POLLIN, 0});
      zmq::poll(items, 20ms);
      for (std::size_t i = 0; i < sockets.size(); ++i) {
        if (!(items[i].revents & ZMQ_POLLIN)) continue;
        zmq::message_t m;
        while (sockets[i].recv(m, zmq::recv_flags::dontwait)) {
          auto d = moa::net::wire::decode(m.to_string_view());
          REQUIRE_MESSAGE(d.message, d.error);
          if (d.message->type != moa::net::wire::kind::result) continue;
          results[d.message->tag] = {d.message->text, d.message->error, d.message->missing};
        }
      }
    }
  }
  std::string stats(std::size_t device) {
    moa::net::wire::envelope e;
    e.type = moa::net::wire::kind::stats;
    send(device, e);
    results.erase("stats");
    collect(results.size() + 1, 5s);
    return results.count("stats") ? results["stats"].text : std::string();
  }
};

using moa_test::planted;

// Unique IPC endpoints for devices in this process: a loopback port released by free_port() may
// still be held by the releasing context's I/O thread when a device binds it at once.
std::vector<std::string> ipc_addresses(std::size_t n) {
  static int round = 0;
  ++round;
  std::vector<std::string> out;
  for (std::size_t i = 0; i < n; ++i)
    out.push_back("ipc:///tmp/moa-test-" + std::to_string(::getpid()) + "-" +
                  std::to_string(round) + "-" + std::to_string(i));
  return out;
}

// ZeroMQ devices in this process, one thread each, every layer gossiped to every other device;
// stopped (and joined) when destroyed.
struct zmq_cluster {
  using device = moa::net::zmq_device<moa::uniform_gossip>;
  std::vector<std::unique_ptr<device>> devices;
  std::vector<std::jthread> threads;

  // `tweak` adjusts every device's options; device `absent` is not started (its place is a
  // test's: an impostor's, or nobody's).
  zmq_cluster(const std::vector<std::string>& addresses, std::vector<moa::any_backend> models,
              const moa::any_aggregator& policy,
              const std::function<void(moa::net::zmq_device_options&)>& tweak = {},
              std::uint32_t absent = ~0u) {
    const auto n = std::uint32_t(addresses.size());
    for (std::uint32_t i = 0; i < n; ++i) {
      if (i == absent) continue;
      moa::net::zmq_device_options opt;
      opt.index = i;
      opt.addresses = addresses;
      opt.layers = 1;
      opt.peer_timeout = 5000ms;
      opt.heartbeat = 50ms;
      opt.dead_after = 5000ms;
      opt.log = nullptr;
      opt.aggregation = policy;
      opt.security.insecure_plaintext = true;  // ipc:// endpoints
      if (tweak) tweak(opt);
      devices.push_back(
          std::make_unique<device>(std::move(models[i]), moa::uniform_gossip{n - 1}, opt));
    }
    for (auto& d : devices) threads.emplace_back([&d](std::stop_token st) { d->run(st); });
  }
};

}  // namespace

TEST_CASE("Network.zmq_devices_run_aggregation_policies" * doctest::timeout(60)) {
  zmq::context_t ctx(1);
  const std::vector<std::string> addresses = ipc_addresses(3);
  SUBCASE("a majority vote at each origin") {
    std::vector<moa::any_backend> models;
    models.push_back(planted("d0", "I get 41.", "the aggregator is not asked"));
    models.push_back(planted("d1", "It is 42.", "the aggregator is not asked"));
    models.push_back(planted("d2", "Surely 42.", "the aggregator is not asked"));
    zmq_cluster cluster(addresses, std::move(models),
                        moa::any_aggregator(moa::majority_vote<moa::last_number>{}));
    client c(ctx, addresses);
    std::this_thread::sleep_for(200ms);  // let the devices bind and exchange heartbeats
    for (int i = 0; i < 9; ++i) c.submit(i % 3, "v" + std::to_string(i));
    c.collect(9, 30s);
    REQUIRE(c.results.size() == 9);
    for (const auto& entry : c.results) {
      const outcome& r = entry.second;
      CHECK_MESSAGE(r.error.empty(), entry.first << ": " << r.error);
      CHECK(r.missing == 0);
      CHECK((r.text == "It is 42." || r.text == "Surely 42."));
    }
  }
  SUBCASE("a judge on another device, asked over the wire") {
    std::vector<moa::any_backend> models;
    for (int i = 0; i < 2; ++i)
      models.push_back(planted("d" + std::to_string(i), "answer of d" + std::to_string(i)));
    models.push_back(planted("judge", "answer of the judge", "[1]"));
    zmq_cluster cluster(addresses, std::move(models),
                        moa::any_aggregator(moa::judge_policy{.judge = 2}));
    client c(ctx, addresses);
    std::this_thread::sleep_for(200ms);
    for (int i = 0; i < 6; ++i) c.submit(i % 2, "j" + std::to_string(i));
    c.collect(6, 30s);
    REQUIRE(c.results.size() == 6);
    for (const auto& entry : c.results) {
      const outcome& r = entry.second;
      CHECK_MESSAGE(r.error.empty(), entry.first << ": " << r.error);
      // The judge named [1], the first call of the layer: the origin's own answer.
      const auto origin = std::stoi(entry.first.substr(1)) % 2;
      CHECK(r.text == "answer of d" + std::to_string(origin));
    }
  }
}

TEST_CASE("Network.wire_decoder_rejects_malformed_input") {
  using namespace moa::net::wire;
  envelope call;
  call.type = kind::call;
  call.from = 2;
  call.prompt = 7;
  call.origin = 2;
  call.call = 4;
  call.layer = 2;
  call.messages = {{moa::role::system, "refs"}, {moa::role::user, "q"}};
  call.budget_ms = 100;
  const std::string bytes = encode(call);
  const auto back = decode(bytes);
  REQUIRE(back.message);
  CHECK(back.message->messages == call.messages);
  CHECK(back.message->call == 4);
  // Every truncation is rejected with a reason, never a crash or an exception.
  for (std::size_t cut = 0; cut < bytes.size(); ++cut) {
    const auto d = decode(std::string_view(bytes).substr(0, cut));
    CHECK(!d.message);
    CHECK(!d.error.empty());
  }
  CHECK(decode("[1,2]").error == "not a JSON object");
  CHECK(decode(R"({"type":"call","from":1,"load":0})").error.find("missing field") == 0);
  CHECK(decode(R"({"type":"teleport","from":1,"load":0})").error.find("unknown") == 0);
  CHECK(decode(R"({"type":"ping","from":-1,"load":0})").error.find("'from'") != std::string::npos);
  CHECK(decode(R"({"type":"answer","from":1,"load":0,"prompt":1,"origin":0,"call":1,)"
               R"("status":"ok","text":"t","error":"","usage":[1]})")
            .error.find("usage") != std::string::npos);
}

// The adaptive policy's fields (docs/NETWORK.md): optional, round-trip, and hostile values are
// rejected whole, never half-read.
TEST_CASE("Network.wire_adaptive_fields") {
  using namespace moa::net::wire;
  envelope ping;
  ping.type = kind::ping;
  ping.from = 1;
  CHECK(encode(ping).find("origin_rate") == std::string::npos);  // absent unless set
  auto plain = decode(encode(ping));
  REQUIRE(plain.message);
  CHECK(!plain.message->origin_rate);
  CHECK(!plain.message->service_ms);
  ping.origin_rate = 12.5;
  ping.service_ms = 340;
  auto back = decode(encode(ping));
  REQUIRE(back.message);
  CHECK(*back.message->origin_rate == 12.5);
  CHECK(*back.message->service_ms == 340);
  for (const char* bad : {R"("origin_rate":-1)", R"("origin_rate":null)", R"("origin_rate":"5")",
                          R"("origin_rate":1e8)", R"("service_ms":-0.5)", R"("service_ms":1e10)",
                          R"("service_ms":[1])", R"("service_ms":true)"}) {
    const auto d = decode(std::string(R"({"type":"ping","from":1,"load":0,)") + bad + "}");
    CHECK_MESSAGE(!d.message, bad);
    CHECK(d.error.find(std::string(bad).substr(1, std::string(bad).find('"', 1) - 1)) !=
          std::string::npos);
  }
  envelope r;
  r.type = kind::result;
  r.tag = "p0";
  r.error = "refused: over capacity";
  r.refusal = "over_capacity";
  r.layout = layout_note{1, 0, "over_capacity", "refused over_capacity: rho<=9 at device 0"};
  back = decode(encode(r));
  REQUIRE(back.message);
  CHECK(back.message->refusal == "over_capacity");
  REQUIRE(back.message->layout);
  CHECK(back.message->layout->layers == 1);
  CHECK(back.message->layout->fanout == 0);
  CHECK(back.message->layout->why == r.layout->why);
  const std::string head =
      R"({"type":"result","from":0,"load":0,"tag":"t","text":"","error":"","missing":0,)"
      R"("latency_ms":1,)";
  CHECK(decode(head + R"("layout":{"layers":2,"fanout":1,"reason":"held","why":""}})").message);
  const std::vector<std::string> hostile = {
      R"("layout":[2,2]})", R"("layout":{"layers":2}})",
      R"("layout":{"layers":-2,"fanout":1,"reason":"","why":""}})", R"("refusal":7})",
      R"("refusal":")" + std::string(2000, 'x') + "\"}"};
  for (const auto& bad : hostile) {
    const auto d = decode(head + bad);
    CHECK_MESSAGE(!d.message, bad.substr(0, 40));
    CHECK(!d.error.empty());
  }
}

// A peer's estimates are its word: clamped before the adaptive policy hears them; the prior
// stands until a peer reports; malformed ones change nothing.
TEST_CASE("Network.zmq_device_checks_reported_estimates") {
  moa::net::zmq_device_options opt;
  opt.addresses = ipc_addresses(3);
  opt.security.insecure_plaintext = true;  // ipc:// endpoints; "d2" names device 2
  opt.log = nullptr;
  moa::queueing::adaptive_config cfg;
  cfg.prior_service = {5.0};
  cfg.allowed = {{2, 2}, {1, 1}};
  cfg.devices = 3;
  opt.adaptive = moa::net::adaptive_origin(cfg, 0);
  moa::net::zmq_device<moa::uniform_gossip> dev(moa::synthetic_backend({.name = "d0"}),
                                                moa::uniform_gossip{2}, opt);
  CHECK(dev.adaptive_estimates().service == std::vector<double>{5.0, 5.0, 5.0});
  const auto say = [&](const std::string& fields) {
    return dev.handle("d2", R"({"type":"ping","from":2,"load":0,)" + fields + "}");
  };
  CHECK(say(R"("origin_rate":2000000,"service_ms":100000000)"));
  auto est = dev.adaptive_estimates();
  CHECK(est.rates[2] == doctest::Approx(moa::net::max_trusted_rate / 1000));  // per ms
  CHECK(est.service[2] == moa::net::max_trusted_service_ms);
  CHECK(say(R"("origin_rate":3,"service_ms":0)"));
  est = dev.adaptive_estimates();
  CHECK(est.rates[2] == doctest::Approx(0.003));
  CHECK(est.service[2] > 0);  // a service time is positive: 0 is raised to the least one
  CHECK(est.service[2] < 1e-3);
  CHECK(est.service[1] == 5.0);  // d1 has not reported: the prior
  CHECK(say(R"("origin_rate":-3,"service_ms":7)"));
  CHECK(dev.counters().malformed == 1);
  CHECK(dev.adaptive_estimates().rates[2] == doctest::Approx(0.003));  // unchanged
  // A call may name any layer of the largest allowed layout; beyond it, it is dropped.
  moa::net::wire::envelope call;
  call.type = moa::net::wire::kind::call;
  call.from = 2;
  call.origin = 2;
  call.prompt = 9;
  call.layer = 4;  // (2, 2)'s aggregator is layer 3
  call.messages = {{moa::role::user, "q"}};
  CHECK(dev.handle("d2", moa::net::wire::encode(call)));
  CHECK(dev.counters().dropped == 1);
}

TEST_CASE("Network.processes_on_loopback" * doctest::timeout(120)) {
  zmq::context_t ctx(1);
  constexpr std::size_t n = 4;
  const std::vector<std::string> addresses = loopback_addresses(ctx, n);
  const std::string peers = join(addresses);
  std::vector<process> devices;
  for (std::size_t i = 0; i < n; ++i)
    devices.push_back(
        spawn({MOA_DEVICE_PROGRAM, "device", "--insecure-plaintext", "--index", std::to_string(i),
               "--peers", peers, "--alpha-ms", "1", "--peer-timeout-ms", "3000", "--dead-after-ms",
               "1500", "--seed", "5"},
              std::string(MOA_TEST_LOG_DIR) + "/device" + std::to_string(i) + ".log"));
  client c(ctx, addresses);
  std::this_thread::sleep_for(300ms);  // let the devices bind and exchange heartbeats

  SUBCASE("200 prompts, one device killed mid-run, malformed messages") {
    // Phase 1: every device is an origin; all prompts answered, nothing missing.
    for (int i = 0; i < 200; ++i) c.submit(i % n, "a" + std::to_string(i));
    c.collect(200, 60s);
    CHECK(c.results.size() == 200);
    for (const auto& entry : c.results) {
      const std::string& tag = entry.first;  // not a structured binding: clang 14 cannot
      const outcome& r = entry.second;       // capture those in doctest's message lambdas
      CHECK_MESSAGE(!r.text.empty(), tag << ": " << r.error);
      CHECK_MESSAGE(r.error.empty(), tag << ": " << r.error);
    }

    // Phase 2: device 3 is killed by its pid while prompts born at 0..2 are in flight.
    c.results.clear();
    for (int i = 0; i < 200; ++i) {
      c.submit(i % 3, "b" + std::to_string(i));
      if (i == 60) {
        ::kill(devices[3].pid, SIGKILL);
        CHECK(reap(devices[3].pid, 5s));
        devices[3].pid = -1;
      }
      std::this_thread::sleep_for(2ms);
    }
    c.collect(200, 60s);
    CHECK(c.results.size() == 200);
    std::size_t degraded = 0;
    for (const auto& entry : c.results) {
      const std::string& tag = entry.first;  // not a structured binding: clang 14 cannot
      const outcome& r = entry.second;       // capture those in doctest's message lambdas
      CHECK_MESSAGE(!r.text.empty(), tag << ": " << r.error);  // answered...
      if (r.missing > 0) {
        ++degraded;
        CHECK(!r.error.empty());  // ...or explicitly degraded, naming what is missing
      }
    }
    MESSAGE("after the kill: " << degraded << " of 200 prompts degraded");

    // The survivors keep serving.
    c.results.clear();
    for (int i = 0; i < 30; ++i) c.submit(i % 3, "c" + std::to_string(i));
    c.collect(30, 30s);
    CHECK(c.results.size() == 30);
    for (const auto& entry : c.results) CHECK(!entry.second.text.empty());

    // Malformed and truncated messages are rejected, logged, and do not crash the device.
    c.send_raw(0, "not json at all");
    c.send_raw(0, R"({"type":"call","from":1,"load":0,"prompt":)");
    c.send_raw(0, R"({"type":"answer","from":9,"load":0})");
    const std::string stats = c.stats(0);
    REQUIRE(!stats.empty());
    const auto j = nlohmann::json::parse(stats);
    CHECK(j["malformed"].get<int>() >= 3);
    CHECK(j["dead_peers"].get<int>() >= 1);
    for (std::size_t i = 0; i < 3; ++i) c.send(i, {.type = moa::net::wire::kind::stop});
    for (std::size_t i = 0; i < 3; ++i) {
      CHECK(reap(devices[i].pid, 10s));
      devices[i].pid = -1;
    }
    const std::string log = read_file(devices[0].log);
    CHECK(log.find("rejected a malformed message") != std::string::npos);
    CHECK(log.find("device 3 silent") != std::string::npos);
  }
  for (auto& d : devices)  // whatever happened above, no process outlives the test
    if (d.pid > 0) {
      ::kill(d.pid, SIGKILL);
      reap(d.pid, 5s);
    }
}

// Devices serving real models: each moa_device talks to its own llama.cpp server
// (tests/with_llama.sh starts them and passes their URLs in MOA_ENDPOINTS). Skipped by default;
// ctest runs it with --no-skip under the llama label.
TEST_CASE("Network.processes_serve_real_models" * doctest::skip() * doctest::timeout(120)) {
  const char* endpoints = std::getenv("MOA_ENDPOINTS");
  REQUIRE_MESSAGE(endpoints != nullptr, "run through tests/with_llama.sh");
  std::vector<std::string> urls;
  std::stringstream list(endpoints);
  for (std::string u; std::getline(list, u, ',');) urls.push_back(u);
  REQUIRE(urls.size() >= 2);
  const std::size_t n = urls.size();
  zmq::context_t ctx;
  const std::vector<std::string> addresses = loopback_addresses(ctx, n);
  const std::string peers = join(addresses);
  std::vector<process> devices;
  for (std::size_t i = 0; i < n; ++i)
    devices.push_back(
        spawn({MOA_DEVICE_PROGRAM, "device", "--insecure-plaintext", "--index", std::to_string(i),
               "--peers", peers, "--layers", "2", "--fanout", "1", "--endpoint", urls[i],
               "--max-tokens", "8", "--peer-timeout-ms", "30000", "--dead-after-ms", "5000"},
              std::string(MOA_TEST_LOG_DIR) + "/llama_device" + std::to_string(i) + ".log"));
  client c(ctx, addresses);
  std::this_thread::sleep_for(300ms);
  constexpr int prompts = 6;  // (k + 1) M + 1 = 5 real calls each
  for (int i = 0; i < prompts; ++i) c.submit(i % n, "r" + std::to_string(i));
  c.collect(prompts, 90s);
  CHECK(c.results.size() == prompts);
  for (const auto& entry : c.results) {
    const std::string& tag = entry.first;
    const outcome& r = entry.second;
    CHECK_MESSAGE(!r.text.empty(), tag << ": " << r.error);
    CHECK_MESSAGE(r.error.empty(), tag << ": " << r.error);
    CHECK(r.missing == 0);
  }
  const auto j = nlohmann::json::parse(c.stats(0));
  CHECK(j["served"].get<int>() >= 2);  // device 0 answered for its own prompts and its peers'
  for (std::size_t i = 0; i < n; ++i) c.send(i, {.type = moa::net::wire::kind::stop});
  for (auto& d : devices) {
    if (!reap(d.pid, 10s)) ::kill(d.pid, SIGKILL);
    reap(d.pid, 5s);
    d.pid = -1;
  }
  CHECK(read_file(devices[0].log).find("model http://127.0.0.1:") != std::string::npos);
}

namespace {

// Waits for a process to exit, up to `limit`; its wait status, or -1 if it is still running.
int reap_status(pid_t pid, std::chrono::milliseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (std::chrono::steady_clock::now() < until) {
    if (waitpid(pid, &status, WNOHANG) == pid) return status;
    std::this_thread::sleep_for(10ms);
  }
  return -1;
}

// A synthetic device model: `text` as a proposer, "final of NAME" as the aggregator, after
// `ms` milliseconds each.
moa::any_backend slow(const std::string& name, double ms) {
  moa::synthetic_options o;
  o.name = name;
  o.latency = moa::latency_model::constant(std::chrono::duration_cast<moa::clock::duration>(
      std::chrono::duration<double, std::milli>(ms)));
  o.answer = [name](const moa::request& r) {
    return r.context.role == moa::call_role::aggregator ? "final of " + name : "answer of " + name;
  };
  return moa::any_backend(moa::synthetic_backend(std::move(o)));
}

// An impostor holding device 2's place: it binds d2's address (the devices' calls come to it)
// and speaks to d0 and d1 as "d2".
struct impostor {
  zmq::socket_t in;
  std::vector<zmq::socket_t> out;
  std::vector<moa::net::wire::envelope> calls;  // every call received, in order
  impostor(zmq::context_t& ctx, const std::vector<std::string>& addresses)
      : in(ctx, zmq::socket_type::router) {
    in.set(zmq::sockopt::linger, 0);
    in.bind(addresses[2]);
    for (int j = 0; j < 2; ++j) {
      out.emplace_back(ctx, zmq::socket_type::dealer);
      out.back().set(zmq::sockopt::linger, 0);
      out.back().set(zmq::sockopt::routing_id, "d2");
      out.back().connect(addresses[std::size_t(j)]);
    }
  }
  void send(std::size_t j, moa::net::wire::envelope e) {
    e.from = 2;
    const auto bytes = moa::net::wire::encode(e);
    out[j].send(zmq::buffer(bytes), zmq::send_flags::dontwait);
  }
  // Pings both devices (so d2 looks alive) and takes in calls for `d`.
  void pump(std::chrono::milliseconds d) {
    const auto until = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < until) {
      for (std::size_t j = 0; j < 2; ++j) send(j, {.type = moa::net::wire::kind::ping});
      zmq::pollitem_t items[] = {{in.handle(), 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, 1, 20ms);
      zmq::message_t id, body;
      while (in.recv(id, zmq::recv_flags::dontwait)) {
        if (!in.recv(body, zmq::recv_flags::dontwait)) break;
        auto m = moa::net::wire::decode(body.to_string_view());
        if (m.message && m.message->type == moa::net::wire::kind::call)
          calls.push_back(std::move(*m.message));
      }
    }
  }
  // Device j's stats, asked on the impostor's own connection (after what it sent before).
  nlohmann::json stats(std::size_t j) {
    send(j, {.type = moa::net::wire::kind::stats});
    const auto until = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < until) {
      zmq::pollitem_t items[] = {{out[j].handle(), 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, 1, 20ms);
      zmq::message_t m;
      while (out[j].recv(m, zmq::recv_flags::dontwait)) {
        auto d = moa::net::wire::decode(m.to_string_view());
        if (d.message && d.message->tag == "stats") return nlohmann::json::parse(d.message->text);
      }
    }
    return {};
  }
};

moa::net::wire::envelope forged(moa::net::wire::kind k, std::uint64_t prompt, std::uint32_t origin,
                                std::uint32_t call, std::uint32_t layer = 1) {
  moa::net::wire::envelope e;
  e.type = k;
  e.prompt = prompt;
  e.origin = origin;
  e.call = call;
  e.layer = layer;
  e.text = "forged";
  e.messages = {{moa::role::user, "q"}};
  return e;
}

}  // namespace

// The crash this issue began with, without sockets: a well-formed call whose origin is out of
// range, and every other out-of-range field, dropped and counted.
TEST_CASE("Network.zmq_device_drops_out_of_range_messages") {
  using namespace moa::net::wire;
  moa::net::zmq_device_options opt;
  opt.index = 0;
  opt.addresses = ipc_addresses(3);
  opt.layers = 2;
  opt.log = nullptr;
  opt.device.capacity = 4;
  opt.security.insecure_plaintext = true;
  moa::net::zmq_device<moa::uniform_gossip> dev(slow("d0", 0), moa::uniform_gossip{2}, opt);
  const auto as_d2 = [&](envelope e) {
    e.from = 2;
    return dev.handle("d2", encode(e));
  };
  CHECK(as_d2(forged(kind::call, 1, 99, 0)));                   // origin out of range
  CHECK(as_d2(forged(kind::call, 1, 1, 0)));                    // origin is not the sender
  CHECK(as_d2(forged(kind::call, 1, 2, 1u << 30)));             // call id out of range
  CHECK(as_d2(forged(kind::call, 1, 2, 0, 1u << 30)));          // layer out of range
  CHECK(as_d2(forged(kind::answer, 12345, 0, 0)));              // no such prompt
  CHECK(as_d2(forged(kind::answer, 12345, 77, 0)));             // not to this origin
  CHECK(as_d2(forged(kind::refused, (1ull << 63) | 5, 0, 0)));  // no such policy call
  CHECK(as_d2(forged(kind::call, (1ull << 63) | 5, 2, 3)));     // a policy call is call 0
  CHECK(dev.counters().dropped == 8);
  CHECK(dev.counters().served == 0);
  // A ping or an answer claiming another device's index is rejected as malformed.
  envelope lie;
  lie.type = kind::ping;
  lie.from = 1;
  CHECK(dev.handle("d2", encode(lie)));
  CHECK(dev.counters().malformed == 1);
  // A well-formed call is queued (the device is not running: nothing is sent).
  CHECK(as_d2(forged(kind::call, 1, 2, 1)));
  CHECK(dev.counters().dropped == 8);
}

TEST_CASE("Network.zmq_devices_withstand_a_hostile_peer" * doctest::timeout(90)) {
  using namespace moa::net::wire;
  zmq::context_t ctx(1);
  const std::vector<std::string> addresses = ipc_addresses(3);
  impostor bad(ctx, addresses);
  std::vector<moa::any_backend> models;
  for (int i = 0; i < 3; ++i) models.push_back(slow("d" + std::to_string(i), 1));
  zmq_cluster cluster(
      addresses, std::move(models), moa::any_aggregator{},
      [](moa::net::zmq_device_options& o) {
        o.peer_timeout = 2000ms;
        o.dead_after = 2000ms;
        o.max_message_bytes = 1 << 20;
      },
      2);
  bad.pump(300ms);
  const auto before = bad.stats(0);
  REQUIRE(!before.empty());

  // Forged calls and answers while no prompt is in flight: each one dropped and counted.
  bad.send(0, forged(kind::call, 1, 99, 0));
  bad.send(0, forged(kind::call, 1, 0, 0));
  bad.send(0, forged(kind::call, 1, 2, 1u << 30));
  bad.send(0, forged(kind::call, 1, 2, 0, 1u << 30));
  bad.send(0, forged(kind::answer, 12345, 0, 1));
  bad.send(0, forged(kind::answer, 12345, 7, 1));
  bad.send(0, forged(kind::refused, (1ull << 63) | 5, 0, 0));
  {  // a submit whose tag is too long
    envelope e = forged(kind::submit, 0, 0, 0);
    e.tag = std::string(300, 't');
    bad.send(0, e);
  }
  bad.out[0].send(zmq::str_buffer("{\"type\":\"call\""), zmq::send_flags::dontwait);
  const auto after = bad.stats(0);
  REQUIRE(!after.empty());
  CHECK(after["dropped"].get<int>() - before["dropped"].get<int>() == 8);
  CHECK(after["malformed"].get<int>() - before["malformed"].get<int>() == 1);
  CHECK(after["served"] == before["served"]);

  // An oversized frame: the socket that sent it is disconnected; the device serves on.
  {
    zmq::socket_t big(ctx, zmq::socket_type::dealer);
    big.set(zmq::sockopt::linger, 0);
    big.connect(addresses[0]);
    const std::string frame(2 << 20, 'x');
    big.send(zmq::buffer(frame), zmq::send_flags::dontwait);
    std::this_thread::sleep_for(100ms);
  }

  // Honest prompts, with d2's place held by the impostor: it answers each call it gets twice,
  // and forges the answers of the calls of the same prompt that went elsewhere.
  client c(ctx, {addresses[0], addresses[1]});
  for (int i = 0; i < 10; ++i) c.submit(std::size_t(i % 2), "h" + std::to_string(i));
  std::size_t answered = 0;
  const auto until = std::chrono::steady_clock::now() + 20s;
  while (c.results.size() < 10 && std::chrono::steady_clock::now() < until) {
    bad.pump(20ms);
    for (; answered < bad.calls.size(); ++answered) {
      const auto& call = bad.calls[answered];
      auto a = forged(kind::answer, call.prompt, call.origin, call.call);
      a.text = "answer of the impostor";
      bad.send(call.origin, a);
      bad.send(call.origin, a);  // only once
      for (const std::uint32_t other : {call.call + 1, call.call - 1})
        bad.send(call.origin, forged(kind::answer, call.prompt, call.origin, other));
    }
    c.collect(10, 10ms);
  }
  REQUIRE(c.results.size() == 10);
  REQUIRE(answered > 0);
  for (const auto& entry : c.results) {
    const outcome& r = entry.second;
    CHECK_MESSAGE(r.error.empty(), entry.first << ": " << r.error);
    CHECK(r.text == "final of d" + std::to_string(std::stoi(entry.first.substr(1)) % 2));
  }
  const auto s0 = bad.stats(0), s1 = bad.stats(1);
  REQUIRE((!s0.empty() && !s1.empty()));
  // Per call it got, the impostor sent 3 answers that count for nothing.
  CHECK(s0["dropped"].get<std::size_t>() + s1["dropped"].get<std::size_t>() >=
        after["dropped"].get<std::size_t>() + 3 * answered);

  // A device that says it is leaving is dead to its peers at once.
  bad.send(0, {.type = kind::leaving});
  std::this_thread::sleep_for(100ms);
  const auto left = nlohmann::json::parse(c.stats(0));
  CHECK(left["dead_peers"].get<int>() > before["dead_peers"].get<int>());
}

TEST_CASE("Network.zmq_device_bounds_prompts_in_flight" * doctest::timeout(90)) {
  zmq::context_t ctx(1);
  const std::vector<std::string> addresses = ipc_addresses(2);
  std::vector<moa::any_backend> models;
  for (int i = 0; i < 2; ++i) models.push_back(slow("d" + std::to_string(i), 2));
  zmq_cluster cluster(addresses, std::move(models), moa::any_aggregator{},
                      [](moa::net::zmq_device_options& o) {
                        o.max_prompts = 4;
                        o.max_calls_per_origin = 2;
                      });
  client c(ctx, addresses), admin(ctx, addresses);
  std::this_thread::sleep_for(200ms);
  constexpr int flood = 400;
  for (int i = 0; i < flood; ++i) c.submit(0, "f" + std::to_string(i));
  const std::string mid = admin.stats(0);
  REQUIRE(!mid.empty());
  CHECK(nlohmann::json::parse(mid)["in_flight"].get<int>() <= 4);  // held state stays bounded
  c.collect(flood, 60s);
  REQUIRE(c.results.size() == flood);
  std::size_t refused = 0, answered = 0;
  for (const auto& entry : c.results) {
    const outcome& r = entry.second;
    if (r.error.rfind("refused: device 0 has 4 prompts in flight", 0) == 0)
      ++refused;
    else if (r.text == "final of d0")
      ++answered;
  }
  CHECK(refused + answered == flood);  // every prompt answered or explicitly refused
  CHECK(refused > 0);
  CHECK(answered >= 4);
  const auto j = nlohmann::json::parse(admin.stats(0));
  CHECK(j["in_flight"].get<int>() == 0);
  CHECK(j["refused_prompts"].get<std::size_t>() == refused);
}

TEST_CASE("Network.zmq_calls_expire_with_their_deadline" * doctest::timeout(60)) {
  zmq::context_t ctx(1);
  const std::vector<std::string> addresses = ipc_addresses(2);
  std::vector<moa::any_backend> models;
  models.push_back(slow("d0", 0));
  {  // slower than the origin waits, whatever the call's deadline says
    moa::synthetic_options o;
    o.name = "d1";
    o.answer = [](const moa::request&) {
      std::this_thread::sleep_for(300ms);
      return std::string("too late");
    };
    models.push_back(moa::any_backend(moa::synthetic_backend(std::move(o))));
  }
  zmq_cluster cluster(addresses, std::move(models), moa::any_aggregator{},
                      [](moa::net::zmq_device_options& o) { o.peer_timeout = 100ms; });
  client c(ctx, addresses);
  std::this_thread::sleep_for(200ms);
  for (int i = 0; i < 5; ++i) c.submit(0, "e" + std::to_string(i));
  c.collect(5, 20s);
  REQUIRE(c.results.size() == 5);
  for (const auto& entry : c.results) {
    CHECK(entry.second.text == "final of d0");  // degraded: d1's proposals are missing
    CHECK(entry.second.missing >= 1);
  }
  std::this_thread::sleep_for(500ms);  // d1 works through its queue
  // The calls behind the first waited past their deadline: dropped unserved, not served late.
  const auto j = nlohmann::json::parse(c.stats(1));
  CHECK(j["expired"].get<int>() >= 3);
}

namespace {

// SIGTERM and SIGINT on devices of `program` (moa_device, or moa with its `device` command).
void stops_gracefully_on_signals(const char* program, const std::string& name) {
  zmq::context_t ctx(1);
  constexpr std::size_t n = 3;
  const std::vector<std::string> addresses = loopback_addresses(ctx, n);
  const auto start = [&](std::size_t i, const std::string& alpha, const std::string& drain) {
    return spawn({program, "device", "--insecure-plaintext", "--index", std::to_string(i),
                  "--peers", join(addresses), "--alpha-ms", alpha, "--peer-timeout-ms", "60000",
                  "--dead-after-ms", "1000", "--drain-timeout-ms", drain},
                 std::string(MOA_TEST_LOG_DIR) + "/signal_" + name + std::to_string(i) + ".log");
  };
  std::vector<process> devices;
  for (std::size_t i = 0; i < n; ++i) devices.push_back(start(i, "10", "10000"));
  client c(ctx, addresses);
  std::this_thread::sleep_for(300ms);

  // SIGTERM with prompts in flight: each one still gets its result, the process exits 0, and
  // its peers hear that it is leaving.
  for (int i = 0; i < 20; ++i) c.submit(0, "s" + std::to_string(i));
  std::this_thread::sleep_for(30ms);
  ::kill(devices[0].pid, SIGTERM);
  c.collect(20, 30s);
  CHECK(c.results.size() == 20);
  for (const auto& entry : c.results)
    CHECK_MESSAGE((!entry.second.text.empty() || !entry.second.error.empty()), entry.first);
  const int status = reap_status(devices[0].pid, 15s);
  CHECK((status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0));
  devices[0].pid = -1;
  // New prompts at the survivors are served without it.
  c.results.clear();
  for (int i = 0; i < 6; ++i) c.submit(1 + std::size_t(i % 2), "t" + std::to_string(i));
  c.collect(6, 30s);
  CHECK(c.results.size() == 6);
  for (const auto& entry : c.results) CHECK(!entry.second.text.empty());
  CHECK(read_file(devices[1].log).find("device 0 is leaving") != std::string::npos);
  CHECK(read_file(devices[0].log).find(" info moa device 0: stopped") != std::string::npos);

  // SIGINT on an idle device: exit 0.
  ::kill(devices[2].pid, SIGINT);
  const int idle = reap_status(devices[2].pid, 15s);
  CHECK((idle != -1 && WIFEXITED(idle) && WEXITSTATUS(idle) == 0));
  devices[2].pid = -1;

  // A second signal while a slow prompt drains: exit at once, 128 + the signal.
  ::kill(devices[1].pid, SIGKILL);
  reap(devices[1].pid, 5s);
  devices[1] = start(1, "20000", "60000");
  std::this_thread::sleep_for(300ms);
  c.submit(1, "slow");
  std::this_thread::sleep_for(200ms);
  ::kill(devices[1].pid, SIGTERM);
  std::this_thread::sleep_for(200ms);
  CHECK(reap_status(devices[1].pid, 300ms) == -1);  // draining, not gone
  ::kill(devices[1].pid, SIGTERM);
  const int twice = reap_status(devices[1].pid, 5s);
  CHECK((twice != -1 && WIFEXITED(twice) && WEXITSTATUS(twice) == 128 + SIGTERM));
  devices[1].pid = -1;
  for (auto& d : devices)
    if (d.pid > 0) {
      ::kill(d.pid, SIGKILL);
      reap(d.pid, 5s);
    }
}

}  // namespace

TEST_CASE("Network.moa_device_stops_gracefully_on_signals" * doctest::timeout(120)) {
  stops_gracefully_on_signals(MOA_DEVICE_PROGRAM, "moa_device");
}

#ifdef MOA_CLI_PROGRAM
TEST_CASE("Network.moa_device_command_stops_gracefully_on_signals" * doctest::timeout(120)) {
  stops_gracefully_on_signals(MOA_CLI_PROGRAM, "moa");
}
#endif

// A peer that pings but never answers: after three calls in a row pass their deadline it is
// failed, and its heartbeats do not bring it back; the prompts stop waiting for it.
TEST_CASE("Network.zmq_silent_pinging_peer_is_failed" * doctest::timeout(60)) {
  zmq::context_t ctx(1);
  const std::vector<std::string> addresses = ipc_addresses(3);
  impostor silent(ctx, addresses);
  std::vector<moa::any_backend> models;
  for (int i = 0; i < 3; ++i) models.push_back(slow("d" + std::to_string(i), 1));
  zmq_cluster cluster(
      addresses, std::move(models), moa::any_aggregator{},
      [](moa::net::zmq_device_options& o) {
        o.peer_timeout = 150ms;
        o.dead_after = 2000ms;
      },
      2);
  client c(ctx, addresses);
  silent.pump(300ms);
  const auto run = [&](const std::string& prefix) {
    c.results.clear();
    for (int i = 0; i < 4; ++i) {
      c.submit(0, prefix + std::to_string(i));
      silent.pump(250ms);  // it pings and takes the calls in, never answering
      c.collect(std::size_t(i + 1), 10ms);
    }
    c.collect(4, 5s);
    REQUIRE(c.results.size() == 4);
    for (const auto& entry : c.results) CHECK(entry.second.text == "final of d0");
  };
  run("p");
  const auto failed = nlohmann::json::parse(c.stats(0));
  CHECK(failed["dead_peers"].get<int>() == 1);
  const int timeouts = failed["timeouts"].get<int>();
  CHECK(timeouts >= 3);
  run("q");  // still pinging: still failed, and no call waits for it any more
  const auto later = nlohmann::json::parse(c.stats(0));
  CHECK(later["timeouts"].get<int>() == timeouts);
  CHECK(later["dead_peers"].get<int>() == 1);
}

#ifdef MOA_DEVICE_METRICS
namespace {

// GET http://127.0.0.1:PORT/PATH with curl: the status code and the body.
std::pair<int, std::string> http_get(int port, const std::string& path) {
  const std::string cmd =
      "curl -s -m 5 -w '\\n%{http_code}' http://127.0.0.1:" + std::to_string(port) + path +
      " 2>/dev/null";
  std::string out;
  if (FILE* f = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    std::size_t got = 0;
    while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, got);
    ::pclose(f);
  }
  const auto nl = out.rfind('\n');
  if (nl == std::string::npos) return {0, out};
  return {std::atoi(out.c_str() + nl + 1), out.substr(0, nl)};
}

// Prometheus text format 0.0.4, as far as moa writes it: `# HELP`/`# TYPE` lines, then samples
// `name{labels} value`, every sample's family typed before it. Returns series -> value; fails the
// test on any line that does not parse.
std::map<std::string, double> parse_prometheus(const std::string& text) {
  std::map<std::string, double> out;
  std::map<std::string, std::string> types;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("# HELP ", 0) == 0) continue;
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream t(line.substr(7));
      std::string name, type;
      t >> name >> type;
      CHECK_MESSAGE((type == "counter" || type == "gauge" || type == "histogram"), line);
      types[name] = type;
      continue;
    }
    const auto space = line.rfind(' ');
    REQUIRE_MESSAGE(space != std::string::npos, line);
    const std::string series = line.substr(0, space);
    const auto brace = series.find('{');
    REQUIRE_MESSAGE((brace != std::string::npos && series.back() == '}'), line);
    std::string family = series.substr(0, brace);
    for (const char* suffix : {"_bucket", "_sum", "_count"})
      if (!types.count(family) && family.size() > std::strlen(suffix) &&
          family.compare(family.size() - std::strlen(suffix), std::string::npos, suffix) == 0)
        family.resize(family.size() - std::strlen(suffix));
    CHECK_MESSAGE(types.count(family) == 1, "untyped sample: " << line);
    char* end = nullptr;
    const double v = std::strtod(line.c_str() + space + 1, &end);
    CHECK_MESSAGE(*end == '\0', line);
    out[series] = v;
  }
  return out;
}

}  // namespace

TEST_CASE("Network.moa_device_serves_metrics_and_health" * doctest::timeout(90)) {
  zmq::context_t ctx(1);
  constexpr std::size_t n = 3;
  const std::vector<std::string> addresses = loopback_addresses(ctx, n);
  std::vector<int> http(n);
  for (auto& p : http) p = free_port(ctx);
  std::vector<process> devices;
  for (std::size_t i = 0; i < n; ++i)
    devices.push_back(
        spawn({MOA_DEVICE_PROGRAM, "device", "--insecure-plaintext", "--index", std::to_string(i),
               "--peers", join(addresses), "--fanout", "1", "--alpha-ms", "1", "--dead-after-ms",
               "400", "--metrics", "127.0.0.1:" + std::to_string(http[i])},
              std::string(MOA_TEST_LOG_DIR) + "/metrics" + std::to_string(i) + ".log"));
  const auto until = [](auto&& ok) {  // polls: the snapshot is published every 50 ms
    const auto limit = std::chrono::steady_clock::now() + 10s;
    while (!ok() && std::chrono::steady_clock::now() < limit) std::this_thread::sleep_for(20ms);
    return ok();
  };
  CHECK(until([&] { return http_get(http[0], "/health").first == 200; }));
  const auto [status, body] = http_get(http[0], "/health");
  CHECK(body.find("\"status\":\"ok\"") != std::string::npos);
  CHECK(body.find("\"peers_alive\":2") != std::string::npos);
  CHECK(http_get(http[0], "/nowhere").first == 404);

  const std::string dev = "{device=\"0\"";
  auto before = parse_prometheus(http_get(http[0], "/metrics").second);
  CHECK(before["moa_device_up" + dev + "}"] == 1);
  CHECK(before["moa_device_prompts_total" + dev + ",outcome=\"submitted\"}"] == 0);

  client c(ctx, addresses);
  for (int i = 0; i < 20; ++i) c.submit(0, "m" + std::to_string(i));
  c.collect(20, 30s);
  REQUIRE(c.results.size() == 20);
  std::map<std::string, double> after;
  CHECK(until([&] {
    after = parse_prometheus(http_get(http[0], "/metrics").second);
    return after["moa_device_prompt_latency_seconds_count" + dev + "}"] == 20;
  }));
  CHECK(after["moa_device_prompts_total" + dev + ",outcome=\"submitted\"}"] == 20);
  CHECK(after["moa_device_prompts_total" + dev + ",outcome=\"complete\"}"] == 20);
  CHECK(after["moa_device_prompt_latency_seconds_bucket" + dev + ",le=\"+Inf\"}"] == 20);
  CHECK(after["moa_device_prompt_latency_seconds_sum" + dev + "}"] > 0);
  CHECK(after["moa_device_calls_served_total" + dev + "}"] > 0);
  CHECK(after.count("moa_device_peer_load" + dev + ",peer=\"2\",kind=\"effective\"}") == 1);
  CHECK(after["moa_device_peers_alive" + dev + "}"] == 2);
  // Buckets are cumulative.
  double previous = 0;
  for (const double le : moa::net::latency_histogram::bounds) {
    std::ostringstream key;
    key << "moa_device_prompt_latency_seconds_bucket" << dev << ",le=\"" << le << "\"}";
    REQUIRE(after.count(key.str()) == 1);
    CHECK(after[key.str()] >= previous);
    previous = after[key.str()];
  }

  // A peer dies: counted, and the gauge follows.
  ::kill(devices[2].pid, SIGKILL);
  CHECK(reap(devices[2].pid, 5s));
  devices[2].pid = -1;
  CHECK(until([&] {
    after = parse_prometheus(http_get(http[0], "/metrics").second);
    return after["moa_device_dead_peers_total" + dev + "}"] >= 1;
  }));
  CHECK(after["moa_device_peers_alive" + dev + "}"] == 1);

  for (auto& d : devices)
    if (d.pid > 0) ::kill(d.pid, SIGTERM);
  for (auto& d : devices)
    if (d.pid > 0) CHECK(reap(d.pid, 10s));
}
#endif

// A peer's load is its word: clamped, and never below what the origin has outstanding there.
TEST_CASE("Network.zmq_device_checks_reported_loads") {
  moa::net::zmq_device_options opt;
  opt.addresses = ipc_addresses(3);
  opt.security.insecure_plaintext = true;  // ipc:// endpoints; "d2" names device 2
  opt.log = nullptr;
  opt.trust.max_load = 1000;
  moa::net::zmq_device<moa::least_loaded_gossip> dev(moa::synthetic_backend({.name = "d0"}),
                                                     moa::least_loaded_gossip{.k = 1}, opt);
  const auto say = [&](std::uint64_t load) {
    moa::net::wire::envelope e;
    e.type = moa::net::wire::kind::ping;
    e.from = 2;
    e.load = load;
    CHECK(dev.handle("d2", moa::net::wire::encode(e)));
    return dev.view().load(2, moa::clock::now());
  };
  CHECK(say(~std::uint64_t(0)) == 1000);
  CHECK(say(7) == 7);
  CHECK(say(0) == 0);
  CHECK(dev.counters().malformed == 0);
}

// --- keys: CURVE and the ZAP allow-list ------------------------------------------------------

namespace {

// A folder of its own under the test's log folder, empty.
std::string fresh_folder(const std::string& name) {
  const auto dir = std::string(MOA_TEST_LOG_DIR) + "/" + name + "-" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// The keys of a keyed network: devices d0..d(n-1), an allowed client, and a stranger.
struct keyring {
  std::vector<moa::net::key_pair> devices;
  moa::net::key_pair client = moa::net::generate_key_pair();
  moa::net::key_pair stranger = moa::net::generate_key_pair();
  explicit keyring(std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) devices.push_back(moa::net::generate_key_pair());
  }
  moa::net::zmq_security security(std::size_t i) const {
    moa::net::zmq_security s;
    s.keys = devices[i];
    for (const auto& d : devices) s.device_keys.push_back(d.public_key);
    s.client_keys = {client.public_key};
    return s;
  }
};

// A DEALER speaking CURVE with `own` to the device holding `server`, with routing id `id`
// (empty: libzmq's own).
zmq::socket_t curve_dealer(zmq::context_t& ctx, const moa::net::key_pair& own,
                           const std::string& server, const std::string& address,
                           const std::string& id = {}) {
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  if (!id.empty()) s.set(zmq::sockopt::routing_id, id);
  moa::net::curve_client(s, own, server);
  s.connect(address);
  return s;
}

// The next result on `s` within `limit` (empty text and error "(none)" if none came).
moa::net::wire::envelope next_result(zmq::socket_t& s, std::chrono::milliseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    zmq::pollitem_t items[] = {{s.handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, 1, 20ms);
    zmq::message_t m;
    while (s.recv(m, zmq::recv_flags::dontwait)) {
      auto d = moa::net::wire::decode(m.to_string_view());
      if (d.message && d.message->type == moa::net::wire::kind::result) return *d.message;
    }
  }
  moa::net::wire::envelope none;
  none.error = "(none)";
  return none;
}

void send_envelope(zmq::socket_t& s, moa::net::wire::envelope e) {
  const auto bytes = moa::net::wire::encode(e);
  s.send(zmq::buffer(bytes), zmq::send_flags::dontwait);
}

}  // namespace

TEST_CASE("Network.key_files") {
  using namespace moa::net;
  REQUIRE(curve_available());
  const auto dir = fresh_folder("keyfiles");
  const auto keys = generate_key_pair();
  CHECK(is_z85_key(keys.public_key));
  CHECK(public_key_of(keys.secret_key) == keys.public_key);
  const auto [secret, pub] = save_key_pair(dir + "/d0", keys);
  const auto owner_only = std::filesystem::perms::owner_read | std::filesystem::perms::owner_write;
  CHECK((std::filesystem::status(secret).permissions() & std::filesystem::perms::all) ==
        owner_only);
  CHECK(load_key_pair(secret).secret_key == keys.secret_key);
  CHECK(load_key_pair(secret).public_key == keys.public_key);
  CHECK(load_public_keys(pub) == std::vector<std::string>{keys.public_key});
  CHECK_THROWS_AS(save_key_pair(dir + "/d0", generate_key_pair()), moa::invalid_argument);
  CHECK(load_key_pair(secret).secret_key == keys.secret_key);  // not overwritten
  // A secret key others may read is refused; so is a file that is not a key.
  std::filesystem::permissions(secret, std::filesystem::perms::group_read,
                               std::filesystem::perm_options::add);
  CHECK_THROWS_WITH_AS(load_key_pair(secret), doctest::Contains("chmod 600"),
                       moa::invalid_argument);
  { std::ofstream(dir + "/junk.pub") << "not a key\n"; }
  CHECK_THROWS_WITH_AS(load_public_keys(dir + "/junk.pub"), doctest::Contains("line 1"),
                       moa::invalid_argument);
  CHECK_THROWS_AS(load_public_keys(dir + "/missing.pub"), moa::invalid_argument);
  // An allow-list: a key a line, comments and blank lines skipped.
  const auto other = generate_key_pair();
  {
    std::ofstream(dir + "/list") << "# devices\n"
                                 << keys.public_key << "\n\n"
                                 << other.public_key << "\n";
  }
  CHECK(load_public_keys(dir + "/list").size() == 2);
  CHECK(is_loopback_endpoint("tcp://127.0.0.1:5550"));
  CHECK(is_loopback_endpoint("tcp://localhost:1"));
  CHECK(is_loopback_endpoint("ipc:///tmp/x"));
  CHECK(!is_loopback_endpoint("tcp://127.0.0.1.example.com:1"));
  CHECK(!is_loopback_endpoint("tcp://*:5550"));
  CHECK(!is_loopback_endpoint("tcp://10.0.0.7:5550"));
}

// Identity is the key the connection proved (the ZAP user id), not the routing id or `from`.
TEST_CASE("Network.zmq_device_identity_is_the_key") {
  using namespace moa::net::wire;
  const keyring keys(3);
  moa::net::zmq_device_options opt;
  opt.index = 0;
  opt.addresses = ipc_addresses(3);
  opt.log = nullptr;
  SUBCASE("no keys and no plain text: the device refuses to start") {
    CHECK_THROWS_WITH_AS(
        moa::net::zmq_device<moa::uniform_gossip>(slow("d0", 0), moa::uniform_gossip{2}, opt),
        doctest::Contains("plain text explicitly"), moa::invalid_argument);
  }
  SUBCASE("plain text off loopback: refused") {
    opt.security.insecure_plaintext = true;
    opt.bind = "tcp://*:5550";
    CHECK_THROWS_WITH_AS(
        moa::net::zmq_device<moa::uniform_gossip>(slow("d0", 0), moa::uniform_gossip{2}, opt),
        doctest::Contains("loopback only"), moa::invalid_argument);
  }
  SUBCASE("a key pair that is not the listed one: refused") {
    opt.security = keys.security(1);
    CHECK_THROWS_AS(
        moa::net::zmq_device<moa::uniform_gossip>(slow("d0", 0), moa::uniform_gossip{2}, opt),
        moa::invalid_argument);
  }
  SUBCASE("with keys") {
    opt.security = keys.security(0);
    moa::net::zmq_device<moa::uniform_gossip> dev(slow("d0", 0), moa::uniform_gossip{2}, opt);
    envelope ping;
    ping.type = kind::ping;
    ping.from = 1;
    // A client claiming device 1 (routing id "d1" and all) is not device 1.
    CHECK(dev.handle("d1", "client", encode(ping)));
    CHECK(dev.counters().malformed == 1);
    CHECK(dev.handle("x", "d1", encode(ping)));  // device 1's key: its ping counts
    CHECK(dev.counters().malformed == 1);
    // An answer forged by device 2 for a call device 1 would hold: dropped.
    auto forged_answer = forged(kind::answer, 77, 0, 1);
    forged_answer.from = 1;
    CHECK(dev.handle("x", "d2", encode(forged_answer)));
    CHECK(dev.counters().malformed == 2);
    // `stop`, `stats` and `submit` need a client key: a device's key is not one.
    CHECK(dev.handle("x", "d1", encode({.type = kind::stop})));
    CHECK(dev.handle("x", "d1", encode({.type = kind::stats})));
    CHECK(dev.counters().dropped == 2);
    CHECK(!dev.handle("x", "client", encode({.type = kind::stop})));  // a client's stops it
  }
}

TEST_CASE("Network.keyed_devices_refuse_strangers_and_squatters" * doctest::timeout(60)) {
  using namespace moa::net::wire;
  zmq::context_t ctx(1);
  const keyring keys(3);
  const std::vector<std::string> addresses = ipc_addresses(3);
  std::vector<moa::any_backend> models;
  for (int i = 0; i < 3; ++i) models.push_back(slow("d" + std::to_string(i), 1));
  std::vector<moa::net::zmq_security> security;
  for (std::size_t i = 0; i < 3; ++i) security.push_back(keys.security(i));
  // Device 1 starts late: a squatter has connected to device 0 as "d1" by then.
  zmq::socket_t squatter =
      curve_dealer(ctx, keys.client, keys.devices[0].public_key, addresses[0], "d1");
  envelope ping;
  ping.type = kind::ping;
  ping.from = 1;
  send_envelope(squatter, ping);
  zmq_cluster cluster(addresses, std::move(models), moa::any_aggregator{},
                      [&](moa::net::zmq_device_options& o) {
                        o.security = security[o.index];
                        o.dead_after = 1000ms;
                      });
  std::this_thread::sleep_for(300ms);
  // A plain-text socket, and a stranger's key, get no handshake at all.
  zmq::socket_t plain(ctx, zmq::socket_type::dealer);
  plain.set(zmq::sockopt::linger, 0);
  plain.connect(addresses[0]);
  send_envelope(plain, {.type = kind::stop});
  zmq::socket_t stranger =
      curve_dealer(ctx, keys.stranger, keys.devices[0].public_key, addresses[0]);
  send_envelope(stranger, {.type = kind::stop});
  send_envelope(stranger, {.type = kind::stats});
  // The squatter's forged answer and calls claiming device 1.
  send_envelope(squatter, forged(kind::answer, 5, 0, 1));
  auto call = forged(kind::call, 5, 1, 1);
  call.from = 1;
  send_envelope(squatter, call);
  std::this_thread::sleep_for(200ms);

  // The allowed client: prompts at every device answered, with device 1's calls served by the
  // real device 1 (the squatter took nothing from it).
  zmq::socket_t good = curve_dealer(ctx, keys.client, keys.devices[0].public_key, addresses[0]);
  for (int i = 0; i < 5; ++i) {
    envelope e;
    e.type = kind::submit;
    e.tag = "k" + std::to_string(i);
    e.messages = {{moa::role::user, "q"}};
    send_envelope(good, e);
    const auto r = next_result(good, 10s);
    CHECK_MESSAGE(r.error.empty(), r.error);
    CHECK(r.text == "final of d0");
    CHECK(r.missing == 0);
    bool d1_served = false;
    for (const auto& c : r.trace) d1_served = d1_served || (c.backend == 1 && c.ok());
    CHECK(d1_served);
  }
  send_envelope(good, {.type = kind::stats});
  const auto stats = next_result(good, 5s);
  REQUIRE(stats.tag == "stats");
  const auto j = nlohmann::json::parse(stats.text);
  CHECK(j["unauthenticated"].get<int>() >= 1);  // the stranger's handshake
  CHECK(j["malformed"].get<int>() >= 3);        // the squatter's ping, answer and call
  CHECK(j["dead_peers"].get<int>() == 0);
  CHECK(j["complete"].get<int>() == 5);
  CHECK(next_result(stranger, 200ms).error == "(none)");  // nothing for the stranger
}

#ifdef MOA_CLI_PROGRAM
namespace {

// Runs a program to its end (at most `limit`); its exit code (-1: a signal or over the limit),
// stdout in `out`.
int run_to_end(const std::vector<std::string>& args, std::string& out,
               std::chrono::milliseconds limit = 60s) {
  static int runs = 0;
  const auto path = std::string(MOA_TEST_LOG_DIR) + "/run" + std::to_string(::getpid()) + "-" +
                    std::to_string(runs++);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, (path + ".out").c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, (path + ".err").c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  REQUIRE(rc == 0);
  const int status = reap_status(pid, limit);
  if (status == -1) {
    ::kill(pid, SIGKILL);
    reap(pid, 5s);
  }
  out = read_file(path + ".out") + read_file(path + ".err");
  return status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

// What README.md and docs/NETWORK.md show: keygen, three keyed devices, prompts with moa submit,
// strangers refused, stop with SIGTERM.
TEST_CASE("Network.keyed_processes_answer_moa_submit" * doctest::timeout(180)) {
  zmq::context_t ctx(1);
  const std::string moa = MOA_CLI_PROGRAM;
  const auto dir = fresh_folder("keys");
  std::string out;
  for (const char* name : {"d0", "d1", "d2", "client", "stranger"})
    REQUIRE(run_to_end({moa, "keygen", "--out", dir + "/" + name}, out) == 0);
  CHECK(run_to_end({moa, "keygen", "--out", dir + "/d0"}, out) == 2);  // never overwrites
  CHECK(out.find("exists") != std::string::npos);
  const std::vector<std::string> addresses = loopback_addresses(ctx, 3);
  const std::string peers_keys = dir + "/d0.pub," + dir + "/d1.pub," + dir + "/d2.pub";
  std::vector<process> devices;
  for (std::size_t i = 0; i < 3; ++i)
    devices.push_back(spawn(
        {MOA_DEVICE_PROGRAM, "device", "--index", std::to_string(i), "--peers", join(addresses),
         "--key", dir + "/d" + std::to_string(i) + ".key", "--peers-keys", peers_keys,
         "--clients-keys", dir + "/client.pub", "--alpha-ms", "1", "--dead-after-ms", "2000"},
        std::string(MOA_TEST_LOG_DIR) + "/keyed" + std::to_string(i) + ".log"));
  std::this_thread::sleep_for(500ms);
  const auto submit = [&](std::size_t i, const std::string& key,
                          const std::vector<std::string>& more) {
    std::vector<std::string> args = {moa,
                                     "submit",
                                     "--device",
                                     addresses[i],
                                     "--key",
                                     dir + "/" + key + ".key",
                                     "--server-key",
                                     dir + "/d" + std::to_string(i) + ".pub",
                                     "--timeout-ms",
                                     "20000"};
    args.insert(args.end(), more.begin(), more.end());
    return run_to_end(args, out);
  };
  for (std::size_t i = 0; i < 3; ++i) {
    REQUIRE(submit(i, "client",
                   {"-p", "why is the sky blue?", "-p", "and the sea?", "--format", "json"}) == 0);
    const auto j = nlohmann::json::parse(out.substr(0, out.rfind('}') + 1));
    REQUIRE(j["results"].size() == 2);
    for (const auto& r : j["results"]) {
      CHECK(r["status"] == "ok");
      CHECK(r["text"].get<std::string>().find("d" + std::to_string(i)) != std::string::npos);
      CHECK(r["trace"].size() == 7);  // (k + 1) M + 1 calls
    }
  }
  // A stranger's key cannot submit, read stats or stop; a device's key is not a client's.
  CHECK(submit(0, "stranger", {"-p", "hi"}) == 3);
  CHECK(out.find("refused this client's key") != std::string::npos);
  CHECK(submit(0, "stranger", {"--stats"}) == 3);
  CHECK(submit(0, "stranger", {"--stop"}) == 3);
  CHECK(submit(0, "d1", {"--stop"}) == 3);
  CHECK(out.find("not a client key") != std::string::npos);
  // Plain text to a keyed device: no handshake, no answer.
  CHECK(run_to_end({moa, "submit", "--device", addresses[0], "--insecure-plaintext", "--stats",
                    "--timeout-ms", "1000"},
                   out) == 4);
  REQUIRE(submit(0, "client", {"--stats"}) == 0);
  const auto stats = nlohmann::json::parse(out.substr(0, out.rfind('}') + 1));
  CHECK(stats["unauthenticated"].get<int>() >= 3);
  CHECK(stats["dropped"].get<int>() >= 1);
  CHECK(stats["complete"].get<int>() == 2);
  // The allowed client stops device 2; SIGTERM stops the others; all exit 0.
  CHECK(submit(2, "client", {"--stop"}) == 0);
  for (std::size_t i = 0; i < 2; ++i) ::kill(devices[i].pid, SIGTERM);
  for (auto& d : devices) {
    const int status = reap_status(d.pid, 15s);
    CHECK((status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0));
    if (status == -1) ::kill(d.pid, SIGKILL);
    d.pid = -1;
  }
  // Plain text must be asked for, and then only on loopback.
  CHECK(run_to_end({MOA_DEVICE_PROGRAM, "device", "--index", "0", "--peers", join(addresses)},
                   out) == 2);
  CHECK(out.find("--insecure-plaintext") != std::string::npos);
  CHECK(run_to_end({MOA_DEVICE_PROGRAM, "device", "--insecure-plaintext", "--index", "0", "--peers",
                    "tcp://10.0.0.1:5550,tcp://10.0.0.2:5550", "-k", "1"},
                   out) == 2);
  CHECK(out.find("loopback only") != std::string::npos);
}
// moa device --adaptive, three processes: the first prompt of a burst takes the best layout (no
// load seen yet), and with a prior service time of a minute a burst is over capacity, so the
// rest are refused with the typed reason (exit 5), counted in --stats and /metrics, while every
// admitted prompt is answered. Spaced prompts at a tiny prior keep the best layout. The burst
// does not depend on the machine's speed (it arrives in milliseconds against a minute per call);
// the spaced prompts keep a wide margin (about 0.03 utilisation per ms of a call's latency).
TEST_CASE("Network.adaptive_devices_choose_layouts_and_refuse" * doctest::timeout(120)) {
  zmq::context_t ctx(1);
  const std::string moa = MOA_CLI_PROGRAM;
  std::string out;
  const auto network = [&](const std::string& name, const std::string& prior,
                           const std::string& alpha, int metrics_port) {
    const std::vector<std::string> addresses = loopback_addresses(ctx, 3);
    std::vector<process> devices;
    for (std::size_t i = 0; i < 3; ++i) {
      std::vector<std::string> args = {MOA_DEVICE_PROGRAM,
                                       "device",
                                       "--insecure-plaintext",
                                       "--index",
                                       std::to_string(i),
                                       "--peers",
                                       join(addresses),
                                       "--alpha-ms",
                                       alpha,
                                       "--adaptive",
                                       "--layouts",
                                       "2x2,1x1,1x0",
                                       "--warmup-prompts",
                                       "0",
                                       "--rate-window",
                                       "60000",
                                       "--prior-service-ms",
                                       prior,
                                       "--dead-after-ms",
                                       "5000"};
#ifdef MOA_DEVICE_METRICS
      if (i == 0 && metrics_port > 0) {
        args.push_back("--metrics");
        args.push_back("127.0.0.1:" + std::to_string(metrics_port));
      }
#else
      (void)metrics_port;
#endif
      devices.push_back(
          spawn(args, std::string(MOA_TEST_LOG_DIR) + "/" + name + std::to_string(i) + ".log"));
    }
    return std::make_pair(addresses, devices);
  };
  const auto stop = [](std::vector<process>& devices) {
    for (auto& d : devices) ::kill(d.pid, SIGTERM);
    for (auto& d : devices) {
      const int status = reap_status(d.pid, 15s);
      CHECK((status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0));
      if (status == -1) ::kill(d.pid, SIGKILL);
    }
  };
  const auto parse = [](const std::string& text) {
    return nlohmann::json::parse(text.substr(0, text.rfind('}') + 1));
  };

  const int http = free_port(ctx);
  auto [slow, slow_devices] = network("adaptive_slow", "60000", "100", http);
  std::this_thread::sleep_for(500ms);
  std::vector<std::string> args = {
      moa,        "submit", "--device",     slow[0], "--insecure-plaintext",
      "--format", "json",   "--timeout-ms", "30000"};
  constexpr int burst = 8;
  for (int i = 0; i < burst; ++i) {
    args.push_back("-p");
    args.push_back("question " + std::to_string(i));
  }
  CHECK(run_to_end(args, out) == 5);
  const auto j = parse(out);
  REQUIRE(j["results"].size() == burst);
  const auto& first = j["results"][0];
  CHECK(first["status"] == "ok");
  CHECK(first["layout"]["layers"] == 2);
  CHECK(first["layout"]["fanout"] == 2);
  CHECK(first["layout"]["reason"] == "held");
  CHECK(first["layout"]["why"].get<std::string>().rfind("M=2 k=2 held", 0) == 0);
  CHECK(first["trace"].size() == 7);  // (k + 1) M + 1 calls
  int refused = 0;
  for (const auto& r : j["results"]) {
    if (r["status"] == "over_capacity") {
      ++refused;
      CHECK(r["refusal"] == "over_capacity");
      CHECK(r["layout"]["reason"] == "over_capacity");
      CHECK(r["error"].get<std::string>().find("over capacity") != std::string::npos);
      CHECK(r["trace"].empty());
    } else {  // admitted: answered, never dropped
      CHECK(r["status"] == "ok");
      CHECK(!r["text"].get<std::string>().empty());
      const auto layers = r["layout"]["layers"].get<std::size_t>();
      const auto fanout = r["layout"]["fanout"].get<std::size_t>();
      CHECK(r["trace"].size() == (fanout + 1) * layers + 1);
    }
  }
  CHECK(refused >= burst - 3);
  REQUIRE(run_to_end({moa, "submit", "--device", slow[0], "--insecure-plaintext", "--stats"},
                     out) == 0);
  const auto stats = parse(out);
  CHECK(stats["over_capacity"] == refused);
  CHECK(stats["refused_prompts"] == refused);
  CHECK(stats["adaptive"]["refused"] == refused);
  CHECK(stats["complete"] == burst - refused);
  CHECK(stats["adaptive"]["admitted"]["2x2"].get<int>() >= 1);
#ifdef MOA_DEVICE_METRICS
  std::this_thread::sleep_for(200ms);  // the snapshot /metrics reads is published every 50 ms
  const auto metrics = parse_prometheus(http_get(http, "/metrics").second);
  CHECK(metrics.at("moa_device_prompts_total{device=\"0\",outcome=\"over_capacity\"}") == refused);
#endif
  stop(slow_devices);

  // A tiny prior, prompts one at a time: the best layout for each.
  auto [fast, fast_devices] = network("adaptive_fast", "0.001", "1", 0);
  std::this_thread::sleep_for(500ms);
  for (int i = 0; i < 3; ++i) {
    // Spaced, so the estimated rate stays far below any layout's limit even on a slow machine.
    std::this_thread::sleep_for(300ms);
    REQUIRE(run_to_end({moa, "submit", "--device", fast[1], "--insecure-plaintext", "--format",
                        "json", "--timeout-ms", "30000", "-p", "one at a time"},
                       out) == 0);
    const auto one = parse(out)["results"][0];
    CHECK(one["layout"]["layers"] == 2);
    CHECK(one["layout"]["fanout"] == 2);
    CHECK(one["trace"].size() == 7);
  }
  stop(fast_devices);
}

#endif

// A device network as one backend (moa/net/zmq_client.hpp): sync and concurrent calls answer
// with the origin's aggregate; a deadline, a stop token and a device nobody serves each end a
// call with its typed error, never an answer and never a hang.
TEST_CASE("Network.a_device_network_is_a_backend" * doctest::timeout(60)) {
  const std::vector<std::string> addresses = ipc_addresses(2);
  std::vector<moa::any_backend> models;
  models.push_back(slow("d0", 0));
  models.push_back(slow("d1", 300));  // d0's proposer call to d1 takes 300 ms
  zmq_cluster cluster(addresses, std::move(models), moa::any_aggregator{});
  moa::net::device_backend network({.device = addresses[0], .insecure_plaintext = true}, 20s,
                                   "edge");
  CHECK(network.name() == "edge");
  const auto ask = [](std::string text) {
    return moa::request{.messages = {{moa::role::user, std::move(text)}}};
  };
  CHECK(moa::generate(network, ask("hi")).text == "final of d0");

  std::vector<std::string> answers(8);
  {
    std::vector<std::jthread> callers;
    for (std::size_t i = 0; i < answers.size(); ++i)
      callers.emplace_back(
          [&, i] { answers[i] = moa::generate(network, ask("q" + std::to_string(i))).text; });
  }
  for (const auto& a : answers) CHECK(a == "final of d0");

  auto late = ask("late");
  late.deadline = moa::clock::now() + 50ms;  // before d1's 300 ms proposer call ends
  CHECK_THROWS_AS(moa::generate(network, late), moa::timeout_error);

  std::stop_source stop;
  auto cancelled = ask("cancelled");
  cancelled.stop = stop.get_token();
  std::jthread canceller([&] {
    std::this_thread::sleep_for(50ms);
    stop.request_stop();
  });
  CHECK_THROWS_AS(moa::generate(network, cancelled), moa::cancelled_error);

  moa::net::device_backend nobody({.device = ipc_addresses(1)[0], .insecure_plaintext = true},
                                  200ms);
  CHECK(nobody.name().rfind("device ipc://", 0) == 0);
  try {
    (void)moa::generate(nobody, ask("anyone?"));
    FAIL("a device nobody serves answered");
  } catch (const moa::timeout_error& e) {
    CHECK(std::string(e.what()).find("unreachable") != std::string::npos);
  }

  CHECK_THROWS_AS(
      moa::net::zmq_client({.device = "tcp://10.1.2.3:5550", .insecure_plaintext = true}),
      moa::invalid_argument);  // plain text beyond loopback
  CHECK_THROWS_AS(moa::net::zmq_client({.device = "http://127.0.0.1:1"}), moa::invalid_argument);
  CHECK_THROWS_AS(moa::net::zmq_client({.device = addresses[0]}), moa::invalid_argument);  // keys?
}

// A roster's device model: its keys read beside the roster, checked when the backend is made.
TEST_CASE("Network.roster_device_models") {
  namespace fs = std::filesystem;
  const fs::path dir =
      fs::temp_directory_path() / ("moa-roster-device-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  (void)moa::net::save_key_pair(dir / "client", moa::net::generate_key_pair());
  (void)moa::net::save_key_pair(dir / "d0", moa::net::generate_key_pair());
  {
    std::ofstream(dir / "roster.json")
        << R"({"models": {"edge": {"kind": "device", "endpoint": "tcp://127.0.0.1:1",
               "key_file": "client.key", "server_key_file": "d0.pub", "timeout_ms": 1000}}})";
  }
  const auto roster = moa::config::load_roster((dir / "roster.json").string());
  const auto& m = roster.model("edge");
  CHECK(m.kind == "device");
  CHECK(m.key_file == (dir / "client.key").string());  // beside the roster, not the cwd
  const auto options = moa::config::to_client_options(m);
  CHECK(options.keys->public_key == moa::net::load_public_keys(dir / "client.pub")[0]);
  CHECK(options.server_key == moa::net::load_public_keys(dir / "d0.pub")[0]);
  CHECK(moa::config::make_device_backend(m).name() == "edge");

  auto missing = m;
  missing.key_file = (dir / "nobody.key").string();
  try {
    (void)moa::config::make_device_backend(missing);
    FAIL("a missing key file was accepted");
  } catch (const moa::config::config_error& e) {
    CHECK(std::string(e.what()).find("models.edge.key_file") != std::string::npos);
  }
  fs::permissions(dir / "client.key", fs::perms::group_read, fs::perm_options::add);
  CHECK_THROWS_AS(moa::config::make_device_backend(m), moa::config::config_error);

  const auto bad = [](const char* text) {
    CHECK_THROWS_AS(moa::config::parse_roster(nlohmann::json::parse(text)),
                    moa::config::config_error);
  };
  bad(R"({"models": {"d": {"kind": "device"}}})");                                   // no endpoint
  bad(R"({"models": {"d": {"kind": "device", "endpoint": "tcp://127.0.0.1:1"}}})");  // no keys
  bad(R"({"models": {"d": {"kind": "device", "endpoint": "tcp://h:1", "insecure_plaintext": true,
          "key_file": "k"}}})");                   // keys and plain text
  bad(R"({"models": {"d": {"kind": "device", "endpoint": "tcp://h:1", "insecure_plaintext": true,
          "temperature": 0.1}}})");                // an OpenAI setting
  bad(R"({"models": {"o": {"key_file": "k"}}})");  // a device setting on an OpenAI model
  fs::remove_all(dir);
}
