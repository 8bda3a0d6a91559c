//! Durable asynchronous invocation: the event queue.
//!
//! An `Event` invocation is written to the queue and the write is on disk
//! before the caller gets its 202. A dispatcher then runs each event on the
//! function and settles it the way Lambda does:
//!
//! - it **succeeded**: removed (sent to the `OnSuccess` destination first,
//!   if one is configured);
//! - the **function failed** (its error, a timeout, its runtime exiting):
//!   run again after one minute, then two (`MaximumRetryAttempts`, 2 by
//!   default); when retries run out it goes to the `OnFailure`
//!   destination, or else to the function's *failed events* (readable with
//!   `thaw events NAME`);
//! - the **platform could not run it** (throttled, no instance free, an
//!   instance lost under it): tried again with exponential back-off (1 s
//!   up to 5 minutes), not counted as a retry;
//! - it grew older than `MaximumEventAgeInSeconds` (6 hours by default)
//!   before it ran to its end: failure destination or failed events, with
//!   the condition `EventAgeExceeded`;
//! - its function was deleted: discarded (with a log line and a metric),
//!   as Lambda discards a deleted function's events.
//!
//! Nothing accepted is dropped silently; when the queue holds
//! `--max-queued-events` events, new ones are refused with 429 *before*
//! they are accepted. Delivery is at least once: an event whose run had
//! ended but whose settlement was not yet written when the daemon died runs
//! again after the restart (with the same request id).
//!
//! Storage: one [redb](https://www.redb.org) database, `DATA/events.redb`.
//! redb is an embedded, ACID, copy-on-write B-tree store whose commits are
//! crash safe (a checksummed commit slot flips only after the data is
//! synced), so a queue entry is either wholly there or not at all after a
//! SIGKILL or power loss, with no log of our own to replay. Writes go
//! through one writer thread that commits whatever is pending in one
//! transaction (group commit): concurrent accepts share one fsync.
//! Format: the `meta` table's `format` ([`FORMAT_VERSION`]), JSON records
//! each carrying `v`; golden fixture `tests/fixtures/events/v1.redb`.
//!
//! Must not: know HTTP or the instance pools (the dispatcher runs events
//! through [`Deliver`]).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use thaw_api::events::{
    DestinationRecord, EventQueueView, FunctionEventInvokeConfig, RequestContext, ResponseContext,
    CONDITION_EVENT_AGE_EXCEEDED, CONDITION_RETRIES_EXHAUSTED, CONDITION_SUCCESS,
};
use tokio::sync::{oneshot, Notify};
use tracing::Instrument;

/// Format of the queue's database (the `meta` table's `format`).
pub const FORMAT_VERSION: u64 = 1;
/// Format of each stored record (its `v`).
pub const RECORD_VERSION: u32 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// seq → [`QueuedEvent`] (JSON).
const QUEUED: TableDefinition<u64, &[u8]> = TableDefinition::new("queued");
/// (function, seq) → [`FailedEvent`] (JSON).
const FAILED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("failed");
/// function → [`StoredConfig`] (JSON).
const CONFIGS: TableDefinition<&str, &[u8]> = TableDefinition::new("invoke_configs");

/// The queue's limits and Lambda's schedule.
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    /// Most events queued at once (all functions); more are refused (429).
    pub max_queued: usize,
    /// Most events running at once.
    pub concurrency: usize,
    /// Most events of one function running at once, so that a function
    /// with many slow events cannot hold every slot (its others wait).
    pub per_function_concurrency: usize,
    /// Lambda's one minute before the first retry of a function error (two
    /// before the second).
    pub retry_delay: Duration,
    /// Longest back-off for an event the platform could not run.
    pub backoff_cap: Duration,
    /// Failed events kept per function; the oldest go first (logged).
    pub max_failed_per_function: usize,
    /// Whether the queue is on disk (the default). `false` keeps it in
    /// memory, lost with the daemon: only to measure what durability
    /// costs (`thaw bench async`).
    pub durable: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_queued: 10_000,
            concurrency: 32,
            per_function_concurrency: 16,
            retry_delay: Duration::from_secs(60),
            backoff_cap: Duration::from_secs(300),
            max_failed_per_function: 1000,
            durable: true,
        }
    }
}

/// What can go wrong with the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the event queue is full ({0} events are waiting)")]
    Full(usize),
    #[error("the event queue has stopped")]
    Closed,
    #[error("event queue database: {0}")]
    Db(#[from] redb::Error),
    #[error("the event queue has format {found}; this daemon reads {FORMAT_VERSION}")]
    Format { found: u64 },
    #[error("a queue record does not decode: {0}")]
    Decode(#[from] serde_json::Error),
}

fn db<E: Into<redb::Error>>(e: E) -> QueueError {
    QueueError::Db(e.into())
}

/// The key of the event invoke configuration of `function`'s version or
/// alias `qualifier` (`None` or `$LATEST`: the function's own key, as
/// stored before versions existed).
pub fn config_key(function: &str, qualifier: Option<&str>) -> String {
    match qualifier {
        None | Some(thaw_api::function::LATEST) => function.to_string(),
        Some(q) => format!("{function}:{q}"),
    }
}

/// An accepted event, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedEvent {
    /// [`RECORD_VERSION`].
    pub v: u32,
    /// The id the 202 carried; every run uses it.
    pub request_id: String,
    /// The daemon's function key ([`crate::accounts::function_key`]).
    pub function: String,
    /// The event (JSON text).
    pub payload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_context: Option<String>,
    /// When it was accepted, ms since the epoch.
    pub accepted_ms: u64,
    /// Times the function ran it to an answer or an error.
    pub runs: u32,
    /// Times the platform could not run it (for the back-off).
    pub deferrals: u32,
    /// Not before this, ms since the epoch.
    pub next_ms: u64,
    /// The function's last error document and kind, after a failed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<(String, String)>,
    /// For a destination record: how many destinations it passed through
    /// (records are not forwarded past [`MAX_HOPS`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hops: u32,
    /// The version or alias invoked (resolved when the event runs);
    /// `None`: `$LATEST`. Absent from records written before versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qualifier: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Destinations a chain of records goes through at most (Lambda stops a
/// recursive loop after about 16 invocations): A's success destination B
/// whose success destination is A would forward for ever otherwise.
pub const MAX_HOPS: u32 = 16;

/// Largest payload of a destination record; a bigger record carries its
/// payloads as a note instead.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;

/// A function's event invoke configuration as stored: Lambda's document
/// and the function keys its destinations name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredConfig {
    v: u32,
    config: FunctionEventInvokeConfig,
    #[serde(default)]
    on_success: Option<String>,
    #[serde(default)]
    on_failure: Option<String>,
}

/// A failed event kept for its function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FailedEvent {
    v: u32,
    record: DestinationRecord,
}

/// An event invoke configuration and where its destinations are.
#[derive(Debug, Clone, PartialEq)]
pub struct InvokeConfig {
    /// Lambda's document, as the API returns it.
    pub config: FunctionEventInvokeConfig,
    /// The function key of the `OnSuccess` destination.
    pub on_success: Option<String>,
    /// The function key of the `OnFailure` destination.
    pub on_failure: Option<String>,
}

/// What one run of an event came to.
#[derive(Debug)]
pub enum Attempt {
    /// The function ran it: its answer, or its error document and kind.
    Ran {
        payload: Bytes,
        function_error: Option<String>,
    },
    /// The platform could not run it now (why): try again later.
    NotRun(String),
    /// Its function no longer exists.
    Gone,
    /// The daemon is stopping: leave it queued.
    Stopping,
}

/// How the dispatcher runs events (the daemon's pools; a fake in tests).
pub trait Deliver: Send + Sync + 'static {
    /// Runs `event` on its function.
    fn run(&self, event: &QueuedEvent) -> impl Future<Output = Attempt> + Send;
    /// Whether function `key` exists (a destination).
    fn exists(&self, key: &str) -> bool;
    /// The ARN of function `key` (records name it).
    fn arn(&self, key: &str) -> String;
}

/// What the dispatcher knows of the queue without reading the database.
#[derive(Default)]
struct Index {
    /// (not before, seq) of events waiting.
    due: BTreeSet<(u64, u64)>,
    /// Events running now, in all and by function.
    running: usize,
    running_per_function: HashMap<String, usize>,
    /// Events queued (waiting or running), and per function.
    total: usize,
    per_function: HashMap<String, u64>,
    /// seq → function of every queued event.
    function_of: HashMap<u64, String>,
    stopped: bool,
}

impl Index {
    fn add(&mut self, seq: u64, function: &str, next_ms: u64) {
        self.due.insert((next_ms, seq));
        self.total += 1;
        *self.per_function.entry(function.to_string()).or_default() += 1;
        self.function_of.insert(seq, function.to_string());
    }
    fn forget(&mut self, seq: u64) {
        if let Some(f) = self.function_of.remove(&seq) {
            self.total -= 1;
            if let Some(n) = self.per_function.get_mut(&f) {
                *n -= 1;
                if *n == 0 {
                    self.per_function.remove(&f);
                }
            }
        }
    }
}

/// One change the writer commits.
enum Op {
    /// A new event (its seq is assigned by the writer and answered).
    Add(QueuedEvent),
    Replace(u64, QueuedEvent),
    Remove(u64),
    /// The event leaves the queue and its destination record enters it,
    /// only if it was still queued (its function may have been deleted
    /// while it ran).
    Forward(u64, QueuedEvent),
    Fail(u64, String, FailedEvent),
    /// A deleted function: its queued events (by seq), failed events and
    /// configuration.
    DropFunction(String, Vec<u64>),
    PutConfig(String, StoredConfig),
    DeleteConfig(String),
}

/// A group of ops committed together, and who waits for them (the seqs of
/// its `Add`s, in order).
struct Job {
    ops: Vec<Op>,
    /// Whether the commit must be on disk before `done` (accepts and
    /// configuration changes); settlements may wait for the next one
    /// ([`writer`]).
    durable: bool,
    done: oneshot::Sender<Result<Vec<u64>, QueueError>>,
}

/// Event counters for `/metrics`.
#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    succeeded: AtomicU64,
    retried: AtomicU64,
    deferred: AtomicU64,
    failed: AtomicU64,
    forwarded: AtomicU64,
    discarded: AtomicU64,
}

/// The durable event queue ([module documentation](self)).
pub struct EventQueue {
    db: Arc<Database>,
    config: QueueConfig,
    index: Mutex<Index>,
    wake: Notify,
    writer: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    /// The writer thread, joined by [`EventQueue::close`].
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    counters: Counters,
    /// Held across a read-modify-write of an event invoke configuration
    /// ([`EventQueue::config_update`]), so concurrent updates lose nothing.
    config_writes: tokio::sync::Mutex<()>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl EventQueue {
    /// Opens (or creates) the queue at `path`, with every event it holds
    /// due again (those running when a previous daemon died run again).
    pub fn open(path: &Path, config: QueueConfig) -> Result<Arc<EventQueue>, QueueError> {
        let database = if config.durable {
            open_file(path)?
        } else {
            tracing::warn!("the event queue is in memory: accepted events are lost with the daemon (benchmarks only)");
            Database::builder()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(db)?
        };
        let txn = database.begin_write().map_err(db)?;
        let mut next_seq = 0u64;
        let mut index = Index::default();
        {
            let mut meta = txn.open_table(META).map_err(db)?;
            let format = meta.get("format").map_err(db)?.map(|v| v.value());
            match format {
                None => {
                    meta.insert("format", FORMAT_VERSION).map_err(db)?;
                }
                Some(FORMAT_VERSION) => {}
                Some(found) => return Err(QueueError::Format { found }),
            }
            if let Some(n) = meta.get("next_seq").map_err(db)? {
                next_seq = n.value();
            }
            let queued = txn.open_table(QUEUED).map_err(db)?;
            for entry in queued.iter().map_err(db)? {
                let (k, v) = entry.map_err(db)?;
                let ev: QueuedEvent = serde_json::from_slice(v.value())?;
                index.add(k.value(), &ev.function, ev.next_ms);
                next_seq = next_seq.max(k.value() + 1);
            }
            txn.open_table(FAILED).map_err(db)?;
            txn.open_table(CONFIGS).map_err(db)?;
        }
        txn.commit().map_err(db)?;
        if index.total > 0 {
            tracing::info!(
                events = index.total,
                "event queue opened with events to run"
            );
        }
        let database = Arc::new(database);
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let thread = {
            let database = database.clone();
            let max_failed = config.max_failed_per_function;
            std::thread::Builder::new()
                .name("thaw-events".into())
                .spawn(move || writer(database, rx, next_seq, max_failed))
                .map_err(|e| QueueError::Db(redb::Error::Io(e)))?
        };
        Ok(Arc::new(EventQueue {
            db: database,
            config,
            index: Mutex::new(index),
            wake: Notify::new(),
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            counters: Counters::default(),
            config_writes: tokio::sync::Mutex::new(()),
        }))
    }

    /// Serialises changes of event invoke configurations: hold the guard
    /// from reading the current configuration to storing the new one.
    pub async fn config_update(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.config_writes.lock().await
    }

    /// The queue's limits.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Commits `ops` and waits until they are on disk.
    async fn commit(&self, ops: Vec<Op>) -> Result<Vec<u64>, QueueError> {
        self.send(ops, true).await
    }

    /// Commits a settlement: visible at once, on disk with the next
    /// durable commit or within [`LAZY_SYNC`] (a crash before that runs
    /// the event again: delivery is at least once).
    async fn commit_settlement(&self, ops: Vec<Op>) -> Result<Vec<u64>, QueueError> {
        self.send(ops, false).await
    }

    async fn send(&self, ops: Vec<Op>, durable: bool) -> Result<Vec<u64>, QueueError> {
        let (done, rx) = oneshot::channel();
        let sent = match &*self.writer.lock().unwrap() {
            Some(tx) => tx.send(Job { ops, durable, done }).is_ok(),
            None => false,
        };
        if !sent {
            return Err(QueueError::Closed);
        }
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Accepts an event for `function`: on disk when this returns `Ok`.
    /// `Full` when the queue holds its limit (nothing written). Runs to its
    /// end in a task of its own, so a caller that goes away (a client that
    /// hangs up) cannot leave a written event out of the dispatcher's index.
    pub async fn accept(
        self: &Arc<Self>,
        function: &str,
        request_id: String,
        payload: String,
        client_context: Option<String>,
    ) -> Result<(), QueueError> {
        self.accept_qualified(function, None, request_id, payload, client_context)
            .await
    }

    /// [`EventQueue::accept`] for a version or alias of the function.
    pub async fn accept_qualified(
        self: &Arc<Self>,
        function: &str,
        qualifier: Option<String>,
        request_id: String,
        payload: String,
        client_context: Option<String>,
    ) -> Result<(), QueueError> {
        let q = self.clone();
        let function = function.to_string();
        tokio::spawn(async move {
            q.accept_inner(&function, qualifier, request_id, payload, client_context)
                .await
        })
        .await
        .unwrap_or(Err(QueueError::Closed))
    }

    async fn accept_inner(
        &self,
        function: &str,
        qualifier: Option<String>,
        request_id: String,
        payload: String,
        client_context: Option<String>,
    ) -> Result<(), QueueError> {
        {
            // Reserve the place before writing, so concurrent accepts
            // cannot pass the limit together.
            let mut ix = self.index.lock().unwrap();
            if ix.total >= self.config.max_queued {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                return Err(QueueError::Full(ix.total));
            }
            ix.total += 1;
        }
        let now = now_ms();
        let ev = QueuedEvent {
            v: RECORD_VERSION,
            request_id,
            function: function.to_string(),
            payload,
            client_context,
            accepted_ms: now,
            runs: 0,
            deferrals: 0,
            next_ms: now,
            last_error: None,
            hops: 0,
            qualifier,
        };
        let r = self.commit(vec![Op::Add(ev)]).await;
        let mut ix = self.index.lock().unwrap();
        ix.total -= 1;
        let seq = *r?.first().ok_or(QueueError::Closed)?;
        ix.add(seq, function, now);
        drop(ix);
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
        Ok(())
    }

    /// Forgets function `key`'s queued and failed events and its
    /// configuration (it was deleted). Returns how many queued events were
    /// discarded.
    pub async fn remove_function(self: &Arc<Self>, key: &str) -> Result<u64, QueueError> {
        // In a task of its own: the index and the disk change together
        // even if the caller goes away.
        let q = self.clone();
        let key = key.to_string();
        tokio::spawn(async move { q.remove_function_inner(&key).await })
            .await
            .unwrap_or(Err(QueueError::Closed))
    }

    async fn remove_function_inner(&self, key: &str) -> Result<u64, QueueError> {
        let (dropped, seqs) = {
            let mut ix = self.index.lock().unwrap();
            let seqs: std::collections::HashSet<u64> = ix
                .function_of
                .iter()
                .filter(|(_, f)| f.as_str() == key)
                .map(|(s, _)| *s)
                .collect();
            ix.due.retain(|(_, s)| !seqs.contains(s));
            for s in &seqs {
                ix.forget(*s);
            }
            (seqs.len() as u64, seqs.into_iter().collect::<Vec<u64>>())
        };
        self.commit(vec![Op::DropFunction(key.to_string(), seqs)])
            .await?;
        if dropped > 0 {
            self.counters
                .discarded
                .fetch_add(dropped, Ordering::Relaxed);
            tracing::info!(
                function = key,
                events = dropped,
                "function deleted: its queued events are discarded"
            );
        }
        Ok(dropped)
    }

    /// Every event invoke configuration of function `function`: its
    /// `$LATEST`'s (qualifier `None`) and its versions' and aliases'.
    pub fn invoke_configs(
        &self,
        function: &str,
    ) -> Result<Vec<(Option<String>, InvokeConfig)>, QueueError> {
        let mut out = Vec::new();
        if let Some(c) = self.invoke_config(function)? {
            out.push((None, c));
        }
        let txn = self.db.begin_read().map_err(db)?;
        let t = txn.open_table(CONFIGS).map_err(db)?;
        let (from, to) = (format!("{function}:"), format!("{function};"));
        for entry in t.range(from.as_str()..to.as_str()).map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            let s: StoredConfig = serde_json::from_slice(v.value())?;
            let qualifier = k.value()[from.len()..].to_string();
            out.push((
                Some(qualifier),
                InvokeConfig {
                    config: s.config,
                    on_success: s.on_success,
                    on_failure: s.on_failure,
                },
            ));
        }
        Ok(out)
    }

    /// The event invoke configuration stored under `key` ([`config_key`]),
    /// if there is one.
    pub fn invoke_config(&self, key: &str) -> Result<Option<InvokeConfig>, QueueError> {
        let txn = self.db.begin_read().map_err(db)?;
        let t = txn.open_table(CONFIGS).map_err(db)?;
        let Some(v) = t.get(key).map_err(db)? else {
            return Ok(None);
        };
        let s: StoredConfig = serde_json::from_slice(v.value())?;
        Ok(Some(InvokeConfig {
            config: s.config,
            on_success: s.on_success,
            on_failure: s.on_failure,
        }))
    }

    /// Sets function `key`'s event invoke configuration.
    pub async fn put_invoke_config(&self, key: &str, c: InvokeConfig) -> Result<(), QueueError> {
        let stored = StoredConfig {
            v: RECORD_VERSION,
            config: c.config,
            on_success: c.on_success,
            on_failure: c.on_failure,
        };
        self.commit(vec![Op::PutConfig(key.to_string(), stored)])
            .await
            .map(drop)
    }

    /// Removes function `key`'s event invoke configuration.
    pub async fn delete_invoke_config(&self, key: &str) -> Result<(), QueueError> {
        self.commit(vec![Op::DeleteConfig(key.to_string())])
            .await
            .map(drop)
    }

    /// Function `key`'s queue: how many events wait, and its failed events.
    pub fn view(&self, key: &str) -> Result<EventQueueView, QueueError> {
        let queued = self
            .index
            .lock()
            .unwrap()
            .per_function
            .get(key)
            .copied()
            .unwrap_or(0);
        let txn = self.db.begin_read().map_err(db)?;
        let t = txn.open_table(FAILED).map_err(db)?;
        let mut failed = Vec::new();
        for entry in t.range((key, 0)..=(key, u64::MAX)).map_err(db)? {
            let (_, v) = entry.map_err(db)?;
            let f: FailedEvent = serde_json::from_slice(v.value())?;
            failed.push(f.record);
        }
        Ok(EventQueueView { queued, failed })
    }

    /// Events queued now (all functions).
    pub fn queued(&self) -> usize {
        self.index.lock().unwrap().total
    }

    /// Whether [`EventQueue::stop`] was called (the daemon is stopping).
    pub fn stopping(&self) -> bool {
        self.index.lock().unwrap().stopped
    }

    /// Stops taking events to run (shutdown); running ones settle, the
    /// rest stay on disk for the next start.
    pub fn stop(&self) {
        self.index.lock().unwrap().stopped = true;
        self.wake.notify_one();
    }

    /// Prometheus text of the queue.
    pub fn render_metrics(&self) -> String {
        let c = &self.counters;
        let mut out = String::from(
            "# HELP thaw_events_queued Event invocations accepted and not yet settled\n# TYPE thaw_events_queued gauge\n",
        );
        out.push_str(&format!("thaw_events_queued {}\n", self.queued()));
        out.push_str("# HELP thaw_events_total Event invocations by what happened: accepted, refused (queue full), succeeded, retried (function error), deferred (not run: throttled or no room), failed (to failed events), forwarded (to a destination), discarded (function deleted)\n# TYPE thaw_events_total counter\n");
        for (what, n) in [
            ("accepted", &c.accepted),
            ("refused", &c.refused),
            ("succeeded", &c.succeeded),
            ("retried", &c.retried),
            ("deferred", &c.deferred),
            ("failed", &c.failed),
            ("forwarded", &c.forwarded),
            ("discarded", &c.discarded),
        ] {
            out.push_str(&format!(
                "thaw_events_total{{outcome=\"{what}\"}} {}\n",
                n.load(Ordering::Relaxed)
            ));
        }
        out
    }

    /// Starts the dispatcher: runs due events through `deliver`, at most
    /// [`QueueConfig::concurrency`] at once and
    /// [`QueueConfig::per_function_concurrency`] of one function, until
    /// [`EventQueue::stop`].
    pub fn start<D: Deliver>(self: &Arc<Self>, deliver: D) -> tokio::task::JoinHandle<()> {
        let q = self.clone();
        let deliver = Arc::new(deliver);
        tokio::spawn(async move { q.dispatch(deliver).await })
    }

    async fn dispatch<D: Deliver>(self: Arc<Self>, deliver: Arc<D>) {
        loop {
            let now = now_ms();
            let (ready, wait) = {
                let mut ix = self.index.lock().unwrap();
                if ix.stopped {
                    return;
                }
                // Due events in order, passing over those whose function
                // already runs its share (they keep their place).
                let cap = self.config.per_function_concurrency.max(1);
                let ix = &mut *ix;
                let mut ready = Vec::new();
                let mut picked = Vec::new();
                // Walked in place: only the events taken are copied out.
                for &(at, seq) in ix.due.range(..(now + 1, 0)) {
                    if ix.running >= self.config.concurrency {
                        break;
                    }
                    let f = ix.function_of.get(&seq).cloned().unwrap_or_default();
                    let running = ix.running_per_function.get(&f).copied().unwrap_or(0);
                    if running >= cap {
                        continue;
                    }
                    ix.running += 1;
                    *ix.running_per_function.entry(f.clone()).or_default() += 1;
                    picked.push((at, seq));
                    ready.push((seq, f));
                }
                for at_seq in &picked {
                    ix.due.remove(at_seq);
                }
                let next_later = ix.due.range((now + 1, 0)..).next().map(|(at, _)| *at);
                let wait = match next_later {
                    Some(at) if ix.running < self.config.concurrency => {
                        Duration::from_millis(at.saturating_sub(now).max(1))
                    }
                    // Full, nothing waits, or only events passed over: a
                    // settlement or an accept wakes us.
                    _ => Duration::from_secs(60),
                };
                (ready, wait)
            };
            for (seq, function) in ready {
                let (q, d) = (self.clone(), deliver.clone());
                tokio::spawn(async move {
                    use futures::FutureExt;
                    // A panic while running one event must not leave it
                    // counted as running (and out of the due set) for good.
                    let settled = std::panic::AssertUnwindSafe(q.run_one(&*d, seq))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| {
                            tracing::error!(
                                seq,
                                "running a queued event panicked; it runs again later"
                            );
                            Settled::Again(now_ms() + 5_000)
                        });
                    let mut ix = q.index.lock().unwrap();
                    ix.running -= 1;
                    if let Some(n) = ix.running_per_function.get_mut(&function) {
                        *n -= 1;
                        if *n == 0 {
                            ix.running_per_function.remove(&function);
                        }
                    }
                    match settled {
                        Settled::Again(at) => {
                            if ix.function_of.contains_key(&seq) {
                                ix.due.insert((at, seq));
                            }
                        }
                        Settled::Gone(new) => {
                            ix.forget(seq);
                            if let Some((s, f)) = new {
                                ix.add(s, &f, now_ms());
                            }
                        }
                        Settled::Kept => {}
                    }
                    drop(ix);
                    q.wake.notify_one();
                });
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn read(&self, seq: u64) -> Result<Option<QueuedEvent>, QueueError> {
        let txn = self.db.begin_read().map_err(db)?;
        let t = txn.open_table(QUEUED).map_err(db)?;
        let found = match t.get(seq).map_err(db)? {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        };
        Ok(found)
    }

    /// Runs event `seq` once and writes what became of it.
    async fn run_one<D: Deliver>(&self, deliver: &D, seq: u64) -> Settled {
        let ev = match self.read(seq) {
            Ok(Some(ev)) => ev,
            // Its function was deleted meanwhile.
            Ok(None) => return Settled::Gone(None),
            Err(e) => {
                tracing::error!(error = %e, seq, "cannot read a queued event; trying again later");
                return Settled::Again(now_ms() + 5_000);
            }
        };
        let span =
            tracing::info_span!("event", function = %ev.function, request_id = %ev.request_id);
        self.settle(deliver, seq, ev).instrument(span).await
    }

    /// Runs `ev` (event `seq`) and writes what became of it.
    async fn settle<D: Deliver>(&self, deliver: &D, seq: u64, ev: QueuedEvent) -> Settled {
        // The configuration of what the event was sent to: `$LATEST`, a
        // version or an alias.
        let cfg = match self.invoke_config(&config_key(&ev.function, ev.qualifier.as_deref())) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the event invoke configuration; defaults apply");
                None
            }
        };
        let (retries, max_age_ms) = match &cfg {
            Some(c) => (
                c.config.retries(),
                u64::from(c.config.max_age_secs()) * 1000,
            ),
            None => (
                thaw_api::events::DEFAULT_MAXIMUM_RETRY_ATTEMPTS,
                u64::from(thaw_api::events::DEFAULT_MAXIMUM_EVENT_AGE_SECS) * 1000,
            ),
        };
        let deadline = ev.accepted_ms.saturating_add(max_age_ms);
        let too_old = |at: u64| at > deadline;
        if too_old(now_ms()) {
            return self
                .finish(deliver, seq, ev, cfg, CONDITION_EVENT_AGE_EXCEEDED, None)
                .await;
        }
        let attempt = deliver.run(&ev).await;
        let mut ev = ev;
        let now = now_ms();
        match attempt {
            Attempt::Stopping => {
                // Stays as it is on disk; the next start runs it.
                Settled::Kept
            }
            Attempt::Gone => {
                tracing::info!("function deleted: its event is discarded");
                self.counters.discarded.fetch_add(1, Ordering::Relaxed);
                self.write_or_retry(vec![Op::Remove(seq)], Settled::Gone(None))
                    .await
            }
            Attempt::NotRun(why) => {
                ev.deferrals += 1;
                ev.next_ms = now
                    + thaw_api::events::backoff(ev.deferrals - 1, self.config.backoff_cap)
                        .as_millis() as u64;
                if too_old(ev.next_ms) {
                    return self
                        .finish(deliver, seq, ev, cfg, CONDITION_EVENT_AGE_EXCEEDED, None)
                        .await;
                }
                tracing::info!(
                    why,
                    deferrals = ev.deferrals,
                    "event not run; trying again later"
                );
                self.counters.deferred.fetch_add(1, Ordering::Relaxed);
                let at = ev.next_ms;
                self.write_or_retry(vec![Op::Replace(seq, ev)], Settled::Again(at))
                    .await
            }
            Attempt::Ran {
                payload,
                function_error: None,
            } => {
                ev.runs += 1;
                self.counters.succeeded.fetch_add(1, Ordering::Relaxed);
                self.finish(
                    deliver,
                    seq,
                    ev,
                    cfg,
                    CONDITION_SUCCESS,
                    Some((payload, None)),
                )
                .await
            }
            Attempt::Ran {
                payload,
                function_error: Some(kind),
            } => {
                ev.runs += 1;
                if ev.runs > retries {
                    return self
                        .finish(
                            deliver,
                            seq,
                            ev,
                            cfg,
                            CONDITION_RETRIES_EXHAUSTED,
                            Some((payload, Some(kind))),
                        )
                        .await;
                }
                ev.next_ms = now
                    + thaw_api::events::retry_delay(self.config.retry_delay, ev.runs).as_millis()
                        as u64;
                ev.last_error = Some((String::from_utf8_lossy(&payload).into_owned(), kind));
                if too_old(ev.next_ms) {
                    let last = ev.last_error.take().map(|(p, k)| (Bytes::from(p), Some(k)));
                    return self
                        .finish(deliver, seq, ev, cfg, CONDITION_EVENT_AGE_EXCEEDED, last)
                        .await;
                }
                tracing::info!(runs = ev.runs, "function error: the event runs again later");
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                let at = ev.next_ms;
                self.write_or_retry(vec![Op::Replace(seq, ev)], Settled::Again(at))
                    .await
            }
        }
    }

    /// Settles an event for good: success (to the success destination, if
    /// any) or failure (to the failure destination, or the failed events).
    async fn finish<D: Deliver>(
        &self,
        deliver: &D,
        seq: u64,
        ev: QueuedEvent,
        cfg: Option<InvokeConfig>,
        condition: &str,
        response: Option<(Bytes, Option<String>)>,
    ) -> Settled {
        let success = condition == CONDITION_SUCCESS;
        let dest = cfg
            .as_ref()
            .and_then(|c| {
                if success {
                    c.on_success.clone()
                } else {
                    c.on_failure.clone()
                }
            })
            .filter(|d| {
                let looping = ev.hops >= MAX_HOPS;
                if looping {
                    tracing::warn!(destination = %d, hops = ev.hops, "a chain of destination records is too long (a loop?): not forwarded");
                }
                !looping
            });
        let response = response.or_else(|| {
            ev.last_error
                .clone()
                .map(|(p, k)| (Bytes::from(p), Some(k)))
        });
        let record = DestinationRecord {
            version: "1.0".into(),
            timestamp: rfc3339(now_ms()),
            request_context: RequestContext {
                request_id: ev.request_id.clone(),
                function_arn: format!(
                    "{}:{}",
                    deliver.arn(&ev.function),
                    thaw_api::function::LATEST
                ),
                condition: condition.to_string(),
                approximate_invoke_count: ev.runs,
            },
            request_payload: serde_json::from_str(&ev.payload)
                .unwrap_or(serde_json::Value::String(ev.payload.clone())),
            response_context: response.as_ref().map(|(_, kind)| ResponseContext {
                status_code: 200,
                executed_version: thaw_api::function::LATEST.into(),
                function_error: kind.clone(),
            }),
            response_payload: response
                .as_ref()
                .filter(|(p, _)| !p.is_empty())
                .map(|(p, _)| {
                    serde_json::from_slice(p).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(p).into_owned())
                    })
                }),
        };
        let record = bounded(record);
        match dest {
            Some(dest) if deliver.exists(&dest) => {
                let now = now_ms();
                let forwarded = QueuedEvent {
                    v: RECORD_VERSION,
                    request_id: uuid::Uuid::new_v4().to_string(),
                    function: dest.clone(),
                    payload: serde_json::to_string(&record).unwrap_or_default(),
                    client_context: None,
                    accepted_ms: now,
                    runs: 0,
                    deferrals: 0,
                    next_ms: now,
                    last_error: None,
                    hops: ev.hops + 1,
                    qualifier: None,
                };
                tracing::info!(destination = %dest, condition, "event settled: record sent to its destination");
                self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                // One commit: the event leaves the queue as its record enters it.
                match self
                    .commit_settlement(vec![Op::Forward(seq, forwarded)])
                    .await
                {
                    Ok(seqs) => Settled::Gone(seqs.first().map(|s| (*s, dest))),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot settle the event; it runs again later");
                        Settled::Again(now_ms() + 5_000)
                    }
                }
            }
            _ if success => {
                self.write_or_retry(vec![Op::Remove(seq)], Settled::Gone(None))
                    .await
            }
            dest => {
                if let Some(d) = dest {
                    tracing::warn!(destination = %d, "the failure destination does not exist; the event is kept in the failed events");
                }
                tracing::warn!(
                    condition,
                    runs = ev.runs,
                    "event failed: kept in the function's failed events"
                );
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                let failed = FailedEvent {
                    v: RECORD_VERSION,
                    record,
                };
                self.write_or_retry(
                    vec![Op::Fail(seq, ev.function.clone(), failed)],
                    Settled::Gone(None),
                )
                .await
            }
        }
    }

    async fn write_or_retry(&self, ops: Vec<Op>, then: Settled) -> Settled {
        match self.commit_settlement(ops).await {
            Ok(_) => then,
            Err(QueueError::Closed) => Settled::Kept,
            Err(e) => {
                tracing::error!(error = %e, "cannot settle an event; it runs again later");
                Settled::Again(now_ms() + 5_000)
            }
        }
    }

    /// Stops the dispatcher and the writer, after its last commit and a
    /// final sync (the daemon's shutdown: settlements made just before are
    /// on disk, so a clean stop runs nothing twice). Blocks until the
    /// writer thread has ended. Later commits fail with `Closed`.
    pub fn close(&self) {
        self.stop();
        self.writer.lock().unwrap().take();
        if let Some(t) = self.writer_thread.lock().unwrap().take() {
            let _ = t.join();
        }
    }
}

/// Opens (or creates) the database file. Another queue of this process
/// that is still letting go of it (a daemon restarted in the same process,
/// as the benchmarks do) is waited for, up to 10 s.
fn open_file(path: &Path) -> Result<Database, QueueError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Database::create(path) {
            Ok(d) => return Ok(d),
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(db(e)),
        }
    }
}

/// `record`, with its payloads replaced by a note when it would be larger
/// than [`MAX_RECORD_BYTES`].
fn bounded(mut record: DestinationRecord) -> DestinationRecord {
    let size = |r: &DestinationRecord| serde_json::to_vec(r).map_or(0, |v| v.len());
    let note = |what: &str| {
        serde_json::Value::String(format!(
            "({what} omitted: the record would exceed {MAX_RECORD_BYTES} bytes)"
        ))
    };
    if size(&record) > MAX_RECORD_BYTES && record.response_payload.is_some() {
        record.response_payload = Some(note("responsePayload"));
    }
    if size(&record) > MAX_RECORD_BYTES {
        record.request_payload = note("requestPayload");
    }
    record
}

/// What became of a run, for the dispatcher's index.
enum Settled {
    /// Still queued: due again at (ms).
    Again(u64),
    /// Left the queue (and the event that replaced it in the queue: seq, function).
    Gone(Option<(u64, String)>),
    /// Left as it was (stopping).
    Kept,
}

/// How long a settlement may stay off the disk when nothing else is
/// committed (the writer then syncs on its own).
pub const LAZY_SYNC: Duration = Duration::from_millis(200);

/// The writer thread: commits pending jobs together (group commit). A
/// commit that holds an accept or a configuration change is synced before
/// anyone is answered; one of settlements only is not (redb's
/// `Durability::None`), and is synced by the next durable commit or after
/// [`LAZY_SYNC`] of quiet, so settling costs no fsync of its own.
fn writer(
    database: Arc<Database>,
    rx: std::sync::mpsc::Receiver<Job>,
    mut next_seq: u64,
    max_failed: usize,
) {
    let mut unsynced = false;
    loop {
        let first = match rx.recv_timeout(LAZY_SYNC) {
            Ok(j) => j,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if unsynced {
                    match apply(&database, &[], &mut next_seq, max_failed, true) {
                        Ok(_) => unsynced = false,
                        Err(e) => tracing::error!(error = %e, "event queue sync failed"),
                    }
                }
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut jobs = vec![first];
        while jobs.len() < 256 {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let durable = jobs.iter().any(|j| j.durable);
        let start_seq = next_seq;
        let result = apply(&database, &jobs, &mut next_seq, max_failed, durable);
        match result {
            Ok(per_job) => {
                unsynced = !durable;
                for (j, mine) in jobs.into_iter().zip(per_job) {
                    let _ = j.done.send(Ok(mine));
                }
            }
            Err(e) => {
                next_seq = start_seq;
                let msg = e.to_string();
                tracing::error!(error = %msg, "event queue commit failed");
                for j in jobs {
                    let _ =
                        j.done
                            .send(Err(QueueError::Db(redb::Error::Io(std::io::Error::other(
                                msg.clone(),
                            )))));
                }
            }
        }
    }
    if unsynced {
        let _ = apply(&database, &[], &mut next_seq, max_failed, true);
    }
}

fn apply(
    database: &Database,
    jobs: &[Job],
    next_seq: &mut u64,
    max_failed: usize,
    durable: bool,
) -> Result<Vec<Vec<u64>>, QueueError> {
    let mut txn = database.begin_write().map_err(db)?;
    if !durable {
        txn.set_durability(redb::Durability::None).map_err(db)?;
    }
    let mut per_job = Vec::with_capacity(jobs.len());
    {
        let mut queued = txn.open_table(QUEUED).map_err(db)?;
        let mut failed = txn.open_table(FAILED).map_err(db)?;
        let mut configs = txn.open_table(CONFIGS).map_err(db)?;
        for job in jobs {
            let mut added = Vec::new();
            for op in &job.ops {
                match op {
                    Op::Add(ev) => {
                        let seq = *next_seq;
                        *next_seq += 1;
                        queued
                            .insert(seq, serde_json::to_vec(ev)?.as_slice())
                            .map_err(db)?;
                        added.push(seq);
                    }
                    Op::Forward(seq, ev) => {
                        if queued.remove(*seq).map_err(db)?.is_some() {
                            let new = *next_seq;
                            *next_seq += 1;
                            queued
                                .insert(new, serde_json::to_vec(ev)?.as_slice())
                                .map_err(db)?;
                            added.push(new);
                        }
                    }
                    Op::Replace(seq, ev) => {
                        // Not if it left meanwhile (its function was deleted).
                        if queued.get(*seq).map_err(db)?.is_some() {
                            queued
                                .insert(*seq, serde_json::to_vec(ev)?.as_slice())
                                .map_err(db)?;
                        }
                    }
                    Op::Remove(seq) => {
                        queued.remove(*seq).map_err(db)?;
                    }
                    Op::Fail(seq, function, record) => {
                        if queued.remove(*seq).map_err(db)?.is_none() {
                            continue;
                        }
                        failed
                            .insert(
                                (function.as_str(), *seq),
                                serde_json::to_vec(record)?.as_slice(),
                            )
                            .map_err(db)?;
                        let keys: Vec<u64> = failed
                            .range((function.as_str(), 0)..=(function.as_str(), u64::MAX))
                            .map_err(db)?
                            .map(|e| e.map(|(k, _)| k.value().1))
                            .collect::<Result<_, _>>()
                            .map_err(db)?;
                        if keys.len() > max_failed {
                            for k in &keys[..keys.len() - max_failed] {
                                tracing::warn!(function = %function, "more failed events than kept: the oldest is removed");
                                failed.remove((function.as_str(), *k)).map_err(db)?;
                            }
                        }
                    }
                    Op::DropFunction(function, seqs) => {
                        // The dispatcher's index knows every queued event; one
                        // accepted meanwhile runs, finds its function gone and
                        // is discarded.
                        for s in seqs {
                            queued.remove(*s).map_err(db)?;
                        }
                        let keys: Vec<u64> = failed
                            .range((function.as_str(), 0)..=(function.as_str(), u64::MAX))
                            .map_err(db)?
                            .map(|e| e.map(|(k, _)| k.value().1))
                            .collect::<Result<_, _>>()
                            .map_err(db)?;
                        for k in keys {
                            failed.remove((function.as_str(), k)).map_err(db)?;
                        }
                        configs.remove(function.as_str()).map_err(db)?;
                        // Its versions' and aliases' too.
                        let (from, to) = (format!("{function}:"), format!("{function};"));
                        let qualified: Vec<String> = configs
                            .range(from.as_str()..to.as_str())
                            .map_err(db)?
                            .map(|e| e.map(|(k, _)| k.value().to_string()))
                            .collect::<Result<_, _>>()
                            .map_err(db)?;
                        for k in qualified {
                            configs.remove(k.as_str()).map_err(db)?;
                        }
                    }
                    Op::PutConfig(function, c) => {
                        configs
                            .insert(function.as_str(), serde_json::to_vec(c)?.as_slice())
                            .map_err(db)?;
                    }
                    Op::DeleteConfig(function) => {
                        configs.remove(function.as_str()).map_err(db)?;
                    }
                }
            }
            per_job.push(added);
        }
        let mut meta = txn.open_table(META).map_err(db)?;
        meta.insert("next_seq", *next_seq).map_err(db)?;
    }
    txn.commit().map_err(db)?;
    Ok(per_job)
}

#[cfg(test)]
mod tests;
