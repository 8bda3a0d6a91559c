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
    /// How long an idle warm instance is kept before it is reaped.
    pub keep_alive: Duration,
    /// Upper bound of concurrently running instances per function.
    pub max_instances_per_function: usize,
    /// Maximum number of tasks (processes + threads) per instance.
    pub pids_max: u64,
    /// Size of each instance's private /tmp, bytes.
    pub tmp_size_bytes: u64,
    /// Restore instances from snapshots lazily (memory served on first
    /// touch by a page server) instead of copying it all in first.
    pub lazy_restore: bool,
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
}

impl DaemonConfig {
    /// Defaults for everything but the address and the data directory.
    pub fn new(listen: SocketAddr, data_dir: PathBuf, init_binary: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            init_binary,
            keep_alive: Duration::from_secs(300),
            max_instances_per_function: 8,
            pids_max: 128,
            tmp_size_bytes: 512 * 1024 * 1024,
            lazy_restore: false,
            standby_per_function: 1,
            auto_snapshot: true,
            secret_policy: crate::secrets::SecretPolicy::default(),
            snapshot_clock_offset: Duration::ZERO,
        }
    }
}
