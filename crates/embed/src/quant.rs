//! Embeddings as bytes: each vector quantised to `i8` with one scale
//! (`v[i] ≈ code[i] × scale`, the scale = max |v[i]| / 127), 384 bytes plus
//! 4 instead of 1,536, and their exact nearest-neighbour scan.
//!
//! A score is `dot(codes_q, codes_p) × scale_q × scale_p`: the integer dot
//! product runs in the widest SIMD the CPU has, chosen at run time
//! (`multiversion`: AVX-512BW, AVX2 or NEON, else the portable loop), so
//! one binary is fast everywhere without `-C target-cpu`. The scan is
//! memory-bound: 100,000 products are 38 MB of codes per query. The
//! quantisation error is measured against float32 in
//! `docs/benchmarks.md` (recall@k of the quantised scan).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use multiversion::multiversion;

/// Quantises `v` into `out` (cleared first); returns the scale.
pub fn quantise(v: &[f32], out: &mut Vec<i8>) -> f32 {
    out.clear();
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || v.iter().any(|x| !x.is_finite()) {
        out.resize(v.len(), 0);
        return 0.0;
    }
    let scale = max / 127.0;
    out.extend(
        v.iter()
            .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8),
    );
    scale
}

/// The integer dot product of two code vectors (equal lengths; at most
/// 2^17 elements, so the sum fits in an `i32`).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "aarch64+neon"))]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(i16::from(x) * i16::from(y)))
        .sum()
}

/// Quantised vectors of one width, row after row.
#[derive(Debug, Clone, Default)]
pub struct Matrix {
    dim: usize,
    codes: Vec<i8>,
    /// One per row; 0 for a row without a vector (it scores 0).
    scales: Vec<f32>,
    scratch: Vec<i8>,
}

/// A query ready to score against a [`Matrix`].
#[derive(Debug, Clone)]
pub struct Query {
    codes: Vec<i8>,
    scale: f32,
}

impl Query {
    /// Quantises a query vector.
    pub fn new(v: &[f32]) -> Self {
        let mut codes = Vec::with_capacity(v.len());
        let scale = quantise(v, &mut codes);
        Self { codes, scale }
    }
}

impl Matrix {
    /// An empty matrix of vectors `dim` wide.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            ..Self::default()
        }
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.scales.len()
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.scales.is_empty()
    }

    /// Bytes held (codes and scales).
    pub fn bytes(&self) -> usize {
        self.codes.capacity() + self.scales.capacity() * 4
    }

    /// Room for `rows` more rows, exactly (a matrix built to a known size
    /// holds `dim + 4` bytes a row, not what doubling growth leaves).
    pub fn reserve(&mut self, rows: usize) {
        self.codes.reserve_exact(rows.saturating_mul(self.dim));
        self.scales.reserve_exact(rows);
    }

    /// Appends a row: the vector, or none (a row that scores 0). A vector
    /// of another width counts as none.
    pub fn push(&mut self, v: Option<&[f32]>) {
        match v.filter(|v| v.len() == self.dim) {
            Some(v) => {
                let mut scratch = std::mem::take(&mut self.scratch);
                let scale = quantise(v, &mut scratch);
                self.codes.extend_from_slice(&scratch);
                self.scales.push(scale);
                self.scratch = scratch;
            }
            None => {
                self.codes.resize(self.codes.len() + self.dim, 0);
                self.scales.push(0.0);
            }
        }
    }

    /// Sets row `i` to codes already quantised (as stored), or to no
    /// vector (`None`, or codes of another width, or a bad scale).
    pub fn set_codes(&mut self, i: usize, codes: Option<(&[u8], f32)>) {
        let row = &mut self.codes[i * self.dim..(i + 1) * self.dim];
        match codes.filter(|(c, s)| c.len() == row.len() && s.is_finite() && *s > 0.0) {
            Some((c, scale)) => {
                for (o, &b) in row.iter_mut().zip(c) {
                    *o = b as i8;
                }
                self.scales[i] = scale;
            }
            None => {
                row.fill(0);
                self.scales[i] = 0.0;
            }
        }
    }

    /// The stored form of a vector: its codes as bytes and its scale.
    pub fn stored(v: &[f32]) -> (Vec<u8>, f32) {
        let mut codes = Vec::with_capacity(v.len());
        let scale = quantise(v, &mut codes);
        (codes.into_iter().map(|c| c as u8).collect(), scale)
    }

    /// Does row `i` hold a vector?
    pub fn has(&self, i: usize) -> bool {
        self.scales.get(i).is_some_and(|s| *s > 0.0)
    }

    /// Row `i` as a query (its codes as they are: "more like this"), if it
    /// holds a vector.
    pub fn query_of(&self, i: usize) -> Option<Query> {
        self.has(i).then(|| Query {
            codes: self.codes[i * self.dim..(i + 1) * self.dim].to_vec(),
            scale: self.scales[i],
        })
    }

    /// The similarity of row `i` to the query (cosine for normalised
    /// vectors, to about ±0.01).
    pub fn score(&self, q: &Query, i: usize) -> f32 {
        let row = &self.codes[i * self.dim..(i + 1) * self.dim];
        dot_i8(&q.codes, row) as f32 * q.scale * self.scales[i]
    }

    /// The `k` rows most similar to the query among those `pass` accepts,
    /// best first (ties by row), with their scores.
    pub fn nearest(&self, q: &Query, k: usize, pass: impl Fn(usize) -> bool) -> Vec<(usize, f32)> {
        if k == 0 || q.codes.len() != self.dim {
            return Vec::new();
        }
        // A min-heap of the best k so far, keyed by (score, -row).
        let mut heap: BinaryHeap<Reverse<(Ordered, Reverse<usize>)>> =
            BinaryHeap::with_capacity(k + 1);
        for i in 0..self.len() {
            if self.scales[i] == 0.0 || !pass(i) {
                continue;
            }
            let s = self.score(q, i);
            let item = Reverse((Ordered(s), Reverse(i)));
            if heap.len() < k {
                heap.push(item);
            } else if heap.peek().is_some_and(|worst| item < *worst) {
                heap.pop();
                heap.push(item);
            }
        }
        let mut out: Vec<(usize, f32)> = heap
            .into_iter()
            .map(|Reverse((Ordered(s), Reverse(i)))| (i, s))
            .collect();
        out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }
}

/// A total order on scores (no NaN: codes and scales are finite).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ordered(f32);

impl Eq for Ordered {}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    /// Deterministic pseudo-random unit vectors.
    fn vectors(n: usize, dim: usize) -> Vec<Vec<f32>> {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        (0..n)
            .map(|_| {
                unit(
                    (0..dim)
                        .map(|_| {
                            s ^= s << 13;
                            s ^= s >> 7;
                            s ^= s << 17;
                            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                        })
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_matrix_built_to_its_size_holds_dim_plus_four_bytes_a_row() {
        let vs = vectors(1000, 384);
        let mut m = Matrix::new(384);
        m.reserve(vs.len());
        for v in &vs {
            m.push(Some(v));
        }
        assert_eq!(m.bytes(), 1000 * (384 + 4));
    }

    #[test]
    fn quantised_scores_are_close_to_float_cosines() {
        let vs = vectors(200, 384);
        let mut m = Matrix::new(384);
        for v in &vs {
            m.push(Some(v));
        }
        let q = Query::new(&vs[0]);
        for (i, v) in vs.iter().enumerate() {
            let exact: f32 = vs[0].iter().zip(v).map(|(a, b)| a * b).sum();
            let got = m.score(&q, i);
            assert!((got - exact).abs() < 0.01, "row {i}: {got} vs {exact}");
        }
    }

    #[test]
    fn nearest_is_the_exact_top_k_with_filters_and_gaps() {
        let vs = vectors(300, 64);
        let mut m = Matrix::new(64);
        for (i, v) in vs.iter().enumerate() {
            // Every tenth row has no vector; a wrong width counts as none.
            if i % 10 == 3 {
                m.push(None);
            } else if i % 10 == 7 {
                m.push(Some(&v[..32]));
            } else {
                m.push(Some(v));
            }
        }
        assert!(!m.has(3) && !m.has(7) && m.has(0));
        let q = Query::new(&vs[42]);
        let got = m.nearest(&q, 10, |i| i % 2 == 0);
        let mut all: Vec<(usize, f32)> = (0..m.len())
            .filter(|&i| i % 2 == 0 && m.has(i))
            .map(|i| (i, m.score(&q, i)))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(10);
        assert_eq!(got, all);
        assert_eq!(got[0].0, 42, "a vector is nearest to itself");
        assert!(m.nearest(&q, 0, |_| true).is_empty());
        assert!(m.nearest(&Query::new(&[1.0; 3]), 5, |_| true).is_empty());
    }

    #[test]
    fn stored_codes_set_the_same_row_as_the_vector() {
        let vs = vectors(3, 16);
        let mut a = Matrix::new(16);
        let mut b = Matrix::new(16);
        for v in &vs {
            a.push(Some(v));
            b.push(None);
        }
        for (i, v) in vs.iter().enumerate() {
            let (codes, scale) = Matrix::stored(v);
            b.set_codes(i, Some((&codes, scale)));
        }
        let q = Query::new(&vs[1]);
        for i in 0..3 {
            assert_eq!(a.score(&q, i), b.score(&q, i));
        }
        b.set_codes(1, Some((&[1, 2, 3], 1.0)));
        assert!(!b.has(1), "a wrong width is no vector");
        b.set_codes(2, None);
        assert!(!b.has(2) && b.has(0));
    }

    #[test]
    fn zero_and_broken_vectors_quantise_to_zero() {
        let mut out = Vec::new();
        assert_eq!(quantise(&[0.0; 4], &mut out), 0.0);
        assert_eq!(out, vec![0; 4]);
        assert_eq!(quantise(&[f32::NAN, 1.0], &mut out), 0.0);
        assert_eq!(dot_i8(&[127, -127], &[127, 127]), 0);
        assert_eq!(dot_i8(&[-128, -128], &[-128, -128]), 32_768);
    }
}
