//! Monitoring end to end: load through the all-in-one system's gateway,
//! then the SLA report counts exactly the calls made. Its own test binary
//! (one process, one test): the metrics registry is process-wide, so any
//! other test in the process would add its calls to the counts.

#[path = "../common/mod.rs"]
mod common;

use common::TestApp;

use std::time::Duration;

use discovery_proto::v1 as pb;
use discovery_proto::v1::monitoring_client::MonitoringClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sla_report_counts_every_call_made_through_the_gateway() {
    let app = TestApp::builder()
        .with("DISCOVERY_MONITORING_SCRAPE_INTERVAL", "100ms")
        .start()
        .await;
    let mut gw = app.gateway().await;
    let (recommends, searches, not_found) = (240u64, 60u64, 7u64);
    let calls = (0..recommends).map(|i| {
        let mut gw = gw.clone();
        async move {
            gw.recommend(pb::RecommendRequest {
                face: Some(pb::FaceContext {
                    face_shape: 1 + (i % 7) as i32,
                    face_width_mm: 125.0 + (i % 10) as f32,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("Recommend")
        }
    });
    futures::future::join_all(calls).await;
    for i in 0..searches {
        gw.search_products(pb::SearchProductsRequest {
            query: ["round", "aviator", "acetate"][i as usize % 3].into(),
            ..Default::default()
        })
        .await
        .expect("SearchProducts");
    }
    for i in 0..not_found {
        let e = gw
            .get_product(pb::GetProductRequest {
                id: format!("no-such-frame-{i}"),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    }

    // The next scrapes see every call (the report waits for none).
    let mut monitoring = MonitoringClient::new(app.internal("monitoring", "tests"));
    let count = |r: &pb::GetSlaReportResponse, service: &str, method: &str| {
        r.methods
            .iter()
            .filter(|m| m.service == service && m.method == method)
            .map(|m| (m.count, m.errors))
            .next()
            .unwrap_or((0, 0))
    };
    let want = (recommends, 0);
    let mut report = pb::GetSlaReportResponse::default();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(r) = monitoring
            .get_sla_report(pb::GetSlaReportRequest {
                service: String::new(),
                window: pb::Window::Window1h as i32,
            })
            .await
        {
            report = r.into_inner();
            if count(&report, "gateway", "/discovery.v1.Discovery/Recommend") == want {
                break;
            }
        }
    }
    assert_eq!(
        count(&report, "gateway", "/discovery.v1.Discovery/Recommend"),
        (recommends, 0)
    );
    assert_eq!(
        count(&report, "gateway", "/discovery.v1.Discovery/SearchProducts"),
        (searches, 0)
    );
    // NOT_FOUND is the caller's miss, not a server fault.
    assert_eq!(
        count(&report, "gateway", "/discovery.v1.Discovery/GetProduct"),
        (not_found, 0)
    );
    // Each gateway call is one upstream call.
    assert_eq!(
        count(
            &report,
            "recommendation",
            "/discovery.v1.Recommendation/Recommend"
        ),
        (recommends, 0)
    );
    let recommend = report
        .methods
        .iter()
        .find(|m| m.service == "gateway" && m.method == "/discovery.v1.Discovery/Recommend")
        .unwrap();
    assert!(recommend.p50_ms > 0.0 && recommend.p50_ms <= recommend.p95_ms);
    assert!(recommend.p95_ms <= recommend.p99_ms);
    assert_eq!(recommend.availability, 1.0);
    let target = |name: &str| {
        report
            .targets
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no target {name}: {:?}", report.targets))
    };
    assert!(target("api_p95_ms").met, "{:?}", target("api_p95_ms"));
    assert!(target("error_rate").met);
    assert!(
        report
            .caches
            .iter()
            .any(|c| c.kind == "recommendations" && c.hits + c.misses >= recommends),
        "{:?}",
        report.caches
    );
    // An unknown window is the caller's mistake, said plainly.
    let e = monitoring
        .get_sla_report(pb::GetSlaReportRequest {
            service: String::new(),
            window: 9,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    app.stop().await.ok();
}
