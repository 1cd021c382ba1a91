//! The seed README's example as steps: each runs the seed's command (in today's kubectl
//! spelling where kubectl changed), waits for what podagent does in the pod's netns and in the
//! API, and shows it, in the pod as `kubectl exec` shows it too.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use k8s_cri::v1::{ListPodSandboxRequest, PodSandboxFilter, PodSandboxState};
use serde_json::Value;
use testkit::host::BUSYBOX_IMAGE;
use testkit::netns::ip_a;
use testkit::node::has_link;

use crate::{
    APP, Demo, DemoError, DemoPod, IFNAME, NAMESPACE, NETWORK, ROLLOUT_WAIT, heading, say,
};

/// The annotation Multus users list networks in (npwg mode).
const NPWG_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";
/// The annotation podagent reports a pod's attachments in, in npwg mode (Multus' own).
const NPWG_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";

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
             kubectl run lost --replicas (it makes one pod now): a Deployment of 2 replicas is its\n\
             spelling today, and its pods carry the label app=hello-multi-net where kubectl run set\n\
             run=hello-multi-net. The image is the local {BUSYBOX_IMAGE} (no registry is\n\
             reachable from here; tag :1, so never pulled): its `top` and `ip` are busybox's, as\n\
             alpine's are. The scheduler places both pods on node {node}, whose kubelet runs them.",
            node = self.node.name()
        ));
        self.shell(&format!(
            "kubectl create deployment -n {ns} {APP} --image={BUSYBOX_IMAGE} --replicas=2 -- top"
        ))
        .await?;
        self.shell(&format!(
            "kubectl rollout status -n {ns} deployment/{APP} --timeout={}s",
            ROLLOUT_WAIT.as_secs()
        ))
        .await?;
        self.pods = self.running_pods().await?;
        for pod in &self.pods {
            println!(
                "pod {}: uid {}, sandbox {}, netns {}",
                pod.name,
                pod.uid,
                short(&pod.sandbox),
                pod.netns.display()
            );
        }
        self.shell(&format!("kubectl get -n {ns} pod -l app={APP} -o wide"))
            .await?;
        say("The seed picks the pods by name order: `head -1` is the first, `tail -1` the second.");
        let listed = self
            .shell(&format!(
                "kubectl get -n {ns} pod -l app={APP} -o name | cut -d/ -f2"
            ))
            .await?;
        let names: Vec<&str> = self.pods.iter().map(|pod| pod.name.as_str()).collect();
        if listed.lines().collect::<Vec<_>>() != names {
            return Err(DemoError::Deployment {
                detail: format!("kubectl lists its pods as {listed:?}, the API as {names:?}"),
            });
        }

        heading("3. Add the `data` network attachment to the first pod");
        self.add(0, &first).await?;

        heading(&format!(
            "4. Verify that {IFNAME} is present in the first pod"
        ));
        self.show_interfaces(0, &first, true).await?;

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
        self.show_network_status(0, &first, false).await?;
        self.show_log();

        heading(&format!(
            "7. Verify that {IFNAME} is gone from the first pod"
        ));
        self.show_interfaces(0, &first, false).await?;

        heading("8. Verify that the first pod didn't get re-started");
        self.show_not_restarted(0, &first).await?;

        heading("9. Repeat the same thing with the second pod: add `data`");
        self.add(1, &second).await?;

        heading(&format!(
            "10. Verify that {IFNAME} is present in the second pod"
        ));
        self.show_interfaces(1, &second, true).await?;

        heading("11. Verify that the second pod didn't get re-started");
        self.show_not_restarted(1, &second).await?;
        Ok(())
    }

    /// The seed's way of naming the first (`head`) or the second (`tail`) pod in a command,
    /// kept verbatim but for the namespace and the label `kubectl create deployment` sets.
    fn pod_in_shell(&self, end: &str) -> String {
        format!(
            "$(kubectl get -n {} pod -l app={APP} -o name | cut -d/ -f2 | {end} -1)",
            self.ns
        )
    }

    /// The Deployment's two pods once it has rolled out, by name, with their sandboxes.
    async fn running_pods(&self) -> Result<Vec<DemoPod>, DemoError> {
        let mut objects: Vec<Value> = self
            .deployment_pods()
            .into_iter()
            .filter(|pod| {
                pod["metadata"]["deletionTimestamp"].is_null()
                    && pod["status"]["phase"] == "Running"
            })
            .collect();
        objects.sort_by(|a, b| {
            a["metadata"]["name"]
                .as_str()
                .cmp(&b["metadata"]["name"].as_str())
        });
        if objects.len() != 2 {
            return Err(DemoError::Deployment {
                detail: format!(
                    "rolled out, but {} of its pods are Running: {:?}",
                    objects.len(),
                    objects
                        .iter()
                        .map(|pod| &pod["metadata"]["name"])
                        .collect::<Vec<_>>()
                ),
            });
        }
        let mut pods = Vec::new();
        for object in objects {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let uid = object["metadata"]["uid"].as_str().unwrap_or_default();
            let sandbox =
                self.node
                    .cri()
                    .ready_sandbox(uid)
                    .await
                    .ok_or_else(|| DemoError::Deployment {
                        detail: format!(
                            "pod {name} is Running, but the runtime has no ready sandbox for it"
                        ),
                    })?;
            let netns = self.node.netns(&sandbox).await;
            pods.push(DemoPod {
                name: name.to_owned(),
                uid: uid.to_owned(),
                sandbox,
                netns,
            });
        }
        Ok(pods)
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
        self.show_network_status(index, selector, true).await?;
        self.show_log();
        Ok(())
    }

    /// The seed's `kubectl exec -t <pod> -- ip a`, through the API server and the kubelet, and
    /// what it must show: the interface with an address of the `data` network, or no interface.
    async fn show_interfaces(
        &self,
        index: usize,
        selector: &str,
        present: bool,
    ) -> Result<(), DemoError> {
        let pod = &self.pods[index];
        let shown = self
            .shell(&format!(
                "kubectl exec -n {} -t {selector} -- ip a",
                self.ns
            ))
            .await?;
        let exec_error = |detail: String| DemoError::Exec {
            pod: pod.name.clone(),
            detail,
        };
        if !present {
            if ip_a::shows(&shown, IFNAME) {
                return Err(exec_error(format!("still shows {IFNAME}")));
            }
            println!("✓ {IFNAME} is gone from {}, eth0 is still there", pod.name);
            return Ok(());
        }
        let address = ip_a::address_of(&shown, IFNAME)
            .ok_or_else(|| exec_error(format!("shows no {IFNAME} with an IPv4 address")))?;
        self.check_address_source(&address)
    }

    /// Where `address` (of the interface, as `ip a` shows it) must come from: in direct and npwg
    /// mode the `data` object's own IPAM range, as the API server holds it; in kactus mode the
    /// stand-in config's host-local subnet.
    fn check_address_source(&self, address: &str) -> Result<(), DemoError> {
        let ip = address
            .split('/')
            .next()
            .and_then(|a| a.parse::<Ipv4Addr>().ok());
        if !self.direct {
            if ip.is_some() && address.starts_with(&self.node.address_prefix()) {
                println!(
                    "✓ {IFNAME} has {address}: from the stand-in config's host-local subnet {}",
                    self.node.subnet()
                );
                return Ok(());
            }
            return Err(DemoError::WrongAddress {
                detail: format!(
                    "{IFNAME} has {address:?}, not an address of the stand-in's subnet {}",
                    self.node.subnet()
                ),
            });
        }
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
        let config: Value =
            serde_json::from_str(network["spec"]["config"].as_str().unwrap_or_default())
                .unwrap_or_default();
        let ipam = &config["ipam"];
        let bound = |key: &str| ipam[key].as_str().and_then(|a| a.parse::<Ipv4Addr>().ok());
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
                    "{IFNAME} has {address:?}, not an address of the data {kind}'s range \
                     (ipam {ipam})"
                ),
            }),
        }
    }

    /// Npwg mode: the pod's `network-status` annotation as a Multus user reads it, once podagent
    /// has written the `data` entry in (`present`) or taken it out.
    async fn show_network_status(
        &self,
        index: usize,
        selector: &str,
        present: bool,
    ) -> Result<(), DemoError> {
        if !self.npwg {
            return Ok(());
        }
        let pod = &self.pods[index];
        let lists_data = || {
            self.cluster
                .admin()
                .get("v1", "Pod", Some(&self.ns), &pod.name)
                .and_then(|pod| {
                    let text = pod["metadata"]["annotations"][NPWG_STATUS]
                        .as_str()?
                        .to_owned();
                    Some(network_status_lists(&text, IFNAME))
                })
                .unwrap_or(false)
        };
        let what = if present {
            format!("podagent to list {IFNAME} in {}'s {NPWG_STATUS}", pod.name)
        } else {
            format!(
                "podagent to take {IFNAME} out of {}'s {NPWG_STATUS}",
                pod.name
            )
        };
        self.eventually(&what, || Ok((lists_data() == present).then_some(())))
            .await?;
        say(&format!(
            "The pod's {NPWG_STATUS}, as a Multus user reads it:"
        ));
        let shown = self
            .shell(&format!(
                "kubectl get -n {} pod {selector} -o jsonpath='{{.metadata.annotations.k8s\\.v1\\.cni\\.cncf\\.io/network-status}}'",
                self.ns
            ))
            .await?;
        if shown.is_empty() {
            println!("(no output: podagent lists no attachment of the pod)");
        }
        if network_status_lists(&shown, IFNAME) != present {
            return Err(DemoError::NetworkStatus {
                pod: pod.name.clone(),
                detail: format!("kubectl shows {shown:?}"),
            });
        }
        if present {
            println!("✓ network-status lists `{NETWORK}` on {IFNAME}");
        } else {
            println!("✓ network-status no longer lists {IFNAME}");
        }
        Ok(())
    }

    /// The seed's check (the pod's line of `kubectl get pod -o wide`: 0 restarts), the pod's
    /// container statuses, and the runtime: the same, never replaced, sandbox.
    async fn show_not_restarted(&self, index: usize, selector: &str) -> Result<(), DemoError> {
        let pod = &self.pods[index];
        self.shell(&format!(
            "kubectl get -n {} pod -l app={APP} -o wide | grep {selector}",
            self.ns
        ))
        .await?;
        let object = self
            .cluster
            .admin()
            .get("v1", "Pod", Some(&self.ns), &pod.name)
            .unwrap_or_default();
        let restarts: u64 = object["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|status| status["restartCount"].as_u64().unwrap_or(0))
            .sum();
        if restarts != 0 || object["metadata"]["uid"] != pod.uid.as_str() {
            return Err(DemoError::Restarted {
                pod: pod.name.clone(),
                detail: format!(
                    "the API has uid {} with {restarts} container restarts, not uid {} with 0",
                    object["metadata"]["uid"], pod.uid
                ),
            });
        }
        println!(
            "✓ 0 restarts: the kubelet reports {}'s container never restarted",
            pod.name
        );
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
                pod: pod.name.clone(),
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
                pod: pod.name.clone(),
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
        say("podagent's Events (the scheduler's, the kubelet's and the controllers' left out):");
        self.shell(&format!(
            "kubectl get -n {} events --field-selector reportingComponent=podagent",
            self.ns
        ))
        .await?;
        Ok(())
    }
}

/// Whether an NPWG `network-status` annotation lists interface `ifname`.
fn network_status_lists(text: &str, ifname: &str) -> bool {
    serde_json::from_str::<Vec<Value>>(text)
        .unwrap_or_default()
        .iter()
        .any(|entry| entry["interface"] == ifname)
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
