//! Text search over the snapshot: names, brands, models, keywords and the
//! feature summary, with filters, facets and typo tolerance.
//!
//! Each query word is expanded once against the catalogue's word vocabulary
//! (not against every product): an exact word scores 1, a word it prefixes
//! (3+ letters) 0.9, a word within one edit (5+ letters; two edits from 8)
//! 0.7. A product matches when every query word matches one of its words;
//! its score is the sum of the best match per query word plus 1% of its
//! popularity. A query word with no exact match but a close one is reported
//! in `corrected_query` ("aviater" -> "aviator").
//!
//! The work a query may cause is bounded (a caller chooses the words):
//! typo matching compares only vocabulary words whose length is within the
//! edit bound, with no allocation per comparison, at most
//! [`MAX_TYPO_COMPARISONS`] per query; each query word expands to at most
//! [`MAX_EXPANSIONS`] vocabulary words (exact, then prefixes, then typos);
//! and a query whose scan is large ([`is_large`]) runs on a blocking
//! thread, not on the async threads that serve every other call.

use discovery_proto::v1 as pb;

use crate::rank::{Filter, RankError, page};
use crate::snapshot::Catalog;

/// Longest query accepted, bytes.
pub const MAX_QUERY: usize = 256;
/// Most words in a query.
pub const MAX_WORDS: usize = 12;
/// Most vocabulary words one query word expands to.
pub const MAX_EXPANSIONS: usize = 64;
/// Most typo comparisons (bounded edit distances) one query makes.
pub const MAX_TYPO_COMPARISONS: usize = 200_000;
/// A semantic search over more frames than this runs on a blocking thread
/// (the exact scan costs about 17 µs per 1,000 frames).
pub const LARGE_SEMANTIC: usize = 20_000;
/// A query whose scan (frames × words plus vocabulary × words) is over this
/// runs on a blocking thread.
pub const LARGE_WORK: usize = 400_000;

/// Search input errors.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SearchError {
    /// Query too long.
    #[error("query: {0} bytes is over the maximum of {MAX_QUERY}")]
    TooLong(usize),
    /// Too many words.
    #[error("query: {0} words is over the maximum of {MAX_WORDS}")]
    TooManyWords(usize),
    /// Bad paging or filter.
    #[error(transparent)]
    Rank(#[from] RankError),
}

/// Scratch rows for [`levenshtein`], reused across comparisons.
#[derive(Default)]
struct Rows {
    a: Vec<char>,
    prev: Vec<usize>,
    cur: Vec<usize>,
}

/// Edit distance between `a` and the already split `b`, bounded: returns
/// `max + 1` as soon as it exceeds `max`.
fn levenshtein(a: &str, b: &[char], max: usize, rows: &mut Rows) -> usize {
    rows.a.clear();
    rows.a.extend(a.chars());
    let a = &rows.a;
    if a.len().abs_diff(b.len()) > max {
        return max + 1;
    }
    rows.prev.clear();
    rows.prev.extend(0..=b.len());
    rows.cur.clear();
    rows.cur.resize(b.len() + 1, 0);
    let (prev, cur) = (&mut rows.prev, &mut rows.cur);
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        let mut row_min = cur[0];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
            row_min = row_min.min(cur[j + 1]);
        }
        if row_min > max {
            return max + 1;
        }
        std::mem::swap(prev, cur);
    }
    prev[b.len()]
}

/// Is the scan of `words` over this catalogue large enough to move off
/// the async threads?
pub fn is_large(catalog: &Catalog, words: usize) -> bool {
    catalog.frames.len() * words + catalog.vocabs.words.len() * words > LARGE_WORK
}

/// The vocabulary words a query word matches, with weights, and the
/// correction when it matched only by typo.
fn expand(catalog: &Catalog, q: &str, budget: &mut usize) -> (Vec<(u32, f32)>, Option<String>) {
    let words = &catalog.vocabs.words;
    let mut out: Vec<(u32, f32)> = Vec::new();
    let mut rows = Rows::default();
    let qc: Vec<char> = q.chars().collect();
    let exact = words.get(q);
    if let Some(id) = exact {
        out.push((id, 1.0));
    }
    let n = q.chars().count();
    let max_edits = if n >= 8 {
        2
    } else if n >= 5 {
        1
    } else {
        0
    };
    let mut best_typo: Option<(usize, &str)> = None;
    for (id, w) in words.iter() {
        if Some(id) == exact {
            continue;
        }
        if n >= 3 && w.starts_with(q) {
            out.push((id, 0.9));
        } else if max_edits > 0 && *budget > 0 {
            // Byte lengths bound char counts: skip before counting.
            if w.len() + max_edits < n || w.chars().count().abs_diff(n) > max_edits {
                continue;
            }
            *budget -= 1;
            let d = levenshtein(w, &qc, max_edits, &mut rows);
            if d <= max_edits {
                out.push((id, 0.7));
                if best_typo.is_none_or(|(bd, bw)| (d, w) < (bd, bw)) {
                    best_typo = Some((d, w));
                }
            }
        }
    }
    // The strongest matches first (exact, prefix, typo; then by id), at
    // most MAX_EXPANSIONS of them.
    out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out.truncate(MAX_EXPANSIONS);
    out.sort_unstable_by_key(|x| x.0);
    let correction = if exact.is_none() {
        best_typo.map(|(_, w)| w.to_string())
    } else {
        None
    };
    (out, correction)
}

/// One hit: row and score.
pub type Hit = (usize, f32);

/// Results of a search before mapping to the API.
#[derive(Debug, Default)]
pub struct Results {
    /// The page of hits.
    pub hits: Vec<Hit>,
    /// Matches in total.
    pub total: usize,
    /// Facets, when asked for.
    pub facets: Vec<pb::Facet>,
    /// Corrected query, when a word was corrected.
    pub corrected: String,
    /// Page offset.
    pub offset: usize,
    /// Why each hit of the page matched (same order as `hits`).
    pub why: Vec<crate::semantic::Why>,
}

/// How a search matches its words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every word must match (typo-tolerant).
    Lexical,
    /// The nearest frames by meaning.
    Semantic,
    /// Both, fused by reciprocal rank.
    Hybrid,
}

/// What a search looks for, validated and compiled against a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// Words (after understanding took its parts).
    pub words: &'a [String],
    /// The hard filter (the request's, narrowed by the text).
    pub filter: &'a Filter,
    /// The text's embedding (semantic and hybrid need it; without it the
    /// search is lexical).
    pub vector: Option<&'a [f32]>,
    /// How to match.
    pub mode: Mode,
}

/// Runs a search: the matches (every frame the filter passes when there
/// are no words, by popularity), facets over all of them, one page.
pub fn run(
    catalog: &Catalog,
    q: &Query<'_>,
    include_facets: bool,
    offset: usize,
    size: usize,
) -> Results {
    use crate::semantic::{LEXICAL_CANDIDATES, VECTOR_CANDIDATES, Why, fuse, semantic_where};
    let mode = match q.vector {
        Some(_) if !q.words.is_empty() => q.mode,
        _ => Mode::Lexical,
    };
    // The filter once per query, a block at a time over the columns;
    // both lists read the result.
    let passing: Option<Vec<bool>> = q.filter.is_active().then(|| {
        let n = catalog.frames.len();
        let mut ok = vec![true; n];
        for start in (0..n).step_by(4096) {
            let end = (start + 4096).min(n);
            q.filter.mask(catalog, start, &mut ok[start..end]);
        }
        ok
    });
    let pass = |i: usize| passing.as_ref().is_none_or(|p| p[i]);
    let (ranked, corrected): (Vec<(Hit, Why)>, Option<String>) = match (mode, q.vector) {
        (Mode::Semantic, Some(v)) => (
            semantic_where(catalog, v, VECTOR_CANDIDATES, pass)
                .into_iter()
                .enumerate()
                .map(|(rank, h)| {
                    let why = Why {
                        semantic_rank: Some(rank),
                        similarity: h.1,
                        ..Why::default()
                    };
                    (h, why)
                })
                .collect(),
            None,
        ),
        (Mode::Hybrid, Some(v)) => {
            let (lex, corrected) = lexical_where(catalog, q.words, pass, LEXICAL_CANDIDATES);
            let sem = semantic_where(catalog, v, VECTOR_CANDIDATES, pass);
            (fuse(&lex, &sem), corrected)
        }
        _ => {
            let (lex, corrected) =
                lexical_where(catalog, q.words, pass, offset.saturating_add(size));
            let ranked = lex
                .into_iter()
                .enumerate()
                .map(|(rank, h)| {
                    let why = Why {
                        lexical_rank: (!q.words.is_empty()).then_some(rank),
                        ..Why::default()
                    };
                    (h, why)
                })
                .collect();
            (ranked, corrected)
        }
    };
    let total = ranked.len();
    let facets = if include_facets {
        facets(catalog, ranked.iter().map(|(h, _)| h.0))
    } else {
        Vec::new()
    };
    let (hits, why) = ranked.into_iter().skip(offset).take(size).unzip();
    Results {
        hits,
        total,
        facets,
        corrected: corrected.unwrap_or_default(),
        offset,
        why,
    }
}

/// Facet counts over the rows matched: counted by the snapshot's column
/// ids (no string per match), named at the end (a brand by its first
/// matching frame's spelling).
fn facets(catalog: &Catalog, rows: impl Iterator<Item = usize>) -> Vec<pb::Facet> {
    const BANDS: [&str; 5] = ["0-50", "50-100", "100-200", "200-400", "400+"];
    let x = &catalog.features;
    // (count, first row) per brand id.
    let mut brands: Vec<(u64, usize)> = vec![(0, 0); catalog.vocabs.brands.len()];
    let mut shapes = [0u64; 32];
    let mut materials = [0u64; 32];
    let mut bands = [0u64; BANDS.len()];
    for i in rows {
        if let Some(b) = brands.get_mut(x.brand[i] as usize) {
            if b.0 == 0 {
                b.1 = i;
            }
            b.0 += 1;
        }
        shapes[x.shape[i] as usize & 31] += 1;
        materials[x.material[i] as usize & 31] += 1;
        let band = price_band(catalog.frames[i].price);
        if let Some(k) = BANDS.iter().position(|b| *b == band) {
            bands[k] += 1;
        }
    }
    let facet = |name: &str, mut counts: Vec<pb::FacetCount>| {
        counts.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
        pb::Facet {
            name: name.into(),
            counts,
        }
    };
    let count = |value: String, count: u64| pb::FacetCount { value, count };
    // Counts indexed by an enum's code, named by it.
    let by_code = |counts: &[u64; 32], name: fn(i32) -> Option<&'static str>| {
        (0..32)
            .filter(|&c| counts[c] > 0)
            .filter_map(|c| name(c as i32).map(|n| count(n.to_string(), counts[c])))
            .collect()
    };
    vec![
        facet(
            "brand",
            brands
                .iter()
                .filter(|b| b.0 > 0)
                .map(|&(n, row)| count(catalog.frames[row].brand.clone(), n))
                .collect(),
        ),
        facet(
            "shape",
            by_code(&shapes, |c| {
                discovery_catalog::Shape::from_code(c).map(|s| s.name())
            }),
        ),
        facet(
            "material",
            by_code(&materials, |c| {
                discovery_catalog::Material::from_code(c).map(|m| m.name())
            }),
        ),
        facet(
            "price_band",
            BANDS
                .iter()
                .zip(bands)
                .filter(|(_, n)| *n > 0)
                .map(|(b, n)| count(b.to_string(), n))
                .collect(),
        ),
    ]
}

/// The facet band of a price in major units (whatever the currency's
/// minor unit: the stored `price` is major).
fn price_band(major: f64) -> &'static str {
    match major {
        p if p < 50.0 => "0-50",
        p if p < 100.0 => "50-100",
        p if p < 200.0 => "100-200",
        p if p < 400.0 => "200-400",
        _ => "400+",
    }
}

/// A validated search request: page, compiled filter, query words.
pub struct Parsed {
    /// Page offset.
    pub offset: usize,
    /// Page size.
    pub size: usize,
    /// The request's filter, compiled.
    pub filter: Filter,
    /// The query's words.
    pub words: Vec<String>,
}

impl Parsed {
    /// Query words.
    pub fn words(&self) -> &[String] {
        &self.words
    }
}

/// A query's words as the lexical search matches them: lower-cased runs
/// of letters and digits.
pub fn query_words(query: &str) -> Vec<String> {
    query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Most words a query read for its meaning may have (the words left after
/// understanding are still at most [`MAX_WORDS`]).
pub const MAX_TEXT_WORDS: usize = 48;

/// Validates a request (limits, page, filter) and splits the query into words.
pub fn parse(catalog: &Catalog, req: &pb::SearchProductsRequest) -> Result<Parsed, SearchError> {
    parse_with(catalog, req, MAX_WORDS)
}

/// [`parse`] allowing up to `max_words` words.
pub fn parse_with(
    catalog: &Catalog,
    req: &pb::SearchProductsRequest,
    max_words: usize,
) -> Result<Parsed, SearchError> {
    if req.query.len() > MAX_QUERY {
        return Err(SearchError::TooLong(req.query.len()));
    }
    let (offset, size) = page(req.page.as_ref())?;
    let filter = Filter::compile(catalog, req.filter.as_ref())?;
    let words = query_words(&req.query);
    if words.len() > max_words {
        return Err(SearchError::TooManyWords(words.len()));
    }
    Ok(Parsed {
        offset,
        size,
        filter,
        words,
    })
}

/// The lexical hits among the frames `filter` passes, best first (ties by
/// row): every query word must match a word of the frame. Also the query
/// with its typos corrected, when a word matched only by typo.
pub fn lexical(
    catalog: &Catalog,
    qwords: &[String],
    filter: &Filter,
) -> (Vec<Hit>, Option<String>) {
    lexical_where(catalog, qwords, |i| filter.passes(catalog, i), usize::MAX)
}

/// [`lexical`] among the rows `pass` accepts, only the first `ordered`
/// hits in order (the rest follow in no particular order): a page or the
/// fusion's candidates need no sort of every match (64,000 of them for a
/// broad query over 100,000 frames).
pub fn lexical_where(
    catalog: &Catalog,
    qwords: &[String],
    pass: impl Fn(usize) -> bool,
    ordered: usize,
) -> (Vec<Hit>, Option<String>) {
    let mut expanded = Vec::with_capacity(qwords.len());
    let mut corrected = Vec::with_capacity(qwords.len());
    let mut any_correction = false;
    let mut budget = MAX_TYPO_COMPARISONS;
    for w in qwords {
        let (ids, c) = expand(catalog, w, &mut budget);
        any_correction |= c.is_some();
        corrected.push(c.unwrap_or_else(|| w.clone()));
        expanded.push(ids);
    }
    let x = &catalog.features;
    let mut hits: Vec<Hit> = Vec::new();
    for i in 0..catalog.frames.len() {
        if !pass(i) {
            continue;
        }
        let mut score = 0.0;
        let mut all = true;
        for ids in &expanded {
            let words = &x.words[i];
            let best = ids
                .iter()
                .filter(|(id, _)| words.binary_search(id).is_ok())
                .map(|(_, w)| *w)
                .fold(0.0f32, f32::max);
            if best == 0.0 {
                all = false;
                break;
            }
            score += best;
        }
        if all {
            hits.push((i, score + x.popularity[i] * 0.01));
        }
    }
    let best_first = |a: &Hit, b: &Hit| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0));
    if ordered < hits.len() {
        hits.select_nth_unstable_by(ordered, best_first);
        hits[..ordered].sort_unstable_by(best_first);
    } else {
        hits.sort_unstable_by(best_first);
    }
    (hits, any_correction.then(|| corrected.join(" ")))
}

/// Runs a lexical search as the request says.
pub fn search(catalog: &Catalog, req: &pb::SearchProductsRequest) -> Result<Results, SearchError> {
    let Parsed {
        offset,
        size,
        filter,
        words,
    } = parse(catalog, req)?;
    let q = Query {
        words: &words,
        filter: &filter,
        vector: None,
        mode: Mode::Lexical,
    };
    Ok(run(catalog, &q, req.include_facets, offset, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use discovery_catalog::demo_catalog;

    fn req(q: &str) -> pb::SearchProductsRequest {
        pb::SearchProductsRequest {
            query: q.into(),
            include_facets: true,
            ..Default::default()
        }
    }

    #[test]
    fn search_tolerates_a_typo_and_says_so() {
        let c = Catalog::new(demo_catalog(600), 1);
        let exact = search(&c, &req("aviator")).unwrap();
        let typo = search(&c, &req("aviater")).unwrap();
        assert!(exact.total > 0);
        assert_eq!(exact.total, typo.total);
        assert_eq!(typo.corrected, "aviator");
        assert!(exact.corrected.is_empty());
        let brand = exact.facets.iter().find(|f| f.name == "brand").unwrap();
        assert_eq!(
            brand.counts.iter().map(|c| c.count).sum::<u64>(),
            exact.total as u64
        );
        assert_eq!(exact.facets.len(), 4);
    }

    #[test]
    fn every_word_must_match_and_filters_hold() {
        let c = Catalog::new(demo_catalog(600), 1);
        let both = search(&c, &req("ray-ban aviator")).unwrap();
        assert!(both.total > 0);
        for (i, _) in &both.hits {
            let f = &c.frames[*i];
            assert_eq!(f.brand, "Ray-Ban");
            assert_eq!(f.shape, discovery_catalog::Shape::Aviator);
        }
        assert_eq!(search(&c, &req("zzzzzz")).unwrap().total, 0);
        let long = "a ".repeat(200);
        assert!(matches!(
            search(&c, &req(&long)),
            Err(SearchError::TooLong(400))
        ));
    }

    #[test]
    fn levenshtein_is_bounded() {
        let lev = |a: &str, b: &str, max| {
            let b: Vec<char> = b.chars().collect();
            levenshtein(a, &b, max, &mut Rows::default())
        };
        assert_eq!(lev("aviator", "aviater", 1), 1);
        assert_eq!(lev("abc", "xyz", 1), 2);
        assert_eq!(lev("", "", 0), 0);
    }
}
