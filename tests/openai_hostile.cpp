// SPDX-License-Identifier: MIT
// The HTTP backend against a hostile server (a local 127.0.0.1 socket, tests/openai_replay.hpp):
// invalid JSON, an endless stream, a stalled stream, a huge body, a connection cut mid-body, empty
// choices, bytes that are not UTF-8, a Retry-After far in the future, non-HTTP schemes and
// credentials in the URL. Every case ends in a typed error, in bounded time and bounded memory,
// and every message it leaves is valid UTF-8 without the credentials.
#include <doctest/doctest.h>

#include <chrono>
#include <cstddef>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <moa/backends/openai.hpp>
#include <moa/exec/async.hpp>
#include <moa/pipeline.hpp>

#include "openai_replay.hpp"

using namespace std::chrono_literals;
using moa_test::completions;

namespace {

moa::openai_options hostile(std::string url) {
  moa::openai_options o;
  o.base_url = std::move(url);
  o.retry.initial_backoff = 5ms;
  o.retry.max_backoff = 20ms;
  o.max_response_bytes = std::size_t{2} << 20;
  return o;
}

// Peak resident memory of this process in kB, after resetting the peak where the kernel allows
// it (then it is the peak since the reset).
std::size_t peak_rss_kb(bool reset = false) {
  if (reset) std::ofstream("/proc/self/clear_refs") << "5";
  std::ifstream in("/proc/self/status");
  std::string key;
  std::size_t value = 0;
  while (in >> key) {
    if (key == "VmHWM:") {
      in >> value;
      return value;
    }
    in.ignore(4096, '\n');
  }
  return 0;
}

// True when `s` serialises as JSON without complaint: what `moa run --format json` does with it.
bool valid_utf8(const std::string& s) {
  try {
    (void)nlohmann::json(s).dump();
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

template <class F>
moa::http_error caught_http_error(F&& f) {
  try {
    f();
  } catch (const moa::http_error& e) {
    return e;
  }
  FAIL("no http_error thrown");
  return moa::http_error({});
}

const std::string sse_head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n";
const std::string sse_event =
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n";

std::string many(const std::string& piece, std::size_t times) {
  std::string out;
  out.reserve(piece.size() * times);
  for (std::size_t i = 0; i < times; ++i) out += piece;
  return out;
}

}  // namespace

TEST_SUITE("openai") {
  TEST_CASE("OpenAI.hostile_invalid_json_and_empty_choices" * doctest::timeout(60)) {
    SUBCASE("invalid JSON is malformed_json, not retried") {
      moa_test::replay_server srv({moa_test::http(200, "{\"choices\": [ not json")});
      moa::openai_backend b(hostile(srv.base_url()));
      const auto e = caught_http_error([&] { (void)b.generate(moa::make_request("x")); });
      CHECK(e.kind() == moa::http_failure::malformed_json);
      CHECK(srv.requests() == 1);
    }
    SUBCASE("empty choices is empty_choices") {
      moa_test::replay_server srv({moa_test::http(200, R"({"id":"c1","choices":[]})")});
      moa::openai_backend b(hostile(srv.base_url()));
      const auto e = caught_http_error([&] { (void)b.generate(moa::make_request("x")); });
      CHECK(e.kind() == moa::http_failure::empty_choices);
    }
    SUBCASE("a stream of invalid JSON events is malformed_json") {
      moa_test::replay_server srv({moa_test::sse("data: {nope\n\ndata: [DONE]\n\n")});
      moa::openai_backend b(hostile(srv.base_url()));
      auto cb = [](std::string_view) {};
      const auto e = caught_http_error(
          [&] { (void)b.generate_stream(moa::make_request("x"), moa::token_callback(cb)); });
      CHECK(e.kind() == moa::http_failure::malformed_json);
    }
  }

  TEST_CASE("OpenAI.hostile_endless_and_huge_answers_are_capped" * doctest::timeout(60)) {
    const std::size_t cap = std::size_t{2} << 20;
    const std::size_t before = peak_rss_kb(true);
    SUBCASE("an endless stream ends at max_response_bytes (too_large), synchronous") {
      moa_test::replay_server srv({{sse_head, sse_event, 0, false, 0ms, many(sse_event, 512)}});
      moa::openai_backend b(hostile(srv.base_url()));
      std::size_t tokens = 0;
      auto cb = [&](std::string_view) { ++tokens; };
      const auto e = caught_http_error(
          [&] { (void)b.generate_stream(moa::make_request("x"), moa::token_callback(cb)); });
      CHECK(e.kind() == moa::http_failure::too_large);
      CHECK(tokens > 0);
      CHECK(tokens * sse_event.size() <= cap);
      CHECK(srv.requests() == 1);  // tokens were delivered: never retried
    }
    SUBCASE("an endless stream ends at max_response_bytes, asynchronous") {
      moa_test::replay_server srv({{sse_head, sse_event, 0, false, 0ms, many(sse_event, 512)}});
      moa::openai_backend b(hostile(srv.base_url()));
      auto c = std::make_shared<completions>(1);
      auto cb = [](std::string_view) {};
      b.generate_stream_async(moa::make_request("x"), moa::token_callback(cb),
                              moa::completion(c, 0));
      REQUIRE(c->wait_all(30s));
      const auto e = caught_http_error([&] { c->rethrow(0); });
      CHECK(e.kind() == moa::http_failure::too_large);
    }
    SUBCASE("a body larger than the cap (its length announced) is too_large, not retried") {
      moa_test::replay_server srv(
          {{"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000000000\r\n",
            "{\"choices\": [", 0, false, 0ms, std::string(1 << 16, ' ')}});
      moa::openai_backend b(hostile(srv.base_url()));
      const auto e = caught_http_error([&] { (void)b.generate(moa::make_request("x")); });
      CHECK(e.kind() == moa::http_failure::too_large);
      CHECK(srv.requests() == 1);
    }
    SUBCASE("an endless body without a length is too_large") {
      moa_test::replay_server srv(
          {{"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n", "[", 0,
            false, 0ms, std::string(1 << 16, '1')}});
      moa::openai_backend b(hostile(srv.base_url()));
      const auto e = caught_http_error([&] { (void)b.generate(moa::make_request("x")); });
      CHECK(e.kind() == moa::http_failure::too_large);
    }
    // What the client kept is bounded by the cap, not by what the server pushed. A reset peak
    // makes this exact; where the kernel refuses the reset it still bounds the whole test.
    const std::size_t after = peak_rss_kb();
    CHECK(after < before + 64 * 1024);
  }

  TEST_CASE("OpenAI.hostile_silence_meets_the_default_deadline" * doctest::timeout(60)) {
    CHECK(moa::openai_options{}.timeout > 0ms);  // finite by default
    CHECK(moa::openai_options{}.timeout <= 10min);
    SUBCASE("a server that accepts and says nothing: openai_options::timeout ends the call") {
      moa_test::replay_server srv({moa_test::reply{.hang = true}});
      auto o = hostile(srv.base_url());
      o.timeout = 300ms;
      moa::openai_backend b(o);
      const auto t0 = moa::clock::now();
      CHECK_THROWS_AS(b.generate(moa::make_request("x")), moa::timeout_error);  // no deadline
      CHECK(moa::clock::now() - t0 < 10s);
    }
    SUBCASE("a stream that stalls after its first tokens: timeout, synchronous and async") {
      moa_test::replay_server srv({{sse_head, many(sse_event, 3), 0, false, 0ms, {}, true}});
      auto o = hostile(srv.base_url());
      o.timeout = 300ms;
      moa::openai_backend b(o);
      std::size_t tokens = 0;
      auto cb = [&](std::string_view) { ++tokens; };
      CHECK_THROWS_AS(b.generate_stream(moa::make_request("x"), moa::token_callback(cb)),
                      moa::timeout_error);
      CHECK(tokens == 3);
      auto c = std::make_shared<completions>(1);
      b.generate_stream_async(moa::make_request("x"), moa::token_callback(cb),
                              moa::completion(c, 0));
      REQUIRE(c->wait_all(30s));
      CHECK_THROWS_AS(c->rethrow(0), moa::timeout_error);
    }
    SUBCASE("an earlier request deadline still wins over the backend's timeout") {
      moa_test::replay_server srv({moa_test::reply{.hang = true}});
      auto o = hostile(srv.base_url());
      o.timeout = 60s;
      moa::openai_backend b(o);
      auto r = moa::make_request("x");
      r.deadline = moa::clock::now() + 200ms;
      const auto t0 = moa::clock::now();
      CHECK_THROWS_AS(b.generate(r), moa::timeout_error);
      CHECK(moa::clock::now() - t0 < 10s);
    }
    SUBCASE("a negative timeout is refused; 0 means none") {
      auto o = hostile("http://127.0.0.1:1/v1");
      o.timeout = -1ms;
      CHECK_THROWS_AS(moa::openai_backend{o}, moa::invalid_argument);
      o.timeout = 0ms;
      CHECK_NOTHROW(moa::openai_backend{o});
    }
  }

  TEST_CASE("OpenAI.hostile_cut_mid_body_is_a_typed_connection_error" * doctest::timeout(60)) {
    const auto body = moa_test::read_fixture("completion.body");
    auto cut = moa_test::http(200, body);
    cut.cut_at = body.size() / 2;
    moa_test::replay_server srv({cut});
    moa::openai_backend b(hostile(srv.base_url()));
    const auto e = caught_http_error([&] { (void)b.generate(moa::make_request("x")); });
    CHECK(e.kind() == moa::http_failure::connection);
    CHECK(e.attempts() == 3);  // retried, each attempt cut
    CHECK(srv.requests() == 3);
  }

  TEST_CASE("OpenAI.hostile_bytes_that_are_not_utf8_are_replaced" * doctest::timeout(60)) {
    SUBCASE("in an error body") {
      moa_test::replay_server srv(
          {moa_test::http(400, "bad \xff\xfe\xc3 request \xed\xa0\x80", {}, "text/plain")});
      moa::openai_backend b(hostile(srv.base_url()));
      const auto e = caught_http_error([&] { (void)b.generate(moa::make_request("x")); });
      CHECK(valid_utf8(e.what()));
      CHECK(valid_utf8(e.server_message()));
      CHECK(std::string(e.what()).find("\xEF\xBF\xBD") != std::string::npos);  // U+FFFD
    }
    SUBCASE("in a 200 body, and a snippet cut inside a character") {
      const std::string body = std::string(199, 'a') + "\xc3\xa9\xc3\xa9 \xff";
      moa_test::replay_server srv({moa_test::http(200, body)});
      moa::openai_backend b(hostile(srv.base_url()));
      const auto e = caught_http_error([&] { (void)b.generate(moa::make_request("x")); });
      CHECK(e.kind() == moa::http_failure::malformed_json);
      CHECK(valid_utf8(e.what()));
    }
    SUBCASE("in a stream, and in the request id header") {
      moa_test::reply r;
      r.head =
          "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nx-request-id: id\xff\xc0\r\n"
          "Connection: close\r\n";
      r.body = "data: {\"choices\":[{\"delta\":{\"content\":\"\xff\xfe\"}}]}\n\n";
      moa_test::replay_server srv({r});
      moa::openai_backend b(hostile(srv.base_url()));
      auto cb = [](std::string_view) {};
      const auto e = caught_http_error(
          [&] { (void)b.generate_stream(moa::make_request("x"), moa::token_callback(cb)); });
      CHECK(valid_utf8(e.what()));
      CHECK(valid_utf8(e.request_id()));
    }
    SUBCASE("a run's trace holds only valid UTF-8") {
      moa_test::replay_server srv({moa_test::http(400, "\xff\xff\xff")});
      moa::openai_backend b(hostile(srv.base_url()));
      std::vector<moa::any_backend> backends;
      backends.emplace_back(b);
      moa::runtime_pipeline pipe(std::move(backends), moa::layered_topology{{{0}}, 0});
      const auto r = pipe.run(moa::inline_executor{}, moa::make_request("x"));
      for (const auto& call : r.trace) {
        CHECK(valid_utf8(call.error));
        CHECK(valid_utf8(call.text));
      }
      CHECK(valid_utf8(r.error));
    }
  }

  TEST_CASE("OpenAI.hostile_retry_after_far_in_the_future_is_not_waited_for" *
            doctest::timeout(60)) {
    for (const std::string& value :
         {std::string("99999999999"), std::string("Fri, 31 Dec 9999 23:59:59 GMT"),
          std::string(400, '9')}) {
      CAPTURE(value);
      moa_test::replay_server srv({moa_test::http(429, R"({"error":{"message":"slow down"}})",
                                                  "Retry-After: " + value + "\r\n")});
      moa::openai_backend b(hostile(srv.base_url()));
      const auto t0 = moa::clock::now();
      const auto e = caught_http_error([&] { (void)b.generate(moa::make_request("x")); });
      CHECK(e.status() == 429);
      CHECK(moa::clock::now() - t0 < 5s);
      CHECK(srv.requests() == 1);
    }
  }

  TEST_CASE("OpenAI.hostile_only_http_and_https") {
    for (const char* url :
         {"file:///etc/passwd", "FILE:///etc/hostname", "ftp://127.0.0.1/v1",
          "gopher://127.0.0.1:70/", "dict://127.0.0.1/", "127.0.0.1:8080/v1", "/etc/passwd"}) {
      CAPTURE(url);
      auto o = hostile(url);
      CHECK_THROWS_AS(moa::openai_backend{o}, moa::invalid_argument);
    }
    CHECK_NOTHROW(moa::openai_backend{hostile("HTTPS://127.0.0.1:1/v1")});
    // A redirect to file:// is not followed (and never would be: redirects are http/https only).
    moa_test::replay_server srv({moa_test::http(302, "", "Location: file:///etc/passwd\r\n")});
    moa::openai_backend b(hostile(srv.base_url()));
    const auto e = caught_http_error([&] { (void)b.generate(moa::make_request("x")); });
    CHECK(e.status() == 302);
    CHECK(std::string(e.what()).find("root:") == std::string::npos);
  }

  TEST_CASE("OpenAI.hostile_credentials_never_shown" * doctest::timeout(60)) {
    moa_test::replay_server srv({moa_test::http(500, "oops"), moa_test::reply{.hang = true}});
    const std::string url = srv.base_url();
    const std::string secret_url =
        "http://alice:hunter2@" + url.substr(7) + "?api_key=sk-live-secret";
    auto o = hostile(secret_url);
    o.retry.max_attempts = 1;
    moa::openai_backend b(o);
    const auto clean = [](std::string_view s) {
      return s.find("hunter2") == std::string_view::npos &&
             s.find("sk-live-secret") == std::string_view::npos;
    };
    CHECK(clean(b.endpoint()));
    CHECK(clean(b.name()));
    const auto e = caught_http_error([&] { (void)b.generate(moa::make_request("x")); });
    CHECK(clean(e.what()));
    CHECK(clean(e.url()));
    CHECK(srv.last_request().find("Authorization: Basic") != std::string::npos);  // still sent
    auto r = moa::make_request("x");
    r.deadline = moa::clock::now() + 100ms;
    try {
      (void)b.generate(r);
      FAIL("no timeout");
    } catch (const moa::timeout_error& t) {
      CHECK(clean(t.what()));
    }
    // Nor in a run's trace, whatever the failure.
    std::vector<moa::any_backend> backends;
    backends.emplace_back(b);
    moa::runtime_pipeline pipe(std::move(backends), moa::layered_topology{{{0}}, 0});
    auto opt = moa::run_options{};
    opt.call_timeout = 100ms;
    const auto run = pipe.run(moa::inline_executor{}, moa::make_request("x"), opt);
    for (const auto& call : run.trace) {
      CHECK(clean(call.error));
      CHECK(clean(call.backend_name));
    }
    CHECK(clean(run.error));
    // Nor when the constructor refuses the URL.
    try {
      moa::openai_backend bad(hostile("file://alice:hunter2@host/x?api_key=sk-live-secret"));
      FAIL("accepted");
    } catch (const moa::invalid_argument& x) {
      CHECK(clean(x.what()));
    }
  }
}
