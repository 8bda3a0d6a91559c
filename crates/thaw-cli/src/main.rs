//! `thaw`: the command line of the thaw serverless platform.
//!
//! Owns: argument parsing, printing, and exit codes. Must not: contain
//! platform logic; `serve` hands a plain `DaemonConfig` to `thawd`, every
//! other command talks to a daemon through `thaw_api::Client`. Errors are
//! reported here, at the edge, with their whole chain.

#![deny(unsafe_code)]

mod account;
mod bench;
mod bench_async;
mod bench_burst;
mod bench_network;
mod bench_restore;
mod bench_store;
mod bench_store_restore;
mod bench_working_set;
mod demo;
mod functions;
mod invoke;
mod local;
mod logs;
mod serve;
mod snapshot_cmd;
mod soak;
mod versions;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command line of thaw, a self-hosted serverless platform with an AWS
/// Lambda-compatible API.
#[derive(Debug, Parser)]
#[command(name = "thaw", version, about)]
struct Cli {
    /// The daemon's API endpoint.
    #[arg(
        long,
        global = true,
        env = "THAW_ENDPOINT",
        default_value = "http://127.0.0.1:9070"
    )]
    endpoint: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon in the foreground (needs root).
    Serve(Box<serve::ServeArgs>),
    /// Create a function, or update its code and configuration if it exists.
    Deploy(functions::DeployArgs),
    /// Invoke a function and print its response.
    Invoke(invoke::InvokeArgs),
    /// List the deployed functions.
    List,
    /// Delete a function.
    Delete {
        /// The function's name.
        name: String,
    },
    /// Print a function's log.
    Logs(logs::LogsArgs),
    /// A function's reserved concurrency (Lambda's Put/Get/DeleteFunctionConcurrency).
    #[command(subcommand)]
    Concurrency(functions::ConcurrencyCommand),
    /// Deploy sample functions into a temporary daemon, invoke them cold and
    /// warm, print the timings, and clean up (needs root).
    Demo {
        /// Keep the daemon's data in this directory instead of a temporary one.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Warm invocations after the cold one, per function.
        #[arg(long, default_value_t = 3)]
        warm_runs: usize,
    },
    /// Benchmarks (need root).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Snapshot a function (new instances are then restored from the
    /// snapshot), forget its snapshot, or inspect a snapshot directory.
    #[command(subcommand)]
    Snapshot(snapshot_cmd::SnapshotCommand),
    /// Show or change a function's thaw settings (memory mode, reseeding, egress).
    Settings(functions::SettingsArgs),
    /// A function's queued and failed asynchronous (`Event`) invocations.
    Events(functions::EventsArgs),
    /// Accounts (each has its own functions) and their access keys.
    #[command(subcommand)]
    Account(account::AccountCommand),
    /// Publish a function's current code and configuration as a version.
    Publish(versions::PublishArgs),
    /// List a function's versions and aliases.
    Versions {
        /// The function's name.
        name: String,
    },
    /// Create, move or delete an alias of a function (with weighted routing).
    Alias(versions::AliasArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The price of durable asynchronous invocation: events accepted per
    /// second, accept and end-to-end latency (median, p99) with the event
    /// queue on disk and in memory, side by side.
    Async {
        /// Event invocations per daemon.
        #[arg(long, default_value_t = 2000)]
        events: usize,
        /// Concurrent senders.
        #[arg(long, default_value_t = 16)]
        clients: usize,
    },
    /// Soak: mixed traffic (invocations, async events, bursts, code
    /// updates) against a `thaw serve` of its own, sampling the daemon's
    /// memory, descriptors, threads, cgroups, processes and disk; passes
    /// when every series is flat (its slope, after a warm-up, within
    /// tolerance) and no request failed.
    Soak {
        /// How long, minutes.
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// How long, seconds (instead of --minutes).
        #[arg(long)]
        seconds: Option<u64>,
        /// Concurrent requests of each burst.
        #[arg(long, default_value_t = 20)]
        burst: usize,
        /// Write the samples and the verdict here as JSON.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// The cold-start baseline: per-phase median and p90 of cold starts and
    /// warm invocations, for hello-world and real-dependency functions.
    Cold {
        /// Cold starts per function.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Warm invocations per function.
        #[arg(long, default_value_t = 40)]
        warm_runs: usize,
        /// Where dependency trees (boto3, @aws-sdk/client-s3) are installed once.
        #[arg(long, default_value = "target/bench-cache")]
        cache_dir: std::path::PathBuf,
        /// Only the hello-world functions (no package installs).
        #[arg(long)]
        quick: bool,
    },
    /// Restore from snapshot vs. cold start: restore-to-first-response
    /// (eager and lazy, from a standby sandbox and into a new one),
    /// checkpoint time, snapshot size, and the cold start, side by side.
    Restore {
        /// Measured runs per function and mode.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Where dependency trees (boto3, @aws-sdk/client-s3) are installed once.
        #[arg(long, default_value = "target/bench-cache")]
        cache_dir: std::path::PathBuf,
        /// Only the hello-world functions (no package installs).
        #[arg(long)]
        quick: bool,
    },
    /// A burst of concurrent first requests from zero instances: queueing
    /// behind 8 restored instances, a restore per request, a template clone
    /// per request, the autoscaler (the daemon's defaults), and the same
    /// burst on warm instances; p50, p99, wall time, errors and host memory
    /// per additional instance.
    Burst {
        /// Concurrent requests per burst.
        #[arg(long, default_value_t = 100)]
        requests: usize,
        /// Where dependency trees (boto3, @aws-sdk/client-s3) are installed once.
        #[arg(long, default_value = "target/bench-cache")]
        cache_dir: std::path::PathBuf,
        /// Only the hello-world functions (no package installs).
        #[arg(long)]
        quick: bool,
    },
    /// Instance networking off vs on: the first invocation of new
    /// instances one at a time, and a burst from zero; medians, p99 and
    /// the on/off differences against the network issue's goals.
    Network {
        /// New instances measured one at a time, per mode.
        #[arg(long, default_value_t = 40)]
        runs: usize,
        /// Concurrent requests of the burst.
        #[arg(long, default_value_t = 100)]
        requests: usize,
        /// Where dependency trees are installed once.
        #[arg(long, default_value = "target/bench-cache")]
        cache_dir: std::path::PathBuf,
    },
    /// The snapshot store on the snapshots of ten functions of two
    /// runtimes: dedup ratio, compression, publish and read throughput,
    /// per chunking scheme.
    Store {
        /// Where pip packages (pyaes, chameleon, pillow) are installed once.
        #[arg(long, default_value = "target/bench-cache")]
        cache_dir: std::path::PathBuf,
    },
    /// The snapshot store vs a plain file: first response of cold restores
    /// with the snapshot as a plain local file, from the store's local tier
    /// and from its S3 tier (Garage on loopback, if built), lazy and lazy +
    /// working set.
    StoreRestore {
        /// Measured restores per function, tier and mode.
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Where pip packages (pyaes, chameleon, pillow) are installed once.
        #[arg(long, default_value = "target/bench-cache")]
        cache_dir: std::path::PathBuf,
        /// Only the hello-world functions (no package installs).
        #[arg(long)]
        quick: bool,
    },
    /// Working-set prefetch: eager, lazy and lazy + working set on the
    /// same snapshot with the page cache dropped before each restore (and
    /// with pages in memory for reference): first response, pages faulted,
    /// bytes read, working-set size.
    WorkingSet {
        /// Measured restores per function and mode.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Where pip packages (pyaes, chameleon, pillow) are installed once.
        #[arg(long, default_value = "target/bench-cache")]
        cache_dir: std::path::PathBuf,
        /// Only the hello-world functions (no package installs).
        #[arg(long)]
        quick: bool,
        /// Also read snapshots through a throttled path standing in for a
        /// remote tier: this many microseconds per read...
        #[arg(long)]
        slow_tier_latency_us: Option<u64>,
        /// ...and this bandwidth, MB/s.
        #[arg(long, default_value_t = 100)]
        slow_tier_mbps: u64,
        /// Pages the page server copies per fault [default: 16].
        #[arg(long, default_value_t = 0)]
        fault_around: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Command::Serve(_)));
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the level (info for the daemon,
/// warnings only for the client commands).
fn init_tracing(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let endpoint = cli.endpoint.as_str();
    match cli.command {
        Command::Serve(args) => serve::run(*args).map(|()| ExitCode::SUCCESS),
        Command::Deploy(args) => functions::deploy(endpoint, args).map(|()| ExitCode::SUCCESS),
        Command::Invoke(args) => invoke::run(endpoint, args),
        Command::List => functions::list(endpoint).map(|()| ExitCode::SUCCESS),
        Command::Delete { name } => functions::delete(endpoint, &name).map(|()| ExitCode::SUCCESS),
        Command::Logs(args) => logs::run(endpoint, args).map(|()| ExitCode::SUCCESS),
        Command::Concurrency(cmd) => {
            functions::concurrency(endpoint, cmd).map(|()| ExitCode::SUCCESS)
        }
        Command::Demo {
            data_dir,
            warm_runs,
        } => demo::run(data_dir, warm_runs).map(|()| ExitCode::SUCCESS),
        Command::Bench(BenchCommand::Cold {
            runs,
            warm_runs,
            cache_dir,
            quick,
        }) => bench::cold(bench::ColdOptions {
            runs,
            warm_runs,
            cache_dir,
            quick,
        })
        .map(|()| ExitCode::SUCCESS),
        Command::Bench(BenchCommand::Restore {
            runs,
            cache_dir,
            quick,
        }) => bench_restore::run(bench_restore::RestoreOptions {
            runs,
            cache_dir,
            quick,
        })
        .map(|()| ExitCode::SUCCESS),
        Command::Bench(BenchCommand::WorkingSet {
            runs,
            cache_dir,
            quick,
            slow_tier_latency_us,
            slow_tier_mbps,
            fault_around,
        }) => bench_working_set::run(bench_working_set::WorkingSetOptions {
            runs,
            cache_dir,
            quick,
            slow_tier: slow_tier_latency_us.map(|latency_us| thaw_snapshot::image::ReadThrottle {
                latency_us,
                bytes_per_sec: slow_tier_mbps * 1_000_000,
            }),
            fault_around,
        })
        .map(|()| ExitCode::SUCCESS),
        Command::Bench(BenchCommand::StoreRestore {
            runs,
            cache_dir,
            quick,
        }) => bench_store_restore::run(bench_store_restore::StoreRestoreOptions {
            runs,
            cache_dir,
            quick,
        })
        .map(|()| ExitCode::SUCCESS),
        Command::Bench(BenchCommand::Burst {
            requests,
            cache_dir,
            quick,
        }) => bench_burst::run(bench_burst::BurstOptions {
            requests,
            cache_dir,
            quick,
        })
        .map(|()| ExitCode::SUCCESS),
        Command::Bench(BenchCommand::Network {
            runs,
            requests,
            cache_dir,
        }) => bench_network::run(bench_network::NetworkOptions {
            runs,
            requests,
            cache_dir,
        })
        .map(|()| ExitCode::SUCCESS),
        Command::Bench(BenchCommand::Soak {
            minutes,
            seconds,
            burst,
            out,
        }) => soak::run(soak::SoakOptions {
            duration: std::time::Duration::from_secs(seconds.unwrap_or(minutes * 60)),
            burst,
            out,
        })
        .map(|()| ExitCode::SUCCESS),
        Command::Bench(BenchCommand::Async { events, clients }) => {
            bench_async::run(bench_async::AsyncOptions { events, clients })
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Store { cache_dir }) => {
            bench_store::run(bench_store::StoreOptions { cache_dir }).map(|()| ExitCode::SUCCESS)
        }
        Command::Snapshot(cmd) => snapshot_cmd::run(endpoint, cmd).map(|()| ExitCode::SUCCESS),
        Command::Settings(args) => functions::settings(endpoint, args).map(|()| ExitCode::SUCCESS),
        Command::Events(args) => functions::events(endpoint, args).map(|()| ExitCode::SUCCESS),
        Command::Account(cmd) => account::run(endpoint, cmd).map(|()| ExitCode::SUCCESS),
        Command::Publish(args) => versions::publish(endpoint, args).map(|()| ExitCode::SUCCESS),
        Command::Versions { name } => versions::list(endpoint, &name).map(|()| ExitCode::SUCCESS),
        Command::Alias(args) => versions::alias(endpoint, args).map(|()| ExitCode::SUCCESS),
    }
}

/// A client of the daemon at `endpoint`.
fn client(endpoint: &str) -> anyhow::Result<thaw_api::Client> {
    use anyhow::Context;
    thaw_api::Client::new(endpoint).with_context(|| format!("cannot use endpoint {endpoint}"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn arguments_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_forms() {
        let cli = Cli::try_parse_from([
            "thaw",
            "deploy",
            "hello",
            "--runtime",
            "python3.11",
            "--handler",
            "app.handler",
            "--code",
            "dir",
            "--memory",
            "256",
            "--timeout",
            "10",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
        ])
        .unwrap();
        let Command::Deploy(d) = cli.command else {
            panic!("not deploy")
        };
        assert_eq!(
            d.env,
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!((d.memory, d.timeout), (Some(256), Some(10)));
        assert!(Cli::try_parse_from([
            "thaw",
            "deploy",
            "f",
            "--runtime",
            "r",
            "--code",
            "c",
            "--env",
            "novalue"
        ])
        .is_err());

        let cli = Cli::try_parse_from([
            "thaw",
            "--endpoint",
            "http://h:1",
            "invoke",
            "f",
            "--payload",
            "{}",
            "--tail",
        ])
        .unwrap();
        assert_eq!(cli.endpoint, "http://h:1");
        assert!(Cli::try_parse_from([
            "thaw",
            "invoke",
            "f",
            "--payload",
            "{}",
            "--payload-file",
            "x"
        ])
        .is_err());

        let cli = Cli::try_parse_from([
            "thaw",
            "serve",
            "--data-dir",
            "/d",
            "--keep-alive-secs",
            "5",
        ])
        .unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.listen.to_string(), "127.0.0.1:9070");
        assert_eq!(s.keep_alive_secs, Some(5));

        assert!(
            Cli::try_parse_from(["thaw", "logs", "f", "--request-id", "r", "--limit", "5"]).is_ok()
        );
        assert!(Cli::try_parse_from(["thaw", "list"]).is_ok());
        assert!(Cli::try_parse_from(["thaw", "delete", "f"]).is_ok());
        assert!(
            Cli::try_parse_from(["thaw", "snapshot", "inspect", "/s", "--verify", "--json"])
                .is_ok()
        );
    }
}
