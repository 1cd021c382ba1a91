//! Hostile and broken input at podagent's edges: each case asserts a clear error naming what
//! is wrong, no panic, and nothing touched that should not be.
//!
//! The per-module unit tests already cover the common cases (bad JSON, wrong types, bad names
//! and MACs, case-only duplicates, truncated/empty/future/symlinked state files, a symlinked
//! cache entry); this file holds what crosses modules or goes to the extremes (sizes, nesting
//! depth, forged files), the security properties SECURITY.md promises, and the replay of the
//! checked-in fuzz corpus through the very functions the fuzz targets call.

#[path = "../fuzz/src/lib.rs"]
mod fuzz_checks;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use podagent::annotation::{self, AnnotationError, MAX_ANNOTATION_BYTES, MAX_NETWORKS};
use podagent::cni::{self, Cni, CniError, CniResult, Invoker, Settings};
use podagent::fuzzing::{FORMAT_VERSION, VerboseInfoError, decode_record, sandbox_netns};
use podagent::kubeapi::PodView;
use podagent::plan::{self, Observed, PlanInput, PodFacts, SkipReason, Step};
use podagent::store::{self, Store, StoreError};
use serde_json::json;

const UID: &str = "6f1c2a0e-3b7d-4c1e-9a55-0d9e8f7a6b5c";
const GREEN_IF: &str = "net9f27410725ab";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Fuzz corpus replay

#[test]
fn checked_in_fuzz_corpus_replays_through_every_target() {
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 5] = [
        ("annotation", fuzz_checks::annotation),
        ("npwg_annotation", fuzz_checks::npwg_annotation),
        ("cni_result", fuzz_checks::cni_result),
        ("verbose_info", fuzz_checks::verbose_info),
        ("state_file", fuzz_checks::state_file),
    ];
    for (target, check) in targets {
        let dir = repo().join("fuzz/corpus").join(target);
        let files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .map(|entry| entry.expect("corpus entry").path())
            .collect();
        assert!(
            files.len() >= 3,
            "corpus {} has {} files, expected a seed set",
            dir.display(),
            files.len()
        );
        for file in files {
            let bytes = fs::read(&file).expect("corpus file");
            check(&bytes);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The networks annotation

fn annotation_of(entries: usize, entry: &str) -> String {
    format!("[{}]", vec![entry; entries].join(","))
}

#[test]
fn hostile_npwg_annotations_are_refused_with_the_reason() {
    use podagent::annotation::npwg;
    let many = vec!["a"; 10_000].join(",");
    assert_eq!(
        npwg::parse(Some(&many)),
        Err(AnnotationError::TooMany {
            count: 10_000,
            max: MAX_NETWORKS
        })
    );
    let deep = format!(
        r#"[{{"name":"a","cni-args":{{"x":{}1{}}}}}]"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(
        matches!(
            npwg::parse(Some(&deep)),
            Err(AnnotationError::NotJson { .. })
        ),
        "nesting is cut off by the JSON parser's depth limit"
    );
    // Nothing that means something in CNI_ARGS, a path, a log line or to a terminal gets in.
    for name in [
        "a;IP=198.18.0.9",
        "a=b",
        "a\nb",
        "ä",
        "a b",
        "../a",
        "a/b/c",
    ] {
        for text in [
            name.to_owned(),
            serde_json::json!([{ "name": name }]).to_string(),
        ] {
            assert!(
                matches!(
                    npwg::parse(Some(&text)),
                    Err(AnnotationError::Invalid { .. })
                ),
                "{text:?} accepted"
            );
        }
    }
    for interface in ["eth0;x", "жж", "a b", "../x", "a\u{200b}b", "eth0\n"] {
        let text = serde_json::json!([{ "name": "a", "interface": interface }]).to_string();
        assert!(
            matches!(
                npwg::parse(Some(&text)),
                Err(AnnotationError::Invalid { .. })
            ),
            "{text:?} accepted"
        );
    }
}

#[test]
fn ten_thousand_entries_are_refused_by_count_or_by_size() {
    let small = annotation_of(10_000, "{}");
    assert!(small.len() <= MAX_ANNOTATION_BYTES);
    assert_eq!(
        annotation::parse(Some(&small)),
        Err(AnnotationError::TooMany {
            count: 10_000,
            max: MAX_NETWORKS
        })
    );
    let named: Vec<String> = (0..10_000)
        .map(|i| format!(r#"{{"name":"n{i}"}}"#))
        .collect();
    let big = format!("[{}]", named.join(","));
    let err = annotation::parse(Some(&big)).unwrap_err();
    assert_eq!(
        err,
        AnnotationError::TooLarge {
            size: big.len(),
            max: MAX_ANNOTATION_BYTES
        }
    );
    assert!(err.to_string().contains("bytes, more than"), "{err}");
}

#[test]
fn a_mebibyte_of_text_is_refused_before_it_is_parsed() {
    let mib = 1 << 20;
    for text in [
        "x".repeat(mib),
        format!("[{}]", r#"{"name":"a"},"#.repeat(mib / 12)),
    ] {
        match annotation::parse(Some(&text)) {
            Err(AnnotationError::TooLarge { size, max }) => {
                assert_eq!((size, max), (text.len(), MAX_ANNOTATION_BYTES));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }
}

#[test]
fn deeply_nested_annotation_is_invalid_json_not_a_stack_overflow() {
    let depth = MAX_ANNOTATION_BYTES / 2 - 1;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let err = annotation::parse(Some(&nested)).unwrap_err();
    assert!(matches!(err, AnnotationError::NotJson { .. }), "{err:?}");
    assert!(err.to_string().contains("recursion limit"), "{err}");
    let in_an_entry = format!(
        r#"[{{"name":"a","extra":{}{}}}]"#,
        "{\"x\":".repeat(1000),
        "1".to_owned() + &"}".repeat(1000)
    );
    assert!(matches!(
        annotation::parse(Some(&in_an_entry)),
        Err(AnnotationError::NotJson { .. })
    ));
}

#[test]
fn hostile_names_are_refused_and_shown_escaped_and_short() {
    let long = "a".repeat(300);
    for name in [
        "green;K8S_POD_NAME=other",
        "IP=198.18.0.1",
        "../../etc/passwd",
        "a/b",
        "..",
        "a..b",
        "green net",
        "grün",
        "ネット",
        "green\nIgnoreUnknown=1",
        "green\u{0}",
        "green\u{202e}",
        long.as_str(),
    ] {
        let value = json!([{ "name": name }]).to_string();
        let err = annotation::parse(Some(&value)).unwrap_err();
        let AnnotationError::Invalid { problems } = &err else {
            panic!("{name:?}: expected Invalid, got {err:?}");
        };
        assert_eq!(problems.len(), 1, "{name:?}: {problems:?}");
        assert_eq!(
            (problems[0].index, problems[0].field),
            (0, Some("name")),
            "{name:?}"
        );
        let text = err.to_string();
        // What a user reads in an Event: one line, no raw control characters, bounded.
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.len() < 300, "{} bytes: {text}", text.len());
    }
}

#[test]
fn malformed_and_multicast_macs_are_refused_with_the_field() {
    for mac in [
        "01:00:5e:00:00:01",
        "33:33:00:00:00:01",
        "ff:ff:ff:ff:ff:ff",
        "00:00:00:00:00:00",
        "00-11-22-33-44-55",
        "0:1:2:3:4:5",
        "00:11:22:33:44:55:66",
        "+0:11:22:33:44:55",
        "00:11:22:33:44:5g",
        "00:11:22:33:44:55;IP=198.18.0.1",
        "０0:11:22:33:44:55",
    ] {
        let value = json!([{ "name": "green", "ifMac": mac }]).to_string();
        match annotation::parse(Some(&value)) {
            Err(AnnotationError::Invalid { problems }) => {
                assert_eq!(
                    problems.iter().map(|p| p.field).collect::<Vec<_>>(),
                    [Some("ifMac")],
                    "{mac}"
                );
            }
            other => panic!("{mac}: expected Invalid, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pods as the API server may send them

fn pod(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).expect("a Pod object")
}

#[test]
fn pod_without_status_or_spec_is_seen_as_not_running_and_left_alone() {
    let bare = pod(
        json!({"metadata": {"uid": UID, "namespace": "ns", "name": "web",
        "annotations": {"networks": "[{\"name\":\"green\"}]"}}}),
    );
    let view = PodView::from_pod(&bare, "networks").expect("uid, namespace and name are set");
    assert_eq!(view.phase, "");
    assert!(view.container_ids.is_empty() && !view.host_network && !view.deleting);

    let facts = PodFacts {
        running: view.phase == "Running",
        deleting: view.deleting,
        host_network: view.host_network,
        sandbox: None,
    };
    let desired = annotation::parse(view.networks.as_deref());
    let steps = plan::plan(&PlanInput {
        pod: Some(&facts),
        desired: &desired,
        observed: &Observed::Unknown,
        recorded: None,
        owns_teardown: false,
    });
    assert_eq!(steps, [Step::Skip(SkipReason::NotRunning)]);

    // The view of the same pod once the kubelet reports it running differs: it is reconciled.
    let running = pod(
        json!({"metadata": {"uid": UID, "namespace": "ns", "name": "web",
        "annotations": {"networks": "[{\"name\":\"green\"}]"}},
        "status": {"phase": "Running"}}),
    );
    assert_ne!(
        PodView::from_pod(&running, "networks"),
        Some(view),
        "the phase change must be seen"
    );
}

#[test]
fn pod_without_uid_name_or_namespace_has_no_view() {
    for meta in [
        json!({"namespace": "ns", "name": "web"}),
        json!({"uid": UID, "name": "web"}),
        json!({"uid": UID, "namespace": "ns"}),
        json!({}),
    ] {
        let p = pod(json!({ "metadata": meta }));
        assert_eq!(PodView::from_pod(&p, "networks"), None, "{meta}");
    }
}

#[test]
fn a_pod_uid_that_is_a_path_never_names_a_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("state")).unwrap();
    let outside = dir.path().join("victim.json");
    fs::write(&outside, b"keep me").unwrap();
    for uid in ["../victim", "/etc/passwd", "a/../../victim", ".hidden", ""] {
        let record = store::PodRecord {
            status_interfaces: Default::default(),
            uid: uid.to_owned(),
            namespace: "ns".into(),
            name: "web".into(),
            sandbox_id: "0123abcd".into(),
            netns: "/var/run/netns/x".into(),
            attachments: Default::default(),
        };
        assert!(
            matches!(store.put(&record), Err(StoreError::InvalidRecord { .. })),
            "{uid:?}"
        );
        let err = store.remove(uid).unwrap_err();
        assert!(matches!(err, StoreError::InvalidUid { .. }), "{uid:?}");
        assert!(
            err.to_string().contains("cannot name a state file"),
            "{err}"
        );
    }
    assert_eq!(fs::read(&outside).unwrap(), b"keep me");
    assert_eq!(fs::read_dir(store.dir()).unwrap().count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Runtime verbose info

fn verbose(text: &str) -> HashMap<String, String> {
    HashMap::from([("info".to_owned(), text.to_owned())])
}

#[test]
fn verbose_info_without_a_netns_is_an_error_saying_so() {
    for (text, expected) in [
        // A spec without namespaces shares every one of the node's.
        (r#"{"pid":9,"runtimeSpec":{"linux":{}}}"#, "host network"),
        (
            r#"{"runtimeSpec":{"linux":{"namespaces":[{"type":"network","path":""}]}}}"#,
            "neither a network namespace path",
        ),
        (
            r#"{"pid":-1,"runtimeSpec":{}}"#,
            "neither a network namespace path",
        ),
        (
            r#"{"pid":9,"runtimeSpec":{"linux":{"namespaces":[]}}}"#,
            "host network",
        ),
    ] {
        let err = sandbox_netns(&verbose(text)).unwrap_err();
        assert!(err.to_string().contains(expected), "{text}: {err}");
    }
}

#[test]
fn garbage_and_deeply_nested_verbose_info_is_an_error_not_a_crash() {
    let depth = 100_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    for text in [
        "",
        "\u{0}\u{1}garbage",
        "[1,2,3]",
        r#"{"runtimeSpec":{"linux":{"namespaces":[{"path":"/x"}]}}}"#,
        r#"{"runtimeSpec":{"linux":{"namespaces":"network"}}}"#,
        &nested,
    ] {
        assert!(
            matches!(
                sandbox_netns(&verbose(text)),
                Err(VerboseInfoError::InvalidJson(_))
            ),
            "{:?}",
            text.chars().take(60).collect::<String>()
        );
    }
    // Deep nesting inside a field podagent does not read is skipped without recursion.
    let ignored = format!(r#"{{"pid":7,"other":{nested}}}"#);
    assert_eq!(
        sandbox_netns(&verbose(&ignored)).ok(),
        Some(PathBuf::from("/proc/7/ns/net"))
    );
}

// ---------------------------------------------------------------------------------------------
// CNI results

#[test]
fn a_result_that_lies_about_the_interface_name_gives_nothing_for_ours() {
    let lying = json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/var/run/netns/x"},
            {"name": GREEN_IF, "mac": "02:00:00:00:00:02"}
        ],
        "ips": [{"address": "198.18.4.2/24", "interface": 0},
                {"address": "198.18.4.3/24", "interface": 1}]
    })
    .to_string();
    let result = CniResult::from_slice(lying.as_bytes()).expect("well-formed result");
    assert_eq!(
        result.mac_of(GREEN_IF),
        None,
        "host-side interface of our name"
    );
    assert!(result.ips_of(GREEN_IF).is_empty());
    assert_eq!(result.mac_of("eth0"), Some("02:00:00:00:00:01"));

    let dangling = json!({"interfaces": [{"name": GREEN_IF, "sandbox": "/x"}],
        "ips": [{"address": "198.18.4.2/24", "interface": 7}]})
    .to_string();
    let err = CniResult::from_slice(dangling.as_bytes()).unwrap_err();
    assert!(err.contains("refers to interface 7"), "{err}");
}

#[test]
fn deeply_nested_cni_output_is_an_error_not_a_stack_overflow() {
    let nested = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    let err = CniResult::from_slice(nested.as_bytes()).unwrap_err();
    assert!(err.contains("recursion limit"), "{err}");
    // Nesting in an unknown field still has to be held in the raw result: refused too.
    let in_a_field = format!(r#"{{"cniVersion":"1.0.0","x":{nested}}}"#);
    assert!(CniResult::from_slice(in_a_field.as_bytes()).is_err());
    assert_eq!(cni::PluginError::parse(nested.as_bytes()), None);
}

#[test]
fn a_result_as_large_as_the_output_cap_parses_within_bounds() {
    // The exec layer caps stdout at 1 MiB (tests/cni.rs: ten_megabytes_of_stdout_is_output_too_large);
    // what fits must parse, however many entries it lists.
    let ips: Vec<_> = (0..20_000)
        .map(|i| json!({"address": format!("198.18.{}.{}/32", i / 250, i % 250 + 1), "interface": 0}))
        .collect();
    let big = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": GREEN_IF, "sandbox": "/x"}], "ips": ips})
    .to_string();
    assert!(big.len() < 1 << 20, "{}", big.len());
    let result = CniResult::from_slice(big.as_bytes()).expect("large result");
    assert_eq!(result.ips_of(GREEN_IF).len(), 20_000);
}

// ---------------------------------------------------------------------------------------------
// State files

fn forged_record(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"version": FORMAT_VERSION, "record": {
        "uid": UID, "namespace": "ns", "name": "web", "sandboxId": "0123abcd",
        "netns": "/var/run/netns/x",
        "attachments": {annotation::ifname(name): {
            "selection": {"name": name}, "ifname": annotation::ifname(name), "phase": "Attached"
        }}
    }}))
    .unwrap()
}

#[test]
fn a_state_file_naming_a_network_the_annotation_would_refuse_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{UID}.json"));
    let valid = decode_record(&file, UID, &forged_record("green")).expect("valid");
    assert_eq!(valid.attachments[GREEN_IF].ifname, GREEN_IF);

    for name in ["a;IP=198.18.0.9", "../x", "Green", "a b", "x\ny"] {
        let err = decode_record(&file, UID, &forged_record(name)).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{name:?}: {err}");
        assert!(err.to_string().contains("network name"), "{err}");
    }
    // An interface name asked for (NPWG mode) is held to the kernel's rules and must key its
    // attachment: no path, no CNI_ARGS separator, no second network behind one key.
    for interface in ["../x", "eth0;IP=1", "", "a-very-long-ifname0", "eth 9"] {
        let forged = serde_json::to_vec(&json!({"version": FORMAT_VERSION, "record": {
            "uid": UID, "namespace": "ns", "name": "web", "sandboxId": "0123abcd",
            "netns": "/var/run/netns/x",
            "attachments": {interface: {
                "selection": {"name": "green", "interface": interface},
                "ifname": interface, "phase": "Attached"
            }}
        }}))
        .unwrap();
        let err = decode_record(&file, UID, &forged).unwrap_err();
        assert!(
            err.to_string().contains("interface"),
            "{interface:?}: {err}"
        );
    }

    let store = Store::open(dir.path()).unwrap();
    fs::write(&file, forged_record("a;IP=198.18.0.9")).unwrap();
    let loaded = store.load_all().unwrap();
    assert!(loaded.records.is_empty());
    let moved = loaded.bad_files[0].moved_to.as_ref().expect("moved aside");
    assert!(moved.exists() && !file.exists());
}

#[test]
fn huge_nested_fifo_and_directory_state_files_are_set_aside_and_good_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let good = decode_record(Path::new("x"), UID, &forged_record("green")).unwrap();
    store.put(&good).unwrap();

    let huge = dir.path().join("huge.json");
    fs::File::create(&huge)
        .unwrap()
        .set_len(5 * 1024 * 1024)
        .unwrap();
    // The CNI result kept in a record is free-form JSON: the one place nesting could hide.
    let nested = String::from_utf8(forged_record("green")).unwrap().replace(
        r#""phase":"Attached""#,
        &format!(
            r#""phase":"Attached","result":{}{}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
    );
    fs::write(dir.path().join("nested.json"), nested).unwrap();
    nix::unistd::mkfifo(&dir.path().join("fifo.json"), nix::sys::stat::Mode::S_IRUSR).unwrap();
    fs::create_dir(dir.path().join("dir.json")).unwrap();

    let loaded = store.load_all().unwrap();
    assert_eq!(loaded.records, [good]);
    let mut errors: Vec<String> = loaded
        .bad_files
        .iter()
        .map(|bad| bad.error.to_string())
        .collect();
    errors.sort();
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(
        errors[0].contains("dir.json: not a regular file"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("fifo.json: not a regular file"),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].contains("huge.json: 5242880 bytes, more than"),
        "{}",
        errors[2]
    );
    assert!(
        errors[3].contains("nested.json: not a valid record"),
        "{}",
        errors[3]
    );
    assert!(errors[3].contains("recursion limit"), "{}", errors[3]);
    assert!(loaded.bad_files.iter().all(|bad| bad.moved_to.is_some()));
}

// ---------------------------------------------------------------------------------------------
// The private CNI result cache, through the public invoker

struct CacheLab {
    dir: tempfile::TempDir,
}

impl CacheLab {
    fn new() -> CacheLab {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("net.d")).unwrap();
        fs::create_dir(dir.path().join("cache")).unwrap();
        CacheLab { dir }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// An invoker whose conf dir is empty: any attempt to get as far as running a plugin
    /// fails with `NoConfig`, which proves the cache check stopped it earlier.
    fn invoker(&self) -> Invoker {
        Invoker::new(self.settings())
    }

    fn settings(&self) -> Settings {
        Settings {
            conf_dir: self.dir.path().join("net.d"),
            bin_dirs: vec!["/usr/lib/cni".into()],
            vendor: None,
            timeout: Duration::from_secs(5),
            env_passthrough: vec![],
            cache_dir: self.cache(),
            host_root: None,
        }
    }
}

fn attachment() -> cni::Target {
    cni::Target {
        sandbox_id: "0123abcd".into(),
        netns: "/var/run/netns/podagent-hostile-absent".into(),
        ifname: GREEN_IF.into(),
        pod_namespace: "ns".into(),
        pod_name: "web".into(),
        pod_uid: UID.into(),
        network: "green".into(),
        if_mac: None,
        config: None,
        requested: None,
    }
}

fn cache_file(lab: &CacheLab) -> PathBuf {
    lab.cache().join(format!("net-0123abcd-{GREEN_IF}.json"))
}

#[tokio::test]
async fn a_corrupt_cache_entry_stops_del_and_names_the_file() {
    let lab = CacheLab::new();
    fs::write(cache_file(&lab), b"{\"kind\":\"podagentCniCacheV1\",\"netw").unwrap();
    let err = lab.invoker().del(&attachment()).await.unwrap_err();
    assert!(matches!(err, CniError::CacheCorrupt { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&cache_file(&lab).display().to_string()),
        "{err}"
    );
    assert!(cache_file(&lab).exists(), "left for the operator");
}

#[tokio::test]
async fn a_symlinked_cache_entry_or_dir_is_refused_and_its_target_untouched() {
    let lab = CacheLab::new();
    let elsewhere = lab.dir.path().join("elsewhere.json");
    fs::write(&elsewhere, b"{}").unwrap();
    symlink(&elsewhere, cache_file(&lab)).unwrap();
    let err = lab.invoker().del(&attachment()).await.unwrap_err();
    assert!(err.to_string().contains("it is a symlink"), "{err}");
    assert_eq!(fs::read(&elsewhere).unwrap(), b"{}");

    let lab = CacheLab::new();
    let real = lab.dir.path().join("real-cache");
    fs::create_dir(&real).unwrap();
    fs::remove_dir(lab.cache()).unwrap();
    symlink(&real, lab.cache()).unwrap();
    let err = lab.invoker().del(&attachment()).await.unwrap_err();
    assert!(
        matches!(err, CniError::Cache { action: "open", .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_cache_entry_of_another_sandbox_under_our_name_is_not_used() {
    let lab = CacheLab::new();
    // A file named for our (sandbox, ifname) whose content belongs elsewhere.
    let planted = json!({"kind": "podagentCniCacheV1", "networkName": "net",
        "containerId": "ffff", "ifName": "eth0",
        "config": "{\"cniVersion\":\"1.0.0\",\"name\":\"net\",\"type\":\"evil\"}",
        "cniArgs": "IgnoreUnknown=1", "capabilityArgs": {}, "result": {}});
    fs::write(cache_file(&lab), planted.to_string()).unwrap();
    let err = lab.invoker().del(&attachment()).await.unwrap_err();
    // Not from the planted config: DEL fell through to the (empty) node config.
    assert!(matches!(err, CniError::NoConfig { .. }), "{err}");
    assert!(cache_file(&lab).exists());
}

// ---------------------------------------------------------------------------------------------
// Security properties SECURITY.md relies on

#[tokio::test]
async fn pod_fields_that_would_forge_cni_args_are_refused_before_any_plugin_runs() {
    let lab = CacheLab::new();
    let forge = |field: &str, value: &str| {
        let mut a = attachment();
        match field {
            "namespace" => a.pod_namespace = value.into(),
            "name" => a.pod_name = value.into(),
            "uid" => a.pod_uid = value.into(),
            "network" => a.network = value.into(),
            "mac" => a.if_mac = Some(value.into()),
            "sandbox" => a.sandbox_id = value.into(),
            "ifname" => a.ifname = value.into(),
            _ => unreachable!(),
        }
        a
    };
    for (field, value) in [
        ("namespace", "ns;IP=198.18.0.9"),
        ("name", "web;K8S_POD_NETWORK=other"),
        ("uid", "u=1"),
        ("network", "green\nIP=198.18.0.9"),
        ("mac", "02:00:00:00:00:01;IP=198.18.0.9"),
        ("sandbox", "../../etc"),
        ("ifname", "../x"),
    ] {
        for result in [
            lab.invoker().add(&forge(field, value)).await.err(),
            lab.invoker().del(&forge(field, value)).await.err(),
        ] {
            let err = result.expect("refused");
            assert!(
                matches!(err, CniError::InvalidTarget { .. }),
                "{field}={value:?}: {err}"
            );
        }
    }
    assert_eq!(fs::read_dir(lab.cache()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_plugin_is_executed_directly_never_through_a_shell() {
    let lab = CacheLab::new();
    // A plugin file whose name is shell syntax: run through a shell, it would create `ran-by-sh`
    // in the plugin's working directory (`/`) instead of being executed itself.
    let bin = lab.dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let plugin_type = "ok;touch podagent-hostile-ran-by-sh";
    let plugin = bin.join(plugin_type);
    fs::write(
        &plugin,
        "#!/bin/sh\necho \"$0\" > \"$(dirname \"$0\")/ran\"\nprintf '{\"cniVersion\":\"1.0.0\"}'\n",
    )
    .unwrap();
    fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fs::write(
        lab.dir.path().join("net.d/10-x.conf"),
        json!({"cniVersion": "1.0.0", "name": "x", "type": plugin_type}).to_string(),
    )
    .unwrap();
    let invoker = Invoker::new(Settings {
        bin_dirs: vec![bin.clone()],
        ..lab.settings()
    });
    invoker
        .add(&attachment())
        .await
        .expect("ADD by the literal file");
    assert_eq!(
        fs::read_to_string(bin.join("ran")).unwrap().trim(),
        plugin.display().to_string()
    );
    assert!(!Path::new("/podagent-hostile-ran-by-sh").exists());
    invoker.del(&attachment()).await.expect("DEL");
}

#[test]
fn the_metrics_listener_is_the_only_listener_and_binds_to_loopback_by_default() {
    // SECURITY.md: besides the metrics and health listener, podagent only makes outgoing
    // connections (API server, runtime socket, journald, sd_notify). Another listener would
    // need one of these outside src/metrics/server.rs.
    let server = repo().join("src/metrics/server.rs");
    let mut sources = vec![];
    let mut dirs = vec![repo().join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && path != server {
                sources.push(path);
            }
        }
    }
    assert!(sources.len() > 10);
    for file in sources {
        let text = fs::read_to_string(&file).unwrap();
        // Unit tests may run a fake server (a CRI socket); the shipped code may not.
        let shipped = text.split("#[cfg(test)]").next().unwrap_or_default();
        for listener in [
            "TcpListener",
            "UnixListener",
            "UdpSocket",
            ".listen(",
            "axum::serve",
            "warp",
            "hyper::server",
            "tonic::transport::Server",
        ] {
            assert!(
                !shipped.contains(listener),
                "{} mentions {listener}",
                file.display()
            );
        }
    }
    let shipped = fs::read_to_string(repo().join("etc/podagent.toml")).unwrap();
    let listen = shipped
        .split_once("\n[metrics]\n")
        .and_then(|(_, table)| table.lines().find_map(|l| l.strip_prefix("listen = ")))
        .expect("metrics.listen in etc/podagent.toml")
        .trim_matches('"');
    let address: std::net::SocketAddr = listen.parse().expect("an address");
    assert!(
        address.ip().is_loopback(),
        "metrics.listen defaults to {address}"
    );
}

#[tokio::test]
async fn a_world_readable_kubeconfig_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    // A server nobody listens on: the warning must not depend on reaching it.
    fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
         clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         contexts: [{name: c, context: {cluster: c, user: u}}]\n\
         users: [{name: u, user: {token: secret-token}}]\n",
    )
    .unwrap();
    let check = |mode: u32| {
        fs::set_permissions(
            &kubeconfig,
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .unwrap();
        let kubeconfig = kubeconfig.display().to_string();
        let state = dir.path().join("state").display().to_string();
        let conf = dir.path().display().to_string();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_podagent"))
                .args(["check", "--node-name", "n1", "--runtime", "containerd"])
                .args(["--runtime-endpoint", "/nonexistent/podagent-hostile.sock"])
                .args(["--kubeconfig", &kubeconfig, "--cni-conf-dir", &conf])
                .args(["--state-dir", &state])
                .env_remove("RUST_LOG")
                .output()
                .await
                .expect("podagent runs");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!text.contains("secret-token"), "credential printed: {text}");
            text
        }
    };
    let loose = check(0o644).await;
    assert!(
        loose.contains("kubeconfig readable") && loose.contains("world-readable, chmod 600 it"),
        "{loose}"
    );
    let tight = check(0o600).await;
    assert!(tight.contains("kubeconfig readable"), "{tight}");
    assert!(!tight.contains("world-readable"), "{tight}");
}

// ---------------------------------------------------------------------------------------------
// The rest of the node keeps working: the real podagent against the real control plane and a
// private containerd, with hostile pods next to a healthy one.

/// The `net<hash>` links in a netns.
fn net_links(netns: &Path) -> Vec<String> {
    testkit::node::links(netns)
        .iter()
        .filter_map(|link| link["ifname"].as_str())
        .filter(|name| annotation::is_attachment_ifname(name))
        .map(str::to_owned)
        .collect()
}

/// (pod name, annotation, what its Warning must say); the first pod is the healthy one.
type PodCases<'a> = [(&'a str, &'a str, &'a str)];
/// pod name -> (uid, netns).
type PodsSeen<'a> = HashMap<&'a str, (String, PathBuf)>;

/// Every pod but the first gets one `InvalidNetworksAnnotation` Warning saying what it must,
/// in a note short enough to read.
async fn assert_each_hostile_pod_warned(
    node: &testkit::node::Node,
    pods: &PodCases<'_>,
    seen: &PodsSeen<'_>,
) {
    for (name, _, expected) in pods.iter().skip(1) {
        let uid = &seen[name].0;
        let note = node
            .eventually(&format!("a Warning Event for {name}"), || {
                node.events("default", uid, "InvalidNetworksAnnotation")
                    .first()
                    .map(|e| {
                        (
                            e["type"].clone(),
                            e["note"].as_str().unwrap_or("").to_owned(),
                        )
                    })
            })
            .await;
        assert_eq!(note.0, "Warning", "{name}");
        assert!(note.1.contains(expected), "{name}: {}", note.1);
        assert!(
            note.1.len() < 1024,
            "{name}: {} bytes of note",
            note.1.len()
        );
    }
}

/// No pod but the first got a link or a record.
fn assert_no_hostile_pod_touched(
    node: &testkit::node::Node,
    pods: &PodCases<'_>,
    seen: &PodsSeen<'_>,
) {
    for (name, _, _) in pods.iter().skip(1) {
        let added = testkit::node::added_links(&seen[name].1);
        assert!(added.is_empty(), "{name} got {added:?}");
        assert!(node.record(&seen[name].0).is_none(), "{name} has a record");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pods_get_a_warning_and_the_rest_of_the_node_keeps_working() {
    let node = testkit::node::Node::with_containerd(env!("CARGO_BIN_EXE_podagent")).await;

    // name -> annotation; every pod but "good" is hostile.
    let many = annotation_of(10_000, "{}");
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let huge = format!(r#"[{{"name":"green","pad":"{}"}}]"#, "x".repeat(200 * 1024));
    let pods: [(&str, &str, &str); 7] = [
        ("good", r#"[{"name":"green"}]"#, ""),
        ("notjson", r#"[{"name":"#, "not valid JSON"),
        (
            "wrongtypes",
            r#"[{"name":7,"ifMac":true}]"#,
            "[0].name: must be a string",
        ),
        (
            "inject",
            r#"[{"name":"green;IP=198.19.0.1"}]"#,
            "not a DNS-1123 subdomain",
        ),
        ("many", &many, "lists 10000 networks"),
        ("deep", &deep, "recursion limit"),
        ("huge", &huge, "bytes, more than"),
    ];
    let mut netns = HashMap::new();
    for (name, networks, _) in &pods {
        let (uid, sandbox) = node
            .pod_with_annotations("default", name, json!({ "networks": networks }))
            .await;
        netns.insert(*name, (uid, node.netns(&sandbox).await));
    }
    // A pod the kubelet has not reported on yet: no status, no sandbox.
    node.create_pod(
        "default",
        "nostatus",
        json!({"networks": "[{\"name\":\"green\"}]"}),
    );

    let mut agent = node.start_agent();
    let good = netns["good"].1.clone();
    node.eventually("green in the healthy pod", || {
        (net_links(&good) == [GREEN_IF]).then_some(())
    })
    .await;
    assert_each_hostile_pod_warned(&node, &pods, &netns).await;

    // The healthy pod still gets what it asks for after all that.
    node.set_networks(
        "default",
        "good",
        Some(r#"[{"name":"green"},{"name":"blue"}]"#),
    );
    node.eventually("blue added to the healthy pod", || {
        (net_links(&good).len() == 2).then_some(())
    })
    .await;
    assert!(agent.running(), "podagent exited");
    assert_no_hostile_pod_touched(&node, &pods, &netns);
    let nostatus_events: Vec<_> = node
        .all_events("default")
        .into_iter()
        .filter(|e| e["regarding"]["name"] == "nostatus")
        .collect();
    assert!(nostatus_events.is_empty(), "{nostatus_events:?}");
}

/// The same through the NPWG annotation, with podagent in npwg mode: each hostile pod gets a
/// Warning naming the element and field, no link and no record, and the healthy pod next to
/// them keeps getting what it asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_npwg_pods_get_a_warning_and_the_rest_of_the_node_keeps_working() {
    const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
    let node = testkit::node::Node::with_containerd(env!("CARGO_BIN_EXE_podagent")).await;
    node.cluster().install_attachment_definition_crd();
    let bridge = testkit::netns::unique_name("hnb");
    let _links = testkit::netns::HostLinks(vec![bridge.clone()]);
    node.put_bridge_definition("default", "data", "data", &bridge, 1);

    let many = vec!["data"; 10_000].join(",");
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let huge = format!(r#"[{{"name":"data","pad":"{}"}}]"#, "x".repeat(200 * 1024));
    let pods: [(&str, &str, &str); 12] = [
        ("good", "data", ""),
        ("notjson", r#"[{"name":"#, "not valid JSON"),
        (
            "wrongtypes",
            r#"[{"name":7,"interface":true}]"#,
            "[0].name: must be a string",
        ),
        ("inject", "data;IP=198.19.0.1", "not a DNS-1123 subdomain"),
        (
            "ifinject",
            r#"[{"name":"data","interface":"eth9;x"}]"#,
            "[0].interface: \"eth9;x\" has ';'",
        ),
        (
            "multicast",
            r#"[{"name":"data","interface":"eth8","mac":"01:00:5e:00:00:01"}]"#,
            "[0].mac:",
        ),
        (
            "noprefix",
            r#"[{"name":"data","ips":["198.18.0.5"]}]"#,
            "write addresses as 198.18.0.5/24",
        ),
        ("clash", "data, data", "which element [0] already has"),
        (
            "taken",
            "data@eth0",
            "eth0 already exists in the pod and podagent did not add it",
        ),
        ("many", &many, "lists 10000 networks"),
        ("deep", &deep, "recursion limit"),
        ("huge", &huge, "bytes, more than"),
    ];
    let mut seen = HashMap::new();
    for (name, networks, _) in &pods {
        let (uid, sandbox) = node
            .pod_with_annotations("default", name, json!({ NETWORKS: networks }))
            .await;
        seen.insert(*name, (uid, node.netns(&sandbox).await));
    }

    let mut config = node.agent_config();
    config.networks = "mode = \"npwg\"\n".to_owned();
    let mut agent = node.start_agent_with(&config);
    let good = seen["good"].1.clone();
    node.eventually("data in the healthy pod", || {
        (net_links(&good).len() == 1).then_some(())
    })
    .await;
    assert_each_hostile_pod_warned(&node, &pods, &seen).await;

    node.annotate("default", "good", NETWORKS, Some("data, data@eth9"));
    node.eventually("a second interface in the healthy pod", || {
        (testkit::node::added_links(&good).len() == 2).then_some(())
    })
    .await;
    assert!(agent.running(), "podagent exited");
    assert_no_hostile_pod_touched(&node, &pods, &seen);
}
