//! `thaw-sandbox-run`: run one command in a sandbox built from a spec file. A
//! debugging tool and the vehicle of the crate's integration tests; the daemon
//! does not use it.
//!
//! ```text
//! thaw-sandbox-run SPEC.json [OPTIONS] -- /ABS/CMD [ARGS...]
//!
//!   --join-cgroup DIR     write our pid to DIR/cgroup.procs before entering
//!                         (repeatable: one per v1 controller)
//!   --cgroup-parent P     create a cgroup P/run-<pid> for this run and remove it
//!                         afterwards; limits from:
//!   --memory-mb N         memory limit (default 512)
//!   --pids N              pids.max (default 256)
//!   --cpu-shares N        cpu.shares (default 1024)
//!   --env K=V             environment of CMD (repeatable; besides PATH and HOME)
//! ```
//!
//! Exit status: CMD's, 128+signal if it was killed, 125 if the sandbox could
//! not be built, 126/127 if CMD could not be executed.

use std::error::Error;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use thaw_sandbox::{enter, CgroupParent, Limits, SandboxSpec};

const EXIT_SETUP: i32 = 125;

struct Args {
    spec: PathBuf,
    join: Vec<PathBuf>,
    cgroup_parent: Option<String>,
    limits: Limits,
    env: Vec<(String, String)>,
    command: Vec<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: thaw-sandbox-run SPEC.json [--join-cgroup DIR]... [--cgroup-parent P \
         [--memory-mb N] [--pids N] [--cpu-shares N]] [--env K=V]... -- /ABS/CMD [ARGS...]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let Some(spec) = it.next() else { usage() };
    let mut args = Args {
        spec: spec.into(),
        join: Vec::new(),
        cgroup_parent: None,
        limits: Limits {
            memory_bytes: 512 << 20,
            cpu_shares: 1024,
            pids_max: 256,
        },
        env: Vec::new(),
        command: Vec::new(),
    };
    let number =
        |v: Option<String>| -> u64 { v.and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()) };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--join-cgroup" => args.join.push(it.next().unwrap_or_else(|| usage()).into()),
            "--cgroup-parent" => args.cgroup_parent = Some(it.next().unwrap_or_else(|| usage())),
            "--memory-mb" => args.limits.memory_bytes = number(it.next()) << 20,
            "--pids" => args.limits.pids_max = number(it.next()),
            "--cpu-shares" => args.limits.cpu_shares = number(it.next()),
            "--env" => {
                let kv = it.next().unwrap_or_else(|| usage());
                let Some((k, v)) = kv.split_once('=') else {
                    usage()
                };
                args.env.push((k.to_string(), v.to_string()));
            }
            "--" => {
                args.command = it.by_ref().collect();
                break;
            }
            _ => usage(),
        }
    }
    if args.command.first().is_none_or(|c| !c.starts_with('/')) {
        usage();
    }
    args
}

fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn fail(what: &str, e: &dyn Error) -> ! {
    eprintln!("thaw-sandbox-run: {what}: {}", chain(e));
    std::process::exit(EXIT_SETUP)
}

fn main() {
    let args = parse_args();
    let text = fs::read_to_string(&args.spec).unwrap_or_else(|e| fail("cannot read the spec", &e));
    let spec: SandboxSpec =
        serde_json::from_str(&text).unwrap_or_else(|e| fail("cannot parse the spec", &e));

    if let Some(parent) = &args.cgroup_parent {
        run_in_own_cgroup(parent, &args.limits);
    }
    for dir in &args.join {
        fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .unwrap_or_else(|e| fail(&format!("cannot join cgroup {}", dir.display()), &e));
    }
    if let Err(e) = enter(&spec) {
        fail("cannot enter the sandbox", &e);
    }
    let err = Command::new(&args.command[0])
        .args(&args.command[1..])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/tmp")
        .envs(args.env.iter().map(|(k, v)| (k, v)))
        .exec();
    eprintln!(
        "thaw-sandbox-run: cannot execute {}: {err}",
        args.command[0]
    );
    std::process::exit(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

/// Create a cgroup for this run and fork: the child joins it and goes on to
/// build the sandbox; this process waits, removes the cgroup and exits with
/// the child's status. Returns only in the child.
fn run_in_own_cgroup(parent: &str, limits: &Limits) {
    let parent =
        CgroupParent::open(parent).unwrap_or_else(|e| fail("cannot open the cgroup parent", &e));
    let cgroup = parent
        .create(&format!("run-{}", std::process::id()), limits)
        .unwrap_or_else(|e| fail("cannot create the cgroup", &e));
    // SAFETY: this program never starts threads, so the child inherits no
    // locks held by another thread.
    match unsafe { fork() } {
        Err(e) => fail("cannot fork", &e),
        Ok(ForkResult::Child) => {
            if let Err(e) = cgroup.add_pid(std::process::id()) {
                fail("cannot join the cgroup", &e);
            }
        }
        Ok(ForkResult::Parent { child }) => {
            let code = loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => break code,
                    Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => fail("cannot wait for the sandbox", &e),
                }
            };
            let ooms = cgroup.oom_kills();
            if ooms > 0 {
                eprintln!("thaw-sandbox-run: the kernel OOM-killed {ooms} task(s)");
            }
            if let Err(e) = cgroup.destroy() {
                eprintln!("thaw-sandbox-run: cannot remove the cgroup: {}", chain(&e));
            }
            std::process::exit(code)
        }
    }
}
