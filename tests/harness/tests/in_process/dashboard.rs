//! The live dashboard in real headless Chromium (Debian `chromium`): real
//! load through the all-in-one system, this process's metrics scraped into
//! a dashboard whose alert hub gets one alert injected the way the rule
//! engine publishes them. The page must load without console errors, draw
//! charts with data, the alert and a forecast from four weeks of stored
//! hours (`crates/discovery/tests/dashboard.rs` drives the page of
//! `discovery up` with clicks).

use crate::common::TestApp;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use discovery_monitoring::collect::Source;
use discovery_monitoring::dashboard::{Dashboard, router};
use discovery_monitoring::rules::{Engine, Observation, Signal, default_rules};
use discovery_monitoring::window::{History, Snapshot};
use discovery_monitoring::{Fleet, Hub, sla};
use discovery_proto::v1 as pb;

const FLAGS: &[&str] = &[
    "--window-size=1360,2400",
    "--virtual-time-budget=8000",
    "--enable-logging=stderr",
    "--v=0",
];

async fn scrape(history: &Arc<Mutex<History>>) {
    let values = Source::Local.read().await.unwrap().into_iter().collect();
    history.lock().unwrap().push(Snapshot {
        at: tokio::time::Instant::now(),
        values,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_live_data_and_alerts_in_chromium() {
    let browser = discovery_harness::browser::chromium().expect("chromium");
    let system = TestApp::builder().start().await;
    let gw = system.gateway().await;

    // Load in rounds, a scrape after each: the charts get a time series.
    let history = Arc::new(Mutex::new(History::default()));
    scrape(&history).await;
    for round in 0..12u32 {
        let calls = (0..40u32).map(|i| {
            let mut gw = gw.clone();
            async move {
                gw.recommend(pb::RecommendRequest {
                    face: Some(pb::FaceContext {
                        face_shape: 1 + ((i + round) % 7) as i32,
                        face_width_mm: 126.0 + (i % 12) as f32,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .expect("Recommend")
            }
        });
        futures::future::join_all(calls).await;
        let mut g = gw.clone();
        let _ = g
            .search_products(pb::SearchProductsRequest {
                query: "round acetate".into(),
                ..Default::default()
            })
            .await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        scrape(&history).await;
    }

    // One alert, published the way the rule engine publishes them.
    let store = discovery_kit::store::StoreConfig::Memory
        .connect(discovery_kit::store::Workload::Analytics)
        .await
        .unwrap();
    let hub = Hub::new(store.clone(), None);
    let mut engine = Engine::new(default_rules());
    let low = [Observation {
        signal: Signal::CacheHitRate,
        labels: [("kind".to_string(), "product".to_string())].into(),
        value: 0.42,
    }];
    // Pending first; firing once it has lasted the rule's 5 minutes.
    let start = tokio::time::Instant::now();
    assert!(engine.evaluate(start, &low).is_empty());
    let now = start + std::time::Duration::from_secs(300);
    let fired = engine.evaluate(now, &low);
    assert_eq!(fired.len(), 1);
    hub.publish(&fired[0], now).await;

    // A shopper clicks a frame of a page: the "what sells" panel has a row.
    let mut g = gw.clone();
    let page = g
        .recommend(pb::RecommendRequest {
            requester: Some(pb::Requester {
                user_id: String::new(),
                session_id: "dashboard".into(),
            }),
            placement: "home".into(),
            ..Default::default()
        })
        .await
        .expect("Recommend")
        .into_inner();
    g.record_interaction(pb::RecordInteractionRequest {
        requester: Some(pb::Requester {
            user_id: String::new(),
            session_id: "dashboard".into(),
        }),
        product_id: page.items[0].product.clone().unwrap().id,
        kind: pb::InteractionKind::Click as i32,
        impression_id: page.impression_id,
        at_unix_ms: 0,
    })
    .await
    .expect("RecordInteraction");
    // The impression log flushes its rollups every 500 ms.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Four weeks of stored hours (as monitoring writes one an hour): the
    // forecast panel has a model, its back-test and the scenarios.
    let rates = discovery_monitoring::forecast::synthetic(28, 800.0, 0.02, 0.05);
    let last = discovery_kit::now_unix_ms() / 3_600_000 - 1;
    for (i, rate) in rates.iter().enumerate() {
        let hour = discovery_monitoring::store::Hour {
            start_ms: (last - (rates.len() - 1 - i) as i64) * 3_600_000,
            covered_s: 3600.0,
            services: [("gateway".to_string(), ((rate * 3600.0) as u64, 0))].into(),
        };
        discovery_monitoring::store::put_hour(&store, &hour)
            .await
            .unwrap();
    }
    // Where each series stands, as the evaluation loop records it.
    hub.record_standings(
        &default_rules(),
        &sla::observations(&history.lock().unwrap()),
    );
    hub.set_experiments(Some(pb::experiments_client::ExperimentsClient::new(
        system.internal("recommendation", "monitoring"),
    )));
    let app = router(Dashboard {
        history: history.clone(),
        fleet: Fleet::new(Vec::new(), store.clone()).unwrap(),
        hub,
        token: None,
        gateway_url: None,
    });
    // As the kit serves it: with peer addresses (the browser here is on
    // loopback, so no token is needed).
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    let url = format!("http://{addr}/dashboard");

    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            Command::new(browser)
                .args(discovery_harness::browser::HEADLESS)
                .args(FLAGS)
                .args(["--dump-dom", &url])
                .output()
                .expect("run chromium")
        }
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {log}");
    // Console messages reach stderr as `CONSOLE(...)` / `Uncaught` lines.
    let console_errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Uncaught") || (l.contains("CONSOLE") && l.contains("ERROR")))
        .collect();
    assert!(
        console_errors.is_empty(),
        "console errors: {console_errors:#?}"
    );
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the page never rendered data:\n{dom}"
    );
    // Every chart drew lines with points; the gateway is among them.
    for chart in ["chart-rate", "chart-p95", "chart-p99", "chart-errors"] {
        let at = dom.find(&format!("id=\"{chart}\"")).expect(chart);
        let tag_end = dom[at..].find('>').unwrap();
        let tag = &dom[at..at + tag_end];
        let points: usize = tag
            .split("data-points=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(points >= 10, "{chart}: {points} points ({tag})");
    }
    assert!(dom.contains("class=\"series\" data-service=\"gateway\""));
    assert!(
        dom.contains("data-rule=\"LowCacheHitRate\""),
        "the alert is not shown"
    );
    assert!(dom.contains("kind=product"));
    assert!(
        dom.contains("data-rule=\"ApiLatencyP95\" data-tier=\"ok\""),
        "SLA tier tiles missing"
    );
    assert!(
        dom.contains("data-service=\"monitoring\""),
        "the health panel is empty"
    );
    assert!(
        dom.contains("data-scenario=\"10x peak\"")
            && dom.contains("Back-test: fitted without the last 24 hours"),
        "the forecast panel is empty"
    );
    assert!(
        dom.contains("data-kind=\"recommendations\""),
        "cache rows missing"
    );
    assert!(
        dom.contains("data-variant=\"default\"") && dom.contains("data-placement=\"home\""),
        "the recommendation report panel has no rows"
    );

    // `DISCOVERY_SCREENSHOTS=dir`: the page with live data and a forecast
    // (docs/dashboard-forecast.png).
    if let Some(dir) = std::env::var_os("DISCOVERY_SCREENSHOTS") {
        let path = std::path::Path::new(&dir).join("dashboard-forecast.png");
        let shot = Command::new(browser)
            .args(discovery_harness::browser::HEADLESS)
            .args(FLAGS)
            .arg(format!("--screenshot={}", path.display()))
            .arg(&url)
            .output()
            .unwrap();
        assert!(shot.status.success());
    }
    system.stop().await.ok();
}
