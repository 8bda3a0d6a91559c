//! The platform's lines in a function's log (`START`, `END`, `REPORT`), as
//! the function's `LoggingConfig` asks for them: Lambda's text lines, or
//! with `LogFormat: JSON` its JSON records (`platform.start`,
//! `platform.runtimeDone`, `platform.report`), which `SystemLogLevel`
//! `WARN` or above leaves out (they are `INFO`), as on Lambda.
//!
//! Owns: the format of those lines. Must not: store them (that is
//! [`crate::logs`]) or measure what they report (the pool does).

use serde_json::json;

use crate::registry::FunctionRecord;

/// What a `REPORT` line reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Report {
    pub duration_ms: f64,
    pub memory_size_mb: u32,
    pub max_memory_used_mb: Option<u64>,
    /// A cold start's runtime start and init.
    pub init_ms: Option<f64>,
    /// A restored instance's restore.
    pub restore_ms: Option<f64>,
    /// The sandbox of a new instance (thaw's own).
    pub sandbox_ms: Option<f64>,
    /// The function failed (or timed out).
    pub failed: bool,
}

/// How one function's platform lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlatformLog {
    json: bool,
    /// Whether `INFO` platform records are shown (`SystemLogLevel`).
    shown: bool,
}

impl PlatformLog {
    /// As `f`'s `LoggingConfig` says (text when it has none).
    pub fn of(f: &FunctionRecord) -> PlatformLog {
        let c = f.kept.logging_config.clone().unwrap_or_default();
        let json = c.log_format.as_deref() == Some("JSON");
        // Levels apply to the JSON format only, as on Lambda.
        let shown = !json
            || matches!(
                c.system_log_level.as_deref(),
                None | Some("DEBUG") | Some("INFO")
            );
        PlatformLog { json, shown }
    }

    /// Whether the function's runtime writes its logs as JSON
    /// (`AWS_LAMBDA_LOG_FORMAT`).
    pub fn is_json(&self) -> bool {
        self.json
    }

    fn record(&self, kind: &str, record: serde_json::Value) -> Option<String> {
        self.shown.then(|| {
            json!({
                "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "type": kind,
                "record": record,
            })
            .to_string()
        })
    }

    /// The line before the function runs; with the instance's address when
    /// it has a network of its own (thaw's addition to Lambda's line).
    pub fn start(
        &self,
        request_id: &str,
        version: &str,
        address: Option<std::net::Ipv4Addr>,
    ) -> Option<String> {
        if !self.json {
            let mut line = format!("START RequestId: {request_id} Version: {version}");
            if let Some(a) = address {
                line.push_str(&format!(" Address: {a}"));
            }
            return Some(line);
        }
        let mut record = json!({"requestId": request_id, "version": version});
        if let Some(a) = address {
            record["address"] = json!(a.to_string());
        }
        self.record("platform.start", record)
    }

    /// The line after it ran.
    pub fn end(&self, request_id: &str, r: &Report) -> Option<String> {
        if !self.json {
            return Some(format!("END RequestId: {request_id}"));
        }
        self.record(
            "platform.runtimeDone",
            json!({
                "requestId": request_id,
                "status": if r.failed { "error" } else { "success" },
                "metrics": {"durationMs": round2(r.duration_ms)},
            }),
        )
    }

    /// The report of what it cost.
    pub fn report(&self, request_id: &str, r: &Report) -> Option<String> {
        let billed = r.duration_ms.ceil() as u64;
        if !self.json {
            let mut line = format!(
                "REPORT RequestId: {request_id}\tDuration: {:.2} ms\tBilled Duration: {billed} ms\tMemory Size: {} MB",
                r.duration_ms, r.memory_size_mb
            );
            if let Some(m) = r.max_memory_used_mb {
                line.push_str(&format!("\tMax Memory Used: {m} MB"));
            }
            if let Some(ms) = r.restore_ms {
                line.push_str(&format!("\tRestore Duration: {ms:.2} ms"));
            }
            if let Some(ms) = r.init_ms {
                line.push_str(&format!("\tInit Duration: {ms:.2} ms"));
            }
            if let Some(ms) = r.sandbox_ms {
                line.push_str(&format!("\tSandbox Duration: {ms:.2} ms"));
            }
            return Some(line);
        }
        let mut metrics = json!({
            "durationMs": round2(r.duration_ms),
            "billedDurationMs": billed,
            "memorySizeMB": r.memory_size_mb,
        });
        if let Some(m) = r.max_memory_used_mb {
            metrics["maxMemoryUsedMB"] = json!(m);
        }
        if let Some(ms) = r.init_ms {
            metrics["initDurationMs"] = json!(round2(ms));
        }
        if let Some(ms) = r.restore_ms {
            metrics["restoreDurationMs"] = json!(round2(ms));
        }
        self.record(
            "platform.report",
            json!({
                "requestId": request_id,
                "metrics": metrics,
                "status": if r.failed { "error" } else { "success" },
            }),
        )
    }
}

fn round2(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use thaw_api::kept::LoggingConfig;

    fn with(config: Option<LoggingConfig>) -> PlatformLog {
        let mut f = crate::registry::test_record("f", "r1");
        f.kept.logging_config = config;
        PlatformLog::of(&f)
    }

    const REPORT: Report = Report {
        duration_ms: 1.234,
        memory_size_mb: 128,
        max_memory_used_mb: Some(40),
        init_ms: Some(50.0),
        restore_ms: None,
        sandbox_ms: Some(9.5),
        failed: false,
    };

    #[test]
    fn text_lines_are_lambdas() {
        let p = with(None);
        assert!(!p.is_json());
        assert_eq!(
            p.start("r", "3", None).unwrap(),
            "START RequestId: r Version: 3"
        );
        assert_eq!(
            p.start("r", "3", Some("100.64.0.7".parse().unwrap()))
                .unwrap(),
            "START RequestId: r Version: 3 Address: 100.64.0.7"
        );
        assert_eq!(p.end("r", &REPORT).unwrap(), "END RequestId: r");
        assert_eq!(
            p.report("r", &REPORT).unwrap(),
            "REPORT RequestId: r\tDuration: 1.23 ms\tBilled Duration: 2 ms\tMemory Size: 128 MB\tMax Memory Used: 40 MB\tInit Duration: 50.00 ms\tSandbox Duration: 9.50 ms"
        );
        // Levels do not apply to text.
        let p = with(Some(LoggingConfig {
            system_log_level: Some("WARN".into()),
            ..Default::default()
        }));
        assert!(p.start("r", "$LATEST", None).is_some());
    }

    #[test]
    fn json_records_are_lambdas_and_follow_the_system_level() {
        let p = with(Some(LoggingConfig {
            log_format: Some("JSON".into()),
            ..Default::default()
        }));
        assert!(p.is_json());
        let start: serde_json::Value =
            serde_json::from_str(&p.start("r", "$LATEST", None).unwrap()).unwrap();
        assert_eq!(start["type"], "platform.start");
        assert_eq!(
            start["record"],
            json!({"requestId": "r", "version": "$LATEST"})
        );
        assert!(start["time"].as_str().unwrap().ends_with('Z'));
        let report: serde_json::Value =
            serde_json::from_str(&p.report("r", &REPORT).unwrap()).unwrap();
        assert_eq!(report["type"], "platform.report");
        assert_eq!(
            report["record"]["metrics"],
            json!({"durationMs": 1.23, "billedDurationMs": 2, "memorySizeMB": 128,
                   "maxMemoryUsedMB": 40, "initDurationMs": 50.0})
        );
        let done: serde_json::Value = serde_json::from_str(
            &p.end(
                "r",
                &Report {
                    failed: true,
                    ..REPORT
                },
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (done["type"].as_str(), done["record"]["status"].as_str()),
            (Some("platform.runtimeDone"), Some("error"))
        );
        let quiet = with(Some(LoggingConfig {
            log_format: Some("JSON".into()),
            system_log_level: Some("WARN".into()),
            ..Default::default()
        }));
        assert_eq!(quiet.start("r", "1", None), None);
        assert_eq!(quiet.report("r", &REPORT), None);
    }
}
