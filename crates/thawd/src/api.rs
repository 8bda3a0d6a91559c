//! The Lambda-compatible HTTP API (management + Invoke) and thaw's own endpoints.

use std::sync::Arc;

use axum::Router;

use crate::server::Platform;

/// The daemon's HTTP router.
pub fn router(_platform: Arc<Platform>) -> Router {
    todo!("helper: api")
}
