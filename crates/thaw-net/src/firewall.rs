//! The daemon's nftables table: what instances may reach, and the NAT of
//! their outbound traffic.
//!
//! The whole policy is the text of [`ruleset`], loaded with `nft -f -` in
//! one transaction (all or nothing). Egress policies are chains joined
//! through a verdict map keyed by the host-side veth's *interface group*:
//! giving an instance a policy is one netlink message that sets its veth's
//! group, with no change to the ruleset on the instance's path. A veth whose
//! group has no entry (0, as created) is refused everything: a pooled
//! namespace that was never given a policy fails closed.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::cidr::{EgressPolicy, Ipv4Cidr};
use crate::NetError;

/// The group of instances allowed everywhere.
pub const GROUP_ALLOW_ALL: u32 = 1;
/// The group of instances allowed nowhere.
pub const GROUP_DENY_ALL: u32 = 2;
/// The first group given to an allow-list.
pub const FIRST_LIST_GROUP: u32 = 3;

/// Most connections one instance may track at once (conntrack entries);
/// a new one beyond it is refused with a TCP reset.
pub const MAX_CONNECTIONS_PER_INSTANCE: u32 = 1024;
/// New connections one instance may open per second (a burst of twice as
/// many is let through); beyond it they are refused.
pub const NEW_CONNECTIONS_PER_SECOND: u32 = 500;

/// What the table is made of.
pub(crate) struct Params<'a> {
    pub table: &'a str,
    /// Host-side veth names start with it.
    pub link_prefix: &'a str,
    pub subnet: Ipv4Cidr,
    pub internal: &'a [Ipv4Cidr],
}

const REJECT: &str = "reject with icmpx type admin-prohibited";

/// The table, created from nothing (the caller deletes an old one first).
///
/// From an instance, in this order: nothing to another instance; nothing
/// to "this network", loopback, link-local (the gateway address, and a
/// cloud's metadata service at 169.254.169.254) or multicast and reserved
/// addresses; replies of allowed connections; at most
/// [`MAX_CONNECTIONS_PER_INSTANCE`] tracked connections and
/// [`NEW_CONNECTIONS_PER_SECOND`] new ones; then the instance's policy,
/// chosen by its link's group; a link without one gets nothing. To an
/// instance: replies only. To the host itself: nothing.
pub(crate) fn ruleset(p: &Params<'_>) -> String {
    let t = p.table;
    let ifs = format!("\"{}*\"", p.link_prefix);
    let internal = if p.internal.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = p.internal.iter().map(|c| c.to_string()).collect();
        format!("elements = {{ {} }}", list.join(", "))
    };
    format!(
        "table inet {t} {{
  set internal {{
    type ipv4_addr; flags interval; {internal}
  }}
  set connections {{
    type ipv4_addr; size 65535; flags dynamic;
  }}
  set rate {{
    type ipv4_addr; size 65535; flags dynamic,timeout; timeout 10s;
  }}
  map egress {{
    type devgroup : verdict;
    elements = {{ {GROUP_ALLOW_ALL} : accept, {GROUP_DENY_ALL} : jump deny }}
  }}
  chain deny {{
    {REJECT}
  }}
  chain input {{
    type filter hook input priority filter - 5; policy accept;
    iifname {ifs} {REJECT}
  }}
  chain forward {{
    type filter hook forward priority filter - 5; policy accept;
    iifname {ifs} jump from_instance
    oifname {ifs} jump to_instance
  }}
  chain from_instance {{
    oifname {ifs} {REJECT}
    ip daddr {{ 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3 }} {REJECT}
    ct state established,related accept
    ct state new add @connections {{ ip saddr ct count over {MAX_CONNECTIONS_PER_INSTANCE} }} meta l4proto tcp reject with tcp reset
    ct state new add @connections {{ ip saddr ct count over {MAX_CONNECTIONS_PER_INSTANCE} }} {REJECT}
    ct state new update @rate {{ ip saddr limit rate over {NEW_CONNECTIONS_PER_SECOND}/second burst {burst} packets }} {REJECT}
    iifgroup vmap @egress
    {REJECT}
  }}
  chain to_instance {{
    ct state established,related accept
    {REJECT}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet} ip daddr != @internal oifname != {ifs} masquerade
  }}
}}
",
        burst = NEW_CONNECTIONS_PER_SECOND * 2,
        subnet = p.subnet,
    )
}

/// The commands adding allow-list `group`'s chain and map entry.
pub(crate) fn policy_commands(table: &str, group: u32, policy: &EgressPolicy) -> String {
    let EgressPolicy::AllowList(rules) = policy else {
        return String::new();
    };
    let chain = format!("policy_{group}");
    let mut s = format!("add chain inet {table} {chain}\n");
    for r in rules {
        match r.ports {
            None => {
                let _ = writeln!(
                    s,
                    "add rule inet {table} {chain} ip daddr {} accept",
                    r.network
                );
            }
            Some((a, b)) => {
                let ports = if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                };
                let _ = writeln!(
                    s,
                    "add rule inet {table} {chain} ip daddr {} meta l4proto {{ tcp, udp }} th dport {ports} accept",
                    r.network
                );
            }
        }
    }
    let _ = writeln!(s, "add rule inet {table} {chain} {REJECT}");
    let _ = writeln!(
        s,
        "add element inet {table} egress {{ {group} : jump {chain} }}"
    );
    s
}

/// Runs `nft -f -` on `script`: one transaction.
pub(crate) fn apply(script: &str) -> Result<(), NetError> {
    let mut child = Command::new(nft())
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Unavailable(format!("cannot run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NetError::Firewall(format!("cannot write to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Firewall(format!("nft: {e}")))?;
    if !out.status.success() {
        return Err(NetError::Firewall(format!(
            "nft refused the ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Deletes table `table` if it exists.
pub(crate) fn delete_table(table: &str) -> Result<(), NetError> {
    // `destroy` would ignore a missing table, but needs nft 1.0.8.
    if table_exists(table)? {
        apply(&format!("delete table inet {table}\n"))?;
    }
    Ok(())
}

/// Whether table `table` exists.
pub fn table_exists(table: &str) -> Result<bool, NetError> {
    let out = Command::new(nft())
        .args(["list", "tables", "inet"])
        .output()
        .map_err(|e| NetError::Unavailable(format!("cannot run nft: {e}")))?;
    if !out.status.success() {
        return Err(NetError::Firewall(format!(
            "nft list tables: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == format!("table inet {table}")))
}

/// The `nft` program: `$THAW_NFT`, else `nft` on the PATH (or in /usr/sbin,
/// which a non-login PATH may lack).
pub(crate) fn nft() -> String {
    if let Ok(p) = std::env::var("THAW_NFT") {
        return p;
    }
    for dir in ["/usr/sbin", "/sbin", "/usr/local/sbin"] {
        let p = format!("{dir}/nft");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    "nft".into()
}

/// Whether `nft` runs here; `Err` says why not.
pub(crate) fn check_nft() -> Result<(), NetError> {
    let out = Command::new(nft()).arg("--version").output().map_err(|e| {
        NetError::Unavailable(format!(
            "nftables' nft program is not installed ({e}); install Debian's nftables package"
        ))
    })?;
    if !out.status.success() {
        return Err(NetError::Unavailable("nft --version failed".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_names_the_subnet_the_prefix_and_the_internal_networks() {
        let internal = ["198.18.0.0/15".parse().unwrap()];
        let r = ruleset(&Params {
            table: "thaw_abc",
            link_prefix: "twabc-",
            subnet: "100.64.16.0/20".parse().unwrap(),
            internal: &internal,
        });
        assert!(r.starts_with("table inet thaw_abc {"));
        assert!(r.contains("elements = { 198.18.0.0/15 }"));
        assert!(r.contains("iifname \"twabc-*\" jump from_instance"));
        assert!(r.contains("ip saddr 100.64.16.0/20 ip daddr != @internal"));
    }

    #[test]
    fn an_allow_list_becomes_a_chain_ending_in_a_reject() {
        let p = EgressPolicy::parse(&["198.18.0.0/15:5432", "10.0.0.0/8"]).unwrap();
        let s = policy_commands("t", 7, &p);
        assert_eq!(
            s,
            "add chain inet t policy_7\n\
             add rule inet t policy_7 ip daddr 10.0.0.0/8 accept\n\
             add rule inet t policy_7 ip daddr 198.18.0.0/15 meta l4proto { tcp, udp } th dport 5432 accept\n\
             add rule inet t policy_7 reject with icmpx type admin-prohibited\n\
             add element inet t egress { 7 : jump policy_7 }\n"
        );
        assert_eq!(policy_commands("t", 7, &EgressPolicy::DenyAll), "");
    }
}
