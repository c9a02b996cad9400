//! Face analysis' collection: stored analyses (24 h), their documents and
//! indexes.

use discovery_kit::store::{Document, IndexSpec, bson, doc};
use discovery_proto::v1 as pb;
use prost::Message;

/// Collection of stored analyses (TTL 24 h).
pub const FACE_ANALYSES: &str = "face_analyses";

/// Indexes of `face_analyses`: TTL 24 h on `createdAt`, lookups by session.
pub fn indexes() -> Vec<IndexSpec> {
    vec![
        IndexSpec::new("createdAt_ttl", doc! {"createdAt": 1})
            .ttl(std::time::Duration::from_secs(24 * 3600)),
        IndexSpec::new(
            "sessionId_1_createdAt_-1",
            doc! {"sessionId": 1, "createdAt": -1},
        ),
    ]
}

/// An analysis as stored: the exact result first returned (encoded), with
/// the fields an operator queries by.
pub fn analysis_document(
    result: &pb::FaceAnalysisResult,
    req: &pb::Requester,
    hash: &str,
) -> Document {
    doc! {
        "_id": &result.analysis_id,
        "sessionId": &req.session_id,
        "userId": &req.user_id,
        "contentHash": hash,
        "createdAt": bson::DateTime::now(),
        "faceShape": pb::FaceShape::try_from(result.face_shape).map_or("", |s| s.as_str_name()),
        "pdMm": result.measurements.as_ref().and_then(|m| m.pupillary_distance.as_ref()).map_or(0.0, |v| v.value_mm as f64),
        "source": pb::LandmarkSource::try_from(result.source).map_or("", |s| s.as_str_name()),
        "result": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: result.encode_to_vec() },
    }
}

/// The stored result, or `None` when the document is unreadable.
pub fn result_of(d: &Document) -> Option<pb::FaceAnalysisResult> {
    d.get_binary_generic("result")
        .ok()
        .and_then(|b| pb::FaceAnalysisResult::decode(b.as_slice()).ok())
}
