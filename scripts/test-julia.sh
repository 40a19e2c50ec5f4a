#!/usr/bin/env bash
# Runs the Julia package's tests (bindings/julia/LibCluster) against the
# release build of libcluster. Offline: the package depends on standard
# libraries only, and the tests run runtests.jl directly (no Pkg operation).
# Exits non-zero if a test fails.
#
# Environment: JULIA (default: scripts/julia, the libunwind-fixing wrapper
# set up by scripts/install-deps.sh), LIBCLUSTER_PATH (default: the build
# below), LIBCLUSTER_TEST_TIMEOUT (seconds, default 480).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
JULIA=${JULIA:-$REPO/scripts/julia}

if [ -z "${LIBCLUSTER_PATH:-}" ]; then
    cargo build --release --quiet
    # The package looks in the repository's target/ unless told.
    export LIBCLUSTER_PATH="${CARGO_TARGET_DIR:-$REPO/target}/release/libcluster.so"
fi

export JULIA_PKG_OFFLINE=true
exec "$JULIA" --startup-file=no --project="$REPO/bindings/julia/LibCluster" \
    "$REPO/bindings/julia/LibCluster/test/runtests.jl"
