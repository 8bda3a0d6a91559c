//! Helpers for the restore tests: pid namespaces to restore into, the
//! pid of a process started under `unshare`, and restoring a snapshot of a
//! stdin/stdout line server onto fresh pipes.

#![allow(dead_code)] // each test binary uses a different subset

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use thaw_snapshot::image::Snapshot;
use thaw_snapshot::lazy::{LazyStats, ServeOptions};
use thaw_snapshot::restore::{restore, MemoryMode, RestoreOptions};
use thaw_snapshot::state::FdKind;
use thaw_snapshot::workingset::WorkingSet;

/// The first child of `pid`, waiting for it to appear.
pub fn first_child(pid: u32) -> Pid {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(c) = text.split_whitespace().next() {
            return Pid::from_raw(c.parse().expect("pid"));
        }
        assert!(Instant::now() < deadline, "no child of {pid}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A pid namespace held open by a sleeping init.
pub struct PidNs {
    holder: Child,
    init: Pid,
    pub ns: File,
}

impl PidNs {
    pub fn new() -> PidNs {
        let holder = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "sleep", "1000"])
            .spawn()
            .expect("unshare");
        let init = first_child(holder.id());
        let ns = File::open(format!("/proc/{init}/ns/pid")).expect("open pid ns");
        PidNs { holder, init, ns }
    }

    /// The namespace's init (PID 1 there), by its pid in ours.
    pub fn init(&self) -> Pid {
        self.init
    }
}

impl Drop for PidNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A restored process on new pipes.
pub struct Restored {
    pub pid: Pid,
    pub stdin: File,
    pub stdout: BufReader<File>,
    /// The page server of a lazy restore; returns its statistics.
    pub server: Option<std::thread::JoinHandle<Result<LazyStats, String>>>,
}

impl Restored {
    pub fn ask(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("write");
        self.stdin.flush().expect("flush");
        let mut out = String::new();
        self.stdout.read_line(&mut out).expect("read");
        if out.is_empty() {
            // The process is gone: say how, and what the page server saw.
            let status = waitpid(self.pid, None);
            let server = self.server.take().map(|s| s.join());
            panic!(
                "restored process {} ended: {status:?}; page server: {server:?}",
                self.pid
            );
        }
        out.trim().to_string()
    }
}

impl Restored {
    /// Kills the process and returns the page server's statistics (lazy).
    pub fn finish(mut self) -> Option<LazyStats> {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
        let server = self.server.take()?;
        Some(
            server
                .join()
                .expect("page server thread")
                .expect("page server"),
        )
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
    }
}

/// Both memory modes, for tests that must pass in each.
pub const MODES: [MemoryMode; 2] = [MemoryMode::Eager, MemoryMode::Lazy];

pub fn restore_with_pipes(snap: &Snapshot, ns: &PidNs, memory: MemoryMode) -> Restored {
    restore_with(snap, ns, memory, None, ServeOptions::default())
}

/// [`restore_with_pipes`] with a working set to install and page server
/// options (lazy).
pub fn restore_with(
    snap: &Snapshot,
    ns: &PidNs,
    memory: MemoryMode,
    working_set: Option<&WorkingSet>,
    serve: ServeOptions,
) -> Restored {
    let (in_r, in_w) = nix::unistd::pipe().expect("pipe");
    let (out_r, out_w) = nix::unistd::pipe().expect("pipe");
    let err: OwnedFd = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup stderr");
    let mut fds = vec![(0, in_r.as_fd()), (1, out_w.as_fd())];
    let err_external = snap
        .state()
        .process
        .fds
        .iter()
        .any(|f| f.fd == 2 && matches!(f.kind, FdKind::External { .. }));
    if err_external {
        fds.push((2, err.as_fd()));
    }
    let opts = RestoreOptions {
        pid_ns: Some(ns.ns.as_fd()),
        namespaces: Vec::new(),
        fds,
        cgroup_procs: Vec::new(),
        memory,
        working_set,
    };
    let restored = restore(snap, &opts).unwrap_or_else(|e| panic!("restore: {}", error_chain(&e)));
    eprintln!(
        "restored pid {} ({memory:?}, working set: {}) in {:?}",
        restored.pid,
        working_set.is_some(),
        restored.timings
    );
    let server = restored.lazy.map(|lazy| {
        let dir = snap.dir().to_path_buf();
        let pidfd = thaw_snapshot::sys::pidfd_open(restored.pid.as_raw()).expect("pidfd");
        std::thread::spawn(move || {
            let snap = Snapshot::open(&dir).map_err(|e| error_chain(&e))?;
            thaw_snapshot::lazy::serve_with(&snap, lazy, pidfd.as_fd(), &serve)
                .map_err(|e| error_chain(&e))
        })
    });
    Restored {
        pid: restored.pid,
        stdin: File::from(in_w),
        stdout: BufReader::new(File::from(out_r)),
        server,
    }
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
