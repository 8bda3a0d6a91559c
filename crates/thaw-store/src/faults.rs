//! A fault-injecting object store, for tests: [`FaultyStore`] wraps any
//! [`ObjectStore`] and, following a seeded [`FaultPlan`], fails requests,
//! delays them, and truncates or corrupts the bytes a read returns.
//!
//! Owns: deciding which request gets which fault, deterministically. A
//! decision depends only on the plan's seed, the operation, the object's
//! path and how many times that operation was asked for that path before,
//! so the same requests get the same faults however concurrent readers
//! interleave.
//!
//! Must not: be used outside tests and fault campaigns. The daemon turns it
//! on only when `THAW_TEST_STORE_FAULTS` holds a plan (see
//! [`FaultPlan::from_env`]), and says so loudly in its log.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// The environment variable whose value, when set, is the plan of faults
/// the daemon's store injects (tests only).
pub const FAULTS_ENV: &str = "THAW_TEST_STORE_FAULTS";

/// Which faults to inject and how often. Rates are probabilities in
/// `0.0..=1.0`, drawn independently per request.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// Seeds every decision.
    pub seed: u64,
    /// Requests (of any kind) that fail with an error.
    pub error_rate: f64,
    /// Every request waits up to this long first (a seeded fraction of it).
    pub max_latency: Duration,
    /// Successful reads whose bytes are cut short.
    pub truncate_rate: f64,
    /// Successful reads with one byte flipped.
    pub corrupt_rate: f64,
    /// Only paths starting with this prefix get faults (`""`: all).
    pub prefix: String,
}

impl Default for FaultPlan {
    /// No faults at all.
    fn default() -> Self {
        FaultPlan {
            seed: 0,
            error_rate: 0.0,
            max_latency: Duration::ZERO,
            truncate_rate: 0.0,
            corrupt_rate: 0.0,
            prefix: String::new(),
        }
    }
}

/// A plan that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("Invalid fault plan {plan:?}: {why}")]
pub struct FaultPlanError {
    plan: String,
    why: String,
}

impl std::str::FromStr for FaultPlan {
    type Err = FaultPlanError;

    /// Parses `key=value` pairs separated by commas: `seed` (integer),
    /// `error`, `truncate`, `corrupt` (rates), `latency-ms` (integer),
    /// `prefix` (a path prefix such as `chunks/`). Missing keys keep the
    /// no-fault defaults. Example: `seed=7,error=0.05,corrupt=0.1,latency-ms=3`.
    fn from_str(s: &str) -> Result<FaultPlan, FaultPlanError> {
        let bad = |why: String| FaultPlanError {
            plan: s.to_string(),
            why,
        };
        let mut plan = FaultPlan::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not key=value")))?;
            let rate = |v: &str| -> Result<f64, FaultPlanError> {
                v.parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| bad(format!("{k} must be a rate between 0 and 1")))
            };
            match k {
                "seed" => {
                    plan.seed = v
                        .parse()
                        .map_err(|_| bad("seed must be an integer".into()))?
                }
                "error" => plan.error_rate = rate(v)?,
                "truncate" => plan.truncate_rate = rate(v)?,
                "corrupt" => plan.corrupt_rate = rate(v)?,
                "latency-ms" => {
                    plan.max_latency = Duration::from_millis(
                        v.parse()
                            .map_err(|_| bad("latency-ms must be an integer".into()))?,
                    )
                }
                "prefix" => plan.prefix = v.to_string(),
                other => return Err(bad(format!("unknown key {other:?}"))),
            }
        }
        Ok(plan)
    }
}

impl FaultPlan {
    /// The plan in [`FAULTS_ENV`], if it is set (and not empty).
    pub fn from_env() -> Result<Option<FaultPlan>, FaultPlanError> {
        match std::env::var(FAULTS_ENV) {
            Ok(v) if !v.trim().is_empty() => v.parse().map(Some),
            _ => Ok(None),
        }
    }
}

/// How many faults a [`FaultyStore`] injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests answered by the wrapped store.
    pub requests: u64,
    /// Requests failed with an error.
    pub errors: u64,
    /// Reads cut short.
    pub truncated: u64,
    /// Reads with a flipped byte.
    pub corrupted: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    truncated: AtomicU64,
    corrupted: AtomicU64,
}

/// An [`ObjectStore`] that injects the faults of a [`FaultPlan`] into the
/// requests it passes to the store it wraps.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    plan: FaultPlan,
    /// Requests seen so far, by (operation, path).
    seen: Mutex<HashMap<(&'static str, String), u64>>,
    counters: Counters,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore")
            .field("inner", &self.inner.to_string())
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

/// The decisions for one request: uniform draws in `0.0..1.0`.
struct Draws {
    error: f64,
    latency: f64,
    truncate: f64,
    corrupt: f64,
    /// Where to cut or which byte to flip.
    position: u64,
}

impl FaultyStore {
    /// Wraps `inner`, injecting `plan`'s faults.
    pub fn new(inner: Arc<dyn ObjectStore>, plan: FaultPlan) -> FaultyStore {
        FaultyStore {
            inner,
            plan,
            seen: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }
    }

    /// The plan.
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// The faults injected so far.
    pub fn counts(&self) -> FaultCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FaultCounts {
            requests: g(&self.counters.requests),
            errors: g(&self.counters.errors),
            truncated: g(&self.counters.truncated),
            corrupted: g(&self.counters.corrupted),
        }
    }

    /// The draws of the next `op` on `path` (none outside the plan's prefix).
    fn draws(&self, op: &'static str, path: &Path) -> Option<Draws> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let path = path.as_ref();
        if !path.starts_with(&self.plan.prefix) {
            return None;
        }
        let n = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let n = seen.entry((op, path.to_string())).or_insert(0);
            *n += 1;
            *n
        };
        let mut h = blake3::Hasher::new();
        h.update(&self.plan.seed.to_le_bytes());
        h.update(op.as_bytes());
        h.update(&[0]);
        h.update(path.as_bytes());
        h.update(&[0]);
        h.update(&n.to_le_bytes());
        let out = h.finalize();
        let word = |i: usize| {
            let b: [u8; 8] = out.as_bytes()[i * 8..i * 8 + 8]
                .try_into()
                .unwrap_or([0; 8]);
            u64::from_le_bytes(b)
        };
        // 53 random bits make a uniform f64 in 0..1.
        let unit = |i: usize| (word(i) >> 11) as f64 / (1u64 << 53) as f64;
        let position = word(0) ^ word(3);
        Some(Draws {
            error: unit(0),
            latency: unit(1),
            truncate: unit(2),
            corrupt: unit(3),
            position,
        })
    }

    /// Waits and maybe fails, as the draws say.
    async fn before(
        &self,
        d: &Option<Draws>,
        op: &'static str,
        path: &Path,
    ) -> object_store::Result<()> {
        let Some(d) = d else {
            return Ok(());
        };
        if !self.plan.max_latency.is_zero() {
            tokio::time::sleep(self.plan.max_latency.mul_f64(d.latency)).await;
        }
        if d.error < self.plan.error_rate {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            return Err(object_store::Error::Generic {
                store: "FaultyStore",
                source: format!("injected {op} failure for {path}").into(),
            });
        }
        Ok(())
    }

    /// The bytes of a read, truncated or corrupted as the draws say.
    fn damage(&self, d: &Draws, mut bytes: Vec<u8>) -> Vec<u8> {
        if bytes.is_empty() {
            return bytes;
        }
        if d.truncate < self.plan.truncate_rate {
            self.counters.truncated.fetch_add(1, Ordering::Relaxed);
            bytes.truncate((d.position % bytes.len() as u64) as usize);
        } else if d.corrupt < self.plan.corrupt_rate {
            self.counters.corrupted.fetch_add(1, Ordering::Relaxed);
            let at = (d.position % bytes.len() as u64) as usize;
            bytes[at] ^= 1 << (d.position >> 61);
        }
        bytes
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let d = self.draws("put", location);
        self.before(&d, "put", location).await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let d = self.draws("put", location);
        self.before(&d, "put", location).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let d = self.draws("get", location);
        self.before(&d, "get", location).await?;
        let r = self.inner.get_opts(location, options).await?;
        let Some(d) = d
            .filter(|d| d.truncate < self.plan.truncate_rate || d.corrupt < self.plan.corrupt_rate)
        else {
            return Ok(r);
        };
        let (meta, range, attributes) = (r.meta.clone(), r.range.clone(), r.attributes.clone());
        let bytes = self.damage(&d, r.bytes().await?.to_vec());
        let stream = futures::stream::once(async move { Ok(Bytes::from(bytes)) }).boxed();
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream),
            meta,
            range,
            attributes,
        })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        // Through `get_opts`, so ranged reads get the same faults.
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            out.push(self.get_range(location, r.clone()).await?);
        }
        Ok(out)
    }

    async fn head(&self, location: &Path) -> object_store::Result<ObjectMeta> {
        let d = self.draws("head", location);
        self.before(&d, "head", location).await?;
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        let d = self.draws("delete", location);
        self.before(&d, "delete", location).await?;
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        let d = self.draws("copy", to);
        self.before(&d, "copy", to).await?;
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        let d = self.draws("copy", to);
        self.before(&d, "copy", to).await?;
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_bad_ones_are_refused() {
        let p: FaultPlan =
            "seed=7, error=0.25,truncate=0.1,corrupt=0.5,latency-ms=3,prefix=chunks/"
                .parse()
                .expect("parses");
        assert_eq!(
            p,
            FaultPlan {
                seed: 7,
                error_rate: 0.25,
                max_latency: Duration::from_millis(3),
                truncate_rate: 0.1,
                corrupt_rate: 0.5,
                prefix: "chunks/".into(),
            }
        );
        assert_eq!(
            "".parse::<FaultPlan>().expect("empty"),
            FaultPlan::default()
        );
        for bad in ["error=2", "seed=x", "nonsense", "flip=0.1", "latency-ms=-1"] {
            assert!(bad.parse::<FaultPlan>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn decisions_depend_on_seed_operation_path_and_count_only() {
        let mem: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let plan = FaultPlan {
            seed: 3,
            ..FaultPlan::default()
        };
        let a = FaultyStore::new(mem.clone(), plan.clone());
        let b = FaultyStore::new(mem, plan);
        let p = Path::from("chunks/ab/abc");
        let q = Path::from("chunks/cd/cde");
        // Interleaved differently, the same (op, path, n) draws the same.
        let a1 = a.draws("get", &p).map(|d| d.error);
        let _ = a.draws("get", &q);
        let a2 = a.draws("get", &p).map(|d| d.error);
        let b1 = b.draws("get", &p).map(|d| d.error);
        let b2 = b.draws("get", &p).map(|d| d.error);
        assert_eq!((a1, a2), (b1, b2));
        assert_ne!(a1, a2, "the nth request draws anew");
    }
}
