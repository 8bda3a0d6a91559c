//! `thaw deploy`, `thaw list` and `thaw delete`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use thaw_api::{
    CreateFunctionRequest, Environment, FunctionCode, FunctionConfiguration,
    UpdateFunctionCodeRequest, UpdateFunctionConfigurationRequest,
};

use crate::client;

/// Role recorded for functions deployed from the command line (thaw has no IAM).
const DEFAULT_ROLE: &str = "arn:aws:iam::000000000000:role/thaw";

/// Arguments of `thaw deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The function's name.
    pub name: String,
    /// `python3.11`, `nodejs20.x`, `nodejs22.x`, `provided`, `provided.al2` or `provided.al2023`.
    #[arg(long)]
    pub runtime: String,
    /// Handler, e.g. `app.handler` (not needed by `provided` runtimes).
    #[arg(long)]
    pub handler: Option<String>,
    /// A directory to zip, or a ready zip file.
    #[arg(long)]
    pub code: PathBuf,
    /// Memory size, MB [default on create: 128].
    #[arg(long)]
    pub memory: Option<u32>,
    /// Timeout, seconds [default on create: 3].
    #[arg(long)]
    pub timeout: Option<u32>,
    /// An environment variable; repeat for more. Replaces all variables.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Free text.
    #[arg(long)]
    pub description: Option<String>,
    /// A secret environment variable (repeatable): like --env, and listed
    /// in THAW_SECRETS, so it is never in a snapshot and reaches restored
    /// instances only after their restore.
    #[arg(long = "secret-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub secret_env: Vec<(String, String)>,
    /// Do not wait for the snapshot the daemon builds of the new code.
    #[arg(long)]
    pub no_wait: bool,
    /// Where instances may connect to: `all` (the default), `none`, or an
    /// allowed destination `CIDR`, `CIDR:PORT` or `CIDR:FIRST-LAST`
    /// (repeat for more; see `thaw settings`)
    #[arg(long = "egress")]
    pub egress: Vec<String>,
    /// Then publish the result as a new version (Lambda's `PublishVersion`).
    #[arg(long)]
    pub publish: bool,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The code to upload: a directory is zipped (keeping execute bits), a file
/// is taken as a zip.
fn code_zip(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        thaw_api::package::zip_directory(path)
            .with_context(|| format!("cannot zip {}", path.display()))
    } else {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if !bytes.starts_with(b"PK") {
            bail!("{} is neither a directory nor a zip file", path.display());
        }
        Ok(bytes)
    }
}

/// Create the function, or update its code and configuration.
pub fn deploy(endpoint: &str, args: DeployArgs) -> anyhow::Result<()> {
    let c = client(endpoint)?;
    let zip = code_zip(&args.code)?;
    let mut vars: std::collections::BTreeMap<String, String> = args.env.iter().cloned().collect();
    if !args.secret_env.is_empty() {
        let names: Vec<&str> = args.secret_env.iter().map(|(k, _)| k.as_str()).collect();
        vars.insert("THAW_SECRETS".into(), names.join(","));
        vars.extend(args.secret_env.iter().cloned());
    }
    let environment = (!vars.is_empty()).then_some(Environment {
        variables: Some(vars),
    });
    let exists = match c.get_function_configuration(&args.name) {
        Ok(_) => true,
        Err(e) if e.is_not_found() => false,
        Err(e) => return Err(e).with_context(|| format!("cannot look up {}", args.name)),
    };
    let cfg = if exists {
        c.update_function_code(
            &args.name,
            &UpdateFunctionCodeRequest {
                zip_file: Some(zip),
                ..Default::default()
            },
        )
        .with_context(|| format!("cannot update the code of {}", args.name))?;
        let cfg = c
            .update_function_configuration(
                &args.name,
                &UpdateFunctionConfigurationRequest {
                    runtime: Some(args.runtime.clone()),
                    handler: args.handler.clone(),
                    memory_size: args.memory.map(i64::from),
                    timeout: args.timeout.map(i64::from),
                    environment,
                    description: args.description.clone(),
                    ..Default::default()
                },
            )
            .with_context(|| format!("cannot update the configuration of {}", args.name))?;
        println!("updated {}", describe(&cfg));
        cfg
    } else {
        let cfg = c
            .create_function(&CreateFunctionRequest {
                function_name: args.name.clone(),
                runtime: Some(args.runtime.clone()),
                handler: args.handler.clone(),
                role: Some(DEFAULT_ROLE.into()),
                code: FunctionCode {
                    zip_file: Some(zip),
                    ..Default::default()
                },
                memory_size: args.memory.map(i64::from),
                timeout: args.timeout.map(i64::from),
                environment,
                description: args.description.clone(),
                ..Default::default()
            })
            .with_context(|| format!("cannot create {}", args.name))?;
        println!("created {}", describe(&cfg));
        cfg
    };
    println!("  code sha256 {}", cfg.code_sha256);
    if !args.egress.is_empty() {
        let mut s = c
            .get_function_settings(&args.name)
            .with_context(|| format!("cannot read the settings of {}", args.name))?;
        s.egress = Some(args.egress.clone());
        c.put_function_settings(&args.name, &s)
            .with_context(|| format!("cannot set the egress of {}", args.name))?;
        println!("  egress {}", args.egress.join(" "));
    }
    // With the snapshot pipeline on, the daemon now builds a snapshot of
    // this revision; until it is ready, instances start cold.
    if !args.no_wait {
        if let Ok(s) = c.snapshot_status(&args.name) {
            use thaw_api::SnapshotState as S;
            if matches!(s.state, S::Queued | S::Building) {
                let last = crate::snapshot_cmd::follow_build(&c, &args.name, &s.revision_id)?;
                crate::snapshot_cmd::print_outcome(&last);
            }
        }
    }
    if args.publish {
        let v = c
            .publish_version(&args.name, &Default::default())
            .with_context(|| format!("cannot publish {}", args.name))?;
        println!("published version {} ({})", v.version, v.function_arn);
    }
    Ok(())
}

fn describe(c: &FunctionConfiguration) -> String {
    format!(
        "{}: {}, {} MB, {} s timeout, code {}",
        c.function_name,
        c.runtime,
        c.memory_size,
        c.timeout,
        human_bytes(c.code_size)
    )
}

/// `1.2 KiB`, `3.4 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Print the functions as a table.
pub fn list(endpoint: &str) -> anyhow::Result<()> {
    let functions = client(endpoint)?
        .list_all_functions()
        .context("cannot list functions")?;
    if functions.is_empty() {
        eprintln!("no functions");
        return Ok(());
    }
    let rows: Vec<[String; 6]> = functions
        .iter()
        .map(|f| {
            [
                f.function_name.clone(),
                f.runtime.clone(),
                format!("{} MB", f.memory_size),
                format!("{} s", f.timeout),
                human_bytes(f.code_size),
                f.last_modified.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "NAME",
                "RUNTIME",
                "MEMORY",
                "TIMEOUT",
                "CODE",
                "LAST MODIFIED"
            ],
            &rows
        )
    );
    Ok(())
}

/// Left-aligned columns separated by two spaces.
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Delete a function.
pub fn delete(endpoint: &str, name: &str) -> anyhow::Result<()> {
    client(endpoint)?
        .delete_function(name)
        .with_context(|| format!("cannot delete {name}"))?;
    println!("deleted {name}");
    Ok(())
}

/// `thaw concurrency ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ConcurrencyCommand {
    /// Reserve N concurrent executions for the function (0 switches it off).
    Put {
        /// The function's name.
        name: String,
        /// Reserved concurrent executions.
        n: i64,
    },
    /// Print the function's reserved concurrency.
    Get {
        /// The function's name.
        name: String,
    },
    /// Remove the reservation: the function shares the unreserved pool again.
    Delete {
        /// The function's name.
        name: String,
    },
}

/// Runs `thaw concurrency ...`.
pub fn concurrency(endpoint: &str, cmd: ConcurrencyCommand) -> anyhow::Result<()> {
    let c = client(endpoint)?;
    match cmd {
        ConcurrencyCommand::Put { name, n } => {
            let r = c
                .put_function_concurrency(&name, n)
                .with_context(|| format!("cannot reserve concurrency for {name}"))?;
            println!(
                "{name}: reserved {}",
                r.reserved_concurrent_executions.unwrap_or_default()
            );
        }
        ConcurrencyCommand::Get { name } => {
            let r = c
                .get_function_concurrency(&name)
                .with_context(|| format!("cannot read the concurrency of {name}"))?;
            match r.reserved_concurrent_executions {
                Some(n) => println!("{name}: reserved {n}"),
                None => println!("{name}: no reservation (unreserved pool)"),
            }
        }
        ConcurrencyCommand::Delete { name } => {
            c.delete_function_concurrency(&name)
                .with_context(|| format!("cannot remove the reservation of {name}"))?;
            println!("{name}: reservation removed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
        let t = table(
            &["NAME", "RUNTIME"],
            &[
                ["hello".into(), "python3.11".into()],
                ["a".into(), "nodejs20.x".into()],
            ],
        );
        assert_eq!(t, "NAME   RUNTIME\nhello  python3.11\na      nodejs20.x\n");
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err() && parse_env("x").is_err());
    }
}

/// Arguments of `thaw settings`.
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// The function's name.
    pub name: String,
    /// How restores bring memory back: eager, lazy or working-set.
    #[arg(long, value_parser = ["eager", "lazy", "working-set"])]
    pub memory_mode: Option<String>,
    /// Whether restored instances get new random state (true, the
    /// default) or not (false: only to show what reseeding prevents).
    #[arg(long)]
    pub reseed: Option<bool>,
    /// Where instances may connect to: `all` (the default), `none`, or an
    /// allowed destination `CIDR`, `CIDR:PORT` or `CIDR:FIRST-LAST`
    /// (repeat for more). Replaces the function's list.
    #[arg(long = "egress")]
    pub egress: Vec<String>,
    /// Forget every setting first (the daemon's defaults apply).
    #[arg(long)]
    pub clear: bool,
}

/// `thaw settings NAME [...]`: shows the function's thaw settings, after
/// changing those given.
pub fn settings(endpoint: &str, args: SettingsArgs) -> anyhow::Result<()> {
    let c = client(endpoint)?;
    let name = &args.name;
    let mut s = if args.clear {
        thaw_api::PlatformSettings::default()
    } else {
        c.get_function_settings(name)
            .with_context(|| format!("cannot read the settings of {name}"))?
    };
    let changed = args.clear
        || args.memory_mode.is_some()
        || args.reseed.is_some()
        || !args.egress.is_empty();
    if !args.egress.is_empty() {
        s.egress = Some(args.egress.clone());
    }
    if let Some(m) = args.memory_mode {
        s.memory_mode = Some(m);
    }
    if let Some(r) = args.reseed {
        s.reseed = Some(r);
    }
    if changed {
        s = c
            .put_function_settings(name, &s)
            .with_context(|| format!("cannot change the settings of {name}"))?;
    }
    let show = |v: Option<String>| v.unwrap_or_else(|| "(daemon default)".into());
    println!("memory mode: {}", show(s.memory_mode));
    println!("reseed:      {}", show(s.reseed.map(|r| r.to_string())));
    println!(
        "egress:      {}",
        s.egress
            .map_or_else(|| "all (default)".into(), |e| e.join(" "))
    );
    Ok(())
}

/// Arguments of `thaw events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// The function's name.
    pub name: String,
    /// Print the failed events' records as JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// `thaw events NAME`: the function's `Event` invocations waiting to run,
/// its retry and destination settings, and the events that failed with no
/// destination to go to.
pub fn events(endpoint: &str, args: EventsArgs) -> anyhow::Result<()> {
    let c = client(endpoint)?;
    let name = &args.name;
    let view = c
        .event_queue(name)
        .with_context(|| format!("cannot read the event queue of {name}"))?;
    if args.json {
        for r in &view.failed {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    match c.get_function_event_invoke_config(name) {
        Ok(cfg) => {
            let dest = cfg.destination_config.clone().unwrap_or_default();
            println!(
                "retries: {}, maximum age: {} s, on success: {}, on failure: {}",
                cfg.retries(),
                cfg.max_age_secs(),
                dest.on_success_arn().unwrap_or("-"),
                dest.on_failure_arn().unwrap_or("-"),
            );
        }
        Err(e) if e.is_not_found() => println!(
            "retries: {}, maximum age: {} s (Lambda's defaults; no event invoke config)",
            thaw_api::events::DEFAULT_MAXIMUM_RETRY_ATTEMPTS,
            thaw_api::events::DEFAULT_MAXIMUM_EVENT_AGE_SECS
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read the event invoke config of {name}"))
        }
    }
    println!("queued: {}", view.queued);
    println!("failed: {}", view.failed.len());
    for r in &view.failed {
        let error = r
            .response_context
            .as_ref()
            .and_then(|c| c.function_error.clone())
            .unwrap_or_else(|| "-".into());
        println!(
            "  {}  {}  {}  runs {}  error {}",
            r.timestamp,
            r.request_context.request_id,
            r.request_context.condition,
            r.request_context.approximate_invoke_count,
            error
        );
    }
    Ok(())
}
