// SPDX-License-Identifier: MIT
// build error: gossip fan-out k is larger than n-1
#include <moa/moa.hpp>

#ifdef MOA_SHOULD_FAIL
using edge = moa::gossip_topology<moa::devices<4>, moa::layers<2>, moa::random_k<4>>;
#else
using edge = moa::gossip_topology<moa::devices<4>, moa::layers<2>, moa::random_k<3>>;
#endif

constexpr auto calls = edge::calls_per_prompt;
