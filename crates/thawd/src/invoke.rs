//! The types an invocation passes between the HTTP API and the instance pools.

use bytes::Bytes;

pub use thaw_api::StartKind;

/// Per-phase timings of one invocation, milliseconds. Start phases are zero for
/// a warm start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseTimings {
    /// Creating the sandbox (namespaces, mounts, cgroup, privilege drop),
    /// including restoring the runtime when it came from a snapshot.
    pub sandbox_ms: f64,
    /// Of `sandbox_ms`: taking the instance's network namespace and address
    /// (0 without instance networking).
    pub network_ms: f64,
    /// Restoring the runtime from a snapshot (part of `sandbox_ms`; 0 for a
    /// cold start).
    pub restore_ms: f64,
    /// Of `restore_ms`: bringing the runtime's memory back.
    pub memory_ms: f64,
    /// The restored runtime's after-restore work (environment, reseeding,
    /// hooks), until it asked for its first invocation (part of
    /// `sandbox_ms`).
    pub hooks_ms: f64,
    /// Starting the language runtime, until the bootstrap begins loading the function.
    pub runtime_ms: f64,
    /// Function init: loading the handler module and its dependencies.
    pub init_ms: f64,
    /// The invocation itself, from delivery to the runtime until its response.
    pub invoke_ms: f64,
}

/// An invocation request, after the API layer validated it.
#[derive(Debug, Clone)]
pub struct InvokeInput {
    pub payload: Bytes,
    /// Decoded `X-Amz-Client-Context`, if any.
    pub client_context: Option<String>,
    /// Whether the caller asked for `LogType: Tail`.
    pub tail_logs: bool,
    /// The request id to use (an `Event` invocation's id is returned to the
    /// caller before the invocation runs); a new one when `None`.
    pub request_id: Option<String>,
    /// The ARN the caller invoked (an alias's, a version's); `None`: the
    /// function's ARN, qualified with its version for a published one.
    pub invoked_arn: Option<String>,
}

/// The result of an invocation that reached a function instance.
#[derive(Debug, Clone)]
pub struct InvokeOutcome {
    pub request_id: String,
    /// The response payload, or the error document when `function_error` is set.
    pub payload: Bytes,
    /// `Some("Unhandled")` when the function failed (Lambda's `X-Amz-Function-Error`).
    pub function_error: Option<String>,
    pub start: StartKind,
    pub timings: PhaseTimings,
    /// The last 4 KiB of the invocation's log, when `tail_logs` was requested.
    pub log_tail: Option<String>,
    /// For the first invocation of a restored instance: how its memory
    /// came back (`X-Thaw-Memory`).
    pub memory: Option<thaw_runtime::control::MemoryReport>,
}

/// Failures to run an invocation at all (not function errors).
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("Rate exceeded: all {0} instances of the function are busy")]
    TooManyRequests(usize),
    /// Admission control throttled the invocation at once (reserved or
    /// account concurrency in use; see [`crate::admission`]).
    #[error(transparent)]
    Throttled(#[from] crate::admission::Throttle),
    #[error("The daemon is shutting down")]
    ShuttingDown,
    #[error("Could not start an instance")]
    Sandbox(#[source] anyhow::Error),
    /// No address for a new instance: the host's instance subnet is used
    /// up (the message says so; it names no host path).
    #[error("{0}")]
    NoAddress(String),
    /// The instance died or its sandbox broke while running the invocation
    /// (not the function's own error: a killed supervisor or page server).
    #[error("The instance running the invocation was lost: {0}")]
    InstanceLost(String),
}
