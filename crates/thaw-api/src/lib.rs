//! thaw-api
