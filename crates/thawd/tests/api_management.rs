//! The HTTP API driven through `router_with` and `tower::ServiceExt::oneshot`
//! (no socket), over a real `Registry` in a temporary directory and a fake
//! backend in place of the instance pools: management calls, Lambda's error
//! shape, and how Invoke maps requests and outcomes to Lambda's headers.

use std::io::{Cursor, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use thawd::api::{router_with, ApiBackend};
use thawd::invoke::{InvokeError, InvokeInput, InvokeOutcome, PhaseTimings, StartKind};
use thawd::logs::LogRecord;
use thawd::registry::{FunctionRecord, Registry};
use tower::ServiceExt;
use zip::write::SimpleFileOptions;

type InvokeFn =
    dyn Fn(&FunctionRecord, &InvokeInput) -> Result<InvokeOutcome, InvokeError> + Send + Sync;

/// A backend whose "pool" is a closure and which records what the API asked of it.
#[derive(Clone)]
struct Fake {
    registry: Arc<Registry>,
    invoke: Arc<InvokeFn>,
    invoked: Arc<Mutex<Vec<(String, InvokeInput)>>>,
    retired: Arc<Mutex<Vec<String>>>,
    logs_deleted: Arc<Mutex<Vec<String>>>,
    /// Snapshot builds asked for: (function, event).
    snapshots: Arc<Mutex<Vec<(String, Bytes)>>>,
    events: Arc<thawd::events::EventQueue>,
}

impl ApiBackend for Fake {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn events(&self) -> &Arc<thawd::events::EventQueue> {
        &self.events
    }

    async fn invoke(
        &self,
        function: &FunctionRecord,
        input: InvokeInput,
    ) -> Result<InvokeOutcome, InvokeError> {
        let out = (self.invoke)(function, &input);
        self.invoked
            .lock()
            .unwrap()
            .push((function.instance_key(), input));
        out
    }

    async fn retire(&self, name: &str) {
        self.retired.lock().unwrap().push(name.to_string());
    }

    fn read_logs(&self, name: &str, request_id: Option<&str>, limit: usize) -> Vec<LogRecord> {
        (0..3)
            .map(|i| LogRecord {
                ts_ms: 1_700_000_000_000 + i,
                request_id: Some(request_id.unwrap_or("r1").to_string()),
                stream: "stdout".into(),
                line: format!("{name} line {i}"),
            })
            .take(limit)
            .collect()
    }

    fn delete_logs(&self, name: &str) {
        self.logs_deleted.lock().unwrap().push(name.to_string());
    }

    fn render_metrics(&self) -> String {
        "# TYPE thaw_up gauge\nthaw_up 1\n".into()
    }

    async fn create_snapshot(
        &self,
        function: &FunctionRecord,
        payload: Bytes,
    ) -> Result<thaw_api::SnapshotReport, InvokeError> {
        self.snapshots
            .lock()
            .unwrap()
            .push((function.name.clone(), payload));
        // A daemon fault whose message names host paths.
        Err(InvokeError::Sandbox(anyhow::anyhow!(
            "/var/lib/thaw/snapshots/f/.tmp-1: No space left on device (os error 28); \"/work/data/x\" too"
        )))
    }
}

fn echo(_: &FunctionRecord, input: &InvokeInput) -> Result<InvokeOutcome, InvokeError> {
    Ok(InvokeOutcome {
        request_id: "11111111-2222-3333-4444-555555555555".into(),
        payload: input.payload.clone(),
        function_error: None,
        start: StartKind::Cold,
        timings: PhaseTimings {
            sandbox_ms: 1.5,
            runtime_ms: 20.0,
            init_ms: 3.25,
            invoke_ms: 0.5,
            ..Default::default()
        },
        log_tail: input.tail_logs.then(|| "START\nhello\nEND\n".to_string()),
        memory: None,
    })
}

struct Api {
    app: Router,
    fake: Fake,
    _dir: tempfile::TempDir,
}

fn api_with(invoke: Arc<InvokeFn>) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake {
        registry: Arc::new(Registry::open(dir.path()).unwrap()),
        invoke,
        invoked: Arc::default(),
        retired: Arc::default(),
        logs_deleted: Arc::default(),
        snapshots: Arc::default(),
        events: thawd::events::EventQueue::open(
            &dir.path().join("events.redb"),
            thawd::events::QueueConfig {
                retry_delay: Duration::from_millis(50),
                ..Default::default()
            },
        )
        .unwrap(),
    };
    thawd::api::start_event_delivery(fake.clone());
    Api {
        app: thawd::api::with_function_urls(router_with(fake.clone()), fake.clone())
            .layer(axum::middleware::from_fn(as_caller)),
        fake,
        _dir: dir,
    }
}

/// The header naming the account a test request is made as (root without it).
const TEST_ACCOUNT: &str = "x-test-account";

/// Stands in for the daemon's signature check (which the end-to-end tests in
/// `thaw-cli` exercise against a real daemon): it leaves the verified
/// caller in the request, as the check does: the root account, or the one
/// named in [`TEST_ACCOUNT`].
async fn as_caller(mut req: Request<Body>, next: axum::middleware::Next) -> Response<Body> {
    let account = req
        .headers()
        .get(TEST_ACCOUNT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(thaw_auth::ROOT_ACCOUNT)
        .to_string();
    req.extensions_mut().insert(thaw_auth::Caller {
        account_id: account,
        access_key_id: "AKIDTHAWTEST00000001".into(),
    });
    next.run(req).await
}

fn api() -> Api {
    api_with(Arc::new(echo))
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Assert a Lambda error: status, `x-amzn-ErrorType` and body shape.
    fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(
            (self.status.as_u16(), self.header("x-amzn-ErrorType")),
            (status, Some(code)),
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        let kind = if status >= 500 { "Service" } else { "User" };
        assert_eq!(v["Type"], kind, "{v}");
        assert_eq!(v["Message"], v["message"], "{v}");
        v["message"].as_str().unwrap().to_string()
    }
}

impl Api {
    async fn send(&self, req: Request<Body>) -> Reply {
        let resp: Response<Body> = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> Reply {
        self.call_as(thaw_auth::ROOT_ACCOUNT, method, uri, body)
            .await
    }

    /// [`Api::call`] as `account`.
    async fn call_as(&self, account: &str, method: &str, uri: &str, body: Option<Value>) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "thaw.test:9070")
            .header(TEST_ACCOUNT, account);
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send(req.body(body).unwrap()).await
    }

    async fn raw(&self, method: &str, uri: &str, body: &'static [u8]) -> Reply {
        self.send(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::from(body))
                .unwrap(),
        )
        .await
    }

    async fn invoke(&self, name: &str, payload: Vec<u8>, headers: &[(&str, &str)]) -> Reply {
        let mut req = Request::builder()
            .method("POST")
            .uri(format!("/2015-03-31/functions/{name}/invocations"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Body::from(payload)).unwrap()).await
    }

    /// Creates `name` published as version 1, with alias `live` on it.
    async fn publish_with_alias(&self, name: &str) {
        let r = self.create(name, json!({"Publish": true})).await;
        assert_eq!(r.status, StatusCode::CREATED);
        let r = self
            .call(
                "POST",
                &format!("/2015-03-31/functions/{name}/aliases"),
                Some(json!({"Name": "live", "FunctionVersion": "1"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }

    async fn create(&self, name: &str, extra: Value) -> Reply {
        let mut req = json!({
            "FunctionName": name,
            "Runtime": "python3.11",
            "Role": "arn:aws:iam::000000000000:role/thaw",
            "Handler": "app.handler",
            "Code": {"ZipFile": STANDARD.encode(app_zip("def handler(e, c):\n    return e\n"))},
        });
        if let (Some(base), Value::Object(extra)) = (req.as_object_mut(), extra) {
            base.extend(extra);
        }
        self.call("POST", "/2015-03-31/functions", Some(req)).await
    }
}

fn zip_of(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, body) in entries {
        z.start_file(*name, SimpleFileOptions::default()).unwrap();
        z.write_all(body.as_bytes()).unwrap();
    }
    z.finish().unwrap().into_inner()
}

fn app_zip(body: &str) -> Vec<u8> {
    zip_of(&[("app.py", body)])
}

#[tokio::test]
async fn create_get_list_delete() {
    let api = api();
    let r = api
        .create(
            "hello",
            json!({"MemorySize": 256, "Timeout": 5, "Environment": {"Variables": {"GREETING": "hi"}},
                   "Tags": {"t": "1"}, "SomeFutureField": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let c = r.json();
    assert_eq!(c["FunctionName"], "hello");
    assert_eq!(
        c["FunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:hello"
    );
    assert_eq!(c["Runtime"], "python3.11");
    assert_eq!(c["Handler"], "app.handler");
    assert_eq!(
        (c["MemorySize"].as_u64(), c["Timeout"].as_u64()),
        (Some(256), Some(5))
    );
    assert_eq!(c["Environment"]["Variables"]["GREETING"], "hi");
    assert_eq!(c["Version"], "$LATEST");
    assert_eq!(c["State"], "Active");
    assert_eq!(c["LastUpdateStatus"], "Successful");
    assert_eq!(c["PackageType"], "Zip");
    assert_eq!(c["Architectures"], json!(["x86_64"]));
    assert_eq!(c["EphemeralStorage"], json!({"Size": 512}));
    let zip = app_zip("def handler(e, c):\n    return e\n");
    assert_eq!(c["CodeSize"].as_u64(), Some(zip.len() as u64));
    assert_eq!(c["CodeSha256"].as_str().unwrap().len(), 44);
    assert!(c["LastModified"].as_str().unwrap().ends_with("+0000"));
    assert!(!c["RevisionId"].as_str().unwrap().is_empty());

    let r = api
        .create(
            "second",
            json!({"Runtime": "nodejs20.x", "Handler": "index.handler"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        (
            r.json()["MemorySize"].as_u64(),
            r.json()["Timeout"].as_u64()
        ),
        (Some(128), Some(3))
    );
    assert!(r.json().get("Environment").is_none());

    let g = api.call("GET", "/2015-03-31/functions/hello", None).await;
    assert_eq!(g.status, StatusCode::OK);
    let g = g.json();
    assert_eq!(g["Configuration"], c);
    assert_eq!(g["Code"]["RepositoryType"], "S3");
    assert_eq!(
        g["Code"]["Location"],
        "http://thaw.test:9070/thaw/v1/functions/hello/code"
    );
    let cfg = api
        .call("GET", "/2015-03-31/functions/hello/configuration", None)
        .await;
    assert_eq!(cfg.json(), c);
    // By ARN (as boto3 sends it, percent-encoded), partial ARN and $LATEST.
    for path in [
        "arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Ahello",
        "arn:aws:lambda:us-east-1:000000000000:function:hello:$LATEST",
        "000000000000:function:hello",
        "hello?Qualifier=%24LATEST",
    ] {
        let r = api
            .call("GET", &format!("/2015-03-31/functions/{path}"), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.json()["Configuration"]["FunctionName"], "hello");
    }
    // The code endpoint serves the zip as uploaded.
    let code = api.call("GET", "/thaw/v1/functions/hello/code", None).await;
    assert_eq!(code.status, StatusCode::OK);
    assert_eq!(code.header("content-type"), Some("application/zip"));
    assert_eq!(code.body.as_ref(), zip.as_slice());

    for path in ["/2015-03-31/functions", "/2015-03-31/functions/"] {
        let l = api.call("GET", path, None).await;
        assert_eq!(l.status, StatusCode::OK);
        let names: Vec<String> = l.json()["Functions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["FunctionName"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["hello", "second"]);
        assert!(l.json().get("NextMarker").is_none());
    }

    let d = api
        .call("DELETE", "/2015-03-31/functions/hello", None)
        .await;
    assert_eq!(d.status, StatusCode::NO_CONTENT);
    assert!(d.body.is_empty());
    assert_eq!(*api.fake.retired.lock().unwrap(), ["hello"]);
    assert_eq!(*api.fake.logs_deleted.lock().unwrap(), ["hello"]);
    let msg = api
        .call("GET", "/2015-03-31/functions/hello", None)
        .await
        .assert_error(404, "ResourceNotFoundException");
    assert_eq!(
        msg,
        "Function not found: arn:aws:lambda:us-east-1:000000000000:function:hello"
    );
    api.call("DELETE", "/2015-03-31/functions/hello", None)
        .await
        .assert_error(404, "ResourceNotFoundException");
    api.call("GET", "/thaw/v1/functions/hello/code", None)
        .await
        .assert_error(404, "ResourceNotFoundException");
    // The name is free again.
    assert_eq!(
        api.create("hello", json!({})).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn list_pagination() {
    let api = api();
    for n in ["c", "a", "b", "d", "e"] {
        assert_eq!(api.create(n, json!({})).await.status, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut marker = String::new();
    loop {
        let uri = if marker.is_empty() {
            "/2015-03-31/functions/?MaxItems=2".to_string()
        } else {
            format!("/2015-03-31/functions/?MaxItems=2&Marker={marker}")
        };
        let page = api.call("GET", &uri, None).await.json();
        let fs = page["Functions"].as_array().unwrap();
        assert!(fs.len() <= 2);
        seen.extend(
            fs.iter()
                .map(|f| f["FunctionName"].as_str().unwrap().to_string()),
        );
        match page.get("NextMarker").and_then(Value::as_str) {
            Some(m) => marker = m.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    for bad in ["0", "x", "10001", "-1"] {
        api.call(
            "GET",
            &format!("/2015-03-31/functions/?MaxItems={bad}"),
            None,
        )
        .await
        .assert_error(400, "ValidationException");
    }
}

#[tokio::test]
async fn updates_retire_instances() {
    let api = api();
    let before = api.create("f", json!({})).await.json();

    let upd = api
        .call(
            "PUT",
            "/2015-03-31/functions/f/code",
            Some(json!({"ZipFile": STANDARD.encode(app_zip("v = 2")), "Publish": false})),
        )
        .await;
    assert_eq!(upd.status, StatusCode::OK, "{:?}", upd.body);
    let upd = upd.json();
    assert_ne!(upd["CodeSha256"], before["CodeSha256"]);
    assert_ne!(upd["RevisionId"], before["RevisionId"]);
    assert_eq!(*api.fake.retired.lock().unwrap(), ["f"]);
    let rec = api.fake.registry.get("f").unwrap();
    assert_eq!(
        std::fs::read_to_string(rec.code_dir.join("app.py")).unwrap(),
        "v = 2"
    );

    // DryRun validates without changing anything.
    let dry = api
        .call(
            "PUT",
            "/2015-03-31/functions/f/code",
            Some(json!({"ZipFile": STANDARD.encode(app_zip("v = 3")), "DryRun": true})),
        )
        .await;
    assert_eq!(dry.status, StatusCode::OK);
    assert_eq!(dry.json()["CodeSha256"], upd["CodeSha256"]);
    assert_eq!(api.fake.retired.lock().unwrap().len(), 1);

    let cfg = api
        .call(
            "PUT",
            "/2015-03-31/functions/f/configuration",
            Some(
                json!({"MemorySize": 512, "Timeout": 7, "Environment": {"Variables": {"A": "1"}},
                        "Description": "d"}),
            ),
        )
        .await;
    assert_eq!(cfg.status, StatusCode::OK, "{:?}", cfg.body);
    let cfg = cfg.json();
    assert_eq!(
        (cfg["MemorySize"].as_u64(), cfg["Timeout"].as_u64()),
        (Some(512), Some(7))
    );
    assert_eq!(cfg["Handler"], "app.handler");
    assert_eq!(cfg["Description"], "d");
    assert_eq!(cfg["CodeSha256"], upd["CodeSha256"]);
    assert_eq!(*api.fake.retired.lock().unwrap(), ["f", "f"]);
    let got = api
        .call("GET", "/2015-03-31/functions/f/configuration", None)
        .await
        .json();
    assert_eq!(got["Environment"]["Variables"], json!({"A": "1"}));

    // A stale RevisionId is refused.
    api.call(
        "PUT",
        "/2015-03-31/functions/f/configuration",
        Some(json!({"Timeout": 9, "RevisionId": before["RevisionId"]})),
    )
    .await
    .assert_error(412, "PreconditionFailedException");
    // Invalid values leave the function as it was.
    for (body, code) in [
        (json!({"MemorySize": 64}), "ValidationException"),
        (json!({"Timeout": 901}), "ValidationException"),
        (
            json!({"Runtime": "java21"}),
            "InvalidParameterValueException",
        ),
        (json!({"Handler": ""}), "InvalidParameterValueException"),
        (
            json!({"Layers": ["arn:x"]}),
            "InvalidParameterValueException",
        ),
    ] {
        api.call("PUT", "/2015-03-31/functions/f/configuration", Some(body))
            .await
            .assert_error(400, code);
    }
    api.call(
        "PUT",
        "/2015-03-31/functions/f/code",
        Some(json!({"ZipFile": STANDARD.encode(b"not a zip")})),
    )
    .await
    .assert_error(400, "InvalidParameterValueException");
    api.call(
        "PUT",
        "/2015-03-31/functions/f/code",
        Some(json!({"S3Bucket": "b", "S3Key": "k"})),
    )
    .await
    .assert_error(400, "InvalidParameterValueException");
    assert_eq!(api.fake.registry.get("f").unwrap().timeout_s, 7);
    assert_eq!(api.fake.retired.lock().unwrap().len(), 2);

    for (m, p) in [
        ("PUT", "/2015-03-31/functions/nope/code"),
        ("PUT", "/2015-03-31/functions/nope/configuration"),
    ] {
        api.call(
            m,
            p,
            Some(json!({"ZipFile": STANDARD.encode(app_zip("x")), "Timeout": 3})),
        )
        .await
        .assert_error(404, "ResourceNotFoundException");
    }
}

#[tokio::test]
async fn create_rejections() {
    let api = api();
    assert_eq!(
        api.create("dup", json!({})).await.status,
        StatusCode::CREATED
    );
    let msg = api
        .create("dup", json!({}))
        .await
        .assert_error(409, "ResourceConflictException");
    assert_eq!(msg, "Function already exist: dup");

    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"FunctionName": "bad name!"}),
            400,
            "ValidationException",
        ),
        (
            json!({"FunctionName": "x".repeat(65)}),
            400,
            "ValidationException",
        ),
        (
            json!({"FunctionName": "../../etc"}),
            400,
            "ValidationException",
        ),
        (
            json!({"FunctionName": "arn:aws:lambda:us-east-1:000000000000:function:bad!"}),
            400,
            "ValidationException",
        ),
        (
            json!({"Runtime": "cobol85"}),
            400,
            "InvalidParameterValueException",
        ),
        (json!({"MemorySize": 127}), 400, "ValidationException"),
        (json!({"MemorySize": 10241}), 400, "ValidationException"),
        (json!({"Timeout": 0}), 400, "ValidationException"),
        (json!({"Timeout": 901}), 400, "ValidationException"),
        (
            json!({"Environment": {"Variables": {"BIG": "x".repeat(4100)}}}),
            400,
            "InvalidParameterValueException",
        ),
        (
            json!({"Environment": {"Variables": {"AWS_REGION": "x"}}}),
            400,
            "InvalidParameterValueException",
        ),
        (
            json!({"Code": {"S3Bucket": "b", "S3Key": "k"}}),
            400,
            "InvalidParameterValueException",
        ),
        (json!({"Code": {}}), 400, "InvalidParameterValueException"),
        (
            json!({"Layers": ["arn:aws:lambda:us-east-1:0:layer:x:1"]}),
            400,
            "InvalidParameterValueException",
        ),
        (
            json!({"Handler": null}),
            400,
            "InvalidParameterValueException",
        ),
        (
            json!({"PackageType": "Image"}),
            400,
            "InvalidParameterValueException",
        ),
        (
            json!({"MemorySize": "lots"}),
            400,
            "InvalidRequestContentException",
        ),
        (
            json!({"Code": {"ZipFile": "%%% not base64"}}),
            400,
            "InvalidRequestContentException",
        ),
    ];
    for (extra, status, code) in cases {
        let what = extra.to_string();
        let r = api.create("some-fn", extra).await;
        assert_eq!(
            (r.status.as_u16(), r.header("x-amzn-ErrorType")),
            (status, Some(code)),
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.assert_error(status, code);
    }
    let msg = api
        .create("z", json!({"Code": {"S3Bucket": "b", "S3Key": "k"}}))
        .await
        .assert_error(400, "InvalidParameterValueException");
    assert!(msg.contains("not supported"), "{msg}");

    // Custom runtimes need no handler; names may be given as ARNs.
    let r = api
        .create(
            "arn:aws:lambda:us-east-1:000000000000:function:custom",
            json!({"Runtime": "provided.al2023", "Handler": null}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.json()["FunctionName"], "custom");
    assert!(r.json().get("Handler").is_none());

    // Nothing but the two good functions was created.
    let names: Vec<String> = api
        .fake
        .registry
        .list()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names, ["custom", "dup"]);
}

#[tokio::test]
async fn code_zip_rejections() {
    let api = api();
    let msg = api
        .create(
            "f",
            json!({"Code": {"ZipFile": STANDARD.encode(b"this is not a zip")}}),
        )
        .await
        .assert_error(400, "InvalidParameterValueException");
    assert_eq!(
        msg,
        "Could not unzip uploaded file. Please check your file, then try to upload again."
    );
    for evil in ["../escape.py", "/etc/escape.py", "a/../../escape.py"] {
        let zip = zip_of(&[(evil, "x")]);
        api.create("f", json!({"Code": {"ZipFile": STANDARD.encode(zip)}}))
            .await
            .assert_error(400, "InvalidParameterValueException");
    }
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    z.add_symlink("etc", "/etc", SimpleFileOptions::default())
        .unwrap();
    let zip = z.finish().unwrap().into_inner();
    api.create("f", json!({"Code": {"ZipFile": STANDARD.encode(zip)}}))
        .await
        .assert_error(400, "InvalidParameterValueException");
    assert!(api.fake.registry.list().is_empty());
}

#[tokio::test]
async fn malformed_requests_get_lambda_errors() {
    let api = api();
    api.create("f", json!({})).await;
    for (method, uri, body) in [
        ("POST", "/2015-03-31/functions", &b"{not json"[..]),
        ("POST", "/2015-03-31/functions", b""),
        ("POST", "/2015-03-31/functions", b"[1,2]"),
        (
            "PUT",
            "/2015-03-31/functions/f/configuration",
            b"{\"Timeout\": ",
        ),
        ("PUT", "/2015-03-31/functions/f/code", b"\xff\xfe"),
    ] {
        let r = api.raw(method, uri, body).await;
        let msg = r.assert_error(400, "InvalidRequestContentException");
        assert!(
            msg.starts_with("Could not parse request body into json"),
            "{msg}"
        );
    }
    // Names in the path follow the same rules as in bodies.
    api.call("GET", "/2015-03-31/functions/bad%20name", None)
        .await
        .assert_error(400, "ValidationException");
    api.call(
        "GET",
        "/2015-03-31/functions/arn:aws:lambda:us-east-1:1:function:f",
        None,
    )
    .await
    .assert_error(400, "ValidationException");
    // A version or alias that does not exist.
    api.call("GET", "/2015-03-31/functions/f:1", None)
        .await
        .assert_error(404, "ResourceNotFoundException");
    api.call("GET", "/2015-03-31/functions/f?Qualifier=prod", None)
        .await
        .assert_error(404, "ResourceNotFoundException");
    // Unknown routes and methods.
    api.call("GET", "/2015-03-31/nothing-here", None)
        .await
        .assert_error(404, "UnknownOperationException");
    api.call("PATCH", "/2015-03-31/functions/f", None)
        .await
        .assert_error(405, "UnknownOperationException");
}

#[tokio::test]
async fn invoke_maps_outcomes_to_lambda_headers() {
    let api = api();
    api.create("f", json!({})).await;
    let r = api
        .invoke("f", br#"{"n": 1}"#.to_vec(), &[("X-Amz-Log-Type", "Tail")])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_ref(), br#"{"n": 1}"#);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("X-Amz-Executed-Version"), Some("$LATEST"));
    assert_eq!(
        r.header("X-Amzn-RequestId"),
        Some("11111111-2222-3333-4444-555555555555")
    );
    assert_eq!(r.header("X-Thaw-Start"), Some("cold"));
    assert_eq!(
        r.header("Server-Timing"),
        Some("sandbox;dur=1.500, runtime;dur=20.000, init;dur=3.250, invoke;dur=0.500")
    );
    assert_eq!(r.header("X-Amz-Function-Error"), None);
    let tail = STANDARD
        .decode(r.header("X-Amz-Log-Result").unwrap())
        .unwrap();
    assert_eq!(tail, b"START\nhello\nEND\n");
    {
        let invoked = api.fake.invoked.lock().unwrap();
        let (name, input) = &invoked[0];
        assert_eq!(name, "f");
        assert!(input.tail_logs);
        assert_eq!(input.client_context, None);
    }

    // By ARN, with an empty body (the function gets `{}`) and a client context.
    let ctx = STANDARD.encode(br#"{"custom": {"k": "v"}}"#);
    let r = api
        .invoke(
            "arn:aws:lambda:us-east-1:000000000000:function:f",
            Vec::new(),
            &[("X-Amz-Client-Context", &ctx)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_ref(), b"{}");
    assert_eq!(r.header("X-Amz-Log-Result"), None);
    {
        let invoked = api.fake.invoked.lock().unwrap();
        let (_, input) = &invoked[1];
        assert_eq!(input.payload.as_ref(), b"{}");
        assert_eq!(
            input.client_context.as_deref(),
            Some(r#"{"custom": {"k": "v"}}"#)
        );
        assert!(!input.tail_logs);
    }

    // DryRun and Event.
    let r = api
        .invoke("f", b"{}".to_vec(), &[("X-Amz-Invocation-Type", "DryRun")])
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.header("X-Amzn-RequestId").is_some());
    assert_eq!(api.fake.invoked.lock().unwrap().len(), 2);
    let r = api
        .invoke(
            "f",
            br#"{"async": true}"#.to_vec(),
            &[("X-Amz-Invocation-Type", "Event")],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(r.body.is_empty());
    assert!(r.header("X-Amzn-RequestId").is_some());
    let mut waited = Duration::ZERO;
    while api.fake.invoked.lock().unwrap().len() < 3 {
        assert!(
            waited < Duration::from_secs(5),
            "event invocation never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
    assert_eq!(
        api.fake.invoked.lock().unwrap()[2].1.payload.as_ref(),
        br#"{"async": true}"#
    );
}

#[tokio::test]
async fn invoke_rejections() {
    let api = api();
    api.create("f", json!({})).await;
    api.invoke("nope", b"{}".to_vec(), &[])
        .await
        .assert_error(404, "ResourceNotFoundException");
    api.invoke("f:7", b"{}".to_vec(), &[])
        .await
        .assert_error(404, "ResourceNotFoundException");
    let msg = api
        .invoke("f", b"{not json".to_vec(), &[])
        .await
        .assert_error(400, "InvalidRequestContentException");
    assert!(
        msg.starts_with("Could not parse request body into json: "),
        "{msg}"
    );

    // Sizes: 6 MiB synchronous, 256 KiB for Event; at the limit is fine.
    let json_of_len = |n: usize| {
        let mut v = vec![b' '; n];
        v[0] = b'1';
        v
    };
    let sync_max = 6 * 1024 * 1024;
    let r = api.invoke("f", json_of_len(sync_max), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    api.invoke("f", json_of_len(sync_max + 1), &[])
        .await
        .assert_error(413, "RequestTooLargeException");
    api.invoke(
        "f",
        json_of_len(256 * 1024 + 1),
        &[("X-Amz-Invocation-Type", "Event")],
    )
    .await
    .assert_error(413, "RequestTooLargeException");

    for (h, v, code) in [
        ("X-Amz-Invocation-Type", "Later", "ValidationException"),
        ("X-Amz-Log-Type", "Everything", "ValidationException"),
        (
            "X-Amz-Client-Context",
            "%%%",
            "InvalidRequestContentException",
        ),
        (
            "X-Amz-Client-Context",
            "e25vcGU=",
            "InvalidRequestContentException",
        ),
    ] {
        api.invoke("f", b"{}".to_vec(), &[(h, v)])
            .await
            .assert_error(400, code);
    }
}

#[tokio::test]
async fn invoke_errors_and_function_errors() {
    let api = api_with(Arc::new(
        |f: &FunctionRecord, input: &InvokeInput| match input.payload.as_ref() {
            b"\"busy\"" => Err(InvokeError::TooManyRequests(8)),
            b"\"stop\"" => Err(InvokeError::ShuttingDown),
            b"\"broken\"" => Err(InvokeError::Sandbox(anyhow::anyhow!("cgroup gone"))),
            _ => Ok(InvokeOutcome {
                request_id: "r-err".into(),
                payload: Bytes::from_static(br#"{"errorType":"ValueError","errorMessage":"boom"}"#),
                function_error: Some("Unhandled".into()),
                start: StartKind::Warm,
                timings: PhaseTimings {
                    invoke_ms: 2.0,
                    ..PhaseTimings::default()
                },
                log_tail: None,
                memory: None,
            })
            .inspect(|_| assert_eq!(f.name, "f")),
        },
    ));
    api.create("f", json!({})).await;
    let r = api.invoke("f", b"{}".to_vec(), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("X-Amz-Function-Error"), Some("Unhandled"));
    assert_eq!(r.header("X-Thaw-Start"), Some("warm"));
    assert_eq!(r.json()["errorType"], "ValueError");

    let busy = api.invoke("f", b"\"busy\"".to_vec(), &[]).await;
    busy.assert_error(429, "TooManyRequestsException");
    assert_eq!(busy.json()["Reason"], "ConcurrentInvocationLimitExceeded");
    api.invoke("f", b"\"stop\"".to_vec(), &[])
        .await
        .assert_error(503, "ServiceException");
    api.invoke("f", b"\"broken\"".to_vec(), &[])
        .await
        .assert_error(500, "ServiceException");
}

#[tokio::test]
async fn logs_metrics_health() {
    let api = api();
    api.create("f", json!({})).await;
    let r = api.call("GET", "/thaw/v1/functions/f/logs", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert_eq!(v[0]["line"], "f line 0");
    assert_eq!(v[0]["stream"], "stdout");
    assert_eq!(v[0]["ts_ms"], 1_700_000_000_000u64);
    let r = api
        .call(
            "GET",
            "/thaw/v1/functions/f/logs?request_id=abc&limit=2",
            None,
        )
        .await
        .json();
    assert_eq!(r.as_array().unwrap().len(), 2);
    assert_eq!(r[1]["request_id"], "abc");
    for bad in ["0", "x", "10001"] {
        api.call(
            "GET",
            &format!("/thaw/v1/functions/f/logs?limit={bad}"),
            None,
        )
        .await
        .assert_error(400, "ValidationException");
    }
    api.call("GET", "/thaw/v1/functions/nope/logs", None)
        .await
        .assert_error(404, "ResourceNotFoundException");

    let m = api.call("GET", "/metrics", None).await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(
        m.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(String::from_utf8_lossy(&m.body).contains("thaw_up 1"));
    let h = api.call("GET", "/healthz", None).await;
    assert_eq!(h.status, StatusCode::OK);
}

#[tokio::test]
async fn reserved_concurrency_and_account_settings() {
    let api = api();
    assert_eq!(api.create("a", json!({})).await.status, StatusCode::CREATED);
    assert_eq!(api.create("b", json!({})).await.status, StatusCode::CREATED);
    let api = &api;
    let put = move |name: &str, n: Value| {
        let uri = format!("/2017-10-31/functions/{name}/concurrency");
        async move {
            api.call(
                "PUT",
                &uri,
                Some(json!({"ReservedConcurrentExecutions": n})),
            )
            .await
        }
    };
    let r = api
        .call("GET", "/2019-09-30/functions/a/concurrency", None)
        .await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!({})));
    let g = api
        .call("GET", "/2015-03-31/functions/a", None)
        .await
        .json();
    assert!(g.get("Concurrency").is_none(), "{g}");

    let r = put("a", json!(5)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"ReservedConcurrentExecutions": 5}));
    let r = api
        .call("GET", "/2019-09-30/functions/a/concurrency", None)
        .await;
    assert_eq!(r.json(), json!({"ReservedConcurrentExecutions": 5}));
    let g = api
        .call("GET", "/2015-03-31/functions/a", None)
        .await
        .json();
    assert_eq!(g["Concurrency"], json!({"ReservedConcurrentExecutions": 5}));
    // A reservation is not a new revision.
    assert_eq!(
        g["Configuration"]["RevisionId"],
        api.call("GET", "/2015-03-31/functions/a/configuration", None)
            .await
            .json()["RevisionId"]
    );

    let s = api.call("GET", "/2016-08-19/account-settings", None).await;
    assert_eq!(s.status, StatusCode::OK);
    let s = s.json();
    assert_eq!(s["AccountLimit"]["ConcurrentExecutions"], 1000);
    assert_eq!(s["AccountLimit"]["UnreservedConcurrentExecutions"], 995);
    assert_eq!(s["AccountLimit"]["CodeSizeZipped"], 52_428_800);
    assert_eq!(s["AccountLimit"]["CodeSizeUnzipped"], 262_144_000);
    assert_eq!(s["AccountLimit"]["TotalCodeSize"], 80_530_636_800_u64);
    assert_eq!(s["AccountUsage"]["FunctionCount"], 2);
    assert!(s["AccountUsage"]["TotalCodeSize"].as_u64().unwrap() > 0);

    // 1000 - 5 (a) - 896 leaves 99 < 100.
    let msg = put("b", json!(896))
        .await
        .assert_error(400, "InvalidParameterValueException");
    assert_eq!(
        msg,
        "Specified ReservedConcurrentExecutions for function decreases account's UnreservedConcurrentExecution below its minimum value of [100]."
    );
    assert_eq!(put("b", json!(895)).await.status, StatusCode::OK);
    put("b", json!(-1))
        .await
        .assert_error(400, "ValidationException");
    let r = api
        .call(
            "PUT",
            "/2017-10-31/functions/b/concurrency",
            Some(json!({})),
        )
        .await;
    r.assert_error(400, "ValidationException");
    put("nope", json!(1))
        .await
        .assert_error(404, "ResourceNotFoundException");
    api.call("GET", "/2019-09-30/functions/nope/concurrency", None)
        .await
        .assert_error(404, "ResourceNotFoundException");
    api.call("DELETE", "/2017-10-31/functions/nope/concurrency", None)
        .await
        .assert_error(404, "ResourceNotFoundException");

    let r = api
        .call("DELETE", "/2017-10-31/functions/b/concurrency", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api
        .call("GET", "/2019-09-30/functions/b/concurrency", None)
        .await;
    assert_eq!(r.json(), json!({}));
    let s = api
        .call("GET", "/2016-08-19/account-settings", None)
        .await
        .json();
    assert_eq!(s["AccountLimit"]["UnreservedConcurrentExecutions"], 995);
}

#[tokio::test]
async fn provisioned_concurrency_configs() {
    let api = api();
    assert_eq!(api.create("p", json!({})).await.status, StatusCode::CREATED);
    let uri = "/2019-09-30/functions/p/provisioned-concurrency?Qualifier=%24LATEST";
    api.call("GET", uri, None)
        .await
        .assert_error(404, "ProvisionedConcurrencyConfigNotFoundException");
    let l = api
        .call(
            "GET",
            "/2019-09-30/functions/p/provisioned-concurrency?List=ALL",
            None,
        )
        .await;
    assert_eq!(l.json(), json!({"ProvisionedConcurrencyConfigs": []}));

    let r = api
        .call(
            "PUT",
            uri,
            Some(json!({"ProvisionedConcurrentExecutions": 2})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let v = r.json();
    assert_eq!(v["RequestedProvisionedConcurrentExecutions"], 2);
    assert_eq!(v["AvailableProvisionedConcurrentExecutions"], 0);
    assert_eq!(v["AllocatedProvisionedConcurrentExecutions"], 0);
    assert_eq!(v["Status"], "IN_PROGRESS");
    assert!(v["LastModified"].as_str().unwrap().ends_with("+0000"));
    let g = api.call("GET", uri, None).await.json();
    assert_eq!(g["RequestedProvisionedConcurrentExecutions"], 2);
    let l = api
        .call(
            "GET",
            "/2019-09-30/functions/p/provisioned-concurrency?List=ALL",
            None,
        )
        .await
        .json();
    let item = &l["ProvisionedConcurrencyConfigs"][0];
    assert_eq!(
        item["FunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:p:$LATEST"
    );
    assert_eq!(item["Status"], "IN_PROGRESS");
    // It comes out of the unreserved pool.
    let s = api
        .call("GET", "/2016-08-19/account-settings", None)
        .await
        .json();
    assert_eq!(s["AccountLimit"]["UnreservedConcurrentExecutions"], 998);

    // Validation: at least 1; within the reservation; other qualifiers are
    // versions that do not exist.
    api.call(
        "PUT",
        uri,
        Some(json!({"ProvisionedConcurrentExecutions": 0})),
    )
    .await
    .assert_error(400, "ValidationException");
    api.call(
        "PUT",
        "/2019-09-30/functions/p/provisioned-concurrency?Qualifier=1",
        Some(json!({"ProvisionedConcurrentExecutions": 1})),
    )
    .await
    .assert_error(404, "ResourceNotFoundException");
    api.call(
        "PUT",
        "/2017-10-31/functions/p/concurrency",
        Some(json!({"ReservedConcurrentExecutions": 1})),
    )
    .await
    .assert_error(400, "InvalidParameterValueException");
    assert_eq!(
        api.call(
            "PUT",
            "/2017-10-31/functions/p/concurrency",
            Some(json!({"ReservedConcurrentExecutions": 3})),
        )
        .await
        .status,
        StatusCode::OK
    );
    let msg = api
        .call(
            "PUT",
            uri,
            Some(json!({"ProvisionedConcurrentExecutions": 4})),
        )
        .await
        .assert_error(400, "InvalidParameterValueException");
    assert!(msg.contains("reservedConcurrentExecution"), "{msg}");

    let r = api.call("DELETE", uri, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    api.call("GET", uri, None)
        .await
        .assert_error(404, "ProvisionedConcurrencyConfigNotFoundException");
    api.call(
        "GET",
        "/2019-09-30/functions/nope/provisioned-concurrency?List=ALL",
        None,
    )
    .await
    .assert_error(404, "ResourceNotFoundException");
}

#[tokio::test]
async fn snapshot_event_must_be_json_and_server_errors_name_no_host_paths() {
    let api = api();
    api.create("f", json!({}))
        .await
        .status
        .is_success()
        .then_some(())
        .unwrap();
    for bad in [&b"{not json"[..], b"\xff\xfe", b"[1,"] {
        let r = api
            .send(
                Request::builder()
                    .method("POST")
                    .uri("/thaw/v1/functions/f/snapshot")
                    .body(Body::from(bad))
                    .unwrap(),
            )
            .await;
        r.assert_error(400, "InvalidRequestContentException");
    }
    assert!(
        api.fake.snapshots.lock().unwrap().is_empty(),
        "a bad event started a build"
    );
    let r = api
        .raw("POST", "/thaw/v1/functions/f/snapshot", b"{\"k\": 1}")
        .await;
    let msg = r.assert_error(500, "ServiceException");
    assert_eq!(api.fake.snapshots.lock().unwrap().len(), 1);
    assert!(msg.contains("No space left on device"), "{msg}");
    assert!(!msg.contains("/var/lib") && !msg.contains("/work"), "{msg}");
    // Larger than a synchronous event: 413 before any build.
    let big = vec![b' '; 7 * 1024 * 1024];
    let r = api
        .send(
            Request::builder()
                .method("POST")
                .uri("/thaw/v1/functions/f/snapshot")
                .body(Body::from(big))
                .unwrap(),
        )
        .await;
    r.assert_error(413, "RequestTooLargeException");
    assert_eq!(api.fake.snapshots.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn zip_entries_with_long_names_or_deep_paths_are_refused() {
    let api = api();
    let long = format!("{}.py", "a".repeat(300));
    let deep = format!("{}app.py", "d/".repeat(70));
    let long_total = format!("{}/app.py", vec!["b".repeat(200); 6].join("/"));
    for name in [&long, &deep, &long_total] {
        let zip = zip_of(&[
            (name, "x"),
            ("app.py", "def handler(e, c):\n    return e\n"),
        ]);
        let msg = api
            .create("f", json!({"Code": {"ZipFile": STANDARD.encode(zip)}}))
            .await
            .assert_error(400, "InvalidParameterValueException");
        assert!(msg.starts_with("Unsafe entry"), "{msg}");
        assert!(msg.len() < 400, "the message echoes the whole name: {msg}");
        let dir = api._dir.path().to_string_lossy().into_owned();
        assert!(!msg.contains(&dir), "{msg}");
    }
    assert!(api.fake.registry.list().is_empty());
    // At the limits: accepted.
    let ok_name = format!("{}.py", "a".repeat(252));
    let zip = zip_of(&[
        (&ok_name, "x"),
        ("app.py", "def handler(e, c):\n    return e\n"),
    ]);
    let r = api
        .create("f", json!({"Code": {"ZipFile": STANDARD.encode(zip)}}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

#[tokio::test]
async fn settings_operations_have_a_small_body_limit() {
    let api = api();
    api.create("f", json!({})).await;
    let mut body = vec![b' '; 2 * 1024 * 1024];
    body.extend_from_slice(b"{}");
    let r = api
        .send(
            Request::builder()
                .method("PUT")
                .uri("/2015-03-31/functions/f/configuration")
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    let msg = r.assert_error(413, "RequestTooLargeException");
    assert!(msg.contains("UpdateFunctionConfiguration"), "{msg}");
}

#[tokio::test]
async fn a_body_that_never_ends_gets_408_and_closes_the_connection() {
    let api = api();
    api.create("f", json!({})).await;
    let limit = Duration::from_millis(300);
    let app = api
        .app
        .clone()
        .layer(axum::middleware::from_fn(move |req, next| {
            thawd::api::body_deadline(limit, req, next)
        }));
    // One chunk, then nothing ever again.
    let stream =
        futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"{\"a\"")) })
            .chain(futures::stream::pending());
    let t0 = std::time::Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        app.oneshot(
            Request::builder()
                .method("POST")
                .uri("/2015-03-31/functions/f/invocations")
                .body(Body::from_stream(stream))
                .unwrap(),
        ),
    )
    .await
    .expect("the deadline did not fire")
    .unwrap();
    assert!(t0.elapsed() >= limit);
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(
        resp.headers().get("x-amzn-ErrorType").unwrap(),
        "RequestTimeoutException"
    );
    assert_eq!(resp.headers().get("connection").unwrap(), "close");
    assert!(api.fake.invoked.lock().unwrap().is_empty());
}

/// Each account has its own namespace: the same name in two accounts is
/// two functions; an account lists, reads, invokes and deletes only its
/// own; another account's ARN is refused with 403; the operator-wide
/// endpoints are the root account's.
#[tokio::test]
async fn accounts_have_their_own_functions() {
    let api = api();
    const A: &str = "123456789012";
    const B: &str = "210987654321";
    let create = |account: &'static str, body: &'static str| {
        let api = &api;
        async move {
            let req = json!({
                "FunctionName": "f",
                "Runtime": "python3.11",
                "Role": "arn:aws:iam::000000000000:role/thaw",
                "Handler": "app.handler",
                "Code": {"ZipFile": STANDARD.encode(app_zip(body))},
            });
            api.call_as(account, "POST", "/2015-03-31/functions", Some(req))
                .await
        }
    };
    let a = create(A, "def handler(e, c):\n    return 'a'\n").await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    assert_eq!(a.json()["FunctionName"], "f");
    assert_eq!(
        a.json()["FunctionArn"],
        format!("arn:aws:lambda:us-east-1:{A}:function:f")
    );
    let b = create(B, "def handler(e, c):\n    return 'b'\n").await;
    assert_eq!(b.status, StatusCode::CREATED);
    assert_eq!(
        b.json()["FunctionArn"],
        format!("arn:aws:lambda:us-east-1:{B}:function:f")
    );
    assert_ne!(a.json()["CodeSha256"], b.json()["CodeSha256"]);
    // The same name again in A is a conflict, naming only the name.
    let again = create(A, "x").await;
    let msg = again.assert_error(409, "ResourceConflictException");
    assert!(!msg.contains(B) && !msg.contains('.'), "{msg}");

    // Each lists only its own; the root account has none.
    for (account, arn_account) in [(A, A), (B, B)] {
        let list = api
            .call_as(account, "GET", "/2015-03-31/functions", None)
            .await
            .json();
        let fns = list["Functions"].as_array().unwrap();
        assert_eq!(fns.len(), 1, "{list}");
        assert_eq!(
            fns[0]["FunctionArn"],
            format!("arn:aws:lambda:us-east-1:{arn_account}:function:f")
        );
    }
    let root_list = api.call("GET", "/2015-03-31/functions", None).await.json();
    assert_eq!(
        root_list["Functions"].as_array().unwrap().len(),
        0,
        "{root_list}"
    );
    api.call("GET", "/2015-03-31/functions/f", None)
        .await
        .assert_error(404, "ResourceNotFoundException");

    // By its own ARN: found; by the other account's ARN: 403, for every
    // kind of operation, and nothing changes.
    let own = api
        .call_as(
            A,
            "GET",
            &format!("/2015-03-31/functions/arn:aws:lambda:us-east-1:{A}:function:f"),
            None,
        )
        .await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(
        own.json()["Configuration"]["FunctionArn"],
        format!("arn:aws:lambda:us-east-1:{A}:function:f")
    );
    let other = format!("arn:aws:lambda:us-east-1:{B}:function:f");
    for (method, path, body) in [
        ("GET", format!("/2015-03-31/functions/{other}"), None),
        (
            "PUT",
            format!("/2015-03-31/functions/{other}/configuration"),
            Some(json!({"Timeout": 9})),
        ),
        ("DELETE", format!("/2015-03-31/functions/{other}"), None),
        (
            "POST",
            format!("/2015-03-31/functions/{other}/invocations"),
            Some(json!({})),
        ),
        ("GET", format!("/thaw/v1/functions/{other}/logs"), None),
        ("GET", format!("/thaw/v1/functions/{other}/code"), None),
        ("GET", format!("/2015-03-31/functions/{B}:function:f"), None),
    ] {
        api.call_as(A, method, &path, body)
            .await
            .assert_error(403, "AccessDeniedException");
    }
    assert!(api.fake.invoked.lock().unwrap().is_empty());
    let b_cfg = api
        .call_as(B, "GET", "/2015-03-31/functions/f/configuration", None)
        .await
        .json();
    assert_eq!(b_cfg["Timeout"], 3, "{b_cfg}");

    // Invocations reach each account's own function.
    let r = api
        .call_as(
            B,
            "POST",
            "/2015-03-31/functions/f/invocations",
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let invoked = api.fake.invoked.lock().unwrap().clone();
    assert_eq!(invoked.len(), 1);
    assert_eq!(invoked[0].0, format!("{B}.f"));

    // Concurrency is counted per account: A's reservation leaves B's
    // unreserved pool whole.
    let put = api
        .call_as(
            A,
            "PUT",
            "/2017-10-31/functions/f/concurrency",
            Some(json!({"ReservedConcurrentExecutions": 900})),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{:?}", put.body);
    let settings = |account: &'static str| {
        let api = &api;
        async move {
            api.call_as(account, "GET", "/2016-08-19/account-settings", None)
                .await
                .json()
        }
    };
    let a_settings = settings(A).await;
    let b_settings = settings(B).await;
    assert_eq!(
        a_settings["AccountLimit"]["UnreservedConcurrentExecutions"], 100,
        "{a_settings}"
    );
    assert_eq!(
        b_settings["AccountLimit"]["UnreservedConcurrentExecutions"], 1000,
        "{b_settings}"
    );
    assert_eq!(b_settings["AccountUsage"]["FunctionCount"], 1);

    // Operator-wide endpoints are the root account's.
    for (method, path) in [("GET", "/metrics"), ("POST", "/thaw/v1/store/drop-caches")] {
        api.call_as(A, method, path, None)
            .await
            .assert_error(403, "AccessDeniedException");
        assert_eq!(api.call(method, path, None).await.status, StatusCode::OK);
    }

    // Deleting A's function leaves B's.
    let d = api
        .call_as(A, "DELETE", "/2015-03-31/functions/f", None)
        .await;
    assert_eq!(d.status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.fake.retired.lock().unwrap().last().unwrap(),
        &format!("{A}.f")
    );
    api.call_as(A, "GET", "/2015-03-31/functions/f", None)
        .await
        .assert_error(404, "ResourceNotFoundException");
    assert_eq!(
        api.call_as(B, "GET", "/2015-03-31/functions/f", None)
            .await
            .status,
        StatusCode::OK
    );
}

/// A request that reached the routes without a verified caller (a
/// router assembled without the signature check) is refused, not served
/// as some account.
#[tokio::test]
async fn a_request_without_a_verified_caller_is_refused() {
    let api = api();
    let bare = router_with(api.fake.clone());
    let resp = bare
        .oneshot(
            Request::builder()
                .uri("/2015-03-31/functions")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

/// thaw's own settings of a function are its settings, not variables:
/// `THAW_MEMORY_MODE` and `THAW_RESEED` are refused in an environment and
/// set with the settings route (validated, stored, a change retires the
/// function's instances, the revision stays).
#[tokio::test]
async fn platform_settings_are_settings_not_variables() {
    let api = api();
    let r = api
        .create(
            "f",
            json!({"Environment": {"Variables": {"THAW_MEMORY_MODE": "eager"}}}),
        )
        .await;
    let msg = r.assert_error(400, "InvalidParameterValueException");
    assert!(msg.contains("settings"), "{msg}");
    let created = api.create("f", json!({})).await.json();
    let r = api
        .call(
            "PUT",
            "/2015-03-31/functions/f/configuration",
            Some(json!({"Environment": {"Variables": {"THAW_RESEED": "0"}}})),
        )
        .await;
    r.assert_error(400, "InvalidParameterValueException");

    let get = api.call("GET", "/thaw/v1/functions/f/settings", None).await;
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(get.json(), json!({}));
    let put = api
        .call(
            "PUT",
            "/thaw/v1/functions/f/settings",
            Some(json!({"MemoryMode": "eager", "Reseed": false})),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{:?}", put.body);
    assert_eq!(put.json(), json!({"MemoryMode": "eager", "Reseed": false}));
    assert_eq!(api.fake.retired.lock().unwrap().last().unwrap(), "f");
    let record = api.fake.registry.get("f").unwrap();
    assert_eq!(record.platform.memory_mode.as_deref(), Some("eager"));
    assert_eq!(record.platform.reseed, Some(false));
    assert_eq!(
        record.revision_id, created["RevisionId"],
        "the revision stays"
    );
    for bad in [
        json!({"MemoryMode": "fast"}),
        json!({"Speed": 1}),
        json!([]),
    ] {
        let r = api
            .call("PUT", "/thaw/v1/functions/f/settings", Some(bad))
            .await;
        assert!(r.status.is_client_error(), "{:?}", r.body);
    }
    api.call("PUT", "/thaw/v1/functions/nope/settings", Some(json!({})))
        .await
        .assert_error(404, "ResourceNotFoundException");
    // Another account neither reads nor changes them.
    api.call_as(
        "123456789012",
        "GET",
        "/thaw/v1/functions/arn:aws:lambda:us-east-1:000000000000:function:f/settings",
        None,
    )
    .await
    .assert_error(403, "AccessDeniedException");
}

/// Fails every invocation whose payload says so; echoes the others.
fn fail_when_asked(f: &FunctionRecord, input: &InvokeInput) -> Result<InvokeOutcome, InvokeError> {
    let mut out = echo(f, input)?;
    if input.payload.windows(4).any(|w| w == b"fail") {
        out.payload = Bytes::from_static(br#"{"errorMessage":"asked to","errorType":"Exception"}"#);
        out.function_error = Some("Unhandled".into());
    }
    Ok(out)
}

#[tokio::test]
async fn event_invoke_configs_and_the_queue() {
    let api = api_with(Arc::new(fail_when_asked));
    for f in ["f", "dlq"] {
        assert_eq!(api.create(f, json!({})).await.status, StatusCode::CREATED);
    }
    let path = "/2019-09-25/functions/f/event-invoke-config";
    let arn = |f: &str| format!("arn:aws:lambda:us-east-1:000000000000:function:{f}");

    // None yet.
    api.call("GET", path, None)
        .await
        .assert_error(404, "ResourceNotFoundException");
    api.call("POST", path, Some(json!({"MaximumRetryAttempts": 1})))
        .await
        .assert_error(404, "ResourceNotFoundException");
    // Lambda's bounds and destinations thaw can reach.
    for body in [
        json!({"MaximumRetryAttempts": 3}),
        json!({"MaximumEventAgeInSeconds": 59}),
        json!({"MaximumEventAgeInSeconds": 21601}),
    ] {
        api.call("PUT", path, Some(body))
            .await
            .assert_error(400, "ValidationException");
    }
    for dest in [
        "arn:aws:sqs:us-east-1:000000000000:q".to_string(),
        arn("missing"),
        arn("f"),
        "arn:aws:lambda:us-east-1:123456789012:function:dlq".to_string(),
        "dlq".to_string(),
    ] {
        let msg = api
            .call(
                "PUT",
                path,
                Some(json!({"DestinationConfig": {"OnFailure": {"Destination": dest}}})),
            )
            .await
            .assert_error(400, "InvalidParameterValueException");
        assert!(msg.contains("destination"), "{msg}");
    }
    api.call(
        "PUT",
        "/2019-09-25/functions/nope/event-invoke-config",
        Some(json!({})),
    )
    .await
    .assert_error(404, "ResourceNotFoundException");

    // Put, update (merge), get, list.
    let r = api
        .call(
            "PUT",
            path,
            Some(json!({"MaximumRetryAttempts": 0,
                        "DestinationConfig": {"OnFailure": {"Destination": arn("dlq")}}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let c = r.json();
    assert_eq!(c["FunctionArn"], format!("{}:$LATEST", arn("f")));
    assert_eq!(c["MaximumRetryAttempts"], 0);
    assert!(c["LastModified"].as_f64().unwrap() > 1.7e9);
    let r = api
        .call("POST", path, Some(json!({"MaximumEventAgeInSeconds": 600})))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let c = api.call("GET", path, None).await.json();
    assert_eq!(
        (
            &c["MaximumRetryAttempts"],
            &c["MaximumEventAgeInSeconds"],
            &c["DestinationConfig"]["OnFailure"]["Destination"]
        ),
        (&json!(0), &json!(600), &json!(arn("dlq")))
    );
    let l = api.call("GET", &format!("{path}/list"), None).await.json();
    assert_eq!(l["FunctionEventInvokeConfigs"].as_array().unwrap().len(), 1);
    // Another account does not see it.
    api.call_as("123456789012", "GET", path, None)
        .await
        .assert_error(404, "ResourceNotFoundException");

    // A failing event goes to the failure destination with Lambda's record.
    let r = api
        .invoke(
            "f",
            br#"{"please":"fail"}"#.to_vec(),
            &[("X-Amz-Invocation-Type", "Event")],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let id = r.header("X-Amzn-RequestId").unwrap().to_string();
    let mut waited = Duration::ZERO;
    let record = loop {
        let dlq: Vec<Bytes> = api
            .fake
            .invoked
            .lock()
            .unwrap()
            .iter()
            .filter(|(f, _)| f == "dlq")
            .map(|(_, i)| i.payload.clone())
            .collect();
        if let Some(p) = dlq.first() {
            break serde_json::from_slice::<Value>(p).unwrap();
        }
        assert!(waited < Duration::from_secs(10), "no destination record");
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    };
    assert_eq!(record["requestContext"]["requestId"], id);
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 1);
    assert_eq!(record["requestPayload"], json!({"please": "fail"}));
    assert_eq!(record["responseContext"]["functionError"], "Unhandled");
    assert_eq!(record["responsePayload"]["errorMessage"], "asked to");

    // Without a destination: kept in the failed events, readable.
    api.call("DELETE", path, None).await;
    api.call("GET", path, None)
        .await
        .assert_error(404, "ResourceNotFoundException");
    api.call("PUT", path, Some(json!({"MaximumRetryAttempts": 1})))
        .await;
    let r = api
        .invoke(
            "f",
            br#"{"fail":1}"#.to_vec(),
            &[("X-Amz-Invocation-Type", "Event")],
        )
        .await;
    let id = r.header("X-Amzn-RequestId").unwrap().to_string();
    let mut waited = Duration::ZERO;
    let view = loop {
        let v = api
            .call("GET", "/thaw/v1/functions/f/events", None)
            .await
            .json();
        if v["Failed"].as_array().is_some_and(|a| !a.is_empty()) {
            break v;
        }
        assert!(waited < Duration::from_secs(10), "no failed event: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    };
    assert_eq!(view["Queued"], 0);
    let failed = &view["Failed"][0];
    assert_eq!(failed["requestContext"]["requestId"], id);
    assert_eq!(
        failed["requestContext"]["approximateInvokeCount"], 2,
        "one retry"
    );
    let runs = api
        .fake
        .invoked
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, i)| i.request_id.as_deref() == Some(id.as_str()))
        .count();
    assert_eq!(runs, 2, "the retry keeps the request id");

    // Deleting the function takes its configuration and failed events along.
    assert_eq!(
        api.call("DELETE", "/2015-03-31/functions/f", None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(api.create("f", json!({})).await.status, StatusCode::CREATED);
    api.call("GET", path, None)
        .await
        .assert_error(404, "ResourceNotFoundException");
    let v = api
        .call("GET", "/thaw/v1/functions/f/events", None)
        .await
        .json();
    assert_eq!(v["Failed"], json!([]));
}

#[tokio::test]
async fn tags_are_kept_per_function_and_account() {
    let api = api();
    assert_eq!(
        api.create("f", json!({"Tags": {"a": "1"}})).await.status,
        StatusCode::CREATED
    );
    let arn = "arn:aws:lambda:us-east-1:000000000000:function:f";
    let path = format!("/2017-03-31/tags/{}", arn.replace(':', "%3A"));
    assert_eq!(
        api.call("GET", &path, None).await.json(),
        json!({"Tags": {"a": "1"}})
    );
    let r = api
        .call("POST", &path, Some(json!({"Tags": {"b": "2"}})))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api
        .call("DELETE", &format!("{path}?tagKeys=a&tagKeys=zz"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.call("GET", &path, None).await.json(),
        json!({"Tags": {"b": "2"}})
    );
    api.call("DELETE", &path, None)
        .await
        .assert_error(400, "ValidationException");
    // The revision (and so the instances and snapshot) stays.
    let before = api
        .call("GET", "/2015-03-31/functions/f", None)
        .await
        .json();
    api.call("POST", &path, Some(json!({"Tags": {"c": "3"}})))
        .await;
    let after = api
        .call("GET", "/2015-03-31/functions/f", None)
        .await
        .json();
    assert_eq!(
        before["Configuration"]["RevisionId"],
        after["Configuration"]["RevisionId"]
    );
    assert_eq!(after["Tags"], json!({"b": "2", "c": "3"}));
    // Another account cannot read or change them.
    api.call_as("123456789012", "GET", &path, None)
        .await
        .assert_error(403, "AccessDeniedException");
    api.call_as(
        "123456789012",
        "POST",
        &path,
        Some(json!({"Tags": {"x": "1"}})),
    )
    .await
    .assert_error(403, "AccessDeniedException");
    api.call("GET", "/2017-03-31/tags/nope", None)
        .await
        .assert_error(404, "ResourceNotFoundException");
}

/// Members of `FunctionConfiguration` in botocore's service model
/// (`lambda/2015-03-31/service-2.json`), which boto3 parses.
const LAMBDA_CONFIGURATION_MEMBERS: &[&str] = &[
    "FunctionName",
    "FunctionArn",
    "Runtime",
    "Role",
    "Handler",
    "CodeSize",
    "Description",
    "Timeout",
    "MemorySize",
    "LastModified",
    "CodeSha256",
    "Version",
    "VpcConfig",
    "DeadLetterConfig",
    "Environment",
    "KMSKeyArn",
    "TracingConfig",
    "MasterArn",
    "RevisionId",
    "Layers",
    "State",
    "StateReason",
    "StateReasonCode",
    "LastUpdateStatus",
    "LastUpdateStatusReason",
    "LastUpdateStatusReasonCode",
    "FileSystemConfigs",
    "PackageType",
    "ImageConfigResponse",
    "SigningProfileVersionArn",
    "SigningJobArn",
    "Architectures",
    "EphemeralStorage",
    "SnapStart",
    "RuntimeVersionConfig",
    "LoggingConfig",
];

/// Every member thaw returns is one of Lambda's, spelled as Lambda spells
/// it, with the nested shapes of the kept configuration; the members Lambda
/// always returns for a zip function are there.
#[tokio::test]
async fn get_function_has_lambdas_shape() {
    let api = api();
    let r = api
        .create(
            "f",
            json!({
                "Environment": {"Variables": {"A": "1"}},
                "VpcConfig": {"SubnetIds": ["subnet-1"], "SecurityGroupIds": ["sg-1"]},
                "DeadLetterConfig": {"TargetArn": "arn:aws:sns:us-east-1:000000000000:t"},
                "TracingConfig": {"Mode": "Active"},
                "KMSKeyArn": "arn:aws:kms:us-east-1:000000000000:key/k",
                "SnapStart": {"ApplyOn": "PublishedVersions"},
                "LoggingConfig": {"LogFormat": "JSON", "SystemLogLevel": "WARN"},
                "Tags": {"t": "1"},
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let v = api
        .call("GET", "/2015-03-31/functions/f", None)
        .await
        .json();
    let c = v["Configuration"].as_object().unwrap();
    for k in c.keys() {
        assert!(
            LAMBDA_CONFIGURATION_MEMBERS.contains(&k.as_str()),
            "{k} is not a member of Lambda's FunctionConfiguration"
        );
    }
    for k in [
        "FunctionName",
        "FunctionArn",
        "Runtime",
        "Role",
        "Handler",
        "CodeSize",
        "Description",
        "Timeout",
        "MemorySize",
        "LastModified",
        "CodeSha256",
        "Version",
        "TracingConfig",
        "RevisionId",
        "State",
        "LastUpdateStatus",
        "PackageType",
        "Architectures",
        "EphemeralStorage",
        "SnapStart",
        "LoggingConfig",
    ] {
        assert!(c.contains_key(k), "{k} missing: {v}");
    }
    assert_eq!(
        c["VpcConfig"],
        json!({"SubnetIds": ["subnet-1"], "SecurityGroupIds": ["sg-1"], "VpcId": ""})
    );
    assert_eq!(
        c["DeadLetterConfig"],
        json!({"TargetArn": "arn:aws:sns:us-east-1:000000000000:t"})
    );
    assert_eq!(c["TracingConfig"], json!({"Mode": "Active"}));
    assert_eq!(c["KMSKeyArn"], "arn:aws:kms:us-east-1:000000000000:key/k");
    assert_eq!(
        c["SnapStart"],
        json!({"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"})
    );
    assert_eq!(
        c["LoggingConfig"],
        json!({"LogFormat": "JSON", "SystemLogLevel": "WARN", "LogGroup": "/aws/lambda/f"})
    );
    assert_eq!(v["Tags"], json!({"t": "1"}));
    assert_eq!(
        v["Code"]["RepositoryType"], "S3",
        "GetFunction's Code location: {v}"
    );
    // Refused as Lambda refuses, nothing created.
    for (extra, code) in [
        (
            json!({"TracingConfig": {"Mode": "Loud"}}),
            "ValidationException",
        ),
        (
            json!({"DeadLetterConfig": {"TargetArn": "arn:aws:lambda:us-east-1:000000000000:function:f"}}),
            "InvalidParameterValueException",
        ),
        (
            json!({"LoggingConfig": {"ApplicationLogLevel": "INFO"}}),
            "InvalidParameterValueException",
        ),
    ] {
        api.create("g", extra).await.assert_error(400, code);
    }
    api.call("GET", "/2015-03-31/functions/g", None)
        .await
        .assert_error(404, "ResourceNotFoundException");
}

#[tokio::test]
async fn versions_and_aliases() {
    let api = api();
    // Publish=True on create answers with version 1.
    let v1 = api.create("f", json!({"Publish": true})).await;
    assert_eq!(v1.status, StatusCode::CREATED, "{:?}", v1.body);
    let v1 = v1.json();
    assert_eq!(v1["Version"], "1");
    assert_eq!(
        v1["FunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:f:1"
    );
    // Nothing changed since: publishing again returns version 1.
    let again = api
        .call("POST", "/2015-03-31/functions/f/versions", Some(json!({})))
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.json()["Version"], "1");
    // New code, then a version with its own description; preconditions.
    let zip2 = app_zip("def handler(e, c):\n    return {'v': 2}\n");
    let latest = api
        .call(
            "PUT",
            "/2015-03-31/functions/f/code",
            Some(json!({"ZipFile": STANDARD.encode(&zip2)})),
        )
        .await
        .json();
    api.call(
        "POST",
        "/2015-03-31/functions/f/versions",
        Some(json!({"CodeSha256": v1["CodeSha256"]})),
    )
    .await
    .assert_error(412, "PreconditionFailedException");
    api.call(
        "POST",
        "/2015-03-31/functions/f/versions",
        Some(json!({"RevisionId": v1["RevisionId"]})),
    )
    .await
    .assert_error(412, "PreconditionFailedException");
    let v2 = api
        .call(
            "POST",
            "/2015-03-31/functions/f/versions",
            Some(json!({"Description": "second", "CodeSha256": latest["CodeSha256"]})),
        )
        .await
        .json();
    assert_eq!(
        (v2["Version"].as_str(), v2["Description"].as_str()),
        (Some("2"), Some("second"))
    );

    // Listed $LATEST first, in pages.
    let list = |q: &'static str| {
        let api = &api;
        async move {
            let r = api
                .call("GET", &format!("/2015-03-31/functions/f/versions{q}"), None)
                .await
                .json();
            let vs: Vec<String> = r["Versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["Version"].as_str().unwrap().to_string())
                .collect();
            (vs, r["NextMarker"].as_str().map(str::to_string))
        }
    };
    assert_eq!(
        list("").await,
        (vec!["$LATEST".into(), "1".into(), "2".into()], None)
    );
    assert_eq!(
        list("?MaxItems=2").await,
        (vec!["$LATEST".into(), "1".into()], Some("1".into()))
    );
    assert_eq!(list("?Marker=1").await, (vec!["2".into()], None));

    // A version's configuration and code are its own.
    for path in ["f:1/configuration", "f/configuration?Qualifier=1"] {
        let c = api
            .call("GET", &format!("/2015-03-31/functions/{path}"), None)
            .await
            .json();
        assert_eq!(
            (c["Version"].as_str(), &c["CodeSha256"]),
            (Some("1"), &v1["CodeSha256"]),
            "{path}"
        );
    }
    let g = api
        .call("GET", "/2015-03-31/functions/f?Qualifier=1", None)
        .await
        .json();
    let location = g["Code"]["Location"].as_str().unwrap();
    assert!(
        location.ends_with("/thaw/v1/functions/f/code?Qualifier=1"),
        "{location}"
    );
    let code1 = api
        .call("GET", "/thaw/v1/functions/f/code?Qualifier=1", None)
        .await;
    assert_eq!(
        code1.body.as_ref(),
        app_zip("def handler(e, c):\n    return e\n").as_slice()
    );
    api.call("GET", "/2015-03-31/functions/f:1?Qualifier=2", None)
        .await
        .assert_error(400, "InvalidParameterValueException");
    api.call("GET", "/2015-03-31/functions/f:9", None)
        .await
        .assert_error(404, "ResourceNotFoundException");

    // Invoking a version runs that version's instances.
    let r = api.invoke("f:1", b"{}".to_vec(), &[]).await;
    assert_eq!(r.header("x-amz-executed-version"), Some("1"));
    let r = api.invoke("f:$LATEST", b"{}".to_vec(), &[]).await;
    assert_eq!(r.header("x-amz-executed-version"), Some("$LATEST"));

    // Aliases: checked, then routed.
    let alias = |body: Value| api.call("POST", "/2015-03-31/functions/f/aliases", Some(body));
    alias(json!({"Name": "123", "FunctionVersion": "1"}))
        .await
        .assert_error(400, "ValidationException");
    alias(json!({"Name": "live", "FunctionVersion": "7"}))
        .await
        .assert_error(404, "ResourceNotFoundException");
    alias(json!({"Name": "live", "FunctionVersion": "$LATEST",
                 "RoutingConfig": {"AdditionalVersionWeights": {"2": 0.5}}}))
    .await
    .assert_error(400, "InvalidParameterValueException");
    let live = alias(
        json!({"Name": "live", "FunctionVersion": "1", "Description": "prod",
                            "RoutingConfig": {"AdditionalVersionWeights": {"2": 1.0}}}),
    )
    .await;
    assert_eq!(live.status, StatusCode::CREATED, "{:?}", live.body);
    let live = live.json();
    assert_eq!(
        live["AliasArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:f:live"
    );
    assert_eq!(live["RoutingConfig"]["AdditionalVersionWeights"]["2"], 1.0);
    alias(json!({"Name": "live", "FunctionVersion": "2"}))
        .await
        .assert_error(409, "ResourceConflictException");
    alias(json!({"Name": "dev", "FunctionVersion": "$LATEST"})).await;
    // Weight 1.0 sends every invocation to version 2; the function sees the
    // alias's ARN.
    api.fake.invoked.lock().unwrap().clear();
    let r = api.invoke("f:live", b"{}".to_vec(), &[]).await;
    assert_eq!(r.header("x-amz-executed-version"), Some("2"));
    {
        let invoked = api.fake.invoked.lock().unwrap();
        assert_eq!(invoked[0].0, "f:2");
        assert_eq!(
            invoked[0].1.invoked_arn.as_deref(),
            Some("arn:aws:lambda:us-east-1:000000000000:function:f:live")
        );
    }
    let c = api
        .call("GET", "/2015-03-31/functions/f:live/configuration", None)
        .await
        .json();
    assert_eq!(
        (c["Version"].as_str(), c["FunctionArn"].as_str()),
        (
            Some("1"),
            Some("arn:aws:lambda:us-east-1:000000000000:function:f:live")
        )
    );
    let names = |r: Reply| -> Vec<String> {
        r.json()["Aliases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["Name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(
            api.call("GET", "/2015-03-31/functions/f/aliases", None)
                .await
        ),
        ["dev", "live"]
    );
    assert_eq!(
        names(
            api.call(
                "GET",
                "/2015-03-31/functions/f/aliases?FunctionVersion=1",
                None
            )
            .await
        ),
        ["live"]
    );
    // Versions an alias uses cannot be deleted; $LATEST only with the function.
    api.call("DELETE", "/2015-03-31/functions/f?Qualifier=2", None)
        .await
        .assert_error(409, "ResourceConflictException");
    api.call(
        "DELETE",
        "/2015-03-31/functions/f?Qualifier=%24LATEST",
        None,
    )
    .await
    .assert_error(400, "InvalidParameterValueException");
    // Updates keep what they leave out and check the alias's revision.
    api.call(
        "PUT",
        "/2015-03-31/functions/f/aliases/live",
        Some(json!({"FunctionVersion": "2", "RevisionId": "stale",
                         "RoutingConfig": {"AdditionalVersionWeights": {}}})),
    )
    .await
    .assert_error(412, "PreconditionFailedException");
    api.call(
        "PUT",
        "/2015-03-31/functions/f/aliases/live",
        Some(json!({"FunctionVersion": "2"})),
    )
    .await
    .assert_error(400, "InvalidParameterValueException");
    let moved = api
        .call(
            "PUT",
            "/2015-03-31/functions/f/aliases/live",
            Some(
                json!({"FunctionVersion": "2", "RevisionId": live["RevisionId"],
                          "RoutingConfig": {"AdditionalVersionWeights": {}}}),
            ),
        )
        .await
        .json();
    assert_eq!(
        (
            moved["FunctionVersion"].as_str(),
            moved["Description"].as_str()
        ),
        (Some("2"), Some("prod"))
    );
    assert!(moved.get("RoutingConfig").is_none(), "{moved}");
    let got = api
        .call("GET", "/2015-03-31/functions/f/aliases/live", None)
        .await
        .json();
    assert_eq!(got, moved);

    // An event for an alias runs the version the alias points to when it runs.
    api.fake.invoked.lock().unwrap().clear();
    let r = api
        .invoke(
            "f:live",
            b"{}".to_vec(),
            &[("x-amz-invocation-type", "Event")],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    for _ in 0..200 {
        if !api.fake.invoked.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(api.fake.invoked.lock().unwrap()[0].0, "f:2");

    // Deleting a version releases its instances.
    let r = api
        .call("DELETE", "/2015-03-31/functions/f?Qualifier=1", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(api
        .fake
        .retired
        .lock()
        .unwrap()
        .contains(&"f:1".to_string()));
    api.call("GET", "/2015-03-31/functions/f:1", None)
        .await
        .assert_error(404, "ResourceNotFoundException");
    api.call("DELETE", "/2015-03-31/functions/f/aliases/dev", None)
        .await;
    api.call("GET", "/2015-03-31/functions/f/aliases/dev", None)
        .await
        .assert_error(404, "ResourceNotFoundException");
    // Deleting the function releases every version's.
    let r = api.call("DELETE", "/2015-03-31/functions/f", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let retired = api.fake.retired.lock().unwrap().clone();
    assert!(
        retired.contains(&"f".to_string()) && retired.contains(&"f:2".to_string()),
        "{retired:?}"
    );
}

#[tokio::test]
async fn provisioned_concurrency_on_versions_and_aliases() {
    let api = api();
    api.publish_with_alias("p").await;
    let put = |q: &str, n: u32| {
        let uri = format!("/2019-09-30/functions/p/provisioned-concurrency?Qualifier={q}");
        let api = &api;
        async move {
            api.call(
                "PUT",
                &uri,
                Some(json!({"ProvisionedConcurrentExecutions": n})),
            )
            .await
        }
    };
    assert_eq!(put("1", 2).await.status, StatusCode::ACCEPTED);
    assert_eq!(put("live", 3).await.status, StatusCode::ACCEPTED);
    // A version or alias that does not exist has none.
    put("7", 1)
        .await
        .assert_error(404, "ResourceNotFoundException");
    put("nope", 1)
        .await
        .assert_error(404, "ResourceNotFoundException");
    let list = api
        .call(
            "GET",
            "/2019-09-30/functions/p/provisioned-concurrency?List=ALL",
            None,
        )
        .await
        .json();
    let arns: Vec<(&str, u64)> = list["ProvisionedConcurrencyConfigs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["FunctionArn"].as_str().unwrap(),
                c["RequestedProvisionedConcurrentExecutions"]
                    .as_u64()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(
        arns,
        [
            ("arn:aws:lambda:us-east-1:000000000000:function:p:1", 2),
            ("arn:aws:lambda:us-east-1:000000000000:function:p:live", 3)
        ]
    );
    // Every configuration counts against a reservation.
    api.call(
        "PUT",
        "/2017-10-31/functions/p/concurrency",
        Some(json!({"ReservedConcurrentExecutions": 4})),
    )
    .await
    .assert_error(400, "InvalidParameterValueException");
    api.call(
        "PUT",
        "/2017-10-31/functions/p/concurrency",
        Some(json!({"ReservedConcurrentExecutions": 6})),
    )
    .await;
    put("$LATEST", 2)
        .await
        .assert_error(400, "InvalidParameterValueException");
    assert_eq!(
        put("live", 4).await.status,
        StatusCode::ACCEPTED,
        "replaces its own"
    );
    let settings = api
        .call("GET", "/2016-08-19/account-settings", None)
        .await
        .json();
    assert_eq!(
        settings["AccountLimit"]["UnreservedConcurrentExecutions"],
        1000 - 6
    );
    // Deleting the alias removes its configuration.
    api.call("DELETE", "/2015-03-31/functions/p/aliases/live", None)
        .await;
    api.call("DELETE", "/2017-10-31/functions/p/concurrency", None)
        .await;
    let settings = api
        .call("GET", "/2016-08-19/account-settings", None)
        .await
        .json();
    assert_eq!(
        settings["AccountLimit"]["UnreservedConcurrentExecutions"],
        1000 - 2
    );
    let r = api
        .call("DELETE", "/2015-03-31/functions/p?Qualifier=1", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let list = api
        .call(
            "GET",
            "/2019-09-30/functions/p/provisioned-concurrency?List=ALL",
            None,
        )
        .await
        .json();
    assert_eq!(list["ProvisionedConcurrencyConfigs"], json!([]));
}

/// A web function: `/teapot` answers with a response object, a path with
/// `fail` fails, anything else echoes the event.
fn web(f: &FunctionRecord, input: &InvokeInput) -> Result<InvokeOutcome, InvokeError> {
    let mut out = fail_when_asked(f, input)?;
    let event: Value = serde_json::from_slice(&input.payload).unwrap_or_default();
    if event["rawPath"] == "/teapot" {
        out.payload = Bytes::from(
            json!({"statusCode": 418, "headers": {"X-A": "b"}, "cookies": ["c=1"], "body": "tea"})
                .to_string(),
        );
    }
    Ok(out)
}

#[tokio::test]
async fn function_urls_are_configured_and_served() {
    let api = api_with(Arc::new(web));
    api.create("web", json!({})).await;
    let uri = "/2021-10-31/functions/web/url";
    let created = api
        .call(
            "POST",
            uri,
            Some(
                json!({"AuthType": "NONE", "Cors": {"AllowOrigins": ["https://a.example"],
                        "AllowMethods": ["GET", "POST"], "MaxAge": 60}}),
            ),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let created = created.json();
    let url = created["FunctionUrl"].as_str().unwrap().to_string();
    let host = url
        .strip_prefix("http://")
        .and_then(|h| h.strip_suffix('/'))
        .unwrap()
        .to_string();
    assert!(host.contains(".lambda-url.us-east-1."), "{url}");
    assert_eq!(
        created["FunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:web"
    );
    assert_eq!(
        (created["AuthType"].as_str(), created["InvokeMode"].as_str()),
        (Some("NONE"), Some("BUFFERED"))
    );
    // Refusals: a second URL, a version, a missing alias, streaming.
    api.call("POST", uri, Some(json!({"AuthType": "NONE"})))
        .await
        .assert_error(409, "ResourceConflictException");
    api.call(
        "POST",
        &format!("{uri}?Qualifier=1"),
        Some(json!({"AuthType": "NONE"})),
    )
    .await
    .assert_error(400, "InvalidParameterValueException");
    api.call(
        "POST",
        &format!("{uri}?Qualifier=gone"),
        Some(json!({"AuthType": "NONE"})),
    )
    .await
    .assert_error(404, "ResourceNotFoundException");
    api.call("PUT", uri, Some(json!({"InvokeMode": "RESPONSE_STREAM"})))
        .await
        .assert_error(400, "InvalidParameterValueException");
    api.call("PUT", uri, Some(json!({"AuthType": "OPEN"})))
        .await
        .assert_error(400, "ValidationException");
    let got = api.call("GET", uri, None).await.json();
    assert_eq!(got["FunctionUrl"], url.as_str());
    let listed = api
        .call("GET", "/2021-10-31/functions/web/urls", None)
        .await
        .json();
    assert_eq!(listed["FunctionUrlConfigs"][0]["FunctionUrl"], url.as_str());

    let request = |method: &str, path: &str, headers: &[(&str, &str)], body: &'static [u8]| {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host.as_str());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Body::from(body)).unwrap()
    };
    // The function gets Lambda's event; a plain JSON answer is a 200.
    let r = api
        .send(request(
            "POST",
            "/p/q?x=1&x=2",
            &[("user-agent", "t"), ("cookie", "k=v")],
            b"hi",
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let event = r.json();
    assert_eq!(event["version"], "2.0");
    assert_eq!(event["rawPath"], "/p/q");
    assert_eq!(event["queryStringParameters"]["x"], "1,2");
    assert_eq!(event["cookies"], json!(["k=v"]));
    assert_eq!(event["body"], "hi");
    assert_eq!(event["requestContext"]["http"]["method"], "POST");
    assert_eq!(event["requestContext"]["accountId"], "anonymous");
    assert_eq!(
        event["requestContext"]["domainName"],
        host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h)
    );
    {
        let invoked = api.fake.invoked.lock().unwrap();
        let (key, input) = invoked.last().unwrap();
        assert_eq!(key, "web");
        assert_eq!(
            input.invoked_arn.as_deref(),
            Some("arn:aws:lambda:us-east-1:000000000000:function:web")
        );
    }
    // A host of a function URL never reaches the API: this is the
    // function's path, not ListFunctions.
    let r = api
        .send(request("GET", "/2015-03-31/functions", &[], b""))
        .await;
    assert_eq!(r.json()["rawPath"], "/2015-03-31/functions");
    // A response object: status, headers, cookies, body; CORS for an
    // allowed origin only.
    let r = api
        .send(request(
            "GET",
            "/teapot",
            &[("origin", "https://a.example")],
            b"",
        ))
        .await;
    assert_eq!(r.status.as_u16(), 418);
    assert_eq!(r.body.as_ref(), b"tea");
    assert_eq!(r.header("x-a"), Some("b"));
    assert_eq!(r.header("set-cookie"), Some("c=1"));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://a.example")
    );
    let r = api
        .send(request(
            "GET",
            "/teapot",
            &[("origin", "https://evil.example")],
            b"",
        ))
        .await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    // A preflight is answered without running the function.
    let before = api.fake.invoked.lock().unwrap().len();
    let r = api
        .send(request(
            "OPTIONS",
            "/anything",
            &[
                ("origin", "https://a.example"),
                ("access-control-request-method", "POST"),
            ],
            b"",
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(r.header("access-control-max-age"), Some("60"));
    assert_eq!(api.fake.invoked.lock().unwrap().len(), before);
    // A function error is a 502.
    let r = api.send(request("GET", "/please-fail", &[], b"")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    // AWS_IAM: this backend has no accounts to check signatures with.
    let updated = api
        .call("PUT", uri, Some(json!({"AuthType": "AWS_IAM"})))
        .await
        .json();
    assert_eq!(
        (
            updated["AuthType"].as_str(),
            updated["FunctionUrl"].as_str()
        ),
        (Some("AWS_IAM"), Some(url.as_str()))
    );
    assert_eq!(updated["Cors"]["MaxAge"], 60, "kept");
    let r = api.send(request("GET", "/", &[], b"")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Deleted: the URL answers 404, its configuration is gone.
    let r = api.call("DELETE", uri, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api.send(request("GET", "/", &[], b"")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["Message"], "Not Found");
    api.call("GET", uri, None)
        .await
        .assert_error(404, "ResourceNotFoundException");
}

/// Two `UpdateFunctionEventInvokeConfig` calls at once each merge into
/// what the other stored: neither change is lost.
#[tokio::test]
async fn concurrent_event_invoke_config_updates_lose_nothing() {
    let api = api();
    api.create("ev", json!({})).await;
    let uri = "/2019-09-25/functions/ev/event-invoke-config";
    api.call("PUT", uri, Some(json!({"MaximumRetryAttempts": 2})))
        .await;
    for round in 0..5u32 {
        let age = 100 + round;
        let (a, b) = tokio::join!(
            api.call("POST", uri, Some(json!({"MaximumEventAgeInSeconds": age}))),
            api.call(
                "POST",
                uri,
                Some(json!({"MaximumRetryAttempts": round % 3}))
            ),
        );
        assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
        let c = api.call("GET", uri, None).await.json();
        assert_eq!(
            (
                c["MaximumEventAgeInSeconds"].as_u64(),
                c["MaximumRetryAttempts"].as_u64()
            ),
            (Some(u64::from(age)), Some(u64::from(round % 3))),
            "round {round}: {c}"
        );
    }
}

/// Event invoke configurations per version and alias, as Lambda keeps
/// them; deleting the alias removes its own.
#[tokio::test]
async fn event_invoke_configs_per_qualifier() {
    let api = api();
    api.publish_with_alias("q").await;
    let uri = |qualifier: &str| {
        format!("/2019-09-25/functions/q/event-invoke-config?Qualifier={qualifier}")
    };
    let put = api
        .call(
            "PUT",
            &uri("live"),
            Some(json!({"MaximumRetryAttempts": 0})),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{:?}", put.body);
    assert_eq!(
        put.json()["FunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:q:live"
    );
    api.call(
        "PUT",
        "/2019-09-25/functions/q/event-invoke-config",
        Some(json!({"MaximumRetryAttempts": 2})),
    )
    .await;
    api.call("GET", &uri("1"), None)
        .await
        .assert_error(404, "ResourceNotFoundException");
    api.call("PUT", &uri("9"), Some(json!({"MaximumRetryAttempts": 1})))
        .await
        .assert_error(404, "ResourceNotFoundException");
    assert_eq!(
        api.call("GET", &uri("live"), None).await.json()["MaximumRetryAttempts"],
        0
    );
    let listed = api
        .call(
            "GET",
            "/2019-09-25/functions/q/event-invoke-config/list",
            None,
        )
        .await
        .json();
    let arns: Vec<&str> = listed["FunctionEventInvokeConfigs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["FunctionArn"].as_str().unwrap())
        .collect();
    assert_eq!(
        arns,
        [
            "arn:aws:lambda:us-east-1:000000000000:function:q:$LATEST",
            "arn:aws:lambda:us-east-1:000000000000:function:q:live"
        ]
    );
    api.call("DELETE", "/2015-03-31/functions/q/aliases/live", None)
        .await;
    let listed = api
        .call(
            "GET",
            "/2019-09-25/functions/q/event-invoke-config/list",
            None,
        )
        .await
        .json();
    assert_eq!(
        listed["FunctionEventInvokeConfigs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
