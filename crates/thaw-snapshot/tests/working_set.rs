//! Working sets in the engine: a working set recorded under one input
//! installs before the process resumes and the process still answers
//! correctly under inputs that touch pages outside it; a missing, stale or
//! corrupted working-set file is refused before any page of it is used; a
//! page server whose process dies in the middle of a fault returns instead
//! of hanging.

#[macro_use]
mod common;
#[path = "support/restore.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{python, Interp};
use support::{error_chain, first_child, restore_with, PidNs};
use thaw_snapshot::checkpoint::checkpoint;
use thaw_snapshot::image::{ReadThrottle, Snapshot};
use thaw_snapshot::lazy::{Probe, ServeOptions};
use thaw_snapshot::restore::MemoryMode;
use thaw_snapshot::workingset::{self, WorkingSet, WsError, WORKING_SET_FILE};

/// A line server over a buffer of 4096 tagged pages: `sum A B` reads
/// pages `[A, B)` and answers with the sum of their tags.
const SCRIPT: &str = r#"
import mmap, os, sys
os.closerange(3, 65536)
PAGE = 4096
N = 4096
buf = mmap.mmap(-1, N * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(N):
    buf[i * PAGE:i * PAGE + 8] = (i * 7919 + 13).to_bytes(8, "little")
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "sum":
        a, b = int(cmd[1]), int(cmd[2])
        print(sum(int.from_bytes(buf[i * PAGE:i * PAGE + 8], "little") for i in range(a, b)), flush=True)
"#;

fn expected_sum(a: u64, b: u64) -> String {
    (a..b).map(|i| i * 7919 + 13).sum::<u64>().to_string()
}

/// Starts the line server and checkpoints it into a new directory.
fn snapshot_server(py: &Path) -> (Interp, tempfile::TempDir) {
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
    (orig, dir)
}

fn serve_opts(probe: &Arc<Probe>, fault_around: u64) -> ServeOptions {
    ServeOptions {
        fault_around,
        probe: Some(probe.clone()),
        panic_after_faults: None,
    }
}

#[test]
fn a_recorded_working_set_prefetches_and_other_inputs_still_work() {
    if !nix::unistd::geteuid().is_root() {
        skip!("needs root (ptrace of other processes, pid namespaces)");
    }
    let Some(py) = python() else {
        skip!("no python3");
    };
    let (_orig, dir) = snapshot_server(&py);
    let snap = Snapshot::open(dir.path()).expect("open snapshot");

    // Record: a lazy restore that serves one page per fault, answering
    // `sum 0 300`.
    let ns = PidNs::new();
    let probe = Arc::new(Probe::new(true));
    let mut r = restore_with(&snap, &ns, MemoryMode::Lazy, None, serve_opts(&probe, 1));
    assert_eq!(r.ask("sum 0 300"), expected_sum(0, 300));
    let recorded = probe.take_recording();
    let lazy_faults = probe.stats().faults;
    eprintln!("recording: {:?}", probe.stats());
    r.finish();
    assert!(
        recorded.len() >= 300,
        "at least the 300 buffer pages were recorded: {}",
        recorded.len()
    );
    let path = dir.path().join(WORKING_SET_FILE);
    let summary = workingset::write(&snap, &recorded, &path).expect("write working set");
    eprintln!(
        "recorded {} faults; working set {summary:?}",
        recorded.len()
    );
    assert!(
        summary.pages >= 300 && summary.data_pages >= 300,
        "{summary:?}"
    );
    assert!(
        summary.pages < snap.state().memory.data_pages,
        "{summary:?}"
    );

    // Prefetch: the same input now faults far less, and inputs touching
    // pages outside the working set are served on demand, correctly.
    let ws = WorkingSet::open(&path, &snap).expect("open working set");
    assert_eq!(ws.summary(), summary);
    assert_eq!(ws.order().len() as u64, summary.pages);
    let ns = PidNs::new();
    let probe = Arc::new(Probe::new(true));
    let mut r = restore_with(
        &snap,
        &ns,
        MemoryMode::Lazy,
        Some(&ws),
        serve_opts(&probe, 16),
    );
    assert_eq!(r.ask("sum 0 300"), expected_sum(0, 300));
    let misses = probe.stats().faults;
    eprintln!("faults: {lazy_faults} while recording, {misses} with the working set");
    assert!(
        misses * 4 < lazy_faults,
        "the working set saves most faults: {misses} vs {lazy_faults}"
    );
    assert_eq!(r.ask("sum 1000 1500"), expected_sum(1000, 1500));
    assert_eq!(r.ask("sum 3000 4096"), expected_sum(3000, 4096));
    assert_eq!(r.ask("sum 0 4096"), expected_sum(0, 4096));
    let outside = probe.take_recording();
    assert!(
        outside.len() >= 1500 / 16,
        "pages outside the working set are counted as misses: {}",
        outside.len()
    );
    let stats = r.finish().expect("page server stats");
    assert!(stats.faults > misses, "{stats:?}");
}

#[test]
fn a_missing_stale_or_corrupt_working_set_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        skip!("needs root (ptrace of other processes, pid namespaces)");
    }
    let Some(py) = python() else {
        skip!("no python3");
    };
    let (_a, dir_a) = snapshot_server(&py);
    let (_b, dir_b) = snapshot_server(&py);
    let a = Snapshot::open(dir_a.path()).expect("open a");
    let b = Snapshot::open(dir_b.path()).expect("open b");

    let path = dir_a.path().join(WORKING_SET_FILE);
    let missing = WorkingSet::open(&path, &a).expect_err("no file yet");
    assert!(missing.is_missing(), "{missing}");

    // Any page of the buffer: record its first pages by address.
    let ranges = thaw_snapshot::restore::lazy_ranges(&a);
    let (start, end) = *ranges.iter().max_by_key(|(s, e)| e - s).expect("a range");
    let pages: Vec<u64> = (start..end).step_by(4096).take(64).collect();
    workingset::write(&a, &pages, &path).expect("write");
    WorkingSet::open(&path, &a).expect("the intact file opens");

    // Recorded on another snapshot.
    let stale = WorkingSet::open(&path, &b).expect_err("stale");
    assert!(matches!(stale, WsError::Stale { .. }), "{stale}");

    let good = std::fs::read(&path).expect("read");
    let corrupt = |bytes: &[u8], what: &str| {
        std::fs::write(&path, bytes).expect("write");
        let e = WorkingSet::open(&path, &a).expect_err(what);
        eprintln!("{what}: {}", error_chain(&e));
        assert!(
            matches!(e, WsError::Corrupt { .. } | WsError::Format { .. }),
            "{what}: {e}"
        );
    };
    let mut flipped = good.clone();
    let last = flipped.len() - 100;
    flipped[last] ^= 1;
    corrupt(&flipped, "a flipped data bit");
    let mut flipped = good.clone();
    flipped[4096] ^= 0x10;
    corrupt(&flipped, "a flipped index bit");
    corrupt(&good[..good.len() - 4096], "a truncated file");
    corrupt(&good[..100], "a cut header");
    let mut magic = good.clone();
    magic[0] = b'X';
    corrupt(&magic, "a bad magic");

    // A lazy restore without it still works.
    let ns = PidNs::new();
    let mut r = restore_with(&a, &ns, MemoryMode::Lazy, None, ServeOptions::default());
    assert_eq!(r.ask("sum 0 4096"), expected_sum(0, 4096));
    r.finish();
}

/// A process killed while its page server is reading the page it waits
/// for: the server notices and returns, it does not hang or fail.
#[test]
fn the_page_server_survives_a_process_dying_mid_fault() {
    if !nix::unistd::geteuid().is_root() {
        skip!("needs root (ptrace of other processes, pid namespaces)");
    }
    let Some(py) = python() else {
        skip!("no python3");
    };
    let (_orig, dir) = snapshot_server(&py);
    let mut snap = Snapshot::open(dir.path()).expect("open snapshot");
    // Every chunk read takes 300 ms: faults are slow enough to be killed in.
    snap.set_throttle(Some(ReadThrottle {
        latency_us: 300_000,
        bytes_per_sec: 0,
    }));
    let ns = PidNs::new();
    let mut r = restore_with(&snap, &ns, MemoryMode::Lazy, None, ServeOptions::default());
    use std::io::Write;
    writeln!(r.stdin, "sum 0 4096").expect("write");
    r.stdin.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let server = r.server.take().expect("a page server");
    nix::sys::signal::kill(r.pid, nix::sys::signal::Signal::SIGKILL).expect("kill");
    let status = nix::sys::wait::waitpid(r.pid, None).expect("wait");
    let stats = server
        .join()
        .expect("page server thread")
        .expect("the page server ends cleanly");
    eprintln!(
        "killed mid-fault: {status:?}; server returned after {:?}: {stats:?}",
        t0.elapsed()
    );
    assert!(stats.faults >= 1, "{stats:?}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

/// A page server that dies (here: panics) while its process waits for a
/// page takes the process with it: the process is killed, it never goes on
/// with zero pages where its memory was.
#[test]
fn a_dying_page_server_kills_its_process() {
    if !nix::unistd::geteuid().is_root() {
        skip!("needs root (ptrace of other processes, pid namespaces)");
    }
    let Some(py) = python() else {
        skip!("no python3");
    };
    let (_orig, dir) = snapshot_server(&py);
    let snap = Snapshot::open(dir.path()).expect("open snapshot");
    let ns = PidNs::new();
    let opts = ServeOptions {
        panic_after_faults: Some(20),
        ..ServeOptions::default()
    };
    let mut r = restore_with(&snap, &ns, MemoryMode::Lazy, None, opts);
    use std::io::{BufRead, Write};
    writeln!(r.stdin, "sum 0 4096").expect("write");
    r.stdin.flush().expect("flush");
    let mut out = String::new();
    let _ = r.stdout.read_line(&mut out);
    assert_eq!(out, "", "no answer from a process whose memory server died");
    let status = nix::sys::wait::waitpid(r.pid, None).expect("wait");
    assert!(
        matches!(
            status,
            nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)
        ),
        "{status:?}"
    );
    let server = r.server.take().expect("a page server");
    assert!(server.join().is_err(), "the server thread panicked");
}
