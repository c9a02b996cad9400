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

    async fn get_trends(
        &self,
        req: Request<pb::GetTrendsRequest>,
    ) -> Result<Response<pb::GetTrendsResponse>, Status> {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Response::new(get_trends(&history, req.get_ref())?))
    }

    async fn get_capacity_forecast(
        &self,
        req: Request<pb::GetCapacityForecastRequest>,
    ) -> Result<Response<pb::GetCapacityForecastResponse>, Status> {
        Ok(Response::new(
            capacity_forecast(&self.store, req.get_ref()).await?,
        ))
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

/// `GetTrends`: the history's series of one metric per service, and
/// which way each goes.
pub fn get_trends(
    history: &window::History,
    req: &pb::GetTrendsRequest,
) -> Result<pb::GetTrendsResponse, MonitoringError> {
    let metric = match pb::TrendMetric::try_from(req.metric) {
        Ok(pb::TrendMetric::RequestRate) => "rate",
        Ok(pb::TrendMetric::LatencyP95Ms) => "p95_ms",
        Ok(pb::TrendMetric::LatencyP99Ms) => "p99_ms",
        Ok(pb::TrendMetric::ErrorRate) => "error_rate",
        _ => {
            return Err(MonitoringError::BadRequest(format!(
                "metric: {} is not a metric; name one: TREND_METRIC_REQUEST_RATE, TREND_METRIC_LATENCY_P95_MS, TREND_METRIC_LATENCY_P99_MS, TREND_METRIC_ERROR_RATE",
                req.metric
            )));
        }
    };
    let period = match req.period_seconds {
        0 => 3600,
        p if (60..=25 * 3600).contains(&p) => p,
        p => {
            return Err(MonitoringError::BadRequest(format!(
                "period_seconds: {p} is not within 60 and 90000 (the 25 hours monitoring keeps)"
            )));
        }
    };
    if req.service.len() > 64 {
        return Err(MonitoringError::BadRequest(
            "service: at most 64 bytes (gateway, recommendation...)".into(),
        ));
    }
    if history.is_empty() {
        return Err(MonitoringError::NothingScraped);
    }
    let now = tokio::time::Instant::now();
    let from = history.ago(now, std::time::Duration::from_secs(u64::from(period)));
    let series = crate::trends::service_series(history, from, now, 120)
        .into_iter()
        .filter(|(svc, _)| req.service.is_empty() || *svc == req.service)
        .map(|(service, s)| {
            let points = s.get(metric).cloned().unwrap_or_default();
            let t = crate::trends::trend(&points);
            pb::TrendSeries {
                service,
                points: points
                    .iter()
                    .map(|(at, v)| pb::TrendPoint {
                        at_unix_ms: *at,
                        value: *v,
                    })
                    .collect(),
                direction: convert::direction(t.direction) as i32,
                change: t.change,
                per_hour: t.per_hour,
            }
        })
        .collect();
    Ok(pb::GetTrendsResponse { series })
}

/// Growth scenarios asked for at most.
const MAX_SCENARIOS: usize = 10;

/// `GetCapacityForecast`: the stored hours of the gateway's calls, their
/// forecast and back-test, and the scenarios.
pub async fn capacity_forecast(
    store: &Store,
    req: &pb::GetCapacityForecastRequest,
) -> Result<pb::GetCapacityForecastResponse, MonitoringError> {
    use crate::forecast;
    use crate::store::HOUR_MS;
    let horizon = match req.horizon_seconds {
        0 => 7 * 24,
        s if (3600..=30 * 24 * 3600).contains(&s) => s.div_ceil(3600) as usize,
        s => {
            return Err(MonitoringError::BadRequest(format!(
                "horizon_seconds: {s} is not within 3600 (an hour) and 2592000 (30 days)"
            )));
        }
    };
    if req.growth.len() > MAX_SCENARIOS {
        return Err(MonitoringError::BadRequest(format!(
            "growth: {} scenarios; at most {MAX_SCENARIOS}",
            req.growth.len()
        )));
    }
    if let Some(g) = req
        .growth
        .iter()
        .find(|g| !g.is_finite() || !(-0.9..=100.0).contains(*g))
    {
        return Err(MonitoringError::BadRequest(format!(
            "growth: {g} is not a fraction between -0.9 and 100 (0.25: +25 %)"
        )));
    }
    let growth = if req.growth.is_empty() {
        vec![0.0, 0.25, 1.0]
    } else {
        req.growth.clone()
    };
    let now = discovery_kit::now_unix_ms();
    let since = now - store::KEEP_HOURLY.as_millis() as i64;
    let hours = store::hours(store, since)
        .await
        .map_err(MonitoringError::HistoryUnavailable)?;
    // Calls per second at the gateway, hour by hour, gaps (monitoring
    // down) marked.
    let first = hours.first().map_or(0, |h| h.start_ms / HOUR_MS);
    let last = hours.last().map_or(-1, |h| h.start_ms / HOUR_MS);
    let mut slots: Vec<Option<f64>> = vec![None; (last - first + 1).max(0) as usize];
    for h in &hours {
        let calls = h.services.get("gateway").map_or(0, |c| c.0);
        if h.covered_s > 0.0 {
            slots[(h.start_ms / HOUR_MS - first) as usize] = Some(calls as f64 / h.covered_s);
        }
    }
    let series = forecast::fill(&slots);
    let f = forecast::forecast(&series, horizon)?;
    let start = (last + 1) * HOUR_MS;
    let shown = series.len().min(7 * 24);
    let point = |i: i64, v: f64| pb::TrendPoint {
        at_unix_ms: i,
        value: v,
    };
    Ok(pb::GetCapacityForecastResponse {
        model: format!(
            "Holt-Winters additive, {} season, alpha {} beta {} gamma {}",
            if f.model.period == forecast::WEEK {
                "weekly"
            } else {
                "daily"
            },
            f.model.alpha,
            f.model.beta,
            f.model.gamma
        ),
        history_hours: series.len() as u32,
        history: series[series.len() - shown..]
            .iter()
            .enumerate()
            .map(|(i, v)| point(start - (shown - i) as i64 * HOUR_MS, *v))
            .collect(),
        forecast: f
            .points
            .iter()
            .enumerate()
            .map(|(i, v)| point(start + i as i64 * HOUR_MS, *v))
            .collect(),
        backtest_mape: f.backtest_mape,
        backtest_hours: forecast::HOLDOUT as u32,
        scenarios: forecast::scenarios(&f.points, &growth)
            .into_iter()
            .map(|s| pb::CapacityScenario {
                name: s.name,
                peak_calls_per_second: s.peak,
                pods: s
                    .pods
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            })
            .collect(),
    })
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
