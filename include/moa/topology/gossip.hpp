// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Distributed MoA over gossip: n devices; a prompt born at device i is answered in each of M
/// layers by i and k peers picked by a gossip strategy, then aggregated at i. Every prompt gets
/// its own plan, drawn when it is born.
///
/// @code{.cpp}
/// using edge = moa::gossip_topology<moa::devices<4>, moa::layers<2>, moa::random_k<2>>;
/// static_assert(edge::calls_per_prompt == 7);  // (k + 1) M + 1
/// moa::rng random(42);
/// moa::plan p = edge::make_plan(/*origin=*/0, random);
/// @endcode

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "moa/core/random.hpp"
#include "moa/gossip/gossip_concepts.hpp"
#include "moa/gossip/random_k.hpp"
#include "moa/topology/check.hpp"
#include "moa/topology/layered.hpp"
#include "moa/topology/plan.hpp"

namespace moa {

/// @brief The number of devices of a gossip network.
template <std::size_t N>
struct devices {
  static constexpr std::size_t count = N;
};

/// @brief Builds into `out` the plan of one prompt born at `origin` in a network of `n` devices
/// with `m` layers: per layer, the origin plus the peers `gossip` picks; the origin aggregates.
/// Peers are drawn afresh in every layer. `out` is cleared first and keeps its memory.
template <GossipPolicy G>
void make_gossip_plan(std::uint32_t origin, std::uint32_t n, std::uint32_t m, const G& gossip,
                      rng& random, plan& out, std::span<const double> load = {}) {
  if (origin >= n)
    MOA_THROW(topology_error("moa: prompt origin " + std::to_string(origin) +
                             " is not a device of a " + std::to_string(n) + "-device network"));
  require(check_fanout(gossip.fanout(), n));
  out.clear();
  constexpr std::size_t stack_peers = 64;
  std::array<std::uint32_t, stack_peers> on_stack{};
  std::vector<std::uint32_t> on_heap;
  std::span<std::uint32_t> peers(on_stack);
  if (gossip.fanout() > stack_peers) {
    on_heap.resize(gossip.fanout());
    peers = on_heap;
  }
  peers = peers.first(gossip.fanout());
  std::array<call_id, stack_peers + 1> prev_stack{};
  std::vector<call_id> prev_heap;
  std::span<call_id> previous(prev_stack);
  if (gossip.fanout() + 1 > prev_stack.size()) {
    prev_heap.resize(gossip.fanout() + 1);
    previous = prev_heap;
  }
  std::size_t previous_count = 0;
  for (std::uint32_t layer = 1; layer <= m; ++layer) {
    const group_id g = out.add_group(previous.first(previous_count));
    const gossip_context ctx{origin, n, layer, &random, load};
    const std::size_t picked = gossip.select(ctx, peers);
    previous_count = 0;
    previous[previous_count++] = out.add_call(origin, g, layer, call_role::proposer);
    for (std::size_t i = 0; i < picked; ++i)
      previous[previous_count++] = out.add_call(peers[i], g, layer, call_role::proposer);
  }
  out.add_call(origin, out.add_group(previous.first(previous_count)), m + 1, call_role::aggregator);
  out.seal();
}

/// @brief A gossip network described in types: n devices, M layers, a gossip strategy whose
/// fan-out is fixed in its type (such as random_k<K>). k > n - 1 does not compile.
template <class Devices, class Layers, class Gossip>
struct gossip_topology {
  static_assert(GossipPolicy<Gossip>,
                "moa::gossip_topology: the third argument must be a gossip strategy (see "
                "moa/gossip/gossip_concepts.hpp), such as moa::random_k<K>");
  static_assert(
      requires { Gossip::static_fanout; },
      "moa::gossip_topology: the strategy must fix its fan-out in its type (for "
      "example moa::random_k<K>); use make_gossip_plan for runtime fan-outs");

  static constexpr std::size_t device_count = Devices::count;
  static constexpr std::size_t layer_count = Layers::count;
  static constexpr std::size_t fanout = Gossip::static_fanout;
  static constexpr std::size_t calls_per_prompt = (fanout + 1) * layer_count + 1;
  using gossip_type = Gossip;

  static_assert((detail::static_require<check_fanout(fanout, device_count)>(), true));

  /// The plan of one prompt born at `origin`.
  static plan make_plan(std::uint32_t origin, rng& random) {
    plan p;
    make_gossip_plan(origin, static_cast<std::uint32_t>(device_count),
                     static_cast<std::uint32_t>(layer_count), Gossip{}, random, p);
    return p;
  }
};

}  // namespace moa
