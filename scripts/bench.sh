#!/usr/bin/env bash
# Benchmarks the release podagent binary against a floor measured in the same run: hot-plug
# latency, burst convergence, restart cost, footprint and failure cost (see BENCHMARKS.md).
# Needs root (network namespaces, a private containerd). Writes target/bench/results.json and
# target/bench/results.md.
#
#   scripts/bench.sh           the full benchmark (200 latency trials, 110 pods × 4 networks,
#                              1,000 pods for the footprint, 60 s of failing plugin): ~5 min
#   scripts/bench.sh --quick   a smoke run with a handful of trials per scenario (< 2 min
#                              after the build), to prove the harness still works
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

mode=()
for arg in "$@"; do
    case "$arg" in
    --quick) mode=(--quick) ;;
    *)
        echo "usage: scripts/bench.sh [--quick]" >&2
        exit 64
        ;;
    esac
done
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/bench.sh: run as root (the benchmark creates network namespaces and starts containerd)" >&2
    exit 1
fi

scripts/setup-test-host.sh
out="$PWD/target/bench"
mkdir -p "$out"
# `cargo bench` builds podagent and the harness with the bench profile (release settings); the
# harness runs the podagent binary cargo built next to it.
cargo bench --locked --bench hotplug -- "${mode[@]}" --out "$out"
