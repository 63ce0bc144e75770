// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// An in-process backend for examples, tests and benchmarks: deterministic answers derived from
/// the request, latency drawn from a seeded distribution, and injected failures.
///
/// @code{.cpp}
/// moa::synthetic_backend fast({.name = "fast"});
/// moa::synthetic_backend slow({.name = "slow",
///                              .latency =
///                              moa::latency_model::exponential(std::chrono::milliseconds(5)),
///                              .error_rate = 0.1, .seed = 7});
/// @endcode
///
/// Its tunable variant, `moa::tunable_synthetic_backend` (moa/backends/tunable_synthetic.hpp,
/// Eigen), has `parameters()`/`set_parameters()` (see moa/swarm/tunable.hpp): with a
/// `tuned_answer` hook its answers depend on its parameters, so weight searches run without a GPU.
/// This header stays free of Eigen: the core needs neither Eigen nor range-v3.
///
/// The answer is `"<name> answers <8 hex digits>"`, the digits being a hash of every message of
/// the request, so a test can tell exactly which references reached which call. Everything random
/// (latency, failures) is drawn from a generator seeded by the backend's seed and that same hash:
/// the outcome of a call depends on what was asked, not on thread timing.

#include <atomic>
#include <chrono>
#include <cmath>
#include <concepts>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "moa/core/backend.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/core/random.hpp"
#include "moa/core/workload.hpp"

namespace moa {

/// @brief A backend's latency: moa::service_model (the one service-time model of the library,
/// shared with the simulator) in nanoseconds, or zero.
class latency_model {
 public:
  latency_model() = default;  // zero
  static latency_model zero() noexcept { return {}; }
  static latency_model constant(std::chrono::nanoseconds d) {
    return d.count() == 0 ? zero() : latency_model(service_model::constant(checked(d)));
  }
  static latency_model exponential(std::chrono::nanoseconds mean) {
    return mean.count() == 0 ? zero() : latency_model(service_model::exponential(checked(mean)));
  }
  static latency_model lognormal(std::chrono::nanoseconds mean, double sigma) {
    if (mean.count() == 0)
      MOA_THROW(invalid_argument("moa::latency_model: a lognormal latency needs a mean > 0"));
    return latency_model(service_model::lognormal(checked(mean), sigma));
  }
  /// Any service model, its times read as nanoseconds (empirical: replay recorded latencies).
  static latency_model of(service_model nanoseconds) {
    return latency_model(std::move(nanoseconds));
  }

  [[nodiscard]] bool is_zero() const noexcept { return !model_; }
  /// The distribution in nanoseconds; nullptr for zero.
  [[nodiscard]] const service_model* model() const noexcept { return model_ ? &*model_ : nullptr; }

  /// Draws one service time.
  [[nodiscard]] std::chrono::nanoseconds sample(rng& random) const noexcept {
    if (!model_) return std::chrono::nanoseconds(0);
    const double t = model_->sample(random);
    // A lognormal tail may pass the largest duration: saturate rather than overflow.
    return t < 9.2e18 ? std::chrono::nanoseconds(static_cast<std::int64_t>(t))
                      : std::chrono::nanoseconds::max();
  }

 private:
  explicit latency_model(service_model m) : model_(std::move(m)) {}
  static double checked(std::chrono::nanoseconds d) {
    if (d.count() < 0)
      MOA_THROW(invalid_argument("moa::latency_model: a latency cannot be negative"));
    return static_cast<double>(d.count());
  }
  std::optional<service_model> model_;
};

/// @brief The parameters of a synthetic backend that has none (the plain synthetic_backend).
struct no_parameters {
  friend bool operator==(no_parameters, no_parameters) = default;
};

/// @brief Settings of a synthetic backend whose tunable parameters are a `Parameters`
/// (synthetic_options: none; tunable_synthetic_options: an Eigen vector).
template <class Parameters>
struct basic_synthetic_options {
  std::string name = "synthetic";
  latency_model latency{};
  double error_rate = 0.0;    ///< fraction of calls that throw backend_error
  double timeout_rate = 0.0;  ///< fraction of calls that hang until their deadline
  std::uint64_t seed = 0;
  /// How long a "hanging" call waits when its request has no deadline.
  std::chrono::nanoseconds hang_limit = std::chrono::seconds(10);
  bool record = false;  ///< keep every request, for received()
  /// Plants the answer text: when set, it replaces the hash-derived answer (may return "").
  std::function<std::string(const request&)> answer{};
  /// Initial tunable parameters (see parameters()).
  Parameters parameters{};
  /// Plants an answer that depends on the current parameters: what a weight search tunes.
  /// Takes precedence over `answer`.
  std::function<std::string(const request&, const Parameters&)> tuned_answer{};
};

using synthetic_options = basic_synthetic_options<no_parameters>;

/// @brief FNV-1a over roles and contents: the identity of a request's text.
inline std::uint64_t request_hash(const request& r) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  auto add = [&h](std::string_view s) {
    for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ULL;
  };
  for (const auto& m : r.messages) {
    add(to_string(m.role));
    add(":");
    add(m.content);
    add("\n");
  }
  return h;
}

/// @brief The answer a synthetic backend named `name` gives to a request of hash `h`.
inline std::string synthetic_answer(std::string_view name, std::uint64_t h) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out(name);
  out += " answers ";
  for (int shift = 28; shift >= 0; shift -= 4) out += hex[(h >> shift) & 0xf];
  return out;
}

/// @brief Word count: moa's token estimate for backends that do not count (documented in
/// docs/ARCHITECTURE.md; real backends report their own usage).
inline std::uint64_t estimate_tokens(std::string_view text) noexcept {
  std::uint64_t n = 0;
  bool in_word = false;
  for (char c : text) {
    const bool space = c == ' ' || c == '\n' || c == '\t' || c == '\r';
    if (!space && !in_word) ++n;
    in_word = !space;
  }
  return n;
}

/// @brief The synthetic backend; `Parameters` is what a weight search may tune (see
/// synthetic_backend and tunable_synthetic_backend).
template <class Parameters>
class basic_synthetic_backend {
 public:
  using options_type = basic_synthetic_options<Parameters>;

  explicit basic_synthetic_backend(options_type opt = {})
      : opt_(std::make_shared<const options_type>(std::move(opt))),
        log_(std::make_shared<log>()),
        parameters_(opt_->parameters) {
    if (!(opt_->error_rate >= 0 && opt_->error_rate <= 1) ||
        !(opt_->timeout_rate >= 0 && opt_->timeout_rate <= 1))
      MOA_THROW(invalid_argument("moa::synthetic_backend '" + opt_->name +
                                 "': error_rate and timeout_rate are fractions in [0, 1]"));
  }

  [[nodiscard]] std::string_view name() const noexcept { return opt_->name; }
  [[nodiscard]] const options_type& options() const noexcept { return *opt_; }

  response generate(const request& r) const {
    const auto started = clock::now();
    const std::uint64_t h = request_hash(r);
    if (opt_->record || opt_->error_rate > 0 || opt_->timeout_rate > 0 || !opt_->latency.is_zero())
      behave(r, h, started);
    else
      log_->calls.fetch_add(1, std::memory_order_relaxed);
    response out;
    out.text = opt_->tuned_answer ? opt_->tuned_answer(r, parameters_)
               : opt_->answer     ? opt_->answer(r)
                                  : synthetic_answer(opt_->name, h);
    for (const auto& m : r.messages) out.usage.prompt_tokens += estimate_tokens(m.content);
    out.usage.completion_tokens = estimate_tokens(out.text);
    out.model = opt_->name;
    out.timings.generation = clock::now() - started;
    return out;
  }

  /// Delivers the answer word by word.
  response generate_stream(const request& r, token_callback on_token) const {
    response out = generate(r);
    std::string_view rest = out.text;
    while (!rest.empty()) {
      auto cut = rest.find(' ', 1);
      if (cut == std::string_view::npos) cut = rest.size();
      on_token(rest.substr(0, cut));
      rest.remove_prefix(cut);
    }
    return out;
  }

  /// The tunable parameters (moa::Tunable): they reach `tuned_answer`. Each copy of a backend
  /// has its own. set_parameters() must not race with generate() (searches set parameters
  /// between evaluations).
  [[nodiscard]] Parameters parameters() const requires(!std::same_as<Parameters, no_parameters>) {
    return parameters_;
  }
  void set_parameters(const Parameters& p) requires(!std::same_as<Parameters, no_parameters>) {
    parameters_ = p;
  }

  /// Every request received so far (only with options.record), in arrival order. Copies of a
  /// backend share one log.
  [[nodiscard]] std::vector<request> received() const {
    std::lock_guard lock(log_->mutex);
    return log_->requests;
  }
  [[nodiscard]] std::uint64_t calls() const noexcept {
    return log_->calls.load(std::memory_order_relaxed);
  }

 private:
  struct log {
    std::mutex mutex;
    std::vector<request> requests;
    std::atomic<std::uint64_t> calls{0};
  };

  void behave(const request& r, std::uint64_t h, clock::time_point started) const {
    log_->calls.fetch_add(1, std::memory_order_relaxed);
    if (opt_->record) {
      std::lock_guard lock(log_->mutex);
      log_->requests.push_back(r);
    }
    rng random(mix_seed(opt_->seed, h ^ (std::uint64_t(r.context.call) << 32)));
    const double fate = random.uniform();
    if (fate < opt_->error_rate)
      MOA_THROW(backend_error("synthetic backend '" + opt_->name + "': injected failure"));
    if (fate < opt_->error_rate + opt_->timeout_rate) {
      const auto until =
          r.deadline == clock::time_point::max() ? started + opt_->hang_limit : r.deadline;
      sleep_until(until, r.stop);
      MOA_THROW(timeout_error("synthetic backend '" + opt_->name + "': injected hang"));
    }
    const auto latency = opt_->latency.sample(random);
    if (latency.count() == 0) return;
    if (started + latency > r.deadline) {
      sleep_until(r.deadline, r.stop);
      MOA_THROW(timeout_error("synthetic backend '" + opt_->name +
                              "': its latency passes the call's deadline"));
    }
    sleep_until(started + latency, r.stop);
  }

  static void sleep_until(clock::time_point until, const std::stop_token& stop) {
    std::mutex m;
    std::condition_variable_any cv;
    std::unique_lock lock(m);
    cv.wait_until(lock, stop, until, [] { return false; });
    if (stop.stop_requested())
      MOA_THROW(cancelled_error("synthetic backend: cancelled while generating"));
  }

  std::shared_ptr<const options_type> opt_;
  std::shared_ptr<log> log_;
  [[no_unique_address]] Parameters parameters_;
};

/// @brief Deterministic answers, seeded latency and injected failures, with nothing to tune.
using synthetic_backend = basic_synthetic_backend<no_parameters>;

static_assert(Backend<synthetic_backend>);
static_assert(StreamingBackend<synthetic_backend>);

}  // namespace moa
