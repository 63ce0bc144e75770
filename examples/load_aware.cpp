// SPDX-License-Identifier: MIT
// Load-aware gossip against the capacity bound: 4 devices, 2 layers, 2 peers per layer, and
// device 3 three times slower than the others.
//
//        user 0   user 1   user 2   user 3
//          |        |        |        |
//        [d0]     [d1]     [d2]     [d3: 3x slower]      each prompt: origin + 2 peers per
//          \________\________\________/                  layer, M = 2, aggregated at the origin
//                  gossip: uniform / least-loaded
//
// Uniform gossip sends every device the same call rate 7 lambda, so the slow device saturates at
// lambda = 1 / 21 = 0.048 per user. The capacity bound is the slow device's own work: it must
// serve its own user's 3 calls per prompt, 9 lambda < 1, lambda < 0.111. Steering peers away
// from it reaches the bound. The simulator shows it for a static steering (matrix gossip) and for
// load-aware gossip (least-loaded of the 3 others, on the simulated queue lengths: drawn at birth,
// redrawn when each later layer is forked), and sweeps lambda toward the bound to find the
// highest stable rate; the live in-process network runs the same load-aware gossip on gossiped
// queue lengths. (power_of_d<2, D> adds nothing here: with 3 other devices D = 3 is least-loaded
// and D = 2 is uniform.)
//
// Usage: load_aware [--quick]   (--quick: shorter runs and fewer prompts, as run by ctest)
#include <algorithm>
#include <chrono>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <string>
#include <vector>

#include <moa/backends/synthetic.hpp>
#include <moa/gossip/strategies.hpp>
#include <moa/net/network.hpp>
#include <moa/queueing/gossip_matrix.hpp>
#include <moa/queueing/simulator.hpp>
#include <moa/queueing/stability.hpp>

namespace {

constexpr std::uint32_t n = 4, layers = 2, k = 2;
const std::vector<double> alpha = {1, 1, 1, 3};  // ms

// The slow device's share of a fast origin's peers goes to the other two fast devices.
Eigen::MatrixXd steered() {
  Eigen::MatrixXd p = Eigen::MatrixXd::Zero(n, n);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      if (i != j) p(i, j) = 1;
  for (int j = 0; j < 3; ++j) p(3, j) = 2.0 / 3;
  return p;
}

double horizon = 2e5;  // ms of virtual time per simulation

// Exponential services, as the live backends draw them, so that both worlds run the same model.
template <class Gossip>
bool simulate(const char* name, Gossip g, double lambda, bool refresh_peers = true) {
  moa::queueing::sim_config cfg;
  cfg.lambda.assign(n, lambda);
  for (double a : alpha) cfg.service.push_back(moa::queueing::service_model::exponential(a));
  cfg.horizon = horizon;
  cfg.warmup = horizon / 10;
  moa::queueing::gossip_source source(n, layers, g, refresh_peers);
  const auto r = moa::queueing::simulate(cfg, source);
  std::cout << "  simulator  " << std::setw(13) << std::left << name << std::right << std::setw(7)
            << lambda << std::setw(11) << r.mean_latency << std::setw(10)
            << r.devices[3].utilisation << std::setw(11) << r.devices[3].mean_queue << "  "
            << (r.stable ? "stable"
                : r.verdict == moa::queueing::run_result::finding::unstable
                    ? "UNSTABLE (backlog grows)"
                    : "undecided (rho(d3) within the run's error of 1)")
            << '\n';
  // Near the bound the slow device runs at rho > 0.99: a run that sees no growth cannot prove it
  // below 1 either (undecided); only a growing backlog ends a sweep.
  return r.verdict != moa::queueing::run_result::finding::unstable;
}

// The highest rate of an increasing sweep below which no point is unstable (stable or undecided):
// one unstable point ends it, since a network that cannot carry lambda cannot carry more.
template <class Gossip>
double highest_stable(const char* name, Gossip g, const std::vector<double>& sweep) {
  double best = 0;
  for (double lambda : sweep) {
    if (!simulate(name, g, lambda)) break;
    best = lambda;
  }
  return best;
}

template <class Gossip>
void live(const char* name, Gossip g, double lambda, std::size_t prompts) {
  std::vector<moa::any_backend> models;
  for (std::uint32_t i = 0; i < n; ++i) {
    std::string model_name = "d";
    model_name += std::to_string(i);
    models.emplace_back(
        moa::synthetic_backend({.name = model_name,
                                .latency = moa::latency_model::exponential(std::chrono::nanoseconds(
                                    static_cast<std::int64_t>(alpha[i] * 1e6))),
                                .seed = 3 + i}));
  }
  moa::net::network<Gossip> net(std::move(models), g, {.layers = layers});
  const std::vector<double> rates(n, lambda);
  const auto r = net.run(moa::net::poisson_arrivals(rates, prompts, 9));
  // A growing backlog shows as latencies that keep rising through the run.
  const std::size_t q = r.prompts.size() / 4;
  double first = 0, last = 0;
  for (std::size_t i = 0; i < q; ++i) {
    first += r.prompts[i].latency / double(q);
    last += r.prompts[r.prompts.size() - 1 - i].latency / double(q);
  }
  const bool growing = last > 2 * first + 5;
  std::cout << "  live       " << std::setw(13) << std::left << name << std::right << std::setw(7)
            << lambda << std::setw(11) << r.mean_latency << std::setw(10)
            << r.devices[3].utilisation << std::setw(11) << r.devices[3].mean_queue << "  "
            << (growing ? "UNSTABLE (latency grows " : "stable (latency ") << first << " -> "
            << last << " ms)\n";
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const std::size_t prompts = quick ? 400 : 4000;
  // Close to the bound the slow device's queue relaxes slowly (L(d3) ~ 50 at 0.108): the full
  // run gives the instability detector 10x the time.
  horizon = quick ? 2e5 : 2e6;
  const double uniform_limit = moa::queueing::heterogeneous_limit(layers, k, alpha);
  const double bound = 1.0 / (alpha[3] * (layers + 1));
  std::cout << std::fixed << std::setprecision(3);
  std::cout << "n=4, M=2, k=2, alpha = 1, 1, 1, 3 ms\n"
            << "uniform gossip limit " << uniform_limit << " per user per ms; capacity bound "
            << bound << " (the slow device's own calls)\n\n"
            << "  world      gossip        lambda      latency  rho(d3)      L(d3)\n";
  const moa::queueing::matrix_gossip steer(steered());
  const moa::least_loaded_gossip least_loaded{k, 0};
  const std::vector<double> uniform_sweep =
      quick ? std::vector<double>{0.03, 0.045, 0.05} : std::vector<double>{0.03, 0.04, 0.045, 0.05};
  const std::vector<double> aware_sweep =
      quick ? std::vector<double>{0.07, 0.09, 0.1, 0.105, 0.108, 0.115}
            : std::vector<double>{0.05, 0.07, 0.09, 0.1, 0.105, 0.108, 0.11, 0.115};
  const double uniform_best = highest_stable("uniform", moa::uniform_gossip{k}, uniform_sweep);
  simulate("uniform", moa::uniform_gossip{k}, 0.07);
  simulate("steered", steer, 0.10);
  if (!quick) {
    // Peers drawn only at birth, on the birth queues: stale by the time layer 2 is forked.
    for (double lambda : {0.07, 0.1, 0.108, 0.11})
      simulate("ll-at-birth", least_loaded, lambda, /*refresh_peers=*/false);
  }
  const double aware_best = highest_stable("least-loaded", least_loaded, aware_sweep);
  std::cout << std::setprecision(0) << "\nsimulator: highest stable lambda, least-loaded "
            << std::setprecision(3) << aware_best << " = " << std::setprecision(0)
            << 100 * aware_best / bound << "% of the capacity bound; uniform "
            << std::setprecision(3) << uniform_best << " = " << std::setprecision(0)
            << 100 * uniform_best / bound << "%\n\n"
            << std::setprecision(3);
  if (quick) {
    live("uniform", moa::uniform_gossip{k}, 0.03, prompts);
    live("uniform", moa::uniform_gossip{k}, 0.07, prompts);
    live("least-loaded", least_loaded, 0.07, prompts);
    live("least-loaded", least_loaded, 0.09, prompts);
    return 0;
  }
  for (double lambda : {0.04, 0.05, 0.07, 0.09, 0.10, 0.105}) {
    live("uniform", moa::uniform_gossip{k}, lambda, prompts);
    live("least-loaded", least_loaded, lambda, prompts);
  }
  return 0;
}
