//! Asynchronous invocation: Lambda's event invoke configuration
//! (`Put/Get/Update/Delete/ListFunctionEventInvokeConfig(s)`, under
//! `/2019-09-25/functions/{FunctionName}/event-invoke-config`), the record
//! Lambda sends to a destination, and thaw's own view of a function's event
//! queue (queued and failed events).
//!
//! Owns: the JSON shapes with botocore's member names, the bounds Lambda
//! applies (`MaximumRetryAttempts` 0-2, `MaximumEventAgeInSeconds`
//! 60-21600) and the retry schedule. Must not: queue or deliver anything
//! (that is the daemon's `thawd::events`).

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, LambdaError};

/// Retries of a function error when the configuration does not say (Lambda's 2).
pub const DEFAULT_MAXIMUM_RETRY_ATTEMPTS: u32 = 2;
/// Largest `MaximumRetryAttempts`.
pub const MAX_RETRY_ATTEMPTS: u32 = 2;
/// How long an event is kept when the configuration does not say (6 hours).
pub const DEFAULT_MAXIMUM_EVENT_AGE_SECS: u32 = 21_600;
/// Smallest `MaximumEventAgeInSeconds`.
pub const MIN_EVENT_AGE_SECS: u32 = 60;
/// Largest `MaximumEventAgeInSeconds`.
pub const MAX_EVENT_AGE_SECS: u32 = 21_600;

/// `Condition` of a destination record: the function succeeded.
pub const CONDITION_SUCCESS: &str = "Success";
/// The function failed on every attempt.
pub const CONDITION_RETRIES_EXHAUSTED: &str = "RetriesExhausted";
/// The event grew older than `MaximumEventAgeInSeconds` before it ran to its end.
pub const CONDITION_EVENT_AGE_EXCEEDED: &str = "EventAgeExceeded";

/// A destination (`OnSuccess`, `OnFailure`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OnTarget {
    /// The destination's ARN (thaw: a function of the same account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

/// `DestinationConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DestinationConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<OnTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnTarget>,
}

impl DestinationConfig {
    /// The success destination's ARN, if any.
    pub fn on_success_arn(&self) -> Option<&str> {
        self.on_success.as_ref()?.destination.as_deref()
    }
    /// The failure destination's ARN, if any.
    pub fn on_failure_arn(&self) -> Option<&str> {
        self.on_failure.as_ref()?.destination.as_deref()
    }
}

/// `PutFunctionEventInvokeConfig` / `UpdateFunctionEventInvokeConfig`
/// request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutFunctionEventInvokeConfigRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_retry_attempts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_event_age_in_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_config: Option<DestinationConfig>,
}

impl PutFunctionEventInvokeConfigRequest {
    /// Checks the numbers against Lambda's bounds (`ValidationException`).
    pub fn validate(&self) -> Result<(), LambdaError> {
        if let Some(n) = self.maximum_retry_attempts {
            check_range(n, "maximumRetryAttempts", 0, i64::from(MAX_RETRY_ATTEMPTS))?;
        }
        if let Some(n) = self.maximum_event_age_in_seconds {
            check_range(
                n,
                "maximumEventAgeInSeconds",
                i64::from(MIN_EVENT_AGE_SECS),
                i64::from(MAX_EVENT_AGE_SECS),
            )?;
        }
        Ok(())
    }
}

fn check_range(n: i64, field: &str, min: i64, max: i64) -> Result<(), LambdaError> {
    let constraint = if n < min {
        format!("Member must have value greater than or equal to {min}")
    } else if n > max {
        format!("Member must have value less than or equal to {max}")
    } else {
        return Ok(());
    };
    Err(LambdaError::validation(&n.to_string(), field, &constraint))
}

/// `FunctionEventInvokeConfig`: the response of Put, Get and Update, and
/// an item of List.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionEventInvokeConfig {
    /// Seconds since the epoch (a timestamp in Lambda's REST-JSON protocol).
    #[serde(default)]
    pub last_modified: f64,
    /// The function's ARN with its qualifier (`...:function:NAME:$LATEST`).
    #[serde(default)]
    pub function_arn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_retry_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_event_age_in_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_config: Option<DestinationConfig>,
}

impl FunctionEventInvokeConfig {
    /// Retries of a function error this configuration allows.
    pub fn retries(&self) -> u32 {
        self.maximum_retry_attempts
            .unwrap_or(DEFAULT_MAXIMUM_RETRY_ATTEMPTS)
    }
    /// How old an event may grow, seconds.
    pub fn max_age_secs(&self) -> u32 {
        self.maximum_event_age_in_seconds
            .unwrap_or(DEFAULT_MAXIMUM_EVENT_AGE_SECS)
    }
}

/// `ListFunctionEventInvokeConfigs` response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListFunctionEventInvokeConfigsResponse {
    #[serde(default)]
    pub function_event_invoke_configs: Vec<FunctionEventInvokeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

/// The wait before retry `attempt` (1 = the first retry) of a function
/// error: Lambda waits one minute, then two; `base` is that minute (thaw
/// lets tests shorten it with `--async-retry-delay-secs`).
pub fn retry_delay(base: std::time::Duration, attempt: u32) -> std::time::Duration {
    base * attempt.clamp(1, MAX_RETRY_ATTEMPTS)
}

/// The wait before trying again an event the platform could not run
/// (throttled, no room, an instance lost under it): exponential from one
/// second, at most `cap` (Lambda: up to 5 minutes), for the `n`th time.
pub fn backoff(n: u32, cap: std::time::Duration) -> std::time::Duration {
    let secs = 1u64 << n.min(16);
    std::time::Duration::from_secs(secs).min(cap)
}

/// The record Lambda sends to a destination (and thaw keeps in a
/// function's failed events): what was asked, what came back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRecord {
    /// `"1.0"`.
    pub version: String,
    /// RFC 3339, milliseconds.
    pub timestamp: String,
    pub request_context: RequestContext,
    /// The event as it was accepted.
    pub request_payload: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_context: Option<ResponseContext>,
    /// The function's last answer (its error document after a failure);
    /// absent when it never ran to an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_payload: Option<serde_json::Value>,
}

/// `requestContext` of a [`DestinationRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestContext {
    /// The request id the 202 carried.
    pub request_id: String,
    /// The function's ARN with its qualifier.
    pub function_arn: String,
    /// [`CONDITION_SUCCESS`], [`CONDITION_RETRIES_EXHAUSTED`] or
    /// [`CONDITION_EVENT_AGE_EXCEEDED`].
    pub condition: String,
    /// How many times the function ran the event.
    pub approximate_invoke_count: u32,
}

/// `responseContext` of a [`DestinationRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseContext {
    pub status_code: u16,
    pub executed_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_error: Option<String>,
}

/// A function's event queue as thaw shows it
/// (`GET /thaw/v1/functions/NAME/events`, a thaw extension).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EventQueueView {
    /// Events accepted and not yet finished (waiting, running or waiting
    /// for a retry).
    pub queued: u64,
    /// Events that failed and had no destination to go to, oldest first
    /// (at most the daemon's per-function limit; the oldest go first).
    pub failed: Vec<DestinationRecord>,
}

/// `InvalidParameterValueException` for a destination thaw cannot deliver to.
pub fn unsupported_destination(arn: &str) -> LambdaError {
    LambdaError::new(
        ErrorCode::InvalidParameterValue,
        format!(
            "The destination ARN {arn} is invalid: thaw delivers to functions of the same account (arn:aws:lambda:REGION:ACCOUNT:function:NAME)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bounds_are_lambdas() {
        let ok = PutFunctionEventInvokeConfigRequest {
            maximum_retry_attempts: Some(0),
            maximum_event_age_in_seconds: Some(60),
            destination_config: None,
        };
        ok.validate().unwrap();
        for (r, a) in [
            (Some(3), None),
            (Some(-1), None),
            (None, Some(59)),
            (None, Some(21_601)),
        ] {
            let e = PutFunctionEventInvokeConfigRequest {
                maximum_retry_attempts: r,
                maximum_event_age_in_seconds: a,
                destination_config: None,
            }
            .validate()
            .unwrap_err();
            assert_eq!(e.code, ErrorCode::Validation, "{r:?} {a:?}");
        }
    }

    #[test]
    fn lambdas_schedule() {
        let m = Duration::from_secs(60);
        assert_eq!(retry_delay(m, 1), m);
        assert_eq!(retry_delay(m, 2), 2 * m);
        let cap = Duration::from_secs(300);
        assert_eq!(backoff(0, cap), Duration::from_secs(1));
        assert_eq!(backoff(3, cap), Duration::from_secs(8));
        assert_eq!(backoff(40, cap), cap);
    }

    #[test]
    fn wire_names() {
        let c: FunctionEventInvokeConfig = serde_json::from_str(
            r#"{"LastModified":1.5,"FunctionArn":"a","MaximumRetryAttempts":1,
                "DestinationConfig":{"OnFailure":{"Destination":"arn:x"}}}"#,
        )
        .unwrap();
        assert_eq!(c.retries(), 1);
        assert_eq!(c.max_age_secs(), DEFAULT_MAXIMUM_EVENT_AGE_SECS);
        assert_eq!(
            c.destination_config.unwrap().on_failure_arn(),
            Some("arn:x")
        );
    }
}
