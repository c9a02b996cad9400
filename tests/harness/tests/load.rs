//! The load tool against the all-in-one system: it sends what the schedule
//! says, counts what the gateway counts (checked against monitoring's SLA
//! report), and files errors under their gRPC codes. Its own test binary:
//! the metrics registry is process-wide.

mod common;
use common::TestApp;

use std::sync::Arc;
use std::time::Duration;

use discovery_loadgen::{Corpus, Load, Mix, Op, Phase, Plan, RunOptions, Target};
use discovery_proto::v1 as pb;
use discovery_proto::v1::monitoring_client::MonitoringClient;

/// Calls the gateway counted per method (all codes), from the 1 h window.
async fn gateway_counts(
    monitoring: &mut MonitoringClient<discovery_kit::client::TracedChannel>,
) -> std::collections::BTreeMap<String, u64> {
    let r = monitoring
        .get_sla_report(pb::GetSlaReportRequest {
            service: "gateway".into(),
            window: pb::Window::Window1h as i32,
        })
        .await
        .expect("SLA report")
        .into_inner();
    r.methods
        .into_iter()
        .filter(|m| m.service == "gateway")
        .map(|m| (m.method, m.count))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_tool_sends_the_schedule_and_counts_what_the_gateway_counts() {
    let app = TestApp::builder()
        .with("DISCOVERY_MONITORING_SCRAPE_INTERVAL", "100ms")
        .start()
        .await;
    let target = app.target(2, Duration::from_secs(10)).await;
    let url = app.url();
    let plan =
        discovery_loadgen::scenario("normal", 300.0, None, Some(Duration::from_secs(2)), None)
            .unwrap();
    let corpus = Arc::new(Corpus::build(&target, &plan.mix, None).await.unwrap());
    assert!(corpus.product_ids >= 50, "{} products", corpus.product_ids);
    let warmed = corpus.warm(&target, &plan.mix).await.unwrap();
    assert!(warmed > 200, "{warmed}");

    let mut monitoring = MonitoringClient::new(app.internal("monitoring", "tests"));
    // The set-up calls are counted before the run starts.
    let mut before = Default::default();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        before = gateway_counts(&mut monitoring).await;
        let setup: u64 = before.values().sum();
        if setup == warmed + 7 {
            break;
        }
    }

    let report = discovery_loadgen::run(target, corpus, &plan, &RunOptions::default()).await;
    eprintln!("{}", report.to_markdown());
    // 300/s for 2 s.
    assert!((599..=601).contains(&report.sent), "{}", report.sent);
    assert_eq!(report.ok, report.sent, "{:?}", report.first_errors);
    assert_eq!((report.errors, report.not_sent), (0, 0));
    assert!(report.clean());
    assert_eq!(report.latency.count, report.sent);
    assert!(report.latency.p50 > 0.0 && report.latency.p50 <= report.latency.p99);
    assert!(report.latency.p99 <= report.latency.max);
    assert_eq!(
        report.timeline.iter().map(|s| s.ok).sum::<u64>(),
        report.ok,
        "the timeline holds every answer"
    );
    // The mix: 40 / 35 / 25 %, give or take the draw.
    for (m, share) in [
        ("GetProduct", 0.40),
        ("Recommend", 0.35),
        ("SearchProducts", 0.25),
    ] {
        let got = report.methods.iter().find(|r| r.method == m).unwrap().ok as f64;
        assert!(
            (got / report.sent as f64 - share).abs() < 0.08,
            "{m}: {got} of {}",
            report.sent
        );
    }

    // The gateway counted the same calls, method by method.
    let want: std::collections::BTreeMap<String, u64> = report
        .methods
        .iter()
        .map(|m| {
            let path = format!("/discovery.v1.Discovery/{}", m.method);
            let b = before.get(&path).copied().unwrap_or(0);
            (path, b + m.ok)
        })
        .collect();
    let mut after = Default::default();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = gateway_counts(&mut monitoring).await;
        if want.iter().all(|(k, v)| after.get(k) == Some(v)) {
            break;
        }
    }
    for (k, v) in &want {
        assert_eq!(after.get(k), Some(v), "{k}: gateway counted {after:?}");
    }

    // Errors are filed under their codes: a revoked-looking key is refused.
    let bad = Arc::new(
        Target::connect(&url, Some("dk_not-a-key"), 1, Duration::from_secs(10))
            .await
            .unwrap(),
    );
    let only_search = Plan {
        scenario: "bad key".into(),
        load: Load::Open(vec![Phase {
            name: "bad key".into(),
            duration: Duration::from_millis(500),
            from_rps: 100.0,
            to_rps: 100.0,
        }]),
        mix: Mix::only(Op::Search),
        max_calls: None,
        max_in_flight: 1000,
    };
    let corpus = Arc::new(Corpus::build(&bad, &only_search.mix, None).await.unwrap());
    let r = discovery_loadgen::run(bad, corpus.clone(), &only_search, &RunOptions::default()).await;
    assert_eq!(r.ok, 0);
    assert_eq!(
        r.errors_by_code.into_iter().collect::<Vec<_>>(),
        [("UNAUTHENTICATED".to_string(), r.sent)]
    );
    assert!(!r.first_errors.is_empty());

    // Closed loop, bounded by a call count.
    let good = Arc::new(
        Target::connect(&url, Some(&app.system.api_key), 1, Duration::from_secs(10))
            .await
            .unwrap(),
    );
    let closed = Plan {
        scenario: "closed".into(),
        load: Load::Closed {
            concurrency: 4,
            duration: Duration::from_secs(30),
        },
        mix: Mix::only(Op::Search),
        max_calls: Some(120),
        max_in_flight: 1000,
    };
    let r = discovery_loadgen::run(good, corpus, &closed, &RunOptions::default()).await;
    assert_eq!((r.sent, r.ok, r.errors), (120, 120, 0));
    assert!(r.duration_s < 30.0, "stopped at the call bound");
    let _ = app.stop().await;
}
