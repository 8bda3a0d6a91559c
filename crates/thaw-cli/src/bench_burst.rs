//! `thaw bench burst`: N concurrent first requests to a function with a
//! snapshot and no instance, in one run per configuration:
//!
//! - **queue**: instances restored from the snapshot, at most 8 per
//!   function, the rest of the burst queues (queueing only: the daemon's
//!   behaviour before the autoscaler);
//! - **restore each**: up to N instances, each restoring the snapshot;
//! - **clone each**: up to N instances, each cloned from the template;
//! - **autoscaler**: the daemon's defaults (template clones, adaptive
//!   scaling) allowed up to N instances: it waits for a busy instance
//!   when that is expected to be quicker than starting one;
//! - **warm**: the same burst again on the N instances the previous one
//!   left warm.
//!
//! For each: median and p99 of the client-side latency, wall time of the
//! burst, errors, and the host memory each additional instance added
//! (the daemon's cgroup parent, which holds instances, standby sandboxes
//! and templates, measured with one instance and with all of them).

use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use thaw_api::{InvokeOptions, StartKind};

use crate::bench::{bench_functions, deploy_snapshotted};
use crate::local::LocalDaemon;
use thawd::config::{InstanceMode, Scaling};

/// Options of `thaw bench burst`.
pub struct BurstOptions {
    /// Concurrent requests per burst.
    pub requests: usize,
    /// Where dependency trees are installed once and reused.
    pub cache_dir: PathBuf,
    /// Only the hello-world functions.
    pub quick: bool,
}

/// One configuration of the daemon.
struct Config {
    label: &'static str,
    instances: InstanceMode,
    scaling: Scaling,
    /// `None`: as many as requests.
    max_instances: Option<usize>,
}

const CONFIGS: [Config; 4] = [
    Config {
        label: "queue (8 restored)",
        instances: InstanceMode::Restore,
        scaling: Scaling::Eager,
        max_instances: Some(8),
    },
    Config {
        label: "restore each",
        instances: InstanceMode::Restore,
        scaling: Scaling::Eager,
        max_instances: None,
    },
    Config {
        label: "clone each",
        instances: InstanceMode::Clone,
        scaling: Scaling::Eager,
        max_instances: None,
    },
    Config {
        label: "autoscaler",
        instances: InstanceMode::Clone,
        scaling: Scaling::Adaptive,
        max_instances: None,
    },
];

/// What one burst measured.
pub(crate) struct Burst {
    pub(crate) latencies: Vec<f64>,
    pub(crate) wall_ms: f64,
    pub(crate) errors: usize,
    pub(crate) new_instances: usize,
}

/// Nearest-rank percentile `q` of `v` (sorted in place).
pub(crate) fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// `requests` invocations at once (released together by a barrier).
pub(crate) fn burst(daemon: &LocalDaemon, name: &str, requests: usize) -> anyhow::Result<Burst> {
    let barrier = Arc::new(Barrier::new(requests + 1));
    let handles: Vec<_> = (0..requests)
        .map(|_| {
            let client = daemon.client()?;
            let barrier = barrier.clone();
            let name = name.to_string();
            Ok(std::thread::spawn(move || {
                barrier.wait();
                let t0 = Instant::now();
                let r = client.invoke(&name, b"{}", &InvokeOptions::default());
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                match r {
                    Ok(r) if r.status == 200 && r.function_error.is_none() => {
                        Ok((ms, r.start != Some(StartKind::Warm)))
                    }
                    Ok(r) => Err(format!("status {}", r.status)),
                    Err(e) => Err(e.to_string()),
                }
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    let t0 = Instant::now();
    barrier.wait();
    let mut out = Burst {
        latencies: Vec::with_capacity(requests),
        wall_ms: 0.0,
        errors: 0,
        new_instances: 0,
    };
    for h in handles {
        match h.join() {
            Ok(Ok((ms, new))) => {
                out.latencies.push(ms);
                out.new_instances += usize::from(new);
            }
            Ok(Err(e)) => {
                if out.errors == 0 {
                    eprintln!("  first error: {e}");
                }
                out.errors += 1;
            }
            Err(_) => out.errors += 1,
        }
    }
    out.wall_ms = t0.elapsed().as_secs_f64() * 1000.0;
    Ok(out)
}

/// Bytes charged to the daemon's cgroups (memory controller, v1 or v2).
fn charged_bytes(data_dir: &std::path::Path) -> Option<u64> {
    let parent = thawd::server::cgroup_parent_name(&std::fs::canonicalize(data_dir).ok()?);
    let v1 = PathBuf::from("/sys/fs/cgroup/memory")
        .join(&parent)
        .join("memory.usage_in_bytes");
    let v2 = PathBuf::from("/sys/fs/cgroup")
        .join(&parent)
        .join("memory.current");
    let text = std::fs::read_to_string(v1)
        .or_else(|_| std::fs::read_to_string(v2))
        .ok()?;
    text.trim().parse().ok()
}

fn print_row(
    name: &str,
    label: &str,
    b: &mut Burst,
    warm_p99: Option<f64>,
    per_instance: Option<f64>,
) {
    let wall = b.wall_ms;
    let p50 = percentile(&mut b.latencies, 0.5);
    let p99 = percentile(&mut b.latencies, 0.99);
    let ratio = warm_p99.map_or(String::new(), |w| format!("{:.1}x", p99 / w));
    let mem = per_instance.map_or(String::new(), |m| format!("{:.2}", m / f64::from(1 << 20)));
    println!(
        "{name:<14} {label:<20} {p50:>9.1} {p99:>9.1} {wall:>9.0} {:>6} {:>5} {ratio:>10} {mem:>12}",
        b.new_instances, b.errors
    );
}

/// Run the benchmark and print its table.
pub fn run(opts: BurstOptions) -> anyhow::Result<()> {
    let functions = bench_functions(opts.quick, &opts.cache_dir)?;
    let n = opts.requests.max(1);
    println!(
        "burst from zero instances: {n} concurrent first requests per function, 512 MB, snapshot in the local store; one run on this machine\n"
    );
    println!(
        "{:<14} {:<20} {:>9} {:>9} {:>9} {:>6} {:>5} {:>10} {:>12}",
        "function",
        "configuration",
        "p50 ms",
        "p99 ms",
        "wall ms",
        "new",
        "errs",
        "p99/warm",
        "MiB/instance"
    );
    for f in &functions {
        let mut rows = Vec::new();
        let mut warm: Option<Burst> = None;
        for config in &CONFIGS {
            let tmp = tempfile::Builder::new().prefix("thaw-bench-").tempdir()?;
            let daemon = LocalDaemon::start(tmp.path().to_path_buf(), |c| {
                c.instances = config.instances;
                c.scaling = config.scaling;
                c.max_instances_per_function = config.max_instances.unwrap_or(n);
            })?;
            let client = daemon.client()?;
            deploy_snapshotted(&client, f)?;
            // From zero: no instance; the standby sandbox (and, for
            // clones, the template) made for one new instance.
            client.retire_instances(f.name)?;
            let one = client.invoke(f.name, b"{}", &InvokeOptions::default())?;
            anyhow::ensure!(one.status == 200, "{}: first invocation failed", f.name);
            std::thread::sleep(Duration::from_millis(500));
            let with_one = charged_bytes(tmp.path());
            client.retire_instances(f.name)?;
            std::thread::sleep(Duration::from_millis(500));
            let b = burst(&daemon, f.name, n)?;
            std::thread::sleep(Duration::from_millis(500));
            let with_all = charged_bytes(tmp.path());
            let per_instance = match (with_one, with_all) {
                (Some(a), Some(z)) if b.new_instances > 1 => {
                    Some((z as f64 - a as f64) / (b.new_instances as f64 - 1.0))
                }
                _ => None,
            };
            if config.max_instances.is_none()
                && config.instances == InstanceMode::Clone
                && config.scaling == Scaling::Eager
            {
                // The same burst on the instances this one left warm.
                warm = Some(burst(&daemon, f.name, n)?);
            }
            rows.push((config.label, b, per_instance));
            daemon.stop()?;
        }
        let warm_p99 = warm.as_mut().map(|w| percentile(&mut w.latencies, 0.99));
        for (label, mut b, per_instance) in rows {
            print_row(f.name, label, &mut b, warm_p99, per_instance);
        }
        if let Some(mut w) = warm {
            print_row(f.name, "warm (same burst)", &mut w, warm_p99, None);
        }
    }
    println!("\nnew: requests served by an instance made for them (restored or cloned); MiB/instance: host memory (the daemon's cgroups) added per additional instance");
    Ok(())
}
