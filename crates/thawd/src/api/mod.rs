//! The Lambda-compatible HTTP API (management + Invoke) and thaw's own endpoints.
//!
//! Owns: routes, reading and limiting request bodies, mapping every failure
//! to Lambda's error shape in one place ([`ApiError`]), and turning an
//! invocation's outcome into Lambda's response headers. Must not: validate
//! configurations itself (that is `thaw-api`), touch the disk (that is the
//! [`Registry`]) or manage instances (that is the pool).
//!
//! | method | path | operation |
//! |---|---|---|
//! | POST | `/2015-03-31/functions` | CreateFunction (201; `Publish`) |
//! | GET | `/2015-03-31/functions[/]` | ListFunctions (`Marker`, `MaxItems`) |
//! | GET | `/2015-03-31/functions/{name}` | GetFunction (`Qualifier`) |
//! | DELETE | `/2015-03-31/functions/{name}` | DeleteFunction (204; `Qualifier`: one version) |
//! | GET, PUT | `/2015-03-31/functions/{name}/configuration` | Get (`Qualifier`) / UpdateFunctionConfiguration |
//! | PUT | `/2015-03-31/functions/{name}/code` | UpdateFunctionCode (`Publish`) |
//! | POST | `/2015-03-31/functions/{name}/invocations` | Invoke (`Qualifier`: version or alias) |
//! | POST, GET | `/2015-03-31/functions/{name}/versions` | PublishVersion (201), ListVersionsByFunction |
//! | POST, GET | `/2015-03-31/functions/{name}/aliases` | CreateAlias (201), ListAliases |
//! | GET, PUT, DELETE | `/2015-03-31/functions/{name}/aliases/{alias}` | GetAlias, UpdateAlias, DeleteAlias (204) |
//! | PUT, DELETE | `/2017-10-31/functions/{name}/concurrency` | Put/DeleteFunctionConcurrency |
//! | GET | `/2019-09-30/functions/{name}/concurrency` | GetFunctionConcurrency |
//! | PUT, GET, DELETE | `/2019-09-30/functions/{name}/provisioned-concurrency` | Put/Get/DeleteProvisionedConcurrencyConfig (`Qualifier`); with `List=ALL`: ListProvisionedConcurrencyConfigs |
//! | POST, GET, PUT, DELETE | `/2021-10-31/functions/{name}/url` | Create/Get/Update/DeleteFunctionUrlConfig (`Qualifier`) |
//! | GET | `/2021-10-31/functions/{name}/urls` | ListFunctionUrlConfigs |
//! | any | any, with a function URL's `Host` | the function URL (`api::urls`) |
//! | GET | `/2016-08-19/account-settings` | GetAccountSettings |
//! | GET | `/thaw/v1/functions/{name}/logs` | log records (`request_id`, `limit`) |
//! | GET | `/thaw/v1/functions/{name}/code` | the uploaded zip |
//! | GET, PUT | `/thaw/v1/functions/{name}/settings` | thaw's own settings of the function ([`thaw_api::PlatformSettings`]) |
//! | GET | `/metrics`, `/healthz` | Prometheus metrics, liveness |
//!
//! Every route but `/healthz` is reached only through [`authenticate`]
//! (AWS SigV4); handlers act for the verified caller's account
//! ([`crate::accounts::Scope`]): its own functions only, another account's
//! ARN refused (403), `/metrics` and the store's caches the root
//! account's. The account routes are in [`crate::accounts`].
//!
//! **Versions and aliases** (`api::versions`): a name or ARN may carry a
//! qualifier (`NAME:1`, `NAME:live`), as may the `Qualifier` parameter;
//! both given and different is refused. Each published version has its
//! own instances and snapshot (kept under `NAME:N`); an alias resolves to
//! its version per invocation (weighted routing), and a queued event
//! resolves it when it runs.
//!
//! **Provisioned concurrency and versions.** Lambda configures provisioned
//! concurrency on a published version or an alias and refuses `$LATEST`.
//! thaw does the same, one configuration per qualifier (an alias's follows
//! it when it moves), and also accepts `$LATEST` (or no qualifier) as a
//! documented extension, whose instances follow the function's updates. A
//! qualifier that names no version or alias is `ResourceNotFoundException`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::BytesMut;
use serde::de::DeserializeOwned;
use thaw_api::invoke::{
    decode_client_context, parse_log_type, payload_too_large, validate_payload,
    CLIENT_CONTEXT_HEADER, EXECUTED_VERSION_HEADER, FUNCTION_ERROR_HEADER, INVOCATION_TYPE_HEADER,
    LOG_RESULT_HEADER, LOG_TYPE_HEADER, REQUEST_ID_HEADER, SERVER_TIMING_HEADER, THAW_START_HEADER,
};
use thaw_api::logs::{DEFAULT_LOG_LIMIT, MAX_LOG_LIMIT};
use thaw_api::{
    CreateFunctionRequest, ErrorCode, FunctionCodeLocation, FunctionConfiguration, FunctionRef,
    GetFunctionResponse, InvocationType, LambdaError, ListFunctionsResponse, ServerTiming,
    UpdateFunctionCodeRequest, UpdateFunctionConfigurationRequest, ERROR_TYPE_HEADER,
};
use tracing::Instrument;

use crate::accounts::{Scope, Target};
use crate::instance::error_chain;
use crate::invoke::{InvokeError, InvokeInput, InvokeOutcome};
use crate::logs::LogRecord;
use crate::registry::{CreateFunction, FunctionRecord, Registry, RegistryError};
use crate::server::Platform;

mod events;
mod tags;
mod urls;
mod versions;
pub use events::start_event_delivery;

/// Largest management request body (a base64 zip of ~50 MiB plus JSON):
/// CreateFunction and UpdateFunctionCode.
pub const MAX_MANAGEMENT_BODY_BYTES: usize = 70 * 1024 * 1024;
/// Largest body of the management operations that carry no code
/// (configuration, concurrency): Lambda's environment is at most 4 KiB.
pub const MAX_SETTINGS_BODY_BYTES: usize = 1024 * 1024;
/// Largest test event of `POST /thaw/v1/functions/{name}/snapshot`: a
/// synchronous invocation's payload limit.
pub const MAX_SNAPSHOT_EVENT_BYTES: usize = 6 * 1024 * 1024;
/// A body over its limit is still read (and discarded) up to this size, so
/// that the client, which is still sending, gets the 413 instead of a reset
/// connection. Beyond it the connection is dropped.
const MAX_DRAIN_BYTES: usize = 128 * 1024 * 1024;
/// Largest `ListFunctions` page.
const MAX_LIST_PAGE: usize = 50;

/// What the HTTP API needs from the rest of the daemon. [`Platform`] is the
/// real one; tests substitute a fake that runs no sandboxes.
pub trait ApiBackend: Clone + Send + Sync + 'static {
    /// The function registry.
    fn registry(&self) -> &Registry;
    /// The durable queue of `Event` invocations.
    fn events(&self) -> &Arc<crate::events::EventQueue>;
    /// Run one invocation.
    fn invoke(
        &self,
        function: &FunctionRecord,
        input: InvokeInput,
    ) -> impl Future<Output = Result<InvokeOutcome, InvokeError>> + Send;
    /// Make sure no instance serves the function's previous revision.
    fn retire(&self, name: &str) -> impl Future<Output = ()> + Send;
    /// The last `limit` log records of a function (blocking file I/O).
    fn read_logs(&self, name: &str, request_id: Option<&str>, limit: usize) -> Vec<LogRecord>;
    /// Forget a deleted function's logs.
    fn delete_logs(&self, name: &str);
    /// Prometheus text exposition.
    fn render_metrics(&self) -> String;
    /// Snapshot the function after one test invocation with `payload`.
    fn create_snapshot(
        &self,
        function: &FunctionRecord,
        payload: Bytes,
    ) -> impl Future<Output = Result<thaw_api::SnapshotReport, InvokeError>> + Send {
        let _ = (function, payload);
        async {
            Err(InvokeError::Sandbox(anyhow::anyhow!(
                "snapshots are not supported by this backend"
            )))
        }
    }
    /// Destroy the function's idle instances (standby sandboxes stay).
    fn drop_idle(&self, name: &str) -> impl Future<Output = ()> + Send {
        self.retire(name)
    }
    /// Forget the function's snapshots (all revisions). Returns whether it had any.
    fn delete_snapshots(&self, name: &str) -> std::io::Result<bool> {
        let _ = name;
        Ok(false)
    }
    /// Forget the working set of the function's current snapshot so the
    /// next restore records it again. Returns whether there was one.
    fn rerecord_working_set(&self, function: &FunctionRecord) -> std::io::Result<bool> {
        let _ = function;
        Ok(false)
    }
    /// Drops the snapshot store's in-memory caches (benchmarks of cold
    /// restores). Returns whether there is a store.
    fn drop_store_caches(&self) -> bool {
        false
    }
    /// The function was created or changed: build a snapshot of its new
    /// revision if the pipeline is on.
    fn function_changed(&self, function: &FunctionRecord) {
        let _ = function;
    }
    /// Whether work a caller asks for may write to the data directory now
    /// (`Err`: why not, [`crate::pressure`]).
    fn room_on_disk(&self) -> Result<(), crate::pressure::Low> {
        Ok(())
    }

    /// The account's concurrent executions.
    fn account_concurrency(&self) -> u32 {
        thaw_api::concurrency::DEFAULT_ACCOUNT_CONCURRENCY
    }
    /// Most provisioned instances one function may ask for (the daemon's
    /// per-function instance limit).
    fn max_provisioned(&self) -> u32 {
        u32::MAX
    }
    /// The function's concurrency controls changed: apply them.
    fn concurrency_changed(&self, function: &FunctionRecord) {
        let _ = function;
    }
    /// The function was deleted.
    fn function_removed(&self, name: &str) {
        let _ = name;
    }
    /// How far the function's provisioned concurrency configuration on
    /// `qualifier` is (it has one).
    fn provisioned_view(
        &self,
        function: &FunctionRecord,
        qualifier: &str,
    ) -> crate::provisioned::ProvisionedView {
        let _ = (function, qualifier);
        crate::provisioned::ProvisionedView {
            available: 0,
            status: thaw_api::ProvisionedConcurrencyStatus::InProgress,
            reason: None,
        }
    }
    /// The accounts whose keys sign requests to `AWS_IAM` function URLs
    /// (`None`: such URLs refuse every request).
    fn accounts(&self) -> Option<&Arc<thaw_auth::Accounts>> {
        None
    }
    /// The URL of the function URL whose id is `id`.
    fn function_url(&self, id: &str) -> String {
        format!(
            "http://{id}.{}.{}.localhost/",
            thaw_api::urls::URL_HOST_LABEL,
            thaw_api::function::REGION
        )
    }
    /// Queue a snapshot build of the function (pipeline on or off).
    fn queue_snapshot(&self, function: &FunctionRecord) -> Result<(), LambdaError> {
        let _ = function;
        Err(LambdaError::new(
            ErrorCode::Service,
            "snapshots are not supported by this backend",
        ))
    }
    /// Where the function's snapshot stands.
    fn snapshot_status(&self, function: &FunctionRecord) -> thaw_api::SnapshotStatus {
        thaw_api::SnapshotStatus {
            function: function.name.clone(),
            revision_id: function.revision_id.clone(),
            state: thaw_api::SnapshotState::None,
            phase: None,
            error: None,
            report: None,
            updated: String::new(),
        }
    }
}

impl ApiBackend for Arc<Platform> {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn events(&self) -> &Arc<crate::events::EventQueue> {
        &self.events
    }

    fn create_snapshot(
        &self,
        function: &FunctionRecord,
        payload: Bytes,
    ) -> impl Future<Output = Result<thaw_api::SnapshotReport, InvokeError>> + Send {
        self.pools.create_snapshot(function, payload)
    }

    fn delete_snapshots(&self, name: &str) -> std::io::Result<bool> {
        self.pools.delete_snapshots(name)
    }

    fn function_changed(&self, function: &FunctionRecord) {
        self.schedule_snapshot(function);
    }

    fn rerecord_working_set(&self, function: &FunctionRecord) -> std::io::Result<bool> {
        self.pools.rerecord_working_set(function)
    }

    fn drop_store_caches(&self) -> bool {
        match &self.pools.ctx().store {
            Some(s) => {
                s.drop_caches();
                true
            }
            None => false,
        }
    }

    fn queue_snapshot(&self, function: &FunctionRecord) -> Result<(), LambdaError> {
        self.queue_snapshot_build(function);
        Ok(())
    }

    fn snapshot_status(&self, function: &FunctionRecord) -> thaw_api::SnapshotStatus {
        self.pools
            .builds
            .status(function, self.pools.snapshot_meta(function).as_ref())
    }

    fn drop_idle(&self, name: &str) -> impl Future<Output = ()> + Send {
        self.pools.drop_idle(name)
    }

    fn room_on_disk(&self) -> Result<(), crate::pressure::Low> {
        self.pools.room_on_disk()
    }

    fn accounts(&self) -> Option<&Arc<thaw_auth::Accounts>> {
        Some(&self.accounts)
    }

    fn function_url(&self, id: &str) -> String {
        format!(
            "http://{id}.{}.{}.{}:{}/",
            thaw_api::urls::URL_HOST_LABEL,
            thaw_api::function::REGION,
            self.config.function_url_domain,
            self.config.listen.port()
        )
    }

    fn account_concurrency(&self) -> u32 {
        self.pools.admission().account_limit()
    }

    fn max_provisioned(&self) -> u32 {
        u32::try_from(self.pools.max_instances()).unwrap_or(u32::MAX)
    }

    fn concurrency_changed(&self, function: &FunctionRecord) {
        Platform::concurrency_changed(self, function);
    }

    fn function_removed(&self, name: &str) {
        Platform::function_removed(self, name);
    }

    fn provisioned_view(
        &self,
        function: &FunctionRecord,
        qualifier: &str,
    ) -> crate::provisioned::ProvisionedView {
        Platform::provisioned_view(self, function, qualifier).unwrap_or(
            crate::provisioned::ProvisionedView {
                available: 0,
                status: thaw_api::ProvisionedConcurrencyStatus::InProgress,
                reason: None,
            },
        )
    }

    fn invoke(
        &self,
        function: &FunctionRecord,
        input: InvokeInput,
    ) -> impl Future<Output = Result<InvokeOutcome, InvokeError>> + Send {
        self.pools.invoke(function, input)
    }

    fn retire(&self, name: &str) -> impl Future<Output = ()> + Send {
        self.pools.retire(name)
    }

    fn read_logs(&self, name: &str, request_id: Option<&str>, limit: usize) -> Vec<LogRecord> {
        self.logs.read(name, request_id, limit)
    }

    fn delete_logs(&self, name: &str) {
        self.logs.delete(name)
    }

    fn render_metrics(&self) -> String {
        let mut text = self.metrics.render();
        text.push_str(&self.events.render_metrics());
        if let Some(store) = &self.pools.ctx().store {
            text.push_str(&crate::metrics::render_store_stats(&store.store().stats()));
        }
        if let Some(network) = &self.pools.ctx().network {
            text.push_str(&crate::metrics::render_network_stats(&network.stats()));
        }
        text
    }
}

/// The daemon's HTTP router.
pub fn router(platform: Arc<Platform>) -> Router {
    router_with(platform)
}

/// The HTTP router over any [`ApiBackend`].
pub fn router_with<B: ApiBackend>(backend: B) -> Router {
    let functions = "/2015-03-31/functions";
    Router::new()
        .route(
            functions,
            get(list_functions::<B>).post(create_function::<B>),
        )
        .route(&format!("{functions}/"), get(list_functions::<B>))
        .route(
            &format!("{functions}/{{name}}"),
            get(get_function::<B>).delete(delete_function::<B>),
        )
        .route(
            &format!("{functions}/{{name}}/configuration"),
            get(get_function_configuration::<B>).put(update_function_configuration::<B>),
        )
        .route(
            &format!("{functions}/{{name}}/code"),
            axum::routing::put(update_function_code::<B>),
        )
        .route(
            &format!("{functions}/{{name}}/invocations"),
            post(invoke::<B>),
        )
        .route(
            &format!("{functions}/{{name}}/versions"),
            get(versions::list_versions::<B>).post(versions::publish_version::<B>),
        )
        .route(
            &format!("{functions}/{{name}}/aliases"),
            get(versions::list_aliases::<B>).post(versions::create_alias::<B>),
        )
        .route(
            &format!("{functions}/{{name}}/aliases/{{alias}}"),
            get(versions::get_alias::<B>)
                .put(versions::update_alias::<B>)
                .delete(versions::delete_alias::<B>),
        )
        .route(
            "/2017-10-31/functions/{name}/concurrency",
            axum::routing::put(put_function_concurrency::<B>)
                .delete(delete_function_concurrency::<B>),
        )
        .route(
            "/2019-09-30/functions/{name}/concurrency",
            get(get_function_concurrency::<B>),
        )
        .route(
            "/2019-09-30/functions/{name}/provisioned-concurrency",
            get(get_provisioned_concurrency::<B>)
                .put(put_provisioned_concurrency::<B>)
                .delete(delete_provisioned_concurrency::<B>),
        )
        .route(
            "/2019-09-25/functions/{name}/event-invoke-config",
            get(events::get_config::<B>)
                .put(events::put_config::<B>)
                .post(events::update_config::<B>)
                .delete(events::delete_config::<B>),
        )
        .route(
            "/2019-09-25/functions/{name}/event-invoke-config/list",
            get(events::list_configs::<B>),
        )
        .route(
            "/thaw/v1/functions/{name}/events",
            get(events::queue_view::<B>),
        )
        .route(
            "/2021-10-31/functions/{name}/url",
            get(urls::get::<B>)
                .post(urls::create::<B>)
                .put(urls::update::<B>)
                .delete(urls::delete::<B>),
        )
        .route("/2021-10-31/functions/{name}/urls", get(urls::list::<B>))
        .route(
            "/2017-03-31/tags/{name}",
            get(tags::list::<B>)
                .post(tags::tag::<B>)
                .delete(tags::untag::<B>),
        )
        .route("/2016-08-19/account-settings", get(account_settings::<B>))
        .route("/thaw/v1/functions/{name}/logs", get(function_logs::<B>))
        .route("/thaw/v1/functions/{name}/code", get(function_code::<B>))
        .route(
            "/thaw/v1/functions/{name}/snapshot",
            post(create_snapshot::<B>)
                .get(snapshot_status::<B>)
                .delete(delete_snapshot::<B>),
        )
        .route(
            "/thaw/v1/functions/{name}/snapshot/working-set",
            delete(rerecord_working_set::<B>),
        )
        .route("/thaw/v1/snapshots", get(list_snapshots::<B>))
        .route(
            "/thaw/v1/functions/{name}/settings",
            get(get_function_settings::<B>).put(put_function_settings::<B>),
        )
        .route(
            "/thaw/v1/functions/{name}/retire",
            post(retire_instances::<B>),
        )
        .route("/thaw/v1/store/drop-caches", post(drop_store_caches::<B>))
        .route("/metrics", get(metrics::<B>))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(unknown_operation)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(request_log))
        .with_state(backend)
}

/// `app` (the daemon's whole router: the API's and the accounts' routes,
/// behind [`authenticate`]) with function URLs served in front of it: a
/// request whose `Host` is a function URL's never reaches `app` (URLs check
/// their own authentication).
pub fn with_function_urls<B: ApiBackend>(app: Router, backend: B) -> Router {
    app.layer(axum::middleware::from_fn_with_state(
        backend,
        urls::dispatch::<B>,
    ))
}

// ---------------------------------------------------------------------------
// Errors

/// Every failure the API reports, in Lambda's shape: the status, the code in
/// `x-amzn-ErrorType` (where the AWS SDKs look for it) and a JSON body
/// `{"Type": "User"|"Service", "Message": ..., "message": ...}`.
#[derive(Debug)]
pub struct ApiError(pub LambdaError);

impl ApiError {
    /// A `ServiceException`; `what` goes to the caller.
    fn internal(what: impl Into<String>) -> Self {
        ApiError(LambdaError::new(ErrorCode::Service, what))
    }
}

impl From<LambdaError> for ApiError {
    fn from(e: LambdaError) -> Self {
        ApiError(e)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let lambda = match &e {
            RegistryError::NotFound(key) => {
                let (account, name) = crate::accounts::split_key(key);
                LambdaError::function_not_found_in(account, name)
            }
            RegistryError::AlreadyExists(key) => {
                let (_, name) = crate::accounts::split_key(key);
                LambdaError::new(
                    ErrorCode::ResourceConflict,
                    format!("Function already exist: {name}"),
                )
            }
            RegistryError::RevisionMismatch { .. } => LambdaError::new(
                ErrorCode::PreconditionFailed,
                "The Revision Id provided does not match the latest Revision Id. Call the GetFunction API to retrieve the latest Revision Id",
            ),
            RegistryError::Invalid(l) => l.clone(),
            RegistryError::InvalidZip(_)
            | RegistryError::CodeTooLarge { .. }
            | RegistryError::TooManyEntries { .. }
            | RegistryError::UnsafeEntry { .. } => LambdaError::invalid_parameter(e.to_string()),
            RegistryError::NoFreeUid
            | RegistryError::Io { .. }
            | RegistryError::Corrupt { .. }
            | RegistryError::Secrets { .. }
            | RegistryError::NewerFormat { .. } => {
                // Handled here: the caller gets a 500, a human must look.
                tracing::error!(error = %error_chain(&e), "function registry failed");
                LambdaError::new(ErrorCode::Service, e.public_message())
            }
        };
        if e.is_client_error() {
            tracing::debug!(error = %error_chain(&e), "request rejected");
        }
        ApiError(lambda)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut e = self.0;
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            // The daemon's own fault: the details (host paths among them)
            // are for its log, not for the caller.
            let redacted = redact_host_paths(&e.message);
            if redacted != e.message {
                tracing::warn!(message = %e.message, "server error sent with host paths removed");
                e.message = redacted;
            }
        }
        let body = serde_json::to_vec(&e.body()).unwrap_or_default();
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(ERROR_TYPE_HEADER.as_bytes()),
            HeaderValue::from_str(e.code.as_str()),
        ) {
            h.insert(n, v);
        }
        if e.code == ErrorCode::RequestTimeout {
            h.insert(
                axum::http::header::CONNECTION,
                HeaderValue::from_static("close"),
            );
        }
        resp
    }
}

/// `message` with every absolute path (a `/` at the start or after a space,
/// quote, parenthesis, `=` or `:`, up to the next such delimiter) replaced
/// by `<path>`.
fn redact_host_paths(message: &str) -> String {
    static PATH: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = PATH.get_or_init(|| {
        regex::Regex::new(r#"(^|[\s"'(=:\[])/[^\s"'),:\]]*"#).expect("a valid pattern")
    });
    re.replace_all(message, "${1}<path>").into_owned()
}

// ---------------------------------------------------------------------------
// Extractors and helpers

/// The `{name}` path parameter, parsed as a name, partial ARN or ARN.
struct FunctionPath(FunctionRef);

impl<S: Send + Sync> FromRequestParts<S> for FunctionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| LambdaError::validation("", "functionName", &e.body_text()))?;
        Ok(FunctionPath(FunctionRef::parse(&raw)?))
    }
}

/// The query string as a map; a malformed one is a `ValidationException`.
struct QueryMap(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(map) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                LambdaError::new(
                    ErrorCode::Validation,
                    format!("Invalid query string: {}", e.body_text()),
                )
            })?;
        Ok(QueryMap(map))
    }
}

impl QueryMap {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// Read a request body of at most `limit` bytes. A larger body is drained
/// (up to [`MAX_DRAIN_BYTES`]) and answered with `too_large`.
async fn read_body(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
    too_large: impl FnOnce() -> LambdaError,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_DRAIN_BYTES) {
        return Err(too_large().into());
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    let mut seen: usize = 0;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => break,
            Some(Err(e)) => {
                let timed_out = e.into_inner().downcast_ref::<BodyTimedOut>().map(|t| t.0);
                return Err(match timed_out {
                    Some(limit) => LambdaError::new(
                        ErrorCode::RequestTimeout,
                        format!(
                            "The request body did not arrive within {} seconds",
                            limit.as_secs()
                        ),
                    ),
                    None => LambdaError::new(
                        ErrorCode::InvalidRequestContent,
                        "Could not read the request body",
                    ),
                }
                .into());
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                seen = seen.saturating_add(data.len());
                if seen <= limit {
                    buf.extend_from_slice(&data);
                } else if seen > MAX_DRAIN_BYTES {
                    break;
                }
            }
        }
    }
    if seen > limit {
        return Err(too_large().into());
    }
    Ok(buf.freeze())
}

async fn read_management_body(
    headers: &HeaderMap,
    body: Body,
    op: &str,
) -> Result<Bytes, ApiError> {
    read_limited_body(headers, body, MAX_MANAGEMENT_BODY_BYTES, op).await
}

async fn read_settings_body(headers: &HeaderMap, body: Body, op: &str) -> Result<Bytes, ApiError> {
    read_limited_body(headers, body, MAX_SETTINGS_BODY_BYTES, op).await
}

async fn read_limited_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    op: &str,
) -> Result<Bytes, ApiError> {
    read_body(headers, body, limit, || {
        LambdaError::new(
            ErrorCode::RequestTooLarge,
            format!("Request must be smaller than {limit} bytes for the {op} operation"),
        )
    })
    .await
}

/// The error a request body gives when it did not arrive by its deadline
/// ([`body_deadline`]); the limit it broke.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
struct BodyTimedOut(std::time::Duration);

/// A request body that fails with [`BodyTimedOut`] once its deadline passes.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: std::time::Duration,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::BoxError>>> {
        use std::task::Poll;
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(axum::BoxError::from))),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut(this.limit).into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: a request's whole body must arrive within `limit` of the
/// request head; a handler reading it later gets 408
/// `RequestTimeoutException` and the connection is closed (a client that
/// never finishes its body cannot hold a connection).
pub async fn body_deadline(limit: std::time::Duration, req: Request, next: Next) -> Response {
    let (parts, inner) = req.into_parts();
    let body = Body::new(DeadlineBody {
        inner,
        deadline: Box::pin(tokio::time::sleep(limit)),
        limit,
    });
    next.run(Request::from_parts(parts, body)).await
}

/// Only requests signed by an account's key get past this (AWS Signature
/// Version 4, [`thaw_auth::Accounts::verify`]); `/healthz` is open. The
/// signature is looked at before the body is read, so an unsigned or
/// unknown-key request is refused without reading its body; a signed one is
/// read whole (up to the largest route's limit, within the body deadline),
/// verified, and handed on with its [`thaw_auth::Caller`] in the request's
/// extensions. Refusals are Lambda's: 403 `MissingAuthenticationToken`,
/// `UnrecognizedClient`, `InvalidSignature`; 400 `IncompleteSignature`.
pub async fn authenticate(
    accounts: Arc<thaw_auth::Accounts>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let refuse = |d: thaw_auth::Denied, parts: &axum::http::request::Parts| {
        tracing::info!(method = %parts.method, path = %parts.uri.path(), code = d.code, "request refused: {}", d.message);
        let mut e = LambdaError::new(ErrorCode::parse(d.code), d.message);
        e.status = d.status;
        ApiError(e).into_response()
    };
    let pending = match accounts.precheck(&parts) {
        Ok(p) => p,
        Err(d) => return refuse(d, &parts),
    };
    let limit = signed_body_limit(&parts.method, parts.uri.path());
    let bytes = match read_body(&parts.headers, body, limit, || {
        LambdaError::new(
            ErrorCode::RequestTooLarge,
            format!("Request must be smaller than {limit} bytes"),
        )
    })
    .await
    {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match pending.verify(&parts, &bytes, chrono::Utc::now()) {
        Ok(caller) => {
            parts.extensions.insert(caller);
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(d) => refuse(d, &parts),
    }
}

/// The most of a signed request's body [`authenticate`] reads to verify it:
/// the code-carrying operations' limit for `CreateFunction` and
/// `UpdateFunctionCode`, else the largest limit of any other route (an
/// invocation's or a snapshot's event), so that a signed request is never
/// buffered far beyond what its route accepts (the route then applies its
/// own, possibly smaller, limit).
fn signed_body_limit(method: &Method, path: &str) -> usize {
    let functions = "/2015-03-31/functions";
    let code = (method == Method::POST && path.trim_end_matches('/') == functions)
        || (method == Method::PUT && path.starts_with(functions) && path.ends_with("/code"));
    if code {
        MAX_MANAGEMENT_BODY_BYTES
    } else {
        MAX_SNAPSHOT_EVENT_BYTES.max(thaw_api::invoke::MAX_SYNC_PAYLOAD_BYTES)
    }
}

/// 503 `ServiceException` when the host is too short of disk for work that
/// writes to it: nothing was changed, the caller may retry later.
fn require_disk<B: ApiBackend>(b: &B, what: &str) -> Result<(), ApiError> {
    b.room_on_disk().map_err(|low| {
        tracing::warn!("{what} refused: {low}");
        ApiError(
            LambdaError::new(
                ErrorCode::Service,
                format!(
                    "{low}: {what} was refused and nothing was changed; retry when room is freed"
                ),
            )
            .with_status(503),
        )
    })
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError(LambdaError::unparsable_body(e)))
}

/// Run registry work (file I/O, unzipping) off the async threads.
async fn with_registry<B: ApiBackend, T: Send + 'static>(
    backend: &B,
    work: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    let b = backend.clone();
    match tokio::task::spawn_blocking(move || work(b.registry())).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => {
            tracing::error!(error = %e, "registry task failed");
            Err(ApiError::internal("The registry task failed"))
        }
    }
}

fn lookup<B: ApiBackend>(backend: &B, target: &Target) -> Result<FunctionRecord, ApiError> {
    backend
        .registry()
        .get(&target.key)
        .ok_or_else(|| ApiError(target.not_found()))
}

/// Lambda's view of a stored function.
fn configuration(r: &FunctionRecord) -> Result<FunctionConfiguration, ApiError> {
    let name = r.function_name();
    let settings = r.settings();
    match (name, settings) {
        (Ok(name), Ok(settings)) => Ok(FunctionConfiguration::latest_in(
            r.account(),
            &name,
            &settings,
            r.code_info(),
        )),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(function = %r.name, error = %e, "stored function record is invalid");
            Err(ApiError::internal("The stored function record is invalid"))
        }
    }
}

/// The page size a list operation's `MaxItems` asks for (1-10000, as Lambda
/// checks it), at most [`MAX_LIST_PAGE`].
fn page_size(query: &QueryMap) -> Result<usize, ApiError> {
    match query.get("MaxItems") {
        None => Ok(MAX_LIST_PAGE),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=10_000).contains(&n) => Ok(usize::try_from(n)
                .unwrap_or(MAX_LIST_PAGE)
                .min(MAX_LIST_PAGE)),
            _ => Err(LambdaError::validation(
                s,
                "maxItems",
                "Member must have value between 1 and 10000",
            )
            .into()),
        },
    }
}

fn span(op: &'static str, name: &Target) -> tracing::Span {
    tracing::info_span!("api", op, function = %name)
}

fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

// ---------------------------------------------------------------------------
// Management

async fn create_function<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_management_body(&headers, body, "CreateFunction").await?;
    let req: CreateFunctionRequest = parse_json(&bytes)?;
    drop(bytes);
    let publish = req.publish == Some(true);
    let new = req.validate()?;
    require_disk(&b, "CreateFunction")?;
    let span = span("CreateFunction", &scope.function(new.name.clone()));
    let mut create = CreateFunction::from(new);
    create.account = scope.account().to_string();
    let record = with_registry(&b, move |r| r.create(create))
        .instrument(span.clone())
        .await?;
    b.function_changed(&record);
    if publish {
        // Lambda answers with version 1's configuration.
        let target = scope.function(record.function_name()?);
        let v = versions::publish(&b, &target, Default::default())
            .instrument(span)
            .await?;
        return Ok((
            StatusCode::CREATED,
            Json(versions::version_configuration(&v)?),
        )
            .into_response());
    }
    Ok((StatusCode::CREATED, Json(configuration(&record)?)).into_response())
}

async fn list_functions<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    query: QueryMap,
) -> Result<Json<ListFunctionsResponse>, ApiError> {
    let max = page_size(&query)?;
    let marker = query.get("Marker").unwrap_or_default();
    // The caller's functions, in name order; the marker is a name.
    let mut after: Vec<FunctionRecord> = b
        .registry()
        .list()
        .into_iter()
        .filter(|f| scope.owns(&f.name) && f.short_name() > marker)
        .collect();
    after.sort_by(|a, z| a.short_name().cmp(z.short_name()));
    let more = after.len() > max;
    after.truncate(max);
    let next_marker = if more {
        after.last().map(|f| f.short_name().to_string())
    } else {
        None
    };
    let functions = after
        .iter()
        .map(configuration)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(ListFunctionsResponse {
        functions,
        next_marker,
    }))
}

async fn get_function<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
    headers: HeaderMap,
) -> Result<Json<GetFunctionResponse>, ApiError> {
    let (name, q) = scope.resolve_qualified(target, query.get("Qualifier"))?;
    let record = versions::lookup_qualified(&b, &name, &q)?;
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ']))
        .unwrap_or("localhost");
    let code_query = match record.version {
        Some(n) => format!("?Qualifier={n}"),
        None => String::new(),
    };
    Ok(Json(GetFunctionResponse {
        configuration: qualified_configuration(&record, &name, &q)?,
        code: FunctionCodeLocation {
            repository_type: "S3".into(),
            location: format!(
                "http://{host}/thaw/v1/functions/{}/code{code_query}",
                name.name
            ),
        },
        concurrency: record.concurrency.reserved.map(|n| thaw_api::Concurrency {
            reserved_concurrent_executions: Some(n),
        }),
        tags: (!record.tags.is_empty()).then(|| record.tags.clone()),
    }))
}

async fn get_function_configuration<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
) -> Result<Json<FunctionConfiguration>, ApiError> {
    let (name, q) = scope.resolve_qualified(target, query.get("Qualifier"))?;
    let record = versions::lookup_qualified(&b, &name, &q)?;
    Ok(Json(qualified_configuration(&record, &name, &q)?))
}

/// The configuration of the record `q` named: a version's, with the
/// alias's ARN when an alias named it (as Lambda answers).
fn qualified_configuration(
    record: &FunctionRecord,
    target: &Target,
    q: &thaw_api::versions::Qualifier,
) -> Result<FunctionConfiguration, ApiError> {
    let mut c = versions::version_configuration(record)?;
    if matches!(q, thaw_api::versions::Qualifier::Alias(_)) {
        c.function_arn =
            thaw_api::versions::qualified_arn(&target.account, target.name.as_str(), q);
    }
    Ok(c)
}

async fn update_function_code<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<FunctionConfiguration>, ApiError> {
    let name = scope.resolve(target, None)?;
    let bytes = read_management_body(&headers, body, "UpdateFunctionCode").await?;
    let mut req: UpdateFunctionCodeRequest = parse_json(&bytes)?;
    drop(bytes);
    let zip = req.take_zip()?;
    let span = span("UpdateFunctionCode", &name);
    if req.dry_run == Some(true) {
        let record = lookup(&b, &name)?;
        with_registry(&b, move |r| r.check_code(&zip))
            .instrument(span)
            .await?;
        return Ok(Json(configuration(&record)?));
    }
    require_disk(&b, "UpdateFunctionCode")?;
    let n = name.clone();
    let revision = req.revision_id.take();
    let record = with_registry(&b, move |r| {
        r.update_code(n.key.as_str(), &zip, revision.as_deref())
    })
    .instrument(span.clone())
    .await?;
    b.retire(name.key.as_str()).instrument(span.clone()).await;
    b.function_changed(&record);
    if req.publish == Some(true) {
        let v = versions::publish(&b, &name, Default::default())
            .instrument(span)
            .await?;
        return Ok(Json(versions::version_configuration(&v)?));
    }
    Ok(Json(configuration(&record)?))
}

async fn update_function_configuration<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<FunctionConfiguration>, ApiError> {
    let name = scope.resolve(target, None)?;
    let bytes = read_settings_body(&headers, body, "UpdateFunctionConfiguration").await?;
    let req: UpdateFunctionConfigurationRequest = parse_json(&bytes)?;
    let span = span("UpdateFunctionConfiguration", &name);
    let n = name.clone();
    let record = with_registry(&b, move |r| {
        r.update_configuration(n.key.as_str(), req.revision_id.as_deref(), |cur| {
            req.apply_to(cur)
        })
    })
    .instrument(span.clone())
    .await?;
    b.retire(name.key.as_str()).instrument(span).await;
    b.function_changed(&record);
    Ok(Json(configuration(&record)?))
}

async fn delete_function<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
) -> Result<StatusCode, ApiError> {
    let explicit = target.qualifier.is_some() || query.get("Qualifier").is_some();
    let (name, q) = scope.resolve_qualified(target, query.get("Qualifier"))?;
    let span = span("DeleteFunction", &name);
    match q {
        thaw_api::versions::Qualifier::Latest if explicit => {
            return Err(LambdaError::invalid_parameter(
                "$LATEST version cannot be deleted without deleting the function.",
            )
            .into())
        }
        thaw_api::versions::Qualifier::Latest => {}
        thaw_api::versions::Qualifier::Version(v) => {
            let n = name.clone();
            let gone = with_registry(&b, move |r| r.delete_version(n.key.as_str(), v))
                .instrument(span.clone())
                .await?;
            if let Some(latest) = b.registry().get(name.key.as_str()) {
                b.concurrency_changed(&latest);
            }
            let key = gone.instance_key();
            let config = crate::events::config_key(name.key.as_str(), Some(&v.to_string()));
            let cleanup = async move {
                if let Err(e) = b.events().delete_invoke_config(&config).await {
                    tracing::warn!(error = %e, "cannot remove the version's event invoke configuration");
                }
                b.retire(&key).await;
                if let Err(e) = b.delete_snapshots(&key) {
                    tracing::warn!(error = %e, "cannot delete the version's snapshots");
                }
            }
            .instrument(span);
            if tokio::spawn(cleanup).await.is_err() {
                tracing::error!("the clean-up of a deleted version failed");
            }
            return Ok(StatusCode::NO_CONTENT);
        }
        thaw_api::versions::Qualifier::Alias(_) => {
            return Err(LambdaError::invalid_parameter(
                "Deletion of aliases is not supported by DeleteFunction: use DeleteAlias",
            )
            .into())
        }
    }
    let versions = b.registry().versions(name.key.as_str());
    let n = name.clone();
    with_registry(&b, move |r| r.delete(n.key.as_str()))
        .instrument(span.clone())
        .await?;
    b.function_removed(name.key.as_str());
    // Its own task: a client that hangs up must not leave the clean-up
    // half done (queued events, instances, logs, snapshots).
    let key = name.key.clone();
    let cleanup = async move {
        if let Err(e) = b.events().remove_function(&key).await {
            tracing::error!(error = %e, "cannot remove the function's queued events");
        }
        b.retire(&key).await;
        b.delete_logs(&key);
        if let Err(e) = b.delete_snapshots(&key) {
            tracing::warn!(error = %e, "cannot delete the function's snapshots");
        }
        for v in versions {
            let vkey = v.instance_key();
            b.retire(&vkey).await;
            if let Err(e) = b.delete_snapshots(&vkey) {
                tracing::warn!(error = %e, "cannot delete a version's snapshots");
            }
        }
    }
    .instrument(span);
    if tokio::spawn(cleanup).await.is_err() {
        tracing::error!("the clean-up of a deleted function failed");
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------
// Concurrency controls (reserved, provisioned, account settings)

/// Reservations of `account`'s other functions, and the provisioned
/// concurrency of those without one (both taken from the account's
/// unreserved pool; every account has its own, [`crate::admission`]).
fn set_aside(account: &str, others: &[&FunctionRecord]) -> (u64, u64) {
    let others: Vec<&&FunctionRecord> = others.iter().filter(|f| f.account() == account).collect();
    let reserved = others
        .iter()
        .filter_map(|f| f.concurrency.reserved)
        .map(u64::from)
        .sum();
    let provisioned = others
        .iter()
        .filter(|f| f.concurrency.reserved.is_none())
        .map(|f| u64::from(f.concurrency.total_provisioned()))
        .sum();
    (reserved, provisioned)
}

/// `PutFunctionConcurrency`: reserve concurrency for the function (0 turns
/// it off: every invocation is throttled).
async fn put_function_concurrency<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<thaw_api::Concurrency>, ApiError> {
    let name = scope.resolve(target, None)?;
    let bytes = read_settings_body(&headers, body, "PutFunctionConcurrency").await?;
    let req: thaw_api::PutFunctionConcurrencyRequest = parse_json(&bytes)?;
    let n = req.validate()?;
    let limit = b.account_concurrency();
    let n2 = name.clone();
    let record = with_registry(&b, move |r| {
        r.update_concurrency(n2.key.as_str(), |cur, others| {
            let (reserved, provisioned) = set_aside(&n2.account, others);
            thaw_api::concurrency::check_reservation(limit, reserved, provisioned, n)?;
            if !cur.provisioned.is_empty() {
                thaw_api::concurrency::check_provisioned(cur.total_provisioned(), Some(n))?;
            }
            let mut c = cur.clone();
            c.reserved = Some(n);
            Ok(c)
        })
    })
    .instrument(span("PutFunctionConcurrency", &name))
    .await?;
    b.concurrency_changed(&record);
    Ok(Json(thaw_api::Concurrency {
        reserved_concurrent_executions: Some(n),
    }))
}

/// `GetFunctionConcurrency`: `{}` when the function has no reservation.
async fn get_function_concurrency<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
) -> Result<Json<thaw_api::Concurrency>, ApiError> {
    let name = scope.resolve(target, None)?;
    let record = lookup(&b, &name)?;
    Ok(Json(thaw_api::Concurrency {
        reserved_concurrent_executions: record.concurrency.reserved,
    }))
}

/// `DeleteFunctionConcurrency` (204): the function shares the unreserved
/// pool again.
async fn delete_function_concurrency<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
) -> Result<StatusCode, ApiError> {
    let name = scope.resolve(target, None)?;
    let limit = b.account_concurrency();
    let n2 = name.clone();
    let record = with_registry(&b, move |r| {
        r.update_concurrency(n2.key.as_str(), |cur, others| {
            let mut c = cur.clone();
            c.reserved = None;
            // Its provisioned concurrency now comes out of the unreserved pool.
            if !cur.provisioned.is_empty() {
                let (reserved, provisioned) = set_aside(&n2.account, others);
                check_provisioned_unreserved(
                    limit,
                    reserved,
                    provisioned,
                    cur.total_provisioned(),
                )?;
            }
            Ok(c)
        })
    })
    .instrument(span("DeleteFunctionConcurrency", &name))
    .await?;
    b.concurrency_changed(&record);
    Ok(StatusCode::NO_CONTENT)
}

/// Provisioned concurrency of a function without a reservation comes out of
/// the unreserved pool, which must keep its minimum.
fn check_provisioned_unreserved(
    limit: u32,
    reserved: u64,
    provisioned: u64,
    requested: u32,
) -> Result<(), LambdaError> {
    thaw_api::concurrency::check_reservation(limit, reserved, provisioned, requested).map_err(|_| {
        LambdaError::invalid_parameter(format!(
            "Specified ProvisionedConcurrentExecutions for function decreases account's UnreservedConcurrentExecution below its minimum value of [{}].",
            thaw_api::concurrency::min_unreserved(limit)
        ))
    })
}

/// `GetAccountSettings` of the caller's account: its limit, what its
/// functions set aside from it, its usage.
async fn account_settings<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
) -> Json<thaw_api::AccountSettings> {
    let all = b.registry().list();
    let own: Vec<&FunctionRecord> = all.iter().filter(|f| scope.owns(&f.name)).collect();
    let (reserved, provisioned) = set_aside(scope.account(), &own);
    Json(thaw_api::AccountSettings::new(
        b.account_concurrency(),
        reserved,
        provisioned,
        thaw_api::AccountUsage {
            total_code_size: own.iter().map(|f| f.code_size).sum(),
            function_count: own.len() as u64,
        },
    ))
}

/// The configuration of `record` (`$LATEST`'s) on `qualifier` as Lambda
/// reports it.
fn provisioned_config<B: ApiBackend>(
    b: &B,
    record: &FunctionRecord,
    qualifier: &str,
) -> Option<thaw_api::ProvisionedConcurrencyConfig> {
    let p = record.concurrency.provisioned.get(qualifier)?;
    let view = b.provisioned_view(record, qualifier);
    Some(thaw_api::ProvisionedConcurrencyConfig {
        requested_provisioned_concurrent_executions: p.requested,
        available_provisioned_concurrent_executions: view.available,
        allocated_provisioned_concurrent_executions: view.available,
        status: view.status,
        status_reason: view.reason,
        last_modified: p.last_modified.clone(),
    })
}

/// The qualifier of a provisioned concurrency operation, checked to name a
/// version or alias that exists (none: `$LATEST`, see the module
/// documentation).
fn provisioned_qualifier<B: ApiBackend>(
    b: &B,
    scope: &Scope,
    target: FunctionRef,
    query: &QueryMap,
) -> Result<(Target, String), ApiError> {
    let (name, q) = scope.resolve_qualified(target, query.get("Qualifier"))?;
    versions::lookup_qualified(b, &name, &q)?;
    Ok((name, q.to_string()))
}

/// `PutProvisionedConcurrencyConfig` (202) on a version, an alias or
/// `$LATEST`.
async fn put_provisioned_concurrency<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (name, qualifier) = provisioned_qualifier(&b, &scope, target, &query)?;
    let bytes = read_settings_body(&headers, body, "PutProvisionedConcurrencyConfig").await?;
    let req: thaw_api::PutProvisionedConcurrencyConfigRequest = parse_json(&bytes)?;
    let n = req.validate()?;
    let max = b.max_provisioned();
    if n > max {
        return Err(LambdaError::invalid_parameter(format!(
            "Specified ProvisionedConcurrentExecutions {n} is more than this daemon runs for one function ({max}, thaw serve --max-instances)"
        ))
        .into());
    }
    let limit = b.account_concurrency();
    let (n2, q2) = (name.clone(), qualifier.clone());
    let record = with_registry(&b, move |r| {
        r.update_concurrency(n2.key.as_str(), |cur, others| {
            let mut c = cur.clone();
            // The function's other configurations count too.
            c.provisioned.remove(&q2);
            let rest = c.total_provisioned();
            match cur.reserved {
                Some(reserved) => thaw_api::concurrency::check_provisioned(
                    rest.saturating_add(n),
                    Some(reserved),
                )?,
                None => {
                    let (reserved, provisioned) = set_aside(&n2.account, others);
                    check_provisioned_unreserved(
                        limit,
                        reserved,
                        provisioned + u64::from(rest),
                        n,
                    )?;
                }
            }
            c.provisioned.insert(
                q2,
                crate::registry::ProvisionedSetting {
                    requested: n,
                    last_modified: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%z").to_string(),
                },
            );
            Ok(c)
        })
    })
    .instrument(span("PutProvisionedConcurrencyConfig", &name))
    .await?;
    b.concurrency_changed(&record);
    let config = provisioned_config(&b, &record, &qualifier)
        .ok_or_else(|| ApiError::internal("The configuration was not stored"))?;
    Ok((StatusCode::ACCEPTED, Json(config)).into_response())
}

/// `GetProvisionedConcurrencyConfig`, or with `List=ALL`
/// `ListProvisionedConcurrencyConfigs` (one path, as in Lambda).
async fn get_provisioned_concurrency<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
) -> Result<Response, ApiError> {
    if query.get("List").is_some() {
        let name = scope.resolve(target, None)?;
        if let Some(s) = query.get("MaxItems") {
            if !matches!(s.parse::<i64>(), Ok(1..=50)) {
                return Err(LambdaError::validation(
                    s,
                    "maxItems",
                    "Member must have value less than or equal to 50",
                )
                .into());
            }
        }
        let record = lookup(&b, &name)?;
        let items = record
            .concurrency
            .provisioned
            .keys()
            .filter_map(|q| {
                provisioned_config(&b, &record, q).map(|config| {
                    thaw_api::ProvisionedConcurrencyConfigListItem {
                        function_arn: format!("{}:{q}", name.arn()),
                        config,
                    }
                })
            })
            .collect();
        return Ok(Json(thaw_api::ListProvisionedConcurrencyConfigsResponse {
            provisioned_concurrency_configs: items,
            next_marker: None,
        })
        .into_response());
    }
    let (name, qualifier) = provisioned_qualifier(&b, &scope, target, &query)?;
    let record = lookup(&b, &name)?;
    let config = provisioned_config(&b, &record, &qualifier)
        .ok_or_else(|| ApiError(thaw_api::concurrency::provisioned_config_not_found()))?;
    Ok(Json(config).into_response())
}

/// `DeleteProvisionedConcurrencyConfig` (204). The instances it kept stay
/// idle and are reaped after the keep-alive like any others.
async fn delete_provisioned_concurrency<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
) -> Result<StatusCode, ApiError> {
    let (name, qualifier) = provisioned_qualifier(&b, &scope, target, &query)?;
    let n2 = name.clone();
    let record = with_registry(&b, move |r| {
        r.update_concurrency(n2.key.as_str(), |cur, _| {
            let mut c = cur.clone();
            c.provisioned.remove(&qualifier);
            Ok(c)
        })
    })
    .instrument(span("DeleteProvisionedConcurrencyConfig", &name))
    .await?;
    b.concurrency_changed(&record);
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------
// Invoke

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            ApiError(LambdaError::new(
                ErrorCode::InvalidRequestContent,
                format!("Header {name} is not valid text"),
            ))
        }),
    }
}

/// The validated headers of an Invoke request.
struct InvokeHeaders {
    kind: InvocationType,
    tail: bool,
    client_context: Option<String>,
}

fn invoke_headers(headers: &HeaderMap) -> Result<InvokeHeaders, ApiError> {
    let kind = match header_str(headers, INVOCATION_TYPE_HEADER)? {
        Some(s) => InvocationType::parse(s)?,
        None => InvocationType::RequestResponse,
    };
    let tail = match header_str(headers, LOG_TYPE_HEADER)? {
        Some(s) => parse_log_type(s)?,
        None => false,
    };
    let client_context = header_str(headers, CLIENT_CONTEXT_HEADER)?
        .map(decode_client_context)
        .transpose()?;
    Ok(InvokeHeaders {
        kind,
        tail,
        client_context,
    })
}

fn set_header(resp: &mut Response, name: &str, value: &str) {
    // `from_bytes` lower-cases the name as HTTP/2 requires.
    match (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        (Ok(n), Ok(v)) => {
            resp.headers_mut().insert(n, v);
        }
        _ => tracing::warn!(header = name, "response header is not valid; dropped"),
    }
}

async fn invoke<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (name, q) = scope.resolve_qualified(target, query.get("Qualifier"))?;
    let h = invoke_headers(&headers)?;
    let kind = h.kind;
    let payload = read_body(&headers, body, kind.max_payload_bytes(), || {
        payload_too_large(kind)
    })
    .await?;
    let (record, invoked_arn) = versions::for_invocation(&b, &name, &q)?;
    validate_payload(&payload, kind)?;
    // Lambda hands a function `{}` when it was invoked without a payload.
    let payload = if payload.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        payload
    };
    let input = InvokeInput {
        payload,
        client_context: h.client_context,
        tail_logs: h.tail && kind == InvocationType::RequestResponse,
        request_id: None,
        invoked_arn,
    };
    let span = span("Invoke", &name);

    match kind {
        InvocationType::DryRun => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            set_header(&mut resp, REQUEST_ID_HEADER, &new_request_id());
            Ok(resp)
        }
        InvocationType::Event => {
            let qualifier = (!q.is_latest()).then(|| q.to_string());
            events::accept(&b, &name, qualifier, input)
                .instrument(span)
                .await
        }
        InvocationType::RequestResponse => {
            let record_version = record.version_label();
            // Its own task: a client that hangs up must not cancel an invocation
            // halfway (the instance would be dropped mid-use).
            let task = {
                let b = b.clone();
                let span = span.clone();
                tokio::spawn(async move { b.invoke(&record, input).instrument(span).await })
            };
            let outcome = match task.await {
                Ok(r) => r.map_err(|e| {
                    let _enter = span.enter();
                    invoke_error(e)
                })?,
                Err(join) => {
                    let _enter = span.enter();
                    tracing::error!(error = %join, "invocation task failed");
                    return Err(ApiError(LambdaError::new(
                        ErrorCode::Service,
                        "The invocation failed inside the daemon",
                    )));
                }
            };
            let mut resp = invoke_response(outcome);
            set_header(&mut resp, EXECUTED_VERSION_HEADER, &record_version);
            Ok(resp)
        }
    }
}

fn log_invoke_error(e: &InvokeError, what: &str) {
    match e {
        InvokeError::TooManyRequests(_) => tracing::warn!(error = %e, "{what}"),
        InvokeError::Throttled(t) => tracing::info!(reason = t.reason(), "{what}: throttled"),
        InvokeError::ShuttingDown => tracing::info!(error = %e, "{what}"),
        // Handled here: the caller gets a 500, a human must look.
        InvokeError::Sandbox(_) | InvokeError::InstanceLost(_) | InvokeError::NoAddress(_) => {
            tracing::error!(error = %error_chain(e), "{what}")
        }
    }
}

fn invoke_error(e: InvokeError) -> ApiError {
    log_invoke_error(&e, "invocation failed");
    ApiError(match &e {
        InvokeError::TooManyRequests(_) => {
            LambdaError::new(ErrorCode::TooManyRequests, e.to_string())
                .with_reason("ConcurrentInvocationLimitExceeded")
        }
        InvokeError::Throttled(t) => {
            LambdaError::new(ErrorCode::TooManyRequests, e.to_string()).with_reason(t.reason())
        }
        InvokeError::ShuttingDown => {
            LambdaError::new(ErrorCode::Service, e.to_string()).with_status(503)
        }
        InvokeError::Sandbox(_) | InvokeError::InstanceLost(_) => {
            LambdaError::new(ErrorCode::Service, e.to_string())
        }
        InvokeError::NoAddress(_) => {
            LambdaError::new(ErrorCode::SubnetIpAddressLimitReached, e.to_string())
        }
    })
}

fn invoke_response(out: InvokeOutcome) -> Response {
    let timing = ServerTiming {
        sandbox_ms: out.timings.sandbox_ms,
        network_ms: out.timings.network_ms,
        runtime_ms: out.timings.runtime_ms,
        init_ms: out.timings.init_ms,
        invoke_ms: out.timings.invoke_ms,
        restore_ms: out.timings.restore_ms,
        memory_ms: out.timings.memory_ms,
        hooks_ms: out.timings.hooks_ms,
    };
    let mut resp = (StatusCode::OK, out.payload).into_response();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    set_header(
        &mut resp,
        EXECUTED_VERSION_HEADER,
        thaw_api::function::LATEST,
    );
    set_header(&mut resp, REQUEST_ID_HEADER, &out.request_id);
    set_header(&mut resp, THAW_START_HEADER, out.start.as_str());
    set_header(&mut resp, SERVER_TIMING_HEADER, &timing.to_string());
    if let Some(m) = &out.memory {
        let info = thaw_api::invoke::MemoryInfo {
            mode: if m.working_set == "clone" {
                "clone"
            } else if !m.lazy {
                "eager"
            } else if m.working_set == "used" {
                "working-set"
            } else {
                "lazy"
            }
            .into(),
            working_set: m.working_set.clone(),
            prefetched_pages: m.prefetched_pages,
            prefetch_ms: m.prefetch_us as f64 / 1000.0,
            faults: m.faults,
            fault_pages: m.fault_pages,
            bytes_read: m.bytes_read,
            recorded: m.recorded,
        };
        set_header(
            &mut resp,
            thaw_api::invoke::THAW_MEMORY_HEADER,
            &info.to_string(),
        );
    }
    if let Some(fe) = &out.function_error {
        set_header(&mut resp, FUNCTION_ERROR_HEADER, fe);
    }
    if let Some(tail) = &out.log_tail {
        set_header(&mut resp, LOG_RESULT_HEADER, &STANDARD.encode(tail));
    }
    resp
}

// ---------------------------------------------------------------------------
// thaw's own endpoints

/// `GET /thaw/v1/functions/{name}/snapshot`: where the function's snapshot
/// stands (queued, building and in which phase, ready, failed and why).
async fn snapshot_status<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
) -> Result<Json<thaw_api::SnapshotStatus>, ApiError> {
    let (name, q) = scope.resolve_qualified(target, query.get("Qualifier"))?;
    let f = versions::lookup_qualified(&b, &name, &q)?;
    Ok(Json(b.snapshot_status(&f)))
}

/// `GET /thaw/v1/snapshots`: the snapshot status of each of the caller's
/// functions and their published versions (`NAME:N`).
async fn list_snapshots<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
) -> Json<Vec<thaw_api::SnapshotStatus>> {
    let mut all: Vec<_> = b
        .registry()
        .list_all()
        .iter()
        .filter(|f| scope.owns(&f.name))
        .map(|f| b.snapshot_status(f))
        .collect();
    all.sort_by(|a, z| a.function.cmp(&z.function));
    Json(all)
}

/// `POST /thaw/v1/functions/{name}/snapshot`: snapshot the function after a
/// test invocation with the request body as its event (default: the code's
/// `thaw-test-event.json`, else `{}`). With `?wait=false`, queue the build
/// and answer `202` with the status at once.
async fn create_snapshot<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = scope.resolve(target, None)?;
    let f = lookup(&b, &name)?;
    // Read and checked before anything starts: a bad event is the
    // caller's error and must not cost a sandbox.
    let body =
        read_limited_body(&headers, body, MAX_SNAPSHOT_EVENT_BYTES, "CreateSnapshot").await?;
    if query.get("wait") == Some("false") {
        b.queue_snapshot(&f)?;
        return Ok((StatusCode::ACCEPTED, Json(b.snapshot_status(&f))).into_response());
    }
    require_disk(&b, "CreateSnapshot")?;
    let payload = if body.is_empty() {
        crate::pipeline::test_event(&f)
            .map_err(|e| ApiError(LambdaError::new(ErrorCode::InvalidParameterValue, e)))?
    } else {
        serde_json::from_slice::<serde::de::IgnoredAny>(&body)
            .map_err(|e| ApiError(LambdaError::unparsable_body(e)))?;
        body
    };
    let span = span("CreateSnapshot", &name);
    let bg = b.clone();
    // In its own task: a client hanging up must not leave a half-made snapshot.
    let report =
        tokio::spawn(async move { bg.create_snapshot(&f, payload).await }.instrument(span))
            .await
            .map_err(|e| {
                ApiError(LambdaError::new(
                    ErrorCode::Service,
                    format!("snapshot task failed: {e}"),
                ))
            })?
            .map_err(|e| {
                ApiError(LambdaError::new(
                    ErrorCode::Service,
                    format!("Cannot snapshot the function: {}", error_chain(&e)),
                ))
            })?;
    Ok(Json(report).into_response())
}

/// `POST /thaw/v1/functions/{name}/retire`: destroy the function's idle
/// instances (busy ones and standby sandboxes stay), so that the next
/// invocation gets a new instance: for benchmarks and operators.
async fn retire_instances<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
) -> Result<StatusCode, ApiError> {
    let name = scope.resolve(target, None)?;
    lookup(&b, &name)?;
    b.drop_idle(name.key.as_str())
        .instrument(span("RetireInstances", &name))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /thaw/v1/functions/{name}/snapshot`.
async fn delete_snapshot<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
) -> Result<StatusCode, ApiError> {
    let name = scope.resolve(target, None)?;
    lookup(&b, &name)?;
    let had = b.delete_snapshots(name.key.as_str()).map_err(|e| {
        ApiError(LambdaError::new(
            ErrorCode::Service,
            format!("Cannot delete the snapshot: {e}"),
        ))
    })?;
    if had {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError(LambdaError::new(
            ErrorCode::ResourceNotFound,
            format!("Function {} has no snapshot", name.name),
        )))
    }
}

/// `DELETE /thaw/v1/functions/{name}/snapshot/working-set`: the next
/// restore of the function's snapshot records its working set again (on
/// demand, e.g. after the function's traffic changed).
async fn rerecord_working_set<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
) -> Result<StatusCode, ApiError> {
    let name = scope.resolve(target, None)?;
    let f = lookup(&b, &name)?;
    let had = b.rerecord_working_set(&f).map_err(|e| {
        ApiError(LambdaError::new(
            ErrorCode::Service,
            format!("Cannot remove the working set: {e}"),
        ))
    })?;
    if had {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError(LambdaError::new(
            ErrorCode::ResourceNotFound,
            format!("Function {} has no working set", name.name),
        )))
    }
}

async fn function_logs<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
) -> Result<Json<Vec<thaw_api::LogRecord>>, ApiError> {
    let name = scope.resolve(target, None)?;
    lookup(&b, &name)?;
    let limit = match query.get("limit") {
        None => DEFAULT_LOG_LIMIT,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_LOG_LIMIT).contains(&n) => n,
            _ => {
                return Err(LambdaError::validation(
                    s,
                    "limit",
                    &format!("Member must have value between 1 and {MAX_LOG_LIMIT}"),
                )
                .into())
            }
        },
    };
    let request_id = query
        .get("request_id")
        .filter(|r| !r.is_empty())
        .map(str::to_string);
    let bg = b.clone();
    let records = tokio::task::spawn_blocking(move || {
        bg.read_logs(name.key.as_str(), request_id.as_deref(), limit)
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "log reader task failed");
        ApiError::internal("The log reader task failed")
    })?;
    Ok(Json(
        records
            .into_iter()
            .map(|r| thaw_api::LogRecord {
                ts_ms: r.ts_ms,
                request_id: r.request_id,
                stream: r.stream,
                line: r.line,
            })
            .collect(),
    ))
}

async fn function_code<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let (name, q) = scope.resolve_qualified(target, query.get("Qualifier"))?;
    let record = versions::lookup_qualified(&b, &name, &q)?;
    let path = b
        .registry()
        .code_zip_path_of(&record)
        .ok_or_else(|| ApiError(name.not_found()))?;
    match tokio::fs::read(&path).await {
        Ok(zip) => Ok(([(CONTENT_TYPE, "application/zip")], zip).into_response()),
        // Deleted between the lookup and the read.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError(name.not_found())),
        Err(e) => {
            tracing::error!(function = %name, path = %path.display(), error = %e, "cannot read code zip");
            Err(ApiError::internal("Cannot read the function's code"))
        }
    }
}

/// `GET /thaw/v1/functions/{name}/settings`: thaw's own settings of the
/// function (unset ones take the daemon's defaults).
async fn get_function_settings<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
) -> Result<Json<thaw_api::PlatformSettings>, ApiError> {
    let name = scope.resolve(target, None)?;
    Ok(Json(lookup(&b, &name)?.platform))
}

/// `PUT /thaw/v1/functions/{name}/settings`: replaces them; the function's
/// instances are retired so every new one runs with them (its snapshot
/// stays: they decide how it is restored, not what it holds).
async fn put_function_settings<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<thaw_api::PlatformSettings>, ApiError> {
    let name = scope.resolve(target, None)?;
    let bytes = read_settings_body(&headers, body, "PutFunctionSettings").await?;
    // An object (serde would also take a JSON array for a struct).
    let object: serde_json::Map<String, serde_json::Value> = parse_json(&bytes)?;
    let settings: thaw_api::PlatformSettings =
        serde_json::from_value(serde_json::Value::Object(object))
            .map_err(|e| ApiError(LambdaError::unparsable_body(e)))?;
    settings.validate()?;
    if let Some(rules) = &settings.egress {
        thaw_net::EgressPolicy::parse(rules).map_err(|e| {
            ApiError(LambdaError::validation(
                &rules.join(","),
                "egress",
                &e.to_string(),
            ))
        })?;
    }
    let span = span("PutFunctionSettings", &name);
    let key = name.key.clone();
    let record = with_registry(&b, move |r| r.update_platform(&key, settings))
        .instrument(span.clone())
        .await?;
    b.retire(&name.key).instrument(span).await;
    Ok(Json(record.platform))
}

/// `POST /thaw/v1/store/drop-caches` (root: the caches hold every
/// account's snapshots).
async fn drop_store_caches<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
) -> Result<Response, ApiError> {
    scope.require_root("DropStoreCaches")?;
    Ok(axum::Json(serde_json::json!({ "store": b.drop_store_caches() })).into_response())
}

/// `GET /metrics` (root: the metrics name every account's functions).
async fn metrics<B: ApiBackend>(State(b): State<B>, scope: Scope) -> Result<Response, ApiError> {
    scope.require_root("GetMetrics")?;
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        b.render_metrics(),
    )
        .into_response())
}

async fn unknown_operation(method: Method, uri: Uri) -> ApiError {
    ApiError(LambdaError::new(
        ErrorCode::UnknownOperation,
        format!("Unknown operation: {method} {}", uri.path()),
    ))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError(
        LambdaError::new(
            ErrorCode::UnknownOperation,
            format!("Method {method} is not allowed on {}", uri.path()),
        )
        .with_status(405),
    )
}

/// One debug line per request, and a request id on every response.
async fn request_log(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let t0 = Instant::now();
    let mut resp = next.run(req).await;
    if !resp.headers().contains_key("x-amzn-requestid") {
        set_header(&mut resp, REQUEST_ID_HEADER, &new_request_id());
    }
    tracing::debug!(%method, path, status = resp.status().as_u16(), ms = t0.elapsed().as_secs_f64() * 1000.0, "request");
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn signed_bodies_are_read_up_to_their_routes_limit() {
        let f = "/2015-03-31/functions";
        assert_eq!(
            signed_body_limit(&Method::POST, f),
            MAX_MANAGEMENT_BODY_BYTES
        );
        assert_eq!(
            signed_body_limit(&Method::PUT, &format!("{f}/x/code")),
            MAX_MANAGEMENT_BODY_BYTES
        );
        let event = thaw_api::invoke::MAX_SYNC_PAYLOAD_BYTES;
        assert_eq!(
            signed_body_limit(&Method::POST, &format!("{f}/x/invocations")),
            event
        );
        assert_eq!(
            signed_body_limit(&Method::PUT, &format!("{f}/x/configuration")),
            event
        );
        assert_eq!(signed_body_limit(&Method::GET, "/metrics"), event);
        assert!(event < MAX_MANAGEMENT_BODY_BYTES);
    }

    use super::*;

    #[test]
    fn host_paths_are_redacted_from_server_errors_only() {
        assert_eq!(
            redact_host_paths("/data/x: full; cannot create \"/var/lib/thaw/f\" (at /tmp/a)"),
            "<path>: full; cannot create \"<path>\" (at <path>)"
        );
        assert_eq!(redact_host_paths("nothing here, 1/2"), "nothing here, 1/2");
        let resp = ApiError(LambdaError::new(
            ErrorCode::Service,
            "cannot write /srv/d/x",
        ))
        .into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let user =
            ApiError(LambdaError::invalid_parameter("Unsafe entry \"/etc/x\"")).into_response();
        assert_eq!(user.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn error_response_shape() {
        let resp = ApiError(LambdaError::function_not_found("nope")).into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            resp.headers().get(ERROR_TYPE_HEADER).unwrap(),
            "ResourceNotFoundException"
        );
        assert_eq!(
            resp.headers().get(CONTENT_TYPE).unwrap(),
            "application/json"
        );
    }

    #[test]
    fn registry_errors_map_to_lambda_codes() {
        let code = |e: RegistryError| {
            let ApiError(l) = e.into();
            (l.code, l.status)
        };
        assert_eq!(
            code(RegistryError::NotFound("f".into())),
            (ErrorCode::ResourceNotFound, 404)
        );
        assert_eq!(
            code(RegistryError::AlreadyExists("f".into())),
            (ErrorCode::ResourceConflict, 409)
        );
        assert_eq!(
            code(RegistryError::CodeTooLarge { limit: 1 }),
            (ErrorCode::InvalidParameterValue, 400)
        );
        assert_eq!(
            code(RegistryError::UnsafeEntry {
                entry: "../x".into(),
                reason: "r"
            }),
            (ErrorCode::InvalidParameterValue, 400)
        );
        assert_eq!(
            code(RegistryError::RevisionMismatch {
                expected: "a".into(),
                actual: "b".into()
            }),
            (ErrorCode::PreconditionFailed, 412)
        );
        assert_eq!(
            code(RegistryError::Io {
                op: "write",
                path: "/x".into(),
                source: std::io::Error::other("disk full"),
            }),
            (ErrorCode::Service, 500)
        );
    }

    #[test]
    fn invoke_errors_map_to_lambda_codes() {
        let ApiError(e) = invoke_error(InvokeError::TooManyRequests(8));
        assert_eq!(
            (e.code.clone(), e.status),
            (ErrorCode::TooManyRequests, 429)
        );
        assert_eq!(
            e.reason.as_deref(),
            Some("ConcurrentInvocationLimitExceeded")
        );
        let ApiError(e) = invoke_error(InvokeError::Throttled(
            crate::admission::Throttle::Reserved { limit: 0 },
        ));
        assert_eq!(
            (e.code.clone(), e.status, e.reason.as_deref()),
            (
                ErrorCode::TooManyRequests,
                429,
                Some("ReservedFunctionConcurrentInvocationLimitExceeded")
            )
        );
        assert_eq!(
            serde_json::to_value(e.body()).unwrap()["Reason"],
            "ReservedFunctionConcurrentInvocationLimitExceeded"
        );
        let ApiError(e) = invoke_error(InvokeError::Throttled(
            crate::admission::Throttle::Account { limit: 10 },
        ));
        assert_eq!(
            e.reason.as_deref(),
            Some("ConcurrentInvocationLimitExceeded")
        );
        let ApiError(e) = invoke_error(InvokeError::ShuttingDown);
        assert_eq!((e.code.clone(), e.status), (ErrorCode::Service, 503));
        let ApiError(e) = invoke_error(InvokeError::Sandbox(anyhow::anyhow!("boom")));
        assert_eq!((e.code, e.status), (ErrorCode::Service, 500));
    }
}
