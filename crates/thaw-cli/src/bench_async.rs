//! `thaw bench async`: the price of durable asynchronous invocation. The
//! same load against two daemons side by side in one run, one whose event
//! queue is on disk (the default: each 202 waits for its event's commit)
//! and one whose queue is in memory (lost with the daemon):
//!
//! - `CLIENTS` threads send `EVENTS` `Event` invocations of the Python
//!   hello world as fast as they are answered;
//! - **accept**: each 202's latency as the client sees it (median, p99) and
//!   events accepted per second over the whole send;
//! - **end to end**: from the moment the client sent an event to the `END`
//!   of its run in the function's log (median, p99);
//!
//! and the ratio disk / memory of each. The function is warmed with one
//! synchronous call first, so the figures are the queue's, not a start's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use thaw_api::{InvocationType, InvokeOptions};

use crate::bench::{bench_functions, deploy};
use crate::local::LocalDaemon;

/// Options of `thaw bench async`.
pub struct AsyncOptions {
    /// Events per daemon.
    pub events: usize,
    /// Concurrent senders.
    pub clients: usize,
}

/// Figures of one daemon.
struct Figures {
    label: &'static str,
    accepted_per_sec: f64,
    accept_ms: (f64, f64),
    end_to_end_ms: (f64, f64),
    refused: usize,
}

fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn measure(label: &'static str, durable: bool, opts: &AsyncOptions) -> anyhow::Result<Figures> {
    let data = tempfile::Builder::new()
        .prefix("thaw-bench-async-")
        .tempdir()?;
    let daemon = LocalDaemon::start(data.path().to_path_buf(), |c| {
        c.events.durable = durable;
        c.events.max_queued = opts.events + 100;
    })?;
    let client = daemon.client()?;
    let f = bench_functions(true, &PathBuf::from("/nonexistent"))?
        .into_iter()
        .find(|f| f.name == "python-hello")
        .context("no python-hello benchmark function")?;
    deploy(&client, &f)?;
    client
        .invoke(f.name, b"{}", &InvokeOptions::default())
        .context("warm-up invocation")?;

    let per_client = opts.events.div_ceil(opts.clients);
    let barrier = Arc::new(Barrier::new(opts.clients));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..opts.clients)
        .map(|_| {
            let (client, barrier) = (client.clone(), barrier.clone());
            std::thread::spawn(move || {
                let options = InvokeOptions {
                    invocation_type: InvocationType::Event,
                    ..Default::default()
                };
                barrier.wait();
                let mut sent = Vec::with_capacity(per_client);
                let mut refused = 0;
                for _ in 0..per_client {
                    let at = now_ms();
                    let t = Instant::now();
                    match client.invoke("python-hello", b"{}", &options) {
                        Ok(r) if r.status == 202 => {
                            let ms = t.elapsed().as_secs_f64() * 1000.0;
                            sent.push((r.request_id.unwrap_or_default(), at, ms));
                        }
                        _ => refused += 1,
                    }
                }
                (sent, refused)
            })
        })
        .collect();
    let mut sent = Vec::new();
    let mut refused = 0;
    for t in threads {
        let (s, r) = t.join().map_err(|_| anyhow::anyhow!("a sender panicked"))?;
        sent.extend(s);
        refused += r;
    }
    let send_secs = t0.elapsed().as_secs_f64();

    // Until every event ran.
    let deadline = Instant::now() + Duration::from_secs(600);
    while client.event_queue(f.name)?.queued > 0 {
        if Instant::now() > deadline {
            bail!("{label}: events still queued after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each run's END in the function's log (written as the run ends).
    std::thread::sleep(Duration::from_millis(500));
    let log = std::fs::read_to_string(data.path().join("logs").join(format!("{}.jsonl", f.name)))?;
    let mut ended: HashMap<String, f64> = HashMap::new();
    for line in log.lines() {
        let Ok(r) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(text), Some(ts)) = (r["line"].as_str(), r["ts_ms"].as_f64()) else {
            continue;
        };
        if let Some(id) = text.strip_prefix("END RequestId: ") {
            ended.entry(id.trim().to_string()).or_insert(ts);
        }
    }
    let accept: Vec<f64> = sent.iter().map(|(_, _, ms)| *ms).collect();
    let end_to_end: Vec<f64> = sent
        .iter()
        .filter_map(|(id, at, _)| ended.get(id).map(|end| end - at))
        .collect();
    if end_to_end.len() < sent.len() {
        eprintln!(
            "{label}: {} of {} events have no END in the log",
            sent.len() - end_to_end.len(),
            sent.len()
        );
    }
    daemon.stop()?;
    Ok(Figures {
        label,
        accepted_per_sec: sent.len() as f64 / send_secs,
        accept_ms: (percentile(&accept, 0.5), percentile(&accept, 0.99)),
        end_to_end_ms: (percentile(&end_to_end, 0.5), percentile(&end_to_end, 0.99)),
        refused,
    })
}

/// Runs the benchmark and prints its table.
pub fn run(opts: AsyncOptions) -> anyhow::Result<()> {
    if opts.events == 0 || opts.clients == 0 {
        bail!("--events and --clients must be at least 1");
    }
    println!(
        "thaw bench async: {} Event invocations of python-hello from {} clients, per daemon",
        opts.events, opts.clients
    );
    let disk = measure("disk (durable)", true, &opts)?;
    let memory = measure("memory", false, &opts)?;
    println!(
        "{:<16} {:>12} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "queue", "accepted/s", "accept p50", "accept p99", "e2e p50", "e2e p99", "refused"
    );
    for f in [&disk, &memory] {
        println!(
            "{:<16} {:>12.0} {:>10.2}ms {:>10.2}ms {:>10.1}ms {:>10.1}ms {:>8}",
            f.label,
            f.accepted_per_sec,
            f.accept_ms.0,
            f.accept_ms.1,
            f.end_to_end_ms.0,
            f.end_to_end_ms.1,
            f.refused
        );
    }
    println!(
        "disk / memory: accepted/s {:.2}x, accept p50 {:.2}x p99 {:.2}x, end to end p50 {:.2}x p99 {:.2}x",
        disk.accepted_per_sec / memory.accepted_per_sec,
        disk.accept_ms.0 / memory.accept_ms.0,
        disk.accept_ms.1 / memory.accept_ms.1,
        disk.end_to_end_ms.0 / memory.end_to_end_ms.0,
        disk.end_to_end_ms.1 / memory.end_to_end_ms.1,
    );
    Ok(())
}
