// SPDX-License-Identifier: MIT
// Validates the queueing analytics against the simulator and measures the instability
// detector's error rates: the two tables of docs/QUEUEING.md.
//
//   ./build/examples/queueing_validation latency      # the latency error table (minutes)
//   ./build/examples/queueing_validation detector     # the verdict rates (tens of minutes)
//
// Both print markdown rows. n = 4, M = 2, k = 2, uniform gossip throughout.
#include <cstdio>
#include <string>
#include <vector>

#include <moa/gossip/random_k.hpp>
#include <moa/queueing/gossip_matrix.hpp>
#include <moa/queueing/simulator.hpp>
#include <moa/queueing/stability.hpp>

namespace q = moa::queueing;

namespace {

struct grid_case {
  const char* name;
  std::vector<double> weight, alpha;
  moa::service_model shape;
};

void latency_table() {
  const std::vector<grid_case> grid{
      {"homogeneous, exponential", {1, 1, 1, 1}, {1, 1, 1, 1}, moa::service_model::exponential(1)},
      {"unequal rates 1:1:2:4, exponential",
       {1, 1, 2, 4},
       {1, 1, 1, 1},
       moa::service_model::exponential(1)},
      {"device 3 three times slower, exponential",
       {1, 1, 1, 1},
       {1, 1, 1, 3},
       moa::service_model::exponential(1)},
      {"homogeneous, constant", {1, 1, 1, 1}, {1, 1, 1, 1}, moa::service_model::constant(1)},
      {"homogeneous, lognormal sigma 1",
       {1, 1, 1, 1},
       {1, 1, 1, 1},
       moa::service_model::lognormal(1, 1.0)},
      {"unequal rates 1:1:2:4, constant",
       {1, 1, 2, 4},
       {1, 1, 1, 1},
       moa::service_model::constant(1)},
      {"device 3 three times slower, lognormal sigma 1",
       {1, 1, 1, 1},
       {1, 1, 1, 3},
       moa::service_model::lognormal(1, 1.0)},
  };
  const auto p = q::uniform_inclusion(4, 2);
  q::gossip_source source(4, 2, moa::uniform_gossip{2});
  for (const auto& c : grid)
    for (double load : {0.3, 0.6, 0.85}) {
      Eigen::VectorXd lambda = Eigen::Map<const Eigen::VectorXd>(c.weight.data(), 4);
      const Eigen::VectorXd alpha = Eigen::Map<const Eigen::VectorXd>(c.alpha.data(), 4);
      lambda *= load / q::analyse(lambda, alpha, q::gossip_visits(2, p)).max_utilisation;
      const auto report = q::analyse(lambda, alpha, q::gossip_visits(2, p));
      double lower = 0, approx = 0, upper = 0;
      for (std::uint32_t o = 0; o < 4; ++o) {
        const auto b = q::latency(report, 2, p, alpha, o, c.shape);
        const double w = lambda(o) / lambda.sum();
        lower += w * b.lower;
        approx += w * b.approx;
        upper += w * b.upper;
      }
      q::sim_config cfg;
      cfg.lambda.assign(lambda.data(), lambda.data() + 4);
      for (double a : c.alpha) cfg.service.push_back(c.shape.scaled(a));
      cfg.horizon = 1e6;
      cfg.warmup = 1e5;
      cfg.seed = 7;
      const auto rep = q::replicate(cfg, source, 4);
      const double sim = rep.mean_latency.mean;
      std::printf(
          "| %s | %.2f | %.3f ± %.3f | %.3f (%+.1f%%) | %.3f (%+.1f%%) | %.3f (%+.1f%%) |\n",
          c.name, load, sim, rep.mean_latency.half_width, lower, 100 * (lower / sim - 1), approx,
          100 * (approx / sim - 1), upper, 100 * (upper / sim - 1));
      std::fflush(stdout);
    }
}

void detector_point(double rho, double horizon, double warmup, std::size_t runs) {
  q::sim_config cfg;
  cfg.lambda.assign(4, rho / 7);  // rho = alpha ((k + 1) M + 1) lambda
  cfg.service = {moa::service_model::exponential(1.0)};
  cfg.horizon = horizon;
  cfg.warmup = horizon * warmup;
  cfg.seed = 777;
  const auto rep = q::replicate(cfg, q::gossip_source(4, 2, moa::uniform_gossip{2}), runs);
  std::size_t stable = 0;
  for (const auto& r : rep.runs) stable += r.stable ? 1 : 0;
  const double n = double(runs);
  std::printf("| %.1f | %g | %g%% | %zu | %.1f%% | %.1f%% | %.1f%% |\n", rho, horizon, 100 * warmup,
              runs, 100 * double(stable) / n, 100 * double(rep.inconclusive_runs) / n,
              100 * double(rep.unstable_runs) / n);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string what = argc > 1 ? argv[1] : "latency";
  if (what == "latency") {
    latency_table();
  } else if (what == "detector") {
    detector_point(0.9, 1e4, 0, 1000);    // the library's default horizon
    detector_point(0.9, 2e4, 0.1, 1000);  // the command line's
    for (double rho : {0.9, 1.0, 1.1})
      for (double horizon : {1e3, 3e3, 1e4, 2e4, 1e5}) detector_point(rho, horizon, 0.1, 200);
  } else {
    std::fprintf(stderr, "usage: queueing_validation latency|detector\n");
    return 2;
  }
  return 0;
}
