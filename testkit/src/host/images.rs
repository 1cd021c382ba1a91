//! The local test images: busybox and pause, built by `scripts/setup-test-host.sh`.
//!
//! No registry is reachable from a test host, so the images are docker-save tars assembled from
//! Debian's busybox-static; both `ctr images import` and the Docker `/images/load` endpoint take
//! them as they are.

use std::path::{Path, PathBuf};

/// Where `scripts/setup-test-host.sh` writes the image tars.
pub const IMAGE_DIR: &str = "/var/lib/podagent-test/images";

/// Busybox with `/bin/sh` as entrypoint, for containers that run commands.
pub const BUSYBOX_IMAGE: &str = "localhost/podagent-test/busybox:1";

/// The sandbox ("pause") image: busybox sleeping forever.
pub const PAUSE_IMAGE: &str = "localhost/podagent-test/pause:1";

/// The tar of `image` (one of [`BUSYBOX_IMAGE`], [`PAUSE_IMAGE`]); panics naming the setup script
/// when it has not been built.
pub fn image_tar(image: &str) -> PathBuf {
    let file = match image {
        BUSYBOX_IMAGE => "busybox.tar",
        PAUSE_IMAGE => "pause.tar",
        other => panic!("no local test image named {other}"),
    };
    let path = Path::new(IMAGE_DIR).join(file);
    if !path.is_file() {
        panic!(
            "images missing: {} not found; run scripts/setup-test-host.sh",
            path.display()
        );
    }
    path
}
