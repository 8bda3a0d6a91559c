//! Reading another process's memory, page-aware.
//!
//! Owns: copying memory out of a (normally frozen) process with
//! `process_vm_readv` in large batches, falling back to `pread` on
//! `/proc/<pid>/mem` for pages `process_vm_readv` refuses (e.g. `PROT_NONE`
//! mappings, which `/proc/<pid>/mem` reads with `FOLL_FORCE`); and
//! [`ProcessMemory::capture`], which reads only the pages `pagemap` says
//! exist and sorts them into absent, zero and data pages.
//!
//! Must not: write to the process, or decide which mappings to capture
//! (callers pass ranges, normally whole VMAs from [`crate::proc::read_maps`]).
//!
//! Reading needs `PTRACE_MODE_ATTACH` rights on the target (root, or the
//! target's parent under the default Yama-less policy). The contents are
//! consistent only while the process is stopped ([`crate::ptrace::freeze`]).

use std::fs::File;
use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;
use thiserror::Error;
use tracing::debug;

use crate::proc::{Pagemap, PagemapEntry, ProcError};
use crate::PAGE_SIZE;

/// Most iovecs one `process_vm_readv` call accepts (`UIO_MAXIOV`).
const MAX_IOVECS: usize = 1024;
/// Pages per pagemap read and per capture batch (32 MiB of address space),
/// bounding the memory a capture uses besides its result.
const WINDOW_PAGES: u64 = 8192;
const PAGE: usize = PAGE_SIZE as usize;

/// Errors reading process memory.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// Opening `/proc/<pid>/mem` failed.
    #[error("Opening {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading the page map failed.
    #[error("Reading the page map of process {pid}")]
    Pagemap {
        /// The process.
        pid: Pid,
        /// Why.
        #[source]
        source: ProcError,
    },
    /// Both `process_vm_readv` and `/proc/<pid>/mem` failed at `addr`.
    #[error("Reading {len} bytes at {addr:#x} of process {pid}")]
    Read {
        /// The process.
        pid: Pid,
        /// First address that could not be read.
        addr: u64,
        /// Bytes that were left to read.
        len: usize,
        /// The `/proc/<pid>/mem` error.
        #[source]
        source: std::io::Error,
    },
    /// The range is not page-aligned or is inverted.
    #[error("Range {start:#x}-{end:#x} is not page-aligned")]
    Unaligned {
        /// Start.
        start: u64,
        /// End.
        end: u64,
    },
}

/// Which populated pages [`ProcessMemory::capture`] copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSelect {
    /// Every present or swapped page.
    AllPopulated,
    /// Only private anonymous pages: skip pages pagemap marks as file pages
    /// or shared memory (bit 61), which a restore maps from their file or
    /// shared object instead. In a private file mapping, this keeps exactly
    /// the pages the process wrote (copied on write).
    PrivateOnly,
}

/// What a page of a captured range turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// Not populated (never touched, or discarded): restores as it was
    /// absent (zero for anonymous memory, file contents for file mappings).
    Absent,
    /// Populated but excluded by [`PageSelect::PrivateOnly`].
    Skipped,
    /// Populated, and all bytes are zero: store no data.
    Zero,
    /// Populated with data: the next page of [`CapturedRange::data`].
    Data,
}

/// Counts of each [`PageKind`] in a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CaptureStats {
    /// Absent pages.
    pub absent: u64,
    /// Skipped pages.
    pub skipped: u64,
    /// Zero pages.
    pub zero: u64,
    /// Data pages.
    pub data: u64,
}

/// The pages of one address range, classified, with the data pages' bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedRange {
    /// First address (page-aligned).
    pub start: u64,
    /// One kind per page, in address order.
    pub kinds: Vec<PageKind>,
    /// The contents of the [`PageKind::Data`] pages, concatenated in address
    /// order, one [`PAGE_SIZE`] block each.
    pub data: Vec<u8>,
}

impl CapturedRange {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.start + self.kinds.len() as u64 * PAGE_SIZE
    }

    /// Counts the pages of each kind.
    pub fn stats(&self) -> CaptureStats {
        let mut s = CaptureStats::default();
        for k in &self.kinds {
            match k {
                PageKind::Absent => s.absent += 1,
                PageKind::Skipped => s.skipped += 1,
                PageKind::Zero => s.zero += 1,
                PageKind::Data => s.data += 1,
            }
        }
        s
    }

    /// The kind of the page holding `addr`, if inside the range.
    pub fn kind_at(&self, addr: u64) -> Option<PageKind> {
        if addr < self.start {
            return None;
        }
        let idx = usize::try_from((addr - self.start) / PAGE_SIZE).ok()?;
        self.kinds.get(idx).copied()
    }

    /// Iterates over `(page address, contents)` of the data pages.
    pub fn data_pages(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        let start = self.start;
        self.kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| **k == PageKind::Data)
            .zip(self.data.chunks_exact(PAGE))
            .map(move |((i, _), bytes)| (start + i as u64 * PAGE_SIZE, bytes))
    }
}

/// Whether a page (or any buffer) is all zero bytes.
pub fn is_zero(bytes: &[u8]) -> bool {
    // OR-folding fixed-size blocks vectorises well and exits early on the
    // first non-zero block.
    let mut blocks = bytes.chunks_exact(256);
    for block in &mut blocks {
        if block.iter().fold(0u8, |acc, b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|b| *b == 0)
}

/// One process's memory, open for reading.
#[derive(Debug)]
pub struct ProcessMemory {
    pid: Pid,
    mem: File,
    mem_path: PathBuf,
    pagemap: Pagemap,
}

impl ProcessMemory {
    /// Opens `/proc/<pid>/mem` and `/proc/<pid>/pagemap`.
    pub fn open(pid: Pid) -> Result<Self, MemoryError> {
        let mem_path = PathBuf::from(format!("/proc/{}/mem", pid.as_raw()));
        let mem = File::open(&mem_path).map_err(|source| MemoryError::Open {
            path: mem_path.clone(),
            source,
        })?;
        let pagemap = Pagemap::open(pid).map_err(|source| MemoryError::Pagemap { pid, source })?;
        Ok(Self {
            pid,
            mem,
            mem_path,
            pagemap,
        })
    }

    /// The process id.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The page map entries of `[start, end)` (page-aligned).
    pub fn pagemap(&self, start: u64, end: u64) -> Result<Vec<PagemapEntry>, MemoryError> {
        check_aligned(start, end)?;
        self.pagemap
            .read(start, end)
            .map_err(|source| MemoryError::Pagemap {
                pid: self.pid,
                source,
            })
    }

    /// Fills `buf` with the process's memory at `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len();
        self.read_runs(&[(addr, len)], buf)
    }

    /// Fills `buf` from `/proc/<pid>/mem` only (the fallback path; exposed
    /// so tests and callers can compare the two).
    pub fn read_via_proc_mem(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.mem
            .read_exact_at(buf, addr)
            .map_err(|source| MemoryError::Read {
                pid: self.pid,
                addr,
                len: buf.len(),
                source,
            })
    }

    /// Reads several `(address, length)` runs into `buf`, back to back
    /// (`buf.len()` must equal the sum of the lengths), with as few
    /// `process_vm_readv` calls as the iovec limit allows. A run the call
    /// cannot read is finished through `/proc/<pid>/mem`.
    ///
    /// # Panics
    ///
    /// If `buf.len()` differs from the total length of `runs` (a caller bug).
    pub fn read_runs(&self, runs: &[(u64, usize)], buf: &mut [u8]) -> Result<(), MemoryError> {
        let total: usize = runs.iter().map(|r| r.1).sum();
        assert_eq!(
            total,
            buf.len(),
            "read_runs: buffer size must match the runs"
        );
        let mut run_idx = 0;
        let mut run_done = 0; // bytes of runs[run_idx] already read
        let mut out = 0; // bytes of buf filled
        while run_idx < runs.len() {
            // Build one batch of remote iovecs starting at the current run.
            let mut remote = Vec::with_capacity(MAX_IOVECS.min(runs.len() - run_idx));
            let mut batch_len = 0;
            for (i, &(addr, len)) in runs[run_idx..].iter().enumerate() {
                if remote.len() == MAX_IOVECS {
                    break;
                }
                let skip = if i == 0 { run_done } else { 0 };
                if len == skip {
                    continue;
                }
                remote.push(RemoteIoVec {
                    base: usize::try_from(addr + skip as u64).unwrap_or(usize::MAX),
                    len: len - skip,
                });
                batch_len += len - skip;
            }
            if batch_len == 0 {
                break;
            }
            let got = {
                let mut local = [IoSliceMut::new(&mut buf[out..out + batch_len])];
                // Any error (EFAULT on the first iovec, EPERM or ENOSYS where
                // the call is unavailable) reads as "nothing copied": the
                // /proc/<pid>/mem fallback below then reports the real cause.
                process_vm_readv(self.pid, &mut local, &remote).unwrap_or(0)
            };
            // Advance over what was read.
            let mut left = got;
            out += got;
            while left > 0 {
                let remaining = runs[run_idx].1 - run_done;
                if left >= remaining {
                    left -= remaining;
                    run_idx += 1;
                    run_done = 0;
                } else {
                    run_done += left;
                    left = 0;
                }
            }
            if got < batch_len {
                // The call stopped inside the current run: finish that run
                // through /proc/<pid>/mem, then go back to batching.
                let (addr, len) = runs[run_idx];
                let rest = len - run_done;
                let at = addr + run_done as u64;
                debug!(
                    pid = self.pid.as_raw(),
                    addr = at,
                    len = rest,
                    "falling back to /proc/pid/mem"
                );
                self.read_via_proc_mem(at, &mut buf[out..out + rest])?;
                out += rest;
                run_idx += 1;
                run_done = 0;
            }
        }
        Ok(())
    }

    /// Captures `[start, end)`: reads the page map, copies every populated
    /// page selected by `select` in batched reads, and classifies each page
    /// as absent, skipped, zero or data. Only data pages keep their bytes.
    pub fn capture(
        &self,
        start: u64,
        end: u64,
        select: PageSelect,
    ) -> Result<CapturedRange, MemoryError> {
        check_aligned(start, end)?;
        let mut kinds = Vec::with_capacity(usize::try_from((end - start) / PAGE_SIZE).unwrap_or(0));
        let mut data = Vec::new();
        let mut window_start = start;
        let mut scratch = Vec::new();
        while window_start < end {
            let window_end = end.min(window_start + WINDOW_PAGES * PAGE_SIZE);
            let entries = self.pagemap(window_start, window_end)?;

            // Runs of consecutive selected pages.
            let mut runs: Vec<(u64, usize)> = Vec::new();
            let first_kind = kinds.len();
            for (i, e) in entries.iter().enumerate() {
                let addr = window_start + i as u64 * PAGE_SIZE;
                let kind = if !e.populated() {
                    PageKind::Absent
                } else if select == PageSelect::PrivateOnly && e.file_or_shared() {
                    PageKind::Skipped
                } else {
                    match runs.last_mut() {
                        Some((a, len)) if *a + *len as u64 == addr => *len += PAGE,
                        _ => runs.push((addr, PAGE)),
                    }
                    // Provisional; decided after reading.
                    PageKind::Data
                };
                kinds.push(kind);
            }

            let bytes: usize = runs.iter().map(|r| r.1).sum();
            scratch.clear();
            scratch.resize(bytes, 0);
            self.read_runs(&runs, &mut scratch)?;

            let mut pages = scratch.chunks_exact(PAGE);
            for kind in &mut kinds[first_kind..] {
                if *kind != PageKind::Data {
                    continue;
                }
                // Runs cover exactly the provisional data pages, in order.
                let Some(page) = pages.next() else { break };
                if is_zero(page) {
                    *kind = PageKind::Zero;
                } else {
                    data.extend_from_slice(page);
                }
            }
            window_start = window_end;
        }
        Ok(CapturedRange { start, kinds, data })
    }

    /// The path of the `/proc/<pid>/mem` file in use.
    pub fn mem_path(&self) -> &std::path::Path {
        &self.mem_path
    }
}

fn check_aligned(start: u64, end: u64) -> Result<(), MemoryError> {
    if !start.is_multiple_of(PAGE_SIZE) || !end.is_multiple_of(PAGE_SIZE) || end < start {
        return Err(MemoryError::Unaligned { start, end });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut page = vec![0u8; PAGE];
        assert!(is_zero(&page));
        page[PAGE - 1] = 1;
        assert!(!is_zero(&page));
        page[PAGE - 1] = 0;
        page[300] = 0x80;
        assert!(!is_zero(&page));
        assert!(is_zero(&[]));
        assert!(!is_zero(&[0, 0, 7]));
    }

    #[test]
    fn read_own_memory_in_runs() {
        // Reading our own process exercises the batching and the
        // /proc/self/mem fallback without a child.
        let mem = ProcessMemory::open(nix::unistd::getpid()).expect("open self");
        let a: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let b = b"second run".to_vec();
        let runs = [(a.as_ptr() as u64, a.len()), (b.as_ptr() as u64, b.len())];
        let mut buf = vec![0u8; a.len() + b.len()];
        mem.read_runs(&runs, &mut buf).expect("read runs");
        assert_eq!(&buf[..a.len()], &a[..]);
        assert_eq!(&buf[a.len()..], &b[..]);

        let mut via_mem = vec![0u8; b.len()];
        mem.read_via_proc_mem(b.as_ptr() as u64, &mut via_mem)
            .expect("proc mem");
        assert_eq!(via_mem, b);
    }

    #[test]
    fn unaligned_capture_is_refused() {
        let mem = ProcessMemory::open(nix::unistd::getpid()).expect("open self");
        assert!(matches!(
            mem.capture(1, PAGE_SIZE, PageSelect::AllPopulated),
            Err(MemoryError::Unaligned { .. })
        ));
    }
}
