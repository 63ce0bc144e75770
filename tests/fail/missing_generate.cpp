// SPDX-License-Identifier: MIT
// build error: a backend must provide generate\(const moa::request&\) -> moa::response
#include <moa/moa.hpp>

struct not_a_backend {
#ifndef MOA_SHOULD_FAIL
  moa::response generate(const moa::request&) {
    return {};
  }
#endif
};

using t = moa::topology<moa::layers<1, moa::proposers<0>>, moa::aggregator<0>>;
auto built = moa::make_pipeline<t>(not_a_backend{});
