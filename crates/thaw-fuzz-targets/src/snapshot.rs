//! Snapshot state and memory image headers (`thaw-snapshot`'s image
//! format) and the daemon's snapshot metadata (`thawd`'s
//! `thaw-snapshot.json`): what a restore reads from a snapshot directory
//! before it acts on it.

use std::path::PathBuf;
use std::sync::OnceLock;

use thaw_snapshot::image::{PageSource, Snapshot, STATE_FILE};
use thaw_snapshot::state::FORMAT_VERSION;
use thaw_snapshot::PAGE_SIZE;
use thawd::snapshots::SnapshotMeta;

/// Flag: wrap the state part in a valid header (magic, version, length,
/// BLAKE3 of the body), as [`thaw_snapshot::image::write`] does.
pub const FIX_STATE_HEADER: u8 = 1;
/// Flag: put a valid memory image header page (magic, version, page size,
/// page count) before the memory part, padded to whole pages.
pub const FIX_MEMORY_HEADER: u8 = 2;

const PAGE: usize = PAGE_SIZE as usize;

/// A memory image held in memory.
#[derive(Debug)]
struct Bytes(Vec<u8>);

impl PageSource for Bytes {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.0.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

/// This process's snapshot directory (the files are replaced every run).
pub(crate) fn scratch_dir() -> &'static PathBuf {
    static D: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &D.get_or_init(|| {
        let dir = crate::tempdir();
        let path = dir.path().to_owned();
        (dir, path)
    })
    .1
}

/// The state file around `body`, as the writer lays it out.
pub fn state_file(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(56 + body.len());
    out.extend_from_slice(b"THAWSTAT");
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out.extend_from_slice(body);
    out
}

/// The memory image holding `data`, padded to whole pages.
pub fn memory_image(data: &[u8]) -> Vec<u8> {
    let pages = data.len().div_ceil(PAGE);
    let mut out = vec![0u8; PAGE];
    out[..8].copy_from_slice(b"THAWMEM\0");
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(PAGE as u32).to_le_bytes());
    out[16..24].copy_from_slice(&(pages as u64).to_le_bytes());
    out.extend_from_slice(data);
    out.resize(PAGE * (pages + 1), 0);
    out
}

/// `data` is a flags byte ([`FIX_STATE_HEADER`], [`FIX_MEMORY_HEADER`]),
/// then the state file (or body) with a u16 LE length prefix, then the
/// memory image (or its pages). Opens the snapshot, and if it opens,
/// verifies and reads its pages, looks pages up in its index and computes
/// what a lazy restore would serve. Also reads the state part as the
/// daemon's snapshot metadata.
pub fn snapshot_state(data: &[u8]) {
    let (flags, rest) = crate::flags(data);
    let (state, memory) = crate::split_prefixed(rest);
    let dir = scratch_dir();
    let state_bytes = if flags & FIX_STATE_HEADER != 0 {
        state_file(state)
    } else {
        state.to_vec()
    };
    let memory = if flags & FIX_MEMORY_HEADER != 0 {
        memory_image(memory)
    } else {
        memory.to_vec()
    };
    std::fs::write(dir.join(STATE_FILE), &state_bytes).expect("write the state file");
    std::fs::write(dir.join(thawd::snapshots::META_FILE), state).expect("write the metadata");
    let _ = SnapshotMeta::read(dir);
    let _ = thaw_snapshot::image::read_state(&dir.join(STATE_FILE));

    let Ok(snap) = Snapshot::open_with(dir, Box::new(Bytes(memory))) else {
        return;
    };
    let idx = &snap.state().memory;
    let verified = snap.verify().is_ok();
    match snap.read_all_pages() {
        Ok(pages) => assert_eq!(pages.len() as u64, idx.data_pages * PAGE_SIZE),
        Err(_) => assert!(!verified, "a verified snapshot failed to read"),
    }
    for r in idx.runs.iter().take(64) {
        for addr in [
            r.addr,
            r.addr.wrapping_sub(1),
            r.addr.saturating_add(PAGE_SIZE),
        ] {
            if let Some(found) = idx.run_at(addr) {
                assert!(found.addr <= addr, "run_at found a run after the address");
            }
        }
    }
    let ranges = thaw_snapshot::restore::lazy_ranges(&snap);
    let _ = thaw_snapshot::restore::pages_before_resume(&snap, &ranges);
}
