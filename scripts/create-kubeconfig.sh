#!/usr/bin/env bash
# Creates the kubeconfig podagent uses when it runs as a systemd service on the nodes.
#
#   create-kubeconfig.sh [out-dir] [file] [namespace]
#   (defaults: /tmp/kubeconfig podagent-kubeconfig.yaml kube-system)
#
# Run it once, with cluster-admin rights, from a machine whose kubectl talks to the cluster:
#  1. applies the RBAC manifest (the `podagent` service account, its ClusterRole and binding);
#  2. creates, or reuses, the Secret `podagent-token` of type kubernetes.io/service-account-token
#     for that service account. Since Kubernetes 1.24 no such Secret is created automatically;
#     one created by hand is still filled by the token controller and does not expire;
#  3. waits until the controller has filled in the token;
#  4. writes <out-dir>/<file> (mode 0600) with the current context's API server, the cluster
#     CA from the Secret (data.ca.crt) and the token, and prints how to install it on a node.
#
# Environment: KUBECTL (default kubectl), PODAGENT_RBAC_MANIFEST (default: the manifest next to
# this script, ../manifests/podagent-serviceaccount-and-rbac.yaml, in the source tree and in
# the RPM), PODAGENT_TOKEN_TIMEOUT (seconds to wait for the token, default 60).
set -euo pipefail

me=$(basename "$0")
here=$(cd "$(dirname "$0")" && pwd)
kubectl=${KUBECTL:-kubectl}
manifest=${PODAGENT_RBAC_MANIFEST:-$here/../manifests/podagent-serviceaccount-and-rbac.yaml}
timeout=${PODAGENT_TOKEN_TIMEOUT:-60}
account=podagent
secret=podagent-token

if [ $# -gt 3 ]; then
    echo "usage: $me [out-dir] [file] [namespace]" >&2
    exit 64
fi
out_dir=${1:-/tmp/kubeconfig}
file=${2:-podagent-kubeconfig.yaml}
namespace=${3:-kube-system}
out=$out_dir/$file

# A YAML double-quoted scalar (JSON string syntax is valid YAML), so names with ':' or '#' or
# other YAML specials survive.
q() {
    jq -rn --arg value "$1" '$value | @json'
}

die() {
    echo "$me: $*" >&2
    exit 1
}

for tool in "$kubectl" jq base64; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (or not on PATH)"
done
[ -f "$manifest" ] || die "RBAC manifest $manifest not found (set PODAGENT_RBAC_MANIFEST)"

server=$("$kubectl" config view --minify -o jsonpath='{.clusters[0].cluster.server}') \
    || die "kubectl has no current context (set KUBECONFIG or use 'kubectl config use-context')"
[ -n "$server" ] || die "the current kubectl context names no API server"
cluster=$("$kubectl" config view --minify -o jsonpath='{.clusters[0].name}')

echo "$me: applying $manifest"
"$kubectl" apply -f "$manifest"
"$kubectl" get serviceaccount "$account" --namespace "$namespace" >/dev/null 2>&1 \
    || die "service account $account does not exist in namespace $namespace after applying $manifest (is it the namespace the manifest uses?)"

if existing=$("$kubectl" get secret "$secret" --namespace "$namespace" -o json 2>/dev/null); then
    jq -e --arg account "$account" '.type == "kubernetes.io/service-account-token"
        and .metadata.annotations["kubernetes.io/service-account.name"] == $account' \
        <<<"$existing" >/dev/null \
        || die "secret $namespace/$secret exists but is not a service-account token of $account; delete it or choose another namespace"
    echo "$me: reusing secret $namespace/$secret"
else
    "$kubectl" apply -f - <<EOF
apiVersion: v1
kind: Secret
metadata:
  name: $secret
  namespace: $namespace
  annotations:
    kubernetes.io/service-account.name: $account
type: kubernetes.io/service-account-token
EOF
fi

token=
ca=
for _ in $(seq "$timeout"); do
    data=$("$kubectl" get secret "$secret" --namespace "$namespace" -o json)
    token=$(jq -r '.data.token // "" | @base64d' <<<"$data")
    ca=$(jq -r '.data["ca.crt"] // ""' <<<"$data")
    if [ -n "$token" ] && [ -n "$ca" ]; then
        break
    fi
    sleep 1
done
if [ -z "$token" ] || [ -z "$ca" ]; then
    die "the token controller did not fill secret $namespace/$secret within ${timeout}s (is kube-controller-manager running with --service-account-private-key-file and --root-ca-file?)"
fi

mkdir -p "$out_dir"
tmp=$(mktemp "$out_dir/.$file.XXXXXX")
trap 'rm -f "$tmp"' EXIT
chmod 0600 "$tmp"
cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $(q "$cluster")
  cluster:
    server: $(q "$server")
    certificate-authority-data: $(q "$ca")
users:
- name: $account
  user:
    token: $(q "$token")
contexts:
- name: $(q "$account@$cluster")
  context:
    cluster: $(q "$cluster")
    user: $account
    namespace: $(q "$namespace")
current-context: $(q "$account@$cluster")
EOF
mv "$tmp" "$out"
trap - EXIT

echo "$me: wrote $out"
echo "Install it on every node that runs podagent as a service:"
echo "  sudo install -m 0600 -o root -g root $out /opt/kaloom/etc/podagent-kubeconfig.yaml"
