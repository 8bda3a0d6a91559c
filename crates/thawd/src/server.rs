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
use tracing::Instrument;

use crate::config::DaemonConfig;
use crate::instance::InstanceContext;
use crate::logs::LogStore;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::registry::{FunctionRecord, Registry};
use crate::runtimes::HostRuntimes;

/// Everything the HTTP API needs, shared behind an `Arc`.
pub struct Platform {
    pub config: DaemonConfig,
    pub registry: Registry,
    pub pools: Pools,
    pub metrics: Arc<Metrics>,
    pub logs: Arc<LogStore>,
    /// Keepers of provisioned concurrency ([`crate::provisioned`]).
    pub provisioner: crate::provisioned::Provisioner,
    /// The accounts and their keys: every request is signed by one.
    pub accounts: Arc<thaw_auth::Accounts>,
    /// Accepted `Event` invocations, on disk until settled ([`crate::events`]).
    pub events: Arc<crate::events::EventQueue>,
}

impl Platform {
    /// Open the data directory, clean up after a previous daemon that died, and
    /// build every component. Requires root (namespaces, cgroups, mounts).
    pub async fn open(config: DaemonConfig) -> anyhow::Result<Platform> {
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

        let cgroups = Arc::new(
            CgroupParent::open(&cgroup_parent_name(&data_dir))
                .context("cannot set up the cgroup hierarchy")?,
        );
        let stale = cgroups
            .cleanup_stale()
            .context("cannot clean up stale instances")?;
        if stale > 0 {
            tracing::warn!(
                count = stale,
                "removed instances left behind by a previous daemon"
            );
        }
        let (accounts, root_key) =
            thaw_auth::Accounts::open(&data_dir, config.root_credentials.clone())
                .context("cannot open the accounts")?;
        if let thaw_auth::RootKey::Generated(creds) = &root_key {
            announce_root_key(&config, creds);
        }
        let logs = Arc::new(LogStore::open(data_dir.join("logs"))?);
        let events = crate::events::EventQueue::open(&data_dir.join("events.redb"), config.events)
            .context("cannot open the event queue")?;
        let metrics = Arc::new(Metrics::new()?);
        let registry = Registry::open(&data_dir).context("cannot load the function registry")?;
        let swept = crate::recovery::sweep_temporaries(
            &data_dir,
            matches!(config.store, crate::config::StoreSetting::Local),
        );
        if swept > 0 {
            tracing::warn!(
                count = swept,
                "removed temporary files left by a previous daemon"
            );
        }
        let store = open_store(&config, &data_dir)?;
        let runtimes = HostRuntimes::discover();
        let templates = match config.instances {
            crate::config::InstanceMode::Clone => Some(
                crate::templates::Templates::start(&cgroups, metrics.templates())
                    .context("cannot start the templates' thread")?,
            ),
            crate::config::InstanceMode::Restore => None,
        };
        let network = open_network(&config, &data_dir).await?;
        let ctx = InstanceContext {
            init_binary: config.init_binary.clone(),
            runtimes,
            bootstrap_dir,
            root_mountpoint,
            empty_dir,
            tmp_size_bytes: config.tmp_size_bytes,
            pids_max: config.pids_max,
            backend: Arc::new(crate::backend::ProcessBackend::new(
                config.init_binary.clone(),
                cgroups.clone(),
            )),
            cgroups,
            logs: logs.clone(),
            snapshots: data_dir.join("snapshots"),
            memory_mode: config.memory_mode,
            fault_around: config.fault_around,
            snapshot_read_throttle: config.snapshot_read_throttle,
            secrets: config.secret_policy.clone(),
            snapshot_clock_offset: config.snapshot_clock_offset,
            store,
            templates,
            network,
        };
        let pools = Pools::new(
            ctx,
            metrics.clone(),
            config.max_instances_per_function,
            config.keep_alive,
            config.standby_per_function,
        )
        .with_account_concurrency(config.account_concurrency)
        .with_scaling(config.scaling)
        .with_pressure(crate::pressure::Pressure::new(
            &data_dir,
            config.min_free_disk_mb,
            config.min_free_memory_mb,
        ));
        Ok(Platform {
            config,
            registry,
            pools,
            metrics,
            logs,
            provisioner: crate::provisioned::Provisioner::default(),
            accounts: Arc::new(accounts),
            events,
        })
    }
}

/// Tells the operator about a root key generated on this start, and leaves
/// it in `~/.config/thaw/credentials.json` (mode 0600) under this daemon's
/// endpoint, where the thaw CLI of the same user finds it.
fn announce_root_key(config: &DaemonConfig, creds: &thaw_api::auth::Credentials) {
    let endpoint = format!("http://{}", config.listen);
    // A daemon on every address is reached on loopback by the local CLI.
    let mut endpoints = vec![endpoint.clone()];
    if config.listen.ip().is_unspecified() {
        let port = config.listen.port();
        endpoints.push(match config.listen {
            std::net::SocketAddr::V4(_) => format!("http://127.0.0.1:{port}"),
            std::net::SocketAddr::V6(_) => format!("http://[::1]:{port}"),
        });
        endpoints.push(format!("http://localhost:{port}"));
    }
    let saved = thaw_api::auth::local_credentials_file().and_then(|path| {
        let mut file = thaw_api::auth::LocalCredentials::load(&path).unwrap_or_default();
        file.format_version = thaw_api::auth::LocalCredentials::FORMAT_VERSION;
        for e in &endpoints {
            file.endpoints.insert(e.clone(), creds.clone());
        }
        let bytes = serde_json::to_vec_pretty(&file).ok()?;
        let dir = path.parent()?;
        std::fs::create_dir_all(dir).ok()?;
        thaw_persist::write(&path, &bytes, 0o600).ok()?;
        Some(path)
    });
    let saved = saved.map_or(String::new(), |p| {
        format!(
            "\n  The thaw CLI of this user finds it in {} (for {endpoint}).",
            p.display()
        )
    });
    eprintln!(
        "thaw: generated the root account's access key (kept in the data directory, mode 0600):\n  \
         access key id:     {}\n  secret access key: {}{saved}\n  \
         For boto3 / the AWS CLI: export AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY=<the secret>; \
         for the thaw CLI elsewhere: THAW_ACCESS_KEY_ID / THAW_SECRET_ACCESS_KEY.",
        creds.access_key_id, creds.secret_access_key, creds.access_key_id
    );
}

/// The snapshot store `config` asks for (none when it is off).
fn open_store(
    config: &DaemonConfig,
    data_dir: &Path,
) -> anyhow::Result<Option<Arc<crate::snapstore::SnapshotStore>>> {
    use crate::config::StoreSetting;
    use crate::secrets::KeySource;
    if matches!(config.store, StoreSetting::Off) {
        return Ok(None);
    }
    let key_file = config
        .store_key_file
        .clone()
        .unwrap_or_else(|| data_dir.join("keys").join("store.key"));
    let master = crate::secrets::KeyFile(key_file.clone())
        .key()
        .with_context(|| format!("cannot read the store key {}", key_file.display()))?;
    let mut store_config = thaw_store::StoreConfig {
        memory_budget: config.store_memory_bytes,
        gc_grace: config.store_gc_grace,
        ..thaw_store::StoreConfig::default()
    };
    let store = match &config.store {
        StoreSetting::Off => unreachable!("handled above"),
        StoreSetting::Local => {
            thaw_store::Store::local(&data_dir.join("store"), master, store_config)
        }
        StoreSetting::S3(s3) => {
            if config.store_disk_cache_bytes > 0 {
                store_config.disk_cache =
                    Some((data_dir.join("store-cache"), config.store_disk_cache_bytes));
            }
            thaw_store::Store::s3(s3, master, store_config)
        }
    }
    .context("cannot open the snapshot store")?;
    // Tests and fault campaigns only: the object tier behind a wrapper that
    // injects failures, delays and damaged reads.
    let store = match thaw_store::FaultPlan::from_env()? {
        None => store,
        Some(plan) => {
            tracing::warn!(
                ?plan,
                "{} is set: the snapshot store INJECTS FAULTS (tests only)",
                thaw_store::faults::FAULTS_ENV
            );
            store.with_faults(plan)
        }
    };
    Ok(Some(Arc::new(crate::snapstore::SnapshotStore::new(store))))
}

impl Platform {
    /// Queues a snapshot build of `f`'s current revision (when the pipeline
    /// is on). Builds run one at a time in the background; one for a
    /// revision that is no longer current when its turn comes is skipped,
    /// and a snapshot that finishes after its revision was replaced is
    /// removed again, so an update never serves a stale snapshot.
    ///
    /// A published version whose `SnapStart` applies to published versions
    /// is snapshotted whether or not the pipeline is on, as Lambda does when
    /// it publishes one.
    pub fn schedule_snapshot(self: &Arc<Self>, f: &FunctionRecord) {
        if self.config.auto_snapshot || (f.version.is_some() && f.kept.snap_start_applies()) {
            self.queue_snapshot_build(f);
        }
    }

    /// Queues a snapshot build of `f` whether or not the pipeline is on
    /// (`thaw snapshot rebuild`). When a build of this revision is already
    /// queued or running, that build stands for this request.
    pub fn queue_snapshot_build(self: &Arc<Self>, f: &FunctionRecord) {
        let lease = match self.pools.builds.begin(f) {
            crate::pipeline::Turn::Lead(lease) => lease,
            crate::pipeline::Turn::Join(_) => {
                tracing::debug!(function = %f.name, revision = %f.revision_id, "a build of this revision is already in flight");
                return;
            }
        };
        let p = self.clone();
        let f = f.clone();
        let span = tracing::info_span!("snapshot", function = %f.name, revision = %f.revision_id);
        tokio::spawn(
            async move {
                // `$LATEST` still at this revision, or the version still
                // published (versions never change).
                let current = |p: &Platform| {
                    p.registry
                        .instance(&f.instance_key())
                        .is_some_and(|c| c.revision_id == f.revision_id)
                };
                let prepare = || {
                    if !current(&p) {
                        return Ok(None);
                    }
                    crate::pipeline::test_event(&f).map(Some)
                };
                let t0 = std::time::Instant::now();
                let wanted = || current(&p);
                match p.pools.lead_build(lease, &f, Some(&wanted), prepare).await {
                    crate::pipeline::BuildOutcome::Skipped => {}
                    crate::pipeline::BuildOutcome::Ready(_) if !current(&p) => {
                        tracing::info!("revision replaced (or version or function deleted) during the build; snapshot discarded");
                        p.pools.discard_snapshot_dir(&p.pools.snapshot_dir(&f));
                    }
                    crate::pipeline::BuildOutcome::Ready(r) => {
                        p.pools
                            .remove_other_snapshots(&f.instance_key(), &f.revision_id);
                        tracing::info!(
                            build_ms = t0.elapsed().as_millis() as u64,
                            checkpoint_ms = r.checkpoint_ms,
                            size_bytes = r.size_bytes,
                            "snapshot ready: new instances are restored"
                        );
                    }
                    crate::pipeline::BuildOutcome::Failed(e) => {
                        tracing::warn!(error = %e, "snapshot build failed; instances start cold");
                    }
                }
                // A function or version deleted during the build: its
                // snapshot directory goes too (`remove_dir` leaves it if a
                // newer build put something there).
                if p.registry.instance(&f.instance_key()).is_none() {
                    if let Some(parent) = p.pools.snapshot_dir(&f).parent() {
                        let _ = std::fs::remove_dir(parent);
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Removes snapshots no function will restore (after a daemon start):
    /// those of functions that are gone and of revisions that are not
    /// their function's current one (a daemon killed between a delete or
    /// an update and the removal of the old snapshot leaves them), with
    /// their blobs.
    fn remove_orphan_snapshots(&self) {
        let root = self.pools.snapshot_root();
        let Ok(rd) = std::fs::read_dir(root) else {
            return;
        };
        for e in rd.flatten() {
            // A function's key, or `KEY:N` for its version N.
            let name = e.file_name().to_string_lossy().into_owned();
            match self.registry.instance(&name) {
                Some(f) => self.pools.remove_other_snapshots(&name, &f.revision_id),
                None => {
                    let Ok(revs) = std::fs::read_dir(e.path()) else {
                        continue;
                    };
                    for r in revs.flatten() {
                        tracing::info!(function = %name, snapshot = %r.path().display(), "removing the snapshot of a deleted function");
                        self.pools.discard_snapshot_dir(&r.path());
                    }
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    }

    /// Builds again, from now on, every snapshot the pools discard as
    /// damaged (whether or not the pipeline is on: the function had a
    /// snapshot), if its revision is still the function's current one.
    fn rebuild_damaged_snapshots(self: &Arc<Self>) {
        let mut rx = self.pools.damaged_snapshots();
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                let Some(p) = weak.upgrade() else { return };
                let current = p
                    .registry
                    .instance(&f.instance_key())
                    .filter(|c| c.revision_id == f.revision_id);
                if let Some(c) = current {
                    tracing::info!(function = %c.name, revision = %c.revision_id, "rebuilding a damaged snapshot");
                    p.queue_snapshot_build(&c);
                }
            }
        });
    }

    /// Queues builds for every function whose current revision has no
    /// snapshot (after a daemon start).
    pub fn schedule_missing_snapshots(self: &Arc<Self>) {
        self.rebuild_damaged_snapshots();
        self.remove_orphan_snapshots();
        for f in self.registry.list_all() {
            if !self.pools.has_snapshot(&f) {
                self.schedule_snapshot(&f);
            } else {
                // A lazy restore checks the whole snapshot once per daemon;
                // do it now rather than on the first invocation's path.
                let platform = self.clone();
                tokio::spawn(async move {
                    match platform.pools.room_for_background() {
                        Ok(()) => platform.pools.verify_snapshot(&f).await,
                        // The first restore checks it on its own path.
                        Err(low) => {
                            tracing::info!(function = %f.name, "start-up snapshot check skipped: {low}")
                        }
                    }
                });
            }
        }
    }
}

/// How long shutdown waits for open connections to finish their requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` completes: HTTP/1.1 with a
/// header read timeout (which also closes connections idle between
/// requests), at most `limits.max_connections` connections at once (the
/// accept loop waits for a free slot; clients queue in the backlog), and a
/// graceful end (no new connections, open ones finish their request, for at
/// most [`DRAIN_TIMEOUT`]). Body deadlines are the router's
/// ([`crate::api::body_deadline`]).
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: crate::config::HttpLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: transient, wait a little.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Function URLs tell the function who called.
        let with_peer = tower::ServiceExt::map_request(
            app.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            },
        );
        let service = hyper_util::service::TowerToHyperService::new(with_peer);
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
    Ok(())
}

/// cgroup parent of one daemon: `thaw/<hash of its data dir>`, so that several
/// daemons (e.g. parallel tests) never clean up each other's instances.
pub fn cgroup_parent_name(data_dir: &Path) -> String {
    let h = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let hex: String = h.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("thaw/{hex}")
}

/// Sets up instances' network as `config.network` says: `None` for
/// loopback only (mode off, or auto on a host that cannot).
async fn open_network(
    config: &DaemonConfig,
    data_dir: &Path,
) -> anyhow::Result<Option<thaw_net::Network>> {
    use crate::config::NetworkMode;
    let setting = &config.network;
    if setting.mode == NetworkMode::Off {
        return Ok(None);
    }
    let name: String = cgroup_parent_name(data_dir)
        .trim_start_matches("thaw/")
        .to_string();
    let dns = setting.dns.clone().unwrap_or_else(thaw_net::host_resolvers);
    if dns.is_empty() {
        tracing::warn!("instances have no DNS resolver: the host's are all on loopback; set --dns");
    }
    let net_config = thaw_net::NetConfig {
        name,
        subnet: setting.subnet,
        internal: setting.internal.clone(),
        dns,
        pool_size: setting.pool,
        state_file: data_dir.join("network.json"),
    };
    match thaw_net::Network::start(net_config).await {
        Ok(n) => Ok(Some(n)),
        Err(e @ thaw_net::NetError::Unavailable(_)) if setting.mode == NetworkMode::Auto => {
            tracing::warn!(error = %e, "INSTANCES HAVE NO NETWORK (loopback only); install nftables, or pass --network off to silence this");
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context("cannot set up the instance network")),
    }
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
    let platform = Arc::new(Platform::open(config).await?);
    tracing::info!(addr = %listener.local_addr()?, data_dir = %platform.config.data_dir.display(), "thaw daemon listening");

    platform.schedule_missing_snapshots();
    // Reserved and provisioned concurrency survive restarts.
    for f in platform.registry.list() {
        platform.concurrency_changed(&f);
    }
    // Events accepted before this start (and not settled) run again.
    let delivery = crate::api::start_event_delivery(platform.clone());
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

    // Chunks no snapshot references any more (deleted functions, replaced
    // revisions and working sets) are collected every
    // `--store-gc-interval-secs` (an hour); the grace period keeps any a
    // publish is about to reference. The disk therefore holds up to about
    // interval + grace of replaced snapshots' chunks.
    let gc_every = platform.config.store_gc_interval;
    let collector = platform.pools.ctx().store.clone().map(|store| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(gc_every);
            tick.tick().await;
            loop {
                tick.tick().await;
                match store.store().gc().await {
                    Ok(r) => tracing::info!(removed = r.removed, referenced = r.referenced, "snapshot store collected"),
                    Err(e) => tracing::warn!(error = %thaw_runtime::error_chain(&e), "snapshot store collection failed"),
                }
            }
        })
    });
    let limits = platform.config.http;
    let accounts = platform.accounts.clone();
    // Outermost first: the body deadline bounds every read of the body,
    // the signature check's included; function URLs are served before it
    // (they check their own), and only signed requests reach a route.
    let routes = crate::api::router(platform.clone())
        .merge(crate::accounts::router(platform.accounts.clone()))
        .layer(axum::middleware::from_fn(move |req, next| {
            crate::api::authenticate(accounts.clone(), req, next)
        }));
    let app =
        crate::api::with_function_urls(routes, platform.clone()).layer(axum::middleware::from_fn(
            move |req, next| crate::api::body_deadline(limits.body_timeout, req, next),
        ));
    // Kill instances as soon as shutdown starts: graceful shutdown waits for
    // in-flight requests, and an invocation may otherwise run for minutes.
    let stopping = platform.clone();
    let shutdown = async move {
        shutdown.await;
        // Queued events stay on disk for the next start.
        stopping.events.stop();
        stopping.pools.shutdown().await;
    };
    let served = serve_http(listener, app, limits, shutdown).await;
    reaper.abort();
    platform.events.stop();
    delivery.abort();
    if let Some(c) = collector {
        c.abort();
    }
    // Stop instances even if serving failed.
    platform.pools.shutdown().await;
    // Then their network: links, firewall table, the subnet's claim.
    if let Some(network) = &platform.pools.ctx().network {
        network.shutdown().await;
    }
    // The queue's last settlements are synced before the process ends.
    let events = platform.events.clone();
    let _ = tokio::task::spawn_blocking(move || events.close()).await;
    tracing::info!("all instances stopped");
    served.context("HTTP server failed")
}

/// The most malloc arenas the daemon uses. glibc gives threads that
/// allocate arenas of their own (up to 8 per core) and seldom returns what
/// is freed in them, so the daemon's many short-lived threads (the async
/// runtime's blocking pool) grew its resident memory steadily: `thaw bench
/// soak` measured +24 MiB in 80 s (113 to 141 MiB) with glibc's default,
/// and flat at 59 MiB with one arena. A daemon that mostly waits on I/O
/// needs few.
pub const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas at [`MALLOC_ARENAS`]. Call it first thing in
/// the daemon's process, before any thread starts.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; it is called
    // before the daemon starts any thread, and a refusal (0) leaves the
    // default in place.
    unsafe {
        if libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) == 0 {
            tracing::debug!("malloc arenas not limited");
        }
    }
}
