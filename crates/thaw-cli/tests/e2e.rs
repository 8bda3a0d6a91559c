//! End-to-end tests: a real `thaw serve`, real sandboxes, real runtimes.
//! Each test prints a loud SKIP line and returns when it cannot run here
//! (and fails instead when THAW_REQUIRE_ALL=1, as in CI).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use thaw_api::{InvokeOptions, StartKind, UpdateFunctionConfigurationRequest};

#[test]
fn boto3_drives_the_lambda_api() {
    if !can_run("boto3_drives_the_lambda_api") {
        return;
    }
    if !has_boto3() {
        skip(
            "boto3_drives_the_lambda_api",
            "boto3 is not installed (scripts/test.sh installs it)",
        );
        return;
    }
    let d = Daemon::start(&[]);
    run_boto3_script(&d, "lambda_api.py", &[]);
}

#[test]
fn python_lifecycle_warm_reuse_timeout_crash_and_oom() {
    if !can_run("python_lifecycle") {
        return;
    }
    let d = Daemon::start(&[]);
    let c = d.client();
    deploy(&c, "life", "py-state", "python3.11", "app.handler", 128, 2);

    let (r, v) = invoke(&c, "life", json!({"action": "echo", "k": "v"}));
    assert_eq!(r.start, Some(StartKind::Cold));
    let t = r.server_timing.expect("Server-Timing header");
    assert!(
        t.sandbox_ms > 0.0 && t.init_ms > 0.0 && t.invoke_ms > 0.0,
        "{t:?}"
    );
    assert_eq!(v["count"], 1);
    assert_eq!(v["big"], 100000);
    assert_eq!(v["event"]["k"], "v");
    assert_eq!(v["function_name"], "life");
    assert_eq!(v["memory_limit_in_mb"], "128");
    assert_ne!(v["uid"], 0);
    assert!(v["remaining_ms"].as_i64().unwrap() > 0);

    let (r, v) = invoke(&c, "life", json!({"action": "echo"}));
    assert_eq!(r.start, Some(StartKind::Warm));
    assert_eq!(v["count"], 2, "warm instance keeps its state");

    // A handled function error keeps the instance.
    let (r, v) = invoke(&c, "life", json!({"action": "raise"}));
    assert_eq!(r.function_error.as_deref(), Some("Unhandled"));
    assert_eq!(v["errorType"], "ValueError");
    let (_, v) = invoke(&c, "life", json!({}));
    assert_eq!(v["count"], 4);

    // Timeout: Lambda's error, and the next call gets a fresh instance.
    let t0 = Instant::now();
    let (r, v) = invoke(&c, "life", json!({"action": "sleep", "seconds": 30}));
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert_eq!(r.function_error.as_deref(), Some("Unhandled"));
    assert_eq!(v["errorType"], "Sandbox.Timedout");
    assert!(v["errorMessage"]
        .as_str()
        .unwrap()
        .contains("Task timed out after 2.00 seconds"));
    let (r, v) = invoke(&c, "life", json!({}));
    assert_eq!(r.start, Some(StartKind::Cold));
    assert_eq!(v["count"], 1);

    // Crash: reported, next call is fresh.
    let (r, v) = invoke(&c, "life", json!({"action": "exit"}));
    assert_eq!(r.function_error.as_deref(), Some("Unhandled"));
    assert_eq!(v["errorType"], "Runtime.ExitError", "{v}");
    assert!(
        v["errorMessage"]
            .as_str()
            .unwrap()
            .contains("exit status 3"),
        "{v}"
    );
    let (r, _) = invoke(&c, "life", json!({}));
    assert_eq!(r.start, Some(StartKind::Cold));

    // Out of memory at 128 MB.
    let (r, v) = invoke(&c, "life", json!({"action": "alloc", "mb": 400}));
    assert_eq!(r.function_error.as_deref(), Some("Unhandled"));
    assert_eq!(v["errorType"], "Runtime.OutOfMemory", "{v}");
    let (r, v) = invoke(&c, "life", json!({}));
    assert_eq!(r.start, Some(StartKind::Cold));
    assert_eq!(v["count"], 1);

    // Logs by request id, and LogType: Tail.
    let r = c
        .invoke(
            "life",
            json!({"action": "log_lines", "n": 3})
                .to_string()
                .as_bytes(),
            &InvokeOptions {
                log_tail: true,
                ..Default::default()
            },
        )
        .unwrap();
    let tail = r.log_result.expect("log tail");
    assert!(
        tail.contains("line 2") && tail.contains("END RequestId"),
        "{tail}"
    );
    let rid = r.request_id.expect("request id");
    let logs = c.logs("life", Some(&rid), Some(100)).unwrap();
    let lines: Vec<&str> = logs.iter().map(|l| l.line.as_str()).collect();
    assert!(
        lines.contains(&"line 0") && lines.contains(&"line 2"),
        "{lines:?}"
    );
    // As Lambda writes them: START, the function's lines, END, REPORT
    // with the most memory the instance used.
    let at = |p: &str| lines.iter().position(|l| l.starts_with(p));
    let (start, first, end, report) = (
        at("START RequestId"),
        at("line 0"),
        at("END RequestId"),
        at("REPORT RequestId"),
    );
    assert!(
        start.is_some() && start < first && first < end && end < report,
        "{lines:?}"
    );
    let report = lines[report.unwrap()];
    let used: u64 = report
        .split("Max Memory Used: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no Max Memory Used: {report}"));
    assert!(used > 1 && used <= 128, "{report}");

    // Metrics carry the phases.
    let metrics = metrics_text(&d);
    assert!(
        metrics.contains("thaw_start_phase_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains(r#"phase="sandbox""#));
}

#[test]
fn idle_instances_are_reaped_after_keep_alive() {
    if !can_run("idle_instances_are_reaped") {
        return;
    }
    let d = Daemon::start(&["--keep-alive-secs", "1"]);
    let c = d.client();
    deploy(&c, "reap", "py-state", "python3.11", "app.handler", 128, 3);
    let (r, _) = invoke(&c, "reap", json!({}));
    assert_eq!(r.start, Some(StartKind::Cold));
    let t0 = Instant::now();
    while !instance_cgroups(&d.data_dir).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "idle instance not reaped"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (r, v) = invoke(&c, "reap", json!({}));
    assert_eq!(r.start, Some(StartKind::Cold));
    assert_eq!(v["count"], 1);
}

#[test]
fn node_handlers_async_callback_esm_and_custom_runtime() {
    if !can_run("node_handlers") {
        return;
    }
    let d = Daemon::start(&[]);
    let c = d.client();
    deploy(
        &c,
        "n-async",
        "node-state",
        "nodejs20.x",
        "index.handler",
        256,
        3,
    );
    deploy(&c, "n-cb", "node-state", "nodejs20.x", "cb.handler", 256, 3);
    deploy(
        &c,
        "n-esm",
        "node-state",
        "nodejs20.x",
        "esm.handler",
        256,
        3,
    );
    deploy(
        &c,
        "custom",
        "provided-py",
        "provided.al2023",
        "my.handler",
        128,
        5,
    );

    let (r, v) = invoke(&c, "n-async", json!({"a": 1}));
    assert_eq!(r.start, Some(StartKind::Cold));
    assert_eq!(v["count"], 1);
    assert_eq!(v["last"], 199998);
    assert_eq!(v["functionName"], "n-async");
    let (_, v) = invoke(&c, "n-async", json!({}));
    assert_eq!(v["count"], 2);
    let (r, v) = invoke(&c, "n-async", json!({"action": "sleep", "seconds": 10}));
    assert_eq!(r.function_error.as_deref(), Some("Unhandled"));
    assert_eq!(v["errorType"], "Sandbox.Timedout");

    let (_, v) = invoke(&c, "n-cb", json!({"b": 2}));
    assert_eq!(v, json!({"style": "callback", "got": {"b": 2}}));
    let (_, v) = invoke(&c, "n-esm", json!({"c": 3}));
    assert_eq!(v, json!({"style": "esm", "got": {"c": 3}}));
    let (_, v) = invoke(&c, "custom", json!({"d": 4}));
    assert_eq!(
        v,
        json!({"custom_runtime": true, "handler": "my.handler", "echo": {"d": 4}})
    );
}

#[test]
fn init_errors_have_lambda_shapes() {
    if !can_run("init_errors") {
        return;
    }
    let d = Daemon::start(&[]);
    let c = d.client();
    let cases = [
        (
            "e-import",
            "py-bad-import",
            "python3.11",
            "app.handler",
            "Runtime.ImportModuleError",
        ),
        (
            "e-syntax",
            "py-syntax",
            "python3.11",
            "app.handler",
            "Runtime.UserCodeSyntaxError",
        ),
        (
            "e-exc",
            "py-init-exc",
            "python3.11",
            "app.handler",
            "RuntimeError",
        ),
        (
            "e-nohandler",
            "py-no-handler",
            "python3.11",
            "app.handler",
            "Runtime.HandlerNotFound",
        ),
        (
            "e-nofile",
            "py-state",
            "python3.11",
            "missing.handler",
            "Runtime.ImportModuleError",
        ),
        (
            "e-node",
            "node-missing-file",
            "nodejs20.x",
            "index.handler",
            "Runtime.ImportModuleError",
        ),
    ];
    for (name, dir, rt, handler, want) in cases {
        deploy(&c, name, dir, rt, handler, 128, 3);
        let r = c
            .invoke(
                name,
                b"{}",
                &InvokeOptions {
                    log_tail: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.function_error.as_deref(), Some("Unhandled"), "{name}");
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(v["errorType"], want, "{name}: {v}");
        assert!(
            !v["errorMessage"].as_str().unwrap_or("").is_empty(),
            "{name}: {v}"
        );
    }
    // The daemon keeps serving healthy functions.
    deploy(&c, "ok", "py-state", "python3.11", "app.handler", 128, 3);
    let (r, _) = invoke(&c, "ok", json!({}));
    assert!(r.function_error.is_none());
}

#[test]
fn sandbox_isolation_from_inside_a_function() {
    if !can_run("sandbox_isolation") {
        return;
    }
    let d = Daemon::start(&[]);
    let c = d.client();
    deploy(&c, "iso", "py-state", "python3.11", "app.handler", 256, 20);
    deploy(
        &c,
        "other",
        "node-state",
        "nodejs20.x",
        "index.handler",
        128,
        3,
    );

    let (_, status) = invoke(&c, "iso", json!({"action": "status"}));
    let status = status.as_str().unwrap().to_string();
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(status.contains("CapBnd:\t0000000000000000"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");

    let (_, v) = invoke(&c, "iso", json!({"action": "echo"}));
    assert_ne!(v["uid"], 0);
    assert!(v["pid"].as_i64().unwrap() < 10, "pid namespace: {v}");
    let (_, ifs) = invoke(&c, "iso", json!({"action": "interfaces"}));
    let mut ifs: Vec<String> = serde_json::from_value(ifs).unwrap();
    ifs.sort();
    if network_available() {
        // Its own link to the host, nothing of the host's.
        assert_eq!(ifs, ["eth0", "lo"]);
    } else {
        assert_eq!(ifs, ["lo"]);
    }

    // Host secrets and other functions are invisible.
    let data = d.data_dir.display().to_string();
    for path in ["/etc/shadow", "/root/.bash_history", "/proc/1/environ"] {
        let (_, v) = invoke(&c, "iso", json!({"action": "read", "path": path}));
        assert_eq!(v["ok"], false, "{path} readable: {v}");
    }
    for dir in ["/root", "/home", "/work", data.as_str()] {
        let (_, v) = invoke(&c, "iso", json!({"action": "listdir", "path": dir}));
        assert_eq!(v["ok"], false, "{dir} listable: {v}");
    }
    // The host Python's own site-packages (other software, start-up hooks) is hidden.
    let (_, v) = invoke(
        &c,
        "iso",
        json!({"action": "listdir", "path": "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages"}),
    );
    assert!(
        v["value"] == json!([]) || v["ok"] == false,
        "host site-packages visible: {v}"
    );
    let (_, v) = invoke(&c, "iso", json!({"action": "listdir", "path": "/var/task"}));
    assert_eq!(v["value"], json!(["app.py"]), "only its own code: {v}");
    let (_, v) = invoke(&c, "iso", json!({"action": "listdir", "path": "/etc"}));
    let etc: Vec<String> = serde_json::from_value(v["value"].clone()).unwrap();
    assert!(!etc.iter().any(|e| e == "shadow" || e == "ssh"), "{etc:?}");
    for path in ["/var/task/x", "/usr/x", "/x"] {
        let (_, v) = invoke(&c, "iso", json!({"action": "write", "path": path}));
        assert_eq!(v["ok"], false, "{path} writable: {v}");
    }
    let (_, v) = invoke(&c, "iso", json!({"action": "write", "path": "/tmp/ok"}));
    assert_eq!(v["ok"], true, "{v}");

    // Filling /tmp stops at its limit.
    let (_, v) = invoke(&c, "iso", json!({"action": "fill_tmp"}));
    assert!(
        v["error"].as_str().unwrap_or("").contains("No space left"),
        "{v}"
    );
    assert!(v["written_mb"].as_i64().unwrap() <= 512, "{v}");

    // A fork bomb hits the pids limit; the other function is unaffected.
    let (_, v) = invoke(&c, "iso", json!({"action": "forkbomb"}));
    assert!(v["error"].is_string(), "fork bomb was not stopped: {v}");
    assert!(v["forked"].as_i64().unwrap() < 200, "{v}");
    let (r, _) = invoke(&c, "other", json!({}));
    assert!(r.function_error.is_none());
    let (r, _) = invoke(&c, "iso", json!({"action": "echo"}));
    assert!(
        r.function_error.is_none(),
        "instance still usable after the fork bomb"
    );

    // Two instances of different functions have different identities.
    let (_, a) = invoke(&c, "iso", json!({"action": "echo"}));
    let (_, b) = invoke(&c, "other", json!({}));
    assert_ne!(a["uid"], b["uid"], "functions run as distinct uids");
}

#[test]
fn shutdown_leaves_nothing_and_restart_finds_functions() {
    if !can_run("shutdown_and_restart") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(tmp.path(), &[]);
    let c = d.client();
    deploy(&c, "keep", "py-state", "python3.11", "app.handler", 128, 30);
    deploy(
        &c,
        "keep-node",
        "node-state",
        "nodejs20.x",
        "index.handler",
        128,
        3,
    );
    invoke(&c, "keep", json!({}));
    invoke(&c, "keep-node", json!({}));
    // One more instance busy in a long invocation while we shut down.
    let busy = {
        let c = d.client();
        std::thread::spawn(move || {
            c.invoke(
                "keep",
                br#"{"action":"sleep","seconds":20}"#,
                &InvokeOptions::default(),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!instance_cgroups(tmp.path()).is_empty());
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(d.stop(), "daemon exits cleanly on SIGTERM");
    let _ = busy.join();
    assert!(
        instance_cgroups(tmp.path()).is_empty(),
        "cgroups left: {:?}",
        instance_cgroups(tmp.path())
    );
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = tmp.path().display().to_string();
    assert!(
        !mounts_after.contains(&root),
        "mounts left under the data dir"
    );
    assert!(
        !mounts_before.contains(&root),
        "sandbox mounts leaked into the host namespace"
    );
    assert_eq!(
        network_leftovers(tmp.path()),
        Vec::<String>::new(),
        "the instance network was not removed"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(tmp.path()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o077, 0, "data dir is open to other users: {mode:o}");

    let d2 = Daemon::start_in(tmp.path(), &[]);
    let c2 = d2.client();
    let names: Vec<String> = c2
        .list_all_functions()
        .unwrap()
        .into_iter()
        .map(|f| f.function_name)
        .collect();
    assert_eq!(names, ["keep", "keep-node"]);
    let (r, v) = invoke(&c2, "keep", json!({}));
    assert_eq!(r.start, Some(StartKind::Cold));
    assert_eq!(v["count"], 1);

    // Updating the configuration retires warm instances.
    c2.update_function_configuration(
        "keep",
        &UpdateFunctionConfigurationRequest {
            memory_size: Some(256),
            ..Default::default()
        },
    )
    .unwrap();
    let (r, v) = invoke(&c2, "keep", json!({}));
    assert_eq!(r.start, Some(StartKind::Cold));
    assert_eq!(v["memory_limit_in_mb"], "256");
}

#[test]
fn unmodified_awslambdaric_runs_as_a_custom_runtime() {
    if !can_run("awslambdaric") {
        return;
    }
    // Build the function: our handler + bootstrap, plus awslambdaric from PyPI.
    let code = tempfile::tempdir().unwrap();
    let src = functions_dir().join("awslambdaric");
    for f in ["app.py", "bootstrap"] {
        std::fs::copy(src.join(f), code.path().join(f)).unwrap();
    }
    let pip = std::process::Command::new("python3.11")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(code.path())
        .arg("awslambdaric==4.2.2")
        .status();
    if !matches!(pip, Ok(s) if s.success()) {
        skip(
            "awslambdaric",
            "`pip install awslambdaric` failed on this machine",
        );
        return;
    }
    let zip = thaw_api::package::zip_directory(code.path()).unwrap();
    let d = Daemon::start(&[]);
    let c = d.client();
    deploy_zip(&c, "ric", zip, "provided.al2023", "app.handler", 256, 10);
    let (r, v) = invoke(&c, "ric", json!({"hello": "ric"}));
    assert!(r.function_error.is_none(), "{v}");
    assert_eq!(v["client"], "awslambdaric");
    assert_eq!(v["echo"], json!({"hello": "ric"}));
    assert_eq!(v["request_id"].as_str(), r.request_id.as_deref());
    assert!(
        v["ric_file"].as_str().unwrap().starts_with("/var/task/"),
        "{v}"
    );
    let (r, v) = invoke(&c, "ric", json!({"again": true}));
    assert_eq!(r.start, Some(StartKind::Warm));
    assert_eq!(v["echo"], json!({"again": true}));
}

#[test]
fn cli_deploy_invoke_list_logs_delete() {
    if !can_run("cli") {
        return;
    }
    let d = Daemon::start(&[]);
    let thaw = |args: &[&str]| {
        let out = signed_cli(&mut std::process::Command::new(env!("CARGO_BIN_EXE_thaw")))
            .arg("--endpoint")
            .arg(&d.endpoint)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let code_dir = functions_dir().join("py-state");
    let code_dir = code_dir.to_str().unwrap();
    let (st, _, err) = thaw(&[
        "deploy",
        "clifn",
        "--runtime",
        "python3.11",
        "--handler",
        "app.handler",
        "--code",
        code_dir,
        "--memory",
        "192",
        "--env",
        "MODE=cli",
    ]);
    assert_eq!(st, Some(0), "{err}");
    // Deploying again updates the function in place.
    let (st, _, err) = thaw(&[
        "deploy",
        "clifn",
        "--runtime",
        "python3.11",
        "--handler",
        "app.handler",
        "--code",
        code_dir,
        "--timeout",
        "9",
    ]);
    assert_eq!(st, Some(0), "{err}");
    let (st, out, err) = thaw(&["invoke", "clifn", "--payload", r#"{"action":"env"}"#]);
    assert_eq!(st, Some(0), "{err}");
    let env: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "192");
    assert!(err.contains("cold"), "start kind on stderr: {err}");
    let (st, out, _) = thaw(&["invoke", "clifn", "--payload", r#"{"action":"raise"}"#]);
    assert_eq!(st, Some(1), "function error exits 1");
    assert!(out.contains("ValueError"), "{out}");
    let (st, out, _) = thaw(&["list"]);
    assert_eq!(st, Some(0));
    assert!(out.contains("clifn") && out.contains("python3.11"), "{out}");
    let (st, out, _) = thaw(&["logs", "clifn"]);
    assert_eq!(st, Some(0));
    assert!(
        out.contains("action=env") && out.contains("REPORT RequestId"),
        "{out}"
    );
    let (st, _, _) = thaw(&["delete", "clifn"]);
    assert_eq!(st, Some(0));
    let (st, _, err) = thaw(&["invoke", "clifn"]);
    assert_ne!(st, Some(0));
    assert!(err.contains("ResourceNotFoundException"), "{err}");
}

#[test]
fn no_descriptor_reaches_a_function_and_the_supervisor_is_opaque() {
    if !can_run("fd_hygiene") {
        return;
    }
    let d = Daemon::start_with_inherited_fds();
    let c = d.client();
    deploy(&c, "fds", "py-state", "python3.11", "app.handler", 128, 5);
    let (_, v) = invoke(&c, "fds", json!({"action": "fds"}));
    let fds = v.as_object().expect("fd map");
    assert!(fds.len() <= 6, "unexpected descriptors: {v}");
    for (fd, target) in fds {
        let t = target.as_str().unwrap();
        let allowed = t == "/dev/null"
            || t.starts_with("pipe:")
            || t.starts_with("socket:")
            || t.starts_with("/proc/");
        assert!(allowed, "fd {fd} -> {t} leaked into the function: {v}");
    }
    // The supervisor (PID 1, same uid) is not dumpable: its fds and memory are closed.
    for path in ["/proc/1/fd", "/proc/1/environ", "/proc/1/mem"] {
        let action = if path.ends_with("fd") {
            "listdir"
        } else {
            "read"
        };
        let (_, v) = invoke(&c, "fds", json!({"action": action, "path": path}));
        assert_eq!(v["ok"], false, "{path} is open to the function: {v}");
    }
}

#[test]
fn a_client_that_hangs_up_does_not_leak_the_instance() {
    if !can_run("client_hangs_up") {
        return;
    }
    let d = Daemon::start(&[]);
    let c = d.client();
    deploy(&c, "slow", "py-state", "python3.11", "app.handler", 128, 10);
    let impatient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let url = format!("{}/2015-03-31/functions/slow/invocations", d.endpoint);
    let body = r#"{"action":"sleep","seconds":2}"#;
    let r = impatient
        .post(&url)
        .headers(signed_headers("POST", &url, body.as_bytes()))
        .body(body)
        .send();
    assert!(r.is_err(), "the client should have timed out");
    // The invocation finishes on its own; the instance goes back to the pool.
    std::thread::sleep(Duration::from_millis(2500));
    let metrics = metrics_text(&d);
    assert!(
        metrics.contains(r#"thaw_instances{function="slow",state="busy"} 0"#),
        "{metrics}"
    );
    assert_eq!(
        instance_cgroups(&d.data_dir).len(),
        3,
        "one instance, three controllers"
    );
    let (r, v) = invoke(&c, "slow", json!({}));
    assert_eq!(r.start, Some(StartKind::Warm));
    assert_eq!(
        v["count"], 2,
        "the hung-up invocation completed on the same instance"
    );
}

/// `LoggingConfig` takes effect: with `LogFormat: JSON` the platform's
/// lines are Lambda's JSON records and the runtimes write `logging` /
/// `console` output as JSON lines at `ApplicationLogLevel` and above (print
/// stays text); `SystemLogLevel: WARN` leaves the platform's records out.
#[test]
fn json_log_format_and_levels() {
    if !can_run("json_log_format_and_levels") {
        return;
    }
    let d = Daemon::start(&[]);
    let c = d.client();
    let logging = |system: &str| thaw_api::kept::Kept {
        logging_config: Some(thaw_api::kept::LoggingConfig {
            log_format: Some("JSON".into()),
            application_log_level: Some("WARN".into()),
            system_log_level: Some(system.into()),
            log_group: None,
        }),
        ..Default::default()
    };
    for (name, dir, runtime, handler) in [
        ("jlog-py", "py-logs", "python3.11", "app.handler"),
        ("jlog-node", "node-logs", "nodejs20.x", "index.handler"),
    ] {
        let zip = thaw_api::package::zip_directory(&functions_dir().join(dir)).unwrap();
        c.create_function(&thaw_api::CreateFunctionRequest {
            function_name: name.into(),
            runtime: Some(runtime.into()),
            handler: Some(handler.into()),
            role: Some("arn:aws:iam::000000000000:role/test".into()),
            code: thaw_api::FunctionCode {
                zip_file: Some(zip),
                ..Default::default()
            },
            kept: logging("INFO"),
            ..Default::default()
        })
        .unwrap();
        let (r, v) = invoke(&c, name, json!({"n": 1}));
        assert_eq!(r.function_error, None, "{v}");
        let id = r.request_id.clone().expect("a request id");
        let lines: Vec<String> = c
            .logs(name, Some(&id), Some(100))
            .unwrap()
            .into_iter()
            .map(|l| l.line)
            .collect();
        let json_lines: Vec<Value> = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.is_object())
            .collect();
        let of_type = |t: &str| json_lines.iter().find(|v| v["type"] == t);
        let start = of_type("platform.start").unwrap_or_else(|| panic!("{name}: {lines:?}"));
        assert_eq!(start["record"]["requestId"], id.as_str());
        let report = of_type("platform.report").unwrap_or_else(|| panic!("{name}: {lines:?}"));
        assert!(
            report["record"]["metrics"]["durationMs"].is_number(),
            "{report}"
        );
        assert!(of_type("platform.runtimeDone").is_some(), "{lines:?}");
        let loud = json_lines
            .iter()
            .find(|v| v["level"] == "WARN")
            .unwrap_or_else(|| panic!("{name}: no WARN line in {lines:?}"));
        assert_eq!(loud["message"], "loud 1", "{loud}");
        assert_eq!(loud["requestId"], id.as_str(), "{loud}");
        assert!(loud["timestamp"].as_str().unwrap().ends_with('Z'), "{loud}");
        let error = json_lines
            .iter()
            .find(|v| v["level"] == "ERROR")
            .unwrap_or_else(|| panic!("{name}: no ERROR line in {lines:?}"));
        let error_type = if runtime.starts_with("python") {
            "ValueError"
        } else {
            "Error"
        };
        assert_eq!(error["errorType"], error_type, "{error}");
        assert!(
            !lines.iter().any(|l| l.contains("quiet")),
            "{name}: INFO is below the application's level: {lines:?}"
        );
        if runtime.starts_with("python") {
            assert!(lines.iter().any(|l| l == "plain print"), "{lines:?}");
        }
    }
    // SystemLogLevel WARN: no platform records (a new revision: cold).
    c.update_function_configuration(
        "jlog-py",
        &UpdateFunctionConfigurationRequest {
            kept: logging("WARN"),
            ..Default::default()
        },
    )
    .unwrap();
    let (r, _) = invoke(&c, "jlog-py", json!({"n": 2}));
    let lines: Vec<String> = c
        .logs("jlog-py", r.request_id.as_deref(), Some(100))
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert!(!lines.iter().any(|l| l.contains("platform.")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("loud 2")), "{lines:?}");
}
