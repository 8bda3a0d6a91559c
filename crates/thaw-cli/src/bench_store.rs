//! `thaw bench store`: the snapshot store on real snapshots. Builds the
//! snapshots of ten functions of two runtimes (five Python, five Node.js),
//! publishes their memory images, working sets and states into a fresh
//! store per chunking scheme, and reports the dedup ratio (logical bytes
//! over unique chunk bytes), the stored ratio after compression, and the
//! throughput of publishing and of reading every blob back with the page
//! cache dropped and hot.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use thaw_store::{Chunking, Store, StoreConfig};
use thawd::config::MemoryMode;

use crate::bench::{deploy, working_set_functions, BenchFunction};
use crate::bench_working_set::drop_page_cache;
use crate::local::{zip_files, LocalDaemon};

/// Options of `thaw bench store`.
pub struct StoreOptions {
    /// Where pip and npm packages are installed once.
    pub cache_dir: PathBuf,
}

const NODE_JSON: &str = r#"const doc = { records: Array.from({ length: 2000 }, (_, i) => ({ id: i, name: `record-${i}`, tags: Array.from({ length: i % 7 }, (_, j) => `t${j}`), score: i * 0.37 })) };
exports.handler = async () => { const text = JSON.stringify(doc); return { bytes: text.length, records: JSON.parse(text).records.length }; };
"#;
const NODE_CRYPTO: &str = r#"const crypto = require('crypto');
const data = Buffer.alloc(1 << 20, 7);
exports.handler = async () => ({ sha256: crypto.createHash('sha256').update(data).digest('hex'), uuid: crypto.randomUUID() });
"#;
const NODE_ZLIB: &str = r#"const zlib = require('zlib');
const text = 'thaw '.repeat(200000);
exports.handler = async () => { const z = zlib.gzipSync(text); return { in: text.length, out: z.length, back: zlib.gunzipSync(z).length }; };
"#;
const NODE_TEMPLATE: &str = r#"const rows = (n) => Array.from({ length: n }, (_, r) => `<tr>${Array.from({ length: 20 }, (_, c) => `<td>${r}:${c}</td>`).join('')}</tr>`).join('\n');
exports.handler = async () => ({ bytes: `<html><body><table>${rows(50)}</table></body></html>`.length });
"#;

fn node_function(name: &'static str, source: &str) -> anyhow::Result<BenchFunction> {
    Ok(BenchFunction {
        name,
        runtime: "nodejs20.x",
        handler: "index.handler",
        zip: zip_files(&[("index.js", source.as_bytes(), 0o644)])?,
    })
}

/// Sum of the sizes of the files under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                total += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

/// Drops the page cache of every file under `dir`.
fn drop_tree(dir: &Path) -> anyhow::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        drop_page_cache(&d)?;
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(())
}

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1 << 20)
}

/// Run the benchmark and print its table.
pub fn run(opts: StoreOptions) -> anyhow::Result<()> {
    let mut functions = working_set_functions(&opts.cache_dir)?;
    functions.retain(|f| f.runtime == "python3.11" || f.name == "node-hello");
    for (name, src) in [
        ("node-json", NODE_JSON),
        ("node-crypto", NODE_CRYPTO),
        ("node-zlib", NODE_ZLIB),
        ("node-template", NODE_TEMPLATE),
    ] {
        functions.push(node_function(name, src)?);
    }
    let tmp = tempfile::Builder::new().prefix("thaw-bench-").tempdir()?;
    let data = tmp.path().join("data");
    let daemon = LocalDaemon::start(data.clone(), |c| {
        c.memory_mode = MemoryMode::WorkingSet;
        c.standby_per_function = 0;
        c.instances = thawd::config::InstanceMode::Restore;
        // The snapshots' own files are what this benchmark cuts up.
        c.store = thawd::config::StoreSetting::Off;
    })?;
    let client = daemon.client()?;
    // (function, file, bytes)
    let mut blobs: Vec<(String, &'static str, Vec<u8>)> = Vec::new();
    for f in &functions {
        deploy(&client, f)?;
    }
    // Each function snapshotted twice: the second stands for a rebuild of
    // the same code (another host, a daemon restart).
    for round in ["a", "b"] {
        for f in &functions {
            client
                .create_snapshot(f.name, b"{}")
                .with_context(|| format!("snapshot of {}", f.name))?;
            let dir = std::fs::read_dir(data.join("snapshots").join(f.name))?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.is_dir())
                .with_context(|| format!("no snapshot directory for {}", f.name))?;
            for file in ["memory.thaw", "workingset.thaw", "state.thaw"] {
                if let Ok(b) = std::fs::read(dir.join(file)) {
                    blobs.push((format!("{}-{round}", f.name), file, b));
                }
            }
        }
    }
    daemon.stop()?;
    let logical: u64 = blobs.iter().map(|b| b.2.len() as u64).sum();
    let first_round: Vec<usize> = (0..blobs.len())
        .filter(|&i| blobs[i].0.ends_with("-a"))
        .collect();
    println!(
        "snapshot store on the snapshots of {} functions ({} Python, {} Node.js), each snapshotted twice: {} blobs, {:.1} MiB in all; one run on this machine\n",
        functions.len(),
        functions.iter().filter(|f| f.runtime == "python3.11").count(),
        functions.iter().filter(|f| f.runtime == "nodejs20.x").count(),
        blobs.len(),
        mib(logical)
    );
    println!(
        "{:<26} {:>7} {:>10} {:>9} {:>8} {:>11} {:>9} {:>10} {:>10} {:>10}",
        "chunking",
        "chunks",
        "unique MiB",
        "dedup 10f",
        "dedup",
        "stored MiB",
        "stored x",
        "put MB/s",
        "get cold",
        "get hot"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for (label, chunking) in [
        ("fixed 512 KiB (Lambda)", Chunking::FIXED_512K),
        ("fixed 64 KiB", Chunking::Fixed { size: 64 << 10 }),
        ("CDC avg 256 KiB", Chunking::default()),
        (
            "CDC avg 64 KiB",
            Chunking::ContentDefined {
                min: 16 << 10,
                avg: 64 << 10,
                max: 256 << 10,
            },
        ),
    ] {
        let root = tmp
            .path()
            .join(format!("store-{}", label.replace(' ', "-")));
        let store = Store::local(
            &root,
            [7; 32],
            StoreConfig {
                memory_budget: 0,
                chunking,
                ..StoreConfig::default()
            },
        )?;
        let t0 = Instant::now();
        let mut refs = Vec::new();
        let mut unique = std::collections::HashMap::new();
        let mut unique_first = std::collections::HashMap::new();
        let mut chunks = 0usize;
        for (i, (func, file, bytes)) in blobs.iter().enumerate() {
            let r = rt.block_on(store.put("bench", &format!("{func}/{file}"), bytes))?;
            let m = rt.block_on(store.manifest(&r.blob))?;
            chunks += m.chunks.len();
            for c in m.chunks {
                if first_round.contains(&i) {
                    unique_first.insert(c.id.clone(), u64::from(c.len));
                }
                unique.insert(c.id, u64::from(c.len));
            }
            refs.push(r.blob);
        }
        let logical_first: u64 = first_round.iter().map(|&i| blobs[i].2.len() as u64).sum();
        let unique_first: u64 = unique_first.values().sum();
        let put_s = t0.elapsed().as_secs_f64();
        let unique_bytes: u64 = unique.values().sum();
        let stored = bytes_under(&root.join("chunks"));
        let read_all = |cold: bool| -> anyhow::Result<f64> {
            if cold {
                drop_tree(&root)?;
            }
            let t = Instant::now();
            for r in &refs {
                rt.block_on(store.get(r))?;
            }
            Ok(mib(logical) * 1.048_576 / t.elapsed().as_secs_f64())
        };
        let cold = read_all(true)?;
        let hot = read_all(false)?;
        println!(
            "{:<26} {:>7} {:>10.1} {:>8.2}x {:>7.2}x {:>11.1} {:>8.2}x {:>10.0} {:>10.0} {:>10.0}",
            label,
            chunks,
            mib(unique_bytes),
            logical_first as f64 / unique_first.max(1) as f64,
            logical as f64 / unique_bytes.max(1) as f64,
            mib(stored),
            logical as f64 / stored.max(1) as f64,
            mib(logical) * 1.048_576 / put_s,
            cold,
            hot,
        );
    }
    println!("\n(dedup 10f = logical / unique chunk bytes over the ten functions' first snapshots; dedup = the same over both snapshots of each; stored x = logical / bytes in the object tier after zstd; MB/s of logical bytes; get reads every blob through the object tier, memory cache off)");
    Ok(())
}
