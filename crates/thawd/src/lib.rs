//! thawd: the thaw daemon as a library.
//!
//! Composes the sandbox, the runtime supervisor and (later) the snapshot engine
//! and store into a serverless platform: a function registry persisted under the
//! data directory, per-function instance pools with warm reuse and keep-alive
//! reaping, a Lambda-compatible HTTP API and Prometheus metrics.
//!
//! Must not: implement sandboxing, the Runtime API or storage formats itself;
//! those live in their own crates.

pub mod accounts;
pub mod admission;
pub mod api;
pub mod backend;
pub mod capacity;
pub mod config;
pub mod events;
pub mod instance;
pub mod invoke;
pub mod logs;
pub mod metrics;
pub mod pipeline;
pub mod placement;
pub mod platform_log;
pub mod pool;
pub mod pressure;
pub mod provisioned;
pub mod recovery;
pub mod registry;
pub mod runtimes;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod snapshots;
pub mod snapstore;
pub mod templates;

pub use config::DaemonConfig;
pub use server::{serve, serve_with, Platform};
