//! The plain description of a sandbox. The daemon builds a [`SandboxSpec`]; the
//! supervisor (`thaw-init`) receives it over its control channel and calls
//! [`crate::enter`] with it. Nothing here touches the kernel: this module owns
//! the data and its validation only.

use std::path::{Component, Path, PathBuf};

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
    /// What `/proc/sys/kernel/random/boot_id` reads inside the sandbox (a
    /// UUID of this instance's own, so instances, restored ones included,
    /// never share the host's); `None` leaves the kernel's.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// A network namespace to join, as an open descriptor of the process
    /// calling [`crate::enter`] (which closes it): one prepared by the host,
    /// with the instance's own address. `None`: a new namespace with
    /// loopback only.
    #[serde(default)]
    pub join_net_fd: Option<i32>,
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

/// Why a [`SandboxSpec`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The boot id is not a UUID.
    #[error("boot id {0:?} is not a UUID")]
    BootId(String),
    #[error("Hostname {0:?} is not a valid host name")]
    Hostname(String),
    #[error("The sandbox must not run as root (uid {uid}, gid {gid})")]
    RootIdentity { uid: u32, gid: u32 },
    #[error("Root mount point {0} is not an absolute path")]
    RootMountpoint(PathBuf),
    #[error("Bind source {0} is not an absolute path")]
    BindSource(PathBuf),
    #[error("Path {0} inside the sandbox must be absolute, without `.` or `..`")]
    SandboxPath(PathBuf),
    #[error("Path {0} is reserved for a mount the sandbox makes itself")]
    ReservedPath(PathBuf),
    #[error("File mode {mode:#o} of {path} has bits beyond 0o777")]
    FileMode { path: PathBuf, mode: u32 },
    #[error("Size of the {0} tmpfs must be at least one page")]
    TmpfsSize(&'static str),
}

/// Directories whose contents the sandbox builds itself: anything put there by
/// a bind or a file would be hidden by (or collide with) those mounts.
const RESERVED: [&str; 3] = ["/dev", "/proc", "/tmp"];

/// Smallest tmpfs size accepted (one page).
const MIN_TMPFS_BYTES: u64 = 4096;

impl SandboxSpec {
    /// Check everything that can be checked without touching the kernel.
    /// [`crate::enter`] calls this before it changes anything.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(id) = &self.boot_id {
            let ok = id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
            if !ok {
                return Err(SpecError::BootId(id.clone()));
            }
        }
        if !valid_hostname(&self.hostname) {
            return Err(SpecError::Hostname(self.hostname.clone()));
        }
        if self.uid == 0 || self.gid == 0 {
            return Err(SpecError::RootIdentity {
                uid: self.uid,
                gid: self.gid,
            });
        }
        if !self.root_mountpoint.is_absolute() {
            return Err(SpecError::RootMountpoint(self.root_mountpoint.clone()));
        }
        for b in &self.binds {
            if !b.source.is_absolute() {
                return Err(SpecError::BindSource(b.source.clone()));
            }
            check_sandbox_path(&b.target)?;
        }
        for f in &self.files {
            check_sandbox_path(&f.path)?;
            if f.mode & !0o777 != 0 {
                return Err(SpecError::FileMode {
                    path: f.path.clone(),
                    mode: f.mode,
                });
            }
        }
        if self.tmp_size_bytes < MIN_TMPFS_BYTES {
            return Err(SpecError::TmpfsSize("/tmp"));
        }
        if self.shm_size_bytes < MIN_TMPFS_BYTES {
            return Err(SpecError::TmpfsSize("/dev/shm"));
        }
        Ok(())
    }
}

/// RFC 1123 host name: labels of letters, digits and hyphens, at most 64 bytes
/// in all (the kernel's limit).
fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// A path inside the sandbox: absolute, only normal components, not `/` and
/// not in a directory the sandbox mounts itself.
fn check_sandbox_path(path: &Path) -> Result<(), SpecError> {
    let mut components = path.components();
    let rooted = components.next() == Some(Component::RootDir);
    let normal = components
        .clone()
        .all(|c| matches!(c, Component::Normal(_)));
    if !rooted || !normal || components.next().is_none() {
        return Err(SpecError::SandboxPath(path.to_path_buf()));
    }
    if RESERVED.iter().any(|r| path.starts_with(r)) {
        return Err(SpecError::ReservedPath(path.to_path_buf()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SandboxSpec {
        SandboxSpec {
            instance_id: "i1".into(),
            hostname: "fn-abc.local".into(),
            uid: 1000,
            gid: 1000,
            root_mountpoint: "/var/lib/thaw/root".into(),
            binds: vec![BindMount {
                source: "/usr".into(),
                target: "/usr".into(),
                required: true,
            }],
            tmp_size_bytes: 1 << 20,
            shm_size_bytes: 1 << 20,
            files: vec![SandboxFile {
                path: "/etc/passwd".into(),
                contents: "x".into(),
                mode: 0o644,
            }],
            boot_id: None,
            join_net_fd: None,
        }
    }

    #[test]
    fn a_sane_spec_is_valid() {
        assert_eq!(spec().validate(), Ok(()));
    }

    #[test]
    fn bad_specs_are_rejected() {
        let mut s = spec();
        s.uid = 0;
        assert!(matches!(s.validate(), Err(SpecError::RootIdentity { .. })));
        let mut s = spec();
        s.hostname = "bad host".into();
        assert!(matches!(s.validate(), Err(SpecError::Hostname(_))));
        let mut s = spec();
        s.binds[0].target = "/usr/../root".into();
        assert!(matches!(s.validate(), Err(SpecError::SandboxPath(_))));
        let mut s = spec();
        s.binds[0].target = "usr".into();
        assert!(matches!(s.validate(), Err(SpecError::SandboxPath(_))));
        let mut s = spec();
        s.binds[0].target = "/".into();
        assert!(matches!(s.validate(), Err(SpecError::SandboxPath(_))));
        let mut s = spec();
        s.files[0].path = "/proc/x".into();
        assert!(matches!(s.validate(), Err(SpecError::ReservedPath(_))));
        let mut s = spec();
        s.files[0].mode = 0o4755;
        assert!(matches!(s.validate(), Err(SpecError::FileMode { .. })));
        let mut s = spec();
        s.tmp_size_bytes = 0;
        assert!(matches!(s.validate(), Err(SpecError::TmpfsSize("/tmp"))));
    }

    #[test]
    fn spec_round_trips_through_json() {
        let s = spec();
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SandboxSpec>(&text).unwrap(), s);
    }
}
