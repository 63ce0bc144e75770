// SPDX-License-Identifier: MIT
// libFuzzer target: the ZeroMQ network's message decoder on arbitrary bytes. It must never crash,
// throw or leak; what it accepts must encode and decode again to the same message.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "moa/net/zmq_wire.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const auto d = moa::net::wire::decode(bytes);
  if (d.message) {
    const auto again = moa::net::wire::decode(moa::net::wire::encode(*d.message));
    if (!again.message || again.message->type != d.message->type ||
        again.message->messages != d.message->messages)
      __builtin_trap();
  } else if (d.error.empty()) {
    __builtin_trap();  // a rejection always says why
  }
  return 0;
}
