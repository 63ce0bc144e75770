#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs what moa needs on Debian 12 (only what is missing) and configures ccache.
# Sourced by run.sh and test.sh; safe to run again.
set -euo pipefail

MOA_PACKAGES=(
  g++ cmake ninja-build ccache pkg-config
  libeigen3-dev librange-v3-dev doctest-dev libcli11-dev nlohmann-json3-dev libbenchmark-dev
  libcurl4-openssl-dev curl
  libasio-dev libboost-dev
  time
  clang-format clang-14 libclang-rt-14-dev
  cppzmq-dev libzmq3-dev
  gnuplot-nox
  help2man libtbb-dev time
)

moa_missing_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  echo "${missing[@]:-}"
}

moa_install() {
  local missing
  missing=$(moa_missing_packages "$@")
  [ -z "$missing" ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "moa: installing: $missing"
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

moa_install "${MOA_PACKAGES[@]}"

# ccache keyed on relative paths, so fresh clones in other folders reuse the cache.
export CCACHE_BASEDIR="${MOA_ROOT:-$(pwd)}"
export CCACHE_NOHASHDIR=true
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
