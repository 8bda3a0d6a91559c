//! `thaw-init`: the process the daemon spawns for every instance.
//!
//! Owns the order of operations at instance start: take the control socket
//! (fd [`CONTROL_FD`]), read the `Start` frame, enter the sandbox while the
//! process is still single-threaded, then run the [`supervisor`] on a
//! current-thread tokio runtime. Must not: build namespaces itself
//! (`thaw_sandbox::enter` does) or speak HTTP (the supervisor does), and must not
//! start any thread before the sandbox is entered (`enter` forks).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::SystemTime;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::stat::{fstat, SFlag};
use thaw_sandbox::SandboxError;

use crate::control::{
    read_frame_sync, write_frame_sync, ControlError, FromSupervisor, ToSupervisor, CONTROL_FD,
    NETNS_FD, PAGES_FD,
};
use crate::error_chain;
use crate::supervisor::{self, ExitReason};

/// Why `thaw-init` could not start the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// fd 3 is missing, not a socket, or cannot be configured.
    #[error("Control socket (fd 3) is not usable")]
    ControlSocket(#[source] io::Error),
    /// The first frame could not be read.
    #[error("Cannot read the Start frame")]
    Handshake(#[source] ControlError),
    /// The daemon sent something other than `Start` first.
    #[error("First control frame is not Start")]
    UnexpectedFrame,
    /// `thaw_sandbox::enter` failed.
    #[error("Cannot enter the sandbox")]
    Sandbox(#[source] SandboxError),
    /// The page socket (fd 4) a restore needs is missing or unusable.
    #[error("Page socket (fd 4) is not usable")]
    PageSocket(#[source] io::Error),
    /// The network namespace (fd 5) the spec names is missing or unusable.
    #[error("Network namespace (fd 5) is not usable")]
    NetworkNamespace(#[source] io::Error),
    /// The tokio runtime could not be built.
    #[error("Cannot start the async runtime")]
    AsyncRuntime(#[source] io::Error),
    /// The page server of a lazily restored runtime could not start.
    #[error("Cannot start the page server")]
    PageServer(#[source] io::Error),
    /// PR_SET_DUMPABLE could not be cleared.
    #[error("Cannot make the supervisor non-dumpable")]
    Dumpable(#[source] io::Error),
}

/// Entry point of the `thaw-init` binary. Never returns: exits 0 when the
/// runtime exited or the daemon hung up, 1 on any failure (reported to the
/// daemon as `Fatal` when the control channel still works).
pub fn main() -> ! {
    // Close everything inherited above the control socket and the page socket
    // and the network namespace before anything in this process can own a
    // descriptor: the sandbox must start with fds 0-5 only (4 and 5 are
    // closed below unless the spec uses them).
    // SAFETY: this is the first statement of the program's main; no Rust object
    // owns a descriptor numbered 6 or higher yet, so none is left dangling.
    if let Err(e) = unsafe { thaw_sandbox::close_fds_from(NETNS_FD as u32 + 1) } {
        eprintln!("thaw-init: cannot close inherited descriptors: {e}");
        std::process::exit(1);
    }
    init_tracing();
    let code = match run() {
        Ok(ExitReason::RuntimeExited { .. } | ExitReason::ControlClosed) => 0,
        Ok(ExitReason::SpawnFailed) => 1,
        Err(()) => 1,
    };
    std::process::exit(code)
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    // Fails only if a subscriber is already set, which is then good enough.
    let _ = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_env_filter(filter)
        .try_init();
}

/// Take ownership of fd 3 and make sure the runtime never inherits it.
fn take_control_socket() -> Result<StdUnixStream, StartupError> {
    // SAFETY: F_GETFD only reads the descriptor flags of fd 3; it touches no
    // memory of ours. It tells us whether fd 3 is open before we claim it.
    let flags = unsafe { libc::fcntl(CONTROL_FD, libc::F_GETFD) };
    if flags < 0 {
        return Err(StartupError::ControlSocket(io::Error::last_os_error()));
    }
    // SAFETY: fd 3 is open (checked above) and, by the contract with the daemon,
    // is the control socket that nothing else in this process owns or closes;
    // from here on the OwnedFd is its only owner.
    let fd = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| StartupError::ControlSocket(e.into()))?;
    let st = fstat(&fd).map_err(|e| StartupError::ControlSocket(e.into()))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(StartupError::ControlSocket(io::Error::new(
            io::ErrorKind::InvalidInput,
            "fd 3 is not a socket",
        )));
    }
    Ok(StdUnixStream::from(fd))
}

/// Checks that `wanted`, if set, is [`NETNS_FD`] and a network namespace
/// (the sandbox joins and closes it); else closes whatever is at that
/// number.
fn check_netns(wanted: Option<i32>) -> Result<(), io::Error> {
    // SAFETY: F_GETFD only reads the descriptor flags of NETNS_FD.
    let open = unsafe { libc::fcntl(NETNS_FD, libc::F_GETFD) } >= 0;
    match wanted {
        None => {
            if open {
                // SAFETY: NETNS_FD is open and, main having closed
                // everything above PAGES_FD, nothing in this process owns it.
                drop(unsafe { OwnedFd::from_raw_fd(NETNS_FD) });
            }
            Ok(())
        }
        Some(fd) if fd != NETNS_FD => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the spec names fd {fd} for the network namespace, not fd {NETNS_FD}"),
        )),
        Some(_) if !open => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the sandbox joins the network namespace at fd 5, which is not open",
        )),
        Some(_) => {
            // NS_GET_NSTYPE: which kind of namespace a descriptor is.
            const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
            // SAFETY: the ioctl only reads the descriptor's namespace type.
            let kind = unsafe { libc::ioctl(NETNS_FD, NS_GET_NSTYPE as _) };
            if kind != libc::CLONE_NEWNET {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "fd 5 is not a network namespace",
                ));
            }
            Ok(())
        }
    }
}

/// Takes fd [`PAGES_FD`] as the page socket if `wanted` (it must be an open
/// socket), else makes sure nothing is open at that number.
fn take_page_socket(wanted: bool) -> Result<Option<StdUnixStream>, io::Error> {
    // SAFETY: F_GETFD only reads the descriptor flags of PAGES_FD.
    let open = unsafe { libc::fcntl(PAGES_FD, libc::F_GETFD) } >= 0;
    if !open {
        return if wanted {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the restore reads its memory through fd 4, which is not open",
            ))
        } else {
            Ok(None)
        };
    }
    // SAFETY: PAGES_FD is open (checked above) and nothing else in this
    // process owns it (main closed everything above it; only the daemon's
    // spawn puts a descriptor there): the OwnedFd is its only owner.
    let fd = unsafe { OwnedFd::from_raw_fd(PAGES_FD) };
    if !wanted {
        drop(fd);
        return Ok(None);
    }
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    let st = fstat(&fd)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "fd 4 is not a socket",
        ));
    }
    Ok(Some(StdUnixStream::from(fd)))
}

/// Tell the daemon why we give up (best effort) and log it.
fn fatal(control: &mut StdUnixStream, err: &StartupError) {
    let message = error_chain(err);
    tracing::error!(error = %message, "thaw-init failed");
    if let Err(e) = write_frame_sync(control, &FromSupervisor::Fatal { message }, &[]) {
        tracing::warn!(error = %error_chain(&e), "cannot report the failure");
    }
}

fn ms_since(t: SystemTime) -> f64 {
    t.elapsed().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

fn run() -> Result<ExitReason, ()> {
    let mut control = take_control_socket().map_err(|e| {
        tracing::error!(error = %error_chain(&e), "thaw-init failed");
    })?;
    let spec = match read_frame_sync::<_, ToSupervisor>(&mut control) {
        Ok((ToSupervisor::Start(spec), _)) => *spec,
        Ok(_) => {
            fatal(&mut control, &StartupError::UnexpectedFrame);
            return Err(());
        }
        Err(e) => {
            fatal(&mut control, &StartupError::Handshake(e));
            return Err(());
        }
    };
    // The page socket, when the restore reads its memory through one; else
    // whatever is at its number is closed.
    let mut pages = match take_page_socket(spec.restore.as_ref().is_some_and(|r| r.page_socket)) {
        Ok(p) => p,
        Err(e) => {
            fatal(&mut control, &StartupError::PageSocket(e));
            return Err(());
        }
    };
    // The network namespace to join, when the spec names it; else whatever
    // is at its number is closed.
    if let Err(e) = check_netns(spec.sandbox.join_net_fd) {
        fatal(&mut control, &StartupError::NetworkNamespace(e));
        return Err(());
    }
    // Wall-clock time: a time namespace may shift the monotonic clocks between
    // here and the sandbox side of `enter`.
    let mut started = SystemTime::now();
    let mut adopted = None;
    let entered = match &spec.restore {
        None => thaw_sandbox::enter_with(&spec.sandbox, || {
            // Every runtime in a time namespace of its own: restored ones
            // need one, and the same layout everywhere keeps them alike.
            let offset = spec.runtime.clock_offset_ns;
            crate::restore::enter_time_namespace(offset, offset)
        }),
        Some(r) if r.standby => thaw_sandbox::enter_with(&spec.sandbox, || {
            let prepared = crate::restore::prepare_restore(&spec.runtime, r, pages.take())?;
            let setup_ms = ms_since(started);
            let clone_fds = if r.clone {
                prepared.clone_fds()
            } else {
                Vec::new()
            };
            write_frame_sync(
                &mut control,
                &FromSupervisor::Standby {
                    setup_ms,
                    clone_fds,
                },
                &[],
            )
            .map_err(|e| error_chain(&e))?;
            match read_frame_sync::<_, ToSupervisor>(&mut control) {
                Ok((ToSupervisor::Resume, _)) => {}
                Ok((other, _)) => {
                    return Err(format!("a standby sandbox got {other:?} instead of Resume"))
                }
                Err(e) => return Err(format!("standby sandbox: {}", error_chain(&e))),
            }
            // What the daemon waits for from here on is the restore.
            started = SystemTime::now();
            adopted = Some(if r.clone {
                prepared.adopt_clone()?
            } else {
                prepared.restore()?
            });
            Ok(())
        }),
        Some(r) => thaw_sandbox::enter_with(&spec.sandbox, || {
            adopted = Some(crate::restore::restore_runtime(
                &spec.runtime,
                r,
                pages.take(),
            )?);
            Ok(())
        }),
    };
    if let Err(e) = entered {
        fatal(&mut control, &StartupError::Sandbox(e));
        return Err(());
    }
    // Now PID 1 of the sandbox, unprivileged. The function runs as the same
    // uid: make sure it can never open this process's /proc entries (fds,
    // memory), whatever the host's suid_dumpable setting.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        fatal(&mut control, &StartupError::Dumpable(e.into()));
        return Err(());
    }
    // Only now may threads exist. A lazily restored runtime is blocked on
    // its first page fault until its page server runs.
    if let Some(a) = adopted.as_mut() {
        if let Some((snap, memory, opts)) = a.lazy.take() {
            if let Err(e) = crate::restore::serve_lazy_memory(a.pid, snap, memory, opts) {
                fatal(&mut control, &StartupError::PageServer(e));
                return Err(());
            }
        }
    }
    let setup_ms = started
        .elapsed()
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            fatal(&mut control, &StartupError::AsyncRuntime(e));
            return Err(());
        }
    };
    if let Err(e) = control.set_nonblocking(true) {
        fatal(&mut control, &StartupError::ControlSocket(e));
        return Err(());
    }
    rt.block_on(async move {
        let control = tokio::net::UnixStream::from_std(control).map_err(|e| {
            tracing::error!(error = %e, "cannot register the control socket");
        })?;
        // The supervisor reports its own failures to the daemon.
        supervisor::run(spec.runtime, control, setup_ms, adopted)
            .await
            .map_err(|_| ())
    })
}
