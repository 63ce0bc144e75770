// SPDX-License-Identifier: MIT
// moa::net: the ZeroMQ headers link (libzmq, nlohmann-json): an envelope crosses an inproc pair,
// and a device network's client gives up on a device nobody serves.
#include <moa/net/zmq_client.hpp>
#include <moa/net/zmq_device.hpp>
#include <moa/net/zmq_wire.hpp>

#include <chrono>

#include <iostream>
#include <string>

int main() {
  zmq::context_t ctx;
  zmq::socket_t a(ctx, zmq::socket_type::pair), b(ctx, zmq::socket_type::pair);
  a.bind("inproc://consumer");
  b.connect("inproc://consumer");
  moa::net::wire::envelope e;
  e.type = moa::net::wire::kind::answer;
  e.text = "forty-two";
  const std::string bytes = moa::net::wire::encode(e);
  a.send(zmq::buffer(bytes), zmq::send_flags::none);
  zmq::message_t got;
  if (!b.recv(got)) return 1;
  const auto d = moa::net::wire::decode(got.to_string_view());
  if (!d.message || d.message->text != "forty-two") return 1;
  moa::net::device_backend nobody(
      {.device = "ipc:///tmp/moa-consumer-nobody", .insecure_plaintext = true},
      std::chrono::milliseconds(50));
  try {
    (void)moa::generate(nobody, moa::request{.messages = {{moa::role::user, "hi"}}});
    return 1;
  } catch (const moa::timeout_error&) {
  }
  std::cout << "net: envelope round trip, client timed out\n";
  return 0;
}
