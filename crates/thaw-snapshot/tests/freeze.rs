//! `freeze` edge cases: a thread list that keeps changing, a sleep that
//! holds `-ERESTART_RESTARTBLOCK`, a process already group-stopped, and the
//! xstate size of a plain process against CPUID.

#[macro_use]
mod common;

use std::process::Command;

use common::{python, Interp};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use thaw_snapshot::cpu::CpuFeatures;
use thaw_snapshot::proc;
use thaw_snapshot::ptrace::{freeze, StopKind, SyscallState};

struct Sleeper(std::process::Child);

impl Sleeper {
    fn spawn() -> Sleeper {
        Sleeper(
            Command::new("/bin/sleep")
                .arg("60")
                .spawn()
                .expect("spawn sleep"),
        )
    }
    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.0.id()).expect("pid fits"))
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_state(pid: Pid, want: impl Fn(char) -> bool) -> char {
    for _ in 0..500 {
        let s = proc::read_stat(pid).expect("stat").state;
        if want(s) {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    proc::read_stat(pid).expect("stat").state
}

#[test]
fn sleep_holds_restart_block_and_keeps_running() {
    if let Err(why) = common::can_ptrace() {
        skip!("{why}");
    }
    let sleeper = Sleeper::spawn();
    let pid = sleeper.pid();
    assert!(
        common::wait_in_syscall(pid, libc::SYS_clock_nanosleep),
        "sleep reaches clock_nanosleep"
    );
    let frozen = freeze(pid).expect("freeze sleep");
    let t = &frozen.threads()[0];
    let regs = t.regs().expect("regs");
    let state = regs.syscall_state();
    eprintln!("sleep: {state:?}");
    assert_eq!(
        state,
        SyscallState::RestartBlock {
            nr: libc::SYS_clock_nanosleep
        }
    );
    let cpu = CpuFeatures::host().expect("cpu");
    let xstate = t.xstate().expect("xstate");
    assert_eq!(xstate.len(), cpu.xstate_size as usize);
    // The non-compacted size is the end of the last enabled component.
    let computed = cpu
        .components
        .iter()
        .map(|c| c.offset + c.size)
        .max()
        .unwrap_or(576);
    assert_eq!(
        cpu.xstate_size, computed,
        "CPUID size = end of last component"
    );
    eprintln!(
        "cpu: {} family {:#x} model {:#x}, XCR0 {:#x}, xstate {} bytes (max {}), AVX-512 {}",
        cpu.vendor,
        cpu.family,
        cpu.model,
        cpu.xcr0,
        cpu.xstate_size,
        cpu.xstate_max_size,
        if cpu.has_avx512() {
            "enabled"
        } else {
            "NOT enabled on this CPU"
        }
    );
    frozen.thaw().expect("thaw");
    // After detach the kernel restarts the sleep through restart_syscall.
    assert_eq!(
        wait_for_state(pid, |s| s == 'S'),
        'S',
        "sleep goes back to sleep"
    );
    assert_eq!(proc::read_status(pid).expect("status").tracer_pid, 0);
}

#[test]
fn group_stopped_process_stays_stopped() {
    if let Err(why) = common::can_ptrace() {
        skip!("{why}");
    }
    let sleeper = Sleeper::spawn();
    let pid = sleeper.pid();
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    assert_eq!(wait_for_state(pid, |s| s == 'T'), 'T');
    let frozen = freeze(pid).expect("freeze stopped process");
    assert_eq!(
        frozen.threads()[0].stop_kind(),
        Some(StopKind::GroupStop(Signal::SIGSTOP))
    );
    frozen.thaw().expect("thaw");
    assert_eq!(
        wait_for_state(pid, |s| s == 'T'),
        'T',
        "still group-stopped"
    );
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    assert_eq!(wait_for_state(pid, |s| s == 'S'), 'S', "runs after SIGCONT");
}

#[test]
fn freeze_settles_while_threads_come_and_go() {
    if let Err(why) = common::can_ptrace() {
        skip!("{why}");
    }
    let Some(py) = python() else {
        skip!("python3 not found");
    };
    let script = r#"
import sys, threading, time
def work():
    time.sleep(0.0005)
print("ready", flush=True)
while True:
    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts: t.start()
    for t in ts: t.join()
"#;
    let child = Interp::spawn(&py, &["-c", script]);
    assert_eq!(child.line(), "ready");
    let pid = child.pid();
    let mut max_threads = 0;
    for _ in 0..50 {
        let frozen = freeze(pid).expect("freeze churning process");
        let tids: Vec<Pid> = {
            let mut v: Vec<Pid> = frozen.threads().iter().map(|t| t.tid()).collect();
            v.sort();
            v
        };
        // With every thread stopped the list cannot grow, and apart from
        // threads already exiting (not yet reaped) it is exactly what we hold.
        let live: Vec<Pid> = proc::task_ids(pid)
            .expect("tasks")
            .into_iter()
            .filter(|t| proc::read_stat(*t).is_ok_and(|s| !matches!(s.state, 'Z' | 'X')))
            .collect();
        assert_eq!(live, tids);
        for tid in &tids {
            assert_eq!(common::thread_state(pid, *tid), 't', "thread {tid} stopped");
        }
        max_threads = max_threads.max(tids.len());
        frozen.thaw().expect("thaw");
    }
    eprintln!("churn: froze 50 times, up to {max_threads} threads at once");
    assert_eq!(proc::read_status(pid).expect("status").tracer_pid, 0);
    assert!(
        wait_for_state(pid, |s| s != 'Z' && s != 'X') != 'Z',
        "still alive"
    );
}
