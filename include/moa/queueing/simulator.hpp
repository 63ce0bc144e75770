// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// A discrete-event simulator of a distributed MoA network, in virtual time.
///
/// Semantics: prompts arrive per user (Poisson of rate lambda_i, or a replayed trace); each gets
/// a moa::plan from a *plan source*; a call is queued FCFS at its device once every call of its
/// input group has finished (fork-join), and the plan's last call (the aggregation at the origin,
/// for gossip) ends the prompt. One server per device, service times from a service_model per
/// device and role. Any plan runs: gossip, layered, DAG. Load-aware gossip (strategies that read
/// gossip_context::load) runs too: the source sees every device's number in system at birth and
/// redraws each later layer's peers when that layer is forked (LoadAwarePlanSource).
///
/// Why it is fast (tens of millions of events per second on one core): events are 16-byte PODs
/// in a binary heap that never holds more than one arrival per user and one completion per
/// device; a prompt lives in a slot of a per-shape arena (its devices and pending input counts),
/// so nothing is allocated per event once the arenas have grown; and a source that can *draw*
/// only the devices of a fixed-shape plan (gossip_source) skips building a plan per prompt.
///
/// Statistics: time integrals of each device's number in system (a true integral, updated at
/// every change), busy time, completions, latency (mean exact, percentiles from a log histogram
/// within 0.4%), all restarted at the warm-up time. Batch means of the backlog feed an
/// instability detector: a backlog that grows linearly (significant positive slope, growth over
/// the window larger than the early level) marks the run unstable, with its growth rate.
///
/// @code{.cpp}
/// moa::queueing::sim_config cfg;
/// cfg.lambda.assign(4, 0.1);                                          // 4 users
/// cfg.service = {moa::queueing::service_model::exponential(1.0)};     // every device
/// cfg.horizon = 1e5;
/// cfg.warmup = 1e4;
/// moa::queueing::gossip_source source(4, /*layers=*/2, moa::uniform_gossip{2});
/// moa::queueing::run_result r = moa::queueing::simulate(cfg, source);
/// auto many = moa::queueing::replicate(cfg, source, /*replications=*/8);  // in parallel
/// moa::queueing::gossip_source aware(4, 2, moa::least_loaded_gossip{.k = 2, .d = 0});
/// auto steered = moa::queueing::simulate(cfg, aware);  // peers picked on the simulated queues
/// @endcode

#include <algorithm>
#include <atomic>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <exception>
#include <limits>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "moa/core/random.hpp"
#include "moa/gossip/gossip_concepts.hpp"
#include "moa/queueing/detail/check.hpp"
#include "moa/queueing/detail/stats.hpp"
#include "moa/queueing/service.hpp"
#include "moa/topology/gossip.hpp"
#include "moa/topology/plan.hpp"

namespace moa::queueing {

/// @brief Anything that gives the plan of a prompt born at `origin`: `s(origin, rng&)` returns a
/// sealed moa::plan whose backends are device indices. The simulator reads it before the next
/// call, so a source may reuse one plan object.
template <class S>
concept PlanSource = requires(S& s, std::uint32_t origin, moa::rng& r) {
  { s(origin, r) } -> std::convertible_to<const moa::plan&>;
};

/// @brief A PlanSource that can also draw only the devices of a plan whose shape it owns:
/// `s.draw(origin, rng&, devices)` writes one device per call of the returned plan (whose address
/// and structure must stay fixed) and returns it, or returns nullptr to fall back to `s(...)`.
template <class S>
concept ShapedPlanSource = PlanSource<S> &&
    requires(S& s, std::uint32_t o, moa::rng& r, std::span<std::uint32_t> d) {
  { s.draw(o, r, d) } -> std::same_as<const moa::plan*>;
};

/// @brief A ShapedPlanSource whose peers depend on the queues: the engine passes every device's
/// current number in system (queued + in service) as `load` to `s.draw(o, rng&, devices, load)`
/// at birth, and, when a later group `g` of a plan drawn that way becomes ready, calls
/// `s.redraw(shape, g, rng&, load, devices)` just before dispatching it. `devices` holds the
/// prompt's device per call (earlier groups already served); redraw may rewrite those of the
/// calls of `g` and must leave the others alone. If the source is also callable as
/// `s(o, rng&, load)`, its fallback plans see the loads too.
///
/// Redrawing at the fork, not at birth, is what the live network does (`refresh_peers`): a
/// prompt's second layer starts a whole layer of service later, when the birth loads are stale.
template <class S>
concept LoadAwarePlanSource = ShapedPlanSource<S> &&
    requires(S& s, std::uint32_t o, moa::rng& r, std::span<std::uint32_t> d,
             std::span<const double> load, const moa::plan& shape, group_id g) {
  { s.draw(o, r, d, load) } -> std::same_as<const moa::plan*>;
  s.redraw(shape, g, r, load, d);
};

namespace detail {
/// Strategies that declare `uses_load = true` (moa/gossip/load_aware.hpp) read gossiped queues.
template <class G>
concept reads_load = requires {
  requires static_cast<bool>(G::uses_load);
};
}  // namespace detail

/// @brief Gossip plans for the simulator: M layers of origin + peers, aggregation at the origin,
/// with any gossip strategy. Draws devices into a fixed shape (fast path) and falls back to
/// make_gossip_plan when a strategy returns fewer peers than expected.
///
/// With a strategy that reads loads (`uses_load`, such as moa::least_loaded_gossip) it models
/// LoadAwarePlanSource, as the live network does: layer 1's peers are drawn at birth on the
/// current queues, and each later layer's peers are drawn again when that layer is forked
/// (`refresh_peers = false`: only at birth, on the birth queues).
///
/// @code{.cpp}
/// moa::queueing::gossip_source source(8, 2, moa::queueing::matrix_gossip(p));
/// moa::queueing::gossip_source aware(4, 2, moa::least_loaded_gossip{.k = 2, .d = 0});
/// @endcode
template <GossipPolicy G>
class gossip_source {
 public:
  gossip_source(std::uint32_t devices, std::uint32_t layers, G gossip = G{},
                bool refresh_peers = true)
      : n_(devices), m_(layers), gossip_(std::move(gossip)), refresh_(refresh_peers) {
    detail::require_fanout(gossip_.fanout(), n_);
    const std::size_t k = std::min<std::size_t>(gossip_.fanout(), n_ - 1);
    expected_.resize(n_);
    for (std::uint32_t o = 0; o < n_; ++o) {
      if constexpr (requires { gossip_.fanout_of(o); })
        expected_[o] = std::min<std::size_t>(gossip_.fanout_of(o), k);
      else
        expected_[o] = k;
    }
    peers_.resize(k + 1);
    shapes_.resize(k + 1);
    for (std::size_t kk = 0; kk <= k; ++kk) {  // backends are placeholders: only shape counts
      plan& p = shapes_[kk];
      std::vector<call_id> previous;
      for (std::uint32_t layer = 1; layer <= m_; ++layer) {
        const group_id g = p.add_group(previous);
        previous.clear();
        for (std::size_t i = 0; i <= kk; ++i)
          previous.push_back(p.add_call(0, g, layer, call_role::proposer));
      }
      p.add_call(0, p.add_group(previous), m_ + 1, call_role::aggregator);
      p.seal();
    }
  }

  const plan& operator()(std::uint32_t origin, rng& random, std::span<const double> load = {}) {
    make_gossip_plan(origin, n_, m_, gossip_, random, scratch_, load);
    return scratch_;
  }

  const plan* draw(std::uint32_t origin, rng& random, std::span<std::uint32_t> devices,
                   std::span<const double> load = {}) {
    const std::size_t kk = expected_[origin];
    if (devices.size() < (kk + 1) * m_ + 1) return nullptr;
    std::size_t at = 0;
    for (std::uint32_t layer = 1; layer <= m_; ++layer) {
      const gossip_context ctx{origin, n_, layer, &random, load};
      const std::size_t got = gossip_.select(ctx, std::span(peers_).first(kk));
      if (got != kk) return nullptr;
      devices[at++] = origin;
      for (std::size_t i = 0; i < kk; ++i) devices[at++] = peers_[i];
    }
    devices[at] = origin;
    return &shapes_[kk];
  }

  // Only for strategies that read loads, so that the others do not model LoadAwarePlanSource and
  // the engine keeps its load-blind loop for them.
  void redraw(const plan& shape, group_id g, rng& random, std::span<const double> load,
              std::span<std::uint32_t> devices) requires detail::reads_load<G> {
    const auto calls = shape.calls_of(g);
    // The aggregation (one call) has no peers; layer 1 was drawn a moment ago, at birth.
    if (!refresh_ || calls.size() < 2 || shape[calls[0]].layer < 2) return;
    const std::size_t want = calls.size() - 1;
    const std::uint32_t origin = devices[calls[0]];
    const gossip_context ctx{origin, n_, shape[calls[0]].layer, &random, load};
    if (gossip_.select(ctx, std::span(peers_).first(want)) != want) return;  // keep the birth draw
    for (std::size_t i = 0; i < want; ++i) devices[calls[i + 1]] = peers_[i];
  }

  [[nodiscard]] std::uint32_t devices() const noexcept { return n_; }
  [[nodiscard]] std::uint32_t layers() const noexcept { return m_; }
  [[nodiscard]] bool refresh_peers() const noexcept { return refresh_; }

 private:
  std::uint32_t n_;
  std::uint32_t m_;
  G gossip_;
  bool refresh_;
  std::vector<std::size_t> expected_;
  std::vector<std::uint32_t> peers_;
  std::vector<plan> shapes_;  // by peer count; never resized after construction
  plan scratch_;
};

/// @brief What to simulate: arrivals, service times, run length and what to record.
///
/// @code{.cpp}
/// moa::queueing::sim_config cfg;
/// cfg.lambda = {0.1, 0.1, 0.2, 0.05};
/// cfg.service = {moa::queueing::service_model::lognormal(1.0, 0.5)};
/// cfg.aggregator_service = {moa::queueing::service_model::lognormal(1.5, 0.5)};
/// @endcode
struct sim_config {
  std::size_t devices = 0;     ///< n; 0 takes lambda.size()
  std::vector<double> lambda;  ///< Poisson prompt rate per user (0 = silent user)
  std::vector<arrival> trace;  ///< if not empty, replayed instead of Poisson (sorted by time)
  std::vector<service_model> service;             ///< one for all devices, or one per device
  std::vector<service_model> aggregator_service;  ///< for aggregator calls; empty = `service`
  double horizon = 1e4;                           ///< virtual time at which the run stops
  double warmup = 0;                              ///< statistics restart at this time
  std::uint64_t seed = 1;                         ///< replication r uses mix_seed(seed, r)
  std::size_t batches = 32;                       ///< batch means for the instability detector
  double sample_period = 0;  ///< > 0: record every device's number in system this often
  std::size_t max_backlog = std::size_t{1} << 22;  ///< calls in system before giving up
};

/// @brief Per-device figures over the measured window.
struct device_result {
  double mean_queue = 0;   ///< time-average number in system (queue + in service)
  double utilisation = 0;  ///< fraction of time busy
  double throughput = 0;   ///< calls completed per unit time
  double growth_rate = 0;  ///< slope of the outstanding calls owed by the device (per unit time)
  std::uint64_t completed = 0;
};

/// @brief Number in system of every device at regular times (row-major: time x device).
struct time_series {
  std::size_t devices = 0;
  std::vector<double> time;
  std::vector<std::uint32_t> queue;
};

/// @brief The figures of one simulation run.
///
/// @code{.cpp}
/// auto r = moa::queueing::simulate(cfg, source);
/// if (!r.stable) std::cout << "backlog grows by " << r.growth_rate << " calls per unit time\n";
/// @endcode
struct run_result {
  std::vector<device_result> devices;
  double mean_latency = 0;
  double p50 = 0, p95 = 0, p99 = 0;
  double throughput = 0;      ///< prompts completed per unit time
  std::uint64_t prompts = 0;  ///< prompts completed in the window
  std::uint64_t events = 0;   ///< arrivals + completions processed (whole run)
  double window = 0;          ///< measured time (end - warm-up)
  bool stable = true;         ///< false when the backlog grows linearly or hit max_backlog
  bool truncated = false;     ///< stopped early at max_backlog
  double growth_rate = 0;     ///< slope of all outstanding calls (per unit time)
  double growth_t = 0;        ///< its t statistic over batch means
  time_series series;
};

namespace detail {

inline void validate(const sim_config& c, std::size_t n) {
  if (n == 0) fail("the simulation has no devices; give lambda (one rate per user) or devices");
  if (n >= (std::size_t{1} << 31)) fail("too many devices");
  if (c.trace.empty()) {
    if (c.lambda.size() != n)
      fail("lambda has " + std::to_string(c.lambda.size()) + " entries for " + std::to_string(n) +
           " devices; give one Poisson rate per user");
    bool any = false;
    for (std::size_t i = 0; i < n; ++i) {
      if (!(c.lambda[i] >= 0) || !std::isfinite(c.lambda[i]))
        fail(indexed("lambda", i) + " = " + number(c.lambda[i]) +
             " must be finite and >= 0 (0: a silent user)");
      any = any || c.lambda[i] > 0;
    }
    if (!any) fail("every lambda is zero; give at least one user a positive rate");
  } else {
    for (std::size_t i = 0; i < c.trace.size(); ++i) {
      if (c.trace[i].origin >= n)
        fail("trace entry " + std::to_string(i) + " is born at device " +
             std::to_string(c.trace[i].origin) + " of a " + std::to_string(n) + "-device network");
      if (!std::isfinite(c.trace[i].time) || c.trace[i].time < 0 ||
          (i > 0 && c.trace[i].time < c.trace[i - 1].time))
        fail("trace times must be finite, >= 0 and sorted; entry " + std::to_string(i) + " is not");
    }
  }
  auto sizes_ok = [n](std::size_t s) { return s == 1 || s == n; };
  if (!sizes_ok(c.service.size()))
    fail("service has " + std::to_string(c.service.size()) + " models for " + std::to_string(n) +
         " devices; give one for all or one per device");
  if (!c.aggregator_service.empty() && !sizes_ok(c.aggregator_service.size()))
    fail("aggregator_service has " + std::to_string(c.aggregator_service.size()) + " models for " +
         std::to_string(n) + " devices; give none, one, or one per device");
  require_positive(c.horizon, "horizon", "give the virtual time to simulate");
  if (!(c.warmup >= 0) || !(c.warmup < c.horizon))
    fail("warmup = " + number(c.warmup) + " must lie in [0, horizon = " + number(c.horizon) +
         "); the statistics are taken after it");
  if (!(c.sample_period >= 0) || !std::isfinite(c.sample_period))
    fail("sample_period must be finite and >= 0 (0: no time series)");
  if (c.max_backlog == 0) fail("max_backlog must be at least 1");
}

template <PlanSource Source>
class engine {
 public:
  engine(const sim_config& cfg, Source& source, std::uint64_t seed)
      : cfg_(cfg),
        source_(source),
        n_(cfg.devices ? cfg.devices : cfg.lambda.size()),
        random_(seed) {
    validate(cfg, n_);
    owners_.reserve(2 * n_);
    for (std::size_t d = 0; d < n_; ++d) {
      const auto& base = cfg.service[cfg.service.size() == 1 ? 0 : d];
      owners_.push_back(base);
      if (cfg.aggregator_service.empty())
        owners_.push_back(base);
      else
        owners_.push_back(cfg.aggregator_service[cfg.aggregator_service.size() == 1 ? 0 : d]);
    }
    for (const auto& m : owners_) models_.push_back(sampler::of(m));
    devices_.resize(n_);
    for (auto& d : devices_) d.ring.resize(16);
    last_shape_.assign(n_, invalid);
    last_key_shape_.assign(n_, invalid);
    last_key_.assign(n_, nullptr);
    scratch_.resize(4096);
    heap_.reserve(2 * n_ + 2);
    if constexpr (load_aware) load_.assign(n_, 0.0);
  }

  run_result run() {
    const std::size_t n = n_;
    if (cfg_.trace.empty()) {
      for (std::uint32_t u = 0; u < n; ++u)
        if (cfg_.lambda[u] > 0) push({exponential(cfg_.lambda[u]), u, arrival_kind});
    } else {
      push({cfg_.trace[0].time, trace_user, arrival_kind});
    }
    batches_ = std::max<std::size_t>(cfg_.batches, 3);
    batch_len_ = (cfg_.horizon - cfg_.warmup) / double(batches_);
    batch_outstanding_.assign((batches_ + 1) * n, 0.0);
    next_warm_ = cfg_.warmup > 0 ? cfg_.warmup : inf;
    next_batch_ = cfg_.warmup > 0 ? inf : cfg_.warmup + batch_len_;
    next_sample_ = cfg_.sample_period > 0 ? 0 : inf;
    next_mark_ = std::min({next_warm_, next_batch_, next_sample_});
    result_.series.devices = n;

    double end = cfg_.horizon;
    while (!heap_.empty()) {
      const event ev = heap_[0];
      if (ev.time > cfg_.horizon) break;
      if (ev.time >= next_mark_) marks(ev.time);
      now_ = ev.time;
      ++events_;
      if (ev.kind == arrival_kind)
        on_arrival(ev);
      else
        on_completion(ev.who);
      if (backlog_ > cfg_.max_backlog) {
        result_.truncated = true;
        end = now_;
        break;
      }
    }
    if (end >= next_mark_) marks(end);
    now_ = end;
    for (auto& d : devices_) touch(d);
    return finish(end);
  }

 private:
  static constexpr double inf = std::numeric_limits<double>::infinity();
  static constexpr std::uint32_t arrival_kind = 0, completion_kind = 1;
  static constexpr std::uint32_t invalid = ~std::uint32_t{0};
  static constexpr std::uint32_t slot_bits = 24, slot_mask = (1u << slot_bits) - 1;
  static constexpr std::uint32_t trace_user = ~std::uint32_t{0} - 1;
  // Everything load-related is compiled only for load-aware sources: the others keep the exact
  // event loop (and random stream) they had before.
  static constexpr bool load_aware = LoadAwarePlanSource<Source>;

  // service_model flattened to a POD, so the hot path inlines its switch.
  struct sampler {
    service_model::kind kind;
    double scale;  // mean (constant, exponential, lognormal) or factor (empirical)
    double sigma;
    const double* data;
    std::size_t size;
    static sampler of(const service_model& m) {
      const auto* s = m.samples();
      const double mean = m.mean();
      if (m.type() == service_model::kind::empirical)
        return {m.type(), m.scale_of_samples(), 0, s->data(), s->size()};
      return {m.type(), mean, m.sigma(), nullptr, 0};
    }
    double operator()(rng& random) const noexcept {
      switch (kind) {
        case service_model::kind::constant:
          return scale;
        case service_model::kind::exponential:
          return scale * standard_exponential(random);
        case service_model::kind::lognormal:
          return scale *
                 std::exp(sigma * service_model::standard_normal(random) - sigma * sigma / 2);
        case service_model::kind::empirical:
          return scale * data[random.below(size)];
      }
      return 0;
    }
  };
  struct event {
    double time;
    std::uint32_t who;
    std::uint32_t kind;
  };
  struct job {
    std::uint32_t ref;  // shape << slot_bits | slot
    std::uint32_t call;
  };
  struct device {
    std::uint32_t in_system = 0;
    std::uint32_t head = 0;  // ring: waiting jobs are ring[head .. head + in_system - 1)
    double last = 0;
    double area = 0;
    double busy = 0;
    std::uint64_t completed = 0;
    job current{};
    std::vector<job> ring;  // power-of-two size
  };
  // A compiled plan structure plus the arena of the prompts in flight that use it.
  struct shape {
    const plan* key = nullptr;
    std::uint32_t calls = 0, groups = 0, sink = 0, stride = 0;
    std::vector<std::uint32_t> call_group;
    std::vector<std::uint8_t> role;                        // 1 = aggregator
    std::vector<std::uint32_t> group_first, group_inputs;  // structure, for comparison
    std::vector<std::uint32_t> need;
    std::vector<std::uint32_t> consumer_first, consumers;
    std::vector<std::uint32_t> group_call_first, group_calls;
    std::vector<std::uint32_t> roots;
    std::vector<std::uint32_t> data;  // per slot: devices[calls], pending[groups]
    std::vector<double> birth;
    std::vector<std::uint32_t> free;
  };

  // --- heap ---------------------------------------------------------------------------------
  void push(event e) {
    heap_.push_back(e);
    std::size_t i = heap_.size() - 1;
    while (i > 0) {
      const std::size_t parent = (i - 1) / 2;
      if (heap_[parent].time <= e.time) break;
      heap_[i] = heap_[parent];
      i = parent;
    }
    heap_[i] = e;
  }
  void replace_top(event e) {  // pop + push in one sift-down
    const std::size_t size = heap_.size();
    std::size_t i = 0;
    for (;;) {
      std::size_t child = 2 * i + 1;
      if (child >= size) break;
      if (child + 1 < size && heap_[child + 1].time < heap_[child].time) ++child;
      if (e.time <= heap_[child].time) break;
      heap_[i] = heap_[child];
      i = child;
    }
    heap_[i] = e;
  }
  void pop_top() {
    const event last = heap_.back();
    heap_.pop_back();
    if (!heap_.empty()) replace_top(last);
  }

  double exponential(double rate) noexcept { return standard_exponential(random_) / rate; }

  void touch(device& d) noexcept {
    const double dt = now_ - d.last;
    d.area += double(d.in_system) * dt;
    d.busy += d.in_system ? dt : 0.0;
    d.last = now_;
  }

  // --- marks: warm-up, batch boundaries, samples ---------------------------------------------
  void marks(double t) {
    while (next_mark_ <= t) {
      const double saved = now_;
      now_ = next_mark_;
      if (next_warm_ == next_mark_) {
        for (auto& d : devices_) {
          touch(d);
          d.area = d.busy = 0;
          d.completed = 0;
        }
        latency_.clear();
        latency_sum_ = 0;
        snapshot_outstanding(0);
        next_warm_ = inf;
        next_batch_ = cfg_.warmup + batch_len_;
      }
      if (next_batch_ == now_) {
        ++batch_done_;
        snapshot_outstanding(batch_done_);
        next_batch_ =
            batch_done_ < batches_ ? cfg_.warmup + double(batch_done_ + 1) * batch_len_ : inf;
      }
      if (next_sample_ == now_) {
        result_.series.time.push_back(now_);
        for (const auto& d : devices_) result_.series.queue.push_back(d.in_system);
        next_sample_ += cfg_.sample_period;
      }
      now_ = saved;
      next_mark_ = std::min({next_warm_, next_batch_, next_sample_});
    }
  }

  // Calls not yet completed per device, counting calls whose inputs are not ready yet: the work
  // the network owes. In overload it grows at arrival - capacity at the bottleneck, whereas the
  // number in system grows slower because later layers wait for earlier ones. Computed by a scan
  // of the live prompts, only at batch boundaries.
  void snapshot_outstanding(std::size_t b) {
    double* out = batch_outstanding_.data() + b * n_;
    for (std::size_t i = 0; i < n_; ++i) out[i] = devices_[i].in_system;
    for (const shape& s : shapes_)
      for (std::size_t slot = 0; slot < s.birth.size(); ++slot) {
        if (s.birth[slot] < 0) continue;  // free
        const std::uint32_t* rec = s.data.data() + slot * s.stride;
        for (std::uint32_t c = 0; c < s.calls; ++c)
          if (rec[s.calls + s.call_group[c]] > 0) out[rec[c]] += 1;
      }
  }

  // --- shapes ---------------------------------------------------------------------------------
  std::uint32_t compile(const plan& p, const plan* key) {
    if (!p.sealed())
      fail("the plan source returned a plan that is not sealed; call plan::seal() first");
    if (shapes_.size() >= 255) fail("more than 255 distinct plan shapes in one simulation");
    shape s;
    s.key = key;
    s.calls = static_cast<std::uint32_t>(p.size());
    s.groups = static_cast<std::uint32_t>(p.group_count());
    s.sink = p.sink();
    s.stride = s.calls + s.groups;
    for (const auto& c : p.calls()) {
      s.call_group.push_back(c.group);
      s.role.push_back(c.role == call_role::aggregator ? 1 : 0);
    }
    s.group_first.push_back(0);
    s.group_call_first.push_back(0);
    for (group_id g = 0; g < s.groups; ++g) {
      const auto in = p.inputs_of(g);
      s.group_inputs.insert(s.group_inputs.end(), in.begin(), in.end());
      s.group_first.push_back(static_cast<std::uint32_t>(s.group_inputs.size()));
      s.need.push_back(static_cast<std::uint32_t>(in.size()));
      if (in.empty()) s.roots.push_back(g);
      const auto calls = p.calls_of(g);
      s.group_calls.insert(s.group_calls.end(), calls.begin(), calls.end());
      s.group_call_first.push_back(static_cast<std::uint32_t>(s.group_calls.size()));
    }
    s.consumer_first.push_back(0);
    for (call_id c = 0; c < s.calls; ++c) {
      const auto cons = p.consumers_of(c);
      s.consumers.insert(s.consumers.end(), cons.begin(), cons.end());
      s.consumer_first.push_back(static_cast<std::uint32_t>(s.consumers.size()));
    }
    shapes_.push_back(std::move(s));
    return static_cast<std::uint32_t>(shapes_.size() - 1);
  }

  static bool same_structure(const shape& s, const plan& p) noexcept {
    if (s.calls != p.size() || s.groups != p.group_count()) return false;
    const auto calls = p.calls();
    for (std::uint32_t c = 0; c < s.calls; ++c)
      if (s.call_group[c] != calls[c].group ||
          s.role[c] != (calls[c].role == call_role::aggregator ? 1 : 0))
        return false;
    for (group_id g = 0; g < s.groups; ++g) {
      const auto in = p.inputs_of(g);
      if (in.size() != s.group_first[g + 1] - s.group_first[g] ||
          !std::equal(in.begin(), in.end(), s.group_inputs.begin() + s.group_first[g]))
        return false;
    }
    return true;
  }

  std::uint32_t shape_of_plan(const plan& p, std::uint32_t origin) {
    const std::uint32_t last = last_shape_[origin];
    if (last != invalid && shapes_[last].key == nullptr && same_structure(shapes_[last], p))
      return last;
    for (std::uint32_t i = 0; i < shapes_.size(); ++i)
      if (shapes_[i].key == nullptr && same_structure(shapes_[i], p))
        return last_shape_[origin] = i;
    return last_shape_[origin] = compile(p, nullptr);
  }

  std::uint32_t shape_of_key(const plan* key, std::uint32_t origin) {
    if (last_key_[origin] == key) return last_key_shape_[origin];
    std::uint32_t found = invalid;
    for (std::uint32_t i = 0; i < shapes_.size(); ++i)
      if (shapes_[i].key == key) found = i;
    if (found == invalid) found = compile(*key, key);
    last_key_[origin] = key;
    return last_key_shape_[origin] = found;
  }

  std::uint32_t allocate(shape& s) {
    if (!s.free.empty()) {
      const std::uint32_t slot = s.free.back();
      s.free.pop_back();
      return slot;
    }
    const auto slot = static_cast<std::uint32_t>(s.birth.size());
    if (slot > slot_mask) fail("more than 16 million prompts in flight; lower max_backlog");
    s.birth.push_back(0);
    s.data.resize(s.data.size() + s.stride);
    return slot;
  }

  // --- events ---------------------------------------------------------------------------------
  void on_arrival(const event& ev) {
    std::uint32_t origin;
    if (ev.who == trace_user) {
      origin = cfg_.trace[trace_cursor_].origin;
      if (++trace_cursor_ < cfg_.trace.size())
        replace_top({cfg_.trace[trace_cursor_].time, trace_user, arrival_kind});
      else
        pop_top();
    } else {
      origin = ev.who;
      replace_top({now_ + exponential(cfg_.lambda[origin]), origin, arrival_kind});
    }
    start_prompt(origin);
  }

  void start_prompt(std::uint32_t origin) {
    std::uint32_t sid = invalid;
    const std::uint32_t* devices = nullptr;
    if constexpr (ShapedPlanSource<Source>) {
      const plan* key = nullptr;
      if constexpr (load_aware)
        key = source_.draw(origin, random_, scratch_, std::span<const double>(load_));
      else
        key = source_.draw(origin, random_, scratch_);
      if (key) {
        sid = shape_of_key(key, origin);
        devices = scratch_.data();
      }
    }
    if (sid == invalid) {
      const plan& p = fallback_plan(origin);
      sid = shape_of_plan(p, origin);
      const auto calls = p.calls();
      if (scratch_.size() < calls.size()) scratch_.resize(calls.size());
      for (std::size_t c = 0; c < calls.size(); ++c) scratch_[c] = calls[c].backend;
      devices = scratch_.data();
    }
    shape& s = shapes_[sid];
    for (std::uint32_t c = 0; c < s.calls; ++c)
      if (devices[c] >= n_)
        fail("a plan of origin " + std::to_string(origin) + " calls device " +
             std::to_string(devices[c]) + " of a " + std::to_string(n_) + "-device network");
    const std::uint32_t slot = allocate(s);
    std::uint32_t* rec = s.data.data() + std::size_t(slot) * s.stride;
    std::copy(devices, devices + s.calls, rec);
    std::copy(s.need.begin(), s.need.end(), rec + s.calls);
    s.birth[slot] = now_;
    const std::uint32_t ref = sid << slot_bits | slot;
    for (std::uint32_t g : s.roots)
      for (std::uint32_t i = s.group_call_first[g]; i < s.group_call_first[g + 1]; ++i)
        dispatch(s, rec, ref, s.group_calls[i]);
  }

  const plan& fallback_plan(std::uint32_t origin) {
    if constexpr (requires { source_(origin, random_, std::span<const double>(load_)); })
      return source_(origin, random_, std::span<const double>(load_));
    else
      return source_(origin, random_);
  }

  // Called as group g of a prompt becomes ready, before its calls are queued: the loads are
  // those of this instant, the completion that made g ready already counted.
  void redraw(const shape& s, std::uint32_t* rec, std::uint32_t g) {
    if (s.key == nullptr) return;  // a fallback plan: its shape is not the source's to redraw
    source_.redraw(*s.key, g, random_, std::span<const double>(load_),
                   std::span<std::uint32_t>(rec, s.calls));
    for (std::uint32_t i = s.group_call_first[g]; i < s.group_call_first[g + 1]; ++i)
      if (rec[s.group_calls[i]] >= n_)
        fail("a redraw of group " + std::to_string(g) + " calls device " +
             std::to_string(rec[s.group_calls[i]]) + " of a " + std::to_string(n_) +
             "-device network");
  }

  void dispatch(const shape& s, const std::uint32_t* rec, std::uint32_t ref, std::uint32_t call) {
    const std::uint32_t d = rec[call];
    device& dev = devices_[d];
    touch(dev);
    ++backlog_;
    if constexpr (load_aware) load_[d] += 1;
    if (dev.in_system++ == 0) {
      dev.current = {ref, call};
      push({now_ + models_[2 * d + s.role[call]](random_), d, completion_kind});
      return;
    }
    const auto size = static_cast<std::uint32_t>(dev.ring.size());
    const std::uint32_t waiting = dev.in_system - 2;  // before this job
    if (waiting == size) grow(dev);
    dev.ring[(dev.head + waiting) & (dev.ring.size() - 1)] = {ref, call};
  }

  static void grow(device& dev) {
    std::vector<job> bigger(dev.ring.size() * 2);
    const std::size_t mask = dev.ring.size() - 1;
    for (std::size_t i = 0; i < dev.ring.size(); ++i) bigger[i] = dev.ring[(dev.head + i) & mask];
    dev.ring = std::move(bigger);
    dev.head = 0;
  }

  void on_completion(std::uint32_t d) {
    device& dev = devices_[d];
    const job done = dev.current;
    touch(dev);
    --dev.in_system;
    --backlog_;
    if constexpr (load_aware) load_[d] -= 1;
    ++dev.completed;
    if (dev.in_system > 0) {
      dev.current = dev.ring[dev.head];
      dev.head = (dev.head + 1) & static_cast<std::uint32_t>(dev.ring.size() - 1);
      const shape& next = shapes_[dev.current.ref >> slot_bits];
      replace_top(
          {now_ + models_[2 * d + next.role[dev.current.call]](random_), d, completion_kind});
    } else {
      pop_top();
    }
    shape& s = shapes_[done.ref >> slot_bits];
    const std::uint32_t slot = done.ref & slot_mask;
    std::uint32_t* rec = s.data.data() + std::size_t(slot) * s.stride;
    if (done.call == s.sink) {
      const double latency = now_ - s.birth[slot];
      latency_.add(latency);
      latency_sum_ += latency;
      s.birth[slot] = -1;  // marks the slot free for snapshot_outstanding
      s.free.push_back(slot);
      return;
    }
    for (std::uint32_t i = s.consumer_first[done.call]; i < s.consumer_first[done.call + 1]; ++i) {
      const std::uint32_t g = s.consumers[i];
      if (--rec[s.calls + g] == 0) {
        if constexpr (load_aware) redraw(s, rec, g);
        for (std::uint32_t j = s.group_call_first[g]; j < s.group_call_first[g + 1]; ++j)
          dispatch(s, rec, done.ref, s.group_calls[j]);
      }
    }
  }

  // --- results --------------------------------------------------------------------------------
  run_result finish(double end) {
    run_result& r = result_;
    r.events = events_;
    r.window = end - cfg_.warmup;
    const double w = r.window > 0 ? r.window : std::nan("");
    r.devices.resize(n_);
    for (std::size_t i = 0; i < n_; ++i) {
      r.devices[i].mean_queue = devices_[i].area / w;
      r.devices[i].utilisation = devices_[i].busy / w;
      r.devices[i].completed = devices_[i].completed;
      r.devices[i].throughput = double(devices_[i].completed) / w;
    }
    r.prompts = latency_.count();
    r.mean_latency = r.prompts ? latency_sum_ / double(r.prompts) : std::nan("");
    r.p50 = latency_.quantile(0.50);
    r.p95 = latency_.quantile(0.95);
    r.p99 = latency_.quantile(0.99);
    r.throughput = double(r.prompts) / w;
    // Instability: regress the outstanding work at the batch boundaries on time.
    const std::size_t b = batch_done_ + 1;  // snapshots 0 .. batch_done_
    if (b >= 4) {
      std::vector<double> x(b), total(b, 0.0), y(b);
      for (std::size_t k = 0; k < b; ++k) x[k] = cfg_.warmup + double(k) * batch_len_;
      for (std::size_t i = 0; i < n_; ++i) {
        for (std::size_t k = 0; k < b; ++k) {
          y[k] = batch_outstanding_[k * n_ + i];
          total[k] += y[k];
        }
        r.devices[i].growth_rate = fit_slope(x, y).slope;
      }
      const slope_fit fit = fit_slope(x, total);
      r.growth_rate = fit.slope;
      r.growth_t = fit.t;
      const std::size_t quarter = std::max<std::size_t>(1, b / 4);
      double early = 0;
      for (std::size_t k = 0; k < quarter; ++k) early += total[k];
      early /= double(quarter);
      const double grown = fit.slope * (x[b - 1] - x[0]);
      r.stable = !(fit.slope > 0 && fit.t > 4 && grown > std::max(2.0, early));
    }
    if (r.truncated) r.stable = false;
    return std::move(r);
  }

  const sim_config& cfg_;
  Source& source_;
  std::size_t n_;
  moa::rng random_;
  std::vector<service_model> owners_;  // keeps empirical samples alive for samplers_
  std::vector<sampler> models_;        // [2 d + role]
  std::vector<event> heap_;
  std::vector<device> devices_;
  std::vector<shape> shapes_;
  std::vector<std::uint32_t> last_shape_, last_key_shape_;
  std::vector<const plan*> last_key_;
  std::vector<std::uint32_t> scratch_;
  std::vector<double> load_;  // number in system per device, as doubles for gossip_context::load
  std::size_t trace_cursor_ = 0;
  std::size_t backlog_ = 0;
  std::uint64_t events_ = 0;
  double now_ = 0;
  double next_mark_ = 0, next_warm_ = 0, next_batch_ = 0, next_sample_ = 0;
  std::size_t batches_ = 0, batch_done_ = 0;
  double batch_len_ = 0;
  std::vector<double> batch_outstanding_;
  log_histogram latency_;
  double latency_sum_ = 0;
  run_result result_;
};

}  // namespace detail

/// @brief One run with `cfg.seed`.
template <PlanSource Source>
run_result simulate(const sim_config& cfg, Source& source) {
  return detail::engine<Source>(cfg, source, cfg.seed).run();
}

/// @brief A mean and the half-width of its 95% confidence interval over replications.
struct estimate {
  double mean = 0;
  double half_width = 0;
  [[nodiscard]] bool contains(double x) const noexcept {
    return x >= mean - half_width && x <= mean + half_width;
  }
};

/// @brief Independent replications of a run and their 95% confidence intervals.
///
/// @code{.cpp}
/// auto rep = moa::queueing::replicate(cfg, source, 8);
/// std::cout << rep.mean_latency.mean << " +- " << rep.mean_latency.half_width << '\n';
/// @endcode
struct replicated_result {
  std::vector<run_result> runs;
  estimate mean_latency, p50, p95, p99, throughput, growth_rate;
  std::vector<estimate> mean_queue, utilisation, device_throughput;
  std::size_t unstable_runs = 0;
  bool stable = true;  ///< false when at least half the replications were found unstable
};

namespace detail {
template <class F>
estimate over_runs(const std::vector<run_result>& runs, F&& get) {
  double sum = 0;
  for (const auto& r : runs) sum += get(r);
  const double n = double(runs.size());
  const double mean = sum / n;
  if (runs.size() < 2) return {mean, std::numeric_limits<double>::infinity()};
  double ss = 0;
  for (const auto& r : runs) ss += (get(r) - mean) * (get(r) - mean);
  return {mean, t95(runs.size() - 1) * std::sqrt(ss / (n - 1) / n)};
}
}  // namespace detail

/// @brief `replications` independent runs, replication r seeded with mix_seed(cfg.seed, r), run
/// in parallel on `threads` threads (0: all cores). Each thread works on its own copy of
/// `source`, so the source must be copyable. `on_done(completed, total)`, if given, is called
/// (serialised) after each run, for progress reports.
template <PlanSource Source, class Progress = void (*)(std::size_t, std::size_t)>
requires std::copy_constructible<Source> replicated_result replicate(const sim_config& cfg,
                                                                     const Source& source,
                                                                     std::size_t replications,
                                                                     std::size_t threads = 0,
                                                                     Progress on_done = nullptr) {
  if (replications == 0) detail::fail("replications must be at least 1");
  detail::validate(cfg, cfg.devices ? cfg.devices : cfg.lambda.size());
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  threads = std::min(threads, replications);
  replicated_result out;
  out.runs.resize(replications);
  std::atomic<std::size_t> next{0};
  std::size_t completed = 0;
  std::mutex mutex;  // guards `failure`, `completed` and the progress callback
  std::exception_ptr failure;
  auto work = [&] {
    Source mine(source);
    for (std::size_t r; (r = next.fetch_add(1)) < replications;) {
      try {
        out.runs[r] = detail::engine<Source>(cfg, mine, mix_seed(cfg.seed, r)).run();
      } catch (...) {
        const std::lock_guard lock(mutex);
        if (!failure) failure = std::current_exception();
      }
      const std::lock_guard lock(mutex);
      ++completed;
      if constexpr (std::is_pointer_v<Progress>) {
        if (on_done) on_done(completed, replications);
      } else {
        on_done(completed, replications);
      }
    }
  };
  {
    std::vector<std::jthread> pool;
    for (std::size_t t = 1; t < threads; ++t) pool.emplace_back(work);
    work();
  }
  if (failure) std::rethrow_exception(failure);
  const auto& runs = out.runs;
  out.mean_latency = detail::over_runs(runs, [](const run_result& r) { return r.mean_latency; });
  out.p50 = detail::over_runs(runs, [](const run_result& r) { return r.p50; });
  out.p95 = detail::over_runs(runs, [](const run_result& r) { return r.p95; });
  out.p99 = detail::over_runs(runs, [](const run_result& r) { return r.p99; });
  out.throughput = detail::over_runs(runs, [](const run_result& r) { return r.throughput; });
  out.growth_rate = detail::over_runs(runs, [](const run_result& r) { return r.growth_rate; });
  const std::size_t n = runs[0].devices.size();
  for (std::size_t i = 0; i < n; ++i) {
    out.mean_queue.push_back(
        detail::over_runs(runs, [i](const run_result& r) { return r.devices[i].mean_queue; }));
    out.utilisation.push_back(
        detail::over_runs(runs, [i](const run_result& r) { return r.devices[i].utilisation; }));
    out.device_throughput.push_back(
        detail::over_runs(runs, [i](const run_result& r) { return r.devices[i].throughput; }));
  }
  for (const auto& r : runs) out.unstable_runs += r.stable ? 0 : 1;
  out.stable = out.unstable_runs * 2 < runs.size();
  return out;
}

}  // namespace moa::queueing
