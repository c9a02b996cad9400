//! The embedding model and the quantised scan, on this machine:
//!
//! - query embedding latency (short shopper queries, one at a time);
//! - product embedding throughput (the demo catalogue's texts, batches of 32);
//! - the exact quantised scan over 100,000 vectors (top 200), and the
//!   quantisation's recall@10 against float32 on real embeddings.
//!
//! `RAYON_NUM_THREADS=1 cargo bench -p discovery-embed --bench embed` for
//! one core (candle's matrix products use that many threads); needs
//! `make models`.

use std::time::{Duration, Instant};

use discovery_catalog::{Frame, demo_catalog};
use discovery_embed::quant::{Matrix, Query};
use discovery_embed::{DIM, Embedder, dot, model_dir};

discovery_kit::global_allocator!();

const QUERIES: &[&str] = &[
    "titanium aviator",
    "something bold for a wedding",
    "lightweight round glasses under $150 for a wide face",
    "like the ray-ban clubmaster but cheaper",
    "shades for the beach",
    "understated frames for the office",
    "tortoiseshell cat eye",
    "glasses for jogging",
];

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut t: Vec<Duration>) {
    t.sort();
    println!(
        "{name}: p50 {:?} p99 {:?} ({} runs)",
        pct(&t, 0.5),
        pct(&t, 0.99),
        t.len()
    );
}

fn main() {
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into());
    println!("threads for the model: {threads}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let e = Embedder::load(&model_dir(&root.join("models"))).expect("model (make models)");

    // Query embedding, one at a time.
    for q in QUERIES {
        e.embed(q).expect("embeds");
    }
    let mut t = Vec::new();
    for i in 0..400 {
        let start = Instant::now();
        e.embed(QUERIES[i % QUERIES.len()]).expect("embeds");
        t.push(start.elapsed());
    }
    report("query embedding (uncached)", t);

    // Product texts in batches of 32.
    let frames = demo_catalog(512);
    let texts: Vec<String> = frames.iter().map(Frame::embedding_text).collect();
    let start = Instant::now();
    let mut vectors = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(32) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        vectors.extend(e.embed_batch(&refs).expect("embeds"));
    }
    let took = start.elapsed();
    println!(
        "product embedding: {:.0} products/s ({} products, batches of 32, {:?})",
        texts.len() as f64 / took.as_secs_f64(),
        texts.len(),
        took
    );

    // Quantisation recall@10 against float32, on the real embeddings:
    // each product's text as the query, its own row left out.
    let mut m = Matrix::new(DIM);
    for v in &vectors {
        m.push(Some(v));
    }
    let mut recall = 0.0;
    for (qi, qv) in vectors.iter().enumerate() {
        let mut exact: Vec<(usize, f32)> = vectors
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != qi)
            .map(|(i, v)| (i, dot(qv, v)))
            .collect();
        exact.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let want: Vec<usize> = exact.iter().take(10).map(|x| x.0).collect();
        let got = m.nearest(&Query::new(qv), 10, |i| i != qi);
        recall += got.iter().filter(|(i, _)| want.contains(i)).count() as f64 / 10.0;
    }
    println!(
        "i8 quantisation recall@10 vs float32: {:.3} ({} queries over {} products)",
        recall / vectors.len() as f64,
        vectors.len(),
        vectors.len()
    );

    // The scan over 100,000 rows (the real vectors repeated with their
    // codes perturbed, so rows differ), top 200, no filter.
    let mut big = Matrix::new(DIM);
    let mut noise = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..100_000 {
        let v: Vec<f32> = vectors[i % vectors.len()]
            .iter()
            .map(|x| {
                noise ^= noise << 13;
                noise ^= noise >> 7;
                noise ^= noise << 17;
                x + ((noise >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02
            })
            .collect();
        big.push(Some(&v));
    }
    println!(
        "matrix: {} rows, {:.1} MB ({} bytes per row)",
        big.len(),
        big.bytes() as f64 / 1e6,
        big.bytes() / big.len()
    );
    let queries: Vec<Query> = vectors.iter().take(64).map(|v| Query::new(v)).collect();
    let mut t = Vec::new();
    for round in 0..4 {
        for q in &queries {
            let start = Instant::now();
            let hits = big.nearest(q, 200, |_| true);
            let took = start.elapsed();
            assert_eq!(hits.len(), 200);
            if round > 0 {
                t.push(took);
            }
        }
    }
    report("exact quantised scan, 100,000 rows, top 200", t);
}
