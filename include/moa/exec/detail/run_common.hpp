// SPDX-License-Identifier: MIT
#pragma once

// What both executors share: invoking one backend call and classifying its outcome, building the
// request of an input group, and turning the finished trace into a result.

#include <algorithm>
#include <chrono>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "moa/core/backend.hpp"
#include "moa/core/error.hpp"
#include "moa/core/message.hpp"
#include "moa/exec/result.hpp"
#include "moa/exec/run_options.hpp"
#include "moa/prompt/aggregation.hpp"
#include "moa/topology/plan.hpp"

namespace moa::detail {

inline clock::time_point saturating_add(clock::time_point t, clock::duration d) noexcept {
  return d >= clock::time_point::max() - t ? clock::time_point::max() : t + d;
}

inline const aggregation_prompt& default_prompt() {
  static const aggregation_prompt p;
  return p;
}

/// Checks what every execute() needs, with messages that say what to fix.
inline void check_run(const plan& p, std::span<const backend_ref> backends,
                      const run_options& opt) {
  if (!p.sealed())
    MOA_THROW(invalid_argument("moa: the plan is not sealed; call plan::seal() before executing"));
  if (p.backend_span() > backends.size())
    MOA_THROW(topology_error("moa: the plan calls backend " + std::to_string(p.backend_span() - 1) +
                             " but only " + std::to_string(backends.size()) +
                             " backends were given"));
  for (std::size_t i = 0; i < backends.size(); ++i)
    if (!backends[i].valid())
      MOA_THROW(invalid_argument("moa: backend " + std::to_string(i) + " is an empty backend_ref"));
  if (opt.quorum == 0)
    MOA_THROW(
        invalid_argument("moa: run_options::quorum must be at least 1 (the number of "
                         "earlier answers a call needs)"));
}

/// Fills the static part of a record from the plan.
inline void describe_call(call_record& rec, const plan& p, call_id c,
                          std::span<const backend_ref> backends) {
  const auto& call = p[c];
  rec.call = c;
  rec.backend = call.backend;
  rec.backend_name = backends[call.backend].name();
  rec.layer = call.layer;
  rec.role = call.role;
}

/// Builds the messages of group g from the successful inputs, or says why the group is skipped.
/// `records` must hold the finished records of every input. `trimmed` receives the estimated
/// tokens the context budget cut from the references.
inline std::optional<std::string> build_group(const plan& p, group_id g,
                                              std::span<const call_record> records,
                                              const request& prompt, const run_options& opt,
                                              std::vector<message>& messages, call_list& used,
                                              std::size_t& trimmed) {
  const auto inputs = p.inputs_of(g);
  used = call_list();
  trimmed = 0;
  if (inputs.empty()) {
    messages = prompt.messages;
    return std::nullopt;
  }
  constexpr std::size_t on_stack = 16;
  reference stack_refs[on_stack];
  std::vector<reference> heap_refs;
  std::span<reference> refs(stack_refs, on_stack);
  if (inputs.size() > on_stack) {
    heap_refs.resize(inputs.size());
    refs = heap_refs;
  }
  std::size_t n = 0;
  auto ids = std::make_shared<std::vector<call_id>>();
  ids->reserve(inputs.size());
  for (call_id in : inputs) {
    const auto& r = records[in];
    if (r.ok()) {
      refs[n++] = {r.text, r.backend_name, in};
      ids->push_back(in);
    }
  }
  used = call_list(std::move(ids));
  const std::size_t needed = std::min(opt.quorum, inputs.size());
  if (n < needed)
    return "only " + std::to_string(n) + " of its " + std::to_string(inputs.size()) +
           " inputs succeeded (quorum " + std::to_string(needed) + ")";
  const auto& tmpl = opt.prompt ? *opt.prompt : default_prompt();
  messages = tmpl.inject(prompt.messages, refs.first(n), trimmed);
  return std::nullopt;
}

/// Calls the backend and records the outcome. Never throws for a backend failure.
inline void invoke(const backend_ref& backend, const request& req, call_record& rec,
                   const std::function<void(std::string_view)>* on_token) {
  try {
    response resp;
    if (on_token != nullptr && *on_token) {
      auto forward = [on_token](std::string_view t) { (*on_token)(t); };
      resp = backend.generate_stream(req, token_callback(forward));
    } else {
      resp = backend.generate(req);
    }
    rec.usage = resp.usage;
    rec.finish = resp.finish;
    rec.text = std::move(resp.text);
    if (rec.text.empty()) {
      rec.status = call_status::empty;
      rec.error = "the backend returned an empty answer";
    } else {
      rec.status = call_status::ok;
    }
  } catch (const timeout_error& e) {
    rec.status = call_status::timed_out;
    rec.error = e.what();
  } catch (const cancelled_error& e) {
    rec.status = call_status::cancelled;
    rec.error = e.what();
  } catch (const std::exception& e) {
    rec.status = call_status::failed;
    rec.error = e.what();
  } catch (...) {
    rec.status = call_status::failed;
    rec.error = "the backend threw an exception not derived from std::exception";
  }
}

/// Re-classifies a call that came back after its deadline or after cancellation.
inline void enforce_limits(call_record& rec, clock::time_point end, clock::time_point deadline,
                           const std::stop_token& stop) {
  if (rec.status != call_status::ok) return;
  if (end > deadline) {
    rec.status = call_status::timed_out;
    rec.error = "answered " +
                std::to_string(
                    std::chrono::duration_cast<std::chrono::microseconds>(end - deadline).count()) +
                " us after its deadline; the answer was not used";
  } else if (stop.stop_requested()) {
    rec.status = call_status::cancelled;
    rec.error = "the run was cancelled";
  }
}

inline std::string name_call(const call_record& r) {
  return "call " + std::to_string(r.call) + " (" + r.backend_name + ", " +
         std::string(to_string(r.role)) + ", layer " + std::to_string(r.layer) + ")";
}

/// Turns a finished trace into the run's outcome.
inline void conclude(result& res, const plan& p, const run_options& opt, bool deadline_hit,
                     bool cancelled) {
  for (const auto& r : res.trace) res.usage += r.usage;
  const auto& sink = res.trace[p.sink()];
  if (sink.ok()) {
    res.status = run_status::ok;
    res.answer = sink.text;
    return;
  }
  std::string failures;
  for (const auto& r : res.trace) {
    if (r.ok() || r.status == call_status::skipped) continue;
    if (!failures.empty()) failures += "; ";
    failures += name_call(r) + " " + std::string(to_string(r.status)) + ": " + r.error;
  }
  if (cancelled) {
    res.status = run_status::cancelled;
    res.error = "the run was cancelled" + (failures.empty() ? "" : " (" + failures + ")");
    return;
  }
  if (deadline_hit) {
    res.status = run_status::timed_out;
    res.error = "the run passed its deadline" + (failures.empty() ? "" : " (" + failures + ")");
    return;
  }
  const bool sink_ran = sink.status != call_status::skipped;
  if (sink_ran && opt.on_aggregator_failure == aggregator_fallback::degrade) {
    for (call_id in : p.inputs_of_call(p.sink())) {
      const auto& r = res.trace[in];
      if (!r.ok()) continue;
      res.status = run_status::degraded;
      res.answer = r.text;
      res.error = "the aggregator failed (" + failures + "); answered with " + name_call(r);
      return;
    }
  }
  res.status = run_status::failed;
  if (!sink_ran) failures += (failures.empty() ? "" : "; ") + name_call(sink) + " " + sink.error;
  res.error = failures;
}

}  // namespace moa::detail
