//! The control channel between the daemon and the supervisor inside a sandbox.
//!
//! The daemon creates a `socketpair(AF_UNIX, SOCK_STREAM)` and hands one end to
//! `thaw-init` as file descriptor [`CONTROL_FD`]. Messages are framed as
//!
//! ```text
//! +----------------+-----------------+----------------------+-------------+
//! | u32 LE: len    | u32 LE: hdr_len | header (JSON, hdr_len)| body bytes  |
//! +----------------+-----------------+----------------------+-------------+
//!   len = 4 + hdr_len + body.len()
//! ```
//!
//! The header is a [`ToSupervisor`] or [`FromSupervisor`] message; the body carries
//! opaque bytes (payloads, responses, log output) so they never pass through JSON
//! string escaping. A frame larger than [`MAX_FRAME`] is a protocol error: the peer
//! is treated as broken, never trusted.
//!
//! This module owns the wire format only; it knows nothing of HTTP or processes.

use serde::{Deserialize, Serialize};
use thaw_sandbox::SandboxSpec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// File descriptor number of the control socket in `thaw-init`.
pub const CONTROL_FD: i32 = 3;

/// Largest frame accepted: room for a 6 MiB payload plus headers, with margin.
pub const MAX_FRAME: u32 = 16 * 1024 * 1024;

/// What the runtime process inside the sandbox should be.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuntimeSpec {
    /// argv of the runtime process; `argv[0]` is an absolute path inside the sandbox.
    pub argv: Vec<String>,
    /// The complete environment of the runtime process (the supervisor adds
    /// `AWS_LAMBDA_RUNTIME_API` itself).
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox (Lambda uses `/var/task`).
    pub cwd: String,
    /// TCP port of the Runtime API on the sandbox's loopback.
    pub api_port: u16,
    /// This instance is started to be snapshotted: the Runtime API accepts
    /// `GET /runtime/restore/next` (the SnapStart handshake) as the
    /// snapshot point and reports it as [`FromSupervisor::SnapshotPoint`].
    #[serde(default)]
    pub snapshot_run: bool,
    /// How far ahead of the host's the runtime's CLOCK_MONOTONIC and
    /// CLOCK_BOOTTIME run (its time namespace's offsets), nanoseconds. 0 in
    /// normal operation; tests use it to stand for a snapshot taken on a
    /// host that had been up longer.
    #[serde(default)]
    pub clock_offset_ns: i64,
}

/// Where a snapshotted runtime was waiting, which is also the request it
/// gets an answer to once it is restored.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ResumePoint {
    /// In `GET /runtime/restore/next` (the SnapStart handshake): once
    /// restored it gets `200` with [`AfterRestore`] as the body, runs its
    /// after-restore hooks and asks for its first invocation.
    RestoreNext,
    /// Idle in `GET /runtime/invocation/next` (a runtime that does not
    /// speak the handshake): once restored it gets its first invocation.
    #[default]
    InvocationNext,
}

/// What a restored runtime learns before its first invocation: the body of
/// its `GET /runtime/restore/next` answer (a thaw extension; clients that do
/// not know it ignore the body, as Lambda's is empty).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AfterRestore {
    /// This instance's id (also in `environment` as `THAW_INSTANCE_ID`).
    pub instance_id: String,
    /// Variables to set before any user code runs: per-instance values and
    /// the secrets that were withheld from the snapshot run.
    pub environment: Vec<(String, String)>,
    /// Reseed the runtime's random generators (Python `random`, Node.js
    /// `Math.random` and its crypto caches). Off only to prove that it
    /// matters.
    pub reseed: bool,
}

impl std::fmt::Debug for AfterRestore {
    // Never print values: they include secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.environment.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("AfterRestore")
            .field("instance_id", &self.instance_id)
            .field("environment", &names)
            .field("reseed", &self.reseed)
            .finish()
    }
}

/// The first frame the daemon sends: what to build and what to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartSpec {
    pub sandbox: SandboxSpec,
    pub runtime: RuntimeSpec,
    /// Restore the runtime from a snapshot instead of starting it.
    #[serde(default)]
    pub restore: Option<RestoreSpec>,
}

/// Where the snapshot to restore the runtime from is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoreSpec {
    /// The snapshot directory inside the sandbox (bind-mounted read-only).
    pub snapshot_dir: String,
    /// Serve memory lazily from the snapshot (page server in the
    /// supervisor) instead of copying it in before the runtime resumes.
    #[serde(default)]
    pub lazy: bool,
    /// Build the sandbox and prepare the restore (snapshot opened and, in
    /// eager mode, read and verified; Runtime API bound), report
    /// `Standby`, and restore only when `Resume` arrives.
    #[serde(default)]
    pub standby: bool,
    /// With `standby`: the daemon clones the runtime from its template of
    /// this snapshot into the sandbox (as the snapshot's pid, a child of
    /// PID 1) before it sends `Resume`; the sandbox only prepares the
    /// runtime's connections (reported in `Standby`) and reads nothing
    /// but the snapshot's state.
    #[serde(default)]
    pub clone: bool,
    /// Where the runtime was waiting when it was snapshotted.
    #[serde(default)]
    pub resume: ResumePoint,
    /// Delivered to the runtime after the restore (with
    /// [`ResumePoint::RestoreNext`]).
    #[serde(default)]
    pub after_restore: AfterRestore,
    /// Lazy: install the snapshot's working set (`workingset.thaw` in the
    /// snapshot directory) before the runtime resumes, if it has a valid
    /// one; a missing or invalid one is reported and the restore goes on
    /// without it.
    #[serde(default)]
    pub working_set: bool,
    /// Lazy: record the working set: serve one page per fault (so the
    /// recording is exact) until the first invocation completes.
    #[serde(default)]
    pub record: bool,
    /// Lazy: pages copied per fault (0: the engine's default).
    #[serde(default)]
    pub fault_around: u32,
    /// Read the snapshot through a slower path (benchmarks).
    #[serde(default)]
    pub throttle: Option<thaw_snapshot::image::ReadThrottle>,
    /// The memory image is not in the snapshot directory: it is read from
    /// the daemon's snapshot store through the socket at [`PAGES_FD`]
    /// ([`pages`] protocol).
    #[serde(default)]
    pub page_socket: bool,
}

/// Descriptor of the socket a restore reads its memory image through when
/// [`RestoreSpec::page_socket`] is set (the daemon's end serves it from the
/// snapshot store).
pub const PAGES_FD: i32 = 4;

/// File descriptor number in `thaw-init` of the network namespace the
/// sandbox joins, when the daemon gives instances a network
/// ([`thaw_sandbox::SandboxSpec::join_net_fd`] then names it).
pub const NETNS_FD: i32 = 5;

/// The page socket's protocol: the supervisor asks for a byte range of the
/// memory image, the daemon answers with exactly those bytes (already
/// authenticated by the store; the engine checks them again against the
/// state's chunk hashes) or an error message.
///
/// Request: offset (u64 LE), length (u32 LE); offset [`pages::LENGTH`]
/// with length 0 asks for the image's length. Answer: status byte (0 ok,
/// 1 error), payload length (u32 LE), payload (the bytes; the length as a
/// u64 LE; or the error text).
pub mod pages {
    use std::io::{self, Read, Write};

    /// The offset that asks for the image's length.
    pub const LENGTH: u64 = u64::MAX;
    /// Largest range one request may ask for.
    pub const MAX_REQUEST: u32 = 64 << 20;

    /// Sends a request.
    pub fn request<W: Write>(w: &mut W, offset: u64, len: u32) -> io::Result<()> {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&offset.to_le_bytes());
        b[8..].copy_from_slice(&len.to_le_bytes());
        w.write_all(&b)
    }

    /// Reads an answer of `expect` bytes into `buf`; an error answer
    /// becomes an `io::Error` carrying the daemon's message.
    pub fn read_answer<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<()> {
        let mut h = [0u8; 5];
        r.read_exact(&mut h)?;
        let n = u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize;
        match h[0] {
            0 if n == buf.len() => r.read_exact(buf),
            0 => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("page socket answered {n} bytes for {}", buf.len()),
            )),
            _ => {
                let mut msg = vec![0u8; n.min(64 << 10)];
                r.read_exact(&mut msg)?;
                Err(io::Error::other(format!(
                    "the snapshot store cannot serve the range: {}",
                    String::from_utf8_lossy(&msg)
                )))
            }
        }
    }

    /// Parses a request (the daemon's side).
    pub fn parse_request(b: &[u8; 12]) -> (u64, u32) {
        let mut o = [0u8; 8];
        o.copy_from_slice(&b[..8]);
        (
            u64::from_le_bytes(o),
            u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        )
    }

    /// Encodes an answer (the daemon's side).
    pub fn answer(result: Result<&[u8], &str>) -> Vec<u8> {
        let (status, payload) = match result {
            Ok(b) => (0u8, b),
            Err(m) => (1u8, m.as_bytes()),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(status);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }
}

/// How a restored runtime's memory came back, as of its first invocation's
/// end: sent just before that invocation's result. The frame's body holds
/// the page addresses the page server served the runtime from the resume
/// until then, in fault order (u64 little-endian each): the working set of
/// a recording restore, the misses of a prefetching one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemoryReport {
    /// Served lazily (else copied in eagerly).
    pub lazy: bool,
    /// What became of the working set: `none` (not asked for), `used`,
    /// `missing` or `invalid`; `clone` when the runtime was cloned from a
    /// template (its memory was all in place, shared copy-on-write).
    pub working_set: String,
    /// Why an invalid working set was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_set_error: Option<String>,
    /// Pages the working set installed before the resume.
    pub prefetched_pages: u64,
    /// Microseconds installing them took (reading included).
    pub prefetch_us: u64,
    /// Page faults served so far.
    pub faults: u64,
    /// Pages copied by those faults.
    pub fault_pages: u64,
    /// Bytes read from the snapshot's files, restore and faults together.
    pub bytes_read: u64,
    /// Whether this was a recording restore.
    pub recorded: bool,
}

/// One invocation handed to the runtime. The body of the frame is the event payload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Invocation {
    pub request_id: String,
    /// Deadline as milliseconds since the Unix epoch (`Lambda-Runtime-Deadline-Ms`).
    pub deadline_ms: u64,
    pub invoked_function_arn: String,
    pub trace_id: Option<String>,
    /// Base64-decoded client context JSON, if the caller sent one.
    pub client_context: Option<String>,
    pub cognito_identity: Option<String>,
}

/// Daemon -> supervisor messages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type")]
pub enum ToSupervisor {
    /// First and only once: build the sandbox and start the runtime.
    Start(Box<StartSpec>),
    /// Deliver an invocation to the runtime's pending `/invocation/next`.
    Invoke(Invocation),
    /// A standby sandbox (`RestoreSpec::standby`): restore the runtime now.
    Resume,
}

/// Which output stream of the runtime a log chunk came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// Supervisor -> daemon messages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum FromSupervisor {
    /// The sandbox is built (namespaces, mounts, privileges dropped) and the
    /// runtime process has been spawned. `host_pid` is not known inside the pid
    /// namespace; the daemon learns it from the process it spawned.
    SandboxReady {
        /// Milliseconds spent building the sandbox inside `thaw-init`
        /// (including restoring the runtime from a snapshot, if asked).
        setup_ms: f64,
        /// Milliseconds of that spent restoring the runtime (0 when started).
        #[serde(default)]
        restore_ms: f64,
        /// Of `restore_ms`: bringing the runtime's memory back (all of it
        /// when eager; what the restorer itself touches when lazy).
        #[serde(default)]
        memory_ms: f64,
    },
    /// The runtime made its first `GET /invocation/next`: init is complete.
    /// `runtime_ms` is the time from spawning the runtime until its bootstrap
    /// began loading the function (0 when the runtime does not report it), and
    /// `init_ms` the rest, until the first `/next`.
    InitDone { runtime_ms: f64, init_ms: f64 },
    /// A standby sandbox is built and its restore prepared; it waits for
    /// `Resume`.
    Standby {
        /// Milliseconds spent building and preparing it.
        setup_ms: f64,
        /// For a clone: the descriptors the runtime gets, as `(number in
        /// the runtime, number in this PID 1)` (the daemon takes them with
        /// `pidfd_getfd`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        clone_fds: Vec<(i32, i32)>,
    },
    /// The runtime called `/invocation/next` and waits for an invocation:
    /// it is idle (a checkpoint may be taken now).
    Waiting,
    /// In a snapshot run: the runtime called `GET /runtime/restore/next`
    /// (its before-snapshot hooks have run) and is blocked there. A
    /// checkpoint may be taken now.
    SnapshotPoint,
    /// A restored runtime finished its after-restore work (environment,
    /// reseeding, hooks) and asked for its first invocation.
    AfterRestoreDone {
        /// From answering `restore/next` to the first `/invocation/next`.
        hooks_ms: f64,
    },
    /// A restored runtime reported `/runtime/restore/error` (an
    /// after-restore hook failed). Body: the error JSON.
    RestoreError { error_type: String },
    /// The runtime reported `/runtime/init/error`. Body: the error JSON.
    InitError { error_type: String },
    /// `/runtime/invocation/{id}/response`. Body: the response payload.
    Response { request_id: String },
    /// `/runtime/invocation/{id}/error`. Body: the error JSON.
    Error {
        request_id: String,
        error_type: String,
    },
    /// Output of the runtime, tagged with the invocation it belongs to (the one in
    /// flight when it was read), if any. Body: raw bytes.
    Log {
        request_id: Option<String>,
        stream: LogStream,
    },
    /// A lazily restored runtime's page server could not serve its memory
    /// and killed it (sent right before `Exited`). `integrity`: the
    /// snapshot's bytes failed their checks (it must be built again), as
    /// opposed to a read or a userfaultfd request that failed.
    MemoryFailure { integrity: bool, message: String },
    /// The runtime process exited (the supervisor exits right after).
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Setup or supervision failed; the message says which step and why.
    Fatal { message: String },
    /// How the restored runtime's memory came back (see [`MemoryReport`]).
    Memory(MemoryReport),
}

/// Errors of the control channel.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("Control channel I/O failed")]
    Io(#[from] std::io::Error),
    #[error("Control frame of {0} bytes exceeds the limit")]
    FrameTooLarge(u64),
    #[error("Malformed control frame: {0}")]
    Malformed(&'static str),
    #[error("Control frame header is not valid")]
    Header(#[source] serde_json::Error),
    #[error("Control channel closed by peer")]
    Closed,
}

/// Encode one frame: `header` serialized as JSON, followed by `body`.
pub fn encode_frame<H: Serialize>(header: &H, body: &[u8]) -> Result<Vec<u8>, ControlError> {
    let hdr = serde_json::to_vec(header).map_err(ControlError::Header)?;
    let len = 4u64 + hdr.len() as u64 + body.len() as u64;
    if len > u64::from(MAX_FRAME) {
        return Err(ControlError::FrameTooLarge(len));
    }
    let hdr_len = u32::try_from(hdr.len()).map_err(|_| ControlError::FrameTooLarge(len))?;
    let len = u32::try_from(len).map_err(|_| ControlError::FrameTooLarge(len))?;
    let mut buf = Vec::with_capacity(8 + hdr.len() + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&hdr_len.to_le_bytes());
    buf.extend_from_slice(&hdr);
    buf.extend_from_slice(body);
    Ok(buf)
}

/// Check the length prefix of a frame; returns the number of bytes that follow it.
fn frame_len(len_buf: [u8; 4]) -> Result<usize, ControlError> {
    let len = u32::from_le_bytes(len_buf);
    if len > MAX_FRAME {
        return Err(ControlError::FrameTooLarge(u64::from(len)));
    }
    if len < 4 {
        return Err(ControlError::Malformed(
            "frame shorter than its header length",
        ));
    }
    usize::try_from(len).map_err(|_| ControlError::FrameTooLarge(u64::from(len)))
}

/// Split the part of a frame after its length prefix into header and body.
fn decode_frame<H>(mut frame: Vec<u8>) -> Result<(H, Vec<u8>), ControlError>
where
    H: for<'de> Deserialize<'de>,
{
    let (hl, rest) = frame.split_at(4);
    let hdr_len = u32::from_le_bytes([hl[0], hl[1], hl[2], hl[3]]) as usize;
    if hdr_len > rest.len() {
        return Err(ControlError::Malformed("header length exceeds frame"));
    }
    let header = serde_json::from_slice(&rest[..hdr_len]).map_err(ControlError::Header)?;
    // Reuse the frame's allocation for the body (payloads can be megabytes).
    let body = frame.split_off(4 + hdr_len);
    Ok((header, body))
}

/// Write one frame: `header` serialized as JSON, followed by `body`.
pub async fn write_frame<W, H>(w: &mut W, header: &H, body: &[u8]) -> Result<(), ControlError>
where
    W: AsyncWrite + Unpin,
    H: Serialize,
{
    let buf = encode_frame(header, body)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Read one frame. Returns [`ControlError::Closed`] on a clean end of stream
/// between frames.
pub async fn read_frame<R, H>(r: &mut R) -> Result<(H, Vec<u8>), ControlError>
where
    R: AsyncRead + Unpin,
    H: for<'de> Deserialize<'de>,
{
    let mut len_buf = [0u8; 4];
    match r.read_exact(&mut len_buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ControlError::Closed)
        }
        Err(e) => return Err(e.into()),
    }
    let mut frame = vec![0u8; frame_len(len_buf)?];
    r.read_exact(&mut frame).await?;
    decode_frame(frame)
}

/// Blocking variant of [`write_frame`], for `thaw-init` before it has a tokio
/// runtime (it must stay single-threaded until the sandbox is entered).
pub fn write_frame_sync<W, H>(w: &mut W, header: &H, body: &[u8]) -> Result<(), ControlError>
where
    W: std::io::Write,
    H: Serialize,
{
    let buf = encode_frame(header, body)?;
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Blocking variant of [`read_frame`].
pub fn read_frame_sync<R, H>(r: &mut R) -> Result<(H, Vec<u8>), ControlError>
where
    R: std::io::Read,
    H: for<'de> Deserialize<'de>,
{
    let mut len_buf = [0u8; 4];
    match r.read_exact(&mut len_buf) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ControlError::Closed)
        }
        Err(e) => return Err(e.into()),
    }
    let mut frame = vec![0u8; frame_len(len_buf)?];
    r.read_exact(&mut frame)?;
    decode_frame(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_with_binary_bodies() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let msg = FromSupervisor::Response {
            request_id: "r1".into(),
        };
        let body: Vec<u8> = (0..=255u8).collect();
        write_frame(&mut a, &msg, &body).await.unwrap();
        let (got, got_body): (FromSupervisor, Vec<u8>) = read_frame(&mut b).await.unwrap();
        assert_eq!(got, msg);
        assert_eq!(got_body, body);
        drop(a);
        let end = read_frame::<_, FromSupervisor>(&mut b).await;
        assert!(matches!(end, Err(ControlError::Closed)));
    }

    #[test]
    fn sync_and_async_framing_agree() {
        let msg = ToSupervisor::Invoke(Invocation {
            request_id: "r2".into(),
            deadline_ms: 1,
            invoked_function_arn: "arn".into(),
            trace_id: None,
            client_context: None,
            cognito_identity: None,
        });
        let mut buf = Vec::new();
        write_frame_sync(&mut buf, &msg, b"{}").unwrap();
        assert_eq!(buf, encode_frame(&msg, b"{}").unwrap());
        let mut rd = std::io::Cursor::new(buf);
        let (got, body): (ToSupervisor, Vec<u8>) = read_frame_sync(&mut rd).unwrap();
        assert_eq!(got, msg);
        assert_eq!(body, b"{}");
        let end = read_frame_sync::<_, ToSupervisor>(&mut rd);
        assert!(matches!(end, Err(ControlError::Closed)));
    }

    #[tokio::test]
    async fn oversized_and_malformed_frames_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(MAX_FRAME + 1).to_le_bytes()).await.unwrap();
        let r = read_frame::<_, FromSupervisor>(&mut b).await;
        assert!(matches!(r, Err(ControlError::FrameTooLarge(_))));

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&8u32.to_le_bytes()).await.unwrap();
        a.write_all(&100u32.to_le_bytes()).await.unwrap();
        a.write_all(b"abcd").await.unwrap();
        let r = read_frame::<_, FromSupervisor>(&mut b).await;
        assert!(matches!(r, Err(ControlError::Malformed(_))));
    }
}
