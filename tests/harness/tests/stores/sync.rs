//! Sync against the MongoDB-compatible server: a 50,000-record Shopify feed
//! with 1% invalid records, then the same feed again.

use crate::common;

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
    let job = common::final_job(client, &resp.job_id).await;
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
    let env = Env::from_pairs(mongo.service_vars(&db)).with_all([("DISCOVERY_SYNC_PORT", "0")]);
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

    // Replaying the first job's dead letters re-validates them: still invalid,
    // they move to the replay job with today's reason; nothing is lost.
    let replay = client
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            ids: Vec::new(),
            job_id: first.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let replayed = common::final_job(&mut client, &replay).await;
    assert_eq!(
        (
            replayed.received as usize,
            replayed.rejected as usize,
            replayed.upserted
        ),
        (bad, bad, 0),
        "{replayed:?}"
    );
    let count = |job: String| {
        let mut c = client.clone();
        async move {
            c.list_dead_letters(pb::ListDeadLettersRequest {
                job_id: job,
                page: None,
            })
            .await
            .unwrap()
            .into_inner()
            .page
            .unwrap()
            .total_size
        }
    };
    let moved = discovery_harness::eventually(Duration::from_secs(10), async || {
        count(first.job_id.clone()).await == 0
    })
    .await;
    assert!(moved, "originals removed once the replay job succeeded");
    assert_eq!(count(replay.clone()).await as usize, bad);
    let err = client
        .replay_dead_letters(pb::ReplayDeadLettersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

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
}

mod feed {
    use super::*;
    use discovery_harness::RedisCluster;
    use discovery_proto::v1::cache_admin_client::CacheAdminClient;
    use discovery_proto::v1::recommendation_client::RecommendationClient;

    fn product_line(i: usize, price: &str, updated: &str) -> String {
        format!(
            concat!(
                r#"{{"id": {i}, "title": "Feed Model {i}", "vendor": "Feedco", "tags": "shape:aviator, material:metal, size:55-18-140, width:135","#,
                r#" "updated_at": "{u}", "variants": [{{"sku": "FEED-{i}", "price": "{p}", "option1": "Gold", "inventory_quantity": 5}}]}}"#,
                "\n"
            ),
            i = i,
            p = price,
            u = updated
        )
    }

    async fn send(client: &mut SyncClient<Channel>, lines: String) -> String {
        let msgs = vec![
            pb::IngestCatalogRequest {
                item: Some(pb::ingest_catalog_request::Item::Header(pb::IngestHeader {
                    source: "shop".into(),
                    format: pb::FeedFormat::ShopifyNdjson as i32,
                    idempotency_key: String::new(),
                })),
            },
            pb::IngestCatalogRequest {
                item: Some(pb::ingest_catalog_request::Item::NdjsonChunk(
                    lines.into_bytes(),
                )),
            },
        ];
        client
            .ingest_catalog(futures::stream::iter(msgs))
            .await
            .unwrap()
            .into_inner()
            .job_id
    }

    fn price_in(resp: &pb::RecommendResponse, id: &str) -> Option<i64> {
        resp.items
            .iter()
            .filter_map(|i| i.product.as_ref())
            .find(|p| p.id == id)
            .and_then(|p| p.price.as_ref())
            .map(|m| m.amount_minor)
    }

    fn feedco() -> pb::RecommendRequest {
        pb::RecommendRequest {
            filter: Some(pb::ProductFilter {
                brands: vec!["Feedco".into()],
                ..Default::default()
            }),
            page: Some(pb::PageRequest {
                page_size: 100,
                page_token: String::new(),
            }),
            ..Default::default()
        }
    }

    async fn catalog_size(c: &mut CacheAdminClient<Channel>) -> u64 {
        c.get_cache_status(pb::GetCacheStatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .catalog_size
    }

    /// Collects change sequences from a watcher until told to stop.
    fn watch(
        mut client: SyncClient<Channel>,
        after: u64,
        seen: std::sync::Arc<parking_lot_free::Seen>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let Ok(resp) = client
                .watch_catalog_changes(pb::WatchCatalogChangesRequest {
                    after_sequence: after,
                })
                .await
            else {
                return;
            };
            let mut s = resp.into_inner();
            while let Ok(Some(c)) = s.message().await {
                seen.push(c.sequence, c.product_id);
            }
        })
    }

    mod parking_lot_free {
        use std::sync::Mutex;
        #[derive(Default)]
        pub struct Seen(pub Mutex<Vec<(u64, String)>>);
        impl Seen {
            pub fn push(&self, s: u64, id: String) {
                self.0.lock().unwrap().push((s, id));
            }
            pub fn max(&self) -> u64 {
                self.0
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|x| x.0)
                    .max()
                    .unwrap_or(0)
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn feed_changes_reach_both_replicas_and_survive_a_sync_restart() {
        let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
            .await
            .unwrap()
            .expect("redis");
        let mongo = MongoServer::start().await.expect("mongo");
        let db = mongo.fresh_db("feed");
        let base = Env::from_pairs(mongo.service_vars(&db))
            .with_all([
                ("DISCOVERY_CATALOG_REFRESH", "0s"),
                ("DISCOVERY_SIGNALS_REFRESH", "0s"),
                ("DISCOVERY_WARM_INTERVAL", "0s"),
                ("DISCOVERY_RECOMMENDATION_PORT", "0"),
                ("DISCOVERY_SYNC_PORT", "0"),
            ])
            .with("DISCOVERY_REDIS_URLS", cluster.urls().join(","));
        let stop_all = CancellationToken::new();
        let reco = |env: Env, t: CancellationToken| async move {
            discovery_recommendation::spawn(
                discovery_recommendation::Config::from_env(&env).unwrap(),
                t,
            )
            .await
            .unwrap()
        };
        let a = reco(base.clone(), stop_all.clone()).await;
        let b = reco(base.clone(), stop_all.clone()).await;
        let channel = |addr: std::net::SocketAddr| {
            Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_lazy()
        };
        let (mut ra, mut rb) = (
            RecommendationClient::new(channel(a.addr)),
            RecommendationClient::new(channel(b.addr)),
        );
        let (mut aa, mut ab) = (
            CacheAdminClient::new(channel(a.addr)),
            CacheAdminClient::new(channel(b.addr)),
        );
        let sync_env = base.clone().with(
            "DISCOVERY_RECOMMENDATION_URLS",
            format!("http://{}", a.addr),
        );
        let first_stop = CancellationToken::new();
        let s1 = discovery_sync::spawn(
            discovery_sync::Config::from_env(&sync_env).unwrap(),
            first_stop.clone(),
        )
        .await
        .unwrap();
        let mut c1 = SyncClient::new(channel(s1.addr));
        let seen = std::sync::Arc::new(parking_lot_free::Seen::default());
        let w1 = watch(c1.clone(), 0, seen.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;

        // 1. A feed of 100 frames reaches both replicas through the change stream.
        let lines: String = (0..100)
            .map(|i| product_line(i, "100.00", "2026-01-01T00:00:00Z"))
            .collect();
        let started = Instant::now();
        send(&mut c1, lines).await;
        let mut arrived = None;
        while started.elapsed() < Duration::from_secs(60) {
            if catalog_size(&mut aa).await == 100 && catalog_size(&mut ab).await == 100 {
                arrived = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let arrived = arrived.expect("100 frames on both replicas");
        let before = ra.recommend(feedco()).await.unwrap().into_inner();
        rb.recommend(feedco()).await.unwrap();
        let target = "shop:7";
        assert_eq!(price_in(&before, target), Some(10_000));

        // 2. A price change in the feed shows in Recommend on both replicas.
        let started = Instant::now();
        send(&mut c1, product_line(7, "80.00", "2026-02-01T00:00:00Z")).await;
        let mut visible = None;
        while started.elapsed() < Duration::from_secs(30) {
            let pa = price_in(&ra.recommend(feedco()).await.unwrap().into_inner(), target);
            let pb_ = price_in(&rb.recommend(feedco()).await.unwrap().into_inner(), target);
            if pa == Some(8_000) && pb_ == Some(8_000) {
                visible = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let visible = visible.expect("new price visible on both replicas");

        // 3. Stop sync mid-job, write more meanwhile, start a new sync: it
        // resumes from the checkpoint and nothing is lost.
        let more: String = (100..1100)
            .map(|i| product_line(i, "120.00", "2026-01-01T00:00:00Z"))
            .collect();
        let job = send(&mut c1, more).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        first_stop.cancel();
        s1.wait().await.unwrap();
        w1.abort();
        let seen_before_restart = seen.max();
        // The job's writers finish in the background while no feed runs.
        let products = mongodb::Client::with_uri_str(mongo.uri()).await.unwrap();
        let products = products
            .database(&db)
            .collection::<discovery_kit::store::Document>("products");
        for _ in 0..600 {
            if products
                .count_documents(discovery_kit::store::doc! {})
                .await
                .unwrap()
                == 1100
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = job;
        let s2 = discovery_sync::spawn(
            discovery_sync::Config::from_env(&sync_env).unwrap(),
            stop_all.clone(),
        )
        .await
        .unwrap();
        let c2 = SyncClient::new(channel(s2.addr));
        let w2 = watch(c2, seen_before_restart, seen.clone());
        let started = Instant::now();
        let mut complete = false;
        while started.elapsed() < Duration::from_secs(120) {
            if catalog_size(&mut aa).await == 1100 && catalog_size(&mut ab).await == 1100 {
                complete = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            complete,
            "every product written while sync was down reached both replicas"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        w2.abort();
        // Counting events: one change per write (1100 inserts + 1 price change),
        // sequences 1..=1101 with no gap and no repeat across the restart.
        let mut seqs: Vec<u64> = seen.0.lock().unwrap().iter().map(|x| x.0).collect();
        let raw = seqs.len();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), 1101, "distinct sequences seen");
        assert_eq!(
            raw, 1101,
            "no change seen twice by a watcher resuming by sequence"
        );
        let ids: std::collections::HashSet<String> =
            seen.0.lock().unwrap().iter().map(|x| x.1.clone()).collect();
        assert_eq!(ids.len(), 1100, "every product's change was seen");
        assert_eq!(seqs.first(), Some(&1));
        assert_eq!(seqs.last(), Some(&1101));
        eprintln!(
            "sync feed: 100 frames on both replicas after {arrived:?}; price change visible on both after \
             {visible:?}; sync stopped after sequence {seen_before_restart}, restarted, all 1100 frames \
             on both replicas after {:?}, 1101 changes counted with no gap",
            started.elapsed()
        );
        stop_all.cancel();
        a.wait().await.unwrap();
        b.wait().await.unwrap();
        s2.wait().await.unwrap();
    }
}
