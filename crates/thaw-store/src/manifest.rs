//! Manifests and tenant keys.
//!
//! Owns: what a blob is made of (its chunks, their keys and places) and the
//! sealing of that list under the tenant's key, bound to the tenant and the
//! blob's name so a manifest cannot be moved to another name or tenant.
//!
//! Tenant keys are derived from the store's master key (which comes from a
//! pluggable key source; the daemon's default is a 0600 key file): a
//! convergence salt for chunk keys and a manifest key, each with its own
//! BLAKE3 derivation context. Keys never appear in `Debug` output, logs or
//! files in plaintext: chunk keys live only inside sealed manifests.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};

use crate::StoreError;

const MAGIC: &[u8; 8] = b"THAWMAN1";
/// Format version of manifests.
pub const MANIFEST_VERSION: u32 = 1;

/// A tenant's keys.
#[derive(Clone)]
pub struct TenantKeys {
    tenant: String,
    salt: [u8; 32],
    manifest: [u8; 32],
}

impl std::fmt::Debug for TenantKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKeys")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl TenantKeys {
    /// The keys of `tenant` under `master`.
    pub fn derive(master: &[u8; 32], tenant: &str) -> TenantKeys {
        let material = [master.as_slice(), tenant.as_bytes()].concat();
        TenantKeys {
            tenant: tenant.to_string(),
            salt: blake3::derive_key("thaw-store 2026 tenant convergence salt", &material),
            manifest: blake3::derive_key("thaw-store 2026 tenant manifest key", &material),
        }
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The salt of the tenant's convergent chunk keys.
    pub fn salt(&self) -> &[u8; 32] {
        &self.salt
    }
}

/// One chunk of a blob.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The chunk's id (BLAKE3 of its sealed bytes, hex).
    pub id: String,
    /// Its key, hex.
    pub key: String,
    /// Where it starts in the blob.
    pub offset: u64,
    /// Its plaintext length.
    pub len: u32,
}

impl std::fmt::Debug for ChunkRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkRef")
            .field("id", &self.id)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl ChunkRef {
    /// The chunk's key.
    pub fn key_bytes(&self) -> Result<[u8; 32], StoreError> {
        let bad = || StoreError::Corrupt {
            what: format!("chunk {}", self.id),
            why: "malformed key in the manifest".into(),
        };
        let v = hex_decode(&self.key).ok_or_else(bad)?;
        <[u8; 32]>::try_from(v.as_slice()).map_err(|_| bad())
    }
}

/// What a blob is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// The tenant.
    pub tenant: String,
    /// The blob's name.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// BLAKE3 of its plaintext, hex: the caller keeps it (in its own,
    /// authenticated records) and asks for exactly this content, so an
    /// older manifest put back under the same name (a replay) is refused.
    pub digest: String,
    /// Its chunks, in order.
    pub chunks: Vec<ChunkRef>,
}

fn aad(tenant: &str, name: &str) -> Vec<u8> {
    [
        b"thaw-store manifest v1\0".as_slice(),
        tenant.as_bytes(),
        b"\0",
        name.as_bytes(),
    ]
    .concat()
}

impl Manifest {
    /// Seals the manifest under the tenant's manifest key (random nonce;
    /// tenant and name authenticated).
    pub fn seal(&self, keys: &TenantKeys) -> Result<Vec<u8>, StoreError> {
        let body = serde_json::to_vec(self).map_err(|e| StoreError::Codec(e.to_string()))?;
        let cipher = Aes256Gcm::new((&keys.manifest).into());
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &body,
                    aad: &aad(&self.tenant, &self.name),
                },
            )
            .map_err(|_| StoreError::Codec("manifest encryption failed".into()))?;
        Ok([MAGIC.as_slice(), nonce.as_slice(), &ct].concat())
    }

    /// Opens a sealed manifest that must be `tenant`'s blob `name`.
    pub fn open(keys: &TenantKeys, name: &str, sealed: &[u8]) -> Result<Manifest, StoreError> {
        let corrupt = |why: &str| StoreError::Corrupt {
            what: format!("manifest {}/{name}", keys.tenant),
            why: why.to_string(),
        };
        if sealed.len() < 8 + 12 + 16 || &sealed[..8] != MAGIC {
            return Err(corrupt("not a sealed manifest"));
        }
        let cipher = Aes256Gcm::new((&keys.manifest).into());
        let body = cipher
            .decrypt(
                Nonce::from_slice(&sealed[8..20]),
                Payload {
                    msg: &sealed[20..],
                    aad: &aad(&keys.tenant, name),
                },
            )
            .map_err(|_| corrupt("does not authenticate (tampered, or another blob's)"))?;
        let m: Manifest = serde_json::from_slice(&body).map_err(|_| corrupt("malformed"))?;
        if m.version != MANIFEST_VERSION || m.tenant != keys.tenant || m.name != name {
            return Err(corrupt("names another blob or version"));
        }
        let mut at = 0u64;
        for c in &m.chunks {
            if c.offset != at {
                return Err(corrupt("chunks do not tile the blob"));
            }
            at += u64::from(c.len);
        }
        if at != m.size {
            return Err(corrupt("chunks do not add up to the size"));
        }
        Ok(m)
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            tenant: "t1".into(),
            name: "snapshots/f/memory".into(),
            size: 10,
            digest: "00".into(),
            chunks: vec![ChunkRef {
                id: "ab".into(),
                key: hex(&[7u8; 32]),
                offset: 0,
                len: 10,
            }],
        }
    }

    #[test]
    fn manifests_are_bound_to_tenant_and_name() {
        let master = [9u8; 32];
        let k1 = TenantKeys::derive(&master, "t1");
        let k2 = TenantKeys::derive(&master, "t2");
        assert_ne!(k1.salt, k2.salt);
        let m = manifest();
        let sealed = m.seal(&k1).unwrap();
        assert_eq!(
            Manifest::open(&k1, "snapshots/f/memory", &sealed).unwrap(),
            m
        );
        assert!(
            Manifest::open(&k1, "snapshots/g/memory", &sealed).is_err(),
            "swapped name"
        );
        assert!(
            Manifest::open(&k2, "snapshots/f/memory", &sealed).is_err(),
            "other tenant"
        );
        let mut t = sealed.clone();
        let n = t.len() - 3;
        t[n] ^= 1;
        assert!(
            Manifest::open(&k1, "snapshots/f/memory", &t).is_err(),
            "tampered"
        );
        assert!(!format!("{k1:?} {:?}", m.chunks[0]).contains(&hex(&[7u8; 32])));
        assert_eq!(m.chunks[0].key_bytes().unwrap(), [7u8; 32]);
    }
}
