//! Golden fixtures: a small local store (one blob's sealed manifest and
//! its compressed, encrypted chunk) committed under `tests/fixtures/`,
//! read by the current code. Fails if the chunk format, the manifest
//! format, the key derivation or the layout on disk changes in a way that
//! older stores can no longer be read.

use std::path::{Path, PathBuf};

use thaw_store::manifest::MANIFEST_VERSION;
use thaw_store::{BlobRef, Store, StoreConfig};

/// The master key the fixture store was written with.
const MASTER: [u8; 32] = [42; 32];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1")
}

/// The fixture blob's content: text, then a run, then counting bytes.
fn content() -> Vec<u8> {
    let mut v = b"thaw golden blob\n".to_vec();
    v.extend(std::iter::repeat_n(0u8, 3000));
    v.extend((0..5000u32).map(|i| (i % 251) as u8));
    v
}

fn blob() -> BlobRef {
    BlobRef {
        tenant: "golden".into(),
        name: "snapshots/hello/rev1/memory".into(),
        digest: blake3::hash(&content()).to_hex().to_string(),
        size: content().len() as u64,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[tokio::test]
async fn the_committed_store_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures(), dir.path());
    let store = Store::local(dir.path(), MASTER, StoreConfig::default()).unwrap();
    let m = store.manifest(&blob()).await.unwrap();
    assert_eq!(m.version, MANIFEST_VERSION);
    assert_eq!(m.size, content().len() as u64);
    assert_eq!(store.get(&blob()).await.unwrap(), content());
    let range = store.read_range(&m, 10, 20).await.unwrap();
    assert_eq!(range, content()[10..30]);
}

/// Writes the fixture store (run by hand with `--ignored` when a format
/// changes, into a new `store-vN` directory; never over a committed one).
#[tokio::test]
#[ignore]
async fn write_golden_store() {
    let out = fixtures();
    assert!(
        !out.exists(),
        "{} exists: never overwrite a golden store",
        out.display()
    );
    let store = Store::local(&out, MASTER, StoreConfig::default()).unwrap();
    let b = blob();
    store.put(&b.tenant, &b.name, &content()).await.unwrap();
}
