// SPDX-License-Identifier: MIT
#pragma once

// `moa stability` and `moa simulate`: the queueing analytics and the simulator of a distributed
// MoA network (n devices, M layers, k gossip peers) from the command line.
//
//   moa stability --devices 4 --layers 2 --fanout 2 --lambda 0.1 --alpha 1
//   moa simulate  --devices 4 --layers 2 --fanout 2 --lambda 0.1 --replications 8 --json out.json
//   moa simulate  ... --sweep 0.1:0.95:10 --csv sweep.csv   (lambda as fractions of the limit)
//
// A network can also come from a JSON file (--config), with the keys of the long options:
//   {"devices": 4, "layers": 2, "fanout": 2, "lambda": [0.1, 0.1, 0.2, 0.1], "alpha": 1.0,
//    "adjacency": [[0,1,0,1], ...]}   (adjacency: gossip to graph neighbours instead of uniform)

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <moa/core/error.hpp>
#include <moa/gossip/random_k.hpp>
#include <moa/queueing/gossip_matrix.hpp>
#include <moa/queueing/json.hpp>
#include <moa/queueing/simulator.hpp>
#include <moa/queueing/stability.hpp>

#include "cli/common.hpp"

namespace moa::cli {

struct network_options {
  std::size_t devices = 4;
  std::size_t layers = 2;
  std::size_t fanout = 2;
  std::vector<double> lambda{0.1};
  std::vector<double> alpha{1.0};
  std::vector<std::vector<double>> adjacency;
  std::string config;
  std::string service = "exponential";
  double sigma = 0.5;

  void add_to(CLI::App* cmd) {
    cmd->add_option("-n,--devices", devices, "Number of devices n")->capture_default_str();
    cmd->add_option("-m,--layers", layers, "Proposer layers M")->capture_default_str();
    cmd->add_option("-k,--fanout", fanout, "Gossip peers per layer k")->capture_default_str();
    cmd->add_option("--lambda", lambda, "Prompt rate per user (one, or one per device)")
        ->capture_default_str();
    cmd->add_option("--alpha", alpha, "Mean inference time (one, or one per device)")
        ->capture_default_str();
    cmd->add_option("--service", service, "Service times: exponential, constant or lognormal")
        ->check(CLI::IsMember({"exponential", "constant", "lognormal"}))
        ->capture_default_str();
    cmd->add_option("--sigma", sigma, "Lognormal: standard deviation of log time")
        ->capture_default_str();
    cmd->add_option("--config", config, "JSON file with the network (keys as the long options)")
        ->check(CLI::ExistingFile);
  }

  void load() {
    if (config.empty()) return;
    std::ifstream in(config);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
      if (j.contains("devices")) devices = j["devices"].get<std::size_t>();
      if (j.contains("layers")) layers = j["layers"].get<std::size_t>();
      if (j.contains("fanout")) fanout = j["fanout"].get<std::size_t>();
      auto numbers = [&](const char* key, std::vector<double>& out) {
        if (!j.contains(key)) return;
        out = j[key].is_array() ? j[key].get<std::vector<double>>()
                                : std::vector<double>{j[key].get<double>()};
      };
      numbers("lambda", lambda);
      numbers("alpha", alpha);
      if (j.contains("adjacency"))
        adjacency = j["adjacency"].get<std::vector<std::vector<double>>>();
      if (j.contains("service")) service = j["service"].get<std::string>();
      if (j.contains("sigma")) sigma = j["sigma"].get<double>();
    } catch (const nlohmann::json::exception& e) {
      MOA_THROW(moa::invalid_argument("moa: cannot read " + config + ": " + e.what()));
    }
  }

  [[nodiscard]] Eigen::VectorXd per_device(const std::vector<double>& v, const char* name) const {
    if (v.size() != 1 && v.size() != devices)
      MOA_THROW(moa::invalid_argument(
          "moa: --" + std::string(name) + " has " + std::to_string(v.size()) + " values for " +
          std::to_string(devices) + " devices; give 1 or " + std::to_string(devices)));
    Eigen::VectorXd out(static_cast<Eigen::Index>(devices));
    for (std::size_t i = 0; i < devices; ++i) out(Eigen::Index(i)) = v.size() == 1 ? v[0] : v[i];
    return out;
  }

  [[nodiscard]] Eigen::MatrixXd inclusion() const {
    if (adjacency.empty()) return moa::queueing::uniform_inclusion(devices, fanout);
    const auto n = static_cast<Eigen::Index>(adjacency.size());
    Eigen::MatrixXd a(n, n);
    for (Eigen::Index i = 0; i < n; ++i) {
      if (adjacency[std::size_t(i)].size() != adjacency.size())
        MOA_THROW(moa::invalid_argument("moa: adjacency row " + std::to_string(i) +
                                        " has the wrong length; give an n x n matrix"));
      for (Eigen::Index j = 0; j < n; ++j) a(i, j) = adjacency[std::size_t(i)][std::size_t(j)];
    }
    if (std::size_t(n) != devices)
      MOA_THROW(moa::invalid_argument("moa: the adjacency matrix has " + std::to_string(n) +
                                      " rows for " + std::to_string(devices) + " devices"));
    return moa::queueing::graph_inclusion(a, fanout);
  }

  [[nodiscard]] moa::queueing::service_model model(double mean) const {
    if (service == "constant") return moa::queueing::service_model::constant(mean);
    if (service == "lognormal") return moa::queueing::service_model::lognormal(mean, sigma);
    return moa::queueing::service_model::exponential(mean);
  }
};

/// The configured network, loaded and checked, with its analytic report: what both commands
/// start from.
struct analysed_network {
  Eigen::VectorXd lambda;
  Eigen::VectorXd alpha;
  Eigen::MatrixXd inclusion;
  moa::queueing::stability_report report;

  explicit analysed_network(network_options& o)
      : lambda((o.load(), o.per_device(o.lambda, "lambda"))),
        alpha(o.per_device(o.alpha, "alpha")),
        // Uniform gossip needs no n x n matrix: O(n) for any n (moa stability -n 1000000).
        inclusion(o.adjacency.empty() ? Eigen::MatrixXd() : o.inclusion()),
        report(o.adjacency.empty()
                   ? moa::queueing::uniform_analyse(o.devices, o.layers, o.fanout, span(lambda),
                                                    span(alpha))
                   : moa::queueing::analyse(lambda, alpha,
                                            moa::queueing::gossip_visits(o.layers, inclusion))) {}

  static std::span<const double> span(const Eigen::VectorXd& v) {
    return {v.data(), static_cast<std::size_t>(v.size())};
  }
};

inline void stability_command(network_options& o, const std::string& format) {
  namespace q = moa::queueing;
  const analysed_network net(o);
  const auto& [lambda, alpha, p, r] = net;
  const double scv = o.model(1.0).scv();
  std::optional<q::uniform_latency> uniform;
  if (o.adjacency.empty())
    uniform.emplace(o.devices, o.layers, o.fanout, analysed_network::span(lambda),
                    analysed_network::span(alpha), o.model(1.0));
  auto latency_of = [&](Eigen::Index d) {
    return uniform ? (*uniform)(std::uint32_t(d))
                   : q::latency(r, o.layers, p, alpha, std::uint32_t(d), scv);
  };
  if (format == "json") {
    auto j = q::to_json(r);
    nlohmann::json per = nlohmann::json::array();
    for (Eigen::Index d = 0; d < lambda.size(); ++d) {
      const auto est = q::mg1(r.arrival(d), alpha(d), scv);
      const auto lat = latency_of(d);
      per.push_back({{"queue", q::detail::finite_or_null(est.number_in_system)},
                     {"sojourn", q::detail::finite_or_null(est.sojourn)},
                     {"latency_lower", q::detail::finite_or_null(lat.lower)},
                     {"latency_approx", q::detail::finite_or_null(lat.approx)},
                     {"latency_upper", q::detail::finite_or_null(lat.upper)}});
    }
    j["estimates"] = per;
    std::cout << j.dump(2) << '\n';
    return;
  }
  std::printf("network: n = %zu devices, M = %zu layers, k = %zu peers (%s gossip)\n", o.devices,
              o.layers, o.fanout, o.adjacency.empty() ? "uniform" : "graph");
  std::printf("verdict: %s, margin %.4f (max utilisation %.4f at device %zu)\n",
              r.stable ? "STABLE" : "UNSTABLE", r.margin, r.max_utilisation, r.bottleneck);
  std::printf("rates can be scaled by up to %.4f before the network saturates\n", r.max_scale);
  std::printf("\n%6s %10s %8s %10s %10s %12s %12s\n", "device", "calls/t", "rho", "queue",
              "sojourn", "latency lo", "latency ~");
  for (Eigen::Index d = 0; d < lambda.size(); ++d) {
    const auto est = q::mg1(r.arrival(d), alpha(d), scv);
    const auto lat = latency_of(d);
    std::printf("%6td %10.4f %8.4f %10.4f %10.4f %12.4f %12.4f\n", d, r.arrival(d),
                r.utilisation(d), est.number_in_system, est.sojourn, lat.lower, lat.approx);
  }
  std::printf(
      "\nqueue and sojourn: M/G/1 (Pollaczek-Khinchine) per device; latency: fork-join "
      "lower bound and Nelson-Tantawi estimate for a prompt born at the device\n");
}

struct simulate_options {
  double horizon = 2e4;
  double warmup = -1;  // default: 10% of the horizon
  std::size_t replications = 4;
  std::size_t threads = 0;
  std::uint64_t seed = 1;
  std::string sweep;  // "from:to:steps", fractions of the analytic limit
  std::string csv, json;
  double sample_period = 0;
};

inline void simulate_command(network_options& o, const simulate_options& s) {
  namespace q = moa::queueing;
  const analysed_network net(o);
  const auto& [lambda, alpha, p, base] = net;
  std::vector<double> scales{1.0};
  if (!s.sweep.empty()) {
    double from = 0, to = 0;
    int steps = 0;
    if (std::sscanf(s.sweep.c_str(), "%lf:%lf:%d", &from, &to, &steps) != 3 || steps < 1 ||
        !(from > 0) || !(to >= from))
      MOA_THROW(moa::invalid_argument("moa: --sweep '" + s.sweep +
                                      "' must read FROM:TO:STEPS, fractions of the stability "
                                      "limit with 0 < FROM <= TO, e.g. 0.1:0.95:10"));
    scales.clear();
    for (int i = 0; i < steps; ++i)
      scales.push_back((from + (to - from) * (steps > 1 ? double(i) / (steps - 1) : 0)) *
                       base.max_scale);
  }
  const auto n = static_cast<std::uint32_t>(o.devices);
  const bool progress = progress_wanted();
  nlohmann::json out = nlohmann::json::array();
  std::ofstream csv;
  if (!s.csv.empty()) {
    csv.open(s.csv);
    csv << "scale,max_rho,stable,mean_queue,mean_queue_ci,mean_latency,mean_latency_ci,p50,p95,"
           "p99,throughput,growth_rate\n";
  }
  std::printf("%8s %8s %9s %16s %18s %9s %9s %9s\n", "scale", "max rho", "verdict", "mean queue",
              "mean latency", "p50", "p95", "p99");
  for (std::size_t i = 0; i < scales.size(); ++i) {
    q::sim_config cfg;
    cfg.lambda.assign(lambda.data(), lambda.data() + lambda.size());
    for (double& l : cfg.lambda) l *= scales[i];
    for (Eigen::Index d = 0; d < alpha.size(); ++d) cfg.service.push_back(o.model(alpha(d)));
    cfg.horizon = s.horizon;
    cfg.warmup = s.warmup >= 0 ? s.warmup : s.horizon / 10;
    cfg.seed = s.seed;
    cfg.sample_period = s.sample_period;
    auto report = [&](std::size_t done, std::size_t total) {
      if (progress)
        std::fprintf(stderr, "\r[point %zu/%zu: replication %zu/%zu]", i + 1, scales.size(), done,
                     total);
    };
    const auto rep =
        o.adjacency.empty()
            ? q::replicate(cfg,
                           q::gossip_source(n, std::uint32_t(o.layers), uniform_gossip{o.fanout}),
                           s.replications, s.threads, report)
            : q::replicate(cfg, q::gossip_source(n, std::uint32_t(o.layers), q::matrix_gossip(p)),
                           s.replications, s.threads, report);
    if (progress) std::fprintf(stderr, "\r%*s\r", 48, "");
    double queue = 0, queue_ci = 0;
    for (const auto& e : rep.mean_queue) {
      queue += e.mean / double(n);
      queue_ci += e.half_width / double(n);
    }
    const double rho = base.max_utilisation * scales[i];
    std::printf("%8.4f %8.4f %9s %9.3f+-%-6.3f %10.3f+-%-7.3f %9.3f %9.3f %9.3f\n", scales[i], rho,
                rep.stable                                ? "stable"
                : rep.unstable_runs * 2 > rep.runs.size() ? "UNSTABLE"
                                                          : "undecided",
                queue, queue_ci, rep.mean_latency.mean, rep.mean_latency.half_width, rep.p50.mean,
                rep.p95.mean, rep.p99.mean);
    if (!rep.stable)
      std::printf("         backlog grows by %.4f calls per unit time\n", rep.growth_rate.mean);
    if (csv)
      csv << scales[i] << ',' << rho << ',' << rep.stable << ',' << queue << ',' << queue_ci << ','
          << rep.mean_latency.mean << ',' << rep.mean_latency.half_width << ',' << rep.p50.mean
          << ',' << rep.p95.mean << ',' << rep.p99.mean << ',' << rep.throughput.mean << ','
          << rep.growth_rate.mean << '\n';
    if (!s.json.empty()) {
      nlohmann::json point = {{"scale", scales[i]}, {"max_rho", rho}, {"stable", rep.stable}};
      nlohmann::json runs = nlohmann::json::array();
      for (const auto& r : rep.runs) runs.push_back(q::to_json(r));
      point["runs"] = runs;
      out.push_back(point);
    }
  }
  if (!s.json.empty()) std::ofstream(s.json) << out.dump(2) << '\n';
}

/// Adds `moa stability`.
inline void add_stability_command(CLI::App& app) {
  auto network = std::make_shared<network_options>();
  auto format = std::make_shared<std::string>("table");
  auto* cmd = app.add_subcommand(
      "stability",
      "Analytic stability of a distributed MoA network: per-device loads, the verdict and its "
      "margin, queue and latency estimates");
  network->add_to(cmd);
  cmd->add_option("--format", *format, "table or json")
      ->check(CLI::IsMember({"table", "json"}))
      ->capture_default_str();
  cmd->callback([network, format] { stability_command(*network, *format); });
}

/// Adds `moa simulate`.
inline void add_simulate_command(CLI::App& app) {
  auto network = std::make_shared<network_options>();
  auto sim = std::make_shared<simulate_options>();
  auto* cmd = app.add_subcommand(
      "simulate",
      "Discrete-event simulation of a distributed MoA network (one point or a lambda sweep), "
      "with confidence intervals over replications");
  network->add_to(cmd);
  cmd->add_option("--horizon", sim->horizon, "Virtual time per run")->capture_default_str();
  cmd->add_option("--warmup", sim->warmup, "Warm-up time removed (default: 10% of horizon)");
  cmd->add_option("-r,--replications", sim->replications, "Independent runs per point")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  cmd->add_option("-j,--threads", sim->threads, "Threads (0: all cores)")->capture_default_str();
  cmd->add_option("--seed", sim->seed, "Seed of replication 0")->capture_default_str();
  cmd->add_option("--sweep", sim->sweep,
                  "FROM:TO:STEPS: scale lambda from FROM to TO times the stability limit");
  cmd->add_option("--sample", sim->sample_period, "Record queue lengths this often (JSON series)");
  cmd->add_option("--csv", sim->csv, "Write the summary of each point to this CSV file");
  cmd->add_option("--json", sim->json, "Write every run (and series) to this JSON file");
  cmd->callback([network, sim] { simulate_command(*network, *sim); });
}

}  // namespace moa::cli
