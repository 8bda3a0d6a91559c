//! Sealed chunks: compressed, then encrypted under a convergent key.
//!
//! Owns: turning a chunk's plaintext into the bytes the tiers hold and
//! back, refusing anything that does not authenticate.
//!
//! A chunk's key is `BLAKE3-keyed(tenant salt, plaintext)`: the same
//! plaintext of the same tenant always gives the same key, hence the same
//! sealed bytes and the same id (so it is stored once), while another
//! tenant's salt gives another key and other bytes (so tenants never share
//! a chunk, and nobody can test whether another tenant stores a given
//! plaintext). The sealed form is
//!
//! ```text
//! "THAWCHK1" | u32 LE plaintext length | AES-256-GCM(key, nonce 0, zstd(plaintext))
//! ```
//!
//! A fixed nonce is safe because a key only ever encrypts one plaintext.
//! The chunk's id is the BLAKE3 of the sealed bytes: anyone holding the
//! bytes can check they are the chunk they asked for without a key, and the
//! key (in the manifest) authenticates them again on opening.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use crate::StoreError;

const MAGIC: &[u8; 8] = b"THAWCHK1";
const AAD: &[u8] = b"thaw-store chunk v1";
/// zstd level: measured on snapshot memory (docs/store.md), level 3
/// compresses runtime pages about as well as 9 at several times the speed.
const ZSTD_LEVEL: i32 = 3;
/// Largest chunk plaintext accepted when opening (a bigger length field is
/// corruption).
pub const MAX_CHUNK: usize = 16 << 20;

/// A chunk's id: BLAKE3 of its sealed bytes, hex.
pub fn chunk_id(sealed: &[u8]) -> String {
    blake3::hash(sealed).to_hex().to_string()
}

/// The convergent key of `plaintext` for the tenant with `salt`.
pub fn convergent_key(salt: &[u8; 32], plaintext: &[u8]) -> [u8; 32] {
    *blake3::keyed_hash(salt, plaintext).as_bytes()
}

/// Compresses and encrypts `plaintext` under `key`.
pub fn seal(key: &[u8; 32], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
    let compressed = zstd::bulk::compress(plaintext, ZSTD_LEVEL)
        .map_err(|e| StoreError::Codec(format!("zstd: {e}")))?;
    let cipher = Aes256Gcm::new(key.into());
    let ct = cipher
        .encrypt(
            &Nonce::default(),
            Payload {
                msg: &compressed,
                aad: AAD,
            },
        )
        .map_err(|_| StoreError::Codec("encryption failed".into()))?;
    let mut out = Vec::with_capacity(12 + ct.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(plaintext.len() as u32).to_le_bytes());
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Checks `sealed` against its expected `id`, decrypts it under `key` and
/// decompresses it; any mismatch is [`StoreError::Corrupt`].
pub fn open(id: &str, key: &[u8; 32], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt {
        what: format!("chunk {id}"),
        why: why.to_string(),
    };
    if chunk_id(sealed) != id {
        return Err(corrupt("content does not match its id"));
    }
    if sealed.len() < 12 + 16 || &sealed[..8] != MAGIC {
        return Err(corrupt("not a sealed chunk"));
    }
    let len = u32::from_le_bytes(sealed[8..12].try_into().unwrap_or([0; 4])) as usize;
    if len > MAX_CHUNK {
        return Err(corrupt("impossible length"));
    }
    let cipher = Aes256Gcm::new(key.into());
    let compressed = cipher
        .decrypt(
            &Nonce::default(),
            Payload {
                msg: &sealed[12..],
                aad: AAD,
            },
        )
        .map_err(|_| corrupt("does not authenticate under its key"))?;
    let plain = zstd::bulk::decompress(&compressed, len)
        .map_err(|e| corrupt(&format!("does not decompress: {e}")))?;
    if plain.len() != len {
        return Err(corrupt("wrong length"));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_is_convergent_per_tenant_and_authenticated() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let ka = convergent_key(&a, &data);
        let s1 = seal(&ka, &data).unwrap();
        let s2 = seal(&convergent_key(&a, &data), &data).unwrap();
        assert_eq!(s1, s2, "same tenant, same plaintext: same bytes");
        let kb = convergent_key(&b, &data);
        let s3 = seal(&kb, &data).unwrap();
        assert_ne!(chunk_id(&s1), chunk_id(&s3), "tenants never share a chunk");
        assert!(s1.len() < data.len() / 10, "compressed: {}", s1.len());
        let id = chunk_id(&s1);
        assert_eq!(open(&id, &ka, &s1).unwrap(), data);
        // Wrong key, flipped bit, truncation, another chunk under this id.
        assert!(matches!(
            open(&chunk_id(&s3), &ka, &s3),
            Err(StoreError::Corrupt { .. })
        ));
        let mut flipped = s1.clone();
        flipped[20] ^= 1;
        assert!(open(&id, &ka, &flipped).is_err());
        assert!(open(&chunk_id(&flipped), &ka, &flipped).is_err());
        assert!(open(&id, &ka, &s1[..s1.len() - 1]).is_err());
        assert!(open(&id, &ka, &s3).is_err());
    }
}
