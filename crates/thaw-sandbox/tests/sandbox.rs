//! Behavioural tests of the sandbox and its cgroups against the real kernel.
//!
//! They run `thaw-sandbox-run` (this crate's debugging binary) and look at the
//! sandbox from inside (a shell script's output) and from the host (mounts,
//! cgroup files, processes). They need root: without it, or without a usable
//! cgroup hierarchy, a test prints `SKIP: <reason>` to stderr and returns.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use thaw_sandbox::{BindMount, Cgroup, CgroupParent, Limits, SandboxFile, SandboxSpec};

const RUN: &str = env!("CARGO_BIN_EXE_thaw-sandbox-run");
const UID: u32 = 4242;
const GID: u32 = 4243;
const HOSTNAME: &str = "sbx-test";
const TMP_BYTES: u64 = 1 << 20;

/// Say loudly that a test did not run. Written to the stderr handle directly:
/// libtest swallows `eprintln!` output of passing tests.
fn skip(reason: &str) {
    if std::env::var("THAW_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("cannot run here ({reason}) and THAW_REQUIRE_ALL=1");
    }
    let _ = writeln!(std::io::stderr(), "\nSKIP: {reason}");
}

/// A spec with the host's OS directories, a code dir at /var/task and a temp
/// root mount point, plus the directory holding them (and a secret that must
/// stay invisible).
struct Fixture {
    dir: tempfile::TempDir,
    spec: SandboxSpec,
    spec_path: PathBuf,
}

impl Fixture {
    fn new() -> Option<Fixture> {
        if !nix::unistd::geteuid().is_root() {
            skip("sandbox tests need root");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let task = dir.path().join("task");
        let deep = dir.path().join("deep");
        for d in [&root, &task, &deep] {
            fs::create_dir(d).unwrap();
        }
        fs::write(task.join("hello.txt"), "hello from the host\n").unwrap();
        fs::write(deep.join("marker"), "deep\n").unwrap();
        fs::write(dir.path().join("secret.txt"), "do not show\n").unwrap();
        // The non-root uid must be able to reach the bound directories.
        for d in [dir.path(), &task, &deep] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut binds = Vec::new();
        for (p, required) in [
            ("/usr", true),
            ("/lib", true),
            ("/lib64", false),
            ("/bin", true),
            ("/sbin", false),
            ("/etc/ld.so.cache", false),
        ] {
            binds.push(BindMount {
                source: p.into(),
                target: p.into(),
                required,
            });
        }
        binds.push(BindMount {
            source: task,
            target: "/var/task".into(),
            required: true,
        });
        binds.push(BindMount {
            source: deep.clone(),
            target: "/opt/a/b/c".into(),
            required: true,
        });
        // Below a host directory that is not world-readable (like a runtime
        // installed under /root/.pyenv).
        binds.push(BindMount {
            source: deep,
            target: "/root/.thaw-sandbox-test/deep".into(),
            required: true,
        });
        binds.push(BindMount {
            source: "/nonexistent/optional".into(),
            target: "/opt/missing".into(),
            required: false,
        });
        let spec = SandboxSpec {
            instance_id: "test".into(),
            hostname: HOSTNAME.into(),
            uid: UID,
            gid: GID,
            root_mountpoint: root,
            binds,
            tmp_size_bytes: TMP_BYTES,
            shm_size_bytes: 1 << 20,
            files: vec![SandboxFile {
                path: "/etc/passwd".into(),
                contents: format!("sbx:x:{UID}:{GID}::/tmp:/bin/sh\n"),
                mode: 0o644,
            }],
            boot_id: None,
            join_net_fd: None,
        };
        let spec_path = dir.path().join("spec.json");
        fs::write(&spec_path, serde_json::to_string(&spec).unwrap()).unwrap();
        Some(Fixture {
            dir,
            spec,
            spec_path,
        })
    }

    fn command(&self, extra: &[String], cmd: &[&str]) -> Command {
        let mut c = Command::new(RUN);
        c.arg(&self.spec_path).args(extra).arg("--").args(cmd);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, extra: &[String], cmd: &[&str]) -> Output {
        let child = self
            .command(extra, cmd)
            .spawn()
            .expect("spawn thaw-sandbox-run");
        wait_output(child, Duration::from_secs(30))
    }

    fn sh(&self, script: &str) -> Output {
        self.run(&[], &["/bin/sh", "-c", script])
    }
}

fn wait_output(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sandbox did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `key=value` lines of a script's output.
fn values(o: &Output) -> std::collections::HashMap<String, String> {
    stdout(o)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn mount_points() -> BTreeSet<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect()
}

#[test]
fn identity_namespaces_and_privileges() {
    let Some(fx) = Fixture::new() else { return };
    let out = fx.sh(
        r#"
        echo hostname=$(hostname)
        echo uid=$(id -u) gid=$(id -g) groups=$(id -G)
        echo pid=$$
        echo pid1=$(tr '\0' ' ' < /proc/1/cmdline)
        echo procs=$(ls /proc | grep -c '^[0-9]')
        grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status | tr -d ' \t' | tr ':' '='
        echo ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ',')
        echo nofile=$(ulimit -n) core=$(ulimit -c)
        "#,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v = values(&out);
    assert_eq!(v["hostname"], HOSTNAME);
    assert_eq!(
        v["uid"],
        format!("{UID} gid={GID} groups={GID}"),
        "id reports extra groups"
    );
    assert_eq!(
        v["pid"], "1",
        "the shell is not PID 1 of a new pid namespace"
    );
    assert!(v["pid1"].starts_with("/bin/sh -c"), "{}", v["pid1"]);
    let procs: usize = v["procs"].parse().unwrap();
    assert!(procs <= 4, "host processes visible: {procs} pids in /proc");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(v[set], "0000000000000000", "{set}");
    }
    assert_eq!(v["NoNewPrivs"], "1");
    assert_eq!(v["Seccomp"], "2");
    assert_eq!(v["ifaces"], "lo,", "interfaces other than lo exist");
    assert_eq!(v["nofile"], "1024 core=0");
}

#[test]
fn filesystem_is_read_only_private_and_minimal() {
    let Some(fx) = Fixture::new() else { return };
    let host_dir = fx.dir.path().display().to_string();
    // Host entries that must not show through the sandbox's own /root.
    let host_root_entries: String = fs::read_dir("/root")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    n.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
                })
                .map(|n| format!(" /root/{n}"))
                .collect()
        })
        .unwrap_or_default();
    let host_root_mode = fs::metadata("/root").map(|m| m.permissions().mode() & 0o777);
    let script = format!(
        r#"
        echo root=$(ls -A / | tr '\n' ' ')
        touch /x 2>/dev/null && echo root_writable=yes
        touch /var/task/x 2>/dev/null && echo task_writable=yes
        mkdir /etc/x 2>/dev/null && echo etc_writable=yes
        touch /dev/x 2>/dev/null && echo dev_writable=yes
        echo task=$(ls -A /var/task) hello=$(cat /var/task/hello.txt)
        echo deep=$(cat /opt/a/b/c/marker)
        echo passwd=$(stat -c '%a:%u' /etc/passwd):$(cat /etc/passwd)
        for p in /work /home /opt/missing {host_dir}{host_root_entries}; do test -e "$p" && echo visible=$p; done
        echo rootmode=$(stat -c %a /root) deep2=$(cat /root/.thaw-sandbox-test/deep/marker)
        ls /root >/dev/null 2>&1 && echo rootls=yes
        test -e /proc/kcore && echo kcore=$(wc -c < /proc/kcore)
        echo tmp_ok > /tmp/f && echo tmp=$(cat /tmp/f)
        echo shm_ok > /dev/shm/f && echo shm=$(cat /dev/shm/f)
        echo devnull > /dev/null && echo null=ok
        echo urandom=$(head -c 16 /dev/urandom | wc -c)
        echo fd=$(readlink /dev/fd)
        echo fill=$(head -c 2000000 /dev/zero 2>&1 >/tmp/big)
        grep -q ' /proc/sys ro,' /proc/self/mountinfo && echo procsys=ro
        "#
    );
    let out = fx.sh(&script);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = values(&out);
    let root: BTreeSet<&str> = v["root"].split_whitespace().collect();
    let allowed: BTreeSet<&str> = [
        "bin", "dev", "etc", "lib", "lib64", "opt", "proc", "root", "sbin", "tmp", "usr", "var",
    ]
    .into();
    assert!(
        root.is_subset(&allowed),
        "unexpected entries in /: {root:?}"
    );
    for key in [
        "root_writable",
        "task_writable",
        "etc_writable",
        "dev_writable",
        "visible",
    ] {
        assert!(
            !v.contains_key(key),
            "{key}={:?}\n{}",
            v.get(key),
            stdout(&out)
        );
    }
    assert_eq!(v["task"], "hello.txt hello=hello from the host");
    assert_eq!(v["deep"], "deep");
    // The sandbox's /root mirrors the host's permission bits plus search.
    if let Ok(mode) = host_root_mode {
        let expect = format!("{:o} deep2=deep", mode | 0o111);
        assert_eq!(v["rootmode"], expect);
        if mode & 0o004 == 0 {
            assert!(
                !v.contains_key("rootls"),
                "/root is listable in the sandbox"
            );
        }
    }
    assert_eq!(
        v["passwd"],
        format!("644:0:sbx:x:{UID}:{GID}::/tmp:/bin/sh")
    );
    if let Some(k) = v.get("kcore") {
        assert_eq!(k, "0", "/proc/kcore is not masked");
    }
    assert_eq!(v["tmp"], "tmp_ok");
    assert_eq!(v["shm"], "shm_ok");
    assert_eq!(v["null"], "ok");
    assert_eq!(v["urandom"], "16");
    assert_eq!(v["fd"], "/proc/self/fd");
    assert!(
        v["fill"].contains("No space left"),
        "/tmp not limited: {:?}",
        v["fill"]
    );
    assert_eq!(v["procsys"], "ro");
}

#[test]
fn privileged_operations_fail() {
    let Some(fx) = Fixture::new() else { return };
    let out = fx.sh(r#"
        mount -t tmpfs x /tmp 2>/dev/null && echo mount=yes
        unshare -n true 2>/dev/null && echo unshare=yes
        unshare -U true 2>/dev/null && echo userns=yes
        hostname other 2>/dev/null && echo hostname=yes
        chroot / true 2>/dev/null && echo chroot=yes
        echo hostname_now=$(hostname)
        echo done=1
        "#);
    let v = values(&out);
    assert_eq!(
        v.get("done").map(String::as_str),
        Some("1"),
        "{}",
        stderr(&out)
    );
    for key in ["mount", "unshare", "userns", "hostname", "chroot"] {
        assert!(!v.contains_key(key), "{key} succeeded inside the sandbox");
    }
    assert_eq!(v["hostname_now"], HOSTNAME);
}

#[test]
fn python_runs_under_the_filter() {
    let Some(fx) = Fixture::new() else { return };
    if !Path::new("/usr/bin/python3").exists() {
        return skip("/usr/bin/python3 missing");
    }
    let out = fx.run(
        &[],
        &[
            "/usr/bin/python3",
            "-c",
            r#"
import ctypes, os, socket, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
r = libc.syscall(435, None, 0)  # clone3
print("clone3=%d:%d" % (r, ctypes.get_errno()))
r = libc.syscall(56, 0x40000000 | 17, 0, 0, 0, 0)  # clone(CLONE_NEWNET|SIGCHLD)
print("clone_newnet=%d:%d" % (r, ctypes.get_errno()))
r = libc.syscall(323, 0)  # userfaultfd
print("userfaultfd=%d:%d" % (r, ctypes.get_errno()))
out = []
t = threading.Thread(target=lambda: out.append("ok")); t.start(); t.join()
print("thread=" + out[0])
print("subprocess=" + subprocess.run(["/bin/echo", "ok"], capture_output=True, text=True).stdout.strip())
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
c = socket.create_connection(s.getsockname()); a, _ = s.accept(); c.sendall(b"ok")
print("loopback=" + a.recv(2).decode())
"#,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v = values(&out);
    assert_eq!(v["clone3"], "-1:38", "clone3 must look unimplemented");
    assert_eq!(v["clone_newnet"], "-1:1");
    assert_eq!(v["userfaultfd"], "-1:1");
    assert_eq!(v["thread"], "ok");
    assert_eq!(v["subprocess"], "ok");
    assert_eq!(v["loopback"], "ok");
}

#[test]
fn node_runs_under_the_filter() {
    let Some(fx) = Fixture::new() else { return };
    if !Path::new("/usr/bin/node").exists() {
        return skip("/usr/bin/node missing");
    }
    let out = fx.run(
        &[],
        &[
            "/usr/bin/node",
            "-e",
            r#"
const fs = require("fs");
fs.writeFileSync("/tmp/x", "ok");
console.log("fs=" + fs.readFileSync("/tmp/x", "utf8"));
const { Worker } = require("worker_threads");
const w = new Worker("require('worker_threads').parentPort.postMessage('ok')", { eval: true });
w.on("message", (m) => console.log("worker=" + m));
require("child_process").exec("/bin/echo ok", (e, o) => console.log("child=" + o.trim()));
"#,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v = values(&out);
    assert_eq!(v["fs"], "ok");
    assert_eq!(v["worker"], "ok");
    assert_eq!(v["child"], "ok");
}

#[test]
fn exit_status_is_propagated_and_mounts_stay_private() {
    let Some(fx) = Fixture::new() else { return };
    let tmp = std::env::temp_dir().display().to_string();
    let under_tmp = |set: &BTreeSet<String>| -> BTreeSet<String> {
        set.iter()
            .filter(|m| m.starts_with(&tmp))
            .cloned()
            .collect()
    };
    let before = mount_points();

    // While a sandbox runs, the host sees none of its mounts.
    let child = fx
        .command(&[], &["/bin/sh", "-c", "sleep 1; exit 7"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let during = mount_points();
    let root = fx.spec.root_mountpoint.display().to_string();
    assert!(
        !during.iter().any(|m| m.starts_with(&root)),
        "sandbox mounts leaked to the host"
    );
    let out = wait_output(child, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));

    let after = mount_points();
    assert_eq!(
        under_tmp(&before),
        under_tmp(&after),
        "mounts under {tmp} changed"
    );
    assert!(fs::read_dir(&fx.spec.root_mountpoint)
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn killing_the_outer_process_kills_the_sandbox() {
    let Some(fx) = Fixture::new() else { return };
    let mut child = fx.command(&[], &["/bin/sleep", "30"]).spawn().unwrap();
    let outer = child.id();
    // The sandbox's PID 1 is the outer process's only child.
    let children = format!("/proc/{outer}/task/{outer}/children");
    if !Path::new(&children).exists() {
        let _ = child.kill();
        let _ = child.wait();
        return skip("/proc/PID/task/TID/children missing (CONFIG_PROC_CHILDREN)");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let inner: u32 = loop {
        let text = fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = text.split_whitespace().next() {
            let pid: u32 = pid.parse().unwrap();
            // Wait until it has exec'd sleep (setup finished).
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                break pid;
            }
        }
        assert!(Instant::now() < deadline, "sandbox did not start");
        std::thread::sleep(Duration::from_millis(10));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{inner}")).exists() {
        // A zombie reparented to init also counts as gone.
        let stat = fs::read_to_string(format!("/proc/{inner}/stat")).unwrap_or_default();
        if stat.contains(") Z ") || stat.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "sandbox survived its parent");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A per-test cgroup parent, removed (with its children) when dropped.
struct TestParent(CgroupParent);

impl TestParent {
    fn new(test: &str) -> Option<TestParent> {
        match CgroupParent::open(&format!("thaw-sandbox-test/{}-{test}", std::process::id())) {
            Ok(p) => Some(TestParent(p)),
            Err(e) => {
                skip(&format!("no usable cgroups: {e}"));
                None
            }
        }
    }
}

impl Drop for TestParent {
    fn drop(&mut self) {
        if let Err(e) = self.0.remove() {
            eprintln!("cannot remove test cgroup parent: {e}");
        }
        // The shared `thaw-sandbox-test` level goes once the last test is done.
        for dir in self.0.directories() {
            if let Some(up) = dir.parent() {
                let _ = fs::remove_dir(up);
            }
        }
    }
}

fn join_args(cg: &Cgroup) -> Vec<String> {
    cg.directories()
        .iter()
        .flat_map(|d| ["--join-cgroup".to_string(), d.display().to_string()])
        .collect()
}

fn limits(memory_mb: u64, pids: u64) -> Limits {
    Limits {
        memory_bytes: memory_mb << 20,
        cpu_shares: 512,
        pids_max: pids,
    }
}

#[test]
fn memory_hog_is_oom_killed() {
    let Some(fx) = Fixture::new() else { return };
    if !Path::new("/usr/bin/python3").exists() {
        return skip("/usr/bin/python3 missing");
    }
    let Some(parent) = TestParent::new("oom") else {
        return;
    };
    let cg = parent.0.create("hog", &limits(64, 64)).unwrap();
    let before = cg.oom_kills();
    let out = fx.run(
        &join_args(&cg),
        &[
            "/usr/bin/python3",
            "-c",
            "x = bytearray(200 << 20); print('survived')",
        ],
    );
    assert!(
        !stdout(&out).contains("survived"),
        "allocated past the limit"
    );
    assert_eq!(out.status.code(), Some(128 + 9), "{}", stderr(&out));
    assert!(cg.oom_kills() > before, "OOM kill not counted");
    cg.destroy().unwrap();
}

#[test]
fn fork_bomb_hits_pids_max() {
    let Some(fx) = Fixture::new() else { return };
    let Some(parent) = TestParent::new("forkbomb") else {
        return;
    };
    let cg = parent.0.create("bomb", &limits(128, 16)).unwrap();
    let out = fx.run(
        &join_args(&cg),
        &[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 64 ]; do sleep 5 & i=$((i+1)); done; echo all_started",
        ],
    );
    assert!(
        !stdout(&out).contains("all_started"),
        "pids.max not enforced"
    );
    assert!(
        stderr(&out).to_lowercase().contains("fork"),
        "{}",
        stderr(&out)
    );
    // The host can still start processes.
    assert!(Command::new("/bin/true").status().unwrap().success());
    cg.destroy().unwrap();
    assert!(cg.pids().is_empty());
}

#[test]
fn destroy_kills_everything_and_removes_the_cgroup() {
    let Some(fx) = Fixture::new() else { return };
    let Some(parent) = TestParent::new("destroy") else {
        return;
    };
    let cg = parent.0.create("victim", &limits(128, 64)).unwrap();
    let child = fx
        .command(
            &join_args(&cg),
            &["/bin/sh", "-c", "sleep 30 & sleep 30 & sleep 30"],
        )
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cg.pids().len() < 4 {
        assert!(
            Instant::now() < deadline,
            "sandbox did not start: {:?}",
            cg.pids()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let members = cg.pids();
    // Raise the limits of the running sandbox.
    cg.set_limits(&limits(256, 128)).unwrap();
    let started = Instant::now();
    cg.destroy().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    for dir in cg.directories() {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    for pid in members {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "pid {pid} survived"
        );
    }
    // thaw-sandbox-run itself joined the cgroup before entering, so it died too.
    let out = wait_output(child, Duration::from_secs(5));
    assert_eq!(out.status.signal(), Some(9), "{:?}", out.status);
    // Idempotent.
    cg.destroy().unwrap();
    assert_eq!(cg.oom_kills(), 0);
}

#[test]
fn limits_are_written_and_can_change_at_run_time() {
    let Some(_fx) = Fixture::new() else { return };
    let Some(parent) = TestParent::new("limits") else {
        return;
    };
    let cg = parent.0.create("lim", &limits(64, 32)).unwrap();
    let read = |file: &str| -> String {
        cg.directories()
            .iter()
            .map(|d| d.join(file))
            .find(|p| p.exists())
            .map(|p| fs::read_to_string(p).unwrap().trim().to_string())
            .unwrap_or_else(|| panic!("{file} not found"))
    };
    let (mem, cpu) = match cg.version() {
        thaw_sandbox::CgroupVersion::V1 => ("memory.limit_in_bytes", "cpu.shares"),
        thaw_sandbox::CgroupVersion::V2 => ("memory.max", "cpu.weight"),
    };
    assert_eq!(read(mem), (64u64 << 20).to_string());
    assert_eq!(read("pids.max"), "32");
    let cpu_before = read(cpu);
    cg.set_limits(&Limits {
        memory_bytes: 256 << 20,
        cpu_shares: 2048,
        pids_max: 100,
    })
    .unwrap();
    assert_eq!(read(mem), (256u64 << 20).to_string());
    assert_eq!(read("pids.max"), "100");
    assert_ne!(read(cpu), cpu_before);
    if cg.version() == thaw_sandbox::CgroupVersion::V1 {
        let memsw = cg.directories()[0].join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            assert_eq!(
                fs::read_to_string(memsw).unwrap().trim(),
                (256u64 << 20).to_string()
            );
        }
    }
    // And back down.
    cg.set_limits(&limits(32, 8)).unwrap();
    assert_eq!(read(mem), (32u64 << 20).to_string());
    assert!(cg.memory_usage_bytes().is_some());
    cg.destroy().unwrap();
}

#[test]
fn cleanup_stale_removes_leftover_instances() {
    let Some(fx) = Fixture::new() else { return };
    let Some(parent) = TestParent::new("stale") else {
        return;
    };
    let busy = parent.0.create("busy", &limits(64, 16)).unwrap();
    let idle = parent.0.create("idle", &limits(64, 16)).unwrap();
    let child = fx
        .command(&join_args(&busy), &["/bin/sleep", "30"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while busy.pids().len() < 2 {
        assert!(Instant::now() < deadline, "sandbox did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    // As after a daemon restart: the Cgroup handles are gone.
    drop((busy, idle));
    assert_eq!(parent.0.cleanup_stale().unwrap(), 2);
    assert_eq!(parent.0.cleanup_stale().unwrap(), 0);
    let out = wait_output(child, Duration::from_secs(5));
    assert_eq!(out.status.signal(), Some(9), "{:?}", out.status);
}
