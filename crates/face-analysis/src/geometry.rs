//! From landmarks to millimetres, head pose and face shape. Pure functions:
//! the same code serves the server's models and client-side landmarks.
//!
//! # Landmarks used (MediaPipe FaceMesh indices)
//!
//! | measurement        | points                                   |
//! |--------------------|------------------------------------------|
//! | pupillary distance | iris centres (468 and 473, or the iris model) |
//! | face width         | 234 ↔ 454 (cheekbones, widest mesh points) |
//! | face length        | 10 (upper forehead) ↔ 152 (chin)         |
//! | forehead width     | 54 ↔ 284 (temples)                       |
//! | jaw width          | 172 ↔ 397 (gonial angles)                |
//! | jaw angle          | at 172/397 between 234/454 and 152, mean of both sides |
//! | nose bridge width  | 193 ↔ 417 (nose sides at the inner eye corners' height) |
//!
//! # Scale
//!
//! `mm_per_px = 11.7 / mean horizontal iris diameter in px` (the adult
//! horizontal visible iris diameter is 11.7 ± 0.5 mm, nearly independent of
//! age, sex and face size: the only ruler every selfie carries). Widths are
//! divided by `cos(yaw)` to undo foreshortening (|yaw| is gated at 25°).
//! The PD is the one at the distance the photo was taken (eyes converged on
//! the camera); for distance glasses add ~3 mm at arm's length.
//!
//! # Confidence
//!
//! Each millimetre value gets the probability that it is within 5 % of the
//! truth, assuming independent normal relative errors:
//! iris-size population spread (4 %), iris diameter precision
//! (0.35 px / diameter, per eye, averaged), disagreement of the two irises,
//! end-point precision (0.3 px for iris centres, 1.5 px for contour points,
//! over the length), and residual foreshortening (`1 - cos(yaw)`).
//! `confidence = erf(0.05 / (σ √2))`.
//!
//! # Face shape
//!
//! Five scale-free features: length / width, forehead / width,
//! jaw / width, chin / width and the jaw angle. Each shape is a prototype
//! (a typical value and a tolerance per feature, [`PROTOTYPES`]); a shape's
//! score is the Gaussian log-likelihood of the features; confidences are the
//! softmax of the scores. The prototypes follow the usual optician
//! definitions, placed relative to the mean MediaPipe face (which is oval):
//! - oblong: clearly longer than wide, straight sides;
//! - oval: ~1.3× longer than wide, forehead a little wider than the jaw, soft jaw;
//! - round: length close to width, soft wide jaw angle;
//! - square: length close to width, forehead ≈ jaw ≈ cheeks, sharp jaw;
//! - heart: wide forehead, narrow jaw and pointed chin;
//! - diamond: cheekbones widest, narrow forehead and jaw;
//! - triangle: jaw wider than the forehead.

/// The face shapes an optician names (the API's `FaceShape` without its
/// unspecified value: the classifier always picks one; `convert` maps it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaceShape {
    /// Longer than wide, soft jaw.
    Oval,
    /// Length close to width, soft jaw.
    Round,
    /// Length close to width, sharp jaw.
    Square,
    /// Wide forehead, narrow jaw.
    Heart,
    /// Clearly longer than wide.
    Oblong,
    /// Cheekbones widest.
    Diamond,
    /// Jaw wider than the forehead.
    Triangle,
}

/// Mean adult horizontal visible iris diameter.
pub const IRIS_DIAMETER_MM: f32 = 11.7;

/// FaceMesh indices.
pub mod idx {
    /// Upper forehead.
    pub const FOREHEAD_TOP: usize = 10;
    /// Chin.
    pub const CHIN: usize = 152;
    /// Right cheek edge (subject's right, image left on a selfie).
    pub const CHEEK_R: usize = 234;
    /// Left cheek edge.
    pub const CHEEK_L: usize = 454;
    /// Right temple.
    pub const TEMPLE_R: usize = 54;
    /// Left temple.
    pub const TEMPLE_L: usize = 284;
    /// Right gonial angle.
    pub const JAW_R: usize = 172;
    /// Left gonial angle.
    pub const JAW_L: usize = 397;
    /// Chin side, right.
    pub const CHIN_R: usize = 148;
    /// Chin side, left.
    pub const CHIN_L: usize = 377;
    /// Nose side at the inner eye corners, right.
    pub const NOSE_R: usize = 193;
    /// Nose side at the inner eye corners, left.
    pub const NOSE_L: usize = 417;
    /// Right eye outer and inner corners.
    pub const EYE_R: (usize, usize) = (33, 133);
    /// Left eye inner and outer corners.
    pub const EYE_L: (usize, usize) = (362, 263);
    /// First refined iris point (478-point meshes): right iris 468-472, left 473-477.
    pub const IRIS_R: usize = 468;
    /// Left iris centre in a 478-point mesh.
    pub const IRIS_L: usize = 473;
}

/// One eye's iris: centre and diameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Iris {
    /// Centre.
    pub center: [f32; 2],
    /// Horizontal diameter in px.
    pub diameter_px: f32,
}

impl Iris {
    /// From the five iris points (centre, then four on the contour: the
    /// horizontal pair is 1 and 3).
    pub fn from_points(p: &[[f32; 3]]) -> Iris {
        Iris {
            center: [p[0][0], p[0][1]],
            diameter_px: dist2(p[1], p[3]),
        }
    }
}

fn dist2(a: [f32; 3], b: [f32; 3]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// A value in px and mm with its confidence.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Value {
    /// Pixels (degrees for the jaw angle).
    pub px: f32,
    /// Millimetres, 0 when unknown.
    pub mm: f32,
    /// Probability of being within 5 %.
    pub confidence: f32,
}

/// Head pose, degrees.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pose {
    /// In-plane rotation, clockwise positive.
    pub roll: f32,
    /// Positive when the subject turned to their left.
    pub yaw: f32,
    /// Positive when the subject nods down.
    pub pitch: f32,
}

/// All measurements of one face.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Measurements {
    /// Interpupillary distance.
    pub pd: Value,
    /// Cheekbone width.
    pub face_width: Value,
    /// Forehead to chin.
    pub face_length: Value,
    /// Temple to temple.
    pub forehead_width: Value,
    /// Gonial angle to gonial angle.
    pub jaw_width: Value,
    /// Jaw angle in degrees (`px` holds degrees).
    pub jaw_angle: Value,
    /// Nose bridge.
    pub nose_bridge_width: Value,
    /// Millimetres per pixel (0 without irises).
    pub mm_per_px: f32,
    /// Mean horizontal iris diameter in px (0 without irises).
    pub iris_px: f32,
    /// Head pose.
    pub pose: Pose,
    /// Iris centres, subject's right first.
    pub iris_centers: Option<[[f32; 2]; 2]>,
}

/// Standard error function (Abramowitz-Stegun 7.1.26, |ε| < 1.5e-7).
fn erf(x: f32) -> f32 {
    let s = x.signum();
    let x = x.abs() as f64;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-x * x).exp();
    s * y as f32
}

/// P(|relative error| < 5 %) for a normal relative error with this σ.
fn confidence(sigma: f32) -> f32 {
    if sigma <= 0.0 {
        return 1.0;
    }
    erf(0.05 / (sigma * std::f32::consts::SQRT_2)).clamp(0.0, 1.0)
}

/// Computes measurements and pose from 468 landmarks (x, y, z in image
/// pixels) and, when known, both irises (subject's right first).
pub fn measure(lm: &[[f32; 3]], irises: Option<[Iris; 2]>) -> Measurements {
    let p = |i: usize| lm[i];
    let mid = |a: usize, b: usize| {
        let (a, b) = (p(a), p(b));
        [(a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0]
    };
    // Roll from the eye centres (irises when known).
    let (er, el) = match irises {
        Some([r, l]) => (r.center, l.center),
        None => (
            mid(idx::EYE_R.0, idx::EYE_R.1),
            mid(idx::EYE_L.0, idx::EYE_L.1),
        ),
    };
    let roll = (el[1] - er[1]).atan2(el[0] - er[0]);
    // Yaw and pitch from depth differences in the de-rolled frame.
    let (s, c) = (-roll).sin_cos();
    let derolled = |q: [f32; 3]| [q[0] * c - q[1] * s, q[0] * s + q[1] * c, q[2]];
    let (cr, cl) = (derolled(p(idx::CHEEK_R)), derolled(p(idx::CHEEK_L)));
    let yaw = (cl[2] - cr[2]).atan2(cl[0] - cr[0]);
    let (top, chin) = (derolled(p(idx::FOREHEAD_TOP)), derolled(p(idx::CHIN)));
    let pitch = (chin[2] - top[2]).atan2(chin[1] - top[1]);
    let pose = Pose {
        roll: roll.to_degrees(),
        yaw: yaw.to_degrees(),
        pitch: pitch.to_degrees(),
    };

    let (mm_per_px, iris_px, scale_sigma) = match irises {
        Some([r, l]) if r.diameter_px > 0.0 && l.diameter_px > 0.0 => {
            let d = (r.diameter_px + l.diameter_px) / 2.0;
            let population = 0.5 / IRIS_DIAMETER_MM;
            let precision = 0.35 / d / std::f32::consts::SQRT_2;
            let disagreement = (r.diameter_px - l.diameter_px).abs() / d / 2.0;
            let sigma = (population.powi(2) + precision.powi(2) + disagreement.powi(2)).sqrt();
            (IRIS_DIAMETER_MM / d, d, sigma)
        }
        _ => (0.0, 0.0, f32::INFINITY),
    };
    let foreshortening = 1.0 / yaw.cos().max(0.5);
    let yaw_sigma = 1.0 - yaw.cos();
    let value = |px_2d: f32, point_sigma_px: f32, horizontal: bool| {
        let px = if horizontal {
            px_2d * foreshortening
        } else {
            px_2d
        };
        if mm_per_px == 0.0 || px <= 0.0 {
            return Value {
                px,
                mm: 0.0,
                confidence: 0.0,
            };
        }
        let ends = point_sigma_px * std::f32::consts::SQRT_2 / px;
        let sigma =
            (scale_sigma.powi(2) + ends.powi(2) + if horizontal { yaw_sigma.powi(2) } else { 0.0 })
                .sqrt();
        Value {
            px,
            mm: px * mm_per_px,
            confidence: confidence(sigma),
        }
    };
    let d = |a: usize, b: usize| dist2(p(a), p(b));
    let pd_px = match irises {
        Some([r, l]) => {
            ((r.center[0] - l.center[0]).powi(2) + (r.center[1] - l.center[1]).powi(2)).sqrt()
        }
        None => 0.0,
    };
    let angle_at = |vertex: usize, a: usize, b: usize| {
        let (v, a, b) = (p(vertex), p(a), p(b));
        let (ux, uy, wx, wy) = (a[0] - v[0], a[1] - v[1], b[0] - v[0], b[1] - v[1]);
        let cos = (ux * wx + uy * wy) / ((ux.hypot(uy) * wx.hypot(wy)).max(1e-6));
        cos.clamp(-1.0, 1.0).acos().to_degrees()
    };
    let jaw_angle_deg = (angle_at(idx::JAW_R, idx::CHEEK_R, idx::CHIN)
        + angle_at(idx::JAW_L, idx::CHEEK_L, idx::CHIN))
        / 2.0;
    Measurements {
        pd: value(pd_px, 0.3, true),
        face_width: value(d(idx::CHEEK_R, idx::CHEEK_L), 1.5, true),
        face_length: value(d(idx::FOREHEAD_TOP, idx::CHIN), 1.5, false),
        forehead_width: value(d(idx::TEMPLE_R, idx::TEMPLE_L), 1.5, true),
        jaw_width: value(d(idx::JAW_R, idx::JAW_L), 1.5, true),
        jaw_angle: Value {
            px: jaw_angle_deg,
            mm: 0.0,
            confidence: 0.0,
        },
        nose_bridge_width: value(d(idx::NOSE_R, idx::NOSE_L), 1.5, true),
        mm_per_px,
        iris_px,
        pose,
        iris_centers: irises.map(|[r, l]| [r.center, l.center]),
    }
}

/// Scale-free features for the face shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Features {
    /// Length / width.
    pub length: f32,
    /// Forehead / width.
    pub forehead: f32,
    /// Jaw / width.
    pub jaw: f32,
    /// Chin / width.
    pub chin: f32,
    /// Jaw angle, degrees.
    pub jaw_angle: f32,
}

impl Features {
    /// From 468 landmarks and the measurements (which carry the yaw
    /// correction and jaw angle).
    pub fn of(lm: &[[f32; 3]], m: &Measurements) -> Features {
        let w = m.face_width.px.max(1e-3);
        let foreshortening = 1.0 / m.pose.yaw.to_radians().cos().max(0.5);
        Features {
            length: m.face_length.px / w,
            forehead: m.forehead_width.px / w,
            jaw: m.jaw_width.px / w,
            chin: dist2(lm[idx::CHIN_R], lm[idx::CHIN_L]) * foreshortening / w,
            jaw_angle: m.jaw_angle.px,
        }
    }

    fn as_array(&self) -> [f32; 5] {
        [
            self.length,
            self.forehead,
            self.jaw,
            self.chin,
            self.jaw_angle,
        ]
    }
}

/// A shape's typical features and tolerances (same order as [`Features`]).
#[derive(Debug, Clone, Copy)]
pub struct Prototype {
    /// The shape.
    pub shape: FaceShape,
    /// Typical value per feature.
    pub mean: [f32; 5],
    /// Tolerance per feature.
    pub spread: [f32; 5],
}

const SPREAD: [f32; 5] = [0.07, 0.05, 0.05, 0.05, 6.0];

const fn proto(shape: FaceShape, mean: [f32; 5]) -> Prototype {
    Prototype {
        shape,
        mean,
        spread: SPREAD,
    }
}

/// The shape prototypes; see the module docs. Values are for MediaPipe's
/// mesh points (10 is the upper forehead, not the hairline, so lengths are
/// shorter than anthropometric face heights). Columns: length, forehead,
/// jaw and chin over width, jaw angle (degrees).
#[rustfmt::skip]
pub const PROTOTYPES: [Prototype; 7] = [
    proto(FaceShape::Oval, [1.12, 0.78, 0.74, 0.24, 118.0]),
    proto(FaceShape::Round, [0.98, 0.80, 0.80, 0.27, 126.0]),
    proto(FaceShape::Square, [1.00, 0.86, 0.86, 0.30, 110.0]),
    proto(FaceShape::Heart, [1.08, 0.86, 0.70, 0.20, 120.0]),
    proto(FaceShape::Oblong, [1.28, 0.80, 0.78, 0.26, 116.0]),
    proto(FaceShape::Diamond, [1.12, 0.70, 0.68, 0.22, 120.0]),
    proto(FaceShape::Triangle, [1.06, 0.70, 0.84, 0.28, 116.0]),
];

/// The most likely shape and the runner-up, with confidences.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShapeGuess {
    /// Best shape.
    pub shape: FaceShape,
    /// Its probability.
    pub confidence: f32,
    /// Second best.
    pub runner_up: FaceShape,
    /// Its probability.
    pub runner_up_confidence: f32,
}

/// Classifies features against [`PROTOTYPES`].
pub fn classify(f: &Features) -> ShapeGuess {
    let x = f.as_array();
    let mut scores: Vec<(FaceShape, f32)> = PROTOTYPES
        .iter()
        .map(|p| {
            let ll: f32 = x
                .iter()
                .zip(p.mean.iter().zip(&p.spread))
                .map(|(v, (m, s))| -0.5 * ((v - m) / s).powi(2))
                .sum();
            (p.shape, ll)
        })
        .collect();
    let max = scores.iter().map(|s| s.1).fold(f32::NEG_INFINITY, f32::max);
    let total: f32 = scores.iter().map(|s| (s.1 - max).exp()).sum();
    for s in &mut scores {
        s.1 = (s.1 - max).exp() / total;
    }
    scores.sort_by(|a, b| b.1.total_cmp(&a.1));
    ShapeGuess {
        shape: scores[0].0,
        confidence: scores[0].1,
        runner_up: scores[1].0,
        runner_up_confidence: scores[1].1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        assert!((erf(0.5) - 0.520_5).abs() < 1e-3);
        assert!((erf(1.0) - 0.842_7).abs() < 1e-3);
        assert!((erf(-1.0) + 0.842_7).abs() < 1e-3);
    }

    #[test]
    fn each_prototype_classifies_as_itself() {
        for p in PROTOTYPES {
            let [length, forehead, jaw, chin, jaw_angle] = p.mean;
            let g = classify(&Features {
                length,
                forehead,
                jaw,
                chin,
                jaw_angle,
            });
            assert_eq!(g.shape, p.shape);
            assert!(g.confidence > g.runner_up_confidence);
            assert!(g.confidence + g.runner_up_confidence <= 1.0 + 1e-5);
        }
    }

    /// A synthetic mesh: every landmark at the origin except those used,
    /// placed for a 140 mm wide face at 2 px/mm.
    fn synthetic(yaw_depth: f32) -> Vec<[f32; 3]> {
        let mut lm = vec![[0.0, 0.0, 0.0]; 468];
        let s = 2.0;
        let mut put = |i: usize, x: f32, y: f32, z: f32| lm[i] = [x * s, y * s, z * s];
        put(idx::CHEEK_R, -70.0, 0.0, -yaw_depth);
        put(idx::CHEEK_L, 70.0, 0.0, yaw_depth);
        put(idx::FOREHEAD_TOP, 0.0, -80.0, 0.0);
        put(idx::CHIN, 0.0, 80.0, 0.0);
        put(idx::TEMPLE_R, -55.0, -55.0, 0.0);
        put(idx::TEMPLE_L, 55.0, -55.0, 0.0);
        put(idx::JAW_R, -52.0, 45.0, 0.0);
        put(idx::JAW_L, 52.0, 45.0, 0.0);
        put(idx::NOSE_R, -9.0, -10.0, 0.0);
        put(idx::NOSE_L, 9.0, -10.0, 0.0);
        lm
    }

    #[test]
    fn millimetres_come_from_the_iris_scale() {
        let lm = synthetic(0.0);
        let iris = |x: f32| Iris {
            center: [x, -10.0],
            diameter_px: 2.0 * IRIS_DIAMETER_MM,
        };
        let m = measure(&lm, Some([iris(-64.0), iris(64.0)]));
        assert!((m.mm_per_px - 0.5).abs() < 1e-5);
        assert!((m.pd.mm - 64.0).abs() < 1e-3, "{:?}", m.pd);
        assert!((m.face_width.mm - 140.0).abs() < 1e-3);
        assert!((m.face_length.mm - 160.0).abs() < 1e-3);
        assert!(m.pose.roll.abs() < 1e-3 && m.pose.yaw.abs() < 1e-3);
        // With 23 px irises and no disagreement the scale error is the
        // population spread (~4.3 %): PD within 5 % about 75 % of the time.
        assert!(
            m.pd.confidence > 0.6 && m.pd.confidence < 0.85,
            "{}",
            m.pd.confidence
        );
        // Without irises nothing is in millimetres.
        let m = measure(&lm, None);
        assert_eq!(m.face_width.mm, 0.0);
        assert_eq!(m.face_width.confidence, 0.0);
        assert!(m.face_width.px > 0.0);
    }

    #[test]
    fn yaw_is_read_from_depth_and_corrected_in_widths() {
        // Cheeks 70 mm from the centre, the left one 30 mm deeper: ~12°.
        let lm = synthetic(15.0);
        let iris = |x: f32| Iris {
            center: [x, -10.0],
            diameter_px: 2.0 * IRIS_DIAMETER_MM,
        };
        let m = measure(&lm, Some([iris(-64.0), iris(64.0)]));
        assert!((m.pose.yaw - 12.09).abs() < 0.1, "{}", m.pose.yaw);
        assert!(m.face_width.mm > 140.0);
    }
}
