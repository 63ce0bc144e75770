// SPDX-License-Identifier: MIT
#pragma once

// Pictures drawn by gnuplot (`moa eval --plot`, `moa simulate --plot`): the library writes the
// data and the script (moa/eval/plot.hpp), this runs gnuplot on them, without a shell.

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <moa/core/error.hpp>

#include "cli/common.hpp"

extern char** environ;  // NOLINT: POSIX

namespace moa::cli {

/// Where `name` is on PATH, or empty.
inline std::string find_program(const std::string& name) {
  const char* path = std::getenv("PATH");  // NOLINT(concurrency-mt-unsafe): read at start-up
  std::string dirs = path ? path : "/usr/bin:/bin";
  std::size_t pos = 0;
  while (pos <= dirs.size()) {
    const auto end = std::min(dirs.find(':', pos), dirs.size());
    const auto candidate = std::filesystem::path(dirs.substr(pos, end - pos)) / name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    pos = end + 1;
  }
  return {};
}

/// Runs `program args...` without a shell; its exit status.
inline int spawn_and_wait(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  if (::posix_spawn(&pid, args[0], nullptr, nullptr, args.data(), environ) != 0) return 127;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/// An SVG picture that gnuplot draws at `path`, beside its data (`path.dat`) and script
/// (`path.gp`, rerun to restyle). Checked when made, before the work: gnuplot must be on PATH and
/// the path writable, else bad input (exit 2) naming `option`.
class gnuplot_output {
 public:
  gnuplot_output() = default;
  gnuplot_output(const std::string& path, const std::string& option)
      : path_(path), option_(option) {
    if (path.empty()) return;
    gnuplot_ = find_program("gnuplot");
    if (gnuplot_.empty())
      reject(option,
             "needs gnuplot, which is not on PATH (Debian: apt-get install gnuplot-nox; "
             "scripts/setup.sh installs it)");
    if (path == "-") reject(option, "gnuplot writes a file: give a file name, not -");
    for (const auto& p : {path, data_path(), script_path()}) output_file(p, option, false).finish();
  }

  [[nodiscard]] explicit operator bool() const noexcept { return !path_.empty(); }
  [[nodiscard]] const std::string& path() const noexcept { return path_; }
  [[nodiscard]] std::string data_path() const { return path_ + ".dat"; }
  [[nodiscard]] std::string script_path() const { return path_ + ".gp"; }

  /// Writes the data and the script (made for data_path() and path()) and runs gnuplot; a write
  /// or gnuplot failing is a failure of the work (exit 1), not bad input.
  void draw(const std::string& data, const std::string& script) const {
    for (const auto& [file, text] : {std::pair{data_path(), data}, {script_path(), script}}) {
      std::ofstream out(file, std::ios::binary | std::ios::trunc);
      out << text;
      out.flush();
      if (!out) throw moa::error("moa: writing " + file + " (for " + option_ + ") failed");
    }
    if (spawn_and_wait({gnuplot_, script_path()}) != 0)
      throw moa::error("moa: gnuplot failed on " + script_path() + " (for " + option_ + ")");
  }

 private:
  std::string path_, option_, gnuplot_;
};

}  // namespace moa::cli
