//! The supervisor that runs inside every thaw sandbox (`thaw-init`), the
//! control protocol it speaks with the daemon, and the language bootstraps.
//!
//! Owns: the AWS Lambda Runtime API server on the sandbox's loopback, spawning
//! and watching the runtime process, forwarding its output. Must not: know about
//! function registries, pools or the public HTTP API (that is the daemon's).

pub mod control;
