// SPDX-License-Identifier: MIT
// build error: generate\(const moa::request&\) must return moa::response
#include <moa/moa.hpp>

#include <string>

struct returns_text {
#ifdef MOA_SHOULD_FAIL
  std::string generate(const moa::request&) {
    return {};
  }
#else
  moa::response generate(const moa::request&) {
    return {};
  }
#endif
};

using t = moa::topology<moa::layers<1, moa::proposers<0>>, moa::aggregator<0>>;
auto built = moa::make_pipeline<t>(returns_text{});
