//! Reading the links inside a pod's network namespace.
//!
//! podagent is level-triggered: before it plans an ADD or DEL it looks at what is really inside
//! the pod sandbox's netns (DESIGN.md §2). That needs a netlink socket that lives *in* that
//! namespace, and the only way to get one is to create it from a thread that has entered the
//! namespace with `setns(2)`.
//!
//! Design: one short-lived OS thread per lookup. The thread opens the netns file, calls
//! `setns(CLONE_NEWNET)`, creates the rtnetlink socket (registered with the caller's tokio
//! reactor), hands it back over a oneshot channel and ends. A netlink socket stays bound to the
//! namespace it was created in for its whole life, so the dumps themselves then run as ordinary
//! async I/O on the caller's runtime. Why this shape:
//! - no tokio worker or blocking-pool thread ever changes namespace: `setns` only affects the
//!   calling thread, and the thread that called it dies right after, so nothing else can run
//!   in the pod's namespace by accident and there is no "switch back" step that could fail
//!   halfway and leave a pooled thread in the wrong namespace;
//! - the thread does three syscalls and exits; spawning it costs tens of microseconds, which is
//!   nothing next to a reconcile (which runs a CNI plugin), so a long-lived switching thread
//!   would add state for no gain.
//!
//! `nix::sched::setns` is a safe wrapper, so this module needs no `unsafe`. A missing or dead
//! namespace (a removed bind mount, a `/proc/<pid>/ns/net` of an exited process) surfaces as a
//! typed [`NetnsError`]; [`NetnsError::is_gone`] tells it apart from real failures.

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;

mod routes;

pub use routes::{ReplacedRoute, move_default_route, restore_default_routes};

use futures::TryStreamExt;
use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage, State};
use tokio::sync::oneshot;

/// One network interface as seen from inside a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    /// Hardware address as lowercase `aa:bb:..` (absent for links without one, e.g. some
    /// tunnels).
    pub mac: Option<String>,
    pub oper_state: OperState,
    pub addresses: Vec<Address>,
}

/// An address assigned to a link, with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub ip: IpAddr,
    pub(crate) prefix_len: u8,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix_len)
    }
}

/// RFC 2863 operational state, as the kernel reports it in `IFLA_OPERSTATE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperState {
    Up,
    Down,
    LowerLayerDown,
    Dormant,
    Testing,
    NotPresent,
    /// The kernel does not know (loopback and veth peers in some states report this) or
    /// reported a value newer than this crate understands.
    Unknown,
}

impl From<State> for OperState {
    fn from(state: State) -> Self {
        match state {
            State::Up => OperState::Up,
            State::Down => OperState::Down,
            State::LowerLayerDown => OperState::LowerLayerDown,
            State::Dormant => OperState::Dormant,
            State::Testing => OperState::Testing,
            State::NotPresent => OperState::NotPresent,
            _ => OperState::Unknown,
        }
    }
}

/// Why the links of a namespace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {} (is it a network namespace?)", path.display())]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot open a netlink socket in network namespace {}", path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the thread that enters network namespace {}", path.display())]
    SpawnThread {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread entering network namespace {} ended without an answer", path.display())]
    ThreadLost { path: PathBuf },
    #[error("netlink {request} dump in network namespace {} failed", path.display())]
    Dump {
        path: PathBuf,
        request: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("netlink connection in network namespace {} closed before the dump ended", path.display())]
    ConnectionClosed { path: PathBuf },
    #[error("no link {ifname} in network namespace {}", path.display())]
    NoLink { path: PathBuf, ifname: String },
    #[error("cannot {what} in network namespace {}", path.display())]
    Route {
        path: PathBuf,
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

/// Which namespace a path led to when it was opened: the device and inode of the nsfs file
/// behind it. Equal ids are the same namespace; a path whose id changed now leads somewhere
/// else (a `/proc/<pid>/ns/net` whose pid was reused, a bind mount replaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetnsId {
    dev: u64,
    ino: u64,
}

impl NetnsId {
    /// An id for test doubles, which have no files behind their paths.
    #[cfg(test)]
    pub(crate) fn fake(n: u64) -> NetnsId {
        NetnsId { dev: 0, ino: n }
    }
}

/// What one look into a namespace found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The namespace that was looked into.
    pub id: NetnsId,
    /// The links in it, each with its addresses.
    pub links: Vec<Link>,
}

pub(crate) type NetnsFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, NetnsError>> + Send + 'a>>;

/// Looks into network namespaces, and moves a pod's default route (`routes`); the seam the
/// reconciler is tested through.
pub(crate) trait NetnsAccess: Send + Sync {
    fn inspect<'a>(&'a self, netns: &'a Path) -> NetnsFuture<'a, Inspection>;

    /// [`move_default_route`].
    fn move_default_route<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
        gateway: IpAddr,
    ) -> NetnsFuture<'a, Vec<ReplacedRoute>>;

    /// [`restore_default_routes`].
    fn restore_default_routes<'a>(
        &'a self,
        netns: &'a Path,
        routes: &'a [ReplacedRoute],
    ) -> NetnsFuture<'a, Vec<ReplacedRoute>>;
}

/// The real access: netlink inside the namespace (see the module doc).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Netlink;

impl NetnsAccess for Netlink {
    fn inspect<'a>(&'a self, netns: &'a Path) -> NetnsFuture<'a, Inspection> {
        Box::pin(inspect(netns))
    }

    fn move_default_route<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
        gateway: IpAddr,
    ) -> NetnsFuture<'a, Vec<ReplacedRoute>> {
        Box::pin(move_default_route(netns, ifname, gateway))
    }

    fn restore_default_routes<'a>(
        &'a self,
        netns: &'a Path,
        routes: &'a [ReplacedRoute],
    ) -> NetnsFuture<'a, Vec<ReplacedRoute>> {
        Box::pin(restore_default_routes(netns, routes))
    }
}

type RouteConnection = (
    rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage>,
    rtnetlink::Handle,
);

/// Collects one netlink dump, naming the request and the namespace when it fails.
async fn dump<M>(
    netns: &Path,
    request: &'static str,
    messages: impl futures::TryStream<Ok = M, Error = rtnetlink::Error>,
) -> Result<Vec<M>, NetnsError> {
    messages
        .try_collect()
        .await
        .map_err(|source| NetnsError::Dump {
            path: netns.to_owned(),
            request,
            source,
        })
}

/// Lists the links (with their addresses) inside the network namespace at `netns`, a path
/// such as `/var/run/netns/cni-…` or `/proc/<pid>/ns/net`, used verbatim, and names the
/// namespace the path led to.
///
/// Must be called from within a tokio runtime (the netlink socket is driven by it).
pub async fn inspect(netns: &Path) -> Result<Inspection, NetnsError> {
    with_socket(netns, |id, handle| async move {
        let links: Vec<LinkMessage> = dump(netns, "link", handle.link().get().execute()).await?;
        let addresses: Vec<AddressMessage> =
            dump(netns, "address", handle.address().get().execute()).await?;
        Ok(Inspection {
            id,
            links: assemble(&links, &addresses),
        })
    })
    .await
}

/// Runs `work` with a netlink handle whose socket lives in `netns`.
async fn with_socket<T, F, Fut>(netns: &Path, work: F) -> Result<T, NetnsError>
where
    F: FnOnce(NetnsId, rtnetlink::Handle) -> Fut,
    Fut: Future<Output = Result<T, NetnsError>>,
{
    let (id, (connection, handle)) = socket_in(netns).await?;
    // The connection is polled here, not spawned: when this function returns, the socket is
    // closed, so repeated lookups cannot pile up open descriptors.
    tokio::select! {
        biased;
        result = work(id, handle) => result,
        () = connection => Err(NetnsError::ConnectionClosed { path: netns.to_owned() }),
    }
}

/// Creates an rtnetlink connection whose socket lives in `netns`, from a throw-away thread.
async fn socket_in(netns: &Path) -> Result<(NetnsId, RouteConnection), NetnsError> {
    let runtime = tokio::runtime::Handle::current();
    let path = netns.to_owned();
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("netns-enter".into())
        .spawn({
            let path = path.clone();
            move || {
                // The receiver may be gone if the caller was cancelled; the socket then just
                // closes here.
                let _ = tx.send(enter_and_open(&path, &runtime));
            }
        })
        .map_err(|source| NetnsError::SpawnThread {
            path: path.clone(),
            source,
        })?;
    rx.await.map_err(|_| NetnsError::ThreadLost { path })?
}

/// Runs on the dedicated thread only: after `setns` this thread belongs to the pod's
/// namespace, which is why it is never a pooled thread and ends right after.
fn enter_and_open(
    netns: &Path,
    runtime: &tokio::runtime::Handle,
) -> Result<(NetnsId, RouteConnection), NetnsError> {
    let open_error = |source| NetnsError::Open {
        path: netns.to_owned(),
        source,
    };
    let file = File::open(netns).map_err(open_error)?;
    let meta = file.metadata().map_err(open_error)?;
    let id = NetnsId {
        dev: meta.dev(),
        ino: meta.ino(),
    };
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
        path: netns.to_owned(),
        source,
    })?;
    // Registers the socket with the caller's reactor; the socket's namespace is fixed now.
    let _guard = runtime.enter();
    let (connection, handle, _multicast) =
        rtnetlink::new_connection().map_err(|source| NetnsError::Socket {
            path: netns.to_owned(),
            source,
        })?;
    Ok((id, (connection, handle)))
}

/// Joins the link and address dumps into [`Link`]s, in kernel index order.
fn assemble(links: &[LinkMessage], addresses: &[AddressMessage]) -> Vec<Link> {
    let mut out: Vec<Link> = links
        .iter()
        .map(|message| {
            let mut link = Link {
                name: String::new(),
                index: message.header.index,
                mac: None,
                oper_state: OperState::Unknown,
                addresses: Vec::new(),
            };
            for attribute in &message.attributes {
                match attribute {
                    LinkAttribute::IfName(name) => link.name.clone_from(name),
                    LinkAttribute::Address(bytes) => link.mac = Some(format_mac(bytes)),
                    LinkAttribute::OperState(state) => link.oper_state = (*state).into(),
                    _ => {}
                }
            }
            link
        })
        .collect();
    for message in addresses {
        let Some(ip) = address_of(message) else {
            continue;
        };
        if let Some(link) = out.iter_mut().find(|l| l.index == message.header.index) {
            link.addresses.push(Address {
                ip,
                prefix_len: message.header.prefix_len,
            });
        }
    }
    out.sort_by_key(|link| link.index);
    out
}

/// The link's own address: `IFA_LOCAL` when present (on point-to-point links `IFA_ADDRESS` is
/// the peer), else `IFA_ADDRESS` (the only one IPv6 sends).
fn address_of(message: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    address
}

fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::AddressFamily;
    use std::net::Ipv4Addr;

    fn link_message(index: u32, name: &str, mac: &[u8], state: State) -> LinkMessage {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes = vec![
            LinkAttribute::IfName(name.to_owned()),
            LinkAttribute::Address(mac.to_vec()),
            LinkAttribute::OperState(state),
        ];
        message
    }

    fn address_message(index: u32, attributes: Vec<AddressAttribute>) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.header.index = index;
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = 24;
        message.attributes = attributes;
        message
    }

    #[test]
    fn addresses_are_attached_to_their_link_by_index() {
        let links = [
            link_message(7, "eth0", &[0x0a, 0, 0, 0, 0, 0x1f], State::Up),
            link_message(1, "lo", &[0; 6], State::Unknown),
        ];
        let ip = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
        let addresses = [address_message(7, vec![AddressAttribute::Address(ip)])];

        let result = assemble(&links, &addresses);

        assert_eq!(result.len(), 2);
        assert_eq!(result[0].name, "lo", "sorted by index");
        assert!(result[0].addresses.is_empty());
        assert_eq!(result[1].mac.as_deref(), Some("0a:00:00:00:00:1f"));
        assert_eq!(result[1].oper_state, OperState::Up);
        assert_eq!(result[1].addresses, vec![Address { ip, prefix_len: 24 }]);
    }

    #[test]
    fn local_address_wins_over_peer_address() {
        let local = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
        let peer = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9));
        let message = address_message(
            3,
            vec![
                AddressAttribute::Address(peer),
                AddressAttribute::Local(local),
            ],
        );
        assert_eq!(address_of(&message), Some(local));
    }

    #[test]
    fn addresses_of_unknown_links_are_ignored() {
        let ip = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3));
        let result = assemble(
            &[link_message(1, "lo", &[0; 6], State::Unknown)],
            &[address_message(42, vec![AddressAttribute::Address(ip)])],
        );
        assert!(result[0].addresses.is_empty());
    }
}
