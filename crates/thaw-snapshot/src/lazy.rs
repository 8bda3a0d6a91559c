//! The page server: memory of a lazily restored process, served on demand.
//!
//! Owns: answering the page faults of a restored process (and of the
//! processes it forks) from the snapshot's memory image, with
//! anonymous-memory semantics intact: a page the process dropped
//! (`madvise(MADV_DONTNEED)`), unmapped or never had comes back as zeros,
//! never as the snapshot's old bytes; a range it moved with `mremap` is
//! served from where it came from. Each memory chunk is verified against
//! its BLAKE3 hash the first time any page of it is served.
//!
//! Must not: serve bytes of a chunk that failed verification: the server
//! stops with an error instead, and the faulting process stays blocked
//! until its supervisor kills it (fail closed).
//!
//! Each fault copies the faulting page and up to `fault_around - 1` of its
//! neighbours (same image run, chunk and registered range). While its
//! [`Probe`] is recording, the server notes the address of every page it
//! serves the original process, in fault order: that list becomes the
//! snapshot's working set ([`crate::workingset`]).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use thiserror::Error;
use tracing::debug;

use crate::image::{ImageError, Snapshot};
use crate::uffd::{self, Message, MSG_SIZE};
use crate::PAGE_SIZE;

/// Most pages copied for one fault (the faulting page and its neighbours
/// in the same image run, chunk and registered range).
pub const MAX_BATCH_PAGES: u64 = 256;
/// Pages copied per fault unless told otherwise (measured: `thaw bench
/// working-set`, docs/benchmarks.md).
pub const DEFAULT_FAULT_AROUND: u64 = 16;
/// Most page addresses one recording keeps.
const MAX_RECORDED: usize = 1 << 22;

/// Why the page server stopped serving.
#[derive(Debug, Error)]
pub enum LazyError {
    /// A memory chunk failed verification or could not be read.
    #[error("Serving a page")]
    Image(#[from] ImageError),
    /// A userfaultfd request failed.
    #[error("{what} failed")]
    Uffd {
        /// The request.
        what: &'static str,
        /// Why.
        #[source]
        source: Errno,
    },
}

/// What the page server did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LazyStats {
    /// Page faults answered.
    pub faults: u64,
    /// Pages copied from the image.
    pub pages_copied: u64,
    /// Faults answered with a zero page.
    pub zero_faults: u64,
    /// Memory chunks read and verified.
    pub chunks_verified: u64,
    /// Fork, remap, remove and unmap events.
    pub events: u64,
    /// Bytes read from the snapshot's files by the server.
    pub bytes_read: u64,
}

/// A running page server's numbers and its recording, shared with the
/// code that watches the instance (the sandbox's supervisor).
#[derive(Debug, Default)]
pub struct Probe {
    faults: AtomicU64,
    pages_copied: AtomicU64,
    zero_faults: AtomicU64,
    chunks_verified: AtomicU64,
    events: AtomicU64,
    bytes_read: AtomicU64,
    recording: AtomicBool,
    recorded: Mutex<Vec<u64>>,
}

impl Probe {
    /// A probe; with `record`, the server records the pages it serves
    /// until [`Probe::take_recording`].
    pub fn new(record: bool) -> Self {
        Probe {
            recording: AtomicBool::new(record),
            ..Probe::default()
        }
    }

    /// The server's numbers so far.
    pub fn stats(&self) -> LazyStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LazyStats {
            faults: get(&self.faults),
            pages_copied: get(&self.pages_copied),
            zero_faults: get(&self.zero_faults),
            chunks_verified: get(&self.chunks_verified),
            events: get(&self.events),
            bytes_read: get(&self.bytes_read),
        }
    }

    /// Stops recording and returns the page addresses served so far, in
    /// fault order (empty if it was not recording).
    pub fn take_recording(&self) -> Vec<u64> {
        self.recording.store(false, Ordering::Relaxed);
        std::mem::take(&mut *self.recorded.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn publish(&self, s: &LazyStats) {
        let set = |a: &AtomicU64, v| a.store(v, Ordering::Relaxed);
        set(&self.faults, s.faults);
        set(&self.pages_copied, s.pages_copied);
        set(&self.zero_faults, s.zero_faults);
        set(&self.chunks_verified, s.chunks_verified);
        set(&self.events, s.events);
        set(&self.bytes_read, s.bytes_read);
    }

    fn record(&self, page: u64) {
        if self.recording.load(Ordering::Relaxed) {
            let mut r = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
            if r.len() < MAX_RECORDED {
                r.push(page);
            }
        }
    }
}

/// How a page server serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Pages copied per fault (1 to [`MAX_BATCH_PAGES`]); recording with 1
    /// gives the exact working set.
    pub fault_around: u64,
    /// Where the server publishes its numbers and records.
    pub probe: Option<Arc<Probe>>,
    /// Test hook: the server panics when it meets this many faults (to
    /// show that a dying server takes its process with it).
    #[doc(hidden)]
    pub panic_after_faults: Option<u64>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            fault_around: DEFAULT_FAULT_AROUND,
            probe: None,
            panic_after_faults: None,
        }
    }
}

/// A lazily restored process's memory, as [`crate::restore::restore`]
/// hands it over: its userfaultfd and the ranges registered with it.
#[derive(Debug)]
pub struct LazyMemory {
    /// The userfaultfd (non-blocking).
    pub uffd: OwnedFd,
    /// Registered ranges `(start, end)`, sorted.
    pub ranges: Vec<(u64, u64)>,
}

/// One process whose faults are served.
#[derive(Debug)]
struct Client {
    fd: OwnedFd,
    /// The restored process itself (not a child it forked).
    root: bool,
    /// Ranges (current addresses) whose snapshot contents are gone
    /// (dropped with `madvise`): they read as zeros.
    removed: Vec<(u64, u64)>,
    /// `mremap` moves: `(new start, len, old start)`, newest last.
    remaps: Vec<(u64, u64, u64)>,
    /// Faults that met `EAGAIN` (the address space was changing: an event
    /// not yet read), retried once the events are read.
    deferred: Vec<u64>,
}

impl Client {
    /// The snapshot address behind `addr` (undoing `mremap` moves).
    fn original(&self, addr: u64) -> u64 {
        let mut a = addr;
        for &(to, len, from) in self.remaps.iter().rev() {
            if (to..to + len).contains(&a) {
                a = from + (a - to);
            }
        }
        a
    }

    fn is_removed(&self, addr: u64) -> bool {
        self.removed.iter().any(|&(s, e)| (s..e).contains(&addr))
    }

    /// Forgets the dropped ranges inside `[start, end)` and returns the
    /// parts that were inside.
    fn take_removed(&mut self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut inside = Vec::new();
        let mut keep = Vec::new();
        for &(s, e) in &self.removed {
            let (is, ie) = (s.max(start), e.min(end));
            if is >= ie {
                keep.push((s, e));
                continue;
            }
            inside.push((is, ie));
            if s < is {
                keep.push((s, is));
            }
            if ie < e {
                keep.push((ie, e));
            }
        }
        self.removed = keep;
        inside
    }

    /// Whether a batch may copy more than the faulting page (nothing moved
    /// or dropped, so snapshot addresses are the process's).
    fn simple(&self) -> bool {
        self.removed.is_empty() && self.remaps.is_empty()
    }
}

/// Serves the faults of the process behind `memory` from `snap` until the
/// process exits (`process` is its pidfd) or every userfaultfd is closed
/// by the kernel. On any error the process is killed first (through
/// `process`): without its server it would read zeros where its memory
/// should be.
pub fn serve(
    snap: &Snapshot,
    memory: LazyMemory,
    process: BorrowedFd<'_>,
) -> Result<LazyStats, LazyError> {
    serve_with(snap, memory, process, &ServeOptions::default())
}

/// [`serve`], with options.
pub fn serve_with(
    snap: &Snapshot,
    memory: LazyMemory,
    process: BorrowedFd<'_>,
    opts: &ServeOptions,
) -> Result<LazyStats, LazyError> {
    let mut server = Server {
        snap,
        chunks: HashMap::new(),
        ranges: memory.ranges,
        stats: LazyStats::default(),
        fault_around: opts.fault_around.clamp(1, MAX_BATCH_PAGES),
        probe: opts.probe.clone(),
        panic_after_faults: opts.panic_after_faults,
        read_before: snap.bytes_read(),
    };
    let mut clients = vec![Client {
        fd: memory.uffd,
        root: true,
        removed: Vec::new(),
        remaps: Vec::new(),
        deferred: Vec::new(),
    }];
    // Dropped before `clients` (declared after it), also when the server
    // panics: the process dies before its userfaultfds close, which would
    // let its waiting threads go on with zero pages.
    let mut kill = KillUnlessDisarmed(Some(process));
    let r = serve_clients(&mut server, &mut clients, process);
    if r.is_ok() {
        kill.0 = None;
    }
    drop(kill);
    drop(clients);
    r.map(|()| server.stats)
}

fn serve_clients(
    server: &mut Server<'_>,
    clients: &mut Vec<Client>,
    stop: BorrowedFd<'_>,
) -> Result<(), LazyError> {
    let mut buf = [0u8; MSG_SIZE * 16];
    while !clients.is_empty() {
        let (ready, stopped) = {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(clients.len() + 1);
            fds.push(PollFd::new(stop, PollFlags::POLLIN));
            for c in clients.iter() {
                fds.push(PollFd::new(c.fd.as_fd(), PollFlags::POLLIN));
            }
            // Deferred faults are retried soon even if nothing new arrives.
            let timeout = if clients.iter().any(|c| !c.deferred.is_empty()) {
                PollTimeout::from(1u8)
            } else {
                PollTimeout::NONE
            };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(source) => {
                    return Err(LazyError::Uffd {
                        what: "poll",
                        source,
                    })
                }
            }
            let stopped = fds[0].any().unwrap_or(false);
            let ready: Vec<(usize, PollFlags)> = fds[1..]
                .iter()
                .enumerate()
                .filter_map(|(i, f)| f.revents().filter(|r| !r.is_empty()).map(|r| (i, r)))
                .collect();
            (ready, stopped)
        };
        if stopped {
            break;
        }
        let mut gone = Vec::new();
        let mut forked = Vec::new();
        for (i, c) in clients.iter_mut().enumerate() {
            if !c.deferred.is_empty() && !ready.iter().any(|(r, _)| *r == i) {
                if let Outcome::Gone = server.retry(c)? {
                    gone.push(i);
                }
            }
        }
        for (i, revents) in ready {
            loop {
                match nix::unistd::read(&clients[i].fd, &mut buf) {
                    Ok(0) => {
                        gone.push(i);
                        break;
                    }
                    Ok(n) => {
                        for msg in buf[..n].chunks_exact(MSG_SIZE) {
                            match server.handle(&mut clients[i], uffd::parse(msg))? {
                                Outcome::Served => {}
                                Outcome::Forked(child) => forked.push(child),
                                Outcome::Gone => gone.push(i),
                            }
                        }
                    }
                    Err(Errno::EAGAIN) => {
                        if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                            gone.push(i);
                        } else if let Outcome::Gone = server.retry(&mut clients[i])? {
                            gone.push(i);
                        }
                        break;
                    }
                    Err(Errno::EINTR) => continue,
                    Err(source) => {
                        return Err(LazyError::Uffd {
                            what: "read",
                            source,
                        })
                    }
                }
            }
        }
        gone.sort_unstable();
        gone.dedup();
        for i in gone.into_iter().rev() {
            clients.swap_remove(i);
        }
        clients.extend(forked);
    }
    server.publish();
    debug!(stats = ?server.stats, "page server done");
    Ok(())
}

/// Kills the served process when dropped armed (the server failed or
/// panicked).
struct KillUnlessDisarmed<'a>(Option<BorrowedFd<'a>>);

impl Drop for KillUnlessDisarmed<'_> {
    fn drop(&mut self) {
        if let Some(process) = self.0.take() {
            if let Err(e) = crate::sys::pidfd_kill(process) {
                tracing::error!(error = %e, "cannot kill a process whose page server failed");
            }
        }
    }
}

enum Outcome {
    Served,
    Forked(Client),
    Gone,
}

struct Server<'s> {
    snap: &'s Snapshot,
    chunks: HashMap<usize, Arc<Vec<u8>>>,
    ranges: Vec<(u64, u64)>,
    stats: LazyStats,
    fault_around: u64,
    probe: Option<Arc<Probe>>,
    panic_after_faults: Option<u64>,
    /// The snapshot's bytes read before the server started.
    read_before: u64,
}

impl Server<'_> {
    fn publish(&mut self) {
        self.stats.bytes_read = self.snap.bytes_read().saturating_sub(self.read_before);
        if let Some(p) = &self.probe {
            p.publish(&self.stats);
        }
    }

    fn chunk(&mut self, i: usize) -> Result<Arc<Vec<u8>>, LazyError> {
        if let Some(c) = self.chunks.get(&i) {
            return Ok(c.clone());
        }
        let data = Arc::new(self.snap.read_chunk(i)?);
        self.stats.chunks_verified += 1;
        self.chunks.insert(i, data.clone());
        Ok(data)
    }

    fn handle(&mut self, c: &mut Client, msg: Message) -> Result<Outcome, LazyError> {
        match msg {
            Message::PageFault { address } => self.fault(c, address & !(PAGE_SIZE - 1)),
            Message::Fork { fd } => {
                self.stats.events += 1;
                // The kernel installed `fd` in our table when the message
                // was read; nothing else owns it.
                let child = crate::sys::adopt_fd(fd);
                Ok(Outcome::Forked(Client {
                    fd: child,
                    root: false,
                    removed: c.removed.clone(),
                    remaps: c.remaps.clone(),
                    deferred: Vec::new(),
                }))
            }
            Message::Remap { from, to, len } => {
                self.stats.events += 1;
                // Dropped pages stay dropped where they move to; whatever
                // was dropped at the destination is replaced.
                let moved = c.take_removed(from, from + len);
                c.take_removed(to, to + len);
                c.removed.extend(
                    moved
                        .into_iter()
                        .map(|(s, e)| (s - from + to, e - from + to)),
                );
                c.remaps.push((to, len, from));
                Ok(Outcome::Served)
            }
            Message::Remove { start, end } => {
                self.stats.events += 1;
                c.take_removed(start, end);
                c.removed.push((start, end));
                Ok(Outcome::Served)
            }
            Message::Unmap { start, end } => {
                // The range is gone; memory mapped there later is new and
                // not registered, so it never faults here.
                self.stats.events += 1;
                c.take_removed(start, end);
                Ok(Outcome::Served)
            }
            Message::Other(event) => {
                debug!(event, "ignoring userfaultfd event");
                Ok(Outcome::Served)
            }
        }
    }

    /// Retries the deferred faults of `c` (those still meeting `EAGAIN`
    /// stay deferred).
    fn retry(&mut self, c: &mut Client) -> Result<Outcome, LazyError> {
        for page in std::mem::take(&mut c.deferred) {
            if let Outcome::Gone = self.fault(c, page)? {
                return Ok(Outcome::Gone);
            }
        }
        Ok(Outcome::Served)
    }

    fn fault(&mut self, c: &mut Client, page: u64) -> Result<Outcome, LazyError> {
        self.stats.faults += 1;
        if self.panic_after_faults == Some(self.stats.faults) {
            panic!(
                "page server test hook: panicking at fault {}",
                self.stats.faults
            );
        }
        let fd = c.fd.as_fd();
        let orig = c.original(page);
        let idx = &self.snap.state().memory;
        let removed = c.is_removed(page);
        // Recorded: the pages served to the process itself from the
        // snapshot (all of a batch, so a working set extended with the
        // misses of a prefetching restore keeps whole runs).
        let record = |server: &Self, pages: u64| {
            if let (true, false, Some(p)) = (c.root, removed, &server.probe) {
                for i in 0..pages {
                    p.record(orig + i * PAGE_SIZE);
                }
            }
        };
        let run = if removed {
            None
        } else {
            idx.run_at(orig).copied()
        };
        let Some(run) = run else {
            self.stats.zero_faults += 1;
            record(self, 1);
            // Published before the answer wakes the process, so whoever
            // hears from the process next sees this fault counted.
            self.publish();
            return match uffd::zeropage(fd, page, PAGE_SIZE) {
                Err(Errno::EAGAIN) => {
                    c.deferred.push(page);
                    Ok(Outcome::Served)
                }
                r => answer(fd, page, r, "UFFDIO_ZEROPAGE"),
            };
        };
        let image_page = run.image_page + (orig - run.addr) / PAGE_SIZE;
        let chunk_pages = u64::from(idx.chunk_pages);
        let chunk_no = (image_page / chunk_pages) as usize;
        let in_chunk = image_page % chunk_pages;
        let mut pages = 1;
        if c.simple() {
            let run_left = run.pages - (orig - run.addr) / PAGE_SIZE;
            let chunk_left = chunk_pages - in_chunk;
            let range_end = self
                .ranges
                .iter()
                .find(|(s, e)| (*s..*e).contains(&page))
                .map_or(page + PAGE_SIZE, |r| r.1);
            let range_left = (range_end - page) / PAGE_SIZE;
            pages = self
                .fault_around
                .min(run_left)
                .min(chunk_left)
                .min(range_left)
                .max(1);
        }
        let chunk = self.chunk(chunk_no)?;
        let from = (in_chunk * PAGE_SIZE) as usize;
        let bytes = &chunk[from..from + (pages * PAGE_SIZE) as usize];
        self.stats.pages_copied += pages;
        record(self, pages);
        self.publish();
        match uffd::copy(fd, page, bytes) {
            Ok(n) => {
                self.stats.pages_copied -= pages - n as u64 / PAGE_SIZE;
                Ok(Outcome::Served)
            }
            Err(Errno::EAGAIN) => {
                self.stats.pages_copied -= pages;
                c.deferred.push(page);
                Ok(Outcome::Served)
            }
            other => {
                self.stats.pages_copied -= pages;
                answer(fd, page, other.map(drop), "UFFDIO_COPY")
            }
        }
    }
}

/// Turns a copy/zeropage result into an outcome: a page someone else
/// already filled only needs a wake-up; a process that is gone ends.
fn answer(
    fd: BorrowedFd<'_>,
    page: u64,
    r: Result<(), Errno>,
    what: &'static str,
) -> Result<Outcome, LazyError> {
    match r {
        Ok(()) => Ok(Outcome::Served),
        Err(Errno::EEXIST) => {
            uffd::wake(fd, page, PAGE_SIZE).map_err(|source| LazyError::Uffd {
                what: "UFFDIO_WAKE",
                source,
            })?;
            Ok(Outcome::Served)
        }
        Err(Errno::ESRCH) | Err(Errno::ENOENT) => Ok(Outcome::Gone),
        Err(source) => Err(LazyError::Uffd { what, source }),
    }
}
