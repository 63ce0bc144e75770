// SPDX-License-Identifier: MIT
#pragma once

// `moa keygen`: a CURVE key pair for a device or a client of the ZeroMQ network, and the key
// options the device and the client share (moa/net/zmq_security.hpp; docs/NETWORK.md, key
// management). Built with MOA_CLI_ZMQ.

#include <CLI/CLI.hpp>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include <moa/net/zmq_security.hpp>

#include "cli/common.hpp"

namespace moa::cli {

/// Runs `f`; a moa::invalid_argument it throws (a key file's fault) is bad input of `option`.
template <class F>
auto with_option(const std::string& option, F&& f) {
  try {
    return f();
  } catch (const moa::invalid_argument& e) {
    reject(option, e.what());
  }
}

/// The public keys of `paths`, in order: NAME.pub files, allow-list files (a key a line), or
/// folders, whose *.pub files are read in name order.
inline std::vector<std::string> public_keys(const std::string& option,
                                            const std::vector<std::string>& paths) {
  std::vector<std::string> keys;
  for (const auto& p : paths) {
    std::vector<std::filesystem::path> files;
    std::error_code ec;
    if (std::filesystem::is_directory(p, ec)) {
      for (const auto& entry : std::filesystem::directory_iterator(p, ec))
        if (entry.path().extension() == ".pub") files.push_back(entry.path());
      std::sort(files.begin(), files.end());
      if (ec || files.empty()) reject(option, "folder '" + p + "' holds no .pub file");
    } else {
      files.emplace_back(p);
    }
    for (const auto& f : files) {
      const auto got = with_option(option, [&] { return moa::net::load_public_keys(f); });
      keys.insert(keys.end(), got.begin(), got.end());
    }
  }
  return keys;
}

inline int keygen_command(const std::string& out) {
  const std::filesystem::path base(out);
  if (out.empty() || out.size() > 4096 || out.back() == '/' || !base.has_filename() ||
      base.filename() == "." || base.filename() == "..")
    reject("--out", "'" + out.substr(0, 64) + "' does not end in a file name; give DIR/NAME");
  std::error_code ec;
  const auto dir = base.has_parent_path() ? base.parent_path() : std::filesystem::path(".");
  if (!std::filesystem::is_directory(dir, ec))
    reject("--out", "folder '" + dir.string() + "' does not exist; create it first");
  const auto keys = with_option("--out", [] { return moa::net::generate_key_pair(); });
  const auto [secret, pub] =
      with_option("--out", [&] { return moa::net::save_key_pair(base, keys); });
  std::cout << "secret key: " << secret.string() << " (mode 0600; keep it on its device)\n"
            << "public key: " << pub.string() << " " << keys.public_key << '\n';
  return 0;
}

/// Adds `keygen` (to `moa` and to `moa_device`).
inline void add_keygen_command(CLI::App& app, int& exit_code) {
  auto out = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand(
      "keygen",
      "Writes a CURVE key pair for a device or a client of the ZeroMQ network: DIR/NAME.key (the "
      "secret, mode 0600) and DIR/NAME.pub; never overwrites");
  cmd->add_option("--out", *out, "DIR/NAME of the two files")->required();
  cmd->callback([out, &exit_code] { exit_code = keygen_command(*out); });
}

}  // namespace moa::cli
