//! Function logs: every line a runtime writes, tagged with its request id,
//! appended to `DATA/logs/<function>.jsonl`.

use serde::{Deserialize, Serialize};

/// One stored log line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogRecord {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    pub request_id: Option<String>,
    /// `stdout`, `stderr` or `platform` (START/END/REPORT lines).
    pub stream: String,
    pub line: String,
}

/// Log storage of the daemon.
pub struct LogStore {}

impl LogStore {
    /// The last `limit` lines of `function`, optionally only those of one request.
    pub fn read(&self, _function: &str, _request_id: Option<&str>, _limit: usize) -> Vec<LogRecord> {
        todo!("lead: logs")
    }

    /// Forget the logs of a deleted function.
    pub fn delete(&self, _function: &str) {
        todo!("lead: logs")
    }
}
