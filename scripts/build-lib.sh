# shellcheck shell=bash
# Sourced, not run, by build-rpm.sh and build-image.sh: how the binary they ship is built, so
# that both build, and ship, the same one.

# build_podagent PROFILE: cargo build of podagent with PROFILE, in the repository's root. The
# checkout's path would otherwise be in the binary (panic locations): remapped, one commit
# builds the same binary wherever it is checked out.
build_podagent() {
    echo "$(basename "$0"): cargo build --profile $1 -p podagent"
    RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }--remap-path-prefix=$PWD=/podagent" \
        cargo build --locked --profile "$1" -p podagent
}
