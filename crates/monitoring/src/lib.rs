//! The monitoring service: SLA reports, alerts and aggregated health.
//!
//! This issue wires the service with aggregated health (live gRPC health
//! checks of every service) and alert listing from the `alerts` collection;
//! SLA reports and the rule engine arrive with the monitoring issue.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod rules;

use std::pin::Pin;
use std::time::{Duration, Instant};

use discovery_kit::CancellationToken;
use discovery_kit::config::{ConfigError, Env};
use discovery_kit::server::{BoxError, ServeConfig, ServiceHandle};
use discovery_kit::store::{FindOptions, IndexSpec, Store, StoreConfig, Workload, doc};
use discovery_proto::service_names;
use discovery_proto::v1 as pb;
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
    /// gRPC URL.
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
                discovery_kit::client::endpoint(var, &url)
                    .map_err(|e| ConfigError::new(var, e.reason))?;
                targets.push(Target {
                    service: service.into(),
                    url,
                    grpc_name,
                });
            }
        }
        Ok(Self {
            serve: ServeConfig::from_env(env, "DISCOVERY_MONITORING_PORT", 50055)?,
            store: StoreConfig::from_env(env)?,
            targets,
        })
    }
}

#[derive(Clone)]
struct Service {
    store: Store,
    targets: Vec<(Target, HealthClient<discovery_kit::client::TracedChannel>)>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

async fn check(
    target: &Target,
    mut client: HealthClient<discovery_kit::client::TracedChannel>,
) -> pb::ServiceHealth {
    let started = Instant::now();
    let req = tonic_health::pb::HealthCheckRequest {
        service: target.grpc_name.to_string(),
    };
    let r = tokio::time::timeout(Duration::from_secs(2), client.check(req)).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (live, ready, detail) = match r {
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
    pb::ServiceHealth {
        service: target.service.clone(),
        address: target.url.clone(),
        live,
        ready,
        detail,
        latency_ms,
    }
}

#[tonic::async_trait]
impl Monitoring for Service {
    async fn get_sla_report(
        &self,
        _req: Request<pb::GetSlaReportRequest>,
    ) -> Result<Response<pb::GetSlaReportResponse>, Status> {
        Err(discovery_kit::server::not_yet("GetSlaReport", "monitoring"))
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
        let alerts = docs
            .into_iter()
            .map(|d| pb::Alert {
                id: d.get_str("_id").unwrap_or_default().to_string(),
                rule: d.get_str("rule").unwrap_or_default().to_string(),
                summary: d.get_str("summary").unwrap_or_default().to_string(),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(pb::ListAlertsResponse { alerts }))
    }

    type WatchAlertsStream = BoxStream<pb::Alert>;

    async fn watch_alerts(
        &self,
        _req: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        Err(discovery_kit::server::not_yet("WatchAlerts", "monitoring"))
    }

    async fn get_system_health(
        &self,
        _req: Request<pb::GetSystemHealthRequest>,
    ) -> Result<Response<pb::GetSystemHealthResponse>, Status> {
        let checks = self.targets.iter().map(|(t, c)| check(t, c.clone()));
        let mut services = futures::future::join_all(checks).await;
        services.push(pb::ServiceHealth {
            service: "monitoring".into(),
            address: "self".into(),
            live: true,
            ready: self.store.ping().await.is_ok(),
            detail: format!("store: {}", self.store.kind()),
            latency_ms: 0.0,
        });
        let ready = services.iter().all(|s| s.ready);
        Ok(Response::new(pb::GetSystemHealthResponse {
            ready,
            services,
        }))
    }
}

/// Starts the service.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle, BoxError> {
    let store = config.store.connect(Workload::Analytics).await?;
    store
        .ensure_indexes(
            ALERTS,
            &[IndexSpec::new(
                "state_1_active_since_-1",
                doc! {"state": 1, "active_since": -1},
            )],
        )
        .await?;
    store
        .ensure_indexes(
            METRICS_ROLLUPS,
            &[IndexSpec::new(
                "service_1_window_start_-1",
                doc! {"service": 1, "window_start": -1},
            )],
        )
        .await?;
    let mut targets = Vec::new();
    for t in config.targets {
        let ch = discovery_kit::client::connect_lazy("DISCOVERY_*_URLS", &t.url)?;
        targets.push((t, HealthClient::new(ch)));
    }
    let routes = Routes::new(discovery_kit::compressed!(MonitoringServer::new(Service {
        store,
        targets
    })));
    ServiceHandle::start(
        "monitoring",
        &config.serve,
        routes,
        &[service_names::MONITORING],
        None,
        shutdown,
    )
    .await
}
