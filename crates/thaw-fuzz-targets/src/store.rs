//! Sealed chunks and manifests (`thaw-store`): what the store reads back
//! from its tiers (memory, local disk, an object store) before it trusts
//! a byte.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use thaw_store::chunk;
use thaw_store::{Manifest, TenantKeys};

/// Flag: the rest is the plaintext of a compressed chunk: a u32 LE length
/// claim, then the bytes to encrypt (as `zstd` output) under the chunk key,
/// laid out as the sealed form; tampered contents that authenticate.
pub const ENCRYPT_CHUNK: u8 = 1;
/// Flag: the rest is a manifest body, encrypted under the tenant's
/// manifest key with the blob name's associated data.
pub const ENCRYPT_MANIFEST: u8 = 1;

/// The master key, tenant and blob name the harnesses use.
pub const MASTER: [u8; 32] = [7; 32];
/// The tenant.
pub const TENANT: &str = "fuzz-tenant";
/// The blob name.
pub const BLOB: &str = "snapshots/fn/rev/memory";
const CHUNK_KEY: [u8; 32] = [9; 32];

/// The sealed chunk whose compressed content is `compressed` and whose
/// header claims `len` plaintext bytes (the writer's layout,
/// `crates/thaw-store/src/chunk.rs`).
pub fn sealed_chunk(len: u32, compressed: &[u8]) -> Vec<u8> {
    let ct = Aes256Gcm::new((&CHUNK_KEY).into())
        .encrypt(
            &Nonce::default(),
            Payload {
                msg: compressed,
                aad: b"thaw-store chunk v1",
            },
        )
        .expect("encryption of a slice");
    [b"THAWCHK1".as_slice(), &len.to_le_bytes(), &ct].concat()
}

/// Opens `data` as a sealed chunk (its id computed from it, so the check
/// that comes after the id is reached), or with [`ENCRYPT_CHUNK`] a chunk
/// built around the rest. Also seals the rest and checks it opens back.
pub fn store_chunk(data: &[u8]) {
    let (flags, rest) = crate::flags(data);
    let sealed = if flags & ENCRYPT_CHUNK != 0 {
        let (len, compressed) = rest.split_at(rest.len().min(4));
        let mut b = [0u8; 4];
        b[..len.len()].copy_from_slice(len);
        sealed_chunk(u32::from_le_bytes(b), compressed)
    } else {
        rest.to_vec()
    };
    let id = chunk::chunk_id(&sealed);
    if let Ok(plain) = chunk::open(&id, &CHUNK_KEY, &sealed) {
        assert!(plain.len() <= chunk::MAX_CHUNK);
        assert_eq!(
            plain.len() as u32,
            u32::from_le_bytes([sealed[8], sealed[9], sealed[10], sealed[11]])
        );
    }
    let key = chunk::convergent_key(&[1; 32], rest);
    let sealed = chunk::seal(&key, rest).expect("sealing a chunk");
    let back = chunk::open(&chunk::chunk_id(&sealed), &key, &sealed).expect("a sealed chunk opens");
    assert_eq!(back, rest, "a chunk did not round-trip");
}

/// The tenant's manifest key, derived as `TenantKeys::derive` does
/// (`crates/thaw-store/src/manifest.rs`); [`store_manifest`] checks the two
/// agree on every run, so a change there fails here.
fn manifest_key() -> [u8; 32] {
    let material = [MASTER.as_slice(), TENANT.as_bytes()].concat();
    blake3::derive_key("thaw-store 2026 tenant manifest key", &material)
}

/// The sealed manifest holding `body` for [`TENANT`]'s [`BLOB`], with a
/// fixed nonce.
pub fn sealed_manifest(body: &[u8]) -> Vec<u8> {
    let aad = [
        b"thaw-store manifest v1\0".as_slice(),
        TENANT.as_bytes(),
        b"\0",
        BLOB.as_bytes(),
    ]
    .concat();
    let nonce = [3u8; 12];
    let ct = Aes256Gcm::new((&manifest_key()).into())
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: body,
                aad: &aad,
            },
        )
        .expect("encryption of a slice");
    [b"THAWMAN1".as_slice(), &nonce, &ct].concat()
}

/// Opens `data` as [`TENANT`]'s sealed manifest of [`BLOB`], or with
/// [`ENCRYPT_MANIFEST`] the manifest sealed around the rest. A manifest
/// that opens tiles its blob, and every chunk key is either refused or 32
/// bytes.
pub fn store_manifest(data: &[u8]) {
    let (flags, rest) = crate::flags(data);
    let keys = TenantKeys::derive(&MASTER, TENANT);
    let sealed = if flags & ENCRYPT_MANIFEST != 0 {
        sealed_manifest(rest)
    } else {
        rest.to_vec()
    };
    if let Ok(m) = Manifest::open(&keys, BLOB, &sealed) {
        let mut at = 0u64;
        for c in &m.chunks {
            assert_eq!(c.offset, at, "an opened manifest does not tile its blob");
            at += u64::from(c.len);
            let _ = c.key_bytes();
        }
        assert_eq!(at, m.size);
        // The harness's key derivation still matches the store's.
        let resealed = m.seal(&keys).expect("sealing a manifest");
        let again = Manifest::open(&keys, BLOB, &resealed).expect("a resealed manifest opens");
        assert_eq!(again, m);
    }
    let canary = Manifest {
        version: thaw_store::manifest::MANIFEST_VERSION,
        tenant: TENANT.into(),
        name: BLOB.into(),
        size: 0,
        digest: String::new(),
        chunks: vec![],
    };
    let body = serde_json::to_vec(&canary).expect("serialize a manifest");
    assert_eq!(
        Manifest::open(&keys, BLOB, &sealed_manifest(&body)).ok(),
        Some(canary),
        "the harness's manifest key no longer matches TenantKeys::derive"
    );
}
