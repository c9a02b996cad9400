//! The kit's MongoDB store against a real MongoDB-compatible server.

use std::time::Duration;

use discovery_harness::MongoServer;
use discovery_kit::store::mongo::{MongoConfig, MongoStore};
use discovery_kit::store::{ChangeOp, DocumentStore, FindOptions, IndexSpec, Workload, doc};
use futures::StreamExt;

async fn store(server: &MongoServer, prefix: &str) -> MongoStore {
    let cfg = MongoConfig::for_tests(&server.uri(), &server.fresh_db(prefix));
    MongoStore::connect(&cfg, Workload::Realtime)
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_round_trip_bulk_upsert_and_indexes() {
    let server = MongoServer::start()
        .await
        .expect("start mongo-compatible server");
    let s = store(&server, "roundtrip").await;

    s.put(
        "things",
        doc! {"_id": "a", "price": 10.5, "brand": "Oakley"},
    )
    .await
    .unwrap();
    assert_eq!(
        s.get("things", "a")
            .await
            .unwrap()
            .unwrap()
            .get_str("brand")
            .unwrap(),
        "Oakley"
    );

    let first = s
        .bulk_upsert(
            "things",
            (0..50)
                .map(|i| doc! {"_id": format!("p{i:02}"), "v": i})
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!((first.upserted, first.matched, first.modified), (50, 0, 0));
    let mut again: Vec<_> = (0..50)
        .map(|i| doc! {"_id": format!("p{i:02}"), "v": i})
        .collect();
    again[7] = doc! {"_id": "p07", "v": 700};
    let second = s.bulk_upsert("things", again).await.unwrap();
    assert_eq!(
        (second.upserted, second.matched, second.modified),
        (0, 50, 1),
        "identical docs must report unchanged"
    );

    let found = s
        .find(
            "things",
            doc! {"v": {"$gte": 45}},
            FindOptions {
                sort: Some(doc! {"v": -1}),
                skip: 0,
                limit: 3,
            },
        )
        .await
        .unwrap();
    let ids: Vec<&str> = found.iter().map(|d| d.get_str("_id").unwrap()).collect();
    assert_eq!(ids, ["p07", "p49", "p48"]);
    assert_eq!(
        s.count("things", doc! {"v": {"$lt": 10}}).await.unwrap(),
        9,
        "p07 now has v = 700"
    );
    assert!(s.delete("things", "a").await.unwrap());
    assert!(s.get("things", "a").await.unwrap().is_none());

    let specs = vec![
        IndexSpec::new(
            "in_stock_price_partial",
            doc! {"inventory.isInStock": 1, "price": 1},
        )
        .partial(doc! {"inventory.isInStock": true}),
        IndexSpec::new("createdAt_ttl", doc! {"createdAt": 1}).ttl(Duration::from_secs(86_400)),
        IndexSpec::new("userId_sparse", doc! {"userId": 1}).sparse(),
    ];
    s.ensure_indexes("things", &specs).await.unwrap();
    s.ensure_indexes("things", &specs)
        .await
        .expect("index creation is idempotent");
    let mut names = s.index_names("things").await.unwrap();
    names.sort();
    assert_eq!(
        names,
        [
            "_id_",
            "createdAt_ttl",
            "in_stock_price_partial",
            "userId_sparse"
        ]
    );
    // Check the options really reached the server.
    let specs_on_server: Vec<_> = s
        .database()
        .collection::<mongodb::bson::Document>("things")
        .list_indexes()
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await;
    let by_name = |n: &str| {
        specs_on_server
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .find(|m| m.options.as_ref().and_then(|o| o.name.as_deref()) == Some(n))
            .and_then(|m| m.options.clone())
            .unwrap()
    };
    assert_eq!(
        by_name("createdAt_ttl").expire_after,
        Some(Duration::from_secs(86_400))
    );
    assert_eq!(
        by_name("in_stock_price_partial").partial_filter_expression,
        Some(doc! {"inventory.isInStock": true})
    );
    assert_eq!(by_name("userId_sparse").sparse, Some(true));
    eprintln!(
        "mongo ({:?}): round trip, bulk upsert counts and {} indexes verified",
        server.flavor(),
        names.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_change_stream_delivers_and_resumes() {
    let server = MongoServer::start()
        .await
        .expect("start mongo-compatible server");
    let s = store(&server, "changes").await;
    s.put("products", doc! {"_id": "warmup"}).await.unwrap();

    let mut stream = s.watch("products", None).await.expect("watch");
    s.put("products", doc! {"_id": "x1", "price": 1})
        .await
        .unwrap();
    s.put("products", doc! {"_id": "x2", "price": 2})
        .await
        .unwrap();
    s.delete("products", "x1").await.unwrap();

    let e1 = next(&mut stream).await;
    assert_eq!((e1.op, e1.id.as_str()), (ChangeOp::Insert, "x1"));
    assert_eq!(e1.document.unwrap().get_i32("price").unwrap(), 1);
    let e2 = next(&mut stream).await;
    assert_eq!(e2.id, "x2");
    let e3 = next(&mut stream).await;
    assert_eq!((e3.op, e3.id.as_str()), (ChangeOp::Delete, "x1"));
    drop(stream);

    // Resume after the first event: the second and third come again, nothing else.
    let mut resumed = s
        .watch("products", Some(e1.token.clone()))
        .await
        .expect("resume");
    let r2 = next(&mut resumed).await;
    let r3 = next(&mut resumed).await;
    assert_eq!(
        (r2.id.as_str(), r3.id.as_str(), r3.op),
        ("x2", "x1", ChangeOp::Delete)
    );
    eprintln!(
        "mongo ({:?}): change stream delivered 3 events and resumed from a token",
        server.flavor()
    );
}

async fn next(st: &mut discovery_kit::store::ChangeStream) -> discovery_kit::store::ChangeEvent {
    tokio::time::timeout(Duration::from_secs(20), st.next())
        .await
        .expect("change event in time")
        .expect("stream open")
        .expect("event ok")
}

/// Newer-wins bulk upserts behave the same on the server and embedded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_bulk_upsert_never_lets_an_older_record_win() {
    let server = MongoServer::start()
        .await
        .expect("start mongo-compatible server");
    let mongo = store(&server, "guarded").await;
    let memory = discovery_kit::store::memory::MemoryStore::new();
    for s in [&mongo as &dyn DocumentStore, &*memory as &dyn DocumentStore] {
        let batch = |v: i64, price: f64| {
            (0..20)
                .map(|i| {
                    discovery_kit::store::bson::to_raw_document_buf(
                        &doc! {"_id": format!("p{i:02}"), "price": price, "metadata": {"updated_at": v + i}},
                    )
                    .unwrap()
                })
                .collect::<Vec<_>>()
        };
        let first = s
            .bulk_upsert_newer("products", batch(100, 10.0), "metadata.updated_at")
            .await
            .unwrap();
        assert_eq!(
            (first.inserted, first.replaced, first.stale),
            (20, 0, 0),
            "{}",
            s.kind()
        );
        // The same feed again changes nothing.
        let again = s
            .bulk_upsert_newer("products", batch(100, 10.0), "metadata.updated_at")
            .await
            .unwrap();
        assert_eq!(
            (again.inserted, again.replaced, again.stale),
            (0, 0, 20),
            "{}",
            s.kind()
        );
        // Older records lose, newer ones win, in one batch.
        let mut mixed = batch(50, 1.0);
        mixed.truncate(10);
        mixed.extend(batch(200, 20.0).into_iter().skip(10));
        let m = s
            .bulk_upsert_newer("products", mixed, "metadata.updated_at")
            .await
            .unwrap();
        assert_eq!(
            (m.inserted, m.replaced, m.stale),
            (0, 10, 10),
            "{}",
            s.kind()
        );
        let p0 = s.get("products", "p00").await.unwrap().unwrap();
        assert_eq!(p0.get_f64("price").unwrap(), 10.0, "older record ignored");
        let p15 = s.get("products", "p15").await.unwrap().unwrap();
        assert_eq!(p15.get_f64("price").unwrap(), 20.0, "newer record written");
    }
}

/// A guarded partial update sets fields only on documents whose guard
/// still holds (one replaced since it was read is left alone), never
/// inserts, and shows in the change stream with the whole document: the
/// same on the server and embedded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_set_leaves_a_document_replaced_since_it_was_read() {
    use discovery_kit::store::{ChangeOp, GuardedSet};
    let server = MongoServer::start()
        .await
        .expect("start mongo-compatible server");
    let mongo = store(&server, "guarded_set").await;
    let memory = discovery_kit::store::memory::MemoryStore::new();
    for s in [&mongo as &dyn DocumentStore, &*memory as &dyn DocumentStore] {
        for (id, v) in [("a", 1_i64), ("b", 1)] {
            s.put(
                "products",
                doc! {"_id": id, "name": id, "metadata": {"updated_at": v}},
            )
            .await
            .unwrap();
        }
        let mut changes = s.watch("products", None).await.unwrap();
        // "b" is replaced by a newer record after the worker read it.
        s.put(
            "products",
            doc! {"_id": "b", "name": "b2", "metadata": {"updated_at": 2_i64}},
        )
        .await
        .unwrap();
        let set = |id: &str| GuardedSet {
            id: id.into(),
            guard: "metadata.updated_at".into(),
            expected: 1_i64.into(),
            fields: doc! {"embedding": {"model": "m", "text_hash": 7_i64}},
        };
        let matched = s
            .bulk_set_if("products", vec![set("a"), set("b"), set("missing")])
            .await
            .unwrap();
        assert_eq!(matched, 1, "{}", s.kind());
        let a = s.get("products", "a").await.unwrap().unwrap();
        assert_eq!(
            a.get_document("embedding")
                .unwrap()
                .get_i64("text_hash")
                .unwrap(),
            7
        );
        assert_eq!(a.get_str("name").unwrap(), "a", "other fields kept");
        let b = s.get("products", "b").await.unwrap().unwrap();
        assert!(
            b.get("embedding").is_none(),
            "{}: the newer record keeps no stale field",
            s.kind()
        );
        assert!(
            s.get("products", "missing").await.unwrap().is_none(),
            "never inserts"
        );
        let replaced = next(&mut changes).await;
        assert_eq!(
            (replaced.op, replaced.id.as_str()),
            (ChangeOp::Replace, "b")
        );
        let updated = next(&mut changes).await;
        assert_eq!((updated.op, updated.id.as_str()), (ChangeOp::Update, "a"));
        let whole = updated.document.expect("the whole document");
        assert_eq!(whole.get_str("name").unwrap(), "a");
        assert!(whole.get_document("embedding").is_ok());
    }
}

/// A guarded bulk write of 24 MB (1,000 documents of 24 KB, as 1,000 Shopify
/// products with long descriptions) is written whole: one `update` command
/// is one BSON document, which MongoDB bounds at 16 MiB, so the store sends
/// it as several. (SecantusDB accepts larger commands; `mongod` does not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_write_over_sixteen_mib_goes_as_several_commands() {
    let server = MongoServer::start()
        .await
        .expect("start mongo-compatible server");
    let mongo = store(&server, "big_bulk").await;
    let text = "d".repeat(24_000);
    let docs: Vec<_> = (0..1000)
        .map(|i| {
            discovery_kit::store::bson::to_raw_document_buf(
                &doc! {"_id": format!("p{i:04}"), "description": &text, "metadata": {"updated_at": 1_i64}},
            )
            .unwrap()
        })
        .collect();
    let bytes: usize = docs.iter().map(|d| d.as_bytes().len()).sum();
    assert!(bytes > 16 << 20);
    let out = mongo
        .bulk_upsert_newer("products", docs, "metadata.updated_at")
        .await
        .expect("a 24 MB batch is written");
    println!(
        "{bytes} bytes in one call: {} inserted, at most {} bytes of documents per command",
        out.inserted,
        discovery_kit::store::MAX_COMMAND_DOCS_BYTES
    );
    assert_eq!(out.inserted, 1000);
    assert_eq!(mongo.count("products", doc! {}).await.unwrap(), 1000);
}
