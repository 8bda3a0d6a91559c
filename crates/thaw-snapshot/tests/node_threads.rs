//! Freezing an idle, multi-threaded Node.js process and reading every
//! thread's state: registers, xstate, rseq, signal mask, robust list,
//! syscall state; then detaching and checking it still serves requests.

#[macro_use]
mod common;

use common::{node, Interp};
use thaw_snapshot::cpu::CpuFeatures;
use thaw_snapshot::memory::ProcessMemory;
use thaw_snapshot::proc;
use thaw_snapshot::ptrace::{freeze, FreezeError, StopKind, SyscallState};

const NODE_SCRIPT: &str = r#"
const rl = require('readline').createInterface({ input: process.stdin });
const squares = Array.from({ length: 1000 }, (_, i) => i * i);
let served = 0;
rl.on('line', (l) => { served++; console.log(`echo ${l} ${served} ${squares[999]}`); });
setInterval(() => {}, 1e6); // a pending timer, as an idle runtime has
console.log(`ready ${process.pid}`);
"#;

/// glibc's `RSEQ_SIG` on x86.
const GLIBC_RSEQ_SIG: u32 = 0x5305_3053;

#[test]
fn freeze_node_and_read_every_thread() {
    if let Err(why) = common::can_ptrace() {
        skip!("{why}");
    }
    let Some(node) = node() else {
        skip!("node not found");
    };
    let cpu = CpuFeatures::host().expect("host CPU features");
    let mut child = Interp::spawn(&node, &["-e", NODE_SCRIPT]);
    assert!(child.line().starts_with("ready"));
    // Let the V8 platform workers park themselves.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pid = child.pid();

    let frozen = freeze(pid).expect("freeze node");
    let threads = frozen.threads();
    let listed = proc::task_ids(pid).expect("task list");
    assert_eq!(threads.len(), listed.len(), "every listed thread is frozen");
    assert!(threads.len() >= 2, "node has several threads even idle");
    assert_eq!(threads[0].tid(), pid, "leader first");
    eprintln!("node: {} threads frozen", threads.len());

    let mem = ProcessMemory::open(pid).expect("open node memory");
    let mut rseq_offsets = Vec::new();
    let mut robust_offsets = Vec::new();
    let mut tid_offsets = Vec::new();
    let mut rseq_ptrs = Vec::new();
    for t in threads {
        let tid = t.tid();
        assert_eq!(t.stop_kind(), Some(StopKind::Interrupted));
        assert_eq!(
            common::thread_state(pid, tid),
            't',
            "thread {tid} in tracing stop"
        );

        let regs = t.regs().expect("regs");
        assert_ne!(regs.fs_base, 0, "glibc threads have a TLS block");
        assert_eq!(regs.cs, 0x33, "64-bit user code segment");

        let xstate = t.xstate().expect("xstate");
        assert_eq!(
            xstate.len(),
            cpu.xstate_size as usize,
            "xstate size matches CPUID(0xD,0).EBX"
        );
        assert_eq!(
            xstate.xcomp_bv(),
            0,
            "ptrace returns the non-compacted format"
        );
        assert_eq!(
            xstate.xstate_bv() & !cpu.xcr0,
            0,
            "only enabled features hold state"
        );
        assert_eq!(xstate.xcr0(), cpu.xcr0, "image covers every XCR0 feature");
        if cpu.has_avx512() {
            assert!(xstate.len() > 2048, "AVX-512 xstate is larger than 2 KiB");
        }

        // The legacy region of the xstate image is the FXSAVE image.
        let fp = t.fpregs().expect("fpregs");
        assert_eq!(
            &fp.as_bytes()[..160],
            &xstate.as_bytes()[..160],
            "x87 and MXCSR agree"
        );
        assert_eq!(
            &fp.as_bytes()[160..416],
            &xstate.as_bytes()[160..416],
            "XMM0-15 agree"
        );

        let rseq = t.rseq_configuration().expect("rseq config");
        assert_ne!(
            rseq.abi_pointer, 0,
            "glibc registered rseq for thread {tid}"
        );
        assert_eq!(rseq.signature, GLIBC_RSEQ_SIG);
        assert!(rseq.abi_size >= 32, "rseq area size {}", rseq.abi_size);
        rseq_offsets.push(rseq.abi_pointer.wrapping_sub(regs.fs_base));
        rseq_ptrs.push(rseq.abi_pointer);

        let mask = t.sigmask().expect("sigmask");
        let status = proc::read_status(tid).expect("thread status");
        assert_eq!(
            mask.0, status.sig_blk,
            "PTRACE_GETSIGMASK agrees with SigBlk"
        );

        let robust = t.robust_list().expect("robust list");
        assert_ne!(robust.head, 0, "glibc registers a robust list per thread");
        assert_eq!(robust.len, 24, "sizeof(struct robust_list_head)");
        robust_offsets.push(robust.head.wrapping_sub(regs.fs_base));

        // clear_child_tid has no getter; glibc points it at the `tid` field
        // of its `struct pthread`, which sits at a fixed offset from fs_base
        // and holds the tid. Find it to document the fallback.
        let mut tcb = vec![0u8; 1024];
        mem.read(regs.fs_base, &mut tcb).expect("read TCB");
        let needle = tid.as_raw().to_ne_bytes();
        let off = tcb
            .chunks_exact(4)
            .position(|w| w == needle)
            .map(|i| i * 4)
            .expect("tid stored in struct pthread");
        tid_offsets.push(off);

        let state = regs.syscall_state();
        eprintln!(
            "  tid {tid}: {:?} rip={:#x} rseq={:#x} (fs+{:#x}) sigmask={:#x}",
            state,
            regs.rip,
            rseq.abi_pointer,
            rseq.abi_pointer.wrapping_sub(regs.fs_base),
            mask.0
        );
        assert_ne!(
            state,
            SyscallState::NotInSyscall,
            "an idle thread waits in a syscall"
        );
        if let SyscallState::Restart { .. } = state {
            // The rewound rip must land on a `syscall` instruction.
            let resume = regs.resume_regs();
            let mut insn = [0u8; 2];
            mem.read(resume.rip, &mut insn).expect("read code");
            assert_eq!(insn, [0x0f, 0x05], "rewound to the syscall instruction");
        }
    }
    assert!(
        rseq_offsets.windows(2).all(|w| w[0] == w[1]),
        "rseq area at a fixed TLS offset: {rseq_offsets:x?}"
    );
    assert!(
        robust_offsets.windows(2).all(|w| w[0] == w[1]),
        "robust head at a fixed TLS offset"
    );
    assert!(
        tid_offsets.windows(2).all(|w| w[0] == w[1]),
        "tid field at a fixed TLS offset"
    );
    rseq_ptrs.sort_unstable();
    rseq_ptrs.dedup();
    assert_eq!(rseq_ptrs.len(), threads.len(), "one rseq area per thread");
    eprintln!(
        "node: xstate {} bytes, XCR0 {:#x}, rseq at fs+{:#x}, robust head at fs+{:#x}, pthread.tid at fs+{:#x}",
        cpu.xstate_size, cpu.xcr0, rseq_offsets[0], robust_offsets[0], tid_offsets[0]
    );

    // A thread id that is not a process id is refused.
    if let Some(worker) = threads.iter().map(|t| t.tid()).find(|t| *t != pid) {
        assert!(matches!(
            freeze(worker),
            Err(FreezeError::NotAProcess { .. })
        ));
    }

    frozen.thaw().expect("thaw");
    assert_eq!(proc::read_status(pid).expect("status").tracer_pid, 0);
    child.send("hello");
    assert_eq!(
        child.line(),
        "echo hello 1 998001",
        "node runs on after detach"
    );
    child.send("again");
    assert_eq!(child.line(), "echo again 2 998001");
}
