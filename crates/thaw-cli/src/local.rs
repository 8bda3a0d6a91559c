//! An in-process daemon on a background thread, for `thaw demo` and `thaw bench`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use thawd::DaemonConfig;
use tokio::sync::oneshot;

/// The `thaw-init` binary that sits next to the running `thaw`.
pub fn init_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the thaw binary")?;
    let dir = exe
        .parent()
        .context("thaw binary has no parent directory")?;
    Ok(dir.join("thaw-init"))
}

/// A daemon serving on a loopback port until [`LocalDaemon::stop`].
pub struct LocalDaemon {
    pub endpoint: String,
    /// The root key it was started with (random, for this daemon only).
    pub credentials: thaw_api::auth::Credentials,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl LocalDaemon {
    /// Start a daemon on `127.0.0.1:<free port>` with its data under `data_dir`.
    pub fn start(data_dir: PathBuf, tune: impl FnOnce(&mut DaemonConfig)) -> anyhow::Result<Self> {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind loopback")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let mut config = DaemonConfig::new(addr, data_dir, init_binary()?);
        // The demo and the benchmarks decide when snapshots are taken.
        config.auto_snapshot = false;
        let credentials = thaw_auth::generate()?;
        config.root_credentials = Some(credentials.clone());
        tune(&mut config);
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("thawd".into()).spawn(
            move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    thawd::serve_with(listener, config, async move {
                        let _ = rx.await;
                    })
                    .await
                })
            },
        )?;
        let endpoint = format!("http://{addr}");
        let health = format!("{endpoint}/healthz");
        let http = reqwest::blocking::Client::new();
        let t0 = Instant::now();
        loop {
            if thread.is_finished() {
                return match thread.join() {
                    Ok(Err(e)) => Err(e.context("daemon failed to start")),
                    _ => bail!("daemon exited during start-up"),
                };
            }
            if http
                .get(&health)
                .send()
                .map(|r| r.status().is_success())
                .unwrap_or(false)
            {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("daemon did not become healthy within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(LocalDaemon {
            endpoint,
            credentials,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// A client of this daemon, signing with its root key.
    pub fn client(&self) -> anyhow::Result<thaw_api::Client> {
        Ok(thaw_api::Client::new(&self.endpoint)?.with_credentials(self.credentials.clone()))
    }

    /// Shut the daemon down (every instance is destroyed) and wait for it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => bail!("daemon thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for LocalDaemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            tracing::warn!(error = %format!("{e:#}"), "daemon stopped with an error");
        }
    }
}

/// A zip archive of in-memory files (name, contents, unix mode).
pub fn zip_files(files: &[(&str, &[u8], u32)]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        for (name, data, mode) in files {
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .unix_permissions(*mode);
            z.start_file(*name, opts)?;
            z.write_all(data)?;
        }
        z.finish()?;
    }
    Ok(buf.into_inner())
}
