//! Monitoring's gRPC adapter: `discovery.v1.Monitoring`.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::error::MonitoringError;
use crate::probe::Probe;
use crate::store::recent_alerts;
use crate::{Hub, Target, sla, window};
use discovery_kit::store::Store;
use discovery_proto::v1 as pb;
use discovery_proto::v1::monitoring_server::Monitoring;
use futures::Stream;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub(crate) struct Service {
    pub(crate) store: Store,
    pub(crate) targets: Vec<(Target, Probe)>,
    pub(crate) history: Arc<Mutex<window::History>>,
    pub(crate) hub: Hub,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Monitoring for Service {
    async fn get_sla_report(
        &self,
        req: Request<pb::GetSlaReportRequest>,
    ) -> Result<Response<pb::GetSlaReportResponse>, Status> {
        let req = req.into_inner();
        let window =
            pb::Window::try_from(req.window).map_err(|_| MonitoringError::BadWindow(req.window))?;
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if history.is_empty() {
            return Err(MonitoringError::NothingScraped.into());
        }
        Ok(Response::new(sla::report(&history, &req.service, window)))
    }

    async fn list_alerts(
        &self,
        req: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let limit = req.into_inner().limit;
        if limit > 1000 {
            return Err(MonitoringError::TooMany(limit).into());
        }
        let limit = if limit == 0 { 100 } else { u64::from(limit) };
        let alerts = recent_alerts(&self.store, limit)
            .await
            .map_err(MonitoringError::AlertsUnavailable)?;
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
