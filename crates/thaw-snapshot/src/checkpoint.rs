//! Checkpoint: stop a quiescent process, record everything a restore needs,
//! write a snapshot, and let the process go on.
//!
//! Owns: the walk over one process (threads, registers, memory, signal
//! state, layout, credentials, descriptors) and the refusals: anything the
//! engine cannot restore exactly makes [`checkpoint`] fail with a
//! [`CheckpointError`] naming it, and nothing is written.
//!
//! Must not: change the process (remote calls only read; the scratch bytes
//! they use are put back), or keep it stopped after returning.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::unistd::Pid;
use thiserror::Error;
use tracing::debug;

use crate::cpu::{CpuError, CpuFeatures};
use crate::image::{self, ImageError, CHUNK_PAGES};
use crate::memory::{MemoryError, PageKind, PageSelect, ProcessMemory};
use crate::proc::{self, MapEntry, MappingKind, ProcError};
use crate::ptrace::{self, FreezeError, PtraceError, SyscallState};
use crate::remote::{self, RemoteError};
use crate::state::{
    Credentials, EpollTarget, FdImage, FdKind, FileIdentity, MemoryIndex, MmLayout, PageRun,
    ProcessImage, Rlimit, SnapshotState, ThreadImage, Vma, VmaKind, FORMAT_VERSION,
};
use crate::PAGE_SIZE;

/// Character devices that hold no per-open state and are reopened by path.
pub const STATELESS_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// Why a checkpoint failed. Every unsupported object has its own variant
/// naming it.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// Stopping the threads failed.
    #[error("Stopping process {pid}")]
    Freeze {
        /// The process.
        pid: Pid,
        /// Why.
        #[source]
        source: FreezeError,
    },
    /// Reading a thread's state failed.
    #[error("Reading thread state")]
    Ptrace(#[from] PtraceError),
    /// Reading state with remote syscalls failed.
    #[error("Reading process state with remote syscalls")]
    Remote(#[from] RemoteError),
    /// Reading `/proc` failed.
    #[error("Reading /proc of process {pid}")]
    Proc {
        /// The process.
        pid: Pid,
        /// Why.
        #[source]
        source: ProcError,
    },
    /// A `/proc` file could not be read or was not as expected.
    #[error("{path}: {why}")]
    ProcFile {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Reading memory failed.
    #[error("Reading memory")]
    Memory(#[from] MemoryError),
    /// Reading the CPU's features failed.
    #[error("Reading CPU features")]
    Cpu(#[from] CpuError),
    /// Writing the snapshot failed.
    #[error("Writing the snapshot")]
    Image(#[from] ImageError),
    /// A thread was stopped by job control, not by us: it is not idle.
    #[error("Thread {tid} is in a job-control stop; only running or sleeping processes are checkpointed")]
    GroupStopped {
        /// The thread.
        tid: Pid,
    },
    /// Signals are pending: they would be lost or delivered twice.
    #[error("Thread {tid} has pending signals {mask:#x}; checkpoint an idle process")]
    PendingSignals {
        /// The thread.
        tid: Pid,
        /// The pending set.
        mask: u64,
    },
    /// A thread is inside an rseq critical section.
    #[error("Thread {tid} is inside an rseq critical section at {rip:#x}")]
    InRseqCriticalSection {
        /// The thread.
        tid: Pid,
        /// Where.
        rip: u64,
    },
    /// A mapping the engine cannot restore exactly.
    #[error("Unsupported mapping {start:#x}-{end:#x} ({what})")]
    UnsupportedMapping {
        /// First address.
        start: u64,
        /// End.
        end: u64,
        /// What it is.
        what: String,
    },
    /// A descriptor the engine cannot restore.
    #[error("Unsupported file descriptor {fd} ({what})")]
    UnsupportedFd {
        /// The descriptor.
        fd: i32,
        /// What it refers to.
        what: String,
    },
    /// The process has a child process, which the engine does not checkpoint.
    #[error("Process {pid} has child processes; only single processes are checkpointed")]
    HasChildren {
        /// The process.
        pid: Pid,
    },
}

/// What a checkpoint found and wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointStats {
    /// Threads.
    pub threads: usize,
    /// Mappings.
    pub mappings: usize,
    /// Pages stored in the image.
    pub data_pages: u64,
    /// Populated zero pages (not stored).
    pub zero_pages: u64,
    /// Time the process was stopped, microseconds.
    pub frozen_us: u64,
    /// Total time including writing, microseconds.
    pub total_us: u64,
}

/// Checkpoints process `pid` (every thread) into the snapshot directory
/// `dir`, then lets it continue. The process should be idle: blocked in a
/// system call, no signals pending.
pub fn checkpoint(pid: Pid, dir: &Path) -> Result<CheckpointStats, CheckpointError> {
    let t0 = Instant::now();
    let mut frozen =
        ptrace::freeze(pid).map_err(|source| CheckpointError::Freeze { pid, source })?;
    // Checked while frozen: no thread can fork or exit in between.
    let tids: Vec<Pid> = frozen.threads().iter().map(|t| t.tid()).collect();
    let captured =
        no_children(pid, &tids, |p| fs::read_to_string(p)).and_then(|()| capture(&mut frozen));
    let frozen_us = t0.elapsed().as_micros() as u64;
    // Let the process go whatever happened; a failure to do so is reported
    // only if the capture itself succeeded.
    let thawed = frozen.thaw();
    let (state, data) = captured?;
    thawed.map_err(|source| CheckpointError::Freeze { pid, source })?;
    image::write(dir, &state, &data)?;
    let stats = CheckpointStats {
        threads: state.process.threads.len(),
        mappings: state.process.mappings.len(),
        data_pages: state.memory.data_pages,
        zero_pages: state.memory.zero_pages,
        frozen_us,
        total_us: t0.elapsed().as_micros() as u64,
    };
    debug!(?stats, pid = pid.as_raw(), "checkpoint written");
    Ok(stats)
}

/// Fails unless every thread's `/proc/<pid>/task/<tid>/children` can be
/// read and is empty. Fails closed: a file that cannot be read (a kernel
/// without `CONFIG_PROC_CHILDREN`, a permission problem) is an error, never
/// "no children", since a child would be silently left out of the
/// snapshot.
fn no_children(
    pid: Pid,
    tids: &[Pid],
    read: impl Fn(&Path) -> std::io::Result<String>,
) -> Result<(), CheckpointError> {
    if tids.is_empty() {
        return Err(proc_file_err(
            format!("/proc/{pid}/task"),
            "the process has no threads to check for children",
        ));
    }
    for tid in tids {
        let path = PathBuf::from(format!("/proc/{pid}/task/{tid}/children"));
        let children = read(&path).map_err(|e| {
            proc_file_err(
                &path,
                format!("cannot tell whether the process has children: {e}"),
            )
        })?;
        if !children.trim().is_empty() {
            return Err(CheckpointError::HasChildren { pid });
        }
    }
    Ok(())
}

fn proc_err(pid: Pid) -> impl FnOnce(ProcError) -> CheckpointError {
    move |source| CheckpointError::Proc { pid, source }
}

fn proc_file_err(path: impl Into<PathBuf>, why: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::ProcFile {
        path: path.into(),
        why: why.to_string(),
    }
}

/// Captures a frozen process: the state and the data pages.
fn capture(frozen: &mut ptrace::Frozen) -> Result<(SnapshotState, Vec<u8>), CheckpointError> {
    let pid = frozen.pid();
    for t in frozen.threads() {
        if let Some(ptrace::StopKind::GroupStop(_)) = t.stop_kind() {
            return Err(CheckpointError::GroupStopped { tid: t.tid() });
        }
    }
    let status = proc::read_status(pid).map_err(proc_err(pid))?;
    if status.shd_pnd != 0 {
        return Err(CheckpointError::PendingSignals {
            tid: pid,
            mask: status.shd_pnd,
        });
    }

    let (process_state, thread_states) = remote::capture_frozen(frozen)?;
    let mem = ProcessMemory::open(pid)?;

    let mut threads = Vec::new();
    for (t, ts) in frozen.threads().iter().zip(&thread_states) {
        let tid = t.tid();
        let tstatus = read_task_status(pid, tid)?;
        if tstatus.sig_pnd != 0 || !t.held_signals().is_empty() {
            return Err(CheckpointError::PendingSignals {
                tid,
                mask: tstatus.sig_pnd,
            });
        }
        let regs = t.regs()?;
        if let SyscallState::RestartBlock { nr } = regs.syscall_state() {
            debug!(tid = tid.as_raw(), nr, "thread resumes with EINTR");
        }
        let rseq = t.rseq_configuration()?;
        if rseq.abi_pointer != 0 {
            check_rseq(&mem, tid, rseq.abi_pointer, regs.rip)?;
        }
        threads.push(ThreadImage {
            tid: *tstatus.ns_pid.last().unwrap_or(&tid.as_raw()),
            comm: tstatus.name.clone(),
            regs: regs.resume_regs(),
            xstate: t.xstate()?.as_bytes().to_vec(),
            sigmask: t.sigmask()?,
            sigaltstack: ts.sigaltstack,
            rseq,
            robust_list: t.robust_list()?,
            clear_child_tid: ts.clear_child_tid,
        });
    }

    let seccomp_filters = match frozen.threads().first() {
        Some(leader) => {
            let mut filters = Vec::new();
            while let Some(f) = leader.seccomp_filter(filters.len() as u64)? {
                filters.push(f);
            }
            // The kernel lists the newest first; install order is oldest first.
            filters.reverse();
            filters
        }
        None => Vec::new(),
    };

    let maps = proc::read_maps(pid).map_err(proc_err(pid))?;
    // Pages a restore must copy in before the process runs even when the
    // rest is served lazily: each thread's rseq area (the kernel writes it
    // on every return to user space).
    let mut eager_pages: Vec<u64> = threads
        .iter()
        .filter(|t| t.rseq.abi_pointer != 0)
        .flat_map(|t| {
            let first = t.rseq.abi_pointer & !(PAGE_SIZE - 1);
            let last =
                (t.rseq.abi_pointer + u64::from(t.rseq.abi_size).max(1) - 1) & !(PAGE_SIZE - 1);
            (first..=last).step_by(PAGE_SIZE as usize)
        })
        .collect();
    eager_pages.sort_unstable();
    eager_pages.dedup();
    let (mappings, memory, data, vdso_hash) = capture_memory(pid, &mem, &maps, &eager_pages)?;

    let stat = proc::read_stat(pid).map_err(proc_err(pid))?;
    let auxv_path = format!("/proc/{pid}/auxv");
    let raw_auxv = fs::read(&auxv_path).map_err(|e| proc_file_err(&auxv_path, e))?;
    let auxv = raw_auxv
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
        .collect();
    let mm = MmLayout {
        start_code: stat.start_code,
        end_code: stat.end_code,
        start_data: stat.start_data,
        end_data: stat.end_data,
        start_brk: stat.start_brk,
        brk: process_state.brk,
        start_stack: stat.start_stack,
        arg_start: stat.arg_start,
        arg_end: stat.arg_end,
        env_start: stat.env_start,
        env_end: stat.env_end,
        auxv,
    };

    let process = ProcessImage {
        pid: *status.ns_pid.last().unwrap_or(&pid.as_raw()),
        comm: status.name.clone(),
        exe: read_link(&format!("/proc/{pid}/exe"))?,
        cwd: read_link(&format!("/proc/{pid}/cwd"))?,
        umask: status.umask.unwrap_or(0o022),
        creds: read_credentials(pid, &status)?,
        seccomp_filters,
        rlimits: read_rlimits(pid)?,
        mm,
        signals: process_state.signals.actions.clone(),
        mappings,
        threads,
        fds: capture_fds(pid)?,
    };

    let state = SnapshotState {
        format_version: FORMAT_VERSION,
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        kernel_release: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        cpu: CpuFeatures::host()?,
        vdso_hash,
        process,
        memory,
        clocks: process_clocks(pid.as_raw())?,
    };
    Ok((state, data))
}

/// The clocks of `pid` as it sees them: ours plus the offsets of its time
/// namespace.
fn process_clocks(pid: i32) -> Result<crate::state::Clocks, CheckpointError> {
    let path = format!("/proc/{pid}/timens_offsets");
    // Without time namespaces (CONFIG_TIME_NS off) the file is missing and
    // every process sees the host's clocks.
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let offset = |name: &str| -> i64 {
        text.lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next()? == name).then_some(())?;
                let secs: i64 = it.next()?.parse().ok()?;
                let nanos: i64 = it.next()?.parse().ok()?;
                Some(secs * 1_000_000_000 + nanos)
            })
            .unwrap_or(0)
    };
    let now = |id| -> i64 {
        nix::time::clock_gettime(id)
            .map(|t| t.tv_sec() * 1_000_000_000 + t.tv_nsec())
            .unwrap_or(0)
    };
    Ok(crate::state::Clocks {
        monotonic_ns: now(nix::time::ClockId::CLOCK_MONOTONIC) + offset("monotonic"),
        boottime_ns: now(nix::time::ClockId::CLOCK_BOOTTIME) + offset("boottime"),
    })
}

/// Refuses a thread stopped inside its rseq critical section.
fn check_rseq(mem: &ProcessMemory, tid: Pid, abi: u64, rip: u64) -> Result<(), CheckpointError> {
    let mut word = [0u8; 8];
    mem.read(abi + 8, &mut word)?;
    let cs = u64::from_le_bytes(word);
    if cs == 0 {
        return Ok(());
    }
    let mut desc = [0u8; 32];
    mem.read(cs, &mut desc)?;
    let start = u64::from_le_bytes(desc[8..16].try_into().unwrap_or([0; 8]));
    let len = u64::from_le_bytes(desc[16..24].try_into().unwrap_or([0; 8]));
    if (start..start.saturating_add(len)).contains(&rip) {
        return Err(CheckpointError::InRseqCriticalSection { tid, rip });
    }
    Ok(())
}

type MemoryCapture = (Vec<Vma>, MemoryIndex, Vec<u8>, String);

/// Records every mapping and copies the pages a restore cannot get from a
/// file: private anonymous pages and the written (copied-on-write) pages
/// of private file mappings.
///
/// The image holds the pages a lazy restore copies in up front (written
/// pages of file mappings, and `eager_pages`) first, then the anonymous
/// pages it serves on demand, each group in address order: a lazy restore
/// then reads and verifies only the first chunks before the process runs.
fn capture_memory(
    pid: Pid,
    mem: &ProcessMemory,
    maps: &[MapEntry],
    eager_pages: &[u64],
) -> Result<MemoryCapture, CheckpointError> {
    let mut vmas = Vec::new();
    // [up-front group, on-demand group]: (data, runs with group-relative image pages).
    let mut groups: [(Vec<u8>, Vec<PageRun>); 2] =
        [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    let mut zero_pages = 0;
    let mut vdso_hash = String::new();
    for m in maps {
        let unsupported = |what: String| CheckpointError::UnsupportedMapping {
            start: m.start,
            end: m.end,
            what,
        };
        let kind = match &m.kind {
            MappingKind::Vsyscall => continue,
            MappingKind::Vdso => {
                let mut text = vec![0u8; m.len() as usize];
                mem.read(m.start, &mut text)?;
                vdso_hash = blake3::hash(&text).to_hex().to_string();
                VmaKind::Vdso
            }
            MappingKind::Vvar => VmaKind::Vvar,
            MappingKind::VvarVclock => VmaKind::VvarVclock,
            MappingKind::OtherSpecial(name) => return Err(unsupported(name.clone())),
            MappingKind::Anonymous | MappingKind::AnonymousNamed(_) if m.shared => {
                return Err(unsupported("shared anonymous memory".into()))
            }
            MappingKind::Anonymous | MappingKind::AnonymousNamed(_) => VmaKind::Anonymous,
            MappingKind::Heap => VmaKind::Heap,
            MappingKind::Stack => VmaKind::Stack,
            MappingKind::File { path, deleted } => {
                if *deleted {
                    return Err(unsupported(format!(
                        "{} (deleted, a memfd or shared memory)",
                        path.display()
                    )));
                }
                let link = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
                let meta = fs::metadata(&link).map_err(|e| proc_file_err(&link, e))?;
                if meta.ino() != m.inode {
                    return Err(unsupported(format!(
                        "{} changed while mapped",
                        path.display()
                    )));
                }
                VmaKind::File {
                    path: path.clone(),
                    offset: m.offset,
                    identity: identity(&meta),
                }
            }
        };
        let capture = match kind {
            VmaKind::Anonymous | VmaKind::Heap | VmaKind::Stack => Some(PageSelect::AllPopulated),
            VmaKind::File { .. } if !m.shared => Some(PageSelect::PrivateOnly),
            _ => None,
        };
        let is_file = matches!(kind, VmaKind::File { .. });
        if let Some(select) = capture {
            if m.prot.to_prot_bits() == libc::PROT_NONE && !is_file {
                // Reserved address space: /proc/pid/mem cannot read it, and
                // pagemap shows it empty unless it was accessible once.
                let entries = mem.pagemap(m.start, m.end)?;
                if entries.iter().any(|e| e.populated()) {
                    return Err(unsupported("populated PROT_NONE memory".into()));
                }
            } else {
                let range = mem.capture(m.start, m.end, select)?;
                let mut bytes = range.data.chunks_exact(PAGE_SIZE as usize);
                for (i, k) in range.kinds.iter().enumerate() {
                    let addr = m.start + i as u64 * PAGE_SIZE;
                    let page: &[u8] = match k {
                        PageKind::Absent | PageKind::Skipped => continue,
                        // A zero page of an anonymous mapping comes back by
                        // itself; one of a file mapping must be stored, or
                        // the file's bytes would show through.
                        PageKind::Zero if !is_file => {
                            zero_pages += 1;
                            continue;
                        }
                        PageKind::Zero => &[0u8; PAGE_SIZE as usize],
                        PageKind::Data => bytes.next().unwrap_or(&[0u8; PAGE_SIZE as usize]),
                    };
                    let eager = is_file || eager_pages.binary_search(&addr).is_ok();
                    let (data, runs) = &mut groups[usize::from(!eager)];
                    let image_page = (data.len() as u64) / PAGE_SIZE;
                    data.extend_from_slice(page);
                    match runs.last_mut() {
                        Some(r)
                            if r.addr + r.pages * PAGE_SIZE == addr
                                && r.image_page + r.pages == image_page =>
                        {
                            r.pages += 1
                        }
                        _ => runs.push(PageRun {
                            addr,
                            pages: 1,
                            image_page,
                        }),
                    }
                }
            }
        }
        vmas.push(Vma {
            start: m.start,
            end: m.end,
            prot: m.prot.to_prot_bits(),
            shared: m.shared,
            kind,
        });
    }
    let [(mut data, mut runs), (lazy_data, lazy_runs)] = groups;
    let eager_pages_in_image = data.len() as u64 / PAGE_SIZE;
    data.extend_from_slice(&lazy_data);
    runs.extend(lazy_runs.into_iter().map(|r| PageRun {
        image_page: r.image_page + eager_pages_in_image,
        ..r
    }));
    runs.sort_by_key(|r| r.addr);
    let data_pages = data.len() as u64 / PAGE_SIZE;
    let index = MemoryIndex {
        data_pages,
        zero_pages,
        runs,
        chunk_pages: CHUNK_PAGES,
        chunk_hashes: image::chunk_hashes(&data),
    };
    Ok((vmas, index, data, vdso_hash))
}

fn identity(meta: &fs::Metadata) -> FileIdentity {
    FileIdentity {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
    }
}

fn read_link(path: &str) -> Result<PathBuf, CheckpointError> {
    fs::read_link(path).map_err(|e| proc_file_err(path, e))
}

fn read_task_status(pid: Pid, tid: Pid) -> Result<proc::Status, CheckpointError> {
    let path = format!("/proc/{pid}/task/{tid}/status");
    let text = fs::read_to_string(&path).map_err(|e| proc_file_err(&path, e))?;
    proc::parse_status(&text).map_err(|e| proc_file_err(&path, e))
}

/// Ids, groups and capabilities from `/proc/<pid>/status`.
fn read_credentials(pid: Pid, status: &proc::Status) -> Result<Credentials, CheckpointError> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(|e| proc_file_err(&path, e))?;
    let field = |name: &str| -> Option<&str> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let hex = |name: &str| -> Result<u64, CheckpointError> {
        field(name)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or_else(|| proc_file_err(&path, format!("no {name}")))
    };
    let groups = field("Groups")
        .unwrap_or("")
        .split_whitespace()
        .map(|g| g.parse::<u32>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| proc_file_err(&path, e))?;
    Ok(Credentials {
        uid: [status.uid[0], status.uid[1], status.uid[2]],
        gid: [status.gid[0], status.gid[1], status.gid[2]],
        groups,
        cap_inheritable: hex("CapInh")?,
        cap_permitted: hex("CapPrm")?,
        cap_effective: hex("CapEff")?,
        cap_bounding: hex("CapBnd")?,
        no_new_privs: status.no_new_privs,
    })
}

/// The 16 resource limits from `/proc/<pid>/limits` (kernel order).
fn read_rlimits(pid: Pid) -> Result<Vec<Rlimit>, CheckpointError> {
    let path = format!("/proc/{pid}/limits");
    let text = fs::read_to_string(&path).map_err(|e| proc_file_err(&path, e))?;
    let parse = |v: &str| -> Option<u64> {
        match v {
            "unlimited" => Some(u64::MAX),
            n => n.parse().ok(),
        }
    };
    let mut out = Vec::new();
    for (resource, line) in text.lines().skip(1).enumerate() {
        // "%-25s %-20s %-20s %-10s"
        let cur = line.get(26..46).map(str::trim).and_then(parse);
        let max = line.get(47..67).map(str::trim).and_then(parse);
        match (cur, max) {
            (Some(cur), Some(max)) => out.push(Rlimit {
                resource: resource as u32,
                cur,
                max,
            }),
            _ => return Err(proc_file_err(&path, format!("unreadable line {line:?}"))),
        }
    }
    Ok(out)
}

/// Every open descriptor, classified.
fn capture_fds(pid: Pid) -> Result<Vec<FdImage>, CheckpointError> {
    let dir = format!("/proc/{pid}/fd");
    struct Raw {
        fd: i32,
        link: String,
        info: String,
        flags: i32,
    }
    let mut raw = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| proc_file_err(&dir, e))? {
        let entry = entry.map_err(|e| proc_file_err(&dir, e))?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let link_path = entry.path();
        let link = fs::read_link(&link_path).map_err(|e| proc_file_err(&link_path, e))?;
        let info_path = format!("/proc/{pid}/fdinfo/{fd}");
        let info = fs::read_to_string(&info_path).map_err(|e| proc_file_err(&info_path, e))?;
        let flags = info_field(&info, "flags")
            .and_then(|f| i32::from_str_radix(f, 8).ok())
            .ok_or_else(|| proc_file_err(&info_path, "no flags"))?;
        raw.push(Raw {
            fd,
            link: link.to_string_lossy().into_owned(),
            info,
            flags,
        });
    }
    raw.sort_by_key(|r| r.fd);

    // A pipe is internal when the process holds both of its ends.
    let pipe_end = |r: &Raw| -> Option<(u64, bool)> {
        let id = r
            .link
            .strip_prefix("pipe:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        Some((id, r.flags & libc::O_ACCMODE == libc::O_WRONLY))
    };
    let ends: Vec<(u64, bool)> = raw.iter().filter_map(pipe_end).collect();
    let internal = |id: u64| ends.contains(&(id, true)) && ends.contains(&(id, false));

    let mut fds = Vec::new();
    for r in &raw {
        let fd = r.fd;
        let link_path = PathBuf::from(format!("/proc/{pid}/fd/{fd}"));
        let unsupported = |what: String| CheckpointError::UnsupportedFd { fd, what };
        let text = &r.link;
        let kind = if let Some((id, write)) = pipe_end(r).filter(|(id, _)| internal(*id)) {
            let unread = if write {
                Vec::new()
            } else {
                crate::sys::pipe_peek(&link_path).map_err(|e| proc_file_err(&link_path, e))?
            };
            if unread.len() >= 64 << 10 {
                return Err(unsupported(format!(
                    "{text} holds {} unread bytes",
                    unread.len()
                )));
            }
            FdKind::Pipe { id, write, unread }
        } else if text.starts_with("pipe:[") || text.starts_with("socket:[") {
            FdKind::External { link: text.clone() }
        } else if text == "anon_inode:[eventfd]" {
            let count = info_field(&r.info, "eventfd-count")
                .and_then(|c| u64::from_str_radix(c, 16).ok())
                .ok_or_else(|| unsupported("eventfd without a readable count".into()))?;
            if count > u64::from(u32::MAX) {
                return Err(unsupported(format!("eventfd with count {count}")));
            }
            let semaphore = info_field(&r.info, "eventfd-semaphore") == Some("1");
            FdKind::EventFd { count, semaphore }
        } else if text == "anon_inode:[eventpoll]" {
            FdKind::Epoll {
                targets: epoll_targets(
                    pid,
                    fd,
                    &r.info,
                    &raw.iter().map(|r| r.fd).collect::<Vec<_>>(),
                )?,
            }
        } else if text.starts_with('/') {
            if text.ends_with(" (deleted)") {
                return Err(unsupported(text.clone()));
            }
            let meta = fs::metadata(&link_path).map_err(|e| proc_file_err(&link_path, e))?;
            let ft = meta.file_type();
            let pos = info_field(&r.info, "pos")
                .and_then(|p| p.parse::<u64>().ok())
                .unwrap_or(0);
            if ft.is_file() || ft.is_dir() {
                FdKind::File {
                    path: PathBuf::from(text),
                    pos,
                    identity: identity(&meta),
                }
            } else if STATELESS_DEVICES.contains(&text.as_str()) {
                FdKind::Device {
                    path: PathBuf::from(text),
                }
            } else {
                return Err(unsupported(text.clone()));
            }
        } else {
            return Err(unsupported(text.clone()));
        };
        fds.push(FdImage {
            fd,
            flags: r.flags & !libc::O_CLOEXEC,
            cloexec: r.flags & libc::O_CLOEXEC != 0,
            kind,
        });
    }
    Ok(fds)
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The registrations of epoll instance `fd`, from the `tfd:` lines of its
/// fdinfo; each must name a descriptor of the process that is still the
/// file it was registered as.
fn epoll_targets(
    pid: Pid,
    fd: i32,
    info: &str,
    open: &[i32],
) -> Result<Vec<EpollTarget>, CheckpointError> {
    let mut targets = Vec::new();
    for line in info.lines().filter(|l| l.starts_with("tfd:")) {
        // "tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x"
        let parsed = (|| {
            let tfd: i32 = line.split_whitespace().nth(1)?.parse().ok()?;
            let events = u32::from_str_radix(line.split_whitespace().nth(3)?, 16).ok()?;
            let data = u64::from_str_radix(line.split_whitespace().nth(5)?, 16).ok()?;
            let ino = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("ino:"))
                .and_then(|i| u64::from_str_radix(i, 16).ok())?;
            Some((tfd, events, data, ino))
        })();
        let Some((tfd, events, data, ino)) = parsed else {
            return Err(CheckpointError::UnsupportedFd {
                fd,
                what: format!("epoll with an unreadable registration {line:?}"),
            });
        };
        let target_ino = fs::metadata(format!("/proc/{pid}/fd/{tfd}")).map(|m| m.ino());
        if !open.contains(&tfd) || target_ino.ok() != Some(ino) {
            return Err(CheckpointError::UnsupportedFd {
                fd,
                what: format!("epoll watching descriptor {tfd}, which is closed or reused"),
            });
        }
        targets.push(EpollTarget {
            fd: tfd,
            events,
            data,
        });
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pids(v: &[i32]) -> Vec<Pid> {
        v.iter().map(|p| Pid::from_raw(*p)).collect()
    }

    #[test]
    fn an_unreadable_children_file_fails_closed() {
        let pid = Pid::from_raw(100);
        let e = no_children(pid, &pids(&[100, 101]), |p| {
            if p.ends_with("101/children") {
                Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
            } else {
                Ok(String::new())
            }
        })
        .unwrap_err();
        assert!(
            matches!(&e, CheckpointError::ProcFile { path, .. } if path.ends_with("task/101/children")),
            "{e:?}"
        );
        let e = no_children(pid, &pids(&[100]), |_| {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        })
        .unwrap_err();
        assert!(matches!(e, CheckpointError::ProcFile { .. }), "{e:?}");
        assert!(no_children(pid, &[], |_| Ok(String::new())).is_err());
    }

    #[test]
    fn a_child_of_any_thread_is_refused() {
        let pid = Pid::from_raw(100);
        let e = no_children(pid, &pids(&[100, 101, 102]), |p| {
            Ok(if p.ends_with("102/children") {
                "4242 ".into()
            } else {
                String::new()
            })
        })
        .unwrap_err();
        assert!(matches!(e, CheckpointError::HasChildren { .. }), "{e:?}");
        no_children(pid, &pids(&[100, 101]), |_| Ok("\n".into())).unwrap();
    }
}
