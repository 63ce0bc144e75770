// SPDX-License-Identifier: MIT
#pragma once

// Synthetic models whose quality depends on their place in the graph, with a planted best DAG:
// the test bed of `moa search` and examples/swarm_search.cpp (not in the umbrella header), runnable
// without any LLM.
//
// Model k answers "[m<k> credit <c>]" where c sums the credits of the references it received,
// plus 1 when the models that fed it are exactly its planted inputs. The sink's credit divided
// by the number of models is the score, 1 only for the planted DAG.

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "moa/backends/synthetic.hpp"
#include "moa/core/backend.hpp"
#include "moa/core/random.hpp"

namespace moa::swarm {

struct planted_swarm {
  std::vector<std::int32_t> target;  ///< planted DAG: target[v] = node v feeds, -1 for the sink
  std::vector<moa::synthetic_backend> models;
  std::vector<moa::backend_ref> refs;
  std::vector<std::string> names;

  planted_swarm(std::size_t n, std::uint64_t seed, std::vector<std::string> model_names)
      : target(n, -1), names(std::move(model_names)) {
    moa::rng gen(seed);
    std::vector<std::int32_t> order(n);
    for (std::size_t i = 0; i < n; ++i) order[i] = std::int32_t(i);
    for (std::size_t i = n - 1; i > 0; --i) std::swap(order[i], order[gen.below(i + 1)]);
    for (std::size_t k = 1; k < n; ++k) target[std::size_t(order[k])] = order[gen.below(k)];
    models.reserve(n);
    for (std::size_t k = 0; k < n; ++k) {
      std::vector<std::uint32_t> inputs;
      for (std::size_t v = 0; v < n; ++v)
        if (target[v] == std::int32_t(k)) inputs.push_back(std::uint32_t(v));
      models.emplace_back(moa::synthetic_options{
          .name = names[k], .answer = [k, inputs](const moa::request& r) {
            std::vector<std::uint32_t> seen;
            long credit = 0;
            for (const auto& m : r.messages) scan(m.content, seen, credit);
            std::sort(seen.begin(), seen.end());
            seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
            credit += seen == inputs ? 1 : 0;
            return "[m" + std::to_string(k) + " credit " + std::to_string(credit) + "]";
          }});
    }
    for (std::size_t k = 0; k < n; ++k) refs.emplace_back(models[k], names[k]);
  }

  /// The score of a final answer: its credit over the number of models.
  [[nodiscard]] double score(std::string_view answer) const {
    std::vector<std::uint32_t> seen;
    long credit = 0;
    scan(answer, seen, credit);
    return double(credit) / double(target.size());
  }

 private:
  // Collects the "[m<k> credit <c>]" tags of a text.
  static void scan(std::string_view text, std::vector<std::uint32_t>& seen, long& credit) {
    for (auto at = text.find("[m"); at != std::string_view::npos; at = text.find("[m", at + 2)) {
      std::size_t i = at + 2;
      std::uint32_t k = 0, digits = 0;
      for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i, ++digits)
        k = k * 10 + std::uint32_t(text[i] - '0');
      constexpr std::string_view mid = " credit ";
      if (!digits || text.substr(i, mid.size()) != mid) continue;
      i += mid.size();
      long c = 0;
      for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) c = c * 10 + (text[i] - '0');
      if (i < text.size() && text[i] == ']') {
        seen.push_back(k);
        credit += c;
      }
    }
  }
};

}  // namespace moa::swarm
