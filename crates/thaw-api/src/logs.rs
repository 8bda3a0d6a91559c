//! thaw's own logs endpoint (`GET /thaw/v1/functions/{name}/logs`): one JSON
//! array of [`LogRecord`]s, oldest first.
//!
//! Owns: the wire shape only. Must not: know how logs are stored.

use serde::{Deserialize, Serialize};

/// Default number of records one logs request returns.
pub const DEFAULT_LOG_LIMIT: usize = 100;
/// Largest `limit` a logs request may ask for.
pub const MAX_LOG_LIMIT: usize = 10_000;

/// One line of a function's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The invocation the line belongs to, if any.
    #[serde(default)]
    pub request_id: Option<String>,
    /// `stdout`, `stderr` or `platform` (START/END/REPORT lines).
    pub stream: String,
    /// The line, without its newline.
    pub line: String,
}
