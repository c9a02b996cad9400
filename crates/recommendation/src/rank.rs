//! Ranking over the snapshot.
//!
//! Score, each part in [0, 1]:
//!
//! | part        | weight (with collaborative signal) | what it measures |
//! |-------------|------------------------------------|------------------|
//! | face shape  | 0.40 (0.35) | the frame's compatibility with the face shape; 0.5 unknown |
//! | fit         | 0.30 (0.30) | `exp(-(Δw / 8 mm)²)` of total frame width vs face width; with a nose bridge width, `0.8 fit + 0.2 exp(-(Δb / 4 mm)²)`; 0.5 unknown |
//! | preference  | 0.15 (0.15) | share of the soft preferences (keywords, shapes, colours, brands) matched; 0.5 none given |
//! | popularity  | 0.15 (0.10) | catalogue popularity blended with time-decayed interactions ([`crate::signals`]) |
//! | collaborative | 0 (0.10) | item-item co-occurrence with the user's recent products |
//!
//! Anonymous shoppers and users without history (cold start) get the left
//! column: popularity carries what personal history would.
//!
//! Face and bridge widths are rounded to whole millimetres first (a photo
//! measures them to ±2 mm anyway), so nearby faces share cache entries.
//!
//! **Selection** is a single pass over the column arrays keeping the best
//! candidates in a bounded heap (no sort of the catalogue), then
//! **diversity**: no brand more than [`BRAND_CAP`] times in any
//! [`BRAND_WINDOW`] consecutive results. The diversifier reads candidates in
//! score order and decides each position from what it has read so far, so
//! page two continues page one exactly, whatever the page sizes.
//!
//! Ties break by product id, so the same input always gives the same order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use discovery_proto::v1 as pb;

use crate::snapshot::{Catalog, Features};
use discovery_catalog::{FACE_SHAPES, face_shape_name};

/// Page size when none is given.
pub const DEFAULT_PAGE: usize = 20;
/// Largest page size accepted.
pub const MAX_PAGE: usize = 100;
/// Deepest position reachable by paging (offset + page size).
pub const MAX_DEPTH: usize = 1000;
/// Most entries in one filter or preference list.
pub const MAX_LIST: usize = 50;
/// At most this many results of one brand...
pub const BRAND_CAP: usize = 2;
/// ...in any window of this many consecutive results.
pub const BRAND_WINDOW: usize = 6;
/// Candidates read ahead looking for another brand before giving up.
const LOOKAHEAD: usize = 30;

/// Bad ranking input.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RankError {
    /// Page size over the limit.
    #[error("page.page_size: {0} is over the maximum of {MAX_PAGE}")]
    PageTooLarge(u32),
    /// Paging too deep.
    #[error(
        "page.page_token: results go {MAX_DEPTH} deep at most; narrow the filter instead of paging further"
    )]
    TooDeep,
    /// Min price above max price.
    #[error("filter: min_price_minor ({0}) is greater than max_price_minor ({1})")]
    PriceRange(i64, i64),
    /// Negative price.
    #[error("filter: prices cannot be negative ({0})")]
    NegativePrice(i64),
    /// Implausible face width.
    #[error("face.face_width_mm: {0} is outside the plausible 90-200 mm")]
    FaceWidth(f32),
    /// Implausible nose bridge width.
    #[error("face.nose_bridge_width_mm: {0} is outside the plausible 10-30 mm")]
    NoseWidth(f32),
    /// Unreadable page token.
    #[error("page.page_token: {0:?} is not a token returned by this API")]
    PageToken(String),
    /// Unknown enum value.
    #[error("{0}: {1} is not a known value")]
    UnknownEnum(&'static str, i32),
    /// Too many list entries.
    #[error("{0}: {1} entries is over the maximum of {MAX_LIST}")]
    ListTooLong(&'static str, usize),
    /// Malformed currency.
    #[error("filter.currency: {0:?} is not an ISO 4217 code like \"EUR\"")]
    Currency(String),
    /// A requester id longer than any real one.
    #[error("requester.{0}: {1} bytes is over the maximum of 128")]
    RequesterId(&'static str, usize),
}

/// Requester ids are at most 128 bytes (Recommend, RecordInteraction).
pub fn check_requester(r: &pb::Requester) -> Result<(), RankError> {
    for (field, v) in [("user_id", &r.user_id), ("session_id", &r.session_id)] {
        if v.len() > 128 {
            return Err(RankError::RequesterId(field, v.len()));
        }
    }
    Ok(())
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
    let offset: usize = if p.page_token.is_empty() {
        0
    } else {
        p.page_token
            .strip_prefix("o:")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| RankError::PageToken(p.page_token.clone()))?
    };
    if offset >= MAX_DEPTH {
        return Err(RankError::TooDeep);
    }
    Ok((offset, size.min(MAX_DEPTH - offset)))
}

/// The next-page token after a page, empty at the end or at [`MAX_DEPTH`].
pub fn next_token(offset: usize, returned: usize, total: usize) -> String {
    let next = offset + returned;
    if returned > 0 && next < total && next < MAX_DEPTH {
        format!("o:{next}")
    } else {
        String::new()
    }
}

/// Compiled soft preferences.
#[derive(Debug, Clone, Default)]
struct Prefs {
    wanted: u32,
    styles: u64,
    styles_slow: Vec<String>,
    shapes: u32,
    colors: u64,
    colors_slow: Vec<String>,
    /// Preferred brands as a table indexed by brand id (empty: none).
    brands: Vec<bool>,
}

impl Prefs {
    fn compile(catalog: &Catalog, p: &pb::Preferences) -> Result<Self, RankError> {
        for (name, n) in [
            ("preferences.style_keywords", p.style_keywords.len()),
            ("preferences.colors", p.colors.len()),
            ("preferences.brands", p.brands.len()),
        ] {
            if n > MAX_LIST {
                return Err(RankError::ListTooLong(name, n));
            }
        }
        let mut out = Self {
            shapes: enum_mask("preferences.shapes", &p.shapes, |v| {
                discovery_catalog::Shape::from_code(v).is_some()
            })?,
            ..Default::default()
        };
        out.wanted =
            (p.style_keywords.len() + p.shapes.len() + p.colors.len() + p.brands.len()) as u32;
        for k in &p.style_keywords {
            match catalog.vocabs.styles.get(k.trim()) {
                Some(id) if id < 64 => out.styles |= 1 << id,
                Some(_) => out.styles_slow.push(k.trim().to_lowercase()),
                None => {}
            }
        }
        for c in &p.colors {
            for w in c
                .split(|ch: char| !ch.is_alphanumeric())
                .filter(|w| !w.is_empty())
            {
                match catalog.vocabs.colors.get(w) {
                    Some(id) if id < 64 => out.colors |= 1 << id,
                    Some(_) => out.colors_slow.push(w.to_lowercase()),
                    None => {}
                }
            }
        }
        if !p.brands.is_empty() {
            out.brands = vec![false; catalog.vocabs.brands.len()];
            for id in p
                .brands
                .iter()
                .filter_map(|b| catalog.vocabs.brands.get(b.trim()))
            {
                out.brands[id as usize] = true;
            }
        }
        Ok(out)
    }

    /// Matched preferences of row `i` (a count, at most `wanted`).
    fn matched(&self, catalog: &Catalog, i: usize) -> u32 {
        let mut m = [0];
        self.counts(catalog, i, &mut m);
        m[0]
    }

    /// Matched preferences of rows `start..start + out.len()`, one
    /// branch-free pass per kind of preference.
    fn counts(&self, catalog: &Catalog, start: usize, out: &mut [u32]) {
        let x = &catalog.features;
        let end = start + out.len();
        out.fill(0);
        if self.styles != 0 {
            for (o, s) in out.iter_mut().zip(&x.styles[start..end]) {
                *o += (s & self.styles).count_ones();
            }
        }
        if self.shapes != 0 {
            for (o, s) in out.iter_mut().zip(&x.shape[start..end]) {
                *o += (self.shapes >> *s) & 1;
            }
        }
        if self.colors != 0 {
            for (o, c) in out.iter_mut().zip(&x.colors[start..end]) {
                *o += u32::from(c & self.colors != 0);
            }
        }
        if !self.brands.is_empty() {
            for (o, b) in out.iter_mut().zip(&x.brand[start..end]) {
                *o += u32::from(self.brands.get(*b as usize).copied().unwrap_or(false));
            }
        }
        if !self.styles_slow.is_empty() || !self.colors_slow.is_empty() {
            for (j, o) in out.iter_mut().enumerate() {
                let f = &catalog.frames[start + j];
                *o += self
                    .styles_slow
                    .iter()
                    .filter(|k| {
                        f.ai_enhanced
                            .style_keywords
                            .iter()
                            .any(|s| s.eq_ignore_ascii_case(k))
                    })
                    .count() as u32;
                if self.colors_slow.iter().any(|c| {
                    f.inventory
                        .variants
                        .iter()
                        .any(|v| v.color.to_lowercase().contains(c.as_str()))
                }) {
                    *o += 1;
                }
            }
        }
        let wanted = self.wanted;
        out.iter_mut().for_each(|o| *o = (*o).min(wanted));
    }
}

/// A compiled recommendation query.
#[derive(Debug, Clone)]
pub struct Query {
    shape: Option<usize>,
    face_width: f32,
    nose_width: f32,
    filter: Filter,
    prefs: Prefs,
    /// (row, collaborative score), sorted by row.
    personal: Vec<(u32, f32)>,
    /// Page offset.
    pub offset: usize,
    /// Page size.
    pub size: usize,
    /// Weights and diversity (a ranking variant's; the default otherwise).
    pub ranking: Ranking,
    /// The meaning of the request's text ([`Text`]): each frame's
    /// similarity to it adds to the preference part.
    semantic: Option<std::sync::Arc<discovery_embed::quant::Query>>,
    /// The words it was made from (for the reasons).
    semantic_words: String,
}

/// What a request's free text (`RecommendRequest.text`) adds to the
/// ranking, read by [`crate::understand`] and the search's model.
#[derive(Debug, Clone, Default)]
pub struct Text {
    /// Hard constraints read from it.
    pub wanted: crate::understand::Wanted,
    /// The face's shape it named (catalogue name), for a request with none.
    pub face_shape: Option<&'static str>,
    /// The size it named, for a request with no face width.
    pub size: Option<crate::understand::Size>,
    /// The meaning of its other words (`None`: no model, or no words left).
    pub vector: Option<std::sync::Arc<discovery_embed::quant::Query>>,
    /// Those words.
    pub rest: String,
}

impl Query {
    /// This query with what `text` adds: the filter narrowed, the face
    /// filled where the request left it empty, the meaning as a preference.
    pub fn with_text(mut self, catalog: &Catalog, text: &Text) -> Self {
        self.filter = self.filter.narrow(catalog, &text.wanted);
        if self.shape.is_none() {
            self.shape = text
                .face_shape
                .and_then(|n| FACE_SHAPES.iter().position(|s| *s == n));
        }
        if self.face_width <= 0.0
            && let Some(size) = text.size
        {
            self.face_width = size.face_width_mm();
        }
        self.semantic = text.vector.clone();
        self.semantic_words = text.rest.clone();
        self
    }
}

/// How a ranking variant scores and diversifies: the default is the table
/// in the module docs; experiments ([`crate::experiments`]) set others.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranking {
    /// Weights (shape, fit, preference, popularity, collaborative), summing
    /// to 1; `None` is the default pair of columns above.
    pub weights: Option<[f32; 5]>,
    /// Most frames of one brand in any [`BRAND_WINDOW`] consecutive results.
    pub brand_cap: usize,
}

impl Default for Ranking {
    fn default() -> Self {
        Self {
            weights: None,
            brand_cap: BRAND_CAP,
        }
    }
}

/// Weights (shape, fit, preference, popularity, collaborative).
fn weights(personal: bool, ranking: &Ranking) -> [f32; 5] {
    match (ranking.weights, personal) {
        (None, true) => [0.35, 0.30, 0.15, 0.10, 0.10],
        (None, false) => [0.40, 0.30, 0.15, 0.15, 0.0],
        (Some(w), true) => w,
        // Without history the collaborative part is 0: its weight goes to
        // popularity, which stands in for it (as in the default columns).
        (Some([a, b, c, d, e]), false) => [a, b, c, d + e, 0.0],
    }
}

/// Face width rounded to whole millimetres (0 when unknown), validated.
pub fn face_widths(face: &pb::FaceContext) -> Result<(f32, f32), RankError> {
    let w = face.face_width_mm;
    if !w.is_finite() || (w != 0.0 && !(90.0..=200.0).contains(&w)) {
        return Err(RankError::FaceWidth(w));
    }
    let n = face.nose_bridge_width_mm;
    if !n.is_finite() || (n != 0.0 && !(10.0..=30.0).contains(&n)) {
        return Err(RankError::NoseWidth(n));
    }
    Ok((w.round(), n.round()))
}

impl Query {
    /// Validates and compiles a request.
    pub fn compile(catalog: &Catalog, req: &pb::RecommendRequest) -> Result<Self, RankError> {
        let (offset, size) = page(req.page.as_ref())?;
        let filter = Filter::compile(catalog, req.filter.as_ref())?;
        let face = req.face.clone().unwrap_or_default();
        let (face_width, nose_width) = face_widths(&face)?;
        let shape = match pb::FaceShape::try_from(face.face_shape) {
            Ok(pb::FaceShape::Unspecified) => None,
            Ok(s) => FACE_SHAPES.iter().position(|n| *n == face_shape_name(s)),
            Err(_) => return Err(RankError::UnknownEnum("face.face_shape", face.face_shape)),
        };
        let prefs = Prefs::compile(catalog, &req.preferences.clone().unwrap_or_default())?;
        if let Some(r) = &req.requester {
            check_requester(r)?;
        }
        let user = req.requester.as_ref().map_or("", |r| r.user_id.as_str());
        let mut personal: Vec<(u32, f32)> = if user.is_empty() {
            Vec::new()
        } else {
            catalog
                .signals
                .personal(user)
                .into_iter()
                .filter_map(|(id, s)| catalog.by_id.get(&id).map(|&i| (i, s)))
                .collect()
        };
        personal.sort_unstable_by_key(|p| p.0);
        Ok(Self {
            shape,
            face_width,
            nose_width,
            filter,
            prefs,
            personal,
            offset,
            size,
            ranking: Ranking::default(),
            semantic: None,
            semantic_words: String::new(),
        })
    }

    /// Whether the collaborative signal applies (a user with history).
    pub fn is_personal(&self) -> bool {
        !self.personal.is_empty()
    }

    #[inline]
    fn fit(&self, x: &Features, i: usize) -> f32 {
        if self.face_width <= 0.0 {
            return 0.5;
        }
        let f = gauss(x.total_width[i] - self.face_width, 8.0);
        if self.nose_width > 0.0 {
            0.8 * f + 0.2 * gauss(x.bridge[i] - self.nose_width, 4.0)
        } else {
            f
        }
    }

    #[inline]
    fn parts(&self, x: &Features, i: usize, collab: f32) -> [f32; 5] {
        let shape = self.shape.map_or(0.5, |s| x.compat[s][i]);
        [shape, self.fit(x, i), 0.0, x.popularity[i], collab]
    }
}

/// A smooth bell, `≈ exp(-(delta / scale)²)`: one over the first six terms
/// of `exp(x)`'s series at `x = (delta / scale)²`. Exact at 0, within 0.001
/// of `exp` up to `x = 1` (one `scale` away), within 0.006 everywhere, and
/// strictly decreasing in `|delta|`. Branch-free arithmetic, so the
/// ranking's column pass vectorises.
#[inline(always)]
pub fn gauss(delta: f32, scale: f32) -> f32 {
    let t = delta / scale;
    let x = t * t;
    let series =
        1.0 + x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0)))));
    1.0 / series
}

/// Orderable key: higher score first, then lower row (id order).
#[inline]
fn key(score: f32, row: u32) -> u64 {
    ((score.max(0.0).to_bits() as u64) << 32) | (u32::MAX - row) as u64
}

#[inline]
fn unkey(k: u64) -> (f32, u32) {
    (
        f32::from_bits((k >> 32) as u32),
        u32::MAX - (k & 0xFFFF_FFFF) as u32,
    )
}

/// The `limit` best passing rows, best first, and the number passing.
///
/// Blocks of rows: filters, preference counts and the score are computed
/// column by column over a block (branch-free, vectorised), then the block's
/// passing rows go through the bounded heap.
fn top(catalog: &Catalog, q: &Query, limit: usize) -> (Vec<(f32, u32)>, usize) {
    const BLOCK: usize = 512;
    let x = &catalog.features;
    let w = weights(q.is_personal(), &q.ranking);
    let wanted = q.prefs.wanted;
    let pref_scale = if wanted == 0 {
        0.0
    } else {
        w[2] / wanted as f32
    };
    let pref_const = if wanted == 0 { w[2] * 0.5 } else { 0.0 };
    let filtered = q.filter.is_active();
    let n = catalog.frames.len();
    let mut heap: BinaryHeap<Reverse<u64>> = BinaryHeap::with_capacity(limit + 1);
    let mut floor = 0u64;
    let mut total = 0usize;
    let mut cursor = 0usize;
    let mut base = [0f32; BLOCK];
    let mut pass = [true; BLOCK];
    let mut prefs = [0u32; BLOCK];
    for start in (0..n).step_by(BLOCK) {
        let len = BLOCK.min(n - start);
        let base = &mut base[..len];
        let pass = &mut pass[..len];
        if filtered {
            pass.fill(true);
            q.filter.mask(catalog, start, pass);
        }
        // Column arithmetic over the block (vectorised by the compiler).
        let pop = &x.popularity[start..start + len];
        match q.shape {
            Some(s) => {
                let c = &x.compat[s][start..start + len];
                for ((b, c), p) in base.iter_mut().zip(c).zip(pop) {
                    *b = w[0] * c + w[3] * p + pref_const;
                }
            }
            None => {
                for (b, p) in base.iter_mut().zip(pop) {
                    *b = w[0] * 0.5 + w[3] * p + pref_const;
                }
            }
        }
        let tw = &x.total_width[start..start + len];
        if q.face_width <= 0.0 {
            base.iter_mut().for_each(|b| *b += w[1] * 0.5);
        } else if q.nose_width <= 0.0 {
            for (b, t) in base.iter_mut().zip(tw) {
                *b += w[1] * gauss(t - q.face_width, 8.0);
            }
        } else {
            let br = &x.bridge[start..start + len];
            for ((b, t), r) in base.iter_mut().zip(tw).zip(br) {
                *b += w[1]
                    * (0.8 * gauss(t - q.face_width, 8.0) + 0.2 * gauss(r - q.nose_width, 4.0));
            }
        }
        if wanted > 0 {
            let prefs = &mut prefs[..len];
            q.prefs.counts(catalog, start, prefs);
            for (b, m) in base.iter_mut().zip(prefs.iter()) {
                *b += *m as f32 * pref_scale;
            }
        }
        if let Some(v) = &q.semantic {
            for (j, b) in base.iter_mut().enumerate() {
                *b += w[2] * x.vectors.score(v, start + j).max(0.0);
            }
        }
        // Personal signal and the heap, row by row.
        for (j, &b) in base.iter().enumerate() {
            let i = start + j;
            if filtered && !pass[j] {
                continue;
            }
            total += 1;
            let mut s = b;
            if !q.personal.is_empty() {
                while cursor < q.personal.len() && (q.personal[cursor].0 as usize) < i {
                    cursor += 1;
                }
                if cursor < q.personal.len() && q.personal[cursor].0 as usize == i {
                    s += w[4] * q.personal[cursor].1;
                }
            }
            let k = key(s, i as u32);
            if heap.len() < limit {
                heap.push(Reverse(k));
                if heap.len() == limit {
                    floor = heap.peek().map_or(0, |r| r.0);
                }
            } else if k > floor {
                if let Some(mut min) = heap.peek_mut() {
                    *min = Reverse(k);
                }
                floor = heap.peek().map_or(0, |r| r.0);
            }
        }
    }
    let mut out: Vec<u64> = heap.into_iter().map(|r| r.0).collect();
    out.sort_unstable_by(|a, b| b.cmp(a));
    (out.into_iter().map(unkey).collect(), total)
}

/// Re-orders score-ordered candidates so that no brand appears more than
/// `cap` ([`BRAND_CAP`] by default) times in any [`BRAND_WINDOW`]
/// consecutive results. `None`
/// when the candidates ran out before `need` results could be decided and
/// more exist (`complete` false): the caller asks again with more.
fn diversify(
    catalog: &Catalog,
    cands: &[(f32, u32)],
    need: usize,
    complete: bool,
    cap: usize,
) -> Option<Vec<(f32, u32)>> {
    let brand = |r: u32| catalog.features.brand[r as usize];
    let mut out: Vec<(f32, u32)> = Vec::with_capacity(need);
    let mut pending: VecDeque<(f32, u32)> = VecDeque::new();
    let mut next = 0usize;
    while out.len() < need {
        let window = &out[out.len().saturating_sub(BRAND_WINDOW - 1)..];
        let eligible = pending
            .iter()
            .position(|c| window.iter().filter(|o| brand(o.1) == brand(c.1)).count() < cap);
        let n = cands.get(next);
        if let Some(e) = eligible
            && n.is_none_or(|n| key(pending[e].0, pending[e].1) > key(n.0, n.1))
        {
            // The best eligible beats everything not read yet.
            out.extend(pending.remove(e));
        } else if let Some(n) = n
            && (eligible.is_some() || pending.len() < LOOKAHEAD)
        {
            pending.push_back(*n);
            next += 1;
        } else if n.is_none() && !complete && pending.len() < LOOKAHEAD {
            return None;
        } else if pending.is_empty() {
            break;
        } else {
            // Nothing eligible within the look-ahead: take the best anyway.
            out.extend(pending.pop_front());
        }
    }
    Some(out)
}

/// The first `need` ranked rows (after diversity) and the number passing.
pub fn ranked(catalog: &Catalog, q: &Query, need: usize) -> (Vec<(f32, u32)>, usize) {
    let mut limit = need * 2 + LOOKAHEAD;
    loop {
        let (cands, total) = top(catalog, q, limit);
        let complete = cands.len() >= total;
        if let Some(out) = diversify(catalog, &cands, need, complete, q.ranking.brand_cap) {
            return (out, total);
        }
        limit *= 4;
    }
}

/// One scored frame, explained.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Row in the catalogue.
    pub row: usize,
    /// Final score.
    pub score: f32,
    /// Components.
    pub breakdown: pb::ScoreBreakdown,
    /// Reasons.
    pub reasons: Vec<String>,
}

/// Ranks the catalogue for a request; returns the requested page and the total.
pub fn recommend(
    catalog: &Catalog,
    req: &pb::RecommendRequest,
    ranking: Ranking,
) -> Result<(Vec<Scored>, usize, Query), RankError> {
    recommend_with(catalog, req, ranking, None)
}

/// [`recommend`] with what the request's free text adds.
pub fn recommend_with(
    catalog: &Catalog,
    req: &pb::RecommendRequest,
    ranking: Ranking,
    text: Option<&Text>,
) -> Result<(Vec<Scored>, usize, Query), RankError> {
    let mut q = Query::compile(catalog, req)?;
    if let Some(t) = text {
        q = q.with_text(catalog, t);
    }
    q.ranking = ranking;
    let (rows, total) = ranked(catalog, &q, q.offset + q.size);
    let page = rows
        .into_iter()
        .skip(q.offset)
        .map(|(score, row)| explain(catalog, &q, row as usize, score))
        .collect();
    Ok((page, total, q))
}

fn explain(catalog: &Catalog, q: &Query, i: usize, score: f32) -> Scored {
    let x = &catalog.features;
    let f = &catalog.frames[i];
    let collab = q
        .personal
        .binary_search_by_key(&(i as u32), |p| p.0)
        .map_or(0.0, |k| q.personal[k].1);
    let p = q.parts(x, i, collab);
    let pref = if q.prefs.wanted == 0 {
        0.5
    } else {
        q.prefs.matched(catalog, i) as f32 / q.prefs.wanted as f32
    };
    let mut reasons = Vec::new();
    if let Some(s) = q.shape
        && p[0] >= 0.75
    {
        reasons.push(format!("suits {} faces", FACE_SHAPES[s]));
    }
    if q.face_width > 0.0 && (x.total_width[i] - q.face_width).abs() <= 6.0 {
        reasons.push(format!("fits a {:.0} mm face", q.face_width));
    }
    if q.nose_width > 0.0 && (x.bridge[i] - q.nose_width).abs() <= 2.0 {
        reasons.push(format!("{:.0} mm bridge suits your nose", f.bridge_mm));
    }
    for k in &f.ai_enhanced.style_keywords {
        if let Some(id) = catalog.vocabs.styles.get(k)
            && ((id < 64 && q.prefs.styles & (1 << id) != 0)
                || q.prefs
                    .styles_slow
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(k)))
        {
            reasons.push(format!("{k} style"));
        }
    }
    if q.prefs.brands.get(x.brand[i] as usize) == Some(&true) {
        reasons.push(format!("from {}", f.brand));
    }
    if collab >= 0.5 {
        reasons.push("shoppers with similar taste chose it".into());
    }
    let text_match = q
        .semantic
        .as_ref()
        .map_or(0.0, |v| x.vectors.score(v, i).max(0.0));
    if text_match >= 0.4 {
        reasons.push(format!("matches \"{}\"", q.semantic_words));
    }
    if p[3] > 0.7 {
        reasons.push("popular right now".into());
    }
    if reasons.is_empty() {
        reasons.push(format!(
            "{} {} in {}, {:.0}-{:.0}-{:.0}",
            f.shape.title(),
            if f.categories.iter().any(|c| c == "sunglasses") {
                "sunglasses"
            } else {
                "frame"
            },
            f.material,
            f.lens_width_mm,
            f.bridge_mm,
            f.temple_mm
        ));
    }
    Scored {
        row: i,
        score,
        breakdown: pb::ScoreBreakdown {
            face_shape: p[0],
            fit: p[1],
            preference: pref,
            popularity: p[3],
            collaborative: collab,
            text_match,
        },
        reasons,
    }
}

mod filter;
pub use filter::Filter;
use filter::enum_mask;

#[cfg(test)]
mod tests;
