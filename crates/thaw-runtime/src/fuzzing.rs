//! A way into the Runtime API for the fuzz targets
//! (`crates/thaw-fuzz-targets`), which cannot reach the crate-private
//! server otherwise. Not part of the crate's API: hidden from its docs,
//! used by nothing else.
//!
//! A session plays the rest of the supervisor around the real routes: one
//! queued invocation per request (ids `inv-0`, `inv-1`, ...), every report
//! acknowledged as forwarded.

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tower::ServiceExt;

use crate::api::{router, ApiEvent, ApiMode, Delivery, RuntimeApi};
use crate::control::{FromSupervisor, Invocation};

/// Which instance the Runtime API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An ordinary instance.
    Normal,
    /// One started to be snapshotted (`restore/next` is its snapshot point
    /// and never answers).
    SnapshotRun,
    /// One restored from a snapshot taken in `restore/next`.
    Restored,
}

/// What a session produced.
#[derive(Debug, Default)]
pub struct Session {
    /// Each request's status, `None` for one still waiting when every
    /// other task had run (only `restore/next` of a snapshot run waits
    /// for ever by design).
    pub statuses: Vec<Option<u16>>,
    /// The reports the supervisor received, in order.
    pub reports: Vec<(FromSupervisor, Bytes)>,
}

/// Lets every other task of a current-thread runtime run `n` times.
async fn idle(n: usize) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

/// Sends `requests` to the Runtime API one after the other, as a runtime
/// process would, on the caller's (current-thread) tokio runtime.
pub async fn session(mode: Mode, requests: Vec<axum::http::Request<Body>>) -> Session {
    let (etx, mut erx) = mpsc::unbounded_channel();
    let (dtx, drx) = mpsc::unbounded_channel();
    for i in 0..requests.len() {
        let _ = dtx.send(Delivery {
            invocation: Invocation {
                request_id: format!("inv-{i}"),
                deadline_ms: 1_767_225_600_000,
                invoked_function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f".into(),
                trace_id: Some("Root=1-2-3".into()),
                client_context: Some("{\"custom\": {\"k\": \"v\"}}".into()),
                cognito_identity: None,
            },
            payload: Bytes::from_static(b"{\"a\":1}"),
        });
    }
    drop(dtx);
    let api_mode = match mode {
        Mode::Normal => ApiMode::Normal,
        Mode::SnapshotRun => ApiMode::SnapshotRun,
        Mode::Restored => ApiMode::Restored {
            body: Bytes::from_static(b"{\"instanceId\":\"i-1\",\"environment\":[]}"),
        },
    };
    let api = RuntimeApi::new(etx, drx, api_mode);
    let reports = Arc::new(Mutex::new(Vec::new()));
    let forwarder = {
        let reports = reports.clone();
        tokio::spawn(async move {
            while let Some(ev) = erx.recv().await {
                if let ApiEvent::Report {
                    message,
                    body,
                    forwarded,
                } = ev
                {
                    reports
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((message, body));
                    let _ = forwarded.send(());
                }
            }
        })
    };
    let mut statuses = Vec::with_capacity(requests.len());
    for req in requests {
        let call = async {
            let resp = router(api.clone()).oneshot(req).await;
            let Ok(resp) = resp;
            let status = resp.status().as_u16();
            // A body that fails to read is still an answer with a status.
            let _ = resp.into_body().collect().await;
            status
        };
        let status = tokio::select! {
            s = call => Some(s),
            () = idle(256) => None,
        };
        statuses.push(status);
    }
    drop(api);
    forwarder.abort();
    let reports = std::mem::take(&mut *reports.lock().unwrap_or_else(PoisonError::into_inner));
    Session { statuses, reports }
}
