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
//! - Published versions and aliases: `registry/versions.rs` (a version keeps its code
//!   directory for as long as it exists).
//!
//! Owns: the on-disk layout below, zip validation and extraction, and the
//! allocation of each function's uid. Must not: know about instances, HTTP or
//! Lambda's wire format (validation rules come from `thaw-api`).
//!
//! ```text
//! DATA/functions/<name>/function.json    FunctionRecord (JSON), replaced by rename
//! DATA/functions/<name>/code.zip         the zip as uploaded
//! DATA/functions/<name>/code-<rev>/      extracted code of revision <rev>
//! DATA/functions/<name>/versions/<n>.json published version <n> (a frozen record)
//! DATA/functions/<name>/versions/<n>.zip  its zip (a hard link when possible)
//! DATA/functions/.staging-<uuid>/        work in progress (removed at open)
//! DATA/functions/.deleted-<name>-<uuid>/ a deleted function (removed later)
//! DATA/functions/.corrupt-<name>-<uuid>/ a function that could not be loaded (kept)
//! ```
//!
//! Slow work (unzipping up to 250 MiB) happens in a private staging directory
//! without holding the registry lock; the lock is held only to commit, which is
//! a few renames and one small JSON write. Directories that running instances
//! may still have bind-mounted (old code revisions, deleted functions) are kept
//! for [`RETIRE_GRACE`] and removed by a later change or the next `open`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thaw_api::versions::Qualifier;
use thaw_api::{
    CodeInfo, FunctionName, FunctionSettings, LambdaError, NewFunction, PlatformSettings, Runtime,
};

use crate::instance::error_chain;
use crate::secrets::{EnvCipher, KeySource};

mod urls;
mod versions;
pub use versions::PublishOutcome;

/// First uid (and gid) handed to functions; function `n` gets `UID_BASE + n`.
pub const UID_BASE: u32 = 61000;
/// How many functions (uids) the registry can hold.
const MAX_FUNCTIONS: u32 = 100_000;
/// Largest total size of a function's unzipped code, bytes (Lambda's limit).
pub const MAX_UNZIPPED_BYTES: u64 = 262_144_000;
/// Largest number of entries in a code zip.
pub const MAX_ZIP_ENTRIES: usize = 100_000;
/// How long a replaced code directory or a deleted function's directory is
/// kept: the longest invocation (900 s) plus init, so instances still running
/// the old code are not pulled from under their feet.
pub const RETIRE_GRACE: Duration = Duration::from_secs(960);
/// Longest symbolic link target accepted in a zip.
const MAX_LINK_TARGET: u64 = 4096;
/// Symbolic links followed when checking where a link points.
const MAX_LINK_HOPS: usize = 40;

/// A deployed function as the daemon stores it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FunctionRecord {
    pub name: String,
    /// Lambda runtime identifier: `python3.11`, `nodejs20.x`, `nodejs22.x`, `provided`, `provided.al2`, `provided.al2023`.
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
    /// Reserved and provisioned concurrency. Absent from records written
    /// before concurrency controls existed (they read as "none"), and left
    /// out of the JSON while nothing is set, so such records stay
    /// byte-compatible with older daemons.
    #[serde(default, skip_serializing_if = "ConcurrencyConfig::is_empty")]
    pub concurrency: ConcurrencyConfig,
    /// thaw's own settings of the function (memory mode, reseeding). Left
    /// out while nothing is set, as `concurrency`. Records written when
    /// these were the function's `THAW_MEMORY_MODE` / `THAW_RESEED`
    /// variables are moved here when loaded.
    #[serde(default, skip_serializing_if = "PlatformSettings::is_empty")]
    pub platform: PlatformSettings,
    /// The function's tags (not part of the code revision). Left out while
    /// there are none, as `concurrency`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Configuration Lambda returns that thaw keeps without acting on it
    /// (`thaw_api::kept`). Left out while nothing is set.
    #[serde(default, skip_serializing_if = "thaw_api::kept::Kept::is_empty")]
    pub kept: thaw_api::kept::Kept,
    /// The published version this record is; `None` for `$LATEST`. A
    /// version's record is a frozen copy of `$LATEST` at its publication
    /// (`versions/<n>.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The number of the last version published (`$LATEST` only): numbers
    /// are never reused, even after a version is deleted. Left out while 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_version: u32,
    /// The function's aliases by name (`$LATEST` only; not part of the
    /// code revision). Left out while there are none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aliases: BTreeMap<String, AliasRecord>,
    /// The function's URLs by qualifier (`$LATEST` or an alias; `$LATEST`
    /// only; not part of the code revision). Left out while there are none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub urls: BTreeMap<String, UrlRecord>,
}

/// A function URL as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UrlRecord {
    /// The URL's id: the first label of its host (32 of `[a-z0-9]`).
    pub id: String,
    /// `NONE` or `AWS_IAM`.
    pub auth_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<thaw_api::urls::Cors>,
    /// `BUFFERED`.
    pub invoke_mode: String,
    /// ISO 8601.
    pub created: String,
    /// ISO 8601.
    pub modified: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An alias as stored: the version it points to and its weighted routing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AliasRecord {
    /// `None`: `$LATEST`; else a published version.
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Additional version and the share of invocations it gets (checked
    /// to be in [0, 1] by `thaw_api::versions`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routing: Vec<(u32, f64)>,
    /// Changes on every update of the alias.
    pub revision_id: String,
}

// Weights are checked to lie in [0, 1] before they are stored, so they are
// never NaN and equality is reflexive.
impl Eq for AliasRecord {}

/// A function's concurrency controls as stored in `function.json`. Not part
/// of the code revision: changing them does not change `revision_id`, so
/// instances and snapshots stay.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConcurrencyConfig {
    /// `ReservedConcurrentExecutions`; `None`: the function shares the
    /// account's unreserved pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<u32>,
    /// Provisioned concurrency configurations by qualifier: a version
    /// number, an alias, or `$LATEST` (a thaw extension: Lambda refuses
    /// it). Records of format 2 hold one configuration, `$LATEST`'s.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "provisioned_any"
    )]
    pub provisioned: BTreeMap<String, ProvisionedSetting>,
}

/// Reads `provisioned` as stored: a map by qualifier, or (format 2) the
/// one configuration `$LATEST` could have.
fn provisioned_any<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, ProvisionedSetting>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Latest(ProvisionedSetting),
        ByQualifier(BTreeMap<String, ProvisionedSetting>),
    }
    Ok(match Stored::deserialize(d)? {
        Stored::Latest(p) => BTreeMap::from([(thaw_api::function::LATEST.to_string(), p)]),
        Stored::ByQualifier(m) => m,
    })
}

impl ConcurrencyConfig {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.reserved.is_none() && self.provisioned.is_empty()
    }

    /// Instances all the function's provisioned concurrency
    /// configurations ask for.
    pub fn total_provisioned(&self) -> u32 {
        self.provisioned
            .values()
            .fold(0u32, |n, p| n.saturating_add(p.requested))
    }
}

/// A provisioned concurrency configuration as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProvisionedSetting {
    /// `RequestedProvisionedConcurrentExecutions`.
    pub requested: u32,
    /// When it was last put (ISO 8601, Lambda's `LastModified`).
    pub last_modified: String,
}

impl FunctionRecord {
    /// The function's validated name within its account.
    pub fn function_name(&self) -> Result<FunctionName, LambdaError> {
        if !crate::accounts::valid_key(&self.name) {
            return Err(LambdaError::new(
                thaw_api::ErrorCode::Service,
                format!("{:?} is not a function key", self.name),
            ));
        }
        FunctionName::parse(self.short_name())
    }

    /// The account the function belongs to (`name` is the daemon's key:
    /// see [`crate::accounts`]).
    pub fn account(&self) -> &str {
        crate::accounts::split_key(&self.name).0
    }

    /// The function's name within its account.
    pub fn short_name(&self) -> &str {
        crate::accounts::split_key(&self.name).1
    }

    /// The ARN of the function (unqualified: what `$LATEST` reports).
    pub fn arn(&self) -> String {
        thaw_api::function::function_arn_in(self.account(), self.short_name())
    }

    /// The ARN of this version (`$LATEST`: unqualified, as Lambda reports it).
    pub fn qualified_arn(&self) -> String {
        match self.version {
            None => self.arn(),
            Some(n) => format!("{}:{n}", self.arn()),
        }
    }

    /// `ResourceNotFoundException` for version or alias `q` of this
    /// function, in Lambda's words.
    pub(crate) fn missing(&self, q: &Qualifier) -> RegistryError {
        RegistryError::Invalid(thaw_api::versions::qualifier_not_found(
            self.account(),
            self.short_name(),
            q,
        ))
    }

    /// The key this record's instances, snapshots and templates are kept
    /// under: the function's key for `$LATEST`, `KEY:N` for version N (two
    /// versions never share an instance, even at the same revision).
    pub fn instance_key(&self) -> String {
        match self.version {
            None => self.name.clone(),
            Some(n) => format!("{}:{n}", self.name),
        }
    }

    /// Which version this record is.
    pub fn qualifier(&self) -> Qualifier {
        match self.version {
            None => Qualifier::Latest,
            Some(n) => Qualifier::Version(n),
        }
    }

    /// `$LATEST` or the version's number, as Lambda reports the version
    /// that ran (`X-Amz-Executed-Version`, `START ... Version:`).
    pub fn version_label(&self) -> String {
        self.qualifier().to_string()
    }

    /// The function's configuration as `thaw-api` models it.
    pub fn settings(&self) -> Result<FunctionSettings, LambdaError> {
        Ok(FunctionSettings {
            runtime: Runtime::parse(&self.runtime)?,
            handler: self.handler.clone(),
            memory_mb: self.memory_mb,
            timeout_s: self.timeout_s,
            environment: self.environment.clone(),
            description: self.description.clone(),
            role: self.role.clone(),
            kept: self.kept.clone(),
        })
    }

    /// What Lambda reports about the code.
    pub fn code_info(&self) -> CodeInfo {
        CodeInfo {
            size: self.code_size,
            sha256: self.code_sha256.clone(),
            last_modified: self.last_modified.clone(),
            revision_id: self.revision_id.clone(),
        }
    }

    fn apply_settings(&mut self, s: FunctionSettings) {
        self.runtime = s.runtime.as_str().to_string();
        self.handler = s.handler;
        self.memory_mb = s.memory_mb;
        self.timeout_s = s.timeout_s;
        self.environment = s.environment;
        self.description = s.description;
        self.role = s.role;
        self.kept = s.kept;
    }
}

/// A function to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateFunction {
    /// The account the function is created in.
    pub account: String,
    pub name: FunctionName,
    pub settings: FunctionSettings,
    /// The code zip as uploaded.
    pub zip: Vec<u8>,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
}

impl From<NewFunction> for CreateFunction {
    fn from(f: NewFunction) -> Self {
        CreateFunction {
            account: thaw_auth::ROOT_ACCOUNT.to_string(),
            name: f.name,
            settings: f.settings,
            zip: f.zip,
            tags: f.tags,
        }
    }
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("Function not found: {0}")]
    NotFound(String),
    #[error("Function already exist: {0}")]
    AlreadyExists(String),
    #[error("The function's revision is {actual}, not {expected}")]
    RevisionMismatch { expected: String, actual: String },
    /// The configuration breaks one of Lambda's rules.
    #[error(transparent)]
    Invalid(LambdaError),
    /// Lambda's message for anything that is not a readable zip.
    #[error("Could not unzip uploaded file. Please check your file, then try to upload again.")]
    InvalidZip(#[source] zip::result::ZipError),
    #[error("Unzipped size must be smaller than {limit} bytes")]
    CodeTooLarge { limit: u64 },
    #[error("The uploaded zip file has more than {limit} entries")]
    TooManyEntries { limit: usize },
    /// An entry that would land outside the code directory or clash with another.
    #[error("Unsafe entry {entry:?} in the uploaded zip file: {reason}")]
    UnsafeEntry { entry: String, reason: &'static str },
    #[error("No free uid for another function")]
    NoFreeUid,
    #[error("Cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot load function from {path}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A `function.json` written by a newer thaw, in a format this daemon
    /// does not know (fails the daemon's start rather than hiding the
    /// function).
    #[error("{path} has record format {found}; this daemon reads formats up to {supported}")]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// Sealed environment values or their key (fails the daemon's start
    /// rather than serving functions without their variables).
    #[error("Function {function}: environment cannot be opened")]
    Secrets {
        function: String,
        #[source]
        source: crate::secrets::SecretError,
    },
}

impl RegistryError {
    /// What the caller is told: the message without host paths (the
    /// daemon's log has them).
    pub fn public_message(&self) -> String {
        match self {
            RegistryError::Io { op, source, .. } => {
                format!("Cannot {op} the function's files: {}", io_reason(source))
            }
            RegistryError::Corrupt { .. } | RegistryError::NewerFormat { .. } => {
                "The stored function cannot be loaded".to_string()
            }
            other => other.to_string(),
        }
    }

    /// Whether the caller's request was at fault (as opposed to the daemon).
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            RegistryError::Io { .. }
                | RegistryError::Corrupt { .. }
                | RegistryError::NoFreeUid
                | RegistryError::Secrets { .. }
                | RegistryError::NewerFormat { .. }
        )
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RegistryError + 'a {
    move |source| RegistryError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A directory no longer referenced by any function, kept for a while.
struct Retired {
    path: PathBuf,
    since: Instant,
    /// The uid of a deleted function: not reused while its instances may run.
    uid: Option<u32>,
}

struct State {
    functions: BTreeMap<String, FunctionRecord>,
    /// Published versions by function key, then number.
    versions: BTreeMap<String, BTreeMap<u32, FunctionRecord>>,
    retired: Vec<Retired>,
}

impl State {
    /// `$LATEST`'s record of function `name`.
    fn latest(&self, name: &str) -> Result<&FunctionRecord, RegistryError> {
        self.functions
            .get(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))
    }

    /// Whether `$LATEST` or a published version of `name` runs the code
    /// in `dir`.
    fn code_in_use(&self, name: &str, dir: &Path) -> bool {
        self.functions.get(name).is_some_and(|f| f.code_dir == dir)
            || self
                .versions
                .get(name)
                .is_some_and(|vs| vs.values().any(|v| v.code_dir == dir))
    }
}

/// The set of deployed functions. Shared (`&self`) by every request; safe to
/// call from several threads at once. Methods do blocking file I/O: call them
/// from `spawn_blocking` when they may unzip code.
pub struct Registry {
    functions_dir: PathBuf,
    state: Mutex<State>,
    grace: Duration,
    /// Seals environment values in `function.json`.
    cipher: EnvCipher,
}

impl Registry {
    /// Open the registry under `data_dir`, load every function, and clean up
    /// what a previous daemon left behind (staging and deleted directories,
    /// code directories of old revisions, temporary files).
    pub fn open(data_dir: &Path) -> Result<Registry, RegistryError> {
        let keys = crate::secrets::KeyFile(crate::secrets::default_key_file(data_dir));
        Registry::open_with_keys(data_dir, &keys)
    }

    /// [`Registry::open`] with environment values sealed under the key from
    /// `keys`.
    pub fn open_with_keys(
        data_dir: &Path,
        keys: &dyn KeySource,
    ) -> Result<Registry, RegistryError> {
        let cipher = EnvCipher::new(keys).map_err(|source| RegistryError::Secrets {
            function: "(all)".into(),
            source,
        })?;
        let dir = data_dir.join("functions");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let functions_dir = fs::canonicalize(&dir).map_err(io_err("resolve", &dir))?;
        let mut functions = BTreeMap::new();
        let mut versions = BTreeMap::new();
        let entries = fs::read_dir(&functions_dir).map_err(io_err("read", &functions_dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("read", &functions_dir))?;
            let path = entry.path();
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.starts_with(".staging-") || file_name.starts_with(".deleted-") {
                remove_dir_logged(&path);
                continue;
            }
            if file_name.starts_with('.') || !path.is_dir() {
                continue;
            }
            match load_function(&path, &file_name, &cipher) {
                Ok((record, published)) => {
                    if !published.is_empty() {
                        versions.insert(record.name.clone(), published);
                    }
                    functions.insert(record.name.clone(), record);
                }
                Err(e @ (RegistryError::Secrets { .. } | RegistryError::NewerFormat { .. })) => {
                    return Err(e)
                }
                Err(e) => {
                    let aside = functions_dir.join(format!(
                        ".corrupt-{file_name}-{}",
                        uuid::Uuid::new_v4().simple()
                    ));
                    tracing::error!(
                        function = %file_name,
                        error = %error_chain(&e),
                        moved_to = %aside.display(),
                        "cannot load function; moved it aside"
                    );
                    fs::rename(&path, &aside).map_err(io_err("move aside", &path))?;
                }
            }
        }
        tracing::info!(count = functions.len(), dir = %functions_dir.display(), "function registry loaded");
        Ok(Registry {
            functions_dir,
            state: Mutex::new(State {
                functions,
                versions,
                retired: Vec::new(),
            }),
            grace: RETIRE_GRACE,
            cipher,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every change is one insert or remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn function_dir(&self, name: &str) -> PathBuf {
        self.functions_dir.join(name)
    }

    /// The function called `name`.
    pub fn get(&self, name: &str) -> Option<FunctionRecord> {
        self.lock().functions.get(name).cloned()
    }

    /// Every function, sorted by name.
    pub fn list(&self) -> Vec<FunctionRecord> {
        self.lock().functions.values().cloned().collect()
    }

    /// The uploaded zip of `name`, as a file to read.
    pub fn code_zip_path(&self, name: &str) -> Option<PathBuf> {
        let state = self.lock();
        state
            .functions
            .contains_key(name)
            .then(|| self.function_dir(name).join("code.zip"))
    }

    /// Create a function: validate and extract its code, allocate its uid,
    /// persist it.
    pub fn create(&self, req: CreateFunction) -> Result<FunctionRecord, RegistryError> {
        req.settings.validate().map_err(RegistryError::Invalid)?;
        let key = crate::accounts::function_key(&req.account, req.name.as_str());
        let name = key.as_str();
        if self.lock().functions.contains_key(name) {
            return Err(RegistryError::AlreadyExists(name.to_string()));
        }
        self.sweep_retired();
        let staging = Staging::new(&self.functions_dir)?;
        let revision = new_revision();
        let code = stage_code(&req.zip, staging.path(), &revision, MAX_UNZIPPED_BYTES)?;

        let final_dir = self.function_dir(name);
        let mut state = self.lock();
        if state.functions.contains_key(name) {
            return Err(RegistryError::AlreadyExists(name.to_string()));
        }
        let uid = free_uid(&state)?;
        let mut record = FunctionRecord {
            name: name.to_string(),
            runtime: String::new(),
            handler: String::new(),
            memory_mb: 0,
            timeout_s: 0,
            environment: BTreeMap::new(),
            description: String::new(),
            role: String::new(),
            code_sha256: code.sha256,
            code_size: code.size,
            code_dir: final_dir.join(code_dir_name(&revision)),
            last_modified: now_lambda(),
            revision_id: revision,
            uid,
            concurrency: ConcurrencyConfig::default(),
            platform: PlatformSettings::default(),
            tags: req.tags,
            kept: Default::default(),
            version: None,
            last_version: 0,
            aliases: BTreeMap::new(),
            urls: BTreeMap::new(),
        };
        record.apply_settings(req.settings);
        write_record(staging.path(), &record, &self.cipher)?;
        fs::rename(staging.path(), &final_dir).map_err(io_err("rename", staging.path()))?;
        staging.disarm();
        sync_dir(&self.functions_dir);
        state.functions.insert(record.name.clone(), record.clone());
        drop(state);
        tracing::info!(function = %record.name, uid, revision = %record.revision_id, code_size = record.code_size, "function created");
        Ok(record)
    }

    /// Check that `zip` would be accepted as code, without changing anything.
    pub fn check_code(&self, zip: &[u8]) -> Result<(), RegistryError> {
        let staging = Staging::new(&self.functions_dir)?;
        stage_code(zip, staging.path(), &new_revision(), MAX_UNZIPPED_BYTES).map(|_| ())
    }

    /// Replace the code of `name`. With `expected_revision`, only if the
    /// function is still at that revision.
    pub fn update_code(
        &self,
        name: &str,
        zip: &[u8],
        expected_revision: Option<&str>,
    ) -> Result<FunctionRecord, RegistryError> {
        {
            let state = self.lock();
            let current = state.latest(name)?;
            check_revision(current, expected_revision)?;
        }
        self.sweep_retired();
        let staging = Staging::new(&self.functions_dir)?;
        let revision = new_revision();
        let code = stage_code(zip, staging.path(), &revision, MAX_UNZIPPED_BYTES)?;

        let dir = self.function_dir(name);
        let mut state = self.lock();
        let current = state.latest(name)?;
        check_revision(current, expected_revision)?;
        let mut record = current.clone();
        let old_code_dir =
            std::mem::replace(&mut record.code_dir, dir.join(code_dir_name(&revision)));
        record.code_sha256 = code.sha256;
        record.code_size = code.size;
        record.last_modified = now_lambda();
        record.revision_id = revision.clone();

        // Order matters for a crash in between: the new code directory is
        // unreferenced until function.json (the commit point) names it.
        let staged_code = staging.path().join(code_dir_name(&revision));
        fs::rename(&staged_code, &record.code_dir).map_err(io_err("rename", &staged_code))?;
        let staged_zip = staging.path().join("code.zip");
        let zip_path = dir.join("code.zip");
        if let Err(e) = fs::rename(&staged_zip, &zip_path) {
            remove_dir_logged(&record.code_dir);
            return Err(io_err("rename", &staged_zip)(e));
        }
        if let Err(e) = write_record(&dir, &record, &self.cipher) {
            remove_dir_logged(&record.code_dir);
            return Err(e);
        }
        state.functions.insert(name.to_string(), record.clone());
        // Published versions keep running the old code.
        if old_code_dir != record.code_dir && !state.code_in_use(name, &old_code_dir) {
            state.retired.push(Retired {
                path: old_code_dir,
                since: Instant::now(),
                uid: None,
            });
        }
        drop(state);
        tracing::info!(function = %name, revision = %record.revision_id, code_size = record.code_size, "function code updated");
        Ok(record)
    }

    /// Change the configuration of `name`: `update` maps the current settings
    /// to the new ones (it runs under the registry lock, so concurrent updates
    /// are not lost). With `expected_revision`, only if the function is still
    /// at that revision.
    pub fn update_configuration(
        &self,
        name: &str,
        expected_revision: Option<&str>,
        update: impl FnOnce(&FunctionSettings) -> Result<FunctionSettings, LambdaError>,
    ) -> Result<FunctionRecord, RegistryError> {
        let mut state = self.lock();
        let current = state.latest(name)?;
        check_revision(current, expected_revision)?;
        let settings = current.settings().map_err(RegistryError::Invalid)?;
        let settings = update(&settings).map_err(RegistryError::Invalid)?;
        settings.validate().map_err(RegistryError::Invalid)?;
        let mut record = current.clone();
        record.apply_settings(settings);
        record.last_modified = now_lambda();
        record.revision_id = new_revision();
        write_record(&self.function_dir(name), &record, &self.cipher)?;
        state.functions.insert(name.to_string(), record.clone());
        drop(state);
        tracing::info!(function = %name, revision = %record.revision_id, "function configuration updated");
        Ok(record)
    }

    /// Change the concurrency controls of `name`: `update` gets the
    /// function's current controls and every other function's (to check
    /// account-wide limits) and returns the new ones. It runs under the
    /// registry lock, so two concurrent reservations cannot both take the
    /// last of the account's concurrency. The revision does not change.
    pub fn update_concurrency(
        &self,
        name: &str,
        update: impl FnOnce(
            &ConcurrencyConfig,
            &[&FunctionRecord],
        ) -> Result<ConcurrencyConfig, LambdaError>,
    ) -> Result<FunctionRecord, RegistryError> {
        let mut state = self.lock();
        let current = state.latest(name)?;
        let others: Vec<&FunctionRecord> = state
            .functions
            .values()
            .filter(|f| f.name != name)
            .collect();
        let concurrency = update(&current.concurrency, &others).map_err(RegistryError::Invalid)?;
        if concurrency == current.concurrency {
            return Ok(current.clone());
        }
        let mut record = current.clone();
        record.concurrency = concurrency;
        write_record(&self.function_dir(name), &record, &self.cipher)?;
        state.functions.insert(name.to_string(), record.clone());
        drop(state);
        tracing::info!(function = %name, reserved = ?record.concurrency.reserved, provisioned = record.concurrency.total_provisioned(), "function concurrency updated");
        Ok(record)
    }

    /// Replace the platform settings of `name` (not part of the code
    /// revision: `revision_id` stays).
    pub fn update_platform(
        &self,
        name: &str,
        platform: PlatformSettings,
    ) -> Result<FunctionRecord, RegistryError> {
        platform.validate().map_err(RegistryError::Invalid)?;
        let mut state = self.lock();
        let current = state.latest(name)?;
        if current.platform == platform {
            return Ok(current.clone());
        }
        let mut record = current.clone();
        record.platform = platform;
        write_record(&self.function_dir(name), &record, &self.cipher)?;
        state.functions.insert(name.to_string(), record.clone());
        drop(state);
        tracing::info!(function = %name, settings = ?record.platform, "function settings updated");
        Ok(record)
    }

    /// Changes the tags of `name` with `change` (not part of the code
    /// revision: `revision_id` stays); `Invalid` when the result has too
    /// many.
    pub fn update_tags(
        &self,
        name: &str,
        change: impl FnOnce(&mut BTreeMap<String, String>),
    ) -> Result<FunctionRecord, RegistryError> {
        let mut state = self.lock();
        let current = state.latest(name)?;
        let mut record = current.clone();
        change(&mut record.tags);
        thaw_api::tags::check_count(record.tags.len()).map_err(RegistryError::Invalid)?;
        if record.tags == current.tags {
            return Ok(record);
        }
        write_record(&self.function_dir(name), &record, &self.cipher)?;
        state.functions.insert(name.to_string(), record.clone());
        drop(state);
        tracing::info!(function = %name, tags = record.tags.len(), "function tags updated");
        Ok(record)
    }

    /// Delete `name`. Its directory is moved aside at once (so the name can be
    /// reused) and removed once its instances can no longer be running.
    pub fn delete(&self, name: &str) -> Result<FunctionRecord, RegistryError> {
        self.sweep_retired();
        let mut state = self.lock();
        let record = state.latest(name)?.clone();
        let dir = self.function_dir(name);
        let grave = self
            .functions_dir
            .join(format!(".deleted-{name}-{}", uuid::Uuid::new_v4().simple()));
        match fs::rename(&dir, &grave) {
            Ok(()) => sync_dir(&self.functions_dir),
            // Removed behind our back: nothing left to keep, forget it anyway.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(function = %name, dir = %dir.display(), "function directory already gone");
            }
            Err(e) => return Err(io_err("rename", &dir)(e)),
        }
        state.functions.remove(name);
        state.versions.remove(name);
        state.retired.push(Retired {
            path: grave,
            since: Instant::now(),
            uid: Some(record.uid),
        });
        drop(state);
        tracing::info!(function = %name, "function deleted");
        Ok(record)
    }

    /// Remove retired directories whose grace period is over.
    fn sweep_retired(&self) {
        let expired: Vec<PathBuf> = {
            let mut state = self.lock();
            let grace = self.grace;
            let (old, keep): (Vec<Retired>, Vec<Retired>) = std::mem::take(&mut state.retired)
                .into_iter()
                .partition(|r| r.since.elapsed() >= grace);
            state.retired = keep;
            old.into_iter().map(|r| r.path).collect()
        };
        for path in expired {
            remove_dir_logged(&path);
        }
    }
}

fn check_revision(current: &FunctionRecord, expected: Option<&str>) -> Result<(), RegistryError> {
    match expected {
        Some(e) if e != current.revision_id => Err(RegistryError::RevisionMismatch {
            expected: e.to_string(),
            actual: current.revision_id.clone(),
        }),
        _ => Ok(()),
    }
}

fn free_uid(state: &State) -> Result<u32, RegistryError> {
    let used: BTreeSet<u32> = state
        .functions
        .values()
        .map(|f| f.uid)
        .chain(state.retired.iter().filter_map(|r| r.uid))
        .collect();
    (UID_BASE..UID_BASE + MAX_FUNCTIONS)
        .find(|uid| !used.contains(uid))
        .ok_or(RegistryError::NoFreeUid)
}

fn new_revision() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn code_dir_name(revision: &str) -> String {
    format!("code-{revision}")
}

/// Lambda's `LastModified` format.
fn now_lambda() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3f%z")
        .to_string()
}

fn remove_dir_logged(path: &Path) {
    match fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove directory"),
    }
}

/// Make a rename in `dir` durable. Failure only weakens crash safety, so it
/// is logged, not returned.
fn sync_dir(dir: &Path) {
    if let Err(e) = thaw_persist::sync_dir(dir) {
        tracing::warn!(error = %e, "cannot sync directory");
    }
}

/// Write `data` to `path` atomically and durably ([`thaw_persist::write`]).
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), RegistryError> {
    thaw_persist::write(path, data, 0o600).map_err(|e| RegistryError::Io {
        op: e.op,
        path: e.path,
        source: e.source,
    })
}

/// The format of `function.json` (and of a version's record) this daemon
/// writes. Records without a `format_version` (written before it existed)
/// are format 1: the same fields, environment values sealed or (older
/// still) in plain text. Format 3 added published versions
/// (`versions/<n>.json`, `last_version`) and aliases: a daemon of format 2
/// would drop them when it rewrote the record, so it refuses to start.
pub const RECORD_FORMAT_VERSION: u32 = 3;

/// `function.json` as stored: the record and its format.
#[derive(Serialize, Deserialize)]
struct StoredRecord {
    #[serde(default = "legacy_format")]
    format_version: u32,
    #[serde(flatten)]
    record: FunctionRecord,
}

fn legacy_format() -> u32 {
    1
}

/// Parses `function.json` of any format this daemon reads.
fn parse_record(path: &Path, json: &[u8]) -> Result<FunctionRecord, RegistryError> {
    let stored: StoredRecord =
        serde_json::from_slice(json).map_err(|e| RegistryError::Corrupt {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
    match stored.format_version {
        1..=3 => Ok(stored.record),
        found if found > RECORD_FORMAT_VERSION => Err(RegistryError::NewerFormat {
            path: path.to_path_buf(),
            found,
            supported: RECORD_FORMAT_VERSION,
        }),
        found => Err(RegistryError::Corrupt {
            path: path.to_path_buf(),
            source: format!("unknown record format {found}").into(),
        }),
    }
}

/// Writes `function.json` with every environment value sealed.
fn write_record(
    dir: &Path,
    record: &FunctionRecord,
    cipher: &EnvCipher,
) -> Result<(), RegistryError> {
    write_record_at(&dir.join("function.json"), record, cipher)
}

/// Writes a record to `path` with every environment value sealed.
fn write_record_at(
    path: &Path,
    record: &FunctionRecord,
    cipher: &EnvCipher,
) -> Result<(), RegistryError> {
    let path = path.to_path_buf();
    let mut stored = StoredRecord {
        format_version: RECORD_FORMAT_VERSION,
        record: record.clone(),
    };
    for (k, v) in stored.record.environment.iter_mut() {
        *v = cipher.seal(&record.name, k, v);
    }
    let json = serde_json::to_vec_pretty(&stored).map_err(|e| RegistryError::Corrupt {
        path: path.clone(),
        source: Box::new(e),
    })?;
    write_atomic(&path, &json)
}

/// Moves `THAW_MEMORY_MODE` and `THAW_RESEED` from a record's environment
/// (where functions once set them) to its platform settings, keeping what
/// they chose (an invalid memory mode, ignored then, is dropped with a
/// warning); whether anything moved.
fn move_settings_out_of_environment(record: &mut FunctionRecord) -> bool {
    let mut moved = false;
    if let Some(mode) = record.environment.remove("THAW_MEMORY_MODE") {
        moved = true;
        if thaw_api::function::MEMORY_MODES.contains(&mode.as_str()) {
            record.platform.memory_mode.get_or_insert(mode);
        } else {
            tracing::warn!(function = %record.name, value = %mode, "dropping an invalid THAW_MEMORY_MODE");
        }
    }
    if let Some(reseed) = record.environment.remove("THAW_RESEED") {
        moved = true;
        record.platform.reseed.get_or_insert(reseed != "0");
    }
    if moved {
        tracing::info!(function = %record.name, settings = ?record.platform, "moved THAW_MEMORY_MODE / THAW_RESEED from the environment to the function's settings");
    }
    moved
}

/// Load one function directory and its published versions, repair what can
/// be repaired (a moved data directory, a missing code directory) and
/// remove leftovers.
fn load_function(
    dir: &Path,
    dir_name: &str,
    cipher: &EnvCipher,
) -> Result<(FunctionRecord, BTreeMap<u32, FunctionRecord>), RegistryError> {
    let json_path = dir.join("function.json");
    let mut record = load_record(dir, &json_path, dir_name, &dir.join("code.zip"), cipher)?;
    let published = versions::load(dir, &mut record, cipher)?;
    versions::remove_stray_zips(dir, &published);
    let in_use: BTreeSet<PathBuf> = std::iter::once(record.code_dir.clone())
        .chain(published.values().map(|v| v.code_dir.clone()))
        .collect();
    for entry in fs::read_dir(dir).map_err(io_err("read", dir))? {
        let entry = entry.map_err(io_err("read", dir))?;
        let n = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if n.starts_with("code-") && !in_use.contains(&path) {
            remove_dir_logged(&path);
        } else if n.starts_with('.') && n.contains(".tmp-") {
            if path.is_dir() {
                remove_dir_logged(&path);
            } else {
                let _ = fs::remove_file(&path);
            }
        }
    }
    Ok((record, published))
}

/// Load one record (`$LATEST`'s `function.json` or a version's) of the
/// function in `dir`, opening its sealed values, and repair what can be
/// repaired: a moved data directory, a missing code directory (extracted
/// again from `zip`).
fn load_record(
    dir: &Path,
    json_path: &Path,
    dir_name: &str,
    zip_path: &Path,
    cipher: &EnvCipher,
) -> Result<FunctionRecord, RegistryError> {
    let corrupt = |why: String| RegistryError::Corrupt {
        path: json_path.to_path_buf(),
        source: why.into(),
    };
    let json = fs::read(json_path).map_err(io_err("read", json_path))?;
    let mut record = parse_record(json_path, &json)?;
    if record.name != dir_name {
        return Err(corrupt(format!(
            "the record names {:?}, not {dir_name:?}",
            record.name
        )));
    }
    let mut had_plaintext = false;
    let name = record.name.clone();
    for (k, v) in record.environment.iter_mut() {
        let opened = cipher
            .open(&name, k, v)
            .map_err(|source| RegistryError::Secrets {
                function: name.clone(),
                source,
            })?;
        had_plaintext |= opened == *v;
        *v = opened;
    }
    let moved = move_settings_out_of_environment(&mut record);
    if had_plaintext || moved {
        // Written before values were sealed, or before the platform
        // settings left the environment: store it as it is now.
        write_record_at(json_path, &record, cipher)?;
    }
    record
        .function_name()
        .and_then(|_| record.settings())
        .map_err(|e| corrupt(e.message))?;
    let code_name = record
        .code_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.starts_with("code-"))
        .ok_or_else(|| corrupt(format!("bad code_dir {}", record.code_dir.display())))?;
    let expected = dir.join(&code_name);
    if record.code_dir != expected {
        // The data directory was moved: keep the record pointing into it.
        record.code_dir = expected;
        write_record_at(json_path, &record, cipher)?;
    }
    if !record.code_dir.is_dir() {
        let zip = fs::read(zip_path).map_err(io_err("read", zip_path))?;
        tracing::warn!(function = %record.name, version = ?record.version, "code directory missing; extracting the code zip again");
        let tmp = dir.join(format!(
            ".{code_name}.tmp-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let unpacked = unpack_zip(&zip, &tmp, MAX_UNZIPPED_BYTES)
            .and_then(|()| fs::rename(&tmp, &record.code_dir).map_err(io_err("rename", &tmp)));
        if let Err(e) = unpacked {
            remove_dir_logged(&tmp);
            return Err(e);
        }
    }
    Ok(record)
}

/// A directory under `functions/` removed on drop unless disarmed.
struct Staging {
    path: PathBuf,
    armed: bool,
}

impl Staging {
    fn new(functions_dir: &Path) -> Result<Staging, RegistryError> {
        let path = functions_dir.join(format!(".staging-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir(&path).map_err(io_err("create", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", &path))?;
        Ok(Staging { path, armed: true })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            remove_dir_logged(&self.path);
        }
    }
}

struct StagedCode {
    sha256: String,
    size: u64,
}

/// Validate and extract `zip` into `staging/code-<revision>/` and store it as
/// `staging/code.zip`.
fn stage_code(
    zip: &[u8],
    staging: &Path,
    revision: &str,
    limit: u64,
) -> Result<StagedCode, RegistryError> {
    let code_dir = staging.join(code_dir_name(revision));
    unpack_zip(zip, &code_dir, limit)?;
    // One syncfs instead of an fsync per file: a Node.js function has
    // thousands of small files.
    if let Err(e) =
        File::open(&code_dir).and_then(|d| nix::unistd::syncfs(&d).map_err(io::Error::from))
    {
        tracing::warn!(error = %e, "cannot sync extracted code");
    }
    let zip_path = staging.join("code.zip");
    (|| {
        let mut f = File::create(&zip_path)?;
        f.write_all(zip)?;
        f.sync_all()
    })()
    .map_err(io_err("write", &zip_path))?;
    Ok(StagedCode {
        sha256: STANDARD.encode(Sha256::digest(zip)),
        size: zip.len() as u64,
    })
}

const S_IFMT: u32 = 0o170_000;
const S_IFLNK: u32 = 0o120_000;

/// The kernel's reason for `e`, without the paths some errors carry.
fn io_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code).to_string(),
        None => format!("{:?}", e.kind()),
    }
}

/// Longest name of one path component (Linux's `NAME_MAX`).
const MAX_ENTRY_COMPONENT: usize = 255;
/// Longest zip entry name, and most directories deep, an entry may be: far
/// beyond real packages, well inside `PATH_MAX` once under the data dir.
const MAX_ENTRY_NAME: usize = 1024;
const MAX_ENTRY_DEPTH: usize = 64;

/// The path of a zip entry relative to the code directory, or why it is unsafe.
/// Empty for entries that name the root itself (`./`).
fn entry_path(name: &str) -> Result<PathBuf, &'static str> {
    if name.contains('\0') {
        return Err("the name contains a NUL byte");
    }
    if name.starts_with('/') {
        return Err("absolute path");
    }
    if name.len() > MAX_ENTRY_NAME {
        return Err("the name is longer than 1024 bytes");
    }
    let mut rel = PathBuf::new();
    let mut depth = 0;
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("the path contains `..`"),
            p if p.len() > MAX_ENTRY_COMPONENT => {
                return Err("a path component is longer than 255 bytes")
            }
            p => {
                depth += 1;
                if depth > MAX_ENTRY_DEPTH {
                    return Err("the path is more than 64 directories deep");
                }
                rel.push(p)
            }
        }
    }
    Ok(rel)
}

fn unsafe_entry(entry: &str, reason: &'static str) -> RegistryError {
    // Echo a long name shortened: the message is for a person.
    let mut shown: String = entry.chars().take(120).collect();
    if shown.len() < entry.len() {
        shown.push_str("...");
    }
    RegistryError::UnsafeEntry {
        entry: shown,
        reason,
    }
}

/// Permission bits for an extracted file. The function runs as its own uid,
/// which does not own the files, so everything is made world-readable and
/// an execute bit anywhere (e.g. a custom runtime's `bootstrap`) becomes
/// executable for everyone. Set-id and sticky bits are dropped.
fn file_mode(zip_mode: Option<u32>) -> u32 {
    match zip_mode {
        Some(m) if m & 0o111 != 0 => 0o755,
        _ => 0o644,
    }
}

/// Create the directories of `rel` under `root`, refusing to pass through
/// anything that is not a real directory (in particular a symbolic link).
fn ensure_dirs(root: &Path, rel: &Path, entry: &str) -> Result<(), RegistryError> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(unsafe_entry(
                    entry,
                    "a parent of the path is not a directory",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(io_err("create", &cur))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                    .map_err(io_err("chmod", &cur))?;
            }
            Err(e) => return Err(io_err("inspect", &cur)(e)),
        }
    }
    Ok(())
}

/// Extract `zip` into the new directory `dest`, enforcing: no entry outside
/// `dest` (absolute paths, `..`, writing through links), no symbolic link
/// that resolves outside `dest`, at most `limit` bytes actually written
/// (headers can lie), at most [`MAX_ZIP_ENTRIES`] entries.
fn unpack_zip(zip: &[u8], dest: &Path, limit: u64) -> Result<(), RegistryError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(zip)).map_err(RegistryError::InvalidZip)?;
    if archive.len() > MAX_ZIP_ENTRIES {
        return Err(RegistryError::TooManyEntries {
            limit: MAX_ZIP_ENTRIES,
        });
    }
    fs::create_dir(dest).map_err(io_err("create", dest))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o755)).map_err(io_err("chmod", dest))?;

    let mut written: u64 = 0;
    let mut links: Vec<(String, PathBuf, String)> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(RegistryError::InvalidZip)?;
        let name = entry.name().to_string();
        let rel = entry_path(&name).map_err(|why| unsafe_entry(&name, why))?;
        let mode = entry.unix_mode();
        if mode.is_some_and(|m| m & S_IFMT == S_IFLNK) {
            let mut target = String::new();
            entry
                .by_ref()
                .take(MAX_LINK_TARGET + 1)
                .read_to_string(&mut target)
                .map_err(|e| RegistryError::InvalidZip(e.into()))?;
            if rel.as_os_str().is_empty() {
                return Err(unsafe_entry(
                    &name,
                    "a symbolic link cannot replace the root",
                ));
            }
            links.push((name, rel, target));
            continue;
        }
        if entry.is_dir() {
            ensure_dirs(dest, &rel, &name)?;
            continue;
        }
        if rel.as_os_str().is_empty() {
            return Err(unsafe_entry(&name, "a file cannot replace the root"));
        }
        if let Some(parent) = rel.parent() {
            ensure_dirs(dest, parent, &name)?;
        }
        let path = dest.join(&rel);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            return Err(unsafe_entry(&name, "a file and a directory share the path"));
        }
        // O_NOFOLLOW: never write through a link, whatever got there first.
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err("create", &path))?;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RegistryError::InvalidZip(e.into())),
            };
            written += n as u64;
            if written > limit {
                return Err(RegistryError::CodeTooLarge { limit });
            }
            out.write_all(&buf[..n]).map_err(io_err("write", &path))?;
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(file_mode(mode)))
            .map_err(io_err("chmod", &path))?;
    }

    // Links last, so no entry can be written through one.
    for (name, rel, target) in &links {
        if target.is_empty() || target.len() as u64 > MAX_LINK_TARGET || target.contains('\0') {
            return Err(unsafe_entry(name, "invalid symbolic link target"));
        }
        if target.starts_with('/') {
            return Err(unsafe_entry(name, "symbolic link to an absolute path"));
        }
        if let Some(parent) = rel.parent() {
            ensure_dirs(dest, parent, name)?;
        }
        let path = dest.join(rel);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(unsafe_entry(name, "duplicate entry"));
        }
        std::os::unix::fs::symlink(target, &path).map_err(io_err("create link", &path))?;
    }
    for (name, rel, _) in &links {
        if !link_stays_inside(dest, rel) {
            return Err(unsafe_entry(
                name,
                "symbolic link that points outside the code directory",
            ));
        }
    }
    Ok(())
}

/// Whether the link at `root/link` resolves inside `root`, following links
/// inside the tree as the kernel would. Missing components are resolved
/// lexically.
fn link_stays_inside(root: &Path, link: &Path) -> bool {
    let mut stack: Vec<OsString> = link
        .parent()
        .map(|p| p.iter().map(OsString::from).collect())
        .unwrap_or_default();
    let mut pending: VecDeque<OsString> = VecDeque::new();
    let mut hops = 0;
    let mut current_link = root.join(link);
    loop {
        let Ok(target) = fs::read_link(&current_link) else {
            return false;
        };
        hops += 1;
        if hops > MAX_LINK_HOPS {
            return false;
        }
        // Replace the link by its target's components.
        let mut front = VecDeque::new();
        for c in target.components() {
            match c {
                Component::Normal(n) => front.push_back(n.to_os_string()),
                Component::ParentDir => front.push_back(OsString::from("..")),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => return false,
            }
        }
        front.append(&mut pending);
        pending = front;

        let mut next_link = None;
        while let Some(c) = pending.pop_front() {
            if c == ".." {
                if stack.pop().is_none() {
                    return false;
                }
                continue;
            }
            stack.push(c);
            let here: PathBuf = root.join(stack.iter().collect::<PathBuf>());
            if fs::symlink_metadata(&here).is_ok_and(|m| m.file_type().is_symlink()) {
                stack.pop();
                next_link = Some(here);
                break;
            }
        }
        match next_link {
            Some(l) => current_link = l,
            None => return true,
        }
    }
}

/// A record for unit tests: `name` at `revision`, Python, 128 MB, no code.
#[cfg(test)]
pub(crate) fn test_record(name: &str, revision: &str) -> FunctionRecord {
    FunctionRecord {
        name: name.into(),
        runtime: "python3.11".into(),
        handler: "app.handler".into(),
        memory_mb: 128,
        timeout_s: 3,
        environment: Default::default(),
        description: String::new(),
        role: String::new(),
        code_sha256: String::new(),
        code_size: 0,
        code_dir: std::path::PathBuf::from("/nonexistent"),
        last_modified: String::new(),
        revision_id: revision.into(),
        uid: 0,
        concurrency: Default::default(),
        platform: Default::default(),
        tags: Default::default(),
        kept: Default::default(),
        version: None,
        last_version: 0,
        aliases: Default::default(),
        urls: Default::default(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use thaw_api::ErrorCode;
    use zip::write::SimpleFileOptions;

    use super::*;

    enum E<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str),
        Link(&'a str, &'a str),
    }

    fn make_zip(entries: &[E<'_>]) -> Vec<u8> {
        let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for e in entries {
            match e {
                E::File(name, data, mode) => {
                    z.start_file(*name, SimpleFileOptions::default().unix_permissions(*mode))
                        .unwrap();
                    z.write_all(data).unwrap();
                }
                E::Dir(name) => z
                    .add_directory(*name, SimpleFileOptions::default())
                    .unwrap(),
                E::Link(name, target) => z
                    .add_symlink(*name, *target, SimpleFileOptions::default())
                    .unwrap(),
            }
        }
        z.finish().unwrap().into_inner()
    }

    pub(crate) fn app_zip(body: &str) -> Vec<u8> {
        make_zip(&[E::File("app.py", body.as_bytes(), 0o644)])
    }

    pub(crate) fn new_fn(name: &str, zip: Vec<u8>) -> CreateFunction {
        CreateFunction {
            account: thaw_auth::ROOT_ACCOUNT.to_string(),
            name: FunctionName::parse(name).unwrap(),
            settings: FunctionSettings::new(Runtime::Python311, "app.handler"),
            zip,
            tags: BTreeMap::new(),
        }
    }

    /// The key the golden records' environment values are sealed under.
    struct FixtureKey;

    impl KeySource for FixtureKey {
        fn key(&self) -> Result<[u8; 32], crate::secrets::SecretError> {
            Ok([7u8; 32])
        }
    }

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/registry")
    }

    /// A data dir holding the golden function `hello` of format `version`.
    fn golden_data_dir(version: &str) -> tempfile::TempDir {
        let data = tempfile::tempdir().unwrap();
        let dest = data.path().join("functions/hello");
        fs::create_dir_all(&dest).unwrap();
        for f in [
            "function.json",
            "code.zip",
            "versions/1.json",
            "versions/1.zip",
        ] {
            let from = fixtures().join(version).join("hello").join(f);
            if from.exists() {
                fs::create_dir_all(dest.join(f).parent().unwrap()).unwrap();
                fs::copy(from, dest.join(f)).unwrap();
            }
        }
        data
    }

    /// Every committed format of `function.json` loads with the current
    /// code: format 1 (no `format_version`; plain-text environment, from
    /// before sealing) and format 2 (sealed values, reserved concurrency).
    /// Each is rewritten in the current format when the daemon repairs it
    /// (the committed records name a code directory of another data dir).
    #[test]
    fn golden_function_records_load() {
        for version in ["v1", "v2", "v3"] {
            let data = golden_data_dir(version);
            let reg = Registry::open_with_keys(data.path(), &FixtureKey).unwrap();
            let f = reg
                .get("hello")
                .unwrap_or_else(|| panic!("{version}: not loaded"));
            assert_eq!(f.runtime, "python3.11", "{version}");
            assert_eq!(f.handler, "app.handler", "{version}");
            assert_eq!((f.memory_mb, f.timeout_s), (256, 10), "{version}");
            assert_eq!(f.environment["GREETING"], "hi", "{version}");
            assert_eq!(f.description, "golden", "{version}");
            assert!(
                f.code_dir.join("app.py").is_file(),
                "{version}: code re-extracted"
            );
            let expected_reserved = (version != "v1").then_some(5);
            assert_eq!(f.concurrency.reserved, expected_reserved, "{version}");
            let stored: serde_json::Value = serde_json::from_slice(
                &fs::read(data.path().join("functions/hello/function.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(stored["format_version"], RECORD_FORMAT_VERSION, "{version}");
            let sealed = stored["environment"]["GREETING"].as_str().unwrap();
            assert!(sealed.starts_with("thaw-sealed:"), "{version}: {sealed}");
            if version == "v3" {
                // Version 1 (with its own code and sealed environment) and
                // the alias `live` on it.
                assert_eq!(f.last_version, 1);
                let v1 = reg.version("hello", 1).expect("version 1");
                assert_eq!(v1.environment["GREETING"], "hi");
                assert_eq!(v1.description, "first");
                assert!(v1.code_dir.join("app.py").is_file());
                assert_eq!(f.aliases["live"].version, Some(1));
                assert_eq!(f.aliases["live"].description, "golden alias");
            }
        }
    }

    #[test]
    fn a_record_of_a_newer_format_stops_the_start() {
        let data = golden_data_dir("v2");
        let path = data.path().join("functions/hello/function.json");
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        v["format_version"] = serde_json::json!(RECORD_FORMAT_VERSION + 1);
        fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        match Registry::open_with_keys(data.path(), &FixtureKey) {
            Err(RegistryError::NewerFormat { found, .. }) => {
                assert_eq!(found, RECORD_FORMAT_VERSION + 1)
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a newer record was read"),
        }
        assert!(path.is_file(), "the record must stay where it is");
    }

    /// Writes the golden record of the current format into
    /// `tests/fixtures/registry/v<RECORD_FORMAT_VERSION>` (run by hand,
    /// with `--ignored`, only when adding a format: never overwrite a
    /// committed one).
    #[test]
    #[ignore]
    fn write_golden_function_record() {
        let data = tempfile::tempdir().unwrap();
        let reg = Registry::open_with_keys(data.path(), &FixtureKey).unwrap();
        let mut create = new_fn(
            "hello",
            app_zip("def handler(e, c):\n    return {'hi': e}\n"),
        );
        create.settings.memory_mb = 256;
        create.settings.timeout_s = 10;
        create.settings.description = "golden".into();
        create
            .settings
            .environment
            .insert("GREETING".into(), "hi".into());
        reg.create(create).unwrap();
        reg.update_concurrency("hello", |c, _| {
            Ok(ConcurrencyConfig {
                reserved: Some(5),
                ..c.clone()
            })
        })
        .unwrap();
        reg.publish_version("hello", None, Some("first".into()), None)
            .unwrap();
        reg.put_alias("hello", "live", true, None, |_| AliasRecord {
            version: Some(1),
            description: "golden alias".into(),
            routing: Vec::new(),
            revision_id: String::new(),
        })
        .unwrap();
        let out = fixtures().join(format!("v{RECORD_FORMAT_VERSION}/hello"));
        assert!(
            !out.exists(),
            "{} exists: never overwrite a golden record",
            out.display()
        );
        fs::create_dir_all(out.join("versions")).unwrap();
        for f in [
            "function.json",
            "code.zip",
            "versions/1.json",
            "versions/1.zip",
        ] {
            fs::copy(reg.functions_dir.join("hello").join(f), out.join(f)).unwrap();
        }
    }

    /// A record written when the memory mode and reseeding were chosen by
    /// the function's `THAW_MEMORY_MODE` / `THAW_RESEED` variables loads
    /// with them as its settings, out of its environment, and is stored so.
    #[test]
    fn settings_once_in_the_environment_become_settings() {
        let data = tempfile::tempdir().unwrap();
        let mut create = new_fn("old", app_zip("def handler(e, c):\n    return e\n"));
        create
            .settings
            .environment
            .insert("KEEP".into(), "me".into());
        open(data.path()).create(create).unwrap();
        let json_path = data.path().join("functions/old/function.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&fs::read(&json_path).unwrap()).unwrap();
        let env = v["environment"].as_object_mut().unwrap();
        env.insert("THAW_MEMORY_MODE".into(), "eager".into());
        env.insert("THAW_RESEED".into(), "0".into());
        fs::write(&json_path, serde_json::to_vec(&v).unwrap()).unwrap();

        let r = open(data.path()).get("old").unwrap();
        assert_eq!(r.platform.memory_mode.as_deref(), Some("eager"));
        assert_eq!(r.platform.reseed, Some(false));
        assert_eq!(r.environment.keys().collect::<Vec<_>>(), vec!["KEEP"]);
        let stored = String::from_utf8(fs::read(&json_path).unwrap()).unwrap();
        assert!(!stored.contains("THAW_MEMORY_MODE"), "{stored}");
        assert_eq!(open(data.path()).get("old").unwrap(), r);
    }

    pub(crate) fn open(dir: &Path) -> Registry {
        Registry::open(dir).unwrap()
    }

    fn unpack(zip: &[u8], limit: u64) -> (tempfile::TempDir, Result<(), RegistryError>) {
        let dir = tempfile::tempdir().unwrap();
        let r = unpack_zip(zip, &dir.path().join("code"), limit);
        (dir, r)
    }

    #[test]
    fn create_get_list_persist() {
        let data = tempfile::tempdir().unwrap();
        let reg = open(data.path());
        let zip = app_zip("def handler(e, c):\n    return 1\n");
        let a = reg.create(new_fn("b-fn", zip.clone())).unwrap();
        let b = reg.create(new_fn("a-fn", zip.clone())).unwrap();
        assert_eq!(a.code_size, zip.len() as u64);
        assert_eq!(a.code_sha256, STANDARD.encode(Sha256::digest(&zip)));
        assert_eq!(a.memory_mb, 128);
        assert_eq!(a.timeout_s, 3);
        assert!(a.last_modified.ends_with("+0000"), "{}", a.last_modified);
        assert_ne!(a.uid, b.uid);
        assert!(a.uid >= UID_BASE && b.uid >= UID_BASE);
        assert!(a.code_dir.join("app.py").is_file());
        let dir = reg.functions_dir.join("b-fn");
        assert!(dir.join("function.json").is_file() && dir.join("code.zip").is_file());
        assert_eq!(fs::read(dir.join("code.zip")).unwrap(), zip);
        assert_eq!(reg.get("b-fn"), Some(a.clone()));
        assert_eq!(
            reg.list()
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            ["a-fn", "b-fn"]
        );
        assert_eq!(
            reg.code_zip_path("a-fn"),
            Some(reg.functions_dir.join("a-fn/code.zip"))
        );
        assert!(reg.get("nope").is_none() && reg.code_zip_path("nope").is_none());
        drop(reg);

        let reg = open(data.path());
        assert_eq!(reg.get("b-fn"), Some(a));
        assert_eq!(reg.list().len(), 2);
        // No staging directory is left behind.
        let names: Vec<String> = fs::read_dir(&reg.functions_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }

    #[test]
    fn conflicts_and_not_found() {
        let data = tempfile::tempdir().unwrap();
        let reg = open(data.path());
        reg.create(new_fn("f", app_zip("x = 1"))).unwrap();
        let e = reg.create(new_fn("f", app_zip("x = 2"))).unwrap_err();
        assert!(
            matches!(e, RegistryError::AlreadyExists(ref n) if n == "f"),
            "{e}"
        );
        assert_eq!(e.to_string(), "Function already exist: f");
        assert!(matches!(
            reg.update_code("g", &app_zip("x"), None),
            Err(RegistryError::NotFound(_))
        ));
        assert!(matches!(
            reg.update_configuration("g", None, |s| Ok(s.clone())),
            Err(RegistryError::NotFound(_))
        ));
        assert!(matches!(reg.delete("g"), Err(RegistryError::NotFound(_))));
    }

    #[test]
    fn concurrent_creates_of_one_name() {
        let data = tempfile::tempdir().unwrap();
        let reg = Arc::new(open(data.path()));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let reg = reg.clone();
                std::thread::spawn(move || reg.create(new_fn("same", app_zip(&format!("x = {i}")))))
            })
            .collect();
        let ok = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(Result::is_ok)
            .count();
        assert_eq!(ok, 1);
        assert_eq!(reg.list().len(), 1);
    }

    #[test]
    fn update_code_and_configuration() {
        let data = tempfile::tempdir().unwrap();
        let reg = open(data.path());
        let v1 = reg.create(new_fn("f", app_zip("v = 1"))).unwrap();
        let v2 = reg.update_code("f", &app_zip("v = 2"), None).unwrap();
        assert_ne!(v2.revision_id, v1.revision_id);
        assert_ne!(v2.code_sha256, v1.code_sha256);
        assert_ne!(v2.code_dir, v1.code_dir);
        assert_eq!(v2.uid, v1.uid);
        assert_eq!(
            fs::read_to_string(v2.code_dir.join("app.py")).unwrap(),
            "v = 2"
        );
        // The old revision stays for instances that still run it.
        assert!(v1.code_dir.is_dir());

        let stale = reg.update_code("f", &app_zip("v = 3"), Some(&v1.revision_id));
        assert!(matches!(stale, Err(RegistryError::RevisionMismatch { .. })));

        let v3 = reg
            .update_configuration("f", Some(&v2.revision_id), |s| {
                let mut s = s.clone();
                s.memory_mb = 512;
                s.environment.insert("A".into(), "1".into());
                Ok(s)
            })
            .unwrap();
        assert_eq!(v3.memory_mb, 512);
        assert_eq!(v3.environment["A"], "1");
        assert_eq!(v3.code_dir, v2.code_dir);
        assert_ne!(v3.revision_id, v2.revision_id);
        assert_eq!(v3.uid, v1.uid);

        let bad = reg.update_configuration("f", None, |s| {
            let mut s = s.clone();
            s.timeout_s = 901;
            Ok(s)
        });
        match bad {
            Err(RegistryError::Invalid(e)) => assert_eq!(e.code, ErrorCode::Validation),
            other => panic!("{other:?}"),
        }
        assert_eq!(reg.get("f").unwrap(), v3);
        drop(reg);

        // Reopen: old code directories are gone, the current one remains.
        let reg = open(data.path());
        assert_eq!(reg.get("f").unwrap(), v3);
        assert!(!v1.code_dir.exists());
        assert!(v3.code_dir.join("app.py").is_file());
    }

    #[test]
    fn delete_frees_the_name_and_later_the_uid() {
        let data = tempfile::tempdir().unwrap();
        let mut reg = open(data.path());
        let a = reg.create(new_fn("a", app_zip("a"))).unwrap();
        let b = reg.create(new_fn("b", app_zip("b"))).unwrap();
        assert_eq!((a.uid, b.uid), (UID_BASE, UID_BASE + 1));
        let gone = reg.delete("a").unwrap();
        assert_eq!(gone.name, "a");
        assert!(reg.get("a").is_none());
        assert!(!reg.functions_dir.join("a").exists());
        // Still inside its grace period: neither the code nor the uid is reused.
        assert!(!a.code_dir.exists());
        let c = reg.create(new_fn("a", app_zip("again"))).unwrap();
        assert_eq!(c.uid, UID_BASE + 2);
        reg.grace = Duration::ZERO;
        reg.delete("a").unwrap();
        let d = reg.create(new_fn("d", app_zip("d"))).unwrap();
        assert_eq!(d.uid, UID_BASE);
        drop(reg);
        let reg = open(data.path());
        let left: Vec<String> = fs::read_dir(&reg.functions_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.iter().all(|n| !n.starts_with(".deleted-")), "{left:?}");
    }

    #[test]
    fn open_cleans_up_and_repairs() {
        let data = tempfile::tempdir().unwrap();
        let reg = open(data.path());
        let f = reg.create(new_fn("f", app_zip("v = 1"))).unwrap();
        let dir = reg.functions_dir.clone();
        drop(reg);
        fs::create_dir(dir.join(".staging-leftover")).unwrap();
        fs::create_dir(dir.join("f/code-stale")).unwrap();
        fs::write(dir.join("f/.function.json.tmp-x"), "{").unwrap();
        fs::create_dir(dir.join("broken")).unwrap();
        fs::write(dir.join("broken/function.json"), "not json").unwrap();
        fs::remove_dir_all(&f.code_dir).unwrap();

        let reg = open(data.path());
        assert!(!dir.join(".staging-leftover").exists());
        assert!(!dir.join("f/code-stale").exists());
        assert!(!dir.join("f/.function.json.tmp-x").exists());
        assert!(reg.get("broken").is_none());
        assert!(!dir.join("broken").exists());
        assert!(fs::read_dir(&dir).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".corrupt-broken-")));
        // The missing code directory was extracted again from code.zip.
        assert_eq!(
            fs::read_to_string(f.code_dir.join("app.py")).unwrap(),
            "v = 1"
        );
        // The name of a corrupt function can be used again.
        reg.create(new_fn("broken", app_zip("ok"))).unwrap();
    }

    #[test]
    fn invalid_zip_and_invalid_settings() {
        let data = tempfile::tempdir().unwrap();
        let reg = open(data.path());
        let e = reg
            .create(new_fn("f", b"this is not a zip".to_vec()))
            .unwrap_err();
        assert!(matches!(e, RegistryError::InvalidZip(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "Could not unzip uploaded file. Please check your file, then try to upload again."
        );
        let mut truncated = app_zip("x = 1");
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(
            reg.create(new_fn("f", truncated)),
            Err(RegistryError::InvalidZip(_))
        ));
        let mut req = new_fn("f", app_zip("x"));
        req.settings.memory_mb = 64;
        assert!(matches!(reg.create(req), Err(RegistryError::Invalid(_))));
        assert!(reg.list().is_empty());
        assert!(reg.check_code(&app_zip("x")).is_ok());
        assert!(reg.check_code(b"nope").is_err());
    }

    #[test]
    fn zip_slip_is_rejected() {
        for name in ["../evil", "/etc/evil", "a/../../evil", "./../evil"] {
            let zip = make_zip(&[E::File(name, b"x", 0o644)]);
            let (dir, r) = unpack(&zip, MAX_UNZIPPED_BYTES);
            assert!(
                matches!(r, Err(RegistryError::UnsafeEntry { .. })),
                "{name}: {r:?}"
            );
            assert!(!dir.path().join("evil").exists());
        }
        // `a/./b` and `./c` are harmless spellings.
        let zip = make_zip(&[E::File("a/./b", b"x", 0o644), E::File("./c", b"y", 0o644)]);
        let (dir, r) = unpack(&zip, MAX_UNZIPPED_BYTES);
        r.unwrap();
        assert!(dir.path().join("code/a/b").is_file() && dir.path().join("code/c").is_file());
    }

    #[test]
    fn symlinks_inside_are_kept_outside_rejected() {
        let ok = make_zip(&[
            E::File("lib/real.js", b"x", 0o644),
            E::Link("node_modules/.bin/tool", "../../lib/real.js"),
            E::Link("here", "lib"),
            E::Link("dangling", "missing/file"),
        ]);
        let (dir, r) = unpack(&ok, MAX_UNZIPPED_BYTES);
        r.unwrap();
        let code = dir.path().join("code");
        assert_eq!(
            fs::read_to_string(code.join("node_modules/.bin/tool")).unwrap(),
            "x"
        );
        assert!(fs::symlink_metadata(code.join("here"))
            .unwrap()
            .file_type()
            .is_symlink());

        let bad: Vec<Vec<E<'_>>> = vec![
            vec![E::Link("etc", "/etc")],
            vec![E::Link("up", "..")],
            vec![E::Link("a/up", "../../x")],
            // Each link alone stays inside, together they escape.
            vec![E::Link("b", "."), E::Link("a", "b/../x")],
            vec![E::Link("d/self", ".."), E::Link("d/esc", "self/../x")],
            // A link that a later entry would write through.
            vec![E::Link("dir", "/tmp"), E::File("dir/x", b"x", 0o644)],
            vec![E::Link("loop1", "loop2"), E::Link("loop2", "loop1")],
        ];
        for entries in bad {
            let zip = make_zip(&entries);
            let (_dir, r) = unpack(&zip, MAX_UNZIPPED_BYTES);
            assert!(matches!(r, Err(RegistryError::UnsafeEntry { .. })), "{r:?}");
        }
    }

    #[test]
    fn unzipped_size_counts_bytes_written() {
        let big = vec![0u8; 4096];
        let zip = make_zip(&[E::File("a", &big, 0o644), E::File("b", &big, 0o644)]);
        let (_d, r) = unpack(&zip, 8192);
        r.unwrap();
        let (_d, r) = unpack(&zip, 8191);
        assert!(
            matches!(r, Err(RegistryError::CodeTooLarge { limit: 8191 })),
            "{r:?}"
        );
        assert_eq!(
            RegistryError::CodeTooLarge {
                limit: MAX_UNZIPPED_BYTES
            }
            .to_string(),
            "Unzipped size must be smaller than 262144000 bytes"
        );
    }

    #[test]
    fn permission_bits() {
        let zip = make_zip(&[
            E::File("bootstrap", b"#!/bin/sh\n", 0o744),
            E::File("secret.txt", b"x", 0o600),
            E::File("setuid", b"x", 0o4755),
            E::Dir("private/"),
            E::File("private/f", b"x", 0o644),
        ]);
        let (dir, r) = unpack(&zip, MAX_UNZIPPED_BYTES);
        r.unwrap();
        let mode = |p: &str| {
            fs::metadata(dir.path().join("code").join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("bootstrap"), 0o755);
        assert_eq!(mode("secret.txt"), 0o644);
        assert_eq!(mode("setuid"), 0o755);
        assert_eq!(mode("private"), 0o755);
        assert_eq!(mode(""), 0o755);
    }

    #[test]
    fn file_and_directory_clash() {
        let zip = make_zip(&[E::Dir("x/"), E::File("x", b"1", 0o644)]);
        let (_d, r) = unpack(&zip, MAX_UNZIPPED_BYTES);
        assert!(matches!(r, Err(RegistryError::UnsafeEntry { .. })), "{r:?}");
        let zip = make_zip(&[E::File("x", b"1", 0o644), E::File("x/y", b"1", 0o644)]);
        let (_d, r) = unpack(&zip, MAX_UNZIPPED_BYTES);
        assert!(matches!(r, Err(RegistryError::UnsafeEntry { .. })), "{r:?}");
    }

    #[test]
    fn concurrency_persists_without_changing_the_revision() {
        let data = tempfile::tempdir().unwrap();
        let reg = open(data.path());
        let f = reg
            .create(new_fn(
                "conc",
                app_zip("def handler(e, c):\n    return 1\n"),
            ))
            .unwrap();
        let json = fs::read_to_string(data.path().join("functions/conc/function.json")).unwrap();
        assert!(
            !json.contains("concurrency"),
            "nothing set, nothing written: {json}"
        );
        reg.create(new_fn("other", app_zip("x = 1\n"))).unwrap();
        let r = reg
            .update_concurrency("conc", |cur, others| {
                assert!(cur.is_empty());
                assert_eq!(others.len(), 1);
                assert_eq!(others[0].name, "other");
                Ok(ConcurrencyConfig {
                    reserved: Some(3),
                    provisioned: BTreeMap::from([(
                        "1".to_string(),
                        ProvisionedSetting {
                            requested: 2,
                            last_modified: "2026-01-01T00:00:00.000+0000".into(),
                        },
                    )]),
                })
            })
            .unwrap();
        assert_eq!(r.revision_id, f.revision_id);
        assert_eq!(r.last_modified, f.last_modified);
        let e = reg
            .update_concurrency("conc", |_, _| Err(LambdaError::invalid_parameter("no")))
            .unwrap_err();
        assert!(matches!(e, RegistryError::Invalid(_)));
        assert!(matches!(
            reg.update_concurrency("nope", |c, _| Ok(c.clone())),
            Err(RegistryError::NotFound(_))
        ));
        // Code and configuration updates keep it; a restart finds it.
        let r = reg.update_code("conc", &app_zip("y = 2\n"), None).unwrap();
        assert_eq!(r.concurrency.reserved, Some(3));
        drop(reg);
        let reg = open(data.path());
        let c = reg.get("conc").unwrap().concurrency;
        assert_eq!(c.reserved, Some(3));
        assert_eq!(c.provisioned["1"].requested, 2);
        assert_eq!(c.total_provisioned(), 2);
    }

    /// A `function.json` as daemons before concurrency controls wrote it
    /// still loads (as "no controls"), and is not rewritten.
    #[test]
    fn records_without_concurrency_still_load() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("functions/legacy");
        fs::create_dir_all(dir.join("code-r1")).unwrap();
        let golden = format!(
            r#"{{
  "name": "legacy",
  "runtime": "python3.11",
  "handler": "app.handler",
  "memory_mb": 128,
  "timeout_s": 3,
  "environment": {{}},
  "description": "",
  "role": "arn:aws:iam::000000000000:role/r",
  "code_sha256": "abc=",
  "code_size": 10,
  "code_dir": "{}",
  "last_modified": "2024-01-01T00:00:00.000+0000",
  "revision_id": "r1",
  "uid": 61000
}}"#,
            dir.join("code-r1").display()
        );
        fs::write(dir.join("function.json"), &golden).unwrap();
        let reg = open(data.path());
        let f = reg.get("legacy").expect("old record loads");
        assert_eq!(f.concurrency, ConcurrencyConfig::default());
        assert_eq!(f.revision_id, "r1");
        assert_eq!(
            fs::read_to_string(dir.join("function.json")).unwrap(),
            golden
        );
    }

    /// Format 2 held one provisioned concurrency configuration (then only
    /// `$LATEST` had one); it loads as `$LATEST`'s, and is written back as
    /// a map by qualifier.
    #[test]
    fn a_format_2_provisioned_configuration_is_latests() {
        let c: ConcurrencyConfig = serde_json::from_str(
            r#"{"reserved": 4, "provisioned": {"requested": 2, "last_modified": "2026-01-01T00:00:00+0000"}}"#,
        )
        .unwrap();
        assert_eq!(c.provisioned["$LATEST"].requested, 2);
        assert_eq!(c.total_provisioned(), 2);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["provisioned"]["$LATEST"]["requested"], 2);
        let back: ConcurrencyConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
        let many: ConcurrencyConfig = serde_json::from_str(
            r#"{"provisioned": {"live": {"requested": 1, "last_modified": ""}, "3": {"requested": 5, "last_modified": ""}}}"#,
        )
        .unwrap();
        assert_eq!(many.total_provisioned(), 6);
    }
}
