//! Property tests of the image decoders (a fixed budget of cases, inside
//! `make test`): behind each format's magic, arbitrary bytes never panic
//! the decoder and never decode to a photo over the limits; and for any
//! dimensions a header claims, the decode budget refuses from the header
//! exactly the images whose estimated need is over it.

use discovery_face_analysis::image::{
    BudgetDetail, Format, ImageError, Limits, Photo, decode_budget,
};
use proptest::prelude::*;

const MAGICS: [&[u8]; 3] = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBP"];

/// A PNG whose IHDR claims `w` x `h` RGB (8-bit), with an empty IDAT.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    discovery_face_analysis::image::testing::png_claiming(w, h, 2, &[])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn bytes_behind_a_magic_never_panic_or_exceed_the_limits(
        magic in 0usize..3,
        tail in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        let limits = Limits::default();
        let mut bytes = MAGICS[magic].to_vec();
        bytes.extend_from_slice(&tail);
        let r = std::panic::catch_unwind(|| Photo::decode(&bytes, &limits));
        prop_assert!(r.is_ok(), "the decoder panicked");
        if let Ok(Ok(photo)) = r {
            let (w, h) = photo.size();
            prop_assert!(w as u64 * h as u64 <= limits.max_pixels);
        }
    }

    #[test]
    fn a_png_header_is_refused_exactly_when_over_the_pixel_cap_or_the_budget(
        w in 1u32..20_000,
        h in 1u32..20_000,
    ) {
        let limits = Limits::default();
        let need = decode_budget(
            Format::Png,
            w,
            h,
            BudgetDetail { components: 3, ..BudgetDetail::default() },
        );
        let over = w > limits.max_side
            || h > limits.max_side
            || w as u64 * h as u64 > limits.max_pixels
            || need > limits.max_decode_bytes;
        match Photo::decode(&png_header(w, h), &limits) {
            Err(ImageError::TooLarge(_)) => prop_assert!(over, "{w}x{h} refused under the limits"),
            Err(ImageError::Corrupt { .. }) => prop_assert!(!over, "{w}x{h} reached the decoder over the limits"),
            other => prop_assert!(false, "{w}x{h}: {other:?}"),
        }
    }
}
