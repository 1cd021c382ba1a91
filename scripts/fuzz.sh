#!/usr/bin/env bash
# Runs podagent's fuzz targets (fuzz/fuzz_targets) with cargo-fuzz and libFuzzer, each for a
# bounded time, and fails if any of them finds a crash.
#
#   scripts/fuzz.sh                        every target, 30 s each
#   scripts/fuzz.sh --seconds 600          longer runs
#   scripts/fuzz.sh --seconds 60 state_file annotation   only these targets
#   scripts/fuzz.sh --dev --seconds 8      unoptimized build: builds in less than half the
#                                          time (about 6.5 instead of 16 minutes on 2 cores)
#                                          but runs fewer inputs a second; for smoke runs
#
# Targets: annotation, npwg_annotation, cni_result, verbose_info, state_file. The checked-in
# seeds in fuzz/corpus/<target>/ are read but never written: what a run discovers goes to
# fuzz/target/corpus/<target>/ (kept between runs, not committed). The suite runs every target
# for a few seconds through this script (tests/fuzz.rs). A crash leaves its input in
# fuzz/artifacts/<target>/; replay it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
# and, once fixed, copy the input into fuzz/corpus/<target>/ so the suite (tests/hostile.rs)
# replays it from then on.
#
# cargo-fuzz needs nightly-only rustc flags (-Z sanitizer); only a stable toolchain is assumed,
# so the run sets RUSTC_BOOTSTRAP=1, which lets stable rustc accept them. cargo-fuzz itself is
# installed with `cargo install --locked` when missing.
set -euo pipefail

seconds=30
profile=()
targets=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dev)
            profile=(--dev)
            shift
            ;;
        --seconds)
            [[ $# -ge 2 && "$2" =~ ^[0-9]+$ && "$2" -gt 0 ]] || {
                echo "fuzz.sh: --seconds needs a positive number" >&2
                exit 64
            }
            seconds="$2"
            shift 2
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "fuzz.sh: unknown option $1 (see --help)" >&2
            exit 64
            ;;
        *)
            targets+=("$1")
            shift
            ;;
    esac
done

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo/fuzz"
if [[ ${#targets[@]} -eq 0 ]]; then
    for file in fuzz_targets/*.rs; do
        name="${file##*/}"
        targets+=("${name%.rs}")
    done
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz --version 0.13.2
fi

export RUSTC_BOOTSTRAP=1
# The fuzz crate has its own lock file and target dir; a target dir chosen for the main
# workspace would only mix instrumented and plain builds.
unset CARGO_TARGET_DIR

status=0
for target in "${targets[@]}"; do
    if [[ ! -f "fuzz_targets/$target.rs" ]]; then
        echo "fuzz.sh: no fuzz target $target" >&2
        exit 64
    fi
    work="target/corpus/$target"
    mkdir -p "$work" "artifacts/$target"
    echo "== $target: ${seconds}s" >&2
    # Seeds are a second, read-only corpus dir; new inputs land in the first one.
    if ! cargo fuzz run "${profile[@]}" "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1; then
        echo "fuzz.sh: $target FAILED; inputs in fuzz/artifacts/$target/" >&2
        status=1
    fi
done
exit "$status"
