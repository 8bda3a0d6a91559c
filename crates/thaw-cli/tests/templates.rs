//! Templates in the daemon: every new instance of a function revision is
//! cloned from one template per host; a template that dies is rebuilt and
//! the instance still starts from the snapshot; a function idle past its
//! keep-alive holds nothing at all (no instance, no standby sandbox, no
//! template: no memory), and its next call builds them again.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{can_run, deploy, instance_cgroups, invoke, metric, Daemon};
use serde_json::json;
use thaw_api::StartKind;

/// The templates' cgroups of the daemon (memory controller) and the pids
/// in each.
fn template_cgroups(d: &Daemon) -> Vec<(PathBuf, Vec<u32>)> {
    let parent = common::cgroup_parent_of(&d.data_dir);
    let dir = PathBuf::from("/sys/fs/cgroup/memory").join(parent);
    let dir = if dir.is_dir() {
        dir
    } else {
        PathBuf::from("/sys/fs/cgroup").join(common::cgroup_parent_of(&d.data_dir))
    };
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("template-"))
        .map(|e| {
            let pids = std::fs::read_to_string(e.path().join("cgroup.procs"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            (e.path(), pids)
        })
        .collect()
}

fn new_instance(c: &thaw_api::Client, name: &str) -> serde_json::Value {
    c.retire_instances(name).unwrap();
    let (r, v) = invoke(c, name, json!({"action": "state"}));
    assert_eq!(r.start, Some(StartKind::Restored), "{v}");
    assert_eq!(
        r.memory.as_ref().map(|m| m.mode.as_str()),
        Some("clone"),
        "{v}"
    );
    v
}

#[test]
fn a_dead_template_is_rebuilt() {
    if !can_run("a_dead_template_is_rebuilt") {
        return;
    }
    let d = Daemon::start(&[]);
    let c = d.client();
    deploy(&c, "tpl", "py-snap", "python3.11", "app.handler", 256, 10);
    c.create_snapshot("tpl", b"{}").expect("snapshot");
    let first = new_instance(&c, "tpl");
    let second = new_instance(&c, "tpl");
    assert_eq!(first["init_id"], second["init_id"], "the same snapshot");
    assert_ne!(first["hostname"], second["hostname"], "two sandboxes");
    let templates = template_cgroups(&d);
    assert_eq!(templates.len(), 1, "one template: {templates:?}");
    let pids = templates[0].1.clone();
    assert_eq!(pids.len(), 1, "the template is one process: {pids:?}");
    assert_eq!(metric(&d, "thaw_templates{function=\"tpl\"}"), 1.0);

    // Kill the template: new instances are still made from the snapshot
    // (the standby's clone was made before; the next ones by a new template).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for _ in 0..3 {
        let again = new_instance(&c, "tpl");
        assert_eq!(again["init_id"], first["init_id"]);
    }
    let t0 = Instant::now();
    loop {
        let templates = template_cgroups(&d);
        if templates.len() == 1 && templates[0].1.len() == 1 && templates[0].1 != pids {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no new template: {templates:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&d, "thaw_templates{function=\"tpl\"}"), 1.0);
}

#[test]
fn an_idle_function_scales_to_zero() {
    if !can_run("an_idle_function_scales_to_zero") {
        return;
    }
    let d = Daemon::start(&["--keep-alive-secs", "1"]);
    let c = d.client();
    deploy(&c, "zero", "py-snap", "python3.11", "app.handler", 256, 10);
    c.create_snapshot("zero", b"{}").expect("snapshot");
    let (r, v) = invoke(&c, "zero", json!({"action": "state"}));
    assert_eq!(r.start, Some(StartKind::Restored), "{v}");
    assert!(!template_cgroups(&d).is_empty(), "a template while in use");
    let t0 = Instant::now();
    // No cgroup at all under the daemon's parent: no idle instance, no
    // standby sandbox, no template; so no memory charged to the function.
    while !instance_cgroups(&d.data_dir).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "still held after the keep-alive: {:?}",
            instance_cgroups(&d.data_dir)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let parent = common::cgroup_parent_of(&d.data_dir);
    let usage = std::fs::read_to_string(
        PathBuf::from("/sys/fs/cgroup/memory")
            .join(&parent)
            .join("memory.usage_in_bytes"),
    )
    .ok()
    .and_then(|s| s.trim().parse::<u64>().ok());
    eprintln!("memory charged to the daemon's cgroups when idle: {usage:?} bytes");
    if let Some(usage) = usage {
        assert!(usage < 1 << 20, "{usage} bytes still charged");
    }
    assert_eq!(metric(&d, "thaw_templates{function=\"zero\"}"), 0.0);
    // And it comes back.
    let (r, v) = invoke(&c, "zero", json!({"action": "state"}));
    assert_eq!(r.start, Some(StartKind::Restored), "{v}");
    assert_eq!(v["big"], 300000);
}
