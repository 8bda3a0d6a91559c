//! The few system calls that nix does not wrap, each behind a small typed
//! function. Owns: every `unsafe` block of the sandbox setup path (pidfds,
//! `close_range`, `_exit`, the interface-flags ioctl). Must not: hold policy;
//! callers decide what to call and when.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::signal::Signal;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

/// Open a pidfd for `pid` (a process in the caller's pid namespace). The
/// descriptor is close-on-exec.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes two integers and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0_u32) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor; nothing else
    // owns it, so the OwnedFd becomes its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Send `signal` to the process behind `pidfd`. Unlike kill(2) this cannot hit
/// a recycled pid: the pidfd pins the process it was opened for.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: Signal) -> io::Result<()> {
    // SAFETY: passes a live descriptor, a valid signal number, a null siginfo
    // (allowed: the kernel then fills in a SI_USER info) and no flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0_u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Close every file descriptor numbered `first` or above.
///
/// # Safety
///
/// Any Rust object owning one of those descriptors (a `File`, an `OwnedFd`)
/// is left dangling: the caller must never use or drop such an object again.
/// Meant for a process that afterwards only waits and exits.
pub unsafe fn close_fds_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range(2) takes integers only; the caller upholds the
    // ownership contract documented above.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0_u32) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `CLOSE_RANGE_CLOEXEC` (linux/close_range.h): mark instead of close.
const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;

/// Mark every descriptor numbered `first` or higher close-on-exec, so that no
/// descriptor the caller inherited or forgot leaks into a program it executes.
/// Safe: no descriptor is closed, so no owner is left dangling. One system call
/// and no allocation, so it may run between fork and exec.
pub fn mark_cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range(2) takes integers only; with CLOSE_RANGE_CLOEXEC it
    // only sets a flag on descriptors and invalidates none.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Terminate the process at once with `code`: no atexit handlers, no stdio
/// flushing, no destructors. This is what a forked process must use so that
/// buffers copied from its parent are not written twice.
pub(crate) fn exit_immediately(code: i32) -> ! {
    // SAFETY: _exit(2) has no preconditions and does not return.
    unsafe { libc::_exit(code) }
}

/// Set `IFF_UP` on the network interface `name` (e.g. `lo`) of the caller's
/// network namespace. Needs CAP_NET_ADMIN there.
pub(crate) fn set_interface_up(name: &str) -> io::Result<()> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: ifreq is plain old data (a char array and a union of integers
    // and plain structs); all-zero bytes are a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads `ifr_name` and writes `ifr_ifru.ifru_flags`,
    // both inside `req`, which outlives the call; `sock` is a live socket.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel has just written `ifru_flags`, the union member
    // SIOCGIFFLAGS fills, so reading it reads initialised data.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    // IFF_UP is 0x1: it fits the kernel's short flags field.
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads `ifr_name` and `ifru_flags` from `req`, which
    // outlives the call; `sock` is a live socket.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
