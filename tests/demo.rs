//! The one-command demo (`scripts/demo.sh`) runs to completion on this host (as root) with the
//! test build's binaries, in every network mode and on CRI-O too, and its transcript shows what
//! the README promises, in the seed's own commands on pods a real kubelet runs: `kubectl exec …
//! ip a` shows the `data` interface with its address in the first pod, then no longer, then in
//! the second pod; `kubectl get pod -o wide` shows 0 restarts and the runtime the same sandbox
//! throughout; in direct and npwg mode the address is from the `data` object's range, and npwg
//! mode shows the `network-status` a Multus user reads. The demo itself waits for each step and
//! fails when one does not happen, so this test checks the transcript, the exit status, and that
//! nothing was left behind.

use std::path::Path;
use std::process::Command;

use testkit::netns::ip_a;
use testkit::prereq;

const IFNAME: &str = "net8d777f385d3d";

/// The test build's dir (`<target>/debug`), with `podagent-demo` and the `control-plane`
/// command it starts built into it: `cargo test --workspace --all-targets` builds them already;
/// a narrower `cargo test` does not, so they are built here (a no-op when they are up to date).
/// Both packages are named so that dependency features are unified as in the test build, and
/// nothing already built is rebuilt.
fn binary_dir() -> &'static Path {
    let podagent = Path::new(env!("CARGO_BIN_EXE_podagent"));
    let dir = podagent
        .parent()
        .expect("podagent binary inside <target>/debug");
    let target = dir.parent().expect("<target>/debug inside <target>");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "podagent", "-p", "testkit"])
        .args(["--bin", "podagent-demo", "--bin", "control-plane"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target)
        .status()
        .expect("run cargo build for podagent-demo and control-plane");
    assert!(
        status.success(),
        "cargo build podagent-demo control-plane: {status}"
    );
    dir
}

/// The part of `transcript` from the heading that starts with `title` to the next heading.
fn section<'a>(transcript: &'a str, title: &str) -> &'a str {
    let start = transcript
        .find(&format!("── {title}"))
        .unwrap_or_else(|| panic!("no step {title:?} in the transcript:\n{transcript}"));
    let rest = &transcript[start..];
    let end = rest[3..].find("\n── ").map_or(rest.len(), |at| at + 3);
    &rest[..end]
}

/// What the `kubectl exec … -- ip a` of the step in `section` printed (up to the next line that
/// is not `ip a` output).
fn exec_output(section: &str) -> &str {
    let start = section
        .find("$ kubectl exec ")
        .unwrap_or_else(|| panic!("the step runs kubectl exec:\n{section}"));
    let rest = &section[start..];
    let body = rest.find('\n').map_or("", |at| &rest[at + 1..]);
    let end = body
        .lines()
        .take_while(|line| {
            line.starts_with(char::is_whitespace) || ip_a::interface_of(line).is_some()
        })
        .map(|line| line.len() + 1)
        .sum::<usize>();
    &body[..end.min(body.len())]
}

/// `scripts/demo.sh` with `args` and the test build's binaries; its transcript.
fn replay(args: &[&str]) -> String {
    let dir = binary_dir();
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo.sh"))
        .args(args)
        .arg("--binary-dir")
        .arg(dir)
        .output()
        .expect("run scripts/demo.sh");
    let transcript = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo.sh {args:?} exited with {}\nstdout:\n{transcript}\nstderr:\n{errors}",
        out.status
    );
    transcript.into_owned()
}

/// One after the other: the direct- and npwg-mode demos own the host's `data-br` and the
/// `data` network's host-local dir while they run.
#[test]
fn demo_replays_the_example_in_every_mode() {
    prereq::require_root();
    runs_the_data_object_of_the_example(&[], "direct", "Network");
    let npwg = runs_the_data_object_of_the_example(
        &["--mode", "npwg"],
        "npwg",
        "NetworkAttachmentDefinition",
    );
    npwg_shows_the_network_status(&npwg);
    kactus_mode_stays_available();
    runs_on_crio();
}

/// `--runtime crio`: the same example with the kubelet on a real CRI-O.
fn runs_on_crio() {
    let transcript =
        runs_the_data_object_of_the_example(&["--runtime", "crio"], "direct", "Network");
    let setup = section(&transcript, "Setting up");
    let version = testkit::host::crio_version().trim_start_matches('v');
    assert!(
        setup.contains(&format!(
            "container runtime: the kubelet's own CRI-O {version} (pid "
        )),
        "the first screen names CRI-O:\n{setup}"
    );
    let deploy = section(&transcript, "2. Deploy");
    assert!(
        deploy.contains("pod hello-multi-net-") && deploy.contains("netns /var/run/netns/"),
        "the pods' netns are the files CRI-O pinned:\n{deploy}"
    );
}

/// Direct mode (the default) runs the `Network` of examples/data-net.yaml, npwg mode the
/// NetworkAttachmentDefinition of examples/data-nad.yaml, asked for with the NPWG annotation;
/// `kubectl exec` shows the interface with an address of the object's range.
fn runs_the_data_object_of_the_example(args: &[&str], mode: &str, kind: &str) -> String {
    let transcript = replay(args);
    let setup = section(&transcript, "Setting up");
    assert!(
        setup.contains(&format!(
            "podagent's network mode: {mode} — the `data` network's CNI config comes from its \
             {kind} object, examples/data-"
        )),
        "the first screen says where `data` comes from:\n{setup}"
    );
    if mode == "npwg" {
        let add = section(&transcript, "3. Add the");
        assert!(
            add.contains("kubectl annotate -n ")
                && add.contains("k8s.v1.cni.cncf.io/networks=data"),
            "the NPWG annotation is what asks for `data`:\n{add}"
        );
    }
    for step in ["4. Verify that", "10. Verify that"] {
        let added = section(&transcript, step);
        let address = ip_a::address_of(exec_output(added), IFNAME)
            .unwrap_or_else(|| panic!("kubectl exec shows {IFNAME} with an address:\n{added}"));
        assert!(
            address.starts_with("172.20.1.") && address.ends_with("/24"),
            "{IFNAME} has {address}, not an address of the data network (172.20.1.0/24):\n{added}"
        );
        assert!(
            added.contains(&format!(
                "✓ {IFNAME} has {address}: from the `data` {kind}'s range 172.20.1.10–172.20.1.254"
            )),
            "the demo checked the address against the {kind}:\n{added}"
        );
    }
    assert_replayed(&transcript);
    let cleanup = section(&transcript, "Cleaning up");
    assert!(
        cleanup.contains("podagent ran DEL for their `data` attachments"),
        "podagent released the pods' addresses:\n{cleanup}"
    );
    transcript
}

/// Npwg mode: after each change the pod's `k8s.v1.cni.cncf.io/network-status` is shown as a
/// Multus user reads it, with the `data` entry on the interface while it is attached.
fn npwg_shows_the_network_status(transcript: &str) {
    for (step, listed) in [
        ("3. Add the", true),
        ("6. Delete the", false),
        ("9. Repeat", true),
    ] {
        let text = section(transcript, step);
        let start = text
            .find("-o jsonpath='{.metadata.annotations.k8s\\.v1\\.cni\\.cncf\\.io/network-status}'")
            .unwrap_or_else(|| panic!("step {step:?} shows the network-status:\n{text}"));
        let shown = &text[start..];
        let shown = &shown[shown.find('\n').map_or(shown.len(), |at| at + 1)..];
        let json_end = shown.find("\n✓ ").unwrap_or(shown.len());
        let entries: Vec<serde_json::Value> =
            serde_json::from_str(&shown[..json_end]).unwrap_or_default();
        let data = entries.iter().find(|entry| entry["interface"] == IFNAME);
        if listed {
            let data = data
                .unwrap_or_else(|| panic!("step {step:?}: network-status lists {IFNAME}:\n{text}"));
            assert!(
                data["name"]
                    .as_str()
                    .is_some_and(|name| name.ends_with("/data")),
                "step {step:?}: the entry is the data network's: {data}"
            );
            assert!(
                data["ips"][0]
                    .as_str()
                    .is_some_and(|ip| ip.starts_with("172.20.1.")),
                "step {step:?}: the entry has the data address: {data}"
            );
        } else {
            assert!(
                data.is_none(),
                "step {step:?}: network-status no longer lists {IFNAME}:\n{text}"
            );
        }
    }
}

fn kactus_mode_stays_available() {
    let transcript = replay(&["--mode", "kactus"]);
    let setup = section(&transcript, "Setting up");
    assert!(
        setup.contains("podagent's network mode: kactus — CNI config "),
        "{setup}"
    );
    let added = section(&transcript, "4. Verify that");
    assert!(
        ip_a::address_of(exec_output(added), IFNAME).is_some(),
        "kubectl exec shows {IFNAME} with an address:\n{added}"
    );
    assert_replayed(&transcript);
}

/// What every mode shows: the Deployment's two pods run by the kubelet, the interface comes and
/// goes as `kubectl exec` shows it, no pod restarts, nothing is left.
fn assert_replayed(transcript: &str) {
    let created = section(transcript, "2. Deploy");
    assert!(
        created.contains("$ kubectl create deployment -n demo-")
            && created.contains(
                " hello-multi-net --image=localhost/podagent-test/busybox:1 --replicas=2 -- top"
            )
            && created.contains("successfully rolled out"),
        "step 2 deploys with kubectl and waits for the rollout:\n{created}"
    );
    let added = exec_output(section(transcript, "4. Verify that"));
    assert!(
        ip_a::shows(added, IFNAME) && ip_a::shows(added, "eth0"),
        "kubectl exec … ip a after the add shows {IFNAME} next to eth0:\n{added}"
    );
    let gone = exec_output(section(transcript, "7. Verify that"));
    assert!(
        !ip_a::shows(gone, IFNAME) && ip_a::shows(gone, "eth0"),
        "kubectl exec … ip a after the delete shows eth0 and no {IFNAME}:\n{gone}"
    );
    let second = exec_output(section(transcript, "10. Verify that"));
    assert!(
        ip_a::shows(second, IFNAME),
        "kubectl exec … ip a in the second pod shows {IFNAME}:\n{second}"
    );

    // The pods and sandboxes of step 2 are the ones after each change, with 0 restarts.
    let pods: Vec<(&str, &str)> = created
        .lines()
        .filter_map(|line| line.strip_prefix("pod "))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once(": ")?;
            let sandbox = rest.split("sandbox ").nth(1)?.split(',').next()?;
            Some((name, sandbox))
        })
        .collect();
    assert_eq!(
        pods.len(),
        2,
        "step 2 names two pods and their sandboxes:\n{created}"
    );
    for (step, (pod, sandbox)) in [
        ("5. Verify that the first pod", pods[0]),
        ("8. Verify that the first pod", pods[0]),
        ("11. Verify that the second pod", pods[1]),
    ] {
        let text = section(transcript, step);
        let row: Vec<&str> = text
            .lines()
            .find(|line| line.starts_with(pod))
            .unwrap_or_else(|| {
                panic!("step {step:?} shows {pod}'s row of kubectl get pod:\n{text}")
            })
            .split_whitespace()
            .collect();
        assert_eq!(
            row.get(1..4),
            Some(&["1/1", "Running", "0"][..]),
            "step {step:?}: {pod} is Running with 0 restarts:\n{text}"
        );
        let unchanged = text
            .lines()
            .find(|line| line.contains("unchanged since step 2"))
            .unwrap_or_else(|| panic!("step {step:?} reports the sandbox:\n{text}"));
        assert!(
            unchanged.starts_with(&format!("✓ sandbox {sandbox}")),
            "step {step:?}: {unchanged} (created: {sandbox})"
        );
    }

    let events = section(transcript, "6. Delete");
    assert!(
        events.contains("AddedInterface") && events.contains("RemovedInterface"),
        "podagent's Events are shown:\n{events}"
    );
    assert!(
        transcript.contains("✓ nothing left"),
        "the demo cleaned up:\n{}",
        section(transcript, "Cleaning up")
    );
}
