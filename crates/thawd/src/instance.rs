//! One function instance: a `thaw-init` supervisor in its own sandbox and
//! cgroup, driven over the control channel.
//!
//! Owns: starting an instance (spawn, cgroup, Start frame, waiting for init),
//! running one invocation on it with a deadline, and tearing it down so that no
//! process, cgroup or mount is left. Must not: decide when instances are reused
//! or reaped (that is the pool's job).

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thaw_runtime::control::{
    read_frame, write_frame, AfterRestore, FromSupervisor, Invocation, LogStream, MemoryReport,
    RestoreSpec, ResumePoint, ToSupervisor,
};
use thaw_sandbox::{BindMount, CgroupParent, Limits};
use thaw_snapshot::checkpoint::CheckpointStats;
use thaw_snapshot::workingset::WORKING_SET_FILE;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::MemoryMode;
use crate::invoke::PhaseTimings;
use crate::logs::{LogRecord, LogStore};
use crate::registry::FunctionRecord;
use crate::runtimes::{start_spec, HostRuntimes, InstanceNetwork, SpecContext};

/// Init (loading the runtime and the function) may take at least this long,
/// whatever the function's own timeout (Lambda allows 10 s).
const MIN_INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a restore may take, after-restore hooks included: the hooks'
/// own 10 s limit (Lambda SnapStart's, enforced by our bootstraps, which
/// then report which hook overran) plus 2 s for the restore itself. It
/// also bounds runtime clients that do not time their hooks. A restore
/// that takes longer fails with `Runtime.RestoreTimeout`.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(12);

/// Where a snapshot is mounted (read-only) in a sandbox restoring from it.
pub const SNAPSHOT_MOUNT: &str = "/.thaw/snapshot";

/// How long a checkpoint waits for the runtime to become idle.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an instance could not be checkpointed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointFailure {
    /// The runtime did not ask for the next invocation in time.
    #[error("The runtime did not become idle within {} seconds", IDLE_TIMEOUT.as_secs())]
    NotIdle,
    /// The instance is gone.
    #[error("The instance is no longer running")]
    Gone,
    /// The engine refused or failed.
    #[error("{0}")]
    Engine(String),
    /// The runtime holds sockets a snapshot must not carry (each named).
    #[error("The snapshot would hold {0}: a snapshot carries no connection (it could not be restored, and every instance would share it). Close it in a before-snapshot hook and open it again in an after-restore hook; see docs/architecture.md, \"Connections and snapshots\"")]
    Connections(String),
    /// The runtime reported an error instead of reaching the snapshot
    /// point (a before-snapshot hook failed: `Runtime.BeforeSnapshotError`).
    #[error("{error_type}: {message}")]
    Runtime {
        /// The reported error type.
        error_type: String,
        /// The reported message.
        message: String,
    },
}

/// Where a snapshot run's runtime is, as far as the snapshot is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotRunState {
    /// Waiting in `/invocation/next` (for the test invocation, or idle in a
    /// runtime that does not speak the handshake).
    Waiting,
    /// Blocked in `/restore/next`: the snapshot point.
    AtSnapshotPoint,
}

impl InstanceContext {
    /// How restores of `f` bring memory back: its setting, else the
    /// daemon's `--memory-mode`.
    pub fn memory_mode(&self, f: &FunctionRecord) -> MemoryMode {
        match &f.platform.memory_mode {
            None => self.memory_mode,
            Some(v) => v.parse().unwrap_or_else(|e| {
                // Validated when set; a record edited by hand is not.
                tracing::warn!(function = %f.name, error = %e, "ignoring the function's memory mode");
                self.memory_mode
            }),
        }
    }
}

/// Refuses to snapshot a runtime holding any socket but its one Runtime
/// API connection (to 127.0.0.1:[`RUNTIME_API_PORT`]), naming each.
fn refuse_connections(runtime: nix::unistd::Pid) -> Result<(), CheckpointFailure> {
    use thaw_snapshot::sockets::SocketKind;
    let sockets = thaw_snapshot::sockets::sockets(runtime).map_err(|e| {
        CheckpointFailure::Engine(format!("cannot list the runtime's sockets: {e}"))
    })?;
    let mut api_seen = false;
    let mut refused = Vec::new();
    for s in sockets {
        let is_api = matches!(&s.kind, SocketKind::Tcp { remote, state, .. }
            if *state == "ESTABLISHED"
                && remote.port() == crate::runtimes::RUNTIME_API_PORT
                && s.is_loopback_only());
        if is_api && !api_seen {
            api_seen = true;
        } else {
            refused.push(s.to_string());
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(CheckpointFailure::Connections(refused.join("; ")))
    }
}

/// Where `f`'s instances may connect to: its `egress` setting (validated
/// when set; a record edited by hand into nonsense gets nowhere).
fn egress_policy(f: &FunctionRecord) -> thaw_net::EgressPolicy {
    match &f.platform.egress {
        None => thaw_net::EgressPolicy::AllowAll,
        Some(rules) => thaw_net::EgressPolicy::parse(rules).unwrap_or_else(|e| {
            tracing::warn!(function = %f.name, error = %e, "invalid egress setting: denying all egress");
            thaw_net::EgressPolicy::DenyAll
        }),
    }
}

/// Sets `name` in a runtime environment, replacing an existing value.
fn set_env(env: &mut Vec<(String, String)>, name: &str, value: &str) {
    env.retain(|(k, _)| k != name);
    env.push((name.to_string(), value.to_string()));
}

/// The only child of `pid` (`None` if it has none or several).
fn only_child(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    let mut it = text.split_whitespace();
    let first = it.next()?.parse().ok()?;
    it.next().is_none().then_some(first)
}

/// What every instance start needs from the daemon.
pub struct InstanceContext {
    pub init_binary: PathBuf,
    pub runtimes: HostRuntimes,
    pub bootstrap_dir: PathBuf,
    pub root_mountpoint: PathBuf,
    pub empty_dir: PathBuf,
    pub tmp_size_bytes: u64,
    pub pids_max: u64,
    /// The daemon's cgroup parent (instances', templates' and standby
    /// sandboxes' cgroups are its children).
    pub cgroups: Arc<CgroupParent>,
    /// What sandboxes are made with.
    pub backend: Arc<dyn crate::backend::SandboxBackend>,
    pub logs: Arc<LogStore>,
    /// Where function snapshots live: `<snapshots>/<name>/<revision>/`.
    pub snapshots: PathBuf,
    /// How restores bring memory back unless a function says otherwise
    /// (see [`crate::DaemonConfig::memory_mode`]).
    pub memory_mode: MemoryMode,
    /// See [`crate::DaemonConfig::fault_around`].
    pub fault_around: u32,
    /// See [`crate::DaemonConfig::snapshot_read_throttle`].
    pub snapshot_read_throttle: Option<thaw_snapshot::image::ReadThrottle>,
    /// Which environment variables are secrets (withheld from snapshot
    /// runs, delivered to restored instances after the restore).
    pub secrets: crate::secrets::SecretPolicy,
    /// See [`crate::DaemonConfig::snapshot_clock_offset`].
    pub snapshot_clock_offset: Duration,
    /// The snapshot store snapshots are published to and restored from
    /// (`None`: plain files only).
    pub store: Option<Arc<crate::snapstore::SnapshotStore>>,
    /// The host's templates: with them, standby sandboxes get their
    /// runtime cloned from the function revision's template instead of
    /// restoring the snapshot (`thaw serve --instances clone`, the
    /// default); `None` restores every instance.
    pub templates: Option<crate::templates::Templates>,
    /// Instances' network: each instance gets a namespace with an address
    /// of its own from it; `None`: loopback only.
    pub network: Option<thaw_net::Network>,
}

/// The cgroup limits of an instance (and of a template) of `f`.
fn limits_for(f: &FunctionRecord, ctx: &InstanceContext) -> Limits {
    Limits {
        memory_bytes: u64::from(f.memory_mb) * 1024 * 1024,
        // Lambda gives one vCPU per 1769 MB; we express that as a relative share.
        cpu_shares: (u64::from(f.memory_mb) * 1024 / 1769).max(2),
        pids_max: ctx.pids_max,
    }
}

/// Why an instance could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The function's own init failed (an error document for the caller).
    #[error("Function init failed: {error_type}")]
    Init {
        error_type: String,
        payload: Bytes,
        log: LogTail,
        timings: PhaseTimings,
    },
    /// The platform failed to build or run the sandbox.
    #[error("Cannot start instance: {0}")]
    Platform(String),
    /// No instance address is free (the instance subnet is used up).
    #[error("{0}")]
    NoAddress(String),
}

/// How one invocation on an instance ended.
#[derive(Debug)]
pub enum RunResult {
    /// The runtime posted a response.
    Response(Bytes),
    /// The runtime posted an error document (the instance stays usable).
    FunctionError { error_type: String, payload: Bytes },
    /// The deadline passed; the instance must be destroyed.
    Timeout,
    /// The runtime exited or was killed; `payload` is Lambda's error document.
    Crashed { error_type: String, payload: Bytes },
    /// The supervisor or control channel broke.
    Broken(String),
}

/// The most recent log lines of an instance start or an invocation, bounded to
/// what `LogType: Tail` can return, so that a function printing gigabytes
/// cannot grow the daemon's memory (everything is still in the log store).
#[derive(Debug, Default)]
pub struct LogTail {
    lines: std::collections::VecDeque<String>,
    bytes: usize,
}

impl LogTail {
    /// Bytes kept (Lambda's tail is the last 4 KiB).
    pub const MAX_BYTES: usize = 4096;

    /// Append a line, dropping the oldest lines beyond the bound.
    pub fn push(&mut self, mut line: String) {
        if line.len() > Self::MAX_BYTES {
            let mut cut = line.len() - Self::MAX_BYTES;
            while !line.is_char_boundary(cut) {
                cut += 1;
            }
            line = line.split_off(cut);
        }
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.bytes > Self::MAX_BYTES && self.lines.len() > 1 {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len() + 1;
            }
        }
    }

    /// The kept lines, oldest first.
    pub fn into_lines(self) -> Vec<String> {
        self.lines.into()
    }
}

/// What a snapshot run does between init and the snapshot point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SnapshotRun {
    /// One test invocation first (what it loads is in the snapshot).
    WithTestInvocation,
    /// Nothing: the snapshot is taken right after init.
    InitOnly,
}

enum Event {
    Frame(FromSupervisor, Vec<u8>),
    Log(Option<String>, String),
    Closed(String),
}

/// A live instance.
pub struct Instance {
    pub id: String,
    pub function: String,
    pub revision: String,
    pub last_used: Instant,
    /// `None` once destroyed.
    sandbox: Option<Box<dyn crate::backend::Sandbox>>,
    control: OwnedWriteHalf,
    events: mpsc::UnboundedReceiver<Event>,
    collecting: Arc<AtomicBool>,
    /// Cleared by the reader task once the runtime exited or the supervisor's
    /// channel closed: the instance can never serve again.
    alive: Arc<AtomicBool>,
    reader: JoinHandle<()>,
    /// How a restored instance's memory came back, and the pages its page
    /// server served until its first invocation ended (set by that
    /// invocation; see [`Instance::take_memory_report`]).
    memory: Option<(MemoryReport, Vec<u64>)>,
    /// The snapshot a restored instance came from.
    snapshot_dir: Option<PathBuf>,
    /// A standby sandbox waiting for a clone: the runtime's descriptors,
    /// `(number in the runtime, number in PID 1)`.
    clone_fds: Option<Vec<(i32, i32)>>,
    /// A standby sandbox's runtime, cloned from the template and held
    /// stopped by the templates' thread until [`Instance::resume`].
    pending: Option<(crate::templates::Templates, crate::templates::PendingId)>,
    /// A restore whose memory comes through the page socket from the
    /// snapshot store: its first failed read (the page server then kills
    /// the runtime; that is the platform's failure, not the function's).
    memory_fault: Option<crate::snapstore::MemoryFaultCell>,
    /// Its network namespace and address (released when it is dropped,
    /// after the sandbox).
    network: Option<thaw_net::Lease>,
}

impl Instance {
    /// Start a new instance of `f` and wait until its runtime asks for the first
    /// invocation. On any failure everything started so far is torn down.
    pub async fn start(
        f: &FunctionRecord,
        ctx: &InstanceContext,
    ) -> Result<(Instance, PhaseTimings), StartError> {
        Self::launch(f, ctx, None, None, None).await
    }

    /// Start a new instance of `f` to be snapshotted: its runtime runs with
    /// `AWS_LAMBDA_INITIALIZATION_TYPE=snap-start` (and, for thaw's
    /// bootstraps when `test_invoke`, `THAW_SNAPSHOT_TEST_INVOKE=1`: one
    /// test invocation before the handshake; without it the runtime goes
    /// from init straight to the handshake), and the Runtime API takes
    /// `GET /runtime/restore/next` as the snapshot point. Secrets are left
    /// out of its environment.
    pub async fn start_for_snapshot(
        f: &FunctionRecord,
        ctx: &InstanceContext,
        test_invoke: bool,
    ) -> Result<(Instance, PhaseTimings), StartError> {
        let snapshot_run = if test_invoke {
            SnapshotRun::WithTestInvocation
        } else {
            SnapshotRun::InitOnly
        };
        Self::launch(f, ctx, None, Some(snapshot_run), None).await
    }

    /// Start a new instance of `f` whose runtime is restored from the
    /// snapshot in `snapshot_dir` (taken with [`Instance::checkpoint`] from
    /// an instance of the same function revision) instead of starting and
    /// initialising it. Returns once the restored runtime asks for an
    /// invocation. On any failure everything started so far is torn down.
    pub async fn restore(
        f: &FunctionRecord,
        ctx: &InstanceContext,
        snapshot_dir: &Path,
    ) -> Result<(Instance, PhaseTimings), StartError> {
        Self::launch_restore(f, ctx, snapshot_dir, false).await
    }

    /// Build a *standby* instance of `f`: its sandbox is built and the
    /// restore from `snapshot_dir` prepared (snapshot opened and, for eager
    /// restores, read and verified; Runtime API bound), but the runtime is
    /// only restored by [`Instance::resume`]. Keeping one ready takes the
    /// sandbox build off the path of the invocation that needs a new
    /// instance.
    pub async fn standby(
        f: &FunctionRecord,
        ctx: &InstanceContext,
        snapshot_dir: &Path,
    ) -> Result<(Instance, PhaseTimings), StartError> {
        Self::launch_restore(f, ctx, snapshot_dir, true).await
    }

    /// A new instance of `f` whose runtime is cloned from the template of
    /// the snapshot in `snapshot_dir` (made first if needed): a standby
    /// sandbox, then [`Instance::resume`]. Needs `ctx.templates`.
    pub async fn clone_new(
        f: &FunctionRecord,
        ctx: &InstanceContext,
        snapshot_dir: &Path,
    ) -> Result<(Instance, PhaseTimings), StartError> {
        let t0 = Instant::now();
        let (mut inst, standby) = Self::launch_restore(f, ctx, snapshot_dir, true).await?;
        let mut t = inst.resume(f).await?;
        t.sandbox_ms = ms(t0.elapsed());
        // Here the clone's preparation was on the request's path too.
        t.restore_ms += standby.restore_ms;
        t.network_ms = standby.network_ms;
        Ok((inst, t))
    }

    /// Whether this standby instance's runtime will be cloned from a
    /// template (else restored).
    pub fn is_clone(&self) -> bool {
        self.pending.is_some()
    }

    /// Restore (or clone, in a clone's standby sandbox) the runtime of a
    /// standby instance and wait until it asks for an invocation. On
    /// failure the instance is destroyed.
    pub async fn resume(&mut self, f: &FunctionRecord) -> Result<PhaseTimings, StartError> {
        let t0 = Instant::now();
        self.collecting.store(true, Ordering::Relaxed);
        let cloned = match self.pending.take() {
            Some((templates, id)) => templates
                .release(id)
                .await
                .map(Some)
                .map_err(|e| StartError::Platform(format!("cannot start the clone: {e}"))),
            None => Ok(None),
        };
        let r = match cloned {
            Err(e) => Err(e),
            Ok(cloned) => match write_frame(&mut self.control, &ToSupervisor::Resume, &[]).await {
                Ok(()) => self.await_start(t0, f, false, true).await.map(|mut t| {
                    if let Some(c) = cloned {
                        t.restore_ms = c.clone_us as f64 / 1000.0;
                    }
                    t
                }),
                Err(e) => Err(StartError::Platform(format!(
                    "cannot send Resume: {}",
                    error_chain(&e)
                ))),
            },
        };
        self.collecting.store(false, Ordering::Relaxed);
        if r.is_err() {
            self.destroy().await;
        }
        r
    }

    /// Clones the runtime from its template into this standby sandbox,
    /// held stopped until [`Instance::resume`].
    async fn prepare_clone(
        &mut self,
        f: &FunctionRecord,
        ctx: &InstanceContext,
        fds: Vec<(i32, i32)>,
    ) -> Result<crate::templates::Cloned, StartError> {
        let platform = |what: String| StartError::Platform(what);
        let templates = ctx
            .templates
            .as_ref()
            .ok_or_else(|| platform("this daemon keeps no templates".into()))?;
        let dir = self
            .snapshot_dir
            .clone()
            .ok_or_else(|| platform("a clone without a snapshot".into()))?;
        let outer = self
            .sandbox
            .as_ref()
            .and_then(|s| s.supervisor_pid())
            .ok_or_else(|| platform("the sandbox is gone, or is not a process sandbox".into()))?;
        let pid1 = only_child(outer).ok_or_else(|| platform("the sandbox has no PID 1".into()))?;
        // The memory image: from the store if it is there (prepared here,
        // on the async runtime; read on the templates' thread).
        let meta =
            crate::snapshots::SnapshotMeta::read(&dir).map_err(|e| platform(e.to_string()))?;
        let source = match (&meta.store, &ctx.store) {
            (Some(blobs), Some(store)) if !dir.join(thaw_snapshot::image::MEMORY_FILE).exists() => {
                let m = store
                    .memory_manifest(&blobs.memory)
                    .await
                    .map_err(platform)?;
                Some(store.page_source(m))
            }
            _ => None,
        };
        let image: crate::templates::ImageSource = Box::new(move || {
            Ok(source.map(|s| Box::new(s) as Box<dyn thaw_snapshot::image::PageSource>))
        });
        let target = crate::templates::CloneTarget {
            pid1,
            fds,
            cgroup_procs: self
                .sandbox
                .as_ref()
                .map(|s| s.boundary_procs())
                .unwrap_or_default(),
            limits: limits_for(f, ctx),
        };
        let key = crate::templates::TemplateKey {
            function: f.instance_key(),
            revision: f.revision_id.clone(),
            dir,
        };
        let (id, cloned) = templates
            .prepare(key, image, target)
            .await
            .map_err(|e| platform(format!("cannot clone the runtime: {e}")))?;
        self.pending = Some((templates.clone(), id));
        Ok(cloned)
    }

    async fn launch_restore(
        f: &FunctionRecord,
        ctx: &InstanceContext,
        snapshot_dir: &Path,
        standby: bool,
    ) -> Result<(Instance, PhaseTimings), StartError> {
        let meta = crate::snapshots::SnapshotMeta::read(snapshot_dir)
            .map_err(|e| StartError::Platform(e.to_string()))?;
        let clone = standby && ctx.templates.is_some();
        let memory_fault = crate::snapstore::MemoryFaultCell::default();
        // A stored snapshot: the host needs its state and working set, and
        // the restore reads the memory image from the store (a clone's
        // sandbox reads only the state; its memory is the template's).
        let pages = match (&meta.store, &ctx.store) {
            (Some(blobs), Some(store)) if clone => {
                store
                    .materialize(snapshot_dir, blobs)
                    .await
                    .map_err(StartError::Platform)?;
                None
            }
            (Some(blobs), Some(store))
                if !snapshot_dir
                    .join(thaw_snapshot::image::MEMORY_FILE)
                    .exists() =>
            {
                let (ours, theirs) = StdUnixStream::pair()
                    .map_err(|e| StartError::Platform(format!("socketpair: {e}")))?;
                let ours = ours
                    .set_nonblocking(true)
                    .and_then(|()| UnixStream::from_std(ours))
                    .map_err(|e| StartError::Platform(format!("page socket: {e}")))?;
                // Fetching what the host lacks overlaps building the sandbox.
                store.serve_restore(
                    ours,
                    snapshot_dir.to_path_buf(),
                    blobs.clone(),
                    memory_fault.clone(),
                );
                Some(OwnedFd::from(theirs))
            }
            (Some(_), None)
                if !snapshot_dir
                    .join(thaw_snapshot::image::MEMORY_FILE)
                    .exists() =>
            {
                return Err(StartError::Platform(
                    "the snapshot is in the snapshot store, which this daemon does not use".into(),
                ))
            }
            _ => None,
        };
        let pages_from_store = pages.is_some();
        let (mut inst, mut t) = Self::launch(
            f,
            ctx,
            Some((snapshot_dir, meta.resume, standby)),
            None,
            pages,
        )
        .await?;
        if pages_from_store {
            inst.memory_fault = Some(memory_fault);
        }
        if let Some(fds) = inst.clone_fds.take() {
            // The clone is made now, while the sandbox waits as a standby.
            match inst.prepare_clone(f, ctx, fds).await {
                Ok(c) => {
                    t.restore_ms = (c.clone_us + c.template_us.unwrap_or(0)) as f64 / 1000.0;
                }
                Err(e) => {
                    inst.destroy().await;
                    return Err(e);
                }
            }
        }
        Ok((inst, t))
    }

    async fn launch(
        f: &FunctionRecord,
        ctx: &InstanceContext,
        restore: Option<(&Path, ResumePoint, bool)>,
        snapshot_run: Option<SnapshotRun>,
        pages: Option<OwnedFd>,
    ) -> Result<(Instance, PhaseTimings), StartError> {
        let standby = restore.is_some_and(|r| r.2);
        let t0 = Instant::now();
        let id = uuid::Uuid::new_v4().simple().to_string();
        // The instance's own network namespace and address.
        let lease = match &ctx.network {
            None => None,
            Some(net) => Some(net.lease(&egress_policy(f)).await.map_err(|e| match e {
                thaw_net::NetError::Exhausted(_) => StartError::NoAddress(format!(
                    "{e}; the operator can give the host a larger --instance-subnet"
                )),
                e => StartError::Platform(error_chain(&e)),
            })?),
        };
        let resolv_conf = ctx.network.as_ref().map(|n| n.resolv_conf());
        let mut spec = start_spec(
            f,
            &id,
            &SpecContext {
                runtimes: &ctx.runtimes,
                bootstrap_dir: &ctx.bootstrap_dir,
                root_mountpoint: &ctx.root_mountpoint,
                empty_dir: &ctx.empty_dir,
                tmp_size_bytes: ctx.tmp_size_bytes,
                network: lease
                    .as_ref()
                    .zip(resolv_conf.as_deref())
                    .map(|(l, resolv_conf)| InstanceNetwork {
                        address: l.address(),
                        resolv_conf,
                    }),
            },
        )
        .map_err(|e| StartError::Platform(e.to_string()))?;
        let (_, secret) = ctx.secrets.split(&f.environment);
        spec.runtime
            .env
            .retain(|(k, _)| k != crate::secrets::SECRETS_VARIABLE);
        if let Some(run) = snapshot_run {
            // Whatever the snapshotted process holds ends up in every copy
            // of the snapshot: no secrets there.
            spec.runtime.env.retain(|(k, _)| !secret.contains_key(k));
            spec.runtime.snapshot_run = true;
            spec.runtime.clock_offset_ns =
                i64::try_from(ctx.snapshot_clock_offset.as_nanos()).unwrap_or(i64::MAX / 2);
            set_env(
                &mut spec.runtime.env,
                "AWS_LAMBDA_INITIALIZATION_TYPE",
                "snap-start",
            );
            if run == SnapshotRun::WithTestInvocation {
                set_env(&mut spec.runtime.env, "THAW_SNAPSHOT_TEST_INVOKE", "1");
            }
        }
        if let Some((dir, resume, standby)) = restore {
            spec.sandbox.binds.push(BindMount {
                source: dir.to_path_buf(),
                target: SNAPSHOT_MOUNT.into(),
                required: true,
            });
            // What the restored runtime must see instead of what the
            // snapshotted one saw.
            let per_instance = ["THAW_INSTANCE_ID", "AWS_LAMBDA_LOG_STREAM_NAME"];
            let environment = spec
                .runtime
                .env
                .iter()
                .filter(|(k, _)| per_instance.contains(&k.as_str()))
                .cloned()
                .chain(secret)
                .collect();
            let mode = ctx.memory_mode(f);
            // (A stored snapshot's may still be on its way from the store.)
            let has_working_set = dir.join(WORKING_SET_FILE).exists()
                || (pages.is_some()
                    && crate::snapshots::SnapshotMeta::read(dir)
                        .is_ok_and(|m| m.store.is_some_and(|b| b.working_set.is_some())));
            spec.restore = Some(RestoreSpec {
                snapshot_dir: SNAPSHOT_MOUNT.into(),
                lazy: mode != MemoryMode::Eager,
                working_set: mode == MemoryMode::WorkingSet,
                // The first restore of a snapshot (the pipeline's
                // validation) records its working set.
                record: mode == MemoryMode::WorkingSet && !has_working_set,
                fault_around: ctx.fault_around,
                throttle: ctx.snapshot_read_throttle,
                page_socket: pages.is_some(),
                standby,
                clone: standby && ctx.templates.is_some(),
                resume,
                after_restore: AfterRestore {
                    instance_id: id.clone(),
                    environment,
                    reseed: f.platform.reseed != Some(false),
                },
            });
        }
        let network_ms = lease.as_ref().map_or(0.0, |l| ms(l.took));
        let limits = limits_for(f, ctx);
        let (sandbox, ours) = ctx
            .backend
            .launch(&id, &limits, pages, lease.as_ref().map(|l| l.netns()))
            .map_err(StartError::Platform)?;
        let stream = match ours
            .set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(ours))
        {
            Ok(s) => s,
            Err(e) => {
                sandbox.destroy().await;
                return Err(StartError::Platform(format!("control socket: {e}")));
            }
        };
        let (read_half, write_half) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let collecting = Arc::new(AtomicBool::new(true));
        let alive = Arc::new(AtomicBool::new(true));
        let reader = tokio::spawn(read_events(
            read_half,
            tx,
            ctx.logs.clone(),
            f.name.clone(),
            collecting.clone(),
            alive.clone(),
        ));
        let mut inst = Instance {
            id,
            function: f.name.clone(),
            revision: f.revision_id.clone(),
            last_used: Instant::now(),
            sandbox: Some(sandbox),
            control: write_half,
            events: rx,
            collecting,
            alive,
            reader,
            memory: None,
            snapshot_dir: restore.map(|(dir, _, _)| dir.to_path_buf()),
            clone_fds: None,
            pending: None,
            memory_fault: None,
            network: lease,
        };
        match inst.finish_start(t0, f, spec, standby).await {
            Ok(mut t) => {
                t.network_ms = network_ms;
                inst.collecting.store(false, Ordering::Relaxed);
                Ok((inst, t))
            }
            Err(e) => {
                inst.destroy().await;
                Err(e)
            }
        }
    }

    async fn finish_start(
        &mut self,
        t0: Instant,
        f: &FunctionRecord,
        spec: thaw_runtime::control::StartSpec,
        standby: bool,
    ) -> Result<PhaseTimings, StartError> {
        let restoring = spec.restore.is_some() && !standby;
        write_frame(&mut self.control, &ToSupervisor::Start(Box::new(spec)), &[])
            .await
            .map_err(|e| StartError::Platform(format!("cannot send Start: {}", error_chain(&e))))?;
        self.await_start(t0, f, standby, restoring).await
    }

    /// Waits for the sandbox and the runtime: until `InitDone` or
    /// `AfterRestoreDone` (or, with `standby`, until the sandbox reports
    /// `Standby`). A restore (`restoring`), after-restore hooks included,
    /// has [`RESTORE_TIMEOUT`], as in Lambda; an init has the function's
    /// timeout, at least [`MIN_INIT_TIMEOUT`].
    async fn await_start(
        &mut self,
        t0: Instant,
        f: &FunctionRecord,
        standby: bool,
        restoring: bool,
    ) -> Result<PhaseTimings, StartError> {
        let init_timeout = if restoring {
            RESTORE_TIMEOUT
        } else {
            MIN_INIT_TIMEOUT.max(Duration::from_secs(u64::from(f.timeout_s)))
        };
        let deadline = tokio::time::Instant::now() + init_timeout;
        let mut timings = PhaseTimings::default();
        let mut init_log = LogTail::default();
        let oom_before = self.oom_kills();
        loop {
            let ev = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => {
                    let (error_type, what) = if restoring {
                        (
                            "Runtime.RestoreTimeout",
                            "The restore and after-restore hooks",
                        )
                    } else {
                        ("Runtime.InitTimeout", "Init")
                    };
                    return Err(StartError::Init {
                        error_type: error_type.into(),
                        payload: error_doc(
                            error_type,
                            &format!(
                                "{what} did not complete within {} seconds",
                                init_timeout.as_secs()
                            ),
                        ),
                        log: init_log,
                        timings,
                    });
                }
                Ok(None) => return Err(StartError::Platform("control channel lost".into())),
                Ok(Some(ev)) => ev,
            };
            match ev {
                Event::Log(_, line) => init_log.push(line),
                Event::Frame(
                    FromSupervisor::SandboxReady {
                        restore_ms,
                        memory_ms,
                        ..
                    },
                    _,
                ) => {
                    timings.sandbox_ms = ms(t0.elapsed());
                    timings.restore_ms = restore_ms;
                    timings.memory_ms = memory_ms;
                }
                Event::Frame(FromSupervisor::AfterRestoreDone { hooks_ms }, _) => {
                    // A handshake restore: ready once the runtime's
                    // after-restore work is done.
                    timings.sandbox_ms = ms(t0.elapsed());
                    timings.hooks_ms = hooks_ms;
                    return Ok(timings);
                }
                Event::Frame(FromSupervisor::RestoreError { error_type }, body) => {
                    let payload = if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
                        Bytes::from(body)
                    } else {
                        error_doc(&error_type, &String::from_utf8_lossy(&body))
                    };
                    self.drain_logs(&mut init_log, Duration::from_millis(50))
                        .await;
                    return Err(StartError::Init {
                        error_type,
                        payload,
                        log: init_log,
                        timings,
                    });
                }
                Event::Frame(FromSupervisor::Waiting, _) => {}
                Event::Frame(FromSupervisor::MemoryFailure { integrity, message }, _) => {
                    // Its memory could not be served during the restore's
                    // own work: the platform's failure, not the function's.
                    self.record_memory_failure(integrity, message.clone());
                    return Err(StartError::Platform(format!(
                        "the restored runtime's memory could not be served: {message}"
                    )));
                }
                Event::Frame(FromSupervisor::Standby { clone_fds, .. }, _) if standby => {
                    timings.sandbox_ms = ms(t0.elapsed());
                    if !clone_fds.is_empty() {
                        self.clone_fds = Some(clone_fds);
                    }
                    return Ok(timings);
                }
                Event::Frame(
                    FromSupervisor::InitDone {
                        runtime_ms,
                        init_ms,
                    },
                    _,
                ) => {
                    timings.runtime_ms = runtime_ms;
                    timings.init_ms = init_ms;
                    return Ok(timings);
                }
                Event::Frame(FromSupervisor::InitError { error_type }, body) => {
                    let payload = if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
                        Bytes::from(body)
                    } else {
                        error_doc(&error_type, &String::from_utf8_lossy(&body))
                    };
                    // Give the runtime a moment to print its last words.
                    self.drain_logs(&mut init_log, Duration::from_millis(50))
                        .await;
                    return Err(StartError::Init {
                        error_type,
                        payload,
                        log: init_log,
                        timings,
                    });
                }
                Event::Frame(FromSupervisor::Exited { code, signal }, _) => {
                    self.drain_logs(&mut init_log, Duration::from_millis(50))
                        .await;
                    let (error_type, payload) = self.exit_error(None, code, signal, oom_before, f);
                    return Err(StartError::Init {
                        error_type,
                        payload,
                        log: init_log,
                        timings,
                    });
                }
                Event::Frame(FromSupervisor::Fatal { message }, _) => {
                    return Err(StartError::Platform(format!(
                        "sandbox setup failed: {message}"
                    )))
                }
                Event::Frame(other, _) => {
                    return Err(StartError::Platform(format!(
                        "unexpected message during init: {other:?}"
                    )))
                }
                Event::Closed(why) => {
                    if self.oom_kills() > oom_before {
                        let (error_type, payload) =
                            self.exit_error(None, None, Some(libc::SIGKILL), oom_before, f);
                        return Err(StartError::Init {
                            error_type,
                            payload,
                            log: init_log,
                            timings,
                        });
                    }
                    return Err(StartError::Platform(format!(
                        "supervisor died during init: {why}"
                    )));
                }
            }
        }
    }

    /// Run one invocation. Returns how it ended, the invocation's log lines, and
    /// the invoke duration in milliseconds.
    pub async fn run(
        &mut self,
        inv: Invocation,
        payload: &[u8],
        timeout: Duration,
        f: &FunctionRecord,
    ) -> (RunResult, LogTail, f64) {
        // Drop anything stale left in the channel while the instance was idle.
        while let Ok(ev) = self.events.try_recv() {
            if let Event::Closed(why) = ev {
                return (
                    RunResult::Broken(format!("instance died while idle: {why}")),
                    LogTail::default(),
                    0.0,
                );
            }
        }
        let request_id = inv.request_id.clone();
        let oom_before = self.oom_kills();
        self.collecting.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        let mut lines = LogTail::default();
        if let Err(e) = write_frame(&mut self.control, &ToSupervisor::Invoke(inv), payload).await {
            self.collecting.store(false, Ordering::Relaxed);
            return (
                RunResult::Broken(format!("cannot send invocation: {e}")),
                lines,
                0.0,
            );
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let result = loop {
            let ev = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => break RunResult::Timeout,
                Ok(None) => break RunResult::Broken("control channel lost".into()),
                Ok(Some(ev)) => ev,
            };
            match ev {
                Event::Log(rid, line) => {
                    if rid.as_deref() == Some(request_id.as_str()) {
                        lines.push(line);
                    }
                }
                Event::Frame(FromSupervisor::Response { request_id: rid }, body)
                    if rid == request_id =>
                {
                    break RunResult::Response(Bytes::from(body));
                }
                Event::Frame(
                    FromSupervisor::Error {
                        request_id: rid,
                        error_type,
                    },
                    body,
                ) if rid == request_id => {
                    let payload = if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
                        Bytes::from(body)
                    } else {
                        error_doc(&error_type, &String::from_utf8_lossy(&body))
                    };
                    break RunResult::FunctionError {
                        error_type,
                        payload,
                    };
                }
                Event::Frame(FromSupervisor::Exited { code, signal }, _) => {
                    self.drain_logs(&mut lines, Duration::from_millis(20)).await;
                    let (error_type, payload) =
                        self.exit_error(Some(&request_id), code, signal, oom_before, f);
                    break RunResult::Crashed {
                        error_type,
                        payload,
                    };
                }
                Event::Closed(why) => {
                    if self.oom_kills() > oom_before {
                        let (error_type, payload) = self.exit_error(
                            Some(&request_id),
                            None,
                            Some(libc::SIGKILL),
                            oom_before,
                            f,
                        );
                        break RunResult::Crashed {
                            error_type,
                            payload,
                        };
                    }
                    break RunResult::Broken(format!("supervisor died: {why}"));
                }
                Event::Frame(FromSupervisor::Fatal { message }, _) => {
                    break RunResult::Broken(format!("supervisor failed: {message}"));
                }
                Event::Frame(FromSupervisor::MemoryFailure { integrity, message }, _) => {
                    // The `Exited` that follows is the platform's failure.
                    self.record_memory_failure(integrity, message);
                }
                Event::Frame(FromSupervisor::Memory(report), body) => {
                    let pages = body
                        .chunks_exact(8)
                        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                        .collect();
                    self.memory = Some((report, pages));
                }
                Event::Frame(other, _) => {
                    tracing::debug!(instance = %self.id, ?other, "ignoring stale control message");
                }
            }
        };
        let invoke_ms = ms(t0.elapsed());
        self.collecting.store(false, Ordering::Relaxed);
        self.last_used = Instant::now();
        (result, lines, invoke_ms)
    }

    /// How this restored instance's memory came back and the pages served
    /// until its first invocation ended, once that invocation has run
    /// (`None` before, afterwards, and for instances started cold).
    pub fn take_memory_report(&mut self) -> Option<(MemoryReport, Vec<u64>)> {
        self.memory.take()
    }

    /// Records why this restored instance's memory could not be served, as
    /// its supervisor's page server reported it (a restore from local
    /// files; the store's page socket records its own).
    fn record_memory_failure(&mut self, integrity: bool, message: String) {
        let cell = self.memory_fault.get_or_insert_with(Default::default);
        let _ = cell.set(crate::snapstore::MemoryFault { message, integrity });
    }

    /// Why this restored instance's memory could not be served, if a read
    /// of it failed (its runtime was then killed by its page server).
    pub fn memory_failure(&self) -> Option<crate::snapstore::MemoryFault> {
        self.memory_fault.as_ref()?.get().cloned()
    }

    /// The snapshot directory a restored instance came from.
    pub fn snapshot_dir(&self) -> Option<&Path> {
        self.snapshot_dir.as_deref()
    }

    /// Waits for the next thing a snapshot run's runtime does that matters
    /// to the snapshot: ask for an invocation, reach the snapshot point
    /// (`restore/next`), or fail (`/init/error` from a before-snapshot hook:
    /// [`CheckpointFailure::Runtime`]).
    pub async fn snapshot_run_state(&mut self) -> Result<SnapshotRunState, CheckpointFailure> {
        let deadline = tokio::time::Instant::now() + IDLE_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Err(CheckpointFailure::NotIdle),
                Ok(None) | Ok(Some(Event::Closed(_))) => return Err(CheckpointFailure::Gone),
                Ok(Some(Event::Frame(FromSupervisor::Waiting, _))) => {
                    return Ok(SnapshotRunState::Waiting)
                }
                Ok(Some(Event::Frame(FromSupervisor::SnapshotPoint, _))) => {
                    return Ok(SnapshotRunState::AtSnapshotPoint)
                }
                Ok(Some(Event::Frame(FromSupervisor::InitError { error_type }, body))) => {
                    let message = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("errorMessage")?.as_str().map(str::to_string))
                        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                    return Err(CheckpointFailure::Runtime {
                        error_type,
                        message,
                    });
                }
                Ok(Some(Event::Frame(
                    FromSupervisor::Exited { .. } | FromSupervisor::Fatal { .. },
                    _,
                ))) => return Err(CheckpointFailure::Gone),
                Ok(Some(_)) => {}
            }
        }
    }

    /// Checkpoints the runtime of an instance that [`Self::snapshot_run_state`]
    /// found waiting or at its snapshot point into `dir`.
    pub async fn checkpoint(&mut self, dir: &Path) -> Result<CheckpointStats, CheckpointFailure> {
        let init = self
            .sandbox
            .as_ref()
            .and_then(|s| s.supervisor_pid())
            .ok_or(CheckpointFailure::Gone)?;
        let pid1 = only_child(init).ok_or(CheckpointFailure::Gone)?;
        let runtime = only_child(pid1).ok_or(CheckpointFailure::Gone)?;
        let dir = dir.to_path_buf();
        let runtime = nix::unistd::Pid::from_raw(runtime as i32);
        refuse_connections(runtime)?;
        tokio::task::spawn_blocking(move || thaw_snapshot::checkpoint::checkpoint(runtime, &dir))
            .await
            .map_err(|e| CheckpointFailure::Engine(e.to_string()))?
            .map_err(|e| CheckpointFailure::Engine(error_chain(&e)))
    }

    /// Whether nothing has reported the instance dead (cheap, for the reaper).
    pub fn looks_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Whether an idle instance can take an invocation: its runtime has not
    /// exited, its channel is open and its supervisor process still runs.
    pub fn is_usable(&mut self) -> bool {
        self.looks_alive() && self.sandbox.as_mut().is_some_and(|s| s.is_running())
    }

    /// The host memory the instance's sandbox is charged for now, when the
    /// backend can tell.
    pub fn memory_bytes(&self) -> Option<u64> {
        self.sandbox.as_ref().and_then(|s| s.memory_bytes())
    }

    /// The most host memory the instance's sandbox was ever charged for,
    /// when the backend can tell (Lambda's `Max Memory Used`).
    pub fn memory_peak_bytes(&self) -> Option<u64> {
        self.sandbox.as_ref().and_then(|s| s.memory_peak_bytes())
    }

    fn oom_kills(&self) -> u64 {
        self.sandbox.as_ref().map(|s| s.oom_kills()).unwrap_or(0)
    }

    async fn drain_logs(&mut self, into: &mut LogTail, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        while let Ok(Some(ev)) = tokio::time::timeout_at(until, self.events.recv()).await {
            match ev {
                Event::Log(_, line) => into.push(line),
                Event::Closed(_) => break,
                Event::Frame(..) => {}
            }
        }
    }

    fn exit_error(
        &self,
        request_id: Option<&str>,
        code: Option<i32>,
        signal: Option<i32>,
        oom_before: u64,
        f: &FunctionRecord,
    ) -> (String, Bytes) {
        let how = match (code, signal) {
            (_, Some(s)) if s == libc::SIGKILL => "signal: killed".to_string(),
            (_, Some(s)) => format!("signal: {s}"),
            (Some(c), None) => format!("exit status {c}"),
            (None, None) => "unknown exit".to_string(),
        };
        let prefix = request_id
            .map(|r| format!("RequestId: {r} Error: "))
            .unwrap_or_default();
        if self.oom_kills() > oom_before {
            let msg = format!(
                "{prefix}Runtime exited with error: {how} (out of memory: the function exceeded its memory size of {} MB)",
                f.memory_mb
            );
            (
                "Runtime.OutOfMemory".into(),
                error_doc("Runtime.OutOfMemory", &msg),
            )
        } else {
            let msg = format!("{prefix}Runtime exited with error: {how}");
            (
                "Runtime.ExitError".into(),
                error_doc("Runtime.ExitError", &msg),
            )
        }
    }

    /// Kill the whole sandbox and remove its boundary. Idempotent.
    pub async fn destroy(&mut self) {
        if let Some((templates, id)) = self.pending.take() {
            templates.discard(id);
        }
        self.reader.abort();
        if let Some(sandbox) = self.sandbox.take() {
            sandbox.destroy().await;
        }
        // Its namespace's link and address go once nothing runs there.
        self.network = None;
    }

    /// The instance's own address, when it has a network.
    pub fn address(&self) -> Option<std::net::Ipv4Addr> {
        self.network.as_ref().map(|l| l.address())
    }
}

impl Drop for Instance {
    /// A safety net for an instance dropped without [`Instance::destroy`] (a
    /// cancelled or panicking task): kill the sandbox and remove its boundary.
    fn drop(&mut self) {
        let Some(sandbox) = self.sandbox.take() else {
            return;
        };
        tracing::warn!(instance = %self.id, "instance dropped without destroy; cleaning up");
        if let Some((templates, id)) = self.pending.take() {
            templates.discard(id);
        }
        self.reader.abort();
        sandbox.destroy_now();
    }
}

/// Read control frames; store log output; forward everything the instance needs.
async fn read_events(
    mut rd: tokio::net::unix::OwnedReadHalf,
    tx: mpsc::UnboundedSender<Event>,
    logs: Arc<LogStore>,
    function: String,
    collecting: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
) {
    let mut partial: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    loop {
        match read_frame::<_, FromSupervisor>(&mut rd).await {
            Ok((FromSupervisor::Log { request_id, stream }, body)) => {
                let (idx, name) = match stream {
                    LogStream::Stdout => (0, "stdout"),
                    LogStream::Stderr => (1, "stderr"),
                };
                let buf = &mut partial[idx];
                buf.extend_from_slice(&body);
                let mut records = Vec::new();
                while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    records.push(LogRecord::now(request_id.clone(), name, text));
                }
                // Never hold an unbounded partial line.
                if buf.len() > 64 * 1024 {
                    let text = String::from_utf8_lossy(buf).into_owned();
                    buf.clear();
                    records.push(LogRecord::now(request_id.clone(), name, text));
                }
                logs.append(&function, &records);
                if collecting.load(Ordering::Relaxed) {
                    for r in records {
                        let _ = tx.send(Event::Log(r.request_id, r.line));
                    }
                }
            }
            Ok((msg, body)) => {
                if matches!(
                    msg,
                    FromSupervisor::Exited { .. } | FromSupervisor::Fatal { .. }
                ) {
                    alive.store(false, Ordering::SeqCst);
                }
                if tx.send(Event::Frame(msg, body)).is_err() {
                    return;
                }
            }
            Err(e) => {
                alive.store(false, Ordering::SeqCst);
                let _ = tx.send(Event::Closed(error_chain(&e)));
                return;
            }
        }
    }
}

/// Lambda's error document.
pub fn error_doc(error_type: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "errorType": error_type, "errorMessage": message }).to_string())
}

/// Milliseconds of a duration as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub use thaw_runtime::error_chain;

#[cfg(test)]
mod tests {
    use super::LogTail;

    #[test]
    fn log_tail_stays_bounded_and_keeps_the_newest_lines() {
        let mut t = LogTail::default();
        for i in 0..100_000 {
            t.push(format!("line {i} {}", "x".repeat(50)));
        }
        t.push("é".repeat(5000));
        let lines = t.into_lines();
        let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
        assert!(bytes <= LogTail::MAX_BYTES + 1, "{bytes}");
        assert_eq!(lines.len(), 1, "an oversized line keeps only its end");
        assert!(lines[0].chars().all(|c| c == 'é'));

        let mut t = LogTail::default();
        for i in 0..1000 {
            t.push(format!("line {i}"));
        }
        let lines = t.into_lines();
        assert_eq!(lines.last().map(String::as_str), Some("line 999"));
        assert!(lines.len() < 1000);
    }
}
