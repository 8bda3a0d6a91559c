//! Snapshots in the snapshot store (`thaw-store`).
//!
//! Owns: publishing a snapshot the pipeline built (its state, memory image
//! and working set become blobs of the function's tenant), the host's copy
//! of a stored snapshot's small files (state and working set, fetched from
//! the store when missing), the page socket that serves a restore's memory
//! image from the store, and removing a snapshot's blobs.
//!
//! A stored snapshot's directory keeps `thaw-snapshot.json` (with the blob
//! references: tenant, name, digest, size), `state.thaw` and
//! `workingset.thaw`; the memory image lives only in the store. Every byte
//! a restore reads comes through the store, which authenticates each chunk
//! (and, for the small files, the whole blob against the recorded digest);
//! the engine checks the pages once more against the state's chunk hashes.
//!
//! Must not: hand a sandbox anything but its own snapshot's bytes (the page
//! socket serves exactly one memory image), or log a key.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use thaw_snapshot::image::{PageSource, MEMORY_FILE, STATE_FILE};
use thaw_snapshot::workingset::WORKING_SET_FILE;
use thaw_store::{BlobRef, Manifest, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::registry::FunctionRecord;
use crate::snapshots::SnapshotMeta;

/// The store tenant (deduplication and encryption domain) of the root
/// account's functions: the tenant's name from before accounts, so stores
/// written then stay readable. A function cannot choose its tenant (its
/// environment once could, with `THAW_TENANT`, and so join another's).
pub const ROOT_TENANT: &str = "default";

/// The blobs of a stored snapshot, recorded in its `thaw-snapshot.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredBlobs {
    /// `state.thaw`.
    pub state: BlobRef,
    /// `memory.thaw`.
    pub memory: BlobRef,
    /// `workingset.thaw`, once one is recorded.
    #[serde(default)]
    pub working_set: Option<BlobRef>,
}

/// The daemon's snapshot store.
pub struct SnapshotStore {
    store: Arc<Store>,
    /// Opened memory-image manifests, by blob name and digest.
    manifests: Mutex<HashMap<(String, String), Arc<Manifest>>>,
    /// Memory images (by digest) read whole and found intact.
    verified: Mutex<std::collections::HashSet<String>>,
    /// Memory images (by digest) a restore could not read a range of.
    damaged: Mutex<std::collections::HashSet<String>>,
    /// Memory images (by digest) a read found damaged (a chunk that did not
    /// authenticate or is missing), with what was wrong: the snapshot is
    /// bad and must be built again.
    integrity: Arc<Mutex<HashMap<String, String>>>,
}

/// Why a restore's memory could not be served (see
/// [`SnapshotStore::serve_restore`]): set at the first failed read of one
/// restore's page socket.
#[derive(Debug, Clone)]
pub struct MemoryFault {
    /// What failed (no host path: blob and chunk names only).
    pub message: String,
    /// The stored bytes are bad (as opposed to a store that failed or did
    /// not answer): the snapshot must be built again.
    pub integrity: bool,
}

/// Where a restore's page socket reports its first failure.
pub type MemoryFaultCell = Arc<std::sync::OnceLock<MemoryFault>>;

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `f`'s tenant: its account's (the root account's is [`ROOT_TENANT`], any
/// other's its id). Nothing the function sets (its environment included)
/// changes it, so one account's functions never share chunks (or learn,
/// by deduplication, what another's snapshots hold) with another's.
pub fn tenant_of(f: &FunctionRecord) -> String {
    match f.account() {
        thaw_auth::ROOT_ACCOUNT => ROOT_TENANT.to_string(),
        account => account.to_string(),
    }
}

/// The store name of the working set of the snapshot whose memory image
/// is `memory` (`.../memory` -> `.../workingset`).
fn working_set_name(memory: &BlobRef) -> Option<String> {
    memory
        .name
        .strip_suffix("/memory")
        .map(|p| format!("{p}/workingset"))
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Writes `bytes` to `path` atomically and durably (root only), so a
/// reader sees the old file or the whole new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    Ok(thaw_persist::write(path, bytes, 0o600)?)
}

impl SnapshotStore {
    /// Uses `store`.
    pub fn new(store: Store) -> Self {
        SnapshotStore {
            store: Arc::new(store),
            manifests: Mutex::new(HashMap::new()),
            verified: Mutex::default(),
            damaged: Mutex::default(),
            integrity: Arc::default(),
        }
    }

    /// The store itself (statistics, collection).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Whether the memory image with `digest` was read whole and intact.
    pub fn is_verified(&self, digest: &str) -> bool {
        lock(&self.verified).contains(digest)
    }

    /// Records that the memory image with `digest` was read whole and intact.
    pub fn set_verified(&self, digest: &str) {
        lock(&self.verified).insert(digest.to_string());
    }

    /// Whether a restore failed to read the memory image with `digest`
    /// since the last call (which clears it, and its verification).
    pub fn take_damaged(&self, digest: &str) -> bool {
        let damaged = lock(&self.damaged).remove(digest);
        if damaged {
            lock(&self.verified).remove(digest);
        }
        damaged
    }

    /// What a read found damaged in the memory image with `digest` since
    /// the last call (which clears it), if anything.
    pub fn take_integrity_failure(&self, digest: &str) -> Option<String> {
        lock(&self.integrity).remove(digest)
    }

    /// Records that a read found the memory image with `digest` damaged.
    fn note_integrity(integrity: &Mutex<HashMap<String, String>>, digest: &str, why: &str) {
        lock(integrity)
            .entry(digest.to_string())
            .or_insert_with(|| why.to_string());
    }

    /// Forgets every opened manifest and the store's memory tier
    /// (benchmarks: the next restore reads as a host that never saw the
    /// snapshot would).
    pub fn drop_caches(&self) {
        lock(&self.manifests).clear();
        self.store.clear_memory();
    }

    /// Publishes the snapshot in `dir` (built and validated, its working
    /// set recorded if the validation recorded one) as `f`'s: state,
    /// memory image and working set become blobs, the references go into
    /// its metadata, and the local memory image is removed (restores read
    /// it from the store from now on).
    pub async fn publish(&self, f: &FunctionRecord, dir: &Path) -> Result<StoredBlobs, String> {
        let tenant = tenant_of(f);
        let state = tokio::fs::read(dir.join(STATE_FILE)).await.map_err(err)?;
        let id = blake3::hash(&state).to_hex();
        let prefix = format!("snapshots/{}/{}/{}", f.name, f.revision_id, &id[..16]);
        let memory = tokio::fs::read(dir.join(MEMORY_FILE)).await.map_err(err)?;
        let put = |name: &'static str, bytes: Vec<u8>| {
            let (tenant, blob) = (tenant.clone(), format!("{prefix}/{name}"));
            async move {
                self.store
                    .put(&tenant, &blob, &bytes)
                    .await
                    .map(|r| r.blob)
                    .map_err(|e| {
                        format!("cannot publish {blob}: {}", thaw_runtime::error_chain(&e))
                    })
            }
        };
        let memory = put("memory", memory).await?;
        let rest = async {
            let state = put("state", state).await?;
            let working_set = match tokio::fs::read(dir.join(WORKING_SET_FILE)).await {
                Ok(b) => Some(put("workingset", b).await?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(err(e)),
            };
            let blobs = StoredBlobs {
                state,
                memory: memory.clone(),
                working_set,
            };
            let mut meta = SnapshotMeta::read(dir).map_err(err)?;
            meta.store = Some(blobs.clone());
            meta.replace(dir).map_err(err)?;
            Ok(blobs)
        };
        let blobs = match rest.await {
            Ok(b) => b,
            Err(e) => {
                // Nothing half-published stays referenced: without its
                // manifests, the chunks go at the next collection.
                for name in ["memory", "state", "workingset"] {
                    let _ = self
                        .store
                        .delete(&tenant, &format!("{prefix}/{name}"))
                        .await;
                }
                return Err(e);
            }
        };
        tokio::fs::remove_file(dir.join(MEMORY_FILE))
            .await
            .map_err(err)?;
        Ok(blobs)
    }

    /// Publishes the working set now in `dir` (recorded or extended by the
    /// daemon) and records it in the snapshot's metadata; with `present`
    /// false, removes it from the store and the metadata (a refused one).
    pub async fn publish_working_set(&self, dir: &Path, present: bool) -> Result<(), String> {
        let mut meta = SnapshotMeta::read(dir).map_err(err)?;
        let Some(blobs) = meta.store.as_mut() else {
            return Ok(());
        };
        let name = working_set_name(&blobs.memory)
            .ok_or_else(|| format!("odd blob name {}", blobs.memory.name))?;
        if present {
            let bytes = tokio::fs::read(dir.join(WORKING_SET_FILE))
                .await
                .map_err(err)?;
            let tenant = blobs.memory.tenant.clone();
            let r = self
                .store
                .put(&tenant, &name, &bytes)
                .await
                .map_err(|e| thaw_runtime::error_chain(&e))?;
            blobs.working_set = Some(r.blob);
            if let Err(e) = meta.replace(dir) {
                // Not recorded (the snapshot was deleted while this ran, say):
                // nothing would ever remove the manifest just written.
                if let Err(d) = self.store.delete(&tenant, &name).await {
                    tracing::warn!(error = %thaw_runtime::error_chain(&d), "cannot remove an unrecorded working set from the store");
                }
                return Err(err(e));
            }
            return Ok(());
        } else {
            if blobs.working_set.take().is_none() {
                return Ok(());
            }
            self.store
                .delete(&blobs.memory.tenant, &name)
                .await
                .map_err(|e| thaw_runtime::error_chain(&e))?;
        }
        meta.replace(dir).map_err(err)
    }

    /// Makes sure the host has the stored snapshot's state and working set
    /// in `dir` (fetching whichever is missing from the store, checked
    /// against the recorded digest).
    pub async fn materialize(&self, dir: &Path, blobs: &StoredBlobs) -> Result<(), String> {
        let fetch = |file: &'static str, blob: Option<BlobRef>| {
            let path = dir.join(file);
            async move {
                let Some(blob) = blob.filter(|_| !path.is_file()) else {
                    return Ok(());
                };
                let bytes = self
                    .store
                    .get(&blob)
                    .await
                    .map_err(|e| thaw_runtime::error_chain(&e))?;
                write_atomic(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))
            }
        };
        // Both at once: each is a manifest and then its chunks, in parallel.
        let (state, ws) = tokio::join!(
            fetch(STATE_FILE, Some(blobs.state.clone())),
            fetch(WORKING_SET_FILE, blobs.working_set.clone())
        );
        state.and(ws)
    }

    /// Serves the page socket of one restore of the stored snapshot in
    /// `dir` (see [`SnapshotStore::serve_pages`]), once the host has its
    /// small files and the memory image's manifest is open: that work runs
    /// while the sandbox is built, and the restore waits for it only when
    /// it first asks (for the image's length, before it reads the state).
    pub fn serve_restore(
        self: &Arc<Self>,
        sock: tokio::net::UnixStream,
        dir: std::path::PathBuf,
        blobs: StoredBlobs,
        fault: MemoryFaultCell,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let ready = async {
                let (files, manifest) = tokio::join!(
                    this.materialize(&dir, &blobs),
                    this.memory_manifest(&blobs.memory)
                );
                files.and(manifest)
            }
            .await;
            match ready {
                Ok(m) => this.serve_pages(sock, m, fault),
                Err(e) => {
                    let _ = fault.set(MemoryFault {
                        message: format!("cannot prepare the restore: {e}"),
                        integrity: false,
                    });
                    tracing::warn!(snapshot = %dir.display(), error = %e, "cannot prepare a restore from the store");
                    let mut sock = sock;
                    let mut req = [0u8; 12];
                    if sock.read_exact(&mut req).await.is_ok() {
                        let _ = sock
                            .write_all(&thaw_runtime::control::pages::answer(Err(&e)))
                            .await;
                    }
                }
            }
        });
    }

    /// The memory image's manifest (authenticated, checked against the
    /// recorded digest), opened once and kept.
    pub async fn memory_manifest(&self, blob: &BlobRef) -> Result<Arc<Manifest>, String> {
        let key = (blob.name.clone(), blob.digest.clone());
        if let Some(m) = lock(&self.manifests).get(&key) {
            return Ok(m.clone());
        }
        let m = Arc::new(
            self.store
                .manifest(blob)
                .await
                .map_err(|e| thaw_runtime::error_chain(&e))?,
        );
        lock(&self.manifests).insert(key, m.clone());
        Ok(m)
    }

    /// Serves the page socket of one restore: ranges of the memory image
    /// `m`, until the sandbox closes its end. Errors are answered (the
    /// engine fails the restore, or the page server kills the runtime);
    /// the task ends with the socket.
    pub fn serve_pages(
        self: &Arc<Self>,
        sock: tokio::net::UnixStream,
        m: Arc<Manifest>,
        fault: MemoryFaultCell,
    ) {
        let this = self.clone();
        // The rest of the image is loaded into the memory tier in the
        // background (a few chunks at a time), so the misses of this
        // restore (and the next restores on this host) find it there
        // instead of waiting for a remote tier one request at a time.
        let loader = {
            let (this, m) = (self.clone(), m.clone());
            tokio::spawn(async move {
                use futures::StreamExt;
                let chunks = m.chunks.clone();
                futures::stream::iter(chunks)
                    .for_each_concurrent(BACKGROUND_LOADS, |c| {
                        let this = this.clone();
                        async move {
                            if let Err(e) = this.store.chunk(&c).await {
                                tracing::debug!(chunk = %c.id, error = %thaw_runtime::error_chain(&e), "background load failed");
                            }
                        }
                    })
                    .await;
            })
        };
        tokio::spawn(async move {
            let _loader = AbortOnDrop(loader);
            let mut sock = sock;
            let mut req = [0u8; 12];
            loop {
                if sock.read_exact(&mut req).await.is_err() {
                    return;
                }
                let (offset, len) = thaw_runtime::control::pages::parse_request(&req);
                let answer = if offset == thaw_runtime::control::pages::LENGTH {
                    thaw_runtime::control::pages::answer(Ok(&m.size.to_le_bytes()))
                } else if len > thaw_runtime::control::pages::MAX_REQUEST {
                    thaw_runtime::control::pages::answer(Err("request too large"))
                } else {
                    match this.store.read_range(&m, offset, len as usize).await {
                        Ok(b) => thaw_runtime::control::pages::answer(Ok(&b)),
                        Err(e) => {
                            // The next restore verifies the whole image
                            // first (and starts cold if it stays damaged).
                            lock(&this.damaged).insert(m.digest.clone());
                            let msg = thaw_runtime::error_chain(&e);
                            if e.is_integrity() {
                                Self::note_integrity(&this.integrity, &m.digest, &msg);
                            }
                            let _ = fault.set(MemoryFault {
                                message: msg.clone(),
                                integrity: e.is_integrity(),
                            });
                            tracing::warn!(blob = %m.name, offset, len, error = %msg, "cannot serve a restore's memory");
                            thaw_runtime::control::pages::answer(Err(&msg))
                        }
                    }
                };
                if sock.write_all(&answer).await.is_err() {
                    return;
                }
            }
        });
    }

    /// A reader of the memory image for the daemon's own use (writing
    /// working sets); must be used off the async runtime's threads.
    pub fn page_source(&self, m: Arc<Manifest>) -> StorePages {
        StorePages {
            store: self.store.clone(),
            manifest: m,
            handle: tokio::runtime::Handle::current(),
            integrity: self.integrity.clone(),
        }
    }

    /// Removes the blobs of a stored snapshot (their chunks go at the next
    /// collection unless other snapshots share them).
    pub async fn remove(&self, blobs: &StoredBlobs) {
        // The working set by its name, recorded or not: one published while
        // the snapshot was being deleted is not in the metadata read here.
        let working_set = working_set_name(&blobs.memory);
        let names = [
            Some(blobs.state.name.as_str()),
            Some(blobs.memory.name.as_str()),
            working_set.as_deref(),
        ];
        for name in names.into_iter().flatten() {
            if let Err(e) = self.store.delete(&blobs.memory.tenant, name).await {
                tracing::warn!(blob = %name, error = %thaw_runtime::error_chain(&e), "cannot remove a snapshot blob");
            }
        }
    }
}

/// Chunks a restore loads at once in the background.
const BACKGROUND_LOADS: usize = 4;

/// Aborts a task when dropped (a restore's background loading ends with
/// its page socket).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A stored memory image read synchronously (see
/// [`SnapshotStore::page_source`]).
pub struct StorePages {
    store: Arc<Store>,
    manifest: Arc<Manifest>,
    handle: tokio::runtime::Handle,
    integrity: Arc<Mutex<HashMap<String, String>>>,
}

impl std::fmt::Debug for StorePages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorePages")
            .field("blob", &self.manifest.name)
            .finish_non_exhaustive()
    }
}

impl PageSource for StorePages {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let bytes = self
            .handle
            .block_on(self.store.read_range(&self.manifest, offset, buf.len()))
            .map_err(|e| {
                if e.is_integrity() {
                    let why = thaw_runtime::error_chain(&e);
                    SnapshotStore::note_integrity(&self.integrity, &self.manifest.digest, &why);
                }
                std::io::Error::other(e)
            })?;
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.manifest.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_cannot_choose_its_tenant() {
        let mut f = crate::registry::test_record("f", "r");
        assert_eq!(tenant_of(&f), ROOT_TENANT);
        f.environment
            .insert("THAW_TENANT".into(), "someone-else".into());
        assert_eq!(tenant_of(&f), ROOT_TENANT);
    }
}
