#!/usr/bin/env bash
# The benchmark command: libcluster's figures from Rust (round trip, 64 MiB,
# pipelined calls, addprocs, idle memory) and, when Julia is available,
# LibCluster against Distributed from Julia. Each figure is printed next to
# a baseline measured in the same run, with the ratio.
# Usage: scripts/bench.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==== libcluster (Rust driver) ===="
cargo run --release --quiet --example bench -- "$@"

JULIA=${JULIA:-$PWD/scripts/julia}
if command -v julia >/dev/null 2>&1 && [ -x "$JULIA" ]; then
    echo
    echo "==== LibCluster vs Distributed (Julia) ===="
    LIBCLUSTER_PATH=${LIBCLUSTER_PATH:-$PWD/target/release/libcluster.so} \
        "$JULIA" --startup-file=no --project=bindings/julia/LibCluster bindings/julia/LibCluster/bench/bench.jl
else
    echo "(julia not found: skipping the Julia comparison; scripts/install-deps.sh installs it)"
fi
