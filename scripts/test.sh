#!/usr/bin/env bash
# The whole test suite: Rust core and multi-process tests, C and C++ tests
# (plus an ASan/UBSan configuration), the Julia package under Julia
# 1.5.3, and the fuzz targets for 20 s each. Installs what a fresh machine
# lacks first. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==== %s ====\n' "$*"; }

step "dependencies"
./scripts/install-deps.sh

step "Rust: format (rustfmt.toml) and lints"
if cargo fmt --version >/dev/null 2>&1; then cargo fmt --check; else echo "rustfmt not installed: skipped"; fi
if cargo clippy --version >/dev/null 2>&1; then cargo clippy --all-targets --quiet -- -D warnings; else echo "clippy not installed: skipped"; fi

step "Rust: unit and multi-process integration tests"
cargo test --all-targets 2>&1

step "Rust: the tour example"
cargo run --release --quiet --example tour

step "C and C++ (ctest, plus ASan/UBSan)"
./scripts/test-c.sh

step "Julia package LibCluster"
./scripts/test-julia.sh

# 20 s a target keeps the whole suite near 10 minutes on 2 cores: with
# cargo-fuzz, its build takes some 3.5 minutes of the step's 6.
step "fuzz targets, 20 s each (cargo-fuzz on nightly, else the stable loop)"
./scripts/fuzz.sh 20

step "all suites passed"
