//! The AWS Lambda Runtime API, served to the runtime process on the sandbox's
//! loopback.
//!
//! Owns: the HTTP routes and their Lambda semantics (headers, status codes,
//! error shapes, the response size limit) and the rule that only the invocation
//! in flight can be answered. Must not: write to the control channel or touch
//! processes. Everything it learns goes to the supervisor as an [`ApiEvent`];
//! results wait until the supervisor has forwarded them, so the runtime's next
//! output cannot be mistaken for output of the invocation it just finished.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::bootstraps::FUNCTION_INIT_MS_HEADER;
use crate::control::{FromSupervisor, Invocation};

/// Largest response (or error document) a function may return, as in Lambda.
pub(crate) const MAX_RESPONSE_BYTES: usize = 6_291_556;

/// Error type reported to the daemon for an oversized response.
pub(crate) const RESPONSE_TOO_LARGE: &str = "Function.ResponseSizeTooLarge";

const ERROR_TYPE_HEADER: &str = "lambda-runtime-function-error-type";

/// What the Runtime API tells the supervisor.
#[derive(Debug)]
pub(crate) enum ApiEvent {
    /// The runtime asked for its first invocation: init is done. Carries the
    /// bootstrap's own measure of the time it spent loading the function.
    FirstNext { function_init_ms: Option<f64> },
    /// The runtime called `/next` (every time): it is waiting, idle.
    Waiting,
    /// Snapshot run: the runtime is blocked in `restore/next`.
    SnapshotPoint,
    /// Restored: the runtime's after-restore work took `hooks_ms`; it now
    /// asks for its first invocation.
    AfterRestoreDone { hooks_ms: f64 },
    /// A result for the daemon (`Response`, `Error` or `InitError`). The HTTP
    /// request is answered once `forwarded` fires.
    Report {
        message: FromSupervisor,
        body: Bytes,
        forwarded: oneshot::Sender<()>,
    },
}

/// An invocation waiting for the runtime's `/invocation/next`.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub invocation: Invocation,
    pub payload: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the first `/next`.
    Init,
    /// The runtime reported `/init/error`.
    InitFailed,
    /// Serving invocations.
    Ready,
    /// Snapshot run: blocked in `restore/next` until the instance is
    /// checkpointed (and then killed).
    SnapshotWait,
    /// Restored from a handshake snapshot: the (synthetic) `restore/next`
    /// has not been answered yet.
    Restoring,
    /// `restore/next` answered: after-restore hooks are running.
    AfterRestore,
    /// The runtime reported `/restore/error`.
    RestoreFailed,
}

/// Which instance the Runtime API serves.
#[derive(Debug, Clone, Default)]
pub(crate) enum ApiMode {
    /// An ordinary (cold) instance.
    #[default]
    Normal,
    /// An instance started to be snapshotted: `restore/next` is its
    /// snapshot point.
    SnapshotRun,
    /// An instance restored from a snapshot taken in `restore/next`; its
    /// answer carries `body` ([`crate::control::AfterRestore`] as JSON).
    Restored { body: Bytes },
}

#[derive(Debug)]
struct ApiState {
    phase: Phase,
    /// The request id handed out by `/next` and not yet answered.
    in_flight: Option<String>,
    /// When `restore/next` was answered.
    restored_at: Option<std::time::Instant>,
}

/// Shared state of the Runtime API handlers.
pub(crate) struct RuntimeApi {
    state: Mutex<ApiState>,
    deliveries: tokio::sync::Mutex<mpsc::UnboundedReceiver<Delivery>>,
    events: mpsc::UnboundedSender<ApiEvent>,
    mode: ApiMode,
}

impl RuntimeApi {
    pub(crate) fn new(
        events: mpsc::UnboundedSender<ApiEvent>,
        deliveries: mpsc::UnboundedReceiver<Delivery>,
        mode: ApiMode,
    ) -> Arc<RuntimeApi> {
        let phase = match mode {
            ApiMode::Restored { .. } => Phase::Restoring,
            _ => Phase::Init,
        };
        Arc::new(RuntimeApi {
            state: Mutex::new(ApiState {
                phase,
                in_flight: None,
                restored_at: None,
            }),
            deliveries: tokio::sync::Mutex::new(deliveries),
            events,
            mode,
        })
    }

    fn state(&self) -> MutexGuard<'_, ApiState> {
        // The state stays consistent under every panic point (plain assignments).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take the in-flight invocation if it is `id`.
    fn take_in_flight(&self, id: &str) -> bool {
        let mut st = self.state();
        if st.in_flight.as_deref() == Some(id) {
            st.in_flight = None;
            true
        } else {
            false
        }
    }

    /// Hand a result to the supervisor and wait until it has been forwarded.
    async fn report(&self, message: FromSupervisor, body: Bytes) -> Result<(), Response> {
        let (tx, rx) = oneshot::channel();
        let ev = ApiEvent::Report {
            message,
            body,
            forwarded: tx,
        };
        if self.events.send(ev).is_err() || rx.await.is_err() {
            return Err(lambda_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                "The supervisor is shutting down",
            ));
        }
        Ok(())
    }
}

/// The Runtime API routes.
pub(crate) fn router(api: Arc<RuntimeApi>) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .route("/2018-06-01/runtime/restore/next", get(restore_next))
        .route("/2018-06-01/runtime/restore/error", post(restore_error))
        .fallback(not_found)
        // Bodies are read with our own limit (Lambda's, not axum's 2 MB default).
        .layer(DefaultBodyLimit::disable())
        .with_state(api)
}

/// Serve the Runtime API until the task is dropped.
pub(crate) async fn serve(listener: tokio::net::TcpListener, api: Arc<RuntimeApi>) {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        // Small request/response pairs on one connection: never wait for Nagle.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    if let Err(e) = axum::serve(listener, router(api)).await {
        tracing::error!(error = %e, "Runtime API server failed");
    }
}

/// Lambda's error shape for Runtime API errors.
fn lambda_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "errorMessage": message, "errorType": error_type })),
    )
        .into_response()
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, Json(json!({ "status": "OK" }))).into_response()
}

fn invalid_request_id(id: &str) -> Response {
    lambda_error(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        &format!("Invalid request ID: {id}"),
    )
}

async fn not_found() -> Response {
    lambda_error(
        StatusCode::NOT_FOUND,
        "InvalidRequest",
        "Unknown Runtime API path",
    )
}

/// `GET /2018-06-01/runtime/invocation/next`: wait for the daemon's next invocation.
async fn next(State(api): State<Arc<RuntimeApi>>, headers: HeaderMap) -> Response {
    enum First {
        No,
        Init,
        AfterRestore(f64),
    }
    let first = {
        let mut st = api.state();
        match st.phase {
            Phase::Init => {
                st.phase = Phase::Ready;
                First::Init
            }
            Phase::AfterRestore => {
                st.phase = Phase::Ready;
                let hooks_ms = st
                    .restored_at
                    .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0);
                First::AfterRestore(hooks_ms)
            }
            Phase::Restoring | Phase::SnapshotWait | Phase::RestoreFailed => {
                return invalid_state("invocation/next", st.phase);
            }
            Phase::InitFailed | Phase::Ready => First::No,
        }
    };
    // A closed channel means the supervisor is going away; the recv below says so.
    match first {
        First::Init => {
            let function_init_ms = init_ms_header(&headers);
            let _ = api.events.send(ApiEvent::FirstNext { function_init_ms });
        }
        First::AfterRestore(hooks_ms) => {
            let _ = api.events.send(ApiEvent::AfterRestoreDone { hooks_ms });
        }
        First::No => {}
    }
    let _ = api.events.send(ApiEvent::Waiting);
    // recv() is cancel-safe: if the runtime hangs up while waiting, the next
    // invocation stays queued for its next /next.
    let delivery = api.deliveries.lock().await.recv().await;
    let Some(delivery) = delivery else {
        return lambda_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            "The supervisor is shutting down",
        );
    };
    let id = delivery.invocation.request_id.clone();
    match invocation_response(delivery) {
        Ok(resp) => {
            let mut st = api.state();
            if let Some(prev) = st.in_flight.replace(id) {
                tracing::warn!(request_id = %prev, "runtime asked for the next invocation without answering this one");
            }
            resp
        }
        Err(e) => {
            tracing::error!(request_id = %id, error = %e, "cannot build the invocation response");
            lambda_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                "Invalid invocation",
            )
        }
    }
}

fn init_ms_header(headers: &HeaderMap) -> Option<f64> {
    headers
        .get(FUNCTION_INIT_MS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
}

fn invalid_state(what: &str, phase: Phase) -> Response {
    lambda_error(
        StatusCode::FORBIDDEN,
        "InvalidStateTransition",
        &format!("{what} is not allowed now ({phase:?})"),
    )
}

/// `GET /2018-06-01/runtime/restore/next`: the SnapStart handshake.
///
/// In a snapshot run this is the snapshot point: the runtime has finished
/// init (and, with thaw's bootstraps, a test invocation) and run its
/// before-snapshot hooks; the call blocks while the instance is
/// checkpointed, and that instance is then destroyed. A runtime restored
/// from the snapshot is blocked in the same call: its answer (`200`, with
/// the instance's [`crate::control::AfterRestore`] as the body) tells it it
/// has been restored.
async fn restore_next(State(api): State<Arc<RuntimeApi>>, headers: HeaderMap) -> Response {
    match &api.mode {
        ApiMode::SnapshotRun => {
            let init_done = {
                let mut st = api.state();
                let init = match st.phase {
                    Phase::Init => true,
                    Phase::Ready if st.in_flight.is_none() => false,
                    phase => return invalid_state("restore/next", phase),
                };
                st.phase = Phase::SnapshotWait;
                init
            };
            if init_done {
                let function_init_ms = init_ms_header(&headers);
                let _ = api.events.send(ApiEvent::FirstNext { function_init_ms });
            }
            let _ = api.events.send(ApiEvent::SnapshotPoint);
            // The checkpoint is taken while this waits; the instance it was
            // taken from never runs again.
            std::future::pending::<()>().await;
            unreachable!("pending() never completes")
        }
        ApiMode::Restored { body } => {
            {
                let mut st = api.state();
                if st.phase != Phase::Restoring {
                    return invalid_state("restore/next", st.phase);
                }
                st.phase = Phase::AfterRestore;
                st.restored_at = Some(std::time::Instant::now());
            }
            (
                StatusCode::OK,
                [(CONTENT_TYPE, "application/json")],
                body.clone(),
            )
                .into_response()
        }
        ApiMode::Normal => lambda_error(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            "restore/next is only available when AWS_LAMBDA_INITIALIZATION_TYPE is snap-start",
        ),
    }
}

/// `POST /2018-06-01/runtime/restore/error`: an after-restore hook failed
/// (`Runtime.AfterRestoreError`); the restore fails.
async fn restore_error(
    State(api): State<Arc<RuntimeApi>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match read_limited(body, MAX_RESPONSE_BYTES).await {
        Ok(LimitedBody::Within(b)) => b,
        Ok(LimitedBody::Over(_)) => {
            return lambda_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &format!("Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."),
            )
        }
        Err(e) => return bad_body(&e),
    };
    {
        let mut st = api.state();
        if st.phase != Phase::AfterRestore {
            return invalid_state("restore/error", st.phase);
        }
        st.phase = Phase::RestoreFailed;
    }
    let error_type = error_type_of(&headers, &body);
    match api
        .report(FromSupervisor::RestoreError { error_type }, body)
        .await
    {
        Ok(()) => accepted(),
        Err(resp) => resp,
    }
}

/// A header value that is valid JSON is re-serialized compactly, so JSON with
/// newlines or non-ASCII text still makes a valid header.
fn json_header_value(raw: &str) -> Option<HeaderValue> {
    let compact = match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(v) => v.to_string(),
        Err(_) => raw.to_string(),
    };
    HeaderValue::from_str(&compact).ok()
}

fn invocation_response(d: Delivery) -> Result<Response, axum::http::Error> {
    let inv = d.invocation;
    let mut b = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json")
        .header("Lambda-Runtime-Aws-Request-Id", inv.request_id.as_str())
        .header("Lambda-Runtime-Deadline-Ms", inv.deadline_ms)
        .header(
            "Lambda-Runtime-Invoked-Function-Arn",
            inv.invoked_function_arn.as_str(),
        );
    let optional = [
        ("Lambda-Runtime-Trace-Id", inv.trace_id.as_deref()),
        (
            "Lambda-Runtime-Client-Context",
            inv.client_context.as_deref(),
        ),
        (
            "Lambda-Runtime-Cognito-Identity",
            inv.cognito_identity.as_deref(),
        ),
    ];
    for (name, value) in optional {
        let Some(raw) = value else { continue };
        match json_header_value(raw) {
            Some(v) => b = b.header(name, v),
            None => tracing::warn!(
                header = name,
                "dropping a header value that is not valid in HTTP"
            ),
        }
    }
    b.body(Body::from(d.payload))
}

/// A request body read under Lambda's size limit.
enum LimitedBody {
    Within(Bytes),
    /// Over the limit; the body was read to its end and discarded (so the
    /// connection stays usable), and this is its full size.
    Over(u64),
}

async fn read_limited(mut body: Body, limit: usize) -> Result<LimitedBody, axum::Error> {
    let mut buf = BytesMut::new();
    let mut total: u64 = 0;
    let mut over = false;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        total += data.len() as u64;
        if !over && buf.len() + data.len() > limit {
            over = true;
            buf = BytesMut::new();
        }
        if !over {
            buf.extend_from_slice(&data);
        }
    }
    Ok(if over {
        LimitedBody::Over(total)
    } else {
        LimitedBody::Within(buf.freeze())
    })
}

fn bad_body(e: &axum::Error) -> Response {
    lambda_error(
        StatusCode::BAD_REQUEST,
        "InvalidRequest",
        &format!("Cannot read the request body: {e}"),
    )
}

/// The error type of an error report: the header, else the body's `errorType`,
/// else `Unhandled`.
fn error_type_of(headers: &HeaderMap, body: &[u8]) -> String {
    if let Some(t) = headers
        .get(ERROR_TYPE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return t.to_string();
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("errorType")?.as_str().map(str::to_string))
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "Unhandled".to_string())
}

/// Report an oversized result of invocation `id` and answer the runtime with 413.
async fn too_large(api: &RuntimeApi, id: String, size: u64) -> Response {
    if !api.take_in_flight(&id) {
        return invalid_request_id(&id);
    }
    let doc = json!({
        "errorMessage": format!(
            "Response payload size ({size} bytes) exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."
        ),
        "errorType": RESPONSE_TOO_LARGE,
    });
    let message = FromSupervisor::Error {
        request_id: id,
        error_type: RESPONSE_TOO_LARGE.to_string(),
    };
    if let Err(resp) = api.report(message, Bytes::from(doc.to_string())).await {
        return resp;
    }
    lambda_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        &format!("Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."),
    )
}

/// `POST /2018-06-01/runtime/invocation/{id}/response`.
async fn response(
    State(api): State<Arc<RuntimeApi>>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let body = match read_limited(body, MAX_RESPONSE_BYTES).await {
        Ok(LimitedBody::Within(b)) => b,
        Ok(LimitedBody::Over(size)) => return too_large(&api, id, size).await,
        Err(e) => return bad_body(&e),
    };
    if !api.take_in_flight(&id) {
        return invalid_request_id(&id);
    }
    match api
        .report(FromSupervisor::Response { request_id: id }, body)
        .await
    {
        Ok(()) => accepted(),
        Err(resp) => resp,
    }
}

/// `POST /2018-06-01/runtime/invocation/{id}/error`.
async fn error(
    State(api): State<Arc<RuntimeApi>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match read_limited(body, MAX_RESPONSE_BYTES).await {
        Ok(LimitedBody::Within(b)) => b,
        Ok(LimitedBody::Over(size)) => return too_large(&api, id, size).await,
        Err(e) => return bad_body(&e),
    };
    if !api.take_in_flight(&id) {
        return invalid_request_id(&id);
    }
    let error_type = error_type_of(&headers, &body);
    let message = FromSupervisor::Error {
        request_id: id,
        error_type,
    };
    match api.report(message, body).await {
        Ok(()) => accepted(),
        Err(resp) => resp,
    }
}

/// `POST /2018-06-01/runtime/init/error`.
async fn init_error(
    State(api): State<Arc<RuntimeApi>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match read_limited(body, MAX_RESPONSE_BYTES).await {
        Ok(LimitedBody::Within(b)) => b,
        Ok(LimitedBody::Over(_)) => {
            return lambda_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &format!("Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."),
            )
        }
        Err(e) => return bad_body(&e),
    };
    {
        let mut st = api.state();
        // A snapshot run may also fail after its test invocation, while its
        // before-snapshot hooks run (`Runtime.BeforeSnapshotError`).
        let allowed = st.phase == Phase::Init
            || (matches!(api.mode, ApiMode::SnapshotRun)
                && st.phase == Phase::Ready
                && st.in_flight.is_none());
        if !allowed {
            return lambda_error(
                StatusCode::FORBIDDEN,
                "InvalidStateTransition",
                "Init error is only accepted before the first invocation/next",
            );
        }
        st.phase = Phase::InitFailed;
    }
    let error_type = error_type_of(&headers, &body);
    match api
        .report(FromSupervisor::InitError { error_type }, body)
        .await
    {
        Ok(()) => accepted(),
        Err(resp) => resp,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    struct Harness {
        api: Arc<RuntimeApi>,
        events: mpsc::UnboundedReceiver<ApiEvent>,
        deliver: mpsc::UnboundedSender<Delivery>,
    }

    impl Harness {
        fn new() -> Harness {
            let (etx, erx) = mpsc::unbounded_channel();
            let (dtx, drx) = mpsc::unbounded_channel();
            Harness {
                api: RuntimeApi::new(etx, drx, ApiMode::Normal),
                events: erx,
                deliver: dtx,
            }
        }

        async fn call(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
            let resp = router(self.api.clone()).oneshot(req).await.unwrap();
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, headers, body)
        }

        /// Play the supervisor: acknowledge every report, return what was reported.
        fn forward_reports(self) -> tokio::task::JoinHandle<Vec<(FromSupervisor, Bytes)>> {
            // Only the test keeps the API alive, so the task ends when the test drops it.
            let Harness { mut events, .. } = self;
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(ev) = events.recv().await {
                    if let ApiEvent::Report {
                        message,
                        body,
                        forwarded,
                    } = ev
                    {
                        seen.push((message, body));
                        let _ = forwarded.send(());
                    }
                }
                seen
            })
        }
    }

    fn invocation(id: &str) -> Delivery {
        Delivery {
            invocation: Invocation {
                request_id: id.into(),
                deadline_ms: 1234,
                invoked_function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f".into(),
                trace_id: Some("Root=1-2-3".into()),
                client_context: Some("{\n \"custom\": {\"k\": \"v\"}\n}".into()),
                cognito_identity: None,
            },
            payload: Bytes::from_static(b"{\"a\":1}"),
        }
    }

    fn get_next(init_ms: Option<&str>) -> Request<Body> {
        let mut b = Request::get("/2018-06-01/runtime/invocation/next");
        if let Some(v) = init_ms {
            b = b.header(FUNCTION_INIT_MS_HEADER, v);
        }
        b.body(Body::empty()).unwrap()
    }

    fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
        Request::post(path).body(body.into()).unwrap()
    }

    #[tokio::test]
    async fn next_carries_lambda_headers_and_reports_init_once() {
        let mut h = Harness::new();
        h.deliver.send(invocation("r1")).unwrap();
        let (status, headers, body) = h.call(get_next(Some("12.5"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.as_ref(), b"{\"a\":1}");
        assert_eq!(headers["lambda-runtime-aws-request-id"], "r1");
        assert_eq!(headers["lambda-runtime-deadline-ms"], "1234");
        assert_eq!(
            headers["lambda-runtime-invoked-function-arn"],
            "arn:aws:lambda:us-east-1:000000000000:function:f"
        );
        assert_eq!(headers["lambda-runtime-trace-id"], "Root=1-2-3");
        assert_eq!(
            headers["lambda-runtime-client-context"],
            r#"{"custom":{"k":"v"}}"#
        );
        assert!(!headers.contains_key("lambda-runtime-cognito-identity"));
        match h.events.try_recv() {
            Ok(ApiEvent::FirstNext { function_init_ms }) => {
                assert_eq!(function_init_ms, Some(12.5))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(h.events.try_recv(), Ok(ApiEvent::Waiting)));
        h.deliver.send(invocation("r2")).unwrap();
        h.call(get_next(Some("99"))).await;
        assert!(
            matches!(h.events.try_recv(), Ok(ApiEvent::Waiting)),
            "every /next reports the runtime waiting"
        );
        assert!(h.events.try_recv().is_err(), "InitDone is reported once");
    }

    #[tokio::test]
    async fn only_the_invocation_in_flight_can_be_answered() {
        let h = Harness::new();
        h.deliver.send(invocation("r1")).unwrap();
        let api = h.api.clone();
        let call = |req: Request<Body>| {
            let api = api.clone();
            async move {
                let resp = router(api).oneshot(req).await.unwrap();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (
                    status,
                    serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
                )
            }
        };
        let reports = h.forward_reports();
        let resp = router(api.clone()).oneshot(get_next(None)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);

        let (status, v) = call(post("/2018-06-01/runtime/invocation/nope/response", "1")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(v["errorType"], "InvalidRequestID");
        assert!(v["errorMessage"].as_str().unwrap().contains("nope"));

        let (status, v) = call(post("/2018-06-01/runtime/invocation/r1/response", "42")).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(v, json!({"status": "OK"}));

        // Answered once only.
        let (status, _) = call(post("/2018-06-01/runtime/invocation/r1/error", "{}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // Too late for an init error.
        let (status, v) = call(post("/2018-06-01/runtime/init/error", "{}")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(v["errorType"], "InvalidStateTransition");

        let (status, v) = call(post("/2018-06-01/runtime/nope", "")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(v["errorType"], "InvalidRequest");

        drop(api);
        reports.abort();
    }

    #[tokio::test]
    async fn oversized_results_get_413_and_a_lambda_error() {
        let h = Harness::new();
        let api = h.api.clone();
        h.deliver.send(invocation("big")).unwrap();
        h.deliver.send(invocation("fits")).unwrap();
        let reports = h.forward_reports();
        for (id, size, want) in [
            ("big", MAX_RESPONSE_BYTES + 1, StatusCode::PAYLOAD_TOO_LARGE),
            ("fits", MAX_RESPONSE_BYTES, StatusCode::ACCEPTED),
        ] {
            router(api.clone()).oneshot(get_next(None)).await.unwrap();
            let path = format!("/2018-06-01/runtime/invocation/{id}/response");
            let resp = router(api.clone())
                .oneshot(post(&path, vec![b'x'; size]))
                .await
                .unwrap();
            assert_eq!(resp.status(), want, "{id}");
        }
        drop(api);
        let seen = reports.await.unwrap();
        assert_eq!(seen.len(), 2);
        let (msg, body) = &seen[0];
        assert_eq!(
            msg,
            &FromSupervisor::Error {
                request_id: "big".into(),
                error_type: RESPONSE_TOO_LARGE.into()
            }
        );
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["errorType"], RESPONSE_TOO_LARGE);
        assert!(v["errorMessage"]
            .as_str()
            .unwrap()
            .contains("6291557 bytes"));
        let (msg, body) = &seen[1];
        assert!(matches!(msg, FromSupervisor::Response { request_id } if request_id == "fits"));
        assert_eq!(body.len(), MAX_RESPONSE_BYTES);
    }

    fn harness(mode: ApiMode) -> Harness {
        let (etx, erx) = mpsc::unbounded_channel();
        let (dtx, drx) = mpsc::unbounded_channel();
        Harness {
            api: RuntimeApi::new(etx, drx, mode),
            events: erx,
            deliver: dtx,
        }
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).unwrap()
    }

    const RESTORE_NEXT: &str = "/2018-06-01/runtime/restore/next";
    const RESTORE_ERROR: &str = "/2018-06-01/runtime/restore/error";

    #[tokio::test]
    async fn restore_next_is_the_snapshot_point_of_a_snapshot_run() {
        let mut h = harness(ApiMode::SnapshotRun);
        // Right after init (awslambdaric): init is done, then the point.
        let api = h.api.clone();
        let blocked = tokio::spawn(async move {
            router(api)
                .oneshot(
                    Request::get(RESTORE_NEXT)
                        .header(FUNCTION_INIT_MS_HEADER, "7")
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
        });
        match h.events.recv().await {
            Some(ApiEvent::FirstNext { function_init_ms }) => {
                assert_eq!(function_init_ms, Some(7.0))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            h.events.recv().await,
            Some(ApiEvent::SnapshotPoint)
        ));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !blocked.is_finished(),
            "restore/next blocks in a snapshot run"
        );
        // Nothing else is allowed meanwhile.
        let (status, _, _) = h.call(get_next(None)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        blocked.abort();
    }

    #[tokio::test]
    async fn a_snapshot_run_may_report_a_hook_failure_after_its_test_invocation() {
        let h = harness(ApiMode::SnapshotRun);
        h.deliver.send(invocation("t")).unwrap();
        let api = h.api.clone();
        let reports = h.forward_reports();
        router(api.clone()).oneshot(get_next(None)).await.unwrap();
        let r = router(api.clone())
            .oneshot(post("/2018-06-01/runtime/invocation/t/response", "1"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let r = router(api.clone())
            .oneshot(
                Request::post("/2018-06-01/runtime/init/error")
                    .header(ERROR_TYPE_HEADER, "Runtime.BeforeSnapshotError")
                    .body(Body::from("{}"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        drop(api);
        let seen = reports.await.unwrap();
        assert!(
            matches!(&seen[1].0, FromSupervisor::InitError { error_type } if error_type == "Runtime.BeforeSnapshotError")
        );
    }

    #[tokio::test]
    async fn a_restored_runtime_gets_its_identity_then_runs_hooks() {
        let body = Bytes::from_static(br#"{"instanceId":"i"}"#);
        let mut h = harness(ApiMode::Restored { body: body.clone() });
        // Not before restore/next, and restore/error only after it.
        let (status, _, _) = h.call(get_next(None)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _, _) = h.call(post(RESTORE_ERROR, "{}")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, headers, got) = h.call(get(RESTORE_NEXT)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        assert_eq!(got, body);
        // Answered once only.
        let (status, _, _) = h.call(get(RESTORE_NEXT)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // The first /next ends the after-restore phase.
        h.deliver.send(invocation("r1")).unwrap();
        let (status, _, _) = h.call(get_next(None)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            matches!(h.events.try_recv(), Ok(ApiEvent::AfterRestoreDone { hooks_ms }) if hooks_ms >= 0.0)
        );
        assert!(matches!(h.events.try_recv(), Ok(ApiEvent::Waiting)));
    }

    #[tokio::test]
    async fn a_failing_after_restore_hook_is_reported() {
        let h = harness(ApiMode::Restored { body: Bytes::new() });
        let api = h.api.clone();
        let reports = h.forward_reports();
        router(api.clone())
            .oneshot(get(RESTORE_NEXT))
            .await
            .unwrap();
        let r = router(api.clone())
            .oneshot(
                Request::post(RESTORE_ERROR)
                    .header(ERROR_TYPE_HEADER, "Runtime.AfterRestoreError")
                    .body(Body::from(r#"{"errorMessage":"no"}"#))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        // And no invocation after that.
        let r = router(api.clone()).oneshot(get_next(None)).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        drop(api);
        let seen = reports.await.unwrap();
        assert_eq!(
            seen[0].0,
            FromSupervisor::RestoreError {
                error_type: "Runtime.AfterRestoreError".into()
            }
        );
    }

    #[tokio::test]
    async fn restore_next_is_refused_outside_snap_start() {
        let h = harness(ApiMode::Normal);
        let (status, _, body) = h.call(get(RESTORE_NEXT)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(String::from_utf8_lossy(&body).contains("snap-start"));
    }

    #[tokio::test]
    async fn error_type_comes_from_header_then_body_then_default() {
        let mut h = HeaderMap::new();
        assert_eq!(
            error_type_of(&h, br#"{"errorType":"ValueError"}"#),
            "ValueError"
        );
        assert_eq!(error_type_of(&h, b"not json"), "Unhandled");
        h.insert(
            ERROR_TYPE_HEADER,
            HeaderValue::from_static("Runtime.Custom"),
        );
        assert_eq!(
            error_type_of(&h, br#"{"errorType":"ValueError"}"#),
            "Runtime.Custom"
        );
    }
}
