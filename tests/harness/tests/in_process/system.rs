//! Black-box: the services over real gRPC, embedded and on the
//! MongoDB-compatible server.

use crate::common;

use discovery_harness::MongoServer;
use discovery_kit::CancellationToken;
use discovery_proto::v1 as pb;

use common::{TestApp, ephemeral_env, gateway as client};

fn round_132() -> pb::RecommendRequest {
    pb::RecommendRequest {
        face: Some(pb::FaceContext {
            face_shape: pb::FaceShape::Round as i32,
            face_width_mm: 132.0,
            ..Default::default()
        }),
        page: Some(pb::PageRequest {
            page_size: 10,
            page_token: String::new(),
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_in_one_gateway_answers_through_recommendation() {
    let app = TestApp::builder().start().await;
    let mut c = app.gateway().await;

    let resp = c
        .recommend(round_132())
        .await
        .expect("recommend through the gateway")
        .into_inner();
    assert_eq!(resp.items.len(), 10);
    assert_eq!(
        resp.page.unwrap().total_size,
        520,
        "the demo catalogue has 520 frames"
    );
    assert!(
        resp.items.windows(2).all(|w| w[0].score >= w[1].score),
        "sorted by score"
    );
    assert!(
        resp.items.iter().all(|i| !i.reasons.is_empty()),
        "every result explains itself"
    );

    let first = resp.items[0].product.clone().unwrap();
    let got = c
        .get_product(pb::GetProductRequest {
            id: first.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.product.unwrap().name, first.name);

    // Errors from the service come back through the gateway unchanged.
    let err = c
        .get_product(pb::GetProductRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = c
        .recommend(pb::RecommendRequest {
            page: Some(pb::PageRequest {
                page_size: 5000,
                page_token: String::new(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("page_size"), "{}", err.message());

    // Cache administration through the gateway.
    let again = c.recommend(round_132()).await.unwrap().into_inner();
    assert!(
        again.cached,
        "the second identical call is served from cache"
    );
    let dropped = c
        .invalidate_cache(pb::InvalidateCacheRequest {
            tags: vec![format!("product:{}", first.id)],
            key_pattern: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .entries_dropped;
    assert!(dropped >= 1, "the cached page showed {}", first.id);
    let bad = c
        .invalidate_cache(pb::InvalidateCacheRequest {
            tags: vec!["everything".into()],
            key_pattern: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let warmed = c
        .warm_cache(pb::WarmCacheRequest {})
        .await
        .unwrap()
        .into_inner();
    let status = c
        .get_cache_status(pb::GetCacheStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let recs = status
        .kinds
        .iter()
        .find(|k| k.kind == "recommendations")
        .unwrap();
    assert!(
        recs.hits >= 1 && recs.l1_entries >= 1,
        "{recs:?} after warming {warmed:?}"
    );
    assert_eq!(status.catalog_size, 520);

    let health = c
        .get_system_health(pb::GetSystemHealthRequest {})
        .await
        .unwrap()
        .into_inner();
    for s in ["face-analysis", "recommendation", "sync"] {
        assert!(
            health.services.iter().any(|h| h.service == s && h.ready),
            "{s} ready: {health:?}"
        );
    }
    assert!(!health.degraded, "{health:?}");

    // One process: the gateway reaches the services in-process (the calls
    // above went that way), and a stopping service leaves the registry.
    let reco = app.system.addr_of("recommendation");
    assert!(discovery_kit::inproc::lookup(&reco).is_some());
    app.stop().await.expect("clean shutdown");
    assert!(discovery_kit::inproc::lookup(&reco).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommendation_on_mongo_serves_through_gateway() {
    let mongo = MongoServer::start()
        .await
        .expect("start mongo-compatible server");
    let db = mongo.fresh_db("reco");
    let shutdown = CancellationToken::new();
    let env = ephemeral_env()
        .with("DISCOVERY_STORE", "mongodb")
        .with("DISCOVERY_MONGO_URI", mongo.uri())
        .with("DISCOVERY_MONGO_DATABASE", db.clone())
        .with("DISCOVERY_MONGO_MIN_POOL", "0")
        .with("DISCOVERY_DEMO_CATALOG", "120")
        .with("DISCOVERY_METRICS_PORT", "0");
    let reco = discovery_recommendation::spawn(
        discovery_recommendation::Config::from_env(&env).unwrap(),
        shutdown.clone(),
    )
    .await
    .expect("recommendation starts on mongo");
    let env = env.with(
        "DISCOVERY_RECOMMENDATION_URLS",
        format!("http://{}", reco.addr),
    );
    let store = discovery_kit::store::StoreConfig::from_env(&env)
        .unwrap()
        .connect(discovery_kit::store::Workload::Realtime)
        .await
        .unwrap();
    let (key, _) = discovery_gateway::auth::create(
        &store,
        "test",
        discovery_gateway::auth::Tier::Partner,
        &[discovery_gateway::routes::Scope::Public],
    )
    .await
    .unwrap();
    let gw = discovery_gateway::spawn(
        discovery_gateway::Config::from_env(&env).unwrap(),
        shutdown.clone(),
    )
    .await
    .unwrap();

    let mut c = client(gw.addr, &key).await;
    let resp = c
        .search_products(pb::SearchProductsRequest {
            query: "aviater".into(),
            include_facets: true,
            ..Default::default()
        })
        .await
        .expect("search through gateway")
        .into_inner();
    assert!(!resp.hits.is_empty(), "typo-tolerant search finds aviators");
    assert!(resp.hits.iter().all(|h| {
        h.product.as_ref().unwrap().shape == pb::FrameShape::Aviator as i32
            || h.product
                .as_ref()
                .unwrap()
                .name
                .to_lowercase()
                .contains("aviator")
            || h.product
                .as_ref()
                .unwrap()
                .description
                .to_lowercase()
                .contains("aviator")
    }));

    // "More like this" and suggestions go through the gateway too (this
    // server has no text model: similarity by attributes).
    let like = c
        .similar_products(pb::SimilarProductsRequest {
            product_id: resp.hits[0].product.as_ref().unwrap().id.clone(),
            limit: 5,
            ..Default::default()
        })
        .await
        .expect("similar through gateway")
        .into_inner();
    assert_eq!(like.hits.len(), 5);
    let suggested = c
        .suggest_queries(pb::SuggestQueriesRequest {
            prefix: "avi".into(),
            limit: 3,
        })
        .await
        .expect("suggestions through gateway")
        .into_inner();
    assert_eq!(suggested.suggestions[0].text, "aviator");
    let mut anonymous = client(gw.addr, "not-a-key").await;
    let refused = anonymous
        .suggest_queries(pb::SuggestQueriesRequest::default())
        .await
        .expect_err("no key");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // The catalogue and the spec's indexes really are in the database.
    let store = discovery_kit::store::mongo::MongoStore::connect(
        &discovery_kit::store::mongo::MongoConfig::for_tests(&mongo.uri(), &db),
        discovery_kit::store::Workload::Realtime,
    )
    .await
    .unwrap();
    use discovery_kit::store::DocumentStore;
    assert_eq!(
        store
            .count("products", discovery_kit::store::doc! {})
            .await
            .unwrap(),
        120
    );
    let names = store.index_names("products").await.unwrap();
    for want in [
        "face_shape_compat_price",
        "in_stock_price_partial",
        "brand_categories_stock",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    // MongoDB builds the text index; SecantusDB does not support text indexes,
    // so there it is skipped with a warning (search runs on the snapshot).
    let has_text = names.iter().any(|n| n == "updated_at_feature_summary_text");
    match mongo.flavor() {
        discovery_harness::MongoFlavor::Mongod => assert!(has_text, "text index missing on mongod"),
        discovery_harness::MongoFlavor::Secantus => assert!(!has_text),
    }
    shutdown.cancel();
    reco.wait().await.unwrap();
    gw.wait().await.unwrap();
}

#[tokio::test]
async fn unreachable_mongo_fails_fast_naming_the_variable() {
    let env = ephemeral_env()
        .with("DISCOVERY_STORE", "mongodb")
        .with(
            "DISCOVERY_MONGO_URI",
            "mongodb://127.0.0.1:1/?directConnection=true",
        )
        .with("DISCOVERY_MONGO_TIMEOUT", "1s");
    let err = discovery_recommendation::spawn(
        discovery_recommendation::Config::from_env(&env).unwrap(),
        CancellationToken::new(),
    )
    .await
    .err()
    .expect("start-up must fail");
    assert!(
        err.to_string()
            .starts_with("DISCOVERY_MONGO_URI: cannot reach MongoDB"),
        "{err}"
    );
}
