//! thaw's accounts and the verification of signed API requests.
//!
//! Every request to a thaw daemon carries an AWS Signature Version 4 (as
//! the AWS SDKs sign their requests to Lambda). [`Accounts::verify`] checks
//! it: the access key must belong to an account, the signature must match
//! what the key's secret gives for the request (method, path, query,
//! signed headers, the body's SHA-256), and the request's time must be
//! within [`ALLOWED_SKEW`] of the daemon's clock, so a captured request
//! cannot be replayed later. Presigned URLs (the signature in the query)
//! also honour their `X-Amz-Expires`. The expected signature is computed
//! by `aws-sigv4`, the AWS SDK for Rust's signer (so the canonical request
//! is exactly the SDKs', double-encoded path included), from the request as
//! the client signed it, and compared in constant time (`subtle`).
//! (`scratchstack-aws-signature`, a server-side verifier, was tried first:
//! it canonicalizes paths once where the SDKs encode them twice, so boto3's
//! requests naming a function by ARN failed, and it refuses every presigned
//! URL the SDKs make.)
//!
//! Accounts live in `DATA/accounts.json` (mode 0600, a format version).
//! The root account (id `000000000000`) has the root key: from
//! `THAW_ROOT_ACCESS_KEY_ID` / `THAW_ROOT_SECRET_ACCESS_KEY` when the daemon
//! is given them (not stored), else generated once and kept in the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
pub use thaw_api::auth::AccountSummary;
use thaw_api::auth::{Credentials, SERVICE};

/// The root account's id (the account in the ARNs thaw has always returned).
pub const ROOT_ACCOUNT: &str = "000000000000";
/// How far a request's signing time may be from the daemon's clock
/// (AWS's window).
pub const ALLOWED_SKEW: chrono::Duration = chrono::Duration::minutes(15);
/// The longest a presigned URL may be valid (AWS's limit: 7 days).
pub const MAX_PRESIGNED_EXPIRY_SECS: i64 = 604_800;
/// The longest secret access key accepted (AWS's are 40 characters).
pub const MAX_SECRET_LEN: usize = 128;
/// The accounts file's name in the data directory.
pub const ACCOUNTS_FILE: &str = "accounts.json";

/// Why the accounts could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// The accounts file cannot be read or written.
    #[error("the accounts file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The accounts file is not valid.
    #[error("the accounts file {path} is damaged: {why}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The root credentials given are not usable.
    #[error("invalid root credentials: {0}")]
    InvalidRoot(String),
    /// No random numbers for a new key.
    #[error("cannot generate a key: {0}")]
    Random(String),
}

/// One account: its functions' namespace and its store's deduplication
/// domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    /// Twelve digits, as AWS account ids.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// Its access keys.
    pub keys: Vec<AccessKey>,
}

/// An access key of an account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessKey {
    /// The key and its secret.
    #[serde(flatten)]
    pub credentials: Credentials,
    /// When it was made (RFC 3339).
    pub created: String,
}

/// `accounts.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccountsFile {
    format_version: u32,
    accounts: Vec<Account>,
}

const FORMAT_VERSION: u32 = 1;

/// Who signed a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The account.
    pub account_id: String,
    /// The access key it signed with.
    pub access_key_id: String,
}

/// A refused request, in the shape the Lambda API reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Denied {
    /// HTTP status: 403, or 400 for a malformed signature.
    pub status: u16,
    /// The error code (`x-amzn-ErrorType`).
    pub code: &'static str,
    /// The message.
    pub message: String,
}

impl Denied {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Denied {
            status,
            code,
            message: message.into(),
        }
    }

    fn missing() -> Self {
        Denied::new(
            403,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token: sign requests with AWS Signature Version 4 \
             (the AWS SDKs and the thaw CLI do; see the daemon's start-up message for its keys)",
        )
    }

    fn unknown_key() -> Self {
        Denied::new(
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    }
}

/// The accounts of one daemon and their keys. Shared by the request
/// handlers: reads (every request's check) take a read lock; account and key
/// changes are written to the file before they take effect.
#[derive(Debug)]
pub struct Accounts {
    path: PathBuf,
    /// The root key given by the operator (not stored), if any.
    root_given: Option<Credentials>,
    state: RwLock<State>,
}

struct State {
    accounts: Vec<Account>,
    /// Access key id -> (account index, secret).
    keys: BTreeMap<String, (usize, String)>,
}

impl std::fmt::Debug for State {
    /// Key ids, never secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("accounts", &self.accounts.len())
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What opening the accounts did about the root key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootKey {
    /// Given by the operator (environment); not stored.
    Given,
    /// Read from the accounts file.
    Stored,
    /// Generated now and stored: tell the operator.
    Generated(Credentials),
}

/// Why an account or key could not be created or removed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// An account name must be 1-64 of `[A-Za-z0-9+=,.@_-]`.
    #[error("an account name is 1 to 64 letters, digits or +=,.@_- (got {0:?})")]
    InvalidName(String),
    /// Another account has the name.
    #[error("an account named {0:?} exists")]
    NameTaken(String),
    /// No account has the id.
    #[error("no account {0}")]
    NoSuchAccount(String),
    /// The account has no such key.
    #[error("account {account} has no access key {key}")]
    NoSuchKey {
        /// The account.
        account: String,
        /// The key asked for.
        key: String,
    },
    /// An account has at most [`MAX_KEYS_PER_ACCOUNT`] keys.
    #[error("account {0} has {MAX_KEYS_PER_ACCOUNT} access keys already: delete one first")]
    TooManyKeys(String),
    /// The account's only key cannot be deleted (nobody could sign for it).
    #[error("{0} is the account's only access key: create another one first")]
    LastKey(String),
    /// The root key comes from the daemon's environment while it is given.
    #[error("the root account's key is given by the daemon's environment (THAW_ROOT_ACCESS_KEY_ID): change it there")]
    RootKeyGiven,
    /// The change could not be stored (nothing changed).
    #[error(transparent)]
    Store(#[from] AccountsError),
}

/// The most access keys an account has at once (AWS's limit): enough to
/// rotate (create the new key, move the clients, delete the old one).
pub const MAX_KEYS_PER_ACCOUNT: usize = 2;

impl Accounts {
    /// Opens the accounts of the daemon whose data directory is `data_dir`,
    /// creating the file (with a generated root key) on first use. `root`
    /// (from the environment) replaces the stored root key while given.
    pub fn open(
        data_dir: &Path,
        root: Option<Credentials>,
    ) -> Result<(Accounts, RootKey), AccountsError> {
        let path = data_dir.join(ACCOUNTS_FILE);
        let mut file = match std::fs::read(&path) {
            Ok(bytes) => parse(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AccountsFile {
                format_version: FORMAT_VERSION,
                accounts: Vec::new(),
            },
            Err(source) => return Err(AccountsError::Io { path, source }),
        };
        if !file.accounts.iter().any(|a| a.id == ROOT_ACCOUNT) {
            file.accounts.insert(
                0,
                Account {
                    id: ROOT_ACCOUNT.into(),
                    name: "root".into(),
                    keys: Vec::new(),
                },
            );
        }
        let mut how = RootKey::Stored;
        if let Some(given) = &root {
            check_credentials(given).map_err(AccountsError::InvalidRoot)?;
            how = RootKey::Given;
        } else if root_account(&file).keys.is_empty() {
            let creds = generate()?;
            root_account_mut(&mut file).keys.push(AccessKey {
                credentials: creds.clone(),
                created: Utc::now().to_rfc3339(),
            });
            save(&path, &file)?;
            how = RootKey::Generated(creds);
        }
        let state = State::new(file.accounts, root.as_ref());
        Ok((
            Accounts {
                path,
                root_given: root,
                state: RwLock::new(state),
            },
            how,
        ))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` to a copy of the accounts, stores the copy, and only
    /// then makes it the daemon's: a change that cannot be stored changes
    /// nothing.
    fn change<T>(
        &self,
        change: impl FnOnce(&mut Vec<Account>) -> Result<T, ChangeError>,
    ) -> Result<T, ChangeError> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let mut accounts = state.accounts.clone();
        let out = change(&mut accounts)?;
        save(
            &self.path,
            &AccountsFile {
                format_version: FORMAT_VERSION,
                accounts: accounts.clone(),
            },
        )?;
        *state = State::new(accounts, self.root_given.as_ref());
        Ok(out)
    }

    /// The accounts file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The accounts, without secrets.
    pub fn list(&self) -> Vec<AccountSummary> {
        self.read()
            .accounts
            .iter()
            .map(|a| AccountSummary {
                account_id: a.id.clone(),
                name: a.name.clone(),
                access_key_ids: if a.id == ROOT_ACCOUNT && self.root_given.is_some() {
                    self.root_given
                        .iter()
                        .map(|c| c.access_key_id.clone())
                        .collect()
                } else {
                    a.keys
                        .iter()
                        .map(|k| k.credentials.access_key_id.clone())
                        .collect()
                },
            })
            .collect()
    }

    /// Creates an account named `name` with a new id and one new access
    /// key; the account and the key's secret (shown only now).
    pub fn create(&self, name: &str) -> Result<(AccountSummary, Credentials), ChangeError> {
        check_name(name)?;
        let creds = generate()?;
        let id = new_account_id()?;
        self.change(|accounts| {
            if accounts.iter().any(|a| a.name == name) {
                return Err(ChangeError::NameTaken(name.to_string()));
            }
            if accounts.iter().any(|a| a.id == id) {
                // One in 10^12 per existing account; refuse rather than merge.
                return Err(ChangeError::NameTaken(name.to_string()));
            }
            accounts.push(Account {
                id: id.clone(),
                name: name.to_string(),
                keys: vec![AccessKey {
                    credentials: creds.clone(),
                    created: Utc::now().to_rfc3339(),
                }],
            });
            Ok(())
        })?;
        Ok((
            AccountSummary {
                account_id: id,
                name: name.to_string(),
                access_key_ids: vec![creds.access_key_id.clone()],
            },
            creds,
        ))
    }

    /// Adds a new access key to `account` (to rotate: create one, move the
    /// clients to it, delete the old one); its secret is shown only now.
    pub fn create_key(&self, account: &str) -> Result<Credentials, ChangeError> {
        if account == ROOT_ACCOUNT && self.root_given.is_some() {
            return Err(ChangeError::RootKeyGiven);
        }
        let creds = generate()?;
        self.change(|accounts| {
            let a = find_mut(accounts, account)?;
            if a.keys.len() >= MAX_KEYS_PER_ACCOUNT {
                return Err(ChangeError::TooManyKeys(account.to_string()));
            }
            a.keys.push(AccessKey {
                credentials: creds.clone(),
                created: Utc::now().to_rfc3339(),
            });
            Ok(())
        })?;
        Ok(creds)
    }

    /// Deletes `key` of `account`: requests signed with it are refused from
    /// now on. An account's only key stays.
    pub fn delete_key(&self, account: &str, key: &str) -> Result<(), ChangeError> {
        if account == ROOT_ACCOUNT && self.root_given.is_some() {
            return Err(ChangeError::RootKeyGiven);
        }
        self.change(|accounts| {
            let a = find_mut(accounts, account)?;
            let Some(i) = a
                .keys
                .iter()
                .position(|k| k.credentials.access_key_id == key)
            else {
                return Err(ChangeError::NoSuchKey {
                    account: account.to_string(),
                    key: key.to_string(),
                });
            };
            if a.keys.len() == 1 {
                return Err(ChangeError::LastKey(key.to_string()));
            }
            a.keys.remove(i);
            Ok(())
        })
    }

    /// What can be refused before the body is read: a request with no
    /// signature, a malformed one, or one by a key no account has. What
    /// passes is finished with [`Pending::verify`] once the body is read.
    pub fn precheck(&self, parts: &http::request::Parts) -> Result<Pending, Denied> {
        let sig = Signature::of(parts)?;
        let state = self.read();
        let Some((account, secret)) = state.keys.get(&sig.access_key_id) else {
            return Err(Denied::unknown_key());
        };
        Ok(Pending {
            account_id: state.accounts[*account].id.clone(),
            secret: secret.clone(),
            sig,
        })
    }

    /// Verifies the signature of a request (`parts` and its whole `body`) at
    /// `now`; who signed it, or why it is refused.
    pub fn verify(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Caller, Denied> {
        self.precheck(parts)?.verify(parts, body, now)
    }
}

impl State {
    fn new(accounts: Vec<Account>, root: Option<&Credentials>) -> State {
        let mut keys = BTreeMap::new();
        for (i, a) in accounts.iter().enumerate() {
            if a.id == ROOT_ACCOUNT && root.is_some() {
                continue;
            }
            for k in &a.keys {
                keys.insert(
                    k.credentials.access_key_id.clone(),
                    (i, k.credentials.secret_access_key.clone()),
                );
            }
        }
        if let Some(r) = root {
            let i = accounts
                .iter()
                .position(|a| a.id == ROOT_ACCOUNT)
                .unwrap_or(0);
            keys.insert(r.access_key_id.clone(), (i, r.secret_access_key.clone()));
        }
        State { accounts, keys }
    }
}

fn find_mut<'a>(accounts: &'a mut [Account], id: &str) -> Result<&'a mut Account, ChangeError> {
    accounts
        .iter_mut()
        .find(|a| a.id == id)
        .ok_or_else(|| ChangeError::NoSuchAccount(id.to_string()))
}

/// IAM's user name rule: 1-64 of `[A-Za-z0-9+=,.@_-]`.
fn check_name(name: &str) -> Result<(), ChangeError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ChangeError::InvalidName(name.to_string()))
    }
}

/// Twelve random digits, never the root's (and never starting with 0, so
/// no id looks like the root's).
fn new_account_id() -> Result<String, AccountsError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| AccountsError::Random(e.to_string()))?;
    let n = u64::from_le_bytes(bytes) % 900_000_000_000 + 100_000_000_000;
    Ok(n.to_string())
}

/// A request whose signature names a known key, not yet checked against
/// its body ([`Accounts::precheck`]).
pub struct Pending {
    sig: Signature,
    account_id: String,
    secret: String,
}

impl Pending {
    /// Checks the signature's time and its value over `parts` and the whole
    /// `body` at `now`; who signed it, or why it is refused.
    pub fn verify(
        self,
        parts: &http::request::Parts,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Caller, Denied> {
        let sig = self.sig;
        sig.check_time(now)?;
        let expected = sig.expected(parts, body, &self.secret)?;
        if bool::from(expected.as_bytes().ct_eq(sig.signature.as_bytes())) {
            Ok(Caller {
                account_id: self.account_id,
                access_key_id: sig.access_key_id,
            })
        } else {
            Err(Denied::new(
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. \
                 Check your AWS Secret Access Key and signing method.",
            ))
        }
    }
}

/// A request's signature as it describes itself (header or query form).
struct Signature {
    access_key_id: String,
    region: String,
    signed_headers: Vec<String>,
    signature: String,
    /// The signing time (`X-Amz-Date`).
    time: DateTime<Utc>,
    /// Presigned: the query form, valid for this many seconds.
    presigned_expiry: Option<i64>,
}

fn incomplete(m: impl Into<String>) -> Denied {
    Denied::new(400, "IncompleteSignatureException", m)
}

impl Signature {
    fn of(parts: &http::request::Parts) -> Result<Signature, Denied> {
        let query = query_pairs(parts);
        let (credential, signed_headers, signature, date, presigned_expiry) = match parts
            .headers
            .get(http::header::AUTHORIZATION)
        {
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| incomplete("The Authorization header is not ASCII."))?;
                let rest = v.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
                    incomplete("Only the AWS4-HMAC-SHA256 signature algorithm is supported.")
                })?;
                let field = |name: &str| {
                    rest.split(',')
                        .map(str::trim)
                        .find_map(|p| p.strip_prefix(name))
                        .map(str::to_string)
                        .ok_or_else(|| {
                            incomplete(format!(
                                "Authorization header requires '{}' parameter.",
                                name.trim_end_matches('=')
                            ))
                        })
                };
                let date = parts
                    .headers
                    .get("x-amz-date")
                    .and_then(|d| d.to_str().ok())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        incomplete(
                            "Authorization header requires existence of the X-Amz-Date header.",
                        )
                    })?;
                (
                    field("Credential=")?,
                    field("SignedHeaders=")?,
                    field("Signature=")?,
                    date,
                    None,
                )
            }
            None => {
                let Some(credential) = query.get("X-Amz-Credential") else {
                    return Err(Denied::missing());
                };
                if query.get("X-Amz-Algorithm").map(String::as_str) != Some("AWS4-HMAC-SHA256") {
                    return Err(incomplete(
                        "Only the AWS4-HMAC-SHA256 signature algorithm is supported.",
                    ));
                }
                let get = |k: &str| {
                    query.get(k).cloned().ok_or_else(|| {
                        incomplete(format!("AWS query-string parameters must include '{k}'."))
                    })
                };
                let expires: i64 = get("X-Amz-Expires")?
                    .parse()
                    .ok()
                    .filter(|s| (1..=MAX_PRESIGNED_EXPIRY_SECS).contains(s))
                    .ok_or_else(|| {
                        incomplete("X-Amz-Expires must be a number of seconds from 1 to 604800.")
                    })?;
                (
                    credential.clone(),
                    get("X-Amz-SignedHeaders")?,
                    get("X-Amz-Signature")?,
                    get("X-Amz-Date")?,
                    Some(expires),
                )
            }
        };
        if parts.headers.contains_key("x-amz-security-token")
            || query.contains_key("X-Amz-Security-Token")
        {
            // thaw issues no temporary credentials.
            return Err(Denied::unknown_key());
        }
        let time = NaiveDateTime::parse_from_str(&date, "%Y%m%dT%H%M%SZ")
            .map_err(|_| incomplete("X-Amz-Date must be a date of the form YYYYMMDDTHHMMSSZ."))?
            .and_utc();
        let scope: Vec<&str> = credential.split('/').collect();
        let bad_scope = || {
            incomplete("Credential must have the form KEY/YYYYMMDD/REGION/SERVICE/aws4_request.")
        };
        let [id, day, region, service, terminator] = scope[..] else {
            return Err(bad_scope());
        };
        let region_ok = !region.is_empty()
            && region.len() <= 32
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if id.is_empty() || !region_ok || terminator != "aws4_request" {
            return Err(bad_scope());
        }
        let mut wrong = Vec::new();
        if service != SERVICE {
            wrong.push(format!(
                "Credential should be scoped to correct service: '{SERVICE}'."
            ));
        }
        if day != time.format("%Y%m%d").to_string() {
            wrong.push("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP.".to_string());
        }
        if !wrong.is_empty() {
            return Err(Denied::new(
                403,
                "InvalidSignatureException",
                wrong.join(" "),
            ));
        }
        let signed_headers: Vec<String> = signed_headers
            .split(';')
            .map(|h| h.to_ascii_lowercase())
            .collect();
        if !signed_headers.iter().any(|h| h == "host") {
            return Err(incomplete("The host header must be signed."));
        }
        Ok(Signature {
            access_key_id: id.to_string(),
            region: region.to_string(),
            signed_headers,
            signature: signature.to_ascii_lowercase(),
            time,
            presigned_expiry,
        })
    }

    /// A signature made too long ago (a replay) or in the future is refused,
    /// and a presigned URL after its expiry.
    fn check_time(&self, now: DateTime<Utc>) -> Result<(), Denied> {
        let stamp = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
        if let Some(secs) = self.presigned_expiry {
            if now > self.time + chrono::Duration::seconds(secs) {
                return Err(Denied::new(
                    403,
                    "AccessDeniedException",
                    "Request has expired",
                ));
            }
        } else if self.time < now - ALLOWED_SKEW {
            return Err(Denied::new(
                403,
                "InvalidSignatureException",
                format!(
                    "Signature expired: {} is now earlier than {} ({} - 15 min.)",
                    stamp(self.time),
                    stamp(now - ALLOWED_SKEW),
                    stamp(now)
                ),
            ));
        }
        if self.time > now + ALLOWED_SKEW {
            return Err(Denied::new(
                403,
                "InvalidSignatureException",
                format!(
                    "Signature not yet current: {} is still later than {} ({} + 15 min.)",
                    stamp(self.time),
                    stamp(now + ALLOWED_SKEW),
                    stamp(now)
                ),
            ));
        }
        Ok(())
    }

    /// The signature the request should carry: the request as it was before
    /// it was signed (only the headers the signature names; a presigned
    /// URL's query without its own `X-Amz-*` parameters) signed again with
    /// the same time, scope and key by `aws-sigv4`.
    fn expected(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
        secret: &str,
    ) -> Result<String, Denied> {
        use aws_sigv4::http_request::{
            sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
        };
        // An authority-form target (`CONNECT host:port`, or any request line
        // whose target is `host:port`) has no path: nothing a client signs,
        // and `aws-sigv4` panics on it (found by fuzzing).
        if parts.uri.path().is_empty() {
            return Err(incomplete("The request target has no path."));
        }
        let query = parts.uri.query().unwrap_or("");
        let uri = if self.presigned_expiry.is_some() {
            let rest: Vec<&str> = query
                .split('&')
                .filter(|p| !p.is_empty() && !p.starts_with("X-Amz-"))
                .collect();
            if rest.is_empty() {
                parts.uri.path().to_string()
            } else {
                format!("{}?{}", parts.uri.path(), rest.join("&"))
            }
        } else {
            parts.uri.to_string()
        };
        let mut headers = Vec::new();
        for name in &self.signed_headers {
            if self.presigned_expiry.is_none() && name == "x-amz-date" {
                continue; // the signer writes it from the time
            }
            let values: Vec<&str> = parts
                .headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if values.is_empty() {
                return Err(incomplete(format!(
                    "The signature names the header '{name}', which the request does not have."
                )));
            }
            headers.push((name.as_str(), values.join(",")));
        }
        let identity =
            aws_credential_types::Credentials::new(&self.access_key_id, secret, None, None, "thaw")
                .into();
        let mut settings = SigningSettings::default();
        // Sign exactly the headers the client signed.
        settings.excluded_headers = Some(Vec::new());
        if let Some(secs) = self.presigned_expiry {
            settings.signature_location = SignatureLocation::QueryParams;
            settings.expires_in = Some(std::time::Duration::from_secs(secs.unsigned_abs()));
        }
        let time = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(self.time.timestamp().max(0).unsigned_abs());
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SERVICE)
            .time(time)
            .settings(settings)
            .build()
            .map_err(|e| incomplete(e.to_string()))?
            .into();
        let body = if self.presigned_expiry.is_some() {
            // Presigned URLs carry no body hash: only body-less requests.
            if !body.is_empty() {
                return Err(incomplete("A presigned request has no body."));
            }
            SignableBody::Bytes(b"")
        } else {
            SignableBody::Bytes(body)
        };
        let signable = SignableRequest::new(
            parts.method.as_str(),
            &uri,
            headers.iter().map(|(k, v)| (*k, v.as_str())),
            body,
        )
        .map_err(|e| incomplete(e.to_string()))?;
        let (_, signature) = sign(signable, &params)
            .map_err(|e| incomplete(e.to_string()))?
            .into_parts();
        Ok(signature)
    }
}

fn query_pairs(parts: &http::request::Parts) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for pair in parts.uri.query().unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if let (Some(k), Some(v)) = (percent_decode(k), percent_decode(v)) {
            out.entry(k).or_insert(v);
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn parse(path: &Path, bytes: &[u8]) -> Result<AccountsFile, AccountsError> {
    let damaged = |why: String| AccountsError::Damaged {
        path: path.to_path_buf(),
        why,
    };
    let file: AccountsFile = serde_json::from_slice(bytes).map_err(|e| damaged(e.to_string()))?;
    if file.format_version != FORMAT_VERSION {
        return Err(damaged(format!(
            "format version {} (this thaw reads {FORMAT_VERSION})",
            file.format_version
        )));
    }
    for a in &file.accounts {
        for k in &a.keys {
            check_credentials(&k.credentials).map_err(damaged)?;
        }
    }
    Ok(file)
}

fn save(path: &Path, file: &AccountsFile) -> Result<(), AccountsError> {
    let bytes = serde_json::to_vec_pretty(file).map_err(|e| AccountsError::Damaged {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    thaw_persist::write(path, &bytes, 0o600).map_err(|e| AccountsError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn root_account(f: &AccountsFile) -> &Account {
    f.accounts
        .iter()
        .find(|a| a.id == ROOT_ACCOUNT)
        .expect("the root account is always present")
}

fn root_account_mut(f: &mut AccountsFile) -> &mut Account {
    f.accounts
        .iter_mut()
        .find(|a| a.id == ROOT_ACCOUNT)
        .expect("the root account is always present")
}

/// A usable key: an id of 16-128 letters and digits, a secret of 1-128
/// printable ASCII characters.
pub fn check_credentials(c: &Credentials) -> Result<(), String> {
    let id = &c.access_key_id;
    if !(16..=128).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("an access key id is 16 to 128 letters and digits".into());
    }
    let s = &c.secret_access_key;
    if s.is_empty() || s.len() > MAX_SECRET_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "a secret access key is 1 to {MAX_SECRET_LEN} printable ASCII characters"
        ));
    }
    Ok(())
}

/// A new random key: `AKTH` and 16 capitals or digits; a 40-character
/// secret (240 bits).
pub fn generate() -> Result<Credentials, AccountsError> {
    const ID: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bytes = [0u8; 56];
    getrandom::fill(&mut bytes).map_err(|e| AccountsError::Random(e.to_string()))?;
    let id: String = bytes[..16]
        .iter()
        .map(|b| ID[usize::from(*b) % ID.len()] as char)
        .collect();
    let secret: String = bytes[16..]
        .iter()
        .map(|b| SECRET[usize::from(*b) % SECRET.len()] as char)
        .collect();
    Ok(Credentials::new(format!("AKTH{id}"), secret))
}
