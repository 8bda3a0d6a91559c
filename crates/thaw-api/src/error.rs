//! Lambda's error vocabulary: the error codes, their HTTP status, and the JSON
//! body that carries them.
//!
//! Owns: the mapping from an error code to a status and to the `Type` field
//! (`User` or `Service`). Must not: decide which failure gets which code; the
//! daemon does that where it handles the failure.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Name of the response header that carries the error code. boto3 and the
/// other AWS SDKs read the code from this header, not from the body.
pub const ERROR_TYPE_HEADER: &str = "x-amzn-ErrorType";

/// An error code of the Lambda API.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `ResourceNotFoundException` (404): the function does not exist.
    ResourceNotFound,
    /// `ResourceConflictException` (409): the function already exists.
    ResourceConflict,
    /// `ProvisionedConcurrencyConfigNotFoundException` (404): the function
    /// has no provisioned concurrency configuration.
    ProvisionedConcurrencyConfigNotFound,
    /// `InvalidParameterValueException` (400): a parameter is unsupported or inconsistent.
    InvalidParameterValue,
    /// `ValidationException` (400): a parameter violates its declared constraints.
    Validation,
    /// `InvalidRequestContentException` (400): the body cannot be parsed.
    InvalidRequestContent,
    /// `PreconditionFailedException` (412): the `RevisionId` does not match.
    PreconditionFailed,
    /// `UnsupportedMediaTypeException` (415).
    UnsupportedMediaType,
    /// `RequestTooLargeException` (413): the request body is over the limit.
    RequestTooLarge,
    /// `TooManyRequestsException` (429): throttled.
    TooManyRequests,
    /// `RequestTimeoutException` (408): the client did not send its request
    /// in time (a thaw code: Lambda's front end closes such connections).
    RequestTimeout,
    /// `UnknownOperationException` (404): no such route.
    UnknownOperation,
    /// `AccessDeniedException` (403): the caller's account may not do this
    /// (another account's function, an operator's operation).
    AccessDenied,
    /// `ServiceException` (500): the platform failed.
    Service,
    /// `SubnetIPAddressLimitReachedException` (502): no address is free
    /// for a new instance (thaw: its instance subnet is used up).
    SubnetIpAddressLimitReached,
    /// Any code this crate does not know (seen by the client only).
    Other(String),
}

impl ErrorCode {
    /// Every code this crate knows, for parsing.
    const KNOWN: [ErrorCode; 15] = [
        ErrorCode::ResourceNotFound,
        ErrorCode::ResourceConflict,
        ErrorCode::ProvisionedConcurrencyConfigNotFound,
        ErrorCode::InvalidParameterValue,
        ErrorCode::Validation,
        ErrorCode::InvalidRequestContent,
        ErrorCode::PreconditionFailed,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RequestTooLarge,
        ErrorCode::TooManyRequests,
        ErrorCode::RequestTimeout,
        ErrorCode::UnknownOperation,
        ErrorCode::AccessDenied,
        ErrorCode::Service,
        ErrorCode::SubnetIpAddressLimitReached,
    ];

    /// The code as Lambda spells it, e.g. `ResourceNotFoundException`.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::ResourceNotFound => "ResourceNotFoundException",
            ErrorCode::ResourceConflict => "ResourceConflictException",
            ErrorCode::ProvisionedConcurrencyConfigNotFound => {
                "ProvisionedConcurrencyConfigNotFoundException"
            }
            ErrorCode::InvalidParameterValue => "InvalidParameterValueException",
            ErrorCode::Validation => "ValidationException",
            ErrorCode::InvalidRequestContent => "InvalidRequestContentException",
            ErrorCode::PreconditionFailed => "PreconditionFailedException",
            ErrorCode::UnsupportedMediaType => "UnsupportedMediaTypeException",
            ErrorCode::RequestTooLarge => "RequestTooLargeException",
            ErrorCode::TooManyRequests => "TooManyRequestsException",
            ErrorCode::RequestTimeout => "RequestTimeoutException",
            ErrorCode::UnknownOperation => "UnknownOperationException",
            ErrorCode::AccessDenied => "AccessDeniedException",
            ErrorCode::Service => "ServiceException",
            ErrorCode::SubnetIpAddressLimitReached => "SubnetIPAddressLimitReachedException",
            ErrorCode::Other(s) => s,
        }
    }

    /// Parse a code as found in `x-amzn-ErrorType`, which may carry a suffix
    /// after a colon (`ResourceNotFoundException:http://...`).
    pub fn parse(s: &str) -> ErrorCode {
        let name = s.split(':').next().unwrap_or(s).trim();
        ErrorCode::KNOWN
            .into_iter()
            .find(|c| c.as_str() == name)
            .unwrap_or_else(|| ErrorCode::Other(name.to_string()))
    }

    /// The HTTP status Lambda answers this code with.
    pub fn status(&self) -> u16 {
        match self {
            ErrorCode::ResourceNotFound
            | ErrorCode::UnknownOperation
            | ErrorCode::ProvisionedConcurrencyConfigNotFound => 404,
            ErrorCode::ResourceConflict => 409,
            ErrorCode::InvalidParameterValue
            | ErrorCode::Validation
            | ErrorCode::InvalidRequestContent => 400,
            ErrorCode::PreconditionFailed => 412,
            ErrorCode::RequestTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::AccessDenied => 403,
            ErrorCode::SubnetIpAddressLimitReached => 502,
            ErrorCode::Service | ErrorCode::Other(_) => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whose fault an error is, as Lambda reports it in the body's `Type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorType {
    /// The caller's request was wrong (4xx).
    User,
    /// The service failed (5xx).
    Service,
}

/// A Lambda API error: a code, a status and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct LambdaError {
    /// The error code.
    pub code: ErrorCode,
    /// HTTP status; normally `code.status()`.
    pub status: u16,
    /// Human-readable message, returned to the caller verbatim.
    pub message: String,
    /// Lambda's `Reason` field (e.g. `ConcurrentInvocationLimitExceeded`).
    pub reason: Option<String>,
}

impl LambdaError {
    /// An error with the code's usual status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        LambdaError {
            status: code.status(),
            code,
            message: message.into(),
            reason: None,
        }
    }

    /// Override the status (Lambda answers some codes with more than one status).
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Attach Lambda's `Reason` field.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// `ResourceNotFoundException` for a function of the root account, with
    /// Lambda's message.
    pub fn function_not_found(name: &str) -> Self {
        LambdaError::function_not_found_in(crate::function::ACCOUNT_ID, name)
    }

    /// `ResourceNotFoundException` for a function of `account`.
    pub fn function_not_found_in(account: &str, name: &str) -> Self {
        LambdaError::new(
            ErrorCode::ResourceNotFound,
            format!(
                "Function not found: {}",
                crate::function::function_arn_in(account, name)
            ),
        )
    }

    /// `ValidationException` in Lambda's "1 validation error detected" form.
    pub fn validation(value: &str, field: &str, constraint: &str) -> Self {
        LambdaError::new(
            ErrorCode::Validation,
            format!(
                "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: {constraint}"
            ),
        )
    }

    /// `InvalidParameterValueException`.
    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        LambdaError::new(ErrorCode::InvalidParameterValue, message)
    }

    /// `InvalidRequestContentException` for a body that is not valid JSON.
    pub fn unparsable_body(cause: impl fmt::Display) -> Self {
        LambdaError::new(
            ErrorCode::InvalidRequestContent,
            format!("Could not parse request body into json: {cause}"),
        )
    }

    /// `Type` field of the body: `User` for 4xx, `Service` for 5xx.
    pub fn error_type(&self) -> ErrorType {
        if self.status >= 500 {
            ErrorType::Service
        } else {
            ErrorType::User
        }
    }

    /// The JSON body Lambda sends with this error.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error_type: Some(self.error_type()),
            message_upper: Some(self.message.clone()),
            message: Some(self.message.clone()),
            reason: self.reason.clone(),
        }
    }
}

/// The JSON body of an error response. Lambda is inconsistent about the case
/// of `message`, so both spellings are written and either is read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// `User` or `Service`.
    #[serde(rename = "Type", default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<ErrorType>,
    /// `Message`.
    #[serde(rename = "Message", default, skip_serializing_if = "Option::is_none")]
    pub message_upper: Option<String>,
    /// `message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Reason`, for throttling errors.
    #[serde(rename = "Reason", default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ErrorBody {
    /// The message, whichever spelling carried it.
    pub fn text(&self) -> Option<&str> {
        self.message.as_deref().or(self.message_upper.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_have_lambda_statuses() {
        for c in ErrorCode::KNOWN {
            assert_eq!(ErrorCode::parse(c.as_str()), c);
        }
        assert_eq!(ErrorCode::ResourceNotFound.status(), 404);
        assert_eq!(ErrorCode::ResourceConflict.status(), 409);
        assert_eq!(ErrorCode::RequestTooLarge.status(), 413);
        assert_eq!(ErrorCode::TooManyRequests.status(), 429);
        assert_eq!(ErrorCode::UnsupportedMediaType.status(), 415);
        assert_eq!(ErrorCode::Service.status(), 500);
        assert_eq!(
            ErrorCode::parse("ResourceNotFoundException:http://internal.amazon.com/coral/"),
            ErrorCode::ResourceNotFound
        );
        assert_eq!(
            ErrorCode::parse("KMSAccessDeniedException"),
            ErrorCode::Other("KMSAccessDeniedException".into())
        );
    }

    #[test]
    fn body_shape() {
        let e = LambdaError::new(ErrorCode::TooManyRequests, "Rate exceeded")
            .with_reason("ConcurrentInvocationLimitExceeded");
        let v = serde_json::to_value(e.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "Type": "User",
                "Message": "Rate exceeded",
                "message": "Rate exceeded",
                "Reason": "ConcurrentInvocationLimitExceeded"
            })
        );
        let s = LambdaError::new(ErrorCode::Service, "x").with_status(503);
        assert_eq!(s.error_type(), ErrorType::Service);
    }
}
