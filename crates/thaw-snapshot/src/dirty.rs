//! Dirty-page tracking: which pages of a process were written since a
//! point in time, exactly.
//!
//! Soft-dirty bits are not built into the kernels thaw runs on
//! (`CONFIG_MEM_SOFT_DIRTY` is off), so writes are tracked with
//! userfaultfd write-protection in asynchronous mode: the ranges are
//! registered in write-protect mode on a userfaultfd of the process that
//! has [`uffd::FEATURE_WP_ASYNC`] (the kernel resolves each first write
//! itself, without a message, and marks the page written) and
//! [`uffd::FEATURE_WP_UNPOPULATED`] (pages never touched count too), then
//! write-protected. `PAGEMAP_SCAN` on the process's `/proc/<pid>/pagemap`
//! lists the written pages and, when asked, write-protects them again in
//! the same walk, so that the next interval starts clean without a gap.
//!
//! Owns: the kernel interface (the `PAGEMAP_SCAN` ioctl, its ABI structs)
//! and [`WriteTracker`]. Must not: decide what the written pages are for
//! (diff snapshots are the caller's).
//!
//! Unsafe code: the one `PAGEMAP_SCAN` ioctl, which nix cannot wrap safely
//! (its argument points at the output buffer).

#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;

use crate::uffd;

/// Page size the tracker reports in.
pub const PAGE_SIZE: u64 = 4096;

/// `PAGE_IS_WRITTEN`: the page was written since it was last
/// write-protected.
const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// `PM_SCAN_WP_MATCHING`: write-protect the pages reported.
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: refuse (EPERM) ranges not registered in
/// asynchronous write-protect mode, instead of silently reporting nothing.
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
/// Regions one `PAGEMAP_SCAN` call returns at most.
const REGIONS_PER_CALL: usize = 512;

/// `struct pm_scan_arg` (linux/fs.h).
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region` (linux/fs.h).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

mod raw {
    #![allow(missing_docs)]
    // `PAGEMAP_SCAN`: `_IOWR('f', 16, struct pm_scan_arg)`.
    nix::ioctl_readwrite!(pagemap_scan, b'f', 16, super::PmScanArg);
}

/// Why tracking failed.
#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    /// A userfaultfd request failed (the kernel lacks asynchronous
    /// write-protection, or the range is not mapped).
    #[error("{what}: {source}")]
    Uffd {
        /// What was asked.
        what: &'static str,
        /// The error.
        #[source]
        source: Errno,
    },
    /// `/proc/<pid>/pagemap` cannot be opened.
    #[error("cannot open the pagemap of process {pid}: {source}")]
    Pagemap {
        /// The process.
        pid: i32,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `PAGEMAP_SCAN` failed (EPERM: a range is not write-protected in
    /// asynchronous mode).
    #[error("PAGEMAP_SCAN: {0}")]
    Scan(#[source] Errno),
}

/// Lists the written pages of `[start, end)` in the process whose pagemap
/// is `pagemap`, as page-aligned `[start, end)` runs in address order;
/// with `reset`, write-protects them again in the same walk.
pub fn written_pages(
    pagemap: &File,
    start: u64,
    end: u64,
    reset: bool,
) -> Result<Vec<(u64, u64)>, DirtyError> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut regions = vec![PageRegion::default(); REGIONS_PER_CALL];
    let mut from = start;
    while from < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: PM_SCAN_CHECK_WPASYNC | if reset { PM_SCAN_WP_MATCHING } else { 0 },
            start: from,
            end,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            category_mask: PAGE_IS_WRITTEN,
            return_mask: PAGE_IS_WRITTEN,
            ..Default::default()
        };
        // SAFETY: `arg` is a valid `struct pm_scan_arg` whose `vec` points
        // at `regions`, writable for `vec_len` entries during the call; the
        // kernel fills at most that many and updates `walk_end`.
        let n = unsafe { raw::pagemap_scan(pagemap.as_raw_fd(), &mut arg) }
            .map_err(DirtyError::Scan)?;
        let n = usize::try_from(n).unwrap_or(0).min(regions.len());
        for r in &regions[..n] {
            match out.last_mut() {
                Some(last) if last.1 == r.start => last.1 = r.end,
                _ => out.push((r.start, r.end)),
            }
        }
        if arg.walk_end <= from || arg.walk_end >= end {
            break;
        }
        from = arg.walk_end;
    }
    Ok(out)
}

/// Tracks the writes of one process to a set of ranges.
#[derive(Debug)]
pub struct WriteTracker {
    uffd: OwnedFd,
    pagemap: File,
    ranges: Vec<(u64, u64)>,
}

impl WriteTracker {
    /// Starts tracking writes of process `pid` to `ranges` (page-aligned
    /// `[start, end)`) through `uffd`, a userfaultfd of that process on
    /// which nothing was asked yet (`UFFDIO_API` is done here, with
    /// asynchronous write-protection). Every page in the ranges counts as
    /// clean from now on.
    pub fn start(pid: i32, uffd: OwnedFd, ranges: Vec<(u64, u64)>) -> Result<Self, DirtyError> {
        let call = |what| move |source| DirtyError::Uffd { what, source };
        uffd::api(
            uffd.as_fd(),
            uffd::FEATURE_WP_ASYNC | uffd::FEATURE_WP_UNPOPULATED,
        )
        .map_err(call("UFFDIO_API with asynchronous write-protection"))?;
        for &(start, end) in &ranges {
            uffd::register_wp(uffd.as_fd(), start, end - start)
                .map_err(call("UFFDIO_REGISTER in write-protect mode"))?;
            uffd::write_protect(uffd.as_fd(), start, end - start, true)
                .map_err(call("UFFDIO_WRITEPROTECT"))?;
        }
        let pagemap = File::open(format!("/proc/{pid}/pagemap"))
            .map_err(|source| DirtyError::Pagemap { pid, source })?;
        Ok(WriteTracker {
            uffd,
            pagemap,
            ranges,
        })
    }

    /// The pages written since tracking started, or since the last call
    /// with `reset` (which makes them clean again), as page-aligned runs
    /// in address order.
    pub fn written(&self, reset: bool) -> Result<Vec<(u64, u64)>, DirtyError> {
        let mut out = Vec::new();
        for &(start, end) in &self.ranges {
            out.extend(written_pages(&self.pagemap, start, end, reset)?);
        }
        Ok(out)
    }

    /// How many pages [`WriteTracker::written`] would report.
    pub fn written_count(&self) -> Result<u64, DirtyError> {
        Ok(self
            .written(false)?
            .iter()
            .map(|(s, e)| (e - s) / PAGE_SIZE)
            .sum())
    }

    /// The ranges tracked.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// The userfaultfd (kept open: closing it ends the tracking).
    pub fn uffd(&self) -> &OwnedFd {
        &self.uffd
    }
}
