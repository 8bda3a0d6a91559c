//! Versions and aliases end to end: boto3 publishes, routes and deletes
//! (`tests/boto3/versions.py`); then each published version has a snapshot
//! of its own, a restarted daemon still has every version and alias and
//! restores each version from its own snapshot, provisioned concurrency on
//! an alias makes its first call warm, and deleting the function
//! leaves no snapshot, process or cgroup of any version behind.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use thaw_api::{SnapshotState, StartKind};

#[test]
fn boto3_publishes_routes_and_deletes_versions_and_each_keeps_its_snapshot() {
    const TEST: &str = "boto3_publishes_routes_and_deletes_versions";
    if !can_run(TEST) {
        return;
    }
    if !has_boto3() {
        skip(TEST, "boto3 is not installed (scripts/test.sh installs it)");
        return;
    }
    let data = tempfile::Builder::new()
        .prefix("thaw-e2e-")
        .tempdir()
        .unwrap();
    let mut d = Daemon::start_in(data.path(), &[]);
    run_boto3_script(&d, "versions.py", &[]);

    // SnapStart applies to published versions: each remaining version has
    // its own snapshot, built when it was published although the daemon's
    // pipeline is off, and `$LATEST` has none; the deleted version 1's is
    // gone.
    let c = d.client();
    let t0 = Instant::now();
    for key in ["ver:2", "ver:3"] {
        loop {
            let s = c.snapshot_status(key).unwrap();
            if s.state == SnapshotState::Ready {
                assert_eq!(s.function, key);
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "no snapshot of {key}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let listed: Vec<String> = c
        .list_snapshots()
        .unwrap()
        .into_iter()
        .map(|s| s.function)
        .collect();
    assert_eq!(listed, ["ver", "ver:2", "ver:3"]);
    assert_eq!(c.snapshot_status("ver").unwrap().state, SnapshotState::None);
    let snapshots = data.path().join("snapshots");
    assert!(snapshots.join("ver:2").is_dir() && snapshots.join("ver:3").is_dir());
    assert!(
        !snapshots.join("ver:1").exists(),
        "version 1's snapshot stayed"
    );

    // The CLI: an alias with weighted routing, then the list.
    let thaw = |args: &[&str]| {
        let out = signed_cli(&mut std::process::Command::new(env!("CARGO_BIN_EXE_thaw")))
            .args(["--endpoint", &d.endpoint])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "thaw {args:?}: {out:?}");
        text
    };
    let made = thaw(&["alias", "ver", "canary", "2", "--weight", "3=0.25"]);
    assert!(made.contains("alias canary -> 2"), "{made}");
    let listed = thaw(&["versions", "ver"]);
    for want in ["$LATEST", "alias canary -> 2, 0.25 to 3", "alias live -> 3"] {
        assert!(listed.contains(want), "{want} not in:\n{listed}");
    }
    let published = thaw(&["publish", "ver"]);
    assert!(published.contains("ver version 3"), "{published}");
    thaw(&["alias", "ver", "canary", "--delete"]);

    // A restarted daemon has every version and alias, and restores each
    // version from its own snapshot.
    assert!(d.stop(), "daemon did not stop cleanly");
    let d = Daemon::start_in(data.path(), &[]);
    let c = d.client();
    // Provisioned concurrency on the alias keeps version 3's instance
    // ready: the first call through the alias is warm.
    c.put_provisioned_concurrency_config("ver", "live", 1)
        .unwrap();
    let t0 = Instant::now();
    while c
        .get_provisioned_concurrency_config("ver", "live")
        .unwrap()
        .status
        != thaw_api::ProvisionedConcurrencyStatus::Ready
    {
        assert!(t0.elapsed() < Duration::from_secs(60), "not READY");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (r, v) = invoke(&c, "ver:live", json!({}));
    assert_eq!((r.start, &v["mark"]), (Some(StartKind::Warm), &json!("v3")));
    c.delete_provisioned_concurrency_config("ver", "live")
        .unwrap();
    for (name, mark, start) in [
        ("ver:2", "v2", StartKind::Restored),
        ("ver", "v3", StartKind::Cold),
    ] {
        let (r, v) = invoke(&c, name, json!({}));
        assert_eq!(r.function_error, None, "{name}: {v}");
        assert_eq!(v["mark"], mark, "{name}: {v}");
        assert_eq!(r.start, Some(start), "{name}");
    }
    let (_, v) = invoke(&c, "ver:live", json!({}));
    assert_eq!(
        v["invoked_arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:ver:live"
    );
    assert_eq!(v["env_version"], "3");

    // `thaw deploy --publish`: new code, then a version of it.
    let dir = functions_dir().join("py-version");
    let out = signed_cli(&mut std::process::Command::new(env!("CARGO_BIN_EXE_thaw")))
        .args([
            "--endpoint",
            &d.endpoint,
            "deploy",
            "ver",
            "--runtime",
            "python3.11",
        ])
        .args([
            "--handler",
            "app.handler",
            "--no-wait",
            "--publish",
            "--code",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "thaw deploy --publish: {out:?}");
    assert!(text.contains("published version 4"), "{text}");
    let (_, v) = invoke(&c, "ver:4", json!({}));
    assert_eq!(v["mark"], "v1");

    // Deleting the function releases every version.
    c.delete_function("ver").unwrap();
    let t0 = Instant::now();
    loop {
        let left: Vec<_> = std::fs::read_dir(&snapshots)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        let cgroups = instance_cgroups(data.path());
        if left.is_empty() && cgroups.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "left behind: snapshots {left:?} ({:?}), cgroups {cgroups:?}",
            left.iter()
                .flat_map(|n| std::fs::read_dir(snapshots.join(n))
                    .into_iter()
                    .flatten()
                    .flatten())
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
