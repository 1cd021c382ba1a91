#!/usr/bin/env bash
# The seed README's example, end to end on this machine (Debian 12, as root), literally: the
# `data` network applied, hello-multi-net deployed with 2 replicas that a real kubelet runs,
# `data` hot-plugged into the first pod by the real podagent and seen with `kubectl exec … ip a`,
# removed again, the pods never restarted, then `data` added to the second pod.
#
# Usage: scripts/demo.sh [--mode direct|npwg|kactus] [--runtime containerd|crio]
#                        [--binary-dir DIR] [--wait SECONDS]
#   --mode MODE       podagent's network mode (default direct: podagent runs the `data`
#                     Network's own config; npwg: the `data` NetworkAttachmentDefinition's,
#                     asked for with the k8s.v1.cni.cncf.io/networks annotation as Multus users
#                     do; kactus: the node's primary config, a stand-in for kactus delegating
#                     to `data`).
#   --runtime NAME    the kubelet's container runtime (default containerd; crio: the CRI-O that
#                     scripts/setup-test-host.sh builds, the seed's own runtime).
#   --binary-dir DIR  use the podagent, podagent-demo and control-plane binaries in DIR
#                     instead of building them (the test suite passes its debug build);
#                     also DEMO_BINARY_DIR.
#   --wait SECONDS    how long each step may take before the demo fails (default 20).
#
# What runs: scripts/setup-test-host.sh installs the packages and local images the demo needs
# and builds, once per machine from pinned Go modules, the real Kubernetes control plane and
# kubelet (and CRI-O with --runtime crio; nothing else of the test suite's tools);
# `cargo build --release` builds podagent, the demo driver (testkit/src/bin/podagent-demo/) and
# the control-plane command. The driver starts that control plane on loopback (API server,
# scheduler, controller manager), one node run by a real kubelet with a containerd (or CRI-O) of
# its own, and podagent on that node's own credentials, then runs the example's commands
# (kubectl, the operator scripts) step by step with the admin kubeconfig. Everything it starts
# or creates is removed when it ends, also on Ctrl-C.
set -euo pipefail

usage() {
    sed -n '7,19p' "$0" | sed 's/^# \{0,1\}//'
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
binary_dir=${DEMO_BINARY_DIR:-}
wait_seconds=20
mode=direct
runtime=containerd
while [ "$#" -gt 0 ]; do
    case $1 in
        --mode)
            [ "$#" -ge 2 ] || { echo "demo.sh: --mode needs direct, npwg or kactus" >&2; exit 64; }
            case $2 in
                direct | npwg | kactus) mode=$2 ;;
                *) echo "demo.sh: --mode is direct, npwg or kactus, not $2" >&2; exit 64 ;;
            esac
            shift 2
            ;;
        --runtime)
            [ "$#" -ge 2 ] || { echo "demo.sh: --runtime needs containerd or crio" >&2; exit 64; }
            case $2 in
                containerd | crio) runtime=$2 ;;
                *) echo "demo.sh: --runtime is containerd or crio, not $2" >&2; exit 64 ;;
            esac
            shift 2
            ;;
        --binary-dir)
            [ "$#" -ge 2 ] || { echo "demo.sh: --binary-dir needs a directory" >&2; exit 64; }
            binary_dir=$2
            shift 2
            ;;
        --wait)
            [ "$#" -ge 2 ] || { echo "demo.sh: --wait needs a number of seconds" >&2; exit 64; }
            wait_seconds=$2
            shift 2
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "demo.sh: unknown argument $1" >&2
            usage >&2
            exit 64
            ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: run as root: it starts a kubelet and a container runtime and creates network namespaces" >&2
    exit 1
fi

# Only what the demo uses: the control plane and the kubelet, CRI-O when it runs the pods.
parts=control-plane
if [ "$runtime" = crio ]; then
    parts+=,crio
fi
"$repo/scripts/setup-test-host.sh" --only "$parts"

if [ -z "$binary_dir" ]; then
    cargo=$(command -v cargo || true)
    if [ -z "$cargo" ] && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
        cargo=${HOME:-/root}/.cargo/bin/cargo
    fi
    if [ -z "$cargo" ]; then
        echo "demo.sh: cargo not found: install Rust (rust-version in Cargo.toml), or pass --binary-dir" >&2
        exit 1
    fi
    echo "demo.sh: building the release binaries (cargo build --release -p podagent -p testkit --bins)"
    (cd "$repo" && "$cargo" build --release -p podagent -p testkit --bins)
    # cargo ran in the checkout, so a relative CARGO_TARGET_DIR is relative to it.
    target_dir=${CARGO_TARGET_DIR:-target}
    case $target_dir in
        /*) ;;
        *) target_dir=$repo/$target_dir ;;
    esac
    binary_dir=$target_dir/release
fi
for binary in podagent podagent-demo control-plane; do
    if [ ! -x "$binary_dir/$binary" ]; then
        echo "demo.sh: $binary_dir/$binary is missing (build with: cargo build -p podagent -p testkit --bins)" >&2
        exit 1
    fi
done

# kubectl's discovery cache for everything the demo runs (the driver's commands and
# scripts/create-kubeconfig.sh, which makes podagent's credentials), instead of one more
# ~/.kube/cache/discovery/127.0.0.1_<port> per run; removed at the end.
kube_cache=$(mktemp -d "${TMPDIR:-/tmp}/podagent-demo-kubecache.XXXXXX")
export KUBECACHEDIR=$kube_cache

# The driver runs in the background, in a process group of its own (it moves itself), so that
# a signal to this script (Ctrl-C on the terminal, or a SIGTERM sent to it alone) is passed on
# to the driver alone: it deletes the pods, stops podagent, the kubelet and its runtime, and
# removes what it made before this script exits; the control plane it started stops (and
# removes its dir) as soon as it is gone.
driver_pid=
# shellcheck disable=SC2317 # called from the traps below
stop_driver() {
    if [ -n "$driver_pid" ] && kill -0 "$driver_pid" 2>/dev/null; then
        kill -TERM "$driver_pid" 2>/dev/null || true
        wait "$driver_pid" || true
    fi
    driver_pid=
}
# shellcheck disable=SC2317 # called from the traps below
on_signal() {
    echo "demo.sh: $1: stopping the demo and cleaning up" >&2
    stop_driver
    exit "$2"
}
# shellcheck disable=SC2317 # called from the trap below
finish() {
    stop_driver
    rm -rf -- "$kube_cache"
}
trap finish EXIT
trap 'on_signal SIGINT 130' INT
trap 'on_signal SIGTERM 143' TERM

"$binary_dir/podagent-demo" --podagent "$binary_dir/podagent" --repo "$repo" --wait "$wait_seconds" \
    --mode "$mode" --runtime "$runtime" &
driver_pid=$!
status=0
wait "$driver_pid" || status=$?
driver_pid=
exit "$status"
