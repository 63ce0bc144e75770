// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// A backend for OpenAI-compatible chat-completion endpoints: llama.cpp's llama-server, vLLM,
/// Ollama, hosted services. `POST {base_url}/chat/completions`, non-streaming or streaming
/// (server-sent events), with retries, deadlines, cancellation and typed errors.
///
/// The only moa header that needs libcurl and nlohmann-json (link `CURL::libcurl` and
/// `nlohmann_json::nlohmann_json`). Split by concern under moa/backends/openai/: options.hpp (the
/// settings and the retry policy), protocol.hpp (the wire format), errors.hpp (the typed errors),
/// transfer.hpp (one attempt on libcurl, shared by both paths) and usage.hpp (token accounting);
/// this header holds the backend: the synchronous path, the asynchronous I/O thread, and one
/// retry_state that both use. See docs/HTTP.md for the whole story.
///
/// | concern      | behaviour                                                                  |
/// |--------------|----------------------------------------------------------------------------|
/// | transport    | libcurl, one easy+multi handle pair per concurrent call, pooled and reused |
/// |              | (keep-alive); the call runs on the caller's thread, no hidden threads     |
/// | async        | generate_async: one shared I/O thread drives every call on one curl_multi |
/// | deadline     | the earlier of request::deadline and openai_options::timeout (default 5   |
/// |              | min; 0: none) bounds every attempt and the waits between them             |
/// | limits       | max_response_bytes caps whole and streamed answers alike; http/https only |
/// | hostile text | invalid UTF-8 from a server is replaced (U+FFFD), never thrown on; the     |
/// |              | user:password and query of a URL never appear in an error or a trace     |
/// | cancellation | request::stop aborts the transfer at once (curl_multi_wakeup)              |
/// | retries      | connection errors, 429, 5xx: exponential backoff with jitter, Retry-After |
/// | errors       | http_error (status, server message, request id), context_length_error,     |
/// |              | timeout_error, cancelled_error                                             |

#include <curl/curl.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <future>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "moa/backends/openai/errors.hpp"
#include "moa/backends/openai/options.hpp"
#include "moa/backends/openai/protocol.hpp"
#include "moa/backends/openai/transfer.hpp"
#include "moa/backends/openai/usage.hpp"
#include "moa/core/async_backend.hpp"
#include "moa/core/backend.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/core/result.hpp"

namespace moa {

/// @brief A backend for an OpenAI-compatible `POST {base_url}/chat/completions` endpoint.
///
/// Thread-safe: copies share one pool of connections, and concurrent calls each take their own
/// pair of curl handles from it (the pool grows to the peak number of concurrent calls). Each call
/// of generate / generate_stream runs on the calling thread: that path starts no threads of its
/// own (the base URL should name an IP address or a host in /etc/hosts: libcurl's threaded DNS
/// resolver starts a short-lived thread per lookup).
///
/// It is also a moa::AsyncBackend: generate_async / generate_stream_async hand the call to one
/// I/O thread, shared by every openai_backend of the process, which drives all calls in flight on
/// one curl multi handle and calls their completions. The thread starts with the first
/// asynchronous call and is joined when the last backend that used it is destroyed; destroying a
/// backend completes its calls still in flight with moa::cancelled_error.
///
/// @code{.cpp}
/// moa::openai_backend llama({.base_url = "http://127.0.0.1:8080/v1", .name = "llama"});
/// moa::openai_backend gpt({.base_url = "https://api.example.com/v1", .model = "gpt-4o-mini",
///                          .api_key_env = "OPENAI_API_KEY"});
/// auto pipe = moa::make_pipeline<classic>(llama, gpt, llama);
/// moa::response r = llama.generate(moa::make_request("Why is the sky blue?"));
/// @endcode
class openai_backend {
 public:
  explicit openai_backend(openai_options opt = {}) : s_(std::make_shared<shared>(std::move(opt))) {}

  response generate(const request& r) const { return call(r, nullptr); }

  /// Streams the answer: `on_token` receives each piece of content as the server sends it.
  response generate_stream(const request& r, token_callback on_token) const {
    return call(r, &on_token);
  }

  /// Starts the call on the shared I/O thread and returns at once (moa::AsyncBackend). `done` is
  /// called exactly once, on that thread (or on this one if the call cannot start), with the
  /// response or with the exception generate would have thrown. The request is copied: it need
  /// not outlive this call.
  void generate_async(const request& r, completion done) const {
    start_async(r, nullptr, std::move(done));
  }

  /// generate_async, streamed: `on_token` is called on the I/O thread and must stay valid until
  /// `done` is called. It must not destroy the backend.
  void generate_stream_async(const request& r, token_callback on_token, completion done) const {
    start_async(r, &on_token, std::move(done));
  }

  [[nodiscard]] std::string_view name() const noexcept { return s_->name; }
  [[nodiscard]] const openai_options& options() const noexcept { return s_->opt; }
  /// The URL requests go to, as it may be shown (a user:password or query replaced by `***`).
  [[nodiscard]] const std::string& endpoint() const noexcept { return s_->shown; }

  /// Counters since construction, shared by copies.
  struct statistics {
    std::uint64_t calls = 0;     ///< generate / generate_stream / *_async calls
    std::uint64_t attempts = 0;  ///< HTTP attempts, retries included
    std::uint64_t retries = 0;   ///< attempts after a retryable failure
    std::size_t handles = 0;     ///< curl handle pairs created (peak synchronous concurrency)
  };
  [[nodiscard]] statistics stats() const noexcept {
    return {s_->calls.load(), s_->attempts.load(), s_->retries.load(), s_->created.load()};
  }

 private:
  class io_loop;

  struct shared {
    explicit shared(openai_options o) : opt(std::move(o)) {
      if (opt.retry.max_attempts < 1)
        MOA_THROW(invalid_argument("moa::openai_backend: retry.max_attempts must be at least 1"));
      if (opt.base_url.empty())
        MOA_THROW(invalid_argument(
            "moa::openai_backend: base_url is empty; give e.g. http://127.0.0.1:8080/v1"));
      if (!openai::detail::http_scheme(opt.base_url))
        MOA_THROW(invalid_argument("moa::openai_backend: base_url '" +
                                   openai::detail::redact_url(opt.base_url) +
                                   "' is not an http:// or https:// URL"));
      if (opt.timeout.count() < 0)
        MOA_THROW(invalid_argument("moa::openai_backend: timeout is negative; 0 means none"));
      openai::detail::global_init();
      std::string base = opt.base_url;
      while (!base.empty() && base.back() == '/') base.pop_back();
      url = base + "/chat/completions";
      shown = openai::detail::redact_url(url);
      name = !opt.name.empty()    ? opt.name
             : !opt.model.empty() ? opt.model
                                  : openai::detail::redact_url(base);
      key = opt.api_key;
      if (key.empty() && !opt.api_key_env.empty())
        if (const char* k = std::getenv(opt.api_key_env.c_str())) key = k;
    }
    shared(const shared&) = delete;
    shared& operator=(const shared&) = delete;
    // The I/O thread's calls point at this state: they are completed before it goes.
    ~shared();

    std::unique_ptr<openai::detail::handle> acquire() {
      {
        std::lock_guard lock(mutex);
        if (!free.empty()) {
          auto h = std::move(free.back());
          free.pop_back();
          return h;
        }
      }
      created.fetch_add(1, std::memory_order_relaxed);
      return std::make_unique<openai::detail::handle>();
    }
    void release(std::unique_ptr<openai::detail::handle> h) {
      std::lock_guard lock(mutex);
      free.push_back(std::move(h));
    }
    io_loop& loop();

    [[noreturn]] void throw_timeout(int attempts) const {
      MOA_THROW(timeout_error("moa::openai: " + shown + ": no complete answer before the call's " +
                              "deadline (after " + std::to_string(attempts) +
                              " attempt(s)); raise the run's call_timeout or the backend's "
                              "timeout, or lower max_tokens"));
    }
    [[noreturn]] void throw_cancelled() const {
      MOA_THROW(cancelled_error("moa::openai: " + shown + ": the call was cancelled"));
    }
    /// The call's deadline: the request's, or sooner by openai_options::timeout.
    [[nodiscard]] clock::time_point deadline(const request& r) const noexcept {
      if (opt.timeout.count() <= 0) return r.deadline;
      const auto now = clock::now();
      if (r.deadline <= now) return r.deadline;
      // Compared as a distance from now, so a far-away request deadline cannot overflow.
      return r.deadline - now > opt.timeout ? now + opt.timeout : r.deadline;
    }

    // Both paths: set up `easy` for one attempt that collects into `a`.
    void prepare(CURL* easy, openai::detail::attempt& a, const std::string& body,
                 token_callback* on_token) const;
    // Both paths: the attempt's answer once curl is done with it, or its typed error.
    response conclude(openai::detail::attempt& a, CURLcode result, clock::time_point deadline,
                      const std::stop_token& stop, token_callback* on_token) const;
    // Both paths: how long to wait before retrying after `e` ended attempt number `attempt`;
    // throws the final error when the call must not be retried.
    std::chrono::nanoseconds next_wait(const http_error& e, int attempt, std::size_t delivered,
                                       clock::time_point deadline) const;

    openai_options opt;
    std::string url, shown, name, key;  // shown: url as errors and traces may print it
    std::mutex mutex;
    std::vector<std::unique_ptr<openai::detail::handle>> free;
    std::atomic<std::uint64_t> calls{0}, attempts{0}, retries{0};
    std::atomic<std::size_t> created{0};
    std::mutex loop_mutex;
    std::shared_ptr<io_loop> io;  // set by the first asynchronous call
  };

  // One call's retries, whichever path drives it (the caller's thread in a loop, or the I/O
  // thread on timers): the same checks before every attempt and the same decision after a
  // failure, so the two paths cannot drift apart.
  struct retry_state {
    shared* owner = nullptr;
    clock::time_point deadline{};
    std::stop_token stop{};
    int attempt = 0;  // attempts started

    // Starts the next attempt, or throws why there is none: cancelled, or past the deadline.
    void begin() {
      if (stop.stop_requested()) owner->throw_cancelled();
      if (clock::now() >= deadline) owner->throw_timeout(attempt);
      owner->attempts.fetch_add(1, std::memory_order_relaxed);
      ++attempt;
    }
    // When the next attempt may start after `e` ended this one (which delivered `delivered`
    // tokens); throws the final error when there is to be none.
    clock::time_point failed(const http_error& e, std::size_t delivered) {
      const auto wait = owner->next_wait(e, attempt, delivered, deadline);
      owner->retries.fetch_add(1, std::memory_order_relaxed);
      return clock::now() + wait;
    }
  };

  // Returns the handle to the pool on every path, exceptions included.
  struct lease {
    shared& s;
    std::unique_ptr<openai::detail::handle> h;
    ~lease() {
      if (h) s.release(std::move(h));
    }
  };

  response call(const request& r, token_callback* on_token) const {
    s_->calls.fetch_add(1, std::memory_order_relaxed);
    const std::string body = openai::build_request_body(r, s_->opt.model, on_token != nullptr,
                                                        s_->opt.extra, s_->opt.stream_usage);
    retry_state retry{s_.get(), s_->deadline(r), r.stop};
    for (;;) {
      retry.begin();
      std::size_t delivered = 0;
      try {
        return attempt_once(r, retry.deadline, body, on_token, delivered);
      } catch (const http_error& e) {
        sleep_until(retry.failed(e, delivered), r.stop);
      }
    }
  }

  [[noreturn]] static void rethrow(http_error_info info) {
    if (info.kind == http_failure::context_length) MOA_THROW(context_length_error(std::move(info)));
    MOA_THROW(http_error(std::move(info)));
  }

  void sleep_until(clock::time_point until, const std::stop_token& stop) const {
    std::mutex m;
    std::condition_variable_any cv;
    std::unique_lock lock(m);
    cv.wait_until(lock, stop, until, [] { return false; });
    if (stop.stop_requested()) s_->throw_cancelled();
  }

  response attempt_once(const request& r, clock::time_point deadline, const std::string& body,
                        token_callback* on_token, std::size_t& delivered) const {
    lease l{*s_, s_->acquire()};
    CURL* easy = l.h->easy;
    CURLM* multi = l.h->multi;
    openai::detail::attempt a;
    s_->prepare(easy, a, body, on_token);

    if (curl_multi_add_handle(multi, easy) != CURLM_OK)
      MOA_THROW(backend_error("moa::openai: curl_multi_add_handle failed"));
    struct detach {
      CURLM* m;
      CURL* e;
      ~detach() { curl_multi_remove_handle(m, e); }
    } detach_guard{multi, easy};

    // A stop request wakes the poll below at once, from whatever thread requests it.
    std::stop_callback wake(r.stop, [multi] { curl_multi_wakeup(multi); });
    CURLcode result = CURLE_OK;
    for (;;) {
      int running = 0;
      if (const auto mc = curl_multi_perform(multi, &running); mc != CURLM_OK)
        MOA_THROW(backend_error(std::string("moa::openai: curl_multi_perform: ") +
                                curl_multi_strerror(mc)));
      if (running == 0) {
        int left = 0;
        while (CURLMsg* msg = curl_multi_info_read(multi, &left))
          if (msg->msg == CURLMSG_DONE) result = msg->data.result;
        break;
      }
      delivered = a.t.acc.chunks();
      if (r.stop.stop_requested()) s_->throw_cancelled();
      const auto now = clock::now();
      if (now >= deadline) s_->throw_timeout(1);
      // Wake at least every second even without traffic, and at the deadline.
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
      const int wait_ms = static_cast<int>(std::clamp<std::int64_t>(left.count() + 1, 1, 1000));
      curl_multi_poll(multi, nullptr, 0, wait_ms, nullptr);
    }
    delivered = a.t.acc.chunks();
    return s_->conclude(a, result, deadline, r.stop, on_token);
  }

  static bool retryable_curl(CURLcode c) noexcept {
    switch (c) {
      case CURLE_COULDNT_RESOLVE_HOST:
      case CURLE_COULDNT_RESOLVE_PROXY:
      case CURLE_COULDNT_CONNECT:
      case CURLE_OPERATION_TIMEDOUT:  // the connect timeout, the deadline being still ahead
      case CURLE_SEND_ERROR:
      case CURLE_RECV_ERROR:
      case CURLE_GOT_NOTHING:
      case CURLE_PARTIAL_FILE:
      case CURLE_SSL_CONNECT_ERROR:
      case CURLE_HTTP2:
      case CURLE_HTTP2_STREAM:
        return true;
      default:
        return false;
    }
  }

  // --- the asynchronous path ---------------------------------------------------------------

  // An asynchronous call: everything it needs is copied out of the request, which the caller
  // may destroy once generate_async returns.
  struct async_call {
    async_call(shared* o, completion d) : owner(o), done(std::move(d)) {}
    struct waker {
      CURLM* multi;
      void operator()() const noexcept { curl_multi_wakeup(multi); }
    };
    [[nodiscard]] token_callback* tokens() noexcept { return on_token ? &*on_token : nullptr; }

    shared* owner;
    completion done;
    std::string body{};
    retry_state retry{};
    std::optional<token_callback> on_token{};
    clock::time_point wake{};  // without a transfer: when the next attempt starts
    CURL* easy = nullptr;      // the transfer in flight, if any
    std::optional<openai::detail::attempt> current{};
    std::optional<std::stop_callback<waker>> on_stop{};
    bool over = false;  // the outcome is set; completed at the next flush
    std::optional<response> answer{};
    std::exception_ptr error{};
  };

  void start_async(const request& r, token_callback* on_token, completion done) const;

  std::shared_ptr<shared> s_;
};

/// The I/O thread of the asynchronous path: one thread and one curl multi handle for every call
/// in flight of every openai_backend, so that a hundred calls hold one thread, not a hundred.
/// Backends share it through a weak singleton: it lives while a backend that used it lives.
class openai_backend::io_loop {
 public:
  static std::shared_ptr<io_loop> get() {
    static std::mutex m;
    static std::weak_ptr<io_loop> current;
    std::lock_guard lock(m);
    if (auto p = current.lock()) return p;
    auto p = std::make_shared<io_loop>();
    current = p;
    return p;
  }

  io_loop() : core_(std::make_shared<core>()) {
    thread_ = std::thread([c = core_] { c->run(); });
  }
  io_loop(const io_loop&) = delete;
  io_loop& operator=(const io_loop&) = delete;
  ~io_loop() {
    core_->stop();
    // Released by a completion on the I/O thread itself: it cannot join itself, and owns the core
    // until it returns.
    if (thread_.get_id() == std::this_thread::get_id())
      thread_.detach();
    else
      thread_.join();
  }

  void submit(std::unique_ptr<async_call> c) { core_->submit(std::move(c)); }

  /// Completes every call of `owner` with cancelled_error; returns once they are completed.
  void cancel_owner(const shared* owner) {
    core_->cancel_owner(owner, thread_.get_id() == std::this_thread::get_id());
  }

 private:
  class core {
   public:
    core() : multi_(curl_multi_init()) {
      if (!multi_) MOA_THROW(backend_error("moa::openai: cannot create a curl multi handle"));
    }
    core(const core&) = delete;
    core& operator=(const core&) = delete;
    ~core() {
      for (CURL* e : idle_) curl_easy_cleanup(e);
      curl_multi_cleanup(multi_);
    }

    void submit(std::unique_ptr<async_call> c) {
      {
        std::lock_guard lock(mutex_);
        incoming_.push_back(std::move(c));
      }
      curl_multi_wakeup(multi_);
    }

    void stop() {
      {
        std::lock_guard lock(mutex_);
        stopping_ = true;
      }
      curl_multi_wakeup(multi_);
    }

    void cancel_owner(const shared* owner, bool on_this_thread) {
      if (on_this_thread) {  // from a completion: nothing is being iterated, finish them now
        adopt(take_incoming());
        end_owned(owner);
        flush();
        return;
      }
      std::promise<void> done;
      auto f = done.get_future();
      {
        std::lock_guard lock(mutex_);
        cancels_.push_back({owner, &done});
      }
      curl_multi_wakeup(multi_);
      f.wait();
    }

    void run() noexcept {
      for (;;) {
        std::vector<std::unique_ptr<async_call>> in;
        std::vector<cancel_request> cancels;
        bool stopping = false;
        {
          // One critical section: a call submitted before its owner's cancellation is adopted
          // no later than the cancellation is seen.
          std::lock_guard lock(mutex_);
          in.swap(incoming_);
          cancels.swap(cancels_);
          stopping = stopping_;
        }
        adopt(std::move(in));
        for (const auto& c : cancels) end_owned(c.owner);
        if (stopping) {
          // Every backend cancelled its own calls before letting go; these are strays.
          for (auto& c : calls_)
            end(*c, {},
                std::make_exception_ptr(cancelled_error(
                    "moa::openai: the I/O thread stopped while this call was in flight")));
        }
        tick();
        if (!stopping) perform();
        flush();
        for (const auto& c : cancels) c.done->set_value();
        if (stopping) return;
        curl_multi_poll(multi_, nullptr, 0, next_timeout_ms(), nullptr);
      }
    }

   private:
    struct cancel_request {
      const shared* owner;
      std::promise<void>* done;
    };

    std::vector<std::unique_ptr<async_call>> take_incoming() {
      std::lock_guard lock(mutex_);
      return std::exchange(incoming_, {});
    }

    void adopt(std::vector<std::unique_ptr<async_call>> in) {
      for (auto& c : in) {
        // Runs the waker at once if stop was already requested; tick() then sees it.
        c->on_stop.emplace(c->retry.stop, async_call::waker{multi_});
        calls_.push_back(std::move(c));
      }
    }

    void end(async_call& c, std::optional<response> answer, std::exception_ptr error) noexcept {
      if (c.over) return;
      c.over = true;
      detach(c);
      c.answer = std::move(answer);
      c.error = std::move(error);
    }

    void end_owned(const shared* owner) {
      for (auto& c : calls_)
        if (c->owner == owner && !c->over)
          end(*c, {},
              std::make_exception_ptr(
                  cancelled_error("moa::openai: " + owner->shown +
                                  ": the backend was destroyed while this call was in flight")));
    }

    void detach(async_call& c) noexcept {
      if (c.easy == nullptr) return;
      curl_multi_remove_handle(multi_, c.easy);
      idle_.push_back(c.easy);
      c.easy = nullptr;
    }

    CURL* take_easy() {
      if (!idle_.empty()) {
        CURL* e = idle_.back();
        idle_.pop_back();
        return e;
      }
      CURL* e = curl_easy_init();
      if (!e) MOA_THROW(backend_error("moa::openai: cannot create a curl handle"));
      return e;
    }

    // Cancellations, deadlines, and attempts whose time has come (the first, or a retry).
    void tick() {
      const auto now = clock::now();
      for (auto& p : calls_) {
        auto& c = *p;
        if (c.over) continue;
        try {
          if (c.retry.stop.stop_requested()) c.owner->throw_cancelled();
          if (c.easy != nullptr) {
            if (now >= c.retry.deadline) c.owner->throw_timeout(c.retry.attempt);
          } else if (now >= c.wake) {
            start_attempt(c);
          }
        } catch (...) {
          end(c, {}, std::current_exception());
        }
      }
    }

    void start_attempt(async_call& c) {
      c.retry.begin();
      c.current.emplace();
      CURL* e = take_easy();
      try {
        c.owner->prepare(e, *c.current, c.body, c.tokens());
        curl_easy_setopt(e, CURLOPT_PRIVATE, static_cast<void*>(&c));
        if (curl_multi_add_handle(multi_, e) != CURLM_OK)
          MOA_THROW(backend_error("moa::openai: curl_multi_add_handle failed"));
      } catch (...) {
        idle_.push_back(e);
        throw;
      }
      c.easy = e;
    }

    void perform() {
      int running = 0;
      if (const auto mc = curl_multi_perform(multi_, &running); mc != CURLM_OK) {
        const auto e = std::make_exception_ptr(backend_error(
            std::string("moa::openai: curl_multi_perform: ") + curl_multi_strerror(mc)));
        for (auto& c : calls_)
          if (c->easy != nullptr) end(*c, {}, e);
        return;
      }
      int left = 0;
      while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
        if (msg->msg != CURLMSG_DONE) continue;
        const CURLcode result = msg->data.result;
        char* self = nullptr;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &self);
        if (self != nullptr) finished(*reinterpret_cast<async_call*>(self), result);
      }
    }

    // The transfer of `c` ended: its answer, a retry on a timer, or its error.
    void finished(async_call& c, CURLcode result) noexcept {
      std::optional<response> answer;
      std::exception_ptr error;
      try {
        answer = c.owner->conclude(*c.current, result, c.retry.deadline, c.retry.stop, c.tokens());
      } catch (...) {
        error = std::current_exception();
      }
      detach(c);
      if (answer) return end(c, std::move(answer), {});
      try {
        std::rethrow_exception(error);
      } catch (const http_error& e) {
        try {
          c.wake = c.retry.failed(e, c.current->t.acc.chunks());
        } catch (...) {
          end(c, {}, std::current_exception());
        }
      } catch (...) {
        end(c, {}, std::current_exception());
      }
    }

    // Completes the calls that ended. The completions run with nothing being iterated, so they
    // may start calls or destroy a backend (which cancels its calls from here).
    void flush() noexcept {
      std::vector<std::unique_ptr<async_call>> ended;
      for (auto& c : calls_)
        if (c->over) ended.push_back(std::move(c));
      if (ended.empty()) return;
      std::erase(calls_, nullptr);
      for (auto& c : ended) {
        c->on_stop.reset();
        // The error is handed over, not shared: whoever receives it decides on which thread it
        // dies (libstdc++'s exception_ptr counts are invisible to ThreadSanitizer).
        if (c->answer)
          c->done(std::move(*c->answer));
        else
          c->done.fail(std::move(c->error));
      }
    }

    // Until the earliest deadline or retry, and at least once a second.
    [[nodiscard]] int next_timeout_ms() const noexcept {
      const auto now = clock::now();
      auto next = now + std::chrono::seconds(1);
      for (const auto& c : calls_)
        next = std::min(
            next, c->easy != nullptr ? c->retry.deadline : std::min(c->wake, c->retry.deadline));
      if (next <= now) return 0;
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count();
      return static_cast<int>(std::clamp<std::int64_t>(ms + 1, 0, 1000));
    }

    CURLM* multi_;
    std::mutex mutex_;
    std::vector<std::unique_ptr<async_call>> incoming_;  // guarded by mutex_
    std::vector<cancel_request> cancels_;                // guarded by mutex_
    bool stopping_ = false;                              // guarded by mutex_
    // The I/O thread's own.
    std::vector<std::unique_ptr<async_call>> calls_;
    std::vector<CURL*> idle_;
  };

  std::shared_ptr<core> core_;
  std::thread thread_;
};

inline void openai_backend::start_async(const request& r, token_callback* on_token,
                                        completion done) const {
  try {
    s_->calls.fetch_add(1, std::memory_order_relaxed);
    auto c = std::make_unique<async_call>(s_.get(), done);
    c->body = openai::build_request_body(r, s_->opt.model, on_token != nullptr, s_->opt.extra,
                                         s_->opt.stream_usage);
    c->retry = {s_.get(), s_->deadline(r), r.stop};
    if (on_token) c->on_token.emplace(*on_token);
    s_->loop().submit(std::move(c));
  } catch (...) {
    // Not handed over: the call ends here, and `c` (with its copy of done) never completes.
    done.fail(std::current_exception());
  }
}

inline openai_backend::shared::~shared() {
  if (io) io->cancel_owner(this);
}

inline openai_backend::io_loop& openai_backend::shared::loop() {
  std::lock_guard lock(loop_mutex);
  if (!io) io = io_loop::get();
  return *io;
}

inline void openai_backend::shared::prepare(CURL* easy, openai::detail::attempt& a,
                                            const std::string& body,
                                            token_callback* on_token) const {
  auto& t = a.t;
  t.easy = easy;
  t.opt = &opt;
  t.ctx.url = shown;
  t.want_stream = on_token != nullptr;
  t.on_token = on_token;
  t.started = clock::now();

  auto add_header = [&a](const std::string& h) {
    curl_slist* next = curl_slist_append(a.headers.get(), h.c_str());
    if (!next) MOA_THROW(backend_error("moa::openai: out of memory building headers"));
    (void)a.headers.release();
    a.headers.reset(next);
  };
  add_header("Content-Type: application/json");
  add_header(t.want_stream ? "Accept: text/event-stream" : "Accept: application/json");
  add_header("Expect:");  // no 100-continue round trip for large prompts
  if (!key.empty()) add_header("Authorization: Bearer " + key);
  for (const auto& h : opt.headers) add_header(h);

  curl_easy_reset(easy);
  curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
  curl_easy_setopt(easy, CURLOPT_POST, 1L);
  curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body.data());
  curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, a.headers.get());
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &openai::detail::transfer::on_write);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &openai::detail::transfer::on_header);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);  // signals and threads do not mix
  curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, "");  // whatever the build decodes
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(std::max<std::int64_t>(1, opt.connect_timeout.count())));
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, a.curl_message);
  // http and https only, redirects included (never file://, whose content could end up in an
  // error message). CURLOPT_PROTOCOLS_STR is 7.85+; the bitmask is what older libcurl has.
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
  curl_easy_setopt(easy, CURLOPT_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
  curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS,
                   static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
}

inline response openai_backend::shared::conclude(openai::detail::attempt& a, CURLcode result,
                                                 clock::time_point deadline,
                                                 const std::stop_token& stop,
                                                 token_callback* on_token) const {
  auto& t = a.t;
  if (t.error) std::rethrow_exception(t.error);
  if (stop.stop_requested()) throw_cancelled();
  if (!t.decided && result == CURLE_OK) t.decide();  // an empty body

  if (t.too_large) {
    auto info = openai::detail::info_from(t.ctx, http_failure::too_large,
                                          std::to_string(opt.max_response_bytes) + " bytes");
    MOA_THROW(http_error(std::move(info)));
  }
  if (result != CURLE_OK) {
    if (result == CURLE_OPERATION_TIMEDOUT && clock::now() >= deadline) throw_timeout(1);
    std::string what = openai::detail::snippet(
        a.curl_message[0] ? std::string_view(a.curl_message) : curl_easy_strerror(result), 500);
    // A broken stream that already delivered content is cut, not a connection problem to
    // retry: what was delivered cannot be taken back.
    const bool cut = t.streaming && t.acc.chunks() > 0;
    if (!cut && !retryable_curl(result))  // a bad URL, an unsupported scheme: not transient
      MOA_THROW(backend_error("moa::openai: " + shown + ": " + what + " (curl error " +
                              std::to_string(static_cast<int>(result)) +
                              "); check base_url and the options"));
    auto info = openai::detail::info_from(
        t.ctx, cut ? http_failure::stream_cut : http_failure::connection,
        what + " (curl error " + std::to_string(static_cast<int>(result)) + ")");
    if (!t.decided) info.status = 0;
    MOA_THROW(http_error(std::move(info)));
  }

  response out;
  if (t.ctx.status < 200 || t.ctx.status >= 300) {
    openai::throw_status_error(t.body, t.ctx, 1, openai::detail::parse_retry_after(t.retry_after));
  } else if (t.streaming) {
    // An event left open at the end (no blank line after it) is not dispatched: if it was
    // the last, the accumulator reports the stream as cut.
    out = t.acc.finish();
    if (t.first_token != clock::time_point{})
      out.timings.time_to_first_token = t.first_token - t.started;
  } else {
    out = openai::parse_response(t.body, t.ctx);
    if (on_token && !out.text.empty()) (*on_token)(out.text);  // the server did not stream
  }
  out.timings.generation = clock::now() - t.started;
  if (out.model.empty()) out.model = name;
  return out;
}

inline std::chrono::nanoseconds openai_backend::shared::next_wait(
    const http_error& e, int attempt, std::size_t delivered, clock::time_point deadline) const {
  const auto& policy = opt.retry;
  auto info = e.info();
  info.attempts = attempt;
  const bool again = e.retryable() && delivered == 0 && attempt < policy.max_attempts;
  auto wait = policy.backoff(attempt, openai::detail::uniform01());
  if (info.retry_after_s >= 0) {
    const auto ra = std::chrono::duration<double>(info.retry_after_s);
    if (ra > policy.max_retry_after) rethrow(std::move(info));
    wait = std::max(wait, std::chrono::duration_cast<std::chrono::nanoseconds>(ra));
  }
  if (!again || clock::now() + wait >= deadline) rethrow(std::move(info));
  return wait;
}

static_assert(StreamingBackend<openai_backend>);
static_assert(NamedBackend<openai_backend>);
static_assert(AsyncBackend<openai_backend>);

}  // namespace moa
