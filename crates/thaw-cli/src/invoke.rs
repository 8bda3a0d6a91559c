//! `thaw invoke`: print the response on stdout; how the instance was obtained,
//! the phase timings, a function error and (with `--tail`) the log on stderr.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use thaw_api::{InvocationType, InvokeOptions, InvokeResult};

use crate::client;

/// Arguments of `thaw invoke`.
#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The function's name.
    pub name: String,
    /// The JSON payload (`-` reads it from stdin) [default: none, the function gets `{}`].
    #[arg(long, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Read the payload from a file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub payload_file: Option<PathBuf>,
    /// Queue the invocation and return at once (`InvocationType: Event`).
    #[arg(long)]
    pub event: bool,
    /// Print the last 4 KiB of the invocation's log (`LogType: Tail`).
    #[arg(long)]
    pub tail: bool,
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .context("cannot read the payload from stdin")?;
    Ok(buf)
}

fn payload(args: &InvokeArgs) -> anyhow::Result<Vec<u8>> {
    match (&args.payload, &args.payload_file) {
        (Some(p), _) if p == "-" => read_stdin(),
        (Some(p), _) => Ok(p.clone().into_bytes()),
        (None, Some(f)) if f.as_os_str() == "-" => read_stdin(),
        (None, Some(f)) => std::fs::read(f).with_context(|| format!("cannot read {}", f.display())),
        (None, None) => Ok(Vec::new()),
    }
}

/// Invoke; exit code 1 when the function failed.
pub fn run(endpoint: &str, args: InvokeArgs) -> anyhow::Result<ExitCode> {
    let payload = payload(&args)?;
    let opts = InvokeOptions {
        invocation_type: if args.event {
            InvocationType::Event
        } else {
            InvocationType::RequestResponse
        },
        log_tail: args.tail,
        client_context: None,
    };
    let r = client(endpoint)?
        .invoke(&args.name, &payload, &opts)
        .with_context(|| format!("cannot invoke {}", args.name))?;
    if args.event {
        eprintln!(
            "accepted (HTTP {}), request id {}",
            r.status,
            r.request_id.as_deref().unwrap_or("?")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&r.payload)?;
    if !r.payload.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    eprint!("{}", summary(&r));
    if let Some(log) = &r.log_result {
        eprintln!("--- log tail ---");
        eprint!("{log}");
        if !log.ends_with('\n') {
            eprintln!();
        }
    }
    Ok(if r.function_error.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The stderr lines about one invocation.
fn summary(r: &InvokeResult) -> String {
    let mut s = String::new();
    let start = r.start.map(|k| k.as_str()).unwrap_or("unknown");
    match &r.server_timing {
        Some(t) if t.restore_ms > 0.0 => s.push_str(&format!(
            "start: {start}  sandbox {:.1} ms (restore {:.1} ms, of which memory {:.1} ms; after-restore hooks {:.1} ms), invoke {:.1} ms\n",
            t.sandbox_ms, t.restore_ms, t.memory_ms, t.hooks_ms, t.invoke_ms
        )),
        Some(t) => s.push_str(&format!(
            "start: {start}  sandbox {:.1} ms, runtime {:.1} ms, init {:.1} ms, invoke {:.1} ms\n",
            t.sandbox_ms, t.runtime_ms, t.init_ms, t.invoke_ms
        )),
        None => s.push_str(&format!("start: {start}\n")),
    }
    if let Some(id) = &r.request_id {
        s.push_str(&format!("request id: {id}\n"));
    }
    if let Some(e) = &r.function_error {
        s.push_str(&format!("function error: {e}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use thaw_api::{ServerTiming, StartKind};

    use super::*;

    #[test]
    fn summary_lines() {
        let r = InvokeResult {
            status: 200,
            start: Some(StartKind::Cold),
            server_timing: Some(ServerTiming {
                sandbox_ms: 1.0,
                runtime_ms: 2.0,
                init_ms: 3.0,
                invoke_ms: 4.0,
                ..Default::default()
            }),
            request_id: Some("r".into()),
            function_error: Some("Unhandled".into()),
            ..Default::default()
        };
        assert_eq!(
            summary(&r),
            "start: cold  sandbox 1.0 ms, runtime 2.0 ms, init 3.0 ms, invoke 4.0 ms\nrequest id: r\nfunction error: Unhandled\n"
        );
    }
}
