//! Small system-call helpers.

#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{tee, OFlag, SpliceFFlags};

/// The bytes waiting in the pipe that `path` (a `/proc/<pid>/fd/N` link to
/// a pipe) names, copied without consuming them (`tee(2)` into a pipe of
/// our own, then read from there).
pub fn pipe_peek(path: &Path) -> std::io::Result<Vec<u8>> {
    let src = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let copied = match tee(&src, &w, 1 << 20, SpliceFFlags::SPLICE_F_NONBLOCK) {
        Ok(n) => n,
        Err(Errno::EAGAIN) => 0,
        Err(e) => return Err(e.into()),
    };
    let mut out = vec![0u8; copied];
    let mut got = 0;
    while got < copied {
        match nix::unistd::read(&r, &mut out[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    out.truncate(got);
    Ok(out)
}

/// Takes ownership of descriptor `fd`, which the kernel just installed in
/// this process's table for us (a userfaultfd from a fork event).
pub fn adopt_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the caller received `fd` from the kernel as a new descriptor
    // (not owned by any other object of this process) and hands it over.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: integer arguments only.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = Errno::result(ret)?;
    Ok(adopt_fd(fd as RawFd))
}

/// `pidfd_getfd(2)`: a duplicate of descriptor `target` of the process
/// behind `pidfd` (needs ptrace access to it).
pub fn pidfd_getfd(pidfd: &OwnedFd, target: i32) -> Result<OwnedFd, Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: integer arguments only; the result is a new descriptor.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    let fd = Errno::result(ret)?;
    Ok(adopt_fd(fd as RawFd))
}

/// Sends `SIGKILL` to the process behind `pidfd` (`pidfd_send_signal(2)`).
pub fn pidfd_kill(pidfd: std::os::fd::BorrowedFd<'_>) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: a null `siginfo` is allowed (the kernel fills one in); the
    // other arguments are integers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(ret).map(drop)
}
