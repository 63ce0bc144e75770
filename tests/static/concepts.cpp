// SPDX-License-Identifier: MIT
// Compile-time behaviour, checked at compile time: what is and is not a backend, a gossip
// policy or an executor, and what topologies compute in constant expressions.
#include <doctest/doctest.h>

#include <functional>
#include <string>

#include <moa/moa.hpp>

namespace static_checks {

struct good {
  moa::response generate(const moa::request&);
};
struct wrong_return {
  std::string generate(const moa::request&);
};
struct wrong_argument {
  moa::response generate(int);
};
struct streaming {
  moa::response generate(const moa::request&);
  moa::response generate_stream(const moa::request&, moa::token_callback);
};
struct named {
  moa::response generate(const moa::request&);
  std::string_view name() const;
};

static_assert(moa::Backend<good>);
static_assert(moa::Backend<std::reference_wrapper<good>>);
static_assert(!moa::Backend<int>);
static_assert(!moa::Backend<wrong_return>);
static_assert(moa::HasGenerate<wrong_return>);
static_assert(!moa::Backend<wrong_argument>);
static_assert(!moa::HasGenerate<wrong_argument>);
static_assert(!moa::StreamingBackend<good>);
static_assert(moa::StreamingBackend<streaming>);
static_assert(moa::StreamingBackend<moa::synthetic_backend>);
static_assert(moa::NamedBackend<named>);
static_assert(!moa::NamedBackend<good>);
static_assert(moa::Backend<moa::any_backend>);

// A type with the right member but no opt-in tag is not a gossip policy.
struct accidental_select {
  std::size_t fanout() const;
  std::size_t select(const moa::gossip_context&, std::span<std::uint32_t>) const;
};
static_assert(!moa::GossipPolicy<accidental_select>);
static_assert(moa::GossipPolicy<moa::random_k<3>>);

static_assert(moa::Executor<moa::inline_executor>);
static_assert(moa::Executor<moa::concurrent_executor>);
static_assert(!moa::Executor<good>);

using classic = moa::topology<moa::layers<2, moa::proposers<0, 1, 2>>, moa::aggregator<1>>;
static_assert(classic::layer_count == 2);
static_assert(classic::calls_per_prompt == 7);
static_assert(classic::min_backends == 3);
static_assert(classic::check(3).ok());
static_assert(classic::check(2).fault == moa::topology_fault::proposer_out_of_range);
static_assert(classic::check(2).index == 2);

using narrowing = moa::topology<moa::layer_list<moa::proposers<0, 1, 2, 3>, moa::proposers<3, 1>>,
                                moa::aggregator<2>>;
static_assert(narrowing::calls_per_prompt == 7);
static_assert(narrowing::min_backends == 4);

using single = moa::topology<moa::layers<0, moa::proposers<0>>, moa::aggregator<0>>;
static_assert(single::calls_per_prompt == 1);

using edge = moa::gossip_topology<moa::devices<4>, moa::layers<2>, moa::random_k<2>>;
static_assert(edge::calls_per_prompt == 7);  // (k + 1) M + 1
static_assert(
    moa::gossip_topology<moa::devices<4>, moa::layers<3>, moa::random_k<3>>::calls_per_prompt ==
    13);

static_assert(moa::check_fanout(3, 4).ok());
static_assert(moa::check_fanout(4, 4).fault == moa::topology_fault::fanout_too_large);
static_assert(moa::version().major == MOA_VERSION / 10000);

}  // namespace static_checks

TEST_CASE("Static.checks_compiled") {
  // Everything above is checked by the compiler; this case records that the TU was built.
  CHECK(static_checks::classic::calls_per_prompt == 7);
}
