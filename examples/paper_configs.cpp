// SPDX-License-Identifier: MIT
// The structure of the experiments of "Distributed Mixture-of-Agents for Edge Inference with
// LLMs" (Mitra, Kaswan, Ulukus 2024): n = 4 devices, lambda = 1/4 prompt per unit time per user,
// (M, k) in {(0,0),(1,1),(1,2),(2,1),(2,2),(1,3),(2,3)}. For each: the analytic stability margin,
// then the simulated mean queue size and latency, for equal devices and for four speeds.
//
//   users 0..3 --> devices 0..3, each prompt: M layers of (origin + k peers), then aggregation
#include <cstdio>
#include <utility>
#include <vector>

#include <moa/gossip/random_k.hpp>
#include <moa/queueing/simulator.hpp>
#include <moa/queueing/stability.hpp>

namespace q = moa::queueing;

int main() {
  constexpr std::uint32_t n = 4;
  constexpr double lambda = 0.25;
  const std::vector<std::pair<std::uint32_t, std::uint32_t>> configs{{0, 0}, {1, 1}, {1, 2}, {2, 1},
                                                                     {2, 2}, {1, 3}, {2, 3}};
  const std::vector<std::pair<const char*, std::vector<double>>> speeds{
      {"homogeneous, alpha = 0.2", {0.2, 0.2, 0.2, 0.2}},
      {"four speeds, alpha = 0.1 0.15 0.2 0.3", {0.1, 0.15, 0.2, 0.3}}};
  for (const auto& [title, alpha] : speeds) {
    std::printf("%s (lambda = 1/4 per user, exponential service)\n", title);
    std::printf("%-10s %6s %8s %8s %14s %16s\n", "(M, k)", "calls", "max rho", "margin",
                "mean queue", "mean latency");
    for (const auto& [m, k] : configs) {
      const std::vector<double> l{lambda};
      const auto v = q::uniform_stability(n, m, k, l, alpha);
      q::sim_config cfg;
      cfg.lambda.assign(n, lambda);
      for (double a : alpha) cfg.service.push_back(q::service_model::exponential(a));
      cfg.horizon = 4e4;
      cfg.warmup = 4e3;
      cfg.seed = 4;
      q::gossip_source source(n, m, moa::uniform_gossip{k});
      const auto rep = q::replicate(cfg, source, 4);
      double queue = 0;
      for (const auto& e : rep.mean_queue) queue += e.mean / n;
      std::printf("M=%u k=%u %7u %8.3f %8.3f %14.3f %9.3f+-%-6.3f%s\n", m, k, (k + 1) * m + 1,
                  v.max_utilisation, v.margin, queue, rep.mean_latency.mean,
                  rep.mean_latency.half_width, v.stable ? "" : "  UNSTABLE");
    }
    std::printf("\n");
  }
  return 0;
}
