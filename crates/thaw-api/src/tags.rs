//! Tags of a function (`TagResource`, `UntagResource`, `ListTags`, under
//! `/2017-03-31/tags/{ARN}`, and `Tags` of `CreateFunction` and
//! `GetFunction`), with the limits Lambda applies.
//!
//! Owns: the JSON shapes and the checks. Must not: store tags.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::LambdaError;

/// Most tags on one function.
pub const MAX_TAGS: usize = 50;
/// Longest tag key, characters.
pub const MAX_KEY_CHARS: usize = 128;
/// Longest tag value, characters.
pub const MAX_VALUE_CHARS: usize = 256;

/// `TagResource` request body, and `ListTags` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tags {
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// Checks tags being added: keys of 1-128 characters not starting with the
/// reserved `aws:`, values of at most 256 (`InvalidParameterValueException`
/// as Lambda answers).
pub fn validate(tags: &BTreeMap<String, String>) -> Result<(), LambdaError> {
    for (k, v) in tags {
        let n = k.chars().count();
        if n == 0 || n > MAX_KEY_CHARS {
            return Err(LambdaError::invalid_parameter(format!(
                "Tag key {k:?} must have 1 to {MAX_KEY_CHARS} characters"
            )));
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(LambdaError::invalid_parameter(format!(
                "Tag key {k:?} uses the reserved prefix aws:"
            )));
        }
        if v.chars().count() > MAX_VALUE_CHARS {
            return Err(LambdaError::invalid_parameter(format!(
                "The value of tag {k:?} must have at most {MAX_VALUE_CHARS} characters"
            )));
        }
    }
    Ok(())
}

/// Checks the number of tags a function would have.
pub fn check_count(n: usize) -> Result<(), LambdaError> {
    if n > MAX_TAGS {
        return Err(LambdaError::invalid_parameter(format!(
            "A function can have at most {MAX_TAGS} tags; it would have {n}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        let one = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        validate(&one("team", "a")).unwrap();
        validate(&one("k", "")).unwrap();
        assert!(validate(&one("", "a")).is_err());
        assert!(validate(&one("aws:x", "a")).is_err());
        assert!(validate(&one(&"k".repeat(129), "a")).is_err());
        assert!(validate(&one("k", &"v".repeat(257))).is_err());
        check_count(50).unwrap();
        assert!(check_count(51).is_err());
    }
}
