#!/usr/bin/env bash
# Runs the churn soak (tests/soak.rs) against the real podagent, kube-sim, a private containerd
# and the Debian CNI plugins for a bounded time. Needs root, like the rest of the suite.
#
#   scripts/soak.sh                 10 minutes
#   scripts/soak.sh --minutes 30    the documented long run
#   scripts/soak.sh --seed 1234     replay the action sequence of a failed run
#
# The seed is printed at the start; every action is printed as it happens, and a failure prints
# the violated invariants and the tail of podagent's log. The suite runs a short version of the
# same test (a few rounds) when PODAGENT_SOAK_MINUTES is not set.
#
# Last result (2026-11-28, 4 pods, 4 network names, 3 actions per round): the 30-minute run
# has not passed yet. Runs stop after 2 to 93 rounds (up to ~280 actions: 30 pod and 24
# sandbox re-creations, 25 containerd restarts, 73 API faults, 13 SIGTERM and 8 SIGKILL
# restarts, 36 conf changes) on one invariant: SIGKILL of podagent between the chain's first
# plugin (bridge, which creates the link) and `tuning` (which sets the MAC) leaves a link
# without the requested MAC, and the restarted podagent adopts it because the plan treats a
# record still `Adding` whose link exists as a finished ADD. Replay: --seed 1795883905873490409
# (round 93), 1795883744799869685 (round 3).
set -euo pipefail

minutes=10
seed=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --minutes)
            [[ $# -ge 2 && "$2" =~ ^[0-9]+([.][0-9]+)?$ ]] || {
                echo "soak.sh: --minutes needs a number" >&2
                exit 64
            }
            minutes="$2"
            shift 2
            ;;
        --seed)
            [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || {
                echo "soak.sh: --seed needs a number" >&2
                exit 64
            }
            seed="$2"
            shift 2
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "soak.sh: unknown argument $1 (see --help)" >&2
            exit 64
            ;;
    esac
done

cd "$(dirname "$0")/.."
export PODAGENT_SOAK_MINUTES="$minutes"
if [[ -n "$seed" ]]; then
    export PODAGENT_SOAK_SEED="$seed"
fi
exec cargo test -p podagent --test soak -- --nocapture
