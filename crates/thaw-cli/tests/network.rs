//! Instances on the network, end to end: functions reach a backend host the
//! test makes itself (a network namespace with an address of 198.18.0.0/15;
//! no other address is contacted), with an address of their own that
//! survives no restore; egress policies hold both ways; a snapshot run that
//! keeps a connection open fails with an error naming it; nothing of the
//! network outlives the daemon. Needs root and nftables (SKIP otherwise, a
//! failure with THAW_REQUIRE_ALL=1).

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use thaw_api::SnapshotState;
use thaw_net::testhost::BackendHost;

fn can_network(test: &str) -> bool {
    if !can_run(test) {
        return false;
    }
    if !network_available() {
        skip(
            test,
            "nftables' nft is not installed (scripts/test.sh installs it)",
        );
        return false;
    }
    true
}

fn wait_snapshot(c: &thaw_api::Client, name: &str) -> thaw_api::SnapshotStatus {
    let t0 = Instant::now();
    loop {
        let s = c.snapshot_status(name).unwrap();
        if matches!(
            s.state,
            SnapshotState::Ready | SnapshotState::Failed | SnapshotState::InitOnly
        ) {
            return s;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no snapshot: {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn in_subnet(d: &Daemon, addr: &str) -> bool {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.data_dir.join("network.json")).unwrap()).unwrap();
    let subnet: thaw_net::Ipv4Cidr = v["subnet"].as_str().unwrap().parse().unwrap();
    subnet.contains(addr.parse().unwrap())
}

#[test]
fn functions_reach_a_backend_with_addresses_of_their_own_across_restores() {
    if !can_network("network_backend") {
        return;
    }
    let backend = BackendHost::start("e1", Ipv4Addr::new(198, 18, 100, 0), 7100).unwrap();
    let d = Daemon::start(&[
        "--auto-snapshot",
        "true",
        "--internal-cidr",
        "198.18.100.0/30",
    ]);
    let c = d.client();
    let env = [("BACKEND_HOST", "198.18.100.2"), ("BACKEND_PORT", "7100")];
    deploy_env(&c, "pynet", "py-net", "python3.11", "app.handler", &env);
    deploy_env(
        &c,
        "nodenet",
        "node-net",
        "nodejs20.x",
        "index.handler",
        &env,
    );
    for name in ["pynet", "nodenet"] {
        let s = wait_snapshot(&c, name);
        assert_eq!(s.state, SnapshotState::Ready, "{name}: {s:?}");
        // A restored instance reconnected in its after-restore hook, and
        // the backend (declared internal: no NAT) saw its own address,
        // which is not the snapshot run's.
        let (r, v) = invoke(&c, name, json!({}));
        assert!(r.function_error.is_none(), "{name}: {v}");
        let seen = v["seen_as"].as_str().unwrap();
        let at_init = v["seen_at_init"].as_str().unwrap();
        assert!(in_subnet(&d, seen), "{name}: {seen}");
        assert!(in_subnet(&d, at_init), "{name}: {at_init}");
        assert_ne!(seen, at_init, "{name} kept the snapshot run's address");
    }
    // The instance's own name and the daemon's resolvers.
    let (_, v) = invoke(&c, "pynet", json!({"action": "resolve"}));
    let hosts = v["hosts"].as_str().unwrap();
    assert!(
        hosts
            .lines()
            .any(|l| l.starts_with("100.") && l.contains("thaw-")),
        "{hosts}"
    );
    assert!(
        v["resolv"].as_str().unwrap().contains("options timeout:2"),
        "{v}"
    );
    // The START line names the instance's address.
    let (r, v) = invoke(&c, "pynet", json!({}));
    let seen = v["seen_as"].as_str().unwrap();
    let lines = c.logs("pynet", r.request_id.as_deref(), None).unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.line.starts_with("START") && l.line.ends_with(&format!("Address: {seen}"))),
        "{lines:?}"
    );

    // A snapshot run that keeps its connection open at the snapshot point
    // fails its build with an error naming the connection; the function
    // then starts cold, its network on the request's path.
    let keep = [
        ("BACKEND_HOST", "198.18.100.2"),
        ("BACKEND_PORT", "7100"),
        ("KEEP_OPEN", "1"),
    ];
    deploy_env(&c, "keepopen", "py-net", "python3.11", "app.handler", &keep);
    let s = wait_snapshot(&c, "keepopen");
    assert_eq!(s.state, SnapshotState::Failed, "{s:?}");
    let error = s.error.unwrap_or_default();
    assert!(
        error.contains("a TCP connection from 100.")
            && error.contains("to 198.18.100.2:7100")
            && error.contains("before-snapshot hook"),
        "{error}"
    );
    let (r, v) = invoke(&c, "keepopen", json!({}));
    assert!(r.function_error.is_none(), "{v}");
    assert_eq!(r.start, Some(thaw_api::StartKind::Cold));
    let timing = r.server_timing.expect("Server-Timing");
    assert!(timing.network_ms > 0.0, "no network phase: {timing:?}");

    // 20 concurrent instances: 20 distinct source addresses.
    let seen: BTreeSet<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                let c = d.client();
                s.spawn(move || {
                    let (r, v) = invoke(&c, "pynet", json!({"sleep": 2.0}));
                    assert!(r.function_error.is_none(), "{v}");
                    v["seen_as"].as_str().unwrap().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(seen.len(), 20, "{seen:?}");
    drop(backend);
}
