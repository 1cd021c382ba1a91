#!/usr/bin/env bash
# Removes a network attachment from a running pod's `networks` annotation; podagent on the
# pod's node then hot-unplugs the interface net<md5(network)[:12]> from the pod.
#
#   del-network-annotation.sh <pod> <network> [namespace]
#
# The annotation is read, changed with jq and written back with `kubectl annotate --overwrite
# --resource-version`, so a concurrent change to the pod makes this fail instead of being
# silently overwritten. Other entries are kept as they are. Removing a network that is not
# listed is an error (exit 1, usually a typo in the name) and writes nothing; so does a
# missing pod or a malformed annotation.
#
# Environment: KUBECTL (default kubectl), PODAGENT_ANNOTATION_KEY (default networks), and
# whatever kubectl reads (KUBECONFIG, ...).
set -euo pipefail

me=$(basename "$0")
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/network-annotation-lib.sh
. "$here/network-annotation-lib.sh"

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $me <pod> <network> [namespace]" >&2
    exit 64
fi
pod=$1
network=$2
namespace=${3:-}

read_networks "$pod" "$namespace"

if ! jq -e --arg name "$network" 'any(.[]; .name == $name)' <<<"$current" >/dev/null; then
    echo "$me: pod $target has no network $network in its $key annotation (it lists: $(jq -r 'map(.name) | join(", ") | if . == "" then "none" else . end' <<<"$current"))" >&2
    exit 1
fi
updated=$(jq -c --arg name "$network" 'map(select(.name != $name))' <<<"$current")
write_networks "$updated"
echo "$me: pod $target: $key=$updated"
