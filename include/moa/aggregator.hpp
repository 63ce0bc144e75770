// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Aggregation and selection policies: the concept (moa/aggregate/aggregator_concepts.hpp), its
/// runtime form (any_aggregator) and the catalogue (moa/aggregate/policies.hpp: majority vote,
/// judge selection, rank then fuse, sparse propagation).

#include "moa/aggregate/aggregator_concepts.hpp"
#include "moa/aggregate/any_aggregator.hpp"
#include "moa/aggregate/policies.hpp"
