//! `SearchProducts` as a caller sees it, with the real model: the text's
//! understood parts come back as chips and hold as filters, the rest is
//! matched by words and meaning with why each hit matched; without the
//! model the answer is lexical with a note, never an error; bad input gets
//! INVALID_ARGUMENT naming the field.

mod common;

use std::sync::Arc;

use discovery_catalog::{Material, Shape, demo_catalog};
use discovery_kit::cache::{Cache, CacheConfig};
use discovery_proto::v1 as pb;
use discovery_proto::v1::catalog_server::Catalog as _;
use discovery_recommendation::api::Service;
use discovery_recommendation::snapshot::{Catalog, Snapshot};
use tonic::{Code, Request};

async fn service(with_model: bool) -> Service {
    static FRAMES: std::sync::OnceLock<Vec<discovery_catalog::Frame>> = std::sync::OnceLock::new();
    let e = common::embedder();
    let frames = FRAMES.get_or_init(|| common::embedded(demo_catalog(160), &e));
    let snapshot = Snapshot::default();
    snapshot.replace(Catalog::new(frames.clone(), 1));
    let cache = Arc::new(Cache::new(&CacheConfig::l1_only(8 << 20)).await.unwrap());
    Service::new(
        snapshot,
        discovery_kit::store::memory::MemoryStore::new(),
        cache,
    )
    .with_embedder(with_model.then_some(e))
}

fn query(q: &str) -> pb::SearchProductsRequest {
    pb::SearchProductsRequest {
        query: q.into(),
        include_facets: true,
        page: Some(pb::PageRequest {
            page_size: 50,
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn search(svc: &Service, req: pb::SearchProductsRequest) -> pb::SearchProductsResponse {
    svc.search_products(Request::new(req))
        .await
        .expect("search answers")
        .into_inner()
}

fn product(h: &pb::SearchHit) -> &pb::Product {
    h.product.as_ref().expect("a product")
}

#[tokio::test]
async fn understood_parts_are_chips_and_hold_as_filters() {
    let svc = service(true).await;
    let q = "lightweight titanium round glasses under $150 not black";
    let r = search(&svc, query(q)).await;
    let kinds: Vec<&str> = r.understood.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["material", "shape", "price", "color"],
        "{:?}",
        r.understood
    );
    for c in &r.understood {
        assert!(
            q.get(c.start as usize..c.end as usize).is_some(),
            "a span of the text: {c:?}"
        );
    }
    assert_eq!(r.mode, pb::SearchMode::Hybrid as i32);
    assert!(r.note.is_empty());
    for h in &r.hits {
        let p = product(h);
        assert_eq!(p.material, Material::Titanium.code() as i32, "{}", p.name);
        assert_eq!(p.shape, Shape::Round.code() as i32, "{}", p.name);
        let price = p.price.as_ref().expect("a price");
        assert!(price.amount_minor <= 15_000, "{} costs {:?}", p.name, price);
        assert!(
            !p.variants
                .iter()
                .any(|v| v.color.to_lowercase().contains("black")),
            "{} comes in black",
            p.name
        );
    }
    // The facets count every match.
    let brands = r
        .facets
        .iter()
        .find(|f| f.name == "brand")
        .expect("brand facet");
    assert_eq!(
        brands.counts.iter().map(|c| c.count).sum::<u64>(),
        r.page.unwrap().total_size
    );
    // Literal: nothing understood, every word must match (none does).
    let literal = search(
        &svc,
        pb::SearchProductsRequest {
            literal: true,
            mode: pb::SearchMode::Lexical as i32,
            ..query(q)
        },
    )
    .await;
    assert!(literal.understood.is_empty());
    assert!(literal.hits.is_empty());
}

#[tokio::test]
async fn a_query_no_word_matches_is_answered_by_meaning_and_says_why() {
    let svc = service(true).await;
    let r = search(&svc, query("something bold for a wedding")).await;
    assert!(!r.hits.is_empty(), "meaning finds what words do not");
    for h in &r.hits {
        let why = h.why.expect("why");
        assert!(why.semantic_rank.is_some(), "{why:?}");
        assert!(why.similarity > 0.0);
    }
    // Semantic only: the same nearest first.
    let sem = search(
        &svc,
        pb::SearchProductsRequest {
            mode: pb::SearchMode::Semantic as i32,
            ..query("something bold for a wedding")
        },
    )
    .await;
    assert_eq!(sem.mode, pb::SearchMode::Semantic as i32);
    assert_eq!(product(&sem.hits[0]).id, product(&r.hits[0]).id);
    // A word query keeps its word matches first, with their lexical rank.
    let words = search(&svc, query("vintage")).await;
    let top = words.hits[0].why.expect("why");
    assert!(top.lexical_rank.is_some(), "{top:?}");
    // The second identical search is the cached answer, the same.
    let again = search(&svc, query("something bold for a wedding")).await;
    assert_eq!(again, r);
}

#[tokio::test]
async fn without_the_model_search_is_lexical_and_says_so() {
    let svc = service(false).await;
    let r = search(&svc, query("vintage")).await;
    assert!(!r.hits.is_empty());
    assert_eq!(r.mode, pb::SearchMode::Lexical as i32);
    assert!(r.note.contains("not installed"), "{}", r.note);
    let none = search(&svc, query("something bold for a wedding")).await;
    assert!(none.note.contains("not installed"));
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field() {
    let svc = service(true).await;
    let refused = |req| async {
        svc.search_products(Request::new(req))
            .await
            .expect_err("refused")
    };
    let e = refused(pb::SearchProductsRequest {
        mode: 42,
        ..query("x")
    })
    .await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("mode:"), "{}", e.message());
    let e = refused(query(&"wedding ".repeat(200))).await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("query:"), "{}", e.message());
    // Many words: understood ones do not count against the limit, the rest do.
    let e = refused(query(
        "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike",
    ))
    .await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("words"), "{}", e.message());
}

#[tokio::test]
async fn similar_frames_are_near_by_meaning_never_the_frame_and_hold_the_filter() {
    let svc = service(true).await;
    let of = "frm-00003".to_string();
    let r = svc
        .similar_products(Request::new(pb::SimilarProductsRequest {
            product_id: of.clone(),
            limit: 8,
            ..Default::default()
        }))
        .await
        .expect("similar")
        .into_inner();
    assert_eq!(r.hits.len(), 8);
    assert!(r.hits.iter().all(|h| product(h).id != of));
    assert!(
        r.hits.iter().all(|h| h.why.expect("why").similarity > 0.3),
        "{:?}",
        r.hits[7].why
    );
    assert!(r.hits.windows(2).all(|w| w[0].score >= w[1].score));
    let metal = svc
        .similar_products(Request::new(pb::SimilarProductsRequest {
            product_id: of.clone(),
            filter: Some(pb::ProductFilter {
                materials: vec![Material::Metal.code() as i32],
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("similar")
        .into_inner();
    assert!(!metal.hits.is_empty());
    assert!(
        metal
            .hits
            .iter()
            .all(|h| product(h).material == Material::Metal.code() as i32)
    );
    let e = svc
        .similar_products(Request::new(pb::SimilarProductsRequest {
            product_id: "nope".into(),
            ..Default::default()
        }))
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
    let e = svc
        .similar_products(Request::new(pb::SimilarProductsRequest {
            product_id: of,
            limit: 10_000,
            ..Default::default()
        }))
        .await
        .expect_err("too many");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("limit:"), "{}", e.message());
}

#[tokio::test]
async fn suggestions_complete_a_prefix_and_refuse_a_long_one() {
    let svc = service(false).await;
    let r = svc
        .suggest_queries(Request::new(pb::SuggestQueriesRequest {
            prefix: "Ray".into(),
            limit: 4,
        }))
        .await
        .expect("suggestions")
        .into_inner();
    assert_eq!(r.suggestions[0].text, "ray-ban");
    assert_eq!(r.suggestions[0].kind, "brand");
    assert!(r.suggestions.len() <= 4);
    let e = svc
        .suggest_queries(Request::new(pb::SuggestQueriesRequest {
            prefix: "x".repeat(65),
            limit: 0,
        }))
        .await
        .expect_err("too long");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("prefix:"), "{}", e.message());
}

/// `Recommend` reads free text as search does: the understood parts narrow
/// the filter and fill the face, the rest's meaning ranks frames whose text
/// is like it higher (`breakdown.text_match`).
#[tokio::test]
async fn recommend_reads_the_shoppers_words() {
    use discovery_recommendation::fast::Reply;
    use discovery_recommendation::server::recommendation_server::Recommendation as _;
    use prost::Message as _;
    let svc = service(true).await;
    let ask = |text: &str| pb::RecommendRequest {
        text: text.into(),
        page: Some(pb::PageRequest {
            page_size: 10,
            ..Default::default()
        }),
        ..Default::default()
    };
    let decode = |r: Reply| match r {
        Reply::Message(m) => m,
        Reply::Encoded(b, _) => pb::RecommendResponse::decode(b).expect("a response"),
    };
    let r = decode(
        svc.recommend(Request::new(ask(
            "metal glasses under $250 for a wide face, something bold for a party",
        )))
        .await
        .expect("recommend")
        .into_inner(),
    );
    assert!(!r.items.is_empty());
    for item in &r.items {
        let p = item.product.as_ref().expect("a product");
        assert_eq!(p.material, Material::Metal.code() as i32, "{}", p.name);
        assert!(p.price.as_ref().expect("a price").amount_minor <= 25_000);
    }
    let top = r.items[0].breakdown.expect("a breakdown");
    assert!(top.text_match > 0.1, "{top:?}");
    // The wide face filled in: the fit part is measured, not the 0.5 of "unknown".
    assert_ne!(top.fit, 0.5);
    // The same request without the words ranks differently.
    let plain = decode(
        svc.recommend(Request::new(ask("metal glasses under $250")))
            .await
            .expect("recommend")
            .into_inner(),
    );
    assert_eq!(
        plain.items[0].breakdown.expect("a breakdown").text_match,
        0.0
    );
    let ids = |r: &pb::RecommendResponse| -> Vec<String> {
        r.items
            .iter()
            .filter_map(|i| i.product.as_ref().map(|p| p.id.clone()))
            .collect()
    };
    assert_ne!(ids(&r), ids(&plain), "the words change the order");
    let e = svc
        .recommend(Request::new(ask(&"x".repeat(300))))
        .await
        .expect_err("too long");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("text:"), "{}", e.message());
}
