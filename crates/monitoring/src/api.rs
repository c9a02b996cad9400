//! Monitoring's gRPC adapter: `discovery.v1.Monitoring`.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::error::MonitoringError;
use crate::probe::Fleet;
use crate::store::{self, alert_history, recent_alerts};
use crate::{Hub, convert, sla, window};
use discovery_kit::store::Store;
use discovery_proto::v1 as pb;
use discovery_proto::v1::monitoring_server::Monitoring;
use futures::Stream;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub(crate) struct Service {
    pub(crate) store: Store,
    pub(crate) fleet: Fleet,
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
        Ok(Response::new(self.fleet.health().await))
    }

    async fn acknowledge_alert(
        &self,
        req: Request<pb::AcknowledgeAlertRequest>,
    ) -> Result<Response<pb::AcknowledgeAlertResponse>, Status> {
        let by = who(&req);
        let req = req.into_inner();
        let alert = self.hub.acknowledge(&req.id, &by, &req.note).await?;
        Ok(Response::new(pb::AcknowledgeAlertResponse {
            alert: Some(alert),
        }))
    }

    async fn create_silence(
        &self,
        req: Request<pb::CreateSilenceRequest>,
    ) -> Result<Response<pb::CreateSilenceResponse>, Status> {
        let by = who(&req);
        let silence = self
            .hub
            .create_silence(&convert::silence_request(req.get_ref()), &by)
            .await?;
        Ok(Response::new(pb::CreateSilenceResponse {
            silence: Some(convert::silence(&silence)),
        }))
    }

    async fn list_silences(
        &self,
        req: Request<pb::ListSilencesRequest>,
    ) -> Result<Response<pb::ListSilencesResponse>, Status> {
        let all = self.hub.silences(req.get_ref().include_expired).await?;
        Ok(Response::new(pb::ListSilencesResponse {
            silences: all.iter().map(convert::silence).collect(),
        }))
    }

    async fn expire_silence(
        &self,
        req: Request<pb::ExpireSilenceRequest>,
    ) -> Result<Response<pb::ExpireSilenceResponse>, Status> {
        let s = self.hub.expire_silence(&req.get_ref().id).await?;
        Ok(Response::new(pb::ExpireSilenceResponse {
            silence: Some(convert::silence(&s)),
        }))
    }

    async fn get_alert_history(
        &self,
        req: Request<pb::GetAlertHistoryRequest>,
    ) -> Result<Response<pb::GetAlertHistoryResponse>, Status> {
        let req = req.into_inner();
        let limit = page(req.limit, 200)?;
        let now = self.hub.now_ms();
        let until = if req.until_unix_ms > 0 {
            req.until_unix_ms
        } else {
            now
        };
        let since = if req.since_unix_ms > 0 {
            req.since_unix_ms
        } else {
            until - 24 * 3600 * 1000
        };
        if since > until {
            return Err(
                MonitoringError::BadRequest("since_unix_ms is after until_unix_ms".into()).into(),
            );
        }
        let alerts = alert_history(&self.store, since, until, &req.rule, limit)
            .await
            .map_err(MonitoringError::AlertsUnavailable)?;
        Ok(Response::new(pb::GetAlertHistoryResponse { alerts }))
    }

    async fn list_alert_deliveries(
        &self,
        req: Request<pb::ListAlertDeliveriesRequest>,
    ) -> Result<Response<pb::ListAlertDeliveriesResponse>, Status> {
        let req = req.into_inner();
        let limit = page(req.limit, 100)?;
        let deliveries = store::deliveries(&self.store, &req.alert_id, limit)
            .await
            .map_err(MonitoringError::AlertsUnavailable)?;
        Ok(Response::new(pb::ListAlertDeliveriesResponse {
            deliveries,
        }))
    }
}

/// Who is asking: the API key's client the gateway names, else "admin".
fn who<T>(req: &Request<T>) -> String {
    req.metadata()
        .get("x-discovery-client")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .unwrap_or("admin")
        .to_string()
}

/// A page size: 0 is `default`, over 1000 refused.
fn page(limit: u32, default: u64) -> Result<u64, MonitoringError> {
    match limit {
        0 => Ok(default),
        n if n > 1000 => Err(MonitoringError::TooMany(n)),
        n => Ok(u64::from(n)),
    }
}
