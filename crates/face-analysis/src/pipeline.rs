//! Photo → face: detectors → rotated square crop → FaceMesh → iris crops →
//! measurements, with the quality gates in between. Synchronous: it runs on
//! a blocking thread with one engine from the pool.
//!
//! # Quality gates (in the order they apply)
//!
//! | reason               | when                                                     | status |
//! |----------------------|----------------------------------------------------------|--------|
//! | `unsupported_image`  | not JPEG/PNG/WebP                                        | INVALID_ARGUMENT |
//! | `too_large`          | over 15 MiB, 40 MP or 16384 px a side (header checked first) | INVALID_ARGUMENT |
//! | `corrupt_image`      | the decoder fails                                        | INVALID_ARGUMENT |
//! | `no_face`            | neither detector finds a face, or FaceMesh rejects it    | NOT_FOUND |
//! | `several_faces`      | another face at least half as wide as the largest        | INVALID_ARGUMENT |
//! | `face_too_small`     | face under 64 px wide or iris under 5 px across          | INVALID_ARGUMENT |
//! | `sideways`           | the eyes are more than 45° from level (photo rotated without EXIF) | INVALID_ARGUMENT |
//! | `head_pose`          | roll over 30°, yaw or pitch over 25°                     | INVALID_ARGUMENT |
//! | `implausible`        | PD outside 50-80 mm                                      | INVALID_ARGUMENT |

use std::time::{Duration, Instant};

use crate::detect::{self, Detection, FULL_RANGE, Face, SHORT_RANGE};
use crate::geometry::{self, Features, Iris, Measurements, ShapeGuess};
use crate::image::{ImageError, Limits, Photo, Roi};
use crate::models::{Engine, ModelError};

/// Thresholds of the quality gates.
#[derive(Debug, Clone, Copy)]
pub struct Gates {
    /// Minimum detector score.
    pub min_score: f32,
    /// Minimum face width (detector box) in original pixels.
    pub min_face_px: f32,
    /// Minimum mean iris diameter in original pixels.
    pub min_iris_px: f32,
    /// Another face at least this fraction of the largest one's width is
    /// "several faces"; smaller ones (background people, posters) are not.
    pub other_face_ratio: f32,
    /// Largest roll, degrees.
    pub max_roll: f32,
    /// Largest yaw and pitch, degrees.
    pub max_yaw_pitch: f32,
    /// Plausible PD range, mm.
    pub pd_mm: (f32, f32),
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            min_score: 0.5,
            min_face_px: 64.0,
            min_iris_px: 5.0,
            other_face_ratio: 0.5,
            max_roll: 30.0,
            max_yaw_pitch: 25.0,
            pd_mm: (50.0, 80.0),
        }
    }
}

/// Why a photo or landmark set gives no analysis. `reason()` is the stable
/// code (metrics label and `x-discovery-reason` metadata).
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Rejection {
    /// The photo itself.
    #[error("{0}")]
    Image(#[from] ImageError),
    /// No face.
    #[error("no face found{0}; send a well-lit photo with the whole face in view")]
    NoFace(String),
    /// Several faces.
    #[error("found {count} faces ({similar} of similar size); send a photo of one face")]
    SeveralFaces {
        /// All faces found.
        count: usize,
        /// Faces at least half as wide as the largest.
        similar: usize,
    },
    /// Too small to measure.
    #[error("face too small to measure: {0}; move closer or send a larger photo")]
    FaceTooSmall(String),
    /// Photo rotated.
    #[error(
        "the eyes are {0:.0}° from level: the photo looks sideways; rotate it upright (or keep its EXIF orientation) and send it again"
    )]
    Sideways(f32),
    /// Head not facing the camera.
    #[error("{0}; face the camera with your head level")]
    HeadPose(String),
    /// Geometry outside human ranges.
    #[error("implausible measurements: {0}; send a photo of a real face, not of a screen or print")]
    Implausible(String),
    /// Client landmarks malformed.
    #[error("landmarks: {0}")]
    BadLandmarks(String),
    /// The models are not installed or failed.
    #[error("{0}")]
    Model(#[from] ModelError),
}

impl Rejection {
    /// Stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Image(ImageError::Unsupported(_)) => "unsupported_image",
            Rejection::Image(ImageError::TooLarge(_)) => "too_large",
            Rejection::Image(ImageError::Corrupt { .. }) => "corrupt_image",
            Rejection::NoFace(_) => "no_face",
            Rejection::SeveralFaces { .. } => "several_faces",
            Rejection::FaceTooSmall(_) => "face_too_small",
            Rejection::Sideways(_) => "sideways",
            Rejection::HeadPose(_) => "head_pose",
            Rejection::Implausible(_) => "implausible",
            Rejection::BadLandmarks(_) => "bad_landmarks",
            Rejection::Model(_) => "model_unavailable",
        }
    }
}

/// Time spent per stage.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Decoding.
    pub decode: Duration,
    /// Both detectors.
    pub detect: Duration,
    /// FaceMesh.
    pub mesh: Duration,
    /// Both irises.
    pub iris: Duration,
    /// Measurements and shape.
    pub measure: Duration,
}

impl Timings {
    /// Stage names and durations, for metrics.
    pub fn stages(&self) -> [(&'static str, Duration); 5] {
        [
            ("decode", self.decode),
            ("detect", self.detect),
            ("mesh", self.mesh),
            ("iris", self.iris),
            ("measure", self.measure),
        ]
    }
}

/// A face analysed.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// Detector box `[x, y, w, h]` in the oriented image (0 for client landmarks).
    pub face_box: [f32; 4],
    /// 468 landmarks, oriented-image pixels.
    pub landmarks: Vec<[f32; 3]>,
    /// Measurements and pose.
    pub measurements: Measurements,
    /// Face shape.
    pub shape: ShapeGuess,
}

/// Measurements, shape and the geometric gates, shared by photos and
/// client landmarks.
pub fn finish(
    landmarks: Vec<[f32; 3]>,
    irises: Option<[Iris; 2]>,
    face_box: [f32; 4],
    gates: &Gates,
) -> Result<Analysis, Rejection> {
    let m = geometry::measure(&landmarks, irises);
    let roll = m.pose.roll;
    if roll.abs() > 45.0 {
        return Err(Rejection::Sideways(roll));
    }
    if roll.abs() > gates.max_roll {
        return Err(Rejection::HeadPose(format!("head tilted {roll:.0}°")));
    }
    if m.pose.yaw.abs() > gates.max_yaw_pitch {
        return Err(Rejection::HeadPose(format!(
            "head turned {:.0}° sideways",
            m.pose.yaw
        )));
    }
    if m.pose.pitch.abs() > gates.max_yaw_pitch {
        return Err(Rejection::HeadPose(format!(
            "head tilted {:.0}° {}",
            m.pose.pitch.abs(),
            if m.pose.pitch > 0.0 { "down" } else { "up" }
        )));
    }
    if irises.is_some() {
        if m.iris_px < gates.min_iris_px {
            return Err(Rejection::FaceTooSmall(format!(
                "the irises are {:.1} px across (at least {:.0} px are needed for millimetres)",
                m.iris_px, gates.min_iris_px
            )));
        }
        let pd = m.pd.mm;
        if !(gates.pd_mm.0..=gates.pd_mm.1).contains(&pd) {
            return Err(Rejection::Implausible(format!(
                "pupillary distance {pd:.1} mm is outside {:.0}-{:.0} mm",
                gates.pd_mm.0, gates.pd_mm.1
            )));
        }
    }
    let shape = geometry::classify(&Features::of(&landmarks, &m));
    Ok(Analysis {
        face_box,
        landmarks,
        measurements: m,
        shape,
    })
}

/// Reusable buffers.
#[derive(Debug, Default)]
pub struct Scratch {
    input: Vec<f32>,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Smallest face short-range finds, as a fraction of the photo's long side
/// (measured: the astronaut's face at 2-27 % of 640 and 1280 px canvases,
/// `benches/analyze.rs` prints the sweep).
pub const SHORT_RANGE_FLOOR: f32 = 0.10;
/// From this fraction short-range boxes are accurate (within ~10 %).
pub const SHORT_RANGE_RELIABLE: f32 = 0.13;

/// Faces found and whether full-range ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Faces {
    /// Faces, strongest first.
    pub faces: Vec<Face>,
    /// Whether the full-range detector ran.
    pub full_range: bool,
}

/// Runs the detectors over the whole photo; faces merged, strongest first.
///
/// Short-range always runs. Full-range (4.6 ms, 3x short-range) runs only
/// when it can change the answer: when short-range found nothing and a face
/// it cannot see (under 10 % of the long side) could still be wide enough to
/// measure, or when it found a face so small that another face half its
/// width could be beyond short-range's reach. A selfie (face over 26 % of
/// the frame) and a small photo without a face skip it.
pub fn detect_faces(
    engine: &mut Engine,
    photo: &Photo,
    gates: &Gates,
    scratch: &mut Scratch,
) -> Result<Faces, Rejection> {
    let (w, h) = photo.size();
    let long = w.max(h) as f32;
    let letterbox = Roi {
        center: [w as f32 / 2.0, h as f32 / 2.0],
        size: long,
        rotation: 0.0,
    };
    photo.sample(
        &letterbox,
        SHORT_RANGE.size,
        (-1.0, 1.0),
        false,
        &mut scratch.input,
    );
    let (reg, logits) = engine.short_range(&scratch.input)?;
    let short = SHORT_RANGE.decode(&reg, &logits, &letterbox, gates.min_score);
    let need_full = match short.iter().map(Detection::width).reduce(f32::max) {
        None => long * SHORT_RANGE_FLOOR > gates.min_face_px,
        Some(largest) => largest * gates.other_face_ratio < long * SHORT_RANGE_RELIABLE,
    };
    let full = if need_full {
        photo.sample(
            &letterbox,
            FULL_RANGE.size,
            (-1.0, 1.0),
            false,
            &mut scratch.input,
        );
        let (reg, logits) = engine.full_range(&scratch.input)?;
        FULL_RANGE.decode(&reg, &logits, &letterbox, gates.min_score)
    } else {
        Vec::new()
    };
    // Short-range boxes first: they are tighter on close faces.
    Ok(Faces {
        faces: detect::merge(&short, &full),
        full_range: need_full,
    })
}

/// FaceMesh on a square 1.5x the box, rotated so the detector's eyes are
/// level; None when the model says there is no face in it.
fn mesh(
    engine: &mut Engine,
    photo: &Photo,
    face: &Detection,
    scratch: &mut Scratch,
) -> Result<Option<Vec<[f32; 3]>>, Rejection> {
    let [er, el] = [face.keypoints[0], face.keypoints[1]];
    let roi = Roi {
        center: [
            (face.bbox[0] + face.bbox[2]) / 2.0,
            (face.bbox[1] + face.bbox[3]) / 2.0,
        ],
        size: face.width().max(face.bbox[3] - face.bbox[1]) * 1.5,
        rotation: (el[1] - er[1]).atan2(el[0] - er[0]),
    };
    photo.sample(&roi, 192, (0.0, 1.0), false, &mut scratch.input);
    let (raw, flag) = engine.mesh(&scratch.input)?;
    if sigmoid(flag[0]) < 0.5 {
        return Ok(None);
    }
    Ok(Some(
        raw.chunks_exact(3)
            .map(|p| {
                let q = roi.to_image(192.0, [p[0], p[1]]);
                [q[0], q[1], p[2] / 192.0 * roi.size]
            })
            .collect(),
    ))
}

/// Analyses a decoded photo.
pub fn analyze_photo(
    engine: &mut Engine,
    photo: &Photo,
    gates: &Gates,
    scratch: &mut Scratch,
    timings: &mut Timings,
) -> Result<Analysis, Rejection> {
    let (t, span) = (Instant::now(), stage("detect"));
    let Faces { faces, full_range } = detect_faces(engine, photo, gates, scratch)?;
    span.record("face.count", faces.len());
    drop(span);
    timings.detect = t.elapsed();
    let Some(largest) = faces.iter().map(|f| f.best().width()).reduce(f32::max) else {
        return Err(Rejection::NoFace(if full_range {
            String::new()
        } else {
            format!(
                " (none at least {:.0} px wide, the smallest that can be measured)",
                gates.min_face_px
            )
        }));
    };
    // The shopper is the strongest of the faces of about the largest size.
    let mut similar = faces
        .iter()
        .filter(|f| f.best().width() >= largest * gates.other_face_ratio);
    let face = similar
        .next()
        .expect("the largest face is similar to itself");
    let similar = 1 + similar.count();
    if similar > 1 {
        return Err(Rejection::SeveralFaces {
            count: faces.len(),
            similar,
        });
    }

    // FaceMesh on the best box; if it sees no face there, on the other
    // detector's box for the same face.
    let (t, span) = (Instant::now(), stage("mesh"));
    let mut rejection = None;
    let mut found = None;
    for candidate in &face.candidates {
        if candidate.width() < gates.min_face_px {
            // More telling than "no face" from another candidate.
            rejection = Some(Rejection::FaceTooSmall(format!(
                "the face is {:.0} px wide (at least {:.0} px are needed)",
                candidate.width(),
                gates.min_face_px
            )));
            continue;
        }
        match mesh(engine, photo, candidate, scratch)? {
            Some(landmarks) => {
                found = Some((candidate, landmarks));
                break;
            }
            None => {
                rejection.get_or_insert(Rejection::NoFace(
                    " (a detector fired but the landmark model sees no face there)".into(),
                ));
            }
        }
    }
    drop(span);
    timings.mesh = t.elapsed();
    let Some((face, landmarks)) = found else {
        return Err(rejection.unwrap_or_else(|| Rejection::NoFace(String::new())));
    };

    // Iris on 64 px crops 2.3x the eye width; the left eye is mirrored so
    // that the model always sees a right eye.
    let (t, span) = (Instant::now(), stage("iris"));
    let mut irises = [Iris {
        center: [0.0; 2],
        diameter_px: 0.0,
    }; 2];
    for (k, (a, b)) in [geometry::idx::EYE_R, geometry::idx::EYE_L]
        .into_iter()
        .enumerate()
    {
        let (p0, p1) = (landmarks[a], landmarks[b]);
        let roi = Roi {
            center: [(p0[0] + p1[0]) / 2.0, (p0[1] + p1[1]) / 2.0],
            size: (p1[0] - p0[0]).abs().max((p1[1] - p0[1]).abs()) * 2.3,
            rotation: (p1[1] - p0[1]).atan2(p1[0] - p0[0]),
        };
        let flip = k == 1;
        photo.sample(&roi, 64, (0.0, 1.0), flip, &mut scratch.input);
        let (_, raw) = engine.iris(&scratch.input)?;
        let points: Vec<[f32; 3]> = raw
            .chunks_exact(3)
            .map(|p| {
                let x = if flip { 64.0 - p[0] } else { p[0] };
                let q = roi.to_image(64.0, [x, p[1]]);
                [q[0], q[1], p[2]]
            })
            .collect();
        irises[k] = Iris::from_points(&points);
    }
    drop(span);
    timings.iris = t.elapsed();

    let (t, span) = (Instant::now(), stage("measure"));
    let face_box = [
        face.bbox[0],
        face.bbox[1],
        face.width(),
        face.bbox[3] - face.bbox[1],
    ];
    let result = finish(landmarks, Some(irises), face_box, gates);
    drop(span);
    timings.measure = t.elapsed();
    result
}

/// A span for one stage of the pipeline, entered until dropped.
fn stage(name: &'static str) -> tracing::span::EnteredSpan {
    tracing::info_span!(
        "face.stage",
        otel.name = %format_args!("face.{name}"),
        face.stage = name,
        face.count = tracing::field::Empty,
    )
    .entered()
}

/// Decodes and analyses.
pub fn analyze_bytes(
    engine: &mut Engine,
    bytes: &[u8],
    limits: &Limits,
    gates: &Gates,
    scratch: &mut Scratch,
    timings: &mut Timings,
) -> Result<Analysis, Rejection> {
    let (t, span) = (Instant::now(), stage("decode"));
    let photo = Photo::decode(bytes, limits)?;
    drop(span);
    timings.decode = t.elapsed();
    analyze_photo(engine, &photo, gates, scratch, timings)
}

/// Validates client landmarks (pixels) and analyses them: 468 points, or
/// 478 with the ten refined iris points (which give the millimetre scale).
pub fn analyze_landmarks(
    points: &[[f32; 3]],
    image_size: (u32, u32),
    gates: &Gates,
) -> Result<Analysis, Rejection> {
    let (w, h) = image_size;
    if w == 0 || h == 0 || w > 16_384 || h > 16_384 {
        return Err(Rejection::BadLandmarks(format!(
            "image_width and image_height must be 1-16384 (got {w}x{h})"
        )));
    }
    if points.len() != 468 && points.len() != 478 {
        return Err(Rejection::BadLandmarks(format!(
            "expected 468 FaceMesh points (or 478 with irises), got {}",
            points.len()
        )));
    }
    let (wf, hf) = (w as f32, h as f32);
    if let Some(i) = points.iter().position(|p| {
        !p.iter().all(|v| v.is_finite())
            || p[0] < -wf
            || p[0] > 2.0 * wf
            || p[1] < -hf
            || p[1] > 2.0 * hf
    }) {
        return Err(Rejection::BadLandmarks(format!(
            "point {i} {:?} is not a finite pixel position in a {w}x{h} image (send pixels, not normalised 0-1 values)",
            points[i]
        )));
    }
    let xs = points.iter().map(|p| p[0]);
    let span = xs.clone().fold(f32::MIN, f32::max) - xs.fold(f32::MAX, f32::min);
    if span < 2.0 && w > 4 {
        return Err(Rejection::BadLandmarks(
            "points span less than 2 px: send pixels, not normalised 0-1 values".into(),
        ));
    }
    let irises = (points.len() == 478).then(|| {
        let eye = |start: usize| Iris::from_points(&points[start..start + 5]);
        [eye(geometry::idx::IRIS_R), eye(geometry::idx::IRIS_L)]
    });
    finish(points[..468].to_vec(), irises, [0.0; 4], gates)
}
