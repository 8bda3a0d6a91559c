//! A fake daemon for driving the supervisor on the host, without a sandbox.

#![allow(dead_code)] // Each test binary uses a different part of this harness.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use thaw_runtime::control::{
    read_frame, write_frame, FromSupervisor, Invocation, LogStream, RuntimeSpec, ToSupervisor,
};
use thaw_runtime::{supervisor, ExitReason, SupervisorError};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

/// How long any single expected frame may take (interpreters start slowly on
/// a busy machine).
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// The real interpreter behind `name` on PATH (resolving wrappers such as pyenv
/// shims, which need an environment the supervisor does not pass on).
fn interpreter(name: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(name).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
    let path = std::fs::canonicalize(path).ok()?;
    Some(path.display().to_string())
}

/// The host's Python 3, or a loud SKIP line and `None`.
pub fn python(test: &str) -> Option<String> {
    let p = interpreter("python3", &["-c", "import sys; print(sys.executable)"]);
    if p.is_none() {
        assert!(
            std::env::var("THAW_REQUIRE_ALL").as_deref() != Ok("1"),
            "{test}: python3 is not installed and THAW_REQUIRE_ALL=1"
        );
        eprintln!("SKIP: {test}: python3 is not installed on this host");
    }
    p
}

/// The host's Node.js, or a loud SKIP line and `None`.
pub fn node(test: &str) -> Option<String> {
    let p = interpreter("node", &["-e", "console.log(process.execPath)"]);
    if p.is_none() {
        assert!(
            std::env::var("THAW_REQUIRE_ALL").as_deref() != Ok("1"),
            "{test}: node is not installed and THAW_REQUIRE_ALL=1"
        );
        eprintln!("SKIP: {test}: node is not installed on this host");
    }
    p
}

/// A function on disk: bootstraps installed in a temp dir, code in a task root.
pub struct Function {
    pub dir: tempfile::TempDir,
    pub runtime_dir: PathBuf,
    pub task_root: PathBuf,
}

impl Function {
    pub fn new(files: &[(&str, &str)]) -> Function {
        let dir = tempfile::tempdir().unwrap();
        let runtime_dir = dir.path().join("runtime");
        thaw_runtime::install_bootstraps(&runtime_dir).unwrap();
        let task_root = dir.path().join("task");
        std::fs::create_dir_all(&task_root).unwrap();
        for (name, contents) in files {
            let p = task_root.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, contents).unwrap();
        }
        Function {
            dir,
            runtime_dir,
            task_root,
        }
    }

    /// A spec running `argv` the way the daemon would, with `handler` as `_HANDLER`.
    pub fn spec(&self, argv: Vec<String>, handler: &str) -> RuntimeSpec {
        let task_root = self.task_root.display().to_string();
        let env = [
            ("_HANDLER", handler),
            ("LAMBDA_TASK_ROOT", task_root.as_str()),
            ("AWS_LAMBDA_FUNCTION_NAME", "test-fn"),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/test-fn"),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "2024/01/01/[$LATEST]abc"),
            ("PYTHONDONTWRITEBYTECODE", "1"),
            ("LANG", "C.UTF-8"),
        ];
        RuntimeSpec {
            argv,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: task_root,
            api_port: 0,
            snapshot_run: false,
            clock_offset_ns: 0,
        }
    }

    pub fn python_spec(&self, python: &str, handler: &str) -> RuntimeSpec {
        let bootstrap = self.runtime_dir.join("python/bootstrap.py");
        self.spec(
            vec![python.into(), "-s".into(), bootstrap.display().to_string()],
            handler,
        )
    }

    pub fn node_spec(&self, node: &str, handler: &str) -> RuntimeSpec {
        let bootstrap = self.runtime_dir.join("node/bootstrap.js");
        self.spec(vec![node.into(), bootstrap.display().to_string()], handler)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.task_root.join(name)
    }
}

/// One log chunk as the daemon saw it.
#[derive(Debug, Clone)]
pub struct Log {
    pub request_id: Option<String>,
    pub stream: LogStream,
    pub text: String,
}

/// The daemon's side of one supervisor.
pub struct Daemon {
    control: UnixStream,
    pub task: JoinHandle<Result<ExitReason, SupervisorError>>,
    /// Every log chunk received so far, in order.
    pub logs: Vec<Log>,
    /// How many times the runtime reported waiting in `/next`.
    pub waiting: u32,
    next_id: u32,
}

/// The outcome of one invocation as the daemon saw it.
#[derive(Debug)]
pub struct Outcome {
    pub message: FromSupervisor,
    pub body: Vec<u8>,
    /// Log chunks tagged with this invocation, received before `message`.
    pub logs: Vec<Log>,
}

impl Outcome {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn stdout(&self) -> String {
        self.logs
            .iter()
            .filter(|l| l.stream == LogStream::Stdout)
            .map(|l| l.text.as_str())
            .collect()
    }

    pub fn all_output(&self) -> String {
        self.logs.iter().map(|l| l.text.as_str()).collect()
    }
}

pub fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

impl Daemon {
    /// Start a supervisor for `spec` with a socketpair as its control channel.
    pub fn start(spec: RuntimeSpec) -> Daemon {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let task = tokio::spawn(supervisor::run(spec, theirs, 1.5, None));
        Daemon {
            control: ours,
            task,
            logs: Vec::new(),
            waiting: 0,
            next_id: 0,
        }
    }

    /// The next frame that is not a log chunk (log chunks are collected).
    pub async fn recv(&mut self) -> (FromSupervisor, Vec<u8>) {
        loop {
            let frame = tokio::time::timeout(FRAME_TIMEOUT, read_frame(&mut self.control))
                .await
                .unwrap_or_else(|_| {
                    panic!("no frame within {FRAME_TIMEOUT:?}; logs: {:?}", self.logs)
                })
                .unwrap_or_else(|e| panic!("control channel: {e}; logs: {:?}", self.logs));
            match frame {
                (FromSupervisor::Log { request_id, stream }, body) => self.logs.push(Log {
                    request_id,
                    stream,
                    text: String::from_utf8_lossy(&body).into_owned(),
                }),
                // The runtime waiting for work: counted, not returned.
                (FromSupervisor::Waiting, _) => self.waiting += 1,
                other => return other,
            }
        }
    }

    /// Expect `SandboxReady` then `InitDone`; returns `(runtime_ms, init_ms)`.
    pub async fn expect_init(&mut self) -> (f64, f64) {
        let (m, _) = self.recv().await;
        assert_eq!(
            m,
            FromSupervisor::SandboxReady {
                setup_ms: 1.5,
                restore_ms: 0.0,
                memory_ms: 0.0
            }
        );
        match self.recv().await {
            (
                FromSupervisor::InitDone {
                    runtime_ms,
                    init_ms,
                },
                _,
            ) => (runtime_ms, init_ms),
            (other, body) => panic!(
                "expected InitDone, got {other:?} {}; logs: {:?}",
                String::from_utf8_lossy(&body),
                self.logs
            ),
        }
    }

    /// Expect `SandboxReady`, `InitError`, then `Exited`. Returns the error type,
    /// the error document and the exit.
    pub async fn expect_init_error(&mut self) -> (String, Value, FromSupervisor) {
        let (m, _) = self.recv().await;
        assert_eq!(
            m,
            FromSupervisor::SandboxReady {
                setup_ms: 1.5,
                restore_ms: 0.0,
                memory_ms: 0.0
            }
        );
        let (error_type, body) = match self.recv().await {
            (FromSupervisor::InitError { error_type }, body) => (error_type, body),
            (other, _) => panic!("expected InitError, got {other:?}; logs: {:?}", self.logs),
        };
        let doc: Value = serde_json::from_slice(&body).unwrap();
        let (exited, _) = self.recv().await;
        (error_type, doc, exited)
    }

    /// Send an invocation with a fresh request id.
    pub async fn send_invoke(&mut self, event: &Value, timeout: Duration) -> String {
        self.send_invoke_raw(event.to_string().as_bytes(), timeout, None, None)
            .await
    }

    pub async fn send_invoke_raw(
        &mut self,
        payload: &[u8],
        timeout: Duration,
        client_context: Option<&str>,
        cognito_identity: Option<&str>,
    ) -> String {
        self.next_id += 1;
        let request_id = format!("req-{}-{}", self.next_id, now_ms());
        let inv = Invocation {
            request_id: request_id.clone(),
            deadline_ms: now_ms() + u64::try_from(timeout.as_millis()).unwrap(),
            invoked_function_arn: "arn:aws:lambda:us-east-1:000000000000:function:test-fn".into(),
            trace_id: Some("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=0".into()),
            client_context: client_context.map(str::to_string),
            cognito_identity: cognito_identity.map(str::to_string),
        };
        write_frame(&mut self.control, &ToSupervisor::Invoke(inv), payload)
            .await
            .unwrap();
        request_id
    }

    /// Wait for the result of invocation `request_id` (`Response`, `Error` or
    /// `Exited`), with the logs tagged with it that came first.
    pub async fn outcome(&mut self, request_id: &str) -> Outcome {
        let seen = self.logs.len();
        let (message, body) = self.recv().await;
        let logs = self.logs[seen..]
            .iter()
            .filter(|l| l.request_id.as_deref() == Some(request_id))
            .cloned()
            .collect();
        Outcome {
            message,
            body,
            logs,
        }
    }

    pub async fn invoke(&mut self, event: Value) -> (String, Outcome) {
        let id = self.send_invoke(&event, Duration::from_secs(60)).await;
        let out = self.outcome(&id).await;
        (id, out)
    }

    /// Invoke and expect a `Response`; returns the response as JSON.
    pub async fn call(&mut self, event: Value) -> (String, Value, Outcome) {
        let (id, out) = self.invoke(event).await;
        match &out.message {
            FromSupervisor::Response { request_id } => assert_eq!(request_id, &id),
            other => panic!(
                "expected a Response, got {other:?}: {}; logs: {:?}",
                String::from_utf8_lossy(&out.body),
                self.logs
            ),
        }
        let v = out.json();
        (id, v, out)
    }

    /// Hang up and wait for the supervisor to finish.
    pub async fn close(self) -> Result<ExitReason, SupervisorError> {
        drop(self.control);
        tokio::time::timeout(FRAME_TIMEOUT, self.task)
            .await
            .expect("supervisor did not stop after the control channel closed")
            .unwrap()
    }

    /// Wait for the supervisor to finish by itself.
    pub async fn finished(self) -> Result<ExitReason, SupervisorError> {
        tokio::time::timeout(FRAME_TIMEOUT, self.task)
            .await
            .expect("supervisor did not stop")
            .unwrap()
    }
}

/// Whether process `pid` still exists (zombies count as gone for our purposes
/// only once reaped, which is what we want to check).
pub fn process_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}
