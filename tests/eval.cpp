// SPDX-License-Identifier: MIT
// The evaluation harness (moa/eval/) and rosters (moa/config/roster.hpp), against planted
// synthetic backends whose right answers and preferences are known.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <moa/config/roster.hpp>
#include <moa/core/random.hpp>
#include <moa/eval/dataset.hpp>
#include <moa/eval/harness.hpp>
#include <moa/eval/plot.hpp>
#include <moa/eval/replay.hpp>
#include <moa/eval/scorers.hpp>
#include <moa/eval/stats.hpp>
#include <moa/exec/executor.hpp>
#include <moa/swarm/evaluate.hpp>
#include <moa/swarm/execute.hpp>
#include <moa/swarm/planted.hpp>
#include <moa/swarm/search.hpp>

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A scratch file removed at the end of the test.
struct temp_file {
  std::string path;
  explicit temp_file(const std::string& name, const std::string& text = {}) {
    path = (fs::temp_directory_path() / ("moa_eval_" + std::to_string(::getpid()) + "_" + name))
               .string();
    fs::remove(path);
    if (!text.empty()) std::ofstream(path) << text;
  }
  ~temp_file() { fs::remove(path); }
  temp_file(const temp_file&) = delete;
  temp_file& operator=(const temp_file&) = delete;
};

std::string error_of(auto&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

std::uint64_t mix(std::string_view s, std::uint64_t seed) {
  std::uint64_t h = 0xcbf29ce484222325ULL ^ seed;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return moa::splitmix64(h);
}
double unit(std::string_view s, std::uint64_t seed) {
  return double(mix(s, seed) >> 11) * 0x1.0p-53;
}

// A model that knows the right answers (question "q<i>" -> "<7 i>") and gives the right one
// with probability `accuracy`, drawn per (seed, prompt): the planted truth is `accuracy`.
struct planted_model {
  std::string name;
  double accuracy = 1.0;
  std::uint64_t seed = 0;
  std::string padding{};  // appended to every answer (lengths for the length-controlled test)
  std::atomic<int>* calls = nullptr;
  moa::response generate(const moa::request& r) const {
    if (calls) calls->fetch_add(1);
    const auto q = std::string(r.prompt());
    std::string answer;
    if (q.size() > 1 && q[0] == 'q') {
      const long i = std::stol(q.substr(1));
      const bool right = unit(name + q, seed) < accuracy;
      answer = "The answer is " + std::to_string(right ? 7 * i : 7 * i + 1) + ".";
    } else {
      answer = name + " says hello";
    }
    std::string pad;
    if (!padding.empty()) pad = padding.substr(0, mix(q, seed + 1) % (padding.size() + 1));
    return {.text = answer + pad, .usage = {10, 5}};
  }
};

moa::eval::dataset arithmetic(std::size_t n) {
  moa::eval::dataset d{.name = "arithmetic"};
  for (std::size_t i = 0; i < n; ++i)
    d.items.push_back({.id = std::to_string(i),
                       .turns = {"q" + std::to_string(i)},
                       .references = {std::to_string(7 * i)}});
  return d;
}

moa::config::roster two_models(std::size_t concurrency = 0) {
  json j = {
      {"models",
       {{"good", {{"kind", "synthetic"}, {"price_in_per_mtok", 1.0}, {"price_out_per_mtok", 2.0}}},
        {"bad", {{"kind", "synthetic"}}}}},
      {"layouts",
       {{"moa",
         {{"layers", json::array({json::array({"good", "bad"})})}, {"aggregator", "good"}}}}}};
  if (concurrency) j["concurrency_per_endpoint"] = concurrency;
  return moa::config::parse_roster(j);
}

}  // namespace

TEST_SUITE("Eval") {
  TEST_CASE("Eval.roster_a_good_roster_reads_with_single_model_layouts") {
    const auto r = moa::config::parse_roster(json::parse(R"({
      "concurrency_per_endpoint": 3,
      "models": {
        "qwen": {"endpoint": "http://127.0.0.1:8080/v1", "timeout_ms": 5000, "retries": 1,
                 "context_tokens": 4096, "max_tokens": 256, "price_in_per_mtok": 0.5,
                 "price_out_per_mtok": 1.5, "concurrency": 2},
        "llama": {"api_key_env": "LLAMA_KEY", "model": "llama-3"}
      },
      "layouts": {
        "moa2": {"layers": [["qwen", "llama"], ["qwen", "llama"]], "aggregator": "qwen"},
        "voted": {"layers": [["qwen", "llama"]], "aggregator": "qwen",
                  "policy": {"name": "vote", "extract": "number"}}
      }})"));
    CHECK(r.models.size() == 2);
    CHECK(r.model("qwen").timeout == std::chrono::milliseconds(5000));
    CHECK(r.model("qwen").cost({1'000'000, 2'000'000}) == doctest::Approx(3.5));
    CHECK(r.endpoint_limit("http://127.0.0.1:8080/v1") == 2);
    CHECK(r.endpoint_limit("http://elsewhere/v1") == 3);
    CHECK(r.layout("moa2").layers.size() == 2);
    CHECK(r.layout("voted").policy == "vote");
    CHECK(r.layout("llama").aggregator == "llama");  // a model is its own baseline layout
    CHECK(r.layout("moa2").models() == std::vector<std::string>{"qwen", "llama"});
    const auto t = moa::config::make_topology(r.layout("moa2"));
    CHECK(t.layers == std::vector<std::vector<std::uint32_t>>{{0, 1}, {0, 1}});
  }

  TEST_CASE("Eval.roster_unknown_keys_wrong_types_and_values_out_of") {
    auto err = [](const char* text) {
      return error_of([&] { (void)moa::config::parse_roster(json::parse(text)); });
    };
    CHECK(err(R"({"models": {"a": {"endpiont": "x"}}})")
              .find("models.a.endpiont is not a known key") != std::string::npos);
    CHECK(err(R"({"models": {"a": {"timeout_ms": "5"}}})")
              .find("models.a.timeout_ms must be an integer") != std::string::npos);
    CHECK(err(R"({"models": {"a": {"retries": 99}}})")
              .find("models.a.retries must be between 0 and 20, not 99") != std::string::npos);
    CHECK(err(R"({"models": {"a": {"temperature": -1}}})")
              .find("models.a.temperature must be between") != std::string::npos);
    CHECK(
        err(R"({"models": {"a": {}}, "layouts": {"x": {"layers": [["a", "b"]], "aggregator": "a"}}})")
            .find("layouts.x names model \"b\", which is not in models") != std::string::npos);
    CHECK(err(R"({"models": {"a": {}}, "layouts": {"x": {"aggregator": "a", "policy": "best"}}})")
              .find("layouts.x.policy must be one of synthesis, vote") != std::string::npos);
    CHECK(err(R"({"models": {"a": {}}, "lambdas": 1})").find("lambdas is not a known key") !=
          std::string::npos);
    CHECK(err(R"({"models": {}})").find("models must be a non-empty object") != std::string::npos);
    CHECK(err(R"({"models": {"a": {"kind": "vllm"}}})")
              .find("models.a.kind must be one of openai, synthetic") != std::string::npos);
  }

  TEST_CASE("Eval.roster_a_syntax_error_names_file_line_column") {
    temp_file f("bad_roster.json", "{\n  \"models\": {\n    \"a\": {,}\n  }\n}\n");
    const auto e = error_of([&] { (void)moa::config::load_roster(f.path); });
    CHECK(e.find(f.path + ":3:") != std::string::npos);
  }

  TEST_CASE("Eval.roster_openai_base_url_and_openai_api_key_as") {
    moa::config::model_spec m;
    auto env = [](const char* n) -> std::optional<std::string> {
      if (std::string_view(n) == "OPENAI_BASE_URL") return "http://proxy:9000/v1";
      return std::nullopt;
    };
    auto none = [](const char*) -> std::optional<std::string> { return std::nullopt; };
    CHECK(moa::config::resolved_endpoint(m, env) == "http://proxy:9000/v1");
    CHECK(moa::config::resolved_endpoint(m, none) == "https://api.openai.com/v1");
    m.endpoint = "http://127.0.0.1:8080/v1";
    CHECK(moa::config::resolved_endpoint(m, env) == "http://127.0.0.1:8080/v1");
    CHECK(moa::config::resolved_key_env(m) == "OPENAI_API_KEY");
    m.api_key_env = "MINE";
    CHECK(moa::config::resolved_key_env(m) == "MINE");
  }

  TEST_CASE("Eval.scorers_exact_choice_and_last_number") {
    using moa::eval::score_reference;
    using moa::eval::scorer_kind;
    CHECK(score_reference(scorer_kind::exact, "  Paris. ", "paris") == 1.0);
    CHECK(score_reference(scorer_kind::exact, "Paris, France", "paris") == 0.0);
    CHECK(score_reference(scorer_kind::choice, "The answer is (C).", "C") == 1.0);
    CHECK(score_reference(scorer_kind::choice, "I think (B)", "C") == 0.0);
    CHECK(score_reference(scorer_kind::choice, "no letter here", "C") == 0.0);
    CHECK(score_reference(scorer_kind::number, "3 apples and 4 pears: 1,024 in all.", "1024") ==
          1.0);
    CHECK(score_reference(scorer_kind::number, "42.50", "42.5") == 1.0);
    CHECK(score_reference(scorer_kind::number, "no number", "0") == 0.0);
    CHECK(moa::eval::parse_rating("fine. Rating: [[7]]") == 7.0);
    CHECK(moa::eval::parse_rating("Rating: [[11]]") == std::nullopt);
    CHECK(moa::eval::parse_rating("Rating: 7") == std::nullopt);
    CHECK(moa::eval::parse_verdict("B is better [[B]]") == 0.0);
    CHECK(moa::eval::parse_verdict("[[C]]") == 0.5);
    CHECK(moa::eval::parse_verdict("[[D]]") == std::nullopt);
  }

  TEST_CASE("Eval.loaders_good_files_of_every_shape") {
    temp_file jl("good.jsonl",
                 "{\"id\": \"a\", \"prompt\": \"2+2?\", \"reference\": \"4\"}\n\n"
                 "{\"id\": 7, \"prompt\": [\"hi\", \"and?\"]}\r\n");
    auto d = moa::eval::load_jsonl(jl.path);
    REQUIRE(d.items.size() == 2);
    CHECK(d.items[0].final_reference() == "4");
    CHECK(d.items[1].id == "7");
    CHECK(d.items[1].turns.size() == 2);
    temp_file jl2("fields.jsonl", "{\"question\": \"3+3?\", \"answer\": \"6\"}\n");
    auto d2 = moa::eval::load_jsonl(jl2.path, {.prompt = "question", .reference = "answer"});
    CHECK(d2.items[0].turns[0] == "3+3?");
    CHECK(d2.items[0].id == "1");
    temp_file al("alpaca.json", R"([{"instruction": "Say hi", "output": "hi", "dataset": "x"}])");
    CHECK(moa::eval::load_alpaca(al.path).items[0].final_reference() == "hi");
    temp_file mt(
        "mt.jsonl",
        R"({"question_id": 81, "category": "writing", "turns": ["Write a haiku.", "Now in French."]})"
        "\n");
    auto m = moa::eval::load_mt_bench(mt.path);
    CHECK(m.items[0].id == "81");
    CHECK(m.items[0].turns.size() == 2);
    temp_file csv("mc.csv",
                  "question,A,B,C,answer\n\"Which is a prime, really?\",4,\"6\",7,C\n"
                  "\"Two\nlines\",1,2,3,A\n");
    auto c = moa::eval::load_csv_choice(csv.path);
    REQUIRE(c.items.size() == 2);
    CHECK(c.items[0].turns[0].find("(C) 7") != std::string::npos);
    CHECK(c.items[0].final_reference() == "C");
    CHECK(c.items[1].turns[0].find("Two\nlines") == 0);
  }

  TEST_CASE("Eval.loaders_bad_files_name_file_line_and_the_field") {
    auto err = [](const std::string& name, const std::string& text, const char* format) {
      temp_file f(name, text);
      return std::make_pair(f.path,
                            error_of([&] { (void)moa::eval::load_dataset(f.path, format); }));
    };
    auto [p1, e1] = err("bad1.jsonl", "{\"prompt\": \"a\"}\n{not json\n", "jsonl");
    CHECK(e1 == p1 + ":2: not valid JSON");
    auto [p2, e2] = err("bad2.jsonl", "{\"prompt\": 3}\n", "jsonl");
    CHECK(e2.find(p2 + ":1: field \"prompt\" must be a string") == 0);
    auto [p3, e3] = err(
        "bad3.jsonl", "{\"id\": 1, \"prompt\": \"a\"}\n{\"id\": 1, \"prompt\": \"b\"}\n", "jsonl");
    CHECK(e3 == p3 + ":2: id \"1\" is used twice");
    auto [p4, e4] = err("bad4.jsonl", "{\"text\": \"a\"}\n", "jsonl");
    CHECK(e4 == p4 + ":1: field \"prompt\" is missing");
    auto [p5, e5] = err("bad5.csv", "question,A,B,answer\nq,1,2,C\n", "csv");
    CHECK(e5 == p5 + ":2: field \"answer\" must be one letter from A to B, not \"C\"");
    auto [p6, e6] = err("bad6.csv", "question,A,B,answer\nq,1,answer\n", "csv");
    CHECK(e6 == p6 + ":2: 3 fields, the header has 4");
    auto [p7, e7] = err("bad7.json", "{\"instruction\": \"x\"}", "alpaca");
    CHECK(e7 == p7 + ":1: expected a JSON array of objects");
    auto [p8, e8] = err("bad8.jsonl", "\n\n", "jsonl");
    CHECK(e8 == p8 + ": holds no items");
    auto [p9, e9] = err("bad9.csv", "question,A,B,answer\n\"q,1,2,A\n", "csv");
    CHECK(e9 == p9 + ":2: a quoted field is not closed");
    CHECK(error_of([] { (void)moa::eval::load_dataset("/nonexistent/x", "jsonl"); }) ==
          "/nonexistent/x: cannot open");
  }

  TEST_CASE("Eval.bootstrap_intervals_contain_the_truth_at_the_stated_rate") {
    // 200 independent evaluations of a model whose planted accuracy is 0.7 on 60 items each.
    // Coverage is Binomial(200, 0.95) for an exact 95% interval; the percentile bootstrap of a
    // proportion at n = 60 runs a little narrow (about 0.93-0.94), so the bound is 3.5 binomial
    // standard deviations below the nominal count.
    const auto roster = two_models();
    const auto data = arithmetic(60);
    const std::size_t seeds = 200;
    std::size_t covered = 0;
    for (std::size_t s = 0; s < seeds; ++s) {
      moa::eval::eval_options opt;
      opt.scorer = moa::eval::scorer_kind::number;
      opt.concurrent_calls = false;
      opt.in_flight = 1;
      opt.resamples = 1000;
      opt.seed = s + 1;
      auto r = moa::eval::evaluate(roster, data, {"good"}, opt, [&](const auto& m) {
        return moa::any_backend(planted_model{m.name, 0.7, 1000 + s});
      });
      const auto& score = r.layouts[0].score;
      covered += score.low <= 0.7 && 0.7 <= score.high ? 1 : 0;
    }
    MESSAGE("95% intervals containing the planted 0.7: ", covered, " of ", seeds);
    const double sd = std::sqrt(double(seeds) * 0.95 * 0.05);
    CHECK(double(covered) >= 0.95 * double(seeds) - 3.5 * sd);
  }

  TEST_CASE("Eval.the_harness_recovers_planted_accuracies_tokens_calls_and_costs") {
    const auto roster = two_models();
    const auto data = arithmetic(400);
    moa::eval::eval_options opt;
    opt.scorer = moa::eval::scorer_kind::number;
    opt.in_flight = 4;
    auto r = moa::eval::evaluate(roster, data, {"good", "bad", "moa"}, opt, [](const auto& m) {
      return moa::any_backend(planted_model{m.name, m.name == "good" ? 0.9 : 0.3, 5});
    });
    REQUIRE(r.layouts.size() == 3);
    CHECK(r.complete);
    CHECK(r.ran == 1200);
    const auto& good = r.layouts[0];
    const auto& bad = r.layouts[1];
    CHECK(good.score.low <= 0.9);
    CHECK(good.score.high >= 0.9);
    CHECK(bad.score.low <= 0.3);
    CHECK(bad.score.high >= 0.3);
    CHECK(good.score.low > bad.score.high);
    CHECK(good.calls_per_item == 1.0);
    CHECK(r.layouts[2].calls_per_item == 3.0);  // two proposers and the aggregator
    CHECK(good.tokens == moa::usage{4000, 2000});
    // 400 calls at (10 in, 5 out) tokens, 1 and 2 per million: 400 * 20e-6.
    CHECK(good.cost == doctest::Approx(400 * 20e-6));
    CHECK(bad.cost == 0.0);
    // moa: two "good" calls per item (proposer and aggregator) and one "bad".
    CHECK(r.layouts[2].cost == doctest::Approx(2 * 400 * 20e-6));
  }

  TEST_CASE("Eval.calls_to_one_endpoint_stay_within_its_limit_whatever") {
    const auto roster = two_models(2);
    std::atomic<int> now{0}, peak{0};
    struct slow {
      std::atomic<int>* now;
      std::atomic<int>* peak;
      moa::response generate(const moa::request&) const {
        const int n = now->fetch_add(1) + 1;
        int p = peak->load();
        while (n > p && !peak->compare_exchange_weak(p, n)) {
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        now->fetch_sub(1);
        return {.text = "0"};
      }
    };
    moa::eval::eval_options opt;
    opt.scorer = moa::eval::scorer_kind::number;
    opt.in_flight = 8;
    auto r = moa::eval::evaluate(roster, arithmetic(40), {"good"}, opt, [&](const auto&) {
      return moa::any_backend(slow{&now, &peak});
    });
    CHECK(r.layouts[0].items == 40);
    CHECK(peak.load() <= 2);
    CHECK(peak.load() >= 1);
  }

  TEST_CASE("Eval.multi_turn_items_run_turn_by_turn_each_turn") {
    auto roster = moa::config::parse_roster(json{{"models", {{"m", {{"kind", "synthetic"}}}}}});
    struct counter {
      moa::response generate(const moa::request& r) const {
        return {.text = "seen " + std::to_string(r.messages.size())};
      }
    };
    moa::eval::dataset d{.name = "mt"};
    d.items.push_back({.id = "1", .turns = {"a", "b", "c"}, .references = {"", "", "seen 5"}});
    moa::eval::eval_options opt;
    opt.scorer = moa::eval::scorer_kind::exact;
    temp_file out("multi.jsonl");
    opt.results_path = out.path;
    auto r = moa::eval::evaluate(roster, d, {"m"}, opt,
                                 [](const auto&) { return moa::any_backend(counter{}); });
    CHECK(r.layouts[0].score.value == 1.0);
    CHECK(r.layouts[0].calls_per_item == 3.0);
    std::ifstream in(out.path);
    std::string header, line;
    std::getline(in, header);
    std::getline(in, line);
    CHECK(json::parse(line)["answers"] == json{"seen 1", "seen 3", "seen 5"});
  }

  TEST_CASE("Eval.a_rubric_judge_s_planted_ratings_are_recovered_an") {
    const auto roster = moa::config::parse_roster(json{{"models",
                                                        {{"fine", {{"kind", "synthetic"}}},
                                                         {"poor", {{"kind", "synthetic"}}},
                                                         {"judge", {{"kind", "synthetic"}}},
                                                         {"mute", {{"kind", "synthetic"}}}}}});
    struct rated {
      int quality;
      moa::response generate(const moa::request&) const {
        return {.text = "quality=" + std::to_string(quality)};
      }
    };
    struct judge {
      bool mute = false;
      moa::response generate(const moa::request& r) const {
        if (mute) return {.text = "I cannot decide."};
        const auto p = std::string(r.prompt());
        const auto at = p.rfind("quality=");
        return {.text = "Rating: [[" + p.substr(at + 8, 1) + "]]"};
      }
    };
    auto make = [](const moa::config::model_spec& m) {
      if (m.name == "judge" || m.name == "mute") return moa::any_backend(judge{m.name == "mute"});
      return moa::any_backend(rated{m.name == "fine" ? 8 : 3});
    };
    moa::eval::dataset d{.name = "open"};
    for (int i = 0; i < 20; ++i) d.items.push_back({.id = std::to_string(i), .turns = {"tell me"}});
    moa::eval::eval_options opt;
    opt.scorer = moa::eval::scorer_kind::rubric;
    opt.judge = "judge";
    auto r = moa::eval::evaluate(roster, d, {"fine", "poor"}, opt, make);
    CHECK(r.layouts[0].score.value == 8.0);
    CHECK(r.layouts[1].score.value == 3.0);
    CHECK(r.layouts[0].judge_tokens.prompt_tokens == 0);  // the planted judge reports no usage
    opt.judge = "mute";
    auto m = moa::eval::evaluate(roster, d, {"fine"}, opt, make);
    CHECK(m.layouts[0].judge_failures == 20);
    CHECK(error_of([&] {
            auto o = opt;
            o.judge.clear();
            (void)moa::eval::evaluate(roster, d, {"fine"}, o, make);
          }).find("needs a judge model") != std::string::npos);
  }

  TEST_CASE("Eval.a_rubric_judge_utility_finds_the_planted_dag_and_sees_the_prompt") {
    // Planted bed (moa/swarm/planted.hpp): 4 models whose sink answer's credit is 1 only for the
    // planted DAG. The judge reads the rubric request the way an LLM would: the question after
    // "[User, turn 1]", the answer after "[Assistant, turn 1]"; it rates 1 + 9 credit, and only
    // when the question is one it was planted with (asked about no question, it cannot rate).
    const std::vector<moa::swarm::example> data = {{"Why is the sky blue?", ""},
                                                   {"What is 17 * 23?", "391"}};
    struct reader {
      const moa::swarm::planted_swarm* bed;
      std::vector<std::string> questions;
      std::mutex* m;
      std::vector<std::string>* asked;
      moa::response generate(const moa::request& r) const {
        const auto p = std::string(r.prompt());
        constexpr std::string_view user = "[User, turn 1]\n", assistant = "\n[Assistant, turn 1]\n";
        const auto u = p.find(user), a = p.find(assistant);
        if (u == std::string::npos || a == std::string::npos || a < u)
          return {.text = "This is not a rubric request."};
        const auto question = p.substr(u + user.size(), a - u - user.size());
        const auto answer = p.substr(a + assistant.size());
        {
          std::lock_guard lock(*m);
          asked->push_back(question);
        }
        if (std::find(questions.begin(), questions.end(), question) == questions.end())
          return {.text = "I cannot tell what was asked."};
        return {.text = "Fair. Rating: [[" + std::to_string(1.0 + 9.0 * bed->score(answer)) + "]]",
                .usage = {100, 10}};
      }
    };
    std::size_t found = 0;
    for (const std::uint64_t plant : {3, 7, 11, 19}) {
      CAPTURE(plant);
      moa::swarm::planted_swarm bed(4, plant, {"a", "b", "c", "d"});
      std::mutex m;
      std::vector<std::string> asked;
      moa::eval::rubric_judge judge(
          moa::any_backend(reader{&bed, {data[0].prompt, data[1].prompt}, &m, &asked}));
      moa::inline_executor ex;
      moa::swarm::dataset_utility quality(data, moa::swarm::executor_answerer(ex, bed.refs), judge);
      moa::swarm::topology_search_options opt;
      opt.pso.seed = 5;
      opt.pso.threads = 2;
      opt.pso.target_utility = 1.0;
      opt.pso.max_iterations = 200;
      opt.pso.patience = 100;
      const auto r = moa::swarm::search_topology(4, quality, opt);
      CHECK(r.utility == 1.0);
      bool same = true;  // the planted DAG: v feeds target[v], and nothing else
      for (std::size_t v = 0; v < 4; ++v)
        for (std::size_t w = 0; w < 4; ++w)
          same = same && r.best.has_edge(v, w) == (bed.target[v] == std::int32_t(w));
      CHECK(same);
      found += same;
      // Every judge call was about a dataset question, each rated; tokens add up.
      const auto t = judge.tally();
      CHECK(t.calls == asked.size());
      CHECK(t.calls >= 2 * quality.cache().size());  // two threads may race to one new DAG
      CHECK(t.unrated == 0);
      CHECK(t.failed == 0);
      CHECK(t.tokens == moa::usage{100 * t.calls, 10 * t.calls});
      for (const auto& q : asked) CHECK((q == data[0].prompt || q == data[1].prompt));
    }
    CHECK(found == 4);

    // The same judge scoring without the prompt (an empty one) cannot rate: the prompt matters.
    moa::swarm::planted_swarm bed(4, 3, {"a", "b", "c", "d"});
    std::mutex m;
    std::vector<std::string> asked;
    moa::eval::rubric_judge judge(moa::any_backend(reader{&bed, {data[0].prompt}, &m, &asked}));
    CHECK(judge("[m0 credit 4]", "", "What is 17 * 23?") == 0.0);  // not a planted question
    CHECK(judge("[m0 credit 4]", "", "Why is the sky blue?") == 1.0);
    CHECK(judge("[m0 credit 1]", "", "Why is the sky blue?") == doctest::Approx(0.25));
    CHECK(judge(" \n", "", "Why is the sky blue?") == 0.0);  // no answer: no call
    auto t = judge.tally();
    CHECK(t.calls == 3);
    CHECK(t.unrated == 1);
    CHECK(t.unanswered == 1);
    // The reference reaches the judge; a judge that throws scores 0 and is counted.
    struct echo {
      moa::response generate(const moa::request& r) const {
        const auto p = std::string(r.prompt());
        if (p.find("[Reference answer to the last turn]\n391") == std::string::npos)
          throw std::runtime_error("no reference");
        return {.text = "Rating: [[7]]"};
      }
    };
    moa::eval::rubric_judge ref(moa::any_backend(echo{}));
    CHECK(ref.rate("What is 17 * 23?", "391", "391") == 7.0);
    CHECK(ref("391", "", "What is 17 * 23?") == 0.0);
    CHECK(ref.tally().failed == 1);
    CHECK_THROWS_AS(moa::eval::rubric_judge(moa::any_backend(echo{}), ""), moa::invalid_argument);
  }

  TEST_CASE("Eval.pairwise_judging_planted_preferences_position_swapping_length_control") {
    const auto roster = moa::config::parse_roster(json{{"models",
                                                        {{"base", {{"kind", "synthetic"}}},
                                                         {"strong", {{"kind", "synthetic"}}},
                                                         {"twin", {{"kind", "synthetic"}}},
                                                         {"verbose", {{"kind", "synthetic"}}},
                                                         {"judge", {{"kind", "synthetic"}}}}}});
    const std::string pad(400, '.');
    auto make = [&](const moa::config::model_spec& m) {
      if (m.name == "judge") {
        // Compares the text shown as A and B. "strong" answers right 80% of the time and base
        // 40%, so the right one wins; equal quality: the longer wins with probability
        // sigmoid(3 tanh(delta / 150)), and exact ties go to whatever was shown first (a
        // position bias that swapping must cancel).
        struct judge {
          moa::response generate(const moa::request& r) const {
            const auto p = std::string(r.prompt());
            const auto a = p.find("=== Assistant A ==="), b = p.find("=== Assistant B ===");
            const auto end = p.find("\nExplain briefly");
            const auto sa = p.substr(a, b - a), sb = p.substr(b, end - b);
            const auto ref_at = p.find("[Reference answer to the last turn]\n");
            const auto ref = p.substr(ref_at + 36, p.find('\n', ref_at + 36) - ref_at - 36);
            const bool ra = sa.find("is " + ref + ".") != std::string::npos;
            const bool rb = sb.find("is " + ref + ".") != std::string::npos;
            if (ra != rb) return {.text = ra ? "[[A]]" : "[[B]]"};
            const double delta = double(sa.size()) - double(sb.size());
            if (delta == 0) return {.text = "[[A]]"};
            const double pa = 1.0 / (1.0 + std::exp(-3.0 * std::tanh(delta / 150.0)));
            return {.text = unit(p, 99) < pa ? "[[A]]" : "[[B]]"};
          }
        };
        return moa::any_backend(judge{});
      }
      const double acc = m.name == "strong" ? 0.8 : 0.4;
      const std::uint64_t seed = m.name == "twin" ? 0 : m.name == "base" ? 0 : 1;
      return moa::any_backend(planted_model{m.name == "twin" ? "base" : m.name, acc, seed,
                                            m.name == "verbose" ? pad : ""});
    };
    moa::eval::eval_options opt;
    opt.scorer = moa::eval::scorer_kind::pairwise;
    opt.judge = "judge";
    opt.reference_layout = "base";
    opt.resamples = 500;
    auto r = moa::eval::evaluate(roster, arithmetic(300), {"strong", "twin", "verbose"}, opt, make);
    REQUIRE(r.layouts.size() == 4);
    CHECK(r.layouts[0].layout == "base");
    CHECK(r.layouts[0].reference);
    // strong vs base: it wins where only it is right (0.8 * 0.6 = 0.48), loses where only base
    // is (0.2 * 0.4 = 0.08), ties otherwise (0.44, same text length: the position bias cancels).
    const double truth = 0.48 + 0.44 * 0.5;
    CHECK(r.layouts[1].score.low <= truth);
    CHECK(r.layouts[1].score.high >= truth);
    // twin answers exactly as base: the judge always picks A, swapping makes it a tie.
    CHECK(r.layouts[2].score.value == 0.5);
    // verbose: base's quality 0.4 with its own draws, padded. Raw win rate is inflated by the
    // judge's length bias; the length-controlled rate removes it.
    const auto& v = r.layouts[3];
    REQUIRE(v.lc_win_rate);
    MESSAGE("strong: win rate ", r.layouts[1].score.value, " (truth ", truth,
            "); verbose: win rate ", v.score.value, ", length-controlled ", v.lc_win_rate->value,
            " [", v.lc_win_rate->low, ", ", v.lc_win_rate->high, "]");
    CHECK(v.score.value > 0.6);
    CHECK(v.lc_win_rate->value < v.score.value - 0.1);
    CHECK(v.lc_win_rate->low <= 0.5);
    CHECK(v.lc_win_rate->high >= 0.5);
    CHECK(r.layouts[1].judge_tokens == moa::usage{});  // the planted judge reports no usage
  }

  TEST_CASE("Eval.an_interrupted_evaluation_resumes_without_losing_or_redoing_an") {
    const auto roster = two_models();
    const auto data = arithmetic(30);
    temp_file out("resume.jsonl");
    std::atomic<int> calls{0};
    auto make = [&](const auto& m) {
      return moa::any_backend(planted_model{m.name, 0.5, 3, "", &calls});
    };
    moa::eval::eval_options opt;
    opt.scorer = moa::eval::scorer_kind::number;
    opt.results_path = out.path;
    opt.in_flight = 1;
    opt.concurrent_calls = false;
    std::stop_source stop;
    opt.stop = stop.get_token();
    opt.progress = [&](std::size_t done, std::size_t) {
      if (done == 12) stop.request_stop();
    };
    auto first = moa::eval::evaluate(roster, data, {"good", "bad"}, opt, make);
    CHECK_FALSE(first.complete);
    CHECK(first.ran == 12);
    CHECK(calls.load() == 12);
    CHECK(first.torn_bytes == 0);

    // The process died inside a write: a torn last line.
    { std::ofstream(out.path, std::ios::app) << R"({"kind":"answer","layout":"bad","it)"; }
    opt.stop = {};
    opt.progress = {};
    auto second = moa::eval::evaluate(roster, data, {"good", "bad"}, opt, make);
    CHECK(second.complete);
    CHECK(second.torn_bytes == std::string_view(R"({"kind":"answer","layout":"bad","it)").size());
    CHECK(second.resumed == 12);
    CHECK(second.ran == 48);
    CHECK(calls.load() == 60);  // every item answered exactly once over both runs
    // The same report as an uninterrupted run.
    temp_file fresh("fresh.jsonl");
    opt.results_path = fresh.path;
    auto once = moa::eval::evaluate(roster, data, {"good", "bad"}, opt, make);
    CHECK(once.layouts[0].score.value == second.layouts[0].score.value);
    CHECK(once.layouts[1].score.value == second.layouts[1].score.value);
    std::ifstream in(out.path);
    std::size_t lines = 0;
    for (std::string l; std::getline(in, l);) {
      ++lines;
      CHECK(json::parse(l).is_object());
    }
    CHECK(lines == 61);  // the header and 60 records
    // Nothing left: a third run does nothing.
    opt.results_path = out.path;
    auto third = moa::eval::evaluate(roster, data, {"good", "bad"}, opt, make);
    CHECK(third.ran == 0);
    CHECK(calls.load() == 120);  // the "fresh" run's 60
  }

  TEST_CASE("Eval.a_torn_last_line_is_cut_even_when_it_parses_and_its_item_redone") {
    // A write stopped just before its newline leaves a line that parses: it is still torn (only
    // a whole line is a record), cut off, reported, and its item run again, once.
    const auto roster = two_models();
    const auto data = arithmetic(4);
    temp_file out("torn.jsonl");
    std::atomic<int> calls{0};
    auto make = [&](const auto& m) {
      return moa::any_backend(planted_model{m.name, 1.0, 3, "", &calls});
    };
    moa::eval::eval_options opt;
    opt.scorer = moa::eval::scorer_kind::number;
    opt.results_path = out.path;
    const auto whole = moa::eval::evaluate(roster, data, {"good"}, opt, make);
    REQUIRE(whole.complete);
    std::string text;
    {
      std::ifstream in(out.path);
      text.assign(std::istreambuf_iterator<char>(in), {});
    }
    REQUIRE(text.ends_with("\n"));
    const auto last = text.rfind('\n', text.size() - 2) + 1;
    const auto torn = text.substr(last, text.size() - last - 1);  // the last record, no newline
    REQUIRE(json::parse(torn).is_object());
    std::ofstream(out.path, std::ios::trunc) << text.substr(0, text.size() - 1);
    const auto again = moa::eval::evaluate(roster, data, {"good"}, opt, make);
    CHECK(again.complete);
    CHECK(again.torn_bytes == torn.size());
    CHECK(again.resumed == 3);
    CHECK(again.ran == 1);
    CHECK(calls.load() == 5);
    CHECK(again.layouts[0].items == 4);
    CHECK(again.layouts[0].score.value == whole.layouts[0].score.value);
    std::ostringstream table;
    table << again;
    CHECK(table.str().find("a torn last line dropped and its item redone") != std::string::npos);
    CHECK(moa::eval::to_json(again)["torn_bytes"] == torn.size());
    // The file holds every record once, each on a whole line.
    std::ifstream in(out.path);
    std::size_t lines = 0;
    for (std::string l; std::getline(in, l);) {
      ++lines;
      CHECK(json::parse(l).is_object());
    }
    CHECK(lines == 5);
  }

  TEST_CASE("Eval.a_results_file_of_other_settings_or_with_a") {
    const auto roster = two_models();
    temp_file out("mixed.jsonl");
    moa::eval::eval_options opt;
    opt.scorer = moa::eval::scorer_kind::number;
    opt.results_path = out.path;
    auto make = [](const auto& m) { return moa::any_backend(planted_model{m.name}); };
    (void)moa::eval::evaluate(roster, arithmetic(3), {"good"}, opt, make);
    opt.scorer = moa::eval::scorer_kind::exact;
    CHECK(error_of([&] {
            (void)moa::eval::evaluate(roster, arithmetic(3), {"good"}, opt, make);
          }).find(":1: written with scorer \"number\", this evaluation has \"exact\"") !=
          std::string::npos);
    temp_file damaged("damaged.jsonl",
                      "{\"kind\":\"header\",\"version\":1,\"scorer\":\"exact\",\"judge\":\"\","
                      "\"reference\":\"\"}\ngarbage\n{\"kind\":\"answer\"}\n");
    opt.results_path = damaged.path;
    CHECK(error_of([&] {
            (void)moa::eval::evaluate(roster, arithmetic(3), {"good"}, opt, make);
          }) == damaged.path +
                    ":2: not a results record (a JSON object with \"kind\"); is this a results "
                    "file of moa eval?");
  }

  TEST_CASE("Eval.the_length_controlled_win_rate_fit_recovers_a_planted") {
    // outcomes drawn from sigmoid(0.4 + 1.5 tanh(delta / sd)): LC rate = sigmoid(0.4).
    moa::rng random(3);
    std::vector<moa::eval::judgement> js;
    for (int i = 0; i < 20000; ++i) {
      const double delta = (random.uniform() - 0.5) * 600;
      // sd of a uniform on [-300, 300] is 600 / sqrt(12).
      const double x = std::tanh(delta / (600 / std::sqrt(12.0)));
      const double p = 1 / (1 + std::exp(-(0.4 + 1.5 * x)));
      js.push_back({random.uniform() < p ? 1.0 : 0.0, delta});
    }
    CHECK(moa::eval::length_controlled_win_rate(js) ==
          doctest::Approx(1 / (1 + std::exp(-0.4))).epsilon(0.02));
  }
}

TEST_SUITE("Eval") {
  TEST_CASE("Eval.replay_the_transient_table_against_a_hand_calculation_on") {
    // Two devices; prompt 0 at t = 0 born at device 0, prompt 1 at t = 1 born at device 1.
    const auto times = moa::eval::parse_measured_times(json::parse(R"({
      "devices": [{"name": "d0", "layers": [[2, 3]], "aggregate": [1, 1]},
                  {"name": "d1", "layers": [[4, 1]], "aggregate": [2, 2]}],
      "arrivals": [{"time": 0, "origin": 0}, {"time": 1, "origin": 1}]})"),
                                                       "tiny");
    // M = 1, k = 1 (the peer is the other device). By hand:
    //   d0: p0/L1 0-2, p1/L1 2-5 (queued at 1), p0/agg 5-6 (queued at 4, when d1 finished p0/L1)
    //   d1: p0/L1 0-4, p1/L1 4-5 (queued at 1), p1/agg 5-7
    //   latencies 6 - 0 and 7 - 1: mean 6. Calls at d0 over [0, 7]: 1,2,1,1,2,1,0 per unit
    //   interval = 8; at d1: 1,2,2,2,1,1,1 = 10. Average queue size (8/7 + 10/7) / 2 = 9/7.
    const auto row = moa::eval::replay(times, times.arrivals, {.layers = 1, .peers = 1});
    CHECK(row.calls_per_prompt == 3);
    CHECK(row.mean_latency == doctest::Approx(6.0));
    CHECK(row.max_latency == doctest::Approx(6.0));
    CHECK(row.makespan == doctest::Approx(7.0));
    CHECK(row.device_queue_size[0] == doctest::Approx(8.0 / 7));
    CHECK(row.device_queue_size[1] == doctest::Approx(10.0 / 7));
    CHECK(row.average_queue_size == doctest::Approx(9.0 / 7));
    // M = 0: each origin answers alone: d0 0-1, d1 1-3; latencies 1 and 2; areas 1 and 2 over 3.
    const auto alone = moa::eval::replay(times, times.arrivals, {.layers = 0, .peers = 0});
    CHECK(alone.calls_per_prompt == 1);
    CHECK(alone.mean_latency == doctest::Approx(1.5));
    CHECK(alone.average_queue_size == doctest::Approx(0.5));
    // Bad configurations and files name the fault.
    CHECK(error_of([&] {
            (void)moa::eval::replay(times, times.arrivals, {.layers = 2, .peers = 1});
          }).find("M = 2 layers, but 1 were measured") != std::string::npos);
    CHECK(error_of([&] {
            (void)moa::eval::replay(times, times.arrivals, {.layers = 1, .peers = 2});
          }).find("k = 2 peers is more than the 1 other devices") != std::string::npos);
    CHECK(error_of([] {
            (void)moa::eval::parse_measured_times(
                json::parse(R"({"devices": [{"layers": [[1, -2]], "aggregate": [1]}]})"), "f.json");
          }) == "f.json: devices[0].layers[0][1] must be a finite time > 0");
    CHECK(
        error_of([] {
          (void)moa::eval::parse_measured_times(
              json::parse(
                  R"({"devices": [{"layers": [[1]], "aggregate": [1]}], "arrivals": [{"time": 0, "origin": 3}]})"),
              "f.json");
        }) == "f.json: arrivals[0].origin = 3 names no device (there are 1)");
  }

  TEST_CASE("Eval.replay_poisson_arrivals_are_seeded_more_layers_and_peers") {
    moa::eval::measured_times t;
    for (int d = 0; d < 4; ++d)
      t.devices.push_back({.name = "d", .layers = {{1.0, 1.2}, {1.1, 0.9}}, .aggregate = {1.5}});
    const auto a = moa::eval::poisson_arrivals(4, 0.05, 40, 3);
    const auto again = moa::eval::poisson_arrivals(4, 0.05, 40, 3);
    for (std::size_t i = 0; i < a.size(); ++i) {
      CHECK(a[i].time == again[i].time);
      CHECK(a[i].origin == again[i].origin);
    }
    const std::vector<moa::eval::replay_config> configs = {{0, 0}, {1, 1}, {2, 2}, {2, 3}};
    const auto rows = moa::eval::replay_table(t, a, configs);
    for (std::size_t i = 1; i < rows.size(); ++i) {
      CHECK(rows[i].mean_latency > rows[i - 1].mean_latency);
      CHECK(rows[i].average_queue_size > rows[i - 1].average_queue_size);
    }
  }
}

TEST_CASE("Eval.sweep_plot_data_marks_what_does_not_exist_and_its_script_draws_it") {
  moa::eval::sweep_plot p;
  p.title = "n = 4";
  p.limit = 1.0 / 7;
  moa::eval::sweep_point a;
  a.lambda = 0.05;
  a.queue = 0.5;
  a.latency_approx = 6.5;
  moa::eval::sweep_point past = a;
  past.lambda = 0.2;
  past.queue = std::numeric_limits<double>::quiet_NaN();
  past.latency_approx = std::numeric_limits<double>::infinity();
  p.points = {a, past};
  const auto data = moa::eval::sweep_plot_data(p);
  CHECK(data.find("\n0.05 0.5 0 0 0 0 0 0 0 0 6.5 0 \n") != std::string::npos);
  CHECK(data.find("\n0.2 ? 0 0 0 0 0 0 0 0 ? 0 \n") != std::string::npos);
  const auto script = moa::eval::sweep_plot_script(p, "it's.dat", "out.svg");
  CHECK(script.find("set output 'out.svg'") != std::string::npos);
  CHECK(script.find("plot 'it''s.dat' u 1:2:3 w yerrorbars") != std::string::npos);
  CHECK(script.find("set datafile missing '?'") != std::string::npos);
  CHECK(script.find("set arrow from 0.1428571429, graph 0") != std::string::npos);
  CHECK(script.find("set xrange [0:0.21]") != std::string::npos);  // the last point, plus 5%
  // Without a limit (no load) the line and its key entry are left out, not drawn at "?".
  p.limit = std::numeric_limits<double>::infinity();
  const auto no_limit = moa::eval::sweep_plot_script(p, "d", "o.svg");
  CHECK(no_limit.find("set arrow") == std::string::npos);
  CHECK(no_limit.find("stability limit") == std::string::npos);
}
