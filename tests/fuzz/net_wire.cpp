// SPDX-License-Identifier: MIT
// libFuzzer target: the ZeroMQ network's messages on arbitrary bytes, two ways.
//  - The decoder: it must never crash, throw or leak; what it accepts must encode and decode
//    again to the same message.
//  - The whole message handler of a device (moa::net::zmq_device::handle): the first byte picks
//    the sender's identity (a peer's, its own, a client's) and the device (a plain-text one, or a
//    keyed one, where it is the identity a key proved); the rest is the message, as raw
//    bytes (odd first byte) or as an envelope whose every field the bytes choose, encoded (so
//    well-formed messages with hostile ids, origins, layers and counts reach the handler). No
//    message may crash the device or touch memory out of range. A third device runs the adaptive
//    layout policy, so gossiped estimates (origin_rate, service_ms) reach its checks and
//    submits its admission control.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "moa/backends/synthetic.hpp"
#include "moa/gossip/strategies.hpp"
#include "moa/net/adaptive.hpp"
#include "moa/net/zmq_device.hpp"
#include "moa/net/zmq_security.hpp"
#include "moa/net/zmq_wire.hpp"

namespace {

using device = moa::net::zmq_device<moa::uniform_gossip>;

// One device of 4, never run: what it would send goes nowhere, what it queues stays bounded
// (its queue holds 8 calls; it holds 16 prompts). Plain text, or keyed (fresh keys), or plain
// text with the adaptive policy.
device& the_device(bool keyed, bool adaptive) {
  static const auto make = [](bool with_keys, bool with_policy) {
    moa::net::zmq_device_options opt;
    opt.index = 1;
    opt.addresses = {"inproc://f0", "inproc://f1", "inproc://f2", "inproc://f3"};
    opt.layers = 2;
    opt.log = nullptr;
    opt.device.capacity = 8;
    opt.max_prompts = 16;
    opt.max_calls_per_origin = 4;
    opt.security.insecure_plaintext = !with_keys;
    if (with_policy) {
      moa::queueing::adaptive_config cfg;
      cfg.prior_service = {1.0, 2.0, 3.0, 4.0};
      cfg.allowed = {{3, 3}, {2, 2}, {1, 0}};
      cfg.warmup_arrivals = 2;
      cfg.devices = 4;
      opt.adaptive = moa::net::adaptive_origin(cfg, 1);
    }
    if (with_keys) {
      std::vector<moa::net::key_pair> keys;
      for (int i = 0; i < 4; ++i) keys.push_back(moa::net::generate_key_pair());
      opt.security.keys = keys[1];
      for (const auto& k : keys) opt.security.device_keys.push_back(k.public_key);
      opt.security.client_keys = {moa::net::generate_key_pair().public_key};
    }
    return std::make_unique<device>(moa::any_backend(moa::synthetic_backend({.name = "d1"})),
                                    moa::uniform_gossip{2}, opt);
  };
  static const auto plain = make(false, false), with_keys = make(true, false),
                    with_policy = make(false, true);
  return keyed ? *with_keys : adaptive ? *with_policy : *plain;
}

moa::net::wire::envelope chosen(FuzzedDataProvider& in) {
  using namespace moa::net::wire;
  envelope e;
  e.type = kind(in.ConsumeIntegralInRange<int>(0, int(kind::leaving)));
  // Small values most of the time (they reach deep), any value sometimes.
  const auto index = [&] {
    return in.ConsumeBool() ? in.ConsumeIntegralInRange<std::uint32_t>(0, 5)
                            : in.ConsumeIntegral<std::uint32_t>();
  };
  e.from = index();
  e.load = in.ConsumeIntegral<std::uint64_t>();
  e.prompt = in.ConsumeBool() ? in.ConsumeIntegralInRange<std::uint64_t>(0, 3)
                              : in.ConsumeIntegral<std::uint64_t>();
  e.origin = index();
  e.call = index();
  e.layer = index();
  e.role = in.ConsumeBool() ? moa::call_role::proposer : moa::call_role::aggregator;
  const auto messages = in.ConsumeIntegralInRange<int>(0, 3);
  for (int i = 0; i < messages; ++i)
    e.messages.push_back(
        {moa::role(in.ConsumeIntegralInRange<int>(0, 2)), in.ConsumeRandomLengthString(64)});
  e.budget_ms = in.ConsumeFloatingPointInRange<double>(0, 1e6);
  e.status = moa::call_status(in.ConsumeIntegralInRange<int>(0, int(moa::call_status::skipped)));
  e.text = in.ConsumeRandomLengthString(64);
  e.error = in.ConsumeRandomLengthString(64);
  e.tag = in.ConsumeRandomLengthString(300);
  e.missing = index();
  // The adaptive fields: absent, in range, or anything a double can hold.
  const auto estimate = [&]() -> std::optional<double> {
    switch (in.ConsumeIntegralInRange<int>(0, 2)) {
      case 0:
        return std::nullopt;
      case 1:
        return in.ConsumeFloatingPointInRange<double>(0, 1e4);
      default:
        return in.ConsumeFloatingPoint<double>();
    }
  };
  e.origin_rate = estimate();
  e.service_ms = estimate();
  if (in.ConsumeBool())
    e.layout = layout_note{index(), index(), in.ConsumeRandomLengthString(16),
                           in.ConsumeRandomLengthString(64)};
  e.refusal = in.ConsumeRandomLengthString(16);
  return e;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const auto d = moa::net::wire::decode(bytes);
  if (d.message) {
    const auto again = moa::net::wire::decode(moa::net::wire::encode(*d.message));
    if (!again.message || again.message->type != d.message->type ||
        again.message->messages != d.message->messages ||
        again.message->origin_rate != d.message->origin_rate ||
        again.message->service_ms != d.message->service_ms)
      __builtin_trap();
  } else if (d.error.empty()) {
    __builtin_trap();  // a rejection always says why
  }

  if (size == 0) return 0;
  static const std::string senders[] = {"d0", "d1", "d2", "d3", "client", ""};
  const std::string& sender = senders[data[0] % 6];
  auto& dev = the_device((data[0] & 0x40) != 0, (data[0] & 0x20) != 0);
  const std::string routing = "r";  // with keys the identity is the key's, not the routing id
  if (data[0] & 0x80) {
    dev.handle(routing, sender, bytes.substr(1));
  } else {
    FuzzedDataProvider in(data + 1, size - 1);
    dev.handle(routing, sender, moa::net::wire::encode(chosen(in)));
  }
  return 0;
}
