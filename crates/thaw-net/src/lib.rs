//! Networks of function instances.
//!
//! Owns: the instance subnet and its addresses, network namespaces made
//! ahead and pooled, the veth pair joining each to the host, and the
//! daemon's nftables table (egress policies, isolation, outbound NAT).
//! Must not: know about functions, sandboxes or HTTP; it hands out a
//! namespace with an address ([`Lease`]) for an [`EgressPolicy`].
//!
//! The shape, per instance:
//!
//! ```text
//!  instance namespace                 host
//!  eth0 100.64.x.y/32  ── veth ──  tw<daemon>-<n>  (proxy ARP, group = policy)
//!  default via 169.254.1.1            route 100.64.x.y/32 dev tw<daemon>-<n>
//! ```
//!
//! Routed veth pairs, not a bridge: every packet an instance sends crosses
//! the host's forward or input hook, where the table refuses other
//! instances and the host itself before the instance's policy is consulted
//! (see [`firewall`]). Outbound traffic is masqueraded behind the host's
//! address except towards the operator's internal networks, which see each
//! instance's own address.
//!
//! Namespaces are made ahead by a background task (creating one costs a
//! few milliseconds of kernel work and contends under concurrency), so a
//! lease on the instance's path is one netlink message.

pub mod cidr;
pub mod firewall;
mod links;
pub mod testhost;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

pub use cidr::{EgressPolicy, EgressRule, Ipv4Cidr, ParseError};
pub use links::{GATEWAY, INSTANCE_LINK, ROUTE_PROTOCOL};

/// Errors of the instance network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Something this host lacks (nft, a kernel feature); networking cannot
    /// be turned on.
    #[error("Instance networking is unavailable: {0}")]
    Unavailable(String),
    /// The configuration was refused before anything changed.
    #[error("Invalid network configuration: {0}")]
    Config(String),
    /// Every address of the subnet is in use.
    #[error("The instance subnet {0} has no free address (every one is in use by an instance)")]
    Exhausted(Ipv4Cidr),
    /// A netlink request failed.
    #[error("Network setup failed: {0}")]
    Netlink(String),
    /// A network namespace could not be made.
    #[error("Cannot make a network namespace: {0}")]
    Namespace(String),
    /// nftables refused a change.
    #[error("Firewall change failed: {0}")]
    Firewall(String),
    /// The network was shut down.
    #[error("The instance network is shut down")]
    Closed,
}

/// How the instance network is set up.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Names this daemon's links (`tw<first 6>-`), table (`thaw_<name>`)
    /// and default subnet choice: lowercase hex, 6 to 12 characters.
    pub name: String,
    /// Where instance addresses come from; `None`: a free /20 of
    /// [`AUTO_RANGE`], remembered in `state_file`.
    pub subnet: Option<Ipv4Cidr>,
    /// Networks reached without NAT (they see instances' own addresses).
    pub internal: Vec<Ipv4Cidr>,
    /// Resolvers written to instances' `/etc/resolv.conf`.
    pub dns: Vec<Ipv4Addr>,
    /// How many namespaces are kept ready at least. The pool grows by one
    /// for each lease that found it empty (a burst larger than it makes
    /// the next one find more), up to [`MAX_POOL`], and shrinks back
    /// after [`POOL_DECAY`] without a lease.
    pub pool_size: usize,
    /// Where the subnet in use is recorded across restarts.
    pub state_file: PathBuf,
}

/// Where automatic subnets come from: RFC 6598's shared address space,
/// meant for addresses behind a NAT that must not collide with the private
/// ranges (RFC 1918) customers' networks and VPCs use, and never routed on
/// the Internet.
pub const AUTO_RANGE: &str = "100.64.0.0/10";
/// The prefix length of an automatic subnet (4,094 instance addresses).
pub const AUTO_PREFIX: u8 = 20;

/// Most namespaces the pool grows to after bursts (about 180 KiB of
/// kernel memory each, measured: 100 namespaces with a veth pair took
/// 18 MiB of slab).
pub const MAX_POOL: usize = 512;
/// How long without a lease before a grown pool shrinks back.
pub const POOL_DECAY: std::time::Duration = std::time::Duration::from_secs(300);

/// How long after the last lease the pool waits before it refills.
const REFILL_QUIET: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Debug, Serialize, Deserialize)]
struct State {
    version: u32,
    subnet: Ipv4Cidr,
}

/// Counters of the pool, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Namespaces ready now.
    pub pooled: usize,
    /// Namespaces leased now.
    pub leased: u64,
    /// Namespaces made since start.
    pub made: u64,
    /// Leases that found the pool empty and made one on their path.
    pub pool_misses: u64,
}

/// One prepared namespace.
#[derive(Debug)]
struct Slot {
    netns: OwnedFd,
    index: u32,
    name: String,
    addr: Ipv4Addr,
}

struct Addresses {
    subnet: Ipv4Cidr,
    used: Vec<bool>,
    next: u64,
}

impl Addresses {
    /// The next free address after the last one given (so a released
    /// address is not handed out again soon); not the network's first or
    /// last address.
    fn take(&mut self) -> Option<Ipv4Addr> {
        let n = self.subnet.size();
        for _ in 0..n {
            let i = self.next;
            self.next = (self.next + 1) % n;
            if i == 0 || i == n - 1 || self.used[i as usize] {
                continue;
            }
            self.used[i as usize] = true;
            return self.subnet.nth(i);
        }
        None
    }

    fn give_back(&mut self, addr: Ipv4Addr) {
        if self.subnet.contains(addr) {
            let i = u32::from(addr) - u32::from(self.subnet.network());
            self.used[i as usize] = false;
        }
    }
}

struct Inner {
    config: NetConfig,
    subnet: Ipv4Cidr,
    table: String,
    link_prefix: String,
    host: rtnetlink::Handle,
    pool: Mutex<Vec<Slot>>,
    addresses: Mutex<Addresses>,
    groups: tokio::sync::Mutex<HashMap<EgressPolicy, u32>>,
    next_link: AtomicU64,
    refill: Arc<Notify>,
    /// When a namespace was last leased (refills wait for a quiet moment).
    last_lease: Mutex<Instant>,
    /// How many namespaces the pool keeps now (see [`NetConfig::pool_size`]).
    target: std::sync::atomic::AtomicUsize,
    released: mpsc::UnboundedSender<Slot>,
    closed: AtomicBool,
    leased: AtomicU64,
    made: AtomicU64,
    misses: AtomicU64,
}

/// The instance network of one daemon. Cheap to clone.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("subnet", &self.inner.subnet)
            .field("table", &self.inner.table)
            .finish()
    }
}

/// A namespace with an address, held for one instance. Dropping it deletes
/// the veth pair (in the background) and frees the address; the namespace
/// itself goes when its last process and descriptor do.
#[derive(Debug)]
pub struct Lease {
    slot: Option<Slot>,
    released: mpsc::UnboundedSender<Slot>,
    /// How long taking it took.
    pub took: std::time::Duration,
}

impl Lease {
    /// The namespace, for the sandbox to join.
    pub fn netns(&self) -> BorrowedFd<'_> {
        self.slot.as_ref().expect("a live lease").netns.as_fd()
    }

    /// The instance's address.
    pub fn address(&self) -> Ipv4Addr {
        self.slot.as_ref().expect("a live lease").addr
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            // The release task is gone only once the network is shut down,
            // and shutting down deletes every link of ours anyway.
            let _ = self.released.send(slot);
        }
    }
}

impl Network {
    /// Sets the network up: checks `nft`, claims the subnet, removes what
    /// an earlier run with the same name left (links, table), loads the
    /// table and starts filling the pool. Needs root and a tokio runtime.
    pub async fn start(config: NetConfig) -> Result<Network, NetError> {
        if !(6..=12).contains(&config.name.len())
            || !config
                .name
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(NetError::Config(format!(
                "the network's name {:?} is not 6-12 lowercase hex digits",
                config.name
            )));
        }
        firewall::check_nft()?;
        let host = links::host_handle()?;
        let table = format!("thaw_{}", config.name);
        let link_prefix = format!("tw{}-", &config.name[..6]);

        // What an earlier run left: its links (normally gone with their
        // namespaces) and its table.
        for (_, index) in links::links_with_prefix(&host, &link_prefix).await? {
            links::delete_link(&host, index).await?;
        }
        let t = table.clone();
        blocking(move || firewall::delete_table(&t)).await?;

        let subnet = claim_subnet(&host, &config).await?;
        let result = async {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| {
                NetError::Unavailable(format!("cannot enable IPv4 forwarding: {e}"))
            })?;
            let script = firewall::ruleset(&firewall::Params {
                table: &table,
                link_prefix: &link_prefix,
                subnet,
                internal: &config.internal,
            });
            blocking(move || firewall::apply(&script)).await
        }
        .await;
        if let Err(e) = result {
            let _ = links::release_claim(&host, subnet.network(), subnet.prefix()).await;
            return Err(e);
        }

        let (released, mut release_rx) = mpsc::unbounded_channel::<Slot>();
        let inner = Arc::new(Inner {
            subnet,
            table,
            link_prefix,
            host,
            pool: Mutex::new(Vec::new()),
            addresses: Mutex::new(Addresses {
                subnet,
                used: vec![false; subnet.size() as usize],
                next: 1,
            }),
            groups: tokio::sync::Mutex::new(HashMap::from([
                (EgressPolicy::AllowAll, firewall::GROUP_ALLOW_ALL),
                (EgressPolicy::DenyAll, firewall::GROUP_DENY_ALL),
            ])),
            next_link: AtomicU64::new(0),
            refill: Arc::new(Notify::new()),
            last_lease: Mutex::new(Instant::now() - REFILL_QUIET),
            target: std::sync::atomic::AtomicUsize::new(config.pool_size),
            released,
            closed: AtomicBool::new(false),
            leased: AtomicU64::new(0),
            made: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            config,
        });
        tracing::info!(subnet = %subnet, table = %inner.table, "instance network ready");

        // Releases: delete the pair, then free the address (never before:
        // its host route goes with the link).
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some(slot) = release_rx.recv().await {
                let Some(inner) = weak.upgrade() else { break };
                inner.leased.fetch_sub(1, Ordering::Relaxed);
                inner.discard(slot).await;
                inner.refill.notify_one();
            }
        });
        // The pool.
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { break };
                if inner.closed.load(Ordering::Acquire) {
                    break;
                }
                let idle = inner.last_lease.lock().expect("lease time lock").elapsed();
                let target = inner.pool_target(idle);
                let excess = {
                    let mut pool = inner.pool.lock().expect("pool lock");
                    let keep = pool.len().min(target);
                    pool.split_off(keep)
                };
                for slot in excess {
                    inner.discard(slot).await;
                }
                let short = inner.pool.lock().expect("pool lock").len() < target;
                // Not while instances are being made: making a namespace
                // takes the kernel's routing lock and CPU they need (under
                // a burst one takes 10-80 ms instead of 1-4).
                if short && idle < REFILL_QUIET {
                    drop(inner);
                    tokio::time::sleep(REFILL_QUIET).await;
                    continue;
                }
                if short {
                    match inner.make_slot().await {
                        Ok(slot) => {
                            if inner.closed.load(Ordering::Acquire) {
                                inner.discard(slot).await;
                                break;
                            }
                            inner.pool.lock().expect("pool lock").push(slot);
                        }
                        Err(e @ NetError::Exhausted(_)) => {
                            // Every address is taken: wait for a release.
                            tracing::debug!(error = %e, "the pool cannot grow");
                            let refill = inner.refill.clone();
                            drop(inner);
                            let _ = tokio::time::timeout(POOL_DECAY, refill.notified()).await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot prepare a network namespace");
                            drop(inner);
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                    }
                    continue;
                }
                let refill = inner.refill.clone();
                drop(inner);
                // Woken by a lease, or in time to shrink a grown pool.
                let _ = tokio::time::timeout(POOL_DECAY, refill.notified()).await;
            }
        });
        Ok(Network { inner })
    }

    /// The subnet instance addresses come from.
    pub fn subnet(&self) -> Ipv4Cidr {
        self.inner.subnet
    }

    /// The nftables table (family `inet`).
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// What host-side links are called: this, then a number.
    pub fn link_prefix(&self) -> &str {
        &self.inner.link_prefix
    }

    /// `/etc/resolv.conf` for instances.
    pub fn resolv_conf(&self) -> String {
        let mut s = String::new();
        for d in &self.inner.config.dns {
            s.push_str(&format!("nameserver {d}\n"));
        }
        // A denied or unreachable resolver fails a lookup in seconds, not
        // in Linux's default of 4 x 5.
        s.push_str("options timeout:2 attempts:2\n");
        s
    }

    /// The pool's counters.
    pub fn stats(&self) -> NetStats {
        NetStats {
            pooled: self.inner.pool.lock().expect("pool lock").len(),
            leased: self.inner.leased.load(Ordering::Relaxed),
            made: self.inner.made.load(Ordering::Relaxed),
            pool_misses: self.inner.misses.load(Ordering::Relaxed),
        }
    }

    /// A namespace with its own address for an instance under `policy`.
    /// Takes a pooled one (one netlink message) or, when the pool is empty,
    /// makes one.
    pub async fn lease(&self, policy: &EgressPolicy) -> Result<Lease, NetError> {
        let t0 = Instant::now();
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(NetError::Closed);
        }
        let group = self.group(policy).await?;
        *self.inner.last_lease.lock().expect("lease time lock") = Instant::now();
        let pooled = self.inner.pool.lock().expect("pool lock").pop();
        self.inner.refill.notify_one();
        let slot = match pooled {
            Some(s) => s,
            None => {
                self.inner.misses.fetch_add(1, Ordering::Relaxed);
                let t = &self.inner.target;
                let _ = t.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some((n + 1).min(MAX_POOL))
                });
                self.inner.make_slot().await?
            }
        };
        self.inner.leased.fetch_add(1, Ordering::Relaxed);
        let index = slot.index;
        // From here, dropping the lease releases the namespace.
        let mut lease = Lease {
            slot: Some(slot),
            released: self.inner.released.clone(),
            took: std::time::Duration::ZERO,
        };
        links::set_group(&self.inner.host, index, group).await?;
        lease.took = t0.elapsed();
        Ok(lease)
    }

    /// The interface group of `policy`, adding its chain the first time.
    async fn group(&self, policy: &EgressPolicy) -> Result<u32, NetError> {
        let mut groups = self.inner.groups.lock().await;
        if let Some(g) = groups.get(policy) {
            return Ok(*g);
        }
        let g = firewall::FIRST_LIST_GROUP + groups.len() as u32 - 2;
        let script = firewall::policy_commands(&self.inner.table, g, policy);
        blocking(move || firewall::apply(&script)).await?;
        groups.insert(policy.clone(), g);
        Ok(g)
    }

    /// Removes everything: the pool's and every leased namespace's links,
    /// the table, the subnet's claim. Leases dropped later change nothing.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.closed.store(true, Ordering::Release);
        inner.refill.notify_one();
        let pooled: Vec<Slot> = std::mem::take(&mut *inner.pool.lock().expect("pool lock"));
        drop(pooled);
        match links::links_with_prefix(&inner.host, &inner.link_prefix).await {
            Ok(found) => {
                for (name, index) in found {
                    if let Err(e) = links::delete_link(&inner.host, index).await {
                        tracing::warn!(link = %name, error = %e, "cannot delete an instance link");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list instance links"),
        }
        let table = inner.table.clone();
        if let Err(e) = blocking(move || firewall::delete_table(&table)).await {
            tracing::warn!(error = %e, "cannot delete the firewall table");
        }
        if let Err(e) =
            links::release_claim(&inner.host, inner.subnet.network(), inner.subnet.prefix()).await
        {
            tracing::warn!(error = %e, "cannot release the instance subnet");
        }
    }
}

impl Inner {
    /// The pool's size now, `idle` after the last lease: back to the
    /// configured size after [`POOL_DECAY`] without leases.
    fn pool_target(&self, idle: std::time::Duration) -> usize {
        if idle >= POOL_DECAY {
            self.target.store(self.config.pool_size, Ordering::Relaxed);
        }
        self.target
            .load(Ordering::Relaxed)
            .max(self.config.pool_size)
    }

    async fn make_slot(&self) -> Result<Slot, NetError> {
        let addr = self
            .addresses
            .lock()
            .expect("address lock")
            .take()
            .ok_or(NetError::Exhausted(self.subnet))?;
        let n = self.next_link.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}{}", self.link_prefix, base36(n));
        let t0 = Instant::now();
        let made = async {
            let (netns, socket) = links::new_namespace()?;
            let index = links::make_pair(&self.host, &name, &netns, socket, addr).await?;
            Ok::<_, NetError>(Slot {
                netns,
                index,
                name: name.clone(),
                addr,
            })
        }
        .await;
        match made {
            Ok(slot) => {
                self.made.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(link = %name, us = t0.elapsed().as_micros() as u64, "network namespace made");
                Ok(slot)
            }
            Err(e) => {
                if let Ok(Some(index)) = links::link_index(&self.host, &name).await {
                    let _ = links::delete_link(&self.host, index).await;
                }
                self.addresses.lock().expect("address lock").give_back(addr);
                Err(e)
            }
        }
    }

    async fn discard(&self, slot: Slot) {
        match links::delete_link(&self.host, slot.index).await {
            Ok(()) => self
                .addresses
                .lock()
                .expect("address lock")
                .give_back(slot.addr),
            // The address stays taken: its route may still be there.
            Err(e) => {
                tracing::warn!(link = %slot.name, error = %e, "cannot delete an instance link")
            }
        }
    }
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).expect("ascii")
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetError::Firewall(format!("the nft task failed: {e}")))?
}

/// Claims the configured subnet, or the one the state file remembers, or
/// the first free /20 of [`AUTO_RANGE`] from a place that depends on the
/// name (so daemons on one host rarely try the same one first).
async fn claim_subnet(host: &rtnetlink::Handle, config: &NetConfig) -> Result<Ipv4Cidr, NetError> {
    let remembered: Option<Ipv4Cidr> = std::fs::read(&config.state_file)
        .ok()
        .and_then(|b| serde_json::from_slice::<State>(&b).ok())
        .filter(|s| s.version == 1)
        .map(|s| s.subnet);
    let routes = links::routes(host).await?;
    // A claim of ours from an earlier run (its route has our protocol and
    // the state file names it): take it over.
    let ours = |c: &Ipv4Cidr| {
        remembered == Some(*c)
            && routes
                .iter()
                .any(|r| r.0 == c.network() && r.1 == c.prefix() && r.2 == ROUTE_PROTOCOL)
    };
    let overlapping = |c: &Ipv4Cidr| {
        routes.iter().find(|(dst, prefix, _)| {
            *prefix > 0
                && Ipv4Cidr::new(*dst, *prefix).is_ok_and(|r| r.overlaps(c))
                && !(ours(c) && *dst == c.network() && *prefix == c.prefix())
        })
    };
    let try_claim = |c: Ipv4Cidr| async move {
        if ours(&c) {
            links::release_claim(host, c.network(), c.prefix()).await?;
        }
        links::claim(host, c.network(), c.prefix()).await
    };
    let chosen = if let Some(c) = config.subnet {
        if c.prefix() > 28 {
            return Err(NetError::Config(format!(
                "the instance subnet {c} is too small (at most /28)"
            )));
        }
        if let Some((dst, prefix, proto)) = overlapping(&c) {
            let what = if *proto == ROUTE_PROTOCOL {
                "is in use by another thaw daemon on this host".to_string()
            } else {
                format!("overlaps the host's route to {dst}/{prefix}")
            };
            return Err(NetError::Config(format!(
                "the instance subnet {c} {what}; choose another with --instance-subnet"
            )));
        }
        if !try_claim(c).await? {
            return Err(NetError::Config(format!(
                "the instance subnet {c} is in use (another daemon has it)"
            )));
        }
        c
    } else {
        let range: Ipv4Cidr = AUTO_RANGE.parse().expect("a valid range");
        let count = 1u64 << (AUTO_PREFIX - range.prefix());
        let start = u64::from_str_radix(&config.name[..6], 16).unwrap_or(0) % count;
        let candidates = remembered.into_iter().chain((0..count).map(|i| {
            let n = range.nth(((start + i) % count) << (32 - AUTO_PREFIX));
            Ipv4Cidr::new(n.expect("in range"), AUTO_PREFIX).expect("aligned")
        }));
        let mut found = None;
        for c in candidates {
            if overlapping(&c).is_none() && try_claim(c).await? {
                found = Some(c);
                break;
            }
        }
        found.ok_or_else(|| {
            NetError::Config(format!(
                "no free /{AUTO_PREFIX} in {AUTO_RANGE}; set --instance-subnet"
            ))
        })?
    };
    let state = State {
        version: 1,
        subnet: chosen,
    };
    if let Err(e) = std::fs::write(
        &config.state_file,
        serde_json::to_vec(&state).expect("serializable"),
    ) {
        tracing::warn!(error = %e, "cannot record the instance subnet");
    }
    Ok(chosen)
}

/// The IPv4 resolvers of the host's `/etc/resolv.conf`, without loopback
/// ones (a stub resolver on the host's 127.0.0.53 is not reachable from an
/// instance, and the host is never reachable from one).
pub fn host_resolvers() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_the_ends_and_come_back_last() {
        let subnet: Ipv4Cidr = "10.0.0.0/29".parse().unwrap();
        let mut a = Addresses {
            subnet,
            used: vec![false; 8],
            next: 1,
        };
        let got: Vec<_> = std::iter::from_fn(|| a.take()).collect();
        assert_eq!(got.len(), 6);
        assert_eq!(got[0], Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(got[5], Ipv4Addr::new(10, 0, 0, 6));
        a.give_back(Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(a.take(), Some(Ipv4Addr::new(10, 0, 0, 3)));
        assert_eq!(a.take(), None);
    }

    #[test]
    fn link_numbers_keep_names_within_fifteen_bytes() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert!(format!("tw123456-{}", base36(36u64.pow(6) - 1)).len() <= 15);
    }
}
