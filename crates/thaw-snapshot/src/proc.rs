//! Parsers for the `/proc/<pid>/…` files a checkpoint reads.
//!
//! Owns: `maps` ([`read_maps`]), the thread list ([`task_ids`]), `pagemap`
//! ([`Pagemap`]), `status` ([`read_status`]), `auxv` ([`read_auxv`]) and
//! `stat` ([`read_stat`]). Every parser also has a `parse_*` form that takes
//! the file's text or bytes, so the formats are tested on literal inputs as
//! well as on live processes.
//!
//! Must not: stop, trace or change a process; no policy about what to dump.
//!
//! Most of these files reveal the address-space fields (`stat` fields 26+,
//! `auxv`, `pagemap` PFNs) only to a reader with `PTRACE_MODE_READ` access to
//! the target; the engine runs as root, and tests spawn their own children.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use thiserror::Error;

use crate::PAGE_SIZE;

/// A format error in one `/proc` file.
#[derive(Debug, Error)]
#[error("Line {line}: {what}")]
pub struct ParseError {
    /// 1-based line number (0 for binary files).
    pub line: usize,
    /// What was wrong.
    pub what: String,
}

impl ParseError {
    fn new(line: usize, what: impl Into<String>) -> Self {
        Self {
            line,
            what: what.into(),
        }
    }
}

/// Errors reading or parsing a `/proc` file.
#[derive(Debug, Error)]
pub enum ProcError {
    /// Opening or reading the file failed (the process may have exited).
    #[error("Reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file's contents did not have the expected format.
    #[error("Parsing {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong, and where.
        #[source]
        source: ParseError,
    },
}

fn proc_path(pid: Pid, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{}/{}", pid.as_raw(), file))
}

fn read_text(path: &Path) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse_err(path: &Path) -> impl FnOnce(ParseError) -> ProcError + '_ {
    move |source| ProcError::Parse {
        path: path.to_owned(),
        source,
    }
}

fn hex(line: usize, field: &str, text: &str) -> Result<u64, ParseError> {
    u64::from_str_radix(text, 16)
        .map_err(|_| ParseError::new(line, format!("bad {field} {text:?}")))
}

// ---------------------------------------------------------------------------
// maps

/// Access rights of a mapping, from the `rwx` part of the perms column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Protection {
    /// `r`
    pub read: bool,
    /// `w`
    pub write: bool,
    /// `x`
    pub exec: bool,
}

impl Protection {
    /// The `PROT_*` bits for `mmap`/`mprotect`.
    pub fn to_prot_bits(self) -> i32 {
        let mut bits = libc::PROT_NONE;
        if self.read {
            bits |= libc::PROT_READ;
        }
        if self.write {
            bits |= libc::PROT_WRITE;
        }
        if self.exec {
            bits |= libc::PROT_EXEC;
        }
        bits
    }
}

/// What backs a mapping, decoded from the pathname column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingKind {
    /// Anonymous memory with no name.
    Anonymous,
    /// Anonymous memory named with `PR_SET_VMA_ANON_NAME` (`[anon:NAME]`).
    AnonymousNamed(String),
    /// A file mapping. `deleted` is set when the path ends in ` (deleted)`
    /// (unlinked files, memfds, SysV shm), which the path alone cannot reopen.
    File {
        /// The path as the kernel printed it, without the ` (deleted)` mark.
        path: PathBuf,
        /// The file was unlinked.
        deleted: bool,
    },
    /// The brk heap, `[heap]`.
    Heap,
    /// The main thread's stack, `[stack]`.
    Stack,
    /// The vDSO code, `[vdso]`.
    Vdso,
    /// The vDSO data pages, `[vvar]`.
    Vvar,
    /// The vDSO clock pages, `[vvar_vclock]` (Linux 6.13+ splits them from
    /// `[vvar]`; tools that only know `[vvar]` misdetect the vDSO here).
    VvarVclock,
    /// The legacy fixed-address `[vsyscall]` page.
    Vsyscall,
    /// Any other bracketed special mapping (e.g. `[uprobes]`).
    OtherSpecial(String),
}

/// One line of `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Access rights.
    pub prot: Protection,
    /// `s` (shared) rather than `p` (private, copy-on-write).
    pub shared: bool,
    /// Offset into the file, in bytes.
    pub offset: u64,
    /// Device major number of the backing file.
    pub dev_major: u32,
    /// Device minor number of the backing file.
    pub dev_minor: u32,
    /// Inode of the backing file (0 for anonymous memory).
    pub inode: u64,
    /// What backs it.
    pub kind: MappingKind,
}

impl MapEntry {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the mapping is empty (never true for kernel output).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Number of pages.
    pub fn pages(&self) -> u64 {
        self.len() / PAGE_SIZE
    }

    /// Whether `addr` lies inside.
    pub fn contains(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }

    /// Whether the mapping is private memory that a checkpoint must copy
    /// page by page: anonymous, heap, stack, or private file mappings (whose
    /// written pages are anonymous copies).
    pub fn is_private_memory(&self) -> bool {
        !self.shared
            && matches!(
                self.kind,
                MappingKind::Anonymous
                    | MappingKind::AnonymousNamed(_)
                    | MappingKind::Heap
                    | MappingKind::Stack
                    | MappingKind::File { .. }
            )
    }
}

/// Parses the text of `/proc/<pid>/maps`.
pub fn parse_maps(text: &str) -> Result<Vec<MapEntry>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| parse_maps_line(i + 1, l))
        .collect()
}

fn next_field<'a>(line: usize, rest: &mut &'a str, name: &str) -> Result<&'a str, ParseError> {
    let trimmed = rest.trim_start_matches(' ');
    let (field, tail) = match trimmed.find(' ') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (trimmed, ""),
    };
    if field.is_empty() {
        return Err(ParseError::new(line, format!("missing {name}")));
    }
    *rest = tail;
    Ok(field)
}

fn parse_maps_line(line: usize, text: &str) -> Result<MapEntry, ParseError> {
    let mut rest = text;
    let range = next_field(line, &mut rest, "range")?;
    let perms = next_field(line, &mut rest, "perms")?;
    let offset = next_field(line, &mut rest, "offset")?;
    let dev = next_field(line, &mut rest, "dev")?;
    let inode = next_field(line, &mut rest, "inode")?;
    // The pathname is padded to a column and may itself contain spaces.
    let path = rest.trim_start_matches(' ');

    let (start, end) = range
        .split_once('-')
        .ok_or_else(|| ParseError::new(line, format!("bad range {range:?}")))?;
    let start = hex(line, "start", start)?;
    let end = hex(line, "end", end)?;
    if end < start || !start.is_multiple_of(PAGE_SIZE) || !end.is_multiple_of(PAGE_SIZE) {
        return Err(ParseError::new(line, format!("bad range {range:?}")));
    }

    let p = perms.as_bytes();
    if p.len() != 4 {
        return Err(ParseError::new(line, format!("bad perms {perms:?}")));
    }
    let prot = Protection {
        read: p[0] == b'r',
        write: p[1] == b'w',
        exec: p[2] == b'x',
    };
    let shared = match p[3] {
        b's' => true,
        b'p' => false,
        _ => return Err(ParseError::new(line, format!("bad perms {perms:?}"))),
    };

    let (major, minor) = dev
        .split_once(':')
        .ok_or_else(|| ParseError::new(line, format!("bad dev {dev:?}")))?;
    let dev_major = u32::from_str_radix(major, 16)
        .map_err(|_| ParseError::new(line, format!("bad dev {dev:?}")))?;
    let dev_minor = u32::from_str_radix(minor, 16)
        .map_err(|_| ParseError::new(line, format!("bad dev {dev:?}")))?;
    let inode = inode
        .parse::<u64>()
        .map_err(|_| ParseError::new(line, format!("bad inode {inode:?}")))?;

    Ok(MapEntry {
        start,
        end,
        prot,
        shared,
        offset: hex(line, "offset", offset)?,
        dev_major,
        dev_minor,
        inode,
        kind: mapping_kind(path),
    })
}

fn mapping_kind(path: &str) -> MappingKind {
    match path {
        "" => MappingKind::Anonymous,
        "[heap]" => MappingKind::Heap,
        "[stack]" => MappingKind::Stack,
        "[vdso]" => MappingKind::Vdso,
        "[vvar]" => MappingKind::Vvar,
        "[vvar_vclock]" => MappingKind::VvarVclock,
        "[vsyscall]" => MappingKind::Vsyscall,
        p if p.starts_with("[anon:") && p.ends_with(']') => {
            MappingKind::AnonymousNamed(p["[anon:".len()..p.len() - 1].to_owned())
        }
        p if p.starts_with('[') && p.ends_with(']') => MappingKind::OtherSpecial(p.to_owned()),
        p => match p.strip_suffix(" (deleted)") {
            Some(stripped) => MappingKind::File {
                path: PathBuf::from(stripped),
                deleted: true,
            },
            None => MappingKind::File {
                path: PathBuf::from(p),
                deleted: false,
            },
        },
    }
}

/// Reads and parses `/proc/<pid>/maps`.
pub fn read_maps(pid: Pid) -> Result<Vec<MapEntry>, ProcError> {
    let path = proc_path(pid, "maps");
    parse_maps(&read_text(&path)?).map_err(parse_err(&path))
}

// ---------------------------------------------------------------------------
// task list

/// Lists the thread ids of process `pid` from `/proc/<pid>/task`, sorted.
///
/// The list is a snapshot: threads may be created or exit right after; see
/// [`crate::ptrace::freeze`] for how the engine gets a stable set.
pub fn task_ids(pid: Pid) -> Result<Vec<Pid>, ProcError> {
    let path = proc_path(pid, "task");
    let read_err = |source| ProcError::Read {
        path: path.clone(),
        source,
    };
    let mut tids = Vec::new();
    for entry in std::fs::read_dir(&path).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        let tid = name
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
            .ok_or_else(|| ProcError::Parse {
                path: path.clone(),
                source: ParseError::new(0, format!("bad task entry {name:?}")),
            })?;
        tids.push(Pid::from_raw(tid));
    }
    tids.sort();
    Ok(tids)
}

// ---------------------------------------------------------------------------
// pagemap

/// One 64-bit `/proc/<pid>/pagemap` entry (see the kernel's
/// `Documentation/admin-guide/mm/pagemap.rst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PagemapEntry(pub u64);

impl PagemapEntry {
    const PFN_MASK: u64 = (1 << 55) - 1;

    /// Bit 63: the page is in RAM.
    pub fn present(self) -> bool {
        self.0 & (1 << 63) != 0
    }
    /// Bit 62: the page is in swap.
    pub fn swapped(self) -> bool {
        self.0 & (1 << 62) != 0
    }
    /// Bit 61: a file page or shared anonymous page (clear for private
    /// anonymous pages, including copied-on-write pages of file mappings).
    pub fn file_or_shared(self) -> bool {
        self.0 & (1 << 61) != 0
    }
    /// Bit 58: a guard region installed with `MADV_GUARD_INSTALL`.
    pub fn guard_region(self) -> bool {
        self.0 & (1 << 58) != 0
    }
    /// Bit 57: write-protected by userfaultfd.
    pub fn uffd_wp(self) -> bool {
        self.0 & (1 << 57) != 0
    }
    /// Bit 56: mapped by exactly one process.
    pub fn exclusive(self) -> bool {
        self.0 & (1 << 56) != 0
    }
    /// Bit 55: written since soft-dirty bits were last cleared.
    pub fn soft_dirty(self) -> bool {
        self.0 & (1 << 55) != 0
    }
    /// The page frame number, if present and visible (the kernel zeroes
    /// PFNs for readers without `CAP_SYS_ADMIN`).
    pub fn pfn(self) -> Option<u64> {
        let pfn = self.0 & Self::PFN_MASK;
        (self.present() && pfn != 0).then_some(pfn)
    }
    /// Present or swapped: the page has contents a checkpoint must keep.
    /// (Absent pages were never touched or were discarded, and read back as
    /// zeros or from the file.)
    pub fn populated(self) -> bool {
        self.present() || self.swapped()
    }
}

/// An open `/proc/<pid>/pagemap`, for repeated range reads.
#[derive(Debug)]
pub struct Pagemap {
    file: File,
    path: PathBuf,
}

impl Pagemap {
    /// Opens `/proc/<pid>/pagemap`.
    pub fn open(pid: Pid) -> Result<Self, ProcError> {
        let path = proc_path(pid, "pagemap");
        let file = File::open(&path).map_err(|source| ProcError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Self { file, path })
    }

    /// Reads the entries for the pages of `[start, end)`; both must be
    /// page-aligned. Unmapped pages read as empty (all bits clear).
    pub fn read(&self, start: u64, end: u64) -> Result<Vec<PagemapEntry>, ProcError> {
        if !start.is_multiple_of(PAGE_SIZE) || !end.is_multiple_of(PAGE_SIZE) || end < start {
            return Err(ProcError::Parse {
                path: self.path.clone(),
                source: ParseError::new(0, format!("bad range {start:#x}-{end:#x}")),
            });
        }
        let pages = usize::try_from((end - start) / PAGE_SIZE).map_err(|_| ProcError::Parse {
            path: self.path.clone(),
            source: ParseError::new(0, "range too large"),
        })?;
        let mut raw = vec![0u8; pages * 8];
        self.file
            .read_exact_at(&mut raw, start / PAGE_SIZE * 8)
            .map_err(|source| ProcError::Read {
                path: self.path.clone(),
                source,
            })?;
        Ok(parse_pagemap(&raw))
    }
}

/// Decodes raw pagemap bytes (native-endian 64-bit words).
pub fn parse_pagemap(raw: &[u8]) -> Vec<PagemapEntry> {
    ne_words(raw).map(PagemapEntry).collect()
}

fn ne_words(raw: &[u8]) -> impl Iterator<Item = u64> + '_ {
    raw.chunks_exact(8).map(|c| {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        u64::from_ne_bytes(b)
    })
}

// ---------------------------------------------------------------------------
// status

/// The fields of `/proc/<pid>/status` the engine uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// `Name`: the command name (at most 15 bytes).
    pub name: String,
    /// `Umask`.
    pub umask: Option<u32>,
    /// `State`: the one-letter state (`R`, `S`, `t`, `Z`, ...).
    pub state: char,
    /// `Tgid`: the thread group (process) id.
    pub tgid: i32,
    /// `Pid`: the thread id.
    pub pid: i32,
    /// `PPid`.
    pub ppid: i32,
    /// `TracerPid`: 0 when not traced.
    pub tracer_pid: i32,
    /// `Uid`: real, effective, saved, filesystem.
    pub uid: [u32; 4],
    /// `Gid`: real, effective, saved, filesystem.
    pub gid: [u32; 4],
    /// `NSpid`: the thread id in each pid namespace, outermost first.
    pub ns_pid: Vec<i32>,
    /// `Threads`.
    pub threads: u32,
    /// `SigPnd`: signals pending for this thread.
    pub sig_pnd: u64,
    /// `ShdPnd`: signals pending for the whole process.
    pub shd_pnd: u64,
    /// `SigBlk`: blocked signals.
    pub sig_blk: u64,
    /// `SigIgn`: ignored signals.
    pub sig_ign: u64,
    /// `SigCgt`: signals with a handler installed.
    pub sig_cgt: u64,
    /// `CapEff`.
    pub cap_eff: u64,
    /// `NoNewPrivs`.
    pub no_new_privs: bool,
    /// `Seccomp`: 0 disabled, 1 strict, 2 filter.
    pub seccomp: u32,
}

/// Parses the text of `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> Result<Status, ParseError> {
    let mut fields = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if let Some((k, v)) = line.split_once(':') {
            fields.insert(k, (i + 1, v.trim()));
        }
    }
    let get = |k: &str| -> Result<(usize, &str), ParseError> {
        fields
            .get(k)
            .copied()
            .ok_or_else(|| ParseError::new(0, format!("missing {k}")))
    };
    let int = |k: &str| -> Result<i32, ParseError> {
        let (line, v) = get(k)?;
        v.parse()
            .map_err(|_| ParseError::new(line, format!("bad {k} {v:?}")))
    };
    let mask = |k: &str| -> Result<u64, ParseError> {
        let (line, v) = get(k)?;
        hex(line, k, v)
    };
    let ids = |k: &str| -> Result<[u32; 4], ParseError> {
        let (line, v) = get(k)?;
        let parsed: Vec<u32> = v
            .split_whitespace()
            .map(|x| x.parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| ParseError::new(line, format!("bad {k} {v:?}")))?;
        parsed
            .try_into()
            .map_err(|_| ParseError::new(line, format!("bad {k} {v:?}")))
    };

    let (state_line, state) = get("State")?;
    let state = state
        .chars()
        .next()
        .ok_or_else(|| ParseError::new(state_line, "empty State"))?;
    let umask = match fields.get("Umask") {
        Some(&(line, v)) => Some(
            u32::from_str_radix(v, 8)
                .map_err(|_| ParseError::new(line, format!("bad Umask {v:?}")))?,
        ),
        None => None,
    };
    let ns_pid = match fields.get("NSpid") {
        Some(&(line, v)) => v
            .split_whitespace()
            .map(|x| x.parse::<i32>())
            .collect::<Result<_, _>>()
            .map_err(|_| ParseError::new(line, format!("bad NSpid {v:?}")))?,
        None => Vec::new(),
    };
    let threads = int("Threads")?;
    Ok(Status {
        name: get("Name")?.1.to_owned(),
        umask,
        state,
        tgid: int("Tgid")?,
        pid: int("Pid")?,
        ppid: int("PPid")?,
        tracer_pid: int("TracerPid")?,
        uid: ids("Uid")?,
        gid: ids("Gid")?,
        ns_pid,
        threads: u32::try_from(threads)
            .map_err(|_| ParseError::new(0, format!("bad Threads {threads}")))?,
        sig_pnd: mask("SigPnd")?,
        shd_pnd: mask("ShdPnd")?,
        sig_blk: mask("SigBlk")?,
        sig_ign: mask("SigIgn")?,
        sig_cgt: mask("SigCgt")?,
        cap_eff: mask("CapEff")?,
        no_new_privs: fields.get("NoNewPrivs").is_some_and(|(_, v)| *v == "1"),
        seccomp: match fields.get("Seccomp") {
            Some(&(line, v)) => v
                .parse()
                .map_err(|_| ParseError::new(line, format!("bad Seccomp {v:?}")))?,
            None => 0,
        },
    })
}

/// Reads and parses `/proc/<pid>/status` (use a tid for per-thread fields
/// such as `SigBlk` and `SigPnd`: `/proc/<tid>/status` works for any thread).
pub fn read_status(pid: Pid) -> Result<Status, ProcError> {
    let path = proc_path(pid, "status");
    parse_status(&read_text(&path)?).map_err(parse_err(&path))
}

// ---------------------------------------------------------------------------
// auxv

/// The ELF auxiliary vector the kernel passed at `execve`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auxv {
    /// `(AT_* key, value)` pairs in kernel order, without the `AT_NULL` end.
    pub entries: Vec<(u64, u64)>,
}

/// `AT_RSEQ_FEATURE_SIZE`: size of the rseq area features the kernel knows.
pub const AT_RSEQ_FEATURE_SIZE: u64 = 27;
/// `AT_RSEQ_ALIGN`: required alignment of the rseq area.
pub const AT_RSEQ_ALIGN: u64 = 28;
/// `AT_MINSIGSTKSZ`: minimal signal stack size for this CPU's xstate.
pub const AT_MINSIGSTKSZ: u64 = 51;

impl Auxv {
    /// The value for `key` (an `AT_*` constant), if present.
    pub fn get(&self, key: u64) -> Option<u64> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    /// `AT_SYSINFO_EHDR`: the address the vDSO was mapped at by `execve`.
    pub fn vdso_base(&self) -> Option<u64> {
        self.get(libc::AT_SYSINFO_EHDR)
    }
}

/// Parses the raw bytes of `/proc/<pid>/auxv` (native 64-bit pairs).
pub fn parse_auxv(raw: &[u8]) -> Result<Auxv, ParseError> {
    if !raw.len().is_multiple_of(16) {
        return Err(ParseError::new(
            0,
            format!("length {} not a multiple of 16", raw.len()),
        ));
    }
    let words: Vec<u64> = ne_words(raw).collect();
    let mut entries = Vec::new();
    for pair in words.chunks_exact(2) {
        let (key, value) = (pair[0], pair[1]);
        if key == libc::AT_NULL {
            break;
        }
        entries.push((key, value));
    }
    Ok(Auxv { entries })
}

/// Reads and parses `/proc/<pid>/auxv`.
pub fn read_auxv(pid: Pid) -> Result<Auxv, ProcError> {
    let path = proc_path(pid, "auxv");
    let raw = std::fs::read(&path).map_err(|source| ProcError::Read {
        path: path.clone(),
        source,
    })?;
    parse_auxv(&raw).map_err(parse_err(&path))
}

// ---------------------------------------------------------------------------
// stat

/// The fields of `/proc/<pid>/stat` the engine uses (numbering as in
/// `proc(5)`, 1-based).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stat {
    /// (1) pid.
    pub pid: i32,
    /// (2) comm, without the parentheses.
    pub comm: String,
    /// (3) state letter.
    pub state: char,
    /// (4) parent pid.
    pub ppid: i32,
    /// (5) process group.
    pub pgrp: i32,
    /// (6) session.
    pub session: i32,
    /// (9) kernel `PF_*` flags.
    pub flags: u64,
    /// (20) number of threads.
    pub num_threads: i64,
    /// (22) start time, in clock ticks after boot.
    pub start_time: u64,
    /// (26) start of the text segment.
    pub start_code: u64,
    /// (27) end of the text segment.
    pub end_code: u64,
    /// (28) bottom (highest address) of the main stack.
    pub start_stack: u64,
    /// (45) start of initialised data.
    pub start_data: u64,
    /// (46) end of initialised data.
    pub end_data: u64,
    /// (47) start of the brk heap. The *current* brk is not in `/proc`: the
    /// end of the `[heap]` mapping is its page-aligned upper bound, the exact
    /// value needs `brk(0)` run in the process.
    pub start_brk: u64,
    /// (48) start of the argv strings.
    pub arg_start: u64,
    /// (49) end of the argv strings.
    pub arg_end: u64,
    /// (50) start of the environment strings.
    pub env_start: u64,
    /// (51) end of the environment strings.
    pub env_end: u64,
    /// (52) exit code as for `waitpid`.
    pub exit_code: i32,
}

/// Parses the text of `/proc/<pid>/stat`.
pub fn parse_stat(text: &str) -> Result<Stat, ParseError> {
    // comm may contain spaces and parentheses: it ends at the last ')'.
    let open = text
        .find('(')
        .ok_or_else(|| ParseError::new(1, "missing '('"))?;
    let close = text
        .rfind(')')
        .ok_or_else(|| ParseError::new(1, "missing ')'"))?;
    if close < open {
        return Err(ParseError::new(1, "bad comm"));
    }
    let pid = text[..open]
        .trim()
        .parse()
        .map_err(|_| ParseError::new(1, "bad pid"))?;
    let comm = text[open + 1..close].to_owned();
    // Fields from (3) on, so fields[0] is field 3.
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> Result<&str, ParseError> {
        fields
            .get(n - 3)
            .copied()
            .ok_or_else(|| ParseError::new(1, format!("missing field {n}")))
    };
    let num = |n: usize| -> Result<u64, ParseError> {
        let v = field(n)?;
        v.parse()
            .map_err(|_| ParseError::new(1, format!("bad field {n} {v:?}")))
    };
    let signed = |n: usize| -> Result<i64, ParseError> {
        let v = field(n)?;
        v.parse()
            .map_err(|_| ParseError::new(1, format!("bad field {n} {v:?}")))
    };
    let int = |n: usize| -> Result<i32, ParseError> {
        i32::try_from(signed(n)?).map_err(|_| ParseError::new(1, format!("bad field {n}")))
    };
    let state = field(3)?
        .chars()
        .next()
        .ok_or_else(|| ParseError::new(1, "bad state"))?;
    Ok(Stat {
        pid,
        comm,
        state,
        ppid: int(4)?,
        pgrp: int(5)?,
        session: int(6)?,
        flags: num(9)?,
        num_threads: signed(20)?,
        start_time: num(22)?,
        start_code: num(26)?,
        end_code: num(27)?,
        start_stack: num(28)?,
        start_data: num(45)?,
        end_data: num(46)?,
        start_brk: num(47)?,
        arg_start: num(48)?,
        arg_end: num(49)?,
        env_start: num(50)?,
        env_end: num(51)?,
        exit_code: int(52)?,
    })
}

/// Reads and parses `/proc/<pid>/stat`.
pub fn read_stat(pid: Pid) -> Result<Stat, ProcError> {
    let path = proc_path(pid, "stat");
    parse_stat(&read_text(&path)?).map_err(parse_err(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d4c8a00000-55d4c8a02000 r--p 00000000 fe:00 1312                       /usr/bin/sleep
55d4c9c6d000-55d4c9c8e000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000001000 rw-s 00000000 00:01 2049                       /memfd:shared buf (deleted)
7f0000001000-7f0000002000 ---p 00000000 00:00 0 \n\
7f0000002000-7f0000003000 rw-p 00000000 00:00 0                          [anon:v8 heap]
7f0000003000-7f0000004000 r--p 00001000 08:11 99                         /opt/my app/lib.so
7fce35b57000-7fce35b5b000 r--p 00000000 00:00 0                          [vvar]
7fce35b5b000-7fce35b5d000 r--p 00000000 00:00 0                          [vvar_vclock]
7fce35b5d000-7fce35b5f000 r-xp 00000000 00:00 0                          [vdso]
7ffc4ac1c000-7ffc4ac3d000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn maps_literal() {
        let maps = parse_maps(MAPS).expect("parse");
        assert_eq!(maps.len(), 11);
        assert_eq!(
            maps[0].kind,
            MappingKind::File {
                path: "/usr/bin/sleep".into(),
                deleted: false
            }
        );
        assert_eq!(
            (maps[0].dev_major, maps[0].dev_minor, maps[0].inode),
            (0xfe, 0, 1312)
        );
        assert_eq!(maps[1].kind, MappingKind::Heap);
        assert!(maps[1].prot.read && maps[1].prot.write && !maps[1].prot.exec);
        assert!(maps[2].shared);
        assert_eq!(
            maps[2].kind,
            MappingKind::File {
                path: "/memfd:shared buf".into(),
                deleted: true
            }
        );
        assert_eq!(maps[3].kind, MappingKind::Anonymous);
        assert_eq!(maps[3].prot, Protection::default());
        assert_eq!(maps[4].kind, MappingKind::AnonymousNamed("v8 heap".into()));
        assert_eq!(maps[5].offset, 0x1000);
        assert_eq!(
            maps[5].kind,
            MappingKind::File {
                path: "/opt/my app/lib.so".into(),
                deleted: false
            }
        );
        assert_eq!(maps[6].kind, MappingKind::Vvar);
        assert_eq!(maps[7].kind, MappingKind::VvarVclock);
        assert_eq!(maps[8].kind, MappingKind::Vdso);
        assert_eq!(maps[8].pages(), 2);
        assert_eq!(maps[9].kind, MappingKind::Stack);
        assert_eq!(maps[10].kind, MappingKind::Vsyscall);
        assert!(maps[1].is_private_memory());
        assert!(!maps[2].is_private_memory());
        assert!(!maps[8].is_private_memory());
    }

    #[test]
    fn maps_rejects_garbage() {
        assert!(parse_maps("hello world\n").is_err());
        assert!(parse_maps("1000-0 rw-p 0 0:0 0\n").is_err());
        assert!(parse_maps("0-1000 rw-x 0 0:0 0\n").is_err());
    }

    #[test]
    fn stat_literal_with_tricky_comm() {
        let mut text = String::from("4242 (a) b (c) S 1 4242 4242 0 -1 4194560");
        // Fields 10..=52 (43 of them), numbered so the test can check them.
        for n in 10..=52 {
            text.push_str(&format!(" {}", n * 10));
        }
        text.push('\n');
        let st = parse_stat(&text).expect("parse");
        assert_eq!(st.pid, 4242);
        assert_eq!(st.comm, "a) b (c");
        assert_eq!(st.state, 'S');
        assert_eq!(st.ppid, 1);
        assert_eq!(st.flags, 4194560);
        assert_eq!(st.num_threads, 200);
        assert_eq!(st.start_code, 260);
        assert_eq!(st.start_brk, 470);
        assert_eq!(st.arg_start, 480);
        assert_eq!(st.env_end, 510);
        assert_eq!(st.exit_code, 520);
        assert!(parse_stat("12 (x) S 1\n").is_err());
    }

    #[test]
    fn status_literal() {
        let text = "Name:\tnode\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t10\nNgid:\t0\n\
Pid:\t11\nPPid:\t1\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t1\t2\t3\t4\nNSpid:\t11\t3\n\
Threads:\t7\nSigQ:\t0/1\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000100\n\
SigBlk:\tfffffffe7ffbfeff\nSigIgn:\t0000000000001000\nSigCgt:\t0000000188004602\n\
CapEff:\t000001ffffffffff\nNoNewPrivs:\t1\nSeccomp:\t2\n";
        let st = parse_status(text).expect("parse");
        assert_eq!(st.name, "node");
        assert_eq!(st.umask, Some(0o22));
        assert_eq!(st.state, 'S');
        assert_eq!((st.tgid, st.pid, st.ppid), (10, 11, 1));
        assert_eq!(st.gid, [1, 2, 3, 4]);
        assert_eq!(st.ns_pid, vec![11, 3]);
        assert_eq!(st.threads, 7);
        assert_eq!(st.shd_pnd, 0x100);
        assert_eq!(st.sig_blk, 0xfffffffe7ffbfeff);
        assert!(st.no_new_privs);
        assert_eq!(st.seccomp, 2);
        assert!(parse_status("Name:\tx\n").is_err());
    }

    #[test]
    fn auxv_and_pagemap_bits() {
        let mut raw = Vec::new();
        for (k, v) in [
            (libc::AT_PAGESZ, 4096u64),
            (libc::AT_SYSINFO_EHDR, 0x7f00_0000_0000),
            (0, 0),
        ] {
            raw.extend_from_slice(&k.to_le_bytes());
            raw.extend_from_slice(&v.to_le_bytes());
        }
        let auxv = parse_auxv(&raw).expect("parse");
        assert_eq!(auxv.get(libc::AT_PAGESZ), Some(4096));
        assert_eq!(auxv.vdso_base(), Some(0x7f00_0000_0000));
        assert_eq!(auxv.entries.len(), 2);
        assert!(parse_auxv(&raw[..15]).is_err());

        let e = PagemapEntry((1 << 63) | (1 << 56) | (1 << 55) | 0x1234);
        assert!(e.present() && e.exclusive() && e.soft_dirty() && e.populated());
        assert!(!e.swapped() && !e.file_or_shared());
        assert_eq!(e.pfn(), Some(0x1234));
        let s = PagemapEntry(1 << 62);
        assert!(s.swapped() && s.populated() && s.pfn().is_none());
        assert!(!PagemapEntry(0).populated());
    }
}
