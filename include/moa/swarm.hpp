// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// DAG topologies and their search (Heterogeneous Swarms): graph decoding, particle swarm
/// optimisation, JFK-scores, the weight step for tunable models, utilities over datasets and
/// cost-aware search. See docs/SWARM.md.

#include "moa/backends/tunable_synthetic.hpp"
#include "moa/swarm/cost.hpp"
#include "moa/swarm/decode.hpp"
#include "moa/swarm/evaluate.hpp"
#include "moa/swarm/execute.hpp"
#include "moa/swarm/jfk.hpp"
#include "moa/swarm/joint.hpp"
#include "moa/swarm/pso.hpp"
#include "moa/swarm/search.hpp"
#include "moa/swarm/tunable.hpp"
#include "moa/topology/dag.hpp"
