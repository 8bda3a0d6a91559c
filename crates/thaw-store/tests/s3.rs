//! The store's S3 tier against a real S3-compatible server: Garage, started
//! by this test on loopback (single node, its own data directory). The
//! binary comes from `THAW_GARAGE`, `target/tools/bin/garage` (what
//! `scripts/install-test-tools.sh` builds) or `PATH`; without it the test
//! says so loudly and skips (and fails where `THAW_REQUIRE_ALL=1`, as in CI).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::ObjectStore;
use thaw_store::{S3Config, Store, StoreConfig, StoreError};

const MASTER: [u8; 32] = [5; 32];

fn garage_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("THAW_GARAGE") {
        return Some(PathBuf::from(p));
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/bin/garage");
    if local.exists() {
        return Some(local);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("garage"))
        .find(|p| p.exists())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A single-node Garage on loopback, killed on drop.
struct Garage {
    child: Child,
    bin: PathBuf,
    config: PathBuf,
    s3: S3Config,
    _dir: tempfile::TempDir,
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Garage {
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run garage");
        assert!(
            out.status.success(),
            "garage {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start(bin: PathBuf) -> Garage {
        let dir = tempfile::tempdir().unwrap();
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) % 256))
            .collect();
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                d = dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start garage");
        let mut g = Garage {
            child,
            bin,
            config,
            s3: S3Config {
                endpoint: format!("http://127.0.0.1:{s3}"),
                bucket: "thaw".into(),
                region: "garage".into(),
                access_key_id: String::new(),
                secret_access_key: String::new(),
            },
            _dir: dir,
        };
        // Wait for the node, then give it a role, a bucket and a key.
        let t0 = Instant::now();
        let node = loop {
            let out = Command::new(&g.bin)
                .arg("-c")
                .arg(&g.config)
                .args(["node", "id", "-q"])
                .output()
                .unwrap();
            if out.status.success() {
                break String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "garage did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let id = node.split('@').next().unwrap().to_string();
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &id]);
        g.cli(&["layout", "apply", "--version", "1"]);
        g.cli(&["bucket", "create", "thaw"]);
        let key = g.cli(&["key", "create", "thaw-test"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {name} in {key}"))
        };
        g.s3.access_key_id = field("Key ID:");
        g.s3.secret_access_key = field("Secret key:");
        g.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            "thaw",
            "--key",
            "thaw-test",
        ]);
        g
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

#[tokio::test]
async fn the_s3_tier_against_a_real_garage_server() {
    let Some(bin) = garage_binary() else {
        assert!(
            std::env::var("THAW_REQUIRE_ALL").as_deref() != Ok("1"),
            "no garage binary (scripts/install-test-tools.sh builds it) and THAW_REQUIRE_ALL=1"
        );
        eprintln!("SKIP: no garage binary: run scripts/install-test-tools.sh or set THAW_GARAGE");
        return;
    };
    let garage = Garage::start(bin);
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
