//! Templates: a snapshot restored once and never resumed, cloned
//! copy-on-write into many processes. Every clone has the snapshot's pid in
//! its own pid namespace, its own descriptors and nothing of the restorer;
//! a write in one clone is invisible to the others and to the template,
//! `MADV_DONTNEED` reads zeros, killing one clone leaves the others
//! serving, and a multi-threaded Node.js clone gets all its threads back.

#[macro_use]
mod common;
#[path = "support/restore.rs"]
mod support;

use std::fs::File;
use std::io::BufReader;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{hex_addr, node, python, Interp};
use support::{error_chain, first_child, PidNs, Restored};
use thaw_snapshot::checkpoint::checkpoint;
use thaw_snapshot::image::Snapshot;
use thaw_snapshot::state::FdKind;
use thaw_snapshot::template::{CloneOptions, Parent, PendingClone, Template, TemplateOptions};

const PY_SCRIPT: &str = r#"
import ctypes, mmap, os, sys, threading
os.closerange(3, 65536)
PAGE = 4096
N = 256
libc = ctypes.CDLL(None, use_errno=True)
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
buf = mmap.mmap(-1, N * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(N):
    buf[i * PAGE:i * PAGE + 8] = b"page%04d" % i
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
print(f"ready {addr:#x}", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "read":
        b = ctypes.string_at(addr + int(cmd[1]) * PAGE, 8)
        print("zero" if b == b"\0" * 8 else b.decode(), flush=True)
    elif cmd[0] == "write":
        buf[int(cmd[1]) * PAGE:int(cmd[1]) * PAGE + 8] = cmd[2].encode()[:8].ljust(8, b"_")
        print("ok", flush=True)
    elif cmd[0] == "dontneed":
        r = libc.madvise(addr + int(cmd[1]) * PAGE, PAGE, 4)
        print("ok" if r == 0 else f"err {ctypes.get_errno()}", flush=True)
    elif cmd[0] == "who":
        print(f"{os.getpid()} {threading.get_native_id()}", flush=True)
    elif cmd[0] == "fork":
        pid = os.fork()
        if pid == 0:
            b = ctypes.string_at(addr + int(cmd[1]) * PAGE, 8)
            os.write(1, b"child " + b + b"\n")
            os._exit(0)
        os.waitpid(pid, 0)
"#;

/// A clone of `t` in a new pid namespace, on new pipes for stdin/stdout.
fn clone_with_pipes(t: &mut Template, snap: &Snapshot, ns: &PidNs) -> Restored {
    clone_with(t, snap, ns, Parent::Caller)
}

fn clone_with(t: &mut Template, snap: &Snapshot, ns: &PidNs, parent: Parent) -> Restored {
    let (pending, stdin, stdout) = prepare_with(t, snap, ns, parent);
    let c = pending
        .release()
        .unwrap_or_else(|e| panic!("release: {}", error_chain(&e)));
    Restored {
        pid: c.pid,
        stdin,
        stdout,
        server: None,
    }
}

/// A prepared (stopped, traced) clone of `t` on new pipes, and the
/// pipes' other ends.
fn prepare_with(
    t: &mut Template,
    snap: &Snapshot,
    ns: &PidNs,
    parent: Parent,
) -> (PendingClone, File, BufReader<File>) {
    let (in_r, in_w) = nix::unistd::pipe().expect("pipe");
    let (out_r, out_w) = nix::unistd::pipe().expect("pipe");
    let err: OwnedFd = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup stderr");
    let mut fds = vec![(0, in_r.as_fd()), (1, out_w.as_fd())];
    if snap
        .state()
        .process
        .fds
        .iter()
        .any(|f| f.fd == 2 && matches!(f.kind, FdKind::External { .. }))
    {
        fds.push((2, err.as_fd()));
    }
    let opts = CloneOptions {
        pid_ns: Some(ns.ns.as_fd()),
        fds,
        parent,
        ..Default::default()
    };
    let pending = t
        .prepare_clone(snap, &opts)
        .unwrap_or_else(|e| panic!("clone: {}", error_chain(&e)));
    (pending, File::from(in_w), BufReader::new(File::from(out_r)))
}

/// The descriptor numbers a process holds.
fn fd_numbers(pid: nix::unistd::Pid) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// `Private_Dirty` of a process, KiB (from `smaps_rollup`).
fn private_dirty_kib(pid: nix::unistd::Pid) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("Private_Dirty:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn checkpoint_in_pid_ns(program: &Path, flag: &str, script: &str) -> (Interp, tempfile::TempDir) {
    let orig = Interp::spawn(
        Path::new("unshare"),
        &[
            "--pid",
            "--fork",
            "--kill-child",
            "/bin/bash",
            "-c",
            "for fd in /proc/self/fd/*; do fd=${fd##*/}; [ \"$fd\" -gt 2 ] && eval \"exec $fd>&-\"; done 2>/dev/null; \"$0\" \"$1\" \"$2\"; exit $?",
            program.to_str().expect("utf-8 path"),
            flag,
            script,
        ],
    );
    (orig, tempfile::tempdir().expect("tempdir"))
}

#[test]
fn python_clones_share_nothing_writable() {
    if !nix::unistd::geteuid().is_root() {
        skip!("needs root (ptrace of other processes, pid namespaces)");
    }
    let Some(py) = python() else {
        skip!("no python3");
    };
    let (orig, dir) = checkpoint_in_pid_ns(&py, "-c", PY_SCRIPT);
    let ready = orig.line();
    let addr = hex_addr(ready.split_whitespace().nth(1).expect("address"));
    let sh = first_child(orig.pid().as_raw() as u32);
    let py_pid = first_child(sh.as_raw() as u32);
    checkpoint(py_pid, dir.path()).unwrap_or_else(|e| panic!("checkpoint: {}", error_chain(&e)));
    drop(orig);
    let snap = Snapshot::open(dir.path()).expect("open snapshot");
    let snap_fds: Vec<i32> = {
        let mut v: Vec<i32> = snap.state().process.fds.iter().map(|f| f.fd).collect();
        v.sort_unstable();
        v
    };

    let mut template = Template::create(&snap, &TemplateOptions::default())
        .unwrap_or_else(|e| panic!("template: {}", error_chain(&e)));
    eprintln!(
        "template {} made in {:?}",
        template.pid(),
        template.timings()
    );
    let template_mem = File::open(format!("/proc/{}/mem", template.pid())).expect("mem");
    let template_page = |i: u64| {
        let mut b = [0u8; 8];
        template_mem
            .read_exact_at(&mut b, addr + i * 4096)
            .expect("read template memory");
        String::from_utf8_lossy(&b).into_owned()
    };
    assert_eq!(template_page(7), "page0007");
    assert_eq!(
        fd_numbers(template.pid()).len(),
        1,
        "the template holds only the restorer's pidfd"
    );

    // 100 clones, each in its own pid namespace with the snapshot's pid.
    const CLONES: usize = 100;
    let mut namespaces = Vec::with_capacity(CLONES);
    let mut clones = Vec::with_capacity(CLONES);
    let mut totals = Vec::with_capacity(CLONES);
    for _ in 0..CLONES {
        let ns = PidNs::new();
        let t0 = std::time::Instant::now();
        let c = clone_with_pipes(&mut template, &snap, &ns);
        totals.push(t0.elapsed());
        namespaces.push(ns);
        clones.push(c);
    }
    for c in &mut clones {
        assert_eq!(c.ask("who"), "2 2", "the snapshot's pid and tid");
        assert_eq!(c.ask("read 3"), "page0003");
        assert_eq!(
            fd_numbers(c.pid),
            snap_fds,
            "exactly the snapshot's descriptors"
        );
    }
    totals.sort_unstable();
    eprintln!(
        "{CLONES} clones: median {:?}, max {:?}; private dirty memory of one clone {} KiB",
        totals[CLONES / 2],
        totals[CLONES - 1],
        private_dirty_kib(clones[1].pid)
    );

    // A write is private to its clone; the template never changes.
    let (a, rest) = clones.split_first_mut().expect("clones");
    let b = &mut rest[0];
    assert_eq!(a.ask("write 7 AAAAAAAA"), "ok");
    assert_eq!(a.ask("read 7"), "AAAAAAAA");
    assert_eq!(
        b.ask("read 7"),
        "page0007",
        "another clone's write is invisible"
    );
    assert_eq!(template_page(7), "page0007", "the template is unchanged");
    // Dropped memory reads zeros, not the template's bytes.
    assert_eq!(a.ask("dontneed 9"), "ok");
    assert_eq!(a.ask("read 9"), "zero");
    assert_eq!(b.ask("read 9"), "page0009");
    assert_eq!(
        a.ask("fork 7"),
        "child AAAAAAAA",
        "a clone's own fork sees its memory"
    );

    // Killing a clone leaves the others and the template serving.
    let a = clones.remove(0);
    let a_pid = a.pid;
    drop(a);
    assert!(
        !Path::new(&format!("/proc/{a_pid}")).exists(),
        "the killed clone is gone"
    );
    for c in clones.iter_mut().take(10) {
        assert_eq!(c.ask("read 7"), "page0007");
    }
    let ns = PidNs::new();
    let mut late = clone_with_pipes(&mut template, &snap, &ns);
    assert_eq!(
        late.ask("read 7"),
        "page0007",
        "a later clone sees the snapshot"
    );
    assert_eq!(late.ask("read 9"), "page0009");
    assert!(template.is_alive());

    // Through a midwife: the clone is the child of its namespace's init,
    // as if that init had started it, and works the same.
    let ns = PidNs::new();
    let init = ns.init();
    let mut orphan = clone_with(&mut template, &snap, &ns, Parent::NamespaceInit);
    assert_eq!(orphan.ask("who"), "2 2");
    assert_eq!(orphan.ask("read 7"), "page0007");
    assert_eq!(fd_numbers(orphan.pid), snap_fds, "nothing of the midwife's");
    let status = std::fs::read_to_string(format!("/proc/{}/status", orphan.pid)).expect("status");
    let ppid = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .expect("PPid")
        .trim()
        .to_string();
    assert_eq!(ppid, init.to_string(), "the namespace's init is the parent");

    // Prepared ahead: complete but stopped until released; dropped, it is
    // killed without running.
    let ns = PidNs::new();
    let (in_r, _in_w) = nix::unistd::pipe().expect("pipe");
    let (_out_r, out_w) = nix::unistd::pipe().expect("pipe");
    let err = std::io::stderr().as_fd().try_clone_to_owned().expect("dup");
    let mut fds = vec![(0, in_r.as_fd()), (1, out_w.as_fd())];
    if snap
        .state()
        .process
        .fds
        .iter()
        .any(|f| f.fd == 2 && matches!(f.kind, FdKind::External { .. }))
    {
        fds.push((2, err.as_fd()));
    }
    let opts = CloneOptions {
        pid_ns: Some(ns.ns.as_fd()),
        fds,
        parent: Parent::NamespaceInit,
        ..Default::default()
    };
    let pending = template
        .prepare_clone(&snap, &opts)
        .unwrap_or_else(|e| panic!("prepare: {}", error_chain(&e)));
    let pid = pending.pid();
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let state = thaw_snapshot::proc::parse_stat(&state)
        .expect("parse")
        .state;
    assert_eq!(state, 't', "stopped until released");
    drop(pending);
    let gone = (0..200).any(|_| {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let dead = st.is_empty()
            || thaw_snapshot::proc::parse_stat(&st).is_ok_and(|s| matches!(s.state, 'Z' | 'X'));
        if !dead {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        dead
    });
    assert!(gone, "a dropped pending clone is killed");
    assert_eq!(
        fd_numbers(template.pid()).len(),
        1,
        "the template holds only the restorer's pidfd"
    );
}

const NODE_SCRIPT: &str = r#"
const big = Array.from({ length: 300000 }, (_, i) => i * 3);
let ticks = 0;
setInterval(() => { ticks++; }, 20);
const rl = require('readline').createInterface({ input: process.stdin });
rl.on('line', (l) => {
  const [cmd, a] = l.split(' ');
  if (cmd === 'get') console.log(`val ${big[Number(a)]}`);
  else if (cmd === 'set') { big[0] = Number(a); console.log('ok'); }
  else if (cmd === 'pid') console.log(`pid ${process.pid}`);
  else if (cmd === 'ticks') { const t0 = ticks; setTimeout(() => console.log(`ticked ${ticks > t0}`), 200); }
});
console.log(`ready ${process.pid}`);
"#;

#[test]
fn node_clones_get_their_threads_and_timers() {
    if !nix::unistd::geteuid().is_root() {
        skip!("needs root (ptrace of other processes, pid namespaces)");
    }
    let Some(node) = node() else {
        skip!("no node");
    };
    let (orig, dir) = checkpoint_in_pid_ns(&node, "-e", NODE_SCRIPT);
    assert_eq!(orig.line(), "ready 2");
    // Let V8's platform workers park.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let sh = first_child(orig.pid().as_raw() as u32);
    let node_pid = first_child(sh.as_raw() as u32);
    let stats = checkpoint(node_pid, dir.path())
        .unwrap_or_else(|e| panic!("checkpoint: {}", error_chain(&e)));
    assert!(stats.threads > 1, "node is multi-threaded");
    drop(orig);
    let snap = Snapshot::open(dir.path()).expect("open snapshot");
    let threads = snap.state().process.threads.len();

    let mut template = Template::create(&snap, &TemplateOptions::default())
        .unwrap_or_else(|e| panic!("template: {}", error_chain(&e)));
    let mut namespaces = Vec::new();
    let mut clones = Vec::new();
    for _ in 0..10 {
        let ns = PidNs::new();
        clones.push(clone_with(&mut template, &snap, &ns, Parent::NamespaceInit));
        namespaces.push(ns);
    }
    for c in &mut clones {
        assert_eq!(c.ask("pid"), "pid 2");
        assert_eq!(c.ask("get 10"), "val 30");
        assert_eq!(c.ask("ticks"), "ticked true", "timers fire in every clone");
        let tasks = std::fs::read_dir(format!("/proc/{}/task", c.pid))
            .expect("task dir")
            .count();
        assert_eq!(tasks, threads, "every thread is back");
    }
    assert_eq!(clones[0].ask("set 77"), "ok");
    assert_eq!(clones[0].ask("get 0"), "val 77");
    assert_eq!(
        clones[1].ask("get 0"),
        "val 0",
        "a sibling's write is invisible"
    );
    eprintln!(
        "node: {threads} threads; private dirty memory of one clone {} KiB",
        private_dirty_kib(clones[1].pid)
    );
    let killed = clones.remove(1);
    drop(killed);
    assert_eq!(
        clones[0].ask("get 0"),
        "val 77",
        "a sibling's death changes nothing"
    );
    assert_eq!(clones[1].ask("ticks"), "ticked true");

    // A clone prepared and never released (a standby sandbox discarded) is
    // killed and reaped with all its threads: dropping it returns, and
    // nothing of it is left, whichever process is its parent.
    for parent in [Parent::Caller, Parent::NamespaceInit] {
        let ns = PidNs::new();
        let (pending, _stdin, _stdout) = prepare_with(&mut template, &snap, &ns, parent);
        let pid = pending.pid();
        assert_eq!(
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .expect("task dir")
                .count(),
            threads,
            "prepared with every thread"
        );
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        // Ptrace belongs to the tracer thread: drop it here, time it there.
        let watchdog = std::thread::spawn(move || {
            if done_rx
                .recv_timeout(std::time::Duration::from_secs(30))
                .is_err()
            {
                eprintln!("FAIL: dropping a prepared {parent:?} clone hangs");
                std::process::exit(1);
            }
        });
        drop(pending);
        done_tx.send(()).expect("watchdog");
        watchdog.join().expect("watchdog");
        // Nothing traced is left: the process is gone (its parent is this
        // test), or only its leader's exit is left for its namespace's
        // init (which here is `sleep` and reaps nothing).
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count());
        match parent {
            Parent::Caller => assert!(status.is_err(), "the killed clone {pid} is gone"),
            Parent::NamespaceInit => {
                let status = status.expect("a zombie for its init");
                assert!(status.contains("State:\tZ"), "{status}");
                assert!(status.contains("TracerPid:\t0"), "{status}");
                assert_eq!(tasks.ok(), Some(1), "every other thread was reaped");
            }
        }
        drop(ns);
    }
}
