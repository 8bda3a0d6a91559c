//! A single-node Garage (an S3-compatible server made for self-hosting)
//! on loopback, for the S3 tier's tests and the store benchmarks: started
//! with its own data directory, given a role, a bucket and a key, killed
//! on drop. Needs the `garage` binary (`scripts/install-test-tools.sh`
//! builds one into `target/tools/bin`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::S3Config;

/// The `garage` binary: `THAW_GARAGE`, `target/tools/bin/garage` under
/// `workspace` if given, or the first on `PATH`.
pub fn find_binary(workspace: Option<&Path>) -> Option<PathBuf> {
    if let Ok(p) = std::env::var("THAW_GARAGE") {
        return Some(PathBuf::from(p));
    }
    if let Some(w) = workspace {
        let local = w.join("target/tools/bin/garage");
        if local.exists() {
            return Some(local);
        }
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("garage"))
        .find(|p| p.exists())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running single-node Garage, killed on drop.
#[derive(Debug)]
pub struct Garage {
    child: Child,
    bin: PathBuf,
    config: PathBuf,
    data: PathBuf,
    /// How to reach its bucket `thaw` with its key.
    pub s3: S3Config,
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Garage {
    /// Runs `garage -c CONFIG ARGS` to completion; its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .map_err(|e| format!("garage {args:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "garage {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Where it keeps objects.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Starts `bin` with its files under `dir` (which the caller keeps)
    /// and sets up the bucket `thaw` and a key for it.
    pub fn start(bin: &Path, dir: &Path) -> Result<Garage, String> {
        let port = |_| free_port().map_err(|e| format!("no free port: {e}"));
        let (rpc, s3, admin) = (port(0)?, port(1)?, port(2)?);
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) % 256))
            .collect();
        let config = dir.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                d = dir.display()
            ),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut g = Garage {
            child,
            bin: bin.to_owned(),
            config,
            data: dir.join("data"),
            s3: S3Config {
                endpoint: format!("http://127.0.0.1:{s3}"),
                bucket: "thaw".into(),
                region: "garage".into(),
                access_key_id: String::new(),
                secret_access_key: String::new(),
            },
        };
        // Wait for the node, then give it a role, a bucket and a key.
        let t0 = Instant::now();
        let node = loop {
            if let Ok(out) = g.cli(&["node", "id", "-q"]) {
                break out.trim().to_string();
            }
            if t0.elapsed() > Duration::from_secs(30) {
                return Err("garage did not start within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let id = node.split('@').next().unwrap_or_default().to_string();
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &id])?;
        g.cli(&["layout", "apply", "--version", "1"])?;
        g.cli(&["bucket", "create", "thaw"])?;
        let key = g.cli(&["key", "create", "thaw-test"])?;
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
                .ok_or_else(|| format!("no {name} in {key}"))
        };
        g.s3.access_key_id = field("Key ID:")?;
        g.s3.secret_access_key = field("Secret key:")?;
        g.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            "thaw",
            "--key",
            "thaw-test",
        ])?;
        Ok(g)
    }
}
