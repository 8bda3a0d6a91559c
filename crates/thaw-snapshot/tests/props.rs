//! Property tests of the snapshot's page maps, on synthetic snapshots (no
//! process, no root): the memory index ([`MemoryIndex`]: page address to
//! page of the memory image) with its encoding in the state file, and the
//! working-set file (page address to its page in the working set's data).
//!
//! Each case builds a random page layout, keeps a plain `BTreeMap` of page
//! address to image page as the reference, writes a snapshot whose every
//! page is tagged with its address, and checks the engine against the
//! reference. Decoding damaged or arbitrary files must fail with an error,
//! never panic, never hand out pages.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use thaw_snapshot::cpu::CpuFeatures;
use thaw_snapshot::image::{self, Snapshot, STATE_FILE};
use thaw_snapshot::state::{
    Clocks, Credentials, FileIdentity, MemoryIndex, MmLayout, PageRun, ProcessImage, SnapshotState,
    Vma, VmaKind, FORMAT_VERSION,
};
use thaw_snapshot::workingset::{self, WorkingSet, WsError, WORKING_SET_FILE};
use thaw_snapshot::PAGE_SIZE;

const PAGE: usize = PAGE_SIZE as usize;
/// Size of the state file's header (magic, version, reserved, length,
/// BLAKE3 of the body).
const STATE_HEADER: usize = 8 + 4 + 4 + 8 + 32;

/// The bytes the synthetic process held at page `addr`: the address, then
/// a pattern derived from it, so a page served from the wrong place shows.
fn page_bytes(addr: u64) -> Vec<u8> {
    let mut p = vec![0u8; PAGE];
    p[..8].copy_from_slice(&addr.to_le_bytes());
    let mut x = addr | 1;
    for b in &mut p[8..] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    p
}

/// A random page layout and everything derived from it.
#[derive(Debug, Clone)]
struct Layout {
    /// The lazily served anonymous mapping.
    anon: (u64, u64),
    /// A private file mapping after it, whose saved pages a restore copies
    /// in before the resume (`None`: no such mapping).
    file: Option<(u64, u64)>,
    index: MemoryIndex,
    /// The reference: page address to image page.
    model: BTreeMap<u64, u64>,
    /// The memory image's data pages.
    data: Vec<u8>,
}

/// Runs as (gap before, pages) in address order within a mapping that
/// starts at `start`; returns the runs' (addr, pages) and the mapping end.
fn place(start: u64, segs: &[(u64, u64)], tail: u64) -> (Vec<(u64, u64)>, u64) {
    let mut at = start;
    let mut out = Vec::new();
    for &(gap, pages) in segs {
        at += gap * PAGE_SIZE;
        out.push((at, pages));
        at += pages * PAGE_SIZE;
    }
    (out, at + tail * PAGE_SIZE)
}

fn layout() -> impl Strategy<Value = Layout> {
    (
        // Base page number: anywhere in the user half of the address space.
        1u64..(1 << 34),
        proptest::collection::vec((0u64..4, 1u64..12), 1..24),
        proptest::collection::vec((0u64..3, 1u64..5), 0..4),
        0u64..4,
        1u32..9,
        any::<u64>(),
    )
        .prop_map(|(base, anon_segs, file_segs, tail, chunk_pages, seed)| {
            let start = base * PAGE_SIZE;
            let (anon_runs, anon_end) = place(start, &anon_segs, tail);
            let (file_runs, file_end) = place(anon_end, &file_segs, tail);
            let file = (!file_runs.is_empty()).then_some((anon_end, file_end.max(anon_end + 1)));
            let runs: Vec<(u64, u64)> = anon_runs.into_iter().chain(file_runs).collect();
            // The image holds the runs in a shuffled order (the checkpoint
            // groups them; the index must not assume address order).
            let mut order: Vec<usize> = (0..runs.len()).collect();
            let mut x = seed | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut image_page = vec![0u64; runs.len()];
            let mut next = 0u64;
            let mut data = Vec::new();
            for &i in &order {
                image_page[i] = next;
                next += runs[i].1;
                for p in 0..runs[i].1 {
                    data.extend_from_slice(&page_bytes(runs[i].0 + p * PAGE_SIZE));
                }
            }
            let mut model = BTreeMap::new();
            let page_runs: Vec<PageRun> = runs
                .iter()
                .zip(&image_page)
                .map(|(&(addr, pages), &image_page)| {
                    for p in 0..pages {
                        model.insert(addr + p * PAGE_SIZE, image_page + p);
                    }
                    PageRun {
                        addr,
                        pages,
                        image_page,
                    }
                })
                .collect();
            let chunk_hashes = data
                .chunks(chunk_pages as usize * PAGE)
                .map(|c| blake3::hash(c).to_hex().to_string())
                .collect();
            Layout {
                anon: (start, anon_end),
                file,
                index: MemoryIndex {
                    data_pages: next,
                    zero_pages: 0,
                    runs: page_runs,
                    chunk_pages,
                    chunk_hashes,
                },
                model,
                data,
            }
        })
}

/// A state around `layout`'s memory: one process, no threads, no
/// descriptors, the two mappings.
fn state(layout: &Layout) -> SnapshotState {
    let mut mappings = vec![Vma {
        start: layout.anon.0,
        end: layout.anon.1,
        prot: 3,
        shared: false,
        kind: VmaKind::Anonymous,
    }];
    if let Some((start, end)) = layout.file {
        mappings.push(Vma {
            start,
            end,
            prot: 3,
            shared: false,
            kind: VmaKind::File {
                path: "/lib/libfake.so".into(),
                offset: 0,
                identity: FileIdentity {
                    dev: 1,
                    ino: 2,
                    size: 3,
                    mtime_ns: 4,
                },
            },
        });
    }
    SnapshotState {
        format_version: FORMAT_VERSION,
        created_unix_ms: 0,
        kernel_release: "props".into(),
        cpu: CpuFeatures::host().expect("host CPU features"),
        vdso_hash: String::new(),
        process: ProcessImage {
            pid: 2,
            comm: "props".into(),
            exe: "/bin/props".into(),
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
            mappings,
            threads: vec![],
            fds: vec![],
        },
        memory: layout.index.clone(),
        clocks: Clocks::default(),
    }
}

/// Writes `layout` as a snapshot into a new directory.
fn write_snapshot(layout: &Layout) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    image::write(dir.path(), &state(layout), &layout.data).expect("write snapshot");
    dir
}

/// Addresses worth asking about: every page of the layout's span and one
/// past each side, at page starts, page ends and inside pages, plus the
/// extremes of the address space.
fn probes(layout: &Layout, extra: &[u64]) -> Vec<u64> {
    let (lo, hi) = (
        layout.anon.0.saturating_sub(2 * PAGE_SIZE),
        layout.file.map_or(layout.anon.1, |f| f.1) + 2 * PAGE_SIZE,
    );
    (lo..hi)
        .step_by(PAGE)
        .flat_map(|p| [p, p + 1, p + PAGE_SIZE / 2, p + PAGE_SIZE - 1])
        .chain([0, 1, u64::MAX, u64::MAX - PAGE_SIZE])
        .chain(extra.iter().copied())
        .collect()
}

/// Checks [`MemoryIndex::run_at`] against the reference at `addr`.
fn check_lookup(
    index: &MemoryIndex,
    model: &BTreeMap<u64, u64>,
    addr: u64,
) -> Result<(), TestCaseError> {
    let want = model.get(&(addr & !(PAGE_SIZE - 1)));
    let got = index
        .run_at(addr)
        .map(|r| r.image_page + (addr - r.addr) / PAGE_SIZE);
    prop_assert_eq!(got, want.copied(), "run_at({:#x})", addr);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// `run_at` finds exactly the saved pages, and the image page it
    /// implies for an address is the reference's, for addresses all over
    /// the layout (page starts, inside pages, gaps, both ends) and random
    /// ones.
    #[test]
    fn page_index_lookups_match_the_model(layout in layout(), extra in proptest::collection::vec(any::<u64>(), 0..32)) {
        for addr in probes(&layout, &extra) {
            check_lookup(&layout.index, &layout.model, addr)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A written snapshot reads back: the state (with its index) decodes to
    /// what was encoded, the snapshot opens and verifies, and the page the
    /// index names for every saved address holds that address's bytes.
    #[test]
    fn snapshot_round_trips_and_serves_the_right_pages(layout in layout()) {
        let dir = write_snapshot(&layout);
        let read = image::read_state(&dir.path().join(STATE_FILE)).expect("read state");
        prop_assert_eq!(&read, &state(&layout));
        let snap = Snapshot::open(dir.path()).expect("open");
        snap.verify().expect("verify");
        let pages = snap.read_all_pages().expect("pages");
        prop_assert_eq!(pages.len() as u64, layout.index.data_pages * PAGE_SIZE);
        let idx = &snap.state().memory;
        for &addr in layout.model.keys() {
            let r = idx.run_at(addr).expect("saved page is indexed");
            let img = (r.image_page + (addr - r.addr) / PAGE_SIZE) as usize;
            prop_assert!(pages[img * PAGE..(img + 1) * PAGE] == page_bytes(addr)[..], "page {:#x}", addr);
            // The same page through its integrity chunk.
            let chunk = snap.read_chunk(img / idx.chunk_pages as usize).expect("chunk");
            let off = (img % idx.chunk_pages as usize) * PAGE;
            prop_assert!(chunk[off..off + PAGE] == page_bytes(addr)[..]);
        }
    }

    /// Flipping any bit of the state file is refused, except in the
    /// reserved header word (bytes 12..16), which nothing reads: there the
    /// state decodes unchanged. Truncating it anywhere is refused.
    #[test]
    fn damaged_state_file_is_refused(
        layout in layout(),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
        cut in any::<prop::sample::Index>(),
    ) {
        let dir = write_snapshot(&layout);
        let path = dir.path().join(STATE_FILE);
        let good = std::fs::read(&path).expect("read");
        let i = pos.index(good.len());
        let mut bad = good.clone();
        bad[i] ^= 1 << bit;
        std::fs::write(&path, &bad).expect("write");
        let r = image::read_state(&path);
        if (12..16).contains(&i) {
            prop_assert_eq!(r.expect("reserved bits are ignored"), state(&layout));
        } else {
            prop_assert!(r.is_err(), "bit {} of byte {} flipped, still read", bit, i);
            prop_assert!(Snapshot::open(dir.path()).is_err());
        }
        std::fs::write(&path, &good[..cut.index(good.len())]).expect("write");
        prop_assert!(image::read_state(&path).is_err());
    }

    /// Arbitrary bytes, with a well-formed header (right magic, version,
    /// length and checksum) or none, never decode as a state and never
    /// panic.
    #[test]
    fn arbitrary_state_bytes_are_refused(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        framed in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STATE_FILE);
        let bytes = if framed { frame_state(&body) } else { body };
        std::fs::write(&path, bytes).expect("write");
        prop_assert!(image::read_state(&path).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A state whose page index was rewritten with arbitrary values (and a
    /// correct checksum: the checksum detects accidents, not forgery) is
    /// either refused when the snapshot is opened or, if accepted, is a
    /// consistent index: runs in address order, not overlapping, covering
    /// the image's pages exactly once, one hash per chunk. Opening never
    /// panics.
    #[test]
    fn forged_page_index_is_refused_or_consistent(
        layout in layout(),
        mode in 0u8..6,
        runs in proptest::collection::vec((wild_u64(), wild_u64(), wild_u64()), 0..6),
        which in any::<prop::sample::Index>(),
        field in 0u8..3,
        delta in -2i64..=2,
        data_pages in prop_oneof![3 => Just(None), 1 => wild_u64().prop_map(Some)],
        chunk_pages in prop_oneof![6 => Just(None), 1 => Just(Some(0u32)), 1 => (1u32..9).prop_map(Some), 1 => Just(Some(u32::MAX))],
        hashes in prop_oneof![3 => Just(None), 1 => (0usize..4).prop_map(Some)],
    ) {
        let mut st = state(&layout);
        let idx = &mut st.memory;
        let i = which.index(idx.runs.len());
        match mode {
            // Arbitrary runs.
            0 => idx.runs = runs.iter().map(|&(addr, pages, image_page)| PageRun { addr, pages, image_page }).collect(),
            // One field of one run off by a little (pages overlapping,
            // missing or indexed twice, runs out of order).
            1..=3 => {
                let r = &mut idx.runs[i];
                let f = match field {
                    0 => &mut r.addr,
                    1 => &mut r.pages,
                    _ => &mut r.image_page,
                };
                let step = if field == 0 { PAGE_SIZE as i64 } else { 1 };
                *f = f.wrapping_add_signed(delta * step);
            }
            // A run listed twice.
            4 => {
                let r = idx.runs[i];
                idx.runs.insert(i, r);
            }
            // Runs as they were.
            _ => {}
        }
        if let Some(n) = data_pages {
            idx.data_pages = n;
        }
        if let Some(n) = chunk_pages {
            idx.chunk_pages = n;
        }
        if let Some(n) = hashes {
            idx.chunk_hashes.truncate(n);
        }
        check_forged_index(&st)?;
    }
}

/// Values that reach the edges of `u64` arithmetic as well as small ones.
fn wild_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..64,
        (0u64..64).prop_map(|p| p * PAGE_SIZE),
        Just(u64::MAX),
        Just(u64::MAX / PAGE_SIZE),
        Just(u64::MAX / PAGE_SIZE + 1),
        Just(u64::MAX - PAGE_SIZE + 1),
        any::<u64>(),
    ]
}

/// `body` behind a well-formed state header.
fn frame_state(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(STATE_HEADER + body.len());
    f.extend_from_slice(b"THAWSTAT");
    f.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&(body.len() as u64).to_le_bytes());
    f.extend_from_slice(blake3::hash(body).as_bytes());
    f.extend_from_slice(body);
    f
}

/// Writes `st` with a memory image of the size its index claims (when that
/// is small enough to write) and checks that opening it refuses it or
/// yields a consistent index.
fn check_forged_index(st: &SnapshotState) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let idx = &st.memory;
    let pages = if idx.data_pages <= 512 {
        idx.data_pages
    } else {
        3
    };
    image::write(dir.path(), st, &vec![0u8; pages as usize * PAGE]).expect("write");
    let opened = std::panic::catch_unwind(|| Snapshot::open(dir.path()).map(|s| s.state().clone()));
    let opened = match opened {
        Ok(r) => r,
        Err(_) => {
            return Err(TestCaseError::fail(format!(
                "Snapshot::open panicked on the index {idx:?}"
            )))
        }
    };
    let Ok(got) = opened else {
        return Ok(());
    };
    let idx = &got.memory;
    prop_assert!(idx.chunk_pages > 0);
    let mut last_end = 0u64;
    let mut covered = BTreeSet::new();
    for r in &idx.runs {
        prop_assert!(r.pages > 0 && r.addr % PAGE_SIZE == 0 && r.addr >= last_end);
        let end = r
            .pages
            .checked_mul(PAGE_SIZE)
            .and_then(|b| r.addr.checked_add(b));
        prop_assert!(end.is_some(), "run {:?} wraps around", r);
        last_end = end.unwrap_or(0);
        for p in 0..r.pages.min(1 << 20) {
            prop_assert!(
                covered.insert(r.image_page + p),
                "image page {} indexed twice",
                r.image_page + p
            );
        }
    }
    prop_assert_eq!(covered.len() as u64, idx.data_pages);
    prop_assert!(covered.iter().copied().eq(0..idx.data_pages));
    prop_assert_eq!(
        idx.chunk_hashes.len() as u64,
        idx.data_pages.div_ceil(u64::from(idx.chunk_pages))
    );
    Ok(())
}

/// Page addresses a restore might record: pages of the anonymous mapping
/// (saved or not), of the file mapping, outside both, unaligned, repeated.
fn recorded(layout: &Layout, picks: &[(u8, u64, u64)]) -> Vec<u64> {
    let span = |(s, e): (u64, u64)| (e - s) / PAGE_SIZE;
    picks
        .iter()
        .map(|&(kind, n, off)| match kind {
            0..=5 => {
                layout.anon.0
                    + (n % span(layout.anon)) * PAGE_SIZE
                    + off % PAGE_SIZE * u64::from(kind == 5)
            }
            6 => layout
                .file
                .map_or(1, |f| f.0 + (n % span(f).max(1)) * PAGE_SIZE),
            7 => layout.anon.0.wrapping_sub((n % 4 + 1) * PAGE_SIZE),
            _ => n,
        })
        .collect()
}

/// The working-set reference: the recorded pages a lazy restore serves,
/// page-aligned, first occurrence only, in fault order.
fn expected_order(layout: &Layout, rec: &[u64]) -> Vec<u64> {
    let mut seen = BTreeSet::new();
    rec.iter()
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| (layout.anon.0..layout.anon.1).contains(a))
        .filter(|a| seen.insert(*a))
        .collect()
}

/// The pages a restore copies in before the resume: the saved pages of the
/// file mapping.
fn direct_pages(layout: &Layout) -> BTreeSet<u64> {
    match layout.file {
        Some((s, e)) => layout
            .model
            .keys()
            .copied()
            .filter(|a| (s..e).contains(a))
            .collect(),
        None => BTreeSet::new(),
    }
}

fn write_ws(layout: &Layout, rec: &[u64]) -> (tempfile::TempDir, Snapshot, PathBuf) {
    let dir = write_snapshot(layout);
    let snap = Snapshot::open(dir.path()).expect("open");
    let path = dir.path().join(WORKING_SET_FILE);
    workingset::write(&snap, rec, &path).expect("write working set");
    (dir, snap, path)
}

fn recorded_picks() -> impl Strategy<Value = Vec<(u8, u64, u64)>> {
    proptest::collection::vec((0u8..9, any::<u64>(), any::<u64>()), 0..64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A written working set opens to the reference: the recorded order
    /// (deduplicated, aligned, filtered to lazily served pages), runs in
    /// address order covering exactly the recorded pages plus the pages
    /// copied in before the resume, zero runs exactly for pages the
    /// snapshot did not save, and each page's bytes those of its address.
    #[test]
    fn working_set_round_trips(layout in layout(), picks in recorded_picks()) {
        let rec = recorded(&layout, &picks);
        let (_dir, snap, path) = write_ws(&layout, &rec);
        let ws = WorkingSet::open(&path, &snap).expect("open working set");
        let order = expected_order(&layout, &rec);
        prop_assert_eq!(ws.order(), &order[..]);
        let direct = direct_pages(&layout);
        let want: BTreeSet<u64> = order.iter().copied().chain(direct.iter().copied()).collect();
        let mut got = Vec::new();
        let mut last_end = 0;
        for run in ws.runs() {
            prop_assert!(run.addr >= last_end && run.pages > 0, "{:?}", run);
            last_end = run.addr + run.pages * PAGE_SIZE;
            let bytes = ws.bytes(run);
            for p in 0..run.pages {
                let a = run.addr + p * PAGE_SIZE;
                got.push(a);
                prop_assert_eq!(run.direct, direct.contains(&a), "page {:#x}", a);
                let saved = layout.model.contains_key(&a);
                prop_assert_eq!(run.data.is_some(), saved, "page {:#x}", a);
                if saved {
                    let at = (p * PAGE_SIZE) as usize;
                    prop_assert!(bytes[at..at + PAGE] == page_bytes(a)[..], "bytes of page {:#x}", a);
                } else {
                    prop_assert!(bytes.is_empty());
                }
                let dp = ws.direct_page(a);
                prop_assert_eq!(dp.is_some(), run.direct);
                if let Some(dp) = dp {
                    prop_assert!(dp == &page_bytes(a)[..]);
                }
                // Any address inside the page finds the same page.
                prop_assert_eq!(ws.direct_page(a + PAGE_SIZE - 1), dp);
            }
        }
        prop_assert!(got.iter().copied().eq(want.iter().copied()), "runs cover {:x?}, want {:x?}", got, want);
        let s = ws.summary();
        prop_assert_eq!(s.pages, order.len() as u64);
        prop_assert_eq!(s.direct_pages, direct.len() as u64);
        prop_assert_eq!(s.runs, ws.runs().len() as u64);
        prop_assert_eq!(
            s.data_pages,
            want.iter().filter(|a| layout.model.contains_key(a)).count() as u64
        );
        // Pages a restore would not find in the working set.
        for a in probes(&layout, &[]) {
            if !direct.contains(&(a & !(PAGE_SIZE - 1))) {
                prop_assert!(ws.direct_page(a).is_none(), "direct_page({:#x})", a);
            }
        }
    }

    /// Flipping any bit of a working-set file is refused, except in the
    /// parts nothing reads (the reserved word at 12..16 and the header's
    /// zero padding after byte 104), where the file opens unchanged.
    /// Truncating or extending it is refused.
    #[test]
    fn damaged_working_set_is_refused(
        layout in layout(),
        picks in recorded_picks(),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
        cut in any::<prop::sample::Index>(),
    ) {
        let rec = recorded(&layout, &picks);
        let (_dir, snap, path) = write_ws(&layout, &rec);
        let good = std::fs::read(&path).expect("read");
        let clean = WorkingSet::open(&path, &snap).expect("open");
        let i = pos.index(good.len());
        let mut bad = good.clone();
        bad[i] ^= 1 << bit;
        std::fs::write(&path, &bad).expect("write");
        let r = WorkingSet::open(&path, &snap);
        if (12..16).contains(&i) || (104..PAGE).contains(&i) {
            let ws = r.expect("unread bytes are ignored");
            prop_assert_eq!(ws.runs(), clean.runs());
            prop_assert_eq!(ws.order(), clean.order());
        } else {
            prop_assert!(r.is_err(), "bit {} of byte {} flipped, still opened", bit, i);
        }
        std::fs::write(&path, &good[..cut.index(good.len())]).expect("write");
        prop_assert!(WorkingSet::open(&path, &snap).is_err());
        std::fs::write(&path, [good.as_slice(), &[0u8; 8]].concat()).expect("write");
        prop_assert!(WorkingSet::open(&path, &snap).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A working set forged with a correct header (magic, version, this
    /// snapshot's id, counts, checksum) but arbitrary runs and order never
    /// panics: it is refused, or every run it hands out is inside the
    /// lazily served mapping or among the pages copied before the resume,
    /// in address order, with its bytes inside the file.
    #[test]
    fn forged_working_set_is_refused_or_safe(
        layout in layout(),
        runs in proptest::collection::vec((wild_addr(), prop_oneof![6 => 1u32..4, 1 => 0u32..8, 1 => Just(u32::MAX)], 0u32..8, prop::bool::weighted(0.2)), 0..5),
        sorted in any::<bool>(),
        order in proptest::collection::vec(any::<u64>(), 0..8),
        data_pages in 0u64..8,
        raw in any::<bool>(),
    ) {
        let dir = write_snapshot(&layout);
        let snap = Snapshot::open(dir.path()).expect("open");
        let path = dir.path().join(WORKING_SET_FILE);
        let mut runs: Vec<(u64, u32, u32)> = runs
            .into_iter()
            .map(|(addr, pages, flags, free)| {
                // Mostly the flags a writer would give such a page (zero or
                // data in the lazily served memory, direct in the file
                // mapping), so that some forgeries get past the checks.
                let flags = match addr {
                    _ if free => flags,
                    WildAddr::Anon(_) | WildAddr::AnonEnd(_) => flags & 1,
                    WildAddr::File(_) => 2,
                    WildAddr::Raw(_) => flags,
                };
                (addr.resolve(&layout), pages, flags)
            })
            .collect();
        if sorted {
            runs.sort_unstable();
        }
        std::fs::write(&path, forge_ws(snap.id(), &runs, &order, data_pages, raw)).expect("write");
        let ws = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| WorkingSet::open(&path, &snap))) {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                prop_assert!(matches!(e, WsError::Corrupt { .. } | WsError::Format { .. }), "{:?}", e);
                return Ok(());
            }
            Err(_) => return Err(TestCaseError::fail("WorkingSet::open panicked")),
        };
        let direct = direct_pages(&layout);
        let mut last_end = 0;
        for run in ws.runs() {
            let end = run.addr + run.pages * PAGE_SIZE;
            prop_assert!(run.addr >= last_end && run.pages > 0);
            last_end = end;
            if run.direct {
                prop_assert!((0..run.pages).all(|p| direct.contains(&(run.addr + p * PAGE_SIZE))));
            } else {
                prop_assert!(layout.anon.0 <= run.addr && end <= layout.anon.1, "{:?}", run);
            }
            prop_assert_eq!(ws.bytes(run).len() as u64, if run.data.is_some() { run.pages * PAGE_SIZE } else { 0 });
        }
        prop_assert_eq!(ws.order(), &order[..]);
    }
}

/// A run address for a forged working set: in the anonymous mapping, in
/// the file mapping, or anywhere.
#[derive(Debug, Clone, Copy)]
enum WildAddr {
    Anon(u64),
    /// `n` pages before the end of the anonymous mapping (runs that end
    /// at, or just past, its end).
    AnonEnd(u64),
    File(u64),
    Raw(u64),
}

impl WildAddr {
    fn resolve(self, layout: &Layout) -> u64 {
        match self {
            WildAddr::Anon(n) => {
                layout.anon.0 + n % ((layout.anon.1 - layout.anon.0) / PAGE_SIZE) * PAGE_SIZE
            }
            WildAddr::AnonEnd(n) => layout
                .anon
                .1
                .saturating_sub(n * PAGE_SIZE)
                .max(layout.anon.0),
            WildAddr::File(n) => layout
                .file
                .map_or(n, |(s, e)| s + n % ((e - s) / PAGE_SIZE).max(1) * PAGE_SIZE),
            WildAddr::Raw(a) => a,
        }
    }
}

fn wild_addr() -> impl Strategy<Value = WildAddr> {
    prop_oneof![
        3 => any::<u64>().prop_map(WildAddr::Anon),
        1 => (1u64..4).prop_map(WildAddr::AnonEnd),
        1 => any::<u64>().prop_map(WildAddr::File),
        1 => wild_u64().prop_map(WildAddr::Raw),
    ]
}

/// A working-set file with a valid header for `id` and the given body;
/// `raw` makes the data section as long as `data_pages` says instead of
/// as long as the runs need.
fn forge_ws(
    id: &[u8; 32],
    runs: &[(u64, u32, u32)],
    order: &[u64],
    data_pages: u64,
    raw: bool,
) -> Vec<u8> {
    let ndata = if raw {
        data_pages
    } else {
        runs.iter()
            .filter(|r| r.2 & 1 == 0)
            .map(|r| u64::from(r.1))
            .try_fold(0u64, u64::checked_add)
            .filter(|&n| n <= 64)
            .unwrap_or(data_pages)
    };
    let mut body = Vec::new();
    for &(addr, pages, flags) in runs {
        body.extend_from_slice(&addr.to_le_bytes());
        body.extend_from_slice(&pages.to_le_bytes());
        body.extend_from_slice(&flags.to_le_bytes());
    }
    for a in order {
        body.extend_from_slice(&a.to_le_bytes());
    }
    body.resize(body.len().div_ceil(PAGE) * PAGE, 0);
    body.resize(body.len() + ndata as usize * PAGE, 0x5a);
    let mut header = vec![0u8; PAGE];
    header[..8].copy_from_slice(b"THAWWSET");
    header[8..12].copy_from_slice(&workingset::WS_VERSION.to_le_bytes());
    header[16..48].copy_from_slice(id);
    header[48..56].copy_from_slice(&(runs.len() as u64).to_le_bytes());
    header[56..64].copy_from_slice(&(order.len() as u64).to_le_bytes());
    header[64..72].copy_from_slice(&ndata.to_le_bytes());
    header[72..104].copy_from_slice(blake3::hash(&body).as_bytes());
    [header, body].concat()
}

/// Regression: a state (with a correct checksum) whose index claims more
/// pages than a `u64` of bytes can hold made `Snapshot::open` overflow
/// computing the memory image's size (a panic in debug builds; in release
/// builds the size wrapped and a small image could pass the length check).
#[test]
fn huge_page_count_is_refused() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let layout = layout().new_tree(&mut runner).expect("layout").current();
    for data_pages in [u64::MAX, u64::MAX / PAGE_SIZE, (1 << 52) + 1] {
        let mut st = state(&layout);
        st.memory.data_pages = data_pages;
        let dir = tempfile::tempdir().expect("tempdir");
        image::write(dir.path(), &st, &vec![0u8; 2 * PAGE]).expect("write");
        assert!(Snapshot::open(dir.path()).is_err(), "{data_pages} pages");
    }
}

/// Regression: a page run whose end lies beyond the address space (or
/// whose page counts add up past `u64::MAX`) made the index check
/// overflow instead of refusing the index.
#[test]
fn wrapping_page_runs_are_refused() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let layout = layout().new_tree(&mut runner).expect("layout").current();
    let cases = [
        // Ends past the address space.
        vec![PageRun {
            addr: u64::MAX - PAGE_SIZE + 1,
            pages: 2,
            image_page: 0,
        }],
        // Page count whose byte size overflows.
        vec![PageRun {
            addr: 0,
            pages: u64::MAX / PAGE_SIZE + 1,
            image_page: 0,
        }],
        // Image pages adding up past u64::MAX.
        vec![
            PageRun {
                addr: 0,
                pages: 1,
                image_page: 0,
            },
            PageRun {
                addr: PAGE_SIZE,
                pages: u64::MAX,
                image_page: 1,
            },
        ],
    ];
    for runs in cases {
        let mut st = state(&layout);
        st.memory.runs = runs.clone();
        let dir = tempfile::tempdir().expect("tempdir");
        image::write(dir.path(), &st, &layout.data).expect("write");
        assert!(Snapshot::open(dir.path()).is_err(), "{runs:?}");
    }
}
