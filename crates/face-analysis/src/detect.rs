//! BlazeFace post-processing: SSD anchors, box decoding, score threshold and
//! MediaPipe's weighted non-maximum suppression.
//!
//! Both detectors see the whole (oriented) photo letterboxed into a square:
//! short-range (128 px, 896 anchors, faces within ~2 m, i.e. selfies) and
//! full-range (192 px, 2304 anchors, smaller faces).

use std::sync::OnceLock;

use crate::image::Roi;

/// Raw scores are clipped to this before the sigmoid (MediaPipe).
const SCORE_CLIP: f32 = 100.0;
/// Boxes overlapping more than this are one face.
pub const NMS_IOU: f32 = 0.3;

/// A detector's geometry.
#[derive(Debug, Clone, Copy)]
pub struct Detector {
    /// Input side.
    pub size: usize,
    strides: &'static [usize],
    /// Anchors per cell are doubled when strides repeat (short-range).
    doubled: bool,
}

/// Short-range BlazeFace.
pub const SHORT_RANGE: Detector = Detector {
    size: 128,
    strides: &[8, 16, 16, 16],
    doubled: true,
};
/// Full-range BlazeFace.
pub const FULL_RANGE: Detector = Detector {
    size: 192,
    strides: &[4],
    doubled: false,
};

/// One detected face, in oriented-image pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// `[xmin, ymin, xmax, ymax]`.
    pub bbox: [f32; 4],
    /// Right eye, left eye (subject's), nose tip, mouth, right and left tragion.
    pub keypoints: [[f32; 2]; 6],
    /// Sigmoid score.
    pub score: f32,
}

impl Detection {
    /// Box width.
    pub fn width(&self) -> f32 {
        self.bbox[2] - self.bbox[0]
    }

    /// Intersection over union.
    pub fn iou(&self, o: &Detection) -> f32 {
        let ix = (self.bbox[2].min(o.bbox[2]) - self.bbox[0].max(o.bbox[0])).max(0.0);
        let iy = (self.bbox[3].min(o.bbox[3]) - self.bbox[1].max(o.bbox[1])).max(0.0);
        let inter = ix * iy;
        let area = |d: &Detection| (d.bbox[2] - d.bbox[0]) * (d.bbox[3] - d.bbox[1]);
        let union = area(self) + area(o) - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }
}

impl Detector {
    fn anchors(&self) -> &'static [[f32; 2]] {
        static SHORT: OnceLock<Vec<[f32; 2]>> = OnceLock::new();
        static FULL: OnceLock<Vec<[f32; 2]>> = OnceLock::new();
        let cell = if self.doubled { &SHORT } else { &FULL };
        cell.get_or_init(|| {
            let mut out = Vec::new();
            let mut layer = 0;
            while layer < self.strides.len() {
                let stride = self.strides[layer];
                let mut per_cell = 0;
                while layer < self.strides.len() && self.strides[layer] == stride {
                    per_cell += if self.doubled { 2 } else { 1 };
                    layer += 1;
                }
                let cells = self.size.div_ceil(stride);
                for y in 0..cells {
                    for x in 0..cells {
                        for _ in 0..per_cell {
                            out.push([
                                (x as f32 + 0.5) / cells as f32,
                                (y as f32 + 0.5) / cells as f32,
                            ]);
                        }
                    }
                }
            }
            out
        })
    }

    /// Decodes raw outputs (16 regressors and one logit per anchor) of an
    /// input sampled from `roi` into detections above `min_score`, after
    /// weighted non-maximum suppression, strongest first.
    pub fn decode(
        &self,
        regressors: &[f32],
        logits: &[f32],
        roi: &Roi,
        min_score: f32,
    ) -> Vec<Detection> {
        let anchors = self.anchors();
        let n = self.size as f32;
        let min_logit = (min_score / (1.0 - min_score)).ln();
        let mut found = Vec::new();
        for (i, (&logit, anchor)) in logits.iter().zip(anchors).enumerate() {
            if logit.is_nan() || logit.clamp(-SCORE_CLIP, SCORE_CLIP) <= min_logit {
                continue;
            }
            let Some(r) = regressors.get(i * 16..i * 16 + 16) else {
                break;
            };
            let to_image = |dx: f32, dy: f32| {
                let q = [dx / n + anchor[0], dy / n + anchor[1]];
                roi.to_image(1.0, q)
            };
            let c = to_image(r[0], r[1]);
            let (w, h) = (r[2] / n * roi.size, r[3] / n * roi.size);
            if !(w > 0.0 && h > 0.0 && c[0].is_finite() && c[1].is_finite()) {
                continue;
            }
            let mut keypoints = [[0.0; 2]; 6];
            for (k, kp) in keypoints.iter_mut().enumerate() {
                *kp = to_image(r[4 + 2 * k], r[5 + 2 * k]);
            }
            found.push(Detection {
                bbox: [
                    c[0] - w / 2.0,
                    c[1] - h / 2.0,
                    c[0] + w / 2.0,
                    c[1] + h / 2.0,
                ],
                keypoints,
                score: 1.0 / (1.0 + (-logit.clamp(-SCORE_CLIP, SCORE_CLIP)).exp()),
            });
        }
        weighted_nms(found, NMS_IOU)
    }
}

/// MediaPipe's "weighted" suppression: each kept face is the score-weighted
/// mean of the boxes overlapping the strongest one, with its score.
pub fn weighted_nms(mut candidates: Vec<Detection>, iou: f32) -> Vec<Detection> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut out: Vec<Detection> = Vec::new();
    while let Some(top) = candidates.first().copied() {
        let (overlapping, rest): (Vec<_>, Vec<_>) =
            candidates.into_iter().partition(|d| d.iou(&top) > iou);
        candidates = rest;
        let total: f32 = overlapping.iter().map(|d| d.score).sum();
        let mut merged = top;
        if overlapping.len() > 1 && total > 0.0 {
            merged.bbox = [0.0; 4];
            merged.keypoints = [[0.0; 2]; 6];
            for d in &overlapping {
                let w = d.score / total;
                for (m, v) in merged.bbox.iter_mut().zip(d.bbox) {
                    *m += w * v;
                }
                for (m, v) in merged.keypoints.iter_mut().zip(d.keypoints) {
                    m[0] += w * v[0];
                    m[1] += w * v[1];
                }
            }
        }
        if overlapping.is_empty() {
            // `top` overlaps itself unless its box is degenerate.
            candidates.remove(0);
        }
        out.push(merged);
    }
    out
}

impl Detection {
    fn center(&self) -> [f32; 2] {
        [
            (self.bbox[0] + self.bbox[2]) / 2.0,
            (self.bbox[1] + self.bbox[3]) / 2.0,
        ]
    }

    fn contains(&self, p: [f32; 2]) -> bool {
        (self.bbox[0]..=self.bbox[2]).contains(&p[0])
            && (self.bbox[1]..=self.bbox[3]).contains(&p[1])
    }

    /// Two detections are one face when they overlap (IoU) or one's centre
    /// lies in the other's box: the detectors sometimes also fire on a
    /// face at a second, wrong scale, which IoU alone keeps apart. Faces
    /// of different people never contain each other's centre.
    pub fn same_face(&self, o: &Detection) -> bool {
        self.iou(o) > NMS_IOU || self.contains(o.center()) || o.contains(self.center())
    }
}

/// One face as seen by the detectors: its detections, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    /// Detections of this face: the preferred detector's by score, then the
    /// other's. Later ones are fallbacks when FaceMesh rejects a box.
    pub candidates: Vec<Detection>,
}

impl Face {
    /// The best detection.
    pub fn best(&self) -> &Detection {
        &self.candidates[0]
    }

    /// Highest score among the detections.
    pub fn score(&self) -> f32 {
        self.candidates.iter().map(|d| d.score).fold(0.0, f32::max)
    }
}

/// Faces from both detectors, strongest first: a face found twice (by both
/// detectors, or at two scales) is one [`Face`] whose best detection comes
/// from `preferred` if that saw it (short-range boxes are tighter on close
/// faces).
pub fn merge(preferred: &[Detection], other: &[Detection]) -> Vec<Face> {
    let by_score = |list: &[Detection]| {
        let mut v = list.to_vec();
        v.sort_by(|x, y| y.score.total_cmp(&x.score));
        v
    };
    let mut faces: Vec<Face> = Vec::new();
    for d in by_score(preferred).into_iter().chain(by_score(other)) {
        match faces
            .iter_mut()
            .find(|f| f.candidates.iter().any(|k| k.same_face(&d)))
        {
            Some(f) => f.candidates.push(d),
            None => faces.push(Face {
                candidates: vec![d],
            }),
        }
    }
    faces.sort_by(|x, y| y.score().total_cmp(&x.score()));
    faces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_counts_match_the_models() {
        assert_eq!(SHORT_RANGE.anchors().len(), 896);
        assert_eq!(FULL_RANGE.anchors().len(), 2304);
        assert_eq!(SHORT_RANGE.anchors()[0], [0.5 / 16.0, 0.5 / 16.0]);
    }

    fn det(x: f32, score: f32) -> Detection {
        Detection {
            bbox: [x, 0.0, x + 10.0, 10.0],
            keypoints: [[x, 0.0]; 6],
            score,
        }
    }

    #[test]
    fn weighted_nms_blends_overlaps_and_keeps_separate_faces() {
        let out = weighted_nms(vec![det(0.0, 0.9), det(1.0, 0.6), det(50.0, 0.7)], 0.3);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].score, 0.9);
        let blended = (0.9 * 0.0 + 0.6 * 1.0) / 1.5;
        assert!((out[0].bbox[0] - blended).abs() < 1e-5);
        assert_eq!(out[1].bbox[0], 50.0);
        // Degenerate boxes never loop forever.
        let zero = Detection {
            bbox: [1.0, 1.0, 1.0, 1.0],
            ..det(0.0, 0.8)
        };
        assert_eq!(weighted_nms(vec![zero, zero], 0.3).len(), 2);
    }

    #[test]
    fn merge_counts_a_face_seen_by_both_detectors_once() {
        let faces = merge(&[det(0.0, 0.9)], &[det(1.0, 0.8), det(40.0, 0.7)]);
        assert_eq!(faces.len(), 2);
        // The same face at a second, wrong scale (IoU ~0.1) is one face.
        let big = Detection {
            bbox: [-10.0, -10.0, 20.0, 20.0],
            ..det(0.0, 0.95)
        };
        let faces = merge(&[det(0.0, 0.9)], &[big]);
        assert_eq!(faces.len(), 1);
        assert_eq!(
            faces[0].best().score,
            0.9,
            "the preferred detector's box first"
        );
        assert_eq!(faces[0].candidates.len(), 2);
        assert_eq!(faces[0].score(), 0.95);
    }

    #[test]
    fn decode_maps_anchor_offsets_through_the_letterbox() {
        // One anchor fires with a 32 px (of 128) box at its centre; the
        // letterbox covers a 640x480 image (side 640, centred).
        let mut reg = vec![0.0; 896 * 16];
        let mut logits = vec![-10.0; 896];
        let i = 17 * 2; // cell (1, 1) of the 16x16 layer, first anchor
        logits[i] = 5.0;
        reg[i * 16 + 2] = 32.0;
        reg[i * 16 + 3] = 32.0;
        let roi = Roi {
            center: [320.0, 240.0],
            size: 640.0,
            rotation: 0.0,
        };
        let d = SHORT_RANGE.decode(&reg, &logits, &roi, 0.5);
        assert_eq!(d.len(), 1);
        let cx = 1.5 / 16.0 * 640.0;
        let cy = 1.5 / 16.0 * 640.0 - 80.0;
        assert!((d[0].bbox[0] - (cx - 80.0)).abs() < 1e-3, "{:?}", d[0].bbox);
        assert!((d[0].bbox[1] - (cy - 80.0)).abs() < 1e-3);
        assert!((d[0].score - 0.9933).abs() < 1e-3);
    }
}
