//! Function URLs: the configuration operations
//! (`Create/Get/Update/DeleteFunctionUrlConfig`, `ListFunctionUrlConfigs`,
//! under `/2021-10-31/functions/{name}/url[s]`), the HTTP request event a
//! function receives (Lambda's payload format 2.0), and how its answer
//! becomes the HTTP response, with CORS.
//!
//! Owns: the JSON shapes, their checks, the event and the response mapping
//! (pure functions). Must not: serve HTTP or store configurations.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::LambdaError;

/// `AuthType`: anyone may call the URL.
pub const AUTH_NONE: &str = "NONE";
/// `AuthType`: callers sign with an access key of the function's account.
pub const AUTH_IAM: &str = "AWS_IAM";
/// `InvokeMode`: the response is sent when the function returns.
pub const INVOKE_BUFFERED: &str = "BUFFERED";
/// `InvokeMode`: the response is streamed (not built in thaw yet).
pub const INVOKE_STREAM: &str = "RESPONSE_STREAM";
/// The label that marks a function URL's host: `<id>.lambda-url.<region>.<domain>`.
pub const URL_HOST_LABEL: &str = "lambda-url";
/// Length of a URL id (lowercase letters and digits, as Lambda's).
pub const URL_ID_CHARS: usize = 32;

/// CORS settings of a function URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Cors {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_headers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_origins: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_headers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<i64>,
}

impl Cors {
    /// Checks Lambda's limits: at most 100 headers and origins, 6 methods,
    /// items of 1-1024 characters (origins 1-253), `MaxAge` 0-86400.
    pub fn validate(&self) -> Result<(), LambdaError> {
        let lists = [
            ("allowHeaders", &self.allow_headers, 100, 1024),
            ("exposeHeaders", &self.expose_headers, 100, 1024),
            ("allowOrigins", &self.allow_origins, 100, 253),
            ("allowMethods", &self.allow_methods, 6, 6),
        ];
        for (field, list, max_items, max_chars) in lists {
            let Some(items) = list else { continue };
            if items.len() > max_items {
                return Err(LambdaError::validation(
                    &format!("{} items", items.len()),
                    &format!("cors.{field}"),
                    &format!("Member must have length less than or equal to {max_items}"),
                ));
            }
            if let Some(bad) = items
                .iter()
                .find(|i| i.is_empty() || i.chars().count() > max_chars)
            {
                return Err(LambdaError::validation(
                    bad,
                    &format!("cors.{field}.member"),
                    &format!("Member must have length between 1 and {max_chars}"),
                ));
            }
        }
        if let Some(m) = self.max_age {
            if !(0..=86400).contains(&m) {
                return Err(LambdaError::validation(
                    &m.to_string(),
                    "cors.maxAge",
                    "Member must have value between 0 and 86400",
                ));
            }
        }
        Ok(())
    }

    fn allows_origin(&self, origin: &str) -> bool {
        self.allow_origins
            .as_ref()
            .is_some_and(|o| o.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin)))
    }

    /// The CORS headers of a response to a request from `origin` (none
    /// when the origin is not allowed).
    pub fn response_headers(&self, origin: Option<&str>) -> Vec<(String, String)> {
        let Some(origin) = origin.filter(|o| self.allows_origin(o)) else {
            return Vec::new();
        };
        let wildcard = self
            .allow_origins
            .as_ref()
            .is_some_and(|o| o.iter().any(|a| a == "*"));
        let mut out = vec![(
            "access-control-allow-origin".to_string(),
            if wildcard && self.allow_credentials != Some(true) {
                "*".to_string()
            } else {
                origin.to_string()
            },
        )];
        if self.allow_credentials == Some(true) {
            out.push(("access-control-allow-credentials".into(), "true".into()));
        }
        if let Some(h) = self.expose_headers.as_ref().filter(|h| !h.is_empty()) {
            out.push(("access-control-expose-headers".into(), h.join(",")));
        }
        out
    }

    /// The headers of the answer to a preflight request (`OPTIONS` with
    /// `Access-Control-Request-Method`) from `origin`.
    pub fn preflight_headers(&self, origin: Option<&str>) -> Vec<(String, String)> {
        let mut out = self.response_headers(origin);
        if out.is_empty() {
            return out;
        }
        if let Some(m) = self.allow_methods.as_ref().filter(|m| !m.is_empty()) {
            out.push(("access-control-allow-methods".into(), m.join(",")));
        }
        if let Some(h) = self.allow_headers.as_ref().filter(|h| !h.is_empty()) {
            out.push(("access-control-allow-headers".into(), h.join(",")));
        }
        if let Some(a) = self.max_age {
            out.push(("access-control-max-age".into(), a.to_string()));
        }
        out
    }
}

/// `CreateFunctionUrlConfig` request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateFunctionUrlConfigRequest {
    /// `NONE` or `AWS_IAM`.
    pub auth_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// `BUFFERED` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoke_mode: Option<String>,
}

/// `UpdateFunctionUrlConfig` request body: what is absent stays.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateFunctionUrlConfigRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoke_mode: Option<String>,
}

/// Checks an `AuthType`.
pub fn check_auth_type(a: &str) -> Result<(), LambdaError> {
    if a == AUTH_NONE || a == AUTH_IAM {
        Ok(())
    } else {
        Err(LambdaError::validation(
            a,
            "authType",
            "Member must satisfy enum value set: [AWS_IAM, NONE]",
        ))
    }
}

/// Checks an `InvokeMode`: `RESPONSE_STREAM` is refused (thaw does not
/// stream responses yet) rather than accepted and served buffered.
pub fn check_invoke_mode(m: &str) -> Result<(), LambdaError> {
    match m {
        INVOKE_BUFFERED => Ok(()),
        INVOKE_STREAM => Err(LambdaError::invalid_parameter(
            "InvokeMode RESPONSE_STREAM is not supported by thaw yet: use BUFFERED",
        )),
        other => Err(LambdaError::validation(
            other,
            "invokeMode",
            "Member must satisfy enum value set: [BUFFERED, RESPONSE_STREAM]",
        )),
    }
}

impl CreateFunctionUrlConfigRequest {
    /// Checks the request as Lambda does.
    pub fn validate(&self) -> Result<(), LambdaError> {
        check_auth_type(&self.auth_type)?;
        if let Some(m) = &self.invoke_mode {
            check_invoke_mode(m)?;
        }
        if let Some(c) = &self.cors {
            c.validate()?;
        }
        Ok(())
    }
}

impl UpdateFunctionUrlConfigRequest {
    /// Checks the request as Lambda does.
    pub fn validate(&self) -> Result<(), LambdaError> {
        if let Some(a) = &self.auth_type {
            check_auth_type(a)?;
        }
        if let Some(m) = &self.invoke_mode {
            check_invoke_mode(m)?;
        }
        if let Some(c) = &self.cors {
            c.validate()?;
        }
        Ok(())
    }
}

/// A function URL's configuration as Lambda returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionUrlConfig {
    /// The URL.
    pub function_url: String,
    /// The function's ARN (qualified with the alias, when on one).
    pub function_arn: String,
    pub auth_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// ISO 8601.
    pub creation_time: String,
    /// ISO 8601 (Get, Update and List).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified_time: Option<String>,
    pub invoke_mode: String,
}

/// `ListFunctionUrlConfigs` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListFunctionUrlConfigsResponse {
    pub function_url_configs: Vec<FunctionUrlConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

/// The URL id in a function URL's host (`<id>.lambda-url.<region>...`,
/// any port), if the host is one.
pub fn url_id_of_host(host: &str) -> Option<&str> {
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let mut labels = host.split('.');
    let id = labels.next()?;
    if labels.next()? != URL_HOST_LABEL {
        return None;
    }
    let ok = id.len() == URL_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    ok.then_some(id)
}

/// One HTTP request to a function URL, as the event needs it.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// The path, percent-encoded as received.
    pub path: &'a str,
    /// The query string without `?`.
    pub query: &'a str,
    /// Header names (any case) and values, in order.
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: &'a [u8],
    pub source_ip: String,
    /// The URL's host (`<id>.lambda-url.<region>.<domain>`).
    pub domain: &'a str,
    pub url_id: &'a str,
    /// The caller's account (`AWS_IAM`), or `None` (`NONE`: anonymous).
    pub account: Option<&'a str>,
    /// The signing access key (`AWS_IAM`).
    pub access_key: Option<&'a str>,
    pub request_id: &'a str,
    /// When it arrived, ms since the epoch.
    pub time_ms: i64,
}

/// Lambda's event for an HTTP request to a function URL (payload format
/// 2.0): headers lower-cased and repeated ones joined with commas, cookies
/// apart, query parameters decoded (repeated ones joined with commas), a
/// body that is not UTF-8 (or is a binary type) base64-encoded.
pub fn request_event(r: &HttpRequest<'_>) -> Value {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies: Vec<String> = Vec::new();
    for (k, v) in &r.headers {
        let k = k.to_ascii_lowercase();
        if k == "cookie" {
            cookies.extend(
                v.split(';')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty()),
            );
            continue;
        }
        headers
            .entry(k)
            .and_modify(|cur| {
                cur.push(',');
                cur.push_str(v);
            })
            .or_insert_with(|| v.to_string());
    }
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(r.query.as_bytes()) {
        params
            .entry(k.into_owned())
            .and_modify(|cur| {
                cur.push(',');
                cur.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    let (body, encoded) = match std::str::from_utf8(r.body) {
        _ if r.body.is_empty() => (None, false),
        Ok(text) => (Some(text.to_string()), false),
        Err(_) => (Some(STANDARD.encode(r.body)), true),
    };
    let user_agent = headers.get("user-agent").cloned().unwrap_or_default();
    let time = chrono::DateTime::from_timestamp_millis(r.time_ms)
        .unwrap_or_default()
        .format("%d/%b/%Y:%H:%M:%S %z")
        .to_string();
    let mut context = json!({
        "accountId": r.account.unwrap_or("anonymous"),
        "apiId": r.url_id,
        "domainName": r.domain,
        "domainPrefix": r.url_id,
        "http": {
            "method": r.method,
            "path": r.path,
            "protocol": "HTTP/1.1",
            "sourceIp": r.source_ip,
            "userAgent": user_agent,
        },
        "requestId": r.request_id,
        "routeKey": "$default",
        "stage": "$default",
        "time": time,
        "timeEpoch": r.time_ms,
    });
    if let (Some(account), Some(key)) = (r.account, r.access_key) {
        context["authorizer"] = json!({"iam": {
            "accessKey": key,
            "accountId": account,
            "callerId": account,
            "cognitoIdentity": null,
            "principalOrgId": null,
            "userArn": format!("arn:aws:iam::{account}:root"),
            "userId": account,
        }});
    }
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": r.path,
        "rawQueryString": r.query,
        "headers": headers,
        "requestContext": context,
        "isBase64Encoded": encoded,
    });
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    if !params.is_empty() {
        event["queryStringParameters"] = json!(params);
    }
    if let Some(b) = body {
        event["body"] = json!(b);
    }
    event
}

/// What a function's answer becomes as an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-case names; `set-cookie` once per cookie.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Maps a function's result to the HTTP response as Lambda does: an
/// object with `statusCode` gives the status, `headers`, `cookies` and
/// `body` (base64-decoded when `isBase64Encoded`); any other JSON value is
/// a 200 `application/json` response with that JSON as its body. A result
/// that says it is base64 but is not, or a status out of range, is the
/// function's fault: `Err` with why (the caller answers 502).
pub fn response_of(payload: &[u8]) -> Result<HttpResponse, String> {
    let json_response = |body: Vec<u8>| HttpResponse {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body,
    };
    let value: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(_) => return Ok(json_response(payload.to_vec())),
    };
    let Some(obj) = value.as_object().filter(|o| o.contains_key("statusCode")) else {
        return Ok(json_response(payload.to_vec()));
    };
    let status = obj["statusCode"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| format!("statusCode {} is not an HTTP status", obj["statusCode"]))?;
    let mut headers = Vec::new();
    if let Some(h) = obj.get("headers").and_then(Value::as_object) {
        for (k, v) in h {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            headers.push((k.to_ascii_lowercase(), v));
        }
    }
    if let Some(c) = obj.get("cookies").and_then(Value::as_array) {
        for cookie in c.iter().filter_map(Value::as_str) {
            headers.push(("set-cookie".into(), cookie.to_string()));
        }
    }
    let body = match obj.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if obj.get("isBase64Encoded") == Some(&Value::Bool(true)) => {
            STANDARD
                .decode(s)
                .map_err(|e| format!("the body is not base64: {e}"))?
        }
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    if !headers.iter().any(|(k, _)| k == "content-type") {
        headers.push(("content-type".into(), "application/json".into()));
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "abcdefghijklmnopqrstuvwxyz012345";

    #[test]
    fn url_hosts_are_recognised_with_or_without_a_port() {
        let host = format!("{ID}.lambda-url.us-east-1.localhost:9070");
        assert_eq!(url_id_of_host(&host), Some(ID));
        assert_eq!(
            url_id_of_host(&format!("{ID}.lambda-url.us-east-1.on.aws")),
            Some(ID)
        );
        for other in [
            "127.0.0.1:9070",
            "localhost",
            "lambda-url.us-east-1.localhost",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345.lambda-url.x",
            "short.lambda-url.us-east-1.localhost",
            &format!("{ID}.lambda.us-east-1.localhost"),
        ] {
            assert_eq!(url_id_of_host(other), None, "{other}");
        }
    }

    #[test]
    fn the_event_has_lambdas_payload_format_2() {
        let r = HttpRequest {
            method: "POST",
            path: "/a/b%20c",
            query: "x=1&x=2&y=%C3%A9",
            headers: vec![
                ("Host", "h"),
                ("User-Agent", "ua"),
                ("X-Multi", "1"),
                ("x-multi", "2"),
                ("Cookie", "a=1; b=2"),
            ],
            body: b"hi",
            source_ip: "127.0.0.1".into(),
            domain: "h",
            url_id: ID,
            account: None,
            access_key: None,
            request_id: "r1",
            time_ms: 1_700_000_000_000,
        };
        let e = request_event(&r);
        assert_eq!(e["version"], "2.0");
        assert_eq!(e["rawPath"], "/a/b%20c");
        assert_eq!(e["rawQueryString"], "x=1&x=2&y=%C3%A9");
        assert_eq!(e["queryStringParameters"]["x"], "1,2");
        assert_eq!(e["queryStringParameters"]["y"], "é");
        assert_eq!(e["headers"]["x-multi"], "1,2");
        assert!(e["headers"].get("cookie").is_none());
        assert_eq!(e["cookies"], json!(["a=1", "b=2"]));
        assert_eq!(e["body"], "hi");
        assert_eq!(e["isBase64Encoded"], false);
        assert_eq!(e["requestContext"]["http"]["method"], "POST");
        assert_eq!(e["requestContext"]["http"]["userAgent"], "ua");
        assert_eq!(e["requestContext"]["accountId"], "anonymous");
        assert_eq!(e["requestContext"]["time"], "14/Nov/2023:22:13:20 +0000");
        assert!(e["requestContext"].get("authorizer").is_none());
        let binary = HttpRequest {
            body: &[0xff, 0x00],
            account: Some("000000000000"),
            access_key: Some("AK"),
            ..r.clone()
        };
        let e = request_event(&binary);
        assert_eq!(
            (e["body"].as_str(), &e["isBase64Encoded"]),
            (Some("/wA="), &json!(true))
        );
        assert_eq!(
            e["requestContext"]["authorizer"]["iam"]["accountId"],
            "000000000000"
        );
        let empty = HttpRequest { body: b"", ..r };
        assert!(request_event(&empty).get("body").is_none());
    }

    #[test]
    fn answers_become_responses_as_on_lambda() {
        // Any JSON that is not a response object: 200, JSON.
        let r = response_of(br#"{"a": 1}"#).unwrap();
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, br#"{"a": 1}"#.as_slice())
        );
        assert_eq!(response_of(b"\"text\"").unwrap().status, 200);
        let r = response_of(
            br#"{"statusCode": 201, "headers": {"X-A": "b", "Content-Type": "text/plain", "N": 3},
                 "cookies": ["c=1", "d=2"], "body": "made"}"#,
        )
        .unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.body, b"made");
        for h in [
            ("x-a", "b"),
            ("content-type", "text/plain"),
            ("n", "3"),
            ("set-cookie", "c=1"),
            ("set-cookie", "d=2"),
        ] {
            assert!(
                r.headers.contains(&(h.0.into(), h.1.into())),
                "{h:?} in {:?}",
                r.headers
            );
        }
        let r = response_of(br#"{"statusCode": 200, "body": "/wA=", "isBase64Encoded": true}"#)
            .unwrap();
        assert_eq!(r.body, [0xff, 0x00]);
        let r = response_of(br#"{"statusCode": 204}"#).unwrap();
        assert!(r.body.is_empty());
        assert!(response_of(br#"{"statusCode": 700}"#).is_err());
        assert!(response_of(br#"{"statusCode": "x"}"#).is_err());
        assert!(
            response_of(br#"{"statusCode": 200, "body": "!!", "isBase64Encoded": true}"#).is_err()
        );
    }

    #[test]
    fn cors_answers_allowed_origins_only() {
        let c = Cors {
            allow_origins: Some(vec!["https://a.example".into()]),
            allow_methods: Some(vec!["GET".into(), "POST".into()]),
            allow_headers: Some(vec!["x-token".into()]),
            expose_headers: Some(vec!["x-out".into()]),
            max_age: Some(60),
            allow_credentials: Some(true),
        };
        assert!(c.response_headers(Some("https://b.example")).is_empty());
        assert!(c.response_headers(None).is_empty());
        let h = c.preflight_headers(Some("https://a.example"));
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("access-control-allow-origin"),
            Some("https://a.example")
        );
        assert_eq!(get("access-control-allow-methods"), Some("GET,POST"));
        assert_eq!(get("access-control-max-age"), Some("60"));
        assert_eq!(get("access-control-allow-credentials"), Some("true"));
        let any = Cors {
            allow_origins: Some(vec!["*".into()]),
            ..Default::default()
        };
        assert_eq!(
            any.response_headers(Some("https://z.example")),
            [("access-control-allow-origin".to_string(), "*".to_string())]
        );
        assert!(Cors {
            max_age: Some(86401),
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(Cors {
            allow_methods: Some(vec!["GET".into(); 7]),
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn requests_are_checked() {
        let ok = CreateFunctionUrlConfigRequest {
            auth_type: AUTH_NONE.into(),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        for (auth, mode) in [
            ("OPEN", None),
            (AUTH_IAM, Some(INVOKE_STREAM)),
            (AUTH_IAM, Some("x")),
        ] {
            let r = CreateFunctionUrlConfigRequest {
                auth_type: auth.into(),
                invoke_mode: mode.map(str::to_string),
                cors: None,
            };
            assert!(r.validate().is_err(), "{auth} {mode:?}");
        }
    }
}
