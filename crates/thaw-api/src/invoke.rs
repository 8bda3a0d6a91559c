//! The Invoke call: its headers, its options, its limits, and thaw's timing
//! headers (`X-Thaw-Start`, `Server-Timing`).
//!
//! Owns: parsing and producing those header values and checking a payload
//! against Lambda's limits. Must not: run anything.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::error::{ErrorCode, LambdaError};

/// Request header: `RequestResponse` (default), `Event` or `DryRun`.
pub const INVOCATION_TYPE_HEADER: &str = "X-Amz-Invocation-Type";
/// Request header: `None` (default) or `Tail`.
pub const LOG_TYPE_HEADER: &str = "X-Amz-Log-Type";
/// Request header: base64 of a JSON client context.
pub const CLIENT_CONTEXT_HEADER: &str = "X-Amz-Client-Context";
/// Response header: `Unhandled` when the function failed.
pub const FUNCTION_ERROR_HEADER: &str = "X-Amz-Function-Error";
/// Response header: base64 of the last 4 KiB of the log (with `Tail`).
pub const LOG_RESULT_HEADER: &str = "X-Amz-Log-Result";
/// Response header: the version that ran (`$LATEST`).
pub const EXECUTED_VERSION_HEADER: &str = "X-Amz-Executed-Version";
/// Response header: the request id.
pub const REQUEST_ID_HEADER: &str = "X-Amzn-RequestId";
/// Response header (thaw): `cold` or `warm`.
pub const THAW_START_HEADER: &str = "X-Thaw-Start";
/// Response header: the phases of the invocation.
pub const SERVER_TIMING_HEADER: &str = "Server-Timing";
/// Response header (thaw), on the first invocation of a restored instance:
/// how its memory came back ([`MemoryInfo`]).
pub const THAW_MEMORY_HEADER: &str = "X-Thaw-Memory";

/// How a restored instance's memory came back, until its first invocation
/// ended (`X-Thaw-Memory: mode=working-set; working-set=used;
/// prefetched=412; prefetch-ms=0.9; faults=3; fault-pages=48;
/// bytes-read=1712128; recorded=0`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryInfo {
    /// `eager`, `lazy` or `working-set` (lazy, working set installed).
    pub mode: String,
    /// What became of the working set: `none`, `used`, `missing`, `invalid`.
    pub working_set: String,
    /// Pages the working set installed before the resume.
    pub prefetched_pages: u64,
    /// Reading, checking and installing the working set, ms.
    pub prefetch_ms: f64,
    /// Page faults served.
    pub faults: u64,
    /// Pages those faults copied.
    pub fault_pages: u64,
    /// Bytes read from the snapshot's files.
    pub bytes_read: u64,
    /// Whether this restore recorded the working set.
    pub recorded: bool,
}

impl std::fmt::Display for MemoryInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mode={}; working-set={}; prefetched={}; prefetch-ms={:.3}; faults={}; fault-pages={}; bytes-read={}; recorded={}",
            self.mode,
            self.working_set,
            self.prefetched_pages,
            self.prefetch_ms,
            self.faults,
            self.fault_pages,
            self.bytes_read,
            u8::from(self.recorded)
        )
    }
}

impl MemoryInfo {
    /// Parses an `X-Thaw-Memory` header; unknown keys are ignored.
    pub fn parse(header: &str) -> Option<MemoryInfo> {
        let mut m = MemoryInfo::default();
        for part in header.split(';') {
            let (k, v) = part.trim().split_once('=')?;
            match k {
                "mode" => m.mode = v.to_string(),
                "working-set" => m.working_set = v.to_string(),
                "prefetched" => m.prefetched_pages = v.parse().ok()?,
                "prefetch-ms" => m.prefetch_ms = v.parse().ok()?,
                "faults" => m.faults = v.parse().ok()?,
                "fault-pages" => m.fault_pages = v.parse().ok()?,
                "bytes-read" => m.bytes_read = v.parse().ok()?,
                "recorded" => m.recorded = v == "1",
                _ => {}
            }
        }
        (!m.mode.is_empty()).then_some(m)
    }
}

/// Largest payload of a synchronous invocation, bytes.
pub const MAX_SYNC_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;
/// Largest payload of an `Event` invocation, bytes.
pub const MAX_EVENT_PAYLOAD_BYTES: usize = 256 * 1024;
/// Largest `X-Amz-Client-Context` header (base64), bytes.
pub const MAX_CLIENT_CONTEXT_BYTES: usize = 3583;

/// How the caller wants the function invoked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InvocationType {
    /// Wait for the result.
    #[default]
    RequestResponse,
    /// Queue it and answer 202 at once.
    Event,
    /// Only check that the call would be allowed; answer 204.
    DryRun,
}

impl InvocationType {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            InvocationType::RequestResponse => "RequestResponse",
            InvocationType::Event => "Event",
            InvocationType::DryRun => "DryRun",
        }
    }

    /// Parse the header value.
    pub fn parse(s: &str) -> Result<InvocationType, LambdaError> {
        match s {
            "RequestResponse" => Ok(InvocationType::RequestResponse),
            "Event" => Ok(InvocationType::Event),
            "DryRun" => Ok(InvocationType::DryRun),
            other => Err(LambdaError::validation(
                other,
                "invocationType",
                "Member must satisfy enum value set: [Event, RequestResponse, DryRun]",
            )),
        }
    }

    /// Largest payload accepted for this kind of invocation, bytes.
    pub fn max_payload_bytes(self) -> usize {
        match self {
            InvocationType::Event => MAX_EVENT_PAYLOAD_BYTES,
            _ => MAX_SYNC_PAYLOAD_BYTES,
        }
    }
}

/// Parse `X-Amz-Log-Type`: `true` for `Tail`.
pub fn parse_log_type(s: &str) -> Result<bool, LambdaError> {
    match s {
        "None" => Ok(false),
        "Tail" => Ok(true),
        other => Err(LambdaError::validation(
            other,
            "logType",
            "Member must satisfy enum value set: [Tail, None]",
        )),
    }
}

/// `RequestTooLargeException` for a payload over the limit of `kind`.
pub fn payload_too_large(kind: InvocationType) -> LambdaError {
    let operation = match kind {
        InvocationType::Event => "InvokeAsync",
        _ => "InvokeFunction",
    };
    LambdaError::new(
        ErrorCode::RequestTooLarge,
        format!(
            "Request must be smaller than {} bytes for the {operation} operation",
            kind.max_payload_bytes()
        ),
    )
}

/// Check an invocation payload: within the size limit and valid JSON. An empty
/// payload is accepted (the function then receives `{}`).
pub fn validate_payload(payload: &[u8], kind: InvocationType) -> Result<(), LambdaError> {
    if payload.len() > kind.max_payload_bytes() {
        return Err(payload_too_large(kind));
    }
    if payload.is_empty() {
        return Ok(());
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(payload)
        .map(|_| ())
        .map_err(LambdaError::unparsable_body)
}

/// Decode `X-Amz-Client-Context` (base64 of a JSON document) into its JSON text.
pub fn decode_client_context(header: &str) -> Result<String, LambdaError> {
    let bad = |why: String| {
        LambdaError::new(
            ErrorCode::InvalidRequestContent,
            format!("Client context must be a valid Base64-encoded JSON object: {why}"),
        )
    };
    if header.len() > MAX_CLIENT_CONTEXT_BYTES {
        return Err(bad(format!(
            "it is longer than {MAX_CLIENT_CONTEXT_BYTES} bytes"
        )));
    }
    let bytes = STANDARD
        .decode(header.trim())
        .map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| bad(e.to_string()))?;
    serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| bad(e.to_string()))?;
    Ok(text)
}

/// How the instance that served an invocation was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// A new instance was started.
    Cold,
    /// An idle instance was reused.
    Warm,
    /// A new instance was restored from the function's snapshot.
    Restored,
}

impl StartKind {
    /// The `X-Thaw-Start` value.
    pub fn as_str(self) -> &'static str {
        match self {
            StartKind::Cold => "cold",
            StartKind::Warm => "warm",
            StartKind::Restored => "restored",
        }
    }

    /// Parse an `X-Thaw-Start` value.
    pub fn parse(s: &str) -> Option<StartKind> {
        match s.trim() {
            "cold" => Some(StartKind::Cold),
            "warm" => Some(StartKind::Warm),
            "restored" => Some(StartKind::Restored),
            _ => None,
        }
    }
}

impl fmt::Display for StartKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The phases of one invocation, milliseconds, as carried by `Server-Timing`:
/// `sandbox;dur=X, runtime;dur=X, init;dur=X, invoke;dur=X` and, for an
/// instance restored from a snapshot, `restore;dur=X` (part of `sandbox`),
/// `memory;dur=X` (part of `restore`) and `hooks;dur=X` (the runtime's
/// after-restore work: fresh environment and random state, after-restore
/// hooks; part of `sandbox`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerTiming {
    /// Creating the sandbox.
    pub sandbox_ms: f64,
    /// Taking the instance's network namespace and address (part of
    /// `sandbox_ms`; absent without instance networking).
    pub network_ms: f64,
    /// Starting the language runtime.
    pub runtime_ms: f64,
    /// The function's init.
    pub init_ms: f64,
    /// The invocation itself.
    pub invoke_ms: f64,
    /// Restoring the runtime from a snapshot (part of `sandbox_ms`).
    pub restore_ms: f64,
    /// Bringing its memory back (part of `restore_ms`).
    pub memory_ms: f64,
    /// The runtime's after-restore work (part of `sandbox_ms`).
    pub hooks_ms: f64,
}

impl ServerTiming {
    /// Parse a `Server-Timing` header; unknown metrics are ignored.
    pub fn parse(header: &str) -> Option<ServerTiming> {
        let mut t = ServerTiming::default();
        let mut seen = false;
        for metric in header.split(',') {
            let mut params = metric.split(';').map(str::trim);
            let name = params.next().unwrap_or_default();
            let dur = params
                .find_map(|p| p.strip_prefix("dur="))
                .and_then(|d| d.parse::<f64>().ok());
            let Some(dur) = dur else { continue };
            let slot = match name {
                "sandbox" => &mut t.sandbox_ms,
                "runtime" => &mut t.runtime_ms,
                "init" => &mut t.init_ms,
                "invoke" => &mut t.invoke_ms,
                "restore" => &mut t.restore_ms,
                "memory" => &mut t.memory_ms,
                "hooks" => &mut t.hooks_ms,
                "network" => &mut t.network_ms,
                _ => continue,
            };
            *slot = dur;
            seen = true;
        }
        seen.then_some(t)
    }

    /// Everything before the invocation itself (zero for a warm start).
    pub fn start_ms(&self) -> f64 {
        self.sandbox_ms + self.runtime_ms + self.init_ms
    }
}

impl fmt::Display for ServerTiming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sandbox;dur={:.3}, runtime;dur={:.3}, init;dur={:.3}, invoke;dur={:.3}",
            self.sandbox_ms, self.runtime_ms, self.init_ms, self.invoke_ms
        )?;
        if self.restore_ms > 0.0 {
            write!(
                f,
                ", restore;dur={:.3}, memory;dur={:.3}, hooks;dur={:.3}",
                self.restore_ms, self.memory_ms, self.hooks_ms
            )?;
        }
        if self.network_ms > 0.0 {
            write!(f, ", network;dur={:.3}", self.network_ms)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_info_round_trips() {
        let m = MemoryInfo {
            mode: "working-set".into(),
            working_set: "used".into(),
            prefetched_pages: 412,
            prefetch_ms: 0.875,
            faults: 3,
            fault_pages: 48,
            bytes_read: 1_712_128,
            recorded: false,
        };
        assert_eq!(MemoryInfo::parse(&m.to_string()), Some(m));
        assert_eq!(MemoryInfo::parse("garbage"), None);
        assert_eq!(MemoryInfo::parse("mode=lazy; faults=x"), None);
    }

    #[test]
    fn payload_rules() {
        let sync = InvocationType::RequestResponse;
        assert!(validate_payload(b"", sync).is_ok());
        assert!(validate_payload(b"{\"a\":1}", sync).is_ok());
        assert!(validate_payload(b"\"s\"", sync).is_ok());
        let e = validate_payload(b"{not json", sync).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequestContent);
        assert!(e
            .message
            .starts_with("Could not parse request body into json: "));
        let mut big = vec![b' '; MAX_SYNC_PAYLOAD_BYTES + 1];
        big[0] = b'1';
        assert_eq!(validate_payload(&big, sync).unwrap_err().status, 413);
        let mut ev = vec![b' '; MAX_EVENT_PAYLOAD_BYTES + 1];
        ev[0] = b'1';
        assert_eq!(
            validate_payload(&ev, InvocationType::Event)
                .unwrap_err()
                .status,
            413
        );
        assert!(validate_payload(&ev, sync).is_ok());
    }

    #[test]
    fn headers() {
        assert_eq!(InvocationType::parse("Event"), Ok(InvocationType::Event));
        assert_eq!(
            InvocationType::parse("Later").unwrap_err().code,
            ErrorCode::Validation
        );
        assert_eq!(parse_log_type("Tail"), Ok(true));
        assert!(parse_log_type("tail").is_err());
        let ctx = STANDARD.encode(br#"{"custom":{"k":"v"}}"#);
        assert_eq!(
            decode_client_context(&ctx).unwrap(),
            r#"{"custom":{"k":"v"}}"#
        );
        for bad in ["%%%".to_string(), STANDARD.encode(b"{nope")] {
            assert_eq!(
                decode_client_context(&bad).unwrap_err().code,
                ErrorCode::InvalidRequestContent
            );
        }
    }

    #[test]
    fn server_timing_round_trip() {
        let t = ServerTiming {
            sandbox_ms: 1.5,
            runtime_ms: 20.25,
            init_ms: 3.0,
            invoke_ms: 0.125,
            ..Default::default()
        };
        let h = t.to_string();
        assert_eq!(
            h,
            "sandbox;dur=1.500, runtime;dur=20.250, init;dur=3.000, invoke;dur=0.125"
        );
        assert_eq!(ServerTiming::parse(&h), Some(t));
        let restored = ServerTiming {
            sandbox_ms: 8.0,
            restore_ms: 6.5,
            memory_ms: 3.25,
            hooks_ms: 0.5,
            invoke_ms: 1.0,
            ..Default::default()
        };
        let h = restored.to_string();
        assert!(
            h.ends_with(", restore;dur=6.500, memory;dur=3.250, hooks;dur=0.500"),
            "{h}"
        );
        assert_eq!(ServerTiming::parse(&h), Some(restored));
        assert_eq!(ServerTiming::parse("db;desc=x"), None);
    }
}

/// What `POST /thaw/v1/functions/{name}/snapshot` reports: a snapshot of an
/// instance taken after one test invocation, from which new instances of
/// this revision are restored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotReport {
    /// The function.
    pub function: String,
    /// The code revision the snapshot belongs to.
    pub revision_id: String,
    /// Cold start of the instance that was checkpointed, milliseconds.
    pub cold_start_ms: f64,
    /// The test invocation, milliseconds.
    pub test_invoke_ms: f64,
    /// The checkpoint (freeze, capture, write), milliseconds.
    pub checkpoint_ms: f64,
    /// How long the instance was stopped, milliseconds.
    pub frozen_ms: f64,
    /// Threads of the runtime.
    pub threads: usize,
    /// Memory mappings.
    pub mappings: usize,
    /// Pages stored in the memory image.
    pub data_pages: u64,
    /// Populated zero pages (not stored).
    pub zero_pages: u64,
    /// Size of the snapshot on disk, bytes.
    pub size_bytes: u64,
    /// The runtime was snapshotted in the SnapStart handshake
    /// (`restore/next`, after its before-snapshot hooks) rather than idle
    /// in `/invocation/next`.
    #[serde(default)]
    pub handshake: bool,
    /// The test invocation ran before the snapshot (so what it loads and
    /// compiles is in it); otherwise it ran only on the validation restore.
    #[serde(default)]
    pub warmed_up: bool,
    /// The validation: an instance restored from the new snapshot served the
    /// test invocation; its first response, milliseconds (an init-only
    /// snapshot: its restore until the runtime asked for an invocation).
    #[serde(default)]
    pub validation_ms: f64,
    /// Set when the snapshot was taken right after init, with no test
    /// invocation, because the test invocation failed: why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_only: Option<String>,
}

/// Where a function's snapshot stands (`GET /thaw/v1/functions/{name}/snapshot`,
/// `GET /thaw/v1/snapshots`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotState {
    /// A build is waiting for its turn.
    Queued,
    /// A build is running (see `phase`).
    Building,
    /// New instances of this revision are restored from the snapshot.
    Ready,
    /// New instances are restored from a snapshot taken right after init,
    /// before any invocation, because the test invocation failed (see
    /// `error`): what the first invocation loads is not in it.
    InitOnly,
    /// The last build failed (see `error`); instances start cold.
    Failed,
    /// No snapshot and none being built; instances start cold.
    None,
}

/// A function's snapshot: its state, the running build's phase, the last
/// failure, and the report of the snapshot in use.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// The function.
    pub function: String,
    /// The code revision this status is about.
    pub revision_id: String,
    /// Where it stands.
    pub state: SnapshotState,
    /// While building: what the build is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// After a failure: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When ready: what the build measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<SnapshotReport>,
    /// When this status last changed (RFC 3339).
    pub updated: String,
}
