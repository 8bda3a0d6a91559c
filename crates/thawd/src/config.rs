//! Daemon configuration: plain data, produced by the CLI or tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How `thaw serve` runs. Everything lives under `data_dir` (the embedded default).
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Path of the `thaw-init` supervisor binary.
    pub init_binary: PathBuf,
    /// The root account's access key when the operator gives one
    /// (`THAW_ROOT_ACCESS_KEY_ID` / `THAW_ROOT_SECRET_ACCESS_KEY`); `None`:
    /// the one stored in the data directory, generated on first start.
    pub root_credentials: Option<thaw_api::auth::Credentials>,
    /// How long an idle warm instance is kept before it is reaped.
    pub keep_alive: Duration,
    /// Upper bound of concurrently running instances per function (100:
    /// the adaptive scheduler, not this bound, keeps a burst of short
    /// requests on a few instances; see docs/benchmarks.md, burst).
    pub max_instances_per_function: usize,
    /// The account's concurrent executions (Lambda's `ConcurrentExecutions`,
    /// default 1000): the sum of all functions' invocations in flight.
    pub account_concurrency: u32,
    /// Maximum number of tasks (processes + threads) per instance.
    pub pids_max: u64,
    /// Size of each instance's private /tmp, bytes.
    pub tmp_size_bytes: u64,
    /// How restores bring a snapshot's memory back (a function may choose
    /// its own in its settings, [`thaw_api::PlatformSettings`]).
    pub memory_mode: MemoryMode,
    /// How new instances of a function with a snapshot are made.
    pub instances: InstanceMode,
    /// When a request with no idle instance starts a new one
    /// (`crate::scheduler`).
    pub scaling: Scaling,
    /// Pages a lazy restore's page server copies per fault (0: the
    /// engine's default).
    pub fault_around: u32,
    /// Benchmarks: read snapshots through a slower path, standing in for a
    /// remote tier.
    pub snapshot_read_throttle: Option<thaw_snapshot::image::ReadThrottle>,
    /// Standby instances (sandbox built, restore prepared) kept ready per
    /// function that has a snapshot; 0 restores into a new sandbox each time.
    pub standby_per_function: usize,
    /// Build a snapshot of every function on deploy, update and daemon
    /// start (the snapshot pipeline); off: only `thaw snapshot create`.
    pub auto_snapshot: bool,
    /// Which environment variables are secrets.
    pub secret_policy: crate::secrets::SecretPolicy,
    /// Test hook: snapshot runs see their clocks this far ahead of the
    /// host's, as if the snapshot had been taken on a host that had been up
    /// longer (or before a reboot). Zero in normal operation.
    pub snapshot_clock_offset: Duration,
    /// Where snapshots are kept (the snapshot store, or plain files).
    pub store: StoreSetting,
    /// Bytes of verified chunks the store keeps in memory.
    pub store_memory_bytes: u64,
    /// How often unreferenced store chunks are collected.
    pub store_gc_interval: Duration,
    /// How old an unreferenced chunk must be to be collected (a publish
    /// refreshes the chunks it reuses that are older than half of it).
    pub store_gc_grace: Duration,
    /// Bytes of sealed chunks the store keeps on local disk in front of an
    /// S3 tier (`DATA/store-cache`); 0: none.
    pub store_disk_cache_bytes: u64,
    /// The store's master key (tenant keys are derived from it): a local
    /// key file, `DATA/keys/store.key` unless set. Every host sharing an
    /// S3 tier needs the same key.
    pub store_key_file: Option<PathBuf>,
    /// Below this many MiB free on the data directory's filesystem,
    /// deploys and snapshot requests fail and background work waits
    /// ([`crate::pressure`]).
    pub min_free_disk_mb: u64,
    /// Below this many MiB of available memory (beyond the host's
    /// reserve), background work waits ([`crate::pressure`]).
    pub min_free_memory_mb: u64,
    /// Limits of the HTTP server ([`HttpLimits`]).
    pub http: HttpLimits,
    /// The durable queue of `Event` invocations ([`crate::events`]).
    pub events: crate::events::QueueConfig,
    /// The domain function URLs are under:
    /// `http://<id>.lambda-url.<region>.<domain>:<port>/` (default
    /// `localhost`: clients reach the daemon's port with that `Host`).
    pub function_url_domain: String,
    /// Instances' network ([`NetworkSetting`]).
    pub network: NetworkSetting,
}

/// Whether instances get a network of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// Loopback only: a function reaches nothing outside its sandbox.
    Off,
    /// An address per instance; the daemon does not start without it.
    On,
    /// [`NetworkMode::On`] where this host can (root, nftables' `nft`),
    /// else loopback only with a warning. The default.
    #[default]
    Auto,
}

impl std::str::FromStr for NetworkMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(NetworkMode::Off),
            "on" => Ok(NetworkMode::On),
            "auto" => Ok(NetworkMode::Auto),
            _ => Err(format!("{s:?} is not a network mode (off, on, auto)")),
        }
    }
}

/// How instances' network is set up (`thaw_net`).
#[derive(Debug, Clone, Default)]
pub struct NetworkSetting {
    /// Whether there is one.
    pub mode: NetworkMode,
    /// Where instance addresses come from (`--instance-subnet`); `None`: a
    /// free /20 of 100.64.0.0/10, kept across restarts.
    pub subnet: Option<thaw_net::Ipv4Cidr>,
    /// Networks reached without NAT (`--internal-cidr`): they see each
    /// instance's own address.
    pub internal: Vec<thaw_net::Ipv4Cidr>,
    /// Instances' resolvers (`--dns`); `None`: the host's.
    pub dns: Option<Vec<std::net::Ipv4Addr>>,
    /// Namespaces kept ready (`--network-pool`).
    pub pool: usize,
}

/// How long the HTTP server waits for clients, and how many it serves.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A request's head (request line and headers) must arrive within this
    /// long after the server starts waiting for it; the same timer closes
    /// a keep-alive connection idle for this long between requests.
    pub header_timeout: Duration,
    /// A request's whole body must arrive within this long (else 408 and
    /// the connection is closed).
    pub body_timeout: Duration,
    /// Most connections served at once; further clients wait in the
    /// listen backlog until one closes.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(120),
            max_connections: 1024,
        }
    }
}

/// Where the daemon keeps snapshots.
#[derive(Debug, Clone, Default)]
pub enum StoreSetting {
    /// Plain files under `DATA/snapshots` only (the benchmarks' "plain
    /// local file").
    Off,
    /// The snapshot store over a local directory, `DATA/store` (default).
    #[default]
    Local,
    /// The snapshot store over an S3-compatible service.
    S3(thaw_store::S3Config),
}

impl DaemonConfig {
    /// Defaults for everything but the address and the data directory.
    pub fn new(listen: SocketAddr, data_dir: PathBuf, init_binary: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            init_binary,
            root_credentials: None,
            keep_alive: Duration::from_secs(300),
            max_instances_per_function: 100,
            account_concurrency: thaw_api::concurrency::DEFAULT_ACCOUNT_CONCURRENCY,
            pids_max: 128,
            tmp_size_bytes: 512 * 1024 * 1024,
            memory_mode: MemoryMode::default(),
            instances: InstanceMode::default(),
            scaling: Scaling::default(),
            fault_around: 0,
            snapshot_read_throttle: None,
            standby_per_function: 1,
            auto_snapshot: true,
            secret_policy: crate::secrets::SecretPolicy::default(),
            snapshot_clock_offset: Duration::ZERO,
            store: StoreSetting::default(),
            store_memory_bytes: 256 << 20,
            store_gc_interval: Duration::from_secs(3600),
            store_gc_grace: Duration::from_secs(3600),
            store_disk_cache_bytes: 4 << 30,
            store_key_file: None,
            min_free_disk_mb: crate::pressure::DEFAULT_MIN_FREE_DISK_MB,
            min_free_memory_mb: crate::pressure::DEFAULT_MIN_FREE_MEMORY_MB,
            http: HttpLimits::default(),
            events: crate::events::QueueConfig::default(),
            function_url_domain: "localhost".into(),
            network: NetworkSetting {
                pool: 16,
                ..NetworkSetting::default()
            },
        }
    }
}

/// How new instances of a function with a snapshot are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstanceMode {
    /// Cloned copy-on-write from the function revision's *template* (the
    /// snapshot restored once per host and never resumed) into a standby
    /// sandbox: no restore per instance, and the snapshot's memory is
    /// shared by every instance of the host. The default.
    #[default]
    Clone,
    /// Restored from the snapshot into a standby (or new) sandbox, each
    /// with a private copy of the snapshot's memory (`--memory-mode`).
    Restore,
}

impl InstanceMode {
    /// The mode's name (`clone`, `restore`).
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceMode::Clone => "clone",
            InstanceMode::Restore => "restore",
        }
    }
}

impl std::str::FromStr for InstanceMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [InstanceMode::Clone, InstanceMode::Restore]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown instance mode {s:?} (clone or restore)"))
    }
}

/// When a request that finds no idle instance starts a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scaling {
    /// Queue or scale from measurements: start one only when that serves
    /// the requests in the system sooner than waiting for the busy ones
    /// (`crate::scheduler`'s rule 7). The default.
    #[default]
    Adaptive,
    /// Start one whenever the function is under its instance limit (the
    /// scheduler without measurements): the behaviour before the
    /// autoscaler, kept for comparison (`thaw bench burst`).
    Eager,
}

impl Scaling {
    /// The policy's name (`adaptive`, `eager`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scaling::Adaptive => "adaptive",
            Scaling::Eager => "eager",
        }
    }
}

impl std::str::FromStr for Scaling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Scaling::Adaptive, Scaling::Eager]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown scaling {s:?} (adaptive or eager)"))
    }
}

/// How a restore brings a snapshot's memory back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryMode {
    /// Every page is read and copied in before the runtime resumes.
    Eager,
    /// Pages are served on first touch by a page server.
    Lazy,
    /// Lazy, but the snapshot's working set (recorded on its first
    /// restore) is installed in one batch before the runtime resumes. The
    /// default: the fastest first response measured, from a standby
    /// sandbox and from a new one, with the page cache hot or cold
    /// (docs/benchmarks.md).
    #[default]
    WorkingSet,
}

impl MemoryMode {
    /// Every mode, in the order the benchmarks show them.
    pub const ALL: [MemoryMode; 3] = [MemoryMode::Eager, MemoryMode::Lazy, MemoryMode::WorkingSet];

    /// The mode's name (`eager`, `lazy`, `working-set`).
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryMode::Eager => "eager",
            MemoryMode::Lazy => "lazy",
            MemoryMode::WorkingSet => "working-set",
        }
    }
}

impl std::fmt::Display for MemoryMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MemoryMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MemoryMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown memory mode {s:?} (eager, lazy or working-set)"))
    }
}
