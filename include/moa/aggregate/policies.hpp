// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The catalogue of aggregation policies: how a run turns the last layer's answers into one, and
/// (sparse) which answers each layer passes on.
///
/// The policies, each with its runtime form / compile-time form, the backend calls it makes at
/// the sink, and what it returns:
/// - `aggregator<I>` (no policy): 1 call, synthesis by I; a new answer.
/// - `vote_policy` / `majority_vote<Extractor>`: no call; the winning answer.
/// - `judge_policy` / `judge_select<I>`: 1 call, the judge picks by index; one of the answers.
/// - `rank_fuse_policy` / `rank_fuse<J, F, Top>`: 2 calls, J ranks and F fuses the top; a new
///   answer.
/// - `sparse_policy` / `sparse<J, Keep, Moderator>`: 1 ranking call per layer (J keeps Keep) plus
///   the synthesis; a new answer.
///
/// When to use:
/// - **synthesis** (`moa::aggregator<I>`, the default): open-ended answers (explanations, code,
///   prose) that benefit from merging; costs one call.
/// - **majority_vote** (self-consistency): questions with a short checkable answer (a number, an
///   option letter) and an extractor that finds it; costs nothing beyond the proposers and is
///   immune to an aggregator's hallucination. Ties are broken by plan order: among the answers
///   with the most votes, the one given first (by the first proposer in the topology's order)
///   wins; `tie_break::fail` makes a tie an error instead.
/// - **judge_select**: answers that cannot be merged or voted (code that must compile as a whole,
///   a single plan) when one model can judge; the answer is a proposer's text verbatim. A reply
///   naming no valid answer is an error, or a fallback you choose (`on_invalid_reply`), never a
///   silent pick.
/// - **rank_fuse**: many proposers, some weak: rank them, then synthesise only the best few,
///   so weak answers do not dilute the fusion.
/// - **sparse** (Sparse Mixture-of-Agents): deep layered runs where passing every answer to every
///   proposer costs too many tokens; a judge keeps the best `Keep` answers per layer and an
///   optional moderator stops early when the answers agree, skipping the remaining layers (the
///   report counts the calls saved).
///
/// Answer extractors (for voting and moderators): `whole_answer` (trimmed, case-folded text),
/// `last_number` (the last number, normalised: "1,000.50" -> "1000.5"), `option_letter`
/// (a multiple-choice letter). Any `std::string(std::string_view)` callable works; an empty
/// result is an abstention.
///
/// @code{.cpp}
/// // Compile time: three proposers, two layers, the final number by majority vote.
/// using voted = moa::topology<moa::layers<2, moa::proposers<0, 1, 2>>,
///                             moa::majority_vote<moa::last_number>>;
/// auto pipe = moa::make_pipeline<voted>(a, b, c);
/// // Run time: the same policy for a runtime pipeline.
/// moa::runtime_pipeline rp(std::move(backends), topology,
///                          moa::any_aggregator(moa::vote_policy{.extract = moa::last_number{}}));
/// @endcode
///
/// The catalogue is split by concern: extractors.hpp, judge_parse.hpp, vote.hpp, judge.hpp
/// (judge selection, rank-then-fuse), sparse.hpp; this header includes them all.

#include "moa/aggregate/aggregator_concepts.hpp"
#include "moa/aggregate/any_aggregator.hpp"
#include "moa/aggregate/extractors.hpp"
#include "moa/aggregate/judge.hpp"
#include "moa/aggregate/judge_parse.hpp"
#include "moa/aggregate/sparse.hpp"
#include "moa/aggregate/vote.hpp"
