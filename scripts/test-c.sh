#!/usr/bin/env bash
# The C and C++ test suite (tests/c, the C++ wrapper, the examples and the
# install/packaging test), in two configurations:
#
#   1. release: `cargo build --release`, tests built with -O2     (build/c-release)
#   2. sanitizers: `cargo build` (debug library), tests built with
#      -fsanitize=address,undefined                               (build/c-asan)
#
# Each: configure with CMake, build, run ctest with --output-on-failure and a
# per-test timeout. Exits non-zero if anything fails.
#
# Usage: scripts/test-c.sh [--release-only | --sanitize-only] [--strict]
#   --strict   known-issue checks (tests/KNOWN_ISSUES.md) fail instead of logging
# Environment: CTEST_PARALLEL_LEVEL (default: 4), CLUSTER_TEST_TIMEOUT
# (per-test seconds, default 120), CMAKE_GENERATOR (default: Ninja if present),
# CARGO_TARGET_DIR (where cargo builds the library; default: target/).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

run_release=1
run_sanitize=1
while [ $# -gt 0 ]; do
    case "$1" in
        --release-only) run_sanitize=0 ;;
        --sanitize-only) run_release=0 ;;
        --strict) export CLUSTER_STRICT=1 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "test-c.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

jobs=${CTEST_PARALLEL_LEVEL:-4}
target_dir=${CARGO_TARGET_DIR:-$root/target}
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
timeout=${CLUSTER_TEST_TIMEOUT:-120}
generator=()
if [ -z "${CMAKE_GENERATOR:-}" ] && command -v ninja >/dev/null 2>&1; then
    generator=(-G Ninja)
fi
command -v cmake >/dev/null 2>&1 || { echo "test-c.sh: cmake not found (scripts/install-deps.sh installs it)" >&2; exit 1; }

step() { printf '\n==== %s ====\n' "$*"; }

# run_config <name> <build dir> <library dir> <cmake args...>
run_config() {
    local name=$1 dir=$2 lib=$3
    shift 3
    step "C/C++ ($name): configure"
    # A build dir configured by another generator cannot be reused.
    if [ -f "$dir/CMakeCache.txt" ] && [ ${#generator[@]} -gt 0 ] && ! grep -q "CMAKE_GENERATOR:INTERNAL=Ninja" "$dir/CMakeCache.txt"; then
        rm -rf "$dir"
    fi
    cmake -S tests/c -B "$dir" "${generator[@]}" -DLIBCLUSTER_DIR="$lib" -DCLUSTER_TEST_TIMEOUT="$timeout" "$@"
    step "C/C++ ($name): build"
    cmake --build "$dir" --parallel "$(nproc 2>/dev/null || echo 2)"
    step "C/C++ ($name): ctest"
    local start=$SECONDS
    if ! (cd "$dir" && ctest --output-on-failure --timeout "$timeout" --parallel "$jobs" "${ctest_args[@]}"); then
        report_failures "$dir"
        return 1
    fi
    echo "C/C++ ($name): passed in $((SECONDS - start)) s"
}

# Prints the output of each failed test again, last: with tests run in
# parallel, a failure's output sits mid-log, where a truncated CI log
# loses it.
report_failures() {
    local dir=$1 failed=$1/Testing/Temporary/LastTestsFailed.log
    [ -f "$failed" ] || return 0
    step "C/C++: output of the failed tests"
    cut -d: -f2- "$failed" | while read -r t; do
        awk -v t="$t" '!on && / Testing: / && substr($0, index($0, " Testing: ") + 10) == t {on=1}
                       on {print} on && /^"[^"]*" end time:/ {exit}' \
            "$dir/Testing/Temporary/LastTest.log" | tail -n 80
    done
}

if [ "$run_release" -eq 1 ]; then
    step "library: cargo build --release"
    cargo build --release --lib
    ctest_args=()
    run_config release "$root/build/c-release" "$target_dir/release" -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi

if [ "$run_sanitize" -eq 1 ]; then
    step "library: cargo build (debug, for the sanitizer run)"
    cargo build --lib
    # The compile-failure and packaging tests do not depend on the sanitizers:
    # they ran in the release configuration.
    ctest_args=(-LE build)
    if [ "$run_release" -eq 0 ]; then ctest_args=(); fi
    run_config "ASan+UBSan" "$root/build/c-asan" "$target_dir/debug" -DCMAKE_BUILD_TYPE=Debug -DCLUSTER_SANITIZE=ON
fi

step "C/C++ tests passed"
