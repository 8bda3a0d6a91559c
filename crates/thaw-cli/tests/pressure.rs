//! Disk pressure against a real daemon whose data directory is a small
//! tmpfs: below `--min-free-disk-mb` a deploy and a snapshot request fail
//! with 503 `ServiceException` (no host path) and leave nothing behind; a
//! queued background build waits (its status says why) and runs once room
//! is freed; invocations go on throughout.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use thaw_api::{CreateFunctionRequest, FunctionCode, SnapshotState, StartKind};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mb: u64) -> Option<Tmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("thaw-pressure-")
            .tempdir()
            .ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m,mode=0700")])
            .arg("tmpfs")
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Bytes free on the filesystem of `p`.
fn free_bytes(p: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

/// Fills the filesystem of `dir` until `leave_mb` MiB are free.
fn ballast(dir: &Path, leave_mb: u64) -> PathBuf {
    let path = dir.join("ballast");
    let size = free_bytes(dir).saturating_sub(leave_mb << 20);
    let ok = Command::new("fallocate")
        .args(["-l", &size.to_string()])
        .arg(&path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "fallocate");
    path
}

fn create_request(name: &str) -> CreateFunctionRequest {
    let zip = thaw_api::package::zip_directory(&functions_dir().join("py-state")).unwrap();
    CreateFunctionRequest {
        function_name: name.into(),
        runtime: Some("python3.11".into()),
        handler: Some("app.handler".into()),
        role: Some("arn:aws:iam::000000000000:role/test".into()),
        code: FunctionCode {
            zip_file: Some(zip),
            ..Default::default()
        },
        memory_size: Some(128),
        timeout: Some(10),
        ..Default::default()
    }
}

#[test]
fn low_disk_refuses_deploys_and_holds_background_builds() {
    if !can_run("low_disk_refuses_deploys_and_holds_background_builds") {
        return;
    }
    let Some(fs) = Tmpfs::mount(320) else {
        skip(
            "low_disk_refuses_deploys_and_holds_background_builds",
            "cannot mount a tmpfs",
        );
        return;
    };
    let data = fs.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let d = Daemon::start_in(&data, &["--min-free-disk-mb", "96"]);
    let c = d.client();
    // A function deployed while there is room.
    c.create_function(&create_request("f")).unwrap();
    let (r, _) = invoke(&c, "f", serde_json::json!({}));
    assert_eq!(r.start, Some(StartKind::Cold));

    // Low: 48 MiB free, threshold 96.
    let weight = ballast(fs.path(), 48);
    let e = c.create_function(&create_request("g")).unwrap_err();
    let msg = e.to_string();
    assert_eq!(
        e.code().map(|c| c.as_str()),
        Some("ServiceException"),
        "{msg}"
    );
    assert!(msg.contains("low on disk"), "{msg}");
    assert!(
        !msg.contains(&*fs.path().to_string_lossy()),
        "no host path: {msg}"
    );
    let functions: Vec<String> = std::fs::read_dir(data.join("functions"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(functions, vec!["f".to_string()], "nothing half-written");
    let e = c.create_snapshot("f", b"{}").unwrap_err();
    assert!(e.to_string().contains("low on disk"), "{e}");
    // Invocations go on.
    let (r, _) = invoke(&c, "f", serde_json::json!({}));
    assert_eq!(r.start, Some(StartKind::Warm));

    // A queued background build waits and says why.
    c.queue_snapshot("f").unwrap();
    let t0 = Instant::now();
    loop {
        let s = c.snapshot_status("f").unwrap();
        if s.state == SnapshotState::Queued
            && s.phase
                .as_deref()
                .is_some_and(|p| p.contains("low on disk"))
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the build should wait: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.snapshot_status("f").unwrap().state, SnapshotState::Queued);

    // Room again: the build runs, and new instances are restored.
    std::fs::remove_file(weight).unwrap();
    let t0 = Instant::now();
    loop {
        let s = c.snapshot_status("f").unwrap();
        match s.state {
            SnapshotState::Ready => break,
            SnapshotState::Failed => panic!("the build failed: {s:?}"),
            _ => {}
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the build should run once room is freed: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.retire_instances("f").unwrap();
    let (r, _) = invoke(&c, "f", serde_json::json!({}));
    assert_eq!(r.start, Some(StartKind::Restored));
    c.create_function(&create_request("g")).unwrap();
    drop(d);
}
