// SPDX-License-Identifier: MIT
// Quickstart: three proposers answer in two layers; backend 1 aggregates.
//
//   prompt ─┬─> alpha ─┐   ┌─> alpha ─┐
//           ├─> beta  ─┼─>─┼─> beta  ─┼─> beta (aggregator) ─> answer
//           └─> gamma ─┘   └─> gamma ─┘
//
// Runs on synthetic backends, so it needs no server: swap in your own backends (see
// custom_backend.cpp) to talk to real models.
#include <moa/moa.hpp>

#include <iostream>

int main() {
  //! [quickstart]
  using classic = moa::topology<moa::layers<2, moa::proposers<0, 1, 2>>, moa::aggregator<1>>;

  auto pipeline = moa::make_pipeline<classic>(moa::synthetic_backend({.name = "alpha"}),
                                              moa::synthetic_backend({.name = "beta"}),
                                              moa::synthetic_backend({.name = "gamma"}));
  moa::concurrent_executor executor;  // proposers of a layer run in parallel
  moa::result r = pipeline.run(executor, "Why is the sky blue?");

  std::cout << "status: " << moa::to_string(r.status) << '\n'
            << "answer: " << r.answer << '\n'
            << "tokens: " << r.usage.total() << '\n'
            << r.trace;
  //! [quickstart]
  return r.ok() ? 0 : 1;
}
