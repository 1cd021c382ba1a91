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
    iproute2                    # ip netns / ip link
    systemd                     # systemd-journald, journalctl, systemd-analyze
    protobuf-compiler           # protoc, for the CRI protobuf bindings
    shellcheck                  # lint for the operator scripts
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

# build_image TAG ENTRYPOINT_JSON OUTPUT_TAR LAYER_TAR WORK_DIR
build_image() {
    local tag=$1 entrypoint=$2 output=$3 layer=$4 work=$5
    local layer_sum config config_sum
    layer_sum=$(sha256sum "$layer" | cut -d' ' -f1)
    mkdir -p "$work/$layer_sum"
    cp "$layer" "$work/$layer_sum/layer.tar"
    config=$(jq -n -c \
        --arg arch "$(dpkg --print-architecture)" \
        --argjson entrypoint "$entrypoint" \
        --arg diff "sha256:$layer_sum" \
        '{architecture: $arch, os: "linux", created: "1970-01-01T00:00:00Z",
          config: {Entrypoint: $entrypoint, Env: ["PATH=/bin"], WorkingDir: "/"},
          rootfs: {type: "layers", diff_ids: [$diff]},
          history: [{created: "1970-01-01T00:00:00Z", created_by: "setup-test-host.sh"}]}')
    config_sum=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
    printf '%s' "$config" >"$work/$config_sum.json"
    jq -n -c --arg config "$config_sum.json" --arg tag "$tag" --arg layer "$layer_sum/layer.tar" \
        '[{Config: $config, RepoTags: [$tag], Layers: [$layer]}]' >"$work/manifest.json"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
        -C "$work" -cf "$output.tmp" manifest.json "$config_sum.json" "$layer_sum"
    mv "$output.tmp" "$output"
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
