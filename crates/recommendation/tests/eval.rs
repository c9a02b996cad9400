//! Search quality on the demo catalogue: lexical, semantic and hybrid
//! retrieval over `tests/eval/search.json` (64 queries with graded
//! relevance rules), scored by nDCG@10 and recall@20. The graded products
//! per query are committed in `tests/eval/judgments.json`; this test checks
//! they are the rules' expansion (`DISCOVERY_WRITE_JUDGMENTS=1` rewrites
//! them after a deliberate change to the rules or the demo catalogue).
//!
//! The product embeddings are computed here with the real model (as the
//! embedder stores them), so the model must be fetched (`make test-models`).

use std::collections::BTreeMap;

use discovery_catalog::{Frame, demo_catalog};
use discovery_embed::Embedder;
use discovery_recommendation::rank::Filter;
use discovery_recommendation::search::{Hit, lexical, query_words};
use discovery_recommendation::semantic::{VECTOR_CANDIDATES, fuse, semantic};
use discovery_recommendation::snapshot::Catalog;
use serde_json::Value;

const DEMO: usize = 520;

mod common;
use common::root;

fn embedded_demo(e: &Embedder) -> Vec<Frame> {
    common::embedded(demo_catalog(DEMO), e)
}

fn holds(f: &Frame, cond: &Value) -> bool {
    let (key, want) = cond
        .as_object()
        .and_then(|o| o.iter().next())
        .expect("a condition is one attribute");
    let any = |have: &[String]| {
        want.as_array().expect("values").iter().any(|w| {
            let w = w.as_str().expect("a string value");
            have.iter().any(|h| h.eq_ignore_ascii_case(w))
        })
    };
    match key.as_str() {
        "shape" => any(&[f.shape.name().to_string()]),
        "material" => any(&[f.material.name().to_string()]),
        "style" => any(&f.ai_enhanced.style_keywords),
        "color" => any(&f
            .inventory
            .variants
            .iter()
            .map(|v| v.color.clone())
            .collect::<Vec<_>>()),
        "brand" => any(std::slice::from_ref(&f.brand)),
        "category" => any(&f.categories),
        "price_max" => f.price <= want.as_f64().expect("a number"),
        "price_min" => f.price >= want.as_f64().expect("a number"),
        other => panic!("unknown attribute {other}"),
    }
}

struct Query {
    text: String,
    /// Product id -> grade (1..=3).
    relevant: BTreeMap<String, u32>,
}

fn judge(frames: &[Frame]) -> Vec<Query> {
    let raw = std::fs::read_to_string(root().join("tests/eval/search.json")).expect("search.json");
    let spec: Value = serde_json::from_str(&raw).expect("search.json is JSON");
    let none = Vec::new();
    spec["queries"]
        .as_array()
        .expect("queries")
        .iter()
        .map(|q| {
            let must = q["must"].as_array().unwrap_or(&none);
            let nice = q["nice"].as_array().unwrap_or(&none);
            let relevant = frames
                .iter()
                .filter(|f| must.iter().all(|c| holds(f, c)))
                .map(|f| {
                    let extra = nice.iter().filter(|c| holds(f, c)).count() as u32;
                    (f.id.clone(), (1 + extra).min(3))
                })
                .collect();
            Query {
                text: q["q"].as_str().expect("q").to_string(),
                relevant,
            }
        })
        .collect()
}

fn judgments_json(queries: &[Query]) -> String {
    let mut out = String::from("{\n");
    for (i, q) in queries.iter().enumerate() {
        let grades: Vec<String> = q
            .relevant
            .iter()
            .map(|(id, g)| format!("\"{id}\": {g}"))
            .collect();
        out.push_str(&format!(
            "  {}: {{{}}}{}\n",
            serde_json::to_string(&q.text).unwrap_or_default(),
            grades.join(", "),
            if i + 1 < queries.len() { "," } else { "" }
        ));
    }
    out.push_str("}\n");
    out
}

fn ndcg_at(ranked: &[String], q: &Query, k: usize) -> f64 {
    let gain = |g: u32| 2f64.powi(g as i32) - 1.0;
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, id)| gain(*q.relevant.get(id).unwrap_or(&0)) / (i as f64 + 2.0).log2())
        .sum();
    let mut ideal: Vec<u32> = q.relevant.values().copied().collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, g)| gain(*g) / (i as f64 + 2.0).log2())
        .sum();
    if idcg == 0.0 { 0.0 } else { dcg / idcg }
}

/// Recall@k, capped: of the min(k, |relevant|) it could find, how many.
fn recall_at(ranked: &[String], q: &Query, k: usize) -> f64 {
    let found = ranked
        .iter()
        .take(k)
        .filter(|id| q.relevant.contains_key(*id))
        .count();
    found as f64 / q.relevant.len().min(k).max(1) as f64
}

#[test]
fn hybrid_is_at_least_as_good_as_lexical_and_semantic_alone() {
    let embedder = common::embedder();
    let frames = embedded_demo(&embedder);
    let queries = judge(&frames);
    assert!(queries.len() >= 60, "{} queries", queries.len());
    for q in &queries {
        assert!(
            !q.relevant.is_empty(),
            "{:?} has no relevant product",
            q.text
        );
    }
    let committed = root().join("tests/eval/judgments.json");
    let expanded = judgments_json(&queries);
    if std::env::var_os("DISCOVERY_WRITE_JUDGMENTS").is_some() {
        std::fs::write(&committed, &expanded).expect("writes judgments.json");
    }
    assert_eq!(
        std::fs::read_to_string(&committed).unwrap_or_default(),
        expanded,
        "tests/eval/judgments.json is not the rules' expansion \
         (DISCOVERY_WRITE_JUDGMENTS=1 rewrites it)"
    );

    let catalog = Catalog::new(frames, 1);
    let all = Filter::compile(&catalog, None).expect("no filter");
    let ids = |hits: &[Hit]| -> Vec<String> {
        hits.iter()
            .map(|(row, _)| catalog.frames[*row].id.clone())
            .collect()
    };
    let mut sums = [[0.0f64; 2]; 3];
    let mut rows = Vec::new();
    for q in &queries {
        let (lex, _) = lexical(&catalog, &query_words(&q.text), &all);
        let v = embedder.embed(&q.text).expect("embeds the query");
        let sem = semantic(&catalog, &v, &all, VECTOR_CANDIDATES);
        let hybrid: Vec<Hit> = fuse(&lex, &sem).into_iter().map(|(h, _)| h).collect();
        let mut line = Vec::new();
        for (m, hits) in [&lex, &sem, &hybrid].into_iter().enumerate() {
            let ranked = ids(hits);
            let (n, r) = (ndcg_at(&ranked, q, 10), recall_at(&ranked, q, 20));
            sums[m][0] += n;
            sums[m][1] += r;
            line.push(format!("{n:.2}/{r:.2}"));
        }
        rows.push(format!("{:45} {}", q.text, line.join("  ")));
    }
    let n = queries.len() as f64;
    let mean = |m: usize| (sums[m][0] / n, sums[m][1] / n);
    println!("query (nDCG@10/recall@20)                     lexical    semantic   hybrid");
    for r in &rows {
        println!("{r}");
    }
    let [(ln, lr), (sn, sr), (hn, hr)] = [mean(0), mean(1), mean(2)];
    println!(
        "MEAN over {} queries: lexical nDCG@10 {ln:.3} recall@20 {lr:.3}; \
         semantic {sn:.3} {sr:.3}; hybrid {hn:.3} {hr:.3}",
        queries.len()
    );
    assert!(
        hn >= ln.max(sn),
        "hybrid nDCG@10 {hn:.3} < best alone {:.3}",
        ln.max(sn)
    );
    assert!(
        hr >= lr.max(sr),
        "hybrid recall@20 {hr:.3} < best alone {:.3}",
        lr.max(sr)
    );
}
