//! Working sets: the pages a restored instance touches, recorded once and
//! installed in one batch before later restores resume (REAP, ASPLOS'21).
//!
//! Owns: the working-set file (`workingset.thaw`, beside the snapshot it
//! belongs to), writing it from a recorded list of page addresses, and
//! reading it back, refusing one that is truncated, corrupted or recorded
//! on another snapshot before a single page of it is used.
//!
//! The file is one header page and a body:
//!
//! ```text
//! header (4096 bytes): magic "THAWWSET", u32 version, u32 0,
//!   [32] snapshot id (BLAKE3 of the snapshot's state), u64 runs,
//!   u64 recorded pages, u64 data pages, [32] BLAKE3 of the body, zeros
//! body: runs        16 bytes each: u64 address, u32 pages, u32 flags
//!                   (1: zero pages; 2: copied in before the resume, not
//!                   installed through the userfaultfd)
//!       recorded    8 bytes each: the page addresses in first-fault order
//!       padding     to a page boundary
//!       data        the pages of the non-zero runs, in run order
//! ```
//!
//! Runs are in address order, so installing a run is one `UFFDIO_COPY`
//! (or `UFFDIO_ZEROPAGE` for pages that were never saved: the process
//! would have read zeros there). The file also carries the pages every lazy
//! restore copies in before the resume anyway (written pages of file
//! mappings, rseq areas: [`crate::restore::pages_before_resume`]), so that
//! a restore with a working set reads this one file and, until a miss,
//! nothing of the memory image. The fault order is kept for re-recording
//! (a drifted working set is the old order plus the new misses) and for
//! the store, which lays working-set pages out in their own chunks.
//!
//! Must not: hand out pages of a file whose checksum or snapshot id does
//! not match; trust a run outside the snapshot's lazily served memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::image::{FileBytes, ImageError, Snapshot};
use crate::PAGE_SIZE;

/// File name of a snapshot's working set, in the snapshot directory.
pub const WORKING_SET_FILE: &str = "workingset.thaw";
/// Format version of the working-set file.
pub const WS_VERSION: u32 = 1;

const MAGIC: &[u8; 8] = b"THAWWSET";
const HEADER: usize = PAGE_SIZE as usize;
const RUN_BYTES: usize = 16;
const FLAG_ZERO: u32 = 1;
const FLAG_DIRECT: u32 = 2;
/// Largest working set a reader accepts (a bigger count is corruption).
const MAX_PAGES: u64 = 16 << 20;

/// Why a working set cannot be written or used.
#[derive(Debug, Error)]
pub enum WsError {
    /// The file could not be read or written (including: it does not exist).
    #[error("Cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot's pages could not be read while writing the working set.
    #[error("Reading the snapshot for its working set")]
    Snapshot(#[from] ImageError),
    /// Not a working-set file, or of another format version.
    #[error("{path} is not a working-set file of version {WS_VERSION}")]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// Recorded on another snapshot.
    #[error("{path} was recorded on another snapshot (stale)")]
    Stale {
        /// The file.
        path: PathBuf,
    },
    /// Contents do not match the checksum, or the file is truncated.
    #[error("{path}: {why} (corrupted or tampered)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl WsError {
    /// Whether the file simply does not exist (nothing recorded yet).
    pub fn is_missing(&self) -> bool {
        matches!(self, WsError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// A run of working-set pages at consecutive addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsRun {
    /// Address of the first page.
    pub addr: u64,
    /// Number of pages.
    pub pages: u64,
    /// Offset of the run's bytes in the data; `None` for zero pages.
    pub data: Option<usize>,
    /// Copied in before the resume (outside the lazily served memory, or
    /// an rseq area), not installed through the userfaultfd.
    pub direct: bool,
}

/// What a written working set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WsSummary {
    /// Distinct pages of the lazily served memory (the working set proper).
    pub pages: u64,
    /// Pages copied in before every lazy restore's resume, carried along.
    pub direct_pages: u64,
    /// Of those, pages with data (the rest are zero pages).
    pub data_pages: u64,
    /// Runs (one install call each).
    pub runs: u64,
    /// Size of the file.
    pub file_bytes: u64,
}

/// A verified working set, ready to install.
#[derive(Debug)]
pub struct WorkingSet {
    runs: Vec<WsRun>,
    order: Vec<u64>,
    /// The whole file, as read (or mapped).
    data: FileBytes,
    /// Where the page data starts in it.
    data_at: usize,
    summary: WsSummary,
}

impl WorkingSet {
    /// Reads the working set at `path` with one read (through the
    /// snapshot's throttle, counted in its bytes read) and verifies it
    /// against `snap`: format, snapshot id, checksum, and every run inside
    /// the memory a lazy restore of `snap` serves.
    pub fn open(path: &Path, snap: &Snapshot) -> Result<Self, WsError> {
        let io = |source| WsError::Io {
            path: path.to_owned(),
            source,
        };
        let corrupt = |why: String| WsError::Corrupt {
            path: path.to_owned(),
            why,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < HEADER as u64 {
            return Err(corrupt(format!("{len} bytes: shorter than its header")));
        }
        let buf = snap.map_whole(&file, len).map_err(io)?;
        if &buf[..8] != MAGIC || le_u32(&buf[8..12]) != WS_VERSION {
            return Err(WsError::Format {
                path: path.to_owned(),
            });
        }
        if &buf[16..48] != snap.id() {
            return Err(WsError::Stale {
                path: path.to_owned(),
            });
        }
        let (nruns, nrecorded, ndata) = (
            le_u64(&buf[48..56]),
            le_u64(&buf[56..64]),
            le_u64(&buf[64..72]),
        );
        if nruns > MAX_PAGES || nrecorded > MAX_PAGES || ndata > MAX_PAGES {
            return Err(corrupt("impossible counts in the header".into()));
        }
        let data_at = data_offset(nruns, nrecorded);
        let expected = data_at as u64 + ndata * PAGE_SIZE;
        if len != expected {
            return Err(corrupt(format!("{len} bytes, expected {expected}")));
        }
        if blake3::hash(&buf[HEADER..]).as_bytes() != &buf[72..104] {
            return Err(corrupt("checksum mismatch".into()));
        }
        let ranges = crate::restore::lazy_ranges(snap);
        let before_resume = crate::restore::pages_before_resume(snap, &ranges);
        let mut runs = Vec::with_capacity(nruns as usize);
        let mut offset = 0usize;
        let mut last_end = 0u64;
        let (mut pages, mut direct_pages) = (0u64, 0u64);
        for i in 0..nruns as usize {
            let r = &buf[HEADER + i * RUN_BYTES..HEADER + (i + 1) * RUN_BYTES];
            let (addr, n, flags) = (
                le_u64(&r[..8]),
                u64::from(le_u32(&r[8..12])),
                le_u32(&r[12..16]),
            );
            let end = addr.checked_add(n * PAGE_SIZE).unwrap_or(0);
            if n == 0 || addr % PAGE_SIZE != 0 || addr < last_end || end <= addr {
                return Err(corrupt(format!("run {i} at {addr:#x} is out of order")));
            }
            let direct = flags & FLAG_DIRECT != 0;
            if direct {
                let all_listed =
                    (0..n).all(|p| before_resume.binary_search(&(addr + p * PAGE_SIZE)).is_ok());
                if !all_listed || flags & FLAG_ZERO != 0 {
                    return Err(corrupt(format!(
                        "run {i} at {addr:#x} is not among the pages copied before the resume"
                    )));
                }
                direct_pages += n;
            } else if !ranges.iter().any(|&(s, e)| s <= addr && end <= e) {
                return Err(corrupt(format!(
                    "run {i} at {addr:#x} is outside the snapshot's lazily served memory"
                )));
            } else {
                pages += n;
            }
            last_end = end;
            let data = if flags & FLAG_ZERO != 0 {
                None
            } else {
                let at = offset;
                offset += (n * PAGE_SIZE) as usize;
                Some(at)
            };
            runs.push(WsRun {
                addr,
                pages: n,
                data,
                direct,
            });
        }
        if offset as u64 != ndata * PAGE_SIZE {
            return Err(corrupt("runs and data disagree".into()));
        }
        let order_at = HEADER + nruns as usize * RUN_BYTES;
        let order = (0..nrecorded as usize)
            .map(|i| le_u64(&buf[order_at + i * 8..order_at + i * 8 + 8]))
            .collect();
        Ok(WorkingSet {
            runs,
            order,
            data: buf,
            data_at,
            summary: WsSummary {
                pages,
                direct_pages,
                data_pages: ndata,
                runs: nruns,
                file_bytes: len,
            },
        })
    }

    /// The runs, in address order.
    pub fn runs(&self) -> &[WsRun] {
        &self.runs
    }

    /// The bytes of `run` (empty for zero runs).
    pub fn bytes(&self, run: &WsRun) -> &[u8] {
        match run.data {
            Some(at) => {
                let at = self.data_at + at;
                &self.data[at..at + (run.pages * PAGE_SIZE) as usize]
            }
            None => &[],
        }
    }

    /// The bytes of the page holding `addr` if it is one of the pages
    /// copied in before the resume that this working set carries.
    pub fn direct_page(&self, addr: u64) -> Option<&[u8]> {
        // An address inside a page means that page (found by fuzzing: an
        // unaligned one used to slice past the page, or past the file).
        let addr = addr & !(PAGE_SIZE - 1);
        let i = self
            .runs
            .partition_point(|r| r.addr <= addr)
            .checked_sub(1)?;
        let r = &self.runs[i];
        if !r.direct || addr >= r.addr + r.pages * PAGE_SIZE {
            return None;
        }
        let at = self.data_at + r.data? + (addr - r.addr) as usize;
        Some(&self.data[at..at + PAGE_SIZE as usize])
    }

    /// The recorded page addresses, in first-fault order.
    pub fn order(&self) -> &[u64] {
        &self.order
    }

    /// What it holds.
    pub fn summary(&self) -> WsSummary {
        self.summary
    }
}

fn data_offset(runs: u64, recorded: u64) -> usize {
    let body = runs as usize * RUN_BYTES + recorded as usize * 8;
    HEADER + body.div_ceil(PAGE_SIZE as usize) * PAGE_SIZE as usize
}

/// Writes the working set of `snap` recorded as `recorded` (page
/// addresses in fault order; repeats, unaligned addresses and pages a lazy
/// restore does not serve are dropped) to `path`, atomically (a temporary
/// file renamed over it), readable by its owner only. Page contents come
/// from the snapshot's verified chunks; pages the snapshot did not save
/// become zero runs.
pub fn write(snap: &Snapshot, recorded: &[u64], path: &Path) -> Result<WsSummary, WsError> {
    let ranges = crate::restore::lazy_ranges(snap);
    let before_resume = crate::restore::pages_before_resume(snap, &ranges);
    let mut seen: std::collections::HashSet<u64> = before_resume.iter().copied().collect();
    let order: Vec<u64> = recorded
        .iter()
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| ranges.iter().any(|&(s, e)| (s..e).contains(a)))
        .filter(|a| seen.insert(*a))
        .collect();
    let idx = &snap.state().memory;
    // (address, flags) of every page, in address order.
    let mut all: Vec<(u64, u32)> = order
        .iter()
        .map(|&a| {
            (
                a,
                if idx.run_at(a).is_some() {
                    0
                } else {
                    FLAG_ZERO
                },
            )
        })
        .chain(before_resume.iter().map(|&a| (a, FLAG_DIRECT)))
        .collect();
    all.sort_unstable();
    // (addr, pages, flags)
    let mut runs: Vec<(u64, u64, u32)> = Vec::new();
    for &(a, flags) in &all {
        // A lazy run stays within one registered range (one install call).
        let same_range = |start: u64| {
            flags & FLAG_DIRECT != 0 || ranges.iter().any(|&(s, e)| s <= start && a < e)
        };
        match runs.last_mut() {
            Some((start, n, f))
                if *start + *n * PAGE_SIZE == a
                    && *f == flags
                    && same_range(*start)
                    && *n < u64::from(u32::MAX) =>
            {
                *n += 1
            }
            _ => runs.push((a, 1, flags)),
        }
    }
    let data_pages: u64 = runs
        .iter()
        .filter(|r| r.2 & FLAG_ZERO == 0)
        .map(|r| r.1)
        .sum();
    let data_at = data_offset(runs.len() as u64, order.len() as u64);
    let mut body = Vec::with_capacity(data_at - HEADER + (data_pages * PAGE_SIZE) as usize);
    for &(addr, n, flags) in &runs {
        body.extend_from_slice(&addr.to_le_bytes());
        body.extend_from_slice(&(n as u32).to_le_bytes());
        body.extend_from_slice(&flags.to_le_bytes());
    }
    for a in &order {
        body.extend_from_slice(&a.to_le_bytes());
    }
    body.resize(data_at - HEADER, 0);
    let chunk_pages = u64::from(idx.chunk_pages);
    let mut chunks: HashMap<u64, Vec<u8>> = HashMap::new();
    for &(addr, n, flags) in &runs {
        if flags & FLAG_ZERO != 0 {
            continue;
        }
        for p in 0..n {
            let a = addr + p * PAGE_SIZE;
            let run = idx.run_at(a).ok_or_else(|| WsError::Corrupt {
                path: path.to_owned(),
                why: format!("page {a:#x} vanished from the index"),
            })?;
            let image_page = run.image_page + (a - run.addr) / PAGE_SIZE;
            let chunk_no = image_page / chunk_pages;
            let chunk = match chunks.entry(chunk_no) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(snap.read_chunk(chunk_no as usize)?)
                }
            };
            let off = ((image_page % chunk_pages) * PAGE_SIZE) as usize;
            body.extend_from_slice(&chunk[off..off + PAGE_SIZE as usize]);
        }
    }
    let mut header = vec![0u8; HEADER];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&WS_VERSION.to_le_bytes());
    header[16..48].copy_from_slice(snap.id());
    header[48..56].copy_from_slice(&(runs.len() as u64).to_le_bytes());
    header[56..64].copy_from_slice(&(order.len() as u64).to_le_bytes());
    header[64..72].copy_from_slice(&data_pages.to_le_bytes());
    header[72..104].copy_from_slice(blake3::hash(&body).as_bytes());

    // A temporary file of its own (never shared with a concurrent writer
    // of the same working set), fsynced, renamed, directory fsynced.
    thaw_persist::write_with(path, 0o600, |f| {
        f.write_all(&header)?;
        f.write_all(&body)
    })
    .map_err(|e| WsError::Io {
        path: e.path,
        source: e.source,
    })?;
    Ok(WsSummary {
        pages: order.len() as u64,
        direct_pages: before_resume.len() as u64,
        data_pages,
        runs: runs.len() as u64,
        file_bytes: (HEADER + body.len()) as u64,
    })
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4]))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]))
}
