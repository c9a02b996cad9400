//! Test photos: the scikit-image PNGs fetched by `scripts/fetch-models.sh
//! --test-data`, and photos derived from them (resized, rotated, re-encoded
//! as JPEG with or without EXIF orientation). Shared by the tests and the
//! benchmark.
#![allow(dead_code)]

use std::path::PathBuf;

use discovery_face_analysis::image::{Limits, Photo, Raster};
use discovery_face_analysis::models::Engine;

/// The repository's models directory.
pub fn models_dir() -> PathBuf {
    std::env::var_os("DISCOVERY_FACE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

/// Bytes of a test photo; panics with the fix when missing.
pub fn photo_bytes(name: &str) -> Vec<u8> {
    let path = models_dir().join("testdata").join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/fetch-models.sh --test-data (make test does)",
            path.display()
        )
    })
}

/// Loads the models; panics with the fix when missing.
pub fn engine() -> Engine {
    Engine::load(&models_dir())
        .unwrap_or_else(|e| panic!("{e} (make test runs scripts/fetch-models.sh)"))
}

/// A test photo decoded to RGB.
pub fn raster(name: &str) -> Raster {
    Photo::decode(&photo_bytes(name), &Limits::default())
        .expect("test photo decodes")
        .raster()
        .clone()
}

/// Bilinear resize.
pub fn resize(r: &Raster, w: u32, h: u32) -> Raster {
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    let (sx, sy) = (r.width as f32 / w as f32, r.height as f32 / h as f32);
    let px = |x: i64, y: i64, c: usize| {
        let x = x.clamp(0, r.width as i64 - 1) as usize;
        let y = y.clamp(0, r.height as i64 - 1) as usize;
        r.rgb[(y * r.width as usize + x) * 3 + c] as f32
    };
    for y in 0..h {
        for x in 0..w {
            let fx = (x as f32 + 0.5) * sx - 0.5;
            let fy = (y as f32 + 0.5) * sy - 0.5;
            let (x0, y0) = (fx.floor() as i64, fy.floor() as i64);
            let (ax, ay) = (fx - x0 as f32, fy - y0 as f32);
            for c in 0..3 {
                let v = (px(x0, y0, c) * (1.0 - ax) + px(x0 + 1, y0, c) * ax) * (1.0 - ay)
                    + (px(x0, y0 + 1, c) * (1.0 - ax) + px(x0 + 1, y0 + 1, c) * ax) * ay;
                rgb.push(v.round() as u8);
            }
        }
    }
    Raster {
        width: w,
        height: h,
        rgb,
    }
}

/// `r` pasted at (x, y) on a grey canvas.
pub fn canvas(r: &Raster, w: u32, h: u32, x: u32, y: u32) -> Raster {
    let mut rgb = vec![128u8; (w * h * 3) as usize];
    for row in 0..r.height.min(h - y) {
        let src = (row * r.width * 3) as usize;
        let dst = (((y + row) * w + x) * 3) as usize;
        let n = (r.width.min(w - x) * 3) as usize;
        rgb[dst..dst + n].copy_from_slice(&r.rgb[src..src + n]);
    }
    Raster {
        width: w,
        height: h,
        rgb,
    }
}

/// Rotated 90° clockwise.
pub fn rotate_cw(r: &Raster) -> Raster {
    let (w, h) = (r.width as usize, r.height as usize);
    let mut rgb = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            // (x, y) -> (h - 1 - y, x) in a h-wide image
            let (nx, ny) = (h - 1 - y, x);
            rgb[(ny * h + nx) * 3..][..3].copy_from_slice(&r.rgb[(y * w + x) * 3..][..3]);
        }
    }
    Raster {
        width: h as u32,
        height: w as u32,
        rgb,
    }
}

/// A minimal EXIF block (big-endian TIFF, one IFD entry: Orientation).
pub fn exif_orientation(o: u16) -> Vec<u8> {
    let mut e = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec();
    e.extend_from_slice(&1u16.to_be_bytes()); // one entry
    e.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    e.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    e.extend_from_slice(&1u32.to_be_bytes()); // count
    e.extend_from_slice(&o.to_be_bytes());
    e.extend_from_slice(&[0, 0]);
    e.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    e
}

/// JPEG at `quality`, with an EXIF orientation when given.
pub fn jpeg(r: &Raster, quality: u8, orientation: Option<u16>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, quality);
    if let Some(o) = orientation {
        enc.add_app_segment(1, &exif_orientation(o))
            .expect("app segment");
    }
    enc.encode(
        &r.rgb,
        r.width as u16,
        r.height as u16,
        jpeg_encoder::ColorType::Rgb,
    )
    .expect("encode");
    out
}

/// Distance between two points.
pub fn dist(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// The `w`×`h` region at (x, y).
pub fn crop(r: &Raster, x: u32, y: u32, w: u32, h: u32) -> Raster {
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for row in y..y + h {
        let start = ((row * r.width + x) * 3) as usize;
        rgb.extend_from_slice(&r.rgb[start..start + (w * 3) as usize]);
    }
    Raster {
        width: w,
        height: h,
        rgb,
    }
}

/// A 640x480 selfie-like JPEG: the astronaut's face about 210 px wide.
pub fn selfie_640() -> Vec<u8> {
    let face = resize(&crop(&raster("astronaut.png"), 110, 20, 220, 220), 460, 460);
    jpeg(&canvas(&face, 640, 480, 90, 10), 90, None)
}

/// A 4000x3000 (12 MP) JPEG with the astronaut enlarged 5.5x.
pub fn photo_12mp() -> Vec<u8> {
    let big = resize(&raster("astronaut.png"), 2816, 2816);
    jpeg(&canvas(&big, 4000, 3000, 600, 100), 90, None)
}

/// A 640x480 JPEG without a face (the coffee cup).
pub fn no_face_640() -> Vec<u8> {
    jpeg(&resize(&raster("coffee.png"), 640, 480), 90, None)
}
