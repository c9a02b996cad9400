//! The rule engine on a paused clock, delivered to a real webhook receiver:
//! a latency breach shorter than its rule's duration never fires; a longer
//! one fires once and resolves once, and the receiver gets exactly those
//! two posts (the first attempt refused with 503 and retried).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use discovery_kit::store::StoreConfig;
use discovery_monitoring::rules::{Engine, Observation, Phase, Signal, default_rules};
use discovery_monitoring::{Hub, notify::Webhook};
use discovery_proto::v1 as pb;
use tokio::time::Instant;

fn p95(ms: f64) -> Vec<Observation> {
    vec![Observation {
        signal: Signal::LatencyP95Ms,
        labels: [("service".to_string(), "gateway".to_string())].into(),
        value: ms,
    }]
}

/// Posts received, and how many to refuse first with 503.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<serde_json::Value>>>,
    refuse: Arc<Mutex<u32>>,
}

async fn receiver(r: Receiver) -> String {
    use axum::http::StatusCode;
    let app = axum::Router::new().route(
        "/hooks/alerts",
        axum::routing::post(move |body: axum::body::Bytes| {
            let r = r.clone();
            async move {
                {
                    let mut refuse = r.refuse.lock().unwrap();
                    if *refuse > 0 {
                        *refuse -= 1;
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                }
                r.got
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).expect("JSON body"));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hooks/alerts")
}

#[tokio::test(start_paused = true)]
async fn only_a_long_breach_fires_once_resolves_once_and_reaches_the_webhook() {
    let mut engine = Engine::new(default_rules());
    let start = Instant::now();
    let mut transitions = Vec::new();
    // Every 15 s: 4 min 30 s at 900 ms (over ApiLatencyP95's warning tier,
    // 300 ms, under its critical one, and shorter than its 5 min), 2 min
    // fine, then 8 min at 900 ms, then fine for 5 min.
    let timeline = [
        (0u64, 270u64, 900.0),
        (270, 390, 100.0),
        (390, 870, 900.0),
        (870, 1170, 100.0),
    ];
    for (from, to, ms) in timeline {
        for s in (from..to).step_by(15) {
            tokio::time::sleep_until(start + Duration::from_secs(s)).await;
            for t in engine.evaluate(Instant::now(), &p95(ms)) {
                transitions.push((s, t));
            }
        }
    }
    let when: Vec<(u64, Phase)> = transitions.iter().map(|(s, t)| (*s, t.phase)).collect();
    // The second breach starts at 390 s and fires 5 min later; it resolves
    // at the first fine evaluation.
    assert_eq!(when, vec![(690, Phase::Firing), (870, Phase::Resolved)]);

    // Delivery over real sockets, on the real clock.
    tokio::time::resume();
    let r = Receiver::default();
    *r.refuse.lock().unwrap() = 1;
    let url = receiver(r.clone()).await;
    let store = StoreConfig::Memory
        .connect(discovery_kit::store::Workload::Analytics)
        .await
        .unwrap();
    let hub = Hub::new(store, None);
    let rules = discovery_monitoring::rules::file::parse_alerting(
        discovery_monitoring::rules::DEFAULT_RULES,
    )
    .unwrap();
    // The built-in rules' Slack channel, its URL from the variable it names.
    hub.set_routing(discovery_monitoring::hub::Routing::from_file(&rules, |v| {
        (v == "DISCOVERY_ALERT_WEBHOOK_URL").then(|| url.clone())
    }));
    let mut watch = hub.subscribe();
    let now = Instant::now();
    for (_, t) in &transitions {
        hub.publish(t, now).await;
    }
    for want in [pb::AlertState::Firing, pb::AlertState::Resolved] {
        let a = watch.recv().await.unwrap();
        assert_eq!((a.rule.as_str(), a.state), ("ApiLatencyP95", want as i32));
        assert_eq!(a.severity, pb::Severity::Warning as i32);
        assert_eq!(a.labels["service"], "gateway");
    }
    // Both posts arrive (the refused one after a retry), and nothing else.
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.got.lock().unwrap().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = r.got.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:#?}");
    let mut states: Vec<&str> = got
        .iter()
        .map(|b| b["alert"]["state"].as_str().unwrap())
        .collect();
    states.sort();
    assert_eq!(states, ["ALERT_STATE_FIRING", "ALERT_STATE_RESOLVED"]);
    for b in &got {
        assert!(b["text"].as_str().unwrap().contains("ApiLatencyP95"));
        assert_eq!(b["alert"]["labels"]["service"], "gateway");
    }
}

#[tokio::test]
async fn a_refusing_webhook_is_not_retried_and_a_bad_url_is_refused_up_front() {
    assert!(Webhook::new("ftp://x/y").is_err());
    assert!(Webhook::new("https://hooks.slack.com/services/T/B/X").is_ok());
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(|| async { axum::http::StatusCode::BAD_REQUEST }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let e = Webhook::new(&format!("http://{addr}/"))
        .unwrap()
        .deliver(&pb::Alert::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("400"), "{e}");
}
