// SPDX-License-Identifier: MIT
// moa serve's cost: what the HTTP server adds to a MoA run, and how soon a streamed token
// reaches the client. Every figure sits next to its baseline measured in the same run.
//
//   1. Zero-cost synthetic backends, a 2-layer MoA of 3 proposers (7 calls): the same layout run
//      in-process on the async executor vs through `moa serve` by libcurl clients (keep-alive),
//      at 1 and at 64 concurrent clients: per-request latency p50/p99 and requests/s; the added
//      latency is the difference of the p50s (the client's HTTP work included).
//      A GET /health row gives the HTTP floor (client, loopback and parser; no run).
//   2. Streaming: a backend that sleeps, stamps the moment it produces its first token and
//      streams it; the client stamps the moment that token's chunk arrives (one process, one
//      clock): first-token delay p50/p99.
//
// A small program rather than Google Benchmark fixtures: the figures are distributions over
// concurrent clients, which Benchmark's per-iteration timing does not give.
#include <curl/curl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <moa/config/roster.hpp>
#include <moa/serve/openai_server.hpp>
#include <nlohmann/json.hpp>

namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * double(v.size())))];
}

struct figures {
  double p50_us = 0, p99_us = 0, per_s = 0;
};

figures summarise(const std::vector<double>& us, double seconds) {
  return {percentile(us, 0.50), percentile(us, 0.99), double(us.size()) / seconds};
}

// `clients` threads, each issuing `each` requests through `one` (which returns when answered).
template <class One>
figures load(std::size_t clients, std::size_t each, const One& one) {
  std::vector<std::vector<double>> lat(clients);
  const auto t0 = steady::now();
  std::vector<std::thread> threads;
  for (std::size_t c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      auto session = one.open();
      for (std::size_t i = 0; i < each; ++i) {
        const auto s = steady::now();
        one.call(session);
        lat[c].push_back(std::chrono::duration<double, std::micro>(steady::now() - s).count());
      }
    });
  for (auto& t : threads) t.join();
  const double secs = std::chrono::duration<double>(steady::now() - t0).count();
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  return summarise(all, secs);
}

const std::string prompt = "Why is the sky blue?";

struct in_process {
  const moa::serve::served_layout& layout;
  const moa::async_executor& ex;
  [[nodiscard]] int open() const { return 0; }
  void call(int) const {
    const auto r = ex.execute(layout.plan, layout.refs, moa::make_request(prompt));
    if (!r.ok()) std::abort();
  }
};

std::size_t append(char* p, std::size_t, std::size_t n, void* out) {
  static_cast<std::string*>(out)->append(p, n);
  return n;
}

struct over_http {
  std::string url;
  std::string body;
  struct handle {
    CURL* c = curl_easy_init();
    curl_slist* h = curl_slist_append(nullptr, "Content-Type: application/json");
    std::string out;
    handle() = default;
    handle(const handle&) = delete;
    handle& operator=(const handle&) = delete;
    handle(handle&& o) noexcept : c(std::exchange(o.c, nullptr)), h(std::exchange(o.h, nullptr)) {}
    handle& operator=(handle&&) = delete;
    ~handle() {
      if (c) curl_easy_cleanup(c);
      if (h) curl_slist_free_all(h);
    }
  };
  [[nodiscard]] handle open() const {
    handle s;
    curl_easy_setopt(s.c, CURLOPT_URL, url.c_str());
    if (!body.empty()) curl_easy_setopt(s.c, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(s.c, CURLOPT_HTTPHEADER, s.h);
    curl_easy_setopt(s.c, CURLOPT_WRITEFUNCTION, append);
    curl_easy_setopt(s.c, CURLOPT_NOSIGNAL, 1L);
    return s;
  }
  void call(handle& s) const {
    s.out.clear();
    curl_easy_setopt(s.c, CURLOPT_WRITEDATA, &s.out);
    long status = 0;
    if (curl_easy_perform(s.c) != CURLE_OK) std::abort();
    curl_easy_getinfo(s.c, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) std::abort();
  }
};

// Sleeps, then stamps and streams its first token.
struct stamping_backend {
  std::atomic<std::int64_t>* stamp;
  moa::response generate_stream(const moa::request&, moa::token_callback on_token) const {
    std::this_thread::sleep_for(5ms);
    stamp->store(steady::now().time_since_epoch().count());
    on_token("first");
    on_token(" second");
    moa::response r;
    r.text = "first second";
    return r;
  }
  moa::response generate(const moa::request& r) const {
    auto ignore = [](std::string_view) {};
    return generate_stream(r, ignore);
  }
  [[nodiscard]] std::string_view name() const { return "stamping"; }
};

struct stream_state {
  std::string got;
  std::int64_t arrived = 0;
};

}  // namespace

int main(int argc, char** argv) {
  const std::size_t total = argc > 1 ? std::stoul(argv[1]) : 6400;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const auto roster = moa::config::parse_roster(nlohmann::json::parse(R"({
    "models": {"alpha": {"kind": "synthetic"}, "beta": {"kind": "synthetic"},
               "gamma": {"kind": "synthetic"}},
    "layouts": {"moa": {"layers": [["alpha", "beta", "gamma"], ["alpha", "beta", "gamma"]],
                        "aggregator": "alpha"}}})"));
  moa::serve::server_options opt;
  opt.port = 0;
  opt.io_threads = 2;
  opt.workers = 2;
  opt.max_in_flight = 1024;
  moa::serve::openai_server server(roster, moa::serve::synthetic_backends, opt);
  server.start();
  const auto& layout = *server.layouts().find("moa");
  moa::thread_pool pool(2);  // the same threads as the server's workers
  moa::async_executor ex(pool);
  const in_process local{layout, ex};
  const over_http remote{
      "http://127.0.0.1:" + std::to_string(server.port()) + "/v1/chat/completions",
      nlohmann::json{{"model", "moa"}, {"messages", {{{"role", "user"}, {"content", prompt}}}}}
          .dump()};

  std::printf("moa serve, zero-cost backends, 2-layer MoA x 3 proposers (7 calls a request)\n");
  std::printf("%-10s %8s %12s %12s %12s\n", "path", "clients", "p50 us", "p99 us", "req/s");
  for (std::size_t clients : {std::size_t(1), std::size_t(64)}) {
    const std::size_t each = std::max<std::size_t>(1, total / clients / (clients == 1 ? 4 : 1));
    load(clients, std::max<std::size_t>(1, each / 10), local);  // warm up
    load(clients, std::max<std::size_t>(1, each / 10), remote);
    const auto a = load(clients, each, local);
    const auto b = load(clients, each, remote);
    std::printf("%-10s %8zu %12.1f %12.1f %12.0f\n", "in-process", clients, a.p50_us, a.p99_us,
                a.per_s);
    std::printf("%-10s %8zu %12.1f %12.1f %12.0f\n", "serve", clients, b.p50_us, b.p99_us, b.per_s);
    std::printf(
        "  added by the server at %zu client(s): p50 %+.1f us, p99 %+.1f us; "
        "throughput x%.2f\n",
        clients, b.p50_us - a.p50_us, b.p99_us - a.p99_us, b.per_s / a.per_s);
    if (clients == 1) {
      // The HTTP floor: a round trip that runs nothing (GET /health), same client and server.
      const over_http health{"http://127.0.0.1:" + std::to_string(server.port()) + "/health", {}};
      const auto h = load(clients, each, health);
      std::printf("%-10s %8zu %12.1f %12.1f %12.0f   (HTTP round trip, no run)\n", "health",
                  clients, h.p50_us, h.p99_us, h.per_s);
    }
  }

  // Streaming: first-token delay, backend stamp to client arrival.
  std::atomic<std::int64_t> stamp{0};
  const auto solo = moa::config::parse_roster(nlohmann::json::parse(R"({"models": {"solo": {}}})"));
  moa::serve::openai_server streaming(
      solo,
      [&](const moa::config::model_spec& m) {
        return moa::serve::hold(stamping_backend{&stamp}, m.name);
      },
      opt);
  streaming.start();
  const auto url = "http://127.0.0.1:" + std::to_string(streaming.port()) + "/v1/chat/completions";
  const auto body = nlohmann::json{{"model", "solo"},
                                   {"stream", true},
                                   {"messages", {{{"role", "user"}, {"content", prompt}}}}}
                        .dump();
  std::vector<double> delays;
  for (int i = 0; i < 200; ++i) {
    stream_state st;
    CURL* c = curl_easy_init();
    curl_slist* h = curl_slist_append(nullptr, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(
        c, CURLOPT_WRITEFUNCTION, +[](char* p, std::size_t, std::size_t n, void* u) -> std::size_t {
          auto* s = static_cast<stream_state*>(u);
          s->got.append(p, n);
          if (s->arrived == 0 && s->got.find("\"first\"") != std::string::npos)
            s->arrived = steady::now().time_since_epoch().count();
          return n;
        });
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &st);
    if (curl_easy_perform(c) != CURLE_OK || st.arrived == 0) std::abort();
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    delays.push_back(double(st.arrived - stamp.load()) / 1e3);
  }
  std::printf(
      "\nstreaming first token, backend produced -> client received (200 requests):\n"
      "  p50 %.1f us, p99 %.1f us (target: under 1000 us)\n",
      percentile(delays, 0.5), percentile(delays, 0.99));
  server.stop();
  streaming.stop();
  curl_global_cleanup();
}
