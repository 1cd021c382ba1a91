//! The fuzzed entry points and the properties each one must keep on any input.
//!
//! Each function takes raw bytes the way they reach podagent from outside (an annotation value
//! written by any user who can edit a pod, a CNI plugin's stdout, a runtime's verbose sandbox
//! info, a state file on disk) and calls the same public parser podagent runs on them. Beyond
//! "no panic, no stack overflow, no runaway memory", which libFuzzer watches, they assert what
//! the rest of podagent relies on when a parser says yes. The functions live here, not in the
//! fuzz targets, so that the main test suite (`tests/hostile.rs`) replays the checked-in corpus
//! through exactly the same code without libFuzzer.

use std::collections::HashMap;
use std::path::Path;

use podagent::annotation::{self, MAX_ANNOTATION_BYTES, npwg};
use podagent::fuzzing::{CniResult, FORMAT_VERSION, PluginError, decode_record, sandbox_netns};
use podagent::store::PodRecord;

/// The `networks` annotation parser: what it accepts is safe to put into `CNI_ARGS`, interface
/// names and file names, and survives a serialise/parse round trip unchanged.
pub fn annotation(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        // Annotation values are strings in the API object: never anything but UTF-8.
        return;
    };
    let selections = match annotation::parse(Some(text)) {
        Ok(selections) => selections,
        Err(err) => {
            assert!(!err.to_string().is_empty());
            return;
        }
    };
    assert!(selections.len() <= annotation::MAX_NETWORKS);
    for selection in &selections {
        let name = &selection.name;
        assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
            "accepted name {name:?} has a character that means something in CNI_ARGS or a path"
        );
        assert!(!name.contains(".."), "{name:?}");
        assert!(annotation::is_attachment_ifname(&selection.ifname()));
        if let Some(mac) = selection.if_mac {
            let octets = mac.octets();
            assert_eq!(octets[0] & 1, 0, "accepted multicast MAC {mac}");
            assert_ne!(octets, [0; 6]);
        }
    }
    let again = serde_json::to_string(&selections).expect("selections serialise");
    if again.len() <= MAX_ANNOTATION_BYTES {
        assert_eq!(
            annotation::parse(Some(&again)).as_ref(),
            Ok(&selections),
            "round trip of {again}"
        );
    }
}

/// The NPWG annotation parser (`k8s.v1.cni.cncf.io/networks`, both forms): what it accepts
/// has safe names and interface names, and the JSON form of it parses back to the same.
pub fn npwg_annotation(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let elements = match npwg::parse(Some(text)) {
        Ok(elements) => elements,
        Err(err) => {
            assert!(!err.to_string().is_empty());
            return;
        }
    };
    assert!(elements.len() <= annotation::MAX_NETWORKS);
    for element in &elements {
        let safe = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        assert!(safe(&element.name), "{:?}", element.name);
        assert!(element.namespace.as_deref().is_none_or(safe));
        if let Some(interface) = &element.interface {
            assert!((1..=15).contains(&interface.len()), "{interface:?}");
            assert!(
                interface
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
                "{interface:?}"
            );
        }
    }
    let json: Vec<serde_json::Value> = elements.iter().map(npwg::Element::to_json).collect();
    let again = serde_json::to_string(&json).expect("elements serialise");
    if again.len() <= MAX_ANNOTATION_BYTES {
        assert_eq!(
            npwg::parse(Some(&again)).as_ref(),
            Ok(&elements),
            "round trip of {again}"
        );
    }
}

/// A plugin's stdout: as an ADD result (every address refers to a listed interface; an
/// interface's addresses are only ever reported for a sandbox interface of that name, so a result
/// that lies about the interface name yields nothing for ours) and as an error object.
pub fn cni_result(data: &[u8]) {
    if let Ok(result) = CniResult::from_slice(data) {
        for ip in &result.ips {
            if let Some(index) = ip.interface {
                assert!(index < result.interfaces.len());
            }
        }
        let names = result.interfaces.iter().map(|i| i.name.as_str());
        for name in names.chain(["net9f27410725ab"]) {
            if !result.interfaces.is_empty() && result.sandbox_interface(name).is_none() {
                assert!(result.ips_of(name).is_empty(), "{:?}", result.raw);
                assert_eq!(result.mac_of(name), None);
            }
        }
    }
    if let Some(error) = PluginError::parse(data) {
        assert!(error.code.is_some() || !error.msg.is_empty());
    }
}

/// A runtime's verbose `PodSandboxStatus` info: a yes is a usable absolute netns path.
pub fn verbose_info(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        // The CRI info map holds protobuf strings: UTF-8 by construction.
        return;
    };
    let info = HashMap::from([("info".to_owned(), text.to_owned())]);
    if let Ok(path) = sandbox_netns(&info) {
        assert!(!path.as_os_str().is_empty());
    }
}

/// A state file's content: a record is accepted only for the pod its file names, consistent,
/// and writing it back gives the same record.
pub fn state_file(data: &[u8]) {
    const UID: &str = "6f1c2a0e-3b7d-4c1e-9a55-0d9e8f7a6b5c";
    let file = Path::new("/var/lib/podagent/6f1c2a0e-3b7d-4c1e-9a55-0d9e8f7a6b5c.json");
    let Ok(record) = decode_record(file, UID, data) else {
        return;
    };
    assert_eq!(record.uid, UID);
    for (ifname, attachment) in &record.attachments {
        assert_eq!(&attachment.ifname, ifname);
        assert_eq!(attachment.ifname, attachment.selection.ifname());
    }
    let written =
        serde_json::to_vec(&serde_json::json!({"version": FORMAT_VERSION, "record": &record}))
            .expect("records serialise");
    let reread: PodRecord = decode_record(file, UID, &written).expect("written record reads back");
    assert_eq!(reread, record);
}
