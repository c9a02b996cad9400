//! Alerts through their life, against real receivers: a Slack-compatible
//! webhook and a PagerDuty-compatible events endpoint (HTTP servers in this
//! test) and an SMTP sink (Python's aiosmtpd, a real SMTP server). The
//! hub's clock follows tokio's, paused while time is moved on (15 minutes
//! of escalation delay in an instant) and running while deliveries travel.
//!
//! - a critical alert nobody acknowledges is escalated to the pager after
//!   15 minutes, not before; one acknowledged is not; a warning never is;
//! - a silenced alert is recorded but not delivered; when the silence
//!   expires while it still fires, it is delivered;
//! - email reaches the SMTP server; a channel that keeps failing is retried
//!   and recorded as failed, and never holds up the others or evaluation;
//! - every delivery is recorded once per alert, channel and event.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use discovery_kit::store::{Store, StoreConfig, Workload};
use discovery_monitoring::Hub;
use discovery_monitoring::hub::Routing;
use discovery_monitoring::lifecycle::SilenceRequest;
use discovery_monitoring::rules::file::parse_alerting;
use discovery_monitoring::rules::{Engine, Observation, Signal, Transition, default_rules};
use tokio::time::Instant;

/// An HTTP receiver: the JSON bodies it got; answers `status`.
#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<serde_json::Value>>>,
    url: String,
}

async fn receiver(status: u16) -> Receiver {
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let g = g.clone();
            async move {
                if let Ok(v) = serde_json::from_slice(&body) {
                    g.lock().unwrap().push(v);
                }
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        got,
        url: format!("http://{addr}/hook"),
    }
}

impl Receiver {
    fn bodies(&self) -> Vec<serde_json::Value> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (real time) until `n` bodies arrived, then a little longer
    /// for any that should not.
    async fn settle(&self, n: usize) -> Vec<serde_json::Value> {
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while self.bodies().len() < n && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.bodies()
    }
}

/// An aiosmtpd server printing what it receives; killed on drop.
struct Smtp {
    child: std::process::Child,
    port: u16,
    out: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn smtp() -> Smtp {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "the SMTP sink needs aiosmtpd in .venv: run ./scripts/test-deps.sh"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mail.log");
    let child = std::process::Command::new(python)
        .args(["-u", "-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("aiosmtpd starts");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Smtp {
        child,
        port,
        out,
        _dir: dir,
    }
}

/// A clock that follows tokio's (paused in these tests while time moves),
/// from `base` Unix ms: each test its own, so alert ids (which carry the
/// time) differ between tests sharing the process's in-memory store.
fn clock(base: i64) -> discovery_monitoring::hub::Clock {
    let start = Instant::now();
    Arc::new(move || base + start.elapsed().as_millis() as i64)
}

async fn store() -> Store {
    StoreConfig::Memory
        .connect(Workload::Analytics)
        .await
        .unwrap()
}

/// The built-in file with the channels' secrets pointing at the receivers.
fn routing(vars: BTreeMap<&'static str, String>) -> Routing {
    let a = parse_alerting(discovery_monitoring::rules::DEFAULT_RULES).unwrap();
    Routing::from_file(&a, move |v| vars.get(v).cloned())
}

/// Moves time on by `d` with the clock paused, evaluating `obs` every 10 s;
/// the transitions. The clock runs again afterwards.
async fn advance(engine: &mut Engine, d: Duration, obs: &[Observation]) -> Vec<Transition> {
    tokio::time::pause();
    let mut out = Vec::new();
    let until = Instant::now() + d;
    while Instant::now() < until {
        tokio::time::advance(Duration::from_secs(10)).await;
        out.extend(engine.evaluate(Instant::now(), obs));
    }
    tokio::time::resume();
    out
}

fn memory(instance: &str, v: f64) -> Observation {
    Observation {
        signal: Signal::Memory,
        labels: [("instance".to_string(), instance.to_string())].into(),
        value: v,
    }
}

fn cpu(v: f64) -> Observation {
    Observation {
        signal: Signal::Cpu,
        labels: [("service".to_string(), "sync".to_string())].into(),
        value: v,
    }
}

fn events(r: &[serde_json::Value], key: &str) -> Vec<String> {
    r.iter()
        .filter_map(|b| b.pointer(key).and_then(|v| v.as_str()).map(String::from))
        .collect()
}

#[tokio::test]
async fn unacknowledged_critical_alerts_page_after_fifteen_minutes_and_others_do_not() {
    let (slack, pager) = (receiver(200).await, receiver(202).await);
    let hub = Hub::with_clock(store().await, None, clock(1_800_000_000_000));
    // The built-in channels; the pager's endpoint is the receiver (a
    // PagerDuty-compatible URL, as the file allows).
    let mut a = parse_alerting(discovery_monitoring::rules::DEFAULT_RULES).unwrap();
    for (_, spec) in &mut a.channels {
        if let discovery_monitoring::rules::file::ChannelSpec::PagerDuty { url, .. } = spec {
            *url = pager.url.clone();
        }
    }
    let slack_url = slack.url.clone();
    hub.set_routing(Routing::from_file(&a, move |v| match v {
        "DISCOVERY_ALERT_WEBHOOK_URL" => Some(slack_url.clone()),
        "DISCOVERY_PAGERDUTY_ROUTING_KEY" => Some("R0UTING".into()),
        _ => None,
    }));
    let mut engine = Engine::new(default_rules());
    // Two processes over their memory limit (critical after 5 min) and
    // one busy CPU (warning after 10 min).
    let obs = [memory("a:9090", 0.95), memory("b:9090", 0.95), cpu(0.95)];
    let mut fired = Vec::new();
    for t in advance(&mut engine, Duration::from_secs(11 * 60), &obs).await {
        fired.push(hub.publish(&t, Instant::now()).await);
    }
    assert_eq!(fired.len(), 3, "{fired:#?}");
    let id_of = |needle: &str| {
        fired
            .iter()
            .find(|a| a.id.contains(needle))
            .map(|a| a.id.clone())
            .unwrap()
    };
    let (a_id, b_id) = (id_of("a:9090"), id_of("b:9090"));
    // Somebody takes b.
    let acked = hub
        .acknowledge(&b_id, "ops-anna", "restarting b")
        .await
        .unwrap();
    assert_eq!(acked.acknowledged_by, "ops-anna");
    assert_eq!(
        hub.acknowledge("no-such-alert", "x", "")
            .await
            .unwrap_err()
            .to_string(),
        "no alert \"no-such-alert\""
    );
    // They fired at 5 min 10 s. At 19 min (13 min 50 s after): nothing
    // escalated yet.
    advance(&mut engine, Duration::from_secs(8 * 60), &obs).await;
    hub.tick().await;
    assert!(pager.settle(0).await.is_empty(), "not before 15 minutes");
    // At 21 min, past 15: a (critical, nobody on it) pages; b
    // (acknowledged) and the CPU warning do not.
    advance(&mut engine, Duration::from_secs(2 * 60), &obs).await;
    hub.tick().await;
    hub.tick().await;
    let paged = pager.settle(1).await;
    assert_eq!(paged.len(), 1, "{paged:#?}");
    assert_eq!(paged[0]["dedup_key"], a_id.as_str());
    assert_eq!(paged[0]["event_action"], "trigger");
    assert_eq!(paged[0]["routing_key"], "R0UTING");
    assert_eq!(paged[0]["payload"]["severity"], "critical");
    let escalated = hub.firing().into_iter().find(|f| f.id == a_id).unwrap();
    assert!(escalated.escalated_at_unix_ms > escalated.fired_at_unix_ms);

    // a resolves: Slack and the pager hear it (it was paged), once each.
    let fine = [memory("a:9090", 0.2), memory("b:9090", 0.95), cpu(0.95)];
    for t in advance(&mut engine, Duration::from_secs(10), &fine).await {
        let resolved = hub.publish(&t, Instant::now()).await;
        assert_eq!(resolved.id, a_id, "the same alert, resolved");
    }
    let paged = pager.settle(2).await;
    assert_eq!(events(&paged, "/event_action"), ["trigger", "resolve"]);
    // Slack: three firings and a resolution, nothing twice.
    let slack_got = slack.settle(4).await;
    let mut states = events(&slack_got, "/alert/state");
    states.sort();
    assert_eq!(
        states,
        [
            "ALERT_STATE_FIRING",
            "ALERT_STATE_FIRING",
            "ALERT_STATE_FIRING",
            "ALERT_STATE_RESOLVED"
        ]
    );
    // Publishing the same transition again sends nothing new.
    hub.deliver(
        &escalated,
        discovery_monitoring::channels::Event::Escalated,
        &["pager".into()],
    );
    assert_eq!(pager.settle(3).await.len(), 2, "delivered once per event");
}

#[tokio::test]
async fn a_silenced_alert_is_held_back_until_its_silence_expires() {
    let slack = receiver(200).await;
    let hub = Hub::with_clock(store().await, None, clock(1_800_086_400_000));
    hub.set_routing(routing(
        [("DISCOVERY_ALERT_WEBHOOK_URL", slack.url.clone())].into(),
    ));
    // Careless silences are refused.
    let bad = SilenceRequest {
        duration_seconds: 600,
        reason: "maintenance".into(),
        ..Default::default()
    };
    assert!(
        hub.create_silence(&bad, "ops").await.is_err(),
        "silences nothing named"
    );
    let silence = hub
        .create_silence(
            &SilenceRequest {
                rule: "HighMemory".into(),
                labels: [("instance".to_string(), "a:9090".to_string())].into(),
                duration_seconds: 600,
                reason: "resizing a".into(),
            },
            "ops-anna",
        )
        .await
        .unwrap();
    let mut engine = Engine::new(default_rules());
    let obs = [memory("a:9090", 0.95), memory("b:9090", 0.95)];
    let mut fired = Vec::new();
    for t in advance(&mut engine, Duration::from_secs(6 * 60), &obs).await {
        fired.push(hub.publish(&t, Instant::now()).await);
    }
    assert_eq!(fired.len(), 2);
    let a = fired.iter().find(|f| f.id.contains("a:9090")).unwrap();
    assert_eq!(a.silenced_by, silence.id, "recorded, silenced");
    // Only b reached Slack.
    let got = slack.settle(1).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["alert"]["labels"]["instance"], "b:9090");
    // Five minutes on (11 since the silence began): it expired; a, still
    // firing, goes out now.
    advance(&mut engine, Duration::from_secs(5 * 60), &obs).await;
    hub.tick().await;
    let got = slack.settle(2).await;
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[1]["alert"]["labels"]["instance"], "a:9090");
    let listed = hub.silences(true).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(hub.silences(false).await.unwrap().is_empty(), "expired");
    // Ending a silence early releases what it held.
    let s2 = hub
        .create_silence(
            &SilenceRequest {
                rule: "HighCpu".into(),
                duration_seconds: 3600,
                reason: "batch job".into(),
                ..Default::default()
            },
            "ops",
        )
        .await
        .unwrap();
    let with_cpu = [memory("a:9090", 0.95), memory("b:9090", 0.95), cpu(0.95)];
    for t in advance(&mut engine, Duration::from_secs(11 * 60), &with_cpu).await {
        hub.publish(&t, Instant::now()).await;
    }
    assert_eq!(slack.settle(3).await.len(), 2, "the CPU alert is silenced");
    hub.expire_silence(&s2.id).await.unwrap();
    let got = slack.settle(3).await;
    assert_eq!(got.len(), 3, "released when the silence ended");
    assert_eq!(got[2]["alert"]["rule"], "HighCpu");
}

#[tokio::test]
async fn email_reaches_the_smtp_server_and_a_failing_channel_is_retried_and_recorded() {
    let sink = smtp();
    let broken = receiver(500).await;
    let store = store().await;
    let hub = Hub::with_clock(store.clone(), None, clock(1_800_172_800_000));
    hub.set_routing(routing(
        [
            ("DISCOVERY_ALERT_WEBHOOK_URL", broken.url.clone()),
            (
                "DISCOVERY_ALERT_SMTP_URL",
                format!("smtp://127.0.0.1:{}", sink.port),
            ),
            ("DISCOVERY_ALERT_EMAIL_TO", "oncall@shop.example".into()),
        ]
        .into(),
    ));
    let mut engine = Engine::new(default_rules());
    let obs = [memory("a:9090", 0.95)];
    let started = std::time::Instant::now();
    let mut fired = Vec::new();
    for t in advance(&mut engine, Duration::from_secs(6 * 60), &obs).await {
        fired.push(hub.publish(&t, Instant::now()).await);
    }
    assert_eq!(fired.len(), 1);
    // Publishing did not wait for the broken webhook's retries.
    assert!(started.elapsed() < Duration::from_secs(5));
    // Email: critical alerts go to Slack and email (the built-in routes).
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let mut mail = String::new();
    while std::time::Instant::now() < until {
        mail = std::fs::read_to_string(&sink.out).unwrap_or_default();
        if mail.contains("HighMemory") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        mail.contains("Subject: [FIRING] HighMemory (critical)"),
        "{mail}"
    );
    assert!(mail.contains("oncall@shop.example"), "{mail}");
    // The broken webhook: five attempts (1+2+4+8 s of waits), then a record.
    let id = fired[0].id.clone();
    let until = std::time::Instant::now() + Duration::from_secs(40);
    let record = loop {
        let d = store
            .get(
                discovery_monitoring::store::DELIVERIES,
                &format!("{id}|webhook|firing"),
            )
            .await
            .unwrap();
        if let Some(d) = d {
            break d;
        }
        assert!(
            std::time::Instant::now() < until,
            "no record of the failure"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(record.get_str("outcome").unwrap(), "failed", "{record:?}");
    assert!(
        record
            .get_str("error")
            .unwrap()
            .contains("gave up after 5 attempts"),
        "{record:?}"
    );
    assert_eq!(broken.bodies().len(), 5, "retried");
    let email = store
        .get(
            discovery_monitoring::store::DELIVERIES,
            &format!("{id}|email|firing"),
        )
        .await
        .unwrap()
        .expect("the email delivery recorded");
    assert_eq!(email.get_str("outcome").unwrap(), "delivered");
}

/// The built-in rules file with one scheduled report added.
fn with_report(to: &str) -> String {
    format!(
        "{}\n[[report]]\nname = \"daily-sla\"\nkind = \"sla\"\nschedule = \"0 7 * * *\"\nformat = \"csv\"\nto = {to}\n",
        discovery_monitoring::rules::DEFAULT_RULES
    )
}

#[tokio::test]
async fn a_scheduled_report_goes_out_at_its_time_once_to_the_webhook_and_as_an_email_attachment() {
    use discovery_monitoring::window::{History, Snapshot, parse};
    let slack = receiver(200).await;
    let sink = smtp();
    let store = store().await;
    // 2026-12-05 06:59:00 UTC.
    let hub = Hub::with_clock(store.clone(), None, clock(1_796_453_940_000));
    let a = parse_alerting(&with_report(r#"["webhook", "email"]"#)).unwrap();
    let (hook, port) = (slack.url.clone(), sink.port);
    hub.set_routing(Routing::from_file(&a, move |v| match v {
        "DISCOVERY_ALERT_WEBHOOK_URL" => Some(hook.clone()),
        "DISCOVERY_ALERT_SMTP_URL" => Some(format!("smtp://127.0.0.1:{port}")),
        "DISCOVERY_ALERT_EMAIL_TO" => Some("reports@shop.example".into()),
        _ => None,
    }));
    // A day's figures: 1,000 Recommend calls at the gateway, 2 failed.
    let series = |n: u64, failed: u64| {
        let m = r#"service="gateway",method="/discovery.v1.Discovery/Recommend""#;
        parse(&format!(
            "discovery_rpc_server_requests_total{{{m},code=\"OK\"}} {}\n\
             discovery_rpc_server_requests_total{{{m},code=\"INTERNAL\"}} {failed}\n\
             discovery_rpc_server_duration_seconds_bucket{{{m},le=\"0.01\"}} {n}\n\
             discovery_rpc_server_duration_seconds_bucket{{{m},le=\"+Inf\"}} {n}\n\
             discovery_rpc_server_duration_seconds_count{{{m}}} {n}\n",
            n - failed
        ))
        .into_iter()
        .collect()
    };
    let history = Mutex::new(History::default());
    tokio::time::pause();
    history.lock().unwrap().push(Snapshot {
        at: Instant::now(),
        values: series(0, 0),
    });
    tokio::time::advance(Duration::from_secs(30)).await;
    history.lock().unwrap().push(Snapshot {
        at: Instant::now(),
        values: series(1000, 2),
    });
    // 06:59:30: not yet (and a report is never sent for a time before
    // monitoring started).
    hub.run_reports(&history).await;
    tokio::time::advance(Duration::from_secs(45)).await;
    // 07:00:15: due.
    hub.run_reports(&history).await;
    tokio::time::advance(Duration::from_secs(60)).await;
    // 07:01:15: already sent.
    hub.run_reports(&history).await;
    tokio::time::resume();

    let got = slack.settle(1).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    let body = &got[0];
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .starts_with("discovery report daily-sla: sla"),
        "{body}"
    );
    assert_eq!(body["due_at_unix_ms"], 1_796_454_000_000i64);
    let row = &body["rows"][0];
    assert_eq!(row["service"], "gateway");
    assert_eq!(row["calls"], "1000");
    assert_eq!(row["server_errors"], "2");
    assert_eq!(row["availability"], "0.99800");

    let until = std::time::Instant::now() + Duration::from_secs(20);
    let mut mail = String::new();
    while std::time::Instant::now() < until && !mail.contains("daily-sla-2026-12-05T0700Z.csv") {
        mail = std::fs::read_to_string(&sink.out).unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(mail.contains("Subject: [report] daily-sla"), "{mail}");
    assert!(mail.contains("reports@shop.example"), "{mail}");
    assert!(
        mail.contains("filename=\"daily-sla-2026-12-05T0700Z.csv\""),
        "{mail}"
    );
    assert!(mail.contains("text/csv"), "{mail}");
    // Both recorded, under the report's id.
    for channel in ["webhook", "email"] {
        let id = format!("report:daily-sla:1796454000000|{channel}|report");
        let until = std::time::Instant::now() + Duration::from_secs(20);
        let d = loop {
            if let Some(d) = store
                .get(discovery_monitoring::store::DELIVERIES, &id)
                .await
                .unwrap()
            {
                break d;
            }
            assert!(std::time::Instant::now() < until, "no record {id}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(d.get_str("outcome").unwrap(), "delivered", "{d:?}");
    }

    // A report cannot go to the pager, nor on a numbered weekday: refused
    // with the line.
    let e = parse_alerting(&with_report(r#"["pager"]"#)).unwrap_err();
    assert!(e.reason.contains("is a pager"), "{e}");
    // (the report's `to`, the file's last line; the escalation's reads the same)
    let line = with_report(r#"["pager"]"#).lines().count();
    assert_eq!(e.line, line);
    let e = parse_alerting(&with_report(r#"["webhook"]"#).replace("0 7 * * *", "0 7 * * 1"))
        .unwrap_err();
    assert!(e.reason.contains("name the days"), "{e}");
}
