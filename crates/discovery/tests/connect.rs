//! JSON over HTTP, as a shop's tools send it: `discovery up` runs as a real
//! process and `curl` (HTTP/1.1 and HTTP/2 without TLS) calls every unary
//! public method with the Connect protocol: refused without a key, refused
//! with a clear `invalid_argument` naming the field for bad JSON, answered
//! for a valid request, and limited (429 with `retry-after`) past the key's
//! budget; one binary (`application/proto`) call too.

use std::process::Command;
use std::time::Duration;

use discovery_harness::up::Up;
use discovery_harness::workspace_root;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `curl` a Connect call (unary or stream, by `content_type`).
fn call(
    base: &str,
    method: &str,
    key: Option<&str>,
    http2: bool,
    content_type: &str,
    body: &[u8],
) -> discovery_harness::http::Reply {
    let content_type = format!("content-type: {content_type}");
    let key = key.map(|k| format!("x-api-key: {k}"));
    let mut args = vec![
        "-X",
        "POST",
        if http2 {
            "--http2-prior-knowledge"
        } else {
            "--http1.1"
        },
        "-H",
        &content_type,
        "-H",
        "connect-protocol-version: 1",
    ];
    if let Some(k) = &key {
        args.extend(["-H", k]);
    }
    discovery_harness::http::curl(
        &args,
        &format!("{base}/discovery.v1.Discovery/{method}"),
        Some(body),
    )
}

/// `curl` a Connect unary call: (HTTP status, headers, body as JSON or text).
fn curl(
    base: &str,
    method: &str,
    key: Option<&str>,
    http2: bool,
    content_type: &str,
    body: &[u8],
) -> (u16, String, serde_json::Value) {
    let r = call(base, method, key, http2, content_type, body);
    let json = r.json();
    (r.status, r.head, json)
}

/// Every unary public method, with a request it should answer.
fn valid_requests(product: &str, photo_b64: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AnalyzeFace", format!(r#"{{"image": "{photo_b64}"}}"#)),
        (
            "AnalyzeAndRecommend",
            format!(
                r#"{{"analyze": {{"image": "{photo_b64}"}}, "recommend": {{"placement": "after_analysis"}}}}"#
            ),
        ),
        ("GetFaceAnalysis", r#"{"analysisId": "missing"}"#.into()),
        (
            "Recommend",
            r#"{"face": {"faceShape": "FACE_SHAPE_OVAL"}, "placement": "home"}"#.into(),
        ),
        ("SearchProducts", r#"{"query": "round"}"#.into()),
        (
            "SimilarProducts",
            format!(r#"{{"productId": "{product}", "limit": 3}}"#),
        ),
        ("SuggestQueries", r#"{"prefix": "ro", "limit": 3}"#.into()),
        ("GetProduct", format!(r#"{{"id": "{product}"}}"#)),
        (
            "BatchGetProducts",
            format!(r#"{{"ids": ["{product}", "nope"]}}"#),
        ),
        ("GetTryOnPlacement", r#"{"analysisId": "missing"}"#.into()),
        (
            "RecordInteraction",
            format!(r#"{{"productId": "{product}", "kind": "INTERACTION_KIND_VIEW"}}"#),
        ),
        ("GetSession", r#"{"sessionId": "s-1"}"#.into()),
        ("UpdateSession", r#"{"session": {}}"#.into()),
        ("GetSyncJob", r#"{"jobId": "missing"}"#.into()),
        ("ListDeadLetters", "{}".into()),
        ("ReplayDeadLetters", "{}".into()),
        ("GetSlaReport", "{}".into()),
        ("ListAlerts", "{}".into()),
        ("GetSystemHealth", "{}".into()),
        ("GetCacheStatus", "{}".into()),
        ("WarmCache", "{}".into()),
        ("InvalidateCache", "{}".into()),
        ("StartExperiment", "{}".into()),
        ("StopExperiment", "{}".into()),
        ("ListExperiments", "{}".into()),
        ("GetRecommendationReport", "{}".into()),
        (
            "AcknowledgeAlert",
            r#"{"id": "missing", "note": "looking"}"#.into(),
        ),
        (
            "CreateSilence",
            r#"{"rule": "HighCpu", "durationSeconds": 60, "reason": "test"}"#.into(),
        ),
        ("ListSilences", r#"{"includeExpired": true}"#.into()),
        ("ExpireSilence", r#"{"id": "missing"}"#.into()),
        ("GetAlertHistory", "{}".into()),
        ("ListAlertDeliveries", r#"{"limit": 5}"#.into()),
        (
            "GetTrends",
            r#"{"metric": "TREND_METRIC_REQUEST_RATE", "periodSeconds": 600}"#.into(),
        ),
        (
            "GetCapacityForecast",
            r#"{"horizonSeconds": 86400, "growth": [0, 0.5]}"#.into(),
        ),
    ]
}

/// A product id from the demo catalogue through JSON, once the catalogue
/// is loaded (it may not be the moment the key is printed).
async fn first_product(base: &str, key: &str) -> String {
    for _ in 0..100 {
        let (status, _, json) = curl(
            base,
            "SearchProducts",
            Some(key),
            false,
            "application/json",
            br#"{"query": "frame"}"#,
        );
        if status == 200
            && let Some(id) = json["hits"][0]["product"]["id"].as_str()
        {
            return id.to_string();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("SearchProducts over JSON finds no product");
}

/// `discovery up` with `limits` for its partner key.
fn up(limits: &str) -> Up {
    Up::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_discovery")),
        &[("DISCOVERY_LIMIT_PARTNER", limits.to_string())],
    )
    .expect("discovery up")
}

#[tokio::test]
async fn every_unary_method_speaks_json_over_http() {
    let root = workspace_root();
    // The development key is a partner's: three Recommend calls a minute.
    let up = up("1000/m,recommend=3/m");
    let (base, key) = (up.base_url(), up.key.clone());

    // A product id from the demo catalogue, through JSON.
    let product = first_product(&base, &key).await;
    let photo = Command::new("base64")
        .args(["-w0", "models/testdata/astronaut.png"])
        .current_dir(&root)
        .output()
        .unwrap();
    let photo = String::from_utf8(photo.stdout).unwrap();
    assert!(!photo.is_empty(), "the test photo (make test-models)");

    let requests = valid_requests(&product, &photo);
    let unary: Vec<&str> = discovery_gateway::routes::ROUTES
        .iter()
        .filter(|r| !r.streaming)
        .map(|r| r.method)
        .collect();
    let covered: Vec<&str> = requests.iter().map(|r| r.0).collect();
    assert_eq!(covered.len(), unary.len(), "a request per unary method");
    for m in &unary {
        assert!(covered.contains(m), "no request for {m}");
    }

    for (i, (method, body)) in requests.iter().enumerate() {
        let http2 = i % 2 == 0;
        // No key: refused before anything else.
        let (status, head, json) = curl(
            &base,
            method,
            None,
            http2,
            "application/json",
            body.as_bytes(),
        );
        assert_eq!(status, 401, "{method} without a key: {head} {json}");
        assert_eq!(json["code"], "unauthenticated", "{method}");
        // Bad JSON: the field is named.
        let (status, _, json) = curl(
            &base,
            method,
            Some(&key),
            http2,
            "application/json",
            br#"{"noSuchField": 1}"#,
        );
        assert_eq!(status, 400, "{method} with an unknown field: {json}");
        assert_eq!(json["code"], "invalid_argument", "{method}");
        assert!(
            json["message"]
                .as_str()
                .unwrap_or_default()
                .contains("noSuchField"),
            "{method}: {json}"
        );
        let (status, _, json) = curl(&base, method, Some(&key), http2, "application/json", b"{\"");
        assert_eq!(
            (status, json["code"].as_str()),
            (400, Some("invalid_argument")),
            "{method}: truncated JSON: {json}"
        );
        // A valid request: answered by the service (an answer, or the
        // service's own verdict on the request: never the gateway's JSON
        // refusal).
        let (status, _, json) = curl(
            &base,
            method,
            Some(&key),
            http2,
            "application/json",
            body.as_bytes(),
        );
        let message = json["message"].as_str().unwrap_or_default();
        assert!(!message.contains("in JSON"), "{method}: {json}");
        assert!(
            status != 401 && status != 501 && status != 0,
            "{method}: {status} {json}"
        );
        match *method {
            "AnalyzeFace" => assert!(
                json["result"]["faceShape"].is_string(),
                "{method}: {status} {json}"
            ),
            "Recommend"
            | "SearchProducts"
            | "GetProduct"
            | "BatchGetProducts"
            | "SuggestQueries"
            | "GetSystemHealth"
            | "GetCacheStatus"
            | "ListAlerts"
            | "GetSlaReport"
            | "CreateSilence"
            | "ListSilences"
            | "GetAlertHistory"
            | "GetTrends"
            | "ListAlertDeliveries" => {
                assert_eq!(status, 200, "{method}: {json}")
            }
            // A system started just now has no hours to learn from.
            "GetCapacityForecast" => {
                assert_eq!(
                    (status, json["code"].as_str()),
                    (400, Some("failed_precondition")),
                    "{method}: {json}"
                );
                assert!(
                    json["message"].as_str().unwrap_or("").contains("72 hours"),
                    "{json}"
                );
            }
            // An alert or silence that does not exist: the service says so.
            "AcknowledgeAlert" | "ExpireSilence" => {
                assert_eq!(
                    (status, json["code"].as_str()),
                    (404, Some("not_found")),
                    "{method}: {json}"
                )
            }
            _ => {}
        }
        if *method == "GetProduct" {
            assert_eq!(json["product"]["id"], product.as_str());
        }
    }

    // Past the key's Recommend budget: 429, resource_exhausted, retry-after.
    let mut limited = None;
    for _ in 0..5 {
        let (status, head, json) = curl(
            &base,
            "Recommend",
            Some(&key),
            false,
            "application/json",
            b"{}",
        );
        if status == 429 {
            limited = Some((head, json));
            break;
        }
    }
    let (head, json) = limited.expect("the fourth Recommend in a minute is limited");
    assert_eq!(json["code"], "resource_exhausted");
    assert!(head.contains("retry-after:"), "{head}");

    // Binary: the same call's protobuf bytes, over HTTP/2.
    use prost::Message;
    let request = discovery_proto::v1::GetProductRequest {
        id: product.clone(),
    }
    .encode_to_vec();
    let (status, head, _) = curl(
        &base,
        "GetProduct",
        Some(&key),
        true,
        "application/proto",
        &request,
    );
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/proto"), "{head}");
}

/// Server streams over Connect (the streaming protocol's envelopes), as a
/// Connect client or curl sends them, on HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn server_streams_speak_connect() {
    let up = up("off");
    let (base, key) = (up.base_url(), up.key.clone());
    first_product(&base, &key).await;
    // Server streams over Connect: a conversation's events as they come,
    // then the end; a missing job's watch ends with its error.
    for http2 in [false, true] {
        let (status, head, got) = stream(
            &base,
            "Converse",
            &key,
            http2,
            br#"{"sessionId": "connect-1", "utterance": "round frames under 150"}"#,
        );
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("application/connect+json"), "{head}");
        let (flags, end) = got.last().expect("an end-of-stream envelope");
        assert_eq!(*flags, 2, "{got:?}");
        assert!(end.get("error").is_none(), "{end}");
        let events = &got[..got.len() - 1];
        assert!(
            events.iter().any(|(_, e)| e["results"]["hits"].is_array()),
            "the results among the events: {got:?}"
        );
        assert!(
            events.iter().any(|(_, e)| e["reply"].is_string()),
            "a reply among the events: {got:?}"
        );
    }
    let (status, _, got) = stream(&base, "WatchSyncJob", &key, true, br#"{"jobId": "nope"}"#);
    assert_eq!(status, 200);
    let (_, end) = got.last().expect("an end-of-stream envelope");
    assert_eq!(end["error"]["code"], "not_found", "{end}");
    let (_, _, got) = stream(&base, "IngestCatalog", &key, true, b"{}");
    assert_eq!(got.last().unwrap().1["error"]["code"], "unimplemented");
}

/// A Connect server stream with curl: (HTTP status, head, the envelopes as
/// (flags, JSON)).
fn stream(
    base: &str,
    method: &str,
    key: &str,
    http2: bool,
    json: &[u8],
) -> (u16, String, Vec<(u8, serde_json::Value)>) {
    let mut body = vec![0u8];
    body.extend_from_slice(&(json.len() as u32).to_be_bytes());
    body.extend_from_slice(json);
    let r = call(
        base,
        method,
        Some(key),
        http2,
        "application/connect+json",
        &body,
    );
    let mut rest = &r.raw[..];
    let mut envelopes = Vec::new();
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let message = &rest[5..(5 + len).min(rest.len())];
        envelopes.push((
            rest[0],
            serde_json::from_slice(message).unwrap_or(serde_json::Value::Null),
        ));
        rest = &rest[(5 + len).min(rest.len())..];
    }
    (r.status, r.head, envelopes)
}

/// `discovery admin` against the running system: JSON and text answers,
/// and exit codes that tell a refusal (3) from no gateway (4).
#[tokio::test]
async fn the_admin_cli_answers_and_its_exit_codes_say_why_not() {
    let up = up("off");
    let (url, key) = (up.base_url(), up.key.clone());
    let admin = |args: &[&str], key: &str, url: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_discovery"))
            .arg("admin")
            .args(args)
            .args(["--gateway", url, "--api-key", key])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let mut health = None;
    for _ in 0..50 {
        let (code, out, err) = admin(&["health", "--json"], &key, &url);
        if code == Some(0) {
            health = Some(out);
            break;
        }
        assert_ne!(code, Some(3), "{err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let health: serde_json::Value =
        serde_json::from_str(&health.expect("admin health answers")).expect("JSON");
    assert!(health.is_object(), "{health}");
    let (code, out, err) = admin(&["cache", "status"], &key, &url);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.trim().is_empty(), "text format");
    let (code, out, err) = admin(&["sla", "--json"], &key, &url);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str::<serde_json::Value>(&out).expect("the SLA report as JSON");
    let (code, _, err) = admin(&["alerts"], &key, &url);
    assert_eq!(code, Some(0), "{err}");
    // Refused: a wrong key (3). Unavailable: nothing listening (4).
    let (code, _, err) = admin(&["health"], "dk_wrong", &url);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("API key"), "{err}");
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (code, _, err) = admin(&["health"], &key, &closed);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("cannot connect"), "{err}");

    // Alert management: silence, list, expire; history; deliveries; an
    // acknowledgement of an alert that does not exist is refused (3).
    let (code, out, err) = admin(
        &[
            "silences",
            "create",
            "--rule",
            "HighCpu",
            "--label",
            "service=sync",
            "--for",
            "2h",
            "--reason",
            "batch import",
            "--json",
        ],
        &key,
        &url,
    );
    assert_eq!(code, Some(0), "{err}");
    let silence: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let id = silence["silence"]["id"]
        .as_str()
        .expect("an id")
        .to_string();
    assert_eq!(silence["silence"]["labels"]["service"], "sync");
    let (code, out, _) = admin(&["silences", "--json"], &key, &url);
    assert_eq!(code, Some(0));
    assert!(out.contains(&id), "{out}");
    let (code, _, err) = admin(&["silences", "expire", &id], &key, &url);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, _) = admin(&["silences", "--json"], &key, &url);
    assert_eq!(code, Some(0));
    assert!(!out.contains(&id), "expired: {out}");
    let (code, _, err) = admin(
        &[
            "silences", "create", "--rule", "HighCpu", "--for", "2h", "--reason", " ",
        ],
        &key,
        &url,
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("reason"), "{err}");
    let (code, out, err) = admin(
        &["alerts", "history", "--since", "2d", "--json"],
        &key,
        &url,
    );
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str::<serde_json::Value>(&out).expect("history as JSON");
    let (code, _, err) = admin(&["alerts", "deliveries"], &key, &url);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = admin(
        &["alerts", "ack", "no-such-alert", "--note", "on it"],
        &key,
        &url,
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("no alert"), "{err}");

    // Trends: the gateway's rate over 10 minutes (the calls above), as
    // JSON; a forecast needs history a system started now does not have
    // (3, and the hours it needs).
    let (code, out, err) = admin(
        &["trends", "--metric", "rate", "--period", "10m", "--json"],
        &key,
        &url,
    );
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str::<serde_json::Value>(&out).expect("trends as JSON");
    let (code, _, err) = admin(
        &["forecast", "--horizon", "2d", "--growth", "0,0.5"],
        &key,
        &url,
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("72 hours"), "{err}");
    let (code, _, err) = admin(&["trends", "--period", "3d"], &key, &url);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("period_seconds"), "{err}");

    // `try` and `sync` take the same flags and exit the same way.
    let cli = |args: &[&str], key: &str, url: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_discovery"))
            .args(args)
            .args(["--gateway", url, "--api-key", key])
            .current_dir(workspace_root())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let photo = [
        "try",
        "--photo",
        "models/testdata/astronaut.png",
        "--count",
        "2",
        "--json",
    ];
    let (code, out, err) = cli(&photo, &key, &url);
    assert_eq!(code, Some(0), "{err}");
    let tried: serde_json::Value = serde_json::from_str(&out).expect("try --json is JSON");
    assert!(tried["analysis"]["faceShape"].is_string(), "{tried}");
    assert_eq!(
        tried["recommendations"]["items"].as_array().map(Vec::len),
        Some(2)
    );
    let (code, out, err) = cli(&["try"], &key, &url);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Top 5 frames"), "{out}");
    assert_eq!(cli(&["try"], "dk_wrong", &url).0, Some(3));
    assert_eq!(cli(&["try"], &key, &closed).0, Some(4));
    let (code, _, err) = cli(&["try", "--face-shape", "hexagon"], &key, &url);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--face-shape"), "{err}");
    let feed = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        feed.path(),
        concat!(
            r#"{"id": 1, "title": "CLI Round", "vendor": "Acme", "tags": "shape:round, size:50-20-145", "updated_at": "2026-02-01T00:00:00Z", "variants": [{"sku": "CLI-1", "price": "99.00", "inventory_quantity": 3}]}"#,
            "\n",
            r#"{"id": 2, "title": "CLI Square", "vendor": "Acme", "tags": "shape:square, size:52-18-140", "updated_at": "2026-02-01T00:00:00Z", "variants": [{"sku": "CLI-2", "price": "120.00", "inventory_quantity": 0}]}"#,
            "\n",
        ),
    )
    .unwrap();
    let path = feed.path().to_str().unwrap();
    let (code, out, err) = cli(
        &["sync", path, "--source", "shopify:cli", "--json"],
        &key,
        &url,
    );
    assert_eq!(code, Some(0), "{err}");
    let job: serde_json::Value = serde_json::from_str(&out).expect("sync --json is JSON");
    assert_eq!(job["state"], "SYNC_JOB_STATE_SUCCEEDED", "{job}");
    assert_eq!(job["received"], "2", "{job}");
    let (code, _, err) = cli(&["sync", path, "--source", "shopify:cli"], "dk_wrong", &url);
    assert_eq!(code, Some(3), "{err}");
}
