// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The origin side of one prompt on a network, shared by the in-process network
/// (moa/net/network.hpp) and the ZeroMQ device (moa/net/zmq_device.hpp): a moa::plan_run whose
/// dispatcher sends each ready call to a device, plus what only networks need: where each call
/// went, re-routing a call that a full queue refused or a dead device lost (the least loaded live
/// device not yet in its layer, up to `max_reroutes` times), and the peers of a later layer
/// redrawn on the loads of the moment it is forked. The loads are the origin's moa::net::peer_view
/// (moa/net/peer_view.hpp): reports checked against what the origin observes, so every call it
/// sends opens a ticket there that its answer, timeout or loss closes.
///
/// How a call reaches a device is the network's: a **link** (the Link concept) says which devices
/// are alive, how loaded, what they are called, and sends a call. Everything else (countdowns,
/// group building with reference injection and quorum, aggregation policies, the failure policy)
/// is the plan run's, as for the executors.
///
/// Not thread-safe: the network serialises every call on one prompt (a mutex per prompt in
/// process, the I/O thread over ZeroMQ).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "moa/core/message.hpp"
#include "moa/core/random.hpp"
#include "moa/core/result.hpp"
#include "moa/exec/plan_run.hpp"
#include "moa/exec/run_options.hpp"
#include "moa/gossip/gossip_concepts.hpp"
#include "moa/net/device.hpp"
#include "moa/net/peer_view.hpp"
#include "moa/topology/plan.hpp"

namespace moa::net {

/// @brief What happened to a call on its way to a device, for the network's counters.
enum class route_event : std::uint8_t { refused, rerouted, lost };

class origin_run;

/// @brief How an origin reaches the devices of its network.
///
/// Requirements, for `L& l`, a device `d` and a call `c` of origin `o`:
/// `l.devices()` (how many), `l.alive(d)`, `l.load(d)` (effective load, as double: the origin's
/// peer_view), `l.view()` (that peer_view, where the origin's calls open and close tickets),
/// `l.has_room(d)` (false when d is known to be full), `l.name(d)` (a `const std::string&`),
/// `l.send(o, c)` hands c to `o.device_of(c)` and says whether it was refused (a
/// device::refusal), `l.count(e)` counts a route_event.
template <class L>
concept Link = requires(L& l, std::uint32_t d, origin_run& o, call_id c, route_event e) {
  { l.devices() } -> std::convertible_to<std::uint32_t>;
  { l.alive(d) } -> std::convertible_to<bool>;
  { l.load(d) } -> std::convertible_to<double>;
  { l.has_room(d) } -> std::convertible_to<bool>;
  { l.name(d) } -> std::convertible_to<const std::string&>;
  { l.view() } -> std::same_as<peer_view&>;
  { l.send(o, c) } -> std::same_as<device::refusal>;
  l.count(e);
};

/// @brief One prompt at its origin: its plan run and where each of its calls went.
class origin_run {
 public:
  /// A prompt born at `born` at device `origin`, running plan `p` (a gossip plan whose backends
  /// are devices) with `opt`'s quorum, failure policy and aggregation policy. `random` breaks
  /// re-routing ties. `opt` must outlive the run.
  origin_run(std::uint32_t origin, plan p, request prompt, const run_options& opt,
             clock::time_point born, rng random, std::size_t max_reroutes)
      : origin_(origin),
        plan_(std::move(p)),
        prompt_(std::move(prompt)),
        random_(random),
        max_reroutes_(max_reroutes),
        run_(plan_, prompt_, opt, born, prompt_.deadline, {}),
        device_of_(plan_.size()),
        tries_(plan_.size(), 0),
        resolved_(plan_.size(), 0),
        tickets_(plan_.size()),
        open_(plan_.size(), 0) {
    for (call_id c = 0; c < plan_.size(); ++c) device_of_[c] = plan_[c].backend;
    run_.arm();
  }
  origin_run(const origin_run&) = delete;
  origin_run& operator=(const origin_run&) = delete;

  [[nodiscard]] std::uint32_t origin() const noexcept { return origin_; }
  [[nodiscard]] const moa::plan& plan() const noexcept { return plan_; }
  [[nodiscard]] const request& prompt() const noexcept { return prompt_; }
  [[nodiscard]] clock::time_point born() const noexcept { return run_.t0(); }
  [[nodiscard]] moa::plan_run& run() noexcept { return run_; }
  [[nodiscard]] rng& random() noexcept { return random_; }
  [[nodiscard]] std::uint32_t device_of(call_id c) const noexcept { return device_of_[c]; }
  [[nodiscard]] bool resolved(call_id c) const noexcept { return resolved_[c] != 0; }
  [[nodiscard]] std::uint32_t reroutes() const noexcept { return reroutes_; }

  /// Names every call's device and forks the first layer; when the origin itself is dead, every
  /// call is skipped instead. True when the prompt has already ended.
  template <Link L>
  bool begin(L& link) {
    for (call_id c = 0; c < plan_.size(); ++c) {
      run_.describe(c, link.name(device_of_[c]));
      if (!link.alive(origin_))
        resolve(c, call_status::skipped,
                "device " + std::to_string(origin_) +
                    " (the prompt's origin) is dead; the prompt was not admitted");
    }
    if (!link.alive(origin_)) return take_done();
    for (group_id g = 0; g < plan_.group_count(); ++g)
      if (plan_.inputs_of(g).empty()) ready_.push_back(g);
    return advance(link);
  }

  /// Forks every ready group (redrawing a later layer's peers first with `redraw`, if given);
  /// true when the prompt has just ended.
  template <Link L, class Redraw = std::nullptr_t>
  bool advance(L& link, Redraw redraw = nullptr) {
    while (!ready_.empty()) {
      const group_id g = ready_.back();
      ready_.pop_back();
      fork<L, Redraw> d{*this, link, redraw};
      run_.ready(g, d);
    }
    return take_done();
  }

  /// Call c ended as `status` (with `error`); a call in flight that timed out counts against its
  /// device in the peer_view.
  void resolve(call_id c, call_status status, std::string error) {
    close(c, status == call_status::timed_out ? closing::missed : closing::released);
    auto& rec = run_.record(c);
    rec.status = status;
    rec.error = std::move(error);
    settle(c);
  }
  /// Call c came back from its device with `rec` (times since the prompt's birth).
  void answered(call_id c, call_record&& rec) {
    // An answer saying the deadline passed is no answer in time: it counts as a miss.
    close(c, rec.status == call_status::timed_out ? closing::missed : closing::answered);
    auto& out = run_.record(c);
    out.start = rec.start;
    out.end = rec.end;
    out.usage = rec.usage;
    out.finish = rec.finish;
    out.text = std::move(rec.text);
    if (!rec.backend_name.empty()) out.backend_name = std::move(rec.backend_name);  // a policy
    resolve(c, rec.status, std::move(rec.error));
  }

  /// Hands call c to its device, re-routing it while devices refuse it; resolves it failed when
  /// none takes it.
  template <Link L>
  void send(L& link, call_id c) {
    std::string why;
    for (;;) {
      const std::uint32_t d = device_of_[c];
      // Opened before sending: an answer may come back before send returns.
      view_ = &link.view();
      tickets_[c] = view_->sent(d, clock::now());
      open_[c] = 1;
      const auto refused = link.send(*this, c);
      if (refused == device::refusal::none) return;
      close(c, closing::released);
      if (refused == device::refusal::full) {
        link.count(route_event::refused);
        why +=
            (why.empty() ? "" : "; ") + std::string("refused by ") + link.name(d) + " (queue full)";
      } else {
        link.count(route_event::lost);
        why += (why.empty() ? "" : "; ") + link.name(d) + " is dead";
      }
      if (!reroute(link, c)) {
        resolve(c, call_status::failed, why);
        return;
      }
    }
  }

  /// A call lost with its device (queued when it died, or in service): re-routed, or failed.
  template <Link L>
  void lose(L& link, call_id c, const std::string& why) {
    close(c, closing::released);
    link.count(route_event::lost);
    if (reroute(link, c))
      send(link, c);
    else
      resolve(c, call_status::failed, why + "; no other device could take it");
  }

  /// A call a device refused after it was sent (its queue was full): re-routed, or failed.
  template <Link L>
  void refused(L& link, call_id c) {
    close(c, closing::released);
    link.count(route_event::refused);
    const auto by = link.name(device_of_[c]);
    if (reroute(link, c))
      send(link, c);
    else
      resolve(c, call_status::failed, "refused by " + by + " (queue full); no other device free");
  }

  /// Redraws the peers of a later layer's calls on the loads of now (the first call is the
  /// origin's own); keeps the birth draw when the strategy cannot give enough peers.
  template <GossipPolicy G, Link L>
  void redraw(L& link, const G& gossip, std::span<const call_id> calls) {
    constexpr std::size_t most = 64;
    double buffer[most];
    std::vector<double> heap;
    std::span<double> load(buffer);
    const auto n = link.devices();
    if (n > most) {
      heap.resize(n);
      load = heap;
    }
    load = load.first(n);
    for (std::uint32_t i = 0; i < n; ++i)
      load[i] = link.alive(i) ? link.load(i) : std::numeric_limits<double>::infinity();
    std::uint32_t peers[most];
    const std::size_t want = std::min<std::size_t>(calls.size() - 1, most);
    const gossip_context ctx{origin_, n, plan_[calls[0]].layer, &random_, load};
    if (gossip.select(ctx, std::span(peers, want)) != want) return;
    for (std::size_t i = 0; i < want; ++i) set_device(link, calls[i + 1], peers[i]);
  }

  /// The prompt's result, once it ended; `missing` receives the calls that gave no answer.
  [[nodiscard]] result conclude(clock::time_point now, std::vector<call_id>* missing = nullptr) {
    for (call_id c = 0; c < open_.size(); ++c) close(c, closing::released);
    auto res = run_.conclude(now, false);
    if (missing != nullptr)
      for (call_id c = 0; c < res.trace.size(); ++c)
        if (!res.trace[c].ok()) missing->push_back(c);
    return res;
  }

 private:
  enum class closing : std::uint8_t { answered, missed, released };

  // Closes call c's ticket at its device's peer_view, if one is open.
  void close(call_id c, closing how) {
    if (!open_[c] || view_ == nullptr) return;
    open_[c] = 0;
    const auto d = device_of_[c];
    if (how == closing::answered)
      view_->answered(d, tickets_[c], clock::now());
    else if (how == closing::missed)
      (void)view_->missed(d, tickets_[c], clock::now());
    else
      view_->released(d);
  }

  // The dispatcher of plan_run: a ready call goes to its device.
  template <class L, class Redraw>
  struct fork {
    origin_run& o;
    L& link;
    Redraw redraw;
    void dispatch(call_id c) {
      if constexpr (!std::is_same_v<Redraw, std::nullptr_t>) {
        const auto calls = o.plan_.calls_of(o.plan_[c].group);
        if (c == calls.front() && calls.size() > 1 && o.plan_[c].layer > 1) redraw(calls);
      }
      o.send(link, c);
    }
    void skipped(call_id c) { o.settle(c); }
  };

  void settle(call_id c) {
    resolved_[c] = 1;
    (void)run_.complete(c, [this](group_id g) { ready_.push_back(g); });
  }

  bool take_done() {
    if (done_ || !resolved_[plan_.sink()]) return false;
    done_ = true;
    return true;
  }

  template <Link L>
  void set_device(L& link, call_id c, std::uint32_t d) {
    device_of_[c] = d;
    auto& rec = run_.record(c);
    rec.backend = d;
    rec.backend_name = link.name(d);
  }

  template <Link L>
  bool reroute(L& link, call_id c) {
    tried_.emplace_back(c, device_of_[c]);
    if (tries_[c] >= max_reroutes_) return false;
    const auto other = alternative(link, c);
    if (!other) return false;
    ++tries_[c];
    ++reroutes_;
    link.count(route_event::rerouted);
    set_device(link, c, *other);
    return true;
  }

  // Another device for call c: alive, with room, not already in its layer, not tried for it;
  // the least loaded, ties broken at random.
  template <Link L>
  std::optional<std::uint32_t> alternative(L& link, call_id c) {
    const auto calls = plan_.calls_of(plan_[c].group);
    const std::uint32_t n = link.devices();
    const auto offset = std::uint32_t(random_.below(n));
    std::optional<std::uint32_t> best;
    double best_load = 0;
    for (std::uint32_t j = 0; j < n; ++j) {
      const std::uint32_t d = (j + offset) % n;
      if (!link.alive(d) || !link.has_room(d)) continue;
      bool taken = false;
      for (call_id o : calls) taken = taken || device_of_[o] == d;
      for (const auto& [tc, td] : tried_) taken = taken || (tc == c && td == d);
      if (taken) continue;
      const double l = link.load(d);
      if (!best || l < best_load) {
        best = d;
        best_load = l;
      }
    }
    return best;
  }

  std::uint32_t origin_;
  moa::plan plan_;
  request prompt_;
  rng random_;
  std::size_t max_reroutes_;
  moa::plan_run run_;
  std::vector<std::uint32_t> device_of_;
  std::vector<std::uint32_t> tries_;
  std::vector<std::uint8_t> resolved_;
  std::vector<std::pair<call_id, std::uint32_t>> tried_;  // (call, device) refused or lost
  std::vector<group_id> ready_;
  std::vector<peer_view::ticket> tickets_;  // of each call in flight at its device
  std::vector<std::uint8_t> open_;          // whether tickets_[c] is open
  peer_view* view_ = nullptr;               // where the tickets were opened
  std::uint32_t reroutes_ = 0;
  bool done_ = false;
};

}  // namespace moa::net
