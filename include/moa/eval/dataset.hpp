// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Evaluation datasets and their loaders. Every loader validates what it reads: a bad file is a
/// dataset_error naming `file:line`, the field and what was expected.
///
/// | loader            | shape                                                                  |
/// |-------------------|------------------------------------------------------------------------|
/// | `load_jsonl`      | one JSON object a line; prompt/reference/id field names configurable   |
/// | `load_alpaca`     | a JSON array of {"instruction", "output"?} (AlpacaEval)                |
/// | `load_mt_bench`   | JSON lines {"question_id", "category", "turns", "reference"?} (MT-Bench)|
/// | `load_csv_choice` | CSV: question, choices..., answer letter (MMLU-style)                  |

#include <cstddef>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "moa/core/error.hpp"

namespace moa::eval {

/// @brief One evaluation item: one or more user turns, run one after another through a layout.
struct item {
  std::string id{};
  std::vector<std::string> turns{};       ///< user messages, in order (one for most datasets)
  std::vector<std::string> references{};  ///< reference answers, per turn (may be empty)
  std::string category{};

  /// The reference of the last turn (what reference scorers compare the final answer with).
  [[nodiscard]] const std::string& final_reference() const {
    static const std::string none;
    return references.empty() ? none : references.back();
  }
};

/// @brief A named list of items with unique ids.
struct dataset {
  std::string name{};
  std::vector<item> items{};
};

/// @brief A dataset file is malformed; the message names file:line and the field.
class dataset_error : public invalid_argument {
 public:
  using invalid_argument::invalid_argument;
};

/// @brief Field names of load_jsonl.
struct jsonl_fields {
  std::string prompt = "prompt";        ///< a string, or a list of strings (turns)
  std::string reference = "reference";  ///< optional: a string, or a list (per turn)
  std::string id = "id";                ///< optional: a string or integer; default the line number
  std::string category = "category";    ///< optional
};

namespace detail {

[[noreturn]] inline void bad(const std::string& where, const std::string& what) {
  MOA_THROW(dataset_error(where + ": " + what));
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) MOA_THROW(dataset_error(path + ": cannot open"));
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline std::string where(const std::string& path, std::size_t line) {
  return path + ":" + std::to_string(line);
}

inline nlohmann::json parse_line(const std::string& text, const std::string& at) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) bad(at, "not valid JSON");
  if (!j.is_object()) bad(at, "expected a JSON object");
  return j;
}

// A string, or a non-empty list of strings, at j[field].
inline std::vector<std::string> strings(const nlohmann::json& j, const std::string& field,
                                        const std::string& at, bool required) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    if (required) bad(at, "field \"" + field + "\" is missing");
    return {};
  }
  if (it->is_string()) return {it->get<std::string>()};
  if (it->is_array() && !it->empty()) {
    std::vector<std::string> out;
    for (const auto& s : *it) {
      if (!s.is_string()) bad(at, "field \"" + field + "\" must hold strings only");
      out.push_back(s.get<std::string>());
    }
    return out;
  }
  bad(at, "field \"" + field + "\" must be a string or a non-empty list of strings");
}

inline std::string id_of(const nlohmann::json& j, const std::string& field, const std::string& at,
                         std::size_t fallback) {
  auto it = j.find(field);
  if (it == j.end()) return std::to_string(fallback);
  if (it->is_string() && !it->get<std::string>().empty()) return it->get<std::string>();
  if (it->is_number_integer()) return std::to_string(it->get<long long>());
  bad(at, "field \"" + field + "\" must be a non-empty string or an integer");
}

inline void check_item(item& it, const std::string& at, std::set<std::string>& ids) {
  for (const auto& t : it.turns)
    if (t.empty()) bad(at, "a prompt turn is empty");
  if (it.references.size() > it.turns.size())
    bad(at, std::to_string(it.references.size()) + " references for " +
                std::to_string(it.turns.size()) + " turns");
  if (!ids.insert(it.id).second) bad(at, "id \"" + it.id + "\" is used twice");
}

inline void check_not_empty(const dataset& d, const std::string& path) {
  if (d.items.empty()) MOA_THROW(dataset_error(path + ": holds no items"));
}

template <class F>
void for_each_line(const std::string& text, F&& f) {
  std::size_t line = 0, pos = 0;
  while (pos < text.size()) {
    const auto end = text.find('\n', pos);
    std::string l = text.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    ++line;
    pos = end == std::string::npos ? text.size() : end + 1;
    if (!l.empty() && l.back() == '\r') l.pop_back();
    if (l.find_first_not_of(" \t") == std::string::npos) continue;
    f(l, line);
  }
}

}  // namespace detail

/// @brief JSON lines: {"id": ..., "prompt": "..." | ["turn 1", "turn 2"], "reference": ...}.
inline dataset load_jsonl(const std::string& path, const jsonl_fields& f = {}) {
  dataset d{.name = path};
  std::set<std::string> ids;
  detail::for_each_line(detail::read_file(path), [&](const std::string& l, std::size_t line) {
    const auto at = detail::where(path, line);
    const auto j = detail::parse_line(l, at);
    item it;
    it.id = detail::id_of(j, f.id, at, line);
    it.turns = detail::strings(j, f.prompt, at, true);
    it.references = detail::strings(j, f.reference, at, false);
    if (auto c = j.find(f.category); c != j.end() && c->is_string()) it.category = *c;
    detail::check_item(it, at, ids);
    d.items.push_back(std::move(it));
  });
  detail::check_not_empty(d, path);
  return d;
}

/// @brief AlpacaEval's shape: a JSON array of {"instruction": ..., "output": ...?,
/// "dataset": ...?}. `output` (the reference model's answer) becomes the reference.
inline dataset load_alpaca(const std::string& path) {
  const auto text = detail::read_file(path);
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) MOA_THROW(dataset_error(path + ":1: not valid JSON"));
  if (!j.is_array()) MOA_THROW(dataset_error(path + ":1: expected a JSON array of objects"));
  dataset d{.name = path};
  std::set<std::string> ids;
  for (std::size_t i = 0; i < j.size(); ++i) {
    const auto at = path + ": element " + std::to_string(i);
    if (!j[i].is_object()) detail::bad(at, "expected an object");
    item it;
    it.id = std::to_string(i);
    it.turns = detail::strings(j[i], "instruction", at, true);
    if (it.turns.size() != 1) detail::bad(at, "field \"instruction\" must be one string");
    it.references = detail::strings(j[i], "output", at, false);
    if (auto c = j[i].find("dataset"); c != j[i].end() && c->is_string()) it.category = *c;
    detail::check_item(it, at, ids);
    d.items.push_back(std::move(it));
  }
  detail::check_not_empty(d, path);
  return d;
}

/// @brief MT-Bench's question file: JSON lines {"question_id": 81, "category": "writing",
/// "turns": ["...", "..."], "reference": ["...", "..."]?}.
inline dataset load_mt_bench(const std::string& path) {
  return load_jsonl(path, {.prompt = "turns", .reference = "reference", .id = "question_id"});
}

namespace detail {

// RFC 4180 records: quoted fields may hold commas, doubled quotes and line breaks. Calls
// f(fields, line of the record's start).
template <class F>
void for_each_csv_record(const std::string& text, const std::string& path, F&& f) {
  std::vector<std::string> fields(1);
  std::size_t line = 1, start = 1;
  bool quoted = false, any = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        fields.back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        if (c == '\n') ++line;
        fields.back() += c;
      }
      continue;
    }
    if (c == '"') {
      if (!fields.back().empty()) bad(where(path, line), "a quote inside an unquoted field");
      quoted = any = true;
    } else if (c == ',') {
      fields.emplace_back();
      any = true;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      if (any || fields.size() > 1 || !fields[0].empty()) f(fields, start);
      fields.assign(1, {});
      any = false;
      start = ++line;
    } else {
      fields.back() += c;
      any = true;
    }
  }
  if (quoted) bad(where(path, start), "a quoted field is not closed");
  if (any || fields.size() > 1 || !fields[0].empty()) f(fields, start);
}

}  // namespace detail

/// @brief CSV multiple choice with a header row: `question,A,B,...,answer` (any number of
/// choice columns between, named by their letters; an optional leading `id` column). The prompt
/// lists the choices and asks for the letter; the reference is the answer letter.
inline dataset load_csv_choice(const std::string& path) {
  dataset d{.name = path};
  std::set<std::string> ids;
  std::vector<std::string> header;
  std::size_t first_choice = 0;
  detail::for_each_csv_record(
      detail::read_file(path), path, [&](const std::vector<std::string>& r, std::size_t line) {
        const auto at = detail::where(path, line);
        if (header.empty()) {
          header = r;
          first_choice = !header.empty() && header[0] == "id" ? 2 : 1;
          if (header.size() < first_choice + 3 || header[first_choice - 1] != "question" ||
              header.back() != "answer")
            detail::bad(at, "the header must be [id,]question,A,B[,C...],answer");
          for (std::size_t c = first_choice; c + 1 < header.size(); ++c)
            if (header[c] != std::string(1, char('A' + (c - first_choice))))
              detail::bad(at, "choice column " + std::to_string(c + 1) + " must be named \"" +
                                  std::string(1, char('A' + (c - first_choice))) + "\", not \"" +
                                  header[c] + "\"");
          return;
        }
        if (r.size() != header.size())
          detail::bad(at, std::to_string(r.size()) + " fields, the header has " +
                              std::to_string(header.size()));
        item it;
        it.id = first_choice == 2 ? r[0] : std::to_string(line);
        if (it.id.empty()) detail::bad(at, "field \"id\" is empty");
        const auto& question = r[first_choice - 1];
        if (question.empty()) detail::bad(at, "field \"question\" is empty");
        std::string prompt = question + "\n";
        const char last = char('A' + (header.size() - 1 - first_choice) - 1);
        for (std::size_t c = first_choice; c + 1 < header.size(); ++c) {
          if (r[c].empty()) detail::bad(at, "choice \"" + header[c] + "\" is empty");
          prompt += "(" + header[c] + ") " + r[c] + "\n";
        }
        prompt += "Answer with the letter of the correct choice, for example (A).";
        const auto& answer = r.back();
        if (answer.size() != 1 || answer[0] < 'A' || answer[0] > last)
          detail::bad(at, "field \"answer\" must be one letter from A to " + std::string(1, last) +
                              ", not \"" + answer + "\"");
        it.turns = {std::move(prompt)};
        it.references = {answer};
        detail::check_item(it, at, ids);
        d.items.push_back(std::move(it));
      });
  if (header.empty()) MOA_THROW(dataset_error(path + ": empty file (expected a header row)"));
  detail::check_not_empty(d, path);
  return d;
}

/// @brief Loads by format name: jsonl, alpaca, mt-bench, csv.
inline dataset load_dataset(const std::string& path, std::string_view format,
                            const jsonl_fields& f = {}) {
  if (format == "jsonl") return load_jsonl(path, f);
  if (format == "alpaca") return load_alpaca(path);
  if (format == "mt-bench") return load_mt_bench(path);
  if (format == "csv") return load_csv_choice(path);
  MOA_THROW(dataset_error("unknown dataset format \"" + std::string(format) +
                          "\": use jsonl, alpaca, mt-bench or csv"));
}

}  // namespace moa::eval
