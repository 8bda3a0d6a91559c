//! Credentials of a thaw account and how a client finds and uses them.
//!
//! Every request to the daemon is signed with AWS Signature Version 4 (the
//! daemon verifies it, `thaw-auth`), exactly as the AWS SDKs sign requests to
//! Lambda, so boto3 and the AWS CLI work with the same keys. The signing
//! itself is `aws-sigv4`, the AWS SDK for Rust's own implementation.

use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The region thaw signs for and, by default, expects in a signature's scope.
pub const REGION: &str = "us-east-1";
/// The service name in a signature's scope.
pub const SERVICE: &str = "lambda";

/// Environment variables with the access key id and secret a client uses.
pub const ACCESS_KEY_ENV: &str = "THAW_ACCESS_KEY_ID";
/// See [`ACCESS_KEY_ENV`].
pub const SECRET_KEY_ENV: &str = "THAW_SECRET_ACCESS_KEY";

/// An access key: its id and its secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The access key id (public: it names the key).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// A key from its two halves.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
        }
    }

    /// The credentials a client of `endpoint` uses when none are given:
    /// [`ACCESS_KEY_ENV`] and [`SECRET_KEY_ENV`] when both are set, else
    /// the entry for `endpoint` in the local credentials file
    /// ([`local_credentials_file`]) that a daemon which generated its root
    /// key wrote for the user it runs as.
    pub fn discover(endpoint: &str) -> Option<Credentials> {
        if let (Ok(id), Ok(secret)) = (std::env::var(ACCESS_KEY_ENV), std::env::var(SECRET_KEY_ENV))
        {
            if !id.is_empty() && !secret.is_empty() {
                return Some(Credentials::new(id, secret));
            }
        }
        let file = LocalCredentials::load(&local_credentials_file()?).ok()?;
        file.endpoints.get(endpoint.trim_end_matches('/')).cloned()
    }
}

/// An account as the account API lists it: its keys' ids, never their
/// secrets (`GET /thaw/v1/accounts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccountSummary {
    /// Twelve digits.
    pub account_id: String,
    /// A name for people.
    pub name: String,
    /// The ids of its access keys, oldest first.
    pub access_key_ids: Vec<String>,
}

/// `POST /thaw/v1/accounts`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateAccountRequest {
    /// 1-64 of `[A-Za-z0-9+=,.@_-]`, unique.
    pub name: String,
}

/// A new account's first key, or a new key of an account: the only time
/// its secret is shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NewAccessKey {
    /// The account.
    pub account_id: String,
    /// The key id.
    pub access_key_id: String,
    /// The secret.
    pub secret_access_key: String,
}

impl std::fmt::Debug for NewAccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAccessKey")
            .field("account_id", &self.account_id)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

impl NewAccessKey {
    /// The key as credentials to sign with.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(&self.access_key_id, &self.secret_access_key)
    }
}

/// `$HOME/.config/thaw/credentials.json`: where a daemon that generated its
/// root key leaves it for the thaw CLI of the same user (mode 0600).
pub fn local_credentials_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".config/thaw/credentials.json"))
}

/// The local credentials file: root keys by daemon endpoint.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LocalCredentials {
    /// The file's format version (1).
    pub format_version: u32,
    /// Credentials by endpoint (`http://127.0.0.1:9070`).
    pub endpoints: std::collections::BTreeMap<String, Credentials>,
}

impl LocalCredentials {
    /// The current format version.
    pub const FORMAT_VERSION: u32 = 1;

    /// Reads the file at `path`.
    pub fn load(path: &std::path::Path) -> std::io::Result<LocalCredentials> {
        let bytes = std::fs::read(path)?;
        let file: LocalCredentials = serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if file.format_version != Self::FORMAT_VERSION {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unknown format version {}", file.format_version),
            ));
        }
        Ok(file)
    }
}

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign the request: {0}")]
pub struct SignError(String);

impl SignError {
    pub(crate) fn streaming() -> Self {
        SignError("its body is a stream; only in-memory bodies are signed".into())
    }

    pub(crate) fn other(why: String) -> Self {
        SignError(why)
    }
}

/// Signs `req` (its method, URL, headers and in-memory body) with `creds`
/// for thaw's region and service at `time`, adding the `authorization` and
/// `x-amz-date` headers.
pub fn sign_request(
    req: &mut http::Request<Vec<u8>>,
    creds: &Credentials,
    time: SystemTime,
) -> Result<(), SignError> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    let identity = aws_credential_types::Credentials::new(
        &creds.access_key_id,
        &creds.secret_access_key,
        None,
        None,
        "thaw",
    )
    .into();
    let settings = SigningSettings::default();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name(SERVICE)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| SignError(e.to_string()))?
        .into();
    let headers: Vec<(&str, &str)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let uri = req.uri().to_string();
    let signable = SignableRequest::new(
        req.method().as_str(),
        &uri,
        headers.into_iter(),
        SignableBody::Bytes(req.body()),
    )
    .map_err(|e| SignError(e.to_string()))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| SignError(e.to_string()))?
        .into_parts();
    let (new_headers, _) = instructions.into_parts();
    for h in new_headers {
        let value = http::HeaderValue::from_str(h.value()).map_err(|e| SignError(e.to_string()))?;
        let name = http::HeaderName::from_bytes(h.name().as_bytes())
            .map_err(|e| SignError(e.to_string()))?;
        req.headers_mut().insert(name, value);
    }
    Ok(())
}
