//! The Node.js bootstrap under the supervisor, on the host (no sandbox).

mod common;

use common::*;
use serde_json::json;
use thaw_runtime::control::FromSupervisor;
use thaw_runtime::ExitReason;

const INDEX: &str = r#"
let count = 0;
console.log('index init');
exports.handler = async (event, context) => {
  count += 1;
  console.log(`hello from ${context.awsRequestId}`);
  if (event.action === 'raise') throw new TypeError('boom');
  if (event.action === 'reject') return Promise.reject(new RangeError('nope'));
  if (event.action === 'exit') { console.log('bye'); process.exit(4); }
  await new Promise((r) => setTimeout(r, 5));
  return {
    count,
    event,
    requestId: context.awsRequestId,
    remainingMs: context.getRemainingTimeInMillis(),
    functionName: context.functionName,
    functionVersion: context.functionVersion,
    memoryLimitInMB: context.memoryLimitInMB,
    arn: context.invokedFunctionArn,
    logGroupName: context.logGroupName,
    logStreamName: context.logStreamName,
    trace: process.env._X_AMZN_TRACE_ID,
  };
};
"#;

#[tokio::test]
async fn node_async_handler_context_and_logs() {
    let Some(node) = node("node_async_handler_context_and_logs") else {
        return;
    };
    let f = Function::new(&[("index.js", INDEX)]);
    let mut d = Daemon::start(f.node_spec(&node, "index.handler"));
    let (runtime_ms, init_ms) = d.expect_init().await;
    assert!(init_ms > 0.0 && runtime_ms > 0.0, "{runtime_ms} {init_ms}");

    let (id, v, out) = d.call(json!({"a": 1})).await;
    assert!(
        out.stdout().contains(&format!("hello from {id}\n")),
        "{:?}",
        d.logs
    );
    assert_eq!(v["count"], 1);
    assert_eq!(v["event"], json!({"a": 1}));
    assert_eq!(v["requestId"], id.as_str());
    let remaining = v["remainingMs"].as_i64().unwrap();
    assert!(remaining > 0 && remaining <= 60_000, "{remaining}");
    assert_eq!(v["functionName"], "test-fn");
    assert_eq!(v["functionVersion"], "$LATEST");
    assert_eq!(v["memoryLimitInMB"], "128");
    assert_eq!(
        v["arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:test-fn"
    );
    assert_eq!(v["logGroupName"], "/aws/lambda/test-fn");
    assert_eq!(v["logStreamName"], "2024/01/01/[$LATEST]abc");
    assert_eq!(
        v["trace"],
        "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=0"
    );

    let (_, v, _) = d.call(json!({})).await;
    assert_eq!(v["count"], 2);
    d.close().await.unwrap();
}

#[tokio::test]
async fn node_errors_have_lambda_shape() {
    let Some(node) = node("node_errors_have_lambda_shape") else {
        return;
    };
    let f = Function::new(&[("index.js", INDEX)]);
    let mut d = Daemon::start(f.node_spec(&node, "index.handler"));
    d.expect_init().await;
    for (action, want_type, want_msg) in [
        ("raise", "TypeError", "boom"),
        ("reject", "RangeError", "nope"),
    ] {
        let (id, out) = d.invoke(json!({ "action": action })).await;
        assert_eq!(
            out.message,
            FromSupervisor::Error {
                request_id: id,
                error_type: want_type.into()
            }
        );
        let v = out.json();
        assert_eq!(v["errorType"], want_type);
        assert_eq!(v["errorMessage"], want_msg);
        let trace = v["trace"].as_array().unwrap();
        assert!(
            trace[0]
                .as_str()
                .unwrap()
                .starts_with(&format!("{want_type}: {want_msg}")),
            "{v}"
        );
    }
    let (_, v, _) = d.call(json!({})).await;
    assert_eq!(v["count"], 3, "the instance keeps serving");

    let (_, out) = d.invoke(json!({"action": "exit"})).await;
    assert_eq!(
        out.message,
        FromSupervisor::Exited {
            code: Some(4),
            signal: None
        }
    );
    assert!(out.stdout().contains("bye"));
    assert!(matches!(
        d.finished().await.unwrap(),
        ExitReason::RuntimeExited { .. }
    ));
}

#[tokio::test]
async fn node_callback_esm_legacy_and_nested_handlers() {
    let Some(node) = node("node_callback_esm_legacy_and_nested_handlers") else {
        return;
    };
    let f = Function::new(&[
        (
            "cb.js",
            "exports.handler = (event, context, callback) => {\n  setTimeout(() => callback(null, { style: 'callback', got: event }), 5);\n};\n",
        ),
        (
            "cberr.js",
            "exports.handler = (event, context, callback) => callback(new Error('cb failed'));\n",
        ),
        ("esm.mjs", "export const handler = async (event) => ({ style: 'esm', got: event });\n"),
        (
            "legacy.js",
            "exports.handler = function (event, context) {\n  setTimeout(() => context.succeed({ style: 'legacy', got: event }), 5);\n};\n",
        ),
        ("noreturn.js", "exports.handler = function (event, context) { console.log('did nothing'); };\n"),
        ("lib/deep/mod.cjs", "module.exports = { api: { handler: async () => 'nested' } };\n"),
        ("modpkg/package.json", "{\"type\": \"module\"}\n"),
        ("modpkg/app.js", "const x = await Promise.resolve('esm-js');\nexport const handler = async () => x;\n"),
    ]);
    let cases = [
        (
            "cb.handler",
            json!({"b": 2}),
            Ok(json!({"style": "callback", "got": {"b": 2}})),
        ),
        ("cberr.handler", json!({}), Err("Error")),
        (
            "esm.handler",
            json!({"c": 3}),
            Ok(json!({"style": "esm", "got": {"c": 3}})),
        ),
        (
            "legacy.handler",
            json!({"d": 4}),
            Ok(json!({"style": "legacy", "got": {"d": 4}})),
        ),
        ("noreturn.handler", json!({}), Ok(serde_json::Value::Null)),
        ("lib/deep/mod.api.handler", json!({}), Ok(json!("nested"))),
        ("modpkg/app.handler", json!({}), Ok(json!("esm-js"))),
    ];
    for (handler, event, want) in cases {
        let mut d = Daemon::start(f.node_spec(&node, handler));
        d.expect_init().await;
        for _ in 0..2 {
            let (id, out) = d.invoke(event.clone()).await;
            match &want {
                Ok(v) => {
                    assert_eq!(
                        out.message,
                        FromSupervisor::Response { request_id: id },
                        "{handler}: {:?}",
                        d.logs
                    );
                    assert_eq!(&out.json(), v, "{handler}");
                }
                Err(t) => {
                    assert!(
                        matches!(&out.message, FromSupervisor::Error { error_type, .. } if error_type == t),
                        "{handler}: {:?}",
                        out.message
                    );
                    assert_eq!(out.json()["errorMessage"], "cb failed");
                }
            }
        }
        d.close().await.unwrap();
    }
}

#[tokio::test]
async fn node_init_errors_have_lambda_types() {
    let Some(node) = node("node_init_errors_have_lambda_types") else {
        return;
    };
    let cases = [
        (
            "missing file",
            "other.js",
            "exports.handler = async () => 1;\n",
            "index.handler",
            "Runtime.ImportModuleError",
            "Cannot find module 'index'",
        ),
        (
            "missing dependency",
            "index.js",
            "require('no-such-dep-xyz');\nexports.handler = async () => 1;\n",
            "index.handler",
            "Runtime.ImportModuleError",
            "Cannot find module 'no-such-dep-xyz'",
        ),
        (
            "missing export",
            "index.js",
            "exports.other = async () => 1;\n",
            "index.handler",
            "Runtime.HandlerNotFound",
            "index.handler is undefined or not exported",
        ),
        (
            "syntax error",
            "index.js",
            "exports.handler = async () => {;\n",
            "index.handler",
            "Runtime.UserCodeSyntaxError",
            "SyntaxError",
        ),
        (
            "esm syntax error",
            "index.mjs",
            "export const handler = async () => {;\n",
            "index.handler",
            "Runtime.UserCodeSyntaxError",
            "SyntaxError",
        ),
        (
            "exception at init",
            "index.js",
            "console.log('about to fail');\nthrow new RangeError('init exploded');\n",
            "index.handler",
            "RangeError",
            "init exploded",
        ),
        (
            "malformed handler",
            "index.js",
            "exports.handler = async () => 1;\n",
            "index",
            "Runtime.MalformedHandlerName",
            "Bad handler index",
        ),
    ];
    for (case, file, code, handler, want_type, want_msg) in cases {
        let f = Function::new(&[(file, code)]);
        let mut d = Daemon::start(f.node_spec(&node, handler));
        let (error_type, doc, exited) = d.expect_init_error().await;
        assert_eq!(error_type, want_type, "{case}: {doc}");
        assert_eq!(doc["errorType"], want_type, "{case}: {doc}");
        assert!(
            doc["errorMessage"].as_str().unwrap().contains(want_msg),
            "{case}: {doc}"
        );
        assert!(doc["trace"].is_array(), "{case}: {doc}");
        assert!(
            matches!(exited, FromSupervisor::Exited { code: Some(c), signal: None } if c != 0),
            "{case}: {exited:?}"
        );
        if case == "exception at init" {
            let out: String = d.logs.iter().map(|l| l.text.as_str()).collect();
            assert!(out.contains("about to fail"), "{out}");
        }
        d.finished().await.unwrap();
    }
}

#[tokio::test]
async fn node_uncaught_errors_fail_the_invocation_and_end_the_process() {
    let Some(node) = node("node_uncaught_errors_fail_the_invocation_and_end_the_process") else {
        return;
    };
    let f = Function::new(&[
        (
            "throws.js",
            "exports.handler = async () => { setTimeout(() => { throw new SyntaxError('late'); }, 1); return new Promise(() => setTimeout(() => {}, 60000)); };\n",
        ),
        (
            "rejects.js",
            "exports.handler = async () => { Promise.reject(new Error('dangling')); return new Promise(() => setTimeout(() => {}, 60000)); };\n",
        ),
    ]);
    for (handler, want_type, want_code) in [
        ("throws.handler", "SyntaxError", 129),
        ("rejects.handler", "Runtime.UnhandledPromiseRejection", 128),
    ] {
        let mut d = Daemon::start(f.node_spec(&node, handler));
        d.expect_init().await;
        let (id, out) = d.invoke(json!({})).await;
        assert_eq!(
            out.message,
            FromSupervisor::Error {
                request_id: id.clone(),
                error_type: want_type.into()
            },
            "{handler}: {:?}",
            d.logs
        );
        let (exited, _) = d.recv().await;
        assert_eq!(
            exited,
            FromSupervisor::Exited {
                code: Some(want_code),
                signal: None
            },
            "{handler}"
        );
        d.finished().await.unwrap();
    }
}
