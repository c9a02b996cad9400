//! The monitoring service: SLA reports, alerts and aggregated health.
//!
//! - `collect`: metrics sources (this process's registry, or services'
//!   `/metrics` over HTTP), scraped every `DISCOVERY_MONITORING_SCRAPE_INTERVAL`;
//! - `window`: the scrapes kept as snapshots, window figures as increases;
//! - `sla`: `GetSlaReport` and the rules' observations;
//! - `rules`: the alert rules and their pending/firing/resolved machine;
//!   transitions are stored in `alerts`.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod collect;
pub mod dashboard;
pub mod notify;
pub mod rollup;
pub mod rules;
pub mod sla;
pub mod window;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use discovery_kit::CancellationToken;
use discovery_kit::config::{ConfigError, Env};
use discovery_kit::deps::Dependency;
use discovery_kit::server::{BoxError, ServeConfig, ServiceHandle};
use discovery_kit::store::{FindOptions, IndexSpec, Store, StoreConfig, Workload, doc};
use discovery_proto::service_names;
use discovery_proto::v1 as pb;
use discovery_proto::v1::cache_admin_client::CacheAdminClient;
use discovery_proto::v1::experiments_client::ExperimentsClient;
use discovery_proto::v1::monitoring_server::{Monitoring, MonitoringServer};
use futures::Stream;
use tonic::service::Routes;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Alerts collection.
pub const ALERTS: &str = "alerts";
/// Metric rollups collection.
pub const METRICS_ROLLUPS: &str = "metrics_rollups";

/// A service monitoring watches.
#[derive(Debug, Clone)]
pub struct Target {
    /// Short name.
    pub service: String,
    /// gRPC URL (`http://host:port`, `dns://host:port`), or, with a path,
    /// an HTTP readiness endpoint (`dns://host:9090/readyz`: a gateway
    /// serving TLS, whose gRPC health monitoring cannot ask in plain text).
    pub url: String,
    /// Fully qualified gRPC service checked for readiness.
    pub grpc_name: &'static str,
}

/// Service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to serve.
    pub serve: ServeConfig,
    /// Store.
    pub store: StoreConfig,
    /// Services to watch.
    pub targets: Vec<Target>,
    /// Metrics sources.
    pub sources: Vec<collect::Source>,
    /// Scrape and rule evaluation interval.
    pub scrape_interval: Duration,
    /// Where alerts are posted.
    pub webhook: Option<notify::Webhook>,
    /// Token for the dashboard from beyond loopback
    /// (`DISCOVERY_DASHBOARD_TOKEN[_FILE]`).
    pub dashboard_token: Option<String>,
}

impl Config {
    /// Reads `DISCOVERY_MONITORING_PORT`, the store and the `DISCOVERY_*_URLS` targets.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut targets = Vec::new();
        for (service, var, default, grpc_name) in [
            (
                "gateway",
                "DISCOVERY_GATEWAY_URLS",
                "http://127.0.0.1:50051",
                service_names::DISCOVERY,
            ),
            (
                "face-analysis",
                "DISCOVERY_FACE_ANALYSIS_URLS",
                "http://127.0.0.1:50052",
                service_names::FACE_ANALYSIS,
            ),
            (
                "recommendation",
                "DISCOVERY_RECOMMENDATION_URLS",
                "http://127.0.0.1:50053",
                service_names::RECOMMENDATION,
            ),
            (
                "sync",
                "DISCOVERY_SYNC_URLS",
                "http://127.0.0.1:50054",
                service_names::SYNC,
            ),
        ] {
            for url in env.list(var, &[default]) {
                match readiness_path(&url) {
                    Some((scheme, authority, _)) => {
                        if !matches!(scheme, "http" | "dns") || authority.is_empty() {
                            return Err(ConfigError::new(
                                var,
                                format!(
                                    "{url:?}: a readiness URL is http://host:port/path or dns://host:port/path"
                                ),
                            ));
                        }
                    }
                    None => {
                        discovery_kit::client::endpoint(var, &url)
                            .map_err(|e| ConfigError::new(var, e.reason))?;
                    }
                }
                targets.push(Target {
                    service: service.into(),
                    url,
                    grpc_name,
                });
            }
        }
        let var = "DISCOVERY_MONITORING_SCRAPE";
        let sources = env
            .list(var, &["local"])
            .iter()
            .map(|s| collect::Source::parse(s).map_err(|e| ConfigError::new(var, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let scrape_interval = env.duration(
            "DISCOVERY_MONITORING_SCRAPE_INTERVAL",
            Duration::from_secs(10),
        )?;
        if scrape_interval.is_zero() {
            return Err(ConfigError::new(
                "DISCOVERY_MONITORING_SCRAPE_INTERVAL",
                "must be above zero (e.g. 10s)",
            ));
        }
        let webhook = env
            .raw("DISCOVERY_ALERT_WEBHOOK_URL")
            .filter(|u| !u.is_empty())
            .map(|u| {
                notify::Webhook::new(&u)
                    .map_err(|e| ConfigError::new("DISCOVERY_ALERT_WEBHOOK_URL", e))
            })
            .transpose()?;
        Ok(Self {
            serve: ServeConfig::from_env(env, "DISCOVERY_MONITORING_PORT", 50055)?,
            store: StoreConfig::from_env(env)?,
            targets,
            sources,
            scrape_interval,
            webhook,
            dashboard_token: discovery_kit::cache::secret(env, "DISCOVERY_DASHBOARD_TOKEN")?
                .filter(|t| !t.is_empty()),
        })
    }
}

#[derive(Clone)]
struct Service {
    store: Store,
    targets: Vec<(Target, Probe)>,
    history: Arc<Mutex<window::History>>,
    hub: Hub,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// `(scheme, host:port, /path)` of a URL with a path (an HTTP readiness
/// endpoint); `None` for a plain gRPC URL.
fn readiness_path(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let at = rest.find('/')?;
    let (authority, path) = rest.split_at(at);
    (path.len() > 1).then_some((scheme, authority, path))
}

/// How a target is reached for health checks.
#[derive(Clone)]
enum Probe {
    /// HTTP GET of a readiness path on one address (`http://`) or on every
    /// replica of a name (`dns://`): 200 is ready, another answer live but
    /// not ready.
    Http {
        authority: String,
        path: String,
        every: bool,
    },
    /// One address (`http://host:port`).
    One(Box<HealthClient<discovery_kit::client::TracedChannel>>),
    /// Every replica a name resolves to (`dns://host:port`, a headless
    /// Service), each checked on its own.
    Every(String),
}

impl Probe {
    fn new(t: &Target) -> Result<Self, discovery_kit::client::EndpointError> {
        if let Some((scheme, authority, path)) = readiness_path(&t.url) {
            return Ok(Probe::Http {
                authority: authority.to_string(),
                path: path.to_string(),
                every: scheme == "dns",
            });
        }
        Ok(match t.url.strip_prefix("dns://") {
            Some(hostport) => Probe::Every(hostport.to_string()),
            None => Probe::One(Box::new(HealthClient::new(
                discovery_kit::client::connect_lazy("DISCOVERY_*_URLS", &t.url)?,
            ))),
        })
    }

    /// One entry per replica checked.
    async fn check(&self, target: &Target) -> Vec<pb::ServiceHealth> {
        match self {
            Probe::One(client) => vec![check(target, &target.url, (**client).clone()).await],
            Probe::Http {
                authority,
                path,
                every: false,
            } => vec![check_http(target, authority, path).await],
            Probe::Http {
                authority,
                path,
                every: true,
            } => match discovery_kit::client::resolve_all(authority).await {
                Ok(addrs) if !addrs.is_empty() => {
                    let checks = addrs
                        .into_iter()
                        .map(|a| async move { check_http(target, &a.to_string(), path).await });
                    futures::future::join_all(checks).await
                }
                failed => vec![unresolved(target, failed)],
            },
            Probe::Every(hostport) => {
                let addrs = match discovery_kit::client::resolve_all(hostport).await {
                    Ok(a) if !a.is_empty() => a,
                    failed => return vec![unresolved(target, failed)],
                };
                let checks = addrs.into_iter().filter_map(|a| {
                    let url = format!("http://{a}");
                    let ch = discovery_kit::client::connect_lazy("DISCOVERY_*_URLS", &url).ok()?;
                    Some(async move { check(target, &a.to_string(), HealthClient::new(ch)).await })
                });
                futures::future::join_all(checks).await
            }
        }
    }
}

/// The entry for a `dns://` name that gave no address.
fn unresolved<E: std::fmt::Display>(
    target: &Target,
    failed: Result<Vec<std::net::SocketAddr>, E>,
) -> pb::ServiceHealth {
    let why = match failed {
        Err(e) => e.to_string(),
        Ok(_) => "no addresses (no ready replica)".to_string(),
    };
    pb::ServiceHealth {
        service: target.service.clone(),
        address: target.url.clone(),
        detail: format!("cannot resolve {}: {why}", target.url),
        ..Default::default()
    }
}

/// One replica's HTTP readiness endpoint (the same answer as its gRPC
/// health; dependencies are not reported there).
async fn check_http(target: &Target, authority: &str, path: &str) -> pb::ServiceHealth {
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(2), collect::status(authority, path)).await;
    let (live, ready, detail) = match r {
        Err(_) => (false, false, format!("GET {path} timed out after 2 s")),
        Ok(Err(e)) => (false, false, format!("GET {path} failed: {e}")),
        Ok(Ok(code)) if code == http::StatusCode::OK => (true, true, "serving".to_string()),
        Ok(Ok(code)) => (true, false, format!("not serving (GET {path}: {code})")),
    };
    pb::ServiceHealth {
        service: target.service.clone(),
        address: authority.to_string(),
        live,
        ready,
        detail,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        degraded: false,
        degraded_dependencies: Vec::new(),
    }
}

async fn check(
    target: &Target,
    address: &str,
    mut client: HealthClient<discovery_kit::client::TracedChannel>,
) -> pb::ServiceHealth {
    let started = Instant::now();
    let req = tonic_health::pb::HealthCheckRequest {
        service: target.grpc_name.to_string(),
    };
    let r = tokio::time::timeout(Duration::from_secs(2), client.check(req)).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (live, ready, mut detail) = match r {
        Err(_) => (false, false, "health check timed out after 2 s".to_string()),
        Ok(Err(s)) => (
            false,
            false,
            format!("health check failed: {}", s.message()),
        ),
        Ok(Ok(resp)) => {
            let serving = resp.into_inner().status == ServingStatus::Serving as i32;
            (
                true,
                serving,
                if serving {
                    "serving".into()
                } else {
                    "not serving".into()
                },
            )
        }
    };
    // Dependencies the service reports under their own health names; an
    // unknown name (NOT_FOUND) is a dependency it does not have.
    let mut down = Vec::new();
    if live {
        for dep in discovery_kit::deps::KNOWN {
            let req = tonic_health::pb::HealthCheckRequest {
                service: discovery_kit::deps::health_name(dep),
            };
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), client.check(req)).await
                && r.into_inner().status == ServingStatus::NotServing as i32
            {
                down.push(dep.to_string());
            }
        }
    }
    if !down.is_empty() {
        detail = format!("{detail}; degraded: {} unreachable", down.join(", "));
    }
    pb::ServiceHealth {
        service: target.service.clone(),
        address: address.to_string(),
        live,
        ready,
        detail,
        latency_ms,
        degraded: !down.is_empty(),
        degraded_dependencies: down,
    }
}

#[tonic::async_trait]
impl Monitoring for Service {
    async fn get_sla_report(
        &self,
        req: Request<pb::GetSlaReportRequest>,
    ) -> Result<Response<pb::GetSlaReportResponse>, Status> {
        let req = req.into_inner();
        let window = pb::Window::try_from(req.window).map_err(|_| {
            Status::invalid_argument(format!(
                "window: {} is not a window (1 = 1 min, 2 = 5 min, 3 = 1 h, 4 = 24 h, 0 = all)",
                req.window
            ))
        })?;
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if history.is_empty() {
            return Err(Status::unavailable(
                "no metrics scraped yet; retry after the first scrape interval",
            ));
        }
        Ok(Response::new(sla::report(&history, &req.service, window)))
    }

    async fn list_alerts(
        &self,
        req: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let limit = req.into_inner().limit;
        if limit > 1000 {
            return Err(Status::invalid_argument(format!(
                "limit: {limit} is over the maximum of 1000"
            )));
        }
        let opts = FindOptions {
            sort: Some(doc! {"active_since": -1}),
            skip: 0,
            limit: if limit == 0 { 100 } else { limit as u64 },
        };
        let docs = self.store.find(ALERTS, doc! {}, opts).await.map_err(|e| {
            tracing::error!(error = %e, "listing alerts failed");
            Status::unavailable("alerts cannot be read right now; retry later")
        })?;
        let alerts = docs.iter().map(alert_from_doc).collect();
        Ok(Response::new(pb::ListAlertsResponse { alerts }))
    }

    type WatchAlertsStream = BoxStream<pb::Alert>;

    async fn watch_alerts(
        &self,
        _req: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        use tokio_stream::StreamExt;
        let stream = tokio_stream::wrappers::BroadcastStream::new(self.hub.subscribe())
            .filter_map(|r| r.ok().map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_system_health(
        &self,
        _req: Request<pb::GetSystemHealthRequest>,
    ) -> Result<Response<pb::GetSystemHealthResponse>, Status> {
        let checks = self.targets.iter().map(|(t, p)| p.check(t));
        let mut services: Vec<pb::ServiceHealth> = futures::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect();
        // Monitoring serves from memory; without its store it only loses
        // rollups and alert history writes (retried on the next tick).
        let store_ok = self.store.ping().await.is_ok();
        services.push(pb::ServiceHealth {
            service: "monitoring".into(),
            address: "self".into(),
            live: true,
            ready: true,
            detail: if store_ok {
                format!("store: {}", self.store.kind())
            } else {
                format!("store: {}; degraded: store unreachable", self.store.kind())
            },
            latency_ms: 0.0,
            degraded: !store_ok,
            degraded_dependencies: if store_ok {
                vec![]
            } else {
                vec!["store".into()]
            },
        });
        let ready = services.iter().all(|s| s.ready);
        let degraded = services.iter().any(|s| s.degraded);
        Ok(Response::new(pb::GetSystemHealthResponse {
            ready,
            services,
            degraded,
        }))
    }
}

fn alert_from_doc(d: &discovery_kit::store::Document) -> pb::Alert {
    let int = |k: &str| d.get_i64(k).unwrap_or_default();
    pb::Alert {
        id: d.get_str("_id").unwrap_or_default().to_string(),
        rule: d.get_str("rule").unwrap_or_default().to_string(),
        severity: d.get_i32("severity").unwrap_or_default(),
        state: d.get_i32("state").unwrap_or_default(),
        labels: d
            .get_document("labels")
            .map(|l| {
                l.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        summary: d.get_str("summary").unwrap_or_default().to_string(),
        value: d.get_f64("value").unwrap_or_default(),
        active_since_unix_ms: int("active_since"),
        fired_at_unix_ms: int("fired_at"),
        resolved_at_unix_ms: int("resolved_at"),
    }
}

/// The stored form of a transition (one document per alert instance,
/// updated when it resolves).
fn alert_doc(t: &rules::Transition, now: tokio::time::Instant) -> discovery_kit::store::Document {
    let unix = |at: tokio::time::Instant| {
        discovery_kit::now_unix_ms() - now.saturating_duration_since(at).as_millis() as i64
    };
    let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let active_since = unix(t.active_since);
    let severity = match t.rule.severity {
        rules::Severity::Info => pb::Severity::Info,
        rules::Severity::Warning => pb::Severity::Warning,
        rules::Severity::Critical => pb::Severity::Critical,
    };
    let (state, resolved_at) = match t.phase {
        rules::Phase::Resolved => (pb::AlertState::Resolved, discovery_kit::now_unix_ms()),
        rules::Phase::Firing => (pb::AlertState::Firing, 0),
        rules::Phase::Pending => (pb::AlertState::Pending, 0),
    };
    let mut label_doc = discovery_kit::store::Document::new();
    for (k, v) in &t.labels {
        label_doc.insert(k.clone(), v.clone());
    }
    let value = if t.value.is_finite() { t.value } else { 0.0 };
    doc! {
        "_id": format!("{}|{}|{active_since}", t.rule.name, labels.join(",")),
        "rule": t.rule.name,
        "severity": severity as i32,
        "state": state as i32,
        "labels": label_doc,
        "summary": format!("{} {} ({}): {value:.3} against {:.3}", t.rule.name,
            match t.phase { rules::Phase::Resolved => "resolved", _ => "firing" },
            labels.join(", "), t.rule.threshold),
        "value": value,
        "active_since": active_since,
        "fired_at": t.fired_at.map(unix).unwrap_or(0),
        "resolved_at": resolved_at,
    }
}

/// Where alert transitions go: the `alerts` collection, `WatchAlerts`
/// subscribers, the webhook, and the rule's remediation.
#[derive(Clone)]
pub struct Hub {
    firing: Arc<Mutex<std::collections::BTreeMap<String, pb::Alert>>>,
    store: Store,
    tx: tokio::sync::broadcast::Sender<pb::Alert>,
    webhook: Option<notify::Webhook>,
    recommendation: Option<CacheAdminClient<discovery_kit::client::TracedChannel>>,
}

impl Hub {
    /// A hub storing into `store`, posting to `webhook`, warming caches
    /// through `recommendation`.
    pub fn new(
        store: Store,
        webhook: Option<notify::Webhook>,
        recommendation: Option<CacheAdminClient<discovery_kit::client::TracedChannel>>,
    ) -> Self {
        Self {
            firing: Arc::default(),
            store,
            tx: tokio::sync::broadcast::channel(256).0,
            webhook,
            recommendation,
        }
    }

    /// Alerts firing now, oldest first.
    pub fn firing(&self) -> Vec<pb::Alert> {
        let firing = self.firing.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<pb::Alert> = firing.values().cloned().collect();
        v.sort_by_key(|a| a.fired_at_unix_ms);
        v
    }

    /// Live alert changes.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<pb::Alert> {
        self.tx.subscribe()
    }

    /// Records and announces one transition; delivery and remediation run
    /// in the background (a slow webhook never delays evaluation).
    pub async fn publish(&self, t: &rules::Transition, now: tokio::time::Instant) -> pb::Alert {
        tracing::warn!(rule = t.rule.name, labels = ?t.labels, phase = ?t.phase, value = t.value, "alert");
        let doc = alert_doc(t, now);
        let alert = alert_from_doc(&doc);
        if let Err(e) = self.store.put(ALERTS, doc).await {
            tracing::error!(error = %e, "storing an alert failed");
        }
        {
            let mut firing = self.firing.lock().unwrap_or_else(|p| p.into_inner());
            if alert.state == pb::AlertState::Firing as i32 {
                firing.insert(alert.id.clone(), alert.clone());
            } else {
                firing.remove(&alert.id);
            }
        }
        let _ = self.tx.send(alert.clone());
        if let Some(w) = &self.webhook {
            let (w, a) = (w.clone(), alert.clone());
            tokio::spawn(async move {
                let outcome = match w.deliver(&a).await {
                    Ok(_) => "delivered",
                    Err(e) => {
                        tracing::error!(error = %e, alert = %a.id, "alert not delivered");
                        "failed"
                    }
                };
                metrics::counter!("discovery_monitoring_webhook_deliveries_total", "outcome" => outcome)
                    .increment(1);
            });
        }
        if t.phase == rules::Phase::Firing
            && t.rule.remediation == Some(rules::Remediation::WarmCaches)
            && let Some(mut reco) = self.recommendation.clone()
        {
            // Its own trace, named after the alert: the WarmCache call on
            // recommendation is its child.
            let span = tracing::info_span!(
                "monitoring.remediate",
                alert.rule = t.rule.name,
                alert.id = %alert.id,
                action = "warm_caches",
            );
            tokio::spawn(async move {
                let call = reco.warm_cache(pb::WarmCacheRequest {});
                match tracing::Instrument::instrument(call, span).await {
                    Ok(r) => tracing::info!(
                        entries = r.get_ref().entries_warmed,
                        "remediation: caches warmed"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e.message(), "remediation: cache warming failed")
                    }
                }
                metrics::counter!("discovery_monitoring_remediations_total", "action" => "warm_caches")
                    .increment(1);
            });
        }
        alert
    }
}

/// Scrapes, keeps the history, runs the rules and publishes transitions.
async fn collect_loop(
    sources: Vec<collect::Source>,
    every: Duration,
    history: Arc<Mutex<window::History>>,
    hub: Hub,
    store: Store,
    shutdown: CancellationToken,
) {
    let mut engine = rules::Engine::new(rules::spec_rules());
    let mut last_rollup: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut values: std::collections::HashMap<window::Key, f64> = Default::default();
        for s in &sources {
            match s.read().await {
                Ok(series) => {
                    for (k, v) in series {
                        *values.entry(k).or_default() += v;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "scrape failed"),
            }
        }
        let now = tokio::time::Instant::now();
        let snapshot = window::Snapshot { at: now, values };
        let rollup = (last_rollup.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60)))
            .then(|| rollup::to_doc(&snapshot, discovery_kit::now_unix_ms(), Duration::ZERO));
        let observations = {
            let mut h = history.lock().unwrap_or_else(|p| p.into_inner());
            h.push(snapshot);
            sla::observations(&h)
        };
        if let Some(doc) = rollup {
            last_rollup = Some(now);
            if let Err(e) = store.put(METRICS_ROLLUPS, doc).await {
                tracing::warn!(error = %e, "storing a metric rollup failed");
            }
        }
        for t in engine.evaluate(now, &observations) {
            hub.publish(&t, now).await;
        }
    }
}

/// Indexes of the monitoring collections.
pub fn indexes() -> Vec<(&'static str, Vec<IndexSpec>)> {
    vec![
        (
            ALERTS,
            vec![IndexSpec::new(
                "state_1_active_since_-1",
                doc! {"state": 1, "active_since": -1},
            )],
        ),
        (
            METRICS_ROLLUPS,
            vec![
                IndexSpec::new(
                    "service_1_window_start_-1",
                    doc! {"service": 1, "window_start": -1},
                ),
                IndexSpec::new("created_at_ttl", doc! {"created_at": 1}).ttl(rollup::KEEP),
            ],
        ),
    ]
}

/// Starts the service; its metrics endpoint also serves the dashboard.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle, BoxError> {
    spawn_with_dashboard(config, shutdown).await.map(|(h, _)| h)
}

/// Starts the service and returns the dashboard's routes (`/dashboard`,
/// `/api/overview`) for a process that serves one shared HTTP endpoint
/// (`discovery up`).
pub async fn spawn_with_dashboard(
    config: Config,
    shutdown: CancellationToken,
) -> Result<(ServiceHandle, axum::Router), BoxError> {
    let store = config.store.connect(Workload::Analytics).await?;
    for (coll, ix) in indexes() {
        store.ensure_indexes(coll, &ix).await?;
    }
    let mut targets = Vec::new();
    for t in config.targets {
        let probe = Probe::new(&t)?;
        targets.push((t, probe));
    }
    // Windows survive a restart: the stored minute rollups come back first.
    let mut restored = window::History::default();
    match rollup::restore(&store, &mut restored).await {
        Ok(n) if n > 0 => tracing::info!(rollups = n, "metric history restored"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "metric rollups unreadable; starting with none"),
    }
    let history = Arc::new(Mutex::new(restored));
    let recommendation_urls: Vec<String> = targets
        .iter()
        .filter(|(t, _)| t.service == "recommendation")
        .map(|(t, _)| t.url.clone())
        .collect();
    let recommendation = (!recommendation_urls.is_empty())
        .then(|| {
            discovery_kit::client::connect_balanced(
                "DISCOVERY_RECOMMENDATION_URLS",
                &recommendation_urls,
                config.serve.internal.as_ref(),
                "monitoring",
            )
        })
        .transpose()?;
    let report = recommendation.clone().map(ExperimentsClient::new);
    let recommendation = recommendation.map(CacheAdminClient::new);
    let hub = Hub::new(store.clone(), config.webhook.clone(), recommendation);
    let routes = Routes::new(discovery_kit::compressed!(MonitoringServer::new(Service {
        store: store.clone(),
        targets,
        history: history.clone(),
        hub: hub.clone(),
    })));
    let board = dashboard::router(dashboard::Dashboard {
        history: history.clone(),
        hub: hub.clone(),
        report,
        token: config.dashboard_token.as_deref().map(Arc::from),
    });
    let mut handle = ServiceHandle::start(
        "monitoring",
        &config.serve,
        routes,
        &[service_names::MONITORING],
        Some(board.clone()),
        shutdown.clone(),
    )
    .await?;
    handle.watch_dependencies(
        &config.serve,
        [Dependency::store(store.clone())],
        shutdown.clone(),
    );
    let store_for_rollups = store.clone();
    handle.push_task(tokio::spawn(async move {
        collect_loop(
            config.sources,
            config.scrape_interval,
            history,
            hub,
            store_for_rollups,
            shutdown,
        )
        .await;
        Ok(())
    }));
    Ok((handle, board))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_a_path_is_an_http_readiness_check() {
        assert_eq!(
            readiness_path("dns://gw-headless.shop.svc:9090/readyz"),
            Some(("dns", "gw-headless.shop.svc:9090", "/readyz"))
        );
        assert_eq!(readiness_path("http://127.0.0.1:50051"), None);
        assert_eq!(readiness_path("http://127.0.0.1:50051/"), None);
        let env = Env::from_pairs([("DISCOVERY_GATEWAY_URLS", "ftp://x:1/readyz")]);
        let err = Config::from_env(&env).unwrap_err().to_string();
        assert!(err.starts_with("DISCOVERY_GATEWAY_URLS:"), "{err}");
        let env = Env::from_pairs([("DISCOVERY_GATEWAY_URLS", "dns://gw:9090/readyz")]);
        assert_eq!(
            Config::from_env(&env).unwrap().targets[0].url,
            "dns://gw:9090/readyz"
        );
    }
}
