// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The in-process network: n devices in one process, each with its backend and its FCFS queue,
/// running distributed MoA over gossip (Algorithm 1 of Mitra, Kaswan and Ulukus, 2024). A prompt
/// born at device i gets its plan from moa::make_gossip_plan (i plus k peers per layer, aggregated
/// at i); the calls of a layer are forked to the devices' queues and joined at the origin, whose
/// join builds the next layer's request through moa::plan_run (moa/exec/plan_run.hpp), the core
/// every executor runs on, with the origin-side routing of moa/net/origin.hpp: the plan is the one
/// model of execution, here as in the executors and the simulator, and aggregation policies work
/// here as there (network_options::aggregation).
///
/// Faults, and what every prompt ends with (never silently lost):
/// - a full queue refuses the call; the origin re-routes it to another device (the least loaded
///   of those not yet in the layer) up to `max_reroutes` times, then goes on without it;
/// - a call that is not answered within `peer_timeout` of its dispatch is skipped; a device that
///   lets 3 in a row pass is failed to that origin for a while (network_options::trust);
/// - loads are checked, not believed: each origin's peer_view (moa/net/peer_view.hpp) weighs a
///   device's report against the calls it has there and the latencies it observed, so a device
///   lying "load 0" (network_options::claimed_loads, to test it) or a slow one loses traffic;
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
#include <type_traits>
#include <utility>
#include <vector>

#include "moa/aggregate/any_aggregator.hpp"
#include "moa/core/backend.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/core/random.hpp"
#include "moa/core/result.hpp"
#include "moa/core/workload.hpp"
#include "moa/exec/plan_run.hpp"
#include "moa/exec/run_options.hpp"
#include "moa/gossip/gossip_concepts.hpp"
#include "moa/gossip/random_k.hpp"
#include "moa/net/device.hpp"
#include "moa/net/origin.hpp"
#include "moa/net/peer_view.hpp"
#include "moa/prompt/aggregation.hpp"
#include "moa/topology/gossip.hpp"
#include "moa/topology/plan.hpp"

namespace moa::net {

/// Arrivals and Poisson arrivals are the shared workload model (moa/core/workload.hpp): the
/// simulator replays and draws the same ones.
using moa::arrival;
using moa::poisson_arrivals;

/// @brief One prompt's layout, or its refusal (network_options::choose_layout).
struct layout_choice {
  bool admitted = true;
  std::uint32_t layers = 0;  ///< M
  std::uint32_t fanout = 0;  ///< k (a network whose gossip is not uniform_gossip keeps its own)
  std::string why{};         ///< recorded in the prompt's record
};

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
  /// How far each origin trusts the loads devices report (moa/net/peer_view.hpp): reports are
  /// checked against the calls it has outstanding and the latencies it observes, and a device
  /// that lets `trust.strikes` calls in a row time out is avoided for `trust.failed_for`.
  peer_view_options trust{};
  /// The load each device reports instead of its own (a lying device, for tests and benchmarks);
  /// empty, or nullopt for a device: the truth.
  std::vector<std::optional<double>> claimed_loads{};
  /// Redraw each later layer's peers when it is forked, on the loads of that moment (for
  /// strategies that read loads: `uses_load`). Drawing them at birth would use stale loads.
  bool refresh_peers = true;
  /// Keep every prompt's record (trace included) in the report; off for long runs.
  bool keep_records = true;
  std::uint64_t seed = 1;
  const aggregation_prompt* prompt = nullptr;  ///< reference wording; nullptr: moa's default
  /// Decides each prompt's answer at its origin (vote, judge, rank-fuse, sparse; see
  /// moa/aggregate/policies.hpp), as in the executors. The policy runs in the origin's queue in
  /// place of the aggregator's call; the calls it makes (judges, rankers) go straight to the
  /// devices' backends, bypassing their queues. Empty: the origin's backend aggregates.
  any_aggregator aggregation{};
  /// Chooses each prompt's layout, or refuses it at once, from its origin and the time since
  /// the run started (in time units). moa/net/adaptive.hpp wires the adaptive layout policy
  /// here. Empty: `layers` and the gossip's k for every prompt.
  std::function<layout_choice(std::uint32_t origin, double now)> choose_layout{};
  /// Hears every call's service time (in time units) by device; set with choose_layout.
  std::function<void(std::uint32_t device, double duration)> on_service{};
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
  std::string layout{};  ///< choose_layout's reason (which layout, why); empty without it
  bool refused = false;  ///< refused at admission (failed, with the reason in result.error)

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
  std::uint64_t failed = 0;    ///< no answer, with an error (refused prompts included)
  std::uint64_t refused = 0;   ///< prompts refused at admission (choose_layout)
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
    if (!opt_.claimed_loads.empty() && opt_.claimed_loads.size() != n)
      MOA_THROW(invalid_argument("moa::net::network: " + std::to_string(opt_.claimed_loads.size()) +
                                 " claimed loads for " + std::to_string(n) +
                                 " devices; give one per device, or none"));
    if (opt_.quorum == 0)
      MOA_THROW(invalid_argument("moa::net::network: quorum must be at least 1"));
    if (opt_.time_unit <= clock::duration::zero())
      MOA_THROW(invalid_argument("moa::net::network: time_unit must be positive"));
    unit_ = std::chrono::duration<double>(opt_.time_unit).count();
    run_opt_.quorum = opt_.quorum;
    run_opt_.on_aggregator_failure = opt_.on_aggregator_failure;
    run_opt_.prompt = opt_.prompt;
    run_opt_.aggregation = opt_.aggregation;
    for (std::size_t i = 0; i < n; ++i) {
      std::string name = backends_[i].name();
      refs_.emplace_back(backends_[i], name.empty() ? "device " + std::to_string(i) : name);
      device_options d = opt_.devices.empty() ? opt_.device : opt_.devices[i];
      if (opt_.on_service)
        d.on_service = [this, i, own = std::move(d.on_service)](double seconds) {
          if (own) own(seconds);
          opt_.on_service(static_cast<std::uint32_t>(i), seconds / unit_);
        };
      devices_.push_back(std::make_unique<device>(std::move(d)));
      views_.push_back(std::make_unique<peer_view>(std::uint32_t(n), opt_.trust));
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
  /// What device `origin` believes of every device's load (its peer_view).
  [[nodiscard]] const peer_view& view_of(std::size_t origin) const { return *views_.at(origin); }

  /// Kills device i: its queue is handed back (re-routed), its call in service abandoned, and it
  /// refuses all work from now on. Prompts born at it afterwards fail with an explicit error.
  void kill(std::uint32_t i) { devices_.at(i)->kill(); }

  /// A prompt born now at `origin`; its record reaches `on_prompt` (if set) and the report.
  std::uint64_t submit(std::uint32_t origin, request prompt) {
    if (origin >= devices_.size())
      MOA_THROW(invalid_argument("moa::net::network: origin " + std::to_string(origin) +
                                 " is not a device of this " + std::to_string(devices_.size()) +
                                 "-device network"));
    const std::uint64_t id = next_id_.fetch_add(1, std::memory_order_relaxed);
    rng random(mix_seed(opt_.seed, id));
    double load_buffer[64];
    std::vector<double> load_heap;
    const std::span<double> load = loads(origin, load_buffer, load_heap);
    plan p;
    layout_choice choice{true, opt_.layers, std::uint32_t(gossip_.fanout()), {}};
    if (opt_.choose_layout) {
      const auto born = clock::now();
      choice =
          opt_.choose_layout(origin, std::chrono::duration<double>(born - start_).count() / unit_);
      if (!choice.admitted) {
        refuse(id, origin, born, std::move(choice.why));
        return id;
      }
      if (choice.layers == 0)
        MOA_THROW(invalid_argument("moa::net::network: choose_layout gave 0 layers"));
    }
    if constexpr (std::is_same_v<G, uniform_gossip>) {
      if (choice.fanout != gossip_.fanout()) require(check_fanout(choice.fanout, devices_.size()));
      make_gossip_plan(origin, std::uint32_t(devices_.size()), choice.layers,
                       uniform_gossip{choice.fanout}, random, p, load);
    } else {
      make_gossip_plan(origin, std::uint32_t(devices_.size()), choice.layers, gossip_, random, p,
                       load);
    }
    auto s = std::make_shared<state>(this, id, origin, std::move(p), std::move(prompt), run_opt_,
                                     clock::now(), random, opt_.max_reroutes);
    s->self = s;
    s->layout = std::move(choice.why);
    s->run().use_policy(refs_);
    submitted_.fetch_add(1, std::memory_order_relaxed);
    bool done = false;
    {
      std::lock_guard lock(s->m);
      link l{*this, s};
      done = s->begin(l);
    }
    if (done) finish(*s);
    return id;
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
    r.refused = refused_.load();
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
  // One prompt: its origin run, and the dispatch generation of each call (stale device tasks and
  // timers of re-routed or timed-out calls compare it and drop out).
  struct state : origin_run {
    state(network* n, std::uint64_t i, std::uint32_t origin, moa::plan p, request prompt,
          const run_options& opt, clock::time_point born, rng random, std::size_t max_reroutes)
        : origin_run(origin, std::move(p), std::move(prompt), opt, born, random, max_reroutes),
          net(n),
          id(i),
          attempt(plan().size(), 0),
          dispatched(plan().size()) {}
    network* net;
    std::uint64_t id;
    std::vector<std::uint32_t> attempt;
    std::vector<clock::time_point> dispatched;
    std::weak_ptr<state> self;
    std::string layout;  // choose_layout's reason, for the record
    std::mutex m;
  };
  struct timer {
    clock::time_point at;
    std::weak_ptr<state> prompt;
    call_id call;
    std::uint32_t attempt;
    bool operator>(const timer& o) const noexcept { return at > o.at; }
  };

  // How a prompt's origin reaches the devices (moa::net::Link): their queues, in this process.
  struct link {
    network& net;
    const std::shared_ptr<state>& sp;
    [[nodiscard]] std::uint32_t devices() const noexcept {
      return std::uint32_t(net.devices_.size());
    }
    [[nodiscard]] bool alive(std::uint32_t d) const { return net.alive_for(sp->origin(), d); }
    [[nodiscard]] double load(std::uint32_t d) const { return net.load_for(sp->origin(), d); }
    [[nodiscard]] peer_view& view() const { return *net.views_[sp->origin()]; }
    [[nodiscard]] bool has_room(std::uint32_t d) const {
      const auto cap = net.devices_[d]->options().capacity;
      return cap == 0 || net.devices_[d]->load() < cap;
    }
    [[nodiscard]] const std::string& name(std::uint32_t d) const { return net.refs_[d].name(); }
    device::refusal send(origin_run& o, call_id c) {
      auto& s = *sp;
      if (!alive(o.device_of(c))) return device::refusal::dead;  // dead, or failed to the origin
      const std::uint64_t arg = std::uint64_t(c) | (std::uint64_t(++s.attempt[c]) << 32);
      s.dispatched[c] = clock::now();
      const auto refused = net.devices_[o.device_of(c)]->try_push({&on_task, sp, arg});
      if (refused == device::refusal::none && net.opt_.peer_timeout != clock::duration::max())
        net.arm(sp, c);
      return refused;
    }
    void count(route_event e) {
      auto& counter = e == route_event::refused    ? net.refusals_
                      : e == route_event::rerouted ? net.reroutes_
                                                   : net.lost_;
      counter.fetch_add(1, std::memory_order_relaxed);
    }
  };

  // What origin o believes: a device it failed is as good as dead; a load is the device's
  // report (its queue, or what it claims) checked by o's peer_view.
  bool alive_for(std::uint32_t o, std::uint32_t d) const {
    return devices_[d]->alive() && (d == o || !views_[o]->failed(d, clock::now()));
  }
  double load_for(std::uint32_t o, std::uint32_t d) const {
    const bool lies = !opt_.claimed_loads.empty() && opt_.claimed_loads[d].has_value();
    views_[o]->report(d, lies ? *opt_.claimed_loads[d] : double(devices_[d]->load()));
    return views_[o]->load(d, clock::now());
  }

  std::span<double> loads(std::uint32_t origin, double (&buffer)[64],
                          std::vector<double>& heap) const {
    std::span<double> load(buffer);
    if (devices_.size() > 64) {
      heap.resize(devices_.size());
      load = heap;
    }
    load = load.first(devices_.size());
    for (std::uint32_t i = 0; i < devices_.size(); ++i)
      load[i] =
          alive_for(origin, i) ? load_for(origin, i) : std::numeric_limits<double>::infinity();
    return load;
  }

  void reset() {
    std::lock_guard lock(records_mutex_);
    records_.clear();
    latency_sum_ = latency_max_ = 0;
    for (auto* c : {&submitted_, &finished_, &complete_, &degraded_, &failed_, &refusals_,
                    &reroutes_, &timeouts_, &lost_, &refused_})
      c->store(0);
  }

  // --- the protocol; every function below runs with the prompt's mutex held ----------------

  // Forks every ready group; true when the prompt has just ended. Strategies that read loads
  // get a later layer's peers redrawn on the loads of the moment it is forked.
  bool advance(const std::shared_ptr<state>& sp) {
    link l{*this, sp};
    if constexpr (requires { G::uses_load; }) {
      return sp->advance(l, [&](std::span<const call_id> calls) {
        if (opt_.refresh_peers) sp->redraw(l, gossip_, calls);
      });
    } else {
      return sp->advance(l);
    }
  }

  static void on_task(void* owner, std::uint64_t arg, bool served) {
    auto& s = *static_cast<state*>(owner);
    s.net->serve(s, call_id(arg & 0xffffffffu), std::uint32_t(arg >> 32), served);
  }

  void serve(state& s, call_id c, std::uint32_t attempt, bool served) {
    std::unique_lock lock(s.m);
    if (s.resolved(c) || s.attempt[c] != attempt) return;  // timed out or re-routed meanwhile
    const std::uint32_t d = s.device_of(c);
    const auto sp = owned(s);
    link l{*this, sp};
    bool done = false;
    if (!served) {
      s.lose(l, c, refs_[d].name() + " died before serving the call");
      done = advance(sp);
    } else {
      auto& run = s.run();
      const bool policy = run.policy_decides(c);
      call_record rec;
      std::vector<call_record> inputs;
      request req;
      req.deadline =
          opt_.peer_timeout == clock::duration::max()
              ? s.prompt().deadline
              : std::min(s.prompt().deadline, saturating_add(s.dispatched[c], opt_.peer_timeout));
      if (policy) {
        // The policy decides in this device's queue, from copies: the prompt may end (its peer
        // deadline) while it runs.
        rec = run.record(c);
        inputs = run.inputs_of(rec);
      } else {
        req.messages = run.messages(s.plan()[c].group);
        req.sampling = s.prompt().sampling;
        req.context = {c, s.plan()[c].layer, s.plan()[c].role};
        req.stop = devices_[d]->stop_token();
      }
      lock.unlock();
      const auto started = clock::now();
      if (policy)
        run.decide(c, rec, inputs);
      else
        call_backend(refs_[d], req, rec);
      const auto ended = clock::now();
      enforce_limits(rec, ended, req.deadline, {});
      if (rec.status == call_status::timed_out && opt_.peer_timeout != clock::duration::max())
        rec.error =
            refs_[d].name() + " did not answer within the peer deadline (" +
            std::to_string(std::chrono::duration<double, std::milli>(opt_.peer_timeout).count()) +
            " ms): " + rec.error;
      lock.lock();
      if (s.resolved(c) || s.attempt[c] != attempt) return;
      if (!devices_[d]->alive()) {
        s.lose(l, c, refs_[d].name() + " died while serving the call");
      } else {
        rec.start = started - s.born();
        rec.end = ended - s.born();
        s.answered(c, std::move(rec));
      }
      done = advance(sp);
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
      if (sp->resolved(t.call) || sp->attempt[t.call] != t.attempt) return;
      timeouts_.fetch_add(1, std::memory_order_relaxed);
      const auto ms = std::chrono::duration<double, std::milli>(opt_.peer_timeout).count();
      sp->resolve(t.call, call_status::timed_out,
                  refs_[sp->device_of(t.call)].name() +
                      " did not answer within the peer deadline (" + std::to_string(ms) +
                      " ms); skipped");
      done = advance(sp);
    }
    if (done) finish(*sp);
  }

  // A prompt refused at admission: it never enters a queue, and ends at once, failed with the
  // reason.
  void refuse(std::uint64_t id, std::uint32_t origin, clock::time_point born, std::string why) {
    submitted_.fetch_add(1, std::memory_order_relaxed);
    refused_.fetch_add(1, std::memory_order_relaxed);
    prompt_record rec;
    rec.id = id;
    rec.origin = origin;
    rec.born = std::chrono::duration<double>(born - start_).count() / unit_;
    rec.refused = true;
    rec.result.status = run_status::failed;
    rec.result.error = "moa::net::network: prompt refused at admission (over capacity): " + why;
    rec.layout = std::move(why);
    ended(std::move(rec), born);
  }

  void finish(state& s) {
    const auto end = clock::now();
    prompt_record rec;
    {
      std::lock_guard lock(s.m);  // late tasks of timed-out calls may still look at the state
      auto res = s.conclude(end, &rec.missing);
      rec.id = s.id;
      rec.origin = s.origin();
      rec.born = std::chrono::duration<double>(s.born() - start_).count() / unit_;
      rec.latency = std::chrono::duration<double>(end - s.born()).count() / unit_;
      rec.reroutes = s.reroutes();
      rec.layout = std::move(s.layout);
      if (opt_.keep_records)
        rec.result = std::move(res);
      else
        rec.result.status = res.status;
    }
    ended(std::move(rec), end);
  }

  void ended(prompt_record&& rec, clock::time_point end) {
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
  run_options run_opt_;  // what the plan runs read: quorum, failure policy, wording, policy
  G gossip_;
  std::vector<any_backend> backends_;
  std::vector<backend_ref> refs_;
  std::vector<std::unique_ptr<peer_view>> views_;  // each origin's; outlive the devices' tasks
  std::vector<std::unique_ptr<device>> devices_;
  double unit_ = 1e-3;
  clock::time_point start_ = clock::now();

  std::atomic<std::uint64_t> next_id_{0};
  std::atomic<std::uint64_t> submitted_{0}, finished_{0}, complete_{0}, degraded_{0}, failed_{0};
  std::atomic<std::uint64_t> refusals_{0}, reroutes_{0}, timeouts_{0}, lost_{0}, refused_{0};

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

namespace detail {

template <class T>
struct is_gossip_topology : std::false_type {};
template <class D, class L, class G>
struct is_gossip_topology<gossip_topology<D, L, G>> : std::true_type {};

// Named so that the diagnostic shows both numbers: <devices of the topology, backends given>.
template <std::size_t Devices, std::size_t Backends>
struct network_backend_count_mismatch {
  static_assert(Devices == Backends,
                "moa::net::make_network: give exactly one backend per device of the gossip "
                "topology (see <devices, backends given> below)");
};

}  // namespace detail

/// @brief A network typed by its topology: `Edge` is a `moa::gossip_topology<devices<N>,
/// layers<M>, Gossip>`, and the backends are the N devices' models, in device order.
///
/// Checked at compile time, each with its own diagnostic: Edge is a gossip topology; Gossip is a
/// gossip strategy with its fan-out k in its type; k <= N - 1; exactly N backends, each a
/// moa::Backend. The layers of `opt` are Edge's M.
///
/// @code{.cpp}
/// using edge = moa::gossip_topology<moa::devices<3>, moa::layers<2>, moa::random_k<1>>;
/// auto net = moa::net::make_network<edge>(model_a, model_b, model_c);
/// auto report = net.run(moa::net::poisson_arrivals(lambda, 100, 1));
/// @endcode
template <class Edge, class... Backends>
auto make_network(network_options opt, Backends&&... backends) {
  static_assert(detail::is_gossip_topology<Edge>::value,
                "moa::net::make_network: the topology must be a moa::gossip_topology<"
                "moa::devices<N>, moa::layers<M>, Gossip>");
  static_assert((Backend<std::remove_cvref_t<Backends>> && ...),
                "moa::net::make_network: every argument after the options must be a backend "
                "(moa::Backend: moa::generate(b, request) -> response)");
  if constexpr (detail::is_gossip_topology<Edge>::value)
    (void)sizeof(detail::network_backend_count_mismatch<Edge::device_count, sizeof...(Backends)>);
  std::vector<any_backend> models;
  models.reserve(sizeof...(Backends));
  (models.emplace_back(std::forward<Backends>(backends)), ...);
  opt.layers = static_cast<std::uint32_t>(Edge::layer_count);
  using G = typename Edge::gossip_type;
  return network<G>(std::move(models), G{}, std::move(opt));
}

/// @brief As above, with the default network options.
template <class Edge, class... Backends>
requires(!std::same_as<std::remove_cvref_t<Backends>, network_options> &&
         ...) auto make_network(Backends&&... backends) {
  return make_network<Edge>(network_options{}, std::forward<Backends>(backends)...);
}

}  // namespace moa::net
