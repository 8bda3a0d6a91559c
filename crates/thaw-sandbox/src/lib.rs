//! Linux process sandboxes for function instances.
//!
//! Owns: namespaces (pid, mount, uts, ipc, net, cgroup), the read-only root
//! filesystem, cgroup limits (v1 and v2), seccomp, no_new_privs, capability and
//! uid drop. Must not: know about functions, HTTP or the Lambda protocol.
//!
//! Modules: [`spec`](SandboxSpec) is the plain description; `rootfs` builds the
//! filesystem; `credentials` drops privileges; `seccomp` compiles and installs
//! the syscall policy kept as data in `seccomp/default.json`; `cgroup` manages
//! resource limits from the host side; `sys` holds the few raw system calls.
//!
//! [`enter`] walks these steps, in this order, in the process that becomes the
//! sandbox:
//!
//! 1. validate the spec, check the process is single-threaded, compile seccomp;
//! 2. unshare mount, uts, ipc, net, cgroup and pid namespaces, then fork;
//! 3. parent: close fds >= 3, wait, exit with the child's status;
//! 4. child (PID 1): parent-death signal, root filesystem and pivot_root,
//!    hostname, loopback up, rlimits, drop capabilities and switch uid/gid,
//!    no_new_privs, seccomp filter; return to the caller.

mod cgroup;
mod credentials;
mod rootfs;
mod seccomp;
mod spec;
mod sys;

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::prctl;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::sys::stat::{umask, Mode};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, getpid, sethostname, ForkResult, Pid};

pub use cgroup::{Cgroup, CgroupError, CgroupParent, CgroupVersion};
pub use seccomp::{
    compile_policy, seccomp_filter, SeccompError, DEFAULT_POLICY_JSON, STAGES as SECCOMP_STAGES,
};
pub use seccompiler::BpfProgram;
pub use spec::{BindMount, Limits, SandboxFile, SandboxSpec, SpecError};
pub use sys::{close_fds_from, mark_cloexec_from};

/// Errors of building a sandbox; the variant names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A system-level step failed; `step` says which one.
    #[error("Sandbox setup step failed: {step}")]
    Step {
        step: String,
        #[source]
        source: std::io::Error,
    },
    /// The spec was refused before anything was changed.
    #[error("Invalid sandbox spec")]
    InvalidSpec(#[from] SpecError),
    /// The seccomp policy does not compile; nothing was changed.
    #[error("Cannot build the seccomp filter")]
    Seccomp(#[from] SeccompError),
    /// `enter` was called with more than one thread; nothing was changed.
    #[error("The process has {0} threads; entering a sandbox needs exactly one")]
    NotSingleThreaded(usize),
}

impl SandboxError {
    fn step(step: &str, source: impl Into<io::Error>) -> Self {
        SandboxError::Step {
            step: step.to_string(),
            source: source.into(),
        }
    }
}

/// Highest file-descriptor limit given to the sandbox (soft and hard).
pub const NOFILE_LIMIT: u64 = 1024;

/// Enter a new sandbox described by `spec`. CONTRACT:
///
/// - Must be called while the process is single-threaded and running as root.
/// - Creates new mount, uts, ipc, net, cgroup and pid namespaces and forks
///   (joins the network namespace `spec.join_net_fd` instead of a new one). The
///   parent closes every fd >= 3, waits for the child and exits the process with
///   the child's status (it never returns). The child (PID 1 of the new pid
///   namespace, with PR_SET_PDEATHSIG=SIGKILL so killing the parent kills the
///   whole sandbox) builds the read-only root filesystem, sets the hostname,
///   brings up loopback, sets rlimits, drops all capabilities, switches to
///   `spec.uid`/`spec.gid`, sets no_new_privs, installs the seccomp filter and
///   returns `Ok(())`. File descriptors other than 0-2 are kept as they were.
///
/// Errors of the first checks ([`SandboxError::InvalidSpec`],
/// [`SandboxError::NotSingleThreaded`], [`SandboxError::Seccomp`], and the
/// steps `open parent pidfd`, `unshare namespaces`) are returned before the
/// fork, in the original process; later ones are returned in the child, which
/// is then PID 1 of a half-built sandbox and should report and exit.
pub fn enter(spec: &SandboxSpec) -> Result<(), SandboxError> {
    enter_with(spec, || Ok(()))
}

/// [`enter`], running `before_drop` in the sandbox's PID 1 once the root,
/// hostname, loopback and limits are in place but while it is still root
/// with all capabilities and no seccomp filter: the snapshot restorer
/// creates the restored runtime there (it needs ptrace and `clone3` with a
/// chosen pid). Whatever `before_drop` leaves behind is then subject to the
/// same privilege drop as the rest of the sandbox; an error from it fails
/// the sandbox setup with its message.
pub fn enter_with<F>(spec: &SandboxSpec, before_drop: F) -> Result<(), SandboxError>
where
    F: FnOnce() -> Result<(), String>,
{
    spec.validate()?;
    let threads = thread_count().map_err(|e| SandboxError::step("count threads", e))?;
    if threads != 1 {
        return Err(SandboxError::NotSingleThreaded(threads));
    }
    let filter = seccomp_filter()?;
    // Lets the child see whether we died before its parent-death signal was
    // armed. Close-on-exec, and closed by the child before it returns.
    let parent = sys::pidfd_open(getpid().as_raw())
        .map_err(|e| SandboxError::step("open parent pidfd", e))?;

    let mut namespaces = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWCGROUP
        | CloneFlags::CLONE_NEWPID;
    match spec.join_net_fd {
        Some(fd) => {
            // SAFETY: by the contract of `join_net_fd` the descriptor is
            // open and ours to close; it is closed here and never used again.
            let ns = unsafe { OwnedFd::from_raw_fd(fd) };
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| SandboxError::step("join the network namespace", e))?;
        }
        None => namespaces |= CloneFlags::CLONE_NEWNET,
    }
    unshare(namespaces).map_err(|e| SandboxError::step("unshare namespaces", e))?;

    // SAFETY: the caller guarantees (and we checked above) that the process is
    // single-threaded, so the child cannot inherit locks held by other threads.
    match unsafe { fork() }.map_err(|e| SandboxError::step("fork", e))? {
        ForkResult::Parent { child } => wait_and_exit(child),
        ForkResult::Child => {
            let result = build_child(spec, &filter, parent, before_drop);
            if let Err(e) = &result {
                tracing::debug!(error = %e, "sandbox setup failed in the child");
            }
            result
        }
    }
}

/// The parent half: it holds nothing the sandbox needs, so it closes every
/// fd >= 3 (the sandbox alone keeps control sockets open), then mirrors the
/// child's fate in its own exit status.
fn wait_and_exit(child: Pid) -> ! {
    // SAFETY: from here on this process only waits and exits; no object owning
    // one of the closed descriptors is used or dropped again (we never return).
    if let Err(e) = unsafe { sys::close_fds_from(3) } {
        tracing::warn!(error = %e, "close_range failed in the sandbox parent");
    }
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => sys::exit_immediately(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => sys::exit_immediately(128 + signal as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "cannot wait for the sandbox");
                sys::exit_immediately(255)
            }
        }
    }
}

/// The child half, PID 1 of the new pid namespace.
fn build_child<F>(
    spec: &SandboxSpec,
    filter: &BpfProgram,
    parent: OwnedFd,
    before_drop: F,
) -> Result<(), SandboxError>
where
    F: FnOnce() -> Result<(), String>,
{
    arm_parent_death_signal(&parent)?;
    // Directories and files are created with explicit modes; do not let the
    // caller's umask narrow them. Restored before returning.
    let old_umask = umask(Mode::from_bits_truncate(0o022));

    rootfs::build_and_enter(spec)?;
    sethostname(&spec.hostname).map_err(|e| SandboxError::step("set hostname", e))?;
    // A joined namespace comes ready (loopback up); bringing it up again
    // would only wait for the kernel's routing lock, which link changes
    // of other instances hold.
    if spec.join_net_fd.is_none() {
        sys::set_interface_up("lo").map_err(|e| SandboxError::step("bring up loopback", e))?;
    }
    set_rlimits()?;
    before_drop().map_err(|e| SandboxError::step("prepare the runtime", io::Error::other(e)))?;
    credentials::drop_to(spec.uid, spec.gid)?;
    // Changing the effective uid/gid clears the parent-death signal: arm it again.
    arm_parent_death_signal(&parent)?;
    drop(parent);
    umask(old_umask);
    prctl::set_no_new_privs().map_err(|e| SandboxError::step("set no_new_privs", e))?;
    seccomp::install(filter).map_err(|e| SandboxError::step("install seccomp filter", e))?;
    Ok(())
}

/// Ask for SIGKILL when the parent dies, then make sure it has not died
/// already (in which case the signal will never come). getppid() cannot tell:
/// it is 0 in a new pid namespace whether or not the parent lives.
fn arm_parent_death_signal(parent: &OwnedFd) -> Result<(), SandboxError> {
    prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| SandboxError::step("set parent-death signal", e))?;
    let mut fds = [PollFd::new(parent.as_fd(), PollFlags::POLLIN)];
    let ready = loop {
        match poll(&mut fds, PollTimeout::ZERO) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    }
    .map_err(|e| SandboxError::step("check parent is alive", e))?;
    if ready > 0 {
        return Err(SandboxError::step(
            "check parent is alive",
            io::Error::from_raw_os_error(libc::ESRCH),
        ));
    }
    Ok(())
}

fn set_rlimits() -> Result<(), SandboxError> {
    // Raising a hard limit needs CAP_SYS_RESOURCE, which some hosts withhold
    // even from root: never ask for more than the current hard limit.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| SandboxError::step("read RLIMIT_NOFILE", e))?;
    let nofile = NOFILE_LIMIT.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, nofile, nofile)
        .map_err(|e| SandboxError::step("set RLIMIT_NOFILE", e))?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| SandboxError::step("set RLIMIT_CORE", e))
}

fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SandboxSpec {
        SandboxSpec {
            instance_id: "t".into(),
            hostname: "t".into(),
            uid: 1000,
            gid: 1000,
            root_mountpoint: "/nonexistent".into(),
            binds: vec![],
            tmp_size_bytes: 1 << 20,
            shm_size_bytes: 1 << 20,
            files: vec![],
            boot_id: None,
            join_net_fd: None,
        }
    }

    #[test]
    fn enter_refuses_a_multi_threaded_process_without_side_effects() {
        // The test harness runs tests on worker threads, so there are several.
        let keep = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        let err = enter(&spec()).unwrap_err();
        assert!(
            matches!(err, SandboxError::NotSingleThreaded(n) if n > 1),
            "{err:?}"
        );
        keep.join().unwrap();
        // Still in the host's namespaces: the hostname is not ours.
        assert_ne!(nix::unistd::gethostname().unwrap(), "t");
    }

    #[test]
    fn enter_refuses_an_invalid_spec_first() {
        let mut s = spec();
        s.uid = 0;
        assert!(matches!(enter(&s), Err(SandboxError::InvalidSpec(_))));
    }
}
