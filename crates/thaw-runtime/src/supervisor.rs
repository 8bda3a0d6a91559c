//! The supervisor: one runtime process, its Runtime API, its output and the
//! control channel to the daemon, tied together in one event loop.
//!
//! Owns: the order of what the daemon hears (`SandboxReady`, `InitDone`, the
//! runtime's output tagged with the invocation in flight and always sent before
//! that invocation's result, `Exited`), reaping children, and killing the
//! runtime when the daemon goes away. Must not: build the sandbox (the caller
//! has done that, or runs without one in tests) or interpret results.
//!
//! Only this loop writes to the control channel, so frames never interleave.
//! Runs on a current-thread runtime in `thaw-init`, but works on any runtime.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::unistd::{getpid, Pid};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::api::{self, ApiEvent, ApiMode, Delivery, RuntimeApi};
use crate::control::{
    read_frame, write_frame, ControlError, FromSupervisor, LogStream, MemoryReport, ResumePoint,
    RuntimeSpec, ToSupervisor,
};
use crate::error_chain;
use crate::process::{RuntimeOutput, RuntimeProcess};
use crate::restore::Adopted;

/// Error type reported as `InitError` when the runtime cannot even be started.
pub const INVALID_ENTRYPOINT: &str = "Runtime.InvalidEntrypoint";

/// How often exited children are looked for even without a SIGCHLD (a safety net;
/// SIGCHLD is the normal path).
const REAP_POLL: Duration = Duration::from_secs(1);

/// Why the supervisor stopped (normally).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The runtime process exited; `Exited` was sent to the daemon.
    RuntimeExited {
        /// Exit code, when it exited normally.
        code: Option<i32>,
        /// Signal number, when a signal killed it.
        signal: Option<i32>,
    },
    /// The runtime could not be started; `InitError` with
    /// [`INVALID_ENTRYPOINT`] was sent to the daemon.
    SpawnFailed,
    /// The daemon closed the control channel; the runtime was killed.
    ControlClosed,
}

/// Why the supervisor failed. Except for [`SupervisorError::Control`], the
/// daemon has been sent a `Fatal` frame with this error's chain.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The SIGCHLD handler could not be installed.
    #[error("Cannot watch for exited children")]
    Signal(#[source] std::io::Error),
    /// The Runtime API port could not be bound.
    #[error("Cannot bind the Runtime API on 127.0.0.1:{port}")]
    Bind {
        /// The port asked for (0: any).
        port: u16,
        #[source]
        source: std::io::Error,
    },
    /// `waitpid` failed with something other than "no children".
    #[error("Cannot reap child processes")]
    Reap(#[source] nix::errno::Errno),
    /// Polling the runtime's output pipes failed.
    #[error("Cannot wait for the runtime's output")]
    Output(#[source] std::io::Error),
    /// Reading or writing the control channel failed (not a clean close).
    #[error("Control channel failed")]
    Control(#[source] ControlError),
}

/// Aborts a task when dropped, so no task outlives the supervisor.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run the runtime described by `spec` and serve it until it exits or the
/// daemon closes `control`.
///
/// Binds the Runtime API on `127.0.0.1:{spec.api_port}` (port 0 picks a free
/// port; the runtime learns the real one from `AWS_LAMBDA_RUNTIME_API`), spawns
/// the runtime, sends `SandboxReady { setup_ms }`, then forwards invocations,
/// output and results until the runtime exits (`Exited` is sent). When this
/// process is PID 1 it reaps every child in its pid namespace; otherwise (tests
/// on the host) only the runtime. The runtime is killed on every way out other
/// than its own exit.
///
/// With `adopted`, the runtime was restored from a snapshot before the
/// sandbox dropped its privileges ([`crate::restore`]): it is served instead
/// of spawning one.
pub async fn run(
    spec: RuntimeSpec,
    control: UnixStream,
    setup_ms: f64,
    adopted: Option<Adopted>,
) -> Result<ExitReason, SupervisorError> {
    let (rd, mut wr) = control.into_split();
    // Whatever way `supervise` returns, its runtime process has been killed and
    // reaped by then (RuntimeProcess's Drop), unless it exited by itself.
    let result = match supervise(spec, rd, &mut wr, setup_ms, adopted).await {
        // The daemon hung up while we were writing to it: same as a close.
        Err(SupervisorError::Control(ControlError::Io(e)))
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(ExitReason::ControlClosed)
        }
        other => other,
    };
    match &result {
        Ok(reason) => tracing::info!(?reason, "supervisor done"),
        Err(SupervisorError::Control(e)) => {
            tracing::error!(error = %error_chain(e), "control channel failed");
        }
        Err(e) => {
            let message = error_chain(e);
            tracing::error!(error = %message, "supervisor failed");
            if let Err(we) = write_frame(&mut wr, &FromSupervisor::Fatal { message }, &[]).await {
                tracing::warn!(error = %error_chain(&we), "cannot report the failure");
            }
        }
    }
    result
}

async fn send(
    wr: &mut OwnedWriteHalf,
    message: &FromSupervisor,
    body: &[u8],
) -> Result<(), SupervisorError> {
    write_frame(wr, message, body)
        .await
        .map_err(SupervisorError::Control)
}

async fn send_output(
    wr: &mut OwnedWriteHalf,
    chunks: Vec<(LogStream, Vec<u8>)>,
    tag: &Option<String>,
) -> Result<(), SupervisorError> {
    for (stream, bytes) in chunks {
        let message = FromSupervisor::Log {
            request_id: tag.clone(),
            stream,
        };
        send(wr, &message, &bytes).await?;
    }
    Ok(())
}

/// Read control frames into a channel, so the event loop never holds a
/// half-read frame when it picks another branch (`read_frame` is not
/// cancel-safe). Stops after the first error.
async fn read_control(
    mut rd: OwnedReadHalf,
    tx: mpsc::Sender<Result<(ToSupervisor, Vec<u8>), ControlError>>,
) {
    loop {
        let frame = read_frame::<_, ToSupervisor>(&mut rd).await;
        let stop = frame.is_err();
        if tx.send(frame).await.is_err() || stop {
            return;
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn supervise(
    spec: RuntimeSpec,
    rd: OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    setup_ms: f64,
    adopted: Option<Adopted>,
) -> Result<ExitReason, SupervisorError> {
    let reap_all = getpid() == Pid::from_raw(1);
    // Watch SIGCHLD before there is a child, so no exit goes unnoticed (an
    // adopted runtime may already have exited: the reap poll finds it).
    let mut sigchld = signal(SignalKind::child()).map_err(SupervisorError::Signal)?;
    let bind_err = |source| SupervisorError::Bind {
        port: spec.api_port,
        source,
    };
    // Reported once, just before the first invocation's result.
    let mut memory = adopted
        .as_ref()
        .map(|a| (a.memory_report.clone(), a.probe.clone()));
    let restore_ms = adopted.as_ref().map_or(0.0, |a| a.restore_ms);
    let memory_ms = adopted.as_ref().map_or(0.0, |a| a.memory_ms);
    let mode = match &adopted {
        Some(a) if a.resume == ResumePoint::RestoreNext => {
            let body = serde_json::to_vec(&a.after_restore).unwrap_or_default();
            ApiMode::Restored {
                body: Bytes::from(body),
            }
        }
        Some(_) => ApiMode::Normal,
        None if spec.snapshot_run => ApiMode::SnapshotRun,
        None => ApiMode::Normal,
    };
    let (listener, spawned) = match adopted {
        Some(a) => {
            a.listener.set_nonblocking(true).map_err(bind_err)?;
            let listener = TcpListener::from_std(a.listener).map_err(bind_err)?;
            let output =
                RuntimeOutput::from_fds(a.stdout, a.stderr).map_err(SupervisorError::Output)?;
            (
                listener,
                Ok((RuntimeProcess::adopt(a.pid, reap_all), output)),
            )
        }
        None => {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, spec.api_port))
                .await
                .map_err(bind_err)?;
            let port = listener.local_addr().map_err(bind_err)?.port();
            let runtime_api = format!("127.0.0.1:{port}");
            (
                listener,
                RuntimeProcess::spawn(&spec, &runtime_api, reap_all),
            )
        }
    };
    let ready = FromSupervisor::SandboxReady {
        setup_ms,
        restore_ms,
        memory_ms,
    };

    let (mut process, mut output) = match spawned {
        Ok(p) => p,
        Err(e) => {
            let program = spec.argv.first().map(String::as_str).unwrap_or("");
            tracing::warn!(program, error = %e, "cannot start the runtime");
            send(wr, &ready, &[]).await?;
            let doc = serde_json::json!({
                "errorType": INVALID_ENTRYPOINT,
                "errorMessage": format!("Cannot start the runtime {program}: {e}"),
            });
            let message = FromSupervisor::InitError {
                error_type: INVALID_ENTRYPOINT.to_string(),
            };
            send(wr, &message, doc.to_string().as_bytes()).await?;
            return Ok(ExitReason::SpawnFailed);
        }
    };
    let spawned_at = Instant::now();
    tracing::info!(pid = %process.pid(), reap_all, restored = restore_ms > 0.0, "runtime started");
    send(wr, &ready, &[]).await?;

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (deliver, deliveries) = mpsc::unbounded_channel();
    let _server = AbortOnDrop(tokio::spawn(api::serve(
        listener,
        RuntimeApi::new(events_tx, deliveries, mode),
    )));
    let (control_tx, mut control) = mpsc::channel(1);
    let _reader = AbortOnDrop(tokio::spawn(read_control(rd, control_tx)));
    let mut poll = tokio::time::interval(REAP_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // The invocation output is attributed to: set when the daemon sends it,
    // cleared once its result has been forwarded.
    let mut tag: Option<String> = None;
    loop {
        tokio::select! {
            // Results first: once the runtime has answered, its answer must
            // reach the daemon even if the runtime exits right after.
            biased;
            Some(ev) = events.recv() => match ev {
                ApiEvent::FirstNext { function_init_ms } => {
                    let total = ms(spawned_at.elapsed());
                    let (runtime_ms, init_ms) = match function_init_ms {
                        Some(f) => ((total - f).max(0.0), f),
                        None => (0.0, total),
                    };
                    send(wr, &FromSupervisor::InitDone { runtime_ms, init_ms }, &[]).await?;
                }
                ApiEvent::Waiting => {
                    send(wr, &FromSupervisor::Waiting, &[]).await?;
                }
                ApiEvent::SnapshotPoint => {
                    // Output written by the before-snapshot hooks is logged
                    // before the checkpoint freezes the runtime.
                    send_output(wr, output.drain(), &tag).await?;
                    send(wr, &FromSupervisor::SnapshotPoint, &[]).await?;
                }
                ApiEvent::AfterRestoreDone { hooks_ms } => {
                    send(wr, &FromSupervisor::AfterRestoreDone { hooks_ms }, &[]).await?;
                }
                ApiEvent::Report { message, body, forwarded } => {
                    send_output(wr, output.drain(), &tag).await?;
                    if matches!(message, FromSupervisor::Response { .. } | FromSupervisor::Error { .. }) {
                        if let Some((report, probe)) = memory.take() {
                            let (report, pages) = memory_report(report, probe.as_deref());
                            send(wr, &FromSupervisor::Memory(report), &pages).await?;
                        }
                    }
                    send(wr, &message, &body).await?;
                    if matches!(message, FromSupervisor::Response { .. } | FromSupervisor::Error { .. }) {
                        tag = None;
                    }
                    // The handler may have given up waiting; nothing to do then.
                    let _ = forwarded.send(());
                }
            },
            frame = control.recv() => match frame {
                Some(Ok((ToSupervisor::Invoke(invocation), payload))) => {
                    tracing::debug!(request_id = %invocation.request_id, "invocation");
                    if let Some(prev) = tag.replace(invocation.request_id.clone()) {
                        tracing::warn!(request_id = %prev, "new invocation while one is in flight");
                    }
                    let delivery = Delivery { invocation, payload: Bytes::from(payload) };
                    if deliver.send(delivery).is_err() {
                        tracing::error!("Runtime API is gone; dropping the invocation");
                    }
                }
                Some(Ok((ToSupervisor::Start(_), _))) => {
                    tracing::warn!("ignoring a second Start frame");
                }
                Some(Ok((ToSupervisor::Resume, _))) => {
                    tracing::warn!("ignoring Resume: the runtime is running");
                }
                Some(Err(ControlError::Closed)) | None => {
                    tracing::info!("control channel closed; killing the runtime");
                    process.kill();
                    return Ok(ExitReason::ControlClosed);
                }
                Some(Err(e)) => {
                    process.kill();
                    return Err(SupervisorError::Control(e));
                }
            },
            r = output.readable(LogStream::Stdout), if output.is_open(LogStream::Stdout) => {
                r.map_err(SupervisorError::Output)?;
                if let Some(bytes) = output.read_ready(LogStream::Stdout) {
                    send_output(wr, vec![(LogStream::Stdout, bytes)], &tag).await?;
                }
            }
            r = output.readable(LogStream::Stderr), if output.is_open(LogStream::Stderr) => {
                r.map_err(SupervisorError::Output)?;
                if let Some(bytes) = output.read_ready(LogStream::Stderr) {
                    send_output(wr, vec![(LogStream::Stderr, bytes)], &tag).await?;
                }
            }
            Some(()) = sigchld.recv() => {
                if let Some(status) = process.reap().map_err(SupervisorError::Reap)? {
                    return finish(wr, &mut output, &tag, status.code, status.signal).await;
                }
            }
            _ = poll.tick() => {
                if let Some(status) = process.reap().map_err(SupervisorError::Reap)? {
                    return finish(wr, &mut output, &tag, status.code, status.signal).await;
                }
            }
        }
    }
}

/// Completes a restore's memory report with its page server's numbers and
/// recording (which stops here); the recording is the frame body.
fn memory_report(
    mut report: MemoryReport,
    probe: Option<&thaw_snapshot::lazy::Probe>,
) -> (MemoryReport, Vec<u8>) {
    let Some(probe) = probe else {
        return (report, Vec::new());
    };
    let pages = probe.take_recording();
    let stats = probe.stats();
    report.faults = stats.faults;
    report.fault_pages = stats.pages_copied;
    report.bytes_read += stats.bytes_read;
    let body = pages.iter().flat_map(|p| p.to_le_bytes()).collect();
    (report, body)
}

/// The runtime exited: forward its last output, then `Exited`.
async fn finish(
    wr: &mut OwnedWriteHalf,
    output: &mut RuntimeOutput,
    tag: &Option<String>,
    code: Option<i32>,
    signal: Option<i32>,
) -> Result<ExitReason, SupervisorError> {
    tracing::info!(?code, ?signal, "runtime exited");
    send_output(wr, output.drain(), tag).await?;
    // A runtime killed by its page server: say why first, so that the
    // daemon takes it for the platform's failure, not the function's.
    if let Some((integrity, message)) =
        crate::restore::page_server_failure(std::time::Duration::from_millis(500)).await
    {
        send(
            wr,
            &FromSupervisor::MemoryFailure { integrity, message },
            &[],
        )
        .await?;
    }
    send(wr, &FromSupervisor::Exited { code, signal }, &[]).await?;
    Ok(ExitReason::RuntimeExited { code, signal })
}
