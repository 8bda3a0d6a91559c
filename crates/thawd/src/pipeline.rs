//! The snapshot pipeline's bookkeeping: where each function's snapshot
//! stands, and one build at a time.
//!
//! Owns: the status of every function's snapshot (queued, building with its
//! phase, ready with its report, failed with the reason), the rule that
//! builds run one after another (each starts an instance and checkpoints
//! it; on a small host builds in parallel would only slow each other and
//! the functions down), and the test event a build uses. Must not: build
//! snapshots itself ([`crate::pool::Pools::create_snapshot`] does, and
//! reports its phases here) or decide when to build (the server does: on
//! deploy, update and start-up).

use std::collections::HashMap;
use std::sync::Mutex;

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

/// Status of every function's snapshot, and the build slot.
pub struct SnapshotBuilds {
    statuses: Mutex<HashMap<String, SnapshotStatus>>,
    slot: tokio::sync::Semaphore,
}

impl Default for SnapshotBuilds {
    fn default() -> Self {
        SnapshotBuilds {
            statuses: Mutex::new(HashMap::new()),
            slot: tokio::sync::Semaphore::new(1),
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl SnapshotBuilds {
    fn statuses(&self) -> std::sync::MutexGuard<'_, HashMap<String, SnapshotStatus>> {
        // Plain map updates: consistent at every panic point.
        self.statuses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let mut map = self.statuses();
        let s = map.entry(f.name.clone()).or_insert_with(|| SnapshotStatus {
            function: f.name.clone(),
            revision_id: f.revision_id.clone(),
            state,
            phase: None,
            error: None,
            report: None,
            updated: now(),
        });
        if s.revision_id != f.revision_id {
            s.revision_id = f.revision_id.clone();
            s.report = None;
            s.error = None;
        }
        s.state = state;
        s.phase = None;
        s.updated = now();
        update(s);
    }

    /// A build of `f` was requested.
    pub fn queued(&self, f: &FunctionRecord) {
        self.set(f, SnapshotState::Queued, |s| s.error = None);
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
        self.set(f, SnapshotState::Ready, |s| s.report = Some(report));
    }

    /// `f`'s build failed; instances start cold.
    pub fn failed(&self, f: &FunctionRecord, error: &str) {
        self.set(f, SnapshotState::Failed, |s| {
            s.error = Some(error.to_string());
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

    /// The status of `f`'s current revision; `ready_on_disk` says whether a
    /// snapshot of it exists (one built by an earlier daemon).
    pub fn status(&self, f: &FunctionRecord, ready_on_disk: bool) -> SnapshotStatus {
        let known = self.statuses().get(&f.name).cloned();
        match known {
            Some(s) if s.revision_id == f.revision_id => s,
            _ => SnapshotStatus {
                function: f.name.clone(),
                revision_id: f.revision_id.clone(),
                state: if ready_on_disk {
                    SnapshotState::Ready
                } else {
                    SnapshotState::None
                },
                phase: None,
                error: None,
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
