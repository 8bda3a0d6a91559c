//! Lambda's concurrency controls through boto3 against a real `thaw
//! serve`: reserved concurrency (and its enforcement), account settings,
//! provisioned concurrency kept ready, and a restart keeping the reservation.

mod common;

use common::*;

fn run_script(d: &Daemon, phase: &str) {
    let script = functions_dir().join("../boto3/concurrency.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&d.endpoint)
        .arg(functions_dir())
        .arg(phase)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "boto3 script failed ({phase})");
    assert!(stdout.contains("checks passed"));
}

#[test]
fn boto3_concurrency_controls() {
    if !can_run("boto3_concurrency_controls") {
        return;
    }
    let has_boto3 = std::process::Command::new("python3")
        .args(["-c", "import boto3"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !has_boto3 {
        skip(
            "boto3_concurrency_controls",
            "boto3 is not installed (scripts/test.sh installs it)",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(tmp.path(), &[]);
    run_script(&d, "main");
    assert!(d.stop(), "daemon exits cleanly");
    let d2 = Daemon::start_in(tmp.path(), &[]);
    run_script(&d2, "after-restart");
}
