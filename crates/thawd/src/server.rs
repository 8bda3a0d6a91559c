//! The daemon process: builds the [`Platform`] and serves the HTTP API until
//! SIGINT/SIGTERM, then tears every instance down.

use std::sync::Arc;

use crate::config::DaemonConfig;
use crate::logs::LogStore;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::registry::Registry;

/// Everything the HTTP API needs, shared behind an `Arc`.
pub struct Platform {
    pub config: DaemonConfig,
    pub registry: Registry,
    pub pools: Pools,
    pub metrics: Arc<Metrics>,
    pub logs: Arc<LogStore>,
}

/// Run the daemon until a shutdown signal.
pub async fn serve(_config: DaemonConfig) -> anyhow::Result<()> {
    todo!("lead: serve")
}
