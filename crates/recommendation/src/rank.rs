//! Ranking and search over the snapshot.
//!
//! Score (each part in [0, 1]):
//! `0.40 face_shape + 0.30 fit + 0.15 preference + 0.15 popularity`.
//! - face_shape: the frame's compatibility with the shopper's face shape
//!   (0.5 when no shape is known);
//! - fit: how close the frame's total width is to the measured face width,
//!   `exp(-(Δ/8 mm)²)`, and bridge vs nose bridge when known (0.5 unknown);
//! - preference: share of the shopper's soft preferences the frame matches;
//! - popularity: the catalogue's popularity score.
//!
//! Ties break by product id, so the same input always gives the same order.
//! The recommendation issue extends this (time decay, collaborative signal,
//! diversity); the formula here is documented in docs/architecture.md.

use discovery_proto::v1 as pb;

use crate::catalog::{Frame, face_shape_name, frame_shape_name};
use crate::snapshot::Catalog;

/// Page size when none is given.
pub const DEFAULT_PAGE: usize = 20;
/// Largest page size accepted.
pub const MAX_PAGE: usize = 100;

/// Bad ranking input.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RankError {
    /// Page size over the limit.
    #[error("page.page_size: {0} is over the maximum of {MAX_PAGE}")]
    PageTooLarge(u32),
    /// Min price above max price.
    #[error("filter: min_price_minor ({0}) is greater than max_price_minor ({1})")]
    PriceRange(i64, i64),
    /// Negative price.
    #[error("filter: prices cannot be negative ({0})")]
    NegativePrice(i64),
    /// Implausible face width.
    #[error("face.face_width_mm: {0} is outside the plausible 90-200 mm")]
    FaceWidth(f32),
    /// Unreadable page token.
    #[error("page.page_token: {0:?} is not a token returned by this API")]
    PageToken(String),
}

/// Validates and normalises a page request into (offset, size).
pub fn page(p: Option<&pb::PageRequest>) -> Result<(usize, usize), RankError> {
    let Some(p) = p else {
        return Ok((0, DEFAULT_PAGE));
    };
    if p.page_size as usize > MAX_PAGE {
        return Err(RankError::PageTooLarge(p.page_size));
    }
    let size = if p.page_size == 0 {
        DEFAULT_PAGE
    } else {
        p.page_size as usize
    };
    let offset = if p.page_token.is_empty() {
        0
    } else {
        p.page_token
            .strip_prefix("o:")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| RankError::PageToken(p.page_token.clone()))?
    };
    Ok((offset, size))
}

/// Whether a frame passes the hard filter.
pub fn passes(f: &Frame, filter: Option<&pb::ProductFilter>) -> bool {
    let Some(flt) = filter else { return true };
    let price_minor = (f.price * 100.0).round() as i64;
    if flt.min_price_minor.is_some_and(|m| price_minor < m) {
        return false;
    }
    if flt.max_price_minor.is_some_and(|m| price_minor > m) {
        return false;
    }
    if flt.in_stock_only && !f.inventory.is_in_stock {
        return false;
    }
    if !flt.shapes.is_empty()
        && !flt
            .shapes
            .iter()
            .any(|s| pb::FrameShape::try_from(*s).is_ok_and(|s| frame_shape_name(s) == f.shape))
    {
        return false;
    }
    if !flt.materials.is_empty()
        && !flt.materials.iter().any(|m| {
            pb::FrameMaterial::try_from(*m).is_ok_and(|m| {
                m.as_str_name()
                    .trim_start_matches("FRAME_MATERIAL_")
                    .eq_ignore_ascii_case(&f.material)
            })
        })
    {
        return false;
    }
    if !flt.brands.is_empty() && !flt.brands.iter().any(|b| b.eq_ignore_ascii_case(&f.brand)) {
        return false;
    }
    true
}

/// Validates a filter.
pub fn check_filter(filter: Option<&pb::ProductFilter>) -> Result<(), RankError> {
    let Some(f) = filter else { return Ok(()) };
    for p in [f.min_price_minor, f.max_price_minor].into_iter().flatten() {
        if p < 0 {
            return Err(RankError::NegativePrice(p));
        }
    }
    if let (Some(a), Some(b)) = (f.min_price_minor, f.max_price_minor)
        && a > b
    {
        return Err(RankError::PriceRange(a, b));
    }
    Ok(())
}

/// One scored frame.
#[derive(Debug, Clone)]
pub struct Scored<'a> {
    /// The frame.
    pub frame: &'a Frame,
    /// Final score.
    pub score: f32,
    /// Components.
    pub breakdown: pb::ScoreBreakdown,
    /// Reasons.
    pub reasons: Vec<String>,
}

/// Ranks the catalogue for a request; returns the requested page and the total.
pub fn recommend<'a>(
    catalog: &'a Catalog,
    req: &pb::RecommendRequest,
) -> Result<(Vec<Scored<'a>>, usize), RankError> {
    let (offset, size) = page(req.page.as_ref())?;
    check_filter(req.filter.as_ref())?;
    let face = req.face.clone().unwrap_or_default();
    if face.face_width_mm != 0.0 && !(90.0..=200.0).contains(&face.face_width_mm) {
        return Err(RankError::FaceWidth(face.face_width_mm));
    }
    let shape = pb::FaceShape::try_from(face.face_shape)
        .map(face_shape_name)
        .unwrap_or("");
    let prefs = req.preferences.clone().unwrap_or_default();
    let mut scored: Vec<Scored<'a>> = catalog
        .frames
        .iter()
        .filter(|f| passes(f, req.filter.as_ref()))
        .map(|f| score(f, shape, &face, &prefs))
        .collect();
    let total = scored.len();
    scored.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.frame.id.cmp(&b.frame.id))
    });
    Ok((scored.into_iter().skip(offset).take(size).collect(), total))
}

fn score<'a>(
    f: &'a Frame,
    shape: &str,
    face: &pb::FaceContext,
    prefs: &pb::Preferences,
) -> Scored<'a> {
    let mut reasons = Vec::new();
    let shape_score = if shape.is_empty() {
        0.5
    } else {
        let c = f.compat(shape);
        if c >= 0.75 {
            reasons.push(format!("suits {shape} faces"));
        }
        c
    };
    let mut fit = 0.5;
    if face.face_width_mm > 0.0 {
        let d = (f.total_width_mm - face.face_width_mm) / 8.0;
        fit = (-d * d).exp();
        if fit > 0.6 {
            reasons.push(format!("fits a {:.0} mm face", face.face_width_mm));
        }
        if face.nose_bridge_width_mm > 0.0 {
            let b = (f.bridge_mm - face.nose_bridge_width_mm) / 4.0;
            fit = 0.8 * fit + 0.2 * (-b * b).exp();
        }
    }
    let mut wanted = 0usize;
    let mut matched = 0usize;
    for k in &prefs.style_keywords {
        wanted += 1;
        if f.ai_enhanced
            .style_keywords
            .iter()
            .any(|s| s.eq_ignore_ascii_case(k))
        {
            matched += 1;
            reasons.push(format!("{k} style"));
        }
    }
    for s in &prefs.shapes {
        wanted += 1;
        if pb::FrameShape::try_from(*s).is_ok_and(|s| frame_shape_name(s) == f.shape) {
            matched += 1;
        }
    }
    for b in &prefs.brands {
        wanted += 1;
        if b.eq_ignore_ascii_case(&f.brand) {
            matched += 1;
        }
    }
    for c in &prefs.colors {
        wanted += 1;
        if f.inventory.variants.iter().any(|v| {
            v.color
                .to_ascii_lowercase()
                .contains(&c.to_ascii_lowercase())
        }) {
            matched += 1;
        }
    }
    let preference = if wanted == 0 {
        0.5
    } else {
        matched as f32 / wanted as f32
    };
    let popularity = f.popularity.clamp(0.0, 1.0);
    if popularity > 0.7 {
        reasons.push("popular right now".into());
    }
    let total = 0.40 * shape_score + 0.30 * fit + 0.15 * preference + 0.15 * popularity;
    Scored {
        frame: f,
        score: total,
        breakdown: pb::ScoreBreakdown {
            face_shape: shape_score,
            fit,
            preference,
            popularity,
            collaborative: 0.0,
        },
        reasons,
    }
}

/// Edit distance, for typo tolerance on short words.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn words(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
}

/// Scores a frame for a text query: each query word matching a word of the
/// name, brand, model or keywords exactly scores 1, within one edit (words of
/// 5+ letters) 0.7. Zero means no match.
pub fn text_score(f: &Frame, query: &str) -> f32 {
    let hay: Vec<String> = words(&f.ai_enhanced.feature_summary)
        .chain(words(&f.brand))
        .chain(
            f.ai_enhanced
                .style_keywords
                .iter()
                .flat_map(|k| words(k).collect::<Vec<_>>()),
        )
        .collect();
    let mut total = 0.0;
    for q in words(query) {
        let best = hay
            .iter()
            .map(|h| {
                if *h == q || (q.len() >= 3 && h.starts_with(&q)) {
                    1.0
                } else if q.len() >= 5 && levenshtein(h, &q) <= 1 {
                    0.7
                } else {
                    0.0
                }
            })
            .fold(0.0f32, f32::max);
        if best == 0.0 {
            return 0.0;
        }
        total += best;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::demo_catalog;

    fn catalog() -> Catalog {
        Catalog::new(demo_catalog(600), 1)
    }

    #[test]
    fn narrow_face_never_gets_wide_frames_first() {
        let c = catalog();
        let req = pb::RecommendRequest {
            face: Some(pb::FaceContext {
                face_shape: pb::FaceShape::Oval as i32,
                face_width_mm: 126.0,
                ..Default::default()
            }),
            ..Default::default()
        };
        let (page, total) = recommend(&c, &req).unwrap();
        assert_eq!(total, 600);
        assert!(
            page.iter().all(|s| s.frame.total_width_mm < 145.0),
            "a wide frame ranked on page one"
        );
        assert!(
            page[0].reasons.iter().any(|r| r.contains("126 mm")),
            "{:?}",
            page[0].reasons
        );
    }

    #[test]
    fn filters_hold_and_results_are_stable() {
        let c = catalog();
        let req = pb::RecommendRequest {
            filter: Some(pb::ProductFilter {
                max_price_minor: Some(15_000),
                in_stock_only: true,
                shapes: vec![pb::FrameShape::Aviator as i32],
                ..Default::default()
            }),
            page: Some(pb::PageRequest {
                page_size: 50,
                page_token: String::new(),
            }),
            ..Default::default()
        };
        let (a, _) = recommend(&c, &req).unwrap();
        assert!(!a.is_empty());
        assert!(a.iter().all(|s| s.frame.price <= 150.0
            && s.frame.inventory.is_in_stock
            && s.frame.shape == "aviator"));
        let (b, _) = recommend(&c, &req).unwrap();
        let ids = |v: &[Scored<'_>]| v.iter().map(|s| s.frame.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
    }

    #[test]
    fn bad_input_is_rejected_with_reasons() {
        let c = catalog();
        let big = pb::RecommendRequest {
            page: Some(pb::PageRequest {
                page_size: 1000,
                page_token: String::new(),
            }),
            ..Default::default()
        };
        assert_eq!(
            recommend(&c, &big).unwrap_err(),
            RankError::PageTooLarge(1000)
        );
        let inverted = pb::RecommendRequest {
            filter: Some(pb::ProductFilter {
                min_price_minor: Some(500),
                max_price_minor: Some(100),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            recommend(&c, &inverted),
            Err(RankError::PriceRange(500, 100))
        ));
    }

    #[test]
    fn search_tolerates_a_typo() {
        let c = catalog();
        let exact = c
            .frames
            .iter()
            .filter(|f| text_score(f, "aviator") > 0.0)
            .count();
        let typo = c
            .frames
            .iter()
            .filter(|f| text_score(f, "aviater") > 0.0)
            .count();
        assert!(exact > 0);
        assert_eq!(exact, typo);
    }
}
