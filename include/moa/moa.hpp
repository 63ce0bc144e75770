// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The umbrella header: everything that needs no optional dependency.
/// Optional parts (HTTP backend, ZeroMQ network) have headers of their own.

#include "moa/version.hpp"

#include "moa/core/backend.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/core/random.hpp"

#include "moa/gossip/gossip_concepts.hpp"
#include "moa/gossip/random_k.hpp"

#include "moa/topology/check.hpp"
#include "moa/topology/dot.hpp"
#include "moa/topology/gossip.hpp"
#include "moa/topology/layered.hpp"
#include "moa/topology/plan.hpp"

#include "moa/prompt/aggregation.hpp"

#include "moa/exec/executor.hpp"
#include "moa/exec/result.hpp"
#include "moa/exec/run_options.hpp"
#include "moa/exec/thread_pool.hpp"

#include "moa/backends/synthetic.hpp"

#include "moa/pipeline.hpp"
