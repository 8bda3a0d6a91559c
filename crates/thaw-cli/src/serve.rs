//! `thaw serve`: run the daemon in the foreground until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use thawd::DaemonConfig;

/// Arguments of `thaw serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:9070")]
    pub listen: SocketAddr,
    /// Where functions, code, logs and runtime state live.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// How long an idle instance is kept warm, seconds.
    #[arg(long)]
    pub keep_alive_secs: Option<u64>,
    /// How restores bring a snapshot's memory back: `eager` (copied in
    /// before the runtime resumes), `lazy` (served on first touch) or
    /// `working-set` (lazy, with the pages the first restore touched
    /// installed in one batch first). A function may choose its own
    /// (`thaw settings NAME --memory-mode ...`).
    #[arg(long, default_value = "working-set")]
    pub memory_mode: thawd::config::MemoryMode,
    /// How new instances of a function with a snapshot are made: `clone`
    /// (copy-on-write from the snapshot restored once per host, its
    /// *template*) or `restore` (each restores the snapshot, see
    /// --memory-mode).
    #[arg(long, default_value = "clone")]
    pub instances: thawd::config::InstanceMode,
    /// When a request that finds no idle instance starts a new one:
    /// `adaptive` (only when that serves the queued requests sooner than
    /// waiting for busy instances, from measured start costs and
    /// durations) or `eager` (whenever under --max-instances).
    #[arg(long, default_value = "adaptive")]
    pub scaling: thawd::config::Scaling,
    /// Same as --memory-mode lazy.
    #[arg(long, hide = true)]
    pub lazy_restore: bool,
    /// Pages a lazy restore's page server copies per fault [default: 16].
    #[arg(long)]
    pub fault_around: Option<u32>,
    /// Standby sandboxes (built, restore prepared) kept ready per function
    /// with a snapshot [default: 1; 0 builds the sandbox at each restore].
    #[arg(long)]
    pub standby: Option<usize>,
    /// Build a snapshot of every function on deploy, update and start-up
    /// (the snapshot pipeline); `false`: only on `thaw snapshot create`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_snapshot: bool,
    /// A regular expression: environment variables whose names match it
    /// are secrets (repeatable; added to the defaults, which match names
    /// with SECRET, PASSWORD, TOKEN, API_KEY, ACCESS_KEY, PRIVATE_KEY,
    /// CREDENTIAL or AUTH, and values that look like AWS access key ids,
    /// PEM private keys or JWTs). Secrets are never in a snapshot.
    #[arg(long = "secret-name-pattern", value_name = "REGEX")]
    pub secret_name_patterns: Vec<String>,
    /// Only variables listed in THAW_SECRETS or matching
    /// --secret-name-pattern are secrets.
    #[arg(long)]
    pub no_default_secret_patterns: bool,
    /// Test hook: snapshot runs see their monotonic and boot-time clocks
    /// this many seconds ahead of the host's (a snapshot from a host that
    /// had been up longer).
    #[arg(long, hide = true, default_value_t = 0)]
    pub test_snapshot_clock_offset_secs: u64,
    /// Test hook: every read of a snapshot's files first waits this many
    /// milliseconds (a slow tier).
    #[arg(long, hide = true, default_value_t = 0)]
    pub test_snapshot_read_latency_ms: u64,
    /// Most instances of one function running at once; with the default
    /// adaptive scaling a burst of short requests gets far fewer [default: 100].
    #[arg(long)]
    pub max_instances: Option<usize>,
    /// The account's concurrent executions (Lambda's ConcurrentExecutions):
    /// all functions' invocations in flight together. Reservations must
    /// leave 100 unreserved (a tenth of smaller limits).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub account_concurrency: u32,
    /// The `thaw-init` supervisor binary [default: next to `thaw`].
    #[arg(long)]
    pub init_binary: Option<PathBuf>,
    /// Where snapshots are kept: `local` (the snapshot store over
    /// DATA/store: chunked, compressed, encrypted, deduplicated), `s3` (the
    /// store over an S3-compatible service: --s3-endpoint, --s3-bucket,
    /// credentials in THAW_S3_ACCESS_KEY_ID / THAW_S3_SECRET_ACCESS_KEY) or
    /// `off` (plain files under DATA/snapshots).
    #[arg(long, default_value = "local", value_parser = ["local", "s3", "off"])]
    pub store: String,
    /// S3 endpoint URL (with --store s3).
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// S3 bucket (with --store s3).
    #[arg(long)]
    pub s3_bucket: Option<String>,
    /// S3 region name (with --store s3).
    #[arg(long, default_value = "us-east-1")]
    pub s3_region: String,
    /// MiB of verified chunks the store keeps in memory.
    #[arg(long, default_value_t = 256)]
    pub store_memory_mb: u64,
    /// MiB of chunks the store keeps on local disk in front of S3.
    #[arg(long, default_value_t = 4096)]
    pub store_disk_cache_mb: u64,
    /// The store's master key file [default: DATA/keys/store.key, created
    /// on first use]; hosts sharing an S3 tier need the same key.
    #[arg(long)]
    pub store_key_file: Option<PathBuf>,
    /// Below this many MiB free on the data directory's filesystem, deploys
    /// and snapshot requests fail with a clear error (nothing is written)
    /// and background work (snapshot builds, working-set upkeep) waits.
    #[arg(long, default_value_t = thawd::pressure::DEFAULT_MIN_FREE_DISK_MB)]
    pub min_free_disk_mb: u64,
    /// Seconds between collections of store chunks no snapshot references.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub store_gc_interval_secs: u64,
    /// Seconds an unreferenced chunk is kept before it is collected (a
    /// publish refreshes reused chunks older than half of it; keep it well
    /// above the longest snapshot publish).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(60..))]
    pub store_gc_grace_secs: u64,
    /// Most `Event` invocations queued at once; more are refused with 429
    /// before they are accepted.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued_events: u64,
    /// Where accepted `Event` invocations wait: `disk` (durable, the
    /// default) or `memory` (lost with the daemon; only to measure what
    /// durability costs).
    #[arg(long, default_value = "disk", value_parser = ["disk", "memory"])]
    pub event_queue: String,
    /// Seconds before the first retry of an `Event` invocation whose
    /// function failed (the second waits twice as long): Lambda's 60.
    #[arg(long, default_value_t = 60.0)]
    pub async_retry_delay_secs: f64,
    /// Below this many MiB of available memory beyond the host's reserve,
    /// background work waits.
    #[arg(long, default_value_t = thawd::pressure::DEFAULT_MIN_FREE_MEMORY_MB)]
    pub min_free_memory_mb: u64,
    /// The domain of function URLs: `http://<id>.lambda-url.us-east-1.<domain>:<port>/`
    /// (requests with such a `Host` on the daemon's port are served as
    /// function URLs).
    #[arg(long, default_value = "localhost")]
    pub function_url_domain: String,
    /// Instances' network: `auto` (the default) gives each instance its
    /// own address where this host can (root and nftables' `nft`), else
    /// loopback only with a warning; `on` requires it; `off`: loopback only.
    #[arg(long, default_value = "auto")]
    pub network: thawd::config::NetworkMode,
    /// Where instance addresses come from [default: a free /20 of
    /// 100.64.0.0/10 (RFC 6598 shared address space), kept across restarts].
    #[arg(long)]
    pub instance_subnet: Option<thaw_net::Ipv4Cidr>,
    /// A network instances reach without NAT, so it sees each instance's
    /// own address (a database's subnet); repeatable.
    #[arg(long = "internal-cidr")]
    pub internal_cidr: Vec<thaw_net::Ipv4Cidr>,
    /// A resolver for instances' /etc/resolv.conf; repeatable [default:
    /// the host's, without loopback ones].
    #[arg(long)]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// Network namespaces kept ready for new instances.
    #[arg(long, default_value_t = 16)]
    pub network_pool: usize,
    /// Seconds a client has to send a request's headers; a keep-alive
    /// connection idle this long between requests is closed too.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_timeout_secs: u64,
    /// Seconds a client has to send a request's whole body (else 408).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_body_timeout_secs: u64,
    /// Most HTTP connections served at once (more wait in the backlog).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_max_connections: u64,
}

/// The store setting `args` ask for.
fn store_setting(args: &ServeArgs) -> anyhow::Result<thawd::config::StoreSetting> {
    use thawd::config::StoreSetting;
    Ok(match args.store.as_str() {
        "off" => StoreSetting::Off,
        "s3" => {
            let env = |k: &str| std::env::var(k).with_context(|| format!("--store s3 needs {k}"));
            StoreSetting::S3(thaw_store::S3Config {
                endpoint: args
                    .s3_endpoint
                    .clone()
                    .context("--store s3 needs --s3-endpoint")?,
                bucket: args
                    .s3_bucket
                    .clone()
                    .context("--store s3 needs --s3-bucket")?,
                region: args.s3_region.clone(),
                access_key_id: env("THAW_S3_ACCESS_KEY_ID")?,
                secret_access_key: env("THAW_S3_SECRET_ACCESS_KEY")?,
            })
        }
        _ => StoreSetting::Local,
    })
}

/// Run the daemon on a multi-threaded runtime.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    thawd::server::limit_malloc_arenas();
    let init_binary = match args.init_binary.clone() {
        Some(p) => p,
        None => crate::local::init_binary()?,
    };
    let mut config = DaemonConfig::new(args.listen, args.data_dir.clone(), init_binary);
    if let Some(secs) = args.keep_alive_secs {
        config.keep_alive = Duration::from_secs(secs);
    }
    config.memory_mode = if args.lazy_restore {
        thawd::config::MemoryMode::Lazy
    } else {
        args.memory_mode
    };
    if args.test_snapshot_read_latency_ms > 0 {
        config.snapshot_read_throttle = Some(thaw_snapshot::image::ReadThrottle {
            latency_us: args.test_snapshot_read_latency_ms * 1000,
            bytes_per_sec: 0,
        });
    }
    config.instances = args.instances;
    config.scaling = args.scaling;
    if let Some(n) = args.fault_around {
        config.fault_around = n;
    }
    config.auto_snapshot = args.auto_snapshot;
    config.snapshot_clock_offset = Duration::from_secs(args.test_snapshot_clock_offset_secs);
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (mut names, values) = if args.no_default_secret_patterns {
        (Vec::new(), Vec::new())
    } else {
        (
            owned(thawd::secrets::DEFAULT_NAME_PATTERNS),
            owned(thawd::secrets::DEFAULT_VALUE_PATTERNS),
        )
    };
    names.extend(args.secret_name_patterns.iter().cloned());
    config.secret_policy =
        thawd::secrets::SecretPolicy::new(&names, &values).context("--secret-name-pattern")?;
    if let Some(n) = args.standby {
        config.standby_per_function = n;
    }
    if let Some(n) = args.max_instances {
        config.max_instances_per_function = n.max(1);
    }
    config.account_concurrency = args.account_concurrency;
    config.root_credentials = root_credentials_from_env()?;
    config.http = thawd::config::HttpLimits {
        header_timeout: Duration::from_secs(args.http_header_timeout_secs),
        body_timeout: Duration::from_secs(args.http_body_timeout_secs),
        max_connections: usize::try_from(args.http_max_connections).unwrap_or(usize::MAX),
    };
    config.store = store_setting(&args)?;
    config.store_memory_bytes = args.store_memory_mb << 20;
    config.store_disk_cache_bytes = args.store_disk_cache_mb << 20;
    config.store_key_file = args.store_key_file.clone();
    config.min_free_disk_mb = args.min_free_disk_mb;
    config.store_gc_interval = Duration::from_secs(args.store_gc_interval_secs);
    config.store_gc_grace = Duration::from_secs(args.store_gc_grace_secs);
    config.min_free_memory_mb = args.min_free_memory_mb;
    config.function_url_domain = args.function_url_domain;
    config.network = thawd::config::NetworkSetting {
        mode: args.network,
        subnet: args.instance_subnet,
        internal: args.internal_cidr.clone(),
        dns: (!args.dns.is_empty()).then(|| args.dns.clone()),
        pool: args.network_pool,
    };
    config.events.max_queued = usize::try_from(args.max_queued_events).unwrap_or(usize::MAX);
    if !(args.async_retry_delay_secs.is_finite() && args.async_retry_delay_secs >= 0.0) {
        anyhow::bail!("--async-retry-delay-secs must be a number of seconds, 0 or more");
    }
    config.events.retry_delay = Duration::from_secs_f64(args.async_retry_delay_secs);
    config.events.durable = args.event_queue == "disk";
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(thawd::serve(config))
}

/// `THAW_ROOT_ACCESS_KEY_ID` and `THAW_ROOT_SECRET_ACCESS_KEY`: both or
/// neither (then the data directory's root key, generated on first start).
fn root_credentials_from_env() -> anyhow::Result<Option<thaw_api::auth::Credentials>> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        get("THAW_ROOT_ACCESS_KEY_ID"),
        get("THAW_ROOT_SECRET_ACCESS_KEY"),
    ) {
        (Some(id), Some(secret)) => {
            let creds = thaw_api::auth::Credentials::new(id, secret);
            thaw_auth::check_credentials(&creds).map_err(|e| {
                anyhow::anyhow!("THAW_ROOT_ACCESS_KEY_ID / THAW_ROOT_SECRET_ACCESS_KEY: {e}")
            })?;
            Ok(Some(creds))
        }
        (None, None) => Ok(None),
        _ => anyhow::bail!(
            "set both THAW_ROOT_ACCESS_KEY_ID and THAW_ROOT_SECRET_ACCESS_KEY, or neither"
        ),
    }
}
