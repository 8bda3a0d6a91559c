//! Disk and memory pressure: what the daemon does not start while the host
//! is short of room.
//!
//! Owns: the thresholds (`thaw serve --min-free-disk-mb`,
//! `--min-free-memory-mb`), reading the room left (free blocks of the data
//! directory's filesystem for unprivileged writers, `MemAvailable` minus
//! the host's reserve), and the rule: **work the daemon chooses to do**
//! (snapshot builds queued by a deploy, an update or a start, working-set
//! upkeep, a start-up read-through of snapshots) **waits or is skipped**
//! while either is below its threshold, and **work a caller asks for that
//! writes to disk** (a deploy, a code update, a snapshot request) **fails
//! at once with a clear error** and changes nothing. Invocations are not
//! refused here: instances are admitted by memory in
//! [`crate::capacity`], and a full disk fails only what needs the disk.
//! Must not: delete anything to make room.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default `--min-free-disk-mb`.
pub const DEFAULT_MIN_FREE_DISK_MB: u64 = 512;
/// Default `--min-free-memory-mb` (on top of the host's reserve,
/// [`crate::capacity::reserve_bytes`]).
pub const DEFAULT_MIN_FREE_MEMORY_MB: u64 = 256;

/// Why the host is short of room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Low {
    /// The data directory's filesystem.
    #[error(
        "the host is low on disk space ({free_mb} MiB free for thaw's data, below its threshold of {min_mb} MiB)"
    )]
    Disk {
        /// Free MiB.
        free_mb: u64,
        /// The threshold.
        min_mb: u64,
    },
    /// Memory.
    #[error(
        "the host is low on memory ({available_mb} MiB available beyond its reserve, below the threshold of {min_mb} MiB)"
    )]
    Memory {
        /// Available MiB beyond the host's reserve.
        available_mb: u64,
        /// The threshold.
        min_mb: u64,
    },
}

/// The thresholds and where to measure.
#[derive(Debug, Clone)]
pub struct Pressure {
    data_dir: PathBuf,
    min_free_disk: u64,
    min_free_memory: u64,
}

impl Pressure {
    /// Thresholds for the filesystem of `data_dir`, in MiB.
    pub fn new(data_dir: &Path, min_free_disk_mb: u64, min_free_memory_mb: u64) -> Pressure {
        Pressure {
            data_dir: data_dir.to_path_buf(),
            min_free_disk: min_free_disk_mb << 20,
            min_free_memory: min_free_memory_mb << 20,
        }
    }

    /// Bytes free for unprivileged writers on the data directory's
    /// filesystem (`None` if it cannot be read).
    pub fn free_disk(&self) -> Option<u64> {
        let st = nix::sys::statvfs::statvfs(&self.data_dir).ok()?;
        Some(st.blocks_available().saturating_mul(st.fragment_size()))
    }

    /// Whether the disk has room for work that writes to it.
    pub fn check_disk(&self) -> Result<(), Low> {
        match self.free_disk() {
            Some(free) if free < self.min_free_disk => Err(Low::Disk {
                free_mb: free >> 20,
                min_mb: self.min_free_disk >> 20,
            }),
            // Unreadable: do not block on a measurement we do not have.
            _ => Ok(()),
        }
    }

    /// Whether memory has room for background work.
    pub fn check_memory(&self) -> Result<(), Low> {
        let Some(m) = crate::capacity::HostMemory::read() else {
            return Ok(());
        };
        let usable = m
            .available
            .saturating_sub(crate::capacity::reserve_bytes(m.total));
        if usable < self.min_free_memory {
            return Err(Low::Memory {
                available_mb: usable >> 20,
                min_mb: self.min_free_memory >> 20,
            });
        }
        Ok(())
    }

    /// Whether background work may start now.
    pub fn check(&self) -> Result<(), Low> {
        self.check_disk()?;
        self.check_memory()
    }
}

/// How long background work waits before looking again: doubling from 1 s
/// to at most a minute.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_against_the_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let free = Pressure::new(dir.path(), 0, 0).free_disk().unwrap();
        assert!(free > 0);
        assert!(Pressure::new(dir.path(), 0, 0).check_disk().is_ok());
        // A threshold above what the filesystem has free is low.
        let above = (free >> 20) + 1;
        let e = Pressure::new(dir.path(), above, 0)
            .check_disk()
            .unwrap_err();
        assert!(
            matches!(e, Low::Disk { min_mb, .. } if min_mb == above),
            "{e}"
        );
        assert!(!e.to_string().contains('/'), "no path in {e}");
        assert!(Pressure::new(dir.path(), 0, u64::MAX >> 21)
            .check_memory()
            .is_err());
    }

    #[test]
    fn backoff_doubles_to_a_minute() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(10), Duration::from_secs(60));
    }
}
