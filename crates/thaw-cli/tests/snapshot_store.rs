//! Snapshots in the snapshot store through the daemon (the default,
//! `--store local`): the pipeline publishes state, memory image and working
//! set as encrypted chunks; the memory image is then only in the store and
//! restores read it through their page socket; a host that lost its copies
//! of the small files fetches them again; a tampered chunk never reaches an
//! instance (the restore fails and the instance starts cold, or the lost
//! instance is discarded and the invocation runs again cold), and the
//! snapshot is built again; deleting a
//! function's snapshots removes its blobs; the store's tiers are in
//! `/metrics`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    can_run, deploy_env, instance_cgroups, invoke, metric_in, metrics_text, pages_sum,
    snapshot_dir, Daemon,
};
use serde_json::json;
use thaw_api::{Client, StartKind};

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn chunks(d: &Daemon) -> Vec<PathBuf> {
    files_under(&d.data_dir.join("store").join("chunks"))
}

fn drop_caches(d: &Daemon) {
    let url = format!("{}/thaw/v1/store/drop-caches", d.endpoint);
    let r = reqwest::blocking::Client::new()
        .post(&url)
        .headers(common::signed_headers("POST", &url, b""))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{r:?}");
}

/// Invokes `name` on a new instance for pages `[a, b)`; returns how it
/// started and the memory header, after checking the sum.
fn fresh_sum(c: &Client, name: &str, a: u64, b: u64) -> (Option<StartKind>, String) {
    c.retire_instances(name).unwrap();
    let (r, v) = invoke(c, name, json!({"from": a, "to": b}));
    assert!(r.function_error.is_none(), "{v}");
    assert_eq!(v["sum"], json!(pages_sum(a, b)), "pages {a}..{b}: {v}");
    let m = r.memory.map(|m| m.to_string()).unwrap_or_default();
    eprintln!("{name} {a}..{b}: {:?} {m}", r.start);
    (r.start, m)
}

fn snapshot(c: &Client, name: &str) {
    let payload = json!({"from": 0, "to": 256}).to_string();
    c.create_snapshot(name, payload.as_bytes())
        .unwrap_or_else(|e| panic!("snapshot {name}: {e}"));
}

#[test]
fn snapshots_are_published_to_the_store_and_restored_from_it() {
    if !can_run("snapshots_are_published_to_the_store_and_restored_from_it") {
        return;
    }
    let d = Daemon::start(&["--instances", "restore", "--standby", "0"]);
    let c = d.client();
    deploy_env(&c, "pages", "py-pages", "python3.11", "app.handler", &[]);
    snapshot(&c, "pages");
    let dir = snapshot_dir(&d, "pages");
    assert!(
        !dir.join("memory.thaw").exists(),
        "the memory image is only in the store"
    );
    assert!(dir.join("state.thaw").is_file() && dir.join("workingset.thaw").is_file());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("thaw-snapshot.json")).unwrap()).unwrap();
    for blob in ["state", "memory", "workingSet"] {
        assert_eq!(meta["store"][blob]["tenant"], "default", "{meta}");
        assert!(
            meta["store"][blob]["digest"].as_str().unwrap().len() == 64,
            "{meta}"
        );
    }
    let stored = chunks(&d);
    assert!(stored.len() > 3, "{} chunks", stored.len());
    // Nothing readable in the store: the interpreter's own strings, which
    // every Python memory image holds, appear in no object.
    let state = std::fs::read(dir.join("state.thaw")).unwrap();
    assert!(state.windows(9).any(|w| w == b"python3.1"));
    for f in files_under(&d.data_dir.join("store")) {
        let b = std::fs::read(&f).unwrap();
        assert!(
            !b.windows(9).any(|w| w == b"python3.1"),
            "plaintext in {}",
            f.display()
        );
    }

    // Restores read the memory image through the store, with the working
    // set, also for pages outside it.
    let (start, m) = fresh_sum(&c, "pages", 0, 256);
    assert_eq!(start, Some(StartKind::Restored));
    assert!(m.contains("working-set=used"), "{m}");
    let (start, _) = fresh_sum(&c, "pages", 3000, 6000);
    assert_eq!(start, Some(StartKind::Restored));

    // A host without its copies of the small files and with cold caches
    // (a new host sharing the store) fetches them again.
    std::fs::remove_file(dir.join("state.thaw")).unwrap();
    std::fs::remove_file(dir.join("workingset.thaw")).unwrap();
    drop_caches(&d);
    let before = metric_in(
        &metrics_text(&d),
        "thaw_store_chunks_total{tier=\"object\",result=\"hit\"}",
    );
    let (start, m) = fresh_sum(&c, "pages", 0, 256);
    assert_eq!(start, Some(StartKind::Restored));
    assert!(m.contains("working-set=used"), "{m}");
    assert!(dir.join("state.thaw").is_file() && dir.join("workingset.thaw").is_file());
    let text = metrics_text(&d);
    assert!(
        metric_in(
            &text,
            "thaw_store_chunks_total{tier=\"object\",result=\"hit\"}"
        ) > before,
        "{text}"
    );
    assert!(text.contains("thaw_store_bytes_total{tier=\"memory\"}"));

    // Deleting the snapshots removes their blobs (the chunks go at the next
    // collection).
    c.delete_snapshot("pages").unwrap();
    let manifests = d.data_dir.join("store").join("manifests");
    let t0 = std::time::Instant::now();
    while !files_under(&manifests).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "manifests left: {:?}",
            files_under(&manifests)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_tampered_chunk_never_reaches_an_instance() {
    if !can_run("a_tampered_chunk_never_reaches_an_instance") {
        return;
    }
    let d = Daemon::start(&["--instances", "restore", "--standby", "0"]);
    let c = d.client();
    for (name, mode) in [("eager", "eager"), ("ws", "working-set")] {
        deploy_env(&c, name, "py-pages", "python3.11", "app.handler", &[]);
        c.put_function_settings(
            name,
            &thaw_api::PlatformSettings {
                memory_mode: Some(mode.into()),
                ..Default::default()
            },
        )
        .unwrap();
        snapshot(&c, name);
        let (start, _) = fresh_sum(&c, name, 0, 256);
        assert_eq!(start, Some(StartKind::Restored), "{name}");
    }
    // Every chunk of the store flipped in one byte, caches dropped.
    for f in chunks(&d) {
        let mut b = std::fs::read(&f).unwrap();
        let i = b.len() / 2;
        b[i] ^= 0x40;
        std::fs::write(&f, b).unwrap();
    }
    drop_caches(&d);

    // Eager: the restore reads everything before the runtime resumes, fails,
    // and the instance starts cold instead; the answer is right.
    let (start, _) = fresh_sum(&c, "eager", 0, 256);
    assert_eq!(start, Some(StartKind::Cold));

    // Working set: whichever read reaches the damaged store first (the
    // image's header while the restore opens it, or a miss after the
    // resume, which makes the page server kill the runtime) fails, and
    // that is the platform's failure: the instance starts cold, or the
    // lost one is discarded and the invocation runs again on a cold start.
    // Either way the caller gets the right answer, in bounded time. Never
    // does a restored instance answer.
    c.retire_instances("ws").unwrap();
    let t0 = std::time::Instant::now();
    let payload = json!({"from": 3000, "to": 6000}).to_string();
    let r = c
        .invoke("ws", payload.as_bytes(), &Default::default())
        .expect("answered");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    assert!(r.function_error.is_none(), "{r:?}");
    assert_eq!(r.start, Some(StartKind::Cold), "{r:?}");
    let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(v["sum"], json!(pages_sum(3000, 6000)));
    // Both snapshots were found damaged, discarded and built again (the
    // damaged chunks written anew): the rebuilt ones restore.
    let text = metrics_text(&d);
    assert!(
        text.contains("thaw_snapshots_damaged_total{function=\"eager\"} 1")
            && text.contains("thaw_snapshots_damaged_total{function=\"ws\"} 1"),
        "{text}"
    );
    for name in ["eager", "ws"] {
        let t0 = std::time::Instant::now();
        while c.snapshot_status(name).unwrap().state != thaw_api::SnapshotState::Ready {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "{name}: {:?}",
                c.snapshot_status(name)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let (start, _) = fresh_sum(&c, name, 3000, 6000);
        assert_eq!(start, Some(StartKind::Restored), "{name}");
    }
    c.retire_instances("ws").unwrap();
    c.retire_instances("eager").unwrap();
    let t0 = std::time::Instant::now();
    while !instance_cgroups(&d.data_dir).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "instance cgroups left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
