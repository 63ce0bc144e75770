// SPDX-License-Identifier: MIT
#pragma once

// `moa network`: the in-process network on synthetic models, per-device statistics against the
// analytic prediction. `moa device`: one device process of the ZeroMQ network (built when the
// program is compiled with MOA_CLI_ZMQ=1, i.e. cppzmq was found).

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <moa/backends/synthetic.hpp>
#include <moa/gossip/strategies.hpp>
#include <moa/net/network.hpp>
#include <moa/queueing/formulas.hpp>
#include <moa/queueing/stability.hpp>
#if MOA_CLI_ZMQ
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <stop_token>
#include <thread>

#include <moa/net/zmq_device.hpp>
#endif
#include "cli/adaptive_command.hpp"
#include "cli/backends.hpp"
#include "cli/common.hpp"
#if MOA_CLI_ZMQ
#include "cli/key_commands.hpp"
#endif

#if MOA_CLI_ZMQ && MOA_CLI_OPENAI
#include <moa/backends/openai.hpp>  // redact_url
#endif
#if MOA_CLI_ZMQ && MOA_CLI_SERVE
#include <optional>

#include <moa/net/device_metrics.hpp>
#include <moa/serve/status_endpoint.hpp>
#endif

namespace moa::cli {

/// Devices of a live network (in-process or ZeroMQ), and the longest mean service time (a minute).
inline constexpr std::uint64_t max_network_devices = 256;
inline constexpr double max_service_ms = 60000;

struct network_settings {
  std::uint32_t devices = 4;
  std::uint32_t layers = 2;
  std::size_t k = 2;
  std::vector<double> alpha_ms{1.0};  // one for all, or one per device
  double load = 0.8;                  // fraction of the uniform-gossip stability limit
  double lambda = 0;                  // per user per ms; overrides load when > 0
  std::size_t prompts = 2000;
  std::string gossip = "uniform";
  std::string latency = "constant";
  std::size_t capacity = 0;
  std::uint64_t seed = 1;
};

template <class Run>
auto with_gossip(const std::string& name, std::size_t k, Run&& run) {
  if (name == "round-robin") return run(moa::round_robin_gossip(k));
  if (name == "least-loaded") return run(moa::least_loaded_gossip{k, 0});
  if (name == "power-of-2")
    return run(moa::least_loaded_gossip{k, std::max<std::size_t>(k + 1, 2)});
  return run(moa::uniform_gossip{k});
}

// The shape of the gossip, the same for the in-process network and for a device process (whose
// peers must all be started with the same values).
inline void add_gossip_options(CLI::App* cmd, std::uint32_t& layers, std::size_t& k,
                               std::string& gossip) {
  cmd->add_option("-M,--layers", layers, "Layers")
      ->capture_default_str()
      ->transform(count_in(1, max_models));
  cmd->add_option("-k,--fanout", k, "Peers per layer (at most the devices - 1)")
      ->capture_default_str()
      ->transform(count_in(0, max_network_devices - 1));
  cmd->add_option("--gossip", gossip, "uniform, round-robin, least-loaded or power-of-2")
      ->capture_default_str()
      ->check(CLI::IsMember({"uniform", "round-robin", "least-loaded", "power-of-2"}));
}

/// A device's model when it is synthetic: mean `alpha_ms`, constant or exponential.
inline moa::any_backend synthetic_device(std::uint32_t index, double alpha_ms, bool exponential,
                                         std::uint64_t seed) {
  const auto mean = duration_ms(alpha_ms);
  return moa::any_backend(
      moa::synthetic_backend({.name = "d" + std::to_string(index),
                              .latency = exponential ? moa::latency_model::exponential(mean)
                                                     : moa::latency_model::constant(mean),
                              .seed = seed + index}));
}

inline int network_command(const network_settings& s) {
  const std::uint32_t n = s.devices;
  if (s.alpha_ms.size() != 1 && s.alpha_ms.size() != n)
    reject("--alpha-ms", std::to_string(s.alpha_ms.size()) + " values for " + std::to_string(n) +
                             " devices; give one for all or one per device");
  if (s.k > n - 1)
    reject("--fanout", "k = " + std::to_string(s.k) + " is larger than the " +
                           std::to_string(n - 1) + " other devices; give 0.." +
                           std::to_string(n - 1));
  std::vector<double> alpha(n);
  for (std::uint32_t i = 0; i < n; ++i)
    alpha[i] = s.alpha_ms.size() == 1 ? s.alpha_ms[0] : s.alpha_ms[i];
  const double limit = moa::queueing::heterogeneous_limit(s.layers, s.k, alpha);
  const double lambda = s.lambda > 0 ? s.lambda : s.load * limit;
  std::vector<double> rates(n, lambda);
  std::vector<double> rho(n);
  const auto verdict = moa::queueing::uniform_stability(n, s.layers, s.k, rates, alpha, rho);
  const double scv = s.latency == "exponential" ? 1.0 : 0.0;

  std::vector<moa::any_backend> models;
  for (std::uint32_t i = 0; i < n; ++i)
    models.push_back(synthetic_device(i, alpha[i], scv > 0, s.seed));
  const auto arrivals = moa::net::poisson_arrivals(rates, s.prompts, s.seed);
  std::ostringstream out;  // printed whole, after the run: an error leaves no half table
  moa::net::network_options opt;
  opt.layers = s.layers;
  opt.device.capacity = s.capacity;
  opt.seed = s.seed;
  opt.keep_records = false;
  out << "network: n=" << n << " M=" << s.layers << " k=" << s.k << " gossip=" << s.gossip
      << ", lambda=" << lambda << " per user per ms (" << lambda / limit << " x the uniform limit "
      << limit << "), " << s.prompts << " prompts\n";
  const auto r = with_gossip(s.gossip, s.k, [&](auto g) {
    moa::net::network<decltype(g)> net(std::move(models), g, opt);
    return net.run(arrivals);
  });
  out << std::fixed << std::setprecision(3);
  // L(M/G/1) uses the nominal service time; L(calib.) the service each device measured (the
  // backend plus the protocol's own work, thread wake-ups included), which is what a live network
  // on a loaded machine should be held to.
  out << "device  rho(uniform)  util(live)  L(M/G/1)  L(calib.)  L(live)  served  refused  "
         "max queue\n";
  for (std::uint32_t i = 0; i < n; ++i) {
    const auto& d = r.devices[i];
    const double arrival = rho[i] / alpha[i];
    const auto q = moa::queueing::mg1(arrival, alpha[i], scv);
    const double calibrated =
        d.mean_service > 0 ? moa::queueing::mg1(arrival, d.mean_service, scv).number_in_system
                           : q.number_in_system;
    out << std::setw(6) << i << std::setw(14) << rho[i] << std::setw(12) << d.utilisation
        << std::setw(10) << q.number_in_system << std::setw(11) << calibrated << std::setw(9)
        << d.mean_queue << std::setw(8) << d.completed << std::setw(9) << d.refused << std::setw(11)
        << d.max_in_system << '\n';
  }
  out << "prompts: " << r.submitted << " submitted, " << r.complete << " complete, " << r.degraded
      << " degraded, " << r.failed << " failed; refusals " << r.refusals << ", re-routed "
      << r.reroutes << '\n'
      << "latency: mean " << r.mean_latency << " ms, max " << r.max_latency << " ms; throughput "
      << r.throughput << " prompts/ms over " << r.window << " ms\n"
      << "analytic (uniform gossip): " << (verdict.stable ? "STABLE" : "UNSTABLE")
      << ", bottleneck device " << verdict.bottleneck << " at rho " << verdict.max_utilisation
      << '\n';
  std::cout << out.str();
  return r.accounted() ? 0 : 1;
}

/// `moa network --adaptive` on the synthetic devices of `s` (uniform gossip).
inline int adaptive_network(const network_settings& s, const adaptive_options& a) {
  const std::uint32_t n = s.devices;
  if (s.alpha_ms.size() != 1 && s.alpha_ms.size() != n)
    reject("--alpha-ms", std::to_string(s.alpha_ms.size()) + " values for " + std::to_string(n) +
                             " devices; give one for all or one per device");
  if (s.k > n - 1)
    reject("--fanout", "k = " + std::to_string(s.k) + " is larger than the " +
                           std::to_string(n - 1) + " other devices");
  if (s.gossip != "uniform") reject("--gossip", "--adaptive models uniform gossip only");
  if (s.lambda > 0) reject("--lambda", "does not apply to --adaptive (see --ramp)");
  std::vector<double> alpha(n);
  std::vector<moa::any_backend> models;
  for (std::uint32_t i = 0; i < n; ++i) {
    alpha[i] = s.alpha_ms.size() == 1 ? s.alpha_ms[0] : s.alpha_ms[i];
    models.push_back(synthetic_device(i, alpha[i], s.latency == "exponential", s.seed));
  }
  return adaptive_network_command(std::move(models), alpha, s.layers, s.k, s.seed, s.capacity, a);
}

/// Adds `moa network`.
inline void add_network_command(CLI::App& app, int& exit_code) {
  auto s = std::make_shared<network_settings>();
  auto* cmd = app.add_subcommand(
      "network",
      "Runs the in-process network (n devices, synthetic models, millisecond service times) and "
      "prints per-device statistics against the analytic prediction");
  cmd->add_option("-n,--devices", s->devices, "Devices")
      ->capture_default_str()
      ->transform(count_in(1, max_network_devices));
  add_gossip_options(cmd, s->layers, s->k, s->gossip);
  cmd->add_option("--alpha-ms", s->alpha_ms, "Mean service time in ms (one, or one per device)")
      ->capture_default_str()
      ->delimiter(',')
      ->check(number_in(0, max_service_ms, true));
  cmd->add_option("--load", s->load, "Fraction of the uniform stability limit")
      ->capture_default_str()
      ->check(number_in(0, 10, true));
  cmd->add_option("--lambda", s->lambda, "Prompts per user per ms (overrides --load; 0: use it)")
      ->check(number_in(0, 1000));
  cmd->add_option("--prompts", s->prompts, "Prompts in all")
      ->capture_default_str()
      ->transform(count_in(1, 1000000));
  cmd->add_option("--latency", s->latency, "constant or exponential service times")
      ->capture_default_str()
      ->check(CLI::IsMember({"constant", "exponential"}));
  cmd->add_option("--capacity", s->capacity, "Queue capacity per device (0: unbounded)")
      ->capture_default_str()
      ->transform(count_in(0, 1000000));
  cmd->add_option("--seed", s->seed, "Seed")->capture_default_str()->transform(any_seed());
  auto config = std::make_shared<std::string>();
  cmd->add_option("--config", *config,
                  "JSON file with the options (keys as the long options); options on the command "
                  "line win");
  auto adaptive = std::make_shared<adaptive_options>();
  adaptive->phase = 3000;
  adaptive->rate_window = 300;
  adaptive->add_to(cmd, /*live=*/true);
  cmd->callback([s, cmd, config, adaptive, &exit_code] {
    if (!config->empty()) apply_config(cmd, *config);
    if (!adaptive->enabled) {
      adaptive_options::require_enabled_for(cmd, {"--ramp", "--phase"});
      exit_code = network_command(*s);
      return;
    }
    exit_code = adaptive_network(*s, *adaptive);
  });
}

#if MOA_CLI_ZMQ
struct device_settings {
  std::uint32_t index = 0;
  std::vector<std::string> addresses;
  std::string bind;
  std::uint32_t layers = 2;
  std::size_t k = 2;
  std::string gossip = "uniform";
  double alpha_ms = 1.0;
  std::string latency = "constant";
  std::size_t capacity = 0;
  double peer_timeout_ms = 5000;
  double dead_after_ms = 1000;
  std::uint64_t seed = 1;
  // A real model behind an OpenAI-compatible endpoint; empty: the synthetic model.
  std::string endpoint;
  std::string model;
  std::string api_key_env = "OPENAI_API_KEY";
  int max_tokens = 256;
  double http_timeout_ms = default_http_timeout_ms;
  std::string roster;       // a roster file; --model then names this device's model in it
  CLI::App* cmd = nullptr;  // which options the command line gave (they beat the roster)
  double drain_timeout_ms = 3000;
  std::size_t max_message_mib = 16;
  std::size_t max_prompts = 1024;
  std::size_t max_calls_per_origin = 1024;
  std::string metrics;  // [HOST:]PORT of GET /metrics and /health; empty: none
  // CURVE keys (docs/NETWORK.md, key management), or plain text on loopback when asked for.
  std::string key;
  std::vector<std::string> peers_keys, clients_keys;
  bool insecure_plaintext = false;
  // --adaptive: the layout policy's options (shared with `moa network`), times in ms.
  adaptive_options adaptive;
  std::vector<double> prior_service_ms;  // one for all, or one per device; empty: --alpha-ms
  std::size_t warmup = 50;
  std::string config;  // JSON file of options (keys as the long options)
};

/// The adaptive policy of `moa device --adaptive` from its options (checked; exit 2 naming the
/// option), or nothing without --adaptive.
inline std::optional<moa::queueing::adaptive_config> device_policy(const device_settings& s) {
  if (!s.adaptive.enabled) {  // its options given without it: an error, not ignored
    adaptive_options::require_enabled_for(s.cmd, {"--prior-service-ms", "--warmup-prompts"});
    return std::nullopt;
  }
  const std::size_t n = s.addresses.size();
  if (s.gossip != "uniform")
    reject("--gossip", "--adaptive chooses k per prompt for uniform gossip only");
  auto cfg = s.adaptive.policy(n);
  if (s.prior_service_ms.empty())
    cfg.prior_service = {s.alpha_ms};
  else if (s.prior_service_ms.size() == 1 || s.prior_service_ms.size() == n)
    cfg.prior_service = s.prior_service_ms;
  else
    reject("--prior-service-ms", std::to_string(s.prior_service_ms.size()) + " values for " +
                                     std::to_string(n) +
                                     " devices; give one for all or one per device");
  cfg.warmup_arrivals = double(s.warmup);
  with_option("--layouts/--target/--hysteresis/--rate-window", [&] {
    cfg.check();
    return 0;
  });
  return cfg;
}

// An endpoint as logs may show it: without the password of a user:password@ URL.
inline std::string shown_endpoint(const std::string& url) {
#if MOA_CLI_OPENAI
  return moa::openai::detail::redact_url(url);
#else
  return url;
#endif
}

// Set by SIGTERM/SIGINT; a watcher thread turns it into a stop request (a signal handler may
// only touch lock-free atomics).
inline std::atomic<bool>& device_signalled() {
  static std::atomic<bool> flag{false};
  return flag;
}

/// The device's model: the roster's model named by --model, one made of --endpoint flags (the
/// same path: a roster model and model_backend), or the synthetic model.
inline moa::any_backend device_model(const device_settings& s) {
  const auto given = [&](const char* option) { return cli::given(s.cmd, option); };
  moa::config::roster roster;
  if (!s.roster.empty()) {
    for (const char* flag : {"--endpoint", "--api-key-env", "--alpha-ms", "--latency"})
      if (given(flag))
        reject(flag, "is not used with --roster: the roster's model says where and how it runs");
    roster = read_roster(s.roster, "--roster");
    if (s.model.empty()) reject("--model", "with --roster, name this device's model in it");
    if (!roster.find_model(s.model))
      reject("--model", "\"" + s.model + "\" is not a model of " + s.roster);
    auto m = roster.model(s.model);
    if (given("--max-tokens")) m.max_tokens = s.max_tokens;
    if (given("--http-timeout-ms"))
      m.timeout =
          std::chrono::duration_cast<std::chrono::milliseconds>(duration_ms(s.http_timeout_ms));
    roster.models = {m};
  } else if (!s.endpoint.empty()) {
    const auto m = endpoint_flags{.endpoints = {s.endpoint},
                                  .model = s.model,
                                  .api_key_env = s.api_key_env,
                                  .max_tokens = s.max_tokens,
                                  .http_timeout_ms = s.http_timeout_ms}
                       .models(1);
    roster = moa::config::parse_roster(
        {{"models", {{"d" + std::to_string(s.index), m[model_name(0)]}}}});
  } else {
    if (given("--model"))
      reject("--model",
             "names this device's model in --roster, or the model sent to --endpoint; "
             "give one of them (without either the device runs a synthetic model)");
    return synthetic_device(s.index, s.alpha_ms, s.latency == "exponential", s.seed);
  }
  return model_backend(roster.models.front());
}

/// A ZeroMQ endpoint as the device accepts it: tcp://, ipc:// or inproc://, not empty.
inline CLI::Validator zmq_endpoint() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        for (const char* scheme : {"tcp://", "ipc://", "inproc://"})
          if (v.rfind(scheme, 0) == 0 && v.size() > std::string_view(scheme).size() &&
              v.size() <= 1024)
            return {};
        return "'" + v.substr(0, 64) + "' is not a ZeroMQ endpoint (tcp://HOST:PORT, ipc://PATH)";
      },
      "tcp://HOST:PORT or ipc://PATH", "zmq endpoint");
}

#if MOA_CLI_SERVE
// `--metrics`: PORT (on 127.0.0.1) or HOST:PORT, HOST an IP address ([::1] for IPv6), PORT in
// 1..65535; `why` says what was wrong, empty when it is fine.
inline std::pair<std::string, std::uint16_t> metrics_address(const std::string& v,
                                                             std::string* why = nullptr) {
  const auto colon = v.rfind(':');
  std::string host = colon == std::string::npos ? "127.0.0.1" : v.substr(0, colon);
  const std::string port = colon == std::string::npos ? v : v.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  const auto fail = [&](const std::string& w) {
    if (why != nullptr) *why = w;
    return std::pair<std::string, std::uint16_t>{};
  };
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
    return fail("'" + v.substr(0, 64) + "': the port is not a number 1..65535");
  const unsigned long p = std::stoul(port);
  if (p == 0 || p > 65535) return fail("'" + v.substr(0, 64) + "': the port is not in 1..65535");
  boost::system::error_code ec;
  (void)boost::asio::ip::make_address(host, ec);
  if (ec) return fail("'" + host.substr(0, 64) + "' is not an IP address (e.g. 127.0.0.1)");
  return {host, std::uint16_t(p)};
}

// GET /metrics (Prometheus text) and GET /health of a running device, from its snapshot.
template <class Device>
moa::serve::status_endpoint::reply device_status(const Device& dev, std::string_view target) {
  const auto snap = dev.snapshot();
  if (target == "/metrics")
    return {200, "text/plain; version=0.0.4; charset=utf-8", moa::net::render_prometheus(snap)};
  if (target == "/health") {
    auto [status, body] = moa::net::health(snap);
    return {status, "application/json", std::move(body)};
  }
  return {404, "text/plain; charset=utf-8", "not found: GET /metrics or GET /health\n"};
}
#endif
// The device's keys and allow-lists as its options give them, checked against its network.
inline moa::net::zmq_security device_security(const device_settings& s) {
  moa::net::zmq_security sec;
  const bool keyed = !s.key.empty() || !s.peers_keys.empty() || !s.clients_keys.empty();
  if (s.insecure_plaintext) {
    if (keyed)
      reject("--insecure-plaintext",
             "given with --key/--peers-keys/--clients-keys; give keys or plain text, not both");
    sec.insecure_plaintext = true;
  } else {
    if (s.key.empty() || s.peers_keys.empty())
      reject("--key",
             "a device needs its secret key (--key NAME.key, from moa keygen) and every device's "
             "public key (--peers-keys, in --peers order); or --insecure-plaintext, on loopback "
             "only");
    sec.keys = with_option("--key", [&] { return moa::net::load_key_pair(s.key); });
    sec.device_keys = public_keys("--peers-keys", s.peers_keys);
    sec.client_keys = public_keys("--clients-keys", s.clients_keys);
  }
  with_option(s.insecure_plaintext ? "--insecure-plaintext" : "--key/--peers-keys/--clients-keys",
              [&] {
                moa::net::check_security(sec, s.addresses, s.index, s.bind);
                return 0;
              });
  return sec;
}

inline int device_command(const device_settings& s) {
  if (s.addresses.size() < 2 || s.addresses.size() > max_network_devices)
    reject("--peers", std::to_string(s.addresses.size()) + " endpoints; a network has 2.." +
                          std::to_string(max_network_devices) + " devices");
  if (s.index >= s.addresses.size())
    reject("--index", std::to_string(s.index) + " is not a position in --peers (0.." +
                          std::to_string(s.addresses.size() - 1) + ")");
  if (s.k > s.addresses.size() - 1)
    reject("--fanout", "k = " + std::to_string(s.k) + " is larger than the " +
                           std::to_string(s.addresses.size() - 1) + " other devices");
  auto adaptive = device_policy(s);
  auto security = device_security(s);
  auto model = device_model(s);
  moa::net::zmq_device_options opt;
  opt.security = std::move(security);
  opt.index = s.index;
  opt.addresses = s.addresses;
  opt.bind = s.bind;
  opt.layers = s.layers;
  opt.device.capacity = s.capacity;
  opt.peer_timeout =
      std::chrono::duration_cast<std::chrono::milliseconds>(duration_ms(s.peer_timeout_ms));
  opt.dead_after =
      std::chrono::duration_cast<std::chrono::milliseconds>(duration_ms(s.dead_after_ms));
  opt.trust.failed_for = 10 * opt.dead_after;  // a failed peer stays failed 10 dead_afters
  opt.seed = s.seed;
  opt.drain_timeout =
      std::chrono::duration_cast<std::chrono::milliseconds>(duration_ms(s.drain_timeout_ms));
  opt.max_message_bytes = std::int64_t(s.max_message_mib) << 20;
  opt.max_prompts = s.max_prompts;
  opt.max_calls_per_origin = s.max_calls_per_origin;
  if (adaptive) opt.adaptive = moa::net::adaptive_origin(std::move(*adaptive), s.index);
  // The first signal stops gracefully (the device drains); a second one exits at once.
  const auto on_signal = [](int sig) {
    if (device_signalled().exchange(true)) ::_exit(128 + sig);
  };
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);
  std::stop_source stop;
  std::jthread watcher([&stop](std::stop_token st) {
    while (!st.stop_requested() && !device_signalled().load())
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    stop.request_stop();
  });
  const std::string shown_model = !s.roster.empty()    ? s.model + " of roster " + s.roster
                                  : s.endpoint.empty() ? std::string("synthetic")
                                                       : shown_endpoint(s.endpoint);
  moa::net::log_line(std::cerr, "info", s.index,
                     "serving at " + s.addresses.at(s.index) + " with " +
                         std::to_string(s.addresses.size() - 1) + " peers, model " + shown_model +
                         (opt.adaptive ? ", adaptive layouts " + s.adaptive.layouts : ""));
  try {
    with_gossip(s.gossip, s.k, [&](auto g) {
      moa::net::zmq_device<decltype(g)> dev(std::move(model), g, opt);
#if MOA_CLI_SERVE
      std::optional<moa::serve::status_endpoint> http;  // before dev ends: it reads dev
      if (!s.metrics.empty()) {
        const auto [host, port] = metrics_address(s.metrics);
        http.emplace(host, port,
                     [&dev](std::string_view target) { return device_status(dev, target); });
        try {
          http->start();
        } catch (const moa::error& e) {
          stop.request_stop();
          reject("--metrics", e.what());
        }
        moa::net::log_line(std::cerr, "info", s.index,
                           "metrics at http://" +
                               (host.find(':') == std::string::npos ? host : "[" + host + "]") +
                               ":" + std::to_string(http->port()) + "/metrics and /health");
      }
#endif
      dev.run(stop.get_token());
      return 0;
    });
  } catch (const zmq::error_t& e) {
    // Binding or connecting: an address in use, a host that does not resolve, a bad endpoint.
    stop.request_stop();
    reject("--peers/--bind", std::string("ZeroMQ refused an endpoint: ") + e.what() + " (bind " +
                                 (s.bind.empty() ? s.addresses[s.index] : s.bind) + ")");
  }
  return 0;
}

/// Adds `moa device`.
inline void add_device_command(CLI::App& app, int& exit_code) {
  auto s = std::make_shared<device_settings>();
  auto* cmd = app.add_subcommand(
      "device",
      "Runs one device of a ZeroMQ network of processes: its model (synthetic, or --endpoint), "
      "its address and its peers' (every device's endpoint, in order; this one is --index)");
  cmd->add_option("--index", s->index, "This device's position in --peers")
      ->required()
      ->transform(count_in(0, max_network_devices - 1));
  cmd->add_option("--peers", s->addresses, "Every device's endpoint, e.g. tcp://10.0.0.7:5550")
      ->required()
      ->delimiter(',')
      ->check(zmq_endpoint());
  cmd->add_option("--bind", s->bind, "Endpoint to bind (default: this device's, e.g. tcp://*:5550)")
      ->check(zmq_endpoint());
  add_gossip_options(cmd, s->layers, s->k, s->gossip);
  cmd->add_option("--alpha-ms", s->alpha_ms, "Mean service time of the model (ms)")
      ->capture_default_str()
      ->check(number_in(0, max_service_ms, true));
  cmd->add_option("--latency", s->latency, "constant or exponential")
      ->capture_default_str()
      ->check(CLI::IsMember({"constant", "exponential"}));
  cmd->add_option("--capacity", s->capacity, "Queue capacity (0: unbounded)")
      ->capture_default_str()
      ->transform(count_in(0, 1000000));
  cmd->add_option("--peer-timeout-ms", s->peer_timeout_ms, "Per-peer deadline")
      ->capture_default_str()
      ->check(number_in(1, max_duration_ms));
  cmd->add_option("--dead-after-ms", s->dead_after_ms, "Silence after which a peer is dead")
      ->capture_default_str()
      ->check(number_in(1, max_duration_ms));
  cmd->add_option("--seed", s->seed, "Seed")->capture_default_str()->transform(any_seed());
  cmd->add_option("--drain-timeout-ms", s->drain_timeout_ms,
                  "On SIGTERM/SIGINT or `stop`: how long prompts in flight may still finish")
      ->capture_default_str()
      ->check(number_in(0, max_duration_ms));
  cmd->add_option("--max-message-mib", s->max_message_mib,
                  "Largest message accepted (MiB); a peer sending more is disconnected")
      ->capture_default_str()
      ->transform(count_in(1, 1024));
  cmd->add_option("--max-prompts", s->max_prompts,
                  "Prompts born here in flight at once; beyond it a submit is refused")
      ->capture_default_str()
      ->transform(count_in(1, 1000000));
  cmd->add_option("--max-calls-per-origin", s->max_calls_per_origin,
                  "Calls of one origin device queued here at once; beyond it they are refused")
      ->capture_default_str()
      ->transform(count_in(1, 1000000));
  cmd->add_option("--key", s->key,
                  "This device's secret key file (NAME.key from moa keygen, mode 0600)");
  cmd->add_option("--peers-keys", s->peers_keys,
                  "Every device's public key, in --peers order: NAME.pub files, or one allow-list "
                  "file (a key a line)")
      ->delimiter(',');
  cmd->add_option("--clients-keys", s->clients_keys,
                  "Public keys of the clients that may submit, read stats and stop: NAME.pub "
                  "files, allow-list files or folders of .pub files")
      ->delimiter(',');
  cmd->add_flag("--insecure-plaintext", s->insecure_plaintext,
                "No keys: plain text, no authentication (loopback endpoints only; tests)");
  // With --roster in every build (a roster may hold synthetic models); with --endpoint, in
  // builds with the HTTP backend.
  cmd->add_option("--model", s->model,
                  "With --roster: this device's model in it; with --endpoint: the model name sent");
#if MOA_CLI_OPENAI
  cmd->add_option(
         "--endpoint", s->endpoint,
         "OpenAI-compatible endpoint of this device's model, e.g. http://127.0.0.1:8080/v1 "
         "(default: a synthetic model)")
      ->check(http_url());
  cmd->add_option("--http-timeout-ms", s->http_timeout_ms,
                  "Deadline of each HTTP call when the network sets none earlier (0: 5 minutes)")
      ->capture_default_str()
      ->transform(timeout_ms());
  cmd->add_option("--api-key-env", s->api_key_env, "Environment variable holding the API key")
      ->capture_default_str();
  cmd->add_option("--max-tokens", s->max_tokens, "Tokens per answer (with --endpoint)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
#endif
#if MOA_CLI_SERVE
  cmd->add_option("--metrics", s->metrics,
                  "Serve GET /metrics (Prometheus) and GET /health at [HOST:]PORT (HOST an IP "
                  "address, default 127.0.0.1; default: no endpoint)")
      ->check(CLI::Validator(
          [](std::string& v) {
            std::string why;
            (void)metrics_address(v, &why);
            return why;
          },
          "[HOST:]PORT", "metrics address"));
#endif
  cmd->add_option("--roster", s->roster,
                  "Roster file (JSON, docs/EVAL.md): this device's model is the one --model names "
                  "(--max-tokens and --http-timeout-ms given here beat it)");
  s->adaptive.rate_window = 10000;  // ms: a network of models sees prompts over seconds
  s->adaptive.add_policy_options(cmd,
                                 "Choose each prompt's layout (M, k) from --layouts by the "
                                 "stability of the whole network, and refuse prompts over "
                                 "capacity; see docs/ADAPTIVE.md",
                                 "ms");
  cmd->add_option("--prior-service-ms", s->prior_service_ms,
                  "--adaptive: every device's mean service time (ms) until it reports its own: "
                  "one for all, or one per device (default: --alpha-ms)")
      ->delimiter(',')
      ->check(number_in(0, max_service_ms, true));
  cmd->add_option("--warmup-prompts", s->warmup,
                  "--adaptive: prompts born here that take the best layout before any change")
      ->capture_default_str()
      ->transform(count_in(0, 1000000));
  cmd->add_option("--config", s->config,
                  "JSON file with the options (keys as the long options); options on the command "
                  "line win");
  s->cmd = cmd;
  cmd->callback([s, cmd, &exit_code] {
    if (!s->config.empty()) apply_config(cmd, s->config);
    exit_code = device_command(*s);
  });
}
#endif

}  // namespace moa::cli
