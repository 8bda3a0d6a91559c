//! Shared harness of the end-to-end tests: a real `thaw serve` process on a
//! loopback port with its own data directory.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use thaw_api::{
    Client, CreateFunctionRequest, Environment, FunctionCode, InvokeOptions, InvokeResult,
};

/// Directory of the test functions.
pub fn functions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/functions")
}

/// Node.js 22 for the nodejs22.x runtime: `$THAW_NODE22`, else what
/// `scripts/install-test-tools.sh` fetched into `target/tools/node22`.
pub fn node22() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("THAW_NODE22") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/node22/bin/node");
    p.is_file().then(|| std::fs::canonicalize(&p).unwrap_or(p))
}

/// Whether this test can run here; prints a loud SKIP line when not.
pub fn can_run(test: &str) -> bool {
    if !nix_is_root() {
        skip(test, "needs root (namespaces, cgroups, mounts)");
        return false;
    }
    true
}

/// Print a loud SKIP line, or fail when `THAW_REQUIRE_ALL=1` (CI sets it, so
/// that a required proof can never pass by being skipped).
pub fn skip(test: &str, why: &str) {
    if std::env::var("THAW_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{test} cannot run here ({why}) and THAW_REQUIRE_ALL=1");
    }
    eprintln!("SKIP {test}: {why}");
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The cgroup parent name of the daemon using `data_dir` (mirrors thawd).
pub fn cgroup_parent_of(data_dir: &Path) -> String {
    use sha2::Digest;
    let canon = std::fs::canonicalize(data_dir).unwrap();
    let h = sha2::Sha256::digest(canon.as_os_str().as_encoded_bytes());
    let hex: String = h.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("thaw/{hex}")
}

/// Instance cgroups (children of the daemon's parent) that still exist, in any controller.
pub fn instance_cgroups(data_dir: &Path) -> Vec<PathBuf> {
    let parent = cgroup_parent_of(data_dir);
    let mut out = Vec::new();
    let roots: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    for root in roots
        .iter()
        .chain(std::iter::once(&PathBuf::from("/sys/fs/cgroup")))
    {
        if let Ok(rd) = std::fs::read_dir(root.join(&parent)) {
            out.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
        }
    }
    out
}

/// Whether daemons started here give instances a network of their own
/// (`--network auto` finds nftables' `nft`; `scripts/test.sh` installs it).
pub fn network_available() -> bool {
    ["/usr/sbin/nft", "/sbin/nft"]
        .iter()
        .any(|p| Path::new(p).exists())
}

/// What of the instance network of the daemon using `data_dir` exists on
/// the host: its host-side links, its nftables table, its subnet's route
/// (empty once it shut down cleanly, or restarted after a crash).
pub fn network_leftovers(data_dir: &Path) -> Vec<String> {
    let name = cgroup_parent_of(data_dir)
        .trim_start_matches("thaw/")
        .to_string();
    let prefix = format!("tw{}-", &name[..6]);
    let mut left = Vec::new();
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        if let Some(n) = line.split(':').nth(1) {
            let n = n.trim().split('@').next().unwrap_or_default();
            if n.starts_with(&prefix) {
                left.push(format!("link {n}"));
            }
        }
    }
    if let Ok(out) = Command::new("/usr/sbin/nft")
        .args(["list", "tables"])
        .output()
    {
        let table = format!("table inet thaw_{name}");
        if String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == table)
        {
            left.push(table);
        }
    }
    let subnet = std::fs::read_to_string(data_dir.join("network.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["subnet"].as_str().map(str::to_string));
    if let Some(subnet) = subnet {
        let routes = Command::new("ip").args(["route"]).output().unwrap();
        for l in String::from_utf8_lossy(&routes.stdout).lines() {
            if l.contains(&subnet) {
                left.push(format!("route {l}"));
            }
        }
    }
    left
}

/// A running `thaw serve`.
pub struct Daemon {
    child: Option<Child>,
    pub endpoint: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Start a daemon with a fresh data directory.
    pub fn start(extra: &[&str]) -> Daemon {
        let tmp = tempfile::Builder::new()
            .prefix("thaw-e2e-")
            .tempdir()
            .unwrap();
        let mut d = Daemon::start_in(tmp.path(), extra);
        d._tmp = Some(tmp);
        d
    }

    /// Start a daemon whose process inherited extra descriptors from its parent
    /// (fd 7 on the host's `/`, fd 8 on `/etc/hostname`), as a careless launcher would.
    pub fn start_with_inherited_fds() -> Daemon {
        let tmp = tempfile::Builder::new()
            .prefix("thaw-e2e-")
            .tempdir()
            .unwrap();
        let mut d = Daemon::spawn(tmp.path(), &[], true);
        d._tmp = Some(tmp);
        d
    }

    /// Start a daemon on an existing data directory.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Daemon {
        Daemon::spawn(data_dir, extra, false)
    }

    fn spawn(data_dir: &Path, extra: &[&str], leak_fds: bool) -> Daemon {
        Daemon::spawn_as(data_dir, extra, leak_fds, None, &[])
    }

    /// Start a daemon with a fresh data directory and extra environment
    /// variables (the test-only switches, such as injected store faults).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let tmp = tempfile::Builder::new()
            .prefix("thaw-e2e-")
            .tempdir()
            .unwrap();
        let mut d = Daemon::spawn_as(tmp.path(), extra, false, None, env);
        d._tmp = Some(tmp);
        d
    }

    /// Start a daemon given no root key (it generates one and leaves it for
    /// the CLI under `home`, its `HOME`).
    pub fn start_generating_key(data_dir: &Path, home: &Path) -> Daemon {
        Daemon::spawn_as(data_dir, &[], false, Some(home), &[])
    }

    fn spawn_as(
        data_dir: &Path,
        extra: &[&str],
        leak_fds: bool,
        home: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Daemon {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = if leak_fds {
            let mut c = Command::new("/bin/sh");
            c.args([
                "-c",
                "exec 7</ 8</etc/hostname; exec \"$0\" \"$@\"",
                env!("CARGO_BIN_EXE_thaw"),
            ]);
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_thaw"))
        };
        // Tests of cold starts must get cold starts: the snapshot pipeline
        // is off unless a test asks for it (`--auto-snapshot true`).
        let pipeline: &[&str] = if extra.contains(&"--auto-snapshot") {
            &[]
        } else {
            &["--auto-snapshot", "false"]
        };
        match home {
            None => cmd
                .env("THAW_ROOT_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
                .env("THAW_ROOT_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY),
            Some(home) => cmd
                .env_remove("THAW_ROOT_ACCESS_KEY_ID")
                .env_remove("THAW_ROOT_SECRET_ACCESS_KEY")
                .env("HOME", home),
        };
        if let Some(node22) = node22() {
            cmd.env("THAW_NODE22", node22);
        }
        let child = cmd
            .envs(env.iter().copied())
            .args(["serve", "--listen", &listen, "--data-dir"])
            .arg(data_dir)
            .args(pipeline)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("THAW_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn thaw serve");
        let endpoint = format!("http://{listen}");
        let mut d = Daemon {
            child: Some(child),
            endpoint,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
        };
        d.wait_healthy();
        d
    }

    fn wait_healthy(&mut self) {
        let http = reqwest::blocking::Client::new();
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("thaw serve exited during start-up: {st}");
            }
            if let Ok(r) = http.get(format!("{}/healthz", self.endpoint)).send() {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "daemon not healthy after 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A client signing with the test root key.
    pub fn client(&self) -> Client {
        Client::new(&self.endpoint)
            .unwrap()
            .with_credentials(test_credentials())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL and reap (a crash: nothing of the daemon runs after this).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let t0 = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.success();
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Deploy `dir` (a directory under tests/functions) as `name`.
pub fn deploy(
    c: &Client,
    name: &str,
    dir: &str,
    runtime: &str,
    handler: &str,
    memory: i64,
    timeout: i64,
) {
    let zip = thaw_api::package::zip_directory(&functions_dir().join(dir)).unwrap();
    deploy_zip(c, name, zip, runtime, handler, memory, timeout);
}

pub fn deploy_zip(
    c: &Client,
    name: &str,
    zip: Vec<u8>,
    runtime: &str,
    handler: &str,
    memory: i64,
    timeout: i64,
) {
    c.create_function(&CreateFunctionRequest {
        function_name: name.into(),
        runtime: Some(runtime.into()),
        handler: Some(handler.into()),
        role: Some("arn:aws:iam::000000000000:role/test".into()),
        code: FunctionCode {
            zip_file: Some(zip),
            ..Default::default()
        },
        memory_size: Some(memory),
        timeout: Some(timeout),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("deploy {name}: {e}"));
}

/// Deploy `dir` as `name` with 256 MB, a 10 s timeout and `env`.
pub fn deploy_env(
    c: &Client,
    name: &str,
    dir: &str,
    runtime: &str,
    handler: &str,
    env: &[(&str, &str)],
) {
    let zip = thaw_api::package::zip_directory(&functions_dir().join(dir)).unwrap();
    let variables: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    c.create_function(&CreateFunctionRequest {
        function_name: name.into(),
        runtime: Some(runtime.into()),
        handler: Some(handler.into()),
        role: Some("arn:aws:iam::000000000000:role/test".into()),
        code: FunctionCode {
            zip_file: Some(zip),
            ..Default::default()
        },
        memory_size: Some(256),
        timeout: Some(10),
        environment: Some(Environment {
            variables: Some(variables),
        }),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("deploy {name}: {e}"));
}

/// Waits until the snapshot build of `name` ended (ready, init-only or
/// failed) and returns its status.
pub fn settled(c: &Client, name: &str) -> thaw_api::SnapshotStatus {
    use thaw_api::SnapshotState;
    let t0 = Instant::now();
    loop {
        let s = c.snapshot_status(name).unwrap();
        if matches!(
            s.state,
            SnapshotState::Ready | SnapshotState::Failed | SnapshotState::InitOnly
        ) {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "build never ended: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Invoke and decode the JSON response.
pub fn invoke(
    c: &Client,
    name: &str,
    payload: serde_json::Value,
) -> (InvokeResult, serde_json::Value) {
    let r = c
        .invoke(
            name,
            payload.to_string().as_bytes(),
            &InvokeOptions::default(),
        )
        .unwrap_or_else(|e| panic!("invoke {name}: {e}"));
    let v = serde_json::from_slice(&r.payload).unwrap_or(serde_json::Value::Null);
    (r, v)
}

/// Host pids of processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

/// Every cgroup directory under any controller whose path mentions `needle`.
pub fn cgroups_mentioning(needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(dir: &Path, needle: &str, out: &mut Vec<PathBuf>, depth: usize) {
        if depth > 6 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if p.to_string_lossy().contains(needle) {
                    out.push(p.clone());
                }
                walk(&p, needle, out, depth + 1);
            }
        }
    }
    walk(Path::new("/sys/fs/cgroup"), needle, &mut out, 0);
    out
}

/// The sum the `py-pages` test function returns for pages `[a, b)`.
pub fn pages_sum(a: u64, b: u64) -> u64 {
    (a..b).map(|i| i * 7919 + 13).sum()
}

/// The snapshot directory of `name`'s only revision.
pub fn snapshot_dir(d: &Daemon, name: &str) -> PathBuf {
    let dir = d.data_dir.join("snapshots").join(name);
    let mut revs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(revs.len(), 1, "{revs:?}");
    revs.remove(0)
}

/// The value of the first line of the daemon's `/metrics` that starts
/// with `line_start` (0 if there is none).
pub fn metric(d: &Daemon, line_start: &str) -> f64 {
    metric_in(&metrics_text(d), line_start)
}

/// The daemon's `/metrics` text.
pub fn metrics_text(d: &Daemon) -> String {
    d.client().metrics_text().unwrap()
}

/// The root key every test daemon is started with (the boto3 scripts in
/// tests/boto3 sign with it too).
pub const TEST_ACCESS_KEY_ID: &str = "AKIDTHAWTEST00000001";
/// See [`TEST_ACCESS_KEY_ID`].
pub const TEST_SECRET_ACCESS_KEY: &str = "not-a-real-secret-for-thaw-tests-0000000";

/// [`TEST_ACCESS_KEY_ID`] and its secret.
pub fn test_credentials() -> thaw_api::auth::Credentials {
    thaw_api::auth::Credentials::new(TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY)
}

/// The headers that sign a request of `method` to `url` with `body` by the
/// test key (for requests made without [`thaw_api::Client`]).
pub fn signed_headers(method: &str, url: &str, body: &[u8]) -> reqwest::header::HeaderMap {
    signed_headers_at(method, url, body, std::time::SystemTime::now())
}

/// [`signed_headers`] as signed at `at`.
pub fn signed_headers_at(
    method: &str,
    url: &str,
    body: &[u8],
    at: std::time::SystemTime,
) -> reqwest::header::HeaderMap {
    let mut req = http::Request::builder()
        .method(method)
        .uri(url)
        .body(body.to_vec())
        .unwrap();
    let host = req.uri().authority().unwrap().to_string();
    req.headers_mut()
        .insert(http::header::HOST, host.parse().unwrap());
    thaw_api::auth::sign_request(&mut req, &test_credentials(), at).unwrap();
    let mut out = reqwest::header::HeaderMap::new();
    for (k, v) in req.headers() {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// Sets the test key in the environment of a `thaw` CLI command.
pub fn signed_cli(cmd: &mut Command) -> &mut Command {
    cmd.env("THAW_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
        .env("THAW_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
}

/// The value of the first line of `text` that starts with `line_start`.
pub fn metric_in(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Whether the AWS SDK for Python is importable (scripts/test.sh installs
/// it); when not, the caller skips (loudly) the part that needs it.
pub fn has_boto3() -> bool {
    Command::new("python3")
        .args(["-c", "import boto3"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs `tests/boto3/<script>` against `d` (endpoint, the test functions'
/// directory, then `args`), prints what it printed, and returns its
/// standard output; fails the test unless it exits 0 and says its checks
/// passed.
pub fn run_boto3_script(d: &Daemon, script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(functions_dir().join("../boto3").join(script))
        .arg(&d.endpoint)
        .arg(functions_dir())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("python3 {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && stdout.contains("checks passed"),
        "boto3 script {script} failed"
    );
    stdout
}
