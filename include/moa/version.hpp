// SPDX-License-Identifier: MIT
#pragma once

// The single source of the version: CMakeLists.txt parses this line.
// MOA_VERSION = major * 10000 + minor * 100 + patch.
#define MOA_VERSION 200

namespace moa {

struct version_info {
  int major;
  int minor;
  int patch;
};

/// @brief The version of the headers in use, decoded from MOA_VERSION.
constexpr version_info version() noexcept {
  return {MOA_VERSION / 10000, MOA_VERSION / 100 % 100, MOA_VERSION % 100};
}

}  // namespace moa
