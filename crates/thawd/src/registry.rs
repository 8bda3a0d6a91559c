//! The function registry: deployed functions, persisted under
//! `DATA/functions/<name>/` so that a restarted daemon finds them again.
//!
//! CONTRACT (used by the pool and the API):
//! - `Registry::open(data_dir) -> Result<Registry, RegistryError>` loads every function.
//! - `get(name) -> Option<FunctionRecord>`, `list() -> Vec<FunctionRecord>` (sorted by name).
//! - `create(CreateFunction) / update_code / update_configuration / delete` persist
//!   atomically (write temp + rename) and bump `revision_id`.
//! - Code zips are validated and extracted to `code_dir` (one directory per code
//!   revision, so a running instance keeps its old code while an update lands).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A deployed function as the daemon stores it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FunctionRecord {
    pub name: String,
    /// Lambda runtime identifier: `python3.11`, `nodejs20.x`, `provided`, `provided.al2`, `provided.al2023`.
    pub runtime: String,
    /// Lambda handler string, e.g. `app.handler`.
    pub handler: String,
    pub memory_mb: u32,
    pub timeout_s: u32,
    pub environment: BTreeMap<String, String>,
    pub description: String,
    pub role: String,
    /// Base64 SHA-256 of the code zip (Lambda's `CodeSha256`).
    pub code_sha256: String,
    pub code_size: u64,
    /// Extracted code, bind-mounted read-only at `/var/task`.
    pub code_dir: PathBuf,
    /// Lambda's `LastModified` format: `2024-01-01T00:00:00.000+0000`.
    pub last_modified: String,
    /// Changes on every update; instances started from an older revision are retired.
    pub revision_id: String,
    /// Non-root uid/gid this function's instances run as (distinct per function).
    pub uid: u32,
}

/// The set of deployed functions (helper implements).
pub struct Registry {}
