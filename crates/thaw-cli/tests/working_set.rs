//! Working sets through the daemon (`--memory-mode working-set`): the
//! snapshot pipeline's validation restore records the working set; later
//! restores install it and answer correctly also for inputs that touch
//! pages outside it (which then extend it); a corrupted, stale or missing
//! working-set file is refused with a warning and the restore goes on
//! lazily, then a new one is recorded; a sandbox killed while its page
//! server works fails the invocation within a bounded time, leaves nothing
//! behind, and the next invocation works.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    can_run, deploy_env, instance_cgroups, invoke, metric, pages_sum, snapshot_dir, Daemon,
};
use serde_json::json;
use thaw_api::{Client, MemoryInfo, StartKind};

const WS_FILE: &str = "workingset.thaw";

/// Invokes `name` on a newly restored instance for pages `[a, b)`, checks
/// the sum, and returns how its memory came back.
fn restored_sum(c: &Client, name: &str, a: u64, b: u64) -> MemoryInfo {
    c.retire_instances(name).unwrap();
    let (r, v) = invoke(c, name, json!({"from": a, "to": b}));
    assert!(r.function_error.is_none(), "{v}");
    assert_eq!(r.start, Some(StartKind::Restored), "{v}");
    assert_eq!(v["sum"], json!(pages_sum(a, b)), "pages {a}..{b}: {v}");
    let m = r
        .memory
        .unwrap_or_else(|| panic!("no X-Thaw-Memory header: {v}"));
    eprintln!("{name} {a}..{b}: {m}");
    m
}

/// Waits up to 20 s for `cond`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn snapshot_pages(c: &Client, name: &str, a: u64, b: u64) {
    let payload = json!({"from": a, "to": b}).to_string();
    c.create_snapshot(name, payload.as_bytes())
        .unwrap_or_else(|e| panic!("snapshot {name}: {e}"));
}

#[test]
fn a_recorded_working_set_is_prefetched_and_extended_by_other_inputs() {
    if !can_run("a_recorded_working_set_is_prefetched_and_extended_by_other_inputs") {
        return;
    }
    let d = Daemon::start(&[
        "--instances",
        "restore",
        "--memory-mode",
        "working-set",
        "--standby",
        "0",
    ]);
    let c = d.client();
    deploy_env(&c, "pages", "py-pages", "python3.11", "app.handler", &[]);
    snapshot_pages(&c, "pages", 0, 256);
    let dir = snapshot_dir(&d, "pages");
    assert!(
        dir.join(WS_FILE).is_file(),
        "the validation restore recorded the working set"
    );
    assert_eq!(
        metric(
            &d,
            "thaw_working_sets_total{event=\"recorded\",function=\"pages\"}"
        ),
        1.0
    );

    // The recorded input: everything it needs is installed up front.
    let m = restored_sum(&c, "pages", 0, 256);
    assert_eq!(
        (m.mode.as_str(), m.working_set.as_str()),
        ("working-set", "used")
    );
    assert!(m.prefetched_pages >= 256, "{m}");
    assert!(m.faults * 10 < m.prefetched_pages, "few misses: {m}");

    // Another input, mostly outside the working set: correct, and its
    // misses extend the working set.
    let before = std::fs::metadata(dir.join(WS_FILE)).unwrap().len();
    let m = restored_sum(&c, "pages", 4000, 8000);
    assert!(m.faults >= 16, "pages outside the working set fault: {m}");
    let first_misses = m.faults;
    eventually("the drifted working set is extended", || {
        metric(
            &d,
            "thaw_working_sets_total{event=\"rerecorded\",function=\"pages\"}",
        ) >= 1.0
    });
    let after = std::fs::metadata(dir.join(WS_FILE)).unwrap().len();
    assert!(after > before, "{before} -> {after} bytes");
    let m = restored_sum(&c, "pages", 4000, 8000);
    assert!(
        m.faults * 4 < first_misses,
        "the extended working set covers the new input: {m} (first: {first_misses} faults)"
    );
    // And the first input still works.
    restored_sum(&c, "pages", 0, 256);

    // On demand: the next restore records a new working set, for the
    // input it gets; the one after uses it.
    c.rerecord_working_set("pages").unwrap();
    assert!(!dir.join(WS_FILE).exists());
    let m = restored_sum(&c, "pages", 6000, 6100);
    assert!(m.recorded, "{m}");
    eventually("the new working set is written", || {
        dir.join(WS_FILE).is_file()
    });
    let m = restored_sum(&c, "pages", 6000, 6100);
    assert_eq!(m.working_set, "used", "{m}");
    assert!(m.faults * 10 < m.prefetched_pages, "{m}");
    let e = c.rerecord_working_set("nope").unwrap_err().to_string();
    assert!(
        e.contains("ResourceNotFound") || e.contains("not found"),
        "{e}"
    );
}

#[test]
fn each_function_may_choose_its_memory_mode() {
    if !can_run("each_function_may_choose_its_memory_mode") {
        return;
    }
    let d = Daemon::start(&[
        "--instances",
        "restore",
        "--memory-mode",
        "working-set",
        "--standby",
        "0",
    ]);
    let c = d.client();
    for mode in ["eager", "lazy", "working-set"] {
        let name = format!("pages-{mode}");
        deploy_env(&c, &name, "py-pages", "python3.11", "app.handler", &[]);
        c.put_function_settings(
            &name,
            &thaw_api::PlatformSettings {
                memory_mode: Some(mode.into()),
                ..Default::default()
            },
        )
        .unwrap();
        snapshot_pages(&c, &name, 0, 256);
        let m = restored_sum(&c, &name, 0, 512);
        assert_eq!(m.mode, mode, "{m}");
        assert_eq!(
            snapshot_dir(&d, &name).join(WS_FILE).is_file(),
            mode == "working-set",
            "only working-set restores record"
        );
        match mode {
            "eager" => assert_eq!((m.faults, m.prefetched_pages), (0, 0), "{m}"),
            "lazy" => assert!(m.faults > 0 && m.prefetched_pages == 0, "{m}"),
            _ => assert!(m.prefetched_pages > 0, "{m}"),
        }
    }
}

#[test]
fn a_corrupt_stale_or_missing_working_set_is_ignored_and_rerecorded() {
    if !can_run("a_corrupt_stale_or_missing_working_set_is_ignored_and_rerecorded") {
        return;
    }
    // Plain files: the engine's own checks of the file. (With the store, a
    // missing host copy is fetched again: snapshot_store.rs.)
    let d = Daemon::start(&[
        "--instances",
        "restore",
        "--memory-mode",
        "working-set",
        "--standby",
        "0",
        "--store",
        "off",
    ]);
    let c = d.client();
    for name in ["a", "b"] {
        deploy_env(&c, name, "py-pages", "python3.11", "app.handler", &[]);
        snapshot_pages(&c, name, 0, 256);
    }
    let ws = snapshot_dir(&d, "a").join(WS_FILE);
    let good = std::fs::read(&ws).unwrap();

    let refused = |what: &str, bytes: Option<Vec<u8>>| {
        match bytes {
            Some(b) => std::fs::write(&ws, b).unwrap(),
            None => std::fs::remove_file(&ws).unwrap(),
        }
        let m = restored_sum(&c, "a", 0, 1024);
        assert_eq!(m.prefetched_pages, 0, "{what}: {m}");
        if what == "missing" {
            // Nothing to refuse: this restore records a new one.
            assert!(m.recorded, "{what}: {m}");
        } else {
            assert_eq!(m.working_set, "invalid", "{what}: {m}");
            eventually("the refused file is removed", || !ws.exists());
            // The next restore records a new one.
            let m = restored_sum(&c, "a", 0, 256);
            assert!(m.recorded, "{what}: {m}");
        }
        // And the one after uses it.
        eventually("a new working set is recorded", || ws.is_file());
        let m = restored_sum(&c, "a", 0, 256);
        assert_eq!(m.working_set, "used", "{what}: {m}");
    };
    let mut flipped = good.clone();
    let n = flipped.len() - 10;
    flipped[n] ^= 0x40;
    refused("corrupted", Some(flipped));
    refused("truncated", Some(good[..good.len() / 2].to_vec()));
    let other = std::fs::read(snapshot_dir(&d, "b").join(WS_FILE)).unwrap();
    refused("stale (another snapshot's)", Some(other));
    refused("missing", None);
    assert!(
        metric(
            &d,
            "thaw_working_sets_total{event=\"invalid\",function=\"a\"}"
        ) >= 3.0
    );
}

/// Processes descended from `root` (its pid included).
fn descendants(root: u32) -> Vec<u32> {
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent.insert(pid, ppid);
        }
    }
    parent
        .keys()
        .copied()
        .filter(|&p| {
            let mut cur = p;
            for _ in 0..64 {
                if cur == root {
                    return true;
                }
                match parent.get(&cur) {
                    Some(&pp) if pp != 0 => cur = pp,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

/// The process (a sandbox's PID 1) running a page server under `daemon`.
fn page_server_process(daemon: u32) -> Option<u32> {
    descendants(daemon).into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "page-server")
            })
    })
}

/// Killing a sandbox's PID 1 (its page server) while the runtime waits
/// for pages ends the invocation within bounds: an error, or a cold retry
/// with the right answer; nothing is left behind and the function works.
#[test]
fn a_sandbox_killed_mid_fault_ends_the_invocation_cleanly() {
    if !can_run("a_sandbox_killed_mid_fault_ends_the_invocation_cleanly") {
        return;
    }
    // Every snapshot read takes 100 ms: reading all 32 MiB of the
    // function's pages on demand takes seconds.
    let d = Daemon::start(&[
        "--instances",
        "restore",
        "--memory-mode",
        "lazy",
        "--standby",
        "0",
        "--test-snapshot-read-latency-ms",
        "100",
    ]);
    let c = d.client();
    deploy_env(&c, "slow", "py-pages", "python3.11", "app.handler", &[]);
    snapshot_pages(&c, "slow", 0, 16);
    c.retire_instances("slow").unwrap();
    let caller = d.client();
    let call = std::thread::spawn(move || {
        let c = caller;
        let t0 = Instant::now();
        let r = c.invoke(
            "slow",
            json!({"from": 0, "to": 8192}).to_string().as_bytes(),
            &thaw_api::InvokeOptions::default(),
        );
        (r, t0.elapsed())
    });
    let mut victim = None;
    eventually("a page server is serving the invocation", || {
        victim = page_server_process(d.pid());
        victim.is_some()
    });
    std::thread::sleep(Duration::from_millis(800));
    let victim = victim.unwrap();
    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the sandbox's PID 1");
    let (r, took) = call.join().expect("invoking thread");
    eprintln!(
        "invocation ended {:?} after the kill ({took:?} in all): {r:?}",
        killed_at.elapsed()
    );
    assert!(
        killed_at.elapsed() < Duration::from_secs(10),
        "bounded: {:?}",
        killed_at.elapsed()
    );
    // The platform's failure: either the invocation fails (a service
    // error, or the runtime's crash as a function error), or, when the
    // supervisor reported that the instance's memory could not be served
    // before it went, the daemon ran it again on a cold start and the
    // answer is right. Never a wrong answer from the killed instance.
    match r {
        Err(e) => assert!(e.to_string().contains("Service"), "{e}"),
        Ok(r) if r.function_error.is_some() => {}
        Ok(r) => {
            assert_eq!(
                r.start,
                Some(StartKind::Cold),
                "only a cold retry may answer"
            );
            let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            assert_eq!(v["sum"], json!(pages_sum(0, 8192)), "{v}");
        }
    }
    // Nothing left behind; the function keeps working.
    eventually("the killed sandbox's processes are gone", || {
        page_server_process(d.pid()).is_none()
    });
    let (r, v) = invoke(&c, "slow", json!({"from": 0, "to": 8}));
    assert!(r.function_error.is_none(), "{v}");
    assert_eq!(v["sum"], json!(pages_sum(0, 8)));
    c.retire_instances("slow").unwrap();
    eventually("no instance cgroups remain", || {
        instance_cgroups(Path::new(&d.data_dir)).is_empty()
    });
}
