//! Photo input: format sniffing, size limits checked from the header before
//! any pixel is decoded, DCT-scaled JPEG decoding, EXIF orientation, and the
//! one sampling routine every model input goes through.
//!
//! Coordinates: continuous, in the *oriented* image (as a person would view
//! it after EXIF orientation), pixel `i` covering `[i, i+1)`. Orientation is
//! never applied to pixels: it is one more affine step in [`Photo::sample`],
//! so a sideways 12 MP photo costs no copy.

use std::io::Cursor;
use std::sync::OnceLock;

/// Input limits (the proto's: 15 MiB and 40 megapixels).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest encoded photo accepted.
    pub max_bytes: usize,
    /// Largest width × height accepted (as stored, before scaling).
    pub max_pixels: u64,
    /// Largest width or height accepted.
    pub max_side: u32,
    /// JPEGs are decoded at 1/2, 1/4 or 1/8 while their long side stays at
    /// least this; the models never see more than ~200 px of a face, so a
    /// face of 14 % of the frame or more loses nothing.
    pub min_decoded_long_side: u32,
    /// Memory one decode may need, estimated per format from the header
    /// before any buffer is allocated ([`decode_budget`]): a small file can
    /// describe a large image (a 150 KB PNG of 40 MP needs ~280 MB), and
    /// one engine per core decodes at once.
    pub max_decode_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 15 << 20,
            max_pixels: 40_000_000,
            max_side: 16_384,
            min_decoded_long_side: 960,
            max_decode_bytes: 128 << 20,
        }
    }
}

impl Limits {
    /// Refuses an encoded photo over `max_bytes` (before hashing or sniffing it).
    pub fn check_bytes(&self, len: usize) -> Result<(), ImageError> {
        if len > self.max_bytes {
            return Err(ImageError::TooLarge(format!(
                "{len} bytes is over the limit of {} MiB; send a smaller photo",
                self.max_bytes >> 20
            )));
        }
        Ok(())
    }
}

/// Why a photo cannot be used.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ImageError {
    /// Not JPEG, PNG or WebP.
    #[error("image: unsupported format ({0}); send a JPEG, PNG or WebP photo")]
    Unsupported(String),
    /// Over a size limit.
    #[error("image: {0}")]
    TooLarge(String),
    /// Could not be decoded.
    #[error("image: the {format} data is corrupt or truncated ({detail})")]
    Corrupt {
        /// JPEG, PNG or WebP.
        format: &'static str,
        /// What the decoder said.
        detail: String,
    },
}

/// Encoded formats we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JPEG (baseline or progressive).
    Jpeg,
    /// PNG.
    Png,
    /// WebP (lossy or lossless).
    Webp,
}

impl Format {
    /// Sniffs the format from the magic bytes.
    pub fn sniff(bytes: &[u8]) -> Result<Self, ImageError> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Ok(Self::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Ok(Self::Png)
        } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Ok(Self::Webp)
        } else if bytes.is_empty() {
            Err(ImageError::Unsupported("no bytes".into()))
        } else if bytes.starts_with(b"GIF8") {
            Err(ImageError::Unsupported("GIF".into()))
        } else if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
            Err(ImageError::Unsupported("HEIC/AVIF".into()))
        } else {
            Err(ImageError::Unsupported("unrecognised bytes".into()))
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
            Self::Webp => "WebP",
        }
    }
}

/// EXIF orientation (1-8): how the stored pixels map to the viewed image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orientation(pub u8);

impl Orientation {
    /// Stored as viewed.
    pub const NORMAL: Self = Self(1);

    /// Reads the orientation tag from raw EXIF (TIFF) data; 1 when absent
    /// or unreadable (a bad EXIF block never rejects a photo).
    pub fn from_exif(raw: &[u8]) -> Self {
        let Ok(exif) = exif::Reader::new().read_raw(raw.to_vec()) else {
            return Self::NORMAL;
        };
        exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
            .and_then(|f| f.value.get_uint(0))
            .filter(|v| (1..=8).contains(v))
            .map_or(Self::NORMAL, |v| Self(v as u8))
    }

    /// True when width and height swap when viewed.
    pub fn transposes(self) -> bool {
        self.0 >= 5
    }

    /// Maps a viewed point to the stored image (`w`, `h`: stored size):
    /// `stored = a * viewed + b` with `a` a signed permutation.
    fn affine(self, w: f32, h: f32) -> ([[f32; 2]; 2], [f32; 2]) {
        match self.0 {
            2 => ([[-1., 0.], [0., 1.]], [w, 0.]),
            3 => ([[-1., 0.], [0., -1.]], [w, h]),
            4 => ([[1., 0.], [0., -1.]], [0., h]),
            5 => ([[0., 1.], [1., 0.]], [0., 0.]),
            6 => ([[0., 1.], [-1., 0.]], [0., h]),
            7 => ([[0., -1.], [-1., 0.]], [w, h]),
            8 => ([[0., -1.], [1., 0.]], [w, 0.]),
            _ => ([[1., 0.], [0., 1.]], [0., 0.]),
        }
    }
}

/// An RGB8 raster.
#[derive(Debug, Clone)]
pub struct Raster {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Interleaved RGB, row-major.
    pub rgb: Vec<u8>,
}

impl Raster {
    /// Half size, each pixel the mean of a 2×2 block (odd edges dropped).
    fn halve(&self) -> Raster {
        let (w, h) = ((self.width / 2).max(1), (self.height / 2).max(1));
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        let sw = self.width as usize;
        let (maxx, maxy) = (self.width as usize - 1, self.height as usize - 1);
        for y in 0..h as usize {
            let (r0, r1) = ((2 * y).min(maxy) * sw, (2 * y + 1).min(maxy) * sw);
            for x in 0..w as usize {
                let (c0, c1) = ((2 * x).min(maxx), (2 * x + 1).min(maxx));
                for c in 0..3 {
                    let s = self.rgb[(r0 + c0) * 3 + c] as u16
                        + self.rgb[(r0 + c1) * 3 + c] as u16
                        + self.rgb[(r1 + c0) * 3 + c] as u16
                        + self.rgb[(r1 + c1) * 3 + c] as u16;
                    rgb[(y * w as usize + x) * 3 + c] = ((s + 2) / 4) as u8;
                }
            }
        }
        Raster {
            width: w,
            height: h,
            rgb,
        }
    }
}

const LEVELS: usize = 6;

/// A decoded photo: stored pixels, their orientation, and a lazily built
/// pyramid of box-filtered halves so that sampling a small model input from
/// a large region reads a level where one output pixel covers 1-2 input
/// pixels (bilinear from full resolution would alias).
#[derive(Debug)]
pub struct Photo {
    levels: [OnceLock<Raster>; LEVELS],
    /// Stored size of level 0.
    stored: (u32, u32),
    /// Viewed size at *original* resolution (before DCT scaling).
    original: (u32, u32),
    /// Original pixels per decoded pixel (1, 2, 4 or 8).
    scale: f32,
    /// EXIF orientation.
    pub orientation: Orientation,
    /// Encoded format.
    pub format: Format,
}

/// Where a model input comes from: a square of side `size` centred at
/// `center`, rotated by `rotation` radians (clockwise in image coordinates,
/// y down), in viewed original-resolution pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roi {
    /// Centre.
    pub center: [f32; 2],
    /// Side length.
    pub size: f32,
    /// Rotation in radians.
    pub rotation: f32,
}

impl Roi {
    /// Maps a point of an `n`×`n` model input (in its pixels) to the image.
    pub fn to_image(&self, n: f32, p: [f32; 2]) -> [f32; 2] {
        let (s, c) = self.rotation.sin_cos();
        let (u, v) = ((p[0] / n - 0.5) * self.size, (p[1] / n - 0.5) * self.size);
        [
            self.center[0] + u * c - v * s,
            self.center[1] + u * s + v * c,
        ]
    }
}

impl Photo {
    /// Decodes a photo within `limits`. Dimensions are read from the header
    /// and checked before any pixel buffer is allocated.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Photo, ImageError> {
        limits.check_bytes(bytes.len())?;
        let format = Format::sniff(bytes)?;
        // Third-party decoders are fuzzed upstream; a panic on hostile input
        // would still take a worker down, so it becomes a clean error here.
        std::panic::catch_unwind(|| match format {
            Format::Jpeg => decode_jpeg(bytes, limits),
            Format::Png => decode_png(bytes, limits),
            Format::Webp => decode_webp(bytes, limits),
        })
        .unwrap_or_else(|_| {
            Err(ImageError::Corrupt {
                format: format.name(),
                detail: "decoder failed".into(),
            })
        })
    }

    /// Wraps an RGB raster (tests, benchmarks, client uploads of raw frames).
    pub fn from_raster(raster: Raster, orientation: Orientation) -> Photo {
        let stored = (raster.width, raster.height);
        let original = if orientation.transposes() {
            (stored.1, stored.0)
        } else {
            stored
        };
        let levels: [OnceLock<Raster>; LEVELS] = Default::default();
        let _ = levels[0].set(raster);
        Photo {
            levels,
            stored,
            original,
            scale: 1.0,
            orientation,
            format: Format::Png,
        }
    }

    /// The decoded pixels as stored (before orientation).
    pub fn raster(&self) -> &Raster {
        self.level(0)
    }

    /// Viewed size at original resolution.
    pub fn size(&self) -> (u32, u32) {
        self.original
    }

    /// Original pixels per decoded pixel.
    pub fn decode_scale(&self) -> f32 {
        self.scale
    }

    fn level(&self, l: usize) -> &Raster {
        if l == 0 {
            return self.levels[0]
                .get()
                .expect("level 0 is set at construction");
        }
        self.levels[l].get_or_init(|| self.level(l - 1).halve())
    }

    /// Samples `roi` into an `n`×`n` planar (CHW) RGB tensor, bilinear, with
    /// values mapped from 0..255 to `range`; outside the image is black
    /// (`range.0`). `flip` mirrors the output horizontally.
    pub fn sample(&self, roi: &Roi, n: usize, range: (f32, f32), flip: bool, out: &mut Vec<f32>) {
        out.clear();
        out.resize(3 * n * n, range.0);
        // Original-resolution pixels per output pixel -> pyramid level.
        let step = roi.size / n as f32 / self.scale;
        let mut l = 0;
        while l + 1 < LEVELS && step >= (2u32 << l) as f32 && self.stored.0 >> (l + 1) >= 2 {
            l += 1;
        }
        let raster = self.level(l);
        let k = self.scale * (1u32 << l) as f32; // original px per level px
        // viewed-original -> stored-level: stored = (A * viewed + b) / k
        let (a, b) = self
            .orientation
            .affine(self.original_stored().0, self.original_stored().1);
        let (s, c) = roi.rotation.sin_cos();
        let unit = roi.size / n as f32;
        // viewed point of output pixel centre (i+0.5, j+0.5):
        //   p = center + R * ((i+0.5)*unit - size/2, (j+0.5)*unit - size/2)
        let ox = roi.center[0] - roi.size / 2.0 * (c - s);
        let oy = roi.center[1] - roi.size / 2.0 * (s + c);
        let (dx_i, dy_i) = (c * unit, s * unit); // per output column
        let (dx_j, dy_j) = (-s * unit, c * unit); // per output row
        let to_level = |x: f32, y: f32| {
            (
                (a[0][0] * x + a[0][1] * y + b[0]) / k - 0.5,
                (a[1][0] * x + a[1][1] * y + b[1]) / k - 0.5,
            )
        };
        let (x0, y0) = to_level(ox + 0.5 * (dx_i + dx_j), oy + 0.5 * (dy_i + dy_j));
        let (x1, y1) = to_level(ox + 1.5 * dx_i + 0.5 * dx_j, oy + 1.5 * dy_i + 0.5 * dy_j);
        let (x2, y2) = to_level(ox + 0.5 * dx_i + 1.5 * dx_j, oy + 0.5 * dy_i + 1.5 * dy_j);
        let (sxi, syi) = (x1 - x0, y1 - y0);
        let (sxj, syj) = (x2 - x0, y2 - y0);
        let (w, h) = (raster.width as i32, raster.height as i32);
        let stride = raster.width as usize * 3;
        let px = &raster.rgb;
        let mul = (range.1 - range.0) / 255.0;
        let plane = n * n;
        for j in 0..n {
            let (mut x, mut y) = (x0 + sxj * j as f32, y0 + syj * j as f32);
            for i in 0..n {
                let (fx0, fy0) = (x.floor(), y.floor());
                let (ix, iy) = (fx0 as i32, fy0 as i32);
                if ix >= -1 && iy >= -1 && ix < w && iy < h {
                    let (fx, fy) = (x - fx0, y - fy0);
                    let mut acc = [0f32; 3];
                    for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
                        let yy = iy + dy;
                        if yy < 0 || yy >= h {
                            continue;
                        }
                        for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
                            let xx = ix + dx;
                            if xx < 0 || xx >= w {
                                continue;
                            }
                            let o = yy as usize * stride + xx as usize * 3;
                            let wgt = wx * wy;
                            acc[0] += wgt * px[o] as f32;
                            acc[1] += wgt * px[o + 1] as f32;
                            acc[2] += wgt * px[o + 2] as f32;
                        }
                    }
                    let col = if flip { n - 1 - i } else { i };
                    for (ch, v) in acc.iter().enumerate() {
                        out[ch * plane + j * n + col] = range.0 + v * mul;
                    }
                }
                x += sxi;
                y += syi;
            }
        }
    }

    /// Stored size in original-resolution pixels.
    fn original_stored(&self) -> (f32, f32) {
        (
            self.stored.0 as f32 * self.scale,
            self.stored.1 as f32 * self.scale,
        )
    }
}

fn check_dimensions(w: u32, h: u32, limits: &Limits) -> Result<(), ImageError> {
    if w == 0 || h == 0 {
        return Err(ImageError::TooLarge(format!(
            "{w}x{h} has no pixels; send a photo"
        )));
    }
    if w > limits.max_side || h > limits.max_side || w as u64 * h as u64 > limits.max_pixels {
        return Err(ImageError::TooLarge(format!(
            "{w}x{h} ({:.1} MP) is over the limit of {} MP and {} px a side; resize it before sending",
            w as f64 * h as f64 / 1e6,
            limits.max_pixels / 1_000_000,
            limits.max_side
        )));
    }
    Ok(())
}

/// What decoding needs, in bytes, by format: every buffer the decoder and
/// our conversion to RGB hold at once, from the header alone.
/// - JPEG, baseline: the output at the chosen DCT scale (components per
///   pixel) and its RGB copy. Progressive: also a coefficient buffer for
///   the whole image at full size (64 × i16 per 8×8 block per component:
///   2 bytes a pixel a component), whatever the output scale.
/// - PNG: the decoded image (up to 4 samples of 8 bits after STRIP_16, 8
///   bytes a pixel while de-filtering 16-bit rows) and its RGB copy.
/// - WebP: the RGBA output and its RGB copy, plus the decoder's own planes
///   (YUV 4:2:0 for lossy, ARGB words for lossless: 4 bytes a pixel).
pub fn decode_budget(format: Format, w: u32, h: u32, detail: BudgetDetail) -> u64 {
    let px = w as u64 * h as u64;
    match format {
        Format::Jpeg => {
            let out = detail.scaled_pixels * detail.components;
            let rgb = detail.scaled_pixels * 3;
            let coefficients = if detail.progressive {
                px * detail.components * 2
            } else {
                0
            };
            out + rgb + coefficients
        }
        Format::Png => {
            px * detail.components.max(1) * if detail.sixteen_bit { 2 } else { 1 } + px * 3
        }
        Format::Webp => px * 4 + px * 3 + px * 4,
    }
}

/// Header facts [`decode_budget`] needs beyond the dimensions.
#[derive(Debug, Clone, Copy, Default)]
pub struct BudgetDetail {
    /// Samples per pixel (JPEG components; PNG channels).
    pub components: u64,
    /// JPEG: progressive coding.
    pub progressive: bool,
    /// JPEG: pixels of the output at its DCT scale.
    pub scaled_pixels: u64,
    /// PNG: 16 bits a sample.
    pub sixteen_bit: bool,
}

fn check_budget(format: Format, need: u64, limits: &Limits) -> Result<(), ImageError> {
    if need > limits.max_decode_bytes {
        return Err(ImageError::TooLarge(format!(
            "this {} needs about {} MiB to decode, over the budget of {} MiB; send a smaller photo{}",
            format.name(),
            need >> 20,
            limits.max_decode_bytes >> 20,
            if format == Format::Jpeg {
                " or a baseline (not progressive) JPEG"
            } else {
                " or a JPEG"
            }
        )));
    }
    Ok(())
}

fn corrupt(format: Format, e: impl std::fmt::Display) -> ImageError {
    ImageError::Corrupt {
        format: format.name(),
        detail: e.to_string(),
    }
}

fn decode_jpeg(bytes: &[u8], limits: &Limits) -> Result<Photo, ImageError> {
    use jpeg_decoder::PixelFormat;
    let mut d = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    d.read_info().map_err(|e| corrupt(Format::Jpeg, e))?;
    let info = d
        .info()
        .ok_or_else(|| corrupt(Format::Jpeg, "no frame header"))?;
    let (w, h) = (info.width as u32, info.height as u32);
    check_dimensions(w, h, limits)?;
    let orientation = d
        .exif_data()
        .map_or(Orientation::NORMAL, Orientation::from_exif);
    // Smallest DCT scale keeping the long side >= min_decoded_long_side.
    let long = w.max(h);
    let mut div = 1u32;
    while div < 8 && long / (div * 2) >= limits.min_decoded_long_side {
        div *= 2;
    }
    let (sw, sh) = d
        .scale(w.div_ceil(div) as u16, h.div_ceil(div) as u16)
        .map_err(|e| corrupt(Format::Jpeg, e))?;
    let components = match info.pixel_format {
        PixelFormat::L8 => 1,
        PixelFormat::L16 => 2,
        PixelFormat::RGB24 => 3,
        PixelFormat::CMYK32 => 4,
    };
    check_budget(
        Format::Jpeg,
        decode_budget(
            Format::Jpeg,
            w,
            h,
            BudgetDetail {
                components,
                progressive: info.coding_process == jpeg_decoder::CodingProcess::DctProgressive,
                scaled_pixels: sw as u64 * sh as u64,
                sixteen_bit: false,
            },
        ),
        limits,
    )?;
    d.set_max_decoding_buffer_size(limits.max_decode_bytes as usize);
    let data = d.decode().map_err(|e| corrupt(Format::Jpeg, e))?;
    let (sw, sh) = (sw as u32, sh as u32);
    let n = (sw * sh) as usize;
    let rgb = match info.pixel_format {
        PixelFormat::RGB24 => data,
        PixelFormat::L8 => data.iter().flat_map(|&v| [v, v, v]).collect(),
        PixelFormat::L16 => data
            .chunks_exact(2)
            .flat_map(|v| [v[0], v[0], v[0]])
            .collect(),
        PixelFormat::CMYK32 => data
            .chunks_exact(4)
            .flat_map(|p| {
                let k = p[3] as u16;
                let f = |c: u8| ((c as u16 * k + 127) / 255) as u8;
                [f(p[0]), f(p[1]), f(p[2])]
            })
            .collect(),
    };
    if rgb.len() < n * 3 {
        return Err(corrupt(Format::Jpeg, "short pixel data"));
    }
    let scale = w as f32 / sw as f32;
    let mut photo = Photo::from_raster(
        Raster {
            width: sw,
            height: sh,
            rgb,
        },
        orientation,
    );
    photo.scale = scale;
    photo.original = if orientation.transposes() {
        (h, w)
    } else {
        (w, h)
    };
    photo.format = Format::Jpeg;
    Ok(photo)
}

fn decode_png(bytes: &[u8], limits: &Limits) -> Result<Photo, ImageError> {
    let mut d = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            bytes: limits.max_decode_bytes as usize,
        },
    );
    d.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    // read_info parses IHDR (and chunks up to the first IDAT) only.
    let mut reader = d.read_info().map_err(|e| match e {
        png::DecodingError::LimitsExceeded => {
            ImageError::TooLarge("PNG needs too much memory to decode".into())
        }
        e => corrupt(Format::Png, e),
    })?;
    let (w, h) = (reader.info().width, reader.info().height);
    check_dimensions(w, h, limits)?;
    let (color, depth) = reader.output_color_type();
    check_budget(
        Format::Png,
        decode_budget(
            Format::Png,
            w,
            h,
            BudgetDetail {
                components: color.samples() as u64,
                sixteen_bit: reader.info().bit_depth == png::BitDepth::Sixteen
                    || depth == png::BitDepth::Sixteen,
                ..BudgetDetail::default()
            },
        ),
        limits,
    )?;
    let orientation = reader
        .info()
        .exif_metadata
        .as_deref()
        .map_or(Orientation::NORMAL, Orientation::from_exif);
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| ImageError::TooLarge("PNG output size overflows".into()))?;
    let mut buf = vec![0u8; size];
    let out = reader
        .next_frame(&mut buf)
        .map_err(|e| corrupt(Format::Png, e))?;
    buf.truncate(out.buffer_size());
    let rgb = to_rgb(
        &buf,
        out.color_type.samples(),
        out.width,
        out.height,
        out.line_size,
    );
    Ok(Photo::from_raster(
        Raster {
            width: out.width,
            height: out.height,
            rgb,
        },
        orientation,
    ))
    .map(|mut p| {
        p.format = Format::Png;
        p
    })
}

fn decode_webp(bytes: &[u8], limits: &Limits) -> Result<Photo, ImageError> {
    let mut d =
        image_webp::WebPDecoder::new(Cursor::new(bytes)).map_err(|e| corrupt(Format::Webp, e))?;
    let (w, h) = d.dimensions();
    check_dimensions(w, h, limits)?;
    check_budget(
        Format::Webp,
        decode_budget(Format::Webp, w, h, BudgetDetail::default()),
        limits,
    )?;
    d.set_memory_limit(limits.max_decode_bytes as usize);
    let orientation = d
        .exif_metadata()
        .ok()
        .flatten()
        .map_or(Orientation::NORMAL, |e| Orientation::from_exif(&e));
    let size = d
        .output_buffer_size()
        .ok_or_else(|| ImageError::TooLarge("WebP output size overflows".into()))?;
    let mut buf = vec![0u8; size];
    d.read_image(&mut buf)
        .map_err(|e| corrupt(Format::Webp, e))?;
    let samples = if d.has_alpha() { 4 } else { 3 };
    let rgb = to_rgb(&buf, samples, w, h, w as usize * samples);
    let mut p = Photo::from_raster(
        Raster {
            width: w,
            height: h,
            rgb,
        },
        orientation,
    );
    p.format = Format::Webp;
    Ok(p)
}

/// Gray, gray+alpha, RGB or RGBA rows to packed RGB (alpha dropped).
fn to_rgb(buf: &[u8], samples: usize, w: u32, h: u32, line: usize) -> Vec<u8> {
    let (w, h) = (w as usize, h as usize);
    if samples == 3 && line == w * 3 {
        return buf[..w * h * 3].to_vec();
    }
    let mut rgb = Vec::with_capacity(w * h * 3);
    for row in buf.chunks(line).take(h) {
        for px in row.chunks_exact(samples).take(w) {
            match samples {
                1 | 2 => rgb.extend_from_slice(&[px[0], px[0], px[0]]),
                _ => rgb.extend_from_slice(&px[..3]),
            }
        }
    }
    rgb.resize(w * h * 3, 0);
    rgb
}

/// Hand-made inputs for hostile-input tests (here, in `tests/` and in the
/// harness): one implementation of the PNG framing they need.
#[doc(hidden)]
pub mod testing {
    /// A PNG header claiming `w` x `h` pixels of `color` (PNG colour type:
    /// 2 RGB, 6 RGBA; 8 bits) followed by an IDAT chunk holding `idat`:
    /// enough for a decoder to read the header, never a whole image.
    pub fn png_claiming(w: u32, h: u32, color: u8, idat: &[u8]) -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let chunk = |png: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
            let mut body = kind.to_vec();
            body.extend_from_slice(data);
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            png.extend_from_slice(&body);
            png.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        };
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, color, 0, 0, 0]);
        chunk(&mut png, b"IHDR", &ihdr);
        chunk(&mut png, b"IDAT", idat);
        png
    }
}

#[cfg(test)]
mod tests;
