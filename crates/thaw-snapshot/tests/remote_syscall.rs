//! Remote syscalls in frozen threads: reading `clear_child_tid`,
//! sigaltstack, signal dispositions and `brk` from live Python and Node.js
//! processes, checking them against what the processes set or what glibc
//! implies, and checking the processes run on unharmed afterwards.

#[macro_use]
mod common;

use std::time::Instant;

use common::{hex_addr, node, python, Interp};
use nix::sys::signal::{kill, Signal};
use thaw_snapshot::memory::ProcessMemory;
use thaw_snapshot::proc::{self, MappingKind};
use thaw_snapshot::ptrace::{freeze, PtraceError, SyscallState};
use thaw_snapshot::remote::{self, ProcessState, ThreadState};
use thaw_snapshot::PAGE_SIZE;

/// glibc 2.36: `struct pthread.tid` sits at `fs_base + 0x2d0`, and glibc
/// points `clear_child_tid` at it (measured, see docs/snapshot-engine.md).
const GLIBC_TID_OFFSET: u64 = 0x2d0;
/// `SA_RESTORER` (x86 kernel ABI) and `SA_ONSTACK`.
const SA_RESTORER: u64 = 0x0400_0000;
const SA_ONSTACK: u64 = libc::SA_ONSTACK as u64;
/// glibc's `__restore_rt` on x86_64: `mov $15, %rax; syscall`.
const RESTORE_RT: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];
/// Remote getpid calls timed per test.
const TIMED_CALLS: u32 = 200;

const PY_SCRIPT: &str = r#"
import ctypes, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
class stack_t(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]
SIZE = 65536
altstack = ctypes.create_string_buffer(SIZE)
st = stack_t(ctypes.addressof(altstack), 0, SIZE)
if libc.sigaltstack(ctypes.byref(st), None) != 0:
    raise OSError(ctypes.get_errno(), "sigaltstack")
signal.signal(signal.SIGUSR1, lambda s, f: print("usr1", flush=True))
print(f"ready {ctypes.addressof(altstack):#x} {SIZE}", flush=True)
for line in sys.stdin:
    print(f"pong {line.strip()}", flush=True)
"#;

const NODE_SCRIPT: &str = r#"
const rl = require('readline').createInterface({ input: process.stdin });
rl.on('line', (l) => console.log(`echo ${l}`));
setInterval(() => {}, 1e6);
console.log(`ready ${process.pid}`);
"#;

fn heap_end(pid: nix::unistd::Pid) -> (u64, u64) {
    let maps = proc::read_maps(pid).expect("maps");
    let heap = maps
        .iter()
        .find(|m| m.kind == MappingKind::Heap)
        .expect("[heap]");
    (heap.start, heap.end)
}

fn check_glibc_thread(mem: &ProcessMemory, fs_base: u64, t: &ThreadState) {
    assert_eq!(
        t.clear_child_tid,
        fs_base + GLIBC_TID_OFFSET,
        "thread {}: clear_child_tid is &pthread.tid",
        t.tid
    );
    let mut tid = [0u8; 4];
    mem.read(t.clear_child_tid, &mut tid).expect("read tid");
    assert_eq!(i32::from_ne_bytes(tid), t.tid, "the tid is stored there");
}

fn check_restorer(mem: &ProcessMemory, pid: nix::unistd::Pid, restorer: u64) {
    let mut code = [0u8; 9];
    mem.read(restorer, &mut code).expect("read restorer");
    assert_eq!(code, RESTORE_RT, "sa_restorer is __restore_rt");
    let maps = proc::read_maps(pid).expect("maps");
    let m = maps.iter().find(|m| m.contains(restorer)).expect("mapped");
    let in_libc = match &m.kind {
        MappingKind::File { path, .. } => path.to_string_lossy().contains("libc.so"),
        _ => false,
    };
    assert!(in_libc, "__restore_rt lives in libc, not in {:?}", m.kind);
}

fn check_common_signals(mem: &ProcessMemory, pid: nix::unistd::Pid, p: &ProcessState) {
    assert_eq!(p.signals.actions.len(), 64);
    let pipe = p.signals.get(libc::SIGPIPE).expect("SIGPIPE");
    assert!(pipe.is_ignored(), "SIGPIPE is ignored: {pipe:?}");
    assert!(p.signals.get(libc::SIGKILL).expect("SIGKILL").is_default());
    let int = p.signals.get(libc::SIGINT).expect("SIGINT");
    assert!(!int.is_default() && !int.is_ignored(), "SIGINT handled");
    assert_ne!(int.flags & SA_RESTORER, 0, "SA_RESTORER set: {int:?}");
    check_restorer(mem, pid, int.restorer);
    let (heap_start, heap_end) = heap_end(pid);
    assert!(p.brk >= heap_start, "brk {:#x} inside [heap]", p.brk);
    assert_eq!(
        p.brk.div_ceil(PAGE_SIZE) * PAGE_SIZE,
        heap_end,
        "[heap] ends at brk rounded up to a page"
    );
}

#[test]
fn python_state_by_remote_syscalls() {
    if let Err(why) = common::can_ptrace() {
        skip!("{why}");
    }
    let Some(py) = python() else {
        skip!("python3 not found");
    };
    let mut child = Interp::spawn(&py, &["-c", PY_SCRIPT]);
    let line = child.line();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((f.len(), f[0]), (3, "ready"), "ready line {line:?}");
    let (alt_sp, alt_size) = (hex_addr(f[1]), f[2].parse::<u64>().expect("size"));
    let pid = child.pid();
    assert!(common::wait_in_syscall(pid, libc::SYS_read), "in read(0)");

    let mut frozen = freeze(pid).expect("freeze python");
    let mem = ProcessMemory::open(pid).expect("open memory");
    let t = &mut frozen.threads_mut()[0];
    let before = t.regs().expect("regs");
    assert!(matches!(
        before.syscall_state(),
        SyscallState::Restart { nr: 0, .. }
    ));
    let mut stack_before = vec![0u8; 1024];
    mem.read(before.rsp - 1024, &mut stack_before)
        .expect("read stack");

    // Raw calls, timed: the thread's own syscall instruction and the vDSO's.
    let started = Instant::now();
    for _ in 0..TIMED_CALLS {
        let got = t.remote_syscall(libc::SYS_getpid, [0; 6]).expect("getpid");
        assert_eq!(got, i64::from(pid.as_raw()));
    }
    let per_call = started.elapsed() / TIMED_CALLS;
    let vdso_insn = remote::find_vdso_syscall(pid)
        .expect("scan vdso")
        .expect("the vDSO has a syscall instruction");
    let got = t
        .remote_syscall_at(vdso_insn, libc::SYS_gettid, [0; 6])
        .expect("gettid via the vDSO");
    assert_eq!(got, i64::from(pid.as_raw()));
    assert!(matches!(
        t.remote_syscall_at(vdso_insn + 1, libc::SYS_getpid, [0; 6]),
        Err(PtraceError::NoSyscallInstruction { .. })
    ));
    // Errors come back as -errno, registers still restored.
    let bad = t
        .remote_syscall(libc::SYS_rt_sigaction, [65, 0, 0, 8, 0, 0])
        .expect("rt_sigaction(65)");
    assert_eq!(bad, -i64::from(libc::EINVAL));

    // A signal that arrives while frozen is held during the calls and
    // delivered after detach, not lost.
    kill(pid, Signal::SIGUSR1).expect("send SIGUSR1");
    let started = Instant::now();
    let (process, threads) = remote::capture_frozen(&mut frozen).expect("capture");
    let capture_took = started.elapsed();
    let t = &frozen.threads()[0];
    assert_eq!(t.held_signals(), &[Signal::SIGUSR1]);
    eprintln!(
        "python: remote getpid {per_call:?}/call; capture (brk + 64 rt_sigaction + prctl + sigaltstack) {capture_took:?}; brk {:#x}; {:?}",
        process.brk, threads[0]
    );

    // What the process set and what glibc implies.
    assert_eq!(threads.len(), 1);
    check_glibc_thread(&mem, before.fs_base, &threads[0]);
    let alt = threads[0].sigaltstack;
    assert_eq!((alt.sp, alt.size, alt.flags), (alt_sp, alt_size, 0));
    check_common_signals(&mem, pid, &process);
    let int = process.signals.get(libc::SIGINT).expect("SIGINT");
    assert_ne!(int.flags & SA_ONSTACK, 0, "CPython handlers use SA_ONSTACK");
    let usr1 = process.signals.get(libc::SIGUSR1).expect("SIGUSR1");
    assert_eq!(usr1.handler, int.handler, "one C handler for every signal");

    // Nothing changed: registers exactly, the stack below rsp byte for byte.
    let after = t.regs().expect("regs");
    assert_eq!(after, before, "registers restored exactly");
    let mut stack_after = vec![0u8; 1024];
    mem.read(before.rsp - 1024, &mut stack_after)
        .expect("read stack");
    assert_eq!(stack_after, stack_before, "scratch area restored");
    let text = serde_json::to_string(&(&process, &threads)).expect("serialize");
    let back: (ProcessState, Vec<ThreadState>) = serde_json::from_str(&text).expect("parse");
    assert_eq!(back, (process, threads));

    frozen.thaw().expect("thaw");
    assert_eq!(child.line(), "usr1", "the held SIGUSR1 was delivered");
    child.send("ping");
    assert_eq!(child.line(), "pong ping", "read restarted after detach");
}

#[test]
fn node_threads_by_remote_syscalls() {
    if let Err(why) = common::can_ptrace() {
        skip!("{why}");
    }
    let Some(node) = node() else {
        skip!("node not found");
    };
    let mut child = Interp::spawn(&node, &["-e", NODE_SCRIPT]);
    assert!(child.line().starts_with("ready"));
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pid = child.pid();

    let mut frozen = freeze(pid).expect("freeze node");
    let mem = ProcessMemory::open(pid).expect("open memory");
    let before: Vec<_> = frozen
        .threads()
        .iter()
        .map(|t| t.regs().expect("regs"))
        .collect();
    let started = Instant::now();
    let (process, threads) = remote::capture_frozen(&mut frozen).expect("capture");
    let took = started.elapsed();
    eprintln!(
        "node: {} threads captured in {took:?}; brk {:#x}",
        threads.len(),
        process.brk
    );
    assert_eq!(threads.len(), before.len());
    for ((t, regs), tracee) in threads.iter().zip(&before).zip(frozen.threads()) {
        eprintln!(
            "  tid {}: clear_child_tid fs+{:#x}, altstack disabled {}, {:?}",
            t.tid,
            t.clear_child_tid.wrapping_sub(regs.fs_base),
            t.sigaltstack.is_disabled(),
            regs.syscall_state()
        );
        check_glibc_thread(&mem, regs.fs_base, t);
        assert_eq!(tracee.regs().expect("regs"), *regs, "registers restored");
        assert!(tracee.held_signals().is_empty());
    }
    check_common_signals(&mem, pid, &process);

    frozen.thaw().expect("thaw");
    child.send("hello");
    assert_eq!(child.line(), "echo hello", "node runs on after detach");
}

#[test]
fn group_stopped_thread_is_refused() {
    if let Err(why) = common::can_ptrace() {
        skip!("{why}");
    }
    let mut child = std::process::Command::new("/bin/sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    for _ in 0..500 {
        if common::thread_state(pid, pid) == 'T' {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let mut frozen = freeze(pid).expect("freeze stopped sleep");
    let t = &mut frozen.threads_mut()[0];
    let got = t.remote_syscall(libc::SYS_getpid, [0; 6]);
    assert!(
        matches!(got, Err(PtraceError::NotInterrupted { .. })),
        "{got:?} ({:?})",
        t.stop_kind()
    );
    drop(frozen);
    let _ = child.kill();
    let _ = child.wait();
}
