//! Property tests of the photo input path against hostile bytes: random
//! data behind each format's magic, every truncation of real JPEG, PNG and
//! WebP files, random byte corruptions, and headers claiming huge images.
//! Properties: decoding never panics out of `Photo::decode`, a decoded photo
//! can always be sampled, headers over the limits are refused before any
//! pixel buffer exists, and no input raises the process's peak memory by
//! more than the 40-megapixel budget allows.
//!
//! Memory is read from the kernel (`VmHWM`, reset through
//! `/proc/self/clear_refs`), so this file holds one test: other tests in the
//! same process would blur the peak.

mod common;

use std::panic;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use discovery_face_analysis::image::{ImageError, Limits, Photo, Roi};

/// Deterministic generator (SplitMix64).
use discovery_kit::rng::SplitMix as Rng;

fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak resident memory since the last reset.
fn peak_kb() -> Option<u64> {
    status_kb("VmHWM:")
}

fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn webp(r: &discovery_face_analysis::image::Raster) -> Vec<u8> {
    let mut out = Vec::new();
    image_webp::WebPEncoder::new(&mut out)
        .encode(&r.rgb, r.width, r.height, image_webp::ColorType::Rgb8)
        .expect("encode webp");
    out
}

fn png(r: &discovery_face_analysis::image::Raster) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, r.width, r.height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()
        .unwrap()
        .write_image_data(&r.rgb)
        .unwrap();
    out
}

struct Outcome {
    cases: usize,
    decoded: usize,
    peak_growth_kb: u64,
}

/// Decodes (and samples) one input; records how far the peak resident
/// memory rose above the resident memory just before.
fn exercise(bytes: &[u8], limits: &Limits, out: &mut Outcome) -> Result<(), ImageError> {
    let baseline = status_kb("VmRSS:");
    let measured = reset_peak();
    let result = Photo::decode(bytes, limits);
    out.cases += 1;
    if let Ok(photo) = &result {
        out.decoded += 1;
        let (w, h) = photo.size();
        let roi = Roi {
            center: [w as f32 / 2.0, h as f32 / 2.0],
            size: w.max(h) as f32,
            rotation: 0.3,
        };
        let mut t = Vec::new();
        photo.sample(&roi, 64, (0.0, 1.0), false, &mut t);
        assert!(t.iter().all(|v| v.is_finite()));
    }
    if let (true, Some(base), Some(now)) = (measured, baseline, peak_kb()) {
        out.peak_growth_kb = out.peak_growth_kb.max(now.saturating_sub(base));
    }
    result.map(|_| ())
}

#[test]
fn hostile_images_never_panic_and_stay_within_the_memory_budget() {
    let panics = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = panics.clone();
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::Relaxed);
        default_hook(info);
    }));

    let limits = Limits::default();
    let base = raster("astronaut.png");
    let small = resize(&base, 96, 72);
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("jpeg", jpeg(&small, 85, Some(6))),
        ("jpeg-large", jpeg(&resize(&base, 1024, 768), 80, None)),
        ("png", png(&small)),
        ("webp", webp(&small)),
    ];
    let measurable = reset_peak() && peak_kb().is_some();
    let mut out = Outcome {
        cases: 0,
        decoded: 0,
        peak_growth_kb: 0,
    };
    let mut rng = Rng(0x5eed);

    // Every valid seed decodes.
    for (name, bytes) in &seeds {
        exercise(bytes, &limits, &mut out).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // Every truncation of the small seeds (and a sample of the large one).
    for (name, bytes) in &seeds {
        let step = if *name == "jpeg-large" { 997 } else { 1 };
        for len in (0..bytes.len()).step_by(step) {
            let _ = exercise(&bytes[..len], &limits, &mut out);
        }
    }
    // Random corruptions: 1-8 bytes overwritten, header-biased.
    for (_, bytes) in &seeds {
        for _ in 0..400 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.below(8) {
                let i = if rng.below(2) == 0 {
                    rng.below(b.len().min(64))
                } else {
                    rng.below(b.len())
                };
                b[i] = rng.next_u64() as u8;
            }
            let _ = exercise(&b, &limits, &mut out);
        }
    }
    // Random bytes behind each magic number, and without one.
    let magics: [&[u8]; 4] = [
        b"\xff\xd8\xff",
        b"\x89PNG\r\n\x1a\n",
        b"RIFF\0\0\0\0WEBP",
        b"",
    ];
    for magic in magics {
        for _ in 0..300 {
            let mut b = magic.to_vec();
            b.extend((0..rng.below(2048)).map(|_| rng.next_u64() as u8));
            let _ = exercise(&b, &limits, &mut out);
        }
    }
    let random_peak = out.peak_growth_kb;

    // Headers claiming huge images are refused before decoding: no
    // measurable memory growth.
    out.peak_growth_kb = 0;
    let mut huge_jpeg = seeds[0].1.clone();
    let sof = huge_jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline SOF0");
    huge_jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xDC, 0xFF, 0xDC]); // 65500 x 65500
    let mut vp8l = b"RIFF\x1a\0\0\0WEBPVP8L\x0d\0\0\0\x2f".to_vec();
    vp8l.extend_from_slice(&0x0FFF_FFFFu32.to_le_bytes()); // 16384 x 16384
    vp8l.extend_from_slice(&[0; 9]);
    let mut png_bomb = seeds[2].1.clone();
    png_bomb[16..24].copy_from_slice(&[0, 0, 0x75, 0x30, 0, 0, 0x75, 0x30]); // 30000 x 30000 (CRC now wrong)
    let ihdr_crc = crc32fast::hash(&png_bomb[12..29]);
    png_bomb[29..33].copy_from_slice(&ihdr_crc.to_be_bytes());
    for (name, bytes) in [("jpeg", huge_jpeg), ("webp", vp8l), ("png", png_bomb)] {
        let e = exercise(&bytes, &limits, &mut out).expect_err(name);
        assert!(matches!(e, ImageError::TooLarge(_)), "{name}: {e}");
    }
    // Under the pixel cap but over the decode budget: a small file that
    // describes a 36 MP image (PNG: ~216 MB to decode; progressive JPEG:
    // a full-size coefficient buffer of ~216 MB; lossless WebP: ~400 MB).
    // Refused from the header, before any buffer.
    let png_36mp = discovery_face_analysis::image::testing::png_claiming(6000, 6000, 2, &[]);
    let mut progressive = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut progressive, 80);
    enc.set_progressive(true);
    enc.encode(
        &small.rgb,
        small.width as u16,
        small.height as u16,
        jpeg_encoder::ColorType::Rgb,
    )
    .unwrap();
    let sof2 = progressive
        .windows(2)
        .position(|w| w == [0xFF, 0xC2])
        .expect("progressive SOF2");
    progressive[sof2 + 5..sof2 + 9].copy_from_slice(&[0x17, 0x70, 0x17, 0x70]); // 6000 x 6000
    let mut vp8l_36mp = b"RIFF\x1a\0\0\0WEBPVP8L\x0d\0\0\0\x2f".to_vec();
    let bits: u32 = 5999 | (5999 << 14);
    vp8l_36mp.extend_from_slice(&bits.to_le_bytes());
    vp8l_36mp.extend_from_slice(&[0; 9]);
    for (name, bytes) in [
        ("png 36 MP", png_36mp),
        ("progressive jpeg 36 MP", progressive),
        ("webp 36 MP", vp8l_36mp),
    ] {
        let e = exercise(&bytes, &limits, &mut out).expect_err(name);
        assert!(
            matches!(&e, ImageError::TooLarge(m) if m.contains("to decode")),
            "{name}: {e}"
        );
        eprintln!("{name} in {} bytes: {e}", bytes.len());
    }
    let bombs_peak = out.peak_growth_kb;
    // Over the byte limit: refused before sniffing.
    let e = Photo::decode(&vec![0u8; limits.max_bytes + 1], &limits).unwrap_err();
    assert!(matches!(e, ImageError::TooLarge(_)));

    eprintln!(
        "{} hostile inputs, {} decoded, {} decoder panics caught; peak memory growth {} KiB (random), {} KiB (huge headers)",
        out.cases,
        out.decoded,
        panics.load(Ordering::Relaxed),
        random_peak,
        bombs_peak
    );
    assert!(out.cases > 5000);
    if measurable {
        // 40 MP x (RGB + decoder working set + pyramid) stays under ~400 MiB.
        assert!(random_peak < 400 * 1024, "peak grew {random_peak} KiB");
        assert!(
            bombs_peak < 8 * 1024,
            "a refused header allocated {bombs_peak} KiB"
        );
    }
}
