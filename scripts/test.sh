#!/usr/bin/env bash
# The one test command: prepares the test host, then checks format, lints and runs every test
# (unit tests and integration tests against real containerd, dockerd, CNI plugins, netns and
# journald, and a short libFuzzer run of every fuzz target), then runs the benchmark's smoke
# version to prove it still works (its numbers are not judged here; see BENCHMARKS.md). Needs
# root. Tests whose prerequisites are missing fail naming them; none is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: run as root (the tests create network namespaces and start runtimes)" >&2
    exit 1
fi

scripts/setup-test-host.sh

# The lint tools come with rustup's default profile; a toolchain without them still runs every
# test, and says plainly what was not checked.
unchecked=()
if cargo fmt --version >/dev/null 2>&1; then
    echo "== cargo fmt --check"
    cargo fmt --all -- --check
else
    echo "== NOT CHECKED: cargo fmt is not installed (rustup component add rustfmt); formatting is not checked"
    unchecked+=("formatting (cargo fmt)")
fi
if cargo clippy --version >/dev/null 2>&1; then
    echo "== cargo clippy -D warnings"
    cargo clippy --workspace --all-targets --locked -- -D warnings
else
    echo "== NOT CHECKED: cargo clippy is not installed (rustup component add clippy); lints are not checked"
    unchecked+=("lints (cargo clippy)")
fi
echo "== cargo test"
cargo test --workspace --all-targets --locked
echo "== benchmark smoke (scripts/bench.sh --quick)"
scripts/bench.sh --quick
if [ "${#unchecked[@]}" -gt 0 ]; then
    echo "scripts/test.sh: every test passed, but NOT CHECKED on this machine: ${unchecked[*]}"
fi
