// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The client side of the ZeroMQ device network: `zmq_client` sends `submit`, `stats` and `stop`
/// messages to one device and hands each `result` back to whoever asked, and `device_backend`
/// makes a device network a moa backend (a roster model of kind "device", so `moa serve` can
/// serve a whole network as one model and `moa run` can mix one into a layout).
///
/// One I/O thread owns the socket (ZeroMQ sockets are not thread-safe): callers queue their
/// messages under a mutex and wake it through an inproc pair; it sends them, matches results to
/// their tags, and fails the calls whose deadline passes, whose stop token fires, or whose key
/// the device refuses at the handshake (heard on a socket monitor: a refused handshake is not an
/// error of the socket itself). A run waiting on a device therefore holds no thread.
///
/// @code{.cpp}
/// moa::net::zmq_client_options o{.device = "tcp://10.0.0.7:5550",
///                                .keys = moa::net::load_key_pair("client.key"),
///                                .server_key = moa::net::load_public_keys("device0.pub")[0]};
/// moa::net::device_backend network(o, std::chrono::seconds(120));
/// auto r = moa::generate(network, moa::request{.messages = {{moa::role::user, "Hi"}}});
/// @endcode

#include <zmq.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "moa/core/async_backend.hpp"
#include "moa/core/backend.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/net/zmq_security.hpp"
#include "moa/net/zmq_wire.hpp"

namespace moa::net {

/// @brief The device refused this client: its key at the handshake, or a prompt (over capacity,
/// a full queue, stopping). what() says which, in the device's words where it gave any.
class refused_error : public backend_error {
 public:
  using backend_error::backend_error;
};

/// @brief How a client reaches one device.
struct zmq_client_options {
  std::string device{};             ///< the device's endpoint, e.g. tcp://10.0.0.7:5550
  std::optional<key_pair> keys{};   ///< this client's pair (listed in the device's clients)
  std::string server_key{};         ///< the device's public key (Z85)
  bool insecure_plaintext = false;  ///< no keys: plain text, loopback endpoints only
};

/// @brief A connection to one device, shared by any number of threads and calls in flight.
class zmq_client {
 public:
  /// What a call ends with: the device's reply, or why there is none (a refused key, the
  /// deadline, the stop token).
  using handler = std::function<void(wire::envelope* reply, std::exception_ptr error)>;

  /// Checks the options (throws invalid_argument naming what is wrong) and connects.
  explicit zmq_client(zmq_client_options o) : opt_(std::move(o)) {
    const std::string& d = opt_.device;
    if (!(d.rfind("tcp://", 0) == 0 || d.rfind("ipc://", 0) == 0) || d.size() <= 6 ||
        d.size() > 1024)
      MOA_THROW(invalid_argument("device endpoint '" + d.substr(0, 64) +
                                 "' is not tcp://HOST:PORT or ipc://PATH"));
    if (opt_.insecure_plaintext) {
      if (opt_.keys || !opt_.server_key.empty())
        MOA_THROW(invalid_argument("keys and plain text at once; give one"));
      if (!is_loopback_endpoint(d))
        MOA_THROW(invalid_argument("plain text is for loopback only, and '" + d.substr(0, 64) +
                                   "' is not a loopback endpoint; give keys"));
    } else {
      if (!opt_.keys || opt_.server_key.empty())
        MOA_THROW(invalid_argument(
            "a client needs its key pair and the device's public key (or plain text on "
            "loopback, asked for explicitly)"));
      if (!is_z85_key(opt_.server_key))
        MOA_THROW(invalid_argument("the device's public key is not a Z85 key"));
      detail::require_curve();
    }
    sock_.set(zmq::sockopt::linger, 0);
    sock_.set(zmq::sockopt::maxmsgsize, std::int64_t(64) << 20);  // a result is at most this
    if (opt_.keys) curve_client(sock_, *opt_.keys, opt_.server_key);
    static std::atomic<std::uint64_t> instances{0};
    const std::string id = std::to_string(instances.fetch_add(1));
    const std::string monitor_address = "inproc://moa-client-monitor-" + id;
    if (zmq_socket_monitor(sock_.handle(), monitor_address.c_str(),
                           ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) != 0)
      MOA_THROW(error("zmq_client: cannot monitor the socket"));
    monitor_.set(zmq::sockopt::linger, 0);
    monitor_.connect(monitor_address);
    const std::string wake_address = "inproc://moa-client-wake-" + id;
    wake_in_.bind(wake_address);
    wake_out_.connect(wake_address);
    try {
      sock_.connect(d);
    } catch (const zmq::error_t& e) {
      MOA_THROW(
          invalid_argument("ZeroMQ refused the endpoint '" + d.substr(0, 64) + "': " + e.what()));
    }
    io_ = std::jthread([this](std::stop_token st) { loop(st); });
  }

  zmq_client(const zmq_client&) = delete;
  zmq_client& operator=(const zmq_client&) = delete;

  /// Calls still waiting end with cancelled_error; the I/O thread is joined.
  ~zmq_client() {
    io_.request_stop();
    wake();
    io_.join();
    (void)zmq_socket_monitor(sock_.handle(), nullptr, 0);
  }

  [[nodiscard]] const std::string& device() const noexcept { return opt_.device; }

  /// Sends `message` and calls `done` once, on the I/O thread, with the device's reply or the
  /// error that ended the wait. A submit gets a tag of the client's own; a device answers
  /// `stats` and `stop` under those names, so one of each may be in flight at a time (another
  /// ends at once with invalid_argument).
  void send(wire::envelope message, clock::time_point deadline, std::stop_token stop,
            handler done) {
    {
      const std::lock_guard lock(mutex_);
      message.tag = message.type == wire::kind::submit ? "c" + std::to_string(++tags_)
                                                       : std::string(wire::to_string(message.type));
      queued_.push_back({std::move(message), {deadline, std::move(stop), std::move(done)}});
    }
    wake();
  }

  /// send(), waiting for the reply: the envelope, or the error rethrown.
  wire::envelope call(wire::envelope message, clock::time_point deadline,
                      std::stop_token stop = {}) {
    // Both ends travel by set_value, which moves them: promise::set_exception would copy the
    // exception_ptr and drop the I/O thread's copy after the caller woke (a reference count
    // ThreadSanitizer cannot see through the uninstrumented libstdc++).
    struct ending {
      std::optional<wire::envelope> reply;
      std::exception_ptr error;
    };
    // Shared: the I/O thread may still be inside set_value when this caller has woken and left.
    auto p = std::make_shared<std::promise<ending>>();
    auto f = p->get_future();
    send(std::move(message), deadline, std::move(stop),
         [p](wire::envelope* reply, std::exception_ptr e) {
           ending end;
           if (reply != nullptr)
             end.reply = std::move(*reply);
           else
             end.error = std::move(e);
           p->set_value(std::move(end));
         });
    ending end = f.get();
    if (end.error) std::rethrow_exception(std::move(end.error));
    return std::move(*end.reply);
  }

 private:
  struct waiter {
    clock::time_point deadline;
    std::stop_token stop;
    handler done;
  };

  void wake() {
    const std::lock_guard lock(wake_mutex_);
    (void)wake_out_.send(zmq::message_t(), zmq::send_flags::dontwait);
  }

  static void finish(waiter& w, wire::envelope* reply, std::exception_ptr e) noexcept {
    try {
      w.done(reply, std::move(e));
    } catch (...) {  // a handler that throws must not take the I/O thread down
    }
  }

  // The exception is built here, so the temporary it was copied from (whose message string
  // shares a reference count with the copy) is gone before any caller can wake; built inline
  // in finish's argument list, it would die after the handler ran, and its release would race,
  // as ThreadSanitizer sees it, with the woken caller reading the message.
  template <class Error>
  static std::exception_ptr error_of(std::string message) {
    return std::make_exception_ptr(Error(std::move(message)));
  }

  // One exception object per call: none is shared between the callers' threads.
  template <class MakeError>
  void fail_all(const MakeError& make) {
    for (auto& [tag, w] : pending_) finish(w, nullptr, make());
    pending_.clear();
  }

  void loop(const std::stop_token& st) {
    while (!st.stop_requested()) {
      zmq::pollitem_t items[] = {{sock_.handle(), 0, ZMQ_POLLIN, 0},
                                 {monitor_.handle(), 0, ZMQ_POLLIN, 0},
                                 {wake_in_.handle(), 0, ZMQ_POLLIN, 0}};
      // Deadlines and stop tokens are checked at least every 20 ms.
      zmq::poll(items, 3, std::chrono::milliseconds(pending_.empty() ? 200 : 20));
      zmq::message_t m;
      while (wake_in_.recv(m, zmq::recv_flags::dontwait)) {
      }
      std::vector<std::pair<wire::envelope, waiter>> batch;
      {
        const std::lock_guard lock(mutex_);
        batch.swap(queued_);
      }
      for (auto& [e, w] : batch) {
        if (pending_.count(e.tag)) {
          finish(w, nullptr,
                 error_of<invalid_argument>("a " + e.tag + " request to " + opt_.device +
                                            " is already in flight"));
          continue;
        }
        (void)sock_.send(zmq::buffer(wire::encode(e)), zmq::send_flags::dontwait);
        pending_.emplace(e.tag, std::move(w));
      }
      while (sock_.recv(m, zmq::recv_flags::dontwait)) {
        // A device is trusted no more than a peer: decode validates every field, and a reply
        // to a tag nobody waits for (late, or invented) is dropped.
        auto d = wire::decode(m.to_string_view());
        if (!d.message || d.message->type != wire::kind::result) continue;
        const auto it = pending_.find(d.message->tag);
        if (it == pending_.end()) continue;
        finish(it->second, &*d.message, nullptr);
        pending_.erase(it);
      }
      while (monitor_.recv(m, zmq::recv_flags::dontwait)) {
        zmq::message_t address;
        if (m.more()) (void)monitor_.recv(address, zmq::recv_flags::dontwait);
        if (m.size() < 6) continue;
        std::uint16_t event = 0;
        std::uint32_t value = 0;
        std::memcpy(&event, m.data(), 2);
        std::memcpy(&value, static_cast<const char*>(m.data()) + 2, 4);
        if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
          fail_all([&] {
            return error_of<refused_error>(opt_.device + " refused this client's key (ZAP status " +
                                           std::to_string(value) +
                                           "): it is not in the device's clients");
          });
        else
          handshake_ = "the handshake failed (a plain-text device, or keys that do not match)";
      }
      const auto now = clock::now();
      for (auto it = pending_.begin(); it != pending_.end();) {
        if (it->second.stop.stop_requested()) {
          finish(it->second, nullptr,
                 error_of<cancelled_error>("the call to " + opt_.device + " was cancelled"));
        } else if (now >= it->second.deadline) {
          finish(it->second, nullptr,
                 error_of<timeout_error>(opt_.device + " did not answer in time (unreachable" +
                                         (handshake_.empty() ? std::string() : "; " + handshake_) +
                                         ")"));
        } else {
          ++it;
          continue;
        }
        it = pending_.erase(it);
      }
    }
    std::vector<std::pair<wire::envelope, waiter>> batch;
    {
      const std::lock_guard lock(mutex_);
      batch.swap(queued_);
    }
    for (auto& [e, w] : batch) pending_.emplace(e.tag, std::move(w));
    fail_all([&] { return error_of<cancelled_error>("the client of " + opt_.device + " closed"); });
  }

  zmq_client_options opt_;
  zmq::context_t ctx_{1};
  zmq::socket_t sock_{ctx_, zmq::socket_type::dealer};
  zmq::socket_t monitor_{ctx_, zmq::socket_type::pair};
  zmq::socket_t wake_in_{ctx_, zmq::socket_type::pair};
  zmq::socket_t wake_out_{ctx_, zmq::socket_type::pair};
  std::mutex wake_mutex_;  // wake_out_ is used by every caller's thread
  std::mutex mutex_;       // queued_, tags_
  std::vector<std::pair<wire::envelope, waiter>> queued_;
  std::uint64_t tags_ = 0;
  // The I/O thread's own:
  std::map<std::string, waiter> pending_;
  std::string handshake_;
  std::jthread io_;  // last: started once everything above exists, joined first
};

/// @brief The answer of a device's result, or the typed error it stands for: refused_error for
/// a refusal, backend_error for a failed prompt. A degraded result (some calls missing) answers:
/// the device's aggregator saw what arrived, as the device network defines it.
inline response response_of(const wire::envelope& r, const std::string& device) {
  if (r.error.rfind("refused", 0) == 0) MOA_THROW(refused_error(device + ": " + r.error));
  if (r.text.empty())
    MOA_THROW(backend_error(
        device + ": the prompt failed: " + (r.error.empty() ? std::string("no answer") : r.error)));
  response out;
  out.text = r.text;
  out.timings.generation = std::chrono::duration_cast<std::chrono::nanoseconds>(
      std::chrono::duration<double, std::milli>(r.latency_ms));
  return out;
}

/// @brief A device network as one backend: each call is a prompt submitted to the device (its
/// origin), which runs the gossip MoA and returns the aggregated answer. Synchronous and
/// asynchronous; thread-safe. Usage is not reported (the result carries none).
class device_backend {
 public:
  /// `timeout`: how long a call waits when its request has no earlier deadline; `name`: what
  /// traces call it (empty: "device ENDPOINT").
  device_backend(zmq_client_options o, clock::duration timeout, std::string name = {})
      : client_(std::make_shared<zmq_client>(std::move(o))),
        timeout_(timeout),
        name_(name.empty() ? "device " + client_->device() : std::move(name)) {
    if (timeout <= clock::duration::zero())
      MOA_THROW(invalid_argument("device_backend: the timeout must be positive"));
  }

  [[nodiscard]] const std::string& name() const noexcept { return name_; }

  response generate(const request& r) {
    auto reply = client_->call(submission(r), deadline(r), r.stop);
    return response_of(reply, client_->device());
  }

  void generate_async(const request& r, completion done) {
    client_->send(submission(r), deadline(r), r.stop,
                  [done, device = client_->device()](wire::envelope* reply, std::exception_ptr e) {
                    if (reply == nullptr) return done.fail(std::move(e));
                    try {
                      done(response_of(*reply, device));
                    } catch (...) {
                      done.fail(std::current_exception());
                    }
                  });
  }

 private:
  static wire::envelope submission(const request& r) {
    wire::envelope e;
    e.type = wire::kind::submit;
    e.messages = r.messages;
    return e;
  }
  [[nodiscard]] clock::time_point deadline(const request& r) const {
    const auto own = clock::now() + timeout_;
    return r.deadline < own ? r.deadline : own;
  }

  std::shared_ptr<zmq_client> client_;  // shared: copies of the backend share one connection
  clock::duration timeout_;
  std::string name_;
};

}  // namespace moa::net
