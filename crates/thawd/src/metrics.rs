//! Prometheus metrics of the daemon.

/// The daemon's metric registry.
pub struct Metrics {}

impl Metrics {
    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        todo!("lead: metrics")
    }
}
