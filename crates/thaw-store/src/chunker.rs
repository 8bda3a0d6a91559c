//! Cutting blobs into chunks: fixed-size or content-defined (FastCDC).
//!
//! Owns: where chunk boundaries fall. Fixed-size chunks are what AWS
//! Lambda's store uses (512 KiB) and are cheapest to compute; content-defined
//! chunks find the same bytes again when they sit at another offset, which
//! happens between two snapshots of the same runtime (the same library
//! pages, preceded by different amounts of heap). `docs/store.md` has the
//! measurement that chose the default.

use std::ops::Range;

/// How a blob is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// Every chunk `size` bytes (the last one shorter).
    Fixed {
        /// Chunk size.
        size: u32,
    },
    /// FastCDC (2020) with these bounds.
    ContentDefined {
        /// Smallest chunk.
        min: u32,
        /// Average chunk.
        avg: u32,
        /// Largest chunk.
        max: u32,
    },
}

impl Default for Chunking {
    fn default() -> Self {
        Chunking::ContentDefined {
            min: 64 << 10,
            avg: 256 << 10,
            max: 1 << 20,
        }
    }
}

impl Chunking {
    /// Lambda's layout: fixed 512 KiB.
    pub const FIXED_512K: Chunking = Chunking::Fixed { size: 512 << 10 };

    /// The chunk ranges of `data`, in order, tiling it.
    pub fn split(&self, data: &[u8]) -> Vec<Range<usize>> {
        match *self {
            Chunking::Fixed { size } => {
                let size = size.max(1) as usize;
                (0..data.len())
                    .step_by(size)
                    .map(|s| s..(s + size).min(data.len()))
                    .collect()
            }
            Chunking::ContentDefined { min, avg, max } => {
                fastcdc::v2020::FastCDC::new(data, min, avg, max)
                    .map(|c| c.offset..c.offset + c.length)
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiles(ranges: &[Range<usize>], len: usize) -> bool {
        let mut at = 0;
        for r in ranges {
            if r.start != at || r.end <= r.start {
                return false;
            }
            at = r.end;
        }
        at == len
    }

    #[test]
    fn both_chunkings_tile_the_blob_and_cdc_survives_a_shift() {
        let mut data = vec![0u8; 3 << 20];
        let mut x = 0x1234_5678u32;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        for c in [Chunking::FIXED_512K, Chunking::default()] {
            let r = c.split(&data);
            assert!(tiles(&r, data.len()), "{c:?}");
            assert!(c.split(&[]).is_empty());
        }
        // The same bytes behind 1000 inserted bytes: CDC finds most chunks
        // again, fixed-size chunking none.
        let shifted = [vec![7u8; 1000], data.clone()].concat();
        let same = |c: Chunking| {
            let a: std::collections::HashSet<&[u8]> =
                c.split(&data).into_iter().map(|r| &data[r]).collect();
            c.split(&shifted)
                .into_iter()
                .filter(|r| a.contains(&shifted[r.clone()]))
                .count()
        };
        assert_eq!(same(Chunking::FIXED_512K), 0);
        assert!(
            same(Chunking::default()) >= 5,
            "{}",
            same(Chunking::default())
        );
    }
}
