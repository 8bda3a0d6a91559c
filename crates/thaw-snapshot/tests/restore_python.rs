//! Checkpoint a Python process that built state, restore it into a fresh
//! pid namespace with new stdio pipes, and check that the state, its pid,
//! the vDSO (clock) and its syscall restart all survived.

#[macro_use]
mod common;

#[path = "support/restore.rs"]
mod support;

use std::path::Path;

use common::{python, Interp};
use support::{error_chain, first_child, now_s, restore_with_pipes, PidNs, MODES};
use thaw_snapshot::checkpoint::checkpoint;
use thaw_snapshot::image::Snapshot;

const SCRIPT: &str = r#"
import os, sys, json, hashlib, time, random
os.closerange(3, 65536)  # descriptors leaked by the test harness (jobserver)
state = {f"k{i}": i * i for i in range(200000)}
blob = hashlib.sha256(b"x" * 1000000).hexdigest()
print(f"ready {os.getpid()}", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "get":
        print(f"val {state.get(cmd[1])}", flush=True)
    elif cmd[0] == "set":
        state[cmd[1]] = int(cmd[2])
        print("ok", flush=True)
    elif cmd[0] == "info":
        print(f"info {os.getpid()} {len(state)} {blob[:16]} {time.time():.0f} {random.random()}", flush=True)
"#;

#[test]
fn python_restores_with_state_pid_and_clock() {
    if !nix::unistd::geteuid().is_root() {
        skip!("needs root (ptrace of other processes, pid namespaces)");
    }
    let Some(py) = python() else {
        skip!("no python3");
    };
    // The original runs as pid 2 of its own pid namespace.
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
    orig.send("set extra 42");
    assert_eq!(orig.line(), "ok");
    let sh = first_child(orig.pid().as_raw() as u32);
    let py_pid = first_child(sh.as_raw() as u32);

    let dir = tempfile::tempdir().expect("tempdir");
    let stats = checkpoint(py_pid, dir.path())
        .unwrap_or_else(|e| panic!("checkpoint: {}", error_chain(&e)));
    eprintln!("checkpoint: {stats:?}");

    // The original goes on unharmed. Its first `info` draws the random
    // number every restored instance must draw too.
    orig.send("get k1000");
    assert_eq!(orig.line(), "val 1000000");
    orig.send("info");
    let orig_info = orig.line();
    let orig_info_fields: Vec<String> = orig_info.split_whitespace().map(String::from).collect();

    let snap = Snapshot::open(dir.path()).expect("open snapshot");
    for mode in MODES {
        let ns = PidNs::new();
        let mut r = restore_with_pipes(&snap, &ns, mode);
        assert_eq!(r.ask("get k1000"), "val 1000000");
        assert_eq!(r.ask("get extra"), "val 42");
        let info = r.ask("info");
        let f: Vec<&str> = info.split_whitespace().collect();
        assert_eq!(
            f[..4],
            ["info", "2", "200001", &orig_info_fields[3]],
            "{info} ({mode:?})"
        );
        assert_eq!(
            f[5], orig_info_fields[5],
            "same RNG state after restore ({mode:?})"
        );
        let t: u64 = f[4].parse().expect("time");
        assert!(
            t.abs_diff(now_s()) < 60,
            "restored clock {t} vs {}",
            now_s()
        );
        assert_eq!(r.ask("set k1 7"), "ok");
        assert_eq!(r.ask("get k1"), "val 7");
        // Lazy: pages really came from the page server.
        if let Some(stats) = r.finish() {
            eprintln!("page server: {stats:?}");
            assert!(
                stats.pages_copied > 100 && stats.chunks_verified > 0,
                "{stats:?}"
            );
        }
    }
    // The original did not see the restored instances' writes.
    orig.send("get k1");
    assert_eq!(orig.line(), "val 1");
}
