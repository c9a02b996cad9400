//! Virtual try-on placement: where a frame's front image goes on the
//! analysed photo, so a frontend overlays product images without doing
//! geometry. Pure geometry on the analysis (iris centres, scale, nose
//! bridge) and the frame's printed size; no tonic, no store.
//!
//! - Centre: the middle of the frame's bridge sits between the pupils,
//!   moved along the face's vertical axis by where the bridge rests on the
//!   nose: a bridge wider than the nose bridge sits lower, a narrower one
//!   higher, by [`BRIDGE_DROP`] mm per mm of difference (the nose's sides
//!   open at about 53 degrees near the bridge), at most [`MAX_DROP_MM`].
//! - Width: the frame's total width at the photo's scale (mm per pixel from
//!   the iris diameter).
//! - Rotation: the head's roll, the angle of the line between the pupils
//!   (clockwise positive, the image's y axis pointing down).

/// Millimetres a frame sits lower per millimetre its bridge is wider than
/// the nose bridge.
pub const BRIDGE_DROP: f32 = 0.5;
/// Largest vertical adjustment, millimetres.
pub const MAX_DROP_MM: f32 = 6.0;

/// What the analysis says about where glasses go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eyes {
    /// Subject's right iris centre (image left), pixels.
    pub right: (f32, f32),
    /// Subject's left iris centre, pixels.
    pub left: (f32, f32),
    /// Millimetres per pixel at the face (> 0).
    pub mm_per_px: f32,
    /// Nose bridge width, millimetres; 0 when unknown (no adjustment).
    pub nose_bridge_mm: f32,
    /// Face width, millimetres; 0 when unknown.
    pub face_width_mm: f32,
}

/// A frame's printed size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameSize {
    /// Total width of the front, millimetres.
    pub total_width_mm: f32,
    /// Bridge width, millimetres.
    pub bridge_mm: f32,
}

/// Where to draw a frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Centre of the front (middle of the bridge), pixels.
    pub center: (f32, f32),
    /// Width to draw the front at, pixels.
    pub width_px: f32,
    /// Clockwise rotation, degrees.
    pub rotation_deg: f32,
    /// Pixels per millimetre.
    pub px_per_mm: f32,
    /// Frame width minus face width, millimetres (0 when the face width is
    /// unknown).
    pub width_difference_mm: f32,
}

/// The placement of `frame` on the face `eyes` describes.
pub fn place(eyes: &Eyes, frame: &FrameSize) -> Placement {
    let px_per_mm = 1.0 / eyes.mm_per_px;
    let (rx, ry) = eyes.right;
    let (lx, ly) = eyes.left;
    let mid = ((rx + lx) / 2.0, (ry + ly) / 2.0);
    let angle = (ly - ry).atan2(lx - rx);
    let drop_mm = if eyes.nose_bridge_mm > 0.0 && frame.bridge_mm > 0.0 {
        ((frame.bridge_mm - eyes.nose_bridge_mm) * BRIDGE_DROP).clamp(-MAX_DROP_MM, MAX_DROP_MM)
    } else {
        0.0
    };
    // The face's "down" in the image, perpendicular to the eye line.
    let down = (-angle.sin(), angle.cos());
    let drop_px = drop_mm * px_per_mm;
    Placement {
        center: (mid.0 + down.0 * drop_px, mid.1 + down.1 * drop_px),
        width_px: frame.total_width_mm * px_per_mm,
        rotation_deg: angle.to_degrees(),
        px_per_mm,
        width_difference_mm: if eyes.face_width_mm > 0.0 {
            frame.total_width_mm - eyes.face_width_mm
        } else {
            0.0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eyes(right: (f32, f32), left: (f32, f32)) -> Eyes {
        Eyes {
            right,
            left,
            mm_per_px: 0.25,
            nose_bridge_mm: 18.0,
            face_width_mm: 135.0,
        }
    }

    #[test]
    fn a_level_face_centres_the_frame_between_the_pupils_at_scale() {
        let p = place(
            &eyes((100.0, 200.0), (352.0, 200.0)),
            &FrameSize {
                total_width_mm: 140.0,
                bridge_mm: 18.0,
            },
        );
        assert_eq!(p.center, (226.0, 200.0));
        assert_eq!(p.width_px, 560.0);
        assert_eq!(p.rotation_deg, 0.0);
        assert_eq!(p.px_per_mm, 4.0);
        assert_eq!(p.width_difference_mm, 5.0);
    }

    #[test]
    fn a_wider_bridge_sits_lower_and_a_narrower_one_higher_along_the_face() {
        let level = eyes((100.0, 200.0), (352.0, 200.0));
        let wide = place(
            &level,
            &FrameSize {
                total_width_mm: 140.0,
                bridge_mm: 22.0,
            },
        );
        let narrow = place(
            &level,
            &FrameSize {
                total_width_mm: 140.0,
                bridge_mm: 14.0,
            },
        );
        // 4 mm wider: 2 mm lower, 8 px at 4 px/mm.
        assert!((wide.center.1 - 208.0).abs() < 1e-3, "{wide:?}");
        assert!((narrow.center.1 - 192.0).abs() < 1e-3, "{narrow:?}");
        let huge = place(
            &level,
            &FrameSize {
                total_width_mm: 140.0,
                bridge_mm: 60.0,
            },
        );
        assert!((huge.center.1 - (200.0 + MAX_DROP_MM * 4.0)).abs() < 1e-3);
        // Unknown nose bridge: no adjustment.
        let unknown = place(
            &Eyes {
                nose_bridge_mm: 0.0,
                ..level
            },
            &FrameSize {
                total_width_mm: 140.0,
                bridge_mm: 22.0,
            },
        );
        assert_eq!(unknown.center, (226.0, 200.0));
    }

    #[test]
    fn a_tilted_head_rotates_the_frame_and_its_drop() {
        // The left eye 30 px lower over 252 px: clockwise roll.
        let tilted = eyes((100.0, 200.0), (352.0, 230.0));
        let p = place(
            &tilted,
            &FrameSize {
                total_width_mm: 140.0,
                bridge_mm: 22.0,
            },
        );
        let expected = (30.0f32).atan2(252.0).to_degrees();
        assert!((p.rotation_deg - expected).abs() < 1e-3);
        // The drop follows the face's axis: a little to the image left.
        assert!(p.center.0 < 226.0 && p.center.1 > 215.0, "{p:?}");
    }
}
