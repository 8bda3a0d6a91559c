//! `thaw snapshot inspect` on a real snapshot of a live Python process:
//! the summary names what the checkpoint saw, `--verify` checks every
//! chunk, `--json` is the state, and a damaged snapshot makes the command
//! fail with a message naming the damage.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use thaw_snapshot::checkpoint::checkpoint;
use thaw_snapshot::image::{MEMORY_FILE, STATE_FILE};

const SCRIPT: &str = r#"
import os, sys
os.closerange(3, 65536)  # descriptors leaked by the test harness (jobserver)
data = bytearray(os.urandom(2 << 20))
print(f"ready {os.getpid()}", flush=True)
for line in sys.stdin:
    print(f"echo {line.strip()}", flush=True)
"#;

/// The host Python 3.11, or any `python3` on PATH.
fn python() -> Option<PathBuf> {
    let pinned = Path::new("/root/.pyenv/versions/3.11.7/bin/python3.11");
    if pinned.exists() {
        return Some(pinned.to_owned());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join("python3"))
        .find(|p| p.exists())
}

/// The first child of `pid`, waiting for it to appear.
fn first_child(pid: u32) -> Pid {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(c) = text.split_whitespace().next() {
            return Pid::from_raw(c.parse().expect("pid"));
        }
        assert!(Instant::now() < deadline, "no child of {pid}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills and reaps the child on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Checkpoints a Python line server running as pid 2 of its own pid
/// namespace into `dir`; the original is killed afterwards.
fn snapshot_python(py: &Path, dir: &Path) {
    let mut child = Reaped(
        Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--kill-child",
                "/bin/sh",
                "-c",
                "\"$0\" -c \"$1\"; exit $?",
                py.to_str().expect("utf-8 path"),
                SCRIPT,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn unshare"),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read ready");
    assert_eq!(line.trim(), "ready 2");
    let stdin = child.0.stdin.as_mut().expect("stdin");
    writeln!(stdin, "hi").expect("write");
    stdin.flush().expect("flush");
    line.clear();
    stdout.read_line(&mut line).expect("read echo");
    assert_eq!(line.trim(), "echo hi");
    let sh = first_child(child.0.id());
    let py_pid = first_child(sh.as_raw() as u32);
    // Checkpoint it asleep in read(0), waiting for the next line (it may
    // still be between printing and reading).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let syscall =
            std::fs::read_to_string(format!("/proc/{py_pid}/syscall")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{py_pid}/stat")).unwrap_or_default();
        let sleeping = stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('S'));
        if sleeping && syscall.split_whitespace().next() == Some("0") {
            break;
        }
        assert!(Instant::now() < deadline, "python never blocked in read");
        std::thread::sleep(Duration::from_millis(2));
    }
    checkpoint(py_pid, dir).unwrap_or_else(|e| panic!("checkpoint: {e:?}"));
}

fn thaw(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(args)
        .output()
        .expect("run thaw");
    eprintln!(
        "thaw {}: {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn inspect_summarises_verifies_and_refuses_damage() {
    if !common::can_run("inspect_summarises_verifies_and_refuses_damage") {
        return;
    }
    let Some(py) = python() else {
        common::skip(
            "inspect_summarises_verifies_and_refuses_damage",
            "no python3",
        );
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("snap");
    snapshot_python(&py, &dir);
    let dir_s = dir.to_str().expect("utf-8 path");

    // The summary, with every chunk verified.
    let out = thaw(&["snapshot", "inspect", dir_s, "--verify"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let line = |prefix: &str| -> String {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in\n{text}"))
            .trim()
            .to_owned()
    };
    assert_eq!(line("format version"), "format version  1");
    assert!(line("created").contains('T') && line("created").contains("Z ("));
    assert!(line("kernel").len() > "kernel".len() + 2);
    assert!(line("xstate").contains("xcr0 0x"));
    assert_eq!(line("pid"), "pid             2");
    assert!(line("comm").contains("python"));
    assert!(line("exe").contains("python"));
    assert!(line("uid").starts_with("uid             0 "));
    // The main thread sleeps in read(0) waiting for the next line; its
    // saved registers are rewound to re-enter it.
    let main_thread = line("tid 2 ");
    assert!(
        main_thread.contains("not in a syscall (resumes by entering read (0))"),
        "{main_thread}"
    );
    assert!(main_thread.contains("rip 0x"), "{main_thread}");
    assert!(main_thread.contains("rseq"), "{main_thread}");
    assert!(line("mappings (").contains("MiB total"));
    assert!(line("file ").split_whitespace().nth(1).is_some());
    assert!(line("data pages").contains("MiB"));
    assert!(line("chunks").contains("of 256 pages"));
    assert!(line("image size").contains("MiB (memory.thaw)"));
    assert!(line("verified").contains("chunk checksums match"));
    assert!(line("fds (").starts_with("fds ("));
    assert!(line("0 ").contains("external pipe:["), "{}", line("0 "));
    assert_eq!(line("seccomp filters"), "seccomp filters 0");

    // --json is the state itself.
    let out = thaw(&["snapshot", "inspect", dir_s, "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["format_version"], 1);
    assert_eq!(v["process"]["pid"], 2);

    // One flipped bit in a memory page: the headers are fine, so plain
    // inspect succeeds; --verify finds the chunk.
    let bad = tmp.path().join("bad-memory");
    copy_snapshot(&dir, &bad);
    let mem = bad.join(MEMORY_FILE);
    let mut bytes = std::fs::read(&mem).expect("read");
    bytes[4096 + 100] ^= 1;
    std::fs::write(&mem, bytes).expect("write");
    let bad_s = bad.to_str().expect("utf-8");
    assert!(thaw(&["snapshot", "inspect", bad_s]).status.success());
    let out = thaw(&["snapshot", "inspect", bad_s, "--verify"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("failed verification"), "{err}");
    assert!(
        err.contains("memory.thaw: checksum mismatch in memory chunk 0"),
        "{err}"
    );

    // A truncated state file is refused outright.
    let bad = tmp.path().join("bad-state");
    copy_snapshot(&dir, &bad);
    let state = bad.join(STATE_FILE);
    let len = std::fs::metadata(&state).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .expect("open")
        .set_len(len - 10)
        .expect("truncate");
    let out = thaw(&["snapshot", "inspect", bad.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not usable"), "{err}");
    assert!(
        err.contains(&format!(
            "state.thaw is truncated or padded: {} bytes, expected {len}",
            len - 10
        )),
        "{err}"
    );

    // Not a snapshot at all.
    let out = thaw(&["snapshot", "inspect", tmp.path().to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("state.thaw: No such file or directory"),
        "{err}"
    );
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

fn copy_snapshot(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for name in [STATE_FILE, MEMORY_FILE] {
        std::fs::copy(from.join(name), to.join(name)).expect("copy");
    }
}
