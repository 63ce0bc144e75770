// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The simulator's virtual-time engine; moa/queueing/simulator.hpp is its public face.
///
/// Memory is laid out for the event loop, so that its speed holds as n grows (issue 15):
/// - one arrival event for all Poisson users (their superposition, moa::poisson_process), so the
///   event heap holds one arrival plus one completion per busy device;
/// - a 4-ary heap whose four children share one 64-byte line: half the depth of a binary heap
///   and one line per level;
/// - a device is one 64-byte line (counters, integrals, the job in service, its ring) followed by
///   an inline ring of 8 waiting jobs; longer queues spill to a ring of their own and come back
///   when they drain;
/// - one sampler per *distinct* service model, shared by every device that uses it (a device
///   holds the index of its (proposer, aggregator) pair);
/// - a prompt in flight is one record in its shape's arena: birth time, pending input counts and
///   devices, 48 bytes for the gossip plan with M = 2, k = 2.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "moa/core/random.hpp"
#include "moa/core/workload.hpp"
#include "moa/queueing/detail/check.hpp"
#include "moa/queueing/detail/stats.hpp"
#include "moa/queueing/plan_source.hpp"
#include "moa/queueing/sim_types.hpp"
#include "moa/topology/plan.hpp"

namespace moa::queueing::detail {

/// Limits checked before anything is allocated, so a bad configuration is a typed error, never an
/// out-of-memory abort.
inline constexpr std::size_t max_recorded_values = std::size_t{1} << 28;  // series, batches
inline constexpr std::size_t max_batches = 4096;

inline void validate(const sim_config& c, std::size_t n) {
  if (n == 0) fail("the simulation has no devices; give lambda (one rate per user) or devices");
  if (n > max_devices)
    fail("devices = " + std::to_string(n) + " is more than the simulator's 2^24 devices");
  if (c.trace.empty()) {
    if (c.lambda.size() != n)
      fail("lambda has " + std::to_string(c.lambda.size()) + " entries for " + std::to_string(n) +
           " devices; give one Poisson rate per user");
    poisson_process{c.lambda};  // checks every rate (finite, >= 0, not all zero)
  } else {
    check_trace(c.trace, n);
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
  if (c.batches < 4 || c.batches > max_batches)
    fail("batches = " + std::to_string(c.batches) + " must lie in [4, 4096]");
  if (double(c.batches + 1) * double(n) > double(max_recorded_values))
    fail("batches x devices = " + std::to_string(c.batches) + " x " + std::to_string(n) +
         " is more than 2^28 batch means; give fewer batches");
  if (!(c.sample_period >= 0) || !std::isfinite(c.sample_period))
    fail("sample_period must be finite and >= 0 (0: no time series)");
  if (c.sample_period > 0 &&
      (c.horizon / c.sample_period + 1) * double(n) > double(max_recorded_values))
    fail("sample_period = " + number(c.sample_period) + " over horizon " + number(c.horizon) +
         " records more than 2^28 queue lengths; sample less often");
  if (c.max_backlog == 0 || c.max_backlog > (std::size_t{1} << 31))
    fail("max_backlog must lie in [1, 2^31]");
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
    if (cfg.trace.empty()) users_ = poisson_process(cfg.lambda);
    devices_ = std::make_unique<device[]>(n_);
    for (std::size_t d = 0; d < n_; ++d) devices_[d].ring = devices_[d].inline_ring;
    spill_.resize(n_);
    assign_models();
    last_shape_.assign(n_, invalid);
    last_key_shape_.assign(n_, invalid);
    last_key_.assign(n_, nullptr);
    scratch_.resize(4096);
    heap_.assign(heap_offset, event{});
    heap_.reserve(heap_offset + n_ + 2);
    if constexpr (load_aware) load_.assign(n_, 0.0);
    if constexpr (observing) started_.assign(n_, 0.0);
  }

  run_result run() {
    const std::size_t n = n_;
    if (cfg_.trace.empty()) {
      const arrival a = users_.next(random_);
      push({a.time, a.origin, arrival_ref});
    } else {
      push({cfg_.trace[0].time, cfg_.trace[0].origin, arrival_ref});
    }
    batches_ = cfg_.batches;
    batch_len_ = (cfg_.horizon - cfg_.warmup) / double(batches_);
    batch_outstanding_.assign((batches_ + 1) * n, 0.0);
    offered_sum_.assign(n, 0.0);
    offered_squares_.assign(n, 0.0);
    mark_busy_.assign(n, 0.0);
    mark_queue_.assign(n, 0.0);
    next_warm_ = cfg_.warmup > 0 ? cfg_.warmup : inf;
    next_batch_ = cfg_.warmup > 0 ? inf : cfg_.warmup + batch_len_;
    next_sample_ = cfg_.sample_period > 0 ? 0 : inf;
    next_mark_ = std::min({next_warm_, next_batch_, next_sample_});
    result_.series.devices = n;

    double end = cfg_.horizon;
    while (size_ > 0) {
      const event ev = top();
      if (ev.time > cfg_.horizon) break;
      if (ev.time >= next_mark_) marks(ev.time);
      now_ = ev.time;
      ++events_;
      if (ev.ref == arrival_ref)
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
    for (std::size_t d = 0; d < n_; ++d) touch(devices_[d]);
    return finish(end);
  }

 private:
  static constexpr double inf = std::numeric_limits<double>::infinity();
  static constexpr std::uint32_t arrival_ref = ~std::uint32_t{0};
  static constexpr std::uint32_t invalid = ~std::uint32_t{0};
  static constexpr std::uint32_t slot_bits = 24, slot_mask = (1u << slot_bits) - 1;
  static constexpr std::uint32_t inline_jobs = 8;
  static constexpr std::size_t heap_offset = 3;    // puts every group of 4 children on one line
  static constexpr std::uint32_t record_head = 2;  // words of the birth time in a record
  // Everything load-related is compiled only for load-aware sources: the others keep the
  // load-blind event loop.
  static constexpr bool load_aware = LoadAwarePlanSource<Source>;
  static constexpr bool observing = ObservingPlanSource<Source>;

  struct event {
    double time;
    std::uint32_t who;  // the device of a completion, the origin of an arrival
    std::uint32_t ref;  // a completion: its job's prompt (for prefetching); an arrival: arrival_ref
  };
  struct job {
    std::uint32_t ref;  // shape << slot_bits | slot
    std::uint32_t call;
  };
  struct alignas(64) device {
    std::uint32_t in_system = 0;
    std::uint32_t head = 0;  // waiting jobs: ring[(head + i) & mask], i < in_system - 1
    std::uint32_t mask = inline_jobs - 1;
    std::uint32_t models = 0;  // index in pairs_
    double last = 0;
    double area = 0;
    double busy = 0;
    std::uint64_t completed = 0;
    job current{};
    job* ring = nullptr;  // inline_ring, or the device's spill ring while its queue is long
    job inline_ring[inline_jobs]{};
  };
  static_assert(sizeof(device) == 128);
  // A 64-byte-aligned allocator, so the heap's groups of children each fill one line.
  template <class T>
  struct line_allocator {
    using value_type = T;
    line_allocator() = default;
    template <class U>
    line_allocator(const line_allocator<U>&) noexcept {}  // NOLINT: rebinding
    T* allocate(std::size_t k) {
      return static_cast<T*>(::operator new (k * sizeof(T), std::align_val_t{64}));
    }
    void deallocate(T* p, std::size_t) noexcept { ::operator delete (p, std::align_val_t{64}); }
    friend bool operator==(const line_allocator&, const line_allocator&) noexcept { return true; }
  };
  // A compiled plan structure plus the arena of the prompts in flight that use it. A record is
  // [birth (2 words)][pending inputs per group][device per call], in 32-bit words.
  struct shape {
    const plan* key = nullptr;
    std::uint32_t calls = 0, groups = 0, sink = 0, stride = 0, devices_at = 0, slots = 0;
    std::vector<std::uint32_t> call_group;
    std::vector<std::uint8_t> role;                        // 1 = aggregator
    std::vector<std::uint32_t> group_first, group_inputs;  // structure, for comparison
    std::vector<std::uint32_t> need;
    std::vector<std::uint32_t> consumer_first, consumers;
    std::vector<std::uint32_t> group_call_first, group_calls;
    std::vector<std::uint32_t> roots;
    std::vector<std::uint32_t> data;
    std::vector<std::uint32_t> free;
  };

  static double birth_of(const std::uint32_t* rec) noexcept {
    double b;
    std::memcpy(&b, rec, sizeof b);
    return b;
  }
  static void set_birth(std::uint32_t* rec, double b) noexcept { std::memcpy(rec, &b, sizeof b); }

  // --- service models: one sampler per distinct model -----------------------------------------
  void assign_models() {
    const auto& agg = cfg_.aggregator_service.empty() ? cfg_.service : cfg_.aggregator_service;
    if (cfg_.service.size() == 1 && agg.size() == 1) {  // the common case: no search at all
      models_.push_back(cfg_.service[0]);
      models_.push_back(agg[0]);
      pairs_.push_back({0, 1});
      return;
    }
    using key = std::tuple<int, double, double, double, const void*>;
    std::map<key, std::uint32_t> model_index;
    std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint32_t> pair_index;
    auto index_of = [&](const service_model& m) {
      const key k{int(m.type()), m.mean(), m.sigma(), m.scale_of_samples(), m.samples()};
      const auto [it, fresh] = model_index.try_emplace(k, std::uint32_t(models_.size()));
      if (fresh) models_.push_back(m);
      return it->second;
    };
    for (std::size_t d = 0; d < n_; ++d) {
      const std::uint32_t p = index_of(cfg_.service[cfg_.service.size() == 1 ? 0 : d]);
      const std::uint32_t a = index_of(agg[agg.size() == 1 ? 0 : d]);
      const auto [it, fresh] = pair_index.try_emplace({p, a}, std::uint32_t(pairs_.size()));
      if (fresh) pairs_.push_back({p, a});
      devices_[d].models = it->second;
    }
  }
  double service_time(const device& dev, std::uint8_t role) noexcept {
    return models_[pairs_[dev.models][role]].sample(random_);
  }
  double mean_service(std::size_t d) const noexcept {
    const auto& p = pairs_[devices_[d].models];
    return std::max(models_[p[0]].mean(), models_[p[1]].mean());
  }

  // --- the 4-ary heap (slot i of the tree at heap_[heap_offset + i]) -------------------------
  event& at(std::size_t i) noexcept { return heap_[heap_offset + i]; }
  const event& top() const noexcept { return heap_[heap_offset]; }
  void push(event e) {
    heap_.push_back(e);
    std::size_t i = size_++;
    while (i > 0) {
      const std::size_t parent = (i - 1) / 4;
      if (at(parent).time <= e.time) break;
      at(i) = at(parent);
      i = parent;
    }
    at(i) = e;
  }
  void replace_top(event e) noexcept {  // pop + push in one sift-down
    std::size_t i = 0;
    for (;;) {
      const std::size_t first = 4 * i + 1;
      if (first >= size_) break;
      const std::size_t last = std::min(first + 4, size_);
      std::size_t best = first;
      for (std::size_t c = first + 1; c < last; ++c)
        if (at(c).time < at(best).time) best = c;
      if (e.time <= at(best).time) break;
      at(i) = at(best);
      i = best;
    }
    at(i) = e;
  }
  void pop_top() noexcept {
    const event last = at(size_ - 1);
    heap_.pop_back();
    if (--size_ > 0) replace_top(last);
  }

  std::uint32_t* record_of(std::uint32_t ref) noexcept {
    shape& s = shapes_[ref >> slot_bits];
    return s.data.data() + std::size_t(ref & slot_mask) * s.stride;
  }
  // At large n the next completion's device and prompt record are cache misses; asking for them
  // before finishing the current event overlaps those misses with its work.
  void prefetch_top() noexcept {
    if (size_ == 0) return;
    const event& next = top();
    if (next.ref == arrival_ref) return;
    __builtin_prefetch(&devices_[next.who]);
    __builtin_prefetch(record_of(next.ref));
  }

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
        for (std::size_t i = 0; i < n_; ++i) {
          device& d = devices_[i];
          touch(d);
          d.area = d.busy = 0;
          d.completed = 0;
        }
        latency_.clear();
        latency_sum_ = 0;
        snapshot(0);
        next_warm_ = inf;
        next_batch_ = cfg_.warmup + batch_len_;
      }
      if (next_batch_ == now_) {
        ++batch_done_;
        snapshot(batch_done_);
        next_batch_ =
            batch_done_ < batches_ ? cfg_.warmup + double(batch_done_ + 1) * batch_len_ : inf;
      }
      if (next_sample_ == now_) {
        result_.series.time.push_back(now_);
        for (std::size_t i = 0; i < n_; ++i) result_.series.queue.push_back(devices_[i].in_system);
        next_sample_ += cfg_.sample_period;
      }
      now_ = saved;
      next_mark_ = std::min({next_warm_, next_batch_, next_sample_});
    }
  }

  // At a batch boundary: the outstanding calls per device (queued, in service, and owed by
  // prompts in flight whose inputs are not ready: in overload this grows at arrival - capacity at
  // the bottleneck, whereas the number in system grows slower because later layers wait for
  // earlier ones), and the batch's offered load per device: busy time plus the change in queued
  // work, over the batch. Both by a scan, only at batch boundaries.
  void snapshot(std::size_t b) {
    double* out = batch_outstanding_.data() + b * n_;
    for (std::size_t i = 0; i < n_; ++i) {
      device& d = devices_[i];
      touch(d);
      out[i] = d.in_system;
      if (b > 0) {
        const double rho =
            (d.busy - mark_busy_[i] + mean_service(i) * (double(d.in_system) - mark_queue_[i])) /
            batch_len_;
        offered_sum_[i] += rho;
        offered_squares_[i] += rho * rho;
      }
      mark_busy_[i] = d.busy;
      mark_queue_[i] = d.in_system;
    }
    for (const shape& s : shapes_)
      for (std::size_t slot = 0; slot < s.slots; ++slot) {
        const std::uint32_t* rec = s.data.data() + slot * s.stride;
        if (birth_of(rec) < 0) continue;  // free
        for (std::uint32_t c = 0; c < s.calls; ++c)
          if (rec[record_head + s.call_group[c]] > 0) out[rec[s.devices_at + c]] += 1;
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
    s.devices_at = record_head + s.groups;
    s.stride = s.devices_at + s.calls;
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
    const std::uint32_t slot = s.slots;
    if (slot > slot_mask) fail("more than 16 million prompts in flight; lower max_backlog");
    ++s.slots;
    s.data.resize(s.data.size() + s.stride);
    return slot;
  }

  // --- events ---------------------------------------------------------------------------------
  void on_arrival(const event& ev) {
    const std::uint32_t origin = ev.who;
    if (cfg_.trace.empty()) {
      const arrival a = users_.next(random_);
      replace_top({a.time, a.origin, arrival_ref});
    } else if (++trace_cursor_ < cfg_.trace.size()) {
      const arrival& a = cfg_.trace[trace_cursor_];
      replace_top({a.time, a.origin, arrival_ref});
    } else {
      pop_top();
    }
    start_prompt(origin);
  }

  void start_prompt(std::uint32_t origin) {
    if constexpr (observing)
      if (!source_.admit(origin, now_)) return;
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
    set_birth(rec, now_);
    std::copy(s.need.begin(), s.need.end(), rec + record_head);
    std::copy(devices, devices + s.calls, rec + s.devices_at);
    const std::uint32_t ref = sid << slot_bits | slot;
    for (std::uint32_t c = 0; c < s.calls; ++c) __builtin_prefetch(&devices_[devices[c]], 1);
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
    std::uint32_t* devices = rec + s.devices_at;
    source_.redraw(*s.key, g, random_, std::span<const double>(load_),
                   std::span<std::uint32_t>(devices, s.calls));
    for (std::uint32_t i = s.group_call_first[g]; i < s.group_call_first[g + 1]; ++i)
      if (devices[s.group_calls[i]] >= n_)
        fail("a redraw of group " + std::to_string(g) + " calls device " +
             std::to_string(devices[s.group_calls[i]]) + " of a " + std::to_string(n_) +
             "-device network");
  }

  void dispatch(const shape& s, const std::uint32_t* rec, std::uint32_t ref, std::uint32_t call) {
    const std::uint32_t d = rec[s.devices_at + call];
    device& dev = devices_[d];
    touch(dev);
    ++backlog_;
    if constexpr (load_aware) load_[d] += 1;
    if (dev.in_system++ == 0) {
      dev.current = {ref, call};
      if constexpr (observing) started_[d] = now_;
      push({now_ + service_time(dev, s.role[call]), d, ref});
      return;
    }
    const std::uint32_t waiting = dev.in_system - 2;  // before this job
    if (waiting > dev.mask) grow(d);
    dev.ring[(dev.head + waiting) & dev.mask] = {ref, call};
  }

  // The ring is full: move the waiting jobs, in order, to a spill ring twice as large (kept for
  // the next long queue of this device).
  void grow(std::uint32_t d) {
    device& dev = devices_[d];
    const std::size_t size = std::size_t(dev.mask) + 1;
    auto& spill = spill_[d];
    std::unique_ptr<job[]> bigger;
    job* target;
    std::size_t capacity;
    if (dev.ring == dev.inline_ring && spill.capacity > size) {
      target = spill.jobs.get();
      capacity = spill.capacity;
    } else {
      capacity = std::max<std::size_t>(2 * size, 2 * inline_jobs);
      bigger = std::make_unique<job[]>(capacity);
      target = bigger.get();
    }
    for (std::size_t i = 0; i < size; ++i) target[i] = dev.ring[(dev.head + i) & dev.mask];
    if (bigger) {
      spill.jobs = std::move(bigger);
      spill.capacity = capacity;
    }
    dev.ring = spill.jobs.get();
    dev.head = 0;
    dev.mask = static_cast<std::uint32_t>(capacity - 1);
  }

  void on_completion(std::uint32_t d) {
    device& dev = devices_[d];
    const job done = dev.current;
    touch(dev);
    --dev.in_system;
    --backlog_;
    if constexpr (load_aware) load_[d] -= 1;
    if constexpr (observing) {
      source_.served(d, now_ - started_[d], now_);
      started_[d] = now_;  // the next job, if any, starts now
    }
    ++dev.completed;
    if (dev.in_system > 0) {
      dev.current = dev.ring[dev.head];
      dev.head = (dev.head + 1) & dev.mask;
      if (dev.in_system == 1 && dev.ring != dev.inline_ring) {  // drained: back to the line
        dev.ring = dev.inline_ring;
        dev.mask = inline_jobs - 1;
        dev.head = 0;
      }
      replace_top(
          {now_ + service_time(dev, shapes_[dev.current.ref >> slot_bits].role[dev.current.call]),
           d, dev.current.ref});
    } else {
      pop_top();
    }
    prefetch_top();  // the next event's lines load while this one finishes
    shape& s = shapes_[done.ref >> slot_bits];
    const std::uint32_t slot = done.ref & slot_mask;
    std::uint32_t* rec = s.data.data() + std::size_t(slot) * s.stride;
    if (done.call == s.sink) {
      const double latency = now_ - birth_of(rec);
      if constexpr (observing) source_.finished(birth_of(rec), now_);
      latency_.add(latency);
      latency_sum_ += latency;
      set_birth(rec, -1);  // marks the slot free for snapshot()
      s.free.push_back(slot);
      return;
    }
    for (std::uint32_t i = s.consumer_first[done.call]; i < s.consumer_first[done.call + 1]; ++i) {
      const std::uint32_t g = s.consumers[i];
      if (--rec[record_head + g] == 0) {
        if constexpr (load_aware) redraw(s, rec, g);
        for (std::uint32_t j = s.group_call_first[g]; j < s.group_call_first[g + 1]; ++j)
          __builtin_prefetch(&devices_[rec[s.devices_at + s.group_calls[j]]], 1);
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
    judge(r);
    return std::move(r);
  }

  // The verdict (docs/QUEUEING.md, "Instability detector"): growth of the outstanding calls
  // over the batch boundaries, and each device's offered load with its batch-means bound.
  void judge(run_result& r) {
    const std::size_t b = batch_done_ + 1;  // snapshots 0 .. batch_done_
    bool grows = false;
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
      grows = fit.slope > 0 && fit.t > growth_t_threshold && grown > std::max(2.0, early);
    }
    // Offered load: mean of the batches and a one-sided bound t * standard error above it.
    const std::size_t batches = batch_done_;
    bool saturated = batches < 2;
    for (std::size_t i = 0; i < n_ && batches >= 2; ++i) {
      const double m = offered_sum_[i] / double(batches);
      const double var =
          std::max(0.0, (offered_squares_[i] - double(batches) * m * m) / double(batches - 1));
      const double upper = m + load_t_threshold * std::sqrt(var / double(batches));
      r.devices[i].offered_load = m;
      if (m > r.offered_load) r.offered_load = m;
      if (upper > r.offered_load_upper) r.offered_load_upper = upper;
    }
    saturated = saturated || r.offered_load_upper >= 1;
    using finding = run_result::finding;
    // Unstable needs both signs: a linear ramp and a measured offered load of at least 1. A ramp
    // alone is how a short run at rho = 0.9 looks (its queue wanders for thousands of service
    // times), and an offered load near 1 alone is rho = 1, which does not ramp linearly.
    if (r.truncated || (grows && r.offered_load >= 1))
      r.verdict = finding::unstable;
    else if (saturated)
      r.verdict = finding::inconclusive;
    else
      r.verdict = finding::stable;
    r.stable = r.verdict == finding::stable;
  }

 public:
  /// The detector's thresholds (docs/QUEUEING.md gives their measured error rates).
  static constexpr double growth_t_threshold = 4;
  static constexpr double load_t_threshold = 3;

 private:
  struct spill_ring {
    std::unique_ptr<job[]> jobs;
    std::size_t capacity = 0;
  };

  const sim_config& cfg_;
  Source& source_;
  std::size_t n_;
  moa::rng random_;
  poisson_process users_;
  std::vector<service_model> models_;                // distinct models
  std::vector<std::array<std::uint32_t, 2>> pairs_;  // (proposer, aggregator) model indices
  std::vector<event, line_allocator<event>> heap_;
  std::size_t size_ = 0;
  std::unique_ptr<device[]> devices_;
  std::vector<spill_ring> spill_;
  std::vector<shape> shapes_;
  std::vector<std::uint32_t> last_shape_, last_key_shape_;
  std::vector<const plan*> last_key_;
  std::vector<std::uint32_t> scratch_;
  std::vector<double> load_;     // number in system per device, as doubles for gossip_context::load
  std::vector<double> started_;  // an observing source's: when each device's current job began
  std::size_t trace_cursor_ = 0;
  std::size_t backlog_ = 0;
  std::uint64_t events_ = 0;
  double now_ = 0;
  double next_mark_ = 0, next_warm_ = 0, next_batch_ = 0, next_sample_ = 0;
  std::size_t batches_ = 0, batch_done_ = 0;
  double batch_len_ = 0;
  std::vector<double> batch_outstanding_;
  std::vector<double> offered_sum_, offered_squares_, mark_busy_, mark_queue_;
  log_histogram latency_;
  double latency_sum_ = 0;
  run_result result_;
};

}  // namespace moa::queueing::detail
