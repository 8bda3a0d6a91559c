//! Linux process sandboxes for function instances.
//!
//! Owns: namespaces (pid, mount, uts, ipc, net, cgroup), the read-only root
//! filesystem, cgroup limits (v1 and v2), seccomp, no_new_privs, capability and
//! uid drop. Must not: know about functions, HTTP or the Lambda protocol.

mod spec;

pub use spec::{BindMount, Limits, SandboxFile, SandboxSpec};
