// SPDX-License-Identifier: MIT
// Integration tests of moa/backends/openai.hpp against real llama.cpp servers running a tiny
// random-weight model (scripts/llama-server.sh builds both). Each test starts its own servers on
// free 127.0.0.1 ports and stops them by pid. Random weights give garbage text, so the tests
// assert structure: statuses, JSON shape, token counts (fixed seed, ignore_eos), stream order,
// [DONE], concurrency, a MoA end to end, and failures (a server killed mid-run, a bad request).
//
// Without the server binary every test exits with 77, which ctest reports as skipped.
#include <doctest/doctest.h>

#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <set>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <moa/backends/openai.hpp>
#include <moa/exec/async.hpp>
#include <moa/pipeline.hpp>

#include "openai_replay.hpp"

extern char** environ;

using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

fs::path llama_dir() {
  if (const char* d = std::getenv("MOA_LLAMA_DIR"); d && *d) return d;
  if (std::string_view(MOA_LLAMA_DIR).size() > 0) return MOA_LLAMA_DIR;
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  const char* home = std::getenv("HOME");
  const fs::path cache = xdg && *xdg ? fs::path(xdg) : fs::path(home ? home : "/tmp") / ".cache";
  return cache / "moa" / "llama-3.22.1";
}

// Skips the test (ctest SKIP_RETURN_CODE 77) when no server was built, and says why.
void require_llama() {
  const auto dir = llama_dir();
  if (fs::exists(dir / "bin" / "llama-server") && fs::exists(dir / "tiny.gguf")) return;
  if (const char* required = std::getenv("MOA_LLAMA_REQUIRED"); required && *required == '1')
    FAIL("no llama-server in " << dir.string() << " although MOA_LLAMA_REQUIRED=1");
  std::cout << "SKIPPED: no llama-server in " << dir.string()
            << "; build it with scripts/llama-server.sh build (or set MOA_LLAMA_DIR)\n"
            << std::flush;
  std::_Exit(77);
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

bool healthy(int port) {
  CURL* c = curl_easy_init();
  const std::string url = "http://127.0.0.1:" + std::to_string(port) + "/health";
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 500L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  long status = 0;
  if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(c);
  return status == 200;
}

/// A llama-server child process on 127.0.0.1, stopped by pid when destroyed.
class llama_server {
 public:
  explicit llama_server(int slots = 4, int context = 512) {
    require_llama();
    const auto dir = llama_dir();
    for (int tries = 0; tries < 3 && pid_ <= 0; ++tries) {
      port_ = free_port();
      std::vector<std::string> args = {
          (dir / "bin" / "llama-server").string(), "-m", (dir / "tiny.gguf").string(), "--host",
          "127.0.0.1", "--port", std::to_string(port_), "--alias", "moa-tiny", "-c",
          std::to_string(context), "-np", std::to_string(slots), "-t", "1",
          // One HTTP thread per kept-alive client (docs/HTTP.md).
          "--threads-http", "32", "--log-disable"};
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      posix_spawn_file_actions_t fa;
      posix_spawn_file_actions_init(&fa);
      posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
      posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
      pid_t pid = 0;
      const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
      posix_spawn_file_actions_destroy(&fa);
      REQUIRE_MESSAGE(rc == 0, "cannot start " << args[0]);
      // Bounded wait for /health: 100 x 50 ms.
      for (int i = 0; i < 100; ++i) {
        if (healthy(port_)) {
          pid_ = pid;
          break;
        }
        if (::waitpid(pid, nullptr, WNOHANG) == pid) break;  // died (port taken?): try another
        std::this_thread::sleep_for(50ms);
      }
      if (pid_ <= 0) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
      }
    }
    REQUIRE_MESSAGE(pid_ > 0, "llama-server did not become healthy");
  }
  llama_server(const llama_server&) = delete;
  llama_server& operator=(const llama_server&) = delete;
  ~llama_server() { stop(SIGTERM); }

  /// Stops the server: SIGTERM then, after 5 s, SIGKILL; or SIGKILL at once.
  void stop(int sig = SIGKILL) {
    if (pid_ <= 0) return;
    ::kill(pid_, sig);
    for (int i = 0; i < 100 && sig != SIGKILL; ++i) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(50ms);
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  [[nodiscard]] std::string base_url() const {
    return "http://127.0.0.1:" + std::to_string(port_) + "/v1";
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
};

moa::openai_options tiny(const llama_server& s, std::string name = "llama") {
  moa::openai_options o;
  o.base_url = s.base_url();
  o.name = std::move(name);
  o.extra = {{"ignore_eos", true}};  // exact token counts from a random model
  o.retry.initial_backoff = 10ms;
  o.retry.max_backoff = 50ms;
  return o;
}

moa::request prompt(int max_tokens = 8, std::uint64_t seed = 7) {
  auto r = moa::make_request("Why is the sky blue?");
  r.sampling.max_tokens = max_tokens;
  r.sampling.seed = seed;
  r.sampling.temperature = 0.8;
  return r;
}

}  // namespace

TEST_SUITE("llama") {
  TEST_CASE("Llama.completion_and_stream_structure" * doctest::timeout(120)) {
    llama_server server;
    moa::openai_backend b(tiny(server));
    const auto r = b.generate(prompt());
    CHECK_FALSE(r.text.empty());
    CHECK(r.usage.completion_tokens == 8);
    CHECK(r.usage.prompt_tokens > 0);
    CHECK(r.finish == moa::finish_reason::length);
    CHECK(r.model == "moa-tiny");

    std::vector<std::string> chunks;
    auto cb = [&](std::string_view t) { chunks.emplace_back(t); };
    const auto s = b.generate_stream(prompt(), moa::token_callback(cb));
    CHECK(s.usage.completion_tokens == 8);  // the final usage chunk
    CHECK(s.finish == moa::finish_reason::length);
    CHECK(chunks.size() >= 1);
    CHECK(chunks.size() <= 8);  // incomplete UTF-8 is merged into the next chunk
    std::string joined;
    for (const auto& c : chunks) joined += c;
    CHECK(joined == s.text);
    CHECK(s.text == r.text);  // same seed, same tokens, streamed or not
    CHECK(s.timings.time_to_first_token > 0ns);
    CHECK(s.timings.time_to_first_token <= s.timings.generation);
  }

  TEST_CASE("Llama.raw_stream_is_ordered_and_ends_with_done" * doctest::timeout(120)) {
    llama_server server;
    const std::string body =
        moa::openai::build_request_body(prompt(6), "", true, {{"ignore_eos", true}});
    std::string raw;
    CURL* c = curl_easy_init();
    const std::string url = server.base_url() + "/chat/completions";
    curl_slist* h = curl_slist_append(nullptr, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(
        c, CURLOPT_WRITEFUNCTION, +[](char* d, size_t s, size_t n, void* out) {
          static_cast<std::string*>(out)->append(d, s * n);
          return s * n;
        });
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &raw);
    REQUIRE(curl_easy_perform(c) == CURLE_OK);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    CHECK(status == 200);

    std::vector<std::string> events;
    moa::openai::sse_parser sse;
    sse.feed(raw, [&](std::string_view d) { events.emplace_back(d); });
    CHECK_FALSE(sse.pending());
    REQUIRE(events.size() >= 4);  // role, content..., finish, usage, [DONE]
    CHECK(events.back() == "[DONE]");
    std::string id;
    int phase = 0;  // 0 role chunk, 1 content, 2 finish seen, 3 usage seen
    std::size_t content = 0;
    for (std::size_t i = 0; i + 1 < events.size(); ++i) {
      const auto j = nlohmann::json::parse(events[i]);
      CHECK(j["object"] == "chat.completion.chunk");
      if (id.empty()) id = j["id"];
      CHECK(j["id"] == id);  // one completion
      if (i == 0) {
        CHECK(j["choices"][0]["delta"]["role"] == "assistant");
        continue;
      }
      if (j["choices"].empty()) {  // the usage chunk comes last
        CHECK(phase == 2);
        CHECK(j["usage"]["completion_tokens"] == 6);
        phase = 3;
        continue;
      }
      const auto& choice = j["choices"][0];
      if (choice["finish_reason"].is_string()) {
        CHECK(choice["finish_reason"] == "length");
        CHECK(phase <= 1);
        phase = 2;
      } else {
        CHECK(phase <= 1);
        CHECK(choice["delta"]["content"].is_string());
        phase = 1;
        ++content;
      }
    }
    CHECK(phase == 3);
    CHECK(content >= 1);
    CHECK(content <= 6);
  }

  TEST_CASE("Llama.more_requests_than_slots_all_succeed" * doctest::timeout(180)) {
    llama_server server(4);
    moa::openai_backend b(tiny(server));
    constexpr int n = 12;
    std::atomic<int> ok{0};
    std::vector<std::string> errors(n);
    {
      std::vector<std::jthread> threads;
      for (int i = 0; i < n; ++i)
        threads.emplace_back([&, i] {
          try {
            const auto r = b.generate(prompt(16, static_cast<std::uint64_t>(i)));
            if (r.usage.completion_tokens == 16) ok.fetch_add(1);
          } catch (const std::exception& e) {
            errors[static_cast<std::size_t>(i)] = e.what();
          }
        });
    }
    for (const auto& e : errors) CHECK_MESSAGE(e.empty(), e);
    CHECK(ok.load() == n);
    CHECK(b.stats().attempts == n);  // the extra requests waited for a slot; none failed
    CHECK(b.stats().handles <= n);
  }

  TEST_CASE("Llama.moa_three_proposers_two_layers_end_to_end" * doctest::timeout(180)) {
    llama_server s0, s1, s2;
    using classic = moa::topology<moa::layers<2, moa::proposers<0, 1, 2>>, moa::aggregator<0>>;
    auto pipe = moa::make_pipeline<classic>(moa::openai_backend(tiny(s0, "llama-a")),
                                            moa::openai_backend(tiny(s1, "llama-b")),
                                            moa::openai_backend(tiny(s2, "llama-c")));
    auto req = prompt(12, 3);
    std::string streamed;
    moa::run_options opt;
    opt.on_token = [&](std::string_view t) { streamed += t; };
    const auto r = pipe.run(moa::concurrent_executor(3), req, opt);
    INFO(r.trace);
    REQUIRE(r.status == moa::run_status::ok);
    REQUIRE(r.trace.size() == 7);
    for (const auto& c : r.trace) {
      CHECK(c.ok());
      CHECK(c.usage.completion_tokens == 12);
      CHECK(c.usage.prompt_tokens > 0);
      CHECK(c.finish == moa::finish_reason::length);
    }
    // Later calls read the references: their prompts are longer than the first layer's.
    CHECK(r.trace[3].usage.prompt_tokens > r.trace[0].usage.prompt_tokens);
    CHECK(r.trace[6].references.size() == 3);
    CHECK(streamed == r.answer);  // the aggregator streamed
    const auto u = moa::openai::summarize_usage(r);
    REQUIRE(u.per_model.size() == 3);
    CHECK(u.per_model[0].model == "llama-a");
    CHECK(u.per_model[0].calls == 3);  // two proposals and the aggregation
    CHECK(u.per_model[0].usage.completion_tokens == 36);
    CHECK(u.per_model[1].usage.completion_tokens == 24);
    CHECK(u.total == r.usage);
    CHECK(r.usage.completion_tokens == 7 * 12);
  }

  TEST_CASE("Llama.context_budget_and_context_errors" * doctest::timeout(120)) {
    llama_server server;  // 4 slots of 128 tokens... padded to 256 each by llama.cpp
    moa::openai_backend b(tiny(server));
    SUBCASE("a prompt longer than the context is a context_length_error, not retried") {
      std::string words;
      for (int i = 0; i < 400; ++i) words += "word ";
      auto req = moa::make_request(words);
      req.sampling.max_tokens = 4;
      try {
        (void)b.generate(req);
        FAIL("no throw");
      } catch (const moa::context_length_error& e) {
        CHECK(e.status() == 400);
        CHECK(e.server_message().find("context") != std::string::npos);
        CHECK(e.attempts() == 1);
      }
      CHECK(b.stats().attempts == 1);
    }
    SUBCASE("the budget trims references so that the aggregation fits") {
      // Long proposals: 3 x 80 tokens of references plus the instructions exceed a 256-token
      // slot; a budget of 60 tokens makes the aggregation fit.
      using one = moa::topology<moa::layers<1, moa::proposers<0, 1, 2>>, moa::aggregator<3>>;
      auto agg = tiny(server, "aggregator");
      agg.extra["max_tokens"] = 8;
      auto pipe = moa::make_pipeline<one>(b, b, b, moa::openai_backend(agg));
      auto req = prompt(80, 5);
      moa::aggregation_prompt budgeted;
      budgeted.token_budget = 60;
      moa::run_options opt;
      const auto without = pipe.run(moa::concurrent_executor(3), req, opt);
      INFO(without.trace);
      CHECK(without.trace[3].status == moa::call_status::failed);
      CHECK(without.trace[3].error.find("does not fit the model's context") != std::string::npos);
      opt.prompt = &budgeted;
      const auto with = pipe.run(moa::concurrent_executor(3), req, opt);
      INFO(with.trace);
      CHECK(with.status == moa::run_status::ok);
      CHECK(with.trace[3].trimmed_tokens > 0);
    }
  }

  TEST_CASE("Llama.server_killed_mid_run" * doctest::timeout(180)) {
    SUBCASE("mid-stream: a typed stream_cut error, not retried") {
      llama_server server;
      moa::openai_backend b(tiny(server));
      std::size_t tokens = 0;
      auto cb = [&](std::string_view) {
        if (++tokens == 1) server.stop(SIGKILL);
      };
      try {
        (void)b.generate_stream(prompt(200), moa::token_callback(cb));
        FAIL("no throw");
      } catch (const moa::http_error& e) {
        CHECK(e.kind() == moa::http_failure::stream_cut);
        CHECK(e.attempts() == 1);
      }
      CHECK(tokens >= 1);
      CHECK(tokens < 200);
    }
    SUBCASE("between layers: quorum decides") {
      llama_server s0, s1, s2;
      using classic = moa::topology<moa::layers<2, moa::proposers<0, 1, 2>>, moa::aggregator<0>>;
      auto opt2 = tiny(s2, "llama-c");
      opt2.retry.max_attempts = 2;
      auto pipe = moa::make_pipeline<classic>(moa::openai_backend(tiny(s0, "llama-a")),
                                              moa::openai_backend(tiny(s1, "llama-b")),
                                              moa::openai_backend(opt2));
      moa::run_options opt;
      opt.quorum = 2;
      // Inline executor: calls run in plan order, so killing after call 2 (the last of layer 1)
      // is deterministic. The server is killed while the run goes on.
      opt.on_call = [&](const moa::call_record& c) {
        if (c.call == 2) s2.stop(SIGKILL);
      };
      const auto r = pipe.run(moa::inline_executor{}, prompt(8), opt);
      INFO(r.trace);
      CHECK(r.status == moa::run_status::ok);
      CHECK(r.trace[2].ok());
      CHECK(r.trace[5].status == moa::call_status::failed);
      CHECK(r.trace[5].error.find("no answer from the server") != std::string::npos);
      CHECK(r.trace[5].error.find("after 2 attempts") != std::string::npos);
      CHECK(r.trace[6].references.size() == 2);

      moa::run_options strict;
      strict.quorum = 3;
      const auto f = pipe.run(moa::inline_executor{}, prompt(8), strict);
      CHECK(f.status == moa::run_status::failed);
      CHECK(f.error.find("llama-c") != std::string::npos);
    }
  }

  TEST_CASE("Llama.bad_request_surfaces_the_server_error" * doctest::timeout(60)) {
    llama_server server;
    auto o = tiny(server);
    o.extra["max_tokens"] = "eight";
    moa::openai_backend b(o);
    try {
      (void)b.generate(prompt());
      FAIL("no throw");
    } catch (const moa::http_error& e) {
      CHECK(e.status() == 400);
      CHECK(e.kind() == moa::http_failure::status);
      CHECK(e.server_message().find("max_tokens") != std::string::npos);
      CHECK(e.server_type() == "invalid_request_error");
    }
    CHECK(b.stats().attempts == 1);
  }

  TEST_CASE("Llama.deadline_and_stop_end_a_long_generation" * doctest::timeout(60)) {
    llama_server server;
    moa::openai_backend b(tiny(server));
    auto req = prompt(220);
    req.deadline = moa::clock::now() + 20ms;
    const auto t0 = moa::clock::now();
    CHECK_THROWS_AS(b.generate(req), moa::timeout_error);
    CHECK(moa::clock::now() - t0 < 500ms);

    std::stop_source stop;
    auto req2 = prompt(220);
    req2.stop = stop.get_token();
    std::size_t tokens = 0;
    auto cb = [&](std::string_view) {
      if (++tokens == 2) stop.request_stop();
    };
    CHECK_THROWS_AS(b.generate_stream(req2, moa::token_callback(cb)), moa::cancelled_error);
    CHECK(tokens < 220);
    // The server is still healthy and serves the next call.
    CHECK(b.generate(prompt(4)).usage.completion_tokens == 4);
  }

  TEST_CASE("Llama.async_calls_share_one_io_thread" * doctest::timeout(180)) {
    // 12 asynchronous calls on 4 slots, all in flight at once on the one I/O thread; the same
    // seed gives the same tokens as the synchronous path; a stop ends a long generation.
    llama_server server(4);
    moa::openai_backend b(tiny(server));
    const auto want = b.generate(prompt(16, 0));
    constexpr std::size_t n = 12;
    const auto before = moa_test::thread_count();
    auto c = std::make_shared<moa_test::completions>(n);
    for (std::size_t i = 0; i < n; ++i)
      b.generate_async(prompt(16, i), moa::completion(c, static_cast<std::uint32_t>(i)));
    std::size_t peak = moa_test::thread_count();
    while (!c->wait_all(5ms)) peak = std::max(peak, moa_test::thread_count());
    CHECK(peak <= before + 2);
    std::set<std::thread::id> threads;
    for (std::size_t i = 0; i < n; ++i) {
      const auto& s = c->slots[i];
      CHECK(s.times == 1);
      if (s.error) CHECK_NOTHROW(c->rethrow(i));
      REQUIRE(s.answer.has_value());
      CHECK(s.answer->usage.completion_tokens == 16);
      CHECK(s.answer->finish == moa::finish_reason::length);
      CHECK(s.answer->model == "moa-tiny");
      threads.insert(s.thread);
    }
    CHECK(threads.size() == 1);
    CHECK(c->slots[0].answer->text == want.text);
    CHECK(b.stats().attempts == n + 1);

    std::stop_source stop;
    auto req = prompt(220);
    req.stop = stop.get_token();
    std::atomic<std::size_t> tokens{0};
    auto cb = [&](std::string_view) {
      if (tokens.fetch_add(1) + 1 == 2) stop.request_stop();
    };
    auto s = std::make_shared<moa_test::completions>(1);
    b.generate_stream_async(req, moa::token_callback(cb), moa::completion(s, 0));
    REQUIRE(s->wait_all(30s));
    CHECK_THROWS_AS(s->rethrow(0), moa::cancelled_error);
    CHECK(tokens.load() < 220);
    CHECK(b.generate(prompt(4)).usage.completion_tokens == 4);  // the server is still healthy
  }

  TEST_CASE("Llama.moa_on_the_async_executor" * doctest::timeout(180)) {
    llama_server s0, s1, s2;
    std::vector<moa::openai_backend> backends{moa::openai_backend(tiny(s0, "llama-a")),
                                              moa::openai_backend(tiny(s1, "llama-b")),
                                              moa::openai_backend(tiny(s2, "llama-c"))};
    std::vector<moa::backend_ref> sync;
    std::vector<moa::async_backend_ref> async;
    for (auto& b : backends) {
      sync.emplace_back(b, std::string(b.name()));
      async.emplace_back(b, std::string(b.name()));
    }
    const auto plan = moa::layered_topology{{{0, 1, 2}, {0, 1, 2}}, 0}.make_plan();
    const auto want = moa::concurrent_executor(3).execute(plan, sync, prompt(12, 3));
    moa::async_executor ex(2);
    const auto got = ex.execute_async(plan, async, prompt(12, 3)).get();
    INFO(got.trace);
    REQUIRE(got.status == moa::run_status::ok);
    REQUIRE(got.trace.size() == want.trace.size());
    for (std::size_t i = 0; i < got.trace.size(); ++i) {
      CHECK(got.trace[i].ok());
      CHECK(got.trace[i].usage.completion_tokens == 12);
      CHECK(got.trace[i].backend_name == want.trace[i].backend_name);
      CHECK(got.trace[i].references == want.trace[i].references);
    }
    CHECK(got.trace[6].references.size() == 3);
    CHECK(got.usage.completion_tokens == 7 * 12);
    CHECK(moa::openai::summarize_usage(got).per_model[0].calls == 3);
  }
}
