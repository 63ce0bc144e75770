// SPDX-License-Identifier: MIT
#pragma once

// `moa search`: a topology search (Heterogeneous Swarms role step) over synthetic models with a
// planted best DAG, one progress line per iteration, the best topology written as JSON and DOT.
// Over real models (--endpoint, --roster) a topology is scored on a dataset: exact match, choice
// letter, or an LLM judge's rubric rating (--utility judge --judge MODEL).
//
//   moa search --models 5 --seed 7 --json best.json --dot best.dot
//   moa search --roster roster.json --dataset data.jsonl --utility judge --judge qwen

#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <moa/config/roster.hpp>
#include <moa/eval/scorers.hpp>
#include <moa/exec/executor.hpp>
#include <moa/swarm/evaluate.hpp>
#include <moa/swarm/execute.hpp>
#include <moa/swarm/joint.hpp>
#include <moa/swarm/search.hpp>
#include <moa/topology/dag.hpp>
#include <nlohmann/json.hpp>

#include <moa/swarm/planted.hpp>

#include "cli/backends.hpp"
#include "cli/common.hpp"

namespace moa::cli {

struct search_settings {
  std::size_t models = 5;
  std::uint64_t seed = 1;
  std::uint64_t plant_seed = 7;
  std::size_t particles = 10;
  std::size_t iterations = 100;
  std::size_t patience = 30;
  double step = 6.0;
  double top_p = 0.0;
  std::size_t threads = 0;
  std::string json_path = "-";
  std::string dot_path{};
  bool quiet = false;
  // Real models, scored on a dataset of (prompt, reference) pairs: one per endpoint, or every
  // model of a roster file.
  endpoint_flags endpoints{.api_key_env = "OPENAI_API_KEY", .max_tokens = 64};
  std::string roster_path{};
  std::string dataset_path{};
  CLI::App* cmd = nullptr;  // which options the command line gave (they beat the roster)
  // What scores a topology on the dataset: exact, choice or judge (the rubric LLM judge). Empty:
  // exact on a dataset, the planted credit on the synthetic bed.
  std::string utility{};
  std::string judge{};         // --utility judge: the judging model, a roster/--endpoint name
  int judge_max_tokens = 256;  // the judge's answer (a justification, then the rating)
  // --joint: Heterogeneous Swarms' joint loop (roles and weights) on tunable synthetic models.
  bool joint = false;
  std::size_t rounds = 5;
};

/// A dataset's size at most (it is read whole).
inline constexpr std::size_t max_dataset_bytes = std::size_t{64} << 20;

/// Reads a dataset: one JSON object a line, {"prompt": "...", "reference": "..."}; the reference
/// may be left out when a judge scores (it is then shown none).
inline std::vector<moa::swarm::example> read_dataset(const std::string& path,
                                                     bool reference_required = true) {
  std::istringstream in(read_text(path, "--dataset", max_dataset_bytes));
  std::vector<moa::swarm::example> data;
  std::string line;
  for (std::size_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto j = parse_json_text(line, "--dataset " + path + ":" + std::to_string(number), 4);
    const bool has_reference = j.is_object() && j.contains("reference");
    if (!j.is_object() || !j.contains("prompt") || !j["prompt"].is_string() ||
        (has_reference && !j["reference"].is_string()) || (!has_reference && reference_required))
      throw CLI::ValidationError(
          "--dataset",
          path + ":" + std::to_string(number) +
              (reference_required
                   ? ": expected {\"prompt\": \"...\", \"reference\": \"...\"} on one line"
                   : ": expected {\"prompt\": \"...\"} with an optional string "
                     "\"reference\" on one line"));
    data.push_back({j["prompt"].get<std::string>(),
                    has_reference ? j["reference"].get<std::string>() : std::string()});
  }
  if (data.empty()) throw CLI::ValidationError("--dataset", path + " holds no examples");
  return data;
}

/// The best topology as JSON: nodes (with their models), edges, sink, utility, search stats.
inline nlohmann::json topology_json(const moa::swarm::topology_search_result& r,
                                    const std::vector<std::string>& names) {
  nlohmann::json j;
  const auto& dag = r.best;
  for (std::size_t v = 0; v < dag.size(); ++v)
    j["nodes"].push_back(
        {{"id", v}, {"backend", dag.backends()[v]}, {"name", names[dag.backends()[v]]}});
  j["edges"] = nlohmann::json::array();
  for (std::size_t v = 0; v < dag.size(); ++v)
    for (std::size_t w = 0; w < dag.size(); ++w)
      if (dag.has_edge(v, w)) j["edges"].push_back({v, w});
  j["sink"] = dag.sink();
  j["utility"] = r.utility;
  j["iterations"] = r.iterations;
  j["evaluations"] = r.evaluations;
  j["stop"] = std::string(moa::swarm::to_string(r.stop));
  return j;
}

/// Writes the best topology as JSON (--json, - for stdout) and DOT (--dot), into the files that
/// run_search opened before the search started.
inline void write_search_outputs(output_file& json, output_file& dot, const nlohmann::json& j,
                                 const moa::dag_topology& best,
                                 const std::vector<std::string>& names) {
  json.stream() << j.dump(2) << '\n';
  json.finish();
  if (dot) {
    dot.stream() << best.to_dot(names, "moa_search");
    dot.finish();
  }
}

/// What the judge of --utility judge did, on stderr and in the JSON: its calls, the ones that
/// gave no rating (each scored 0), tokens and the cost at the roster's prices (none for the
/// synthetic bed's planted judge). Throws when no call gave a rating: the search ran on zeros.
inline void report_judge(const moa::eval::rubric_judge& judge, const std::string& name,
                         const moa::config::model_spec* spec, nlohmann::json& out) {
  const auto t = judge.tally();
  const double cost = spec ? spec->cost(t.tokens) : 0.0;
  out["judge"] = {{"model", name},
                  {"calls", t.calls},
                  {"unrated", t.unrated},
                  {"failed", t.failed},
                  {"unanswered", t.unanswered},
                  {"tokens_in", t.tokens.prompt_tokens},
                  {"tokens_out", t.tokens.completion_tokens},
                  {"cost", cost}};
  std::fprintf(stderr,
               "judge %s: %zu calls, %zu replies without a rating, %zu failed calls, %zu empty "
               "answers (each scored 0); tokens in %llu, out %llu; cost %.6f\n",
               name.c_str(), t.calls, t.unrated, t.failed, t.unanswered,
               static_cast<unsigned long long>(t.tokens.prompt_tokens),
               static_cast<unsigned long long>(t.tokens.completion_tokens), cost);
}

/// `moa search --joint`: roles and weights, alternated, on the tunable planted models. The utility
/// is uncached: a model's answers change with its weights.
inline void run_joint_search(const search_settings& s, moa::swarm::planted_swarm& bed,
                             output_file& json_out, output_file& dot_out) {
  moa::inline_executor ex;
  moa::swarm::executor_answerer answer(ex, bed.refs);
  auto utility = [&](const moa::dag_topology& dag) {
    return bed.score(answer(dag, "Why is the sky blue?"));
  };
  moa::swarm::swarm_search_options opt;
  opt.rounds = s.rounds;
  opt.seed = s.seed;
  opt.role.pso.particles = s.particles;
  opt.role.pso.max_iterations = s.iterations;
  opt.role.pso.patience = s.patience;
  opt.role.pso.step = s.step;
  opt.role.pso.threads = s.threads;
  opt.role.decode.top_p = s.top_p;
  opt.weight.pso.threads = s.threads;
  opt.weight.jfk.threads = s.threads;
  opt.weight.pso.max_iterations = 40;
  opt.weight.pso.patience = 10;
  opt.weight.jfk.assignments = 12;
  const auto r = moa::swarm::search_swarm(
      std::span(bed.models), utility, opt, [&](const moa::swarm::swarm_round& p) {
        if (!s.quiet)
          std::fprintf(stderr,
                       "round %zu: role step %.3f, weight step %.3f, best sampled assignment "
                       "%.3f, all-time best %.3f%s\n",
                       p.round, p.role_utility, p.weight_utility, p.best_assignment, p.best_utility,
                       p.promoted ? " (promoted a JFK assignment)" : "");
      });
  moa::swarm::topology_search_result as_search{.best = r.best,
                                               .utility = r.utility,
                                               .iterations = r.rounds,
                                               .evaluations = r.evaluations,
                                               .stop = r.rounds < s.rounds
                                                           ? moa::swarm::pso_stop::patience
                                                           : moa::swarm::pso_stop::max_iterations};
  auto json = topology_json(as_search, bed.names);
  json["rounds"] = r.rounds;
  for (const auto& p : r.parameters)
    json["parameters"].push_back(std::vector<double>(p.data(), p.data() + p.size()));
  write_search_outputs(json_out, dot_out, json, r.best, bed.names);
  std::fprintf(stderr, "best utility %.3f after %zu rounds\n", r.utility, r.rounds);
}

inline void run_search(const search_settings& s) {
  const auto given = [&](const char* option) { return cli::given(s.cmd, option); };
  const bool real = !s.endpoints.endpoints.empty() || !s.roster_path.empty();
  const bool judging = s.utility == "judge";
  if (s.joint && real)
    reject("--joint",
           "the joint search tunes model weights, which --endpoint and roster models do not "
           "expose; use it without them");
  if (s.joint && given("--utility"))
    reject("--utility",
           "the joint search scores the tunable bed by its planted credit; a utility is chosen "
           "for the role search only");
  if (!judging)
    for (const char* flag : {"--judge", "--judge-max-tokens"})
      if (given(flag)) reject(flag, "is used only with --utility judge");
  if (!real && (s.utility == "exact" || s.utility == "choice"))
    reject("--utility",
           s.utility +
               " compares answers with a --dataset's references (with --endpoint or "
               "--roster); the synthetic bed is scored by its planted credit, or by its "
               "planted judge with --utility judge");
  if (!real && given("--dataset"))
    reject("--dataset",
           "scores topologies of --endpoint or --roster models; the synthetic bed has its own "
           "prompts");
  if (!real && judging)
    for (const char* flag : {"--judge", "--judge-max-tokens"})
      if (given(flag))
        reject(flag,
               "the synthetic bed's judge is planted; --judge and --judge-max-tokens are for "
               "a judge among the --roster or --endpoint models");
  output_file json(s.json_path.empty() ? std::string("-") : s.json_path, "--json");
  output_file dot(s.dot_path, "--dot");
  std::vector<std::string> names;
  std::function<double(const moa::dag_topology&)> utility;
  std::unique_ptr<moa::swarm::planted_swarm> bed;
  moa::inline_executor ex;
  std::vector<moa::any_backend> remote;
  std::vector<moa::backend_ref> remote_refs;
  std::optional<moa::eval::rubric_judge> judge;  // shares its tally with the utility's copy
  std::optional<moa::config::model_spec> judge_spec;
  std::size_t models = s.models;
  if (real) {
#if MOA_CLI_OPENAI
    if (s.dataset_path.empty())
      throw CLI::ValidationError("--dataset",
                                 "a search over --endpoint or roster models needs a dataset to "
                                 "score topologies on (JSON lines with prompt and "
                                 "reference; the reference is optional with --utility judge)");
    // Flags are a roster too: one path from either to the backends.
    moa::config::roster roster;
    if (!s.roster_path.empty()) {
      for (const char* flag : {"--endpoint", "--model", "--api-key-env", "--models"})
        if (given(flag))
          reject(flag, "is not used with --roster: the roster names the models (each one a node)");
      roster = read_roster(s.roster_path, "--roster");
      for (auto& m : roster.models) {
        // --max-tokens is the nodes' answer; the judge has --judge-max-tokens.
        if (given("--max-tokens") && !(judging && m.name == s.judge))
          m.max_tokens = s.endpoints.max_tokens;
        if (given("--http-timeout-ms"))
          m.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(
              duration_ms(s.endpoints.http_timeout_ms));
      }
    } else {
      roster =
          moa::config::parse_roster({{"models", s.endpoints.models(s.endpoints.endpoints.size())}});
    }
    if (judging) {
      // The judge is a model of the roster (or of --endpoint: alpha, beta, ...), as in moa eval,
      // and like moa eval's default layouts it is not searched over: a node does not judge
      // itself.
      std::string known;
      for (const auto& m : roster.models) known += (known.empty() ? "" : ", ") + m.name;
      if (!given("--judge"))
        reject("--judge", "--utility judge needs the judging model: one of " + known);
      const auto it = std::find_if(roster.models.begin(), roster.models.end(),
                                   [&](const auto& m) { return m.name == s.judge; });
      if (it == roster.models.end())
        reject("--judge", "\"" + s.judge + "\" is not a model of " +
                              (s.roster_path.empty() ? std::string("--endpoint") : s.roster_path) +
                              "; models: " + known);
      if (roster.models.size() < 2)
        reject("--judge", "the judge is not searched over, and no other model is left to search (" +
                              known + "); give another model");
      // Flags beat the roster: the roster's max_tokens for the judge unless the flag is given;
      // --endpoint models have no roster value, so the flag's default applies.
      if (given("--judge-max-tokens") || s.roster_path.empty()) it->max_tokens = s.judge_max_tokens;
      judge_spec = *it;
      judge.emplace(model_backend(*it));
      roster.models.erase(it);
    }
    if (roster.models.size() > 16)
      reject(s.roster_path.empty() ? "--endpoint" : "--roster",
             "a search takes at most 16 models; " + std::to_string(roster.models.size()) +
                 " are given" + (judging ? " besides the judge" : ""));
    models = roster.models.size();
    for (const auto& m : roster.models) {
      names.push_back(m.name);
      remote.push_back(model_backend(m));
    }
    for (std::size_t i = 0; i < models; ++i) remote_refs.emplace_back(remote[i], names[i]);
    moa::swarm::executor_answerer answerer(ex, remote_refs);
    auto data = read_dataset(s.dataset_path, !judging);
    if (judging)
      utility = moa::swarm::dataset_utility(std::move(data), answerer, *judge);
    else
      utility = moa::swarm::dataset_utility(std::move(data), answerer,
                                            s.utility == "choice"
                                                ? moa::swarm::score_fn(moa::swarm::multiple_choice)
                                                : moa::swarm::score_fn(moa::swarm::exact_match));
#else
    throw CLI::ValidationError(s.roster_path.empty() ? "--endpoint" : "--roster",
                               "this moa was built without libcurl");
#endif
  } else {
    if (s.models < 1 || s.models > 16)
      throw CLI::ValidationError("--models", "between 1 and 16 synthetic models");
    for (std::size_t i = 0; i < s.models; ++i) names.push_back(model_name(i));
    bed = std::make_unique<moa::swarm::planted_swarm>(s.models, s.plant_seed, names, s.joint);
    if (s.joint) return run_joint_search(s, *bed, json, dot);
    const std::vector<moa::swarm::example> data = {{"Why is the sky blue?", ""},
                                                   {"What is 17 * 23?", ""}};
    if (judging) {
      // The bed's judge rates what score() would (moa/swarm/planted.hpp): same optimum, reached
      // through the rubric request and its parser.
      judge.emplace(moa::any_backend(bed->judge()));
      utility =
          moa::swarm::dataset_utility(data, moa::swarm::executor_answerer(ex, bed->refs), *judge);
    } else {
      utility = moa::swarm::dataset_utility(
          data, moa::swarm::executor_answerer(ex, bed->refs),
          [b = bed.get()](std::string_view a, std::string_view) { return b->score(a); });
    }
  }
  moa::swarm::topology_search_options opt;
  opt.pso.particles = s.particles;
  opt.pso.max_iterations = s.iterations;
  opt.pso.patience = s.patience;
  opt.pso.step = s.step;
  opt.pso.seed = s.seed;
  opt.pso.threads = s.threads;
  opt.pso.target_utility = 1.0;
  opt.decode.top_p = s.top_p;
  auto r =
      moa::swarm::search_topology(models, utility, opt, [&](const moa::swarm::pso_progress& p) {
        if (!s.quiet)
          std::fprintf(
              stderr,
              "iteration %zu: best %.3f, this iteration %.3f (mean %.3f), %zu evaluations\n",
              p.iteration, p.best_utility, p.iteration_best, p.iteration_mean, p.evaluations);
      });
  auto out = topology_json(r, names);
  if (judge)
    report_judge(*judge, judge_spec ? judge_spec->name : std::string("planted"),
                 judge_spec ? &*judge_spec : nullptr, out);
  write_search_outputs(json, dot, out, r.best, names);
  std::fprintf(stderr, "best utility %.3f after %zu iterations (%s)\n", r.utility, r.iterations,
               std::string(moa::swarm::to_string(r.stop)).c_str());
  if (judge) {
    const auto t = judge->tally();
    if (t.calls > 0 && t.unrated + t.failed == t.calls)
      MOA_THROW(moa::error("the judge rated none of its " + std::to_string(t.calls) +
                           " answers (no reply held a [[rating]] from 1 to 10, or every call "
                           "failed): the search compared zeros; check the judge model and "
                           "--judge-max-tokens"));
  }
}

/// Adds `moa search` to the program.
inline void add_search_command(CLI::App& app) {
  auto settings = std::make_shared<search_settings>();
  auto* cmd = app.add_subcommand(
      "search",
      "Search a DAG topology (Heterogeneous Swarms PSO) over synthetic models with a "
      "planted best DAG; writes the best topology as JSON and DOT");
  cmd->add_option("--models", settings->models, "Number of models (one node each)")
      ->transform(count_in(1, 16))
      ->capture_default_str();
  cmd->add_option("--seed", settings->seed, "Seed of the search")
      ->capture_default_str()
      ->transform(any_seed());
  cmd->add_option("--plant-seed", settings->plant_seed, "Seed of the planted best DAG")
      ->capture_default_str()
      ->transform(any_seed());
  cmd->add_option("--particles", settings->particles, "PSO particles")
      ->transform(count_in(1, 1000))
      ->capture_default_str();
  cmd->add_option("--iterations", settings->iterations, "Iteration cap")
      ->transform(count_in(1, 100000))
      ->capture_default_str();
  cmd->add_option("--patience", settings->patience,
                  "Stop after this many iterations without "
                  "improvement")
      ->transform(count_in(1, 100000))
      ->capture_default_str();
  cmd->add_option("--step", settings->step, "PSO step length")
      ->check(number_in(0, 1e6, true))
      ->capture_default_str();
  cmd->add_option("--top-p", settings->top_p, "Decode by top-p sampling (0: greedy)")
      ->check(number_in(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--threads", settings->threads, "Utility threads (0: one per core)")
      ->capture_default_str()
      ->transform(count_in(0, 1024));
  cmd->add_option("--json", settings->json_path,
                  "Where to write the best topology as JSON (-: stdout)")
      ->capture_default_str();
  cmd->add_option("--dot", settings->dot_path, "Where to write the best topology as DOT");
  cmd->add_flag("--quiet", settings->quiet, "No progress lines");
  cmd->add_flag("--joint", settings->joint,
                "Heterogeneous Swarms' joint loop: alternate the role step and the JFK-guided "
                "weight step on tunable synthetic models (planted best DAG and weights)");
  cmd->add_option("--rounds", settings->rounds, "--joint: role + weight rounds")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--utility,--score", settings->utility,
                  "What scores a topology on the --dataset: exact (exact match, the default), "
                  "choice (multiple-choice letter) or judge (an LLM judge's rubric rating 1-10 of "
                  "each answer to its prompt, as moa eval --score rubric; needs --judge). Without "
                  "--endpoint or --roster only judge: the synthetic bed's planted judge")
      ->check(CLI::IsMember({"exact", "choice", "judge"}));
  cmd->add_option("--roster", settings->roster_path,
                  "Roster file (JSON, docs/EVAL.md): every model of it is a node (needs "
                  "--dataset; --max-tokens and --http-timeout-ms given here beat it)");
#if MOA_CLI_OPENAI
  cmd->add_option("--endpoint", settings->endpoints.endpoints,
                  "OpenAI-compatible base URL of a model (repeat: one model per endpoint; "
                  "replaces the synthetic models, needs --dataset)")
      ->check(http_url());
  cmd->add_option("--model", settings->endpoints.model, "Model name sent to the endpoints");
  cmd->add_option("--api-key-env", settings->endpoints.api_key_env,
                  "Environment variable holding the API key")
      ->capture_default_str();
  cmd->add_option("--max-tokens", settings->endpoints.max_tokens, "Tokens per answer")
      ->transform(count_in(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--http-timeout-ms", settings->endpoints.http_timeout_ms,
                  "Deadline of each HTTP call (0: 5 minutes)")
      ->capture_default_str()
      ->transform(timeout_ms());
  cmd->add_option("--dataset", settings->dataset_path,
                  "JSON lines {\"prompt\": ..., \"reference\": ...} that score a topology (at "
                  "most " +
                      std::to_string(max_dataset_bytes >> 20) + " MiB)");
  cmd->add_option("--judge", settings->judge,
                  "--utility judge: the judging model, a model of --roster or of --endpoint "
                  "(alpha, beta, ...); it judges and is not searched over");
  cmd->add_option("--judge-max-tokens", settings->judge_max_tokens,
                  "--utility judge: tokens of the judge's reply (beats the roster's max_tokens; "
                  "--max-tokens is the nodes')")
      ->transform(count_in(1, 1 << 20))
      ->capture_default_str();
#endif
  settings->cmd = cmd;
  cmd->callback([settings] { run_search(*settings); });
}

}  // namespace moa::cli
