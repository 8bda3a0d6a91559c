//! Dropping privileges inside the sandbox. Owns: the capability sets,
//! supplementary groups and the uid/gid switch, and the check that nothing
//! privileged is left. Must not: set no_new_privs or seccomp (the caller does,
//! after this, because those must come last).

use std::io;

use caps::CapSet;
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

use crate::SandboxError;

fn caps_step(step: &'static str) -> impl FnOnce(caps::errors::CapsError) -> SandboxError {
    move |e| SandboxError::Step {
        step: step.to_string(),
        source: io::Error::other(e.to_string()),
    }
}

/// Become `uid`:`gid` with no supplementary groups and no capabilities left in
/// any set (effective, permitted, inheritable, ambient, bounding).
pub(crate) fn drop_to(uid: u32, gid: u32) -> Result<(), SandboxError> {
    // Shrinking the bounding set needs CAP_SETPCAP, so it goes before the uid
    // switch; an empty bounding set keeps file capabilities and setuid-root
    // binaries from giving anything back on execve.
    caps::clear(None, CapSet::Bounding).map_err(caps_step("clear capability bounding set"))?;
    caps::clear(None, CapSet::Ambient).map_err(caps_step("clear ambient capabilities"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_step("clear inheritable capabilities"))?;
    setgroups(&[]).map_err(|e| SandboxError::step("setgroups", e))?;
    let (gid, uid) = (Gid::from_raw(gid), Uid::from_raw(uid));
    setresgid(gid, gid, gid).map_err(|e| SandboxError::step("setresgid", e))?;
    // Leaving uid 0 for good (all three ids) without SECBIT_KEEP_CAPS makes the
    // kernel clear the permitted and effective sets.
    setresuid(uid, uid, uid).map_err(|e| SandboxError::step("setresuid", e))?;
    verify_no_capabilities()
}

/// Read our own capability masks back from the kernel: a securebit or a
/// capability unknown to the `caps` crate would otherwise go unnoticed.
fn verify_no_capabilities() -> Result<(), SandboxError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| SandboxError::step("read /proc/self/status", e))?;
    let mut seen = 0;
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if !matches!(key, "CapInh" | "CapPrm" | "CapEff" | "CapBnd" | "CapAmb") {
            continue;
        }
        seen += 1;
        if u64::from_str_radix(value.trim(), 16).ok() != Some(0) {
            return Err(SandboxError::step(
                "verify capabilities are dropped",
                io::Error::other(format!("{key} is {}", value.trim())),
            ));
        }
    }
    if seen != 5 || !caps::read(None, CapSet::Effective).is_ok_and(|s| s.is_empty()) {
        return Err(SandboxError::step(
            "verify capabilities are dropped",
            io::Error::other("capability sets not readable"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_parsing_recognises_all_five_sets() {
        // Shape check of what verify_no_capabilities relies on.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let n = status
            .lines()
            .filter(|l| {
                l.split_once(':').is_some_and(|(k, _)| {
                    matches!(k, "CapInh" | "CapPrm" | "CapEff" | "CapBnd" | "CapAmb")
                })
            })
            .count();
        assert_eq!(n, 5);
    }
}
