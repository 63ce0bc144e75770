// SPDX-License-Identifier: MIT
#include <moa/moa.hpp>

std::string answer_from_second_tu() {
  return moa::synthetic_backend({.name = "x"}).generate(moa::make_request("odr")).text;
}
