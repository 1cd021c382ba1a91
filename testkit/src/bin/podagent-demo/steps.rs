//! The seed README's example as steps: each runs the seed's command (or says what stands in for
//! it), waits for what podagent does in the pod's netns and in the API, and shows it.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use k8s_cri::v1::{ListPodSandboxRequest, PodSandboxFilter, PodSandboxState};
use serde_json::json;
use testkit::node::{has_link, ipv4};

use crate::{APP, Demo, DemoError, DemoPod, IFNAME, NAMESPACE, NETWORK, POD_NAMES, heading, say};

/// The annotation Multus users list networks in (npwg mode).
const NPWG_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";

impl Demo {
    /// The seed's example, step by step.
    pub(crate) async fn replay(&mut self) -> Result<(), DemoError> {
        let ns = self.ns.clone();
        let first = self.pod_in_shell("head");
        let second = self.pod_in_shell("tail");

        heading("1. Provision the `data` network attachment");
        let (crd_file, crd, example, plural) = if self.npwg {
            say(
                "Multus users have NetworkAttachmentDefinitions: the same `data` network as an NPWG\n\
                 object, asked for with the k8s.v1.cni.cncf.io/networks annotation (npwg mode).",
            );
            (
                "manifests/network-attachment-definitions-crd.yaml",
                "network-attachment-definitions.k8s.cni.cncf.io",
                "examples/data-nad.yaml",
                "network-attachment-definitions",
            )
        } else {
            say(
                "The seed: kubectl apply -f examples/data-net.yaml. A Network is a custom resource: the\n\
                 API server refuses it until its CRD (manifests/networks-crd.yaml) is Established.",
            );
            (
                "manifests/networks-crd.yaml",
                "networks.kaloom.com",
                "examples/data-net.yaml",
                "networks",
            )
        };
        if self.direct {
            say(
                "In this mode the object is the `data` network: podagent runs its config (bridge\n\
                 data-br, host-local addresses from its range) for every pod that asks for `data`.",
            );
        }
        self.shell(&format!("kubectl apply -f {crd_file}")).await?;
        self.shell(&format!(
            "kubectl wait --for=condition=Established --timeout={}s crd/{crd}",
            self.wait.as_secs().max(1)
        ))
        .await?;
        self.shell(&format!("kubectl apply -n {ns} -f {example}"))
            .await?;
        self.shell(&format!("kubectl get -n {ns} {plural}")).await?;

        heading("2. Deploy hello-multi-net with 2 replicas");
        say(&format!(
            "The seed: kubectl run hello-multi-net --image=alpine --replicas=2 -- top\n\
             There is no scheduler or kubelet here, so the demo creates the two pods through the API\n\
             bound to node {node}, and does the kubelet's part: a real pod sandbox per pod, then\n\
             the pod's status through pods/status (Running on {node}, with its IP).\n{holder}",
            node = self.node.name(),
            holder = if self.node.runtime_endpoint().0 == "crio" {
                "CRI-O's pinns pins the pod's netns at /var/run/netns/<id>, and no process holds it;\n\
                 eth0 is from CRI-O's own CNI network."
            } else {
                "The sandbox's pause process holds the pod's netns; eth0 is from containerd's own CNI\n\
                 network."
            }
        ));
        for name in POD_NAMES {
            let pod = self.create_pod(name).await?;
            println!(
                "pod {name}: uid {}, sandbox {}, netns {}",
                pod.uid,
                short(&pod.sandbox),
                pod.netns.display()
            );
            self.pods.push(pod);
        }
        self.shell(&format!(
            "kubectl get -n {ns} pod -l run=hello-multi-net -o wide"
        ))
        .await?;

        heading("3. Add the `data` network attachment to the first pod");
        self.add(0, &first).await?;

        heading(&format!(
            "4. Verify that {IFNAME} is present in the first pod"
        ));
        self.show_interfaces(0).await?;
        if self.direct {
            self.show_address_source(0)?;
        }

        heading("5. Verify that the first pod didn't get re-started");
        self.show_not_restarted(0, &first).await?;

        heading("6. Delete the `data` network attachment off the first pod");
        let del = if self.npwg {
            format!("kubectl annotate -n {ns} pod {first} {NPWG_ANNOTATION}-")
        } else {
            format!("./scripts/del-network-annotation.sh {first} {NETWORK} {ns}")
        };
        self.shell(&del).await?;
        let pod = &self.pods[0];
        let took = self
            .eventually(&format!("{IFNAME} to go from pod {}", pod.name), || {
                Ok((!has_link(&pod.netns, IFNAME)).then_some(()))
            })
            .await?;
        println!(
            "✓ {IFNAME} is gone from {} ({:.1} s after the annotation changed)",
            pod.name,
            took.as_secs_f64()
        );
        self.wait_for_event(0, "RemovedInterface").await?;
        self.show_events().await?;
        self.show_log();

        heading(&format!(
            "7. Verify that {IFNAME} is gone from the first pod"
        ));
        self.show_interfaces(0).await?;

        heading("8. Verify that the first pod didn't get re-started");
        self.show_not_restarted(0, &first).await?;

        heading("9. Repeat the same thing with the second pod: add `data`");
        self.add(1, &second).await?;

        heading(&format!(
            "10. Verify that {IFNAME} is present in the second pod"
        ));
        self.show_interfaces(1).await?;

        heading("11. Verify that the second pod didn't get re-started");
        self.show_not_restarted(1, &second).await?;
        Ok(())
    }

    /// The seed's way of naming the first (`head`) or the second (`tail`) pod in a command,
    /// kept verbatim but for the namespace.
    fn pod_in_shell(&self, end: &str) -> String {
        format!(
            "$(kubectl get -n {} pod -l run=hello-multi-net -o name | cut -d/ -f2 | {end} -1)",
            self.ns
        )
    }

    /// Runs the seed's add command on pod `index` (named in the shell by `selector`) and waits
    /// for the interface and podagent's Event.
    async fn add(&self, index: usize, selector: &str) -> Result<(), DemoError> {
        let add = if self.npwg {
            format!(
                "kubectl annotate -n {} pod {selector} {NPWG_ANNOTATION}={NETWORK} --overwrite",
                self.ns
            )
        } else {
            format!(
                "./scripts/add-network-annotation.sh {selector} {NETWORK} {}",
                self.ns
            )
        };
        self.shell(&add).await?;
        let pod = &self.pods[index];
        let took = self
            .eventually(&format!("{IFNAME} to appear in pod {}", pod.name), || {
                Ok(has_link(&pod.netns, IFNAME).then_some(()))
            })
            .await?;
        println!(
            "✓ {IFNAME} is in {} ({:.1} s after the annotation changed)",
            pod.name,
            took.as_secs_f64()
        );
        self.wait_for_event(index, "AddedInterface").await?;
        self.show_events().await?;
        self.show_log();
        Ok(())
    }

    /// Creates pod `name` as a ReplicaSet would (bound to the node, as the scheduler would),
    /// then does the kubelet's part: its sandbox, then Running with its IP through pods/status.
    async fn create_pod(&self, name: &'static str) -> Result<DemoPod, DemoError> {
        let admin = self.cluster.admin();
        let created = admin.create(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": self.ns,
                "labels": {"run": APP, "pod-template-hash": "5d8f9c7b6"},
            },
            "spec": {
                "nodeName": self.node.name(),
                "automountServiceAccountToken": false,
                "containers": [{"name": APP, "image": "alpine", "args": ["top"]}],
            },
        }))?;
        let uid = created["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let sandbox = self.node.run_sandbox(&uid, NAMESPACE, name).await;
        let netns = self.node.netns(&sandbox).await;
        let pod_ip = ipv4(&netns, "eth0").unwrap_or_default();
        let now = created["metadata"]["creationTimestamp"].clone();
        admin.patch_status(
            "v1",
            "Pod",
            Some(&self.ns),
            name,
            json!({"status": {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": pod_ip,
                "podIPs": [{"ip": pod_ip}],
                "startTime": now,
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{
                    "name": APP, "image": "alpine", "imageID": "", "ready": true,
                    "started": true, "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                }],
            }}),
        )?;
        Ok(DemoPod {
            name,
            uid,
            sandbox,
            netns,
        })
    }

    /// `ip a` inside the pod, the way the seed's `kubectl exec -t <pod> -- ip a` shows it.
    async fn show_interfaces(&self, index: usize) -> Result<(), DemoError> {
        let pod = &self.pods[index];
        say(&format!(
            "The seed: kubectl exec -t <pod> -- ip a. exec goes through the kubelet, and there is\n\
             none here, so this is the same view from the host: `ip` inside the netns of the\n\
             sandbox of {} ({}).",
            pod.name,
            short(&pod.sandbox)
        ));
        self.shell(&format!("ip -n {} a", pod.netns_name())).await?;
        Ok(())
    }

    /// Direct and npwg mode: the interface's address is from the `data` object's own IPAM
    /// range, as the API server holds it.
    fn show_address_source(&self, index: usize) -> Result<(), DemoError> {
        let pod = &self.pods[index];
        let (api_version, kind) = if self.npwg {
            ("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition")
        } else {
            ("kaloom.com/v1", "Network")
        };
        let network = self
            .cluster
            .admin()
            .get(api_version, kind, Some(&self.ns), NETWORK)
            .unwrap_or_default();
        let config: serde_json::Value =
            serde_json::from_str(network["spec"]["config"].as_str().unwrap_or_default())
                .unwrap_or_default();
        let ipam = &config["ipam"];
        let bound = |key: &str| ipam[key].as_str().and_then(|a| a.parse::<Ipv4Addr>().ok());
        let address = ipv4(&pod.netns, IFNAME).unwrap_or_default();
        let ip = address
            .split('/')
            .next()
            .and_then(|a| a.parse::<Ipv4Addr>().ok());
        match (ip, bound("rangeStart"), bound("rangeEnd")) {
            (Some(ip), Some(start), Some(end)) if (start..=end).contains(&ip) => {
                println!(
                    "✓ {IFNAME} has {address}: from the `data` {kind}'s range {start}–{end} \
                     (subnet {})",
                    ipam["subnet"].as_str().unwrap_or_default()
                );
                Ok(())
            }
            _ => Err(DemoError::WrongAddress {
                detail: format!(
                    "{IFNAME} of {} has {address:?}, not an address of the data Network's range \
                     (ipam {ipam})",
                    pod.name
                ),
            }),
        }
    }

    /// The pod object and the runtime both show the same, never restarted, sandbox.
    async fn show_not_restarted(&self, index: usize, selector: &str) -> Result<(), DemoError> {
        let pod = &self.pods[index];
        self.shell(&format!(
            "kubectl get -n {} pod -l run=hello-multi-net -o wide | grep {selector}",
            self.ns
        ))
        .await?;
        say(
            "The runtime's word (what `crictl pods` shows on a node): the pod's sandboxes, over CRI.",
        );
        let sandboxes = self.sandboxes(pod).await?;
        for (id, state, created) in &sandboxes {
            println!("sandbox {id}  {state}  created {created}");
        }
        match sandboxes.as_slice() {
            [(id, state, _)] if *id == pod.sandbox && state == "READY" => {
                println!(
                    "✓ sandbox {} unchanged since step 2: {} was not restarted",
                    pod.sandbox, pod.name
                );
                Ok(())
            }
            _ => Err(DemoError::Restarted {
                pod: pod.name.to_owned(),
                detail: format!(
                    "expected only sandbox {} (READY), the runtime has {sandboxes:?}",
                    pod.sandbox
                ),
            }),
        }
    }

    /// `(id, state, created)` of every sandbox of `pod` the runtime knows.
    async fn sandboxes(&self, pod: &DemoPod) -> Result<Vec<(String, String, String)>, DemoError> {
        let items = self
            .node
            .cri()
            .runtime_client()
            .await
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(PodSandboxFilter {
                    label_selector: HashMap::from([(
                        "io.kubernetes.pod.uid".to_owned(),
                        pod.uid.clone(),
                    )]),
                    ..Default::default()
                }),
            })
            .await
            .map_err(|source| DemoError::Cri {
                pod: pod.name.to_owned(),
                source,
            })?
            .into_inner()
            .items;
        Ok(items
            .into_iter()
            .map(|sandbox| {
                let state = match PodSandboxState::try_from(sandbox.state) {
                    Ok(PodSandboxState::SandboxReady) => "READY",
                    _ => "NOTREADY",
                };
                let created = utc_time(sandbox.created_at);
                (sandbox.id, state.to_owned(), created)
            })
            .collect())
    }

    async fn wait_for_event(&self, index: usize, reason: &str) -> Result<(), DemoError> {
        let pod = &self.pods[index];
        self.eventually(
            &format!("podagent's {reason} Event on {}", pod.name),
            || Ok((!self.node.events(NAMESPACE, &pod.uid, reason).is_empty()).then_some(())),
        )
        .await?;
        Ok(())
    }

    async fn show_events(&self) -> Result<(), DemoError> {
        say("podagent's Events:");
        self.shell(&format!("kubectl get -n {} events", self.ns))
            .await?;
        Ok(())
    }
}

/// The first 13 characters of a sandbox id, as crictl shows them.
fn short(id: &str) -> &str {
    id.get(..13).unwrap_or(id)
}

/// `HH:MM:SS.mmm UTC` of a CRI timestamp (nanoseconds since the epoch).
fn utc_time(nanos: i64) -> String {
    let millis = nanos / 1_000_000;
    let day_millis = millis.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03} UTC",
        day_millis / 3_600_000,
        day_millis / 60_000 % 60,
        day_millis / 1000 % 60,
        day_millis % 1000
    )
}
