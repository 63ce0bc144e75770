// SPDX-License-Identifier: MIT
#include <moa/exec/trace_views.hpp>
#include <moa/moa.hpp>
#include <moa/queueing.hpp>
#include <moa/swarm.hpp>

std::string answer_from_second_tu() {
  return moa::synthetic_backend({.name = "x"}).generate(moa::make_request("odr")).text;
}
