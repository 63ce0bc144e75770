// SPDX-License-Identifier: MIT
// build error: a layer has zero proposers
#include <moa/moa.hpp>

#ifdef MOA_SHOULD_FAIL
using t =
    moa::topology<moa::layer_list<moa::proposers<0, 1>, moa::proposers<>>, moa::aggregator<0>>;
#else
using t =
    moa::topology<moa::layer_list<moa::proposers<0, 1>, moa::proposers<1>>, moa::aggregator<0>>;
#endif

constexpr auto calls = t::calls_per_prompt;
