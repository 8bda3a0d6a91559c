//! Lambda's concurrency controls through boto3 against a real `thaw
//! serve`: reserved concurrency (and its enforcement), account settings,
//! provisioned concurrency kept ready, and a restart keeping the reservation.

mod common;

use common::*;

fn run_script(d: &Daemon, phase: &str) {
    let script = functions_dir().join("../boto3/concurrency.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&d.endpoint)
        .arg(functions_dir())
        .arg(phase)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "boto3 script failed ({phase})");
    assert!(stdout.contains("checks passed"));
}

#[test]
fn boto3_concurrency_controls() {
    if !can_run("boto3_concurrency_controls") {
        return;
    }
    if !has_boto3() {
        skip(
            "boto3_concurrency_controls",
            "boto3 is not installed (scripts/test.sh installs it)",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(tmp.path(), &[]);
    run_script(&d, "main");
    assert!(d.stop(), "daemon exits cleanly");
    let d2 = Daemon::start_in(tmp.path(), &[]);
    run_script(&d2, "after-restart");

    // The typed client and the `thaw concurrency` command speak the same API.
    let c = d2.client();
    assert_eq!(
        c.get_function_concurrency("conc")
            .unwrap()
            .reserved_concurrent_executions,
        Some(1)
    );
    let e = c.put_function_concurrency("conc", 901).unwrap_err();
    assert_eq!(
        e.code(),
        Some(&thaw_api::ErrorCode::InvalidParameterValue),
        "{e}"
    );
    let thaw = |args: &[&str]| {
        let out = signed_cli(&mut std::process::Command::new(env!("CARGO_BIN_EXE_thaw")))
            .args(["--endpoint", &d2.endpoint])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(thaw(&["concurrency", "put", "conc", "3"]).contains("reserved 3"));
    assert!(thaw(&["concurrency", "get", "conc"]).contains("reserved 3"));
    thaw(&["concurrency", "delete", "conc"]);
    assert_eq!(
        c.get_function_concurrency("conc").unwrap(),
        thaw_api::Concurrency::default()
    );
    let s = c.get_account_settings().unwrap();
    assert_eq!(s.account_limit.unreserved_concurrent_executions, 1000);
    assert_eq!(s.account_usage.function_count, 2);
    assert!(c
        .list_provisioned_concurrency_configs("prov")
        .unwrap()
        .provisioned_concurrency_configs
        .is_empty());
    let p = c
        .put_provisioned_concurrency_config("prov", "$LATEST", 1)
        .unwrap();
    assert_eq!(p.requested_provisioned_concurrent_executions, 1);
    c.delete_provisioned_concurrency_config("prov", "$LATEST")
        .unwrap();
}

/// With a snapshot, provisioned instances are restored from it (not cold
/// started), kept idle, and the first invocation is warm on one of them.
#[test]
fn provisioned_instances_are_restored_from_the_snapshot() {
    use std::time::{Duration, Instant};
    use thaw_api::{ProvisionedConcurrencyStatus, SnapshotState, StartKind};
    if !can_run("provisioned_instances_are_restored_from_the_snapshot") {
        return;
    }
    let d = Daemon::start(&["--auto-snapshot", "true"]);
    let c = d.client();
    deploy(
        &c,
        "snapprov",
        "py-state",
        "python3.11",
        "app.handler",
        128,
        10,
    );
    let t0 = Instant::now();
    loop {
        let s = c.snapshot_status("snapprov").unwrap();
        if matches!(s.state, SnapshotState::Ready | SnapshotState::Failed) {
            assert_eq!(s.state, SnapshotState::Ready, "{s:?}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(90), "snapshot not ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    let restored_before = metric(
        &d,
        "thaw_instance_starts_total{function=\"snapprov\",result=\"restored\"}",
    ) + metric(
        &d,
        "thaw_instance_starts_total{function=\"snapprov\",result=\"cloned\"}",
    );
    c.put_provisioned_concurrency_config("snapprov", "$LATEST", 2)
        .unwrap();
    let t0 = Instant::now();
    let p = loop {
        let p = c
            .get_provisioned_concurrency_config("snapprov", "$LATEST")
            .unwrap();
        if p.status != ProvisionedConcurrencyStatus::InProgress {
            break p;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "still IN_PROGRESS");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(p.status, ProvisionedConcurrencyStatus::Ready, "{p:?}");
    assert_eq!(p.available_provisioned_concurrent_executions, 2);
    // Made from the snapshot: cloned from its template (the default) or
    // restored.
    let restored = metric(
        &d,
        "thaw_instance_starts_total{function=\"snapprov\",result=\"restored\"}",
    ) + metric(
        &d,
        "thaw_instance_starts_total{function=\"snapprov\",result=\"cloned\"}",
    );
    assert_eq!(restored - restored_before, 2.0, "both from the snapshot");
    let (r, v) = invoke(&c, "snapprov", serde_json::json!({"action": "echo"}));
    assert_eq!(r.start, Some(StartKind::Warm));
    assert_eq!(v["count"], 2, "the snapshot ran the test invocation");
}
