//! Templates: a snapshot restored once and never resumed, from which new
//! processes are cloned copy-on-write.
//!
//! Owns: the template process (a restore stopped after its address space
//! and memory are in place: no threads, no descriptors of the snapshot, no
//! kernel state, never a single instruction of the snapshot's code run)
//! and cloning it. A clone is a `clone3(2)` *run by the template* (fork
//! semantics: every private mapping is shared copy-on-write, anonymous
//! memory stays anonymous, so a write is private to the clone and
//! `MADV_DONTNEED` reads zeros), into the namespaces the caller names, with
//! the snapshot's pid (`set_tid`) and its descriptors made for it; then the
//! clone gets its threads (exact ids), kernel state, credentials, seccomp
//! filters and registers exactly as a restore does ([`crate::restore`]).
//!
//! How: the template keeps the restorer's scratch area with its executor,
//! and a pidfd of the restorer at descriptor `home` (above every number the
//! snapshot uses). One batch of remote calls in the template takes the
//! caller's namespace and external descriptors over with `pidfd_getfd`,
//! joins the namespaces (`setns`), creates the clone's descriptors and
//! moves them to their numbers, and ends with the `clone3`; descriptor
//! numbers are predicted (the kernel hands out the lowest free one and the
//! template's table is known), and every prediction is checked against the
//! calls' results. A second batch empties the template's table again. The
//! clone's parent is the restorer (`CLONE_PARENT`), which also traces it
//! from its first instruction (`PTRACE_O_TRACECLONE`).
//!
//! Must not: let the template run the snapshot's code, change the
//! template's memory (only its scratch area is written), or leave a
//! descriptor of the restorer (or another clone's) in a clone.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::time::Instant;

use nix::sched::CloneFlags;
use nix::sys::ptrace::Options;
use nix::unistd::Pid;
use tracing::debug;

use crate::cpu::CpuFeatures;
use crate::image::Snapshot;
use crate::ptrace::Tracee;
use crate::restore::{
    cstring, fd_plan, Arg, Batch, FdPlan, KillFirst, Remote, RestoreError, RestoreTimings,
    Restored, StubGuard,
};
use crate::spawn::{self, Create, FdSource, Install, StubPlan};
use crate::PAGE_SIZE;

use Arg::Val as V;

/// Where the template is made.
#[derive(Debug, Default)]
pub struct TemplateOptions<'a> {
    /// Namespaces the template joins (the mount namespace decides where the
    /// snapshot's mapped files are opened).
    pub namespaces: Vec<(BorrowedFd<'a>, CloneFlags)>,
    /// Cgroup `cgroup.procs` (or `tasks`) files to move the template into:
    /// its memory is charged there, once, whatever the number of clones.
    pub cgroup_procs: Vec<PathBuf>,
}

/// Where and with what a clone is made.
#[derive(Debug, Default)]
pub struct CloneOptions<'a> {
    /// The pid namespace to create the clone in; the snapshot's pid and
    /// thread ids there must be free. `None`: the template's (only useful
    /// if that pid is free there).
    pub pid_ns: Option<BorrowedFd<'a>>,
    /// Namespaces (mount, network, UTS, IPC, cgroup, time) the clone is
    /// created in.
    pub namespaces: Vec<(BorrowedFd<'a>, CloneFlags)>,
    /// Replacements for the snapshot's external descriptors, as for a
    /// restore: `(number, descriptor)`.
    pub fds: Vec<(i32, BorrowedFd<'a>)>,
    /// Cgroup `cgroup.procs` (or `tasks`) files to move the clone into
    /// before it runs.
    pub cgroup_procs: Vec<PathBuf>,
    /// Which process the clone is a child of.
    pub parent: Parent,
}

/// Which process a clone is a child of (the one that reaps it and learns
/// how it ended).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Parent {
    /// The caller of [`Template::instantiate`] (one fork).
    #[default]
    Caller,
    /// The init (PID 1) of the clone's pid namespace, as if it had started
    /// the process itself: the template forks a short-lived *midwife* into
    /// that pid namespace (with a pid the snapshot does not use), the
    /// midwife joins the other namespaces, makes the descriptors and the
    /// clone, and is killed; the kernel hands the orphan to the init of
    /// the midwife's pid namespace. The template's descriptor table and
    /// namespaces are left as they were. Costs a second fork. Needs
    /// [`CloneOptions::pid_ns`].
    NamespaceInit,
}

/// A snapshot restored once and held, never resumed, to be cloned.
///
/// Tied to the thread that created it (ptrace belongs to the tracer
/// thread). Dropping it kills and reaps the template; clones live on.
#[derive(Debug)]
pub struct Template {
    tracee: Tracee,
    pid: Pid,
    mem: File,
    scratch: u64,
    scratch_len: u64,
    /// The template's descriptor holding a pidfd of the restorer.
    home: RawFd,
    /// The snapshot's id (its state's BLAKE3): clones must use the same one.
    snapshot_id: [u8; 32],
    /// How long making the template took.
    timings: RestoreTimings,
}

impl Template {
    /// Restores `snap` as a template: every page in place (eagerly), never
    /// resumed. The template is a child of the caller.
    pub fn create(snap: &Snapshot, opts: &TemplateOptions<'_>) -> Result<Self, RestoreError> {
        let t0 = Instant::now();
        let mut timings = RestoreTimings::default();
        let pages = snap.take_pages()?;
        let st = snap.state();
        st.cpu.check_restore_on(&CpuFeatures::host()?)?;
        let p = &st.process;
        let home = p.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2) + 1;
        let own = crate::sys::pidfd_open(std::process::id() as i32).map_err(|source| {
            RestoreError::Call {
                what: "pidfd_open of the restorer".into(),
                source,
            }
        })?;
        timings.read_us = t0.elapsed().as_micros() as u64;

        let plan = StubPlan {
            pid: None,
            pid_ns: None,
            namespaces: opts.namespaces.clone(),
            cwd: cstring(p.cwd.as_os_str().as_encoded_bytes())?,
            umask: p.umask,
            creates: Vec::new(),
            installs: vec![Install {
                source: FdSource::Provided(own.as_raw_fd()),
                target: home,
                cloexec: true,
                status_flags: None,
            }],
            epoll_adds: Vec::new(),
        };
        let t_spawn = Instant::now();
        let stub = spawn::spawn_stub(&plan)?;
        drop(own);
        let mut guard = StubGuard(Some(stub));
        for procs in &opts.cgroup_procs {
            std::fs::write(procs, stub.as_raw().to_string()).map_err(|source| {
                RestoreError::Io {
                    what: format!("Moving the template into {}", procs.display()),
                    source,
                }
            })?;
        }
        let mut tracee = Tracee::seize_with(
            stub,
            Options::PTRACE_O_EXITKILL | Options::PTRACE_O_TRACECLONE,
        )?;
        tracee.interrupt()?;
        tracee.wait_stop()?;
        timings.spawn_us = t_spawn.elapsed().as_micros() as u64;

        let t_layout = Instant::now();
        let mut r = Remote::prepare(&mut tracee, snap)?;
        r.replace_layout(snap)?;
        timings.layout_us = t_layout.elapsed().as_micros() as u64;
        let t_mem = Instant::now();
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
        timings.memory_us = t_mem.elapsed().as_micros() as u64;
        let (mem, scratch, scratch_len) = r.into_parts();
        guard.0 = None;
        timings.total_us = t0.elapsed().as_micros() as u64;
        debug!(pid = stub.as_raw(), ?timings, "template ready");
        Ok(Self {
            tracee,
            pid: stub,
            mem,
            scratch,
            scratch_len,
            home,
            snapshot_id: *snap.id(),
            timings,
        })
    }

    /// The template's pid (in the caller's pid namespace).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// How long making the template took.
    pub fn timings(&self) -> RestoreTimings {
        self.timings
    }

    /// Whether the template process still exists (not killed: a killed
    /// template stays a zombie until it is dropped).
    pub fn is_alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|text| crate::proc::parse_stat(&text).ok())
            .is_some_and(|st| !matches!(st.state, 'Z' | 'X' | 'x'))
    }

    /// Clones the template into a new, running process (a child of the
    /// caller): memory shared copy-on-write with the template, the
    /// snapshot's pid in `opts.pid_ns`, its own descriptors, threads and
    /// kernel state. `snap` must be the snapshot the template was made
    /// from. On any failure the half-made clone is killed and reaped and
    /// the template is left as it was.
    pub fn instantiate(
        &mut self,
        snap: &Snapshot,
        opts: &CloneOptions<'_>,
    ) -> Result<Restored, RestoreError> {
        self.prepare_clone(snap, opts)?.release()
    }

    /// [`Template::instantiate`] but for the last step: the clone is
    /// complete (memory, descriptors, threads, kernel state, registers) but
    /// stays stopped, traced by the caller's thread, until
    /// [`PendingClone::release`]; dropping it kills it. Everything slow
    /// (the forks, moving the clone into its cgroups, which waits for an
    /// RCU grace period when no cgroup was written to just before) happens
    /// here, ahead of the moment the instance is needed.
    pub fn prepare_clone(
        &mut self,
        snap: &Snapshot,
        opts: &CloneOptions<'_>,
    ) -> Result<PendingClone, RestoreError> {
        if *snap.id() != self.snapshot_id {
            return Err(RestoreError::Unsupported(
                "cloning a template with another snapshot".into(),
            ));
        }
        let t0 = Instant::now();
        let mut timings = RestoreTimings::default();
        let provided: Vec<(i32, RawFd)> = opts
            .fds
            .iter()
            .map(|(n, fd)| (*n, fd.as_raw_fd()))
            .collect();
        let plan = fd_plan(snap, &provided)?;
        let mut namespaces: Vec<(RawFd, CloneFlags)> = opts
            .namespaces
            .iter()
            .map(|(fd, kind)| (fd.as_raw_fd(), *kind))
            .collect();
        let pid = snap.state().process.pid;
        let flags = match (opts.parent, opts.pid_ns) {
            (Parent::Caller, ns) => {
                if let Some(ns) = ns {
                    namespaces.push((ns.as_raw_fd(), CloneFlags::CLONE_NEWPID));
                }
                libc::CLONE_PARENT as u64
            }
            // The midwife is made in the pid namespace already.
            (Parent::NamespaceInit, Some(_)) => 0,
            (Parent::NamespaceInit, None) => {
                return Err(RestoreError::Unsupported(
                    "a clone for a namespace's init without a pid namespace".into(),
                ))
            }
        };
        let (b, checks) = clone_batch(self.home, snap, &plan, &namespaces, pid, flags)?;
        timings.read_us = t0.elapsed().as_micros() as u64;

        let t_clone = Instant::now();
        let child = match (opts.parent, opts.pid_ns) {
            (Parent::NamespaceInit, Some(ns)) => {
                // A pid the snapshot does not use, for the midwife.
                let midwife_pid = snap
                    .state()
                    .process
                    .threads
                    .iter()
                    .map(|t| t.tid)
                    .max()
                    .unwrap_or(pid)
                    .max(pid)
                    + 1;
                self.clone_through_midwife(&b, &checks, ns.as_raw_fd(), midwife_pid)?
            }
            _ => self.clone_here(&b, &checks)?,
        };
        let mut guard = StubGuard(Some(child));
        let mut t = Tracee::adopt(child)?;
        for procs in &opts.cgroup_procs {
            std::fs::write(procs, child.as_raw().to_string()).map_err(|source| {
                RestoreError::Io {
                    what: format!("Moving the process into {}", procs.display()),
                    source,
                }
            })?;
        }
        timings.spawn_us = t_clone.elapsed().as_micros() as u64;

        let t_state = Instant::now();
        let mut r = self.remote(&mut t)?;
        let mut kill_first = KillFirst(Some(child));
        let mut b = Batch::default();
        b.call(
            libc::SYS_close,
            [V(self.home as u64), V(0), V(0), V(0), V(0), V(0)],
            "closing the restorer's pidfd in the clone",
        );
        r.run(&b)?;
        r.create_threads(snap)?;
        r.restore_kernel_state(snap)?;
        let threads = r.finish(snap)?;
        kill_first.0 = None;
        drop(r);
        guard.0 = None;
        timings.state_us = t_state.elapsed().as_micros() as u64;
        timings.total_us = t0.elapsed().as_micros() as u64;
        debug!(pid = child.as_raw(), ?timings, "cloned from the template");
        Ok(PendingClone {
            leader: Some(t),
            threads,
            pid: child,
            timings,
        })
    }
}

impl Template {
    /// A view on `t`, which shares the template's scratch area.
    fn remote<'t>(&self, t: &'t mut Tracee) -> Result<Remote<'t>, RestoreError> {
        let pid = t.tid();
        let mem_path = format!("/proc/{pid}/mem");
        let mem = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&mem_path)
            .map_err(|source| RestoreError::Io {
                what: format!("Opening {mem_path}"),
                source,
            })?;
        Ok(Remote::from_parts(t, mem, self.scratch, self.scratch_len))
    }

    /// Runs the clone batch `b` in the template itself and empties its
    /// descriptor table again; returns the (stopped, traced) clone.
    fn clone_here(&mut self, b: &Batch, checks: &[(usize, RawFd)]) -> Result<Pid, RestoreError> {
        let mem = self.mem.try_clone().map_err(|source| RestoreError::Io {
            what: "Duplicating the template's memory handle".into(),
            source,
        })?;
        let home = self.home as u64;
        let mut r = Remote::from_parts(&mut self.tracee, mem, self.scratch, self.scratch_len);
        let outcome = r.run_in(0, b);
        // Whatever happened, the template's table goes back to `home` only,
        // and it creates children in the restorer's pid namespace again
        // (a midwife must start there).
        let mut clean = Batch::default();
        clean.call(
            libc::SYS_setns,
            [
                V(home),
                V(libc::CLONE_NEWPID as u64),
                V(0),
                V(0),
                V(0),
                V(0),
            ],
            "returning to the restorer's pid namespace",
        );
        clean.call(
            libc::SYS_close_range,
            [V(0), V(home - 1), V(0), V(0), V(0), V(0)],
            "closing the template's copies",
        );
        clean.call(
            libc::SYS_close_range,
            [V(home + 1), V(u64::from(u32::MAX)), V(0), V(0), V(0), V(0)],
            "closing the template's copies",
        );
        let cleaned = r.run(&clean);
        drop(r);
        let (results, clones) = outcome?;
        let child = one_clone(&clones)?;
        if let Err(e) = check(&results, checks).and(cleaned.map(|_| ())) {
            spawn::reap(child);
            return Err(e);
        }
        Ok(child)
    }

    /// Forks a midwife from the template, runs the clone batch `b` in it
    /// and kills it, so the clone is orphaned to its pid namespace's init;
    /// returns the (stopped, traced) clone.
    fn clone_through_midwife(
        &mut self,
        b: &Batch,
        checks: &[(usize, RawFd)],
        pid_ns: RawFd,
        midwife_pid: i32,
    ) -> Result<Pid, RestoreError> {
        // In the template: into the pid namespace (as the parent of new
        // processes only), the midwife with a pid the snapshot does not
        // use, and back.
        let home = self.home as u64;
        let mut fork = Batch::default();
        fork.call(
            libc::SYS_pidfd_getfd,
            [V(home), V(pid_ns as u64), V(0), V(0), V(0), V(0)],
            "taking over the pid namespace",
        );
        fork.call(
            libc::SYS_setns,
            [V(0), V(libc::CLONE_NEWPID as u64), V(0), V(0), V(0), V(0)],
            "joining the pid namespace",
        );
        fork.call(
            libc::SYS_close,
            [V(0), V(0), V(0), V(0), V(0), V(0)],
            "closing the pid namespace",
        );
        let set_tid = fork.data(&midwife_pid.to_le_bytes());
        let mut args = Vec::with_capacity(88);
        for w in [libc::CLONE_PARENT as u64, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0] {
            args.extend_from_slice(&w.to_le_bytes());
        }
        let args_arg = fork.data(&args);
        fork.pointer(args_arg, 64, set_tid);
        fork.call(
            libc::SYS_clone3,
            [args_arg, V(88), V(0), V(0), V(0), V(0)],
            "forking a midwife from the template",
        );
        fork.call(
            libc::SYS_setns,
            [
                V(home),
                V(libc::CLONE_NEWPID as u64),
                V(0),
                V(0),
                V(0),
                V(0),
            ],
            "returning to the restorer's pid namespace",
        );
        let mem = self.mem.try_clone().map_err(|source| RestoreError::Io {
            what: "Duplicating the template's memory handle".into(),
            source,
        })?;
        let mut r = Remote::from_parts(&mut self.tracee, mem, self.scratch, self.scratch_len);
        let forked = r.run_in(0, &fork);
        drop(r);
        let (results, forked) = forked?;
        let midwife = one_clone(&forked)?;
        if results[0] != 0 {
            spawn::reap(midwife);
            return Err(RestoreError::Unsupported(format!(
                "the template took the pid namespace over as descriptor {}",
                results[0]
            )));
        }
        let _reap_midwife = StubGuard(Some(midwife));
        let mut m = Tracee::adopt(midwife)?;
        let mut r = self.remote(&mut m)?;
        let outcome = r.run_in(0, b);
        drop(r);
        // Killed while still stopped (it never runs untraced), then reaped
        // by `_reap_midwife`: the clone's parent is now its namespace's init.
        let _ = nix::sys::signal::kill(midwife, nix::sys::signal::Signal::SIGKILL);
        drop(m);
        let (results, clones) = outcome?;
        let child = one_clone(&clones)?;
        if let Err(e) = check(&results, checks) {
            spawn::reap(child);
            return Err(e);
        }
        Ok(child)
    }
}

/// The one process a batch was to create.
fn one_clone(clones: &[Pid]) -> Result<Pid, RestoreError> {
    match clones {
        [c] => Ok(*c),
        _ => {
            for c in clones {
                spawn::reap(*c);
            }
            Err(RestoreError::Unsupported(format!(
                "a clone reported {} new processes",
                clones.len()
            )))
        }
    }
}

/// Checks the descriptor numbers the batch predicted.
fn check(results: &[u64], checks: &[(usize, RawFd)]) -> Result<(), RestoreError> {
    for (i, want) in checks {
        if results.get(*i) != Some(&(*want as u64)) {
            return Err(RestoreError::Unsupported(format!(
                "call {i} returned {:?} where descriptor {want} was expected",
                results.get(*i)
            )));
        }
    }
    Ok(())
}

/// A complete clone, stopped before its first instruction (see
/// [`Template::prepare_clone`]). Tied to the thread that made it.
#[derive(Debug)]
pub struct PendingClone {
    leader: Option<Tracee>,
    threads: Vec<Tracee>,
    pid: Pid,
    timings: RestoreTimings,
}

impl PendingClone {
    /// The clone's pid (in the caller's pid namespace).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Lets the clone run.
    pub fn release(mut self) -> Result<Restored, RestoreError> {
        let t0 = Instant::now();
        if let Some(t) = self.leader.take() {
            t.detach()?;
        }
        for th in std::mem::take(&mut self.threads) {
            th.detach()?;
        }
        let mut timings = self.timings;
        timings.state_us += t0.elapsed().as_micros() as u64;
        timings.total_us += t0.elapsed().as_micros() as u64;
        Ok(Restored {
            pid: self.pid,
            timings,
            lazy: None,
        })
    }
}

impl Drop for PendingClone {
    /// A clone never released is killed while still stopped (none of its
    /// threads runs another instruction) and every thread is reaped here,
    /// as its tracer: a killed traced thread stays a zombie until its
    /// tracer collects it, and would keep the leader (and the pid
    /// namespace's init, and its cgroup) from ever going away.
    fn drop(&mut self) {
        if let Some(leader) = self.leader.take() {
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
            for t in self.threads.drain(..) {
                t.reap_killed();
            }
            leader.reap_killed();
        }
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        spawn::reap(self.pid);
    }
}

/// The lowest free descriptor numbers of a table the caller simulates.
struct FdTable(BTreeSet<RawFd>);

impl FdTable {
    fn alloc(&mut self) -> RawFd {
        let mut n = 0;
        while self.0.contains(&n) {
            n += 1;
        }
        self.0.insert(n);
        n
    }

    fn free(&mut self, n: RawFd) {
        self.0.remove(&n);
    }
}

/// The template's batch for one clone, and the `(call index, descriptor)`
/// results to check against its predictions.
fn clone_batch(
    home: RawFd,
    snap: &Snapshot,
    plan: &FdPlan,
    namespaces: &[(RawFd, CloneFlags)],
    pid: i32,
    clone_flags: u64,
) -> Result<(Batch, Vec<(usize, RawFd)>), RestoreError> {
    let p = &snap.state().process;
    let mut b = Batch::default();
    let mut checks = Vec::new();
    let mut table = FdTable(BTreeSet::from([home]));
    let getfd = |b: &mut Batch, fd: RawFd, what: String| {
        b.call(
            libc::SYS_pidfd_getfd,
            [V(home as u64), V(fd as u64), V(0), V(0), V(0), V(0)],
            what,
        );
    };

    // 1. Namespaces, taken over from the restorer one by one.
    for &(fd, kind) in namespaces {
        let slot = table.alloc();
        getfd(&mut b, fd, format!("taking over namespace {kind:?}"));
        checks.push((b_len(&b) - 1, slot));
        b.call(
            libc::SYS_setns,
            [
                V(slot as u64),
                V(kind.bits() as u64),
                V(0),
                V(0),
                V(0),
                V(0),
            ],
            format!("joining namespace {kind:?}"),
        );
        b.call(
            libc::SYS_close,
            [V(slot as u64), V(0), V(0), V(0), V(0), V(0)],
            "closing a namespace",
        );
        table.free(slot);
    }
    // Joining a mount namespace moves the root and working directory.
    let mut cwd = p.cwd.as_os_str().as_encoded_bytes().to_vec();
    cwd.push(0);
    let cwd_arg = b.data(&cwd);
    b.call(
        libc::SYS_chdir,
        [cwd_arg, V(0), V(0), V(0), V(0), V(0)],
        format!("changing directory to {}", p.cwd.display()),
    );
    b.call(
        libc::SYS_umask,
        [V(u64::from(p.umask)), V(0), V(0), V(0), V(0), V(0)],
        "the umask",
    );

    // 2. The clone's descriptors, at predicted numbers.
    let mut made: Vec<[RawFd; 2]> = vec![[-1, -1]; plan.creates.len()];
    for (i, c) in plan.creates.iter().enumerate() {
        match c {
            Create::Open(o) => {
                let slot = table.alloc();
                let flags = o.flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL);
                let path = b.data(o.path.as_bytes_with_nul());
                b.call(
                    libc::SYS_openat,
                    [
                        V(libc::AT_FDCWD as u64),
                        path,
                        V((flags | libc::O_CLOEXEC) as u64),
                        V(0),
                        V(0),
                        V(0),
                    ],
                    format!("opening {}", o.path.to_string_lossy()),
                );
                checks.push((b_len(&b) - 1, slot));
                if o.pos > 0 {
                    b.call(
                        libc::SYS_lseek,
                        [
                            V(slot as u64),
                            V(o.pos),
                            V(libc::SEEK_SET as u64),
                            V(0),
                            V(0),
                            V(0),
                        ],
                        format!("seeking {}", o.path.to_string_lossy()),
                    );
                }
                made[i][0] = slot;
            }
            Create::Pipe { unread } => {
                let (r, w) = (table.alloc(), table.alloc());
                let fds = b.data(&[0u8; 8]);
                b.call(
                    libc::SYS_pipe2,
                    [fds, V(libc::O_CLOEXEC as u64), V(0), V(0), V(0), V(0)],
                    "creating a pipe",
                );
                if !unread.is_empty() {
                    let data = b.data(unread);
                    b.call(
                        libc::SYS_write,
                        [V(w as u64), data, V(unread.len() as u64), V(0), V(0), V(0)],
                        "refilling a pipe",
                    );
                    checks.push((b_len(&b) - 1, unread.len() as RawFd));
                }
                made[i] = [r, w];
            }
            Create::EventFd { count, flags } => {
                let slot = table.alloc();
                b.call(
                    libc::SYS_eventfd2,
                    [
                        V(u64::from(*count)),
                        V((flags | libc::EFD_CLOEXEC) as u64),
                        V(0),
                        V(0),
                        V(0),
                        V(0),
                    ],
                    "creating an eventfd",
                );
                checks.push((b_len(&b) - 1, slot));
                made[i][0] = slot;
            }
            Create::Epoll => {
                let slot = table.alloc();
                b.call(
                    libc::SYS_epoll_create1,
                    [V(libc::EPOLL_CLOEXEC as u64), V(0), V(0), V(0), V(0), V(0)],
                    "creating an epoll instance",
                );
                checks.push((b_len(&b) - 1, slot));
                made[i][0] = slot;
            }
        }
    }
    let mut provided: Vec<(RawFd, RawFd)> = Vec::new(); // (caller's, slot)
    for inst in &plan.installs {
        if let FdSource::Provided(fd) = inst.source {
            if provided.iter().all(|(c, _)| *c != fd) {
                let slot = table.alloc();
                getfd(
                    &mut b,
                    fd,
                    format!("taking over descriptor {}", inst.target),
                );
                checks.push((b_len(&b) - 1, slot));
                provided.push((fd, slot));
            }
        }
    }
    let source_slot = |inst: &Install| -> RawFd {
        match inst.source {
            FdSource::Provided(fd) => provided
                .iter()
                .find(|(c, _)| *c == fd)
                .map_or(-1, |(_, s)| *s),
            FdSource::Created(j, end) => made[j][end],
        }
    };

    // 3. Out of the way (above every slot and target), then into place.
    let top = table
        .0
        .iter()
        .copied()
        .chain(plan.installs.iter().map(|i| i.target))
        .max()
        .unwrap_or(home);
    let base = top + 1;
    for (i, inst) in plan.installs.iter().enumerate() {
        let temp = base + i as RawFd;
        b.call(
            libc::SYS_dup3,
            [
                V(source_slot(inst) as u64),
                V(temp as u64),
                V(libc::O_CLOEXEC as u64),
                V(0),
                V(0),
                V(0),
            ],
            format!("moving descriptor {} aside", inst.target),
        );
    }
    for &slot in table.0.iter().filter(|s| **s != home) {
        b.call(
            libc::SYS_close,
            [V(slot as u64), V(0), V(0), V(0), V(0), V(0)],
            "closing a made descriptor",
        );
    }
    for (i, inst) in plan.installs.iter().enumerate() {
        if inst.target == home {
            return Err(RestoreError::Unsupported(format!(
                "descriptor {home} is reserved for the template"
            )));
        }
        let temp = base + i as RawFd;
        let flags = if inst.cloexec { libc::O_CLOEXEC } else { 0 };
        b.call(
            libc::SYS_dup3,
            [
                V(temp as u64),
                V(inst.target as u64),
                V(flags as u64),
                V(0),
                V(0),
                V(0),
            ],
            format!("installing descriptor {}", inst.target),
        );
        if let Some(fl) = inst.status_flags {
            b.call(
                libc::SYS_fcntl,
                [
                    V(inst.target as u64),
                    V(libc::F_SETFL as u64),
                    V(fl as u64),
                    V(0),
                    V(0),
                    V(0),
                ],
                format!("the flags of descriptor {}", inst.target),
            );
        }
    }
    if !plan.installs.is_empty() {
        b.call(
            libc::SYS_close_range,
            [
                V(base as u64),
                V((base + plan.installs.len() as RawFd - 1) as u64),
                V(0),
                V(0),
                V(0),
                V(0),
            ],
            "closing the moved-aside descriptors",
        );
    }
    for add in &plan.epoll_adds {
        let ev = b.data(&add.event);
        b.call(
            libc::SYS_epoll_ctl,
            [
                V(add.epfd as u64),
                V(libc::EPOLL_CTL_ADD as u64),
                V(add.fd as u64),
                ev,
                V(0),
                V(0),
            ],
            format!("registering descriptor {} with epoll {}", add.fd, add.epfd),
        );
    }

    // 4. The clone itself, with the snapshot's pid in the joined pid
    //    namespace; with CLONE_PARENT the caller is its parent (and, as for
    //    every clone here, its tracer). CLONE_PARENT needs exit_signal 0;
    //    the child inherits the template's (SIGCHLD); without it the
    //    kernel sets SIGCHLD when an orphan is handed to its new parent.
    let set_tid = b.data(&pid.to_le_bytes());
    let mut args = Vec::with_capacity(88);
    for w in [clone_flags, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0] {
        args.extend_from_slice(&w.to_le_bytes());
    }
    let args_arg = b.data(&args);
    b.pointer(args_arg, 64, set_tid);
    b.call(
        libc::SYS_clone3,
        [args_arg, V(88), V(0), V(0), V(0), V(0)],
        format!("cloning the template as pid {pid}"),
    );
    Ok((b, checks))
}

fn b_len(b: &Batch) -> usize {
    b.len()
}
