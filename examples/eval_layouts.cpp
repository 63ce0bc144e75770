// SPDX-License-Identifier: MIT
// Is a MoA better than its members? Evaluates three synthetic models and two MoA layouts of a
// roster on a small arithmetic set (GSM8K-style last-number scoring), streaming results to a
// resumable JSONL file, then prints the table. Run it twice: the second run resumes and calls
// no model.
//
//   eval_layouts [results.jsonl]
#include <iostream>

#include <moa/config/roster.hpp>
#include <moa/eval/dataset.hpp>
#include <moa/eval/harness.hpp>

int main(int argc, char** argv) {
  const std::string data = MOA_EXAMPLE_DATA;
  const auto roster = moa::config::load_roster(data + "/roster_synthetic.json");
  const auto dataset = moa::eval::load_jsonl(data + "/arithmetic.jsonl");

  moa::eval::eval_options opt;
  opt.scorer = moa::eval::scorer_kind::number;
  if (argc > 1) opt.results_path = argv[1];
  // synthetic_only: the roster's models are embedded; with OpenAI endpoints, pass
  // moa::config::make_backend from <moa/config/roster_openai.hpp>.
  const auto report =
      moa::eval::evaluate(roster, dataset, {"alpha", "beta", "gamma", "moa-vote", "moa-2layer"},
                          opt, moa::eval::synthetic_only);
  std::cout << report;
  const auto& vote = report.layouts[3];
  std::cout << "moa-vote: " << vote.score.value << " against the best member's "
            << report.layouts[0].score.value << ", at " << vote.calls_per_item
            << " calls per item\n";
  return report.complete ? 0 : 1;
}
