#!/usr/bin/env bash
# Runs the churn soak (tests/soak.rs) against the real podagent, the real control plane (through
# the fault proxy), a private containerd and the Debian CNI plugins for a bounded time, then its
# kubelet phase on a node a real kubelet runs. Needs root, like the rest of the suite.
#
#   scripts/soak.sh                 10 minutes per network mode (kactus, direct, then npwg) and
#                                   for the kubelet phase
#   scripts/soak.sh --minutes 30    the documented long run (30 minutes per mode and phase)
#   scripts/soak.sh --seed 1234     replay the action sequence of a failed run (every mode)
#
# Kubelet phase (2026-12-08, main at 10188f3 plus the phase, 3 minutes, the phase alone): 40
# rounds / 80 actions (pause processes killed and sandboxes re-created by the kubelet,
# containers killed and restarted, Deployment pods deleted and replaced, rollouts, kubelet and
# podagent restarts, standalone pods' annotations edited), zero invariant violations, every
# lease of a gone sandbox released by podagent (seed 1796695973642160817). Its first run found
# a race in the test, not in podagent: a process killed twice in one round was gone the second
# time; a kill now says "gone already".
#
# The seed is printed at the start; every action is printed as it happens, and a failure prints
# the violated invariants and the tail of podagent's log. The suite runs a short version of the
# same test (a few rounds) when PODAGENT_SOAK_MINUTES is not set.
#
# npwg mode (2026-12-02, main at 8cae16b plus this note, 3 minutes per mode): kactus 103 rounds,
# direct 110, npwg 86 rounds / 258 actions (75 annotation edits in both forms, with networks
# swapped behind eth<n> names, 23 NetworkAttachmentDefinition edits, 11 delete-and-recreate,
# 27 pod and 28 sandbox re-creations, 21 containerd restarts, 26 API faults, 30 podagent
# restarts, 17 CNI conf changes), zero invariant violations, network-status checked after every
# quiet period (seeds 1796174340891597109, 1796174530505794541, 1796174717392619175). The
# first short npwg run found a real bug: an attachment removed just before a SIGKILL kept its
# network-status entry for good; the record now keeps what the last status write showed.
#
# Direct mode (2026-12-01, main at 941eecb, 3 minutes per mode): kactus 97 rounds, direct 103
# rounds / 309 actions (89 annotation edits, 31 Network edits, 38 Network delete-and-recreate,
# 19 pod and 31 sandbox re-creations, 26 containerd restarts, 25 API faults, 25 podagent
# restarts), zero invariant violations, every lease of a gone sandbox released by podagent
# (seeds 1796139724641048665, 1796139913677599543). A 5-minute run before stopped at the start
# of its direct half: a namespace's default service account took longer than the fixture's
# 15 s right after the kactus half's API server restarts; the fixture now waits 60 s.
#
# Last results (2026-11-28, 4 pods, 4 network names, 3 actions per round, 2-core machine):
# - main at f7c074c (the sandbox-answer reuse in), sharing the machine with a full CI run for
#   most of the time: 30 minutes, 1,285 rounds, 3,855 actions (1,572 annotation edits, 384 pod
#   and 354 sandbox re-creations, 367 containerd restarts, 394 API faults, 208 SIGTERM and 218
#   SIGKILL restarts of podagent, 358 CNI conf changes), zero invariant violations (seed
#   1795894339217383325);
# - main at 05952fc, machine otherwise idle: 30 minutes, 1,294 rounds, 3,882 actions, zero
#   invariant violations (seed 1795890482460753175).
# Earlier runs found two real bugs, both fixed: a SIGKILL mid-chain left a half-made attachment
# that was adopted (seeds 1795883905873490409, 1795883744799869685), and hot-plugged host-local
# leases were never released at sandbox teardown because the soak's runtime has no kactus (the
# soak now plays its part). A harness problem (waiting for a log line that went to the journal
# once a concurrent test started journald) stopped one 29-minute run; the harness now waits for
# podagent's SIGTERM handler instead.
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
