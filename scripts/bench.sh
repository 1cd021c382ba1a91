#!/usr/bin/env bash
# Benchmarks the release podagent binary against a floor measured in the same run: hot-plug
# latency, burst convergence, restart cost, footprint and failure cost (see BENCHMARKS.md), on
# the tests' real control plane (etcd, kube-apiserver, kube-controller-manager, built once per
# machine by setup-test-host.sh and started by the harness for the run) and the tests' node
# fixture. Needs root (network namespaces, a private containerd, the control plane's daemons).
# Writes target/bench/results.json and target/bench/results.md.
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
    echo "scripts/bench.sh: run as root (the benchmark creates network namespaces and starts containerd and a control plane)" >&2
    exit 1
fi

scripts/setup-test-host.sh
out="$PWD/target/bench"
mkdir -p "$out"
# `cargo bench` builds the harness, and a podagent next to it, with the bench profile (release
# settings). The full run measures the podagent that ships instead: the static packaging build
# (fat LTO, one codegen unit) of scripts/build-lib.sh, the one the RPM and the image hold. The
# smoke run keeps the bench-profile binary: it only proves the harness works, and a fat-LTO
# build takes minutes.
agent=()
if [ "${#mode[@]}" -eq 0 ]; then
    # shellcheck source=scripts/build-lib.sh
    . scripts/build-lib.sh
    build_podagent packaging
    binary=$(podagent_binary packaging)
    case $binary in
    /*) ;;
    *) binary=$PWD/$binary ;;
    esac
    agent=(--podagent "$binary")
fi
cargo bench --locked --bench hotplug -- "${mode[@]}" --out "$out" "${agent[@]}"
