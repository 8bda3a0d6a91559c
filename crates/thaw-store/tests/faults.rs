//! The store over a fault-injecting object store ([`FaultyStore`]): reads
//! that come back truncated or with flipped bytes never yield wrong bytes
//! (the read is asked again once, then fails with a typed integrity
//! error); failed requests are typed errors; latency only slows things
//! down (and a tier slower than its time limit fails in bounded time); a
//! chunk found damaged is written again by the next publish of it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use thaw_store::{FaultPlan, FaultyStore, Store, StoreConfig, StoreError};

const MASTER: [u8; 32] = [7; 32];

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// No memory tier: every read goes to the (faulty) object store.
fn config() -> StoreConfig {
    StoreConfig {
        memory_budget: 0,
        ..StoreConfig::default()
    }
}

fn local(dir: &Path) -> Arc<dyn ObjectStore> {
    Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).expect("local store"))
}

/// A store over `dir` whose requests get `plan`'s faults.
fn faulty(dir: &Path, plan: &str) -> (Store, Arc<FaultyStore>) {
    let plan: FaultPlan = plan.parse().expect("plan");
    let f = Arc::new(FaultyStore::new(local(dir), plan));
    let store = Store::new(f.clone(), MASTER, config()).expect("store");
    (store, f)
}

#[tokio::test]
async fn truncated_or_corrupted_reads_never_yield_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = random(3 << 20, 1);
    let blob = Store::new(local(dir.path()), MASTER, config())
        .unwrap()
        .put("t", "b", &data)
        .await
        .unwrap()
        .blob;
    let (mut whole_ok, mut whole_failed, mut range_ok, mut range_failed) = (0, 0, 0, 0);
    let (mut injected, mut failed_reads) = (0, 0);
    for seed in 0..20 {
        let (store, f) = faulty(
            dir.path(),
            &format!("seed={seed},truncate=0.15,corrupt=0.15"),
        );
        match store.get(&blob).await {
            Ok(b) => {
                assert!(b == data, "seed {seed}: wrong bytes from get");
                whole_ok += 1;
            }
            Err(e) => {
                assert!(
                    e.is_integrity(),
                    "seed {seed}: not an integrity error: {e:?}"
                );
                whole_failed += 1;
            }
        }
        // Ranges through an authenticated manifest (opened without faults).
        let m = Store::new(local(dir.path()), MASTER, config())
            .unwrap()
            .manifest(&blob)
            .await
            .unwrap();
        for i in 0..16u64 {
            let (off, len) = (i * 190_000 + seed, 70_000);
            match store.read_range(&m, off, len).await {
                Ok(b) => {
                    assert!(
                        b[..] == data[off as usize..off as usize + len],
                        "seed {seed}: wrong bytes in range {off}+{len}"
                    );
                    range_ok += 1;
                }
                Err(e) => {
                    assert!(
                        matches!(e, StoreError::Corrupt { .. }),
                        "seed {seed}: {e:?}"
                    );
                    range_failed += 1;
                }
            }
        }
        let c = f.counts();
        injected += c.truncated + c.corrupted;
        failed_reads += store.stats()[2].errors;
    }
    println!(
        "whole: {whole_ok} ok, {whole_failed} failed; ranges: {range_ok} ok, {range_failed} failed; \
         {injected} damaged reads injected, {failed_reads} object reads failed"
    );
    assert!(injected > 50, "the plan damaged reads ({injected})");
    assert!(
        whole_failed > 0 || range_failed > 0,
        "some reads stayed damaged twice"
    );
    // Asking again rescued reads: fewer whole-chunk failures than damaged
    // reads (each failure needs two damaged reads of one chunk).
    assert!(
        range_ok > range_failed && whole_ok > 0,
        "retries rescued reads: {range_ok} ranges ok, {whole_ok} blobs ok"
    );
}

#[tokio::test]
async fn failed_requests_are_typed_errors_and_a_retry_gets_through() {
    let dir = tempfile::tempdir().unwrap();
    let data = random(2 << 20, 2);
    let blob = Store::new(local(dir.path()), MASTER, config())
        .unwrap()
        .put("t", "b", &data)
        .await
        .unwrap()
        .blob;
    // Every chunk request fails: an object-store error, typed.
    let (store, f) = faulty(dir.path(), "seed=1,error=1,prefix=chunks/");
    match store.get(&blob).await {
        Err(StoreError::ObjectStore { .. }) => {}
        other => panic!(
            "expected an object store error, got {:?}",
            other.map(|b| b.len())
        ),
    }
    assert!(f.counts().errors >= 2, "the read was asked twice");
    // Every manifest request fails: typed too.
    let (store, _) = faulty(dir.path(), "seed=1,error=1,prefix=manifests/");
    assert!(matches!(
        store.get(&blob).await,
        Err(StoreError::ObjectStore { .. })
    ));
    // Some requests fail: most reads get through on the second asking;
    // none returns other bytes.
    let mut ok = 0;
    for seed in 0..10 {
        let (store, _) = faulty(dir.path(), &format!("seed={seed},error=0.2,prefix=chunks/"));
        match store.get(&blob).await {
            Ok(b) => {
                assert!(b == data);
                ok += 1;
            }
            Err(e) => assert!(matches!(e, StoreError::ObjectStore { .. }), "{e:?}"),
        }
    }
    assert!(ok >= 5, "retries get most reads through ({ok} of 10)");
    // Publishing through failing requests fails with a typed error, and
    // leaves the published blob readable.
    let (store, _) = faulty(dir.path(), "seed=5,error=1,prefix=manifests/");
    assert!(matches!(
        store.put("t", "b", &random(1 << 20, 3)).await,
        Err(StoreError::ObjectStore { .. })
    ));
    let clean = Store::new(local(dir.path()), MASTER, config()).unwrap();
    assert!(clean.get(&blob).await.unwrap() == data);
}

#[tokio::test]
async fn latency_slows_reads_and_a_tier_past_its_limit_fails_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = random(1 << 20, 4);
    let blob = Store::new(local(dir.path()), MASTER, config())
        .unwrap()
        .put("t", "b", &data)
        .await
        .unwrap()
        .blob;
    let (store, _) = faulty(dir.path(), "seed=9,latency-ms=30");
    let t = Instant::now();
    assert!(store.get(&blob).await.unwrap() == data);
    assert!(t.elapsed() >= Duration::from_millis(5), "{:?}", t.elapsed());
    // A 2 s delay against a 100 ms limit: a timeout, well within a second.
    let plan: FaultPlan = "seed=9,latency-ms=2000,prefix=chunks/".parse().unwrap();
    let slow = Store::new(
        Arc::new(FaultyStore::new(local(dir.path()), plan)),
        MASTER,
        StoreConfig {
            object_timeout: Duration::from_millis(100),
            ..config()
        },
    )
    .unwrap();
    let t = Instant::now();
    let r = slow.get(&blob).await;
    assert!(
        matches!(r, Err(StoreError::Timeout { .. })) || r.as_ref().is_ok_and(|b| *b == data),
        "{:?}",
        r.map(|b| b.len())
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test]
async fn a_damaged_chunk_is_written_again_by_the_next_publish() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(local(dir.path()), MASTER, config()).unwrap();
    let data = random(1 << 20, 5);
    let blob = store.put("t", "b", &data).await.unwrap().blob;
    let mut chunks = Vec::new();
    let mut stack = vec![dir.path().join("chunks")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                chunks.push(e.path());
            }
        }
    }
    let victim = &chunks[0];
    let mut bad = std::fs::read(victim).unwrap();
    bad[10] ^= 0x40;
    std::fs::write(victim, &bad).unwrap();
    let e = store.get(&blob).await.unwrap_err();
    assert!(e.is_integrity(), "{e:?}");
    // The chunk is young (a publish would normally trust it); the store
    // saw it damaged and writes it again.
    let again = store.put("t", "b", &data).await.unwrap();
    assert_eq!(again.blob, blob);
    assert!(
        again.uploaded_bytes > 0,
        "the damaged chunk was written again"
    );
    assert!(store.get(&blob).await.unwrap() == data);
    // A second publish trusts it again (nothing uploaded).
    assert_eq!(store.put("t", "b", &data).await.unwrap().uploaded_bytes, 0);
}
