// SPDX-License-Identifier: MIT
#pragma once

// `moa submit`: the client of the ZeroMQ network. Sends prompts to one device (their origin),
// waits for their results and prints the answers (with --format json, each result and its
// trace); or reads a device's stats, or stops it. Speaks the wire format of moa/net/zmq_wire.hpp
// over CURVE with a client key (moa/net/zmq_security.hpp), or plain text on loopback when asked.
//
// Exit codes: 0 every prompt answered (degraded ones included: the error names what is missing),
// 1 a prompt failed, 2 bad input, 3 refused (the device refused a prompt, or the key),
// 4 unreachable (no answer within --timeout-ms), 5 over capacity (the origin's adaptive policy
// refused a prompt at admission: retry later, or elsewhere). With several prompts the worst
// wins, in the order 4, 3, 5, 1.

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <exception>
#include <future>
#include <iomanip>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <moa/net/zmq_client.hpp>
#include <moa/net/zmq_security.hpp>
#include <moa/net/zmq_wire.hpp>

#include "cli/common.hpp"
#include "cli/key_commands.hpp"
#include "cli/network_commands.hpp"  // zmq_endpoint()

namespace moa::cli {

inline constexpr int exit_refused = 3;
inline constexpr int exit_unreachable = 4;
inline constexpr int exit_over_capacity = 5;

struct submit_settings {
  std::string device;
  std::vector<std::string> prompts, prompt_files;
  std::string system;
  double timeout_ms = 60000;
  std::string format = "text";
  std::string key, server_key;
  bool insecure_plaintext = false, stats = false, stop = false;
};

inline int submit_command(const submit_settings& s) {
  using moa::net::wire::envelope;
  using moa::net::wire::kind;
  const int actions =
      int(!s.prompts.empty() || !s.prompt_files.empty()) + int(s.stats) + int(s.stop);
  if (actions != 1)
    reject("--prompt/--prompt-file/--stats/--stop",
           "give prompts (--prompt, --prompt-file), or --stats, or --stop: one of them");
  std::vector<std::string> texts = s.prompts;
  for (const auto& f : s.prompt_files)
    texts.push_back(read_text(f, "--prompt-file", max_prompt_bytes));
  for (std::size_t i = 0; i < texts.size(); ++i)
    if (texts[i].find_first_not_of(" \t\r\n") == std::string::npos)
      reject("--prompt/--prompt-file", "prompt " + std::to_string(i + 1) + " is empty");

  std::optional<moa::net::key_pair> keys;
  std::string server;
  if (s.insecure_plaintext) {
    if (!s.key.empty() || !s.server_key.empty())
      reject("--insecure-plaintext", "given with --key/--server-key; give keys or plain text");
    if (!moa::net::is_loopback_endpoint(s.device))
      reject("--insecure-plaintext", "plain text is for loopback only, and '" + s.device +
                                         "' is not a loopback endpoint; give keys");
  } else {
    if (s.key.empty() || s.server_key.empty())
      reject("--key",
             "a client needs its secret key (--key NAME.key, from moa keygen, listed in the "
             "device's --clients-keys) and the device's public key (--server-key NAME.pub); or "
             "--insecure-plaintext on loopback");
    keys = with_option("--key", [&] { return moa::net::load_key_pair(s.key); });
    const auto listed = public_keys("--server-key", {s.server_key});
    if (listed.size() != 1)
      reject("--server-key", "'" + s.server_key + "' holds " + std::to_string(listed.size()) +
                                 " keys; give the device's own NAME.pub");
    server = listed[0];
    with_option("--key", [] {
      moa::net::detail::require_curve();
      return 0;
    });
  }

  std::optional<moa::net::zmq_client> client;
  with_option("--device", [&] {
    client.emplace(moa::net::zmq_client_options{.device = s.device,
                                                .keys = keys,
                                                .server_key = server,
                                                .insecure_plaintext = s.insecure_plaintext});
    return 0;
  });

  // Every message in flight at once; each ends in its result or the error that ended its wait.
  struct outcome {
    std::optional<envelope> result;
    std::string error;  // why there is none
    bool refused_key = false;
  };
  std::vector<envelope> messages;
  if (s.stats || s.stop) {
    messages.push_back({.type = s.stats ? kind::stats : kind::stop});
  } else {
    for (const auto& text : texts) {
      envelope e;
      e.type = kind::submit;
      if (!s.system.empty()) e.messages.push_back({moa::role::system, s.system});
      e.messages.push_back({moa::role::user, text});
      messages.push_back(std::move(e));
    }
  }
  std::vector<std::future<outcome>> waits;
  const auto until = moa::clock::now() + duration_ms(s.timeout_ms);
  for (auto& m : messages) {
    auto p = std::make_shared<std::promise<outcome>>();
    waits.push_back(p->get_future());
    client->send(std::move(m), until, {}, [p](envelope* reply, std::exception_ptr e) {
      outcome o;
      if (reply != nullptr) {
        o.result = std::move(*reply);
      } else {
        try {
          std::rethrow_exception(e);
        } catch (const moa::net::refused_error& r) {
          o.error = r.what();
          o.refused_key = true;
        } catch (const std::exception& x) {
          o.error = x.what();
        }
      }
      p->set_value(std::move(o));
    });
  }
  std::vector<outcome> outcomes;
  for (auto& w : waits) outcomes.push_back(w.get());
  client.reset();

  const bool json = s.format == "json";
  for (const auto& o : outcomes)
    if (o.refused_key) {
      std::cerr << "moa submit: refused: " << o.error << '\n';
      if (json) std::cout << nlohmann::json{{"device", s.device}, {"refused", o.error}} << '\n';
      return exit_refused;
    }
  if (s.stats || s.stop) {
    if (!outcomes[0].result) {
      std::cerr << "moa submit: " << outcomes[0].error << '\n';
      return exit_unreachable;
    }
    const envelope& reply = *outcomes[0].result;
    if (!reply.error.empty()) {
      std::cerr << "moa submit: " << reply.error << '\n';
      return reply.error.rfind("refused", 0) == 0 ? exit_refused : 1;
    }
    if (s.stats) {
      const auto j = nlohmann::json::parse(reply.text, nullptr, false);
      std::cout << (j.is_discarded() ? reply.text : j.dump(json ? -1 : 2)) << '\n';
    } else {
      std::cout << (json ? nlohmann::json{{"device", s.device}, {"stopping", true}}.dump()
                         : s.device + ": stopping")
                << '\n';
    }
    return 0;
  }

  int code = 0;
  auto results = nlohmann::json::array();
  for (std::size_t i = 0; i < outcomes.size(); ++i) {
    nlohmann::json r = {{"prompt", i + 1}};
    if (!outcomes[i].result) {
      r["status"] = "unreachable";
      r["error"] = outcomes[i].error;
      code = exit_unreachable;
    } else {
      const auto& e = *outcomes[i].result;
      // A typed refusal names its type; any other refusal is the device's (bounds, stopping).
      const bool over_capacity = e.refusal == "over_capacity";
      const bool refused =
          !over_capacity && (e.error.rfind("refused", 0) == 0 || !e.refusal.empty());
      r["status"] = over_capacity ? "over_capacity"
                    : refused     ? "refused"
                                  : std::string(moa::net::wire::result_status(e));
      r["text"] = e.text;
      r["error"] = e.error;
      r["missing"] = e.missing;
      r["latency_ms"] = e.latency_ms;
      r["trace"] = moa::net::wire::trace_json(e.trace);
      if (e.layout) r["layout"] = moa::net::wire::layout_json(*e.layout);
      if (!e.refusal.empty()) r["refusal"] = e.refusal;
      if (refused && code != exit_unreachable) code = exit_refused;
      if (over_capacity && (code == 0 || code == 1)) code = exit_over_capacity;
      if (!refused && !over_capacity && e.text.empty() && code == 0) code = 1;
    }
    if (!json) {
      const std::string status = r["status"];
      if (outcomes.size() > 1) std::cout << "[" << i + 1 << "] ";
      if (r.contains("text") && !r["text"].get<std::string>().empty())
        std::cout << r["text"].get<std::string>() << '\n';
      else if (outcomes.size() > 1)
        std::cout << '(' << status << ")\n";
      if (!r["error"].get<std::string>().empty())
        std::cerr << "moa submit: prompt " << i + 1 << " " << status << ": "
                  << r["error"].get<std::string>() << '\n';
    }
    results.push_back(std::move(r));
  }
  if (json)
    std::cout << nlohmann::json{{"device", s.device}, {"results", std::move(results)}}.dump(2)
              << '\n';
  return code;
}

/// Adds `moa submit`.
inline void add_submit_command(CLI::App& app, int& exit_code) {
  auto s = std::make_shared<submit_settings>();
  auto* cmd = app.add_subcommand(
      "submit",
      "Sends prompts to a device of a ZeroMQ network and prints the answers (or reads its stats, "
      "or stops it). Exit: 0 answered, 1 a prompt failed, 2 bad input, 3 refused, 4 unreachable, "
      "5 over capacity (the adaptive policy refused a prompt)");
  cmd->add_option("--device", s->device, "The device's endpoint, e.g. tcp://10.0.0.7:5550")
      ->required()
      ->check(zmq_endpoint());
  cmd->add_option("-p,--prompt", s->prompts, "A prompt (repeat for more)");
  cmd->add_option("--prompt-file", s->prompt_files, "A file holding one prompt (repeat; - stdin)");
  cmd->add_option("--system", s->system, "A system message sent before each prompt");
  cmd->add_flag("--stats", s->stats, "Print the device's counters (JSON) instead");
  cmd->add_flag("--stop", s->stop, "Stop the device gracefully instead");
  cmd->add_option("--timeout-ms", s->timeout_ms, "How long to wait for every result")
      ->capture_default_str()
      ->check(number_in(1, max_duration_ms));
  cmd->add_option("--format", s->format, "text or json (each result with its trace)")
      ->capture_default_str()
      ->check(CLI::IsMember({"text", "json"}));
  cmd->add_option("--key", s->key, "This client's secret key file (NAME.key from moa keygen)");
  cmd->add_option("--server-key", s->server_key, "The device's public key file (NAME.pub)");
  cmd->add_flag("--insecure-plaintext", s->insecure_plaintext,
                "No keys: plain text to a device started so (loopback only)");
  cmd->callback([s, &exit_code] { exit_code = submit_command(*s); });
}

}  // namespace moa::cli
