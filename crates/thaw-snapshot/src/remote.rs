//! State only the process itself can read, fetched with remote syscalls.
//!
//! Owns: running the read-only system calls that report per-thread and
//! per-process kernel state `/proc` does not show, inside threads stopped by
//! [`crate::ptrace::freeze`] ([`Tracee::remote_syscall`]), and the plain-data
//! records of the results ([`ThreadState`], [`ProcessSignals`],
//! [`ProcessState`]), serialisable in the spirit of Firecracker's `Persist`.
//!
//! | state | call | scope |
//! |---|---|---|
//! | `clear_child_tid` | `prctl(PR_GET_TID_ADDRESS, &out)` | thread |
//! | alternate signal stack | `sigaltstack(NULL, &out)` | thread |
//! | signal dispositions 1..=64 | `rt_sigaction(sig, NULL, &out, 8)` | process |
//! | program break | `brk(0)` | process |
//!
//! Must not: change any state (every call here only reads), or leave tracee
//! memory changed.
//!
//! **Scratch memory.** The out-parameters need memory in the tracee. We use
//! the thread's own stack *below* its red zone: `[rsp - 128 - len, rsp - 128)`
//! rounded down to 16 bytes. The x86-64 ABI lets a leaf function keep data
//! in the 128 bytes below `rsp` (the red zone), so those are left alone;
//! below that nothing is live (a signal handler would overwrite it at any
//! moment), and the thread cannot run while it is stopped, so nothing else
//! uses it. Even so, the bytes are read before the call and written back
//! after it, so a memory snapshot taken afterwards sees exactly what the
//! thread left there.

use nix::errno::Errno;
use nix::sys::ptrace as nix_ptrace;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::memory::{MemoryError, ProcessMemory};
use crate::proc::{self, MappingKind, ProcError};
use crate::ptrace::{Frozen, PtraceError, SigSet, Tracee, SYSCALL_INSN};

/// The ABI's red zone below `rsp`, which a stopped leaf function may use.
pub const RED_ZONE: u64 = 128;
/// `PR_GET_TID_ADDRESS` (from `<linux/prctl.h>`).
const PR_GET_TID_ADDRESS: u64 = 40;
/// `sizeof(sigset_t)` as the kernel's `rt_sigaction` requires it.
const KERNEL_SIGSET_SIZE: u64 = 8;
/// Highest signal number.
pub const MAX_SIGNAL: usize = 64;

/// Errors capturing state with remote syscalls.
#[derive(Debug, Error)]
pub enum RemoteError {
    /// The remote syscall machinery failed.
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    /// The call ran and returned an error.
    #[error("Remote {call} in thread {tid} failed")]
    Failed {
        /// The call (e.g. `"sigaltstack"`).
        call: &'static str,
        /// The thread.
        tid: Pid,
        /// The error it returned.
        #[source]
        source: Errno,
    },
    /// Saving, reading or restoring the scratch area failed.
    #[error("Scratch memory at {addr:#x} in thread {tid}")]
    Scratch {
        /// The thread.
        tid: Pid,
        /// Start of the area.
        addr: u64,
        /// Why.
        #[source]
        source: Errno,
    },
    /// Reading the memory map (to find the vDSO) failed.
    #[error("Reading the memory map")]
    Maps(#[source] ProcError),
    /// Reading the vDSO failed.
    #[error("Reading the vDSO")]
    Memory(#[source] MemoryError),
    /// The frozen process has no thread to run calls in.
    #[error("Process {pid} has no stopped thread")]
    NoThreads {
        /// The process.
        pid: Pid,
    },
    /// No `syscall` instruction before the thread's `rip` nor in the vDSO.
    #[error("No syscall instruction usable in thread {tid}")]
    NoSyscallInstruction {
        /// The thread.
        tid: Pid,
    },
}

/// A thread's alternate signal stack (`stack_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SigAltStack {
    /// Base of the stack.
    pub sp: u64,
    /// `SS_DISABLE` (2), `SS_ONSTACK` (1), or 0 with `SS_AUTODISARM` bits.
    pub flags: i32,
    /// Size in bytes.
    pub size: u64,
}

impl SigAltStack {
    /// Whether no alternate stack is set (`SS_DISABLE`).
    pub fn is_disabled(&self) -> bool {
        self.flags & libc::SS_DISABLE != 0
    }
}

/// Per-thread state read with remote syscalls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadState {
    /// The thread.
    pub tid: i32,
    /// `set_tid_address`/`CLONE_CHILD_CLEARTID` address (glibc: the `tid`
    /// field of `struct pthread`, `fs_base + 0x2d0` with glibc 2.36).
    pub clear_child_tid: u64,
    /// The alternate signal stack.
    pub sigaltstack: SigAltStack,
}

/// One signal's disposition (the kernel's `struct sigaction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SignalAction {
    /// Handler address, or `SIG_DFL` (0) / `SIG_IGN` (1).
    pub handler: u64,
    /// `SA_*` flags.
    pub flags: u64,
    /// `sa_restorer` (glibc's `__restore_rt` when `SA_RESTORER` is set).
    pub restorer: u64,
    /// Signals blocked while the handler runs.
    pub mask: SigSet,
}

impl SignalAction {
    /// Default disposition.
    pub fn is_default(&self) -> bool {
        self.handler == libc::SIG_DFL as u64
    }

    /// Ignored.
    pub fn is_ignored(&self) -> bool {
        self.handler == libc::SIG_IGN as u64
    }
}

/// Every signal disposition of a process (shared by its threads).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProcessSignals {
    /// `actions[n - 1]` is the disposition of signal `n`, for 1..=64.
    pub actions: Vec<SignalAction>,
}

impl ProcessSignals {
    /// The disposition of signal `signo` (1-based).
    pub fn get(&self, signo: i32) -> Option<&SignalAction> {
        usize::try_from(signo)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| self.actions.get(i))
    }
}

/// Per-process state read with remote syscalls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    /// The exact program break (`brk(0)`); `[heap]` ends at it rounded up
    /// to a page.
    pub brk: u64,
    /// Signal dispositions.
    pub signals: ProcessSignals,
}

/// The first `syscall` instruction (`0f 05`) in the process's `[vdso]`,
/// for threads not stopped right after one.
pub fn find_vdso_syscall(pid: Pid) -> Result<Option<u64>, RemoteError> {
    let maps = proc::read_maps(pid).map_err(RemoteError::Maps)?;
    let Some(vdso) = maps.iter().find(|m| m.kind == MappingKind::Vdso) else {
        return Ok(None);
    };
    let mem = ProcessMemory::open(pid).map_err(RemoteError::Memory)?;
    let len = usize::try_from(vdso.end - vdso.start).unwrap_or(0);
    let mut text = vec![0u8; len];
    mem.read(vdso.start, &mut text)
        .map_err(RemoteError::Memory)?;
    Ok(text
        .windows(2)
        .position(|w| w == SYSCALL_INSN)
        .map(|i| vdso.start + i as u64))
}

/// The `syscall` instruction to use in `t`: the one before its `rip`, or
/// `fallback` (e.g. from [`find_vdso_syscall`]).
fn syscall_insn(t: &Tracee, fallback: Option<u64>) -> Result<u64, RemoteError> {
    match t.syscall_insn_before_rip() {
        Ok(addr) => Ok(addr),
        Err(PtraceError::NoSyscallInstruction { .. }) => {
            fallback.ok_or(RemoteError::NoSyscallInstruction { tid: t.tid() })
        }
        Err(e) => Err(e.into()),
    }
}

/// A scratch area below the red zone of a stopped thread's stack, saved on
/// creation and written back by [`Scratch::restore`].
struct Scratch {
    tid: Pid,
    addr: u64,
    saved: Vec<i64>,
}

impl Scratch {
    /// Reserves `words` 8-byte words below `rsp - RED_ZONE` (see the module
    /// documentation for why that memory is free) and saves their contents.
    fn below_red_zone(t: &Tracee, words: usize) -> Result<Self, RemoteError> {
        let tid = t.tid();
        let rsp = t.regs()?.rsp;
        let addr = (rsp - RED_ZONE - 8 * words as u64) & !15;
        let saved = (0..words)
            .map(|i| Self::peek(tid, addr + 8 * i as u64))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| RemoteError::Scratch { tid, addr, source })?;
        Ok(Self { tid, addr, saved })
    }

    fn peek(tid: Pid, addr: u64) -> Result<i64, Errno> {
        nix_ptrace::read(tid, addr as nix_ptrace::AddressType)
    }

    /// Word `i` as the tracee sees it now.
    fn word(&self, i: usize) -> Result<u64, RemoteError> {
        let addr = self.addr + 8 * i as u64;
        Self::peek(self.tid, addr)
            .map(|w| w as u64)
            .map_err(|source| RemoteError::Scratch {
                tid: self.tid,
                addr,
                source,
            })
    }

    /// Writes the saved contents back.
    fn restore(self) -> Result<(), RemoteError> {
        for (i, w) in self.saved.iter().enumerate() {
            let addr = self.addr + 8 * i as u64;
            nix_ptrace::write(self.tid, addr as nix_ptrace::AddressType, *w).map_err(|source| {
                RemoteError::Scratch {
                    tid: self.tid,
                    addr,
                    source,
                }
            })?;
        }
        Ok(())
    }
}

/// Runs one call, turning a negative result into [`RemoteError::Failed`].
fn call(
    t: &mut Tracee,
    insn: u64,
    name: &'static str,
    nr: i64,
    args: [u64; 6],
) -> Result<u64, RemoteError> {
    let ret = t.remote_syscall_at(insn, nr, args)?;
    if (-4095..0).contains(&ret) {
        return Err(RemoteError::Failed {
            call: name,
            tid: t.tid(),
            source: Errno::from_raw(i32::try_from(-ret).unwrap_or(libc::EINVAL)),
        });
    }
    Ok(ret as u64)
}

/// Runs `f` with a scratch area of `words` words, restoring the area after
/// `f` (also when `f` failed).
fn with_scratch<R>(
    t: &mut Tracee,
    words: usize,
    f: impl FnOnce(&mut Tracee, &Scratch) -> Result<R, RemoteError>,
) -> Result<R, RemoteError> {
    let scratch = Scratch::below_red_zone(t, words)?;
    let result = f(t, &scratch);
    let restored = scratch.restore();
    let r = result?;
    restored?;
    Ok(r)
}

/// Reads `clear_child_tid` and the alternate signal stack of one thread.
/// `fallback` is a `syscall` instruction to use if the thread is not
/// stopped right after one.
pub fn capture_thread(t: &mut Tracee, fallback: Option<u64>) -> Result<ThreadState, RemoteError> {
    let insn = syscall_insn(t, fallback)?;
    with_scratch(t, 3, |t, s| {
        let args = [PR_GET_TID_ADDRESS, s.addr, 0, 0, 0, 0];
        call(t, insn, "prctl(PR_GET_TID_ADDRESS)", libc::SYS_prctl, args)?;
        let clear_child_tid = s.word(0)?;
        call(
            t,
            insn,
            "sigaltstack",
            libc::SYS_sigaltstack,
            [0, s.addr, 0, 0, 0, 0],
        )?;
        let sigaltstack = SigAltStack {
            sp: s.word(0)?,
            flags: s.word(1)? as u32 as i32,
            size: s.word(2)?,
        };
        Ok(ThreadState {
            tid: t.tid().as_raw(),
            clear_child_tid,
            sigaltstack,
        })
    })
}

/// Reads the process-wide state (program break, every signal disposition)
/// through one of its threads (normally the leader).
pub fn capture_process(t: &mut Tracee, fallback: Option<u64>) -> Result<ProcessState, RemoteError> {
    let insn = syscall_insn(t, fallback)?;
    let brk = call(t, insn, "brk", libc::SYS_brk, [0; 6])?;
    let actions = with_scratch(t, 4, |t, s| {
        (1..=MAX_SIGNAL as u64)
            .map(|sig| {
                let args = [sig, 0, s.addr, KERNEL_SIGSET_SIZE, 0, 0];
                call(t, insn, "rt_sigaction", libc::SYS_rt_sigaction, args)?;
                Ok(SignalAction {
                    handler: s.word(0)?,
                    flags: s.word(1)?,
                    restorer: s.word(2)?,
                    mask: SigSet(s.word(3)?),
                })
            })
            .collect::<Result<Vec<_>, RemoteError>>()
    })?;
    Ok(ProcessState {
        brk,
        signals: ProcessSignals { actions },
    })
}

/// Captures the process state (through the leader) and every thread's
/// state of a frozen process, in [`Frozen::threads`] order.
pub fn capture_frozen(
    frozen: &mut Frozen,
) -> Result<(ProcessState, Vec<ThreadState>), RemoteError> {
    let pid = frozen.pid();
    let fallback = find_vdso_syscall(pid)?;
    let threads = frozen.threads_mut();
    let Some((leader, _)) = threads.split_first_mut() else {
        return Err(RemoteError::NoThreads { pid });
    };
    let process = capture_process(leader, fallback)?;
    let states = threads
        .iter_mut()
        .map(|t| capture_thread(t, fallback))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((process, states))
}
