// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// A small HTTP endpoint for an operator's GETs (metrics, health) on its own thread, Boost.Beast,
/// and the listening socket setup it shares with moa::serve::openai_server. `moa device
/// --metrics` serves a device's GET /metrics and GET /health with it.
///
/// Bounded: requests have no body (a request line and headers of at most 8 KiB; more, or a body,
/// is answered 431 or 413), each connection gets one answer within a 5 s deadline and is closed,
/// and the handler is called on the endpoint's thread only: it must read a thread-safe snapshot.
///
/// @code{.cpp}
/// moa::serve::status_endpoint http("127.0.0.1", 9100, [&](std::string_view target) {
///   return moa::serve::status_endpoint::reply{200, "text/plain", "ok\n"};
/// });
/// http.start();  // throws moa::error when it cannot listen; port() is the port bound
/// @endcode

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "moa/core/error.hpp"

namespace moa::serve {

namespace detail {

/// Opens, binds and listens `acceptor` on host:port; throws moa::error naming `who` and why.
/// The host must be an IP address (a name would resolve to who knows which interface).
inline void listen_on(boost::asio::ip::tcp::acceptor& acceptor, const std::string& host,
                      std::uint16_t port, const std::string& who) {
  boost::system::error_code ec;
  const auto address = boost::asio::ip::make_address(host, ec);
  if (ec) MOA_THROW(invalid_argument(who + ": \"" + host + "\" is not an IP address"));
  const boost::asio::ip::tcp::endpoint ep(address, port);
  acceptor.open(ep.protocol(), ec);
  if (!ec) acceptor.set_option(boost::asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(ep, ec);
  if (!ec) acceptor.listen(boost::asio::socket_base::max_listen_connections, ec);
  if (ec)
    MOA_THROW(error(who + ": cannot listen on " + host + ":" + std::to_string(port) + ": " +
                    ec.message()));
}

}  // namespace detail

/// @brief GET-only HTTP endpoint on its own thread (see the file comment).
class status_endpoint {
  using tcp = boost::asio::ip::tcp;

 public:
  struct reply {
    unsigned status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body{};
  };
  /// Called with the request target of each GET, on the endpoint's thread.
  using handler = std::function<reply(std::string_view target)>;

  static constexpr std::uint32_t max_header_bytes = 8 * 1024;

  status_endpoint(std::string host, std::uint16_t port, handler h)
      : host_(std::move(host)), port_(port), handler_(std::move(h)), acceptor_(io_) {}
  status_endpoint(const status_endpoint&) = delete;
  status_endpoint& operator=(const status_endpoint&) = delete;
  ~status_endpoint() { stop(); }

  /// Listens (throws moa::error when it cannot), then serves on its own thread.
  void start() {
    detail::listen_on(acceptor_, host_, port_, "metrics endpoint");
    port_ = acceptor_.local_endpoint().port();
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  /// The port bound (after start()).
  [[nodiscard]] std::uint16_t port() const noexcept { return port_; }

  /// Stops serving and joins the thread; idempotent.
  void stop() {
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }

 private:
  class session : public std::enable_shared_from_this<session> {
   public:
    session(status_endpoint& e, tcp::socket s) : endpoint_(e), stream_(std::move(s)) {
      parser_.header_limit(max_header_bytes);
      parser_.body_limit(0);
    }
    void start() {
      stream_.expires_after(std::chrono::seconds(5));
      boost::beast::http::async_read(
          stream_, buffer_, parser_,
          [self = shared_from_this()](boost::beast::error_code ec, std::size_t) {
            self->on_read(ec);
          });
    }

   private:
    void on_read(boost::beast::error_code ec) {
      namespace http = boost::beast::http;
      reply r;
      if (ec == http::error::header_limit) {
        r = {431, "text/plain; charset=utf-8", "request headers over 8 KiB\n"};
      } else if (ec == http::error::body_limit || ec == http::error::unexpected_body) {
        r = {413, "text/plain; charset=utf-8", "a request body: only GET with no body is served\n"};
      } else if (ec) {
        return;  // closed, timed out or garbled: nothing to answer
      } else if (parser_.get().method() != http::verb::get) {
        r = {405, "text/plain; charset=utf-8", "only GET is served here\n"};
      } else {
        const auto target = parser_.get().target();
        r = endpoint_.handler_(std::string_view(target.data(), target.size()));
      }
      response_.version(11);
      response_.result(r.status);
      response_.set(http::field::content_type, r.content_type);
      response_.set(http::field::connection, "close");
      response_.body() = std::move(r.body);
      response_.prepare_payload();
      http::async_write(stream_, response_,
                        [self = shared_from_this()](boost::beast::error_code, std::size_t) {
                          boost::beast::error_code ignored;
                          self->stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
                        });
    }

    status_endpoint& endpoint_;
    boost::beast::tcp_stream stream_;
    boost::beast::flat_buffer buffer_;
    boost::beast::http::request_parser<boost::beast::http::empty_body> parser_;
    boost::beast::http::response<boost::beast::http::string_body> response_;
  };

  void accept() {
    acceptor_.async_accept(io_, [this](boost::system::error_code ec, tcp::socket socket) {
      if (ec) return;  // stopped
      std::make_shared<session>(*this, std::move(socket))->start();
      accept();
    });
  }

  std::string host_;
  std::uint16_t port_;
  handler handler_;
  boost::asio::io_context io_;
  tcp::acceptor acceptor_;
  std::thread thread_;
};

}  // namespace moa::serve
