//! The store's S3 tier against a real S3-compatible server: Garage, started
//! by this test on loopback (single node, its own data directory). The
//! binary comes from `THAW_GARAGE`, `target/tools/bin/garage` (what
//! `scripts/install-test-tools.sh` builds) or `PATH`; without it the test
//! says so loudly and skips (and fails where `THAW_REQUIRE_ALL=1`, as in CI).

use std::path::Path;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStore;
use thaw_store::{Store, StoreConfig, StoreError};

const MASTER: [u8; 32] = [5; 32];

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

#[tokio::test]
async fn the_s3_tier_against_a_real_garage_server() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Some(bin) = thaw_store::garage::find_binary(Some(&workspace)) else {
        assert!(
            std::env::var("THAW_REQUIRE_ALL").as_deref() != Ok("1"),
            "no garage binary (scripts/install-test-tools.sh builds it) and THAW_REQUIRE_ALL=1"
        );
        eprintln!("SKIP: no garage binary: run scripts/install-test-tools.sh or set THAW_GARAGE");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let garage = thaw_store::garage::Garage::start(&bin, dir.path()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        memory_budget: 0,
        disk_cache: Some((cache.path().to_path_buf(), 64 << 20)),
        gc_grace: Duration::ZERO,
        ..StoreConfig::default()
    };
    let store = Store::s3(&garage.s3, MASTER, config.clone()).unwrap();

    // Round trip, dedup within a tenant, none across tenants.
    let shared = random(3 << 20, 1);
    let a = store
        .put(
            "t1",
            "fn1/memory",
            &[shared.clone(), random(1 << 20, 2)].concat(),
        )
        .await
        .unwrap();
    let b = store
        .put(
            "t1",
            "fn2/memory",
            &[random(100_000, 3), shared.clone()].concat(),
        )
        .await
        .unwrap();
    assert!(b.new_chunks * 2 < b.chunks, "{b:?}");
    let c = store
        .put(
            "t2",
            "fn1/memory",
            &[shared.clone(), random(1 << 20, 2)].concat(),
        )
        .await
        .unwrap();
    assert_eq!(c.new_chunks, c.chunks, "{c:?}");
    for r in [&a.blob, &b.blob, &c.blob] {
        assert_eq!(store.get(r).await.unwrap().len() as u64, r.size);
    }

    // Through a raw S3 client: nothing stored is plaintext; a chunk
    // replaced by other bytes, or removed, is refused.
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&garage.s3.endpoint)
        .with_bucket_name("thaw")
        .with_region("garage")
        .with_access_key_id(&garage.s3.access_key_id)
        .with_secret_access_key(&garage.s3.secret_access_key)
        .with_allow_http(true)
        .build()
        .unwrap();
    let chunks: Vec<_> = raw
        .list(Some(&"chunks".into()))
        .try_collect()
        .await
        .unwrap();
    assert!(!chunks.is_empty());
    let needle = &shared[1000..1064];
    for m in &chunks {
        let bytes = raw.get(&m.location).await.unwrap().bytes().await.unwrap();
        assert!(
            !bytes.windows(64).any(|w| w == needle),
            "plaintext in {}",
            m.location
        );
    }
    let fresh = Store::s3(
        &garage.s3,
        MASTER,
        StoreConfig {
            disk_cache: None,
            ..config.clone()
        },
    )
    .unwrap();
    let victim = &chunks[0].location;
    let good = raw.get(victim).await.unwrap().bytes().await.unwrap();
    let mut bad = good.to_vec();
    let n = bad.len() / 2;
    bad[n] ^= 1;
    raw.put(victim, bad.into()).await.unwrap();
    let results = [
        fresh.get(&a.blob).await,
        fresh.get(&b.blob).await,
        fresh.get(&c.blob).await,
    ];
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(StoreError::Corrupt { .. }))),
        "a tampered chunk is refused"
    );
    // The first store still has every chunk in its disk cache: the damaged
    // object tier is never asked.
    for r in [&a.blob, &b.blob, &c.blob] {
        store.get(r).await.unwrap();
    }
    raw.delete(victim).await.unwrap();
    let results = [
        fresh.get(&a.blob).await,
        fresh.get(&b.blob).await,
        fresh.get(&c.blob).await,
    ];
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(StoreError::Missing(_)))));
    raw.put(victim, good.into()).await.unwrap();

    // Garbage collection over S3.
    store.delete("t1", "fn1/memory").await.unwrap();
    let g = store.gc().await.unwrap();
    eprintln!("{g:?}; tiers {:?}", store.stats());
    assert!(g.removed > 0, "{g:?}");
    fresh.get(&b.blob).await.unwrap();
    fresh.get(&c.blob).await.unwrap();
    assert!(fresh.get(&a.blob).await.is_err());
}
