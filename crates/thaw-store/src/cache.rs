//! The store's upper tiers: a bounded in-memory cache of verified chunk
//! plaintext and a bounded local-disk cache of sealed chunks.
//!
//! Owns: keeping recently used chunks close, within a byte budget, evicting
//! the least recently used first. The disk cache holds chunks sealed
//! (encrypted, as in the object store), written to a temporary file and
//! renamed, readable by root only; whatever it returns is checked again by
//! the caller, so a damaged cache file is a miss, never bad data.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Least-recently-used bookkeeping within a byte budget.
#[derive(Debug, Default)]
struct Lru {
    tick: u64,
    /// id -> (size, last use)
    entries: HashMap<String, (u64, u64)>,
    /// last use -> id
    order: BTreeMap<u64, String>,
    bytes: u64,
}

impl Lru {
    fn touch(&mut self, id: &str) -> bool {
        let Some(e) = self.entries.get_mut(id) else {
            return false;
        };
        self.order.remove(&e.1);
        self.tick += 1;
        e.1 = self.tick;
        self.order.insert(self.tick, id.to_string());
        true
    }

    /// Adds `id`; returns the ids to evict to stay within `budget`.
    fn insert(&mut self, id: &str, size: u64, budget: u64) -> Vec<String> {
        if self.touch(id) {
            return Vec::new();
        }
        self.tick += 1;
        self.entries.insert(id.to_string(), (size, self.tick));
        self.order.insert(self.tick, id.to_string());
        self.bytes += size;
        let mut evicted = Vec::new();
        while self.bytes > budget {
            let Some((&t, _)) = self.order.iter().next() else {
                break;
            };
            let Some(old) = self.order.remove(&t) else {
                break;
            };
            if let Some((s, _)) = self.entries.remove(&old) {
                self.bytes -= s;
            }
            evicted.push(old);
        }
        evicted
    }

    fn remove(&mut self, id: &str) {
        if let Some((s, t)) = self.entries.remove(id) {
            self.order.remove(&t);
            self.bytes -= s;
        }
    }
}

/// The chunks a [`MemoryCache`] holds, and their recency.
type Cached = (Lru, HashMap<String, Arc<Vec<u8>>>);

/// Verified chunk plaintext in memory, at most `budget` bytes.
#[derive(Debug)]
pub struct MemoryCache {
    budget: u64,
    inner: Mutex<Cached>,
}

impl MemoryCache {
    /// A cache of at most `budget` bytes.
    pub fn new(budget: u64) -> MemoryCache {
        MemoryCache {
            budget,
            inner: Mutex::new((Lru::default(), HashMap::new())),
        }
    }

    /// The chunk `id`, if cached.
    pub fn get(&self, id: &str) -> Option<Arc<Vec<u8>>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let hit = g.1.get(id).cloned();
        if hit.is_some() {
            g.0.touch(id);
        }
        hit
    }

    /// Caches the verified plaintext of chunk `id`.
    pub fn put(&self, id: &str, plain: Arc<Vec<u8>>) {
        if plain.len() as u64 > self.budget {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let evicted = g.0.insert(id, plain.len() as u64, self.budget);
        g.1.insert(id.to_string(), plain);
        for e in evicted {
            g.1.remove(&e);
        }
    }

    /// Bytes cached.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0.bytes
    }

    /// Drops every cached chunk.
    pub fn clear(&self) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = (Lru::default(), HashMap::new());
    }
}

/// Sealed chunks in a local directory, at most `budget` bytes.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    budget: u64,
    lru: Mutex<Lru>,
}

impl DiskCache {
    /// Opens (creating, mode 0700) the cache in `dir`; chunks already there
    /// count against `budget`, oldest modification first.
    pub fn open(dir: &Path, budget: u64) -> std::io::Result<DiskCache> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let m = e.metadata()?;
            found.push((m.modified().ok(), name, m.len()));
        }
        found.sort();
        let cache = DiskCache {
            dir: dir.to_owned(),
            budget,
            lru: Mutex::new(Lru::default()),
        };
        for (_, name, len) in found {
            let evicted = cache.lock().insert(&name, len, budget);
            cache.remove_files(&evicted);
        }
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn remove_files(&self, ids: &[String]) {
        for id in ids {
            let _ = std::fs::remove_file(self.path(id));
        }
    }

    /// The sealed chunk `id`, if cached (unchecked: the caller opens it).
    pub fn get(&self, id: &str) -> std::io::Result<Option<Vec<u8>>> {
        if !self.lock().touch(id) {
            return Ok(None);
        }
        match std::fs::read(self.path(id)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.lock().remove(id);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Caches the sealed chunk `id`.
    pub fn put(&self, id: &str, sealed: &[u8]) -> std::io::Result<()> {
        // Durable, and a temporary file of its own: two tasks caching the
        // same chunk never write into one file.
        thaw_persist::write(&self.path(id), sealed, 0o600)?;
        let evicted = self.lock().insert(id, sealed.len() as u64, self.budget);
        self.remove_files(&evicted);
        Ok(())
    }

    /// Forgets chunk `id` (it failed verification).
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
        let _ = std::fs::remove_file(self.path(id));
    }

    /// Bytes cached.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_stay_within_budget_evicting_least_recently_used() {
        let m = MemoryCache::new(250);
        m.put("a", Arc::new(vec![0; 100]));
        m.put("b", Arc::new(vec![0; 100]));
        assert!(m.get("a").is_some());
        m.put("c", Arc::new(vec![0; 100]));
        assert!(m.get("b").is_none(), "b was least recently used");
        assert!(m.get("a").is_some() && m.get("c").is_some());
        assert_eq!(m.bytes(), 200);

        let dir = tempfile::tempdir().unwrap();
        let d = DiskCache::open(dir.path(), 250).unwrap();
        d.put("a", &[1; 100]).unwrap();
        d.put("b", &[2; 100]).unwrap();
        assert_eq!(d.get("a").unwrap().unwrap(), vec![1; 100]);
        d.put("c", &[3; 100]).unwrap();
        assert!(d.get("b").unwrap().is_none());
        assert!(!dir.path().join("b").exists(), "evicted from disk too");
        drop(d);
        let d = DiskCache::open(dir.path(), 150).unwrap();
        assert_eq!(d.bytes(), 100, "reopened within the new budget");
    }
}
