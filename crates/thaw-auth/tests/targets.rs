//! Request targets a signature cannot cover are refused, not passed to the
//! signer: an authority-form target (`host:port`, as in `CONNECT`) has no
//! path, and `aws-sigv4` panics on it (found by `fuzz/fuzz_targets/sigv4.rs`;
//! the input is `fuzz/regressions/sigv4/authority-form-target`).

use std::time::SystemTime;

use thaw_api::auth::{sign_request, Credentials};
use thaw_auth::Accounts;

#[test]
fn an_authority_form_target_is_refused() {
    let root = Credentials::new(
        "AKIDTHAWTESTROOT0001",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    );
    let dir = tempfile::tempdir().unwrap();
    let (accounts, _) = Accounts::open(dir.path(), Some(root.clone())).unwrap();
    // Signed over a normal target, then sent with `host:port` as the target.
    let mut req = http::Request::post("http://127.0.0.1:9070/2015-03-31/functions")
        .header("host", "127.0.0.1:9070")
        .body(b"{}".to_vec())
        .unwrap();
    sign_request(&mut req, &root, SystemTime::now()).unwrap();
    *req.uri_mut() = http::Uri::from_static("127.0.0.1:9070");
    assert_eq!(req.uri().path(), "");
    let (parts, body) = req.into_parts();
    let e = accounts
        .verify(&parts, &body, chrono::Utc::now())
        .unwrap_err();
    assert_eq!((e.status, e.code), (400, "IncompleteSignatureException"));
}
