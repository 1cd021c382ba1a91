# shellcheck shell=bash
# Sourced, not run, by build-rpm.sh, build-image.sh and bench.sh: how the binary they ship is
# built and where it lands, so that all of them build, and ship, the same one.
#
# The shipped binary is static: glibc is linked in (`-C target-feature=+crt-static` on the gnu
# target), so it needs no shared library from the node and runs on any glibc distribution,
# EL8's glibc 2.28 included; a dynamic build would demand the build host's glibc (2.34 on
# Debian 12, EL9 and newer only). Name resolution for the API server goes through glibc's own
# `files` (/etc/hosts) and `dns` (/etc/resolv.conf) services, which a static glibc has built in;
# other NSS modules named on the `hosts:` line are loaded from the node as in any static glibc
# program, so a server name should resolve by /etc/hosts or DNS. The target is named
# explicitly so that the flag reaches only podagent, not the build scripts and proc-macros
# cargo runs on the build host; the binary lands under <target dir>/<target>/<profile dir>/.

# The gnu target of this build host (x86_64-unknown-linux-gnu on x86_64).
podagent_target() {
    local host
    host=$(rustc -vV | sed -n 's/^host: //p')
    case $host in
        *-linux-gnu) echo "$host" ;;
        *)
            echo "$(basename "$0"): the build host is $host; podagent ships a static build for a *-linux-gnu target" >&2
            return 1
            ;;
    esac
}

# podagent_binary PROFILE: the path of the binary build_podagent PROFILE builds.
podagent_binary() {
    local target dir
    target=$(podagent_target) || return 1
    case $1 in
        dev) dir=debug ;;
        *) dir=$1 ;;
    esac
    echo "${CARGO_TARGET_DIR:-target}/$target/$dir/podagent"
}

# build_podagent PROFILE: cargo build of the static podagent with PROFILE, in the repository's
# root. The checkout's path would otherwise be in the binary (panic locations): remapped, one
# commit builds the same binary wherever it is checked out.
build_podagent() {
    local target
    target=$(podagent_target) || return 1
    echo "$(basename "$0"): cargo build --profile $1 --target $target -p podagent (static)"
    RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static --remap-path-prefix=$PWD=/podagent" \
        cargo build --locked --profile "$1" --target "$target" -p podagent --bin podagent
}
