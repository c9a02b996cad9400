//! The model against its reference implementation: `golden.json` holds
//! embeddings computed once with sentence-transformers on PyTorch
//! (`reference.py` beside it says how); this build must give the same
//! vectors from the same files (fetched by `scripts/fetch-models.sh`).

use std::path::PathBuf;

use discovery_embed::{DIM, Embedder, MAX_TOKENS, dot, model_dir};

fn embedder() -> Embedder {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models");
    Embedder::load(&model_dir(&models))
        .unwrap_or_else(|e| panic!("{e} (`make test-models` fetches it)"))
}

struct Case {
    text: String,
    embedding: Vec<f32>,
}

fn golden() -> (String, Vec<Case>) {
    let raw = include_str!("golden.json");
    let v: serde_json::Value = serde_json::from_str(raw).expect("golden.json is JSON");
    let cases = v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().expect("text").to_string(),
            embedding: c["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect(),
        })
        .collect();
    (v["reference"].as_str().unwrap_or("?").to_string(), cases)
}

/// Largest per-component difference allowed: float32 kernels differ in
/// summation order (candle's gemm vs PyTorch's MKL/oneDNN), not more.
const TOLERANCE: f32 = 1e-4;

fn check(reference: &str, case: &Case, got: &[f32]) {
    assert_eq!(got.len(), DIM, "{:?}", case.text);
    let worst = got
        .iter()
        .zip(&case.embedding)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst < TOLERANCE,
        "{:?}: differs from {reference} by up to {worst}",
        case.text
    );
    let norm = dot(got, got).sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "normalised: {norm}");
}

#[test]
fn one_at_a_time_matches_the_reference_implementation() {
    let (reference, cases) = golden();
    assert!(cases.len() >= 6, "golden cases");
    let e = embedder();
    for case in &cases {
        check(&reference, case, &e.embed(&case.text).expect("embeds"));
    }
}

#[test]
fn a_padded_batch_gives_the_same_vectors_as_one_at_a_time() {
    let (reference, cases) = golden();
    let e = embedder();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let batch = e.embed_batch(&texts).expect("embeds");
    assert_eq!(batch.len(), cases.len());
    for (case, got) in cases.iter().zip(&batch) {
        check(&reference, case, got);
    }
}

#[test]
fn long_text_is_cut_at_the_models_limit() {
    let (_, cases) = golden();
    let e = embedder();
    let longest = cases
        .iter()
        .map(|c| e.token_count(&c.text).expect("tokenizes"))
        .max()
        .unwrap_or(0);
    assert_eq!(longest, MAX_TOKENS, "one golden case is over the limit");
    // Empty text is a valid input ([CLS] [SEP]); it embeds, normalised.
    let empty = e.embed("").expect("embeds");
    assert!((dot(&empty, &empty) - 1.0).abs() < 1e-5);
}

#[test]
fn similar_meaning_is_nearer_than_different_meaning() {
    let e = embedder();
    let v = e
        .embed_batch(&[
            "sunglasses for the beach",
            "shades to wear on a sunny seaside holiday",
            "reading glasses for the office",
        ])
        .expect("embeds");
    assert!(dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.1, "{v:?}");
}
