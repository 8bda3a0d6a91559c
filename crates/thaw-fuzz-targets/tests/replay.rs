//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) and the
//! inputs of fixed findings (`fuzz/regressions/<target>/`) through the
//! targets' bodies, on stable, in the ordinary test run. A target without
//! a corpus fails (the test must not pass by running nothing).
//!
//! The seeds the corpus started from are written by the ignored test
//! `write_seeds` (`cargo test -p thaw-fuzz-targets --test replay
//! write_seeds -- --ignored`) from real formats: a code zip from the
//! registry's fixtures, requests signed with `aws-sigv4`, snapshots and
//! working sets written by the engine, chunks and manifests sealed by the
//! store, frames encoded by the control protocol.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use thaw_fuzz_targets::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_file());
    v.sort();
    v
}

#[test]
fn every_target_has_a_harness_and_a_corpus() {
    let on_disk: BTreeSet<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .collect();
    let listed: BTreeSet<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(on_disk, listed, "fuzz/fuzz_targets and TARGETS differ");
    for (name, _) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} is missing or empty");
    }
}

#[test]
fn the_corpus_and_the_regressions_replay() {
    let mut ran = 0;
    for (name, target) in TARGETS {
        for sub in ["corpus", "regressions"] {
            for f in files(&fuzz_dir().join(sub).join(name)) {
                let data = std::fs::read(&f).unwrap();
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{} panicked", f.display());
                ran += 1;
            }
        }
    }
    assert!(ran >= TARGETS.len(), "only {ran} inputs replayed");
}

/// The Runtime API harness reaches the routes: the normal seed session
/// answers two invocations and has its late init error refused.
#[test]
fn the_runtime_api_session_reaches_the_routes() {
    use thaw_runtime::control::FromSupervisor;
    let data = std::fs::read(fuzz_dir().join("corpus/runtime_api/seed-normal")).unwrap();
    let mut rest = &data[1..];
    let mut requests = Vec::new();
    while rest.len() >= 2 {
        let n = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let text = &rest[2..2 + n];
        rest = &rest[2 + n..];
        let (head, body) = text.split_at(text.windows(2).position(|w| w == b"\n\n").unwrap());
        let first = std::str::from_utf8(head.split(|&b| b == b'\n').next().unwrap()).unwrap();
        let (method, uri) = first.split_once(' ').unwrap();
        let mut b = http::Request::builder().method(method).uri(uri);
        for line in head.split(|&b| b == b'\n').skip(1) {
            let line = std::str::from_utf8(line).unwrap();
            let (k, v) = line.split_once(": ").unwrap();
            b = b.header(k, v);
        }
        requests.push(b.body(axum::body::Body::from(body[2..].to_vec())).unwrap());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let s = rt.block_on(thaw_runtime::fuzzing::session(
        thaw_runtime::fuzzing::Mode::Normal,
        requests,
    ));
    assert_eq!(
        s.statuses,
        [200, 202, 200, 202, 400, 403, 404].map(Some).to_vec()
    );
    let kinds: Vec<_> = s.reports.iter().map(|(m, _)| m.clone()).collect();
    assert_eq!(
        kinds,
        [
            FromSupervisor::Response {
                request_id: "inv-0".into()
            },
            FromSupervisor::Error {
                request_id: "inv-1".into(),
                error_type: "Runtime.Unhandled".into()
            },
        ]
    );
}

mod seeds {
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    use thaw_api::auth::{sign_request, Credentials};
    use thaw_fuzz_targets::{sigv4, snapshot, store, working_set};
    use thaw_runtime::control::{encode_frame, pages, FromSupervisor, Invocation, ToSupervisor};

    fn repo() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn put(target: &str, name: &str, bytes: &[u8]) {
        let dir = super::fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }

    fn with_flags(flags: u8, rest: &[u8]) -> Vec<u8> {
        [&[flags][..], rest].concat()
    }

    fn code_zip() -> Vec<u8> {
        std::fs::read(repo().join("crates/thawd/tests/fixtures/registry/v2/hello/code.zip"))
            .unwrap()
    }

    fn api() {
        use base64::Engine;
        let zip = base64::engine::general_purpose::STANDARD.encode(code_zip());
        let create = serde_json::json!({
            "FunctionName": "hello",
            "Runtime": "python3.11",
            "Handler": "app.handler",
            "Role": "arn:aws:iam::123456789012:role/thaw",
            "Code": { "ZipFile": zip },
            "MemorySize": 256,
            "Timeout": 30,
            "Environment": { "Variables": { "GREETING": "hi", "THAW_X": "1" } },
            "EphemeralStorage": { "Size": 512 },
            "Architectures": ["x86_64"],
            "Tags": { "team": "thaw" },
        });
        put("api_request", "create", create.to_string().as_bytes());
        let config = serde_json::json!({
            "Runtime": "nodejs20.x", "Handler": "index.handler", "MemorySize": 10240,
            "Timeout": 900, "Description": "d", "Layers": [], "RevisionId": "r1",
            "Environment": { "Variables": {} },
        });
        put(
            "api_request",
            "configuration",
            config.to_string().as_bytes(),
        );
        let code =
            serde_json::json!({ "ZipFile": "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==", "DryRun": true });
        put("api_request", "code", code.to_string().as_bytes());
        put(
            "api_request",
            "concurrency",
            br#"{"ReservedConcurrentExecutions":10}"#,
        );
        put(
            "api_request",
            "provisioned",
            br#"{"ProvisionedConcurrentExecutions":2}"#,
        );
        put(
            "api_request",
            "arn",
            b"arn:aws:lambda:us-east-1:123456789012:function:hello:$LATEST\0$LATEST",
        );
        put("api_request", "invocation-type", b"RequestResponse");
        put(
            "api_request",
            "publish",
            br#"{"CodeSha256":"abc=","Description":"v","RevisionId":"r1"}"#,
        );
        put(
            "api_request",
            "alias",
            br#"{"Name":"live","FunctionVersion":"1","RoutingConfig":{"AdditionalVersionWeights":{"2":0.25}}}"#,
        );
        put(
            "api_request",
            "url-config",
            br#"{"AuthType":"AWS_IAM","InvokeMode":"BUFFERED","Cors":{"AllowOrigins":["*"],"MaxAge":60}}"#,
        );
        put(
            "api_request",
            "url-answer",
            br#"{"statusCode":201,"headers":{"x":"y"},"cookies":["a=1"],"body":"aGk=","isBase64Encoded":true}"#,
        );
        put(
            "api_request",
            "qualified",
            b"arn:aws:lambda:us-east-1:123456789012:function:hello:live\0live",
        );
    }

    fn zips() {
        use std::io::Write;
        put("zip_package", "hello", &code_zip());
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        w.add_directory("lib/", opts).unwrap();
        w.start_file("lib/bootstrap", opts).unwrap();
        w.write_all(b"#!/bin/sh\nexec ./handler\n").unwrap();
        w.add_symlink("handler", "lib/bootstrap", opts).unwrap();
        w.start_file("../escape", opts).unwrap();
        w.write_all(b"x").unwrap();
        put(
            "zip_package",
            "links-and-dirs",
            &w.finish().unwrap().into_inner(),
        );
    }

    fn signed() {
        let creds = Credentials::new(sigv4::ROOT_KEY_ID, sigv4::ROOT_SECRET);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(sigv4::SIGNED_AT as u64);
        let mut req = http::Request::builder()
            .method("POST")
            .uri("http://127.0.0.1:9070/2015-03-31/functions/f/invocations?Qualifier=%24LATEST")
            .header("host", "127.0.0.1:9070")
            .header("content-type", "application/json")
            .body(br#"{"k":1}"#.to_vec())
            .unwrap();
        sign_request(&mut req, &creds, at).unwrap();
        put("sigv4", "header", &sigv4::encode_request(&req));

        use aws_sigv4::http_request::{
            sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
        };
        let identity = aws_credential_types::Credentials::new(
            sigv4::ROOT_KEY_ID,
            sigv4::ROOT_SECRET,
            None,
            None,
            "seed",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(Duration::from_secs(300));
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
        put("sigv4", "presigned", &sigv4::encode_request(&req));
    }

    /// The fixture snapshot's files, raw and as (body, pages) for the
    /// repairing flags.
    fn snapshots() {
        let dir = working_set::fixture_dir();
        let state = std::fs::read(dir.join("state.thaw")).unwrap();
        let memory = std::fs::read(dir.join("memory.thaw")).unwrap();
        let prefixed = |a: &[u8], b: &[u8]| [&(a.len() as u16).to_le_bytes()[..], a, b].concat();
        put(
            "snapshot_state",
            "raw",
            &with_flags(0, &prefixed(&state, &memory)),
        );
        let both = snapshot::FIX_STATE_HEADER | snapshot::FIX_MEMORY_HEADER;
        put(
            "snapshot_state",
            "repaired",
            &with_flags(both, &prefixed(&state[56..], &memory[4096..])),
        );
        let meta = std::fs::read(
            repo().join("crates/thawd/tests/fixtures/snapshot-meta/stored/thaw-snapshot.json"),
        )
        .unwrap();
        put(
            "snapshot_state",
            "meta",
            &with_flags(0, &prefixed(&meta, b"")),
        );
    }

    fn working_sets() {
        let page = thaw_snapshot::PAGE_SIZE;
        let (a, f) = (working_set::ANON.0, working_set::FILE.0);
        // Saved pages, a page never saved (a zero run), unaligned and
        // repeated addresses, one outside the snapshot.
        let recorded = [a + 9 * page, a, a + page + 7, a, a + 12 * page, f + page, 1];
        let list: Vec<u8> = recorded.iter().flat_map(|x| x.to_le_bytes()).collect();
        put(
            "working_set",
            "record",
            &with_flags(working_set::RECORD, &list),
        );
        let dir = tempfile::tempdir().unwrap();
        let snap = thaw_snapshot::image::Snapshot::open(working_set::fixture_dir()).unwrap();
        let path = dir.path().join("ws");
        thaw_snapshot::workingset::write(&snap, &recorded, &path).unwrap();
        let file = std::fs::read(&path).unwrap();
        put("working_set", "raw", &with_flags(0, &file));
        let counts_and_body = [&file[48..72], &file[4096..]].concat();
        put(
            "working_set",
            "repaired",
            &with_flags(working_set::FIX_HEADER, &counts_and_body),
        );
    }

    fn chunks() {
        let fixture = repo().join("crates/thaw-store/tests/fixtures/store-v1");
        let chunk_dir = fixture.join("chunks/00");
        for e in std::fs::read_dir(chunk_dir).unwrap() {
            put(
                "store_chunk",
                "golden",
                &with_flags(0, &std::fs::read(e.unwrap().path()).unwrap()),
            );
        }
        let text = b"def handler(event, context):\n    return {'ok': True}\n".repeat(20);
        let compressed = zstd::bulk::compress(&text, 3).unwrap();
        let rest = [&(text.len() as u32).to_le_bytes()[..], &compressed].concat();
        put(
            "store_chunk",
            "encrypted",
            &with_flags(store::ENCRYPT_CHUNK, &rest),
        );
        let key = thaw_store::chunk::convergent_key(&[1; 32], &text);
        let sealed = thaw_store::chunk::seal(&key, &text).unwrap();
        put("store_chunk", "sealed", &with_flags(0, &sealed));

        let manifest =
            std::fs::read(fixture.join("manifests/golden/snapshots/hello/rev1/memory")).unwrap();
        put("store_manifest", "golden", &with_flags(0, &manifest));
        let m = thaw_store::Manifest {
            version: thaw_store::manifest::MANIFEST_VERSION,
            tenant: store::TENANT.into(),
            name: store::BLOB.into(),
            size: 5000,
            digest: blake3::hash(b"x").to_hex().to_string(),
            chunks: vec![
                thaw_store::manifest::ChunkRef {
                    id: blake3::hash(b"a").to_hex().to_string(),
                    key: thaw_store::manifest::hex(&[5; 32]),
                    offset: 0,
                    len: 4096,
                },
                thaw_store::manifest::ChunkRef {
                    id: blake3::hash(b"b").to_hex().to_string(),
                    key: thaw_store::manifest::hex(&[6; 32]),
                    offset: 4096,
                    len: 904,
                },
            ],
        };
        let body = serde_json::to_vec(&m).unwrap();
        put(
            "store_manifest",
            "body",
            &with_flags(store::ENCRYPT_MANIFEST, &body),
        );
        let keys = thaw_store::TenantKeys::derive(&store::MASTER, store::TENANT);
        put(
            "store_manifest",
            "sealed",
            &with_flags(0, &m.seal(&keys).unwrap()),
        );
    }

    fn frames() {
        let invoke = ToSupervisor::Invoke(Invocation {
            request_id: "8f3a".into(),
            deadline_ms: 1_767_225_600_000,
            invoked_function_arn: "arn:aws:lambda:us-east-1:123456789012:function:f".into(),
            trace_id: Some("Root=1-5759e988-bd862e3fe1be46a994272793".into()),
            client_context: Some(r#"{"custom":{"a":1}}"#.into()),
            cognito_identity: None,
        });
        let to = [
            encode_frame(&invoke, br#"{"key":"value"}"#).unwrap(),
            encode_frame(&ToSupervisor::Resume, b"").unwrap(),
        ]
        .concat();
        put("control_frames", "to-supervisor", &to);
        let from = [
            encode_frame(
                &FromSupervisor::SandboxReady {
                    setup_ms: 1.5,
                    restore_ms: 0.25,
                    memory_ms: 0.0,
                },
                b"",
            )
            .unwrap(),
            encode_frame(&FromSupervisor::Waiting, b"").unwrap(),
            encode_frame(
                &FromSupervisor::Error {
                    request_id: "8f3a".into(),
                    error_type: "Runtime.Unhandled".into(),
                },
                br#"{"errorMessage":"boom"}"#,
            )
            .unwrap(),
            encode_frame(
                &FromSupervisor::Exited {
                    code: Some(1),
                    signal: None,
                },
                b"",
            )
            .unwrap(),
        ]
        .concat();
        put("control_frames", "from-supervisor", &from);
        let answers = [
            pages::answer(Ok(b"")),
            pages::answer(Ok(&[0])),
            pages::answer(Err("range past the end")),
        ]
        .concat();
        put("control_frames", "page-answers", &answers);
    }

    fn page_requests() {
        let reqs: [(u64, u32); 7] = [
            (pages::LENGTH, 0),
            (0, 4096),
            (5999, 2),
            (45_056, 4096),
            (49_999, 2),
            (u64::MAX - 1, 5),
            (0, pages::MAX_REQUEST + 1),
        ];
        let mut out = Vec::new();
        for (offset, len) in reqs {
            pages::request(&mut out, offset, len).unwrap();
        }
        put("page_requests", "requests", &out);
    }

    fn runtime_sessions() {
        use thaw_fuzz_targets::runtime_api::encode_session;
        let base = "/2018-06-01/runtime";
        let get = |p: &str| {
            http::Request::get(format!("{base}{p}"))
                .body(Vec::new())
                .unwrap()
        };
        let post = |p: &str, body: &[u8]| {
            http::Request::post(format!("{base}{p}"))
                .header("content-type", "application/json")
                .body(body.to_vec())
                .unwrap()
        };
        let mut next = get("/invocation/next");
        next.headers_mut().insert(
            "x-thaw-function-init-ms",
            http::HeaderValue::from_static("12.5"),
        );
        let mut error = post(
            "/invocation/inv-1/error",
            br#"{"errorType":"ValueError","errorMessage":"x"}"#,
        );
        error.headers_mut().insert(
            "lambda-runtime-function-error-type",
            http::HeaderValue::from_static("Runtime.Unhandled"),
        );
        let normal = [
            next,
            post("/invocation/inv-0/response", br#"{"ok":true}"#),
            get("/invocation/next"),
            error,
            post("/invocation/inv-1/response", b"again"),
            post("/init/error", br#"{"errorType":"Init"}"#),
            get("/nowhere"),
        ];
        put("runtime_api", "normal", &encode_session(0, &normal));
        let snapshot_run = [
            get("/invocation/next"),
            post("/invocation/inv-0/response", b"{}"),
            get("/restore/next"),
        ];
        put(
            "runtime_api",
            "snapshot-run",
            &encode_session(1, &snapshot_run),
        );
        let restored = [
            get("/restore/next"),
            post("/restore/error", br#"{"errorType":"Hook"}"#),
            get("/invocation/next"),
        ];
        put("runtime_api", "restored", &encode_session(2, &restored));
    }

    /// Writes the seed inputs into `fuzz/corpus/<target>/seed-*`.
    #[test]
    #[ignore = "writes the fuzz corpus seeds; run once by hand"]
    fn write_seeds() {
        api();
        zips();
        signed();
        snapshots();
        working_sets();
        chunks();
        frames();
        page_requests();
        runtime_sessions();
    }
}
