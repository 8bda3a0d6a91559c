//! Versions and aliases: qualifiers (`$LATEST`, a version number, an alias
//! name), `PublishVersion` and `ListVersionsByFunction`, and the alias
//! operations (`CreateAlias`, `GetAlias`, `UpdateAlias`, `DeleteAlias`,
//! `ListAliases`) with weighted routing, in Lambda's shapes and with
//! Lambda's checks.
//!
//! Owns: the JSON shapes, parsing and checking qualifiers, alias names and
//! routing weights, and choosing a version for one invocation of an alias.
//! Must not: store versions or aliases.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, LambdaError};
use crate::function::{function_arn_in, LATEST};
use crate::types::FunctionConfiguration;

/// Longest alias name, characters.
pub const MAX_ALIAS_CHARS: usize = 128;
/// Longest alias description, characters.
pub const MAX_ALIAS_DESCRIPTION_CHARS: usize = 256;
/// Most versions an alias routes to besides its primary one (Lambda: 1).
pub const MAX_ADDITIONAL_VERSIONS: usize = 1;

/// What a qualifier names: `$LATEST`, a published version, or an alias.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Qualifier {
    /// `$LATEST`: the function's unpublished, changeable configuration.
    Latest,
    /// A published version, numbered from 1.
    Version(u32),
    /// An alias.
    Alias(String),
}

impl Qualifier {
    /// Parses a qualifier as Lambda's `Qualifier` parameter takes it: `$LATEST`,
    /// a version number or an alias name (`InvalidParameterValueException`
    /// otherwise).
    pub fn parse(s: &str) -> Result<Qualifier, LambdaError> {
        if s == LATEST {
            return Ok(Qualifier::Latest);
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u32>() {
                Ok(n) if n > 0 => Ok(Qualifier::Version(n)),
                _ => Err(LambdaError::invalid_parameter(format!(
                    "{s} is not a version of the function"
                ))),
            };
        }
        check_alias_name(s)?;
        Ok(Qualifier::Alias(s.to_string()))
    }

    /// Parses a version as `FunctionVersion` takes it: `$LATEST` or a number.
    pub fn parse_version(s: &str) -> Result<Qualifier, LambdaError> {
        match Qualifier::parse(s) {
            Ok(q @ (Qualifier::Latest | Qualifier::Version(_))) => Ok(q),
            _ => Err(LambdaError::validation(
                s,
                "functionVersion",
                "Member must satisfy regular expression pattern: (\\$LATEST|[0-9]+)",
            )),
        }
    }

    /// Whether this is `$LATEST`.
    pub fn is_latest(&self) -> bool {
        matches!(self, Qualifier::Latest)
    }
}

impl fmt::Display for Qualifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Qualifier::Latest => f.write_str(LATEST),
            Qualifier::Version(n) => write!(f, "{n}"),
            Qualifier::Alias(a) => f.write_str(a),
        }
    }
}

/// Checks an alias name: 1-128 characters of `[a-zA-Z0-9-_]`, not all
/// digits (that would be a version).
pub fn check_alias_name(s: &str) -> Result<(), LambdaError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_ALIAS_CHARS
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !s.bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(LambdaError::validation(
            s,
            "name",
            "Member must satisfy regular expression pattern: (?!^[0-9]+$)([a-zA-Z0-9-_]+)",
        ))
    }
}

/// The ARN of a function's version or alias:
/// `arn:aws:lambda:REGION:ACCOUNT:function:NAME:QUALIFIER`.
pub fn qualified_arn(account: &str, name: &str, qualifier: &Qualifier) -> String {
    format!("{}:{qualifier}", function_arn_in(account, name))
}

/// `PublishVersion` request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PublishVersionRequest {
    /// Publish only if `$LATEST`'s code has this SHA-256 (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_sha256: Option<String>,
    /// The version's description (default: `$LATEST`'s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Publish only if `$LATEST` is still at this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_id: Option<String>,
}

impl PublishVersionRequest {
    /// Checks the description's length.
    pub fn validate(&self) -> Result<(), LambdaError> {
        check_description(self.description.as_deref())
    }
}

/// `ListVersionsByFunction` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListVersionsResponse {
    /// `$LATEST` first, then the published versions in order.
    #[serde(default)]
    pub versions: Vec<FunctionConfiguration>,
    /// Where the next page starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

/// An alias's weighted routing: the share of invocations (0.0-1.0) that go to
/// an additional version instead of the primary one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasRoutingConfiguration {
    /// Version number → weight.
    #[serde(default)]
    pub additional_version_weights: BTreeMap<String, f64>,
}

impl AliasRoutingConfiguration {
    /// Checks the routing against the primary version: at most one
    /// additional version, a published one other than the primary, a weight
    /// in [0, 1], and a published primary (Lambda refuses `$LATEST`). Returns
    /// the weights as numbers.
    pub fn check(&self, primary: &Qualifier) -> Result<Vec<(u32, f64)>, LambdaError> {
        let weights = &self.additional_version_weights;
        if weights.is_empty() {
            return Ok(Vec::new());
        }
        if weights.len() > MAX_ADDITIONAL_VERSIONS {
            return Err(LambdaError::invalid_parameter(format!(
                "An alias can route to at most {MAX_ADDITIONAL_VERSIONS} additional version"
            )));
        }
        if primary.is_latest() {
            return Err(LambdaError::invalid_parameter(
                "$LATEST is not supported for an alias pointing to more than 1 version",
            ));
        }
        let mut out = Vec::new();
        for (v, w) in weights {
            let n = match Qualifier::parse(v) {
                Ok(Qualifier::Version(n)) => n,
                _ => {
                    return Err(LambdaError::invalid_parameter(format!(
                        "{v} is not a published version: an alias routes to published versions only"
                    )))
                }
            };
            if !(0.0..=1.0).contains(w) || w.is_nan() {
                return Err(LambdaError::validation(
                    &w.to_string(),
                    "routingConfig.additionalVersionWeights",
                    "Member must have value between 0.0 and 1.0",
                ));
            }
            if Qualifier::Version(n) == *primary {
                return Err(LambdaError::invalid_parameter(
                    "The primary version of an alias cannot also be an additional version",
                ));
            }
            out.push((n, *w));
        }
        Ok(out)
    }
}

/// `CreateAlias` request body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateAliasRequest {
    /// The alias's name.
    pub name: String,
    /// The version it points to (`$LATEST` or a number).
    pub function_version: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Weighted routing to one more version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_config: Option<AliasRoutingConfiguration>,
}

/// `UpdateAlias` request body: what is absent stays.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateAliasRequest {
    /// The version it points to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_version: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Weighted routing (an empty map removes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_config: Option<AliasRoutingConfiguration>,
    /// Update only if the alias is still at this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_id: Option<String>,
}

/// An alias as Lambda returns it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasConfiguration {
    /// `arn:aws:lambda:REGION:ACCOUNT:function:NAME:ALIAS`.
    pub alias_arn: String,
    /// The alias's name.
    pub name: String,
    /// The primary version.
    pub function_version: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Weighted routing, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_config: Option<AliasRoutingConfiguration>,
    /// Changes on every update of the alias.
    pub revision_id: String,
}

/// `ListAliases` response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListAliasesResponse {
    /// The aliases in name order.
    #[serde(default)]
    pub aliases: Vec<AliasConfiguration>,
    /// Where the next page starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

/// Checks a description's length (versions and aliases).
pub fn check_description(d: Option<&str>) -> Result<(), LambdaError> {
    match d {
        Some(d) if d.chars().count() > MAX_ALIAS_DESCRIPTION_CHARS => Err(LambdaError::validation(
            d,
            "description",
            &format!("Member must have length less than or equal to {MAX_ALIAS_DESCRIPTION_CHARS}"),
        )),
        _ => Ok(()),
    }
}

/// The version one invocation of an alias runs: `roll` is uniform in
/// [0, 1); an additional version with weight `w` gets the rolls below `w`.
pub fn route(primary: &Qualifier, additional: &[(u32, f64)], roll: f64) -> Qualifier {
    let mut acc = 0.0;
    for (v, w) in additional {
        acc += w;
        if roll < acc {
            return Qualifier::Version(*v);
        }
    }
    primary.clone()
}

/// `ResourceNotFoundException` for a version or alias that does not exist.
pub fn qualifier_not_found(account: &str, name: &str, q: &Qualifier) -> LambdaError {
    let arn = qualified_arn(account, name, q);
    match q {
        Qualifier::Alias(_) => LambdaError::new(
            ErrorCode::ResourceNotFound,
            format!("Cannot find alias arn: {arn}"),
        ),
        _ => LambdaError::new(
            ErrorCode::ResourceNotFound,
            format!("Function not found: {arn}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifiers_parse_as_lambda_reads_them() {
        assert_eq!(Qualifier::parse("$LATEST").unwrap(), Qualifier::Latest);
        assert_eq!(Qualifier::parse("12").unwrap(), Qualifier::Version(12));
        assert_eq!(
            Qualifier::parse("live-1_a").unwrap(),
            Qualifier::Alias("live-1_a".into())
        );
        for bad in ["", "0", "99999999999", "a b", "x:y", &"a".repeat(129)] {
            assert!(Qualifier::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Qualifier::parse_version("live").is_err());
        assert_eq!(
            Qualifier::parse_version("3").unwrap(),
            Qualifier::Version(3)
        );
        assert_eq!(Qualifier::Version(3).to_string(), "3");
        assert_eq!(
            qualified_arn("000000000000", "f", &Qualifier::Alias("live".into())),
            "arn:aws:lambda:us-east-1:000000000000:function:f:live"
        );
    }

    #[test]
    fn alias_names_are_never_all_digits() {
        assert!(check_alias_name("123").is_err());
        assert!(check_alias_name("v123").is_ok());
        assert!(check_alias_name(&"a".repeat(128)).is_ok());
        assert!(check_alias_name(&"a".repeat(129)).is_err());
    }

    #[test]
    fn routing_is_checked_against_the_primary_version() {
        let routing = |pairs: &[(&str, f64)]| AliasRoutingConfiguration {
            additional_version_weights: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        };
        let one = Qualifier::Version(1);
        assert_eq!(routing(&[]).check(&one).unwrap(), vec![]);
        assert_eq!(
            routing(&[("2", 0.25)]).check(&one).unwrap(),
            vec![(2, 0.25)]
        );
        // Two additional versions, a weight out of range, NaN, the primary
        // itself, an alias, $LATEST as primary: all refused.
        assert!(routing(&[("2", 0.1), ("3", 0.1)]).check(&one).is_err());
        assert!(routing(&[("2", 1.5)]).check(&one).is_err());
        assert!(routing(&[("2", -0.1)]).check(&one).is_err());
        assert!(routing(&[("2", f64::NAN)]).check(&one).is_err());
        assert!(routing(&[("1", 0.5)]).check(&one).is_err());
        assert!(routing(&[("live", 0.5)]).check(&one).is_err());
        assert!(routing(&[("$LATEST", 0.5)]).check(&one).is_err());
        assert!(routing(&[("2", 0.5)]).check(&Qualifier::Latest).is_err());
    }

    #[test]
    fn routing_splits_rolls_by_weight() {
        let primary = Qualifier::Version(1);
        let extra = [(2, 0.3)];
        assert_eq!(route(&primary, &extra, 0.0), Qualifier::Version(2));
        assert_eq!(route(&primary, &extra, 0.29), Qualifier::Version(2));
        assert_eq!(route(&primary, &extra, 0.3), primary);
        assert_eq!(route(&primary, &extra, 0.99), primary);
        assert_eq!(route(&primary, &[], 0.0), primary);
        assert_eq!(route(&primary, &[(2, 1.0)], 0.999), Qualifier::Version(2));
        assert_eq!(route(&primary, &[(2, 0.0)], 0.0), primary);
    }
}
