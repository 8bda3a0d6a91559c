//! The two-minute soak (`thaw bench soak --seconds 120`): mixed traffic
//! against a real `thaw serve` with the daemon's memory, descriptors,
//! threads, cgroups, processes and disk flat (slopes within tolerance after
//! a warm-up), no request failed, and no instance cgroup left after it
//! stops. The documented 30-minute run is `thaw bench soak` (see
//! docs/reliability.md).

mod common;

use std::process::Command;

use common::can_run;

#[test]
fn two_minutes_of_mixed_traffic_leave_the_daemon_flat() {
    if !can_run("two_minutes_of_mixed_traffic_leave_the_daemon_flat") {
        return;
    }
    let out = tempfile::NamedTempFile::new().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args([
            "bench",
            "soak",
            "--seconds",
            "120",
            "--burst",
            "10",
            "--out",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "the soak failed");
    assert!(stdout.contains("soak passed"), "{stdout}");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path()).unwrap()).unwrap();
    assert_eq!(doc["failed"], 0);
    assert!(doc["ok"].as_u64().unwrap() > 300, "{}", doc["ok"]);
    assert!(doc["samples"].as_array().unwrap().len() >= 10);
    assert!(doc["series"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["flat"] == true));
}
