//! Instance pools: per function, idle warm instances and the logic that starts,
//! reuses, times out and reaps instances.

use crate::invoke::{InvokeError, InvokeInput, InvokeOutcome};
use crate::registry::FunctionRecord;

/// All instance pools of the daemon.
pub struct Pools {}

impl Pools {
    /// Run one invocation on a warm instance of `function`, or on a new one.
    pub async fn invoke(
        &self,
        _function: &FunctionRecord,
        _input: InvokeInput,
    ) -> Result<InvokeOutcome, InvokeError> {
        todo!("lead: pool")
    }

    /// Tear down every instance of `name` (after an update or a delete).
    pub async fn retire(&self, _name: &str) {
        todo!("lead: pool")
    }
}
