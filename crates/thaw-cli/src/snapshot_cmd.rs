//! `thaw snapshot create NAME` / `rebuild NAME` / `delete NAME` / `list`:
//! ask the daemon to snapshot a function after a test invocation (waiting
//! for the report, or queueing a build and showing its progress), to forget
//! its snapshot, or to say where every function's snapshot stands; and
//! `thaw snapshot inspect DIR`: open a snapshot directory, verify it, and
//! print what it holds.
//!
//! Owns: the human summary (and the `--json` dump) of a snapshot's state.
//! Must not: interpret or repair a snapshot; opening and verification are
//! `thaw_snapshot::image`'s, so this command refuses exactly what a restore
//! would refuse.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use thaw_snapshot::image::{Snapshot, MEMORY_FILE, STATE_FILE};
use thaw_snapshot::ptrace::{GeneralRegs, SyscallState};
use thaw_snapshot::state::{FdKind, SnapshotState, Vma, VmaKind};
use thaw_snapshot::PAGE_SIZE;

/// `thaw snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a function: the daemon starts an instance, invokes it once
    /// with the test event, and checkpoints it. New instances of this code
    /// revision are then restored from the snapshot.
    Create {
        /// The function.
        name: String,
        /// The test event (JSON).
        #[arg(long, default_value = "{}")]
        payload: String,
    },
    /// Build a function's snapshot again in the background (test event
    /// from its code's `thaw-test-event.json`, else `{}`) and show the
    /// build's progress.
    Rebuild {
        /// The function.
        name: String,
        /// Queue the build and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Where every function's snapshot stands.
    List,
    /// Forget a function's snapshot: new instances start cold again.
    Delete {
        /// The function.
        name: String,
    },
    /// Record the working set of a function's snapshot again: its next
    /// restore serves every page on demand and records what it touches.
    Record {
        /// The function.
        name: String,
    },
    /// Check a snapshot's headers and state checksum and print a summary.
    Inspect(InspectArgs),
}

/// Arguments of `thaw snapshot inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The snapshot directory (holding `state.thaw` and `memory.thaw`).
    pub dir: PathBuf,
    /// Also read every memory page and check each chunk's checksum.
    #[arg(long)]
    pub verify: bool,
    /// Print the whole state as JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `thaw snapshot` command.
pub fn run(endpoint: &str, cmd: SnapshotCommand) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Create { name, payload } => {
            serde_json::from_str::<serde_json::Value>(&payload)
                .context("--payload is not valid JSON")?;
            let client = thaw_api::Client::new(endpoint)?;
            let r = client
                .create_snapshot(&name, payload.as_bytes())
                .with_context(|| format!("cannot snapshot {name}"))?;
            println!(
                "snapshot of {} (revision {}): {} threads, {} mappings, {:.1} MiB on disk",
                r.function,
                r.revision_id,
                r.threads,
                r.mappings,
                r.size_bytes as f64 / f64::from(1 << 20)
            );
            println!(
                "  cold start {:.1} ms, test invocation {:.1} ms, checkpoint {:.1} ms (stopped {:.1} ms)",
                r.cold_start_ms, r.test_invoke_ms, r.checkpoint_ms, r.frozen_ms
            );
            println!(
                "  {} pages saved, {} zero pages skipped",
                r.data_pages, r.zero_pages
            );
            Ok(())
        }
        SnapshotCommand::Rebuild { name, no_wait } => {
            let client = thaw_api::Client::new(endpoint)?;
            let status = client
                .queue_snapshot(&name)
                .with_context(|| format!("cannot rebuild the snapshot of {name}"))?;
            if no_wait {
                println!("snapshot build of {name} queued");
                return Ok(());
            }
            let last = follow_build(&client, &name, &status.revision_id)?;
            print_outcome(&last);
            match last.state {
                thaw_api::SnapshotState::Ready | thaw_api::SnapshotState::InitOnly => Ok(()),
                _ => anyhow::bail!("the snapshot of {name} was not built"),
            }
        }
        SnapshotCommand::List => {
            let client = thaw_api::Client::new(endpoint)?;
            let all = client.list_snapshots().context("cannot list snapshots")?;
            println!(
                "{:<24} {:<9} {:>9} {:>9}  detail",
                "FUNCTION", "STATE", "SIZE", "CKPT"
            );
            for s in all {
                let (size, ckpt) = match &s.report {
                    Some(r) => (mib(r.size_bytes), format!("{:.0} ms", r.checkpoint_ms)),
                    None => ("-".into(), "-".into()),
                };
                let detail = s.phase.clone().or(s.error.clone()).unwrap_or_default();
                println!(
                    "{:<24} {:<9} {:>9} {:>9}  {detail}",
                    s.function,
                    state_text(s.state),
                    size,
                    ckpt
                );
            }
            Ok(())
        }
        SnapshotCommand::Delete { name } => {
            let client = thaw_api::Client::new(endpoint)?;
            client
                .delete_snapshot(&name)
                .with_context(|| format!("cannot delete the snapshot of {name}"))?;
            println!("deleted the snapshot of {name}");
            Ok(())
        }
        SnapshotCommand::Record { name } => {
            let client = thaw_api::Client::new(endpoint)?;
            client
                .rerecord_working_set(&name)
                .with_context(|| format!("cannot re-record the working set of {name}"))?;
            println!("the next restore of {name} records its working set");
            Ok(())
        }
        SnapshotCommand::Inspect(args) => inspect(&args),
    }
}

fn state_text(s: thaw_api::SnapshotState) -> &'static str {
    use thaw_api::SnapshotState as S;
    match s {
        S::Queued => "queued",
        S::Building => "building",
        S::Ready => "ready",
        S::InitOnly => "init-only",
        S::Failed => "failed",
        S::None => "none",
    }
}

/// Polls the status of `name`'s snapshot build of `revision` and shows its
/// phase on a spinner until it is ready or failed (or stops being about
/// that revision); returns the last status.
pub fn follow_build(
    client: &thaw_api::Client,
    name: &str,
    revision: &str,
) -> anyhow::Result<thaw_api::SnapshotStatus> {
    use thaw_api::SnapshotState as S;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} snapshot of {prefix}: {msg} ({elapsed})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_prefix(name.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(900);
    loop {
        let s = client
            .snapshot_status(name)
            .with_context(|| format!("cannot read the snapshot status of {name}"))?;
        let done = s.revision_id != revision
            || matches!(s.state, S::Ready | S::InitOnly | S::Failed | S::None);
        if done || std::time::Instant::now() > deadline {
            bar.finish_and_clear();
            return Ok(s);
        }
        bar.set_message(match &s.phase {
            Some(p) => p.clone(),
            None => state_text(s.state).to_string(),
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// One line on how a build ended.
pub fn print_outcome(s: &thaw_api::SnapshotStatus) {
    match (&s.state, &s.report, &s.error) {
        (thaw_api::SnapshotState::Ready, Some(r), _) => println!(
            "snapshot of {} ready: {:.1} MiB, checkpoint {:.0} ms, validated by a restore in {:.0} ms{}",
            s.function,
            r.size_bytes as f64 / f64::from(1 << 20),
            r.checkpoint_ms,
            r.validation_ms,
            if r.handshake { " (SnapStart handshake)" } else { "" }
        ),
        (thaw_api::SnapshotState::InitOnly, Some(r), why) => println!(
            "snapshot of {} taken right after init (no test invocation: {}): {:.1} MiB, validated by a restore in {:.0} ms",
            s.function,
            why.as_deref().unwrap_or("it failed"),
            r.size_bytes as f64 / f64::from(1 << 20),
            r.validation_ms,
        ),
        (thaw_api::SnapshotState::Failed, _, Some(e)) => {
            println!("snapshot of {} failed: {e}; instances start cold", s.function)
        }
        (state, _, _) => println!("snapshot of {}: {}", s.function, state_text(*state)),
    }
}

fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    // An `ImageError`'s message already names the file and the cause (its
    // I/O and JSON variants include their source), so it is taken as the
    // message rather than chained, which would print the cause twice.
    let snap = Snapshot::open(dir)
        .map_err(anyhow::Error::new)
        .with_context(|| format!("snapshot {} is not usable", dir.display()))?;
    let verified = if args.verify {
        let chunks = snap.state().memory.chunk_hashes.len();
        for i in 0..chunks {
            snap.read_chunk(i)
                .map_err(anyhow::Error::new)
                .with_context(|| format!("snapshot {} failed verification", dir.display()))?;
        }
        Some(chunks)
    } else {
        None
    };
    if args.json {
        let json = serde_json::to_string_pretty(snap.state()).context("cannot encode the state")?;
        println!("{json}");
        return Ok(());
    }
    let sizes = FileSizes {
        state: file_size(&dir.join(STATE_FILE))?,
        memory: file_size(&dir.join(MEMORY_FILE))?,
    };
    print!("{}", summary(dir, snap.state(), sizes, verified));
    Ok(())
}

fn file_size(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len())
}

/// Sizes of the two snapshot files, bytes.
#[derive(Debug, Clone, Copy)]
struct FileSizes {
    state: u64,
    memory: u64,
}

/// The human summary. `verified`: the number of chunks checked, if they
/// were.
fn summary(dir: &Path, st: &SnapshotState, sizes: FileSizes, verified: Option<usize>) -> String {
    let mut o = String::new();
    let p = &st.process;
    // Writing to a String cannot fail.
    let _ = writeln!(o, "snapshot {}", dir.display());
    let _ = writeln!(o, "  format version  {}", st.format_version);
    let _ = writeln!(
        o,
        "  created         {} ({} ms since the epoch)",
        utc_timestamp(st.created_unix_ms),
        st.created_unix_ms
    );
    let _ = writeln!(o, "  kernel          {}", st.kernel_release);
    let _ = writeln!(
        o,
        "  cpu             {} family {} model {} stepping {}",
        st.cpu.vendor, st.cpu.family, st.cpu.model, st.cpu.stepping
    );
    let _ = writeln!(
        o,
        "  xstate          {} bytes, xcr0 {:#x}",
        st.cpu.xstate_size, st.cpu.xcr0
    );

    let c = &p.creds;
    let _ = writeln!(o, "process");
    let _ = writeln!(o, "  pid             {}", p.pid);
    let _ = writeln!(o, "  comm            {}", p.comm);
    let _ = writeln!(o, "  exe             {}", p.exe.display());
    let _ = writeln!(o, "  cwd             {}", p.cwd.display());
    let _ = writeln!(
        o,
        "  uid             {} (real/effective/saved {}/{}/{}), gid {}",
        c.uid[1], c.uid[0], c.uid[1], c.uid[2], c.gid[1]
    );
    let _ = writeln!(o, "  umask           {:04o}", p.umask);
    let _ = writeln!(o, "  seccomp filters {}", p.seccomp_filters.len());

    let _ = writeln!(o, "threads ({})", p.threads.len());
    for t in &p.threads {
        let _ = writeln!(
            o,
            "  tid {:<6} {:<16} rip {:#014x}  {}  rseq {}",
            t.tid,
            t.comm,
            t.regs.rip,
            thread_syscall_text(&t.regs, &p.mappings),
            if t.rseq.abi_pointer != 0 { "yes" } else { "no" }
        );
    }

    let mut kinds: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    let mut total = 0;
    for v in &p.mappings {
        let len = v.end - v.start;
        let e = kinds.entry(vma_kind(&v.kind)).or_default();
        e.0 += 1;
        e.1 += len;
        total += len;
    }
    let _ = writeln!(o, "mappings ({}, {} total)", p.mappings.len(), mib(total));
    for (kind, (n, bytes)) in &kinds {
        let _ = writeln!(o, "  {kind:<12} {n:>4}  {}", mib(*bytes));
    }

    let m = &st.memory;
    let _ = writeln!(o, "memory");
    let _ = writeln!(
        o,
        "  data pages      {} ({})",
        m.data_pages,
        mib(m.data_pages * PAGE_SIZE)
    );
    let _ = writeln!(
        o,
        "  zero pages      {} ({}, not stored)",
        m.zero_pages,
        mib(m.zero_pages * PAGE_SIZE)
    );
    let _ = writeln!(o, "  runs            {}", m.runs.len());
    let _ = writeln!(
        o,
        "  chunks          {} of {} pages",
        m.chunk_hashes.len(),
        m.chunk_pages
    );
    let _ = writeln!(
        o,
        "  image size      {} ({MEMORY_FILE}), state {} bytes ({STATE_FILE})",
        mib(sizes.memory),
        sizes.state
    );
    match verified {
        Some(n) => {
            let _ = writeln!(o, "  verified        all {n} chunk checksums match");
        }
        None => {
            let _ = writeln!(
                o,
                "  verified        headers and state only (--verify checks every page)"
            );
        }
    }

    let _ = writeln!(o, "fds ({})", p.fds.len());
    for f in &p.fds {
        let _ = writeln!(o, "  {:<4} {}", f.fd, fd_text(&f.kind));
    }
    o
}

fn vma_kind(kind: &VmaKind) -> &'static str {
    match kind {
        VmaKind::Anonymous => "anonymous",
        VmaKind::Heap => "heap",
        VmaKind::Stack => "stack",
        VmaKind::File { .. } => "file",
        VmaKind::Vdso => "vdso",
        VmaKind::Vvar => "vvar",
        VmaKind::VvarVclock => "vvar_vclock",
    }
}

fn fd_text(kind: &FdKind) -> String {
    match kind {
        FdKind::File { path, pos, .. } => format!("file     {} (at {pos})", path.display()),
        FdKind::Device { path } => format!("device   {}", path.display()),
        FdKind::Pipe { id, write, unread } => format!(
            "pipe     {} end of pipe:[{id}], {} bytes unread",
            if *write { "write" } else { "read" },
            unread.len()
        ),
        FdKind::EventFd { count, semaphore } => format!(
            "eventfd  count {count}{}",
            if *semaphore { ", semaphore" } else { "" }
        ),
        FdKind::Epoll { targets } => format!(
            "epoll    watching {}",
            targets
                .iter()
                .map(|t| t.fd.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        FdKind::External { link } => format!("external {link} (provided at restore)"),
    }
}

fn syscall_text(s: SyscallState) -> String {
    match s {
        SyscallState::NotInSyscall => "not in a syscall".into(),
        SyscallState::Returned { nr, ret } => {
            format!("returned from {} = {ret}", syscall_name(nr))
        }
        SyscallState::Restart { nr, code } => {
            format!("in {} (restarts, {code})", syscall_name(nr))
        }
        SyscallState::RestartBlock { nr } => {
            format!(
                "in {} (restart block: resumes with EINTR)",
                syscall_name(nr)
            )
        }
    }
}

/// The syscall state of a thread's saved registers, and, since the
/// checkpoint saves registers already rewound for resuming (so they decode
/// as "not in a syscall"), what the thread does first: re-enter a syscall
/// (`rip` at a `syscall` instruction, number in `rax`) or return from one
/// (`rip` just after it, result in `rax`). The instruction bytes come from
/// the mapped file, as the restore maps it.
fn thread_syscall_text(regs: &GeneralRegs, mappings: &[Vma]) -> String {
    let state = regs.syscall_state();
    let mut text = syscall_text(state);
    if state != SyscallState::NotInSyscall {
        return text;
    }
    const SYSCALL: [u8; 2] = [0x0f, 0x05];
    let rax = regs.rax as i64;
    if code_at(mappings, regs.rip) == Some(SYSCALL) {
        let _ = write!(text, " (resumes by entering {})", syscall_name(rax));
    } else if code_at(mappings, regs.rip.wrapping_sub(2)) == Some(SYSCALL) {
        let _ = write!(text, " (just after a syscall, rax = {rax})");
    }
    text
}

/// The two code bytes at `addr`, read from the file its mapping maps.
fn code_at(mappings: &[Vma], addr: u64) -> Option<[u8; 2]> {
    let v = mappings
        .iter()
        .find(|v| v.start <= addr && addr + 2 <= v.end)?;
    let VmaKind::File { path, offset, .. } = &v.kind else {
        return None;
    };
    let f = std::fs::File::open(path).ok()?;
    let mut buf = [0u8; 2];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, offset + (addr - v.start)).ok()?;
    Some(buf)
}

/// The name of the x86-64 system calls an idle process usually sleeps in.
fn syscall_name(nr: i64) -> String {
    let name = match nr {
        0 => "read",
        1 => "write",
        7 => "poll",
        23 => "select",
        34 => "pause",
        35 => "nanosleep",
        43 => "accept",
        45 => "recvfrom",
        47 => "recvmsg",
        61 => "wait4",
        130 => "rt_sigsuspend",
        202 => "futex",
        230 => "clock_nanosleep",
        232 => "epoll_wait",
        270 => "pselect6",
        271 => "ppoll",
        281 => "epoll_pwait",
        288 => "accept4",
        441 => "epoll_pwait2",
        _ => return format!("syscall {nr}"),
    };
    format!("{name} ({nr})")
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `2024-01-02T03:04:05.678Z` for milliseconds since the Unix epoch.
fn utc_timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = i64::try_from(secs / 86_400).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc_timestamp(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn syscall_states_read_well() {
        assert_eq!(
            syscall_text(SyscallState::Restart { nr: 0, code: -512 }),
            "in read (0) (restarts, -512)"
        );
        assert_eq!(
            syscall_text(SyscallState::RestartBlock { nr: 999 }),
            "in syscall 999 (restart block: resumes with EINTR)"
        );
        assert_eq!(syscall_text(SyscallState::NotInSyscall), "not in a syscall");
    }
}
