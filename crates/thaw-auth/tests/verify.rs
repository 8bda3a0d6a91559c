//! Signed requests as the AWS SDKs make them (aws-sigv4 signs them here),
//! verified by the accounts: the right key passes; a wrong key, a wrong
//! secret, a missing or malformed signature, a changed body, path or
//! header, a request signed too long ago (a replay) and an expired
//! presigned URL are refused with Lambda's error codes.

use std::time::{Duration, SystemTime};

use thaw_api::auth::{sign_request, Credentials};
use thaw_auth::{Accounts, RootKey, ROOT_ACCOUNT};

const URL: &str = "http://127.0.0.1:9070/2015-03-31/functions/f/invocations?Qualifier=%24LATEST";

fn root() -> Credentials {
    Credentials::new(
        "AKIDTHAWTESTROOT0001",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    )
}

fn accounts() -> (tempfile::TempDir, Accounts) {
    let dir = tempfile::tempdir().unwrap();
    let (a, how) = Accounts::open(dir.path(), Some(root())).unwrap();
    assert_eq!(how, RootKey::Given);
    (dir, a)
}

fn signed(creds: &Credentials, body: &[u8], at: SystemTime) -> http::Request<Vec<u8>> {
    let mut req = http::Request::builder()
        .method("POST")
        .uri(URL)
        .header("host", "127.0.0.1:9070")
        .header("content-type", "application/json")
        .body(body.to_vec())
        .unwrap();
    sign_request(&mut req, creds, at).unwrap();
    req
}

fn verify(
    a: &Accounts,
    req: http::Request<Vec<u8>>,
) -> Result<thaw_auth::Caller, thaw_auth::Denied> {
    let (parts, body) = req.into_parts();
    a.verify(&parts, &body, chrono::Utc::now())
}

#[test]
fn a_request_signed_with_the_root_key_passes() {
    let (_d, a) = accounts();
    let caller = verify(&a, signed(&root(), b"{}", SystemTime::now())).unwrap();
    assert_eq!(caller.account_id, ROOT_ACCOUNT);
    assert_eq!(caller.access_key_id, root().access_key_id);
}

#[test]
fn wrong_keys_and_missing_signatures_are_refused() {
    let (_d, a) = accounts();
    let unknown = Credentials::new("AKIDSOMEBODYELSE0001", root().secret_access_key);
    let e = verify(&a, signed(&unknown, b"{}", SystemTime::now())).unwrap_err();
    assert_eq!((e.status, e.code), (403, "UnrecognizedClientException"));

    let wrong_secret = Credentials::new(root().access_key_id, "not-the-secret");
    let e = verify(&a, signed(&wrong_secret, b"{}", SystemTime::now())).unwrap_err();
    assert_eq!((e.status, e.code), (403, "InvalidSignatureException"));

    let unsigned = http::Request::post(URL)
        .header("host", "127.0.0.1:9070")
        .body(b"{}".to_vec())
        .unwrap();
    let e = verify(&a, unsigned).unwrap_err();
    assert_eq!(
        (e.status, e.code),
        (403, "MissingAuthenticationTokenException")
    );

    let mut garbled = signed(&root(), b"{}", SystemTime::now());
    garbled.headers_mut().insert(
        "authorization",
        http::HeaderValue::from_static("AWS4-HMAC-SHA256 Signature=00"),
    );
    let e = verify(&a, garbled).unwrap_err();
    assert_eq!((e.status, e.code), (400, "IncompleteSignatureException"));

    let mut basic = signed(&root(), b"{}", SystemTime::now());
    basic.headers_mut().insert(
        "authorization",
        http::HeaderValue::from_static("Basic cm9vdDpyb290"),
    );
    assert_eq!(verify(&a, basic).unwrap_err().status, 400);
}

#[test]
fn a_changed_request_is_refused() {
    let (_d, a) = accounts();
    // The body.
    let (parts, _) = signed(&root(), br#"{"n":1}"#, SystemTime::now()).into_parts();
    let e = verify(&a, http::Request::from_parts(parts, br#"{"n":2}"#.to_vec())).unwrap_err();
    assert_eq!(e.code, "InvalidSignatureException");
    // The path (another function).
    let (mut parts, body) = signed(&root(), b"{}", SystemTime::now()).into_parts();
    parts.uri = URL.replace("/f/", "/g/").parse().unwrap();
    let e = verify(&a, http::Request::from_parts(parts, body)).unwrap_err();
    assert_eq!(e.code, "InvalidSignatureException");
    // A signed header.
    let (mut parts, body) = signed(&root(), b"{}", SystemTime::now()).into_parts();
    parts
        .headers
        .insert("content-type", http::HeaderValue::from_static("text/plain"));
    let e = verify(&a, http::Request::from_parts(parts, body)).unwrap_err();
    assert_eq!(e.code, "InvalidSignatureException");
}

#[test]
fn a_replay_outside_the_window_is_refused() {
    let (_d, a) = accounts();
    let old = SystemTime::now() - Duration::from_secs(16 * 60);
    let e = verify(&a, signed(&root(), b"{}", old)).unwrap_err();
    assert_eq!((e.status, e.code), (403, "InvalidSignatureException"));
    assert!(e.message.contains("Signature expired"), "{}", e.message);
    let future = SystemTime::now() + Duration::from_secs(16 * 60);
    let e = verify(&a, signed(&root(), b"{}", future)).unwrap_err();
    assert_eq!(e.code, "InvalidSignatureException");
    // Inside the window a request is accepted (as AWS does).
    let recent = SystemTime::now() - Duration::from_secs(5 * 60);
    verify(&a, signed(&root(), b"{}", recent)).unwrap();
}

fn presigned(expires: Duration, at: SystemTime) -> http::Request<Vec<u8>> {
    use aws_sigv4::http_request::{
        sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    };
    let identity = aws_credential_types::Credentials::new(
        root().access_key_id,
        root().secret_access_key,
        None,
        None,
        "test",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(expires);
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("lambda")
        .time(at)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let url = "http://127.0.0.1:9070/2015-03-31/functions/f";
    let signable = SignableRequest::new(
        "GET",
        url,
        [("host", "127.0.0.1:9070")].into_iter(),
        SignableBody::Bytes(b""),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut req = http::Request::get(url)
        .header("host", "127.0.0.1:9070")
        .body(Vec::new())
        .unwrap();
    instructions.apply_to_request_http1x(&mut req);
    req
}

#[test]
fn presigned_urls_pass_until_they_expire() {
    let (_d, a) = accounts();
    let caller = verify(&a, presigned(Duration::from_secs(300), SystemTime::now())).unwrap();
    assert_eq!(caller.account_id, ROOT_ACCOUNT);
    // Signed 2 minutes ago, valid for 1: expired (inside the skew window).
    let e = verify(
        &a,
        presigned(
            Duration::from_secs(60),
            SystemTime::now() - Duration::from_secs(120),
        ),
    )
    .unwrap_err();
    assert_eq!((e.status, e.code), (403, "AccessDeniedException"));
    // A changed signature, or a longer validity than signed, is refused.
    let mut req = presigned(Duration::from_secs(300), SystemTime::now());
    let tampered = req
        .uri()
        .to_string()
        .replace("X-Amz-Expires=300", "X-Amz-Expires=3000");
    *req.uri_mut() = tampered.parse().unwrap();
    let e = verify(&a, req).unwrap_err();
    assert_eq!((e.status, e.code), (403, "InvalidSignatureException"));
}

#[test]
fn the_root_key_is_generated_once_and_kept_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (a, how) = Accounts::open(dir.path(), None).unwrap();
    let RootKey::Generated(creds) = how else {
        panic!("a first start generates the root key: {how:?}");
    };
    assert!(creds.access_key_id.starts_with("AKTH") && creds.access_key_id.len() == 20);
    assert_eq!(creds.secret_access_key.len(), 40);
    let mode = std::fs::metadata(a.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the accounts file is the owner's only");
    verify(&a, signed(&creds, b"{}", SystemTime::now())).unwrap();
    // Kept across starts.
    let (b, how) = Accounts::open(dir.path(), None).unwrap();
    assert_eq!(how, RootKey::Stored);
    verify(&b, signed(&creds, b"{}", SystemTime::now())).unwrap();
    // A root key given at start replaces the stored one while given.
    let (c, _) = Accounts::open(dir.path(), Some(root())).unwrap();
    verify(&c, signed(&root(), b"{}", SystemTime::now())).unwrap();
    let e = verify(&c, signed(&creds, b"{}", SystemTime::now())).unwrap_err();
    assert_eq!(e.code, "UnrecognizedClientException");
    // Two generated keys differ.
    assert_ne!(
        thaw_auth::generate().unwrap(),
        thaw_auth::generate().unwrap()
    );
}

#[test]
fn a_damaged_or_newer_accounts_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(thaw_auth::ACCOUNTS_FILE);
    std::fs::write(&path, b"{not json").unwrap();
    assert!(matches!(
        Accounts::open(dir.path(), None),
        Err(thaw_auth::AccountsError::Damaged { .. })
    ));
    std::fs::write(&path, br#"{"format_version":2,"accounts":[]}"#).unwrap();
    let e = Accounts::open(dir.path(), None).unwrap_err();
    assert!(e.to_string().contains("format version 2"), "{e}");
}

/// Accounts made at run time sign as themselves, are stored (0600) before
/// they count, survive a restart, and rotate keys within the limits: a
/// second key, never a third, never the last one deleted, a deleted key
/// refused at once.
#[test]
fn accounts_and_keys_are_created_rotated_and_kept() {
    use std::os::unix::fs::PermissionsExt;
    use thaw_auth::ChangeError;
    let (dir, a) = accounts();
    let (team, k1) = a.create("team-a").unwrap();
    assert_eq!(team.account_id.len(), 12);
    assert_ne!(team.account_id, ROOT_ACCOUNT);
    let caller = verify(&a, signed(&k1, b"{}", SystemTime::now())).unwrap();
    assert_eq!(caller.account_id, team.account_id);
    assert!(matches!(a.create("team-a"), Err(ChangeError::NameTaken(_))));
    assert!(matches!(
        a.create("no spaces"),
        Err(ChangeError::InvalidName(_))
    ));
    assert!(matches!(a.create(""), Err(ChangeError::InvalidName(_))));
    let mode = std::fs::metadata(a.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Rotation.
    let k2 = a.create_key(&team.account_id).unwrap();
    assert!(matches!(
        a.create_key(&team.account_id),
        Err(ChangeError::TooManyKeys(_))
    ));
    a.delete_key(&team.account_id, &k1.access_key_id).unwrap();
    let e = verify(&a, signed(&k1, b"{}", SystemTime::now())).unwrap_err();
    assert_eq!(e.code, "UnrecognizedClientException");
    assert_eq!(
        verify(&a, signed(&k2, b"{}", SystemTime::now()))
            .unwrap()
            .account_id,
        team.account_id
    );
    assert!(matches!(
        a.delete_key(&team.account_id, &k2.access_key_id),
        Err(ChangeError::LastKey(_))
    ));
    assert!(matches!(
        a.delete_key(&team.account_id, "AKIDNOSUCHKEY0000001"),
        Err(ChangeError::NoSuchKey { .. })
    ));
    assert!(matches!(
        a.create_key("999999999999"),
        Err(ChangeError::NoSuchAccount(_))
    ));
    // The root key is the environment's while it is given.
    assert!(matches!(
        a.create_key(ROOT_ACCOUNT),
        Err(ChangeError::RootKeyGiven)
    ));
    let listed = a.list();
    let listed_team = listed
        .iter()
        .find(|s| s.account_id == team.account_id)
        .unwrap();
    assert_eq!(listed_team.access_key_ids, vec![k2.access_key_id.clone()]);
    let root_listed = listed
        .iter()
        .find(|s| s.account_id == ROOT_ACCOUNT)
        .unwrap();
    assert_eq!(root_listed.access_key_ids, vec![root().access_key_id]);

    // A restart reads the same accounts and keys.
    drop(a);
    let (b, _) = Accounts::open(dir.path(), Some(root())).unwrap();
    assert_eq!(
        verify(&b, signed(&k2, b"{}", SystemTime::now()))
            .unwrap()
            .account_id,
        team.account_id
    );
    assert!(verify(&b, signed(&k1, b"{}", SystemTime::now())).is_err());
}

/// A change that cannot be stored changes nothing.
#[test]
fn an_account_that_cannot_be_stored_does_not_exist() {
    let (dir, a) = accounts();
    // The data directory is gone and a file has its name: nothing can be
    // written there.
    std::fs::remove_dir_all(dir.path()).unwrap();
    std::fs::write(dir.path(), b"not a directory").unwrap();
    assert!(matches!(
        a.create("team-b"),
        Err(thaw_auth::ChangeError::Store(_))
    ));
    assert!(a.list().iter().all(|s| s.name != "team-b"));
    std::fs::remove_file(dir.path()).unwrap();
    std::fs::create_dir(dir.path()).unwrap();
}
