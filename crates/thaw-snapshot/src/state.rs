//! What a snapshot holds: the plain-data model of a checkpointed process.
//!
//! Owns: the serialisable description of one process as the checkpoint
//! found it ([`ProcessImage`]) and the index of its memory image
//! ([`MemoryIndex`]). Everything here is data; [`crate::checkpoint`] fills
//! it in, [`crate::image`] writes and verifies it, [`crate::restore`] acts
//! on it.
//!
//! Must not: hold secrets the snapshot must not carry (it holds what the
//! process held; what a function must not keep is issue 6's pipeline), or
//! anything that only makes sense in the checkpointing daemon (host pids,
//! open descriptors).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cpu::CpuFeatures;
use crate::ptrace::{GeneralRegs, RobustList, RseqConfiguration, SigSet};
use crate::remote::{SigAltStack, SignalAction};

/// The snapshot format version this build writes and reads. Bump it for
/// any change a reader of the previous version would misread.
pub const FORMAT_VERSION: u32 = 1;

/// Everything in a snapshot's state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotState {
    /// [`FORMAT_VERSION`] of the writer (also in the file header).
    pub format_version: u32,
    /// When the checkpoint was taken (Unix time, milliseconds).
    pub created_unix_ms: u64,
    /// `uname -r` of the kernel the checkpoint ran on (informational; the
    /// vDSO and CPU checks decide compatibility).
    pub kernel_release: String,
    /// The CPU's extended-state layout and feature words.
    pub cpu: CpuFeatures,
    /// BLAKE3 of the `[vdso]` code the process was using: the restored
    /// process keeps calling into it at the same offsets, so a restore on a
    /// kernel whose vDSO differs is refused.
    pub vdso_hash: String,
    /// The process.
    pub process: ProcessImage,
    /// Where each saved page is in the memory image.
    pub memory: MemoryIndex,
    /// The process's clocks at the checkpoint, as it saw them (in its time
    /// namespace): a restore must not let them go backwards.
    #[serde(default)]
    pub clocks: Clocks,
}

/// CLOCK_MONOTONIC and CLOCK_BOOTTIME as a process saw them, nanoseconds
/// (0: not recorded, as in snapshots from before clocks were recorded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clocks {
    /// CLOCK_MONOTONIC.
    pub monotonic_ns: i64,
    /// CLOCK_BOOTTIME.
    pub boottime_ns: i64,
}

/// One checkpointed process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessImage {
    /// Its pid in its own (innermost) pid namespace; restored exactly.
    pub pid: i32,
    /// The command name (`comm`).
    pub comm: String,
    /// The executable (`/proc/<pid>/exe`), as seen in its mount namespace.
    pub exe: PathBuf,
    /// The working directory.
    pub cwd: PathBuf,
    /// The file-mode creation mask.
    pub umask: u32,
    /// User and group ids, capabilities, `no_new_privs`.
    pub creds: Credentials,
    /// The seccomp filters in force, oldest first, each the raw bytes of its
    /// `struct sock_filter` array (empty: no filter).
    pub seccomp_filters: Vec<Vec<u8>>,
    /// Resource limits.
    pub rlimits: Vec<Rlimit>,
    /// Memory-layout fields of `mm_struct` and the auxiliary vector.
    pub mm: MmLayout,
    /// The dispositions of signals 1..=64 (`signals[n - 1]` is signal `n`).
    pub signals: Vec<SignalAction>,
    /// The memory mappings, in address order.
    pub mappings: Vec<Vma>,
    /// The threads, the leader first.
    pub threads: Vec<ThreadImage>,
    /// The open file descriptors, by number.
    pub fds: Vec<FdImage>,
}

/// Process credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Real, effective, saved user id.
    pub uid: [u32; 3],
    /// Real, effective, saved group id.
    pub gid: [u32; 3],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Capability sets.
    pub cap_inheritable: u64,
    /// Permitted capabilities.
    pub cap_permitted: u64,
    /// Effective capabilities.
    pub cap_effective: u64,
    /// Bounding set.
    pub cap_bounding: u64,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
}

/// One resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// `RLIMIT_*` number.
    pub resource: u32,
    /// Soft limit (`u64::MAX` = unlimited).
    pub cur: u64,
    /// Hard limit (`u64::MAX` = unlimited).
    pub max: u64,
}

/// The memory-layout fields `PR_SET_MM_MAP` restores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // the kernel's field names
pub struct MmLayout {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// The auxiliary vector, as `(key, value)` words, ending with `AT_NULL`.
    pub auxv: Vec<u64>,
}

/// What backs a mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmaKind {
    /// Private anonymous memory (including `[anon:NAME]`).
    Anonymous,
    /// The brk heap.
    Heap,
    /// The main thread's stack (grows down).
    Stack,
    /// A file mapping, reopened by path and checked to be the same file.
    File {
        /// Path in the process's mount namespace.
        path: PathBuf,
        /// Offset in bytes.
        offset: u64,
        /// The file as it was at checkpoint.
        identity: FileIdentity,
    },
    /// The vDSO code.
    Vdso,
    /// The vDSO data pages.
    Vvar,
    /// The vDSO clock pages (Linux 6.13+).
    VvarVclock,
}

/// One memory mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `PROT_*` bits.
    pub prot: i32,
    /// `MAP_SHARED` (only file mappings may be shared).
    pub shared: bool,
    /// What backs it.
    pub kind: VmaKind,
}

/// Enough of a file's `stat` to notice that a path now names another file
/// or changed contents: a restore maps file pages from the file itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
}

/// One thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadImage {
    /// Thread id in the process's pid namespace; restored exactly.
    pub tid: i32,
    /// The thread's name (`comm`).
    pub comm: String,
    /// Registers as the thread must resume (interrupted syscalls rewound to
    /// restart, see [`GeneralRegs::resume_regs`]).
    pub regs: GeneralRegs,
    /// The full non-compacted XSAVE image.
    pub xstate: Vec<u8>,
    /// Blocked signals.
    pub sigmask: SigSet,
    /// The alternate signal stack.
    pub sigaltstack: SigAltStack,
    /// The rseq registration (`abi_pointer == 0`: none).
    pub rseq: RseqConfiguration,
    /// The robust futex list.
    pub robust_list: RobustList,
    /// The `clear_child_tid` address.
    pub clear_child_tid: u64,
}

/// One open file descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdImage {
    /// The descriptor number.
    pub fd: i32,
    /// `O_*` status flags from `fdinfo` (access mode, `O_APPEND`,
    /// `O_NONBLOCK`, ...).
    pub flags: i32,
    /// `FD_CLOEXEC`.
    pub cloexec: bool,
    /// What it refers to.
    pub kind: FdKind,
}

/// What a descriptor refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    /// A regular file or directory, reopened by path at `pos`.
    File {
        /// Path in the process's mount namespace.
        path: PathBuf,
        /// File position.
        pos: u64,
        /// The file as it was at checkpoint.
        identity: FileIdentity,
    },
    /// A character device that holds no state (`/dev/null`, `/dev/zero`,
    /// `/dev/urandom`, `/dev/random`, `/dev/full`), reopened by path.
    Device {
        /// Its path.
        path: PathBuf,
    },
    /// One end of a pipe whose both ends the process holds (libuv's wake-up
    /// pipes), recreated with the bytes it held.
    Pipe {
        /// The pipe's inode at checkpoint: ends with the same id are one pipe.
        id: u64,
        /// The write end (else the read end).
        write: bool,
        /// Bytes waiting in the pipe (recorded with the read end).
        unread: Vec<u8>,
    },
    /// An eventfd.
    EventFd {
        /// Its counter.
        count: u64,
        /// `EFD_SEMAPHORE`.
        semaphore: bool,
    },
    /// An epoll instance and what it watches.
    Epoll {
        /// The registrations.
        targets: Vec<EpollTarget>,
    },
    /// A pipe or socket whose other end lives outside the process (stdio,
    /// the connection to the supervisor). It is not restored: the restorer
    /// must be handed a replacement for it, or the restore fails.
    External {
        /// What `/proc/<pid>/fd/N` showed (`pipe:[123]`, `socket:[456]`).
        link: String,
    },
}
/// One epoll registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollTarget {
    /// The watched descriptor (a number in the same table).
    pub fd: i32,
    /// `EPOLL*` event bits.
    pub events: u32,
    /// The user data returned with events.
    pub data: u64,
}

/// Where the saved pages are in the memory image.
///
/// The image is a header page followed by data pages, each [`crate::PAGE_SIZE`]
/// bytes, in address order. Pages are grouped into chunks of
/// [`MemoryIndex::chunk_pages`] for integrity checks (and, later, for the
/// chunked store): chunk `i` covers image pages `[i * chunk_pages, ...)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryIndex {
    /// Number of data pages in the image.
    pub data_pages: u64,
    /// Populated pages that were all zero and are not stored.
    pub zero_pages: u64,
    /// Runs of consecutive data pages, in address order.
    pub runs: Vec<PageRun>,
    /// Pages per integrity chunk.
    pub chunk_pages: u32,
    /// BLAKE3 of each chunk, hex.
    pub chunk_hashes: Vec<String>,
}

/// Consecutive saved pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    /// Address of the first page.
    pub addr: u64,
    /// Number of pages.
    pub pages: u64,
    /// Index of the first page in the image (0 = first data page).
    pub image_page: u64,
}

impl MemoryIndex {
    /// The run holding `addr`, if its page was saved.
    pub fn run_at(&self, addr: u64) -> Option<&PageRun> {
        let i = self
            .runs
            .partition_point(|r| r.addr <= addr)
            .checked_sub(1)?;
        let r = &self.runs[i];
        (addr < r.addr + r.pages * crate::PAGE_SIZE).then_some(r)
    }
}
