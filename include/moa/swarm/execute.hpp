// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Runs a DAG topology on real (or synthetic) backends through a moa executor: the answerer a
/// dataset_utility needs when the topology is to be judged by what it actually answers.
///
/// @code{.cpp}
/// std::vector<moa::synthetic_backend> models = ...;
/// std::vector<moa::backend_ref> refs;  // one per model, node i of a searched DAG runs refs[i]
/// moa::inline_executor ex;
/// moa::swarm::executor_answerer answer(ex, refs);
/// moa::swarm::dataset_utility accuracy(data, answer, moa::swarm::exact_match);
/// @endcode

#include <span>
#include <string>

#include "moa/core/backend.hpp"
#include "moa/core/message.hpp"
#include "moa/exec/executor.hpp"
#include "moa/exec/run_options.hpp"
#include "moa/topology/dag.hpp"

namespace moa::swarm {

/// @brief `answer(dag, prompt)`: builds the DAG's plan and runs it with `executor` on
/// `backends`; returns the answer, or "" when the run produced none (a failed run scores as a
/// wrong answer). Holds references: the executor and the backends must outlive it.
template <class Executor>
class executor_answerer {
 public:
  executor_answerer(const Executor& executor, std::span<const backend_ref> backends,
                    run_options options = {})
      : executor_(&executor), backends_(backends), options_(std::move(options)) {}

  std::string operator()(const dag_topology& dag, const std::string& prompt) const {
    dag.validate(backends_.size());
    const auto r = executor_->execute(dag.make_plan(), backends_, make_request(prompt), options_);
    return r.has_answer() ? r.answer : std::string();
  }

 private:
  const Executor* executor_;
  std::span<const backend_ref> backends_;
  run_options options_;
};

}  // namespace moa::swarm
