#!/bin/sh
# SPDX-License-Identifier: MIT
# pkg_config.sh PKG_CONFIG PREFIX CXX CONSUMER_CPP WORK_DIR
# Builds the core consumer with nothing but what `pkg-config --cflags --libs moa` says, and shows
# that a component's module pulls its dependencies (moa-queueing -> eigen3).
set -eu
pkg_config=$1 prefix=$2 cxx=$3 src=$4 work=$5
export PKG_CONFIG_PATH="$prefix/share/pkgconfig"
mkdir -p "$work"
echo "moa: $("$pkg_config" --modversion moa) $("$pkg_config" --cflags --libs moa)"
echo "moa-queueing: $("$pkg_config" --cflags moa-queueing)"
# shellcheck disable=SC2046
"$cxx" -std=c++20 -o "$work/consumer" "$src" $("$pkg_config" --cflags --libs moa)
"$work/consumer"
