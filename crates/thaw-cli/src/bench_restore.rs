//! `thaw bench restore`: restore-to-first-response against cold starts, in
//! one run. For each benchmark function: the cold first response (as `thaw
//! bench cold` measures it), one snapshot (checkpoint time, size), and the
//! first response of instances restored from it, eager, lazy and lazy +
//! working set, and of instances cloned from its template, from a standby
//! sandbox (the default) and into a new sandbox (`--standby 0`),
//! with the warm response after each restore. Medians and p90 over the runs;
//! the page cache is hot (the snapshot was just written and read).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use thaw_api::{Client, InvokeOptions, ServerTiming, StartKind};

use crate::bench::{bench_functions, deploy, deploy_snapshotted, force_cold, median_p90};
use crate::local::LocalDaemon;
use thawd::config::{InstanceMode, MemoryMode};

/// Options of `thaw bench restore`.
pub struct RestoreOptions {
    /// Measured runs per function and configuration.
    pub runs: usize,
    /// Where dependency trees are installed once and reused.
    pub cache_dir: PathBuf,
    /// Only the hello-world functions.
    pub quick: bool,
}

/// One way of making a new instance from the snapshot.
struct Mode {
    label: &'static str,
    instances: InstanceMode,
    memory: MemoryMode,
    standby: usize,
}

const MODES: [Mode; 8] = [
    Mode {
        label: "eager, standby",
        instances: InstanceMode::Restore,
        memory: MemoryMode::Eager,
        standby: 1,
    },
    Mode {
        label: "lazy, standby",
        instances: InstanceMode::Restore,
        memory: MemoryMode::Lazy,
        standby: 1,
    },
    Mode {
        label: "lazy+ws, standby",
        instances: InstanceMode::Restore,
        memory: MemoryMode::WorkingSet,
        standby: 1,
    },
    Mode {
        label: "eager, new sandbox",
        instances: InstanceMode::Restore,
        memory: MemoryMode::Eager,
        standby: 0,
    },
    Mode {
        label: "lazy, new sandbox",
        instances: InstanceMode::Restore,
        memory: MemoryMode::Lazy,
        standby: 0,
    },
    Mode {
        label: "lazy+ws, new sandbox",
        instances: InstanceMode::Restore,
        memory: MemoryMode::WorkingSet,
        standby: 0,
    },
    Mode {
        label: "template clone, standby",
        instances: InstanceMode::Clone,
        memory: MemoryMode::WorkingSet,
        standby: 1,
    },
    Mode {
        label: "template clone, new sandbox",
        instances: InstanceMode::Clone,
        memory: MemoryMode::WorkingSet,
        standby: 0,
    },
];

/// Time for a standby sandbox to be rebuilt after the previous restore
/// used it (a burst arriving this fast would restore into new sandboxes).
const STANDBY_SETTLE: Duration = Duration::from_millis(400);

/// One invocation, timed by the client.
fn timed(client: &Client, name: &str) -> anyhow::Result<(f64, Option<StartKind>, ServerTiming)> {
    let t0 = Instant::now();
    let r = client.invoke(name, b"{}", &InvokeOptions::default())?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    if r.function_error.is_some() {
        bail!("{name} failed: {}", String::from_utf8_lossy(&r.payload));
    }
    Ok((ms, r.start, r.server_timing.unwrap_or_default()))
}

fn row(name: &str, what: &str, v: &[f64]) {
    let (m, p) = median_p90(v);
    println!("{name:<14} {what:<34} {m:>10.2} {p:>10.2}");
}

/// Run the benchmark and print its table.
pub fn run(opts: RestoreOptions) -> anyhow::Result<()> {
    let functions = bench_functions(opts.quick, &opts.cache_dir)?;
    println!(
        "restore from snapshot vs. cold start: {} runs per function and mode, 512 MB, page cache hot, one run on this machine\n",
        opts.runs
    );
    println!(
        "{:<14} {:<34} {:>10} {:>10}",
        "function", "measure", "median ms", "p90 ms"
    );
    for f in &functions {
        // Cold starts and the snapshot, on a daemon of their own.
        let tmp = tempfile::Builder::new().prefix("thaw-bench-").tempdir()?;
        let daemon = LocalDaemon::start(tmp.path().to_path_buf(), |_| {})?;
        let client = daemon.client()?;
        deploy(&client, f)?;
        let mut cold = Vec::new();
        for run in 0..opts.runs {
            force_cold(&client, f.name, run)?;
            let (ms, start, _) = timed(&client, f.name)?;
            if start != Some(StartKind::Cold) {
                bail!("{}: expected a cold start on run {run}", f.name);
            }
            cold.push(ms);
        }
        daemon.stop()?;
        row(f.name, "cold first response", &cold);
        let (cold_median, _) = median_p90(&cold);

        for mode in &MODES {
            let tmp = tempfile::Builder::new().prefix("thaw-bench-").tempdir()?;
            let daemon = LocalDaemon::start(tmp.path().to_path_buf(), |c| {
                c.memory_mode = mode.memory;
                c.standby_per_function = mode.standby;
                c.instances = mode.instances;
            })?;
            let client = daemon.client()?;
            let report = deploy_snapshotted(&client, f)?;
            if mode.label == MODES[0].label {
                println!(
                    "{:<14} {:<34} {:>10.2} {:>10}",
                    f.name, "checkpoint", report.checkpoint_ms, ""
                );
                println!(
                    "{:<14} {:<34} {:>10.1} {:>10}",
                    f.name,
                    "snapshot size, MiB",
                    report.size_bytes as f64 / f64::from(1 << 20),
                    ""
                );
            }
            let (mut first, mut restore, mut sandbox, mut warm) = (vec![], vec![], vec![], vec![]);
            let (mut memory, mut hooks) = (vec![], vec![]);
            let mut fell_back = 0;
            for _ in 0..opts.runs {
                client.retire_instances(f.name)?;
                if mode.standby > 0 {
                    std::thread::sleep(STANDBY_SETTLE);
                }
                let (ms, start, t) = timed(&client, f.name)?;
                if start != Some(StartKind::Restored) {
                    fell_back += 1;
                    continue;
                }
                first.push(ms);
                restore.push(t.restore_ms);
                memory.push(t.memory_ms);
                hooks.push(t.hooks_ms);
                sandbox.push(t.sandbox_ms);
                warm.push(timed(&client, f.name)?.0);
            }
            daemon.stop()?;
            if first.is_empty() {
                println!(
                    "SKIP {} {}: every restore fell back to a cold start",
                    f.name, mode.label
                );
                continue;
            }
            if fell_back > 0 {
                println!(
                    "NOTE {} {}: {fell_back} of {} restores fell back to a cold start (not counted)",
                    f.name, mode.label, opts.runs
                );
            }
            row(
                f.name,
                &format!("restored first response ({})", mode.label),
                &first,
            );
            row(f.name, "  of which sandbox (server)", &sandbox);
            row(f.name, "  of which restore (server)", &restore);
            row(f.name, "    of which memory (server)", &memory);
            row(f.name, "  of which after-restore (server)", &hooks);
            row(f.name, "  warm response after it", &warm);
            let (m, _) = median_p90(&first);
            println!(
                "{:<14} {:<34} {:>9.1}x",
                f.name,
                "  cold / restored (median)",
                cold_median / m
            );
        }
        println!();
    }
    Ok(())
}
