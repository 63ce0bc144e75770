// SPDX-License-Identifier: MIT
// moa serve (moa/serve/openai_server.hpp): the server on an ephemeral port, driven with libcurl
// as an OpenAI client drives it; the program itself (SIGTERM drain) when MOA_CLI_PATH is given.
// Nothing here depends on speed: slow backends block until the test releases or cancels them.
#include <doctest/doctest.h>

#include <curl/curl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <moa/backends/synthetic.hpp>
#include <moa/config/roster.hpp>
#include <moa/serve/openai_server.hpp>
#include <moa/topology/dag.hpp>
#include <nlohmann/json.hpp>

extern char** environ;  // NOLINT: POSIX

namespace {

using nlohmann::json;
using namespace std::chrono_literals;

struct reply {
  long status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  ///< lower-case names
  CURLcode code = CURLE_OK;
  [[nodiscard]] std::string header(const std::string& name) const {
    const auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
};

struct call_state {
  reply r;
  std::function<bool(const std::string&)> keep_going;  // (body so far) false: hang up
};

// One HTTP exchange with libcurl, as the OpenAI clients make it.
reply http(const std::string& method, const std::string& url, const std::string& body = {},
           std::vector<std::string> headers = {}, long timeout_ms = 60000,
           std::function<bool(const std::string&)> keep_going = {}) {
  call_state st;
  st.keep_going = std::move(keep_going);
  CURL* c = curl_easy_init();
  REQUIRE(c != nullptr);
  curl_slist* list = nullptr;
  if (!body.empty()) headers.emplace_back("Content-Type: application/json");
  for (const auto& h : headers) list = curl_slist_append(list, h.c_str());
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
  if (!body.empty() || method == "POST") {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  }
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, list);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(
      c, CURLOPT_WRITEFUNCTION, +[](char* p, std::size_t, std::size_t n, void* u) -> std::size_t {
        auto* s = static_cast<call_state*>(u);
        s->r.body.append(p, n);
        return n;
      });
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &st);
  if (st.keep_going) {
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(
        c, CURLOPT_XFERINFOFUNCTION,
        +[](void* u, curl_off_t, curl_off_t, curl_off_t, curl_off_t) -> int {
          auto* st = static_cast<call_state*>(u);
          return st->keep_going(st->r.body) ? 0 : 1;
        });
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, &st);
  }
  curl_easy_setopt(
      c, CURLOPT_HEADERFUNCTION, +[](char* p, std::size_t, std::size_t n, void* u) -> std::size_t {
        std::string line(p, n);
        const auto colon = line.find(':');
        if (colon != std::string::npos) {
          std::string name = line.substr(0, colon);
          for (auto& ch : name) ch = static_cast<char>(std::tolower(ch));
          auto value = line.substr(colon + 1);
          while (!value.empty() && (value.front() == ' ')) value.erase(0, 1);
          while (!value.empty() && (value.back() == '\r' || value.back() == '\n')) value.pop_back();
          static_cast<call_state*>(u)->r.headers[name] = value;
        }
        return n;
      });
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &st);
  st.r.code = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &st.r.status);
  curl_slist_free_all(list);
  curl_easy_cleanup(c);
  return st.r;
}

json chat_body(const std::string& model, bool stream = false) {
  json j = {{"model", model},
            {"messages", {{{"role", "user"}, {"content", "Why is the sky blue?"}}}}};
  if (stream) j["stream"] = true;
  return j;
}

// The error shape every failure must have.
void check_error_shape(const reply& r, long status) {
  CHECK(r.status == status);
  const auto j = json::parse(r.body, nullptr, false);
  REQUIRE(j.is_object());
  REQUIRE(j.contains("error"));
  for (const char* k : {"message", "type", "param", "code"}) CHECK(j["error"].contains(k));
  CHECK(j["error"]["message"].is_string());
  CHECK(j["error"]["type"].is_string());
}

// The SSE events of a streamed answer: the JSON of each `data:` line, and whether [DONE] ended it.
struct events {
  std::vector<json> chunks;
  bool done = false;
};
events parse_sse(const std::string& body) {
  events out;
  std::size_t pos = 0;
  while (pos < body.size()) {
    auto end = body.find("\n\n", pos);
    if (end == std::string::npos) end = body.size();
    const auto event = body.substr(pos, end - pos);
    pos = end + 2;
    if (event.rfind("data: ", 0) != 0) continue;
    const auto data = event.substr(6);
    REQUIRE_FALSE(out.done);  // nothing after [DONE]
    if (data == "[DONE]") {
      out.done = true;
      continue;
    }
    out.chunks.push_back(json::parse(data));
  }
  return out;
}

moa::config::roster synthetic_moa() {
  return moa::config::parse_roster(json::parse(R"({
    "models": {"alpha": {"kind": "synthetic"}, "beta": {"kind": "synthetic"},
               "gamma": {"kind": "synthetic"}},
    "layouts": {"moa": {"layers": [["alpha", "beta", "gamma"], ["alpha", "beta", "gamma"]],
                        "aggregator": "alpha"},
                "vote": {"layers": [["alpha", "beta", "gamma"]], "aggregator": "alpha",
                         "policy": "vote"}}
  })"));
}

// A backend that answers only when the test opens its gate, and notices cancellation.
struct gate {
  std::atomic<bool> open{false};
  std::atomic<int> started{0}, stopped{0};
};
struct gated_backend {
  gate* g;
  std::string label;
  moa::response generate(const moa::request& r) const {
    g->started.fetch_add(1);
    const auto give_up = moa::clock::now() + 60s;
    while (!g->open.load()) {
      if (r.stop.stop_requested()) {
        g->stopped.fetch_add(1);
        MOA_THROW(moa::backend_error("gated backend: cancelled"));
      }
      if (moa::clock::now() > give_up) MOA_THROW(moa::backend_error("gated backend: never opened"));
      std::this_thread::sleep_for(1ms);
    }
    moa::response out;
    out.text = "released " + label;
    out.usage = {5, 2};
    return out;
  }
  [[nodiscard]] std::string_view name() const { return label; }
};

moa::config::roster solo_roster() {
  return moa::config::parse_roster(json::parse(R"({"models": {"solo": {"kind": "synthetic"}}})"));
}
moa::serve::backend_factory gated_factory(gate& g) {
  return [&g](const moa::config::model_spec& m) {
    return moa::serve::hold(gated_backend{&g, m.name}, m.name);
  };
}

// Polls `done` (bounded; the bound is generous and never reached when the code is right).
bool eventually(const std::function<bool()>& done) {
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

struct served {
  moa::serve::openai_server server;
  std::string base;
  served(const moa::config::roster& r, moa::serve::backend_factory make,
         moa::serve::server_options opt = {})
      : server(r, std::move(make), with_port0(std::move(opt))) {
    server.start();
    base = "http://127.0.0.1:" + std::to_string(server.port());
  }
  static moa::serve::server_options with_port0(moa::serve::server_options o) {
    o.port = 0;
    return o;
  }
};

}  // namespace

TEST_CASE("Serve.non_streamed_answer_matches_the_in_process_run") {
  served s(synthetic_moa(), moa::serve::synthetic_backends);
  const auto r = http("POST", s.base + "/v1/chat/completions", chat_body("moa").dump());
  REQUIRE(r.status == 200);
  CHECK(r.header("content-type") == "application/json");
  const auto j = json::parse(r.body);
  CHECK(j["object"] == "chat.completion");
  CHECK(j["model"] == "moa");
  CHECK(j["id"].get<std::string>().rfind("chatcmpl-", 0) == 0);
  CHECK(j["choices"][0]["message"]["role"] == "assistant");
  CHECK(j["choices"][0]["finish_reason"] == "stop");
  CHECK_FALSE(j.contains("moa"));  // the trace only on request

  // The same layout run in-process gives the same answer and usage: 7 calls summed.
  const auto* layout = s.server.layouts().find("moa");
  REQUIRE(layout != nullptr);
  moa::async_executor ex(1);
  moa::run_options opt;
  const auto local =
      ex.execute(layout->plan, layout->refs, moa::make_request("Why is the sky blue?"), opt);
  REQUIRE(local.ok());
  CHECK(local.trace.size() == 7);
  CHECK(j["choices"][0]["message"]["content"] == local.answer);
  CHECK(j["usage"]["prompt_tokens"] == local.usage.prompt_tokens);
  CHECK(j["usage"]["completion_tokens"] == local.usage.completion_tokens);
  CHECK(j["usage"]["total_tokens"] == local.usage.total());
  CHECK(local.usage.prompt_tokens > 0);
}

TEST_CASE("Serve.models_lists_every_layout_and_model") {
  served s(synthetic_moa(), moa::serve::synthetic_backends);
  const auto r = http("GET", s.base + "/v1/models");
  REQUIRE(r.status == 200);
  const auto j = json::parse(r.body);
  CHECK(j["object"] == "list");
  std::vector<std::string> ids;
  for (const auto& m : j["data"]) {
    CHECK(m["object"] == "model");
    ids.push_back(m["id"]);
  }
  CHECK(ids == std::vector<std::string>{"moa", "vote", "alpha", "beta", "gamma"});
  CHECK(http("GET", s.base + "/health").status == 200);
}

TEST_CASE("Serve.dag_layouts_from_the_roster") {
  // A diamond: alpha's answer goes to beta and gamma, both to a second alpha node, the sink.
  const auto roster = moa::config::parse_roster(json::parse(R"({
    "models": {"alpha": {"kind": "synthetic"}, "beta": {"kind": "synthetic"},
               "gamma": {"kind": "synthetic"}},
    "layouts": {"diamond": {"nodes": ["alpha", "beta", "gamma", "alpha"],
                            "edges": [[0, 1], [0, 2], [1, 3], [2, 3]]}}
  })"));
  served s(roster, moa::serve::synthetic_backends);
  const auto models = json::parse(http("GET", s.base + "/v1/models").body);
  REQUIRE(models["data"][0]["id"] == "diamond");
  CHECK(models["data"][0]["description"] == "DAG of 4 nodes, sink alpha");

  auto body = chat_body("diamond");
  body["moa"] = {{"trace", true}};
  const auto r = http("POST", s.base + "/v1/chat/completions", body.dump());
  REQUIRE(r.status == 200);
  const auto j = json::parse(r.body);
  const auto& trace = j["moa"]["trace"];
  REQUIRE(trace.size() == 4);
  CHECK(trace[0]["model"] == "alpha");
  CHECK(trace[0]["references"].empty());
  CHECK(trace[1]["references"] == json::array({0}));
  CHECK(trace[2]["references"] == json::array({0}));
  CHECK(trace[3]["model"] == "alpha");
  CHECK(trace[3]["references"] == json::array({1, 2}));
  CHECK_FALSE(j["moa"].contains("answer"));  // the answer is in choices, once

  // The same DAG built by hand and run in-process answers the same.
  Eigen::MatrixXd adjacency = Eigen::MatrixXd::Zero(4, 4);
  adjacency(0, 1) = adjacency(0, 2) = adjacency(1, 3) = adjacency(2, 3) = 1;
  const auto plan = moa::dag_topology(adjacency, {0, 1, 2, 0}).make_plan();
  const auto* layout = s.server.layouts().find("diamond");
  REQUIRE(layout != nullptr);
  moa::async_executor ex(1);
  const auto local =
      ex.execute(plan, layout->refs, moa::make_request("Why is the sky blue?"), moa::run_options{});
  REQUIRE(local.ok());
  CHECK(j["choices"][0]["message"]["content"] == local.answer);
}

TEST_CASE("Serve.dag_layouts_are_checked_when_the_roster_is_read") {
  const auto fails = [](const std::string& layout, const std::string& names) {
    const auto text = R"({"models": {"a": {"kind": "synthetic"}, "b": {"kind": "synthetic"}},
                          "layouts": {"d": )" +
                      layout + "}}";
    try {
      (void)moa::config::parse_roster(json::parse(text));
    } catch (const moa::config::config_error& e) {
      CHECK_MESSAGE(std::string(e.what()).find(names) != std::string::npos, e.what());
      return true;
    }
    return false;
  };
  CHECK(fails(R"({"nodes": ["a", "b"], "edges": [[0, 1], [1, 0]]})", "layouts.d.edges"));  // cycle
  CHECK(fails(R"({"nodes": ["a", "b"]})", "layouts.d.edges"));  // two sinks
  CHECK(fails(R"({"nodes": ["a", "b"], "edges": [[0, 2]]})", "layouts.d.edges[0]"));
  CHECK(fails(R"({"nodes": ["a", "b"], "edges": [[0, 0]]})", "layouts.d.edges[0]"));
  CHECK(fails(R"({"nodes": ["a", "b"], "edges": [[0, -1]]})", "layouts.d.edges[0]"));
  CHECK(fails(R"({"nodes": ["a", "c"], "edges": [[0, 1]]})", "names model \"c\""));
  CHECK(fails(R"({"nodes": ["a", "b"], "edges": [[0, 1]], "aggregator": "a"})", "layouts.d.nodes"));
  CHECK(fails(R"({"nodes": ["a", "b"], "edges": [[0, 1]], "policy": "vote"})", "layouts.d.policy"));
  CHECK(fails(R"({"edges": [[0, 1]], "aggregator": "a"})", "layouts.d.edges"));
  CHECK(fails(R"({"nodes": [], "edges": []})", "layouts.d.nodes"));
  CHECK_FALSE(fails(R"({"nodes": ["a", "b", "a"], "edges": [[0, 2], [1, 2]]})", ""));
}

TEST_CASE("Serve.streaming_sends_openai_chunks_and_ends_in_done") {
  served s(synthetic_moa(), moa::serve::synthetic_backends);
  const auto plain =
      json::parse(http("POST", s.base + "/v1/chat/completions", chat_body("moa").dump()).body);
  auto body = chat_body("moa", true);
  body["stream_options"] = {{"include_usage", true}};
  const auto r = http("POST", s.base + "/v1/chat/completions", body.dump());
  REQUIRE(r.status == 200);
  CHECK(r.header("content-type") == "text/event-stream");
  const auto ev = parse_sse(r.body);
  CHECK(ev.done);
  REQUIRE(ev.chunks.size() >= 4);  // role, >= 1 token, finish, usage
  std::string text;
  for (const auto& c : ev.chunks) {
    CHECK(c["object"] == "chat.completion.chunk");
    CHECK(c["model"] == "moa");
    CHECK(c["id"] == ev.chunks.front()["id"]);
    if (!c["choices"].empty() && c["choices"][0]["delta"].contains("content"))
      text += c["choices"][0]["delta"]["content"].get<std::string>();
  }
  CHECK(ev.chunks.front()["choices"][0]["delta"]["role"] == "assistant");
  // The aggregator's answer came in more than one token chunk, and adds up to the plain answer.
  CHECK(ev.chunks.size() >= 5);
  CHECK(text == plain["choices"][0]["message"]["content"]);
  const auto& finish = ev.chunks[ev.chunks.size() - 2];
  CHECK(finish["choices"][0]["finish_reason"] == "stop");
  const auto& usage = ev.chunks.back();
  CHECK(usage["choices"].empty());
  CHECK(usage["usage"] == plain["usage"]);

  SUBCASE("a policy's answer comes as one chunk") {
    const auto v = parse_sse(
        http("POST", s.base + "/v1/chat/completions", chat_body("vote", true).dump()).body);
    CHECK(v.done);
    REQUIRE(v.chunks.size() == 3);
    CHECK_FALSE(v.chunks[1]["choices"][0]["delta"]["content"].get<std::string>().empty());
  }
}

TEST_CASE("Serve.trace_on_request") {
  served s(synthetic_moa(), moa::serve::synthetic_backends);
  auto body = chat_body("moa");
  body["moa"] = {{"trace", true}};
  const auto j = json::parse(http("POST", s.base + "/v1/chat/completions", body.dump()).body);
  REQUIRE(j.contains("moa"));
  CHECK(j["moa"]["status"] == "ok");
  REQUIRE(j["moa"]["trace"].size() == 7);
  CHECK(j["moa"]["trace"][6]["role"] == "aggregator");
  CHECK(j["moa"]["trace"][6]["model"] == "alpha");
  CHECK(j["moa"]["trace"][6]["references"].size() == 3);
  std::uint64_t tokens = 0;
  for (const auto& c : j["moa"]["trace"])
    tokens += c["prompt_tokens"].get<std::uint64_t>() + c["completion_tokens"].get<std::uint64_t>();
  CHECK(tokens == j["usage"]["total_tokens"]);

  const auto h = json::parse(
      http("POST", s.base + "/v1/chat/completions", chat_body("moa").dump(), {"X-Moa-Trace: 1"})
          .body);
  CHECK(h["moa"]["trace"].size() == 7);

  auto streamed = chat_body("moa", true);
  streamed["moa"] = {{"trace", true}};
  const auto ev = parse_sse(http("POST", s.base + "/v1/chat/completions", streamed.dump()).body);
  REQUIRE_FALSE(ev.chunks.empty());
  CHECK(ev.chunks.back()["moa"]["trace"].size() == 7);
}

TEST_CASE("Serve.bad_requests_get_the_openai_error_shape") {
  moa::serve::server_options opt;
  opt.max_body_bytes = 1024;
  served s(synthetic_moa(), moa::serve::synthetic_backends, opt);
  const auto url = s.base + "/v1/chat/completions";
  auto post = [&](const std::string& b) { return http("POST", url, b); };

  const auto bad_json = post("{\"model\": ");
  check_error_shape(bad_json, 400);
  CHECK(json::parse(bad_json.body)["error"]["code"] == "invalid_json");

  auto param_of = [](const reply& r) { return json::parse(r.body)["error"]["param"]; };
  const auto no_messages = post(R"({"model": "moa"})");
  check_error_shape(no_messages, 400);
  CHECK(param_of(no_messages) == "messages");
  const auto no_model = post(R"({"messages": [{"role": "user", "content": "hi"}]})");
  check_error_shape(no_model, 400);
  CHECK(param_of(no_model) == "model");

  const std::vector<std::pair<std::string, std::string>> wrong = {
      {R"({"model": "moa", "messages": "hi"})", "messages"},
      {R"({"model": "moa", "messages": [[]]})", "messages[0]"},
      {R"({"model": "moa", "messages": [{"role": 1, "content": "hi"}]})", "messages[0].role"},
      {R"({"model": "moa", "messages": [{"role": "robot", "content": "hi"}]})", "messages[0].role"},
      {R"({"model": "moa", "messages": [{"role": "user"}]})", "messages[0].content"},
      {R"({"model": "moa", "messages": [{"role": "user", "content": 5}]})", "messages[0].content"},
      {R"({"model": "moa", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
       "messages[0].content[0]"},
      {R"({"model": 7, "messages": [{"role": "user", "content": "hi"}]})", "model"},
      {R"({"model": "moa", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"})",
       "stream"},
      {R"({"model": "moa", "messages": [{"role": "user", "content": "hi"}], "temperature": 3})",
       "temperature"},
      {R"({"model": "moa", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0})",
       "max_tokens"},
      {R"({"model": "moa", "messages": [{"role": "user", "content": "hi"}], "n": 2})", "n"},
      {R"({"model": "moa", "messages": [{"role": "user", "content": "hi"}], "moa": {"x": 1}})",
       "moa.x"},
  };
  for (const auto& w : wrong) {
    CAPTURE(w.first);
    const auto r = post(w.first);
    check_error_shape(r, 400);
    CHECK(param_of(r) == w.second);
  }
  // Text parts are accepted, as the OpenAI API accepts them.
  CHECK(post(R"({"model": "moa", "messages": [{"role": "user", "content": [{"type": "text",
             "text": "hi"}]}]})")
            .status == 200);

  const auto unknown = post(chat_body("nope").dump());
  check_error_shape(unknown, 404);
  CHECK(json::parse(unknown.body)["error"]["code"] == "model_not_found");

  auto big = chat_body("moa");
  big["messages"][0]["content"] = std::string(4096, 'x');
  check_error_shape(post(big.dump()), 413);

  check_error_shape(http("GET", s.base + "/health", {}, {"X-Big: " + std::string(10000, 'x')}),
                    431);
  check_error_shape(http("GET", url), 405);
  check_error_shape(http("GET", s.base + "/v1/nothing"), 404);
  // The server still answers after all of that.
  CHECK(post(chat_body("moa").dump()).status == 200);
}

TEST_CASE("Serve.api_keys") {
  moa::serve::server_options opt;
  opt.api_keys = {"sk-first", "sk-second"};
  served s(synthetic_moa(), moa::serve::synthetic_backends, opt);
  const auto url = s.base + "/v1/chat/completions";
  const auto body = chat_body("moa").dump();
  const auto none = http("POST", url, body);
  check_error_shape(none, 401);
  CHECK(json::parse(none.body)["error"]["code"] == "invalid_api_key");
  check_error_shape(http("POST", url, body, {"Authorization: Bearer sk-firs"}), 401);
  check_error_shape(http("POST", url, body, {"Authorization: Bearer sk-first2"}), 401);
  check_error_shape(http("GET", s.base + "/v1/models", {}, {"Authorization: sk-first"}), 401);
  CHECK(http("POST", url, body, {"Authorization: Bearer sk-first"}).status == 200);
  CHECK(http("POST", url, body, {"Authorization: Bearer sk-second"}).status == 200);
  CHECK(http("GET", s.base + "/health").status == 200);  // probes need no key
  // The key never appears in the metrics.
  CHECK(http("GET", s.base + "/metrics").body.find("sk-first") == std::string::npos);
}

TEST_CASE("Serve.overload_answers_429_with_retry_after") {
  gate g;
  moa::serve::server_options opt;
  opt.max_in_flight = 1;
  opt.retry_after = std::chrono::seconds(3);
  served s(solo_roster(), gated_factory(g), opt);
  const auto url = s.base + "/v1/chat/completions";
  reply first;
  std::thread t([&] { first = http("POST", url, chat_body("solo").dump()); });
  REQUIRE(eventually([&] { return g.started.load() == 1; }));
  const auto second = http("POST", url, chat_body("solo").dump());
  check_error_shape(second, 429);
  CHECK(second.header("retry-after") == "3");
  CHECK(json::parse(second.body)["error"]["type"] == "rate_limit_error");
  CHECK(g.started.load() == 1);  // the refused request ran nothing
  g.open = true;
  t.join();
  CHECK(first.status == 200);
  CHECK(json::parse(first.body)["choices"][0]["message"]["content"] == "released solo");
  CHECK(http("POST", url, chat_body("solo").dump()).status == 200);  // the slot was given back
  // Counted when each write completes, which may be just after the client has read it.
  auto metrics_show = [&](const std::string& line) {
    return eventually(
        [&] { return http("GET", s.base + "/metrics").body.find(line) != std::string::npos; });
  };
  CHECK(metrics_show("moa_serve_requests_total{route=\"/v1/chat/completions\",code=\"429\"} 1"));
  CHECK(metrics_show("moa_serve_requests_total{route=\"/v1/chat/completions\",code=\"200\"} 2"));
  CHECK(metrics_show("moa_serve_in_flight 0"));
  CHECK(metrics_show("moa_serve_tokens_total{kind=\"prompt\"} 10"));
}

TEST_CASE("Serve.client_disconnect_cancels_the_run") {
  gate g;
  served s(solo_roster(), gated_factory(g));
  const auto url = s.base + "/v1/chat/completions";
  // The client hangs up once the backend is running (and, streaming, once the first chunk came).
  reply r;
  SUBCASE("streaming") {
    r = http("POST", url, chat_body("solo", true).dump(), {}, 60000, [&](const std::string& got) {
      return !(g.started.load() == 1 && got.find("data: ") != std::string::npos);
    });
  }
  SUBCASE("non-streamed") {
    r = http("POST", url, chat_body("solo").dump(), {}, 60000,
             [&](const std::string&) { return g.started.load() != 1; });
  }
  CHECK(r.code == CURLE_ABORTED_BY_CALLBACK);
  // The backend saw its stop token, and the server counts the cancellation and frees the slot.
  CHECK(eventually([&] { return g.stopped.load() == 1; }));
  CHECK(eventually([&] { return s.server.in_flight() == 0; }));
  CHECK(s.server.metrics().cancelled() == 1);
  g.open = true;
  CHECK(http("POST", url, chat_body("solo").dump()).status == 200);
}

TEST_CASE("Serve.drain_finishes_in_flight_requests_and_refuses_new_ones") {
  gate g;
  served s(solo_roster(), gated_factory(g));
  const auto url = s.base + "/v1/chat/completions";
  reply inflight;
  std::thread t([&] { inflight = http("POST", url, chat_body("solo").dump()); });
  REQUIRE(eventually([&] { return g.started.load() == 1; }));
  s.server.drain(std::chrono::seconds(60));
  REQUIRE(eventually([&] { return s.server.draining(); }));
  // No longer accepting: a new connection is refused.
  CHECK(http("GET", s.base + "/health", {}, {}, 5000).code == CURLE_COULDNT_CONNECT);
  g.open = true;
  t.join();
  CHECK(inflight.status == 200);
  CHECK(inflight.header("connection") == "close");
  s.server.wait();  // returns: nothing is left in flight
  CHECK(s.server.in_flight() == 0);
}

TEST_CASE("Serve.drain_bound_cancels_what_is_left") {
  gate g;
  std::optional<served> s;
  s.emplace(solo_roster(), gated_factory(g));
  reply inflight;
  std::thread t([&, url = s->base + "/v1/chat/completions"] {
    inflight = http("POST", url, chat_body("solo").dump());
  });
  REQUIRE(eventually([&] { return g.started.load() == 1; }));
  s->server.drain(std::chrono::milliseconds(0));
  s->server.wait();
  s.reset();  // closes the connections left
  t.join();
  CHECK(inflight.status != 200);  // the run was cut: no answer
  CHECK(eventually([&] { return g.stopped.load() == 1; }));
}

// --- moa serve --adaptive (moa/serve/adaptive.hpp) ----------------------------------------------
// The policy reads the test's clock, never the machine's: each case sets the time of every request,
// so its decisions do not depend on how fast the machine runs.

namespace {

// Synthetic models that count their calls: a refused request must call none.
struct counted_backend {
  std::atomic<int>* calls;
  moa::synthetic_backend inner;
  moa::response generate(const moa::request& r) const {
    calls->fetch_add(1);
    return moa::generate(inner, r);
  }
  [[nodiscard]] std::string_view name() const { return inner.name(); }
};

moa::serve::backend_factory counted_factory(std::atomic<int>& calls) {
  return [&calls](const moa::config::model_spec& m) {
    return moa::serve::hold(counted_backend{&calls, moa::config::make_synthetic(m)}, m.name);
  };
}

// A served "moa" (2 layers of alpha, beta, gamma; aggregator alpha) under the adaptive policy,
// reading the time from `now` (seconds since the server started).
moa::serve::server_options adaptive_options(std::atomic<double>& now, double prior_service) {
  moa::serve::server_options opt;
  opt.adaptive.layout = "moa";
  opt.adaptive.policy.prior_service = {prior_service};
  opt.adaptive.policy.warmup_arrivals = 0;
  opt.adaptive.clock = [&now] { return now.load(); };
  return opt;
}

json traced_body(const std::string& model, bool stream = false) {
  auto b = chat_body(model, stream);
  b["moa"] = {{"trace", true}};
  return b;
}

bool metrics_have(const std::string& base, const std::string& line) {
  return eventually(
      [&] { return http("GET", base + "/metrics").body.find(line) != std::string::npos; });
}

}  // namespace

TEST_CASE("Serve.adaptive_refuses_over_capacity_with_429_and_runs_nothing") {
  // Each model is believed to take 100 s a call and z = 0 takes the estimates as they are: the
  // first request (no rate seen yet) is admitted at the largest layout; the second, one second
  // later, offers about 2 requests/s, far over even (1, 0)'s capacity, and is refused.
  std::atomic<double> now{0};
  std::atomic<int> calls{0};
  auto opt = adaptive_options(now, 100);
  opt.adaptive.policy.z = 0;
  served s(synthetic_moa(), counted_factory(calls), opt);
  const auto url = s.base + "/v1/chat/completions";
  const auto first = http("POST", url, chat_body("moa").dump());
  CHECK(first.status == 200);
  CHECK(calls.load() == 7);
  now = 1;
  const auto refused = http("POST", url, traced_body("moa").dump());
  check_error_shape(refused, 429);
  CHECK(calls.load() == 7);  // nothing of the refused request ran
  const auto j = json::parse(refused.body);
  CHECK(j["error"]["type"] == "rate_limit_error");
  CHECK(j["error"]["code"] == "over_capacity");
  const auto message = j["error"]["message"].get<std::string>();
  CHECK(message.find("utilisation of model \"alpha\"") != std::string::npos);
  CHECK(message.find("over the target 0.8") != std::string::npos);
  // Retry-After: rate_window ln(utilisation / target), rounded up, at least 1 s.
  const auto& a = j["moa"]["adaptive"];
  CHECK(a["admitted"] == false);
  CHECK(a["reason"] == "over_capacity");
  const double u = a["utilisation"].get<double>();
  CHECK(u > 0.8);
  const auto expected = std::max<long long>(1, (long long)std::ceil(60 * std::log(u / 0.8)));
  CHECK(refused.header("retry-after") == std::to_string(expected));
  CHECK(a["retry_after_s"] == expected);
  // Without the trace the 429 is the plain OpenAI error.
  now = 2;
  const auto plain = http("POST", url, chat_body("moa").dump());
  check_error_shape(plain, 429);
  CHECK_FALSE(json::parse(plain.body).contains("moa"));
  CHECK(calls.load() == 7);
  // Other layouts over the same models are not the policy's: they still run.
  CHECK(http("POST", url, chat_body("beta").dump()).status == 200);
  CHECK(metrics_have(s.base, "moa_serve_adaptive_refused_total{model=\"moa\"} 2"));
  CHECK(metrics_have(
      s.base, "moa_serve_adaptive_prompts_total{model=\"moa\",layers=\"2\",fanout=\"2\"} 1"));
  CHECK(metrics_have(s.base,
                     "moa_serve_requests_total{route=\"/v1/chat/completions\",code=\"429\"} 2"));
}

TEST_CASE("Serve.adaptive_low_load_runs_the_largest_layout_and_traces_the_decision") {
  // 1 ms a call and one request every 1000 s: every layout fits; the best, (2, 2), is kept.
  std::atomic<double> now{0};
  std::atomic<int> calls{0};
  served s(synthetic_moa(), counted_factory(calls), adaptive_options(now, 0.001));
  const auto url = s.base + "/v1/chat/completions";
  for (int i = 0; i < 3; ++i) {
    now = 1000.0 * i;
    const auto r = http("POST", url, traced_body("moa").dump());
    REQUIRE(r.status == 200);
    const auto j = json::parse(r.body);
    const auto& a = j["moa"]["adaptive"];
    CHECK(a["admitted"] == true);
    CHECK(a["layers"] == 2);
    CHECK(a["fanout"] == 2);
    CHECK(a["reason"] == "held");
    CHECK(a["utilisation"].get<double>() < 0.8);
    CHECK(a["proposers"] == json::array({json::array({"alpha", "beta", "gamma"}),
                                         json::array({"alpha", "beta", "gamma"})}));
    CHECK(j["moa"]["trace"].size() == 7);
  }
  CHECK(calls.load() == 21);
  now = 3000;
  const auto ev = parse_sse(http("POST", url, traced_body("moa", true).dump()).body);
  REQUIRE_FALSE(ev.chunks.empty());
  CHECK(ev.chunks.back()["moa"]["adaptive"]["layers"] == 2);
  // Untraced answers carry no decision.
  now = 4000;
  CHECK_FALSE(json::parse(http("POST", url, chat_body("moa").dump()).body).contains("moa"));
  CHECK(metrics_have(
      s.base, "moa_serve_adaptive_prompts_total{model=\"moa\",layers=\"2\",fanout=\"2\"} 5"));
  CHECK(metrics_have(
      s.base, "moa_serve_adaptive_prompts_total{model=\"moa\",layers=\"1\",fanout=\"0\"} 0"));
  CHECK(metrics_have(s.base, "moa_serve_adaptive_refused_total{model=\"moa\"} 0"));
  CHECK(metrics_have(s.base, "moa_serve_adaptive_layout_changes_total{model=\"moa\"} 0"));
}

TEST_CASE("Serve.adaptive_peers_are_taken_in_turn") {
  // Only (1, 1): each request runs the aggregator and one other model, beta and gamma in turn,
  // so each receives M k / (n - 1) = 1/2 call per request, as the policy's traffic equations say.
  std::atomic<double> now{0};
  std::atomic<int> calls{0};
  auto opt = adaptive_options(now, 0.001);
  opt.adaptive.policy.allowed = {{1, 1}};
  served s(synthetic_moa(), counted_factory(calls), opt);
  std::vector<std::string> peers;
  for (int i = 0; i < 4; ++i) {
    now = 1000.0 * i;
    const auto j =
        json::parse(http("POST", s.base + "/v1/chat/completions", traced_body("moa").dump()).body);
    const auto& p = j["moa"]["adaptive"]["proposers"];
    REQUIRE(p.size() == 1);
    REQUIRE(p[0].size() == 2);
    CHECK(p[0][0] == "alpha");
    peers.push_back(p[0][1].get<std::string>());
    CHECK(j["moa"]["trace"].size() == 3);
  }
  CHECK(peers == std::vector<std::string>{"beta", "gamma", "beta", "gamma"});
  CHECK(calls.load() == 12);
}

TEST_CASE("Serve.adaptive_layouts_are_checked") {
  const auto roster = moa::config::parse_roster(json::parse(R"({
    "models": {"a": {"kind": "synthetic"}, "b": {"kind": "synthetic"},
               "c": {"kind": "synthetic"}},
    "layouts": {"moa": {"layers": [["a", "b", "c"], ["a", "b", "c"]], "aggregator": "a"},
                "vote": {"layers": [["a", "b", "c"]], "aggregator": "a", "policy": "vote"},
                "partial": {"layers": [["a", "b"], ["a", "b", "c"]], "aggregator": "a"},
                "dag": {"nodes": ["a", "b"], "edges": [[0, 1]]}}
  })"));
  auto make = [&](const std::string& layout, std::vector<moa::queueing::layout> allowed = {}) {
    moa::serve::server_options opt;
    opt.port = 0;
    opt.adaptive.layout = layout;
    opt.adaptive.policy.allowed = std::move(allowed);
    moa::serve::openai_server server(roster, moa::serve::synthetic_backends, opt);
  };
  CHECK_NOTHROW(make("moa"));
  CHECK_THROWS_WITH_AS(make("nope"), doctest::Contains("no layout named \"nope\""),
                       moa::config::config_error);
  CHECK_THROWS_WITH_AS(make("vote"), doctest::Contains("policy vote"), moa::config::config_error);
  CHECK_THROWS_WITH_AS(make("partial"), doctest::Contains("every model"),
                       moa::config::config_error);
  CHECK_THROWS_WITH_AS(make("dag"), doctest::Contains("DAG"), moa::config::config_error);
  CHECK_THROWS_WITH_AS(make("a"), doctest::Contains("single model"), moa::config::config_error);
  CHECK_THROWS_WITH_AS(make("moa", {{3, 1}}), doctest::Contains("deeper"),
                       moa::config::config_error);
  CHECK_THROWS_WITH_AS(make("moa", {{1, 3}}), doctest::Contains("fan-out"),
                       moa::config::config_error);
  // The default allowed set: every (M, k) the layout holds and (1, 0), most calls first.
  const auto d = moa::serve::adaptive_layout::default_layouts(2, 3);
  REQUIRE(d.size() == 5);
  CHECK(d[0].layers == 2);
  CHECK(d[0].fanout == 2);
  CHECK(d[4].layers == 1);
  CHECK(d[4].fanout == 0);
  // A roster layout's "adaptive" is true, false or an object (moa serve reads the object).
  CHECK(moa::config::parse_roster(json::parse(R"({"models": {"a": {}, "b": {}},
    "layouts": {"l": {"layers": [["a", "b"]], "aggregator": "a",
                      "adaptive": {"target": 0.7}}}})"))
            .layouts[0]
            .adaptive["target"] == 0.7);
  CHECK_THROWS_WITH_AS(moa::config::parse_roster(json::parse(R"({"models": {"a": {}},
    "layouts": {"l": {"aggregator": "a", "adaptive": 1}}})")),
                       doctest::Contains("layouts.l.adaptive"), moa::config::config_error);
}

TEST_CASE("Serve.parse_chat_request_reads_what_moa_uses") {
  const auto r = moa::serve::parse_chat_request(R"({"model": "m", "messages": [
      {"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"},
      {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}],
      "max_tokens": 64, "temperature": 0.2, "stop": ["\n"], "seed": 9, "top_p": 0.5,
      "user": "u1", "stream": false})");
  CHECK(r.model == "m");
  REQUIRE(r.request.messages.size() == 4);
  CHECK(r.request.messages[0].role == moa::role::system);
  CHECK(r.request.messages[2].role == moa::role::assistant);
  CHECK(r.request.sampling.max_tokens == 64);
  CHECK(r.request.sampling.temperature == doctest::Approx(0.2));
  CHECK(r.request.sampling.stop == std::vector<std::string>{"\n"});
  CHECK(r.request.sampling.seed == 9U);
  CHECK_FALSE(r.stream);
}

#ifdef MOA_CLI_PATH
namespace {

// `moa serve` as a process, its stdout on a pipe: the port is read from its first line.
struct server_process {
  pid_t pid = -1;
  std::string base;
  explicit server_process(std::vector<std::string> args) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    args.insert(args.begin(), {MOA_CLI_PATH, "serve", "--listen", "127.0.0.1:0"});
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    REQUIRE(posix_spawn(&pid, MOA_CLI_PATH, &fa, nullptr, argv.data(), environ) == 0);
    posix_spawn_file_actions_destroy(&fa);
    ::close(fds[1]);
    FILE* out = ::fdopen(fds[0], "r");
    char line[512] = {};
    REQUIRE(std::fgets(line, sizeof line, out) != nullptr);
    std::fclose(out);
    const std::string l(line);
    const auto at = l.find("http://");
    REQUIRE(at != std::string::npos);
    base = l.substr(at, l.find(' ', at) - at);
  }
  int wait_exit() {
    int status = 0;
    ::waitpid(pid, &status, 0);
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  ~server_process() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
  server_process(const server_process&) = delete;
  server_process& operator=(const server_process&) = delete;
};

bool in_flight_is(const std::string& base, int n) {
  const auto r = http("GET", base + "/health", {}, {}, 5000);
  const auto j = json::parse(r.body, nullptr, false);
  return r.status == 200 && j.is_object() && j.value("in_flight", -1) == n;
}

}  // namespace

TEST_CASE("Serve.program_drains_on_sigterm_and_exits_0") {
  // Synthetic models of 400 ms mean latency: a 2-layer run takes seconds, long enough to be seen
  // in flight; --drain-timeout is far above it, so the drain lets it finish.
  server_process p({"--latency-ms", "400", "--drain-timeout", "300"});
  reply r;
  std::thread t(
      [&] { r = http("POST", p.base + "/v1/chat/completions", chat_body("moa").dump()); });
  REQUIRE(eventually([&] { return in_flight_is(p.base, 1); }));
  ::kill(p.pid, SIGTERM);
  CHECK(p.wait_exit() == 0);
  t.join();
  CHECK(r.status == 200);
  CHECK_FALSE(json::parse(r.body)["choices"][0]["message"]["content"].get<std::string>().empty());
}

TEST_CASE("Serve.program_second_signal_exits_at_once") {
  server_process p({"--latency-ms", "60000", "--drain-timeout", "3600"});
  std::thread t([&] { http("POST", p.base + "/v1/chat/completions", chat_body("moa").dump()); });
  REQUIRE(eventually([&] { return in_flight_is(p.base, 1); }));
  ::kill(p.pid, SIGTERM);
  std::this_thread::sleep_for(50ms);  // the order of the two signals is what matters, not the gap
  ::kill(p.pid, SIGINT);
  CHECK(p.wait_exit() == 128 + SIGINT);
  t.join();
}

TEST_CASE("Serve.program_rejects_bad_options") {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"--listen", "nowhere"},
           {"--listen", "127.0.0.1:70000"},
           {"--max-in-flight", "0"},
           {"--target", "0.5"},  // an --adaptive option without --adaptive
           {"--adaptive", "--layouts", "3x2"},
           {"--adaptive", "--rate-window", "0"},
           {"--adaptive", "--adaptive-layout", "nope"}}) {
    std::vector<std::string> a = {MOA_CLI_PATH, "serve"};
    a.insert(a.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& x : a) argv.push_back(x.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    REQUIRE(posix_spawn(&pid, MOA_CLI_PATH, nullptr, nullptr, argv.data(), environ) == 0);
    int status = 0;
    ::waitpid(pid, &status, 0);
    CAPTURE(args.back());
    CHECK(WEXITSTATUS(status) == 2);
  }
}
#endif
