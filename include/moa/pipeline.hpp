// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Pipelines bind a topology to backends and run prompts through an executor.
///
/// @code{.cpp}
/// using classic = moa::topology<moa::layers<2, moa::proposers<0, 1, 2>>, moa::aggregator<1>>;
/// auto pipe = moa::make_pipeline<classic>(llama, qwen, mistral);  // checked by the compiler
/// moa::result r = pipe.run("Why is the sky blue?");                // inline executor
/// moa::concurrent_executor pool;
/// moa::result r2 = pipe.run(pool, "Why is the sky blue?");          // proposers in parallel
/// std::cout << r.answer << '\n' << r.trace;
/// @endcode
///
/// Backends are stored by value; pass `std::ref(b)` to keep your own object. A pipeline is
/// cheap to share between threads: run() is const and thread-safe if the backends are.

#include <array>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "moa/core/backend.hpp"
#include "moa/core/message.hpp"
#include "moa/core/result.hpp"
#include "moa/exec/async.hpp"
#include "moa/exec/executor.hpp"
#include "moa/exec/run_options.hpp"
#include "moa/topology/dot.hpp"
#include "moa/topology/layered.hpp"
#include "moa/topology/plan.hpp"

namespace moa {

namespace detail {

/// Runs prompts through a plan: what typed and runtime pipelines share.
class pipeline_core {
 public:
  [[nodiscard]] const moa::plan& plan() const noexcept { return plan_; }
  [[nodiscard]] std::span<const backend_ref> backends() const noexcept { return refs_; }
  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& r : refs_) out.push_back(r.name());
    return out;
  }
  /// The topology as Graphviz DOT text.
  [[nodiscard]] std::string dot(std::span<const call_record> trace = {}) const {
    const auto n = names();
    return to_dot(plan_, n, trace);
  }

  /// The aggregation policy runs get unless their run_options name one (empty: synthesis).
  [[nodiscard]] const any_aggregator& policy() const noexcept { return policy_; }

  result run(const request& prompt, const run_options& opt = {}) const {
    return run(inline_executor{}, prompt, opt);
  }
  result run(std::string prompt, const run_options& opt = {}) const {
    return run(make_request(std::move(prompt)), opt);
  }
  result run(const char* prompt, const run_options& opt = {}) const {
    return run(std::string(prompt), opt);
  }
  template <Executor E>
  result run(const E& executor, const request& prompt, const run_options& opt = {}) const {
    if (policy_ && !opt.aggregation) {
      // Only runs of a pipeline with a policy pay for this copy.
      auto with_policy = opt;
      with_policy.aggregation = policy_;
      return executor.execute(plan_, refs_, prompt, with_policy, owner_);
    }
    return executor.execute(plan_, refs_, prompt, opt, owner_);
  }
  template <Executor E>
  result run(const E& executor, std::string prompt, const run_options& opt = {}) const {
    return run(executor, make_request(std::move(prompt)), opt);
  }

  /// Starts a run on an async_executor; the future holds its result.
  std::future<result> run_async(const async_executor& executor, const request& prompt,
                                const run_options& opt = {}) const {
    if (policy_ && !opt.aggregation) {
      auto with_policy = opt;
      with_policy.aggregation = policy_;
      return executor.execute_async(plan_, refs_, prompt, with_policy, owner_);
    }
    return executor.execute_async(plan_, refs_, prompt, opt, owner_);
  }
  /// Starts a run on an async_executor; `on_done` receives its result.
  void run_async(const async_executor& executor, const request& prompt, const run_options& opt,
                 std::function<void(result)> on_done) const {
    if (policy_ && !opt.aggregation) {
      auto with_policy = opt;
      with_policy.aggregation = policy_;
      return executor.execute_async(plan_, refs_, prompt, with_policy, owner_, std::move(on_done));
    }
    executor.execute_async(plan_, refs_, prompt, opt, owner_, std::move(on_done));
  }

 protected:
  pipeline_core() = default;
  void bind(moa::plan p, std::span<const backend_ref> refs, std::shared_ptr<const void> owner,
            any_aggregator policy = {}) {
    plan_ = std::move(p);
    refs_ = refs;
    owner_ = std::move(owner);
    policy_ = std::move(policy);
  }

 private:
  moa::plan plan_;
  any_aggregator policy_;
  std::span<const backend_ref> refs_;
  // Owns the backends and refs_; shared with runs still in flight after an abandoned deadline.
  std::shared_ptr<const void> owner_;
};

template <std::size_t Index, class B>
constexpr bool check_backend() {
  static_assert(HasGenerate<B>,
                "moa: a backend must provide generate(const moa::request&) -> moa::response, as a "
                "member or a free function found by ADL; see moa/core/backend.hpp (the failing "
                "pack index and type are in the 'required from' line below)");
  if constexpr (HasGenerate<B>)
    static_assert(Backend<B>,
                  "moa: a backend's generate(const moa::request&) must return moa::response");
  return true;
}

template <class... Bs, std::size_t... Is>
constexpr bool check_backends(std::index_sequence<Is...>) {
  return (check_backend<Is, Bs>() && ...);
}

template <class B>
std::string default_name(const B& b, std::size_t index) {
  return moa::backend_name(b, "backend#" + std::to_string(index));
}

}  // namespace detail

/// @brief A layered MoA whose shape is a compile-time topology and whose backends are a pack.
/// Made by make_pipeline, which checks the pack against the topology.
template <class Topology, class... Bs>
class pipeline : public detail::pipeline_core {
 public:
  using topology_type = Topology;
  static constexpr std::size_t backend_count = sizeof...(Bs);

  explicit pipeline(Bs... backends) : store_(std::make_shared<storage>(std::move(backends)...)) {
    any_aggregator policy;
    if constexpr (requires { Topology::has_policy; }) {
      if constexpr (Topology::has_policy)
        policy = any_aggregator(typename Topology::aggregator_type{});
    }
    bind(Topology::make_plan(), store_->refs, store_, std::move(policy));
  }

  /// The I-th backend of the pack.
  template <std::size_t I>
  [[nodiscard]] auto& backend() noexcept {
    return detail::unwrap(std::get<I>(store_->backends));
  }

 private:
  struct storage {
    explicit storage(Bs... bs) : backends(std::move(bs)...) {
      std::apply(
          [this](auto&... b) {
            std::size_t i = 0;
            ((refs[i] = backend_ref(b, detail::default_name(b, i)), ++i), ...);
          },
          backends);
    }
    std::tuple<Bs...> backends;
    std::array<backend_ref, sizeof...(Bs)> refs;
  };
  std::shared_ptr<storage> store_;
};

/// @brief Binds backends to a compile-time topology. Rejected at compile time: a type that is
/// not a backend, a proposer or aggregator index outside the pack.
template <class Topology, class... Bs>
auto make_pipeline(Bs&&... backends) {
  static_assert(sizeof...(Bs) > 0, "moa::make_pipeline: give at least one backend");
  static_assert(detail::check_backends<std::decay_t<Bs>...>(std::index_sequence_for<Bs...>{}));
  Topology::template static_check<sizeof...(Bs)>();
  return pipeline<Topology, std::decay_t<Bs>...>(std::forward<Bs>(backends)...);
}

/// @brief A pipeline built at run time: backends in a vector, the topology a value (layered) or
/// any plan. Gets the same checks as compile-time pipelines, as topology_error.
///
/// @code{.cpp}
/// std::vector<moa::any_backend> backends;
/// for (auto name : {"a", "b", "c"}) backends.emplace_back(moa::synthetic_backend({.name = name}));
/// moa::runtime_pipeline pipe(std::move(backends), {.layers = {{0, 1, 2}, {0, 1, 2}}, .aggregator =
/// 0});
/// // The same, the final answer by majority vote (moa/aggregate/policies.hpp):
/// moa::runtime_pipeline voted(std::move(more), topology, moa::any_aggregator(moa::vote_policy{}));
/// @endcode
class runtime_pipeline : public detail::pipeline_core {
 public:
  /// `policy` decides the final answer (empty: synthesis by the topology's aggregator, which is
  /// also the backend a judge-type policy calls by default).
  runtime_pipeline(std::vector<any_backend> backends, const layered_topology& topology,
                   any_aggregator policy = {})
      : store_(make_storage(std::move(backends))) {
    topology.validate(store_->backends.size());
    bind(topology.make_plan(), store_->refs, store_, std::move(policy));
  }

  runtime_pipeline(std::vector<any_backend> backends, moa::plan p, any_aggregator policy = {})
      : store_(make_storage(std::move(backends))) {
    if (!p.sealed()) p.seal();
    if (p.backend_span() > store_->backends.size())
      MOA_THROW(topology_error("moa::runtime_pipeline: the plan calls backend " +
                               std::to_string(p.backend_span() - 1) + " but only " +
                               std::to_string(store_->backends.size()) + " backends were given"));
    bind(std::move(p), store_->refs, store_, std::move(policy));
  }

  [[nodiscard]] any_backend& backend(std::size_t i) { return store_->backends.at(i); }

 private:
  struct storage {
    explicit storage(std::vector<any_backend> bs) : backends(std::move(bs)) {
      refs.reserve(backends.size());
      for (std::size_t i = 0; i < backends.size(); ++i) {
        auto name = backends[i].name();
        refs.emplace_back(backends[i], name.empty() ? "backend#" + std::to_string(i) : name);
      }
    }
    std::vector<any_backend> backends;
    std::vector<backend_ref> refs;
  };
  static std::shared_ptr<storage> make_storage(std::vector<any_backend> backends) {
    if (backends.empty())
      MOA_THROW(topology_error("moa::runtime_pipeline: give at least one backend"));
    return std::make_shared<storage>(std::move(backends));
  }
  std::shared_ptr<storage> store_;
};

}  // namespace moa
