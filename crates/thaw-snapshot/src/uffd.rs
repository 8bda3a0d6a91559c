//! The userfaultfd interface, for an fd adopted from another process.
//!
//! Owns: the `UFFDIO_*` requests and the `uffd_msg` format from
//! `<linux/userfaultfd.h>`. The `userfaultfd` crate only negotiates the API
//! on descriptors it creates in the calling process, and its bindings are
//! generated with libclang at build time; ours is a userfaultfd created
//! *inside the restored process* (so it serves that process's memory) and
//! taken over by the restorer, so the handful of requests are declared
//! here.
//!
//! Must not: interpret faults (that is [`crate::lazy`]).

#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// `UFFD_API`.
const UFFD_API: u64 = 0xaa;
/// `UFFDIO_REGISTER_MODE_MISSING`.
const REGISTER_MODE_MISSING: u64 = 1;
/// `UFFDIO_REGISTER_MODE_WP`.
const REGISTER_MODE_WP: u64 = 1 << 1;
/// `UFFDIO_WRITEPROTECT_MODE_WP`.
const WRITEPROTECT_MODE_WP: u64 = 1;
/// `UFFD_FEATURE_WP_UNPOPULATED`: write-protecting a range marks its
/// unpopulated pages too, so a first write to them is seen.
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_WP_ASYNC`: write-protect faults are resolved by the kernel
/// at once (no message to handle); the page is marked written, which
/// `PAGEMAP_SCAN` reports ([`crate::dirty`]).
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;

/// Fork events: the child gets its own userfaultfd.
pub const FEATURE_EVENT_FORK: u64 = 1 << 1;
/// `mremap` events.
pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// `madvise(MADV_DONTNEED/REMOVE)` events.
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// `munmap` events.
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;

/// `UFFD_EVENT_PAGEFAULT`.
pub const EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_EVENT_FORK`.
pub const EVENT_FORK: u8 = 0x13;
/// `UFFD_EVENT_REMAP`.
pub const EVENT_REMAP: u8 = 0x14;
/// `UFFD_EVENT_REMOVE`.
pub const EVENT_REMOVE: u8 = 0x15;
/// `UFFD_EVENT_UNMAP`.
pub const EVENT_UNMAP: u8 = 0x16;

/// Size of one `struct uffd_msg`.
pub const MSG_SIZE: usize = 32;

#[repr(C)]
pub(crate) struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
pub(crate) struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
pub(crate) struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
pub(crate) struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
pub(crate) struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// The request wrappers `nix` generates (`_IOWR(0xAA, nr, struct)`).
mod raw {
    #![allow(missing_docs)]
    use super::{UffdioApi, UffdioCopy, UffdioRange, UffdioRegister, UffdioZeropage};
    nix::ioctl_readwrite!(ioctl_api, 0xaa, 0x3f, UffdioApi);
    nix::ioctl_readwrite!(ioctl_register, 0xaa, 0x00, UffdioRegister);
    nix::ioctl_read!(ioctl_wake, 0xaa, 0x02, UffdioRange);
    nix::ioctl_readwrite!(ioctl_copy, 0xaa, 0x03, UffdioCopy);
    nix::ioctl_readwrite!(ioctl_zeropage, 0xaa, 0x04, UffdioZeropage);
    nix::ioctl_readwrite!(ioctl_writeprotect, 0xaa, 0x06, super::UffdioWriteprotect);
}
use raw::{ioctl_api, ioctl_copy, ioctl_register, ioctl_wake, ioctl_writeprotect, ioctl_zeropage};

/// `struct uffdio_writeprotect`.
#[repr(C)]
pub(crate) struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `UFFDIO_REGISTER` in write-protect mode for `[start, start + len)` of
/// the userfaultfd's process (with [`FEATURE_WP_ASYNC`]: only to track
/// writes).
pub fn register_wp(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<(), Errno> {
    let mut r = UffdioRegister {
        range: UffdioRange { start, len },
        mode: REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: `r` is a valid `struct uffdio_register`; the addresses are in
    // the other process and only interpreted by the kernel.
    unsafe { ioctl_register(fd.as_raw_fd(), &mut r) }?;
    Ok(())
}

/// `UFFDIO_WRITEPROTECT`: write-protects `[start, start + len)` (`on`) or
/// lifts the protection.
pub fn write_protect(fd: BorrowedFd<'_>, start: u64, len: u64, on: bool) -> Result<(), Errno> {
    let mut w = UffdioWriteprotect {
        range: UffdioRange { start, len },
        mode: if on { WRITEPROTECT_MODE_WP } else { 0 },
    };
    // SAFETY: `w` is a valid `struct uffdio_writeprotect` the kernel reads.
    unsafe { ioctl_writeprotect(fd.as_raw_fd(), &mut w) }?;
    Ok(())
}

/// `UFFDIO_API`: enables `features` (refused if the kernel lacks one).
pub fn api(fd: BorrowedFd<'_>, features: u64) -> Result<(), Errno> {
    let mut a = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: `a` is a valid `struct uffdio_api` the kernel reads and
    // updates in place; `fd` is open for the call.
    unsafe { ioctl_api(fd.as_raw_fd(), &mut a) }?;
    Ok(())
}

/// `UFFDIO_REGISTER` in missing mode for `[start, start + len)` of the
/// userfaultfd's process.
pub fn register(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<(), Errno> {
    let mut r = UffdioRegister {
        range: UffdioRange { start, len },
        mode: REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: `r` is a valid `struct uffdio_register`; the addresses are in
    // the other process and only interpreted by the kernel.
    unsafe { ioctl_register(fd.as_raw_fd(), &mut r) }?;
    Ok(())
}

/// `UFFDIO_COPY`: fills `[dst, dst + src.len())` of the other process with
/// `src` and wakes the threads waiting on it. Returns bytes copied; a
/// partial copy (a page already present) is `Ok` with fewer bytes, or
/// `Err(EEXIST)` when the first page was present.
pub fn copy(fd: BorrowedFd<'_>, dst: u64, src: &[u8]) -> Result<usize, Errno> {
    let mut c = UffdioCopy {
        dst,
        src: src.as_ptr() as u64,
        len: src.len() as u64,
        mode: 0,
        copy: 0,
    };
    // SAFETY: `src` is readable for `src.len()` bytes during the call (the
    // kernel copies from it); `c` is a valid `struct uffdio_copy` the
    // kernel updates with the count copied.
    let r = unsafe { ioctl_copy(fd.as_raw_fd(), &mut c) };
    match r {
        Ok(_) => Ok(usize::try_from(c.copy).unwrap_or(0)),
        // Stopped part way (at a page that already exists, say): the
        // kernel answers EAGAIN with the bytes it did copy.
        Err(Errno::EAGAIN | Errno::EEXIST) if c.copy > 0 => {
            Ok(usize::try_from(c.copy).unwrap_or(0))
        }
        Err(e) => Err(e),
    }
}

/// `UFFDIO_ZEROPAGE`: maps zero pages at `[start, start + len)` and wakes
/// the waiters.
pub fn zeropage(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<(), Errno> {
    let mut z = UffdioZeropage {
        range: UffdioRange { start, len },
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: `z` is a valid `struct uffdio_zeropage` the kernel updates.
    unsafe { ioctl_zeropage(fd.as_raw_fd(), &mut z) }?;
    Ok(())
}

/// `UFFDIO_WAKE`: wakes threads waiting on `[start, start + len)` (after a
/// fault another request already resolved).
pub fn wake(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<(), Errno> {
    let mut r = UffdioRange { start, len };
    // SAFETY: `r` is a valid `struct uffdio_range`.
    unsafe { ioctl_wake(fd.as_raw_fd(), &mut r) }?;
    Ok(())
}

/// One decoded `struct uffd_msg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// A missing page at `address` (exact, not page-aligned).
    PageFault {
        /// The faulting address.
        address: u64,
    },
    /// The process forked; the child's userfaultfd is descriptor `fd` of
    /// the reader (installed by the kernel when the message was read).
    Fork {
        /// The child's userfaultfd.
        fd: i32,
    },
    /// `mremap` moved `[from, from + len)` to `to`.
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Length.
        len: u64,
    },
    /// `madvise(MADV_DONTNEED)` or `MADV_REMOVE` dropped `[start, end)`.
    Remove {
        /// Start.
        start: u64,
        /// End.
        end: u64,
    },
    /// `munmap` unmapped `[start, end)`.
    Unmap {
        /// Start.
        start: u64,
        /// End.
        end: u64,
    },
    /// An event this reader does not know.
    Other(u8),
}

/// Decodes one message (`MSG_SIZE` bytes).
pub fn parse(msg: &[u8]) -> Message {
    let u64_at = |o: usize| u64::from_le_bytes(msg[o..o + 8].try_into().unwrap_or([0; 8]));
    // Header: u8 event, u8, u16, u32; then the 24-byte union at offset 8.
    match msg[0] {
        // pagefault { u64 flags; u64 address; u32 ptid }
        EVENT_PAGEFAULT => Message::PageFault {
            address: u64_at(16),
        },
        // fork { u32 ufd }
        EVENT_FORK => Message::Fork {
            fd: i32::from_le_bytes(msg[8..12].try_into().unwrap_or([0; 4])),
        },
        // remap { u64 from; u64 to; u64 len }
        EVENT_REMAP => Message::Remap {
            from: u64_at(8),
            to: u64_at(16),
            len: u64_at(24),
        },
        // remove / unmap { u64 start; u64 end }
        EVENT_REMOVE => Message::Remove {
            start: u64_at(8),
            end: u64_at(16),
        },
        EVENT_UNMAP => Message::Unmap {
            start: u64_at(8),
            end: u64_at(16),
        },
        other => Message::Other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages() {
        let mut m = [0u8; MSG_SIZE];
        m[0] = EVENT_PAGEFAULT;
        m[16..24].copy_from_slice(&0x7f00_1234u64.to_le_bytes());
        assert_eq!(
            parse(&m),
            Message::PageFault {
                address: 0x7f00_1234
            }
        );
        let mut m = [0u8; MSG_SIZE];
        m[0] = EVENT_REMOVE;
        m[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
        m[16..24].copy_from_slice(&0x3000u64.to_le_bytes());
        assert_eq!(
            parse(&m),
            Message::Remove {
                start: 0x1000,
                end: 0x3000
            }
        );
        let mut m = [0u8; MSG_SIZE];
        m[0] = EVENT_FORK;
        m[8..12].copy_from_slice(&7i32.to_le_bytes());
        assert_eq!(parse(&m), Message::Fork { fd: 7 });
    }
}
