//! The resource registry: which group/version/resources exist, and the discovery documents
//! clients build their REST mappings from.
//!
//! kubectl resolves `kubectl get networks` or `apply -f network.yaml` purely through discovery, so
//! a resource that is served must also be listed here with the same kind, plural, scope and verbs
//! as on a real server. Built-in types are fixed; custom resources appear when a
//! CustomResourceDefinition is stored and vanish when it is deleted, as on a real server.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

/// How the stored form of an object relates to what one API version shows.
///
/// The real server keeps one internal object per storage and converts on every read and write;
/// only events have two external shapes (`v1` and `events.k8s.io/v1`) here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    Identity,
    EventsV1,
}

/// One served resource of one group/version.
#[derive(Debug)]
pub(crate) struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Storage shared by every API that serves the same objects (e.g. both event APIs).
    pub storage: String,
    pub has_status: bool,
    /// Whether a write to the `status` subresource may also change labels and annotations
    /// (true for pods, whose status strategy does not reset metadata).
    pub status_writes_metadata: bool,
    /// Custom resources: list items keep apiVersion/kind, strategic merge patch is refused.
    pub custom: bool,
    pub codec: Codec,
    /// Field selector labels the real server accepts beyond metadata.name/metadata.namespace.
    pub field_labels: Vec<String>,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The `pods` or `networks.kaloom.com` form used in error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn discovery_entries(&self) -> Vec<Value> {
        let verbs = [
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut entries = vec![main];
        if self.has_status {
            entries.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        entries
    }
}

struct Builtin {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    has_status: bool,
    fields: &'static [&'static str],
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        group: "",
        kind: "Pod",
        plural: "pods",
        namespaced: true,
        short: &["po"],
        has_status: true,
        fields: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
    },
    Builtin {
        group: "",
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
        short: &["ns"],
        has_status: true,
        fields: &["status.phase"],
    },
    Builtin {
        group: "",
        kind: "Node",
        plural: "nodes",
        namespaced: false,
        short: &["no"],
        has_status: true,
        fields: &["spec.unschedulable"],
    },
    Builtin {
        group: "",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        namespaced: true,
        short: &["sa"],
        has_status: false,
        fields: &[],
    },
    Builtin {
        group: "",
        kind: "Secret",
        plural: "secrets",
        namespaced: true,
        short: &[],
        has_status: false,
        fields: &["type"],
    },
    Builtin {
        group: "",
        kind: "ConfigMap",
        plural: "configmaps",
        namespaced: true,
        short: &["cm"],
        has_status: false,
        fields: &[],
    },
    Builtin {
        group: "",
        kind: "Event",
        plural: "events",
        namespaced: true,
        short: &["ev"],
        has_status: false,
        fields: &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
    },
    Builtin {
        group: "events.k8s.io",
        kind: "Event",
        plural: "events",
        namespaced: true,
        short: &["ev"],
        has_status: false,
        fields: &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "type",
        ],
    },
    Builtin {
        group: "apiextensions.k8s.io",
        kind: "CustomResourceDefinition",
        plural: "customresourcedefinitions",
        namespaced: false,
        short: &["crd", "crds"],
        has_status: true,
        fields: &[],
    }, // Stored only (no controller acts on them): the project's manifests apply to kube-sim
    // with kubectl, like to a real cluster.
    Builtin {
        group: "apps",
        kind: "DaemonSet",
        plural: "daemonsets",
        namespaced: true,
        short: &["ds"],
        has_status: true,
        fields: &[],
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        kind: "ClusterRole",
        plural: "clusterroles",
        namespaced: false,
        short: &[],
        has_status: false,
        fields: &[],
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        kind: "ClusterRoleBinding",
        plural: "clusterrolebindings",
        namespaced: false,
        short: &[],
        has_status: false,
        fields: &[],
    },
];

/// All served resources, keyed by (group, version, plural).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    by_path: BTreeMap<(String, String, String), Arc<ResourceType>>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let mut registry = Registry::default();
        for b in BUILTINS {
            let storage = match b.plural {
                "events" => "events".to_string(),
                plural if b.group.is_empty() => plural.to_string(),
                plural => format!("{plural}.{}", b.group),
            };
            registry.insert(ResourceType {
                group: b.group.to_string(),
                version: "v1".to_string(),
                kind: b.kind.to_string(),
                plural: b.plural.to_string(),
                singular: b.kind.to_lowercase(),
                namespaced: b.namespaced,
                short_names: b.short.iter().map(|s| s.to_string()).collect(),
                categories: if b.plural == "pods" {
                    vec!["all".to_string()]
                } else {
                    vec![]
                },
                storage,
                has_status: b.has_status,
                status_writes_metadata: b.plural == "pods",
                custom: false,
                codec: if b.group == "events.k8s.io" {
                    Codec::EventsV1
                } else {
                    Codec::Identity
                },
                field_labels: b.fields.iter().map(|s| s.to_string()).collect(),
            });
        }
        registry
    }

    pub fn insert(&mut self, rt: ResourceType) {
        let key = (rt.group.clone(), rt.version.clone(), rt.plural.clone());
        self.by_path.insert(key, Arc::new(rt));
    }

    /// Removes every version of a custom resource's storage (its CRD was deleted).
    pub fn remove_storage(&mut self, storage: &str) {
        self.by_path.retain(|_, rt| rt.storage != storage);
    }

    pub fn by_path(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.by_path
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.by_path
            .values()
            .find(|rt| rt.api_version() == api_version && rt.kind == kind)
            .cloned()
    }

    /// Every served resource type.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceType>> {
        self.by_path.values()
    }

    fn groups(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (group, version, _) in self.by_path.keys() {
            if group.is_empty() {
                continue;
            }
            let versions = groups.entry(group).or_default();
            if !versions.contains(&version.as_str()) {
                versions.push(version);
            }
        }
        groups
    }

    /// `/api`: the legacy core group.
    pub fn api_versions(&self, server_address: &str) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
        })
    }

    fn group_doc(name: &str, versions: &[&str]) -> Value {
        let versions: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
            .collect();
        json!({
            "name": name,
            "versions": versions,
            "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
        })
    }

    /// `/apis`: every named group.
    pub fn api_group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .iter()
            .map(|(name, versions)| Self::group_doc(name, versions))
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `/apis/<group>`.
    pub fn api_group(&self, group: &str) -> Option<Value> {
        let groups = self.groups();
        let versions = groups.get(group)?;
        let mut doc = Self::group_doc(group, versions);
        doc["kind"] = json!("APIGroup");
        doc["apiVersion"] = json!("v1");
        Some(doc)
    }

    /// `/api/v1` or `/apis/<group>/<version>`.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let resources: Vec<Value> = self
            .by_path
            .iter()
            .filter(|((g, v, _), _)| g == group && v == version)
            .flat_map(|(_, rt)| rt.discovery_entries())
            .collect();
        if resources.is_empty() {
            return None;
        }
        let group_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }))
    }
}

/// The resource types a CustomResourceDefinition serves, one per served version.
pub(crate) fn from_crd(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let (Some(group), Some(kind), Some(plural)) = (
        spec["group"].as_str(),
        names["kind"].as_str(),
        names["plural"].as_str(),
    ) else {
        return Vec::new();
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    versions
        .iter()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .filter_map(|v| v["name"].as_str().map(|name| (name, v)))
        .map(|(version, v)| ResourceType {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            singular: names["singular"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| kind.to_lowercase()),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            storage: format!("{plural}.{group}"),
            has_status: v["subresources"]["status"].is_object(),
            status_writes_metadata: false,
            custom: true,
            codec: Codec::Identity,
            field_labels: Vec::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_registers_its_served_versions_in_discovery() {
        let mut registry = Registry::with_builtins();
        let crd = json!({"spec": {"group": "kaloom.com", "scope": "Namespaced",
            "names": {"kind": "Network", "plural": "networks", "shortNames": ["net"]},
            "versions": [{"name": "v1", "served": true, "storage": true}]}});
        for rt in from_crd(&crd) {
            registry.insert(rt);
        }
        let list = registry.resource_list("kaloom.com", "v1").expect("served");
        assert_eq!(list["resources"][0]["kind"], "Network");
        assert_eq!(list["resources"][0]["shortNames"][0], "net");
        let groups = registry.api_group_list();
        assert!(
            groups["groups"]
                .as_array()
                .expect("groups")
                .iter()
                .any(|g| g["name"] == "kaloom.com")
        );
        registry.remove_storage("networks.kaloom.com");
        assert!(registry.resource_list("kaloom.com", "v1").is_none());
    }

    #[test]
    fn both_event_apis_share_one_storage() {
        let registry = Registry::with_builtins();
        let core = registry.by_path("", "v1", "events").expect("core events");
        let new = registry
            .by_path("events.k8s.io", "v1", "events")
            .expect("events.k8s.io");
        assert_eq!(core.storage, new.storage);
        assert_eq!(new.codec, Codec::EventsV1);
    }
}
