// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Who may talk to a ZeroMQ device, with ZeroMQ's own CURVE (libzmq built with libsodium, as
/// Debian's is): every connection is encrypted and authenticated, and a peer's identity is its
/// public key, never the routing id it chose.
///
/// - Each device has a key pair (moa keygen writes NAME.key, the secret, mode 0600, and NAME.pub).
/// - The network is an allow-list of device public keys, by device index; separately, the client
///   keys allowed to submit prompts, read stats and stop a device.
/// - A device's ROUTER is a CURVE server; a ZAP handler (RFC 27, on `inproc://zeromq.zap.01` in
///   the device's context, on a thread of its own) accepts a handshake only from a listed key and
///   names the peer in its user id: `d<index>` for a device, `client` for a client. Every message
///   then carries that user id (its `User-Id` property), which the device checks against the
///   index the message claims. A handshake from any other key is refused and counted.
/// - A device's DEALERs are CURVE clients that know their peer's public key: a device only talks
///   to the peer holding the listed key, so binding a peer's address is not enough to receive its
///   calls.
/// - Plain text (ZeroMQ's NULL mechanism, identity by routing id) only when asked for explicitly,
///   and only on loopback endpoints (tcp://127.0.0.1, localhost, [::1]; ipc://; inproc://).
///
/// Key files hold one Z85 key (40 characters) per line; a line starting with `#` is a comment. A
/// public key file may hold many keys (an allow-list); a secret key file holds one, and is refused
/// when group or others may read it.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include <zmq.hpp>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "moa/core/error.hpp"

namespace moa::net {

/// @brief A CURVE key pair, both halves in Z85 (40 characters each).
struct key_pair {
  std::string public_key;
  std::string secret_key;
};

/// True when this libzmq can do CURVE (it was built with libsodium or tweetnacl).
inline bool curve_available() noexcept {
  return zmq_has("curve") != 0;
}

/// True when `key` is a Z85-encoded 32-byte key.
inline bool is_z85_key(std::string_view key) {
  if (key.size() != 40) return false;
  static constexpr std::string_view alphabet =
      "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
  for (char c : key)
    if (alphabet.find(c) == std::string_view::npos) return false;
  std::uint8_t raw[32];
  const std::string text(key);
  return zmq_z85_decode(raw, text.c_str()) != nullptr;
}

namespace detail {

[[noreturn]] inline void key_error(const std::string& what) {
  MOA_THROW(invalid_argument("moa::net: " + what));
}

inline void require_curve() {
  if (!curve_available())
    key_error(
        "this libzmq has no CURVE support (built without libsodium); use a libzmq built with it "
        "(Debian's is), or --insecure-plaintext on loopback");
}

// The keys of a key file: one Z85 key per line, blank lines and # comments skipped. A file is
// small: anything over 1 MiB is refused before it is read.
inline std::vector<std::string> read_keys(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    key_error("key file '" + path.string() + "' is missing or not a regular file");
  const auto size = std::filesystem::file_size(path, ec);
  if (ec || size > (std::uintmax_t(1) << 20))
    key_error("key file '" + path.string() + "' is larger than 1 MiB");
  std::ifstream in(path, std::ios::binary);
  if (!in) key_error("cannot read key file '" + path.string() + "' (no permission)");
  std::vector<std::string> keys;
  std::string line;
  for (std::size_t number = 1; std::getline(in, line); ++number) {
    // '#' is a Z85 digit: a comment is a whole line.
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    const auto last = line.find_last_not_of(" \t\r");
    line = line.substr(first, last - first + 1);
    if (!is_z85_key(line))
      key_error("key file '" + path.string() + "', line " + std::to_string(number) +
                ": not a Z85 CURVE key (40 characters, as moa keygen writes)");
    keys.push_back(line);
  }
  return keys;
}

// Creates `path` with `mode` and writes `text`; never replaces an existing file.
inline void write_new_file(const std::filesystem::path& path, const std::string& text,
                           mode_t mode) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0)
    key_error(errno == EEXIST ? "'" + path.string() + "' exists; moa keygen does not overwrite"
                              : "cannot create '" + path.string() + "': " + std::strerror(errno));
  // The umask may have taken bits away, never added: set exactly what is asked.
  bool ok = ::fchmod(fd, mode) == 0;
  for (std::size_t done = 0; ok && done < text.size();) {
    const auto n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) done += std::size_t(n);
  }
  ok = ::close(fd) == 0 && ok;
  if (!ok) {
    std::error_code ec;
    std::filesystem::remove(path, ec);
    key_error("writing '" + path.string() + "' failed");
  }
}

}  // namespace detail

/// A fresh key pair from libzmq (libsodium's random source).
inline key_pair generate_key_pair() {
  detail::require_curve();
  char pub[41], sec[41];
  if (zmq_curve_keypair(pub, sec) != 0) detail::key_error("zmq_curve_keypair failed");
  return {pub, sec};
}

/// The public half of a Z85 secret key.
inline std::string public_key_of(const std::string& secret) {
  detail::require_curve();
  char pub[41];
  if (!is_z85_key(secret) || zmq_curve_public(pub, secret.c_str()) != 0)
    detail::key_error("not a Z85 CURVE secret key");
  return pub;
}

/// Writes `base`.key (the secret, mode 0600) and `base`.pub (the public key, 0644); refuses to
/// replace either file. Returns the two paths.
inline std::pair<std::filesystem::path, std::filesystem::path> save_key_pair(
    const std::filesystem::path& base, const key_pair& keys) {
  auto secret = base, pub = base;
  secret += ".key";
  pub += ".pub";
  std::error_code ec;
  if (std::filesystem::exists(pub, ec))
    detail::key_error("'" + pub.string() + "' exists; moa keygen does not overwrite");
  detail::write_new_file(
      secret,
      "# moa CURVE secret key: keep it on this device only (mode 0600)\n" + keys.secret_key + "\n",
      0600);
  try {
    detail::write_new_file(pub, "# moa CURVE public key\n" + keys.public_key + "\n", 0644);
  } catch (...) {
    std::filesystem::remove(secret, ec);  // a half pair is no pair
    throw;
  }
  return {secret, pub};
}

/// Reads a secret key file: a regular file that only its owner may read (mode 0600 or
/// stricter), holding one key. Returns the pair (the public half derived from the secret).
inline key_pair load_key_pair(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    detail::key_error("secret key file '" + path.string() + "' is missing or not a regular file");
  if ((st.st_mode & 077) != 0)
    detail::key_error("secret key file '" + path.string() +
                      "' may be read by group or others; chmod 600 it (moa keygen writes 0600)");
  const auto keys = detail::read_keys(path);
  if (keys.size() != 1)
    detail::key_error("secret key file '" + path.string() + "' holds " +
                      std::to_string(keys.size()) + " keys; it must hold one");
  return {public_key_of(keys[0]), keys[0]};
}

/// Reads the public keys of a file (NAME.pub, or an allow-list: one key per line).
inline std::vector<std::string> load_public_keys(const std::filesystem::path& path) {
  auto keys = detail::read_keys(path);
  if (keys.empty()) detail::key_error("key file '" + path.string() + "' holds no key");
  return keys;
}

/// @brief How a device proves who it is and whom it accepts.
struct zmq_security {
  std::optional<key_pair> keys{};        ///< this device's; empty: plain text
  std::vector<std::string> device_keys;  ///< every device's public key, by index (this one too)
  std::vector<std::string> client_keys;  ///< clients that may submit, read stats and stop
  /// Plain text: no encryption, identity by routing id. Only on loopback, and only when asked.
  bool insecure_plaintext = false;
  [[nodiscard]] bool secure() const noexcept { return keys.has_value(); }
};

/// True for an endpoint only this machine can reach: ipc://, inproc://, or tcp:// on
/// 127.0.0.0/8, localhost or [::1].
inline bool is_loopback_endpoint(std::string_view endpoint) {
  if (endpoint.rfind("ipc://", 0) == 0 || endpoint.rfind("inproc://", 0) == 0) return true;
  if (endpoint.rfind("tcp://", 0) != 0) return false;
  auto rest = endpoint.substr(6);
  const auto colon = rest.rfind(':');
  if (colon == std::string_view::npos) return false;
  const auto host = rest.substr(0, colon);
  if (host == "localhost" || host == "[::1]") return true;
  if (host.rfind("127.", 0) != 0) return false;
  int dots = 0;
  for (char c : host) {
    if (c == '.')
      ++dots;
    else if (c < '0' || c > '9')
      return false;
  }
  return dots == 3;
}

/// Checks a device's security against its network: throws invalid_argument naming what is wrong.
inline void check_security(const zmq_security& s, const std::vector<std::string>& addresses,
                           std::uint32_t index, const std::string& bind) {
  if (s.insecure_plaintext) {
    if (s.secure())
      detail::key_error("a key pair and plain text at once; give one (keys, or plain text)");
    std::vector<std::string> endpoints(addresses);
    if (!bind.empty()) endpoints.push_back(bind);
    for (const auto& e : endpoints)
      if (!is_loopback_endpoint(e))
        detail::key_error("plain text is for loopback only, and '" + e.substr(0, 64) +
                          "' is not a loopback endpoint; give keys (moa keygen) to run across "
                          "hosts");
    return;
  }
  if (!s.secure())
    detail::key_error(
        "no key pair: give this device's key (moa keygen) and every device's public key, or ask "
        "for plain text explicitly (insecure_plaintext, loopback only)");
  detail::require_curve();
  if (s.device_keys.size() != addresses.size())
    detail::key_error(std::to_string(s.device_keys.size()) + " device public keys for " +
                      std::to_string(addresses.size()) +
                      " devices; give one per device, in the order of the addresses");
  std::unordered_map<std::string, std::string> seen;
  for (std::size_t j = 0; j < s.device_keys.size(); ++j) {
    if (!is_z85_key(s.device_keys[j]))
      detail::key_error("device " + std::to_string(j) + "'s public key is not a Z85 key");
    if (!seen.emplace(s.device_keys[j], "device " + std::to_string(j)).second)
      detail::key_error("device " + std::to_string(j) + "'s public key is also " +
                        seen[s.device_keys[j]] + "'s; every device needs a key of its own");
  }
  if (s.device_keys[index] != s.keys->public_key)
    detail::key_error("this device's key pair is not the one listed for device " +
                      std::to_string(index) + " (its public key differs)");
  for (const auto& c : s.client_keys) {
    if (!is_z85_key(c)) detail::key_error("a client public key is not a Z85 key");
    const auto it = seen.find(c);
    if (it != seen.end() && it->second != "a client")
      detail::key_error("a client key is also " + it->second +
                        "'s; a device and a client need keys of their own");
    seen.emplace(c, "a client");
  }
}

/// Makes `s` a CURVE server with this key pair, authenticated by the ZAP handler.
inline void curve_server(zmq::socket_t& s, const key_pair& own) {
  s.set(zmq::sockopt::curve_server, true);
  s.set(zmq::sockopt::curve_secretkey, own.secret_key);
  s.set(zmq::sockopt::zap_domain, "moa");
}

/// Makes `s` a CURVE client of the server holding `server_public`.
inline void curve_client(zmq::socket_t& s, const key_pair& own, const std::string& server_public) {
  s.set(zmq::sockopt::curve_serverkey, server_public);
  s.set(zmq::sockopt::curve_publickey, own.public_key);
  s.set(zmq::sockopt::curve_secretkey, own.secret_key);
}

/// The user id the ZAP handler gives a client's key (a device's is `d<index>`).
inline constexpr std::string_view client_user = "client";

/// The identity ZeroMQ proved for a received message: its `User-Id` property (set by the ZAP
/// handler), or empty when the connection was not authenticated.
inline std::string user_id_of(zmq::message_t& m) {
  const char* user = zmq_msg_gets(m.handle(), "User-Id");
  return user == nullptr ? std::string() : std::string(user);
}

/// @brief The ZAP handler of one ZeroMQ context: a thread answering the handshakes of its CURVE
/// servers from the allow-lists. Construct it before any server socket binds; destroy it before
/// the context.
class zap_handler {
 public:
  zap_handler(zmq::context_t& ctx, const zmq_security& s) : socket_(ctx, zmq::socket_type::rep) {
    for (std::size_t j = 0; j < s.device_keys.size(); ++j)
      users_.emplace(s.device_keys[j], "d" + std::to_string(j));
    for (const auto& c : s.client_keys) users_.emplace(c, std::string(client_user));
    socket_.set(zmq::sockopt::linger, 0);
    socket_.bind("inproc://zeromq.zap.01");
    // The socket moves to the thread (starting it is the memory barrier ZeroMQ asks for).
    thread_ = std::jthread([this](std::stop_token st) { serve(st); });
  }
  zap_handler(const zap_handler&) = delete;
  zap_handler& operator=(const zap_handler&) = delete;
  ~zap_handler() {
    thread_.request_stop();
    thread_.join();
  }

  /// Handshakes refused: keys not in the allow-lists, or requests that are not CURVE.
  [[nodiscard]] std::uint64_t denied() const noexcept {
    return denied_.load(std::memory_order_relaxed);
  }
  [[nodiscard]] std::uint64_t accepted() const noexcept {
    return accepted_.load(std::memory_order_relaxed);
  }

 private:
  void serve(std::stop_token st) {
    while (!st.stop_requested()) {
      zmq::pollitem_t items[] = {{socket_.handle(), 0, ZMQ_POLLIN, 0}};
      try {
        zmq::poll(items, 1, std::chrono::milliseconds(20));
      } catch (const zmq::error_t& e) {
        if (e.num() == ETERM) break;
        continue;  // EINTR
      }
      if (!(items[0].revents & ZMQ_POLLIN)) continue;
      try {
        answer();
      } catch (const zmq::error_t& e) {  // the context is ending; nothing else can fail here
        if (e.num() == ETERM) break;
      }
    }
    socket_.close();
  }

  // One request (RFC 27): version, request id, domain, address, routing id, mechanism, then the
  // mechanism's credentials (CURVE: the client's 32-byte public key). Always one reply: a REP
  // socket that does not answer cannot receive again.
  void answer() {
    std::vector<zmq::message_t> frames;
    for (;;) {
      zmq::message_t m;
      if (!socket_.recv(m, zmq::recv_flags::dontwait)) break;
      const bool more = m.more();
      if (frames.size() < 8) frames.push_back(std::move(m));
      if (!more) break;
    }
    std::string user, status = "400", text = "key not allowed";
    if (frames.size() == 7 && frames[5].to_string_view() == "CURVE" && frames[6].size() == 32) {
      char z85[41];
      if (zmq_z85_encode(z85, static_cast<const std::uint8_t*>(frames[6].data()), 32) != nullptr) {
        const auto it = users_.find(z85);
        if (it != users_.end()) {
          user = it->second;
          status = "200";
          text = "OK";
        }
      }
    } else {
      text = "only CURVE is accepted";
    }
    (status == "200" ? accepted_ : denied_).fetch_add(1, std::memory_order_relaxed);
    const std::string version = "1.0";
    const std::string id = frames.size() > 1 ? frames[1].to_string() : std::string();
    socket_.send(zmq::buffer(version), zmq::send_flags::sndmore);
    socket_.send(zmq::buffer(id), zmq::send_flags::sndmore);
    socket_.send(zmq::buffer(status), zmq::send_flags::sndmore);
    socket_.send(zmq::buffer(text), zmq::send_flags::sndmore);
    socket_.send(zmq::buffer(user), zmq::send_flags::sndmore);
    socket_.send(zmq::const_buffer{}, zmq::send_flags::none);
  }

  zmq::socket_t socket_;
  std::unordered_map<std::string, std::string> users_;  // public key (Z85) -> user id
  std::atomic<std::uint64_t> denied_{0}, accepted_{0};
  std::jthread thread_;
};

}  // namespace moa::net
