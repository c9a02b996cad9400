//! `SearchProducts` at catalogue scale, through the service's handler (no
//! network), lexical and hybrid side by side in one run:
//!
//! - a 100,000-frame snapshot with embeddings (frame `i` carries the real
//!   embedding of demo frame `i % 520`'s text: embedding 100,000 texts here
//!   would take half an hour, and the scan's cost does not depend on the
//!   values), its memory per frame for the vectors;
//! - the query's embedding alone, computed and from the cache;
//! - the 64 queries of `tests/eval/search.json`, each asked:
//!   uncached (no cache at all: understanding, query embedding, lexical
//!   scan, semantic scan, fusion, facets), with the query's embedding
//!   cached (the 2 h `embed` kind) but not the result, and fully cached
//!   (the `search` kind's L1 hit); lexical mode the same ways.
//!
//! `RAYON_NUM_THREADS=1 taskset -c 0 cargo bench -p discovery-recommendation
//! --bench search` for one core; needs `make models`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use discovery_catalog::{Embedding, Frame, demo_catalog};
use discovery_embed::quant::Matrix;
use discovery_embed::{Embedder, model_dir};
use discovery_kit::cache::{Cache, CacheConfig};
use discovery_kit::store::memory::MemoryStore;
use discovery_proto::v1 as pb;
use discovery_proto::v1::catalog_server::Catalog as _;
use discovery_recommendation::api::Service;
use discovery_recommendation::snapshot::{Catalog, Snapshot};

discovery_kit::global_allocator!();

const N: usize = 100_000;
const BASE: usize = 520;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn line(name: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{name:<58} n={:<6} p50={:>9.2?} p99={:>9.2?} max={:>9.2?}",
        v.len(),
        pct(&v, 0.5),
        pct(&v, 0.99),
        v.last().copied().unwrap_or_default()
    );
}

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn queries() -> Vec<String> {
    let raw = std::fs::read_to_string(root().join("tests/eval/search.json")).expect("search.json");
    let v: serde_json::Value = serde_json::from_str(&raw).expect("JSON");
    let only = std::env::var("SEARCH_BENCH_ONLY").ok();
    v["queries"]
        .as_array()
        .expect("queries")
        .iter()
        .filter_map(|q| q["q"].as_str().map(String::from))
        // `SEARCH_BENCH_ONLY=<query>`: that query alone (to profile it).
        .filter(|q| only.as_ref().is_none_or(|o| o == q))
        .collect()
}

async fn service(frames: &[Frame], embedder: &Arc<Embedder>, cache_bytes: u64) -> Service {
    let snapshot = Snapshot::default();
    snapshot.replace(Catalog::new(frames.to_vec(), 1));
    let cache = Arc::new(
        Cache::new(&CacheConfig::l1_only(cache_bytes))
            .await
            .unwrap(),
    );
    Service::new(snapshot, MemoryStore::new(), cache).with_embedder(Some(embedder.clone()))
}

fn request(q: &str, mode: pb::SearchMode, salt: u32) -> pb::SearchProductsRequest {
    pb::SearchProductsRequest {
        query: q.into(),
        mode: mode as i32,
        include_facets: true,
        // A different page size per round misses the result cache (not the
        // query's embedding, keyed by its text).
        page: Some(pb::PageRequest {
            page_size: 10 + salt,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let embedder = Arc::new(
        Embedder::load(&model_dir(&root().join("models")))
            .unwrap_or_else(|e| panic!("{e} (`make models`)")),
    );
    let base = demo_catalog(BASE);
    let texts: Vec<String> = base.iter().map(Frame::embedding_text).collect();
    let mut stored = Vec::with_capacity(BASE);
    for chunk in texts.chunks(32) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        for v in embedder.embed_batch(&refs).expect("embeds") {
            stored.push(Matrix::stored(&v));
        }
    }
    let mut frames = demo_catalog(N);
    for (i, f) in frames.iter_mut().enumerate() {
        let (codes, scale) = stored[i % BASE].clone();
        f.embedding = Some(Embedding {
            model: discovery_embed::MODEL_DIR.into(),
            // As if computed from this frame's own text.
            text_hash: f.embedding_text_hash(),
            codes,
            scale,
        });
    }
    let catalog = Catalog::new(frames.clone(), 1);
    let v = &catalog.features.vectors;
    println!(
        "snapshot: {N} frames, {} with vectors; vector memory {} B/frame",
        (0..v.len()).filter(|&i| v.has(i)).count(),
        v.bytes() / N.max(1)
    );
    let qs = queries();
    drop(catalog);
    let nocache = service(&frames, &embedder, 0).await;
    let cached = service(&frames, &embedder, 512 << 20).await;
    // The service builds its query-understanding lexicon at start; here
    // the first call does (not timed).
    for svc in [&nocache, &cached] {
        svc.search_products(tonic::Request::new(request(
            "warm up",
            pb::SearchMode::Lexical,
            41,
        )))
        .await
        .expect("search");
    }
    const ROUNDS: u32 = 3;
    // The query's embedding alone: computed (the cache off), then an L1
    // hit of the `embed` kind.
    for (name, svc) in [
        ("query embedding: uncached", &nocache),
        ("query embedding: cached (L1 hit)", &cached),
    ] {
        for q in &qs {
            svc.query_vector(q).await.expect("embeds");
        }
        let mut t = Vec::new();
        for _ in 0..ROUNDS {
            for q in &qs {
                let started = Instant::now();
                svc.query_vector(q).await.expect("embeds");
                t.push(started.elapsed());
            }
        }
        line(name, t);
    }
    for mode in [pb::SearchMode::Lexical, pb::SearchMode::Hybrid] {
        let name = if mode == pb::SearchMode::Lexical {
            "lexical"
        } else {
            "hybrid"
        };
        let mut t = Vec::new();
        let mut slowest: Vec<(Duration, &str, u64)> = Vec::new();
        for round in 0..ROUNDS {
            for q in &qs {
                let started = Instant::now();
                let r = nocache
                    .search_products(tonic::Request::new(request(q, mode, round)))
                    .await;
                let d = started.elapsed();
                t.push(d);
                let total = r
                    .expect("search")
                    .into_inner()
                    .page
                    .map_or(0, |p| p.total_size);
                slowest.push((d, q, total));
            }
        }
        line(&format!("{name}: uncached (no cache at all)"), t);
        slowest.sort_by_key(|s| std::cmp::Reverse(s.0));
        slowest.dedup_by(|a, b| a.1 == b.1);
        for (d, q, total) in slowest.iter().take(5) {
            println!("    slowest: {d:>9.2?} {q:?} ({total} matches)");
        }
        // Warm the embeddings, then miss the results.
        for q in &qs {
            cached
                .search_products(tonic::Request::new(request(q, mode, 40)))
                .await
                .expect("search");
        }
        let mut t = Vec::new();
        for round in 0..ROUNDS {
            for q in &qs {
                let started = Instant::now();
                let r = cached
                    .search_products(tonic::Request::new(request(q, mode, round)))
                    .await;
                t.push(started.elapsed());
                r.expect("search");
            }
        }
        line(
            &format!("{name}: query embedding cached, result computed"),
            t,
        );
        let mut t = Vec::new();
        for _ in 0..ROUNDS {
            for q in &qs {
                let started = Instant::now();
                let r = cached
                    .search_products(tonic::Request::new(request(q, mode, 0)))
                    .await;
                t.push(started.elapsed());
                r.expect("search");
            }
        }
        line(&format!("{name}: cached result (L1 hit)"), t);
    }
}
