// SPDX-License-Identifier: MIT
#pragma once

// Helpers shared by the subcommands of the moa program, and the one validation discipline of
// both programs (moa and moa_device): every number from outside is checked as text before it is
// converted (no unsigned wrap, finite numbers only, the range in --help), output files are opened
// before the work starts (`-` is stdout), config files are read strictly (every key known, typed
// and in range, the command line winning), and main() ends every exception in a message and one of
// the documented exit codes: 0 success, 1 the work ran but gave no answer, 2 bad input.

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <moa/aggregator.hpp>
#include <moa/backends/synthetic.hpp>
#include <moa/config/roster.hpp>
#include <moa/core/error.hpp>

namespace moa::cli {

// --- checked numbers --------------------------------------------------------------------------

/// Bad input found after parsing (a combination of options, a config file): exit 2, naming what.
[[noreturn]] inline void reject(const std::string& what, const std::string& why) {
  throw CLI::ValidationError(what, why);
}

/// `x` as %g: how ranges read in --help and in messages.
inline std::string number_text(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", x);
  return buf;
}

/// Decimal digits only, without wrap: CLI11's own strtoull turns "-1" into 2^64-1 and reads
/// "010" as octal.
inline bool parse_count(std::string_view text, std::uint64_t& out) {
  if (text.empty() || text.size() > 20) return false;
  for (char c : text)
    if (c < '0' || c > '9') return false;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc{} && end == text.data() + text.size();
}

/// A finite decimal number ("nan", "inf", hex floats, overflow and trailing text rejected).
inline bool parse_number(std::string_view text, double& out) {
  if (text.empty() || text.size() > 64) return false;
  const auto [end, ec] =
      std::from_chars(text.data(), text.data() + text.size(), out, std::chars_format::general);
  return ec == std::errc{} && end == text.data() + text.size() && std::isfinite(out);
}

/// A whole number in [lo, hi], normalised to plain decimal before CLI11 converts it.
inline CLI::Validator count_in(std::uint64_t lo, std::uint64_t hi) {
  const std::string range = "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  return CLI::Validator(
      [lo, hi, range](std::string& v) -> std::string {
        std::uint64_t x = 0;
        if (!parse_count(v, x) || x < lo || x > hi)
          return "'" + v + "' is not a whole number in " + range;
        v = std::to_string(x);
        return {};
      },
      "in " + range, "count");
}

/// A finite number in [lo, hi] (or (lo, hi] when `open_low`): NaN and infinities never pass.
inline CLI::Validator number_in(double lo, double hi, bool open_low = false) {
  const std::string range = (open_low ? "(" : "[") + number_text(lo) + ", " + number_text(hi) + "]";
  return CLI::Validator(
      [lo, hi, open_low, range](std::string& v) -> std::string {
        double x = 0;
        if (!parse_number(v, x) || x < lo || x > hi || (open_low && x == lo))
          return "'" + v + "' is not a finite number in " + range;
        return {};
      },
      "finite, in " + range, "number");
}

/// The longest duration an option in milliseconds takes: about 11.6 days, far from overflowing a
/// nanosecond clock.
inline constexpr double max_duration_ms = 1e9;

/// Milliseconds, already checked by number_in(0, max_duration_ms), as the library's clock type.
inline moa::clock::duration duration_ms(double ms) {
  return std::chrono::duration_cast<moa::clock::duration>(
      std::chrono::duration<double, std::milli>(std::clamp(ms, 0.0, max_duration_ms)));
}

/// A duration in milliseconds where `0` or `none` means no limit (stored as 0).
inline CLI::Validator timeout_ms() {
  const std::string range = "[0, " + number_text(max_duration_ms) + "]";
  return CLI::Validator(
      [range](std::string& v) -> std::string {
        if (v == "none") {
          v = "0";
          return {};
        }
        double x = 0;
        if (!parse_number(v, x) || x < 0 || x > max_duration_ms)
          return "'" + v + "' is not a number of milliseconds in " + range + " or 'none'";
        return {};
      },
      "ms in " + range + ", 0 or none: no limit", "timeout");
}

/// Limits the subcommands share (each is stated in --help through its validator).
inline constexpr std::uint64_t max_models = 64;                ///< backends, proposers, layers
inline constexpr std::uint64_t max_devices = 1024;             ///< devices of an analysed network
inline constexpr std::uint64_t max_uniform_devices = 1 << 20;  ///< uniform gossip, O(n) analysis
inline constexpr double max_latency_ms = 3.6e6;                ///< a synthetic model's mean latency
inline constexpr double max_sigma = 4.0;                   ///< lognormal sigma (e^(4^2/2) ~ 3000x)
inline constexpr std::size_t max_prompt_bytes = 16 << 20;  ///< a prompt, from a file or stdin
inline constexpr double default_http_timeout_ms = 300000;  ///< openai_options::timeout's default

/// Any 64-bit seed, checked (no wrap from "-1").
inline CLI::Validator any_seed() {
  return count_in(0, std::numeric_limits<std::uint64_t>::max());
}

/// An http:// or https:// URL: the only schemes the HTTP backend speaks.
inline CLI::Validator http_url() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        auto lower = v.substr(0, 8);
        for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        if (v.size() > 2048 || !(lower.rfind("http://", 0) == 0 || lower.rfind("https://", 0) == 0))
          return "'" + v.substr(0, 64) + "' is not an http:// or https:// URL";
        return {};
      },
      "http:// or https:// URL", "url");
}

// --- files ------------------------------------------------------------------------------------

/// Where a result goes: a file opened before the work starts (so a path that cannot be written is
/// bad input, found before any time is spent), stdout for `-`, or nowhere when the path is empty.
class output_file {
 public:
  output_file() = default;
  /// `to_stdout`: whether the option takes - for stdout (its messages offer it only then).
  output_file(const std::string& path, const std::string& option, bool to_stdout = true)
      : path_(path), option_(option) {
    if (path.empty() || path == "-") return;
    const std::string or_stdout = to_stdout ? " (or - for stdout)" : "";
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec))
      reject(option, "'" + path + "' is a folder; give a file name" + or_stdout);
    file_ = std::make_unique<std::ofstream>(path, std::ios::binary | std::ios::trunc);
    if (!*file_)
      reject(option, "cannot write '" + path +
                         "' (missing folder or no permission); give a writable path" + or_stdout);
  }

  [[nodiscard]] explicit operator bool() const noexcept { return !path_.empty(); }
  [[nodiscard]] bool is_stdout() const noexcept { return path_ == "-"; }
  std::ostream& stream() { return file_ ? *file_ : std::cout; }

  /// Flushes; a write that failed (a full disk) is an error, not a silent loss.
  void finish() {
    if (path_.empty()) return;
    stream().flush();
    if (!stream())
      throw moa::error("moa: writing " + (is_stdout() ? std::string("stdout") : path_) + " (for " +
                       option_ + ") failed");
  }

 private:
  std::string path_, option_;
  std::unique_ptr<std::ofstream> file_;
};

/// An input file a library loader will read whole: a regular file of at most `limit` bytes,
/// checked before the loader allocates for it (`/dev/zero` is not a dataset).
inline void check_input_file(const std::string& path, const std::string& option,
                             std::uintmax_t limit) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    reject(option, "'" + path + "' is not a regular file");
  const auto size = std::filesystem::file_size(path, ec);
  if (ec || size > limit)
    reject(option, "'" + path + "' is larger than " + std::to_string(limit >> 20) + " MiB");
}

/// A file that is appended to (resumable results): it may exist, and its folder must be
/// writable; checked before the work starts, without truncating what is there.
inline void check_appendable(const std::string& path, const std::string& option) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    reject(option, "'" + path + "' is a folder; give a file name");
  std::ofstream probe(path, std::ios::binary | std::ios::app);
  if (!probe) reject(option, "cannot write '" + path + "' (missing folder or no permission)");
}

/// The whole of a file or of stdin (`-`), at most `limit` bytes: more is bad input.
inline std::string read_text(const std::string& path, const std::string& option,
                             std::size_t limit) {
  std::ifstream file;
  std::istream* in = &std::cin;
  if (path != "-") {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) reject(option, "'" + path + "' is a folder");
    file.open(path, std::ios::binary);
    if (!file) reject(option, "cannot read '" + path + "' (missing, or no permission)");
    in = &file;
  }
  std::string out;
  char buf[1 << 16];
  while (*in) {
    in->read(buf, sizeof buf);
    const auto got = static_cast<std::size_t>(in->gcount());
    if (out.size() + got > limit)
      reject(option, "'" + path + "' holds more than " + std::to_string(limit) +
                         " bytes, the most it may hold");
    out.append(buf, got);
  }
  if (in->bad()) reject(option, "reading '" + path + "' failed");
  return out;
}

/// JSON text, parsed with a bound on nesting (deeply nested input would otherwise cost stack).
inline nlohmann::json parse_json_text(const std::string& text, const std::string& what,
                                      int max_depth = 16) {
  try {
    return nlohmann::json::parse(
        text, [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
          if (depth > max_depth)
            reject(what, "JSON nested deeper than " + std::to_string(max_depth) + " levels");
          return true;
        });
  } catch (const nlohmann::json::exception& e) {
    reject(what, std::string("not valid JSON: ") + e.what());
  }
}

/// Config files are small: larger ones are refused before they are read into memory.
inline constexpr std::size_t max_config_bytes = std::size_t{1} << 20;

/// Applies a JSON config object to the options of `cmd`: each key is a long option's name, and
/// its value goes through that option's own checks. An option given on the command line wins over
/// the file; an unknown key, a wrong type or a value out of range is an error naming the key.
/// Keys in `own` are not options: the caller reads them from the returned object. `where` names
/// the object in messages (a file, a roster key); with `only` non-empty, only those long options
/// (names without "--") are keys.
inline nlohmann::json apply_config_object(CLI::App* cmd, const nlohmann::json& j,
                                          const std::string& where,
                                          const std::vector<std::string>& own = {},
                                          const std::vector<std::string>& only = {}) {
  if (!j.is_object()) reject(where, "must hold one JSON object {\"key\": value, ...}");
  nlohmann::json rest = nlohmann::json::object();
  for (const auto& [key, value] : j.items()) {
    const std::string name = where + ", key \"" + key + "\"";
    if (std::find(own.begin(), own.end(), key) != own.end()) {
      rest[key] = value;
      continue;
    }
    const bool allowed = only.empty() || std::find(only.begin(), only.end(), key) != only.end();
    CLI::Option* opt = key == "config" || key == "help" || key.empty() || !allowed
                           ? nullptr
                           : cmd->get_option_no_throw("--" + key);
    if (opt == nullptr) {
      std::string known;
      if (only.empty()) {
        for (const CLI::Option* o : cmd->get_options())
          if (!o->get_lnames().empty() && o->get_lnames()[0] != "config" &&
              o->get_lnames()[0] != "help")
            known += (known.empty() ? "" : ", ") + o->get_lnames()[0];
      } else {
        for (const auto& k : only) known += (known.empty() ? "" : ", ") + k;
      }
      for (const auto& k : own) known += ", " + k;
      reject(name, "unknown key; known keys: " + known);
    }
    if (opt->count() > 0) continue;  // the command line wins
    const bool text = opt->get_type_name().rfind("TEXT", 0) == 0;
    std::vector<std::string> values;
    auto scalar = [&](const nlohmann::json& v) {
      if (v.is_number() && !text)
        values.push_back(v.dump());
      else if (v.is_string() && text)
        values.push_back(v.get<std::string>());
      else
        reject(name, std::string("wrong type: ") + v.type_name() + "; expected " +
                         (text ? "a string" : "a number"));
    };
    if (value.is_array() && opt->get_items_expected_max() > 1) {
      if (value.empty()) reject(name, "an empty list; give at least one value");
      for (const auto& v : value) scalar(v);
    } else {
      scalar(value);
    }
    try {
      opt->add_result(values);
      opt->run_callback();
    } catch (const CLI::Error& e) {
      reject(name, e.what());
    }
  }
  return rest;
}

/// apply_config_object on the JSON file `path` (--config).
inline nlohmann::json apply_config(CLI::App* cmd, const std::string& path,
                                   const std::vector<std::string>& own = {}) {
  const std::string where = "--config " + path;
  const auto j = parse_json_text(read_text(path, "--config", max_config_bytes), where);
  if (!j.is_object()) reject(where, "the file must hold one JSON object {\"key\": value, ...}");
  return apply_config_object(cmd, j, where, own);
}

// --- main -------------------------------------------------------------------------------------

/// Parses and runs `app`, ending every exception in a message and a documented exit code: 2 for
/// bad input (what CLI11 rejects, moa::invalid_argument, topology errors), 1 for a failure of the
/// work itself; otherwise `exit_code` as the subcommand set it.
inline int run_program(CLI::App& app, int argc, char** argv, const char* program,
                       const int& exit_code) {
  auto fail = [program](const char* what, int code) {
    std::cout.flush();
    std::cerr << program << ": error: " << what << '\n';
    return code;
  };
  try {
    app.parse(argc, argv);
    std::cout.flush();
    return std::cout ? exit_code : fail("writing to stdout failed", 1);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  } catch (const moa::invalid_argument& e) {
    return fail(e.what(), 2);
  } catch (const moa::topology_error& e) {
    return fail(e.what(), 2);
  } catch (const std::bad_alloc&) {
    return fail("out of memory", 1);
  } catch (const std::exception& e) {
    return fail(e.what(), 1);
  } catch (...) {
    return fail("unknown exception", 1);
  }
}

/// Names for the embedded synthetic models, so traces read as distinct models.
inline std::string model_name(std::size_t i) {
  static const char* const names[] = {"alpha",   "beta", "gamma", "delta",
                                      "epsilon", "zeta", "eta",   "theta"};
  return i < std::size(names) ? names[i] : "model" + std::to_string(i);
}

/// Progress goes to stderr, and only when it is a terminal: pipes and CI logs stay clean.
inline bool progress_wanted() {
  return ::isatty(STDERR_FILENO) == 1;
}

/// The latency options every subcommand that runs synthetic models accepts.
struct latency_options {
  std::string shape = "zero";
  double mean_ms = 0.0;
  double sigma = 0.5;

  [[nodiscard]] moa::latency_model model() const {
    const auto mean = duration_ms(mean_ms);
    if (shape == "zero") return moa::latency_model::zero();
    if (shape == "constant") return moa::latency_model::constant(mean);
    if (shape == "exponential") return moa::latency_model::exponential(mean);
    return moa::latency_model::lognormal(mean, sigma);
  }
};

/// Whether `option` of `cmd` was given on the command line (flags beat config files); false for an
/// option this build does not have.
inline bool given(const CLI::App* cmd, const std::string& option) {
  const CLI::Option* o = cmd ? cmd->get_option_no_throw(option) : nullptr;
  return o != nullptr && o->count() > 0;
}

/// OpenAI-compatible endpoints given by flags (`--endpoint`, `--model`, ...): turned into roster
/// models, so flags and roster files reach a backend by one path (cli::model_backend).
struct endpoint_flags {
  std::vector<std::string> endpoints{};
  std::string model{};        ///< the model name sent; empty: omitted
  std::string api_key_env{};  ///< empty: OPENAI_API_KEY
  int max_tokens = 256;
  double http_timeout_ms = default_http_timeout_ms;  ///< 0: the backend's default

  /// `count` models named alpha, beta, ...: model i at endpoint i modulo the number of endpoints
  /// (one endpoint can play every model), as the `models` object of a roster.
  [[nodiscard]] nlohmann::json models(std::size_t count) const {
    nlohmann::json out = nlohmann::json::object();
    for (std::size_t i = 0; i < count && !endpoints.empty(); ++i) {
      nlohmann::json m = {
          {"endpoint", endpoints[i % endpoints.size()]},
          {"max_tokens", max_tokens},
          // A roster bounds a call to a day; a longer flag means as much.
          {"timeout_ms", static_cast<std::int64_t>(std::min(http_timeout_ms, 24.0 * 3600 * 1000))}};
      if (!model.empty()) m["model"] = model;
      if (!api_key_env.empty()) m["api_key_env"] = api_key_env;
      out[model_name(i)] = m;
    }
    return out;
  }
};

/// Reads a roster file for `option`: a regular file of bounded size; every error names the key
/// (exit 2).
inline moa::config::roster read_roster(const std::string& path, const std::string& option) {
  check_input_file(path, option, std::uintmax_t{16} << 20);
  try {
    return moa::config::load_roster(path);
  } catch (const nlohmann::json::exception& e) {
    reject(option, path + ": " + e.what());
  }
}

/// The aggregation policy of the subcommands that run MoA: the rosters' own (one builder,
/// moa::config::make_policy).
using policy_options = moa::config::policy_spec;

}  // namespace moa::cli
