//! The recommendation report and the impression log against the
//! MongoDB-compatible server the test harness starts.
//!
//! `cargo bench -p discovery-recommendation --bench report`
//!
//! 1. The impression log's worker: `IMPRESSIONS` pages through
//!    [`Log`] into `recommendations` and the rollups: impressions per second
//!    it sustains (the queue is what absorbs bursts above it).
//! 2. `GetRecommendationReport` over a week of 1,000,000 impressions: the
//!    rollup documents two replicas write for them (2 variants x 3
//!    placements x 8 face shapes, in the 5-minute, hourly and daily buckets
//!    their retention keeps, as [`rollup_document`] builds them), then the
//!    1 h, 24 h and 7 d reports, five times each. The report reads rollups, never the
//!    impressions, so its cost follows buckets x groups x replicas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use discovery_kit::cache::{Cache, CacheConfig};
use discovery_kit::store::mongo::{MongoConfig, MongoStore};
use discovery_kit::store::{Store, Workload};
use discovery_recommendation::experiments::Assignment;
use discovery_recommendation::impressions::{
    ImpressionRef, Log, ROLLUPS, Window, buckets, kept_for, read_report, rollup_document,
};
use discovery_recommendation::report::{Dims, Totals};

discovery_kit::global_allocator!();

const IMPRESSIONS: usize = 20_000;
const WEEK: u64 = 1_000_000;

fn page(n: usize) -> bytes::Bytes {
    use bytes::BufMut;
    let mut b = bytes::BytesMut::new();
    b.put_u16_le(n as u16);
    for i in 0..n {
        let id = format!("shopify:bench:{i}");
        b.put_u8(id.len() as u8);
        b.put_slice(id.as_bytes());
        b.put_u64_le(i as u64);
    }
    b.freeze()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let server = match discovery_harness::MongoServer::start().await {
        Ok(s) => s,
        Err(e) => {
            println!("report bench skipped: {e}");
            return;
        }
    };
    let db = server.fresh_db("report_bench");
    let store: Store = Arc::new(
        MongoStore::connect(
            &MongoConfig::for_tests(&server.uri(), &db),
            Workload::ReadMostly,
        )
        .await
        .expect("connect"),
    );
    discovery_recommendation::ensure_schema(&store)
        .await
        .expect("indexes");
    println!("store: {:?}", server.flavor());

    // 1. The worker.
    let cache = Arc::new(
        Cache::new(&CacheConfig::l1_only(1 << 20))
            .await
            .expect("cache"),
    );
    let stop = discovery_kit::CancellationToken::new();
    let (log, task) = Log::start(store.clone(), cache, 7, stop.clone());
    let assignment = Arc::new(Assignment {
        experiment: "bench".into(),
        variant: "a".into(),
        label: "bench/a".into(),
        ranking: Default::default(),
    });
    let shown = page(20);
    let now = discovery_kit::now_unix_ms();
    let t = Instant::now();
    let mut queued = 0;
    for i in 0..IMPRESSIONS {
        let session = format!("s{i}");
        let imp = ImpressionRef {
            id: rand::random(),
            at: now,
            assignment: &assignment,
            placement: "home",
            face_shape: "round",
            user_id: "",
            session_id: &session,
            client: None,
            catalog_version: 1,
        };
        // Offered as fast as the queue takes them; when it is full, wait.
        while log.queued() + 1 >= discovery_recommendation::impressions::QUEUE {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        queued += usize::from(log.impression(imp, shown.clone()));
    }
    while log.queued() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    task.await.expect("worker");
    let took = t.elapsed();
    let stored = store
        .count(
            discovery_recommendation::impressions::RECOMMENDATIONS,
            discovery_kit::store::doc! {},
        )
        .await
        .expect("count");
    println!(
        "impression log: {queued} pages of 20 products queued, {stored} stored in {took:.1?}: \
         {:.0} impressions/s into the store (dropped {})",
        stored as f64 / took.as_secs_f64(),
        log.dropped()
    );

    // 2. A week of rollups for 1,000,000 impressions from two replicas.
    let placements = ["home", "product_page", "after_analysis"];
    let shapes = [
        "oval", "round", "square", "heart", "diamond", "oblong", "triangle", "any",
    ];
    let mut groups = Vec::new();
    for v in ["control", "fit"] {
        for p in placements {
            for s in shapes {
                groups.push(Dims {
                    experiment: "bench".into(),
                    variant: v.into(),
                    placement: p.into(),
                    face_shape: s.into(),
                });
            }
        }
    }
    let step = 300_000i64; // one impression batch per 5 minutes per replica
    let start = now - 7 * 86_400_000;
    let slots = (7 * 86_400_000 / step) as u64;
    let per = WEEK / (slots * 2 * groups.len() as u64);
    let mut totals: std::collections::HashMap<(String, &'static str, i64, usize), Totals> =
        Default::default();
    let mut written = 0u64;
    for r in 0..2 {
        for k in 0..slots {
            let at = start + k as i64 * step;
            for (g, _) in groups.iter().enumerate() {
                for (gran, bucket) in buckets(at) {
                    // What retention (the TTL index) would have left.
                    if bucket + kept_for(gran) <= now {
                        continue;
                    }
                    let t = totals
                        .entry((format!("replica{r}"), gran, bucket, g))
                        .or_default();
                    t.impressions += per;
                    t.clicked += per / 5;
                    t.purchased += per / 20;
                    *t.revenue_minor.entry("EUR".into()).or_default() += (per / 20) as i64 * 12_900;
                }
                written += per;
            }
        }
    }
    let docs: Vec<_> = totals
        .iter()
        .map(|((replica, gran, bucket, g), t)| {
            rollup_document(replica, gran, *bucket, &groups[*g], t)
        })
        .collect();
    let n = docs.len();
    let t = Instant::now();
    for chunk in docs.chunks(2_000) {
        store
            .bulk_upsert(ROLLUPS, chunk.to_vec())
            .await
            .expect("write rollups");
    }
    println!(
        "a week of {written} impressions from 2 replicas: {n} rollup documents written in {:.1?}",
        t.elapsed()
    );
    for (name, window) in [
        ("1 h", Window::Hour),
        ("24 h", Window::Day),
        ("7 d", Window::Week),
    ] {
        let mut times = Vec::new();
        let mut seen = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let (r, _) = read_report(&store, window, "bench", discovery_kit::now_unix_ms())
                .await
                .expect("report");
            times.push(t.elapsed());
            seen = r.total.impressions;
        }
        times.sort();
        println!(
            "GetRecommendationReport {name}: {seen} impressions, p50 {:.1?} max {:.1?}",
            times[2], times[4]
        );
    }
}
