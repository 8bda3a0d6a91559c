//! Published versions and aliases of a function.
//!
//! A version is a frozen copy of `$LATEST`'s record at its publication:
//! `DATA/functions/<name>/versions/<n>.json` (a record with `version: n`,
//! sealed as `function.json` is) and `versions/<n>.zip` (a hard link to the
//! zip as uploaded, so `GetFunction` of the version serves its own code).
//! Its code directory is `$LATEST`'s at the time (`code-<rev>`), kept while
//! `$LATEST` or any version runs it. Aliases live in `$LATEST`'s record:
//! changing one rewrites `function.json` without changing the revision.
//!
//! Order on disk for a crash in between: a version's zip, then its record
//! (the commit point), then `$LATEST`'s `last_version`; loading takes the
//! larger of `last_version` and the highest version found, so a number is
//! never handed out twice.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use thaw_api::versions::Qualifier;
use thaw_api::{ErrorCode, LambdaError};

use super::{
    check_revision, io_err, load_record, new_revision, now_lambda, sync_dir, write_record,
    write_record_at, AliasRecord, FunctionRecord, Registry, RegistryError, Retired,
};
use crate::secrets::EnvCipher;

/// The directory of a function's published versions.
const VERSIONS_DIR: &str = "versions";

/// What `PublishVersion` did.
#[derive(Debug, Clone)]
pub struct PublishOutcome {
    /// The version.
    pub record: FunctionRecord,
    /// Whether it is new (false: `$LATEST` had not changed since the last
    /// version, which is returned again, as Lambda does).
    pub created: bool,
}

/// Loads the published versions of the function in `dir` and raises
/// `latest.last_version` to the highest one found.
pub(super) fn load(
    dir: &Path,
    latest: &mut FunctionRecord,
    cipher: &EnvCipher,
) -> Result<BTreeMap<u32, FunctionRecord>, RegistryError> {
    let vdir = dir.join(VERSIONS_DIR);
    let mut out = BTreeMap::new();
    let entries = match fs::read_dir(&vdir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("read", &vdir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("read", &vdir))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(n) = file
            .strip_suffix(".json")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            if file.starts_with('.') {
                // A temporary file of an interrupted write.
                let _ = fs::remove_file(entry.path());
            }
            continue;
        };
        let json = entry.path();
        let zip = vdir.join(format!("{n}.zip"));
        let record = load_record(dir, &json, &latest.name, &zip, cipher)?;
        if record.version != Some(n) {
            return Err(RegistryError::Corrupt {
                path: json,
                source: format!("the record is version {:?}, not {n}", record.version).into(),
            });
        }
        out.insert(n, record);
    }
    if let Some(&highest) = out.keys().next_back() {
        latest.last_version = latest.last_version.max(highest);
    }
    Ok(out)
}

impl Registry {
    fn versions_dir(&self, name: &str) -> PathBuf {
        self.function_dir(name).join(VERSIONS_DIR)
    }

    /// Publishes `$LATEST` of `name` as a new version, unless nothing
    /// changed since the last one (then that one is returned). With
    /// `expected_sha256` / `expected_revision`, only if `$LATEST`'s code /
    /// revision is still that.
    pub fn publish_version(
        &self,
        name: &str,
        expected_sha256: Option<&str>,
        description: Option<String>,
        expected_revision: Option<&str>,
    ) -> Result<PublishOutcome, RegistryError> {
        let mut state = self.lock();
        let current = state.latest(name)?.clone();
        check_revision(&current, expected_revision)?;
        if let Some(sha) = expected_sha256.filter(|s| *s != current.code_sha256) {
            return Err(RegistryError::Invalid(LambdaError::new(
                ErrorCode::PreconditionFailed,
                format!(
                    "CodeSHA256 ({sha}) is different from current CodeSHA256 in $LATEST ({}). Please try again from the beginning.",
                    current.code_sha256
                ),
            )));
        }
        let last = state
            .versions
            .get(name)
            .and_then(|vs| vs.values().next_back());
        if let Some(last) = last.filter(|v| v.revision_id == current.revision_id) {
            return Ok(PublishOutcome {
                record: last.clone(),
                created: false,
            });
        }
        let n = current.last_version.checked_add(1).ok_or_else(|| {
            RegistryError::Invalid(LambdaError::invalid_parameter(
                "The function has no version numbers left",
            ))
        })?;
        let mut version = current.clone();
        version.version = Some(n);
        version.last_version = 0;
        version.aliases.clear();
        version.urls.clear();
        version.tags.clear();
        version.concurrency = Default::default();
        version.last_modified = now_lambda();
        if let Some(d) = description {
            version.description = d;
        }
        let dir = self.function_dir(name);
        let vdir = self.versions_dir(name);
        fs::create_dir_all(&vdir).map_err(io_err("create", &vdir))?;
        let zip = vdir.join(format!("{n}.zip"));
        let _ = fs::remove_file(&zip);
        let code_zip = dir.join("code.zip");
        if let Err(e) = fs::hard_link(&code_zip, &zip) {
            tracing::debug!(error = %e, "cannot hard-link the code zip; copying it");
            fs::copy(&code_zip, &zip).map_err(io_err("copy", &code_zip))?;
        }
        let json = vdir.join(format!("{n}.json"));
        if let Err(e) = write_record_at(&json, &version, &self.cipher) {
            let _ = fs::remove_file(&zip);
            return Err(e);
        }
        let mut latest = current;
        latest.last_version = n;
        if let Err(e) = write_record(&dir, &latest, &self.cipher) {
            // Not published: the number stays free (nothing refers to it).
            let _ = fs::remove_file(&json);
            let _ = fs::remove_file(&zip);
            return Err(e);
        }
        state.functions.insert(name.to_string(), latest);
        state
            .versions
            .entry(name.to_string())
            .or_default()
            .insert(n, version.clone());
        drop(state);
        tracing::info!(function = %name, version = n, revision = %version.revision_id, "version published");
        Ok(PublishOutcome {
            record: version,
            created: true,
        })
    }

    /// The uploaded zip of `record` (`$LATEST`'s or a version's), as a
    /// file to read.
    pub fn code_zip_path_of(&self, record: &FunctionRecord) -> Option<PathBuf> {
        match record.version {
            None => self.code_zip_path(&record.name),
            Some(n) => self
                .version(&record.name, n)
                .map(|_| self.versions_dir(&record.name).join(format!("{n}.zip"))),
        }
    }

    /// Published version `n` of `name`.
    pub fn version(&self, name: &str, n: u32) -> Option<FunctionRecord> {
        self.lock().versions.get(name)?.get(&n).cloned()
    }

    /// Every published version of `name`, in order.
    pub fn versions(&self, name: &str) -> Vec<FunctionRecord> {
        self.lock()
            .versions
            .get(name)
            .map(|vs| vs.values().cloned().collect())
            .unwrap_or_default()
    }

    /// `$LATEST` and every published version of every function.
    pub fn list_all(&self) -> Vec<FunctionRecord> {
        let state = self.lock();
        state
            .functions
            .values()
            .cloned()
            .chain(state.versions.values().flat_map(|vs| vs.values().cloned()))
            .collect()
    }

    /// The record whose [`FunctionRecord::instance_key`] is `key`.
    pub fn instance(&self, key: &str) -> Option<FunctionRecord> {
        match key.rsplit_once(':') {
            None => self.get(key),
            Some((name, n)) => self.version(name, n.parse().ok()?),
        }
    }

    /// The record `q` names now: `$LATEST`, a version, or an alias's
    /// primary version (`ResourceNotFoundException` in Lambda's words when
    /// there is none).
    pub fn resolve(&self, name: &str, q: &Qualifier) -> Result<FunctionRecord, RegistryError> {
        let state = self.lock();
        let latest = state.latest(name)?;
        let not_found = || latest.missing(q);
        let version = |n: u32| {
            state
                .versions
                .get(name)
                .and_then(|vs| vs.get(&n))
                .cloned()
                .ok_or_else(not_found)
        };
        match q {
            Qualifier::Latest => Ok(latest.clone()),
            Qualifier::Version(n) => version(*n),
            Qualifier::Alias(a) => match latest.aliases.get(a).ok_or_else(not_found)?.version {
                None => Ok(latest.clone()),
                Some(n) => version(n),
            },
        }
    }

    /// Deletes published version `n` of `name` (and its provisioned
    /// concurrency configuration); refused while an alias points to it. Its
    /// code directory is retired once nothing runs it.
    pub fn delete_version(&self, name: &str, n: u32) -> Result<FunctionRecord, RegistryError> {
        let mut state = self.lock();
        let latest = state.latest(name)?;
        let users: Vec<&str> = latest
            .aliases
            .iter()
            .filter(|(_, a)| a.version == Some(n) || a.routing.iter().any(|(v, _)| *v == n))
            .map(|(k, _)| k.as_str())
            .collect();
        if !users.is_empty() {
            return Err(RegistryError::Invalid(LambdaError::new(
                ErrorCode::ResourceConflict,
                format!(
                    "Unable to delete version because the following aliases reference it: [{}]",
                    users.join(", ")
                ),
            )));
        }
        if !state
            .versions
            .get(name)
            .is_some_and(|vs| vs.contains_key(&n))
        {
            return Err(latest.missing(&Qualifier::Version(n)));
        }
        // Its provisioned concurrency goes with it.
        if latest.concurrency.provisioned.contains_key(&n.to_string()) {
            let mut record = latest.clone();
            record.concurrency.provisioned.remove(&n.to_string());
            write_record(&self.function_dir(name), &record, &self.cipher)?;
            state.functions.insert(name.to_string(), record);
        }
        let vdir = self.versions_dir(name);
        let json = vdir.join(format!("{n}.json"));
        match fs::remove_file(&json) {
            Ok(()) => sync_dir(&vdir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &json)(e)),
        }
        let _ = fs::remove_file(vdir.join(format!("{n}.zip")));
        let record = state
            .versions
            .get_mut(name)
            .and_then(|vs| vs.remove(&n))
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        if !state.code_in_use(name, &record.code_dir) {
            state.retired.push(Retired {
                path: record.code_dir.clone(),
                since: Instant::now(),
                uid: None,
            });
        }
        drop(state);
        self.sweep_retired();
        tracing::info!(function = %name, version = n, "version deleted");
        Ok(record)
    }

    /// Alias `alias` of `name`.
    pub fn alias(&self, name: &str, alias: &str) -> Result<AliasRecord, RegistryError> {
        let state = self.lock();
        let latest = state.latest(name)?;
        latest
            .aliases
            .get(alias)
            .cloned()
            .ok_or_else(|| latest.missing(&Qualifier::Alias(alias.to_string())))
    }

    /// Creates (`expected` = `None` and no such alias) or changes (`change`
    /// gets the current alias) alias `alias` of `name`. Every version it
    /// would point to must exist. With `expected_revision`, an update
    /// happens only if the alias is still at that revision.
    pub fn put_alias(
        &self,
        name: &str,
        alias: &str,
        create: bool,
        expected_revision: Option<&str>,
        change: impl FnOnce(Option<&AliasRecord>) -> AliasRecord,
    ) -> Result<AliasRecord, RegistryError> {
        let mut state = self.lock();
        let latest = state.latest(name)?;
        let arn = |q: &Qualifier| {
            thaw_api::versions::qualified_arn(latest.account(), latest.short_name(), q)
        };
        let existing = latest.aliases.get(alias);
        match (create, existing) {
            (true, Some(_)) => {
                return Err(RegistryError::Invalid(LambdaError::new(
                    ErrorCode::ResourceConflict,
                    format!(
                        "Alias already exists: {}",
                        arn(&Qualifier::Alias(alias.into()))
                    ),
                )))
            }
            (false, None) => return Err(latest.missing(&Qualifier::Alias(alias.to_string()))),
            _ => {}
        }
        if let (Some(want), Some(cur)) = (expected_revision, existing) {
            if want != cur.revision_id {
                return Err(RegistryError::RevisionMismatch {
                    expected: want.to_string(),
                    actual: cur.revision_id.clone(),
                });
            }
        }
        let mut next = change(existing);
        next.revision_id = new_revision();
        let published = state.versions.get(name);
        for n in next
            .version
            .iter()
            .chain(next.routing.iter().map(|(v, _)| v))
        {
            if !published.is_some_and(|vs| vs.contains_key(n)) {
                return Err(RegistryError::Invalid(LambdaError::new(
                    ErrorCode::ResourceNotFound,
                    format!("Function not found: {}", arn(&Qualifier::Version(*n))),
                )));
            }
        }
        let mut record = latest.clone();
        record.aliases.insert(alias.to_string(), next.clone());
        write_record(&self.function_dir(name), &record, &self.cipher)?;
        state.functions.insert(name.to_string(), record);
        drop(state);
        tracing::info!(function = %name, alias, version = ?next.version, routing = ?next.routing, "alias saved");
        Ok(next)
    }

    /// Deletes alias `alias` of `name` (and its provisioned concurrency
    /// configuration).
    pub fn delete_alias(&self, name: &str, alias: &str) -> Result<(), RegistryError> {
        let mut state = self.lock();
        let latest = state.latest(name)?;
        if !latest.aliases.contains_key(alias) {
            return Err(latest.missing(&Qualifier::Alias(alias.to_string())));
        }
        let mut record = latest.clone();
        record.aliases.remove(alias);
        // Its provisioned concurrency and URL go with it.
        record.concurrency.provisioned.remove(alias);
        record.urls.remove(alias);
        write_record(&self.function_dir(name), &record, &self.cipher)?;
        state.functions.insert(name.to_string(), record);
        drop(state);
        tracing::info!(function = %name, alias, "alias deleted");
        Ok(())
    }
}

/// Removes a version's files that were left without a record (a crash
/// between writing a version's zip and its record).
pub(super) fn remove_stray_zips(dir: &Path, published: &BTreeMap<u32, FunctionRecord>) {
    let vdir = dir.join(VERSIONS_DIR);
    let Ok(entries) = fs::read_dir(&vdir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let stray = file
            .strip_suffix(".zip")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| !published.contains_key(&n));
        if stray {
            let _ = fs::remove_file(e.path());
        }
    }
    if published.is_empty() {
        let _ = fs::remove_dir(&vdir);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use thaw_api::versions::Qualifier;
    use thaw_api::ErrorCode;

    use super::super::tests::{app_zip, new_fn, open};
    use super::*;

    fn code(e: &RegistryError) -> ErrorCode {
        match e {
            RegistryError::Invalid(l) => l.code.clone(),
            other => panic!("not a Lambda error: {other:?}"),
        }
    }

    fn alias(version: Option<u32>, routing: Vec<(u32, f64)>) -> AliasRecord {
        AliasRecord {
            version,
            description: String::new(),
            routing,
            revision_id: String::new(),
        }
    }

    #[test]
    fn versions_are_frozen_numbered_and_survive_a_restart() {
        let data = tempfile::tempdir().unwrap();
        let reg = open(data.path());
        let f = reg.create(new_fn("f", app_zip("v = 1"))).unwrap();
        let v1 = reg.publish_version("f", None, None, None).unwrap();
        assert!(v1.created);
        assert_eq!(v1.record.version, Some(1));
        assert_eq!(v1.record.instance_key(), "f:1");
        assert_eq!(v1.record.code_dir, f.code_dir);
        // Nothing changed: the same version again, no new number.
        let again = reg
            .publish_version("f", None, Some("x".into()), None)
            .unwrap();
        assert!(!again.created);
        assert_eq!(again.record.version, Some(1));
        // Preconditions: the code's hash and the revision.
        let e = reg
            .publish_version("f", Some("bm90IGl0"), None, None)
            .unwrap_err();
        assert_eq!(code(&e), ErrorCode::PreconditionFailed);
        assert!(matches!(
            reg.publish_version("f", None, None, Some("stale")),
            Err(RegistryError::RevisionMismatch { .. })
        ));

        // New code: $LATEST moves on, version 1 keeps its code directory.
        let f2 = reg.update_code("f", &app_zip("v = 2"), None).unwrap();
        assert_ne!(f2.code_dir, f.code_dir);
        assert!(f.code_dir.is_dir(), "version 1's code was retired");
        let v2 = reg
            .publish_version("f", Some(&f2.code_sha256), Some("two".into()), None)
            .unwrap();
        assert_eq!(v2.record.version, Some(2));
        assert_eq!(v2.record.description, "two");
        assert_eq!(reg.get("f").unwrap().last_version, 2);

        // A restart finds both, each with its own code and zip.
        drop(reg);
        let reg = open(data.path());
        let vs = reg.versions("f");
        assert_eq!(
            vs.iter().map(|v| v.version).collect::<Vec<_>>(),
            [Some(1), Some(2)]
        );
        assert_eq!(vs[0], v1.record);
        assert!(vs[0].code_dir.join("app.py").is_file());
        let zip1 = reg.code_zip_path_of(&vs[0]).unwrap();
        assert_eq!(fs::read(zip1).unwrap(), app_zip("v = 1"));
        assert_eq!(reg.instance("f:2").unwrap(), v2.record);
        assert_eq!(reg.instance("f").unwrap().revision_id, f2.revision_id);
        assert!(reg.instance("f:9").is_none());
        assert_eq!(reg.list_all().len(), 3);
    }

    #[test]
    fn deleted_versions_free_their_code_but_never_their_number() {
        let data = tempfile::tempdir().unwrap();
        let mut reg = open(data.path());
        reg.grace = Duration::ZERO;
        let f = reg.create(new_fn("f", app_zip("v = 1"))).unwrap();
        reg.publish_version("f", None, None, None).unwrap();
        reg.update_code("f", &app_zip("v = 2"), None).unwrap();
        reg.delete_version("f", 1).unwrap();
        assert!(!f.code_dir.exists(), "nothing runs the old code any more");
        assert_eq!(
            code(&reg.delete_version("f", 1).unwrap_err()),
            ErrorCode::ResourceNotFound
        );
        let v = reg.publish_version("f", None, None, None).unwrap();
        assert_eq!(v.record.version, Some(2), "numbers are never reused");
        drop(reg);
        let reg = open(data.path());
        assert_eq!(reg.get("f").unwrap().last_version, 2);
        let v3 = reg.update_code("f", &app_zip("v = 3"), None).unwrap();
        assert!(reg.version("f", 2).unwrap().code_dir.is_dir());
        assert_ne!(v3.code_dir, reg.version("f", 2).unwrap().code_dir);
    }

    #[test]
    fn aliases_point_at_published_versions_and_pin_them() {
        let data = tempfile::tempdir().unwrap();
        let reg = open(data.path());
        reg.create(new_fn("f", app_zip("v = 1"))).unwrap();
        reg.publish_version("f", None, None, None).unwrap();
        reg.update_code("f", &app_zip("v = 2"), None).unwrap();
        reg.publish_version("f", None, None, None).unwrap();

        // A missing version is refused; so is a second alias of one name.
        let e = reg
            .put_alias("f", "live", true, None, |_| alias(Some(7), vec![]))
            .unwrap_err();
        assert_eq!(code(&e), ErrorCode::ResourceNotFound);
        let live = reg
            .put_alias("f", "live", true, None, |_| alias(Some(1), vec![(2, 0.1)]))
            .unwrap();
        let e = reg
            .put_alias("f", "live", true, None, |_| alias(None, vec![]))
            .unwrap_err();
        assert_eq!(code(&e), ErrorCode::ResourceConflict);
        // Both versions it routes to are pinned.
        for n in [1, 2] {
            let e = reg.delete_version("f", n).unwrap_err();
            assert_eq!(code(&e), ErrorCode::ResourceConflict, "version {n}");
        }
        let resolved = reg.resolve("f", &Qualifier::Alias("live".into())).unwrap();
        assert_eq!(resolved.version, Some(1));
        // Updates check the alias's own revision.
        assert!(matches!(
            reg.put_alias("f", "live", false, Some("stale"), |_| alias(
                Some(2),
                vec![]
            )),
            Err(RegistryError::RevisionMismatch { .. })
        ));
        let moved = reg
            .put_alias("f", "live", false, Some(&live.revision_id), |_| {
                alias(Some(2), vec![])
            })
            .unwrap();
        assert_ne!(moved.revision_id, live.revision_id);
        reg.delete_version("f", 1).unwrap();
        // Aliases are not part of the code revision, and survive a restart.
        let before = reg.get("f").unwrap().revision_id;
        reg.put_alias("f", "dev", true, None, |_| alias(None, vec![]))
            .unwrap();
        assert_eq!(reg.get("f").unwrap().revision_id, before);
        drop(reg);
        let reg = open(data.path());
        assert_eq!(reg.alias("f", "live").unwrap(), moved);
        assert_eq!(
            reg.resolve("f", &Qualifier::Alias("dev".into()))
                .unwrap()
                .version,
            None
        );
        reg.delete_alias("f", "dev").unwrap();
        let e = reg.delete_alias("f", "dev").unwrap_err();
        assert_eq!(code(&e), ErrorCode::ResourceNotFound);
        let e = reg
            .resolve("f", &Qualifier::Alias("dev".into()))
            .unwrap_err();
        assert_eq!(code(&e), ErrorCode::ResourceNotFound);
    }

    #[test]
    fn a_crash_between_a_versions_files_loses_no_number() {
        let data = tempfile::tempdir().unwrap();
        let reg = open(data.path());
        reg.create(new_fn("f", app_zip("v = 1"))).unwrap();
        reg.publish_version("f", None, None, None).unwrap();
        let dir = reg.function_dir("f");
        drop(reg);
        // As if the daemon died after writing version 1's record but
        // before `last_version` reached function.json, and left the zip of
        // a version 2 whose record was never written.
        let mut json: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("function.json")).unwrap()).unwrap();
        assert_eq!(json["last_version"], 1);
        json.as_object_mut().unwrap().remove("last_version");
        fs::write(dir.join("function.json"), json.to_string()).unwrap();
        fs::write(dir.join("versions/2.zip"), b"stray").unwrap();
        let reg = open(data.path());
        assert_eq!(reg.get("f").unwrap().last_version, 1);
        assert!(!dir.join("versions/2.zip").exists());
        reg.update_code("f", &app_zip("v = 2"), None).unwrap();
        let v = reg.publish_version("f", None, None, None).unwrap();
        assert_eq!(v.record.version, Some(2));
    }
}
