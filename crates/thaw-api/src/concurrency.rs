//! Lambda's concurrency controls: reserved concurrency
//! (`Put/Get/DeleteFunctionConcurrency`), provisioned concurrency
//! configurations (`Put/Get/Delete/ListProvisionedConcurrencyConfig(s)`) and
//! the account's limits (`GetAccountSettings`), with the member names of
//! botocore's service model (`lambda/2015-03-31/service-2.json`) and the
//! checks Lambda applies to them.
//!
//! Owns: the JSON shapes, the validation of the numbers, and the arithmetic
//! of the account's unreserved pool. Must not: store anything or count
//! invocations (that is the daemon's admission control).

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, LambdaError};

/// The account's concurrent executions when the daemon is not told
/// otherwise (Lambda's default quota).
pub const DEFAULT_ACCOUNT_CONCURRENCY: u32 = 1000;
/// The unreserved concurrency Lambda always keeps for functions without a
/// reservation (with the default account limit of 1000).
pub const LAMBDA_MIN_UNRESERVED: u32 = 100;
/// Largest code zip, bytes (`CodeSizeZipped`, Lambda's 50 MB).
pub const CODE_SIZE_ZIPPED: u64 = 52_428_800;
/// Largest unzipped code, bytes (`CodeSizeUnzipped`, Lambda's 250 MB).
pub const CODE_SIZE_UNZIPPED: u64 = 262_144_000;
/// Total code storage of the account, bytes (`TotalCodeSize`, Lambda's 75 GB).
pub const TOTAL_CODE_SIZE: u64 = 80_530_636_800;

/// `Reason` of a throttle because the function's reserved concurrency is in use.
pub const REASON_RESERVED_LIMIT: &str = "ReservedFunctionConcurrentInvocationLimitExceeded";
/// `Reason` of a throttle because the account's (unreserved) concurrency is in use.
pub const REASON_ACCOUNT_LIMIT: &str = "ConcurrentInvocationLimitExceeded";

/// The smallest `UnreservedConcurrentExecutions` an account with `limit`
/// concurrent executions must keep: Lambda's 100 for limits of 1000 and
/// more, a tenth of the limit (at least 1, and never more than the limit)
/// for smaller limits, so that a small daemon can still reserve most of its
/// concurrency.
pub fn min_unreserved(limit: u32) -> u32 {
    if limit >= DEFAULT_ACCOUNT_CONCURRENCY {
        LAMBDA_MIN_UNRESERVED
    } else {
        limit.div_ceil(10).max(1).min(limit)
    }
}

/// `PutFunctionConcurrency` request body
/// (`PUT /2017-10-31/functions/{FunctionName}/concurrency`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutFunctionConcurrencyRequest {
    /// Required; 0 stops the function (every invocation is throttled).
    #[serde(default)]
    pub reserved_concurrent_executions: Option<i64>,
}

impl PutFunctionConcurrencyRequest {
    /// The reservation asked for, checked against the model's constraints
    /// (required, `min: 0`): `ValidationException` otherwise, as Lambda's
    /// front end answers.
    pub fn validate(&self) -> Result<u32, LambdaError> {
        validate_count(
            self.reserved_concurrent_executions,
            "reservedConcurrentExecutions",
            0,
        )
    }
}

/// `Concurrency`: the response of `PutFunctionConcurrency`, and the
/// `Concurrency` member of `GetFunction`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Concurrency {
    /// The reservation; absent when the function has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_concurrent_executions: Option<u32>,
}

/// `GetFunctionConcurrency` response (`{}` when the function has no
/// reservation).
pub type GetFunctionConcurrencyResponse = Concurrency;

/// Checks a reservation of `requested` for a function against the
/// account: the other functions' reservations (`reserved_by_others`) and
/// the provisioned concurrency of functions without a reservation
/// (`provisioned_unreserved`, which Lambda takes from the unreserved pool)
/// must leave at least [`min_unreserved`] unreserved.
pub fn check_reservation(
    account_limit: u32,
    reserved_by_others: u64,
    provisioned_unreserved: u64,
    requested: u32,
) -> Result<(), LambdaError> {
    let min = min_unreserved(account_limit);
    let taken = reserved_by_others + provisioned_unreserved + u64::from(requested);
    if u64::from(account_limit) < taken + u64::from(min) {
        return Err(LambdaError::invalid_parameter(format!(
            "Specified ReservedConcurrentExecutions for function decreases account's UnreservedConcurrentExecution below its minimum value of [{min}]."
        )));
    }
    Ok(())
}

/// `AccountLimit` of `GetAccountSettings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AccountLimit {
    /// Code storage of all functions, bytes.
    pub total_code_size: u64,
    /// Largest unzipped code of one function, bytes.
    pub code_size_unzipped: u64,
    /// Largest code zip, bytes.
    pub code_size_zipped: u64,
    /// The account's concurrent executions (`thaw serve --account-concurrency`).
    pub concurrent_executions: u32,
    /// What is left for functions without a reservation.
    pub unreserved_concurrent_executions: u32,
}

/// `AccountUsage` of `GetAccountSettings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AccountUsage {
    /// Sum of the functions' code zips, bytes.
    pub total_code_size: u64,
    /// Number of functions.
    pub function_count: u64,
}

/// `GetAccountSettings` response (`GET /2016-08-19/account-settings`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AccountSettings {
    /// Limits.
    pub account_limit: AccountLimit,
    /// Usage.
    pub account_usage: AccountUsage,
}

impl AccountSettings {
    /// The settings of an account with `limit` concurrent executions, of
    /// which `reserved` are reserved by functions and `provisioned_unreserved`
    /// provisioned for functions without a reservation.
    pub fn new(
        limit: u32,
        reserved: u64,
        provisioned_unreserved: u64,
        usage: AccountUsage,
    ) -> Self {
        let taken = reserved.saturating_add(provisioned_unreserved);
        let unreserved = u64::from(limit).saturating_sub(taken);
        AccountSettings {
            account_limit: AccountLimit {
                total_code_size: TOTAL_CODE_SIZE,
                code_size_unzipped: CODE_SIZE_UNZIPPED,
                code_size_zipped: CODE_SIZE_ZIPPED,
                concurrent_executions: limit,
                unreserved_concurrent_executions: u32::try_from(unreserved).unwrap_or(u32::MAX),
            },
            account_usage: usage,
        }
    }
}

/// `Status` of a provisioned concurrency configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProvisionedConcurrencyStatus {
    /// Instances are being started.
    InProgress,
    /// Every requested instance exists and is ready.
    Ready,
    /// Instances could not be started (`StatusReason` says why).
    Failed,
}

/// `PutProvisionedConcurrencyConfig` request body
/// (`PUT /2019-09-30/functions/{FunctionName}/provisioned-concurrency?Qualifier=...`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutProvisionedConcurrencyConfigRequest {
    /// Required, at least 1.
    #[serde(default)]
    pub provisioned_concurrent_executions: Option<i64>,
}

impl PutProvisionedConcurrencyConfigRequest {
    /// The number of instances asked for, checked against the model's
    /// constraints (required, `min: 1`).
    pub fn validate(&self) -> Result<u32, LambdaError> {
        validate_count(
            self.provisioned_concurrent_executions,
            "provisionedConcurrentExecutions",
            1,
        )
    }
}

/// Checks `requested` provisioned instances against the function's
/// reservation: provisioned concurrency is part of it, so it may not exceed
/// it (Lambda's `InvalidParameterValueException`).
pub fn check_provisioned(requested: u32, reserved: Option<u32>) -> Result<(), LambdaError> {
    match reserved {
        Some(r) if requested > r => Err(LambdaError::invalid_parameter(
            "Requested Provisioned Concurrency should not be greater than the reservedConcurrentExecution for function",
        )),
        _ => Ok(()),
    }
}

/// A provisioned concurrency configuration as `Put`/`Get` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProvisionedConcurrencyConfig {
    /// Instances asked for.
    pub requested_provisioned_concurrent_executions: u32,
    /// Instances that exist and can take invocations.
    pub available_provisioned_concurrent_executions: u32,
    /// Instances that exist.
    pub allocated_provisioned_concurrent_executions: u32,
    /// `IN_PROGRESS`, `READY` or `FAILED`.
    pub status: ProvisionedConcurrencyStatus,
    /// Why it failed (or what it is doing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// When the configuration was last changed (ISO 8601).
    pub last_modified: String,
}

/// One entry of `ListProvisionedConcurrencyConfigs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProvisionedConcurrencyConfigListItem {
    /// The qualified ARN the configuration applies to.
    pub function_arn: String,
    /// The configuration.
    #[serde(flatten)]
    pub config: ProvisionedConcurrencyConfig,
}

/// `ListProvisionedConcurrencyConfigs` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ListProvisionedConcurrencyConfigsResponse {
    /// The configurations.
    pub provisioned_concurrency_configs: Vec<ProvisionedConcurrencyConfigListItem>,
    /// Absent: thaw has at most one configuration per function.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

/// `ProvisionedConcurrencyConfigNotFoundException` for a function without one.
pub fn provisioned_config_not_found() -> LambdaError {
    LambdaError::new(
        ErrorCode::ProvisionedConcurrencyConfigNotFound,
        "No Provisioned Concurrency Config found for this function",
    )
}

/// A required count with a minimum, as Lambda's front end checks it.
fn validate_count(v: Option<i64>, field: &str, min: i64) -> Result<u32, LambdaError> {
    match v {
        None => Err(LambdaError::new(
            ErrorCode::Validation,
            format!("1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"),
        )),
        Some(n) if n < min => Err(LambdaError::validation(
            &n.to_string(),
            field,
            &format!("Member must have value greater than or equal to {min}"),
        )),
        Some(n) => u32::try_from(n).map_err(|_| {
            LambdaError::invalid_parameter(format!(
                "Specified {} is out of range: {n}",
                pascal(field)
            ))
        }),
    }
}

fn pascal(field: &str) -> String {
    let mut c = field.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reserved_concurrency_validation() {
        let req = |v: serde_json::Value| {
            serde_json::from_value::<PutFunctionConcurrencyRequest>(v)
                .unwrap()
                .validate()
        };
        assert_eq!(req(json!({"ReservedConcurrentExecutions": 0})).unwrap(), 0);
        assert_eq!(req(json!({"ReservedConcurrentExecutions": 5})).unwrap(), 5);
        let e = req(json!({"ReservedConcurrentExecutions": -1})).unwrap_err();
        assert_eq!((e.code, e.status), (ErrorCode::Validation, 400));
        assert!(
            e.message.contains("reservedConcurrentExecutions"),
            "{}",
            e.message
        );
        let e = req(json!({})).unwrap_err();
        assert_eq!(e.code, ErrorCode::Validation);
        assert!(e.message.contains("must not be null"), "{}", e.message);
        let e = req(json!({"ReservedConcurrentExecutions": 1_i64 << 40})).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameterValue);
    }

    #[test]
    fn account_minimum_and_reservation_checks() {
        assert_eq!(min_unreserved(1000), 100);
        assert_eq!(min_unreserved(5000), 100);
        assert_eq!(min_unreserved(100), 10);
        assert_eq!(min_unreserved(10), 1);
        assert_eq!(min_unreserved(1), 1);
        assert!(check_reservation(1000, 0, 0, 900).is_ok());
        let e = check_reservation(1000, 0, 0, 901).unwrap_err();
        assert_eq!(
            (e.code.clone(), e.status),
            (ErrorCode::InvalidParameterValue, 400)
        );
        assert_eq!(
            e.message,
            "Specified ReservedConcurrentExecutions for function decreases account's UnreservedConcurrentExecution below its minimum value of [100]."
        );
        assert!(check_reservation(1000, 800, 0, 101).is_err());
        assert!(check_reservation(1000, 800, 50, 50).is_ok());
        assert!(check_reservation(1000, 800, 51, 50).is_err());
        assert!(check_reservation(10, 0, 0, 9).is_ok());
        assert!(check_reservation(10, 0, 0, 10).is_err());
    }

    #[test]
    fn provisioned_validation() {
        let req = |v: serde_json::Value| {
            serde_json::from_value::<PutProvisionedConcurrencyConfigRequest>(v)
                .unwrap()
                .validate()
        };
        assert_eq!(
            req(json!({"ProvisionedConcurrentExecutions": 2})).unwrap(),
            2
        );
        assert_eq!(
            req(json!({"ProvisionedConcurrentExecutions": 0}))
                .unwrap_err()
                .code,
            ErrorCode::Validation
        );
        assert_eq!(req(json!({})).unwrap_err().code, ErrorCode::Validation);
        assert!(check_provisioned(3, None).is_ok());
        assert!(check_provisioned(3, Some(3)).is_ok());
        let e = check_provisioned(4, Some(3)).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameterValue);
        let nf = provisioned_config_not_found();
        assert_eq!(nf.status, 404);
        assert_eq!(
            nf.code.as_str(),
            "ProvisionedConcurrencyConfigNotFoundException"
        );
    }

    #[test]
    fn json_shapes_use_botocore_member_names() {
        assert_eq!(
            serde_json::to_value(Concurrency::default()).unwrap(),
            json!({})
        );
        assert_eq!(
            serde_json::to_value(Concurrency {
                reserved_concurrent_executions: Some(3)
            })
            .unwrap(),
            json!({"ReservedConcurrentExecutions": 3})
        );
        let s = AccountSettings::new(
            1000,
            150,
            20,
            AccountUsage {
                total_code_size: 42,
                function_count: 2,
            },
        );
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({
                "AccountLimit": {
                    "TotalCodeSize": 80_530_636_800_u64,
                    "CodeSizeUnzipped": 262_144_000,
                    "CodeSizeZipped": 52_428_800,
                    "ConcurrentExecutions": 1000,
                    "UnreservedConcurrentExecutions": 830
                },
                "AccountUsage": {"TotalCodeSize": 42, "FunctionCount": 2}
            })
        );
        let c = ProvisionedConcurrencyConfig {
            requested_provisioned_concurrent_executions: 2,
            available_provisioned_concurrent_executions: 1,
            allocated_provisioned_concurrent_executions: 1,
            status: ProvisionedConcurrencyStatus::InProgress,
            status_reason: None,
            last_modified: "2026-01-01T00:00:00+0000".into(),
        };
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({
                "RequestedProvisionedConcurrentExecutions": 2,
                "AvailableProvisionedConcurrentExecutions": 1,
                "AllocatedProvisionedConcurrentExecutions": 1,
                "Status": "IN_PROGRESS",
                "LastModified": "2026-01-01T00:00:00+0000"
            })
        );
        let list = ListProvisionedConcurrencyConfigsResponse {
            provisioned_concurrency_configs: vec![ProvisionedConcurrencyConfigListItem {
                function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST".into(),
                config: ProvisionedConcurrencyConfig {
                    status: ProvisionedConcurrencyStatus::Failed,
                    status_reason: Some("init failed".into()),
                    ..c
                },
            }],
            next_marker: None,
        };
        let v = serde_json::to_value(&list).unwrap();
        let item = &v["ProvisionedConcurrencyConfigs"][0];
        assert_eq!(item["Status"], "FAILED");
        assert_eq!(item["StatusReason"], "init failed");
        assert_eq!(
            item["FunctionArn"],
            "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST"
        );
        assert_eq!(item["RequestedProvisionedConcurrentExecutions"], 2);
        let back: ListProvisionedConcurrencyConfigsResponse = serde_json::from_value(v).unwrap();
        assert_eq!(back, list);
        assert_eq!(
            serde_json::to_value(ProvisionedConcurrencyStatus::Ready).unwrap(),
            "READY"
        );
    }
}
