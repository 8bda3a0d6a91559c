//! The sandbox's root filesystem. Owns: every mount made inside the sandbox's
//! private mount namespace (root tmpfs, read-only binds, `/dev`, `/proc`,
//! `/tmp`), the spec's files and the switch to the new root. Must not: run
//! outside a private mount namespace (the caller unshares first), or touch
//! credentials, networking or anything after the root is sealed.
//!
//! Order: make `/` private; tmpfs at the mount point; binds (each remounted
//! read-only at once, so nothing below can write into a host directory);
//! files; `/dev`; `/proc`; `/tmp`; pivot_root; seal `/dev` and `/` read-only.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{chdir, pivot_root, symlinkat};

use crate::spec::{BindMount, SandboxSpec};
use crate::SandboxError;

/// Device nodes bound from the host's `/dev`.
const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

/// `/proc` files hidden behind `/dev/null`: kernel memory, kernel logs and
/// symbols, host-wide keys and scheduler internals, the magic SysRq trigger.
const MASKED_PROC_FILES: [&str; 9] = [
    "kcore",
    "kmsg",
    "kallsyms",
    "keys",
    "key-users",
    "latency_stats",
    "timer_list",
    "sched_debug",
    "sysrq-trigger",
];

/// `/proc` directories hidden behind an empty read-only tmpfs (host hardware).
const MASKED_PROC_DIRS: [&str; 3] = ["acpi", "asound", "scsi"];

/// `/proc` directories that stay visible but read-only (kernel tunables).
const READ_ONLY_PROC_DIRS: [&str; 4] = ["sys", "bus", "fs", "irq"];

/// Room in the root tmpfs beyond the spec's files: directories and inodes.
const ROOT_TMPFS_SLACK: u64 = 1 << 20;

/// Size of the `/dev` tmpfs (it holds only empty files, symlinks and `shm`).
const DEV_TMPFS_BYTES: u64 = 64 << 10;

fn step(step: &str) -> impl FnOnce(io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Step {
        step: step.to_string(),
        source,
    }
}

fn errno_step(name: &str) -> impl FnOnce(nix::Error) -> SandboxError + '_ {
    move |e| SandboxError::Step {
        step: name.to_string(),
        source: io::Error::from(e),
    }
}

/// Build the root filesystem described by `spec` and switch into it. On
/// return the process's `/` is the sealed sandbox root and its cwd is `/`.
pub(crate) fn build_and_enter(spec: &SandboxSpec) -> Result<(), SandboxError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(errno_step("make / private"))?;

    let root = fs::canonicalize(&spec.root_mountpoint).map_err(step("resolve root mount point"))?;
    let files_bytes: u64 = spec.files.iter().map(|f| f.contents.len() as u64).sum();
    tmpfs(
        &root,
        ROOT_TMPFS_SLACK + files_bytes,
        0o755,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )
    .map_err(step("mount root tmpfs"))?;

    for bind in &spec.binds {
        bind_read_only(&root, bind)?;
    }
    for file in &spec.files {
        let path = inside(&root, &file.path);
        write_file(&root, &path, file.contents.as_bytes(), file.mode).map_err(|source| {
            SandboxError::Step {
                step: format!("write file {}", file.path.display()),
                source,
            }
        })?;
    }
    build_dev(&root, spec.shm_size_bytes)?;
    build_proc(&root, spec.boot_id.as_deref())?;
    let tmp = root.join("tmp");
    mkdir(&tmp, 0o1777).map_err(step("create /tmp"))?;
    tmpfs(
        &tmp,
        spec.tmp_size_bytes,
        0o1777,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )
    .map_err(step("mount /tmp tmpfs"))?;

    switch_root(&root)?;

    remount_read_only(Path::new("/dev"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC)
        .map_err(step("seal /dev read-only"))?;
    remount_read_only(Path::new("/"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV)
        .map_err(step("seal / read-only"))?;
    Ok(())
}

/// The host-side path of sandbox path `p` (absolute, validated) under `root`.
fn inside(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

fn tmpfs(target: &Path, size: u64, mode: u32, flags: MsFlags) -> io::Result<()> {
    let data = format!("size={size},mode={mode:04o}");
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        flags,
        Some(data.as_str()),
    )?;
    Ok(())
}

/// Create `dir` (one level) with exactly `mode`; an existing directory is fine.
fn mkdir(dir: &Path, mode: u32) -> io::Result<()> {
    match DirBuilder::new().mode(mode).create(dir) {
        // The umask may have cleared bits of `mode`.
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if fs::symlink_metadata(dir)?.is_dir() {
                Ok(())
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}

/// Create every missing directory between `root` and `dir`, refusing to pass
/// through a symlink: one inside a host directory bound earlier could point
/// anywhere on the host, and we still see the host's `/`. Each new directory
/// gets the permission bits of the host directory at the same path (so
/// `/root` stays unlistable when a runtime is bound below it), plus search
/// permission for everyone so that what is bound below stays reachable;
/// directories the host lacks get 0755.
fn mkdir_all(root: &Path, dir: &Path) -> io::Result<()> {
    let rel = dir.strip_prefix(root).map_err(|_| einval())?;
    let mut at = root.to_path_buf();
    let mut host = PathBuf::from("/");
    for part in rel.components() {
        at.push(part);
        host.push(part);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return Err(eloop()),
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => mkdir(&at, host_dir_mode(&host))?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Mode for a sandbox directory mirroring host directory `host` (see
/// [`mkdir_all`]).
fn host_dir_mode(host: &Path) -> u32 {
    match fs::metadata(host) {
        Ok(m) if m.is_dir() => (m.permissions().mode() & 0o777) | 0o111,
        _ => 0o755,
    }
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

fn eloop() -> io::Error {
    io::Error::from_raw_os_error(libc::ELOOP)
}

/// Refuse a path that resolves elsewhere than it reads (a symlink anywhere on
/// it). mount(2) follows symlinks, so this guards every mount target.
fn ensure_no_symlinks(path: &Path) -> io::Result<()> {
    if fs::canonicalize(path)? != path {
        return Err(eloop());
    }
    Ok(())
}

fn write_file(root: &Path, path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let parent = path.parent().ok_or_else(einval)?;
    mkdir_all(root, parent)?;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)?;
    f.write_all(contents)?;
    // The umask may have cleared bits of `mode` at creation.
    f.set_permissions(fs::Permissions::from_mode(mode))
}

/// Make sure a mount target of the right kind (directory or empty file)
/// exists at `target`, creating it and its parents in the root tmpfs.
fn make_mount_target(root: &Path, target: &Path, is_dir: bool) -> io::Result<()> {
    if is_dir {
        mkdir_all(root, target)?;
    } else {
        let parent = target.parent().ok_or_else(einval)?;
        mkdir_all(root, parent)?;
        if fs::symlink_metadata(target).is_err() {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o644)
                .open(target)?;
        }
    }
    ensure_no_symlinks(target)
}

fn bind_read_only(root: &Path, bind: &BindMount) -> Result<(), SandboxError> {
    let named = |what: &str| {
        let what = format!("{what} {}", bind.target.display());
        move |source| SandboxError::Step { step: what, source }
    };
    let meta = match fs::metadata(&bind.source) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !bind.required => {
            tracing::debug!(source = %bind.source.display(), "optional bind source missing; skipped");
            return Ok(());
        }
        Err(e) => return Err(named("find bind source for")(e)),
    };
    let target = inside(root, &bind.target);
    make_mount_target(root, &target, meta.is_dir()).map_err(named("create bind target"))?;
    // Not MS_REC: mounts below the source stay invisible rather than
    // appearing writable under a read-only parent.
    mount(
        Some(&bind.source),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| named("bind")(io::Error::from(e)))?;
    remount_read_only(&target, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)
        .map_err(named("remount read-only"))
}

/// Flags of the mount at `path` that a bind remount must repeat: in a user
/// namespace the kernel refuses to clear them on a mount inherited from a more
/// privileged one ("locked" flags), and elsewhere keeping them is harmless.
fn locked_flags(path: &Path) -> io::Result<MsFlags> {
    let st = statvfs(path)?.flags();
    let mut flags = MsFlags::empty();
    for (fs_flag, ms_flag) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.contains(fs_flag) {
            flags |= ms_flag;
        }
    }
    Ok(flags)
}

/// Change only the per-mount flags of the mount at `path`: read-only plus
/// `extra`, keeping whatever the kernel requires us to keep.
fn remount_read_only(path: &Path, extra: MsFlags) -> io::Result<()> {
    remount(path, MsFlags::MS_RDONLY | extra)
}

fn remount(path: &Path, flags: MsFlags) -> io::Result<()> {
    let flags = flags | locked_flags(path)? | MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)?;
    Ok(())
}

/// Bind the host file or directory `source` at `target` (which must exist).
fn bind(source: &Path, target: &Path) -> io::Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    Ok(())
}

fn build_dev(root: &Path, shm_size: u64) -> Result<(), SandboxError> {
    let dev = root.join("dev");
    mkdir(&dev, 0o755).map_err(step("create /dev"))?;
    // nodev is fine here: the device binds below are mounts of their own and
    // carry the host devtmpfs's flags, not this tmpfs's.
    tmpfs(
        &dev,
        DEV_TMPFS_BYTES,
        0o755,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
    .map_err(step("mount /dev tmpfs"))?;
    for name in DEVICES {
        let target = dev.join(name);
        let host = Path::new("/dev").join(name);
        let named = |source| SandboxError::Step {
            step: format!("bind /dev/{name}"),
            source,
        };
        make_mount_target(root, &target, false).map_err(named)?;
        bind(&host, &target).map_err(named)?;
        // Never MS_NODEV here, or the device could not be opened.
        remount(&target, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC).map_err(named)?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlinkat(to, nix::fcntl::AT_FDCWD, &dev.join(link))
            .map_err(errno_step("create /dev symlinks"))?;
    }
    let shm = dev.join("shm");
    mkdir(&shm, 0o1777).map_err(step("create /dev/shm"))?;
    tmpfs(
        &shm,
        shm_size,
        0o1777,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
    .map_err(step("mount /dev/shm tmpfs"))
}

fn build_proc(root: &Path, boot_id: Option<&str>) -> Result<(), SandboxError> {
    let proc = root.join("proc");
    mkdir(&proc, 0o555).map_err(step("create /proc"))?;
    // We are PID 1 of the new pid namespace, so this procfs shows its pids.
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(errno_step("mount /proc"))?;
    for name in MASKED_PROC_FILES {
        let target = proc.join(name);
        if !target.exists() {
            continue;
        }
        let named = |source| SandboxError::Step {
            step: format!("mask /proc/{name}"),
            source,
        };
        bind(Path::new("/dev/null"), &target).map_err(named)?;
        remount_read_only(&target, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC).map_err(named)?;
    }
    for name in MASKED_PROC_DIRS {
        let target = proc.join(name);
        if !target.is_dir() {
            continue;
        }
        tmpfs(
            &target,
            4096,
            0o555,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )
        .map_err(|source| SandboxError::Step {
            step: format!("mask /proc/{name}"),
            source,
        })?;
    }
    for name in READ_ONLY_PROC_DIRS {
        let target = proc.join(name);
        if !target.is_dir() {
            continue;
        }
        bind(&target, &target)
            .and_then(|()| {
                remount_read_only(
                    &target,
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                )
            })
            .map_err(|source| SandboxError::Step {
                step: format!("make /proc/{name} read-only"),
                source,
            })?;
    }
    if let Some(id) = boot_id {
        // The instance's own boot id, from a file in the root tmpfs bound
        // (read-only) over the kernel's; after the /proc/sys bind above, so
        // that it lands on top of it.
        let named = |source| SandboxError::Step {
            step: "set the boot id".into(),
            source,
        };
        let file = root.join(".thaw/boot_id");
        write_file(root, &file, format!("{id}\n").as_bytes(), 0o444).map_err(named)?;
        let target = proc.join("sys/kernel/random/boot_id");
        bind(&file, &target)
            .and_then(|()| remount_read_only(&target, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC))
            .map_err(named)?;
    }
    Ok(())
}

/// pivot_root into `root` without a put_old directory: stack the old root on
/// top of the new one, then detach it.
fn switch_root(root: &Path) -> Result<(), SandboxError> {
    chdir(root).map_err(errno_step("chdir to new root"))?;
    pivot_root(".", ".").map_err(errno_step("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(errno_step("detach old root"))?;
    chdir("/").map_err(errno_step("chdir to /"))?;
    Ok(())
}
