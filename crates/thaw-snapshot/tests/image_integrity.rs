//! A damaged snapshot is refused before anything acts on it.
//!
//! One real snapshot of a live Python process (pid 2 of its own pid
//! namespace, as in `restore_python.rs`) is taken once; each case copies it,
//! damages the copy in one specific way (truncation, a flipped bit, another
//! format version, bad magic, a body that disagrees with its header) and
//! checks that [`Snapshot::open`] or [`restore`] fails with the matching
//! [`ImageError`] variant and a message that names the problem. Restore
//! attempts run on their own thread, which must have no child process
//! (running or zombie) once the attempt has failed.

#[macro_use]
mod common;

#[path = "support/restore.rs"]
mod support;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use serde_json::Value;
use thaw_snapshot::checkpoint::checkpoint;
use thaw_snapshot::image::{ImageError, Snapshot, MEMORY_FILE, STATE_FILE};
use thaw_snapshot::restore::{restore, MemoryMode, RestoreError, RestoreOptions};
use thaw_snapshot::state::{FdKind, VmaKind, FORMAT_VERSION};
use thaw_snapshot::PAGE_SIZE;

use common::{python, Interp};
use support::{error_chain, first_child, PidNs};

/// Small but spread over several memory chunks: 3 MiB of random bytes are
/// 768 pages that are neither zero nor shared.
const SCRIPT: &str = r#"
import os, sys
os.closerange(3, 65536)  # descriptors leaked by the test harness (jobserver)
data = bytearray(os.urandom(3 << 20))
print(f"ready {os.getpid()}", flush=True)
for line in sys.stdin:
    print(f"echo {line.strip()} {len(data)}", flush=True)
"#;

/// Size of the state file header: magic, version, reserved, body length,
/// BLAKE3 of the body.
const STATE_HEADER: usize = 8 + 4 + 4 + 8 + 32;

/// The pristine snapshot every case copies, or why there is none.
fn pristine() -> Result<&'static Path, String> {
    static SNAP: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    SNAP.get_or_init(make_pristine)
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(Clone::clone)
}

fn make_pristine() -> Result<PathBuf, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (ptrace of other processes, pid namespaces)".into());
    }
    let py = python().ok_or("no python3")?;
    // Under the target directory, one per test process; leftovers of
    // earlier runs (whose process is gone) are removed.
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    if let Ok(rd) = std::fs::read_dir(base) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("image_integrity-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let dir = base.join(format!("image_integrity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let mut orig = Interp::spawn(
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
    assert_eq!(orig.line(), "ready 2");
    orig.send("hi");
    assert_eq!(orig.line(), format!("echo hi {}", 3 << 20));
    let sh = first_child(orig.pid().as_raw() as u32);
    let py_pid = first_child(sh.as_raw() as u32);
    let stats =
        checkpoint(py_pid, &dir).unwrap_or_else(|e| panic!("checkpoint: {}", error_chain(&e)));
    eprintln!("checkpoint: {stats:?}");
    drop(orig);

    let snap = Snapshot::open(&dir).expect("the pristine snapshot opens");
    let chunks = snap.state().memory.chunk_hashes.len();
    assert!(chunks >= 3, "want several chunks, got {chunks}");
    snap.read_all_pages()
        .expect("the pristine snapshot verifies");
    Ok(dir)
}

/// Returns the pristine snapshot's path, or skips the calling test.
macro_rules! pristine_or_skip {
    () => {
        match pristine() {
            Ok(p) => p,
            Err(why) => skip!("{why}"),
        }
    };
}

/// A private copy of the pristine snapshot.
fn copy_of(src: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in [STATE_FILE, MEMORY_FILE] {
        std::fs::copy(src.join(name), dir.path().join(name)).expect("copy snapshot file");
    }
    dir
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for truncation")
        .set_len(len)
        .expect("truncate");
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

/// Flips bit `bit` of the byte at `offset`.
fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[offset as usize] ^= 1 << bit;
    std::fs::write(path, bytes).expect("write");
}

fn patch_u32(path: &Path, offset: usize, value: u32) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(path, bytes).expect("write");
}

/// The JSON body of a state file.
fn state_body(path: &Path) -> Value {
    let bytes = std::fs::read(path).expect("read state");
    serde_json::from_slice(&bytes[STATE_HEADER..]).expect("state body is JSON")
}

/// Writes a state file with a correct header (length and checksum) for
/// `body`, claiming format `version`.
fn write_state(path: &Path, version: u32, body: &[u8]) {
    let mut f = Vec::with_capacity(STATE_HEADER + body.len());
    f.extend_from_slice(b"THAWSTAT");
    f.extend_from_slice(&version.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&(body.len() as u64).to_le_bytes());
    f.extend_from_slice(blake3::hash(body).as_bytes());
    f.extend_from_slice(body);
    std::fs::write(path, f).expect("write state");
}

fn open_err(dir: &Path) -> ImageError {
    match Snapshot::open(dir) {
        Ok(_) => panic!("{} opened although it is damaged", dir.display()),
        Err(e) => {
            eprintln!("refused as expected: {e}");
            e
        }
    }
}

#[test]
fn truncated_state_is_refused() {
    let base = pristine_or_skip!();
    let full = file_len(&base.join(STATE_FILE));
    let header = STATE_HEADER as u64;
    // (length, what the reader must say it expected)
    let cases = [
        (0, header),
        (1, header),
        (20, header),
        (header - 1, header),
        (header, full),
        (header + 1, full),
        (full / 2, full),
        (full - 1, full),
    ];
    for (len, expected_len) in cases {
        let dir = copy_of(base);
        let path = dir.path().join(STATE_FILE);
        truncate(&path, len);
        let e = open_err(dir.path());
        match &e {
            ImageError::Truncated {
                path: p,
                expected,
                found,
            } => {
                assert_eq!(p, &path);
                assert_eq!((*expected, *found), (expected_len, len), "length {len}");
            }
            other => panic!("state truncated to {len}: want Truncated, got {other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("state.thaw")
                && msg.contains("truncated")
                && msg.contains(&format!("{len} bytes, expected {expected_len}")),
            "{msg}"
        );
    }
    // Padding is refused the same way.
    let dir = copy_of(base);
    let path = dir.path().join(STATE_FILE);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.push(b'\n');
    std::fs::write(&path, bytes).expect("write");
    assert!(matches!(
        open_err(dir.path()),
        ImageError::Truncated { expected, found, .. } if expected == full && found == full + 1
    ));
}

#[test]
fn truncated_memory_is_refused() {
    let base = pristine_or_skip!();
    let full = file_len(&base.join(MEMORY_FILE));
    assert_eq!(full % PAGE_SIZE, 0);
    for (len, expected_len) in [
        (full - PAGE_SIZE, full),
        (full - 1, full),
        (full + 1, full),
        (PAGE_SIZE, full),
        (100, PAGE_SIZE),
        (0, PAGE_SIZE),
    ] {
        let dir = copy_of(base);
        let path = dir.path().join(MEMORY_FILE);
        if len > full {
            let mut bytes = std::fs::read(&path).expect("read");
            bytes.push(0);
            std::fs::write(&path, bytes).expect("write");
        } else {
            truncate(&path, len);
        }
        let e = open_err(dir.path());
        match &e {
            ImageError::Truncated {
                path: p,
                expected,
                found,
            } => {
                assert_eq!(p, &path);
                assert_eq!((*expected, *found), (expected_len, len), "length {len}");
            }
            other => panic!("memory of {len} bytes: want Truncated, got {other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("memory.thaw")
                && msg.contains("truncated")
                && msg.contains(&format!("{len} bytes, expected {expected_len}")),
            "{msg}"
        );
    }
}

#[test]
fn flipped_bit_in_state_fails_its_checksum() {
    let base = pristine_or_skip!();
    let full = file_len(&base.join(STATE_FILE));
    let header = STATE_HEADER as u64;
    // First and last body byte, one in the middle, and the stored hash.
    for (offset, bit) in [
        (header, 0),
        (header + (full - header) / 2, 3),
        (full - 1, 7),
        (30, 1),
    ] {
        let dir = copy_of(base);
        let path = dir.path().join(STATE_FILE);
        flip_bit(&path, offset, bit);
        let e = open_err(dir.path());
        match &e {
            ImageError::Checksum { path: p, what } => {
                assert_eq!(p, &path);
                assert_eq!(what, "state");
            }
            other => panic!("bit flipped at {offset}: want Checksum, got {other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("state.thaw") && msg.contains("checksum mismatch in state"),
            "{msg}"
        );
    }
}

#[test]
fn flipped_bit_in_memory_fails_that_chunk_on_read_and_restore() {
    let base = pristine_or_skip!();
    let snap = Snapshot::open(base).expect("open pristine");
    let idx = snap.state().memory.clone();
    let chunks = idx.chunk_hashes.len();
    let ns = PidNs::new();
    // The first data page of the first chunk, a page in the middle of a
    // middle chunk, and the last byte of the image (last chunk).
    let middle_page = u64::from(idx.chunk_pages) * (chunks as u64 / 2) + 7;
    for (page, byte, bit) in [
        (0, 0, 0),
        (middle_page, 2049, 4),
        (idx.data_pages - 1, PAGE_SIZE - 1, 7),
    ] {
        let chunk = (page / u64::from(idx.chunk_pages)) as usize;
        let dir = copy_of(base);
        let path = dir.path().join(MEMORY_FILE);
        flip_bit(&path, (page + 1) * PAGE_SIZE + byte, bit);

        // Opening only checks headers and sizes: it succeeds.
        let snap = Snapshot::open(dir.path()).expect("open with a damaged page");
        for i in 0..chunks {
            let r = snap.read_chunk(i);
            if i == chunk {
                let e = r.expect_err("damaged chunk verifies");
                assert_checksum_of_chunk(&e, &path, chunk);
            } else {
                r.unwrap_or_else(|e| panic!("intact chunk {i} refused: {e}"));
            }
        }
        let e = snap.read_all_pages().expect_err("read_all_pages verifies");
        assert_checksum_of_chunk(&e, &path, chunk);

        match restore_attempt(&snap, &ns) {
            RestoreError::Image(e) => assert_checksum_of_chunk(&e, &path, chunk),
            other => panic!("want Image(Checksum), got {}", error_chain(&other)),
        }
    }
}

fn assert_checksum_of_chunk(e: &ImageError, path: &Path, chunk: usize) {
    match e {
        ImageError::Checksum { path: p, what } => {
            assert_eq!(p, path);
            assert_eq!(what, &format!("memory chunk {chunk}"));
        }
        other => panic!("want Checksum of chunk {chunk}, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("memory.thaw")
            && msg.contains(&format!("checksum mismatch in memory chunk {chunk}")),
        "{msg}"
    );
}

#[test]
fn other_format_version_is_refused() {
    let base = pristine_or_skip!();
    for (file, found) in [
        (STATE_FILE, FORMAT_VERSION + 1),
        (STATE_FILE, 0),
        (MEMORY_FILE, FORMAT_VERSION + 1),
        (MEMORY_FILE, u32::MAX),
    ] {
        let dir = copy_of(base);
        let path = dir.path().join(file);
        patch_u32(&path, 8, found);
        let e = open_err(dir.path());
        match &e {
            ImageError::Version {
                path: p,
                found: f,
                supported,
            } => {
                assert_eq!(p, &path);
                assert_eq!((*f, *supported), (found, FORMAT_VERSION));
            }
            other => panic!("{file} version {found}: want Version, got {other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains(file)
                && msg.contains(&format!(
                    "snapshot format version {found}; this build reads version {FORMAT_VERSION}"
                )),
            "{msg}"
        );
    }
}

#[test]
fn bad_magic_is_refused() {
    let base = pristine_or_skip!();
    for (file, offset) in [
        (STATE_FILE, 0),
        (STATE_FILE, 7),
        (MEMORY_FILE, 0),
        (MEMORY_FILE, 7),
    ] {
        let dir = copy_of(base);
        let path = dir.path().join(file);
        flip_bit(&path, offset, 5);
        let e = open_err(dir.path());
        match &e {
            ImageError::BadMagic { path: p } => assert_eq!(p, &path),
            other => panic!("{file} magic byte {offset}: want BadMagic, got {other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains(file) && msg.contains("not a thaw snapshot file (bad magic)"),
            "{msg}"
        );
    }
    // Something else entirely under the right name.
    let dir = copy_of(base);
    std::fs::write(dir.path().join(STATE_FILE), vec![b'{'; 4096]).expect("write");
    assert!(matches!(open_err(dir.path()), ImageError::BadMagic { .. }));
}

#[test]
fn body_disagreeing_with_header_is_inconsistent() {
    let base = pristine_or_skip!();
    let dir = copy_of(base);
    let path = dir.path().join(STATE_FILE);
    let mut body = state_body(&path);
    assert_eq!(body["format_version"], FORMAT_VERSION);
    body["format_version"] = Value::from(FORMAT_VERSION + 1);
    write_state(
        &path,
        FORMAT_VERSION,
        &serde_json::to_vec(&body).expect("json"),
    );
    let e = open_err(dir.path());
    match &e {
        ImageError::Inconsistent { path: p, why } => {
            assert_eq!(p, &path);
            assert!(why.contains("format version"), "{why}");
        }
        other => panic!("want Inconsistent, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("state.thaw")
            && msg.contains("header and body disagree on the format version"),
        "{msg}"
    );

    // A state that indexes one page fewer than the memory image holds.
    let dir = copy_of(base);
    let path = dir.path().join(STATE_FILE);
    let mut body = state_body(&path);
    let pages = body["memory"]["data_pages"].as_u64().expect("data_pages");
    body["memory"]["data_pages"] = Value::from(pages - 1);
    write_state(
        &path,
        FORMAT_VERSION,
        &serde_json::to_vec(&body).expect("json"),
    );
    match open_err(dir.path()) {
        ImageError::Inconsistent { path: p, why } => {
            assert_eq!(p, dir.path().join(MEMORY_FILE));
            assert!(
                why.contains(&format!(
                    "holds {pages} pages, the state indexes {}",
                    pages - 1
                )),
                "{why}"
            );
        }
        other => panic!("want Inconsistent, got {other:?}"),
    }
}

#[test]
fn checksummed_garbage_state_is_malformed() {
    let base = pristine_or_skip!();
    let dir = copy_of(base);
    let path = dir.path().join(STATE_FILE);
    let mut body = state_body(&path);
    body.as_object_mut().expect("object").remove("process");
    write_state(
        &path,
        FORMAT_VERSION,
        &serde_json::to_vec(&body).expect("json"),
    );
    let e = open_err(dir.path());
    assert!(
        matches!(&e, ImageError::Malformed { path: p, .. } if p == &path),
        "{e:?}"
    );
    let msg = e.to_string();
    let cause = std::error::Error::source(&e)
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(
        msg.contains("malformed state") && cause.contains("process"),
        "{msg}: {cause}"
    );
}

/// A snapshot that passes every image check but names a file that changed
/// since the checkpoint: the restore fails only after its stub exists, and
/// the stub must be gone afterwards too.
#[test]
fn restore_failing_after_the_stub_exists_leaves_no_process() {
    let base = pristine_or_skip!();
    let dir = copy_of(base);
    let path = dir.path().join(STATE_FILE);
    let mut body = state_body(&path);
    let mappings = body["process"]["mappings"]
        .as_array_mut()
        .expect("mappings");
    let file = mappings
        .iter_mut()
        .find_map(|m| m["kind"].get_mut("File"))
        .expect("a file mapping");
    let changed = file["path"].as_str().expect("path").to_owned();
    let mtime = file["identity"]["mtime_ns"].as_i64().expect("mtime");
    file["identity"]["mtime_ns"] = Value::from(mtime + 1);
    write_state(
        &path,
        FORMAT_VERSION,
        &serde_json::to_vec(&body).expect("json"),
    );
    let snap = Snapshot::open(dir.path()).expect("opens: the image itself is sound");
    assert!(snap
        .state()
        .process
        .mappings
        .iter()
        .any(|v| matches!(&v.kind, VmaKind::File { path, .. } if path == Path::new(&changed))));
    let ns = PidNs::new();
    match restore_attempt(&snap, &ns) {
        RestoreError::FileChanged { path } => assert_eq!(path, Path::new(&changed)),
        other => panic!("want FileChanged, got {}", error_chain(&other)),
    }
}

/// Runs one restore of `snap` that must fail, on a fresh thread, and
/// checks that it left no child (running or zombie) of that thread.
fn restore_attempt(snap: &Snapshot, ns: &PidNs) -> RestoreError {
    let ns_fd = ns.ns.as_fd();
    let e = std::thread::scope(|s| {
        s.spawn(|| {
            let tid = nix::unistd::gettid();
            assert_eq!(children_of(tid), Vec::<Pid>::new(), "fresh thread");
            let result = restore_on_pipes(snap, ns_fd);
            let e = match result {
                Ok(pid) => {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                    panic!("restore of a damaged snapshot succeeded (pid {pid})");
                }
                Err(e) => e,
            };
            eprintln!("restore refused as expected: {}", error_chain(&e));
            // No child of this thread is left, not even a zombie: the
            // restore killed and reaped its stub.
            assert_eq!(
                children_of(tid),
                Vec::<Pid>::new(),
                "restore left a child behind"
            );
            let flags = WaitPidFlag::WNOHANG | WaitPidFlag::__WNOTHREAD;
            match waitpid(Pid::from_raw(-1), Some(flags)) {
                Err(Errno::ECHILD) => {}
                other => panic!("restore left a child behind: waitpid gave {other:?}"),
            }
            e
        })
        .join()
        .expect("restore thread")
    });
    // Nor is any process left in the target pid namespace besides its init.
    let members = ns_members(ns);
    assert_eq!(
        members.len(),
        1,
        "processes in the restore's pid namespace: {members:?}"
    );
    e
}

/// Every process whose pid namespace is `ns`'s.
fn ns_members(ns: &PidNs) -> Vec<String> {
    let ino = std::os::unix::fs::MetadataExt::ino(&ns.ns.metadata().expect("stat pid ns"));
    let want = format!("pid:[{ino}]");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_link(e.path().join("ns/pid"))
                .is_ok_and(|l| l.as_os_str() == want.as_str())
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Restores `snap` with new pipes for its external descriptors; the pipes
/// are closed again when this returns.
fn restore_on_pipes(snap: &Snapshot, ns: BorrowedFd<'_>) -> Result<Pid, RestoreError> {
    let mut owned: Vec<(i32, OwnedFd)> = Vec::new();
    for f in &snap.state().process.fds {
        if let FdKind::External { .. } = f.kind {
            let (r, w) = nix::unistd::pipe().expect("pipe");
            owned.push((f.fd, if f.fd == 0 { r } else { w }));
        }
    }
    let opts = RestoreOptions {
        pid_ns: Some(ns),
        namespaces: Vec::new(),
        fds: owned.iter().map(|(n, fd)| (*n, fd.as_fd())).collect(),
        cgroup_procs: Vec::new(),
        memory: MemoryMode::Eager,
        working_set: None,
    };
    restore(snap, &opts).map(|r| r.pid)
}

/// The children of thread `tid` of this process.
fn children_of(tid: Pid) -> Vec<Pid> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/children"))
        .expect("children")
        .split_whitespace()
        .map(|c| Pid::from_raw(c.parse().expect("pid")))
        .collect()
}

/// Not a damage case: the pristine snapshot restores (so the refusals above
/// are about the damage, not about a snapshot that could never restore).
#[test]
fn pristine_copy_restores() {
    let base = pristine_or_skip!();
    let dir = copy_of(base);
    let snap = Snapshot::open(dir.path()).expect("open");
    let ns = PidNs::new();
    for mode in support::MODES {
        let ns = PidNs::new();
        let mut r = support::restore_with_pipes(&snap, &ns, mode);
        assert_eq!(
            r.ask("again"),
            format!("echo again {}", 3 << 20),
            "{mode:?}"
        );
    }
    drop(ns);
}
