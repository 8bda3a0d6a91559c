//! Function identity and configuration rules: names and ARNs, runtimes, and the
//! bounds Lambda puts on memory, timeout, handler and environment.
//!
//! Owns: turning untrusted strings and numbers into validated values, with the
//! error code and message Lambda would answer. Must not: touch the disk or know
//! where functions are stored.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::LambdaError;

/// Region reported in ARNs.
pub const REGION: &str = "us-east-1";
/// The root account's id: the account of every function before accounts
/// existed, and of functions the root account's keys create.
pub const ACCOUNT_ID: &str = "000000000000";
/// The function's unpublished version.
pub const LATEST: &str = "$LATEST";

/// Smallest `MemorySize`, MB.
pub const MIN_MEMORY_MB: u32 = 128;
/// Largest `MemorySize`, MB.
pub const MAX_MEMORY_MB: u32 = 10240;
/// `MemorySize` when none is given, MB.
pub const DEFAULT_MEMORY_MB: u32 = 128;
/// Smallest `Timeout`, seconds.
pub const MIN_TIMEOUT_S: u32 = 1;
/// Largest `Timeout`, seconds.
pub const MAX_TIMEOUT_S: u32 = 900;
/// `Timeout` when none is given, seconds.
pub const DEFAULT_TIMEOUT_S: u32 = 3;
/// Largest total size of the environment variables (their JSON form), bytes.
pub const MAX_ENVIRONMENT_BYTES: usize = 4096;
/// Longest `Description`, characters.
pub const MAX_DESCRIPTION_CHARS: usize = 256;
/// Longest `Handler`, characters.
pub const MAX_HANDLER_CHARS: usize = 128;
/// Longest function name, characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest full function ARN (with qualifier), characters.
pub const MAX_ARN_CHARS: usize = 140;
/// The only `/tmp` size thaw offers, MB (Lambda's default `EphemeralStorage`).
pub const EPHEMERAL_STORAGE_MB: u32 = 512;

/// Lambda's pattern for the `FunctionName` parameter, quoted in errors.
const NAME_PATTERN: &str = r"(arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}(-gov)?-[a-z]+-\d{1}:)?(\d{12}:)?(function:)?([a-zA-Z0-9-_]+)(:(\$LATEST|[a-zA-Z0-9-_]+))?";

/// Environment variables a function may not set: Lambda reserves them.
/// Variables that once chose platform settings from a function's
/// environment and are now [`PlatformSettings`]: refused in an environment.
pub const MOVED_TO_SETTINGS: &[&str] = &["THAW_MEMORY_MODE", "THAW_RESEED"];

/// How restores may bring a snapshot's memory back
/// ([`PlatformSettings::memory_mode`]).
pub const MEMORY_MODES: &[&str] = &["eager", "lazy", "working-set"];

/// A function's settings that are thaw's own (not Lambda's): how the
/// platform runs its instances. Set with `PUT
/// /thaw/v1/functions/NAME/settings`; unset fields take the daemon's
/// defaults. Not part of the code revision (a change retires the
/// function's instances; its snapshot stays).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct PlatformSettings {
    /// How restores bring memory back: `eager`, `lazy` or `working-set`
    /// (default: the daemon's `--memory-mode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mode: Option<String>,
    /// Whether a restored instance gets new random state before it runs
    /// (default: true; false only to show what reseeding prevents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reseed: Option<bool>,
    /// Where the function's instances may connect to: `["all"]` (the
    /// default, as Lambda without a VPC), `["none"]`, or an allow-list of
    /// `CIDR`, `CIDR:PORT` or `CIDR:FIRST-LAST` (TCP and UDP). Whatever it
    /// says, instances never reach the host or each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<String>>,
}

impl PlatformSettings {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self == &PlatformSettings::default()
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), LambdaError> {
        if let Some(m) = &self.memory_mode {
            if !MEMORY_MODES.contains(&m.as_str()) {
                return Err(LambdaError::validation(
                    m,
                    "memoryMode",
                    &format!("Member must be one of [{}]", MEMORY_MODES.join(", ")),
                ));
            }
        }
        if let Some(rules) = &self.egress {
            if rules.len() > MAX_EGRESS_RULES {
                return Err(LambdaError::validation(
                    &format!("{} rules", rules.len()),
                    "egress",
                    &format!("Member must have length less than or equal to {MAX_EGRESS_RULES}"),
                ));
            }
        }
        Ok(())
    }
}

/// Most rules an egress allow-list may have.
pub const MAX_EGRESS_RULES: usize = 64;

const RESERVED_ENV_KEYS: &[&str] = &[
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
];

/// The ARN of a root-account function: `arn:aws:lambda:us-east-1:000000000000:function:NAME`.
pub fn function_arn(name: &str) -> String {
    function_arn_in(ACCOUNT_ID, name)
}

/// The ARN of a function of `account`: `arn:aws:lambda:us-east-1:ACCOUNT:function:NAME`.
pub fn function_arn_in(account: &str, name: &str) -> String {
    format!("arn:aws:lambda:{REGION}:{account}:function:{name}")
}

/// A validated function name: 1 to 64 characters of `[a-zA-Z0-9-_]`. Safe to
/// use as a file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FunctionName(String);

impl FunctionName {
    /// Validate a plain name (no ARN, no qualifier).
    pub fn parse(s: &str) -> Result<FunctionName, LambdaError> {
        if is_plain_name(s) {
            Ok(FunctionName(s.to_string()))
        } else {
            Err(bad_name(s))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The function's ARN in the root account.
    pub fn arn(&self) -> String {
        function_arn(&self.0)
    }

    /// The function's ARN in `account`.
    pub fn arn_in(&self, account: &str) -> String {
        function_arn_in(account, &self.0)
    }

    /// The name as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for FunctionName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// What a `FunctionName` parameter refers to: a name and maybe a qualifier.
///
/// Accepts the forms Lambda does: `NAME`, `NAME:QUALIFIER`,
/// `ACCOUNT:function:NAME[:QUALIFIER]` and
/// `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRef {
    /// The function's name.
    pub name: FunctionName,
    /// A version or alias, if one was given.
    pub qualifier: Option<String>,
    /// The account an ARN or partial ARN named, if it named one.
    pub account: Option<String>,
}

impl FunctionRef {
    /// Parse a name, partial ARN or ARN.
    pub fn parse(s: &str) -> Result<FunctionRef, LambdaError> {
        parse_ref(s).ok_or_else(|| bad_name(s))
    }

    /// The function name, provided the reference (and a `Qualifier` query
    /// parameter, if any) names `$LATEST`: thaw has no versions or aliases, so
    /// any other qualifier names a function version that does not exist.
    pub fn latest(self, query_qualifier: Option<&str>) -> Result<FunctionName, LambdaError> {
        let account = self.account.clone();
        self.latest_in(account.as_deref().unwrap_or(ACCOUNT_ID), query_qualifier)
    }

    /// As [`FunctionRef::latest`], for a caller of `account` (whose ARNs
    /// errors name). Whether the reference names another account is the
    /// caller's to check ([`FunctionRef::account`]).
    pub fn latest_in(
        self,
        account: &str,
        query_qualifier: Option<&str>,
    ) -> Result<FunctionName, LambdaError> {
        for q in [self.qualifier.as_deref(), query_qualifier]
            .into_iter()
            .flatten()
        {
            if q != LATEST {
                return Err(LambdaError::new(
                    crate::ErrorCode::ResourceNotFound,
                    format!("Function not found: {}:{q}", self.name.arn_in(account)),
                ));
            }
        }
        Ok(self.name)
    }
}

impl FunctionRef {
    /// The function name and what the reference and a `Qualifier` query
    /// parameter, if any, qualify it with (`$LATEST` when neither does).
    /// Both given and different: `InvalidParameterValueException`, as Lambda
    /// answers.
    pub fn qualified(
        self,
        query_qualifier: Option<&str>,
    ) -> Result<(FunctionName, crate::versions::Qualifier), LambdaError> {
        use crate::versions::Qualifier;
        let q = match (self.qualifier.as_deref(), query_qualifier) {
            (Some(a), Some(b)) if a != b => {
                return Err(LambdaError::invalid_parameter(
                    "The derived qualifier from the function name does not match the specified qualifier.",
                ))
            }
            (Some(q), _) | (None, Some(q)) => Qualifier::parse(q)?,
            (None, None) => Qualifier::Latest,
        };
        Ok((self.name, q))
    }
}

fn bad_name(s: &str) -> LambdaError {
    LambdaError::validation(
        s,
        "functionName",
        &format!("Member must satisfy regular expression pattern: {NAME_PATTERN}"),
    )
}

fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_CHARS
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_qualifier(s: &str) -> bool {
    s == LATEST
        || (!s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

fn is_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// `[a-z]{2}(-gov)?-[a-z]+-\d`
fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let lower = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase());
    let (country, middle, digit) = match parts.as_slice() {
        [c, m, d] => (*c, *m, *d),
        [c, "gov", m, d] => (*c, *m, *d),
        _ => return false,
    };
    country.len() == 2
        && lower(country)
        && lower(middle)
        && digit.len() == 1
        && digit.bytes().all(|b| b.is_ascii_digit())
}

/// `aws[a-zA-Z-]*`, or empty as the pattern allows.
fn is_partition(s: &str) -> bool {
    s.is_empty()
        || (s.starts_with("aws") && s.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-'))
}

fn parse_ref(s: &str) -> Option<FunctionRef> {
    if s.len() > MAX_ARN_CHARS {
        return None;
    }
    let parts: Vec<&str> = s.split(':').collect();
    // Everything before a `function` part is the ARN prefix; the part after it
    // is the name. A function may itself be called `function`, so the marker
    // only counts when a name follows it.
    let marker = parts
        .iter()
        .enumerate()
        .position(|(i, p)| *p == "function" && i + 1 < parts.len() && i > 0)
        .or_else(|| (parts.len() > 1 && parts[0] == "function").then_some(0));
    let (account, rest) = match marker {
        Some(m) => {
            let account = match &parts[..m] {
                [] => None,
                [account] if is_account(account) => Some(*account),
                [region, account] if is_region(region) && is_account(account) => Some(*account),
                ["arn", partition, "lambda", region, account]
                    if is_partition(partition) && is_region(region) && is_account(account) =>
                {
                    Some(*account)
                }
                _ => return None,
            };
            (account, &parts[m + 1..])
        }
        None => (None, &parts[..]),
    };
    let (name, qualifier) = match rest {
        [name] => (*name, None),
        [name, q] if is_qualifier(q) => (*name, Some(q.to_string())),
        _ => return None,
    };
    if !is_plain_name(name) {
        return None;
    }
    Some(FunctionRef {
        name: FunctionName(name.to_string()),
        qualifier,
        account: account.map(str::to_string),
    })
}

/// A runtime thaw can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// `python3.11`
    Python311,
    /// `nodejs20.x`
    Nodejs20,
    /// `nodejs22.x`
    Nodejs22,
    /// `provided`: a custom runtime, `bootstrap` in the code.
    Provided,
    /// `provided.al2`
    ProvidedAl2,
    /// `provided.al2023`
    ProvidedAl2023,
}

impl Runtime {
    /// Every supported runtime.
    pub const ALL: [Runtime; 6] = [
        Runtime::Python311,
        Runtime::Nodejs20,
        Runtime::Nodejs22,
        Runtime::Provided,
        Runtime::ProvidedAl2,
        Runtime::ProvidedAl2023,
    ];

    /// Lambda's identifier of the runtime.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Python311 => "python3.11",
            Runtime::Nodejs20 => "nodejs20.x",
            Runtime::Nodejs22 => "nodejs22.x",
            Runtime::Provided => "provided",
            Runtime::ProvidedAl2 => "provided.al2",
            Runtime::ProvidedAl2023 => "provided.al2023",
        }
    }

    /// Parse Lambda's identifier; an unsupported one is
    /// `InvalidParameterValueException`.
    pub fn parse(s: &str) -> Result<Runtime, LambdaError> {
        Runtime::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let supported: Vec<&str> = Runtime::ALL.iter().map(|r| r.as_str()).collect();
                LambdaError::invalid_parameter(format!(
                    "The runtime parameter of {s} is not supported. Supported runtimes: {}",
                    supported.join(", ")
                ))
            })
    }

    /// Whether this is a custom runtime (`provided*`), which needs no handler.
    pub fn is_custom(self) -> bool {
        matches!(
            self,
            Runtime::Provided | Runtime::ProvidedAl2 | Runtime::ProvidedAl2023
        )
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Validate a `MemorySize`, MB.
pub fn validate_memory_size(mb: i64) -> Result<u32, LambdaError> {
    check_range(mb, MIN_MEMORY_MB, MAX_MEMORY_MB, "memorySize")
}

/// Validate a `Timeout`, seconds.
pub fn validate_timeout(s: i64) -> Result<u32, LambdaError> {
    check_range(s, MIN_TIMEOUT_S, MAX_TIMEOUT_S, "timeout")
}

fn check_range(v: i64, min: u32, max: u32, field: &str) -> Result<u32, LambdaError> {
    if v < i64::from(min) {
        return Err(LambdaError::validation(
            &v.to_string(),
            field,
            &format!("Member must have value greater than or equal to {min}"),
        ));
    }
    if v > i64::from(max) {
        return Err(LambdaError::validation(
            &v.to_string(),
            field,
            &format!("Member must have value less than or equal to {max}"),
        ));
    }
    u32::try_from(v).map_err(|_| LambdaError::validation(&v.to_string(), field, "Out of range"))
}

/// Validate environment variables: keys of `[a-zA-Z][a-zA-Z0-9_]*`, none of
/// Lambda's reserved keys, and at most 4 KiB in total (measured as JSON, as
/// Lambda does).
pub fn validate_environment(vars: &BTreeMap<String, String>) -> Result<(), LambdaError> {
    for key in vars.keys() {
        let mut bytes = key.bytes();
        let ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(LambdaError::validation(
                key,
                "environment.variables",
                "Map keys must satisfy constraint: [Member must satisfy regular expression pattern: [a-zA-Z]([a-zA-Z0-9_])*]",
            ));
        }
    }
    let reserved: Vec<&str> = vars
        .keys()
        .map(String::as_str)
        .filter(|k| RESERVED_ENV_KEYS.contains(k))
        .collect();
    if !reserved.is_empty() {
        return Err(LambdaError::invalid_parameter(format!(
            "Lambda was unable to configure your environment variables because the environment variables you have provided contains reserved keys that are currently not supported for modification. Reserved keys used in this request: {}",
            reserved.join(", ")
        )));
    }
    if let Some(k) = vars
        .keys()
        .find(|k| MOVED_TO_SETTINGS.contains(&k.as_str()))
    {
        return Err(LambdaError::invalid_parameter(format!(
            "{k} is not a variable any more: it is a function setting of thaw's (PUT /thaw/v1/functions/NAME/settings, `thaw settings NAME`)"
        )));
    }
    let size = serde_json::to_string(vars)
        .map(|s| s.len())
        .unwrap_or(usize::MAX);
    if size > MAX_ENVIRONMENT_BYTES {
        return Err(LambdaError::invalid_parameter(format!(
            "Lambda was unable to configure your environment variables because the environment variables you have provided exceeded the 4KB limit. String measured: {size} bytes"
        )));
    }
    Ok(())
}

/// The configuration of a function, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSettings {
    /// The runtime.
    pub runtime: Runtime,
    /// Handler (`module.function`); empty for a custom runtime that has none.
    pub handler: String,
    /// Memory size, MB.
    pub memory_mb: u32,
    /// Timeout, seconds.
    pub timeout_s: u32,
    /// Environment variables.
    pub environment: BTreeMap<String, String>,
    /// Free text.
    pub description: String,
    /// Execution role ARN (recorded, not used: thaw has no IAM).
    pub role: String,
    /// What Lambda returns that thaw keeps without acting on it.
    pub kept: crate::kept::Kept,
}

impl FunctionSettings {
    /// Lambda's defaults for a function of `runtime` with `handler`.
    pub fn new(runtime: Runtime, handler: impl Into<String>) -> Self {
        FunctionSettings {
            runtime,
            handler: handler.into(),
            memory_mb: DEFAULT_MEMORY_MB,
            timeout_s: DEFAULT_TIMEOUT_S,
            environment: BTreeMap::new(),
            description: String::new(),
            role: String::new(),
            kept: crate::kept::Kept::default(),
        }
    }

    /// Check every rule, including those that tie fields together (a handler
    /// is required unless the runtime is custom).
    pub fn validate(&self) -> Result<(), LambdaError> {
        self.kept.validate()?;
        validate_memory_size(i64::from(self.memory_mb))?;
        validate_timeout(i64::from(self.timeout_s))?;
        validate_environment(&self.environment)?;
        if self.handler.is_empty() && !self.runtime.is_custom() {
            return Err(LambdaError::invalid_parameter(format!(
                "The Handler parameter is required for runtime {}",
                self.runtime
            )));
        }
        if self.handler.chars().count() > MAX_HANDLER_CHARS {
            return Err(LambdaError::validation(
                &self.handler,
                "handler",
                &format!("Member must have length less than or equal to {MAX_HANDLER_CHARS}"),
            ));
        }
        if self.handler.chars().any(char::is_whitespace) {
            return Err(LambdaError::validation(
                &self.handler,
                "handler",
                r"Member must satisfy regular expression pattern: [^\s]+",
            ));
        }
        if self.description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(LambdaError::validation(
                &self.description,
                "description",
                &format!("Member must have length less than or equal to {MAX_DESCRIPTION_CHARS}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    fn name_of(s: &str) -> Result<(String, Option<String>), ErrorCode> {
        FunctionRef::parse(s)
            .map(|r| (r.name.into_string(), r.qualifier))
            .map_err(|e| e.code)
    }

    #[test]
    fn names_and_arns() {
        let plain = |n: &str| Ok((n.to_string(), None));
        assert_eq!(name_of("hello"), plain("hello"));
        assert_eq!(name_of("a-B_9"), plain("a-B_9"));
        assert_eq!(name_of(&"x".repeat(64)), plain(&"x".repeat(64)));
        assert_eq!(name_of("function"), plain("function"));
        assert_eq!(
            name_of("arn:aws:lambda:us-east-1:000000000000:function:hello"),
            plain("hello")
        );
        assert_eq!(
            name_of("arn:aws:lambda:eu-west-2:123456789012:function:hello:$LATEST"),
            Ok(("hello".into(), Some("$LATEST".into())))
        );
        assert_eq!(
            name_of("arn:aws-us-gov:lambda:us-gov-west-1:123456789012:function:f"),
            plain("f")
        );
        assert_eq!(name_of("123456789012:function:hello"), plain("hello"));
        assert_eq!(name_of("function:hello"), plain("hello"));
        assert_eq!(
            name_of("hello:prod"),
            Ok(("hello".into(), Some("prod".into())))
        );
        for bad in [
            "",
            "bad name!",
            "a/b",
            "../etc",
            ".",
            "x:y:z",
            &"x".repeat(65),
            "arn:aws:lambda:us-east-1:000000000000:function:",
            "arn:aws:s3:us-east-1:000000000000:function:f",
            "arn:aws:lambda:us-east-1:0000:function:f",
            "arn:aws:lambda:useast1:000000000000:function:f",
            "12345:function:f",
            "hello:bad qualifier",
            "hello:",
        ] {
            assert_eq!(name_of(bad), Err(ErrorCode::Validation), "{bad:?}");
        }
        let e = FunctionRef::parse("bad name!").unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message.contains("'bad name!' at 'functionName'"),
            "{}",
            e.message
        );
    }

    #[test]
    fn only_latest_qualifier() {
        let r = FunctionRef::parse("f:$LATEST").unwrap();
        assert_eq!(r.latest(None).unwrap().as_str(), "f");
        let r = FunctionRef::parse("f").unwrap();
        assert_eq!(r.clone().latest(Some("$LATEST")).unwrap().as_str(), "f");
        let e = r.latest(Some("1")).unwrap_err();
        assert_eq!(e.code, ErrorCode::ResourceNotFound);
        let e = FunctionRef::parse("f:prod")
            .unwrap()
            .latest(None)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::ResourceNotFound);
        assert!(e.message.ends_with("function:f:prod"), "{}", e.message);
        assert!(FunctionName::parse("arn:aws:lambda:us-east-1:000000000000:function:f").is_err());
    }

    #[test]
    fn runtimes() {
        for r in Runtime::ALL {
            assert_eq!(Runtime::parse(r.as_str()).unwrap(), r);
        }
        let e = Runtime::parse("cobol85").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameterValue);
        assert!(Runtime::parse("python3.12").is_err());
        assert!(Runtime::ProvidedAl2023.is_custom() && !Runtime::Python311.is_custom());
    }

    #[test]
    fn bounds() {
        assert_eq!(validate_memory_size(128), Ok(128));
        assert_eq!(validate_memory_size(10240), Ok(10240));
        for bad in [127, 10241, 0, -1, i64::MAX] {
            assert_eq!(
                validate_memory_size(bad).unwrap_err().code,
                ErrorCode::Validation
            );
        }
        assert_eq!(validate_timeout(1), Ok(1));
        assert_eq!(validate_timeout(900), Ok(900));
        let e = validate_timeout(901).unwrap_err();
        assert!(
            e.message.contains("less than or equal to 900"),
            "{}",
            e.message
        );
        assert!(validate_timeout(0).is_err());
    }

    #[test]
    fn environment_rules() {
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(validate_environment(&env(&[("A", "1"), ("LOG_LEVEL", "debug")])).is_ok());
        assert_eq!(
            validate_environment(&env(&[("1A", "x")])).unwrap_err().code,
            ErrorCode::Validation
        );
        assert_eq!(
            validate_environment(&env(&[("A-B", "x")]))
                .unwrap_err()
                .code,
            ErrorCode::Validation
        );
        let e = validate_environment(&env(&[("AWS_REGION", "x")])).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameterValue);
        // {"K":"<v>"} is 8 bytes of JSON around the value.
        let fits = "v".repeat(MAX_ENVIRONMENT_BYTES - 8);
        assert!(validate_environment(&env(&[("K", &fits)])).is_ok());
        let over = "v".repeat(MAX_ENVIRONMENT_BYTES - 7);
        let e = validate_environment(&env(&[("K", &over)])).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameterValue);
        assert!(e.message.contains("4KB"), "{}", e.message);
    }

    #[test]
    fn handler_required_except_for_custom_runtimes() {
        let s = FunctionSettings::new(Runtime::Python311, "");
        assert_eq!(
            s.validate().unwrap_err().code,
            ErrorCode::InvalidParameterValue
        );
        assert!(FunctionSettings::new(Runtime::Provided, "")
            .validate()
            .is_ok());
        assert!(FunctionSettings::new(Runtime::Python311, "app.handler")
            .validate()
            .is_ok());
        let e = FunctionSettings::new(Runtime::Python311, "a b")
            .validate()
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Validation);
    }
}
