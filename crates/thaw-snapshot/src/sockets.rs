//! What a process's sockets are: TCP and UDP endpoints, Unix sockets, and
//! the rest, read from `/proc/<pid>/fd` and the `/proc/<pid>/net` tables
//! of its network namespace. A checkpoint's caller uses it to refuse
//! snapshots that would carry a connection, naming the socket.

use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nix::unistd::Pid;

/// One socket descriptor of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    /// The descriptor.
    pub fd: i32,
    /// What it is.
    pub kind: SocketKind,
}

/// What a socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketKind {
    /// TCP: its ends and state (`ESTABLISHED`, `LISTEN`, ...).
    Tcp {
        /// This end.
        local: SocketAddr,
        /// The peer's (unspecified for a listener).
        remote: SocketAddr,
        /// The kernel's state name.
        state: &'static str,
    },
    /// UDP.
    Udp {
        /// This end.
        local: SocketAddr,
        /// The connected peer, if any.
        remote: Option<SocketAddr>,
    },
    /// A Unix socket, with its path if it is bound to one.
    Unix {
        /// The path (or `@name` for an abstract one).
        path: Option<String>,
    },
    /// Anything else (netlink, raw, packet, or a socket of another
    /// namespace's tables).
    Other,
}

const TCP_STATES: [&str; 12] = [
    "UNKNOWN",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
];

impl SocketInfo {
    /// Whether it only ever talks within the host's loopback (both ends
    /// on 127.0.0.0/8 or ::1, or a Unix socket).
    pub fn is_loopback_only(&self) -> bool {
        let lo = |a: &SocketAddr| a.ip().is_loopback();
        match &self.kind {
            SocketKind::Tcp { local, remote, .. } => {
                lo(local) && (lo(remote) || remote.ip().is_unspecified())
            }
            SocketKind::Udp { local, remote } => lo(local) && remote.as_ref().is_none_or(lo),
            SocketKind::Unix { .. } => true,
            SocketKind::Other => false,
        }
    }
}

impl fmt::Display for SocketInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fd {}, ", self.fd)?;
        match &self.kind {
            SocketKind::Tcp { local, state, .. } if *state == "LISTEN" => {
                write!(f, "a TCP listener on {local}")
            }
            SocketKind::Tcp {
                local,
                remote,
                state,
            } => write!(f, "a TCP connection from {local} to {remote} ({state})"),
            SocketKind::Udp {
                local,
                remote: Some(r),
            } => write!(f, "a UDP socket on {local} connected to {r}"),
            SocketKind::Udp {
                local,
                remote: None,
            } => write!(f, "a UDP socket on {local}"),
            SocketKind::Unix { path: Some(p) } => write!(f, "a Unix socket at {p}"),
            SocketKind::Unix { path: None } => write!(f, "a Unix socket"),
            SocketKind::Other => write!(f, "a socket (netlink, raw or packet)"),
        }
    }
}

/// The sockets among `pid`'s descriptors, in descriptor order.
pub fn sockets(pid: Pid) -> std::io::Result<Vec<SocketInfo>> {
    let mut found: Vec<(i32, u64)> = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // A descriptor closed meanwhile is not a socket any more.
        let Ok(link) = fs::read_link(entry.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        if let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|i| i.parse().ok())
        {
            found.push((fd, inode));
        }
    }
    found.sort();
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let net =
        |name: &str| fs::read_to_string(format!("/proc/{pid}/net/{name}")).unwrap_or_default();
    let mut known: Vec<(u64, SocketKind)> = Vec::new();
    for (table, tcp) in [
        ("tcp", true),
        ("tcp6", true),
        ("udp", false),
        ("udp6", false),
    ] {
        known.extend(parse_inet_table(&net(table), tcp));
    }
    known.extend(parse_unix_table(&net("unix")));
    Ok(found
        .into_iter()
        .map(|(fd, inode)| SocketInfo {
            fd,
            kind: known
                .iter()
                .find(|(i, _)| *i == inode)
                .map(|(_, k)| k.clone())
                .unwrap_or(SocketKind::Other),
        })
        .collect())
}

/// `/proc/net/{tcp,tcp6,udp,udp6}`: `(inode, kind)` of each line.
fn parse_inet_table(text: &str, tcp: bool) -> Vec<(u64, SocketKind)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = parse_endpoint(cols.get(1)?)?;
            let remote = parse_endpoint(cols.get(2)?)?;
            let state = usize::from_str_radix(cols.get(3)?, 16).ok()?;
            let inode = cols.get(9)?.parse::<u64>().ok()?;
            let kind = if tcp {
                SocketKind::Tcp {
                    local,
                    remote,
                    state: TCP_STATES.get(state).copied().unwrap_or("UNKNOWN"),
                }
            } else {
                SocketKind::Udp {
                    local,
                    remote: (!remote.ip().is_unspecified()).then_some(remote),
                }
            };
            Some((inode, kind))
        })
        .collect()
}

/// `0100007F:1F91` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit
/// word is printed as the kernel holds it, in the host's byte order.
fn parse_endpoint(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
            .ok()
            .map(u32::to_ne_bytes)
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// `/proc/net/unix`: `Num RefCount Protocol Flags Type St Inode [Path]`.
fn parse_unix_table(text: &str) -> Vec<(u64, SocketKind)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let inode = cols.get(6)?.parse::<u64>().ok()?;
            Some((
                inode,
                SocketKind::Unix {
                    path: cols.get(7).map(|p| p.to_string()),
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tables_parse_into_named_sockets() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:2329 0100007F:A2B4 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 20 4 30 10 -1\n\
   1: 0300A8C0:9C5A 020012C6:1538 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0000000000000000 20 4 30 10 -1\n\
   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4444 1 0000000000000000 100 0 0 10 0\n";
        let t = parse_inet_table(tcp, true);
        assert_eq!(t.len(), 3);
        let api = SocketInfo {
            fd: 3,
            kind: t[0].1.clone(),
        };
        if cfg!(target_endian = "little") {
            assert_eq!(
                api.to_string(),
                "fd 3, a TCP connection from 127.0.0.1:9001 to 127.0.0.1:41652 (ESTABLISHED)"
            );
            assert!(api.is_loopback_only());
            let db = SocketInfo {
                fd: 7,
                kind: t[1].1.clone(),
            };
            assert_eq!(
                db.to_string(),
                "fd 7, a TCP connection from 192.168.0.3:40026 to 198.18.0.2:5432 (ESTABLISHED)"
            );
            assert!(!db.is_loopback_only());
            let l = SocketInfo {
                fd: 8,
                kind: t[2].1.clone(),
            };
            assert_eq!(l.to_string(), "fd 8, a TCP listener on 0.0.0.0:8080");
            assert!(!l.is_loopback_only());
        }
        let v6 = parse_endpoint("00000000000000000000000001000000:1F90").unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(v6, "[::1]:8080".parse().unwrap());
        }
        let unix = "Num       RefCount Protocol Flags    Type St Inode Path\n\
0000000000000000: 00000002 00000000 00010000 0001 01 5151 /run/x.sock\n\
0000000000000000: 00000002 00000000 00000000 0001 03 5252\n";
        let u = parse_unix_table(unix);
        assert_eq!(
            u,
            vec![
                (
                    5151,
                    SocketKind::Unix {
                        path: Some("/run/x.sock".into())
                    }
                ),
                (5252, SocketKind::Unix { path: None })
            ]
        );
    }

    #[test]
    fn the_sockets_of_this_process_are_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let found = sockets(nix::unistd::getpid()).unwrap();
        use std::os::fd::AsRawFd;
        let mine = found
            .iter()
            .find(|s| s.fd == client.as_raw_fd())
            .expect("the client socket");
        match &mine.kind {
            SocketKind::Tcp { remote, state, .. } => {
                assert_eq!(remote.port(), port);
                assert_eq!(*state, "ESTABLISHED");
            }
            other => panic!("{other:?}"),
        }
        let l = found
            .iter()
            .find(|s| s.fd == listener.as_raw_fd())
            .expect("the listener");
        assert!(l.to_string().contains("TCP listener on 127.0.0.1:"), "{l}");
    }
}
