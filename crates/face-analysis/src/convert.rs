//! Face analysis in its proto form: the domain's [`Analysis`] as the
//! `FaceAnalysisResult` the API returns and the store keeps.

use discovery_proto::v1 as pb;

use crate::geometry::FaceShape;
use crate::pipeline::Analysis;

fn point3(p: &[f32; 3]) -> pb::Point3 {
    pb::Point3 {
        x: p[0],
        y: p[1],
        z: p[2],
    }
}

fn face_shape(s: FaceShape) -> pb::FaceShape {
    match s {
        FaceShape::Oval => pb::FaceShape::Oval,
        FaceShape::Round => pb::FaceShape::Round,
        FaceShape::Square => pb::FaceShape::Square,
        FaceShape::Heart => pb::FaceShape::Heart,
        FaceShape::Oblong => pb::FaceShape::Oblong,
        FaceShape::Diamond => pb::FaceShape::Diamond,
        FaceShape::Triangle => pb::FaceShape::Triangle,
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
        face_shape: face_shape(a.shape.shape) as i32,
        face_shape_confidence: a.shape.confidence,
        runner_up_shape: face_shape(a.shape.runner_up) as i32,
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
