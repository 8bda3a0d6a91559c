//! Bringing a function's runtime back from a snapshot, inside the sandbox.
//!
//! Owns: the connections a restored runtime gets in place of the ones it
//! had (they belonged to the supervisor of the instance the snapshot was
//! taken from): fresh stdout/stderr pipes to this supervisor, and a fresh
//! TCP connection to this supervisor's Runtime API carrying the request
//! the runtime was waiting on when it was checkpointed
//! (`GET /restore/next`, the SnapStart handshake, or an idle
//! `GET /invocation/next`). The runtime never notices: it was blocked reading the
//! answer to that request, and the answer comes on the new connection.
//!
//! Must not: run after the sandbox dropped its privileges ([`restore_runtime`]
//! runs in `thaw_sandbox::enter_with`'s hook, as root in the sandbox's
//! namespaces), or hand the runtime any descriptor besides those.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use nix::unistd::Pid;
use thaw_snapshot::image::Snapshot;
use thaw_snapshot::lazy::{LazyMemory, Probe, ServeOptions, DEFAULT_FAULT_AROUND};
use thaw_snapshot::restore::{restore, MemoryMode, RestoreOptions};
use thaw_snapshot::state::{FdKind, SnapshotState};
use thaw_snapshot::workingset::{WorkingSet, WORKING_SET_FILE};

use crate::control::{AfterRestore, MemoryReport, RestoreSpec, ResumePoint, RuntimeSpec};
use crate::error_chain;

/// Header marking the request the restorer sends for the runtime.
pub const RESTORED_HEADER: &str = "X-Thaw-Restored";

/// A restored runtime and what the supervisor needs to serve it.
#[derive(Debug)]
pub struct Adopted {
    /// The runtime's pid (a child of this process).
    pub pid: Pid,
    /// The Runtime API listener, bound on the port the runtime knows.
    pub listener: TcpListener,
    /// Read end of the runtime's stdout.
    pub stdout: OwnedFd,
    /// Read end of the runtime's stderr.
    pub stderr: OwnedFd,
    /// Milliseconds the restore took.
    pub restore_ms: f64,
    /// Of those, milliseconds spent on memory.
    pub memory_ms: f64,
    /// For a lazy restore: the snapshot, the runtime's userfaultfd and how
    /// to serve it, for [`serve_lazy_memory`] (for as long as the runtime
    /// lives).
    pub lazy: Option<(Snapshot, LazyMemory, ServeOptions)>,
    /// How memory came back so far (completed with the page server's
    /// numbers when the first invocation ends).
    pub memory_report: MemoryReport,
    /// The page server's live numbers and recording (lazy).
    pub probe: Option<Arc<Probe>>,
    /// Which request the runtime is waiting on an answer to.
    pub resume: ResumePoint,
    /// What it learns in that answer (with [`ResumePoint::RestoreNext`]).
    pub after_restore: AfterRestore,
}

/// A memory image read through the page socket from the daemon's snapshot
/// store (see [`crate::control::pages`]). One request at a time; a daemon
/// that does not answer within [`PAGE_SOCKET_TIMEOUT`] fails the read
/// (and with it the restore, or the page server, which kills the runtime).
#[derive(Debug)]
pub struct SocketPages {
    sock: std::sync::Mutex<std::os::unix::net::UnixStream>,
    len: u64,
    /// A read failed part-way: the stream's framing is lost, so every
    /// later read fails too.
    broken: std::sync::atomic::AtomicBool,
}

/// How long a read through the page socket may take.
pub const PAGE_SOCKET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

impl SocketPages {
    /// Uses `sock` (the supervisor's end of the page socket) and asks for
    /// the image's length.
    pub fn new(mut sock: std::os::unix::net::UnixStream) -> std::io::Result<Self> {
        sock.set_read_timeout(Some(PAGE_SOCKET_TIMEOUT))?;
        sock.set_write_timeout(Some(PAGE_SOCKET_TIMEOUT))?;
        crate::control::pages::request(&mut sock, crate::control::pages::LENGTH, 0)?;
        let mut len = [0u8; 8];
        crate::control::pages::read_answer(&mut sock, &mut len)?;
        Ok(SocketPages {
            sock: std::sync::Mutex::new(sock),
            len: u64::from_le_bytes(len),
            broken: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

impl thaw_snapshot::image::PageSource for SocketPages {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        use crate::control::pages;
        use std::sync::atomic::Ordering;
        let mut sock = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        if self.broken.load(Ordering::Relaxed) {
            return Err(std::io::Error::other(
                "the page socket failed before; its framing is lost",
            ));
        }
        for (i, part) in buf.chunks_mut(pages::MAX_REQUEST as usize).enumerate() {
            let at = offset + (i as u64) * u64::from(pages::MAX_REQUEST);
            let r = pages::request(&mut *sock, at, part.len() as u32)
                .and_then(|()| pages::read_answer(&mut *sock, part));
            if let Err(e) = r {
                // An error answer leaves the stream in step; anything else
                // (a timeout, a short read) does not.
                if e.kind() != std::io::ErrorKind::Other {
                    self.broken.store(true, Ordering::Relaxed);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.len)
    }
}

/// Why a lazily restored runtime's page server failed (it then killed the
/// runtime): `(integrity, message)`, `integrity` when the snapshot's bytes
/// failed their checks (the snapshot is bad) rather than a read or a
/// userfaultfd request. One page server per supervisor process.
static PAGE_SERVER_FAILURE: std::sync::OnceLock<(bool, String)> = std::sync::OnceLock::new();
/// The page server's thread, to know when it has said why it stopped.
static PAGE_SERVER: std::sync::Mutex<Option<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(None);

/// Serves a lazily restored runtime's memory on a thread of its own, until
/// the runtime exits. If serving fails the page server kills the runtime
/// (it cannot run on without its memory), records why
/// ([`page_server_failure`]) and the supervisor reports both.
pub fn serve_lazy_memory(
    pid: Pid,
    snap: Snapshot,
    memory: LazyMemory,
    opts: ServeOptions,
) -> std::io::Result<()> {
    let pidfd = thaw_snapshot::sys::pidfd_open(pid.as_raw()).map_err(std::io::Error::from)?;
    let thread = std::thread::Builder::new()
        .name("page-server".into())
        .spawn(move || match thaw_snapshot::lazy::serve_with(&snap, memory, pidfd.as_fd(), &opts) {
            Ok(stats) => tracing::debug!(?stats, "page server done"),
            Err(e) => {
                let integrity = matches!(
                    &e,
                    thaw_snapshot::lazy::LazyError::Image(
                        thaw_snapshot::image::ImageError::Checksum { .. }
                            | thaw_snapshot::image::ImageError::Truncated { .. }
                    )
                );
                let message = error_chain(&e);
                tracing::error!(error = %message, integrity, "page server failed; the runtime was killed");
                let _ = PAGE_SERVER_FAILURE.set((integrity, message));
            }
        })?;
    if let Ok(mut slot) = PAGE_SERVER.lock() {
        *slot = Some(thread);
    }
    Ok(())
}

/// After the runtime exited: why its page server failed, if it did. Waits
/// up to `wait` for the page server to finish (it ends with the runtime).
pub async fn page_server_failure(wait: std::time::Duration) -> Option<(bool, String)> {
    let deadline = Instant::now() + wait;
    loop {
        let done = PAGE_SERVER
            .lock()
            .ok()
            .is_none_or(|t| t.as_ref().is_none_or(std::thread::JoinHandle::is_finished));
        if done || Instant::now() >= deadline {
            return PAGE_SERVER_FAILURE.get().cloned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// Restores the runtime from the snapshot in `r` (called as root inside the
/// sandbox, before privileges are dropped). The snapshot's descriptors 1
/// and 2 must be pipes (they get new ones, read by the supervisor) and it
/// must hold exactly one socket, its Runtime API connection.
pub fn restore_runtime(
    rt: &RuntimeSpec,
    r: &RestoreSpec,
    pages: Option<std::os::unix::net::UnixStream>,
) -> Result<Adopted, String> {
    let t0 = Instant::now();
    let mut adopted = prepare_restore(rt, r, pages)?.restore()?;
    adopted.restore_ms = t0.elapsed().as_secs_f64() * 1000.0;
    Ok(adopted)
}

/// Everything a restore needs that does not depend on the moment it runs:
/// the opened (and, in eager mode, read and verified) snapshot, the bound
/// Runtime API with the runtime's connection and its pending `/next`, the
/// output pipes. A standby sandbox holds one of these until `Resume`.
pub struct PreparedRestore {
    /// The opened snapshot (not for a clone, which reads only its state).
    snap: Option<Snapshot>,
    /// The runtime's pid in the snapshot.
    pid: i32,
    dir: std::path::PathBuf,
    lazy: bool,
    record: bool,
    fault_around: u32,
    /// The verified working set to install, and what became of it.
    working_set: Option<WorkingSet>,
    memory_report: MemoryReport,
    listener: TcpListener,
    out: (OwnedFd, OwnedFd),
    err: (OwnedFd, OwnedFd),
    api_fd: i32,
    conn: TcpStream,
    resume: ResumePoint,
    after_restore: AfterRestore,
}

impl std::fmt::Debug for PreparedRestore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedRestore")
            .field("snapshot", &self.dir)
            .field("lazy", &self.lazy)
            .finish_non_exhaustive()
    }
}

/// Moves the children this process creates from now on (the runtime, or
/// the restore's stub) into a new time namespace whose CLOCK_MONOTONIC and
/// CLOCK_BOOTTIME run `monotonic_ns` / `boottime_ns` ahead of the host's
/// (negative values are clamped to 0). Must run as root, before any child
/// exists. Without time namespaces in the kernel it logs and does nothing.
pub fn enter_time_namespace(monotonic_ns: i64, boottime_ns: i64) -> Result<(), String> {
    // SAFETY: unshare takes no pointers; it only changes which namespace
    // this process's future children join.
    if unsafe { libc::unshare(libc::CLONE_NEWTIME) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINVAL) {
            tracing::warn!("no time namespaces in this kernel: clocks are the host's");
            return Ok(());
        }
        return Err(format!("Cannot create a time namespace: {e}"));
    }
    let (m, b) = (monotonic_ns.max(0), boottime_ns.max(0));
    if m == 0 && b == 0 {
        return Ok(());
    }
    let line =
        |name: &str, ns: i64| format!("{name} {} {}\n", ns / 1_000_000_000, ns % 1_000_000_000);
    std::fs::write(
        "/proc/self/timens_offsets",
        line("monotonic", m) + &line("boottime", b),
    )
    .map_err(|e| format!("Cannot set the time namespace's offsets: {e}"))
}

/// Offsets that keep a restored process's clocks from going backwards:
/// zero when the host's clocks are already past what the snapshotted
/// process saw (the same boot), else the difference, plus a millisecond.
fn restore_clock_offsets(state: &SnapshotState) -> (i64, i64) {
    let seen = state.clocks;
    let now = |id| -> i64 {
        nix::time::clock_gettime(id)
            .map(|t| t.tv_sec() * 1_000_000_000 + t.tv_nsec())
            .unwrap_or(0)
    };
    let ahead = |seen: i64, now: i64| {
        if seen > now {
            seen - now + 1_000_000
        } else {
            0
        }
    };
    (
        ahead(seen.monotonic_ns, now(nix::time::ClockId::CLOCK_MONOTONIC)),
        ahead(seen.boottime_ns, now(nix::time::ClockId::CLOCK_BOOTTIME)),
    )
}

/// Prepares a restore (see [`PreparedRestore`]). With
/// [`RestoreSpec::page_socket`], `pages` is the page socket the memory
/// image is read through.
pub fn prepare_restore(
    rt: &RuntimeSpec,
    r: &RestoreSpec,
    pages: Option<std::os::unix::net::UnixStream>,
) -> Result<PreparedRestore, String> {
    let dir = Path::new(&r.snapshot_dir);
    // A clone's memory comes from the daemon's template: only the state
    // (descriptors, clocks) is read here.
    let (snap, cloned_state) = if r.clone {
        let state = thaw_snapshot::image::read_state(&dir.join(thaw_snapshot::image::STATE_FILE))
            .map_err(|e| error_chain(&e))?;
        (None, Some(state))
    } else {
        let mut snap = match (r.page_socket, pages) {
            (false, _) => Snapshot::open(dir),
            (true, Some(sock)) => {
                let source = SocketPages::new(sock)
                    .map_err(|e| format!("Cannot reach the snapshot store: {e}"))?;
                Snapshot::open_with(dir, Box::new(source))
            }
            (true, None) => return Err("The restore has no page socket".into()),
        }
        .map_err(|e| error_chain(&e))?;
        snap.set_throttle(r.throttle);
        (Some(snap), None)
    };
    let state = match (&snap, &cloned_state) {
        (Some(snap), _) => snap.state(),
        (None, Some(state)) => state,
        (None, None) => return Err("No snapshot state".into()),
    };
    let (monotonic, boottime) = restore_clock_offsets(state);
    if monotonic > 0 || boottime > 0 {
        tracing::info!(
            monotonic_ns = monotonic,
            boottime_ns = boottime,
            "the snapshot's clocks are ahead of this host's: offsetting them"
        );
    }
    enter_time_namespace(monotonic, boottime)?;
    if let (Some(snap), false) = (&snap, r.lazy) {
        snap.preload().map_err(|e| error_chain(&e))?;
    }
    let mut memory_report = MemoryReport {
        lazy: r.lazy && !r.clone,
        working_set: if r.clone { "clone" } else { "none" }.into(),
        recorded: r.lazy && r.record && !r.clone,
        ..MemoryReport::default()
    };
    let t_ws = Instant::now();
    let working_set = if let (Some(snap), true) = (&snap, r.lazy && r.working_set && !r.record) {
        let path = snap.dir().join(WORKING_SET_FILE);
        match WorkingSet::open(&path, snap) {
            Ok(ws) => {
                memory_report.working_set = "used".into();
                Some(ws)
            }
            Err(e) if e.is_missing() => {
                memory_report.working_set = "missing".into();
                None
            }
            Err(e) => {
                let why = error_chain(&e);
                tracing::warn!(error = %why, "ignoring the snapshot's working set; restoring lazily without it");
                memory_report.working_set = "invalid".into();
                memory_report.working_set_error = Some(why);
                None
            }
        }
    } else {
        None
    };
    memory_report.prefetch_us = t_ws.elapsed().as_micros() as u64;
    tracing::debug!(open_us = memory_report.prefetch_us, "working set opened");
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, rt.api_port)).map_err(|e| {
        format!(
            "Cannot bind the Runtime API on 127.0.0.1:{}: {e}",
            rt.api_port
        )
    })?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let (out_r, out_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;

    let mut api_conn: Option<(i32, TcpStream)> = None;
    for f in &state.process.fds {
        let FdKind::External { link } = &f.kind else {
            continue;
        };
        match (f.fd, link.starts_with("pipe:")) {
            (1 | 2, true) => {}
            (fd, false) if link.starts_with("socket:") && api_conn.is_none() => {
                let mut conn = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                    .map_err(|e| format!("Cannot connect to the Runtime API: {e}"))?;
                // Socket options are not part of the snapshot; runtime
                // clients (ours, libcurl, Node's agent) all disable Nagle.
                conn.set_nodelay(true)
                    .map_err(|e| format!("Cannot set TCP_NODELAY: {e}"))?;
                // The request the runtime was waiting on an answer to.
                let path = match r.resume {
                    ResumePoint::RestoreNext => "restore/next",
                    ResumePoint::InvocationNext => "invocation/next",
                };
                write!(
                    conn,
                    "GET /2018-06-01/runtime/{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{RESTORED_HEADER}: 1\r\n\r\n"
                )
                .map_err(|e| format!("Cannot write to the Runtime API: {e}"))?;
                api_conn = Some((fd, conn));
            }
            (fd, _) => {
                return Err(format!(
                    "The snapshot's descriptor {fd} ({link}) is neither stdout/stderr nor the one Runtime API connection"
                ))
            }
        }
    }
    let Some((api_fd, conn)) = api_conn else {
        return Err("The snapshot has no Runtime API connection".into());
    };
    let pid = state.process.pid;
    Ok(PreparedRestore {
        snap,
        pid,
        dir: dir.to_path_buf(),
        lazy: r.lazy,
        record: r.record,
        fault_around: r.fault_around,
        working_set,
        memory_report,
        listener,
        out: (out_r, out_w),
        err: (err_r, err_w),
        api_fd,
        conn,
        resume: r.resume,
        after_restore: r.after_restore.clone(),
    })
}

impl PreparedRestore {
    /// For a clone: the descriptors the runtime gets, as `(number in the
    /// runtime, number in this process)`.
    pub fn clone_fds(&self) -> Vec<(i32, i32)> {
        use std::os::fd::AsRawFd;
        vec![
            (1, self.out.1.as_raw_fd()),
            (2, self.err.1.as_raw_fd()),
            (self.api_fd, self.conn.as_raw_fd()),
        ]
    }

    /// Takes over the runtime the daemon cloned into this sandbox from its
    /// template: the snapshot's pid, a child of this process (PID 1). This
    /// process's copies of the runtime's ends are closed.
    pub fn adopt_clone(self) -> Result<Adopted, String> {
        let pid = Pid::from_raw(self.pid);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|e| format!("The cloned runtime (pid {pid}) is not there: {e}"))?;
        let ppid = thaw_snapshot::proc::parse_stat(&stat)
            .map_err(|e| format!("Cannot read the cloned runtime's state: {e}"))?
            .ppid;
        if ppid != nix::unistd::getpid().as_raw() {
            return Err(format!(
                "Pid {pid} is not a child of the supervisor (its parent is {ppid})"
            ));
        }
        if let Err(e) = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(error = %e, "cannot unmount the snapshot");
        }
        Ok(Adopted {
            pid,
            listener: self.listener,
            stdout: self.out.0,
            stderr: self.err.0,
            restore_ms: 0.0,
            memory_ms: 0.0,
            lazy: None,
            memory_report: self.memory_report,
            probe: None,
            resume: self.resume,
            after_restore: self.after_restore,
        })
    }

    /// Restores the runtime.
    pub fn restore(mut self) -> Result<Adopted, String> {
        let t0 = Instant::now();
        let Some(snap) = self.snap.take() else {
            return Err("A clone's sandbox cannot restore".into());
        };
        let opts = RestoreOptions {
            pid_ns: None,
            namespaces: Vec::new(),
            fds: vec![
                (1, self.out.1.as_fd()),
                (2, self.err.1.as_fd()),
                (self.api_fd, self.conn.as_fd()),
            ],
            cgroup_procs: Vec::new(),
            memory: if self.lazy {
                MemoryMode::Lazy
            } else {
                MemoryMode::Eager
            },
            working_set: self.working_set.as_ref(),
        };
        let restored = restore(&snap, &opts).map_err(|e| error_chain(&e))?;
        // The runtime must not see its snapshot (the files are root-only
        // anyway); what is open stays usable for the page server.
        if let Err(e) = nix::mount::umount2(snap.dir(), nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(error = %e, "cannot unmount the snapshot");
        }
        tracing::debug!(timings = ?restored.timings, lazy = self.lazy, "runtime restored");
        let report = &mut self.memory_report;
        report.prefetched_pages = restored.timings.prefetched_pages;
        report.prefetch_us += restored.timings.prefetch_us;
        report.bytes_read = snap.bytes_read();
        let (lazy, probe) = match restored.lazy {
            Some(memory) => {
                // Every lazy restore records until its first invocation
                // ends: a recording restore's list is the working set, a
                // prefetching one's the misses.
                let probe = Arc::new(Probe::new(true));
                let fault_around = if self.record {
                    1
                } else if self.fault_around > 0 {
                    u64::from(self.fault_around)
                } else {
                    DEFAULT_FAULT_AROUND
                };
                let opts = ServeOptions {
                    fault_around,
                    probe: Some(probe.clone()),
                    ..ServeOptions::default()
                };
                (Some((snap, memory, opts)), Some(probe))
            }
            None => (None, None),
        };
        Ok(Adopted {
            pid: restored.pid,
            listener: self.listener,
            stdout: self.out.0,
            stderr: self.err.0,
            restore_ms: t0.elapsed().as_secs_f64() * 1000.0,
            memory_ms: restored.timings.memory_us as f64 / 1000.0,
            lazy,
            memory_report: self.memory_report,
            probe,
            resume: self.resume,
            after_restore: self.after_restore,
        })
    }
}
