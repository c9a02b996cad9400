//! The Connect translation against a stand-in upstream and a real key ring.

use super::*;
use crate::auth::Tier;
use crate::routes::Scope;
use discovery_proto::v1 as pb;
use parking_lot::Mutex;

/// A key ring with one key; the key.
async fn keys() -> (Arc<KeyRing>, String) {
    let store: discovery_kit::store::Store = discovery_kit::store::memory::MemoryStore::new();
    let (key, _) = crate::auth::create(&store, "shop", Tier::Authenticated, &[Scope::Public])
        .await
        .unwrap();
    let ring = Arc::new(KeyRing::default());
    ring.refresh(&store).await.unwrap();
    (ring, key)
}

/// An upstream stand-in: records the gRPC request it got and answers
/// with `answer` (a gRPC response).
fn upstream(seen: Arc<Mutex<Option<(HeaderMap, Bytes)>>>, answer: fn() -> Response<Body>) -> Next {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Request<Body>| {
        let seen = seen.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            *seen.lock() = Some((parts.headers, bytes));
            Ok::<_, std::convert::Infallible>(answer())
        }
    }))
}

fn grpc_ok(message: impl Message) -> Response<Body> {
    let m = message.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(m.len() as u32).to_be_bytes());
    framed.extend_from_slice(&m);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("x-served-by", HeaderValue::from_static("replica-1"));
    let frames = futures::stream::iter([
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(framed))),
        Ok(http_body::Frame::trailers(trailers)),
    ]);
    let mut resp = Response::new(Body::new(http_body_util::StreamBody::new(frames)));
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    resp
}

fn product_answer() -> Response<Body> {
    grpc_ok(pb::GetProductResponse {
        product: Some(pb::Product {
            id: "shopify:acme:1".into(),
            name: "Round acetate".into(),
            ..Default::default()
        }),
    })
}

fn limited_answer() -> Response<Body> {
    let mut resp = tonic::Status::resource_exhausted("Recommend: 60 calls a minute; wait 7 s")
        .into_http::<Body>();
    resp.headers_mut()
        .insert("retry-after", HeaderValue::from_static("7"));
    resp
}

fn post(path: &str, key: &str, content_type: &'static str, body: &'static [u8]) -> Request<Body> {
    post_bytes(path, key, content_type, Bytes::from_static(body))
}

fn post_bytes(path: &str, key: &str, content_type: &'static str, body: Bytes) -> Request<Body> {
    Request::post(path)
        .header("content-type", content_type)
        .header("x-api-key", key)
        .header("connect-protocol-version", "1")
        .body(Body::new(http_body_util::Full::new(body)))
        .unwrap()
}

async fn read(resp: Response<Body>) -> (StatusCode, HeaderMap, serde_json::Value) {
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (parts.status, parts.headers, json)
}

/// One Connect call through `svc`: status, headers, body as JSON.
async fn connect_call(
    svc: &mut Connect<Next>,
    path: &str,
    key: &str,
    content_type: &'static str,
    body: &'static [u8],
) -> (StatusCode, HeaderMap, serde_json::Value) {
    read(svc.call(post(path, key, content_type, body)).await.unwrap()).await
}

fn service(keys: Arc<KeyRing>, inner: Next) -> Connect<Next> {
    ConnectLayer::new(keys, Duration::from_secs(5)).layer(inner)
}

#[tokio::test]
async fn a_json_call_becomes_the_grpc_call_it_names_and_its_answer_json() {
    let (ring, key) = keys().await;
    let seen = Arc::new(Mutex::new(None));
    let mut svc = service(ring, upstream(seen.clone(), product_answer));
    let req = post(
        "/discovery.v1.Discovery/GetProduct",
        &key,
        "application/json; charset=utf-8",
        br#"{"id": "shopify:acme:1"}"#,
    );
    let req = {
        let mut r = req;
        r.headers_mut()
            .insert("connect-timeout-ms", HeaderValue::from_static("1500"));
        r
    };
    let (status, headers, json) = read(svc.call(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(json["product"]["id"], "shopify:acme:1");
    assert_eq!(json["product"]["name"], "Round acetate");
    assert_eq!(headers["trailer-x-served-by"], "replica-1");
    let (sent, body) = seen.lock().take().unwrap();
    assert_eq!(sent["content-type"], "application/grpc");
    assert_eq!(sent["grpc-timeout"], "1500000u");
    assert!(sent.get("connect-timeout-ms").is_none());
    let request = pb::GetProductRequest::decode(&body[5..]).unwrap();
    assert_eq!(request.id, "shopify:acme:1");
}

#[tokio::test]
async fn a_binary_call_passes_its_bytes() {
    let (ring, key) = keys().await;
    let seen = Arc::new(Mutex::new(None));
    let mut svc = service(ring, upstream(seen.clone(), product_answer));
    let request = pb::GetProductRequest { id: "p".into() }.encode_to_vec();
    let body: &'static [u8] = Box::leak(request.clone().into_boxed_slice());
    let resp = svc
        .call(post(
            "/discovery.v1.Discovery/GetProduct",
            &key,
            "application/proto",
            body,
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/proto");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let answer = pb::GetProductResponse::decode(bytes).unwrap();
    assert_eq!(answer.product.unwrap().id, "shopify:acme:1");
    assert_eq!(&seen.lock().take().unwrap().1[5..], &request[..]);
}

#[tokio::test]
async fn refusals_are_connect_errors_with_their_http_status() {
    let (ring, key) = keys().await;
    let seen = Arc::new(Mutex::new(None));
    let mut svc = service(ring.clone(), upstream(seen.clone(), limited_answer));
    // Limited upstream of here: 429, the code, the message, retry-after.
    let (status, headers, json) = connect_call(
        &mut svc,
        "/discovery.v1.Discovery/Recommend",
        &key,
        "application/json",
        b"{}",
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json["code"], "resource_exhausted");
    assert!(json["message"].as_str().unwrap().contains("wait 7 s"));
    assert_eq!(headers["retry-after"], "7");
    assert!(headers.get("grpc-status").is_none());

    // No key: 401 before the body is read or anything is sent.
    seen.lock().take();
    let (status, _, json) = connect_call(
        &mut svc,
        "/discovery.v1.Discovery/Recommend",
        "dk_nope",
        "application/json",
        b"{}",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json["code"], "unauthenticated");
    assert!(seen.lock().is_none());

    // Bad JSON names the field; a wrong type says which.
    let (status, _, json) = connect_call(
        &mut svc,
        "/discovery.v1.Discovery/Recommend",
        &key,
        "application/json",
        br#"{"placement": "home", "faceShap": "oval"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json["code"], "invalid_argument");
    let message = json["message"].as_str().unwrap();
    assert!(message.contains("faceShap"), "{message}");
    assert!(message.contains("RecommendRequest"), "{message}");
    let (_, _, json) = connect_call(
        &mut svc,
        "/discovery.v1.Discovery/Recommend",
        &key,
        "application/json",
        br#"{"page": "many"}"#,
    )
    .await;
    assert_eq!(json["code"], "invalid_argument");
    assert!(json["message"].as_str().unwrap().contains("many"), "{json}");
    assert!(seen.lock().is_none(), "nothing bad went upstream");

    // Streams, unknown methods, GET, compressed bodies: unimplemented.
    for (req, why) in [
        (
            post(
                "/discovery.v1.Discovery/Converse",
                &key,
                "application/json",
                b"{}",
            ),
            "stream",
        ),
        (
            post(
                "/discovery.v1.Discovery/Nope",
                &key,
                "application/json",
                b"{}",
            ),
            "not a method",
        ),
        (
            {
                let mut r = post(
                    "/discovery.v1.Discovery/Recommend",
                    &key,
                    "application/json",
                    b"{}",
                );
                r.headers_mut()
                    .insert("content-encoding", HeaderValue::from_static("gzip"));
                r
            },
            "uncompressed",
        ),
    ] {
        let (status, _, json) = read(svc.call(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{why}");
        assert!(json["message"].as_str().unwrap().contains(why), "{json}");
    }
}

#[tokio::test]
async fn an_oversized_body_is_refused_without_being_decoded() {
    let (ring, key) = keys().await;
    let seen = Arc::new(Mutex::new(None));
    let mut svc = service(ring, upstream(seen.clone(), product_answer));
    let big: &'static [u8] = Box::leak(vec![b' '; 2 << 20].into_boxed_slice());
    let (status, _, json) = connect_call(
        &mut svc,
        "/discovery.v1.Discovery/GetProduct",
        &key,
        "application/json",
        big,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json["code"], "resource_exhausted");
    assert!(seen.lock().is_none());
}

#[tokio::test]
async fn hostile_json_is_refused_cheaply() {
    let (ring, key) = keys().await;
    let seen = Arc::new(Mutex::new(None));
    let mut svc = service(ring.clone(), upstream(seen.clone(), product_answer));
    // Nesting far past serde_json's recursion limit: refused, no overflow.
    let deep: &'static [u8] = Box::leak(
        format!(
            r#"{{"id": {}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    let (status, _, json) = connect_call(
        &mut svc,
        "/discovery.v1.Discovery/GetProduct",
        &key,
        "application/json",
        deep,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    // Trailing garbage after the message, and a huge number: refused.
    for body in [
        &br#"{"id": "p"} {"id": "q"}"#[..],
        br#"{"ids": [1e999999]}"#,
    ] {
        let (status, _, json) = connect_call(
            &mut svc,
            "/discovery.v1.Discovery/BatchGetProducts",
            &key,
            "application/json",
            body,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    }
    assert!(seen.lock().is_none());
    // With every decoding slot taken, a JSON call is shed at once.
    let mut full = ConnectLayer::new(ring, Duration::from_secs(5));
    full.decoding = Arc::new(tokio::sync::Semaphore::new(0));
    let mut svc = full.layer(upstream(seen.clone(), product_answer));
    let (status, headers, json) = connect_call(
        &mut svc,
        "/discovery.v1.Discovery/GetProduct",
        &key,
        "application/json",
        b"{}",
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
    assert_eq!(headers["retry-after"], "1");
}

#[test]
fn every_public_method_has_descriptors_and_every_code_a_name_and_status() {
    for r in routes::ROUTES {
        assert!(types_of(r).is_some(), "{}", r.method);
    }
    for n in 0..=16 {
        let code = Code::from_i32(n);
        assert!(!code_name(code).is_empty());
        assert!(http_status(code).as_u16() >= 200);
    }
    assert_eq!(
        http_status(Code::Unavailable),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// A gRPC stream's answer: `messages`, then trailers with `status`.
fn grpc_stream(messages: &[Vec<u8>], status: &'static str) -> Response<Body> {
    let mut frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = messages
        .iter()
        .map(|m| {
            let mut framed = vec![0u8];
            framed.extend_from_slice(&(m.len() as u32).to_be_bytes());
            framed.extend_from_slice(m);
            Ok(http_body::Frame::data(Bytes::from(framed)))
        })
        .collect();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    trailers.insert("grpc-message", HeaderValue::from_static("no%20such%20job"));
    trailers.insert("x-served-by", HeaderValue::from_static("replica-1"));
    frames.push(Ok(http_body::Frame::trailers(trailers)));
    let mut resp = Response::new(Body::new(http_body_util::StreamBody::new(
        futures::stream::iter(frames),
    )));
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    resp
}

fn two_events() -> Response<Body> {
    let events = [
        pb::ConverseEvent {
            event: Some(pb::converse_event::Event::Reply("round frames".into())),
        },
        pb::ConverseEvent {
            event: Some(pb::converse_event::Event::Reply("under 150".into())),
        },
    ];
    grpc_stream(&events.map(|e| e.encode_to_vec()), "0")
}

fn one_event_then_not_found() -> Response<Body> {
    let e = pb::SyncJob {
        job_id: "job-1".into(),
        ..Default::default()
    };
    grpc_stream(&[e.encode_to_vec()], "5")
}

/// A Connect stream's answer: its envelopes (flags, message).
async fn envelopes(resp: Response<Body>) -> (StatusCode, HeaderMap, Vec<(u8, Bytes)>) {
    let (parts, body) = resp.into_parts();
    let mut bytes = body.collect().await.unwrap().to_bytes();
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let flags = bytes[0];
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        out.push((flags, bytes.slice(5..5 + len)));
        bytes = bytes.slice(5 + len..);
    }
    assert!(bytes.is_empty(), "no trailing bytes after the envelopes");
    (parts.status, parts.headers, out)
}

fn enveloped(message: &[u8]) -> Bytes {
    let mut b = vec![0u8];
    b.extend_from_slice(&(message.len() as u32).to_be_bytes());
    b.extend_from_slice(message);
    Bytes::from(b)
}

fn end_of(envelopes: &[(u8, Bytes)]) -> serde_json::Value {
    let (flags, end) = envelopes.last().expect("an end-of-stream envelope");
    assert_eq!(*flags, 2, "the last envelope ends the stream");
    serde_json::from_slice(end).unwrap()
}

#[tokio::test]
async fn a_server_stream_relays_each_message_then_its_status() {
    let (ring, key) = keys().await;
    let seen = Arc::new(Mutex::new(None));
    let mut svc = service(ring, upstream(seen.clone(), two_events));
    let req = post_bytes(
        "/discovery.v1.Discovery/Converse",
        &key,
        "application/connect+json",
        enveloped(br#"{"sessionId": "s-1", "utterance": "round under 150"}"#),
    );
    let (status, headers, got) = envelopes(svc.call(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/connect+json");
    assert_eq!(got.len(), 3, "two messages and the end");
    let first: serde_json::Value = serde_json::from_slice(&got[0].1).unwrap();
    assert_eq!((got[0].0, &first["reply"]), (0, &"round frames".into()));
    let end = end_of(&got);
    assert!(end.get("error").is_none(), "{end}");
    assert_eq!(end["metadata"]["x-served-by"][0], "replica-1");
    let (sent, body) = seen.lock().take().unwrap();
    assert_eq!(sent["content-type"], "application/grpc");
    let request = pb::ConverseRequest::decode(&body[5..]).unwrap();
    assert_eq!(request.utterance, "round under 150");

    // Binary: gRPC's messages go as they came.
    let msg = pb::ConverseRequest {
        utterance: "round".into(),
        ..Default::default()
    };
    let (ring, key) = keys().await;
    let mut svc = service(ring, upstream(seen.clone(), two_events));
    let req = post_bytes(
        "/discovery.v1.Discovery/Converse",
        &key,
        "application/connect+proto",
        enveloped(&msg.encode_to_vec()),
    );
    let (_, headers, got) = envelopes(svc.call(req).await.unwrap()).await;
    assert_eq!(headers["content-type"], "application/connect+proto");
    let e = pb::ConverseEvent::decode(got[1].1.clone()).unwrap();
    assert_eq!(
        e.event,
        Some(pb::converse_event::Event::Reply("under 150".into()))
    );
    // A stranger's stream is refused in the stream's own way.
    let req = post_bytes(
        "/discovery.v1.Discovery/Converse",
        "dk_wrong",
        "application/connect+json",
        enveloped(b"{}"),
    );
    let (status, _, got) = envelopes(svc.call(req).await.unwrap()).await;
    assert_eq!((status, got.len()), (StatusCode::OK, 1));
    assert_eq!(end_of(&got)["error"]["code"], "unauthenticated");
}

#[tokio::test]
async fn a_stream_that_fails_ends_with_the_error_after_what_it_sent() {
    let (ring, key) = keys().await;
    let seen = Arc::new(Mutex::new(None));
    let mut svc = service(ring, upstream(seen.clone(), one_event_then_not_found));
    let req = post_bytes(
        "/discovery.v1.Discovery/WatchSyncJob",
        &key,
        "application/connect+json",
        enveloped(br#"{"jobId": "job-1"}"#),
    );
    let (_, _, got) = envelopes(svc.call(req).await.unwrap()).await;
    assert_eq!(got.len(), 2);
    let job: serde_json::Value = serde_json::from_slice(&got[0].1).unwrap();
    assert_eq!(job["jobId"], "job-1");
    let end = end_of(&got);
    assert_eq!(end["error"]["code"], "not_found");
    assert_eq!(end["error"]["message"], "no such job");

    // Refused before the call: limited (with its retry-after), and
    // requests that are not one plain envelope.
    let (ring, key) = keys().await;
    let mut svc = service(ring, upstream(seen.clone(), limited_answer));
    let req = post_bytes(
        "/discovery.v1.Discovery/WatchSyncJob",
        &key,
        "application/connect+json",
        enveloped(br#"{"jobId": "job-1"}"#),
    );
    let (_, _, got) = envelopes(svc.call(req).await.unwrap()).await;
    let end = end_of(&got);
    assert_eq!(end["error"]["code"], "resource_exhausted");
    assert_eq!(end["metadata"]["retry-after"][0], "7");
    *seen.lock() = None;
    let mut short = enveloped(br#"{"jobId": "job-1"}"#).to_vec();
    short.truncate(10);
    let mut compressed = enveloped(b"{}").to_vec();
    compressed[0] = 1;
    for (body, code, why) in [
        (Bytes::from(short), "invalid_argument", "prefix says"),
        (
            Bytes::from_static(b"{}"),
            "invalid_argument",
            "five-byte prefix",
        ),
        (Bytes::from(compressed), "unimplemented", "uncompressed"),
        (enveloped(br#"{"nope": 1}"#), "invalid_argument", "nope"),
    ] {
        let req = post_bytes(
            "/discovery.v1.Discovery/WatchSyncJob",
            &key,
            "application/connect+json",
            body,
        );
        let (_, _, got) = envelopes(svc.call(req).await.unwrap()).await;
        let end = end_of(&got);
        assert_eq!(end["error"]["code"], code, "{why}: {end}");
        assert!(
            end["error"]["message"].as_str().unwrap().contains(why),
            "{why}: {end}"
        );
    }
    assert!(seen.lock().is_none(), "nothing bad went upstream");

    // The wrong protocol for the method, and the client stream: each told
    // what to send instead.
    for (path, ct, why) in [
        (
            "/discovery.v1.Discovery/GetProduct",
            "application/connect+json",
            "is unary",
        ),
        (
            "/discovery.v1.Discovery/IngestCatalog",
            "application/connect+proto",
            "streams from the caller",
        ),
    ] {
        let req = post_bytes(path, &key, ct, enveloped(b"{}"));
        let (_, _, got) = envelopes(svc.call(req).await.unwrap()).await;
        let end = end_of(&got);
        assert_eq!(end["error"]["code"], "unimplemented");
        assert!(
            end["error"]["message"].as_str().unwrap().contains(why),
            "{end}"
        );
    }
}
