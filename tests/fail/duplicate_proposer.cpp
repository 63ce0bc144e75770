// SPDX-License-Identifier: MIT
// build error: duplicate proposer in a layer
#include <moa/moa.hpp>

#ifdef MOA_SHOULD_FAIL
using t = moa::topology<moa::layers<2, moa::proposers<0, 1, 1>>, moa::aggregator<0>>;
#else
using t = moa::topology<moa::layers<2, moa::proposers<0, 1, 2>>, moa::aggregator<0>>;
#endif

constexpr auto calls = t::calls_per_prompt;
