// SPDX-License-Identifier: MIT
#pragma once

// `moa stability` and `moa simulate`: the queueing analytics and the simulator of a distributed
// MoA network (n devices, M layers, k gossip peers) from the command line.
//
//   moa stability --devices 4 --layers 2 --fanout 2 --lambda 0.1 --alpha 1
//   moa simulate  --devices 4 --layers 2 --fanout 2 --lambda 0.1 --replications 8 --json out.json
//   moa simulate  ... --sweep 0.1:0.95:10 --csv sweep.csv   (lambda as fractions of the limit)
//   moa simulate  ... --sweep 0.1:0.95:10 --plot sweep.svg  (queue and latency against lambda)
//
// A network can also come from a JSON file (--config), with the keys of the long options:
//   {"devices": 4, "layers": 2, "fanout": 2, "lambda": [0.1, 0.1, 0.2, 0.1], "alpha": 1.0,
//    "adjacency": [[0,1,0,1], ...]}   (adjacency: gossip to graph neighbours instead of uniform)
// Options on the command line win over the file; an unknown key, a wrong type or a value out of
// range is an error naming the key (exit 2).

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include <moa/core/error.hpp>
#include <moa/eval/plot.hpp>
#include <moa/gossip/random_k.hpp>
#include <moa/queueing/gossip_matrix.hpp>
#include <moa/queueing/json.hpp>
#include <moa/queueing/simulator.hpp>
#include <moa/queueing/stability.hpp>

#include "cli/adaptive_command.hpp"
#include "cli/common.hpp"
#include "cli/gnuplot.hpp"

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

  CLI::App* cmd = nullptr;
  std::uint64_t max_n = max_devices;  ///< devices allowed with uniform gossip

  /// `uniform_limit`: how many devices uniform gossip may have (stability analyses it in O(n));
  /// a graph (`adjacency`) is analysed densely and stays within max_devices.
  void add_to(CLI::App* c, std::uint64_t uniform_limit = max_devices) {
    cmd = c;
    max_n = uniform_limit;
    cmd->add_option("-n,--devices", devices, "Number of devices n")
        ->capture_default_str()
        ->transform(count_in(1, max_n));
    cmd->add_option("-m,--layers", layers, "Proposer layers M")
        ->capture_default_str()
        ->transform(count_in(1, max_models));
    cmd->add_option("-k,--fanout", fanout, "Gossip peers per layer k (at most n - 1)")
        ->capture_default_str()
        ->transform(count_in(0, max_n - 1));
    cmd->add_option("--lambda", lambda, "Prompt rate per user (one, or one per device)")
        ->capture_default_str()
        ->check(number_in(0, 1e9));
    cmd->add_option("--alpha", alpha, "Mean inference time (one, or one per device)")
        ->capture_default_str()
        ->check(number_in(0, 1e9, true));
    cmd->add_option("--service", service, "Service times: exponential, constant or lognormal")
        ->check(CLI::IsMember({"exponential", "constant", "lognormal"}))
        ->capture_default_str();
    cmd->add_option("--sigma", sigma, "Lognormal: standard deviation of log time")
        ->capture_default_str()
        ->check(number_in(0, max_sigma));
    cmd->add_option("--config", config,
                    "JSON file with the network: keys as the long options, plus \"adjacency\" "
                    "(an n x n 0/1 matrix); options on the command line win");
  }

  /// Reads --config into the options not given on the command line, then checks what the
  /// options cannot check alone. Runs before anything is allocated by n.
  void load() {
    if (!config.empty()) {
      const auto rest = apply_config(cmd, config, {"adjacency"});
      if (rest.contains("adjacency")) {
        const auto& a = rest["adjacency"];
        const std::string key = "--config " + config + ", key \"adjacency\"";
        if (devices > max_devices)
          reject(key, "a graph is analysed as an n x n matrix, for at most " +
                          std::to_string(max_devices) + " devices (uniform gossip: up to " +
                          std::to_string(max_n) + ")");
        if (!a.is_array() || a.size() != devices)
          reject(key, "must be a list of " + std::to_string(devices) + " rows (one per device)");
        adjacency.assign(devices, {});
        for (std::size_t i = 0; i < devices; ++i) {
          if (!a[i].is_array() || a[i].size() != devices)
            reject(key, "row " + std::to_string(i) + " must hold " + std::to_string(devices) +
                            " numbers; give an n x n matrix");
          for (const auto& x : a[i]) {
            if (!x.is_number() || !std::isfinite(x.get<double>()) || x.get<double>() < 0)
              reject(key, "row " + std::to_string(i) + " holds " + x.dump() +
                              "; entries are finite numbers >= 0 (0: no edge)");
            adjacency[i].push_back(x.get<double>());
          }
        }
      }
    }
    if (fanout > devices - 1)
      reject("--fanout", "k = " + std::to_string(fanout) + " is larger than the " +
                             std::to_string(devices - 1) + " other devices; give 1.." +
                             std::to_string(devices - 1));
    for (const auto* v : {&lambda, &alpha})
      if (v->size() != 1 && v->size() != devices)
        reject(v == &lambda ? "--lambda" : "--alpha",
               std::to_string(v->size()) + " values for " + std::to_string(devices) +
                   " devices; give 1 or " + std::to_string(devices));
  }

  [[nodiscard]] Eigen::VectorXd per_device(const std::vector<double>& v) const {
    Eigen::VectorXd out(static_cast<Eigen::Index>(devices));
    for (std::size_t i = 0; i < devices; ++i) out(Eigen::Index(i)) = v.size() == 1 ? v[0] : v[i];
    return out;
  }

  [[nodiscard]] Eigen::MatrixXd inclusion() const {
    if (adjacency.empty()) return moa::queueing::uniform_inclusion(devices, fanout);
    const auto n = static_cast<Eigen::Index>(devices);  // load() checked the shape
    Eigen::MatrixXd a(n, n);
    for (Eigen::Index i = 0; i < n; ++i)
      for (Eigen::Index j = 0; j < n; ++j) a(i, j) = adjacency[std::size_t(i)][std::size_t(j)];
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

  explicit analysed_network(const network_options& o)
      : lambda(o.per_device(o.lambda)),
        alpha(o.per_device(o.alpha)),
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

/// A number for a table: "-" when there is none (NaN: nothing measured), so a table never says
/// "nan".
inline std::string cell(double x, int width, int precision) {
  char buf[64];
  if (std::isnan(x))
    std::snprintf(buf, sizeof buf, "%*s", width, "-");
  else
    std::snprintf(buf, sizeof buf, "%*.*f", width, precision, x);
  return buf;
}

inline void stability_command(network_options& o, const std::string& format) {
  namespace q = moa::queueing;
  o.load();
  const analysed_network net(o);
  // Named references, not a structured binding: clang 14 (the TSan stage) cannot capture those.
  const auto& lambda = net.lambda;
  const auto& alpha = net.alpha;
  const auto& p = net.inclusion;
  const auto& r = net.report;
  const double scv = o.model(1.0).scv();
  std::optional<q::uniform_latency> uniform;
  if (o.adjacency.empty())
    uniform.emplace(o.devices, o.layers, o.fanout, analysed_network::span(lambda),
                    analysed_network::span(alpha), o.model(1.0));
  auto latency_of = [&](Eigen::Index d) {
    return uniform ? (*uniform)(std::uint32_t(d))
                   : q::latency(r, o.layers, p, alpha, std::uint32_t(d), scv);
  };
  std::ostringstream out;  // printed whole: an error never leaves half a table behind
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
  char line[256];
  std::snprintf(line, sizeof line,
                "network: n = %zu devices, M = %zu layers, k = %zu peers (%s gossip)\n", o.devices,
                o.layers, o.fanout, o.adjacency.empty() ? "uniform" : "graph");
  out << line;
  std::snprintf(line, sizeof line,
                "verdict: %s, margin %.4f (max utilisation %.4f at device %zu)\n",
                r.stable ? "STABLE" : "UNSTABLE", r.margin, r.max_utilisation, r.bottleneck);
  out << line;
  std::snprintf(line, sizeof line,
                "rates can be scaled by up to %.4f before the network saturates\n", r.max_scale);
  out << line;
  std::snprintf(line, sizeof line, "\n%6s %10s %8s %10s %10s %12s %12s %12s\n", "device", "calls/t",
                "rho", "queue", "sojourn", "latency lo", "latency ~", "latency hi");
  out << line;
  for (Eigen::Index d = 0; d < lambda.size(); ++d) {
    const auto est = q::mg1(r.arrival(d), alpha(d), scv);
    const auto lat = latency_of(d);
    out << std::setw(6) << d << cell(r.arrival(d), 11, 4) << cell(r.utilisation(d), 9, 4)
        << cell(est.number_in_system, 11, 4) << cell(est.sojourn, 11, 4) << cell(lat.lower, 13, 4)
        << cell(lat.approx, 13, 4) << cell(lat.upper, 13, 4) << '\n';
  }
  out << "\nqueue and sojourn: M/G/1 (Pollaczek-Khinchine) per device; latency of a prompt born "
         "at the device: lower bound, estimate and upper bound, ordered (docs/QUEUEING.md, "
         "\"Latency\", says where each holds)\n";
  std::cout << out.str();
}

struct simulate_options {
  double horizon = 2e4;
  double warmup = -1;  // default: 10% of the horizon
  std::size_t replications = 4;
  std::size_t threads = 0;
  std::uint64_t seed = 1;
  std::string sweep;  // "from:to:steps", fractions of the analytic limit
  std::string csv, json;
  std::string plot;  // an SVG of the sweep, drawn by gnuplot
  double sample_period = 0;
};

/// Points of a sweep at most, and samples of the queue series per run at most: each bounds memory.
inline constexpr std::uint64_t max_sweep_steps = 1000;
inline constexpr double max_samples = 1e6;

/// `--sweep FROM:TO:STEPS`, checked: fractions of the stability limit, 0 < FROM <= TO <= 10.
inline std::vector<double> sweep_fractions(const std::string& sweep) {
  if (sweep.empty()) return {1.0};
  const auto bad = [&sweep] {
    reject("--sweep", "'" + sweep.substr(0, 64) +
                          "' must read FROM:TO:STEPS, fractions of the stability limit with "
                          "0 < FROM <= TO <= 10 and STEPS in [1, " +
                          std::to_string(max_sweep_steps) + "], e.g. 0.1:0.95:10");
  };
  const auto a = sweep.find(':');
  const auto b = a == std::string::npos ? a : sweep.find(':', a + 1);
  if (b == std::string::npos) bad();
  double from = 0, to = 0;
  std::uint64_t steps = 0;
  if (!parse_number(std::string_view(sweep).substr(0, a), from) ||
      !parse_number(std::string_view(sweep).substr(a + 1, b - a - 1), to) ||
      !parse_count(std::string_view(sweep).substr(b + 1), steps) || !(from > 0) || !(to >= from) ||
      to > 10 || steps < 1 || steps > max_sweep_steps)
    bad();
  std::vector<double> out;
  for (std::uint64_t i = 0; i < steps; ++i)
    out.push_back(from + (to - from) * (steps > 1 ? double(i) / double(steps - 1) : 0));
  return out;
}

/// The analytic side of a sweep point at `scale` times the configured rates: the M/G/1 queue per
/// device (averaged over devices) and the latency bounds of a prompt, weighted by where prompts
/// are born. Past the limit every value is infinite (left out of the picture).
inline moa::eval::sweep_point analytic_point(const network_options& o, const analysed_network& net,
                                             double scale) {
  namespace q = moa::queueing;
  const Eigen::VectorXd lambda = net.lambda * scale;
  const double scv = o.model(1.0).scv();
  std::optional<q::uniform_latency> uniform;
  q::stability_report r;
  if (o.adjacency.empty()) {
    uniform.emplace(o.devices, o.layers, o.fanout, analysed_network::span(lambda),
                    analysed_network::span(net.alpha), o.model(1.0));
    r = uniform->report();
  } else {
    r = q::analyse(lambda, net.alpha, q::gossip_visits(o.layers, net.inclusion));
  }
  moa::eval::sweep_point x;
  x.lambda = lambda.mean();
  double weight = 0;
  for (Eigen::Index d = 0; d < lambda.size(); ++d) {
    if (r.arrival(d) > 0)
      x.queue_model += q::mg1(r.arrival(d), net.alpha(d), scv).number_in_system / double(o.devices);
    if (lambda(d) <= 0) continue;
    const auto lat = uniform
                         ? (*uniform)(std::uint32_t(d))
                         : q::latency(r, o.layers, net.inclusion, net.alpha, std::uint32_t(d), scv);
    x.latency_lower += lambda(d) * lat.lower;
    x.latency_approx += lambda(d) * lat.approx;
    x.latency_upper += lambda(d) * lat.upper;
    weight += lambda(d);
  }
  for (double* v : {&x.latency_lower, &x.latency_approx, &x.latency_upper}) *v /= weight;
  return x;
}

inline void simulate_command(network_options& o, const simulate_options& s) {
  namespace q = moa::queueing;
  // Every check before the analysis, the simulation and the first line of output.
  o.load();
  const auto fractions = sweep_fractions(s.sweep);
  if (s.warmup >= s.horizon)
    reject("--warmup", number_text(s.warmup) + " is not below the horizon " +
                           number_text(s.horizon) + "; nothing would be measured");
  if (s.sample_period > 0 && s.horizon / s.sample_period > max_samples)
    reject("--sample", "a period of " + number_text(s.sample_period) + " over a horizon of " +
                           number_text(s.horizon) + " records more than " +
                           number_text(max_samples) + " samples per device; raise it to at least " +
                           number_text(s.horizon / max_samples));
  output_file csv(s.csv, "--csv");
  output_file json_file(s.json, "--json");
  if (!s.plot.empty() && s.sweep.empty())
    reject("--plot", "draws a sweep: give --sweep FROM:TO:STEPS as well");
  const gnuplot_output plot(s.plot, "--plot");
  const analysed_network net(o);
  const auto& lambda = net.lambda;  // not a structured binding: see stability_command
  const auto& alpha = net.alpha;
  const auto& p = net.inclusion;
  const auto& base = net.report;
  // Without --sweep the rates run as given; a sweep scales them by fractions of the limit.
  std::vector<double> scales{1.0};
  if (!s.sweep.empty()) {
    if (!std::isfinite(base.max_scale))
      reject("--sweep", "the network has no stability limit to scale (no load at all)");
    scales.clear();
    for (double f : fractions) scales.push_back(f * base.max_scale);
  }
  const auto n = static_cast<std::uint32_t>(o.devices);
  const bool progress = progress_wanted();
  nlohmann::json points = nlohmann::json::array();
  std::ostringstream table, csv_text;
  char line[512];
  moa::eval::sweep_plot picture;
  char title[160];
  std::snprintf(title, sizeof title, "n = %zu devices, M = %zu layers, k = %zu peers (%s gossip)",
                o.devices, o.layers, o.fanout, o.adjacency.empty() ? "uniform" : "graph");
  picture.title = title;
  picture.limit = lambda.mean() * base.max_scale;
  csv_text << "scale,max_rho,stable,mean_queue,mean_queue_ci,mean_latency,mean_latency_ci,p50,p95,"
              "p99,throughput,growth_rate\n";
  std::snprintf(line, sizeof line, "%8s %8s %9s %16s %18s %9s %9s %9s\n", "scale", "max rho",
                "verdict", "mean queue", "mean latency", "p50", "p95", "p99");
  table << line;
  // NaN (a run stopped by the backlog limit completes no prompt) is an empty CSV field.
  const auto csv_cell = [](double x) { return std::isfinite(x) ? number_text(x) : std::string(); };
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
    const bool stopped = std::any_of(rep.runs.begin(), rep.runs.end(),
                                     [](const q::run_result& r) { return r.truncated; });
    std::snprintf(line, sizeof line, "%8.4f %8.4f %9s ", scales[i], rho,
                  rep.stable                                ? "stable"
                  : rep.unstable_runs * 2 > rep.runs.size() ? "UNSTABLE"
                                                            : "undecided");
    table << line << cell(queue, 9, 3) << "+-" << std::left << cell(queue_ci, 6, 3) << std::right
          << cell(rep.mean_latency.mean, 11, 3) << "+-" << std::left
          << cell(rep.mean_latency.half_width, 7, 3) << std::right << cell(rep.p50.mean, 10, 3)
          << cell(rep.p95.mean, 10, 3) << cell(rep.p99.mean, 10, 3) << '\n';
    if (!rep.stable)
      table << "         backlog grows by " << cell(rep.growth_rate.mean, 0, 4)
            << " calls per unit time"
            << (stopped ? "; stopped at the backlog limit (no latency measured: -)" : "") << '\n';
    csv_text << number_text(scales[i]) << ',' << number_text(rho) << ',' << rep.stable << ','
             << csv_cell(queue) << ',' << csv_cell(queue_ci) << ','
             << csv_cell(rep.mean_latency.mean) << ',' << csv_cell(rep.mean_latency.half_width)
             << ',' << csv_cell(rep.p50.mean) << ',' << csv_cell(rep.p95.mean) << ','
             << csv_cell(rep.p99.mean) << ',' << csv_cell(rep.throughput.mean) << ','
             << csv_cell(rep.growth_rate.mean) << '\n';
    if (plot) {
      // An UNSTABLE point has no steady state: its means only say how long the run was.
      const bool drawn = rep.stable || rep.unstable_runs * 2 <= rep.runs.size();
      const double none = std::numeric_limits<double>::quiet_NaN();
      auto x = analytic_point(o, net, scales[i]);
      x.queue = drawn ? queue : none;
      x.queue_ci = drawn ? queue_ci : none;
      x.latency = drawn ? rep.mean_latency.mean : none;
      x.latency_ci = drawn ? rep.mean_latency.half_width : none;
      x.p50 = drawn ? rep.p50.mean : none;
      x.p95 = drawn ? rep.p95.mean : none;
      x.p99 = drawn ? rep.p99.mean : none;
      picture.points.push_back(x);
    }
    if (json_file) {
      nlohmann::json point = {{"scale", scales[i]}, {"max_rho", rho}, {"stable", rep.stable}};
      nlohmann::json runs = nlohmann::json::array();
      for (const auto& r : rep.runs) runs.push_back(q::to_json(r));
      point["runs"] = runs;
      points.push_back(point);
    }
  }
  std::cout << table.str();
  if (csv) {
    csv.stream() << csv_text.str();
    csv.finish();
  }
  if (json_file) {
    json_file.stream() << points.dump(2) << '\n';
    json_file.finish();
  }
  if (plot) {
    plot.draw(moa::eval::sweep_plot_data(picture),
              moa::eval::sweep_plot_script(picture, plot.data_path(), plot.path()));
    std::cerr << "wrote " << plot.path() << " (script " << plot.script_path() << ")\n";
  }
}

/// Adds `moa stability`.
inline void add_stability_command(CLI::App& app) {
  auto network = std::make_shared<network_options>();
  auto format = std::make_shared<std::string>("table");
  auto* cmd = app.add_subcommand(
      "stability",
      "Analytic stability of a distributed MoA network: per-device loads, the verdict and its "
      "margin, queue and latency estimates");
  network->add_to(cmd, max_uniform_devices);
  cmd->add_option("--format", *format, "table or json")
      ->check(CLI::IsMember({"table", "json"}))
      ->capture_default_str();
  cmd->callback([network, format] { stability_command(*network, *format); });
}

/// Adds `moa simulate`.
inline void add_simulate_command(CLI::App& app) {
  auto network = std::make_shared<network_options>();
  auto sim = std::make_shared<simulate_options>();
  auto adaptive = std::make_shared<adaptive_options>();
  auto* cmd = app.add_subcommand(
      "simulate",
      "Discrete-event simulation of a distributed MoA network (one point or a lambda sweep), "
      "with confidence intervals over replications");
  network->add_to(cmd);
  cmd->add_option("--horizon", sim->horizon, "Virtual time per run")
      ->capture_default_str()
      ->check(number_in(0, 1e9, true));
  cmd->add_option("--warmup", sim->warmup,
                  "Warm-up time removed, below the horizon (default: 10% of it)")
      ->check(number_in(0, 1e9));
  cmd->add_option("-r,--replications", sim->replications, "Independent runs per point")
      ->capture_default_str()
      ->transform(count_in(1, 10000));
  cmd->add_option("-j,--threads", sim->threads, "Threads (0: all cores)")
      ->capture_default_str()
      ->transform(count_in(0, 1024));
  cmd->add_option("--seed", sim->seed, "Seed of replication 0")
      ->capture_default_str()
      ->transform(any_seed());
  cmd->add_option("--sweep", sim->sweep,
                  "FROM:TO:STEPS: scale lambda from FROM to TO times the stability limit "
                  "(0 < FROM <= TO <= 10, STEPS in [1, " +
                      std::to_string(max_sweep_steps) + "])");
  cmd->add_option("--sample", sim->sample_period,
                  "Record queue lengths this often (JSON series; 0: never; at most " +
                      number_text(max_samples) + " samples per run)")
      ->check(number_in(0, 1e9));
  cmd->add_option("--csv", sim->csv,
                  "Write the summary of each point to this CSV file (-: stdout)");
  cmd->add_option("--json", sim->json,
                  "Write every run (and series) to this JSON file (-: stdout)");
  cmd->add_option("--plot", sim->plot,
                  "With --sweep: draw queue length and latency against lambda, simulated and "
                  "analytic, the stability limit marked; with --adaptive: load, depth, queue and "
                  "latency over time (SVG, with gnuplot)");
  adaptive->add_to(cmd);
  cmd->callback([network, sim, adaptive, cmd] {
    if (!adaptive->enabled) {
      adaptive_options::require_enabled_for(cmd, {"--ramp", "--phase"});
      simulate_command(*network, *sim);
      return;
    }
    network->load();
    // The ramp sets its own rates, horizon and runs: options that say otherwise are refused.
    for (const char* opt :
         {"--lambda", "--horizon", "--warmup", "--replications", "--sweep", "--sample", "--json"})
      if (cmd->count(opt) > 0)
        reject(opt, "does not apply to --adaptive (the ramp sets rates and time; see --ramp)");
    if (!network->adjacency.empty())
      reject("--config", "adjacency: --adaptive models uniform gossip only");
    if (network->service != "exponential")
      reject("--service", "--adaptive draws exponential service times only");
    adaptive->plot = sim->plot;
    adaptive_command(network->devices, network->layers, network->fanout, network->alpha, sim->seed,
                     *adaptive, sim->csv);
  });
}

}  // namespace moa::cli
