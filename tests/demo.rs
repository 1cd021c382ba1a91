//! The one-command demo (`scripts/demo.sh`) runs to completion on this host (as root) with the
//! test build's binaries, in every network mode and on CRI-O too, and its transcript shows what
//! the README promises: the `data` interface appears in the first pod, goes away, appears in the
//! second pod, and neither pod's sandbox is replaced; in direct mode (the default) the
//! interface's address is from the `data` Network of `examples/data-net.yaml`. The demo itself
//! waits for each step and fails when one does not happen, so this test checks the transcript,
//! the exit status, and that nothing was left behind.

use std::path::Path;
use std::process::Command;

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

/// The interface lines of `ip a` output in `text` (`N: name@peer: <…>`).
fn shows_interface(text: &str, ifname: &str) -> bool {
    text.lines().any(|line| {
        line.split(": ")
            .nth(1)
            .is_some_and(|name| name.split('@').next() == Some(ifname))
    })
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
    runs_the_data_object_of_the_example(&["--mode", "npwg"], "npwg", "NetworkAttachmentDefinition");
    kactus_mode_stays_available();
    runs_on_crio();
}

/// `--runtime crio`: the same example with the pods' sandboxes in a real CRI-O.
fn runs_on_crio() {
    let transcript =
        runs_the_data_object_of_the_example(&["--runtime", "crio"], "direct", "Network");
    let setup = section(&transcript, "Setting up");
    let version = testkit::host::crio_version().trim_start_matches('v');
    assert!(
        setup.contains(&format!(
            "container runtime: a private CRI-O {version} (pid "
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
/// NetworkAttachmentDefinition of examples/data-nad.yaml, asked for with the NPWG annotation.
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
    let added = section(&transcript, "4. Verify that");
    let from_range = added
        .lines()
        .find(|line| line.starts_with(&format!("✓ {IFNAME} has 172.20.1.")))
        .unwrap_or_else(|| panic!("step 4 shows the address from the object's range:\n{added}"));
    assert!(
        from_range.contains(&format!(
            "from the `data` {kind}'s range 172.20.1.10–172.20.1.254"
        )),
        "{from_range}"
    );
    assert_replayed(&transcript);
    let cleanup = section(&transcript, "Cleaning up");
    assert!(
        cleanup.contains("podagent ran DEL for their `data` attachments"),
        "podagent released the pods' addresses:\n{cleanup}"
    );
    transcript
}

fn kactus_mode_stays_available() {
    let transcript = replay(&["--mode", "kactus"]);
    let setup = section(&transcript, "Setting up");
    assert!(
        setup.contains("podagent's network mode: kactus — CNI config "),
        "{setup}"
    );
    assert_replayed(&transcript);
}

/// What both modes show: the interface comes and goes, no pod restarts, nothing is left.
fn assert_replayed(transcript: &str) {
    let added = section(transcript, "4. Verify that");
    assert!(
        shows_interface(added, IFNAME) && shows_interface(added, "eth0"),
        "ip a after the add shows {IFNAME} next to eth0:\n{added}"
    );
    let gone = section(transcript, "7. Verify that");
    assert!(
        !shows_interface(gone, IFNAME) && shows_interface(gone, "eth0"),
        "ip a after the delete shows eth0 and no {IFNAME}:\n{gone}"
    );
    let second = section(transcript, "10. Verify that");
    assert!(
        shows_interface(second, IFNAME),
        "ip a of the second pod shows {IFNAME}:\n{second}"
    );

    // The sandboxes created in step 2 are the ones the runtime lists after each change.
    let created = section(transcript, "2. Deploy");
    let sandboxes: Vec<&str> = created
        .lines()
        .filter(|line| line.starts_with("pod hello-multi-net-"))
        .filter_map(|line| line.split("sandbox ").nth(1))
        .filter_map(|rest| rest.split(',').next())
        .collect();
    assert_eq!(sandboxes.len(), 2, "step 2 names two sandboxes:\n{created}");
    for (step, sandbox) in [
        ("5. Verify that the first pod", sandboxes[0]),
        ("8. Verify that the first pod", sandboxes[0]),
        ("11. Verify that the second pod", sandboxes[1]),
    ] {
        let text = section(transcript, step);
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
