//! Durable asynchronous invocation against a real `thaw serve`: 100 events
//! of which 30% fail, with retries and both destinations configured,
//! across a SIGKILL of the daemon and a SIGTERM; afterwards every accepted
//! event is accounted for exactly once by its destination (successes by the
//! success destination, failures, after two retries, by the failure
//! destination).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{can_run, deploy, Daemon};
use serde_json::{json, Value};
use thaw_api::events::{DestinationConfig, OnTarget, PutFunctionEventInvokeConfigRequest};
use thaw_api::{Client, InvocationType, InvokeOptions};

const FLAGS: &[&str] = &["--async-retry-delay-secs", "0.3"];

/// Accepts events `range` (30% of them failing), a few threads at once;
/// returns (n, request id) of each 202.
fn send(c: &Client, range: std::ops::Range<u64>) -> Vec<(u64, String)> {
    let ns: Vec<u64> = range.collect();
    let chunks: Vec<Vec<u64>> = ns
        .chunks(ns.len().div_ceil(4))
        .map(<[u64]>::to_vec)
        .collect();
    let threads: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let c = c.clone();
            std::thread::spawn(move || {
                let opts = InvokeOptions {
                    invocation_type: InvocationType::Event,
                    ..Default::default()
                };
                chunk
                    .into_iter()
                    .map(|n| {
                        let p = json!({"n": n, "fail": n % 10 < 3, "sleep": 0.02});
                        let r = c
                            .invoke("ev", p.to_string().as_bytes(), &opts)
                            .unwrap_or_else(|e| panic!("event {n}: {e}"));
                        assert_eq!(r.status, 202, "event {n}");
                        (n, r.request_id.expect("a request id"))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

/// The SETTLED lines a destination function logged.
fn settled(data: &Path, sink: &str) -> Vec<Value> {
    std::fs::read_to_string(data.join("logs").join(format!("{sink}.jsonl")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|r| {
            let line = r["line"].as_str()?;
            serde_json::from_str(line.strip_prefix("SETTLED ")?).ok()
        })
        .collect()
}

#[test]
fn every_accepted_event_settles_once_across_a_sigkill_and_a_sigterm() {
    if !can_run("every_accepted_event_settles_once_across_a_sigkill_and_a_sigterm") {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("thaw-async-")
        .tempdir()
        .unwrap();
    let data = tmp.path();
    let mut d = Daemon::start_in(data, FLAGS);
    let c = d.client();
    for f in ["ev", "ok-sink", "fail-sink"] {
        deploy(&c, f, "py-events", "python3.11", "app.handler", 256, 10);
    }
    let arn = |f: &str| format!("arn:aws:lambda:us-east-1:000000000000:function:{f}");
    c.put_function_event_invoke_config(
        "ev",
        &PutFunctionEventInvokeConfigRequest {
            maximum_retry_attempts: Some(2),
            maximum_event_age_in_seconds: Some(3600),
            destination_config: Some(DestinationConfig {
                on_success: Some(OnTarget {
                    destination: Some(arn("ok-sink")),
                }),
                on_failure: Some(OnTarget {
                    destination: Some(arn("fail-sink")),
                }),
            }),
        },
    )
    .unwrap();

    // Half, then a SIGKILL while they run.
    let mut accepted = send(&c, 0..50);
    std::thread::sleep(Duration::from_millis(400));
    let before_kill = c.event_queue("ev").unwrap().queued;
    d.kill();
    // The other half, then a SIGTERM right after.
    let mut d = Daemon::start_in(data, FLAGS);
    let c = d.client();
    accepted.extend(send(&c, 50..100));
    assert!(d.stop(), "the daemon stops cleanly");
    let mut d = Daemon::start_in(data, FLAGS);
    let c = d.client();

    // Until every queue is empty (failures wait 0.3 s, then 0.6 s).
    let t0 = Instant::now();
    loop {
        let left: u64 = ["ev", "ok-sink", "fail-sink"]
            .iter()
            .map(|f| c.event_queue(f).unwrap().queued)
            .sum();
        if left == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "{left} events still queued after 180 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let ok = settled(data, "ok-sink");
    let failed = settled(data, "fail-sink");
    let mut seen: BTreeMap<String, Vec<(&str, &Value)>> = BTreeMap::new();
    for r in &ok {
        seen.entry(r["id"].as_str().unwrap().to_string())
            .or_default()
            .push(("ok", r));
    }
    for r in &failed {
        seen.entry(r["id"].as_str().unwrap().to_string())
            .or_default()
            .push(("fail", r));
    }
    let mut problems = Vec::new();
    let mut duplicates = 0;
    for (n, id) in &accepted {
        let Some(records) = seen.get(id) else {
            problems.push(format!("event {n} ({id}) never settled"));
            continue;
        };
        let sinks: BTreeSet<&str> = records.iter().map(|(s, _)| *s).collect();
        duplicates += records.len() - 1;
        let should_fail = n % 10 < 3;
        let (sink, r) = records[0];
        if sinks.len() != 1 || (sink == "fail") != should_fail {
            problems.push(format!("event {n}: settled by {sinks:?}"));
        }
        if r["n"] != json!(n) {
            problems.push(format!("event {n}: record of {}", r["n"]));
        }
        let expected = if should_fail {
            json!({"condition": "RetriesExhausted", "runs": 3})
        } else {
            json!({"condition": "Success", "runs": 1})
        };
        if json!({"condition": r["condition"], "runs": r["runs"]}) != expected {
            problems.push(format!("event {n}: {r} (expected {expected})"));
        }
    }
    let ids: BTreeSet<&String> = accepted.iter().map(|(_, id)| id).collect();
    let strangers: Vec<&String> = seen.keys().filter(|k| !ids.contains(k)).collect();
    eprintln!(
        "async events: {} accepted, {} queued at the SIGKILL, {} settled by ok-sink, {} by fail-sink, {} delivered twice (at-least-once after the kill)",
        accepted.len(),
        before_kill,
        ok.len(),
        failed.len(),
        duplicates
    );
    assert!(
        strangers.is_empty(),
        "records of unknown events: {strangers:?}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // No event failed into the failed-events list: each had a destination.
    assert!(c.event_queue("ev").unwrap().failed.is_empty());
    assert!(d.stop());
}

/// boto3 (the event invoke configuration operations and their errors),
/// the AWS CLI (the same configuration read back), then where the events
/// boto3 sent went: failures to the failure destination after one retry.
#[test]
fn boto3_and_the_aws_cli_configure_retries_and_destinations() {
    if !can_run("boto3_and_the_aws_cli_configure_retries_and_destinations") {
        return;
    }
    if !common::has_boto3() {
        common::skip(
            "boto3_and_the_aws_cli_configure_retries_and_destinations",
            "boto3 is not installed (scripts/test.sh installs it)",
        );
        return;
    }
    let d = Daemon::start(FLAGS);
    let stdout = common::run_boto3_script(&d, "async_events.py", &[]);
    let sent: Vec<Value> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("EVENTS "))
        .map(|j| serde_json::from_str(j).unwrap())
        .unwrap();

    let aws = std::process::Command::new("python3")
        .args(["-m", "awscli", "lambda", "get-function-event-invoke-config"])
        .args(["--function-name", "bev"])
        .args(["--endpoint-url", &d.endpoint, "--region", "us-east-1"])
        .env("AWS_ACCESS_KEY_ID", common::TEST_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", common::TEST_SECRET_ACCESS_KEY)
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    if String::from_utf8_lossy(&aws.stderr).contains("No module named awscli") {
        common::skip(
            "boto3_and_the_aws_cli_configure_retries_and_destinations (AWS CLI part)",
            "the AWS CLI is not installed (scripts/test.sh installs it)",
        );
    } else {
        assert!(
            aws.status.success(),
            "aws lambda get-function-event-invoke-config: {aws:?}"
        );
        let v: Value = serde_json::from_slice(&aws.stdout).unwrap();
        assert_eq!(v["MaximumRetryAttempts"], 1);
        assert_eq!(v["MaximumEventAgeInSeconds"], 1800);
    }

    let c = d.client();
    let t0 = Instant::now();
    while c.event_queue("bev").unwrap().queued + c.event_queue("bsink").unwrap().queued > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "events still queued"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let records = settled(&d.data_dir, "bsink");
    for e in &sent {
        let id = e["id"].as_str().unwrap();
        let got: Vec<&Value> = records.iter().filter(|r| r["id"] == id).collect();
        if e["fail"] == json!(true) {
            assert_eq!(
                got.len(),
                1,
                "failed event {e} reached the destination once"
            );
            assert_eq!(got[0]["condition"], "RetriesExhausted");
            assert_eq!(got[0]["runs"], 2, "one run and one retry");
        } else {
            assert!(
                got.is_empty(),
                "a successful event {e} reached the failure destination"
            );
        }
    }
}
