//! A Python child builds known memory state and prints its addresses; the
//! tests check the `/proc` parsers, the page map and the memory reader
//! against it, and that a frozen Python blocked in `read` resumes correctly.

#[macro_use]
mod common;

use common::{hex_addr, python, Interp};
use thaw_snapshot::memory::{PageKind, PageSelect, ProcessMemory};
use thaw_snapshot::proc::{self, MappingKind};
use thaw_snapshot::ptrace::{freeze, SyscallState};
use thaw_snapshot::PAGE_SIZE;

/// Pages in the big anonymous mapping.
const BIG_PAGES: u64 = 4096;
/// Pages written with non-zero data: 0, 2, ..., 62.
const DATA_PAGES: u64 = 32;
/// Pages written with a zero byte (present, all zero): 100..110.
const ZERO_WRITTEN: u64 = 10;
/// Pages only read (mapped to the shared zero page): 200..210.
const ZERO_READ: u64 = 10;

const PY_SCRIPT: &str = r#"
import ctypes, mmap, os, sys
PAGE = 4096
marker = b"THAW-MARKER-" + os.urandom(8).hex().encode()
buf = ctypes.create_string_buffer(marker, 64)
big = mmap.mmap(-1, 4096 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
big_addr = ctypes.addressof(ctypes.c_char.from_buffer(big))
for i in range(0, 64, 2):
    big[i * PAGE] = 0x41 + (i % 26)
for i in range(100, 110):
    big[i * PAGE] = 0
touched = sum(big[i * PAGE] for i in range(200, 210))
hidden = mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
hidden[0:len(marker)] = marker
hidden_addr = ctypes.addressof(ctypes.c_char.from_buffer(hidden))
libc = ctypes.CDLL(None, use_errno=True)
if libc.mprotect(ctypes.c_void_p(hidden_addr), PAGE, 0) != 0:
    raise OSError(ctypes.get_errno(), "mprotect")
print(f"ready {ctypes.addressof(buf):#x} {big_addr:#x} {hidden_addr:#x} {marker.decode()}", flush=True)
for line in sys.stdin:
    total = sum(big[i * PAGE] for i in range(64))
    print(f"pong {line.strip()} {buf.value.decode()} {total}", flush=True)
"#;

struct PyChild {
    child: Interp,
    marker_addr: u64,
    big_addr: u64,
    hidden_addr: u64,
    marker: String,
}

fn spawn_python() -> Option<PyChild> {
    let py = python()?;
    let child = Interp::spawn(&py, &["-c", PY_SCRIPT]);
    let line = child.line();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 5, "ready line {line:?}");
    assert_eq!(f[0], "ready");
    Some(PyChild {
        marker_addr: hex_addr(f[1]),
        big_addr: hex_addr(f[2]),
        hidden_addr: hex_addr(f[3]),
        marker: f[4].to_owned(),
        child,
    })
}

/// Expected `sum(big[i * PAGE] for i in range(64))`.
fn expected_total() -> u64 {
    (0..64u64).step_by(2).map(|i| 0x41 + (i % 26)).sum()
}

#[test]
fn maps_stat_auxv_describe_the_layout() {
    let Some(py) = spawn_python() else {
        skip!("python3 not found");
    };
    let pid = py.child.pid();
    let maps = proc::read_maps(pid).expect("maps");
    let find = |k: MappingKind| maps.iter().find(|m| m.kind == k).cloned();
    let vdso = find(MappingKind::Vdso).expect("[vdso]");
    let vvar = find(MappingKind::Vvar).expect("[vvar]");
    let stack = find(MappingKind::Stack).expect("[stack]");
    let heap = find(MappingKind::Heap).expect("[heap]");
    let vclock = find(MappingKind::VvarVclock);
    eprintln!(
        "python: vdso {:#x} ({} pages), vvar {:#x} ({} pages), vvar_vclock {}, heap {:#x}-{:#x}, stack {:#x}-{:#x}",
        vdso.start,
        vdso.pages(),
        vvar.start,
        vvar.pages(),
        vclock.as_ref().map_or("absent".to_owned(), |v| format!("{:#x} ({} pages)", v.start, v.pages())),
        heap.start,
        heap.end,
        stack.start,
        stack.end
    );
    assert!(vdso.prot.exec && !vdso.prot.write);
    assert!(vvar.end <= vdso.start, "vvar pages precede the vdso");

    let auxv = proc::read_auxv(pid).expect("auxv");
    assert_eq!(
        auxv.vdso_base(),
        Some(vdso.start),
        "AT_SYSINFO_EHDR is the [vdso] start"
    );
    assert_eq!(auxv.get(libc::AT_PAGESZ), Some(PAGE_SIZE));

    let stat = proc::read_stat(pid).expect("stat");
    assert_eq!(stat.pid, pid.as_raw());
    assert_eq!(stat.start_brk, heap.start, "[heap] begins at start_brk");
    assert!(
        stack.contains(stat.start_stack),
        "start_stack inside [stack]"
    );
    assert!(stat.arg_start < stat.arg_end && stat.env_start < stat.env_end);

    // argv and environment, read from memory, match /proc's own view.
    let mem = ProcessMemory::open(pid).expect("open memory");
    let mut args = vec![0u8; usize::try_from(stat.arg_end - stat.arg_start).expect("fits")];
    mem.read(stat.arg_start, &mut args).expect("read argv");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert_eq!(args, cmdline);
    let mut env = vec![0u8; usize::try_from(stat.env_end - stat.env_start).expect("fits")];
    mem.read(stat.env_start, &mut env).expect("read env");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert_eq!(env, environ);

    let status = proc::read_status(pid).expect("status");
    assert_eq!(status.tgid, pid.as_raw());
    assert_eq!(status.threads, 1, "python is single-threaded");
    assert_eq!(proc::task_ids(pid).expect("tasks"), vec![pid]);
    assert_eq!(status.ns_pid.first().copied(), Some(pid.as_raw()));
}

#[test]
fn memory_reads_marker_and_classifies_pages() {
    if let Err(why) = common::can_ptrace() {
        skip!("{why}");
    }
    let Some(py) = spawn_python() else {
        skip!("python3 not found");
    };
    let pid = py.child.pid();
    let frozen = freeze(pid).expect("freeze python");
    let mem = ProcessMemory::open(pid).expect("open memory");

    // The marker, through process_vm_readv and through /proc/pid/mem.
    let mut got = vec![0u8; py.marker.len()];
    mem.read(py.marker_addr, &mut got).expect("read marker");
    assert_eq!(got, py.marker.as_bytes());
    let mut via_mem = vec![0u8; py.marker.len()];
    mem.read_via_proc_mem(py.marker_addr, &mut via_mem)
        .expect("read marker via /proc/pid/mem");
    assert_eq!(via_mem, got);

    // A PROT_NONE page: process_vm_readv refuses it, the fallback reads it.
    let mut hidden = vec![0u8; py.marker.len()];
    mem.read(py.hidden_addr, &mut hidden)
        .expect("read PROT_NONE page");
    assert_eq!(hidden, py.marker.as_bytes());

    // The page map of the big mapping.
    let end = py.big_addr + BIG_PAGES * PAGE_SIZE;
    let entries = mem.pagemap(py.big_addr, end).expect("pagemap");
    assert_eq!(entries.len() as u64, BIG_PAGES);
    for i in (0..64).step_by(2) {
        assert!(entries[i].present(), "written page {i} present");
        assert!(entries[i].exclusive() && !entries[i].file_or_shared());
    }
    for i in (1..64).step_by(2) {
        assert!(!entries[i].populated(), "untouched page {i} absent");
    }
    for (i, e) in entries.iter().enumerate().skip(1000) {
        assert!(!e.populated(), "untouched page {i} absent");
    }

    // Capture: only populated pages are read; zero pages carry no data.
    let started = std::time::Instant::now();
    let cap = mem
        .capture(py.big_addr, end, PageSelect::PrivateOnly)
        .expect("capture");
    let took = started.elapsed();
    let stats = cap.stats();
    eprintln!("python: capture of {BIG_PAGES} pages: {stats:?} in {took:?}");
    assert_eq!(stats.data, DATA_PAGES);
    assert_eq!(
        stats.zero,
        ZERO_WRITTEN + ZERO_READ,
        "written-zero and read-only pages are zero pages"
    );
    assert_eq!(
        stats.absent,
        BIG_PAGES - DATA_PAGES - ZERO_WRITTEN - ZERO_READ
    );
    assert_eq!(cap.data.len() as u64, DATA_PAGES * PAGE_SIZE);
    for (addr, bytes) in cap.data_pages() {
        let i = (addr - py.big_addr) / PAGE_SIZE;
        assert_eq!(u64::from(bytes[0]), 0x41 + (i % 26), "contents of page {i}");
        assert!(bytes[1..].iter().all(|b| *b == 0));
    }
    assert_eq!(
        cap.kind_at(py.big_addr + 105 * PAGE_SIZE),
        Some(PageKind::Zero)
    );
    assert_eq!(
        cap.kind_at(py.big_addr + 205 * PAGE_SIZE),
        Some(PageKind::Zero)
    );
    assert_eq!(cap.kind_at(py.big_addr + PAGE_SIZE), Some(PageKind::Absent));

    // The PROT_NONE page is captured too (through the fallback).
    let hidden_cap = mem
        .capture(
            py.hidden_addr,
            py.hidden_addr + PAGE_SIZE,
            PageSelect::PrivateOnly,
        )
        .expect("capture PROT_NONE page");
    assert_eq!(hidden_cap.stats().data, 1);
    assert_eq!(&hidden_cap.data[..py.marker.len()], py.marker.as_bytes());

    // Capturing every private VMA of the process works end to end.
    let mut total = thaw_snapshot::memory::CaptureStats::default();
    for m in proc::read_maps(pid)
        .expect("maps")
        .iter()
        .filter(|m| m.is_private_memory())
    {
        let s = mem
            .capture(m.start, m.end, PageSelect::PrivateOnly)
            .unwrap_or_else(|e| panic!("capture {:#x}-{:#x}: {e}", m.start, m.end))
            .stats();
        total.absent += s.absent;
        total.skipped += s.skipped;
        total.zero += s.zero;
        total.data += s.data;
    }
    eprintln!("python: whole process private memory: {total:?}");
    assert!(total.data > DATA_PAGES);
    drop(frozen);
}

#[test]
fn python_blocked_in_read_restarts_after_detach() {
    if let Err(why) = common::can_ptrace() {
        skip!("{why}");
    }
    let Some(mut py) = spawn_python() else {
        skip!("python3 not found");
    };
    let pid = py.child.pid();
    assert!(
        common::wait_in_syscall(pid, libc::SYS_read),
        "python reaches read(0)"
    );
    let frozen = freeze(pid).expect("freeze python");
    assert_eq!(frozen.threads().len(), 1);
    let t = &frozen.threads()[0];
    let regs = t.regs().expect("regs");
    let state = regs.syscall_state();
    eprintln!("python: main thread {state:?}");
    assert_eq!(
        state,
        SyscallState::Restart {
            nr: libc::SYS_read,
            code: -thaw_snapshot::ptrace::ERESTARTSYS
        },
        "blocked in read(0, ...) and interrupted with -ERESTARTSYS"
    );
    let resume = regs.resume_regs();
    assert_eq!(resume.rip, regs.rip - 2);
    assert_eq!(resume.rax, 0, "rax = orig_rax = SYS_read");
    let mem = ProcessMemory::open(pid).expect("open memory");
    let mut insn = [0u8; 2];
    mem.read(resume.rip, &mut insn).expect("read code");
    assert_eq!(insn, [0x0f, 0x05], "resume point is a syscall instruction");

    let mask = t.sigmask().expect("sigmask");
    assert_eq!(mask.0, proc::read_status(pid).expect("status").sig_blk);
    let rseq = t.rseq_configuration().expect("rseq");
    assert_ne!(
        rseq.abi_pointer, 0,
        "glibc registers rseq in the main thread too"
    );

    frozen.thaw().expect("thaw");
    py.child.send("ping");
    assert_eq!(
        py.child.line(),
        format!("pong ping {} {}", py.marker, expected_total()),
        "the interrupted read restarted and the state is intact"
    );
}
