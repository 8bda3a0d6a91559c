//! The store: publishing, reading through the tiers, garbage collection.
//!
//! Layout in the object store:
//!
//! ```text
//! chunks/<id[0..2]>/<id>        sealed chunks (id = BLAKE3 of the sealed bytes)
//! manifests/<tenant>/<name>     sealed manifests
//! ```
//!
//! Publishing writes every chunk first and the manifest last, so a reader
//! (or a crash) never sees a manifest whose chunks are not all there; a
//! crash leaves at most unreferenced chunks, which garbage collection
//! removes once they are older than the grace period. A chunk that already
//! exists (deduplicated) but is older than half the grace period is written
//! again, which refreshes its age, so a collection running beside a publish
//! never removes a chunk the new manifest is about to reference.

use std::path::Path as FsPath;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStore;
use tracing::{debug, warn};

use crate::cache::{DiskCache, MemoryCache};
use crate::chunk;
use crate::manifest::{hex, ChunkRef, Manifest, TenantKeys, MANIFEST_VERSION};
use crate::{Chunking, StoreError};

/// How a store is set up.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Bytes of verified chunk plaintext kept in memory.
    pub memory_budget: u64,
    /// A local-disk cache of sealed chunks (directory, byte budget).
    pub disk_cache: Option<(std::path::PathBuf, u64)>,
    /// How blobs are cut.
    pub chunking: Chunking,
    /// Chunks sealed, fetched or opened at once.
    pub parallelism: usize,
    /// Unreferenced chunks younger than this survive a collection.
    pub gc_grace: Duration,
    /// A disk-cache read that takes longer is abandoned (counted as an
    /// error) and the chunk is read from the object store instead.
    pub disk_timeout: Duration,
    /// An object-store request that takes longer fails (the object store
    /// is the last tier: the read fails cleanly instead of hanging).
    pub object_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            memory_budget: 256 << 20,
            disk_cache: None,
            chunking: Chunking::default(),
            parallelism: 8,
            gc_grace: Duration::from_secs(3600),
            disk_timeout: Duration::from_millis(500),
            object_timeout: Duration::from_secs(10),
        }
    }
}

/// Where an S3-compatible object tier is.
#[derive(Clone)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:3900` (plain HTTP only for
    /// `http://` endpoints).
    pub endpoint: String,
    /// Bucket.
    pub bucket: String,
    /// Region name the service expects.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (never printed).
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// A published blob, as its publisher records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlobRef {
    /// The tenant.
    pub tenant: String,
    /// The blob's name.
    pub name: String,
    /// BLAKE3 of its content, hex.
    pub digest: String,
    /// Its size.
    pub size: u64,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReport {
    /// The blob.
    pub blob: BlobRef,
    /// Chunks in the blob.
    pub chunks: usize,
    /// Chunks that were not stored yet.
    pub new_chunks: usize,
    /// Sealed bytes uploaded (new chunks, and stored ones written again to
    /// refresh their age).
    pub uploaded_bytes: u64,
}

/// What a garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Manifests read.
    pub manifests: usize,
    /// Chunks referenced by them.
    pub referenced: usize,
    /// Chunks removed.
    pub removed: usize,
    /// Unreferenced chunks kept because they are younger than the grace.
    pub kept_young: usize,
}

/// One tier's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierStats {
    /// `memory`, `disk` or `object`.
    pub tier: &'static str,
    /// Chunks found (and, for disk and object, authenticated).
    pub hits: u64,
    /// Chunks not there.
    pub misses: u64,
    /// Failed requests and chunks that failed authentication.
    pub errors: u64,
    /// Bytes returned (sealed bytes for disk and object).
    pub bytes: u64,
    /// Time spent in the tier, microseconds.
    pub micros: u64,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    micros: AtomicU64,
}

impl Counters {
    fn stats(&self, tier: &'static str) -> TierStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TierStats {
            tier,
            hits: g(&self.hits),
            misses: g(&self.misses),
            errors: g(&self.errors),
            bytes: g(&self.bytes),
            micros: g(&self.micros),
        }
    }

    fn add(&self, counter: &AtomicU64, n: u64, since: Instant) {
        counter.fetch_add(n, Ordering::Relaxed);
        self.micros
            .fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

/// The snapshot store.
pub struct Store {
    remote: Arc<dyn ObjectStore>,
    master: [u8; 32],
    config: StoreConfig,
    memory: MemoryCache,
    disk: Option<Arc<DiskCache>>,
    counters: [Counters; 3],
    /// Chunks whose stored copy failed authentication: a publish writes
    /// them again even when the object store says it has them.
    suspect: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("remote", &self.remote.to_string())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

const MEMORY: usize = 0;
const DISK: usize = 1;
const OBJECT: usize = 2;

/// Reads of one chunk from the object store before it is given up.
const OBJECT_ATTEMPTS: u32 = 2;

/// Whether asking the object store again may help: a failed request or
/// bytes that did not authenticate (not a missing object, nor a tier that
/// did not answer within its time limit: that limit bounds the read).
fn retryable(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::ObjectStore { .. } | StoreError::Corrupt { .. }
    )
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn chunk_path(id: &str) -> Path {
    Path::from(format!("chunks/{}/{id}", &id[..2.min(id.len())]))
}

/// Names and tenants are path segments: letters, digits, `.`, `-`, `_`,
/// and `/` between non-empty segments (not `.` or `..`).
fn check_name(what: &str, s: &str, slashes: bool) -> Result<(), StoreError> {
    let ok = !s.is_empty()
        && s.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
        && (slashes || !s.contains('/'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Codec(format!("invalid {what} {s:?}")))
    }
}

impl Store {
    /// A store over `remote` with the master key `master` (from the
    /// caller's key source).
    pub fn new(
        remote: Arc<dyn ObjectStore>,
        master: [u8; 32],
        config: StoreConfig,
    ) -> Result<Store, StoreError> {
        let disk = match &config.disk_cache {
            Some((dir, budget)) => Some(Arc::new(DiskCache::open(dir, *budget).map_err(
                |source| StoreError::Io {
                    what: format!("Cannot open the disk cache {}", dir.display()),
                    source,
                },
            )?)),
            None => None,
        };
        Ok(Store {
            remote,
            master,
            memory: MemoryCache::new(config.memory_budget),
            disk,
            config,
            counters: Default::default(),
            suspect: Default::default(),
        })
    }

    /// A store whose object tier is the local directory `dir` (the embedded
    /// default).
    pub fn local(dir: &FsPath, master: [u8; 32], config: StoreConfig) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            what: format!("Cannot create {}", dir.display()),
            source,
        })?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|source| {
            StoreError::ObjectStore {
                what: dir.display().to_string(),
                source,
            }
        })?;
        Store::new(Arc::new(fs), master, config)
    }

    /// A store whose object tier is the S3-compatible service `s3`.
    pub fn s3(s3: &S3Config, master: [u8; 32], config: StoreConfig) -> Result<Store, StoreError> {
        let remote = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&s3.endpoint)
            .with_bucket_name(&s3.bucket)
            .with_region(&s3.region)
            .with_access_key_id(&s3.access_key_id)
            .with_secret_access_key(&s3.secret_access_key)
            .with_allow_http(s3.endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false)
            .build()
            .map_err(|source| StoreError::ObjectStore {
                what: format!("S3 bucket {} at {}", s3.bucket, s3.endpoint),
                source,
            })?;
        Store::new(Arc::new(remote), master, config)
    }

    /// This store with its object tier wrapped in a [`FaultyStore`] that
    /// injects `plan`'s faults (tests and fault campaigns only).
    ///
    /// [`FaultyStore`]: crate::faults::FaultyStore
    pub fn with_faults(self, plan: crate::faults::FaultPlan) -> Store {
        Store {
            remote: Arc::new(crate::faults::FaultyStore::new(self.remote.clone(), plan)),
            ..self
        }
    }

    /// The keys of `tenant`.
    pub fn keys(&self, tenant: &str) -> TenantKeys {
        TenantKeys::derive(&self.master, tenant)
    }

    /// Drops the memory tier (benchmarks of cold reads; nothing is lost,
    /// the other tiers still hold every chunk).
    pub fn clear_memory(&self) {
        self.memory.clear();
    }

    /// Per-tier numbers: memory, disk, object.
    pub fn stats(&self) -> Vec<TierStats> {
        vec![
            self.counters[MEMORY].stats("memory"),
            self.counters[DISK].stats("disk"),
            self.counters[OBJECT].stats("object"),
        ]
    }

    fn remote_err(what: impl Into<String>) -> impl FnOnce(object_store::Error) -> StoreError {
        let what = what.into();
        move |source| StoreError::ObjectStore { what, source }
    }

    /// Publishes `data` as `tenant`'s blob `name` (replacing an older one):
    /// chunks first, the manifest last.
    pub async fn put(
        &self,
        tenant: &str,
        name: &str,
        data: &[u8],
    ) -> Result<PutReport, StoreError> {
        check_name("tenant", tenant, false)?;
        check_name("blob name", name, true)?;
        let keys = self.keys(tenant);
        let salt = *keys.salt();
        let ranges = self.config.chunking.split(data);
        let grace = self.config.gc_grace;
        let results: Vec<(ChunkRef, (bool, u64))> = futures::stream::iter(ranges)
            .map(|r| {
                let plain = data[r.clone()].to_vec();
                let remote = self.remote.clone();
                let suspect = &self.suspect;
                async move {
                    let (id, key, sealed) = tokio::task::spawn_blocking(move || {
                        let key = chunk::convergent_key(&salt, &plain);
                        chunk::seal(&key, &plain).map(|s| (chunk::chunk_id(&s), key, s))
                    })
                    .await
                    .map_err(|e| StoreError::Codec(e.to_string()))??;
                    let path = chunk_path(&id);
                    // (already stored, young enough to outlive a collection)
                    let (existed, fresh) = match remote.head(&path).await {
                        Ok(meta) => (true, chrono_age(meta.last_modified) < grace / 2),
                        Err(object_store::Error::NotFound { .. }) => (false, false),
                        Err(e) => return Err(Self::remote_err(path.to_string())(e)),
                    };
                    let rewrite = lock(suspect).contains(&id);
                    let uploaded = if fresh && !rewrite {
                        0
                    } else {
                        let n = sealed.len() as u64;
                        remote
                            .put(&path, sealed.into())
                            .await
                            .map_err(Self::remote_err(path.to_string()))?;
                        if rewrite {
                            lock(suspect).remove(&id);
                        }
                        n
                    };
                    Ok::<_, StoreError>((
                        ChunkRef {
                            id,
                            key: hex(&key),
                            offset: r.start as u64,
                            len: r.len() as u32,
                        },
                        (existed, uploaded),
                    ))
                }
            })
            .buffered(self.config.parallelism.max(1))
            .try_collect()
            .await?;
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            tenant: tenant.to_string(),
            name: name.to_string(),
            size: data.len() as u64,
            digest: blake3::hash(data).to_hex().to_string(),
            chunks: results.iter().map(|(c, _)| c.clone()).collect(),
        };
        let sealed = manifest.seal(&keys)?;
        let path = Path::from(format!("manifests/{tenant}/{name}"));
        self.remote
            .put(&path, sealed.into())
            .await
            .map_err(Self::remote_err(path.to_string()))?;
        let report = PutReport {
            blob: BlobRef {
                tenant: tenant.to_string(),
                name: name.to_string(),
                digest: manifest.digest.clone(),
                size: manifest.size,
            },
            chunks: results.len(),
            new_chunks: results.iter().filter(|(_, (existed, _))| !existed).count(),
            uploaded_bytes: results.iter().map(|(_, (_, n))| n).sum(),
        };
        debug!(
            tenant,
            name,
            chunks = report.chunks,
            new = report.new_chunks,
            "blob published"
        );
        Ok(report)
    }

    /// The manifest of `blob`, authenticated, and checked to describe
    /// exactly the content the caller recorded (a replayed older manifest
    /// fails here).
    pub async fn manifest(&self, blob: &BlobRef) -> Result<Manifest, StoreError> {
        check_name("tenant", &blob.tenant, false)?;
        check_name("blob name", &blob.name, true)?;
        let path = Path::from(format!("manifests/{}/{}", blob.tenant, blob.name));
        let sealed = match self.remote.get(&path).await {
            Ok(r) => r
                .bytes()
                .await
                .map_err(Self::remote_err(path.to_string()))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StoreError::Missing(format!("manifest {path}")))
            }
            Err(e) => return Err(Self::remote_err(path.to_string())(e)),
        };
        let m = Manifest::open(&self.keys(&blob.tenant), &blob.name, &sealed)?;
        if m.digest != blob.digest || m.size != blob.size {
            return Err(StoreError::Corrupt {
                what: format!("manifest {path}"),
                why: "describes other content than the one recorded (an older or swapped manifest)"
                    .into(),
            });
        }
        Ok(m)
    }

    /// Chunk `c`'s plaintext, authenticated: from memory, else the disk
    /// cache, else the object store. A tier that fails or returns bytes
    /// that do not authenticate is counted and passed over; the object
    /// store is the last word.
    pub async fn chunk(&self, c: &ChunkRef) -> Result<Arc<Vec<u8>>, StoreError> {
        let t = Instant::now();
        if let Some(p) = self.memory.get(&c.id) {
            let m = &self.counters[MEMORY];
            m.bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
            m.add(&m.hits, 1, t);
            return Ok(p);
        }
        self.counters[MEMORY].add(&self.counters[MEMORY].misses, 1, t);
        let key = c.key_bytes()?;
        if let Some(disk) = &self.disk {
            let t = Instant::now();
            let d = &self.counters[DISK];
            let read = {
                let (disk, id) = (disk.clone(), c.id.clone());
                tokio::time::timeout(
                    self.config.disk_timeout,
                    tokio::task::spawn_blocking(move || disk.get(&id)),
                )
                .await
            };
            let read = match read {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", self.config.disk_timeout),
                )),
            };
            match read {
                Ok(Some(sealed)) => match open_blocking(c.id.clone(), key, sealed).await {
                    Ok((plain, n)) => {
                        d.bytes.fetch_add(n, Ordering::Relaxed);
                        d.add(&d.hits, 1, t);
                        let plain = Arc::new(plain);
                        self.memory.put(&c.id, plain.clone());
                        return Ok(plain);
                    }
                    Err(e) => {
                        warn!(chunk = %c.id, error = %e, "disk cache returned a bad chunk; dropping it");
                        disk.remove(&c.id);
                        d.add(&d.errors, 1, t);
                    }
                },
                Ok(None) => d.add(&d.misses, 1, t),
                Err(e) => {
                    warn!(chunk = %c.id, error = %e, "disk cache failed; reading the object store");
                    d.add(&d.errors, 1, t);
                }
            }
        }
        // The object store is the last word, but one failed request or one
        // read that does not authenticate (a flipped bit on the way) is
        // asked once more before the chunk is given up.
        let mut attempt = 1;
        let (plain, sealed) = loop {
            match self.object_chunk(c, key).await {
                Ok(x) => break x,
                Err(e) if attempt < OBJECT_ATTEMPTS && retryable(&e) => {
                    debug!(chunk = %c.id, attempt, error = %e, "object store read failed; asking again");
                    attempt += 1;
                }
                Err(e) => {
                    if matches!(e, StoreError::Corrupt { .. }) {
                        // A later publish of this chunk writes it again
                        // instead of trusting the damaged copy.
                        lock(&self.suspect).insert(c.id.clone());
                    }
                    return Err(e);
                }
            }
        };
        if let Some(disk) = &self.disk {
            if let Err(e) = disk.put(&c.id, &sealed) {
                warn!(chunk = %c.id, error = %e, "cannot fill the disk cache");
            }
        }
        let plain = Arc::new(plain);
        self.memory.put(&c.id, plain.clone());
        Ok(plain)
    }

    /// One read of chunk `c` from the object store: its plaintext
    /// (authenticated, of the manifest's length) and sealed bytes.
    async fn object_chunk(
        &self,
        c: &ChunkRef,
        key: [u8; 32],
    ) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let t = Instant::now();
        let o = &self.counters[OBJECT];
        let path = chunk_path(&c.id);
        let fetch = async {
            match self.remote.get(&path).await {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            }
        };
        let sealed = match tokio::time::timeout(self.config.object_timeout, fetch).await {
            Ok(r) => r,
            Err(_) => {
                o.add(&o.errors, 1, t);
                return Err(StoreError::Timeout {
                    what: path.to_string(),
                    after: self.config.object_timeout,
                });
            }
        };
        let sealed = match sealed {
            Ok(b) => b.to_vec(),
            Err(object_store::Error::NotFound { .. }) => {
                o.add(&o.misses, 1, t);
                return Err(StoreError::Missing(format!("chunk {}", c.id)));
            }
            Err(e) => {
                o.add(&o.errors, 1, t);
                return Err(Self::remote_err(path.to_string())(e));
            }
        };
        let (plain, n) = match open_blocking(c.id.clone(), key, sealed.clone()).await {
            Ok(x) => x,
            Err(e) => {
                o.add(&o.errors, 1, t);
                return Err(e);
            }
        };
        if plain.len() != c.len as usize {
            o.add(&o.errors, 1, t);
            return Err(StoreError::Corrupt {
                what: format!("chunk {}", c.id),
                why: "length differs from the manifest".into(),
            });
        }
        o.bytes.fetch_add(n, Ordering::Relaxed);
        o.add(&o.hits, 1, t);
        Ok((plain, sealed))
    }

    /// Reads every chunk of `m` from the object store (not the caches,
    /// which may hold good copies of damaged objects) and marks each one
    /// that does not authenticate or is missing, so that the next publish
    /// of it writes it again. Returns how many were bad.
    pub async fn scrub(&self, m: &Manifest) -> usize {
        let bad: Vec<bool> = futures::stream::iter(m.chunks.iter().cloned())
            .map(|c| async move {
                let Ok(key) = c.key_bytes() else {
                    return true;
                };
                for _ in 0..OBJECT_ATTEMPTS {
                    match self.object_chunk(&c, key).await {
                        Ok(_) => return false,
                        Err(StoreError::Missing(_)) => return true,
                        Err(_) => {}
                    }
                }
                lock(&self.suspect).insert(c.id.clone());
                true
            })
            .buffered(self.config.parallelism.max(1))
            .collect()
            .await;
        bad.into_iter().filter(|b| *b).count()
    }

    /// The whole content of `blob`, its chunks fetched and opened in
    /// parallel, and checked against the recorded digest.
    pub async fn get(&self, blob: &BlobRef) -> Result<Vec<u8>, StoreError> {
        let m = self.manifest(blob).await?;
        // Owned chunk references: a future borrowing them would not be
        // `Send` for every lifetime, which spawned callers need.
        let parts: Vec<Arc<Vec<u8>>> = futures::stream::iter(m.chunks.iter().cloned())
            .map(|c| async move { self.chunk(&c).await })
            .buffered(self.config.parallelism.max(1))
            .try_collect()
            .await?;
        let mut out = Vec::with_capacity(m.size as usize);
        for p in parts {
            out.extend_from_slice(&p);
        }
        if blake3::hash(&out).to_hex().as_str() != blob.digest {
            return Err(StoreError::Corrupt {
                what: format!("blob {}/{}", blob.tenant, blob.name),
                why: "content does not match its digest".into(),
            });
        }
        Ok(out)
    }

    /// `len` bytes of `m`'s blob from `offset` (a manifest from
    /// [`Store::manifest`], so authenticated and checked against the
    /// caller's record): only the chunks the range touches are fetched,
    /// in parallel, each authenticated before any of its bytes is used.
    /// A reader that asks for a page gets its whole chunk cached, so the
    /// pages around it come from memory.
    pub async fn read_range(
        &self,
        m: &Manifest,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= m.size)
            .ok_or_else(|| {
                StoreError::Codec(format!(
                    "range {offset}+{len} is outside {}/{} ({} bytes)",
                    m.tenant, m.name, m.size
                ))
            })?;
        // First chunk that ends after `offset`.
        let first = m
            .chunks
            .partition_point(|c| c.offset + u64::from(c.len) <= offset);
        let wanted: Vec<ChunkRef> = m.chunks[first..]
            .iter()
            .take_while(|c| c.offset < end)
            .cloned()
            .collect();
        let parts: Vec<Arc<Vec<u8>>> = futures::stream::iter(wanted.clone())
            .map(|c| async move { self.chunk(&c).await })
            .buffered(self.config.parallelism.max(1))
            .try_collect()
            .await?;
        let mut out = Vec::with_capacity(len);
        for (c, p) in wanted.iter().zip(&parts) {
            if p.len() != c.len as usize {
                return Err(StoreError::Corrupt {
                    what: format!("chunk {}", c.id),
                    why: "length differs from the manifest".into(),
                });
            }
            let from = offset.saturating_sub(c.offset) as usize;
            let to = ((end - c.offset) as usize).min(p.len());
            if from > to {
                return Err(StoreError::Corrupt {
                    what: format!("blob {}/{}", m.tenant, m.name),
                    why: "its chunks are not contiguous".into(),
                });
            }
            out.extend_from_slice(&p[from..to]);
        }
        if out.len() != len {
            return Err(StoreError::Corrupt {
                what: format!("blob {}/{}", m.tenant, m.name),
                why: "its chunks do not cover the blob".into(),
            });
        }
        Ok(out)
    }

    /// Removes `tenant`'s blob `name` (its chunks go at the next
    /// collection unless other manifests use them).
    pub async fn delete(&self, tenant: &str, name: &str) -> Result<(), StoreError> {
        check_name("tenant", tenant, false)?;
        check_name("blob name", name, true)?;
        let path = Path::from(format!("manifests/{tenant}/{name}"));
        match self.remote.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::remote_err(path.to_string())(e)),
        }
    }

    /// Removes chunks no manifest references that are older than the
    /// grace period. A manifest that cannot be read or opened stops the
    /// collection before anything is removed (fail safe).
    pub async fn gc(&self) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let mut referenced = std::collections::HashSet::new();
        let manifests: Vec<_> = self
            .remote
            .list(Some(&Path::from("manifests")))
            .try_collect()
            .await
            .map_err(Self::remote_err("manifests/"))?;
        for meta in manifests {
            let parts: Vec<_> = meta.location.parts().collect();
            if parts.len() < 3 {
                continue;
            }
            let tenant = parts[1].as_ref().to_string();
            let name = parts[2..]
                .iter()
                .map(|p| p.as_ref())
                .collect::<Vec<_>>()
                .join("/");
            let sealed = self
                .remote
                .get(&meta.location)
                .await
                .map_err(Self::remote_err(meta.location.to_string()))?
                .bytes()
                .await
                .map_err(Self::remote_err(meta.location.to_string()))?;
            let m = Manifest::open(&self.keys(&tenant), &name, &sealed)?;
            report.manifests += 1;
            referenced.extend(m.chunks.into_iter().map(|c| c.id));
        }
        report.referenced = referenced.len();
        let chunks: Vec<_> = self
            .remote
            .list(Some(&Path::from("chunks")))
            .try_collect()
            .await
            .map_err(Self::remote_err("chunks/"))?;
        debug!(
            chunks = chunks.len(),
            referenced = referenced.len(),
            "collecting"
        );
        for meta in chunks {
            let Some(id) = meta.location.filename() else {
                continue;
            };
            if referenced.contains(id) {
                continue;
            }
            if chrono_age(meta.last_modified) < self.config.gc_grace {
                report.kept_young += 1;
                continue;
            }
            match self.remote.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => report.removed += 1,
                Err(e) => return Err(Self::remote_err(meta.location.to_string())(e)),
            }
        }
        Ok(report)
    }
}

/// How long ago `t` was (zero if in the future).
fn chrono_age(t: chrono::DateTime<chrono::Utc>) -> Duration {
    (chrono::Utc::now() - t).to_std().unwrap_or(Duration::ZERO)
}

/// Opens a sealed chunk on a blocking thread; returns the plaintext and the
/// sealed size.
async fn open_blocking(
    id: String,
    key: [u8; 32],
    sealed: Vec<u8>,
) -> Result<(Vec<u8>, u64), StoreError> {
    tokio::task::spawn_blocking(move || {
        let n = sealed.len() as u64;
        chunk::open(&id, &key, &sealed).map(|p| (p, n))
    })
    .await
    .map_err(|e| StoreError::Codec(e.to_string()))?
}
