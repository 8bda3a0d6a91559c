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
        let s = settled(&c, name);
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
    let s = settled(&c, "keepopen");
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
    // The pool's metrics.
    let text = metrics_text(&d);
    assert!(
        metric_in(&text, "thaw_network_namespaces{state=\"leased\"}") >= 20.0,
        "{text}"
    );
    assert!(metric_in(&text, "thaw_network_namespaces_made_total") >= 20.0);
    drop(backend);
}

/// `f` tries a connection of its own to `host:port`: `Ok(())`, or the
/// error's name and how long failing took.
fn try_connect(c: &thaw_api::Client, f: &str, host: &str, port: u16) -> Result<(), (String, f64)> {
    let (r, v) = invoke(
        c,
        f,
        json!({"action": "connect", "host": host, "port": port}),
    );
    assert!(r.function_error.is_none(), "{f}: {v}");
    if v["ok"] == true {
        Ok(())
    } else {
        Err((
            v["error"].as_str().unwrap_or_default().to_string(),
            v["s"].as_f64().unwrap_or(99.0),
        ))
    }
}

/// Refused by the host's firewall: at once, with "no route to host".
fn refused(r: Result<(), (String, f64)>, what: &str) {
    match r {
        Err((e, s)) => {
            assert_eq!(e, "EHOSTUNREACH", "{what}");
            assert!(s < 1.0, "{what}: failing took {s} s");
        }
        Ok(()) => panic!("{what}: connected"),
    }
}

#[test]
fn egress_policies_hold_and_instances_reach_neither_the_host_nor_each_other() {
    if !can_network("network_egress") {
        return;
    }
    let backend = BackendHost::start("e2", Ipv4Addr::new(198, 18, 100, 4), 7100).unwrap();
    let other = BackendHost::start("e3", Ipv4Addr::new(198, 18, 100, 8), 7100).unwrap();
    let b = backend.addr.to_string();
    let o = other.addr.to_string();
    // A service on the host, on every address.
    let host_service = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_service.local_addr().unwrap().port();
    let d = Daemon::start(&[
        "--internal-cidr",
        "198.18.100.4/30",
        "--internal-cidr",
        "198.18.100.8/30",
    ]);
    let c = d.client();
    let env = [
        ("BACKEND_HOST", b.as_str()),
        ("BACKEND_PORT", "7100"),
        ("CONNECT_AT_INIT", "0"),
    ];
    for f in ["open", "listed", "closed"] {
        deploy_env(&c, f, "py-net", "python3.11", "app.handler", &env);
    }
    let set = |f: &str, egress: &[&str]| {
        let mut s = c.get_function_settings(f).unwrap();
        s.egress = Some(egress.iter().map(|e| e.to_string()).collect());
        c.put_function_settings(f, &s).unwrap();
    };
    set("listed", &[&format!("{b}/32:7100")]);
    set("closed", &["none"]);
    // A policy that does not parse is refused, and changes nothing.
    let mut bad = c.get_function_settings("open").unwrap();
    bad.egress = Some(vec!["10.0.0.1/8".into()]);
    let e = c
        .put_function_settings("open", &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("host bits"), "{e}");

    // Allow-all (the default) reaches both backends.
    assert_eq!(try_connect(&c, "open", &b, 7100), Ok(()));
    assert_eq!(try_connect(&c, "open", &o, 7100), Ok(()));
    // The allow-list: its port on its address, nothing else.
    assert_eq!(try_connect(&c, "listed", &b, 7100), Ok(()));
    refused(try_connect(&c, "listed", &b, 7101), "listed, other port");
    refused(try_connect(&c, "listed", &o, 7100), "listed, other address");
    // Deny-all: nothing.
    refused(try_connect(&c, "closed", &b, 7100), "closed");

    // Whatever the policy: not the host (its address on the backend's
    // link, the gateway instances route through), not another instance.
    let (_, v) = invoke(&c, "listed", json!({"action": "resolve"}));
    let hosts = v["hosts"].as_str().unwrap();
    let listed_addr = hosts
        .lines()
        .find(|l| l.starts_with("100."))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    for f in ["open", "listed", "closed"] {
        let gw = backend.gateway.to_string();
        refused(
            try_connect(&c, f, &gw, host_port),
            &format!("{f} to the host"),
        );
        refused(
            try_connect(&c, f, "169.254.1.1", host_port),
            &format!("{f} to the gateway"),
        );
    }
    refused(
        try_connect(&c, "open", &listed_addr, 9001),
        "open to another instance",
    );
    drop((backend, other, host_service));
}

#[test]
fn nothing_of_the_network_outlives_the_daemon_even_after_sigkill() {
    if !can_network("network_leftovers") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let env = [
        ("BACKEND_HOST", "198.18.100.14"),
        ("BACKEND_PORT", "7100"),
        ("CONNECT_AT_INIT", "0"),
    ];
    let mut d = Daemon::start_in(tmp.path(), &[]);
    let c = d.client();
    deploy_env(&c, "f", "py-net", "python3.11", "app.handler", &env);
    let (r, _) = invoke(&c, "f", json!({"action": "resolve"}));
    assert!(r.function_error.is_none());
    assert!(!network_leftovers(tmp.path()).is_empty());
    // A crash: the sandboxes die with the daemon, and their namespaces and
    // links with them; the table and the subnet's route wait for the
    // restart, which removes them before making its own.
    d.kill();
    let d2 = Daemon::start_in(tmp.path(), &[]);
    let c2 = d2.client();
    let (r, _) = invoke(&c2, "f", json!({"action": "resolve"}));
    assert!(r.function_error.is_none());
    let mut d2 = d2;
    assert!(d2.stop(), "daemon exits cleanly on SIGTERM");
    assert_eq!(network_leftovers(tmp.path()), Vec::<String>::new());
}

#[test]
fn a_full_address_pool_is_a_clear_error_and_addresses_come_back() {
    if !can_network("network_full_pool") {
        return;
    }
    // 14 instance addresses.
    let d = Daemon::start(&[
        "--instance-subnet",
        "100.127.250.0/28",
        "--network-pool",
        "2",
        "--scaling",
        "eager",
    ]);
    let c = d.client();
    let env = [
        ("BACKEND_HOST", "198.18.100.14"),
        ("BACKEND_PORT", "7100"),
        ("CONNECT_AT_INIT", "0"),
    ];
    deploy_env(&c, "f", "py-net", "python3.11", "app.handler", &env);
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let c = d.client();
                s.spawn(move || {
                    let r = c
                        .invoke(
                            "f",
                            br#"{"action": "resolve", "sleep": 3}"#,
                            &thaw_api::InvokeOptions::default(),
                        )
                        .map_err(|e| e.to_string())?;
                    if r.status == 200 && r.function_error.is_none() {
                        Ok(())
                    } else {
                        Err(String::from_utf8_lossy(&r.payload).into_owned())
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(ok, 14, "{errors:?}");
    assert!(
        errors
            .iter()
            .all(|e| e.contains("SubnetIPAddressLimitReachedException")
                && e.contains("has no free address")),
        "{errors:?}"
    );
    assert!(!errors.is_empty());
    // The daemon still serves, and a retired instance's address is free
    // again.
    c.retire_instances("f").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The addresses of retired instances come back once their links
        // are gone (in the background).
        let r = c.invoke(
            "f",
            br#"{"action": "resolve"}"#,
            &thaw_api::InvokeOptions::default(),
        );
        match r {
            Ok(r) if r.status == 200 && r.function_error.is_none() => break,
            other => assert!(Instant::now() < deadline, "no address came back: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_connection_flood_is_cut_off_and_spares_other_functions() {
    if !can_network("network_flood") {
        return;
    }
    let backend = BackendHost::start("e4", Ipv4Addr::new(198, 18, 100, 16), 7100).unwrap();
    let b = backend.addr.to_string();
    let d = Daemon::start(&["--internal-cidr", "198.18.100.16/30"]);
    let c = d.client();
    let env = [
        ("BACKEND_HOST", b.as_str()),
        ("BACKEND_PORT", "7100"),
        ("CONNECT_AT_INIT", "0"),
    ];
    deploy_env(&c, "flood", "py-net", "python3.11", "app.handler", &env);
    deploy_env(&c, "calm", "py-net", "python3.11", "app.handler", &env);
    assert_eq!(try_connect(&c, "calm", &b, 7100), Ok(()));
    // Past its burst of new connections the instance is refused at once
    // (thaw_net::firewall::NEW_CONNECTIONS_PER_SECOND, burst twice that).
    // To a closed port of the backend: each attempt that gets through is
    // answered with a reset (ECONNREFUSED) by the backend itself, each
    // cut off is refused by the host (EHOSTUNREACH).
    let (r, v) = invoke(
        &c,
        "flood",
        json!({"action": "flood", "host": b, "port": 7199, "count": 3000}),
    );
    assert!(r.function_error.is_none(), "{v}");
    let reached = v["ok"].as_u64().unwrap() + v["errors"]["ECONNREFUSED"].as_u64().unwrap_or(0);
    let cut = v["errors"]["EHOSTUNREACH"].as_u64().unwrap_or(0);
    assert!(cut > 0, "nothing was cut off: {v}");
    assert!(reached >= 1000, "cut off before its burst: {v}");
    // Another function's instance is not affected.
    assert_eq!(try_connect(&c, "calm", &b, 7100), Ok(()));
    drop(backend);
}
