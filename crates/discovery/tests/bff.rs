//! The example BFF (`examples/bff-node`) as a shop runs it: `discovery up`
//! and the BFF as real processes (Node 20, the BFF on the packaged
//! TypeScript client over gRPC), driven with HTTP as a shop's pages drive
//! it. Checks the answers of both routes, that hostile input stops at the
//! BFF with a status a page can act on, and that one trace runs from the
//! BFF's server span through the gateway to the face-analysis and
//! recommendation services (the BFF sends `traceparent`), all exported
//! over OTLP to a receiver in this test.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use discovery_harness::http::{Reply, curl};
use discovery_harness::otlp::{Receiver, Span, child_of};
use discovery_harness::up::Up;
use discovery_harness::workspace_root;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// The BFF process; SIGTERM on drop (it flushes its spans), then killed.
struct Bff(Child);

impl Bff {
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Bff {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The BFF's dependencies, installed as `make test` installs them
/// (`scripts/check-clients.sh build`) when they are not there yet.
fn installed_bff(root: &Path) -> std::path::PathBuf {
    let dir = root.join("examples/bff-node");
    let ready = |d: &Path| {
        d.join("node_modules/fastify").is_dir()
            && d.join("node_modules/@discovery/client/dist/node.js")
                .is_file()
    };
    if !ready(&dir) {
        let status = Command::new(root.join("scripts/check-clients.sh"))
            .arg("build")
            .current_dir(root)
            .status()
            .expect("scripts/check-clients.sh runs");
        assert!(status.success(), "scripts/check-clients.sh build failed");
    }
    assert!(ready(&dir), "the BFF's node_modules after building");
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_bff(dir: &Path, up: &Up, otlp: &str) -> (Bff, String) {
    let port = free_port();
    let log = dir.join(format!("bff-{port}.log"));
    let child = Command::new("node")
        .arg("src/main.js")
        .current_dir(dir)
        .env("DISCOVERY_GATEWAY", up.base_url())
        .env("DISCOVERY_API_KEY", &up.key)
        .env("PORT", port.to_string())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        .env("LOG_LEVEL", "warn")
        .stdout(std::fs::File::create(&log).expect("a log file"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts the BFF");
    let mut bff = Bff(child);
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..300 {
        if curl(&[], &format!("{base}/healthz"), None).status == 200 {
            let _ = std::fs::remove_file(&log);
            return (bff, base);
        }
        if let Ok(Some(status)) = bff.0.try_wait() {
            panic!(
                "the BFF exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bff.stop();
    panic!("the BFF never answered /healthz");
}

fn photo(args: &[&str], base: &str, query: &str, body: &[u8]) -> Reply {
    let mut all = vec!["-X", "POST"];
    all.extend_from_slice(args);
    curl(&all, &format!("{base}/fit{query}"), Some(body))
}

fn spans_of<'a>(spans: &'a [Span], trace: &[u8]) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.trace == trace).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_bff_fits_searches_refuses_and_traces_through_the_gateway() {
    let root = workspace_root();
    let dir = installed_bff(&root);
    let image = std::fs::read(root.join("models/testdata/astronaut.png"))
        .expect("models/testdata/astronaut.png: make test-models");
    let received = Receiver::start().await.expect("OTLP receiver");
    let mut up = Up::start(
        Path::new(env!("CARGO_BIN_EXE_discovery")),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", received.endpoint()),
            ("DISCOVERY_LIMIT_PARTNER", "off".into()),
        ],
    )
    .expect("discovery up");
    let (mut bff, base) = start_bff(&dir, &up, &received.endpoint());

    // Search: the demo catalogue's round frames under 150, understood.
    let mut found = None;
    for _ in 0..100 {
        let r = curl(
            &["-H", "x-shopper-id: shopper-1"],
            &format!("{base}/search?q=round%20under%20150&size=3"),
            None,
        );
        if r.status == 200 && r.json()["frames"].as_array().is_some_and(|f| !f.is_empty()) {
            found = Some(r.json());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let search = found.expect("search finds frames");
    let frames = search["frames"].as_array().unwrap();
    assert!(frames.len() <= 3, "{search}");
    for f in frames {
        assert_eq!(f["shape"], "round", "{search}");
        let price: f64 = f["price"]["amount"].as_str().unwrap().parse().unwrap();
        assert!(price <= 150.0, "{search}");
    }
    let kinds: Vec<&str> = search["understood"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"shape") && kinds.contains(&"price"),
        "{search}"
    );

    // Fit: the photo in, a face with millimetres and frames under 200 out.
    let fit = photo(
        &[
            "-H",
            "content-type: image/png",
            "-H",
            "x-shopper-id: shopper-1",
        ],
        &base,
        "?size=4&maxPrice=200",
        &image,
    );
    assert_eq!(fit.status, 200, "{}", fit.body);
    let fit = fit.json();
    assert_ne!(fit["face"]["shape"], "unspecified", "{fit}");
    let pd = fit["face"]["measurementsMm"]["pupillaryDistance"]
        .as_f64()
        .unwrap_or(0.0);
    assert!((50.0..80.0).contains(&pd), "a human PD in mm: {fit}");
    let frames = fit["frames"].as_array().expect("frames");
    assert_eq!(frames.len(), 4, "{fit}");
    for f in frames {
        let price: f64 = f["price"]["amount"].as_str().unwrap().parse().unwrap();
        assert!(price <= 200.0, "{fit}");
        assert!(!f["reasons"].as_array().unwrap().is_empty(), "{fit}");
    }
    assert!(fit["impressionId"].as_str().is_some_and(|s| !s.is_empty()));

    // Hostile or careless callers stop at the BFF with a status to act on.
    let text = photo(&["-H", "content-type: text/plain"], &base, "", b"hello");
    assert_eq!(text.status, 415, "{}", text.body);
    let pdf = photo(&["-H", "content-type: application/pdf"], &base, "", b"%PDF");
    assert_eq!(pdf.status, 415, "{}", pdf.body);
    let huge = vec![0u8; 16 * 1024 * 1024];
    let huge = photo(&["-H", "content-type: image/jpeg"], &base, "", &huge);
    assert_eq!(huge.status, 413, "{}", huge.body);
    let not_a_photo = photo(
        &["-H", "content-type: image/jpeg"],
        &base,
        "",
        b"not a jpeg",
    );
    assert_eq!(not_a_photo.status, 400, "{}", not_a_photo.body);
    assert!(
        not_a_photo.json()["code"] == "InvalidArgument",
        "the gateway's verdict, passed on: {}",
        not_a_photo.body
    );
    for (what, query) in [
        ("page size over 24", "?size=500"),
        ("negative price", "?maxPrice=-1"),
        ("unknown parameter", "?debug=1"),
    ] {
        let r = photo(&["-H", "content-type: image/png"], &base, query, &image);
        assert_eq!(r.status, 400, "{what}: {}", r.body);
    }
    let bad_shopper = photo(
        &[
            "-H",
            "content-type: image/png",
            "-H",
            "x-shopper-id: ../../etc",
        ],
        &base,
        "",
        &image,
    );
    assert_eq!(bad_shopper.status, 400, "{}", bad_shopper.body);
    let long_query = "a".repeat(300);
    let r = curl(&[], &format!("{base}/search?q={long_query}"), None);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = curl(&[], &format!("{base}/search"), None);
    assert_eq!(r.status, 400, "{}", r.body);
    // Still serving after all of that.
    let r = curl(&[], &format!("{base}/search?q=round"), None);
    assert_eq!(r.status, 200, "{}", r.body);

    // A page that sends its own traceparent has the BFF continue its trace.
    let page_trace = "4bf92f3577b34da6a3ce929d0e0736aa";
    let r = curl(
        &[
            "-H",
            &format!("traceparent: 00-{page_trace}-00f067aa0ba902b7-01"),
        ],
        &format!("{base}/search?q=aviator"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // Flush: both processes export on SIGTERM.
    bff.stop();
    up.stop();
    let spans = received.spans();

    // POST /fit: BFF server (root) -> BFF client -> gateway server ->
    // the face analysis and the recommendation under it.
    let fits: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.name == "POST /fit"
                && s.service == "bff-example"
                && s.kind == SpanKind::Server as i32
                && s.parent.is_empty()
        })
        .collect();
    assert!(!fits.is_empty(), "the BFF exported its spans");
    // The fit that was answered (the refused ones never left the BFF).
    let fit_span = fits
        .iter()
        .find(|s| {
            spans_of(&spans, &s.trace)
                .iter()
                .any(|c| c.name == "discovery.v1.FaceAnalysis/AnalyzeFace")
        })
        .expect("a fit's trace reaches the face analysis");
    let trace = spans_of(&spans, &fit_span.trace);
    let client = child_of(&trace, fit_span, |s| {
        s.service == "bff-example" && s.kind == SpanKind::Client as i32
    });
    assert_eq!(client.name, "discovery.v1.Discovery/AnalyzeAndRecommend");
    let gateway = child_of(&trace, client, |s| {
        s.service == "discovery" && s.kind == SpanKind::Server as i32
    });
    // Everything else in the trace descends from the gateway's span.
    let under_gateway = |s: &Span| {
        let mut at = s;
        for _ in 0..64 {
            if at.id == gateway.id {
                return true;
            }
            match trace.iter().find(|p| p.id == at.parent) {
                Some(p) => at = p,
                None => return false,
            }
        }
        false
    };
    // The recommendation's journey (analysis, then ranking), the face
    // analysis with its model stages, the ranking's cache lookup.
    for (name, kind) in [
        ("discovery.v1.Journey/AnalyzeAndRecommend", SpanKind::Server),
        ("discovery.v1.FaceAnalysis/AnalyzeFace", SpanKind::Server),
        ("face.mesh", SpanKind::Internal),
        ("cache recommendations", SpanKind::Internal),
    ] {
        let served = trace
            .iter()
            .find(|s| s.name == name && s.kind == kind as i32)
            .unwrap_or_else(|| panic!("{name} in the fit's trace"));
        assert!(under_gateway(served), "{name} under the gateway's span");
    }

    // The page's trace: its id kept, the BFF's span a child of the page's.
    let page: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&page_trace[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let searched = spans_of(&spans, &page);
    assert!(
        searched
            .iter()
            .any(|s| s.service == "bff-example" && s.name == "GET /search"),
        "the BFF continued the page's trace"
    );
    assert!(
        searched.iter().any(|s| s.service == "discovery"),
        "the gateway is in the page's trace"
    );
}
