//! The live dashboard: `GET /dashboard` (one self-contained HTML page, its
//! charts drawn as SVG by a few lines of script in the page: nothing is
//! fetched from a CDN) and `GET /api/overview` (the JSON it polls every
//! 2 s): per service request rate, p95/p99 latency and error rate over the
//! last 15 minutes, cache hit rates, SLA targets and firing alerts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::{Html, IntoResponse};
use discovery_proto::v1 as pb;
use serde_json::{Value, json};

use crate::window::{self, History};
use crate::{Hub, sla};

const PAGE: &str = include_str!("dashboard.html");

/// One service's time series by name: `(unix ms, value)` points.
type Series = BTreeMap<&'static str, Vec<(i64, f64)>>;

/// What the dashboard reads.
#[derive(Clone)]
pub struct Dashboard {
    /// Scraped history.
    pub history: Arc<Mutex<History>>,
    /// Alerts.
    pub hub: Hub,
}

/// `/dashboard` and `/api/overview`.
pub fn router(d: Dashboard) -> axum::Router {
    axum::Router::new()
        .route("/dashboard", axum::routing::get(|| async { Html(PAGE) }))
        .route(
            "/api/overview",
            axum::routing::get(move || {
                let d = d.clone();
                async move { axum::Json(overview(&d)).into_response() }
            }),
        )
}

/// The overview document.
pub fn overview(d: &Dashboard) -> Value {
    let history = d.history.lock().unwrap_or_else(|p| p.into_inner());
    let now = tokio::time::Instant::now();
    let unix = |at: tokio::time::Instant| {
        discovery_kit::now_unix_ms() - now.saturating_duration_since(at).as_millis() as i64
    };
    let mut services: BTreeMap<String, Series> = BTreeMap::new();
    for (at, secs, inc) in history.steps(Duration::from_secs(15 * 60), 90) {
        let t = unix(at);
        for (svc, (count, errors)) in window::per_service(&inc) {
            let s = services.entry(svc.clone()).or_default();
            s.entry("rate")
                .or_default()
                .push((t, count as f64 / secs.max(1e-3)));
            s.entry("error_rate")
                .or_default()
                .push((t, errors as f64 / count.max(1) as f64));
            for (name, q) in [("p95_ms", 0.95), ("p99_ms", 0.99)] {
                if let Some(v) = window::service_quantile(&inc, q, &svc, None) {
                    s.entry(name).or_default().push((t, v * 1000.0));
                }
            }
        }
    }
    let inc5 = history.increase(Duration::from_secs(300));
    let caches: BTreeMap<String, Value> = window::caches(&inc5)
        .into_iter()
        .filter(|(_, (h, m))| h + m > 0)
        .map(|(k, (h, m))| {
            (
                k,
                json!({"hits": h, "misses": m, "hit_rate": h as f64 / (h + m) as f64}),
            )
        })
        .collect();
    let targets: Vec<Value> = if history.is_empty() {
        Vec::new()
    } else {
        sla::report(&history, "", pb::Window::Window5m)
            .targets
            .into_iter()
            .map(|t| {
                json!({"name": t.name, "target": t.target, "observed": t.observed,
                       "met": t.met, "comparison": t.comparison})
            })
            .collect()
    };
    drop(history);
    let alerts: Vec<Value> = d
        .hub
        .firing()
        .into_iter()
        .map(|a| {
            json!({
                "id": a.id, "rule": a.rule, "summary": a.summary, "labels": a.labels,
                "severity": pb::Severity::try_from(a.severity).map(|s| s.as_str_name()).unwrap_or("SEVERITY_UNSPECIFIED"),
                "fired_at_unix_ms": a.fired_at_unix_ms, "value": a.value,
            })
        })
        .collect();
    json!({
        "generated_at_unix_ms": discovery_kit::now_unix_ms(),
        "services": services,
        "caches": caches,
        "targets": targets,
        "alerts": alerts,
    })
}
