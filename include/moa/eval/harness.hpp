// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The evaluation harness: runs a dataset through layouts of a roster (single models and MoA
/// configurations), scores the answers, and reports per layout the score with a bootstrap
/// interval, tokens, latency p50/p99, calls per item and cost.
///
/// @code{.cpp}
/// auto roster = moa::config::load_roster("roster.json");
/// auto data = moa::eval::load_jsonl("examples/data/arithmetic.jsonl");
/// moa::eval::eval_options opt;
/// opt.scorer = moa::eval::scorer_kind::number;
/// opt.results_path = "results.jsonl";          // streamed; a rerun resumes where it stopped
/// auto report = moa::eval::evaluate(roster, data, {"qwen", "llama", "moa2"}, opt,
///                                   moa::config::make_backend);  // moa/config/roster_openai.hpp
/// std::cout << report;
/// @endcode
///
/// Items run `in_flight` at a time, each through the layout's pipeline on the executor named in
/// the options; calls to one endpoint are bounded by the roster's per-endpoint limit whatever the
/// number of items in flight. Every finished item is one JSON line appended to the results file
/// with a single write(2) (optionally fdatasync'd), so a killed evaluation loses at most the items
/// in flight: rerun with the same file and only the missing items run. A torn last line (the
/// process died inside the write) is detected, cut off and redone.

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <iomanip>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <semaphore>
#include <set>
#include <span>
#include <sstream>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "moa/config/roster.hpp"
#include "moa/eval/dataset.hpp"
#include "moa/eval/scorers.hpp"
#include "moa/eval/stats.hpp"
#include "moa/exec/executor.hpp"
#include "moa/pipeline.hpp"

namespace moa::eval {

/// @brief Makes the backend of a roster model (moa::config::make_backend serves OpenAI endpoints
/// and synthetic models; tests plant their own).
using backend_factory = std::function<any_backend(const config::model_spec&)>;

/// @brief The factory that needs no libcurl: synthetic models only.
inline any_backend synthetic_only(const config::model_spec& m) {
  if (m.kind != "synthetic")
    MOA_THROW(config::config_error("model \"" + m.name +
                                   "\" is an OpenAI endpoint: pass moa::config::make_backend "
                                   "(moa/config/roster_openai.hpp) as the backend factory"));
  return any_backend(config::make_synthetic(m));
}

/// @brief How an evaluation runs and is scored.
struct eval_options {
  scorer_kind scorer = scorer_kind::exact;
  std::string judge{};             ///< rubric/pairwise: the judging model (a roster model name)
  std::string reference_layout{};  ///< pairwise: the layout every other is compared with
  std::string rubric{default_rubric};
  std::size_t in_flight = 8;     ///< items run at once
  bool concurrent_calls = true;  ///< proposers of a layer in parallel (concurrent_executor)
  std::size_t resamples = 2000;  ///< bootstrap resamples
  double confidence = 0.95;
  std::uint64_t seed = 1;
  std::string results_path{};  ///< JSONL results; empty: kept in memory only
  bool fsync = false;      ///< fdatasync after every item (survives power loss, not only a kill)
  std::stop_token stop{};  ///< stops taking items; items cut short are not recorded
  /// Called after every item, (done, total), serialised.
  std::function<void(std::size_t, std::size_t)> progress{};
};

/// @brief One layout's results.
struct layout_report {
  std::string layout{};
  bool reference = false;  ///< pairwise: the reference layout (its score is 0.5 by definition)
  std::size_t items = 0;   ///< items answered (recorded)
  std::size_t failed = 0;  ///< items whose run gave no answer (scored as the worst)
  std::size_t judge_failures = 0;  ///< items the judge gave no usable verdict on (not in the score)
  interval score{};  ///< mean score (win rate for pairwise) with its bootstrap interval
  std::optional<interval> lc_win_rate{};              ///< pairwise: length-controlled win rate
  moa::usage tokens{};                                ///< over every call of the layout
  double latency_p50_ms = 0.0, latency_p99_ms = 0.0;  ///< per item (turns summed)
  double calls_per_item = 0.0;
  double cost = 0.0;  ///< estimated from the roster's prices
  moa::usage judge_tokens{};
  double judge_cost = 0.0;
};

/// @brief What evaluate() returns.
struct eval_report {
  std::string dataset{};
  std::string scorer{};
  std::size_t items = 0;    ///< in the dataset
  std::size_t resumed = 0;  ///< records found in the results file
  std::size_t ran = 0;      ///< records written by this run
  /// Bytes of a torn last line cut off the results file (a process killed inside its write):
  /// that item is redone. 0 when the file ended in a whole line.
  std::size_t torn_bytes = 0;
  bool complete = false;  ///< every (layout, item) has a record
  std::vector<layout_report> layouts{};
};

namespace detail {

// Calls to one endpoint, bounded. A counting semaphore rather than a pool per endpoint: a blocked
// call holds its worker thread, which is the point (the item waits for its model).
struct endpoint_gate {
  explicit endpoint_gate(std::size_t n) : slots(static_cast<std::ptrdiff_t>(n)) {}
  std::counting_semaphore<4096> slots;
};

// A roster model as the harness calls it: behind its endpoint's gate, with its own timeout.
struct gated_backend {
  std::shared_ptr<any_backend> inner;
  std::shared_ptr<endpoint_gate> gate;
  std::chrono::milliseconds timeout{0};
  std::string label;

  response generate(const request& r) const {
    gate->slots.acquire();
    struct release {
      endpoint_gate& g;
      ~release() { g.slots.release(); }
    } guard{*gate};
    if (timeout.count() == 0) return inner->generate(r);
    request bounded = r;
    bounded.deadline = std::min(r.deadline, clock::now() + timeout);
    return inner->generate(bounded);
  }
  [[nodiscard]] std::string_view name() const noexcept { return label; }
};

// A layout ready to run: its pipeline and, per backend index, the roster model (for prices).
class layout_runner {
 public:
  layout_runner(const config::roster& roster, const config::layout_spec& spec,
                const backend_factory& make,
                std::map<std::string, std::shared_ptr<any_backend>>& backends,
                std::map<std::string, std::shared_ptr<endpoint_gate>>& gates)
      : name_(spec.name) {
    const auto names = spec.models();
    std::vector<any_backend> refs;
    for (const auto& n : names) {
      const auto& m = roster.model(n);
      models_.push_back(&m);
      auto& b = backends[n];
      if (!b) b = std::make_shared<any_backend>(make(m));
      const auto endpoint =
          m.kind == "synthetic" ? "synthetic:" + m.name : config::resolved_endpoint(m);
      auto& g = gates[endpoint];
      if (!g) {
        const auto limit = m.kind == "synthetic"
                               ? (m.concurrency ? m.concurrency : roster.concurrency_per_endpoint)
                               : roster.endpoint_limit(m.endpoint);
        g = std::make_shared<endpoint_gate>(limit);
      }
      refs.emplace_back(gated_backend{b, g, m.timeout, m.name});
      if (m.context_tokens > 0) {
        const auto room = m.context_tokens - std::size_t(m.max_tokens);
        budget_ = budget_ == 0 ? room : std::min(budget_, room);
      }
    }
    auto index = [&](const std::string& n) {
      return static_cast<std::uint32_t>(std::find(names.begin(), names.end(), n) - names.begin());
    };
    auto policy = config::make_policy(spec, index);
    pipeline_ = std::make_unique<runtime_pipeline>(std::move(refs), config::make_plan(spec),
                                                   std::move(policy));
  }

  [[nodiscard]] const std::string& name() const noexcept { return name_; }

  /// Runs one request; the usage and cost of every call it made.
  template <class Run>
  result run(const request& r, std::stop_token stop, const Run& execute) const {
    run_options opt;
    opt.stop = std::move(stop);
    aggregation_prompt prompt;
    if (budget_ > 0) {
      std::size_t used = 0;
      for (const auto& m : r.messages) used += estimate_tokens(m.content);
      prompt.token_budget = budget_ > used + 1 ? budget_ - used : 1;
      opt.prompt = &prompt;
    }
    return execute(*pipeline_, r, opt);
  }

  [[nodiscard]] double cost(const result& r) const {
    double c = 0.0;
    auto add = [&](const call_record& rec) {
      if (rec.backend < models_.size()) c += models_[rec.backend]->cost(rec.usage);
    };
    for (const auto& rec : r.trace) add(rec);
    if (r.aggregation)
      for (const auto& rec : r.aggregation->calls) add(rec);
    return c;
  }

  [[nodiscard]] static std::size_t calls(const result& r) {
    std::size_t n = 0;
    for (const auto& rec : r.trace) n += rec.status != call_status::skipped ? 1 : 0;
    return n + (r.aggregation ? r.aggregation->calls.size() : 0);
  }

 private:
  std::string name_;
  std::vector<const config::model_spec*> models_;
  std::size_t budget_ = 0;
  std::unique_ptr<runtime_pipeline> pipeline_;
};

inline nlohmann::json usage_json(const usage& u) {
  return {u.prompt_tokens, u.completion_tokens};
}
inline usage usage_of(const nlohmann::json& j) {
  return {j.at(0).get<std::uint64_t>(), j.at(1).get<std::uint64_t>()};
}

// The results file: records found at open (after cutting a torn last line), then appends.
class results_file {
 public:
  results_file() = default;
  results_file(const results_file&) = delete;
  results_file& operator=(const results_file&) = delete;
  ~results_file() {
    if (fd_ >= 0) ::close(fd_);
  }

  // Opens (creating) the file; returns its complete records.
  std::vector<nlohmann::json> open(const std::string& path, bool sync) {
    path_ = path;
    sync_ = sync;
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot open");
    std::string text;
    char buf[1 << 16];
    for (;;) {
      const auto n = ::pread(fd_, buf, sizeof buf, static_cast<off_t>(text.size()));
      if (n < 0) fail("cannot read");
      if (n == 0) break;
      text.append(buf, std::size_t(n));
    }
    const auto complete = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
    if (complete < text.size()) {
      // The process died inside a write: the torn line's item is redone. Cut even when the
      // bytes happen to parse (the write stopped just before its newline): only a whole line is
      // a record, so the rule does not depend on where the write stopped.
      torn_ = text.size() - complete;
      if (::ftruncate(fd_, static_cast<off_t>(complete)) != 0) fail("cannot cut a torn line");
      text.resize(complete);
    }
    std::vector<nlohmann::json> out;
    std::size_t line = 0, pos = 0;
    while (pos < text.size()) {
      const auto end = text.find('\n', pos);
      ++line;
      auto j = nlohmann::json::parse(text.substr(pos, end - pos), nullptr, false);
      pos = end + 1;
      if (j.is_discarded() || !j.is_object() || !j.contains("kind"))
        MOA_THROW(invalid_argument(path_ + ":" + std::to_string(line) +
                                   ": not a results record (a JSON object with \"kind\"); is "
                                   "this a results file of moa eval?"));
      out.push_back(std::move(j));
    }
    return out;
  }

  void append(const nlohmann::json& j) {
    auto line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    line += '\n';
    std::size_t done = 0;
    while (done < line.size()) {
      const auto n = ::write(fd_, line.data() + done, line.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("cannot write");
      done += std::size_t(n);
    }
    if (sync_ && ::fdatasync(fd_) != 0) fail("cannot sync");
  }

  [[nodiscard]] bool is_open() const noexcept { return fd_ >= 0; }
  /// Bytes of the torn last line cut off at open (0: none).
  [[nodiscard]] std::size_t torn() const noexcept { return torn_; }

 private:
  [[noreturn]] void fail(const char* what) const {
    MOA_THROW(error("moa eval: " + std::string(what) + " " + path_ + ": " + std::strerror(errno)));
  }
  int fd_ = -1;
  bool sync_ = false;
  std::size_t torn_ = 0;
  std::string path_;
};

inline std::string answer_key(const std::string& layout, const std::string& item) {
  return "a\x1f" + layout + "\x1f" + item;
}
inline std::string pair_key(const std::string& layout, const std::string& reference,
                            const std::string& item) {
  return "p\x1f" + layout + "\x1f" + reference + "\x1f" + item;
}

// Runs tasks on `threads` threads; the first exception stops the rest and is rethrown.
inline void run_tasks(std::size_t count, std::size_t threads, const std::stop_token& stop,
                      const std::function<void(std::size_t)>& task) {
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr first;
  std::mutex m;
  auto work = [&] {
    for (;;) {
      if (stop.stop_requested() || failed.load()) return;
      const auto i = next.fetch_add(1);
      if (i >= count) return;
      try {
        task(i);
      } catch (...) {
        std::lock_guard lock(m);
        if (!first) first = std::current_exception();
        failed = true;
      }
    }
  };
  threads = std::max<std::size_t>(1, std::min(threads, count));
  {
    std::vector<std::jthread> pool;
    for (std::size_t t = 1; t < threads; ++t) pool.emplace_back(work);
    work();
  }
  if (first) std::rethrow_exception(first);
}

}  // namespace detail

/// @brief Runs `layouts` (names of roster layouts or models) over the dataset and reports.
inline eval_report evaluate(const config::roster& roster, const dataset& data,
                            std::vector<std::string> layouts, const eval_options& opt,
                            const backend_factory& make = synthetic_only) {
  using nlohmann::json;
  if (layouts.empty()) MOA_THROW(invalid_argument("moa eval: name at least one layout"));
  if (data.items.empty()) MOA_THROW(invalid_argument("moa eval: the dataset holds no items"));
  if (opt.in_flight == 0) MOA_THROW(invalid_argument("moa eval: in_flight must be at least 1"));
  const bool pairwise = opt.scorer == scorer_kind::pairwise;
  if (needs_judge(opt.scorer)) {
    if (opt.judge.empty())
      MOA_THROW(invalid_argument("moa eval: the " + std::string(to_string(opt.scorer)) +
                                 " scorer needs a judge model (a roster model name)"));
    (void)roster.model(opt.judge);
  } else {
    for (const auto& it : data.items)
      if (it.references.empty())
        MOA_THROW(invalid_argument("moa eval: item \"" + it.id + "\" of " + data.name +
                                   " has no reference, which the " +
                                   std::string(to_string(opt.scorer)) +
                                   " scorer compares with; use --score rubric or pairwise"));
  }
  if (pairwise) {
    if (opt.reference_layout.empty())
      MOA_THROW(invalid_argument("moa eval: the pairwise scorer needs a reference layout"));
    if (std::find(layouts.begin(), layouts.end(), opt.reference_layout) == layouts.end())
      layouts.insert(layouts.begin(), opt.reference_layout);
  }
  {
    std::set<std::string> seen;
    for (const auto& l : layouts)
      if (!seen.insert(l).second)
        MOA_THROW(invalid_argument("moa eval: layout \"" + l + "\" is named twice"));
  }

  // Backends are made once per model and shared by the layouts that use it.
  std::map<std::string, std::shared_ptr<any_backend>> backends;
  std::map<std::string, std::shared_ptr<detail::endpoint_gate>> gates;
  std::vector<std::unique_ptr<detail::layout_runner>> runners;
  for (const auto& l : layouts)
    runners.push_back(
        std::make_unique<detail::layout_runner>(roster, roster.layout(l), make, backends, gates));
  std::unique_ptr<detail::layout_runner> judge;
  if (needs_judge(opt.scorer))
    judge = std::make_unique<detail::layout_runner>(roster, roster.layout(opt.judge), make,
                                                    backends, gates);

  concurrent_executor pool_executor(opt.concurrent_calls ? concurrent_executor::default_threads()
                                                         : 1);
  auto execute = [&](const runtime_pipeline& p, const request& r, const run_options& o) {
    return opt.concurrent_calls ? p.run(pool_executor, r, o) : p.run(inline_executor{}, r, o);
  };

  // Records: those of the file, then those of this run.
  eval_report report;
  report.dataset = data.name;
  report.scorer = std::string(to_string(opt.scorer));
  report.items = data.items.size();
  std::map<std::string, json> records;
  std::mutex records_mutex;
  detail::results_file file;
  const json header = {{"kind", "header"},
                       {"version", 1},
                       {"scorer", report.scorer},
                       {"judge", opt.judge},
                       {"reference", pairwise ? opt.reference_layout : std::string()}};
  if (!opt.results_path.empty()) {
    bool has_header = false;
    std::size_t line = 0;
    for (auto& j : file.open(opt.results_path, opt.fsync)) {
      ++line;
      const auto kind = j.value("kind", "");
      try {
        if (kind == "header") {
          for (const char* k : {"scorer", "judge", "reference"})
            if (j.at(k) != header.at(k))
              MOA_THROW(
                  invalid_argument(opt.results_path + ":" + std::to_string(line) +
                                   ": written with " + k + " \"" + j.at(k).get<std::string>() +
                                   "\", this evaluation has \"" + header.at(k).get<std::string>() +
                                   "\": resume with the same settings or write another file"));
          has_header = true;
        } else if (kind == "answer") {
          records.emplace(detail::answer_key(j.at("layout"), j.at("item")), std::move(j));
        } else if (kind == "pair") {
          records.emplace(detail::pair_key(j.at("layout"), j.at("reference"), j.at("item")),
                          std::move(j));
        }
      } catch (const json::exception& e) {
        MOA_THROW(invalid_argument(opt.results_path + ":" + std::to_string(line) +
                                   ": a record lacks a field (" + e.what() + ")"));
      }
    }
    report.resumed = records.size();
    report.torn_bytes = file.torn();
    if (!has_header) file.append(header);
  }

  // Work left: answers first, then (pairwise) judgements, which read both layouts' answers.
  struct task {
    std::size_t layout;
    std::size_t item;
  };
  std::vector<task> answers_todo, pairs_todo;
  for (std::size_t l = 0; l < runners.size(); ++l)
    for (std::size_t i = 0; i < data.items.size(); ++i) {
      if (!records.count(detail::answer_key(layouts[l], data.items[i].id)))
        answers_todo.push_back({l, i});
      if (pairwise && layouts[l] != opt.reference_layout &&
          !records.count(detail::pair_key(layouts[l], opt.reference_layout, data.items[i].id)))
        pairs_todo.push_back({l, i});
    }
  const std::size_t total = answers_todo.size() + pairs_todo.size();
  std::atomic<std::size_t> done{0};

  auto store = [&](std::string key, json j) {
    std::lock_guard lock(records_mutex);
    if (file.is_open()) file.append(j);
    records.emplace(std::move(key), std::move(j));
    ++report.ran;
    if (opt.progress) opt.progress(++done, total);
  };

  // One judge call; the reply, or nullopt when the judge run gave no answer.
  auto ask_judge = [&](const std::string& prompt, json& rec) -> std::optional<std::string> {
    request r;
    r.messages.push_back({role::user, prompt});
    r.sampling.temperature = 0.0;
    auto res = judge->run(r, opt.stop, execute);
    rec["judge_tokens"] = detail::usage_json(detail::usage_of(rec["judge_tokens"]) + res.usage);
    rec["judge_cost"] = rec["judge_cost"].get<double>() + judge->cost(res);
    if (!res.has_answer()) return std::nullopt;
    return res.answer;
  };

  detail::run_tasks(answers_todo.size(), opt.in_flight, opt.stop, [&](std::size_t t) {
    const auto& runner = *runners[answers_todo[t].layout];
    const auto& it = data.items[answers_todo[t].item];
    json rec = {{"kind", "answer"}, {"layout", runner.name()}, {"item", it.id}};
    request r;
    usage total_usage{};
    double cost = 0.0, latency_ms = 0.0;
    std::size_t calls = 0;
    std::vector<std::string> answers;
    std::string error;
    for (const auto& turn : it.turns) {
      r.messages.push_back({role::user, turn});
      auto res = runner.run(r, opt.stop, execute);
      if (res.status == run_status::cancelled) return;  // cut short: redone by the next run
      total_usage += res.usage;
      cost += runner.cost(res);
      calls += detail::layout_runner::calls(res);
      latency_ms += std::chrono::duration<double, std::milli>(res.elapsed).count();
      if (!res.has_answer()) {
        error = res.error.empty() ? std::string(to_string(res.status)) : res.error;
        break;
      }
      answers.push_back(res.answer);
      r.messages.push_back({role::assistant, res.answer});
    }
    rec["answers"] = answers;
    rec["ok"] = error.empty();
    if (!error.empty()) rec["error"] = error;
    rec["tokens"] = detail::usage_json(total_usage);
    rec["cost"] = cost;
    rec["latency_ms"] = latency_ms;
    rec["calls"] = calls;
    rec["judge_tokens"] = detail::usage_json({});
    rec["judge_cost"] = 0.0;
    if (opt.scorer == scorer_kind::rubric) {
      if (!error.empty()) {
        rec["score"] = 1.0;  // no answer is the worst answer
      } else {
        double sum = 0.0;
        bool judged = true;
        std::vector<exchange> conv;
        for (std::size_t k = 0; k < answers.size() && judged; ++k) {
          conv.push_back({it.turns[k], answers[k]});
          const std::string ref = k < it.references.size() ? it.references[k] : std::string();
          const auto reply = ask_judge(rubric_prompt(conv, ref, opt.rubric), rec);
          if (opt.stop.stop_requested()) return;
          const auto rating = reply ? parse_rating(*reply) : std::nullopt;
          if (!rating) {
            judged = false;
            rec["judge_error"] = reply ? "the judge's reply holds no [[rating]] from 1 to 10: " +
                                             reply->substr(0, 200)
                                       : std::string("the judge gave no answer");
          } else {
            sum += *rating;
          }
        }
        if (judged) rec["score"] = sum / double(answers.size());
      }
    } else if (!pairwise) {
      rec["score"] =
          error.empty() ? score_reference(opt.scorer, answers.back(), it.final_reference()) : 0.0;
    }
    store(detail::answer_key(runner.name(), it.id), std::move(rec));
  });

  if (pairwise && !opt.stop.stop_requested()) {
    auto find_answer = [&](const std::string& l, const std::string& id) -> const json* {
      std::lock_guard lock(records_mutex);
      auto f = records.find(detail::answer_key(l, id));
      return f == records.end() ? nullptr : &f->second;
    };
    detail::run_tasks(pairs_todo.size(), opt.in_flight, opt.stop, [&](std::size_t t) {
      const auto& layout = layouts[pairs_todo[t].layout];
      const auto& it = data.items[pairs_todo[t].item];
      const json* cand = find_answer(layout, it.id);
      const json* ref = find_answer(opt.reference_layout, it.id);
      if (!cand || !ref) return;  // an answer run was cut short
      json rec = {{"kind", "pair"},
                  {"layout", layout},
                  {"reference", opt.reference_layout},
                  {"item", it.id},
                  {"judge_tokens", detail::usage_json({})},
                  {"judge_cost", 0.0}};
      const auto ca = cand->at("answers").get<std::vector<std::string>>();
      const auto ra = ref->at("answers").get<std::vector<std::string>>();
      double lc = 0, lr = 0;
      for (const auto& a : ca) lc += double(a.size());
      for (const auto& a : ra) lr += double(a.size());
      rec["length_delta"] = lc - lr;
      const bool cok = cand->at("ok").get<bool>(), rok = ref->at("ok").get<bool>();
      if (!cok || !rok) {
        // A layout without an answer loses without a judge call.
        const double o = cok == rok ? 0.5 : (cok ? 1.0 : 0.0);
        rec["outcomes"] = {o, o};
      } else {
        std::vector<exchange> c, r;
        for (std::size_t k = 0; k < ca.size(); ++k) c.push_back({it.turns[k], ca[k]});
        for (std::size_t k = 0; k < ra.size(); ++k) r.push_back({it.turns[k], ra[k]});
        const auto& reference = it.final_reference();
        // Shown second, then first: the candidate wins when B wins, then when A wins.
        const auto forward = ask_judge(pairwise_prompt(r, c, reference), rec);
        const auto swapped = ask_judge(pairwise_prompt(c, r, reference), rec);
        if (opt.stop.stop_requested()) return;
        const auto vf = forward ? parse_verdict(*forward) : std::nullopt;
        const auto vs = swapped ? parse_verdict(*swapped) : std::nullopt;
        rec["outcomes"] = {vf ? json(1.0 - *vf) : json(nullptr), vs ? json(*vs) : json(nullptr)};
        if (!vf || !vs)
          rec["judge_error"] = "the judge's reply holds no [[A]], [[B]] or [[C]] verdict";
      }
      store(detail::pair_key(layout, opt.reference_layout, it.id), std::move(rec));
    });
  }

  // The report: only this dataset's items count, each once.
  report.complete = true;
  for (std::size_t l = 0; l < layouts.size(); ++l) {
    layout_report lr;
    lr.layout = layouts[l];
    lr.reference = pairwise && layouts[l] == opt.reference_layout;
    std::vector<double> scores, latencies;
    std::vector<std::array<std::optional<double>, 2>> outcomes;
    std::vector<double> deltas;
    double calls = 0;
    for (const auto& it : data.items) {
      auto a = records.find(detail::answer_key(layouts[l], it.id));
      if (a == records.end()) {
        report.complete = false;
        continue;
      }
      const auto& j = a->second;
      ++lr.items;
      lr.failed += j.value("ok", false) ? 0 : 1;
      lr.tokens += detail::usage_of(j.at("tokens"));
      lr.cost += j.value("cost", 0.0);
      lr.judge_tokens += detail::usage_of(j.at("judge_tokens"));
      lr.judge_cost += j.value("judge_cost", 0.0);
      latencies.push_back(j.value("latency_ms", 0.0));
      calls += j.value("calls", 0.0);
      if (!pairwise) {
        if (j.contains("score") && j["score"].is_number())
          scores.push_back(j["score"].get<double>());
        else
          ++lr.judge_failures;
        continue;
      }
      if (lr.reference) continue;
      auto p = records.find(detail::pair_key(layouts[l], opt.reference_layout, it.id));
      if (p == records.end()) {
        report.complete = false;
        continue;
      }
      const auto& pj = p->second;
      lr.judge_tokens += detail::usage_of(pj.at("judge_tokens"));
      lr.judge_cost += pj.value("judge_cost", 0.0);
      std::array<std::optional<double>, 2> o;
      for (std::size_t k = 0; k < 2; ++k)
        if (pj.at("outcomes").at(k).is_number()) o[k] = pj["outcomes"][k].get<double>();
      if (!o[0] && !o[1]) {
        ++lr.judge_failures;
        continue;
      }
      outcomes.push_back(o);
      deltas.push_back(pj.value("length_delta", 0.0));
    }
    lr.latency_p50_ms = percentile(latencies, 0.50);
    lr.latency_p99_ms = percentile(latencies, 0.99);
    lr.calls_per_item = lr.items ? calls / double(lr.items) : 0.0;
    if (pairwise && lr.reference) {
      lr.score = {0.5, 0.5, 0.5};
    } else if (pairwise) {
      for (const auto& o : outcomes) {
        double s = 0, n = 0;
        for (const auto& x : o)
          if (x) s += *x, ++n;
        scores.push_back(s / n);
      }
      lr.score = bootstrap_mean(scores, opt.resamples, opt.confidence, opt.seed);
      auto lc = [&](std::span<const std::size_t> idx) {
        std::vector<judgement> js;
        js.reserve(idx.size() * 2);
        for (auto i : idx)
          for (const auto& x : outcomes[i])
            if (x) js.push_back({*x, deltas[i]});
        return length_controlled_win_rate(js);
      };
      lr.lc_win_rate = bootstrap(outcomes.size(), lc, opt.resamples, opt.confidence, opt.seed);
    } else {
      lr.score = bootstrap_mean(scores, opt.resamples, opt.confidence, opt.seed);
    }
    report.layouts.push_back(std::move(lr));
  }
  return report;
}

/// @brief The report as a table, one layout a line.
inline std::ostream& operator<<(std::ostream& os, const eval_report& r) {
  const auto flags = os.flags();
  const auto precision = os.precision();
  const bool pairwise = r.scorer == "pairwise";
  os << "dataset " << r.dataset << ": " << r.items << " items, scorer " << r.scorer << " ("
     << r.resumed << " records resumed, " << r.ran << " run"
     << (r.torn_bytes ? ", a torn last line dropped and its item redone" : "")
     << (r.complete ? "" : "; INCOMPLETE: rerun to finish") << ")\n";
  os << std::left << std::setw(16) << "layout" << std::right << std::setw(7) << "items"
     << std::setw(9) << (pairwise ? "win" : "score") << std::setw(19) << "95% interval";
  if (pairwise) os << std::setw(9) << "LC win" << std::setw(19) << "LC interval";
  os << std::setw(10) << "tok in" << std::setw(10) << "tok out" << std::setw(10) << "p50 ms"
     << std::setw(10) << "p99 ms" << std::setw(8) << "calls" << std::setw(11) << "cost"
     << std::setw(8) << "failed" << '\n';
  auto num = [&](double v, int w, int prec) {
    os << std::setw(w) << std::fixed << std::setprecision(prec) << v;
  };
  auto range = [&](const interval& i) {
    std::ostringstream s;
    s << std::fixed << std::setprecision(3) << "[" << i.low << ", " << i.high << "]";
    os << std::setw(19) << s.str();
  };
  for (const auto& l : r.layouts) {
    os << std::left << std::setw(16) << (l.reference ? l.layout + " (ref)" : l.layout) << std::right
       << std::setw(7) << l.items;
    num(l.score.value, 9, 3);
    range(l.score);
    if (pairwise) {
      if (l.lc_win_rate) {
        num(l.lc_win_rate->value, 9, 3);
        range(*l.lc_win_rate);
      } else {
        os << std::setw(9) << "-" << std::setw(19) << "-";
      }
    }
    os << std::setw(10) << l.tokens.prompt_tokens << std::setw(10) << l.tokens.completion_tokens;
    num(l.latency_p50_ms, 10, 2);
    num(l.latency_p99_ms, 10, 2);
    num(l.calls_per_item, 8, 2);
    num(l.cost, 11, 6);
    os << std::setw(8) << l.failed;
    if (l.judge_failures) os << "  (" << l.judge_failures << " not judged)";
    os << '\n';
  }
  os.flags(flags);
  os.precision(precision);
  return os;
}

/// @brief The report as JSON.
inline nlohmann::json to_json(const eval_report& r) {
  using nlohmann::json;
  auto iv = [](const interval& i) {
    return json{{"value", i.value}, {"low", i.low}, {"high", i.high}};
  };
  json j = {{"dataset", r.dataset},      {"scorer", r.scorer}, {"items", r.items},
            {"resumed", r.resumed},      {"ran", r.ran},       {"complete", r.complete},
            {"torn_bytes", r.torn_bytes}};
  j["layouts"] = json::array();
  for (const auto& l : r.layouts) {
    json x = {{"layout", l.layout},
              {"reference", l.reference},
              {"items", l.items},
              {"failed", l.failed},
              {"judge_failures", l.judge_failures},
              {"score", iv(l.score)},
              {"tokens_in", l.tokens.prompt_tokens},
              {"tokens_out", l.tokens.completion_tokens},
              {"latency_p50_ms", l.latency_p50_ms},
              {"latency_p99_ms", l.latency_p99_ms},
              {"calls_per_item", l.calls_per_item},
              {"cost", l.cost},
              {"judge_tokens_in", l.judge_tokens.prompt_tokens},
              {"judge_tokens_out", l.judge_tokens.completion_tokens},
              {"judge_cost", l.judge_cost}};
    if (l.lc_win_rate) x["lc_win_rate"] = iv(*l.lc_win_rate);
    j["layouts"].push_back(std::move(x));
  }
  return j;
}

}  // namespace moa::eval
