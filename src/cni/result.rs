//! CNI results and plugin error objects.
//!
//! Plugins answer in the version of the config they were given, and kactus may answer with an
//! empty or 0.2.0-shaped result, so parsing accepts every shape from 0.2.0 to 1.1.0 and lifts
//! it into one typed result for status reporting (the sandbox interface's MAC and IPs). The
//! plugin's JSON is kept verbatim in `raw`: that, not a re-serialization, is what the next
//! plugin gets as `prevResult` and what the cache stores.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;
use serde_json::Value;

/// An address with its prefix length, as CNI writes them (`198.18.0.5/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub(crate) addr: IpAddr,
    pub(crate) prefix_len: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} has no /prefix"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        match prefix.parse::<u8>() {
            Ok(prefix_len) if prefix_len <= max => Ok(Cidr { addr, prefix_len }),
            _ => Err(format!("{text:?} has an invalid prefix length")),
        }
    }
}

/// Kept as its text (`198.18.0.5/24`) in records.
impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// An interface the plugin created or configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub(crate) mac: Option<String>,
    /// The netns path for interfaces inside a sandbox; absent for host-side ones.
    pub(crate) sandbox: Option<String>,
    /// The MTU the plugin set (CNI 1.1 results only).
    pub(crate) mtu: Option<u32>,
}

/// One assigned address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub(crate) address: Cidr,
    pub(crate) gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub(crate) dst: Cidr,
    pub(crate) gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Dns {
    pub(crate) nameservers: Vec<String>,
    pub(crate) domain: Option<String>,
    pub(crate) search: Vec<String>,
    pub(crate) options: Vec<String>,
}

/// The result of an ADD (the last plugin's), typed for status reporting.
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    /// The version the plugin answered in (empty when it named none).
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub(crate) routes: Vec<Route>,
    pub(crate) dns: Dns,
    /// The plugin's JSON, verbatim.
    pub raw: Value,
}

impl CniResult {
    /// Parses a plugin's stdout: JSON holding any result shape from 0.2.0 to 1.1.0. The JSON
    /// parser's nesting limit keeps a deeply nested answer from exhausting the stack.
    pub fn from_slice(stdout: &[u8]) -> Result<CniResult, String> {
        let raw: Value = serde_json::from_slice(stdout).map_err(|err| err.to_string())?;
        CniResult::parse(raw)
    }

    /// Parses any result shape from 0.2.0 to 1.1.0; the error says what is wrong with it.
    pub(crate) fn parse(raw: Value) -> Result<CniResult, String> {
        let wire = Wire::deserialize(&raw).map_err(|err| format!("not a CNI result: {err}"))?;
        let interfaces: Vec<Interface> = wire
            .interfaces
            .into_iter()
            .map(|i| Interface {
                name: i.name,
                mac: i.mac.filter(|m| !m.is_empty()),
                sandbox: i.sandbox.filter(|s| !s.is_empty()),
                mtu: i.mtu.filter(|m| *m > 0),
            })
            .collect();
        let mut ips = Vec::new();
        let mut routes = Vec::new();
        for ip in wire.ips {
            if let Some(index) = ip.interface
                && index >= interfaces.len()
            {
                return Err(format!(
                    "address {} refers to interface {index}, but only {} are listed",
                    ip.address,
                    interfaces.len()
                ));
            }
            ips.push(IpConfig {
                address: ip.address.parse()?,
                gateway: parse_addr(ip.gateway.as_deref())?,
                interface: ip.interface,
            });
        }
        // 0.2.0 results carry one address (and its routes) per family instead of `ips`.
        for legacy in [wire.ip4, wire.ip6].into_iter().flatten() {
            ips.push(IpConfig {
                address: legacy.ip.parse()?,
                gateway: parse_addr(legacy.gateway.as_deref())?,
                interface: None,
            });
            routes.extend(legacy.routes);
        }
        routes.extend(wire.routes);
        let routes = routes
            .into_iter()
            .map(|r| {
                Ok(Route {
                    dst: r.dst.parse()?,
                    gw: parse_addr(r.gw.as_deref())?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(CniResult {
            cni_version: wire.cni_version,
            interfaces,
            ips,
            routes,
            dns: wire.dns,
            raw,
        })
    }

    /// The interface named `ifname` inside the sandbox (a host-side interface of the same
    /// name, which a plugin may list too, does not count).
    pub fn sandbox_interface(&self, ifname: &str) -> Option<&Interface> {
        self.interfaces
            .iter()
            .find(|i| i.name == ifname && i.sandbox.is_some())
    }

    /// The MAC address of the sandbox interface `ifname`, when the plugin reported one.
    pub fn mac_of(&self, ifname: &str) -> Option<&str> {
        self.sandbox_interface(ifname)?.mac.as_deref()
    }

    /// The addresses of the sandbox interface `ifname`. A result that lists no interfaces at
    /// all (0.2.0-shaped, or a minimal kactus answer) can only mean that one, so all its
    /// addresses count.
    pub fn ips_of(&self, ifname: &str) -> Vec<Cidr> {
        self.ip_configs_of(ifname).map(|ip| ip.address).collect()
    }

    /// The gateways the plugin gave the addresses of the sandbox interface `ifname`.
    pub fn gateways_of(&self, ifname: &str) -> Vec<IpAddr> {
        self.ip_configs_of(ifname)
            .filter_map(|ip| ip.gateway)
            .collect()
    }

    fn ip_configs_of<'a>(&'a self, ifname: &'a str) -> impl Iterator<Item = &'a IpConfig> {
        self.ips.iter().filter(move |ip| {
            self.interfaces.is_empty()
                || ip
                    .interface
                    .and_then(|i| self.interfaces.get(i))
                    .is_some_and(|i| i.name == ifname && i.sandbox.is_some())
        })
    }
}

fn parse_addr(text: Option<&str>) -> Result<Option<IpAddr>, String> {
    match text {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| format!("{text:?} is not an IP address")),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(default)]
    cni_version: String,
    #[serde(default)]
    interfaces: Vec<WireInterface>,
    #[serde(default)]
    ips: Vec<WireIp>,
    #[serde(default)]
    routes: Vec<WireRoute>,
    #[serde(default)]
    dns: Dns,
    ip4: Option<LegacyIp>,
    ip6: Option<LegacyIp>,
}

#[derive(Deserialize)]
struct WireInterface {
    name: String,
    mac: Option<String>,
    sandbox: Option<String>,
    mtu: Option<u32>,
}

#[derive(Deserialize)]
struct WireIp {
    address: String,
    gateway: Option<String>,
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct WireRoute {
    dst: String,
    gw: Option<String>,
}

#[derive(Deserialize)]
struct LegacyIp {
    ip: String,
    gateway: Option<String>,
    #[serde(default)]
    routes: Vec<WireRoute>,
}

/// A plugin's error object (`{"code","msg","details"}`), printed on stdout on failure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PluginError {
    pub code: Option<u64>,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub(crate) details: String,
}

impl PluginError {
    /// The error object in `text`, if it holds one (it must at least carry a code or a msg).
    pub fn parse(text: &[u8]) -> Option<PluginError> {
        serde_json::from_slice::<PluginError>(text)
            .ok()
            .filter(|e| e.code.is_some() || !e.msg.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const IFNAME: &str = "net9f27410725ab";

    #[test]
    fn bridge_1_0_result_gives_sandbox_mac_and_ips() {
        let raw = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "br0", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "veth1", "mac": "bb:bb:bb:bb:bb:bb"},
                {"name": IFNAME, "mac": "02:11:22:33:44:55", "sandbox": "/var/run/netns/x"}
            ],
            "ips": [{"address": "198.18.1.2/24", "gateway": "198.18.1.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "198.18.1.1"}],
            "dns": {"nameservers": ["198.18.1.1"]}
        });
        let result = CniResult::parse(raw.clone()).expect("valid result");
        assert_eq!(result.cni_version, "1.0.0");
        assert_eq!(result.mac_of(IFNAME), Some("02:11:22:33:44:55"));
        assert_eq!(
            result.ips_of(IFNAME),
            vec!["198.18.1.2/24".parse().unwrap()]
        );
        assert_eq!(result.ips_of("veth1"), Vec::<Cidr>::new());
        assert_eq!(
            result.gateways_of(IFNAME),
            vec!["198.18.1.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(result.gateways_of("veth1"), Vec::<IpAddr>::new());
        assert_eq!(result.routes[0].gw, Some("198.18.1.1".parse().unwrap()));
        assert_eq!(result.dns.nameservers, vec!["198.18.1.1"]);
        assert_eq!(result.raw, raw);
    }

    #[test]
    fn result_0_3_with_ip_version_fields_parses() {
        let raw = json!({
            "cniVersion": "0.3.1",
            "interfaces": [{"name": IFNAME, "sandbox": "/proc/1/ns/net"}],
            "ips": [{"version": "6", "address": "2001:db8::5/64", "interface": 0}]
        });
        let result = CniResult::parse(raw).expect("valid result");
        assert_eq!(result.mac_of(IFNAME), None);
        assert_eq!(result.ips_of(IFNAME)[0].prefix_len, 64);
    }

    #[test]
    fn empty_result_is_tolerated() {
        let result = CniResult::parse(json!({})).expect("empty result");
        assert!(result.interfaces.is_empty() && result.ips.is_empty());
        assert_eq!(result.ips_of(IFNAME), Vec::<Cidr>::new());
    }

    #[test]
    fn result_0_2_0_shape_lifts_addresses_and_routes() {
        let raw = json!({
            "cniVersion": "0.2.0",
            "ip4": {"ip": "198.18.2.5/24", "gateway": "198.18.2.1",
                    "routes": [{"dst": "198.19.0.0/16"}]},
            "dns": {}
        });
        let result = CniResult::parse(raw).expect("0.2.0 result");
        assert_eq!(
            result.ips_of(IFNAME),
            vec!["198.18.2.5/24".parse().unwrap()]
        );
        assert_eq!(result.routes.len(), 1);
        assert_eq!(result.routes[0].gw, None);
    }

    #[test]
    fn dangling_interface_index_is_rejected() {
        let raw = json!({"ips": [{"address": "198.18.1.2/24", "interface": 3}]});
        let err = CniResult::parse(raw).unwrap_err();
        assert!(err.contains("interface 3"), "{err}");
    }

    #[test]
    fn malformed_address_is_rejected() {
        for bad in ["198.18.1.2", "198.18.1.300/24", "198.18.1.2/33", "x/1"] {
            let raw = json!({"ips": [{"address": bad}]});
            assert!(CniResult::parse(raw).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn non_object_is_not_a_result() {
        assert!(CniResult::parse(json!([1, 2])).is_err());
        assert!(CniResult::parse(json!({"interfaces": "eth0"})).is_err());
    }

    #[test]
    fn error_object_needs_code_or_msg() {
        let err = PluginError::parse(br#"{"cniVersion":"1.0.0","code":11,"msg":"busy"}"#);
        assert_eq!(
            err.map(|e| (e.code, e.msg)),
            Some((Some(11), "busy".to_owned()))
        );
        assert_eq!(PluginError::parse(b"{}"), None);
        assert_eq!(PluginError::parse(b"panic: oops"), None);
    }
}
