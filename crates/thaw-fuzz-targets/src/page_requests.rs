//! Page requests (`thaw-runtime`'s page socket, served by `thawd` from
//! `thaw-store`): the byte ranges a restoring sandbox asks the daemon for.
//! The sandbox is on the other end of the socket, so every request is
//! untrusted; the daemon answers each with `Store::read_range` over the
//! snapshot's authenticated manifest.

use std::sync::OnceLock;

use thaw_runtime::control::pages;
use thaw_store::{Chunking, Manifest, Store, StoreConfig};

struct Fixture {
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    store: Store,
    manifest: Manifest,
    blob: Vec<u8>,
}

/// Size of the fixture blob: not a multiple of its chunks.
pub const BLOB_BYTES: usize = 50_000;

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = crate::tempdir();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let config = StoreConfig {
            chunking: Chunking::Fixed { size: 6000 },
            ..StoreConfig::default()
        };
        let store = Store::local(dir.path(), [4; 32], config).expect("a local store");
        let blob: Vec<u8> = (0..BLOB_BYTES).map(|i| (i * 7 % 251) as u8).collect();
        let manifest = runtime.block_on(async {
            let put = store.put("fuzz", "memory", &blob).await.expect("put");
            store.manifest(&put.blob).await.expect("its manifest")
        });
        Fixture {
            _dir: dir,
            runtime,
            store,
            manifest,
            blob,
        }
    })
}

/// Reads `data` as a sequence of 12-byte page requests (at most 32) and
/// answers each as the daemon does: the image's length for
/// [`pages::LENGTH`], a refusal above [`pages::MAX_REQUEST`], else the
/// range from the store. A range inside the blob must come back exact,
/// one outside it must be refused; the answer must read back as the
/// supervisor reads it.
pub fn page_requests(data: &[u8]) {
    let f = fixture();
    for req in data.chunks_exact(12).take(32) {
        let mut b = [0u8; 12];
        b.copy_from_slice(req);
        let (offset, len) = pages::parse_request(&b);
        if offset == pages::LENGTH || len > pages::MAX_REQUEST {
            continue;
        }
        let got = f
            .runtime
            .block_on(f.store.read_range(&f.manifest, offset, len as usize));
        let inside = offset
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= BLOB_BYTES as u64);
        match got {
            Ok(bytes) => {
                assert!(inside, "a range outside the blob was served");
                let at = offset as usize;
                assert_eq!(bytes, &f.blob[at..at + len as usize], "wrong bytes served");
                let answer = pages::answer(Ok(&bytes));
                let mut back = vec![0u8; bytes.len()];
                pages::read_answer(&mut std::io::Cursor::new(answer), &mut back)
                    .expect("an answer reads back");
                assert_eq!(back, bytes);
            }
            Err(e) => assert!(!inside, "a range inside the blob was refused: {e}"),
        }
    }
}
