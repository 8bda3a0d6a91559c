//! Only authenticated callers (SigV4) reach the daemon: boto3 and the AWS
//! CLI with the right key work; a wrong key or secret, an unsigned request,
//! a changed body and a replay outside the 15-minute window are refused
//! with Lambda's codes; a daemon given no root key generates one, keeps it
//! in its data directory (0600) and leaves it for the thaw CLI.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;
use thaw_api::{Client, InvokeOptions};

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

/// Accounts against a real daemon: the root account creates one with the
/// CLI; each account deploys its own `f` and invokes its own code, with its
/// own ARN and store tenant; another account's function is refused (403)
/// to the API, boto3 and the CLI alike; a key is rotated (a second key
/// works, the deleted one is refused at once, the limit and the last key
/// hold); keys and namespaces survive a restart.
#[test]
fn accounts_have_their_own_functions_and_keys() {
    if !can_run("accounts_have_their_own_functions_and_keys") {
        return;
    }
    let data = tempfile::Builder::new()
        .prefix("thaw-e2e-")
        .tempdir()
        .unwrap();
    let mut d = Daemon::start_in(data.path(), &[]);
    let root = d.client();

    // The root account creates account "team-a" with the CLI.
    let out = signed_cli(Command::new(env!("CARGO_BIN_EXE_thaw")).args([
        "--endpoint",
        &d.endpoint,
        "account",
        "create",
        "team-a",
    ]))
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "thaw account create: {out:?}");
    let field = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {label} in {stdout}"))
    };
    let key_a =
        thaw_api::auth::Credentials::new(field("access key id:"), field("secret access key:"));
    let accounts = root.list_accounts().unwrap();
    let team = accounts.iter().find(|a| a.name == "team-a").unwrap();
    let a_id = team.account_id.clone();
    assert_eq!(a_id.len(), 12);
    assert_eq!(team.access_key_ids, vec![key_a.access_key_id.clone()]);
    assert!(
        !serde_json::to_string(&accounts)
            .unwrap()
            .contains(&key_a.secret_access_key),
        "listing never shows a secret"
    );
    let a = Client::new(&d.endpoint)
        .unwrap()
        .with_credentials(key_a.clone());
    // Only the root account manages accounts.
    let e = a.create_account("sneaky").unwrap_err();
    assert_eq!(
        e.code().map(|c| c.as_str()),
        Some("AccessDeniedException"),
        "{e}"
    );
    assert!(a.list_accounts().is_err());

    // Same name in both accounts: two functions, each runs its own.
    deploy(&root, "f", "py-state", "python3.11", "app.handler", 128, 10);
    deploy(&a, "f", "py-state", "python3.11", "app.handler", 128, 10);
    let (_, in_root) = invoke(&root, "f", serde_json::json!({"who": "root"}));
    let (_, in_a) = invoke(&a, "f", serde_json::json!({"who": "a"}));
    assert_eq!(in_root["event"]["who"], "root");
    assert_eq!(in_a["event"]["who"], "a");
    assert_eq!(
        in_a["function_arn"],
        format!("arn:aws:lambda:us-east-1:{a_id}:function:f")
    );
    assert_eq!(in_a["env_function_name"], "f", "{in_a}");
    assert_eq!(in_a["function_name"], "f");
    assert_eq!(
        in_root["function_arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:f"
    );
    assert_ne!(in_a["uid"], in_root["uid"], "two functions, two uids");
    let listed: Vec<String> = a
        .list_all_functions()
        .unwrap()
        .into_iter()
        .map(|f| f.function_arn)
        .collect();
    assert_eq!(
        listed,
        vec![format!("arn:aws:lambda:us-east-1:{a_id}:function:f")]
    );

    // Another account's function by ARN: 403 for every operation, and
    // nothing ran or changed.
    let root_arn = "arn:aws:lambda:us-east-1:000000000000:function:f";
    let denied = |r: Result<(), thaw_api::ClientError>| {
        let e = r.expect_err("refused");
        assert_eq!(
            e.code().map(|c| c.as_str()),
            Some("AccessDeniedException"),
            "{e}"
        );
    };
    denied(a.get_function(root_arn).map(|_| ()));
    denied(
        a.invoke(root_arn, b"{}", &InvokeOptions::default())
            .map(|_| ()),
    );
    denied(a.delete_function(root_arn));
    denied(a.logs(root_arn, None, None).map(|_| ()));
    denied(a.function_code(root_arn).map(|_| ()));
    denied(a.metrics_text().map(|_| ()));
    let (_, again) = invoke(&root, "f", serde_json::json!({}));
    assert_eq!(
        again["count"], 2,
        "root's instance served only root's two calls"
    );

    if has_boto3() {
        let script = functions_dir().join("../boto3/accounts.py");
        let out = Command::new("python3")
            .arg(&script)
            .args([
                &d.endpoint,
                &key_a.access_key_id,
                &key_a.secret_access_key,
                &a_id,
                root_arn,
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success() && stdout.contains("checks passed"),
            "boto3 accounts script failed"
        );
    } else {
        skip(
            "accounts_have_their_own_functions_and_keys (boto3 part)",
            "boto3 is not installed (scripts/test.sh installs it)",
        );
    }

    // Rotation: a second key (the account's own request), then the old
    // key deleted: refused at once; the new one works.
    let key_a2 = a.create_access_key(&a_id).unwrap().credentials();
    let e = a.create_access_key(&a_id).unwrap_err();
    assert_eq!(
        e.code().map(|c| c.as_str()),
        Some("ResourceConflictException"),
        "{e}"
    );
    let a2 = Client::new(&d.endpoint)
        .unwrap()
        .with_credentials(key_a2.clone());
    assert_eq!(a2.list_all_functions().unwrap().len(), 1);
    a2.delete_access_key(&a_id, &key_a.access_key_id).unwrap();
    let e = a.list_all_functions().unwrap_err();
    assert_eq!(
        e.code().map(|c| c.as_str()),
        Some("UnrecognizedClientException"),
        "{e}"
    );
    let e = a2
        .delete_access_key(&a_id, &key_a2.access_key_id)
        .unwrap_err();
    assert_eq!(
        e.code().map(|c| c.as_str()),
        Some("ResourceConflictException"),
        "the last key stays: {e}"
    );
    // Another account's keys are not A's to touch.
    denied(a2.create_access_key(thaw_auth_root()).map(|_| ()));

    // The account's snapshots live in its own store tenant.
    let report = a2.create_snapshot("f", b"{}").unwrap();
    assert!(report.size_bytes > 0);
    let root_report = root.create_snapshot("f", b"{}").unwrap();
    assert!(root_report.size_bytes > 0);
    let tenants = store_tenants(data.path());
    assert!(tenants.contains(&a_id), "tenants: {tenants:?}");
    assert!(
        tenants.contains(&"default".to_string()),
        "tenants: {tenants:?}"
    );

    // After a restart: the same keys, the same namespaces.
    assert!(d.stop());
    d = Daemon::start_in(data.path(), &[]);
    let a2 = Client::new(&d.endpoint).unwrap().with_credentials(key_a2);
    let (_, after) = invoke(&a2, "f", serde_json::json!({"who": "a again"}));
    assert_eq!(after["event"]["who"], "a again");
    assert_eq!(
        after["function_arn"],
        format!("arn:aws:lambda:us-east-1:{a_id}:function:f")
    );
    assert_eq!(d.client().list_all_functions().unwrap().len(), 1);
    let e = Client::new(&d.endpoint)
        .unwrap()
        .with_credentials(key_a)
        .list_all_functions()
        .unwrap_err();
    assert_eq!(
        e.code().map(|c| c.as_str()),
        Some("UnrecognizedClientException")
    );
}

fn thaw_auth_root() -> &'static str {
    "000000000000"
}

/// The tenants with objects in the daemon's snapshot store.
fn store_tenants(data: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![data.join("store")];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if e.path().is_dir() {
                if name == "default"
                    || (name.len() == 12 && name.bytes().all(|b| b.is_ascii_digit()))
                {
                    out.push(name.clone());
                }
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
