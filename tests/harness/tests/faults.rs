//! Fault tests: parts of the system fail under load and nothing is lost.
//!
//! - Redis Cluster fully down: recommendation degrades to L1 + origin (the
//!   snapshot), no failed calls, readiness says degraded; when the cluster
//!   is back, L2 fills again.
//! - The MongoDB-compatible server killed and restarted under read load:
//!   recommendation keeps serving from its snapshot, monitoring reports the
//!   services ready but degraded, and a sync feed sent across the outage is
//!   retried and lands whole.
//!
//! (A Redis master killed under load is in `recommendation.rs`, a replica
//! killed behind the gateway in `gateway.rs`, overload in `overload.rs`.)
//! Each test prints calls made, failed and the data checked afterwards.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use discovery_harness::eventually;
use discovery_harness::{MongoServer, RedisCluster, redis_command};
use discovery_kit::CancellationToken;
use discovery_kit::config::Env;
use discovery_kit::store::{Document, doc};
use discovery_proto::v1 as pb;
use discovery_proto::v1::cache_admin_client::CacheAdminClient;
use discovery_proto::v1::catalog_client::CatalogClient;
use discovery_proto::v1::monitoring_client::MonitoringClient;
use discovery_proto::v1::recommendation_client::RecommendationClient;
use discovery_proto::v1::sync_client::SyncClient;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

/// Callers hammering one recommendation replica with the read mix
/// (Recommend over many distinct faces, so misses reach the ranking;
/// SearchProducts; GetProduct), counting what succeeds and what fails.
struct ReadLoad {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<parking_lot::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ReadLoad {
    fn start(channel: Channel, callers: usize, product_ids: Vec<String>) -> Self {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let ids = Arc::new(product_ids);
        let tasks = (0..callers)
            .map(|c| {
                let (ok, failed, errors, stop, ids) = (
                    ok.clone(),
                    failed.clone(),
                    errors.clone(),
                    stop.clone(),
                    ids.clone(),
                );
                let mut reco = RecommendationClient::new(channel.clone());
                let mut catalog = CatalogClient::new(channel.clone());
                tokio::spawn(async move {
                    let mut i = c as u64 * 7919;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let r = match i % 4 {
                            0 | 1 => reco
                                .recommend(pb::RecommendRequest {
                                    face: Some(pb::FaceContext {
                                        face_shape: (1 + i % 7) as i32,
                                        face_width_mm: 120.0 + (i % 40) as f32,
                                        ..Default::default()
                                    }),
                                    // One call in four asks something new
                                    // (a miss: ranked from the snapshot).
                                    filter: (i % 4 == 1).then(|| pb::ProductFilter {
                                        max_price_minor: Some(20_000 + i as i64),
                                        ..Default::default()
                                    }),
                                    ..Default::default()
                                })
                                .await
                                .map(|r| assert!(!r.into_inner().items.is_empty())),
                            2 => catalog
                                .search_products(pb::SearchProductsRequest {
                                    query: ["round", "acetate", "aviator", "titanium"]
                                        [(i % 4) as usize]
                                        .into(),
                                    ..Default::default()
                                })
                                .await
                                .map(|_| ()),
                            _ => catalog
                                .get_product(pb::GetProductRequest {
                                    id: ids[(i as usize) % ids.len()].clone(),
                                })
                                .await
                                .map(|_| ()),
                        };
                        match r {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(s) => {
                                {
                                    let mut e = errors.lock();
                                    if e.len() < 20 {
                                        e.push(format!("{:?}: {}", s.code(), s.message()));
                                    }
                                }
                                // A closed channel fails at once: do not spin.
                                tokio::time::sleep(Duration::from_millis(1)).await;
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Self {
            ok,
            failed,
            errors,
            stop,
            tasks,
        }
    }

    /// (succeeded, failed) so far.
    fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    async fn stop(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            t.await.expect("caller task");
        }
        let (ok, failed) = (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        (ok, failed, std::mem::take(&mut *self.errors.lock()))
    }
}

impl Drop for ReadLoad {
    fn drop(&mut self) {
        // A failed assertion must not leave callers running.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The status of health name `name` on `channel` (None: unknown name).
async fn health(channel: &Channel, name: &str) -> Option<i32> {
    HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: name.into(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status)
}

const SERVING: i32 = tonic_health::ServingStatus::Serving as i32;
const NOT_SERVING: i32 = tonic_health::ServingStatus::NotServing as i32;

async fn demo_ids(channel: &Channel) -> Vec<String> {
    let resp = CatalogClient::new(channel.clone())
        .search_products(pb::SearchProductsRequest {
            page: Some(pb::PageRequest {
                page_size: 100,
                page_token: String::new(),
            }),
            ..Default::default()
        })
        .await
        .expect("list products")
        .into_inner();
    let ids: Vec<String> = resp
        .hits
        .iter()
        .filter_map(|i| i.product.as_ref().map(|p| p.id.clone()))
        .collect();
    assert!(!ids.is_empty(), "the demo catalogue lists products");
    ids
}

/// Keys stored across the cluster's masters.
fn keys_in(cluster: &RedisCluster) -> u64 {
    cluster
        .master_ports()
        .iter()
        .filter_map(|p| redis_command(*p, "DBSIZE").ok())
        .filter_map(|r| r.trim().trim_start_matches(':').parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_fully_down_degrades_to_l1_and_origin_then_recovers() {
    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
        .await
        .unwrap()
        .expect("start redis cluster");
    let shutdown = CancellationToken::new();
    let env = Env::from_pairs([
        ("DISCOVERY_RECOMMENDATION_PORT", "0"),
        ("DISCOVERY_SHUTDOWN_GRACE", "1s"),
        ("DISCOVERY_METRICS_PORT", "0"),
        ("DISCOVERY_DEMO_CATALOG", "600"),
        ("DISCOVERY_WARM_INTERVAL", "0s"),
        ("DISCOVERY_DEPENDENCY_CHECKS", "300ms"),
    ])
    .with("DISCOVERY_REDIS_URLS", cluster.urls().join(","));
    let reco = discovery_recommendation::spawn(
        discovery_recommendation::Config::from_env(&env).expect("config"),
        shutdown.clone(),
    )
    .await
    .expect("replica starts");
    let channel = Channel::from_shared(format!("http://{}", reco.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = CacheAdminClient::new(channel.clone());
    let l2 = |admin: &mut CacheAdminClient<Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .get_cache_status(pb::GetCacheStatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .l2_connected
        }
    };
    assert!(
        eventually(Duration::from_secs(10), || l2(&mut admin)).await,
        "L2 connects"
    );
    let ids = demo_ids(&channel).await;
    let probe = pb::RecommendRequest {
        face: Some(pb::FaceContext {
            face_shape: pb::FaceShape::Oval as i32,
            face_width_mm: 137.0,
            ..Default::default()
        }),
        ..Default::default()
    };
    let answer = |resp: pb::RecommendResponse| -> Vec<String> {
        resp.items
            .into_iter()
            .filter_map(|i| i.product.map(|p| p.id))
            .collect()
    };
    let mut rc = RecommendationClient::new(channel.clone());
    let before = answer(rc.recommend(probe.clone()).await.unwrap().into_inner());

    let load = ReadLoad::start(channel.clone(), 4, ids);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let healthy = load.counts();
    assert!(keys_in(&cluster) > 0, "L2 holds entries while healthy");
    assert_eq!(
        health(&channel, "discovery.dependency.redis").await,
        Some(SERVING)
    );

    // The whole cluster dies.
    cluster.kill_all();
    let killed = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || async {
            health(&channel, "discovery.dependency.redis").await == Some(NOT_SERVING)
        })
        .await,
        "readiness reports Redis down"
    );
    let noticed = killed.elapsed();
    assert_eq!(
        health(&channel, discovery_proto::service_names::RECOMMENDATION).await,
        Some(SERVING),
        "the service stays SERVING: degraded, not down"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = load.counts();
    assert_eq!(
        answer(rc.recommend(probe.clone()).await.unwrap().into_inner()),
        before,
        "the same question gets the same answer without Redis"
    );

    // Back (empty: no persistence), and L2 fills again.
    let restarted =
        tokio::task::spawn_blocking(move || cluster.restart_stopped().map(|()| cluster))
            .await
            .unwrap()
            .expect("cluster back");
    let cluster = restarted;
    let back = Instant::now();
    assert!(
        eventually(Duration::from_secs(20), || async {
            health(&channel, "discovery.dependency.redis").await == Some(SERVING)
        })
        .await,
        "readiness reports Redis back"
    );
    // The load's common questions are L1 hits by now; new ones go to L2.
    let mut fresh = 0;
    assert!(
        eventually(Duration::from_secs(20), || {
            fresh += 1;
            let mut rc = rc.clone();
            let cluster = &cluster;
            async move {
                let mut q = pb::RecommendRequest {
                    face: Some(pb::FaceContext {
                        face_shape: pb::FaceShape::Round as i32,
                        face_width_mm: 150.0,
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                q.filter = Some(pb::ProductFilter {
                    max_price_minor: Some(90_000 + fresh),
                    ..Default::default()
                });
                rc.recommend(q).await.is_ok() && keys_in(cluster) > 0
            }
        })
        .await,
        "L2 fills again after recovery"
    );
    let recovered = back.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, failed, errors) = load.stop().await;
    let after = answer(rc.recommend(probe).await.unwrap().into_inner());
    eprintln!(
        "redis down: calls {} ok / {failed} failed (healthy {}, while down {}, after {}); \
         down noticed in {noticed:?}, L2 refilled {recovered:?} after restart with {} keys; \
         same answer before, during and after: {}",
        ok,
        healthy.0,
        during.0 - healthy.0,
        ok - during.0,
        keys_in(&cluster),
        after == before
    );
    assert_eq!(failed, 0, "no call fails with Redis down: {errors:?}");
    assert!(during.0 > healthy.0 + 50, "calls kept flowing while down");
    assert_eq!(after, before);
    shutdown.cancel();
}

/// One Shopify product line for the outage feed.
fn feed_line(i: usize) -> String {
    format!(
        concat!(
            r#"{{"id": {i}, "title": "Outage Model {i}", "vendor": "Outage", "tags": "shape:square, material:metal, size:52-18-140, width:{w}","#,
            r#" "updated_at": "2026-02-01T00:00:00Z", "variants": [{{"sku": "OUT-{i}", "price": "{p}.00", "option1": "Gold", "inventory_quantity": 2}}]}}"#,
            "\n"
        ),
        i = i,
        w = 125 + i % 20,
        p = 100 + i % 50,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongo_killed_and_restarted_under_read_load_serves_and_loses_no_sync_write() {
    let mut mongo = MongoServer::start().await.expect("start mongo");
    let db = mongo.fresh_db("faults");
    let shutdown = CancellationToken::new();
    let env = Env::from_pairs(mongo.service_vars(&db)).with_all([
        ("DISCOVERY_RECOMMENDATION_PORT", "0"),
        ("DISCOVERY_SYNC_PORT", "0"),
        ("DISCOVERY_MONITORING_PORT", "0"),
        ("DISCOVERY_MONGO_TIMEOUT", "1s"),
        ("DISCOVERY_DEMO_CATALOG", "400"),
        ("DISCOVERY_WARM_INTERVAL", "0s"),
        // The safety-net reload runs (and fails) during the outage.
        ("DISCOVERY_CATALOG_REFRESH", "1s"),
        ("DISCOVERY_SIGNALS_REFRESH", "0s"),
        ("DISCOVERY_DEPENDENCY_CHECKS", "300ms"),
        ("DISCOVERY_SYNC_FOLLOW", "false"),
        ("DISCOVERY_SYNC_RETRY_FOR", "2m"),
    ]);
    let reco = discovery_recommendation::spawn(
        discovery_recommendation::Config::from_env(&env).expect("config"),
        shutdown.clone(),
    )
    .await
    .expect("recommendation starts");
    let sync = discovery_sync::spawn(
        discovery_sync::Config::from_env(&env).expect("config"),
        shutdown.clone(),
    )
    .await
    .expect("sync starts");
    // Monitoring on its embedded store, watching the two.
    let monitoring_env = Env::from_pairs([
        ("DISCOVERY_MONITORING_PORT", "0"),
        ("DISCOVERY_METRICS_PORT", "0"),
        ("DISCOVERY_SHUTDOWN_GRACE", "1s"),
    ])
    .with(
        "DISCOVERY_RECOMMENDATION_URLS",
        format!("http://{}", reco.addr),
    )
    .with("DISCOVERY_SYNC_URLS", format!("http://{}", sync.addr));
    let mut monitoring_config =
        discovery_monitoring::Config::from_env(&monitoring_env).expect("config");
    monitoring_config
        .targets
        .retain(|t| t.service == "recommendation" || t.service == "sync");
    let monitoring = discovery_monitoring::spawn(monitoring_config, shutdown.clone())
        .await
        .expect("monitoring starts");
    let connect = |addr: std::net::SocketAddr| async move {
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    };
    let channel = connect(reco.addr).await;
    let mut sync_client = SyncClient::new(connect(sync.addr).await);
    let health_client = MonitoringClient::new(connect(monitoring.addr).await);
    let system = |c: &MonitoringClient<Channel>| {
        let mut c = c.clone();
        async move {
            c.get_system_health(pb::GetSystemHealthRequest {})
                .await
                .unwrap()
                .into_inner()
        }
    };
    let healthy = system(&health_client).await;
    assert!(healthy.ready && !healthy.degraded, "{healthy:?}");

    let ids = demo_ids(&channel).await;
    let load = ReadLoad::start(channel.clone(), 4, ids);

    // A feed of N products in two halves: the first while the database is
    // up, the second sent into the outage.
    const N: usize = 2_000;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::IngestCatalogRequest>(4);
    let header = pb::IngestCatalogRequest {
        item: Some(pb::ingest_catalog_request::Item::Header(pb::IngestHeader {
            source: "shopify:outage".into(),
            format: pb::FeedFormat::ShopifyNdjson as i32,
            idempotency_key: String::new(),
        })),
    };
    tx.send(header).await.unwrap();
    let chunk = |range: std::ops::Range<usize>| pb::IngestCatalogRequest {
        item: Some(pb::ingest_catalog_request::Item::NdjsonChunk(
            range.map(feed_line).collect::<String>().into_bytes(),
        )),
    };
    let mut ingest_client = sync_client.clone();
    let ingest = tokio::spawn(async move {
        ingest_client
            .ingest_catalog(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner())
    });
    for start in (0..N / 2).step_by(250) {
        tx.send(chunk(start..start + 250)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_kill = load.counts();

    // The database dies.
    mongo.kill();
    let killed = Instant::now();
    let sender = tokio::spawn(async move {
        for start in (N / 2..N).step_by(250) {
            tx.send(chunk(start..start + 250)).await.unwrap();
        }
    });
    assert!(
        eventually(Duration::from_secs(15), || async {
            let h = system(&health_client).await;
            h.ready
                && h.degraded
                && ["recommendation", "sync"].iter().all(|name| {
                    h.services.iter().any(|s| {
                        s.service == *name
                            && s.ready
                            && s.degraded_dependencies == ["store".to_string()]
                    })
                })
        })
        .await,
        "monitoring reports recommendation and sync ready but degraded (store): {:?}",
        system(&health_client).await
    );
    let noticed = killed.elapsed();
    let degraded = system(&health_client).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = load.counts();

    mongo.restart().await.expect("mongo back");
    let outage = killed.elapsed();
    sender.await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(120), ingest)
        .await
        .expect("the feed completes after the database is back")
        .unwrap()
        .expect("the feed is accepted");
    assert_eq!(resp.received as usize, N);
    let job = common::final_job(&mut sync_client, &resp.job_id).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            let h = system(&health_client).await;
            h.ready && !h.degraded
        })
        .await,
        "readiness recovers: {:?}",
        system(&health_client).await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed, errors) = load.stop().await;

    // Data checked afterwards, straight from the database.
    let products = mongodb::Client::with_uri_str(mongo.uri())
        .await
        .unwrap()
        .database(&db)
        .collection::<Document>("products");
    let stored = products
        .count_documents(doc! {"_id": {"$regex": "^shopify:outage:"}})
        .await
        .unwrap() as usize;
    let last = products
        .find_one(doc! {"_id": format!("shopify:outage:{}", N - 1)})
        .await
        .unwrap()
        .expect("the last record of the feed is stored");
    let demo = products
        .count_documents(doc! {"_id": {"$not": {"$regex": "^shopify:outage:"}}})
        .await
        .unwrap();
    eprintln!(
        "mongo down {outage:?}: reads {ok} ok / {failed} failed (before the kill {}, during {}); \
         degraded noticed in {noticed:?}: {:?}; feed of {N}: job {:?} received {} upserted {} \
         unchanged {} rejected {}, {stored} stored afterwards, demo catalogue intact: {demo}",
        before_kill.0,
        during.0 - before_kill.0,
        degraded
            .services
            .iter()
            .map(|s| (s.service.as_str(), s.detail.as_str()))
            .collect::<Vec<_>>(),
        pb::SyncJobState::try_from(job.state),
        job.received,
        job.upserted,
        job.unchanged,
        job.rejected,
    );
    assert_eq!(
        failed, 0,
        "no read fails with the database down: {errors:?}"
    );
    assert!(during.0 > before_kill.0 + 50, "reads kept flowing");
    assert_eq!(job.state, pb::SyncJobState::Succeeded as i32, "{job:?}");
    assert_eq!(job.received as usize, N);
    assert_eq!(job.rejected, 0);
    assert_eq!((job.upserted + job.unchanged) as usize, N, "{job:?}");
    assert_eq!(stored, N, "every record of the feed is in the database");
    assert_eq!(
        (last.get_str("name").ok(), last.get_f64("price").ok()),
        (
            Some(format!("Outage Model {}", N - 1).as_str()),
            Some(149.0)
        ),
        "the record sent last is stored as sent: {last:?}"
    );
    assert_eq!(demo, 400, "the demo catalogue is intact");
    shutdown.cancel();
}
