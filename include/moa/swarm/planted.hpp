// SPDX-License-Identifier: MIT
#pragma once

// Synthetic models whose quality depends on their place in the graph, with a planted best DAG:
// the test bed of `moa search` and examples/swarm_search.cpp (not in the umbrella header), runnable
// without any LLM.
//
// Model k answers "[m<k> credit <c>]" where c sums the credits of the references it received,
// plus 1 when the models that fed it are exactly its planted inputs. The sink's credit divided
// by the number of models is the score, 1 only for the planted DAG.
//
// Tunable (`tunable = true`, for the joint role-and-weight search): each model also has two
// weights, drawn in [-2, 2]², and earns exp(-|w - w*|²) instead of 1 for its planted inputs, with
// w* a planted optimum in [-1, 1]²; the score is then 1 only for the planted DAG at w*.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "moa/backends/synthetic.hpp"
#include "moa/backends/tunable_synthetic.hpp"
#include "moa/core/backend.hpp"
#include "moa/core/random.hpp"

namespace moa::swarm {

struct planted_swarm {
  std::vector<std::int32_t> target;  ///< planted DAG: target[v] = node v feeds, -1 for the sink
  std::vector<moa::tunable_synthetic_backend> models;
  std::vector<moa::backend_ref> refs;
  std::vector<std::string> names;

  planted_swarm(std::size_t n, std::uint64_t seed, std::vector<std::string> model_names,
                bool tunable = false)
      : target(n, -1), names(std::move(model_names)) {
    moa::rng gen(seed);
    std::vector<std::int32_t> order(n);
    for (std::size_t i = 0; i < n; ++i) order[i] = std::int32_t(i);
    for (std::size_t i = n - 1; i > 0; --i) std::swap(order[i], order[gen.below(i + 1)]);
    for (std::size_t k = 1; k < n; ++k) target[std::size_t(order[k])] = order[gen.below(k)];
    const double ox = 2 * gen.uniform() - 1;  // two statements: argument order is unspecified
    const Eigen::Vector2d optimum(ox, 2 * gen.uniform() - 1);
    models.reserve(n);
    for (std::size_t k = 0; k < n; ++k) {
      std::vector<std::uint32_t> inputs;
      for (std::size_t v = 0; v < n; ++v)
        if (target[v] == std::int32_t(k)) inputs.push_back(std::uint32_t(v));
      auto answer = [k, inputs, optimum, tunable](const moa::request& r, const Eigen::VectorXd& w) {
        std::vector<std::uint32_t> seen;
        double credit = 0;
        for (const auto& m : r.messages) scan(m.content, seen, credit);
        std::sort(seen.begin(), seen.end());
        seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
        if (seen == inputs) credit += tunable ? std::exp(-(w - optimum).squaredNorm()) : 1.0;
        char text[64];
        std::snprintf(text, sizeof text, tunable ? "%.6f" : "%.0f", credit);
        return "[m" + std::to_string(k) + " credit " + text + "]";
      };
      Eigen::VectorXd start;
      if (tunable) {
        const double x = 4 * gen.uniform() - 2;
        start = Eigen::Vector2d(x, 4 * gen.uniform() - 2);
      }
      models.emplace_back(moa::tunable_synthetic_options{
          .name = names[k], .parameters = start, .tuned_answer = answer});
    }
    for (std::size_t k = 0; k < n; ++k) refs.emplace_back(models[k], names[k]);
  }

  /// The score of a final answer: its credit over the number of models.
  [[nodiscard]] double score(std::string_view answer) const {
    std::vector<std::uint32_t> seen;
    double credit = 0;
    scan(answer, seen, credit);
    return double(credit) / double(target.size());
  }

  /// A judge model with the planted preferences, for the LLM-judge utility (`moa search
  /// --utility judge`): asked for a rating, it answers "Rating: [[r]]" with r = 1 + 9 score(the
  /// request), which is 10 only for the planted DAG's answer. The request's other text (the
  /// rubric, the question) holds no credit tags, so the rating is the answer's; a search scored
  /// by this judge has the optimum of one scored by score() itself.
  [[nodiscard]] moa::synthetic_backend judge(std::string name = "judge") const {
    moa::synthetic_options o;
    o.name = std::move(name);
    o.answer = [n = target.size()](const moa::request& r) {
      std::vector<std::uint32_t> seen;
      double credit = 0;
      for (const auto& m : r.messages) scan(m.content, seen, credit);
      char text[80];
      std::snprintf(text, sizeof text, "Judged by its credit. Rating: [[%.6f]]",
                    1.0 + 9.0 * std::min(1.0, credit / double(n)));
      return std::string(text);
    };
    return moa::synthetic_backend(std::move(o));
  }

 private:
  // Collects the "[m<k> credit <c>]" tags of a text.
  static void scan(std::string_view text, std::vector<std::uint32_t>& seen, double& credit) {
    for (auto at = text.find("[m"); at != std::string_view::npos; at = text.find("[m", at + 2)) {
      std::size_t i = at + 2;
      std::uint32_t k = 0, digits = 0;
      for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i, ++digits)
        k = k * 10 + std::uint32_t(text[i] - '0');
      constexpr std::string_view mid = " credit ";
      if (!digits || text.substr(i, mid.size()) != mid) continue;
      i += mid.size();
      double c = 0, scale = 1;
      for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) c = c * 10 + (text[i] - '0');
      if (i < text.size() && text[i] == '.')
        for (++i; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i)
          c += (text[i] - '0') * (scale /= 10);
      if (i < text.size() && text[i] == ']') {
        seen.push_back(k);
        credit += c;
      }
    }
  }
};

}  // namespace moa::swarm
