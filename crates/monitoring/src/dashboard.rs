//! The live dashboard: `GET /dashboard` (one self-contained HTML page, its
//! charts drawn as SVG by a few lines of script in the page: nothing is
//! fetched from a CDN) and the JSON it polls:
//! - `/api/overview` (every 2 s): per service request rate, p95/p99
//!   latency and error rate over the last 15 minutes, cache hit rates, each
//!   watched series against its rule's tiers with its trend, firing alerts
//!   (acknowledged, silenced, escalated) and the silences in force;
//! - `/api/health` (every 5 s): every replica of every service;
//! - `/api/history?from=&to=` (Unix ms, up to 25 hours back): the same
//!   series at up to 240 points, and the alerts active in the range;
//! - `/api/recommendations`: what the recommendations sold in 24 h.
//!
//! The page reads with the dashboard's access (loopback or its token);
//! acknowledging and silencing are the gateway's admin methods, which the
//! page calls with the admin key the operator types in (kept in the tab's
//! session storage), so they are authorised and audited as the CLI's are.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::{Html, IntoResponse};
use discovery_proto::v1 as pb;
use serde_json::{Value, json};

use crate::Hub;
use crate::probe::Fleet;
use crate::trends;
use crate::window::{self, History};

const PAGE: &str = include_str!("dashboard.html");

/// What the dashboard reads.
#[derive(Clone)]
pub struct Dashboard {
    /// Scraped history.
    pub history: Arc<Mutex<History>>,
    /// Alerts.
    pub hub: Hub,
    /// The services' replicas, for the health panel.
    pub fleet: Fleet,
    /// Who may look: callers from loopback always (`discovery up`,
    /// `kubectl port-forward`); anyone else only with this token
    /// (`DISCOVERY_DASHBOARD_TOKEN[_FILE]`) as a Bearer token or as the
    /// password of HTTP Basic auth (the browser asks). Without a token the
    /// dashboard answers only loopback.
    pub token: Option<Arc<str>>,
    /// The gateway's URL as the browser reaches it
    /// (`DISCOVERY_DASHBOARD_GATEWAY_URL`), offered to the page for the
    /// admin actions; `None`: the operator types it.
    pub gateway_url: Option<Arc<str>>,
}

/// The longest range `/api/history` answers (the history keeps 25 hours).
const MAX_RANGE_MS: i64 = 25 * 3600 * 1000;
/// Points per series in `/api/history`.
const HISTORY_POINTS: usize = 240;
/// Alerts listed with a history range.
const HISTORY_ALERTS: u64 = 200;
/// How long one health check of every replica answers every page (however
/// many are open, the replicas are asked at most this often).
const HEALTH_TTL: Duration = Duration::from_secs(2);

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

/// Headers on every answer: the page may not be framed (its buttons act
/// with the admin key: no clickjacking), sends no referrer, and nothing is
/// cached.
const HEADERS: [(http::header::HeaderName, &str); 4] = [
    (
        http::header::CONTENT_SECURITY_POLICY,
        "frame-ancestors 'none'",
    ),
    (http::header::X_FRAME_OPTIONS, "DENY"),
    (http::header::REFERRER_POLICY, "no-referrer"),
    (http::header::CACHE_CONTROL, "no-store"),
];

/// A document computed at most once per its time to live, however many
/// pages ask (one computation at a time; the others wait for its answer).
type Cached = Arc<tokio::sync::Mutex<Option<(std::time::Instant, Value)>>>;

/// How long a forecast answers (the hours it learns from change hourly).
const FORECAST_TTL: Duration = Duration::from_secs(300);

async fn cached<F: std::future::Future<Output = Value>>(
    cache: &Cached,
    ttl: Duration,
    compute: impl FnOnce() -> F,
) -> Value {
    let mut held = cache.lock().await;
    if let Some((at, v)) = &*held
        && at.elapsed() < ttl
    {
        return v.clone();
    }
    let v = compute().await;
    *held = Some((std::time::Instant::now(), v.clone()));
    v
}

/// `/dashboard` and its `/api/*` documents.
pub fn router(d: Dashboard) -> axum::Router {
    use axum::extract::Request;
    use axum::routing::get;
    // Each route: refused unless allowed, else `answer`.
    fn guarded<F, Fut>(d: &Dashboard, answer: F) -> axum::routing::MethodRouter
    where
        F: Fn(Dashboard, Request) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = axum::response::Response> + Send + 'static,
    {
        let d = d.clone();
        get(move |req: Request| {
            let d = d.clone();
            let answer = answer.clone();
            async move {
                let out = if allowed(&req, d.token.as_deref()) {
                    answer(d, req).await
                } else {
                    refused()
                };
                (HEADERS, out).into_response()
            }
        })
    }
    let health: Cached = Arc::default();
    let forecast: Cached = Arc::default();
    axum::Router::new()
        .route(
            "/dashboard",
            guarded(&d, |_, _| async { Html(PAGE).into_response() }),
        )
        .route(
            "/api/overview",
            guarded(&d, |d, _| async move {
                axum::Json(overview(&d)).into_response()
            }),
        )
        .route(
            "/api/health",
            guarded(&d, move |d, _| {
                let cache = health.clone();
                async move { axum::Json(health_of(&d, &cache).await).into_response() }
            }),
        )
        .route(
            "/api/history",
            guarded(&d, |d, req| async move {
                match history_range(&d, req.uri().query().unwrap_or("")).await {
                    Ok(v) => axum::Json(v).into_response(),
                    Err(why) => (http::StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
                }
            }),
        )
        .route(
            "/api/forecast",
            guarded(&d, move |d, _| {
                let cache = forecast.clone();
                async move {
                    let v = cached(&cache, FORECAST_TTL, || forecast_json(&d)).await;
                    axum::Json(v).into_response()
                }
            }),
        )
        .route(
            "/api/recommendations",
            guarded(&d, |d, _| async move {
                axum::Json(recommendations(&d).await).into_response()
            }),
        )
}

/// Every replica's health, asked at most every [`HEALTH_TTL`] whatever
/// the number of pages polling.
async fn health_of(d: &Dashboard, cache: &Cached) -> Value {
    cached(cache, HEALTH_TTL, || async {
        let h = d.fleet.health().await;
        let mut services: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for s in h.services {
            services.entry(s.service.clone()).or_default().push(json!({
                "address": s.address, "live": s.live, "ready": s.ready,
                "degraded": s.degraded, "degraded_dependencies": s.degraded_dependencies,
                "detail": s.detail, "latency_ms": s.latency_ms,
            }));
        }
        json!({
            "checked_at_unix_ms": discovery_kit::now_unix_ms(),
            "ready": h.ready, "degraded": h.degraded, "services": services,
        })
    })
    .await
}

/// `/api/forecast`: the next week's traffic from the stored hours, as
/// `GetCapacityForecast` answers it with its defaults, or why there is
/// none yet.
async fn forecast_json(d: &Dashboard) -> Value {
    let req = pb::GetCapacityForecastRequest::default();
    match crate::api::capacity_forecast(d.hub.store(), &req).await {
        Ok(f) => {
            let pts = |p: &[pb::TrendPoint]| -> Vec<(i64, f64)> {
                p.iter().map(|p| (p.at_unix_ms, p.value)).collect()
            };
            json!({
                "model": f.model, "history_hours": f.history_hours,
                "history": pts(&f.history), "forecast": pts(&f.forecast),
                "backtest_mape": f.backtest_mape, "backtest_hours": f.backtest_hours,
                "scenarios": f.scenarios.iter().map(|s| json!({
                    "name": s.name, "peak": s.peak_calls_per_second, "pods": s.pods,
                })).collect::<Vec<_>>(),
            })
        }
        Err(e) => json!({"error": e.to_string()}),
    }
}

/// `from` and `to` (Unix ms) of a history query; `to` defaults to now,
/// `from` to 24 hours before `to`.
fn parse_range(query: &str, now_ms: i64) -> Result<(i64, i64), String> {
    let (mut from, mut to) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n = || {
            v.parse::<i64>()
                .map_err(|_| format!("{k}={v:?} is not a time in Unix milliseconds"))
        };
        match k {
            "from" => from = Some(n()?),
            "to" => to = Some(n()?),
            _ => {
                return Err(format!(
                    "unknown parameter {k:?}: /api/history takes from and to (Unix ms)"
                ));
            }
        }
    }
    let to = to.unwrap_or(now_ms).min(now_ms);
    let from = from.unwrap_or(to.saturating_sub(24 * 3600 * 1000));
    if from >= to {
        return Err(format!("from ({from}) must be before to ({to})"));
    }
    // (saturating: a caller's numbers can be anything an i64 holds)
    if now_ms.saturating_sub(from) > MAX_RANGE_MS {
        return Err("the history goes back 25 hours: ask for a range within them".into());
    }
    Ok((from, to))
}

/// `/api/history`: the overview's series over a range, and the alerts
/// active in it.
async fn history_range(d: &Dashboard, query: &str) -> Result<Value, String> {
    let now_ms = discovery_kit::now_unix_ms();
    let (from, to) = parse_range(query, now_ms)?;
    let services = {
        let history = d.history.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        let at = |ms: i64| history.ago(now, Duration::from_millis((now_ms - ms).max(0) as u64));
        trends::service_series(&history, at(from), at(to), HISTORY_POINTS)
    };
    let alerts = match d.hub.history(from, to, HISTORY_ALERTS).await {
        Ok(a) => a.iter().map(alert_json).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "alert history unreadable for the dashboard");
            Vec::new()
        }
    };
    Ok(json!({"from": from, "to": to, "services": services, "alerts": alerts}))
}

fn severity_name(s: i32) -> &'static str {
    pb::Severity::try_from(s)
        .map(|s| s.as_str_name())
        .unwrap_or("SEVERITY_UNSPECIFIED")
}

/// An alert as the page shows it.
fn alert_json(a: &pb::Alert) -> Value {
    json!({
        "id": a.id, "rule": a.rule, "summary": a.summary, "labels": a.labels,
        "severity": severity_name(a.severity),
        "active_since_unix_ms": a.active_since_unix_ms,
        "fired_at_unix_ms": a.fired_at_unix_ms, "resolved_at_unix_ms": a.resolved_at_unix_ms,
        "value": a.value, "acknowledged_by": a.acknowledged_by,
        "acknowledged_at_unix_ms": a.acknowledged_at_unix_ms,
        "acknowledge_note": a.acknowledge_note, "silenced_by": a.silenced_by,
        "escalated_at_unix_ms": a.escalated_at_unix_ms,
    })
}

/// What the recommendations sold in the last 24 hours, per ranking variant
/// and placement (recommendation's `GetRecommendationReport`, through the
/// hub's client, the one scheduled reports read with).
pub async fn recommendations(d: &Dashboard) -> Value {
    let Some(mut client) = d.hub.experiments() else {
        return json!({"error": "no recommendation service configured"});
    };
    let asked = client
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
    let services = trends::service_series(
        &history,
        history.ago(now, Duration::from_secs(15 * 60)),
        now,
        90,
    );
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
    drop(history);
    let alerts: Vec<Value> = d.hub.firing().iter().map(alert_json).collect();
    let silences: Vec<Value> = d
        .hub
        .active_silences()
        .into_iter()
        .map(|s| {
            json!({"id": s.id, "rule": s.rule, "labels": s.labels, "reason": s.reason,
                   "created_by": s.created_by, "created_at_unix_ms": s.created_at_ms,
                   "expires_at_unix_ms": s.expires_at_ms})
        })
        .collect();
    json!({
        "generated_at_unix_ms": discovery_kit::now_unix_ms(),
        "services": services,
        "caches": caches,
        "alerts": alerts,
        "silences": silences,
        "standings": d.hub.standings(),
        "gateway_url": d.gateway_url.as_deref(),
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
    fn a_history_range_is_bounded_and_every_mistake_named() {
        let now = 100 * 3600 * 1000;
        let day = 24 * 3600 * 1000;
        assert_eq!(parse_range("", now), Ok((now - day, now)));
        assert_eq!(
            parse_range(&format!("from={}&to={}", now - 1000, now - 10), now),
            Ok((now - 1000, now - 10))
        );
        // A future end is now.
        assert_eq!(
            parse_range(&format!("from={}&to={}", now - 5, now + 9999), now),
            Ok((now - 5, now))
        );
        let err = |q: &str| parse_range(q, now).unwrap_err();
        assert!(err("from=yesterday").contains("from=\"yesterday\" is not a time"));
        assert!(err("limit=5").contains("unknown parameter \"limit\""));
        assert!(err(&format!("from={now}&to={}", now - 1)).contains("must be before"));
        assert!(err(&format!("from={}", now - 26 * 3600 * 1000)).contains("25 hours"));
        assert!(err("from=-9223372036854775808").contains("25 hours"));
        assert!(err(&format!("to={}", now - 30 * 3600 * 1000)).contains("25 hours"));
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
