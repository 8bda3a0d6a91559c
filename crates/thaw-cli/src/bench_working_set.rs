//! `thaw bench working-set`: eager, lazy and lazy + working set on the same
//! snapshot, in one run, with the snapshot's pages dropped from the page
//! cache before every restore (and, with `--slow-tier`, read through a
//! throttled path standing in for remote storage).
//!
//! For each function: one snapshot (the pipeline's validation restore
//! records its working set), then for each memory mode a daemon on the same
//! data directory restores new instances into new sandboxes (no standby:
//! the restore's reads are on the request's path) and times the first
//! response. Reported per mode: first-response median and p90, the
//! restore's server-side time, pages faulted, bytes read from the snapshot,
//! and the working set's size as a share of the snapshot. The reference
//! "pages in memory" rows restore with the page cache hot.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use thaw_api::{Client, InvokeOptions, MemoryInfo, StartKind};
use thawd::config::MemoryMode;

use crate::bench::{deploy_snapshotted, median_p90, working_set_functions};
use crate::local::LocalDaemon;

/// Options of `thaw bench working-set`.
pub struct WorkingSetOptions {
    /// Measured restores per function and mode.
    pub runs: usize,
    /// Where pip packages are installed once.
    pub cache_dir: PathBuf,
    /// Only the hello-world functions.
    pub quick: bool,
    /// Also measure every mode through the throttled reader.
    pub slow_tier: Option<thaw_snapshot::image::ReadThrottle>,
    /// Pages per fault for the lazy modes (0: the daemon's default).
    pub fault_around: u32,
}

/// One measured configuration.
struct Config {
    label: &'static str,
    mode: MemoryMode,
    cold_cache: bool,
}

const CONFIGS: [Config; 5] = [
    Config {
        label: "eager, cold cache",
        mode: MemoryMode::Eager,
        cold_cache: true,
    },
    Config {
        label: "lazy, cold cache",
        mode: MemoryMode::Lazy,
        cold_cache: true,
    },
    Config {
        label: "lazy+ws, cold cache",
        mode: MemoryMode::WorkingSet,
        cold_cache: true,
    },
    Config {
        label: "eager, pages in memory",
        mode: MemoryMode::Eager,
        cold_cache: false,
    },
    Config {
        label: "lazy+ws, pages in memory",
        mode: MemoryMode::WorkingSet,
        cold_cache: false,
    },
];

/// Drops the page-cache pages of every file in `dir`
/// (`posix_fadvise(DONTNEED)`; the files are written and synced, so every
/// page can go).
pub fn drop_page_cache(dir: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = e?.path();
        if !path.is_file() {
            continue;
        }
        let f = std::fs::File::open(&path).with_context(|| path.display().to_string())?;
        nix::fcntl::posix_fadvise(
            f.as_fd(),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .with_context(|| format!("posix_fadvise {}", path.display()))?;
    }
    Ok(())
}

/// Resident pages of `path` as `fincore` reports them, if it is installed.
fn resident(path: &Path) -> Option<String> {
    let out = std::process::Command::new("fincore")
        .args(["--noheadings", "--output", "PAGES,SIZE"])
        .arg(path)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The snapshot directory of `name`'s only revision under `data_dir`.
fn snapshot_dir(data_dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join("snapshots").join(name);
    let mut revs = std::fs::read_dir(&dir)
        .with_context(|| dir.display().to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir());
    match (revs.next(), revs.next()) {
        (Some(d), None) => Ok(d),
        _ => bail!("expected one snapshot revision in {}", dir.display()),
    }
}

/// One measured restore.
struct Sample {
    ms: f64,
    restore_ms: f64,
    /// Restore, after-restore work and the invocation (server side): the
    /// part of the first response that memory affects.
    memory_bound_ms: f64,
    memory: MemoryInfo,
}

fn restore_once(client: &Client, name: &str, dir: &Path, cold: bool) -> anyhow::Result<Sample> {
    client.retire_instances(name)?;
    if cold {
        drop_page_cache(dir)?;
    }
    let t0 = Instant::now();
    let r = client.invoke(name, b"{}", &InvokeOptions::default())?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    if r.function_error.is_some() {
        bail!("{name} failed: {}", String::from_utf8_lossy(&r.payload));
    }
    if r.start != Some(StartKind::Restored) {
        bail!("{name}: expected a restore, got {:?}", r.start);
    }
    let t = r.server_timing.unwrap_or_default();
    Ok(Sample {
        ms,
        restore_ms: t.restore_ms,
        memory_bound_ms: t.restore_ms + t.hooks_ms + t.invoke_ms,
        memory: r
            .memory
            .with_context(|| format!("{name}: no X-Thaw-Memory header"))?,
    })
}

fn median_u64(v: impl Iterator<Item = u64>) -> f64 {
    let v: Vec<f64> = v.map(|x| x as f64).collect();
    median_p90(&v).0
}

/// Run the benchmark and print its tables.
pub fn run(opts: WorkingSetOptions) -> anyhow::Result<()> {
    let functions = if opts.quick {
        crate::bench::bench_functions(true, &opts.cache_dir)?
    } else {
        working_set_functions(&opts.cache_dir)?
    };
    let mut tiers: Vec<(String, Option<thaw_snapshot::image::ReadThrottle>)> =
        vec![("local disk".into(), None)];
    if let Some(t) = opts.slow_tier {
        tiers.push((
            format!(
                "slow tier ({} us per read, {} MB/s)",
                t.latency_us,
                t.bytes_per_sec / 1_000_000
            ),
            Some(t),
        ));
    }
    println!(
        "working-set prefetch: first response of a restored instance, new sandbox per restore, {} runs per row, fault-around {}, one run on this machine\n",
        opts.runs,
        if opts.fault_around == 0 {
            thaw_snapshot::lazy::DEFAULT_FAULT_AROUND
        } else {
            u64::from(opts.fault_around)
        }
    );
    let mut summary: Vec<(&str, String, [f64; 4], f64)> = Vec::new();
    for f in &functions {
        let tmp = tempfile::Builder::new().prefix("thaw-bench-").tempdir()?;
        let data = tmp.path().to_path_buf();
        let daemon = LocalDaemon::start(data.clone(), |c| {
            c.memory_mode = MemoryMode::WorkingSet;
            c.standby_per_function = 0;
            c.instances = thawd::config::InstanceMode::Restore;
            // The engine's own files (bench store-restore compares the store).
            c.store = thawd::config::StoreSetting::Off;
        })?;
        let client = daemon.client()?;
        deploy_snapshotted(&client, f)?;
        daemon.stop()?;
        let dir = snapshot_dir(&data, f.name)?;
        let snap = thaw_snapshot::image::Snapshot::open(&dir)?;
        let ws = thaw_snapshot::workingset::WorkingSet::open(
            &dir.join(thaw_snapshot::workingset::WORKING_SET_FILE),
            &snap,
        )
        .with_context(|| format!("{}: no working set was recorded", f.name))?;
        let snap_pages = snap.state().memory.data_pages + snap.state().memory.zero_pages;
        let ws_share = ws.summary().pages as f64 / snap_pages.max(1) as f64;
        println!(
            "{}: snapshot {} pages ({:.1} MiB), working set {} pages in {} runs ({:.1}% of the snapshot, {:.1} MiB file)",
            f.name,
            snap_pages,
            snap.state().memory.data_pages as f64 * 4096.0 / f64::from(1 << 20),
            ws.summary().pages,
            ws.summary().runs,
            100.0 * ws_share,
            ws.summary().file_bytes as f64 / f64::from(1 << 20),
        );
        drop_page_cache(&dir)?;
        if let Some(r) = resident(&dir.join(thaw_snapshot::image::MEMORY_FILE)) {
            println!("  memory image resident after the drop (pages, size): {r}");
        }
        println!(
            "  {:<40} {:>9} {:>9} {:>9} {:>10} {:>11} {:>8} {:>11} {:>9}",
            "tier / mode",
            "median ms",
            "p90 ms",
            "server ms",
            "restore ms",
            "prefetch ms",
            "faults",
            "prefetched",
            "read MiB"
        );
        // "Pages in memory" is measured on the local tier only (a throttled
        // read is slow whatever the page cache holds) and is every tier's
        // reference.
        let mut in_memory: Option<(f64, f64)> = None;
        for (tier, throttle) in &tiers {
            let mut medians = std::collections::HashMap::new();
            for c in &CONFIGS {
                // A throttled read is slow whatever the page cache holds.
                if throttle.is_some() && !c.cold_cache {
                    continue;
                }
                let daemon = LocalDaemon::start(data.clone(), |cfg| {
                    cfg.memory_mode = c.mode;
                    cfg.standby_per_function = 0;
                    cfg.instances = thawd::config::InstanceMode::Restore;
                    cfg.snapshot_read_throttle = *throttle;
                    cfg.fault_around = opts.fault_around;
                    cfg.store = thawd::config::StoreSetting::Off;
                })?;
                let client = daemon.client()?;
                // Once untimed: the daemon's first lazy restore verifies
                // the whole snapshot.
                restore_once(&client, f.name, &dir, c.cold_cache)?;
                let mut samples = Vec::new();
                for _ in 0..opts.runs {
                    samples.push(restore_once(&client, f.name, &dir, c.cold_cache)?);
                }
                daemon.stop()?;
                let ms: Vec<f64> = samples.iter().map(|s| s.ms).collect();
                let restore: Vec<f64> = samples.iter().map(|s| s.restore_ms).collect();
                let bound: Vec<f64> = samples.iter().map(|s| s.memory_bound_ms).collect();
                let prefetch: Vec<f64> = samples.iter().map(|s| s.memory.prefetch_ms).collect();
                let (m, p) = median_p90(&ms);
                medians.insert(c.label, (m, median_p90(&bound).0));
                println!(
                    "  {:<40} {:>9.2} {:>9.2} {:>9.2} {:>10.2} {:>11.2} {:>8.0} {:>11.0} {:>9.2}",
                    format!("{tier}: {}", c.label),
                    m,
                    p,
                    median_p90(&bound).0,
                    median_p90(&restore).0,
                    median_p90(&prefetch).0,
                    median_u64(samples.iter().map(|s| s.memory.faults)),
                    median_u64(samples.iter().map(|s| s.memory.prefetched_pages)),
                    median_u64(samples.iter().map(|s| s.memory.bytes_read)) / f64::from(1 << 20),
                );
            }
            let get = |k: &str, server: bool| {
                medians
                    .get(k)
                    .map(|&(client, srv)| if server { srv } else { client })
                    .unwrap_or(f64::NAN)
            };
            if let Some(&m) = medians.get("lazy+ws, pages in memory") {
                in_memory = Some(m);
            }
            let reference =
                |server: bool| in_memory.map_or(f64::NAN, |(c, srv)| if server { srv } else { c });
            let mut ratios = [0.0; 4];
            for (n, server) in [false, true].into_iter().enumerate() {
                let ws_cold = get("lazy+ws, cold cache", server);
                ratios[2 * n] = get("lazy, cold cache", server) / ws_cold;
                ratios[2 * n + 1] = ws_cold / reference(server);
                println!(
                    "  {tier}, {}: lazy / lazy+ws {:.2}x; eager / lazy+ws {:.2}x; lazy+ws cold / in memory {:.2}x",
                    if server { "server side (restore, after-restore, invoke)" } else { "first response" },
                    ratios[2 * n],
                    get("eager, cold cache", server) / ws_cold,
                    ratios[2 * n + 1],
                );
            }
            summary.push((f.name, tier.clone(), ratios, ws_share));
        }
        println!();
    }
    for (tier, _) in &tiers {
        let rows: Vec<_> = summary.iter().filter(|s| &s.1 == tier).collect();
        if rows.is_empty() {
            continue;
        }
        let mean = |i: usize| rows.iter().map(|r| r.2[i]).sum::<f64>() / rows.len() as f64;
        let share = rows.iter().map(|r| r.3).sum::<f64>() / rows.len() as f64;
        println!(
            "{tier}, mean over {} functions (working set {:.1}% of the snapshot):\n  first response: lazy / lazy+ws {:.2}x (goal >= 3.7x), lazy+ws cold / in memory {:.2}x (goal <= 1.2x)\n  server side:    lazy / lazy+ws {:.2}x, lazy+ws cold / in memory {:.2}x",
            rows.len(),
            100.0 * share,
            mean(0),
            mean(1),
            mean(2),
            mean(3),
        );
    }
    Ok(())
}
