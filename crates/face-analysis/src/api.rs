//! gRPC surface: AnalyzeFace (content-hash cache → pipeline on an engine →
//! store) and GetFaceAnalysis.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use discovery_kit::cache::{Cache, CacheKind};
use discovery_kit::store::Store;
use discovery_proto::v1 as pb;
use discovery_proto::v1::face_analysis_server::FaceAnalysis;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::error::FaceError;
use crate::image::Limits;
use crate::models::{ModelError, Pool};
use crate::pipeline::{self, Analysis, Gates, Rejection, Scratch, Timings};
use crate::store::{self, FACE_ANALYSES};

pub use crate::convert::to_proto;

/// `face_analysis:{session_id}:{hash}`, 1 h (seed spec): this service's
/// one cache kind.
pub static FACE_ANALYSIS_KIND: CacheKind =
    CacheKind::new("face_analysis", std::time::Duration::from_secs(3600), false);

pub use discovery_proto::MAX_REQUEST_BYTES;

/// The service.
#[derive(Clone)]
pub struct Service {
    pool: Result<Pool, ModelError>,
    store: Store,
    cache: Arc<Cache>,
    limits: Limits,
    gates: Gates,
}

impl Service {
    /// A service over an engine pool (or the reason there is none).
    pub fn new(pool: Result<Pool, ModelError>, store: Store, cache: Arc<Cache>) -> Self {
        Self {
            pool,
            store,
            cache,
            limits: Limits::default(),
            gates: Gates::default(),
        }
    }
}

pub use crate::error::status;

fn hex128(digest: &[u8]) -> String {
    hex::encode(&digest[..16])
}

fn record(source: &'static str, outcome: &'static str) {
    metrics::counter!("discovery_face_analysis_total", "source" => source, "outcome" => outcome)
        .increment(1);
}

impl Service {
    async fn run_photo(&self, image: Bytes) -> Result<(Analysis, Timings), Rejection> {
        let pool = self
            .pool
            .as_ref()
            .map_err(|e| Rejection::Model(e.clone()))?;
        let mut engine = pool.get().await;
        let (limits, gates) = (self.limits, self.gates);
        // The stages' spans are children of the call's, across the thread hop.
        let parent = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _call = parent.entered();
            let mut timings = Timings::default();
            let mut scratch = Scratch::default();
            pipeline::analyze_bytes(
                &mut engine,
                &image,
                &limits,
                &gates,
                &mut scratch,
                &mut timings,
            )
            .map(|a| (a, timings))
        })
        .await
        .map_err(|e| Rejection::Model(ModelError::Runtime(format!("analysis task failed: {e}"))))?
    }

    async fn store_result(&self, result: &pb::FaceAnalysisResult, req: &pb::Requester, hash: &str) {
        let doc = store::analysis_document(result, req, hash);
        if let Err(e) = self.store.put(FACE_ANALYSES, doc).await {
            // The shopper still gets the analysis; only GetFaceAnalysis misses it.
            metrics::counter!("discovery_face_analysis_store_errors_total").increment(1);
            tracing::warn!(error = %e, id = %result.analysis_id, "storing the face analysis failed");
        }
    }
}

#[tonic::async_trait]
impl FaceAnalysis for Service {
    #[tracing::instrument(skip_all, fields(source, outcome))]
    async fn analyze_face(
        &self,
        req: Request<pb::AnalyzeFaceRequest>,
    ) -> Result<Response<pb::AnalyzeFaceResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let requester = req.requester.unwrap_or_default();
        let include_landmarks = req.include_landmarks;
        let (source, content) = match &req.input {
            None => return Err(FaceError::NoInput.into()),
            Some(pb::analyze_face_request::Input::Image(b)) => {
                if let Err(e) = self.limits.check_bytes(b.len()) {
                    record("photo", "too_large");
                    return Err(status(&Rejection::Image(e)));
                }
                ("photo", Sha256::digest(b))
            }
            Some(pb::analyze_face_request::Input::Landmarks(l)) => {
                ("client", Sha256::digest(l.encode_to_vec()))
            }
        };
        tracing::Span::current().record("source", source);
        let hash = hex128(&content);
        let session = if requester.session_id.is_empty() {
            "_"
        } else {
            requester.session_id.as_str()
        };
        let key = format!("face_analysis:{session}:{hash}");

        if let Some(bytes) = self.cache.get(&FACE_ANALYSIS_KIND, &key).await
            && let Ok(mut result) = pb::FaceAnalysisResult::decode(bytes)
        {
            if !include_landmarks {
                result.landmarks.clear();
            }
            result.processing_time_us = 0;
            record(source, "cached");
            return Ok(Response::new(pb::AnalyzeFaceResponse {
                result: Some(result),
                cached: true,
            }));
        }

        let (outcome, landmark_source) = match req.input {
            Some(pb::analyze_face_request::Input::Image(image)) => (
                self.run_photo(Bytes::from(image)).await.map(|(a, t)| {
                    for (stage, d) in t.stages() {
                        metrics::histogram!("discovery_face_analysis_stage_seconds", "stage" => stage)
                            .record(d.as_secs_f64());
                    }
                    a
                }),
                pb::LandmarkSource::ServerModel,
            ),
            Some(pb::analyze_face_request::Input::Landmarks(l)) => {
                let points: Vec<[f32; 3]> = l.points.iter().map(|p| [p.x, p.y, p.z]).collect();
                (
                    pipeline::analyze_landmarks(&points, (l.image_width, l.image_height), &self.gates),
                    pb::LandmarkSource::Client,
                )
            }
            None => unreachable!("checked above"),
        };
        let analysis = match outcome {
            Ok(a) => a,
            Err(r) => {
                record(source, r.reason());
                tracing::Span::current().record("outcome", r.reason());
                if matches!(r, Rejection::Model(_)) {
                    tracing::error!(error = %r, "face analysis failed");
                }
                return Err(status(&r));
            }
        };
        let took = started.elapsed();
        metrics::histogram!("discovery_face_analysis_duration_seconds", "source" => source)
            .record(took.as_secs_f64());
        // Same photo in the same session -> same id: re-sending is idempotent.
        let id = hex::encode(&Sha256::digest(format!("{session}:{hash}"))[..12]);
        let mut result = to_proto(&analysis, &id, landmark_source, took.as_micros() as u64);
        self.store_result(&result, &requester, &hash).await;
        self.cache
            .set(
                &FACE_ANALYSIS_KIND,
                &key,
                Bytes::from(result.encode_to_vec()),
                &[],
            )
            .await;
        if !include_landmarks {
            result.landmarks.clear();
        }
        record(source, "ok");
        tracing::Span::current().record("outcome", "ok");
        Ok(Response::new(pb::AnalyzeFaceResponse {
            result: Some(result),
            cached: false,
        }))
    }

    async fn get_face_analysis(
        &self,
        req: Request<pb::GetFaceAnalysisRequest>,
    ) -> Result<Response<pb::GetFaceAnalysisResponse>, Status> {
        let id = req.into_inner().analysis_id;
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FaceError::BadId.into());
        }
        let stored = self.store.get(FACE_ANALYSES, &id).await.map_err(|e| {
            tracing::error!(error = %e, "reading face analysis failed");
            FaceError::Unavailable(e)
        })?;
        let Some(doc) = stored else {
            return Err(FaceError::NotFound(id).into());
        };
        let result = store::result_of(&doc).ok_or_else(|| {
            tracing::error!(id = %id, "stored face analysis is unreadable");
            FaceError::Unreadable(id.clone())
        })?;
        Ok(Response::new(pb::GetFaceAnalysisResponse {
            result: Some(result),
        }))
    }
}
