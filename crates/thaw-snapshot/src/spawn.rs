//! The restore stub: a child process with an exact pid, in the target's
//! namespaces, holding exactly the descriptors the restored process will
//! have, parked in `pause()` for the restorer to take over with ptrace.
//!
//! Owns: the one `clone3(2)` with `set_tid` and the code the child runs
//! before it is traced. That code runs in a forked copy of a possibly
//! multi-threaded process, so it only makes raw system calls on data
//! prepared before the fork ([`StubPlan`]): no allocation, no locks, no
//! panics. Progress and failures come back over a pipe.
//!
//! Must not: let any descriptor of the restorer reach the restored process
//! besides the ones the plan names.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use thiserror::Error;

/// Why the stub could not be created or prepared.
#[derive(Debug, Error)]
pub enum SpawnError {
    /// A call in the restorer failed.
    #[error("{call} failed")]
    Call {
        /// The call.
        call: &'static str,
        /// Why.
        #[source]
        source: Errno,
    },
    /// The stub failed at one of its steps.
    #[error("Restore stub failed to {step}")]
    Stub {
        /// The step.
        step: &'static str,
        /// Why.
        #[source]
        source: Errno,
    },
    /// The stub died before it was ready.
    #[error("Restore stub exited before it was ready")]
    Died,
}

/// Where a descriptor of the restored process comes from.
#[derive(Debug, Clone, Copy)]
pub enum FdSource {
    /// A descriptor of the restorer, handed over.
    Provided(RawFd),
    /// Descriptor `end` (0, or 1 for a pipe's write end) of
    /// `plan.creates[i]`, made by the stub in the target's namespaces.
    Created(usize, usize),
}

/// A descriptor the stub makes.
#[derive(Debug)]
pub enum Create {
    /// Open a file.
    Open(OpenFile),
    /// A pipe: end 0 reads, end 1 writes; `unread` is written into it.
    Pipe {
        /// Bytes the pipe held.
        unread: Vec<u8>,
    },
    /// An eventfd with this counter and `EFD_*` flags.
    EventFd {
        /// Initial counter.
        count: u32,
        /// `EFD_SEMAPHORE` or 0.
        flags: i32,
    },
    /// An epoll instance (registrations come from [`StubPlan::epoll_adds`]).
    Epoll,
}

/// An `epoll_ctl(EPOLL_CTL_ADD)` to make once every descriptor is in place.
#[derive(Debug, Clone, Copy)]
pub struct EpollAdd {
    /// The epoll descriptor (target number).
    pub epfd: RawFd,
    /// The watched descriptor (target number).
    pub fd: RawFd,
    /// `struct epoll_event` (packed on x86_64: u32 events, u64 data).
    pub event: [u8; 12],
}

/// A file the stub opens (in the target's mount namespace).
#[derive(Debug)]
pub struct OpenFile {
    /// Path.
    pub path: CString,
    /// `open` flags (creation flags are removed).
    pub flags: i32,
    /// Position to seek to.
    pub pos: u64,
}

/// One descriptor to install.
#[derive(Debug, Clone, Copy)]
pub struct Install {
    /// Where it comes from.
    pub source: FdSource,
    /// The number it gets.
    pub target: RawFd,
    /// `FD_CLOEXEC`.
    pub cloexec: bool,
    /// Status flags to set with `F_SETFL` (`O_NONBLOCK`, `O_APPEND`...).
    pub status_flags: Option<i32>,
}

/// Everything the stub does before it is traced.
#[derive(Debug)]
pub struct StubPlan<'a> {
    /// The pid (in the target pid namespace) to create the stub with.
    pub pid: Option<i32>,
    /// The pid namespace to create it in.
    pub pid_ns: Option<BorrowedFd<'a>>,
    /// Namespaces the stub joins (mount, network, UTS, IPC, cgroup).
    pub namespaces: Vec<(BorrowedFd<'a>, CloneFlags)>,
    /// Working directory.
    pub cwd: CString,
    /// umask.
    pub umask: u32,
    /// Descriptors to make.
    pub creates: Vec<Create>,
    /// Descriptors to install.
    pub installs: Vec<Install>,
    /// Epoll registrations.
    pub epoll_adds: Vec<EpollAdd>,
}

/// The `struct clone_args` of `clone3(2)` (version 2, with `set_tid`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const STEPS: &[&str] = &[
    "ready",
    "join a namespace",
    "change directory",
    "open a file",
    "seek a file",
    "move a descriptor",
    "install a descriptor",
    "set descriptor flags",
    "block signals",
    "create a pipe",
    "create an eventfd",
    "create an epoll instance",
    "register with epoll",
    "refill a pipe",
];

/// Creates the stub and waits until it is parked. Returns its pid in the
/// restorer's pid namespace. The caller must trace it, and kill and reap it
/// if the restore fails.
pub fn spawn_stub(plan: &StubPlan<'_>) -> Result<Pid, SpawnError> {
    let call = |call: &'static str| move |source: Errno| SpawnError::Call { call, source };
    let (report_r, report_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(call("pipe2"))?;

    // The highest descriptor number in play, so the stub can move its
    // sources out of the way of the targets.
    let mut base = report_w.as_raw_fd();
    for i in &plan.installs {
        base = base.max(i.target);
        if let FdSource::Provided(fd) = i.source {
            base = base.max(fd);
        }
    }
    let base = base + 1;
    let mut opened = vec![[-1, -1]; plan.creates.len()];
    let mut moved = vec![-1; plan.installs.len()];
    let set_tid = [plan.pid.unwrap_or(0)];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        // clone3 refuses a set_tid pointer with a size of 0.
        set_tid: if plan.pid.is_some() {
            set_tid.as_ptr() as u64
        } else {
            0
        },
        set_tid_size: u64::from(plan.pid.is_some()),
        ..Default::default()
    };

    let own_pid_ns = match plan.pid_ns {
        Some(ns) => {
            let own =
                std::fs::File::open("/proc/thread-self/ns/pid").map_err(|e| SpawnError::Call {
                    call: "open own pid namespace",
                    source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                })?;
            nix::sched::setns(ns, CloneFlags::CLONE_NEWPID).map_err(call("setns(pid)"))?;
            Some(own)
        }
        None => None,
    };
    // SAFETY: `args` is a valid `struct clone_args` whose `set_tid` points
    // at `set_tid`, alive across the call; no CLONE_VM, so the child gets a
    // copy of this address space and returns here on its own copy of the
    // stack, where it runs only `stub_main` (raw syscalls on data prepared
    // above, see the module documentation) and never returns.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        stub_main(plan, report_w.as_raw_fd(), base, &mut opened, &mut moved);
    }
    let clone_result = Errno::result(ret);
    if let Some(own) = own_pid_ns {
        // Back to creating children in our own namespace; failing to do so
        // would put every later child of this thread in the sandbox.
        if let Err(e) = nix::sched::setns(&own, CloneFlags::CLONE_NEWPID) {
            panic!("cannot return to the restorer's pid namespace: {e}");
        }
    }
    let pid = Pid::from_raw(clone_result.map_err(call("clone3"))? as i32);
    drop(report_w);

    let mut msg = [0u8; 5];
    let n = read_full(&report_r, &mut msg);
    match n {
        1 if msg[0] == 0 => Ok(pid),
        5 => {
            reap(pid);
            let step = STEPS.get(usize::from(msg[0])).copied().unwrap_or("prepare");
            let errno = i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
            Err(SpawnError::Stub {
                step,
                source: Errno::from_raw(errno),
            })
        }
        _ => {
            reap(pid);
            Err(SpawnError::Died)
        }
    }
}

/// Kills and reaps a stub.
pub fn reap(pid: Pid) {
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::__WALL));
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    got
}

/// The stub's code after `clone3`. Raw syscalls only; never returns.
fn stub_main(
    plan: &StubPlan<'_>,
    report_w: RawFd,
    base: RawFd,
    opened: &mut [[RawFd; 2]],
    moved: &mut [RawFd],
) -> ! {
    let mut report = report_w;
    let fail = |report: RawFd, step: u8| -> ! {
        let errno = Errno::last_raw().to_le_bytes();
        let msg = [step, errno[0], errno[1], errno[2], errno[3]];
        // SAFETY: `msg` is a valid 5-byte buffer; `_exit` never returns.
        unsafe {
            libc::write(report, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    };
    // SAFETY: every call below is a raw system call on integers, on
    // pointers into `plan`, `opened` and `moved` (prepared before the fork,
    // valid in this copy of the address space), or on local buffers. None
    // allocates or takes a lock.
    unsafe {
        let all: u64 = !0;
        if libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            0usize,
            8usize,
        ) < 0
        {
            fail(report, 8);
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        for (fd, kind) in &plan.namespaces {
            if libc::setns(fd.as_raw_fd(), kind.bits()) < 0 {
                fail(report, 1);
            }
        }
        if libc::chdir(plan.cwd.as_ptr()) < 0 {
            fail(report, 2);
        }
        libc::umask(plan.umask as libc::mode_t);
        for (i, c) in plan.creates.iter().enumerate() {
            match c {
                Create::Open(o) => {
                    let flags = o.flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL);
                    let fd = libc::open(o.path.as_ptr(), flags | libc::O_CLOEXEC);
                    if fd < 0 {
                        fail(report, 3);
                    }
                    if o.pos > 0 && libc::lseek(fd, o.pos as libc::off_t, libc::SEEK_SET) < 0 {
                        fail(report, 4);
                    }
                    opened[i][0] = fd;
                }
                Create::Pipe { unread } => {
                    if libc::pipe2(opened[i].as_mut_ptr(), libc::O_CLOEXEC) < 0 {
                        fail(report, 9);
                    }
                    // Under 64 KiB (checked at checkpoint): fits the pipe.
                    if !unread.is_empty()
                        && libc::write(opened[i][1], unread.as_ptr().cast(), unread.len())
                            != unread.len() as isize
                    {
                        fail(report, 13);
                    }
                }
                Create::EventFd { count, flags } => {
                    let fd = libc::eventfd(*count, flags | libc::EFD_CLOEXEC);
                    if fd < 0 {
                        fail(report, 10);
                    }
                    opened[i][0] = fd;
                }
                Create::Epoll => {
                    let fd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
                    if fd < 0 {
                        fail(report, 11);
                    }
                    opened[i][0] = fd;
                }
            }
        }
        for (i, inst) in plan.installs.iter().enumerate() {
            let src = match inst.source {
                FdSource::Provided(fd) => fd,
                FdSource::Created(j, end) => opened[j][end],
            };
            let d = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, base);
            if d < 0 {
                fail(report, 5);
            }
            moved[i] = d;
        }
        let r = libc::fcntl(report, libc::F_DUPFD_CLOEXEC, base);
        if r < 0 {
            fail(report, 5);
        }
        report = r;
        libc::syscall(libc::SYS_close_range, 0u32, (base - 1) as u32, 0u32);
        for (i, inst) in plan.installs.iter().enumerate() {
            let flags = if inst.cloexec { libc::O_CLOEXEC } else { 0 };
            if libc::dup3(moved[i], inst.target, flags) < 0 {
                fail(report, 6);
            }
            if let Some(fl) = inst.status_flags {
                if libc::fcntl(inst.target, libc::F_SETFL, fl) < 0 {
                    fail(report, 7);
                }
            }
        }
        for add in &plan.epoll_adds {
            let mut ev = add.event;
            if libc::epoll_ctl(
                add.epfd,
                libc::EPOLL_CTL_ADD,
                add.fd,
                ev.as_mut_ptr().cast(),
            ) < 0
            {
                fail(report, 12);
            }
        }
        if report > base {
            libc::syscall(
                libc::SYS_close_range,
                base as u32,
                (report - 1) as u32,
                0u32,
            );
        }
        libc::syscall(libc::SYS_close_range, (report + 1) as u32, u32::MAX, 0u32);
        let ok = [0u8];
        libc::write(report, ok.as_ptr().cast(), 1);
        libc::close(report);
        loop {
            libc::pause();
        }
    }
}
