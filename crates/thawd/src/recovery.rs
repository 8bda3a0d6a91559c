//! Start-up recovery of the data directory: what a daemon killed at any
//! point (SIGKILL, power loss) leaves behind besides its cgroups (which
//! [`thaw_sandbox::CgroupParent::cleanup_stale`] removes with every process
//! in them) and the registry's staging directories (which
//! [`crate::registry::Registry::open`] removes).
//!
//! Owns: removing temporary files and directories no live writer can own
//! (the daemon is the only writer of its data directory and has not
//! started any work yet): durable-write temporaries (`.<name>.tmp-…`,
//! [`thaw_persist`]), unfinished snapshot directories (`.tmp-<id>`, a
//! checkpoint in progress), and the local object store's staged uploads
//! (`<object>#<n>`). Must not: touch anything else, or run while the
//! daemon serves.

use std::path::Path;

/// Whether `name` is a temporary a killed writer may have left.
fn is_temporary(name: &str, in_local_store: bool) -> bool {
    (name.starts_with(".tmp-"))
        || (name.starts_with('.') && name.contains(".tmp-"))
        || (in_local_store && name.contains('#'))
}

/// Removes every temporary under `data_dir`'s snapshot, store, cache,
/// runtime, key and log directories (and the directory itself); returns
/// how many it removed. `local_store`: `DATA/store` is this daemon's local
/// object store (its staged uploads are temporaries too).
pub fn sweep_temporaries(data_dir: &Path, local_store: bool) -> usize {
    let mut removed = 0;
    let top: &[(&str, bool)] = &[
        ("snapshots", false),
        ("store", local_store),
        ("store-cache", false),
        ("runtime", false),
        ("keys", false),
        ("logs", false),
    ];
    removed += sweep(data_dir, false, 0, 0);
    for (dir, store) in top {
        removed += sweep(&data_dir.join(dir), *store, 0, 6);
    }
    removed
}

fn sweep(dir: &Path, in_local_store: bool, depth: usize, max_depth: usize) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in rd.flatten() {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        let name = e.file_name();
        let name = name.to_string_lossy();
        if is_temporary(&name, in_local_store) {
            let r = if kind.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match r {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a temporary left by an earlier daemon");
                    removed += 1;
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cannot remove a temporary left by an earlier daemon")
                }
            }
        } else if kind.is_dir() && depth < max_depth {
            removed += sweep(&path, in_local_store, depth + 1, max_depth);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_go_and_everything_else_stays() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let keep = [
            "snapshots/f/rev/thaw-snapshot.json",
            "snapshots/f/rev/state.thaw",
            "store/chunks/ab/abcdef",
            "store/manifests/default/snapshots/f/rev/x/memory",
            "logs/f.jsonl",
            "keys/store.key",
            "accounts.json",
            "functions/f/.function.json.tmp-1",
        ];
        let gone = [
            "snapshots/f/.tmp-0123/state.thaw",
            "snapshots/f/rev/.workingset.thaw.tmp-9-1-ff",
            "store/chunks/ab/abcdef#3",
            "store-cache/ab/.abcd.tmp-1-2-3",
            ".accounts.json.tmp-1-2-3",
            "keys/.store.key.tmp-1-1-1",
        ];
        for f in keep.iter().chain(gone.iter()) {
            let f = p.join(f);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, b"x").unwrap();
        }
        // The registry sweeps its own directory; this leaves it alone.
        assert_eq!(sweep_temporaries(p, true), gone.len());
        for f in keep {
            assert!(p.join(f).exists(), "{f} kept");
        }
        for f in gone {
            assert!(!p.join(f).exists(), "{f} removed");
        }
        assert!(!p.join("snapshots/f/.tmp-0123").exists());
    }

    #[test]
    fn staged_uploads_are_kept_in_a_store_that_is_not_ours() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("store/chunks/ab/abcdef#3");
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(sweep_temporaries(d.path(), false), 0);
        assert!(f.exists());
    }
}
