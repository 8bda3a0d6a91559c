//! `thaw bench store-restore`: the published question about snapshot
//! stores, answered side by side: first-invocation latency of a restore
//! with the snapshot as a plain local file, from the snapshot store's local
//! tier, and from its S3 tier (a Garage server on loopback), each lazy and
//! lazy + working set, every restore cold: a new sandbox, the page cache of
//! every file involved dropped, the store's memory tier and opened
//! manifests dropped, and (store tiers) the host's copies of the state and
//! working set removed, so the restore reads as a host that never saw the
//! snapshot would.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use thaw_api::{Client, InvokeOptions, StartKind};
use thawd::config::{MemoryMode, StoreSetting};

use crate::bench::{deploy_snapshotted, median_p90, working_set_functions};
use crate::bench_working_set::drop_page_cache;
use crate::local::LocalDaemon;

/// Options of the benchmark.
#[derive(Debug)]
pub struct StoreRestoreOptions {
    /// Measured restores per function, tier and mode.
    pub runs: usize,
    /// Where pip packages are installed once.
    pub cache_dir: PathBuf,
    /// Only the hello-world functions.
    pub quick: bool,
}

/// Where the snapshot is read from.
#[derive(Clone)]
enum Tier {
    Plain,
    Local,
    S3(thaw_store::S3Config, PathBuf),
}

impl Tier {
    fn label(&self) -> &'static str {
        match self {
            Tier::Plain => "plain local file",
            Tier::Local => "store, local tier",
            Tier::S3(..) => "store, S3 tier (Garage)",
        }
    }

    fn setting(&self) -> StoreSetting {
        match self {
            Tier::Plain => StoreSetting::Off,
            Tier::Local => StoreSetting::Local,
            Tier::S3(s3, _) => StoreSetting::S3(s3.clone()),
        }
    }
}

/// Drops the page cache of every file under `dir`.
fn drop_tree(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    drop_page_cache(dir)?;
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type()?.is_dir() {
            drop_tree(&e.path())?;
        }
    }
    Ok(())
}

fn snapshot_dir(data: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = data.join("snapshots").join(name);
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

/// One cold restore: the first response's milliseconds and the server
/// side's (restore, after-restore, invoke).
fn cold_restore(
    client: &Client,
    endpoint: &str,
    name: &str,
    data: &Path,
    tier: &Tier,
) -> anyhow::Result<(f64, f64)> {
    client.retire_instances(name)?;
    let dir = snapshot_dir(data, name)?;
    if !matches!(tier, Tier::Plain) {
        for f in [
            thaw_snapshot::image::STATE_FILE,
            thaw_snapshot::workingset::WORKING_SET_FILE,
        ] {
            match std::fs::remove_file(dir.join(f)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context(f),
            }
        }
        reqwest::blocking::Client::new()
            .post(format!("{endpoint}/thaw/v1/store/drop-caches"))
            .send()?
            .error_for_status()?;
    }
    drop_tree(&dir)?;
    drop_tree(&data.join("store"))?;
    if let Tier::S3(_, garage_data) = tier {
        drop_tree(garage_data)?;
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
    Ok((ms, t.restore_ms + t.hooks_ms + t.invoke_ms))
}

/// Runs the benchmark and prints its table.
pub fn run(opts: StoreRestoreOptions) -> anyhow::Result<()> {
    let functions = if opts.quick {
        crate::bench::bench_functions(true, &opts.cache_dir)?
    } else {
        working_set_functions(&opts.cache_dir)?
    };
    let garage_dir = tempfile::Builder::new().prefix("thaw-garage-").tempdir()?;
    let workspace = std::env::current_dir()?;
    let garage = match thaw_store::garage::find_binary(Some(&workspace)) {
        Some(bin) => Some(
            thaw_store::garage::Garage::start(&bin, garage_dir.path())
                .map_err(anyhow::Error::msg)
                .context("cannot start Garage")?,
        ),
        None => {
            println!("NOTE: no garage binary (scripts/install-test-tools.sh builds one): the S3 tier is not measured\n");
            None
        }
    };
    let mut tiers = vec![Tier::Plain, Tier::Local];
    if let Some(g) = &garage {
        tiers.push(Tier::S3(g.s3.clone(), g.data_dir().to_path_buf()));
    }
    println!(
        "snapshot store vs plain file: first response of a cold restore (new sandbox, page cache, store memory tier and host copies dropped), {} runs per row, one run on this machine\n",
        opts.runs
    );
    println!(
        "  {:<16} {:<26} {:<8} {:>10} {:>8} {:>10} {:>15}",
        "function", "tier", "mode", "median ms", "p90 ms", "server ms", "vs plain file"
    );
    // (tier, mode) -> per-function ratio to the plain file, same mode.
    let mut ratios: std::collections::BTreeMap<(String, &str), Vec<f64>> = Default::default();
    for f in &functions {
        let mut plain = std::collections::HashMap::new();
        for tier in &tiers {
            let tmp = tempfile::Builder::new().prefix("thaw-bench-").tempdir()?;
            let data = tmp.path().to_path_buf();
            let start = |mode: MemoryMode| {
                let setting = tier.setting();
                LocalDaemon::start(data.clone(), move |c| {
                    c.memory_mode = mode;
                    c.standby_per_function = 0;
                    c.instances = thawd::config::InstanceMode::Restore;
                    c.store = setting;
                    c.store_disk_cache_bytes = 0;
                })
            };
            let daemon = start(MemoryMode::WorkingSet)?;
            let client = daemon.client()?;
            deploy_snapshotted(&client, f)?;
            daemon.stop()?;
            for (mode, label) in [
                (MemoryMode::Lazy, "lazy"),
                (MemoryMode::WorkingSet, "lazy+ws"),
            ] {
                let daemon = start(mode)?;
                let client = daemon.client()?;
                // Once untimed (the daemon verifies the snapshot first).
                cold_restore(&client, &daemon.endpoint, f.name, &data, tier)?;
                let mut ms = Vec::new();
                let mut server = Vec::new();
                for _ in 0..opts.runs {
                    let (m, s) = cold_restore(&client, &daemon.endpoint, f.name, &data, tier)?;
                    ms.push(m);
                    server.push(s);
                }
                daemon.stop()?;
                let (m, p) = median_p90(&ms);
                let ratio = match tier {
                    Tier::Plain => {
                        plain.insert(label, m);
                        1.0
                    }
                    _ => m / plain.get(label).copied().unwrap_or(f64::NAN),
                };
                if !matches!(tier, Tier::Plain) {
                    ratios
                        .entry((tier.label().to_string(), label))
                        .or_default()
                        .push(ratio);
                }
                println!(
                    "  {:<16} {:<26} {:<8} {:>10.2} {:>8.2} {:>10.2} {:>14.2}x",
                    f.name,
                    tier.label(),
                    label,
                    m,
                    p,
                    median_p90(&server).0,
                    ratio
                );
            }
        }
    }
    println!();
    for ((tier, mode), r) in &ratios {
        let mean = r.iter().sum::<f64>() / r.len() as f64;
        let max = r.iter().cloned().fold(f64::NAN, f64::max);
        println!(
            "{tier}, {mode}: mean {mean:.2}x, worst {max:.2}x the plain file's first response{}",
            if *mode == "lazy+ws" {
                " (goal <= 1.25x)"
            } else {
                ""
            }
        );
    }
    Ok(())
}
