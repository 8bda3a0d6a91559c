//! The supervisor that runs inside every thaw sandbox (`thaw-init`), the
//! control protocol it speaks with the daemon, and the language bootstraps.
//!
//! Owns: the AWS Lambda Runtime API server on the sandbox's loopback, spawning
//! and watching the runtime process, forwarding its output. Must not: know about
//! function registries, pools or the public HTTP API (that is the daemon's).
//!
//! Layout:
//! - [`control`]: the framed control channel to the daemon (wire format only);
//! - [`init`]: the `thaw-init` entry point (fd 3, sandbox entry, tokio start);
//! - [`supervisor`]: the event loop that ties the runtime process, its output,
//!   the Runtime API and the control channel together;
//! - [`restore`]: bringing the runtime back from a snapshot inside the
//!   sandbox, with fresh stdio pipes and Runtime API connection;
//! - [`bootstraps`]: thaw's Python and Node.js bootstraps, installed on the host
//!   and bind-mounted read-only at `/var/runtime` in every sandbox.

mod api;
pub mod bootstraps;
pub mod control;
#[doc(hidden)]
pub mod fuzzing;
pub mod init;
mod process;
pub mod restore;
pub mod supervisor;

pub use bootstraps::install_bootstraps;
pub use supervisor::{ExitReason, SupervisorError};

/// An error and its sources, joined with ": " (for `Fatal` messages and logs).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
