#!/usr/bin/env bash
# Creates the kubeconfig podagent uses when it runs as a systemd service on a node.
#
#   create-kubeconfig.sh [--node NODE] [out-dir] [file] [namespace]
#   (defaults: /tmp/kubeconfig podagent-kubeconfig.yaml kube-system)
#
# Run it with cluster-admin rights, from a machine whose kubectl talks to the cluster: once per
# node with --node, so that each node has its own identity, which the admission policy
# (podagent-admission-policy.yaml) keeps to that node's pods; or once without it for the one
# identity all nodes used to share, which that policy warns about (and denies once a migration
# to per-node identities is done). It
#  1. applies the RBAC manifest (the `podagent` service account, its ClusterRole and binding);
#     with --node also the service account `podagent-node-NODE` and a ClusterRoleBinding of the
#     same name to that ClusterRole;
#  2. creates, or reuses, the Secret `<account>-token` of type
#     kubernetes.io/service-account-token for the account. Since Kubernetes 1.24 no such Secret
#     is created automatically; one created by hand is still filled by the token controller and
#     does not expire;
#  3. waits until the controller has filled in the token;
#  4. writes <out-dir>/<file> (mode 0600) with the current context's API server, the cluster
#     CA from the Secret (data.ca.crt) and the token, and prints how to install it.
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

usage() {
    echo "usage: $me [--node NODE] [out-dir] [file] [namespace]" >&2
    exit 64
}

node=
case ${1:-} in
--node)
    [ $# -ge 2 ] || usage
    node=$2
    shift 2
    ;;
--node=*)
    node=${1#--node=}
    shift
    ;;
-*) usage ;;
esac
if [ $# -gt 3 ]; then
    usage
fi
out_dir=${1:-/tmp/kubeconfig}
file=${2:-podagent-kubeconfig.yaml}
namespace=${3:-kube-system}
out=$out_dir/$file

account=podagent
if [ -n "$node" ]; then
    # A node name is a DNS subdomain; podagent-node-<node> must be one too (at most 253).
    subdomain='^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'
    if ! [[ $node =~ $subdomain ]] || [ "${#node}" -gt 239 ]; then
        echo "$me: --node $(printf %q "$node") is not a node name (a DNS subdomain of at most 239 characters)" >&2
        exit 64
    fi
    account=podagent-node-$node
    if [ "$namespace" != kube-system ]; then
        echo "$me: warning: the admission policy knows podagent's identities in kube-system only; $namespace/$account will not be kept to node $node's pods" >&2
    fi
fi
secret=$account-token

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
"$kubectl" get serviceaccount podagent --namespace "$namespace" >/dev/null 2>&1 \
    || die "service account podagent does not exist in namespace $namespace after applying $manifest (is it the namespace the manifest uses?)"
if [ -n "$node" ]; then
    echo "$me: applying service account $namespace/$account and its ClusterRoleBinding"
    "$kubectl" apply -f - <<EOF
apiVersion: v1
kind: ServiceAccount
metadata:
  name: $account
  namespace: $namespace
  labels:
    app.kubernetes.io/name: podagent
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: $account
  labels:
    app.kubernetes.io/name: podagent
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: podagent
subjects:
  - kind: ServiceAccount
    name: $account
    namespace: $namespace
EOF
fi

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
if [ -n "$node" ]; then
    echo "Install it on node $node, and on no other node:"
else
    echo "This identity is shared by every node: prefer one per node (--node NODE)."
    echo "Install it on every node that runs podagent as a service:"
fi
echo "  sudo install -m 0600 -o root -g root $out /opt/kaloom/etc/podagent-kubeconfig.yaml"
