//! `thaw bench network`: what giving each instance a network of its own
//! costs, measured side by side in one run with networking off and on
//! (`thaw serve --network off|on`), on the hello-world functions:
//!
//! - **new instance**: the first invocation of a new instance, one at a
//!   time (template clones, no standby sandbox, so building the sandbox,
//!   the namespace included, is on the request's path); client-side
//!   latency and the `sandbox` and `network` phases of `Server-Timing`;
//! - **burst**: N concurrent first requests from zero instances, one
//!   instance each (template clones); client-side latency and wall time.
//!
//! The goals (issue "functions on the network"): at most 1 ms more at the
//! median for a new instance, and a burst within 10% of the same burst
//! without networking.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use thaw_api::{InvokeOptions, StartKind};
use thawd::config::{InstanceMode, NetworkMode, Scaling};

use crate::bench::{bench_functions, deploy};
use crate::bench_burst::{burst, percentile};
use crate::local::LocalDaemon;

/// Options of `thaw bench network`.
pub struct NetworkOptions {
    /// New instances measured one at a time, per mode.
    pub runs: usize,
    /// Concurrent requests of the burst.
    pub requests: usize,
    /// Where dependency trees are installed once (unused: hello worlds).
    pub cache_dir: PathBuf,
}

struct Measured {
    latency: Vec<f64>,
    sandbox: Vec<f64>,
    network: Vec<f64>,
    burst_p50: f64,
    burst_p99: f64,
    burst_wall: f64,
    burst_errors: usize,
    pool_misses: Option<u64>,
}

fn measure(
    f: &crate::bench::BenchFunction,
    mode: NetworkMode,
    runs: usize,
    requests: usize,
) -> anyhow::Result<Measured> {
    let tmp = tempfile::Builder::new().prefix("thaw-bench-").tempdir()?;
    let daemon = LocalDaemon::start(tmp.path().to_path_buf(), |c| {
        c.instances = InstanceMode::Clone;
        c.scaling = Scaling::Eager;
        c.standby_per_function = 0;
        c.max_instances_per_function = requests.max(1);
        c.network.mode = mode;
    })?;
    let client = daemon.client()?;
    deploy(&client, f)?;
    client
        .create_snapshot(f.name, b"{}")
        .with_context(|| format!("snapshot of {}", f.name))?;
    // The template, made once.
    client.retire_instances(f.name)?;
    client.invoke(f.name, b"{}", &InvokeOptions::default())?;
    let mut m = Measured {
        latency: Vec::new(),
        sandbox: Vec::new(),
        network: Vec::new(),
        burst_p50: 0.0,
        burst_p99: 0.0,
        burst_wall: 0.0,
        burst_errors: 0,
        pool_misses: None,
    };
    for _ in 0..runs {
        client.retire_instances(f.name)?;
        // The pool refills between runs, as between arrivals.
        std::thread::sleep(Duration::from_millis(
            std::env::var("THAW_BENCH_GAP_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(150),
        ));
        let t0 = Instant::now();
        let r = client.invoke(f.name, b"{}", &InvokeOptions::default())?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(
            r.status == 200 && r.start != Some(StartKind::Warm),
            "{}: not a new instance",
            f.name
        );
        m.latency.push(ms);
        if let Some(t) = r.server_timing {
            m.sandbox.push(t.sandbox_ms);
            m.network.push(t.network_ms);
        }
    }
    client.retire_instances(f.name)?;
    std::thread::sleep(Duration::from_millis(500));
    let mut b = burst(&daemon, f.name, requests)?;
    m.burst_p50 = percentile(&mut b.latencies, 0.5);
    m.burst_p99 = percentile(&mut b.latencies, 0.99);
    m.burst_wall = b.wall_ms;
    m.burst_errors = b.errors;
    m.pool_misses = client
        .metrics_text()
        .map_err(|e| eprintln!("cannot read the metrics: {e}"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("thaw_network_pool_misses_total"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        })
        .map(|v| v as u64);
    daemon.stop()?;
    Ok(m)
}

/// Run the benchmark and print its table.
pub fn run(opts: NetworkOptions) -> anyhow::Result<()> {
    let functions = bench_functions(true, &opts.cache_dir)?;
    let runs = opts.runs.max(1);
    let n = opts.requests.max(1);
    println!(
        "instance networking off vs on: {runs} new instances one at a time (template clones, no standby), then a burst of {n} from zero; 512 MB; one run on this machine\n"
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
        let off = measure(f, NetworkMode::Off, runs, n)?;
        let on = measure(f, NetworkMode::On, runs, n)?;
        let mut rows = [("off", off), ("on", on)];
        let mut medians = Vec::new();
        for (label, m) in rows.iter_mut() {
            let p50 = percentile(&mut m.latency, 0.5);
            let p99 = percentile(&mut m.latency, 0.99);
            let sandbox = percentile(&mut m.sandbox, 0.5);
            let network = percentile(&mut m.network, 0.5);
            println!(
                "{:<13} {:<8} {p50:>9.2} {p99:>9.2} {sandbox:>11.2} {network:>11.3} {:>11.1} {:>11.1} {:>9.0} {:>5} {:>7}",
                f.name,
                label,
                m.burst_p50,
                m.burst_p99,
                m.burst_wall,
                m.burst_errors,
                m.pool_misses.map_or("-".into(), |v| v.to_string()),
            );
            medians.push((p50, m.burst_p50, m.burst_p99));
        }
        let (off, on) = (medians[0], medians[1]);
        println!(
            "{:<13} on - off: new instance median {:+.2} ms (goal <= +1 ms); burst p50 {:.2}x, p99 {:.2}x (goal <= 1.10x)",
            f.name,
            on.0 - off.0,
            on.1 / off.1,
            on.2 / off.2
        );
    }
    println!("\nnew: client-side latency of a new instance's first invocation; sandbox/network: its Server-Timing phases; misses: leases that found the namespace pool empty");
    Ok(())
}
