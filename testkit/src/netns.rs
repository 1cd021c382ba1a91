//! Network namespaces created by tests, removed on drop even when the test panics.
//!
//! Named namespaces live under `/var/run/netns` (as `ip netns add` makes them), so CNI plugins
//! can be handed a stable path, exactly like the `cni-<uuid>` namespaces containerd creates.
//! Names carry the process id and a counter so parallel tests and parallel runs never collide.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::prereq;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique name for a test-owned object (netns, link, directory): `pa<tag><pid>n<counter>`,
/// at most 15 characters when `tag` has at most 3, so it is also a valid Linux link name.
pub fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("pa{tag}{}n{n}", std::process::id() % 100_000)
}

/// A named network namespace owned by one test.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// Creates a fresh namespace with its loopback up. Panics (naming what is missing) when not
    /// root or when `ip` is missing.
    pub fn new() -> Self {
        prereq::require_root();
        prereq::require_command("ip", "iproute2");
        let name = unique_name("ns");
        run_ip(&["netns", "add", &name]);
        let netns = TestNetns { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// The namespace name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, suitable for `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Runs `ip -n <ns> <args>` and panics with its stderr when it fails.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// The names of the links inside the namespace (`ip -n <ns> -j link`).
    pub fn link_names(&self) -> Vec<String> {
        self.links()
            .iter()
            .filter_map(|link| link["ifname"].as_str().map(str::to_owned))
            .collect()
    }

    /// The links inside the namespace with their addresses, as `ip -j addr` reports them.
    pub fn links(&self) -> Vec<serde_json::Value> {
        let out = self.ip(&["-j", "addr", "show"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
            panic!("`ip -n {} -j addr show` printed no JSON: {err}", self.name)
        })
    }
}

impl Default for TestNetns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `ip <args>`, panicking with the command and its stderr on failure.
pub fn run_ip(args: &[&str]) -> Output {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run `ip {}`: {err}", args.join(" ")));
    if !out.status.success() {
        panic!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    out
}

/// Host links the bridge plugin or a test made, deleted when the test ends, however it ends.
pub struct HostLinks(pub Vec<String>);

impl Drop for HostLinks {
    fn drop(&mut self) {
        for link in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", link])
                .output();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_exists_until_dropped() {
        let netns = TestNetns::new();
        let path = netns.path();
        assert!(path.exists(), "{} should exist", path.display());
        assert_eq!(netns.link_names(), vec!["lo".to_owned()]);
        drop(netns);
        assert!(
            !path.exists(),
            "{} should be gone after drop",
            path.display()
        );
    }

    #[test]
    fn unique_names_are_valid_link_names() {
        let a = unique_name("veh");
        let b = unique_name("veh");
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a} is longer than IFNAMSIZ-1");
    }
}

/// Reading `ip a` as a person runs it (inside a pod with `kubectl exec`, say): what the demo
/// shows and its test checks.
pub mod ip_a {
    /// Whether `ip a` output `text` shows interface `ifname`.
    pub fn shows(text: &str, ifname: &str) -> bool {
        text.lines().any(|line| interface_of(line) == Some(ifname))
    }

    /// The interface an `ip a` header line (`N: name@peer: <…>`) names.
    pub fn interface_of(line: &str) -> Option<&str> {
        let (index, rest) = line.split_once(": ")?;
        index.parse::<u32>().ok()?;
        rest.split(['@', ':']).next()
    }

    /// The first IPv4 address (`a.b.c.d/len`) `ip a` output `text` shows on `ifname`.
    pub fn address_of(text: &str, ifname: &str) -> Option<String> {
        let mut current = None;
        for line in text.lines() {
            if !line.starts_with(char::is_whitespace) {
                current = interface_of(line);
            } else if current == Some(ifname)
                && let Some(rest) = line.trim_start().strip_prefix("inet ")
            {
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    }

    #[cfg(test)]
    mod tests {
        const SHOWN: &str = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue qlen 1000
    inet 127.0.0.1/8 scope host lo
2: eth0@if474: <BROADCAST,MULTICAST,UP,LOWER_UP,M-DOWN> mtu 1500 qdisc noqueue
    inet 198.19.249.3/24 brd 198.19.249.255 scope global eth0
3: net8d777f385d3d@if476: <BROADCAST,MULTICAST,UP,LOWER_UP,M-DOWN> mtu 1500 qdisc noqueue
    link/ether 82:e9:00:00:00:01 brd ff:ff:ff:ff:ff:ff
    inet 172.20.1.10/24 brd 172.20.1.255 scope global net8d777f385d3d
";

        #[test]
        fn finds_interfaces_and_their_addresses() {
            assert!(super::shows(SHOWN, "net8d777f385d3d") && super::shows(SHOWN, "lo"));
            assert!(!super::shows(SHOWN, "net8d777f385d3"));
            assert_eq!(
                super::address_of(SHOWN, "net8d777f385d3d").as_deref(),
                Some("172.20.1.10/24")
            );
            assert_eq!(
                super::address_of(SHOWN, "eth0").as_deref(),
                Some("198.19.249.3/24")
            );
            assert_eq!(super::address_of(SHOWN, "eth1"), None);
            assert_eq!(
                super::interface_of("    inet 127.0.0.1/8 scope host lo"),
                None
            );
        }
    }
}
