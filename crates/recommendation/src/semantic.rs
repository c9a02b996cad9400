//! Semantic and hybrid retrieval over the snapshot.
//!
//! Semantic: the query's embedding against every frame's stored one (the
//! snapshot's quantised matrix), exactly, among the frames the filter
//! passes. Hybrid: the lexical list (every query word matches, typo
//! tolerant: [`crate::search::lexical`]) and the semantic list fused by
//! reciprocal rank (Cormack et al. 2009: `Σ 1 / (k + rank)`, k = 60), which
//! needs no score calibration between the two: a frame high in either list
//! ranks high, one in both ranks highest. Each hit says why it matched
//! ([`Why`]: its rank in each list and its similarity).
//!
//! Exact search is one pass over 388 bytes per frame (the integer dot
//! product in the CPU's widest SIMD); its cost per catalogue size is in
//! `docs/benchmarks.md`.

use discovery_embed::quant::Query;

use crate::rank::Filter;
use crate::search::Hit;
use crate::snapshot::Catalog;

/// Semantic candidates taken into the fusion.
pub const VECTOR_CANDIDATES: usize = 200;
/// Lexical candidates taken into the fusion.
pub const LEXICAL_CANDIDATES: usize = 200;
/// The reciprocal-rank constant.
pub const RRF_K: f32 = 60.0;

/// Why a hybrid hit matched.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Why {
    /// Its rank (0-based) in the lexical list, if in it.
    pub lexical_rank: Option<usize>,
    /// Its rank in the semantic list, if in it.
    pub semantic_rank: Option<usize>,
    /// Its similarity to the query (cosine, about ±0.01), 0 without a vector.
    pub similarity: f32,
}

/// The `k` frames most similar to the query embedding among those the
/// filter passes, best first.
pub fn semantic(catalog: &Catalog, query: &[f32], filter: &Filter, k: usize) -> Vec<Hit> {
    semantic_where(catalog, query, k, |i| filter.passes(catalog, i))
}

/// [`semantic`] among the rows `pass` accepts.
pub fn semantic_where(
    catalog: &Catalog,
    query: &[f32],
    k: usize,
    pass: impl Fn(usize) -> bool,
) -> Vec<Hit> {
    let q = Query::new(query);
    catalog.features.vectors.nearest(&q, k, pass)
}

/// The two lists fused by reciprocal rank, best first (ties by row), each
/// hit with why it matched. `lexical` and `semantic` are best first.
pub fn fuse(lexical: &[Hit], semantic: &[Hit]) -> Vec<(Hit, Why)> {
    let mut by_row: std::collections::HashMap<usize, (f32, Why)> =
        std::collections::HashMap::with_capacity(lexical.len() + semantic.len());
    for (rank, &(row, _)) in lexical.iter().take(LEXICAL_CANDIDATES).enumerate() {
        let e = by_row.entry(row).or_default();
        e.0 += 1.0 / (RRF_K + rank as f32 + 1.0);
        e.1.lexical_rank = Some(rank);
    }
    for (rank, &(row, similarity)) in semantic.iter().take(VECTOR_CANDIDATES).enumerate() {
        let e = by_row.entry(row).or_default();
        e.0 += 1.0 / (RRF_K + rank as f32 + 1.0);
        e.1.semantic_rank = Some(rank);
        e.1.similarity = similarity;
    }
    let mut out: Vec<(Hit, Why)> = by_row
        .into_iter()
        .map(|(row, (score, why))| ((row, score), why))
        .collect();
    out.sort_unstable_by(|a, b| b.0.1.total_cmp(&a.0.1).then(a.0.0.cmp(&b.0.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_in_both_lists_outranks_one_in_either() {
        let lexical = vec![(1, 9.0), (2, 8.0), (3, 7.0)];
        let semantic = vec![(4, 0.9), (3, 0.8), (5, 0.7)];
        let fused = fuse(&lexical, &semantic);
        let rows: Vec<usize> = fused.iter().map(|((r, _), _)| *r).collect();
        assert_eq!(rows[0], 3, "in both lists");
        assert_eq!(&rows[1..3], &[1, 4], "the two firsts, tie by row");
        let why = fused[0].1;
        assert_eq!(why.lexical_rank, Some(2));
        assert_eq!(why.semantic_rank, Some(1));
        assert_eq!(why.similarity, 0.8);
        assert!(fuse(&[], &[]).is_empty());
    }
}
