//! The CPU's extended-state (xstate) layout and feature words.
//!
//! Owns: reading `CPUID` and `XCR0` (via `xgetbv`) on the host, and the rule
//! that decides whether a snapshot taken on one CPU may be restored on
//! another. A snapshot records [`CpuFeatures::host`] at checkpoint time; a
//! restore calls [`CpuFeatures::check_restore_on`] with the restoring host's
//! features and refuses on any mismatch that matters.
//!
//! Must not: read another process's registers (that is [`crate::ptrace`]).
//!
//! Why it matters: `PTRACE_GETREGSET(NT_X86_XSTATE)` returns the
//! *non-compacted* XSAVE image of every user feature enabled in `XCR0`; its
//! size is `CPUID(0xD, 0).EBX`. Restoring that image on a CPU with another
//! `XCR0` either fails in the kernel or silently drops state. And glibc, V8 and
//! CPython choose code paths from `CPUID` once at start-up (e.g. AVX2 `memcpy`),
//! so a snapshot must never resume on a CPU lacking a feature it saw.

// Unsafe is needed for `xgetbv` (a `#[target_feature]` intrinsic) and, on
// toolchains before `cpuid` became a safe intrinsic, for `cpuid`.
#![allow(unsafe_code)]

use std::arch::x86_64::{__cpuid_count, _xgetbv, CpuidResult};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// `XCR0` bit for x87 state.
pub const XFEATURE_X87: u64 = 1 << 0;
/// `XCR0` bit for SSE (XMM) state.
pub const XFEATURE_SSE: u64 = 1 << 1;
/// `XCR0` bit for AVX (upper YMM halves).
pub const XFEATURE_AVX: u64 = 1 << 2;
/// `XCR0` bits for AVX-512 (opmask, ZMM_Hi256, Hi16_ZMM).
pub const XFEATURE_AVX512: u64 = (1 << 5) | (1 << 6) | (1 << 7);
/// `XCR0` bit for protection keys (PKRU).
pub const XFEATURE_PKRU: u64 = 1 << 9;
/// `XCR0` bits for AMX (tile config and tile data).
pub const XFEATURE_AMX: u64 = (1 << 17) | (1 << 18);

/// Size of the legacy FXSAVE region plus the XSAVE header: the smallest
/// valid non-compacted xstate image.
pub const XSAVE_LEGACY_AND_HEADER: usize = 512 + 64;

/// Errors reading the host CPU's features.
#[derive(Debug, Error)]
pub enum CpuError {
    /// The OS has not enabled XSAVE (`CPUID.1:ECX.OSXSAVE` is clear).
    #[error("XSAVE is not enabled by the operating system")]
    NoOsXsave,
}

/// Why a snapshot cannot be restored on this CPU.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CpuMismatch {
    /// The enabled xstate features (`XCR0`) differ.
    #[error("Xstate features differ: snapshot XCR0 {snapshot:#x}, host XCR0 {host:#x}")]
    XstateFeatures {
        /// `XCR0` when the snapshot was taken.
        snapshot: u64,
        /// `XCR0` of the restoring host.
        host: u64,
    },
    /// The non-compacted xstate image size differs.
    #[error("Xstate size differs: snapshot {snapshot} bytes, host {host} bytes")]
    XstateSize {
        /// Size when the snapshot was taken.
        snapshot: u32,
        /// Size on the restoring host.
        host: u32,
    },
    /// The host lacks CPUID feature bits the snapshot's process may use.
    #[error("Host lacks CPU features: {word} bits {missing:#x}")]
    MissingFeatures {
        /// Which CPUID word (e.g. `"leaf7.ebx"`).
        word: &'static str,
        /// The bits set in the snapshot and clear on the host.
        missing: u32,
    },
}

/// One xstate component as described by `CPUID(0xD, i)` for `i >= 2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct XstateComponent {
    /// Feature number (the bit in `XCR0`).
    pub index: u32,
    /// Size of the component in bytes.
    pub size: u32,
    /// Offset in the non-compacted XSAVE image.
    pub offset: u32,
}

/// The CPUID feature words that user space code selects code paths by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureWords {
    /// `CPUID(1).ECX`, with the OS-controlled `OSXSAVE` bit kept.
    pub leaf1_ecx: u32,
    /// `CPUID(1).EDX`.
    pub leaf1_edx: u32,
    /// `CPUID(7, 0).EBX` (AVX2, BMI, AVX-512F, ...).
    pub leaf7_ebx: u32,
    /// `CPUID(7, 0).ECX` (VAES, VPCLMULQDQ, PKU, ...).
    pub leaf7_ecx: u32,
    /// `CPUID(7, 0).EDX` (FSRM, AMX, ...).
    pub leaf7_edx: u32,
    /// `CPUID(0x80000001).ECX` (LZCNT, SSE4a, ...).
    pub ext1_ecx: u32,
    /// `CPUID(0x80000001).EDX`.
    pub ext1_edx: u32,
}

impl FeatureWords {
    fn named(&self) -> [(&'static str, u32); 7] {
        [
            ("leaf1.ecx", self.leaf1_ecx),
            ("leaf1.edx", self.leaf1_edx),
            ("leaf7.ebx", self.leaf7_ebx),
            ("leaf7.ecx", self.leaf7_ecx),
            ("leaf7.edx", self.leaf7_edx),
            ("ext1.ecx", self.ext1_ecx),
            ("ext1.edx", self.ext1_edx),
        ]
    }
}

/// What a snapshot records about the CPU it was taken on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuFeatures {
    /// The 12-character vendor string (`"AuthenticAMD"`, `"GenuineIntel"`).
    pub vendor: String,
    /// Display family (base family plus extended family).
    pub family: u32,
    /// Display model (with the extended model folded in).
    pub model: u32,
    /// Stepping.
    pub stepping: u32,
    /// `XCR0`: the user xstate features the OS enabled.
    pub xcr0: u64,
    /// `CPUID(0xD, 0).EBX`: non-compacted xstate size for the features in
    /// `XCR0`; equals the size `PTRACE_GETREGSET(NT_X86_XSTATE)` returns.
    pub xstate_size: u32,
    /// `CPUID(0xD, 0).ECX`: size if every supported feature were enabled.
    pub xstate_max_size: u32,
    /// The extended components (index >= 2) enabled in `XCR0`.
    pub components: Vec<XstateComponent>,
    /// Feature words user space dispatches on.
    pub words: FeatureWords,
}

/// Executes `CPUID` with the given leaf and sub-leaf.
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    // SAFETY: CPUID exists on every x86_64 CPU and only reads identification
    // registers; it has no memory effects. (It is a safe intrinsic on newer
    // toolchains, hence the `unused_unsafe` allowance.)
    #[allow(unused_unsafe)]
    unsafe {
        __cpuid_count(leaf, subleaf)
    }
}

/// Reads `XCR0` with `xgetbv`, after checking the OS enabled XSAVE.
pub fn xcr0() -> Result<u64, CpuError> {
    const OSXSAVE: u32 = 1 << 27;
    if cpuid(1, 0).ecx & OSXSAVE == 0 {
        return Err(CpuError::NoOsXsave);
    }
    // SAFETY: `xgetbv` is an `xsave` target-feature intrinsic; CPUID.1:ECX
    // bit 27 (OSXSAVE), checked above, guarantees XSAVE is supported and
    // enabled by the OS, so the instruction exists and XCR 0 is readable.
    Ok(unsafe { _xgetbv(0) })
}

impl CpuFeatures {
    /// Reads the features of the CPU this code runs on.
    pub fn host() -> Result<Self, CpuError> {
        let xcr0 = xcr0()?;
        let leaf0 = cpuid(0, 0);
        let mut vendor = Vec::with_capacity(12);
        for reg in [leaf0.ebx, leaf0.edx, leaf0.ecx] {
            vendor.extend_from_slice(&reg.to_le_bytes());
        }
        let vendor = String::from_utf8_lossy(&vendor).into_owned();

        let leaf1 = cpuid(1, 0);
        let base_family = (leaf1.eax >> 8) & 0xf;
        let ext_family = (leaf1.eax >> 20) & 0xff;
        let base_model = (leaf1.eax >> 4) & 0xf;
        let ext_model = (leaf1.eax >> 16) & 0xf;
        let family = if base_family == 0xf {
            base_family + ext_family
        } else {
            base_family
        };
        let model = if base_family == 0x6 || base_family == 0xf {
            (ext_model << 4) | base_model
        } else {
            base_model
        };

        let xsave = cpuid(0xd, 0);
        let components = (2..63u32)
            .filter(|i| xcr0 & (1u64 << i) != 0)
            .map(|index| {
                let sub = cpuid(0xd, index);
                XstateComponent {
                    index,
                    size: sub.eax,
                    offset: sub.ebx,
                }
            })
            .collect();

        let max_leaf = leaf0.eax;
        let leaf7 = if max_leaf >= 7 {
            cpuid(7, 0)
        } else {
            CpuidResult {
                eax: 0,
                ebx: 0,
                ecx: 0,
                edx: 0,
            }
        };
        let max_ext = cpuid(0x8000_0000, 0).eax;
        let ext1 = if max_ext >= 0x8000_0001 {
            cpuid(0x8000_0001, 0)
        } else {
            CpuidResult {
                eax: 0,
                ebx: 0,
                ecx: 0,
                edx: 0,
            }
        };
        // The APIC id and other per-core fields live in other registers of
        // these leaves; the words kept here are pure feature flags, except
        // leaf 1 ECX bit 27 (OSXSAVE), which the OS sets and which must match.
        Ok(Self {
            vendor,
            family,
            model,
            stepping: leaf1.eax & 0xf,
            xcr0,
            xstate_size: xsave.ebx,
            xstate_max_size: xsave.ecx,
            components,
            words: FeatureWords {
                leaf1_ecx: leaf1.ecx,
                leaf1_edx: leaf1.edx,
                leaf7_ebx: leaf7.ebx,
                leaf7_ecx: leaf7.ecx,
                leaf7_edx: leaf7.edx,
                ext1_ecx: ext1.ecx,
                ext1_edx: ext1.edx,
            },
        })
    }

    /// Whether AVX-512 state is enabled (all three AVX-512 components).
    pub fn has_avx512(&self) -> bool {
        self.xcr0 & XFEATURE_AVX512 == XFEATURE_AVX512
    }

    /// Decides whether a snapshot taken on `self` may resume on `host`.
    ///
    /// Policy (strict on purpose for now): `XCR0` and the xstate size must be
    /// equal, because the saved image is replayed byte for byte; and every
    /// CPUID feature bit the snapshot saw must be present on the host,
    /// because user space already chose code paths by them. Vendor, family
    /// and model may differ.
    pub fn check_restore_on(&self, host: &CpuFeatures) -> Result<(), CpuMismatch> {
        if self.xcr0 != host.xcr0 {
            return Err(CpuMismatch::XstateFeatures {
                snapshot: self.xcr0,
                host: host.xcr0,
            });
        }
        if self.xstate_size != host.xstate_size {
            return Err(CpuMismatch::XstateSize {
                snapshot: self.xstate_size,
                host: host.xstate_size,
            });
        }
        for ((word, ours), (_, theirs)) in self.words.named().into_iter().zip(host.words.named()) {
            let missing = ours & !theirs;
            if missing != 0 {
                return Err(CpuMismatch::MissingFeatures { word, missing });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_compatible_with_itself() {
        let host = CpuFeatures::host().expect("host features");
        assert_eq!(host.check_restore_on(&host), Ok(()));
        assert_ne!(host.xcr0 & (XFEATURE_X87 | XFEATURE_SSE), 0);
        assert!(host.xstate_size as usize >= XSAVE_LEGACY_AND_HEADER);
    }

    #[test]
    fn mismatches_are_named() {
        let snap = CpuFeatures::host().expect("host features");
        let mut other = snap.clone();
        other.xcr0 &= !XFEATURE_AVX;
        assert!(matches!(
            snap.check_restore_on(&other),
            Err(CpuMismatch::XstateFeatures { .. })
        ));

        let mut other = snap.clone();
        other.xstate_size += 64;
        assert!(matches!(
            snap.check_restore_on(&other),
            Err(CpuMismatch::XstateSize { .. })
        ));

        let mut other = snap.clone();
        other.words.leaf7_ebx = 0;
        let expected = snap.words.leaf7_ebx;
        if expected != 0 {
            assert_eq!(
                snap.check_restore_on(&other),
                Err(CpuMismatch::MissingFeatures {
                    word: "leaf7.ebx",
                    missing: expected
                })
            );
        }
        // A host with more features is fine.
        let mut richer = snap.clone();
        richer.words.leaf7_edx |= 1 << 31;
        assert_eq!(snap.check_restore_on(&richer), Ok(()));
    }

    #[test]
    fn features_survive_serialization() {
        let host = CpuFeatures::host().expect("host features");
        let text = serde_json::to_string(&host).expect("serialize");
        let back: CpuFeatures = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, host);
    }

    #[test]
    fn components_match_xcr0() {
        let host = CpuFeatures::host().expect("host features");
        for c in &host.components {
            assert_ne!(host.xcr0 & (1 << c.index), 0);
            assert!(c.offset + c.size <= host.xstate_size, "{c:?}");
        }
    }
}
