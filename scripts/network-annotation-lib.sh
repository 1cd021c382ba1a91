# shellcheck shell=bash
# Shared by add-network-annotation.sh and del-network-annotation.sh (sourced, not run): reading,
# validating and writing a pod's `networks` annotation with kubectl and jq.
#
# Callers set `me` (their name for messages). read_networks sets `current` (the annotation as
# compact JSON, [] when absent), `target` (namespace/pod for messages) and `resource_version`.

me=${me:-$(basename "$0")}
kubectl=${KUBECTL:-kubectl}
key=${PODAGENT_ANNOTATION_KEY:-networks}

for tool in "$kubectl" jq; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$me: $tool is not installed (or not on PATH)" >&2
        exit 69
    fi
done

# Network names become interface names and CNI_ARGS values: podagent accepts lower-case DNS
# subdomains (RFC 1123), so refuse anything else before touching the pod.
check_network_name() {
    local name=$1
    if [ "${#name}" -gt 253 ] \
        || ! [[ $name =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$ ]]; then
        echo "$me: '$name' is not a valid network name (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)" >&2
        exit 64
    fi
}

# Prints the MAC in lower case, or fails for anything podagent would refuse: six hex octets,
# unicast (lowest bit of the first octet clear), not all zero.
check_mac() {
    local mac=${1,,}
    if ! [[ $mac =~ ^[0-9a-f]{2}(:[0-9a-f]{2}){5}$ ]]; then
        echo "$me: '$1' is not a MAC address of the form 00:11:22:33:44:55" >&2
        exit 64
    fi
    if (( 16#${mac:0:2} & 1 )); then
        echo "$me: '$1' is a multicast MAC address; an interface needs a unicast one" >&2
        exit 64
    fi
    if [ "$mac" = "00:00:00:00:00:00" ]; then
        echo "$me: '$1' is the all-zero MAC address" >&2
        exit 64
    fi
    printf '%s\n' "$mac"
}

# read_networks POD [NAMESPACE]
read_networks() {
    local pod=$1 namespace=$2 pod_json err
    ns_args=()
    if [ -n "$namespace" ]; then
        ns_args=(--namespace "$namespace")
    fi
    err=$(mktemp)
    if ! pod_json=$("$kubectl" get pod "$pod" "${ns_args[@]}" -o json 2>"$err"); then
        if grep -q 'NotFound' "$err"; then
            echo "$me: pod $pod not found in ${namespace:-the current} namespace" >&2
        else
            echo "$me: cannot read pod $pod:" >&2
            cat "$err" >&2
        fi
        rm -f "$err"
        exit 1
    fi
    rm -f "$err"
    target=$(jq -r '.metadata.namespace + "/" + .metadata.name' <<<"$pod_json")
    resource_version=$(jq -r '.metadata.resourceVersion' <<<"$pod_json")
    local raw
    raw=$(jq -r --arg key "$key" '.metadata.annotations[$key] // ""' <<<"$pod_json")
    if [ -z "${raw//[[:space:]]/}" ]; then
        current='[]'
        return
    fi
    # shellcheck disable=SC2034 # `current` is the result, read by the caller
    if ! current=$(jq -c -e 'if type == "array"
            and all(.[]; type == "object" and (.name | type) == "string")
        then . else error("not a list") end' <<<"$raw" 2>/dev/null); then
        echo "$me: the $key annotation of pod $target is malformed (it must be a JSON list of objects with a \"name\", like [{\"name\":\"data\"}]); fix or remove it first. It is:" >&2
        printf '  %s\n' "$raw" >&2
        exit 65
    fi
}

# write_networks JSON: writes the annotation back, only if the pod did not change meanwhile.
write_networks() {
    if ! "$kubectl" annotate pod "${target#*/}" --namespace "${target%%/*}" --overwrite \
        --resource-version "$resource_version" "$key=$1" >/dev/null; then
        echo "$me: could not update pod $target (if it changed meanwhile, run this again)" >&2
        exit 1
    fi
}
