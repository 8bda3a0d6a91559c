//! Runtimes that are not thaw's bootstraps: a `provided` style custom runtime
//! speaking the Runtime API by itself, and one that cannot be started.

mod common;

use common::*;
use serde_json::json;
use thaw_runtime::control::FromSupervisor;
use thaw_runtime::ExitReason;

/// A custom runtime using only urllib, checking a few Runtime API corners on
/// its way (the results are printed, so they arrive as log lines).
const CUSTOM_BOOTSTRAP: &str = r#"
import json
import os
import urllib.error
import urllib.request

API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"


def post(path, body):
    req = urllib.request.Request(API + path, data=body, method="POST")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


while True:
    with urllib.request.urlopen(API + "/invocation/next") as r:
        request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
        deadline = int(r.headers["Lambda-Runtime-Deadline-Ms"])
        event = json.loads(r.read() or b"null")
    status, doc = post("/invocation/not-" + request_id + "/response", b"{}")
    print(f"bogus id -> {status} {doc['errorType']}", flush=True)
    if event.get("fail"):
        status, doc = post(f"/invocation/{request_id}/error", json.dumps({"errorType": "Custom.Failure", "errorMessage": "asked to fail"}).encode())
        print(f"error -> {status} {doc}", flush=True)
        continue
    body = json.dumps({"custom_runtime": True, "handler": os.environ.get("_HANDLER"), "echo": event, "has_deadline": deadline > 0}).encode()
    status, doc = post(f"/invocation/{request_id}/response", body)
    print(f"response -> {status} {doc}", flush=True)
"#;

#[tokio::test]
async fn provided_custom_runtime_works() {
    let Some(py) = python("provided_custom_runtime_works") else {
        return;
    };
    let f = Function::new(&[("bootstrap", CUSTOM_BOOTSTRAP)]);
    let spec = f.spec(
        vec![py, f.path("bootstrap").display().to_string()],
        "my.handler",
    );
    let mut d = Daemon::start(spec);
    let (runtime_ms, init_ms) = d.expect_init().await;
    assert_eq!(
        runtime_ms, 0.0,
        "custom runtimes do not report their init time"
    );
    assert!(init_ms > 0.0);

    let (_, v, out) = d.call(json!({"d": 4})).await;
    assert_eq!(
        v,
        json!({"custom_runtime": true, "handler": "my.handler", "echo": {"d": 4}, "has_deadline": true})
    );
    assert!(
        out.stdout().contains("bogus id -> 400 InvalidRequestID"),
        "{:?}",
        d.logs
    );

    let (id, out) = d.invoke(json!({"fail": true})).await;
    assert_eq!(
        out.message,
        FromSupervisor::Error {
            request_id: id,
            error_type: "Custom.Failure".into()
        }
    );
    assert_eq!(out.json()["errorMessage"], "asked to fail");

    // The 202 of the last answer is printed after the answer was forwarded.
    let (_, v, _) = d.call(json!({"again": 1})).await;
    assert_eq!(v["echo"], json!({"again": 1}));
    let all: String = d.logs.iter().map(|l| l.text.as_str()).collect();
    assert!(all.contains("error -> 202 {'status': 'OK'}"), "{all}");
    assert_eq!(d.close().await.unwrap(), ExitReason::ControlClosed);
}

#[tokio::test]
async fn a_runtime_that_cannot_start_is_an_init_error() {
    let f = Function::new(&[]);
    let spec = f.spec(vec![f.path("bootstrap").display().to_string()], "x.handler");
    let mut d = Daemon::start(spec);
    let (m, _) = d.recv().await;
    assert!(matches!(m, FromSupervisor::SandboxReady { .. }));
    let (m, body) = d.recv().await;
    assert_eq!(
        m,
        FromSupervisor::InitError {
            error_type: "Runtime.InvalidEntrypoint".into()
        }
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["errorType"], "Runtime.InvalidEntrypoint");
    assert!(
        v["errorMessage"].as_str().unwrap().contains("bootstrap"),
        "{v}"
    );
    assert_eq!(d.finished().await.unwrap(), ExitReason::SpawnFailed);
}

#[tokio::test]
async fn a_busy_port_is_a_fatal_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let f = Function::new(&[]);
    let mut spec = f.spec(vec!["/bin/true".into()], "x.handler");
    spec.api_port = taken.local_addr().unwrap().port();
    let mut d = Daemon::start(spec);
    let (m, _) = d.recv().await;
    match m {
        FromSupervisor::Fatal { message } => {
            assert!(
                message.starts_with("Cannot bind the Runtime API"),
                "{message}"
            );
            assert!(
                message.contains("in use"),
                "the cause is in the chain: {message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(d.finished().await.is_err());
}

/// The unmodified AWS runtime interface client speaks our Runtime API, without
/// a sandbox. Run by hand: `pip install --target DIR awslambdaric`, then
/// `THAW_TEST_AWSLAMBDARIC=DIR cargo test -- --ignored`. The same proof runs in
/// every CI run end to end, in a real sandbox, in thaw-cli's e2e tests.
#[tokio::test]
#[ignore = "needs THAW_TEST_AWSLAMBDARIC; covered end to end by thaw-cli's e2e tests"]
async fn unmodified_awslambdaric_is_served() {
    let Ok(ric_dir) = std::env::var("THAW_TEST_AWSLAMBDARIC") else {
        panic!("set THAW_TEST_AWSLAMBDARIC to a `pip install --target` dir holding awslambdaric");
    };
    let Some(py) = python("unmodified_awslambdaric_is_served") else {
        return;
    };
    let f = Function::new(&[(
        "app.py",
        "def handler(event, context):\n    print('ric says hi')\n    if event.get('fail'):\n        raise KeyError('k')\n    return {'echo': event, 'id': context.aws_request_id, 'left': context.get_remaining_time_in_millis()}\n",
    )]);
    let mut spec = f.spec(
        vec![py, "-m".into(), "awslambdaric".into(), "app.handler".into()],
        "app.handler",
    );
    spec.env.push((
        "PYTHONPATH".into(),
        format!("{}:{ric_dir}", f.task_root.display()),
    ));
    let mut d = Daemon::start(spec);
    d.expect_init().await;
    let (id, v, out) = d.call(json!({"x": 1})).await;
    assert_eq!(v["echo"], json!({"x": 1}));
    assert_eq!(v["id"], id.as_str());
    assert!(v["left"].as_i64().unwrap() > 0);
    assert!(out.all_output().contains("ric says hi"), "{:?}", d.logs);
    let (_, out) = d.invoke(json!({"fail": true})).await;
    assert!(
        matches!(out.message, FromSupervisor::Error { .. }),
        "{:?}",
        out.message
    );
    assert_eq!(out.json()["errorType"], "KeyError");
    let (_, v, _) = d.call(json!({"y": 2})).await;
    assert_eq!(v["echo"], json!({"y": 2}));
    d.close().await.unwrap();
}
