//! `thaw bench cold`: the cold-start baseline. Deploys a Python and a Node.js
//! hello world and one function per runtime with a sizeable real dependency,
//! forces a cold start repeatedly (a configuration update retires the warm
//! instances), and prints median and p90 of every start phase, of the first
//! response as the client sees it, and of warm invocations for comparison.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use thaw_api::{
    Client, CreateFunctionRequest, Environment, FunctionCode, InvokeOptions, ServerTiming,
    UpdateFunctionConfigurationRequest,
};

use crate::local::{zip_files, LocalDaemon};

const HELLO_PY: &str = include_str!("../../../examples/functions/hello-python/app.py");
const HELLO_NODE: &str = include_str!("../../../examples/functions/hello-node/index.js");
const PY_BOTO3: &str = include_str!("bench_functions/py_boto3.py");
const NODE_S3: &str = include_str!("bench_functions/node_s3.js");
const PY_JSON: &str = include_str!("bench_functions/py_json.py");
const PY_PYAES: &str = include_str!("bench_functions/py_pyaes.py");
const PY_CHAMELEON: &str = include_str!("bench_functions/py_chameleon.py");
const PY_PILLOW: &str = include_str!("bench_functions/py_pillow.py");

/// Options of `thaw bench cold`.
pub struct ColdOptions {
    pub runs: usize,
    pub warm_runs: usize,
    /// Where dependency trees are installed once and reused.
    pub cache_dir: PathBuf,
    /// Only the hello-world functions (no package installs).
    pub quick: bool,
}

/// A function the benchmarks deploy.
pub(crate) struct BenchFunction {
    pub name: &'static str,
    pub runtime: &'static str,
    pub handler: &'static str,
    pub zip: Vec<u8>,
}

/// The benchmark functions: the hello worlds and, unless `quick`, one
/// function per runtime with a sizeable real dependency (installed once
/// into `cache`; skipped with a loud line if that fails).
pub(crate) fn bench_functions(quick: bool, cache: &Path) -> anyhow::Result<Vec<BenchFunction>> {
    let mut functions = vec![
        BenchFunction {
            name: "python-hello",
            runtime: "python3.11",
            handler: "app.handler",
            zip: zip_files(&[("app.py", HELLO_PY.as_bytes(), 0o644)])?,
        },
        BenchFunction {
            name: "node-hello",
            runtime: "nodejs20.x",
            handler: "index.handler",
            zip: zip_files(&[("index.js", HELLO_NODE.as_bytes(), 0o644)])?,
        },
    ];
    if !quick {
        match prepare_py_boto3(cache) {
            Ok(zip) => functions.push(BenchFunction {
                name: "python-boto3",
                runtime: "python3.11",
                handler: "app.handler",
                zip,
            }),
            Err(e) => eprintln!("SKIP python-boto3: {e:#}"),
        }
        match prepare_node_s3(cache) {
            Ok(zip) => functions.push(BenchFunction {
                name: "node-s3",
                runtime: "nodejs20.x",
                handler: "index.handler",
                zip,
            }),
            Err(e) => eprintln!("SKIP node-s3: {e:#}"),
        }
    }
    Ok(functions)
}

/// Deploys `f` ([`deploy`]) and snapshots it after one test invocation
/// with `{}`.
pub(crate) fn deploy_snapshotted(
    client: &Client,
    f: &BenchFunction,
) -> anyhow::Result<thaw_api::SnapshotReport> {
    deploy(client, f)?;
    client
        .create_snapshot(f.name, b"{}")
        .with_context(|| format!("snapshot of {}", f.name))
}

/// Deploys `f` with the benchmarks' settings (512 MB, 30 s).
pub(crate) fn deploy(client: &Client, f: &BenchFunction) -> anyhow::Result<()> {
    client.create_function(&CreateFunctionRequest {
        function_name: f.name.into(),
        runtime: Some(f.runtime.into()),
        handler: Some(f.handler.into()),
        role: Some("arn:aws:iam::000000000000:role/bench".into()),
        code: FunctionCode {
            zip_file: Some(f.zip.clone()),
            ..Default::default()
        },
        memory_size: Some(512),
        timeout: Some(30),
        ..Default::default()
    })?;
    Ok(())
}

/// Forces a cold start: a configuration change retires every instance.
pub(crate) fn force_cold(client: &Client, name: &str, run: usize) -> anyhow::Result<()> {
    client.update_function_configuration(
        name,
        &UpdateFunctionConfigurationRequest {
            environment: Some(Environment {
                variables: Some([("BENCH_RUN".to_string(), run.to_string())].into()),
            }),
            ..Default::default()
        },
    )?;
    Ok(())
}

/// Build the zip of a function directory that has dependencies installed.
fn zip_tree(dir: &Path) -> anyhow::Result<Vec<u8>> {
    thaw_api::package::zip_directory(dir).with_context(|| format!("cannot zip {}", dir.display()))
}

fn prepare_py_boto3(cache: &Path) -> anyhow::Result<Vec<u8>> {
    prepare_pip(cache, "py-boto3", &["boto3"], "boto3", PY_BOTO3)
}

/// Installs `packages` with pip into `cache/dir` once (when `marker` is
/// not there yet), writes `app` as `app.py` beside them, and zips it all.
fn prepare_pip(
    cache: &Path,
    dir: &str,
    packages: &[&str],
    marker: &str,
    app: &str,
) -> anyhow::Result<Vec<u8>> {
    let dir = cache.join(dir);
    if !dir.join(marker).exists() {
        std::fs::create_dir_all(&dir)?;
        eprintln!(
            "installing {} into {} (once)",
            packages.join(" "),
            dir.display()
        );
        let st = Command::new("python3.11")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&dir)
            .args(packages)
            .status()
            .context("cannot run pip")?;
        if !st.success() {
            bail!("pip install {} failed", packages.join(" "));
        }
    }
    std::fs::write(dir.join("app.py"), app)?;
    zip_tree(&dir)
}

/// The working-set benchmark's functions: the hello worlds, JSON
/// serialization, a pure-Python AES loop, an HTML template render and an
/// image library (pip packages installed once into `cache`; a function
/// whose install fails is skipped with a loud line).
pub(crate) fn working_set_functions(cache: &Path) -> anyhow::Result<Vec<BenchFunction>> {
    let mut functions = bench_functions(true, cache)?;
    functions.push(BenchFunction {
        name: "python-json",
        runtime: "python3.11",
        handler: "app.handler",
        zip: zip_files(&[("app.py", PY_JSON.as_bytes(), 0o644)])?,
    });
    let pip: [(&'static str, &str, &[&str], &str, &str); 3] = [
        (
            "python-pyaes",
            "py-pyaes",
            &["pyaes==1.6.1"],
            "pyaes",
            PY_PYAES,
        ),
        (
            "python-chameleon",
            "py-chameleon",
            &["chameleon==4.5.4"],
            "chameleon",
            PY_CHAMELEON,
        ),
        (
            "python-pillow",
            "py-pillow",
            &["pillow==11.0.0"],
            "PIL",
            PY_PILLOW,
        ),
    ];
    for (name, dir, packages, marker, app) in pip {
        match prepare_pip(cache, dir, packages, marker, app) {
            Ok(zip) => functions.push(BenchFunction {
                name,
                runtime: "python3.11",
                handler: "app.handler",
                zip,
            }),
            Err(e) => eprintln!("SKIP {name}: {e:#}"),
        }
    }
    Ok(functions)
}

fn prepare_node_s3(cache: &Path) -> anyhow::Result<Vec<u8>> {
    let dir = cache.join("node-s3");
    if !dir.join("node_modules/@aws-sdk/client-s3").is_dir() {
        std::fs::create_dir_all(&dir)?;
        eprintln!(
            "installing @aws-sdk/client-s3 into {} (once)",
            dir.display()
        );
        let st = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg("@aws-sdk/client-s3@3")
            .status()
            .context("cannot run npm")?;
        if !st.success() {
            bail!("npm install @aws-sdk/client-s3 failed");
        }
    }
    std::fs::write(dir.join("index.js"), NODE_S3)?;
    zip_tree(&dir)
}

/// Median and 90th percentile of `v` (nearest rank).
pub fn median_p90(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| {
        let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
        s[rank - 1]
    };
    (pick(0.5), pick(0.9))
}

/// Run the cold-start benchmark and print its table.
pub fn cold(opts: ColdOptions) -> anyhow::Result<()> {
    let functions = bench_functions(opts.quick, &opts.cache_dir)?;

    let tmp = tempfile::Builder::new().prefix("thaw-bench-").tempdir()?;
    let daemon = LocalDaemon::start(tmp.path().to_path_buf(), |_| {})?;
    let client = daemon.client()?;
    println!(
        "cold-start baseline: {} cold runs and {} warm runs per function, 512 MB, one run on this machine\n",
        opts.runs, opts.warm_runs
    );
    println!(
        "{:<14} {:<22} {:>10} {:>10}",
        "function", "measure", "median ms", "p90 ms"
    );
    for f in &functions {
        deploy(&client, f)?;
        let mut phases: Vec<ServerTiming> = Vec::new();
        let mut first = Vec::new();
        let mut warm = Vec::new();
        let mut warm_invoke = Vec::new();
        for run in 0..opts.runs {
            // A configuration change retires every instance: the next call is cold.
            force_cold(&client, f.name, run)?;
            let t0 = Instant::now();
            let r = client.invoke(f.name, b"{}", &InvokeOptions::default())?;
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            if r.function_error.is_some() {
                bail!("{} failed: {}", f.name, String::from_utf8_lossy(&r.payload));
            }
            if r.start != Some(thaw_api::StartKind::Cold) {
                bail!("{}: expected a cold start on run {run}", f.name);
            }
            first.push(ms);
            phases.push(r.server_timing.unwrap_or_default());
            for _ in 0..opts.warm_runs.div_ceil(opts.runs.max(1)) {
                let t0 = Instant::now();
                let r = client.invoke(f.name, b"{}", &InvokeOptions::default())?;
                warm.push(t0.elapsed().as_secs_f64() * 1000.0);
                warm_invoke.push(r.server_timing.unwrap_or_default().invoke_ms);
            }
        }
        let col = |get: fn(&ServerTiming) -> f64| phases.iter().map(get).collect::<Vec<f64>>();
        let rows: Vec<(&str, Vec<f64>)> = vec![
            ("sandbox", col(|t| t.sandbox_ms)),
            ("runtime start", col(|t| t.runtime_ms)),
            ("function init", col(|t| t.init_ms)),
            ("first invoke", col(|t| t.invoke_ms)),
            ("cold first response", first.clone()),
            ("warm invoke (server)", warm_invoke),
            ("warm response", warm.clone()),
        ];
        for (what, v) in rows {
            let (m, p) = median_p90(&v);
            println!("{:<14} {:<22} {:>10.2} {:>10.2}", f.name, what, m, p);
        }
        let (cm, _) = median_p90(&first);
        let (wm, _) = median_p90(&warm);
        println!(
            "{:<14} {:<22} {:>10.1}x",
            f.name,
            "cold / warm (median)",
            cm / wm
        );
        println!();
        client.delete_function(f.name)?;
    }
    daemon.stop()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::median_p90;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(median_p90(&v), (5.0, 9.0));
        assert_eq!(median_p90(&[3.0]), (3.0, 3.0));
        assert!(median_p90(&[]).0.is_nan());
    }
}
