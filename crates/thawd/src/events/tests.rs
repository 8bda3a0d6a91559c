//! The queue with a scripted deliverer: what each outcome does, what
//! survives a reopen, the limit, destinations and the golden fixture.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::*;
use thaw_api::events::{DestinationConfig, OnTarget};

/// Answers each run from a script per function (default: success),
/// recording every run.
#[derive(Default)]
struct Script {
    answers: Mutex<HashMap<String, VecDeque<Attempt>>>,
    runs: Mutex<Vec<(String, String, String)>>,
    missing: Vec<String>,
}

impl Script {
    fn then(&self, function: &str, a: Attempt) {
        self.answers
            .lock()
            .unwrap()
            .entry(function.into())
            .or_default()
            .push_back(a);
    }
}

impl Deliver for Arc<Script> {
    async fn run(&self, ev: &QueuedEvent) -> Attempt {
        self.runs.lock().unwrap().push((
            ev.function.clone(),
            ev.request_id.clone(),
            ev.payload.clone(),
        ));
        if self.missing.contains(&ev.function) {
            return Attempt::Gone;
        }
        self.answers
            .lock()
            .unwrap()
            .get_mut(&ev.function)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Attempt::Ran {
                payload: Bytes::from_static(b"\"ok\""),
                function_error: None,
            })
    }
    fn exists(&self, key: &str) -> bool {
        !self.missing.iter().any(|m| m == key)
    }
    fn arn(&self, key: &str) -> String {
        format!("arn:aws:lambda:us-east-1:000000000000:function:{key}")
    }
}

fn quick() -> QueueConfig {
    QueueConfig {
        retry_delay: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(1),
        ..QueueConfig::default()
    }
}

fn failure() -> Attempt {
    Attempt::Ran {
        payload: Bytes::from_static(br#"{"errorMessage":"boom","errorType":"Exception"}"#),
        function_error: Some("Unhandled".into()),
    }
}

async fn settled(q: &EventQueue) {
    for _ in 0..500 {
        if q.queued() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the queue did not settle: {} left", q.queued());
}

#[tokio::test]
async fn a_success_runs_once_and_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let q = EventQueue::open(&dir.path().join("q.redb"), quick()).unwrap();
    let s = Arc::new(Script::default());
    q.start(s.clone());
    q.accept("f", "r1".into(), "{\"a\":1}".into(), None)
        .await
        .unwrap();
    settled(&q).await;
    let runs = s.runs.lock().unwrap().clone();
    assert_eq!(runs, vec![("f".into(), "r1".into(), "{\"a\":1}".into())]);
    assert!(q.view("f").unwrap().failed.is_empty());
    assert!(q
        .render_metrics()
        .contains("thaw_events_total{outcome=\"succeeded\"} 1"));
}

#[tokio::test]
async fn function_errors_are_retried_twice_then_kept_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let q = EventQueue::open(&dir.path().join("q.redb"), quick()).unwrap();
    let s = Arc::new(Script::default());
    for _ in 0..3 {
        s.then("f", failure());
    }
    q.start(s.clone());
    q.accept("f", "r1".into(), "{}".into(), None).await.unwrap();
    settled(&q).await;
    assert_eq!(s.runs.lock().unwrap().len(), 3, "one run and two retries");
    let v = q.view("f").unwrap();
    assert_eq!(v.failed.len(), 1);
    let r = &v.failed[0];
    assert_eq!(r.request_context.condition, CONDITION_RETRIES_EXHAUSTED);
    assert_eq!(r.request_context.request_id, "r1");
    assert_eq!(r.request_context.approximate_invoke_count, 3);
    assert_eq!(
        r.response_context
            .as_ref()
            .unwrap()
            .function_error
            .as_deref(),
        Some("Unhandled")
    );
    assert_eq!(r.response_payload.as_ref().unwrap()["errorMessage"], "boom");
}

#[tokio::test]
async fn a_retry_that_succeeds_is_not_failed_and_retries_follow_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let q = EventQueue::open(&dir.path().join("q.redb"), quick()).unwrap();
    let s = Arc::new(Script::default());
    s.then("f", failure());
    s.then("g", failure());
    q.put_invoke_config(
        "g",
        InvokeConfig {
            config: FunctionEventInvokeConfig {
                maximum_retry_attempts: Some(0),
                ..Default::default()
            },
            on_success: None,
            on_failure: None,
        },
    )
    .await
    .unwrap();
    q.start(s.clone());
    q.accept("f", "r1".into(), "{}".into(), None).await.unwrap();
    q.accept("g", "r2".into(), "{}".into(), None).await.unwrap();
    settled(&q).await;
    let runs = s.runs.lock().unwrap().clone();
    assert_eq!(runs.iter().filter(|r| r.0 == "f").count(), 2);
    assert_eq!(runs.iter().filter(|r| r.0 == "g").count(), 1, "no retry");
    assert!(q.view("f").unwrap().failed.is_empty());
    assert_eq!(q.view("g").unwrap().failed.len(), 1);
}

#[tokio::test]
async fn not_run_is_deferred_without_counting_as_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let q = EventQueue::open(&dir.path().join("q.redb"), quick()).unwrap();
    let s = Arc::new(Script::default());
    for _ in 0..5 {
        s.then("f", Attempt::NotRun("throttled".into()));
    }
    s.then("f", failure());
    s.then("f", failure());
    q.start(s.clone());
    q.accept("f", "r1".into(), "{}".into(), None).await.unwrap();
    settled(&q).await;
    // Five deferrals, two failed runs, then the third run succeeds.
    assert_eq!(s.runs.lock().unwrap().len(), 8);
    assert!(q.view("f").unwrap().failed.is_empty());
}

#[tokio::test]
async fn destinations_get_lambdas_record_and_a_missing_one_falls_back_to_failed_events() {
    let dir = tempfile::tempdir().unwrap();
    let q = EventQueue::open(&dir.path().join("q.redb"), quick()).unwrap();
    let s = Arc::new(Script {
        missing: vec!["nowhere".into()],
        ..Default::default()
    });
    let dests = |ok: &str, bad: &str| InvokeConfig {
        config: FunctionEventInvokeConfig {
            maximum_retry_attempts: Some(0),
            destination_config: Some(DestinationConfig {
                on_success: Some(OnTarget {
                    destination: Some(s.arn(ok)),
                }),
                on_failure: Some(OnTarget {
                    destination: Some(s.arn(bad)),
                }),
            }),
            ..Default::default()
        },
        on_success: Some(ok.into()),
        on_failure: Some(bad.into()),
    };
    q.put_invoke_config("f", dests("okd", "faild"))
        .await
        .unwrap();
    q.put_invoke_config("g", dests("okd", "nowhere"))
        .await
        .unwrap();
    s.then("f", failure());
    s.then("g", failure());
    q.start(s.clone());
    q.accept("f", "r-ok".into(), "{\"n\":1}".into(), None)
        .await
        .unwrap();
    q.accept("f", "r-bad".into(), "{\"n\":2}".into(), None)
        .await
        .unwrap();
    q.accept("g", "r-g".into(), "{\"n\":3}".into(), None)
        .await
        .unwrap();
    settled(&q).await;
    let runs = s.runs.lock().unwrap().clone();
    let records = |f: &str| -> Vec<DestinationRecord> {
        runs.iter()
            .filter(|r| r.0 == f)
            .map(|r| serde_json::from_str(&r.2).unwrap())
            .collect()
    };
    let failed = records("faild");
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].request_context.condition,
        CONDITION_RETRIES_EXHAUSTED
    );
    assert!(failed[0]
        .request_context
        .function_arn
        .ends_with("function:f:$LATEST"));
    let ok = records("okd");
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].request_context.condition, CONDITION_SUCCESS);
    assert_eq!(ok[0].response_payload, Some(serde_json::json!("ok")));
    // Which of f's two events failed is the script's order; both are
    // accounted for.
    let ids: Vec<_> = [&ok[0], &failed[0]]
        .iter()
        .map(|r| r.request_context.request_id.clone())
        .collect();
    assert!(ids.contains(&"r-ok".to_string()) && ids.contains(&"r-bad".to_string()));
    // g's failure destination does not exist: kept as failed.
    assert_eq!(q.view("g").unwrap().failed.len(), 1);
    assert!(q.view("f").unwrap().failed.is_empty());
}

#[tokio::test]
async fn events_survive_a_reopen_and_a_full_queue_refuses_before_accepting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let config = QueueConfig {
        max_queued: 3,
        ..quick()
    };
    {
        let q = EventQueue::open(&path, config).unwrap();
        for i in 0..3 {
            q.accept("f", format!("r{i}"), "{}".into(), None)
                .await
                .unwrap();
        }
        assert!(matches!(
            q.accept("f", "r3".into(), "{}".into(), None).await,
            Err(QueueError::Full(3))
        ));
        q.close();
    }
    // The writer thread lets go of the database when its channel closes.
    let q = loop {
        match EventQueue::open(&path, config) {
            Ok(q) => break q,
            Err(QueueError::Db(redb::Error::DatabaseAlreadyOpen)) => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(q.queued(), 3);
    let s = Arc::new(Script::default());
    q.start(s.clone());
    settled(&q).await;
    let mut ids: Vec<_> = s.runs.lock().unwrap().iter().map(|r| r.1.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["r0", "r1", "r2"]);
}

#[tokio::test]
async fn a_deleted_function_takes_its_events_and_configuration_along() {
    let dir = tempfile::tempdir().unwrap();
    let q = EventQueue::open(&dir.path().join("q.redb"), quick()).unwrap();
    s_config(&q, "f").await;
    for i in 0..4 {
        q.accept("f", format!("r{i}"), "{}".into(), None)
            .await
            .unwrap();
    }
    q.accept("g", "g1".into(), "{}".into(), None).await.unwrap();
    assert_eq!(q.remove_function("f").await.unwrap(), 4);
    assert_eq!(q.queued(), 1);
    assert!(q.invoke_config("f").unwrap().is_none());
    let s = Arc::new(Script::default());
    q.start(s.clone());
    settled(&q).await;
    assert_eq!(s.runs.lock().unwrap().len(), 1);
}

async fn s_config(q: &EventQueue, f: &str) {
    q.put_invoke_config(
        f,
        InvokeConfig {
            config: FunctionEventInvokeConfig::default(),
            on_success: None,
            on_failure: None,
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn an_event_older_than_its_maximum_age_fails_with_event_age_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let config = QueueConfig {
        retry_delay: Duration::from_secs(120),
        ..quick()
    };
    let q = EventQueue::open(&dir.path().join("q.redb"), config).unwrap();
    q.put_invoke_config(
        "f",
        InvokeConfig {
            config: FunctionEventInvokeConfig {
                maximum_event_age_in_seconds: Some(60),
                ..Default::default()
            },
            on_success: None,
            on_failure: None,
        },
    )
    .await
    .unwrap();
    let s = Arc::new(Script::default());
    s.then("f", failure());
    q.start(s.clone());
    q.accept("f", "r1".into(), "{}".into(), None).await.unwrap();
    settled(&q).await;
    // Its retry would come after 120 s, past its 60 s: failed at once.
    let v = q.view("f").unwrap();
    assert_eq!(v.failed.len(), 1);
    assert_eq!(
        v.failed[0].request_context.condition,
        CONDITION_EVENT_AGE_EXCEEDED
    );
    assert_eq!(
        v.failed[0].response_payload.as_ref().unwrap()["errorMessage"],
        "boom"
    );
}

fn golden() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events/v1.redb")
}

/// A queue of format 1 (two events of `f`, one failed event of `f`, a
/// configuration of `f`) written by the first daemon with a queue is read
/// by this one.
#[tokio::test]
async fn reads_the_format_1_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    std::fs::copy(golden(), &path).unwrap();
    let q = EventQueue::open(&path, quick()).unwrap();
    assert_eq!(q.queued(), 2);
    let c = q.invoke_config("f").unwrap().unwrap();
    assert_eq!(c.config.maximum_retry_attempts, Some(1));
    assert_eq!(c.on_failure.as_deref(), Some("dlq"));
    let v = q.view("f").unwrap();
    assert_eq!(v.failed.len(), 1);
    assert_eq!(v.failed[0].request_context.request_id, "golden-failed");
    // The queued events as written (not run: their age depends on when the
    // fixture was made).
    let mut events: Vec<(String, String)> = (0..4)
        .filter_map(|seq| q.read(seq).unwrap())
        .map(|e| (e.request_id, e.payload))
        .collect();
    events.sort();
    assert_eq!(
        events,
        vec![
            ("golden-1".into(), "{\"n\":1}".into()),
            ("golden-2".into(), "{\"n\":2}".into()),
        ]
    );
}

/// Writes the fixture (run by hand when the format changes:
/// `cargo test -p thawd write_events_fixture -- --ignored`).
#[tokio::test]
#[ignore]
async fn write_events_fixture() {
    let path = golden();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);
    let q = EventQueue::open(&path, quick()).unwrap();
    q.put_invoke_config(
        "f",
        InvokeConfig {
            config: FunctionEventInvokeConfig {
                maximum_retry_attempts: Some(1),
                ..Default::default()
            },
            on_success: None,
            on_failure: Some("dlq".into()),
        },
    )
    .await
    .unwrap();
    let record = DestinationRecord {
        version: "1.0".into(),
        timestamp: rfc3339(0),
        request_context: RequestContext {
            request_id: "golden-failed".into(),
            function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST".into(),
            condition: CONDITION_RETRIES_EXHAUSTED.into(),
            approximate_invoke_count: 2,
        },
        request_payload: serde_json::json!({"n": 0}),
        response_context: None,
        response_payload: None,
    };
    q.commit(vec![Op::Add(QueuedEvent {
        v: RECORD_VERSION,
        request_id: "golden-failed".into(),
        function: "f".into(),
        payload: "{\"n\":0}".into(),
        client_context: None,
        accepted_ms: 0,
        runs: 2,
        deferrals: 0,
        next_ms: 0,
        last_error: None,
        hops: 0,
        qualifier: None,
    })])
    .await
    .unwrap();
    q.commit(vec![Op::Fail(
        0,
        "f".into(),
        FailedEvent {
            v: RECORD_VERSION,
            record,
        },
    )])
    .await
    .unwrap();
    for n in 1..=2 {
        q.accept("f", format!("golden-{n}"), format!("{{\"n\":{n}}}"), None)
            .await
            .unwrap();
    }
    q.close();
}

#[tokio::test]
async fn an_accept_whose_caller_goes_away_still_runs_and_frees_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let config = QueueConfig {
        max_queued: 1,
        ..quick()
    };
    let q = EventQueue::open(&dir.path().join("q.redb"), config).unwrap();
    let s = Arc::new(Script::default());
    q.start(s.clone());
    // The caller gives up at once (a client that hung up).
    let _ = tokio::time::timeout(
        Duration::ZERO,
        q.accept("f", "r1".into(), "{}".into(), None),
    )
    .await;
    // (`timeout` polls the accept once, which hands it to its own task.)
    for _ in 0..500 {
        if !s.runs.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    settled(&q).await;
    assert_eq!(s.runs.lock().unwrap().len(), 1, "written, so run once");
    // Its place is free again.
    q.accept("f", "r2".into(), "{}".into(), None).await.unwrap();
    settled(&q).await;
}

#[tokio::test]
async fn a_loop_of_destinations_stops() {
    let dir = tempfile::tempdir().unwrap();
    let q = EventQueue::open(&dir.path().join("q.redb"), quick()).unwrap();
    let s = Arc::new(Script::default());
    for (from, to) in [("f", "g"), ("g", "f")] {
        q.put_invoke_config(
            from,
            InvokeConfig {
                config: FunctionEventInvokeConfig::default(),
                on_success: Some(to.into()),
                on_failure: None,
            },
        )
        .await
        .unwrap();
    }
    q.start(s.clone());
    q.accept("f", "r1".into(), "{}".into(), None).await.unwrap();
    settled(&q).await;
    let runs = s.runs.lock().unwrap().len() as u32;
    assert_eq!(runs, MAX_HOPS + 1, "the event and {MAX_HOPS} records");
}

/// Holds every event of `slow` until released; counts how many run at
/// once per function.
#[derive(Default)]
struct Gate {
    open: tokio::sync::Notify,
    released: std::sync::atomic::AtomicBool,
    running: Mutex<HashMap<String, usize>>,
    most: Mutex<HashMap<String, usize>>,
    done: Mutex<Vec<String>>,
}

impl Deliver for Arc<Gate> {
    async fn run(&self, ev: &QueuedEvent) -> Attempt {
        {
            let mut running = self.running.lock().unwrap();
            let n = running.entry(ev.function.clone()).or_default();
            *n += 1;
            let mut most = self.most.lock().unwrap();
            let m = most.entry(ev.function.clone()).or_default();
            *m = (*m).max(*n);
        }
        if ev.function == "slow" {
            while !self.released.load(Ordering::SeqCst) {
                let wait = self.open.notified();
                if self.released.load(Ordering::SeqCst) {
                    break;
                }
                wait.await;
            }
        }
        *self.running.lock().unwrap().get_mut(&ev.function).unwrap() -= 1;
        self.done.lock().unwrap().push(ev.function.clone());
        Attempt::Ran {
            payload: Bytes::from_static(b"\"ok\""),
            function_error: None,
        }
    }
    fn exists(&self, _: &str) -> bool {
        true
    }
    fn arn(&self, key: &str) -> String {
        format!("arn:aws:lambda:us-east-1:000000000000:function:{key}")
    }
}

/// A function with many slow events holds at most its share of the
/// dispatcher's slots: another function's event runs meanwhile.
#[tokio::test]
async fn one_function_cannot_hold_every_slot() {
    let dir = tempfile::tempdir().unwrap();
    let config = QueueConfig {
        concurrency: 4,
        per_function_concurrency: 2,
        ..quick()
    };
    let q = EventQueue::open(&dir.path().join("q.redb"), config).unwrap();
    let gate = Arc::new(Gate::default());
    q.start(gate.clone());
    for i in 0..6 {
        q.accept("slow", format!("s{i}"), "{}".into(), None)
            .await
            .unwrap();
    }
    q.accept("quick", "q1".into(), "{}".into(), None)
        .await
        .unwrap();
    // The quick function's event finishes while the slow ones are held.
    for _ in 0..500 {
        if gate.done.lock().unwrap().iter().any(|f| f == "quick") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        gate.done.lock().unwrap().iter().any(|f| f == "quick"),
        "the quick function's event waited behind the slow ones"
    );
    assert_eq!(gate.running.lock().unwrap()["slow"], 2);
    gate.released.store(true, Ordering::SeqCst);
    gate.open.notify_waiters();
    settled(&q).await;
    assert_eq!(
        gate.most.lock().unwrap()["slow"],
        2,
        "at most its share at once"
    );
    assert_eq!(gate.done.lock().unwrap().len(), 7);
}

/// An event sent to an alias follows the alias's configuration, not
/// `$LATEST`'s; the function's removal takes every configuration.
#[tokio::test]
async fn a_qualified_event_follows_its_qualifiers_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let q = EventQueue::open(&dir.path().join("q.redb"), quick()).unwrap();
    let s = Arc::new(Script::default());
    for _ in 0..4 {
        s.then("f", failure());
    }
    let retries = |n: u32| InvokeConfig {
        config: FunctionEventInvokeConfig {
            maximum_retry_attempts: Some(n),
            ..Default::default()
        },
        on_success: None,
        on_failure: None,
    };
    q.put_invoke_config("f", retries(2)).await.unwrap();
    q.put_invoke_config(&config_key("f", Some("live")), retries(0))
        .await
        .unwrap();
    assert_eq!(config_key("f", Some("$LATEST")), "f");
    let listed: Vec<Option<String>> = q
        .invoke_configs("f")
        .unwrap()
        .into_iter()
        .map(|(q, _)| q)
        .collect();
    assert_eq!(listed, [None, Some("live".to_string())]);
    q.start(s.clone());
    q.accept_qualified("f", Some("live".into()), "r-live".into(), "{}".into(), None)
        .await
        .unwrap();
    settled(&q).await;
    assert_eq!(
        s.runs.lock().unwrap().len(),
        1,
        "the alias's config: no retry"
    );
    q.accept("f", "r-latest".into(), "{}".into(), None)
        .await
        .unwrap();
    settled(&q).await;
    assert_eq!(
        s.runs.lock().unwrap().len(),
        4,
        "$LATEST's config: two retries"
    );
    q.remove_function("f").await.unwrap();
    assert!(q.invoke_configs("f").unwrap().is_empty());
}
