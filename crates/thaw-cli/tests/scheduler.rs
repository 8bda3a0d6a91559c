//! The scheduler in the daemon: a burst larger than the function's
//! instance limit queues in arrival order and is served by the instances
//! that exist, each released instance handed straight to a waiting
//! request; every decision and queue time is counted in the metrics, and
//! no request is counted as starting or busy once the burst is over.

mod common;

use common::{can_run, deploy, metric, metrics_text, Daemon};
use serde_json::json;

#[test]
fn a_burst_beyond_the_limit_queues_and_is_handed_instances() {
    if !can_run("a_burst_beyond_the_limit_queues_and_is_handed_instances") {
        return;
    }
    let d = Daemon::start(&["--max-instances", "2", "--auto-snapshot", "false"]);
    let c = d.client();
    deploy(&c, "q", "py-snap", "python3.11", "app.handler", 128, 30);
    const BURST: usize = 12;
    let results: Vec<(bool, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..BURST)
            .map(|_| {
                let c = d.client();
                s.spawn(move || {
                    let r = c.invoke(
                        "q",
                        json!({"action": "sleep", "seconds": 0.3})
                            .to_string()
                            .as_bytes(),
                        &Default::default(),
                    );
                    match r {
                        Ok(r) => (
                            r.function_error.is_none(),
                            String::from_utf8_lossy(&r.payload).into_owned(),
                        ),
                        Err(e) => (false, e.to_string()),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (ok, what) in &results {
        assert!(ok, "every request of the burst is served: {what}");
    }
    let text = metrics_text(&d);
    let m = |line: &str| common::metric_in(&text, line);
    let starts = m(r#"thaw_instance_starts_total{function="q",result="ok"}"#);
    assert!(
        (1.0..=2.0).contains(&starts),
        "never more instances than --max-instances: {starts} started\n{text}"
    );
    assert!(
        m(r#"thaw_scheduler_decisions_total{decision="wait",function="q"}"#) >= 1.0,
        "requests beyond the limit waited\n{text}"
    );
    assert_eq!(
        m(r#"thaw_queue_seconds_count{function="q"}"#),
        BURST as f64,
        "one queue time per request\n{text}"
    );
    assert_eq!(
        m(r#"thaw_invocations_total{function="q",outcome="success",start="warm"}"#)
            + m(r#"thaw_invocations_total{function="q",outcome="success",start="cold"}"#),
        BURST as f64,
        "{text}"
    );
    for state in ["starting", "busy"] {
        assert_eq!(
            metric(
                &d,
                &format!(r#"thaw_instances{{function="q",state="{state}"}}"#)
            ),
            0.0,
            "nothing is {state} after the burst"
        );
    }
    assert_eq!(
        metric(&d, r#"thaw_instances{function="q",state="idle"}"#),
        starts,
        "every instance started is idle again"
    );
}
