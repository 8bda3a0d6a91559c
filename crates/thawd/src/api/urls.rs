//! Function URLs over HTTP: the configuration operations, and serving the
//! URLs themselves. A request whose `Host` is a function URL's
//! (`<id>.lambda-url.<region>.<domain>`, [`thaw_api::urls::url_id_of_host`])
//! never reaches a Lambda API route: [`dispatch`] turns it into an
//! invocation of the URL's function (its alias's version, with weighted
//! routing) and the function's answer into the HTTP response. `AuthType:
//! AWS_IAM` URLs take requests signed by a key of the function's account
//! (SigV4, as the API); `NONE` URLs anyone's.

use super::*;
use crate::registry::UrlRecord;
use thaw_api::urls::{
    check_auth_type, request_event, response_of, url_id_of_host, CreateFunctionUrlConfigRequest,
    FunctionUrlConfig, HttpRequest, ListFunctionUrlConfigsResponse, UpdateFunctionUrlConfigRequest,
    AUTH_IAM, INVOKE_BUFFERED,
};
use thaw_api::versions::{qualified_arn, Qualifier};

/// Largest body of a request to a function URL: a synchronous
/// invocation's payload limit.
const MAX_URL_BODY_BYTES: usize = 6 * 1024 * 1024;

fn url_host(headers: &HeaderMap) -> Option<&str> {
    let host = headers.get(HOST)?.to_str().ok()?;
    url_id_of_host(host).map(|_| host)
}

fn config_of(
    b: &impl ApiBackend,
    target: &Target,
    q: &Qualifier,
    u: &UrlRecord,
) -> FunctionUrlConfig {
    FunctionUrlConfig {
        function_url: b.function_url(&u.id),
        function_arn: match q {
            Qualifier::Latest => target.arn(),
            other => qualified_arn(&target.account, target.name.as_str(), other),
        },
        auth_type: u.auth_type.clone(),
        cors: u.cors.clone(),
        creation_time: u.created.clone(),
        last_modified_time: Some(u.modified.clone()),
        invoke_mode: u.invoke_mode.clone(),
    }
}

/// `CreateFunctionUrlConfig` (201).
pub(super) async fn create<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (name, q) = scope.resolve_qualified(target, query.get("Qualifier"))?;
    let bytes = read_settings_body(&headers, body, "CreateFunctionUrlConfig").await?;
    let req: CreateFunctionUrlConfigRequest = parse_json(&bytes)?;
    req.validate()?;
    let (key, q2) = (name.key.clone(), q.clone());
    let saved = with_registry(&b, move |r| {
        r.put_url(&key, &q2, true, |_| UrlRecord {
            id: String::new(),
            auth_type: req.auth_type,
            cors: req.cors,
            invoke_mode: req.invoke_mode.unwrap_or_else(|| INVOKE_BUFFERED.into()),
            created: String::new(),
            modified: String::new(),
        })
    })
    .instrument(span("CreateFunctionUrlConfig", &name))
    .await?;
    let mut config = config_of(&b, &name, &q, &saved);
    config.last_modified_time = None;
    Ok((StatusCode::CREATED, Json(config)).into_response())
}

/// `GetFunctionUrlConfig`.
pub(super) async fn get<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
) -> Result<Json<FunctionUrlConfig>, ApiError> {
    let (name, q) = scope.resolve_qualified(target, query.get("Qualifier"))?;
    let u = b.registry().url(name.key.as_str(), &q)?;
    Ok(Json(config_of(&b, &name, &q, &u)))
}

/// `UpdateFunctionUrlConfig`: what the request leaves out stays.
pub(super) async fn update<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<FunctionUrlConfig>, ApiError> {
    let (name, q) = scope.resolve_qualified(target, query.get("Qualifier"))?;
    let bytes = read_settings_body(&headers, body, "UpdateFunctionUrlConfig").await?;
    let req: UpdateFunctionUrlConfigRequest = parse_json(&bytes)?;
    req.validate()?;
    let (key, q2) = (name.key.clone(), q.clone());
    let saved = with_registry(&b, move |r| {
        r.put_url(&key, &q2, false, |cur| {
            let mut next = cur
                .cloned()
                .expect("put_url passes the current URL to an update");
            if let Some(a) = req.auth_type {
                next.auth_type = a;
            }
            if let Some(c) = req.cors {
                next.cors = Some(c);
            }
            if let Some(m) = req.invoke_mode {
                next.invoke_mode = m;
            }
            next
        })
    })
    .instrument(span("UpdateFunctionUrlConfig", &name))
    .await?;
    Ok(Json(config_of(&b, &name, &q, &saved)))
}

/// `DeleteFunctionUrlConfig` (204).
pub(super) async fn delete<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
) -> Result<StatusCode, ApiError> {
    let (name, q) = scope.resolve_qualified(target, query.get("Qualifier"))?;
    let key = name.key.clone();
    with_registry(&b, move |r| r.delete_url(&key, &q))
        .instrument(span("DeleteFunctionUrlConfig", &name))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `ListFunctionUrlConfigs` (every URL of the function: at most one per
/// alias and `$LATEST`, so one page).
pub(super) async fn list<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
) -> Result<Json<ListFunctionUrlConfigsResponse>, ApiError> {
    let name = scope.resolve(target, None)?;
    let latest = lookup(&b, &name)?;
    let configs = latest
        .urls
        .iter()
        .filter_map(|(q, u)| Some(config_of(&b, &name, &Qualifier::parse(q).ok()?, u)))
        .collect();
    Ok(Json(ListFunctionUrlConfigsResponse {
        function_url_configs: configs,
        next_marker: None,
    }))
}

/// An answer of a function URL that is not the function's: Lambda's
/// `{"Message": ...}` body with `status`.
fn url_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "Message": message }).to_string();
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Middleware: serves requests to function URLs; every other request goes
/// on to the API's routes.
pub(super) async fn dispatch<B: ApiBackend>(
    State(b): State<B>,
    req: Request,
    next: Next,
) -> Response {
    let Some(host) = url_host(req.headers()).map(str::to_string) else {
        return next.run(req).await;
    };
    let id = url_id_of_host(&host).unwrap_or_default().to_string();
    let span = tracing::info_span!("function_url", url = %id);
    serve_url(b, id, host, req).instrument(span).await
}

async fn serve_url<B: ApiBackend>(b: B, id: String, host: String, req: Request) -> Response {
    let Some((latest, q, url)) = b.registry().find_url(&id) else {
        return url_error(StatusCode::NOT_FOUND, "Not Found");
    };
    let (parts, body) = req.into_parts();
    let origin = parts
        .headers
        .get("origin")
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    // A CORS preflight is answered here, without running the function.
    if let (Some(cors), true) = (
        url.cors.as_ref(),
        parts.method == Method::OPTIONS
            && parts.headers.contains_key("access-control-request-method"),
    ) {
        let mut resp = StatusCode::OK.into_response();
        for (k, v) in cors.preflight_headers(origin.as_deref()) {
            set_header(&mut resp, &k, &v);
        }
        return resp;
    }
    // AWS_IAM: the signature's key is checked before the body is read
    // (an unsigned or unknown-key request is refused without reading it).
    let iam = url.auth_type == AUTH_IAM || check_auth_type(&url.auth_type).is_err();
    let pending = if iam {
        let Some(accounts) = b.accounts() else {
            return url_error(StatusCode::FORBIDDEN, "Forbidden");
        };
        match accounts.precheck(&parts) {
            Ok(p) => Some(p),
            Err(d) => {
                tracing::info!(code = d.code, "function URL refused: {}", d.message);
                return url_error(StatusCode::FORBIDDEN, "Forbidden");
            }
        }
    } else {
        None
    };
    // The whole body, within the synchronous payload limit.
    let too_large = || {
        LambdaError::new(
            ErrorCode::RequestTooLarge,
            "Request must be smaller than 6291456 bytes",
        )
    };
    let bytes = match read_body(&parts.headers, body, MAX_URL_BODY_BYTES, too_large).await {
        Ok(b) => b,
        Err(_) => {
            return url_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request must be smaller than 6291456 bytes",
            )
        }
    };
    // AWS_IAM: a key of the function's account signed it.
    let mut caller = None;
    if let Some(pending) = pending {
        match pending.verify(&parts, &bytes, chrono::Utc::now()) {
            Ok(c) if c.account_id == latest.account() => caller = Some(c),
            Ok(c) => {
                tracing::info!(caller = %c.account_id, "function URL refused: another account");
                return url_error(StatusCode::FORBIDDEN, "Forbidden");
            }
            Err(d) => {
                tracing::info!(code = d.code, "function URL refused: {}", d.message);
                return url_error(StatusCode::FORBIDDEN, "Forbidden");
            }
        }
    }
    let target = match latest.function_name() {
        Ok(n) => Scope::of(latest.account()).function(n),
        Err(_) => return url_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
    };
    let (record, invoked_arn) = match versions::for_invocation(&b, &target, &q) {
        Ok(r) => r,
        Err(_) => return url_error(StatusCode::NOT_FOUND, "Not Found"),
    };
    let request_id = new_request_id();
    let headers: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let source_ip = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let event = request_event(&HttpRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers,
        body: &bytes,
        source_ip,
        domain: host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h),
        url_id: &url.id,
        account: caller.as_ref().map(|c| c.account_id.as_str()),
        access_key: caller.as_ref().map(|c| c.access_key_id.as_str()),
        request_id: &request_id,
        time_ms: chrono::Utc::now().timestamp_millis(),
    });
    let input = InvokeInput {
        payload: Bytes::from(event.to_string()),
        client_context: None,
        tail_logs: false,
        request_id: Some(request_id.clone()),
        invoked_arn: invoked_arn.or_else(|| Some(target.arn())),
    };
    // Its own task, as Invoke: a client that hangs up does not cancel it.
    let task = {
        let b = b.clone();
        tokio::spawn(async move { b.invoke(&record, input).await })
    };
    let outcome = match task.await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            let ApiError(l) = invoke_error(e);
            let status =
                StatusCode::from_u16(l.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return url_error(
                status,
                if status == StatusCode::TOO_MANY_REQUESTS {
                    "Rate Exceeded."
                } else {
                    "Internal Server Error"
                },
            );
        }
        Err(_) => return url_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
    };
    if outcome.function_error.is_some() {
        return url_error(StatusCode::BAD_GATEWAY, "Internal Server Error");
    }
    let answer = match response_of(&outcome.payload) {
        Ok(a) => a,
        Err(why) => {
            tracing::info!(error = %why, "function URL: the function's answer is not a response");
            return url_error(StatusCode::BAD_GATEWAY, "Internal Server Error");
        }
    };
    let mut resp = (
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY),
        answer.body,
    )
        .into_response();
    for (k, v) in answer.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    if let Some(cors) = &url.cors {
        for (k, v) in cors.response_headers(origin.as_deref()) {
            set_header(&mut resp, &k, &v);
        }
    }
    set_header(&mut resp, "x-amzn-requestid", &request_id);
    resp
}
