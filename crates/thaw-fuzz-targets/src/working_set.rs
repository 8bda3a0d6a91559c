//! Working-set files (`thaw-snapshot`'s `workingset.thaw`): what a
//! prefetching restore installs before the process resumes.

use std::path::PathBuf;
use std::sync::OnceLock;

use thaw_snapshot::cpu::CpuFeatures;
use thaw_snapshot::image::{self, Snapshot};
use thaw_snapshot::ptrace::RseqConfiguration;
use thaw_snapshot::state::{
    Clocks, Credentials, FileIdentity, MemoryIndex, MmLayout, PageRun, ProcessImage, SnapshotState,
    ThreadImage, Vma, VmaKind, FORMAT_VERSION,
};
use thaw_snapshot::workingset::{self, WorkingSet, WS_VERSION};
use thaw_snapshot::PAGE_SIZE;

/// Flag: build the header around the rest (magic, version, the fixture
/// snapshot's id, the counts from the rest's first 24 bytes, the body's
/// BLAKE3), the body padded or cut to the length the counts imply.
pub const FIX_HEADER: u8 = 1;
/// Flag: the rest is a list of page addresses (u64 LE) to record a
/// working set from with the writer; it must open again and hold the
/// snapshot's pages.
pub const RECORD: u8 = 2;

const PAGE: usize = PAGE_SIZE as usize;
/// The lazily served anonymous mapping of the fixture snapshot.
pub const ANON: (u64, u64) = (0x7f00_0000_0000, 0x7f00_0000_0000 + 16 * PAGE_SIZE);
/// A private file mapping after it, with one saved page (copied in before
/// the resume).
pub const FILE: (u64, u64) = (ANON.1, ANON.1 + 4 * PAGE_SIZE);

/// (address, pages, first image page) of the fixture's saved runs.
const RUNS: [(u64, u64, u64); 3] = [
    (ANON.0, 4, 0),
    (ANON.0 + 8 * PAGE_SIZE, 2, 4),
    (FILE.0 + PAGE_SIZE, 1, 6),
];

/// The bytes of the page at `addr`: its address, then zeros.
fn page(addr: u64) -> Vec<u8> {
    let mut p = vec![0u8; PAGE];
    p[..8].copy_from_slice(&addr.to_le_bytes());
    p
}

fn fixture_state(data: &[u8]) -> SnapshotState {
    let chunk_pages = 2u32;
    SnapshotState {
        format_version: FORMAT_VERSION,
        created_unix_ms: 0,
        kernel_release: "fuzz".into(),
        cpu: CpuFeatures::host().expect("host CPU features"),
        vdso_hash: String::new(),
        process: ProcessImage {
            pid: 2,
            comm: "fuzz".into(),
            exe: "/bin/fuzz".into(),
            cwd: "/".into(),
            umask: 0o022,
            creds: Credentials {
                uid: [0; 3],
                gid: [0; 3],
                groups: vec![],
                cap_inheritable: 0,
                cap_permitted: 0,
                cap_effective: 0,
                cap_bounding: 0,
                no_new_privs: false,
            },
            seccomp_filters: vec![],
            rlimits: vec![],
            mm: MmLayout {
                start_code: 0,
                end_code: 0,
                start_data: 0,
                end_data: 0,
                start_brk: 0,
                brk: 0,
                start_stack: 0,
                arg_start: 0,
                arg_end: 0,
                env_start: 0,
                env_end: 0,
                auxv: vec![0, 0],
            },
            signals: vec![],
            mappings: vec![
                Vma {
                    start: ANON.0,
                    end: ANON.1,
                    prot: 3,
                    shared: false,
                    kind: VmaKind::Anonymous,
                },
                Vma {
                    start: FILE.0,
                    end: FILE.1,
                    prot: 3,
                    shared: false,
                    kind: VmaKind::File {
                        path: "/lib/libfuzz.so".into(),
                        offset: 0,
                        identity: FileIdentity {
                            dev: 1,
                            ino: 2,
                            size: 3,
                            mtime_ns: 4,
                        },
                    },
                },
            ],
            // One thread whose rseq area is in a saved page (which a lazy
            // restore then copies in before the resume).
            threads: vec![ThreadImage {
                tid: 2,
                comm: "fuzz".into(),
                regs: Default::default(),
                xstate: vec![],
                sigmask: Default::default(),
                sigaltstack: Default::default(),
                rseq: RseqConfiguration {
                    abi_pointer: ANON.0 + 2 * PAGE_SIZE + 64,
                    abi_size: 32,
                    signature: 0x5305_3053,
                    flags: 0,
                },
                robust_list: Default::default(),
                clear_child_tid: 0,
            }],
            fds: vec![],
        },
        memory: MemoryIndex {
            data_pages: (data.len() / PAGE) as u64,
            zero_pages: 0,
            runs: RUNS
                .iter()
                .map(|&(addr, pages, image_page)| PageRun {
                    addr,
                    pages,
                    image_page,
                })
                .collect(),
            chunk_pages,
            chunk_hashes: data
                .chunks(chunk_pages as usize * PAGE)
                .map(|c| blake3::hash(c).to_hex().to_string())
                .collect(),
        },
        clocks: Clocks::default(),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    snap: Snapshot,
    ws_path: PathBuf,
}

/// A small snapshot (three page runs, one of them in a file mapping) and
/// where the working set under test is written.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = crate::tempdir();
        let snap_dir = dir.path().join("snapshot");
        let mut data = Vec::new();
        for &(addr, pages, _) in &RUNS {
            for p in 0..pages {
                data.extend_from_slice(&page(addr + p * PAGE_SIZE));
            }
        }
        image::write(&snap_dir, &fixture_state(&data), &data).expect("write the fixture");
        let snap = Snapshot::open(&snap_dir).expect("open the fixture");
        let ws_path = dir.path().join(workingset::WORKING_SET_FILE);
        Fixture {
            _dir: dir,
            snap,
            ws_path,
        }
    })
}

/// The directory of the fixture snapshot (`state.thaw`, `memory.thaw`).
pub fn fixture_dir() -> &'static std::path::Path {
    fixture().snap.dir()
}

/// The id of the fixture snapshot (a working set must carry it).
pub fn fixture_id() -> [u8; 32] {
    *fixture().snap.id()
}

/// A working-set file with a valid header around `counts_and_body` (see
/// [`FIX_HEADER`]).
pub fn ws_file(counts_and_body: &[u8]) -> Vec<u8> {
    let mut counts = [0u64; 3];
    let mut rest = counts_and_body;
    for c in &mut counts {
        let (head, tail) = rest.split_at(rest.len().min(8));
        let mut b = [0u8; 8];
        b[..head.len()].copy_from_slice(head);
        *c = u64::from_le_bytes(b);
        rest = tail;
    }
    let [runs, recorded, data] = counts;
    let mut body = rest.to_vec();
    // The length the counts imply, if it is small enough to build.
    let table = runs
        .checked_mul(16)
        .and_then(|r| recorded.checked_mul(8)?.checked_add(r))
        .and_then(|b| b.div_ceil(PAGE_SIZE).checked_mul(PAGE_SIZE));
    if let Some(len) = table.and_then(|t| data.checked_mul(PAGE_SIZE)?.checked_add(t)) {
        if len <= 1 << 20 {
            body.resize(len as usize, 0);
        }
    }
    let mut out = vec![0u8; PAGE];
    out[..8].copy_from_slice(b"THAWWSET");
    out[8..12].copy_from_slice(&WS_VERSION.to_le_bytes());
    out[16..48].copy_from_slice(&fixture_id());
    out[48..56].copy_from_slice(&runs.to_le_bytes());
    out[56..64].copy_from_slice(&recorded.to_le_bytes());
    out[64..72].copy_from_slice(&data.to_le_bytes());
    out[72..104].copy_from_slice(blake3::hash(&body).as_bytes());
    out.extend_from_slice(&body);
    out
}

/// Opens a working set of the fixture snapshot. `data` is a flags byte
/// ([`FIX_HEADER`], [`RECORD`]) and the file (or what the flags build it
/// from). A working set that opens hands out only bytes inside itself, and
/// one the writer wrote holds exactly the snapshot's pages.
pub fn working_set(data: &[u8]) {
    let (flags, rest) = crate::flags(data);
    let f = fixture();
    if flags & RECORD != 0 {
        let recorded: Vec<u64> = rest
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        workingset::write(&f.snap, &recorded, &f.ws_path).expect("a recorded working set writes");
        let ws = WorkingSet::open(&f.ws_path, &f.snap).expect("a written working set opens");
        for r in ws.runs() {
            let bytes = ws.bytes(r);
            if r.data.is_none() {
                assert!(bytes.is_empty());
                continue;
            }
            for (i, p) in bytes.chunks(PAGE).enumerate() {
                assert_eq!(p, page(r.addr + i as u64 * PAGE_SIZE), "wrong page data");
            }
        }
        return;
    }
    let file = if flags & FIX_HEADER != 0 {
        ws_file(rest)
    } else {
        rest.to_vec()
    };
    std::fs::write(&f.ws_path, &file).expect("write the working set");
    let Ok(ws) = WorkingSet::open(&f.ws_path, &f.snap) else {
        return;
    };
    let mut total = 0u64;
    for r in ws.runs() {
        let bytes = ws.bytes(r);
        assert!(bytes.is_empty() || bytes.len() as u64 == r.pages * PAGE_SIZE);
        total += bytes.len() as u64;
        for addr in [r.addr, r.addr + PAGE_SIZE - 1, r.addr.wrapping_sub(1)] {
            if let Some(p) = ws.direct_page(addr) {
                assert_eq!(p.len(), PAGE);
            }
        }
    }
    assert_eq!(total, ws.summary().data_pages * PAGE_SIZE);
    assert_eq!(ws.order().len() as u64, {
        let le = |o: usize| u64::from_le_bytes(file[o..o + 8].try_into().unwrap_or_default());
        le(56)
    });
}
