// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Queue stability of distributed MoA: analytic verdicts, queue and latency estimates, spectral
/// helpers, and the discrete-event simulator. JSON export is in moa/queueing/json.hpp (needs
/// nlohmann-json). See docs/QUEUEING.md.

#include "moa/queueing/adaptive.hpp"
#include "moa/queueing/adaptive_sim.hpp"
#include "moa/queueing/csv.hpp"
#include "moa/queueing/formulas.hpp"
#include "moa/queueing/gossip_matrix.hpp"
#include "moa/queueing/plan_source.hpp"
#include "moa/queueing/service.hpp"
#include "moa/queueing/sim_types.hpp"
#include "moa/queueing/simulator.hpp"
// Opt-in, not included here: moa/queueing/spectral.hpp (Eigen's eigensolvers).
#include "moa/queueing/stability.hpp"
