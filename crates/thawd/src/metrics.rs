//! Prometheus metrics of the daemon: per-phase start latency, invocation
//! outcomes and instance counts, labelled by function.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::invoke::{PhaseTimings, StartKind};

/// Histogram buckets in seconds, from 0.1 ms to 30 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The daemon's metric registry.
pub struct Metrics {
    registry: Registry,
    phase: HistogramVec,
    invocations: IntCounterVec,
    instance_starts: IntCounterVec,
    instances: IntGaugeVec,
    snapshot_builds: IntCounterVec,
    restore_memory: IntCounterVec,
    working_sets: IntCounterVec,
    templates: IntGaugeVec,
    throttles: IntCounterVec,
    snapshot_damaged: IntCounterVec,
    memory_failures: IntCounterVec,
    decisions: IntCounterVec,
    queue: HistogramVec,
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let phase = HistogramVec::new(
            HistogramOpts::new(
                "thaw_start_phase_seconds",
                "Duration of each phase of serving an invocation: sandbox, runtime, init (cold starts only) and invoke",
            )
            .buckets(BUCKETS.to_vec()),
            &["function", "start", "phase"],
        )?;
        let invocations = IntCounterVec::new(
            Opts::new(
                "thaw_invocations_total",
                "Invocations by how the instance was obtained and their outcome",
            ),
            &["function", "start", "outcome"],
        )?;
        let instance_starts = IntCounterVec::new(
            Opts::new("thaw_instance_starts_total", "Instance starts by result"),
            &["function", "result"],
        )?;
        let instances = IntGaugeVec::new(
            Opts::new("thaw_instances", "Live instances by state"),
            &["function", "state"],
        )?;
        registry.register(Box::new(phase.clone()))?;
        registry.register(Box::new(invocations.clone()))?;
        registry.register(Box::new(instance_starts.clone()))?;
        let snapshot_builds = IntCounterVec::new(
            Opts::new(
                "thaw_snapshot_builds_total",
                "Snapshot builds by function and outcome (ready, failed)",
            ),
            &["function", "outcome"],
        )?;
        registry.register(Box::new(snapshot_builds.clone()))?;
        registry.register(Box::new(instances.clone()))?;
        let restore_memory = IntCounterVec::new(
            Opts::new(
                "thaw_restore_memory_total",
                "Restored instances' memory until their first invocation ended: pages prefetched from working sets, page faults served, pages those faults copied, bytes read from snapshots",
            ),
            &["function", "mode", "what"],
        )?;
        registry.register(Box::new(restore_memory.clone()))?;
        let working_sets = IntCounterVec::new(
            Opts::new(
                "thaw_working_sets_total",
                "Working sets by event: used, missing, invalid (refused and removed), recorded, rerecorded (drifted), write_failed",
            ),
            &["function", "event"],
        )?;
        registry.register(Box::new(working_sets.clone()))?;
        let templates = IntGaugeVec::new(
            Opts::new(
                "thaw_templates",
                "Templates (snapshots restored once, never resumed, cloned into new instances) on this host",
            ),
            &["function"],
        )?;
        registry.register(Box::new(templates.clone()))?;
        let throttles = IntCounterVec::new(
            Opts::new(
                "thaw_throttles_total",
                "Invocations throttled by admission control, by Lambda's Reason (ReservedFunctionConcurrentInvocationLimitExceeded, ConcurrentInvocationLimitExceeded)",
            ),
            &["function", "reason"],
        )?;
        registry.register(Box::new(throttles.clone()))?;
        let snapshot_damaged = IntCounterVec::new(
            Opts::new(
                "thaw_snapshots_damaged_total",
                "Snapshots discarded because a chunk or page failed its integrity check (each is built again)",
            ),
            &["function"],
        )?;
        registry.register(Box::new(snapshot_damaged.clone()))?;
        let memory_failures = IntCounterVec::new(
            Opts::new(
                "thaw_restore_memory_failures_total",
                "Restored instances lost during an invocation because their memory could not be served (integrity: the bytes were bad; store: the store failed); the invocation is retried once on a cold start",
            ),
            &["function", "cause"],
        )?;
        registry.register(Box::new(memory_failures.clone()))?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "thaw_scheduler_decisions_total",
                "Placement decisions of the scheduler (crate::scheduler): warm, wait, new_worker, new_sandbox, reject; a queued request is decided again at each re-check",
            ),
            &["function", "decision"],
        )?;
        registry.register(Box::new(decisions.clone()))?;
        let queue = HistogramVec::new(
            HistogramOpts::new(
                "thaw_queue_seconds",
                "Time from an invocation's arrival to the scheduler's final decision for it (the instance found or start begun, or the 429)",
            )
            .buckets(BUCKETS.to_vec()),
            &["function"],
        )?;
        registry.register(Box::new(queue.clone()))?;
        Ok(Metrics {
            registry,
            phase,
            invocations,
            instance_starts,
            instances,
            snapshot_builds,
            restore_memory,
            working_sets,
            templates,
            throttles,
            snapshot_damaged,
            memory_failures,
            decisions,
            queue,
        })
    }

    /// The templates gauge, for the templates' thread to keep.
    pub fn templates(&self) -> IntGaugeVec {
        self.templates.clone()
    }

    /// Record how a restored instance's memory came back.
    pub fn observe_restore_memory(
        &self,
        function: &str,
        report: &thaw_runtime::control::MemoryReport,
    ) {
        let mode = if report.working_set == "clone" {
            "clone"
        } else if !report.lazy {
            "eager"
        } else if report.working_set == "used" {
            "working-set"
        } else {
            "lazy"
        };
        for (what, n) in [
            ("prefetched_pages", report.prefetched_pages),
            ("faults", report.faults),
            ("fault_pages", report.fault_pages),
            ("bytes_read", report.bytes_read),
        ] {
            self.restore_memory
                .with_label_values(&[function, mode, what])
                .inc_by(n);
        }
    }

    /// Count one working-set event.
    pub fn count_working_set(&self, function: &str, event: &str) {
        self.working_sets
            .with_label_values(&[function, event])
            .inc();
    }

    /// Record the phases of one invocation.
    pub fn observe_invocation(
        &self,
        function: &str,
        start: StartKind,
        t: &PhaseTimings,
        outcome: &str,
    ) {
        let s = start.as_str();
        if start == StartKind::Cold {
            for (phase, ms) in [
                ("sandbox", t.sandbox_ms),
                ("runtime", t.runtime_ms),
                ("init", t.init_ms),
            ] {
                self.phase
                    .with_label_values(&[function, s, phase])
                    .observe(ms / 1000.0);
            }
        }
        if start == StartKind::Restored {
            for (phase, ms) in [
                ("sandbox", t.sandbox_ms),
                ("restore", t.restore_ms),
                ("memory", t.memory_ms),
                ("hooks", t.hooks_ms),
            ] {
                self.phase
                    .with_label_values(&[function, s, phase])
                    .observe(ms / 1000.0);
            }
        }
        self.phase
            .with_label_values(&[function, s, "invoke"])
            .observe(t.invoke_ms / 1000.0);
        self.invocations
            .with_label_values(&[function, s, outcome])
            .inc();
    }

    /// Count an invocation that never reached an instance (throttled, failed start).
    pub fn count_rejected(&self, function: &str, outcome: &str) {
        self.invocations
            .with_label_values(&[function, "none", outcome])
            .inc();
    }

    /// Count an invocation throttled by admission control, by Lambda's
    /// `Reason` (also counted in `thaw_invocations_total` as `throttled`).
    pub fn count_throttle(&self, function: &str, reason: &str) {
        self.throttles.with_label_values(&[function, reason]).inc();
        self.count_rejected(function, "throttled");
    }

    /// Count one snapshot discarded as damaged.
    pub fn count_snapshot_damaged(&self, function: &str) {
        self.snapshot_damaged.with_label_values(&[function]).inc();
    }

    /// Count one restored instance lost because its memory could not be
    /// served (`integrity`: the stored bytes were bad).
    pub fn count_memory_failure(&self, function: &str, integrity: bool) {
        let cause = if integrity { "integrity" } else { "store" };
        self.memory_failures
            .with_label_values(&[function, cause])
            .inc();
    }

    /// Count one decision of the scheduler.
    pub fn count_decision(&self, function: &str, decision: &str) {
        self.decisions
            .with_label_values(&[function, decision])
            .inc();
    }

    /// Record how long an invocation waited for its placement.
    pub fn observe_queue(&self, function: &str, waited: std::time::Duration) {
        self.queue
            .with_label_values(&[function])
            .observe(waited.as_secs_f64());
    }

    /// The live-instance gauge of `function` in `state` (`idle`, `busy`,
    /// `starting`, `standby`).
    pub fn instances_in_state(&self, function: &str, state: &str) -> i64 {
        self.instances.with_label_values(&[function, state]).get()
    }

    /// Count an instance start.
    pub fn count_instance_start(&self, function: &str, result: &str) {
        self.instance_starts
            .with_label_values(&[function, result])
            .inc();
    }

    /// Count one snapshot build.
    pub fn count_snapshot_build(&self, function: &str, outcome: &str) {
        self.snapshot_builds
            .with_label_values(&[function, outcome])
            .inc();
    }

    /// Adjust the live-instance gauge.
    pub fn add_instances(&self, function: &str, state: &str, delta: i64) {
        self.instances
            .with_label_values(&[function, state])
            .add(delta);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The instance network's pool in the Prometheus text format.
pub fn render_network_stats(s: &thaw_net::NetStats) -> String {
    [
        "# HELP thaw_network_namespaces Instance network namespaces: ready in the pool, or leased to an instance.".to_string(),
        "# TYPE thaw_network_namespaces gauge".into(),
        format!("thaw_network_namespaces{{state=\"pooled\"}} {}", s.pooled),
        format!("thaw_network_namespaces{{state=\"leased\"}} {}", s.leased),
        "# HELP thaw_network_namespaces_made_total Instance network namespaces made since start.".into(),
        "# TYPE thaw_network_namespaces_made_total counter".into(),
        format!("thaw_network_namespaces_made_total {}", s.made),
        "# HELP thaw_network_pool_misses_total New instances that found the namespace pool empty (theirs was made on their path).".into(),
        "# TYPE thaw_network_pool_misses_total counter".into(),
        format!("thaw_network_pool_misses_total {}", s.pool_misses),
        String::new(),
    ]
    .join("\n")
}

/// The snapshot store's per-tier numbers in the Prometheus text format
/// (counters the store keeps itself, rendered with the daemon's metrics).
pub fn render_store_stats(stats: &[thaw_store::TierStats]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP thaw_store_chunks_total Chunk lookups per store tier (memory, disk, object) and result.\n# TYPE thaw_store_chunks_total counter"
    );
    for t in stats {
        for (result, n) in [("hit", t.hits), ("miss", t.misses), ("error", t.errors)] {
            let _ = writeln!(
                out,
                "thaw_store_chunks_total{{tier=\"{}\",result=\"{result}\"}} {n}",
                t.tier
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP thaw_store_bytes_total Bytes served per store tier (sealed bytes for disk and object).\n# TYPE thaw_store_bytes_total counter"
    );
    for t in stats {
        let _ = writeln!(
            out,
            "thaw_store_bytes_total{{tier=\"{}\"}} {}",
            t.tier, t.bytes
        );
    }
    let _ = writeln!(
        out,
        "# HELP thaw_store_seconds_total Time spent in each store tier.\n# TYPE thaw_store_seconds_total counter"
    );
    for t in stats {
        let _ = writeln!(
            out,
            "thaw_store_seconds_total{{tier=\"{}\"}} {}",
            t.tier,
            t.micros as f64 / 1e6
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_phase_histograms() {
        let m = Metrics::new().unwrap();
        let t = PhaseTimings {
            sandbox_ms: 5.0,
            runtime_ms: 20.0,
            init_ms: 30.0,
            invoke_ms: 1.0,
            ..Default::default()
        };
        m.observe_invocation("f", StartKind::Cold, &t, "success");
        let text = m.render();
        assert!(
            text.contains(
                r#"thaw_start_phase_seconds_count{function="f",phase="init",start="cold"} 1"#
            ),
            "{text}"
        );
        assert!(text
            .contains(r#"thaw_invocations_total{function="f",outcome="success",start="cold"} 1"#));
    }
}
