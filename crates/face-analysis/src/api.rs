//! gRPC surface: AnalyzeFace (content-hash cache → pipeline on an engine →
//! store) and GetFaceAnalysis.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use discovery_kit::cache::{Cache, CacheKind};
use discovery_kit::store::{Store, bson, doc};
use discovery_proto::v1 as pb;
use discovery_proto::v1::face_analysis_server::FaceAnalysis;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Code, Request, Response, Status};

use crate::FACE_ANALYSES;
use crate::image::Limits;
use crate::models::{ModelError, Pool};
use crate::pipeline::{self, Analysis, Gates, Rejection, Scratch, Timings};

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

/// Rejection → gRPC status, with the reason code in `x-discovery-reason`.
pub fn status(r: &Rejection) -> Status {
    let code = match r {
        Rejection::NoFace(_) => Code::NotFound,
        Rejection::Model(ModelError::Missing(_)) => Code::FailedPrecondition,
        Rejection::Model(_) => Code::Internal,
        _ => Code::InvalidArgument,
    };
    let mut s = Status::new(code, r.to_string());
    if let Ok(v) = r.reason().parse() {
        s.metadata_mut().insert("x-discovery-reason", v);
    }
    s
}

fn hex128(digest: &[u8]) -> String {
    hex::encode(&digest[..16])
}

fn point3(p: &[f32; 3]) -> pb::Point3 {
    pb::Point3 {
        x: p[0],
        y: p[1],
        z: p[2],
    }
}

fn measurement(v: &crate::geometry::Value) -> Option<pb::Measurement> {
    Some(pb::Measurement {
        value_px: v.px,
        value_mm: v.mm,
        confidence: v.confidence,
    })
}

/// The full result (landmarks included; stripped per request).
pub fn to_proto(
    a: &Analysis,
    id: &str,
    source: pb::LandmarkSource,
    took_us: u64,
) -> pb::FaceAnalysisResult {
    let m = &a.measurements;
    pb::FaceAnalysisResult {
        analysis_id: id.to_string(),
        face_shape: a.shape.shape as i32,
        face_shape_confidence: a.shape.confidence,
        runner_up_shape: a.shape.runner_up as i32,
        runner_up_confidence: a.shape.runner_up_confidence,
        measurements: Some(pb::FaceMeasurements {
            pupillary_distance: measurement(&m.pd),
            face_width: measurement(&m.face_width),
            face_length: measurement(&m.face_length),
            forehead_width: measurement(&m.forehead_width),
            jaw_width: measurement(&m.jaw_width),
            jaw_angle: measurement(&m.jaw_angle),
            nose_bridge_width: measurement(&m.nose_bridge_width),
        }),
        mm_per_px: m.mm_per_px,
        face_box: Some(pb::BoundingBox {
            x: a.face_box[0],
            y: a.face_box[1],
            width: a.face_box[2],
            height: a.face_box[3],
        }),
        pose: Some(pb::HeadPose {
            roll_deg: m.pose.roll,
            yaw_deg: m.pose.yaw,
            pitch_deg: m.pose.pitch,
        }),
        iris_centers: m
            .iris_centers
            .map(|c| c.iter().map(|p| pb::Point2 { x: p[0], y: p[1] }).collect())
            .unwrap_or_default(),
        landmarks: a.landmarks.iter().map(point3).collect(),
        source: source as i32,
        processing_time_us: took_us,
    }
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
        let doc = doc! {
            "_id": &result.analysis_id,
            "sessionId": &req.session_id,
            "userId": &req.user_id,
            "contentHash": hash,
            "createdAt": bson::DateTime::now(),
            "faceShape": pb::FaceShape::try_from(result.face_shape).map_or("", |s| s.as_str_name()),
            "pdMm": result.measurements.as_ref().and_then(|m| m.pupillary_distance.as_ref()).map_or(0.0, |v| v.value_mm as f64),
            "source": pb::LandmarkSource::try_from(result.source).map_or("", |s| s.as_str_name()),
            "result": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: result.encode_to_vec() },
        };
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
            None => {
                return Err(Status::invalid_argument(
                    "input: send an image (JPEG, PNG or WebP bytes) or client landmarks",
                ));
            }
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
            return Err(Status::invalid_argument(
                "analysis_id: give the id AnalyzeFace returned (24 hex characters)",
            ));
        }
        let stored = self.store.get(FACE_ANALYSES, &id).await.map_err(|e| {
            tracing::error!(error = %e, "reading face analysis failed");
            Status::unavailable("analyses cannot be read right now; retry later")
        })?;
        let Some(doc) = stored else {
            return Err(Status::not_found(format!(
                "analysis_id: no analysis {id:?} (they are kept 24 h)"
            )));
        };
        let result = doc
            .get_binary_generic("result")
            .ok()
            .and_then(|b| pb::FaceAnalysisResult::decode(b.as_slice()).ok())
            .ok_or_else(|| {
                tracing::error!(id = %id, "stored face analysis is unreadable");
                Status::data_loss(format!("analysis {id:?} is stored but unreadable"))
            })?;
        Ok(Response::new(pb::GetFaceAnalysisResponse {
            result: Some(result),
        }))
    }
}
