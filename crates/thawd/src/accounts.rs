//! Accounts as the daemon sees them: whose a function is, and the API that
//! creates accounts and rotates their keys.
//!
//! Owns: the mapping from (account, function name) to the daemon's internal
//! function key, the caller's [`Scope`] (taken from the request's verified
//! signature), the policy of who may do what across accounts, and the
//! account routes. Must not: verify signatures or store keys (that is
//! `thaw-auth`), or know about instances.
//!
//! **Namespaces.** A function belongs to the account that created it; its
//! name is unique within the account. Inside the daemon a function is
//! known by its *key*: the plain name for the root account (so data
//! directories from before accounts keep their names) and
//! `ACCOUNT.NAME` for any other account (a name never contains a `.`, so
//! the two never meet). Registry records, instance pools, snapshots, logs
//! and metrics are all keyed by it; the Lambda API only ever shows the
//! name and the account's ARN.
//!
//! **Who may do what.** Every account manages its own functions and its
//! own access keys. Only the root account creates accounts, lists them,
//! manages another account's keys, reads `/metrics` and drops the store's
//! caches (those cover every account). A reference to another account's
//! function (by ARN) is refused with 403 `AccessDeniedException`; a plain
//! name is looked up in the caller's own account.
//!
//! | method | path | operation |
//! |---|---|---|
//! | POST | `/thaw/v1/accounts` | create an account (root): `{"Name"}` → id and its first key |
//! | GET | `/thaw/v1/accounts` | list accounts (root; key ids, no secrets) |
//! | POST | `/thaw/v1/accounts/{id}/keys` | add a key (at most 2): its secret, shown once |
//! | DELETE | `/thaw/v1/accounts/{id}/keys/{key}` | delete a key (not the only one) |

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use thaw_api::auth::{AccountSummary, CreateAccountRequest, NewAccessKey};
use thaw_api::{ErrorCode, FunctionName, FunctionRef, LambdaError};
use thaw_auth::{Accounts, Caller, ChangeError, ROOT_ACCOUNT};

use crate::api::ApiError;

/// The daemon's key of function `name` of `account`.
pub fn function_key(account: &str, name: &str) -> String {
    if account == ROOT_ACCOUNT {
        name.to_string()
    } else {
        format!("{account}.{name}")
    }
}

/// The account and the name of the function whose key is `key`.
pub fn split_key(key: &str) -> (&str, &str) {
    match key.split_once('.') {
        Some((account, name)) => (account, name),
        None => (ROOT_ACCOUNT, key),
    }
}

/// Whether `key` is a well-formed function key (an account of twelve
/// digits, or none, and a valid function name).
pub fn valid_key(key: &str) -> bool {
    let (account, name) = split_key(key);
    account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && (account != ROOT_ACCOUNT || !key.contains('.'))
        && FunctionName::parse(name).is_ok()
}

/// The account the request was signed for, as the handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    account: String,
}

impl Scope {
    /// A scope of `account` (tests; the daemon takes it from the request).
    pub fn of(account: impl Into<String>) -> Scope {
        Scope {
            account: account.into(),
        }
    }

    /// The root account's scope.
    pub fn root() -> Scope {
        Scope::of(ROOT_ACCOUNT)
    }

    /// The account.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// Whether the caller is the root account.
    pub fn is_root(&self) -> bool {
        self.account == ROOT_ACCOUNT
    }

    /// `AccessDeniedException` unless the caller is the root account.
    pub fn require_root(&self, action: &str) -> Result<(), ApiError> {
        if self.is_root() {
            Ok(())
        } else {
            Err(denied(&self.account, action))
        }
    }

    /// Whether the function with `key` is the caller's.
    pub fn owns(&self, key: &str) -> bool {
        split_key(key).0 == self.account
    }

    /// The caller's function `name`.
    pub fn function(&self, name: FunctionName) -> Target {
        Target {
            key: function_key(&self.account, name.as_str()),
            account: self.account.clone(),
            name,
        }
    }

    /// What `target` names for the caller, provided it (and the `Qualifier`
    /// query parameter, if any) names `$LATEST` of a function of the
    /// caller's account: an ARN of another account is refused.
    pub fn resolve(
        &self,
        target: FunctionRef,
        query_qualifier: Option<&str>,
    ) -> Result<Target, ApiError> {
        if let Some(other) = target.account.as_deref().filter(|a| *a != self.account) {
            let arn = target.name.arn_in(other);
            return Err(denied(
                &self.account,
                &format!("lambda:* on resource: {arn}"),
            ));
        }
        let name = target.latest_in(&self.account, query_qualifier)?;
        Ok(self.function(name))
    }

    /// What `target` names for the caller and its qualifier (from the
    /// name or ARN, or the `Qualifier` query parameter; `$LATEST` when
    /// neither has one): an ARN of another account is refused.
    pub fn resolve_qualified(
        &self,
        target: FunctionRef,
        query_qualifier: Option<&str>,
    ) -> Result<(Target, thaw_api::versions::Qualifier), ApiError> {
        if let Some(other) = target.account.as_deref().filter(|a| *a != self.account) {
            let arn = target.name.arn_in(other);
            return Err(denied(
                &self.account,
                &format!("lambda:* on resource: {arn}"),
            ));
        }
        let (name, q) = target.qualified(query_qualifier)?;
        Ok((self.function(name), q))
    }
}

fn denied(account: &str, action: &str) -> ApiError {
    ApiError(LambdaError::new(
        ErrorCode::AccessDenied,
        format!("User: arn:aws:iam::{account}:root is not authorized to perform: {action}"),
    ))
}

impl<S: Send + Sync> FromRequestParts<S> for Scope {
    type Rejection = ApiError;

    /// The [`Caller`] the signature check left in the request; a request
    /// without one never reached here through the daemon's router, so it
    /// is refused (fail closed) rather than served as anyone.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.extensions.get::<Caller>() {
            Some(c) => Ok(Scope::of(c.account_id.clone())),
            None => {
                tracing::error!(path = %parts.uri.path(), "a request reached a route without a verified caller");
                Err(ApiError(LambdaError::new(
                    ErrorCode::Service,
                    "The request was not authenticated",
                )))
            }
        }
    }
}

/// A function as the caller named it, in the caller's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The daemon's key ([`function_key`]).
    pub key: String,
    /// The account.
    pub account: String,
    /// The name within the account.
    pub name: FunctionName,
}

impl Target {
    /// `ResourceNotFoundException` for this function.
    pub fn not_found(&self) -> LambdaError {
        LambdaError::function_not_found_in(&self.account, self.name.as_str())
    }

    /// The function's ARN.
    pub fn arn(&self) -> String {
        self.name.arn_in(&self.account)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key)
    }
}

// ---------------------------------------------------------------------------
// Routes

/// The account routes ([module documentation](self)), for the daemon to
/// merge into its router inside the signature check.
pub fn router(accounts: Arc<Accounts>) -> Router {
    Router::new()
        .route("/thaw/v1/accounts", post(create_account).get(list_accounts))
        .route("/thaw/v1/accounts/{id}/keys", post(create_key))
        .route("/thaw/v1/accounts/{id}/keys/{key}", delete(delete_key))
        .with_state(accounts)
}

fn change_error(e: ChangeError) -> ApiError {
    let code = match &e {
        ChangeError::InvalidName(_) => ErrorCode::InvalidParameterValue,
        ChangeError::NoSuchAccount(_) | ChangeError::NoSuchKey { .. } => {
            ErrorCode::ResourceNotFound
        }
        ChangeError::NameTaken(_)
        | ChangeError::TooManyKeys(_)
        | ChangeError::LastKey(_)
        | ChangeError::RootKeyGiven => ErrorCode::ResourceConflict,
        ChangeError::Store(inner) => {
            tracing::error!(error = %inner, "cannot store the accounts");
            return ApiError(LambdaError::new(
                ErrorCode::Service,
                "Cannot store the accounts",
            ));
        }
    };
    ApiError(LambdaError::new(code, e.to_string()))
}

/// The account whose keys `id` names, if the caller may manage them.
fn keys_of(scope: &Scope, id: &str) -> Result<(), ApiError> {
    if scope.account() == id {
        Ok(())
    } else {
        scope.require_root(&format!("keys of account {id}"))
    }
}

async fn create_account(
    State(accounts): State<Arc<Accounts>>,
    scope: Scope,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    scope.require_root("CreateAccount")?;
    let req: CreateAccountRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError(LambdaError::unparsable_body(e)))?;
    let (account, creds) = accounts.create(&req.name).map_err(change_error)?;
    tracing::info!(account = %account.account_id, name = %account.name, "account created");
    Ok((
        StatusCode::CREATED,
        Json(NewAccessKey {
            account_id: account.account_id,
            access_key_id: creds.access_key_id.clone(),
            secret_access_key: creds.secret_access_key.clone(),
        }),
    )
        .into_response())
}

async fn list_accounts(
    State(accounts): State<Arc<Accounts>>,
    scope: Scope,
) -> Result<Json<Vec<AccountSummary>>, ApiError> {
    scope.require_root("ListAccounts")?;
    Ok(Json(accounts.list()))
}

async fn create_key(
    State(accounts): State<Arc<Accounts>>,
    scope: Scope,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    keys_of(&scope, &id)?;
    let creds = accounts.create_key(&id).map_err(change_error)?;
    tracing::info!(account = %id, key = %creds.access_key_id, "access key created");
    Ok((
        StatusCode::CREATED,
        Json(NewAccessKey {
            account_id: id,
            access_key_id: creds.access_key_id.clone(),
            secret_access_key: creds.secret_access_key.clone(),
        }),
    )
        .into_response())
}

async fn delete_key(
    State(accounts): State<Arc<Accounts>>,
    scope: Scope,
    Path((id, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    keys_of(&scope, &id)?;
    accounts.delete_key(&id, &key).map_err(change_error)?;
    tracing::info!(account = %id, key = %key, "access key deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_root_keeps_plain_names() {
        assert_eq!(function_key(ROOT_ACCOUNT, "f"), "f");
        assert_eq!(function_key("123456789012", "f"), "123456789012.f");
        assert_eq!(split_key("f"), (ROOT_ACCOUNT, "f"));
        assert_eq!(split_key("123456789012.f"), ("123456789012", "f"));
        assert!(valid_key("f"));
        assert!(valid_key("123456789012.my-fn_1"));
        assert!(!valid_key("12345.f"));
        assert!(!valid_key("000000000000.f"));
        assert!(!valid_key("123456789012.a.b"));
        assert!(!valid_key("123456789012."));
    }

    #[test]
    fn another_accounts_arn_is_refused_and_a_plain_name_is_scoped() {
        let s = Scope::of("123456789012");
        let own = s
            .resolve(
                FunctionRef::parse("arn:aws:lambda:us-east-1:123456789012:function:f").unwrap(),
                None,
            )
            .unwrap();
        assert_eq!(own.key, "123456789012.f");
        assert_eq!(
            own.arn(),
            "arn:aws:lambda:us-east-1:123456789012:function:f"
        );
        let plain = s.resolve(FunctionRef::parse("f").unwrap(), None).unwrap();
        assert_eq!(plain, own);
        let e = s
            .resolve(
                FunctionRef::parse("arn:aws:lambda:us-east-1:000000000000:function:f").unwrap(),
                None,
            )
            .unwrap_err();
        assert_eq!(e.0.code, ErrorCode::AccessDenied);
        assert_eq!(e.0.status, 403);
        let e = Scope::root()
            .resolve(FunctionRef::parse("123456789012:function:f").unwrap(), None)
            .unwrap_err();
        assert_eq!(e.0.code, ErrorCode::AccessDenied);
        assert!(Scope::root().owns("f") && !Scope::root().owns("123456789012.f"));
        assert!(s.owns("123456789012.f") && !s.owns("f"));
    }
}
