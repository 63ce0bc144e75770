// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The umbrella header of the core: backends, topologies, executors, pipelines. The feature
/// families have umbrellas of their own, so that a TU pays only for what it uses (the queueing
/// and swarm headers add ~7 s of compile time per TU, mostly Eigen):
///   moa/queueing.hpp   stability verdicts, queue estimates, the simulator
///   moa/swarm.hpp      DAG topologies and their search (Heterogeneous Swarms)
/// Optional dependencies are reached only from their own headers (moa/backends/openai.hpp,
/// moa/net/zmq*.hpp, moa/queueing/json.hpp, moa/exec/trace_views.hpp).

#include "moa/version.hpp"

#include "moa/core/async_backend.hpp"
#include "moa/core/backend.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/core/random.hpp"
#include "moa/core/result.hpp"

#include "moa/gossip/gossip_concepts.hpp"
#include "moa/gossip/random_k.hpp"

#include "moa/topology/check.hpp"
#include "moa/topology/dot.hpp"
#include "moa/topology/gossip.hpp"
#include "moa/topology/layered.hpp"
#include "moa/topology/plan.hpp"

#include "moa/prompt/aggregation.hpp"

#include "moa/aggregator.hpp"

#include "moa/exec/async.hpp"
#include "moa/exec/executor.hpp"
#include "moa/exec/plan_run.hpp"
#include "moa/exec/run_options.hpp"
#include "moa/exec/scheduler.hpp"
#include "moa/exec/thread_pool.hpp"

#include "moa/backends/synthetic.hpp"

#include "moa/pipeline.hpp"
