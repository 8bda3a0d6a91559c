//! Configuration Lambda accepts and returns that thaw keeps: `VpcConfig`,
//! `DeadLetterConfig`, `TracingConfig`, `KMSKeyArn`, `SnapStart` and
//! `LoggingConfig` of `CreateFunction` / `UpdateFunctionConfiguration`,
//! checked as Lambda checks them, stored with the function and returned in
//! its configuration (with Lambda's defaults where Lambda always returns
//! one).
//!
//! `SnapStart` decides whether published versions are snapshotted at
//! publication and `LoggingConfig` how logs are written (the daemon reads
//! both). The others have no effect in thaw: there are no VPCs (a
//! function's egress is thaw's own setting, `PlatformSettings::egress`), no
//! SQS or SNS for a dead-letter queue (failure destinations of functions
//! are `PutFunctionEventInvokeConfig`'s), no X-Ray, and no KMS (environment
//! values are sealed with thaw's own key). Must not: act on them.

use serde::{Deserialize, Serialize};

use crate::error::LambdaError;

/// `VpcConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VpcConfig {
    #[serde(default)]
    pub subnet_ids: Vec<String>,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_allowed_for_dual_stack: Option<bool>,
    /// Returned only (empty: thaw has no VPCs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
}

/// `DeadLetterConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeadLetterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_arn: Option<String>,
}

/// `TracingConfig` (`Mode`: `Active` or `PassThrough`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TracingConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// `SnapStart` (`ApplyOn`: `PublishedVersions` or `None`); responses add
/// `OptimizationStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnapStart {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimization_status: Option<String>,
}

/// `LoggingConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LoggingConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_log_level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_log_level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_group: Option<String>,
}

/// The kept fields of one function, with Lambda's member names (request
/// and response documents flatten it; the function record stores it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Kept {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_config: Option<VpcConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_config: Option<DeadLetterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing_config: Option<TracingConfig>,
    #[serde(default, rename = "KMSKeyArn", skip_serializing_if = "Option::is_none")]
    pub kms_key_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snap_start: Option<SnapStart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging_config: Option<LoggingConfig>,
}

fn one_of(value: &str, field: &str, allowed: &[&str]) -> Result<(), LambdaError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(LambdaError::validation(
            value,
            field,
            &format!(
                "Member must satisfy enum value set: [{}]",
                allowed.join(", ")
            ),
        ))
    }
}

impl Kept {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Kept::default()
    }

    /// Lambda's checks (`ValidationException` for values outside a field's
    /// set, `InvalidParameterValueException` for inconsistent ones).
    pub fn validate(&self) -> Result<(), LambdaError> {
        if let Some(v) = &self.vpc_config {
            if v.subnet_ids.len() > 16 {
                return Err(LambdaError::validation(
                    &v.subnet_ids.len().to_string(),
                    "vpcConfig.subnetIds",
                    "Member must have length less than or equal to 16",
                ));
            }
            if v.security_group_ids.len() > 5 {
                return Err(LambdaError::validation(
                    &v.security_group_ids.len().to_string(),
                    "vpcConfig.securityGroupIds",
                    "Member must have length less than or equal to 5",
                ));
            }
        }
        if let Some(arn) = self
            .dead_letter_config
            .as_ref()
            .and_then(|d| d.target_arn.as_deref())
            .filter(|a| !a.is_empty())
        {
            if !(arn.starts_with("arn:aws:sqs:") || arn.starts_with("arn:aws:sns:")) {
                return Err(LambdaError::invalid_parameter(format!(
                    "The DeadLetterConfig TargetArn {arn} must be an SQS queue or SNS topic ARN"
                )));
            }
        }
        if let Some(m) = self.tracing_config.as_ref().and_then(|t| t.mode.as_deref()) {
            one_of(m, "tracingConfig.mode", &["Active", "PassThrough"])?;
        }
        if let Some(k) = self.kms_key_arn.as_deref().filter(|k| !k.is_empty()) {
            if !k.starts_with("arn:aws:kms:") {
                return Err(LambdaError::validation(
                    k,
                    "kMSKeyArn",
                    r"Member must satisfy regular expression pattern: (arn:(aws[a-zA-Z-]*)?:[a-z0-9-.]+:.*)|()",
                ));
            }
        }
        if let Some(a) = self.snap_start.as_ref().and_then(|s| s.apply_on.as_deref()) {
            one_of(a, "snapStart.applyOn", &["PublishedVersions", "None"])?;
        }
        if let Some(l) = &self.logging_config {
            if let Some(f) = l.log_format.as_deref() {
                one_of(f, "loggingConfig.logFormat", &["JSON", "Text"])?;
            }
            if let Some(a) = l.application_log_level.as_deref() {
                one_of(
                    a,
                    "loggingConfig.applicationLogLevel",
                    &["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"],
                )?;
            }
            if let Some(s) = l.system_log_level.as_deref() {
                one_of(
                    s,
                    "loggingConfig.systemLogLevel",
                    &["DEBUG", "INFO", "WARN"],
                )?;
            }
            let levels = l.application_log_level.is_some() || l.system_log_level.is_some();
            if levels && l.log_format.as_deref() != Some("JSON") {
                return Err(LambdaError::invalid_parameter(
                    "Log levels can only be set when LogFormat is JSON",
                ));
            }
        }
        Ok(())
    }

    /// `update` over these: each field it gives replaces this one's.
    pub fn merged(&self, update: &Kept) -> Kept {
        Kept {
            vpc_config: update
                .vpc_config
                .clone()
                .or_else(|| self.vpc_config.clone()),
            dead_letter_config: update
                .dead_letter_config
                .clone()
                .or_else(|| self.dead_letter_config.clone()),
            tracing_config: update
                .tracing_config
                .clone()
                .or_else(|| self.tracing_config.clone()),
            kms_key_arn: update
                .kms_key_arn
                .clone()
                .or_else(|| self.kms_key_arn.clone()),
            snap_start: update
                .snap_start
                .clone()
                .or_else(|| self.snap_start.clone()),
            logging_config: update
                .logging_config
                .clone()
                .or_else(|| self.logging_config.clone()),
        }
    }

    /// The fields as a function's configuration returns them: each
    /// `*_returned` below, `DeadLetterConfig` and `KMSKeyArn` as set.
    pub fn returned(&self, function: &str) -> Kept {
        Kept {
            vpc_config: self.vpc_returned(),
            dead_letter_config: self.dead_letter_config.clone(),
            tracing_config: Some(self.tracing_returned()),
            kms_key_arn: self.kms_key_arn.clone(),
            snap_start: Some(self.snap_start_returned()),
            logging_config: Some(self.logging_returned(function)),
        }
    }

    /// `TracingConfig` as returned: `PassThrough` unless set.
    pub fn tracing_returned(&self) -> TracingConfig {
        TracingConfig {
            mode: Some(
                self.tracing_config
                    .as_ref()
                    .and_then(|t| t.mode.clone())
                    .unwrap_or_else(|| "PassThrough".into()),
            ),
        }
    }

    /// Whether `SnapStart` applies to published versions (`ApplyOn:
    /// PublishedVersions`).
    pub fn snap_start_applies(&self) -> bool {
        self.snap_start.as_ref().and_then(|s| s.apply_on.as_deref()) == Some("PublishedVersions")
    }

    /// `SnapStart` as returned for `$LATEST`: `ApplyOn` as set (`None` by
    /// default); `OptimizationStatus` `Off` (SnapStart applies to
    /// published versions, never to `$LATEST`).
    pub fn snap_start_returned(&self) -> SnapStart {
        SnapStart {
            apply_on: Some(
                self.snap_start
                    .as_ref()
                    .and_then(|s| s.apply_on.clone())
                    .unwrap_or_else(|| "None".into()),
            ),
            optimization_status: Some("Off".into()),
        }
    }

    /// `LoggingConfig` as returned: `Text` to `/aws/lambda/NAME` unless set.
    pub fn logging_returned(&self, function: &str) -> LoggingConfig {
        let given = self.logging_config.clone().unwrap_or_default();
        LoggingConfig {
            log_format: Some(given.log_format.unwrap_or_else(|| "Text".into())),
            application_log_level: given.application_log_level,
            system_log_level: given.system_log_level,
            log_group: Some(
                given
                    .log_group
                    .unwrap_or_else(|| format!("/aws/lambda/{function}")),
            ),
        }
    }

    /// `VpcConfig` as returned (with an empty `VpcId`), when set.
    pub fn vpc_returned(&self) -> Option<VpcConfig> {
        self.vpc_config.clone().map(|mut v| {
            v.vpc_id.get_or_insert_with(String::new);
            v
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn lambdas_checks() {
        let ok = Kept {
            vpc_config: Some(VpcConfig {
                subnet_ids: vec!["subnet-1".into()],
                ..Default::default()
            }),
            dead_letter_config: Some(DeadLetterConfig {
                target_arn: Some("arn:aws:sqs:us-east-1:000000000000:dlq".into()),
            }),
            tracing_config: Some(TracingConfig {
                mode: Some("Active".into()),
            }),
            kms_key_arn: Some("arn:aws:kms:us-east-1:000000000000:key/k".into()),
            snap_start: Some(SnapStart {
                apply_on: Some("PublishedVersions".into()),
                optimization_status: None,
            }),
            logging_config: Some(LoggingConfig {
                log_format: Some("JSON".into()),
                application_log_level: Some("DEBUG".into()),
                ..Default::default()
            }),
        };
        ok.validate().unwrap();
        let bad = |k: Kept| k.validate().unwrap_err().code;
        assert_eq!(
            bad(Kept {
                tracing_config: Some(TracingConfig {
                    mode: Some("Loud".into())
                }),
                ..Default::default()
            }),
            ErrorCode::Validation
        );
        assert_eq!(
            bad(Kept {
                snap_start: Some(SnapStart {
                    apply_on: Some("Always".into()),
                    optimization_status: None
                }),
                ..Default::default()
            }),
            ErrorCode::Validation
        );
        assert_eq!(
            bad(Kept {
                logging_config: Some(LoggingConfig {
                    application_log_level: Some("INFO".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            bad(Kept {
                dead_letter_config: Some(DeadLetterConfig {
                    target_arn: Some("arn:aws:lambda:us-east-1:000000000000:function:f".into())
                }),
                ..Default::default()
            }),
            ErrorCode::InvalidParameterValue
        );
    }

    #[test]
    fn defaults_returned_and_merge() {
        let k = Kept::default();
        assert_eq!(k.tracing_returned().mode.as_deref(), Some("PassThrough"));
        assert_eq!(k.snap_start_returned().apply_on.as_deref(), Some("None"));
        assert_eq!(
            k.logging_returned("f").log_group.as_deref(),
            Some("/aws/lambda/f")
        );
        assert!(k.vpc_returned().is_none());
        let update = Kept {
            kms_key_arn: Some("arn:aws:kms:x".into()),
            ..Default::default()
        };
        let base = Kept {
            tracing_config: Some(TracingConfig {
                mode: Some("Active".into()),
            }),
            ..Default::default()
        };
        let m = base.merged(&update);
        assert_eq!(m.tracing_config, base.tracing_config);
        assert_eq!(m.kms_key_arn, update.kms_key_arn);
    }
}
