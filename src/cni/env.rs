//! What a plugin sees besides its stdin: `CNI_ARGS`, its environment, where it is looked up.
//!
//! The attachment's fields end up in environment variables, a `key=value;` list and cache
//! file names, so they are validated here once: a pod name with a `;` must not be able to
//! smuggle an extra `CNI_ARGS` key (such as `IP=`) to the plugin, and a sandbox id with a `/`
//! must not be able to name a file outside the cache. The environment is minimal (`CNI_*`,
//! `PATH` and an explicit pass-through list) so that nothing of the agent's own environment,
//! such as credentials, leaks into third-party plugins.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

#[cfg(test)]
use super::Requested;
use super::error::{CniError, Op};
use super::{Settings, Target};

/// `PATH` for plugins when the agent itself has none (systemd gives services one), or runs
/// them in the node's root.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A [`Target`] whose fields passed validation, turned into what a plugin run takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ValidTarget {
    pub(crate) sandbox_id: String,
    pub(crate) netns: PathBuf,
    pub(crate) ifname: String,
    pub(crate) cni_args: String,
    /// Values for the capabilities plugins may advertise (`runtimeConfig`).
    pub(crate) capability_args: Map<String, Value>,
}

impl ValidTarget {
    pub(crate) fn new(a: &Target) -> Result<ValidTarget, CniError> {
        validate_sandbox_id(&a.sandbox_id)?;
        validate_ifname(&a.ifname)?;
        if !a.netns.is_absolute() {
            return Err(invalid(
                "netns",
                &a.netns.display().to_string(),
                "not an absolute path",
            ));
        }
        let mut pairs = vec![
            (
                "K8S_POD_NAMESPACE",
                "pod namespace",
                a.pod_namespace.as_str(),
            ),
            ("K8S_POD_NAME", "pod name", &a.pod_name),
            ("K8S_POD_INFRA_CONTAINER_ID", "sandbox id", &a.sandbox_id),
            ("K8S_POD_UID", "pod uid", &a.pod_uid),
            ("K8S_POD_NETWORK", "network", &a.network),
        ];
        if let Some(mac) = &a.if_mac {
            pairs.push(("K8S_POD_IFMAC", "ifMac", mac));
        }
        let ips = a.requested.as_ref().map(|r| r.ips.join(","));
        if a.requested.is_some() {
            if let Some(mac) = &a.if_mac {
                pairs.push(("MAC", "mac", mac));
            }
            if let Some(ips) = ips.as_deref().filter(|ips| !ips.is_empty()) {
                pairs.push(("IP", "ips", ips));
            }
        }
        let mut cni_args = String::from("IgnoreUnknown=1");
        for (key, field, value) in pairs {
            validate_arg(field, value)?;
            cni_args.push(';');
            cni_args.push_str(key);
            cni_args.push('=');
            cni_args.push_str(value);
        }
        let mut capability_args = Map::new();
        if let Some(mac) = &a.if_mac {
            capability_args.insert("mac".to_owned(), Value::String(mac.clone()));
        }
        if let Some(requested) = &a.requested {
            if !requested.ips.is_empty() {
                let ips = requested.ips.iter().cloned().map(Value::String).collect();
                capability_args.insert("ips".to_owned(), Value::Array(ips));
            }
            if !requested.port_mappings.is_empty() {
                let mappings = Value::Array(requested.port_mappings.clone());
                capability_args.insert("portMappings".to_owned(), mappings);
            }
            if let Some(bandwidth) = &requested.bandwidth {
                let bandwidth = Value::Object(bandwidth.clone());
                capability_args.insert("bandwidth".to_owned(), bandwidth);
            }
        }
        Ok(ValidTarget {
            sandbox_id: a.sandbox_id.clone(),
            netns: a.netns.clone(),
            ifname: a.ifname.clone(),
            cni_args,
            capability_args,
        })
    }
}

fn invalid(field: &'static str, value: &str, reason: &'static str) -> CniError {
    CniError::InvalidTarget {
        field,
        value: value.to_owned(),
        reason,
    }
}

fn validate_arg(field: &'static str, value: &str) -> Result<(), CniError> {
    if value.is_empty() {
        return Err(invalid(field, value, "is empty"));
    }
    if value.contains([';', '=']) {
        return Err(invalid(
            field,
            value,
            "contains ';' or '=', which would forge CNI_ARGS keys",
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, value, "contains control characters"));
    }
    Ok(())
}

/// Sandbox ids are hex in every runtime; the check keeps them safe in cache file names.
pub(crate) fn validate_sandbox_id(id: &str) -> Result<(), CniError> {
    let ok = id.len() <= 256
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "sandbox id",
            id,
            "must be letters, digits, '_', '.' or '-' (at most 256), starting with a letter or digit",
        ))
    }
}

/// The kernel's rules for interface names (`dev_valid_name`).
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "interface name",
            name,
            "must be 1-15 bytes without '/', ':', whitespace, and not '.' or '..'",
        ))
    }
}

/// The directories a plugin type is looked up in, which are also its `CNI_PATH` (delegating
/// plugins such as kactus find their delegates there): the vendor's directory, then the
/// configured bin dirs.
pub(crate) fn search_dirs(settings: &Settings, plugin_type: &str) -> Vec<PathBuf> {
    let first = match &settings.vendor {
        Some(vendor) => Path::new("/opt").join(vendor).join("cni/bin"),
        None => Path::new("/opt").join(plugin_type).join("bin"),
    };
    let mut dirs = vec![first];
    for dir in &settings.bin_dirs {
        if !dirs.contains(dir) {
            dirs.push(dir.clone());
        }
    }
    dirs
}

/// Why a plugin binary could not be found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    Missing,
    /// The first file of that name found; none was executable.
    NotExecutable(PathBuf),
}

/// The first executable regular file named `plugin_type` in `dirs`, as a path on the node
/// (what runs after the chroot into `host_root`, if any).
pub(crate) fn find_plugin(
    settings: &Settings,
    dirs: &[PathBuf],
    plugin_type: &str,
) -> Result<PathBuf, Lookup> {
    use std::os::unix::fs::PermissionsExt;
    let mut not_executable = None;
    for dir in dirs {
        let candidate = dir.join(plugin_type);
        let seen = match &settings.host_root {
            Some(root) => resolve_in_root(root, &candidate),
            None => Some(candidate.clone()),
        };
        match seen.map(std::fs::metadata) {
            Some(Ok(meta)) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
                return Ok(candidate);
            }
            Some(Ok(meta)) if meta.is_file() => {
                not_executable.get_or_insert(settings.seen(&candidate));
            }
            _ => {}
        }
    }
    Err(not_executable.map_or(Lookup::Missing, Lookup::NotExecutable))
}

/// How many symbolic links one lookup follows, as Linux's `MAXSYMLINKS`.
const MAX_SYMLINKS: usize = 40;

/// `path` (absolute, on the node) resolved the way the kernel resolves it after a chroot into
/// `root`: an absolute link starts again at `root` and `..` never climbs out of it (a node's
/// `/opt/cni/bin/bridge` may well link to `/usr/libexec/cni/bridge`, which is the node's, not
/// the container's). The result is the path podagent opens; `None` when a component is
/// missing or the links loop.
fn resolve_in_root(root: &Path, path: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let mut pending: Vec<OsString> = Vec::new();
    let push = |pending: &mut Vec<OsString>, path: &Path| {
        for part in path.components().rev() {
            match part {
                Component::Normal(name) => pending.push(name.to_owned()),
                Component::ParentDir => pending.push("..".into()),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    };
    push(&mut pending, path);
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let next = resolved.join(&part);
        let here = root.join(&next);
        if std::fs::symlink_metadata(&here)
            .ok()?
            .file_type()
            .is_symlink()
        {
            links += 1;
            if links > MAX_SYMLINKS {
                return None;
            }
            let target = std::fs::read_link(&here).ok()?;
            if target.is_absolute() {
                resolved.clear();
            }
            push(&mut pending, &target);
        } else {
            resolved = next;
        }
    }
    Some(root.join(resolved))
}

/// The whole environment of a plugin run.
pub(crate) fn plugin_env(
    op: Op,
    dirs: &[PathBuf],
    target: Option<(&ValidTarget, &str)>,
    settings: &Settings,
) -> Vec<(String, OsString)> {
    let mut env: Vec<(String, OsString)> = vec![("CNI_COMMAND".into(), op.as_str().into())];
    if op != Op::Version {
        let cni_path = std::env::join_paths(dirs).unwrap_or_default();
        env.push(("CNI_PATH".into(), cni_path));
    }
    if let Some((target, cni_args)) = target {
        env.push(("CNI_CONTAINERID".into(), target.sandbox_id.clone().into()));
        env.push(("CNI_NETNS".into(), target.netns.clone().into()));
        env.push(("CNI_IFNAME".into(), target.ifname.clone().into()));
        env.push(("CNI_ARGS".into(), cni_args.into()));
    }
    // In a container, podagent's own PATH names the image's directories, not the node's.
    let path = match settings.host_root {
        Some(_) => None,
        None => std::env::var_os("PATH"),
    };
    env.push(("PATH".into(), path.unwrap_or_else(|| DEFAULT_PATH.into())));
    for name in &settings.env_passthrough {
        if let Some(value) = std::env::var_os(name) {
            env.push((name.clone(), value));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment() -> Target {
        Target {
            sandbox_id: "0123abcd".into(),
            netns: "/var/run/netns/cni-1".into(),
            ifname: "net9f27410725ab".into(),
            pod_namespace: "ns".into(),
            pod_name: "pod-0".into(),
            pod_uid: "c6a6e0c4-1b7c-4b8e-9d3f-0a1b2c3d4e5f".into(),
            network: "green".into(),
            if_mac: None,
            config: None,
            requested: None,
        }
    }

    #[test]
    fn cni_args_follow_the_kactus_contract() {
        let target = ValidTarget::new(&attachment()).unwrap();
        assert_eq!(
            target.cni_args,
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod-0;\
             K8S_POD_INFRA_CONTAINER_ID=0123abcd;K8S_POD_UID=c6a6e0c4-1b7c-4b8e-9d3f-0a1b2c3d4e5f;\
             K8S_POD_NETWORK=green"
        );
        assert!(target.capability_args.is_empty());
    }

    #[test]
    fn if_mac_is_appended_and_offered_as_mac_capability() {
        let mut a = attachment();
        a.if_mac = Some("02:00:00:00:00:01".into());
        let target = ValidTarget::new(&a).unwrap();
        assert!(
            target
                .cni_args
                .ends_with(";K8S_POD_NETWORK=green;K8S_POD_IFMAC=02:00:00:00:00:01")
        );
        assert_eq!(target.capability_args["mac"], "02:00:00:00:00:01");
    }

    #[test]
    fn npwg_requests_reach_cni_args_and_capabilities_as_multus_passes_them() {
        let mut a = attachment();
        a.if_mac = Some("02:00:00:00:00:01".into());
        a.requested = Some(Requested {
            ips: vec!["198.18.77.5/24".into(), "2001:db8::5/64".into()],
            port_mappings: vec![serde_json::json!({"hostPort": 8080, "containerPort": 80})],
            bandwidth: Some(
                serde_json::json!({"ingressRate": 1000})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        });
        let target = ValidTarget::new(&a).unwrap();
        assert!(
            target.cni_args.ends_with(
                ";K8S_POD_IFMAC=02:00:00:00:00:01;MAC=02:00:00:00:00:01;\
                 IP=198.18.77.5/24,2001:db8::5/64"
            ),
            "{}",
            target.cni_args
        );
        assert_eq!(
            Value::Object(target.capability_args),
            serde_json::json!({"mac": "02:00:00:00:00:01",
                "ips": ["198.18.77.5/24", "2001:db8::5/64"],
                "portMappings": [{"hostPort": 8080, "containerPort": 80}],
                "bandwidth": {"ingressRate": 1000}})
        );
    }

    #[test]
    fn separators_in_values_cannot_forge_keys() {
        for (field, value) in [
            ("pod name", "x;IP=1.2.3.4"),
            ("network", "a=b"),
            ("pod uid", ""),
        ] {
            let mut a = attachment();
            match field {
                "pod name" => a.pod_name = value.into(),
                "network" => a.network = value.into(),
                _ => a.pod_uid = value.into(),
            }
            let err = ValidTarget::new(&a).unwrap_err();
            assert!(
                matches!(&err, CniError::InvalidTarget { field: f, .. } if *f == field),
                "{err}"
            );
        }
    }

    #[test]
    fn unsafe_sandbox_ids_and_ifnames_are_rejected() {
        for id in ["", "../x", "a/b", ".hidden"] {
            assert!(validate_sandbox_id(id).is_err(), "{id:?}");
        }
        for name in ["", "a/b", "a:b", "a b", "..", "sixteen_chars_xx"] {
            assert!(validate_ifname(name).is_err(), "{name:?}");
        }
        assert!(validate_ifname("net9f27410725ab").is_ok());
    }

    #[test]
    fn search_dirs_start_with_vendor_or_type_dir() {
        let mut settings = Settings {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            vendor: None,
            timeout: std::time::Duration::from_secs(1),
            env_passthrough: vec![],
            cache_dir: "/var/lib/podagent/cni".into(),
            host_root: None,
        };
        let dirs = search_dirs(&settings, "kactus");
        assert_eq!(dirs[0], Path::new("/opt/kactus/bin"));
        assert_eq!(dirs[1..], settings.bin_dirs[..]);
        settings.vendor = Some("kaloom".into());
        assert_eq!(
            search_dirs(&settings, "kactus")[0],
            Path::new("/opt/kaloom/cni/bin")
        );
    }

    #[test]
    fn environment_is_minimal() {
        let target = ValidTarget::new(&attachment()).unwrap();
        let mut settings = Settings {
            env_passthrough: vec!["PODAGENT_SURELY_UNSET_VAR".into()],
            ..Settings::default()
        };
        let env = plugin_env(
            Op::Del,
            &["/a".into(), "/b".into()],
            Some((&target, "X=1")),
            &settings,
        );
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "CNI_COMMAND",
                "CNI_PATH",
                "CNI_CONTAINERID",
                "CNI_NETNS",
                "CNI_IFNAME",
                "CNI_ARGS",
                "PATH"
            ]
        );
        assert_eq!(env[1].1, "/a:/b");
        assert_eq!(env[5].1, "X=1");

        // In the node's root, the node's PATH, not the container's.
        settings.host_root = Some("/host".into());
        let env = plugin_env(Op::Version, &[], None, &settings);
        assert_eq!(env.last().unwrap(), &("PATH".into(), DEFAULT_PATH.into()));
    }

    #[test]
    fn plugins_in_the_host_root_are_found_through_its_own_links() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let root = tempfile::tempdir().unwrap();
        let at = |p: &str| root.path().join(p);
        for dir in ["usr/libexec/cni", "opt/cni", "opt/vendor/cni/bin"] {
            std::fs::create_dir_all(at(dir)).unwrap();
        }
        std::fs::write(at("usr/libexec/cni/bridge"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            at("usr/libexec/cni/bridge"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(at("usr/libexec/cni/plain"), "").unwrap();
        // Absolute links are the node's: they resolve inside the root, as after a chroot.
        symlink("/usr/libexec/cni", at("opt/cni/bin")).unwrap();
        symlink(
            "../../../../usr/libexec/cni/bridge",
            at("opt/vendor/cni/bin/up"),
        )
        .unwrap();
        symlink("/opt/vendor/cni/bin/loop", at("opt/vendor/cni/bin/loop")).unwrap();
        let settings = Settings {
            host_root: Some(root.path().to_owned()),
            ..Settings::default()
        };
        let dirs = [
            PathBuf::from("/opt/vendor/cni/bin"),
            PathBuf::from("/opt/cni/bin"),
        ];

        assert_eq!(
            find_plugin(&settings, &dirs, "bridge"),
            Ok(PathBuf::from("/opt/cni/bin/bridge")),
            "the path to run after the chroot"
        );
        // `..` past the top stays at the root.
        assert_eq!(
            find_plugin(&settings, &dirs, "up"),
            Ok(PathBuf::from("/opt/vendor/cni/bin/up"))
        );
        assert_eq!(find_plugin(&settings, &dirs, "loop"), Err(Lookup::Missing));
        assert_eq!(find_plugin(&settings, &dirs, "none"), Err(Lookup::Missing));
        assert_eq!(
            find_plugin(&settings, &dirs, "plain"),
            Err(Lookup::NotExecutable(at("opt/cni/bin/plain"))),
            "named as podagent sees it"
        );
        // Without a host root the same absolute link is the container's own path.
        let outside = Settings::default();
        let dirs = [at("opt/cni/bin")];
        assert_eq!(find_plugin(&outside, &dirs, "bridge"), Err(Lookup::Missing));
    }
}
