//! The operator's dashboard as an operator uses it: `discovery up` as a
//! process with a rules file whose alert fires on real traffic, the page
//! in headless Chromium (real mouse clicks and typing over the DevTools
//! protocol). The page shows the alert, its tier coloured, every service's
//! replica and the history; a key without the admin scope is refused; with
//! the admin key the alert is acknowledged and silenced from the page (the
//! gateway's admin methods, called by the page), which the gateway then
//! reports; the silence is ended from the page. No error reaches the
//! page's console. `DISCOVERY_SCREENSHOTS=dir` saves screenshots there
//! (how `docs/dashboard*.png` were made).

use std::path::PathBuf;
use std::time::Duration;

use discovery_harness::browser::Browser;
use discovery_harness::http::{Reply, curl};
use discovery_harness::up::Up;

/// A Connect JSON call to the gateway with `key`.
fn call(up: &Up, key: &str, method: &str, body: &str) -> Reply {
    curl(
        &[
            "-H",
            "content-type: application/json",
            "-H",
            &format!("x-api-key: {key}"),
        ],
        &format!("{}/discovery.v1.Discovery/{method}", up.base_url()),
        Some(body.as_bytes()),
    )
}

const RULES: &str = r#"
version = 1

# Fires on any traffic: the API's p95 is above a microsecond at once.
[[rule]]
name = "GatewaySlow"
prometheus = "DiscoveryGatewaySlow"
summary = "the public API's p95 latency"
signal = "latency_p95_ms"
select = { service = "gateway" }
above = { critical = 0.001 }
for = "0s"

[[rule]]
name = "ApiLatencyP95"
prometheus = "DiscoveryApiLatencyP95High"
summary = "the public API's p95 latency (the seed's tiers)"
signal = "latency_p95_ms"
select = { service = "gateway" }
above = { warning = 300, critical = 1000 }
for = "5m"
"#;

async fn ok(step: &str, r: Result<(), String>) {
    if let Err(e) = r {
        panic!("{step}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_acknowledges_and_silences_an_alert_from_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alert-rules.toml");
    std::fs::write(&rules, RULES).unwrap();
    let up = Up::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_discovery")),
        &[
            ("DISCOVERY_ALERT_RULES", rules.display().to_string()),
            ("DISCOVERY_MONITORING_SCRAPE_INTERVAL", "1s".into()),
        ],
    )
    .expect("discovery up");

    // Traffic: the rules need 20 calls in 5 minutes to observe latency.
    for i in 0..30 {
        let r = call(
            &up,
            &up.key,
            "SearchProducts",
            &format!(r#"{{"query": "round acetate {i}"}}"#),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }

    // The dashboard's documents refuse what a caller can get wrong, and
    // the page cannot be framed.
    let board = format!("http://127.0.0.1:{}", up.metrics);
    for (query, says) in [
        ("from=yesterday", "is not a time"),
        ("limit=5", "unknown parameter"),
        ("from=-9223372036854775808", "25 hours"),
    ] {
        let r = curl(&[], &format!("{board}/api/history?{query}"), None);
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert!(r.body.contains(says), "{query}: {}", r.body);
    }
    let page = curl(&[], &format!("{board}/dashboard"), None);
    assert_eq!(page.status, 200);
    // (the harness lower-cases the head)
    assert_eq!(page.header("x-frame-options"), Some("deny"));
    assert_eq!(
        page.header("content-security-policy"),
        Some("frame-ancestors 'none'")
    );

    let mut b = Browser::launch(1360, 1000).await.expect("chromium");
    let page = format!("http://127.0.0.1:{}/dashboard", up.metrics);
    ok("load", b.goto(&page).await).await;
    let wait = Duration::from_secs(30);
    let row = r#"tr.alert[data-rule="GatewaySlow"]"#;
    ok(
        "the alert shows",
        b.wait_for(&format!("document.querySelector('{row}')"), wait)
            .await,
    )
    .await;
    // Its tile is red; the seed's tiers hold (ok, green) on the same series.
    ok(
        "tiers coloured",
        b.wait_for(
            r#"document.querySelector('.tile[data-rule="GatewaySlow"][data-tier="critical"]')
               && document.querySelector('.tile[data-rule="ApiLatencyP95"][data-tier="ok"] .trend')"#,
            wait,
        )
        .await,
    )
    .await;
    // Every service of the system, one replica each here, ready.
    ok(
        "health",
        b.wait_for(
            "['gateway', 'face-analysis', 'recommendation', 'sync', 'monitoring'].every(s =>
               document.querySelector(`.service[data-service='${s}'] .replica.ready`))",
            wait,
        )
        .await,
    )
    .await;
    // A system started just now has no hours to forecast from, and says so.
    ok(
        "forecast",
        b.wait_for(
            "document.getElementById('forecast-backtest').textContent.includes('needs 72 hours of history')",
            wait,
        )
        .await,
    )
    .await;
    // The history has the gateway's line over the last 24 h.
    ok(
        "history",
        b.wait_for(
            r#"document.querySelector('#history-chart[data-loaded="1"] path.series[data-service="gateway"]')"#,
            wait,
        )
        .await,
    )
    .await;
    // Without a key the actions are off; the gateway URL is offered.
    let state = b
        .eval(&format!(
            "[document.querySelector('{row} button.ack').disabled, document.getElementById('gateway-url').value]"
        ))
        .await
        .unwrap();
    assert_eq!(state[0], true, "acting without a key");
    assert_eq!(state[1], up.base_url().as_str());

    // A made-up key is refused by the gateway, and the page says so.
    ok(
        "key",
        b.fill(
            "#admin-key",
            "dk_0123456789ab_00000000000000000000000000000000",
        )
        .await,
    )
    .await;
    ok("use", b.click("#admin-use").await).await;
    ok(
        "refused",
        b.wait_for(
            "document.getElementById('admin-state').textContent.includes('invalid or revoked API key')",
            wait,
        )
        .await,
    )
    .await;
    // (the browser logs the 401 it got)
    let refused = b.take_errors();
    assert!(refused.iter().all(|e| e.contains("401")), "{refused:#?}");

    // The admin key: accepted.
    ok("key", b.fill("#admin-key", &up.key).await).await;
    ok("use", b.click("#admin-use").await).await;
    ok(
        "accepted",
        b.wait_for("document.body.dataset.admin === '1'", wait)
            .await,
    )
    .await;

    // Acknowledge, with a note.
    ok(
        "ack",
        b.wait_for(
            &format!("!document.querySelector('{row} button.ack').disabled"),
            wait,
        )
        .await,
    )
    .await;
    ok("ack", b.click(&format!("{row} button.ack")).await).await;
    ok("note", b.fill("#act-note", "looking at the gateway").await).await;
    ok("confirm", b.click("#act-submit").await).await;
    ok(
        "acknowledged",
        b.wait_for(
            &format!("document.querySelector('{row} .badge.acked')"),
            wait,
        )
        .await,
    )
    .await;

    // Silence it for a day.
    ok("silence", b.click(&format!("{row} button.silence")).await).await;
    ok("reason", b.fill("#act-reason", "deploy in progress").await).await;
    ok(
        "duration",
        b.eval("(() => { const s = document.getElementById('act-duration'); s.value = '86400'; s.dispatchEvent(new Event('change')); })()")
            .await
            .map(drop),
    )
    .await;
    if let Some(dir) = shots() {
        ok(
            "shot",
            b.screenshot(&dir.join("dashboard-silence.png")).await,
        )
        .await;
    }
    ok("confirm", b.click("#act-submit").await).await;
    let silence = r#"tr.silence-row[data-rule="GatewaySlow"]"#;
    ok(
        "silenced",
        b.wait_for(
            &format!("document.querySelector('{silence}') && document.querySelector('{row} .badge.silenced')"),
            wait,
        )
        .await,
    )
    .await;

    if let Some(dir) = shots() {
        ok("1 h", b.click(r#"button[data-range="1"]"#).await).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        ok("shot", b.screenshot(&dir.join("dashboard.png")).await).await;
    }

    // What the gateway reports now: the page's actions, as the admin key's.
    let history = call(
        &up,
        &up.key,
        "GetAlertHistory",
        r#"{"rule": "GatewaySlow"}"#,
    )
    .json();
    let alert = &history["alerts"][0];
    assert_eq!(alert["acknowledgedBy"], "development", "{history}");
    assert_eq!(alert["acknowledgeNote"], "looking at the gateway");
    let silences = call(&up, &up.key, "ListSilences", "{}").json();
    let s = &silences["silences"][0];
    assert_eq!(s["rule"], "GatewaySlow", "{silences}");
    assert_eq!(s["reason"], "deploy in progress");
    assert_eq!(s["createdBy"], "development");
    let span = s["expiresAtUnixMs"]
        .as_str()
        .unwrap()
        .parse::<i64>()
        .unwrap()
        - s["createdAtUnixMs"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap();
    assert_eq!(span, 86_400_000, "the day chosen on the page");
    assert_eq!(
        alert["labels"], s["labels"],
        "the silence matches the alert's labels"
    );

    // End it from the page.
    ok("end", b.click(&format!("{silence} button.expire")).await).await;
    ok(
        "ended",
        b.wait_for(&format!("!document.querySelector('{silence}')"), wait)
            .await,
    )
    .await;
    let silences = call(&up, &up.key, "ListSilences", "{}").json();
    assert!(
        silences["silences"].as_array().is_none_or(|a| a.is_empty()),
        "{silences}"
    );

    // Zoom: the last hour, then a drag across its newest part.
    ok("1 h", b.click(r#"button[data-range="1"]"#).await).await;
    ok(
        "1 h range",
        b.wait_for(
            r#"document.querySelector('button[data-range="1"].on')"#,
            wait,
        )
        .await,
    )
    .await;
    ok("zoom", b.drag("#history-chart", 0.9, 0.99).await).await;
    ok(
        "zoomed",
        b.wait_for(
            "document.getElementById('history-range').textContent.includes('zoomed') && !document.getElementById('history-reset').disabled",
            wait,
        )
        .await,
    )
    .await;

    let errors = b.take_errors();
    assert!(errors.is_empty(), "errors on the page: {errors:#?}");
}

/// `DISCOVERY_SCREENSHOTS`, if set.
fn shots() -> Option<PathBuf> {
    std::env::var_os("DISCOVERY_SCREENSHOTS").map(PathBuf::from)
}

/// Scheduled reports from the running system: `discovery up` with the
/// built-in rules and two reports due every minute to the webhook channel,
/// which points at a receiver here. Within a minute and a bit the
/// receiver has the SLA report, with the gateway's calls made here, and
/// the recommendation report read from the recommendation service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_report_reaches_the_webhook_from_the_running_system() {
    let hook = discovery_harness::http::Hook::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alert-rules.toml");
    std::fs::write(
        &rules,
        format!(
            "{}\n[[report]]\nname = \"every-minute\"\nkind = \"sla\"\nschedule = \"* * * * *\"\nformat = \"json\"\nto = [\"webhook\"]\n\n[[report]]\nname = \"sales\"\nkind = \"recommendations\"\nschedule = \"* * * * *\"\nformat = \"csv\"\nto = [\"webhook\"]\n",
            std::fs::read_to_string(
                discovery_harness::workspace_root().join("crates/monitoring/alert-rules.toml")
            )
            .unwrap()
        ),
    )
    .unwrap();
    let up = Up::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_discovery")),
        &[
            ("DISCOVERY_ALERT_RULES", rules.display().to_string()),
            ("DISCOVERY_ALERT_WEBHOOK_URL", hook.url.clone()),
            ("DISCOVERY_MONITORING_SCRAPE_INTERVAL", "1s".into()),
        ],
    )
    .expect("discovery up");
    for i in 0..5 {
        let r = call(
            &up,
            &up.key,
            "SearchProducts",
            &format!(r#"{{"query": "oval {i}"}}"#),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // The next minute's start, plus a scrape and the delivery.
    let until = std::time::Instant::now() + Duration::from_secs(80);
    let report = loop {
        if let Some(r) = hook
            .bodies()
            .into_iter()
            .find(|b| b["report"] == "every-minute")
        {
            break r;
        }
        assert!(
            std::time::Instant::now() < until,
            "no report: {:?}",
            hook.bodies()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(report["kind"], "sla");
    assert!(
        report["text"]
            .as_str()
            .unwrap()
            .starts_with("discovery report every-minute")
    );
    let rows = report["rows"].as_array().unwrap();
    let search = rows
        .iter()
        .find(|r| {
            r["service"] == "gateway" && r["method"] == "/discovery.v1.Discovery/SearchProducts"
        })
        .unwrap_or_else(|| panic!("no gateway SearchProducts row: {report}"));
    assert!(
        search["calls"].as_str().unwrap().parse::<u64>().unwrap() >= 5,
        "{search}"
    );
    // What the recommendations sold, read from recommendation, at the same
    // minute: its columns whatever the rows (a webhook gets the document;
    // the CSV is what email attaches).
    let until = std::time::Instant::now() + Duration::from_secs(80);
    let sales = loop {
        if let Some(r) = hook.bodies().into_iter().find(|b| b["report"] == "sales") {
            break r;
        }
        assert!(
            std::time::Instant::now() < until,
            "no sales report: {:?}",
            hook.bodies()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(sales["kind"], "recommendations");
    assert_eq!(sales["columns"][0], "by");
    assert_eq!(sales["columns"][2], "impressions");
}
