//! The runtime process: spawning it, reaping it and its orphans, killing it,
//! and reading its output pipes.
//!
//! Owns: the child's pid and its exit status, and the read ends of its
//! stdout/stderr. Must not: use `tokio::process` or `std::process::Child::wait`
//! (they would race with reaping by `waitpid(-1)` as PID 1), nor decide what an
//! exit means for the daemon (the supervisor does).

use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::net::unix::pipe;

use crate::control::{LogStream, RuntimeSpec};

/// How the runtime process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// The spawned runtime process. Dropping it before it was reaped kills it.
#[derive(Debug)]
pub(crate) struct RuntimeProcess {
    pid: Pid,
    /// Reap every child (we are PID 1 of a pid namespace and inherit orphans),
    /// not only the runtime.
    reap_all: bool,
    status: Option<ExitStatus>,
}

impl RuntimeProcess {
    /// Start `spec.argv` with exactly `spec.env` plus `AWS_LAMBDA_RUNTIME_API`,
    /// in `spec.cwd`, stdin from /dev/null and stdout/stderr piped to us.
    pub(crate) fn spawn(
        spec: &RuntimeSpec,
        runtime_api: &str,
        reap_all: bool,
    ) -> io::Result<(RuntimeProcess, RuntimeOutput)> {
        let (program, args) = spec
            .argv
            .split_first()
            .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "empty argv"))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Only stdin/stdout/stderr reach the runtime: the control socket, the
        // Runtime API listener and anything else stay with the supervisor.
        // SAFETY: the closure runs between fork and exec and makes one
        // async-signal-safe system call (close_range with CLOEXEC), allocating nothing.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                thaw_sandbox::mark_cloexec_from(3)
            });
        }
        let mut child = cmd.spawn()?;
        let raw_pid = i32::try_from(child.id())
            .map_err(|_| io::Error::new(ErrorKind::InvalidData, "pid out of range"))?;
        // From here on the process is ours to reap: never call child.wait().
        let process = RuntimeProcess {
            pid: Pid::from_raw(raw_pid),
            reap_all,
            status: None,
        };
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        drop(child); // Dropping a std Child neither waits for nor kills it.
        let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
            return Err(io::Error::other("runtime spawned without output pipes"));
        };
        let output = RuntimeOutput {
            pipes: [
                Some(pipe::Receiver::from_owned_fd(stdout)?),
                Some(pipe::Receiver::from_owned_fd(stderr)?),
            ],
        };
        Ok((process, output))
    }

    /// Takes charge of a runtime restored from a snapshot (a child of this
    /// process).
    pub(crate) fn adopt(pid: Pid, reap_all: bool) -> RuntimeProcess {
        RuntimeProcess {
            pid,
            reap_all,
            status: None,
        }
    }

    /// The runtime's pid (in the supervisor's pid namespace).
    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    /// Reap exited children without blocking. Returns the runtime's status the
    /// first time it is found to have exited.
    pub(crate) fn reap(&mut self) -> Result<Option<ExitStatus>, Errno> {
        let target = if self.reap_all { None } else { Some(self.pid) };
        let mut found = None;
        loop {
            if !self.reap_all && self.status.is_some() {
                break;
            }
            let (pid, status) = match waitpid(target, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
                Ok(WaitStatus::Exited(pid, code)) => (
                    pid,
                    ExitStatus {
                        code: Some(code),
                        signal: None,
                    },
                ),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (
                    pid,
                    ExitStatus {
                        code: None,
                        signal: Some(sig as i32),
                    },
                ),
                Ok(other) => {
                    tracing::debug!(?other, "ignoring child state change");
                    continue;
                }
            };
            if pid == self.pid {
                self.status = Some(status);
                found = Some(status);
            } else {
                tracing::debug!(%pid, ?status, "reaped an orphan");
            }
        }
        Ok(found)
    }

    /// SIGKILL the runtime (if still running) and reap it.
    pub(crate) fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        match kill(self.pid, Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!(pid = %self.pid, error = %e, "cannot kill the runtime"),
        }
        // Blocking, but a SIGKILLed process is gone within moments.
        loop {
            match waitpid(self.pid, None) {
                Err(Errno::EINTR) => continue,
                Ok(WaitStatus::Exited(_, code)) => {
                    self.status = Some(ExitStatus {
                        code: Some(code),
                        signal: None,
                    })
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    self.status = Some(ExitStatus {
                        code: None,
                        signal: Some(sig as i32),
                    })
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(pid = %self.pid, error = %e, "cannot reap the killed runtime");
                    // Do not try again from Drop.
                    self.status = Some(ExitStatus {
                        code: None,
                        signal: None,
                    });
                }
            }
            break;
        }
    }
}

impl Drop for RuntimeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The read ends of the runtime's stdout and stderr (index = [`LogStream`]).
#[derive(Debug)]
pub(crate) struct RuntimeOutput {
    pipes: [Option<pipe::Receiver>; 2],
}

/// Bytes read per `read(2)` (and so the largest `Log` frame body).
const CHUNK: usize = 64 * 1024;

/// Never read more than this in one drain: a runtime that writes without pause
/// must not stall the supervisor (pipes hold 64 KiB, so this is plenty).
const DRAIN_LIMIT: usize = 4 * 1024 * 1024;

fn index(stream: LogStream) -> usize {
    match stream {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
    }
}

impl RuntimeOutput {
    /// Output pipes made for a restored runtime.
    pub(crate) fn from_fds(stdout: OwnedFd, stderr: OwnedFd) -> io::Result<RuntimeOutput> {
        for fd in [&stdout, &stderr] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )?;
        }
        Ok(RuntimeOutput {
            pipes: [
                Some(pipe::Receiver::from_owned_fd(stdout)?),
                Some(pipe::Receiver::from_owned_fd(stderr)?),
            ],
        })
    }

    /// Whether `stream` is still open.
    pub(crate) fn is_open(&self, stream: LogStream) -> bool {
        self.pipes[index(stream)].is_some()
    }

    /// Wait until `stream` may be readable (forever if it is closed).
    pub(crate) async fn readable(&self, stream: LogStream) -> io::Result<()> {
        match &self.pipes[index(stream)] {
            Some(p) => p.readable().await,
            None => std::future::pending().await,
        }
    }

    /// After [`Self::readable`]: read one chunk. `None` when there was nothing
    /// after all (spurious readiness) or the pipe reached its end.
    pub(crate) fn read_ready(&mut self, stream: LogStream) -> Option<Vec<u8>> {
        let slot = &mut self.pipes[index(stream)];
        let pipe = slot.as_ref()?;
        let mut buf = vec![0u8; CHUNK];
        match pipe.try_read(&mut buf) {
            Ok(0) => {
                *slot = None;
                None
            }
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(e) => {
                tracing::warn!(?stream, error = %e, "cannot read the runtime's output");
                *slot = None;
                None
            }
        }
    }

    /// Read everything that is in the pipes right now, without waiting.
    ///
    /// Reads the descriptors directly: tokio's `try_read` would skip a pipe whose
    /// readiness the reactor has not seen yet, and the point of draining is to get
    /// output the runtime wrote just before it answered.
    pub(crate) fn drain(&mut self) -> Vec<(LogStream, Vec<u8>)> {
        let mut chunks = Vec::new();
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let slot = &mut self.pipes[index(stream)];
            let mut total = 0;
            while total < DRAIN_LIMIT {
                let Some(pipe) = slot.as_ref() else { break };
                let mut buf = vec![0u8; CHUNK];
                match nix::unistd::read(pipe.as_fd(), &mut buf) {
                    Ok(0) => *slot = None,
                    Ok(n) => {
                        buf.truncate(n);
                        total += n;
                        chunks.push((stream, buf));
                    }
                    Err(Errno::EINTR) => continue,
                    Err(Errno::EAGAIN) => break,
                    Err(e) => {
                        tracing::warn!(?stream, error = %e, "cannot read the runtime's output");
                        *slot = None;
                    }
                }
            }
        }
        chunks
    }
}
