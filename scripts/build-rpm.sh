#!/usr/bin/env bash
# Builds the podagent RPM: compiles the static podagent (scripts/build-lib.sh) with the
# `packaging` profile (fat LTO, one codegen unit, no debug info) and packages it with
# cargo-generate-rpm, which is installed with `cargo install --locked` when missing. What goes into the package, with which modes and
# scriptlets, is declared in [package.metadata.generate-rpm] of Cargo.toml.
#
#   scripts/build-rpm.sh [--profile PROFILE] [--no-build] [--version VERSION] [--output DIR]
#                        [--compress none|gzip|zstd|xz]
#
#   --profile P   cargo profile of the binary to package (default: packaging). `dev` packages
#                 the debug build: same files and metadata, built in seconds instead of minutes;
#                 the tests use it, releases must not.
#   --no-build    package the binary already built for that profile
#   --version V   package version (default: the version in Cargo.toml)
#   --output DIR  where to write the .rpm (default: <target dir>/generate-rpm/)
#   --compress C  payload compression (default: zstd). The tests use none: compressing a
#                 debug binary takes a minute and changes nothing they check.
#
# Honours CARGO_TARGET_DIR. Prints the path of the package on the last line.
set -euo pipefail

me=$(basename "$0")
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

profile=packaging
build=1
version=
output=
compress=
while [ $# -gt 0 ]; do
    case $1 in
        --profile) profile=${2:?--profile needs a value}; shift 2 ;;
        --no-build) build=0; shift ;;
        --version) version=${2:?--version needs a value}; shift 2 ;;
        --output) output=${2:?--output needs a value}; shift 2 ;;
        --compress) compress=${2:?--compress needs a value}; shift 2 ;;
        -h | --help) sed -n '2,20s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "$me: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
done

if ! cargo generate-rpm --version >/dev/null 2>&1; then
    echo "$me: installing cargo-generate-rpm"
    cargo install --locked cargo-generate-rpm
fi

# shellcheck source=scripts/build-lib.sh
. scripts/build-lib.sh
if [ "$build" = 1 ]; then
    build_podagent "$profile"
fi
binary=$(podagent_binary "$profile")
[ -x "$binary" ] || {
    echo "$me: no podagent binary at $binary; drop --no-build to build it" >&2
    exit 66
}

# --target: the asset target/release/podagent is the static build's <target>/<profile dir>/.
args=(generate-rpm -p . --profile "$profile" --target "$(podagent_target)")
if [ -n "$version" ]; then
    args+=(--set-metadata "version = \"$version\"")
fi
if [ -n "$compress" ]; then
    args+=(--payload-compress "$compress")
fi
# Always named: with --target, cargo-generate-rpm's own default is <target dir>/<target>/generate-rpm.
rpm_dir=${output:-${CARGO_TARGET_DIR:-target}/generate-rpm}
mkdir -p "$rpm_dir"
args+=(--output "$rpm_dir")
cargo "${args[@]}"

# The newest package in the output directory is the one just written.
# shellcheck disable=SC2012 # file names are ours: podagent-<version>-<release>.<arch>.rpm
package=$(ls -t "$rpm_dir"/podagent-*.rpm | head -n 1)
echo "$me: built $package ($(du -h "$package" | cut -f1))"
echo "$package"
