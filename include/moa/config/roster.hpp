// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Rosters: a JSON file that names each model (endpoint, model name, key, timeout, retries,
/// context budget, prices) and the layouts over those names (layers, aggregator, policy).
///
/// @code{.json}
/// {
///   "concurrency_per_endpoint": 4,
///   "models": {
///     "qwen":  {"endpoint": "http://127.0.0.1:8080/v1", "timeout_ms": 60000, "retries": 2,
///               "context_tokens": 8192, "price_in_per_mtok": 0.1, "price_out_per_mtok": 0.3},
///     "llama": {"endpoint": "http://127.0.0.1:8081/v1", "api_key_env": "LLAMA_KEY"}
///   },
///   "layouts": {
///     "moa2": {"layers": [["qwen", "llama"], ["qwen", "llama"]], "aggregator": "qwen"},
///     "vote": {"layers": [["qwen", "llama"]], "aggregator": "qwen", "policy": "vote"},
///     "dag":  {"nodes": ["qwen", "llama", "qwen"], "edges": [[0, 1], [0, 2], [1, 2]]}
///   }
/// }
/// @endcode
///
/// A layout is layered (`layers` of proposer names and an `aggregator`), a single model
/// (`model`), or a DAG: `nodes` (a model name per node; a model may run several nodes) and
/// `edges` ([from, to] node indices: from's answer is a reference of to). The DAG must be acyclic
/// with one sink (the node that feeds nothing gives the answer) that every node reaches; it is
/// checked when the roster is read. A DAG layout synthesises at its sink (no other policy).
///
/// Every model is also a single-model layout of its own name (the baseline), unless a layout of
/// that name exists. Why JSON rather than TOML: nlohmann-json is already the dependency of the HTTP
/// backend and of the `moa` program, so a roster costs no new library, and nested lists of
/// proposer names read naturally in JSON; TOML would add libtomlplusplus for the same data.
///
/// Validation is strict: an unknown or misspelt key, a wrong type or a value out of range is a
/// config_error naming the key's path (`models.qwen.timeout_ms`) and what is allowed.
///
/// The OpenAI clients' environment is honoured: a model without `endpoint` uses
/// `$OPENAI_BASE_URL` (else https://api.openai.com/v1), and a model without `api_key` or
/// `api_key_env` reads its key from `$OPENAI_API_KEY`.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "moa/aggregator.hpp"
#include "moa/backends/synthetic.hpp"
#include "moa/core/backend.hpp"
#include "moa/core/error.hpp"
#include "moa/topology/dag.hpp"
#include "moa/topology/layered.hpp"

namespace moa::config {

/// @brief A roster (or a file read for one) is invalid: the message names the key or line.
class config_error : public invalid_argument {
 public:
  using invalid_argument::invalid_argument;
};

/// @brief One model of a roster.
struct model_spec {
  std::string name{};
  /// "openai" (any OpenAI-compatible endpoint), "synthetic", or "device": a ZeroMQ device
  /// network (docs/NETWORK.md) reached through one of its devices, which runs the gossip MoA
  /// for each prompt (moa/config/roster_device.hpp builds its backend)
  std::string kind = "openai";
  std::string endpoint{};     ///< openai: empty is $OPENAI_BASE_URL, else the OpenAI API; device:
                              ///< tcp://HOST:PORT or ipc://PATH, required
  std::string model{};        ///< the `model` field sent; empty: omitted
  std::string api_key{};      ///< literal key (prefer api_key_env)
  std::string api_key_env{};  ///< variable holding the key; empty: OPENAI_API_KEY
  std::chrono::milliseconds timeout{0};  ///< per call; 0: the backend's default (HTTP: 5 min)
  int retries = 2;                       ///< retries after the first attempt
  std::size_t context_tokens = 0;        ///< context window; 0: unknown (references not trimmed)
  int max_tokens = 512;
  double temperature = 0.7;
  double price_in_per_mtok = 0.0;   ///< price of a million prompt tokens
  double price_out_per_mtok = 0.0;  ///< price of a million completion tokens
  std::size_t concurrency = 0;      ///< calls in flight to its endpoint; 0: the roster's default
  // kind "synthetic" only: planted answers (prompt -> answer) and a mean latency.
  std::map<std::string, std::string> answers{};
  double latency_ms = 0.0;
  // kind "device" only: this client's secret key file (moa keygen) and the device's public key
  // file, or plain text (loopback endpoints only, asked for explicitly).
  std::string key_file{};
  std::string server_key_file{};
  bool insecure_plaintext = false;

  /// The cost of `u` at this model's prices.
  [[nodiscard]] double cost(const usage& u) const noexcept {
    return (double(u.prompt_tokens) * price_in_per_mtok +
            double(u.completion_tokens) * price_out_per_mtok) /
           1e6;
  }
};

/// @brief An aggregation policy by name (moa/aggregate/policies.hpp), as rosters and the
/// command line give it; make_policy builds it.
struct policy_spec {
  std::string name = "synthesis";  ///< synthesis, vote, judge, rank-fuse or sparse
  std::string extract = "whole";   ///< what vote and the sparse moderator compare: whole, number,
                                   ///< letter
  std::optional<std::uint32_t> judge{};  ///< judges or ranks (a backend index); default: the sink
  std::size_t top = 2;                   ///< rank-fuse: answers fused
  std::size_t keep = 2;                  ///< sparse: answers passed on per layer
  bool moderate = false;                 ///< sparse: stop early when every answer agrees
};

/// @brief One layout: a layered MoA over model names, or a single model (no layers).
struct layout_spec {
  std::string name{};
  std::vector<std::vector<std::string>> layers{};
  std::string aggregator{};
  std::string policy = "synthesis";  ///< synthesis, vote, judge, rank-fuse, sparse
  std::string extract = "whole";     ///< what vote compares: whole, number, letter
  std::string judge{};               ///< judge/rank-fuse/sparse: the judging model; empty: sink
  std::size_t top = 2;               ///< rank-fuse: answers fused
  std::size_t keep = 2;              ///< sparse: answers passed on per layer
  bool moderate = false;             ///< sparse: stop early when every answer agrees
  /// A DAG layout: the model of each node, and [from, to] edges between node indices (empty:
  /// layered). `aggregator` is then the sink's model.
  std::vector<std::string> nodes{};
  std::vector<std::pair<std::uint32_t, std::uint32_t>> edges{};
  /// `moa serve`'s adaptive layout policy for this layout (docs/ADAPTIVE.md): null when absent,
  /// else true, false or an object of its options, which `moa serve` checks (other commands run
  /// the layout as written).
  nlohmann::json adaptive{};

  /// Every model the layout calls, in first-use order (the aggregator last if new).
  [[nodiscard]] std::vector<std::string> models() const {
    std::vector<std::string> out;
    auto add = [&](const std::string& m) {
      if (!m.empty() && std::find(out.begin(), out.end(), m) == out.end()) out.push_back(m);
    };
    for (const auto& m : nodes) add(m);
    for (const auto& l : layers)
      for (const auto& m : l) add(m);
    add(aggregator);
    add(judge);
    return out;
  }
};

/// @brief Models and layouts, validated.
struct roster {
  std::vector<model_spec> models{};
  std::vector<layout_spec> layouts{};
  std::size_t concurrency_per_endpoint = 4;

  [[nodiscard]] const model_spec* find_model(std::string_view name) const noexcept {
    for (const auto& m : models)
      if (m.name == name) return &m;
    return nullptr;
  }
  [[nodiscard]] const model_spec& model(std::string_view name) const {
    if (const auto* m = find_model(name)) return *m;
    MOA_THROW(config_error("roster: no model named \"" + std::string(name) + "\"; the roster has " +
                           names_of(models)));
  }
  /// A named layout, or the single-model layout of a model of that name.
  [[nodiscard]] layout_spec layout(std::string_view name) const {
    for (const auto& l : layouts)
      if (l.name == name) return l;
    if (find_model(name))
      return layout_spec{.name = std::string(name), .aggregator = std::string(name)};
    MOA_THROW(config_error("roster: no layout or model named \"" + std::string(name) +
                           "\"; layouts: " + names_of(layouts) + "; models: " + names_of(models)));
  }
  /// The per-endpoint limit of calls in flight: the smallest `concurrency` among its models.
  [[nodiscard]] std::size_t endpoint_limit(std::string_view endpoint) const noexcept {
    std::size_t limit = 0;
    for (const auto& m : models)
      if (m.endpoint == endpoint && m.concurrency > 0)
        limit = limit == 0 ? m.concurrency : std::min(limit, m.concurrency);
    return limit == 0 ? concurrency_per_endpoint : limit;
  }

 private:
  template <class T>
  static std::string names_of(const std::vector<T>& v) {
    std::string out;
    for (const auto& x : v) out += (out.empty() ? "" : ", ") + x.name;
    return out.empty() ? "none" : out;
  }
};

namespace detail {

// Reads one JSON object, refusing keys it was not asked about and values of the wrong type or
// range; every message names the full key path.
class object_reader {
 public:
  object_reader(const nlohmann::json& j, std::string path) : j_(j), path_(std::move(path)) {
    if (!j_.is_object()) fail(path_, "must be an object");
  }
  ~object_reader() = default;
  object_reader(const object_reader&) = delete;
  object_reader& operator=(const object_reader&) = delete;

  [[nodiscard]] std::string key_path(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }
  [[nodiscard]] const nlohmann::json* get(std::string_view key) {
    known_.insert(std::string(key));
    auto it = j_.find(std::string(key));
    return it == j_.end() ? nullptr : &*it;
  }
  void string(std::string_view key, std::string& out) {
    if (const auto* v = get(key)) {
      if (!v->is_string()) fail(key_path(key), "must be a string");
      out = v->get<std::string>();
    }
  }
  template <class Int>
  void integer(std::string_view key, Int& out, long long lo, long long hi) {
    if (const auto* v = get(key)) {
      if (!v->is_number_integer()) fail(key_path(key), "must be an integer");
      const auto x = v->get<long long>();
      if (x < lo || x > hi)
        fail(key_path(key), "must be between " + std::to_string(lo) + " and " + std::to_string(hi) +
                                ", not " + std::to_string(x));
      out = static_cast<Int>(x);
    }
  }
  void number(std::string_view key, double& out, double lo, double hi) {
    if (const auto* v = get(key)) {
      if (!v->is_number()) fail(key_path(key), "must be a number");
      const double x = v->get<double>();
      if (!std::isfinite(x) || x < lo || x > hi) {
        std::ostringstream os;
        os << "must be between " << lo << " and " << hi << ", not " << x;
        fail(key_path(key), os.str());
      }
      out = x;
    }
  }
  void boolean(std::string_view key, bool& out) {
    if (const auto* v = get(key)) {
      if (!v->is_boolean()) fail(key_path(key), "must be true or false");
      out = v->get<bool>();
    }
  }
  void one_of(std::string_view key, std::string& out,
              std::initializer_list<std::string_view> allowed) {
    string(key, out);
    for (auto a : allowed)
      if (out == a) return;
    std::string list;
    for (auto a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
    fail(key_path(key), "must be one of " + list + ", not \"" + out + "\"");
  }
  /// Fails on the first key nobody asked about.
  void done() const {
    for (auto it = j_.begin(); it != j_.end(); ++it)
      if (!known_.count(it.key())) {
        std::string list;
        for (const auto& k : known_) list += (list.empty() ? "" : ", ") + k;
        fail(key_path(it.key()), "is not a known key (known here: " + list + ")");
      }
  }
  [[noreturn]] static void fail(const std::string& path, const std::string& what) {
    MOA_THROW(config_error("roster: " + (path.empty() ? std::string("the top level") : path) + " " +
                           what));
  }

 private:
  const nlohmann::json& j_;
  std::string path_;
  std::set<std::string> known_;
};

inline model_spec read_model(const std::string& name, const nlohmann::json& j) {
  object_reader r(j, "models." + name);
  model_spec m;
  m.name = name;
  r.one_of("kind", m.kind, {"openai", "synthetic", "device"});
  r.string("endpoint", m.endpoint);
  r.string("model", m.model);
  r.string("api_key", m.api_key);
  r.string("api_key_env", m.api_key_env);
  if (!m.api_key.empty() && !m.api_key_env.empty())
    object_reader::fail(r.key_path("api_key"), "and api_key_env are exclusive: give one");
  std::int64_t timeout = 0;
  r.integer("timeout_ms", timeout, 0, 24LL * 3600 * 1000);
  m.timeout = std::chrono::milliseconds(timeout);
  r.integer("retries", m.retries, 0, 20);
  r.integer("context_tokens", m.context_tokens, 0, 1LL << 30);
  r.integer("max_tokens", m.max_tokens, 1, 1 << 24);
  r.number("temperature", m.temperature, 0.0, 2.0);
  r.number("price_in_per_mtok", m.price_in_per_mtok, 0.0, 1e6);
  r.number("price_out_per_mtok", m.price_out_per_mtok, 0.0, 1e6);
  r.integer("concurrency", m.concurrency, 0, 4096);
  r.number("latency_ms", m.latency_ms, 0.0, 3.6e6);
  if (const auto* a = r.get("answers")) {
    object_reader ar(*a, r.key_path("answers"));
    for (auto it = a->begin(); it != a->end(); ++it) {
      std::string v;
      ar.string(it.key(), v);
      m.answers.emplace(it.key(), std::move(v));
    }
  }
  if (m.kind != "synthetic" && (!m.answers.empty() || m.latency_ms > 0))
    object_reader::fail(r.key_path("answers"),
                        "and latency_ms are for kind \"synthetic\" models only");
  r.string("key_file", m.key_file);
  r.string("server_key_file", m.server_key_file);
  r.boolean("insecure_plaintext", m.insecure_plaintext);
  if (m.kind == "device") {
    // A device runs its own models: what an OpenAI request would carry means nothing to it.
    for (const char* k : {"model", "api_key", "api_key_env", "retries", "context_tokens",
                          "max_tokens", "temperature"})
      if (j.contains(k))
        object_reader::fail(r.key_path(k),
                            "is not a setting of a kind \"device\" model (its "
                            "device runs its own models)");
    const bool scheme = m.endpoint.rfind("tcp://", 0) == 0 || m.endpoint.rfind("ipc://", 0) == 0;
    if (!scheme || m.endpoint.size() <= 6 || m.endpoint.size() > 1024)
      object_reader::fail(r.key_path("endpoint"),
                          "must be a device's ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH)");
    if (m.insecure_plaintext != (m.key_file.empty() && m.server_key_file.empty()))
      object_reader::fail(r.key_path("key_file"),
                          "and server_key_file (both), or insecure_plaintext: true (loopback "
                          "only), say how to reach the device; give one of them");
    if (!m.insecure_plaintext && (m.key_file.empty() || m.server_key_file.empty()))
      object_reader::fail(r.key_path(m.key_file.empty() ? "key_file" : "server_key_file"),
                          "is missing: a device is reached with this client's secret key file "
                          "and the device's public key file (moa keygen)");
  } else if (!m.key_file.empty() || !m.server_key_file.empty() || m.insecure_plaintext) {
    object_reader::fail(r.key_path("key_file"),
                        "server_key_file and insecure_plaintext are for kind \"device\" models "
                        "only");
  }
  if (m.context_tokens > 0 && std::size_t(m.max_tokens) >= m.context_tokens)
    object_reader::fail(r.key_path("max_tokens"),
                        "must be below context_tokens (" + std::to_string(m.context_tokens) + ")");
  r.done();
  return m;
}

inline std::vector<std::string> read_names(const nlohmann::json& j, const std::string& path) {
  if (!j.is_array() || j.empty())
    object_reader::fail(path, "must be a non-empty list of model names");
  std::vector<std::string> out;
  for (std::size_t i = 0; i < j.size(); ++i) {
    if (!j[i].is_string())
      object_reader::fail(path + "[" + std::to_string(i) + "]", "must be a model name (a string)");
    out.push_back(j[i].get<std::string>());
  }
  return out;
}

inline layout_spec read_layout(const std::string& name, const nlohmann::json& j) {
  object_reader r(j, "layouts." + name);
  layout_spec l;
  l.name = name;
  std::string single;
  r.string("model", single);
  if (const auto* layers = r.get("layers")) {
    if (!layers->is_array()) object_reader::fail(r.key_path("layers"), "must be a list of layers");
    for (std::size_t i = 0; i < layers->size(); ++i)
      l.layers.push_back(
          read_names((*layers)[i], r.key_path("layers") + "[" + std::to_string(i) + "]"));
  }
  r.string("aggregator", l.aggregator);
  if (const auto* a = r.get("adaptive")) {
    if (!a->is_boolean() && !a->is_object())
      object_reader::fail(r.key_path("adaptive"),
                          "must be true, false or an object of moa serve's adaptive options");
    l.adaptive = *a;
  }
  if (const auto* p = r.get("policy")) {
    if (p->is_string()) {
      r.one_of("policy", l.policy, {"synthesis", "vote", "judge", "rank-fuse", "sparse"});
    } else {
      object_reader pr(*p, r.key_path("policy"));
      pr.one_of("name", l.policy, {"synthesis", "vote", "judge", "rank-fuse", "sparse"});
      pr.one_of("extract", l.extract, {"whole", "number", "letter"});
      pr.string("judge", l.judge);
      pr.integer("top", l.top, 1, 64);
      pr.integer("keep", l.keep, 1, 64);
      pr.boolean("moderate", l.moderate);
      pr.done();
    }
  }
  if (const auto* nodes = r.get("nodes")) {
    l.nodes = read_names(*nodes, r.key_path("nodes"));
    if (l.nodes.size() > 64) object_reader::fail(r.key_path("nodes"), "holds more than 64 nodes");
    if (!l.layers.empty() || !l.aggregator.empty() || !single.empty())
      object_reader::fail(r.key_path("nodes"),
                          "names a DAG layout: give no layers, aggregator or model with it");
    if (l.policy != "synthesis")
      object_reader::fail(r.key_path("policy"),
                          "must be synthesis for a DAG layout (its sink synthesises)");
    const auto* edges = r.get("edges");
    if (edges && !edges->is_array())
      object_reader::fail(r.key_path("edges"), "must be a list of [from, to] node indices");
    const auto n = l.nodes.size();
    Eigen::MatrixXd adjacency = Eigen::MatrixXd::Zero(Eigen::Index(n), Eigen::Index(n));
    for (std::size_t i = 0; edges && i < edges->size(); ++i) {
      const auto& e = (*edges)[i];
      const auto path = r.key_path("edges") + "[" + std::to_string(i) + "]";
      if (!e.is_array() || e.size() != 2 || !e[0].is_number_unsigned() ||
          !e[1].is_number_unsigned() || e[0].get<std::uint64_t>() >= n ||
          e[1].get<std::uint64_t>() >= n || e[0] == e[1])
        object_reader::fail(
            path, "must be [from, to]: two different node indices below " + std::to_string(n));
      const auto from = e[0].get<std::uint32_t>(), to = e[1].get<std::uint32_t>();
      l.edges.emplace_back(from, to);
      adjacency(from, to) = 1;
    }
    std::vector<std::uint32_t> backends(n);
    for (std::uint32_t i = 0; i < n; ++i) backends[i] = i;
    const dag_topology dag(std::move(adjacency), std::move(backends));
    try {
      l.aggregator = l.nodes[dag.sink()];
    } catch (const topology_error& e) {
      object_reader::fail(r.key_path("edges"), std::string("do not make a valid DAG: ") + e.what());
    }
  } else if (r.get("edges")) {
    object_reader::fail(r.key_path("edges"), "needs nodes: give the model of each node");
  }
  if (!single.empty()) {
    if (!l.layers.empty() || !l.aggregator.empty())
      object_reader::fail(r.key_path("model"),
                          "names a single-model layout: give no layers or aggregator with it");
    l.aggregator = single;
  }
  if (l.aggregator.empty())
    object_reader::fail(r.key_path("aggregator"),
                        "is missing: name the model that answers last (or give \"model\")");
  r.done();
  return l;
}

}  // namespace detail

/// @brief Reads a roster from parsed JSON; throws config_error naming the key at fault.
inline roster parse_roster(const nlohmann::json& j) {
  detail::object_reader r(j, "");
  roster out;
  r.integer("concurrency_per_endpoint", out.concurrency_per_endpoint, 1, 4096);
  const auto* models = r.get("models");
  if (!models || !models->is_object() || models->empty())
    detail::object_reader::fail("models", "must be a non-empty object of name: model");
  for (auto it = models->begin(); it != models->end(); ++it)
    out.models.push_back(detail::read_model(it.key(), it.value()));
  if (const auto* layouts = r.get("layouts")) {
    if (!layouts->is_object())
      detail::object_reader::fail("layouts", "must be an object of name: layout");
    for (auto it = layouts->begin(); it != layouts->end(); ++it)
      out.layouts.push_back(detail::read_layout(it.key(), it.value()));
  }
  r.done();
  for (const auto& l : out.layouts) {
    for (const auto& m : l.models())
      if (!out.find_model(m))
        detail::object_reader::fail("layouts." + l.name,
                                    "names model \"" + m + "\", which is not in models");
  }
  return out;
}

/// @brief Reads a roster file; a syntax error names file:line:column.
inline roster load_roster(const std::string& path) {
  std::ifstream in(path);
  if (!in) MOA_THROW(config_error("roster: cannot open " + path));
  std::stringstream text;
  text << in.rdbuf();
  const std::string s = text.str();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(s);
  } catch (const nlohmann::json::parse_error& e) {
    std::size_t line = 1, col = 1;
    for (std::size_t i = 0; i + 1 < e.byte && i < s.size(); ++i, ++col)
      if (s[i] == '\n') ++line, col = 0;
    MOA_THROW(config_error(path + ":" + std::to_string(line) + ":" + std::to_string(col) +
                           ": not valid JSON (" + e.what() + ")"));
  }
  roster out;
  try {
    out = parse_roster(j);
  } catch (const config_error& e) {
    MOA_THROW(config_error(path + ": " + e.what()));
  }
  // Key files are found beside the roster (as a deployment ships them), wherever it is run from.
  const auto folder = std::filesystem::path(path).parent_path();
  for (auto& m : out.models)
    for (auto* f : {&m.key_file, &m.server_key_file})
      if (!f->empty() && std::filesystem::path(*f).is_relative()) *f = (folder / *f).string();
  return out;
}

/// @brief Reads an environment variable; tests pass their own.
using env_lookup = std::function<std::optional<std::string>(const char*)>;

inline std::optional<std::string> process_env(const char* name) {
  if (const char* v = std::getenv(name)) return std::string(v);  // NOLINT(concurrency-mt-unsafe)
  return std::nullopt;
}

/// @brief The base URL a model is called at, as the OpenAI clients resolve it.
inline std::string resolved_endpoint(const model_spec& m, const env_lookup& env = process_env) {
  if (!m.endpoint.empty()) return m.endpoint;
  if (auto v = env("OPENAI_BASE_URL"); v && !v->empty()) return *v;
  return "https://api.openai.com/v1";
}

/// @brief The environment variable a model's key is read from (when no literal key is given).
inline std::string resolved_key_env(const model_spec& m) {
  return m.api_key_env.empty() ? "OPENAI_API_KEY" : m.api_key_env;
}

/// @brief A synthetic backend for a `kind: "synthetic"` model: planted answers by prompt (the
/// hash answer for other prompts) and an exponential latency of mean latency_ms.
inline synthetic_backend make_synthetic(const model_spec& m) {
  synthetic_options o;
  o.name = m.name;
  if (m.latency_ms > 0)
    o.latency = latency_model::exponential(
        std::chrono::nanoseconds(static_cast<std::int64_t>(m.latency_ms * 1e6)));
  if (!m.answers.empty())
    o.answer = [answers = m.answers, name = m.name](const request& r) {
      auto it = answers.find(std::string(r.prompt()));
      return it != answers.end() ? it->second : synthetic_answer(name, request_hash(r));
    };
  return synthetic_backend(std::move(o));
}

/// @brief The aggregation policy named by `p`; empty for synthesis (the topology's aggregator).
inline any_aggregator make_policy(const policy_spec& p) {
  answer_extractor extract = whole_answer{};
  if (p.extract == "number") extract = last_number{};
  if (p.extract == "letter") extract = option_letter{};
  if (p.name == "vote") return any_aggregator(vote_policy{.extract = extract});
  if (p.name == "judge") return any_aggregator(judge_policy{.judge = p.judge, .extract = extract});
  if (p.name == "rank-fuse")
    return any_aggregator(rank_fuse_policy{.judge = p.judge, .top = p.top});
  if (p.name == "sparse") {
    sparse_policy s{.judge = p.judge, .keep = p.keep};
    if (p.moderate) s.moderator = agreement{.extract = extract};
    return any_aggregator(std::move(s));
  }
  return {};
}

/// @brief The aggregation policy of a layout (empty for synthesis); `index` maps a model name to
/// its backend index in the layout's pipeline.
inline any_aggregator make_policy(const layout_spec& l,
                                  const std::function<std::uint32_t(const std::string&)>& index) {
  policy_spec p{
      .name = l.policy, .extract = l.extract, .top = l.top, .keep = l.keep, .moderate = l.moderate};
  if (!l.judge.empty()) p.judge = index(l.judge);
  return make_policy(p);
}

/// @brief A layout's topology over its own backend list (`l.models()` order).
inline layered_topology make_topology(const layout_spec& l) {
  const auto names = l.models();
  auto index = [&](const std::string& n) {
    return static_cast<std::uint32_t>(std::find(names.begin(), names.end(), n) - names.begin());
  };
  layered_topology t;
  for (const auto& layer : l.layers) {
    t.layers.emplace_back();
    for (const auto& m : layer) t.layers.back().push_back(index(m));
  }
  t.aggregator = index(l.aggregator);
  return t;
}

/// @brief A layout's plan over its own backend list (`l.models()` order): layered, a single
/// model, or a DAG.
inline plan make_plan(const layout_spec& l) {
  if (l.nodes.empty()) return make_topology(l).make_plan();
  const auto names = l.models();
  const auto n = static_cast<Eigen::Index>(l.nodes.size());
  Eigen::MatrixXd adjacency = Eigen::MatrixXd::Zero(n, n);
  for (const auto& [from, to] : l.edges) adjacency(from, to) = 1;
  std::vector<std::uint32_t> backends;
  for (const auto& m : l.nodes)
    backends.push_back(
        static_cast<std::uint32_t>(std::find(names.begin(), names.end(), m) - names.begin()));
  return dag_topology(std::move(adjacency), std::move(backends)).make_plan();
}

}  // namespace moa::config
