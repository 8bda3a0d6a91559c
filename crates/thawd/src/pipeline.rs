//! The snapshot pipeline's bookkeeping: where each function's snapshot
//! stands, and one build at a time.
//!
//! Owns: the status of every function's snapshot (queued, building with its
//! phase, ready with its report, failed with the reason), the rule that
//! builds run one after another (each starts an instance and checkpoints
//! it; on a small host builds in parallel would only slow each other and
//! the functions down), the rule that a revision has at most one build in
//! flight (a second request for it joins the first and gets its outcome:
//! [`SnapshotBuilds::begin`]), and the test event a build uses. Must not: build
//! snapshots itself ([`crate::pool::Pools::create_snapshot`] does, and
//! reports its phases here) or decide when to build (the server does: on
//! deploy, update and start-up).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use thaw_api::{SnapshotReport, SnapshotState, SnapshotStatus};

use crate::registry::FunctionRecord;

/// File in a function's code whose contents are the snapshot's test event
/// (`{}` when there is none).
pub const TEST_EVENT_FILE: &str = "thaw-test-event.json";

/// Largest test event read from the code.
const MAX_TEST_EVENT: u64 = 256 * 1024;

/// Phases of a build, as shown while it runs.
pub mod phase {
    /// Starting an instance and running the function's init.
    pub const INIT: &str = "starting an instance and running init";
    /// The test invocation.
    pub const TEST_INVOCATION: &str = "test invocation";
    /// Waiting for the runtime's before-snapshot hooks and `restore/next`.
    pub const HOOKS: &str = "before-snapshot hooks";
    /// The checkpoint.
    pub const CHECKPOINT: &str = "checkpoint";
    /// Restoring an instance from the new snapshot and invoking it.
    pub const VALIDATION: &str = "validating: restore and test invocation";
    /// Publishing it to the snapshot store.
    pub const PUBLISH: &str = "publishing to the snapshot store";
}

type Statuses = Arc<Mutex<HashMap<String, SnapshotStatus>>>;

/// How a build ended, as the requests that joined it see it.
#[derive(Clone, Debug)]
pub enum BuildOutcome {
    /// The snapshot is ready.
    Ready(SnapshotReport),
    /// The build failed (the reason).
    Failed(String),
    /// The build did not run: its revision was replaced or the daemon is
    /// shutting down.
    Skipped,
}

/// Builds in flight, by (function, revision): what a joining request waits on.
type InFlight =
    Arc<Mutex<HashMap<(String, String), tokio::sync::watch::Receiver<Option<BuildOutcome>>>>>;

/// Status of every function's snapshot, the build slot, and the builds in
/// flight.
pub struct SnapshotBuilds {
    statuses: Statuses,
    slot: tokio::sync::Semaphore,
    in_flight: InFlight,
}

impl Default for SnapshotBuilds {
    fn default() -> Self {
        SnapshotBuilds {
            statuses: Arc::new(Mutex::new(HashMap::new())),
            slot: tokio::sync::Semaphore::new(1),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// The one request that runs a revision's build; the others
/// [join](Turn::Join) it. Dropping it without [`BuildLease::finish`]
/// (the build panicked or was cancelled) marks the build failed, so the
/// status never stays `building`, and wakes the joined requests with that
/// failure.
pub struct BuildLease {
    /// (function, revision)
    key: (String, String),
    statuses: Statuses,
    in_flight: InFlight,
    tx: tokio::sync::watch::Sender<Option<BuildOutcome>>,
    finished: bool,
}

impl BuildLease {
    /// Ends the build: `outcome` goes to every joined request, and the
    /// revision may be built again.
    pub fn finish(mut self, outcome: BuildOutcome) {
        self.finished = true;
        self.release(outcome);
    }

    fn release(&self, outcome: BuildOutcome) {
        // Removed before sending: a request arriving after this point
        // starts a new build instead of joining a finished one.
        lock(&self.in_flight).remove(&self.key);
        self.tx.send_replace(Some(outcome));
    }
}

impl Drop for BuildLease {
    fn drop(&mut self) {
        if !self.finished {
            let why = "the snapshot build was abandoned (the daemon's build task ended early)";
            let (name, revision) = (&self.key.0, &self.key.1);
            tracing::warn!(function = %name, revision = %revision, "{why}");
            set(
                &self.statuses,
                (name, revision),
                SnapshotState::Failed,
                |s| {
                    s.error = Some(why.to_string());
                    s.report = None;
                },
            );
            self.release(BuildOutcome::Failed(why.to_string()));
        }
    }
}

/// Whether a request runs a revision's build or joins the one in flight.
pub enum Turn {
    /// Run the build, then [`BuildLease::finish`] it.
    Lead(BuildLease),
    /// A build of this revision is in flight: wait for its outcome
    /// ([`join`]).
    Join(tokio::sync::watch::Receiver<Option<BuildOutcome>>),
}

/// Waits for the outcome of the build `rx` follows.
pub async fn join(mut rx: tokio::sync::watch::Receiver<Option<BuildOutcome>>) -> BuildOutcome {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone().unwrap_or(BuildOutcome::Skipped),
        // The lease's drop always sends before the sender goes; be safe.
        Err(_) => BuildOutcome::Failed("the snapshot build was abandoned".into()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain map updates: consistent at every panic point.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn set(
    statuses: &Statuses,
    (name, revision): (&str, &str),
    state: SnapshotState,
    update: impl FnOnce(&mut SnapshotStatus),
) {
    let mut map = lock(statuses);
    let s = map
        .entry(name.to_string())
        .or_insert_with(|| SnapshotStatus {
            function: name.to_string(),
            revision_id: revision.to_string(),
            state,
            phase: None,
            error: None,
            report: None,
            updated: now(),
        });
    if s.revision_id != revision {
        s.revision_id = revision.to_string();
        s.report = None;
        s.error = None;
    }
    s.state = state;
    s.phase = None;
    s.updated = now();
    update(s);
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl SnapshotBuilds {
    fn statuses(&self) -> std::sync::MutexGuard<'_, HashMap<String, SnapshotStatus>> {
        lock(&self.statuses)
    }

    /// Waits for the build slot.
    pub async fn slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.slot.acquire().await.ok()
    }

    fn set(
        &self,
        f: &FunctionRecord,
        state: SnapshotState,
        update: impl FnOnce(&mut SnapshotStatus),
    ) {
        set(
            &self.statuses,
            (&f.instance_key(), &f.revision_id),
            state,
            update,
        );
    }

    /// A build of `f`'s current revision was requested: the caller leads
    /// it (the status says `queued` until it starts) unless one is in
    /// flight, which the caller then joins (the status is left alone: it
    /// is that build's).
    pub fn begin(&self, f: &FunctionRecord) -> Turn {
        let key = (f.instance_key(), f.revision_id.clone());
        let mut in_flight = lock(&self.in_flight);
        if let Some(rx) = in_flight.get(&key) {
            return Turn::Join(rx.clone());
        }
        let (tx, rx) = tokio::sync::watch::channel(None);
        in_flight.insert(key.clone(), rx);
        drop(in_flight);
        self.set(f, SnapshotState::Queued, |s| s.error = None);
        Turn::Lead(BuildLease {
            key,
            statuses: self.statuses.clone(),
            in_flight: self.in_flight.clone(),
            tx,
            finished: false,
        })
    }

    /// Whether a build of `f`'s current revision is in flight.
    pub fn in_flight(&self, f: &FunctionRecord) -> bool {
        lock(&self.in_flight).contains_key(&(f.instance_key(), f.revision_id.clone()))
    }

    /// A build of `f` is queued, waiting for room (`why`).
    pub fn waiting(&self, f: &FunctionRecord, why: &str) {
        self.set(f, SnapshotState::Queued, |s| {
            s.phase = Some(format!("waiting: {why}"));
        });
    }

    /// A build of `f` is in `phase`.
    pub fn building(&self, f: &FunctionRecord, phase: &str) {
        self.set(f, SnapshotState::Building, |s| {
            s.phase = Some(phase.to_string());
            s.error = None;
        });
    }

    /// `f`'s snapshot is in use.
    pub fn ready(&self, f: &FunctionRecord, report: SnapshotReport) {
        let (state, why) = match &report.init_only {
            Some(why) => (SnapshotState::InitOnly, Some(why.clone())),
            None => (SnapshotState::Ready, None),
        };
        self.set(f, state, |s| {
            s.error = why;
            s.report = Some(report);
        });
    }

    /// `f`'s build failed; instances start cold.
    pub fn failed(&self, f: &FunctionRecord, error: &str) {
        self.set(f, SnapshotState::Failed, |s| {
            s.error = Some(error.to_string());
            s.report = None;
        });
    }

    /// `f`'s snapshot failed an integrity check and was discarded; a
    /// rebuild follows. The status says `failed` with why until that
    /// build starts (`thaw_snapshots_damaged_total` keeps the count).
    pub fn damaged(&self, f: &FunctionRecord, why: &str) {
        let msg =
            format!("the snapshot failed an integrity check and was discarded ({why}); rebuilding");
        self.set(f, SnapshotState::Failed, |s| {
            s.error = Some(msg.clone());
            s.report = None;
        });
    }

    /// `f` has no snapshot any more (deleted, or the function is gone).
    pub fn none(&self, f: &FunctionRecord) {
        self.set(f, SnapshotState::None, |s| s.report = None);
    }

    /// Forgets a deleted function.
    pub fn forget(&self, name: &str) {
        self.statuses().remove(name);
    }

    /// The status of `f`'s current revision; `on_disk` is the metadata of
    /// its snapshot, if one exists (one built by an earlier daemon: `ready`,
    /// or `init-only` with why).
    pub fn status(
        &self,
        f: &FunctionRecord,
        on_disk: Option<&crate::snapshots::SnapshotMeta>,
    ) -> SnapshotStatus {
        let known = self.statuses().get(&f.instance_key()).cloned();
        match known {
            Some(s) if s.revision_id == f.revision_id => s,
            _ => SnapshotStatus {
                function: f.instance_key(),
                revision_id: f.revision_id.clone(),
                state: match on_disk {
                    Some(m) if m.init_only.is_some() => SnapshotState::InitOnly,
                    Some(_) => SnapshotState::Ready,
                    None => SnapshotState::None,
                },
                phase: None,
                error: on_disk.and_then(|m| m.init_only.clone()),
                report: None,
                updated: now(),
            },
        }
    }
}

/// The test event for `f`'s snapshot: its code's [`TEST_EVENT_FILE`] if it
/// has one (it must be valid JSON), else `{}`.
pub fn test_event(f: &FunctionRecord) -> Result<Bytes, String> {
    use std::io::Read;
    let path = f.code_dir.join(TEST_EVENT_FILE);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Bytes::from_static(b"{}")),
        Err(e) => return Err(format!("{TEST_EVENT_FILE}: {e}")),
    };
    let mut bytes = Vec::new();
    file.take(MAX_TEST_EVENT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{TEST_EVENT_FILE}: {e}"))?;
    if bytes.len() as u64 > MAX_TEST_EVENT {
        return Err(format!(
            "{TEST_EVENT_FILE} is larger than {MAX_TEST_EVENT} bytes"
        ));
    }
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| format!("{TEST_EVENT_FILE} is not valid JSON: {e}"))?;
    Ok(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, revision: &str) -> FunctionRecord {
        crate::registry::test_record(name, revision)
    }

    fn report(f: &FunctionRecord) -> SnapshotReport {
        SnapshotReport {
            function: f.name.clone(),
            revision_id: f.revision_id.clone(),
            cold_start_ms: 1.0,
            test_invoke_ms: 2.0,
            checkpoint_ms: 3.0,
            frozen_ms: 4.0,
            threads: 1,
            mappings: 2,
            data_pages: 3,
            zero_pages: 4,
            size_bytes: 5,
            handshake: true,
            warmed_up: true,
            validation_ms: 6.0,
            init_only: None,
        }
    }

    #[tokio::test]
    async fn second_request_joins_and_gets_the_same_outcome() {
        let b = SnapshotBuilds::default();
        let f = record("f", "r1");
        let Turn::Lead(lease) = b.begin(&f) else {
            panic!("the first request must lead");
        };
        assert_eq!(b.status(&f, None).state, SnapshotState::Queued);
        let joiners: Vec<_> = (0..7)
            .map(|_| match b.begin(&f) {
                Turn::Join(rx) => tokio::spawn(join(rx)),
                Turn::Lead(_) => panic!("a second build of one revision was started"),
            })
            .collect();
        // Joining does not touch the leader's status.
        b.building(&f, phase::CHECKPOINT);
        assert!(b.begin(&f).is_join());
        assert_eq!(b.status(&f, None).state, SnapshotState::Building);
        // Another revision is another build.
        assert!(!b.begin(&record("f", "r2")).is_join());
        b.ready(&f, report(&f));
        lease.finish(BuildOutcome::Ready(report(&f)));
        for j in joiners {
            match j.await.unwrap() {
                BuildOutcome::Ready(r) => assert_eq!(r.checkpoint_ms, 3.0),
                other => panic!("joined request got {other:?}"),
            }
        }
        // Finished: the next request builds again.
        assert!(!b.in_flight(&f));
        assert!(!b.begin(&f).is_join());
    }

    #[tokio::test]
    async fn an_abandoned_build_fails_its_status_and_its_joiners() {
        let b = SnapshotBuilds::default();
        let f = record("g", "r1");
        let Turn::Lead(lease) = b.begin(&f) else {
            panic!("the first request must lead");
        };
        b.building(&f, phase::INIT);
        let Turn::Join(rx) = b.begin(&f) else {
            panic!("must join");
        };
        drop(lease);
        assert!(matches!(join(rx).await, BuildOutcome::Failed(_)));
        let s = b.status(&f, None);
        assert_eq!(s.state, SnapshotState::Failed, "{s:?}");
        assert!(s.error.unwrap().contains("abandoned"));
        assert!(!b.in_flight(&f));
    }

    /// After a restart (nothing known in memory), a snapshot on disk is
    /// `ready`, or `init-only` with why when its metadata says so.
    #[test]
    fn a_snapshot_found_on_disk_keeps_its_state() {
        let b = SnapshotBuilds::default();
        let f = record("h", "r1");
        let mut meta = crate::snapshots::SnapshotMeta {
            resume: thaw_runtime::control::ResumePoint::RestoreNext,
            warmed_up: false,
            revision_id: "r1".into(),
            created: String::new(),
            store: None,
            init_only: None,
        };
        assert_eq!(b.status(&f, None).state, SnapshotState::None);
        assert_eq!(b.status(&f, Some(&meta)).state, SnapshotState::Ready);
        meta.init_only = Some("the test invocation failed: KeyError".into());
        let s = b.status(&f, Some(&meta));
        assert_eq!(s.state, SnapshotState::InitOnly);
        assert_eq!(
            s.error.as_deref(),
            Some("the test invocation failed: KeyError")
        );
    }

    impl Turn {
        fn is_join(&self) -> bool {
            matches!(self, Turn::Join(_))
        }
    }
}
