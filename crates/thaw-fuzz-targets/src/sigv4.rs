//! AWS Signature Version 4 verification (`thaw-auth`): the `Authorization`
//! header and presigned-URL query parameters of every API request.

use std::sync::OnceLock;

use thaw_api::auth::Credentials;
use thaw_auth::Accounts;

/// The root key the fuzzed requests are verified against; the committed
/// seeds are signed with it at [`SIGNED_AT`].
pub const ROOT_KEY_ID: &str = "AKIDTHAWFUZZROOT0001";
/// The root secret.
pub const ROOT_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
/// The verifier's clock (and the seeds' signing time), Unix seconds:
/// 2026-01-01T00:00:00Z.
pub const SIGNED_AT: i64 = 1_767_225_600;

struct Fixture {
    _dir: tempfile::TempDir,
    accounts: Accounts,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = crate::tempdir();
        let (accounts, _) =
            Accounts::open(dir.path(), Some(Credentials::new(ROOT_KEY_ID, ROOT_SECRET)))
                .expect("accounts open");
        Fixture {
            _dir: dir,
            accounts,
        }
    })
}

/// Encodes a request the way [`sigv4`] reads it (the seeds are written
/// with it): `METHOD URI\n`, one `name: value\n` per header, `\n`, body.
pub fn encode_request(req: &http::Request<Vec<u8>>) -> Vec<u8> {
    let mut out = format!("{} {}\n", req.method(), req.uri()).into_bytes();
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(req.body());
    out
}

/// Builds a request from `data` (see [`encode_request`]) and verifies it
/// against the root key at [`SIGNED_AT`].
pub fn sigv4(data: &[u8]) {
    let Some(req) = crate::request(data) else {
        return;
    };
    let (parts, body) = req.into_parts();
    let now = chrono::DateTime::from_timestamp(SIGNED_AT, 0).unwrap_or_default();
    if let Ok(caller) = fixture().accounts.verify(&parts, &body, now) {
        assert_eq!(caller.access_key_id, ROOT_KEY_ID);
    }
}
