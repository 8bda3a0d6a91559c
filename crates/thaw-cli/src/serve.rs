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
    /// Restore instances from snapshots lazily: memory is served on first
    /// touch instead of copied in before the runtime resumes.
    #[arg(long)]
    pub lazy_restore: bool,
    /// Standby sandboxes (built, restore prepared) kept ready per function
    /// with a snapshot [default: 1; 0 builds the sandbox at each restore].
    #[arg(long)]
    pub standby: Option<usize>,
    /// Build a snapshot of every function on deploy, update and start-up
    /// (the snapshot pipeline); `false`: only on `thaw snapshot create`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_snapshot: bool,
    /// Most instances of one function running at once [default: 8].
    #[arg(long)]
    pub max_instances: Option<usize>,
    /// The `thaw-init` supervisor binary [default: next to `thaw`].
    #[arg(long)]
    pub init_binary: Option<PathBuf>,
}

/// Run the daemon on a multi-threaded runtime.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let init_binary = match args.init_binary {
        Some(p) => p,
        None => crate::local::init_binary()?,
    };
    let mut config = DaemonConfig::new(args.listen, args.data_dir, init_binary);
    if let Some(secs) = args.keep_alive_secs {
        config.keep_alive = Duration::from_secs(secs);
    }
    config.lazy_restore = args.lazy_restore;
    config.auto_snapshot = args.auto_snapshot;
    if let Some(n) = args.standby {
        config.standby_per_function = n;
    }
    if let Some(n) = args.max_instances {
        config.max_instances_per_function = n.max(1);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(thawd::serve(config))
}
