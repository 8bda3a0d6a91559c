//! Language runtimes available on this host, and how an instance of a function
//! is described to the sandbox and the supervisor (the [`StartSpec`]).
//!
//! The sandbox's root filesystem is made of read-only bind mounts of the host's
//! OS directories and of the language runtimes' install prefixes, plus the
//! function's code at `/var/task` and thaw's bootstraps at `/var/runtime`.
//! Nothing else of the host (its `/etc`, `/root`, `/home`, the data dir, other
//! functions) is visible.

use std::path::{Path, PathBuf};
use std::process::Command;

use thaw_runtime::control::{RuntimeSpec, StartSpec};
use thaw_sandbox::{BindMount, SandboxFile, SandboxSpec};

use crate::registry::FunctionRecord;

/// Port of the Runtime API on each sandbox's own loopback (Lambda uses 9001).
pub const RUNTIME_API_PORT: u16 = 9001;

/// Region reported to functions and used in ARNs.
pub const REGION: &str = "us-east-1";

/// A language runtime found on the host.
#[derive(Debug, Clone)]
pub struct HostRuntime {
    /// The interpreter binary (same path inside the sandbox).
    pub executable: PathBuf,
    /// Install prefix to bind-mount read-only, when it is outside `/usr`.
    pub prefix: Option<PathBuf>,
    /// Directories of the host installation that instances must not see (the
    /// host's `site-packages`: other software's packages and start-up hooks).
    pub hidden: Vec<PathBuf>,
}

/// Runtimes found on the host at daemon start.
#[derive(Debug, Clone, Default)]
pub struct HostRuntimes {
    pub python311: Option<HostRuntime>,
    pub node20: Option<HostRuntime>,
    pub node22: Option<HostRuntime>,
}

/// The Node.js runtimes: Lambda's identifier, the major version, and the
/// variable that names the interpreter (else the command looked for).
const NODE_RUNTIMES: [(&str, &str, &str, &str); 2] = [
    ("nodejs20.x", "20", "THAW_NODE", "node"),
    ("nodejs22.x", "22", "THAW_NODE22", "node22"),
];

impl HostRuntimes {
    /// Look for `python3.11` and `node` (v20) the way a shell would, resolving
    /// wrappers such as pyenv shims to the real interpreter.
    pub fn discover() -> Self {
        let python311 = probe(
            &std::env::var("THAW_PYTHON").unwrap_or_else(|_| "python3.11".into()),
            &[
                "-c",
                "import sys, sysconfig; print(sys.executable); print(sys.base_prefix); \
                 print(sysconfig.get_paths()['purelib']); print(sysconfig.get_paths()['platlib'])",
            ],
        );
        let [node20, node22] = NODE_RUNTIMES.map(|(id, major, var, command)| {
            let found = probe(
                &std::env::var(var).unwrap_or_else(|_| command.into()),
                &[
                    "-e",
                    &format!(
                        "if (!process.version.startsWith('v{major}.')) process.exit(3); \
                         console.log(process.execPath); console.log(require('path').resolve(process.execPath, '..', '..'))"
                    ),
                ],
            );
            if found.is_none() {
                tracing::warn!(
                    "Node.js {major} not found on this host (${var}, else `{command}` on PATH): the {id} runtime is unavailable"
                );
            }
            found
        });
        if python311.is_none() {
            tracing::warn!(
                "python3.11 not found on this host: the python3.11 runtime is unavailable"
            );
        }
        HostRuntimes {
            python311,
            node20,
            node22,
        }
    }
}

fn probe(program: &str, args: &[&str]) -> Option<HostRuntime> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let mut lines = text.lines();
    let executable = std::fs::canonicalize(lines.next()?.trim()).ok()?;
    let prefix = std::fs::canonicalize(lines.next()?.trim()).ok()?;
    let prefix = (!prefix.starts_with("/usr")).then_some(prefix);
    let mut hidden: Vec<PathBuf> = Vec::new();
    for line in lines {
        if let Ok(p) = std::fs::canonicalize(line.trim()) {
            if p.is_dir() && !hidden.contains(&p) {
                hidden.push(p);
            }
        }
    }
    Some(HostRuntime {
        executable,
        prefix,
        hidden,
    })
}

/// Why an instance of a function cannot be described.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("Runtime {0} is not installed on this host")]
    RuntimeMissing(String),
    #[error("Unknown runtime {0}")]
    UnknownRuntime(String),
}

/// Everything the daemon knows that an instance description needs.
pub struct SpecContext<'a> {
    pub runtimes: &'a HostRuntimes,
    /// Host directory holding thaw's bootstraps (`python/`, `node/`).
    pub bootstrap_dir: &'a Path,
    /// Empty host directory used as the sandbox root mount point.
    pub root_mountpoint: &'a Path,
    /// Empty host directory mounted over hidden host directories.
    pub empty_dir: &'a Path,
    pub tmp_size_bytes: u64,
    /// The instance's network, when it has one of its own (else loopback
    /// only).
    pub network: Option<InstanceNetwork<'a>>,
}

/// An instance's own network, as its files and sandbox see it.
pub struct InstanceNetwork<'a> {
    /// Its address (in `/etc/hosts` under its hostname).
    pub address: std::net::Ipv4Addr,
    /// Its `/etc/resolv.conf`.
    pub resolv_conf: &'a str,
}

/// Describe a new instance of `f`.
pub fn start_spec(
    f: &FunctionRecord,
    instance_id: &str,
    ctx: &SpecContext<'_>,
) -> Result<StartSpec, SpecError> {
    let mut binds = Vec::new();
    let os_dirs = [
        ("/usr", true),
        ("/bin", true),
        ("/sbin", false),
        ("/lib", true),
        ("/lib64", false),
        ("/etc/ld.so.cache", false),
        ("/etc/ssl/certs", false),
        ("/etc/localtime", false),
    ];
    for (p, required) in os_dirs {
        binds.push(BindMount {
            source: p.into(),
            target: p.into(),
            required,
        });
    }
    let mut path = String::from("/usr/local/bin:/usr/bin:/bin");
    let mut env: Vec<(String, String)> = f
        .environment
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let argv: Vec<String> = match f.runtime.as_str() {
        "python3.11" => {
            let rt = ctx
                .runtimes
                .python311
                .as_ref()
                .ok_or_else(|| SpecError::RuntimeMissing(f.runtime.clone()))?;
            add_prefix(&mut binds, &mut path, rt);
            hide(&mut binds, rt, ctx.empty_dir);
            env.push(("PYTHONUNBUFFERED".into(), "1".into()));
            env.push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
            vec![
                rt.executable.display().to_string(),
                "-s".into(),
                "/var/runtime/python/bootstrap.py".into(),
            ]
        }
        "nodejs20.x" | "nodejs22.x" => {
            let rt = if f.runtime == "nodejs20.x" {
                &ctx.runtimes.node20
            } else {
                &ctx.runtimes.node22
            }
            .as_ref()
            .ok_or_else(|| SpecError::RuntimeMissing(f.runtime.clone()))?;
            add_prefix(&mut binds, &mut path, rt);
            vec![
                rt.executable.display().to_string(),
                "/var/runtime/node/bootstrap.js".into(),
            ]
        }
        "provided" | "provided.al2" | "provided.al2023" => {
            // A custom runtime may use either interpreter; make both visible.
            for rt in [
                &ctx.runtimes.python311,
                &ctx.runtimes.node20,
                &ctx.runtimes.node22,
            ]
            .into_iter()
            .flatten()
            {
                add_prefix(&mut binds, &mut path, rt);
            }
            vec!["/var/task/bootstrap".into()]
        }
        other => return Err(SpecError::UnknownRuntime(other.into())),
    };
    binds.push(BindMount {
        source: f.code_dir.clone(),
        target: "/var/task".into(),
        required: true,
    });
    binds.push(BindMount {
        source: ctx.bootstrap_dir.to_path_buf(),
        target: "/var/runtime".into(),
        required: true,
    });

    let short = &instance_id[..instance_id.len().min(12)];
    let today = chrono::Utc::now().format("%Y/%m/%d");
    let logging = f.kept.logging_config.clone().unwrap_or_default();
    let log_format = if logging.log_format.as_deref() == Some("JSON") {
        "JSON"
    } else {
        "Text"
    };
    let log_level = logging
        .application_log_level
        .unwrap_or_else(|| "INFO".into());
    let reserved = [
        ("PATH", path),
        ("LANG", "C.UTF-8".into()),
        ("TZ", ":UTC".into()),
        ("HOME", "/tmp".into()),
        ("_HANDLER", f.handler.clone()),
        ("LAMBDA_TASK_ROOT", "/var/task".into()),
        ("LAMBDA_RUNTIME_DIR", "/var/runtime".into()),
        ("AWS_REGION", REGION.into()),
        ("AWS_DEFAULT_REGION", REGION.into()),
        ("AWS_EXECUTION_ENV", format!("AWS_Lambda_{}", f.runtime)),
        ("AWS_LAMBDA_FUNCTION_NAME", f.short_name().to_string()),
        ("AWS_LAMBDA_FUNCTION_VERSION", f.version_label()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", f.memory_mb.to_string()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", f.short_name()),
        ),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME",
            format!("{today}/[{}]{short}", f.version_label()),
        ),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".into()),
        // The function's LoggingConfig, for its runtime.
        ("AWS_LAMBDA_LOG_FORMAT", log_format.into()),
        // thaw's own: unique per instance (restored ones get theirs after
        // the restore).
        ("THAW_INSTANCE_ID", instance_id.to_string()),
    ];
    // Reserved variables win over user-supplied ones, as in Lambda.
    env.retain(|(k, _)| !reserved.iter().any(|(r, _)| r == k) && k != "AWS_LAMBDA_LOG_LEVEL");
    env.extend(reserved.into_iter().map(|(k, v)| (k.to_string(), v)));
    if log_format == "JSON" {
        // The application's level applies to the JSON format only.
        env.push(("AWS_LAMBDA_LOG_LEVEL".into(), log_level));
    }
    if f.runtime.starts_with("nodejs") {
        // Where `require('@thaw/snapshot-restore')` is found (reserved, as
        // NODE_PATH is in Lambda).
        env.retain(|(k, _)| k != "NODE_PATH");
        env.push((
            "NODE_PATH".into(),
            thaw_runtime::bootstraps::NODE_MODULES_DIR.into(),
        ));
    }

    let hostname = format!("thaw-{short}");
    let files = vec![
        file(
            "/etc/passwd",
            format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\nsbx_user:x:{uid}:{gid}::/tmp:/usr/sbin/nologin\n",
                uid = f.uid,
                gid = f.uid
            ),
        ),
        file("/etc/group", format!("root:x:0:\nsbx_user:x:{}:\n", f.uid)),
        file(
            "/etc/hosts",
            match &ctx.network {
                None => format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost\n"),
                Some(n) => format!(
                    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n{}\t{hostname}\n",
                    n.address
                ),
            },
        ),
        file("/etc/hostname", format!("{hostname}\n")),
        // This instance's own machine id (systemd's format).
        file(
            "/etc/machine-id",
            format!("{}\n", uuid::Uuid::new_v4().simple()),
        ),
        file(
            "/etc/resolv.conf",
            ctx.network
                .as_ref()
                .map_or_else(String::new, |n| n.resolv_conf.to_string()),
        ),
        file(
            "/etc/nsswitch.conf",
            if ctx.network.is_some() {
                "passwd: files\ngroup: files\nhosts: files dns\n"
            } else {
                "passwd: files\ngroup: files\nhosts: files\n"
            }
            .into(),
        ),
    ];
    Ok(StartSpec {
        sandbox: SandboxSpec {
            instance_id: instance_id.to_string(),
            hostname,
            uid: f.uid,
            gid: f.uid,
            root_mountpoint: ctx.root_mountpoint.to_path_buf(),
            binds,
            tmp_size_bytes: tmp_size_bytes(f, ctx.tmp_size_bytes),
            shm_size_bytes: 64 * 1024 * 1024,
            files,
            boot_id: Some(uuid::Uuid::new_v4().to_string()),
            // The namespace reaches thaw-init at its fixed number.
            join_net_fd: ctx
                .network
                .as_ref()
                .map(|_| thaw_runtime::control::NETNS_FD),
        },
        runtime: RuntimeSpec {
            argv,
            env,
            cwd: "/var/task".into(),
            api_port: RUNTIME_API_PORT,
            snapshot_run: false,
            clock_offset_ns: 0,
        },
        restore: None,
    })
}

/// `/tmp` is a tmpfs, so what a function writes there counts against its memory
/// limit. Cap it at half the memory size so that filling `/tmp` fails with
/// ENOSPC instead of an out-of-memory kill.
fn tmp_size_bytes(f: &FunctionRecord, configured: u64) -> u64 {
    let half_memory = u64::from(f.memory_mb) * 1024 * 1024 / 2;
    configured.min(half_memory)
}

fn add_prefix(binds: &mut Vec<BindMount>, path: &mut String, rt: &HostRuntime) {
    if let Some(prefix) = &rt.prefix {
        if !binds.iter().any(|b| &b.source == prefix) {
            binds.push(BindMount {
                source: prefix.clone(),
                target: prefix.clone(),
                required: true,
            });
            *path = format!("{}:{}", prefix.join("bin").display(), path);
        }
    }
}

/// Mount `empty` over the runtime's hidden host directories.
fn hide(binds: &mut Vec<BindMount>, rt: &HostRuntime, empty: &Path) {
    for dir in &rt.hidden {
        binds.push(BindMount {
            source: empty.to_path_buf(),
            target: dir.clone(),
            required: true,
        });
    }
}

fn file(path: &str, contents: String) -> SandboxFile {
    SandboxFile {
        path: path.into(),
        contents,
        mode: 0o644,
    }
}
