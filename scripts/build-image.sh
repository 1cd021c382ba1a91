#!/usr/bin/env bash
# Builds podagent's container image, the one the DaemonSet manifests run: one layer holding the
# packaged podagent binary at /opt/kaloom/bin/podagent (the static one the RPM ships: no shared
# library in the image), the CA bundle for an API server whose certificate a public CA signed,
# and /etc/passwd, /etc/group, /etc/nsswitch.conf and /tmp. No shell and no
# package manager: podagent needs neither, and the CNI plugins it runs come from the host's
# plugin directories, which the manifests mount. The image is written in docker-save format,
# which `ctr -n k8s.io images import`, `docker load` and `podman load` accept.
#
#   scripts/build-image.sh [--profile PROFILE] [--no-build] [--output FILE]
#
#   --profile P   cargo profile of the binary to pack (default: packaging, as the RPM). `dev`
#                 packs the debug build; the tests use it, releases must not.
#   --no-build    pack the binary already built for that profile
#   --output F    where to write the image tar (default: <target dir>/image/podagent-<version>.tar)
#
# Reproducible: the files carry the commit's time, owner root, and a fixed order, and the image
# says it was created at that time, so the same binary gives the same image id. (cargo builds
# the same binary for the same commit, toolchain and checkout path.) Labels name the version
# and the commit (`-dirty` when the tree has changes).
#
# Honours CARGO_TARGET_DIR. Prints the image's tag and id, then the tar's path on the last line.
# To run it from a registry: `docker load -i <tar>` (or `podman load`), then tag and push it,
# and set the manifests' `image:` to that name.
set -euo pipefail

me=$(basename "$0")
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

profile=packaging
build=1
output=
while [ $# -gt 0 ]; do
    case $1 in
        --profile) profile=${2:?--profile needs a value}; shift 2 ;;
        --no-build) build=0; shift ;;
        --output) output=${2:?--output needs a value}; shift 2 ;;
        -h | --help) sed -n '2,25s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "$me: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
done

for tool in jq ldd tar sha256sum git; do
    command -v "$tool" >/dev/null || {
        echo "$me: $tool is missing; run scripts/setup-test-host.sh or install it" >&2
        exit 69
    }
done
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca_bundle" ] || {
    echo "$me: $ca_bundle is missing; install the Debian package ca-certificates" >&2
    exit 69
}

# shellcheck source=scripts/build-lib.sh
. scripts/build-lib.sh
if [ "$build" = 1 ]; then
    build_podagent "$profile"
fi
target_dir=${CARGO_TARGET_DIR:-target}
binary=$(podagent_binary "$profile")
[ -x "$binary" ] || {
    echo "$me: no podagent binary at $binary; drop --no-build to build it" >&2
    exit 66
}
# The image holds no library: a binary that links one would not start in it. ldd's output is
# taken whole before it is searched: `ldd | grep -q` under pipefail can lose ldd to SIGPIPE
# when grep stops at the first match, and would pass a dynamic binary.
linked=$(ldd "$binary" 2>/dev/null || true)
if grep -q '=>' <<<"$linked"; then
    echo "$me: $binary links shared libraries (ldd $binary); the image needs the static build of scripts/build-lib.sh" >&2
    exit 65
fi

version=$(cargo metadata --no-deps --format-version 1 --offline \
    | jq -r '.packages[] | select(.name == "podagent") | .version')
commit=$(git rev-parse HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    commit="$commit-dirty"
fi
epoch=$(git log -1 --format=%ct)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
tag=kaloom/podagent:$version
output=${output:-$target_dir/image/podagent-$version.tar}
mkdir -p "$(dirname "$output")"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
rootfs=$scratch/rootfs
mkdir -p "$rootfs/opt/kaloom/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp"
install -m 0755 "$binary" "$rootfs/opt/kaloom/bin/podagent"
install -m 0644 "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' \
    >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
# Names resolve by the /etc/hosts and /etc/resolv.conf the runtime provides, through the
# services a static glibc has built in; no NSS module to load.
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf"
chmod 1777 "$rootfs/tmp"
find "$rootfs" -type d ! -path "$rootfs/tmp" -exec chmod 0755 {} +
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    -C "$rootfs" -cf "$scratch/layer.tar" .

container_config=$(jq -n -c \
    --arg version "$version" --arg commit "$commit" --arg created "$created" \
    '{Entrypoint: ["/opt/kaloom/bin/podagent"], Cmd: ["run"],
      Env: ["PATH=/opt/kaloom/bin"], WorkingDir: "/",
      Labels: {"org.opencontainers.image.title": "podagent",
               "org.opencontainers.image.description": "hot-plugs network interfaces into running pods",
               "org.opencontainers.image.version": $version,
               "org.opencontainers.image.revision": $commit,
               "org.opencontainers.image.created": $created,
               "org.opencontainers.image.licenses": "Apache-2.0"}}')
# shellcheck source=scripts/image-lib.sh
. scripts/image-lib.sh
id=$(write_image "$tag" "$container_config" "$created" "$scratch/layer.tar" "$scratch/image" "$output")
echo "$me: image $tag, id $id"
echo "$output"
