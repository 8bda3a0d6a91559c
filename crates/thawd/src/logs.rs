//! Function logs: every line a runtime writes, tagged with its request id, plus
//! the platform's START/END/REPORT lines, appended as JSON lines to
//! `DATA/logs/<function>.jsonl` (rotated to `.jsonl.1` past a size limit).
//!
//! Owns: log persistence and lookup. Must not: interpret log content.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A log file is rotated once it grows past this many bytes.
const ROTATE_BYTES: u64 = 16 * 1024 * 1024;

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

impl LogRecord {
    /// A record stamped with the current time.
    pub fn now(request_id: Option<String>, stream: &str, line: String) -> Self {
        LogRecord {
            ts_ms: now_ms(),
            request_id,
            stream: stream.to_string(),
            line,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Log storage of the daemon.
pub struct LogStore {
    dir: PathBuf,
    open: Mutex<HashMap<String, File>>,
}

impl LogStore {
    /// Store logs under `dir` (created if missing).
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(LogStore {
            dir,
            open: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, function: &str) -> PathBuf {
        self.dir.join(format!("{function}.jsonl"))
    }

    /// Append records of `function`. Failures are logged, never propagated: a
    /// full disk must not fail an invocation.
    pub fn append(&self, function: &str, records: &[LogRecord]) {
        if records.is_empty() {
            return;
        }
        let mut buf = Vec::new();
        for r in records {
            if serde_json::to_writer(&mut buf, r).is_ok() {
                buf.push(b'\n');
            }
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.path(function);
        if let Some(f) = open.get(function) {
            if f.metadata()
                .map(|m| m.len() > ROTATE_BYTES)
                .unwrap_or(false)
            {
                open.remove(function);
                let _ = std::fs::rename(&path, path.with_extension("jsonl.1"));
            }
        }
        if !open.contains_key(function) {
            match OpenOptions::new().create(true).append(true).open(&path) {
                Ok(f) => {
                    open.insert(function.to_string(), f);
                }
                Err(e) => {
                    tracing::warn!(function, error = %e, "cannot open log file");
                    return;
                }
            }
        }
        if let Some(f) = open.get_mut(function) {
            if let Err(e) = f.write_all(&buf) {
                tracing::warn!(function, error = %e, "cannot write log file");
            }
        }
    }

    /// The last `limit` lines of `function`, optionally only those of one request.
    pub fn read(&self, function: &str, request_id: Option<&str>, limit: usize) -> Vec<LogRecord> {
        let path = self.path(function);
        let mut out = std::collections::VecDeque::with_capacity(limit.min(4096));
        for p in [path.with_extension("jsonl.1"), path] {
            let Ok(f) = File::open(&p) else { continue };
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                let Ok(rec) = serde_json::from_str::<LogRecord>(&line) else {
                    continue;
                };
                if request_id.is_some() && rec.request_id.as_deref() != request_id {
                    continue;
                }
                if out.len() == limit {
                    out.pop_front();
                }
                if limit > 0 {
                    out.push_back(rec);
                }
            }
        }
        out.into()
    }

    /// Forget the logs of a deleted function.
    pub fn delete(&self, function: &str) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(function);
        let path = self.path(function);
        let _ = std::fs::remove_file(path.with_extension("jsonl.1"));
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_filter_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path().join("logs")).unwrap();
        let recs: Vec<LogRecord> = (0..10)
            .map(|i| LogRecord::now(Some(format!("r{}", i % 2)), "stdout", format!("line {i}")))
            .collect();
        store.append("f", &recs);
        assert_eq!(store.read("f", None, 100).len(), 10);
        let last3 = store.read("f", None, 3);
        assert_eq!(
            last3.iter().map(|r| r.line.as_str()).collect::<Vec<_>>(),
            ["line 7", "line 8", "line 9"]
        );
        let r1 = store.read("f", Some("r1"), 100);
        assert_eq!(r1.len(), 5);
        assert!(r1.iter().all(|r| r.request_id.as_deref() == Some("r1")));
        store.delete("f");
        assert!(store.read("f", None, 100).is_empty());
    }
}
