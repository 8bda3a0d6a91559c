//! thaw-api: the wire types of thaw's Lambda-compatible API, Lambda's error
//! codes, the validation rules Lambda applies to function names and
//! configurations, and a typed blocking client.
//!
//! Shared by the daemon (which serves these shapes) and the CLI (which sends
//! them). Must not: depend on any server code, touch the data directory, or
//! run functions.
//!
//! | module | what |
//! |---|---|
//! | [`error`] | error codes, statuses, the error body |
//! | [`function`] | names and ARNs, runtimes, configuration bounds |
//! | [`types`] | management request and response documents |
//! | [`invoke`] | Invoke headers, limits, `Server-Timing` |
//! | [`logs`] | thaw's log records |
//! | [`concurrency`] | reserved and provisioned concurrency, account settings |
//! | [`events`] | asynchronous invocation: event invoke configs, destination records |
//! | [`tags`] | function tags and their limits |
//! | [`kept`] | configuration Lambda returns that thaw keeps without acting on it |
//! | [`client`] | the blocking client |
//! | [`package`] | zipping a code directory |

#![deny(unsafe_code)]

pub mod auth;
pub mod client;
pub mod concurrency;
pub mod error;
pub mod events;
pub mod function;
pub mod invoke;
pub mod kept;
pub mod logs;
pub mod package;
pub mod tags;
pub mod types;
pub mod urls;
pub mod versions;

pub use client::{Client, ClientError, InvokeOptions, InvokeResult};
pub use concurrency::{
    AccountLimit, AccountSettings, AccountUsage, Concurrency,
    ListProvisionedConcurrencyConfigsResponse, ProvisionedConcurrencyConfig,
    ProvisionedConcurrencyConfigListItem, ProvisionedConcurrencyStatus,
    PutFunctionConcurrencyRequest, PutProvisionedConcurrencyConfigRequest,
};
pub use error::{ErrorBody, ErrorCode, ErrorType, LambdaError, ERROR_TYPE_HEADER};
pub use function::{
    function_arn, FunctionName, FunctionRef, FunctionSettings, PlatformSettings, Runtime,
};
pub use invoke::{
    InvocationType, MemoryInfo, ServerTiming, SnapshotReport, SnapshotState, SnapshotStatus,
    StartKind,
};
pub use logs::LogRecord;
pub use types::{
    CodeInfo, CreateFunctionRequest, Environment, EphemeralStorage, FunctionCode,
    FunctionCodeLocation, FunctionConfiguration, GetFunctionResponse, ListFunctionsResponse,
    NewFunction, UpdateFunctionCodeRequest, UpdateFunctionConfigurationRequest,
};
