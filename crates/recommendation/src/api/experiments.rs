//! The `Experiments` gRPC service: start, stop and list ranking experiments
//! ([`crate::experiments`]), and the recommendation report
//! ([`crate::impressions::read_report`]). Admin only: the gateway lets keys
//! with the admin scope through, and with internal authentication on only
//! the gateway may call.
//!
//! Conversions live in [`crate::convert`], the `experiments` documents in
//! [`crate::store`].

use discovery_kit::internal::require_caller;
use discovery_proto::v1 as pb;
use discovery_proto::v1::experiments_server::Experiments;
use tonic::{Request, Response, Status};

use super::Service;
use crate::convert::{
    experiment_from_proto as from_proto, experiment_to_proto as to_proto, report_row,
};
use crate::error::experiments_unavailable;
use crate::experiments::{CHANNEL, EXPERIMENTS, Experiment};
use crate::impressions::Window;
use crate::report;
use crate::store;

const ADMINS: &[&str] = &["gateway"];
/// The report is also read by monitoring (its dashboard panel).
const READERS: &[&str] = &["gateway", "monitoring"];

impl Service {
    /// Marks every running experiment stopped; returns the last of them.
    async fn stop_running(&self, now: i64) -> Result<Option<Experiment>, Status> {
        let running = store::running_experiments(&self.store)
            .await
            .map_err(experiments_unavailable)?;
        let mut last = None;
        for mut e in running {
            e.stopped_at = now;
            store::save_experiment(&self.store, &e, false)
                .await
                .map_err(experiments_unavailable)?;
            last = Some(e);
        }
        Ok(last)
    }

    /// Applies the stored state here and tells the other replicas.
    async fn announce(&self, running: Option<Experiment>) {
        self.experiments.set(running);
        self.cache.bus().publish(CHANNEL, b"reload").await;
    }
}

#[tonic::async_trait]
impl Experiments for Service {
    async fn start_experiment(
        &self,
        req: Request<pb::StartExperimentRequest>,
    ) -> Result<Response<pb::StartExperimentResponse>, Status> {
        require_caller(&req, self.internal_auth, ADMINS, "StartExperiment")?;
        let e = req
            .into_inner()
            .experiment
            .ok_or_else(|| Status::invalid_argument("experiment: required"))?;
        let mut e = from_proto(&e);
        e.validate().map_err(Status::from)?;
        let now = discovery_kit::now_unix_ms();
        self.stop_running(now).await?;
        e.started_at = now;
        self.store
            .put(EXPERIMENTS, store::experiment_document(&e, true))
            .await
            .map_err(experiments_unavailable)?;
        tracing::info!(experiment = %e.id, variants = e.variants.len(), "experiment started");
        self.announce(Some(e.clone())).await;
        Ok(Response::new(pb::StartExperimentResponse {
            experiment: Some(to_proto(&e)),
        }))
    }

    async fn stop_experiment(
        &self,
        req: Request<pb::StopExperimentRequest>,
    ) -> Result<Response<pb::StopExperimentResponse>, Status> {
        require_caller(&req, self.internal_auth, ADMINS, "StopExperiment")?;
        let stopped = self.stop_running(discovery_kit::now_unix_ms()).await?;
        if let Some(e) = &stopped {
            tracing::info!(experiment = %e.id, "experiment stopped");
        }
        self.announce(None).await;
        Ok(Response::new(pb::StopExperimentResponse {
            experiment: stopped.as_ref().map(to_proto),
        }))
    }

    async fn list_experiments(
        &self,
        req: Request<pb::ListExperimentsRequest>,
    ) -> Result<Response<pb::ListExperimentsResponse>, Status> {
        require_caller(&req, self.internal_auth, ADMINS, "ListExperiments")?;
        let listed = store::recent_experiments(&self.store, 21)
            .await
            .map_err(experiments_unavailable)?;
        Ok(Response::new(pb::ListExperimentsResponse {
            experiments: listed.iter().map(to_proto).collect(),
        }))
    }

    async fn get_recommendation_report(
        &self,
        req: Request<pb::GetRecommendationReportRequest>,
    ) -> Result<Response<pb::GetRecommendationReportResponse>, Status> {
        require_caller(&req, self.internal_auth, READERS, "GetRecommendationReport")?;
        let req = req.into_inner();
        let window = match pb::ReportWindow::try_from(req.window) {
            Ok(pb::ReportWindow::Hour) => Window::Hour,
            Ok(pb::ReportWindow::Unspecified | pb::ReportWindow::Day) => Window::Day,
            Ok(pb::ReportWindow::Week) => Window::Week,
            Err(_) => {
                return Err(Status::invalid_argument(
                    "window: give HOUR, DAY or WEEK (or leave it unset for DAY)",
                ));
            }
        };
        if req.experiment_id.len() > 64 {
            return Err(Status::invalid_argument(
                "experiment_id: at most 64 characters",
            ));
        }
        let (r, from) = crate::impressions::read_report(
            &self.store,
            window,
            &req.experiment_id,
            discovery_kit::now_unix_ms(),
        )
        .await
        .map_err(experiments_unavailable)?;
        let rows = |v: Vec<report::Row>| v.iter().map(report_row).collect();
        Ok(Response::new(pb::GetRecommendationReportResponse {
            total: Some(report_row(&report::Row {
                key: String::new(),
                totals: r.total,
            })),
            by_variant: rows(r.by_variant),
            by_placement: rows(r.by_placement),
            by_face_shape: rows(r.by_face_shape),
            from_unix_ms: from,
            unattributed: self.log.as_ref().map_or(0, |l| l.unattributed()),
            impressions_dropped: self.log.as_ref().map_or(0, |l| l.dropped()),
        }))
    }
}
