//! The pod identity every module passes around: which pod a reconcile, a runtime question, a
//! CNI call or an Event is about.
//!
//! It lives on its own because it belongs to no one edge: the API server names the pod, the
//! runtime is asked about it, the store records it. Its `Display` is the one way podagent
//! names a pod to people, `namespace/name` as `kubectl` does; that is also the `pod` log field,
//! so `journalctl POD=namespace/name` finds every line about a pod. The uid, which tells a pod
//! from a re-created one of the same name, is its own `uid` field next to it.

use std::fmt;

/// Which pod podagent is talking about. The UID is the key; namespace and name make logs and
/// messages readable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodRef {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_as_namespace_slash_name() {
        let pod = PodRef {
            uid: "u1".into(),
            namespace: "team".into(),
            name: "web".into(),
        };
        assert_eq!(pod.to_string(), "team/web");
    }
}
