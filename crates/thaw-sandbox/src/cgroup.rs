//! cgroups for sandboxes (v1 and v2), driven from the host side. Owns: the
//! parent cgroup of a daemon, one child cgroup per instance, their limits,
//! OOM accounting and teardown. Must not: decide limits (the daemon does) or
//! run inside the sandbox.
//!
//! Layout, relative to each hierarchy root (`/sys/fs/cgroup` on v2,
//! `/sys/fs/cgroup/{memory,cpu,pids}` on v1):
//!
//! ```text
//! <parent name, e.g. thaw/3f2a9c01b2d4>/<instance name>
//! ```
//!
//! Nothing is removed implicitly: dropping a [`Cgroup`] leaves it alone, and
//! [`Cgroup::destroy`] (idempotent) kills its tasks and removes it.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::spec::Limits;
use crate::sys;

/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Controllers the sandbox needs.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// How long [`Cgroup::destroy`] keeps killing before it gives up.
const KILL_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an `rmdir` may keep failing with EBUSY (the kernel finishing the
/// exit of the last task) before [`Cgroup::destroy`] gives up.
const RMDIR_TIMEOUT: Duration = Duration::from_secs(1);

/// Which cgroup interface the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller.
    V1,
    /// The unified hierarchy.
    V2,
}

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("Cgroup operation failed: {what} ({path})")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("No usable cgroup hierarchy: {0}")]
    Unsupported(String),
    #[error("Invalid cgroup name {0:?}")]
    InvalidName(String),
    #[error("Cgroup {path} still has {remaining} task(s) after SIGKILL")]
    NotEmpty { path: PathBuf, remaining: usize },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The directories of one cgroup: one per controller on v1, one on v2.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dirs {
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
    },
    V2(PathBuf),
}

impl Dirs {
    fn at(version: CgroupVersion, root: &Path, rel: &Path) -> Dirs {
        match version {
            CgroupVersion::V1 => Dirs::V1 {
                memory: root.join("memory").join(rel),
                cpu: root.join("cpu").join(rel),
                pids: root.join("pids").join(rel),
            },
            CgroupVersion::V2 => Dirs::V2(root.join(rel)),
        }
    }

    fn all(&self) -> Vec<&Path> {
        match self {
            Dirs::V1 { memory, cpu, pids } => vec![memory, cpu, pids],
            Dirs::V2(dir) => vec![dir],
        }
    }

    fn memory(&self) -> &Path {
        match self {
            Dirs::V1 { memory, .. } => memory,
            Dirs::V2(dir) => dir,
        }
    }

    fn version(&self) -> CgroupVersion {
        match self {
            Dirs::V1 { .. } => CgroupVersion::V1,
            Dirs::V2(_) => CgroupVersion::V2,
        }
    }
}

/// A parent cgroup (e.g. `thaw/<daemon-id>`) under which instance cgroups live.
#[derive(Debug)]
pub struct CgroupParent {
    root: PathBuf,
    name: PathBuf,
    dirs: Dirs,
}

impl CgroupParent {
    /// Detect v1/v2 and create the parent in every needed controller. `name`
    /// is a relative path such as `thaw/3f2a9c01b2d4`; missing levels are
    /// created. On v2 the memory, cpu and pids controllers are enabled in the
    /// `cgroup.subtree_control` of the root and of every level down to the
    /// parent itself.
    pub fn open(name: &str) -> Result<CgroupParent, CgroupError> {
        Self::open_in(Path::new(CGROUP_ROOT), name)
    }

    fn open_in(root: &Path, name: &str) -> Result<CgroupParent, CgroupError> {
        let rel = Path::new(name);
        let valid = !name.is_empty()
            && rel.components().all(
                |c| matches!(c, Component::Normal(s) if s.to_str().is_some_and(valid_component)),
            );
        if !valid {
            return Err(CgroupError::InvalidName(name.to_string()));
        }
        let version = detect(root)?;
        let dirs = Dirs::at(version, root, rel);
        match version {
            CgroupVersion::V1 => {
                for dir in dirs.all() {
                    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
                }
            }
            CgroupVersion::V2 => {
                let mut at = root.to_path_buf();
                enable_controllers(&at)?;
                for part in rel.components() {
                    at.push(part);
                    create_dir_if_missing(&at)?;
                    enable_controllers(&at)?;
                }
            }
        }
        tracing::debug!(?version, parent = name, "cgroup parent ready");
        Ok(CgroupParent {
            root: root.to_path_buf(),
            name: rel.to_path_buf(),
            dirs,
        })
    }

    /// Which interface this host offers.
    pub fn version(&self) -> CgroupVersion {
        self.dirs.version()
    }

    /// The parent's path relative to the hierarchy root, e.g. `thaw/3f2a9c01b2d4`.
    pub fn path(&self) -> &Path {
        &self.name
    }

    /// The parent's directories: one per controller on v1, one on v2.
    pub fn directories(&self) -> Vec<PathBuf> {
        self.dirs.all().into_iter().map(Path::to_path_buf).collect()
    }

    /// Kill and remove every child cgroup left over (daemon start-up).
    /// Returns how many were removed.
    pub fn cleanup_stale(&self) -> Result<usize, CgroupError> {
        let mut names = BTreeSet::new();
        for dir in self.dirs.all() {
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("list children", dir)(e)),
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    if let Some(n) = entry.file_name().to_str() {
                        names.insert(n.to_string());
                    }
                }
            }
        }
        for name in &names {
            tracing::info!(cgroup = %self.name.join(name).display(), "removing stale cgroup");
            self.child(name).destroy()?;
        }
        Ok(names.len())
    }

    /// Create a child cgroup `name` with `limits` applied. Fails if it exists.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        if !valid_component(name) {
            return Err(CgroupError::InvalidName(name.to_string()));
        }
        let cg = self.child(name);
        let mut made = Vec::new();
        let result = (|| {
            for dir in cg.dirs.all() {
                fs::create_dir(dir).map_err(io_err("create directory", dir))?;
                made.push(dir.to_path_buf());
            }
            cg.set_limits(limits)
        })();
        if let Err(e) = result {
            for dir in made.iter().rev() {
                let _ = fs::remove_dir(dir);
            }
            return Err(e);
        }
        Ok(cg)
    }

    /// Kill and remove every child, then remove the parent's own directory
    /// (not its ancestors, which other parents may share).
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.cleanup_stale()?;
        for dir in self.dirs.all() {
            remove_dir_patiently(dir, Instant::now() + RMDIR_TIMEOUT)?;
        }
        Ok(())
    }

    fn child(&self, name: &str) -> Cgroup {
        let rel = self.name.join(name);
        Cgroup {
            dirs: Dirs::at(self.dirs.version(), &self.root, &rel),
            rel,
        }
    }
}

/// One instance's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    rel: PathBuf,
    dirs: Dirs,
}

impl Cgroup {
    /// Move process `pid` (host pid namespace) into this cgroup, in every
    /// controller. Its future children follow; existing ones do not.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in self.dirs.all() {
            write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Change limits at run time (used later to enlarge a running sandbox).
    pub fn set_limits(&self, limits: &Limits) -> Result<(), CgroupError> {
        match &self.dirs {
            Dirs::V1 { memory, cpu, pids } => {
                set_memory_v1(memory, limits.memory_bytes)?;
                let shares = limits.cpu_shares.clamp(2, 262_144);
                write_file(&cpu.join("cpu.shares"), &shares.to_string())?;
                write_file(&pids.join("pids.max"), &max_or(limits.pids_max))?;
            }
            Dirs::V2(dir) => {
                write_file(&dir.join("memory.max"), &max_or(limits.memory_bytes))?;
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write_file(&swap, "0")?;
                }
                let weight = shares_to_weight(limits.cpu_shares);
                write_file(&dir.join("cpu.weight"), &weight.to_string())?;
                write_file(&dir.join("pids.max"), &max_or(limits.pids_max))?;
            }
        }
        Ok(())
    }

    /// How many times the kernel OOM-killed a task of this cgroup. 0 when the
    /// counter cannot be read (e.g. after [`Cgroup::destroy`]).
    pub fn oom_kills(&self) -> u64 {
        let file = match self.dirs {
            Dirs::V1 { ref memory, .. } => memory.join("memory.oom_control"),
            Dirs::V2(ref dir) => dir.join("memory.events"),
        };
        match fs::read_to_string(&file) {
            Ok(text) => parse_keyed(&text, "oom_kill").unwrap_or(0),
            Err(e) => {
                tracing::debug!(file = %file.display(), error = %e, "cannot read OOM counter");
                0
            }
        }
    }

    /// Memory charged to the cgroup now, in bytes.
    pub fn memory_usage_bytes(&self) -> Option<u64> {
        let file = match self.dirs {
            Dirs::V1 { ref memory, .. } => memory.join("memory.usage_in_bytes"),
            Dirs::V2(ref dir) => dir.join("memory.current"),
        };
        fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// The most memory ever charged to the cgroup, in bytes (cgroup v1
    /// `memory.max_usage_in_bytes`, v2 `memory.peak` on kernels that have
    /// it).
    pub fn memory_peak_bytes(&self) -> Option<u64> {
        let file = match self.dirs {
            Dirs::V1 { ref memory, .. } => memory.join("memory.max_usage_in_bytes"),
            Dirs::V2(ref dir) => dir.join("memory.peak"),
        };
        fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// Host pids currently in the cgroup or below it, sorted.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = BTreeSet::new();
        for dir in self.dirs.all() {
            for sub in subtree(dir) {
                if let Ok(text) = fs::read_to_string(sub.join("cgroup.procs")) {
                    pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
                }
            }
        }
        pids.into_iter().collect()
    }

    /// SIGKILL every task, wait (bounded) until empty, remove the directories.
    /// Idempotent: a cgroup that is already gone is not an error.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        if !self.dirs.all().iter().any(|d| d.exists()) {
            return Ok(());
        }
        if let Dirs::V2(dir) = &self.dirs {
            let kill = dir.join("cgroup.kill");
            if kill.exists() {
                write_file(&kill, "1")?;
            }
        }
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::NotEmpty {
                    path: self.dirs.memory().to_path_buf(),
                    remaining: pids.len(),
                });
            }
            self.kill_members(&pids);
            std::thread::sleep(Duration::from_millis(5));
        }
        let deadline = Instant::now() + RMDIR_TIMEOUT;
        for dir in self.dirs.all() {
            // Deepest first: a cgroup with children cannot be removed.
            for sub in subtree(dir).into_iter().rev() {
                remove_dir_patiently(&sub, deadline)?;
            }
        }
        tracing::debug!(cgroup = %self.rel.display(), "cgroup destroyed");
        Ok(())
    }

    /// SIGKILL those of `pids` that are still members. Each pid is pinned with
    /// a pidfd and its membership checked afterwards, so a pid recycled by an
    /// unrelated host process in the meantime is never signalled.
    fn kill_members(&self, pids: &[u32]) {
        let pinned: Vec<_> = pids
            .iter()
            .filter_map(|&pid| {
                let raw = libc::pid_t::try_from(pid).ok()?;
                sys::pidfd_open(raw).ok().map(|fd| (pid, fd))
            })
            .collect();
        let members: BTreeSet<u32> = self.pids().into_iter().collect();
        for (pid, fd) in &pinned {
            if members.contains(pid) {
                if let Err(e) = sys::pidfd_send_signal(fd.as_fd(), Signal::SIGKILL) {
                    if e.raw_os_error() != Some(libc::ESRCH) {
                        tracing::warn!(pid, error = %e, "cannot kill cgroup member");
                    }
                }
            }
        }
    }

    /// The cgroup's path relative to the hierarchy root, as it appears in
    /// `/proc/<pid>/cgroup` (e.g. `thaw/3f2a9c01b2d4/<instance>`).
    pub fn path(&self) -> &Path {
        &self.rel
    }

    /// The cgroup's directories: one per controller (memory, cpu, pids) on v1,
    /// a single one on v2.
    pub fn directories(&self) -> Vec<PathBuf> {
        self.dirs.all().into_iter().map(Path::to_path_buf).collect()
    }

    /// Which interface this cgroup uses.
    pub fn version(&self) -> CgroupVersion {
        self.dirs.version()
    }
}

/// Find the interface: v2 when the root is a unified hierarchy, else v1 with
/// the needed controllers mounted at `<root>/<controller>`.
fn detect(root: &Path) -> Result<CgroupVersion, CgroupError> {
    let controllers = root.join("cgroup.controllers");
    if controllers.exists() {
        let text = fs::read_to_string(&controllers).map_err(io_err("read", &controllers))?;
        let available: Vec<&str> = text.split_whitespace().collect();
        let missing: Vec<&str> = CONTROLLERS
            .into_iter()
            .filter(|c| !available.contains(c))
            .collect();
        if !missing.is_empty() {
            return Err(CgroupError::Unsupported(format!(
                "cgroup v2 at {} lacks the {} controller(s)",
                root.display(),
                missing.join(", ")
            )));
        }
        return Ok(CgroupVersion::V2);
    }
    for c in CONTROLLERS {
        if !root.join(c).join("cgroup.procs").exists() {
            return Err(CgroupError::Unsupported(format!(
                "no cgroup v2 at {root} and no cgroup v1 {c} controller at {root}/{c}",
                root = root.display()
            )));
        }
    }
    Ok(CgroupVersion::V1)
}

/// A single path component usable as a cgroup name.
fn valid_component(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.contains('/')
        && !name.contains('\0')
        && !name.contains('\n')
}

fn create_dir_if_missing(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            Err(io_err("create directory", dir)(e))
        }
        _ => Ok(()),
    }
}

/// v2: make sure `dir`'s children get the memory, cpu and pids controllers.
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let current = fs::read_to_string(&file).map_err(io_err("read", &file))?;
    let enabled: Vec<&str> = current.split_whitespace().collect();
    for c in CONTROLLERS {
        if !enabled.contains(&c) {
            write_file(&file, &format!("+{c}"))?;
        }
    }
    Ok(())
}

/// v1: set `memory.limit_in_bytes` and, when swap accounting exists,
/// `memory.memsw.limit_in_bytes` to the same value (no swap on top). The
/// kernel requires limit <= memsw at every moment, so the order depends on
/// whether the limit grows or shrinks.
fn set_memory_v1(dir: &Path, bytes: u64) -> Result<(), CgroupError> {
    let value = if bytes == u64::MAX {
        "-1".to_string()
    } else {
        bytes.to_string()
    };
    let limit = dir.join("memory.limit_in_bytes");
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    if !memsw.exists() {
        return write_file(&limit, &value);
    }
    let current: u64 = fs::read_to_string(&limit)
        .map_err(io_err("read", &limit))?
        .trim()
        .parse()
        .unwrap_or(u64::MAX);
    if bytes >= current {
        write_file(&memsw, &value)?;
        write_file(&limit, &value)
    } else {
        write_file(&limit, &value)?;
        write_file(&memsw, &value)
    }
}

fn max_or(value: u64) -> String {
    if value == u64::MAX {
        "max".to_string()
    } else {
        value.to_string()
    }
}

/// Map v1 `cpu.shares` (2..=262144, default 1024) onto v2 `cpu.weight`
/// (1..=10000, default 100) linearly, the conversion container runtimes use.
fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + (shares - 2) * 9_999 / 262_142
}

/// The value of `key` in a cgroup "key value" file.
fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

/// Write `value` to an existing cgroup control file in one write(2). (O_TRUNC
/// is ignored by cgroupfs, as with a shell's `>`; it keeps plain files in tests
/// honest.)
fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_err("open", path))?;
    f.write_all(value.as_bytes()).map_err(io_err("write", path))
}

/// `dir` and every cgroup below it, parents before children.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
        out.push(d);
    }
    out
}

/// rmdir that tolerates a missing directory and retries EBUSY until `deadline`.
fn remove_dir_patiently(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io_err("remove directory", dir)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_map_onto_weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
        assert_eq!(shares_to_weight(u64::MAX), 10_000);
        // The v1 default lands near the v2 default of 100.
        assert!((30..=100).contains(&shares_to_weight(1024)));
    }

    #[test]
    fn oom_kill_counter_is_parsed_from_both_formats() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_keyed(v1, "oom_kill"), Some(3));
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_keyed(v2, "oom_kill"), Some(2));
        assert_eq!(parse_keyed("oom_kill_disable 0\n", "oom_kill"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_component("abc-123"));
        for bad in ["", ".", "..", "a/b", "a\nb"] {
            assert!(!valid_component(bad), "{bad:?}");
        }
        let err = CgroupParent::open_in(Path::new("/nonexistent"), "../x").unwrap_err();
        assert!(matches!(err, CgroupError::InvalidName(_)));
        let err = CgroupParent::open_in(Path::new("/nonexistent"), "/abs").unwrap_err();
        assert!(matches!(err, CgroupError::InvalidName(_)));
    }

    #[test]
    fn missing_hierarchy_is_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let err = CgroupParent::open_in(dir.path(), "thaw/x").unwrap_err();
        assert!(matches!(err, CgroupError::Unsupported(_)), "{err}");
        fs::write(dir.path().join("cgroup.controllers"), "cpu io\n").unwrap();
        let err = CgroupParent::open_in(dir.path(), "thaw/x").unwrap_err();
        assert!(err.to_string().contains("memory, pids"), "{err}");
    }

    #[test]
    fn v2_parent_enables_controllers_at_every_level() {
        // A fake unified hierarchy: plain files stand in for control files.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        for level in ["thaw", "thaw/d1"] {
            fs::create_dir(root.join(level)).unwrap();
            fs::write(root.join(level).join("cgroup.subtree_control"), "memory\n").unwrap();
        }
        let parent = CgroupParent::open_in(root, "thaw/d1").unwrap();
        assert_eq!(parent.version(), CgroupVersion::V2);
        assert_eq!(parent.path(), Path::new("thaw/d1"));
        // Each write replaced the fake file; the last one enabled pids.
        for level in ["", "thaw", "thaw/d1"] {
            let text = fs::read_to_string(root.join(level).join("cgroup.subtree_control")).unwrap();
            assert_eq!(text, "+pids", "{level}");
        }
    }
}
