//! The instance network against the real kernel: namespaces, veth pairs,
//! routes and the nftables table, with traffic between leased namespaces,
//! the host, and a backend host this test makes in a network namespace of
//! its own (addresses from 198.18.0.0/15 only; nothing else is contacted).
//! Needs root and nft; says SKIP (or fails, with THAW_REQUIRE_ALL=1) without.

use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use thaw_net::testhost::BackendHost;
use thaw_net::{EgressPolicy, NetConfig, Network};

fn skip(reason: &str) {
    if std::env::var("THAW_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("cannot run here ({reason}) and THAW_REQUIRE_ALL=1");
    }
    let _ = writeln!(std::io::stderr(), "\nSKIP: {reason}");
}

fn runnable() -> bool {
    if !nix::unistd::geteuid().is_root() {
        skip("not root");
        return false;
    }
    let nft = ["/usr/sbin/nft", "/sbin/nft"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    if !nft {
        skip("nft (Debian's nftables) is not installed");
        return false;
    }
    true
}

/// Connects from namespace `ns` to `addr:port` with a 3 s timeout; what
/// the server said, or the error's name.
fn connect_from(
    ns: BorrowedFd<'_>,
    addr: Ipv4Addr,
    port: u16,
) -> (Result<String, String>, Duration) {
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(format!(
        "import socket, errno, sys\n\
         s = socket.socket(); s.settimeout(3)\n\
         try:\n    s.connect(('{addr}', {port})); print('ok:' + s.recv(100).decode().strip())\n\
         except socket.timeout:\n    print('err:timeout')\n\
         except OSError as e:\n    print('err:' + errno.errorcode.get(e.errno, str(e.errno)))\n"
    ));
    // SAFETY: setns is async-signal-safe; `fd` stays open in the parent
    // until the child has exec'd (spawn returns after that).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t0 = Instant::now();
    let out = cmd.output().unwrap();
    let took = t0.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let r = match text.split_once(':') {
        Some(("ok", peer)) => Ok(peer.to_string()),
        Some(("err", e)) => Err(e.to_string()),
        _ => panic!(
            "unexpected output {text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    };
    (r, took)
}

fn links_named(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn config(name: &str, dir: &tempfile::TempDir, subnet: &str, internal: &str) -> NetConfig {
    NetConfig {
        name: name.into(),
        subnet: Some(subnet.parse().unwrap()),
        internal: vec![internal.parse().unwrap()],
        dns: vec![],
        pool_size: 2,
        state_file: dir.path().join("network.json"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_reach_allowed_peers_with_their_own_address_and_nothing_else() {
    if !runnable() {
        return;
    }
    let backend = BackendHost::start("n1", Ipv4Addr::new(198, 19, 201, 0), 7001).unwrap();
    let other_port = 7002;
    let dir = tempfile::tempdir().unwrap();
    let net = Network::start(config(
        "a1b2c3d4e5f6",
        &dir,
        "100.127.240.0/24",
        "198.19.201.0/30",
    ))
    .await
    .unwrap();
    let prefix = net.link_prefix().to_string();

    let a = net.lease(&EgressPolicy::AllowAll).await.unwrap();
    let b = net.lease(&EgressPolicy::AllowAll).await.unwrap();
    assert_ne!(a.address(), b.address());
    assert!(net.subnet().contains(a.address()));

    // The backend (declared internal) sees each instance's own address.
    let (r, _) = connect_from(a.netns(), backend.addr, 7001);
    assert_eq!(r, Ok(a.address().to_string()));
    let (r, _) = connect_from(b.netns(), backend.addr, 7001);
    assert_eq!(r, Ok(b.address().to_string()));

    // Never another instance, never the host, whatever the policy.
    let listener_b = TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = listener_b.local_addr().unwrap().port();
    let (r, took) = connect_from(a.netns(), b.address(), 7001);
    assert!(r.is_err(), "reached another instance: {r:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let host_side = backend.gateway;
    let (r, took) = connect_from(a.netns(), host_side, host_port);
    assert!(r.is_err(), "reached the host: {r:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // Deny-all: refused at once.
    let denied = net.lease(&EgressPolicy::DenyAll).await.unwrap();
    let (r, took) = connect_from(denied.netns(), backend.addr, 7001);
    assert!(r.is_err(), "deny-all reached the backend: {r:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // An allow-list: the allowed port works, another port and another
    // address do not.
    let list = EgressPolicy::parse(&[format!("{}:7001", backend.addr)]).unwrap();
    let listed = net.lease(&list).await.unwrap();
    let (r, _) = connect_from(listed.netns(), backend.addr, 7001);
    assert_eq!(r, Ok(listed.address().to_string()));
    let (r, took) = connect_from(listed.netns(), backend.addr, other_port);
    assert_eq!(r, Err("EHOSTUNREACH".to_string()), "other port");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let (r, _) = connect_from(listed.netns(), Ipv4Addr::new(198, 19, 201, 3), 7001);
    assert!(r.is_err(), "other address: {r:?}");

    // A released lease takes its link with it.
    let before = links_named(&prefix).len();
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    while links_named(&prefix).len() >= before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        links_named(&prefix).len() < before,
        "the released link stayed"
    );
    net.shutdown().await;
    assert_eq!(links_named(&prefix), Vec::<String>::new());
    assert!(!thaw_net::firewall::table_exists(net.table()).unwrap());
    let routes = Command::new("ip").args(["route"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&routes.stdout).contains("100.127.240."),
        "routes left: {}",
        String::from_utf8_lossy(&routes.stdout)
    );
    drop((b, denied, listed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subnet_in_use_is_refused_and_a_restart_takes_its_own_back() {
    if !runnable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &'static str, dir: &tempfile::TempDir| {
        Network::start(config(name, dir, "100.127.241.0/24", "198.19.202.0/30"))
    };
    let first = start("0a0b0c0d0e0f", &dir).await.unwrap();
    let lease = first.lease(&EgressPolicy::AllowAll).await.unwrap();
    // Another daemon (another state file) cannot have it.
    let other = tempfile::tempdir().unwrap();
    let e = start("0f0e0d0c0b0a", &other).await.unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    // The same daemon after a crash (nothing shut down) takes it over,
    // removing what the crashed run left.
    let prefix = first.link_prefix().to_string();
    assert!(!links_named(&prefix).is_empty());
    std::mem::forget(lease);
    drop(first);
    let again = start("0a0b0c0d0e0f", &dir).await.unwrap();
    assert_eq!(again.subnet().to_string(), "100.127.241.0/24");
    again.shutdown().await;
    assert_eq!(links_named(&prefix), Vec::<String>::new());
}
