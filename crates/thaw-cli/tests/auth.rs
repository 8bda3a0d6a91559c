//! Only authenticated callers (SigV4) reach the daemon: boto3 and the AWS
//! CLI with the right key work; a wrong key or secret, an unsigned request,
//! a changed body and a replay outside the 15-minute window are refused
//! with Lambda's codes; a daemon given no root key generates one, keeps it
//! in its data directory (0600) and leaves it for the thaw CLI.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;

#[test]
fn only_signed_requests_are_served() {
    if !can_run("only_signed_requests_are_served") {
        return;
    }
    let d = Daemon::start(&[]);
    let c = d.client();
    deploy(
        &c,
        "authfn",
        "py-state",
        "python3.11",
        "app.handler",
        128,
        10,
    );

    // Raw requests: (headers signed at `at` for `signed_body`, body sent).
    let url = format!("{}/2015-03-31/functions/authfn/invocations", d.endpoint);
    let send = |signed_body: &[u8], sent: &'static [u8], at: SystemTime| {
        let headers = signed_headers_at("POST", &url, signed_body, at);
        let r = reqwest::blocking::Client::new()
            .post(&url)
            .headers(headers)
            .body(sent)
            .send()
            .unwrap();
        let code = r
            .headers()
            .get("x-amzn-errortype")
            .map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), code)
    };
    let now = SystemTime::now();
    assert_eq!(
        send(b"{}", b"{}", now),
        (200, None),
        "a signed invoke works"
    );
    assert_eq!(
        send(b"{}", br#"{"action":"x"}"#, now),
        (403, Some("InvalidSignatureException".into())),
        "a body changed after signing is refused"
    );
    assert_eq!(
        send(b"{}", b"{}", now - Duration::from_secs(20 * 60)),
        (403, Some("InvalidSignatureException".into())),
        "a request captured 20 minutes ago is refused"
    );
    let unsigned = reqwest::blocking::Client::new()
        .get(format!("{}/2015-03-31/functions", d.endpoint))
        .send()
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 403);
    let metrics = reqwest::blocking::get(format!("{}/metrics", d.endpoint)).unwrap();
    assert_eq!(metrics.status().as_u16(), 403, "metrics are signed too");
    let health = reqwest::blocking::get(format!("{}/healthz", d.endpoint)).unwrap();
    assert!(health.status().is_success(), "/healthz stays open");
    // The refused requests changed nothing: one invocation ran.
    let text = metrics_text(&d);
    assert!(
        text.lines()
            .any(|l| l.starts_with("thaw_invocations_total{")
                && l.contains(r#"function="authfn""#)
                && l.ends_with(" 1")),
        "{text}"
    );

    if !has_boto3() {
        skip(
            "only_signed_requests_are_served (boto3 part)",
            "boto3 is not installed (scripts/test.sh installs it)",
        );
        return;
    }
    let script = functions_dir().join("../boto3/auth.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([&d.endpoint, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && stdout.contains("checks passed"),
        "boto3 auth script failed"
    );

    // The AWS CLI (v1, a Python package: scripts/test.sh installs it) with
    // the same key.
    let aws = Command::new("python3")
        .args(["-m", "awscli", "lambda", "list-functions"])
        .args(["--endpoint-url", &d.endpoint, "--region", "us-east-1"])
        .env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
        .env_remove("AWS_PROFILE")
        .output();
    match aws {
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named awscli") => skip(
            "only_signed_requests_are_served (AWS CLI part)",
            "the AWS CLI is not installed (scripts/test.sh installs it)",
        ),
        Ok(out) => {
            assert!(out.status.success(), "aws lambda list-functions: {out:?}");
            assert!(String::from_utf8_lossy(&out.stdout).contains("authfn"));
        }
        Err(e) => panic!("cannot run python3: {e}"),
    }
}

#[test]
fn a_generated_root_key_is_kept_private_and_found_by_the_cli() {
    if !can_run("a_generated_root_key_is_kept_private_and_found_by_the_cli") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let data = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start_generating_key(data.path(), home.path());
    let accounts = data.path().join("accounts.json");
    let mode = std::fs::metadata(&accounts).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "accounts.json is root's only");
    let local = home.path().join(".config/thaw/credentials.json");
    let mode = std::fs::metadata(&local).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let thaw = |home: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_thaw"))
            .args(["--endpoint", &d.endpoint, "list"])
            .env("HOME", home)
            .env_remove("THAW_ACCESS_KEY_ID")
            .env_remove("THAW_SECRET_ACCESS_KEY")
            .output()
            .unwrap()
    };
    let out = thaw(home.path());
    assert!(
        out.status.success(),
        "the CLI finds the generated key: {out:?}"
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let out = thaw(elsewhere.path());
    assert!(!out.status.success(), "without the key the CLI is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("MissingAuthenticationToken"),
        "{out:?}"
    );
}
