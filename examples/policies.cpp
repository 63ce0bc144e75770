// SPDX-License-Identifier: MIT
// Aggregation and selection policies: the same three proposers, five ways to turn their answers
// into one. The proposers' answers are planted (two say 42, one says 41), so the output shows what
// each policy decided and what it cost in calls.
//
//   synthesis      the aggregator writes a new answer from all of them          (1 call)
//   majority vote  the most frequent final number wins                          (0 calls)
//   judge          a judge names the best answer by its number                  (1 call)
//   rank + fuse    a judge ranks them; the fuser synthesises the best two       (2 calls)
//   sparse         between layers a judge keeps the best two; a moderator stops
//                  the run as soon as the answers agree, skipping later layers
//
// Runs on synthetic backends, so it needs no server; with real models the same code runs on
// moa::openai_backend (see openai_moa.cpp).
#include <moa/moa.hpp>

#include <iomanip>
#include <iostream>
#include <string>

namespace {

// A planted model: `proposal` as a proposer, `verdict` when asked as aggregator or judge.
moa::synthetic_backend model(std::string name, std::string proposal, std::string verdict) {
  moa::synthetic_options o;
  o.name = std::move(name);
  o.answer = [proposal = std::move(proposal), verdict = std::move(verdict)](const moa::request& r) {
    return r.context.role == moa::call_role::aggregator ? verdict : proposal;
  };
  return moa::synthetic_backend(std::move(o));
}

// alpha ranks ("[3] > [1] > [2]"), beta synthesises, gamma judges ("[3]" names its own answer).
auto models() {
  return moa::make_pipeline<
      moa::topology<moa::layers<1, moa::proposers<0, 1, 2>>, moa::aggregator<1>>>(
      model("alpha", "6 x 7 = 42", "[3] > [1] > [2]"),
      model("beta", "I make it 41", "Fused: the answer is 42"),
      model("gamma", "The product is 42.", "[3]"));
}

void show(const char* policy, const moa::result& r) {
  std::cout << std::left << std::setw(14) << policy << " status " << moa::to_string(r.status)
            << ", answer \"" << r.answer << "\"";
  if (r.aggregation) {
    std::cout << ", policy calls " << r.aggregation->calls.size();
    if (r.aggregation->calls_saved > 0) std::cout << ", calls saved " << r.aggregation->calls_saved;
    for (const auto& note : r.aggregation->notes) std::cout << "\n" << std::setw(16) << "" << note;
  }
  std::cout << '\n';
}

}  // namespace

int main() {
  moa::inline_executor ex;
  const auto prompt = moa::make_request("What is 6 x 7?");

  // Compile time: the policy is the second argument of moa::topology. The compiler checks its
  // backend indices against the pack like any aggregator's.
  {
    using voted = moa::topology<moa::layers<1, moa::proposers<0, 1, 2>>,
                                moa::majority_vote<moa::last_number>>;
    auto pipe = moa::make_pipeline<voted>(model("alpha", "6 x 7 = 42", ""),
                                          model("beta", "I make it 41", ""),
                                          model("gamma", "The product is 42.", ""));
    show("majority vote", pipe.run(ex, prompt));
  }

  // Run time: the same pipeline, the policy chosen per run (run_options::aggregation).
  const auto pipe = models();
  show("synthesis", pipe.run(ex, prompt));

  moa::run_options judge;
  judge.aggregation = moa::any_aggregator(moa::judge_policy{.judge = 2});  // gamma judges
  show("judge", pipe.run(ex, prompt, judge));

  moa::run_options fuse;
  fuse.aggregation = moa::any_aggregator(moa::rank_fuse_policy{.judge = 0, .fuser = 1, .top = 2});
  show("rank + fuse", pipe.run(ex, prompt, fuse));

  // Sparse MoA over four layers: beta disagrees in layer 1 and comes round in layer 2, so the
  // moderator stops the run before layer 3 and layers 3 and 4 are never called.
  {
    moa::synthetic_options stubborn{.name = "beta"};
    stubborn.answer = [](const moa::request& r) {
      if (r.context.role == moa::call_role::aggregator) return std::string("Fused: 42");
      return std::string(r.context.layer == 1 ? "41" : "42, having read the others");
    };
    using deep = moa::topology<moa::layers<4, moa::proposers<0, 1, 2>>, moa::aggregator<1>>;
    auto sparse_pipe = moa::make_pipeline<deep>(model("alpha", "42", "[1] > [3] > [2]"),
                                                moa::synthetic_backend(std::move(stubborn)),
                                                model("gamma", "It is 42", "[1]"));
    moa::run_options sparse;
    sparse.aggregation = moa::any_aggregator(moa::sparse_policy{
        .judge = 0, .keep = 2, .moderator = moa::agreement{.extract = moa::last_number{}}});
    show("sparse", sparse_pipe.run(ex, prompt, sparse));
  }
  return 0;
}
