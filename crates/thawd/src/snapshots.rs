//! What the daemon records next to a snapshot the engine wrote.
//!
//! Owns: `DATA/snapshots/<function>/<revision>/thaw-snapshot.json`, the
//! daemon's metadata about a snapshot: where the runtime was waiting when it
//! was taken (which decides the request a restored runtime is answered),
//! whether the test invocation ran before it, and when it was made. Must
//! not: describe the process image (that is the engine's `state.thaw`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thaw_runtime::control::ResumePoint;

/// File name of the metadata inside a snapshot directory.
pub const META_FILE: &str = "thaw-snapshot.json";

/// The daemon's metadata about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotMeta {
    /// Where the runtime was waiting when it was checkpointed.
    pub resume: ResumePoint,
    /// The test invocation ran before the snapshot (thaw's bootstraps and
    /// runtimes without the handshake); otherwise (a runtime client that
    /// calls `restore/next` right after init) it ran on a restored instance.
    pub warmed_up: bool,
    /// The function revision it belongs to.
    pub revision_id: String,
    /// When it was taken (RFC 3339).
    pub created: String,
    /// Where its files are in the snapshot store, once published there
    /// (the memory image is then only there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<crate::snapstore::StoredBlobs>,
    /// Why the snapshot was taken right after init, without its test
    /// invocation (the test invocation failed); `None` for a full one.
    /// Absent from metadata written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_only: Option<String>,
}

/// Why the metadata cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid metadata.
    #[error("{path}: not valid snapshot metadata: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

impl SnapshotMeta {
    /// Reads the metadata of the snapshot in `dir`.
    pub fn read(dir: &Path) -> Result<SnapshotMeta, MetaError> {
        let path = dir.join(META_FILE);
        let bytes = std::fs::read(&path).map_err(|source| MetaError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| MetaError::Parse { path, source })
    }

    /// Writes the metadata into `dir` (root-only, like the snapshot).
    pub fn write(&self, dir: &Path) -> Result<(), MetaError> {
        self.replace(dir)
    }

    /// Replaces the metadata in `dir` atomically and durably
    /// ([`thaw_persist::write`]): a reader sees either whole.
    pub fn replace(&self, dir: &Path) -> Result<(), MetaError> {
        let path = dir.join(META_FILE);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| MetaError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        thaw_persist::write(&path, &bytes, 0o600).map_err(|e| MetaError::Io {
            path: e.path,
            source: e.source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let m = SnapshotMeta {
            resume: ResumePoint::RestoreNext,
            warmed_up: true,
            revision_id: "r1".into(),
            created: "2026-11-23T00:00:00Z".into(),
            store: None,
            init_only: Some("the test invocation failed: boom".into()),
        };
        m.write(dir.path()).unwrap();
        assert_eq!(SnapshotMeta::read(dir.path()).unwrap(), m);
        let text = std::fs::read_to_string(dir.path().join(META_FILE)).unwrap();
        assert!(text.contains("\"restore-next\""), "{text}");
        std::fs::write(dir.path().join(META_FILE), b"{").unwrap();
        let e = SnapshotMeta::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not valid snapshot metadata"), "{e}");
        let e = SnapshotMeta::read(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }

    /// The committed metadata files (a plain snapshot, and one published
    /// to the store with a working set) read with the current code.
    #[test]
    fn golden_metadata_reads() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snapshot-meta");
        let plain = SnapshotMeta::read(&fixtures.join("plain")).unwrap();
        assert_eq!(plain.resume, ResumePoint::InvocationNext);
        assert!(plain.warmed_up && plain.store.is_none());
        assert_eq!(plain.revision_id, "1b2c3d4e-0000-4000-8000-000000000001");
        let stored = SnapshotMeta::read(&fixtures.join("stored")).unwrap();
        assert_eq!(stored.resume, ResumePoint::RestoreNext);
        let blobs = stored.store.expect("store references");
        assert_eq!(blobs.memory.size, 41947136);
        assert_eq!(blobs.state.tenant, "default");
        let ws = blobs.working_set.expect("a working set");
        assert!(ws.name.ends_with("/workingset"), "{}", ws.name);
        assert_eq!(ws.size, 1712128);
    }
}
