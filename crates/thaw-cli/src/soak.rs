//! `thaw bench soak`: mixed traffic against a `thaw serve` of its own for a
//! while, watching that what the daemon holds stays flat.
//!
//! The daemon runs as a child process (so what is measured is the daemon's
//! alone) on a temporary data directory, with a short keep-alive so
//! instances are reaped, and made again, many times during the run. The
//! traffic, every second: invocations of a Python and a Node.js function;
//! every 5 s an asynchronous one; every 10 s a burst of concurrent first
//! requests; every 30 s a code update (a new revision: its instances
//! retired, its snapshot rebuilt). Every 10 s, at a quiet point (the
//! idle instances retired, so the sample is what the daemon keeps without
//! traffic rather than the load of the moment), it samples the daemon's
//! resident memory, descriptors and threads, the cgroup directories under
//! the daemon's cgroup parent, the processes of the daemon's process tree,
//! and the bytes under the data directory.
//!
//! After a warm-up (the first quarter), each series' least-squares slope
//! gives its growth over the measured window; the run passes when every
//! growth is within its tolerance (below) and no request failed. A leak
//! shows as a slope, whatever the single readings are.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use thaw_api::{Client, CreateFunctionRequest, FunctionCode, InvocationType, InvokeOptions};

use crate::local::zip_files;

/// Options of `thaw bench soak`.
pub struct SoakOptions {
    /// How long the traffic runs.
    pub duration: Duration,
    /// Concurrent requests of each burst.
    pub burst: usize,
    /// Where to write the samples and the verdict as JSON.
    pub out: Option<PathBuf>,
}

const PY: &str = "import os\nCOUNT = 0\n\ndef handler(event, context):\n    global COUNT\n    COUNT += 1\n    return {'count': COUNT, 'v': V, 'pid': os.getpid()}\n";
const NODE: &str =
    "let count = 0;\nexports.handler = async (event) => { count += 1; return { count, v: V }; };\n";

/// One sample.
#[derive(Debug, Clone, serde::Serialize)]
struct Sample {
    t_s: f64,
    rss_bytes: f64,
    fds: f64,
    threads: f64,
    cgroups: f64,
    processes: f64,
    disk_bytes: f64,
}

/// A series' name, how to read it from a sample, and its tolerance: the
/// growth over the measured window allowed, absolute and as a share of
/// the series' mean (the larger applies).
struct Series {
    name: &'static str,
    get: fn(&Sample) -> f64,
    abs: f64,
    share: f64,
}

const SERIES: [Series; 6] = [
    Series {
        name: "daemon RSS (MiB)",
        get: |s| s.rss_bytes / f64::from(1 << 20),
        abs: 16.0,
        share: 0.10,
    },
    Series {
        name: "daemon descriptors",
        get: |s| s.fds,
        abs: 8.0,
        share: 0.10,
    },
    Series {
        // The async runtime's blocking threads come and go (they end after
        // 10 s idle): a leak is many, not a few.
        name: "daemon threads",
        get: |s| s.threads,
        abs: 12.0,
        share: 0.25,
    },
    Series {
        name: "cgroup directories",
        get: |s| s.cgroups,
        abs: 8.0,
        share: 0.25,
    },
    Series {
        name: "processes in the tree",
        get: |s| s.processes,
        abs: 8.0,
        share: 0.25,
    },
    Series {
        name: "data dir (MiB)",
        get: |s| s.disk_bytes / f64::from(1 << 20),
        abs: 32.0,
        share: 0.10,
    },
];

/// A `thaw serve` child on a loopback port.
struct Daemon {
    child: Child,
    endpoint: String,
    credentials: thaw_api::auth::Credentials,
}

impl Daemon {
    fn start(data_dir: &Path) -> anyhow::Result<Daemon> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let credentials = thaw_auth::generate()?;
        let exe = std::env::current_exe().context("cannot locate the thaw binary")?;
        let child = Command::new(exe)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--keep-alive-secs", "15"])
            // The store's memory tier is a bounded cache (256 MiB by default)
            // that fills as snapshots are read: small, so that it is full
            // early and a growth of the daemon is not the cache filling.
            .args(["--store-memory-mb", "8"])
            // Replaced revisions' chunks are collected within the run (by
            // default hourly, after an hour), so the disk plateaus in a
            // 30-minute run instead of growing until the first collection.
            .args([
                "--store-gc-interval-secs",
                "60",
                "--store-gc-grace-secs",
                "120",
            ])
            .env("THAW_ROOT_ACCESS_KEY_ID", &credentials.access_key_id)
            .env(
                "THAW_ROOT_SECRET_ACCESS_KEY",
                &credentials.secret_access_key,
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start thaw serve")?;
        let mut d = Daemon {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            credentials,
        };
        let http = reqwest::blocking::Client::new();
        let t0 = Instant::now();
        loop {
            if let Some(st) = d.child.try_wait()? {
                bail!("thaw serve exited during start-up: {st}");
            }
            if http
                .get(format!("{}/healthz", d.endpoint))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(d);
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("thaw serve did not become healthy within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.endpoint)?.with_credentials(self.credentials.clone()))
    }

    fn stop(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

fn status_field(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN)
}

fn count_dir(path: &Path) -> f64 {
    std::fs::read_dir(path).map_or(f64::NAN, |rd| rd.flatten().count() as f64)
}

/// Directories under `root` (recursively).
fn count_dirs(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                n += 1;
                stack.push(e.path());
            }
        }
    }
    n
}

/// Bytes of the files under `root`.
fn disk_bytes(root: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => n += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    n
}

/// Processes descending from `pid` (itself included).
fn tree_size(pid: u32) -> usize {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the command's ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if let Some(ppid) = ppid {
            parents.push((p, ppid));
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree.len()
}

fn sample(pid: u32, data_dir: &Path, cgroup_roots: &[PathBuf], t0: Instant) -> Sample {
    Sample {
        t_s: t0.elapsed().as_secs_f64(),
        rss_bytes: status_field(pid, "VmRSS:") * 1024.0,
        fds: count_dir(Path::new(&format!("/proc/{pid}/fd"))),
        threads: status_field(pid, "Threads:"),
        cgroups: cgroup_roots.iter().map(|r| count_dirs(r)).sum::<usize>() as f64,
        processes: tree_size(pid) as f64,
        disk_bytes: disk_bytes(data_dir) as f64,
    }
}

/// Least-squares slope of `ys` over `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return 0.0;
    }
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

fn deploy(c: &Client, name: &str, runtime: &str, version: u32) -> anyhow::Result<()> {
    let (file, handler, source) = if runtime.starts_with("python") {
        ("app.py", "app.handler", format!("V = {version}\n{PY}"))
    } else {
        (
            "index.js",
            "index.handler",
            format!("const V = {version};\n{NODE}"),
        )
    };
    let zip = zip_files(&[(file, source.as_bytes(), 0o644)])?;
    if version == 0 {
        c.create_function(&CreateFunctionRequest {
            function_name: name.into(),
            runtime: Some(runtime.into()),
            handler: Some(handler.into()),
            role: Some("arn:aws:iam::000000000000:role/soak".into()),
            code: FunctionCode {
                zip_file: Some(zip),
                ..Default::default()
            },
            memory_size: Some(256),
            timeout: Some(10),
            ..Default::default()
        })?;
    } else {
        c.update_function_code(
            name,
            &thaw_api::UpdateFunctionCodeRequest {
                zip_file: Some(zip),
                ..Default::default()
            },
        )?;
    }
    Ok(())
}

/// Run the soak and print its verdict; an error if anything grew beyond
/// its tolerance or any request failed.
pub fn run(opts: SoakOptions) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("thaw-soak-").tempdir()?;
    let data_dir = std::fs::canonicalize(tmp.path())?;
    let mut daemon = Daemon::start(&data_dir)?;
    let pid = daemon.child.id();
    let parent = thawd::server::cgroup_parent_name(&data_dir);
    let cgroup_roots: Vec<PathBuf> = [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/cpu",
    ]
    .iter()
    .map(|r| Path::new(r).join(&parent))
    .filter(|p| p.is_dir())
    .collect();
    let c = daemon.client()?;
    let functions = [("soak-py", "python3.11"), ("soak-node", "nodejs20.x")];
    for (name, runtime) in functions {
        deploy(&c, name, runtime, 0)?;
    }
    println!(
        "soak: {} s of mixed traffic against thaw serve (pid {pid}), bursts of {}",
        opts.duration.as_secs(),
        opts.burst
    );
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut failures: Vec<String> = Vec::new();
    let mut version = 0;
    let mut tick = 0u64;
    let mut record = |r: anyhow::Result<u16>, ok: &mut u64, failed: &mut u64| match r {
        Ok(s) if (200..300).contains(&s) => *ok += 1,
        Ok(s) => {
            *failed += 1;
            failures.push(format!("status {s}"));
        }
        Err(e) => {
            *failed += 1;
            failures.push(format!("{e:#}"));
        }
    };
    while t0.elapsed() < opts.duration {
        let tick_start = Instant::now();
        let (name, _) = functions[(tick % 2) as usize];
        for (name, _) in functions {
            let r = c
                .invoke(name, b"{}", &InvokeOptions::default())
                .map_err(anyhow::Error::from)
                .and_then(|r| {
                    if r.function_error.is_some() {
                        bail!("function error: {}", String::from_utf8_lossy(&r.payload))
                    }
                    Ok(r.status)
                });
            record(r, &mut ok, &mut failed);
        }
        if tick.is_multiple_of(5) {
            let r = c
                .invoke(
                    name,
                    b"{}",
                    &InvokeOptions {
                        invocation_type: InvocationType::Event,
                        ..Default::default()
                    },
                )
                .map(|r| r.status)
                .map_err(anyhow::Error::from);
            record(r, &mut ok, &mut failed);
        }
        if tick % 10 == 5 {
            // A client of its own, dropped after the burst: its connections
            // close, so the daemon's descriptors at the next quiet point
            // are not this burst's idle keep-alive connections.
            let bc = daemon.client()?;
            let results: Vec<anyhow::Result<u16>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..opts.burst)
                    .map(|_| {
                        let c = &bc;
                        s.spawn(move || {
                            c.invoke(name, b"{}", &InvokeOptions::default())
                                .map(|r| r.status)
                                .map_err(anyhow::Error::from)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))
                    })
                    .collect()
            });
            for r in results {
                record(r, &mut ok, &mut failed);
            }
        }
        if tick % 30 == 29 {
            version += 1;
            let (name, runtime) = functions[(version % 2) as usize];
            deploy(&c, name, runtime, version).with_context(|| format!("update of {name}"))?;
        }
        if tick % 10 == 9 {
            // A quiet point: the idle instances retired, so what the
            // daemon holds is what it keeps with no traffic (standby
            // sandboxes and templates included), not the load of the
            // moment.
            for (name, _) in functions {
                c.retire_instances(name)?;
            }
            std::thread::sleep(Duration::from_millis(500));
            samples.push(sample(pid, &data_dir, &cgroup_roots, t0));
        }
        tick += 1;
        if let Some(rest) = Duration::from_secs(1).checked_sub(tick_start.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let stopped = daemon.stop();

    // The verdict, over the samples after the warm-up.
    let measured: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t_s >= opts.duration.as_secs_f64() / 4.0)
        .collect();
    let xs: Vec<f64> = measured.iter().map(|s| s.t_s).collect();
    let window = xs.last().copied().unwrap_or(0.0) - xs.first().copied().unwrap_or(0.0);
    println!(
        "\n{:<24} {:>10} {:>10} {:>10} {:>12} {:>12} {:>10}",
        "series", "first", "last", "mean", "per hour", "in window", "allowed"
    );
    let mut flat = true;
    let mut verdicts = Vec::new();
    for s in &SERIES {
        let ys: Vec<f64> = measured.iter().map(|m| (s.get)(m)).collect();
        let mean = ys.iter().sum::<f64>() / ys.len().max(1) as f64;
        let k = slope(&xs, &ys);
        let growth = k * window;
        let allowed = s.abs.max(s.share * mean);
        let ok_series = growth.is_finite() && growth <= allowed;
        flat &= ok_series;
        println!(
            "{:<24} {:>10.1} {:>10.1} {:>10.1} {:>12.2} {:>12.2} {:>10.1} {}",
            s.name,
            ys.first().copied().unwrap_or(f64::NAN),
            ys.last().copied().unwrap_or(f64::NAN),
            mean,
            k * 3600.0,
            growth,
            allowed,
            if ok_series { "flat" } else { "GROWS" }
        );
        verdicts.push(serde_json::json!({
            "series": s.name, "mean": mean, "slope_per_hour": k * 3600.0,
            "growth_in_window": growth, "allowed": allowed, "flat": ok_series,
        }));
    }
    println!(
        "\nrequests: {ok} ok, {failed} failed; {} samples (one per 10 s, at a quiet point), {window:.0} s measured after a {:.0} s warm-up; daemon stopped cleanly: {stopped}",
        samples.len(),
        opts.duration.as_secs_f64() / 4.0
    );
    for f in failures.iter().take(5) {
        println!("  failure: {f}");
    }
    if let Some(out) = &opts.out {
        let doc = serde_json::json!({
            "duration_s": opts.duration.as_secs(), "burst": opts.burst,
            "ok": ok, "failed": failed, "stopped_cleanly": stopped,
            "series": verdicts, "samples": samples,
        });
        std::fs::write(out, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    let leftover: Vec<&PathBuf> = cgroup_roots.iter().filter(|r| count_dirs(r) > 0).collect();
    if !flat || failed > 0 || !stopped || !leftover.is_empty() {
        bail!(
            "soak failed: flat={flat}, failed requests={failed}, stopped cleanly={stopped}, instance cgroups left={}",
            leftover.len()
        );
    }
    println!("soak passed: every series flat, no request failed, nothing left behind");
    Ok(())
}
