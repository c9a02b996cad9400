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
    /// Recommendation's report (the "what sells" panel); `None`: no panel
    /// data.
    pub report: Option<
        discovery_proto::v1::experiments_client::ExperimentsClient<
            discovery_kit::client::TracedChannel,
        >,
    >,
    /// Who may look: callers from loopback always (`discovery up`,
    /// `kubectl port-forward`); anyone else only with this token
    /// (`DISCOVERY_DASHBOARD_TOKEN[_FILE]`) as a Bearer token or as the
    /// password of HTTP Basic auth (the browser asks). Without a token the
    /// dashboard answers only loopback.
    pub token: Option<Arc<str>>,
}

/// May the caller of `req` see the dashboard?
fn allowed(req: &axum::extract::Request, token: Option<&str>) -> bool {
    use axum::extract::ConnectInfo;
    let loopback = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|c| c.0.ip().is_loopback());
    if loopback {
        return true;
    }
    let Some(token) = token else {
        return false;
    };
    let Some(auth) = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let presented = if let Some(b) = auth.strip_prefix("Bearer ") {
        Some(b.trim().to_string())
    } else if let Some(b) = auth.strip_prefix("Basic ") {
        basic_password(b.trim())
    } else {
        None
    };
    presented.is_some_and(|p| {
        p.len() == token.len()
            && p.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

/// The password of an HTTP Basic credential (`base64(user:password)`).
fn basic_password(b64: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if b64.len() > 1024 {
        return None;
    }
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in b64.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    text.split_once(':').map(|(_, p)| p.to_string())
}

fn refused() -> axum::response::Response {
    (
        http::StatusCode::UNAUTHORIZED,
        [(
            http::header::WWW_AUTHENTICATE,
            "Basic realm=\"discovery dashboard\", charset=\"UTF-8\"",
        )],
        "the dashboard needs the token (DISCOVERY_DASHBOARD_TOKEN) as a Bearer token or Basic auth password, or a loopback connection (kubectl port-forward)\n",
    )
        .into_response()
}

/// `/dashboard`, `/api/overview` and `/api/recommendations`.
pub fn router(d: Dashboard) -> axum::Router {
    let token = d.token.clone();
    let for_report = d.clone();
    axum::Router::new()
        .route(
            "/dashboard",
            axum::routing::get(move |req: axum::extract::Request| {
                let ok = allowed(&req, token.as_deref());
                async move {
                    if ok {
                        Html(PAGE).into_response()
                    } else {
                        refused()
                    }
                }
            }),
        )
        .route(
            "/api/overview",
            axum::routing::get(move |req: axum::extract::Request| {
                let d = d.clone();
                let ok = allowed(&req, d.token.as_deref());
                async move {
                    if ok {
                        axum::Json(overview(&d)).into_response()
                    } else {
                        refused()
                    }
                }
            }),
        )
        .route(
            "/api/recommendations",
            axum::routing::get(move |req: axum::extract::Request| {
                let d = for_report.clone();
                let ok = allowed(&req, d.token.as_deref());
                async move {
                    if ok {
                        axum::Json(recommendations(&d).await).into_response()
                    } else {
                        refused()
                    }
                }
            }),
        )
}

/// What the recommendations sold in the last 24 hours, per ranking variant
/// and placement (recommendation's `GetRecommendationReport`).
pub async fn recommendations(d: &Dashboard) -> Value {
    let Some(client) = &d.report else {
        return json!({"error": "no recommendation service configured"});
    };
    let asked = client
        .clone()
        .get_recommendation_report(pb::GetRecommendationReportRequest {
            window: pb::ReportWindow::Day as i32,
            experiment_id: String::new(),
        })
        .await;
    let r = match asked {
        Ok(r) => r.into_inner(),
        Err(s) => return json!({"error": s.message()}),
    };
    let rate = |r: Option<pb::Rate>| {
        let r = r.unwrap_or_default();
        json!({"value": r.value, "low": r.low, "high": r.high})
    };
    let row = |r: &pb::ReportRow| {
        json!({
            "key": r.key, "impressions": r.impressions, "clicked": r.clicked,
            "added_to_cart": r.added_to_cart, "purchased": r.purchased,
            "ctr": rate(r.ctr), "add_to_cart_rate": rate(r.add_to_cart_rate),
            "conversion": rate(r.conversion), "revenue_minor": r.revenue_minor,
        })
    };
    json!({
        "window": "24h",
        "total": r.total.as_ref().map(row),
        "variants": r.by_variant.iter().map(row).collect::<Vec<_>>(),
        "placements": r.by_placement.iter().map(row).collect::<Vec<_>>(),
        "unattributed": r.unattributed,
        "impressions_dropped": r.impressions_dropped,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: &str, auth: Option<&str>) -> axum::extract::Request {
        let mut r = http::Request::get("/dashboard");
        if let Some(a) = auth {
            r = r.header(http::header::AUTHORIZATION, a);
        }
        let mut r = r.body(axum::body::Body::empty()).unwrap();
        r.extensions_mut()
            .insert(axum::extract::ConnectInfo::<std::net::SocketAddr>(
                peer.parse().unwrap(),
            ));
        r
    }

    #[test]
    fn the_dashboard_answers_loopback_or_the_token_only() {
        let t = Some("s3cret-token");
        assert!(allowed(&request("127.0.0.1:5000", None), None));
        assert!(
            !allowed(&request("10.1.2.3:5000", None), None),
            "no token: loopback only"
        );
        assert!(!allowed(&request("10.1.2.3:5000", None), t));
        assert!(allowed(
            &request("10.1.2.3:5000", Some("Bearer s3cret-token")),
            t
        ));
        assert!(!allowed(&request("10.1.2.3:5000", Some("Bearer wrong")), t));
        // "ops:s3cret-token" in base64.
        assert!(allowed(
            &request("10.1.2.3:5000", Some("Basic b3BzOnMzY3JldC10b2tlbg==")),
            t
        ));
        assert!(!allowed(&request("10.1.2.3:5000", Some("Basic !!!")), t));
    }
}
