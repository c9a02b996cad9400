//! Bad input through the public API: malformed protobuf, broken frames,
//! oversized messages, huge strings, invalid UTF-8, deep nesting, and a
//! mutation fuzzer over valid requests of every read and write method.
//! Every case must answer a status a person can act on (never INTERNAL,
//! UNKNOWN or a reset stream), and afterwards the system must be healthy
//! with its data unchanged. (The image path has its own hostile-input test
//! in `crates/face-analysis/tests/image_input.rs`.)

use crate::common::TestApp;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use discovery_kit::rng::SplitMix;
use discovery_loadgen::grpc::frame;
use discovery_loadgen::{CallError, Target};
use discovery_proto::v1 as pb;
use prost::Message;

const RECOMMEND: &str = "/discovery.v1.Discovery/Recommend";
const SEARCH: &str = "/discovery.v1.Discovery/SearchProducts";
const GET: &str = "/discovery.v1.Discovery/GetProduct";
const BATCH_GET: &str = "/discovery.v1.Discovery/BatchGetProducts";
const INTERACTION: &str = "/discovery.v1.Discovery/RecordInteraction";
const UPDATE_SESSION: &str = "/discovery.v1.Discovery/UpdateSession";
const GET_SESSION: &str = "/discovery.v1.Discovery/GetSession";
const ANALYZE: &str = "/discovery.v1.Discovery/AnalyzeFace";

/// Codes that tell the caller what to fix (or that it asked for nothing).
const CLEAR: [i32; 5] = [
    3,  // INVALID_ARGUMENT
    5,  // NOT_FOUND
    8,  // RESOURCE_EXHAUSTED (too large)
    9,  // FAILED_PRECONDITION
    11, // OUT_OF_RANGE
];

/// A gRPC frame around arbitrary bytes.
fn raw(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(message.len() as u32);
    b.extend_from_slice(message);
    b.freeze()
}

/// Calls `path` with `body`; the gRPC code (0 for OK) and message.
async fn call(t: &Target, path: &'static str, body: Bytes) -> (i32, String) {
    match t.call(path, body, false).await {
        Ok(_) => (0, String::new()),
        Err(CallError::Status(code, message)) => (code, message),
        Err(e) => panic!("{path}: no gRPC answer: {e:?}"),
    }
}

/// Asserts the answer is a clear refusal; returns its message.
async fn refused(t: &Target, path: &'static str, body: Bytes, what: &str) -> String {
    let (code, message) = call(t, path, body).await;
    assert!(
        CLEAR.contains(&code),
        "{what} on {path}: code {code} ({message:?}) is not a clear refusal"
    );
    assert!(
        !message.is_empty(),
        "{what} on {path}: the refusal says why"
    );
    assert!(
        message.len() < 1_000,
        "{what} on {path}: the message stays short ({} bytes)",
        message.len()
    );
    message
}

fn valid_requests(product: &str) -> Vec<(&'static str, Bytes)> {
    let face = pb::FaceContext {
        face_shape: pb::FaceShape::Oval as i32,
        face_width_mm: 138.0,
        ..Default::default()
    };
    vec![
        (
            RECOMMEND,
            frame(&pb::RecommendRequest {
                face: Some(face.clone()),
                filter: Some(pb::ProductFilter {
                    max_price_minor: Some(30_000),
                    in_stock_only: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        ),
        (
            SEARCH,
            frame(&pb::SearchProductsRequest {
                query: "round acetate".into(),
                include_facets: true,
                ..Default::default()
            }),
        ),
        (GET, frame(&pb::GetProductRequest { id: product.into() })),
        (
            BATCH_GET,
            frame(&pb::BatchGetProductsRequest {
                ids: vec![product.into(), "nope".into()],
            }),
        ),
        (
            INTERACTION,
            frame(&pb::RecordInteractionRequest {
                requester: Some(pb::Requester {
                    session_id: "fuzz-session".into(),
                    ..Default::default()
                }),
                product_id: product.into(),
                kind: 1,
                ..Default::default()
            }),
        ),
        (
            UPDATE_SESSION,
            frame(&pb::UpdateSessionRequest {
                session: Some(pb::SessionContext {
                    session_id: "fuzz-session".into(),
                    face: Some(face.clone()),
                    ..Default::default()
                }),
            }),
        ),
        (
            GET_SESSION,
            frame(&pb::GetSessionRequest {
                session_id: "fuzz-session".into(),
            }),
        ),
    ]
}

/// One random edit of `b`: flip a bit, set a byte, cut, insert, repeat.
fn mutate(b: &[u8], r: &mut SplitMix) -> Vec<u8> {
    let mut v = b.to_vec();
    for _ in 0..=(r.next_u64() % 3) {
        let at = |r: &mut SplitMix, len: usize| (r.next_u64() as usize) % len.max(1);
        match r.next_u64() % 6 {
            0 if !v.is_empty() => {
                let i = at(r, v.len());
                v[i] ^= 1 << (r.next_u64() % 8);
            }
            1 if !v.is_empty() => {
                let i = at(r, v.len());
                v[i] = r.next_u64() as u8;
            }
            2 => {
                let n = at(r, v.len() + 1);
                v.truncate(n);
            }
            3 => {
                let i = at(r, v.len() + 1);
                let n = 1 + r.next_u64() % 16;
                let junk: Vec<u8> = (0..n).map(|_| r.next_u64() as u8).collect();
                v.splice(i..i, junk);
            }
            4 if !v.is_empty() => {
                let i = at(r, v.len());
                let j = (i + 1 + at(r, 8)).min(v.len());
                let piece = v[i..j].to_vec();
                v.splice(j..j, piece);
            }
            _ => {
                // A length-delimited field with a wild length.
                let i = at(r, v.len() + 1);
                v.splice(i..i, [0x0a, 0xff, 0xff, 0xff, 0x0f]);
            }
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_statuses_and_leaves_the_system_healthy() {
    let app = TestApp::builder().start().await;
    let t = app.target(1, Duration::from_secs(20)).await;
    let url = app.url();
    let mut gw = app.gateway().await;
    let listed = gw
        .search_products(pb::SearchProductsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let product = listed.hits[0].product.as_ref().unwrap().clone();
    let catalog_before = listed.page.as_ref().map(|p| p.total_size);
    let valid = valid_requests(&product.id);
    for (path, body) in &valid {
        assert_eq!(call(&t, path, body.clone()).await.0, 0, "{path} valid");
    }
    let mut cases = 0usize;

    // Not protobuf at all.
    for (path, _) in &valid {
        let m = refused(&t, path, raw(&[0xff; 12]), "garbage").await;
        assert!(m.contains("decode"), "{path}: {m}");
        cases += 1;
    }
    // Broken frames: a length past the end, compression never negotiated.
    let mut short = BytesMut::new();
    short.put_u8(0);
    short.put_u32(100);
    short.extend_from_slice(&[0x0a, 0x02, b'h', b'i']);
    refused(&t, SEARCH, short.freeze(), "truncated frame").await;
    let mut compressed = BytesMut::from(&frame(&pb::GetProductRequest { id: "x".into() })[..]);
    compressed[0] = 1;
    refused(&t, GET, compressed.freeze(), "compressed flag").await;
    cases += 2;
    // Oversized.
    let big = raw(&pb::SearchProductsRequest {
        query: "a".repeat(8 << 20),
        ..Default::default()
    }
    .encode_to_vec());
    let m = refused(&t, SEARCH, big, "8 MiB message").await;
    eprintln!("8 MiB message: {m}");
    let photo = frame(&pb::AnalyzeFaceRequest {
        input: Some(pb::analyze_face_request::Input::Image(vec![0u8; 20 << 20])),
        ..Default::default()
    });
    refused(&t, ANALYZE, photo, "20 MiB photo").await;
    cases += 2;
    // Huge strings (under the message limit).
    for (path, body) in [
        (
            SEARCH,
            frame(&pb::SearchProductsRequest {
                query: "aviator ".repeat(100_000),
                ..Default::default()
            }),
        ),
        (
            GET,
            frame(&pb::GetProductRequest {
                id: "x".repeat(1 << 20),
            }),
        ),
        (
            BATCH_GET,
            frame(&pb::BatchGetProductsRequest {
                ids: vec!["y".repeat(1 << 20)],
            }),
        ),
        (
            RECOMMEND,
            frame(&pb::RecommendRequest {
                requester: Some(pb::Requester {
                    session_id: "s".repeat(1 << 20),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        ),
        (
            INTERACTION,
            frame(&pb::RecordInteractionRequest {
                requester: Some(pb::Requester {
                    session_id: "fuzz".into(),
                    ..Default::default()
                }),
                product_id: "p".repeat(1 << 20),
                kind: 1,
                ..Default::default()
            }),
        ),
        (
            GET_SESSION,
            frame(&pb::GetSessionRequest {
                session_id: "g".repeat(1 << 20),
            }),
        ),
    ] {
        let m = refused(&t, path, body, "1 MiB string").await;
        eprintln!("1 MiB string on {path}: {m}");
        cases += 1;
    }
    // A placement and an impression id the service never issued.
    let m = refused(
        &t,
        RECOMMEND,
        frame(&pb::RecommendRequest {
            placement: "<script>".repeat(10),
            ..Default::default()
        }),
        "a made-up placement",
    )
    .await;
    assert!(m.starts_with("placement:"), "{m}");
    for forged in [
        "../../etc",
        &"f".repeat(64),
        "0123456789ABCDEF0123456789ABCDEF",
    ] {
        let m = refused(
            &t,
            INTERACTION,
            frame(&pb::RecordInteractionRequest {
                requester: Some(pb::Requester {
                    session_id: "fuzz-session".into(),
                    ..Default::default()
                }),
                product_id: product.id.clone(),
                kind: 2,
                impression_id: forged.to_string(),
                ..Default::default()
            }),
            "a forged impression id",
        )
        .await;
        assert!(m.starts_with("impression_id:"), "{m}");
        cases += 1;
    }
    // Invalid UTF-8 in a string field.
    let m = refused(
        &t,
        SEARCH,
        raw(&[0x0a, 0x03, 0xff, 0xfe, 0xfd]),
        "invalid UTF-8",
    )
    .await;
    assert!(m.contains("UTF-8"), "{m}");
    cases += 1;
    // Deep nesting: 100,000 nested groups, and a filter with 100,000 brands.
    let mut groups = Vec::new();
    for _ in 0..100_000 {
        groups.push((15 << 3) | 3); // start group, field 15
    }
    refused(&t, RECOMMEND, raw(&groups), "100k nested groups").await;
    let wide = frame(&pb::SearchProductsRequest {
        filter: Some(pb::ProductFilter {
            brands: (0..100_000).map(|i| format!("b{i}")).collect(),
            ..Default::default()
        }),
        ..Default::default()
    });
    refused(&t, SEARCH, wide, "100k filter values").await;
    cases += 2;

    // Mutation fuzzing: 300 edits of each valid request.
    let mut r = SplitMix(0xF022);
    let (mut fuzzed, mut accepted) = (0usize, 0usize);
    for (path, body) in &valid {
        let message = &body[5..];
        for _ in 0..300 {
            let m = mutate(message, &mut r);
            let (code, text) = call(&t, path, raw(&m)).await;
            assert!(
                code == 0 || CLEAR.contains(&code),
                "mutated {path} request {m:02x?}: code {code} ({text:?})"
            );
            fuzzed += 1;
            accepted += usize::from(code == 0);
        }
    }

    // Still healthy, same catalogue, same answers.
    let channel = tonic::transport::Channel::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: discovery_proto::service_names::DISCOVERY.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, tonic_health::ServingStatus::Serving as i32);
    for (path, body) in &valid {
        assert_eq!(call(&t, path, body.clone()).await.0, 0, "{path} after");
    }
    let after = gw
        .get_product(pb::GetProductRequest {
            id: product.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(after, product, "the product is unchanged");
    let catalog_after = gw
        .search_products(pb::SearchProductsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .page
        .map(|p| p.total_size);
    assert_eq!(catalog_after, catalog_before, "the catalogue is unchanged");
    eprintln!(
        "bad input: {cases} hand-made cases refused clearly; {fuzzed} mutated requests: \
         {accepted} still valid (OK), {} refused clearly, 0 INTERNAL/UNKNOWN/resets; \
         healthy and unchanged afterwards",
        fuzzed - accepted
    );
    let _ = app.stop().await;
}
