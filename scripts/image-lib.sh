# shellcheck shell=bash
# Sourced, not run: writes a one-layer container image in docker-save format, which
# `ctr images import`, `docker load` and `podman load` all accept. No registry is needed, and
# no `docker build` (which would want a base image from one). The output is deterministic:
# the same layer, config, creation time and tag give the same bytes, so the image id (the
# digest of its config) is the same too.
#
# Used by scripts/setup-test-host.sh (the test images) and scripts/build-image.sh (podagent's
# image).

# write_image TAG CONTAINER_CONFIG_JSON CREATED LAYER_TAR WORK_DIR OUTPUT_TAR
#   CONTAINER_CONFIG_JSON  the image config's `config` object (Entrypoint, Env, Labels, ...)
#   CREATED                RFC 3339 time the image says it was created
# Prints the image id (sha256:<digest of the config>).
write_image() {
    local tag=$1 container_config=$2 created=$3 layer=$4 work=$5 output=$6
    local layer_sum config config_sum
    layer_sum=$(sha256sum "$layer" | cut -d' ' -f1)
    mkdir -p "$work/$layer_sum"
    cp "$layer" "$work/$layer_sum/layer.tar"
    config=$(jq -n -c \
        --arg arch "$(dpkg --print-architecture)" \
        --argjson config "$container_config" \
        --arg created "$created" \
        --arg by "$(basename "$0")" \
        --arg diff "sha256:$layer_sum" \
        '{architecture: $arch, os: "linux", created: $created, config: $config,
          rootfs: {type: "layers", diff_ids: [$diff]},
          history: [{created: $created, created_by: $by}]}')
    config_sum=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
    printf '%s' "$config" >"$work/$config_sum.json"
    jq -n -c --arg config "$config_sum.json" --arg tag "$tag" --arg layer "$layer_sum/layer.tar" \
        '[{Config: $config, RepoTags: [$tag], Layers: [$layer]}]' >"$work/manifest.json"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
        -C "$work" -cf "$output.tmp" manifest.json "$config_sum.json" "$layer_sum"
    mv "$output.tmp" "$output"
    echo "sha256:$config_sum"
}
