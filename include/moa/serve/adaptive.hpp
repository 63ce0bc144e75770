// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// `moa serve --adaptive`: the adaptive layout policy (moa/queueing/adaptive.hpp, the same class
/// the simulator and the in-process network drive) choosing, per request, how much of one served
/// layered layout to run, and refusing requests when even the smallest allowed layout would
/// overload its models.
///
/// The mapping onto the policy's gossip model (docs/ADAPTIVE.md, "moa serve"):
/// - each distinct model of the layout is a *device*: one FCFS server with its own mean service
///   time (the aggregator's model included); device j is the layout's backend j;
/// - every request arrives at one origin, the aggregator's device: it proposes in each layer and
///   synthesises at the end, (M + 1) calls, as a gossip origin does;
/// - a layout (M, k) runs the first M layers of the roster's layout, each holding the aggregator
///   and k of the other n - 1 models, taken in turn (a rotation over all requests), so every other
///   model receives M k / (n - 1) calls per request on average: the uniform gossip the policy's
///   traffic equations assume. (M, k) = (L, n - 1) is the roster's layout itself.
/// Hence the layout must be layered, with the `synthesis` policy (no policy calls outside the
/// (k + 1) M + 1 the policy counts), and every layer must hold every model of the layout once.
///
/// The policy is fed every request's arrival (the server's clock, seconds since it started) and,
/// when a run ends, the duration of each of its calls that reached its model (ok, empty or timed
/// out; failed calls may have ended at once without the model working, and are not counted).
///
/// @code{.cpp}
/// moa::serve::server_options opt;
/// opt.adaptive.layout = "moa";                 // a layered layout of the roster
/// opt.adaptive.policy.allowed = {{2, 2}, {1, 1}};
/// opt.adaptive.policy.rate_window = 60;        // seconds
/// moa::serve::openai_server server(roster, moa::serve::roster_backends, opt);
/// @endcode

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "moa/config/roster.hpp"
#include "moa/core/error.hpp"
#include "moa/core/result.hpp"
#include "moa/queueing/adaptive.hpp"
#include "moa/topology/layered.hpp"

namespace moa::serve {

/// @brief The adaptive policy of one served layout (off while `layout` is empty).
struct adaptive_serve_options {
  std::string layout{};  ///< the layered layout the policy chooses for; empty: off
  /// The policy's settings, times in seconds. `devices` 0 takes the layout's model count (any
  /// other value must equal it); `prior_service` is one value for all or one per model (in the
  /// layout's model order, l.models()).
  queueing::adaptive_config policy{.devices = 0,
                                   .allowed = {},
                                   .prior_service = {1.0},
                                   .rate_window = 60,
                                   .warmup_arrivals = 20};
  /// Seconds since the server started, non-decreasing; empty: the steady clock. Tests pass a
  /// clock of their own, so that nothing depends on how fast the machine is.
  std::function<double()> clock{};
};

/// @brief One request's decision: admitted with a plan, or refused with a Retry-After.
struct adaptive_choice {
  queueing::layout_decision decision{};
  std::shared_ptr<const plan> run{};                  ///< the plan to run (admitted only)
  std::vector<std::vector<std::string>> proposers{};  ///< model names per layer (admitted only)
  std::chrono::seconds retry_after{0};                ///< refused only
};

/// @brief The adaptive policy of a served layout, shared by the server's threads.
class adaptive_layout {
 public:
  /// The layouts a roster layout allows: every (M, k) with M up to its layers and k up to the
  /// other models, plus (1, 0), most calls first. At most 64 (the policy's bound).
  static std::vector<queueing::layout> default_layouts(std::size_t layers, std::size_t models) {
    std::vector<queueing::layout> out;
    for (std::size_t m = layers; m >= 1; --m)
      for (std::size_t k = models - 1; k >= 1; --k)
        out.push_back({std::uint32_t(m), std::uint32_t(k)});
    out.push_back({1, 0});
    std::stable_sort(out.begin(), out.end(),
                     [](const auto& a, const auto& b) { return a.calls() > b.calls(); });
    if (out.size() > 64) out.resize(64);
    return out;
  }

  /// Checks that `spec` can be served adaptively (see the file comment) and builds the policy;
  /// throws config_error naming what is wrong.
  adaptive_layout(const config::layout_spec& spec, adaptive_serve_options opt)
      : models_(spec.models()), clock_(std::move(opt.clock)), start_(clock::now()) {
    const auto fail = [&](const std::string& why) {
      MOA_THROW(config::config_error("moa serve --adaptive: layout \"" + spec.name + "\" " + why));
    };
    if (!spec.nodes.empty()) fail("is a DAG; the adaptive policy chooses layers of a layered MoA");
    if (spec.layers.empty())
      fail("is a single model; the adaptive policy needs a layered layout (layers and aggregator)");
    if (spec.policy != "synthesis")
      fail("has policy " + spec.policy +
           "; the adaptive policy counts (k+1)M+1 calls, which only synthesis makes");
    if (models_.size() < 2) fail("calls one model; the adaptive policy needs at least 2");
    auto sorted = models_;
    std::sort(sorted.begin(), sorted.end());
    for (std::size_t l = 0; l < spec.layers.size(); ++l) {
      auto layer = spec.layers[l];
      std::sort(layer.begin(), layer.end());
      if (layer != sorted)
        fail("has a layer (" + std::to_string(l) +
             ") that does not hold every model of the layout once; the adaptive policy runs each "
             "layer as the aggregator and k of the others, taken in turn");
    }
    layers_ = spec.layers;
    aggregator_ = index(spec.aggregator);
    for (std::uint32_t j = 0; j < models_.size(); ++j)
      if (j != aggregator_) others_.push_back(j);
    auto& cfg = opt.policy;
    if (cfg.devices == 0) cfg.devices = models_.size();
    if (cfg.devices != models_.size())
      fail("has " + std::to_string(models_.size()) + " models, not " + std::to_string(cfg.devices) +
           " devices");
    if (cfg.allowed.empty()) cfg.allowed = default_layouts(layers_.size(), models_.size());
    for (const auto& a : cfg.allowed)
      if (a.layers > layers_.size())
        fail("has " + std::to_string(layers_.size()) + " layers: an allowed layout of " +
             std::to_string(a.layers) + " is deeper (the roster's layout is the largest)");
    try {
      policy_.emplace(std::move(cfg));
    } catch (const moa::invalid_argument& e) {
      fail(std::string("(--adaptive): ") + e.what());
    } catch (const moa::topology_error& e) {  // a fan-out over the other models
      fail(std::string("(--adaptive): ") + e.what());
    }
  }

  [[nodiscard]] const std::vector<std::string>& models() const noexcept { return models_; }
  [[nodiscard]] const queueing::adaptive_config& config() const noexcept {
    return policy_->config();
  }

  /// Records one request's arrival and decides its layout (or its refusal).
  adaptive_choice decide() {
    adaptive_choice out;
    const std::lock_guard lock(mutex_);
    // The time is read under the lock, so the policy sees arrivals in order.
    out.decision = policy_->decide(aggregator_, now());
    const auto& d = out.decision;
    last_utilisation_ = d.utilisation;
    if (!d.admitted) {
      // The rate estimate decays with time constant rate_window: without new arrivals it falls
      // from rho to the target in rate_window ln(rho / target), when every request is admitted
      // again. At least 1 s (HTTP's unit), at most an hour.
      const double t =
          config().rate_window * std::log(d.utilisation / std::max(config().target, 1e-9));
      out.retry_after = std::chrono::seconds(
          std::isfinite(t) ? std::clamp<std::int64_t>(std::int64_t(std::ceil(t)), 1, 3600) : 1);
      return out;
    }
    layered_topology t;
    t.aggregator = aggregator_;
    for (std::uint32_t l = 0; l < d.layers; ++l) {
      // The aggregator and the next k of the others in turn, in the roster layer's order (so the
      // full layout runs exactly the roster's plan).
      std::vector<bool> in(models_.size(), false);
      in[aggregator_] = true;
      for (std::uint32_t i = 0; i < d.fanout; ++i) in[others_[(turn_ + i) % others_.size()]] = true;
      turn_ = (turn_ + d.fanout) % others_.size();
      t.layers.emplace_back();
      out.proposers.emplace_back();
      for (const auto& name : layers_[l])
        if (const auto j = index(name); in[j]) {
          t.layers.back().push_back(j);
          out.proposers.back().push_back(name);
        }
    }
    out.run = std::make_shared<const plan>(t.make_plan());
    return out;
  }

  /// Feeds the durations of a finished run's calls (those that reached their model).
  void observe(const result& r) {
    const std::lock_guard lock(mutex_);
    for (const auto& c : r.trace)
      if (c.status == call_status::ok || c.status == call_status::empty ||
          c.status == call_status::timed_out)
        policy_->observe_service(c.backend, std::chrono::duration<double>(c.duration()).count());
  }

  /// The decision as the trace extension shows it.
  [[nodiscard]] nlohmann::json to_json(const adaptive_choice& c) const {
    const auto& d = c.decision;
    nlohmann::json j = {{"admitted", d.admitted},
                        {"reason", std::string(queueing::to_string(d.reason))},
                        {"utilisation", d.utilisation},
                        {"target", config().target},
                        {"bottleneck", models_.at(d.bottleneck)},
                        {"offered_rate", d.offered_rate},
                        {"why", d.why()}};
    if (d.admitted) {
      j["layers"] = d.layers;
      j["fanout"] = d.fanout;
      j["proposers"] = c.proposers;
    } else {
      j["retry_after_s"] = c.retry_after.count();
    }
    return j;
  }

  /// The 429 message of a refusal: the estimate, the limit and the bottleneck model.
  [[nodiscard]] std::string refusal_message(const adaptive_choice& c) const {
    const auto& d = c.decision;
    std::ostringstream os;
    os << "over capacity: at the smallest allowed layout the estimated utilisation of model \""
       << models_.at(d.bottleneck) << "\" is " << d.utilisation << ", over the target "
       << config().target << " (" << d.offered_rate << " requests/s offered); retry after "
       << c.retry_after.count() << " s";
    return os.str();
  }

  /// Prometheus text for GET /metrics; `model` is the served layout's name.
  [[nodiscard]] std::string metrics(const std::string& model) const {
    const std::lock_guard lock(mutex_);
    std::ostringstream os;
    // A label value escapes backslash, quote and newline (Prometheus text format).
    std::string escaped;
    for (const char c : model) {
      if (c == '\\' || c == '"') escaped += '\\';
      escaped += c == '\n' ? std::string("\\n") : std::string(1, c);
    }
    const std::string label = "model=\"" + escaped + "\"";
    os << "# HELP moa_serve_adaptive_prompts_total Requests admitted by the adaptive policy, by "
          "layout (layers M, fanout k).\n# TYPE moa_serve_adaptive_prompts_total counter\n";
    const auto& allowed = config().allowed;
    const auto admitted = policy_->admitted();
    for (std::size_t i = 0; i < allowed.size(); ++i)
      os << "moa_serve_adaptive_prompts_total{" << label << ",layers=\"" << allowed[i].layers
         << "\",fanout=\"" << allowed[i].fanout << "\"} " << admitted[i] << '\n';
    os << "# HELP moa_serve_adaptive_refused_total Requests refused (429 over_capacity).\n"
          "# TYPE moa_serve_adaptive_refused_total counter\nmoa_serve_adaptive_refused_total{"
       << label << "} " << policy_->refused() << '\n';
    os << "# HELP moa_serve_adaptive_layout_changes_total Changes of the chosen layout.\n"
          "# TYPE moa_serve_adaptive_layout_changes_total counter\n"
          "moa_serve_adaptive_layout_changes_total{"
       << label << "} " << policy_->changes() << '\n';
    os << "# HELP moa_serve_adaptive_utilisation The last decision's conservative bottleneck "
          "utilisation.\n# TYPE moa_serve_adaptive_utilisation gauge\n"
          "moa_serve_adaptive_utilisation{"
       << label << "} " << last_utilisation_ << '\n';
    return os.str();
  }

 private:
  [[nodiscard]] std::uint32_t index(const std::string& name) const {
    return static_cast<std::uint32_t>(std::find(models_.begin(), models_.end(), name) -
                                      models_.begin());
  }
  [[nodiscard]] double now() const {
    if (clock_) return clock_();
    return std::chrono::duration<double>(clock::now() - start_).count();
  }

  std::vector<std::string> models_;
  std::vector<std::vector<std::string>> layers_;
  std::uint32_t aggregator_ = 0;
  std::vector<std::uint32_t> others_;
  std::function<double()> clock_;
  clock::time_point start_;
  mutable std::mutex mutex_;
  std::optional<queueing::adaptive_policy> policy_;
  std::size_t turn_ = 0;
  double last_utilisation_ = 0;
};

}  // namespace moa::serve
