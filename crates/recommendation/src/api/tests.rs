use super::page::open_envelope;
use super::*;
use discovery_catalog::demo_catalog;

#[test]
fn envelopes_reject_changed_products() {
    let any = [crate::snapshot::ANY.to_string()];
    let c = Catalog::new(demo_catalog(50), 1);
    let e = envelope(7, &c, &any, &[1, 2, 3], b"payload");
    assert_eq!(open_envelope(7, &c, e.clone()).unwrap(), "payload");
    // A page another replica made (well after this one loaded) is
    // checked product by product.
    let mut theirs = Catalog::new(demo_catalog(50), 1);
    theirs.fresh.as_of = c.fresh.loaded_at + 2 * PEER_LAG_MS;
    let t = envelope(8, &theirs, &any, &[1, 2, 3], b"payload");
    assert_eq!(open_envelope(7, &c, t.clone()).unwrap(), "payload");
    let mut f = (*c.frames[2]).clone();
    f.price += 10.0;
    f.metadata.version += 1;
    let (c2, applied) = c.apply(vec![Change::Upsert(Box::new(f))]);
    assert_eq!(applied.applied, 1);
    assert_eq!(applied.tags, vec![format!("product:{}", c.frames[2].id)]);
    assert_eq!(c2.version, 2);
    assert!(
        open_envelope(7, &c2, e.clone()).is_none(),
        "price change detected"
    );
    assert!(open_envelope(7, &c2, t).is_none(), "on every replica");
    let (c3, _) = c.apply(vec![Change::Delete(c.frames[1].id.clone())]);
    assert!(open_envelope(7, &c3, e).is_none(), "deletion detected");
    assert!(open_envelope(7, &c, Bytes::from_static(&[5, 0, 1])).is_none());
}

/// Issue 17: a page is stale when a product that could enter it changed
/// (a new frame, a restock), not only when one it shows did; a page
/// filtered to other brands is not.
#[test]
fn a_product_that_could_enter_a_page_makes_it_stale() {
    use crate::snapshot::{ANY, PageInputs, page_entry_tags};
    let c = Catalog::new(demo_catalog(50), 1);
    let brand = c.frames[0].brand.clone();
    let other = c
        .frames
        .iter()
        .find(|f| f.brand != brand)
        .unwrap()
        .brand
        .clone();
    let brands = [brand.clone()];
    let filtered = page_entry_tags(PageInputs {
        brands: &brands,
        ..Default::default()
    });
    let page = envelope(7, &c, &filtered, &[0], b"p");
    let open = envelope(7, &c, &[ANY.to_string()], &[0], b"p");
    let new_frame = |id: &str, brand: &str| {
        let mut f = (*c.frames[1]).clone();
        f.id = id.into();
        f.brand = brand.into();
        Change::Upsert(Box::new(f))
    };
    // A new frame of another brand: the brand's page holds, an
    // unfiltered one does not.
    let (c2, _) = c.apply(vec![new_frame("zz-new-1", &other)]);
    assert!(open_envelope(7, &c2, page.clone()).is_some());
    assert!(open_envelope(7, &c2, open).is_none());
    // A new frame of its brand (any case): stale.
    let (c3, _) = c2.apply(vec![new_frame("zz-new-2", &brand.to_uppercase())]);
    assert!(open_envelope(7, &c3, page).is_none());
    // A restock of a frame it does not show: stale if it shows in-stock
    // frames only; a page without that filter cannot change.
    let in_stock = page_entry_tags(PageInputs {
        brands: &brands,
        stock: true,
        ..Default::default()
    });
    let plain = envelope(7, &c3, &filtered, &[0], b"p");
    let stocked = envelope(7, &c3, &in_stock, &[0], b"p");
    let row = c3.index("zz-new-2").unwrap();
    let mut restocked = (*c3.frames[row]).clone();
    restocked.inventory.is_in_stock = !restocked.inventory.is_in_stock;
    restocked.metadata.version += 1;
    let (c4, _) = c3.apply(vec![Change::Upsert(Box::new(restocked.clone()))]);
    assert!(open_envelope(7, &c4, stocked).is_none());
    assert!(open_envelope(7, &c4, plain.clone()).is_some());
    // A price change alone: only pages filtering on price.
    let priced = envelope(
        7,
        &c4,
        &page_entry_tags(PageInputs {
            price: true,
            ..Default::default()
        }),
        &[0],
        b"p",
    );
    let again = envelope(7, &c4, &filtered, &[0], b"p");
    restocked.price += 5.0;
    restocked.metadata.version += 1;
    let (c4, _) = c4.apply(vec![Change::Upsert(Box::new(restocked))]);
    assert!(open_envelope(7, &c4, priced).is_none());
    assert!(open_envelope(7, &c4, again.clone()).is_some());
    // Another replica's page made just before this one applied the
    // change is not trusted (its maker may not have had it yet).
    let mut theirs = Catalog::new(demo_catalog(50), 1);
    theirs.fresh.as_of = c4.fresh.as_of - 10;
    let t = envelope(8, &theirs, &filtered, &[0], b"p");
    assert!(open_envelope(7, &c4, t).is_none());
}

/// One shopper cannot steer popularity: past the bound a minute, an
/// interaction is refused (and not stored); another shopper is not
/// affected; an interaction naming no shopper is refused.
#[tokio::test]
async fn interactions_are_bounded_per_shopper_per_minute() {
    use crate::server::recommendation_server::Recommendation as _;
    let snapshot = Snapshot::default();
    snapshot.replace(Catalog::new(demo_catalog(20), 1));
    let product = snapshot.load().frames[0].id.clone();
    let cache = Arc::new(
        Cache::new(&discovery_kit::cache::CacheConfig::l1_only(1 << 20))
            .await
            .unwrap(),
    );
    let svc = Service {
        interactions_per_minute: 5,
        ..Service::new(
            snapshot,
            discovery_kit::store::memory::MemoryStore::new(),
            cache,
        )
    };
    let record = |session: &str| {
        tonic::Request::new(pb::RecordInteractionRequest {
            requester: Some(pb::Requester {
                session_id: session.into(),
                ..Default::default()
            }),
            product_id: product.clone(),
            kind: pb::InteractionKind::Click as i32,
            ..Default::default()
        })
    };
    let mut codes = Vec::new();
    for _ in 0..7 {
        codes.push(match svc.record_interaction(record("greedy")).await {
            Ok(_) => tonic::Code::Ok,
            Err(e) => e.code(),
        });
    }
    // The minute may turn over mid-test: at most one extra window.
    let ok = codes.iter().filter(|c| **c == tonic::Code::Ok).count();
    assert!((5..=7).contains(&ok), "{codes:?}");
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, tonic::Code::Ok | tonic::Code::ResourceExhausted)),
        "{codes:?}"
    );
    if ok == 5 {
        assert_eq!(codes[5..], [tonic::Code::ResourceExhausted; 2]);
    }
    assert!(svc.record_interaction(record("calm")).await.is_ok());
    let e = svc.record_interaction(record("")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

#[test]
fn nearby_requests_share_a_key_and_different_ones_do_not() {
    let c = Catalog::new(demo_catalog(50), 1);
    let req = |w: f32, brands: Vec<&str>| pb::RecommendRequest {
        face: Some(pb::FaceContext {
            face_shape: pb::FaceShape::Round as i32,
            face_width_mm: w,
            ..Default::default()
        }),
        requester: Some(pb::Requester {
            user_id: String::new(),
            session_id: "s1".into(),
        }),
        filter: Some(pb::ProductFilter {
            brands: brands.into_iter().map(String::from).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let key = |r: &pb::RecommendRequest| {
        recommend_key(r, &rank::Query::compile(&c, r).unwrap(), "default")
    };
    let a = key(&req(134.2, vec!["Oakley", "Ray-Ban"]));
    assert!(a.starts_with("recommendations:anon:round:"), "{a}");
    assert_eq!(a, key(&req(133.8, vec!["ray-ban", "oakley"])));
    assert_ne!(a, key(&req(138.0, vec!["Oakley", "Ray-Ban"])));
    // Where it is shown shares the page; a ranking variant does not.
    let mut placed = req(134.2, vec!["Oakley", "Ray-Ban"]);
    placed.placement = "home".into();
    assert_eq!(a, key(&placed));
    let r = req(134.2, vec!["Oakley", "Ray-Ban"]);
    let q = rank::Query::compile(&c, &r).unwrap();
    assert_ne!(a, recommend_key(&r, &q, "fit-heavy/fit"));
}

#[test]
fn sessions_merge_as_documented() {
    let mut s = pb::SessionContext {
        session_id: "s".into(),
        recently_viewed: vec!["a".into(), "b".into()],
        ..Default::default()
    };
    s.attributes.insert("step".into(), "1".into());
    let mut u = pb::SessionContext {
        session_id: "s".into(),
        user_id: "u1".into(),
        recently_viewed: vec!["c".into(), "a".into()],
        ..Default::default()
    };
    u.attributes.insert("step".into(), "2".into());
    u.attributes.insert("lang".into(), "de".into());
    merge_session(&mut s, u).unwrap();
    assert_eq!(s.user_id, "u1");
    assert_eq!(s.recently_viewed, vec!["c", "a", "b"]);
    assert_eq!(s.attributes["step"], "2");
    assert_eq!(s.attributes.len(), 2);
    assert!(check_session_id("bad id").is_err());
    assert!(check_session_id("web-123:abc").is_ok());
}
