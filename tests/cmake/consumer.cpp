// SPDX-License-Identifier: MIT
// A downstream project: includes the umbrella header and runs a small MoA.
#include <moa/moa.hpp>

#include <iostream>

// The core is free of Eigen and range-v3: a consumer of moa::moa needs neither installed.
#if defined(EIGEN_WORLD_VERSION)
#error "moa/moa.hpp included Eigen"
#endif
#if defined(RANGES_V3_DETAIL_CONFIG_HPP)
#error "moa/moa.hpp included range-v3"
#endif

int main() {
  using topo = moa::topology<moa::layers<1, moa::proposers<0, 1>>, moa::aggregator<0>>;
  auto pipe = moa::make_pipeline<topo>(moa::synthetic_backend({.name = "a"}),
                                       moa::synthetic_backend({.name = "b"}));
  auto r = pipe.run("ping");
  const auto v = moa::version();
  std::cout << "consumer: moa " << v.major << '.' << v.minor << '.' << v.patch
            << (r.ok() ? " answered" : " failed") << '\n';
  return r.ok() ? 0 : 1;
}
