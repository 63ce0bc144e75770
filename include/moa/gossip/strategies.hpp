// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Every gossip strategy of moa (the catalogue is at the top of moa/gossip/random_k.hpp).

#include "moa/gossip/gossip_concepts.hpp"
#include "moa/gossip/graph.hpp"
#include "moa/gossip/load_aware.hpp"
#include "moa/gossip/random_k.hpp"
#include "moa/gossip/round_robin.hpp"
