//! The bodies of thaw's fuzz targets: one function per parser of untrusted
//! bytes, each taking the fuzzer's input and feeding it to the parser
//! through its public entry point.
//!
//! Owns: turning arbitrary bytes into the parsers' inputs (a request, a
//! file in a directory, a stream) and the invariants checked after each
//! run. Every function returns normally for every input: a panic, an abort,
//! an overflow (fuzz builds keep debug assertions) or a hang is a finding.
//!
//! The functions are called by the cargo-fuzz targets under `fuzz/` (built
//! with nightly, outside this workspace) and, on stable, by
//! `tests/replay.rs`, which runs every committed corpus and regression file
//! through them. Must not: change the parsers' behaviour; whatever a
//! harness builds (a checksum, a key) it builds the way the writer does.
//!
//! Several harnesses can "repair" what a fuzzer cannot forge: the first
//! input byte holds flags that ask for a checksum, a header or an
//! encryption to be computed around the rest, so the fuzzer reaches the
//! code behind those checks. Without the flags the bytes go in raw.

#![deny(unsafe_code)]

pub mod api;
pub mod control;
pub mod page_requests;
pub mod runtime_api;
pub mod sigv4;
pub mod snapshot;
pub mod store;
pub mod working_set;
pub mod zip_package;

pub use api::api_request;
pub use control::control_frames;
pub use page_requests::page_requests;
pub use runtime_api::runtime_api;
pub use sigv4::sigv4;
pub use snapshot::snapshot_state;
pub use store::{store_chunk, store_manifest};
pub use working_set::working_set;
pub use zip_package::zip_package;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by the name of its `fuzz/fuzz_targets/<name>.rs` and its
/// corpus directory `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("api_request", api_request),
    ("zip_package", zip_package),
    ("sigv4", sigv4),
    ("snapshot_state", snapshot_state),
    ("working_set", working_set),
    ("store_chunk", store_chunk),
    ("store_manifest", store_manifest),
    ("control_frames", control_frames),
    ("page_requests", page_requests),
    ("runtime_api", runtime_api),
];

/// A temporary directory for a target's files: in `/dev/shm` when there is
/// one (a file written on every run costs less in memory), else in the
/// system's temporary directory.
pub(crate) fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("temporary directory")
}

/// Splits `data` into its first byte (flags; 0 when empty) and the rest.
pub(crate) fn flags(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&f, rest)) => (f, rest),
        None => (0, data),
    }
}

/// Splits `data` at a u16 LE length prefix: (the prefixed part, the rest).
/// A prefix longer than the data takes all of it.
pub(crate) fn split_prefixed(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (data, &[]);
    }
    let n = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let rest = &data[2..];
    rest.split_at(n.min(rest.len()))
}

/// Builds an HTTP request from `data`: `METHOD URI\n`, one `name: value\n`
/// per header, `\n`, the body ([`sigv4::encode_request`] writes it). `None`
/// when a line is not a valid method, URI or header.
pub(crate) fn request(data: &[u8]) -> Option<http::Request<Vec<u8>>> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let (method, uri) = match first.iter().position(|&b| b == b' ') {
        Some(i) => (&first[..i], &first[i + 1..]),
        None => (first, &b"/"[..]),
    };
    let mut builder = http::Request::builder().method(method).uri(uri);
    for line in lines {
        let i = line.iter().position(|&b| b == b':')?;
        let value = line[i + 1..].strip_prefix(b" ").unwrap_or(&line[i + 1..]);
        builder = builder.header(&line[..i], value);
    }
    builder.body(body.to_vec()).ok()
}
