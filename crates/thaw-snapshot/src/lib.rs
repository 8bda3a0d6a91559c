//! The kernel-facing foundations of thaw's checkpoint/restore engine.
//!
//! Owns: thin, typed wrappers around the Linux interfaces that a checkpoint of
//! a quiescent process tree reads from: `/proc/<pid>/…` files ([`proc`]),
//! ptrace stops and per-thread register state ([`ptrace`]), state only the
//! process itself can report, read with remote syscalls ([`remote`]), another
//! process's memory ([`memory`]) and the CPU's extended-state layout ([`cpu`]).
//!
//! Must not: decide policy (which processes to dump, what to do with an
//! unsupported object), know about functions, sandboxes, HTTP or storage, or
//! write snapshot files. Those belong to the layers built on top of this crate
//! (see `docs/snapshot-engine.md` for the whole checkpoint and restore walk).
//!
//! Every wrapper is tested against the real kernel in `tests/`. The crate is
//! x86_64-only: the register and xstate layouts are that architecture's.
//!
//! Unsafe code lives only in [`ptrace`] (raw `ptrace(2)` requests,
//! `get_robust_list(2)` and `tkill(2)` that nix does not wrap), [`cpu`]
//! (`xgetbv`), the ioctl and syscall wrappers ([`uffd`], [`sys`],
//! [`dirty`]'s `PAGEMAP_SCAN`), [`spawn`] and one read of [`image`]; each
//! block carries a `// SAFETY:` comment.

#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("thaw-snapshot supports only Linux on x86_64");

pub mod checkpoint;
pub mod cpu;
pub mod dirty;
pub mod image;
pub mod lazy;
pub mod memory;
pub mod proc;
pub mod ptrace;
pub mod remote;
pub mod restore;
pub mod sockets;
pub mod spawn;
pub mod state;
pub mod sys;
pub mod template;
pub mod uffd;
pub mod workingset;

/// Size of a base page on x86_64, the unit of every memory operation here.
pub const PAGE_SIZE: u64 = 4096;
