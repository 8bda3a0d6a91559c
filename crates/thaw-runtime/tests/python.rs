//! The Python bootstrap under the supervisor, on the host (no sandbox).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use thaw_runtime::control::{FromSupervisor, LogStream};
use thaw_runtime::ExitReason;

const APP: &str = r#"
import os
import time

COUNT = 0
print("app init")


def handler(event, context):
    global COUNT
    COUNT += 1
    print(f"hello from {context.aws_request_id}")
    action = (event or {}).get("action")
    if action == "raise":
        raise ValueError("boom")
    if action == "exit":
        print("about to exit")
        os._exit(3)
    if action == "big":
        return "x" * (7 << 20)
    if action == "none":
        return None
    if action == "unserializable":
        return {1, 2}
    if action == "pid":
        return os.getpid()
    return {
        "count": COUNT,
        "event": event,
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "function_name": context.function_name,
        "function_version": context.function_version,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "arn": context.invoked_function_arn,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "client_custom": context.client_context.custom if context.client_context else None,
        "identity_id": context.identity.cognito_identity_id,
        "trace_env": os.environ.get("_X_AMZN_TRACE_ID"),
        "cwd": os.getcwd(),
    }
"#;

#[tokio::test]
async fn python_success_context_and_ordered_logs() {
    let Some(py) = python("python_success_context_and_ordered_logs") else {
        return;
    };
    let f = Function::new(&[("app.py", APP)]);
    let mut d = Daemon::start(f.python_spec(&py, "app.handler"));
    let (runtime_ms, init_ms) = d.expect_init().await;
    assert!(init_ms > 0.0 && runtime_ms > 0.0, "{runtime_ms} {init_ms}");
    assert!(
        d.logs
            .iter()
            .any(|l| l.request_id.is_none() && l.text.contains("app init")),
        "init output is untagged: {:?}",
        d.logs
    );

    let id = d
        .send_invoke_raw(
            br#"{"k": "v"}"#,
            Duration::from_secs(60),
            Some(r#"{"custom": {"tenant": "t1"}, "client": {"app_title": "x"}}"#),
            Some(r#"{"cognitoIdentityId": "id-1", "cognitoIdentityPoolId": "pool"}"#),
        )
        .await;
    let out = d.outcome(&id).await;
    assert_eq!(
        out.message,
        FromSupervisor::Response {
            request_id: id.clone()
        }
    );
    assert!(
        out.stdout().contains(&format!("hello from {id}\n")),
        "the invocation's output arrives tagged and before its result: {:?}",
        d.logs
    );
    let v = out.json();
    assert_eq!(v["count"], 1);
    assert_eq!(v["event"], json!({"k": "v"}));
    assert_eq!(v["request_id"], id.as_str());
    let remaining = v["remaining_ms"].as_i64().unwrap();
    assert!(remaining > 0 && remaining <= 60_000, "{remaining}");
    assert_eq!(v["function_name"], "test-fn");
    assert_eq!(v["function_version"], "$LATEST");
    assert_eq!(v["memory_limit_in_mb"], "128");
    assert_eq!(
        v["arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:test-fn"
    );
    assert_eq!(v["log_group_name"], "/aws/lambda/test-fn");
    assert_eq!(v["log_stream_name"], "2024/01/01/[$LATEST]abc");
    assert_eq!(v["client_custom"], json!({"tenant": "t1"}));
    assert_eq!(v["identity_id"], "id-1");
    assert_eq!(
        v["trace_env"],
        "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=0"
    );
    assert_eq!(v["cwd"], f.task_root.display().to_string());

    // Warm: state survives; None is null.
    let (_, v, _) = d.call(json!({})).await;
    assert_eq!(v["count"], 2);
    let (_, v, _) = d.call(json!({"action": "none"})).await;
    assert_eq!(v, serde_json::Value::Null);

    assert_eq!(d.close().await.unwrap(), ExitReason::ControlClosed);
}

#[tokio::test]
async fn python_function_errors_have_lambda_shape() {
    let Some(py) = python("python_function_errors_have_lambda_shape") else {
        return;
    };
    let f = Function::new(&[("app.py", APP)]);
    let mut d = Daemon::start(f.python_spec(&py, "app.handler"));
    d.expect_init().await;

    let (id, out) = d.invoke(json!({"action": "raise"})).await;
    assert_eq!(
        out.message,
        FromSupervisor::Error {
            request_id: id.clone(),
            error_type: "ValueError".into()
        }
    );
    let v = out.json();
    assert_eq!(v["errorType"], "ValueError");
    assert_eq!(v["errorMessage"], "boom");
    assert_eq!(v["requestId"], id.as_str());
    let trace = v["stackTrace"].as_array().unwrap();
    assert!(!trace.is_empty(), "{v}");
    let trace_text: String = trace.iter().map(|s| s.as_str().unwrap()).collect();
    assert!(
        trace_text.contains("app.py") && trace_text.contains("raise ValueError"),
        "{trace_text}"
    );
    assert!(!trace_text.contains("bootstrap.py"), "{trace_text}");
    assert!(
        out.all_output().contains("[ERROR] ValueError: boom"),
        "{:?}",
        out.logs
    );

    let (_, out) = d.invoke(json!({"action": "unserializable"})).await;
    assert!(
        matches!(&out.message, FromSupervisor::Error { error_type, .. } if error_type == "Runtime.MarshalError")
    );

    let id = d
        .send_invoke_raw(b"{not json", Duration::from_secs(60), None, None)
        .await;
    let out = d.outcome(&id).await;
    assert!(
        matches!(&out.message, FromSupervisor::Error { error_type, .. } if error_type == "Runtime.UnmarshalError")
    );

    // The instance is still usable (the undecodable event never reached the handler).
    let (_, v, _) = d.call(json!({})).await;
    assert_eq!(v["count"], 3);
    d.close().await.unwrap();
}

#[tokio::test]
async fn python_init_errors_have_lambda_types() {
    let Some(py) = python("python_init_errors_have_lambda_types") else {
        return;
    };
    let cases = [
        (
            "missing module",
            "app.py",
            APP,
            "missing.handler",
            "Runtime.ImportModuleError",
            "Unable to import module 'missing'",
        ),
        (
            "bad import",
            "app.py",
            "import no_such_dependency_xyz\n\ndef handler(e, c):\n    return 1\n",
            "app.handler",
            "Runtime.ImportModuleError",
            "No module named 'no_such_dependency_xyz'",
        ),
        (
            "missing function",
            "app.py",
            "def other(e, c):\n    return 1\n",
            "app.handler",
            "Runtime.HandlerNotFound",
            "Handler 'handler' missing on module 'app'",
        ),
        (
            "syntax error",
            "app.py",
            "def handler(event, context)\n    return 1\n",
            "app.handler",
            "Runtime.UserCodeSyntaxError",
            "Syntax error in module 'app'",
        ),
        (
            "exception at init",
            "app.py",
            "print('about to fail')\nraise RuntimeError('init exploded')\n",
            "app.handler",
            "RuntimeError",
            "init exploded",
        ),
        (
            "malformed handler",
            "app.py",
            APP,
            "app",
            "Runtime.MalformedHandlerName",
            "Bad handler 'app'",
        ),
    ];
    for (case, file, code, handler, want_type, want_msg) in cases {
        let f = Function::new(&[(file, code)]);
        let mut d = Daemon::start(f.python_spec(&py, handler));
        let (error_type, doc, exited) = d.expect_init_error().await;
        assert_eq!(error_type, want_type, "{case}: {doc}");
        assert_eq!(doc["errorType"], want_type, "{case}: {doc}");
        let msg = doc["errorMessage"].as_str().unwrap();
        assert!(msg.contains(want_msg), "{case}: {doc}");
        assert!(doc["stackTrace"].is_array(), "{case}: {doc}");
        assert_eq!(
            exited,
            FromSupervisor::Exited {
                code: Some(1),
                signal: None
            },
            "{case}"
        );
        if case == "exception at init" {
            let out: String = d.logs.iter().map(|l| l.text.as_str()).collect();
            assert!(out.contains("about to fail"), "{out}");
            assert!(out.contains("[ERROR] RuntimeError: init exploded"), "{out}");
            assert!(!doc["stackTrace"].as_array().unwrap().is_empty(), "{doc}");
        }
        assert_eq!(
            d.finished().await.unwrap(),
            ExitReason::RuntimeExited {
                code: Some(1),
                signal: None
            }
        );
    }
}

#[tokio::test]
async fn python_packages_and_slashes_in_handler() {
    let Some(py) = python("python_packages_and_slashes_in_handler") else {
        return;
    };
    let f = Function::new(&[
        ("pkg/__init__.py", ""),
        (
            "pkg/mod.py",
            "def handler(e, c):\n    return {'where': __name__}\n",
        ),
    ]);
    for handler in ["pkg.mod.handler", "pkg/mod.handler"] {
        let mut d = Daemon::start(f.python_spec(&py, handler));
        d.expect_init().await;
        let (_, v, _) = d.call(json!({})).await;
        assert_eq!(v, json!({"where": "pkg.mod"}), "{handler}");
        d.close().await.unwrap();
    }
}

#[tokio::test]
async fn runtime_exit_mid_invocation_is_reported() {
    let Some(py) = python("runtime_exit_mid_invocation_is_reported") else {
        return;
    };
    let f = Function::new(&[("app.py", APP)]);
    let mut d = Daemon::start(f.python_spec(&py, "app.handler"));
    d.expect_init().await;
    let (id, out) = d.invoke(json!({"action": "exit"})).await;
    assert_eq!(
        out.message,
        FromSupervisor::Exited {
            code: Some(3),
            signal: None
        }
    );
    assert!(
        out.stdout().contains("about to exit"),
        "last words of {id} come first: {:?}",
        d.logs
    );
    assert_eq!(
        d.finished().await.unwrap(),
        ExitReason::RuntimeExited {
            code: Some(3),
            signal: None
        }
    );
}

#[tokio::test]
async fn closing_the_control_channel_kills_the_runtime() {
    let Some(py) = python("closing_the_control_channel_kills_the_runtime") else {
        return;
    };
    let f = Function::new(&[("app.py", APP)]);
    let mut d = Daemon::start(f.python_spec(&py, "app.handler"));
    d.expect_init().await;
    let (_, v, _) = d.call(json!({"action": "pid"})).await;
    let pid = i32::try_from(v.as_i64().unwrap()).unwrap();
    assert!(process_exists(pid));
    assert_eq!(d.close().await.unwrap(), ExitReason::ControlClosed);
    assert!(
        !process_exists(pid),
        "runtime {pid} still exists (or was not reaped)"
    );
}

#[tokio::test]
async fn oversized_response_is_refused_and_the_instance_survives() {
    let Some(py) = python("oversized_response_is_refused_and_the_instance_survives") else {
        return;
    };
    let f = Function::new(&[("app.py", APP)]);
    let mut d = Daemon::start(f.python_spec(&py, "app.handler"));
    d.expect_init().await;
    let (id, out) = d.invoke(json!({"action": "big"})).await;
    assert_eq!(
        out.message,
        FromSupervisor::Error {
            request_id: id,
            error_type: "Function.ResponseSizeTooLarge".into()
        }
    );
    let v = out.json();
    assert_eq!(v["errorType"], "Function.ResponseSizeTooLarge");
    assert!(
        v["errorMessage"]
            .as_str()
            .unwrap()
            .contains("exceeded maximum allowed payload size (6291556 bytes)"),
        "{v}"
    );
    // The bootstrap logs the refusal and carries on.
    let (_, v, _) = d.call(json!({})).await;
    assert_eq!(v["count"], 2);
    let stderr: String = d
        .logs
        .iter()
        .filter(|l| l.stream == LogStream::Stderr)
        .map(|l| l.text.as_str())
        .collect();
    assert!(stderr.contains("413"), "{stderr}");
    d.close().await.unwrap();
}
