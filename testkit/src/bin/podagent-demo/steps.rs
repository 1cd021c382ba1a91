//! The seed README's example as steps: each runs the seed's command (or says what stands in for
//! it), waits for what podagent does in the pod's netns and in the API, and shows it.

use std::collections::HashMap;
use std::path::Path;

use k8s_cri::v1::{ListPodSandboxRequest, PodSandboxFilter, PodSandboxState};
use serde_json::{Value, json};

use crate::{
    APP, Demo, DemoError, DemoPod, FIRST_POD, IFNAME, NAMESPACE, NETWORK, NODE, POD_NAMES,
    SECOND_POD, heading, say,
};

impl Demo {
    /// The seed's example, step by step.
    pub(crate) async fn replay(&mut self) -> Result<(), DemoError> {
        heading("1. Provision the `data` network attachment");
        say("The seed: kubectl apply -f examples/data-net.yaml (after the Network CRD).");
        self.shell("kubectl apply -f manifests/networks-crd.yaml")
            .await?;
        self.shell("kubectl apply -f examples/data-net.yaml")
            .await?;
        self.shell("kubectl get networks").await?;

        heading("2. Deploy hello-multi-net with 2 replicas");
        say(
            "The seed: kubectl run hello-multi-net --image=alpine --replicas=2 -- top\n\
             There is no kubelet here, so the demo does the kubelet's part: a real containerd pod\n\
             sandbox per pod (its pause process holds the pod's netns, eth0 from containerd's CNI),\n\
             and the pod object as the kubelet reports it (Running on demo-node).",
        );
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
        self.shell("kubectl get pod -l run=hello-multi-net -o wide")
            .await?;

        heading("3. Add the `data` network attachment to the first pod");
        self.add(0, FIRST_POD).await?;

        heading(&format!(
            "4. Verify that {IFNAME} is present in the first pod"
        ));
        self.show_interfaces(0).await?;

        heading("5. Verify that the first pod didn't get re-started");
        self.show_not_restarted(0, FIRST_POD).await?;

        heading("6. Delete the `data` network attachment off the first pod");
        self.shell(&format!(
            "./scripts/del-network-annotation.sh {FIRST_POD} {NETWORK}"
        ))
        .await?;
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
        self.show_not_restarted(0, FIRST_POD).await?;

        heading("9. Repeat the same thing with the second pod: add `data`");
        self.add(1, SECOND_POD).await?;

        heading(&format!(
            "10. Verify that {IFNAME} is present in the second pod"
        ));
        self.show_interfaces(1).await?;

        heading("11. Verify that the second pod didn't get re-started");
        self.show_not_restarted(1, SECOND_POD).await?;
        Ok(())
    }

    /// Runs the seed's add command on pod `index` (named in the shell by `selector`) and waits
    /// for the interface and podagent's Event.
    async fn add(&self, index: usize, selector: &str) -> Result<(), DemoError> {
        self.shell(&format!(
            "./scripts/add-network-annotation.sh {selector} {NETWORK}"
        ))
        .await?;
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

    /// Creates pod `name`: the API object (Pending), its sandbox, then Running with its IP.
    async fn create_pod(&self, name: &'static str) -> Result<DemoPod, DemoError> {
        let created = self.sim.create(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "labels": {"run": APP, "pod-template-hash": "5d8f9c7b6"},
            },
            "spec": {
                "nodeName": NODE,
                "containers": [{"name": APP, "image": "alpine", "args": ["top"]}],
            },
            "status": {"phase": "Pending"},
        }))?;
        let uid = created["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let sandbox = self.containerd.run_pod_sandbox(&uid, name, NAMESPACE).await;
        let netns = self.containerd.sandbox_netns(&sandbox).await;
        let pod_ip = ipv4(&netns, "eth0").unwrap_or_default();
        self.sim.patch_merge(
            "v1",
            "Pod",
            Some(NAMESPACE),
            name,
            json!({"status": {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": pod_ip,
                "podIPs": [{"ip": pod_ip}],
                "containerStatuses": [{
                    "name": APP, "image": "alpine", "imageID": "", "ready": true,
                    "started": true, "restartCount": 0
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
            "The seed: kubectl exec -t <pod> -- ip a. kube-sim has no exec, so this is the same view\n\
             from the host: `ip` inside the netns of {}'s sandbox ({}).",
            pod.name,
            short(&pod.sandbox)
        ));
        self.shell(&format!("ip -n {} a", pod.netns_name())).await?;
        Ok(())
    }

    /// The pod object and the runtime both show the same, never restarted, sandbox.
    async fn show_not_restarted(&self, index: usize, selector: &str) -> Result<(), DemoError> {
        let pod = &self.pods[index];
        self.shell(&format!(
            "kubectl get pod -l run=hello-multi-net -o wide | grep {selector}"
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
            .containerd
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
            || {
                Ok(self
                    .sim
                    .list("events.k8s.io/v1", "Event", Some(NAMESPACE))
                    .iter()
                    .any(|event| event["regarding"]["uid"] == pod.uid && event["reason"] == reason)
                    .then_some(()))
            },
        )
        .await?;
        Ok(())
    }

    async fn show_events(&self) -> Result<(), DemoError> {
        say("podagent's Events:");
        self.shell("kubectl get events").await?;
        Ok(())
    }
}

/// The links of `netns` with their addresses, as `ip -j addr` lists them (none if it fails).
fn links(netns: &Path) -> Vec<Value> {
    let name = netns
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::process::Command::new("ip")
        .args(["-n", &name, "-j", "addr", "show"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| serde_json::from_slice::<Vec<Value>>(&out.stdout).ok())
        .unwrap_or_default()
}

fn has_link(netns: &Path, ifname: &str) -> bool {
    links(netns).iter().any(|link| link["ifname"] == ifname)
}

fn ipv4(netns: &Path, ifname: &str) -> Option<String> {
    links(netns).iter().find(|link| link["ifname"] == ifname)?["addr_info"]
        .as_array()?
        .iter()
        .find(|addr| addr["family"] == "inet")?["local"]
        .as_str()
        .map(str::to_owned)
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
