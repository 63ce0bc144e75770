// SPDX-License-Identifier: MIT
// Writes a topology as Graphviz DOT: a layered MoA, and a gossip plan of a 4-device network.
//
//   layered:  prompt -> {a, b, c} -> {a, c} -> b -> answer
//   gossip:   device 2 + 2 random peers per layer, aggregated at device 2
//
// Render with: dot -Tsvg layered.dot -o layered.svg
#include <moa/moa.hpp>

#include <fstream>
#include <iostream>

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : ".";
  using narrowing = moa::topology<moa::layer_list<moa::proposers<0, 1, 2>, moa::proposers<0, 2>>,
                                  moa::aggregator<1>>;
  auto pipeline = moa::make_pipeline<narrowing>(moa::synthetic_backend({.name = "a"}),
                                                moa::synthetic_backend({.name = "b"}),
                                                moa::synthetic_backend({.name = "c"}));
  const auto run = pipeline.run("Draw me");
  std::ofstream(dir + "/layered.dot") << pipeline.dot(run.trace);

  using edge = moa::gossip_topology<moa::devices<4>, moa::layers<2>, moa::random_k<2>>;
  moa::rng random(42);
  const auto gossip_plan = edge::make_plan(2, random);
  const std::vector<std::string> devices{"device0", "device1", "device2", "device3"};
  std::ofstream(dir + "/gossip.dot") << moa::to_dot(gossip_plan, devices, {}, "gossip");

  std::cout << pipeline.dot(run.trace);
  std::cout << "wrote " << dir << "/layered.dot and " << dir << "/gossip.dot\n";
  return 0;
}
