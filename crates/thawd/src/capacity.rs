//! Host memory admission: a new instance is made only if the host can hold
//! it. Lambda never lets one function starve the host; neither do we: when
//! the memory the kernel says is available (`MemAvailable`, page cache it
//! can drop included) minus a reserve for the daemon and the system is
//! below what a new instance may use, the instance is not made and the
//! request waits for a busy one or is refused with 429
//! (`TooManyRequestsException`), instead of letting the host run out of
//! memory and the OOM killer choose.

use std::path::Path;

/// Memory the host keeps for itself (the daemon, the page cache of the
/// snapshot store, the system): 256 MiB or 5% of the host, whichever is
/// larger.
pub fn reserve_bytes(total: u64) -> u64 {
    (256u64 << 20).max(total / 20)
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    /// All memory.
    pub total: u64,
    /// What the kernel estimates can be used without swapping.
    pub available: u64,
}

impl HostMemory {
    /// Reads `/proc/meminfo`.
    pub fn read() -> Option<Self> {
        Self::read_from(Path::new("/proc/meminfo"))
    }

    fn read_from(path: &Path) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(path).ok()?)
    }

    /// Parses the text of `/proc/meminfo`.
    pub fn parse(text: &str) -> Option<Self> {
        let field = |name: &str| -> Option<u64> {
            let line = text.lines().find(|l| l.starts_with(name))?;
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(kib * 1024)
        };
        Some(Self {
            total: field("MemTotal:")?,
            available: field("MemAvailable:")?,
        })
    }

    /// How many more instances needing `per_instance` bytes each the host
    /// can take, keeping its reserve.
    pub fn room_for(&self, per_instance: u64) -> u64 {
        let usable = self.available.saturating_sub(reserve_bytes(self.total));
        usable / per_instance.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24576000 kB\nMemFree:         1000000 kB\nMemAvailable:    2097152 kB\nBuffers:            1234 kB\n";

    #[test]
    fn parses_meminfo() {
        let m = HostMemory::parse(MEMINFO).unwrap();
        assert_eq!(m.total, 24_576_000 * 1024);
        assert_eq!(m.available, 2 << 30);
        assert_eq!(HostMemory::parse("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn room_keeps_the_reserve() {
        let m = HostMemory::parse(MEMINFO).unwrap();
        // 2 GiB available, reserve 5% of ~23.4 GiB = ~1.17 GiB.
        let reserve = reserve_bytes(m.total);
        assert_eq!(reserve, m.total / 20);
        let per = 128 << 20;
        assert_eq!(m.room_for(per), (m.available - reserve) / per);
        let tight = HostMemory {
            total: 1 << 30,
            available: 200 << 20,
        };
        assert_eq!(tight.room_for(128 << 20), 0, "under the 256 MiB reserve");
    }

    #[test]
    fn this_host_reports_memory() {
        let m = HostMemory::read().expect("/proc/meminfo");
        assert!(m.total > 0 && m.available <= m.total);
    }
}
