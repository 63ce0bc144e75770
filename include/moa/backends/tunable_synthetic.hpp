// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The synthetic backend with tunable parameters: an Eigen vector that a weight search
/// (moa/swarm/tunable.hpp) reads and writes, and that a `tuned_answer` hook turns into answers,
/// so weight searches run end to end without a GPU. Needs Eigen (CMake: moa::swarm).
///
/// @code{.cpp}
/// moa::tunable_synthetic_backend m({.name = "m",
///                                   .parameters = Eigen::Vector2d(0.5, -1.0),
///                                   .tuned_answer = [](const moa::request&,
///                                                      const Eigen::VectorXd& p) {
///                                     return std::to_string(p.sum());
///                                   }});
/// m.set_parameters(Eigen::Vector2d(1.0, 1.0));   // m now answers "2.000000"
/// @endcode

#include <Eigen/Core>

#include "moa/backends/synthetic.hpp"

namespace moa {

using tunable_synthetic_options = basic_synthetic_options<Eigen::VectorXd>;

/// @brief A synthetic backend whose answers may depend on an Eigen vector of parameters; each
/// copy has its own. set_parameters() must not race with generate() (searches set parameters
/// between evaluations).
using tunable_synthetic_backend = basic_synthetic_backend<Eigen::VectorXd>;

static_assert(Backend<tunable_synthetic_backend>);
static_assert(StreamingBackend<tunable_synthetic_backend>);

}  // namespace moa
