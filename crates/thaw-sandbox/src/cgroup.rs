//! cgroups for sandboxes (v1 and v2). CONTRACT (implementation by the sandbox helper):

use std::path::PathBuf;

use crate::spec::Limits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup operation failed: {what} ({path})")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("No usable cgroup hierarchy: {0}")]
    Unsupported(String),
}

/// A parent cgroup (e.g. `thaw/<daemon-id>`) under which instance cgroups live.
pub struct CgroupParent {}

impl CgroupParent {
    /// Detect v1/v2 and create the parent in every needed controller.
    pub fn open(_name: &str) -> Result<CgroupParent, CgroupError> {
        todo!()
    }
    pub fn version(&self) -> CgroupVersion {
        todo!()
    }
    /// Kill and remove every child cgroup left over (daemon start-up).
    pub fn cleanup_stale(&self) -> Result<usize, CgroupError> {
        todo!()
    }
    /// Create a child cgroup `name` with `limits` applied.
    pub fn create(&self, _name: &str, _limits: &Limits) -> Result<Cgroup, CgroupError> {
        todo!()
    }
}

/// One instance's cgroup.
pub struct Cgroup {}

impl Cgroup {
    pub fn add_pid(&self, _pid: u32) -> Result<(), CgroupError> {
        todo!()
    }
    /// Change limits at run time (used later to enlarge a running sandbox).
    pub fn set_limits(&self, _limits: &Limits) -> Result<(), CgroupError> {
        todo!()
    }
    /// How many times the kernel OOM-killed a task of this cgroup.
    pub fn oom_kills(&self) -> u64 {
        todo!()
    }
    /// Host pids currently in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        todo!()
    }
    /// SIGKILL every task, wait (bounded) until empty, remove the directories.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        todo!()
    }
}
