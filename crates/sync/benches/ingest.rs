//! Sync's hot paths, measured side by side in one run.
//!
//! `cargo bench -p discovery-sync --bench ingest`
//!
//! (a) the pipeline (decode NDJSON, map Shopify, validate, batch) into a
//!     no-op sink, one core: records/s;
//! (b) sync into the MongoDB-compatible server vs a bare driver loop doing
//!     the same unordered newer-wins bulk upserts in batches of 1,000;
//! (c) change-to-invalidation latency: a product written to the database
//!     until a recommendation replica serves it (change stream -> sync ->
//!     ApplyCatalogChange);
//! (d) peak memory while 1,000,000 records stream into a deliberately slow
//!     sink, 100 ms per batch (backpressure).
//!
//! Environment: `DISCOVERY_BENCH_SKIP_MONGO=1` runs (a) and (d) only;
//! `DISCOVERY_BENCH_DB_RECORDS` (default 20,000) sizes (b);
//! `DISCOVERY_BENCH_SLOW_RECORDS` (default 1,000,000) sizes (d).

use std::sync::Arc;
use std::time::{Duration, Instant};

use discovery_kit::store::{
    BulkOutcome, ChangeStream, Document, DocumentStore, FindOptions, GuardedOutcome, GuardedSet,
    IndexSpec, RawDocumentBuf, ResumeToken, Store, StoreError, doc,
};
use discovery_proto::v1 as pb;
use discovery_sync::ingest::{BATCH, Jobs};

discovery_kit::global_allocator!();

/// A store that accepts everything and keeps nothing, optionally slowly.
#[derive(Debug)]
struct Sink {
    delay: Duration,
}

#[async_trait::async_trait]
impl DocumentStore for Sink {
    fn kind(&self) -> &'static str {
        "sink"
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn ensure_indexes(&self, _: &str, _: &[IndexSpec]) -> Result<(), StoreError> {
        Ok(())
    }
    async fn drop_index(&self, _: &str, _: &str) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn index_names(&self, _: &str) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    async fn get(&self, _: &str, _: &str) -> Result<Option<Document>, StoreError> {
        Ok(None)
    }
    async fn put(&self, _: &str, _: Document) -> Result<(), StoreError> {
        Ok(())
    }
    async fn delete(&self, _: &str, _: &str) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn find(
        &self,
        _: &str,
        _: Document,
        _: FindOptions,
    ) -> Result<Vec<Document>, StoreError> {
        Ok(Vec::new())
    }
    async fn count(&self, _: &str, _: Document) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn bulk_upsert(&self, _: &str, docs: Vec<Document>) -> Result<BulkOutcome, StoreError> {
        tokio::time::sleep(self.delay).await;
        Ok(BulkOutcome {
            upserted: docs.len() as u64,
            ..Default::default()
        })
    }
    async fn bulk_upsert_newer(
        &self,
        _: &str,
        docs: Vec<RawDocumentBuf>,
        _: &str,
    ) -> Result<GuardedOutcome, StoreError> {
        tokio::time::sleep(self.delay).await;
        Ok(GuardedOutcome {
            inserted: docs.len() as u64,
            ..Default::default()
        })
    }
    async fn bulk_set_if(&self, _: &str, _: Vec<GuardedSet>) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn watch(&self, _: &str, _: Option<ResumeToken>) -> Result<ChangeStream, StoreError> {
        Ok(Box::pin(futures::stream::pending()))
    }
}

fn line(i: usize, out: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        r#"{{"id": {i}, "title": "Bench Model {i}", "vendor": "Benchco", "body_html": "<p>A <b>light</b> frame.</p>", "tags": "shape:round, material:titanium, size:49-21-145, width:{w}, minimal, lightweight", "updated_at": "2026-03-01T10:00:00Z", "variants": [{{"sku": "B-{i}-1", "price": "129.00", "option1": "Gold", "inventory_quantity": 4}}, {{"sku": "B-{i}-2", "price": "129.00", "option1": "Silver", "inventory_quantity": 0}}]}}"#,
        w = 125 + i % 30
    );
}

fn header() -> pb::IngestHeader {
    pb::IngestHeader {
        source: "bench".into(),
        format: pb::FeedFormat::ShopifyNdjson as i32,
        idempotency_key: String::new(),
    }
}

/// Streams `n` records in 64 KiB chunks through a job on `store`; returns
/// (elapsed, final job).
async fn run(store: Store, n: usize) -> (Duration, pb::SyncJob) {
    let jobs = Arc::new(Jobs::default());
    let started = Instant::now();
    let mut intake = jobs
        .start(store, format!("bench-{n}"), &header())
        .await
        .expect("job");
    let job = intake.job().clone();
    let mut buf = String::with_capacity(80 * 1024);
    for i in 0..n {
        line(i, &mut buf);
        if buf.len() >= 64 * 1024 {
            intake.chunk(buf.as_bytes()).await.expect("chunk");
            buf.clear();
        }
    }
    intake.chunk(buf.as_bytes()).await.expect("chunk");
    intake.finish().await.expect("finish");
    let mut rx = job.subscribe();
    while !job.is_done() {
        let _ = rx.changed().await;
    }
    (started.elapsed(), job.to_proto())
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let one_core = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // (a)
    let n = 300_000;
    let (t, job) = one_core.block_on(run(
        Arc::new(Sink {
            delay: Duration::ZERO,
        }),
        n,
    ));
    assert_eq!(job.upserted as usize, n);
    println!(
        "(a) pipeline into a no-op sink, one core: {n} records in {t:.2?} = {:.0} records/s",
        n as f64 / t.as_secs_f64()
    );

    // (d)
    let slow_n = env_usize("DISCOVERY_BENCH_SLOW_RECORDS", 1_000_000);
    let before = peak_rss_kib();
    let (t, job) = one_core.block_on(run(
        Arc::new(Sink {
            delay: Duration::from_millis(100),
        }),
        slow_n,
    ));
    assert_eq!(job.upserted as usize, slow_n);
    println!(
        "(d) {slow_n} records into a sink taking 100 ms per {BATCH}-record batch: {t:.1?} \
         ({:.0} records/s, bounded by the sink); peak RSS {} MiB before, {} MiB after",
        slow_n as f64 / t.as_secs_f64(),
        before / 1024,
        peak_rss_kib() / 1024
    );

    if std::env::var_os("DISCOVERY_BENCH_SKIP_MONGO").is_some() {
        println!("(b), (c) skipped (DISCOVERY_BENCH_SKIP_MONGO)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(database_side(env_usize(
        "DISCOVERY_BENCH_DB_RECORDS",
        20_000,
    )));
}

async fn database_side(n: usize) {
    use discovery_kit::store::mongo::{MongoConfig, MongoStore};
    let server = match discovery_harness::MongoServer::start().await {
        Ok(s) => s,
        Err(e) => {
            println!("(b), (c) skipped: {e}");
            return;
        }
    };
    // (b) bare driver loop: the same documents, the same guarded upserts.
    let client = mongodb::Client::with_uri_str(server.uri())
        .await
        .expect("client");
    let bare_db = client.database(&server.fresh_db("bare"));
    let jobs = Arc::new(Jobs::default());
    let mut docs = Vec::with_capacity(n);
    {
        // Map and validate outside the timed region: the bare loop only writes.
        let mut buf = String::new();
        for i in 0..n {
            buf.clear();
            line(i, &mut buf);
            let f = discovery_sync::records::decode_raw(
                discovery_sync::records::Format::Shopify,
                "bench",
                buf.trim_end().as_bytes(),
            )
            .expect("decode");
            docs.push(f.to_document());
        }
    }
    let started = Instant::now();
    for chunk in docs.chunks(BATCH) {
        let updates: Vec<Document> = chunk
            .iter()
            .map(|d| {
                let v = d.get_document("metadata").ok().and_then(|m| m.get("updated_at").cloned());
                doc! {
                    "q": {"_id": d.get_str("_id").unwrap_or_default(), "metadata.updated_at": {"$not": {"$gte": v}}},
                    "u": d.clone(),
                    "upsert": true,
                }
            })
            .collect();
        bare_db
            .run_command(doc! {
                "update": "products",
                "updates": updates,
                "ordered": false,
                "writeConcern": {"w": "majority", "j": true},
            })
            .await
            .expect("bare bulk write");
    }
    let bare = started.elapsed();
    drop(jobs);
    let cfg = MongoConfig::for_tests(&server.uri(), &server.fresh_db("sync"));
    let store: Store = Arc::new(
        MongoStore::connect(&cfg, discovery_kit::store::Workload::Realtime)
            .await
            .expect("store"),
    );
    let (ours, job) = run(store, n).await;
    assert_eq!(job.upserted as usize, n, "{job:?}");
    println!(
        "(b) {n} records into {:?}: bare driver loop {bare:.1?} ({:.0}/s, writes only), sync {ours:.1?} \
         ({:.0}/s, decode + validate + write); sync / bare throughput = {:.2}",
        server.flavor(),
        n as f64 / bare.as_secs_f64(),
        n as f64 / ours.as_secs_f64(),
        bare.as_secs_f64() / ours.as_secs_f64()
    );

    // (c) change-to-invalidation latency.
    let db = server.fresh_db("latency");
    let env = discovery_kit::config::Env::from_pairs(server.service_vars(&db)).with_all([
        ("DISCOVERY_CATALOG_REFRESH", "0s"),
        ("DISCOVERY_SIGNALS_REFRESH", "0s"),
        ("DISCOVERY_WARM_INTERVAL", "0s"),
        ("DISCOVERY_RECOMMENDATION_PORT", "0"),
        ("DISCOVERY_SYNC_PORT", "0"),
        ("DISCOVERY_DEMO_CATALOG", "200"),
    ]);
    let stop = discovery_kit::CancellationToken::new();
    let reco = discovery_recommendation::spawn(
        discovery_recommendation::Config::from_env(&env).expect("config"),
        stop.clone(),
    )
    .await
    .expect("recommendation");
    let env = env.with(
        "DISCOVERY_RECOMMENDATION_URLS",
        format!("http://{}", reco.addr),
    );
    let sync = discovery_sync::spawn(
        discovery_sync::Config::from_env(&env).expect("config"),
        stop.clone(),
    )
    .await
    .expect("sync");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut catalog = discovery_proto::v1::catalog_client::CatalogClient::connect(format!(
        "http://{}",
        reco.addr
    ))
    .await
    .expect("client");
    let products = client.database(&db).collection::<Document>("products");
    let mut lat = Vec::new();
    for k in 0..60i64 {
        let id = format!("frm-{:05}", k % 200);
        let mut d = products
            .find_one(doc! {"_id": &id})
            .await
            .expect("read")
            .expect("product");
        let price = 1000.0 + k as f64;
        d.insert("price", price);
        let started = Instant::now();
        products
            .replace_one(doc! {"_id": &id}, d)
            .await
            .expect("write");
        loop {
            let p = catalog
                .get_product(pb::GetProductRequest { id: id.clone() })
                .await
                .expect("get")
                .into_inner()
                .product
                .expect("product");
            if p.price.map(|m| m.amount_minor) == Some((price * 100.0) as i64) {
                break;
            }
            if started.elapsed() > Duration::from_secs(10) {
                panic!("change to {id} never arrived");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lat.push(started.elapsed());
    }
    lat.sort();
    println!(
        "(c) database write -> replica serves it ({:?}, 60 changes): p50 {:.1?} p99 {:.1?} max {:.1?}",
        server.flavor(),
        lat[lat.len() / 2],
        lat[(lat.len() - 1) * 99 / 100],
        lat[lat.len() - 1]
    );
    stop.cancel();
    let _ = reco.wait().await;
    let _ = sync.wait().await;
}
