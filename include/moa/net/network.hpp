// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The in-process network: n devices in one process, each with its backend and its FCFS queue,
/// running distributed MoA over gossip (Algorithm 1 of Mitra, Kaswan and Ulukus, 2024). A prompt
/// born at device i gets its plan from moa::make_gossip_plan (i plus k peers per layer, aggregated
/// at i); the calls of a layer are forked to the devices' queues and joined at the origin, whose
/// join builds the next layer's request with the executors' own reference injection
/// (exec/detail/run_common.hpp): the plan is the one model of execution, here as in the executors
/// and the simulator.
///
/// Faults, and what every prompt ends with (never silently lost):
/// - a full queue refuses the call; the origin re-routes it to another device (the least loaded
///   of those not yet in the layer) up to `max_reroutes` times, then goes on without it;
/// - a call that is not answered within `peer_timeout` of its dispatch is skipped;
/// - a killed device hands its queued calls back and its call in service is abandoned; they are
///   re-routed like refusals;
/// - a layer short of `quorum` answers skips what follows; the prompt then ends failed with an
///   error naming every missing call. A prompt that lost calls but still aggregated is flagged
///   degraded (prompt_record::degraded, with `missing`).
///
/// Time is scaled: rates and statistics are in units of `time_unit` (1 ms by default), so a
/// synthetic backend with millisecond service times runs a queueing experiment in seconds.
///
/// @code{.cpp}
/// std::vector<moa::any_backend> models;
/// for (int i = 0; i < 4; ++i)
///   models.emplace_back(moa::synthetic_backend({.name = "d" + std::to_string(i),
///       .latency = moa::latency_model::exponential(std::chrono::milliseconds(1)), .seed = 7}));
/// moa::net::network net(std::move(models), moa::uniform_gossip{2}, {.layers = 2});
/// double lambda[] = {0.1, 0.1, 0.1, 0.1};  // prompts per ms per user
/// auto report = net.run(moa::net::poisson_arrivals(lambda, 2000, /*seed=*/1));
/// std::cout << report.devices[0].mean_queue << ' ' << report.mean_latency << '\n';
/// @endcode

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "moa/core/backend.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/core/random.hpp"
#include "moa/core/workload.hpp"
#include "moa/exec/detail/run_common.hpp"
#include "moa/exec/result.hpp"
#include "moa/exec/run_options.hpp"
#include "moa/gossip/gossip_concepts.hpp"
#include "moa/gossip/random_k.hpp"
#include "moa/net/device.hpp"
#include "moa/prompt/aggregation.hpp"
#include "moa/topology/gossip.hpp"
#include "moa/topology/plan.hpp"

namespace moa::net {

/// Arrivals and Poisson arrivals are the shared workload model (moa/core/workload.hpp): the
/// simulator replays and draws the same ones.
using moa::arrival;
using moa::poisson_arrivals;

/// @brief How the network runs.
struct network_options {
  std::uint32_t layers = 2;                                  ///< M
  clock::duration time_unit = std::chrono::milliseconds(1);  ///< one unit of rates and statistics
  device_options device{};                                   ///< every device
  std::vector<device_options> devices{};  ///< per device (overrides `device` when not empty)
  /// A call reading earlier answers runs if min(quorum, inputs) of them succeeded.
  std::size_t quorum = 1;
  aggregator_fallback on_aggregator_failure = aggregator_fallback::degrade;
  /// A call unanswered this long after its dispatch is skipped (its late answer is dropped).
  clock::duration peer_timeout = clock::duration::max();
  /// Other devices tried when a call is refused (full queue) or lost (dead device).
  std::size_t max_reroutes = 2;
  /// Redraw each later layer's peers when it is forked, on the loads of that moment (for
  /// strategies that read loads: `uses_load`). Drawing them at birth would use stale loads.
  bool refresh_peers = true;
  /// Keep every prompt's record (trace included) in the report; off for long runs.
  bool keep_records = true;
  std::uint64_t seed = 1;
  const aggregation_prompt* prompt = nullptr;  ///< reference wording; nullptr: moa's default
};

/// @brief How one prompt ended, with its trace. Times in the network's units.
struct prompt_record {
  std::uint64_t id = 0;
  std::uint32_t origin = 0;
  double born = 0;     ///< since the run started
  double latency = 0;  ///< birth to its end
  moa::result result{};
  std::vector<call_id> missing{};  ///< calls that gave no answer (refused, lost, timed out...)
  std::uint32_t reroutes = 0;

  /// An answer from the aggregator with every answer in.
  [[nodiscard]] bool complete() const noexcept { return result.ok() && missing.empty(); }
  /// An answer, but something is missing (named in `missing` and the trace).
  [[nodiscard]] bool degraded() const noexcept {
    return result.degraded() || (result.ok() && !missing.empty());
  }
  [[nodiscard]] bool failed() const noexcept { return !result.has_answer(); }
  /// The device of every call, in plan order (after re-routing).
  [[nodiscard]] std::vector<std::uint32_t> devices() const {
    std::vector<std::uint32_t> d;
    d.reserve(result.trace.size());
    for (const auto& r : result.trace) d.push_back(r.backend);
    return d;
  }
};

/// @brief What a run measured. Times and rates in the network's units.
struct network_report {
  std::vector<device_stats> devices;   ///< durations converted to time units
  std::vector<prompt_record> prompts;  ///< by id (with keep_records)
  std::uint64_t submitted = 0;
  std::uint64_t complete = 0;  ///< answered with nothing missing
  std::uint64_t degraded = 0;  ///< answered, something missing
  std::uint64_t failed = 0;    ///< no answer, with an error
  std::uint64_t refusals = 0;  ///< calls refused by full queues
  std::uint64_t reroutes = 0;  ///< calls sent to another device
  std::uint64_t timeouts = 0;  ///< calls skipped at their peer deadline
  std::uint64_t lost = 0;      ///< calls lost to dead devices
  double window = 0;           ///< from the run's start to its last prompt's end
  double mean_latency = 0;
  double max_latency = 0;
  double throughput = 0;  ///< prompts ended per time unit

  /// Every prompt ended one way or another.
  [[nodiscard]] bool accounted() const noexcept {
    return complete + degraded + failed == submitted;
  }
};

/// @brief n devices in one process running distributed MoA over gossip strategy G.
///
/// Thread-safety: run(), submit() and kill() may be called from any thread; backends must be
/// thread-safe when a device serves more than one call at once.
///
/// @code{.cpp}
/// moa::net::network net(std::move(models), moa::power_of_d<2>{},
///                       {.layers = 2, .device = {.capacity = 16}});
/// auto r = net.run(arrivals);
/// assert(r.accounted());
/// @endcode
template <GossipPolicy G = uniform_gossip>
class network {
 public:
  network(std::vector<any_backend> backends, G gossip = G{}, network_options opt = {})
      : opt_(std::move(opt)), gossip_(std::move(gossip)), backends_(std::move(backends)) {
    const std::size_t n = backends_.size();
    if (n == 0)
      MOA_THROW(invalid_argument("moa::net::network: give at least one backend (one per device)"));
    require(check_fanout(gossip_.fanout(), n));
    if (!opt_.devices.empty() && opt_.devices.size() != n)
      MOA_THROW(invalid_argument("moa::net::network: " + std::to_string(opt_.devices.size()) +
                                 " device options for " + std::to_string(n) +
                                 " devices; give one per device, or none to use `device`"));
    if (opt_.quorum == 0)
      MOA_THROW(invalid_argument("moa::net::network: quorum must be at least 1"));
    if (opt_.time_unit <= clock::duration::zero())
      MOA_THROW(invalid_argument("moa::net::network: time_unit must be positive"));
    unit_ = std::chrono::duration<double>(opt_.time_unit).count();
    for (std::size_t i = 0; i < n; ++i) {
      std::string name = backends_[i].name();
      refs_.emplace_back(backends_[i], name.empty() ? "device " + std::to_string(i) : name);
      devices_.push_back(
          std::make_unique<device>(opt_.devices.empty() ? opt_.device : opt_.devices[i]));
    }
    for (auto& d : devices_) d->start();
    if (opt_.peer_timeout != clock::duration::max())
      watchdog_ = std::jthread([this](std::stop_token st) { watch(st); });
  }
  network(const network&) = delete;
  network& operator=(const network&) = delete;
  ~network() {
    if (watchdog_.joinable()) {
      watchdog_.request_stop();
      timer_cv_.notify_all();
      watchdog_.join();
    }
    for (auto& d : devices_) d->stop();
  }

  [[nodiscard]] std::size_t size() const noexcept { return devices_.size(); }
  [[nodiscard]] const device& device_at(std::size_t i) const { return *devices_.at(i); }
  [[nodiscard]] const network_options& options() const noexcept { return opt_; }

  /// Kills device i: its queue is handed back (re-routed), its call in service abandoned, and it
  /// refuses all work from now on. Prompts born at it afterwards fail with an explicit error.
  void kill(std::uint32_t i) { devices_.at(i)->kill(); }

  /// A prompt born now at `origin`; its record reaches `on_prompt` (if set) and the report.
  std::uint64_t submit(std::uint32_t origin, request prompt) {
    if (origin >= devices_.size())
      MOA_THROW(invalid_argument("moa::net::network: origin " + std::to_string(origin) +
                                 " is not a device of this " + std::to_string(devices_.size()) +
                                 "-device network"));
    auto s = std::make_shared<state>();
    s->net = this;
    s->self = s;
    s->id = next_id_.fetch_add(1, std::memory_order_relaxed);
    s->origin = origin;
    s->born = clock::now();
    s->prompt = std::move(prompt);
    s->random = rng(mix_seed(opt_.seed, s->id));
    submitted_.fetch_add(1, std::memory_order_relaxed);
    double load_buffer[64];
    std::vector<double> load_heap;
    const std::span<double> load = loads(load_buffer, load_heap);
    make_gossip_plan(origin, std::uint32_t(devices_.size()), opt_.layers, gossip_, s->random, s->p,
                     load);
    const plan& p = s->p;
    s->res.trace.resize(p.size());
    s->device_of.resize(p.size());
    s->resolved.assign(p.size(), 0);
    s->attempt.assign(p.size(), 0);
    s->tries.assign(p.size(), 0);
    s->dispatched.assign(p.size(), clock::time_point{});
    s->group_messages.resize(p.group_count());
    s->pending.resize(p.group_count());
    for (call_id c = 0; c < p.size(); ++c) {
      s->device_of[c] = p[c].backend;
      detail::describe_call(s->res.trace[c], p, c, refs_);
    }
    bool done = false;
    {
      std::lock_guard lock(s->m);
      if (!devices_[origin]->alive()) {
        for (call_id c = 0; c < p.size(); ++c)
          if (!s->resolved[c])
            resolve(*s, c, call_status::skipped,
                    "device " + std::to_string(origin) +
                        " (the prompt's origin) is dead; the prompt was not admitted");
        done = take_done(*s);
      } else {
        for (group_id g = 0; g < p.group_count(); ++g) {
          s->pending[g] = std::uint32_t(p.inputs_of(g).size());
          if (s->pending[g] == 0) s->ready.push_back(g);
        }
        done = advance(s);
      }
    }
    if (done) finish(*s);
    return s->id;
  }

  /// Waits until every submitted prompt has ended.
  void wait() {
    std::unique_lock lock(done_mutex_);
    done_cv_.wait(lock, [&] {
      return finished_.load(std::memory_order_acquire) ==
             submitted_.load(std::memory_order_acquire);
    });
  }

  /// Replays `arrivals` (times in time units from now), waits for every prompt to end and
  /// reports. `make` builds each prompt's request; by default "prompt <id> from user <origin>".
  network_report run(std::span<const arrival> arrivals,
                     const std::function<request(std::uint64_t, const arrival&)>& make = {}) {
    wait();
    reset();
    const auto t0 = clock::now();
    start_ = t0;
    for (auto& d : devices_) d->reset_stats(t0);
    std::uint64_t i = 0;
    for (const auto& a : arrivals) {
      const auto at = t0 + std::chrono::duration_cast<clock::duration>(
                               std::chrono::duration<double>(a.time * unit_));
      std::this_thread::sleep_until(at);
      request r;
      if (make)
        r = make(i, a);
      else
        r.messages = {
            {role::user, "prompt " + std::to_string(i) + " from user " + std::to_string(a.origin)}};
      submit(a.origin, std::move(r));
      ++i;
    }
    wait();
    return report(clock::now());
  }

  /// What was measured since the last run() started (or since construction), up to `now`.
  [[nodiscard]] network_report report(clock::time_point now = clock::now()) {
    network_report r;
    for (auto& d : devices_) {
      device_stats s = d->stats(now);
      s.window /= unit_;
      s.mean_service /= unit_;
      for (auto& x : s.service) x /= unit_;
      r.devices.push_back(std::move(s));
    }
    r.submitted = submitted_.load();
    r.complete = complete_.load();
    r.degraded = degraded_.load();
    r.failed = failed_.load();
    r.refusals = refusals_.load();
    r.reroutes = reroutes_.load();
    r.timeouts = timeouts_.load();
    r.lost = lost_.load();
    std::lock_guard lock(records_mutex_);
    const double ended = std::chrono::duration<double>(last_end_ - start_).count() / unit_;
    r.window = std::max(ended, 0.0);
    const auto n = double(r.complete + r.degraded + r.failed);
    r.mean_latency = n > 0 ? latency_sum_ / n : 0;
    r.max_latency = latency_max_;
    r.throughput = r.window > 0 ? n / r.window : 0;
    r.prompts = records_;
    std::sort(r.prompts.begin(), r.prompts.end(),
              [](const auto& a, const auto& b) { return a.id < b.id; });
    return r;
  }

 private:
  struct state {
    network* net = nullptr;
    std::uint64_t id = 0;
    std::uint32_t origin = 0;
    clock::time_point born{};
    request prompt{};
    rng random{};
    plan p{};
    result res{};
    std::vector<std::uint32_t> device_of;
    std::vector<std::uint8_t> resolved;
    std::vector<std::uint32_t> attempt;  // dispatch generation: stale tasks and timers ignore
    std::vector<std::uint32_t> tries;
    std::vector<clock::time_point> dispatched;
    std::vector<std::pair<call_id, std::uint32_t>> tried;  // (call, device) refused or lost
    std::vector<std::vector<message>> group_messages;
    std::vector<std::uint32_t> pending;
    std::vector<group_id> ready;
    std::uint32_t reroutes = 0;
    bool done = false;
    std::weak_ptr<state> self;
    std::mutex m;
  };
  struct timer {
    clock::time_point at;
    std::weak_ptr<state> prompt;
    call_id call;
    std::uint32_t attempt;
    bool operator>(const timer& o) const noexcept { return at > o.at; }
  };

  std::span<double> loads(double (&buffer)[64], std::vector<double>& heap) const {
    std::span<double> load(buffer);
    if (devices_.size() > 64) {
      heap.resize(devices_.size());
      load = heap;
    }
    load = load.first(devices_.size());
    for (std::size_t i = 0; i < devices_.size(); ++i)
      load[i] = devices_[i]->alive() ? double(devices_[i]->load())
                                     : std::numeric_limits<double>::infinity();
    return load;
  }

  void reset() {
    std::lock_guard lock(records_mutex_);
    records_.clear();
    latency_sum_ = latency_max_ = 0;
    for (auto* c : {&submitted_, &finished_, &complete_, &degraded_, &failed_, &refusals_,
                    &reroutes_, &timeouts_, &lost_})
      c->store(0);
  }

  // --- the protocol; every function below runs with the prompt's mutex held ----------------

  void resolve(state& s, call_id c, call_status status, std::string error) {
    auto& rec = s.res.trace[c];
    rec.status = status;
    rec.error = std::move(error);
    s.resolved[c] = 1;
    for (group_id g : s.p.consumers_of(c))
      if (--s.pending[g] == 0) s.ready.push_back(g);
  }

  static bool take_done(state& s) {
    if (s.done || !s.resolved[s.p.sink()]) return false;
    s.done = true;
    return true;
  }

  // Forks every ready group; true when the prompt has just ended.
  bool advance(const std::shared_ptr<state>& sp) {
    state& s = *sp;
    while (!s.ready.empty()) {
      const group_id g = s.ready.back();
      s.ready.pop_back();
      call_list used;
      std::size_t trimmed = 0;
      run_options ro;
      ro.quorum = opt_.quorum;
      ro.prompt = opt_.prompt;
      const auto skip = detail::build_group(s.p, g, s.res.trace, s.prompt, ro, s.group_messages[g],
                                            used, trimmed);
      const auto calls = s.p.calls_of(g);
      for (call_id c : calls) {
        s.res.trace[c].references = used;
        s.res.trace[c].trimmed_tokens = trimmed;
      }
      if (skip) {
        for (call_id c : calls) resolve(s, c, call_status::skipped, *skip);
        continue;
      }
      if constexpr (requires { G::uses_load; }) {
        if (opt_.refresh_peers && calls.size() > 1 && s.p[calls[0]].layer > 1) redraw(s, calls);
      }
      for (call_id c : calls) dispatch(sp, c);
    }
    return take_done(s);
  }

  void redraw(state& s, std::span<const call_id> calls) {
    double buffer[64];
    std::vector<double> heap;
    const auto load = loads(buffer, heap);
    std::uint32_t peers[64];
    const std::size_t want = std::min<std::size_t>(calls.size() - 1, 64);
    const gossip_context ctx{s.origin, std::uint32_t(devices_.size()), s.p[calls[0]].layer,
                             &s.random, load};
    if (gossip_.select(ctx, std::span(peers, want)) != want) return;  // keep the birth draw
    for (std::size_t i = 0; i < want; ++i) set_device(s, calls[i + 1], peers[i]);
  }

  void set_device(state& s, call_id c, std::uint32_t d) {
    s.device_of[c] = d;
    s.res.trace[c].backend = d;
    s.res.trace[c].backend_name = refs_[d].name();
  }

  // Another device for call c: alive, not already in its layer, not tried for it; the least
  // loaded, ties broken at random.
  std::optional<std::uint32_t> alternative(state& s, call_id c) {
    const auto calls = s.p.calls_of(s.p[c].group);
    const auto n = std::uint32_t(devices_.size());
    const auto offset = std::uint32_t(s.random.below(n));
    std::optional<std::uint32_t> best;
    std::size_t best_load = 0;
    for (std::uint32_t j = 0; j < n; ++j) {
      const std::uint32_t d = (j + offset) % n;
      if (!devices_[d]->alive()) continue;
      bool taken = false;
      for (call_id o : calls) taken = taken || s.device_of[o] == d;
      for (const auto& [tc, td] : s.tried) taken = taken || (tc == c && td == d);
      if (taken) continue;
      const std::size_t l = devices_[d]->load();
      const auto cap = devices_[d]->options().capacity;
      if (cap != 0 && l >= cap) continue;
      if (!best || l < best_load) {
        best = d;
        best_load = l;
      }
    }
    return best;
  }

  void dispatch(const std::shared_ptr<state>& sp, call_id c) {
    state& s = *sp;
    std::string why;
    for (;;) {
      const std::uint32_t d = s.device_of[c];
      const std::uint64_t arg = std::uint64_t(c) | (std::uint64_t(++s.attempt[c]) << 32);
      s.dispatched[c] = clock::now();
      const auto refused = devices_[d]->try_push({&on_task, sp, arg});
      if (refused == device::refusal::none) {
        if (opt_.peer_timeout != clock::duration::max()) arm(sp, c);
        return;
      }
      if (refused == device::refusal::full) {
        refusals_.fetch_add(1, std::memory_order_relaxed);
        why += (why.empty() ? "" : "; ") + std::string("refused by ") + refs_[d].name() +
               " (queue full)";
      } else {
        lost_.fetch_add(1, std::memory_order_relaxed);
        why += (why.empty() ? "" : "; ") + refs_[d].name() + " is dead";
      }
      if (!reroute(s, c)) {
        resolve(s, c, call_status::failed, why);
        return;
      }
    }
  }

  bool reroute(state& s, call_id c) {
    s.tried.emplace_back(c, s.device_of[c]);
    if (s.tries[c] >= opt_.max_reroutes) return false;
    const auto other = alternative(s, c);
    if (!other) return false;
    ++s.tries[c];
    ++s.reroutes;
    reroutes_.fetch_add(1, std::memory_order_relaxed);
    set_device(s, c, *other);
    return true;
  }

  // A call lost with its device (queued when it died, or in service): re-route or give up.
  void lose(const std::shared_ptr<state>& sp, call_id c, const std::string& why) {
    state& s = *sp;
    lost_.fetch_add(1, std::memory_order_relaxed);
    if (reroute(s, c))
      dispatch(sp, c);
    else
      resolve(s, c, call_status::failed, why + "; no other device could take it");
  }

  static void on_task(void* owner, std::uint64_t arg, bool served) {
    auto& s = *static_cast<state*>(owner);
    s.net->serve(s, call_id(arg & 0xffffffffu), std::uint32_t(arg >> 32), served);
  }

  void serve(state& s, call_id c, std::uint32_t attempt, bool served) {
    std::unique_lock lock(s.m);
    if (s.resolved[c] || s.attempt[c] != attempt) return;  // timed out or re-routed meanwhile
    const std::uint32_t d = s.device_of[c];
    bool done = false;
    if (!served) {
      lose(owned(s), c, refs_[d].name() + " died before serving the call");
      done = advance(owned(s));
    } else {
      request req;
      req.messages = s.group_messages[s.p[c].group];
      req.sampling = s.prompt.sampling;
      req.context = {c, s.p[c].layer, s.p[c].role};
      req.deadline = opt_.peer_timeout == clock::duration::max()
                         ? s.prompt.deadline
                         : std::min(s.prompt.deadline,
                                    detail::saturating_add(s.dispatched[c], opt_.peer_timeout));
      req.stop = devices_[d]->stop_token();
      lock.unlock();
      call_record rec;
      const auto started = clock::now();
      detail::invoke(refs_[d], req, rec, nullptr);
      const auto ended = clock::now();
      detail::enforce_limits(rec, ended, req.deadline, {});
      if (rec.status == call_status::timed_out && opt_.peer_timeout != clock::duration::max())
        rec.error =
            refs_[d].name() + " did not answer within the peer deadline (" +
            std::to_string(std::chrono::duration<double, std::milli>(opt_.peer_timeout).count()) +
            " ms): " + rec.error;
      lock.lock();
      if (s.resolved[c] || s.attempt[c] != attempt) return;
      if (!devices_[d]->alive()) {
        lose(owned(s), c, refs_[d].name() + " died while serving the call");
      } else {
        auto& out = s.res.trace[c];
        out.start = started - s.born;
        out.end = ended - s.born;
        out.usage = rec.usage;
        out.finish = rec.finish;
        out.text = std::move(rec.text);
        resolve(s, c, rec.status, std::move(rec.error));
      }
      done = advance(owned(s));
    }
    lock.unlock();
    if (done) finish(s);
  }

  // An owning pointer to hand to the next device. The running task holds one, so it never fails.
  static std::shared_ptr<state> owned(state& s) { return s.self.lock(); }

  void arm(const std::shared_ptr<state>& sp, call_id c) {
    {
      std::lock_guard lock(timer_mutex_);
      timers_.push({sp->dispatched[c] + opt_.peer_timeout, sp, c, sp->attempt[c]});
    }
    timer_cv_.notify_one();
  }

  void watch(const std::stop_token& st) {
    std::unique_lock lock(timer_mutex_);
    while (!st.stop_requested()) {
      if (timers_.empty()) {
        timer_cv_.wait(lock, st, [&] { return !timers_.empty(); });
        continue;
      }
      const timer t = timers_.top();
      if (clock::now() < t.at) {
        timer_cv_.wait_until(lock, st, t.at, [&] { return timers_.top().at < t.at; });
        continue;
      }
      timers_.pop();
      lock.unlock();
      expire(t);
      lock.lock();
    }
  }

  void expire(const timer& t) {
    auto sp = t.prompt.lock();
    if (!sp) return;
    bool done = false;
    {
      std::lock_guard lock(sp->m);
      if (sp->resolved[t.call] || sp->attempt[t.call] != t.attempt) return;
      timeouts_.fetch_add(1, std::memory_order_relaxed);
      const auto ms = std::chrono::duration<double, std::milli>(opt_.peer_timeout).count();
      resolve(*sp, t.call, call_status::timed_out,
              refs_[sp->device_of[t.call]].name() + " did not answer within the peer deadline (" +
                  std::to_string(ms) + " ms); skipped");
      done = advance(sp);
    }
    if (done) finish(*sp);
  }

  void finish(state& s) {
    const auto end = clock::now();
    run_options ro;
    ro.quorum = opt_.quorum;
    ro.on_aggregator_failure = opt_.on_aggregator_failure;
    prompt_record rec;
    {
      std::lock_guard lock(s.m);  // late tasks of timed-out calls may still look at the state
      s.res.elapsed = end - s.born;
      detail::conclude(s.res, s.p, ro, false, false);
      for (call_id c = 0; c < s.p.size(); ++c)
        if (!s.res.trace[c].ok()) rec.missing.push_back(c);
      rec.id = s.id;
      rec.origin = s.origin;
      rec.born = std::chrono::duration<double>(s.born - start_).count() / unit_;
      rec.latency = std::chrono::duration<double>(end - s.born).count() / unit_;
      rec.reroutes = s.reroutes;
      if (opt_.keep_records)
        rec.result = std::move(s.res);
      else
        rec.result.status = s.res.status;
    }
    auto& outcome = rec.failed() ? failed_ : rec.degraded() ? degraded_ : complete_;
    outcome.fetch_add(1, std::memory_order_relaxed);
    {
      std::lock_guard lock(records_mutex_);
      latency_sum_ += rec.latency;
      latency_max_ = std::max(latency_max_, rec.latency);
      last_end_ = std::max(last_end_, end);
      if (opt_.keep_records) records_.push_back(std::move(rec));
    }
    {
      std::lock_guard lock(done_mutex_);
      finished_.fetch_add(1, std::memory_order_release);
    }
    done_cv_.notify_all();
  }

  network_options opt_;
  G gossip_;
  std::vector<any_backend> backends_;
  std::vector<backend_ref> refs_;
  std::vector<std::unique_ptr<device>> devices_;
  double unit_ = 1e-3;
  clock::time_point start_ = clock::now();

  std::atomic<std::uint64_t> next_id_{0};
  std::atomic<std::uint64_t> submitted_{0}, finished_{0}, complete_{0}, degraded_{0}, failed_{0};
  std::atomic<std::uint64_t> refusals_{0}, reroutes_{0}, timeouts_{0}, lost_{0};

  std::mutex done_mutex_;
  std::condition_variable done_cv_;

  std::mutex records_mutex_;
  std::vector<prompt_record> records_;
  double latency_sum_ = 0, latency_max_ = 0;
  clock::time_point last_end_{};

  std::mutex timer_mutex_;
  std::condition_variable_any timer_cv_;
  std::priority_queue<timer, std::vector<timer>, std::greater<>> timers_;
  std::jthread watchdog_;  // last: stopped first
};

}  // namespace moa::net
