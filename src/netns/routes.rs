//! Moving a pod's default route onto a hot-plugged interface, and back.
//!
//! An NPWG element may ask for `default-route: [gateway]`. Multus, at sandbox creation, then
//! makes that gateway, on the element's interface, the pod's default route for the gateway's
//! family, and removes the default routes the pod had (its cluster network's). podagent does
//! the same in a running pod. Because that pod keeps running after the element goes again,
//! podagent also remembers what it replaced (in the attachment's record) and puts it back
//! when it removes the interface, where Multus would leave the pod without a default route.
//!
//! The kernel decides whether the gateway is reachable through the interface. A refusal comes
//! back as an error naming the gateway and the interface, after the routes removed for it are
//! put back.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType,
};
use serde::{Deserialize, Serialize};

use super::{NetnsError, dump, with_socket};

/// A default route podagent removed to make room for a requested one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplacedRoute {
    /// The route's family: `true` for IPv6.
    pub(crate) ipv6: bool,
    /// Its gateway; `None` for a route straight out of the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) via: Option<IpAddr>,
    /// The device it went out of, by name (indexes are not stable across a restore).
    pub(crate) dev: String,
    /// Its metric, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) metric: Option<u32>,
}

impl std::fmt::Display for ReplacedRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "default")?;
        if let Some(via) = self.via {
            write!(f, " via {via}")?;
        }
        write!(f, " dev {}", self.dev)
    }
}

/// Makes `gateway` on `ifname` the default route of the gateway's family in `netns`, in place
/// of the default routes of that family there; returns those, for [`restore_default_routes`].
/// When the kernel refuses the new route, the old ones are put back before the error returns.
pub async fn move_default_route(
    netns: &Path,
    ifname: &str,
    gateway: IpAddr,
) -> Result<Vec<ReplacedRoute>, NetnsError> {
    with_socket(netns, |_, handle| async move {
        let names = link_names(netns, &handle).await?;
        let Some(index) = names.iter().find_map(|(i, n)| (n == ifname).then_some(*i)) else {
            return Err(NetnsError::NoLink {
                path: netns.to_owned(),
                ifname: ifname.to_owned(),
            });
        };
        let defaults = default_routes(netns, &handle, gateway.is_ipv6()).await?;
        let replaced: Vec<ReplacedRoute> = defaults
            .iter()
            .filter_map(|route| replaced(route, gateway.is_ipv6(), &names))
            .collect();
        for route in defaults {
            if let Err(source) = handle.route().del(route).execute().await {
                // Those already deleted come back; the one still there is refused as a
                // duplicate, which changes nothing.
                put_back(&handle, &replaced, &names).await;
                return Err(route_error(netns, "delete the pod's default route", source));
            }
        }
        let new = route_message(gateway.is_ipv6(), Some(gateway), index, None);
        if let Err(source) = handle.route().add(new).execute().await {
            put_back(&handle, &replaced, &names).await;
            let what = format!("add the default route via {gateway} dev {ifname}");
            return Err(route_error(netns, &what, source));
        }
        Ok(replaced)
    })
    .await
}

/// Puts back the default routes [`move_default_route`] replaced, each one whose device is
/// still in `netns` and whose family has no default route now (the interface that carried the
/// requested one is gone, or the user set another meanwhile, which stays). Returns the routes
/// put back.
pub async fn restore_default_routes(
    netns: &Path,
    routes: &[ReplacedRoute],
) -> Result<Vec<ReplacedRoute>, NetnsError> {
    with_socket(netns, |_, handle| async move {
        let names = link_names(netns, &handle).await?;
        let mut wanted = Vec::new();
        for ipv6 in [false, true] {
            let of_family: Vec<ReplacedRoute> =
                routes.iter().filter(|r| r.ipv6 == ipv6).cloned().collect();
            if !of_family.is_empty() && default_routes(netns, &handle, ipv6).await?.is_empty() {
                wanted.extend(of_family);
            }
        }
        let restored = put_back(&handle, &wanted, &names).await;
        Ok(restored)
    })
    .await
}

/// Adds `routes` whose device exists; returns the ones the kernel took.
async fn put_back(
    handle: &rtnetlink::Handle,
    routes: &[ReplacedRoute],
    names: &HashMap<u32, String>,
) -> Vec<ReplacedRoute> {
    let mut restored = Vec::new();
    for route in routes {
        let Some(index) = names
            .iter()
            .find_map(|(i, n)| (*n == route.dev).then_some(*i))
        else {
            continue;
        };
        let message = route_message(route.ipv6, route.via, index, route.metric);
        if handle.route().add(message).execute().await.is_ok() {
            restored.push(route.clone());
        }
    }
    restored
}

async fn link_names(
    netns: &Path,
    handle: &rtnetlink::Handle,
) -> Result<HashMap<u32, String>, NetnsError> {
    let links = dump(netns, "link", handle.link().get().execute()).await?;
    Ok(super::assemble(&links, &[])
        .into_iter()
        .map(|link| (link.index, link.name))
        .collect())
}

/// The default routes of one family in the main table.
async fn default_routes(
    netns: &Path,
    handle: &rtnetlink::Handle,
    ipv6: bool,
) -> Result<Vec<RouteMessage>, NetnsError> {
    let filter = if ipv6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    let routes = dump(netns, "route", handle.route().get(filter).execute()).await?;
    Ok(routes.into_iter().filter(is_main_default).collect())
}

fn is_main_default(route: &RouteMessage) -> bool {
    let table = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table));
    route.header.destination_prefix_length == 0
        && route.header.kind == RouteType::Unicast
        && table == u32::from(RouteHeader::RT_TABLE_MAIN)
}

/// What to put back for a dumped default route, when it names its device.
fn replaced(
    route: &RouteMessage,
    ipv6: bool,
    names: &HashMap<u32, String>,
) -> Option<ReplacedRoute> {
    let mut via = None;
    let mut dev = None;
    let mut metric = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => via = Some(IpAddr::V4(*ip)),
            RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => via = Some(IpAddr::V6(*ip)),
            RouteAttribute::Oif(index) => dev = names.get(index).cloned(),
            RouteAttribute::Priority(priority) => metric = Some(*priority),
            _ => {}
        }
    }
    Some(ReplacedRoute {
        ipv6,
        via,
        dev: dev?,
        metric,
    })
}

/// `default [via <via>] dev <index> [metric <metric>]` in the main table.
fn route_message(ipv6: bool, via: Option<IpAddr>, index: u32, metric: Option<u32>) -> RouteMessage {
    let mut message = if ipv6 {
        let builder = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
            .output_interface(index);
        match via {
            Some(IpAddr::V6(via)) => builder.gateway(via),
            _ => builder.scope(RouteScope::Link),
        }
        .build()
    } else {
        let builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(index);
        match via {
            Some(IpAddr::V4(via)) => builder.gateway(via),
            _ => builder.scope(RouteScope::Link),
        }
        .build()
    };
    if let Some(metric) = metric {
        message.attributes.push(RouteAttribute::Priority(metric));
    }
    message
}

fn route_error(netns: &Path, what: &str, source: rtnetlink::Error) -> NetnsError {
    NetnsError::Route {
        path: netns.to_owned(),
        what: what.to_owned(),
        source,
    }
}
