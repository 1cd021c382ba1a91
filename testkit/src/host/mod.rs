//! A real test host: private containerd, CRI-O and dockerd instances and the local images they
//! run.
//!
//! podagent's runtime path (find a pod sandbox, enter its netns, run CNI) is only covered when it
//! runs against the real runtimes, so tests start their own daemons instead of mocking them. Each
//! instance lives in its own temp dir with its own sockets, state and CNI config, so parallel
//! tests (and parallel test binaries) never share anything, and a host daemon, if any, is never
//! touched.
//!
//! These are test fixtures: every failure panics with the operation and its context, so the test
//! that hit it fails loudly. Cleanup happens in `Drop`, also when the test panics: sandboxes and
//! containers are removed through the runtime (which tears down their netns and CNI allocations),
//! leftovers are force-deleted, the daemon's process group is terminated and reaped, mounts under
//! the instance dir are detached and the dir is removed.

mod containerd;
mod cri;
mod crio;
mod dockerd;
mod images;
pub(crate) mod process;

pub use containerd::Containerd;
pub(crate) use containerd::import_image;
pub(crate) use cri::{CniNetwork, cni_network};
pub use cri::{CriDaemon, CriSocket};
pub use crio::{Crio, NAMESPACES_DIR as CRIO_NAMESPACES_DIR, binary as crio_binary, crio_version};
pub use dockerd::Dockerd;
pub use images::{BUSYBOX_IMAGE, IMAGE_DIR, PAUSE_IMAGE, image_tar};
pub use process::{SubnetLease, processes, processes_in_netns, processes_naming, stale_socket};
