//! Linux process sandboxes for function instances.
//!
//! Owns: namespaces (pid, mount, uts, ipc, net, cgroup), the read-only root
//! filesystem, cgroup limits (v1 and v2), seccomp, no_new_privs, capability and
//! uid drop. Must not: know about functions, HTTP or the Lambda protocol.

mod cgroup;
mod spec;

pub use cgroup::{Cgroup, CgroupError, CgroupParent, CgroupVersion};
pub use spec::{BindMount, Limits, SandboxFile, SandboxSpec};

/// Errors of building a sandbox; the variant names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("Sandbox setup step failed: {step}")]
    Step {
        step: String,
        #[source]
        source: std::io::Error,
    },
}

/// Enter a new sandbox described by `spec`. CONTRACT:
///
/// - Must be called while the process is single-threaded and running as root.
/// - Creates new mount, uts, ipc, net, cgroup and pid namespaces and forks. The
///   parent closes every fd >= 3, waits for the child and exits the process with
///   the child's status (it never returns). The child (PID 1 of the new pid
///   namespace, with PR_SET_PDEATHSIG=SIGKILL so killing the parent kills the
///   whole sandbox) builds the read-only root filesystem, sets the hostname,
///   brings up loopback, sets rlimits, drops all capabilities, switches to
///   `spec.uid`/`spec.gid`, sets no_new_privs, installs the seccomp filter and
///   returns `Ok(())`. File descriptors other than 0-2 are kept as they were.
pub fn enter(_spec: &SandboxSpec) -> Result<(), SandboxError> {
    todo!("sandbox helper")
}
