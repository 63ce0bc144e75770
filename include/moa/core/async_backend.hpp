// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Asynchronous backends: `moa::generate_async(backend, request, completion)` starts a call and
/// returns at once; the backend calls the completion later, on any thread. `async_backend_ref` is
/// the handle the async executor runs, over an asynchronous backend or a synchronous one.
///
/// This is the backend side of asynchrony, so it sits in core/ beside moa::Backend: a backend
/// (moa/backends/openai.hpp) implements it without including any executor. The executor side
/// (schedulers, the async executor) is moa/exec/async.hpp.

#include <atomic>
#include <cstdint>
#include <exception>
#include <future>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "moa/core/backend.hpp"
#include "moa/core/message.hpp"

namespace moa {

namespace detail {

/// What a completion reports to: the run's state.
class completion_target {
 public:
  virtual void complete(std::uint32_t call, response* r, std::exception_ptr e) noexcept = 0;
  virtual void on_deadline() noexcept = 0;

 protected:
  ~completion_target() = default;
};

}  // namespace detail

/// @brief The handle an AsyncBackend calls when its call ends: `done(response)` on success,
/// `done.fail(std::current_exception())` on failure. Copyable; only the first call counts, later
/// ones (and any after the run ended at its deadline or on cancellation) are ignored.
class completion {
 public:
  completion(std::shared_ptr<detail::completion_target> run, std::uint32_t call) noexcept
      : run_(std::move(run)), call_(call) {}

  void operator()(response r) const noexcept { run_->complete(call_, &r, nullptr); }
  void fail(std::exception_ptr e) const noexcept { run_->complete(call_, nullptr, std::move(e)); }

 private:
  std::shared_ptr<detail::completion_target> run_;
  std::uint32_t call_;
};

namespace detail {

void generate_async() = delete;  // poison pill: only members and ADL-found functions count

template <class B>
concept has_member_generate_async = requires(B& b, const request& r, completion c) {
  b.generate_async(r, std::move(c));
};
template <class B>
concept has_adl_generate_async = requires(B& b, const request& r, completion c) {
  generate_async(b, r, std::move(c));
};

struct generate_async_fn {
  template <class B>
  requires has_member_generate_async<typename unwrap_reference<B>::type> ||
      has_adl_generate_async<typename unwrap_reference<B>::type>
  void operator()(B& backend, const request& r, completion c) const {
    auto& b = unwrap(backend);
    if constexpr (has_member_generate_async<std::remove_reference_t<decltype(b)>>)
      b.generate_async(r, std::move(c));
    else
      generate_async(b, r, std::move(c));
  }
};

}  // namespace detail

/// @brief Customisation point: `moa::generate_async(backend, request, completion)`.
inline constexpr detail::generate_async_fn generate_async{};

/// @brief A backend that starts a call and returns at once, calling the completion later.
///
/// Requirements:
/// 1. `b.generate_async(r, done)` or ADL `generate_async(b, r, done)` is valid for `B& b`,
///    `const moa::request& r`, `moa::completion done`;
/// 2. it does not block; `r` stays valid until `done` is called; `done` is called exactly once
///    (with a response or an exception), on any thread, possibly before generate_async returns;
/// 3. it is thread-safe if runs share it.
template <class B>
concept AsyncBackend =
    std::invocable<const detail::generate_async_fn&, B&, const request&, completion>;

namespace detail {
template <class B>
concept has_generate_stream_async = requires(B& b, const request& r, token_callback cb,
                                             completion c) {
  b.generate_stream_async(r, cb, std::move(c));
};
}  // namespace detail

/// @brief A non-owning handle on an asynchronous backend, or on a synchronous one (whose calls
/// the async executor posts to its scheduler).
class async_backend_ref {
 public:
  async_backend_ref() = default;

  template <class B>
  requires(AsyncBackend<B> || Backend<B>) async_backend_ref(B& b, std::string name)
      : object_(std::addressof(b)), name_(std::move(name)) {
    if constexpr (AsyncBackend<B>)
      start_ = [](void* o, const request& r, completion c) {
        moa::generate_async(*static_cast<B*>(o), r, std::move(c));
      };
    if constexpr (detail::has_generate_stream_async<B>)
      start_stream_ = [](void* o, const request& r, token_callback cb, completion c) {
        static_cast<B*>(o)->generate_stream_async(r, cb, std::move(c));
      };
    if constexpr (Backend<B>) {
      generate_ = [](void* o, const request& r) { return moa::generate(*static_cast<B*>(o), r); };
      generate_stream_ = [](void* o, const request& r, token_callback cb) {
        return moa::generate_stream(*static_cast<B*>(o), r, cb);
      };
    }
  }

  /// True when calls are started asynchronously (generate_async).
  [[nodiscard]] bool is_async() const noexcept { return start_ != nullptr; }
  [[nodiscard]] bool valid() const noexcept { return object_ != nullptr; }
  [[nodiscard]] const std::string& name() const noexcept { return name_; }

  void start(const request& r, completion done) const { start_(object_, r, std::move(done)); }

  /// True when started calls can stream their tokens (generate_stream_async).
  [[nodiscard]] bool streams_async() const noexcept { return start_stream_ != nullptr; }
  /// Starts a streaming call; `on_token` must stay valid until `done` is called.
  void start_stream(const request& r, token_callback on_token, completion done) const {
    start_stream_(object_, r, on_token, std::move(done));
  }
  /// A synchronous streaming call of a synchronous backend (every backend streams, at worst the
  /// whole text as one token); an asynchronous-only backend answers as generate() does.
  [[nodiscard]] response generate_stream(const request& r, token_callback on_token) const {
    if (generate_stream_ != nullptr) return generate_stream_(object_, r, on_token);
    auto resp = generate(r);
    if (!resp.text.empty()) on_token(resp.text);
    return resp;
  }

  /// A synchronous call. For an asynchronous-only backend this waits for the completion, which
  /// parks the calling thread: moa does so only for calls made by aggregation policies.
  [[nodiscard]] response generate(const request& r) const {
    if (generate_ != nullptr) return generate_(object_, r);
    struct waiter final : detail::completion_target {
      std::promise<response> promise;
      std::atomic<bool> once{false};
      void complete(std::uint32_t, response* resp, std::exception_ptr e) noexcept override {
        if (once.exchange(true)) return;
        if (resp != nullptr)
          promise.set_value(std::move(*resp));
        else
          promise.set_exception(e);
      }
      void on_deadline() noexcept override {}
    };
    auto w = std::make_shared<waiter>();
    auto result = w->promise.get_future();
    start_(object_, r, completion(w, 0));
    return result.get();
  }

 private:
  void* object_ = nullptr;
  void (*start_)(void*, const request&, completion) = nullptr;
  void (*start_stream_)(void*, const request&, token_callback, completion) = nullptr;
  response (*generate_)(void*, const request&) = nullptr;
  response (*generate_stream_)(void*, const request&, token_callback) = nullptr;
  std::string name_;
};

}  // namespace moa
