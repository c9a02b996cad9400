//! One trace per request across processes: the gateway, recommendation and
//! face-analysis run as real `discovery serve` processes (MongoDB-compatible
//! server from the harness for the API keys and analyses), exporting over
//! OTLP/gRPC to a receiver in this test. A `Recommend` and an `AnalyzeFace`
//! call through the gateway must each give one trace: the gateway's server
//! span as root, its client span as child, the upstream service's server
//! span under that, and that service's own work (cache lookups, store
//! operations, model stages) under it.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use discovery_harness::otlp::child_of;
use discovery_harness::{MongoServer, workspace_root};
use discovery_proto::v1 as pb;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

type Got = discovery_harness::otlp::Span;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Child processes, stopped with SIGTERM (so they flush their spans).
struct Procs(Vec<Child>);

impl Procs {
    fn stop(&mut self) {
        for c in &self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
        self.0.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn wait_serving(port: u16) {
    for _ in 0..300 {
        if let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
            if let Ok(r) = h
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                && r.into_inner().status == 1
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing serving on port {port}");
}

/// The spans of the trace whose gateway server span is for `method`.
fn trace_of<'a>(spans: &'a [Got], method: &str) -> (Got, Vec<&'a Got>) {
    let roots: Vec<&Got> = spans
        .iter()
        .filter(|s| {
            s.service == "gateway"
                && s.kind == SpanKind::Server as i32
                && s.attrs.get("rpc.method").map(String::as_str) == Some(method)
        })
        .collect();
    assert_eq!(roots.len(), 1, "one gateway server span for {method}");
    let root = roots[0].clone();
    assert!(root.parent.is_empty(), "the gateway's span is the root");
    let trace = spans.iter().filter(|s| s.trace == root.trace).collect();
    (root, trace)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_per_request_across_gateway_and_services() {
    let root = workspace_root();
    let photo = std::fs::read(root.join("models/testdata/astronaut.png"))
        .expect("models/testdata/astronaut.png: run scripts/fetch-models.sh --test-data");
    let mongo = MongoServer::start().await.expect("start mongo");
    let db = mongo.fresh_db("traces");

    // The OTLP receiver.
    let received = discovery_harness::otlp::Receiver::start()
        .await
        .expect("OTLP receiver");

    let bin = env!("CARGO_BIN_EXE_discovery");
    let (reco, face, gw) = (free_port(), free_port(), free_port());
    let common = |c: &mut Command| {
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("DISCOVERY_STORE", "mongodb")
            .env("DISCOVERY_MONGO_URI", mongo.uri())
            .env("DISCOVERY_MONGO_DATABASE", &db)
            .env("DISCOVERY_METRICS_PORT", "0")
            .env("DISCOVERY_SHUTDOWN_GRACE", "1s")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", received.endpoint())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };
    let out = {
        let mut c = Command::new(bin);
        common(&mut c);
        c.args([
            "keys", "create", "--client", "traces", "--tier", "partner", "--scopes", "public",
        ])
        .stdout(Stdio::piped())
        .output()
        .expect("discovery keys create")
    };
    assert!(out.status.success(), "keys create failed");
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let listed = {
        let mut c = Command::new(bin);
        common(&mut c);
        c.args(["keys", "list", "--json"])
            .stdout(Stdio::piped())
            .output()
            .expect("discovery keys list --json")
    };
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["client"] == "traces"
                && k["tier"] == "partner"
                && k["state"] == "active"
                && key.contains(k["id"].as_str().unwrap())),
        "{listed}"
    );

    let mut procs = Procs(Vec::new());
    let spawn = |args: &[&str], env: &[(&str, String)]| {
        let mut c = Command::new(bin);
        common(&mut c);
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.spawn().expect("spawn a service")
    };
    procs.0.push(spawn(
        &["serve", "recommendation"],
        &[
            ("DISCOVERY_RECOMMENDATION_PORT", reco.to_string()),
            ("DISCOVERY_DEMO_CATALOG", "200".into()),
            (
                "DISCOVERY_FACE_ANALYSIS_URLS",
                format!("http://127.0.0.1:{face}"),
            ),
        ],
    ));
    procs.0.push(spawn(
        &["serve", "face-analysis"],
        &[
            ("DISCOVERY_FACE_ANALYSIS_PORT", face.to_string()),
            (
                "DISCOVERY_FACE_MODELS_DIR",
                root.join("models").display().to_string(),
            ),
            ("DISCOVERY_FACE_WORKERS", "1".into()),
        ],
    ));
    procs.0.push(spawn(
        &["serve", "gateway"],
        &[
            ("DISCOVERY_GATEWAY_PORT", gw.to_string()),
            ("DISCOVERY_LIMITS", "off".into()),
            (
                "DISCOVERY_RECOMMENDATION_URLS",
                format!("http://127.0.0.1:{reco}"),
            ),
            (
                "DISCOVERY_FACE_ANALYSIS_URLS",
                format!("http://127.0.0.1:{face}"),
            ),
        ],
    ));
    for p in [reco, face, gw] {
        wait_serving(p).await;
    }

    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{gw}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let key: tonic::metadata::AsciiMetadataValue = key.parse().unwrap();
    let mut client = pb::discovery_client::DiscoveryClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("x-api-key", key.clone());
            Ok(r)
        },
    )
    .max_decoding_message_size(16 << 20)
    .max_encoding_message_size(16 << 20);
    let recs = client
        .recommend(pb::RecommendRequest {
            face: Some(pb::FaceContext {
                face_shape: pb::FaceShape::Oval as i32,
                face_width_mm: 135.0,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("Recommend through the gateway")
        .into_inner();
    assert!(!recs.items.is_empty());
    let analysis = client
        .analyze_face(pb::AnalyzeFaceRequest {
            requester: Some(pb::Requester {
                user_id: "u1".into(),
                session_id: "traces".into(),
            }),
            input: Some(pb::analyze_face_request::Input::Image(photo.clone())),
            include_landmarks: false,
        })
        .await
        .expect("AnalyzeFace through the gateway")
        .into_inner();
    assert!(analysis.result.is_some_and(|r| r.measurements.is_some()));
    let journey = client
        .analyze_and_recommend(pb::AnalyzeAndRecommendRequest {
            analyze: Some(pb::AnalyzeFaceRequest {
                input: Some(pb::analyze_face_request::Input::Image(photo)),
                ..Default::default()
            }),
            recommend: Some(pb::RecommendRequest {
                requester: Some(pb::Requester {
                    user_id: String::new(),
                    session_id: "journey".into(),
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("AnalyzeAndRecommend through the gateway")
        .into_inner();
    assert!(!journey.recommendations.unwrap().items.is_empty());

    // SIGTERM: each process flushes its spans before exiting.
    procs.stop();
    let spans = received.spans();

    // Recommend: gateway server -> gateway client -> recommendation server
    // -> the recommendation's cache lookup.
    let (root, trace) = trace_of(&spans, "Recommend");
    let client_span = child_of(&trace, &root, |s| {
        s.service == "gateway" && s.kind == SpanKind::Client as i32
    });
    assert_eq!(
        client_span.attrs.get("rpc.service").map(String::as_str),
        Some("discovery.v1.Recommendation")
    );
    let upstream = child_of(&trace, client_span, |s| {
        s.service == "recommendation" && s.kind == SpanKind::Server as i32
    });
    assert_eq!(
        upstream
            .attrs
            .get("rpc.grpc.status_code")
            .map(String::as_str),
        Some("0")
    );
    let services: std::collections::BTreeSet<&str> =
        trace.iter().map(|s| s.service.as_str()).collect();
    assert!(services.len() >= 2, "{services:?}");
    assert!(
        trace
            .iter()
            .any(|s| s.service == "recommendation" && s.attrs.contains_key("cache.kind")),
        "the recommendation's cache lookup is in the trace"
    );

    // AnalyzeFace: gateway -> face-analysis -> model stages and the store.
    let (root, trace) = trace_of(&spans, "AnalyzeFace");
    let client_span = child_of(&trace, &root, |s| {
        s.service == "gateway" && s.kind == SpanKind::Client as i32
    });
    let upstream = child_of(&trace, client_span, |s| {
        s.service == "face-analysis" && s.kind == SpanKind::Server as i32
    });
    let in_face: Vec<&str> = trace
        .iter()
        .filter(|s| s.service == "face-analysis")
        .map(|s| s.name.as_str())
        .collect();
    for stage in [
        "face.decode",
        "face.detect",
        "face.mesh",
        "face.iris",
        "face.measure",
    ] {
        assert!(in_face.contains(&stage), "{stage} missing: {in_face:?}");
    }
    let detect = trace.iter().find(|s| s.name == "face.detect").unwrap();
    assert_eq!(
        detect.attrs.get("face.count").map(String::as_str),
        Some("1")
    );
    assert!(
        trace.iter().any(|s| s.service == "face-analysis"
            && s.kind == SpanKind::Client as i32
            && s.attrs.get("db.collection.name").map(String::as_str) == Some("face_analyses")
            && s.attrs.get("db.system.name").map(String::as_str) == Some("mongodb")),
        "the stored analysis is a database client span: {in_face:?}"
    );
    // AnalyzeAndRecommend: one trace from the gateway through
    // recommendation to face-analysis and back to the ranking.
    let (root, journey) = trace_of(&spans, "AnalyzeAndRecommend");
    let client_span = child_of(&journey, &root, |s| {
        s.service == "gateway" && s.kind == SpanKind::Client as i32
    });
    let in_reco = child_of(&journey, client_span, |s| {
        s.service == "recommendation" && s.kind == SpanKind::Server as i32
    });
    let in_face = journey
        .iter()
        .find(|s| {
            s.service == "face-analysis"
                && s.kind == SpanKind::Server as i32
                && s.attrs.get("rpc.method").map(String::as_str) == Some("AnalyzeFace")
        })
        .expect("face-analysis' AnalyzeFace is in the journey's trace");
    // ...under recommendation's server span.
    let by_id: HashMap<&[u8], &Got> = journey.iter().map(|s| (s.id.as_slice(), *s)).collect();
    let mut at = in_face;
    while at.id != in_reco.id {
        at = by_id
            .get(at.parent.as_slice())
            .unwrap_or_else(|| panic!("AnalyzeFace is not under recommendation's call"));
    }
    assert!(
        journey
            .iter()
            .any(|s| s.service == "recommendation" && s.attrs.contains_key("cache.kind")),
        "the page's cache lookup is in the journey's trace"
    );
    assert!(in_reco.parent == client_span.id);

    // Every span of the trace hangs off the root.
    let ids: std::collections::HashSet<&[u8]> = trace.iter().map(|s| s.id.as_slice()).collect();
    for s in &trace {
        assert!(
            s.parent.is_empty() || ids.contains(s.parent.as_slice()),
            "{} ({}) has a parent outside the trace",
            s.name,
            s.service
        );
    }
    // The model stages run on a blocking thread, still under the call.
    let by_id: HashMap<&[u8], &Got> = trace.iter().map(|s| (s.id.as_slice(), *s)).collect();
    let mut at = detect;
    while at.id != upstream.id {
        at = by_id
            .get(at.parent.as_slice())
            .unwrap_or_else(|| panic!("face.detect is not under the face-analysis call"));
    }
}
