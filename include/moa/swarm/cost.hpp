// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Cost-aware search (beyond the paper): a topology utility that also asks whether the devices
/// could carry the topology's load. Each node of a DAG is one call per prompt on its backend, so
/// at a prompt rate λ backend b receives λ·(nodes on b) calls per unit time; with mean service
/// time α_b its queue is an M/G/1 (moa::queueing::mg1). A topology that makes any queue unstable
/// scores `unstable_utility`; a stable one may pay `latency_weight` × the summed sojourn times of
/// its calls (an upper bound on a prompt's latency that includes queueing).
///
/// @code{.cpp}
/// moa::swarm::load_model load{.lambda = 0.2, .mean_service = {1.0, 1.5, 0.5}};
/// auto u = moa::swarm::cost_aware(accuracy, load);   // use u in search_topology or jfk_score
/// @endcode

#include <cstddef>
#include <limits>
#include <utility>
#include <vector>

#include "moa/core/error.hpp"
#include "moa/queueing/formulas.hpp"
#include "moa/topology/dag.hpp"

namespace moa::swarm {

/// @brief The traffic a topology must carry.
struct load_model {
  double lambda = 0.0;               ///< prompts per unit time
  std::vector<double> mean_service;  ///< per backend, in the unit of 1/lambda
  double scv = 1.0;                ///< squared coefficient of variation of service (1: exponential)
  double unstable_utility = -1.0;  ///< the score of a topology some queue cannot carry
  double latency_weight = 0.0;     ///< utility lost per unit of summed sojourn time
};

/// @brief Per-backend load of a topology under a load model.
struct load_report {
  std::vector<double> utilisation;  ///< rho per backend
  std::size_t bottleneck = 0;       ///< the backend of highest rho
  bool stable = true;
  double summed_sojourn = 0.0;  ///< Σ over calls of the sojourn at their backend
};

/// @brief The load `dag` puts on its backends at `model.lambda` prompts per unit time.
inline load_report dag_load(const dag_topology& dag, const load_model& model) {
  const auto backends = dag.backends();
  std::vector<double> calls(model.mean_service.size(), 0.0);
  for (auto b : backends) {
    if (b >= calls.size())
      MOA_THROW(invalid_argument("moa::swarm::dag_load: node bound to backend " +
                                 std::to_string(b) + " but mean_service has " +
                                 std::to_string(calls.size()) + " entries; give one per backend"));
    calls[b] += 1.0;
  }
  load_report r;
  r.utilisation.assign(calls.size(), 0.0);
  std::vector<double> sojourn(calls.size(), 0.0);
  for (std::size_t b = 0; b < calls.size(); ++b) {
    if (calls[b] == 0.0) continue;
    const auto q = queueing::mg1(model.lambda * calls[b], model.mean_service[b], model.scv);
    r.utilisation[b] = q.rho;
    sojourn[b] = q.sojourn;
    r.stable = r.stable && q.stable;
    if (q.rho > r.utilisation[r.bottleneck]) r.bottleneck = b;
  }
  for (auto b : backends) r.summed_sojourn += sojourn[b];
  return r;
}

/// @brief Wraps a topology utility: unstable topologies score `unstable_utility` (without
/// running `utility`), stable ones `utility(dag) - latency_weight * summed_sojourn`.
template <class Utility>
auto cost_aware(Utility&& utility, load_model model) {
  return
      [u = std::forward<Utility>(utility), m = std::move(model)](const dag_topology& dag) mutable {
        const auto load = dag_load(dag, m);
        if (!load.stable) return m.unstable_utility;
        return double(u(dag)) - m.latency_weight * load.summed_sojourn;
      };
}

}  // namespace moa::swarm
