//! Frames like a given one ("more like this").
//!
//! By meaning first: the frame's own stored embedding is the query, its
//! nearest frames by text similarity are the candidates (four times as many
//! as asked), and each gets a small bonus for what a shopper sees at a
//! glance: the same shape (+0.10), the same material (+0.05), a price
//! within a quarter of it (+0.05), and popularity (+0.02 at most). A frame
//! without an embedding (not computed yet, or no model) is compared by those
//! attributes alone, over every frame.
//!
//! Never the frame itself or another listing of the same model (same brand
//! and model name, e.g. a colour sold as its own product); in stock unless
//! asked; the filter holds exactly.

use crate::rank::Filter;
use crate::snapshot::Catalog;

/// Most frames one call returns.
pub const MAX_LIMIT: usize = 50;
/// Frames returned when the caller names no number.
pub const DEFAULT_LIMIT: usize = 10;

/// One similar frame: its row, its score, and its text similarity (0 when
/// compared by attributes alone).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similar {
    /// Row in the snapshot.
    pub row: usize,
    /// Score (similarity plus the attribute bonus), higher is closer.
    pub score: f32,
    /// Text similarity to the frame.
    pub similarity: f32,
}

/// Up to `limit` frames like row `of`, best first (ties by row).
pub fn similar(
    catalog: &Catalog,
    of: usize,
    filter: &Filter,
    include_out_of_stock: bool,
    limit: usize,
) -> Vec<Similar> {
    let x = &catalog.features;
    let me = &catalog.frames[of];
    let same_model = |j: usize| {
        let f = &catalog.frames[j];
        !me.model.trim().is_empty()
            && f.brand.eq_ignore_ascii_case(&me.brand)
            && f.model.trim().eq_ignore_ascii_case(me.model.trim())
    };
    let pass = |j: usize| {
        j != of
            && (include_out_of_stock || x.in_stock[j])
            && !same_model(j)
            && filter.passes(catalog, j)
    };
    let price = x.price_minor[of] as f64;
    let bonus = |j: usize| {
        let mut b = 0.0;
        if x.shape[j] == x.shape[of] {
            b += 0.10;
        }
        if x.material[j] == x.material[of] {
            b += 0.05;
        }
        if price > 0.0 && (x.price_minor[j] as f64 - price).abs() <= price * 0.25 {
            b += 0.05;
        }
        b + 0.02 * x.popularity[j]
    };
    let mut out: Vec<Similar> = match x.vectors.query_of(of) {
        Some(q) => x
            .vectors
            .nearest(&q, limit.saturating_mul(4), pass)
            .into_iter()
            .map(|(row, s)| Similar {
                row,
                score: s + bonus(row),
                similarity: s,
            })
            .collect(),
        None => (0..catalog.frames.len())
            .filter(|&j| pass(j))
            .map(|row| Similar {
                row,
                score: bonus(row),
                similarity: 0.0,
            })
            .collect(),
    };
    out.sort_unstable_by(|a, b| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row)));
    out.truncate(limit);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use discovery_catalog::demo_catalog;

    #[test]
    fn by_attributes_without_embeddings_never_itself_nor_its_model_and_in_stock() {
        let mut frames = demo_catalog(200);
        // Another listing of frame 0's model, and one out of stock.
        let mut twin = frames[0].clone();
        twin.id = "twin".into();
        frames.push(twin);
        let c = Catalog::new(frames, 1);
        let of = c.by_id["frm-00000"] as usize;
        let any = Filter::compile(&c, None).unwrap();
        let got = similar(&c, of, &any, false, 10);
        assert_eq!(got.len(), 10);
        for s in &got {
            assert_ne!(s.row, of);
            assert_ne!(c.frames[s.row].id, "twin");
            assert!(c.features.in_stock[s.row]);
            assert_eq!(s.similarity, 0.0);
        }
        // The closest by attributes share its shape.
        assert_eq!(c.frames[got[0].row].shape, c.frames[of].shape);
        assert!(got.windows(2).all(|w| w[0].score >= w[1].score));
    }
}
