// SPDX-License-Identifier: MIT
// Two TUs include every umbrella header and the trace views; linking them proves nothing is
// defined twice (ODR).
#include <moa/exec/trace_views.hpp>
#include <moa/moa.hpp>
#include <moa/queueing.hpp>
#include <moa/swarm.hpp>

std::string answer_from_second_tu();

int main() {
  auto first = moa::synthetic_backend({.name = "x"}).generate(moa::make_request("odr")).text;
  return first == answer_from_second_tu() ? 0 : 1;
}
