// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Where the simulator's plans come from: the PlanSource concepts (any plan, a fixed shape whose
/// devices are drawn, load-aware redraws at the fork) and gossip_source, the gossip protocol's
/// source with any strategy.

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "moa/core/random.hpp"
#include "moa/gossip/gossip_concepts.hpp"
#include "moa/queueing/detail/check.hpp"
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

/// @brief A PlanSource that decides admission and watches the run (the adaptive policy's hooks):
/// `s.admit(origin, now)` is asked before a prompt's plan is drawn (false: the prompt is refused
/// and never enters the network); `s.served(device, duration, now)` hears every call's service
/// time as it completes; `s.finished(birth, now)` every prompt's end. Times are virtual.
template <class S>
concept ObservingPlanSource = PlanSource<S> &&
    requires(S& s, std::uint32_t o, std::uint32_t d, double t) {
  { s.admit(o, t) } -> std::same_as<bool>;
  s.served(d, t, t);
  s.finished(t, t);
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
    if (n_ > detail::max_devices)
      detail::fail("devices = " + std::to_string(n_) + " is more than the simulator's 2^24");
    if ((double(gossip_.fanout()) + 1) * double(m_) + 1 > double(detail::max_plan_calls))
      detail::fail("layers = " + std::to_string(m_) +
                   " with k = " + std::to_string(gossip_.fanout()) +
                   " makes more than 2^20 calls per prompt; give fewer layers");
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

}  // namespace moa::queueing
