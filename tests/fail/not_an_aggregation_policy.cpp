// SPDX-License-Identifier: MIT
// build error: the second argument must be moa::aggregator<index> or an aggregation policy
#include <moa/moa.hpp>

#ifdef MOA_SHOULD_FAIL
struct looks_like_a_vote {  // has aggregate() and an index, but did not opt in with moa_policy
  static constexpr std::size_t index = 0;
  std::string aggregate(moa::policy_context&) const { return "42"; }
};
using voted = moa::topology<moa::layers<1, moa::proposers<0, 1>>, looks_like_a_vote>;
#else
using voted = moa::topology<moa::layers<1, moa::proposers<0, 1>>, moa::majority_vote<>>;
#endif

constexpr auto calls = voted::calls_per_prompt;
