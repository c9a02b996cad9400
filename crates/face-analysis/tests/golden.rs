//! Golden tests of the converted models and the pipeline on real photos
//! (scikit-image's test images, fetched by `scripts/fetch-models.sh
//! --test-data`). The reference is MediaPipe's own output on the astronaut
//! photo: iris centres near (203.5, 101.1) and (246.6, 103.5), face box near
//! [178, 83, 95, 95].

mod common;

use common::*;
use discovery_face_analysis::image::{Limits, Orientation, Photo};
use discovery_face_analysis::pipeline::{self, Analysis, Gates, Rejection, Scratch, Timings};

const IRIS_RIGHT: [f32; 2] = [203.5, 101.1];
const IRIS_LEFT: [f32; 2] = [246.6, 103.5];

fn analyze(bytes: &[u8]) -> Result<Analysis, Rejection> {
    let mut engine = engine();
    pipeline::analyze_bytes(
        &mut engine,
        bytes,
        &Limits::default(),
        &Gates::default(),
        &mut Scratch::default(),
        &mut Timings::default(),
    )
}

fn irises(a: &Analysis) -> [[f32; 2]; 2] {
    a.measurements.iris_centers.expect("photos have irises")
}

#[test]
fn astronaut_matches_mediapipe_within_3_px() {
    let a = analyze(&photo_bytes("astronaut.png")).expect("one frontal face");
    let [r, l] = irises(&a);
    assert!(
        dist(r, IRIS_RIGHT) < 3.0,
        "right iris {r:?} vs {IRIS_RIGHT:?}"
    );
    assert!(dist(l, IRIS_LEFT) < 3.0, "left iris {l:?} vs {IRIS_LEFT:?}");
    let [x, y, w, h] = a.face_box;
    for (got, want) in [(x, 178.0), (y, 83.0), (w, 95.0), (h, 95.0)] {
        assert!((got - want).abs() < 6.0, "box {:?}", a.face_box);
    }
    let m = &a.measurements;
    assert!((54.0..=74.0).contains(&m.pd.mm), "adult PD, got {:?}", m.pd);
    assert!(m.pd.confidence > 0.3, "{:?}", m.pd);
    assert!(
        (120.0..=165.0).contains(&m.face_width.mm),
        "face width {:?}",
        m.face_width
    );
    assert!(
        m.pose.roll.abs() < 10.0 && m.pose.yaw.abs() < 15.0,
        "{:?}",
        m.pose
    );
    assert_eq!(a.landmarks.len(), 468);
    assert!(a.shape.confidence >= a.shape.runner_up_confidence);
    eprintln!(
        "astronaut: {:?} {:?} pd {:.1} mm face {:.1} mm",
        a.shape, m.pose, m.pd.mm, m.face_width.mm
    );
}

#[test]
fn cat_and_coffee_are_no_face() {
    for name in ["chelsea.png", "coffee.png"] {
        match analyze(&photo_bytes(name)) {
            Err(Rejection::NoFace(_)) => {}
            other => panic!("{name}: expected no face, got {other:?}"),
        }
    }
}

#[test]
fn sideways_photo_without_exif_is_refused_and_with_exif_is_analysed() {
    let upright = raster("astronaut.png");
    let sideways = rotate_cw(&upright);
    let e = analyze(&jpeg(&sideways, 95, None)).unwrap_err();
    assert!(
        matches!(e, Rejection::Sideways(_) | Rejection::NoFace(_)),
        "a 90° photo gives a quality error, got {e:?}"
    );
    eprintln!("sideways: {e}");
    // The same pixels with EXIF orientation 8 (rotate 90° counter-clockwise
    // to view) are the upright photo: same irises within 3 px.
    let a = analyze(&jpeg(&sideways, 95, Some(8))).expect("EXIF orientation applied");
    let [r, l] = irises(&a);
    assert!(
        dist(r, IRIS_RIGHT) < 3.0 && dist(l, IRIS_LEFT) < 3.0,
        "{r:?} {l:?}"
    );
}

#[test]
fn tiny_face_is_too_small_not_nonsense() {
    // A ~52 px face in an 800x600 photo: found by the full-range detector,
    // too small to measure.
    let face = crop(&raster("astronaut.png"), 110, 20, 220, 220);
    let photo = canvas(&resize(&face, 120, 120), 800, 600, 340, 240);
    let e = analyze(&jpeg(&photo, 95, None)).unwrap_err();
    assert!(matches!(e, Rejection::FaceTooSmall(_)), "got {e:?}");
    assert_eq!(e.reason(), "face_too_small");
    eprintln!("tiny: {e}");
    // The same face in a 640x480 photo: no detector looks for faces that
    // small there, and the error says what size is needed.
    let photo = canvas(&resize(&face, 120, 120), 640, 480, 260, 180);
    let e = analyze(&jpeg(&photo, 95, None)).unwrap_err();
    assert!(
        matches!(e, Rejection::NoFace(ref m) if m.contains("64 px")),
        "got {e:?}"
    );
    eprintln!("tiny in 640x480: {e}");
}

#[test]
fn large_jpeg_is_decoded_scaled_and_measured_in_original_pixels() {
    // 4000x3000 with the astronaut enlarged 5.5x: decoded at 1/4.
    let big = resize(&raster("astronaut.png"), 2816, 2816);
    let photo = canvas(&big, 4000, 3000, 600, 100);
    let bytes = jpeg(&photo, 90, None);
    let decoded = Photo::decode(&bytes, &Limits::default()).unwrap();
    assert_eq!(decoded.decode_scale(), 4.0);
    assert_eq!(decoded.size(), (4000, 3000));
    let a = analyze(&bytes).expect("face");
    let [r, l] = irises(&a);
    let map = |p: [f32; 2]| [600.0 + p[0] * 5.5, 100.0 + p[1] * 5.5];
    assert!(
        dist(r, map(IRIS_RIGHT)) < 3.0 * 5.5,
        "{r:?} vs {:?}",
        map(IRIS_RIGHT)
    );
    assert!(
        dist(l, map(IRIS_LEFT)) < 3.0 * 5.5,
        "{l:?} vs {:?}",
        map(IRIS_LEFT)
    );
    let small = analyze(&photo_bytes("astronaut.png")).unwrap();
    let ratio = a.measurements.pd.mm / small.measurements.pd.mm;
    assert!(
        (0.95..1.05).contains(&ratio),
        "PD in mm does not depend on resolution: {ratio}"
    );
}

#[test]
fn two_faces_side_by_side_are_several_faces() {
    let face = crop(&raster("astronaut.png"), 110, 20, 220, 220);
    let half = resize(&face, 300, 300);
    let mut both = canvas(&half, 640, 320, 10, 10);
    let right = canvas(&half, 640, 320, 330, 10);
    for y in 0..320usize {
        let row = y * 640 * 3;
        both.rgb[row + 330 * 3..row + 640 * 3]
            .copy_from_slice(&right.rgb[row + 330 * 3..row + 640 * 3]);
    }
    match analyze(&jpeg(&both, 95, None)) {
        Err(Rejection::SeveralFaces { count, similar }) => assert!(count >= 2 && similar >= 2),
        other => panic!("expected several faces, got {other:?}"),
    }
}

#[test]
fn client_landmarks_give_the_same_measurements_as_the_server() {
    let server = analyze(&photo_bytes("astronaut.png")).unwrap();
    // A 478-point client mesh: the server's 468 plus iris points built from
    // its iris centres and diameter.
    let m = &server.measurements;
    let mut points = server.landmarks.clone();
    for c in m.iris_centers.unwrap() {
        let r = m.iris_px / 2.0;
        points.push([c[0], c[1], 0.0]);
        points.extend([
            [c[0] - r, c[1], 0.0],
            [c[0], c[1] - r, 0.0],
            [c[0] + r, c[1], 0.0],
            [c[0], c[1] + r, 0.0],
        ]);
    }
    let client = pipeline::analyze_landmarks(&points, (512, 512), &Gates::default()).unwrap();
    assert!((client.measurements.pd.mm - m.pd.mm).abs() < 0.01);
    assert_eq!(client.shape.shape, server.shape.shape);
    // 468 points: shape and pixels, no millimetres.
    let client =
        pipeline::analyze_landmarks(&points[..468], (512, 512), &Gates::default()).unwrap();
    assert_eq!(client.measurements.pd.mm, 0.0);
    assert_eq!(client.shape.shape, server.shape.shape);
    // Normalised coordinates are named as the mistake they are.
    let normalised: Vec<[f32; 3]> = points
        .iter()
        .map(|p| [p[0] / 512.0, p[1] / 512.0, 0.0])
        .collect();
    let e = pipeline::analyze_landmarks(&normalised, (512, 512), &Gates::default()).unwrap_err();
    assert!(e.to_string().contains("normalised"), "{e}");
}

#[test]
fn orientation_from_exif_is_read() {
    let r = resize(&raster("astronaut.png"), 64, 48);
    for o in 1..=8u16 {
        let p = Photo::decode(&jpeg(&r, 90, Some(o)), &Limits::default()).unwrap();
        assert_eq!(p.orientation, Orientation(o as u8));
        let want = if o >= 5 { (48, 64) } else { (64, 48) };
        assert_eq!(p.size(), want);
    }
}
