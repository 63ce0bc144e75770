// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// One device of a network of processes over ZeroMQ (cppzmq): its own backend, its own FCFS
/// queue (moa::net::device), and its peers' addresses; no coordinator. It is the origin of the
/// prompts its clients submit (it runs their plans: fork per layer, join, aggregate) and a peer
/// serving the calls others gossip to it. The wire format is in moa/net/zmq_wire.hpp.
///
/// Sockets: one ROUTER bound at the device's address receives everything (peers' calls, answers,
/// heartbeats; clients' prompts); one DEALER per peer, connected to the peer's ROUTER, sends.
/// With keys (moa/net/zmq_security.hpp) every socket speaks CURVE and a sender is who its key
/// says (a ZAP user id: `d<index>` or `client`); in plain text, asked for explicitly and on
/// loopback only, the DEALERs take the routing id "d<index>" and that is the sender. All sockets
/// live on the device's I/O thread (ZeroMQ sockets are not thread-safe); the workers hand their
/// answers back through a locked queue and an inproc wake-up socket.
///
/// The origin side (fork, join, re-routing, redrawing a later layer's peers on the loads its
/// heartbeats report, aggregation policies) is moa::net::origin_run, shared with the in-process
/// network; this file is only how calls travel. With a layout policy (`adaptive`: the adaptive
/// layout policy of moa/net/adaptive.hpp) each prompt's (M, k) is decided at its birth here, or
/// the prompt refused at once; the device then gossips its own arrival rate and service time and
/// checks its peers' (docs/ADAPTIVE.md).
///
/// Faults: a peer's full queue answers `refused` and the origin re-routes (the least loaded live
/// peer not yet in the layer) or goes on without it; a call unanswered after `peer_timeout` is
/// skipped; a peer silent for `dead_after` (heartbeats every `heartbeat`) is declared dead and
/// its pending calls are re-routed or dropped from their joins; one that pings but lets 3 calls in
/// a row time out is failed. Malformed messages, and well-formed ones naming an index, id, layer
/// or call they may not (an answer from a device the call was not sent to, say), are counted,
/// logged and dropped. Bounds: message size, prompts in flight, calls queued per origin; a call
/// whose deadline passed while queued is dropped unserved. Stopping drains the prompts in flight
/// (up to `drain_timeout`), fails the rest explicitly and tells the peers (docs/NETWORK.md). Across
/// hosts: bind `tcp://*:PORT` (`bind`) and list every device's `tcp://HOST:PORT` in `addresses`
/// (see docs/NETWORK.md).
///
/// @code{.cpp}
/// moa::net::zmq_device_options opt;
/// opt.index = 1;
/// opt.addresses = {"tcp://10.0.0.1:5550", "tcp://10.0.0.2:5550", "tcp://10.0.0.3:5550"};
/// opt.security.keys = moa::net::load_key_pair("keys/d1.key");
/// for (const char* d : {"keys/d0.pub", "keys/d1.pub", "keys/d2.pub"})
///   opt.security.device_keys.push_back(moa::net::load_public_keys(d).at(0));
/// opt.security.client_keys = moa::net::load_public_keys("keys/clients.keys");
/// moa::net::zmq_device dev(moa::synthetic_backend({.name = "d1"}), moa::uniform_gossip{1}, opt);
/// dev.run();  // until a `stop` message or the stop token
/// @endcode

#include <sys/random.h>

#include <zmq.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <deque>
#include <future>
#include <iomanip>
#include <iostream>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <sstream>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "moa/aggregate/any_aggregator.hpp"
#include "moa/core/backend.hpp"
#include "moa/core/error.hpp"
#include "moa/core/random.hpp"
#include "moa/core/result.hpp"
#include "moa/exec/plan_run.hpp"
#include "moa/exec/run_options.hpp"
#include "moa/gossip/gossip_concepts.hpp"
#include "moa/net/device.hpp"
#include "moa/net/device_metrics.hpp"
#include "moa/net/layout_policy.hpp"
#include "moa/net/origin.hpp"
#include "moa/net/peer_view.hpp"
#include "moa/net/zmq_security.hpp"
#include "moa/net/zmq_wire.hpp"
#include "moa/topology/gossip.hpp"

namespace moa::net {

/// @brief Writes one line of a device's log, whole: UTC time (ms), level, device, what.
/// E.g. `2026-12-02T01:46:30.137Z warn moa device 0: device 3 silent for 412 ms: ...`.
inline void log_line(std::ostream& out, std::string_view level, std::uint32_t device,
                     std::string_view what) {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()) % 1000;
  std::tm utc{};
  gmtime_r(&t, &utc);
  std::ostringstream line;
  line << std::put_time(&utc, "%Y-%m-%dT%H:%M:%S") << '.' << std::setfill('0') << std::setw(3)
       << ms.count() << "Z " << level << " moa device " << device << ": " << what << '\n';
  out << line.str() << std::flush;
}

/// @brief Where a ZeroMQ device is and how it behaves.
struct zmq_device_options {
  std::uint32_t index = 0;             ///< this device's position in `addresses`
  std::vector<std::string> addresses;  ///< every device's endpoint, e.g. tcp://10.0.0.7:5550
  std::string bind{};                  ///< what to bind; empty: addresses[index]
  std::uint32_t layers = 2;            ///< M
  device_options device{};
  std::size_t quorum = 1;
  std::size_t max_reroutes = 2;
  std::chrono::milliseconds peer_timeout{5000};
  std::chrono::milliseconds heartbeat{100};
  std::chrono::milliseconds dead_after{1000};
  std::uint64_t seed = 1;
  std::ostream* log = &std::cerr;  ///< rejected messages, dead peers; nullptr: silent
  /// Largest message a socket accepts (ZMQ_MAXMSGSIZE); a peer sending more is disconnected.
  std::int64_t max_message_bytes = std::int64_t(16) << 20;
  /// Prompts born here and not yet answered; a `submit` beyond it is refused with a `result`.
  std::size_t max_prompts = 1024;
  /// Calls of one origin device queued or in service here; beyond it the call is `refused`.
  std::size_t max_calls_per_origin = 1024;
  /// On stop, how long prompts in flight may still finish before they are failed explicitly.
  std::chrono::milliseconds drain_timeout{3000};
  /// Keys and allow-lists (CURVE), or plain text when asked for explicitly (loopback only); a
  /// device with neither refuses to start.
  zmq_security security{};
  /// Redraw each later layer's peers when it is forked, on the loads the peers' heartbeats
  /// reported (for strategies that read loads: `uses_load`).
  bool refresh_peers = true;
  /// How far this device, as origin, trusts its peers' load reports (moa/net/peer_view.hpp); a
  /// peer that lets `trust.strikes` calls in a row time out though it pings is failed for
  /// `trust.failed_for` (its heartbeats do not bring it back sooner).
  peer_view_options trust{.failed_for = std::chrono::seconds(10)};
  /// Decides each prompt's answer at this device, its origin (see moa/aggregate/policies.hpp).
  /// The policy runs in this device's queue in place of the aggregator's call; its own calls
  /// (judges, rankers) go to the named device over the wire, or to this device's backend; a
  /// sparse policy's selections run on the I/O thread and may call only this device's backend
  /// (its default judge).
  any_aggregator aggregation{};
  /// The layout policy for the prompts born here (moa/net/layout_policy.hpp; the adaptive one is
  /// moa::net::adaptive_origin of moa/net/adaptive.hpp): each prompt's (M, k), or its refusal at
  /// once with a typed `over_capacity` result. With uniform gossip the layout's k is used;
  /// another strategy keeps its own k. The device gossips its own arrival rate and mean service
  /// time, and checks its peers' (docs/ADAPTIVE.md, "Devices in separate processes"). Empty:
  /// `layers` and the gossip's k for every prompt.
  std::shared_ptr<origin_layout_policy> adaptive{};
};

/// The longest mean service time (ms) a peer's report may set, and the most prompts per second it
/// may say it originates: the trust rule clamps reports into these (and into what the origin
/// measured itself; see zmq_device).
inline constexpr double max_trusted_service_ms = 3.6e6;
inline constexpr double max_trusted_rate = 1e6;

/// @brief Counters of a ZeroMQ device (also sent as JSON in reply to `stats`).
struct zmq_device_counters {
  std::uint64_t prompts = 0, complete = 0, degraded = 0, failed = 0;
  std::uint64_t served = 0, refusals = 0, reroutes = 0, timeouts = 0, lost = 0, malformed = 0;
  std::uint64_t dead_peers = 0;
  /// Well-formed messages dropped: ids, origins or layers out of range, answers from a device
  /// the call was not sent to (or sent twice), calls past the per-origin bound.
  std::uint64_t dropped = 0;
  std::uint64_t refused_prompts = 0;  ///< submits refused (bound reached, stopping, over capacity)
  std::uint64_t over_capacity = 0;    ///< of those, refused by the adaptive policy's admission
};

/// @brief One device process of the ZeroMQ network.
template <GossipPolicy G>
class zmq_device {
 public:
  zmq_device(any_backend backend, G gossip, zmq_device_options opt)
      : opt_(std::move(opt)),
        gossip_(std::move(gossip)),
        backend_(std::move(backend)),
        queue_(opt_.device),
        view_(std::uint32_t(opt_.addresses.size()), opt_.trust) {
    const auto n = opt_.addresses.size();
    if (n == 0 || opt_.index >= n)
      MOA_THROW(invalid_argument("moa::net::zmq_device: index " + std::to_string(opt_.index) +
                                 " is not a position in the " + std::to_string(n) +
                                 " addresses; list every device's endpoint, this one included"));
    require(check_fanout(gossip_.fanout(), n));
    check_security(opt_.security, opt_.addresses, opt_.index, opt_.bind);
    std::string name = backend_.name();
    ref_ = backend_ref(backend_, name.empty() ? "d" + std::to_string(opt_.index) : name);
    for (std::uint32_t j = 0; j < n; ++j) names_.push_back("d" + std::to_string(j));
    run_opt_.quorum = opt_.quorum;
    run_opt_.aggregation = opt_.aggregation;
    alive_.assign(n, true);
    last_seen_.assign(n, clock::now());
    calls_from_.assign(n, 0);
    // A peer's plan has the size and the layers of one of ours (the fixed layout, or with the
    // adaptive policy any allowed layout, which every device of the network is given): what a
    // call from it may name.
    const auto bound_by = [&](std::uint32_t layers, std::size_t k) {
      rng sample(opt_.seed);
      plan p;
      if constexpr (std::is_same_v<G, uniform_gossip>)
        make_gossip_plan(opt_.index, std::uint32_t(n), layers, uniform_gossip{k}, sample, p);
      else
        make_gossip_plan(opt_.index, std::uint32_t(n), layers, gossip_, sample, p);
      plan_calls_ = std::max(plan_calls_, std::uint32_t(p.size()));
      for (call_id c = 0; c < p.size(); ++c) max_layer_ = std::max(max_layer_, p[c].layer);
    };
    bound_by(opt_.layers, gossip_.fanout());
    if (opt_.adaptive) {
      if (opt_.adaptive->devices() != n || opt_.adaptive->origin() != opt_.index)
        MOA_THROW(invalid_argument("moa::net::zmq_device: the layout policy is set for origin " +
                                   std::to_string(opt_.adaptive->origin()) + " of " +
                                   std::to_string(opt_.adaptive->devices()) +
                                   " devices; this is device " + std::to_string(opt_.index) +
                                   " of " + std::to_string(n)));
      policy_ = opt_.adaptive.get();
      for (const auto& [m, k] : policy_->layouts()) {
        if (m == 0) MOA_THROW(invalid_argument("moa::net::zmq_device: a layout with 0 layers"));
        require(check_fanout(k, n));
        bound_by(m, k);
      }
    }
  }

  zmq_device(const zmq_device&) = delete;
  zmq_device& operator=(const zmq_device&) = delete;
  // Calls still queued (handed in before run(), or left by it) end before the members their
  // completions touch.
  ~zmq_device() { queue_.stop(); }

  [[nodiscard]] const zmq_device_counters& counters() const noexcept { return counters_; }
  /// What this device, as origin, believes of every device's load.
  [[nodiscard]] const peer_view& view() const noexcept { return view_; }
  /// The adaptive policy's current estimates (ms; per device): arrival rates per ms and mean
  /// service times, as the next decision will use them. Empty without the policy.
  struct estimates {
    std::vector<double> rates, service;
  };
  [[nodiscard]] estimates adaptive_estimates() const {
    if (!policy_) return {};
    auto [rates, service] = policy_->estimates(since_start_ms());
    return {std::move(rates), std::move(service)};
  }

  /// Its counters as the I/O thread last published them (every 50 ms while it runs); any thread.
  [[nodiscard]] device_snapshot snapshot() const {
    std::lock_guard lock(snapshot_mutex_);
    return published_;
  }

  /// Handles one message as the I/O thread does (the sender's routing id and the body); false
  /// when it asks the device to stop. Public for tests and fuzzing: before run() nothing is sent.
  bool handle(const std::string& sender, std::string_view bytes) {
    return on_message(sender, sender, bytes);
  }
  /// The same, for a message whose connection proved the identity `user` (a ZAP user id:
  /// `d<index>` or `client`), as with keys.
  bool handle(const std::string& sender, const std::string& user, std::string_view bytes) {
    return on_message(sender, user, bytes);
  }

  /// Serves until a `stop` message or `stop` is requested. Binds and connects first.
  void run(std::stop_token stop = {}) {
    zmq::context_t ctx(1);
    // Before any socket binds: CURVE servers ask it about every handshake.
    std::optional<zap_handler> zap;
    if (opt_.security.secure()) zap.emplace(ctx, opt_.security);
    // Closes the workers' wake-up socket before the context ends, on every way out of here (an
    // open socket makes zmq_ctx_term wait forever).
    struct close_wake {
      zmq_device& d;
      ~close_wake() {
        std::lock_guard lock(d.outbox_mutex_);
        d.wake_out_.reset();
        d.router_ = nullptr;
        d.peers_ = nullptr;
        d.zap_ = nullptr;
      }
    };
    zmq::socket_t router(ctx, zmq::socket_type::router);
    router.set(zmq::sockopt::linger, 0);
    router.set(zmq::sockopt::router_mandatory, 0);
    router.set(zmq::sockopt::maxmsgsize, opt_.max_message_bytes);
    const auto& sec = opt_.security;
    if (sec.secure()) curve_server(router, *sec.keys);
    router.bind(opt_.bind.empty() ? opt_.addresses[opt_.index] : opt_.bind);
    std::vector<std::optional<zmq::socket_t>> peers(opt_.addresses.size());
    for (std::uint32_t j = 0; j < peers.size(); ++j) {
      if (j == opt_.index) continue;
      peers[j].emplace(ctx, zmq::socket_type::dealer);
      peers[j]->set(zmq::sockopt::linger, 0);
      peers[j]->set(zmq::sockopt::maxmsgsize, opt_.max_message_bytes);
      // With keys the routing id is libzmq's own (one a peer cannot choose): the key names the
      // sender, and nobody can take "d<index>" first to lock the real device out.
      if (sec.secure())
        curve_client(*peers[j], *sec.keys, sec.device_keys[j]);
      else
        peers[j]->set(zmq::sockopt::routing_id, "d" + std::to_string(opt_.index));
      peers[j]->connect(opt_.addresses[j]);
    }
    const std::string wake_address = "inproc://moa-wake-" + std::to_string(opt_.index);
    zmq::socket_t wake_in(ctx, zmq::socket_type::pull);
    wake_in.set(zmq::sockopt::linger, 0);
    wake_in.bind(wake_address);
    close_wake closing{*this};
    wake_out_.emplace(ctx, zmq::socket_type::push);
    wake_out_->set(zmq::sockopt::linger, 0);
    wake_out_->connect(wake_address);
    router_ = &router;
    peers_ = &peers;
    zap_ = zap ? &*zap : nullptr;
    io_thread_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    queue_.start();

    auto next_ping = clock::now();
    const auto begin = clock::now();
    std::fill(last_seen_.begin(), last_seen_.end(), begin);
    bool running = true;
    // Graceful stop: refuse new prompts and calls, let those in flight finish until the drain
    // deadline, then fail what is left explicitly and tell the peers.
    std::optional<clock::time_point> drain_until;
    for (;;) {
      if ((!running || stop.stop_requested()) && !drain_until) {
        drain_until = clock::now() + opt_.drain_timeout;
        stopping_ = true;
        say("info", "stopping: refusing new prompts, finishing " + std::to_string(prompts_.size()) +
                        " in flight");
      }
      if (drain_until && ((prompts_.empty() && queue_.load() == 0) || clock::now() >= *drain_until))
        break;
      zmq::pollitem_t items[] = {{router.handle(), 0, ZMQ_POLLIN, 0},
                                 {wake_in.handle(), 0, ZMQ_POLLIN, 0}};
      try {
        zmq::poll(items, 2, std::chrono::milliseconds(10));
      } catch (const zmq::error_t& e) {
        if (e.num() != EINTR) throw;
        continue;  // a signal: the stop token (or the next round) says what to do
      }
      if (items[0].revents & ZMQ_POLLIN) {
        for (int budget = 0; budget < 256; ++budget) {  // bounded, then timers
          zmq::message_t id, body;
          if (!router.recv(id, zmq::recv_flags::dontwait)) break;
          if (!id.more() || !router.recv(body, zmq::recv_flags::dontwait)) continue;
          while (body.more()) {  // extra frames: not ours; drain them
            zmq::message_t extra;
            if (!router.recv(extra, zmq::recv_flags::dontwait)) break;
            body.rebuild(0);
          }
          const std::string sender = id.to_string();
          const std::string user = sec.secure() ? user_id_of(body) : sender;
          running = on_message(sender, user, body.to_string_view()) && running;
        }
      }
      if (items[1].revents & ZMQ_POLLIN) {
        zmq::message_t ignored;
        while (wake_in.recv(ignored, zmq::recv_flags::dontwait)) {
        }
      }
      drain_completions();
      const auto now = clock::now();
      if (now >= next_ping) {
        for (std::uint32_t j = 0; j < peers.size(); ++j)
          if (peers[j]) send_to(j, ping());
        next_ping = now + opt_.heartbeat;
      }
      check_peers(now);
      check_deadlines(now);
      if (now >= next_publish_) {
        publish(now);
        next_publish_ = now + std::chrono::milliseconds(50);
      }
    }
    const std::string why = "device " + std::to_string(opt_.index) + " stopped";
    fail_policy_calls(why);
    queue_.stop();
    drain_completions();
    for (auto& [id, s] : prompts_) {  // past the drain deadline: every client still hears
      wire::envelope r;
      r.type = wire::kind::result;
      r.from = opt_.index;
      r.tag = s->tag;
      r.error = why + " before the prompt was answered";
      ++counters_.failed;
      reply(s->client, r);
    }
    prompts_.clear();
    for (std::uint32_t j = 0; j < peers.size(); ++j)
      if (peers[j])
        send_to(j, [] {
          wire::envelope e;
          e.type = wire::kind::leaving;
          return e;
        }());
    publish(clock::now(), false);
    say("info", "stopped");
  }

 private:
  struct prompt_state : origin_run {
    using origin_run::origin_run;
    std::string client, tag;
    std::optional<wire::layout_note> layout;  // the adaptive policy's decision
    std::vector<clock::time_point> deadline;  // of each call in flight
  };
  using prompt_map = std::unordered_map<std::uint64_t, std::shared_ptr<prompt_state>>;
  struct local_call {
    zmq_device* self;
    wire::envelope call;
    clock::time_point expires = clock::time_point::max();  // the call's budget, from receipt
    // The policy deciding the sink here: its prompt (kept alive while it runs) and copies of
    // the sink's record and inputs (the prompt may end at its peer deadline meanwhile).
    std::shared_ptr<prompt_state> decide{};
    call_record sink{};
    std::vector<call_record> inputs{};
  };

  // How an origin reaches the devices (moa::net::Link): its own queue, or a peer over the wire.
  struct link {
    zmq_device& dev;
    std::uint64_t id;
    prompt_state& s;
    [[nodiscard]] std::uint32_t devices() const noexcept {
      return std::uint32_t(dev.alive_.size());
    }
    [[nodiscard]] bool alive(std::uint32_t d) const { return dev.alive_[d]; }
    [[nodiscard]] double load(std::uint32_t d) const { return dev.load_of(d); }
    [[nodiscard]] peer_view& view() const { return dev.view_; }
    [[nodiscard]] bool has_room(std::uint32_t) const noexcept { return true; }  // peers say so
    [[nodiscard]] const std::string& name(std::uint32_t d) const { return dev.names_[d]; }
    device::refusal send(origin_run& o, call_id c) {
      return dev.send_call(id, s, o.device_of(c), c);
    }
    void count(route_event e) {
      ++(e == route_event::refused    ? dev.counters_.refusals
         : e == route_event::rerouted ? dev.counters_.reroutes
                                      : dev.counters_.lost);
    }
  };

  // A peer's load is its word checked by the view; ours is our queue.
  double load_of(std::uint32_t d) {
    if (d == opt_.index) view_.report(d, double(queue_.load()));
    return view_.load(d, clock::now());
  }

  wire::envelope ping() const {
    wire::envelope e;
    e.type = wire::kind::ping;
    e.from = opt_.index;
    e.load = queue_.load();
    return e;
  }

  // Copies the counters for snapshot() (on the I/O thread, the only one that writes them).
  void publish(clock::time_point now, bool running = true) {
    device_snapshot s;
    s.device = opt_.index;
    s.running = running;
    s.stopping = stopping_;
    const auto q = queue_.stats(now);
    s.queued = queue_.load();
    s.in_flight = prompts_.size();
    s.utilisation = q.utilisation;
    s.submitted = counters_.prompts;
    s.complete = counters_.complete;
    s.degraded = counters_.degraded;
    s.failed = counters_.failed;
    s.refused = counters_.refused_prompts;
    s.over_capacity = counters_.over_capacity;
    s.served = counters_.served;
    s.refusals = counters_.refusals;
    s.reroutes = counters_.reroutes;
    s.timeouts = counters_.timeouts;
    s.lost = counters_.lost;
    s.malformed = counters_.malformed;
    s.dropped = counters_.dropped;
    s.expired = expired_.load(std::memory_order_relaxed);
    s.dead_peers = counters_.dead_peers;
    for (std::uint32_t j = 0; j < alive_.size(); ++j) {
      const double effective = load_of(j);
      const auto parts = view_.explain(j, now);
      s.peers.push_back({alive_[j], effective, parts.reported, parts.outstanding, parts.implied});
    }
    s.latency = latency_;
    std::lock_guard lock(snapshot_mutex_);
    published_ = std::move(s);
  }

  void say(const char* level, const std::string& what) const {
    if (opt_.log) log_line(*opt_.log, level, opt_.index, what);
  }
  void say(const std::string& what) const { say("warn", what); }

  // A well-formed message that names something it may not: counted, logged, dropped.
  bool drop(const std::string& sender, const wire::envelope& e, const std::string& why) {
    ++counters_.dropped;
    say("dropped a " + std::string(wire::to_string(e.type)) + " from '" + sender.substr(0, 32) +
        "': " + why);
    return true;
  }

  bool send_to(std::uint32_t j, wire::envelope e) {
    e.from = opt_.index;
    e.load = queue_.load();
    if (policy_) add_estimates(e);
    if (peers_ == nullptr || j >= peers_->size()) return false;
    auto& s = (*peers_)[j];
    if (!s) return false;
    const std::string bytes = wire::encode(e);
    return s->send(zmq::buffer(bytes), zmq::send_flags::dontwait).has_value();
  }

  void reply(const std::string& client, const wire::envelope& e) {
    if (router_ == nullptr) return;
    const std::string bytes = wire::encode(e);
    router_->send(zmq::buffer(client), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    router_->send(zmq::buffer(bytes), zmq::send_flags::dontwait);
  }

  // --- incoming ---------------------------------------------------------------------------

  // `sender`: the routing id replies go to; `user`: who the connection proved the sender is
  // (with keys the ZAP user id, in plain text the routing id). Logs name the user: a routing id
  // libzmq chose is binary.
  bool on_message(const std::string& sender, const std::string& user, std::string_view bytes) {
    auto d = wire::decode(bytes);
    if (!d.message) {
      ++counters_.malformed;
      say("rejected a malformed message (" + std::to_string(bytes.size()) + " bytes) from '" +
          user.substr(0, 32) + "': " + d.error);
      return true;
    }
    auto& e = *d.message;
    const bool from_peer = e.type == wire::kind::call || e.type == wire::kind::answer ||
                           e.type == wire::kind::refused || e.type == wire::kind::ping ||
                           e.type == wire::kind::leaving;
    if (from_peer) {
      if (e.from >= alive_.size() || e.from == opt_.index || user != "d" + std::to_string(e.from)) {
        ++counters_.malformed;
        say("rejected a " + std::string(wire::to_string(e.type)) + " from '" + user.substr(0, 32) +
            "' claiming to be device " + std::to_string(e.from));
        return true;
      }
      last_seen_[e.from] = clock::now();
      // A load is the peer's word: clamped, and checked against what we observe (peer_view).
      view_.report(e.from, double(e.load));
      if (policy_) take_estimates(e);
      if (e.type == wire::kind::leaving) {
        if (alive_[e.from]) declare_dead(e.from, "is leaving");
        return true;
      }
      if (!alive_[e.from] && !view_.failed(e.from, clock::now())) {
        alive_[e.from] = true;
        say("device " + std::to_string(e.from) + " is back");
      }
    }
    // With keys, prompts, stats and stops come only from a client key: a device's key is for
    // calls, and one compromised device cannot stop or flood another through the front door.
    if (!from_peer && opt_.security.secure() && user != client_user) {
      reply(sender, client_result(e.type == wire::kind::submit ? std::string_view(e.tag)
                                                               : wire::to_string(e.type),
                                  "", "refused: " + user.substr(0, 32) + " is not a client key"));
      return drop(user, e, "not a client key");
    }
    switch (e.type) {
      case wire::kind::call: {
        // A device calls only for prompts it is the origin of; the answer goes back to it.
        if (e.origin != e.from) return drop(sender, e, "origin differs from the sender");
        const bool policy = (e.prompt & policy_call_bit) != 0;
        if (policy ? e.call != 0 : e.call >= plan_calls_)
          return drop(sender, e, "call id " + std::to_string(e.call) + " out of range");
        if (e.layer > max_layer_)
          return drop(sender, e, "layer " + std::to_string(e.layer) + " out of range");
        if (stopping_ || calls_from_[e.origin] >= opt_.max_calls_per_origin) {
          send_to(e.origin, refusal_of(e));
          break;
        }
        serve_call(std::move(e));
        break;
      }
      case wire::kind::answer:
      case wire::kind::refused:
        on_answer(e);
        break;
      case wire::kind::submit:
        if (e.tag.size() > max_tag_bytes) return drop(sender, e, "tag longer than 256 bytes");
        born(sender, std::move(e));
        break;
      case wire::kind::stats: {
        wire::envelope r;
        r.type = wire::kind::result;
        r.from = opt_.index;
        r.tag = "stats";
        const auto s = queue_.stats(clock::now());
        nlohmann::json stats = {{"device", opt_.index},
                                {"prompts", counters_.prompts},
                                {"complete", counters_.complete},
                                {"degraded", counters_.degraded},
                                {"failed", counters_.failed},
                                {"served", s.completed},
                                {"refusals", counters_.refusals},
                                {"reroutes", counters_.reroutes},
                                {"timeouts", counters_.timeouts},
                                {"lost", counters_.lost},
                                {"malformed", counters_.malformed},
                                {"dead_peers", counters_.dead_peers},
                                {"dropped", counters_.dropped},
                                {"refused_prompts", counters_.refused_prompts},
                                {"over_capacity", counters_.over_capacity},
                                {"unauthenticated", zap_ ? zap_->denied() : 0},
                                {"expired", expired_.load(std::memory_order_relaxed)},
                                {"in_flight", prompts_.size()},
                                {"queued", queue_.load()},
                                {"mean_queue", s.mean_queue},
                                {"utilisation", s.utilisation}};
        if (policy_) stats["adaptive"] = adaptive_stats();
        r.text = stats.dump();
        reply(sender, r);
        break;
      }
      case wire::kind::stop:
        reply(sender, client_result("stop", "stopping", ""));
        return false;
      case wire::kind::ping:
      case wire::kind::result:
      case wire::kind::leaving:
        break;
    }
    return true;
  }

  // A peer's estimates of itself, checked before the policy hears them (docs/ADAPTIVE.md): its
  // arrival rate is clamped to [0, max_trusted_rate] prompts per second; its mean service time
  // into [lo, hi] ms, hi the mean latency of this origin's calls to it (a peer cannot serve a
  // call for longer than its answers take to come back; before any call, max_trusted_service_ms)
  // and lo the service time those latencies imply (latency / (its load at send + 1), peer_view's
  // estimate): a peer cannot attract prompts with larger layouts by claiming to be faster than
  // it answers, nor push this origin into refusing by claiming to be slower.
  void take_estimates(const wire::envelope& e) {
    if (e.origin_rate)
      policy_->report_rate(e.from, std::clamp(*e.origin_rate, 0.0, max_trusted_rate) / 1000);
    if (e.service_ms) {
      const auto seen = view_.explain(e.from, clock::now());
      const double hi =
          seen.latency > 0 ? std::clamp(seen.latency * 1000, min_service_ms, max_trusted_service_ms)
                           : max_trusted_service_ms;
      const double lo = std::clamp(seen.service * 1000, min_service_ms, hi);
      policy_->report_service(e.from, std::clamp(*e.service_ms, lo, hi));
    }
  }

  // What the adaptive policy counted, and the estimates it decides on (stats).
  nlohmann::json adaptive_stats() const {
    const auto est = adaptive_estimates();
    const auto counted = policy_->counts();
    auto layouts = nlohmann::json::object();
    for (const auto& [name, n] : counted.admitted) layouts[name] = n;
    auto rates = nlohmann::json::array();
    for (const double r : est.rates) rates.push_back(r * 1000);
    return {{"admitted", layouts},
            {"refused", counted.refused},
            {"changes", counted.changes},
            {"rates_per_s", rates},
            {"service_ms", est.service}};
  }

  // This device's own estimates, for every message to its peers.
  void add_estimates(wire::envelope& e) const {
    const auto own = policy_->own(since_start_ms());
    e.origin_rate = own.first * 1000;
    e.service_ms = own.second;
  }

  void observe_service(clock::duration took) {
    if (policy_) policy_->observe_service(std::chrono::duration<double, std::milli>(took).count());
  }

  [[nodiscard]] double since_start_ms() const {
    return std::chrono::duration<double, std::milli>(clock::now() - epoch_).count();
  }

  wire::envelope client_result(std::string_view tag, std::string text, std::string error) const {
    wire::envelope r;
    r.type = wire::kind::result;
    r.from = opt_.index;
    r.tag = std::string(tag.substr(0, max_tag_bytes));
    r.text = std::move(text);
    r.error = std::move(error);
    return r;
  }

  static wire::envelope refusal_of(const wire::envelope& call) {
    wire::envelope r;
    r.type = wire::kind::refused;
    r.prompt = call.prompt;
    r.origin = call.origin;
    r.call = call.call;
    return r;
  }

  // A call to serve here (a peer's, or our own as origin).
  void serve_call(wire::envelope call) {
    auto job = std::make_shared<local_call>(local_call{this, std::move(call)});
    job->expires = expiry(job->call.budget_ms);
    const auto refused = queue_.try_push({&run_local, job, 0});
    if (refused == device::refusal::none) {
      ++calls_from_[job->call.origin];
      return;
    }
    const auto r = refusal_of(job->call);
    if (job->call.origin == opt_.index)
      on_answer(r);
    else
      send_to(job->call.origin, r);
  }

  static void run_local(void* owner, std::uint64_t, bool served) {
    auto& job = *static_cast<local_call*>(owner);
    auto& self = *job.self;
    wire::envelope a;
    a.type = wire::kind::answer;
    a.from = self.opt_.index;
    a.prompt = job.call.prompt;
    a.origin = job.call.origin;
    a.call = job.call.call;
    call_record rec;
    if (!served) {
      rec.status = call_status::failed;
      rec.error = "device " + std::to_string(self.opt_.index) + " stopped before serving the call";
    } else if (clock::now() >= job.expires) {
      // The origin stopped waiting while the call queued: serving it would only delay the
      // calls behind it.
      self.expired_.fetch_add(1, std::memory_order_relaxed);
      rec.status = call_status::timed_out;
      rec.error = "its deadline passed while it waited in d" + std::to_string(self.opt_.index) +
                  "'s queue; dropped unserved";
    } else if (job.decide) {
      rec = std::move(job.sink);
      job.decide->run().decide(job.call.call, rec, job.inputs);
    } else {
      request req;
      req.messages = std::move(job.call.messages);
      req.context = {job.call.call, job.call.layer, job.call.role};
      if (job.expires != clock::time_point::max()) req.deadline = job.expires;
      req.stop = self.queue_.stop_token();
      const auto began = clock::now();
      call_backend(self.ref_, req, rec);
      self.observe_service(clock::now() - began);
      enforce_limits(rec, clock::now(), req.deadline, {});
    }
    a.status = rec.status;
    a.text = std::move(rec.text);
    a.error = std::move(rec.error);
    a.prompt_tokens = rec.usage.prompt_tokens;
    a.completion_tokens = rec.usage.completion_tokens;
    {
      std::lock_guard lock(self.outbox_mutex_);
      self.outbox_.push_back(std::move(a));
      if (self.wake_out_) self.wake_out_->send(zmq::str_buffer("!"), zmq::send_flags::dontwait);
    }
  }

  void drain_completions() {
    std::deque<wire::envelope> done;
    std::deque<std::pair<std::uint32_t, wire::envelope>> calls;
    {
      std::lock_guard lock(outbox_mutex_);
      done.swap(outbox_);
      calls.swap(policy_out_);
    }
    for (auto& [d, e] : calls) {
      const auto id = e.prompt;
      if (!alive_[d] || !send_to(d, std::move(e))) {
        wire::envelope failed;
        failed.type = wire::kind::answer;
        failed.prompt = id;
        failed.status = call_status::failed;
        failed.error = names_[d] + " is dead";
        answer_policy_call(failed, true);
      }
    }
    for (auto& a : done) {
      ++counters_.served;
      if (a.origin < calls_from_.size() && calls_from_[a.origin] > 0) --calls_from_[a.origin];
      if (a.origin == opt_.index)
        on_answer(a);
      else
        send_to(a.origin, std::move(a));
    }
  }

  // --- origin side ------------------------------------------------------------------------

  void born(const std::string& client, wire::envelope e) {
    ++counters_.prompts;
    if (stopping_ || prompts_.size() >= opt_.max_prompts || e.messages.empty()) {
      ++counters_.refused_prompts;
      wire::envelope r;
      r.type = wire::kind::result;
      r.from = opt_.index;
      r.tag = std::move(e.tag);
      r.error = e.messages.empty() ? "refused: the prompt has no messages"
                : stopping_ ? "refused: device " + std::to_string(opt_.index) + " is stopping"
                            : "refused: device " + std::to_string(opt_.index) + " has " +
                                  std::to_string(opt_.max_prompts) +
                                  " prompts in flight (its bound); retry later";
      reply(client, r);
      return;
    }
    // The adaptive policy decides this prompt's layout, or refuses it at once: its queues would
    // diverge (docs/ADAPTIVE.md). Nothing admitted is refused later on its account.
    std::optional<layout_verdict> decision;
    if (policy_) decision = policy_->decide(since_start_ms());
    std::uint32_t layers = opt_.layers;
    std::size_t fanout = gossip_.fanout();
    if (decision) {
      layers = decision->layers;
      if constexpr (std::is_same_v<G, uniform_gossip>) fanout = decision->fanout;
    }
    const auto note = [&] {
      return wire::layout_note{layers, std::uint32_t(fanout), decision->reason, decision->why};
    };
    if (decision && !decision->admitted) {
      ++counters_.refused_prompts;
      ++counters_.over_capacity;
      wire::envelope r;
      r.type = wire::kind::result;
      r.from = opt_.index;
      r.tag = std::move(e.tag);
      r.refusal = "over_capacity";
      r.layout = note();
      r.error = "refused: over capacity: device " + std::to_string(opt_.index) +
                "'s adaptive policy admits no more at the offered load (" + decision->why +
                "); retry later";
      reply(client, r);
      return;
    }
    std::uint64_t id = 0;
    {
      std::lock_guard lock(outbox_mutex_);
      id = fresh_id(prompts_);
    }
    rng random(mix_seed(mix_seed(opt_.seed, opt_.index), born_++));
    const auto n = std::uint32_t(opt_.addresses.size());
    std::vector<double> load(n);
    for (std::uint32_t j = 0; j < n; ++j)
      load[j] = alive_[j] ? load_of(j) : std::numeric_limits<double>::infinity();
    plan p;
    if constexpr (std::is_same_v<G, uniform_gossip>)
      make_gossip_plan(opt_.index, n, layers, uniform_gossip{fanout}, random, p, load);
    else
      make_gossip_plan(opt_.index, n, layers, gossip_, random, p, load);
    request prompt;
    prompt.messages = std::move(e.messages);
    auto sp = std::make_shared<prompt_state>(opt_.index, std::move(p), std::move(prompt), run_opt_,
                                             clock::now(), random, opt_.max_reroutes);
    auto& s = *sp;
    s.client = client;
    s.tag = std::move(e.tag);
    if (decision) s.layout = note();
    s.deadline.assign(s.plan().size(), clock::time_point::max());
    s.run().use_policy(this, n, &policy_call, &policy_name);
    prompts_.emplace(id, std::move(sp));
    link l{*this, id, s};
    if (s.begin(l)) finish(prompts_.find(id));
  }

  // A call this device sends as origin (its messages still to fill in).
  wire::envelope call_envelope(std::uint64_t prompt, call_id c, std::uint32_t layer,
                               call_role role) const {
    wire::envelope call;
    call.type = wire::kind::call;
    call.from = opt_.index;
    call.prompt = prompt;
    call.origin = opt_.index;
    call.call = c;
    call.layer = layer;
    call.role = role;
    call.budget_ms = double(opt_.peer_timeout.count());
    return call;
  }

  static clock::time_point expiry(double budget_ms) {
    if (!(budget_ms > 0)) return clock::time_point::max();
    return clock::now() + std::chrono::duration_cast<clock::duration>(
                              std::chrono::duration<double, std::milli>(budget_ms));
  }

  // A random id that `taken` does not hold, with the top bit `mark` (policy_call_bit for a
  // policy's calls, 0 for prompts).
  // Prompt ids are the only thing tying an answer to a prompt: drawn from the kernel's CSPRNG
  // (a seeded generator's state can be recovered from the ids a peer sees), so a process that
  // can reach the port cannot forge the answer of a prompt it did not see.
  template <class Map>
  std::uint64_t fresh_id(const Map& taken, std::uint64_t mark = 0) {
    for (;;) {
      std::uint64_t random = 0;
      if (::getrandom(&random, sizeof random, 0) != sizeof random) continue;  // EINTR
      const std::uint64_t id = (random & ~policy_call_bit) | mark;
      if ((id & ~policy_call_bit) != 0 && taken.count(id) == 0) return id;
    }
  }

  // Sends call c of prompt `id` to device d: into this device's queue, or over the wire.
  device::refusal send_call(std::uint64_t id, prompt_state& s, std::uint32_t d, call_id c) {
    auto call = call_envelope(id, c, s.plan()[c].layer, s.plan()[c].role);
    s.deadline[c] = clock::now() + opt_.peer_timeout;
    if (d == opt_.index) {
      auto job = std::make_shared<local_call>(local_call{this, std::move(call)});
      if (s.run().policy_decides(c)) {
        job->decide = prompts_.at(id);
        job->sink = s.run().record(c);
        job->inputs = s.run().inputs_of(job->sink);
      } else {
        job->call.messages = s.run().messages(s.plan()[c].group);
        job->expires = s.deadline[c];
      }
      return queue_.try_push({&run_local, job, 0}) == device::refusal::none ? device::refusal::none
                                                                            : device::refusal::full;
    }
    call.messages = s.run().messages(s.plan()[c].group);
    return alive_[d] && send_to(d, std::move(call)) ? device::refusal::none : device::refusal::dead;
  }

  void advance(std::uint64_t id) {
    auto it = prompts_.find(id);
    if (it == prompts_.end()) return;
    auto& s = *it->second;
    link l{*this, id, s};
    bool ended = false;
    if constexpr (requires { G::uses_load; }) {
      ended = s.advance(l, [&](std::span<const call_id> calls) {
        if (opt_.refresh_peers) s.redraw(l, gossip_, calls);
      });
    } else {
      ended = s.advance(l);
    }
    if (ended) finish(it);
  }

  void on_answer(const wire::envelope& a) {
    if (a.prompt & policy_call_bit) {
      answer_policy_call(a);
      return;
    }
    auto it = prompts_.find(a.prompt);
    if (it == prompts_.end() || a.origin != opt_.index) {  // ended already, or never ours
      ++counters_.dropped;
      return;
    }
    auto& s = *it->second;
    // Only from the device the call is with now, only once, only once it was sent.
    if (a.call >= s.plan().size() || s.resolved(a.call) ||
        s.deadline[a.call] == clock::time_point::max() || a.from != s.device_of(a.call)) {
      ++counters_.dropped;
      say("dropped an answer for call " + std::to_string(a.call) + " from d" +
          std::to_string(a.from) + ": not a call in flight to it");
      return;
    }
    link l{*this, a.prompt, s};
    if (a.type == wire::kind::refused) {
      s.refused(l, a.call);
    } else {
      call_record r;
      r.status = a.status;
      r.text = a.text;
      r.error = a.error;
      r.usage = {a.prompt_tokens, a.completion_tokens};
      r.end = clock::now() - s.born();
      s.answered(a.call, std::move(r));
    }
    advance(a.prompt);
  }

  // Calls one prompt's origin has in flight, in order, for the fault checks below.
  template <class F>
  void each_prompt(F&& f) {
    std::vector<std::uint64_t> ids;
    for (auto& [id, s] : prompts_) ids.push_back(id);
    for (auto id : ids) {
      auto it = prompts_.find(id);
      if (it == prompts_.end()) continue;
      link l{*this, id, *it->second};
      if (f(l, *it->second)) advance(id);
    }
  }

  void check_peers(clock::time_point now) {
    for (std::uint32_t j = 0; j < alive_.size(); ++j) {
      if (j == opt_.index || !alive_[j] || now - last_seen_[j] < opt_.dead_after) continue;
      declare_dead(j, "silent for " +
                          std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                             now - last_seen_[j])
                                             .count()) +
                          " ms");
    }
  }

  void declare_dead(std::uint32_t j, const std::string& why) {
    alive_[j] = false;
    ++counters_.dead_peers;
    say("device " + std::to_string(j) + " " + why + ": considered dead; re-routing its calls");
    each_prompt([&](link& l, prompt_state& s) {
      for (call_id c = 0; c < s.plan().size(); ++c)
        if (!s.resolved(c) && s.device_of(c) == j && s.deadline[c] != clock::time_point::max())
          s.lose(l, c, names_[j] + " died");
      return true;
    });
  }

  void check_deadlines(clock::time_point now) {
    if (now < next_deadline_check_) return;
    next_deadline_check_ = now + std::chrono::milliseconds(5);
    std::vector<std::uint32_t> failing;
    each_prompt([&](link&, prompt_state& s) {
      bool changed = false;
      for (call_id c = 0; c < s.plan().size(); ++c)
        if (!s.resolved(c) && s.deadline[c] <= now) {
          ++counters_.timeouts;
          const auto d = s.device_of(c);
          if (d != opt_.index) failing.push_back(d);
          s.resolve(c, call_status::timed_out,
                    names_[s.device_of(c)] + " did not answer within the peer deadline; skipped");
          changed = true;
        }
      return changed;
    });
    for (const auto d : failing) {  // the view fails a peer after trust.strikes in a row
      if (!alive_[d] || !view_.failed(d, now)) continue;
      declare_dead(d, "let " + std::to_string(opt_.trust.strikes) +
                          " calls in a row pass their deadline though it pings");
    }
  }

  void finish(typename prompt_map::iterator it) {
    auto& s = *it->second;
    const auto res = s.conclude(clock::now());
    wire::envelope r;
    r.type = wire::kind::result;
    r.from = opt_.index;
    r.tag = s.tag;
    r.text = res.has_answer() ? res.answer : std::string();
    r.error = res.error;
    for (const auto& c : res.trace) r.missing += c.ok() ? 0 : 1;
    r.latency_ms = std::chrono::duration<double, std::milli>(res.elapsed).count();
    latency_.add(std::chrono::duration<double>(res.elapsed).count());
    r.trace = res.trace;
    r.layout = s.layout;
    if (!res.has_answer())
      ++counters_.failed;
    else if (r.missing > 0 || res.degraded())
      ++counters_.degraded;
    else
      ++counters_.complete;
    if (r.missing > 0 && r.error.empty()) {
      for (const auto& c : res.trace)
        if (!c.ok())
          r.error += (r.error.empty() ? "missing: " : "; ") + name_call(c) + " " +
                     std::string(to_string(c.status)) + ": " + c.error;
    }
    reply(s.client, r);
    prompts_.erase(it);
  }

  // --- calls an aggregation policy makes (on this device's worker, while it decides) ---------

  // Policy calls travel as ordinary calls whose prompt id has this bit set; the answer wakes the
  // worker that waits for it.
  static constexpr std::uint64_t policy_call_bit = std::uint64_t(1) << 63;

  static const std::string& policy_name(const void* self, std::uint32_t b) {
    return static_cast<const zmq_device*>(self)->names_[b];
  }

  static void policy_call(const void* self, std::uint32_t b, const request& r, call_record& rec) {
    auto& dev = *const_cast<zmq_device*>(static_cast<const zmq_device*>(self));
    if (b == dev.opt_.index) {
      call_backend(dev.ref_, r, rec);
      return;
    }
    if (std::this_thread::get_id() == dev.io_thread_.load(std::memory_order_relaxed)) {
      // A selection runs where the group is built, on the I/O thread, which the answer would
      // have to come through: waiting for it there could only time out.
      rec.status = call_status::failed;
      rec.error =
          "a selecting policy's calls run on the origin's I/O thread and can reach only "
          "its own backend (d" +
          std::to_string(dev.opt_.index) + "), not " + dev.names_[b];
      return;
    }
    auto call = dev.call_envelope(0, 0, r.context.layer, r.context.role);
    call.messages = r.messages;
    auto answer = std::make_shared<std::promise<wire::envelope>>();
    auto future = answer->get_future();
    {
      std::lock_guard lock(dev.outbox_mutex_);
      call.prompt = dev.fresh_id(dev.policy_calls_, policy_call_bit);
      dev.policy_calls_.emplace(call.prompt, policy_wait{b, answer});
      dev.policy_out_.emplace_back(b, std::move(call));
      if (dev.wake_out_) dev.wake_out_->send(zmq::str_buffer("!"), zmq::send_flags::dontwait);
    }
    if (future.wait_for(dev.opt_.peer_timeout) != std::future_status::ready) {
      rec.status = call_status::timed_out;
      rec.error = dev.names_[b] + " did not answer within the peer deadline";
      return;
    }
    const auto a = future.get();
    if (a.type == wire::kind::refused) {
      rec.status = call_status::failed;
      rec.error = "refused by " + dev.names_[b] + " (queue full)";
      return;
    }
    rec.status = a.status;
    rec.text = a.text;
    rec.error = a.error;
    rec.usage = {a.prompt_tokens, a.completion_tokens};
  }

  // `local`: failed here (dead peer, stopping), not an answer over the wire.
  void answer_policy_call(const wire::envelope& a, bool local = false) {
    std::shared_ptr<std::promise<wire::envelope>> waiting;
    {
      std::lock_guard lock(outbox_mutex_);
      auto it = policy_calls_.find(a.prompt);
      if (it == policy_calls_.end() || (!local && it->second.device != a.from)) {
        ++counters_.dropped;  // answered already, given up on, or not from where it went
        return;
      }
      waiting = std::move(it->second.answer);
      policy_calls_.erase(it);
    }
    waiting->set_value(a);
  }

  void fail_policy_calls(const std::string& why) {
    std::vector<std::uint64_t> ids;
    {
      std::lock_guard lock(outbox_mutex_);
      for (const auto& [id, p] : policy_calls_) ids.push_back(id);
    }
    for (auto id : ids) {
      wire::envelope failed;
      failed.type = wire::kind::answer;
      failed.prompt = id;
      failed.status = call_status::failed;
      failed.error = why;
      answer_policy_call(failed, true);
    }
  }

  zmq_device_options opt_;
  G gossip_;
  any_backend backend_;
  backend_ref ref_;
  device queue_;
  zmq_device_counters counters_;
  std::vector<bool> alive_;
  peer_view view_;  // before prompts_: their calls' tickets close here
  std::vector<clock::time_point> last_seen_;
  std::vector<std::string> names_;  // of every device, as traces show them
  run_options run_opt_;             // what the plan runs read: quorum, policy
  prompt_map prompts_;
  std::uint64_t born_ = 0;               // prompts born here: seeds each one's draw, reproducibly
  std::vector<std::size_t> calls_from_;  // calls of each origin queued or in service here
  std::uint32_t plan_calls_ = 0;         // calls in a prompt's plan
  std::uint32_t max_layer_ = 0;          // the last layer a call may name
  bool stopping_ = false;
  std::atomic<std::uint64_t> expired_{0};  // calls dropped unserved past their deadline
  static constexpr std::size_t max_tag_bytes = 256;
  clock::time_point next_deadline_check_{};
  zmq::socket_t* router_ = nullptr;
  std::vector<std::optional<zmq::socket_t>>* peers_ = nullptr;
  const zap_handler* zap_ = nullptr;  // while run() runs with keys
  std::mutex outbox_mutex_;
  std::deque<wire::envelope> outbox_;                                // guarded by outbox_mutex_
  std::deque<std::pair<std::uint32_t, wire::envelope>> policy_out_;  // guarded by outbox_mutex_
  struct policy_wait {
    std::uint32_t device;  // where the call went: the only device whose answer counts
    std::shared_ptr<std::promise<wire::envelope>> answer;
  };
  std::unordered_map<std::uint64_t, policy_wait> policy_calls_;  // guarded by outbox_mutex_
  std::atomic<std::thread::id> io_thread_{};
  latency_histogram latency_;  // of prompts born here; I/O thread
  clock::time_point next_publish_{};
  mutable std::mutex snapshot_mutex_;
  device_snapshot published_;  // guarded by snapshot_mutex_
  std::optional<zmq::socket_t> wake_out_;
  // The layout policy (opt_.adaptive; thread-safe itself): decisions and reports on the I/O
  // thread, service times from the workers.
  origin_layout_policy* policy_ = nullptr;
  clock::time_point epoch_ = clock::now();        // the policy's time 0
  static constexpr double min_service_ms = 1e-6;  // a reported service time is positive
};

}  // namespace moa::net
