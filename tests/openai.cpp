// SPDX-License-Identifier: MIT
// Tests of moa/backends/openai.hpp without a model server: the wire parsers on answers recorded
// from a real llama-server (tests/fixtures/openai, re-recorded by capture.sh), and the transport
// (retries, Retry-After, deadlines, cancellation, cut streams) against a local socket that
// replays those recordings. The context budget and usage accounting are tested here too.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <set>
#include <sstream>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <moa/backends/openai.hpp>
#include <moa/backends/synthetic.hpp>
#include <moa/exec/async.hpp>
#include <moa/pipeline.hpp>

#include "openai_replay.hpp"

using namespace std::chrono_literals;
using moa_test::completions;
using moa_test::read_fixture;
using moa_test::thread_count;

namespace {

const std::string recorded_text =
    " contradictSBN Mayorright grouping\xcc\x88\xcc\x88"
    "berry";

// Parses a whole recorded stream, returning the tokens in order.
moa::response parse_stream(std::string_view bytes, std::vector<std::string>& tokens,
                           std::size_t step = 0) {
  moa::openai::sse_parser sse;
  moa::openai::stream_accumulator acc;
  auto on_token = [&](std::string_view t) { tokens.emplace_back(t); };
  auto on_event = [&](std::string_view data) { acc.on_data(data, on_token); };
  if (step == 0) {
    sse.feed(bytes, on_event);
  } else {
    for (std::size_t i = 0; i < bytes.size(); i += step) sse.feed(bytes.substr(i, step), on_event);
  }
  return acc.finish();
}

moa::http_failure failure_of(auto&& f) {
  try {
    f();
  } catch (const moa::http_error& e) {
    return e.kind();
  }
  FAIL("no http_error thrown");
  return moa::http_failure::status;
}

moa::openai_options fast_retries(std::string url) {
  moa::openai_options o;
  o.base_url = std::move(url);
  o.api_key = "sk-test";
  o.retry.initial_backoff = 5ms;
  o.retry.max_backoff = 20ms;
  return o;
}

// One asynchronous call, waited for: its answer or its exception, as generate would give them.
moa::response call_async(const moa::openai_backend& b, const moa::request& r,
                         std::chrono::milliseconds limit = 30s) {
  auto c = std::make_shared<completions>(1);
  b.generate_async(r, moa::completion(c, 0));
  REQUIRE(c->wait_all(limit));
  c->rethrow(0);
  CHECK(c->slots[0].times == 1);
  return std::move(*c->slots[0].answer);
}

}  // namespace

TEST_SUITE("openai") {
  TEST_CASE("OpenAI.parse_recorded_completion") {
    const auto r = moa::openai::parse_response(read_fixture("completion.body"));
    CHECK(r.text == recorded_text);
    CHECK(r.finish == moa::finish_reason::length);
    CHECK(r.usage == moa::usage{34, 8});
    CHECK(r.model == "moa-tiny");
  }

  TEST_CASE("OpenAI.parse_recorded_stream") {
    const auto body = read_fixture("stream.body");
    std::vector<std::string> tokens;
    const auto r = parse_stream(body, tokens);
    CHECK(r.text == recorded_text);  // the same seed gives the same text streamed or not
    CHECK(tokens.size() == 8);
    std::string joined;
    for (const auto& t : tokens) joined += t;
    CHECK(joined == r.text);
    CHECK(r.finish == moa::finish_reason::length);
    CHECK(r.usage == moa::usage{34, 8});  // from the final usage-only chunk

    SUBCASE("byte by byte, and in odd pieces, gives the same events") {
      for (std::size_t step : {1u, 3u, 7u, 64u}) {
        std::vector<std::string> again;
        CHECK(parse_stream(body, again, step).text == r.text);
        CHECK(again == tokens);
      }
    }
    SUBCASE("CRLF and CR line endings") {
      std::string crlf, cr;
      for (char c : body) {
        crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
        cr += c == '\n' ? '\r' : c;
      }
      std::vector<std::string> a, b;
      CHECK(parse_stream(crlf, a, 5).text == r.text);
      CHECK(parse_stream(cr, b, 5).text == r.text);
    }
    SUBCASE("without stream_options.include_usage there is no usage") {
      std::vector<std::string> t;
      const auto u = parse_stream(read_fixture("stream_no_usage.body"), t);
      CHECK(t.size() == 4);
      CHECK(u.usage == moa::usage{});
      CHECK(u.finish == moa::finish_reason::length);
    }
  }

  TEST_CASE("OpenAI.stream_cut_anywhere_is_an_error_never_a_silent_answer") {
    // Every prefix of a recorded stream either parses to a prefix of the answer with a finish
    // reason (cut after the finish chunk) or throws a typed error: never a crash, never a silently
    // shortened answer.
    const auto body = read_fixture("stream.body");
    const auto finish_chunk = body.find("\"finish_reason\":\"length\"");
    REQUIRE(finish_chunk != std::string::npos);
    const auto finish_end = body.find("\n\n", finish_chunk) + 2;
    for (std::size_t cut = 0; cut < body.size(); ++cut) {
      std::vector<std::string> tokens;
      try {
        const auto r = parse_stream(std::string_view(body).substr(0, cut), tokens);
        CHECK_MESSAGE(cut >= finish_end, "cut at byte " << cut << " was accepted");
        CHECK(r.text == recorded_text);
      } catch (const moa::http_error& e) {
        CHECK_MESSAGE(cut < finish_end, "cut at byte " << cut << ": " << e.what());
        CHECK((e.kind() == moa::http_failure::stream_cut ||
               e.kind() == moa::http_failure::empty_choices));
      }
    }
  }

  TEST_CASE("OpenAI.sse_parser_follows_the_spec") {
    moa::openai::sse_parser sse;
    std::vector<std::string> events;
    auto on = [&](std::string_view d) { events.emplace_back(d); };
    sse.feed(": comment\nevent: x\nid: 3\ndata:no-space\n\ndata: a\ndata: b\n\n\n\ndata", on);
    CHECK(events == std::vector<std::string>{"no-space", "a\nb"});
    CHECK(sse.pending());  // "data" without its line end is not an event yet
    sse.feed(": x\n\n", on);
    CHECK(events.back() == "x");  // the line completes as "data: x"
  }

  TEST_CASE("OpenAI.recorded_errors_are_typed") {
    SUBCASE("context too long (400 exceed_context_size_error)") {
      moa::openai::wire_context ctx{.url = "u", .request_id = "req-1", .status = 400};
      try {
        moa::openai::throw_status_error(read_fixture("error_context.body"), ctx);
        FAIL("no throw");
      } catch (const moa::context_length_error& e) {
        CHECK(e.kind() == moa::http_failure::context_length);
        CHECK(e.status() == 400);
        CHECK(e.server_message() ==
              "request (428 tokens) exceeds the available context size (256 tokens), try "
              "increasing it");
        CHECK(e.server_type() == "exceed_context_size_error");
        CHECK(e.request_id() == "req-1");
        CHECK_FALSE(e.retryable());
        CHECK(std::string(e.what()).find("token_budget") != std::string::npos);
      }
    }
    SUBCASE("a wrong parameter (400) is not retryable") {
      const auto i = moa::openai::parse_error_info(read_fixture("error_bad_param.body"),
                                                   {.url = "u", .status = 400});
      CHECK(i.kind == moa::http_failure::status);
      CHECK(i.server_message.find("max_tokens") != std::string::npos);
      CHECK(i.server_type == "invalid_request_error");
      CHECK_FALSE(moa::http_error::retryable(i.kind, i.status));
    }
    SUBCASE("malformed JSON gets a 500 from llama-server, which is retryable") {
      const auto i = moa::openai::parse_error_info(read_fixture("error_malformed.body"),
                                                   {.url = "u", .status = 500});
      CHECK(i.server_type == "server_error");
      CHECK(moa::http_error::retryable(i.kind, i.status));
    }
    SUBCASE("other error shapes") {
      CHECK(moa::openai::parse_error_info(R"({"error":"plain"})", {.status = 502}).server_message ==
            "plain");
      CHECK(moa::openai::parse_error_info(R"({"detail":[{"msg":"bad"}]})", {.status = 422})
                .server_message == R"([{"msg":"bad"}])");
      CHECK(moa::openai::parse_error_info("<html>gateway</html>", {.status = 504}).server_message ==
            "<html>gateway</html>");
      const auto openai = moa::openai::parse_error_info(
          R"({"error":{"message":"This model's maximum context length is 8192 tokens","code":"context_length_exceeded"}})",
          {.status = 400});
      CHECK(openai.kind == moa::http_failure::context_length);
    }
  }

  TEST_CASE("OpenAI.malformed_answers_are_typed") {
    using moa::http_failure;
    using moa::openai::parse_response;
    CHECK(failure_of([] { (void)parse_response("{\"choices\": ["); }) ==
          http_failure::malformed_json);
    CHECK(failure_of([] { (void)parse_response("[1,2]"); }) == http_failure::malformed_json);
    CHECK(failure_of([] { (void)parse_response("{}"); }) == http_failure::missing_field);
    CHECK(failure_of([] { (void)parse_response(R"({"choices":[]})"); }) ==
          http_failure::empty_choices);
    CHECK(failure_of([] { (void)parse_response(R"({"choices":[{"message":{}}]})"); }) ==
          http_failure::missing_field);
    CHECK(failure_of([] {
            (void)parse_response(R"({"choices":[{"message":{"content":null}}]})");
          }) == http_failure::missing_field);
    CHECK(failure_of([] { (void)parse_response(R"({"error":{"message":"busy"}})"); }) ==
          http_failure::status);
    CHECK(failure_of([] {
            (void)parse_response("{\"choices\":[{\"message\":{\"content\":\"\xff\"}}]}");
          }) == http_failure::malformed_json);  // invalid UTF-8 is not valid JSON
    // An empty answer is returned as such; the executor records it as `empty`.
    CHECK(parse_response(R"({"choices":[{"message":{"content":""}}]})").text.empty());

    moa::openai::stream_accumulator acc;
    auto ignore = [](std::string_view) {};
    CHECK(failure_of([&] { acc.on_data("{not json", ignore); }) == http_failure::malformed_json);
    moa::openai::stream_accumulator acc2;
    CHECK(failure_of([&] {
            acc2.on_data(R"({"error":{"code":503,"message":"loading model"}})", ignore);
          }) == http_failure::status);
    moa::openai::stream_accumulator acc3;
    acc3.on_data("[DONE]", ignore);
    CHECK(failure_of([&] { (void)acc3.finish(); }) == http_failure::empty_choices);
  }

  TEST_CASE("OpenAI.request_body") {
    auto r = moa::make_request("hi");
    r.messages.insert(r.messages.begin(), {moa::role::system, "be brief \xff"});
    r.sampling = {.max_tokens = 8, .temperature = 0.0, .seed = 7, .stop = {"\n"}};
    const auto body = nlohmann::json::parse(moa::openai::build_request_body(
        r, "m", true, {{"ignore_eos", true}, {"temperature", nullptr}}));
    CHECK(body["model"] == "m");
    CHECK(body["messages"].size() == 2);
    CHECK(body["messages"][0]["role"] == "system");
    CHECK(body["messages"][0]["content"] == "be brief \xef\xbf\xbd");  // replaced, not rejected
    CHECK(body["max_tokens"] == 8);
    CHECK(body["seed"] == 7);
    CHECK(body["stop"] == nlohmann::json::array({"\n"}));
    CHECK(body["stream"] == true);
    CHECK(body["stream_options"]["include_usage"] == true);
    CHECK(body["ignore_eos"] == true);
    CHECK_FALSE(body.contains("temperature"));  // removed by the null in extra
    const auto plain = nlohmann::json::parse(moa::openai::build_request_body(r, "", false));
    CHECK_FALSE(plain.contains("model"));
    CHECK_FALSE(plain.contains("stream"));
  }

  TEST_CASE("OpenAI.backoff_grows_caps_and_jitters") {
    moa::retry_policy p{
        .initial_backoff = 100ms, .max_backoff = 1000ms, .multiplier = 2.0, .jitter = 0.5};
    CHECK(p.backoff(1, 0.0) == 100ms);
    CHECK(p.backoff(2, 0.0) == 200ms);
    CHECK(p.backoff(3, 0.0) == 400ms);
    CHECK(p.backoff(10, 0.0) == 1000ms);
    CHECK(p.backoff(60, 0.0) == 1000ms);  // no overflow
    CHECK(p.backoff(2, 0.999) > 100ms);   // at most half is taken off
    CHECK(p.backoff(2, 0.999) < 101ms);
    p.jitter = 0;
    CHECK(p.backoff(2, 0.7) == 200ms);
  }

  TEST_CASE("OpenAI.transport_replays_recorded_answers" * doctest::timeout(60)) {
    SUBCASE("non-streaming, with the key and the request id") {
      moa_test::replay_server srv(
          {moa_test::http(200, read_fixture("completion.body"), "x-request-id: abc\r\n")});
      moa::openai_backend b(fast_retries(srv.base_url()));
      const auto r = b.generate(moa::make_request("hello"));
      CHECK(r.text == recorded_text);
      CHECK(r.usage == moa::usage{34, 8});
      CHECK(srv.last_request().find("POST /v1/chat/completions") == 0);
      CHECK(srv.last_request().find("Authorization: Bearer sk-test") != std::string::npos);
      CHECK(b.stats().attempts == 1);
    }
    SUBCASE("streaming, in llama-server's chunked framing") {
      moa_test::replay_server srv({moa_test::chunked_sse(read_fixture("stream.body"))});
      moa::openai_backend b(fast_retries(srv.base_url()));
      std::string seen;
      auto cb = [&](std::string_view t) { seen += t; };
      const auto r = b.generate_stream(moa::make_request("hello"), moa::token_callback(cb));
      CHECK(seen == recorded_text);
      CHECK(r.text == recorded_text);
      CHECK(r.usage.completion_tokens == 8);
      CHECK(srv.last_request().find("\"stream\":true") != std::string::npos);
    }
    SUBCASE("an error answer to a stream request is parsed as an error") {
      moa_test::replay_server srv({moa_test::http(400, read_fixture("error_context.body"))});
      moa::openai_backend b(fast_retries(srv.base_url()));
      auto cb = [](std::string_view) {};
      CHECK_THROWS_AS(b.generate_stream(moa::make_request("x"), moa::token_callback(cb)),
                      moa::context_length_error);
      CHECK(srv.requests() == 1);  // not retried
    }
  }

  TEST_CASE("OpenAI.retries" * doctest::timeout(60)) {
    SUBCASE("5xx then success") {
      moa_test::replay_server srv({moa_test::http(503, R"({"error":{"message":"loading"}})"),
                                   moa_test::http(500, read_fixture("error_malformed.body")),
                                   moa_test::http(200, read_fixture("completion.body"))});
      moa::openai_backend b(fast_retries(srv.base_url()));
      CHECK(b.generate(moa::make_request("x")).text == recorded_text);
      CHECK(b.stats().attempts == 3);
      CHECK(b.stats().retries == 2);
    }
    SUBCASE("bounded: the last error carries the attempts") {
      moa_test::replay_server srv(
          {moa_test::http(503, R"({"error":{"message":"overloaded"}})", "x-request-id: r-9\r\n")});
      auto o = fast_retries(srv.base_url());
      o.retry.max_attempts = 4;
      moa::openai_backend b(o);
      try {
        (void)b.generate(moa::make_request("x"));
        FAIL("no throw");
      } catch (const moa::http_error& e) {
        CHECK(e.status() == 503);
        CHECK(e.attempts() == 4);
        CHECK(e.server_message() == "overloaded");
        CHECK(e.request_id() == "r-9");
        CHECK(std::string(e.what()).find("HTTP 503: overloaded") != std::string::npos);
      }
      CHECK(srv.requests() == 4);
    }
    SUBCASE("no retry on 4xx") {
      moa_test::replay_server srv({moa_test::http(400, read_fixture("error_bad_param.body"))});
      moa::openai_backend b(fast_retries(srv.base_url()));
      CHECK_THROWS_AS(b.generate(moa::make_request("x")), moa::http_error);
      CHECK(srv.requests() == 1);
    }
    SUBCASE("429 honours Retry-After") {
      moa_test::replay_server srv(
          {moa_test::http(429, R"({"error":{"message":"slow down"}})", "Retry-After: 1\r\n"),
           moa_test::http(200, read_fixture("completion.body"))});
      moa::openai_backend b(fast_retries(srv.base_url()));
      const auto t0 = std::chrono::steady_clock::now();
      CHECK(b.generate(moa::make_request("x")).text == recorded_text);
      CHECK(std::chrono::steady_clock::now() - t0 >= 950ms);
    }
    SUBCASE("a Retry-After past the deadline is not waited for") {
      moa_test::replay_server srv(
          {moa_test::http(429, R"({"error":{"message":"slow down"}})", "Retry-After: 30\r\n")});
      moa::openai_backend b(fast_retries(srv.base_url()));
      auto req = moa::make_request("x");
      req.deadline = moa::clock::now() + 10s;
      const auto t0 = std::chrono::steady_clock::now();
      CHECK_THROWS_AS(b.generate(req), moa::http_error);
      CHECK(std::chrono::steady_clock::now() - t0 < 5s);  // neither the 30 s nor the deadline
      CHECK(srv.requests() == 1);
    }
    SUBCASE("connection refused is retried, then typed") {
      std::string url;
      {
        moa_test::replay_server gone({moa_test::http(200, "")});
        url = gone.base_url();
      }  // the port is closed now
      moa::openai_backend b(fast_retries(url));
      try {
        (void)b.generate(moa::make_request("x"));
        FAIL("no throw");
      } catch (const moa::http_error& e) {
        CHECK(e.kind() == moa::http_failure::connection);
        CHECK(e.status() == 0);
        CHECK(e.attempts() == 3);
      }
    }
  }

  TEST_CASE("OpenAI.cut_streams" * doctest::timeout(60)) {
    const auto body = read_fixture("stream.body");
    const auto half = body.find("grouping");  // inside the 5th content chunk
    auto cb_count = [](std::size_t& n) { return [&n](std::string_view) { ++n; }; };
    SUBCASE("the connection closes mid-stream: stream_cut, not retried") {
      moa_test::replay_server srv({moa_test::sse(body, half)});
      moa::openai_backend b(fast_retries(srv.base_url()));
      std::size_t n = 0;
      auto cb = cb_count(n);
      try {
        (void)b.generate_stream(moa::make_request("x"), moa::token_callback(cb));
        FAIL("no throw");
      } catch (const moa::http_error& e) {
        CHECK(e.kind() == moa::http_failure::stream_cut);
        CHECK(e.request_id().rfind("chatcmpl-", 0) == 0);  // the completion id
      }
      CHECK(n == 4);
      CHECK(srv.requests() == 1);
    }
    SUBCASE("the chunked framing breaks mid-stream: stream_cut") {
      moa_test::replay_server srv({moa_test::chunked_sse(body, half)});
      moa::openai_backend b(fast_retries(srv.base_url()));
      std::size_t n = 0;
      auto cb = cb_count(n);
      try {
        (void)b.generate_stream(moa::make_request("x"), moa::token_callback(cb));
        FAIL("no throw");
      } catch (const moa::http_error& e) {
        CHECK(e.kind() == moa::http_failure::stream_cut);
      }
      CHECK(srv.requests() == 1);
    }
    SUBCASE("a stream that breaks before its first token is retried") {
      moa_test::replay_server srv({moa_test::chunked_sse(body, 40), moa_test::chunked_sse(body)});
      moa::openai_backend b(fast_retries(srv.base_url()));
      std::size_t n = 0;
      auto cb = cb_count(n);
      CHECK(b.generate_stream(moa::make_request("x"), moa::token_callback(cb)).text ==
            recorded_text);
      CHECK(n == 8);
      CHECK(srv.requests() == 2);
    }
  }

  TEST_CASE("OpenAI.deadline_and_cancellation" * doctest::timeout(60)) {
    moa_test::replay_server srv({moa_test::reply{.head = {}, .body = {}, .hang = true}});
    moa::openai_backend b(fast_retries(srv.base_url()));
    SUBCASE("the deadline ends a silent call") {
      auto req = moa::make_request("x");
      req.deadline = moa::clock::now() + 150ms;
      const auto t0 = moa::clock::now();
      CHECK_THROWS_AS(b.generate(req), moa::timeout_error);
      const auto took = moa::clock::now() - t0;
      CHECK(took >= 140ms);
      CHECK(took < 5s);  // the server never answers: only the deadline can end the call
    }
    SUBCASE("a stop request aborts the transfer at once") {
      std::stop_source stop;
      auto req = moa::make_request("x");
      req.stop = stop.get_token();
      std::jthread canceller([&] {
        std::this_thread::sleep_for(100ms);
        stop.request_stop();
      });
      const auto t0 = moa::clock::now();
      CHECK_THROWS_AS(b.generate(req), moa::cancelled_error);
      CHECK(moa::clock::now() - t0 < 600ms);  // not the ~1 s of a progress callback
    }
    SUBCASE("a token callback that throws ends the call with its exception") {
      moa_test::replay_server s2({moa_test::chunked_sse(read_fixture("stream.body"))});
      moa::openai_backend b2(fast_retries(s2.base_url()));
      auto cb = [](std::string_view) { throw std::runtime_error("enough"); };
      CHECK_THROWS_WITH_AS(b2.generate_stream(moa::make_request("x"), moa::token_callback(cb)),
                           "enough", std::runtime_error);
    }
  }

  TEST_CASE("OpenAI.failures_reach_the_trace" * doctest::timeout(60)) {
    // A dead endpoint among three: quorum 2 carries on, and the trace names the typed error.
    std::string dead;
    {
      moa_test::replay_server gone({moa_test::http(200, "")});
      dead = gone.base_url();
    }
    moa_test::replay_server live({moa_test::http(200, read_fixture("completion.body"))});
    auto o = fast_retries(dead);
    o.retry.max_attempts = 2;
    o.name = "dead";
    std::vector<moa::any_backend> backends;
    backends.emplace_back(moa::openai_backend(fast_retries(live.base_url())));
    backends.emplace_back(moa::openai_backend(o));
    backends.emplace_back(moa::synthetic_backend({.name = "syn"}));
    moa::runtime_pipeline pipe(std::move(backends), {.layers = {{0, 1, 2}}, .aggregator = 0});
    moa::run_options opt;
    opt.quorum = 2;
    const auto r = pipe.run(moa::concurrent_executor(3), "hello", opt);
    CHECK(r.status == moa::run_status::ok);
    CHECK(r.trace[1].status == moa::call_status::failed);
    CHECK(r.trace[1].error.find("no answer from the server") != std::string::npos);
    CHECK(r.trace[1].error.find("after 2 attempts") != std::string::npos);
    const auto u = moa::openai::summarize_usage(r);
    REQUIRE(u.per_model.size() == 3);
    CHECK(u.per_model[0].usage == moa::usage{68, 16});  // proposer and aggregator
    CHECK(u.per_model[0].calls == 2);
    CHECK(u.per_model[1].usage == moa::usage{});
    CHECK(u.total == r.usage);
  }

  TEST_CASE("OpenAI.context_budget_trims_references") {
    SUBCASE("fair share") {
      const std::string long_a(400, 'a'), long_b(800, 'b'), short_c(40, 'c');
      std::vector<moa::reference> refs{{long_a, "a", 0}, {long_b, "b", 1}, {short_c, "c", 2}};
      const auto removed = moa::trim_references(refs, 110);  // 100 + 200 + 10 tokens
      CHECK(refs[2].text.size() == 40);                      // under the share: kept whole
      CHECK_FALSE(refs[2].truncated);
      CHECK(refs[0].text.size() == 200);  // (110 - 10) / 2 = 50 tokens each
      CHECK(refs[1].text.size() == 200);
      CHECK(refs[0].truncated);
      CHECK(removed == 310 - 110);
      std::size_t total = 0;
      for (const auto& r : refs) total += moa::estimate_context_tokens(r.text);
      CHECK(total <= 110);
    }
    SUBCASE("cuts never split a UTF-8 character") {
      const std::string text = "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9";  // 5 x e-acute
      std::vector<moa::reference> refs{{text, "x", 0}};
      moa::trim_references(refs, 1);  // 4 bytes would keep 2 characters; 1 token = 4 bytes
      CHECK(refs[0].text == "\xc3\xa9\xc3\xa9");
    }
    SUBCASE("within budget nothing changes") {
      std::vector<moa::reference> refs{{"short", "x", 0}};
      CHECK(moa::trim_references(refs, 100) == 0);
      CHECK_FALSE(refs[0].truncated);
    }
    SUBCASE("recorded in the trace, marked in the prompt") {
      moa::aggregation_prompt prompt;
      prompt.token_budget = 6;  // synthetic answers are ~20 bytes: 3 x 5 tokens > 6
      std::string seen;
      auto spy = moa::synthetic_backend({.name = "spy", .answer = [&seen](const moa::request& r) {
                                           if (r.context.role == moa::call_role::aggregator)
                                             seen = r.messages.front().content;
                                           return std::string("ok");
                                         }});
      using topo = moa::topology<moa::layers<1, moa::proposers<0, 1, 2>>, moa::aggregator<3>>;
      auto pipe = moa::make_pipeline<topo>(
          moa::synthetic_backend({.name = "alpha"}), moa::synthetic_backend({.name = "beta"}),
          moa::synthetic_backend({.name = "gamma"}), std::ref(spy));
      moa::run_options opt;
      opt.prompt = &prompt;
      const auto r = pipe.run("hello", opt);
      REQUIRE(r.ok());
      CHECK(r.trace[0].trimmed_tokens == 0);
      CHECK(r.trace[3].trimmed_tokens > 0);
      CHECK(seen.find("[1] alpha an [...]") != std::string::npos);  // 2 tokens = 8 bytes each
      std::ostringstream table;
      table << r.trace;
      CHECK(table.str().find("references trimmed by ~") != std::string::npos);
    }
  }

  TEST_CASE("OpenAI.async_many_calls_share_one_io_thread" * doctest::timeout(120)) {
    // 64 calls in flight at once: the server answers one at a time, so they overlap for a while;
    // the process gains at most the one I/O thread (and one spare for libcurl), not 64.
    constexpr std::size_t n = 64;
    moa_test::reply slow = moa_test::http(200, read_fixture("completion.body"));
    slow.delay = 5ms;
    moa_test::replay_server srv({slow});
    moa::openai_backend b(fast_retries(srv.base_url()));
    const auto before = thread_count();
    auto c = std::make_shared<completions>(n);
    std::vector<moa::request> requests(n, moa::make_request("hello"));
    for (std::size_t i = 0; i < n; ++i)
      b.generate_async(requests[i], moa::completion(c, static_cast<std::uint32_t>(i)));
    std::size_t peak = thread_count();
    while (!c->wait_all(2ms)) peak = std::max(peak, thread_count());
    CHECK(peak <= before + 2);
    std::set<std::thread::id> threads;
    for (std::size_t i = 0; i < n; ++i) {
      const auto& s = c->slots[i];
      CHECK(s.times == 1);
      REQUIRE_MESSAGE(s.answer.has_value(), "call " << i << " failed");
      CHECK(s.answer->text == recorded_text);
      CHECK(s.answer->usage == moa::usage{34, 8});
      threads.insert(s.thread);
    }
    CHECK(threads.size() == 1);  // every completion came from the one I/O thread
    CHECK(threads.count(std::this_thread::get_id()) == 0);
    CHECK(b.stats().calls == n);
    CHECK(b.stats().attempts == n);
    CHECK(srv.requests() == static_cast<int>(n));
  }

  TEST_CASE("OpenAI.async_retries_and_typed_errors" * doctest::timeout(60)) {
    SUBCASE("503 then success: retried on a timer") {
      moa_test::replay_server srv({moa_test::http(503, R"({"error":{"message":"loading"}})"),
                                   moa_test::http(200, read_fixture("completion.body"))});
      moa::openai_backend b(fast_retries(srv.base_url()));
      CHECK(call_async(b, moa::make_request("x")).text == recorded_text);
      CHECK(b.stats().attempts == 2);
      CHECK(b.stats().retries == 1);
    }
    SUBCASE("bounded: the last 503 carries the attempts") {
      moa_test::replay_server srv({moa_test::http(503, R"({"error":{"message":"overloaded"}})")});
      moa::openai_backend b(fast_retries(srv.base_url()));
      try {
        (void)call_async(b, moa::make_request("x"));
        FAIL("no throw");
      } catch (const moa::http_error& e) {
        CHECK(e.status() == 503);
        CHECK(e.attempts() == 3);
        CHECK(e.server_message() == "overloaded");
      }
      CHECK(srv.requests() == 3);
    }
    SUBCASE("400 is an http_error with the server's message, not retried") {
      moa_test::replay_server srv({moa_test::http(400, read_fixture("error_bad_param.body"))});
      moa::openai_backend b(fast_retries(srv.base_url()));
      try {
        (void)call_async(b, moa::make_request("x"));
        FAIL("no throw");
      } catch (const moa::http_error& e) {
        CHECK(e.status() == 400);
        CHECK(e.server_message().find("max_tokens") != std::string::npos);
        CHECK(e.server_type() == "invalid_request_error");
      }
      CHECK(srv.requests() == 1);
    }
    SUBCASE("a context error keeps its type") {
      moa_test::replay_server srv({moa_test::http(400, read_fixture("error_context.body"))});
      moa::openai_backend b(fast_retries(srv.base_url()));
      CHECK_THROWS_AS(call_async(b, moa::make_request("x")), moa::context_length_error);
    }
    SUBCASE("429 honours Retry-After") {
      moa_test::replay_server srv(
          {moa_test::http(429, R"({"error":{"message":"slow down"}})", "Retry-After: 1\r\n"),
           moa_test::http(200, read_fixture("completion.body"))});
      moa::openai_backend b(fast_retries(srv.base_url()));
      const auto t0 = std::chrono::steady_clock::now();
      CHECK(call_async(b, moa::make_request("x")).text == recorded_text);
      CHECK(std::chrono::steady_clock::now() - t0 >= 950ms);
    }
    SUBCASE("connection refused is retried, then typed") {
      std::string url;
      {
        moa_test::replay_server gone({moa_test::http(200, "")});
        url = gone.base_url();
      }
      moa::openai_backend b(fast_retries(url));
      try {
        (void)call_async(b, moa::make_request("x"));
        FAIL("no throw");
      } catch (const moa::http_error& e) {
        CHECK(e.kind() == moa::http_failure::connection);
        CHECK(e.attempts() == 3);
      }
    }
    SUBCASE("streamed, tokens in order on the I/O thread, usage from the last chunk") {
      moa_test::replay_server srv({moa_test::chunked_sse(read_fixture("stream.body"))});
      moa::openai_backend b(fast_retries(srv.base_url()));
      std::string seen;
      auto cb = [&](std::string_view t) { seen += t; };
      auto c = std::make_shared<completions>(1);
      b.generate_stream_async(moa::make_request("x"), moa::token_callback(cb),
                              moa::completion(c, 0));
      REQUIRE(c->wait_all(30s));
      c->rethrow(0);
      CHECK(seen == recorded_text);
      CHECK(c->slots[0].answer->text == recorded_text);
      CHECK(c->slots[0].answer->usage.completion_tokens == 8);
      CHECK(c->slots[0].answer->timings.time_to_first_token > 0ns);
    }
    SUBCASE("a stream cut after tokens is stream_cut, not retried") {
      const auto body = read_fixture("stream.body");
      moa_test::replay_server srv({moa_test::sse(body, body.find("grouping"))});
      moa::openai_backend b(fast_retries(srv.base_url()));
      std::size_t tokens = 0;
      auto cb = [&](std::string_view) { ++tokens; };
      auto c = std::make_shared<completions>(1);
      b.generate_stream_async(moa::make_request("x"), moa::token_callback(cb),
                              moa::completion(c, 0));
      REQUIRE(c->wait_all(30s));
      CHECK(failure_of([&] { c->rethrow(0); }) == moa::http_failure::stream_cut);
      CHECK(tokens == 4);
      CHECK(srv.requests() == 1);
    }
  }

  TEST_CASE("OpenAI.async_deadline_and_cancellation" * doctest::timeout(60)) {
    moa_test::replay_server srv({moa_test::reply{.head = {}, .body = {}, .hang = true}});
    moa::openai_backend b(fast_retries(srv.base_url()));
    SUBCASE("the deadline ends a silent call with timeout_error") {
      auto req = moa::make_request("x");
      req.deadline = moa::clock::now() + 150ms;
      const auto t0 = moa::clock::now();
      CHECK_THROWS_AS(call_async(b, req), moa::timeout_error);
      CHECK(moa::clock::now() - t0 >= 140ms);
      CHECK(moa::clock::now() - t0 < 5s);
    }
    SUBCASE("a stop request ends the call with cancelled_error") {
      std::stop_source stop;
      auto req = moa::make_request("x");
      req.stop = stop.get_token();
      auto c = std::make_shared<completions>(1);
      b.generate_async(req, moa::completion(c, 0));
      std::this_thread::sleep_for(100ms);
      CHECK(c->completed() == 0);  // still waiting for the silent server
      const auto t0 = moa::clock::now();
      stop.request_stop();
      REQUIRE(c->wait_all(5s));
      CHECK(moa::clock::now() - t0 < 3s);
      CHECK_THROWS_AS(c->rethrow(0), moa::cancelled_error);
    }
    SUBCASE("stop requested before the call") {
      std::stop_source stop;
      stop.request_stop();
      auto req = moa::make_request("x");
      req.stop = stop.get_token();
      CHECK_THROWS_AS(call_async(b, req), moa::cancelled_error);
    }
    SUBCASE("a stop during the wait before a retry") {
      moa_test::replay_server busy(
          {moa_test::http(503, R"({"error":{"message":"busy"}})", "Retry-After: 20\r\n")});
      auto o = fast_retries(busy.base_url());
      o.retry.max_retry_after = 60s;
      moa::openai_backend b2(o);
      std::stop_source stop;
      auto req = moa::make_request("x");
      req.stop = stop.get_token();
      auto c = std::make_shared<completions>(1);
      b2.generate_async(req, moa::completion(c, 0));
      for (int i = 0; i < 500 && busy.requests() == 0; ++i) std::this_thread::sleep_for(10ms);
      std::this_thread::sleep_for(50ms);
      stop.request_stop();
      REQUIRE(c->wait_all(5s));
      CHECK_THROWS_AS(c->rethrow(0), moa::cancelled_error);
      CHECK(busy.requests() == 1);
    }
  }

  TEST_CASE("OpenAI.async_destruction_completes_every_call" * doctest::timeout(60)) {
    // Calls in flight (a silent server) and one waiting for a retry: destroying the backend
    // completes each exactly once, with cancelled_error.
    moa_test::replay_server silent({moa_test::reply{.head = {}, .body = {}, .hang = true}});
    moa_test::replay_server busy(
        {moa_test::http(503, R"({"error":{"message":"busy"}})", "Retry-After: 20\r\n")});
    constexpr std::size_t n = 8;
    auto c = std::make_shared<completions>(n + 1);
    {
      moa::openai_backend b(fast_retries(silent.base_url()));
      auto o = fast_retries(busy.base_url());
      o.retry.max_retry_after = 60s;
      moa::openai_backend waiting(o);
      for (std::size_t i = 0; i < n; ++i)
        b.generate_async(moa::make_request("x"), moa::completion(c, static_cast<std::uint32_t>(i)));
      waiting.generate_async(moa::make_request("x"), moa::completion(c, n));
      for (int i = 0; i < 500 && (silent.requests() == 0 || busy.requests() == 0); ++i)
        std::this_thread::sleep_for(10ms);
      std::this_thread::sleep_for(50ms);
      CHECK(c->completed() == 0);
    }                                // both destroyed here
    CHECK(c->completed() == n + 1);  // the destructors waited for the completions
    for (std::size_t i = 0; i <= n; ++i) {
      CHECK(c->slots[i].times == 1);
      CHECK_THROWS_AS(c->rethrow(i), moa::cancelled_error);
    }
  }

  TEST_CASE("OpenAI.async_executor_run_matches_the_sync_path" * doctest::timeout(60)) {
    moa_test::replay_server srv({moa_test::http(200, read_fixture("completion.body"))});
    std::vector<moa::openai_backend> backends;
    for (const char* name : {"a", "b", "c"}) {
      auto o = fast_retries(srv.base_url());
      o.name = name;
      backends.emplace_back(o);
    }
    const auto plan = moa::layered_topology{{{0, 1, 2}, {0, 1, 2}}, 0}.make_plan();
    std::vector<moa::backend_ref> sync;
    std::vector<moa::async_backend_ref> async;
    for (auto& b : backends) {
      sync.emplace_back(b, std::string(b.name()));
      async.emplace_back(b, std::string(b.name()));
      CHECK(async.back().is_async());
    }
    const auto want = moa::inline_executor{}.execute(plan, sync, moa::make_request("hello"));
    moa::async_executor ex(2);
    const auto got = ex.execute_async(plan, async, moa::make_request("hello")).get();
    INFO(got.trace);
    REQUIRE(want.status == moa::run_status::ok);
    CHECK(got.status == want.status);
    CHECK(got.answer == want.answer);
    CHECK(got.answer == recorded_text);
    CHECK(got.usage == want.usage);
    REQUIRE(got.trace.size() == want.trace.size());
    for (std::size_t i = 0; i < got.trace.size(); ++i) {
      CHECK(got.trace[i].status == moa::call_status::ok);
      CHECK(got.trace[i].backend_name == want.trace[i].backend_name);
      CHECK(got.trace[i].layer == want.trace[i].layer);
      CHECK(got.trace[i].references == want.trace[i].references);
      CHECK(got.trace[i].text == want.trace[i].text);
      CHECK(got.trace[i].usage == want.trace[i].usage);
    }
    CHECK(got.trace[6].references == std::vector<moa::call_id>{3, 4, 5});
    SUBCASE("on_token streams the sink's answer from the I/O thread") {
      std::string streamed;
      moa::run_options opt;
      opt.on_token = [&](std::string_view t) { streamed += t; };  // one call: no lock needed
      const auto r = ex.execute_async(plan, async, moa::make_request("hello"), opt).get();
      REQUIRE(r.ok());
      CHECK(streamed == r.answer);
    }
    const auto u = moa::openai::summarize_usage(got);
    REQUIRE(u.per_model.size() == 3);
    CHECK(u.per_model[0].calls == 3);
    CHECK(u.total == got.usage);
  }
}
