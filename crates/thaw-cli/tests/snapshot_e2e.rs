//! Functions restored from snapshots, end to end through a real daemon:
//! state built during init survives, restored instances serve 100 further
//! invocations and time out like any other, 20 restore concurrently and do
//! not see each other's writes, and a damaged snapshot is refused (the
//! daemon falls back to a cold start and leaves nothing behind).

mod common;

use std::time::Duration;

use common::{deploy, instance_cgroups, invoke, processes_mentioning, Daemon};
use serde_json::json;
use thaw_api::StartKind;

/// Snapshot `name`, then check what a restored instance serves.
fn restore_and_serve(d: &Daemon, name: &str, dir: &str, runtime: &str, handler: &str) {
    let c = d.client();
    deploy(&c, name, dir, runtime, handler, 512, 2);
    // Reference values from a cold instance of the same code under another
    // name (so that no warm instance of `name` exists besides restored ones).
    let reference = format!("{name}-ref");
    deploy(&c, &reference, dir, runtime, handler, 512, 2);
    let (r, cold) = invoke(&c, &reference, json!({"action": "state"}));
    assert_eq!(r.start, Some(StartKind::Cold));
    // The snapshot's test invocation writes a value that must survive into
    // every restored instance.
    let report = c
        .create_snapshot(
            name,
            json!({"action": "write", "key": "snap", "value": "taken"})
                .to_string()
                .as_bytes(),
        )
        .unwrap_or_else(|e| panic!("snapshot {name}: {e}"));
    eprintln!("{name}: {report:?}");
    assert!(report.data_pages > 0 && report.size_bytes > report.data_pages * 4096);

    let (r, state) = invoke(&c, name, json!({"action": "state"}));
    assert_eq!(r.start, Some(StartKind::Restored), "{state}");
    assert_eq!(
        state["snap"], "taken",
        "written during the test invocation, before the checkpoint"
    );
    assert_ne!(state["init_id"], cold["init_id"]);
    assert_eq!(state["big"], cold["big"]);
    assert_eq!(state["digest"], cold["digest"]);
    assert_ne!(state["hostname"], cold["hostname"], "a sandbox of its own");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (state["time"].as_f64().unwrap() - now).abs() < 30.0,
        "clock works: {state}"
    );
    let restored_id = state["init_id"].clone();
    if runtime.starts_with("python") {
        for path in ["/.thaw/snapshot/state.thaw", "/.thaw/snapshot/memory.thaw"] {
            let (_, v) = invoke(&c, name, json!({"action": "peek", "path": path}));
            assert!(
                v["error"].is_string(),
                "a function read its snapshot {path}: {v}"
            );
        }
    }
    if runtime.starts_with("nodejs") {
        let major = runtime.trim_start_matches("nodejs").trim_end_matches(".x");
        assert!(
            state["node"]
                .as_str()
                .unwrap()
                .starts_with(&format!("v{major}.")),
            "{runtime} runs Node.js {}",
            state["node"]
        );
        assert_eq!(state["advanced"], true, "the pending timer keeps firing");
        assert_eq!(
            state["hot"], cold["hot"],
            "JIT-compiled code computes the same"
        );
    }

    // 100 further invocations; all on restored-and-now-warm instances.
    let mut last = 0;
    for _ in 0..100 {
        let (r, v) = invoke(&c, name, json!({"action": "count"}));
        assert_eq!(r.start, Some(StartKind::Warm), "{v}");
        assert!(r.function_error.is_none(), "{v}");
        last = last.max(v["count"].as_i64().unwrap());
    }
    assert_eq!(last, 100, "one restored instance served them all");

    // A timeout on a restored instance: reported, and the next call gets a
    // fresh restored instance.
    let (r, v) = invoke(&c, name, json!({"action": "sleep", "seconds": 5}));
    assert_eq!(r.function_error.as_deref(), Some("Unhandled"));
    assert_eq!(v["errorType"], "Sandbox.Timedout", "{v}");
    let (r, v) = invoke(&c, name, json!({"action": "state"}));
    assert_eq!(r.start, Some(StartKind::Restored), "{v}");
    assert_eq!(
        v["init_id"], restored_id,
        "every restored instance comes from the same snapshot"
    );
    assert_eq!(v["snap"], "taken");
}

/// Daemon flags of each way of making an instance from a snapshot: a
/// restore in each memory mode, or a clone of the template (the default).
const EAGER: &[&str] = &["--instances", "restore", "--memory-mode", "eager"];
const LAZY: &[&str] = &["--instances", "restore", "--memory-mode", "lazy"];
const WORKING_SET: &[&str] = &["--instances", "restore", "--memory-mode", "working-set"];
const CLONE: &[&str] = &[];

#[test]
fn python_function_clones_from_its_template() {
    if !common::can_run("python_function_clones_from_its_template") {
        return;
    }
    let d = Daemon::start(CLONE);
    restore_and_serve(&d, "pysnap", "py-snap", "python3.11", "app.handler");
}

#[test]
fn node_function_clones_from_its_template() {
    if !common::can_run("node_function_clones_from_its_template") {
        return;
    }
    let d = Daemon::start(CLONE);
    restore_and_serve(&d, "nodesnap", "node-snap", "nodejs20.x", "index.handler");
}

/// nodejs22.x: cold, snapshotted, cloned and restored as nodejs20.x is.
#[test]
fn node22_function_clones_from_its_template_and_restores() {
    const TEST: &str = "node22_function_clones_from_its_template_and_restores";
    if !common::can_run(TEST) {
        return;
    }
    if common::node22().is_none() {
        common::skip(
            TEST,
            "Node.js 22 is not installed (scripts/install-test-tools.sh fetches it)",
        );
        return;
    }
    let d = Daemon::start(CLONE);
    restore_and_serve(&d, "node22snap", "node-snap", "nodejs22.x", "index.handler");
    let d = Daemon::start(EAGER);
    restore_and_serve(&d, "node22snap", "node-snap", "nodejs22.x", "index.handler");
}

#[test]
fn twenty_concurrent_clones_are_independent() {
    if !common::can_run("twenty_concurrent_clones_are_independent") {
        return;
    }
    twenty_concurrent(CLONE);
}

#[test]
fn damaged_snapshot_is_refused_by_a_template_too() {
    if !common::can_run("damaged_snapshot_is_refused_by_a_template_too") {
        return;
    }
    damaged(CLONE);
}

#[test]
fn python_function_restores_from_snapshot_with_working_set() {
    if !common::can_run("python_function_restores_from_snapshot_with_working_set") {
        return;
    }
    let d = Daemon::start(WORKING_SET);
    restore_and_serve(&d, "pysnap", "py-snap", "python3.11", "app.handler");
}

#[test]
fn node_function_restores_from_snapshot_with_working_set() {
    if !common::can_run("node_function_restores_from_snapshot_with_working_set") {
        return;
    }
    let d = Daemon::start(WORKING_SET);
    restore_and_serve(&d, "nodesnap", "node-snap", "nodejs20.x", "index.handler");
}

#[test]
fn twenty_concurrent_restores_with_a_working_set_are_independent() {
    if !common::can_run("twenty_concurrent_restores_with_a_working_set_are_independent") {
        return;
    }
    twenty_concurrent(WORKING_SET);
}

#[test]
fn damaged_snapshot_is_refused_with_a_working_set_too() {
    if !common::can_run("damaged_snapshot_is_refused_with_a_working_set_too") {
        return;
    }
    damaged(WORKING_SET);
}

#[test]
fn python_function_restores_from_snapshot() {
    if !common::can_run("python_function_restores_from_snapshot") {
        return;
    }
    let d = Daemon::start(EAGER);
    restore_and_serve(&d, "pysnap", "py-snap", "python3.11", "app.handler");
}

#[test]
fn python_function_restores_from_snapshot_lazily() {
    if !common::can_run("python_function_restores_from_snapshot_lazily") {
        return;
    }
    let d = Daemon::start(LAZY);
    restore_and_serve(&d, "pysnap", "py-snap", "python3.11", "app.handler");
}

#[test]
fn node_function_restores_from_snapshot() {
    if !common::can_run("node_function_restores_from_snapshot") {
        return;
    }
    let d = Daemon::start(EAGER);
    restore_and_serve(&d, "nodesnap", "node-snap", "nodejs20.x", "index.handler");
}

#[test]
fn node_function_restores_from_snapshot_lazily() {
    if !common::can_run("node_function_restores_from_snapshot_lazily") {
        return;
    }
    let d = Daemon::start(LAZY);
    restore_and_serve(&d, "nodesnap", "node-snap", "nodejs20.x", "index.handler");
}

#[test]
fn twenty_concurrent_restores_are_independent() {
    if !common::can_run("twenty_concurrent_restores_are_independent") {
        return;
    }
    twenty_concurrent(EAGER);
}

#[test]
fn twenty_concurrent_lazy_restores_are_independent() {
    if !common::can_run("twenty_concurrent_lazy_restores_are_independent") {
        return;
    }
    twenty_concurrent(LAZY);
}

fn twenty_concurrent(mode: &[&str]) {
    // Twenty instances at once, whatever the scheduler would prefer (the
    // adaptive one may queue a request for a busy instance).
    let mut args = vec!["--max-instances", "24", "--scaling", "eager"];
    args.extend_from_slice(mode);
    let mut d = Daemon::start(&args);
    let c = d.client();
    deploy(&c, "iso", "py-snap", "python3.11", "app.handler", 256, 10);
    c.create_snapshot("iso", b"{}").expect("snapshot");
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || {
                invoke(
                    &c,
                    "iso",
                    json!({"action": "isolate", "value": format!("v{i}"), "hold_ms": 1500}),
                )
            })
        })
        .collect();
    let mut hosts = std::collections::HashSet::new();
    for (i, h) in handles.into_iter().enumerate() {
        let (r, v) = h.join().unwrap();
        assert_eq!(r.start, Some(StartKind::Restored), "{v}");
        assert_eq!(
            v["read"],
            format!("v{i}"),
            "each instance reads its own write"
        );
        hosts.insert(v["hostname"].as_str().unwrap().to_string());
    }
    assert_eq!(hosts.len(), 20, "20 separate instances");
    // Each warm instance still holds only its own value.
    let (_, v) = invoke(&c, "iso", json!({"action": "read", "key": "snap"}));
    assert_eq!(v["value"], serde_json::Value::Null);
    let data_dir = d.data_dir.clone();
    assert!(d.stop());
    assert!(instance_cgroups(&data_dir).is_empty(), "no cgroup left");
    assert!(processes_mentioning(data_dir.to_str().unwrap()).is_empty());
}

#[test]
fn damaged_snapshot_is_refused_and_falls_back_to_cold() {
    if !common::can_run("damaged_snapshot_is_refused_and_falls_back_to_cold") {
        return;
    }
    damaged(EAGER);
}

#[test]
fn damaged_snapshot_is_refused_in_lazy_mode_too() {
    if !common::can_run("damaged_snapshot_is_refused_in_lazy_mode_too") {
        return;
    }
    damaged(LAZY);
}

fn damaged(mode: &[&str]) {
    // Without standby sandboxes: one prepared before the damage holds pages
    // read (and verified) before it, and would rightly restore from them.
    // Plain files: these are the engine's own checks of its files (the
    // store's tampered chunks are in snapshot_store.rs).
    // Eager scaling: the call made while the first instance is busy must
    // get an instance of its own (the adaptive scheduler may rightly queue
    // it for the busy one when starts look slow, as on a loaded host).
    let mut args = vec!["--standby", "0", "--store", "off", "--scaling", "eager"];
    args.extend_from_slice(mode);
    let mut d = Daemon::start(&args);
    let c = d.client();
    deploy(&c, "dmg", "py-snap", "python3.11", "app.handler", 256, 10);
    let report = c.create_snapshot("dmg", b"{}").expect("snapshot");
    let dir = d
        .data_dir
        .join("snapshots")
        .join("dmg")
        .join(&report.revision_id);
    // Flip one bit in the middle of the memory image.
    let mem = dir.join("memory.thaw");
    let mut bytes = std::fs::read(&mem).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&mem, &bytes).unwrap();
    let (r, v) = invoke(&c, "dmg", json!({"action": "state"}));
    assert_eq!(
        r.start,
        Some(StartKind::Cold),
        "a corrupt snapshot is never used: {v}"
    );
    assert_eq!(v["big"], 300000);
    // A lazy restore (the template's too) verifies the whole snapshot
    // first: the damaged one is discarded and built again (an eager
    // restore just fails and the snapshot stays). Either way a snapshot of
    // this revision is ready again at the same place.
    let t0 = std::time::Instant::now();
    loop {
        let s = c.snapshot_status("dmg").unwrap();
        if s.state == thaw_api::SnapshotState::Ready && dir.join("state.thaw").exists() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the snapshot is not ready again: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Truncated state file: refused the same way.
    let state = dir.join("state.thaw");
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let c2 = c.clone();
    let busy =
        std::thread::spawn(move || invoke(&c2, "dmg", json!({"action": "sleep", "seconds": 1})));
    std::thread::sleep(Duration::from_millis(200));
    let (r, _) = invoke(&c, "dmg", json!({"action": "state"}));
    busy.join().unwrap();
    assert_eq!(r.start, Some(StartKind::Cold));
    let data_dir = d.data_dir.clone();
    assert!(d.stop());
    assert!(instance_cgroups(&data_dir).is_empty(), "no cgroup left");
    assert!(processes_mentioning(data_dir.to_str().unwrap()).is_empty());
}

/// Processes in this daemon's instance cgroups (host pids).
fn processes_in_cgroups_of(parent: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|c| c.contains(parent))
            .unwrap_or(false)
        {
            out.push(pid);
        }
    }
    out
}

/// A `thaw-init` of this daemon caught restoring: its child (the process
/// being restored) is traced. Returns the restorer's pid.
fn restorer_mid_restore(parent: &str) -> Option<u32> {
    for pid in processes_in_cgroups_of(parent) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let tracer = status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .and_then(|t| t.trim().parse::<u32>().ok())
            .unwrap_or(0);
        if tracer != 0 {
            return Some(tracer);
        }
    }
    None
}

#[test]
fn restore_killed_halfway_leaves_nothing_behind() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    if !common::can_run("restore_killed_halfway_leaves_nothing_behind") {
        return;
    }
    // Without standby sandboxes, so that a killed restore falls back to a
    // cold start (with one, a second restore would be tried first).
    let mut d = Daemon::start(&["--standby", "0", "--instances", "restore"]);
    let c = d.client();
    let parent = common::cgroup_parent_of(&d.data_dir);
    let mut caught = false;
    for attempt in 0..5 {
        let name = format!("half{attempt}");
        deploy(
            &c,
            &name,
            "node-snap",
            "nodejs20.x",
            "index.handler",
            512,
            10,
        );
        c.create_snapshot(&name, b"{}").expect("snapshot");
        let stop = Arc::new(AtomicBool::new(false));
        let killed = Arc::new(AtomicBool::new(false));
        let killer = {
            let (stop, killed, parent) = (stop.clone(), killed.clone(), parent.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(restorer) = restorer_mid_restore(&parent) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(restorer as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        killed.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            })
        };
        // The restore is killed; the daemon starts the instance cold instead.
        let (r, v) = invoke(&c, &name, json!({"action": "state"}));
        stop.store(true, Ordering::SeqCst);
        killer.join().unwrap();
        if !killed.load(Ordering::SeqCst) {
            // Not caught (the restore was too quick): this attempt's
            // instance must not count as left over by the next one.
            c.delete_function(&name).unwrap();
            continue;
        }
        caught = true;
        assert_eq!(r.start, Some(StartKind::Cold), "{v}");
        assert_eq!(v["big"], 1_000_000);
        break;
    }
    assert!(caught, "no restore was caught in the middle in 5 attempts");
    // Only the cold instance is left: one thaw-init and its sandbox (init
    // and runtime), nothing of the killed restore.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_in_cgroups_of(&parent);
        if left.len() <= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "processes left: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let data_dir = d.data_dir.clone();
    assert!(d.stop());
    assert!(processes_in_cgroups_of(&parent).is_empty());
    assert!(instance_cgroups(&data_dir).is_empty(), "no cgroup left");
}

/// A `provided` runtime (any binary speaking the Runtime API; here one with
/// a new HTTP connection per request) restores in every memory mode.
#[test]
fn provided_runtime_restores_from_snapshot() {
    if !common::can_run("provided_runtime_restores_from_snapshot") {
        return;
    }
    for mode in [EAGER, LAZY, WORKING_SET, CLONE] {
        let d = Daemon::start(mode);
        let c = d.client();
        deploy(
            &c,
            "custom",
            "provided-py",
            "provided.al2023",
            "my.handler",
            128,
            5,
        );
        c.create_snapshot("custom", b"{}").expect("snapshot");
        let (r, v) = invoke(&c, "custom", json!({"n": 1}));
        assert_eq!(r.start, Some(StartKind::Restored), "{v} ({mode:?})");
        assert_eq!(v["custom_runtime"], true);
        assert_eq!(v["echo"]["n"], 1);
        for i in 0..10 {
            let (r, v) = invoke(&c, "custom", json!({"n": i}));
            assert_eq!(r.start, Some(StartKind::Warm));
            assert_eq!(v["echo"]["n"], i);
        }
    }
}
