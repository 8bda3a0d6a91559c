//! The snapshot store: blobs (snapshot memory images, working sets,
//! function images) kept as chunks that are compressed (zstd), encrypted
//! under convergent keys (AES-256-GCM; identical chunks of one tenant are
//! stored once, chunks of different tenants never match), listed in
//! manifests sealed under the tenant's key, and held in tiers: a bounded
//! memory cache, a bounded local-disk cache, and an object store behind
//! them (`object_store`: the local filesystem by default, any
//! S3-compatible service for clusters).
//!
//! Owns: the chunk and manifest formats, the tiers and the order they are
//! asked in, publishing (chunks first, manifest last) and garbage
//! collection.
//!
//! Must not: hand out a byte that has not been authenticated against the
//! manifest the caller asked for, or log or store a key in plaintext.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cache;
pub mod chunk;
pub mod chunker;
pub mod faults;
pub mod garage;
pub mod manifest;
pub mod store;

pub use chunker::Chunking;
pub use faults::{FaultPlan, FaultyStore};
pub use manifest::{Manifest, TenantKeys};
pub use store::{BlobRef, GcReport, PutReport, S3Config, Store, StoreConfig, TierStats};

/// Why the store cannot do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A chunk or manifest does not authenticate, or is malformed.
    #[error("{what} is corrupt: {why}")]
    Corrupt {
        /// Which object.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// No tier has the object.
    #[error("{0} is missing")]
    Missing(String),
    /// An object store request failed.
    #[error("Object store request for {what} failed")]
    ObjectStore {
        /// Which object.
        what: String,
        /// Why.
        #[source]
        source: object_store::Error,
    },
    /// Local I/O failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tier did not answer in time.
    #[error("{what}: no answer within {after:?}")]
    Timeout {
        /// Which object.
        what: String,
        /// The limit.
        after: std::time::Duration,
    },
    /// Compression or encryption failed.
    #[error("{0}")]
    Codec(String),
}

impl StoreError {
    /// Whether the stored bytes themselves are bad (a chunk or manifest
    /// that does not authenticate or is missing), as opposed to a tier
    /// that failed or did not answer: reading again will not help, the
    /// blob must be written again.
    pub fn is_integrity(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. } | StoreError::Missing(_))
    }
}
