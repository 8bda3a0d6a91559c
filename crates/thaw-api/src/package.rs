//! Packaging a function's code directory as a deployment zip, the way the
//! `zip` tool would: relative paths, unix permission bits (so a custom
//! runtime's `bootstrap` stays executable) and symbolic links kept.
//!
//! Owns: building the zip in memory. Entries are sorted and timestamped
//! 1980-01-01, so the same directory always gives the same bytes (and the
//! same `CodeSha256`). Must not: validate what the daemon will accept.

use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

/// Why a directory could not be packaged.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// Reading the directory tree failed.
    #[error("Cannot read {path}")]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A path is not valid UTF-8, which zip entry names must be.
    #[error("Path is not valid UTF-8: {0}")]
    NonUtf8Path(PathBuf),
    /// Writing the zip failed.
    #[error("Cannot build the zip")]
    Zip(#[source] zip::result::ZipError),
}

/// Zip the contents of `dir` (not `dir` itself) into memory.
pub fn zip_directory(dir: &Path) -> Result<Vec<u8>, PackageError> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    add_tree(&mut zip, dir, Path::new(""))?;
    let cursor = zip.finish().map_err(PackageError::Zip)?;
    Ok(cursor.into_inner())
}

fn options(mode: u32) -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(DateTime::default())
        .unix_permissions(mode & 0o777)
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |source| PackageError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn add_tree(
    zip: &mut ZipWriter<Cursor<Vec<u8>>>,
    root: &Path,
    rel: &Path,
) -> Result<(), PackageError> {
    let dir = root.join(rel);
    let mut entries = fs::read_dir(&dir)
        .map_err(read_err(&dir))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err(&dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let rel_path = rel.join(entry.file_name());
        let name = rel_path
            .to_str()
            .ok_or_else(|| PackageError::NonUtf8Path(path.clone()))?
            .to_string();
        let meta = fs::symlink_metadata(&path).map_err(read_err(&path))?;
        let mode = meta.permissions().mode();
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(read_err(&path))?;
            let target = target
                .to_str()
                .ok_or_else(|| PackageError::NonUtf8Path(path.clone()))?
                .to_string();
            zip.add_symlink(name, target, options(0o777))
                .map_err(PackageError::Zip)?;
        } else if meta.is_dir() {
            zip.add_directory(format!("{name}/"), options(mode))
                .map_err(PackageError::Zip)?;
            add_tree(zip, root, &rel_path)?;
        } else if meta.is_file() {
            let data = fs::read(&path).map_err(read_err(&path))?;
            zip.start_file(name, options(mode))
                .map_err(PackageError::Zip)?;
            zip.write_all(&data)
                .map_err(|e| PackageError::Zip(e.into()))?;
        }
        // Sockets, fifos and devices have no place in a deployment package.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn keeps_modes_links_and_is_deterministic() {
        let dir = std::env::temp_dir().join(format!("thaw-api-pkg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("lib")).unwrap();
        fs::write(dir.join("bootstrap"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(dir.join("bootstrap"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("lib/a.py"), "x = 1\n").unwrap();
        std::os::unix::fs::symlink("lib/a.py", dir.join("link.py")).unwrap();

        let one = zip_directory(&dir).unwrap();
        let two = zip_directory(&dir).unwrap();
        assert_eq!(one, two);

        let mut z = zip::ZipArchive::new(Cursor::new(one)).unwrap();
        let names: Vec<String> = z.file_names().map(String::from).collect();
        assert!(names.contains(&"lib/".to_string()) && names.contains(&"lib/a.py".to_string()));
        let boot = z.by_name("bootstrap").unwrap();
        assert_eq!(boot.unix_mode().unwrap() & 0o777, 0o755);
        drop(boot);
        let mut link = z.by_name("link.py").unwrap();
        assert!(link.is_symlink());
        let mut target = String::new();
        link.read_to_string(&mut target).unwrap();
        assert_eq!(target, "lib/a.py");
        drop(link);
        fs::remove_dir_all(&dir).unwrap();
    }
}
