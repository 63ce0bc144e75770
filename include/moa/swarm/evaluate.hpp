// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Utility helpers: the score of a topology on a dataset of (prompt, reference answer) pairs,
/// with a user scoring function, examples evaluated in parallel, and a cache keyed by
/// (topology, assignment) so a search that proposes the same DAG twice runs it once.
///
/// | scorer            | 1 when                                                       |
/// |-------------------|--------------------------------------------------------------|
/// | `exact_match`     | answer and reference agree, ignoring case and outer spaces   |
/// | `multiple_choice` | the choice letter found in the answer is the reference's     |
///
/// A score function takes (answer, reference), or (answer, reference, prompt) when it must see
/// the question too: an LLM judge rating the answer to its prompt (moa::eval::rubric_judge,
/// moa/eval/scorers.hpp) is one.
///
/// @code{.cpp}
/// std::vector<moa::swarm::example> data = {{"2+2?", "4"}, {"Capital of France?", "Paris"}};
/// moa::swarm::dataset_utility accuracy(data, [&](const moa::dag_topology& dag,
///                                                const std::string& prompt) {
///   return run(dag, prompt);       // e.g. a moa::swarm::executor_answerer
/// }, moa::swarm::exact_match);
/// auto found = moa::swarm::search_topology(4, accuracy);
/// @endcode

#include <atomic>
#include <cctype>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "moa/core/error.hpp"
#include "moa/swarm/detail/parallel.hpp"
#include "moa/topology/dag.hpp"

namespace moa::swarm {

/// @brief One item of an evaluation set.
struct example {
  std::string prompt;
  std::string reference;
};

namespace detail {

constexpr bool is_space(char c) noexcept {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
constexpr char lower(char c) noexcept {
  return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c;
}
constexpr std::string_view trim(std::string_view s) noexcept {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}
constexpr bool is_letter(char c) noexcept {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

// A choice letter A-J standing alone ("B", "(B)", "B.", "B)") at position i of s.
constexpr bool lone_choice_at(std::string_view s, std::size_t i) noexcept {
  const char c = s[i];
  if (c < 'A' || c > 'J') return false;
  const bool left = i == 0 || !is_letter(s[i - 1]);
  const bool right = i + 1 == s.size() || !is_letter(s[i + 1]);
  return left && right;
}

}  // namespace detail

/// @brief 1 if `answer` equals `reference` ignoring ASCII case and surrounding white space.
constexpr double exact_match(std::string_view answer, std::string_view reference) noexcept {
  answer = detail::trim(answer);
  reference = detail::trim(reference);
  if (answer.size() != reference.size()) return 0.0;
  for (std::size_t i = 0; i < answer.size(); ++i)
    if (detail::lower(answer[i]) != detail::lower(reference[i])) return 0.0;
  return 1.0;
}

/// @brief The choice letter (A-J) an answer commits to: the first lone capital letter after the
/// last "answer" (any case: "The answer is (C)"), else the first lone capital letter at all.
constexpr std::optional<char> extract_choice(std::string_view answer) noexcept {
  std::size_t from = 0;
  for (std::size_t i = 0; i + 6 <= answer.size(); ++i) {
    bool match = true;
    for (std::size_t k = 0; k < 6 && match; ++k)
      match = detail::lower(answer[i + k]) == "answer"[k];
    if (match) from = i + 6;
  }
  for (std::size_t pass = 0; pass < 2; ++pass, from = 0)
    for (std::size_t i = from; i < answer.size(); ++i)
      if (detail::lone_choice_at(answer, i)) return answer[i];
  return std::nullopt;
}

/// @brief 1 if the answer's choice letter is the reference's ("B", "(B)", "answer: B").
constexpr double multiple_choice(std::string_view answer, std::string_view reference) noexcept {
  const auto got = extract_choice(answer), want = extract_choice(reference);
  return got && want && *got == *want ? 1.0 : 0.0;
}

/// @brief The cache key of a topology: its shape and which backend holds each node.
inline std::string topology_key(const dag_topology& t) {
  const std::size_t n = t.size();
  std::string key;
  key.reserve(8 + (n * n + 7) / 8 + 4 * n);
  for (int b = 0; b < 8; ++b) key += char((std::uint64_t(n) >> (8 * b)) & 0xff);
  const bool square =
      std::size_t(t.adjacency().rows()) == n && std::size_t(t.adjacency().cols()) == n;
  unsigned char bits = 0;
  std::size_t k = 0;
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < n; ++j, ++k) {
      if (square && t.has_edge(i, j)) bits |= (unsigned char)(1u << (k % 8));
      if (k % 8 == 7) key += char(std::exchange(bits, 0));
    }
  if (k % 8) key += char(bits);
  for (auto b : t.backends())
    for (int s = 0; s < 32; s += 8) key += char((b >> s) & 0xff);
  return key;
}

/// @brief Utilities of topologies already evaluated, keyed by (shape, assignment). Thread-safe.
/// Two threads asking for the same new key at once may both evaluate it; both store the same
/// value, so results do not depend on the race.
class evaluation_cache {
 public:
  [[nodiscard]] std::optional<double> find(const dag_topology& t) const {
    const auto key = topology_key(t);
    std::lock_guard lock(mutex_);
    if (auto it = map_.find(key); it != map_.end()) {
      hits_.fetch_add(1, std::memory_order_relaxed);
      return it->second;
    }
    misses_.fetch_add(1, std::memory_order_relaxed);
    return std::nullopt;
  }
  void store(const dag_topology& t, double utility) {
    auto key = topology_key(t);
    std::lock_guard lock(mutex_);
    map_.insert_or_assign(std::move(key), utility);
  }
  [[nodiscard]] std::size_t size() const {
    std::lock_guard lock(mutex_);
    return map_.size();
  }
  [[nodiscard]] std::size_t hits() const noexcept { return hits_.load(std::memory_order_relaxed); }
  [[nodiscard]] std::size_t misses() const noexcept {
    return misses_.load(std::memory_order_relaxed);
  }
  void clear() {
    std::lock_guard lock(mutex_);
    map_.clear();
  }

 private:
  mutable std::mutex mutex_;
  std::unordered_map<std::string, double> map_;
  mutable std::atomic<std::size_t> hits_{0}, misses_{0};
};

/// @brief Something that answers a prompt with a topology: `a(dag, prompt)` → text.
template <class A>
concept TopologyAnswerer = std::invocable<A&, const dag_topology&, const std::string&> &&
    std::convertible_to<std::invoke_result_t<A&, const dag_topology&, const std::string&>,
                        std::string>;

/// @brief A score function of (answer, reference): exact_match, multiple_choice, ...
using score_fn = std::function<double(std::string_view answer, std::string_view reference)>;

/// @brief A score function that also sees the prompt the answer was given to, as the third
/// argument (appended, so the first two mean what they mean to a score_fn).
using prompt_score_fn = std::function<double(std::string_view answer, std::string_view reference,
                                             std::string_view prompt)>;

/// @brief Scores an answer given its reference, and the prompt when it takes three arguments.
template <class S>
concept PromptScorer =
    std::invocable<S&, std::string_view, std::string_view, std::string_view> &&
    std::convertible_to <
    std::invoke_result_t<S&, std::string_view, std::string_view, std::string_view>,
double > ;
template <class S>
concept ReferenceScorer =
    std::invocable<S&, std::string_view, std::string_view> &&
    std::convertible_to < std::invoke_result_t<S&, std::string_view, std::string_view>,
double > ;
template <class S>
concept Scorer = PromptScorer<S> || ReferenceScorer<S>;

namespace detail {

// Whether a score function is empty (a null std::function or function pointer): checked at
// construction, so a search does not fail on its first evaluation.
template <class S>
bool empty_scorer(const S& s) noexcept {
  if constexpr (std::is_pointer_v<S>)
    return s == nullptr;
  else if constexpr (requires { s.target_type(); })  // a std::function
    return !s;
  else
    return false;
}

// Any score function as one of (answer, reference, prompt). A callable that takes three
// arguments gets the prompt, even if it could take two as well.
template <Scorer S>
prompt_score_fn as_prompt_scorer(S score) {
  if constexpr (PromptScorer<S>)
    return prompt_score_fn(std::move(score));
  else
    return
        [s = std::move(score)](std::string_view answer, std::string_view reference,
                               std::string_view) mutable { return double(s(answer, reference)); };
}

}  // namespace detail

/// @brief The mean score of a topology over a dataset: a utility for search_topology. Examples
/// run on `threads` threads (1: inline, which suits a search that already evaluates particles in
/// parallel); results are cached by (topology, assignment). An answerer that throws scores 0 for
/// that example, and so does a score function that throws. The score function is any Scorer: of
/// (answer, reference), or of (answer, reference, prompt). Thread-safe if the answerer and the
/// score function are.
///
/// @code{.cpp}
/// moa::swarm::dataset_utility acc(data, answerer, moa::swarm::multiple_choice);
/// double u = acc(dag);           // evaluates
/// double v = acc(dag);           // cached: acc.cache().hits() == 1
/// @endcode
template <TopologyAnswerer Answerer>
class dataset_utility {
 public:
  // The default, score_fn, keeps the callers that pass a braced or converted score_fn compiling.
  template <Scorer Score = score_fn>
  dataset_utility(std::vector<example> data, Answerer answer, Score score = exact_match,
                  std::size_t threads = 1,
                  std::shared_ptr<evaluation_cache> cache = std::make_shared<evaluation_cache>())
      : data_(std::move(data)),
        answer_(std::move(answer)),
        threads_(threads),
        cache_(std::move(cache)) {
    if (data_.empty())
      MOA_THROW(
          invalid_argument("moa::swarm::dataset_utility: the dataset is empty; give at "
                           "least one (prompt, reference) example"));
    if (detail::empty_scorer(score))
      MOA_THROW(invalid_argument("moa::swarm::dataset_utility: no scoring function"));
    score_ = detail::as_prompt_scorer(std::move(score));
    if (!cache_) MOA_THROW(invalid_argument("moa::swarm::dataset_utility: null cache"));
  }

  /// Mean score over the dataset, from the cache when this (topology, assignment) was seen.
  double operator()(const dag_topology& t) {
    if (auto hit = cache_->find(t)) return *hit;
    std::vector<double> scores(data_.size(), 0.0);
    auto one = [&](std::size_t i) {
      try {
        scores[i] =
            score_(std::string(answer_(t, data_[i].prompt)), data_[i].reference, data_[i].prompt);
      } catch (const std::exception&) {
        scores[i] = 0.0;  // a failed run is a wrong answer, not a failed search
      }
    };
    if (threads_ == 1) {
      for (std::size_t i = 0; i < data_.size(); ++i) one(i);
    } else {
      detail::fork_join_pool pool(detail::resolve_threads(threads_, data_.size()));
      pool.run(data_.size(), one);
    }
    double sum = 0.0;
    for (double s : scores) sum += s;
    const double mean = sum / double(data_.size());
    cache_->store(t, mean);
    return mean;
  }

  [[nodiscard]] const evaluation_cache& cache() const noexcept { return *cache_; }
  [[nodiscard]] std::size_t size() const noexcept { return data_.size(); }

 private:
  std::vector<example> data_;
  Answerer answer_;
  prompt_score_fn score_;
  std::size_t threads_;
  std::shared_ptr<evaluation_cache> cache_;
};

}  // namespace moa::swarm
