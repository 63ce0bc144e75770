// SPDX-License-Identifier: MIT
// The HTTP backend against a local llama-server (tiny random model), two figures:
//
// 1. client overhead: the same request (1 token, fixed seed) sent N times by moa::openai_backend
//    and by curl's command-line client in one invocation (so both reuse one connection), in the
//    same run; curl's own time_total per request against the wall time of generate(), which also
//    builds the JSON body and parses the answer. Medians and their ratio.
// 2. 32 concurrent requests over 4 server slots through a concurrent_executor of 32 threads: no
//    errors, and the process never has more threads than the executor's plus main and the
//    sampler (the client starts none).
//
// Needs a server: `bash tests/with_llama.sh 1 build/bench/bench/bench_openai` (see docs/HTTP.md),
// or MOA_ENDPOINTS=http://127.0.0.1:8080/v1 bench_openai.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <moa/backends/openai.hpp>
#include <moa/moa.hpp>

namespace {

using ms = std::chrono::duration<double, std::milli>;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

int threads_now() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  return -1;
}

// Runs curl's CLI once with the URL repeated n times; returns each request's time_total in ms.
std::vector<double> curl_cli(const std::string& url, const std::string& body, int n) {
  const std::string file = "/tmp/moa-bench-openai-body.json";
  std::ofstream(file) << body;
  std::string cmd = "curl -s -H 'Content-Type: application/json' --data-binary @" + file +
                    " -w '%{time_total}\\n'";
  for (int i = 0; i < n; ++i) cmd += " -o /dev/null " + url;
  std::vector<double> out;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    double s = 0;
    while (std::fscanf(p, "%lf", &s) == 1) out.push_back(s * 1000.0);
    ::pclose(p);
  }
  return out;
}

}  // namespace

int main() {
  const char* env = std::getenv("MOA_ENDPOINTS");
  if (!env || !*env) {
    std::cerr << "bench_openai: set MOA_ENDPOINTS to a llama-server base URL, or run it through "
                 "tests/with_llama.sh 1\n";
    return 2;
  }
  std::string base = env;
  base = base.substr(0, base.find(','));

  moa::openai_options o;
  o.base_url = base;
  o.extra = {{"ignore_eos", true}};
  moa::openai_backend backend(o);
  auto req = moa::make_request("Why is the sky blue?");
  req.sampling.max_tokens = 1;
  req.sampling.seed = 1;
  req.sampling.temperature = 0.0;
  const std::string body = moa::openai::build_request_body(req, "", false, o.extra);

  constexpr int n = 200;
  for (int i = 0; i < 20; ++i) (void)backend.generate(req);  // warm up: connection, prompt cache
  (void)curl_cli(backend.endpoint(), body, 20);
  // Interleave rounds so that drifts of the server hit both clients alike.
  std::vector<double> moa_ms, curl_ms;
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < n / 4; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      (void)backend.generate(req);
      moa_ms.push_back(ms(std::chrono::steady_clock::now() - t0).count());
    }
    const auto c = curl_cli(backend.endpoint(), body, n / 4);
    curl_ms.insert(curl_ms.end(), c.begin(), c.end());
  }
  const double m = median(moa_ms), c = median(curl_ms);
  std::printf("client overhead, %d requests of 1 token each, keep-alive, same server and body:\n",
              n);
  std::printf("  moa::openai_backend  median %.3f ms\n", m);
  std::printf("  curl CLI time_total  median %.3f ms (%zu requests)\n", c, curl_ms.size());
  std::printf("  ratio moa/curl       %.3f (%+.1f%%)\n", m / c, (m / c - 1.0) * 100.0);

  // 32 concurrent requests over the server's slots.
  constexpr std::size_t width = 32;
  std::vector<moa::any_backend> backends;
  backends.emplace_back(backend);  // copies share one connection pool
  // The sink is in-process: 32 references would not fit the tiny model's 256-token slot.
  backends.emplace_back(moa::synthetic_backend({.name = "sink"}));
  moa::plan p;
  const auto first = p.add_group({});
  std::vector<moa::call_id> layer;
  for (std::size_t i = 0; i < width; ++i)
    layer.push_back(p.add_call(0, first, 1, moa::call_role::proposer));
  p.add_call(1, p.add_group(layer), 2, moa::call_role::aggregator);
  p.seal();
  moa::runtime_pipeline pipe(std::move(backends), std::move(p));
  moa::concurrent_executor executor(width);
  moa::run_options opt;
  auto wide = req;
  wide.sampling.max_tokens = 4;
  std::atomic<bool> sampling{true};
  std::atomic<int> peak{0};
  std::thread sampler([&] {
    while (sampling.load()) {
      peak.store(std::max(peak.load(), threads_now()));
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  const int before = threads_now();
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = pipe.run(executor, wide, opt);
  const double took = ms(std::chrono::steady_clock::now() - t0).count();
  sampling.store(false);
  sampler.join();
  std::size_t failed = 0;
  for (const auto& call : r.trace) failed += call.ok() ? 0 : 1;
  const auto stats = backend.stats();
  std::printf("%zu concurrent requests over the server's slots: %.1f ms\n", width, took);
  std::printf("  status %s, failed calls %zu, attempts %llu, retries %llu, curl handle pairs %zu\n",
              std::string(moa::to_string(r.status)).c_str(), failed,
              static_cast<unsigned long long>(stats.attempts),
              static_cast<unsigned long long>(stats.retries), stats.handles);
  std::printf("  threads: %d before the run (main + executor + sampler), peak %d during it\n",
              before, peak.load());
  const bool ok = r.ok() && failed == 0 && peak.load() <= before;
  if (!ok) std::cout << r.trace;
  std::printf("%s\n", ok ? "bench_openai: OK" : "bench_openai: FAILED");
  return ok ? 0 : 1;
}
