//! The daemon's HTTP server against slow and idle clients, with raw TCP on
//! loopback: a client that never finishes its headers is disconnected, one
//! that never finishes its body gets 408 and is disconnected, an idle
//! keep-alive connection is closed, and at most `--http-max-connections`
//! connections are served at once. Every wait is bounded.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{can_run, Daemon};

/// The daemon's timeouts in these tests, seconds.
const TIMEOUT_S: u64 = 2;

fn daemon(max_connections: u32) -> Daemon {
    let t = TIMEOUT_S.to_string();
    let m = max_connections.to_string();
    Daemon::start(&[
        "--http-header-timeout-secs",
        &t,
        "--http-body-timeout-secs",
        &t,
        "--http-max-connections",
        &m,
    ])
}

fn connect(d: &Daemon) -> TcpStream {
    let addr = d.endpoint.trim_start_matches("http://");
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// Reads until the server closes the connection (or `limit` passes: then
/// panics). Returns what it sent and when it closed.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            t0.elapsed() < limit,
            "still connected after {limit:?}; got {:?}",
            String::from_utf8_lossy(&got)
        );
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), t0.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&got).into_owned(), t0.elapsed())
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Bounds: the server must act after its timeout, and well before twice it.
fn bound() -> Duration {
    Duration::from_secs(TIMEOUT_S * 2 + 3)
}

#[test]
fn slow_and_idle_clients_are_disconnected() {
    if !can_run("slow_and_idle_clients_are_disconnected") {
        return;
    }
    let d = daemon(64);

    // Headers that never end.
    let mut s = connect(&d);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .unwrap();
    let (got, after) = read_until_closed(&mut s, bound());
    assert!(
        after >= Duration::from_millis(TIMEOUT_S * 1000 - 300),
        "closed too early ({after:?}): {got}"
    );
    assert!(!got.contains("200 OK"), "{got}");

    // A body that never ends: 408 in Lambda's shape, then the connection closes.
    // (Signed for the 1000 bytes it announces, of which it sends 15.)
    let mut s = connect(&d);
    let url = format!("{}/2015-03-31/functions", d.endpoint);
    let whole = format!("{{\"FunctionName\"{}", " ".repeat(1000 - 15));
    let mut head = String::from("POST /2015-03-31/functions HTTP/1.1\r\nContent-Length: 1000\r\n");
    for (k, v) in common::signed_headers("POST", &url, whole.as_bytes()).iter() {
        head.push_str(&format!("{}: {}\r\n", k, v.to_str().unwrap()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&whole.as_bytes()[..15]).unwrap();
    let (got, after) = read_until_closed(&mut s, bound());
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(
        got.to_ascii_lowercase()
            .contains("x-amzn-errortype: requesttimeoutexception"),
        "{got}"
    );
    assert!(got.contains(r#""Type":"User""#), "{got}");
    assert!(
        after >= Duration::from_millis(TIMEOUT_S * 1000 - 300),
        "{after:?}"
    );

    // Idle keep-alive: one request answered, then closed for idling.
    let mut s = connect(&d);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (got, after) = read_until_closed(&mut s, bound());
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        after >= Duration::from_millis(TIMEOUT_S * 1000 - 300),
        "the idle connection was closed at once ({after:?}): {got}"
    );

    // The daemon still serves.
    let c = d.client();
    assert!(c.list_all_functions().unwrap().is_empty());
}

#[test]
fn connections_beyond_the_limit_wait_for_a_free_slot() {
    if !can_run("connections_beyond_the_limit_wait_for_a_free_slot") {
        return;
    }
    let d = daemon(2);
    let t0 = Instant::now();
    // Two silent connections take both slots.
    let _a = connect(&d);
    let _b = connect(&d);
    std::thread::sleep(Duration::from_millis(300));
    let mut c = connect(&d);
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    // Not served while the slots are taken...
    let early = c.read(&mut buf);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "served beyond the connection limit: {early:?}"
    );
    // ...and served once the silent ones time out.
    let (got, _) = read_until_closed(&mut c, bound());
    let waited = t0.elapsed();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        waited >= Duration::from_millis(TIMEOUT_S * 1000 - 300),
        "answered after {waited:?}"
    );
}
