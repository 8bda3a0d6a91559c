//! Restore: turn a snapshot back into a running process.
//!
//! Owns: building the restored process out of a stub ([`crate::spawn`]):
//! its address space (stub unmapped, vDSO moved to where the snapshot had
//! it, every mapping recreated, pages copied in), its kernel state (signal
//! dispositions, limits, layout fields, rseq, robust list, alternate stack,
//! credentials, seccomp filters) and finally its registers. Nothing runs in
//! the restored process until all of that is in place; any failure kills the
//! stub, so a failed restore leaves no process behind.
//!
//! How: the stub is traced; the restorer places a tiny *executor* in a
//! scratch mapping of the stub (a loop that runs system calls from a table
//! and stops at an `int3`), so each batch of remote calls costs one ptrace
//! round trip instead of one per call. The scratch mapping lies in a hole of
//! both the stub's and the snapshot's layout and is unmapped last.
//!
//! Must not: run any code of the restored process before its state is
//! complete, or leave restorer descriptors or memory in it.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::time::Instant;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::ptrace::Options;
use nix::sys::uio::{process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;
use thiserror::Error;
use tracing::debug;

use crate::cpu::{CpuError, CpuFeatures, CpuMismatch};
use crate::image::{ImageError, Snapshot};
use crate::lazy::LazyMemory;
use crate::memory::{MemoryError, ProcessMemory};
use crate::proc::{self, MapEntry, MappingKind, ProcError};
use crate::ptrace::{PtraceError, Tracee, Xstate};
use crate::spawn::{self, Create, EpollAdd, FdSource, Install, OpenFile, SpawnError, StubPlan};
use crate::state::{Credentials, FdKind, FileIdentity, ThreadImage, Vma, VmaKind};
use crate::uffd;
use crate::workingset::WorkingSet;
use crate::PAGE_SIZE;

/// The executor (x86-64). With `r12` pointing at a table of 64-byte
/// entries `{nr, a0..a5, result}`, it runs each entry's system call and
/// stores the result, until an entry with `nr == -1` or a failing call
/// (`rax >= -4095`), then executes `int3`:
///
/// ```text
/// 00 loop: mov rax,[r12]        ; 49 8b 04 24
/// 04       cmp rax,-1           ; 48 83 f8 ff
/// 08       je done              ; 74 33
/// 0a       mov rdi,[r12+8]      ; ... rsi, rdx, r10, r8, r9 likewise
/// 28       syscall              ; 0f 05
/// 2a       mov [r12+56],rax     ; 49 89 44 24 38
/// 2f       cmp rax,-4095        ; 48 3d 01 f0 ff ff
/// 35       jae done             ; 73 06
/// 37       add r12,64           ; 49 83 c4 40
/// 3b       jmp loop             ; eb c3
/// 3d done: int3                 ; cc
/// ```
const EXECUTOR: [u8; 62] = [
    0x49, 0x8b, 0x04, 0x24, 0x48, 0x83, 0xf8, 0xff, 0x74, 0x33, 0x49, 0x8b, 0x7c, 0x24, 0x08, 0x49,
    0x8b, 0x74, 0x24, 0x10, 0x49, 0x8b, 0x54, 0x24, 0x18, 0x4d, 0x8b, 0x54, 0x24, 0x20, 0x4d, 0x8b,
    0x44, 0x24, 0x28, 0x4d, 0x8b, 0x4c, 0x24, 0x30, 0x0f, 0x05, 0x49, 0x89, 0x44, 0x24, 0x38, 0x48,
    0x3d, 0x01, 0xf0, 0xff, 0xff, 0x73, 0x06, 0x49, 0x83, 0xc4, 0x40, 0xeb, 0xc3, 0xcc,
];
/// Offset of the executor's `syscall` instruction (for single calls).
const EXECUTOR_SYSCALL: u64 = 0x28;
/// Where the executor's table starts in the scratch mapping.
const TABLE_OFFSET: u64 = 64;
/// Size of the scratch mapping (code, table, call arguments).
const SCRATCH_LEN: u64 = 4 << 20;
/// Lowest address considered for the scratch mapping.
const SCRATCH_FLOOR: u64 = 0x1000_0000;
/// Top of the user address space (47-bit).
const TASK_SIZE: u64 = 0x7fff_ffff_f000;

const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;
const PR_SET_NAME: u64 = 15;
const PR_SET_PDEATHSIG: u64 = 1;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const PR_CAPBSET_DROP: u64 = 24;
const RSEQ_FLAG_UNREGISTER: u64 = 1;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;

/// Why a restore failed. The stub is dead and reaped by the time any of
/// these is returned.
#[derive(Debug, Error)]
pub enum RestoreError {
    /// The snapshot could not be read or failed verification.
    #[error("Reading the snapshot")]
    Image(#[from] ImageError),
    /// Reading this CPU's features failed.
    #[error("Reading CPU features")]
    Cpu(#[from] CpuError),
    /// The snapshot was taken on a CPU whose state this one cannot hold.
    #[error("The snapshot was taken on an incompatible CPU")]
    CpuMismatch(#[from] CpuMismatch),
    /// The kernel's vDSO differs from the snapshot's.
    #[error("The vDSO of this kernel differs from the snapshot's ({what}); restore on the kernel the snapshot was taken on")]
    VdsoMismatch {
        /// What differs.
        what: String,
    },
    /// The snapshot needs something this engine does not restore yet.
    #[error("Unsupported: {0}")]
    Unsupported(String),
    /// A descriptor the caller must provide is missing.
    #[error("File descriptor {fd} ({link}) must be provided by the caller")]
    MissingFd {
        /// The descriptor number.
        fd: i32,
        /// What it was.
        link: String,
    },
    /// The caller provided a descriptor the snapshot does not have.
    #[error("File descriptor {fd} was provided but the snapshot has no external descriptor {fd}")]
    ExtraFd {
        /// The descriptor number.
        fd: i32,
    },
    /// A file the snapshot maps or holds open changed since the checkpoint.
    #[error("{path} changed since the checkpoint")]
    FileChanged {
        /// The file.
        path: PathBuf,
    },
    /// Creating the stub failed.
    #[error("Creating the restore stub")]
    Spawn(#[from] SpawnError),
    /// Tracing the stub failed.
    #[error("Tracing the restore stub")]
    Ptrace(#[from] PtraceError),
    /// A remote call in the stub failed.
    #[error("Restoring {what}")]
    Call {
        /// What the call was for.
        what: String,
        /// Why.
        #[source]
        source: Errno,
    },
    /// Reading the stub's layout failed.
    #[error("Reading the stub's layout")]
    Proc(#[from] ProcError),
    /// Reading the stub's memory failed.
    #[error("Reading the stub's memory")]
    Memory(#[from] MemoryError),
    /// Accessing the stub's memory or files failed.
    #[error("{what}")]
    Io {
        /// What.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No free address range for the scratch mapping.
    #[error("No free address range of {len} bytes for the restorer")]
    NoScratch {
        /// Bytes needed.
        len: u64,
    },
}

/// Where and with what a snapshot is restored.
#[derive(Debug)]
pub struct RestoreOptions<'a> {
    /// The pid namespace to create the process in (`None`: the one the
    /// caller creates children in, e.g. when the caller is PID 1 of a fresh
    /// namespace); its pid and thread ids there must be free.
    pub pid_ns: Option<BorrowedFd<'a>>,
    /// Namespaces to join (mount, network, UTS, IPC, cgroup), if not the
    /// restorer's own.
    pub namespaces: Vec<(BorrowedFd<'a>, CloneFlags)>,
    /// Replacements for the snapshot's external descriptors (pipes and
    /// sockets to the outside): `(number, descriptor)`. Every external
    /// descriptor needs one.
    pub fds: Vec<(i32, BorrowedFd<'a>)>,
    /// A cgroup's `cgroup.procs` (or `tasks`) file to move the process into
    /// before it runs.
    pub cgroup_procs: Vec<PathBuf>,
    /// How memory comes back.
    pub memory: MemoryMode,
    /// In [`MemoryMode::Lazy`]: pages installed in one batch before the
    /// process resumes (a verified working set of this snapshot); the rest
    /// is served on demand.
    pub working_set: Option<&'a WorkingSet>,
}

/// How a restore brings memory back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryMode {
    /// Every saved page is copied in before the process resumes.
    #[default]
    Eager,
    /// Anonymous memory is registered with a userfaultfd and filled on
    /// first touch by a page server ([`crate::lazy::serve`]) reading the
    /// image; only pages the kernel touches during the restore (rseq areas)
    /// and pages of file mappings are copied in first.
    Lazy,
}

/// Time spent in each restore phase, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreTimings {
    /// Reading and verifying the snapshot.
    pub read_us: u64,
    /// Creating the stub.
    pub spawn_us: u64,
    /// Replacing the address space.
    pub layout_us: u64,
    /// Copying pages in (eager), or the pages a lazy restore needs first.
    pub memory_us: u64,
    /// Installing the working set (lazy, with a working set).
    pub prefetch_us: u64,
    /// Pages the working set installed.
    pub prefetched_pages: u64,
    /// Kernel state and registers.
    pub state_us: u64,
    /// All of it.
    pub total_us: u64,
}

/// A restored, running process (a child of the calling process).
#[derive(Debug)]
pub struct Restored {
    /// Its pid in the caller's pid namespace.
    pub pid: Pid,
    /// Where the time went.
    pub timings: RestoreTimings,
    /// In [`MemoryMode::Lazy`]: the userfaultfd the process's faults arrive
    /// on. It must be served ([`crate::lazy::serve`]) for the process to
    /// make progress.
    pub lazy: Option<LazyMemory>,
}

/// Kills (without reaping) the stub unless disarmed.
pub(crate) struct KillFirst(pub(crate) Option<Pid>);

impl Drop for KillFirst {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Kills and reaps the stub unless disarmed.
pub(crate) struct StubGuard(pub(crate) Option<Pid>);

impl Drop for StubGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            spawn::reap(pid);
        }
    }
}

/// Restores `snap` eagerly (every page copied in before the process runs)
/// as a new child process of the caller.
pub fn restore(snap: &Snapshot, opts: &RestoreOptions<'_>) -> Result<Restored, RestoreError> {
    let t0 = Instant::now();
    let mut timings = RestoreTimings::default();
    let pages = match opts.memory {
        MemoryMode::Eager => snap.take_pages()?,
        MemoryMode::Lazy => Vec::new(),
    };
    let st = snap.state();
    let p = &st.process;
    st.cpu.check_restore_on(&CpuFeatures::host()?)?;

    let provided: Vec<(i32, std::os::fd::RawFd)> = opts
        .fds
        .iter()
        .map(|(n, fd)| (*n, fd.as_raw_fd()))
        .collect();
    let FdPlan {
        creates,
        installs,
        epoll_adds,
    } = fd_plan(snap, &provided)?;

    timings.read_us = t0.elapsed().as_micros() as u64;

    let plan = StubPlan {
        pid: Some(p.pid),
        pid_ns: opts.pid_ns,
        namespaces: opts.namespaces.clone(),
        cwd: cstring(p.cwd.as_os_str().as_encoded_bytes())?,
        umask: p.umask,
        creates,
        installs,
        epoll_adds,
    };
    let t_spawn = Instant::now();
    let stub = spawn::spawn_stub(&plan)?;
    let mut guard = StubGuard(Some(stub));
    for procs in &opts.cgroup_procs {
        std::fs::write(procs, stub.as_raw().to_string()).map_err(|source| RestoreError::Io {
            what: format!("Moving the process into {}", procs.display()),
            source,
        })?;
    }
    let mut t = Tracee::seize_with(
        stub,
        Options::PTRACE_O_EXITKILL | Options::PTRACE_O_TRACECLONE,
    )?;
    t.interrupt()?;
    t.wait_stop()?;
    timings.spawn_us = t_spawn.elapsed().as_micros() as u64;

    let t_layout = Instant::now();
    let mut r = Remote::prepare(&mut t, snap)?;
    // Dropped before `r` and `t` (declared after them): on any error the
    // stub is killed before its threads are detached, so none of them runs
    // a single instruction in a half-built state.
    let mut kill_first = KillFirst(Some(stub));
    r.replace_layout(snap)?;
    timings.layout_us = t_layout.elapsed().as_micros() as u64;

    let t_mem = Instant::now();
    let mut lazy = None;
    match opts.memory {
        MemoryMode::Eager => {
            let runs: Vec<(u64, &[u8])> = st
                .memory
                .runs
                .iter()
                .map(|run| {
                    let from = (run.image_page * PAGE_SIZE) as usize;
                    let len = (run.pages * PAGE_SIZE) as usize;
                    (run.addr, &pages[from..from + len])
                })
                .collect();
            r.write_eager(snap, &runs)?;
        }
        MemoryMode::Lazy => {
            let ranges = lazy_ranges(snap);
            r.write_unregistered_pages(snap, &ranges, opts.working_set)?;
            lazy = Some((r.create_uffd(true)?, ranges));
        }
    }
    timings.memory_us = t_mem.elapsed().as_micros() as u64;

    let t_state = Instant::now();
    r.create_threads(snap)?;
    r.restore_kernel_state(snap)?;
    // Registered last but for the registers: nothing the restorer does
    // from here touches lazily served memory.
    let lazy = match lazy {
        None => None,
        Some((uffd, ranges)) => {
            for &(start, end) in &ranges {
                uffd::register(uffd.as_fd(), start, end - start).map_err(|source| {
                    RestoreError::Call {
                        what: format!("registering {start:#x}-{end:#x} for lazy memory"),
                        source,
                    }
                })?;
            }
            if let Some(ws) = opts.working_set {
                let t_ws = Instant::now();
                timings.prefetched_pages = install_working_set(uffd.as_fd(), ws)?;
                timings.prefetch_us = t_ws.elapsed().as_micros() as u64;
            }
            Some(LazyMemory { uffd, ranges })
        }
    };
    let threads = r.finish(snap)?;
    kill_first.0 = None;
    drop(r);
    t.detach()?;
    for th in threads {
        th.detach()?;
    }
    guard.0 = None;
    timings.state_us = t_state.elapsed().as_micros() as u64;
    timings.total_us = t0.elapsed().as_micros() as u64;
    debug!(pid = stub.as_raw(), ?timings, "restored");
    Ok(Restored {
        pid: stub,
        timings,
        lazy,
    })
}

/// The descriptors of a restored process: what to create, what to install
/// where, and the epoll registrations to make once all are in place.
#[derive(Debug, Default)]
pub(crate) struct FdPlan {
    pub(crate) creates: Vec<Create>,
    pub(crate) installs: Vec<Install>,
    pub(crate) epoll_adds: Vec<EpollAdd>,
}

/// Plans the snapshot's descriptors: files reopened, pipes, eventfds and
/// epoll instances recreated, and the caller's replacements (`provided`:
/// `(number, descriptor of the caller)`) for every external one.
pub(crate) fn fd_plan(
    snap: &Snapshot,
    provided: &[(i32, std::os::fd::RawFd)],
) -> Result<FdPlan, RestoreError> {
    let p = &snap.state().process;
    let mut creates = Vec::new();
    let mut installs = Vec::new();
    let mut epoll_adds = Vec::new();
    let mut pipes: Vec<(u64, usize)> = Vec::new();
    for f in &p.fds {
        let source = match &f.kind {
            FdKind::File { path, pos, .. } => {
                creates.push(Create::Open(OpenFile {
                    path: cstring(path.as_os_str().as_encoded_bytes())?,
                    flags: f.flags,
                    pos: *pos,
                }));
                FdSource::Created(creates.len() - 1, 0)
            }
            FdKind::Device { path } => {
                creates.push(Create::Open(OpenFile {
                    path: cstring(path.as_os_str().as_encoded_bytes())?,
                    flags: f.flags,
                    pos: 0,
                }));
                FdSource::Created(creates.len() - 1, 0)
            }
            FdKind::Pipe { id, write, .. } => {
                let i = match pipes.iter().find(|(p, _)| p == id) {
                    Some((_, i)) => *i,
                    None => {
                        // The read end carries the bytes.
                        let unread = p
                            .fds
                            .iter()
                            .find_map(|g| match &g.kind {
                                FdKind::Pipe {
                                    id: gid,
                                    write: false,
                                    unread,
                                } if gid == id => Some(unread.clone()),
                                _ => None,
                            })
                            .unwrap_or_default();
                        creates.push(Create::Pipe { unread });
                        pipes.push((*id, creates.len() - 1));
                        creates.len() - 1
                    }
                };
                FdSource::Created(i, usize::from(*write))
            }
            FdKind::EventFd { count, semaphore } => {
                creates.push(Create::EventFd {
                    count: u32::try_from(*count).unwrap_or(u32::MAX),
                    flags: if *semaphore { libc::EFD_SEMAPHORE } else { 0 },
                });
                FdSource::Created(creates.len() - 1, 0)
            }
            FdKind::Epoll { targets } => {
                for t in targets {
                    let mut event = [0u8; 12];
                    event[..4].copy_from_slice(&t.events.to_le_bytes());
                    event[4..].copy_from_slice(&t.data.to_le_bytes());
                    epoll_adds.push(EpollAdd {
                        epfd: f.fd,
                        fd: t.fd,
                        event,
                    });
                }
                creates.push(Create::Epoll);
                FdSource::Created(creates.len() - 1, 0)
            }
            FdKind::External { link } => match provided.iter().find(|(n, _)| *n == f.fd) {
                Some((_, fd)) => FdSource::Provided(*fd),
                None => {
                    return Err(RestoreError::MissingFd {
                        fd: f.fd,
                        link: link.clone(),
                    })
                }
            },
        };
        installs.push(Install {
            source,
            target: f.fd,
            cloexec: f.cloexec,
            status_flags: Some(f.flags & !libc::O_ACCMODE),
        });
    }
    for (n, _) in provided {
        if !p
            .fds
            .iter()
            .any(|f| f.fd == *n && matches!(f.kind, FdKind::External { .. }))
        {
            return Err(RestoreError::ExtraFd { fd: *n });
        }
    }

    Ok(FdPlan {
        creates,
        installs,
        epoll_adds,
    })
}

/// Installs the pages of `ws` through the registered userfaultfd `uffd`,
/// one call per run; pages already present (rseq areas, copied in before)
/// are skipped. Returns the pages installed.
fn install_working_set(uffd: BorrowedFd<'_>, ws: &WorkingSet) -> Result<u64, RestoreError> {
    let mut installed = 0;
    for run in ws.runs().iter().filter(|r| !r.direct) {
        let len = run.pages * PAGE_SIZE;
        let call = |what: String| move |source| RestoreError::Call { what, source };
        if run.data.is_none() {
            match uffd::zeropage(uffd, run.addr, len) {
                Ok(()) => installed += run.pages,
                // Some page of the run exists: fill the others one by one.
                Err(Errno::EEXIST) => {
                    for p in 0..run.pages {
                        match uffd::zeropage(uffd, run.addr + p * PAGE_SIZE, PAGE_SIZE) {
                            Ok(()) => installed += 1,
                            Err(Errno::EEXIST) => {}
                            Err(e) => {
                                return Err(call(format!("UFFDIO_ZEROPAGE at {:#x}", run.addr))(e))
                            }
                        }
                    }
                }
                Err(e) => return Err(call(format!("UFFDIO_ZEROPAGE at {:#x}", run.addr))(e)),
            }
            continue;
        }
        let bytes = ws.bytes(run);
        let mut done = 0usize;
        let mut stalls = 0;
        while done < bytes.len() {
            let at = run.addr + done as u64;
            match uffd::copy(uffd, at, &bytes[done..]) {
                Ok(n) if n > 0 => {
                    done += n;
                    installed += n as u64 / PAGE_SIZE;
                }
                // The page at `at` is already there: skip it.
                Ok(_) | Err(Errno::EEXIST) => done += PAGE_SIZE as usize,
                // The layout was changing (the process is stopped, so only
                // for a moment): again.
                Err(Errno::EAGAIN) if stalls < 100 => stalls += 1,
                Err(e) => {
                    return Err(call(format!("UFFDIO_COPY of the working set at {at:#x}"))(
                        e,
                    ))
                }
            }
        }
    }
    Ok(installed)
}

/// The saved pages a lazy restore copies in before the process resumes
/// instead of serving them on demand: those outside the lazily served
/// `ranges` (written pages of private file mappings) and those the kernel
/// writes during the restore itself (each thread's rseq area, updated on
/// every return to user space). In address order.
pub fn pages_before_resume(snap: &Snapshot, ranges: &[(u64, u64)]) -> Vec<u64> {
    let st = snap.state();
    let rseq = rseq_spans(&st.process.threads);
    let mut out = Vec::new();
    for run in &st.memory.runs {
        for i in 0..run.pages {
            let addr = run.addr + i * PAGE_SIZE;
            if !in_ranges(ranges, addr) || in_spans(&rseq, addr) {
                out.push(addr);
            }
        }
    }
    out
}

/// The pages holding the threads' rseq areas, as sorted, disjoint spans
/// of page addresses (first, last), both included. The state is
/// checksummed, not authenticated: a forged pointer near the top of the
/// address space must not overflow (it did: a panic in debug builds),
/// and a forged size must not make a list of every page it claims (it
/// did: 2^20 entries per thread for a 4 GiB size). Both found while
/// writing the `snapshot_state` fuzz target.
fn rseq_spans(threads: &[ThreadImage]) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = threads
        .iter()
        .filter(|t| t.rseq.abi_pointer != 0)
        .map(|t| {
            let size = u64::from(t.rseq.abi_size).max(1);
            let first = t.rseq.abi_pointer & !(PAGE_SIZE - 1);
            let last = t.rseq.abi_pointer.saturating_add(size - 1) & !(PAGE_SIZE - 1);
            (first, last)
        })
        .collect();
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (first, last) in spans {
        match merged.last_mut() {
            Some((_, end)) if first <= *end => *end = (*end).max(last),
            _ => merged.push((first, last)),
        }
    }
    merged
}

/// Whether page `addr` is in one of `spans` (see [`rseq_spans`]).
fn in_spans(spans: &[(u64, u64)], addr: u64) -> bool {
    let i = spans.partition_point(|&(first, _)| first <= addr);
    i > 0 && addr <= spans[i - 1].1
}

/// The anonymous mappings served lazily: those holding saved pages.
pub fn lazy_ranges(snap: &Snapshot) -> Vec<(u64, u64)> {
    let st = snap.state();
    let mut out: Vec<(u64, u64)> = st
        .process
        .mappings
        .iter()
        .filter(|v| matches!(v.kind, VmaKind::Anonymous | VmaKind::Heap | VmaKind::Stack))
        .filter(|v| {
            st.memory
                .runs
                .iter()
                .any(|r| r.addr < v.end && r.addr + r.pages * PAGE_SIZE > v.start)
        })
        .map(|v| (v.start, v.end))
        .collect();
    out.sort_unstable();
    out
}

fn in_ranges(ranges: &[(u64, u64)], addr: u64) -> bool {
    ranges.iter().any(|&(s, e)| (s..e).contains(&addr))
}

pub(crate) fn cstring(bytes: &[u8]) -> Result<std::ffi::CString, RestoreError> {
    std::ffi::CString::new(bytes)
        .map_err(|_| RestoreError::Unsupported("a path with a NUL byte".into()))
}

/// An argument of a remote call: a value, or the address of bytes placed
/// in the scratch mapping with the call.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg {
    Val(u64),
    Data(usize),
}

/// A batch of remote calls and the bytes they point at.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    calls: Vec<(i64, [Arg; 6], String)>,
    data: Vec<u8>,
    /// Pointers inside `data`: `(where, target)` makes the 8 bytes at
    /// `data[where..]` the address of `data[target..]` once placed.
    pointers: Vec<(usize, usize)>,
}

impl Batch {
    pub(crate) fn call(&mut self, nr: i64, args: [Arg; 6], what: impl Into<String>) {
        self.calls.push((nr, args, what.into()));
    }

    /// The number of calls.
    pub(crate) fn len(&self) -> usize {
        self.calls.len()
    }

    /// Places `bytes` (8-byte aligned) and returns an argument pointing at them.
    pub(crate) fn data(&mut self, bytes: &[u8]) -> Arg {
        while !self.data.len().is_multiple_of(8) {
            self.data.push(0);
        }
        let at = self.data.len();
        self.data.extend_from_slice(bytes);
        Arg::Data(at)
    }

    /// Marks the 8 bytes at `arg + offset` as a pointer to `target`.
    pub(crate) fn pointer(&mut self, arg: Arg, offset: usize, target: Arg) {
        if let (Arg::Data(at), Arg::Data(to)) = (arg, target) {
            self.pointers.push((at + offset, to));
        }
    }
}

use Arg::Val as V;

/// The stub under construction.
pub(crate) struct Remote<'t> {
    /// The thread-group leader.
    t: &'t mut Tracee,
    /// The other threads, in snapshot order, once created.
    threads: Vec<Tracee>,
    pid: Pid,
    mem: File,
    scratch: u64,
    scratch_len: u64,
    /// Temporary homes for the vDSO mappings while they move.
    temp: u64,
}

impl<'t> Remote<'t> {
    /// Unregisters the stub's rseq, checks its vDSO against the snapshot,
    /// maps the scratch area and places the executor there.
    pub(crate) fn prepare(t: &'t mut Tracee, snap: &Snapshot) -> Result<Self, RestoreError> {
        let pid = t.tid();
        let st = snap.state();
        // The vDSO's `syscall` instruction: the stub may be stopped in
        // `pause()` (right after one) or, caught between reporting ready and
        // pausing, in user code; the vDSO's is there either way.
        let insn = crate::remote::find_vdso_syscall(pid)
            .map_err(|e| RestoreError::Unsupported(format!("finding a syscall instruction: {e}")))?
            .ok_or_else(|| {
                RestoreError::Unsupported("no syscall instruction in the stub's vDSO".into())
            })?;
        let call =
            |t: &mut Tracee, nr: i64, args: [u64; 6], what: &str| -> Result<u64, RestoreError> {
                let ret = t.remote_syscall_at(insn, nr, args)?;
                if (-4095..0).contains(&ret) {
                    return Err(RestoreError::Call {
                        what: what.to_string(),
                        source: Errno::from_raw(-ret as i32),
                    });
                }
                Ok(ret as u64)
            };
        // The stub's rseq area is about to be unmapped; the kernel would
        // kill the stub updating it.
        let rseq = t.rseq_configuration()?;
        if rseq.abi_pointer != 0 {
            call(
                t,
                libc::SYS_rseq,
                [
                    rseq.abi_pointer,
                    u64::from(rseq.abi_size),
                    RSEQ_FLAG_UNREGISTER,
                    u64::from(rseq.signature),
                    0,
                    0,
                ],
                "unregistering the stub's rseq",
            )?;
        }

        let stub_maps = proc::read_maps(pid)?;
        check_vdso(pid, &stub_maps, &st.process.mappings, &st.vdso_hash)?;
        let specials: u64 = stub_maps
            .iter()
            .filter(|m| is_vdso(&m.kind))
            .map(MapEntry::len)
            .sum();
        let need = SCRATCH_LEN + specials;
        let mut occupied: Vec<(u64, u64)> = stub_maps.iter().map(|m| (m.start, m.end)).collect();
        occupied.extend(st.process.mappings.iter().map(|v| (v.start, v.end)));
        let scratch =
            find_hole(&mut occupied, need).ok_or(RestoreError::NoScratch { len: need })?;
        let got = call(
            t,
            libc::SYS_mmap,
            [
                scratch,
                need,
                (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64,
                (libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_FIXED_NOREPLACE
                    | libc::MAP_NORESERVE) as u64,
                u64::MAX,
                0,
            ],
            "mapping the restorer's scratch area",
        )?;
        if got != scratch {
            return Err(RestoreError::NoScratch { len: need });
        }
        let mem_path = format!("/proc/{pid}/mem");
        let mem = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&mem_path)
            .map_err(|source| RestoreError::Io {
                what: format!("Opening {mem_path}"),
                source,
            })?;
        mem.write_all_at(&EXECUTOR, scratch)
            .map_err(|source| RestoreError::Io {
                what: "Placing the executor".into(),
                source,
            })?;
        Ok(Self {
            t,
            threads: Vec::new(),
            pid,
            mem,
            scratch,
            scratch_len: need,
            temp: scratch + SCRATCH_LEN,
        })
    }

    /// A view on a process that already has the scratch area and executor
    /// of [`Remote::prepare`] (a template, or a process forked from one).
    pub(crate) fn from_parts(t: &'t mut Tracee, mem: File, scratch: u64, scratch_len: u64) -> Self {
        let pid = t.tid();
        Self {
            t,
            threads: Vec::new(),
            pid,
            mem,
            scratch,
            scratch_len,
            temp: scratch + SCRATCH_LEN,
        }
    }

    /// The parts [`Remote::from_parts`] takes back: `/proc/<pid>/mem`, the
    /// scratch area's address and length.
    pub(crate) fn into_parts(self) -> (File, u64, u64) {
        (self.mem, self.scratch, self.scratch_len)
    }

    /// Writes `bytes` at `addr` of the stub (through `/proc/<pid>/mem`,
    /// which also writes read-only pages).
    fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), RestoreError> {
        self.mem
            .write_all_at(bytes, addr)
            .map_err(|source| RestoreError::Io {
                what: format!("Writing {} bytes at {addr:#x}", bytes.len()),
                source,
            })
    }

    /// Eager memory: installs the saved pages of anonymous mappings with
    /// `UFFDIO_COPY` (one ioctl per run; it allocates and fills each page
    /// without a page fault or a zeroing pass, about 1.5x faster than
    /// writing into freshly mapped memory on this kind of machine), through
    /// a userfaultfd that is closed again before the process runs, and
    /// writes the rest (written pages of private file mappings) directly.
    /// Where userfaultfd is unavailable every page is written directly.
    pub(crate) fn write_eager(
        &mut self,
        snap: &Snapshot,
        runs: &[(u64, &[u8])],
    ) -> Result<(), RestoreError> {
        let ranges = lazy_ranges(snap);
        let uffd = match self.create_uffd(false) {
            Ok(fd) => fd,
            Err(e) => {
                debug!(error = %e, "no userfaultfd for an eager restore; writing pages directly");
                return self.write_runs(runs);
            }
        };
        for &(start, end) in &ranges {
            uffd::register(uffd.as_fd(), start, end - start).map_err(|source| {
                RestoreError::Call {
                    what: format!("registering {start:#x}-{end:#x} for eager memory"),
                    source,
                }
            })?;
        }
        let mut direct = Vec::new();
        for &(addr, bytes) in runs {
            // A run lies within one mapping (the checkpoint captures
            // mapping by mapping).
            if !in_ranges(&ranges, addr) {
                direct.push((addr, bytes));
                continue;
            }
            let mut done = 0;
            let mut stalls = 0;
            while done < bytes.len() {
                let at = addr + done as u64;
                match uffd::copy(uffd.as_fd(), at, &bytes[done..]) {
                    Ok(n) if n > 0 => done += n,
                    // EAGAIN means the layout is changing; the stub is
                    // stopped, so this can only be transient.
                    Ok(_) | Err(Errno::EAGAIN) if stalls < 100 => stalls += 1,
                    Ok(_) => {
                        return Err(RestoreError::Call {
                            what: format!("UFFDIO_COPY at {at:#x} makes no progress"),
                            source: Errno::EAGAIN,
                        })
                    }
                    Err(source) => {
                        return Err(RestoreError::Call {
                            what: format!("UFFDIO_COPY of {} bytes at {at:#x}", bytes.len() - done),
                            source,
                        })
                    }
                }
            }
        }
        // Closing the userfaultfd unregisters every range: from here on the
        // memory is ordinary anonymous memory.
        drop(uffd);
        self.write_runs(&direct)
    }

    /// Writes each `(address, bytes)` run into the stub with as few
    /// `process_vm_writev` calls as the iovec limit allows (it pins and
    /// copies whole batches; a `/proc/<pid>/mem` write goes through a
    /// one-page bounce buffer and is several times slower). A run the call
    /// cannot write, such as a written page of a read-only private file
    /// mapping (RELRO), is finished through `/proc/<pid>/mem`, which
    /// writes with `FOLL_FORCE`.
    fn write_runs(&self, runs: &[(u64, &[u8])]) -> Result<(), RestoreError> {
        const MAX_IOVECS: usize = 1024;
        let mut idx = 0;
        let mut done = 0; // bytes of runs[idx] already written
        while idx < runs.len() {
            let end = (idx + MAX_IOVECS).min(runs.len());
            let local: Vec<std::io::IoSlice<'_>> = runs[idx..end]
                .iter()
                .enumerate()
                .map(|(i, (_, b))| std::io::IoSlice::new(if i == 0 { &b[done..] } else { b }))
                .collect();
            let remote: Vec<RemoteIoVec> = runs[idx..end]
                .iter()
                .enumerate()
                .map(|(i, &(addr, b))| {
                    let skip = if i == 0 { done } else { 0 };
                    RemoteIoVec {
                        base: (addr + skip as u64) as usize,
                        len: b.len() - skip,
                    }
                })
                .collect();
            let batch: usize = remote.iter().map(|r| r.len).sum();
            // An error (EFAULT on the first iovec; EPERM or ENOSYS where the
            // call is unavailable) counts as nothing written: the
            // /proc/<pid>/mem path below then reports the real cause.
            let mut left = process_vm_writev(self.pid, &local, &remote).unwrap_or(0);
            let short = left < batch;
            while left > 0 {
                let remaining = runs[idx].1.len() - done;
                if left >= remaining {
                    left -= remaining;
                    idx += 1;
                    done = 0;
                } else {
                    done += left;
                    left = 0;
                }
            }
            if short {
                let (addr, bytes) = runs[idx];
                self.write(addr + done as u64, &bytes[done..])?;
                idx += 1;
                done = 0;
            }
        }
        Ok(())
    }

    /// For a lazy restore: copies in the saved pages that will not be
    /// served on demand ([`pages_before_resume`]), taking them from the
    /// working set where it has them (one file, already read) and from the
    /// image's chunks otherwise, and writing them in batches.
    fn write_unregistered_pages(
        &self,
        snap: &Snapshot,
        ranges: &[(u64, u64)],
        ws: Option<&WorkingSet>,
    ) -> Result<(), RestoreError> {
        let st = snap.state();
        let chunk_pages = u64::from(st.memory.chunk_pages);
        let mut chunks: std::collections::HashMap<u64, Vec<u8>> = std::collections::HashMap::new();
        let mut from_chunks: Vec<(u64, u64, usize)> = Vec::new(); // (addr, chunk, offset)
        let mut runs: Vec<(u64, &[u8])> = Vec::new();
        for addr in pages_before_resume(snap, ranges) {
            if let Some(bytes) = ws.and_then(|w| w.direct_page(addr)) {
                runs.push((addr, bytes));
                continue;
            }
            let Some(run) = st.memory.run_at(addr) else {
                continue;
            };
            let image_page = run.image_page + (addr - run.addr) / PAGE_SIZE;
            let chunk_no = image_page / chunk_pages;
            if let std::collections::hash_map::Entry::Vacant(e) = chunks.entry(chunk_no) {
                e.insert(snap.read_chunk(chunk_no as usize)?);
            }
            let off = ((image_page % chunk_pages) * PAGE_SIZE) as usize;
            from_chunks.push((addr, chunk_no, off));
        }
        for &(addr, chunk_no, off) in &from_chunks {
            let chunk = &chunks[&chunk_no];
            runs.push((addr, &chunk[off..off + PAGE_SIZE as usize]));
        }
        self.write_runs(&runs)
    }

    /// Creates a userfaultfd inside the stub (while it is still root, so it
    /// may handle faults in kernel mode too), takes it over with
    /// `pidfd_getfd`, and closes the stub's copy. With `events`, enables
    /// the events that keep anonymous-memory semantics while pages are
    /// served lazily (fork, mremap, madvise, munmap).
    fn create_uffd(&mut self, events: bool) -> Result<OwnedFd, RestoreError> {
        let mut b = Batch::default();
        b.call(
            libc::SYS_userfaultfd,
            [
                V((libc::O_CLOEXEC | libc::O_NONBLOCK) as u64),
                V(0),
                V(0),
                V(0),
                V(0),
                V(0),
            ],
            "creating a userfaultfd",
        );
        let remote = self.run(&b)?[0];
        let call = |what: &str| {
            let what = what.to_string();
            move |source| RestoreError::Call { what, source }
        };
        let pidfd = crate::sys::pidfd_open(self.pid.as_raw()).map_err(call("pidfd_open"))?;
        let fd = crate::sys::pidfd_getfd(&pidfd, remote as i32)
            .map_err(call("taking the userfaultfd"))?;
        let mut b = Batch::default();
        b.call(
            libc::SYS_close,
            [V(remote), V(0), V(0), V(0), V(0), V(0)],
            "closing the stub's userfaultfd",
        );
        self.run(&b)?;
        let features = if events {
            uffd::FEATURE_EVENT_FORK
                | uffd::FEATURE_EVENT_REMAP
                | uffd::FEATURE_EVENT_REMOVE
                | uffd::FEATURE_EVENT_UNMAP
        } else {
            0
        };
        uffd::api(fd.as_fd(), features).map_err(call("UFFDIO_API"))?;
        Ok(fd)
    }

    /// Runs a batch in the leader; returns each call's result.
    pub(crate) fn run(&mut self, batch: &Batch) -> Result<Vec<u64>, RestoreError> {
        self.run_in(0, batch).map(|(r, _)| r)
    }

    /// Runs a batch in thread `which` (0: the leader, `i`: the `i`-th
    /// created thread); returns each call's result and the threads it
    /// created.
    pub(crate) fn run_in(
        &mut self,
        which: usize,
        batch: &Batch,
    ) -> Result<(Vec<u64>, Vec<Pid>), RestoreError> {
        if batch.calls.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let table = self.scratch + TABLE_OFFSET;
        let data_at = table + (batch.calls.len() as u64 + 1) * 64;
        if data_at + batch.data.len() as u64 > self.scratch + SCRATCH_LEN {
            return Err(RestoreError::Unsupported(format!(
                "a batch of {} calls with {} bytes of arguments",
                batch.calls.len(),
                batch.data.len()
            )));
        }
        let mut bytes = Vec::with_capacity((batch.calls.len() + 1) * 64 + batch.data.len());
        for (nr, args, _) in &batch.calls {
            bytes.extend_from_slice(&nr.to_le_bytes());
            for a in args {
                let v = match *a {
                    Arg::Val(v) => v,
                    Arg::Data(off) => data_at + off as u64,
                };
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            // Result slot, pre-set to an error so a call that never ran reads as one.
            bytes.extend_from_slice(&(-i64::from(libc::ECANCELED)).to_le_bytes());
        }
        bytes.extend_from_slice(&(-1i64).to_le_bytes());
        bytes.extend_from_slice(&[0u8; 56]);
        let mut data = batch.data.clone();
        for &(at, to) in &batch.pointers {
            data[at..at + 8].copy_from_slice(&(data_at + to as u64).to_le_bytes());
        }
        bytes.extend_from_slice(&data);
        self.mem
            .write_all_at(&bytes, table)
            .map_err(|source| RestoreError::Io {
                what: "Writing a call table".into(),
                source,
            })?;
        let t: &mut Tracee = match which {
            0 => self.t,
            i => &mut self.threads[i - 1],
        };
        let mut regs = t.regs()?;
        regs.rip = self.scratch;
        regs.r12 = table;
        regs.orig_rax = u64::MAX;
        let (_, clones) = t.run_until_trap(&regs, batch.calls[0].0)?;
        let mut results = vec![0u8; batch.calls.len() * 64];
        self.mem
            .read_exact_at(&mut results, table)
            .map_err(|source| RestoreError::Io {
                what: "Reading call results".into(),
                source,
            })?;
        let mut out = Vec::with_capacity(batch.calls.len());
        for (i, (_, _, what)) in batch.calls.iter().enumerate() {
            let off = i * 64 + 56;
            let v = i64::from_le_bytes(results[off..off + 8].try_into().unwrap_or([0; 8]));
            if (-4095..0).contains(&v) {
                return Err(RestoreError::Call {
                    what: what.clone(),
                    source: Errno::from_raw(-v as i32),
                });
            }
            out.push(v as u64);
        }
        Ok((out, clones))
    }

    /// Unmaps the stub, moves the vDSO, recreates every mapping and the
    /// memory-layout fields.
    pub(crate) fn replace_layout(&mut self, snap: &Snapshot) -> Result<(), RestoreError> {
        let p = &snap.state().process;
        let stub_maps = proc::read_maps(self.pid)?;

        // 1. Unmap the stub; park its vDSO mappings in the temp area; open files.
        let mut b = Batch::default();
        for m in &stub_maps {
            if is_vdso(&m.kind) || m.kind == MappingKind::Vsyscall || m.start == self.scratch {
                continue;
            }
            b.call(
                libc::SYS_munmap,
                [V(m.start), V(m.len()), V(0), V(0), V(0), V(0)],
                format!("unmapping the stub at {:#x}", m.start),
            );
        }
        let mut moves = Vec::new();
        let mut temp = self.temp;
        for m in stub_maps.iter().filter(|m| is_vdso(&m.kind)) {
            let kind = vdso_kind(&m.kind);
            let Some(target) = p.mappings.iter().find(|v| Some(&v.kind) == kind.as_ref()) else {
                continue;
            };
            b.call(
                libc::SYS_mremap,
                [
                    V(m.start),
                    V(m.len()),
                    V(m.len()),
                    V((libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64),
                    V(temp),
                    V(0),
                ],
                format!("moving {:?} out of the way", m.kind),
            );
            moves.push((temp, m.len(), target.start, m.kind.clone()));
            temp += m.len();
        }
        for (from, len, to, kind) in &moves {
            b.call(
                libc::SYS_mremap,
                [
                    V(*from),
                    V(*len),
                    V(*len),
                    V((libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64),
                    V(*to),
                    V(0),
                ],
                format!("moving {kind:?} to {to:#x}"),
            );
        }
        // Files to map, and the executable.
        let mut files: Vec<(PathBuf, bool, Option<FileIdentity>)> =
            vec![(p.exe.clone(), false, None)];
        for v in &p.mappings {
            if let VmaKind::File { path, identity, .. } = &v.kind {
                let rw = v.shared && v.prot & libc::PROT_WRITE != 0;
                match files.iter_mut().find(|(fp, w, _)| fp == path && *w == rw) {
                    Some(f) => {
                        f.2.get_or_insert(*identity);
                    }
                    None => files.push((path.clone(), rw, Some(*identity))),
                }
            }
        }
        let first_open = b.calls.len();
        for (path, rw, _) in &files {
            let mut c = path.as_os_str().as_encoded_bytes().to_vec();
            c.push(0);
            let arg = b.data(&c);
            let flags = if *rw { libc::O_RDWR } else { libc::O_RDONLY } | libc::O_CLOEXEC;
            b.call(
                libc::SYS_openat,
                [
                    V(libc::AT_FDCWD as u64),
                    arg,
                    V(flags as u64),
                    V(0),
                    V(0),
                    V(0),
                ],
                format!("opening {}", path.display()),
            );
        }
        let results = self.run(&b)?;
        let fds: Vec<u64> = results[first_open..].to_vec();
        for ((path, _, identity), fd) in files.iter().zip(&fds) {
            let Some(want) = identity else { continue };
            let link = format!("/proc/{}/fd/{fd}", self.pid);
            let meta = std::fs::metadata(&link).map_err(|source| RestoreError::Io {
                what: format!("Checking {}", path.display()),
                source,
            })?;
            if want.dev != meta.dev()
                || want.ino != meta.ino()
                || want.size != meta.size()
                || want.mtime_ns != meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
            {
                return Err(RestoreError::FileChanged { path: path.clone() });
            }
        }

        // 2. Map everything, set the layout fields, close the files.
        let mut b = Batch::default();
        for v in &p.mappings {
            let len = v.end - v.start;
            let (flags, fd, offset) = match &v.kind {
                VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock => continue,
                VmaKind::Anonymous | VmaKind::Heap => {
                    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, u64::MAX, 0)
                }
                VmaKind::Stack => (
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_GROWSDOWN,
                    u64::MAX,
                    0,
                ),
                VmaKind::File { path, offset, .. } => {
                    let rw = v.shared && v.prot & libc::PROT_WRITE != 0;
                    let i = files
                        .iter()
                        .position(|(fp, w, _)| fp == path && *w == rw)
                        .unwrap_or(0);
                    let share = if v.shared {
                        libc::MAP_SHARED
                    } else {
                        libc::MAP_PRIVATE
                    };
                    (share, fds[i], *offset)
                }
            };
            b.call(
                libc::SYS_mmap,
                [
                    V(v.start),
                    V(len),
                    V(v.prot as u64),
                    V((flags | libc::MAP_FIXED | libc::MAP_NORESERVE) as u64),
                    V(fd),
                    V(offset),
                ],
                format!("mapping {:#x}-{:#x} ({})", v.start, v.end, describe(v)),
            );
        }
        let mm = &p.mm;
        let auxv: Vec<u8> = mm.auxv.iter().flat_map(|w| w.to_le_bytes()).collect();
        let auxv_arg = b.data(&auxv);
        // struct prctl_mm_map; the auxv pointer is filled in when placed.
        let mut map = Vec::with_capacity(112);
        for w in [
            mm.start_code,
            mm.end_code,
            mm.start_data,
            mm.end_data,
            mm.start_brk,
            mm.brk,
            mm.start_stack,
            mm.arg_start,
            mm.arg_end,
            mm.env_start,
            mm.env_end,
            0,
        ] {
            map.extend_from_slice(&w.to_le_bytes());
        }
        map.extend_from_slice(&(auxv.len() as u32).to_le_bytes());
        map.extend_from_slice(&(fds[0] as u32).to_le_bytes());
        let map_arg = b.data(&map);
        b.pointer(map_arg, 88, auxv_arg);
        b.call(
            libc::SYS_prctl,
            [
                V(PR_SET_MM),
                V(PR_SET_MM_MAP),
                map_arg,
                V(map.len() as u64),
                V(0),
                V(0),
            ],
            "the memory-layout fields (PR_SET_MM_MAP)",
        );
        for fd in &fds {
            b.call(
                libc::SYS_close,
                [V(*fd), V(0), V(0), V(0), V(0), V(0)],
                "closing a mapped file",
            );
        }
        self.run(&b)?;
        Ok(())
    }

    /// Creates every thread but the leader with its exact id (`clone3`
    /// with `set_tid`, run by the leader), traced from its first instruction.
    pub(crate) fn create_threads(&mut self, snap: &Snapshot) -> Result<(), RestoreError> {
        const CLONE_THREAD_FLAGS: u64 = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM) as u64;
        for th in &snap.state().process.threads[1..] {
            let mut b = Batch::default();
            let set_tid = b.data(&th.tid.to_le_bytes());
            let mut args = Vec::with_capacity(88);
            for w in [CLONE_THREAD_FLAGS, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0] {
                args.extend_from_slice(&w.to_le_bytes());
            }
            let args_arg = b.data(&args);
            b.pointer(args_arg, 64, set_tid);
            b.call(
                libc::SYS_clone3,
                [args_arg, V(88), V(0), V(0), V(0), V(0)],
                format!("creating thread {}", th.tid),
            );
            let (_, clones) = self.run_in(0, &b)?;
            let [tid] = clones[..] else {
                return Err(RestoreError::Unsupported(format!(
                    "creating thread {} reported {} new threads",
                    th.tid,
                    clones.len()
                )));
            };
            self.threads.push(Tracee::adopt(tid)?);
        }
        Ok(())
    }

    /// Process-wide kernel state (signal dispositions, limits), then each
    /// thread's own (registrations, credentials), then the seccomp filters.
    pub(crate) fn restore_kernel_state(&mut self, snap: &Snapshot) -> Result<(), RestoreError> {
        let p = &snap.state().process;
        let mut b = Batch::default();
        for (i, a) in p.signals.iter().enumerate() {
            let sig = i as u64 + 1;
            if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
                continue;
            }
            let mut act = Vec::with_capacity(32);
            for w in [a.handler, a.flags, a.restorer, a.mask.0] {
                act.extend_from_slice(&w.to_le_bytes());
            }
            let arg = b.data(&act);
            b.call(
                libc::SYS_rt_sigaction,
                [V(sig), arg, V(0), V(8), V(0), V(0)],
                format!("the disposition of signal {sig}"),
            );
        }
        for l in &p.rlimits {
            let mut lim = Vec::with_capacity(16);
            lim.extend_from_slice(&l.cur.to_le_bytes());
            lim.extend_from_slice(&l.max.to_le_bytes());
            let arg = b.data(&lim);
            b.call(
                libc::SYS_prlimit64,
                [V(0), V(u64::from(l.resource)), arg, V(0), V(0), V(0)],
                format!("resource limit {}", l.resource),
            );
        }
        b.call(
            libc::SYS_prctl,
            [V(PR_SET_PDEATHSIG), V(0), V(0), V(0), V(0), V(0)],
            "the parent-death signal",
        );
        self.run(&b)?;

        for (i, th) in p.threads.iter().enumerate() {
            let b = thread_batch(th, &p.creds);
            self.run_in(i, &b)?;
        }

        let mut b = Batch::default();
        let tsync = if p.threads.len() > 1 {
            SECCOMP_FILTER_FLAG_TSYNC
        } else {
            0
        };
        for (i, f) in p.seccomp_filters.iter().enumerate() {
            let insns = b.data(f);
            // struct sock_fprog { u16 len; u8 pad[6]; struct sock_filter *filter; }
            let mut fprog = Vec::with_capacity(16);
            fprog.extend_from_slice(&((f.len() / 8) as u16).to_le_bytes());
            fprog.extend_from_slice(&[0u8; 14]);
            let prog = b.data(&fprog);
            b.pointer(prog, 8, insns);
            b.call(
                libc::SYS_seccomp,
                [V(SECCOMP_SET_MODE_FILTER), V(tsync), prog, V(0), V(0), V(0)],
                format!("seccomp filter {i}"),
            );
        }
        self.run(&b)?;
        Ok(())
    }

    /// Unmaps the scratch area and loads every thread's saved registers;
    /// returns the created threads, ready to detach.
    pub(crate) fn finish(&mut self, snap: &Snapshot) -> Result<Vec<Tracee>, RestoreError> {
        let ret = self.t.remote_syscall_at(
            self.scratch + EXECUTOR_SYSCALL,
            libc::SYS_munmap,
            [self.scratch, self.scratch_len, 0, 0, 0, 0],
        )?;
        if ret < 0 {
            return Err(RestoreError::Call {
                what: "unmapping the restorer's scratch area".into(),
                source: Errno::from_raw(-ret as i32),
            });
        }
        let images = &snap.state().process.threads;
        for (i, th) in images.iter().enumerate() {
            let t: &Tracee = match i {
                0 => self.t,
                i => &self.threads[i - 1],
            };
            t.set_xstate(&Xstate::from_bytes(th.xstate.clone()))?;
            t.set_sigmask(th.sigmask)?;
            t.set_regs(&th.regs)?;
        }
        Ok(std::mem::take(&mut self.threads))
    }
}

/// One thread's own kernel state: name, `clear_child_tid`, robust list,
/// alternate stack, rseq, and its credentials (per thread in the kernel).
fn thread_batch(th: &ThreadImage, c: &Credentials) -> Batch {
    let mut b = Batch::default();
    let mut comm = th.comm.as_bytes().to_vec();
    comm.truncate(15);
    comm.push(0);
    let arg = b.data(&comm);
    b.call(
        libc::SYS_prctl,
        [V(PR_SET_NAME), arg, V(0), V(0), V(0), V(0)],
        "the thread name",
    );
    b.call(
        libc::SYS_set_tid_address,
        [V(th.clear_child_tid), V(0), V(0), V(0), V(0), V(0)],
        "clear_child_tid",
    );
    b.call(
        libc::SYS_set_robust_list,
        [
            V(th.robust_list.head),
            V(th.robust_list.len.max(24)),
            V(0),
            V(0),
            V(0),
            V(0),
        ],
        "the robust futex list",
    );
    let ss = &th.sigaltstack;
    let mut stack = Vec::with_capacity(24);
    stack.extend_from_slice(&ss.sp.to_le_bytes());
    let flags = ss.flags & (libc::SS_DISABLE | (1 << 31));
    stack.extend_from_slice(&(flags as u32 as u64).to_le_bytes());
    stack.extend_from_slice(&ss.size.to_le_bytes());
    let arg = b.data(&stack);
    b.call(
        libc::SYS_sigaltstack,
        [arg, V(0), V(0), V(0), V(0), V(0)],
        "the alternate signal stack",
    );
    if th.rseq.abi_pointer != 0 {
        b.call(
            libc::SYS_rseq,
            [
                V(th.rseq.abi_pointer),
                V(u64::from(th.rseq.abi_size)),
                V(0),
                V(u64::from(th.rseq.signature)),
                V(0),
                V(0),
            ],
            "the rseq registration",
        );
    }
    let last_cap: u64 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for cap in 0..=last_cap {
        if c.cap_bounding & (1 << cap) == 0 {
            b.call(
                libc::SYS_prctl,
                [V(PR_CAPBSET_DROP), V(cap), V(0), V(0), V(0), V(0)],
                format!("dropping capability {cap} from the bounding set"),
            );
        }
    }
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    let arg = b.data(&groups);
    b.call(
        libc::SYS_setgroups,
        [V(c.groups.len() as u64), arg, V(0), V(0), V(0), V(0)],
        "supplementary groups",
    );
    b.call(
        libc::SYS_setresgid,
        [
            V(c.gid[0].into()),
            V(c.gid[1].into()),
            V(c.gid[2].into()),
            V(0),
            V(0),
            V(0),
        ],
        "group ids",
    );
    b.call(
        libc::SYS_setresuid,
        [
            V(c.uid[0].into()),
            V(c.uid[1].into()),
            V(c.uid[2].into()),
            V(0),
            V(0),
            V(0),
        ],
        "user ids",
    );
    let mut hdr = Vec::with_capacity(8);
    hdr.extend_from_slice(&LINUX_CAPABILITY_VERSION_3.to_le_bytes());
    hdr.extend_from_slice(&0u32.to_le_bytes());
    let mut data = Vec::with_capacity(24);
    for half in 0..2 {
        for set in [c.cap_effective, c.cap_permitted, c.cap_inheritable] {
            data.extend_from_slice(&((set >> (32 * half)) as u32).to_le_bytes());
        }
    }
    let hdr_arg = b.data(&hdr);
    let data_arg = b.data(&data);
    b.call(
        libc::SYS_capset,
        [hdr_arg, data_arg, V(0), V(0), V(0), V(0)],
        "capabilities",
    );
    if c.no_new_privs {
        b.call(
            libc::SYS_prctl,
            [V(PR_SET_NO_NEW_PRIVS), V(1), V(0), V(0), V(0), V(0)],
            "no_new_privs",
        );
    }
    b
}

fn is_vdso(kind: &MappingKind) -> bool {
    matches!(
        kind,
        MappingKind::Vdso | MappingKind::Vvar | MappingKind::VvarVclock
    )
}

fn vdso_kind(kind: &MappingKind) -> Option<VmaKind> {
    match kind {
        MappingKind::Vdso => Some(VmaKind::Vdso),
        MappingKind::Vvar => Some(VmaKind::Vvar),
        MappingKind::VvarVclock => Some(VmaKind::VvarVclock),
        _ => None,
    }
}

fn describe(v: &Vma) -> String {
    match &v.kind {
        VmaKind::File { path, .. } => path.display().to_string(),
        other => format!("{other:?}"),
    }
}

/// Refuses a stub whose vDSO is not the snapshot's: different code, or
/// different sizes of the vDSO data mappings.
fn check_vdso(pid: Pid, stub: &[MapEntry], snap: &[Vma], hash: &str) -> Result<(), RestoreError> {
    for m in stub.iter().filter(|m| is_vdso(&m.kind)) {
        let kind = vdso_kind(&m.kind);
        let Some(v) = snap.iter().find(|v| Some(&v.kind) == kind.as_ref()) else {
            return Err(RestoreError::VdsoMismatch {
                what: format!("the snapshot has no {:?}", m.kind),
            });
        };
        if v.end - v.start != m.len() {
            return Err(RestoreError::VdsoMismatch {
                what: format!(
                    "{:?} is {} bytes here, {} in the snapshot",
                    m.kind,
                    m.len(),
                    v.end - v.start
                ),
            });
        }
        if m.kind == MappingKind::Vdso {
            let mem = ProcessMemory::open(pid)?;
            let mut text = vec![0u8; m.len() as usize];
            mem.read(m.start, &mut text)?;
            if blake3::hash(&text).to_hex().as_str() != hash {
                return Err(RestoreError::VdsoMismatch {
                    what: "different vDSO code".into(),
                });
            }
        }
    }
    for v in snap {
        let kind = match v.kind {
            VmaKind::Vdso => MappingKind::Vdso,
            VmaKind::Vvar => MappingKind::Vvar,
            VmaKind::VvarVclock => MappingKind::VvarVclock,
            _ => continue,
        };
        if !stub.iter().any(|m| m.kind == kind) {
            return Err(RestoreError::VdsoMismatch {
                what: format!("this kernel has no {kind:?}"),
            });
        }
    }
    Ok(())
}

/// The lowest free range of `len` bytes at or above [`SCRATCH_FLOOR`].
fn find_hole(occupied: &mut [(u64, u64)], len: u64) -> Option<u64> {
    occupied.sort_unstable();
    let mut candidate = SCRATCH_FLOOR;
    for &(start, end) in occupied.iter() {
        if end <= candidate {
            continue;
        }
        if start >= candidate + len {
            break;
        }
        candidate = end.max(candidate);
    }
    (candidate + len <= TASK_SIZE).then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hole_skips_occupied_ranges() {
        let mut occ = vec![(0x2000_0000, 0x2000_2000), (0x1000_0000, 0x1000_1000)];
        assert_eq!(find_hole(&mut occ, 0x1000), Some(0x1000_1000));
        let mut occ = vec![(0x1000_0000, 0x1000_1000), (0x1000_1800, 0x1000_3000)];
        assert_eq!(find_hole(&mut occ, 0x1000), Some(0x1000_3000));
        let mut occ = vec![(0, TASK_SIZE)];
        assert_eq!(find_hole(&mut occ, 0x1000), None);
    }

    fn thread_with_rseq(abi_pointer: u64, abi_size: u32) -> ThreadImage {
        ThreadImage {
            tid: 1,
            comm: String::new(),
            regs: Default::default(),
            xstate: vec![],
            sigmask: Default::default(),
            sigaltstack: Default::default(),
            rseq: crate::ptrace::RseqConfiguration {
                abi_pointer,
                abi_size,
                ..Default::default()
            },
            robust_list: Default::default(),
            clear_child_tid: 0,
        }
    }

    #[test]
    fn rseq_spans_cover_the_areas_pages() {
        let p = PAGE_SIZE;
        let threads = [
            thread_with_rseq(10 * p + 64, 32),
            // Straddles a page boundary.
            thread_with_rseq(20 * p - 16, 32),
            thread_with_rseq(0, 32),
            // Same page as the first.
            thread_with_rseq(10 * p + 128, 32),
        ];
        let spans = rseq_spans(&threads);
        assert_eq!(spans, [(10 * p, 10 * p), (19 * p, 20 * p)]);
        let hits: Vec<u64> = (0..30)
            .map(|i| i * p)
            .filter(|&a| in_spans(&spans, a))
            .collect();
        assert_eq!(hits, [10 * p, 19 * p, 20 * p]);
    }

    /// Forged rseq areas (`fuzz/regressions/snapshot_state`).
    #[test]
    fn forged_rseq_areas_neither_overflow_nor_allocate() {
        let top = !(PAGE_SIZE - 1);
        let spans = rseq_spans(&[thread_with_rseq(u64::MAX - 8, 32)]);
        assert_eq!(spans, [(top, top)]);
        // A 4 GiB area of 10 000 threads is one span, not 10^10 pages.
        let threads = vec![thread_with_rseq(PAGE_SIZE, u32::MAX); 10_000];
        let spans = rseq_spans(&threads);
        assert_eq!(spans.len(), 1);
        assert!(in_spans(&spans, PAGE_SIZE << 19));
        assert!(!in_spans(&spans, PAGE_SIZE << 21));
    }
}
