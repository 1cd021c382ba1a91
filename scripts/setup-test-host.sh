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
