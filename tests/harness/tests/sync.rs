//! Sync against the MongoDB-compatible server: a 50,000-record Shopify feed
//! with 1% invalid records, then the same feed again.

use std::time::{Duration, Instant};

use discovery_harness::MongoServer;
use discovery_kit::CancellationToken;
use discovery_kit::config::Env;
use discovery_proto::v1 as pb;
use discovery_proto::v1::sync_client::SyncClient;
use tonic::transport::Channel;

/// One Shopify product line; every 100th is invalid (a 190 mm frame).
fn record(i: usize) -> String {
    let width = if i % 100 == 99 { 190 } else { 120 + (i % 40) };
    format!(
        concat!(
            r#"{{"id": {i}, "title": "Acme Model {i}", "vendor": "Acme", "tags": "shape:round, material:acetate, size:50-20-145, width:{w}, vintage","#,
            r#" "updated_at": "2026-01-01T00:00:00Z", "variants": [{{"sku": "ACME-{i}", "price": "99.00", "option1": "Black", "inventory_quantity": 3}}]}}"#,
            "\n"
        ),
        i = i,
        w = width
    )
}

async fn ingest(client: &mut SyncClient<Channel>, n: usize) -> pb::SyncJob {
    let header = pb::IngestCatalogRequest {
        item: Some(pb::ingest_catalog_request::Item::Header(pb::IngestHeader {
            source: "shopify:acme".into(),
            format: pb::FeedFormat::ShopifyNdjson as i32,
            idempotency_key: String::new(),
        })),
    };
    // 64 KiB chunks: lines span chunk boundaries.
    let mut body = String::new();
    for i in 0..n {
        body.push_str(&record(i));
    }
    let bytes = body.into_bytes();
    let chunks: Vec<pb::IngestCatalogRequest> = bytes
        .chunks(64 * 1024)
        .map(|c| pb::IngestCatalogRequest {
            item: Some(pb::ingest_catalog_request::Item::NdjsonChunk(c.to_vec())),
        })
        .collect();
    let stream = futures::stream::iter(std::iter::once(header).chain(chunks));
    let resp = client
        .ingest_catalog(stream)
        .await
        .expect("ingest")
        .into_inner();
    assert_eq!(resp.received as usize, n);
    // Wait for the writers through WatchSyncJob's final message.
    let mut watch = client
        .watch_sync_job(pb::WatchSyncJobRequest {
            job_id: resp.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(j) = watch.message().await.unwrap() {
        last = Some(j);
    }
    let job = last.expect("at least one progress message");
    assert_eq!(job.state, pb::SyncJobState::Succeeded as i32, "{job:?}");
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_records_one_percent_invalid_then_all_unchanged() {
    let n: usize = std::env::var("DISCOVERY_TEST_FEED_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let mongo = MongoServer::start().await.expect("start mongo");
    let db = mongo.fresh_db("sync");
    let shutdown = CancellationToken::new();
    let env = Env::from_pairs([
        ("DISCOVERY_SYNC_PORT", "0"),
        ("DISCOVERY_METRICS_PORT", "0"),
        ("DISCOVERY_SHUTDOWN_GRACE", "1s"),
        ("DISCOVERY_STORE", "mongodb"),
        ("DISCOVERY_MONGO_MIN_POOL", "0"),
    ])
    .with("DISCOVERY_MONGO_URI", mongo.uri())
    .with("DISCOVERY_MONGO_DATABASE", db.clone());
    let sync = discovery_sync::spawn(
        discovery_sync::Config::from_env(&env).unwrap(),
        shutdown.clone(),
    )
    .await
    .expect("sync starts");
    let mut client = SyncClient::connect(format!("http://{}", sync.addr))
        .await
        .unwrap();

    let started = Instant::now();
    let first = ingest(&mut client, n).await;
    let first_took = started.elapsed();
    let bad = n / 100;
    assert_eq!(first.received as usize, n);
    assert_eq!(first.upserted as usize, n - bad, "{first:?}");
    assert_eq!(first.rejected as usize, bad);
    assert_eq!(first.unchanged, 0);

    let letters = client
        .list_dead_letters(pb::ListDeadLettersRequest {
            job_id: first.job_id.clone(),
            page: Some(pb::PageRequest {
                page_size: 500,
                page_token: String::new(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(letters.page.unwrap().total_size as usize, bad);
    let l = &letters.dead_letters[0];
    assert!(l.reason.contains("total_width_mm 190"), "{}", l.reason);
    assert!(
        String::from_utf8_lossy(&l.payload).contains("width:190"),
        "the original payload is kept"
    );

    // The products really are in the database, namespaced by source.
    let client_db = mongodb::Client::with_uri_str(mongo.uri()).await.unwrap();
    let products = client_db
        .database(&db)
        .collection::<discovery_kit::store::Document>("products");
    assert_eq!(
        products
            .count_documents(discovery_kit::store::doc! {})
            .await
            .unwrap() as usize,
        n - bad
    );
    assert!(
        products
            .find_one(discovery_kit::store::doc! {"_id": "shopify:acme:0"})
            .await
            .unwrap()
            .is_some()
    );

    // The same feed again: nothing changes.
    let started = Instant::now();
    let second = ingest(&mut client, n).await;
    let second_took = started.elapsed();
    assert_eq!(second.upserted, 0, "{second:?}");
    assert_eq!(second.unchanged as usize, n - bad);
    assert_eq!(second.rejected as usize, bad);

    // Bad streams get clear errors.
    let err = client
        .ingest_catalog(futures::stream::iter(vec![pb::IngestCatalogRequest {
            item: Some(pb::ingest_catalog_request::Item::NdjsonChunk(
                b"{}".to_vec(),
            )),
        }]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client
        .get_sync_job(pb::GetSyncJobRequest {
            job_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    eprintln!(
        "sync: {n} records ({bad} invalid) into {:?}: first run {first_took:.1?} ({:.0} records/s), \
         same feed again {second_took:.1?}, all unchanged",
        mongo.flavor(),
        n as f64 / first_took.as_secs_f64()
    );
    shutdown.cancel();
    sync.wait().await.unwrap();
    let _ = Duration::ZERO;
}
