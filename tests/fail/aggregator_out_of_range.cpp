// SPDX-License-Identifier: MIT
// build error: aggregator index out of range for the backend pack
#include <moa/moa.hpp>

#ifdef MOA_SHOULD_FAIL
using t = moa::topology<moa::layers<2, moa::proposers<0, 1>>, moa::aggregator<2>>;
#else
using t = moa::topology<moa::layers<2, moa::proposers<0, 1>>, moa::aggregator<1>>;
#endif

using b = moa::synthetic_backend;
auto built = moa::make_pipeline<t>(b{}, b{});
