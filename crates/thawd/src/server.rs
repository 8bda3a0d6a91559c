//! The daemon process: builds the [`Platform`] and serves the HTTP API until
//! SIGINT/SIGTERM, then tears every instance down.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use thaw_sandbox::CgroupParent;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::DaemonConfig;
use crate::instance::InstanceContext;
use crate::logs::LogStore;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::registry::Registry;
use crate::runtimes::HostRuntimes;

/// Everything the HTTP API needs, shared behind an `Arc`.
pub struct Platform {
    pub config: DaemonConfig,
    pub registry: Registry,
    pub pools: Pools,
    pub metrics: Arc<Metrics>,
    pub logs: Arc<LogStore>,
}

impl Platform {
    /// Open the data directory, clean up after a previous daemon that died, and
    /// build every component. Requires root (namespaces, cgroups, mounts).
    pub fn open(config: DaemonConfig) -> anyhow::Result<Platform> {
        if !nix::unistd::geteuid().is_root() {
            bail!("thaw serve must run as root: it creates namespaces, cgroups and mounts for sandboxes");
        }
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        let data_dir = std::fs::canonicalize(&config.data_dir)?;
        // Function configurations (with their environment), code and logs are
        // for root only; sandboxes reach their code through bind mounts.
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", data_dir.display()))?;
        if !config.init_binary.is_file() {
            bail!(
                "supervisor binary {} not found (build it with `cargo build --bins`)",
                config.init_binary.display()
            );
        }
        let bootstrap_dir = data_dir.join("runtime");
        thaw_runtime::install_bootstraps(&bootstrap_dir).with_context(|| {
            format!("cannot install bootstraps into {}", bootstrap_dir.display())
        })?;
        let root_mountpoint = data_dir.join("run").join("root");
        std::fs::create_dir_all(&root_mountpoint)?;
        let empty_dir = data_dir.join("run").join("empty");
        std::fs::create_dir_all(&empty_dir)?;

        let cgroups = CgroupParent::open(&cgroup_parent_name(&data_dir))
            .context("cannot set up the cgroup hierarchy")?;
        let stale = cgroups
            .cleanup_stale()
            .context("cannot clean up stale instances")?;
        if stale > 0 {
            tracing::warn!(
                count = stale,
                "removed instances left behind by a previous daemon"
            );
        }
        let logs = Arc::new(LogStore::open(data_dir.join("logs"))?);
        let metrics = Arc::new(Metrics::new()?);
        let registry = Registry::open(&data_dir).context("cannot load the function registry")?;
        let runtimes = HostRuntimes::discover();
        let ctx = InstanceContext {
            init_binary: config.init_binary.clone(),
            runtimes,
            bootstrap_dir,
            root_mountpoint,
            empty_dir,
            tmp_size_bytes: config.tmp_size_bytes,
            pids_max: config.pids_max,
            cgroups,
            logs: logs.clone(),
            snapshots: data_dir.join("snapshots"),
            lazy_restore: config.lazy_restore,
        };
        let pools = Pools::new(
            ctx,
            metrics.clone(),
            config.max_instances_per_function,
            config.keep_alive,
            config.standby_per_function,
        );
        Ok(Platform {
            config,
            registry,
            pools,
            metrics,
            logs,
        })
    }
}

/// cgroup parent of one daemon: `thaw/<hash of its data dir>`, so that several
/// daemons (e.g. parallel tests) never clean up each other's instances.
pub fn cgroup_parent_name(data_dir: &Path) -> String {
    let h = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let hex: String = h.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("thaw/{hex}")
}

/// Run the daemon until SIGINT or SIGTERM.
pub async fn serve(config: DaemonConfig) -> anyhow::Result<()> {
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
        }
    };
    serve_with(listener, config, shutdown).await
}

/// Run the daemon on an already bound listener until `shutdown` completes, then
/// destroy every instance. Used by `thaw serve`, `thaw demo` and tests.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    config: DaemonConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let keep_alive = config.keep_alive;
    let platform = Arc::new(Platform::open(config)?);
    tracing::info!(addr = %listener.local_addr()?, data_dir = %platform.config.data_dir.display(), "thaw daemon listening");

    let reaper = {
        let p = platform.clone();
        let every = (keep_alive / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                p.pools.reap_idle().await;
            }
        })
    };

    let app = crate::api::router(platform.clone());
    // Kill instances as soon as shutdown starts: graceful shutdown waits for
    // in-flight requests, and an invocation may otherwise run for minutes.
    let stopping = platform.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.pools.shutdown().await;
    };
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    reaper.abort();
    // Stop instances even if serving failed.
    platform.pools.shutdown().await;
    tracing::info!("all instances stopped");
    served.context("HTTP server failed")
}
