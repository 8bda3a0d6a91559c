//! The on-disk snapshot format.
//!
//! Owns: writing and reading a snapshot directory, and refusing one that is
//! truncated, corrupted, or of another format version, before anything acts
//! on it.
//!
//! A snapshot is a directory of two files:
//!
//! * `state.thaw`: a 56-byte header (magic `THAWSTAT`, format version, body
//!   length, BLAKE3 of the body) and a JSON body, the [`SnapshotState`]
//!   (self-describing, small: threads, descriptors, layout, page index).
//! * `memory.thaw`: one header page (magic `THAWMEM\0`, format version, page
//!   size, page count) and then the saved pages, page-aligned, in address
//!   order. The page index in the state says which address each page
//!   belongs to; each chunk of [`CHUNK_PAGES`] pages has its BLAKE3 in the
//!   state, so a reader verifies a chunk the first time it uses it (eager
//!   restores verify all; lazy ones as pages are served), and the store can
//!   later cut the file along the same boundaries.
//!
//! Must not: interpret the state (that is [`crate::restore`]).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::state::{MemoryIndex, SnapshotState, FORMAT_VERSION};
use crate::PAGE_SIZE;

/// File name of the state file.
pub const STATE_FILE: &str = "state.thaw";
/// File name of the memory image.
pub const MEMORY_FILE: &str = "memory.thaw";
/// Pages per integrity chunk (1 MiB).
pub const CHUNK_PAGES: u32 = 256;
/// Largest state body a reader accepts; a bigger length field means a
/// corrupt header, not a bigger process.
pub const MAX_STATE_BYTES: u64 = 64 << 20;

const STATE_MAGIC: &[u8; 8] = b"THAWSTAT";
const MEMORY_MAGIC: &[u8; 8] = b"THAWMEM\0";
const STATE_HEADER: usize = 8 + 4 + 4 + 8 + 32;
const PAGE: usize = PAGE_SIZE as usize;

/// Why a snapshot cannot be written or read.
#[derive(Debug, Error)]
pub enum ImageError {
    /// A file could not be read or written.
    #[error("Cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the expected magic bytes.
    #[error("{path} is not a thaw snapshot file (bad magic)")]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// Written by another format version.
    #[error("{path} has snapshot format version {found}; this build reads version {supported}")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// Shorter (or longer) than its header says.
    #[error("{path} is truncated or padded: {found} bytes, expected {expected}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Size the header implies.
        expected: u64,
        /// Actual size.
        found: u64,
    },
    /// Contents do not match their checksum.
    #[error("{path}: checksum mismatch in {what} (corrupted or tampered)")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Which part (`"state"`, `"memory chunk 3"`).
        what: String,
    },
    /// The state body is not a valid state.
    #[error("{path}: malformed state")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The state and the memory image disagree.
    #[error("{path}: {why}")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// What disagrees.
        why: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Splits data pages into chunks and hashes each.
pub fn chunk_hashes(data: &[u8]) -> Vec<String> {
    data.chunks(CHUNK_PAGES as usize * PAGE)
        .map(|c| blake3::hash(c).to_hex().to_string())
        .collect()
}

/// Writes a snapshot into `dir` (created if missing; existing snapshot
/// files are replaced atomically, state last). `data` holds the data pages
/// the state's [`MemoryIndex`] describes; its chunk hashes must already be
/// in the state ([`chunk_hashes`]).
pub fn write(dir: &Path, state: &SnapshotState, data: &[u8]) -> Result<(), ImageError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let persist = |e: thaw_persist::PersistError| ImageError::Io {
        path: e.path,
        source: e.source,
    };
    let mut header = vec![0u8; PAGE];
    header[..8].copy_from_slice(MEMORY_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&(PAGE as u32).to_le_bytes());
    header[16..24].copy_from_slice(&state.memory.data_pages.to_le_bytes());
    thaw_persist::write_with(&dir.join(MEMORY_FILE), 0o600, |f| {
        f.write_all(&header)?;
        f.write_all(data)
    })
    .map_err(persist)?;

    let body = serde_json::to_vec(state).map_err(|source| ImageError::Malformed {
        path: dir.join(STATE_FILE),
        source,
    })?;
    let mut header = Vec::with_capacity(STATE_HEADER);
    header.extend_from_slice(STATE_MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&(body.len() as u64).to_le_bytes());
    header.extend_from_slice(blake3::hash(&body).as_bytes());
    thaw_persist::write_with(&dir.join(STATE_FILE), 0o600, |f| {
        f.write_all(&header)?;
        f.write_all(&body)
    })
    .map_err(persist)?;
    Ok(())
}

/// A slower read path, standing in for a remote tier in benchmarks: each
/// read of the snapshot's files first waits `latency_us` plus the time
/// `bytes_per_sec` takes for its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadThrottle {
    /// Fixed cost of every read, microseconds.
    pub latency_us: u64,
    /// Bandwidth; 0 means unlimited.
    pub bytes_per_sec: u64,
}

impl ReadThrottle {
    /// Waits as long as reading `bytes` takes on this path.
    pub fn wait(&self, bytes: u64) {
        let transfer_us = bytes
            .saturating_mul(1_000_000)
            .checked_div(self.bytes_per_sec)
            .unwrap_or(0);
        let us = self.latency_us.saturating_add(transfer_us);
        if us > 0 {
            std::thread::sleep(std::time::Duration::from_micros(us));
        }
    }
}

/// A file's bytes, read into memory or mapped.
#[derive(Debug)]
pub enum FileBytes {
    /// Read into memory.
    Read(Vec<u8>),
    /// Mapped read-only.
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Read(v) => v,
            FileBytes::Mapped(m) => m,
        }
    }
}

/// Maps `len` bytes of `file` read-only and populated.
#[allow(unsafe_code)]
fn map_populated(file: &File, len: usize) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the mapping is read-only and private; thaw never modifies a
    // snapshot's files in place (they are written to a temporary file and
    // renamed over the old one, which leaves an existing mapping on the old
    // inode intact), and they are readable by root only, so nothing else
    // changes or truncates them under the mapping.
    unsafe { memmap2::MmapOptions::new().len(len).populate().map(file) }
}

/// Where a snapshot's memory image is read from: its file, or another
/// reader of the same bytes (the daemon's snapshot store, across a socket).
/// Offsets are into the memory image as [`write`] lays it out (header page
/// first). Whatever it returns is checked against the state's chunk hashes
/// before use.
pub trait PageSource: std::fmt::Debug + Send + Sync {
    /// Fills `buf` with the image's bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// The image's length in bytes.
    fn size(&self) -> std::io::Result<u64>;
}

impl PageSource for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.read_exact_at(buf, offset)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// An opened, header-checked snapshot.
#[derive(Debug)]
pub struct Snapshot {
    dir: PathBuf,
    state: SnapshotState,
    /// BLAKE3 of the state body: names this snapshot (a working set
    /// recorded on another one carries another id).
    id: [u8; 32],
    memory: Box<dyn PageSource>,
    /// Every data page, read and verified ahead of a restore.
    preloaded: std::sync::Mutex<Option<Vec<u8>>>,
    throttle: Option<ReadThrottle>,
    /// Bytes read from the snapshot's files so far.
    bytes_read: std::sync::atomic::AtomicU64,
}

impl Snapshot {
    /// Opens the snapshot in `dir`: checks both headers, the state checksum,
    /// and that the memory image has exactly the pages the state indexes.
    /// Page contents are verified per chunk as they are read.
    pub fn open(dir: &Path) -> Result<Self, ImageError> {
        let mem_path = dir.join(MEMORY_FILE);
        Self::open_parts(dir, || {
            let f = File::open(&mem_path).map_err(io_err(&mem_path))?;
            Ok(Box::new(f))
        })
    }

    /// Opens the snapshot whose state is in `dir` and whose memory image
    /// `memory` reads, with the same checks as [`Snapshot::open`].
    pub fn open_with(dir: &Path, memory: Box<dyn PageSource>) -> Result<Self, ImageError> {
        Self::open_parts(dir, || Ok(memory))
    }

    /// The state first (its errors name the state file), then the memory
    /// image `memory` opens.
    fn open_parts(
        dir: &Path,
        memory: impl FnOnce() -> Result<Box<dyn PageSource>, ImageError>,
    ) -> Result<Self, ImageError> {
        let (state, id) = read_state_and_id(&dir.join(STATE_FILE))?;
        let memory = memory()?;
        let mem_path = dir.join(MEMORY_FILE);
        let mut header = vec![0u8; PAGE];
        let len = memory.size().map_err(io_err(&mem_path))?;
        if len < PAGE as u64 {
            return Err(ImageError::Truncated {
                path: mem_path,
                expected: PAGE as u64,
                found: len,
            });
        }
        memory.read_at(&mut header, 0).map_err(io_err(&mem_path))?;
        if &header[..8] != MEMORY_MAGIC {
            return Err(ImageError::BadMagic { path: mem_path });
        }
        let version = le_u32(&header[8..12]);
        if version != FORMAT_VERSION {
            return Err(ImageError::Version {
                path: mem_path,
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let pages = le_u64(&header[16..24]);
        if le_u32(&header[12..16]) as usize != PAGE || pages != state.memory.data_pages {
            return Err(ImageError::Inconsistent {
                path: mem_path,
                why: format!(
                    "memory image holds {pages} pages, the state indexes {}",
                    state.memory.data_pages
                ),
            });
        }
        // A page count no file can hold (the state is checksummed, not
        // authenticated) must not wrap around to a plausible size.
        let expected = pages
            .checked_add(1)
            .and_then(|p| p.checked_mul(PAGE_SIZE))
            .unwrap_or(u64::MAX);
        if len != expected {
            return Err(ImageError::Truncated {
                path: mem_path,
                expected,
                found: len,
            });
        }
        check_index(&state.memory, &mem_path)?;
        Ok(Self {
            dir: dir.to_owned(),
            state,
            id,
            memory,
            preloaded: std::sync::Mutex::new(None),
            throttle: None,
            bytes_read: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Makes every later read of this snapshot's files go through
    /// `throttle` (benchmarks: a stand-in for a remote tier).
    pub fn set_throttle(&mut self, throttle: Option<ReadThrottle>) {
        self.throttle = throttle;
    }

    /// This snapshot's id: the BLAKE3 of its state.
    pub fn id(&self) -> &[u8; 32] {
        &self.id
    }

    /// Bytes read from the snapshot's files (memory image and working
    /// set) since it was opened.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The whole of `file` (`len` bytes), counted in the bytes read: mapped
    /// with `MAP_POPULATE` (one pass over the page cache, or one sequential
    /// read when the file is not cached, and no copy into fresh memory,
    /// which costs about 0.7 ms per MiB in page faults on these machines),
    /// or, through a throttle, read.
    pub(crate) fn map_whole(&self, file: &File, len: u64) -> std::io::Result<FileBytes> {
        let n = usize::try_from(len).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let bytes = if let Some(t) = &self.throttle {
            t.wait(len);
            let mut buf = Vec::with_capacity(n);
            file.take(len).read_to_end(&mut buf)?;
            if buf.len() != n {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            FileBytes::Read(buf)
        } else {
            FileBytes::Mapped(map_populated(file, n)?)
        };
        self.bytes_read
            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        Ok(bytes)
    }

    /// Reads `buf.len()` bytes of `file` at `offset`, through the throttle,
    /// counting them.
    pub(crate) fn read_at(
        &self,
        file: &dyn PageSource,
        buf: &mut [u8],
        offset: u64,
    ) -> std::io::Result<()> {
        if let Some(t) = &self.throttle {
            t.wait(buf.len() as u64);
        }
        file.read_at(buf, offset)?;
        self.bytes_read
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The snapshot directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state.
    pub fn state(&self) -> &SnapshotState {
        &self.state
    }

    /// Reads and verifies chunk `i` of the memory image.
    pub fn read_chunk(&self, i: usize) -> Result<Vec<u8>, ImageError> {
        let idx = &self.state.memory;
        let path = self.dir.join(MEMORY_FILE);
        let first = i as u64 * u64::from(idx.chunk_pages);
        let pages = (idx.data_pages - first).min(u64::from(idx.chunk_pages));
        let mut buf = vec![0u8; (pages * PAGE_SIZE) as usize];
        self.read_at(self.memory.as_ref(), &mut buf, (first + 1) * PAGE_SIZE)
            .map_err(io_err(&path))?;
        let want = idx
            .chunk_hashes
            .get(i)
            .ok_or_else(|| ImageError::Inconsistent {
                path: path.clone(),
                why: format!("no hash for chunk {i}"),
            })?;
        if blake3::hash(&buf).to_hex().as_str() != want {
            return Err(ImageError::Checksum {
                path,
                what: format!("memory chunk {i}"),
            });
        }
        Ok(buf)
    }

    /// Verifies every chunk without keeping the pages (a lazy restore only
    /// verifies the chunks it serves; a caller that wants a whole snapshot
    /// checked up front, once, uses this).
    pub fn verify(&self) -> Result<(), ImageError> {
        for i in 0..self.state.memory.chunk_hashes.len() {
            self.read_chunk(i)?;
        }
        Ok(())
    }

    /// Reads and verifies every data page now and keeps them, so that an
    /// eager restore started later does not wait for the disk or the hashes
    /// (a prepared standby sandbox does this before it is needed).
    pub fn preload(&self) -> Result<(), ImageError> {
        let pages = self.read_all_pages()?;
        *self.preloaded.lock().unwrap_or_else(|e| e.into_inner()) = Some(pages);
        Ok(())
    }

    /// Every data page, verified: the preloaded copy if there is one
    /// (handed over, not copied; the next call reads again), else read now.
    pub fn take_pages(&self) -> Result<Vec<u8>, ImageError> {
        let preloaded = self
            .preloaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match preloaded {
            Some(p) => Ok(p),
            None => self.read_all_pages(),
        }
    }

    /// Reads and verifies every data page (for eager restores).
    pub fn read_all_pages(&self) -> Result<Vec<u8>, ImageError> {
        let mut all = Vec::with_capacity((self.state.memory.data_pages * PAGE_SIZE) as usize);
        for i in 0..self.state.memory.chunk_hashes.len() {
            all.extend_from_slice(&self.read_chunk(i)?);
        }
        Ok(all)
    }
}

/// Reads and verifies a state file.
pub fn read_state(path: &Path) -> Result<SnapshotState, ImageError> {
    read_state_and_id(path).map(|(s, _)| s)
}

/// Reads and verifies a state file; also returns the BLAKE3 of its body.
fn read_state_and_id(path: &Path) -> Result<(SnapshotState, [u8; 32]), ImageError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    let mut header = [0u8; STATE_HEADER];
    if len < STATE_HEADER as u64 {
        return Err(ImageError::Truncated {
            path: path.to_owned(),
            expected: STATE_HEADER as u64,
            found: len,
        });
    }
    f.read_exact(&mut header).map_err(io_err(path))?;
    if &header[..8] != STATE_MAGIC {
        return Err(ImageError::BadMagic {
            path: path.to_owned(),
        });
    }
    let version = le_u32(&header[8..12]);
    if version != FORMAT_VERSION {
        return Err(ImageError::Version {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let body_len = le_u64(&header[16..24]);
    // Saturating: a length field near 2^64 must not wrap (found by fuzzing:
    // an overflow panic in debug builds).
    let expected = (STATE_HEADER as u64).saturating_add(body_len);
    if body_len > MAX_STATE_BYTES || len != expected {
        return Err(ImageError::Truncated {
            path: path.to_owned(),
            expected,
            found: len,
        });
    }
    let mut body = vec![0u8; body_len as usize];
    f.read_exact(&mut body).map_err(io_err(path))?;
    let id = *blake3::hash(&body).as_bytes();
    if id != header[24..56] {
        return Err(ImageError::Checksum {
            path: path.to_owned(),
            what: "state".into(),
        });
    }
    let state: SnapshotState =
        serde_json::from_slice(&body).map_err(|source| ImageError::Malformed {
            path: path.to_owned(),
            source,
        })?;
    if state.format_version != version {
        return Err(ImageError::Inconsistent {
            path: path.to_owned(),
            why: "header and body disagree on the format version".into(),
        });
    }
    Ok((state, id))
}

/// Checks that the page index is in address order without overlaps, that
/// its runs cover the image's pages exactly once, and that there is one
/// hash per chunk.
fn check_index(idx: &MemoryIndex, path: &Path) -> Result<(), ImageError> {
    let bad = |why: String| ImageError::Inconsistent {
        path: path.to_owned(),
        why,
    };
    if idx.chunk_pages == 0 {
        return Err(bad("chunk size 0".into()));
    }
    let mut last_end = 0u64;
    for r in &idx.runs {
        if r.pages == 0 || r.addr < last_end || r.addr % PAGE_SIZE != 0 {
            return Err(bad(format!("page run at {:#x} is out of order", r.addr)));
        }
        last_end = r
            .pages
            .checked_mul(PAGE_SIZE)
            .and_then(|bytes| r.addr.checked_add(bytes))
            .ok_or_else(|| {
                bad(format!(
                    "page run at {:#x} ends past the address space",
                    r.addr
                ))
            })?;
    }
    let mut by_image: Vec<(u64, u64)> = idx.runs.iter().map(|r| (r.image_page, r.pages)).collect();
    by_image.sort_unstable();
    let mut next_page = 0u64;
    for (first, pages) in by_image {
        if first != next_page {
            return Err(bad(format!(
                "image pages {next_page}..{first} are not indexed, or indexed twice"
            )));
        }
        next_page = next_page
            .checked_add(pages)
            .ok_or_else(|| bad("page runs hold more than 2^64 pages".into()))?;
    }
    if next_page != idx.data_pages {
        return Err(bad(format!(
            "page runs cover {next_page} pages, the image holds {}",
            idx.data_pages
        )));
    }
    let chunks = idx.data_pages.div_ceil(u64::from(idx.chunk_pages));
    if idx.chunk_hashes.len() as u64 != chunks {
        return Err(bad(format!(
            "{} chunk hashes for {chunks} chunks",
            idx.chunk_hashes.len()
        )));
    }
    Ok(())
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4]))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state header whose body length is near 2^64 is refused as
    /// truncated (`fuzz/regressions/snapshot_state/state-length-near-2-64`).
    #[test]
    fn a_state_length_near_2_64_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        let mut file = Vec::new();
        file.extend_from_slice(STATE_MAGIC);
        file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        file.extend_from_slice(&0u32.to_le_bytes());
        file.extend_from_slice(&u64::MAX.to_le_bytes());
        file.extend_from_slice(&[0u8; 32]);
        std::fs::write(&path, &file).unwrap();
        let e = read_state(&path).unwrap_err();
        assert!(
            matches!(
                e,
                ImageError::Truncated {
                    expected: u64::MAX,
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
