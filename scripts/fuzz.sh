#!/usr/bin/env bash
# Runs the fuzz targets of src/fuzzing.rs for SECONDS each: with cargo-fuzz
# (libFuzzer, AddressSanitizer) when the nightly toolchain and cargo-fuzz
# are installed, else with the stable mutation loop of tests/fuzz.rs.
# CI runs `scripts/fuzz.sh 20` (from scripts/test.sh); run longer by hand.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (default 60 s; all targets:
#                                              frame handshake session control refs rpc channel dict)
#   LIBCLUSTER_FUZZ_DRIVER=stable|cargo-fuzz  force a driver
#   LIBCLUSTER_FUZZ_JOBS=N                    cargo-fuzz: N processes per target
#
# cargo-fuzz keeps what it finds in fuzz/corpus/<target> (and reads the
# committed seeds in fuzz/seeds/<target>); a crash is saved under
# fuzz/artifacts/<target>/. Replay one with
#   (cd fuzz && cargo +nightly fuzz run <target> artifacts/<target>/<file>)
# and commit it to fuzz/seeds/<target>/ once fixed: both drivers replay the
# seeds. The stable loop prints and saves a failing input likewise.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
if [ $# -gt 0 ]; then targets=("$@"); else targets=(frame handshake session control refs rpc channel dict); fi

driver=${LIBCLUSTER_FUZZ_DRIVER:-}
if [ -z "$driver" ]; then
    if rustup toolchain list 2>/dev/null | grep -q '^nightly' && cargo fuzz --version >/dev/null 2>&1; then
        driver=cargo-fuzz
    else
        driver=stable
    fi
fi

# Longest input and largest single allocation libFuzzer allows per target
# (the frame target grows megabyte payloads from its filler bytes).
max_len() { case $1 in frame|control) echo 8192 ;; handshake|session) echo 1024 ;; refs) echo 64 ;; *) echo 512 ;; esac; }
malloc_mb() { case $1 in frame) echo 64 ;; *) echo 16 ;; esac; }

case $driver in
cargo-fuzz)
    echo "fuzz: cargo-fuzz (nightly), ${secs} s per target: ${targets[*]}"
    tdir=()
    if [ -n "${CARGO_TARGET_DIR:-}" ]; then tdir=(--target-dir "$CARGO_TARGET_DIR/cargo-fuzz"); fi
    fork=()
    if [ "${LIBCLUSTER_FUZZ_JOBS:-1}" -gt 1 ]; then fork=(-fork="$LIBCLUSTER_FUZZ_JOBS"); fi
    cd fuzz
    cargo +nightly fuzz build "${tdir[@]}"
    failed=()
    for t in "${targets[@]}"; do
        mkdir -p "corpus/$t"
        echo "==== fuzz $t (${secs} s)"
        if ! cargo +nightly fuzz run "${tdir[@]}" "$t" "corpus/$t" "seeds/$t" -- \
            -max_total_time="$secs" -max_len="$(max_len "$t")" -malloc_limit_mb="$(malloc_mb "$t")" \
            -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 "${fork[@]}"; then
            failed+=("$t")
        fi
    done
    if [ ${#failed[@]} -gt 0 ]; then
        echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
        exit 1
    fi
    ;;
stable)
    echo "fuzz: stable mutation loop (tests/fuzz.rs), ${secs} s per target: ${targets[*]}"
    tests=()
    for t in "${targets[@]}"; do tests+=("fuzz_$t"); done
    # Optimised (some 25 times the inputs of a debug build) but with debug
    # assertions and overflow checks, in a target directory of its own so
    # the flags do not rebuild anyone's release build.
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/fuzz-stable" \
        CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true \
        LIBCLUSTER_FUZZ_SECS=$secs cargo test --release --test fuzz -- --exact --nocapture "${tests[@]}"
    ;;
*)
    echo "fuzz: unknown driver $driver (stable or cargo-fuzz)" >&2
    exit 2
    ;;
esac
echo "fuzz: no failures"
