//! Asynchronous invocation over HTTP: accepting an `Event` invocation into
//! the durable queue, the event invoke configuration operations, thaw's
//! view of a function's queue, and how the queue's dispatcher runs events
//! through the backend.

use super::*;
use crate::events::{
    config_key, Attempt, Deliver, EventQueue, InvokeConfig, QueueError, QueuedEvent,
};
use thaw_api::events::{
    FunctionEventInvokeConfig, ListFunctionEventInvokeConfigsResponse,
    PutFunctionEventInvokeConfigRequest,
};
use thaw_api::versions::Qualifier;

/// Accepts an `Event` invocation: on disk before the 202.
pub(super) async fn accept<B: ApiBackend>(
    b: &B,
    name: &Target,
    qualifier: Option<String>,
    input: InvokeInput,
) -> Result<Response, ApiError> {
    let request_id = new_request_id();
    if let Err(low) = b.room_on_disk() {
        tracing::warn!("event refused: {low}");
        return Err(ApiError(
            LambdaError::new(
                ErrorCode::Service,
                "The event cannot be accepted now: the host is low on disk space",
            )
            .with_status(503),
        ));
    }
    let payload = String::from_utf8(input.payload.to_vec()).map_err(|_| {
        ApiError(LambdaError::new(
            ErrorCode::InvalidRequestContent,
            "Could not parse request body into json: not UTF-8",
        ))
    })?;
    match b
        .events()
        .accept_qualified(
            name.key.as_str(),
            qualifier,
            request_id.clone(),
            payload,
            input.client_context,
        )
        .await
    {
        Ok(()) => {
            tracing::info!(api_request_id = %request_id, "event accepted");
            let mut resp = StatusCode::ACCEPTED.into_response();
            set_header(&mut resp, REQUEST_ID_HEADER, &request_id);
            Ok(resp)
        }
        Err(QueueError::Full(n)) => Err(ApiError(
            LambdaError::new(
                ErrorCode::TooManyRequests,
                format!("Rate exceeded: {n} events are waiting to run; try again later"),
            )
            .with_reason("EventQueueFull"),
        )),
        Err(e) => {
            tracing::error!(error = %e, "cannot queue the event");
            Err(ApiError(
                LambdaError::new(ErrorCode::Service, "The event could not be queued")
                    .with_status(503),
            ))
        }
    }
}

/// Starts running queued events through `backend` (the daemon calls it
/// once at start; tests of the router too).
pub fn start_event_delivery<B: ApiBackend>(backend: B) -> tokio::task::JoinHandle<()> {
    let queue = backend.events().clone();
    queue.start(Delivery(backend))
}

/// The queue's deliverer: the backend's invoke path.
struct Delivery<B>(B);

impl<B: ApiBackend> Deliver for Delivery<B> {
    async fn run(&self, ev: &QueuedEvent) -> Attempt {
        let Some(latest) = self.0.registry().get(&ev.function) else {
            return Attempt::Gone;
        };
        // A version or alias is resolved now (an alias may have moved
        // since the event was accepted); one deleted since cannot run it.
        let q = match ev
            .qualifier
            .as_deref()
            .map(thaw_api::versions::Qualifier::parse)
        {
            None => thaw_api::versions::Qualifier::Latest,
            Some(Ok(q)) => q,
            Some(Err(_)) => return Attempt::Gone,
        };
        let target = match latest.function_name() {
            Ok(n) => crate::accounts::Scope::of(latest.account()).function(n),
            Err(_) => return Attempt::Gone,
        };
        let Ok((record, invoked_arn)) = super::versions::for_invocation(&self.0, &target, &q)
        else {
            return Attempt::Gone;
        };
        let input = InvokeInput {
            payload: Bytes::from(ev.payload.clone()),
            client_context: ev.client_context.clone(),
            tail_logs: false,
            request_id: Some(ev.request_id.clone()),
            invoked_arn,
        };
        let result = self.0.invoke(&record, input).await;
        // Instances are torn down under a stopping daemon: whatever that
        // did to this run, it is not the function's failure.
        if self.0.events().stopping() {
            return Attempt::Stopping;
        }
        match result {
            Ok(out) => {
                tracing::info!(
                    function_error = out.function_error.as_deref(),
                    start = out.start.as_str(),
                    "event invocation finished"
                );
                Attempt::Ran {
                    payload: out.payload,
                    function_error: out.function_error,
                }
            }
            Err(InvokeError::ShuttingDown) => Attempt::Stopping,
            Err(e) => {
                log_invoke_error(&e, "event invocation not run");
                Attempt::NotRun(e.to_string())
            }
        }
    }

    fn exists(&self, key: &str) -> bool {
        self.0.registry().get(key).is_some()
    }

    fn arn(&self, key: &str) -> String {
        let (account, name) = crate::accounts::split_key(key);
        thaw_api::function::function_arn_in(account, name)
    }
}

fn queue_error(e: QueueError) -> ApiError {
    tracing::error!(error = %e, "event queue");
    ApiError::internal("The event queue failed")
}

/// The function key a destination ARN names: a function of the caller's
/// account other than `source`, that exists.
fn destination<B: ApiBackend>(
    b: &B,
    scope: &Scope,
    source: &Target,
    arn: &str,
) -> Result<String, ApiError> {
    let parsed = arn
        .starts_with("arn:")
        .then(|| FunctionRef::parse(arn).ok())
        .flatten()
        .filter(|r| {
            r.qualifier
                .as_deref()
                .is_none_or(|q| q == thaw_api::function::LATEST)
        })
        .filter(|r| r.account.as_deref() == Some(scope.account()))
        .ok_or_else(|| ApiError(thaw_api::events::unsupported_destination(arn)))?;
    let key = crate::accounts::function_key(scope.account(), parsed.name.as_str());
    if key == source.key {
        return Err(ApiError(LambdaError::invalid_parameter(format!(
            "The destination ARN {arn} is the function itself: its events would loop"
        ))));
    }
    if b.registry().get(&key).is_none() {
        return Err(ApiError(LambdaError::invalid_parameter(format!(
            "The destination ARN {arn} is invalid: the function does not exist"
        ))));
    }
    Ok(key)
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0)
}

/// `PutFunctionEventInvokeConfig` (replace) and
/// `UpdateFunctionEventInvokeConfig` (merge into the current one).
async fn put_or_update<B: ApiBackend>(
    b: &B,
    scope: &Scope,
    name: &Target,
    q: &Qualifier,
    req: PutFunctionEventInvokeConfigRequest,
    merge: bool,
) -> Result<Json<FunctionEventInvokeConfig>, ApiError> {
    req.validate()?;
    super::versions::lookup_qualified(b, name, q)?;
    let key = key_of(name, q);
    // Until the new configuration is stored: a concurrent update then
    // merges into this one instead of overwriting it.
    let _writing = b.events().config_update().await;
    let current = b.events().invoke_config(&key).map_err(queue_error)?;
    if merge && current.is_none() {
        return Err(ApiError(no_config(name, q)));
    }
    let base = current.filter(|_| merge);
    let mut config = base.as_ref().map(|c| c.config.clone()).unwrap_or_default();
    let (mut on_success, mut on_failure) = base
        .map(|c| (c.on_success, c.on_failure))
        .unwrap_or_default();
    if let Some(n) = req.maximum_retry_attempts {
        config.maximum_retry_attempts = Some(n as u32);
    }
    if let Some(n) = req.maximum_event_age_in_seconds {
        config.maximum_event_age_in_seconds = Some(n as u32);
    }
    if let Some(d) = req.destination_config {
        let mut merged = config.destination_config.take().unwrap_or_default();
        if let Some(t) = d.on_success {
            on_success = match t.destination.as_deref() {
                Some(arn) => Some(destination(b, scope, name, arn)?),
                None => None,
            };
            merged.on_success = t.destination.is_some().then_some(t);
        }
        if let Some(t) = d.on_failure {
            on_failure = match t.destination.as_deref() {
                Some(arn) => Some(destination(b, scope, name, arn)?),
                None => None,
            };
            merged.on_failure = t.destination.is_some().then_some(t);
        }
        config.destination_config = Some(merged);
    }
    config.function_arn = format!("{}:{q}", name.arn());
    config.last_modified = now_secs();
    b.events()
        .put_invoke_config(
            &key,
            InvokeConfig {
                config: config.clone(),
                on_success,
                on_failure,
            },
        )
        .await
        .map_err(queue_error)?;
    Ok(Json(config))
}

fn no_config(name: &Target, q: &Qualifier) -> LambdaError {
    LambdaError::new(
        ErrorCode::ResourceNotFound,
        format!(
            "The function {}:{q} doesn't have an EventInvokeConfig",
            name.arn()
        ),
    )
}

/// Where the configuration of `name`'s `q` is kept.
fn key_of(name: &Target, q: &Qualifier) -> String {
    config_key(&name.key, Some(&q.to_string()))
}

async fn read_config_request(
    headers: &HeaderMap,
    body: Body,
    op: &str,
) -> Result<PutFunctionEventInvokeConfigRequest, ApiError> {
    let bytes = read_settings_body(headers, body, op).await?;
    if bytes.is_empty() {
        return Ok(PutFunctionEventInvokeConfigRequest::default());
    }
    parse_json(&bytes)
}

pub(super) async fn put_config<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<FunctionEventInvokeConfig>, ApiError> {
    let (name, q) = scope.resolve_qualified(target, query.get("Qualifier"))?;
    let req = read_config_request(&headers, body, "PutFunctionEventInvokeConfig").await?;
    put_or_update(&b, &scope, &name, &q, req, false)
        .instrument(span("PutFunctionEventInvokeConfig", &name))
        .await
}

pub(super) async fn update_config<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<FunctionEventInvokeConfig>, ApiError> {
    let (name, q) = scope.resolve_qualified(target, query.get("Qualifier"))?;
    let req = read_config_request(&headers, body, "UpdateFunctionEventInvokeConfig").await?;
    put_or_update(&b, &scope, &name, &q, req, true)
        .instrument(span("UpdateFunctionEventInvokeConfig", &name))
        .await
}

pub(super) async fn get_config<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
) -> Result<Json<FunctionEventInvokeConfig>, ApiError> {
    let (name, q) = scope.resolve_qualified(target, query.get("Qualifier"))?;
    super::versions::lookup_qualified(&b, &name, &q)?;
    match b
        .events()
        .invoke_config(&key_of(&name, &q))
        .map_err(queue_error)?
    {
        Some(c) => Ok(Json(c.config)),
        None => Err(ApiError(no_config(&name, &q))),
    }
}

pub(super) async fn delete_config<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
) -> Result<StatusCode, ApiError> {
    let (name, q) = scope.resolve_qualified(target, query.get("Qualifier"))?;
    super::versions::lookup_qualified(&b, &name, &q)?;
    let key = key_of(&name, &q);
    if b.events()
        .invoke_config(&key)
        .map_err(queue_error)?
        .is_none()
    {
        return Err(ApiError(no_config(&name, &q)));
    }
    b.events()
        .delete_invoke_config(&key)
        .instrument(span("DeleteFunctionEventInvokeConfig", &name))
        .await
        .map_err(queue_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `ListFunctionEventInvokeConfigs`: `$LATEST`'s, then its versions' and
/// aliases' (at most one each, so one page).
pub(super) async fn list_configs<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
) -> Result<Json<ListFunctionEventInvokeConfigsResponse>, ApiError> {
    let name = scope.resolve(target, None)?;
    lookup(&b, &name)?;
    let configs = b
        .events()
        .invoke_configs(&name.key)
        .map_err(queue_error)?
        .into_iter()
        .map(|(_, c)| c.config)
        .collect();
    Ok(Json(ListFunctionEventInvokeConfigsResponse {
        function_event_invoke_configs: configs,
        next_marker: None,
    }))
}

/// thaw extension: how many of the function's events wait, and its failed
/// events (`thaw events NAME`).
pub(super) async fn queue_view<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
) -> Result<Json<thaw_api::events::EventQueueView>, ApiError> {
    let name = scope.resolve(target, None)?;
    lookup(&b, &name)?;
    let events: Arc<EventQueue> = b.events().clone();
    let key = name.key.clone();
    match tokio::task::spawn_blocking(move || events.view(&key)).await {
        Ok(r) => r.map(Json).map_err(queue_error),
        Err(_) => Err(ApiError::internal("The event queue task failed")),
    }
}
