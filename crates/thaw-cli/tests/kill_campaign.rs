//! The SIGKILL campaign: a real `thaw serve` on one data directory is
//! driven through deploys, updates, snapshot builds, bursts of invocations
//! and asynchronous (`Event`) invocations, and at a random moment one of
//! its processes is SIGKILLed: the daemon itself, a sandbox's outer
//! `thaw-init` (what the daemon waits on), a sandbox's PID 1 (the
//! supervisor, which runs the page server of a lazy restore), or a
//! function's runtime; the daemon is then killed too and started again on
//! the same directory. After each restart:
//!
//! - no process of the old daemon is left (sandboxes, supervisors,
//!   templates), no cgroup it made, no host mount under the data
//!   directory, and no temporary it was writing;
//! - every function's state is consistent: `GetFunction` works, its
//!   snapshot is not stuck in `queued`/`building`, at most one snapshot
//!   directory (its current revision's) exists, and an invocation returns
//!   the right answer;
//! - every synchronous invocation answered 200 was answered right
//!   (synchronous calls in flight at the kill were never accepted);
//! - every `Event` invocation answered 202 runs to its end: the queue is
//!   on disk before the 202 (`thawd::events`), a run cut by a kill is run
//!   again (retried, or redelivered after the restart), so at the end,
//!   once the last daemon's queue drained, each accepted event's `END`
//!   is in its function's log. Events still queued at a kill are counted
//!   as a figure.
//!
//! Iterations: `THAW_KILL_ITERATIONS` (default 6; `scripts/kill-campaign.sh`
//! runs 200), seed `THAW_KILL_SEED`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{can_run, functions_dir, instance_cgroups, pages_sum, Daemon};
use serde_json::json;
use thaw_api::{Client, InvocationType, InvokeOptions, SnapshotState};

const FUNCTIONS: [&str; 2] = ["k0", "k1"];

/// Snapshots on; a failed event is retried after half a second (Lambda's
/// minute would make the campaign wait minutes for its last events).
const DAEMON_FLAGS: &[&str] = &["--auto-snapshot", "true", "--async-retry-delay-secs", "0.5"];

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A process: pid, parent, command name, start time (to tell a reused pid).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Proc {
    pid: u32,
    ppid: u32,
    comm: String,
    start: u64,
}

fn stat(pid: u32) -> Option<Proc> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (l, r) = (s.find('(')?, s.rfind(')')?);
    let comm = s[l + 1..r].to_string();
    let rest: Vec<&str> = s[r + 2..].split(' ').collect();
    Some(Proc {
        pid,
        ppid: rest.get(1)?.parse().ok()?,
        comm,
        start: rest.get(19)?.parse().ok()?,
    })
}

fn all_procs() -> Vec<Proc> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .collect()
}

/// Every descendant of `root`.
fn descendants(root: u32) -> Vec<Proc> {
    let procs = all_procs();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for c in procs.iter().filter(|c| c.ppid == p) {
            frontier.push(c.pid);
            out.push(c.clone());
        }
    }
    out
}

fn still_alive(p: &Proc) -> bool {
    stat(p.pid).is_some_and(|now| now.start == p.start)
}

/// Processes in the daemon's cgroups (also those reparented after its death).
fn cgroup_procs(data_dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    for cg in instance_cgroups(data_dir) {
        let mut stack = vec![cg];
        while let Some(d) = stack.pop() {
            if let Ok(s) = std::fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(s.lines().filter_map(|l| l.parse::<u32>().ok()));
            }
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                }
            }
        }
    }
    out
}

fn host_mounts_under(data_dir: &Path) -> Vec<String> {
    let canon = std::fs::canonicalize(data_dir).unwrap();
    let canon = canon.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&canon))
        .collect()
}

/// Temporaries under the data directory: durable-write temporaries,
/// unfinished snapshot directories, registry staging, staged uploads of
/// the local object store.
fn temporaries(data_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![data_dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            if name.contains(".tmp-")
                || name.starts_with(".staging-")
                || name.starts_with(".deleted-")
                || (name.contains('#') && p.starts_with(data_dir.join("store")))
            {
                out.push(p);
            } else if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out
}

/// Whether the function's log records the end of invocation `id`.
fn finished_in_log(data_dir: &Path, function: &str, id: &str) -> bool {
    std::fs::read_to_string(data_dir.join("logs").join(format!("{function}.jsonl")))
        .is_ok_and(|s| s.contains(&format!("END RequestId: {id}")))
}

fn deploy_or_update(c: &Client, name: &str) {
    if c.get_function(name).is_ok() {
        let zip = thaw_api::package::zip_directory(&functions_dir().join("py-pages")).unwrap();
        let _ = c.update_function_code(
            name,
            &thaw_api::UpdateFunctionCodeRequest {
                zip_file: Some(zip),
                ..Default::default()
            },
        );
    } else {
        // Two drivers may create it at once, or the daemon may die under
        // the request: either is fine here.
        let zip = thaw_api::package::zip_directory(&functions_dir().join("py-pages")).unwrap();
        let _ = c.create_function(&thaw_api::CreateFunctionRequest {
            function_name: name.into(),
            runtime: Some("python3.11".into()),
            handler: Some("app.handler".into()),
            role: Some("arn:aws:iam::000000000000:role/test".into()),
            code: thaw_api::FunctionCode {
                zip_file: Some(zip),
                ..Default::default()
            },
            memory_size: Some(256),
            timeout: Some(10),
            ..Default::default()
        });
    }
}

/// What one iteration's traffic did.
#[derive(Default)]
struct Traffic {
    ok: AtomicU64,
    failed: AtomicU64,
    wrong: Mutex<Vec<String>>,
    /// Accepted events: (function, request id).
    events: Mutex<Vec<(String, String)>>,
}

fn drive(c: Client, rng_seed: u64, stop: Arc<AtomicBool>, t: Arc<Traffic>) {
    let mut rng = Rng(rng_seed | 1);
    while !stop.load(Ordering::SeqCst) {
        let f = FUNCTIONS[rng.below(FUNCTIONS.len() as u64) as usize];
        match rng.below(6) {
            0 => deploy_or_update(&c, f),
            1 => {
                let _ = c.create_snapshot(f, br#"{"from":0,"to":16}"#);
            }
            2 | 3 => {
                // A burst of synchronous calls.
                let burst: Vec<_> = (0..4)
                    .map(|i| {
                        let (c, t) = (c.clone(), t.clone());
                        let from = rng.below(4000);
                        std::thread::spawn(move || {
                            let p = json!({"from": from, "to": from + 8 + i}).to_string();
                            match c.invoke(f, p.as_bytes(), &InvokeOptions::default()) {
                                Ok(r) if r.status == 200 && r.function_error.is_none() => {
                                    let v: serde_json::Value =
                                        serde_json::from_slice(&r.payload).unwrap_or_default();
                                    if v["sum"] == json!(pages_sum(from, from + 8 + i)) {
                                        t.ok.fetch_add(1, Ordering::SeqCst);
                                    } else {
                                        t.wrong.lock().unwrap().push(v.to_string());
                                    }
                                }
                                _ => {
                                    t.failed.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        })
                    })
                    .collect();
                for b in burst {
                    let _ = b.join();
                }
            }
            _ => {
                for _ in 0..3 {
                    let opts = InvokeOptions {
                        invocation_type: InvocationType::Event,
                        ..Default::default()
                    };
                    if let Ok(r) = c.invoke(f, br#"{"from":1,"to":9}"#, &opts) {
                        if let (202, Some(id)) = (r.status, r.request_id) {
                            t.events.lock().unwrap().push((f.to_string(), id));
                        }
                    }
                }
            }
        }
    }
}

/// Failures found so far (each printed when found: a long campaign shows
/// them at once).
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn push(&mut self, f: String) {
        eprintln!("FAILURE {f}");
        self.0.push(f);
    }
}

/// The old daemon's leftovers, taken right after it died.
struct Leftovers {
    procs: Vec<Proc>,
    cgroups: Vec<PathBuf>,
    temporaries: Vec<PathBuf>,
}

/// Waits until every function settles, then checks it is consistent.
fn check_consistent(c: &Client, d: &Daemon, deployed: &HashSet<String>) -> Result<(), String> {
    for name in deployed {
        let f = c
            .get_function(name)
            .map_err(|e| format!("GetFunction {name}: {e}"))?;
        let t0 = Instant::now();
        loop {
            let s = c
                .snapshot_status(name)
                .map_err(|e| format!("snapshot status {name}: {e}"))?;
            if !matches!(s.state, SnapshotState::Queued | SnapshotState::Building) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(180) {
                return Err(format!("{name}: snapshot stuck: {s:?}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let dirs: Vec<String> = std::fs::read_dir(d.data_dir.join("snapshots").join(name))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let rev = f.configuration.revision_id.clone();
        if dirs.len() > 1 || dirs.iter().any(|d| *d != rev) {
            return Err(format!(
                "{name}: snapshot dirs {dirs:?}, current revision {rev}"
            ));
        }
        let r = c
            .invoke(name, br#"{"from":5,"to":50}"#, &InvokeOptions::default())
            .map_err(|e| format!("invoke {name}: {e}"))?;
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap_or_default();
        if r.function_error.is_some() || v["sum"] != json!(pages_sum(5, 50)) {
            return Err(format!("invoke {name}: {v}"));
        }
    }
    Ok(())
}

#[test]
fn sigkill_at_random_points_leaves_nothing_and_loses_no_accepted_request() {
    if !can_run("sigkill_at_random_points_leaves_nothing_and_loses_no_accepted_request") {
        return;
    }
    let iterations: u64 = std::env::var("THAW_KILL_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("THAW_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x7ead);
    let tmp = tempfile::Builder::new()
        .prefix("thaw-kill-")
        .tempdir()
        .unwrap();
    let data = tmp.path().to_path_buf();
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut deployed: HashSet<String> = HashSet::new();
    let mut figures: BTreeMap<&str, u64> = BTreeMap::new();
    let mut all_events: Vec<(String, String)> = Vec::new();
    let mut failures = Failures::default();
    let mut left: Option<Leftovers> = None;
    let started = Instant::now();
    for i in 0..iterations {
        let mut d = Daemon::start_in(&data, DAEMON_FLAGS);
        let c = d.client();
        // What the previous daemon left must be gone once this one started.
        if let Some(l) = left.take() {
            let t0 = Instant::now();
            let mut procs: Vec<&Proc> = l.procs.iter().filter(|p| still_alive(p)).collect();
            while !procs.is_empty() && t0.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(100));
                procs.retain(|p| still_alive(p));
            }
            if !procs.is_empty() {
                failures.push(format!("iteration {i}: processes left: {procs:?}"));
            }
            let cgroups: Vec<_> = l.cgroups.iter().filter(|c| c.exists()).collect();
            if !cgroups.is_empty() {
                failures.push(format!("iteration {i}: cgroups left: {cgroups:?}"));
            }
            let temps: Vec<_> = l.temporaries.iter().filter(|t| t.exists()).collect();
            if !temps.is_empty() {
                failures.push(format!("iteration {i}: temporaries left: {temps:?}"));
            }
            *figures
                .entry("temporaries left at a kill (all gone after restart)")
                .or_default() += l.temporaries.len() as u64;
            *figures
                .entry("old daemon's processes at its kill (all gone after restart)")
                .or_default() += l.procs.len() as u64;
            let mounts = host_mounts_under(&data);
            if !mounts.is_empty() {
                failures.push(format!("iteration {i}: host mounts left: {mounts:?}"));
            }
            if let Err(e) = check_consistent(&c, &d, &deployed) {
                failures.push(format!("iteration {i}: {e}"));
            }
        }
        // Traffic until the kill.
        let traffic = Arc::new(Traffic::default());
        let stop = Arc::new(AtomicBool::new(false));
        let drivers: Vec<_> = (0..2)
            .map(|k| {
                let (c, stop, t) = (c.clone(), stop.clone(), traffic.clone());
                let s = rng.next() ^ k;
                std::thread::spawn(move || drive(c, s, stop, t))
            })
            .collect();
        if i == 0 {
            deploy_or_update(&c, FUNCTIONS[0]);
        }
        std::thread::sleep(Duration::from_millis(300 + rng.below(3500)));
        let target = ["daemon", "launcher", "supervisor", "runtime"][rng.below(4) as usize];
        let tree = descendants(d.pid());
        let pick = |pred: &dyn Fn(&Proc) -> bool, rng: &mut Rng| -> Option<Proc> {
            let c: Vec<&Proc> = tree.iter().filter(|p| pred(p)).collect();
            (!c.is_empty()).then(|| c[rng.below(c.len() as u64) as usize].clone())
        };
        let daemon_pid = d.pid();
        let victim = match target {
            "launcher" => pick(&|p| p.comm == "thaw-init" && p.ppid == daemon_pid, &mut rng),
            "supervisor" => pick(&|p| p.comm == "thaw-init" && p.ppid != daemon_pid, &mut rng),
            "runtime" => pick(&|p| p.comm.starts_with("python"), &mut rng),
            _ => None,
        };
        let kind = if victim.is_some() { target } else { "daemon" };
        *figures.entry(kind).or_default() += 1;
        if let Some(v) = &victim {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(v.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            // The daemon lives on: it must notice, answer and stay healthy.
            std::thread::sleep(Duration::from_millis(500));
            if d.client().list_functions(None, None).is_err() {
                failures.push(format!(
                    "iteration {i}: daemon unhealthy after killing a {kind}"
                ));
            }
            // Give the daemon time to notice and serve on.
            std::thread::sleep(Duration::from_millis(1500));
        }
        let tree = descendants(d.pid());
        d.kill();
        stop.store(true, Ordering::SeqCst);
        for t in drivers {
            let _ = t.join();
        }
        // Everything that was the old daemon's.
        let mut procs = tree;
        for pid in cgroup_procs(&data) {
            if let Some(p) = stat(pid) {
                procs.push(p);
            }
        }
        left = Some(Leftovers {
            procs,
            cgroups: instance_cgroups(&data),
            temporaries: temporaries(&data),
        });
        for f in FUNCTIONS {
            if data
                .join("functions")
                .join(f)
                .join("function.json")
                .exists()
            {
                deployed.insert(f.to_string());
            }
        }
        // Accounting of this iteration's requests.
        let events = traffic.events.lock().unwrap().clone();
        let unfinished = events
            .iter()
            .filter(|(f, id)| !finished_in_log(&data, f, id))
            .count();
        *figures
            .entry("events unfinished at a kill (run after the restart)")
            .or_default() += unfinished as u64;
        all_events.extend(events.iter().cloned());
        *figures.entry("sync ok").or_default() += traffic.ok.load(Ordering::SeqCst);
        *figures
            .entry("sync not accepted (error or cut by the kill)")
            .or_default() += traffic.failed.load(Ordering::SeqCst);
        *figures.entry("events accepted (202)").or_default() += events.len() as u64;
        let wrong = traffic.wrong.lock().unwrap();
        if !wrong.is_empty() {
            failures.push(format!("iteration {i}: wrong answers with 200: {wrong:?}"));
        }
        eprintln!(
            "iteration {i}: killed {kind}; sync ok {} failed {}; events {} unfinished {}; {:?} so far",
            traffic.ok.load(Ordering::SeqCst),
            traffic.failed.load(Ordering::SeqCst),
            events.len(),
            unfinished,
            started.elapsed()
        );
    }
    // A last start: everything recovered, then a clean stop leaves nothing.
    let mut d = Daemon::start_in(&data, DAEMON_FLAGS);
    if let Some(l) = left.take() {
        std::thread::sleep(Duration::from_secs(2));
        let procs: Vec<_> = l.procs.iter().filter(|p| still_alive(p)).collect();
        let cgroups: Vec<_> = l.cgroups.iter().filter(|c| c.exists()).collect();
        let temps: Vec<_> = l.temporaries.iter().filter(|t| t.exists()).collect();
        if !procs.is_empty() || !cgroups.is_empty() || !temps.is_empty() {
            failures.push(format!("last start: left {procs:?} {cgroups:?} {temps:?}"));
        }
    }
    if let Err(e) = check_consistent(&d.client(), &d, &deployed) {
        failures.push(format!("last start: {e}"));
    }
    // Every accepted event runs to its end once the queue drained.
    let c = d.client();
    let t0 = Instant::now();
    loop {
        let queued: u64 = deployed
            .iter()
            .map(|f| c.event_queue(f).map_or(1, |v| v.queued))
            .sum();
        if queued == 0 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            failures.push(format!(
                "last start: {queued} events still queued after 300 s"
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let lost: Vec<&(String, String)> = all_events
        .iter()
        .filter(|(f, id)| !finished_in_log(&data, f, id))
        .collect();
    *figures.entry("events lost").or_default() += lost.len() as u64;
    if !lost.is_empty() {
        failures.push(format!(
            "{} of {} accepted events never ran to their end: {:?}",
            lost.len(),
            all_events.len(),
            &lost[..lost.len().min(5)]
        ));
    }
    assert!(d.stop(), "the daemon stops cleanly");
    let temps = temporaries(&data);
    if !temps.is_empty() {
        failures.push(format!("after a clean stop: temporaries {temps:?}"));
    }
    let cg = instance_cgroups(&data);
    if !cg.is_empty() {
        failures.push(format!("after a clean stop: cgroups {cg:?}"));
    }
    eprintln!(
        "kill campaign: {iterations} iterations, seed {seed}, {:?}\n  figures: {figures:?}",
        started.elapsed(),
    );
    let failures = failures.0;
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
