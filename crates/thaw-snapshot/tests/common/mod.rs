//! Shared helpers for the kernel tests: spawning interpreter children that
//! talk over pipes, and skipping loudly when the machine lacks something.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use nix::unistd::Pid;

/// Prints a loud skip notice and returns from the calling test; fails instead
/// when `THAW_REQUIRE_ALL=1` (as in CI).
macro_rules! skip {
    ($($arg:tt)*) => {{
        let why = format!($($arg)*);
        assert!(
            std::env::var("THAW_REQUIRE_ALL").as_deref() != Ok("1"),
            "cannot run here ({why}) and THAW_REQUIRE_ALL=1"
        );
        eprintln!("SKIP: {why}");
        return;
    }};
}

/// How long to wait for a child's line before failing the test.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(15);

/// The host Python 3.11, or any `python3` on PATH.
pub fn python() -> Option<PathBuf> {
    let pinned = Path::new("/root/.pyenv/versions/3.11.7/bin/python3.11");
    if pinned.exists() {
        return Some(pinned.to_owned());
    }
    which("python3")
}

/// Node.js, `/usr/bin/node` or on PATH.
pub fn node() -> Option<PathBuf> {
    let fixed = Path::new("/usr/bin/node");
    if fixed.exists() {
        return Some(fixed.to_owned());
    }
    which("node")
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
}

/// A child process with a line-oriented pipe on stdin/stdout, killed and
/// reaped on drop.
pub struct Interp {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Interp {
    /// Spawns `program args...` with piped stdin/stdout (stderr inherited,
    /// so interpreter errors show in the test output).
    pub fn spawn(program: &Path, args: &[&str]) -> Interp {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Interp {
            child,
            stdin,
            lines: rx,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"))
    }

    /// Waits for the next line of output.
    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(LINE_TIMEOUT)
            .unwrap_or_else(|e| panic!("no line from child {}: {e}", self.child.id()))
    }

    /// Writes one line to the child's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to child");
        stdin.flush().expect("flush child stdin");
    }
}

impl Drop for Interp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses a `0x…` hex address printed by a child.
pub fn hex_addr(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("bad hex address {s:?}"))
}

/// Whether this process may ptrace its children (root, or no Yama
/// restriction); tests skip when not.
pub fn can_ptrace() -> Result<(), String> {
    let mut child = Command::new("/bin/sleep")
        .arg("30")
        .spawn()
        .map_err(|e| format!("cannot spawn /bin/sleep: {e}"))?;
    let pid = Pid::from_raw(i32::try_from(child.id()).map_err(|e| e.to_string())?);
    let result = thaw_snapshot::ptrace::freeze(pid)
        .map(drop)
        .map_err(|e| format!("ptrace unavailable: {e}"));
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The state letter of `/proc/<tid>/stat`.
pub fn thread_state(pid: Pid, tid: Pid) -> char {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).expect("task stat");
    thaw_snapshot::proc::parse_stat(&text)
        .expect("parse stat")
        .state
}

/// Waits (up to 5 s) until thread `tid` is asleep in syscall `nr`, as
/// `/proc/<tid>/syscall` reports; a child that has just printed a line may
/// not have reached its next blocking call yet.
pub fn wait_in_syscall(tid: Pid, nr: i64) -> bool {
    let want = nr.to_string();
    for _ in 0..2500 {
        let text = std::fs::read_to_string(format!("/proc/{tid}/syscall")).unwrap_or_default();
        let sleeping = thaw_snapshot::proc::read_stat(tid).is_ok_and(|s| s.state == 'S');
        if sleeping && text.split_whitespace().next() == Some(want.as_str()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}
