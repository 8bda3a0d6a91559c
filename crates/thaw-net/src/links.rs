//! Netlink work: namespaces, veth pairs, addresses and routes.
//!
//! Everything here is one or a few rtnetlink messages; nothing forks a
//! program. A namespace is configured through a netlink socket opened
//! inside it, so the daemon's own threads never change namespace.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

use futures::TryStreamExt;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::NetError;

/// The gateway every instance routes through: a link-local address the
/// host-side veth answers ARP for (proxy ARP) without owning it, so it is
/// the same in every namespace and never routed anywhere.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The routing protocol number thaw's own routes carry (`ip route` shows
/// `proto 116`), so a claim is told from a route somebody else made.
pub const ROUTE_PROTOCOL: u8 = 116;

/// The interface name inside every instance namespace.
pub const INSTANCE_LINK: &str = "eth0";

fn nl(what: &str) -> impl Fn(rtnetlink::Error) -> NetError + '_ {
    move |e| NetError::Netlink(format!("{what}: {e}"))
}

/// A connection to the routing netlink of the calling thread's namespace
/// (the host's: the daemon never leaves it).
pub(crate) fn host_handle() -> Result<Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection()
        .map_err(|e| NetError::Netlink(format!("cannot open rtnetlink: {e}")))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A new network namespace, and a routing netlink socket inside it. Made
/// on a thread of its own that ends right after: the namespace change dies
/// with it, and the socket stays bound to the namespace it was opened in.
pub(crate) fn new_namespace() -> Result<(OwnedFd, Socket), NetError> {
    std::thread::Builder::new()
        .name("thaw-netns".into())
        .spawn(|| -> Result<(OwnedFd, Socket), NetError> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::Namespace(format!("unshare: {e}")))?;
            let ns = std::fs::File::open("/proc/thread-self/ns/net")
                .map_err(|e| NetError::Namespace(format!("cannot open the namespace: {e}")))?;
            let socket = Socket::new(NETLINK_ROUTE)
                .map_err(|e| NetError::Namespace(format!("netlink socket: {e}")))?;
            Ok((OwnedFd::from(ns), socket))
        })
        .map_err(|e| NetError::Namespace(format!("cannot start a thread: {e}")))?
        .join()
        .map_err(|_| NetError::Namespace("the namespace thread panicked".into()))?
}

/// A connection over `socket` (opened in another namespace). The returned
/// guard ends the connection's task when dropped.
fn handle_of(socket: Socket) -> Result<(Handle, AbortOnDrop), NetError> {
    socket
        .set_non_blocking(true)
        .map_err(|e| NetError::Netlink(format!("netlink socket: {e}")))?;
    // SAFETY: `into_raw_fd` gives up ownership of an open netlink socket,
    // which `from_raw_fd` takes over; nothing else holds the descriptor.
    let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
    let (conn, handle, _) = rtnetlink::from_socket(socket);
    Ok((handle, AbortOnDrop(tokio::spawn(conn))))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Index of the link called `name`, if there is one.
pub(crate) async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl("get link")(e)),
    }
}

/// Names and indexes of every host link whose name starts with `prefix`.
pub(crate) async fn links_with_prefix(
    handle: &Handle,
    prefix: &str,
) -> Result<Vec<(String, u32)>, NetError> {
    let mut links = handle.link().get().execute();
    let mut found = Vec::new();
    while let Some(m) = links.try_next().await.map_err(nl("list links"))? {
        if let Some(name) = link_name(&m) {
            if name.starts_with(prefix) {
                found.push((name, m.header.index));
            }
        }
    }
    Ok(found)
}

fn link_name(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// Makes a veth pair: `host_name` on the host, [`INSTANCE_LINK`] inside
/// namespace `ns` (configured through `ns_socket`) with address `addr/32`
/// and a default route through [`GATEWAY`]; loopback up. Returns the host
/// link's index. On error the caller deletes `host_name` (the pair goes
/// with it).
pub(crate) async fn make_pair(
    host: &Handle,
    host_name: &str,
    ns: &OwnedFd,
    ns_socket: Socket,
    addr: Ipv4Addr,
) -> Result<u32, NetError> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(INSTANCE_LINK.to_string())
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let pair = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(host_name.to_string())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    host.link()
        .add(pair)
        .execute()
        .await
        .map_err(nl("add veth"))?;
    let index = link_index(host, host_name)
        .await?
        .ok_or_else(|| NetError::Netlink(format!("{host_name} vanished")))?;
    // The host side answers ARP for the gateway, which it does not own,
    // at once (the kernel's default delays proxy answers by up to 0.8 s:
    // an instance's first packet would wait that long).
    for (setting, value) in [
        (format!("conf/{host_name}/proxy_arp"), "1"),
        (format!("neigh/{host_name}/proxy_delay"), "0"),
    ] {
        std::fs::write(format!("/proc/sys/net/ipv4/{setting}"), value)
            .map_err(|e| NetError::Netlink(format!("cannot set {setting}: {e}")))?;
    }
    host.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl("set host link up"))?;
    host.route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(addr, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
                .build(),
        )
        .execute()
        .await
        .map_err(nl("add the instance's host route"))?;

    let (inside, _guard) = handle_of(ns_socket)?;
    inside
        .link()
        .set(LinkUnspec::new_with_index(1).up().build())
        .execute()
        .await
        .map_err(nl("set loopback up"))?;
    let eth = link_index(&inside, INSTANCE_LINK)
        .await?
        .ok_or_else(|| NetError::Netlink("the instance link is not in its namespace".into()))?;
    inside
        .link()
        .set(LinkUnspec::new_with_index(eth).up().build())
        .execute()
        .await
        .map_err(nl("set instance link up"))?;
    inside
        .address()
        .add(eth, addr.into(), 32)
        .execute()
        .await
        .map_err(nl("add the instance's address"))?;
    inside
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(GATEWAY, 32)
                .output_interface(eth)
                .scope(RouteScope::Link)
                .build(),
        )
        .execute()
        .await
        .map_err(nl("add the gateway's route"))?;
    inside
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(GATEWAY)
                .output_interface(eth)
                .build(),
        )
        .execute()
        .await
        .map_err(nl("add the default route"))?;
    Ok(index)
}

/// Puts host link `index` in interface group `group`.
pub(crate) async fn set_group(host: &Handle, index: u32, group: u32) -> Result<(), NetError> {
    host.link()
        .set(LinkUnspec::new_with_index(index).link_group(group).build())
        .execute()
        .await
        .map_err(nl("set the link's group"))
}

/// Deletes host link `index` (and so its pair and routes).
pub(crate) async fn delete_link(host: &Handle, index: u32) -> Result<(), NetError> {
    match host.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
        Err(e) => Err(nl("delete link")(e)),
    }
}

fn blackhole(net: Ipv4Addr, prefix: u8) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(net, prefix)
        .kind(RouteType::BlackHole)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .build()
}

/// Claims `net/prefix` for this daemon: a blackhole route (addresses of
/// the subnet no instance has go nowhere) added only if no route to exactly
/// that network exists. `Ok(false)`: somebody has one.
pub(crate) async fn claim(host: &Handle, net: Ipv4Addr, prefix: u8) -> Result<bool, NetError> {
    match host.route().add(blackhole(net, prefix)).execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(false),
        Err(e) => Err(nl("add the subnet's route")(e)),
    }
}

/// Gives a claim up.
pub(crate) async fn release_claim(
    host: &Handle,
    net: Ipv4Addr,
    prefix: u8,
) -> Result<(), NetError> {
    match host.route().del(blackhole(net, prefix)).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.raw_code() == -libc::ESRCH || e.raw_code() == -libc::ENOENT =>
        {
            Ok(())
        }
        Err(e) => Err(nl("delete the subnet's route")(e)),
    }
}

/// The IPv4 routes of the main table: `(destination, prefix, protocol)`.
pub(crate) async fn routes(host: &Handle) -> Result<Vec<(Ipv4Addr, u8, u8)>, NetError> {
    let mut routes = host
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut out = Vec::new();
    while let Some(m) = routes.try_next().await.map_err(nl("list routes"))? {
        if m.header.table != 254 {
            continue;
        }
        let dst = m
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(*a),
                _ => None,
            })
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        out.push((
            dst,
            m.header.destination_prefix_length,
            u8::from(m.header.protocol),
        ));
    }
    Ok(out)
}
