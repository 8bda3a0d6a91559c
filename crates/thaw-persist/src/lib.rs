//! Durable atomic file writes, the one implementation every thaw crate uses.
//!
//! Owns: writing a file so that a reader (or the machine after a crash)
//! sees either the old file or the whole new one: a temporary file with a
//! name no other writer uses, in the target's directory; the data;
//! `fsync`; `rename` over the target; `fsync` of the directory so the
//! rename itself is durable. Must not: know what the files hold.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a durable write failed: the step and the file it failed on.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}", path.display())]
pub struct PersistError {
    /// The step: `create`, `write`, `sync`, `rename`, `sync directory`.
    pub op: &'static str,
    /// The file (temporary or final) or directory the step was on.
    pub path: PathBuf,
    /// The operating system's error.
    #[source]
    pub source: io::Error,
}

impl From<PersistError> for io::Error {
    fn from(e: PersistError) -> io::Error {
        io::Error::new(e.source.kind(), e)
    }
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PersistError + 'a {
    move |source| PersistError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A temporary name next to `path` that no other writer (thread or
/// process) uses at the same time: the pid, a per-process counter and the
/// clock. The file is created with `O_EXCL`, so a clash is an error, never
/// a shared file.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.tmp-{}-{n}-{nanos:08x}",
        std::process::id()
    ))
}

/// Makes a rename or creation in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), PersistError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("sync directory", dir))
}

/// Writes `path` atomically and durably with permission bits `mode`
/// (exactly: the umask does not apply); `fill` writes the contents into
/// the temporary file. On any error the temporary file is removed and
/// `path` is as it was.
pub fn write_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), PersistError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = temp_path(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err("create", &tmp))?;
    let written = file
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| fill(&mut file))
        .map_err(err("write", &tmp))
        .and_then(|()| file.sync_all().map_err(err("sync", &tmp)))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(err("rename", &tmp)));
    drop(file);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Writes `bytes` to `path` atomically and durably ([`write_with`]).
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PersistError> {
    write_with(path, mode, |f| f.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_replaces_and_sets_the_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        write(&p, b"one", 0o600).unwrap();
        write(&p, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(entries(d.path()), vec!["f.json"], "no temporary file left");
    }

    #[test]
    fn a_failed_fill_leaves_the_old_file_and_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write(&p, b"old", 0o600).unwrap();
        let e = write_with(&p, 0o600, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(e.op, "write");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(entries(d.path()), vec!["f"]);
    }

    #[test]
    fn concurrent_writers_never_share_a_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ws.thaw");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..50 {
                        // Each writer's file is one byte repeated: a mix
                        // of two writers would show.
                        write_with(p, 0o600, |f| {
                            for _ in 0..64 {
                                f.write_all(&[t; 1024])?;
                            }
                            Ok(())
                        })
                        .unwrap();
                    }
                });
            }
        });
        let got = std::fs::read(&p).unwrap();
        assert_eq!(got.len(), 64 * 1024);
        assert!(got.iter().all(|b| *b == got[0]), "two writers mixed");
        assert_eq!(entries(d.path()), vec!["ws.thaw"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_step() {
        let d = tempfile::tempdir().unwrap();
        let e = write(&d.path().join("no/such/f"), b"x", 0o600).unwrap_err();
        assert_eq!(e.op, "create");
        assert_eq!(e.source.kind(), io::ErrorKind::NotFound);
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
    }
}
