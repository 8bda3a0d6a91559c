//! ptrace stops and per-thread state.
//!
//! Owns: seizing a thread without signalling it (`PTRACE_SEIZE` +
//! `PTRACE_INTERRUPT`), waiting for the resulting stop, reading the thread's
//! state while it is stopped, and detaching so it continues exactly where it
//! was ([`Tracee`]); stopping every thread of a process at once ([`freeze`]).
//!
//! Must not: leave a tracee's registers or memory changed (a checkpoint
//! observes; the restore side has its own code), or decide what to dump.
//! The one exception is [`Tracee::remote_syscall`], which runs a single
//! system call *in* a stopped thread and puts every register back exactly
//! before it returns (see its documentation for the invariants).
//!
//! What is read per thread, and with which request:
//!
//! | state                          | request                                          |
//! |--------------------------------|--------------------------------------------------|
//! | general registers, fs/gs base  | `PTRACE_GETREGS` (nix)                           |
//! | legacy FPU/SSE (FXSAVE image)  | `PTRACE_GETREGSET(NT_PRFPREG)` (nix)             |
//! | full xstate (AVX, AVX-512, …)  | `PTRACE_GETREGSET(NT_X86_XSTATE)` (raw)          |
//! | rseq registration              | `PTRACE_GET_RSEQ_CONFIGURATION` (raw, Linux 5.13) |
//! | blocked-signal mask            | `PTRACE_GETSIGMASK` (raw)                        |
//! | robust futex list              | `get_robust_list(2)` (raw; not a ptrace request) |
//! | one syscall run in the thread  | `PTRACE_SETREGS` + `PTRACE_SINGLESTEP` ([`Tracee::remote_syscall`]) |
//!
//! ptrace is bound to the tracer *thread*: every call on a [`Tracee`] must
//! come from the thread that seized it, so [`Tracee`] and [`Frozen`] are
//! neither `Send` nor `Sync`.

// Unsafe is needed for the raw ptrace requests nix does not wrap
// (NT_X86_XSTATE, GET_RSEQ_CONFIGURATION, GETSIGMASK), get_robust_list and
// tkill; each lives in one small function below. Remote syscalls need none:
// nix wraps SETREGS, SINGLESTEP and PEEKDATA safely.
#![allow(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, warn};

use crate::cpu::XSAVE_LEGACY_AND_HEADER;
use crate::proc::{self, ProcError};

/// `NT_X86_XSTATE` regset note type (from `<linux/elf.h>`).
const NT_X86_XSTATE: libc::c_int = 0x202;
/// `PTRACE_GET_RSEQ_CONFIGURATION` (from `<linux/ptrace.h>`, Linux 5.13).
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
/// `PTRACE_EVENT_STOP`: the stop reported for `PTRACE_INTERRUPT` and group stops.
const PTRACE_EVENT_STOP: i32 = 128;
/// `PTRACE_EVENT_CLONE`: a traced thread created another.
const PTRACE_EVENT_CLONE: i32 = 3;
/// Upper bound on the xstate buffer; the kernel truncates to its real size.
/// (AMX tile data makes it about 11 KiB; leave room for what comes next.)
const XSTATE_BUFFER_MAX: usize = 64 * 1024;
/// How many signal-delivery stops [`Tracee::wait_stop`] forwards before
/// giving up on reaching the interrupt stop.
const MAX_FORWARDED_SIGNALS: usize = 64;
/// How many times [`freeze`] re-reads the thread list before giving up.
const MAX_FREEZE_ROUNDS: usize = 32;
/// How many signals [`Tracee::remote_syscall_at`] holds back before it
/// gives up on getting its system call executed.
const MAX_REMOTE_SIGNALS: usize = 16;
/// The `syscall` instruction.
pub const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

/// Kernel-internal restart codes a stopped syscall may hold in `rax`
/// (`include/linux/errno.h`); user space never sees them.
pub const ERESTARTSYS: i64 = 512;
/// Restart unless a handler ran (then `EINTR`).
pub const ERESTARTNOINTR: i64 = 513;
/// Restart only if no handler ran.
pub const ERESTARTNOHAND: i64 = 514;
/// Restart through `restart_syscall(2)` with kernel-held state.
pub const ERESTART_RESTARTBLOCK: i64 = 516;

/// Errors from one ptrace operation on one thread.
#[derive(Debug, Error)]
pub enum PtraceError {
    /// `PTRACE_SEIZE` failed.
    #[error("Seizing thread {tid}")]
    Seize {
        /// The thread.
        tid: Pid,
        /// Why.
        #[source]
        source: Errno,
    },
    /// `PTRACE_INTERRUPT` failed.
    #[error("Interrupting thread {tid}")]
    Interrupt {
        /// The thread.
        tid: Pid,
        /// Why.
        #[source]
        source: Errno,
    },
    /// `waitpid` failed.
    #[error("Waiting for thread {tid} to stop")]
    Wait {
        /// The thread.
        tid: Pid,
        /// Why.
        #[source]
        source: Errno,
    },
    /// Forwarding a signal that arrived during the stop failed.
    #[error("Forwarding signal {signal:?} to thread {tid}")]
    Forward {
        /// The thread.
        tid: Pid,
        /// The signal.
        signal: Signal,
        /// Why.
        #[source]
        source: Errno,
    },
    /// The thread exited or was killed instead of stopping.
    #[error("Thread {tid} exited while being stopped ({status})")]
    Exited {
        /// The thread.
        tid: Pid,
        /// The wait status, as text.
        status: String,
    },
    /// The thread kept reporting signals instead of the interrupt stop.
    #[error("Thread {tid} did not reach the interrupt stop")]
    NoStop {
        /// The thread.
        tid: Pid,
    },
    /// A register or state read failed; `what` names the request.
    #[error("Reading {what} of thread {tid}")]
    Read {
        /// The request (e.g. `"xstate"`).
        what: &'static str,
        /// The thread.
        tid: Pid,
        /// Why.
        #[source]
        source: Errno,
    },
    /// The kernel returned an xstate image too small to be valid.
    #[error("Thread {tid} returned a {len}-byte xstate image")]
    XstateTooSmall {
        /// The thread.
        tid: Pid,
        /// Bytes returned.
        len: usize,
    },
    /// Writing registers or memory of the thread failed; `what` names it.
    #[error("Writing {what} of thread {tid}")]
    Write {
        /// What was written (e.g. `"registers"`).
        what: &'static str,
        /// The thread.
        tid: Pid,
        /// Why.
        #[source]
        source: Errno,
    },
    /// A remote syscall needs a thread held in our interrupt stop; this one
    /// is in a group stop or was never stopped.
    #[error("Thread {tid} is not in an interrupt stop ({stop:?})")]
    NotInterrupted {
        /// The thread.
        tid: Pid,
        /// How it is stopped, if at all.
        stop: Option<StopKind>,
    },
    /// The two bytes before `rip` (or at the given address) are not a
    /// `syscall` instruction.
    #[error("No syscall instruction at {addr:#x} in thread {tid} (found {found:02x?})")]
    NoSyscallInstruction {
        /// The thread.
        tid: Pid,
        /// Where one was expected.
        addr: u64,
        /// The bytes found there.
        found: [u8; 2],
    },
    /// `PTRACE_SINGLESTEP` failed.
    #[error("Single-stepping thread {tid}")]
    Step {
        /// The thread.
        tid: Pid,
        /// Why.
        #[source]
        source: Errno,
    },
    /// Signals kept arriving and the remote syscall never ran.
    #[error("Remote syscall {nr} in thread {tid} did not run: {held} signals arrived first")]
    RemoteStarved {
        /// The thread.
        tid: Pid,
        /// The syscall number.
        nr: i64,
        /// Signals held back so far.
        held: usize,
    },
    /// The thread stopped somewhere other than before or just after the
    /// `syscall` instruction (the call changed control flow, or something
    /// else moved the thread).
    #[error("Remote syscall {nr} in thread {tid}: unexpected stop {status} at rip {rip:#x}")]
    RemoteUnexpected {
        /// The thread.
        tid: Pid,
        /// The syscall number.
        nr: i64,
        /// The wait status, as text.
        status: String,
        /// Where the thread was.
        rip: u64,
    },
    /// `PTRACE_DETACH` failed.
    #[error("Detaching from thread {tid}")]
    Detach {
        /// The thread.
        tid: Pid,
        /// Why.
        #[source]
        source: Errno,
    },
}

/// Errors stopping a whole process.
#[derive(Debug, Error)]
pub enum FreezeError {
    /// Reading the process's thread list or status failed.
    #[error("Listing threads of process {pid}")]
    ListThreads {
        /// The process.
        pid: Pid,
        /// Why.
        #[source]
        source: ProcError,
    },
    /// `pid` is a thread, not a process (thread-group leader).
    #[error("{pid} is not a process id (its thread group is {tgid})")]
    NotAProcess {
        /// The id given.
        pid: Pid,
        /// Its thread group.
        tgid: i32,
    },
    /// Stopping one thread failed.
    #[error("Stopping thread {tid}")]
    Thread {
        /// The thread.
        tid: Pid,
        /// Why.
        #[source]
        source: PtraceError,
    },
    /// The thread list kept changing.
    #[error("Thread list of process {pid} did not settle after {rounds} rounds")]
    Unstable {
        /// The process.
        pid: Pid,
        /// Rounds tried.
        rounds: usize,
    },
    /// Detaching from one or more threads failed.
    #[error("Detaching from process {pid}")]
    Thaw {
        /// The process.
        pid: Pid,
        /// The first failure.
        #[source]
        source: PtraceError,
    },
}

/// How a seized thread came to a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// Stopped by our `PTRACE_INTERRUPT`: the normal case.
    Interrupted,
    /// The thread was already in a group stop (`SIGSTOP`, `SIGTSTP`, ...)
    /// and stays stopped by that signal after detach.
    GroupStop(Signal),
}

/// A thread's general-purpose registers (`struct user_regs_struct`),
/// including `fs_base`/`gs_base` (TLS pointers) and `orig_rax`.
#[allow(missing_docs)] // register names speak for themselves
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GeneralRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    /// The syscall number the thread entered, or `u64::MAX` (-1) when the
    /// stop is not inside a syscall.
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

impl From<GeneralRegs> for libc::user_regs_struct {
    fn from(r: GeneralRegs) -> Self {
        Self {
            r15: r.r15,
            r14: r.r14,
            r13: r.r13,
            r12: r.r12,
            rbp: r.rbp,
            rbx: r.rbx,
            r11: r.r11,
            r10: r.r10,
            r9: r.r9,
            r8: r.r8,
            rax: r.rax,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            orig_rax: r.orig_rax,
            rip: r.rip,
            cs: r.cs,
            eflags: r.eflags,
            rsp: r.rsp,
            ss: r.ss,
            fs_base: r.fs_base,
            gs_base: r.gs_base,
            ds: r.ds,
            es: r.es,
            fs: r.fs,
            gs: r.gs,
        }
    }
}

impl From<libc::user_regs_struct> for GeneralRegs {
    fn from(r: libc::user_regs_struct) -> Self {
        Self {
            r15: r.r15,
            r14: r.r14,
            r13: r.r13,
            r12: r.r12,
            rbp: r.rbp,
            rbx: r.rbx,
            r11: r.r11,
            r10: r.r10,
            r9: r.r9,
            r8: r.r8,
            rax: r.rax,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            orig_rax: r.orig_rax,
            rip: r.rip,
            cs: r.cs,
            eflags: r.eflags,
            rsp: r.rsp,
            ss: r.ss,
            fs_base: r.fs_base,
            gs_base: r.gs_base,
            ds: r.ds,
            es: r.es,
            fs: r.fs,
            gs: r.gs,
        }
    }
}

/// Where a stopped thread is with respect to system calls, decoded from
/// `orig_rax` and `rax` the way the kernel's signal-return path does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyscallState {
    /// Stopped in user code, not in a syscall (`orig_rax == -1`).
    NotInSyscall,
    /// Stopped at the end of syscall `nr`, which returned `ret`; resuming
    /// needs no fix-up.
    Returned {
        /// Syscall number.
        nr: i64,
        /// Its return value (`-errno` on failure).
        ret: i64,
    },
    /// Syscall `nr` was interrupted with `-ERESTARTSYS`, `-ERESTARTNOINTR`
    /// or `-ERESTARTNOHAND` (held in `code`). The kernel would re-execute
    /// it on resume; a restored thread must do the same by resuming at
    /// `rip - 2` (the `syscall` instruction) with `rax = orig_rax`.
    Restart {
        /// Syscall number.
        nr: i64,
        /// The restart code (negative).
        code: i64,
    },
    /// Syscall `nr` was interrupted with `-ERESTART_RESTARTBLOCK`
    /// (`nanosleep`, `clock_nanosleep`, `poll` and `futex` with timeouts):
    /// the kernel keeps the remaining time in the thread's `restart_block`,
    /// which no interface can read or set. A restored thread sees `-EINTR`,
    /// as under CRIU; callers of these calls tolerate `EINTR`.
    RestartBlock {
        /// Syscall number.
        nr: i64,
    },
}

impl GeneralRegs {
    /// Decodes the thread's syscall state.
    pub fn syscall_state(&self) -> SyscallState {
        // Two's-complement reinterpretation is the intent: the kernel keeps
        // -1 and -errno in these unsigned slots.
        let nr = self.orig_rax as i64;
        if nr < 0 {
            return SyscallState::NotInSyscall;
        }
        let ret = self.rax as i64;
        match -ret {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                SyscallState::Restart { nr, code: ret }
            }
            ERESTART_RESTARTBLOCK => SyscallState::RestartBlock { nr },
            _ => SyscallState::Returned { nr, ret },
        }
    }

    /// The registers a restored thread must resume with so that an
    /// interrupted syscall behaves as the kernel would have made it behave
    /// had the thread simply been detached (see [`SyscallState`]). The
    /// result has `orig_rax = -1`, since the restored thread resumes through
    /// `rt_sigreturn`, not from inside a syscall.
    pub fn resume_regs(&self) -> GeneralRegs {
        let mut r = *self;
        match self.syscall_state() {
            SyscallState::Restart { .. } => {
                r.rax = self.orig_rax;
                r.rip = self.rip.wrapping_sub(2);
            }
            SyscallState::RestartBlock { .. } => {
                r.rax = (-i64::from(libc::EINTR)) as u64;
            }
            SyscallState::NotInSyscall | SyscallState::Returned { .. } => {}
        }
        r.orig_rax = u64::MAX;
        r
    }
}

/// The legacy 512-byte FXSAVE image (x87, MXCSR, XMM0-15), as returned by
/// `PTRACE_GETFPREGS`/`NT_PRFPREG`. Bytes 416..512 are reserved and zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FpRegs {
    bytes: Vec<u8>,
}

impl FpRegs {
    /// Size of the image.
    pub const SIZE: usize = 512;
    /// Bytes that carry state (the rest is reserved padding).
    pub const USED: usize = 416;

    fn from_libc(f: &libc::user_fpregs_struct) -> Self {
        let mut b = Vec::with_capacity(Self::SIZE);
        for v in [f.cwd, f.swd, f.ftw, f.fop] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&f.rip.to_le_bytes());
        b.extend_from_slice(&f.rdp.to_le_bytes());
        b.extend_from_slice(&f.mxcsr.to_le_bytes());
        b.extend_from_slice(&f.mxcr_mask.to_le_bytes());
        for v in f.st_space.iter().chain(f.xmm_space.iter()) {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.resize(Self::SIZE, 0);
        Self { bytes: b }
    }

    /// The raw image.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The SSE control/status register.
    pub fn mxcsr(&self) -> u32 {
        le_u32(&self.bytes, 24)
    }

    /// XMM register `i` (0..16).
    pub fn xmm(&self, i: usize) -> u128 {
        le_u128(&self.bytes, 160 + 16 * i)
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn le_u128(b: &[u8], at: usize) -> u128 {
    let mut w = [0u8; 16];
    w.copy_from_slice(&b[at..at + 16]);
    u128::from_le_bytes(w)
}

/// A thread's full extended state, the non-compacted XSAVE image returned
/// by `PTRACE_GETREGSET(NT_X86_XSTATE)`: legacy area (512 bytes), XSAVE
/// header (64 bytes), then one block per enabled feature at the offsets
/// `CPUID(0xD, i)` gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xstate {
    bytes: Vec<u8>,
}

impl Xstate {
    /// Wraps a saved image (as read back from a snapshot). The kernel checks
    /// it when it is written to a thread.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self { bytes }
    }

    /// The raw image.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Image size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the image is empty (never true for a read image).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// `XSTATE_BV` from the header: which components hold non-initial state.
    pub fn xstate_bv(&self) -> u64 {
        le_u64(&self.bytes, 512)
    }

    /// `XCOMP_BV` from the header: 0 for the non-compacted user format.
    pub fn xcomp_bv(&self) -> u64 {
        le_u64(&self.bytes, 520)
    }

    /// The `XCR0` the kernel stored in the first software-reserved word
    /// (offset 464, `user_xstateregs.i387.xstate_fx_sw[0]`): the features
    /// this image covers. (Signal frames use those bytes differently, for
    /// `struct _fpx_sw_bytes`; the restorer writes that format itself.)
    pub fn xcr0(&self) -> u64 {
        le_u64(&self.bytes, 464)
    }
}

/// A thread's rseq registration (`struct ptrace_rseq_configuration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RseqConfiguration {
    /// Address of the thread's `struct rseq`; 0 when not registered.
    pub abi_pointer: u64,
    /// Registered size of `struct rseq` (glibc 2.35+ registers 32).
    pub abi_size: u32,
    /// The abort-handler signature (glibc on x86: `0x53053053`).
    pub signature: u32,
    /// Registration flags.
    pub flags: u32,
}

/// `struct ptrace_rseq_configuration` from `<linux/ptrace.h>`.
#[repr(C)]
#[derive(Default)]
struct RawRseqConfiguration {
    rseq_abi_pointer: u64,
    rseq_abi_size: u32,
    signature: u32,
    flags: u32,
    pad: u32,
}

/// A signal mask: bit `n - 1` stands for signal `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SigSet(pub u64);

impl SigSet {
    /// Whether signal number `signo` (1-based) is in the set.
    pub fn contains(self, signo: i32) -> bool {
        (1..=64).contains(&signo) && self.0 & (1u64 << (signo - 1)) != 0
    }
}

/// A thread's robust futex list registration (`set_robust_list(2)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RobustList {
    /// Address of the list head; 0 when none is registered.
    pub head: u64,
    /// Size of the head structure (24 on x86_64).
    pub len: u64,
}

/// A thread this process has seized with `PTRACE_SEIZE`.
///
/// Dropping it detaches (logging, not returning, a failure); prefer
/// [`Tracee::detach`] where the error matters.
#[derive(Debug)]
pub struct Tracee {
    tid: Pid,
    attached: bool,
    stop: Option<StopKind>,
    /// Signals that arrived during remote syscalls and were held back;
    /// re-sent to the thread (`tkill`) just before detach.
    held: Vec<Signal>,
    // ptrace state belongs to the tracer thread: keep this !Send and !Sync.
    _tracer_thread: PhantomData<*const ()>,
}

impl Tracee {
    /// Seizes `tid` with `PTRACE_SEIZE` (no options). The thread keeps
    /// running and receives no signal; call [`Tracee::interrupt`] and
    /// [`Tracee::wait_stop`] to stop it.
    pub fn seize(tid: Pid) -> Result<Self, PtraceError> {
        Self::seize_with(tid, ptrace::Options::empty())
    }

    /// [`Tracee::seize`] with ptrace options (e.g. `PTRACE_O_EXITKILL`, so
    /// a process being restored dies with its restorer).
    pub fn seize_with(tid: Pid, options: ptrace::Options) -> Result<Self, PtraceError> {
        ptrace::seize(tid, options).map_err(|source| PtraceError::Seize { tid, source })?;
        Ok(Self {
            tid,
            attached: true,
            stop: None,
            held: Vec::new(),
            _tracer_thread: PhantomData,
        })
    }

    /// Seizes `tid`, interrupts it and waits until it is stopped.
    pub fn seize_and_stop(tid: Pid) -> Result<Self, PtraceError> {
        let mut t = Self::seize(tid)?;
        t.interrupt()?;
        t.wait_stop()?;
        Ok(t)
    }

    /// The thread id.
    pub fn tid(&self) -> Pid {
        self.tid
    }

    /// How the thread stopped, once [`Tracee::wait_stop`] returned.
    pub fn stop_kind(&self) -> Option<StopKind> {
        self.stop
    }

    /// Sends `PTRACE_INTERRUPT`: the thread stops at its next return
    /// towards user space, and a blocking syscall is interrupted (it will
    /// restart after detach).
    pub fn interrupt(&self) -> Result<(), PtraceError> {
        ptrace::interrupt(self.tid).map_err(|source| PtraceError::Interrupt {
            tid: self.tid,
            source,
        })
    }

    /// Waits for the stop caused by [`Tracee::interrupt`]. Signals that
    /// arrive first are delivered to the thread (as CRIU does), and the
    /// wait goes on.
    pub fn wait_stop(&mut self) -> Result<StopKind, PtraceError> {
        let tid = self.tid;
        for _ in 0..MAX_FORWARDED_SIGNALS {
            let status = waitpid(tid, Some(WaitPidFlag::__WALL))
                .map_err(|source| PtraceError::Wait { tid, source })?;
            match status {
                WaitStatus::PtraceEvent(_, sig, PTRACE_EVENT_STOP) => {
                    let kind = match sig {
                        Signal::SIGTRAP => StopKind::Interrupted,
                        other => StopKind::GroupStop(other),
                    };
                    debug!(tid = tid.as_raw(), ?kind, "thread stopped");
                    self.stop = Some(kind);
                    return Ok(kind);
                }
                WaitStatus::Stopped(_, signal) => {
                    debug!(tid = tid.as_raw(), ?signal, "forwarding signal before stop");
                    ptrace::cont(tid, signal).map_err(|source| PtraceError::Forward {
                        tid,
                        signal,
                        source,
                    })?;
                }
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                    self.attached = false;
                    return Err(PtraceError::Exited {
                        tid,
                        status: format!("{status:?}"),
                    });
                }
                other => {
                    // Other ptrace events need options we never set; let
                    // the thread go on and keep waiting for the interrupt.
                    debug!(tid = tid.as_raw(), ?other, "unexpected stop, continuing");
                    ptrace::cont(tid, None).map_err(|source| PtraceError::Forward {
                        tid,
                        signal: Signal::SIGTRAP,
                        source,
                    })?;
                }
            }
        }
        Err(PtraceError::NoStop { tid })
    }

    fn read_err(&self, what: &'static str) -> impl FnOnce(Errno) -> PtraceError {
        let tid = self.tid;
        move |source| PtraceError::Read { what, tid, source }
    }

    /// General registers, including `fs_base`, `gs_base` and `orig_rax`.
    pub fn regs(&self) -> Result<GeneralRegs, PtraceError> {
        ptrace::getregs(self.tid)
            .map(GeneralRegs::from)
            .map_err(self.read_err("registers"))
    }

    /// The legacy FXSAVE image (`NT_PRFPREG`, same data as `PTRACE_GETFPREGS`).
    pub fn fpregs(&self) -> Result<FpRegs, PtraceError> {
        ptrace::getregset::<ptrace::regset::NT_PRFPREG>(self.tid)
            .map(|f| FpRegs::from_libc(&f))
            .map_err(self.read_err("FPU registers"))
    }

    /// The full xstate image. Its length is what the kernel returns (the
    /// regset size, which equals `CPUID(0xD, 0).EBX`, see
    /// [`crate::cpu::CpuFeatures::xstate_size`]).
    pub fn xstate(&self) -> Result<Xstate, PtraceError> {
        let mut buf = vec![0u8; XSTATE_BUFFER_MAX];
        let len = getregset_xstate(self.tid, &mut buf).map_err(self.read_err("xstate"))?;
        if len < XSAVE_LEGACY_AND_HEADER {
            return Err(PtraceError::XstateTooSmall { tid: self.tid, len });
        }
        buf.truncate(len);
        Ok(Xstate { bytes: buf })
    }

    /// The thread's rseq registration.
    pub fn rseq_configuration(&self) -> Result<RseqConfiguration, PtraceError> {
        let raw = get_rseq_configuration(self.tid).map_err(self.read_err("rseq configuration"))?;
        Ok(RseqConfiguration {
            abi_pointer: raw.rseq_abi_pointer,
            abi_size: raw.rseq_abi_size,
            signature: raw.signature,
            flags: raw.flags,
        })
    }

    /// The thread's blocked-signal mask.
    pub fn sigmask(&self) -> Result<SigSet, PtraceError> {
        get_sigmask(self.tid)
            .map(SigSet)
            .map_err(self.read_err("signal mask"))
    }

    /// The thread's robust futex list head.
    pub fn robust_list(&self) -> Result<RobustList, PtraceError> {
        get_robust_list(self.tid)
            .map(|(head, len)| RobustList { head, len })
            .map_err(self.read_err("robust list"))
    }

    /// Overwrites the thread's general registers (`PTRACE_SETREGS`).
    pub fn set_regs(&self, regs: &GeneralRegs) -> Result<(), PtraceError> {
        ptrace::setregs(self.tid, (*regs).into()).map_err(|source| PtraceError::Write {
            what: "registers",
            tid: self.tid,
            source,
        })
    }

    /// The raw `struct sock_filter` array of the thread's seccomp filter
    /// `index` (0 = the most recently installed), or `None` past the oldest
    /// (`PTRACE_SECCOMP_GET_FILTER`, needs `CAP_SYS_ADMIN`).
    pub fn seccomp_filter(&self, index: u64) -> Result<Option<Vec<u8>>, PtraceError> {
        const SOCK_FILTER: usize = 8;
        let count = match seccomp_get_filter(self.tid, index, None) {
            Ok(n) => n,
            // ENOENT: past the oldest filter; EINVAL: no filter at all.
            Err(Errno::ENOENT) | Err(Errno::EINVAL) => return Ok(None),
            Err(e) => return Err(self.read_err("seccomp filter")(e)),
        };
        let mut buf = vec![0u8; count * SOCK_FILTER];
        let got = seccomp_get_filter(self.tid, index, Some(&mut buf))
            .map_err(self.read_err("seccomp filter"))?;
        buf.truncate(got * SOCK_FILTER);
        Ok(Some(buf))
    }

    /// Overwrites the thread's full extended state
    /// (`PTRACE_SETREGSET(NT_X86_XSTATE)`). The kernel validates the image
    /// (header, `XSTATE_BV` against the enabled features) and refuses a bad
    /// one with `EINVAL`.
    pub fn set_xstate(&self, xstate: &Xstate) -> Result<(), PtraceError> {
        setregset_xstate(self.tid, &xstate.bytes).map_err(|source| PtraceError::Write {
            what: "xstate",
            tid: self.tid,
            source,
        })
    }

    /// Overwrites the thread's blocked-signal mask (`PTRACE_SETSIGMASK`).
    pub fn set_sigmask(&self, mask: SigSet) -> Result<(), PtraceError> {
        set_sigmask(self.tid, mask.0).map_err(|source| PtraceError::Write {
            what: "signal mask",
            tid: self.tid,
            source,
        })
    }

    /// Reads the two bytes at `addr` with `PTRACE_PEEKDATA` (aligned words,
    /// so a read never crosses into a page the process has not mapped).
    pub fn peek_bytes2(&self, addr: u64) -> Result<[u8; 2], PtraceError> {
        let word = |a: u64| -> Result<[u8; 8], PtraceError> {
            ptrace::read(self.tid, a as ptrace::AddressType)
                .map(|w| w.to_ne_bytes())
                .map_err(self.read_err("memory"))
        };
        let base = addr & !7;
        let off = (addr - base) as usize;
        let first = word(base)?;
        if off < 7 {
            Ok([first[off], first[off + 1]])
        } else {
            let second = word(base + 8)?;
            Ok([first[7], second[0]])
        }
    }

    /// The address of the `syscall` instruction the thread is stopped
    /// after (`rip - 2`), checked to hold `0f 05`. Threads stopped by
    /// [`freeze`] inside a system call always have one; a thread stopped in
    /// user code does not, and needs another instruction (e.g. one in the
    /// vDSO) for [`Tracee::remote_syscall_at`].
    pub fn syscall_insn_before_rip(&self) -> Result<u64, PtraceError> {
        let regs = self.regs()?;
        let addr = regs.rip.wrapping_sub(2);
        let found = self.peek_bytes2(addr)?;
        if found != SYSCALL_INSN {
            return Err(PtraceError::NoSyscallInstruction {
                tid: self.tid,
                addr,
                found,
            });
        }
        Ok(addr)
    }

    /// Signals that arrived during remote syscalls and are held until
    /// detach (when they are re-sent to the thread).
    pub fn held_signals(&self) -> &[Signal] {
        &self.held
    }

    /// Executes system call `nr` with `args` (`rdi, rsi, rdx, r10, r8, r9`)
    /// *in* this stopped thread, using the `syscall` instruction it is
    /// stopped after ([`Tracee::syscall_insn_before_rip`]), and returns
    /// the raw result (`-errno` on failure).
    ///
    /// See [`Tracee::remote_syscall_at`] for the invariants.
    pub fn remote_syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64, PtraceError> {
        self.check_interrupted()?;
        let insn = self.syscall_insn_before_rip()?;
        self.remote_syscall_at(insn, nr, args)
    }

    /// Executes system call `nr` in this stopped thread by pointing `rip`
    /// at the `syscall` instruction at `insn` (checked to be `0f 05`) and
    /// single-stepping over it; returns the raw `rax` (`-errno` on failure).
    ///
    /// Invariants (what makes this safe for the tracee):
    ///
    /// * The thread must be in our interrupt stop ([`StopKind::Interrupted`]);
    ///   a group-stopped thread is refused.
    /// * The registers are read first and written back exactly, whatever
    ///   happens after they were changed (also on error). That includes
    ///   `orig_rax` and `rax` as the interrupt stop left them
    ///   (`-ERESTARTSYS` etc., *not* the rewound form), so on detach the
    ///   kernel's own restart rule still re-executes an interrupted call.
    ///   While our call runs, `orig_rax = -1` keeps the kernel from applying
    ///   that rule to it on the way out of the stop.
    /// * No tracee memory is written by this function; the syscall itself
    ///   writes only what its arguments point at (the caller's scratch
    ///   area, see [`crate::remote`]).
    /// * The call must return to the instruction after `syscall` and not
    ///   block: `rt_sigreturn`, `execve`, `exit`, `clone`, or a blocking
    ///   `read` are not for this. A stop anywhere else is
    ///   [`PtraceError::RemoteUnexpected`] (registers restored).
    /// * A signal that arrives before the call ran shows up as a
    ///   signal-delivery stop with `rip == insn`; it is held back (not
    ///   delivered with our temporary registers) and re-sent to the thread
    ///   with `tkill` at detach, so it is not lost (its `siginfo` becomes a
    ///   `SI_TKILL` one). After 16 such signals the
    ///   call gives up with [`PtraceError::RemoteStarved`].
    /// * The thread's extended (FPU/vector) state is untouched: the kernel
    ///   saves and restores it around every syscall.
    /// * A seccomp filter in the tracee applies to the call.
    pub fn remote_syscall_at(
        &mut self,
        insn: u64,
        nr: i64,
        args: [u64; 6],
    ) -> Result<i64, PtraceError> {
        self.check_interrupted()?;
        let found = self.peek_bytes2(insn)?;
        if found != SYSCALL_INSN {
            return Err(PtraceError::NoSyscallInstruction {
                tid: self.tid,
                addr: insn,
                found,
            });
        }
        let saved = self.regs()?;
        let mut call = saved;
        call.rip = insn;
        call.rax = nr as u64;
        call.orig_rax = u64::MAX;
        call.rdi = args[0];
        call.rsi = args[1];
        call.rdx = args[2];
        call.r10 = args[3];
        call.r8 = args[4];
        call.r9 = args[5];
        self.set_regs(&call)?;
        let result = self.step_over_syscall(insn, nr);
        // Put everything back even when the step failed; a thread that is
        // gone has nothing to restore.
        let restored = if self.attached {
            self.set_regs(&saved)
        } else {
            Ok(())
        };
        let ret = result?;
        restored?;
        Ok(ret)
    }

    /// Refuses anything but our own interrupt stop.
    fn check_interrupted(&self) -> Result<(), PtraceError> {
        if self.stop == Some(StopKind::Interrupted) {
            Ok(())
        } else {
            Err(PtraceError::NotInterrupted {
                tid: self.tid,
                stop: self.stop,
            })
        }
    }

    /// Single-steps until the `syscall` at `insn` has run; returns `rax`.
    fn step_over_syscall(&mut self, insn: u64, nr: i64) -> Result<i64, PtraceError> {
        let tid = self.tid;
        let after = insn.wrapping_add(2);
        for _ in 0..=MAX_REMOTE_SIGNALS {
            ptrace::step(tid, None).map_err(|source| PtraceError::Step { tid, source })?;
            let status = waitpid(tid, Some(WaitPidFlag::__WALL))
                .map_err(|source| PtraceError::Wait { tid, source })?;
            let sig = match status {
                WaitStatus::Stopped(_, sig) => Some(sig),
                // A stray interrupt or job-control stop: step again.
                WaitStatus::PtraceEvent(_, _, PTRACE_EVENT_STOP) => None,
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                    self.attached = false;
                    return Err(PtraceError::Exited {
                        tid,
                        status: format!("{status:?}"),
                    });
                }
                other => {
                    let rip = self.regs().map(|r| r.rip).unwrap_or(0);
                    return Err(PtraceError::RemoteUnexpected {
                        tid,
                        nr,
                        status: format!("{other:?}"),
                        rip,
                    });
                }
            };
            let regs = self.regs()?;
            if regs.rip == after {
                // Our call ran. The single-step trap (a SIGTRAP, reported
                // before any other signal because it is synchronous) is
                // ours; any other signal is held for later.
                if let Some(s) = sig.filter(|s| *s != Signal::SIGTRAP) {
                    self.held.push(s);
                }
                return Ok(regs.rax as i64);
            }
            if regs.rip != insn {
                return Err(PtraceError::RemoteUnexpected {
                    tid,
                    nr,
                    status: format!("{status:?}"),
                    rip: regs.rip,
                });
            }
            // Not run yet: a signal got in first. Hold it, step again.
            if let Some(s) = sig {
                debug!(
                    tid = tid.as_raw(),
                    ?s,
                    "holding signal during remote syscall"
                );
                self.held.push(s);
            }
        }
        Err(PtraceError::RemoteStarved {
            tid,
            nr,
            held: self.held.len(),
        })
    }

    /// Runs the thread from `regs` until it executes an `int3` (a `SIGTRAP`
    /// stop) and returns the registers there. For code the restorer placed
    /// in the process; any other stop is [`PtraceError::RemoteUnexpected`].
    /// `nr` only labels errors. Threads the code creates (with
    /// `PTRACE_O_TRACECLONE` set) are returned, still to be
    /// [`Tracee::adopt`]ed.
    pub fn run_until_trap(
        &mut self,
        regs: &GeneralRegs,
        nr: i64,
    ) -> Result<(GeneralRegs, Vec<Pid>), PtraceError> {
        let tid = self.tid;
        self.set_regs(regs)?;
        ptrace::cont(tid, None).map_err(|source| PtraceError::Step { tid, source })?;
        let mut clones = Vec::new();
        loop {
            let status = waitpid(tid, Some(WaitPidFlag::__WALL))
                .map_err(|source| PtraceError::Wait { tid, source })?;
            match status {
                WaitStatus::Stopped(_, Signal::SIGTRAP) => return Ok((self.regs()?, clones)),
                WaitStatus::PtraceEvent(_, _, PTRACE_EVENT_CLONE) => {
                    let new = ptrace::getevent(tid).map_err(self.read_err("clone event"))?;
                    clones.push(Pid::from_raw(new as i32));
                    ptrace::cont(tid, None).map_err(|source| PtraceError::Step { tid, source })?;
                }
                // A stray interrupt or job-control stop: go on.
                WaitStatus::PtraceEvent(_, _, PTRACE_EVENT_STOP) => {
                    ptrace::cont(tid, None).map_err(|source| PtraceError::Step { tid, source })?;
                }
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                    self.attached = false;
                    return Err(PtraceError::Exited {
                        tid,
                        status: format!("{status:?}"),
                    });
                }
                other => {
                    let rip = self.regs().map(|r| r.rip).unwrap_or(0);
                    return Err(PtraceError::RemoteUnexpected {
                        tid,
                        nr,
                        status: format!("{other:?}"),
                        rip,
                    });
                }
            }
        }
    }

    /// Takes over a thread auto-attached by `PTRACE_O_TRACECLONE`: waits
    /// for its initial stop, after which it is held like an interrupted one.
    pub fn adopt(tid: Pid) -> Result<Self, PtraceError> {
        let mut t = Self {
            tid,
            attached: true,
            stop: None,
            held: Vec::new(),
            _tracer_thread: PhantomData,
        };
        loop {
            let status = waitpid(tid, Some(WaitPidFlag::__WALL))
                .map_err(|source| PtraceError::Wait { tid, source })?;
            match status {
                WaitStatus::PtraceEvent(_, _, PTRACE_EVENT_STOP)
                | WaitStatus::Stopped(_, Signal::SIGSTOP) => {
                    t.stop = Some(StopKind::Interrupted);
                    return Ok(t);
                }
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                    t.attached = false;
                    return Err(PtraceError::Exited {
                        tid,
                        status: format!("{status:?}"),
                    });
                }
                _ => {
                    ptrace::cont(tid, None).map_err(|source| PtraceError::Step { tid, source })?;
                }
            }
        }
    }

    /// Collects the exit of this thread once its process was killed
    /// (`SIGKILL` sent by the caller), without detaching. A traced thread
    /// that dies stays a zombie until its tracer waits for it, and a
    /// thread group's leader cannot be reaped before its other threads
    /// are: so the tracer reaps every non-leader thread first, then the
    /// leader (whose real parent, if another process, then reaps it).
    pub fn reap_killed(mut self) {
        self.attached = false;
        loop {
            match waitpid(self.tid, Some(WaitPidFlag::__WALL)) {
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => return,
                // A stop reported before the kill took effect: the
                // pending SIGKILL ends it.
                Ok(_) | Err(Errno::EINTR) => continue,
                // Not ours to wait for (any more).
                Err(_) => return,
            }
        }
    }

    /// Detaches, letting the thread continue where it stopped; an
    /// interrupted syscall restarts as the kernel decides.
    pub fn detach(mut self) -> Result<(), PtraceError> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<(), PtraceError> {
        if !self.attached {
            return Ok(());
        }
        self.attached = false;
        // Signals held back by remote syscalls go back into the thread's
        // queue now; the thread is still stopped, so they stay pending
        // and it takes them as soon as it runs again.
        for sig in self.held.drain(..) {
            if let Err(e) = tkill(self.tid, sig) {
                warn!(tid = self.tid.as_raw(), ?sig, error = %e, "re-sending held signal failed");
            }
        }
        match ptrace::detach(self.tid, None) {
            Ok(()) => Ok(()),
            // Already gone: nothing to restore.
            Err(Errno::ESRCH) => Ok(()),
            Err(source) => Err(PtraceError::Detach {
                tid: self.tid,
                source,
            }),
        }
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if let Err(e) = self.detach_inner() {
            warn!(error = %e, "detach on drop failed");
        }
    }
}

/// `PTRACE_GETREGSET(NT_X86_XSTATE)` into `buf`; returns the bytes written.
fn getregset_xstate(tid: Pid, buf: &mut [u8]) -> Result<usize, Errno> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` points at `buf`, valid and writable for `buf.len()`
    // bytes for the whole call; the kernel writes at most `iov_len` bytes
    // there and stores the written length back into `iov`, which lives on
    // this stack frame. The `addr` argument is the regset number by value.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            tid.as_raw(),
            NT_X86_XSTATE as usize as *mut libc::c_void,
            &mut iov as *mut libc::iovec,
        )
    };
    Errno::result(ret)?;
    Ok(iov.iov_len.min(buf.len()))
}

/// `PTRACE_SECCOMP_GET_FILTER`: with `buf`, copies filter `index` into it
/// (which must hold the whole program); returns its instruction count.
fn seccomp_get_filter(tid: Pid, index: u64, buf: Option<&mut [u8]>) -> Result<usize, Errno> {
    const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
    let data = buf.map_or(std::ptr::null_mut(), |b| b.as_mut_ptr());
    // SAFETY: with a null `data` the kernel only returns the instruction
    // count; otherwise `data` points at a buffer the caller sized from that
    // count (8 bytes per instruction), and the filter of a stopped tracee
    // cannot change in between. `addr` is the filter index by value.
    let ret = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            tid.as_raw(),
            index as usize as *mut libc::c_void,
            data,
        )
    };
    Errno::result(ret).map(|n| n as usize)
}

/// `PTRACE_SETREGSET(NT_X86_XSTATE)`.
fn setregset_xstate(tid: Pid, buf: &[u8]) -> Result<(), Errno> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, valid for `buf.len()` bytes for the
    // whole call; for a SET request the kernel only reads through it (the
    // `*mut` is the iovec ABI, nothing is written to `buf`).
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_SETREGSET,
            tid.as_raw(),
            NT_X86_XSTATE as usize as *mut libc::c_void,
            &mut iov as *mut libc::iovec,
        )
    };
    Errno::result(ret).map(drop)
}

/// `PTRACE_SETSIGMASK`.
fn set_sigmask(tid: Pid, mask: u64) -> Result<(), Errno> {
    // SAFETY: the kernel requires `addr` == sizeof(sigset_t) == 8 and reads
    // exactly 8 bytes from `data`, which points at `mask`.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_SETSIGMASK,
            tid.as_raw(),
            std::mem::size_of::<u64>(),
            &mask as *const u64,
        )
    };
    Errno::result(ret).map(drop)
}

/// `PTRACE_GET_RSEQ_CONFIGURATION`.
fn get_rseq_configuration(tid: Pid) -> Result<RawRseqConfiguration, Errno> {
    let mut conf = RawRseqConfiguration::default();
    // SAFETY: the kernel writes at most `addr` = size_of::<conf>() bytes to
    // `data`, which points at `conf`, a properly sized `repr(C)` struct that
    // outlives the call.
    let ret = unsafe {
        libc::ptrace(
            PTRACE_GET_RSEQ_CONFIGURATION,
            tid.as_raw(),
            std::mem::size_of::<RawRseqConfiguration>(),
            &mut conf as *mut RawRseqConfiguration,
        )
    };
    Errno::result(ret)?;
    Ok(conf)
}

/// `PTRACE_GETSIGMASK`.
fn get_sigmask(tid: Pid) -> Result<u64, Errno> {
    let mut mask: u64 = 0;
    // SAFETY: the kernel requires `addr` == sizeof(sigset_t) == 8 and writes
    // exactly 8 bytes to `data`, which points at `mask`.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGMASK,
            tid.as_raw(),
            std::mem::size_of::<u64>(),
            &mut mask as *mut u64,
        )
    };
    Errno::result(ret)?;
    Ok(mask)
}

/// `get_robust_list(2)` for another thread (needs `PTRACE_MODE_READ`).
fn get_robust_list(tid: Pid) -> Result<(u64, u64), Errno> {
    let mut head: usize = 0;
    let mut len: libc::size_t = 0;
    // SAFETY: the syscall writes one pointer-sized value to each of the two
    // out-parameters, both valid local variables of the right size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            libc::c_long::from(tid.as_raw()),
            &mut head as *mut usize,
            &mut len as *mut libc::size_t,
        )
    };
    Errno::result(ret)?;
    Ok((head as u64, len as u64))
}

/// `tkill(2)`: queues `sig` for thread `tid`.
fn tkill(tid: Pid, sig: Signal) -> Result<(), Errno> {
    // SAFETY: `tkill` takes two integers by value and touches no memory of
    // this process.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_tkill,
            libc::c_long::from(tid.as_raw()),
            libc::c_long::from(sig as i32),
        )
    };
    Errno::result(ret).map(drop)
}

/// Every thread of one process, stopped. Dropping it detaches them all.
#[derive(Debug)]
pub struct Frozen {
    pid: Pid,
    threads: Vec<Tracee>,
}

impl Frozen {
    /// The process id.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The stopped threads, the thread-group leader first, then by tid.
    pub fn threads(&self) -> &[Tracee] {
        &self.threads
    }

    /// The stopped threads, mutable (for [`Tracee::remote_syscall`]).
    pub fn threads_mut(&mut self) -> &mut [Tracee] {
        &mut self.threads
    }

    /// The stopped thread `tid`, if it belongs to the process.
    pub fn thread(&self, tid: Pid) -> Option<&Tracee> {
        self.threads.iter().find(|t| t.tid == tid)
    }

    /// Detaches every thread; returns the first failure (after trying all).
    pub fn thaw(mut self) -> Result<(), FreezeError> {
        let mut first = None;
        for mut t in self.threads.drain(..) {
            if let Err(e) = t.detach_inner() {
                first.get_or_insert(e);
            }
        }
        match first {
            None => Ok(()),
            Some(source) => Err(FreezeError::Thaw {
                pid: self.pid,
                source,
            }),
        }
    }
}

/// Stops every thread of process `pid` with `PTRACE_SEIZE` +
/// `PTRACE_INTERRUPT` and returns them held in a [`Frozen`].
///
/// A thread can create another until it is stopped, so the thread list is
/// re-read after each round of stops until a round finds no new thread;
/// once all listed threads are stopped, none can be created. Threads that
/// exit before they are seized, or are already exiting (the kernel refuses
/// to attach to those with `EPERM`), are skipped: they have no user state.
pub fn freeze(pid: Pid) -> Result<Frozen, FreezeError> {
    let list_err = |source| FreezeError::ListThreads { pid, source };
    let status = proc::read_status(pid).map_err(list_err)?;
    if status.tgid != pid.as_raw() {
        return Err(FreezeError::NotAProcess {
            pid,
            tgid: status.tgid,
        });
    }

    let mut stopped: BTreeMap<Pid, Tracee> = BTreeMap::new();
    // Threads found exiting; they vanish from the list once reaped.
    let mut exiting: BTreeSet<Pid> = BTreeSet::new();
    for round in 0..MAX_FREEZE_ROUNDS {
        let tids = proc::task_ids(pid).map_err(list_err)?;
        let new: Vec<Pid> = tids
            .into_iter()
            .filter(|t| !stopped.contains_key(t) && !exiting.contains(t))
            .collect();
        if new.is_empty() && round > 0 {
            let mut threads: Vec<Tracee> = Vec::with_capacity(stopped.len());
            if let Some(leader) = stopped.remove(&pid) {
                threads.push(leader);
            }
            threads.extend(stopped.into_values());
            debug!(
                pid = pid.as_raw(),
                threads = threads.len(),
                rounds = round,
                "process frozen"
            );
            return Ok(Frozen { pid, threads });
        }

        // Seize and interrupt the whole round first, then wait: the stops
        // happen in parallel instead of one scheduler round-trip each.
        let mut pending = Vec::with_capacity(new.len());
        for tid in new {
            match Tracee::seize(tid) {
                Ok(t) => {
                    match t.interrupt() {
                        Ok(()) => pending.push(t),
                        Err(PtraceError::Interrupt {
                            source: Errno::ESRCH,
                            ..
                        }) => continue,
                        Err(source) => return Err(FreezeError::Thread { tid, source }),
                    };
                }
                // The thread exited between listing and seizing.
                Err(PtraceError::Seize {
                    source: Errno::ESRCH,
                    ..
                }) => continue,
                // The kernel refuses to attach to a thread that is already
                // exiting (its exit_state is set): it has no user state
                // left, so leave it out. Any other EPERM is real.
                Err(PtraceError::Seize {
                    source: Errno::EPERM,
                    ..
                }) if tid != pid && is_exiting(tid) => {
                    debug!(tid = tid.as_raw(), "skipping exiting thread");
                    exiting.insert(tid);
                    continue;
                }
                Err(source) => return Err(FreezeError::Thread { tid, source }),
            }
        }
        for mut t in pending {
            let tid = t.tid;
            match t.wait_stop() {
                Ok(_) => {
                    stopped.insert(tid, t);
                }
                Err(PtraceError::Exited { .. }) => continue,
                Err(source) => return Err(FreezeError::Thread { tid, source }),
            }
        }
    }
    Err(FreezeError::Unstable {
        pid,
        rounds: MAX_FREEZE_ROUNDS,
    })
}

/// Whether thread `tid` is gone or exiting (`Z` or `X` in its `stat`).
fn is_exiting(tid: Pid) -> bool {
    match proc::read_stat(tid) {
        Ok(stat) => matches!(stat.state, 'Z' | 'X'),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(orig_rax: i64, rax: i64, rip: u64) -> GeneralRegs {
        GeneralRegs {
            orig_rax: orig_rax as u64,
            rax: rax as u64,
            rip,
            ..GeneralRegs::default()
        }
    }

    #[test]
    fn restart_decoding() {
        let r = regs(0, -ERESTARTSYS, 0x1002);
        assert_eq!(
            r.syscall_state(),
            SyscallState::Restart {
                nr: 0,
                code: -ERESTARTSYS
            }
        );
        let resumed = r.resume_regs();
        assert_eq!(
            (resumed.rip, resumed.rax, resumed.orig_rax),
            (0x1000, 0, u64::MAX)
        );

        let r = regs(230, -ERESTART_RESTARTBLOCK, 0x2002);
        assert_eq!(r.syscall_state(), SyscallState::RestartBlock { nr: 230 });
        let resumed = r.resume_regs();
        assert_eq!(resumed.rip, 0x2002);
        assert_eq!(resumed.rax as i64, -i64::from(libc::EINTR));

        let r = regs(1, 5, 0x3000);
        assert_eq!(r.syscall_state(), SyscallState::Returned { nr: 1, ret: 5 });
        assert_eq!(r.resume_regs().rip, 0x3000);

        let r = regs(-1, 42, 0x4000);
        assert_eq!(r.syscall_state(), SyscallState::NotInSyscall);
        assert_eq!(r.resume_regs().rax, 42);
    }

    #[test]
    fn sigset_bits() {
        let s = SigSet(1 << (libc::SIGTERM - 1));
        assert!(s.contains(libc::SIGTERM));
        assert!(!s.contains(libc::SIGINT));
        assert!(!s.contains(0) && !s.contains(65));
    }
}
