//! Seeing an interface appear or disappear inside a pod's netns the moment the kernel says so.
//!
//! Latency is measured up to the kernel's own notification, not up to a poll of `ip`: a
//! dedicated thread enters the namespace with `setns(2)`, opens an rtnetlink socket subscribed
//! to `RTNLGRP_LINK` (the socket then belongs to that namespace for life), and forwards every
//! `RTM_NEWLINK`/`RTM_DELLINK` with the time it was read. podagent's own `netns` module only
//! dumps links, so the subscription lives here. The thread owns nothing but its socket and ends
//! within one read timeout of [`LinkWatch`] being dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::{TimeVal, TimeValLike};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::sync::mpsc::UnboundedSender;

/// `RTMGRP_LINK`: the legacy bind mask of the `RTNLGRP_LINK` multicast group.
const RTMGRP_LINK: u32 = 1;
/// How long a blocked read waits before the thread looks at its stop flag.
const READ_TIMEOUT_MS: i64 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
}

/// One link notification from the namespace watched under `tag`.
#[derive(Debug, Clone)]
pub struct LinkEvent {
    pub at: Instant,
    pub tag: usize,
    pub change: Change,
    pub name: String,
}

/// A running subscription; stops (and closes its socket) on drop.
pub struct LinkWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LinkWatch {
    /// Subscribes inside `netns` and returns once the subscription is in place, so no change
    /// made after this call can be missed.
    pub fn start(netns: &Path, tag: usize, events: UnboundedSender<LinkEvent>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = netns.to_owned();
        let thread = std::thread::Builder::new()
            .name("linkwatch".into())
            .spawn({
                let stop = stop.clone();
                move || match subscribe(&path) {
                    Ok(socket) => {
                        let _ = ready_tx.send(Ok(()));
                        forward(&socket, tag, &stop, &events);
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                    }
                }
            })
            .context("spawn the link watch thread")?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("link watch thread for {} died", netns.display()))??;
        Ok(LinkWatch {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs on the watch thread only: after `setns` the thread belongs to the pod's namespace,
/// which is why it is a thread of its own that ends with the watch.
fn subscribe(netns: &PathBuf) -> Result<Socket> {
    let file = File::open(netns).with_context(|| format!("open netns {}", netns.display()))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("enter netns {}", netns.display()))?;
    let mut socket = Socket::new(NETLINK_ROUTE).context("open an rtnetlink socket")?;
    socket
        .bind(&SocketAddr::new(0, RTMGRP_LINK))
        .context("subscribe to RTNLGRP_LINK")?;
    setsockopt(
        &socket,
        sockopt::ReceiveTimeout,
        &TimeVal::milliseconds(READ_TIMEOUT_MS),
    )
    .context("set the netlink read timeout")?;
    Ok(socket)
}

fn forward(socket: &Socket, tag: usize, stop: &AtomicBool, events: &UnboundedSender<LinkEvent>) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    while !stop.load(Ordering::Relaxed) {
        buf.clear();
        if socket.recv(&mut buf, 0).is_err() {
            continue; // read timeout (or an interrupted read): look at the stop flag again
        }
        let at = Instant::now();
        let mut offset = 0;
        while offset < buf.len() {
            let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..])
            else {
                break;
            };
            let length = message.header.length as usize;
            if let NetlinkPayload::InnerMessage(inner) = message.payload {
                let change = match inner {
                    RouteNetlinkMessage::NewLink(link) => Some((Change::Added, link)),
                    RouteNetlinkMessage::DelLink(link) => Some((Change::Removed, link)),
                    _ => None,
                };
                if let Some((change, link)) = change
                    && let Some(name) = link_name(&link)
                {
                    let event = LinkEvent {
                        at,
                        tag,
                        change,
                        name,
                    };
                    if events.send(event).is_err() {
                        return;
                    }
                }
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// Events received so far but not yet consumed are dropped, so the next wait sees only
/// what happens after this call.
pub fn drain(events: &mut tokio::sync::mpsc::UnboundedReceiver<LinkEvent>) {
    while events.try_recv().is_ok() {}
}

/// Waits for `change` of link `name` in the namespace watched under `tag`.
pub async fn wait_for(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<LinkEvent>,
    tag: usize,
    name: &str,
    change: Change,
    timeout: Duration,
) -> Result<Instant> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| anyhow!("{name} not {change:?} within {timeout:?}"))?
            .ok_or_else(|| anyhow!("link watch ended"))?;
        if event.tag == tag && event.change == change && event.name == name {
            return Ok(event.at);
        }
    }
}
