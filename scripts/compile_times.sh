#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Compile time and peak memory of every public header on its own, and of the README quickstart.
#
#   scripts/compile_times.sh [REGEX]      only the headers whose path matches REGEX
#
# Each row compiles a TU that includes one header (`-c` at -O2, as users build: templates a TU
# uses are instantiated, unused inline functions are still parsed and checked) with g++ straight,
# never through ccache, one at a time. Figures come from /usr/bin/time -v: wall seconds, user+sys
# CPU seconds (steadier than wall on a shared machine) and the compiler's peak resident memory.
# Prints a Markdown table (docs/BENCHMARKS.md keeps one). Env: CXX (default g++), CXXFLAGS_EXTRA,
# REPEAT (default 1): compile each TU that many times and keep the run with the least CPU time,
# which filters out most of the noise of a busy machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
filter=${1:-.}
cxx=${CXX:-g++}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Include paths of every optional dependency a header may need (Debian locations).
flags=(-std=c++20 -O2 -I"$root/include" -pthread)
if pkg-config --exists eigen3 2>/dev/null; then
  read -r -a eigen <<<"$(pkg-config --cflags eigen3)"
  flags+=("${eigen[@]}")
fi
# shellcheck disable=SC2206
flags+=(${CXXFLAGS_EXTRA:-})

repeat=${REPEAT:-1}

measure() {  # measure LABEL SOURCE: prints one table row
  local label=$1 src=$2 log="$work/time.log" rows="$work/rows" i
  : >"$rows"
  for ((i = 0; i < repeat; i++)); do
    if ! /usr/bin/time -v "$cxx" "${flags[@]}" -c "$src" -o "$work/out.o" 2>"$log" >/dev/null; then
      printf '| %s | failed | | |\n' "$label"
      sed -n '1,5p' "$log" >&2
      return
    fi
    awk '
      /Elapsed \(wall clock\)/ { n = split($NF, t, ":"); wall = (n == 3) ? t[1] * 3600 + t[2] * 60 + t[3] : t[1] * 60 + t[2] }
      /User time \(seconds\)/ { user = $NF }
      /System time \(seconds\)/ { sys = $NF }
      /Maximum resident set size/ { rss = $NF }
      END { printf "%.2f %.2f %.0f\n", user + sys, wall, rss / 1024 }' "$log" >>"$rows"
  done
  sort -n "$rows" | head -1 | awk -v label="$label" '{ printf "| %s | %.2f | %.2f | %.0f |\n", label, $2, $1, $3 }'
}

echo "compiler: $($cxx --version | head -1); flags: -c -std=c++20 -O2" >&2
echo "| TU | wall s | CPU s | peak MiB |"
echo "|---|---:|---:|---:|"
if [[ "examples/quickstart.cpp" =~ $filter ]]; then
  measure "examples/quickstart.cpp (README quickstart)" "$root/examples/quickstart.cpp"
fi
while IFS= read -r header; do
  rel=${header#"$root/include/"}
  [[ "$rel" =~ $filter ]] || continue
  printf '#include <%s>\n' "$rel" >"$work/tu.cpp"
  measure "\`<$rel>\`" "$work/tu.cpp"
done < <(find "$root/include/moa" -name '*.hpp' -not -path '*/detail/*' | LC_ALL=C sort)
