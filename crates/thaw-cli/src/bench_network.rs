//! `thaw bench network`: what giving each instance a network of its own
//! costs, on the hello-world functions. Two daemons run side by side, one
//! with `--network off`, one with `--network on` (defaults otherwise),
//! and every measurement alternates between them so
//! that both see the same machine:
//!
//! - **new instance**: the first invocation of a new instance, one at a
//!   time (template clones, no standby sandbox, so building the sandbox,
//!   the namespace included, is on the request's path), `--runs` pairs,
//!   `THAW_BENCH_GAP_MS` (150) apart; client-side latency and the `sandbox`
//!   and `network` phases of `Server-Timing`;
//! - **burst**: N concurrent first requests from zero instances, one
//!   instance each (template clones), three rounds per daemon; the
//!   medians of the rounds' p50 and p99 and of their wall times (the first
//!   round finds the default pool too small, and it grows).
//!
//! The goals (issue "functions on the network"): at most 1 ms more at the
//! median for a new instance, and a burst within 10% of the same burst
//! without networking.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use thaw_api::{InvokeOptions, StartKind};
use thawd::config::{InstanceMode, NetworkMode, Scaling};

use crate::bench::{bench_functions, deploy_snapshotted, BenchFunction};
use crate::bench_burst::{burst, percentile};
use crate::local::LocalDaemon;

/// Options of `thaw bench network`.
pub struct NetworkOptions {
    /// New instances measured one at a time, per daemon.
    pub runs: usize,
    /// Concurrent requests of the burst.
    pub requests: usize,
    /// Where dependency trees are installed once (unused: hello worlds).
    pub cache_dir: PathBuf,
}

/// Bursts per daemon.
const BURST_ROUNDS: usize = 3;

#[derive(Default)]
struct Measured {
    latency: Vec<f64>,
    sandbox: Vec<f64>,
    network: Vec<f64>,
    burst_p50: Vec<f64>,
    burst_p99: Vec<f64>,
    burst_wall: Vec<f64>,
    burst_errors: usize,
    pool_misses: Option<u64>,
}

struct Side {
    label: &'static str,
    daemon: LocalDaemon,
    client: thaw_api::Client,
    _dir: tempfile::TempDir,
    m: Measured,
}

fn start(
    f: &BenchFunction,
    label: &'static str,
    mode: NetworkMode,
    requests: usize,
) -> anyhow::Result<Side> {
    let dir = tempfile::Builder::new().prefix("thaw-bench-").tempdir()?;
    let daemon = LocalDaemon::start(dir.path().to_path_buf(), |c| {
        c.instances = InstanceMode::Clone;
        c.scaling = Scaling::Eager;
        c.standby_per_function = 0;
        c.max_instances_per_function = requests.max(1);
        c.network.mode = mode;
    })?;
    let client = daemon.client()?;
    deploy_snapshotted(&client, f)?;
    // The template, made once.
    client.retire_instances(f.name)?;
    client.invoke(f.name, b"{}", &InvokeOptions::default())?;
    Ok(Side {
        label,
        daemon,
        client,
        _dir: dir,
        m: Measured::default(),
    })
}

fn gap() -> Duration {
    Duration::from_millis(
        std::env::var("THAW_BENCH_GAP_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(150),
    )
}

fn new_instance(side: &mut Side, name: &str) -> anyhow::Result<()> {
    side.client.retire_instances(name)?;
    // The pool refills between arrivals.
    std::thread::sleep(gap());
    let t0 = Instant::now();
    let r = side.client.invoke(name, b"{}", &InvokeOptions::default())?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        r.status == 200 && r.start != Some(StartKind::Warm),
        "{name}: not a new instance"
    );
    side.m.latency.push(ms);
    if let Some(t) = r.server_timing {
        side.m.sandbox.push(t.sandbox_ms);
        side.m.network.push(t.network_ms);
    }
    Ok(())
}

fn one_burst(side: &mut Side, name: &str, requests: usize) -> anyhow::Result<()> {
    side.client.retire_instances(name)?;
    // Room for the pool to fill again.
    std::thread::sleep(Duration::from_millis(1500));
    let mut b = burst(&side.daemon, name, requests)?;
    side.m.burst_p50.push(percentile(&mut b.latencies, 0.5));
    side.m.burst_p99.push(percentile(&mut b.latencies, 0.99));
    side.m.burst_wall.push(b.wall_ms);
    side.m.burst_errors += b.errors;
    Ok(())
}

fn pool_misses(side: &Side) -> Option<u64> {
    let text = side
        .client
        .metrics_text()
        .map_err(|e| eprintln!("cannot read the metrics: {e}"))
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("thaw_network_pool_misses_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Run the benchmark and print its table.
pub fn run(opts: NetworkOptions) -> anyhow::Result<()> {
    let functions = bench_functions(true, &opts.cache_dir)?;
    let runs = opts.runs.max(1);
    let n = opts.requests.max(1);
    println!(
        "instance networking off vs on, two daemons side by side, measurements alternating: {runs} new instances one at a time each ({} ms apart; template clones, no standby), then {BURST_ROUNDS} bursts of {n} from zero each (the namespace pool as configured: it grows after a burst finds it empty); 512 MB; one run on this machine\n",
        gap().as_millis(),
    );
    println!(
        "{:<13} {:<8} {:>9} {:>9} {:>11} {:>11} {:>11} {:>11} {:>9} {:>5} {:>7}",
        "function",
        "network",
        "new p50",
        "new p99",
        "sandbox p50",
        "network p50",
        "burst p50",
        "burst p99",
        "wall ms",
        "errs",
        "misses"
    );
    for f in &functions {
        let mut sides = [
            start(f, "off", NetworkMode::Off, n)?,
            start(f, "on", NetworkMode::On, n)?,
        ];
        for i in 0..runs {
            let (first, second) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
            new_instance(&mut sides[first], f.name)?;
            new_instance(&mut sides[second], f.name)?;
        }
        for i in 0..BURST_ROUNDS {
            let (first, second) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
            one_burst(&mut sides[first], f.name, n)?;
            one_burst(&mut sides[second], f.name, n)?;
        }
        let mut medians = Vec::new();
        for side in sides.iter_mut() {
            side.m.pool_misses = pool_misses(side);
            let m = &mut side.m;
            let p50 = percentile(&mut m.latency, 0.5);
            let p99 = percentile(&mut m.latency, 0.99);
            let sandbox = percentile(&mut m.sandbox, 0.5);
            let network = percentile(&mut m.network, 0.5);
            let b50 = percentile(&mut m.burst_p50, 0.5);
            let b99 = percentile(&mut m.burst_p99, 0.5);
            let wall = percentile(&mut m.burst_wall, 0.5);
            println!(
                "{:<13} {:<8} {p50:>9.2} {p99:>9.2} {sandbox:>11.2} {network:>11.3} {b50:>11.1} {b99:>11.1} {wall:>9.0} {:>5} {:>7}",
                f.name,
                side.label,
                m.burst_errors,
                m.pool_misses.map_or("-".into(), |v| v.to_string()),
            );
            medians.push((p50, b50, b99));
        }
        let (off, on) = (medians[0], medians[1]);
        println!(
            "{:<13} on - off: new instance median {:+.2} ms (goal <= +1 ms); burst p50 {:.2}x, p99 {:.2}x (goal <= 1.10x)",
            f.name,
            on.0 - off.0,
            on.1 / off.1,
            on.2 / off.2
        );
        for side in sides {
            side.daemon.stop()?;
        }
    }
    println!("\nnew: client-side latency of a new instance's first invocation; sandbox/network: its Server-Timing phases; burst: medians over the rounds; misses: leases that found the namespace pool empty");
    Ok(())
}
