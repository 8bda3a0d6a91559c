//! The snapshot pipeline: deploying (or updating) a function builds its
//! snapshot in the background, new instances are then restored from it, an
//! update never serves the old one, a failed build is reported (status,
//! metrics) and instances start cold, and a snapshot survives a daemon
//! restart.

mod common;

use std::collections::BTreeMap;

use common::{can_run, functions_dir, invoke, settled, Daemon};
use serde_json::json;
use thaw_api::{
    Client, CreateFunctionRequest, Environment, FunctionCode, SnapshotState, StartKind,
    UpdateFunctionConfigurationRequest,
};

fn env(vars: &[(&str, &str)]) -> Option<Environment> {
    Some(Environment {
        variables: Some(
            vars.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
    })
}

fn create(c: &Client, name: &str, vars: &[(&str, &str)]) {
    let zip = thaw_api::package::zip_directory(&functions_dir().join("py-hooks")).unwrap();
    c.create_function(&CreateFunctionRequest {
        function_name: name.into(),
        runtime: Some("python3.11".into()),
        handler: Some("app.handler".into()),
        role: Some("arn:aws:iam::000000000000:role/test".into()),
        code: FunctionCode {
            zip_file: Some(zip),
            ..Default::default()
        },
        memory_size: Some(256),
        timeout: Some(10),
        environment: env(vars),
        ..Default::default()
    })
    .unwrap();
}

#[test]
fn deploy_builds_update_rebuilds_and_restart_keeps() {
    if !can_run("deploy_builds_update_rebuilds_and_restart_keeps") {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(data.path(), &["--auto-snapshot", "true"]);
    let c = d.client();
    create(&c, "p", &[("VERSION", "1")]);
    let s = settled(&c, "p");
    assert_eq!(s.state, SnapshotState::Ready, "{s:?}");
    let report = s.report.expect("a ready snapshot has its report");
    assert!(report.handshake && report.warmed_up && report.validation_ms > 0.0);
    let (r, v) = invoke(&c, "p", json!({}));
    assert_eq!(r.start, Some(StartKind::Restored), "{v}");
    assert_eq!(v["version"], "1");
    let listed = c.list_snapshots().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, SnapshotState::Ready);

    // An update: whatever serves the next calls runs the new configuration,
    // and the new revision gets its own snapshot.
    let old_revision = s.revision_id;
    c.update_function_configuration(
        "p",
        &UpdateFunctionConfigurationRequest {
            environment: env(&[("VERSION", "2")]),
            ..Default::default()
        },
    )
    .unwrap();
    for _ in 0..5 {
        let (_, v) = invoke(&c, "p", json!({}));
        assert_eq!(v["version"], "2", "an update served a stale instance: {v}");
    }
    let s = settled(&c, "p");
    assert_eq!(s.state, SnapshotState::Ready, "{s:?}");
    assert_ne!(s.revision_id, old_revision);
    c.retire_instances("p").unwrap();
    let (r, v) = invoke(&c, "p", json!({}));
    assert_eq!(r.start, Some(StartKind::Restored), "{v}");
    assert_eq!(v["version"], "2");
    let revisions: Vec<_> = std::fs::read_dir(data.path().join("snapshots/p"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        revisions,
        vec![s.revision_id.clone()],
        "old snapshots are removed"
    );

    // A new daemon on the same data: the snapshot is still used, not rebuilt.
    assert!(d.stop());
    let d = Daemon::start_in(data.path(), &["--auto-snapshot", "true"]);
    let c = d.client();
    let after = c.snapshot_status("p").unwrap();
    assert_eq!(after.state, SnapshotState::Ready, "{after:?}");
    let (r, v) = invoke(&c, "p", json!({}));
    assert_eq!(r.start, Some(StartKind::Restored), "{v}");
    assert_eq!(v["version"], "2");
}

#[test]
fn failed_build_is_reported_and_instances_start_cold() {
    if !can_run("failed_build_is_reported_and_instances_start_cold") {
        return;
    }
    let d = Daemon::start(&["--auto-snapshot", "true"]);
    let c = d.client();
    create(&c, "bad", &[("FAIL_BEFORE", "1")]);
    let s = settled(&c, "bad");
    assert_eq!(s.state, SnapshotState::Failed, "{s:?}");
    let error = s.error.unwrap();
    assert!(
        error.contains("Runtime.BeforeSnapshotError")
            && error.contains("before-snapshot hook refused"),
        "{error}"
    );
    let (r, v) = invoke(&c, "bad", json!({"k": 1}));
    assert_eq!(r.start, Some(StartKind::Cold), "{v}");
    assert!(r.function_error.is_none(), "{v}");
    let metrics = common::metrics_text(&d);
    assert!(
        metrics.contains(r#"thaw_snapshot_builds_total{function="bad",outcome="failed"} 1"#),
        "{metrics}"
    );
}

/// A handler that fails on the test event (`{}`: it reads `event["n"]`)
/// still gets a snapshot, taken right after init (as Lambda SnapStart
/// snapshots after init), and its instances are restored, not started
/// cold; the status says `init-only` and why.
#[test]
fn a_handler_that_fails_on_the_test_event_gets_an_init_only_snapshot() {
    if !can_run("a_handler_that_fails_on_the_test_event_gets_an_init_only_snapshot") {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(data.path(), &["--auto-snapshot", "true"]);
    let c = d.client();
    common::deploy(
        &c,
        "picky",
        "py-events",
        "python3.11",
        "app.handler",
        256,
        10,
    );
    let s = settled(&c, "picky");
    assert_eq!(s.state, SnapshotState::InitOnly, "{s:?}");
    let why = s.error.clone().unwrap_or_default();
    assert!(why.contains("KeyError"), "{why}");
    let report = s.report.expect("a report");
    assert_eq!(report.init_only.as_deref(), Some(why.as_str()));
    assert!(!report.warmed_up && report.handshake, "{report:?}");
    c.retire_instances("picky").unwrap();
    let (r, v) = invoke(&c, "picky", json!({"n": 7}));
    assert!(r.function_error.is_none(), "{v}");
    assert_eq!(v, json!(7));
    assert_eq!(r.start, Some(StartKind::Restored), "{v}");
    let metrics = common::metrics_text(&d);
    assert!(
        metrics.contains(r#"thaw_snapshot_builds_total{function="picky",outcome="ready"} 1"#),
        "{metrics}"
    );
    // A restarted daemon still says `init-only`, and why.
    assert!(d.stop());
    let d = Daemon::start_in(data.path(), &["--auto-snapshot", "true"]);
    let s = d.client().snapshot_status("picky").unwrap();
    assert_eq!(
        (s.state, s.error.as_deref()),
        (SnapshotState::InitOnly, Some(why.as_str())),
        "after a restart"
    );
}

/// Monotonic and boot-time clocks read by the function before the snapshot
/// and after a restore never go backwards, also when the snapshot comes from
/// a host whose clocks were far ahead (here: a daemon whose snapshot runs
/// see them 30 days ahead, standing for a longer-running host or a reboot
/// since) and is restored by a fresh daemon.
#[test]
fn clocks_never_go_backwards_across_a_restore() {
    if !can_run("clocks_never_go_backwards_across_a_restore") {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let thirty_days = (30 * 24 * 3600).to_string();
    let mut d = Daemon::start_in(
        data.path(),
        &["--test-snapshot-clock-offset-secs", &thirty_days],
    );
    let c = d.client();
    create(&c, "clk", &[]);
    c.create_snapshot("clk", b"{}").unwrap();
    let check = |v: &serde_json::Value| {
        for (before, after) in [
            ("init_monotonic", "monotonic"),
            ("init_boottime", "boottime"),
        ] {
            let (b, a) = (v[before].as_f64().unwrap(), v[after].as_f64().unwrap());
            assert!(
                a >= b,
                "{after} went backwards across the restore: {b} -> {a} ({v})"
            );
        }
        assert!(
            v["init_monotonic"].as_f64().unwrap() > 29.0 * 24.0 * 3600.0,
            "the snapshot run's clock was ahead: {v}"
        );
    };
    let (r, v) = invoke(&c, "clk", json!({}));
    assert_eq!(r.start, Some(StartKind::Restored), "{v}");
    check(&v);
    assert!(d.stop());
    // A fresh daemon without the offset: its host clock is 30 days behind
    // what the snapshotted process saw.
    let d = Daemon::start_in(data.path(), &[]);
    let c = d.client();
    let (r, v) = invoke(&c, "clk", json!({}));
    assert_eq!(r.start, Some(StartKind::Restored), "{v}");
    check(&v);
    // Cold instances keep the host's clocks.
    c.delete_snapshot("clk").unwrap();
    c.retire_instances("clk").unwrap();
    let (r, v) = invoke(&c, "clk", json!({}));
    assert_eq!(r.start, Some(StartKind::Cold), "{v}");
    let host_uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(v["boottime"].as_f64().unwrap() < host_uptime + 60.0, "{v}");
}

/// Eight snapshot requests for one revision at once, on top of the build
/// the deploy queued: one build runs, every request gets its outcome (the
/// same report), the status says ready with that report, exactly one
/// snapshot directory exists, and the function is restored, then warm.
#[test]
fn concurrent_snapshot_requests_join_one_build() {
    if !can_run("concurrent_snapshot_requests_join_one_build") {
        return;
    }
    let d = Daemon::start(&["--auto-snapshot", "true"]);
    let c = d.client();
    create(&c, "many", &[]);
    let barrier = std::sync::Barrier::new(8);
    let reports: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let c = d.client();
                    barrier.wait();
                    c.create_snapshot("many", b"{}")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let reports: Vec<serde_json::Value> = reports
        .into_iter()
        .map(|r| serde_json::to_value(r.expect("every joined request succeeds")).unwrap())
        .collect();
    for r in &reports {
        assert_eq!(r, &reports[0], "the requests saw different builds");
    }
    let s = settled(&c, "many");
    assert_eq!(s.state, SnapshotState::Ready, "{s:?}");
    assert!(s.error.is_none() && s.phase.is_none(), "{s:?}");
    assert_eq!(
        serde_json::to_value(s.report.expect("ready has a report")).unwrap(),
        reports[0],
        "the status tells another build's report"
    );
    assert_eq!(
        common::metric(
            &d,
            r#"thaw_snapshot_builds_total{function="many",outcome="ready"}"#
        ),
        1.0,
        "one build ran"
    );
    assert_eq!(
        common::metric(
            &d,
            r#"thaw_snapshot_builds_total{function="many",outcome="failed"}"#
        ),
        0.0
    );
    let dirs: Vec<String> = std::fs::read_dir(d.data_dir.join("snapshots/many"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        dirs,
        vec![s.revision_id.clone()],
        "one snapshot, no leftovers"
    );
    let (r, v) = invoke(&c, "many", json!({}));
    assert_eq!(r.start, Some(StartKind::Restored), "{v}");
    let (r, v) = invoke(&c, "many", json!({}));
    assert_eq!(r.start, Some(StartKind::Warm), "{v}");
}
