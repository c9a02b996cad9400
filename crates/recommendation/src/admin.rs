//! The `Experiments` gRPC service: start, stop and list ranking experiments
//! ([`crate::experiments`]), and the recommendation report
//! ([`crate::impressions::read_report`]). Admin only: the gateway lets keys
//! with the admin scope through, and with internal authentication on only
//! the gateway may call.
//!
//! Conversions between the API, the domain and the `experiments` documents
//! live here, at the edge.

use discovery_kit::internal::require_caller;
use discovery_kit::store::{Bson, Document, FindOptions, Store, StoreError, doc};
use discovery_proto::v1 as pb;
use discovery_proto::v1::experiments_server::Experiments;
use tonic::{Request, Response, Status};

use crate::api::Service;
use crate::experiments::{CHANNEL, EXPERIMENTS, Experiment, Variant};
use crate::impressions::Window;
use crate::report;

const ADMINS: &[&str] = &["gateway"];
/// The report is also read by monitoring (its dashboard panel).
const READERS: &[&str] = &["gateway", "monitoring"];

fn from_proto(e: &pb::Experiment) -> Experiment {
    Experiment {
        id: e.id.clone(),
        variants: e
            .variants
            .iter()
            .map(|v| Variant {
                name: v.name.clone(),
                share_percent: v.share_percent,
                weights: v.weights.map(|w| {
                    [
                        w.face_shape,
                        w.fit,
                        w.preference,
                        w.popularity,
                        w.collaborative,
                    ]
                }),
                brand_cap: v.brand_cap,
            })
            .collect(),
        started_at: 0,
        stopped_at: 0,
    }
}

fn to_proto(e: &Experiment) -> pb::Experiment {
    pb::Experiment {
        id: e.id.clone(),
        variants: e
            .variants
            .iter()
            .map(|v| pb::RankingVariant {
                name: v.name.clone(),
                share_percent: v.share_percent,
                weights: v.weights.map(|w| pb::RankingWeights {
                    face_shape: w[0],
                    fit: w[1],
                    preference: w[2],
                    popularity: w[3],
                    collaborative: w[4],
                }),
                brand_cap: v.brand_cap,
            })
            .collect(),
        started_at_unix_ms: e.started_at,
        stopped_at_unix_ms: e.stopped_at,
    }
}

fn to_document(e: &Experiment, running: bool) -> Document {
    let variants: Vec<Document> = e
        .variants
        .iter()
        .map(|v| {
            let mut d = doc! {
                "name": &v.name,
                "share": v.share_percent as i64,
                "brandCap": v.brand_cap as i64,
            };
            if let Some(w) = v.weights {
                d.insert(
                    "weights",
                    w.iter()
                        .map(|x| Bson::Double(*x as f64))
                        .collect::<Vec<_>>(),
                );
            }
            d
        })
        .collect();
    doc! {
        "_id": &e.id,
        "variants": variants,
        "startedAt": e.started_at,
        "stoppedAt": e.stopped_at,
        "running": running,
    }
}

fn from_document(d: &Document) -> Option<Experiment> {
    let num = |d: &Document, k: &str| match d.get(k) {
        Some(Bson::Int64(v)) => Some(*v),
        Some(Bson::Int32(v)) => Some(*v as i64),
        _ => None,
    };
    let variants = d
        .get_array("variants")
        .ok()?
        .iter()
        .map(|v| {
            let v = v.as_document()?;
            let weights = match v.get_array("weights") {
                Ok(a) if a.len() == 5 => {
                    let mut w = [0f32; 5];
                    for (o, x) in w.iter_mut().zip(a) {
                        *o = x.as_f64()? as f32;
                    }
                    Some(w)
                }
                _ => None,
            };
            Some(Variant {
                name: v.get_str("name").ok()?.to_string(),
                share_percent: num(v, "share")?.clamp(0, 100) as u32,
                weights,
                brand_cap: num(v, "brandCap").unwrap_or(0).clamp(0, 100) as u32,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let e = Experiment {
        id: d.get_str("_id").ok()?.to_string(),
        variants,
        started_at: num(d, "startedAt").unwrap_or(0),
        stopped_at: num(d, "stoppedAt").unwrap_or(0),
    };
    // A document edited by hand into nonsense is not run.
    e.validate().ok().map(|_| e)
}

/// The running experiment as stored (`None`: none runs).
pub async fn load_running(store: &Store) -> Result<Option<Experiment>, StoreError> {
    let docs = store
        .find(
            EXPERIMENTS,
            doc! {"running": true},
            FindOptions {
                sort: Some(doc! {"startedAt": -1}),
                limit: 1,
                ..Default::default()
            },
        )
        .await?;
    Ok(docs.first().and_then(from_document))
}

fn unavailable(e: StoreError) -> Status {
    tracing::error!(error = %e, "experiments store failed");
    Status::unavailable("experiments cannot be read or written right now; retry later")
}

impl Service {
    /// Marks every running experiment stopped; returns the last of them.
    async fn stop_running(&self, now: i64) -> Result<Option<Experiment>, Status> {
        let docs = self
            .store
            .find(EXPERIMENTS, doc! {"running": true}, FindOptions::default())
            .await
            .map_err(unavailable)?;
        let mut last = None;
        for d in &docs {
            if let Some(mut e) = from_document(d) {
                e.stopped_at = now;
                self.store
                    .put(EXPERIMENTS, to_document(&e, false))
                    .await
                    .map_err(unavailable)?;
                last = Some(e);
            }
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
        e.validate()
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let now = discovery_kit::now_unix_ms();
        self.stop_running(now).await?;
        e.started_at = now;
        self.store
            .put(EXPERIMENTS, to_document(&e, true))
            .await
            .map_err(unavailable)?;
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
        let docs = self
            .store
            .find(
                EXPERIMENTS,
                doc! {},
                FindOptions {
                    sort: Some(doc! {"running": -1, "startedAt": -1}),
                    limit: 21,
                    ..Default::default()
                },
            )
            .await
            .map_err(unavailable)?;
        Ok(Response::new(pb::ListExperimentsResponse {
            experiments: docs
                .iter()
                .filter_map(from_document)
                .map(|e| to_proto(&e))
                .collect(),
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
        .map_err(unavailable)?;
        let rows = |v: Vec<report::Row>| v.iter().map(row_proto).collect();
        Ok(Response::new(pb::GetRecommendationReportResponse {
            total: Some(row_proto(&report::Row {
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

fn rate(r: report::Rate) -> Option<pb::Rate> {
    Some(pb::Rate {
        value: r.value,
        low: r.low,
        high: r.high,
    })
}

fn row_proto(r: &report::Row) -> pb::ReportRow {
    pb::ReportRow {
        key: r.key.clone(),
        impressions: r.totals.impressions,
        clicked: r.totals.clicked,
        added_to_cart: r.totals.added_to_cart,
        purchased: r.totals.purchased,
        ctr: rate(r.ctr()),
        add_to_cart_rate: rate(r.add_to_cart_rate()),
        conversion: rate(r.conversion()),
        revenue_minor: r.totals.revenue_minor.clone().into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experiments_survive_their_document() {
        let e = Experiment {
            id: "fit".into(),
            variants: vec![
                Variant {
                    name: "a".into(),
                    share_percent: 50,
                    weights: None,
                    brand_cap: 0,
                },
                Variant {
                    name: "b".into(),
                    share_percent: 50,
                    weights: Some([1.0, 2.0, 0.5, 0.25, 0.0]),
                    brand_cap: 3,
                },
            ],
            started_at: 5,
            stopped_at: 0,
        };
        assert_eq!(from_document(&to_document(&e, true)), Some(e.clone()));
        assert_eq!(from_proto(&to_proto(&e)).variants, e.variants);
        let mut bad = to_document(&e, true);
        bad.insert("variants", Vec::<Document>::new());
        assert_eq!(
            from_document(&bad),
            None,
            "an invalid stored experiment is not run"
        );
    }
}
