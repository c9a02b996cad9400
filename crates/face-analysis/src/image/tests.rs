use super::*;

fn gradient(w: u32, h: u32) -> Raster {
    let mut rgb = Vec::new();
    for y in 0..h {
        for x in 0..w {
            rgb.extend_from_slice(&[
                (x * 7 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x + y) % 256) as u8,
            ]);
        }
    }
    Raster {
        width: w,
        height: h,
        rgb,
    }
}

/// Rotates/mirrors stored pixels to what a viewer shows for `o`.
fn view(r: &Raster, o: Orientation) -> Raster {
    let (w, h) = (r.width as usize, r.height as usize);
    let (vw, vh) = if o.transposes() { (h, w) } else { (w, h) };
    let mut rgb = vec![0; vw * vh * 3];
    for y in 0..vh {
        for x in 0..vw {
            // stored pixel whose centre maps to viewed centre (x+.5, y+.5)
            let (a, b) = o.affine(w as f32, h as f32);
            let (cx, cy) = (x as f32 + 0.5, y as f32 + 0.5);
            let sx = (a[0][0] * cx + a[0][1] * cy + b[0] - 0.5).round() as usize;
            let sy = (a[1][0] * cx + a[1][1] * cy + b[1] - 0.5).round() as usize;
            rgb[(y * vw + x) * 3..][..3].copy_from_slice(&r.rgb[(sy * w + sx) * 3..][..3]);
        }
    }
    Raster {
        width: vw as u32,
        height: vh as u32,
        rgb,
    }
}

#[test]
fn orientations_match_their_exif_meaning() {
    // A 3x2 image: stored pixel (0,0) is marked. EXIF 6 (rotate 90° CW
    // to view) shows it at the top-right; 8 at the bottom-left; 3 at the
    // bottom-right; 2 at the top-right; 5 at the top-left.
    let mut r = Raster {
        width: 3,
        height: 2,
        rgb: vec![0; 18],
    };
    r.rgb[0] = 255;
    let at = |o: u8| {
        let v = view(&r, Orientation(o));
        let i = v.rgb.chunks(3).position(|p| p[0] == 255).unwrap();
        (v.width, v.height, i as u32 % v.width, i as u32 / v.width)
    };
    assert_eq!(at(1), (3, 2, 0, 0));
    assert_eq!(at(2), (3, 2, 2, 0));
    assert_eq!(at(3), (3, 2, 2, 1));
    assert_eq!(at(4), (3, 2, 0, 1));
    assert_eq!(at(5), (2, 3, 0, 0));
    assert_eq!(at(6), (2, 3, 1, 0));
    assert_eq!(at(7), (2, 3, 1, 2));
    assert_eq!(at(8), (2, 3, 0, 2));
}

#[test]
fn sampling_an_oriented_photo_equals_sampling_the_rotated_pixels() {
    let r = gradient(40, 24);
    for o in 1..=8 {
        let o = Orientation(o);
        let oriented = Photo::from_raster(r.clone(), o);
        let viewed = Photo::from_raster(view(&r, o), Orientation::NORMAL);
        assert_eq!(oriented.size(), viewed.size());
        let roi = Roi {
            center: [13.0, 9.5],
            size: 12.0,
            rotation: 0.3,
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        oriented.sample(&roi, 12, (0.0, 1.0), false, &mut a);
        viewed.sample(&roi, 12, (0.0, 1.0), false, &mut b);
        let max = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-3, "orientation {o:?}: differs by {max}");
    }
}

#[test]
fn sampling_at_unit_scale_reproduces_pixels_and_roi_maps_back() {
    let r = gradient(16, 16);
    let p = Photo::from_raster(r.clone(), Orientation::NORMAL);
    let roi = Roi {
        center: [8.0, 8.0],
        size: 16.0,
        rotation: 0.0,
    };
    let mut t = Vec::new();
    p.sample(&roi, 16, (0.0, 255.0), false, &mut t);
    for (i, v) in t[..256].iter().enumerate() {
        assert!((v - r.rgb[i * 3] as f32).abs() < 1e-3);
    }
    assert_eq!(roi.to_image(16.0, [3.5, 4.5]), [3.5, 4.5]);
    let rotated = Roi {
        rotation: std::f32::consts::FRAC_PI_2,
        ..roi
    };
    let q = rotated.to_image(16.0, [16.0, 8.0]);
    assert!(
        (q[0] - 8.0).abs() < 1e-4 && (q[1] - 16.0).abs() < 1e-4,
        "{q:?}"
    );
}

#[test]
fn pyramid_levels_are_used_for_large_regions_and_agree_on_flat_colour() {
    let r = Raster {
        width: 1024,
        height: 512,
        rgb: vec![100; 1024 * 512 * 3],
    };
    let p = Photo::from_raster(r, Orientation::NORMAL);
    let roi = Roi {
        center: [512.0, 256.0],
        size: 1024.0,
        rotation: 0.0,
    };
    let mut t = Vec::new();
    p.sample(&roi, 64, (0.0, 1.0), false, &mut t);
    assert!(
        p.levels[3].get().is_some(),
        "1024 px into 64: level 3 (8x) or more"
    );
    // Inside rows are flat; rows outside the 512-px-tall image are black.
    let row = |j: usize| t[j * 64 + 10];
    assert!((row(32) - 100.0 / 255.0).abs() < 1e-3);
    assert_eq!(row(2), 0.0);
}

#[test]
fn sniffing_names_what_was_sent() {
    assert_eq!(Format::sniff(b"\xff\xd8\xff\xe0").unwrap(), Format::Jpeg);
    assert!(matches!(Format::sniff(b"GIF89a...."), Err(ImageError::Unsupported(s)) if s == "GIF"));
    assert!(matches!(
        Format::sniff(b""),
        Err(ImageError::Unsupported(_))
    ));
}

#[test]
fn dimensions_are_checked_before_decoding() {
    // A PNG header claiming 100000 x 100000 pixels, and the first
    // bytes of a compressed stream: a bomb's IDAT.
    let png = testing::png_claiming(100_000, 100_000, 2, b"\x78\x9c\x00\x00");
    let e = Photo::decode(&png, &Limits::default()).unwrap_err();
    assert!(
        matches!(e, ImageError::TooLarge(ref m) if m.contains("100000x100000")),
        "{e}"
    );
}
