//! Function environment variables that are secrets: which ones are, and
//! keeping every variable's value encrypted at rest.
//!
//! Owns: the secret policy (a variable is secret if `THAW_SECRETS` names it,
//! its name matches a name pattern, or its value looks like a credential),
//! and [`EnvCipher`], which seals environment values for the registry's
//! files with AES-256-GCM under a key from a [`KeySource`]. Must not: log a
//! value or a key (the types here have redacting `Debug`s).
//!
//! Why it matters: a snapshot is a copy of a process's memory, so anything
//! in the environment of the instance that was snapshotted would be in
//! every copy of the snapshot. Secret variables are therefore withheld from
//! snapshot runs and handed to each restored instance after its restore;
//! and no variable's value is stored in plaintext under the data directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use regex::Regex;

/// The reserved variable that lists (comma-separated) the names of the
/// function's secret variables. It is not passed to the function.
pub const SECRETS_VARIABLE: &str = "THAW_SECRETS";

/// Default name patterns (case-insensitive) of secret variables.
pub const DEFAULT_NAME_PATTERNS: &[&str] = &[
    r"(?i)secret",
    r"(?i)passw(or)?d",
    r"(?i)token",
    r"(?i)api_?key",
    r"(?i)access_?key",
    r"(?i)private_?key",
    r"(?i)credential",
    r"(?i)auth",
];

/// Default patterns of values that look like credentials wherever they are.
pub const DEFAULT_VALUE_PATTERNS: &[&str] = &[
    // AWS access key ids.
    r"^(AKIA|ASIA)[A-Z0-9]{16}$",
    // PEM private keys.
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    // JSON Web Tokens.
    r"^eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$",
];

/// Errors of the secret machinery.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A pattern is not a valid regular expression.
    #[error("invalid secret pattern {pattern:?}: {source}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why.
        #[source]
        source: regex::Error,
    },
    /// The key file cannot be read or created.
    #[error("secrets key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold a 32-byte key.
    #[error("secrets key file {0} does not hold a 32-byte key")]
    KeyLength(PathBuf),
    /// A sealed value is malformed, was tampered with, belongs to another
    /// variable or function, or was sealed under another key.
    #[error("the sealed value of {variable} cannot be opened (wrong key, or tampered)")]
    Open {
        /// The variable.
        variable: String,
    },
}

/// Which variables are secret.
#[derive(Clone)]
pub struct SecretPolicy {
    names: Vec<Regex>,
    values: Vec<Regex>,
}

impl std::fmt::Debug for SecretPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretPolicy")
            .field(
                "names",
                &self.names.iter().map(Regex::as_str).collect::<Vec<_>>(),
            )
            .field("values", &self.values.len())
            .finish()
    }
}

fn compile(patterns: &[String]) -> Result<Vec<Regex>, SecretError> {
    patterns
        .iter()
        .map(|p| {
            Regex::new(p).map_err(|source| SecretError::Pattern {
                pattern: p.clone(),
                source,
            })
        })
        .collect()
}

impl Default for SecretPolicy {
    fn default() -> Self {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        SecretPolicy::new(
            &owned(DEFAULT_NAME_PATTERNS),
            &owned(DEFAULT_VALUE_PATTERNS),
        )
        .expect("the default patterns compile")
    }
}

impl SecretPolicy {
    /// A policy from name and value patterns (regular expressions).
    pub fn new(names: &[String], values: &[String]) -> Result<Self, SecretError> {
        Ok(SecretPolicy {
            names: compile(names)?,
            values: compile(values)?,
        })
    }

    /// Whether `name` (with `value`) is a secret of an environment that
    /// lists `listed` in [`SECRETS_VARIABLE`].
    fn is_secret(&self, listed: &[&str], name: &str, value: &str) -> bool {
        listed.contains(&name)
            || self.names.iter().any(|r| r.is_match(name))
            || self.values.iter().any(|r| r.is_match(value))
    }

    /// Splits a function's environment into plain and secret variables
    /// ([`SECRETS_VARIABLE`] itself is in neither).
    pub fn split(
        &self,
        env: &BTreeMap<String, String>,
    ) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let listed: Vec<&str> = env
            .get(SECRETS_VARIABLE)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let (mut plain, mut secret) = (BTreeMap::new(), BTreeMap::new());
        for (k, v) in env {
            if k == SECRETS_VARIABLE {
                continue;
            }
            if self.is_secret(&listed, k, v) {
                secret.insert(k.clone(), v.clone());
            } else {
                plain.insert(k.clone(), v.clone());
            }
        }
        (plain, secret)
    }
}

/// Where the key that seals environment values comes from. A local key
/// file by default; a key service could be another source.
pub trait KeySource: Send + Sync {
    /// The 32-byte key.
    fn key(&self) -> Result<[u8; 32], SecretError>;
}

/// A key in a local file (created with a random key, mode 0600, in a 0700
/// directory, on first use).
pub struct KeyFile(pub PathBuf);

impl KeySource for KeyFile {
    fn key(&self) -> Result<[u8; 32], SecretError> {
        let path = &self.0;
        let err = |source| SecretError::KeyFile {
            path: path.clone(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| SecretError::KeyLength(path.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(err)?;
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                        .map_err(err)?;
                }
                let key = Aes256Gcm::generate_key(OsRng);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(err)?;
                f.write_all(&key).map_err(err)?;
                f.sync_all().map_err(err)?;
                Ok(key.into())
            }
            Err(e) => Err(err(e)),
        }
    }
}

/// Seals and opens environment values (AES-256-GCM, a random nonce per
/// value, the function and variable names as associated data so a sealed
/// value cannot be moved to another variable or function).
pub struct EnvCipher {
    aead: Aes256Gcm,
}

impl std::fmt::Debug for EnvCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnvCipher(..)")
    }
}

/// Prefix of a sealed value.
const SEALED_PREFIX: &str = "thaw-sealed:v1:";

fn aad(function: &str, variable: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(function.len() + variable.len() + 1);
    a.extend_from_slice(function.as_bytes());
    a.push(0);
    a.extend_from_slice(variable.as_bytes());
    a
}

impl EnvCipher {
    /// A cipher under the key from `source`.
    pub fn new(source: &dyn KeySource) -> Result<Self, SecretError> {
        let key = source.key()?;
        Ok(EnvCipher {
            aead: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
        })
    }

    /// Seals `value` of `function`'s `variable`.
    pub fn seal(&self, function: &str, variable: &str, value: &str) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = aad(function, variable);
        // Encryption with a fresh nonce and in-memory buffers cannot fail.
        let ct = self
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    /// Opens a value sealed by [`Self::seal`]; a value that is not sealed
    /// (a file from before sealing) is returned as it is.
    pub fn open(
        &self,
        function: &str,
        variable: &str,
        stored: &str,
    ) -> Result<String, SecretError> {
        let Some(b64) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_string());
        };
        let fail = || SecretError::Open {
            variable: variable.to_string(),
        };
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| fail())?;
        if blob.len() < 12 + 16 {
            return Err(fail());
        }
        let (nonce, ct) = blob.split_at(12);
        let aad = aad(function, variable);
        let plain = self
            .aead
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| fail())?;
        String::from_utf8(plain).map_err(|_| fail())
    }
}

/// The default key file of a data directory.
pub fn default_key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("env.key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let p = SecretPolicy::default();
        let env: BTreeMap<String, String> = [
            ("DB_PASSWORD", "x"),
            ("GITHUB_TOKEN", "x"),
            ("MY_API_KEY", "x"),
            ("REGION", "eu-west-1"),
            ("KEY_ID", "AKIAABCDEFGHIJKLMNOP"),
            ("CANARY", "plain-looking"),
            ("THAW_SECRETS", "CANARY, OTHER"),
            ("LOG_LEVEL", "debug"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (plain, secret) = p.split(&env);
        let secret: Vec<_> = secret.keys().map(String::as_str).collect();
        assert_eq!(
            secret,
            [
                "CANARY",
                "DB_PASSWORD",
                "GITHUB_TOKEN",
                "KEY_ID",
                "MY_API_KEY"
            ]
        );
        let plain: Vec<_> = plain.keys().map(String::as_str).collect();
        assert_eq!(plain, ["LOG_LEVEL", "REGION"]);
        assert!(SecretPolicy::new(&["(".into()], &[]).is_err());
        let none = SecretPolicy::new(&[], &[]).unwrap();
        assert_eq!(none.split(&env).1.len(), 1, "only the listed one");
    }

    #[test]
    fn sealing_round_trip_and_tamper_detection() {
        let dir = tempfile::tempdir().unwrap();
        let kf = KeyFile(dir.path().join("keys/env.key"));
        let c = EnvCipher::new(&kf).unwrap();
        let mode = std::fs::metadata(&kf.0).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = c.seal("f", "DB_PASSWORD", "hunter2");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(c.open("f", "DB_PASSWORD", &sealed).unwrap(), "hunter2");
        // The same key again from the file.
        let again = EnvCipher::new(&kf).unwrap();
        assert_eq!(again.open("f", "DB_PASSWORD", &sealed).unwrap(), "hunter2");
        // Swapped to another variable or function, tampered, or another key.
        assert!(c.open("f", "OTHER", &sealed).is_err());
        assert!(c.open("g", "DB_PASSWORD", &sealed).is_err());
        let mut bad = sealed.clone().into_bytes();
        let n = bad.len() - 3;
        bad[n] = if bad[n] == b'A' { b'B' } else { b'A' };
        assert!(c
            .open("f", "DB_PASSWORD", &String::from_utf8(bad).unwrap())
            .is_err());
        let other = EnvCipher::new(&KeyFile(dir.path().join("other.key"))).unwrap();
        assert!(other.open("f", "DB_PASSWORD", &sealed).is_err());
        // Plain values from before sealing still read.
        assert_eq!(c.open("f", "X", "plain").unwrap(), "plain");
        let e = format!("{:?}", c.open("f", "OTHER", &sealed).unwrap_err());
        assert!(!e.contains("hunter2"));
    }
}
