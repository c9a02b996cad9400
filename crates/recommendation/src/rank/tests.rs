use super::*;
use discovery_catalog::demo_catalog;

fn catalog() -> Catalog {
    Catalog::new(demo_catalog(600), 1)
}

fn ids(c: &Catalog, v: &[Scored]) -> Vec<String> {
    v.iter().map(|s| c.frames[s.row].id.clone()).collect()
}

fn face(shape: pb::FaceShape, width: f32) -> Option<pb::FaceContext> {
    Some(pb::FaceContext {
        face_shape: shape as i32,
        face_width_mm: width,
        ..Default::default()
    })
}

#[test]
fn narrow_face_never_gets_wide_frames_first() {
    let c = catalog();
    let req = pb::RecommendRequest {
        face: face(pb::FaceShape::Oval, 126.0),
        ..Default::default()
    };
    let (page, total, _) = recommend(&c, &req, Ranking::default()).unwrap();
    assert_eq!(total, 600);
    assert_eq!(page.len(), DEFAULT_PAGE);
    for s in &page {
        let w = c.frames[s.row].total_width_mm;
        assert!(
            w < 140.0,
            "a {w} mm frame ranked on page one for a 126 mm face"
        );
    }
    assert!(
        page[0].reasons.iter().any(|r| r.contains("126 mm")),
        "{:?}",
        page[0].reasons
    );
    // And the same shape with a wide face gets wide frames.
    let wide = pb::RecommendRequest {
        face: face(pb::FaceShape::Oval, 150.0),
        ..Default::default()
    };
    let (page, _, _) = recommend(&c, &wide, Ranking::default()).unwrap();
    assert!(page.iter().all(|s| c.frames[s.row].total_width_mm >= 138.0));
}

#[test]
fn filters_hold_and_results_are_stable() {
    let c = catalog();
    let req = pb::RecommendRequest {
        filter: Some(pb::ProductFilter {
            max_price_minor: Some(15_000),
            in_stock_only: true,
            shapes: vec![pb::FrameShape::Aviator as i32],
            ..Default::default()
        }),
        page: Some(pb::PageRequest {
            page_size: 50,
            page_token: String::new(),
        }),
        ..Default::default()
    };
    let (a, total, _) = recommend(&c, &req, Ranking::default()).unwrap();
    assert!(!a.is_empty());
    let expected = c
        .frames
        .iter()
        .filter(|f| {
            f.price <= 150.0
                && f.inventory.is_in_stock
                && f.shape == discovery_catalog::Shape::Aviator
        })
        .count();
    assert_eq!(total, expected);
    assert!(a.iter().all(|s| {
        let f = &c.frames[s.row];
        f.price <= 150.0 && f.inventory.is_in_stock && f.shape == discovery_catalog::Shape::Aviator
    }));
    let (b, _, _) = recommend(&c, &req, Ranking::default()).unwrap();
    assert_eq!(ids(&c, &a), ids(&c, &b));
}

#[test]
fn pages_continue_each_other_exactly() {
    let c = catalog();
    let mut req = pb::RecommendRequest {
        face: face(pb::FaceShape::Round, 138.0),
        page: Some(pb::PageRequest {
            page_size: 60,
            page_token: String::new(),
        }),
        ..Default::default()
    };
    let (all, _, _) = recommend(&c, &req, Ranking::default()).unwrap();
    let mut paged = Vec::new();
    let mut token = String::new();
    for _ in 0..4 {
        req.page = Some(pb::PageRequest {
            page_size: 15,
            page_token: token.clone(),
        });
        let (p, total, q) = recommend(&c, &req, Ranking::default()).unwrap();
        token = next_token(q.offset, p.len(), total);
        paged.extend(p);
    }
    assert_eq!(ids(&c, &all), ids(&c, &paged));
}

#[test]
fn no_brand_fills_the_page() {
    let c = catalog();
    let req = pb::RecommendRequest {
        face: face(pb::FaceShape::Heart, 132.0),
        page: Some(pb::PageRequest {
            page_size: 40,
            page_token: String::new(),
        }),
        ..Default::default()
    };
    let (page, _, _) = recommend(&c, &req, Ranking::default()).unwrap();
    for w in page.windows(BRAND_WINDOW) {
        let first = &c.frames[w[0].row].brand;
        let n = w.iter().filter(|s| c.frames[s.row].brand == *first).count();
        assert!(n <= BRAND_CAP, "{first} appears {n} times in a window");
    }
    // A brand filter still returns that brand's frames only, all of them in order.
    let one = pb::RecommendRequest {
        filter: Some(pb::ProductFilter {
            brands: vec!["ray-ban".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let (p, total, _) = recommend(&c, &one, Ranking::default()).unwrap();
    assert!(total > 0 && !p.is_empty());
    assert!(p.iter().all(|s| c.frames[s.row].brand == "Ray-Ban"));
}

#[test]
fn the_bell_is_close_to_exp_and_decreasing() {
    let mut prev = 2.0;
    for k in 0..400 {
        let d = k as f32 * 0.1;
        let g = gauss(d, 8.0);
        let e = (-(d / 8.0) * (d / 8.0)).exp();
        assert!((g - e).abs() < 0.006, "{d}: {g} vs {e}");
        if d <= 8.0 {
            assert!((g - e).abs() < 0.001, "{d}: {g} vs {e}");
        }
        assert!(g < prev);
        prev = g;
    }
    assert_eq!(gauss(0.0, 8.0), 1.0);
}

#[test]
fn bad_input_is_rejected_with_reasons() {
    let c = catalog();
    let big = pb::RecommendRequest {
        page: Some(pb::PageRequest {
            page_size: 1000,
            page_token: String::new(),
        }),
        ..Default::default()
    };
    assert_eq!(
        recommend(&c, &big, Ranking::default()).unwrap_err(),
        RankError::PageTooLarge(1000)
    );
    let inverted = pb::RecommendRequest {
        filter: Some(pb::ProductFilter {
            min_price_minor: Some(500),
            max_price_minor: Some(100),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(matches!(
        recommend(&c, &inverted, Ranking::default()),
        Err(RankError::PriceRange(500, 100))
    ));
    let shape = pb::RecommendRequest {
        filter: Some(pb::ProductFilter {
            shapes: vec![99],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        recommend(&c, &shape, Ranking::default()).unwrap_err(),
        RankError::UnknownEnum("filter.shapes", 99)
    );
    let nan = pb::RecommendRequest {
        face: face(pb::FaceShape::Oval, f32::NAN),
        ..Default::default()
    };
    assert!(matches!(
        recommend(&c, &nan, Ranking::default()),
        Err(RankError::FaceWidth(_))
    ));
    let deep = pb::RecommendRequest {
        page: Some(pb::PageRequest {
            page_size: 10,
            page_token: "o:5000".into(),
        }),
        ..Default::default()
    };
    assert_eq!(
        recommend(&c, &deep, Ranking::default()).unwrap_err(),
        RankError::TooDeep
    );
}

#[test]
fn collaborative_signal_lifts_what_similar_shoppers_chose() {
    use crate::signals::{Interaction, Signals};
    use std::sync::Arc;
    let base = catalog();
    let target = "frm-00321";
    let now = 10_000_000_000;
    let mut list = Vec::new();
    for u in 0..20 {
        for (p, k) in [("frm-00007", "VIEW"), (target, "PURCHASE")] {
            list.push(Interaction {
                shopper: format!("u{u}"),
                user: format!("u{u}"),
                product: p.into(),
                kind: format!("INTERACTION_KIND_{k}"),
                at: now - 1000,
            });
        }
    }
    list.push(Interaction {
        shopper: "me".into(),
        user: "me".into(),
        product: "frm-00007".into(),
        kind: "INTERACTION_KIND_VIEW".into(),
        at: now,
    });
    let c = base.with_signals(Arc::new(Signals::build(&list, now)));
    let mut req = pb::RecommendRequest {
        page: Some(pb::PageRequest {
            page_size: 100,
            page_token: String::new(),
        }),
        ..Default::default()
    };
    let pos = |c: &Catalog, req: &pb::RecommendRequest| {
        let (p, _, _) = recommend(c, req, Ranking::default()).unwrap();
        p.iter().position(|s| c.frames[s.row].id == target)
    };
    let score = |c: &Catalog, req: &pb::RecommendRequest| {
        let (p, _, _) = recommend(c, req, Ranking::default()).unwrap();
        p.iter()
            .find(|s| c.frames[s.row].id == target)
            .map(|s| (s.score, s.breakdown.collaborative, s.reasons.clone()))
    };
    let anonymous = pos(&c, &req);
    let (anon_score, anon_collab, _) = score(&c, &req).unwrap();
    assert_eq!(anon_collab, 0.0, "no personal signal without a user");
    req.requester = Some(pb::Requester {
        user_id: "me".into(),
        session_id: String::new(),
    });
    let personal = pos(&c, &req).expect("target ranked for the user");
    assert!(
        anonymous.is_none_or(|a| personal <= a),
        "{personal} vs {anonymous:?}"
    );
    let (me_score, collab, reasons) = score(&c, &req).unwrap();
    assert!(collab > 0.9, "{collab}");
    assert!(me_score > anon_score, "{me_score} vs {anon_score}");
    assert!(
        reasons.iter().any(|r| r.contains("similar taste")),
        "{reasons:?}"
    );
}
