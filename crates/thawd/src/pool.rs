//! Instance pools: per function, idle warm instances and the logic that starts,
//! reuses, times out and reaps instances.
//!
//! An instance serves one invocation at a time. After a successful invocation
//! (or a handled function error) it goes back to its function's idle list and
//! the next invocation reuses it (a warm start); idle instances are reaped after
//! the keep-alive. A timeout, a crash or a broken supervisor destroys the
//! instance, so the next invocation gets a fresh one. Updating or deleting a
//! function retires all of its instances.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thaw_runtime::control::{Invocation, ResumePoint};
use tracing::Instrument;

use crate::capacity::{reserve_bytes, HostMemory};
use crate::config::{MemoryMode, Scaling};
use crate::instance::{
    error_chain, error_doc, CheckpointFailure, Instance, InstanceContext, LogTail, RunResult,
    SnapshotRunState, StartError,
};
use crate::invoke::{InvokeError, InvokeInput, InvokeOutcome, PhaseTimings, StartKind};
use crate::logs::{now_ms, LogRecord, LogStore};
use crate::metrics::Metrics;
use crate::placement::{Measured, Placement, Queue};
use crate::registry::FunctionRecord;
use crate::scheduler::{self, Decision, HostLoad, Limits, MemoryRoom, StartChoice};
use bytes::Bytes;
use std::path::PathBuf;
use thaw_api::SnapshotReport;
use thaw_snapshot::checkpoint::CheckpointStats;
use thaw_snapshot::workingset::{WorkingSet, WORKING_SET_FILE};

/// A working set has drifted when the first invocation of an instance
/// that prefetched it faulted more than this share of its pages...
const DRIFT_SHARE: f64 = 0.1;
/// ...and at least this many times.
const DRIFT_MIN_FAULTS: u64 = 16;

/// What becomes of a working set after a restore's first invocation.
#[derive(Debug, Clone, Copy)]
enum WsJob {
    /// The restore recorded it: write it.
    Record,
    /// It drifted: append the misses.
    Extend,
}

use crate::pipeline::{phase, BuildLease, BuildOutcome, SnapshotBuilds, Turn};
use crate::snapshots::SnapshotMeta;

/// How long an invocation waits for an instance before it is throttled.
const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// `LogType: Tail` returns at most this many bytes of log.
const TAIL_BYTES: usize = 4096;

struct FunctionPool {
    /// The function as this pool's instances run it (the newest seen).
    record: FunctionRecord,
    /// Where its requests stand and the ones waiting for an instance (the
    /// scheduler's input). Lock order: `queue`, then `idle`.
    queue: Mutex<Queue<Instance>>,
    idle: Mutex<Vec<Instance>>,
    /// Standby instances: sandbox built, restore prepared, runtime not yet
    /// restored ([`Instance::standby`]).
    standby: Mutex<Vec<Instance>>,
    /// A task is building a standby instance.
    filling: AtomicBool,
    retired: AtomicBool,
}

/// All instance pools of the daemon.
pub struct Pools {
    ctx: Arc<InstanceContext>,
    metrics: Arc<Metrics>,
    logs: Arc<LogStore>,
    max_instances: usize,
    keep_alive: Duration,
    functions: Mutex<HashMap<String, Arc<FunctionPool>>>,
    /// Snapshot directories verified whole, with the file versions
    /// (inode, size, mtime) that were verified.
    verified: Mutex<HashMap<PathBuf, SnapshotVersion>>,
    /// Standby instances kept per function with a snapshot.
    standby_per_function: usize,
    shutting_down: AtomicBool,
    /// Where each function's snapshot stands; one build at a time.
    pub builds: SnapshotBuilds,
    /// Reserved and account concurrency, checked at the top of every
    /// invocation ([`crate::admission`]).
    admission: crate::admission::Admission,
    /// Idle instances kept per function however long they idle: its
    /// provisioned concurrency ([`crate::provisioned`]).
    provisioned_floor: Mutex<HashMap<String, usize>>,
    /// When a request with no idle instance starts one.
    scaling: Scaling,
    /// The clock the scheduler's load trackers count from.
    epoch: Instant,
    /// Instance starts in progress, every function's.
    starting: AtomicUsize,
    /// Starts the host runs at once without slowing each other.
    parallelism: usize,
    /// What the retired pools of each function measured (start costs,
    /// durations, instance memory): its next pool starts from them.
    measured: Mutex<HashMap<String, Measured>>,
    /// Disk and memory thresholds of background work and of snapshot
    /// requests (none: never short of room).
    pressure: Option<crate::pressure::Pressure>,
    /// Where functions whose snapshot was found damaged are sent to have
    /// it built again (see [`Pools::damaged_snapshots`]).
    rebuilds: Mutex<Option<tokio::sync::mpsc::UnboundedSender<FunctionRecord>>>,
}

/// What placing one request found for it.
enum Placed {
    /// An instance to run it on, and how it was obtained.
    Ready(Box<Instance>, StartKind, PhaseTimings),
    /// A cold start whose init failed: this is the invocation's answer.
    InitFailed(InvokeOutcome),
}

/// One request in its function's queue; forgotten there when dropped,
/// however the invocation ends (a cancelled call included).
struct Ticket {
    pool: Arc<FunctionPool>,
    id: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        lock(&self.pool.queue).forget(self.id);
    }
}

/// One instance start in progress (counted host-wide and in the
/// `starting` gauge) until dropped.
struct Starting<'a> {
    pools: &'a Pools,
    function: String,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.pools.starting.fetch_sub(1, Ordering::SeqCst);
        self.pools
            .metrics
            .add_instances(&self.function, "starting", -1);
    }
}

impl Pools {
    /// Create the pools. `ctx.cgroups` should have been cleaned of stale instances.
    pub fn new(
        ctx: InstanceContext,
        metrics: Arc<Metrics>,
        max_instances: usize,
        keep_alive: Duration,
        standby_per_function: usize,
    ) -> Self {
        let logs = ctx.logs.clone();
        Pools {
            ctx: Arc::new(ctx),
            metrics,
            logs,
            max_instances: max_instances.max(1),
            keep_alive,
            functions: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
            standby_per_function,
            shutting_down: AtomicBool::new(false),
            builds: SnapshotBuilds::default(),
            admission: crate::admission::Admission::new(
                thaw_api::concurrency::DEFAULT_ACCOUNT_CONCURRENCY,
            ),
            provisioned_floor: Mutex::new(HashMap::new()),
            scaling: Scaling::default(),
            epoch: Instant::now(),
            starting: AtomicUsize::new(0),
            parallelism: std::thread::available_parallelism().map_or(1, |n| n.get()),
            measured: Mutex::new(HashMap::new()),
            rebuilds: Mutex::new(None),
            pressure: None,
        }
    }

    /// The same pools holding background work back below these disk and
    /// memory thresholds ([`crate::pressure`]).
    pub fn with_pressure(mut self, pressure: crate::pressure::Pressure) -> Self {
        self.pressure = Some(pressure);
        self
    }

    /// Whether background work may start now.
    pub fn room_for_background(&self) -> Result<(), crate::pressure::Low> {
        self.pressure.as_ref().map_or(Ok(()), |p| p.check())
    }

    /// Whether work a caller asked for may write to the disk now.
    pub fn room_on_disk(&self) -> Result<(), crate::pressure::Low> {
        self.pressure.as_ref().map_or(Ok(()), |p| p.check_disk())
    }

    /// Waits (backing off) until background work on `f` may start; false
    /// if it should not start at all any more (shutting down, or `wanted`
    /// says its revision was replaced).
    async fn wait_for_room(
        &self,
        f: &FunctionRecord,
        wanted: &(dyn Fn() -> bool + Send + Sync),
    ) -> bool {
        let mut attempt = 0;
        loop {
            if self.is_shutting_down() || !wanted() {
                return false;
            }
            match self.room_for_background() {
                Ok(()) => return true,
                Err(low) => {
                    if attempt == 0 {
                        tracing::warn!(function = %f.name, "snapshot build waits: {low}");
                    }
                    self.builds.waiting(f, &low.to_string());
                    tokio::time::sleep(crate::pressure::backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    /// The same pools with another scaling policy (`thaw serve --scaling`).
    pub fn with_scaling(mut self, scaling: Scaling) -> Self {
        self.scaling = scaling;
        self
    }

    /// The same pools for an account of `limit` concurrent executions
    /// (`thaw serve --account-concurrency`).
    pub fn with_account_concurrency(mut self, limit: u32) -> Self {
        self.admission = crate::admission::Admission::new(limit);
        self
    }

    /// Admission control: reserved and account concurrency.
    pub fn admission(&self) -> &crate::admission::Admission {
        &self.admission
    }

    /// The per-function instance limit (`--max-instances`).
    pub fn max_instances(&self) -> usize {
        self.max_instances
    }

    // --- Provisioned concurrency (used by `crate::provisioned`) -----------

    /// Keeps at least `n` of `name`'s idle instances through idle reaping
    /// (its provisioned concurrency; 0: none).
    pub fn set_provisioned_floor(&self, name: &str, n: usize) {
        let mut floors = lock(&self.provisioned_floor);
        if n == 0 {
            floors.remove(name);
        } else {
            floors.insert(name.to_string(), n);
        }
    }

    /// Instances of `name` that exist and are ready or running an
    /// invocation: its idle instances plus the busy ones (instances that
    /// are still starting are not counted).
    pub fn live_instances(&self, name: &str) -> usize {
        let idle = self.idle_count(name);
        let busy = self.metrics.instances_in_state(name, "busy").max(0);
        idle + usize::try_from(busy).unwrap_or(0)
    }

    /// Starts one instance of `f` for its provisioned concurrency (restored
    /// from its snapshot when it has one, else cold) and parks it in the
    /// idle list, where the next invocation finds it warm. Runs no
    /// invocation. Why it failed, otherwise.
    pub async fn provision_one(&self, f: &FunctionRecord) -> Result<StartKind, String> {
        let key = f.instance_key();
        if self.is_shutting_down() {
            return Err("the daemon is shutting down".into());
        }
        let pool = self.pool_for(f);
        let f = &pool.record;
        let (mut inst, kind) = match self.restore(&pool, f).await {
            Some((inst, _, _)) => (inst, StartKind::Restored),
            None => match Instance::start(f, &self.ctx).await {
                Ok((inst, _)) => {
                    self.metrics.count_instance_start(&key, "ok");
                    (inst, StartKind::Cold)
                }
                Err(e) => {
                    let result = match e {
                        StartError::Init { .. } => "init_error",
                        StartError::Platform(_) | StartError::NoAddress(_) => "platform_error",
                    };
                    self.metrics.count_instance_start(&key, result);
                    return Err(start_error_text(&e));
                }
            },
        };
        tracing::info!(function = %f.name, instance = %inst.id, start = kind.as_str(), "provisioned instance ready");
        if !self.is_shutting_down() {
            match self.park(&pool, inst) {
                None => return Ok(kind),
                Some(back) => inst = back,
            }
        }
        inst.destroy().await;
        Err(if self.is_shutting_down() {
            "the daemon is shutting down".into()
        } else {
            "the function changed while the instance started".into()
        })
    }

    fn pool_for(&self, f: &FunctionRecord) -> Arc<FunctionPool> {
        let key = f.instance_key();
        let mut map = lock(&self.functions);
        if let Some(p) = map.get(&key) {
            // Same revision, or a request that read the function before an
            // update landed: serve it with the newer revision rather than let it
            // retire the new instances and start the old code again.
            // (`LastModified` strings share one fixed format, so they sort by time.)
            if p.record.revision_id == f.revision_id || f.last_modified < p.record.last_modified {
                return p.clone();
            }
            // The function changed under us: retire the old revision's instances.
            let old = map.remove(&key);
            if let Some(old) = old {
                self.retire_pool(&key, old);
            }
        }
        let measured = lock(&self.measured).get(&key).copied();
        let p = Arc::new(FunctionPool {
            record: f.clone(),
            queue: Mutex::new(Queue::with_measurements(measured.unwrap_or_default())),
            idle: Mutex::new(Vec::new()),
            standby: Mutex::new(Vec::new()),
            filling: AtomicBool::new(false),
            retired: AtomicBool::new(false),
        });
        map.insert(key.clone(), p.clone());
        p
    }

    /// The snapshot directory of `f`'s current revision.
    pub fn snapshot_dir(&self, f: &FunctionRecord) -> PathBuf {
        self.ctx
            .snapshots
            .join(f.instance_key())
            .join(&f.revision_id)
    }

    /// What instances are started with.
    pub fn ctx(&self) -> &InstanceContext {
        &self.ctx
    }

    /// The store and blobs of the stored snapshot in `dir`, if it is one
    /// (its memory image is only in the store).
    fn stored(
        &self,
        dir: &std::path::Path,
    ) -> Option<(
        Arc<crate::snapstore::SnapshotStore>,
        crate::snapstore::StoredBlobs,
    )> {
        let store = self.ctx.store.clone()?;
        if dir.join(thaw_snapshot::image::MEMORY_FILE).exists() {
            return None;
        }
        let blobs = crate::snapshots::SnapshotMeta::read(dir).ok()?.store?;
        Some((store, blobs))
    }

    /// Removes from the store the blobs of the snapshots of the function
    /// whose snapshot directories are under `function_dir` (all revisions
    /// but `keep`), in the background; their directories are the caller's.
    fn forget_stored(&self, function_dir: &std::path::Path, keep: Option<&str>) {
        let Some(store) = self.ctx.store.clone() else {
            return;
        };
        let Ok(rd) = std::fs::read_dir(function_dir) else {
            return;
        };
        let blobs: Vec<_> = rd
            .flatten()
            .filter(|e| keep.is_none_or(|k| e.file_name() != k))
            .filter_map(|e| crate::snapshots::SnapshotMeta::read(&e.path()).ok()?.store)
            .collect();
        if blobs.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for b in &blobs {
                store.remove(b).await;
            }
        });
    }

    /// Removes the snapshot in `dir`: its blobs in the store (in the
    /// background) and the directory.
    pub fn discard_snapshot_dir(&self, dir: &std::path::Path) {
        if let (Some(store), Ok(meta)) = (
            self.ctx.store.clone(),
            crate::snapshots::SnapshotMeta::read(dir),
        ) {
            if let Some(blobs) = meta.store {
                tokio::spawn(async move { store.remove(&blobs).await });
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The directory holding every function's snapshots.
    pub fn snapshot_root(&self) -> &std::path::Path {
        &self.ctx.snapshots
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// The metadata of `f`'s current revision's snapshot, if it has one.
    pub fn snapshot_meta(&self, f: &FunctionRecord) -> Option<crate::snapshots::SnapshotMeta> {
        crate::snapshots::SnapshotMeta::read(&self.snapshot_dir(f)).ok()
    }

    /// Whether `f`'s current revision has a snapshot on disk.
    pub fn has_snapshot(&self, f: &FunctionRecord) -> bool {
        self.snapshot_dir(f)
            .join(crate::snapshots::META_FILE)
            .is_file()
    }

    /// Removes the snapshots of `name` that are not of revision `keep`
    /// (none of them is ever restored again).
    pub fn remove_other_snapshots(&self, name: &str, keep: &str) {
        if let Some(t) = &self.ctx.templates {
            t.forget(name, Some(keep));
        }
        self.forget_stored(&self.ctx.snapshots.join(name), Some(keep));
        let Ok(rd) = std::fs::read_dir(self.ctx.snapshots.join(name)) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_name() != keep {
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    tracing::warn!(function = name, path = %e.path().display(), error = %err, "cannot remove an old snapshot");
                }
            }
        }
    }

    /// The functions whose snapshot was found damaged from now on, one
    /// record per discarded snapshot: the receiver builds them again (the
    /// server queues a build). Replaces an earlier receiver.
    pub fn damaged_snapshots(&self) -> tokio::sync::mpsc::UnboundedReceiver<FunctionRecord> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *lock(&self.rebuilds) = Some(tx);
        rx
    }

    /// What a read found damaged in the memory image of the stored
    /// snapshot in `dir` since the last call, if anything.
    fn integrity_failure(&self, dir: &std::path::Path) -> Option<String> {
        let (store, blobs) = self.stored(dir)?;
        store.take_integrity_failure(&blobs.memory.digest)
    }

    /// `f`'s snapshot failed an integrity check (`why`): it is never
    /// restored again. It is counted, its status says so, its standby
    /// sandboxes and template go, the snapshot is removed (directory and
    /// blobs), and a rebuild is requested. Does nothing when the snapshot
    /// is already gone (another instance found the damage first).
    async fn snapshot_damaged(&self, pool: &Arc<FunctionPool>, f: &FunctionRecord, why: &str) {
        let key = f.instance_key();
        let dir = self.snapshot_dir(f);
        let Some(parent) = dir.parent() else {
            return;
        };
        // Moved aside at once (no restore starts from it from now on); a
        // second caller finds it gone. A daemon killed before the task
        // below ends leaves a `.tmp-` directory, which its next start
        // removes.
        let moved = parent.join(format!(".tmp-damaged-{}", uuid::Uuid::new_v4().simple()));
        if !dir.join(crate::snapshots::META_FILE).is_file()
            || std::fs::rename(&dir, &moved).is_err()
        {
            return;
        }
        tracing::error!(function = %f.name, revision = %f.revision_id, error = why, "snapshot failed an integrity check; discarding it and building it again");
        self.metrics.count_snapshot_damaged(&key);
        self.builds.damaged(f, why);
        if let Some(t) = &self.ctx.templates {
            t.forget(&key, None);
        }
        destroy_all(self.take_standby(&key, pool)).await;
        lock(&self.verified).remove(&dir);
        let stored = self.ctx.store.clone().zip(
            crate::snapshots::SnapshotMeta::read(&moved)
                .ok()
                .and_then(|m| m.store),
        );
        let rebuild = lock(&self.rebuilds).clone();
        let f = f.clone();
        // Off the request's path (its retry does not wait for this).
        tokio::spawn(async move {
            if let Some((store, blobs)) = stored {
                // Every damaged chunk of the image is found now, so that
                // the rebuild writes each again instead of trusting the
                // stored copy.
                if let Ok(m) = store.memory_manifest(&blobs.memory).await {
                    let bad = store.store().scrub(&m).await;
                    tracing::warn!(function = %f.name, bad_chunks = bad, "scrubbed the damaged snapshot's memory image");
                }
                store.remove(&blobs).await;
            }
            if let Err(e) = tokio::fs::remove_dir_all(&moved).await {
                tracing::warn!(function = %f.name, error = %e, "cannot remove a damaged snapshot");
            }
            if let Some(tx) = rebuild {
                let _ = tx.send(f);
            }
        });
    }

    /// A new instance restored (or cloned) from `f`'s snapshot, if it has
    /// one and the restore works, and whether it went into a ready standby
    /// sandbox; a failed restore is logged and counted, and the caller
    /// starts the instance cold instead.
    async fn restore(
        &self,
        pool: &Arc<FunctionPool>,
        f: &FunctionRecord,
    ) -> Option<(Instance, PhaseTimings, bool)> {
        let key = f.instance_key();
        let dir = self.snapshot_dir(f);
        if !dir.join(crate::snapshots::META_FILE).is_file() {
            return None;
        }
        if self.ctx.memory_mode(f) != MemoryMode::Eager {
            // A lazy restore verifies pages only as it serves them, so a
            // damaged snapshot would fail an invocation instead of the
            // restore: check the whole snapshot once per version of its files.
            if let Err(e) = self.verified(&dir).await {
                self.metrics.count_instance_start(&key, "restore_error");
                tracing::warn!(function = %f.name, snapshot = %dir.display(), error = %e, "snapshot failed verification; starting cold instead");
                destroy_all(self.take_standby(&key, pool)).await;
                // A snapshot of local files that fails verification is bad
                // (its checksums, or a file missing): built again.
                let why = self
                    .integrity_failure(&dir)
                    .or_else(|| self.stored(&dir).is_none().then(|| e.clone()));
                if let Some(why) = why {
                    self.snapshot_damaged(pool, f, &why).await;
                }
                return None;
            }
        }
        // A standby sandbox of this revision, if one is ready: only the
        // restore itself is left to do.
        let standby = lock(&pool.standby).pop();
        self.replenish(pool);
        if let Some(mut inst) = standby {
            self.metrics.add_instances(&key, "standby", -1);
            let how = if inst.is_clone() {
                "cloned"
            } else {
                "restored"
            };
            match inst.resume(f).await {
                Ok(t) => {
                    self.metrics.count_instance_start(&key, how);
                    tracing::info!(instance = %inst.id, sandbox_ms = t.sandbox_ms, restore_ms = t.restore_ms, "{how} a standby instance");
                    return Some((inst, t, true));
                }
                Err(e) => {
                    self.metrics.count_instance_start(&key, "restore_error");
                    tracing::warn!(function = %f.name, error = %start_error_text(&e), "standby {how} failed; restoring a new instance");
                }
            }
        } else if self.ctx.templates.is_some() {
            match Instance::clone_new(f, &self.ctx, &dir).await {
                Ok((inst, t)) => {
                    self.metrics.count_instance_start(&key, "cloned");
                    tracing::info!(instance = %inst.id, sandbox_ms = t.sandbox_ms, restore_ms = t.restore_ms, "cloned");
                    return Some((inst, t, false));
                }
                Err(e) => {
                    self.metrics.count_instance_start(&key, "restore_error");
                    tracing::warn!(function = %f.name, error = %start_error_text(&e), "clone failed; restoring a new instance");
                    if let Some(why) = self.integrity_failure(&dir) {
                        self.snapshot_damaged(pool, f, &why).await;
                        return None;
                    }
                }
            }
        }
        match Instance::restore(f, &self.ctx, &dir).await {
            Ok((inst, t)) => {
                self.metrics.count_instance_start(&key, "restored");
                tracing::info!(instance = %inst.id, sandbox_ms = t.sandbox_ms, restore_ms = t.restore_ms, "restored");
                Some((inst, t, false))
            }
            Err(e) => {
                self.metrics.count_instance_start(&key, "restore_error");
                tracing::warn!(function = %f.name, snapshot = %dir.display(), error = %start_error_text(&e), "restore failed; starting cold instead");
                if let Some(why) = self.integrity_failure(&dir) {
                    self.snapshot_damaged(pool, f, &why).await;
                }
                None
            }
        }
    }

    /// Starts building a standby instance for `pool` in the background if
    /// it has fewer than the configured number and none is being built.
    fn replenish(&self, pool: &Arc<FunctionPool>) {
        if self.standby_per_function == 0
            || pool.retired.load(Ordering::SeqCst)
            || self.shutting_down.load(Ordering::SeqCst)
            || lock(&pool.standby).len() >= self.standby_per_function
            || pool.filling.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let f = pool.record.clone();
        let dir = self.snapshot_dir(&f);
        let (pool, ctx, metrics) = (pool.clone(), self.ctx.clone(), self.metrics.clone());
        tokio::spawn(async move {
            // Cleared however the task ends (a panic included), so the pool
            // is never left marked as filling with nobody filling it.
            let _filling = FillingGuard(pool.clone());
            if dir.join(crate::snapshots::META_FILE).is_file() {
                match Instance::standby(&f, &ctx, &dir).await {
                    Ok((inst, t)) => {
                        tracing::debug!(function = %f.name, instance = %inst.id, setup_ms = t.sandbox_ms, "standby instance ready");
                        // Checked under the lock `retire` drains: a standby
                        // never lands in a retired pool.
                        let mut standby = lock(&pool.standby);
                        if pool.retired.load(Ordering::SeqCst) {
                            drop(standby);
                            destroy_all(vec![inst]).await;
                        } else {
                            standby.push(inst);
                            metrics.add_instances(&f.instance_key(), "standby", 1);
                        }
                    }
                    Err(e) => {
                        if pool.retired.load(Ordering::SeqCst) {
                            // Its snapshot went away with the revision it
                            // belonged to (an update, a delete, shutdown).
                            tracing::debug!(function = %f.name, error = %start_error_text(&e), "standby abandoned: its pool was retired");
                        } else {
                            tracing::warn!(function = %f.name, error = %start_error_text(&e), "cannot prepare a standby instance");
                        }
                    }
                }
            }
        });
    }

    /// Verifies `f`'s snapshot now if its restores are lazy (they check
    /// the whole snapshot once per version of its files), so that its first
    /// restore does not pay for it.
    pub async fn verify_snapshot(&self, f: &FunctionRecord) {
        let dir = self.snapshot_dir(f);
        // A snapshot a daemon without the store made goes into the store.
        if let Some(store) = &self.ctx.store {
            let plain = dir.join(thaw_snapshot::image::MEMORY_FILE).is_file()
                && crate::snapshots::SnapshotMeta::read(&dir).is_ok_and(|m| m.store.is_none());
            if plain {
                match store.publish(f, &dir).await {
                    Ok(_) => {
                        tracing::info!(function = %f.name, "existing snapshot published to the store")
                    }
                    Err(e) => {
                        tracing::warn!(function = %f.name, error = %e, "cannot publish an existing snapshot to the store")
                    }
                }
            }
        }
        if self.ctx.memory_mode(f) == MemoryMode::Eager {
            return;
        }
        if !dir.join(crate::snapshots::META_FILE).is_file() {
            return;
        }
        if let Err(e) = self.verified(&dir).await {
            tracing::warn!(function = %f.name, snapshot = %dir.display(), error = %e, "snapshot failed verification; its instances will start cold");
        }
    }

    /// Verifies the snapshot in `dir` unless this exact version of its files
    /// (inode, size, modification time) was verified before.
    async fn verified(&self, dir: &std::path::Path) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        if let Some((store, blobs)) = self.stored(dir) {
            // The host needs the small files; the memory image is read
            // whole through the store once (every chunk authenticated, every
            // page checked against the state), and again after a restore
            // found a chunk it could not use.
            let damaged = store.take_damaged(&blobs.memory.digest);
            if !damaged && store.is_verified(&blobs.memory.digest) {
                return Ok(());
            }
            store.materialize(dir, &blobs).await?;
            let manifest = store.memory_manifest(&blobs.memory).await?;
            let source = store.page_source(manifest);
            let d = dir.to_path_buf();
            tokio::task::spawn_blocking(move || {
                thaw_snapshot::image::Snapshot::open_with(&d, Box::new(source))
                    .and_then(|s| s.verify())
                    .map_err(|e| error_chain(&e))
            })
            .await
            .map_err(|e| e.to_string())??;
            store.set_verified(&blobs.memory.digest);
            return Ok(());
        }
        let key = |name: &str| -> Result<(u64, u64, i64, i64), String> {
            let m = std::fs::metadata(dir.join(name)).map_err(|e| e.to_string())?;
            Ok((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
        };
        let version = (
            key(thaw_snapshot::image::STATE_FILE)?,
            key(thaw_snapshot::image::MEMORY_FILE)?,
        );
        if lock(&self.verified).get(dir) == Some(&version) {
            return Ok(());
        }
        let d = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            thaw_snapshot::image::Snapshot::open(&d)
                .and_then(|s| s.verify())
                .map_err(|e| error_chain(&e))
        })
        .await
        .map_err(|e| e.to_string())??;
        lock(&self.verified).insert(dir.to_path_buf(), version);
        Ok(())
    }

    /// Snapshots `f`: starts a new instance, invokes it once with `payload`
    /// (which must succeed), checkpoints it into the revision's snapshot
    /// directory (replacing an older snapshot) and discards it. Later new
    /// instances of this revision are restored from the snapshot. Builds
    /// run one at a time; when a build of this revision is already queued
    /// or running, this joins it and returns its outcome (`payload` is
    /// then not used).
    pub async fn create_snapshot(
        &self,
        f: &FunctionRecord,
        payload: Bytes,
    ) -> Result<SnapshotReport, InvokeError> {
        match self.builds.begin(f) {
            Turn::Lead(lease) => {
                let outcome = self
                    .lead_build(lease, f, None, move || Ok(Some(payload)))
                    .await;
                outcome_result(outcome)
            }
            Turn::Join(rx) => {
                tracing::info!(function = %f.name, revision = %f.revision_id, "a build of this revision is in flight; waiting for it");
                outcome_result(crate::pipeline::join(rx).await)
            }
        }
    }

    /// Runs the build `lease` leads: waits for the build slot and for room
    /// on the host, asks `prepare` for the test event (`Ok(None)`: skip the
    /// build, its revision is no longer wanted; `Err`: the build failed),
    /// builds, records the outcome (status, metrics) and hands it to every
    /// request that joined. A background build (`background`: whether it
    /// is still wanted) waits while the host is short of disk or memory
    /// ([`crate::pressure`]); a requested one fails at once when the disk
    /// is short.
    pub async fn lead_build(
        &self,
        lease: BuildLease,
        f: &FunctionRecord,
        background: Option<&(dyn Fn() -> bool + Send + Sync)>,
        prepare: impl FnOnce() -> Result<Option<Bytes>, String>,
    ) -> BuildOutcome {
        let key = f.instance_key();
        let Some(_slot) = self.builds.slot().await else {
            lease.finish(BuildOutcome::Skipped);
            return BuildOutcome::Skipped;
        };
        let room = match background {
            Some(wanted) => {
                if self.wait_for_room(f, wanted).await {
                    Ok(())
                } else {
                    lease.finish(BuildOutcome::Skipped);
                    return BuildOutcome::Skipped;
                }
            }
            None => self.room_on_disk(),
        };
        let outcome = if self.is_shutting_down() {
            BuildOutcome::Skipped
        } else if let Err(low) = room {
            let e = format!("{low}; no snapshot was made");
            self.metrics.count_snapshot_build(&key, "failed");
            self.builds.failed(f, &e);
            BuildOutcome::Failed(e)
        } else {
            match prepare() {
                Ok(None) => BuildOutcome::Skipped,
                Err(e) => {
                    self.metrics.count_snapshot_build(&key, "failed");
                    self.builds.failed(f, &e);
                    BuildOutcome::Failed(e)
                }
                Ok(Some(payload)) => match self.build_snapshot(f, payload).await {
                    Ok(report) => {
                        // An init-only snapshot ran no invocation to time.
                        if report.init_only.is_none() {
                            self.seed_duration(f, report.test_invoke_ms);
                        }
                        self.metrics.count_snapshot_build(&key, "ready");
                        self.builds.ready(f, report.clone());
                        BuildOutcome::Ready(report)
                    }
                    Err(e) => {
                        self.metrics.count_snapshot_build(&key, "failed");
                        self.builds.failed(f, &error_chain(&e));
                        BuildOutcome::Failed(match e {
                            InvokeError::Sandbox(a) => format!("{a:#}"),
                            other => error_chain(&other),
                        })
                    }
                },
            }
        };
        lease.finish(outcome.clone());
        outcome
    }

    async fn build_snapshot(
        &self,
        f: &FunctionRecord,
        payload: Bytes,
    ) -> Result<SnapshotReport, InvokeError> {
        let fail = |m: String| InvokeError::Sandbox(anyhow::anyhow!(m));
        let (_, secret) = self.ctx.secrets.split(&f.environment);
        if f.runtime.starts_with("provided") && !secret.is_empty() {
            // Only thaw's bootstraps take the withheld secrets from the
            // restore; a custom runtime would run without them.
            let names: Vec<&str> = secret.keys().map(String::as_str).collect();
            return Err(fail(format!(
                "a custom runtime cannot receive secret variables after a restore ({}); instances of this function start cold",
                names.join(", ")
            )));
        }
        match self.build_once(f, &payload, None).await {
            Err(BuildFailure::TestInvocation(why)) => {
                // As Lambda SnapStart: a snapshot after init, never cold
                // starts because the test event does not suit the handler.
                tracing::warn!(function = %f.name, error = %why, "the test invocation failed; snapshotting right after init instead");
                self.build_once(f, &payload, Some(why))
                    .await
                    .map_err(|e| fail(e.into_message()))
            }
            r => r.map_err(|e| fail(e.into_message())),
        }
    }

    /// One build: with the test invocation, or (`init_only`: why not) right
    /// after init.
    async fn build_once(
        &self,
        f: &FunctionRecord,
        payload: &Bytes,
        init_only: Option<String>,
    ) -> Result<SnapshotReport, BuildFailure> {
        let key = f.instance_key();
        self.builds.building(f, phase::INIT);
        let (mut inst, t) = Instance::start_for_snapshot(f, &self.ctx, init_only.is_none())
            .await
            .map_err(|e| match e {
                StartError::Platform(m) | StartError::NoAddress(m) => BuildFailure::Other(m),
                StartError::Init {
                    error_type,
                    payload,
                    ..
                } => BuildFailure::Other(format!(
                    "function init failed: {error_type}: {}",
                    String::from_utf8_lossy(&payload)
                )),
            })?;
        let result = self
            .checkpoint_after_test(&mut inst, f, payload, init_only.as_deref())
            .await;
        inst.destroy().await;
        let (test_invoke_ms, stats, size_bytes, meta) = result?;
        // Never publish a snapshot that does not restore: restore one
        // instance from it and give it the test invocation.
        self.builds.building(f, phase::VALIDATION);
        let test = init_only.is_none().then_some(payload.as_ref());
        let validation_ms = match self.validate_snapshot(f, test).await {
            Ok(ms) => ms,
            Err(e) => {
                let _ = std::fs::remove_dir_all(self.snapshot_dir(f));
                return Err(BuildFailure::Other(format!(
                    "the new snapshot does not restore: {e}"
                )));
            }
        };
        // Standbys prepared from an older snapshot would restore it:
        // replace them, and have a sandbox ready for the first restore.
        let pool = self.pool_for(f);
        destroy_all(self.take_standby(&key, &pool)).await;
        if let Some(store) = &self.ctx.store {
            // Into the store: restores read the memory image from there.
            self.builds.building(f, phase::PUBLISH);
            match store.publish(f, &self.snapshot_dir(f)).await {
                Ok(blobs) => {
                    tracing::info!(function = %f.name, memory = %blobs.memory.name, "snapshot published to the store")
                }
                Err(e) => {
                    tracing::warn!(function = %f.name, error = %e, "cannot publish the snapshot to the store; restoring from its local files")
                }
            }
        }
        if self.ctx.memory_mode(f) != MemoryMode::Eager {
            // Verified now, not on the first restore's path.
            if let Err(e) = self.verified(&self.snapshot_dir(f)).await {
                tracing::warn!(function = %f.name, error = %e, "a new snapshot failed verification");
            }
        }
        self.replenish(&pool);
        Ok(SnapshotReport {
            function: key.clone(),
            revision_id: f.revision_id.clone(),
            cold_start_ms: t.sandbox_ms + t.runtime_ms + t.init_ms,
            test_invoke_ms,
            checkpoint_ms: stats.total_us as f64 / 1000.0,
            frozen_ms: stats.frozen_us as f64 / 1000.0,
            threads: stats.threads,
            mappings: stats.mappings,
            data_pages: stats.data_pages,
            zero_pages: stats.zero_pages,
            size_bytes,
            handshake: meta.resume == ResumePoint::RestoreNext,
            warmed_up: meta.warmed_up,
            validation_ms,
            init_only,
        })
    }

    fn test_invocation(f: &FunctionRecord) -> (Invocation, Duration) {
        let timeout = Duration::from_secs(u64::from(f.timeout_s));
        let inv = Invocation {
            request_id: uuid::Uuid::new_v4().to_string(),
            deadline_ms: now_ms() + timeout.as_millis() as u64,
            invoked_function_arn: f.qualified_arn(),
            trace_id: None,
            client_context: None,
            cognito_identity: None,
        };
        (inv, timeout)
    }

    /// Runs the test invocation on `inst`; its duration, or why it failed.
    async fn run_test_invocation(
        inst: &mut Instance,
        f: &FunctionRecord,
        payload: &[u8],
    ) -> Result<f64, String> {
        let (inv, timeout) = Self::test_invocation(f);
        let (result, _, invoke_ms) = inst.run(inv, payload, timeout, f).await;
        match result {
            RunResult::Response(_) => Ok(invoke_ms),
            RunResult::FunctionError { payload, .. } => Err(format!(
                "the test invocation failed: {}",
                String::from_utf8_lossy(&payload)
            )),
            RunResult::Timeout => Err("the test invocation timed out".into()),
            RunResult::Crashed { error_type, .. } => {
                Err(format!("the test invocation crashed: {error_type}"))
            }
            RunResult::Broken(why) => Err(format!("the instance broke: {why}")),
        }
    }

    /// The snapshot run after init: the test invocation when the runtime
    /// asks for one first, then the snapshot point (`restore/next`, or an
    /// idle `/invocation/next` for runtimes without the handshake), the
    /// checkpoint, and the metadata.
    async fn checkpoint_after_test(
        &self,
        inst: &mut Instance,
        f: &FunctionRecord,
        payload: &[u8],
        init_only: Option<&str>,
    ) -> Result<(f64, CheckpointStats, u64, SnapshotMeta), BuildFailure> {
        let state = |e: CheckpointFailure| match e {
            CheckpointFailure::Runtime { .. } => {
                format!("the runtime failed before the snapshot: {e}")
            }
            other => other.to_string(),
        };
        let first = inst.snapshot_run_state().await.map_err(state)?;
        let (warmed_up, invoke_ms, point) = match first {
            SnapshotRunState::AtSnapshotPoint => (false, 0.0, first),
            SnapshotRunState::Waiting => {
                self.builds.building(f, phase::TEST_INVOCATION);
                let ms = Self::run_test_invocation(inst, f, payload)
                    .await
                    .map_err(BuildFailure::TestInvocation)?;
                self.builds.building(f, phase::HOOKS);
                (true, ms, inst.snapshot_run_state().await.map_err(state)?)
            }
        };
        self.builds.building(f, phase::CHECKPOINT);
        let resume = match point {
            SnapshotRunState::AtSnapshotPoint => ResumePoint::RestoreNext,
            SnapshotRunState::Waiting => ResumePoint::InvocationNext,
        };
        let dir = self.snapshot_dir(f);
        let parent = dir.parent().unwrap_or(&self.ctx.snapshots).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        let tmp = parent.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        let meta = SnapshotMeta {
            resume,
            warmed_up,
            revision_id: f.revision_id.clone(),
            created: chrono::Utc::now().to_rfc3339(),
            store: None,
            init_only: init_only.map(str::to_string),
        };
        let stats = match inst.checkpoint(&tmp).await {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(format!("checkpoint failed: {e}").into());
            }
        };
        if let Err(e) = meta.write(&tmp) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e.to_string().into());
        }
        let size = dir_size(&tmp);
        self.discard_snapshot_dir(&dir);
        std::fs::rename(&tmp, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // The files were synced when written; this makes the rename durable.
        if let Err(e) = thaw_persist::sync_dir(&parent) {
            tracing::warn!(function = %f.name, error = %e, "cannot sync the snapshot directory");
        }
        Ok((invoke_ms, stats, size, meta))
    }

    /// Restores one instance from `f`'s new snapshot and gives it the test
    /// invocation (`None`, an init-only snapshot: none, the restore must
    /// only reach the runtime's first request for an invocation); the
    /// milliseconds to its response, or why it failed.
    async fn validate_snapshot(
        &self,
        f: &FunctionRecord,
        payload: Option<&[u8]>,
    ) -> Result<f64, String> {
        let t0 = std::time::Instant::now();
        let (mut inst, _) = Instance::restore(f, &self.ctx, &self.snapshot_dir(f))
            .await
            .map_err(|e| start_error_text(&e))?;
        let Some(payload) = payload else {
            inst.destroy().await;
            return Ok(t0.elapsed().as_secs_f64() * 1000.0);
        };
        let r = Self::run_test_invocation(&mut inst, f, payload).await;
        // This first restore of the snapshot records its working set.
        if r.is_ok() {
            if let Some((report, pages)) = inst.take_memory_report() {
                if let Some(job) =
                    self.after_first_invocation(f, &self.snapshot_dir(f), &report, pages)
                {
                    let _ = job.await;
                }
            }
        }
        inst.destroy().await;
        r.map(|_| t0.elapsed().as_secs_f64() * 1000.0)
    }

    /// Removes the working set of `f`'s current snapshot and the standby
    /// sandboxes prepared with it: the next restore records a new one.
    /// Returns whether there was one.
    pub fn rerecord_working_set(&self, f: &FunctionRecord) -> std::io::Result<bool> {
        let key = f.instance_key();
        let dir = self.snapshot_dir(f);
        let path = dir.join(WORKING_SET_FILE);
        let stored = self
            .stored(&dir)
            .filter(|(_, blobs)| blobs.working_set.is_some());
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && stored.is_none() => {
                return Ok(false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some((store, _)) = stored {
            // Removed from the metadata now (before the next restore looks),
            // from the store in the background.
            let mut meta = crate::snapshots::SnapshotMeta::read(&dir)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let blob = meta.store.as_mut().and_then(|b| b.working_set.take());
            meta.replace(&dir)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            if let Some(b) = blob {
                tokio::spawn(async move {
                    if let Err(e) = store.store().delete(&b.tenant, &b.name).await {
                        tracing::warn!(blob = %b.name, error = %error_chain(&e), "cannot remove a working set from the store");
                    }
                });
            }
        }
        let pool = lock(&self.functions).get(&key).cloned();
        if let Some(pool) = pool {
            let standby = self.take_standby(&key, &pool);
            if !standby.is_empty() {
                tokio::spawn(destroy_all(standby));
            }
            self.replenish(&pool);
        }
        Ok(true)
    }

    /// Deletes `f`'s snapshots (every revision). Returns whether there were any.
    pub fn delete_snapshots(&self, name: &str) -> std::io::Result<bool> {
        let pool = lock(&self.functions).get(name).cloned();
        if let Some(pool) = pool {
            let standby = self.take_standby(name, &pool);
            if !standby.is_empty() {
                tokio::spawn(destroy_all(standby));
            }
        }
        self.builds.forget(name);
        // Start costs measured with a snapshot say nothing of cold starts.
        lock(&self.measured).remove(name);
        if let Some(t) = &self.ctx.templates {
            t.forget(name, None);
        }
        let dir = self.ctx.snapshots.join(name);
        self.forget_stored(&dir, None);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Run one invocation on a warm instance of `function`, or on a new one.
    pub async fn invoke(
        &self,
        function: &FunctionRecord,
        input: InvokeInput,
    ) -> Result<InvokeOutcome, InvokeError> {
        let request_id = input
            .request_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let span =
            tracing::info_span!("invoke", function = %function.name, request_id = %request_id);
        self.invoke_inner(function, input, request_id)
            .instrument(span)
            .await
    }

    async fn invoke_inner(
        &self,
        f: &FunctionRecord,
        input: InvokeInput,
        request_id: String,
    ) -> Result<InvokeOutcome, InvokeError> {
        let key = f.instance_key();
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(InvokeError::ShuttingDown);
        }
        // Reserved / account concurrency: throttled at once, or admitted
        // until this invocation ends (`crate::admission`).
        let _admitted = self.admission.admit(&f.name).inspect_err(|t| {
            self.metrics.count_throttle(&f.name, t.reason());
        })?;
        let pool = self.pool_for(f);
        let f = &pool.record;
        let ticket = Ticket {
            id: lock(&pool.queue).register(),
            pool: pool.clone(),
        };
        let (mut inst, mut start, mut timings) = match self
            .place(&pool, f, ticket.id, &request_id, input.tail_logs)
            .await?
        {
            Placed::Ready(inst, start, timings) => (*inst, start, timings),
            Placed::InitFailed(outcome) => return Ok(outcome),
        };
        let mut lines = LogTail::default();
        lock(&pool.queue).busy(ticket.id, self.epoch.elapsed());
        self.metrics.add_instances(&key, "busy", 1);

        let platform_log = crate::platform_log::PlatformLog::of(f);
        let start_line = platform_log.start(&request_id, &f.version_label(), inst.address());
        // Logged before the function runs, as Lambda does: the function's
        // own lines come after it.
        if let Some(l) = &start_line {
            self.logs
                .append(&f.name, &[platform_line(&request_id, l.clone())]);
        }
        let timeout = Duration::from_secs(u64::from(f.timeout_s));
        let invoked_arn = input
            .invoked_arn
            .clone()
            .unwrap_or_else(|| f.qualified_arn());
        let mut retried = false;
        let (ran, result, out_lines, invoke_ms) = loop {
            let inv = Invocation {
                request_id: request_id.clone(),
                deadline_ms: now_ms() + timeout.as_millis() as u64,
                invoked_function_arn: invoked_arn.clone(),
                trace_id: Some(format!(
                    "Root=1-{:08x}-{};Sampled=0",
                    now_ms() / 1000,
                    &uuid::Uuid::new_v4().simple().to_string()[..24]
                )),
                client_context: input.client_context.clone(),
                cognito_identity: None,
            };
            let ran = Instant::now();
            let (result, out_lines, invoke_ms) = inst.run(inv, &input.payload, timeout, f).await;
            // A restored runtime whose memory could not be served was
            // killed by its page server: the platform's failure, never the
            // function's. The instance goes, a damaged snapshot is
            // discarded and built again, and the invocation runs once more
            // on a cold start.
            let lost = matches!(result, RunResult::Crashed { .. } | RunResult::Broken(_));
            let Some(fault) = inst.memory_failure().filter(|_| lost) else {
                break (ran, result, out_lines, invoke_ms);
            };
            tracing::error!(instance = %inst.id, error = %fault.message, integrity = fault.integrity, "a restored instance's memory could not be served; discarding it");
            self.metrics.count_memory_failure(&key, fault.integrity);
            inst.destroy().await;
            if fault.integrity {
                self.snapshot_damaged(&pool, f, &fault.message).await;
            }
            if retried || self.shutting_down.load(Ordering::SeqCst) {
                self.metrics.add_instances(&key, "busy", -1);
                self.metrics.count_rejected(&key, "platform_error");
                return Err(InvokeError::InstanceLost(
                    "its memory could not be read from the function's snapshot".into(),
                ));
            }
            retried = true;
            let placed = {
                self.starting.fetch_add(1, Ordering::SeqCst);
                let _starting = Starting {
                    pools: self,
                    function: key.clone(),
                };
                self.metrics.add_instances(&key, "starting", 1);
                self.start_new(&pool, f, &request_id, input.tail_logs, true)
                    .await
            };
            match placed {
                Ok(Placed::Ready(i, s, t)) => {
                    tracing::info!(instance = %i.id, "retrying the invocation on a cold start");
                    (inst, start, timings) = (*i, s, t);
                }
                Ok(Placed::InitFailed(outcome)) => {
                    self.metrics.add_instances(&key, "busy", -1);
                    return Ok(outcome);
                }
                Err(e) => {
                    self.metrics.add_instances(&key, "busy", -1);
                    return Err(e);
                }
            }
        };
        timings.invoke_ms = invoke_ms;
        {
            // The request stays counted as busy until its instance is
            // parked (the ticket's drop): an instance that is neither busy
            // nor idle would leave room for one more start than the limit.
            let mut q = lock(&pool.queue);
            // How long an instance stays busy, from warm instances only: a
            // new instance's first invocation also pays its page faults,
            // and in a burst it shares the cores with the other starts.
            if start == StartKind::Warm {
                q.record_invocation(ran.elapsed());
            }
            if let Some(bytes) = inst.memory_bytes() {
                q.record_instance_bytes(bytes);
            }
        }
        let memory = match (inst.take_memory_report(), inst.snapshot_dir()) {
            (Some((report, pages)), Some(dir)) => {
                let dir = dir.to_path_buf();
                if matches!(
                    result,
                    RunResult::Response(_) | RunResult::FunctionError { .. }
                ) {
                    // Written in the background, off this response's path.
                    drop(self.after_first_invocation(f, &dir, &report, pages));
                } else {
                    self.metrics.observe_restore_memory(&key, &report);
                }
                Some(report)
            }
            _ => None,
        };
        for line in out_lines.into_lines() {
            lines.push(line);
        }

        let (payload, function_error, keep, outcome) = match result {
            RunResult::Response(p) => (p, None, true, "success"),
            RunResult::FunctionError { payload, .. } => (
                payload,
                Some("Unhandled".to_string()),
                true,
                "function_error",
            ),
            RunResult::Timeout => {
                let msg = format!(
                    "RequestId: {request_id} Error: Task timed out after {:.2} seconds",
                    timeout.as_secs_f64()
                );
                lines.push(format!(
                    "{} {msg}",
                    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ")
                ));
                (
                    error_doc("Sandbox.Timedout", &msg),
                    Some("Unhandled".into()),
                    false,
                    "timeout",
                )
            }
            RunResult::Crashed {
                error_type,
                payload,
            } => {
                lines.push(format!("RequestId: {request_id} Error: {error_type}"));
                (payload, Some("Unhandled".into()), false, "crash")
            }
            RunResult::Broken(_) if self.shutting_down.load(Ordering::SeqCst) => {
                self.metrics.add_instances(&key, "busy", -1);
                inst.destroy().await;
                return Err(InvokeError::ShuttingDown);
            }
            RunResult::Broken(why) => {
                tracing::error!(instance = %inst.id, why, "instance broke during an invocation");
                self.metrics.add_instances(&key, "busy", -1);
                inst.destroy().await;
                self.metrics.count_rejected(&key, "platform_error");
                return Err(InvokeError::InstanceLost(why));
            }
        };
        self.metrics
            .observe_invocation(&key, start, &timings, outcome);
        self.metrics.add_instances(&key, "busy", -1);

        let new_instance = start == StartKind::Restored || start == StartKind::Cold;
        let report = crate::platform_log::Report {
            duration_ms: timings.invoke_ms,
            memory_size_mb: f.memory_mb,
            max_memory_used_mb: inst.memory_peak_bytes().map(|p| p.div_ceil(1 << 20)),
            init_ms: (start == StartKind::Cold).then_some(timings.runtime_ms + timings.init_ms),
            restore_ms: (start == StartKind::Restored).then_some(timings.restore_ms),
            sandbox_ms: new_instance.then_some(timings.sandbox_ms),
            failed: function_error.is_some(),
        };
        let end_lines: Vec<String> = [
            platform_log.end(&request_id, &report),
            platform_log.report(&request_id, &report),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut all: Vec<String> = start_line.into_iter().collect();
        all.extend(lines.into_lines());
        all.extend(end_lines.iter().cloned());
        let end_records: Vec<LogRecord> = end_lines
            .into_iter()
            .map(|l| platform_line(&request_id, l))
            .collect();
        self.logs.append(&f.name, &end_records);

        let leftover = if keep && !self.shutting_down.load(Ordering::SeqCst) {
            self.park(&pool, inst)
        } else {
            Some(inst)
        };
        if let Some(mut inst) = leftover {
            tokio::spawn(async move { inst.destroy().await });
        }
        drop(ticket);
        Ok(InvokeOutcome {
            request_id,
            payload,
            function_error,
            start,
            timings,
            log_tail: input.tail_logs.then(|| tail(&all)),
            memory,
        })
    }

    /// Finds an instance for request `id`, as the scheduling policy
    /// ([`crate::scheduler::decide`]) says: an idle one, a new one, or a
    /// wait in arrival order (handed the next instance released, or
    /// deciding again when its expected wait is over; 429 after
    /// [`QUEUE_WAIT`]), or a 429 at once.
    async fn place(
        &self,
        pool: &Arc<FunctionPool>,
        f: &FunctionRecord,
        id: u64,
        request_id: &str,
        tail_logs: bool,
    ) -> Result<Placed, InvokeError> {
        let key = f.instance_key();
        let arrived = Instant::now();
        let mut rx = None;
        loop {
            if self.shutting_down.load(Ordering::SeqCst) {
                return Err(InvokeError::ShuttingDown);
            }
            // A new worker is a clone into a ready standby sandbox; without
            // one, a clone builds its sandbox and costs a new sandbox.
            let template = self.ctx.templates.is_some()
                && self.has_snapshot(f)
                && !lock(&pool.standby).is_empty();
            let placement = {
                let mut q = lock(&pool.queue);
                let idle = lock(&pool.idle).len();
                let limits = self.limits(&q, f);
                let host = HostLoad {
                    starting: self.starting.load(Ordering::SeqCst),
                    parallelism: self.parallelism,
                };
                let adaptive = self.scaling == Scaling::Adaptive;
                let p = q.decide(
                    id,
                    self.epoch.elapsed(),
                    idle,
                    limits,
                    template,
                    host,
                    adaptive,
                    &mut rx,
                );
                if let Placement::Decided(Decision::NewWorker | Decision::NewSandbox) = p {
                    // Counted under the queue's lock: the next decision sees it.
                    self.starting.fetch_add(1, Ordering::SeqCst);
                }
                p
            };
            let decision = match placement {
                Placement::HandedOver(inst) => {
                    if let Some(placed) = self.take_warm(f, inst, arrived).await {
                        return Ok(placed);
                    }
                    continue;
                }
                Placement::Decided(d) => d,
            };
            self.metrics.count_decision(&key, decision.label());
            match decision {
                Decision::Warm => {
                    let popped = lock(&pool.idle).pop();
                    if let Some(inst) = popped {
                        self.metrics.add_instances(&key, "idle", -1);
                        if let Some(placed) = self.take_warm(f, inst, arrived).await {
                            return Ok(placed);
                        }
                    }
                }
                Decision::NewWorker | Decision::NewSandbox => {
                    self.metrics.observe_queue(&key, arrived.elapsed());
                    let _starting = Starting {
                        pools: self,
                        function: key.clone(),
                    };
                    self.metrics.add_instances(&key, "starting", 1);
                    return self.start_new(pool, f, request_id, tail_logs, false).await;
                }
                Decision::Wait { expected } => {
                    let left = QUEUE_WAIT.saturating_sub(arrived.elapsed());
                    let Some(r) = rx.as_mut().filter(|_| !left.is_zero()) else {
                        // Waited long enough; one handed over meanwhile still serves.
                        lock(&pool.queue).forget(id);
                        if let Some(inst) = rx.as_mut().and_then(|r| r.try_recv().ok()) {
                            if let Some(placed) = self.take_warm(f, inst, arrived).await {
                                return Ok(placed);
                            }
                        }
                        self.metrics.observe_queue(&key, arrived.elapsed());
                        self.metrics.count_rejected(&key, "throttled");
                        return Err(InvokeError::TooManyRequests(self.max_instances));
                    };
                    tokio::select! {
                        got = r => {
                            rx = None;
                            if let Ok(inst) = got {
                                if let Some(placed) = self.take_warm(f, inst, arrived).await {
                                    return Ok(placed);
                                }
                            }
                        }
                        _ = tokio::time::sleep(scheduler::recheck_after(expected).min(left)) => {}
                    }
                }
                Decision::Reject(_) => {
                    self.metrics.observe_queue(&key, arrived.elapsed());
                    self.metrics.count_rejected(&key, "throttled");
                    return Err(InvokeError::TooManyRequests(self.max_instances));
                }
            }
        }
    }

    /// `inst`, idle or handed over, if it can still serve; else it is
    /// destroyed and the request decides again.
    async fn take_warm(
        &self,
        f: &FunctionRecord,
        mut inst: Instance,
        arrived: Instant,
    ) -> Option<Placed> {
        if inst.is_usable() {
            self.metrics
                .observe_queue(&f.instance_key(), arrived.elapsed());
            return Some(Placed::Ready(
                Box::new(inst),
                StartKind::Warm,
                PhaseTimings::default(),
            ));
        }
        tracing::info!(instance = %inst.id, "idle instance died; discarding it");
        inst.destroy().await;
        None
    }

    /// The limits of one decision: `--max-instances`, and the host memory
    /// left for new instances (`crate::capacity`): what the kernel says is
    /// available, less the host's reserve and what the starts in progress
    /// will take, in units of what one instance of `f` was measured to
    /// take (its memory limit until measured).
    fn limits(&self, q: &Queue<Instance>, f: &FunctionRecord) -> Limits {
        let memory = HostMemory::read().map(|m| {
            let per = q.instance_bytes(u64::from(f.memory_mb) << 20).max(1);
            let starting = self.starting.load(Ordering::SeqCst) as u64;
            MemoryRoom {
                free_bytes: m
                    .available
                    .saturating_sub(reserve_bytes(m.total))
                    .saturating_sub(starting.saturating_mul(per)),
                instance_bytes: per,
            }
        });
        Limits {
            max_instances: self.max_instances,
            memory,
            // Reserved and account concurrency are admission's, checked
            // before placement.
            concurrency: None,
            reject_when_full: false,
        }
    }

    /// Starts a new instance of `f`: cloned or restored from its snapshot
    /// when it has one, else a cold start; records how long it took for
    /// the scheduler. A cold start whose init fails answers the request.
    async fn start_new(
        &self,
        pool: &Arc<FunctionPool>,
        f: &FunctionRecord,
        request_id: &str,
        tail_logs: bool,
        cold: bool,
    ) -> Result<Placed, InvokeError> {
        let key = f.instance_key();
        let sharing = self.starting.load(Ordering::SeqCst);
        let began = Instant::now();
        let restored = if cold {
            None
        } else {
            self.restore(pool, f).await
        };
        let (inst, start, timings, from_standby) = match restored {
            Some((inst, t, from_standby)) => (inst, StartKind::Restored, t, from_standby),
            None => match Instance::start(f, &self.ctx).await {
                Ok((inst, t)) => {
                    self.metrics.count_instance_start(&key, "ok");
                    tracing::info!(instance = %inst.id, sandbox_ms = t.sandbox_ms, runtime_ms = t.runtime_ms, init_ms = t.init_ms, "cold start");
                    (inst, StartKind::Cold, t, false)
                }
                Err(StartError::Init {
                    error_type,
                    payload,
                    log,
                    timings,
                }) => {
                    self.metrics.count_instance_start(&key, "init_error");
                    self.metrics.observe_invocation(
                        &key,
                        StartKind::Cold,
                        &timings,
                        "function_error",
                    );
                    tracing::info!(error_type, "function init failed");
                    let mut records: Vec<LogRecord> = log
                        .into_lines()
                        .into_iter()
                        .map(|l| LogRecord::now(Some(request_id.to_string()), "stdout", l))
                        .collect();
                    records.push(platform_line(request_id, format!("INIT_REPORT Init Duration: {:.2} ms Phase: init Status: error Error Type: {error_type}", timings.runtime_ms + timings.init_ms)));
                    self.logs.append(&f.name, &records);
                    let all: Vec<String> = records.into_iter().map(|r| r.line).collect();
                    return Ok(Placed::InitFailed(InvokeOutcome {
                        request_id: request_id.to_string(),
                        payload,
                        function_error: Some("Unhandled".into()),
                        start: StartKind::Cold,
                        timings,
                        log_tail: tail_logs.then(|| tail(&all)),
                        memory: None,
                    }));
                }
                Err(StartError::Platform(msg)) => {
                    self.metrics.count_instance_start(&key, "platform_error");
                    self.metrics.count_rejected(&key, "platform_error");
                    return Err(InvokeError::Sandbox(anyhow::anyhow!(msg)));
                }
                Err(StartError::NoAddress(msg)) => {
                    self.metrics.count_instance_start(&key, "no_address");
                    self.metrics.count_rejected(&key, "no_address");
                    return Err(InvokeError::NoAddress(msg));
                }
            },
        };
        // A clone into a ready standby sandbox is a new worker; a clone
        // that had to build its sandbox costs what a new sandbox does.
        let kind = if inst.is_clone() && from_standby {
            StartChoice::NewWorker
        } else {
            StartChoice::NewSandbox
        };
        // Normalised by the starts running when it began. (Counting those
        // running when it ended as well, which the first start of a burst
        // ran beside, made the costs look lower and the autoscaler start
        // 12-15 instances instead of 2-10 for 100 short requests, with a
        // worse p99: docs/benchmarks.md, burst.)
        lock(&pool.queue).record_start(kind, began.elapsed(), sharing, self.parallelism);
        Ok(Placed::Ready(Box::new(inst), start, timings))
    }

    /// Gives a finished (or newly provisioned) instance to the oldest
    /// request waiting for one, else parks it idle; back to the caller
    /// (to destroy) when its pool was retired. `retired` is checked under
    /// the queue's and the idle list's locks, which `retire` also takes
    /// after setting it: an instance is never parked in a retired pool.
    fn park(&self, pool: &FunctionPool, inst: Instance) -> Option<Instance> {
        let mut q = lock(&pool.queue);
        if pool.retired.load(Ordering::SeqCst) {
            return Some(inst);
        }
        let inst = q.hand_off(inst, self.epoch.elapsed()).err()?;
        let mut idle = lock(&pool.idle);
        if pool.retired.load(Ordering::SeqCst) {
            return Some(inst);
        }
        idle.push(inst);
        self.metrics
            .add_instances(&pool.record.instance_key(), "idle", 1);
        None
    }

    /// After the first invocation of an instance restored from `dir`:
    /// counts how its memory came back and keeps the snapshot's working set
    /// (lazy + working set) current: a recording restore's pages become
    /// the working set; a refused working set is removed (the next restore
    /// records a new one); one that drifted (the invocation faulted in more
    /// than [`DRIFT_SHARE`] of it, at least [`DRIFT_MIN_FAULTS`] times) gets
    /// the pages it missed appended. Writing runs on a task of its own,
    /// returned (`None` when there is nothing to write).
    fn after_first_invocation(
        &self,
        f: &FunctionRecord,
        dir: &std::path::Path,
        report: &thaw_runtime::control::MemoryReport,
        pages: Vec<u64>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let key = f.instance_key();
        self.metrics.observe_restore_memory(&key, report);
        if !report.lazy || self.ctx.memory_mode(f) != MemoryMode::WorkingSet {
            return None;
        }
        let path = dir.join(WORKING_SET_FILE);
        let job = if report.recorded {
            WsJob::Record
        } else {
            match report.working_set.as_str() {
                "used" => {
                    self.metrics.count_working_set(&key, "used");
                    let drifted = report.faults >= DRIFT_MIN_FAULTS
                        && report.faults as f64 > DRIFT_SHARE * report.prefetched_pages as f64;
                    if !drifted {
                        return None;
                    }
                    WsJob::Extend
                }
                "invalid" => {
                    self.metrics.count_working_set(&key, "invalid");
                    tracing::warn!(function = %f.name, error = report.working_set_error.as_deref().unwrap_or(""), "removing a refused working set; the next restore records a new one");
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(function = %f.name, error = %e, "cannot remove the refused working set");
                    }
                    if let Some((store, _)) = self.stored(dir) {
                        let d = dir.to_path_buf();
                        tokio::spawn(async move {
                            if let Err(e) = store.publish_working_set(&d, false).await {
                                tracing::warn!(error = %e, "cannot remove the refused working set from the store");
                            }
                        });
                    }
                    return None;
                }
                other => {
                    self.metrics.count_working_set(&key, other);
                    return None;
                }
            }
        };
        if let Err(low) = self.room_for_background() {
            // Upkeep, not correctness: a later restore records or extends it.
            tracing::info!(function = %f.name, "working-set upkeep skipped: {low}");
            self.metrics.count_working_set(&key, "skipped");
            return None;
        }
        let d = dir.to_path_buf();
        let (metrics, name, faults) = (self.metrics.clone(), key.clone(), report.faults);
        let stored = self.stored(dir);
        Some(tokio::spawn(async move {
            let source: Option<Box<dyn thaw_snapshot::image::PageSource>> = match &stored {
                Some((store, blobs)) => match store.memory_manifest(&blobs.memory).await {
                    Ok(m) => Some(Box::new(store.page_source(m))),
                    Err(e) => {
                        metrics.count_working_set(&name, "write_failed");
                        tracing::warn!(function = %name, error = %e, "cannot write the working set");
                        return;
                    }
                },
                None => None,
            };
            let dir = d.clone();
            let written = tokio::task::spawn_blocking(move || -> Result<_, String> {
                let snap = match source {
                    Some(source) => thaw_snapshot::image::Snapshot::open_with(&d, source),
                    None => thaw_snapshot::image::Snapshot::open(&d),
                }
                .map_err(|e| error_chain(&e))?;
                let order = match job {
                    WsJob::Record => pages,
                    WsJob::Extend => {
                        let old = WorkingSet::open(&path, &snap).map_err(|e| error_chain(&e))?;
                        old.order().iter().copied().chain(pages).collect()
                    }
                };
                thaw_snapshot::workingset::write(&snap, &order, &path).map_err(|e| error_chain(&e))
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            let event = match job {
                WsJob::Record => "recorded",
                WsJob::Extend => "rerecorded",
            };
            let written = match (written, &stored) {
                (Ok(summary), Some((store, _))) => store
                    .publish_working_set(&dir, true)
                    .await
                    .map(|()| summary)
                    .map_err(|e| format!("cannot publish it to the store: {e}")),
                (w, _) => w,
            };
            match written {
                Ok(summary) => {
                    metrics.count_working_set(&name, event);
                    tracing::info!(function = %name, event, pages = summary.pages, bytes = summary.file_bytes, faults, "working set written");
                }
                Err(e) => {
                    metrics.count_working_set(&name, "write_failed");
                    tracing::warn!(function = %name, error = %e, "cannot write the working set");
                }
            }
        }))
    }

    fn retire_pool(&self, name: &str, pool: Arc<FunctionPool>) {
        pool.retired.store(true, Ordering::SeqCst);
        self.keep_measurements(name, &pool);
        let mut idle: Vec<Instance> = std::mem::take(&mut *lock(&pool.idle));
        idle.extend(self.take_standby(name, &pool));
        if !idle.is_empty() {
            self.metrics
                .add_instances(name, "idle", -(idle.len() as i64));
            tokio::spawn(destroy_all(idle));
        }
    }

    /// Gives `f`'s scheduler the duration of its snapshot's test invocation
    /// until warm invocations are measured, so that the first burst after
    /// a deploy is decided on data rather than by starting one instance per
    /// request.
    fn seed_duration(&self, f: &FunctionRecord, ms: f64) {
        let key = f.instance_key();
        if !ms.is_finite() || ms < 0.0 {
            return;
        }
        let d = Duration::from_secs_f64(ms / 1000.0);
        lock(&self.measured)
            .entry(key.clone())
            .or_default()
            .seed_duration(d);
        let pool = lock(&self.functions).get(&key).cloned();
        if let Some(pool) = pool {
            lock(&pool.queue).seed_duration(d);
        }
    }

    /// Wakes a retired pool's waiting requests and keeps what its queue
    /// measured for the function's next pool.
    fn keep_measurements(&self, name: &str, pool: &FunctionPool) {
        let mut queue = lock(&pool.queue);
        queue.wake_all();
        lock(&self.measured).insert(name.to_string(), queue.measurements());
    }

    /// Destroys the idle instances of `name`; the pool, its busy instances
    /// and its standby sandboxes stay.
    pub async fn drop_idle(&self, name: &str) {
        let pool = lock(&self.functions).get(name).cloned();
        if let Some(pool) = pool {
            let idle: Vec<Instance> = std::mem::take(&mut *lock(&pool.idle));
            self.metrics
                .add_instances(name, "idle", -(idle.len() as i64));
            destroy_all(idle).await;
        }
    }

    /// Takes the standby instances of a retired pool.
    fn take_standby(&self, name: &str, pool: &FunctionPool) -> Vec<Instance> {
        let standby: Vec<Instance> = std::mem::take(&mut *lock(&pool.standby));
        self.metrics
            .add_instances(name, "standby", -(standby.len() as i64));
        standby
    }

    /// Tear down every idle instance of `name` and make sure busy ones are not
    /// reused (after an update or a delete).
    pub async fn retire(&self, name: &str) {
        let pool = lock(&self.functions).remove(name);
        if let Some(pool) = pool {
            pool.retired.store(true, Ordering::SeqCst);
            self.keep_measurements(name, &pool);
            let idle: Vec<Instance> = std::mem::take(&mut *lock(&pool.idle));
            self.metrics
                .add_instances(name, "idle", -(idle.len() as i64));
            let standby = self.take_standby(name, &pool);
            destroy_all(idle).await;
            destroy_all(standby).await;
        }
    }

    /// Destroy instances idle for longer than the keep-alive. Returns how many.
    pub async fn reap_idle(&self) -> usize {
        let now = Instant::now();
        let mut victims = Vec::new();
        {
            let map = lock(&self.functions);
            let floors = lock(&self.provisioned_floor);
            for (name, pool) in map.iter() {
                // Before the idle lock (lock order: queue, then idle).
                let quiet = lock(&pool.queue).counts() == (0, 0, 0);
                let mut idle = lock(&pool.idle);
                // Expired, or dead while idle (its runtime exited or crashed);
                // but the function's provisioned concurrency stays however
                // long it idles (the most recently used instances are kept).
                let floor = floors.get(name).copied().unwrap_or(0);
                let mut kept = 0;
                let (mut old, mut keep) = (Vec::new(), Vec::new());
                for i in idle.drain(..).rev() {
                    let fresh = now.duration_since(i.last_used) < self.keep_alive;
                    if i.looks_alive() && (fresh || kept < floor) {
                        kept += 1;
                        keep.push(i);
                    } else {
                        old.push(i);
                    }
                }
                keep.reverse();
                *idle = keep;
                if !old.is_empty() {
                    self.metrics
                        .add_instances(name, "idle", -(old.len() as i64));
                    victims.extend(old);
                    // Scale to zero: a function left with no instance at
                    // all (none idle, none busy) keeps no standby sandbox
                    // and no template either; the next call builds them.
                    if idle.is_empty() && quiet {
                        let standby = std::mem::take(&mut *lock(&pool.standby));
                        self.metrics
                            .add_instances(name, "standby", -(standby.len() as i64));
                        victims.extend(standby);
                        if let Some(t) = &self.ctx.templates {
                            t.forget(name, None);
                        }
                        tracing::info!(function = %name, "scaled to zero");
                    }
                }
            }
        }
        let n = victims.len();
        if n > 0 {
            tracing::info!(count = n, "reaping idle instances");
        }
        destroy_all(victims).await;
        n
    }

    /// Number of idle instances of `name` (for tests and the CLI).
    pub fn idle_count(&self, name: &str) -> usize {
        lock(&self.functions)
            .get(name)
            .map(|p| lock(&p.idle).len())
            .unwrap_or(0)
    }

    /// Stop serving: destroy every instance, busy ones included, and remove
    /// every cgroup this daemon created.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let pools: Vec<(String, Arc<FunctionPool>)> = lock(&self.functions).drain().collect();
        let mut all = Vec::new();
        for (_, pool) in pools {
            pool.retired.store(true, Ordering::SeqCst);
            lock(&pool.queue).wake_all();
            all.extend(std::mem::take(&mut *lock(&pool.idle)));
            all.extend(std::mem::take(&mut *lock(&pool.standby)));
        }
        destroy_all(all).await;
        if let Some(t) = &self.ctx.templates {
            t.forget_all().await;
        }
        // Busy instances are killed through their cgroups; their invocations then
        // fail and destroy what is left of them.
        let ctx = self.ctx.clone();
        let cleanup = tokio::task::spawn_blocking(move || {
            let n = ctx.cgroups.cleanup_stale()?;
            ctx.cgroups.remove()?;
            Ok::<usize, thaw_sandbox::CgroupError>(n)
        });
        match cleanup.await {
            Ok(Ok(n)) if n > 0 => tracing::info!(count = n, "killed busy instances at shutdown"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %error_chain(&e), "cannot clean cgroups at shutdown")
            }
            Err(e) => tracing::warn!(error = %e, "cgroup cleanup task failed"),
        }
    }
}

async fn destroy_all(instances: Vec<Instance>) {
    let mut set = tokio::task::JoinSet::new();
    for mut i in instances {
        set.spawn(async move { i.destroy().await });
    }
    while set.join_next().await.is_some() {}
}

fn platform_line(request_id: &str, line: String) -> LogRecord {
    LogRecord::now(Some(request_id.to_string()), "platform", line)
}

/// The last [`TAIL_BYTES`] of the log lines, cut at a character boundary.
fn tail(lines: &[String]) -> String {
    let mut s = lines.join("\n");
    s.push('\n');
    if s.len() > TAIL_BYTES {
        let mut cut = s.len() - TAIL_BYTES;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s = s[cut..].to_string();
    }
    s
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Clears its pool's `filling` flag when dropped ([`Pools::replenish`]).
struct FillingGuard(Arc<FunctionPool>);

impl Drop for FillingGuard {
    fn drop(&mut self) {
        self.0.filling.store(false, Ordering::SeqCst);
    }
}

/// A build's outcome as [`Pools::create_snapshot`] returns it.
fn outcome_result(outcome: BuildOutcome) -> Result<SnapshotReport, InvokeError> {
    match outcome {
        BuildOutcome::Ready(report) => Ok(report),
        BuildOutcome::Failed(why) => Err(InvokeError::Sandbox(anyhow::anyhow!(why))),
        BuildOutcome::Skipped => Err(InvokeError::Sandbox(anyhow::anyhow!(
            "the build was skipped: the function was updated or the daemon is shutting down"
        ))),
    }
}

fn start_error_text(e: &StartError) -> String {
    match e {
        StartError::Platform(m) | StartError::NoAddress(m) => m.clone(),
        StartError::Init {
            error_type,
            payload,
            ..
        } => {
            let message = serde_json::from_slice::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| v.get("errorMessage")?.as_str().map(str::to_string));
            match message {
                Some(m) if !m.is_empty() => format!("{error_type}: {m}"),
                _ => error_type.clone(),
            }
        }
    }
}

/// Versions (inode, size, mtime s, mtime ns) of a snapshot's state and
/// memory files.
type SnapshotVersion = ((u64, u64, i64, i64), (u64, u64, i64, i64));

/// Total size of the files in `dir` (not recursive).
fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_refill_clears_the_filling_flag() {
        let pool = Arc::new(FunctionPool {
            record: crate::registry::test_record("f", "r"),
            queue: Mutex::new(Queue::default()),
            idle: Mutex::new(Vec::new()),
            standby: Mutex::new(Vec::new()),
            filling: AtomicBool::new(false),
            retired: AtomicBool::new(false),
        });
        assert!(!pool.filling.swap(true, Ordering::SeqCst));
        let p = pool.clone();
        let task = tokio::spawn(async move {
            let _filling = FillingGuard(p);
            panic!("standby refill blew up");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert!(
            !pool.filling.load(Ordering::SeqCst),
            "the pool stays marked as filling"
        );
    }

    #[test]
    fn tail_keeps_last_4k_on_char_boundary() {
        let lines: Vec<String> = (0..2000).map(|i| format!("línea {i}")).collect();
        let t = tail(&lines);
        assert!(t.len() <= TAIL_BYTES);
        assert!(t.ends_with("línea 1999\n"));
        let short = tail(&["a".into(), "b".into()]);
        assert_eq!(short, "a\nb\n");
    }
}

/// Why one snapshot build failed.
#[derive(Debug)]
enum BuildFailure {
    /// The test invocation failed (the function's answer to the test
    /// event): the build is made again without it.
    TestInvocation(String),
    /// Anything else.
    Other(String),
}

impl BuildFailure {
    fn into_message(self) -> String {
        match self {
            BuildFailure::TestInvocation(m) | BuildFailure::Other(m) => m,
        }
    }
}

impl From<String> for BuildFailure {
    fn from(m: String) -> Self {
        BuildFailure::Other(m)
    }
}
