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
# Last result (2026-11-28, 4 pods, 4 network names, 3 actions per round, on a 2-core machine
# shared with a full test-suite run): 29 minutes, 1,193 rounds, about 3,600 actions (pod and
# sandbox re-creations, containerd restarts, API faults, SIGTERM and SIGKILL restarts, conf
# changes) with zero invariant violations; the run then stopped on the harness itself, which
# waited for a podagent log line that went to the journal once the concurrent suite started a
# journald. The harness now waits for podagent's SIGTERM handler instead; a full 30-minute pass
# on main is still to be recorded here. Earlier runs found two real bugs, both fixed: a SIGKILL
# mid-chain left a half-made attachment that was adopted (seeds 1795883905873490409,
# 1795883744799869685), and hot-plugged host-local leases were never released at sandbox
# teardown because the soak's runtime has no kactus (the soak now plays its part).
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
