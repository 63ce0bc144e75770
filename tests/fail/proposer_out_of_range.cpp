// SPDX-License-Identifier: MIT
// build error: proposer_index_out_of_range<2, 5, 3>
#include <moa/moa.hpp>

#ifdef MOA_SHOULD_FAIL
using t = moa::topology<moa::layer_list<moa::proposers<0, 1, 2>, moa::proposers<0, 1, 5>>,
                        moa::aggregator<0>>;
#else
using t = moa::topology<moa::layer_list<moa::proposers<0, 1, 2>, moa::proposers<0, 1, 2>>,
                        moa::aggregator<0>>;
#endif

using b = moa::synthetic_backend;
auto built = moa::make_pipeline<t>(b{}, b{}, b{});
