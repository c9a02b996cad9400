use super::*;
use discovery_kit::cache::CacheConfig;
use discovery_kit::store::memory::MemoryStore;

fn section(ids: &[&str]) -> Bytes {
    use bytes::BufMut;
    let mut b = bytes::BytesMut::new();
    b.put_u16_le(ids.len() as u16);
    for id in ids {
        b.put_u8(id.len() as u8);
        b.put_slice(id.as_bytes());
        b.put_u64_le(7);
    }
    b.freeze()
}

#[tokio::test]
async fn outcomes_count_once_per_impression_and_fall_back_to_the_shoppers_page() {
    let store: Store = MemoryStore::new();
    let cache = Arc::new(Cache::new(&CacheConfig::l1_only(1 << 20)).await.unwrap());
    let stop = CancellationToken::new();
    let (log, task) = Log::start(store.clone(), cache, 1, stop.clone());
    let variant = Arc::new(Assignment {
        experiment: "e".into(),
        variant: "v".into(),
        label: "e/v".into(),
        ranking: Default::default(),
    });
    let now = discovery_kit::now_unix_ms();
    for (id, session) in [(1u128, "s1"), (2, "s2")] {
        assert!(log.impression(
            ImpressionRef {
                id,
                at: now,
                assignment: &variant,
                placement: "home",
                face_shape: "round",
                user_id: "",
                session_id: session,
                client: None,
                catalog_version: 3,
            },
            section(&["p1", "p2"])
        ));
    }
    let outcome = |impression, session: &str, product: &str, kind, value| Outcome {
        impression,
        user_id: String::new(),
        session_id: session.into(),
        product_id: product.into(),
        kind,
        at: now + 10,
        value,
    };
    let eur = || Some(("EUR".to_string(), 1_000));
    // Two clicks and two purchases of one product on impression 1:
    // once each; a purchase without an id: impression 2 by session.
    log.outcome(outcome(Some(1), "s1", "p1", OutcomeKind::Click, None));
    log.outcome(outcome(Some(1), "s1", "p1", OutcomeKind::Click, None));
    log.outcome(outcome(Some(1), "s1", "p2", OutcomeKind::Purchase, eur()));
    log.outcome(outcome(Some(1), "s1", "p2", OutcomeKind::Purchase, eur()));
    log.outcome(outcome(None, "s2", "p1", OutcomeKind::Purchase, eur()));
    // Not attributable: a made-up id, a product the page did not show,
    // a shopper with no page.
    log.outcome(outcome(Some(3), "s1", "p1", OutcomeKind::Click, None));
    log.outcome(outcome(Some(2), "s2", "p9", OutcomeKind::Click, None));
    log.outcome(outcome(None, "s3", "p1", OutcomeKind::Click, None));
    stop.cancel();
    task.await.unwrap();
    let (r, _) = read_report(&store, Window::Hour, "e", now).await.unwrap();
    assert_eq!(r.total.impressions, 2);
    assert_eq!(r.total.clicked, 1);
    assert_eq!(r.total.purchased, 2);
    assert_eq!(r.total.revenue_minor["EUR"], 2_000);
    assert_eq!(r.by_placement[0].key, "home");
    assert_eq!(log.unattributed(), 3);
    let (week, _) = read_report(&store, Window::Week, "", now).await.unwrap();
    assert_eq!(week.total, r.total, "both granularities");
}

#[test]
fn the_queue_gives_back_what_was_pushed() {
    let (log, queue) = Log::detached();
    let a = Arc::new(Assignment {
        experiment: "e".into(),
        variant: "v".into(),
        label: "e/v".into(),
        ranking: Default::default(),
    });
    let b = Arc::new(Assignment {
        experiment: String::new(),
        variant: "default".into(),
        label: "default".into(),
        ranking: Default::default(),
    });
    for (i, who) in [(&a, Some("bff")), (&b, None), (&a, None)]
        .into_iter()
        .enumerate()
    {
        log.impression(
            ImpressionRef {
                id: i as u128 + 7,
                at: 1_000 + i as i64,
                assignment: who.0,
                placement: if i == 1 { "" } else { "home" },
                face_shape: if i == 2 { "any" } else { "oval" },
                user_id: if i == 0 { "u1" } else { "" },
                session_id: "s",
                client: who.1,
                catalog_version: 9,
            },
            section(&["p1"]),
        );
    }
    assert_eq!(log.queued(), 3);
    let events = queue.lock().drain_events();
    let got: Vec<_> = events
        .iter()
        .map(|e| match e {
            Event::Impression(i) => (
                i.id,
                i.at,
                i.assignment.label.clone(),
                i.placement.clone(),
                i.face_shape,
                i.user_id.clone(),
                i.client.clone(),
                page_section_ids(&i.page),
            ),
            Event::Outcome(_) => unreachable!(),
        })
        .collect();
    let one = |id, at, l: &str, p: &str, f, u: &str, c: Option<&str>| {
        (
            id,
            at,
            l.to_string(),
            p.to_string(),
            f,
            u.to_string(),
            c.map(String::from),
            vec!["p1".to_string()],
        )
    };
    assert_eq!(
        got,
        vec![
            one(7, 1_000, "e/v", "home", "oval", "u1", Some("bff")),
            one(8, 1_001, "default", "", "oval", "", None),
            one(9, 1_002, "e/v", "home", "any", "", None),
        ]
    );
    // Drained, empty, and its memory kept for the next round.
    let q = queue.lock();
    assert!(q.is_empty());
    assert!(q.bytes.capacity() >= 64 << 10 && q.pages.capacity() >= 1024);
    assert!(q.assignments.is_empty(), "no assignment kept alive");
}

#[test]
fn the_clock_gives_the_wall_time_of_an_instant() {
    let c = Clock::default();
    let (t, wall) = (Instant::now(), discovery_kit::now_unix_ms());
    // Same moment within the two reads' distance (well under a second).
    assert!((c.unix_ms(t) - wall).abs() < 1_000);
    let later = t + Duration::from_secs(90);
    assert_eq!(c.unix_ms(later) - c.unix_ms(t), 90_000);
    c.renew();
    assert!((c.unix_ms(t) - wall).abs() < 1_000, "a renewal keeps it");
}

#[test]
fn ids_round_trip_and_strangers_are_refused() {
    let id = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
    let s = id_string(id);
    assert_eq!(s, "0123456789abcdeffedcba9876543210");
    assert_eq!(parse_id(&s), Some(id));
    assert_eq!(parse_id("0123456789ABCDEFFEDCBA9876543210"), None);
    assert_eq!(parse_id("+123456789abcdeffedcba987654321"), None);
    assert_eq!(parse_id(""), None);
}
