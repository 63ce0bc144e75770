// SPDX-License-Identifier: MIT
#pragma once

// A one-thread HTTP server on 127.0.0.1 that answers each request with the next scripted reply:
// recorded llama-server bodies (tests/fixtures/openai) under statuses and framings that a healthy
// local server will not produce on demand (429 with Retry-After, 503, a connection cut mid-stream,
// silence), and hostile ones: endless streams, bodies larger than any cap, stalls. It only
// replays bytes; everything else is the real client and libcurl.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <moa/exec/async.hpp>

namespace moa_test {

inline std::string read_fixture(const std::string& name) {
  std::ifstream in(std::string(MOA_OPENAI_FIXTURES) + "/" + name, std::ios::binary);
  if (!in) throw std::runtime_error("missing fixture " + name);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// One scripted answer.
struct reply {
  std::string head{};      // status line and headers, without the blank line
  std::string body{};      // sent after the headers
  std::size_t cut_at = 0;  // > 0: close the connection after this many body bytes
  bool hang = false;       // send nothing; wait until the client goes away or the server stops
  std::chrono::milliseconds delay{0};  // before answering
  std::string repeat{};  // hostile: after the body, send this again and again until the client
                         // goes away (an endless stream, a body larger than any cap)
  bool stall = false;    // hostile: after the body, keep the connection open and say nothing
};

/// A complete answer with Content-Length and Connection: close.
inline reply http(int status, std::string body, std::string headers = {},
                  std::string type = "application/json") {
  std::string head = "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Type: " + type +
                     "\r\nContent-Length: " + std::to_string(body.size()) +
                     "\r\nConnection: close\r\n" + headers;
  return {std::move(head), std::move(body)};
}

/// An event stream framed by the end of the connection (no length), as some servers do.
inline reply sse(std::string body, std::size_t cut_at = 0) {
  return {"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n",
          std::move(body), cut_at};
}

/// An event stream in one HTTP chunk, as llama-server does; `cut_at` breaks the chunk framing.
inline reply chunked_sse(const std::string& body, std::size_t cut_at = 0) {
  std::ostringstream hex;
  hex << std::hex << body.size();
  return {
      "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
      "Connection: close\r\n",
      hex.str() + "\r\n" + body + "\r\n0\r\n\r\n", cut_at};
}

class replay_server {
 public:
  explicit replay_server(std::vector<reply> script) : script_(std::move(script)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(fd_, 128) != 0 || ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len))
      throw std::runtime_error("replay_server: cannot listen on 127.0.0.1");
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  replay_server(const replay_server&) = delete;
  replay_server& operator=(const replay_server&) = delete;
  ~replay_server() {
    stop_.store(true);
    thread_.join();
    ::close(fd_);
  }

  [[nodiscard]] std::string base_url() const {
    return "http://127.0.0.1:" + std::to_string(port_) + "/v1";
  }
  [[nodiscard]] int requests() const { return served_.load(); }
  /// Bytes written to clients so far (what a hostile reply managed to push).
  [[nodiscard]] std::size_t bytes_sent() const { return bytes_sent_.load(); }
  [[nodiscard]] std::string last_request() const {
    std::lock_guard lock(mutex_);
    return last_;
  }

 private:
  bool wait_readable(int fd, int ms) const {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, ms) > 0;
  }

  void serve() {
    while (!stop_.load()) {
      if (!wait_readable(fd_, 20)) continue;
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) continue;
      handle(c);
      ::close(c);
    }
  }

  void handle(int c) {
    // Read the request: headers, then Content-Length bytes (bounded: 100 x 20 ms idle).
    std::string in;
    char buf[4096];
    std::size_t need = std::string::npos;
    for (int idle = 0; idle < 100 && !stop_.load();) {
      if (need != std::string::npos && in.size() >= need) break;
      if (!wait_readable(c, 20)) {
        ++idle;
        continue;
      }
      const auto n = ::recv(c, buf, sizeof buf, 0);
      if (n <= 0) return;
      in.append(buf, static_cast<std::size_t>(n));
      if (need == std::string::npos) {
        const auto end = in.find("\r\n\r\n");
        if (end == std::string::npos) continue;
        std::size_t length = 0;
        const auto cl = in.find("Content-Length: ");
        if (cl != std::string::npos && cl < end) length = std::stoul(in.substr(cl + 16));
        need = end + 4 + length;
      }
    }
    {
      std::lock_guard lock(mutex_);
      last_ = in;
    }
    const auto index = static_cast<std::size_t>(served_.fetch_add(1));
    const reply& r = script_[std::min(index, script_.size() - 1)];
    if (r.delay.count() > 0) std::this_thread::sleep_for(r.delay);
    if (r.hang) {
      // Until the client closes (readable with 0 bytes) or the server stops.
      while (!stop_.load())
        if (wait_readable(c, 20) && ::recv(c, buf, sizeof buf, 0) <= 0) return;
      return;
    }
    std::string out = r.head + "\r\n" + (r.cut_at > 0 ? r.body.substr(0, r.cut_at) : r.body);
    if (!send_all(c, out)) return;
    while (!r.repeat.empty() && !stop_.load())
      if (!send_all(c, r.repeat)) return;
    if (r.stall)
      while (!stop_.load())
        if (wait_readable(c, 20) && ::recv(c, buf, sizeof buf, 0) <= 0) return;
  }

  // False once the client has gone away (or the server stops).
  bool send_all(int c, const std::string& out) {
    std::size_t sent = 0;
    while (sent < out.size()) {
      if (stop_.load()) return false;
      pollfd p{c, POLLOUT, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const auto n = ::send(c, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<std::size_t>(n);
      bytes_sent_.fetch_add(static_cast<std::size_t>(n));
    }
    return true;
  }

  std::vector<reply> script_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> served_{0};
  std::atomic<std::size_t> bytes_sent_{0};
  mutable std::mutex mutex_;
  std::string last_;
  std::thread thread_;
};

// Collects the completions of asynchronous calls started by hand: each call's outcome, how often
// it was completed, and on which thread.
struct completions final : moa::detail::completion_target {
  struct slot {
    std::optional<moa::response> answer{};
    std::exception_ptr error{};
    int times = 0;
    std::thread::id thread{};
  };
  explicit completions(std::size_t n) : slots(n) {}
  void complete(std::uint32_t call, moa::response* r, std::exception_ptr e) noexcept override {
    std::lock_guard lock(mutex);
    auto& s = slots[call];
    if (++s.times == 1) {
      if (r != nullptr)
        s.answer = std::move(*r);
      else
        s.error = std::move(e);
      s.thread = std::this_thread::get_id();
      ++done;
    }
    cv.notify_all();
  }
  void on_deadline() noexcept override {}
  bool wait_all(std::chrono::milliseconds limit) {
    std::unique_lock lock(mutex);
    return cv.wait_for(lock, limit, [&] { return done == slots.size(); });
  }
  std::size_t completed() {
    std::lock_guard lock(mutex);
    return done;
  }
  // Rethrows call i's error (after wait_all). The slot gives its reference up, so that the
  // exception dies on this thread: libstdc++'s exception_ptr counts are invisible to TSan.
  void rethrow(std::size_t i) {
    std::exception_ptr e;
    {
      std::lock_guard lock(mutex);
      e = std::move(slots[i].error);
    }
    if (e) std::rethrow_exception(e);
  }
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<slot> slots;
  std::size_t done = 0;
};

/// Threads of this process now.
inline std::size_t thread_count() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
  return n;
}

}  // namespace moa_test
