// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The backend concept and its customisation points.
///
/// Customisation points (each a niebloid: a member function is tried first, then a free function
/// found by ADL):
/// - `moa::generate(b, request)`, required: a type without it is no backend;
/// - `moa::generate_stream(b, request, cb)`, optional: falls back to generate(), then the whole
///   text as one token;
/// - `moa::backend_name(b)`, optional: falls back to the name the pipeline gives ("backend#i").
///
/// A backend is any type for which `moa::generate(b, req)` returns a moa::response:
/// @code{.cpp}
/// struct echo {
///   moa::response generate(const moa::request& r) { return {.text = std::string(r.prompt())}; }
/// };
/// static_assert(moa::Backend<echo>);
/// @endcode
/// Pass `std::ref(b)` to a pipeline to use a backend without copying it.
///
/// Thread safety: the inline executor calls one backend at a time per run; the concurrent
/// executor calls different backends of a run in parallel, and separate runs may call the same
/// backend in parallel. A backend shared by concurrent runs must be thread-safe.

#include <concepts>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "moa/core/message.hpp"

namespace moa {

/// @brief A non-owning reference to something callable as `void(std::string_view token)`.
/// Hand-written because std::function_ref is C++26; a token callback must not allocate.
class token_callback {
 public:
  template <class F>
  requires(!std::same_as<std::remove_cvref_t<F>, token_callback> &&
           std::invocable<F&, std::string_view>) token_callback(F& f)
  noexcept  // NOLINT(google-explicit-constructor): mirrors function_ref
      : object_(std::addressof(f)),
        call_([](void* o, std::string_view t) { std::invoke(*static_cast<F*>(o), t); }) {}

  void operator()(std::string_view token) const { call_(object_, token); }

 private:
  void* object_;
  void (*call_)(void*, std::string_view);
};

namespace detail {

template <class T>
struct unwrap_reference {
  using type = T;
};
template <class T>
struct unwrap_reference<std::reference_wrapper<T>> {
  using type = T;
};

template <class B>
constexpr B& unwrap(B& b) noexcept {
  return b;
}
template <class T>
constexpr T& unwrap(std::reference_wrapper<T>& b) noexcept {
  return b.get();
}
template <class T>
constexpr T& unwrap(const std::reference_wrapper<T>& b) noexcept {
  return b.get();
}

// Poison pills: stop the niebloids from finding functions of these names in namespace moa or
// through unqualified lookup, so only members and ADL-found free functions count.
void generate() = delete;
void generate_stream() = delete;
void backend_name() = delete;

template <class B>
concept has_member_generate = requires(B& b, const request& r) {
  b.generate(r);
};
template <class B>
concept has_adl_generate = requires(B& b, const request& r) {
  generate(b, r);
};

struct generate_fn {
  template <class B>
  requires has_member_generate<typename unwrap_reference<B>::type> ||
      has_adl_generate<typename unwrap_reference<B>::type>
  decltype(auto) operator()(B& backend, const request& r) const {
    auto& b = unwrap(backend);
    if constexpr (has_member_generate<std::remove_reference_t<decltype(b)>>)
      return b.generate(r);
    else
      return generate(b, r);
  }
};

template <class B>
concept has_member_stream = requires(B& b, const request& r, token_callback cb) {
  b.generate_stream(r, cb);
};
template <class B>
concept has_adl_stream = requires(B& b, const request& r, token_callback cb) {
  generate_stream(b, r, cb);
};

}  // namespace detail

/// @brief Customisation point: `moa::generate(backend, request) -> response`.
inline constexpr detail::generate_fn generate{};

/// @brief Something that `moa::generate` can be called on, whatever it returns.
/// Split from Backend so that a wrong return type gets its own diagnostic.
template <class B>
concept HasGenerate = std::invocable<const detail::generate_fn&, B&, const request&>;

/// @brief A backend: a type whose `moa::generate(b, request)` returns moa::response.
///
/// Requirements:
/// 1. `b.generate(r)` or an ADL-found `generate(b, r)` is valid for `B& b, const request& r`;
/// 2. its result is exactly moa::response.
/// @see StreamingBackend, NamedBackend, any_backend
template <class B>
concept Backend = HasGenerate<B> &&
    std::same_as<std::invoke_result_t<const detail::generate_fn&, B&, const request&>, response>;

/// @brief A backend that can deliver tokens as they are generated.
///
/// Requirements:
/// 1. Backend<B>;
/// 2. `b.generate_stream(r, cb)` or ADL `generate_stream(b, r, cb)` returns moa::response, calling
///    `cb(token)` for every piece of text before returning.
template <class B>
concept StreamingBackend = Backend<B> &&
    (detail::has_member_stream<typename detail::unwrap_reference<B>::type> ||
     detail::has_adl_stream<typename detail::unwrap_reference<B>::type>);

namespace detail {

struct generate_stream_fn {
  template <Backend B>
  response operator()(B& backend, const request& r, token_callback on_token) const {
    auto& b = unwrap(backend);
    using U = std::remove_reference_t<decltype(b)>;
    if constexpr (has_member_stream<U>) {
      return b.generate_stream(r, on_token);
    } else if constexpr (has_adl_stream<U>) {
      return generate_stream(b, r, on_token);
    } else {
      // A non-streaming backend streams its whole answer as one token.
      response out = moa::generate(b, r);
      if (!out.text.empty()) on_token(out.text);
      return out;
    }
  }
};

template <class B>
concept has_member_name = requires(const B& b) {
  { b.name() } -> std::convertible_to<std::string_view>;
};
template <class B>
concept has_adl_name = requires(const B& b) {
  { backend_name(b) } -> std::convertible_to<std::string_view>;
};

struct backend_name_fn {
  template <class B>
  std::string operator()(const B& backend, std::string_view fallback) const {
    const auto& b = unwrap(backend);
    using U = std::remove_cvref_t<decltype(b)>;
    if constexpr (has_member_name<U>)
      return std::string(std::string_view(b.name()));
    else if constexpr (has_adl_name<U>)
      return std::string(std::string_view(backend_name(b)));
    else
      return std::string(fallback);
  }
};

}  // namespace detail

/// @brief Customisation point: streams through `generate_stream` when the backend has one.
inline constexpr detail::generate_stream_fn generate_stream{};

/// @brief Customisation point: the backend's `name()`, or `fallback` when it has none.
inline constexpr detail::backend_name_fn backend_name{};

/// @brief A backend that names itself through `name()` or ADL `backend_name(b)`.
template <class B>
concept NamedBackend = detail::has_member_name<typename detail::unwrap_reference<B>::type> ||
    detail::has_adl_name<typename detail::unwrap_reference<B>::type>;

/// @brief A non-owning, type-erased handle on a backend: what executors call.
///
/// Executors are written once against backend_ref rather than templated on every backend pack,
/// which keeps compile times flat; the price is one indirect call per LLM call.
class backend_ref {
 public:
  backend_ref() = default;

  template <Backend B>
  backend_ref(B& b, std::string name)
      : object_(std::addressof(b)),
        generate_([](void* o, const request& r) { return moa::generate(*static_cast<B*>(o), r); }),
        stream_([](void* o, const request& r, token_callback cb) {
          return moa::generate_stream(*static_cast<B*>(o), r, cb);
        }),
        name_(std::move(name)),
        streams_(native_streaming(b)) {}

  response generate(const request& r) const { return generate_(object_, r); }
  response generate_stream(const request& r, token_callback cb) const {
    return stream_(object_, r, cb);
  }
  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  /// True when the backend streams natively (not through the one-token fallback).
  [[nodiscard]] bool streams() const noexcept { return streams_; }
  [[nodiscard]] bool valid() const noexcept { return object_ != nullptr; }

 private:
  template <class B>
  static bool native_streaming(const B& b) noexcept {
    if constexpr (requires {
                    { b.streams() } -> std::convertible_to<bool>;
                  })
      return b.streams();  // wrappers such as any_backend know what they wrap
    else
      return StreamingBackend<B>;
  }

  void* object_ = nullptr;
  response (*generate_)(void*, const request&) = nullptr;
  response (*stream_)(void*, const request&, token_callback) = nullptr;
  std::string name_;
  bool streams_ = false;
};

/// @brief An owning, type-erased backend for topologies built at run time.
///
/// @code{.cpp}
/// std::vector<moa::any_backend> pool;
/// pool.emplace_back(my_http_backend{"http://127.0.0.1:8080"});
/// pool.emplace_back(moa::synthetic_backend{{.name = "mock"}});
/// @endcode
class any_backend {
 public:
  template <class B>
  requires(!std::same_as<std::remove_cvref_t<B>, any_backend> && Backend<std::remove_cvref_t<B>>)
      any_backend(B&& b)  // NOLINT(google-explicit-constructor): any_backend is a value wrapper
      : self_(std::make_unique<model<std::remove_cvref_t<B>>>(std::forward<B>(b))) {}

  any_backend(any_backend&&) noexcept = default;
  any_backend& operator=(any_backend&&) noexcept = default;

  response generate(const request& r) { return self_->generate(r); }
  response generate_stream(const request& r, token_callback cb) {
    return self_->generate_stream(r, cb);
  }
  [[nodiscard]] std::string name() const { return self_->name(); }
  [[nodiscard]] bool streams() const noexcept { return self_->streams(); }

  /// The wrapped object, or nullptr if it is not a T.
  template <class T>
  T* target() noexcept {
    auto* m = dynamic_cast<model<T>*>(self_.get());
    return m ? &m->backend : nullptr;
  }

 private:
  struct concept_t {
    virtual ~concept_t() = default;
    virtual response generate(const request&) = 0;
    virtual response generate_stream(const request&, token_callback) = 0;
    [[nodiscard]] virtual std::string name() const = 0;
    [[nodiscard]] virtual bool streams() const noexcept = 0;
  };
  template <class B>
  struct model final : concept_t {
    explicit model(B b) : backend(std::move(b)) {}
    response generate(const request& r) override { return moa::generate(backend, r); }
    response generate_stream(const request& r, token_callback cb) override {
      return moa::generate_stream(backend, r, cb);
    }
    [[nodiscard]] std::string name() const override { return moa::backend_name(backend, ""); }
    [[nodiscard]] bool streams() const noexcept override { return StreamingBackend<B>; }
    B backend;
  };
  std::unique_ptr<concept_t> self_;
};

}  // namespace moa
