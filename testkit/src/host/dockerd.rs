//! A private Docker engine, for tests of podagent's Docker runtime path (dockershim-style pod
//! sandboxes: pause containers carrying the kubelet's labels).
//!
//! The flags keep it off the host's networking and storage: its own data-root, exec-root, socket
//! and pidfile under a temp dir, the vfs storage driver (no overlay mounts to leak), no bridge, no
//! iptables rules and no IP forwarding (dockerd turns the host's `net.ipv4.ip_forward` on by
//! default, even without iptables). An empty `--config-file` keeps a host
//! `/etc/docker/daemon.json` out of it.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, ImportImageOptions, InspectContainerOptions, ListContainersOptions,
    RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
};
use futures::StreamExt;

use super::images::{BUSYBOX_IMAGE, PAUSE_IMAGE, image_tar};
use super::process::{self, Daemon};
use crate::prereq;

/// How long dockerd may take to answer on its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Seconds Docker waits after SIGTERM before SIGKILL when stopping a sandbox: `sleep` as PID 1
/// ignores SIGTERM, so waiting longer only slows tests down.
const STOP_TIMEOUT_SECS: i32 = 1;

/// A running private dockerd; its containers removed and the daemon stopped on drop.
#[derive(Debug)]
pub struct Dockerd {
    dir: PathBuf,
    socket: PathBuf,
    daemon: Daemon,
    docker: Docker,
}

impl Dockerd {
    /// Starts a private dockerd, waits until it answers, and loads the pause and busybox images.
    /// Panics naming what is missing (root, dockerd, images) or, with the daemon's log, when it
    /// does not come up.
    pub async fn start() -> Dockerd {
        prereq::require_root();
        prereq::require_command("dockerd", "docker.io");
        let images = [image_tar(PAUSE_IMAGE), image_tar(BUSYBOX_IMAGE)];

        let dir = tempfile::Builder::new()
            .prefix("pa-dkd")
            .tempdir()
            .unwrap_or_else(|err| panic!("cannot create a temp dir for dockerd: {err}"))
            .keep();
        let socket = dir.join("docker.sock");
        let config = dir.join("daemon.json");
        fs::write(&config, "{}")
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", config.display()));
        let mut command = Command::new("dockerd");
        command
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .args([
                "--storage-driver=vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--bridge=none",
            ]);
        let mut daemon = Daemon::spawn("dockerd", command, &dir.join("dockerd.log"));
        let docker = wait_ready(&mut daemon, &socket).await;
        let dockerd = Dockerd {
            dir,
            socket,
            daemon,
            docker,
        };
        for tar in images {
            dockerd.load(&tar).await;
        }
        dockerd
    }

    /// The Docker API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// A client for the private daemon, API version negotiated.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Runs a pod sandbox the way dockershim did: a pause container named
    /// `k8s_POD_<name>_<namespace>_<uid>_0` with `--network none` and the kubelet's labels.
    /// Returns the container id.
    pub async fn run_sandbox(&self, uid: &str, name: &str, namespace: &str) -> String {
        let labels = HashMap::from([
            ("io.kubernetes.pod.uid".to_owned(), uid.to_owned()),
            (
                "io.kubernetes.docker.type".to_owned(),
                "podsandbox".to_owned(),
            ),
            ("io.kubernetes.pod.name".to_owned(), name.to_owned()),
            (
                "io.kubernetes.pod.namespace".to_owned(),
                namespace.to_owned(),
            ),
        ]);
        let body = ContainerCreateBody {
            image: Some(PAUSE_IMAGE.to_owned()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some("none".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(format!("k8s_POD_{name}_{namespace}_{uid}_0")),
            ..Default::default()
        };
        let id = self
            .docker
            .create_container(Some(options), body)
            .await
            .unwrap_or_else(|err| panic!("creating the sandbox of pod {namespace}/{name}: {err}"))
            .id;
        self.docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
            .unwrap_or_else(|err| panic!("starting sandbox {id} of pod {namespace}/{name}: {err}"));
        id
    }

    /// The netns of running container `id`: `/proc/<State.Pid>/ns/net`.
    pub async fn sandbox_netns(&self, id: &str) -> PathBuf {
        let pid = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .unwrap_or_else(|err| panic!("inspecting container {id}: {err}"))
            .state
            .and_then(|state| state.pid)
            .filter(|pid| *pid > 0)
            .unwrap_or_else(|| panic!("container {id} has no running process"));
        PathBuf::from(format!("/proc/{pid}/ns/net"))
    }

    /// Stops container `id` (it stays, exited, until removed or the fixture drops).
    pub async fn stop(&self, id: &str) {
        let options = StopContainerOptions {
            t: Some(STOP_TIMEOUT_SECS),
            signal: None,
        };
        self.docker
            .stop_container(id, Some(options))
            .await
            .unwrap_or_else(|err| panic!("stopping container {id}: {err}"));
    }

    /// `docker load` of one image tar.
    async fn load(&self, tar: &Path) {
        let data =
            fs::read(tar).unwrap_or_else(|err| panic!("cannot read {}: {err}", tar.display()));
        let options = ImportImageOptions {
            quiet: true,
            ..Default::default()
        };
        let mut progress =
            self.docker
                .import_image(options, bollard::body_full(bytes::Bytes::from(data)), None);
        while let Some(item) = progress.next().await {
            let detail = item.map(|info| info.error_detail.and_then(|detail| detail.message));
            match detail {
                Ok(None) => {}
                Ok(Some(message)) => panic!("docker load {} failed: {message}", tar.display()),
                Err(err) => panic!("docker load {} failed: {err}", tar.display()),
            }
        }
    }

    /// Force-removes every container, so dockerd unmounts and drops their netns itself.
    fn remove_all_containers(&self) {
        let docker = self.docker.clone();
        process::block_on_aside(async move {
            let listing = ListContainersOptions {
                all: true,
                ..Default::default()
            };
            let work = async {
                let containers = docker.list_containers(Some(listing)).await.ok()?;
                for id in containers.into_iter().filter_map(|c| c.id) {
                    let options = RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    };
                    let _ = docker.remove_container(&id, Some(options)).await;
                }
                Some(())
            };
            tokio::time::timeout(Duration::from_secs(60), work).await
        });
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.remove_all_containers();
        self.daemon.stop();
        process::kill_processes_naming(&self.dir);
        process::unmount_under(&self.dir);
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            eprintln!(
                "dockerd fixture: cannot remove {}: {err}",
                self.dir.display()
            );
        }
    }
}

/// Polls until the daemon answers a ping, then negotiates the API version (Debian's dockerd
/// speaks an older one than bollard's default).
async fn wait_ready(daemon: &mut Daemon, socket: &Path) -> Docker {
    let deadline = Instant::now() + READY_TIMEOUT;
    let path = socket.display().to_string();
    loop {
        daemon.assert_running();
        if socket.exists()
            && let Ok(docker) = Docker::connect_with_unix(&path, 60, bollard::API_DEFAULT_VERSION)
            && let Ok(docker) = docker.negotiate_version().await
            && docker.ping().await.is_ok()
        {
            return docker;
        }
        if Instant::now() > deadline {
            panic!(
                "dockerd did not answer on {path} within {READY_TIMEOUT:?}; log:\n{}",
                daemon.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
