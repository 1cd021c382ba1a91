//! Which node podagent's credential speaks for, and whether the API server holds it to that.
//!
//! RBAC cannot limit `patch pods` to one node's pods or to one annotation, so the shipped
//! ValidatingAdmissionPolicy (`manifests/podagent-admission-policy.yaml`) does: a podagent
//! identity may change only the pods bound to the node it speaks for, and only in the
//! annotations podagent owns. That only protects anything when each node has its own identity,
//! so `podagent check` asks the API server who podagent is (a SelfSubjectReview, which every
//! authenticated user may make) and whether the policy is installed. The classic mistake, one
//! kubeconfig copied to every node, then shows up as a ✗ on every node but one instead of as
//! denied patches in the journal.
//!
//! [`speaks_for`] is the same rule as the policy's `node` variable; the admission tests hold the
//! two together.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, PostParams};

use super::{KubeClient, KubeError, Request};

/// The per-node service accounts `create-kubeconfig.sh --node NODE` makes.
const PER_NODE_ACCOUNT: &str = "system:serviceaccount:kube-system:podagent-node-";
/// The one account all nodes shared before per-node identities (and the DaemonSet's account).
const SHARED_ACCOUNT: &str = "system:serviceaccount:kube-system:podagent";
/// The claim the API server writes into a pod-bound token: the node of the pod.
const NODE_NAME_CLAIM: &str = "authentication.kubernetes.io/node-name";
/// The policy binding that denies what a node-bound identity may not do.
pub(crate) const NODE_BOUND_POLICY: &str = "podagent-node-bound";

/// Whom a credential speaks for, as the admission policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Speaks {
    /// A per-node account, or the shared account with a pod-bound token.
    ForNode(String),
    /// The shared account with a long-lived token: it could be on any node.
    ForNoNode,
    /// Not a podagent identity the policy knows (an admin, a client certificate).
    Unknown,
}

/// The node `username` speaks for, given the extra claims of its token.
pub(crate) fn speaks_for(username: &str, extra: &BTreeMap<String, Vec<String>>) -> Speaks {
    if let Some(node) = username.strip_prefix(PER_NODE_ACCOUNT) {
        return Speaks::ForNode(node.to_owned());
    }
    if username != SHARED_ACCOUNT {
        return Speaks::Unknown;
    }
    match extra.get(NODE_NAME_CLAIM).and_then(|nodes| nodes.first()) {
        Some(node) => Speaks::ForNode(node.clone()),
        None => Speaks::ForNoNode,
    }
}

/// Who the API server says podagent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) username: String,
    pub(crate) speaks: Speaks,
}

/// Asks the API server which user podagent's credential authenticates as.
pub(crate) async fn who_am_i(kube: &KubeClient) -> Result<Identity, KubeError> {
    let request = Request {
        verb: "create",
        resource: "selfsubjectreviews.authentication.k8s.io",
        scope: "cluster".into(),
    };
    let api: Api<SelfSubjectReview> = Api::all(kube.client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|err| request.error(&kube.url, err))?;
    let user = review.status.and_then(|s| s.user_info).unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let speaks = speaks_for(&username, &user.extra.unwrap_or_default());
    Ok(Identity { username, speaks })
}

/// How the node-bound policy is bound: its validation actions (`Deny`, `Warn`, `Audit`), or
/// `None` when it is not installed.
pub(crate) async fn node_bound_policy(kube: &KubeClient) -> Result<Option<Vec<String>>, KubeError> {
    let request = Request {
        verb: "get",
        resource: "validatingadmissionpolicybindings.admissionregistration.k8s.io",
        scope: format!("name {NODE_BOUND_POLICY}"),
    };
    let api: Api<ValidatingAdmissionPolicyBinding> = Api::all(kube.client.clone());
    let binding = api
        .get_opt(NODE_BOUND_POLICY)
        .await
        .map_err(|err| request.error(&kube.url, err))?;
    Ok(binding.map(|b| {
        b.spec
            .and_then(|spec| spec.validation_actions)
            .unwrap_or_default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(node: &str) -> BTreeMap<String, Vec<String>> {
        BTreeMap::from([(NODE_NAME_CLAIM.to_owned(), vec![node.to_owned()])])
    }

    #[test]
    fn per_node_account_speaks_for_its_node() {
        let user = "system:serviceaccount:kube-system:podagent-node-worker-1.example";
        assert_eq!(
            speaks_for(user, &BTreeMap::new()),
            Speaks::ForNode("worker-1.example".into())
        );
    }

    #[test]
    fn shared_account_speaks_for_the_node_in_its_pod_bound_token_only() {
        assert_eq!(
            speaks_for(SHARED_ACCOUNT, &claims("worker-2")),
            Speaks::ForNode("worker-2".into())
        );
        assert_eq!(
            speaks_for(SHARED_ACCOUNT, &BTreeMap::new()),
            Speaks::ForNoNode
        );
    }

    #[test]
    fn other_users_and_other_namespaces_are_not_podagent() {
        for user in [
            "kubernetes-admin",
            "system:serviceaccount:default:podagent",
            "system:serviceaccount:default:podagent-node-worker-1",
            "system:node:worker-1",
        ] {
            assert_eq!(
                speaks_for(user, &claims("worker-1")),
                Speaks::Unknown,
                "{user}"
            );
        }
    }
}
