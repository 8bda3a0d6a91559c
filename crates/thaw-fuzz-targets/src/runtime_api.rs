//! The Lambda Runtime API (`thaw-runtime`'s HTTP server inside the
//! sandbox): requests from the runtime process, which runs the function's
//! code and so is untrusted. Reached through the crate's hidden
//! `fuzzing::session` hook, which plays the supervisor around the real
//! routes.

use std::collections::BTreeSet;

use thaw_runtime::control::FromSupervisor;
use thaw_runtime::fuzzing::{session, Mode};

/// Requests per session, at most.
const MAX_REQUESTS: usize = 16;

/// Encodes a session the way [`runtime_api`] reads it: the mode byte (0
/// normal, 1 snapshot run, 2 restored), then each request with a u16 LE
/// length prefix, in [`crate::sigv4::encode_request`]'s form.
pub fn encode_session(mode: u8, requests: &[http::Request<Vec<u8>>]) -> Vec<u8> {
    let mut out = vec![mode];
    for r in requests {
        let bytes = crate::sigv4::encode_request(r);
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// Runs the session `data` encodes (see [`encode_session`]) against the
/// Runtime API. Only `restore/next` of a snapshot run may stay unanswered;
/// each invocation is answered (a response or an error reaching the
/// daemon) at most once, and only invocations that were handed out; init
/// and restore fail at most once.
pub fn runtime_api(data: &[u8]) {
    let (mode, mut rest) = crate::flags(data);
    let mode = match mode % 3 {
        0 => Mode::Normal,
        1 => Mode::SnapshotRun,
        _ => Mode::Restored,
    };
    let mut requests = Vec::new();
    let mut paths = Vec::new();
    while !rest.is_empty() && requests.len() < MAX_REQUESTS {
        let (one, tail) = crate::split_prefixed(rest);
        rest = tail;
        if let Some(req) = crate::request(one) {
            paths.push(req.uri().path().to_string());
            requests.push(req.map(axum::body::Body::from));
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
    let s = runtime.block_on(session(mode, requests));
    for (status, path) in s.statuses.iter().zip(&paths) {
        if status.is_none() {
            assert!(
                mode == Mode::SnapshotRun && path.ends_with("/runtime/restore/next"),
                "{path} never answered in {mode:?}"
            );
        }
    }
    let mut answered = BTreeSet::new();
    let (mut init_errors, mut restore_errors) = (0, 0);
    for (report, _) in &s.reports {
        match report {
            FromSupervisor::Response { request_id } | FromSupervisor::Error { request_id, .. } => {
                assert!(request_id.starts_with("inv-"), "answered {request_id}");
                assert!(
                    answered.insert(request_id.clone()),
                    "{request_id} answered twice"
                );
            }
            FromSupervisor::InitError { .. } => init_errors += 1,
            FromSupervisor::RestoreError { .. } => restore_errors += 1,
            other => panic!("unexpected report {other:?}"),
        }
    }
    assert!(init_errors <= 1, "{init_errors} init errors reported");
    assert!(
        restore_errors <= 1,
        "{restore_errors} restore errors reported"
    );
}
