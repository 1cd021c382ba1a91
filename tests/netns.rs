//! The netns observer against real network namespaces (run as root).
//!
//! Tests in this file share one lock: the leak test counts the process's descriptors and
//! threads, which other tests running in parallel would disturb.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use podagent::netns::{self, NetnsError, OperState};
use testkit::netns::{TestNetns, run_ip, unique_name};
use testkit::prereq;

/// Async so a test holding it may await; tokio's mutex does not poison when a test fails.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The links in the namespace at `path`: what the reconciler's observer sees.
async fn links_in(path: &Path) -> Result<Vec<netns::Link>, NetnsError> {
    netns::inspect(path).await.map(|found| found.links)
}

/// Deletes the host end of a veth pair, also when the test fails.
struct HostLink(String);

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// A child process in a fresh network namespace (`unshare --net`), killed and reaped on drop.
struct NetnsProcess(Child);

impl NetnsProcess {
    fn start() -> Self {
        prereq::require_command("unshare", "util-linux");
        let child = Command::new("unshare")
            .args(["--net", "sleep", "600"])
            .spawn()
            .expect("start `unshare --net sleep`");
        let process = NetnsProcess(child);
        // unshare execs sleep once the namespace exists; wait until the pid's netns differs.
        let host = inode(Path::new("/proc/self/ns/net"));
        let path = process.netns();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).map(|m| m.ino()).ok() == Some(host) {
            assert!(
                Instant::now() < deadline,
                "unshare never entered a new netns"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        process
    }

    fn netns(&self) -> std::path::PathBuf {
        format!("/proc/{}/ns/net", self.0.id()).into()
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for NetnsProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|err| panic!("stat {}: {err}", path.display()))
        .ino()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// (thread id, thread name, netns inode) of every thread of this process.
fn threads() -> Vec<(String, String, u64)> {
    std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .filter_map(Result::ok)
        .filter_map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let ino = std::fs::metadata(task.path().join("ns/net")).ok()?.ino();
            Some((
                task.file_name().to_string_lossy().into_owned(),
                name.trim().to_owned(),
                ino,
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veth_moved_into_namespace_is_listed_with_its_mac() {
    let _serial = SERIAL.lock().await;
    let netns = TestNetns::new();
    let host_end = unique_name("vh");
    let pod_end = unique_name("vp");
    let mac = "02:42:c6:12:00:07";
    run_ip(&[
        "link", "add", &host_end, "type", "veth", "peer", "name", &pod_end, "address", mac,
    ]);
    let _host_link = HostLink(host_end.clone());
    run_ip(&["link", "set", &pod_end, "netns", netns.name()]);
    netns.ip(&["addr", "add", "198.18.77.2/24", "dev", &pod_end]);
    netns.ip(&["link", "set", &pod_end, "up"]);

    let links = links_in(&netns.path()).await.expect("list links");

    let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, vec!["lo", pod_end.as_str()], "links: {links:?}");
    let veth = &links[1];
    assert_eq!(veth.mac.as_deref(), Some(mac));
    assert!(veth.index > 1);
    assert_eq!(
        veth.addresses
            .iter()
            .filter(|a| a.ip.is_ipv4())
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["198.18.77.2/24"]
    );
    // The host end is down, so the pod end reports lower-layer-down, not up.
    assert_eq!(veth.oper_state, OperState::LowerLayerDown);
    let lo = &links[0];
    assert_eq!(lo.index, 1);
    assert!(
        lo.addresses.iter().any(|a| a.ip.is_loopback()),
        "lo has 127.0.0.1: {lo:?}"
    );
    // The host side does not see the pod end any more.
    let host_links = links_in(Path::new("/proc/self/ns/net"))
        .await
        .expect("host links");
    assert!(host_links.iter().any(|l| l.name == host_end));
    assert!(!host_links.iter().any(|l| l.name == pod_end));
}

#[tokio::test]
async fn deleted_namespace_is_a_typed_gone_error() {
    let _serial = SERIAL.lock().await;
    let netns = TestNetns::new();
    let path = netns.path();
    drop(netns);

    let error = links_in(&path)
        .await
        .expect_err("a deleted netns cannot be listed");
    assert!(
        matches!(error, NetnsError::Open { path: ref reported, .. } if *reported == path),
        "got {error:?}"
    );
}

#[tokio::test]
async fn namespace_of_an_exited_process_is_gone() {
    let _serial = SERIAL.lock().await;
    let mut process = NetnsProcess::start();
    let path = process.netns();
    let live = links_in(&path).await.expect("live process netns");
    assert_eq!(
        live.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        vec!["lo"]
    );

    process.stop();
    let error = links_in(&path).await.expect_err("the process has exited");
    assert!(
        matches!(error, NetnsError::Open { .. } | NetnsError::Enter { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn inspection_names_the_namespace_a_path_leads_to() {
    let _serial = SERIAL.lock().await;
    let first = TestNetns::new();
    let other = TestNetns::new();
    let path = first.path();
    let seen = netns::inspect(&path).await.expect("inspect").id;
    assert_eq!(
        netns::inspect(&path).await.expect("inspect again").id,
        seen,
        "the same namespace twice"
    );
    let other_id = netns::inspect(&other.path())
        .await
        .expect("inspect other")
        .id;
    assert_ne!(other_id, seen, "two namespaces");

    // The path now leads to the other namespace (a bind mount over it): a different id.
    let mount = |args: &[&str]| {
        let status = std::process::Command::new(args[0])
            .args(&args[1..])
            .status()
            .expect("run mount");
        assert!(status.success(), "{args:?} failed");
    };
    let target = path.to_str().expect("utf-8 path");
    mount(&[
        "mount",
        "--bind",
        other.path().to_str().expect("utf-8 path"),
        target,
    ]);
    let moved = netns::inspect(&path).await.map(|found| found.id);
    mount(&["umount", target]);
    assert_eq!(moved.expect("inspect through the bind mount"), other_id);
    assert_eq!(netns::inspect(&path).await.expect("inspect after").id, seen);
}

#[tokio::test]
async fn a_file_that_is_not_a_namespace_is_refused() {
    let _serial = SERIAL.lock().await;
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let error = links_in(file.path())
        .await
        .expect_err("a regular file is no namespace");
    assert!(matches!(error, NetnsError::Enter { .. }), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_lookups_leave_every_thread_home_and_leak_no_descriptors() {
    let _serial = SERIAL.lock().await;
    let netns = TestNetns::new();
    let path = netns.path();
    let host = inode(Path::new("/proc/self/ns/net"));
    let this_thread = inode(Path::new("/proc/thread-self/ns/net"));
    assert_eq!(host, this_thread);
    assert_ne!(
        inode(&path),
        host,
        "the test netns must differ from the host's"
    );

    // Warm up once so lazily created runtime state is not counted as a leak.
    links_in(&path).await.expect("warm-up lookup");
    let fds_before = open_fds();

    for round in 0..1_000 {
        let links = links_in(&path)
            .await
            .unwrap_or_else(|err| panic!("lookup {round}: {err}"));
        assert_eq!(links.len(), 1, "lookup {round} sees only lo: {links:?}");
    }

    assert_eq!(inode(Path::new("/proc/self/ns/net")), host);
    assert_eq!(inode(Path::new("/proc/thread-self/ns/net")), host);
    // The namespace-entering threads end right after handing over their socket; give the
    // last one a moment to exit, then every remaining thread must be in the host netns.
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads().iter().any(|(_, name, _)| name == "netns-enter") {
        assert!(
            Instant::now() < deadline,
            "netns-enter threads did not exit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let strays: Vec<_> = threads()
        .into_iter()
        .filter(|(_, _, ino)| *ino != host)
        .collect();
    assert!(
        strays.is_empty(),
        "threads outside the host netns: {strays:?}"
    );
    assert_eq!(open_fds(), fds_before, "descriptor count changed");
}
