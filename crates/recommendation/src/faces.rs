//! The face-analysis hand-off: `FaceContext.analysis_id` resolved to the
//! stored analysis's shape and measurements by a call to face-analysis'
//! `GetFaceAnalysis` (face-analysis owns `face_analyses`; this service never
//! reads that collection). Analyses never change once stored, so an answer
//! is kept here for [`KEEP_FOR`]; an id that face-analysis does not know
//! (unknown, or past its 24 h TTL) is NOT_FOUND naming the field.

use std::time::Duration;

use discovery_kit::client::TracedChannel;
use discovery_proto::v1 as pb;
use discovery_proto::v1::face_analysis_client::FaceAnalysisClient;
use tonic::{Code, Status};

/// How long a resolved analysis is kept in memory.
pub const KEEP_FOR: Duration = Duration::from_secs(600);
/// Most analyses kept.
const KEEP_AT_MOST: u64 = 20_000;

/// What a stored analysis says about the face (the fields of a
/// [`pb::FaceContext`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredFace {
    /// `pb::FaceShape` value.
    pub face_shape: i32,
    /// Millimetres; 0 when the analysis had no scale.
    pub face_width_mm: f32,
    /// Millimetres; 0 when unknown.
    pub pupillary_distance_mm: f32,
    /// Millimetres; 0 when unknown.
    pub nose_bridge_width_mm: f32,
    /// Millimetres per pixel at the face; 0 when the analysis had no scale.
    pub mm_per_px: f32,
    /// Iris centres (subject's right, then left), pixels, when found.
    pub irises: Option<[(f32, f32); 2]>,
}

impl StoredFace {
    /// The face of an analysis result.
    pub fn of(r: &pb::FaceAnalysisResult) -> Self {
        let mm = |m: Option<&pb::Measurement>| m.map_or(0.0, |m| m.value_mm);
        let ms = r.measurements.as_ref();
        Self {
            face_shape: r.face_shape,
            face_width_mm: mm(ms.and_then(|m| m.face_width.as_ref())),
            pupillary_distance_mm: mm(ms.and_then(|m| m.pupillary_distance.as_ref())),
            nose_bridge_width_mm: mm(ms.and_then(|m| m.nose_bridge_width.as_ref())),
            mm_per_px: r.mm_per_px,
            irises: match r.iris_centers.as_slice() {
                [a, b] => Some([(a.x, a.y), (b.x, b.y)]),
                _ => None,
            },
        }
    }

    /// Fills the fields `face` leaves unset (0) from this analysis: what
    /// the caller passed explicitly wins.
    pub fn fill(&self, face: &mut pb::FaceContext) {
        if face.face_shape == pb::FaceShape::Unspecified as i32 {
            face.face_shape = self.face_shape;
        }
        for (field, stored) in [
            (&mut face.face_width_mm, self.face_width_mm),
            (&mut face.pupillary_distance_mm, self.pupillary_distance_mm),
            (&mut face.nose_bridge_width_mm, self.nose_bridge_width_mm),
        ] {
            if *field == 0.0 {
                *field = stored;
            }
        }
    }
}

fn check_id(id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Status::invalid_argument(
            "face.analysis_id: give the id AnalyzeFace returned (24 hex characters)",
        ));
    }
    Ok(())
}

/// Resolves analysis ids through face-analysis, with a bounded memory.
#[derive(Clone)]
pub struct Faces {
    client: Option<FaceAnalysisClient<TracedChannel>>,
    kept: moka::future::Cache<String, StoredFace>,
}

impl Faces {
    /// Over `channel` (to every face-analysis replica); `None`: ids cannot
    /// be resolved (UNAVAILABLE saying so).
    pub fn new(channel: Option<TracedChannel>) -> Self {
        Self {
            // Photos go out whole (AnalyzeAndRecommend): up to the limit
            // face-analysis accepts.
            client: channel.map(|c| {
                FaceAnalysisClient::new(c)
                    .max_encoding_message_size(discovery_proto::MAX_REQUEST_BYTES)
            }),
            kept: moka::future::Cache::builder()
                .max_capacity(KEEP_AT_MOST)
                .time_to_live(KEEP_FOR)
                .build(),
        }
    }

    /// The face of analysis `id`.
    pub async fn resolve(&self, id: &str) -> Result<StoredFace, Status> {
        check_id(id)?;
        if let Some(face) = self.kept.get(id).await {
            return Ok(face);
        }
        Ok(StoredFace::of(&self.fetch(id).await?))
    }

    /// The stored analysis `id` (with its landmarks), asked of face-analysis;
    /// its face is kept for [`Faces::resolve`].
    pub async fn fetch(&self, id: &str) -> Result<pb::FaceAnalysisResult, Status> {
        check_id(id)?;
        let asked = self
            .client()?
            .get_face_analysis(pb::GetFaceAnalysisRequest {
                analysis_id: id.to_string(),
            })
            .await;
        let result = match asked {
            Ok(r) => r.into_inner().result.unwrap_or_default(),
            Err(s) if s.code() == Code::NotFound => {
                return Err(Status::not_found(format!(
                    "face.analysis_id: no analysis {id:?} (unknown, or older than the 24 h analyses are kept); analyse the photo again"
                )));
            }
            Err(s) => {
                tracing::warn!(code = ?s.code(), error = %s.message(), "GetFaceAnalysis failed");
                return Err(Status::unavailable(format!(
                    "face.analysis_id: the analysis cannot be read right now ({:?}: {}); retry, or pass the face fields",
                    s.code(),
                    s.message()
                )));
            }
        };
        self.kept
            .insert(id.to_string(), StoredFace::of(&result))
            .await;
        Ok(result)
    }

    /// Analyses a photo (or landmarks) through face-analysis; the face
    /// found is kept for [`Faces::resolve`] under its new id. Errors keep
    /// face-analysis' code, the message prefixed with `analyze: `.
    pub async fn analyze(
        &self,
        req: pb::AnalyzeFaceRequest,
    ) -> Result<pb::AnalyzeFaceResponse, Status> {
        let resp = self
            .client()?
            .analyze_face(req)
            .await
            .map_err(|s| Status::new(s.code(), format!("analyze: {}", s.message())))?
            .into_inner();
        if let Some(r) = &resp.result
            && !r.analysis_id.is_empty()
        {
            self.kept
                .insert(r.analysis_id.clone(), StoredFace::of(r))
                .await;
        }
        Ok(resp)
    }

    fn client(&self) -> Result<FaceAnalysisClient<TracedChannel>, Status> {
        self.client.clone().ok_or_else(|| {
            Status::unavailable(
                "face.analysis_id: this replica has no face-analysis to ask \
                 (DISCOVERY_FACE_ANALYSIS_URLS); pass the face fields instead",
            )
        })
    }

    /// Replaces a request's `analysis_id` by the analysis's fields (those
    /// the request did not set).
    pub async fn resolve_into(&self, face: &mut pb::FaceContext) -> Result<(), Status> {
        if face.analysis_id.is_empty() {
            return Ok(());
        }
        let stored = self.resolve(&face.analysis_id).await?;
        stored.fill(face);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_fields_win_over_the_stored_analysis() {
        let stored = StoredFace {
            face_shape: pb::FaceShape::Round as i32,
            face_width_mm: 132.0,
            pupillary_distance_mm: 63.0,
            nose_bridge_width_mm: 18.0,
            mm_per_px: 0.25,
            irises: None,
        };
        let mut face = pb::FaceContext {
            face_width_mm: 140.0,
            analysis_id: "ab".into(),
            ..Default::default()
        };
        stored.fill(&mut face);
        assert_eq!(face.face_shape, pb::FaceShape::Round as i32);
        assert_eq!(face.face_width_mm, 140.0, "explicit");
        assert_eq!(face.pupillary_distance_mm, 63.0);
        assert_eq!(face.nose_bridge_width_mm, 18.0);
    }

    #[tokio::test]
    async fn a_malformed_id_is_invalid_and_no_face_analysis_is_unavailable() {
        let faces = Faces::new(None);
        assert_eq!(
            faces.resolve("../etc").await.unwrap_err().code(),
            Code::InvalidArgument
        );
        assert_eq!(
            faces.resolve(&"a".repeat(65)).await.unwrap_err().code(),
            Code::InvalidArgument
        );
        let e = faces.resolve("0123456789abcdef01234567").await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(e.message().starts_with("face.analysis_id:"), "{e:?}");
    }
}
