// SPDX-License-Identifier: MIT
#pragma once

// `moa simulate --adaptive`: the load ramp of the adaptive layout policy against the static
// layout (--layers, --fanout), in the simulator, with a per-phase table and an optional plot.
//
//   moa simulate --adaptive --devices 4 --alpha 1,1,1,3 --ramp 0.5:2:7 --plot ramp.svg
//   moa simulate --adaptive ... --layouts 2x2=0.9,2x1=0.85,1x2=0.8,1x1=0.7 --target 0.8
//
// The options also come from --config (keys: "layouts", "target", ...), as every option does.

#include <CLI/CLI.hpp>

#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <iostream>
#include <limits>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <moa/core/backend.hpp>
#include <moa/core/error.hpp>
#include <moa/eval/plot.hpp>
#include <moa/net/adaptive.hpp>
#include <moa/net/network.hpp>
#include <moa/queueing/adaptive.hpp>
#include <moa/queueing/adaptive_sim.hpp>

#include "cli/common.hpp"
#include "cli/gnuplot.hpp"

namespace moa::cli {

struct adaptive_options {
  bool enabled = false;
  std::string layouts = "2x2,2x1,1x2,1x1,1x0";
  double target = 0.8;
  double hysteresis = 0.2;
  double rate_window = 1000;
  double latency_objective = 0;  // 0: none
  std::string ramp = "0.5:2:7";
  double phase = 20000;
  std::string plot;

  /// The policy's options, shared by `moa simulate`, `moa network`, `moa serve` and `moa device`:
  /// `enable_help` describes --adaptive, `unit` the time unit of --rate-window and
  /// --latency-objective.
  void add_policy_options(CLI::App* cmd, const std::string& enable_help, const std::string& unit) {
    cmd->add_flag("--adaptive", enabled, enable_help);
    cmd->add_option("--layouts", layouts,
                    "--adaptive: allowed layouts MxK[=QUALITY],... (default quality: the call "
                    "count (k+1)M+1)")
        ->capture_default_str();
    // (0, 1): at a target of 1 the bottleneck's queue has no bound.
    cmd->add_option("--target", target, "--adaptive: utilisation target of the bottleneck")
        ->capture_default_str()
        ->check(CLI::Validator(
            [](std::string& v) -> std::string {
              double x = 0;
              if (!parse_number(v, x) || !(x > 0 && x < 1))
                return "'" + v + "' is not a finite number in (0, 1)";
              return {};
            },
            "finite, in (0, 1)", "number"));
    cmd->add_option("--hysteresis", hysteresis, "--adaptive: upgrade margin, in [0, 0.9]")
        ->capture_default_str()
        ->check(number_in(0, 0.9));
    cmd->add_option("--rate-window", rate_window,
                    "--adaptive: time constant of the rate estimates (" + unit + ")")
        ->capture_default_str()
        ->check(number_in(0, 1e9, true));
    cmd->add_option("--latency-objective", latency_objective,
                    "--adaptive: p99 objective (" + unit + "; 0: none)")
        ->check(number_in(0, 1e9));
  }

  /// The long options of add_policy_options but --adaptive.
  static constexpr std::array<const char*, 5> policy_option_names = {
      "--layouts", "--target", "--hysteresis", "--rate-window", "--latency-objective"};

  /// Without --adaptive, its options (and `extra`) are refused, naming the first given.
  static void require_enabled_for(const CLI::App* cmd, std::initializer_list<const char*> extra) {
    for (const char* opt : policy_option_names)
      if (cmd->count(opt) > 0) reject(opt, "applies to --adaptive runs only; add --adaptive");
    for (const char* opt : extra)
      if (cmd->count(opt) > 0) reject(opt, "applies to --adaptive runs only; add --adaptive");
  }

  /// `live`: for `moa network` (times in ms). `plot` is `moa simulate`'s --plot, shared with the
  /// sweep.
  void add_to(CLI::App* cmd, bool live = false) {
    add_policy_options(cmd,
                       live ? "Run a load ramp live with the adaptive layout policy, then the "
                              "simulator on the measured service times; see docs/ADAPTIVE.md"
                            : "Run a load ramp with the adaptive layout policy against the static "
                              "layout (--layers, --fanout); see docs/ADAPTIVE.md",
                       live ? "ms" : "virtual time");
    cmd->add_option("--ramp", ramp,
                    "--adaptive: FROM:TO:STEPS, load steps as fractions of the static layout's "
                    "limit (0 < FROM <= TO <= 10, STEPS in [1, 100])")
        ->capture_default_str();
    cmd->add_option("--phase", phase, "--adaptive: virtual time per load step")
        ->capture_default_str()
        ->check(number_in(0, 1e7, true));
  }

  /// The policy's settings from the options (layouts checked against `devices`).
  [[nodiscard]] moa::queueing::adaptive_config policy(std::size_t devices) const {
    moa::queueing::adaptive_config c;
    c.devices = devices;
    c.allowed = parse_layouts(layouts, devices);
    c.target = target;
    c.hysteresis = hysteresis;
    c.rate_window = rate_window;
    if (latency_objective > 0) c.latency_objective = latency_objective;
    return c;
  }
  static std::vector<moa::queueing::layout> parse_layouts(const std::string& text,
                                                          std::size_t devices);
};

/// `MxK[=Q],...`, checked: 1 to 64 layouts, M in [1, 64], K in [0, n-1], Q finite.
inline std::vector<moa::queueing::layout> adaptive_options::parse_layouts(const std::string& text,
                                                                          std::size_t devices) {
  std::vector<moa::queueing::layout> out;
  const auto bad = [&](std::string_view item, const std::string& why) {
    reject("--layouts", "'" + std::string(item.substr(0, 32)) + "' " + why +
                            "; give MxK[=QUALITY],... e.g. 2x2=0.9,1x1=0.5 (M in [1, 64], K in "
                            "[0, " +
                            std::to_string(devices - 1) + "], at most 64 layouts)");
  };
  std::string_view rest = text;
  if (rest.empty()) bad(rest, "is empty");
  while (!rest.empty()) {
    const auto comma = rest.find(',');
    const std::string_view item = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    const auto x = item.find('x');
    const auto eq = item.find('=');
    if (x == std::string_view::npos || (eq != std::string_view::npos && eq < x))
      bad(item, "is not MxK");
    std::uint64_t m = 0, k = 0;
    double quality = std::numeric_limits<double>::quiet_NaN();
    if (!parse_count(item.substr(0, x), m) || !parse_count(item.substr(x + 1, eq - x - 1), k))
      bad(item, "does not hold two counts");
    if (eq != std::string_view::npos && !parse_number(item.substr(eq + 1), quality))
      bad(item, "has no number after '='");
    if (m < 1 || m > 64 || k > devices - 1) bad(item, "is out of range");
    if (out.size() == 64) bad(item, "is one layout too many");
    out.push_back({std::uint32_t(m), std::uint32_t(k), quality});
  }
  return out;
}

/// `--ramp FROM:TO:STEPS`, checked.
inline std::vector<double> ramp_loads(const std::string& ramp) {
  const auto bad = [&ramp] {
    reject("--ramp", "'" + ramp.substr(0, 64) +
                         "' must read FROM:TO:STEPS with 0 < FROM <= TO <= 10 and STEPS in "
                         "[1, 100], e.g. 0.5:2:7");
  };
  const auto a = ramp.find(':');
  const auto b = a == std::string::npos ? a : ramp.find(':', a + 1);
  if (b == std::string::npos) bad();
  double from = 0, to = 0;
  std::uint64_t steps = 0;
  if (!parse_number(std::string_view(ramp).substr(0, a), from) ||
      !parse_number(std::string_view(ramp).substr(a + 1, b - a - 1), to) ||
      !parse_count(std::string_view(ramp).substr(b + 1), steps) || !(from > 0) || !(to >= from) ||
      to > 10 || steps < 1 || steps > 100)
    bad();
  std::vector<double> out;
  for (std::uint64_t i = 0; i < steps; ++i)
    out.push_back(from + (to - from) * (steps > 1 ? double(i) / double(steps - 1) : 0));
  return out;
}

/// The plot's data: one line per time bin, both runs side by side.
inline std::string ramp_plot_data(const moa::queueing::ramp_report& r) {
  std::ostringstream os;
  os.precision(8);
  os << "# time load adaptive_M adaptive_calls adaptive_refused adaptive_queue adaptive_latency "
        "static_queue static_latency\n";
  const auto cell = [](double x) { return std::isfinite(x) ? std::to_string(x) : "NaN"; };
  for (std::size_t i = 0; i < r.adaptive_series.size(); ++i) {
    const auto& a = r.adaptive_series[i];
    const auto& f = r.fixed_series[i];
    os << a.time << ' ' << a.load << ' ' << cell(a.mean_layers) << ' ' << cell(a.mean_calls) << ' '
       << a.refused << ' ' << a.queue << ' ' << cell(a.mean_latency) << ' ' << f.queue << ' '
       << cell(f.mean_latency) << '\n';
  }
  return os.str();
}

/// A gnuplot script drawing `data_path` into `svg_path`: four panels over time.
inline std::string ramp_plot_script(const std::string& data_path, const std::string& svg_path,
                                    const std::string& title) {
  std::ostringstream os;
  const std::string d = moa::eval::gnuplot_quoted(data_path);
  os << moa::eval::gnuplot_preamble("moa simulate --adaptive --plot", svg_path, title, 4, 1, 900)
     << "set key top left\n"
     << "set ylabel 'load (x static limit)'\n"
     << "plot " << d << " using 1:2 with steps lw 2 lc rgb '#4878d0' title 'offered load', "
     << "1 with lines dt 2 lc rgb grey title 'static limit'\n"
     << "set ylabel 'layers M / calls'\nset offsets 0, 0, graph 0.15, 0\nset key top right\n"
     << "plot " << d << " using 1:3 with steps lw 2 lc rgb '#ee854a' title 'adaptive M', " << d
     << " using 1:4 with steps lw 1 lc rgb '#6acc64' title 'adaptive calls (k+1)M+1', " << d
     << " using 1:($5*10) with steps lw 1 lc rgb '#d65f5f' title 'refused share x10'\n"
     << "set offsets 0, 0, 0, 0\nset key top left\n"
     << "set logscale y\nset ylabel 'calls in network'\n"
     << "plot " << d << " using 1:($6+0.5) with lines lw 2 lc rgb '#ee854a' title 'adaptive', " << d
     << " using 1:($8+0.5) with lines lw 2 lc rgb '#4878d0' title 'static'\n"
     << "set ylabel 'mean latency'\nset xlabel 'virtual time'\n"
     << "plot " << d << " using 1:7 with lines lw 2 lc rgb '#ee854a' title 'adaptive', " << d
     << " using 1:9 with lines lw 2 lc rgb '#4878d0' title 'static'\n"
     << "unset multiplot\n";
  return os.str();
}

/// Each layout's share of a phase's admitted prompts, as table cells and CSV fields.
inline void share_cells(const moa::queueing::phase_report& p, std::ostream& table,
                        std::ostream* csv) {
  char cell[32];
  const double admitted = double(p.arrived - p.refused);
  for (const auto n : p.at_layout) {
    const double share = admitted > 0 ? double(n) / admitted : 0;
    std::snprintf(cell, sizeof cell, " %6.3f", share);
    table << cell;
    if (csv) *csv << ',' << number_text(share);
  }
}

/// The table's head: load, arrived, refused and one column per layout.
inline void layout_head(const std::vector<moa::queueing::layout>& layouts, std::ostream& table,
                        std::ostream* csv) {
  char cell[64];
  std::snprintf(cell, sizeof cell, "%6s %7s %7s", "load", "arrived", "refused");
  table << cell;
  if (csv) *csv << "load,arrived,refused";
  for (const auto& l : layouts) {
    const std::string name = std::to_string(l.layers) + "x" + std::to_string(l.fanout);
    std::snprintf(cell, sizeof cell, " %6s", name.c_str());
    table << cell;
    if (csv) *csv << ",share_" << name;
  }
}

/// Runs the ramp; every option was checked before the first line of output.
inline void adaptive_command(std::size_t devices, std::size_t layers, std::size_t fanout,
                             const std::vector<double>& alpha, std::uint64_t seed,
                             const adaptive_options& a, const std::string& csv_path) {
  namespace q = moa::queueing;
  q::ramp_config c;
  c.devices = devices;
  if (devices < 2 || devices > 4096)
    reject("--devices", "--adaptive runs 2 to 4096 devices, not " + std::to_string(devices));
  c.alpha = alpha;
  c.reference = {std::uint32_t(layers), std::uint32_t(fanout)};
  c.loads = ramp_loads(a.ramp);
  c.phase_length = a.phase;
  c.seed = seed;
  c.policy = a.policy(devices);
  c.policy.prior_service = {1.0};  // run_ramp takes alpha
  output_file csv(csv_path, "--csv");
  const gnuplot_output plot(a.plot, "--plot");
  // The arrivals are materialised: bound them before running (about 4 users x 10 x limit).
  double expected = 0;
  {
    std::vector<double> per(devices);
    for (std::size_t j = 0; j < devices; ++j) per[j] = alpha.size() == 1 ? alpha[0] : alpha[j];
    const double one = 1;
    const double limit =
        q::uniform_stability(devices, layers, fanout, std::span<const double>(&one, 1), per)
            .max_scale;
    for (double f : c.loads) expected += f * limit * double(devices) * a.phase;
  }
  if (expected > 5e7)
    reject("--phase", "the ramp would make about " + number_text(expected) +
                          " prompts (at most 5e7); give shorter phases or fewer steps");
  const q::ramp_report r = q::run_ramp(c);

  std::ostringstream table, csv_text;
  char line[256];
  table << "static layout M=" << layers << " k=" << fanout << ": per-user limit "
        << number_text(r.limit) << "; adaptive: " << r.changes << " layout changes, "
        << r.adaptive_admitted << " admitted, " << r.adaptive_completed << " completed\n";
  layout_head(r.layouts, table, &csv_text);
  std::snprintf(line, sizeof line, " %9s %7s | %9s %7s %7s\n", "p99", "queue", "static p99",
                "queue", "done");
  table << line;
  csv_text << ",p99,mean_queue,static_p99,static_mean_queue,static_completed\n";
  for (std::size_t i = 0; i < r.adaptive.size(); ++i) {
    const auto& p = r.adaptive[i];
    const auto& f = r.fixed[i];
    std::snprintf(line, sizeof line, "%6.2f %7llu %7llu", p.load, (unsigned long long)p.arrived,
                  (unsigned long long)p.refused);
    table << line;
    csv_text << number_text(p.load) << ',' << p.arrived << ',' << p.refused;
    share_cells(p, table, &csv_text);
    std::snprintf(line, sizeof line, " %9.1f %7.1f | %9.1f %7.1f %7.3f\n", p.p99, p.mean_queue,
                  f.p99, f.mean_queue, f.arrived ? double(f.completed) / double(f.arrived) : 0.0);
    table << line;
    csv_text << ',' << number_text(p.p99) << ',' << number_text(p.mean_queue) << ','
             << number_text(f.p99) << ',' << number_text(f.mean_queue) << ',' << f.completed
             << '\n';
  }
  std::cout << table.str();
  if (csv) {
    csv.stream() << csv_text.str();
    csv.finish();
  }
  if (plot) {
    plot.draw(ramp_plot_data(r),
              ramp_plot_script(plot.data_path(), plot.path(),
                               "moa simulate --adaptive: n = " + std::to_string(devices) +
                                   ", static M=" + std::to_string(layers) +
                                   " k=" + std::to_string(fanout)));
    std::cout << "wrote " << plot.path() << " (script " << plot.script_path() << ")\n";
  }
}

/// `moa network --adaptive`: the ramp live on `models` (time unit 1 ms), then the simulator on
/// the service times the devices delivered, with the same arrivals; per phase, the layout shares
/// and refusals of both. Exit 1 when a prompt is unaccounted for.
inline int adaptive_network_command(std::vector<moa::any_backend> models,
                                    const std::vector<double>& alpha_ms, std::uint32_t layers,
                                    std::size_t fanout, std::uint64_t seed, std::size_t capacity,
                                    const adaptive_options& a) {
  namespace q = moa::queueing;
  const std::size_t n = models.size();
  if (n < 2) reject("--devices", "--adaptive needs at least 2 devices");
  q::ramp_config c;
  c.devices = n;
  c.alpha = alpha_ms;
  c.reference = {layers, std::uint32_t(fanout)};
  c.loads = ramp_loads(a.ramp);
  c.phase_length = a.phase;
  c.drain = 0;
  c.seed = seed;
  c.policy = a.policy(n);
  c.policy.prior_service = alpha_ms;
  const double one = 1;
  c.limit =
      q::uniform_stability(n, layers, fanout, std::span<const double>(&one, 1), alpha_ms).max_scale;
  double expected = 0;
  for (double f : c.loads) expected += f * c.limit * double(n) * a.phase;
  if (expected > 1e6)
    reject("--phase", "the live ramp would make about " + number_text(expected) +
                          " prompts (at most 1e6); give shorter phases or fewer steps");
  const auto arrivals = q::ramp_arrivals(n, c.loads, c.limit, c.phase_length, seed);

  // Per phase, what the live policy decided (by the decision's time).
  std::vector<double> ends;
  for (std::size_t p = 1; p <= c.loads.size(); ++p) ends.push_back(a.phase * double(p));
  std::vector<q::phase_report> live(c.loads.size());
  for (std::size_t p = 0; p < live.size(); ++p) {
    live[p].load = c.loads[p];
    live[p].at_layout.assign(c.policy.allowed.size(), 0);
  }
  std::mutex counting;
  moa::net::network_options opt;
  opt.layers = layers;
  opt.device.capacity = capacity;
  opt.seed = seed;
  opt.keep_records = false;
  const auto policy = moa::net::use_adaptive(opt, c.policy);
  opt.choose_layout = [&, policy](std::uint32_t origin, double now) {
    moa::net::layout_choice d = policy->choose(origin, now);
    const auto at = std::upper_bound(ends.begin(), ends.end(), now) - ends.begin();
    const std::lock_guard lock(counting);
    auto& p = live[std::min<std::size_t>(std::size_t(at), live.size() - 1)];
    ++p.arrived;
    if (!d.admitted) {
      ++p.refused;
    } else {
      for (std::size_t l = 0; l < c.policy.allowed.size(); ++l)
        if (c.policy.allowed[l].layers == d.layers && c.policy.allowed[l].fanout == d.fanout) {
          ++p.at_layout[l];
          break;
        }
    }
    return d;
  };
  moa::net::network net(std::move(models), moa::uniform_gossip{fanout}, opt);
  const auto r = net.run(arrivals);
  for (std::size_t j = 0; j < n; ++j)
    if (r.devices[j].mean_service > 0) c.alpha[j] = r.devices[j].mean_service;
  const q::ramp_report sim = q::run_ramp(c);

  std::ostringstream table;
  table << "live ramp: n=" << n << ", " << arrivals.size() << " prompts, " << r.refused
        << " refused, " << r.complete << " complete, " << r.degraded << " degraded, "
        << r.failed - r.refused << " failed otherwise; mean latency " << number_text(r.mean_latency)
        << " ms\nlive, then the simulator on the measured service times (shares of admitted):\n";
  layout_head(c.policy.allowed, table, nullptr);
  table << " |";
  layout_head(c.policy.allowed, table, nullptr);
  table << '\n';
  char line[64];
  for (std::size_t p = 0; p < live.size(); ++p) {
    for (const q::phase_report* ph :
         {static_cast<const q::phase_report*>(&live[p]), &sim.adaptive[p]}) {
      std::snprintf(line, sizeof line, "%6.2f %7llu %7llu", ph->load,
                    (unsigned long long)ph->arrived, (unsigned long long)ph->refused);
      table << line;
      share_cells(*ph, table, nullptr);
      table << (ph == &live[p] ? " |" : "\n");
    }
  }
  std::cout << table.str();
  return r.accounted() ? 0 : 1;
}

}  // namespace moa::cli
