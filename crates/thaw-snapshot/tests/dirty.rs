//! Dirty-page tracking matches a reference: a Python process writes pages
//! the test chose (and reads others), and the tracker reports exactly
//! those, then only what was written after a reset.

#[macro_use]
mod common;

use common::{python, Interp};
use thaw_snapshot::dirty::{WriteTracker, PAGE_SIZE};

const PAGES: u64 = 1024;

const SCRIPT: &str = r#"
import ctypes, mmap, os, sys
PAGE = 4096
N = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
# userfaultfd(O_CLOEXEC | O_NONBLOCK): the tracker takes it with pidfd_getfd.
uffd = libc.syscall(323, os.O_CLOEXEC | os.O_NONBLOCK)
buf = mmap.mmap(-1, N * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(0, N, 3):
    buf[i * PAGE] = 1  # a third populated before tracking starts
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
print(uffd, hex(addr), flush=True)
for line in sys.stdin:
    cmd, *pages = line.split()
    for p in map(int, pages):
        if cmd == "write":
            buf[p * PAGE + (p * 7) % PAGE] = 7
        else:
            _ = buf[p * PAGE]
    print("done", flush=True)
"#;

/// Page-aligned runs of the sorted page numbers `pages` at `base`.
fn runs(base: u64, pages: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &p in pages {
        let (s, e) = (base + p * PAGE_SIZE, base + (p + 1) * PAGE_SIZE);
        match out.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => out.push((s, e)),
        }
    }
    out
}

#[test]
fn written_pages_match_the_reference_exactly() {
    if let Err(why) = common::can_ptrace() {
        skip!("{why}");
    }
    let Some(py) = python() else {
        skip!("python3 not found");
    };
    let mut child = Interp::spawn(&py, &["-c", SCRIPT, &PAGES.to_string()]);
    let first = child.line();
    let mut words = first.split_whitespace();
    let remote_fd: i32 = words.next().unwrap().parse().unwrap();
    assert!(
        remote_fd >= 0,
        "the child could not create a userfaultfd: {first}"
    );
    let base = common::hex_addr(words.next().unwrap());
    let pid = child.pid().as_raw();
    let pidfd = thaw_snapshot::sys::pidfd_open(pid).unwrap();
    let uffd = thaw_snapshot::sys::pidfd_getfd(&pidfd, remote_fd).unwrap();
    let tracker = match WriteTracker::start(pid, uffd, vec![(base, base + PAGES * PAGE_SIZE)]) {
        Ok(t) => t,
        Err(e) => skip!("asynchronous userfaultfd write-protection unavailable: {e}"),
    };
    assert_eq!(
        tracker.written(false).unwrap(),
        vec![],
        "clean at the start"
    );

    // A reference set: populated and unpopulated pages, neighbours that
    // merge into runs, the first and last pages; and pages only read.
    let mut written: Vec<u64> = vec![0, 3, 4, 5, 7, 100, 101, 511, PAGES - 1];
    let mut x: u64 = 12345;
    for _ in 0..60 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        written.push((x >> 33) % PAGES);
    }
    written.sort_unstable();
    written.dedup();
    let read_only: Vec<u64> = (0..PAGES)
        .filter(|p| p % 17 == 2 && !written.contains(p))
        .collect();
    let list = |ps: &[u64]| ps.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    child.send(&format!("write {}", list(&written)));
    assert_eq!(child.line(), "done");
    child.send(&format!("read {}", list(&read_only)));
    assert_eq!(child.line(), "done");
    assert_eq!(tracker.written(true).unwrap(), runs(base, &written));
    assert_eq!(tracker.written_count().unwrap(), 0, "reset: clean again");

    // After the reset, only what is written from then on.
    child.send("write 9 3");
    assert_eq!(child.line(), "done");
    assert_eq!(tracker.written(false).unwrap(), runs(base, &[3, 9]));
    assert_eq!(tracker.written_count().unwrap(), 2);
}
