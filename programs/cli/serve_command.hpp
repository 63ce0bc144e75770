// SPDX-License-Identifier: MIT
#pragma once

// `moa serve`: an OpenAI-compatible HTTP server whose models are MoA layouts (docs/SERVE.md).
//
//   moa serve --roster roster.json --listen 127.0.0.1:8000
//   moa serve --endpoint http://127.0.0.1:8080/v1 --endpoint http://127.0.0.1:8081/v1
//   moa serve                       the embedded synthetic models (no model server needed)
//   moa serve --adaptive --layouts 2x2,1x1 --target 0.8
//                                   layers and fan-out of "moa" chosen per request from the load,
//                                   429 over_capacity beyond it (docs/ADAPTIVE.md)

#include <pthread.h>
#include <signal.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <moa/config/roster.hpp>
#include <moa/serve/openai_server.hpp>
#include <nlohmann/json.hpp>
#if MOA_CLI_OPENAI
#include <moa/serve/roster_backends.hpp>
#endif

#include "cli/adaptive_command.hpp"
#include "cli/backends.hpp"
#include "cli/common.hpp"
#include "cli/eval_command.hpp"

namespace moa::cli {

// The server's backends, by model_backend's rules, held for the async executor: OpenAI endpoints
// and devices through their asynchronous paths, so a run waiting on them holds no thread.
inline moa::serve::model_handle serve_backend(const moa::config::model_spec& m) {
  require_backend_of(m);
#if MOA_CLI_ZMQ
  if (m.kind == "device") return moa::serve::hold(moa::config::make_device_backend(m), m.name);
#endif
#if MOA_CLI_OPENAI
  return moa::serve::roster_backends(m);
#else
  return moa::serve::synthetic_backends(m);
#endif
}

struct serve_settings {
  std::string roster_path{};
  std::vector<std::string> endpoints{};
  std::string model{};
  int max_tokens = 512;
  double latency_ms = 0.0;
  std::string listen = "127.0.0.1:8000";
  std::string api_key_env{};
  std::string api_keys_file{};
  double drain_s = 30.0;
  double run_timeout_s = 0.0;
  moa::serve::server_options server{};
  // --adaptive: the policy's options shared with simulate and network (times in seconds here),
  // and those only a server has.
  adaptive_options adaptive = [] {
    adaptive_options a;
    a.layouts.clear();   // not given: every (M, k) the layout holds
    a.rate_window = 60;  // seconds: a server's load changes over minutes
    return a;
  }();
  std::string adaptive_layout{};
  double prior_service_s = 1.0;
  std::uint64_t warmup_prompts = 20;
  double confidence_z = 1.645;
};

/// The options of serve's adaptive policy that a roster layout's "adaptive" object may set (its
/// keys are these long options without "--"; the command line wins).
inline const std::vector<std::string> serve_adaptive_keys = {
    "layouts",           "target",        "hysteresis",     "rate-window",
    "latency-objective", "prior-service", "warmup-prompts", "confidence-z"};

/// Decides which layout --adaptive applies to and fills s.server.adaptive, or leaves it off.
/// Precedence: flags, then the roster layout's "adaptive" object, then the defaults.
inline void configure_adaptive(serve_settings& s, const moa::config::roster& roster,
                               CLI::App* cmd) {
  // The layout: --adaptive-layout, else the one the roster marks adaptive, else (with --adaptive)
  // the only layered layout.
  std::vector<std::string> marked;
  for (const auto& l : roster.layouts)
    if (!l.adaptive.is_null() && l.adaptive != false) marked.push_back(l.name);
  if (cmd->count("--adaptive-layout") > 0 && s.adaptive_layout.empty())
    reject("--adaptive-layout", "is empty; name a layered layout of the roster");
  std::string name = s.adaptive_layout;
  if (name.empty() && marked.size() > 1) {
    std::string list;
    for (const auto& m : marked) list += (list.empty() ? "" : ", ") + m;
    reject("--adaptive-layout", "the roster marks several layouts adaptive (" + list +
                                    "); name one (moa serve runs one adaptive policy)");
  }
  if (name.empty() && marked.size() == 1) name = marked[0];
  // A marked layout's options would otherwise be silently unused.
  if (!marked.empty() && std::find(marked.begin(), marked.end(), name) == marked.end())
    reject("--adaptive-layout",
           "\"" + name + "\" is not the layout the roster marks adaptive (" + marked[0] + ")");
  // On with --adaptive, or when the roster marks a layout (--adaptive-layout alone is refused).
  const bool enabled = s.adaptive.enabled || !marked.empty();
  if (!enabled) {
    adaptive_options::require_enabled_for(
        cmd, {"--adaptive-layout", "--prior-service", "--warmup-prompts", "--confidence-z"});
    return;
  }
  if (name.empty()) {
    std::vector<std::string> layered;
    for (const auto& l : roster.layouts)
      if (!l.layers.empty()) layered.push_back(l.name);
    if (layered.size() != 1)
      reject("--adaptive", "the roster has " + std::to_string(layered.size()) +
                               " layered layouts; name the one to adapt with --adaptive-layout "
                               "(or mark it \"adaptive\": true in the roster)");
    name = layered[0];
  }
  const moa::config::layout_spec* spec = nullptr;
  for (const auto& l : roster.layouts)
    if (l.name == name) spec = &l;
  if (spec == nullptr)
    reject("--adaptive-layout", "\"" + name + "\" is not a layout of the roster");
  if (spec->adaptive.is_object())
    apply_config_object(cmd, spec->adaptive, "roster layouts." + name + ".adaptive", {},
                        serve_adaptive_keys);
  const auto models = spec->models();
  auto& a = s.server.adaptive;
  a.layout = name;
  a.policy.devices = models.size();
  // Given (on the command line or by the roster), --layouts is checked even when empty; not
  // given, the server allows every (M, k) the layout holds (adaptive_layout::default_layouts).
  if (cmd->count("--layouts") > 0) {
    if (models.size() < 2)
      reject("--adaptive-layout", "\"" + name + "\" calls one model; --adaptive needs at least 2");
    a.policy.allowed = adaptive_options::parse_layouts(s.adaptive.layouts, models.size());
    for (const auto& l : a.policy.allowed)
      if (l.layers > spec->layers.size())
        reject("--layouts", std::to_string(l.layers) + "x" + std::to_string(l.fanout) +
                                " is deeper than layout \"" + name + "\" (" +
                                std::to_string(spec->layers.size()) +
                                " layers): the roster's layout is the largest");
  }
  a.policy.target = s.adaptive.target;
  a.policy.hysteresis = s.adaptive.hysteresis;
  a.policy.rate_window = s.adaptive.rate_window;
  if (s.adaptive.latency_objective > 0) a.policy.latency_objective = s.adaptive.latency_objective;
  a.policy.prior_service = {s.prior_service_s};
  a.policy.warmup_arrivals = double(s.warmup_prompts);
  a.policy.z = s.confidence_z;
}

/// Splits host:port (the port may be 0: an ephemeral one, printed at start).
inline std::pair<std::string, std::uint16_t> split_listen(const std::string& s) {
  const auto colon = s.rfind(':');
  return {s.substr(0, colon), static_cast<std::uint16_t>(std::stoul(s.substr(colon + 1)))};
}

inline const CLI::Validator listen_address(
    [](std::string& s) -> std::string {
      const auto colon = s.rfind(':');
      if (colon == std::string::npos || colon == 0 || colon + 1 == s.size())
        return "must be host:port, e.g. 127.0.0.1:8000";
      const auto port = s.substr(colon + 1);
      if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
          std::stoul(port) > 65535)
        return "the port must be a number from 0 to 65535, not \"" + port + "\"";
      boost::system::error_code ec;
      boost::asio::ip::make_address(s.substr(0, colon), ec);
      if (ec) return "the host must be an IP address (e.g. 127.0.0.1 or 0.0.0.0)";
      return {};
    },
    "HOST:PORT", "listen_address");

/// The embedded synthetic models and a 2-layer MoA over them.
inline moa::config::roster synthetic_roster(double latency_ms) {
  nlohmann::json models = nlohmann::json::object();
  nlohmann::json layer = nlohmann::json::array();
  for (std::size_t i = 0; i < 3; ++i) {
    models[model_name(i)] = {{"kind", "synthetic"}, {"latency_ms", latency_ms}};
    layer.push_back(model_name(i));
  }
  return moa::config::parse_roster(
      {{"models", models},
       {"layouts",
        {{"moa",
          {{"layers", nlohmann::json::array({layer, layer})}, {"aggregator", model_name(0)}}}}}});
}

/// The callers' keys: a variable holding one or more comma-separated keys, and/or a file of one
/// key a line (blank lines and # comments skipped).
inline std::vector<std::string> load_api_keys(const serve_settings& s) {
  std::vector<std::string> keys;
  auto add = [&](std::string k) {
    while (!k.empty() && (k.back() == '\r' || k.back() == ' ')) k.pop_back();
    if (!k.empty() && k.front() != '#') keys.push_back(std::move(k));
  };
  if (!s.api_key_env.empty()) {
    const auto v = moa::config::process_env(s.api_key_env.c_str());
    if (!v || v->empty())
      throw CLI::ValidationError("--api-key-env", "$" + s.api_key_env + " is not set or empty");
    std::size_t pos = 0;
    while (pos <= v->size()) {
      const auto end = std::min(v->find(',', pos), v->size());
      add(v->substr(pos, end - pos));
      pos = end + 1;
    }
  }
  if (!s.api_keys_file.empty()) {
    std::ifstream in(s.api_keys_file);
    for (std::string line; std::getline(in, line);) add(line);
    if (keys.empty())
      throw CLI::ValidationError("--api-keys-file", s.api_keys_file + " holds no key");
  }
  return keys;
}

// `s` by reference: configure_adaptive applies the roster's options through `cmd`, whose options
// write into these settings.
inline void run_serve(serve_settings& s, CLI::App* cmd, int& exit_code) {
  if (!s.roster_path.empty() && !s.endpoints.empty())
    throw CLI::ValidationError("--roster", "give a roster file or --endpoint URLs, not both");
  moa::config::roster roster;
  if (!s.roster_path.empty()) {
    roster = moa::config::load_roster(s.roster_path);
  } else if (!s.endpoints.empty()) {
    roster = endpoints_roster(
        endpoint_flags{.endpoints = s.endpoints, .model = s.model, .max_tokens = s.max_tokens});
  } else {
    roster = synthetic_roster(s.latency_ms);
  }
  configure_adaptive(s, roster, cmd);
  std::tie(s.server.host, s.server.port) = split_listen(s.listen);
  s.server.api_keys = load_api_keys(s);
  s.server.run_timeout =
      std::chrono::milliseconds(static_cast<std::int64_t>(s.run_timeout_s * 1000));
  const moa::serve::backend_factory make = serve_backend;
  // The signals are taken by a thread of their own (sigwait), never by a handler: the first
  // drains, the second exits at once. Blocked before any server thread starts, so all inherit it.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  moa::serve::openai_server server(roster, make, s.server);
  server.start();
  std::string names;
  for (const auto& l : server.layouts().all()) names += (names.empty() ? "" : ", ") + l.name;
  std::cout << "moa serve: listening on http://" << s.server.host << ':' << server.port()
            << " (models: " << names << "; authentication: "
            << (s.server.api_keys.empty() ? "off"
                                          : std::to_string(s.server.api_keys.size()) + " key(s)")
            << ")" << std::endl;

  const auto drain =
      std::chrono::duration_cast<moa::clock::duration>(std::chrono::duration<double>(s.drain_s));
  std::thread waiter([&] {
    bool draining = false;
    for (;;) {
      int sig = 0;
      if (sigwait(&signals, &sig) != 0) continue;
      if (sig == SIGUSR1) return;  // the server stopped
      if (draining) std::_Exit(128 + sig);
      draining = true;
      std::cerr << "moa serve: draining (" << server.in_flight()
                << " in flight); a second signal exits at once" << std::endl;
      server.drain(drain);
    }
  });
  server.wait();
  pthread_kill(waiter.native_handle(), SIGUSR1);
  waiter.join();
  std::cerr << "moa serve: stopped" << std::endl;
  exit_code = 0;
}

/// Adds `moa serve` to the program.
inline void add_serve_command(CLI::App& app, int& exit_code) {
  auto s = std::make_shared<serve_settings>();
  auto* cmd =
      app.add_subcommand("serve",
                         "Serve MoA layouts as models of an OpenAI-compatible HTTP server (POST "
                         "/v1/chat/completions, GET /v1/models, /health, /metrics)");
  cmd->add_option("--roster", s->roster_path, "Roster file (JSON): every layout and model served")
      ->check(CLI::ExistingFile);
#if MOA_CLI_OPENAI
  cmd->add_option("--endpoint", s->endpoints,
                  "Instead of a roster: an OpenAI-compatible base URL (repeat); the models are "
                  "named alpha, beta, ... and a 2-layer MoA \"moa\" over all is served");
  cmd->add_option("--model", s->model, "With --endpoint: the model name sent");
  cmd->add_option("--max-tokens", s->max_tokens, "With --endpoint: tokens per answer")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
#endif
  cmd->add_option("--latency-ms", s->latency_ms,
                  "Without a roster or endpoints: mean latency of the embedded synthetic models")
      ->check(CLI::Range(0.0, 3.6e6))
      ->capture_default_str();
  cmd->add_option("--listen", s->listen, "Address to listen on (port 0: an ephemeral port)")
      ->check(listen_address)
      ->capture_default_str();
  cmd->add_option("--io-threads", s->server.io_threads, "HTTP event loop threads")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  cmd->add_option("--workers", s->server.workers, "Threads for synchronous backends' calls")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--max-in-flight", s->server.max_in_flight,
                  "Chat completions at once; more are answered 429 with Retry-After")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--max-body", s->server.max_body_bytes,
                  "Largest request body in bytes; larger ones are answered 413")
      ->check(CLI::Range(64, 1 << 30))
      ->capture_default_str();
  cmd->add_option("--retry-after", s->server.retry_after, "Seconds sent in Retry-After with 429")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();
  cmd->add_option("--api-key-env", s->api_key_env,
                  "Require callers' Bearer keys: the variable holding them (comma-separated)");
  cmd->add_option("--api-keys-file", s->api_keys_file,
                  "Require callers' Bearer keys: a file of one key a line")
      ->check(CLI::ExistingFile);
  cmd->add_option("--run-timeout", s->run_timeout_s, "Seconds a run may take (504); 0: no bound")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  cmd->add_option("--drain-timeout", s->drain_s,
                  "On SIGTERM/SIGINT: seconds in-flight requests may take to finish")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  s->adaptive.add_policy_options(
      cmd,
      "Choose the layers and proposers of one layered layout per request from the measured load, "
      "and refuse requests (429 over_capacity) beyond the smallest allowed layout's capacity; see "
      "docs/ADAPTIVE.md",
      "seconds");
  cmd->add_option("--adaptive-layout", s->adaptive_layout,
                  "--adaptive: the layered layout to adapt (default: the one the roster marks "
                  "\"adaptive\", else the only layered one)");
  cmd->add_option("--prior-service", s->prior_service_s,
                  "--adaptive: each model's expected seconds per call before any is measured")
      ->capture_default_str()
      ->check(number_in(0, 3600, true));
  cmd->add_option("--warmup-prompts", s->warmup_prompts,
                  "--adaptive: requests run at the best layout before the load is estimated")
      ->capture_default_str()
      ->transform(count_in(0, 1000000));
  cmd->add_option("--confidence-z", s->confidence_z,
                  "--adaptive: standard errors added to the estimates to choose a layout, and "
                  "taken from them before refusing (1.645: one-sided 95%)")
      ->capture_default_str()
      ->check(number_in(0, 10));
  cmd->callback([s, cmd, &exit_code] { run_serve(*s, cmd, exit_code); });
}

}  // namespace moa::cli
