//! MongoDB's rules that the test server (SecantusDB) does not enforce,
//! checked without `mongod`: no compound index covers two array fields of a
//! stored document ("cannot index parallel arrays", code 171).

use crate::common;

use common::rig::*;
use discovery_gateway::auth::Tier;
use discovery_gateway::routes::Scope;
use discovery_kit::store::multikey::{self, parallel_arrays};
use discovery_kit::store::{DocumentStore, FindOptions, IndexSpec, doc};
use discovery_proto::v1 as pb;

/// Every index every service creates, by collection.
fn every_index() -> Vec<(&'static str, Vec<IndexSpec>)> {
    let mut all = discovery_recommendation::indexes();
    all.push((
        discovery_face_analysis::FACE_ANALYSES,
        discovery_face_analysis::indexes(),
    ));
    all.extend(discovery_sync::indexes());
    all.extend(discovery_monitoring::indexes());
    all
}

#[test]
fn the_seed_index_over_categories_and_keywords_is_what_mongodb_refuses() {
    // The spec's {brand, categories, ai_enhanced.style_keywords,
    // inventory.isInStock}: every product has both arrays.
    let seed = IndexSpec::new(
        "brand_categories_keywords_stock",
        doc! {"brand": 1, "categories": 1, "ai_enhanced.style_keywords": 1, "inventory.isInStock": 1},
    );
    let frames = discovery_catalog::demo_catalog(520);
    let refused = frames
        .iter()
        .filter(|f| parallel_arrays(&seed, &f.to_document()).is_some())
        .count();
    let first = parallel_arrays(&seed, &frames[0].to_document()).expect("refused");
    println!("the seed's index refuses {refused} of 520 demo products: {first}");
    assert_eq!(refused, 520);
    // The index set we create accepts every one of them.
    let products = discovery_catalog::product_indexes();
    for f in &frames {
        assert_eq!(multikey::check(&products, &f.to_document()), Ok(()));
    }
    println!(
        "the {} product indexes accept all 520 demo products",
        products.len()
    );
}

/// Runs a journey that writes every collection (catalogue from a feed and
/// the demo seed, a face analysis, sessions, interactions, a sync job with a
/// dead letter, monitoring's alerts and rollups), then checks every stored
/// document against every index of its collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_stored_document_obeys_mongodb_parallel_array_rule() {
    let rig = Rig::start_full("mongodb_rules", &[("DISCOVERY_LIMITS", "off")], true).await;
    let key = rig
        .key(
            "rules-bff",
            Tier::Partner,
            &[Scope::Public, Scope::Ingest],
            &["shopify:rules"],
        )
        .await;
    let job = feed(
        rig.gateway.addr,
        &key,
        "shopify:rules",
        shopify_line(1, "2026-01-01T00:00:00Z", "120.00")
            + &shopify_line(2, "2026-01-01T00:00:00Z", "99.00")
            + "{\"id\": 3, \"title\": \"no variants\"}\n",
    )
    .await
    .expect("ingest");
    assert_eq!(job.rejected, 1, "{job:?}");
    let ids = rig.product_ids(&key).await;
    let mut c = client(
        rig.gateway.addr,
        &[("x-api-key", &key), ("x-user-id", "rules-user")],
    )
    .await;
    let photo =
        std::fs::read(discovery_harness::workspace_root().join("models/testdata/astronaut.png"))
            .expect("models/testdata/astronaut.png: run scripts/fetch-models.sh --test-data");
    c.analyze_face(pb::AnalyzeFaceRequest {
        requester: Some(pb::Requester {
            user_id: String::new(),
            session_id: "rules-session".into(),
        }),
        input: Some(pb::analyze_face_request::Input::Image(photo)),
        include_landmarks: true,
    })
    .await
    .expect("analyse the test photo");
    c.update_session(pb::UpdateSessionRequest {
        session: Some(pb::SessionContext {
            session_id: "rules-session".into(),
            recently_viewed: ids.iter().take(3).cloned().collect(),
            preferences: Some(pb::Preferences {
                style_keywords: vec!["bold".into(), "vintage".into()],
                colors: vec!["black".into()],
                brands: vec!["Acme".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
    })
    .await
    .expect("update the session");
    let page = c
        .recommend(pb::RecommendRequest {
            face: Some(pb::FaceContext {
                face_shape: pb::FaceShape::Round as i32,
                face_width_mm: 132.0,
                ..Default::default()
            }),
            requester: Some(pb::Requester {
                user_id: String::new(),
                session_id: "rules-session".into(),
            }),
            ..Default::default()
        })
        .await
        .expect("recommend")
        .into_inner();
    let shown = page.items[0].product.clone().unwrap().id;
    for kind in [pb::InteractionKind::View, pb::InteractionKind::Purchase] {
        c.record_interaction(pb::RecordInteractionRequest {
            product_id: shown.clone(),
            kind: kind as i32,
            requester: Some(pb::Requester {
                user_id: String::new(),
                session_id: "rules-session".into(),
            }),
            at_unix_ms: 0,
            impression_id: page.impression_id.clone(),
        })
        .await
        .expect("record an interaction");
    }
    // Monitoring writes a rollup on its first scrape; recommendation logs
    // the page and rolls its purchase up within a second.
    for collection in [
        discovery_monitoring::METRICS_ROLLUPS,
        discovery_recommendation::impressions::ROLLUPS,
    ] {
        for _ in 0..100 {
            let filter = if collection == discovery_monitoring::METRICS_ROLLUPS {
                doc! {}
            } else {
                doc! {"purchased": {"$gt": 0}}
            };
            if rig.store.count(collection, filter).await.unwrap() > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    let mut checked = 0;
    for (collection, indexes) in every_index() {
        let docs = rig
            .store
            .find(collection, doc! {}, FindOptions::default())
            .await
            .unwrap();
        let compound = indexes.iter().filter(|i| i.keys.len() > 1).count();
        println!(
            "{collection}: {} documents x {compound} compound indexes",
            docs.len()
        );
        for d in &docs {
            if let Err(p) = multikey::check(&indexes, d) {
                panic!("{collection}: {p}; document {d}");
            }
        }
        if [
            "products",
            "ai_sessions",
            "interactions",
            "face_analyses",
            "metrics_rollups",
            "recommendations",
            "recommendation_rollups",
        ]
        .contains(&collection)
            || collection.starts_with("sync_")
        {
            assert!(
                !docs.is_empty(),
                "the journey wrote nothing to {collection}"
            );
        }
        checked += docs.len();
    }
    println!("{checked} stored documents obey MongoDB's parallel-array rule");
    rig.stop().await;
}

/// The test server is laxer than MongoDB here: say so, and keep our own
/// check honest against what it stores.
#[tokio::test]
async fn the_test_server_accepts_parallel_arrays_mongodb_refuses() {
    let mongo = discovery_harness::MongoServer::start()
        .await
        .expect("start mongo");
    let db = mongo.fresh_db("rules_lax");
    let store = discovery_kit::store::mongo::MongoStore::connect(
        &discovery_kit::store::mongo::MongoConfig::for_tests(&mongo.uri(), &db),
        discovery_kit::store::Workload::Realtime,
    )
    .await
    .unwrap();
    let ix = IndexSpec::new("a_b", doc! {"a": 1, "b": 1});
    store
        .ensure_indexes("lax", std::slice::from_ref(&ix))
        .await
        .unwrap();
    let d = doc! {"_id": "x", "a": [1, 2], "b": ["p", "q"]};
    assert!(parallel_arrays(&ix, &d).is_some());
    let outcome = store.put("lax", d).await;
    match mongo.flavor() {
        discovery_harness::MongoFlavor::Mongod => {
            let e = outcome.expect_err("mongod refuses parallel arrays");
            println!("mongod: {e}");
            assert!(e.to_string().contains("parallel arrays"), "{e}");
        }
        discovery_harness::MongoFlavor::Secantus => {
            println!(
                "SecantusDB accepted a document MongoDB refuses ({outcome:?}); \
                 the embedded store and this test suite enforce the rule instead"
            );
            assert!(
                outcome.is_ok(),
                "SecantusDB now enforces the rule: this test can assert it"
            );
        }
    }
}

/// A deployment of an earlier version built the seed's products index while
/// the collection was empty (MongoDB allows that); from then on MongoDB
/// refuses every product. Starting this version drops it, on the embedded
/// store (which enforces the rule) and on the test server.
#[tokio::test]
async fn an_upgrade_drops_the_index_mongodb_would_refuse_products_under() {
    let (coll, name) = discovery_catalog::RETIRED_INDEXES[0];
    let old = IndexSpec::new(
        name,
        doc! {"brand": 1, "categories": 1, "ai_enhanced.style_keywords": 1, "inventory.isInStock": 1},
    );
    let product = discovery_catalog::demo_catalog(1)[0].to_document();

    let memory: discovery_kit::store::Store = discovery_kit::store::memory::MemoryStore::new();
    memory
        .ensure_indexes(coll, std::slice::from_ref(&old))
        .await
        .unwrap();
    let refused = memory
        .put(coll, product.clone())
        .await
        .expect_err("refused");
    println!("under the old index: {refused}");
    discovery_recommendation::ensure_schema(&memory)
        .await
        .unwrap();
    memory
        .put(coll, product.clone())
        .await
        .expect("accepted once the index is gone");
    assert!(
        !memory
            .index_names(coll)
            .await
            .unwrap()
            .contains(&name.to_string())
    );

    let mongo = discovery_harness::MongoServer::start()
        .await
        .expect("start mongo");
    let store: discovery_kit::store::Store = std::sync::Arc::new(
        discovery_kit::store::mongo::MongoStore::connect(
            &discovery_kit::store::mongo::MongoConfig::for_tests(
                &mongo.uri(),
                &mongo.fresh_db("rules_upgrade"),
            ),
            discovery_kit::store::Workload::Realtime,
        )
        .await
        .unwrap(),
    );
    store
        .ensure_indexes(coll, std::slice::from_ref(&old))
        .await
        .unwrap();
    assert!(
        store
            .index_names(coll)
            .await
            .unwrap()
            .contains(&name.to_string())
    );
    discovery_recommendation::ensure_schema(&store)
        .await
        .unwrap();
    let names = store.index_names(coll).await.unwrap();
    println!("after start: {names:?}");
    assert!(!names.contains(&name.to_string()), "{names:?}");
    assert!(names.contains(&"brand_categories_stock".to_string()));
    // Again: nothing left to drop, no error.
    assert!(!store.drop_index(coll, name).await.unwrap());
    discovery_recommendation::ensure_schema(&store)
        .await
        .unwrap();
}
