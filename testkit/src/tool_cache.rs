//! Where the test tools built from the project's pinned Go modules are (`testkit/*/go.mod`):
//! `scripts/setup-test-host.sh` builds each into a directory under [`ROOT`] keyed by the
//! versions its go.mod pins, once per machine. go.mod is the one place a version lives: the
//! setup script and the fixtures both read it from there.

use std::path::{Path, PathBuf};

/// The root of every cache the setup script builds into.
pub const ROOT: &str = "/var/lib/podagent-test";

/// The version `go_mod` (the text of `file`) requires for `module`: a `require module v` line,
/// or `module v` inside a require block.
pub(crate) fn required_version(go_mod: &'static str, file: &str, module: &str) -> &'static str {
    go_mod
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let first = words.next()?;
            let (name, version) = if first == "require" {
                (words.next()?, words.next()?)
            } else {
                (first, words.next()?)
            };
            (name == module && version.starts_with('v')).then_some(version)
        })
        .next()
        .unwrap_or_else(|| panic!("{file} requires no {module}"))
}

/// `bin_dir/name`; panics naming the setup script (which needs the Go module proxy) and `what`
/// the binary belongs to when it has not been built on this machine.
pub(crate) fn binary(bin_dir: &Path, name: &str, what: &str) -> PathBuf {
    let path = bin_dir.join(name);
    if !path.is_file() {
        panic!(
            "{} is missing: {what} is built by scripts/setup-test-host.sh (needs the Go module \
             proxy)",
            path.display()
        );
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_require_lines_and_blocks() {
        let go_mod =
            "module x\n\nrequire a.io/one v1.2.3\n\nrequire (\n\tb.io/two v0.4.0 // indirect\n)\n";
        assert_eq!(required_version(go_mod, "go.mod", "a.io/one"), "v1.2.3");
        assert_eq!(required_version(go_mod, "go.mod", "b.io/two"), "v0.4.0");
    }
}
