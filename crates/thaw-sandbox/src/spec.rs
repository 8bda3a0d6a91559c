//! The plain description of a sandbox. The daemon builds a [`SandboxSpec`]; the
//! supervisor (`thaw-init`) receives it over its control channel and calls
//! [`crate::enter`] with it. Nothing here touches the kernel.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything needed to build one instance's isolation, as plain data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Unique id of the instance (also used in the cgroup name by the daemon).
    pub instance_id: String,
    /// Hostname the instance sees (its own UTS namespace).
    pub hostname: String,
    /// Non-root uid and gid the instance runs as after setup.
    pub uid: u32,
    pub gid: u32,
    /// An empty host directory used as the mount point of the new root. Mounts
    /// are made inside the sandbox's private mount namespace only, so the host
    /// never sees them and nothing is left behind when the sandbox dies.
    pub root_mountpoint: PathBuf,
    /// Host paths bind-mounted read-only into the sandbox.
    pub binds: Vec<BindMount>,
    /// Size limit of the private `/tmp` tmpfs, in bytes.
    pub tmp_size_bytes: u64,
    /// Size limit of the private `/dev/shm` tmpfs, in bytes.
    pub shm_size_bytes: u64,
    /// Extra small files written into the (otherwise read-only) root before it is
    /// sealed, e.g. `/etc/passwd`, `/etc/hosts`. Paths are absolute inside the sandbox.
    pub files: Vec<SandboxFile>,
}

/// A read-only bind mount of a host path at a path inside the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
    /// When false, a missing `source` is skipped instead of failing setup.
    pub required: bool,
}

/// A small file created inside the sandbox root during setup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxFile {
    pub path: PathBuf,
    pub contents: String,
    pub mode: u32,
}

/// Resource limits enforced by the instance's cgroup.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    /// Hard memory limit (the function's MemorySize), bytes. No swap on top.
    pub memory_bytes: u64,
    /// Relative CPU weight (cgroup v1 `cpu.shares` scale: 1024 = one default share).
    pub cpu_shares: u64,
    /// Maximum number of tasks (processes + threads).
    pub pids_max: u64,
}
