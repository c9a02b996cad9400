//! Two recommendation replicas on one real Redis Cluster (3 masters, 1
//! replica each) and the MongoDB-compatible server: indexes, cross-replica
//! invalidation after price and stock changes, and a Redis master killed
//! under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use discovery_harness::{MongoServer, RedisCluster};
use discovery_kit::CancellationToken;
use discovery_kit::config::Env;
use discovery_kit::store::bson::{Document, doc};
use discovery_proto::v1 as pb;
use discovery_proto::v1::cache_admin_client::CacheAdminClient;
use discovery_proto::v1::recommendation_client::RecommendationClient;
use futures::TryStreamExt;
use tonic::transport::Channel;

struct Replica {
    reco: RecommendationClient<Channel>,
    admin: CacheAdminClient<Channel>,
    handle: discovery_kit::server::ServiceHandle,
}

async fn replica(env: &Env, shutdown: &CancellationToken) -> Replica {
    let handle = discovery_recommendation::spawn(
        discovery_recommendation::Config::from_env(env).expect("config"),
        shutdown.clone(),
    )
    .await
    .expect("replica starts");
    let url = format!("http://{}", handle.addr);
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    Replica {
        reco: RecommendationClient::new(channel.clone()),
        admin: CacheAdminClient::new(channel),
        handle,
    }
}

fn request(shape: pb::FaceShape, width: f32, in_stock_only: bool) -> pb::RecommendRequest {
    pb::RecommendRequest {
        face: Some(pb::FaceContext {
            face_shape: shape as i32,
            face_width_mm: width,
            ..Default::default()
        }),
        filter: in_stock_only.then(|| pb::ProductFilter {
            in_stock_only: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn price_of(resp: &pb::RecommendResponse, id: &str) -> Option<i64> {
    resp.items
        .iter()
        .filter_map(|i| i.product.as_ref())
        .find(|p| p.id == id)
        .and_then(|p| p.price.as_ref())
        .map(|m| m.amount_minor)
}

/// Writes the changed product to the database and applies it through one
/// replica, as sync does; returns when that call returns.
async fn change(
    products: &mongodb::Collection<Document>,
    via: &mut Replica,
    mut product: pb::Product,
    edit: impl FnOnce(&mut pb::Product),
) -> pb::Product {
    edit(&mut product);
    product.version += 1;
    product.updated_at_unix_ms += 1;
    let frame = discovery_catalog::Frame::from_proto(&product).unwrap();
    products
        .replace_one(doc! {"_id": &product.id}, frame.to_document())
        .await
        .expect("write product");
    via.admin
        .apply_catalog_change(pb::ApplyCatalogChangeRequest {
            changes: vec![pb::CatalogChange {
                kind: pb::ChangeKind::Upsert as i32,
                product_id: product.id.clone(),
                product: Some(product.clone()),
                sequence: 1,
                committed_at_unix_ms: discovery_kit::now_unix_ms(),
                embedding: None,
            }],
        })
        .await
        .expect("apply change");
    product
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_never_serve_a_changed_product_stale_and_survive_a_master_kill() {
    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
        .await
        .unwrap()
        .expect("start redis cluster");
    let mongo = MongoServer::start().await.expect("start mongo");
    let db = mongo.fresh_db("reco2");
    let shutdown = CancellationToken::new();
    let env = Env::from_pairs(mongo.service_vars(&db))
        .with_all([
            ("DISCOVERY_RECOMMENDATION_PORT", "0"),
            ("DISCOVERY_CATALOG_REFRESH", "0s"),
            ("DISCOVERY_SIGNALS_REFRESH", "0s"),
        ])
        .with("DISCOVERY_REDIS_URLS", cluster.urls().join(","));
    // Replica a seeds the catalogue and warms the cache; b loads what a wrote.
    let mut a = replica(
        &env.clone().with("DISCOVERY_DEMO_CATALOG", "1500"),
        &shutdown,
    )
    .await;
    let mut b = replica(&env.with("DISCOVERY_WARM_INTERVAL", "0s"), &shutdown).await;

    // Indexes exist with the spec's options.
    let client = mongodb::Client::with_uri_str(mongo.uri()).await.unwrap();
    let database = client.database(&db);
    let indexes = |coll: &'static str| {
        let database = database.clone();
        async move {
            database
                .collection::<Document>(coll)
                .list_indexes()
                .await
                .unwrap()
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
        }
    };
    let products_idx = indexes("products").await;
    let partial = products_idx
        .iter()
        .find(|i| {
            i.options.as_ref().and_then(|o| o.name.as_deref()) == Some("in_stock_price_partial")
        })
        .expect("partial in-stock index");
    assert_eq!(
        partial.options.as_ref().unwrap().partial_filter_expression,
        Some(doc! {"inventory.isInStock": true})
    );
    assert!(products_idx.iter().any(|i| i.keys
        == doc! {
            "ai_enhanced.face_shape_compatibility.oval": 1,
            "ai_enhanced.face_shape_compatibility.round": 1,
            "ai_enhanced.face_shape_compatibility.square": 1,
            "price": 1,
        }));
    let sessions_idx = indexes("ai_sessions").await;
    assert!(
        sessions_idx
            .iter()
            .any(|i| i.options.as_ref().and_then(|o| o.expire_after)
                == Some(Duration::from_secs(86_400))),
        "24 h TTL index on ai_sessions.createdAt"
    );
    let reco_idx = indexes("recommendations").await;
    assert!(
        reco_idx
            .iter()
            .any(|i| i.options.as_ref().and_then(|o| o.sparse) == Some(true)),
        "sparse userId index on recommendations"
    );

    let products = database.collection::<Document>("products");
    let req = request(pb::FaceShape::Round, 134.0, false);
    let first = a.reco.recommend(req.clone()).await.unwrap().into_inner();
    assert_eq!(first.items.len(), 20);
    let from_b = b.reco.recommend(req.clone()).await.unwrap().into_inner();
    let ids = |r: &pb::RecommendResponse| {
        r.items
            .iter()
            .map(|i| i.product.as_ref().unwrap().id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&first), ids(&from_b), "replicas agree");
    assert!(
        b.reco
            .recommend(req.clone())
            .await
            .unwrap()
            .into_inner()
            .cached
    );

    // A price change through replica a.
    let target = first.items[3].product.clone().unwrap();
    let old_price = target.price.as_ref().unwrap().amount_minor;
    let changed = change(&products, &mut a, target, |p| {
        p.price.as_mut().unwrap().amount_minor += 5_000;
    })
    .await;
    // The change has completed on replica a; measure how long b takes.
    let started = Instant::now();
    let new_price = changed.price.as_ref().unwrap().amount_minor;
    let on_a = a.reco.recommend(req.clone()).await.unwrap().into_inner();
    assert_eq!(
        price_of(&on_a, &changed.id),
        Some(new_price),
        "replica a at once"
    );
    let mut propagated = None;
    while started.elapsed() < Duration::from_secs(10) {
        let r = b.reco.recommend(req.clone()).await.unwrap().into_inner();
        if price_of(&r, &changed.id) == Some(new_price) {
            propagated = Some(started.elapsed());
            break;
        }
        assert_eq!(price_of(&r, &changed.id), Some(old_price));
    }
    let price_delay = propagated.expect("price change reached replica b");
    for _ in 0..50 {
        for r in [&mut a, &mut b] {
            let resp = r.reco.recommend(req.clone()).await.unwrap().into_inner();
            assert_eq!(
                price_of(&resp, &changed.id),
                Some(new_price),
                "stale price served after the change completed"
            );
        }
    }

    // A stock change through replica b: the frame leaves in-stock results on a.
    let in_stock = request(pb::FaceShape::Oval, 138.0, true);
    let before = a
        .reco
        .recommend(in_stock.clone())
        .await
        .unwrap()
        .into_inner();
    b.reco.recommend(in_stock.clone()).await.unwrap();
    let sold_out = before.items[0].product.clone().unwrap();
    let sold_out = change(&products, &mut b, sold_out, |p| {
        p.variants.iter_mut().for_each(|v| v.stock = 0);
        p.in_stock = false;
    })
    .await;
    let started = Instant::now();
    let mut gone = None;
    while started.elapsed() < Duration::from_secs(10) {
        let r = a
            .reco
            .recommend(in_stock.clone())
            .await
            .unwrap()
            .into_inner();
        if !ids(&r).contains(&sold_out.id) {
            gone = Some(started.elapsed());
            break;
        }
    }
    let stock_delay = gone.expect("sold-out frame left replica a's results");
    for r in [&mut a, &mut b] {
        let resp = r
            .reco
            .recommend(in_stock.clone())
            .await
            .unwrap()
            .into_inner();
        assert!(!ids(&resp).contains(&sold_out.id), "sold-out frame served");
    }

    // Kill one Redis master while both replicas serve a varied load.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for (n, client) in [
        a.reco.clone(),
        b.reco.clone(),
        a.reco.clone(),
        b.reco.clone(),
    ]
    .into_iter()
    .enumerate()
    {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut client = client;
            let mut i = n as u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let shape = pb::FaceShape::try_from((i % 7 + 1) as i32).unwrap();
                let req = request(shape, 120.0 + (i % 40) as f32, i.is_multiple_of(3));
                match client.recommend(req).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("failed call during failover: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim = cluster.master_ports()[0];
    cluster.kill(victim);
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "calls failed while a Redis master died");
    assert!(ok > 100, "load ran ({ok} calls)");

    // The cluster fails over; L2 and the bus come back, and a change made now
    // still reaches the other replica.
    let c2 = tokio::task::spawn_blocking(move || {
        cluster.wait_ok(Duration::from_secs(30)).map(|_| cluster)
    })
    .await
    .unwrap()
    .expect("cluster recovers");
    let failover = killed_at.elapsed();
    let mut l2_back = false;
    for _ in 0..100 {
        let s = a
            .admin
            .get_cache_status(pb::GetCacheStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if s.l2_connected {
            l2_back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(l2_back, "replica a reconnected to the cluster");
    let req2 = request(pb::FaceShape::Square, 140.0, false);
    let r = b.reco.recommend(req2.clone()).await.unwrap().into_inner();
    a.reco.recommend(req2.clone()).await.unwrap();
    let target = r.items[0].product.clone().unwrap();
    let changed = change(&products, &mut a, target, |p| {
        p.price.as_mut().unwrap().amount_minor += 100;
    })
    .await;
    let started = Instant::now();
    let want = changed.price.as_ref().unwrap().amount_minor;
    let mut after_failover = None;
    while started.elapsed() < Duration::from_secs(10) {
        let r = b.reco.recommend(req2.clone()).await.unwrap().into_inner();
        if price_of(&r, &changed.id) == Some(want) {
            after_failover = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after_failover = after_failover.expect("change reached replica b after the failover");

    let status = b
        .admin
        .get_cache_status(pb::GetCacheStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let recs = status
        .kinds
        .iter()
        .find(|k| k.kind == "recommendations")
        .unwrap();
    assert!(recs.hits > 0 && recs.l1_entries > 0, "{recs:?}");
    eprintln!(
        "recommendation replicas: price change visible on the other replica after {price_delay:?}, \
         sold-out frame gone after {stock_delay:?}; master {victim} killed under load: {ok} calls, \
         {failed} failed; cluster ok again after {failover:?}; change after failover propagated in \
         {after_failover:?}; replica b recommendations hit ratio {:.2}",
        recs.hit_ratio
    );
    shutdown.cancel();
    a.handle.wait().await.unwrap();
    b.handle.wait().await.unwrap();
    drop(c2);
}
