//! A lazily restored process keeps anonymous-memory semantics: a page it
//! drops with `madvise(MADV_DONTNEED)` before ever touching it reads as
//! zeros (not the snapshot's bytes), pages it moves with `mremap` keep
//! their contents, and a child it forks sees the parent's memory. The same
//! script runs on an eager restore, which must answer identically.

#[macro_use]
mod common;
#[path = "support/restore.rs"]
mod support;

use std::path::Path;

use common::{python, Interp};
use support::{error_chain, first_child, restore_with_pipes, PidNs, MODES};
use thaw_snapshot::checkpoint::checkpoint;
use thaw_snapshot::image::Snapshot;

const SCRIPT: &str = r#"
import ctypes, mmap, os, sys
os.closerange(3, 65536)
PAGE = 4096
N = 2048
libc = ctypes.CDLL(None, use_errno=True)
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
buf = mmap.mmap(-1, N * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(N):
    buf[i * PAGE:i * PAGE + 8] = b"page%04d" % i
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
size = N * PAGE

def read(i):
    b = ctypes.string_at(addr + i * PAGE, 8)
    return "zero" if b == b"\0" * 8 else b.decode()

print("ready", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "read":
        print(read(int(cmd[1])), flush=True)
    elif cmd[0] == "dontneed":
        r = libc.madvise(addr + int(cmd[1]) * PAGE, PAGE, 4)
        print("ok" if r == 0 else f"err {ctypes.get_errno()}", flush=True)
    elif cmd[0] == "remap":
        new = libc.mremap(addr, size, 4 * size, 1)
        if new in (None, ctypes.c_void_p(-1).value):
            print(f"err {ctypes.get_errno()}", flush=True)
        else:
            moved = new != addr
            print(f"moved {moved} {addr:#x} -> {new:#x}", flush=True)
            addr, size = new, 4 * size
    elif cmd[0] == "addr":
        print(hex(addr), flush=True)
    elif cmd[0] == "fork":
        i = int(cmd[1])
        pid = os.fork()
        if pid == 0:
            os.write(1, f"child {read(i)}\n".encode())
            os._exit(0)
        os.waitpid(pid, 0)
"#;

#[test]
fn lazy_restore_keeps_anonymous_memory_semantics() {
    if !nix::unistd::geteuid().is_root() {
        skip!("needs root (ptrace of other processes, pid namespaces)");
    }
    let Some(py) = python() else {
        skip!("no python3");
    };
    let orig = Interp::spawn(
        Path::new("unshare"),
        &[
            "--pid",
            "--fork",
            "--kill-child",
            "/bin/sh",
            "-c",
            "\"$0\" -c \"$1\"; exit $?",
            py.to_str().expect("utf-8 path"),
            SCRIPT,
        ],
    );
    assert_eq!(orig.line(), "ready");
    let sh = first_child(orig.pid().as_raw() as u32);
    let py_pid = first_child(sh.as_raw() as u32);
    let dir = tempfile::tempdir().expect("tempdir");
    checkpoint(py_pid, dir.path()).unwrap_or_else(|e| panic!("checkpoint: {}", error_chain(&e)));
    let snap = Snapshot::open(dir.path()).expect("open snapshot");

    for mode in MODES {
        let ns = PidNs::new();
        let mut r = restore_with_pipes(&snap, &ns, mode);
        // Dropped before ever being touched: zeros, not the snapshot's bytes.
        assert_eq!(r.ask("read 1000"), "page1000", "{mode:?}");
        assert_eq!(r.ask("dontneed 10"), "ok");
        assert_eq!(r.ask("read 10"), "zero", "{mode:?}");
        // Untouched pages come back with their contents.
        assert_eq!(r.ask("read 11"), "page0011", "{mode:?}");
        // A moved range keeps its contents, also pages not yet touched.
        let moved = r.ask("remap");
        assert!(moved.starts_with("moved"), "{moved}");
        assert_eq!(r.ask("read 12"), "page0012", "{mode:?} after {moved}");
        assert_eq!(r.ask("read 11"), "page0011", "{mode:?}");
        assert_eq!(
            r.ask("read 10"),
            "zero",
            "{mode:?}: still dropped after the move"
        );
        assert_eq!(
            r.ask("read 3000"),
            "zero",
            "{mode:?}: the grown part is new memory"
        );
        // A child sees the parent's memory, also pages the parent never touched.
        assert_eq!(r.ask("fork 13"), "child page0013", "{mode:?}");
        assert_eq!(r.ask("read 13"), "page0013", "{mode:?}");
        if let Some(stats) = r.finish() {
            eprintln!("page server: {stats:?}");
            assert!(
                stats.events >= 3,
                "remove, remap and fork events seen: {stats:?}"
            );
        }
    }
}

/// A chunk that fails verification is never served: the page server stops
/// with the checksum error and kills the process instead of letting it run
/// on with missing memory.
#[test]
fn lazy_restore_fails_closed_on_a_corrupt_chunk() {
    use std::io::{BufRead, Write};
    use std::os::fd::AsFd;
    if !nix::unistd::geteuid().is_root() {
        skip!("needs root (ptrace of other processes, pid namespaces)");
    }
    let Some(py) = python() else {
        skip!("no python3");
    };
    let orig = Interp::spawn(
        Path::new("unshare"),
        &[
            "--pid",
            "--fork",
            "--kill-child",
            "/bin/sh",
            "-c",
            "\"$0\" -c \"$1\"; exit $?",
            py.to_str().expect("utf-8 path"),
            SCRIPT,
        ],
    );
    assert_eq!(orig.line(), "ready");
    let sh = first_child(orig.pid().as_raw() as u32);
    let py_pid = first_child(sh.as_raw() as u32);
    let dir = tempfile::tempdir().expect("tempdir");
    checkpoint(py_pid, dir.path()).unwrap_or_else(|e| panic!("checkpoint: {}", error_chain(&e)));
    // One flipped bit in the saved bytes of page 1000 of the buffer: its
    // chunk holds only buffer pages (the buffer spans eight chunks), all
    // served lazily.
    let mut orig = orig;
    orig.send("addr");
    let addr = u64::from_str_radix(orig.line().trim_start_matches("0x"), 16).expect("addr");
    let page20 = addr + 1000 * 4096;
    let state = Snapshot::open(dir.path()).expect("open").state().clone();
    let run = state.memory.run_at(page20).expect("page 20 was saved");
    let image_page = run.image_page + (page20 - run.addr) / 4096;
    let mem = dir.path().join(thaw_snapshot::image::MEMORY_FILE);
    let mut bytes = std::fs::read(&mem).expect("read image");
    bytes[((image_page + 1) * 4096 + 100) as usize] ^= 1;
    std::fs::write(&mem, &bytes).expect("write image");
    let snap = Snapshot::open(dir.path()).expect("headers and state are intact");
    let ns = PidNs::new();
    let (in_r, in_w) = nix::unistd::pipe().expect("pipe");
    let (out_r, out_w) = nix::unistd::pipe().expect("pipe");
    let err = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup stderr");
    // The test's stderr may be a pipe (replaced by ours) or a file
    // (reopened by path), depending on how the tests are run.
    let stderr_external = snap
        .state()
        .process
        .fds
        .iter()
        .any(|f| f.fd == 2 && matches!(f.kind, thaw_snapshot::state::FdKind::External { .. }));
    let opts = thaw_snapshot::restore::RestoreOptions {
        pid_ns: Some(std::os::fd::AsFd::as_fd(&ns.ns)),
        namespaces: Vec::new(),
        fds: if stderr_external {
            vec![(0, in_r.as_fd()), (1, out_w.as_fd()), (2, err.as_fd())]
        } else {
            vec![(0, in_r.as_fd()), (1, out_w.as_fd())]
        },
        cgroup_procs: Vec::new(),
        memory: thaw_snapshot::restore::MemoryMode::Lazy,
        working_set: None,
    };
    let restored = thaw_snapshot::restore::restore(&snap, &opts).unwrap_or_else(|e| {
        panic!(
            "the corrupt chunk is only read on demand: {}",
            error_chain(&e)
        )
    });
    drop((in_r, out_w));
    let pid = restored.pid;
    let pidfd = thaw_snapshot::sys::pidfd_open(pid.as_raw()).expect("pidfd");
    let lazy = restored.lazy.expect("lazy memory");
    let server = std::thread::spawn(move || {
        let snap = Snapshot::open(snap.dir()).map_err(|e| error_chain(&e))?;
        thaw_snapshot::lazy::serve(&snap, lazy, pidfd.as_fd()).map_err(|e| error_chain(&e))
    });
    let mut stdin = std::fs::File::from(in_w);
    let mut stdout = std::io::BufReader::new(std::fs::File::from(out_r));
    writeln!(stdin, "read 1000").expect("write");
    let _ = stdin.flush();
    let mut out = String::new();
    let _ = stdout.read_line(&mut out);
    assert_eq!(out, "", "the process must not answer from corrupt memory");
    let status = nix::sys::wait::waitpid(pid, None).expect("wait");
    assert!(
        matches!(
            status,
            nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)
        ),
        "{status:?}"
    );
    let err = server
        .join()
        .expect("thread")
        .expect_err("the page server reports the corruption");
    assert!(err.contains("checksum mismatch"), "{err}");
}
