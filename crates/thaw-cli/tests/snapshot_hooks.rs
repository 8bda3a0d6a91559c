//! The SnapStart handshake end to end: runtime hooks run in the documented
//! order (before-snapshot in reverse registration order, after-restore in
//! order) in thaw's Python and Node.js bootstraps and in the unmodified
//! `awslambdaric` + `snapshot-restore-py` from PyPI; failing hooks fail the
//! snapshot with Lambda's error types and leave cold starts working; every
//! restored instance gets its own identity and random state (and, with
//! reseeding switched off, demonstrably would not).

mod common;

use std::collections::HashSet;

use common::{can_run, deploy_env, deploy_zip, functions_dir, invoke, skip, Daemon};
use serde_json::{json, Value};
use thaw_api::{Client, StartKind};

/// Invokes `name` on a new instance (its idle ones are retired first); the
/// instance must have been restored.
fn invoke_restored(c: &Client, name: &str) -> Value {
    c.retire_instances(name).unwrap();
    let (r, v) = invoke(c, name, json!({}));
    assert!(r.function_error.is_none(), "{v}");
    assert_eq!(r.start, Some(StartKind::Restored), "{v}");
    v
}

fn distinct(values: &[Value], key: &str) -> usize {
    values
        .iter()
        .map(|v| v[key].to_string())
        .collect::<HashSet<_>>()
        .len()
}

/// Hooks order, the restore's environment, Server-Timing, and `count` new
/// instances (cloned from one template, or each restored: `instances` is
/// `clone` or `restore`) that all differ; then the same function with
/// reseeding off repeats its random numbers (`dup_keys`), which shows the
/// first check can fail.
fn hooks_and_identity(
    runtime: &str,
    dir: &str,
    handler: &str,
    dup_keys: &[&str],
    instances: &str,
    count: usize,
) {
    let d = Daemon::start(&["--instances", instances]);
    let c = d.client();
    deploy_env(&c, "h", dir, runtime, handler, &[]);
    let report = c.create_snapshot("h", b"{}").unwrap();
    assert!(report.handshake, "{report:?}");
    assert!(report.warmed_up, "{report:?}");
    assert!(report.validation_ms > 0.0, "{report:?}");

    c.retire_instances("h").unwrap();
    let (r, v) = invoke(&c, "h", json!({}));
    assert_eq!(r.start, Some(StartKind::Restored), "{v}");
    let t = r.server_timing.expect("Server-Timing");
    // A clone has no memory to bring back: it shares the template's.
    let memory = instances == "clone" || t.memory_ms > 0.0;
    assert!(t.restore_ms > 0.0 && memory && t.hooks_ms > 0.0, "{t:?}");
    if instances == "clone" {
        assert!(
            r.memory.as_ref().is_some_and(|m| m.mode == "clone"),
            "{:?}",
            r.memory
        );
    }
    let id = v["instance_id"].as_str().unwrap().to_string();
    assert_eq!(
        v["ran"],
        json!(["before-2:x", "before-1", format!("after-1:{}", &id[..8]), "after-2:y"]),
        "before-snapshot hooks in reverse order, after-restore hooks in order, after the new environment"
    );
    assert_eq!(v["init_type"], "snap-start");
    assert!(
        v["log_stream"].as_str().unwrap().ends_with(&id[..12]),
        "the log stream is the restored instance's: {v}"
    );

    let runs: Vec<Value> = (0..count).map(|_| invoke_restored(&c, "h")).collect();
    for v in &runs {
        let boot = v["boot_id"].as_str().unwrap();
        assert!(boot.len() == 36 && !boot.starts_with("error"), "{v}");
        assert_eq!(v["machine_id"].as_str().unwrap().len(), 32, "{v}");
    }
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert!(
        runs.iter().all(|v| v["boot_id"] != host_boot.trim()),
        "the host's boot id leaked"
    );
    for key in [
        "random",
        "uuid",
        "hostname",
        "instance_id",
        "log_stream",
        "boot_id",
        "machine_id",
    ] {
        assert_eq!(
            distinct(&runs, key),
            count,
            "{key} repeats across new instances ({instances})"
        );
    }
    if runtime.starts_with("nodejs") {
        assert_eq!(
            distinct(&runs, "bytes"),
            count,
            "crypto.randomBytes repeats"
        );
    }
    if instances == "clone" {
        assert_eq!(
            common::metric(&d, "thaw_templates{function=\"h\"}"),
            1.0,
            "all cloned from one template"
        );
    }

    deploy_env(&c, "same", dir, runtime, handler, &[]);
    c.put_function_settings(
        "same",
        &thaw_api::PlatformSettings {
            reseed: Some(false),
            ..Default::default()
        },
    )
    .unwrap();
    c.create_snapshot("same", b"{}").unwrap();
    let runs: Vec<Value> = (0..5).map(|_| invoke_restored(&c, "same")).collect();
    assert_eq!(distinct(&runs, "instance_id"), 5);
    for key in dup_keys {
        assert!(
            distinct(&runs, key) < 5,
            "without reseeding, restored instances share {key}: the check above can fail"
        );
    }
}

#[test]
fn python_hooks_identity_and_reseeding() {
    if !can_run("python_hooks_identity_and_reseeding") {
        return;
    }
    hooks_and_identity(
        "python3.11",
        "py-hooks",
        "app.handler",
        &["random"],
        "clone",
        100,
    );
}

#[test]
fn python_hooks_identity_and_reseeding_restored() {
    if !can_run("python_hooks_identity_and_reseeding_restored") {
        return;
    }
    hooks_and_identity(
        "python3.11",
        "py-hooks",
        "app.handler",
        &["random"],
        "restore",
        50,
    );
}

#[test]
fn node_hooks_identity_and_reseeding() {
    if !can_run("node_hooks_identity_and_reseeding") {
        return;
    }
    hooks_and_identity(
        "nodejs20.x",
        "node-hooks",
        "index.handler",
        &["random", "uuid", "bytes"],
        "clone",
        100,
    );
}

#[test]
fn node_hooks_identity_and_reseeding_restored() {
    if !can_run("node_hooks_identity_and_reseeding_restored") {
        return;
    }
    hooks_and_identity(
        "nodejs20.x",
        "node-hooks",
        "index.handler",
        &["random", "uuid", "bytes"],
        "restore",
        50,
    );
}

fn failing_hooks(runtime: &str, dir: &str, handler: &str) {
    let d = Daemon::start(&[]);
    let c = d.client();
    for (name, var, error_type, message) in [
        (
            "fb",
            "FAIL_BEFORE",
            "Runtime.BeforeSnapshotError",
            "before-snapshot hook refused",
        ),
        (
            "fa",
            "FAIL_AFTER",
            "Runtime.AfterRestoreError",
            "after-restore hook refused",
        ),
    ] {
        deploy_env(&c, name, dir, runtime, handler, &[(var, "1")]);
        let e = c.create_snapshot(name, b"{}").unwrap_err().to_string();
        assert!(e.contains(error_type) && e.contains(message), "{name}: {e}");
        // No snapshot was kept: instances start cold and work.
        let (r, v) = invoke(&c, name, json!({}));
        assert_eq!(r.start, Some(StartKind::Cold), "{v}");
        assert!(r.function_error.is_none(), "{v}");
        assert_eq!(v["init_type"], "on-demand");
        assert_eq!(v["ran"], json!([]), "no hooks run in a cold start");
    }
}

#[test]
fn python_failing_hooks_fail_the_snapshot() {
    if !can_run("python_failing_hooks_fail_the_snapshot") {
        return;
    }
    failing_hooks("python3.11", "py-hooks", "app.handler");
}

#[test]
fn a_hook_has_ten_seconds() {
    if !can_run("a_hook_has_ten_seconds") {
        return;
    }
    let d = Daemon::start(&[]);
    let c = d.client();
    deploy_env(
        &c,
        "slow",
        "py-hooks",
        "python3.11",
        "app.handler",
        &[("SLOW_AFTER", "1")],
    );
    let e = c.create_snapshot("slow", b"{}").unwrap_err().to_string();
    assert!(
        e.contains("Runtime.AfterRestoreError") && e.contains("longer than 10 s"),
        "{e}"
    );
}

#[test]
fn node_failing_hooks_fail_the_snapshot() {
    if !can_run("node_failing_hooks_fail_the_snapshot") {
        return;
    }
    failing_hooks("nodejs20.x", "node-hooks", "index.handler");
}

#[test]
fn unmodified_awslambdaric_and_snapshot_restore_py() {
    if !can_run("unmodified_awslambdaric_and_snapshot_restore_py") {
        return;
    }
    let code = tempfile::tempdir().unwrap();
    let src = functions_dir().join("ric-hooks");
    for f in ["app.py", "bootstrap"] {
        std::fs::copy(src.join(f), code.path().join(f)).unwrap();
    }
    let pip = std::process::Command::new("python3.11")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(code.path())
        .args(["awslambdaric==4.2.2", "snapshot-restore-py==1.0.0"])
        .status();
    if !matches!(pip, Ok(s) if s.success()) {
        skip(
            "unmodified_awslambdaric_and_snapshot_restore_py",
            "`pip install awslambdaric snapshot-restore-py` failed on this machine",
        );
        return;
    }
    let zip = thaw_api::package::zip_directory(code.path()).unwrap();
    let d = Daemon::start(&[]);
    let c = d.client();
    deploy_zip(&c, "ric", zip, "provided.al2023", "app.handler", 256, 10);
    let report = c.create_snapshot("ric", b"{}").unwrap();
    assert!(
        report.handshake,
        "awslambdaric calls restore/next: {report:?}"
    );
    assert!(
        !report.warmed_up,
        "it does so before any invocation: {report:?}"
    );
    let runs: Vec<Value> = (0..3).map(|_| invoke_restored(&c, "ric")).collect();
    for v in &runs {
        assert_eq!(
            v["ran"],
            json!(["before-2", "before-1", "after-1", "after-2"]),
            "{v}"
        );
        assert_eq!(v["init_type"], "snap-start");
        assert!(
            v["hooks_module"]
                .as_str()
                .unwrap()
                .starts_with("/var/task/"),
            "the PyPI package, not thaw's: {v}"
        );
    }
    assert_eq!(
        distinct(&runs, "random"),
        3,
        "the function's own hook reseeds"
    );
}

/// Every file under `dir` (recursively) that contains `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return hits;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            hits.extend(files_containing(&p, needle));
        } else if ft.is_file() {
            if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

#[test]
fn secrets_are_delivered_after_restore_and_stored_nowhere() {
    if !can_run("secrets_are_delivered_after_restore_and_stored_nowhere") {
        return;
    }
    let canary = format!("canary-{}", uuid_like());
    let other = format!("other-{}", uuid_like());
    // Plain files, so that the memory image itself is searched for the
    // canaries (in the store it would be encrypted: no proof either way).
    let d = Daemon::start(&["--store", "off"]);
    let c = d.client();
    // One caught by the default name pattern (TOKEN), one listed explicitly.
    deploy_env(
        &c,
        "s",
        "py-hooks",
        "python3.11",
        "app.handler",
        &[
            ("CANARY_TOKEN", &canary),
            ("OTHER_CANARY", &other),
            ("THAW_SECRETS", "OTHER_CANARY"),
        ],
    );
    let (r, v) = invoke(&c, "s", json!({}));
    assert_eq!(r.start, Some(StartKind::Cold));
    assert_eq!(
        v["secret"],
        canary.as_str(),
        "a cold start sees its secrets"
    );
    assert_eq!(v["other_secret"], other.as_str());
    assert_eq!(
        v["thaw_secrets"],
        Value::Null,
        "THAW_SECRETS is thaw's, not the function's"
    );

    c.create_snapshot("s", b"{}").unwrap();
    for _ in 0..3 {
        let v = invoke_restored(&c, "s");
        assert_eq!(
            v["secret"],
            canary.as_str(),
            "delivered after the restore: {v}"
        );
        assert_eq!(v["other_secret"], other.as_str());
        assert_eq!(
            v["secrets_at_init"],
            json!([null, null]),
            "the snapshot run never had them"
        );
    }
    for needle in [&canary, &other] {
        let hits = files_containing(&d.data_dir, needle.as_bytes());
        assert!(hits.is_empty(), "{needle} stored in {hits:?}");
    }
    // And the data dir does hold the (sealed) variables and the snapshot.
    assert!(!files_containing(&d.data_dir, b"CANARY_TOKEN").is_empty());
    assert!(!files_containing(&d.data_dir, b"THAWMEM").is_empty());
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", n, std::process::id())
}
