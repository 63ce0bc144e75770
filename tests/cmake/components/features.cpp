// SPDX-License-Identifier: MIT
// moa::queueing, moa::swarm, moa::ranges and moa::json: a stability verdict exported as JSON, a
// DAG topology run, and its trace cut into layers by the range-v3 views.
#include <moa/exec/trace_views.hpp>
#include <moa/moa.hpp>
#include <moa/queueing.hpp>
#include <moa/queueing/json.hpp>
#include <moa/swarm.hpp>

#include <iostream>

int main() {
  namespace q = moa::queueing;
  const auto report =
      q::analyse(Eigen::VectorXd::Constant(8, 0.01), Eigen::VectorXd::Constant(8, 1.0),
                 q::gossip_visits(2, q::uniform_inclusion(8, 2)));
  const auto json = q::to_json(report);

  // Two layers of two proposers and the aggregator, every node on one synthetic model.
  const std::vector<std::vector<std::uint32_t>> layered{{0, 0}, {0, 0}};
  const auto dag = moa::dag_topology::from_layers(layered, 0);
  moa::synthetic_backend model({.name = "m"});
  std::vector<moa::backend_ref> refs{moa::backend_ref(model, "m")};
  const auto r = moa::inline_executor{}.execute(dag.make_plan(), refs, moa::make_request("q"));
  std::size_t layers = 0;
  for (const auto& layer : moa::views::layers(r.trace)) {
    (void)layer;
    ++layers;
  }
  std::cout << "features: " << (json.at("stable").get<bool>() ? "stable" : "unstable") << ", "
            << layers << " layers\n";
  return r.ok() ? 0 : 1;
}
