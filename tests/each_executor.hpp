// SPDX-License-Identifier: MIT
// Test support: runs a check against every blocking executor, so suites prove their behaviour
// does not depend on where calls run.
#pragma once

#include <doctest/doctest.h>

#include <moa/exec/executor.hpp>

namespace moa_test {

template <class F>
void with_each_executor(F check) {
  {
    INFO("inline executor");
    moa::inline_executor ex;
    check(ex);
  }
  {
    INFO("concurrent executor");
    moa::concurrent_executor ex(3);
    check(ex);
  }
}

}  // namespace moa_test
