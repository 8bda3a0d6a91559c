//! The sandbox-backend seam: what the daemon needs from whatever isolates
//! an instance, so that another kind of sandbox (a microVM on hosts with
//! hardware virtualisation) can join without touching the pools, the
//! scheduler, the templates' callers or the API.
//!
//! A backend makes a sandbox: the isolation boundary with its resource
//! limits, and the supervisor (`thaw-init`) running inside it, connected to
//! the daemon by the control channel (the protocol of
//! [`thaw_runtime::control`]). Everything after that (starting, restoring
//! or cloning the runtime, invocations, logs) goes over the channel and is
//! the same for every backend.
//!
//! [`ProcessBackend`] is today's backend: Linux namespaces and cgroups (v1
//! or v2) around a process tree, see `docs/architecture.md`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use thaw_runtime::error_chain;
use thaw_sandbox::{Cgroup, CgroupParent, Limits};
use tokio::process::{Child, Command};

/// Makes sandboxes.
pub trait SandboxBackend: Send + Sync + std::fmt::Debug {
    /// The backend's name (`process`).
    fn name(&self) -> &'static str;

    /// Builds the boundary of instance `id` with `limits` and starts the
    /// supervisor inside it. Returns the sandbox and the daemon's end of
    /// the control channel. `pages`, when given, is the supervisor's end
    /// of a page socket (a restore reading its memory image from the
    /// daemon's snapshot store). On failure nothing is left behind.
    fn launch(
        &self,
        id: &str,
        limits: &Limits,
        pages: Option<OwnedFd>,
        netns: Option<BorrowedFd<'_>>,
    ) -> Result<(Box<dyn Sandbox>, StdUnixStream), String>;
}

/// One launched sandbox.
pub trait Sandbox: Send + Sync + std::fmt::Debug {
    /// Whether its supervisor still runs.
    fn is_running(&mut self) -> bool;

    /// How many times the kernel killed a task of it for lack of memory.
    fn oom_kills(&self) -> u64;

    /// Bytes of memory charged to it now, if known.
    fn memory_bytes(&self) -> Option<u64>;

    /// The most bytes of memory ever charged to it, if known (Lambda's
    /// `Max Memory Used`); the current charge when the backend cannot tell.
    fn memory_peak_bytes(&self) -> Option<u64> {
        self.memory_bytes()
    }

    /// Changes its limits while it runs (enlarge or shrink its boundary).
    fn set_limits(&self, limits: &Limits) -> Result<(), String>;

    /// The supervisor's pid in the daemon's pid namespace, for backends
    /// whose sandboxes are host processes (a checkpoint and a template
    /// clone reach the runtime through it); `None` otherwise.
    fn supervisor_pid(&self) -> Option<u32>;

    /// Files a process is written to to join the sandbox's resource
    /// boundary (`cgroup.procs` of each controller), for a template clone.
    fn boundary_procs(&self) -> Vec<PathBuf>;

    /// Kills everything in it and removes its boundary.
    fn destroy(self: Box<Self>) -> BoxFuture<'static, ()>;

    /// [`Sandbox::destroy`] without waiting (a safety net in `Drop`).
    fn destroy_now(self: Box<Self>);
}

/// Process sandboxes: the `thaw-init` supervisor in namespaces of its own,
/// in a cgroup per instance under the daemon's parent.
#[derive(Debug)]
pub struct ProcessBackend {
    init_binary: PathBuf,
    cgroups: Arc<CgroupParent>,
}

impl ProcessBackend {
    /// A backend running `init_binary` in cgroups under `cgroups`.
    pub fn new(init_binary: PathBuf, cgroups: Arc<CgroupParent>) -> Self {
        Self {
            init_binary,
            cgroups,
        }
    }
}

impl SandboxBackend for ProcessBackend {
    fn name(&self) -> &'static str {
        "process"
    }

    fn launch(
        &self,
        id: &str,
        limits: &Limits,
        pages: Option<OwnedFd>,
        netns: Option<BorrowedFd<'_>>,
    ) -> Result<(Box<dyn Sandbox>, StdUnixStream), String> {
        let cgroup = self
            .cgroups
            .create(id, limits)
            .map_err(|e| error_chain(&e))?;
        let fail = |cgroup: Cgroup, what: String| {
            let _ = cgroup.destroy();
            Err(what)
        };
        let (ours, theirs) = match StdUnixStream::pair() {
            Ok(p) => p,
            Err(e) => return fail(cgroup, format!("socketpair: {e}")),
        };
        let theirs: OwnedFd = theirs.into();
        let mut child = match spawn_init(&self.init_binary, &theirs, pages.as_ref(), netns) {
            Ok(c) => c,
            Err(e) => {
                return fail(
                    cgroup,
                    format!("cannot spawn {}: {e}", self.init_binary.display()),
                )
            }
        };
        drop(theirs);
        drop(pages);
        // The supervisor waits for its Start frame before it does anything:
        // it joins the cgroup before any of its work is charged elsewhere.
        let joined = match child.id() {
            Some(pid) => cgroup.add_pid(pid).map_err(|e| error_chain(&e)),
            None => Err("thaw-init exited at once".to_string()),
        };
        if let Err(e) = joined {
            let _ = child.start_kill();
            return fail(cgroup, e);
        }
        Ok((
            Box::new(ProcessSandbox {
                child,
                cgroup: Some(cgroup),
            }),
            ours,
        ))
    }
}

/// A process sandbox: the outer `thaw-init` and its cgroup.
#[derive(Debug)]
struct ProcessSandbox {
    child: Child,
    cgroup: Option<Cgroup>,
}

impl Sandbox for ProcessSandbox {
    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn oom_kills(&self) -> u64 {
        self.cgroup.as_ref().map(|c| c.oom_kills()).unwrap_or(0)
    }

    fn memory_bytes(&self) -> Option<u64> {
        self.cgroup.as_ref()?.memory_usage_bytes()
    }

    fn memory_peak_bytes(&self) -> Option<u64> {
        let c = self.cgroup.as_ref()?;
        c.memory_peak_bytes().or_else(|| c.memory_usage_bytes())
    }

    fn set_limits(&self, limits: &Limits) -> Result<(), String> {
        match &self.cgroup {
            Some(c) => c.set_limits(limits).map_err(|e| error_chain(&e)),
            None => Err("the sandbox is gone".into()),
        }
    }

    fn supervisor_pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn boundary_procs(&self) -> Vec<PathBuf> {
        self.cgroup
            .as_ref()
            .map(|c| {
                c.directories()
                    .into_iter()
                    .map(|d| d.join("cgroup.procs"))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn destroy(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            // Killing thaw-init's outer process kills the sandbox's PID 1 (it
            // has PDEATHSIG=SIGKILL), which takes the whole pid namespace with it.
            let _ = self.child.start_kill();
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_err()
            {
                tracing::warn!("supervisor did not exit after SIGKILL");
            }
            if let Some(cg) = self.cgroup.take() {
                let res = tokio::task::spawn_blocking(move || cg.destroy()).await;
                match res {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %error_chain(&e), "cannot remove cgroup"),
                    Err(e) => tracing::warn!(error = %e, "cgroup removal task failed"),
                }
            }
        })
    }

    fn destroy_now(mut self: Box<Self>) {
        let _ = self.child.start_kill();
        let Some(cg) = self.cgroup.take() else { return };
        let cleanup = move || {
            if let Err(e) = cg.destroy() {
                tracing::warn!(error = %error_chain(&e), "cannot remove cgroup of a dropped instance");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(cleanup);
            }
            Err(_) => cleanup(),
        }
    }
}

fn spawn_init(
    init_binary: &std::path::Path,
    control: &OwnedFd,
    pages: Option<&OwnedFd>,
    netns: Option<BorrowedFd<'_>>,
) -> std::io::Result<Child> {
    let fd = control.as_raw_fd();
    // Numbered above the fixed descriptors, so placing one never overwrites
    // another.
    let above_fixed = |f: BorrowedFd<'_>| {
        nix::fcntl::fcntl(f, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10)).map(|n| {
            // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that
            // nothing else owns.
            unsafe { OwnedFd::from_raw_fd(n) }
        })
    };
    let pages = pages.map(|p| above_fixed(p.as_fd())).transpose()?;
    let pages_fd = pages.as_ref().map(|p| p.as_raw_fd());
    let netns = netns.map(above_fixed).transpose()?;
    let netns_fd = netns.as_ref().map(|n| n.as_raw_fd());
    let mut cmd = Command::new(init_binary);
    cmd.env_clear()
        .env(
            "RUST_LOG",
            std::env::var("THAW_INIT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (dup2, fcntl, close_range) on descriptors;
    // `fd` stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if fd == thaw_runtime::control::CONTROL_FD {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, thaw_runtime::control::CONTROL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The page socket, when the restore reads its memory through one
            // (dup2 clears close-on-exec).
            if let Some(p) = pages_fd {
                if libc::dup2(p, thaw_runtime::control::PAGES_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // The network namespace the sandbox joins.
            if let Some(n) = netns_fd {
                if libc::dup2(n, thaw_runtime::control::NETNS_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Nothing the daemon holds (listeners, other instances' sockets,
            // descriptors it inherited) may reach the sandbox.
            let last_kept = if netns_fd.is_some() {
                thaw_runtime::control::NETNS_FD
            } else if pages_fd.is_some() {
                thaw_runtime::control::PAGES_FD
            } else {
                thaw_runtime::control::CONTROL_FD
            };
            thaw_sandbox::mark_cloexec_from(last_kept as u32 + 1)?;
            if pages_fd.is_none() && netns_fd.is_some() {
                // Fd 4 sits below the namespace: whatever is there goes.
                libc::fcntl(
                    thaw_runtime::control::PAGES_FD,
                    libc::F_SETFD,
                    libc::FD_CLOEXEC,
                );
            }
            Ok(())
        });
    }
    cmd.spawn()
}
