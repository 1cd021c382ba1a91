#!/usr/bin/env bash
# Adds a network attachment to a running pod's `networks` annotation; podagent on the pod's
# node then hot-plugs the interface net<md5(network)[:12]> into the pod.
#
#   add-network-annotation.sh <pod> <network> [namespace] [ifMac]
#
# The annotation is read, changed with jq and written back with `kubectl annotate --overwrite
# --resource-version`, so a concurrent change to the pod makes this fail instead of being
# silently overwritten. Other entries and their fields are kept as they are. Adding a network
# that is already listed changes nothing (or only its ifMac, when a different one is given).
# Nothing is written when the pod is missing or its annotation is malformed.
#
# Environment: KUBECTL (default kubectl), PODAGENT_ANNOTATION_KEY (default networks), and
# whatever kubectl reads (KUBECONFIG, ...).
set -euo pipefail

me=$(basename "$0")
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/network-annotation-lib.sh
. "$here/network-annotation-lib.sh"

if [ $# -lt 2 ] || [ $# -gt 4 ]; then
    echo "usage: $me <pod> <network> [namespace] [ifMac]" >&2
    exit 64
fi
pod=$1
network=$2
namespace=${3:-}
mac=${4:-}

check_network_name "$network"
if [ -n "$mac" ]; then
    mac=$(check_mac "$mac")
fi

read_networks "$pod" "$namespace"

updated=$(jq -c --arg name "$network" --arg mac "$mac" '
    if any(.[]; .name == $name) then
        map(if .name == $name and $mac != "" then .ifMac = $mac else . end)
    else
        . + [{name: $name} + (if $mac != "" then {ifMac: $mac} else {} end)]
    end' <<<"$current")

if [ "$updated" = "$current" ]; then
    echo "$me: pod $target already has network $network in its $key annotation; nothing to do"
    exit 0
fi
write_networks "$updated"
echo "$me: pod $target: $key=$updated"
