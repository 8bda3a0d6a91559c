//! Function code zips (`thawd`'s registry): what `CreateFunction` and
//! `UpdateFunctionCode` unpack into a function's code directory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use thawd::registry::Registry;

struct Fixture {
    /// Kept for the life of the process: the registry's data directory.
    _dir: tempfile::TempDir,
    data: PathBuf,
    registry: Registry,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = crate::tempdir();
        let data = dir.path().join("data");
        let registry = Registry::open(&data).expect("an empty registry opens");
        Fixture {
            _dir: dir,
            data,
            registry,
        }
    })
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Checks `data` as a code zip with `Registry::check_code` (which unpacks
/// it into a staging directory under the registry, with every limit the
/// registry enforces, and removes it). Afterwards nothing may be left
/// behind: no staging directory, and nothing new beside the registry (an
/// entry that escaped the staging directory would show there).
pub fn zip_package(data: &[u8]) {
    let f = fixture();
    let before = entries(&f.data);
    let _ = f.registry.check_code(data);
    assert_eq!(
        entries(&f.data),
        before,
        "checking a zip changed the data directory"
    );
    let functions = f.data.join("functions");
    assert!(
        entries(&functions).is_empty(),
        "checking a zip left files in {}",
        functions.display()
    );
}
