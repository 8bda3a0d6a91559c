//! Checkpoint an idle, multi-threaded Node.js process that built state
//! (a large array, required modules, JIT-compiled hot code, pending timers)
//! and restore it into a fresh pid namespace: every thread comes back with
//! its exact id, libuv's epoll/eventfd/pipe wake-up machinery works (timers
//! fire, stdin lines arrive), and the state is intact.

#[macro_use]
mod common;
#[path = "support/restore.rs"]
mod support;

use std::path::Path;

use common::{node, Interp};
use support::{error_chain, first_child, now_s, restore_with_pipes, PidNs, MODES};
use thaw_snapshot::checkpoint::checkpoint;
use thaw_snapshot::image::Snapshot;

const SCRIPT: &str = r#"
const crypto = require('crypto');
const zlib = require('zlib');
const big = Array.from({ length: 1000000 }, (_, i) => i * 3);
function hot(n) { let s = 0; for (let i = 0; i < n; i++) s = (s + i * i) % 1000003; return s; }
for (let i = 0; i < 2000; i++) hot(1000);
let ticks = 0;
setInterval(() => { ticks++; }, 20);
const digest = crypto.createHash('sha256').update(zlib.gzipSync(Buffer.from('thaw'.repeat(1000)))).digest('hex');
const rl = require('readline').createInterface({ input: process.stdin });
rl.on('line', (l) => {
  const [cmd, a] = l.split(' ');
  if (cmd === 'get') console.log(`val ${big[Number(a)]}`);
  else if (cmd === 'set') { big[0] = Number(a); console.log('ok'); }
  else if (cmd === 'info') console.log(`info ${process.pid} ${big.length} ${digest.slice(0, 16)} ${Math.floor(Date.now() / 1000)} ${hot(100000)}`);
  else if (cmd === 'ticks') { const t0 = ticks; setTimeout(() => console.log(`ticked ${ticks > t0}`), 200); }
  else if (cmd === 'later') setTimeout(() => console.log('later done'), 50);
});
console.log(`ready ${process.pid}`);
"#;

#[test]
fn node_restores_with_threads_timers_and_state() {
    if !nix::unistd::geteuid().is_root() {
        skip!("needs root (ptrace of other processes, pid namespaces)");
    }
    let Some(node) = node() else {
        skip!("no node");
    };
    let mut orig = Interp::spawn(
        Path::new("unshare"),
        &[
            "--pid",
            "--fork",
            "--kill-child",
            "/bin/bash",
            "-c",
            // Close what the test harness leaks (cargo's jobserver pipe).
            "for fd in /proc/self/fd/*; do fd=${fd##*/}; [ \"$fd\" -gt 2 ] && eval \"exec $fd>&-\"; done 2>/dev/null; \"$0\" -e \"$1\"; exit $?",
            node.to_str().expect("utf-8 path"),
            SCRIPT,
        ],
    );
    assert_eq!(orig.line(), "ready 2");
    orig.send("set 5");
    assert_eq!(orig.line(), "ok");
    // Let V8's platform workers park.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let sh = first_child(orig.pid().as_raw() as u32);
    let node_pid = first_child(sh.as_raw() as u32);

    let dir = tempfile::tempdir().expect("tempdir");
    let stats = checkpoint(node_pid, dir.path())
        .unwrap_or_else(|e| panic!("checkpoint: {}", error_chain(&e)));
    eprintln!("checkpoint: {stats:?}");
    assert!(stats.threads > 1, "node is multi-threaded");

    orig.send("get 10");
    assert_eq!(orig.line(), "val 30");

    let snap = Snapshot::open(dir.path()).expect("open snapshot");
    orig.send("info");
    let orig_info = orig.line();
    let o: Vec<&str> = orig_info.split_whitespace().collect();
    let tids: Vec<i32> = snap.state().process.threads.iter().map(|t| t.tid).collect();
    for mode in MODES {
        let ns = PidNs::new();
        let mut r = restore_with_pipes(&snap, &ns, mode);
        assert_eq!(r.ask("get 10"), "val 30");
        assert_eq!(r.ask("get 0"), "val 5");
        let info = r.ask("info");
        let f: Vec<&str> = info.split_whitespace().collect();
        assert_eq!(
            f[..4],
            ["info", "2", "1000000", o[3]],
            "{info} vs {orig_info} ({mode:?})"
        );
        assert_eq!(f[5], o[5], "hot function computes the same");
        let t: u64 = f[4].parse().expect("time");
        assert!(
            t.abs_diff(now_s()) < 60,
            "restored clock {t} vs {}",
            now_s()
        );
        assert_eq!(
            r.ask("ticks"),
            "ticked true",
            "the interval timer keeps firing"
        );
        assert_eq!(r.ask("later"), "later done", "new timers fire");
        // Every thread is back with its id, in the restored process.
        let restored_tids: Vec<i32> = std::fs::read_dir(format!("/proc/{}/task", r.pid))
            .expect("task dir")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .map(|host_tid| {
                let status =
                    std::fs::read_to_string(format!("/proc/{}/task/{host_tid}/status", r.pid))
                        .expect("status");
                let nspid = status
                    .lines()
                    .find(|l| l.starts_with("NSpid:"))
                    .expect("NSpid");
                nspid
                    .split_whitespace()
                    .last()
                    .expect("ns tid")
                    .parse()
                    .expect("tid")
            })
            .collect();
        let mut want = tids.clone();
        want.sort_unstable();
        let mut got = restored_tids;
        got.sort_unstable();
        assert_eq!(got, want, "thread ids restored exactly ({mode:?})");
        assert_eq!(r.ask("set 9"), "ok");
        if let Some(stats) = r.finish() {
            eprintln!("page server: {stats:?}");
            assert!(stats.pages_copied > 100, "{stats:?}");
        }
    }
    orig.send("get 0");
    assert_eq!(
        orig.line(),
        "val 5",
        "the original does not see the restored writes"
    );
}
