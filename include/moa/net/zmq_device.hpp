// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// One device of a network of processes over ZeroMQ (cppzmq): its own backend, its own FCFS
/// queue (moa::net::device), and its peers' addresses; no coordinator. It is the origin of the
/// prompts its clients submit (it runs their plans: fork per layer, join, aggregate) and a peer
/// serving the calls others gossip to it. The wire format is in moa/net/zmq_wire.hpp.
///
/// Sockets: one ROUTER bound at the device's address receives everything (peers' calls, answers,
/// heartbeats; clients' prompts); one DEALER per peer, connected to the peer's ROUTER with the
/// routing id "d<index>", sends. All sockets live on the device's I/O thread (ZeroMQ sockets are
/// not thread-safe); the workers hand their answers back through a locked queue and an inproc
/// wake-up socket.
///
/// Faults: a peer's full queue answers `refused` and the origin re-routes (the least loaded live
/// peer not yet in the layer) or goes on without it; a call unanswered after `peer_timeout` is
/// skipped; a peer silent for `dead_after` (heartbeats every `heartbeat`) is declared dead and
/// its pending calls are re-routed or dropped from their joins. Malformed messages are logged
/// and dropped. Across hosts: bind `tcp://*:PORT` (`bind`) and list every device's
/// `tcp://HOST:PORT` in `addresses` (see docs/NETWORK.md).
///
/// @code{.cpp}
/// moa::net::zmq_device_options opt;
/// opt.index = 1;
/// opt.addresses = {"tcp://127.0.0.1:5550", "tcp://127.0.0.1:5551", "tcp://127.0.0.1:5552"};
/// moa::net::zmq_device dev(moa::synthetic_backend({.name = "d1"}), moa::uniform_gossip{1}, opt);
/// dev.run();  // until a `stop` message or the stop token
/// @endcode

#include <zmq.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <iostream>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <stop_token>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "moa/core/backend.hpp"
#include "moa/core/error.hpp"
#include "moa/core/random.hpp"
#include "moa/exec/detail/run_common.hpp"
#include "moa/gossip/gossip_concepts.hpp"
#include "moa/net/device.hpp"
#include "moa/net/zmq_wire.hpp"
#include "moa/topology/gossip.hpp"

namespace moa::net {

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
};

/// @brief Counters of a ZeroMQ device (also sent as JSON in reply to `stats`).
struct zmq_device_counters {
  std::uint64_t prompts = 0, complete = 0, degraded = 0, failed = 0;
  std::uint64_t served = 0, refusals = 0, reroutes = 0, timeouts = 0, lost = 0, malformed = 0;
  std::uint64_t dead_peers = 0;
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
        random_(mix_seed(opt_.seed, opt_.index)) {
    const auto n = opt_.addresses.size();
    if (n == 0 || opt_.index >= n)
      MOA_THROW(invalid_argument("moa::net::zmq_device: index " + std::to_string(opt_.index) +
                                 " is not a position in the " + std::to_string(n) +
                                 " addresses; list every device's endpoint, this one included"));
    require(check_fanout(gossip_.fanout(), n));
    std::string name = backend_.name();
    ref_ = backend_ref(backend_, name.empty() ? "d" + std::to_string(opt_.index) : name);
    alive_.assign(n, true);
    load_.assign(n, 0.0);
    last_seen_.assign(n, clock::now());
  }

  [[nodiscard]] const zmq_device_counters& counters() const noexcept { return counters_; }

  /// Serves until a `stop` message or `stop` is requested. Binds and connects first.
  void run(std::stop_token stop = {}) {
    zmq::context_t ctx(1);
    zmq::socket_t router(ctx, zmq::socket_type::router);
    router.set(zmq::sockopt::linger, 0);
    router.set(zmq::sockopt::router_mandatory, 0);
    router.bind(opt_.bind.empty() ? opt_.addresses[opt_.index] : opt_.bind);
    std::vector<std::optional<zmq::socket_t>> peers(opt_.addresses.size());
    for (std::uint32_t j = 0; j < peers.size(); ++j) {
      if (j == opt_.index) continue;
      peers[j].emplace(ctx, zmq::socket_type::dealer);
      peers[j]->set(zmq::sockopt::linger, 0);
      peers[j]->set(zmq::sockopt::routing_id, "d" + std::to_string(opt_.index));
      peers[j]->connect(opt_.addresses[j]);
    }
    const std::string wake_address = "inproc://moa-wake-" + std::to_string(opt_.index);
    zmq::socket_t wake_in(ctx, zmq::socket_type::pull);
    wake_in.bind(wake_address);
    wake_out_.emplace(ctx, zmq::socket_type::push);
    wake_out_->set(zmq::sockopt::linger, 0);
    wake_out_->connect(wake_address);
    router_ = &router;
    peers_ = &peers;
    queue_.start();

    auto next_ping = clock::now();
    const auto begin = clock::now();
    std::fill(last_seen_.begin(), last_seen_.end(), begin);
    bool running = true;
    while (running && !stop.stop_requested()) {
      zmq::pollitem_t items[] = {{router.handle(), 0, ZMQ_POLLIN, 0},
                                 {wake_in.handle(), 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, 2, std::chrono::milliseconds(10));
      if (items[0].revents & ZMQ_POLLIN) {
        for (int budget = 0; budget < 256 && running; ++budget) {  // bounded, then timers
          zmq::message_t id, body;
          if (!router.recv(id, zmq::recv_flags::dontwait)) break;
          if (!id.more() || !router.recv(body, zmq::recv_flags::dontwait)) continue;
          while (body.more()) {  // extra frames: not ours; drain them
            zmq::message_t extra;
            if (!router.recv(extra, zmq::recv_flags::dontwait)) break;
            body.rebuild(0);
          }
          running = on_message(id.to_string(), body.to_string_view());
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
    }
    queue_.stop();
    drain_completions();
    router_ = nullptr;
    peers_ = nullptr;
    std::lock_guard lock(outbox_mutex_);
    wake_out_.reset();
  }

 private:
  struct prompt_state {
    std::string client, tag;
    clock::time_point born;
    plan p;
    request prompt;
    result res;
    std::vector<std::uint32_t> device_of, pending, tries;
    std::vector<std::uint8_t> resolved;
    std::vector<clock::time_point> deadline;
    std::vector<std::pair<call_id, std::uint32_t>> tried;
    std::vector<std::vector<message>> group_messages;
    std::vector<group_id> ready;
  };
  struct local_call {
    zmq_device* self;
    wire::envelope call;
  };

  wire::envelope ping() const {
    wire::envelope e;
    e.type = wire::kind::ping;
    e.from = opt_.index;
    e.load = queue_.load();
    return e;
  }

  void say(const std::string& what) const {
    if (opt_.log) *opt_.log << "moa device " << opt_.index << ": " << what << std::endl;
  }

  bool send_to(std::uint32_t j, wire::envelope e) {
    e.from = opt_.index;
    e.load = queue_.load();
    const std::string bytes = wire::encode(e);
    auto& s = (*peers_)[j];
    if (!s) return false;
    return s->send(zmq::buffer(bytes), zmq::send_flags::dontwait).has_value();
  }

  void reply(const std::string& client, const wire::envelope& e) {
    const std::string bytes = wire::encode(e);
    router_->send(zmq::buffer(client), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    router_->send(zmq::buffer(bytes), zmq::send_flags::dontwait);
  }

  // --- incoming ---------------------------------------------------------------------------

  bool on_message(const std::string& sender, std::string_view bytes) {
    auto d = wire::decode(bytes);
    if (!d.message) {
      ++counters_.malformed;
      say("rejected a malformed message (" + std::to_string(bytes.size()) + " bytes) from '" +
          sender.substr(0, 32) + "': " + d.error);
      return true;
    }
    auto& e = *d.message;
    const bool from_peer = e.type == wire::kind::call || e.type == wire::kind::answer ||
                           e.type == wire::kind::refused || e.type == wire::kind::ping;
    if (from_peer) {
      if (e.from >= alive_.size() || e.from == opt_.index ||
          sender != "d" + std::to_string(e.from)) {
        ++counters_.malformed;
        say("rejected a " + std::string(wire::to_string(e.type)) + " from '" +
            sender.substr(0, 32) + "' claiming to be device " + std::to_string(e.from));
        return true;
      }
      last_seen_[e.from] = clock::now();
      load_[e.from] = double(e.load);
      if (!alive_[e.from]) {
        alive_[e.from] = true;
        say("device " + std::to_string(e.from) + " is back");
      }
    }
    switch (e.type) {
      case wire::kind::call:
        serve_call(std::move(e));
        break;
      case wire::kind::answer:
      case wire::kind::refused:
        on_answer(e);
        break;
      case wire::kind::submit:
        born(sender, std::move(e));
        break;
      case wire::kind::stats: {
        wire::envelope r;
        r.type = wire::kind::result;
        r.from = opt_.index;
        r.tag = "stats";
        const auto s = queue_.stats(clock::now());
        r.text = nlohmann::json{{"device", opt_.index},
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
                                {"mean_queue", s.mean_queue},
                                {"utilisation", s.utilisation}}
                     .dump();
        reply(sender, r);
        break;
      }
      case wire::kind::stop:
        return false;
      case wire::kind::ping:
      case wire::kind::result:
        break;
    }
    return true;
  }

  // A call to serve here (a peer's, or our own as origin).
  void serve_call(wire::envelope call) {
    auto job = std::make_shared<local_call>(local_call{this, std::move(call)});
    const auto refused = queue_.try_push({&run_local, job, 0});
    if (refused == device::refusal::none) return;
    wire::envelope r;
    r.type = wire::kind::refused;
    r.prompt = job->call.prompt;
    r.origin = job->call.origin;
    r.call = job->call.call;
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
    if (!served) {
      a.status = call_status::failed;
      a.error = "device " + std::to_string(self.opt_.index) + " stopped before serving the call";
    } else {
      request req;
      req.messages = std::move(job.call.messages);
      req.context = {job.call.call, job.call.layer, job.call.role};
      if (job.call.budget_ms > 0)
        req.deadline =
            clock::now() + std::chrono::duration_cast<clock::duration>(
                               std::chrono::duration<double, std::milli>(job.call.budget_ms));
      req.stop = self.queue_.stop_token();
      call_record rec;
      detail::invoke(self.ref_, req, rec, nullptr);
      detail::enforce_limits(rec, clock::now(), req.deadline, {});
      a.status = rec.status;
      a.text = std::move(rec.text);
      a.error = std::move(rec.error);
      a.prompt_tokens = rec.usage.prompt_tokens;
      a.completion_tokens = rec.usage.completion_tokens;
    }
    {
      std::lock_guard lock(self.outbox_mutex_);
      self.outbox_.push_back(std::move(a));
      if (self.wake_out_) self.wake_out_->send(zmq::str_buffer("!"), zmq::send_flags::dontwait);
    }
  }

  void drain_completions() {
    std::deque<wire::envelope> done;
    {
      std::lock_guard lock(outbox_mutex_);
      done.swap(outbox_);
    }
    for (auto& a : done) {
      ++counters_.served;
      if (a.origin == opt_.index)
        on_answer(a);
      else
        send_to(a.origin, std::move(a));
    }
  }

  // --- origin side ------------------------------------------------------------------------

  void born(const std::string& client, wire::envelope e) {
    ++counters_.prompts;
    const std::uint64_t id = next_prompt_++;
    auto& s = prompts_[id];
    s.client = client;
    s.tag = std::move(e.tag);
    s.born = clock::now();
    s.prompt.messages = std::move(e.messages);
    const auto n = std::uint32_t(opt_.addresses.size());
    std::vector<double> load(load_);
    load[opt_.index] = double(queue_.load());
    for (std::uint32_t j = 0; j < n; ++j)
      if (!alive_[j]) load[j] = std::numeric_limits<double>::infinity();
    make_gossip_plan(opt_.index, n, opt_.layers, gossip_, random_, s.p, load);
    const auto size = s.p.size();
    s.res.trace.resize(size);
    s.device_of.resize(size);
    s.resolved.assign(size, 0);
    s.tries.assign(size, 0);
    s.deadline.assign(size, clock::time_point::max());
    s.group_messages.resize(s.p.group_count());
    s.pending.resize(s.p.group_count());
    for (call_id c = 0; c < size; ++c) {
      auto& r = s.res.trace[c];
      r.call = c;
      r.layer = s.p[c].layer;
      r.role = s.p[c].role;
      set_device(s, c, s.p[c].backend);
    }
    for (group_id g = 0; g < s.p.group_count(); ++g) {
      s.pending[g] = std::uint32_t(s.p.inputs_of(g).size());
      if (s.pending[g] == 0) s.ready.push_back(g);
    }
    advance(id);
  }

  void set_device(prompt_state& s, call_id c, std::uint32_t d) {
    s.device_of[c] = d;
    s.res.trace[c].backend = d;
    s.res.trace[c].backend_name = "d" + std::to_string(d);
  }

  void resolve(prompt_state& s, call_id c, call_status status, std::string error) {
    s.res.trace[c].status = status;
    s.res.trace[c].error = std::move(error);
    s.resolved[c] = 1;
    for (group_id g : s.p.consumers_of(c))
      if (--s.pending[g] == 0) s.ready.push_back(g);
  }

  void advance(std::uint64_t id) {
    auto it = prompts_.find(id);
    if (it == prompts_.end()) return;
    auto& s = it->second;
    run_options ro;
    ro.quorum = opt_.quorum;
    while (!s.ready.empty()) {
      const group_id g = s.ready.back();
      s.ready.pop_back();
      call_list used;
      std::size_t trimmed = 0;
      const auto skip = detail::build_group(s.p, g, s.res.trace, s.prompt, ro, s.group_messages[g],
                                            used, trimmed);
      for (call_id c : s.p.calls_of(g)) s.res.trace[c].references = used;
      if (skip) {
        for (call_id c : s.p.calls_of(g)) resolve(s, c, call_status::skipped, *skip);
        continue;
      }
      for (call_id c : s.p.calls_of(g)) dispatch(id, s, c);
    }
    if (s.resolved[s.p.sink()]) finish(it);
  }

  void dispatch(std::uint64_t id, prompt_state& s, call_id c) {
    std::string why;
    for (;;) {
      const std::uint32_t d = s.device_of[c];
      wire::envelope call;
      call.type = wire::kind::call;
      call.from = opt_.index;
      call.prompt = id;
      call.origin = opt_.index;
      call.call = c;
      call.layer = s.p[c].layer;
      call.role = s.p[c].role;
      call.messages = s.group_messages[s.p[c].group];
      call.budget_ms = double(opt_.peer_timeout.count());
      s.deadline[c] = clock::now() + opt_.peer_timeout;
      if (d == opt_.index) {
        auto job = std::make_shared<local_call>(local_call{this, std::move(call)});
        const auto refused = queue_.try_push({&run_local, job, 0});
        if (refused == device::refusal::none) return;
        ++counters_.refusals;
        why += (why.empty() ? "" : "; ") + std::string("refused by d") + std::to_string(d) +
               " (queue full)";
      } else if (alive_[d] && send_to(d, std::move(call))) {
        return;
      } else {
        ++counters_.lost;
        why += (why.empty() ? "" : "; ") + std::string("d") + std::to_string(d) + " is dead";
      }
      if (!reroute(s, c)) {
        resolve(s, c, call_status::failed, why);
        return;
      }
    }
  }

  bool reroute(prompt_state& s, call_id c) {
    s.tried.emplace_back(c, s.device_of[c]);
    if (s.tries[c] >= opt_.max_reroutes) return false;
    const auto calls = s.p.calls_of(s.p[c].group);
    const auto n = std::uint32_t(alive_.size());
    const auto offset = std::uint32_t(random_.below(n));
    std::optional<std::uint32_t> best;
    double best_load = 0;
    for (std::uint32_t k = 0; k < n; ++k) {
      const std::uint32_t d = (k + offset) % n;
      if (!alive_[d]) continue;
      bool taken = false;
      for (call_id o : calls) taken = taken || s.device_of[o] == d;
      for (const auto& [tc, td] : s.tried) taken = taken || (tc == c && td == d);
      if (taken) continue;
      const double l = d == opt_.index ? double(queue_.load()) : load_[d];
      if (!best || l < best_load) {
        best = d;
        best_load = l;
      }
    }
    if (!best) return false;
    ++s.tries[c];
    ++counters_.reroutes;
    set_device(s, c, *best);
    return true;
  }

  void on_answer(const wire::envelope& a) {
    auto it = prompts_.find(a.prompt);
    if (it == prompts_.end() || a.origin != opt_.index) return;  // ended already: a late answer
    auto& s = it->second;
    if (a.call >= s.p.size() || s.resolved[a.call]) return;
    const bool ours = a.from == s.device_of[a.call];
    if (!ours) return;  // from a device the call was re-routed away from
    if (a.type == wire::kind::refused) {
      ++counters_.refusals;
      if (reroute(s, a.call))
        dispatch(a.prompt, s, a.call);
      else
        resolve(s, a.call, call_status::failed,
                "refused by d" + std::to_string(a.from) + " (queue full); no other device free");
    } else {
      auto& r = s.res.trace[a.call];
      r.text = a.text;
      r.usage = {a.prompt_tokens, a.completion_tokens};
      r.end = clock::now() - s.born;
      resolve(s, a.call, a.status, a.error);
    }
    advance(a.prompt);
  }

  void lose(std::uint64_t id, prompt_state& s, call_id c, const std::string& why) {
    ++counters_.lost;
    if (reroute(s, c))
      dispatch(id, s, c);
    else
      resolve(s, c, call_status::failed, why + "; no other device could take it");
  }

  void check_peers(clock::time_point now) {
    for (std::uint32_t j = 0; j < alive_.size(); ++j) {
      if (j == opt_.index || !alive_[j] || now - last_seen_[j] < opt_.dead_after) continue;
      alive_[j] = false;
      ++counters_.dead_peers;
      say("device " + std::to_string(j) + " silent for " +
          std::to_string(
              std::chrono::duration_cast<std::chrono::milliseconds>(now - last_seen_[j]).count()) +
          " ms: considered dead; re-routing its calls");
      std::vector<std::uint64_t> ids;
      for (auto& [id, s] : prompts_) ids.push_back(id);
      for (auto id : ids) {
        auto it = prompts_.find(id);
        if (it == prompts_.end()) continue;
        auto& s = it->second;
        for (call_id c = 0; c < s.p.size(); ++c)
          if (!s.resolved[c] && s.device_of[c] == j && s.deadline[c] != clock::time_point::max())
            lose(id, s, c, "d" + std::to_string(j) + " died");
        advance(id);
      }
    }
  }

  void check_deadlines(clock::time_point now) {
    if (now < next_deadline_check_) return;
    next_deadline_check_ = now + std::chrono::milliseconds(5);
    std::vector<std::uint64_t> ids;
    for (auto& [id, s] : prompts_) ids.push_back(id);
    for (auto id : ids) {
      auto it = prompts_.find(id);
      if (it == prompts_.end()) continue;
      auto& s = it->second;
      bool changed = false;
      for (call_id c = 0; c < s.p.size(); ++c)
        if (!s.resolved[c] && s.deadline[c] <= now) {
          ++counters_.timeouts;
          resolve(s, c, call_status::timed_out,
                  "d" + std::to_string(s.device_of[c]) +
                      " did not answer within the peer deadline; skipped");
          changed = true;
        }
      if (changed) advance(id);
    }
  }

  void finish(typename std::unordered_map<std::uint64_t, prompt_state>::iterator it) {
    auto& s = it->second;
    run_options ro;
    ro.quorum = opt_.quorum;
    s.res.elapsed = clock::now() - s.born;
    detail::conclude(s.res, s.p, ro, false, false);
    wire::envelope r;
    r.type = wire::kind::result;
    r.from = opt_.index;
    r.tag = s.tag;
    r.text = s.res.has_answer() ? s.res.answer : std::string();
    r.error = s.res.error;
    for (const auto& c : s.res.trace) r.missing += c.ok() ? 0 : 1;
    r.latency_ms = std::chrono::duration<double, std::milli>(s.res.elapsed).count();
    if (!s.res.has_answer())
      ++counters_.failed;
    else if (r.missing > 0 || s.res.degraded())
      ++counters_.degraded;
    else
      ++counters_.complete;
    if (r.missing > 0 && r.error.empty()) {
      for (const auto& c : s.res.trace)
        if (!c.ok())
          r.error += (r.error.empty() ? "missing: " : "; ") + detail::name_call(c) + " " +
                     std::string(to_string(c.status)) + ": " + c.error;
    }
    reply(s.client, r);
    prompts_.erase(it);
  }

  zmq_device_options opt_;
  G gossip_;
  any_backend backend_;
  backend_ref ref_;
  device queue_;
  rng random_;
  zmq_device_counters counters_;
  std::vector<bool> alive_;
  std::vector<double> load_;
  std::vector<clock::time_point> last_seen_;
  std::unordered_map<std::uint64_t, prompt_state> prompts_;
  std::uint64_t next_prompt_ = 0;
  clock::time_point next_deadline_check_{};
  zmq::socket_t* router_ = nullptr;
  std::vector<std::optional<zmq::socket_t>>* peers_ = nullptr;
  std::mutex outbox_mutex_;
  std::deque<wire::envelope> outbox_;
  std::optional<zmq::socket_t> wake_out_;
};

}  // namespace moa::net
