//! `thaw demo`: deploy the sample functions into a throw-away data directory,
//! snapshot each, invoke each restored from its snapshot and warm, then cold
//! (after a configuration change, which makes the snapshot stale) and warm,
//! print what every phase cost, and clean up.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use thaw_api::{
    Client, CreateFunctionRequest, Environment, FunctionCode, InvokeOptions,
    UpdateFunctionConfigurationRequest,
};

use crate::local::{zip_files, LocalDaemon};

const HELLO_PY: &str = include_str!("../../../examples/functions/hello-python/app.py");
const HELLO_NODE: &str = include_str!("../../../examples/functions/hello-node/index.js");

/// Run the demo. With `data_dir` the daemon's data is kept there; otherwise a
/// temporary directory is used and removed.
pub fn run(data_dir: Option<PathBuf>, warm_runs: usize) -> anyhow::Result<()> {
    let tmp;
    let dir = match data_dir {
        Some(d) => d,
        None => {
            tmp = tempfile::Builder::new().prefix("thaw-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    println!(
        "thaw demo: starting a daemon with its data in {}",
        dir.display()
    );
    let daemon = LocalDaemon::start(dir.clone(), |_| {})?;
    let client = daemon.client()?;
    let functions = [
        (
            "hello-python",
            "python3.11",
            "app.handler",
            "app.py",
            HELLO_PY,
        ),
        (
            "hello-node",
            "nodejs20.x",
            "index.handler",
            "index.js",
            HELLO_NODE,
        ),
    ];
    let mut rows = Vec::new();
    for (name, runtime, handler, file, source) in functions {
        let zip = zip_files(&[(file, source.as_bytes(), 0o644)])?;
        client
            .create_function(&CreateFunctionRequest {
                function_name: name.into(),
                runtime: Some(runtime.into()),
                handler: Some(handler.into()),
                role: Some("arn:aws:iam::000000000000:role/demo".into()),
                code: FunctionCode {
                    zip_file: Some(zip),
                    ..Default::default()
                },
                memory_size: Some(256),
                timeout: Some(10),
                ..Default::default()
            })
            .with_context(|| format!("cannot deploy {name}"))?;
        println!("deployed {name} ({runtime})");
        let snap = client
            .create_snapshot(name, br#"{"name": "snapshot test run"}"#)
            .with_context(|| format!("cannot snapshot {name}"))?;
        println!(
            "  snapshot: {:.1} MiB, checkpoint {:.1} ms",
            snap.size_bytes as f64 / f64::from(1 << 20),
            snap.checkpoint_ms
        );
        // A sandbox for the restore is prepared in the background right
        // after the snapshot; give it a moment, as a real burst would.
        std::thread::sleep(std::time::Duration::from_millis(300));
        invoke_series(&client, name, warm_runs, &mut rows)?;
        // A configuration change makes a new revision: the snapshot no
        // longer applies, and the next instance starts cold.
        client.update_function_configuration(
            name,
            &UpdateFunctionConfigurationRequest {
                environment: Some(Environment {
                    variables: Some([("DEMO".to_string(), "cold".to_string())].into()),
                }),
                ..Default::default()
            },
        )?;
        invoke_series(&client, name, warm_runs, &mut rows)?;
    }
    println!();
    println!(
        "{:<14} {:<9} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "function", "start", "sandbox", "runtime", "init", "invoke", "client total"
    );
    for (name, start, t, total) in &rows {
        println!(
            "{:<14} {:<9} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>10.2}ms",
            name, start, t.sandbox_ms, t.runtime_ms, t.init_ms, t.invoke_ms, total
        );
    }
    println!("\n(restored: sandbox includes restoring the runtime from its snapshot; cold: sandbox, runtime start and function init)");
    daemon.stop()?;
    // Check, not assume, that nothing was left behind.
    let parent = thawd::server::cgroup_parent_name(&std::fs::canonicalize(&dir)?);
    let left: Vec<String> = std::fs::read_dir("/sys/fs/cgroup")?
        .flatten()
        .map(|e| e.path().join(&parent))
        .chain(std::iter::once(
            std::path::Path::new("/sys/fs/cgroup").join(&parent),
        ))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !left.is_empty() {
        anyhow::bail!("cgroups left behind: {}", left.join(", "));
    }
    println!("\ndaemon stopped; no instance cgroup is left (sandbox mounts lived in their own namespaces)");
    Ok(())
}

type Row = (&'static str, &'static str, thaw_api::ServerTiming, f64);

/// One new-instance invocation followed by `warm_runs` warm ones.
fn invoke_series(
    client: &Client,
    name: &'static str,
    warm_runs: usize,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    for i in 0..=warm_runs {
        let payload = format!(r#"{{"name": "demo run {i}"}}"#);
        let t0 = Instant::now();
        let r = client.invoke(name, payload.as_bytes(), &InvokeOptions::default())?;
        let total = t0.elapsed().as_secs_f64() * 1000.0;
        if let Some(err) = &r.function_error {
            anyhow::bail!(
                "{name} failed ({err}): {}",
                String::from_utf8_lossy(&r.payload)
            );
        }
        if i == 0 {
            println!("  response: {}", String::from_utf8_lossy(&r.payload));
        }
        let t = r.server_timing.unwrap_or_default();
        let start = r.start.map(|s| s.as_str()).unwrap_or("?");
        rows.push((name, start, t, total));
    }
    Ok(())
}
