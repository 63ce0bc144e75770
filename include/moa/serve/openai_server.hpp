// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// An OpenAI-compatible HTTP server whose models are MoA layouts of a roster, so any OpenAI
/// client (the official SDKs, curl, editors, agents) can use a MoA where a model goes.
///
/// | route                        | what                                                         |
/// |------------------------------|--------------------------------------------------------------|
/// | `POST /v1/chat/completions`  | runs the layout named by `model`; `stream: true` answers SSE |
/// | `GET /v1/models`             | one entry per layout (and per model: its baseline layout)    |
/// | `GET /health`                | 200 `{"status":"ok"}`; 503 while draining                    |
/// | `GET /metrics`               | Prometheus text: requests by status, in flight, latency      |
///
/// @code{.cpp}
/// moa::serve::openai_server server(roster, moa::serve::roster_backends, {.port = 0});
/// server.start();                      // binds, listens, returns
/// std::cout << server.port() << '\n';  // the port bound (an ephemeral one for port 0)
/// server.drain(std::chrono::seconds(30));  // on SIGTERM: stop accepting, finish in flight
/// server.wait();
/// @endcode
///
/// Why Boost.Beast: its connections are asynchronous on an io_context, so the server needs its
/// I/O threads and nothing per connection, and a run's completion (moa::async_executor's
/// callback) is posted to the connection's strand like any other Asio event. The runs themselves
/// execute on a moa::thread_pool: asynchronous backends (the OpenAI backend's curl_multi loop)
/// park no thread there, synchronous ones hold a worker for their call, never an I/O thread.
///
/// Extensions to the OpenAI wire format: request `"moa": {"trace": true}` (or the header
/// `X-Moa-Trace: 1`) adds `"moa": {"status", "trace", "aggregation"}` to the answer (to the last
/// chunk when streaming); a degraded answer always carries `"moa": {"status": "degraded", ...}`.

#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "moa/config/roster.hpp"
#include "moa/core/error.hpp"
#include "moa/core/result_json.hpp"
#include "moa/exec/async.hpp"
#include "moa/exec/thread_pool.hpp"
#include "moa/serve/adaptive.hpp"
#include "moa/serve/status_endpoint.hpp"

namespace moa::serve {

/// @brief A roster model made ready to call: the object, and a handle the async executor calls
/// it through (asynchronously when the backend is an AsyncBackend).
struct model_handle {
  std::shared_ptr<const void> owner{};
  async_backend_ref ref{};
};

/// @brief Wraps a backend (synchronous or asynchronous) into a model_handle.
template <class B>
model_handle hold(B backend, std::string name) {
  auto p = std::make_shared<B>(std::move(backend));
  async_backend_ref ref(*p, std::move(name));
  return {std::move(p), std::move(ref)};
}

/// @brief Makes the backend of a roster model. moa/serve/roster_backends.hpp (libcurl) serves
/// OpenAI endpoints; synthetic_backends needs nothing.
using backend_factory = std::function<model_handle(const config::model_spec&)>;

/// @brief The factory that needs no libcurl: `kind: "synthetic"` models only.
inline model_handle synthetic_backends(const config::model_spec& m) {
  if (m.kind != "synthetic")
    MOA_THROW(config::config_error("model \"" + m.name + "\" is of kind \"" + m.kind +
                                   "\": this server was built without its backend (libcurl for "
                                   "\"openai\", ZeroMQ for \"device\")"));
  return hold(config::make_synthetic(m), m.name);
}

/// @brief How the server listens, limits and authenticates.
struct server_options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8000;                 ///< 0: an ephemeral port (see openai_server::port)
  std::size_t io_threads = 2;                ///< threads of the HTTP event loop
  std::size_t workers = 8;                   ///< threads that run synchronous backends' calls
  std::size_t max_in_flight = 64;            ///< chat completions at once; more get 429
  std::size_t max_body_bytes = 1 << 20;      ///< larger request bodies get 413
  std::chrono::seconds retry_after{1};       ///< the Retry-After of a 429
  std::vector<std::string> api_keys{};       ///< accepted Bearer keys; empty: no authentication
  std::chrono::milliseconds run_timeout{0};  ///< bounds each run; 0: none (504 when passed)
  std::chrono::seconds idle_timeout{60};     ///< a connection idle this long between requests
  /// The adaptive layout policy of one layered layout (moa/serve/adaptive.hpp): per request, the
  /// layers and fan-out to run, or 429 `over_capacity`. Off while `adaptive.layout` is empty.
  adaptive_serve_options adaptive{};
};

/// @brief Counters for GET /metrics (Prometheus text format 0.0.4).
class server_metrics {
 public:
  static constexpr std::array<double, 12> buckets = {0.0005, 0.001, 0.005, 0.01, 0.05, 0.1,
                                                     0.5,    1.0,   5.0,   10.0, 30.0, 120.0};

  void record(std::string_view route, unsigned status, double seconds) {
    std::lock_guard lock(mutex_);
    ++requests_[{std::string(route), status}];
    if (route != "/v1/chat/completions") return;
    ++latency_count_;
    latency_sum_ += seconds;
    for (std::size_t i = 0; i < buckets.size(); ++i)
      if (seconds <= buckets[i]) ++latency_buckets_[i];
  }
  void add_tokens(const usage& u) {
    prompt_tokens_.fetch_add(u.prompt_tokens, std::memory_order_relaxed);
    completion_tokens_.fetch_add(u.completion_tokens, std::memory_order_relaxed);
  }
  /// Runs cancelled because their client went away.
  void add_cancelled() { cancelled_.fetch_add(1, std::memory_order_relaxed); }
  [[nodiscard]] std::uint64_t cancelled() const noexcept {
    return cancelled_.load(std::memory_order_relaxed);
  }

  [[nodiscard]] std::string render(std::size_t in_flight) const {
    std::ostringstream os;
    std::lock_guard lock(mutex_);
    os << "# HELP moa_serve_requests_total HTTP requests answered, by route and status.\n"
          "# TYPE moa_serve_requests_total counter\n";
    for (const auto& [key, n] : requests_)
      os << "moa_serve_requests_total{route=\"" << key.first << "\",code=\"" << key.second << "\"} "
         << n << '\n';
    os << "# HELP moa_serve_in_flight Chat completions being run.\n"
          "# TYPE moa_serve_in_flight gauge\nmoa_serve_in_flight "
       << in_flight << '\n';
    os << "# HELP moa_serve_request_seconds Chat completion latency, request read to answer "
          "written.\n# TYPE moa_serve_request_seconds histogram\n";
    for (std::size_t i = 0; i < buckets.size(); ++i)
      os << "moa_serve_request_seconds_bucket{le=\"" << buckets[i] << "\"} " << latency_buckets_[i]
         << '\n';
    os << "moa_serve_request_seconds_bucket{le=\"+Inf\"} " << latency_count_ << '\n'
       << "moa_serve_request_seconds_sum " << latency_sum_ << '\n'
       << "moa_serve_request_seconds_count " << latency_count_ << '\n';
    os << "# HELP moa_serve_tokens_total Tokens over every backend call of every run.\n"
          "# TYPE moa_serve_tokens_total counter\n"
       << "moa_serve_tokens_total{kind=\"prompt\"} " << prompt_tokens_.load() << '\n'
       << "moa_serve_tokens_total{kind=\"completion\"} " << completion_tokens_.load() << '\n';
    os << "# HELP moa_serve_cancelled_total Runs cancelled because the client disconnected.\n"
          "# TYPE moa_serve_cancelled_total counter\nmoa_serve_cancelled_total "
       << cancelled_.load() << '\n';
    return os.str();
  }

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, unsigned>, std::uint64_t> requests_;
  std::array<std::uint64_t, buckets.size()> latency_buckets_{};
  std::uint64_t latency_count_ = 0;
  double latency_sum_ = 0.0;
  std::atomic<std::uint64_t> prompt_tokens_{0}, completion_tokens_{0}, cancelled_{0};
};

/// @brief An error answered in the OpenAI shape: `{"error": {message, type, param, code}}`.
struct api_error {
  unsigned status = 400;
  std::string message{};
  std::string type = "invalid_request_error";
  std::string param{};  ///< empty: null
  std::string code{};   ///< empty: null

  [[nodiscard]] nlohmann::json to_json() const {
    return {{"error",
             {{"message", message},
              {"type", type},
              {"param", param.empty() ? nlohmann::json(nullptr) : nlohmann::json(param)},
              {"code", code.empty() ? nlohmann::json(nullptr) : nlohmann::json(code)}}}};
  }
};

/// @brief A validated chat completion request.
struct chat_request {
  std::string model{};
  moa::request request{};
  bool stream = false;
  bool include_usage = false;  ///< stream_options.include_usage
  bool trace = false;          ///< the "moa": {"trace": true} extension
};

namespace detail {

[[noreturn]] inline void bad(std::string param, std::string message, std::string code = {}) {
  throw api_error{.status = 400,
                  .message = std::move(message),
                  .param = std::move(param),
                  .code = std::move(code)};
}

inline std::string message_content(const nlohmann::json& c, const std::string& path) {
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) bad(path, path + " must be a string or an array of text parts");
  std::string out;
  for (std::size_t i = 0; i < c.size(); ++i) {
    const auto& part = c[i];
    const auto p = path + "[" + std::to_string(i) + "]";
    if (!part.is_object() || !part.contains("type") || part["type"] != "text" ||
        !part.contains("text") || !part["text"].is_string())
      bad(p, p + " must be {\"type\": \"text\", \"text\": string} (only text is supported)");
    out += part["text"].get<std::string>();
  }
  return out;
}

}  // namespace detail

/// @brief Parses and validates a chat completion body; throws api_error (400) naming the field.
/// Fields moa does not use (top_p, user, ...) are accepted and ignored, as other
/// OpenAI-compatible servers do; fields it uses are checked for type and range.
inline chat_request parse_chat_request(std::string_view body) {
  using detail::bad;
  auto j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded()) bad("", "the request body is not valid JSON", "invalid_json");
  if (!j.is_object()) bad("", "the request body must be a JSON object");
  chat_request out;
  const auto model = j.find("model");
  if (model == j.end() || !model->is_string() || model->get<std::string>().empty())
    bad("model", "model is required: a non-empty string naming a layout (GET /v1/models)");
  out.model = model->get<std::string>();
  const auto msgs = j.find("messages");
  if (msgs == j.end() || !msgs->is_array() || msgs->empty())
    bad("messages", "messages is required: a non-empty array of {role, content}");
  for (std::size_t i = 0; i < msgs->size(); ++i) {
    const auto& m = (*msgs)[i];
    const auto path = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) bad(path, path + " must be an object {role, content}");
    const auto role = m.find("role");
    if (role == m.end() || !role->is_string())
      bad(path + ".role", path + ".role is required: system, developer, user or assistant");
    const auto r = role->get<std::string>();
    moa::message msg;
    if (r == "system" || r == "developer")
      msg.role = moa::role::system;
    else if (r == "user")
      msg.role = moa::role::user;
    else if (r == "assistant")
      msg.role = moa::role::assistant;
    else
      bad(path + ".role",
          path + ".role must be system, developer, user or assistant, not \"" + r + "\"");
    const auto content = m.find("content");
    if (content == m.end()) bad(path + ".content", path + ".content is required");
    msg.content = detail::message_content(*content, path + ".content");
    out.request.messages.push_back(std::move(msg));
  }
  if (const auto s = j.find("stream"); s != j.end() && !s->is_null()) {
    if (!s->is_boolean()) bad("stream", "stream must be a boolean");
    out.stream = s->get<bool>();
  }
  if (const auto so = j.find("stream_options"); so != j.end() && !so->is_null()) {
    if (!so->is_object()) bad("stream_options", "stream_options must be an object");
    if (const auto u = so->find("include_usage"); u != so->end()) {
      if (!u->is_boolean())
        bad("stream_options.include_usage", "stream_options.include_usage must be a boolean");
      out.include_usage = u->get<bool>();
    }
  }
  for (const char* key : {"max_tokens", "max_completion_tokens"})
    if (const auto t = j.find(key); t != j.end() && !t->is_null()) {
      if (!t->is_number_integer() || t->get<long long>() < 1 || t->get<long long>() > (1 << 24))
        bad(key, std::string(key) + " must be an integer from 1 to 16777216");
      out.request.sampling.max_tokens = t->get<int>();
    }
  if (const auto t = j.find("temperature"); t != j.end() && !t->is_null()) {
    if (!t->is_number() || t->get<double>() < 0.0 || t->get<double>() > 2.0)
      bad("temperature", "temperature must be a number from 0 to 2");
    out.request.sampling.temperature = t->get<double>();
  }
  if (const auto n = j.find("n"); n != j.end() && !n->is_null())
    if (!n->is_number_integer() || n->get<long long>() != 1)
      bad("n", "n must be 1: a MoA run gives one answer");
  if (const auto s = j.find("seed"); s != j.end() && !s->is_null()) {
    if (!s->is_number_integer()) bad("seed", "seed must be an integer");
    out.request.sampling.seed = s->get<std::uint64_t>();
  }
  if (const auto s = j.find("stop"); s != j.end() && !s->is_null()) {
    if (s->is_string()) {
      out.request.sampling.stop.push_back(s->get<std::string>());
    } else if (s->is_array() && s->size() <= 4) {
      for (const auto& x : *s) {
        if (!x.is_string()) bad("stop", "stop must be a string or an array of up to 4 strings");
        out.request.sampling.stop.push_back(x.get<std::string>());
      }
    } else {
      bad("stop", "stop must be a string or an array of up to 4 strings");
    }
  }
  if (const auto m = j.find("moa"); m != j.end() && !m->is_null()) {
    if (!m->is_object()) bad("moa", "moa must be an object, e.g. {\"trace\": true}");
    for (auto it = m->begin(); it != m->end(); ++it) {
      if (it.key() != "trace") bad("moa." + it.key(), "moa." + it.key() + " is not known (trace)");
      if (!it->is_boolean()) bad("moa.trace", "moa.trace must be a boolean");
      out.trace = it->get<bool>();
    }
  }
  return out;
}

/// @brief The trace extension of an answer: the run as moa::to_json shows it, less what the
/// OpenAI fields of the answer already carry (the text in `choices`, the tokens in `usage`).
inline nlohmann::json trace_json(const result& r) {
  auto out = moa::to_json(r);
  out.erase("answer");
  out.erase("usage");
  return out;
}

/// @brief A layout ready to serve: its plan, backends and policy.
struct served_layout {
  std::string name{};
  std::string description{};
  moa::plan plan{};
  std::vector<async_backend_ref> refs{};
  any_aggregator policy{};
  clock::duration call_timeout = clock::duration::max();
};

/// @brief Builds every layout of a roster (and each model's baseline) once; models are made once
/// and shared by the layouts that call them.
class layout_set {
 public:
  layout_set(const config::roster& roster, const backend_factory& make) {
    std::vector<std::string> names;
    for (const auto& l : roster.layouts) names.push_back(l.name);
    for (const auto& m : roster.models)
      if (std::find(names.begin(), names.end(), m.name) == names.end()) names.push_back(m.name);
    for (const auto& n : names) {
      const auto spec = roster.layout(n);
      served_layout s;
      s.name = n;
      const auto models = spec.models();
      std::chrono::milliseconds longest{0};
      bool all_bounded = true;
      for (const auto& m : models) {
        auto it = handles_.find(m);
        if (it == handles_.end()) it = handles_.emplace(m, make(roster.model(m))).first;
        s.refs.push_back(it->second.ref);
        const auto t = roster.model(m).timeout;
        all_bounded = all_bounded && t.count() > 0;
        longest = std::max(longest, t);
      }
      // One call bound per run: the longest of its models' timeouts, so none is cut below its own.
      if (all_bounded) s.call_timeout = longest;
      auto index = [&](const std::string& m) {
        return static_cast<std::uint32_t>(std::find(models.begin(), models.end(), m) -
                                          models.begin());
      };
      s.policy = config::make_policy(spec, index);
      s.plan = config::make_plan(spec);
      s.description =
          !spec.nodes.empty()
              ? "DAG of " + std::to_string(spec.nodes.size()) + " nodes, sink " + spec.aggregator
          : spec.layers.empty() ? "model " + spec.aggregator
                                : std::to_string(spec.layers.size()) + "-layer MoA, aggregator " +
                                      spec.aggregator + ", policy " + spec.policy;
      layouts_.push_back(std::move(s));
    }
  }

  [[nodiscard]] const served_layout* find(std::string_view name) const noexcept {
    for (const auto& l : layouts_)
      if (l.name == name) return &l;
    return nullptr;
  }
  [[nodiscard]] const std::vector<served_layout>& all() const noexcept { return layouts_; }

 private:
  std::map<std::string, model_handle> handles_;
  std::vector<served_layout> layouts_;
};

/// @brief The server. start() binds and returns; the I/O threads serve until drain() or stop().
class openai_server {
  using tcp = boost::asio::ip::tcp;

 public:
  openai_server(const config::roster& roster, const backend_factory& make, server_options opt)
      : opt_(std::move(opt)),
        layouts_(roster, make),
        pool_(checked(opt_.workers, "workers")),
        executor_(pool_),
        acceptor_(io_),
        drain_timer_(io_) {
    checked(opt_.io_threads, "io_threads");
    checked(opt_.max_in_flight, "max_in_flight");
    checked(opt_.max_body_bytes, "max_body_bytes");
    if (!opt_.adaptive.layout.empty()) {
      const std::string name = opt_.adaptive.layout;
      adaptive_served_ = layouts_.find(name);
      if (adaptive_served_ == nullptr)
        MOA_THROW(config::config_error("moa serve --adaptive: no layout named \"" + name +
                                       "\" in the roster"));
      adaptive_ = std::make_unique<adaptive_layout>(roster.layout(name), opt_.adaptive);
    }
  }
  openai_server(const openai_server&) = delete;
  openai_server& operator=(const openai_server&) = delete;
  ~openai_server() {
    stop();
    wait();
  }

  /// Binds and listens (throws moa::error when it cannot), then starts the I/O threads.
  void start() {
    detail::listen_on(acceptor_, opt_.host, opt_.port, "moa serve");
    port_ = acceptor_.local_endpoint().port();
    accept();
    for (std::size_t i = 0; i < opt_.io_threads; ++i) threads_.emplace_back([this] { io_.run(); });
  }

  /// The port bound (after start()).
  [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
  [[nodiscard]] const layout_set& layouts() const noexcept { return layouts_; }
  [[nodiscard]] const server_metrics& metrics() const noexcept { return metrics_; }
  [[nodiscard]] std::size_t in_flight() const noexcept { return in_flight_.load(); }
  /// The adaptive policy (null unless server_options::adaptive names a layout).
  [[nodiscard]] const adaptive_layout* adaptive() const noexcept { return adaptive_.get(); }

  /// Stops accepting, lets the chat completions in flight finish (at most `bound`; then they are
  /// cancelled), then stops. Returns at once; wait() returns when the server has stopped.
  void drain(clock::duration bound) {
    boost::asio::post(io_, [this, deadline = clock::now() + bound] {
      if (draining_.load()) return;
      boost::system::error_code ignored;
      acceptor_.close(ignored);
      draining_ = true;  // after the close: whoever sees it can no longer connect
      poll_drain(deadline);
    });
  }
  /// Cancels every run and stops the I/O threads.
  void stop() {
    shutdown_.request_stop();
    io_.stop();
  }
  /// Waits for the I/O threads to end (after drain() or stop()).
  void wait() {
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }
  [[nodiscard]] bool draining() const noexcept { return draining_.load(); }

 private:
  class session;

  static std::size_t checked(std::size_t n, const char* what) {
    if (n == 0)
      MOA_THROW(invalid_argument(std::string("moa serve: ") + what + " must be at least 1"));
    return n;
  }

  void accept();  // after session

  void poll_drain(clock::time_point deadline) {
    if ((in_flight_.load() == 0 && unwritten_.load() == 0) || clock::now() >= deadline) {
      stop();
      return;
    }
    drain_timer_.expires_after(std::chrono::milliseconds(5));
    drain_timer_.async_wait([this, deadline](boost::system::error_code ec) {
      if (!ec) poll_drain(deadline);
    });
  }

  [[nodiscard]] bool authorised(std::string_view header) const {
    if (opt_.api_keys.empty()) return true;
    constexpr std::string_view bearer = "Bearer ";
    if (header.substr(0, bearer.size()) != bearer) return false;
    const auto key = header.substr(bearer.size());
    bool ok = false;
    // Compares every key in full, so the time taken does not tell how much of a key matched.
    for (const auto& k : opt_.api_keys) {
      unsigned diff = k.size() != key.size() ? 1U : 0U;
      for (std::size_t i = 0; i < k.size(); ++i)
        diff |= unsigned(static_cast<unsigned char>(k[i]) ^
                         static_cast<unsigned char>(i < key.size() ? key[i] : 0));
      ok = ok || diff == 0;
    }
    return ok;
  }

  [[nodiscard]] nlohmann::json models_json() const {
    nlohmann::json data = nlohmann::json::array();
    for (const auto& l : layouts_.all())
      data.push_back({{"id", l.name},
                      {"object", "model"},
                      {"created", 0},
                      {"owned_by", "moa"},
                      {"description", l.description}});
    return {{"object", "list"}, {"data", data}};
  }

  server_options opt_;
  layout_set layouts_;
  const served_layout* adaptive_served_ = nullptr;  // the layout adaptive_ chooses for
  std::unique_ptr<adaptive_layout> adaptive_;
  server_metrics metrics_;
  std::atomic<std::size_t> in_flight_{0};
  std::atomic<std::size_t> unwritten_{0};  // answers admitted and not yet written
  std::atomic<std::uint64_t> next_id_{0};
  std::atomic<bool> draining_{false};
  std::stop_source shutdown_;
  // The io_context outlives the pool: runs ending during shutdown still post to it.
  boost::asio::io_context io_;
  thread_pool pool_;
  async_executor executor_;
  tcp::acceptor acceptor_;
  boost::asio::steady_timer drain_timer_;
  std::vector<std::thread> threads_;
  std::uint16_t port_ = 0;
};

/// One connection: reads requests, answers them in order; a chat completion runs on the async
/// executor while the connection watches for its client going away.
class openai_server::session : public std::enable_shared_from_this<openai_server::session> {
  using tcp = boost::asio::ip::tcp;
  using string_response = boost::beast::http::response<boost::beast::http::string_body>;

 public:
  session(openai_server& server, tcp::socket socket)
      : server_(server), stream_(std::move(socket)) {}

  void start() {
    boost::asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read(); });
  }

 private:
  // Gives back one count of a counter (a slot of max_in_flight, an answer not yet written). The
  // slot is given back when the run ends, before its answer is written, so a client that has
  // read its answer and asks again is never refused for its own earlier request.
  struct slot {
    std::atomic<std::size_t>* counter;
    explicit slot(std::atomic<std::size_t>& c) : counter(&c) {}
    slot(const slot&) = delete;
    slot& operator=(const slot&) = delete;
    ~slot() { counter->fetch_sub(1); }
  };

  void read() {
    namespace http = boost::beast::http;
    parser_.emplace();
    parser_->body_limit(server_.opt_.max_body_bytes);
    stream_.expires_after(server_.opt_.idle_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                       self->on_read(ec);
                     });
  }

  void on_read(boost::system::error_code ec) {
    namespace http = boost::beast::http;
    started_ = clock::now();
    if (ec == http::error::body_limit) {
      keep_alive_ = false;
      route_ = "other";
      return send_error({.status = 413,
                         .message = "the request body is larger than " +
                                    std::to_string(server_.opt_.max_body_bytes) + " bytes",
                         .code = "request_too_large"});
    }
    if (ec == http::error::header_limit) {
      keep_alive_ = false;
      route_ = "other";
      return send_error({.status = 431,
                         .message = "the request headers are too large",
                         .code = "request_header_fields_too_large"});
    }
    if (ec) return close();
    request_ = parser_->release();
    keep_alive_ = request_.keep_alive() && !server_.draining();
    handle();
  }

  void handle() {
    namespace http = boost::beast::http;
    std::string_view target(request_.target().data(), request_.target().size());
    target = target.substr(0, target.find('?'));
    const auto method = request_.method();
    route_ = target == "/health" || target == "/metrics" || target == "/v1/models" ||
                     target == "/v1/chat/completions"
                 ? std::string(target)
                 : "other";
    if (target == "/health") {
      if (method != http::verb::get) return method_not_allowed("GET");
      if (server_.draining()) return send_json(503, {{"status", "draining"}});
      return send_json(200, {{"status", "ok"}, {"in_flight", server_.in_flight()}});
    }
    if (target == "/metrics") {
      if (method != http::verb::get) return method_not_allowed("GET");
      auto res = make_response(200);
      res.set(http::field::content_type, "text/plain; version=0.0.4");
      res.body() = server_.metrics_.render(server_.in_flight());
      if (server_.adaptive_)
        res.body() += server_.adaptive_->metrics(server_.adaptive_served_->name);
      return send(std::move(res));
    }
    if (!server_.authorised(header(http::field::authorization)))
      return send_error({.status = 401,
                         .message = "a valid API key is required: Authorization: Bearer <key>",
                         .code = "invalid_api_key"});
    if (target == "/v1/models") {
      if (method != http::verb::get) return method_not_allowed("GET");
      return send_json(200, server_.models_json());
    }
    if (target == "/v1/chat/completions") {
      if (method != http::verb::post) return method_not_allowed("POST");
      return chat();
    }
    send_error({.status = 404,
                .message = "no route " + std::string(target) +
                           " (POST /v1/chat/completions, GET /v1/models, /health, /metrics)",
                .code = "not_found"});
  }

  void chat() {
    chat_request req;
    try {
      req = parse_chat_request(request_.body());
    } catch (const api_error& e) {
      return send_error(e);
    }
    layout_ = server_.layouts_.find(req.model);
    if (!layout_)
      return send_error({.status = 404,
                         .message = "the model \"" + req.model +
                                    "\" does not exist: GET /v1/models lists the layouts",
                         .param = "model",
                         .code = "model_not_found"});
    auto trace_header = header("x-moa-trace");
    trace_ = req.trace || trace_header == "1" || trace_header == "true";
    stream_mode_ = req.stream;
    include_usage_ = req.include_usage;
    model_ = req.model;
    // Take a slot, or answer 429 without running anything.
    if (server_.in_flight_.fetch_add(1) >= server_.opt_.max_in_flight) {
      server_.in_flight_.fetch_sub(1);
      auto res =
          error_response({.status = 429,
                          .message = "too many requests in flight (" +
                                     std::to_string(server_.opt_.max_in_flight) + "); retry later",
                          .type = "rate_limit_error",
                          .code = "rate_limit_exceeded"});
      res.set(boost::beast::http::field::retry_after,
              std::to_string(server_.opt_.retry_after.count()));
      return send(std::move(res));
    }
    slot_.emplace(server_.in_flight_);
    // The adaptive policy sees the requests that passed max_in_flight; it refuses at once, before
    // anything runs, when even its smallest layout would overload the layout's models.
    const plan* run_plan = &layout_->plan;
    if (server_.adaptive_ && layout_ == server_.adaptive_served_) {
      choice_ = server_.adaptive_->decide();
      if (!choice_->decision.admitted) {
        slot_.reset();
        auto res = error_response({.status = 429,
                                   .message = server_.adaptive_->refusal_message(*choice_),
                                   .type = "rate_limit_error",
                                   .code = "over_capacity"});
        if (trace_) {
          auto body = nlohmann::json::parse(res.body());
          body["moa"] = {{"adaptive", server_.adaptive_->to_json(*choice_)}};
          res.body() = body.dump();
        }
        res.set(boost::beast::http::field::retry_after,
                std::to_string(choice_->retry_after.count()));
        return send(std::move(res));
      }
      run_plan = choice_->run.get();  // the run copies its plan
    }
    server_.unwritten_.fetch_add(1);
    unwritten_.emplace(server_.unwritten_);
    id_ = "chatcmpl-moa-" + std::to_string(server_.next_id_.fetch_add(1));
    created_ = std::chrono::duration_cast<std::chrono::seconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count();

    run_stop_ = std::make_shared<std::stop_source>();
    shutdown_link_.emplace(server_.shutdown_.get_token(), [s = run_stop_] { s->request_stop(); });
    run_options opt;
    opt.stop = run_stop_->get_token();
    opt.aggregation = layout_->policy;
    opt.call_timeout = layout_->call_timeout;
    if (server_.opt_.run_timeout.count() > 0) opt.timeout = server_.opt_.run_timeout;
    auto self = shared_from_this();
    // Copied here: executor and backend threads post with it, and never touch the stream.
    auto strand = stream_.get_executor();
    if (stream_mode_) {
      // Tokens come on executor or backend threads; each is posted to this connection's strand.
      opt.on_token = [self, strand](std::string_view t) {
        boost::asio::post(strand, [self, text = std::string(t)] { self->on_token(text); });
      };
      write_stream_header();
    }
    running_ = true;
    stream_.expires_never();
    watch_disconnect();
    server_.executor_.execute_async(
        *run_plan, layout_->refs, req.request, opt, {}, [self, strand](result r) {
          boost::asio::post(strand,
                            [self, r = std::move(r)]() mutable { self->finish(std::move(r)); });
        });
  }

  // A run's client is gone when its socket reads end-of-file or fails: cancel the run.
  void watch_disconnect() {
    stream_.socket().async_wait(
        tcp::socket::wait_read, [self = shared_from_this()](boost::system::error_code ec) {
          if (!self->running_) return;
          if (!ec) {
            char c = 0;
            const auto n =
                ::recv(self->stream_.socket().native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
            // Data is a pipelined request: the client is still there.
            if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) return;
          }
          self->cancel_run();
        });
  }

  void cancel_run() {
    if (!running_ || cancelled_) return;
    cancelled_ = true;
    server_.metrics_.add_cancelled();
    run_stop_->request_stop();
  }

  void finish(result r) {
    running_ = false;
    slot_.reset();
    shutdown_link_.reset();
    server_.metrics_.add_tokens(r.usage);
    if (choice_) server_.adaptive_->observe(r);
    if (cancelled_) {
      server_.metrics_.record(route_, 499, seconds_since_start());
      unwritten_.reset();
      return close();
    }
    if (stream_mode_) return finish_stream(r);
    if (!r.has_answer()) return send_error(run_error(r));
    nlohmann::json body = completion_json(r);
    body["choices"] =
        nlohmann::json::array({{{"index", 0},
                                {"message", {{"role", "assistant"}, {"content", r.answer}}},
                                {"finish_reason", "stop"}}});
    send_json(200, body);
  }

  [[nodiscard]] nlohmann::json completion_json(const result& r) const {
    nlohmann::json body = {{"id", id_},
                           {"object", "chat.completion"},
                           {"created", created_},
                           {"model", model_},
                           {"usage", usage_json(r.usage)}};
    if (trace_) {
      body["moa"] = trace_json(r);
      if (choice_) body["moa"]["adaptive"] = server_.adaptive_->to_json(*choice_);
    } else if (r.degraded())
      body["moa"] = {{"status", "degraded"}, {"error", r.error}};
    return body;
  }

  static nlohmann::json usage_json(const usage& u) {
    return {{"prompt_tokens", u.prompt_tokens},
            {"completion_tokens", u.completion_tokens},
            {"total_tokens", u.total()}};
  }

  [[nodiscard]] static api_error run_error(const result& r) {
    if (r.status == run_status::timed_out)
      return {.status = 504,
              .message = "the MoA run passed its deadline: " + r.error,
              .type = "server_error",
              .code = "timeout"};
    return {.status = 502,
            .message = "the MoA run gave no answer: " + r.error,
            .type = "server_error",
            .code = "upstream_error"};
  }

  // --- streaming --------------------------------------------------------------------------------

  [[nodiscard]] nlohmann::json chunk(nlohmann::json delta, nlohmann::json finish) const {
    return {
        {"id", id_},
        {"object", "chat.completion.chunk"},
        {"created", created_},
        {"model", model_},
        {"choices", nlohmann::json::array(
                        {{{"index", 0}, {"delta", std::move(delta)}, {"finish_reason", finish}}})}};
  }

  void write_stream_header() {
    namespace http = boost::beast::http;
    stream_header_ =
        std::make_shared<http::response<http::empty_body>>(http::status::ok, request_.version());
    stream_header_->set(http::field::content_type, "text/event-stream");
    stream_header_->set(http::field::cache_control, "no-cache");
    stream_header_->keep_alive(keep_alive_);
    stream_header_->chunked(true);
    stream_serializer_ =
        std::make_shared<http::response_serializer<http::empty_body>>(*stream_header_);
    writing_ = true;
    http::async_write_header(
        stream_, *stream_serializer_,
        [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
          self->writing_ = false;
          if (ec) return self->write_failed();
          self->pump();
        });
    send_event(chunk({{"role", "assistant"}, {"content", ""}}, nullptr).dump());
  }

  void on_token(const std::string& text) {
    if (!stream_open_) return;
    streamed_any_ = true;
    send_event(chunk({{"content", text}}, nullptr).dump());
  }

  void finish_stream(const result& r) {
    if (!stream_open_) {
      unwritten_.reset();
      return close();
    }
    if (r.has_answer()) {
      // A policy decides the answer at the end: it comes as one chunk.
      if (!streamed_any_ && !r.answer.empty())
        send_event(chunk({{"content", r.answer}}, nullptr).dump());
      auto last = chunk(nlohmann::json::object(), "stop");
      if (trace_ || r.degraded()) last["moa"] = completion_json(r)["moa"];
      send_event(last.dump());
      if (include_usage_) {
        auto u = chunk(nlohmann::json::object(), nullptr);
        u["choices"] = nlohmann::json::array();
        u["usage"] = usage_json(r.usage);
        send_event(u.dump());
      }
    } else {
      send_event(run_error(r).to_json().dump());
    }
    send_event("[DONE]");
    stream_done_ = true;
    stream_status_ = r.has_answer() ? 200U : run_error(r).status;
    pump();
  }

  void send_event(const std::string& data) {
    queue_.push_back("data: " + data + "\n\n");
    pump();
  }

  // Writes queued events one at a time, each an HTTP chunk; after [DONE], the last chunk.
  void pump() {
    namespace http = boost::beast::http;
    if (writing_ || !stream_open_) return;
    auto self = shared_from_this();
    if (!queue_.empty()) {
      writing_ = true;
      boost::asio::async_write(stream_, http::make_chunk(boost::asio::buffer(queue_.front())),
                               [self](boost::system::error_code ec, std::size_t) {
                                 self->writing_ = false;
                                 self->queue_.pop_front();
                                 if (ec) return self->write_failed();
                                 self->pump();
                               });
      return;
    }
    if (!stream_done_) return;
    writing_ = true;
    stream_open_ = false;
    boost::asio::async_write(stream_, http::make_chunk_last(),
                             [self](boost::system::error_code ec, std::size_t) {
                               self->writing_ = false;
                               self->server_.metrics_.record(self->route_, self->stream_status_,
                                                             self->seconds_since_start());
                               self->unwritten_.reset();
                               if (ec || !self->keep_alive_ || self->server_.draining())
                                 return self->close();
                               self->reset_request();
                               self->read();
                             });
  }

  void write_failed() {
    stream_open_ = false;
    queue_.clear();
    cancel_run();
    if (!running_) {
      unwritten_.reset();
      close();
    }
  }

  // --- plain responses --------------------------------------------------------------------------

  string_response make_response(unsigned status) const {
    string_response res{static_cast<boost::beast::http::status>(status), request_.version()};
    res.set(boost::beast::http::field::server, "moa");
    return res;
  }

  string_response error_response(const api_error& e) const {
    auto res = make_response(e.status);
    res.set(boost::beast::http::field::content_type, "application/json");
    res.body() = e.to_json().dump();
    return res;
  }

  void send_error(const api_error& e) { send(error_response(e)); }

  void method_not_allowed(const char* allowed) {
    auto res = error_response(
        {.status = 405, .message = std::string("use ") + allowed, .code = "method_not_allowed"});
    res.set(boost::beast::http::field::allow, allowed);
    send(std::move(res));
  }

  void send_json(unsigned status, const nlohmann::json& body) {
    auto res = make_response(status);
    res.set(boost::beast::http::field::content_type, "application/json");
    res.body() = body.dump();
    send(std::move(res));
  }

  void send(string_response res) {
    const bool keep = keep_alive_ && !server_.draining();
    res.keep_alive(keep);
    res.prepare_payload();
    const unsigned status = res.result_int();
    auto msg = std::make_shared<string_response>(std::move(res));
    boost::beast::http::async_write(
        stream_, *msg,
        [self = shared_from_this(), msg, keep, status](boost::system::error_code ec, std::size_t) {
          self->server_.metrics_.record(self->route_, status, self->seconds_since_start());
          self->unwritten_.reset();
          if (ec || !keep) return self->close();
          self->reset_request();
          self->read();
        });
  }

  void reset_request() {
    stream_mode_ = trace_ = include_usage_ = cancelled_ = streamed_any_ = stream_done_ = false;
    stream_open_ = true;
    layout_ = nullptr;
    choice_.reset();
  }

  void close() {
    boost::system::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
  }

  [[nodiscard]] std::string_view header(boost::beast::string_view name) const {
    const auto it = request_.find(name);
    if (it == request_.end()) return {};
    return {it->value().data(), it->value().size()};
  }
  [[nodiscard]] std::string_view header(boost::beast::http::field f) const {
    const auto it = request_.find(f);
    if (it == request_.end()) return {};
    return {it->value().data(), it->value().size()};
  }

  [[nodiscard]] double seconds_since_start() const {
    return std::chrono::duration<double>(clock::now() - started_).count();
  }

  openai_server& server_;
  boost::beast::tcp_stream stream_;
  boost::beast::flat_buffer buffer_;
  std::optional<boost::beast::http::request_parser<boost::beast::http::string_body>> parser_;
  boost::beast::http::request<boost::beast::http::string_body> request_;
  clock::time_point started_{};
  std::string route_ = "other";
  bool keep_alive_ = false;

  const served_layout* layout_ = nullptr;
  std::optional<adaptive_choice> choice_;  // the adaptive policy's decision, when it chose
  std::string model_, id_;
  std::int64_t created_ = 0;
  bool trace_ = false, stream_mode_ = false, include_usage_ = false;
  bool running_ = false, cancelled_ = false;
  std::optional<slot> slot_;       // of max_in_flight, until the run ends
  std::optional<slot> unwritten_;  // until the answer is written: drain waits for it
  std::shared_ptr<std::stop_source> run_stop_;
  std::optional<std::stop_callback<std::function<void()>>> shutdown_link_;

  std::shared_ptr<boost::beast::http::response<boost::beast::http::empty_body>> stream_header_;
  std::shared_ptr<boost::beast::http::response_serializer<boost::beast::http::empty_body>>
      stream_serializer_;
  std::deque<std::string> queue_;
  bool writing_ = false, stream_open_ = true, stream_done_ = false, streamed_any_ = false;
  unsigned stream_status_ = 200;
};

inline void openai_server::accept() {
  acceptor_.async_accept(boost::asio::make_strand(io_),
                         [this](boost::system::error_code ec, tcp::socket socket) {
                           if (ec) return;  // closed (draining) or stopped
                           // Small writes (SSE chunks) leave at once, not after Nagle's wait.
                           socket.set_option(tcp::no_delay(true), ec);
                           std::make_shared<session>(*this, std::move(socket))->start();
                           accept();
                         });
}

}  // namespace moa::serve
