//! Small system-call helpers.

use std::fs::OpenOptions;
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
