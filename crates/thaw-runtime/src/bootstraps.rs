//! thaw's language bootstraps: the programs that load a Python or Node.js
//! function and serve it over the AWS Lambda Runtime API.
//!
//! Owns: the bootstrap sources (embedded at build time) and writing them to a
//! host directory. Must not: know where the daemon keeps that directory or how
//! it is mounted (the daemon bind-mounts it read-only at `/var/runtime`).
//!
//! What the bootstraps rely on from their environment: `AWS_LAMBDA_RUNTIME_API`,
//! `_HANDLER`, `LAMBDA_TASK_ROOT` (default `/var/task`),
//! `AWS_LAMBDA_FUNCTION_NAME`, `AWS_LAMBDA_FUNCTION_VERSION`,
//! `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, `AWS_LAMBDA_LOG_GROUP_NAME`,
//! `AWS_LAMBDA_LOG_STREAM_NAME`. On their first `/invocation/next` they send
//! [`FUNCTION_INIT_MS_HEADER`] with the milliseconds spent loading the handler.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The Python bootstrap, installed as `python/bootstrap.py`.
pub const PYTHON_BOOTSTRAP: &str = include_str!("../bootstraps/python/bootstrap.py");

/// thaw's `snapshot_restore_py` (the API of AWS's package of that name),
/// installed next to the Python bootstrap.
pub const PYTHON_HOOKS: &str = include_str!("../bootstraps/python/snapshot_restore_py.py");

/// The Node.js bootstrap, installed as `node/bootstrap.js`.
pub const NODE_BOOTSTRAP: &str = include_str!("../bootstraps/node/bootstrap.js");

/// The Node.js hooks module (`require('@thaw/snapshot-restore')`, found
/// through `NODE_PATH`).
pub const NODE_HOOKS: &str =
    include_str!("../bootstraps/node/modules/@thaw/snapshot-restore/index.js");

/// The Node-API addon the Node.js bootstrap loads after a restore to reseed
/// OpenSSL (built from `bootstraps/node/thaw_reseed.c` by `build.rs`).
pub const NODE_RESEED_ADDON: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/thaw_reseed.node"));

/// Where the Node.js bootstrap's modules are inside the sandbox (for
/// `NODE_PATH`).
pub const NODE_MODULES_DIR: &str = "/var/runtime/node/modules";

/// Request header our bootstraps send on their first `/invocation/next`: the
/// time (float milliseconds) they spent loading the user's handler.
pub const FUNCTION_INIT_MS_HEADER: &str = "X-Thaw-Function-Init-Ms";

/// Write the bootstraps to `dir/python/bootstrap.py` and `dir/node/bootstrap.js`
/// (with the hooks modules and the Node.js reseed addon next to them),
/// readable by every uid (functions run as unprivileged users). Each changed
/// file is replaced atomically, so a runtime starting meanwhile never reads
/// half a file; an unchanged one is left alone.
pub fn install_bootstraps(dir: &Path) -> io::Result<()> {
    let files: [(&str, &str, &[u8]); 5] = [
        ("python", "bootstrap.py", PYTHON_BOOTSTRAP.as_bytes()),
        ("python", "snapshot_restore_py.py", PYTHON_HOOKS.as_bytes()),
        ("node", "bootstrap.js", NODE_BOOTSTRAP.as_bytes()),
        ("node", "thaw_reseed.node", NODE_RESEED_ADDON),
        (
            "node/modules/@thaw/snapshot-restore",
            "index.js",
            NODE_HOOKS.as_bytes(),
        ),
    ];
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for (sub, name, contents) in files {
        let sub_dir = dir.join(sub);
        fs::create_dir_all(&sub_dir)?;
        let mut d = sub_dir.as_path();
        while d != dir {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
            d = d.parent().unwrap_or(dir);
        }
        // Unchanged files stay as they are: snapshots map some of them
        // (the reseed addon) and are restored only onto the same file.
        if fs::read(sub_dir.join(name)).is_ok_and(|old| old == contents) {
            continue;
        }
        thaw_persist::write(&sub_dir.join(name), contents, 0o644)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_both_bootstraps_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("runtime");
        install_bootstraps(&root).unwrap();
        // Installing twice (daemon restart) replaces the files.
        install_bootstraps(&root).unwrap();
        let py = root.join("python/bootstrap.py");
        let js = root.join("node/bootstrap.js");
        assert_eq!(fs::read_to_string(&py).unwrap(), PYTHON_BOOTSTRAP);
        assert_eq!(fs::read_to_string(&js).unwrap(), NODE_BOOTSTRAP);
        for p in [&py, &js] {
            let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "{}", p.display());
        }
        let leftovers: Vec<_> = fs::read_dir(root.join("python"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    }
}
