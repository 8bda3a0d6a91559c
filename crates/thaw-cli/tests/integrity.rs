//! Integrity failures are the platform's, not the function's: a restored
//! instance whose memory fails verification while it runs (a damaged
//! chunk in the snapshot store, read on a page fault) is discarded, the
//! caller still gets the function's answer (the invocation runs again on
//! a cold start), never a `Runtime.*` error; the snapshot is discarded and
//! built again, and restores work again afterwards.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{can_run, deploy_env, invoke, metrics_text, pages_sum, snapshot_dir, Daemon};
use serde_json::json;
use thaw_api::{SnapshotState, StartKind};

/// The stored memory image's chunks of the snapshot in `dir`, as
/// (object file, offset in the image), read with the daemon's store key.
fn memory_chunks(data_dir: &Path, dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("thaw-snapshot.json")).unwrap()).unwrap();
    let blob: thaw_store::BlobRef =
        serde_json::from_value(meta["store"]["memory"].clone()).expect("memory blob ref");
    let key: [u8; 32] = std::fs::read(data_dir.join("keys/store.key"))
        .unwrap()
        .try_into()
        .expect("a 32-byte key");
    let store = thaw_store::Store::local(
        &data_dir.join("store"),
        key,
        thaw_store::StoreConfig::default(),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = rt.block_on(store.manifest(&blob)).expect("manifest");
    m.chunks
        .iter()
        .map(|c| {
            (
                data_dir.join("store/chunks").join(&c.id[..2]).join(&c.id),
                c.offset,
            )
        })
        .collect()
}

/// The sum of the samples of metric `name` whose labels include all of
/// `labels` (each `key="value"`), whatever their order.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

fn wait_ready(c: &thaw_api::Client, name: &str, within: Duration) -> thaw_api::SnapshotStatus {
    let t0 = Instant::now();
    loop {
        let s = c.snapshot_status(name).unwrap();
        if s.state == SnapshotState::Ready {
            return s;
        }
        assert!(t0.elapsed() < within, "snapshot not ready again: {s:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A daemon started with `args` (lazy restores, no standby) with `pages`
/// deployed, snapshotted, and one restored instance idle after its first
/// invocation: the pages it has not touched yet are still to be served.
fn pages_restored_and_idle(args: &[&str]) -> Daemon {
    let d = Daemon::start(args);
    let c = d.client();
    deploy_env(&c, "pages", "py-pages", "python3.11", "app.handler", &[]);
    let payload = json!({"from": 0, "to": 256}).to_string();
    c.create_snapshot("pages", payload.as_bytes()).unwrap();
    c.retire_instances("pages").unwrap();
    let (r, v) = invoke(&c, "pages", json!({"from": 0, "to": 256}));
    assert_eq!(r.start, Some(StartKind::Restored), "{v}");
    d
}

/// After `pages`' memory image was damaged under its idle instance: the
/// next invocation, which faults on damaged pages, is answered right from
/// a cold start with no function error, and the failure is counted as an
/// integrity failure of the platform with the snapshot discarded. Returns
/// the metrics then.
fn damaged_page_answered_cold(d: &Daemon) -> String {
    let c = d.client();
    let t0 = Instant::now();
    let r = c
        .invoke(
            "pages",
            json!({"from": 3000, "to": 6000}).to_string().as_bytes(),
            &Default::default(),
        )
        .expect("the invocation is answered");
    let text = metrics_text(d);
    eprintln!("answered in {:?}: {:?}", t0.elapsed(), r.start);
    let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap_or_default();
    assert!(
        r.function_error.is_none(),
        "no function error (never Runtime.*): {v}"
    );
    assert_eq!(v["sum"], json!(pages_sum(3000, 6000)), "{v}");
    assert_eq!(r.start, Some(StartKind::Cold), "retried on a cold start");
    assert_eq!(
        sample(
            &text,
            "thaw_restore_memory_failures_total",
            &["cause=\"integrity\"", "function=\"pages\""]
        ),
        1.0,
        "the damaged page was found on a fault, after the resume:\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            "thaw_snapshots_damaged_total",
            &["function=\"pages\""]
        ),
        1.0,
        "{text}"
    );
    text
}

/// New instances restored from `pages`' snapshot answer each range right.
fn restores_answer_right(c: &thaw_api::Client, ranges: &[(u64, u64)]) {
    for &(from, to) in ranges {
        c.retire_instances("pages").unwrap();
        let (r, v) = invoke(c, "pages", json!({"from": from, "to": to}));
        assert!(r.function_error.is_none(), "{v}");
        assert_eq!(v["sum"], json!(pages_sum(from, to)), "{v}");
        assert_eq!(r.start, Some(StartKind::Restored), "{v}");
    }
}

#[test]
fn a_damaged_page_is_a_service_failure_retried_cold_and_the_snapshot_rebuilt() {
    if !can_run("a_damaged_page_is_a_service_failure_retried_cold_and_the_snapshot_rebuilt") {
        return;
    }
    // Lazy restores with no memory tier: every page fault reads the store.
    let d = pages_restored_and_idle(&[
        "--instances",
        "restore",
        "--standby",
        "0",
        "--memory-mode",
        "lazy",
        "--store-memory-mb",
        "0",
    ]);
    let c = d.client();
    let first_dir = snapshot_dir(&d, "pages");

    // Now every chunk of the memory image is damaged: the warm instance's
    // next page faults read damaged chunks, and its page server kills it.
    let chunks = memory_chunks(&d.data_dir, &first_dir);
    assert!(chunks.len() > 2, "{} chunks", chunks.len());
    for (f, _) in &chunks {
        let mut b = std::fs::read(f).unwrap();
        let i = b.len() / 2;
        b[i] ^= 0x10;
        std::fs::write(f, b).unwrap();
    }
    let text = damaged_page_answered_cold(&d);
    assert!(
        !text.contains("outcome=\"crash\""),
        "no invocation counted as the function's crash:\n{text}"
    );

    // The snapshot was discarded and is built again (failed, then ready).
    let s = wait_ready(&c, "pages", Duration::from_secs(120));
    assert!(s.report.is_some(), "{s:?}");
    let text = metrics_text(&d);
    assert_eq!(
        sample(
            &text,
            "thaw_snapshot_builds_total",
            &["function=\"pages\"", "outcome=\"ready\""]
        ),
        2.0,
        "one build by the test, one rebuild:\n{text}"
    );
    // The rebuilt snapshot's chunks are intact (the damaged ones were
    // written again) and restores work again.
    restores_answer_right(&c, &[(0, 256), (3000, 6000)]);
    let text = metrics_text(&d);
    assert_eq!(
        sample(
            &text,
            "thaw_snapshots_damaged_total",
            &["function=\"pages\""]
        ),
        1.0,
        "{text}"
    );
}

#[test]
fn a_daemon_with_injected_store_faults_never_serves_a_wrong_answer() {
    if !can_run("a_daemon_with_injected_store_faults_never_serves_a_wrong_answer") {
        return;
    }
    let d = Daemon::start_with_env(
        &[
            "--instances",
            "restore",
            "--standby",
            "0",
            "--memory-mode",
            "lazy",
            "--store-memory-mb",
            "0",
        ],
        &[(
            thaw_store::faults::FAULTS_ENV,
            "seed=11,error=0.02,corrupt=0.05,truncate=0.02,latency-ms=2,prefix=chunks/",
        )],
    );
    let c = d.client();
    deploy_env(&c, "pages", "py-pages", "python3.11", "app.handler", &[]);
    let payload = json!({"from": 0, "to": 256}).to_string();
    // A build may fail (its publish or validation hit a fault); the
    // invocations below must be right either way.
    let _ = c.create_snapshot("pages", payload.as_bytes());
    let mut starts = std::collections::BTreeMap::new();
    for i in 0..12u64 {
        c.retire_instances("pages").unwrap();
        let (from, to) = (i * 400, i * 400 + 1200);
        let r = c
            .invoke(
                "pages",
                json!({"from": from, "to": to}).to_string().as_bytes(),
                &Default::default(),
            )
            .expect("answered");
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap_or_default();
        assert!(r.function_error.is_none(), "invocation {i}: {v}");
        assert_eq!(v["sum"], json!(pages_sum(from, to)), "invocation {i}: {v}");
        *starts.entry(format!("{:?}", r.start)).or_insert(0) += 1;
    }
    let text = metrics_text(&d);
    eprintln!(
        "starts {starts:?}; memory failures {} (integrity) {} (store); damaged snapshots {}",
        sample(
            &text,
            "thaw_restore_memory_failures_total",
            &["cause=\"integrity\""]
        ),
        sample(
            &text,
            "thaw_restore_memory_failures_total",
            &["cause=\"store\""]
        ),
        sample(
            &text,
            "thaw_snapshots_damaged_total",
            &["function=\"pages\""]
        ),
    );
}

/// The same with snapshots in plain local files (`--store off`): the
/// supervisor's page server finds a page whose chunk fails the engine's
/// own checksum, kills the runtime and tells the daemon why; the caller
/// still gets the function's answer from a cold start, and the snapshot is
/// built again.
#[test]
fn a_damaged_page_of_a_local_snapshot_is_a_service_failure_too() {
    if !can_run("a_damaged_page_of_a_local_snapshot_is_a_service_failure_too") {
        return;
    }
    use std::io::{Read, Seek, SeekFrom, Write};
    let d = pages_restored_and_idle(&[
        "--instances",
        "restore",
        "--standby",
        "0",
        "--memory-mode",
        "lazy",
        "--store",
        "off",
    ]);
    let c = d.client();

    // One byte of every MiB of the memory image, changed in place (the
    // page server reads the same file).
    let memory = snapshot_dir(&d, "pages").join("memory.thaw");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&memory)
        .unwrap();
    let len = f.metadata().unwrap().len();
    assert!(len > 4 << 20, "{len} bytes");
    let mut at = 1 << 20;
    while at + 4096 < len {
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(at + 2048)).unwrap();
        f.read_exact(&mut b).unwrap();
        b[0] ^= 0x10;
        f.seek(SeekFrom::Start(at + 2048)).unwrap();
        f.write_all(&b).unwrap();
        at += 1 << 20;
    }
    f.sync_all().unwrap();
    drop(f);

    damaged_page_answered_cold(&d);
    // Built again; restores answer right.
    wait_ready(&c, "pages", Duration::from_secs(120));
    restores_answer_right(&c, &[(3000, 6000)]);
}
