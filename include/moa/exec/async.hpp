// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Asynchronous runs: start a run and get a std::future or a completion callback; drive backends
/// that are asynchronous themselves (start a call, get called back) without parking a thread per
/// call; schedule everything on the caller's own executor (a thread pool, an event loop).
///
/// | piece                   | what it is                                                      |
/// |-------------------------|-----------------------------------------------------------------|
/// | `Scheduler`             | something you can `post(task)` to: moa::thread_pool, an Asio    |
/// |                         | io_context behind a three-line adapter, your server's pool      |
/// | `AsyncBackend`          | `b.generate_async(const request&, moa::completion)`: starts a   |
/// |                         | call and returns at once; the backend calls the completion later |
/// | `async_backend_ref`     | a handle on an async backend, or on a synchronous one           |
/// | `async_executor`        | runs plans: `execute_async(...)` -> future or callback          |
///
/// Synchronous backends keep working unchanged: their calls are posted to the scheduler and
/// block one of its threads while they run, as on the concurrent executor. Asynchronous backends
/// are started on whichever thread readied their inputs and complete on whichever thread calls
/// the completion; no thread waits for them.
///
/// @code{.cpp}
/// moa::thread_pool pool(2);                 // or your own Scheduler
/// moa::async_executor ex(pool);
/// std::future<moa::result> f = pipeline.run_async(ex, moa::make_request("Why is the sky blue?"));
/// ex.execute_async(plan, async_refs, request, opt, {}, [](moa::result r) { use(r); });
/// @endcode
///
/// Cancellation (run_options::stop or the request's stop token) and deadlines end the run at once,
/// even while calls are in flight: the result is delivered with those calls cancelled or timed
/// out, and their late completions are dropped. Deadlines are watched by one timer thread per
/// executor, started the first time a run has one.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <span>
#include <stop_token>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "moa/core/backend.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/exec/detail/run_common.hpp"
#include "moa/exec/executor.hpp"
#include "moa/exec/result.hpp"
#include "moa/exec/run_options.hpp"
#include "moa/exec/thread_pool.hpp"
#include "moa/topology/plan.hpp"

namespace moa {

/// @brief A unit of work posted to a Scheduler: a plain copyable callable (`task()` runs it).
using scheduled_task = thread_pool::task;

/// @brief Something moa can post work to.
///
/// Requirements:
/// 1. `s.post(t)` accepts a moa::scheduled_task `t` (a copyable callable taking no argument) and
///    arranges for `t()` to run soon on one of its threads; it may run it inline only if the
///    caller may block (moa never posts while holding a lock).
/// moa::thread_pool models it; for Asio: `struct io { asio::io_context& c; void post(auto t) {
/// asio::post(c, std::move(t)); } };`.
template <class S>
concept Scheduler = requires(S& s, scheduled_task t) {
  s.post(std::move(t));
};

static_assert(Scheduler<thread_pool>);

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

namespace detail {

/// A type-erased Scheduler reference.
class scheduler_ref {
 public:
  template <Scheduler S>
  requires(!std::same_as<std::remove_cv_t<S>, scheduler_ref>)  // copies stay copies
      explicit scheduler_ref(S& s) noexcept
      : object_(std::addressof(s)),
        post_([](void* o, scheduled_task&& t) { static_cast<S*>(o)->post(std::move(t)); }) {}
  void post(scheduled_task t) const { post_(object_, std::move(t)); }

 private:
  void* object_;
  void (*post_)(void*, scheduled_task&&);
};

/// One thread that fires run deadlines: the earliest first.
class deadline_timer {
 public:
  deadline_timer() = default;
  deadline_timer(const deadline_timer&) = delete;
  deadline_timer& operator=(const deadline_timer&) = delete;
  ~deadline_timer() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  void schedule(clock::time_point at, std::weak_ptr<completion_target> run) {
    {
      std::lock_guard lock(mutex_);
      if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
      queue_.push({at, std::move(run)});
    }
    cv_.notify_all();
  }

 private:
  struct entry {
    clock::time_point at;
    std::weak_ptr<completion_target> run;
    bool operator>(const entry& o) const noexcept { return at > o.at; }
  };
  void loop() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      if (queue_.empty()) {
        cv_.wait(lock);
        continue;
      }
      const auto at = queue_.top().at;
      if (clock::now() < at) {
        cv_.wait_until(lock, at);
        continue;
      }
      auto run = queue_.top().run.lock();
      queue_.pop();
      lock.unlock();
      if (run) run->on_deadline();
      run.reset();
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::priority_queue<entry, std::vector<entry>, std::greater<>> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

/// The state of one asynchronous run; reference-counted by the tasks and completions that touch
/// it, so late completions land in memory that is still alive.
class async_run final : public completion_target, public std::enable_shared_from_this<async_run> {
 public:
  using on_done_fn = std::function<void(result)>;

  async_run(const plan& p, std::span<const backend_ref> sync, std::span<const async_backend_ref> as,
            const request& prompt, const run_options& opt, std::shared_ptr<const void> keep_alive,
            scheduler_ref sched, scheduler_ref lane, deadline_timer& timer, on_done_fn on_done)
      : plan_(p),
        sync_(sync),
        async_(as),
        prompt_(prompt),
        opt_(opt),
        keep_alive_(std::move(keep_alive)),
        sched_(sched),
        lane_(lane),
        timer_(timer),
        on_done_(std::move(on_done)),
        t0_(clock::now()),
        deadline_(std::min(prompt.deadline, saturating_add(t0_, opt.timeout))),
        records_(p.size()),
        requests_(p.size()),
        phase_(std::make_unique<std::atomic<std::uint8_t>[]>(p.size())),
        pending_(std::make_unique<std::atomic<std::uint32_t>[]>(p.group_count())),
        groups_(p.group_count()),
        remaining_(static_cast<std::uint32_t>(p.size())) {
    stop_ = opt.stop.stop_possible() ? opt.stop : prompt.stop;
    for (group_id g = 0; g < p.group_count(); ++g)
      pending_[g].store(static_cast<std::uint32_t>(p.inputs_of(g).size()),
                        std::memory_order_relaxed);
    for (call_id c = 0; c < p.size(); ++c) {
      auto& rec = records_[c];
      const auto& call = plan_[c];
      rec.call = c;
      rec.backend = call.backend;
      rec.backend_name = backend_name(call.backend);
      rec.layer = call.layer;
      rec.role = call.role;
    }
    if (opt_.aggregation) {
      if (!async_.empty())
        policy_ = std::make_unique<policy_run>(
            opt_.aggregation, plan_, async_.data(), async_.size(),
            [](const void* b, std::uint32_t i, const request& r, call_record& rec) {
              try {
                record_response(rec, static_cast<const async_backend_ref*>(b)[i].generate(r));
              } catch (...) {
                record_exception(rec, std::current_exception());
              }
            },
            [](const void* b, std::uint32_t i) -> const std::string& {
              return static_cast<const async_backend_ref*>(b)[i].name();
            },
            t0_, deadline_, stop_);
      else
        policy_ = make_policy_run(opt_, plan_, sync_, t0_, deadline_, stop_);
      uses_lane_ = !async_.empty();
    }
  }

  /// Posts the run's start to the scheduler (so the caller never runs backend work).
  void launch() { sched_.post({&start_entry, shared_from_this(), 0}); }

  void complete(std::uint32_t c, response* r, std::exception_ptr e) noexcept override {
    std::uint8_t expected = running;
    if (!phase_[c].compare_exchange_strong(expected, completing, std::memory_order_acq_rel))
      return;  // a duplicate or late completion
    auto& rec = records_[c];
    if (r != nullptr) {
      // Only the sink's completion reads the flag its dispatch wrote (other calls race it).
      if (c == plan_.sink() && whole_answer_as_token_ && !r->text.empty()) {
        try {
          on_token_(r->text);
        } catch (...) {  // as on the synchronous path, a throwing callback fails the call
          record_exception(rec, std::current_exception());
          r = nullptr;
        }
      }
      if (r != nullptr) record_response(rec, std::move(*r));
    } else {
      record_exception(rec, e);
    }
    const auto end = clock::now();
    rec.end = end - t0_;
    enforce_limits(rec, end, requests_[c].deadline, stop_);
    if (rec.status == call_status::timed_out && end >= deadline_)
      deadline_hit_.store(true, std::memory_order_relaxed);
    finish(c);
  }

  void on_deadline() noexcept override { abandon(false); }

 private:
  static constexpr std::uint8_t queued = 0, running = 1, completing = 2, done = 3;

  // Only the sink streams, to the caller's on_token; a policy at the sink does not stream.
  [[nodiscard]] bool streams_tokens(call_id c) const noexcept {
    return c == plan_.sink() && static_cast<bool>(opt_.on_token);
  }

  const std::string& backend_name(std::uint32_t b) const noexcept {
    return async_.empty() ? sync_[b].name() : async_[b].name();
  }

  static void start_entry(void* self, std::uint32_t) { static_cast<async_run*>(self)->start(); }
  static void call_entry(void* self, std::uint32_t c) {
    static_cast<async_run*>(self)->run_sync_call(c);
  }
  static void ready_entry(void* self, std::uint32_t g) { static_cast<async_run*>(self)->ready(g); }

  // Policy work that may call backends (a sparse selection before group g, the policy at the
  // sink) runs on the executor's policy lane when backends are asynchronous: a policy's call
  // parks its thread until the completion, and on the scheduler's own thread that completion may
  // never come (an event loop waiting on itself), or would stall every other transfer on it (an
  // HTTP client's I/O thread).
  [[nodiscard]] bool on_lane(group_id g) const noexcept {
    return uses_lane_ && policy_->policy.selects() && !plan_.inputs_of(g).empty();
  }

  void start() {
    if (stop_.stop_possible()) {
      // Runs the callback at once if stop was already requested.
      stop_callback_.emplace(stop_, stopper{weak_from_this()});
    }
    if (deadline_ != clock::time_point::max()) timer_.schedule(deadline_, weak_from_this());
    for (group_id g = 0; g < plan_.group_count(); ++g)
      if (plan_.inputs_of(g).empty()) ready(g);
  }

  struct stopper {
    std::weak_ptr<async_run> run;
    void operator()() const noexcept {
      if (auto r = run.lock()) r->abandon(true);
    }
  };

  // Group g has all its inputs: build its request once, then start or post its calls.
  void ready(group_id g) {
    if (abandoned_.load(std::memory_order_acquire)) return;
    auto& grp = groups_[g];
    const auto skip = build_group(plan_, g, records_, prompt_, opt_, grp.messages, grp.used,
                                  grp.trimmed, policy_.get());
    for (call_id c : plan_.calls_of(g)) {
      records_[c].references = grp.used;
      records_[c].trimmed_tokens = grp.trimmed;
      if (skip) {
        record_not_run(records_[c], *skip, stop_.stop_requested());
        finish(c);
      } else {
        dispatch(c);
      }
    }
  }

  void dispatch(call_id c) {
    auto& rec = records_[c];
    const auto& call = plan_[c];
    const auto now = clock::now();
    rec.start = rec.end = now - t0_;
    if (stop_.stop_requested()) {
      rec.status = call_status::cancelled;
      rec.error = "the run was cancelled before this call started";
      finish(c);
      return;
    }
    if (now >= deadline_) {
      deadline_hit_.store(true, std::memory_order_relaxed);
      rec.status = call_status::timed_out;
      rec.error = "the run passed its deadline before this call started";
      finish(c);
      return;
    }
    auto& req = requests_[c];
    req.messages = groups_[call.group].messages;
    req.sampling = prompt_.sampling;
    req.stop = stop_;
    req.context = {c, call.layer, call.role};
    req.deadline = std::min(deadline_, saturating_add(now, opt_.call_timeout));
    phase_[c].store(running, std::memory_order_relaxed);
    const bool local = c == plan_.sink() && policy_;
    if (!local && !async_.empty() && async_[call.backend].is_async()) {
      const auto& backend = async_[call.backend];
      try {
        if (streams_tokens(c) && backend.streams_async())
          backend.start_stream(req, token_callback(on_token_), completion(shared_from_this(), c));
        else {
          // No streaming form: complete() hands the whole answer to on_token as one token, as
          // generate_stream does for a synchronous backend without a streaming form.
          if (streams_tokens(c)) whole_answer_as_token_ = true;  // the sink's own flag
          backend.start(req, completion(shared_from_this(), c));
        }
      } catch (...) {
        complete(c, nullptr, std::current_exception());
      }
    } else if (local && uses_lane_) {
      lane_.post({&call_entry, shared_from_this(), c});
    } else {
      sched_.post({&call_entry, shared_from_this(), c});
    }
  }

  // A synchronous backend's call (or the policy at the sink), on a scheduler thread.
  void run_sync_call(call_id c) {
    if (abandoned_.load(std::memory_order_acquire)) return;
    std::uint8_t expected = running;
    if (!phase_[c].compare_exchange_strong(expected, completing, std::memory_order_acq_rel)) return;
    auto& rec = records_[c];
    const auto& req = requests_[c];
    if (c == plan_.sink() && policy_) {
      invoke_policy(*policy_, plan_, c, records_, prompt_, opt_, rec);
    } else if (async_.empty()) {
      invoke(sync_[plan_[c].backend], req, rec, c == plan_.sink() ? &opt_.on_token : nullptr);
    } else {
      try {
        const auto& backend = async_[plan_[c].backend];
        record_response(rec, streams_tokens(c)
                                 ? backend.generate_stream(req, token_callback(on_token_))
                                 : backend.generate(req));
      } catch (...) {
        record_exception(rec, std::current_exception());
      }
    }
    const auto end = clock::now();
    rec.end = end - t0_;
    enforce_limits(rec, end, req.deadline, stop_);
    if (rec.status == call_status::timed_out && end >= deadline_)
      deadline_hit_.store(true, std::memory_order_relaxed);
    finish(c);
  }

  // Publishes call c, readies the groups it completes, and delivers the run after the last.
  void finish(call_id c) {
    phase_[c].store(done, std::memory_order_release);
    if (opt_.on_call) {
      std::lock_guard lock(callback_mutex_);
      if (!abandoned_.load(std::memory_order_relaxed)) opt_.on_call(records_[c]);
    }
    for (group_id g : plan_.consumers_of(c))
      if (pending_[g].fetch_sub(1, std::memory_order_acq_rel) == 1) {
        if (on_lane(g))
          lane_.post({&ready_entry, shared_from_this(), g});
        else
          ready(g);
      }
    if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      if (delivered_.exchange(true, std::memory_order_acq_rel)) return;
      result res;
      res.trace = std::move(records_);  // every call is done; nothing touches records_ again
      res.elapsed = clock::now() - t0_;
      conclude(res, plan_, opt_, deadline_hit_.load(std::memory_order_relaxed),
               stop_.stop_requested());
      deliver(std::move(res));
    }
  }

  // Ends the run now (deadline or cancellation), recording calls not done.
  void abandon(bool cancelled) noexcept {
    if (delivered_.exchange(true, std::memory_order_acq_rel)) return;
    {
      std::lock_guard lock(callback_mutex_);
      abandoned_.store(true, std::memory_order_release);
    }
    result res;
    try {
      res.trace = abandoned_trace(
          plan_, records_, cancelled, clock::now() - t0_,
          [this](call_id c) {
            const auto ph = phase_[c].load(std::memory_order_acquire);
            return ph == done     ? call_progress::finished
                   : ph == queued ? call_progress::queued
                                  : call_progress::running;
          },
          [this](std::uint32_t b) -> const std::string& { return backend_name(b); });
      res.elapsed = clock::now() - t0_;
      conclude(res, plan_, opt_, !cancelled, cancelled);
    } catch (...) {
      res.status = run_status::failed;
      res.error = "moa: out of memory while ending an abandoned run";
    }
    deliver(std::move(res));
  }

  void deliver(result res) noexcept {
    if (policy_) attach_report(res, *policy_);
    // A callback that throws breaks the noexcept contract of completions: std::terminate.
    on_done_(std::move(res));
    // The stop callback stays registered until the state dies: resetting it here could race
    // with its own registration when stop was requested before the run started.
  }

  // Copies, so that completions arriving after an abandoned run never see dangling state.
  const plan plan_;
  std::span<const backend_ref> sync_;
  std::span<const async_backend_ref> async_;
  const request prompt_;
  const run_options opt_;
  // The sink's tokens go to the caller's on_token; token_callback needs a mutable callable.
  std::function<void(std::string_view)> on_token_{opt_.on_token};
  bool whole_answer_as_token_ = false;  // written before the sink starts, read at its completion
  std::shared_ptr<const void> keep_alive_;
  scheduler_ref sched_;
  scheduler_ref lane_;  // policy work with asynchronous backends (see on_lane)
  bool uses_lane_ = false;
  deadline_timer& timer_;
  on_done_fn on_done_;
  const clock::time_point t0_;
  const clock::time_point deadline_;
  std::stop_token stop_;
  std::vector<call_record> records_;
  std::vector<request> requests_;  // each call's request, alive until its completion
  std::unique_ptr<std::atomic<std::uint8_t>[]> phase_;
  std::unique_ptr<std::atomic<std::uint32_t>[]> pending_;
  struct group_state {
    std::vector<message> messages;
    call_list used;
    std::size_t trimmed = 0;
  };
  std::vector<group_state> groups_;
  std::unique_ptr<policy_run> policy_;
  std::atomic<std::uint32_t> remaining_;
  std::atomic<bool> delivered_{false};
  std::atomic<bool> abandoned_{false};
  std::atomic<bool> deadline_hit_{false};
  std::mutex callback_mutex_;
  std::optional<std::stop_callback<stopper>> stop_callback_;
};

}  // namespace detail

/// @brief Runs plans asynchronously on a Scheduler: execute_async() returns at once with a
/// std::future, or calls a callback with the result.
///
/// The callback runs on the thread that ended the run: a scheduler thread, the thread that
/// completed the last backend call, the thread that requested stop, or the deadline timer's. Keep
/// it short (post onward for heavy work); it must not throw. on_call observers are serialised and
/// never called after the result was delivered.
///
/// The scheduler, the backends and the span of refs must outlive every run (or be kept alive by
/// `keep_alive`; pipelines pass their storage); destroy the executor only after its runs ended.
/// execute() (the Executor concept) waits for the future: never call it from a thread the
/// scheduler needs to make progress (e.g. from inside a single-threaded io_context).
///
/// @code{.cpp}
/// asio::io_context io;
/// struct on_io { asio::io_context& io; void post(moa::scheduled_task t) { asio::post(io, t); } };
/// on_io sched{io};
/// moa::async_executor ex(sched);
/// ex.execute_async(plan, refs, moa::make_request("hi"), {}, {}, [](moa::result r) { ... });
/// io.run();
/// @endcode
class async_executor {
 public:
  /// Threads of the policy lane: aggregation policies that call backends (judge, rank-fuse,
  /// sparse) make those calls there when the backends are asynchronous, so a policy never parks
  /// a scheduler thread that the completion it waits for may need. Each policy call in flight
  /// holds one lane thread; runs beyond that wait their turn for the policy step only.
  static constexpr std::size_t default_policy_threads = 4;

  /// Runs on a pool of its own with `threads` threads.
  explicit async_executor(std::size_t threads = 2,
                          std::size_t policy_threads = default_policy_threads)
      : own_(std::make_unique<thread_pool>(threads)),
        sched_(*own_),
        lane_threads_(checked_lane(policy_threads)) {}

  /// Runs on the caller's scheduler, which must outlive the executor's runs.
  template <Scheduler S>
  requires(!std::same_as<std::remove_cvref_t<S>, async_executor>) explicit async_executor(
      S& s, std::size_t policy_threads = default_policy_threads)
      : sched_(s), lane_threads_(checked_lane(policy_threads)) {}

  async_executor(const async_executor&) = delete;
  async_executor& operator=(const async_executor&) = delete;

  /// Starts a run; the future holds its result.
  std::future<result> execute_async(const plan& p, std::span<const backend_ref> backends,
                                    const request& prompt, const run_options& opt = {},
                                    const std::shared_ptr<const void>& keep_alive = {}) const {
    return with_future([&](auto done) { start(p, backends, {}, prompt, opt, keep_alive, done); });
  }
  std::future<result> execute_async(const plan& p, std::span<const async_backend_ref> backends,
                                    const request& prompt, const run_options& opt = {},
                                    const std::shared_ptr<const void>& keep_alive = {}) const {
    return with_future([&](auto done) { start(p, {}, backends, prompt, opt, keep_alive, done); });
  }
  /// Starts a run; `on_done` receives its result (see the class comment for the thread).
  void execute_async(const plan& p, std::span<const backend_ref> backends, const request& prompt,
                     const run_options& opt, const std::shared_ptr<const void>& keep_alive,
                     std::function<void(result)> on_done) const {
    start(p, backends, {}, prompt, opt, keep_alive, std::move(on_done));
  }
  void execute_async(const plan& p, std::span<const async_backend_ref> backends,
                     const request& prompt, const run_options& opt,
                     const std::shared_ptr<const void>& keep_alive,
                     std::function<void(result)> on_done) const {
    start(p, {}, backends, prompt, opt, keep_alive, std::move(on_done));
  }

  /// Runs and waits (the Executor concept).
  result execute(const plan& p, std::span<const backend_ref> backends, const request& prompt,
                 const run_options& opt = {},
                 const std::shared_ptr<const void>& keep_alive = {}) const {
    return execute_async(p, backends, prompt, opt, keep_alive).get();
  }
  result execute(const plan& p, std::span<const async_backend_ref> backends, const request& prompt,
                 const run_options& opt = {},
                 const std::shared_ptr<const void>& keep_alive = {}) const {
    return execute_async(p, backends, prompt, opt, keep_alive).get();
  }

 private:
  static std::size_t checked_lane(std::size_t threads) {
    if (threads == 0)
      MOA_THROW(invalid_argument(
          "moa::async_executor: policy_threads must be at least 1 (policies that call backends "
          "run there when the backends are asynchronous)"));
    return threads;
  }

  template <class Start>
  static std::future<result> with_future(Start start) {
    auto promise = std::make_shared<std::promise<result>>();
    auto future = promise->get_future();
    start([promise](result r) { promise->set_value(std::move(r)); });
    return future;
  }

  void start(const plan& p, std::span<const backend_ref> sync,
             std::span<const async_backend_ref> as, const request& prompt, const run_options& opt,
             const std::shared_ptr<const void>& keep_alive,
             std::function<void(result)> on_done) const {
    if (!on_done)
      MOA_THROW(invalid_argument("moa::async_executor: the completion callback is empty"));
    if (as.empty()) {
      detail::check_run(p, sync, opt);
    } else {
      // check_run's checks, for async refs.
      if (!p.sealed())
        MOA_THROW(
            invalid_argument("moa: the plan is not sealed; call plan::seal() before executing"));
      if (p.backend_span() > as.size())
        MOA_THROW(topology_error("moa: the plan calls backend " +
                                 std::to_string(p.backend_span() - 1) + " but only " +
                                 std::to_string(as.size()) + " backends were given"));
      for (std::size_t i = 0; i < as.size(); ++i)
        if (!as[i].valid())
          MOA_THROW(invalid_argument("moa: backend " + std::to_string(i) +
                                     " is an empty async_backend_ref"));
      if (opt.quorum == 0)
        MOA_THROW(invalid_argument("moa: run_options::quorum must be at least 1"));
    }
    auto run = std::make_shared<detail::async_run>(
        p, sync, as, prompt, opt, keep_alive, sched_,
        opt.aggregation && !as.empty() ? policy_lane() : sched_, timer_, std::move(on_done));
    run->launch();
  }

  detail::scheduler_ref policy_lane() const {
    std::call_once(lane_once_, [this] { lane_ = std::make_unique<thread_pool>(lane_threads_); });
    return detail::scheduler_ref(*lane_);
  }

  // Destroyed in reverse: the pool drains its queued tasks (which may schedule deadlines) while
  // the timer is still alive.
  mutable detail::deadline_timer timer_;
  std::unique_ptr<thread_pool> own_;
  detail::scheduler_ref sched_;
  std::size_t lane_threads_ = default_policy_threads;
  mutable std::once_flag lane_once_;
  mutable std::unique_ptr<thread_pool> lane_;  // made by the first policy run on async backends
};

static_assert(Executor<async_executor>);

}  // namespace moa
