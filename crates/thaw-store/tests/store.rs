//! The store end to end on its local object tier: round trips, dedup
//! within a tenant and none across tenants, tampered / swapped / truncated
//! / missing / replayed objects refused, tiers falling through, garbage
//! collection, and a writer killed at random points leaving a consistent
//! store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thaw_store::{BlobRef, Chunking, Store, StoreConfig, StoreError};

const MASTER: [u8; 32] = [42; 32];

fn config(disk: Option<PathBuf>) -> StoreConfig {
    StoreConfig {
        memory_budget: 0,
        disk_cache: disk.map(|d| (d, 64 << 20)),
        gc_grace: Duration::ZERO,
        ..StoreConfig::default()
    }
}

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

/// Real runtime bytes: the Python interpreter's shared library or binary,
/// what every Python snapshot maps.
fn runtime_bytes() -> Vec<u8> {
    let candidates = [
        "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0",
        "/root/.pyenv/versions/3.11.7/bin/python3.11",
        "/usr/bin/python3",
    ];
    for c in candidates {
        if let Ok(b) = std::fs::read(c) {
            if b.len() > 1 << 20 {
                return b;
            }
        }
    }
    random(4 << 20, 99)
}

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
    out.sort();
    out
}

/// Stored chunks. A writer killed inside a chunk upload can leave the local
/// object store's staging file (`<id>#<n>`, never listed, never read as a
/// chunk); those are not chunks.
fn chunk_files(root: &Path) -> Vec<PathBuf> {
    files_under(&root.join("chunks"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains('#'))
        .collect()
}

#[tokio::test]
async fn round_trips_of_random_and_runtime_data() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    for chunking in [Chunking::default(), Chunking::FIXED_512K] {
        let store = Store::local(
            dir.path(),
            MASTER,
            StoreConfig {
                chunking,
                ..config(Some(cache.path().to_path_buf()))
            },
        )
        .unwrap();
        for (i, data) in [
            Vec::new(),
            vec![1],
            random(512 << 10, 1),
            random((512 << 10) + 1, 2),
            random(3 << 20, 3),
            runtime_bytes(),
        ]
        .into_iter()
        .enumerate()
        {
            let name = format!("blobs/{i}");
            let r = store.put("t1", &name, &data).await.unwrap();
            assert_eq!(r.blob.size, data.len() as u64);
            assert_eq!(
                store.get(&r.blob).await.unwrap(),
                data,
                "{chunking:?} blob {i}"
            );
            // Again, now from the disk cache.
            assert_eq!(store.get(&r.blob).await.unwrap(), data);
        }
        let s = store.stats();
        eprintln!("{chunking:?}: {s:?}");
        assert!(
            s[1].hits > 0,
            "the disk tier served the second reads: {s:?}"
        );
    }
    // Nothing in the object store or the cache is plaintext.
    let needle = &runtime_bytes()[4096..4096 + 64];
    for f in files_under(dir.path())
        .into_iter()
        .chain(files_under(cache.path()))
    {
        let b = std::fs::read(&f).unwrap();
        assert!(
            !b.windows(needle.len()).any(|w| w == needle),
            "{} holds plaintext",
            f.display()
        );
    }
}

#[tokio::test]
async fn two_functions_of_one_tenant_share_their_runtime_chunks_two_tenants_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path(), MASTER, config(None)).unwrap();
    let runtime = runtime_bytes();
    let f1 = [runtime.clone(), random(1 << 20, 5)].concat();
    let f2 = [random(300_000, 6), runtime.clone(), random(1 << 20, 7)].concat();
    let a = store.put("t1", "fn1/memory", &f1).await.unwrap();
    let b = store.put("t1", "fn2/memory", &f2).await.unwrap();
    eprintln!("fn1: {a:?}\nfn2: {b:?}");
    assert!(
        b.new_chunks * 2 < b.chunks,
        "most of fn2 (its runtime, behind another offset) was already stored: {b:?}"
    );
    let c = store.put("t2", "fn1/memory", &f1).await.unwrap();
    assert_eq!(
        c.new_chunks, c.chunks,
        "another tenant shares nothing: {c:?}"
    );
    for r in [&a.blob, &b.blob, &c.blob] {
        store.get(r).await.unwrap();
    }
}

#[tokio::test]
async fn tampered_swapped_truncated_missing_and_replayed_objects_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path(), MASTER, config(None)).unwrap();
    let a = store
        .put("t1", "a", &random(2 << 20, 11))
        .await
        .unwrap()
        .blob;
    let b = store
        .put("t1", "b", &random(2 << 20, 12))
        .await
        .unwrap()
        .blob;
    let manifest = |name: &str| dir.path().join("manifests/t1").join(name);
    let corrupt = |r: Result<Vec<u8>, StoreError>, what: &str| match r {
        Err(StoreError::Corrupt { .. }) | Err(StoreError::Missing(_)) => {}
        other => panic!("{what}: {:?}", other.map(|v| v.len())),
    };

    // A tampered chunk.
    let chunks = chunk_files(dir.path());
    let victim = &chunks[0];
    let good = std::fs::read(victim).unwrap();
    let mut bad = good.clone();
    let n = bad.len() / 2;
    bad[n] ^= 0x01;
    std::fs::write(victim, &bad).unwrap();
    let (ra, rb) = (store.get(&a).await, store.get(&b).await);
    assert!(
        ra.is_err() || rb.is_err(),
        "one of the blobs uses the chunk"
    );
    for r in [ra, rb].into_iter().filter(|r| r.is_err()) {
        corrupt(r, "tampered chunk");
    }
    // Truncated.
    std::fs::write(victim, &good[..good.len() - 10]).unwrap();
    assert!(store.get(&a).await.is_err() || store.get(&b).await.is_err());
    // Missing.
    std::fs::remove_file(victim).unwrap();
    assert!(store.get(&a).await.is_err() || store.get(&b).await.is_err());
    std::fs::write(victim, &good).unwrap();
    store.get(&a).await.unwrap();
    store.get(&b).await.unwrap();

    // A chunk swapped for another (valid) chunk under its name.
    let other = chunks.iter().find(|c| *c != victim).unwrap();
    std::fs::copy(other, victim).unwrap();
    assert!(store.get(&a).await.is_err() || store.get(&b).await.is_err());
    std::fs::write(victim, &good).unwrap();

    // A manifest moved to another blob's name.
    let mb = std::fs::read(manifest("b")).unwrap();
    std::fs::copy(manifest("a"), manifest("b")).unwrap();
    corrupt(store.get(&b).await, "swapped manifest");
    std::fs::write(manifest("b"), &mb).unwrap();
    // A tampered manifest.
    let mut t = mb.clone();
    let n = t.len() - 5;
    t[n] ^= 0x80;
    std::fs::write(manifest("b"), &t).unwrap();
    corrupt(store.get(&b).await, "tampered manifest");
    std::fs::write(manifest("b"), &mb).unwrap();
    store.get(&b).await.unwrap();

    // Replay: b is republished with new content; its old manifest put
    // back is refused for the new reference.
    let b2 = store
        .put("t1", "b", &random(1 << 20, 13))
        .await
        .unwrap()
        .blob;
    std::fs::write(manifest("b"), &mb).unwrap();
    corrupt(store.get(&b2).await, "replayed manifest");
    // The reference the old manifest belongs to still reads it.
    store.get(&b).await.unwrap();
    // A reference with a wrong digest gets nothing.
    let forged = BlobRef {
        digest: "00".repeat(32),
        ..a.clone()
    };
    corrupt(store.get(&forged).await, "wrong digest");
}

#[tokio::test]
async fn a_failing_or_lying_tier_falls_through_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path(), MASTER, config(Some(cache.path().to_path_buf()))).unwrap();
    let data = random(3 << 20, 21);
    let r = store.put("t1", "x", &data).await.unwrap().blob;
    assert_eq!(store.get(&r).await.unwrap(), data);
    // Every cached chunk damaged: each is detected, dropped from the cache
    // and read from the object store.
    let cached = files_under(cache.path());
    assert!(!cached.is_empty());
    for f in &cached {
        std::fs::write(f, b"garbage").unwrap();
    }
    assert_eq!(store.get(&r).await.unwrap(), data);
    let s = store.stats();
    assert_eq!(s[1].errors, cached.len() as u64, "{s:?}");
    // A cache entry that cannot be read at all (a directory in its place).
    for f in &cached {
        std::fs::remove_file(f).unwrap();
        std::fs::create_dir(f).unwrap();
    }
    assert_eq!(store.get(&r).await.unwrap(), data);
    assert!(store.stats()[1].errors >= 2 * cached.len() as u64);
    // The object tier gone: a store with a memory tier still serves what
    // it holds, and fails cleanly for the rest.
    let mem = Store::local(
        dir.path(),
        MASTER,
        StoreConfig {
            memory_budget: 64 << 20,
            ..config(None)
        },
    )
    .unwrap();
    assert_eq!(mem.get(&r).await.unwrap(), data);
    std::fs::rename(dir.path().join("chunks"), dir.path().join("gone")).unwrap();
    assert_eq!(mem.get(&r).await.unwrap(), data, "served from memory");
    assert!(matches!(store.get(&r).await, Err(StoreError::Missing(_))));
    std::fs::rename(dir.path().join("gone"), dir.path().join("chunks")).unwrap();
}

#[tokio::test]
async fn garbage_collection_removes_only_unreferenced_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path(), MASTER, config(None)).unwrap();
    let shared = random(2 << 20, 31);
    let a = store
        .put("t1", "a", &[shared.clone(), random(1 << 20, 32)].concat())
        .await
        .unwrap()
        .blob;
    let b = store
        .put("t1", "b", &[shared.clone(), random(1 << 20, 33)].concat())
        .await
        .unwrap()
        .blob;
    let before = chunk_files(dir.path()).len();
    store.delete("t1", "a").await.unwrap();
    let g = store.gc().await.unwrap();
    eprintln!("{g:?}");
    assert!(g.removed > 0 && g.removed < before, "{g:?}");
    assert_eq!(chunk_files(dir.path()).len(), before - g.removed);
    store.get(&b).await.unwrap();
    assert!(store.get(&a).await.is_err());
    // With a grace period, young unreferenced chunks stay.
    let patient = Store::local(
        dir.path(),
        MASTER,
        StoreConfig {
            gc_grace: Duration::from_secs(3600),
            ..config(None)
        },
    )
    .unwrap();
    store.delete("t1", "b").await.unwrap();
    let g = patient.gc().await.unwrap();
    assert_eq!(g.removed, 0, "{g:?}");
    assert!(g.kept_young > 0, "{g:?}");
}

/// Run by the test below in a child process: publishes blobs in a loop
/// until killed.
#[tokio::test]
async fn writer_child() {
    let Ok(dir) = std::env::var("THAW_STORE_WRITER_DIR") else {
        return;
    };
    let store = Store::local(Path::new(&dir), MASTER, config(None)).unwrap();
    for i in 0u64.. {
        let data = random(((i % 5) as usize + 1) << 19, i + 100);
        let r = store
            .put("t1", &format!("w/{}", i % 3), &data)
            .await
            .unwrap();
        // Recorded only once published: the parent checks these.
        let line = serde_json::to_string(&r.blob).unwrap();
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(Path::new(&dir).join("published.jsonl"))
            .unwrap();
        writeln!(f, "{line}").unwrap();
    }
}

#[tokio::test]
async fn a_writer_killed_at_random_points_leaves_a_consistent_store() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    for round in 0..8u64 {
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "writer_child", "--nocapture"])
            .env("THAW_STORE_WRITER_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(400 + round * 97 % 400));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let store = Store::local(dir.path(), MASTER, config(None)).unwrap();
    // Every manifest in the store opens and its whole content reads back
    // (no manifest ever points at a chunk that was not written).
    let text = std::fs::read_to_string(dir.path().join("published.jsonl")).unwrap_or_default();
    let published: Vec<BlobRef> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!published.is_empty(), "the writer published something");
    let mut current = 0;
    for name in ["w/0", "w/1", "w/2"] {
        // The newest recorded publish of each name, or a later one the
        // writer was killed before recording: either must read back whole.
        let Some(last) = published.iter().rev().find(|b| b.name == name) else {
            continue;
        };
        match store.get(last).await {
            Ok(d) => {
                assert_eq!(d.len() as u64, last.size);
                current += 1;
            }
            Err(StoreError::Corrupt { .. }) => {
                // Replaced by a later publish: the manifest there is whole.
                let m = std::fs::read(dir.path().join("manifests/t1").join(name)).unwrap();
                assert!(!m.is_empty());
            }
            Err(e) => panic!("{name}: {e}"),
        }
    }
    eprintln!(
        "{} publishes recorded, {current} still current",
        published.len()
    );
    // Collection removes the chunks of killed publishes and replaced blobs,
    // and every current blob still reads.
    let g = store.gc().await.unwrap();
    eprintln!("{g:?}");
    for name in ["w/0", "w/1", "w/2"] {
        if let Some(last) = published.iter().rev().find(|b| b.name == name) {
            if let Ok(d) = store.get(last).await {
                assert_eq!(d.len() as u64, last.size);
            }
        }
    }
    assert_eq!(
        g.referenced,
        chunk_files(dir.path()).len(),
        "only referenced chunks remain"
    );
}

#[tokio::test]
async fn ranges_read_only_the_chunks_they_touch_and_stay_in_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path(), MASTER, config(None)).unwrap();
    let data = random(5 << 20, 31);
    let r = store.put("t1", "ranges", &data).await.unwrap().blob;
    let m = store.manifest(&r).await.unwrap();
    assert!(m.chunks.len() > 4, "{} chunks", m.chunks.len());
    for (off, len) in [
        (0u64, 1usize),
        (4096, 1 << 20),
        (m.chunks[2].offset - 1, 2),
        (m.chunks[3].offset, m.chunks[3].len as usize),
        (data.len() as u64 - 4096, 4096),
        (0, data.len()),
        (77, 0),
    ] {
        let got = store.read_range(&m, off, len).await.unwrap();
        assert_eq!(got, &data[off as usize..off as usize + len], "{off}+{len}");
    }
    // One page in the middle of a chunk fetches that chunk only.
    let before = store.stats()[2].hits;
    store
        .read_range(&m, m.chunks[1].offset + 4096, 4096)
        .await
        .unwrap();
    assert_eq!(store.stats()[2].hits - before, 1);
    for (off, len) in [(data.len() as u64, 1usize), (u64::MAX, 2), (1, data.len())] {
        let e = store.read_range(&m, off, len).await.unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
    }
    // A damaged chunk under a range fails it.
    let victim = dir
        .path()
        .join("chunks")
        .join(&m.chunks[1].id[..2])
        .join(&m.chunks[1].id);
    let mut b = std::fs::read(&victim).unwrap();
    b[40] ^= 1;
    std::fs::write(&victim, b).unwrap();
    assert!(store.read_range(&m, m.chunks[1].offset, 10).await.is_err());
}

#[test]
fn a_tier_that_hangs_is_passed_over_or_fails_in_bounded_time() {
    // The reads of a hung tier stay blocked (on blocking threads) after the
    // store moved on; a runtime waits for those at shutdown unless told not to.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(hung_tiers());
    rt.shutdown_timeout(Duration::from_millis(100));
}

async fn hung_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        disk_timeout: Duration::from_millis(200),
        object_timeout: Duration::from_millis(500),
        ..config(Some(cache.path().to_path_buf()))
    };
    let store = Store::local(dir.path(), MASTER, cfg).unwrap();
    let data = random(2 << 20, 41);
    let r = store.put("t1", "hang", &data).await.unwrap().blob;
    assert_eq!(store.get(&r).await.unwrap(), data);
    // Every disk-cache entry replaced by a FIFO nobody writes: opening it
    // blocks forever, like a hung disk.
    let cached = files_under(cache.path());
    assert!(!cached.is_empty());
    for f in &cached {
        std::fs::remove_file(f).unwrap();
        nix::unistd::mkfifo(f, nix::sys::stat::Mode::S_IRWXU).unwrap();
    }
    let t = std::time::Instant::now();
    assert_eq!(
        store.get(&r).await.unwrap(),
        data,
        "served by the object tier"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the hung disk tier held the read for {:?}",
        t.elapsed()
    );
    assert!(store.stats()[1].errors >= cached.len() as u64);
    // The object tier hanging too: the read fails cleanly with a timeout.
    let m = store.manifest(&r).await.unwrap();
    let obj = dir
        .path()
        .join("chunks")
        .join(&m.chunks[0].id[..2])
        .join(&m.chunks[0].id);
    std::fs::remove_file(&obj).unwrap();
    nix::unistd::mkfifo(&obj, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let fresh = Store::local(
        dir.path(),
        MASTER,
        StoreConfig {
            object_timeout: Duration::from_millis(500),
            ..config(None)
        },
    )
    .unwrap();
    let e = fresh.get(&r).await.unwrap_err();
    assert!(matches!(e, StoreError::Timeout { .. }), "{e}");
}
