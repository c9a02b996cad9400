use super::*;
use crate::auth::ApiKey;

#[tokio::test]
async fn replicas_are_counted_from_the_headless_service_name() {
    let env = Env::from_pairs([("DISCOVERY_GATEWAY_REPLICAS", "dns://localhost:50051")]);
    let config = LimitConfig::from_env(&env).unwrap();
    assert_eq!(config.replicas_from.as_deref(), Some("localhost:50051"));
    let limiter = Limiter::new(Arc::new(config), None);
    assert_eq!(limiter.replicas(), 1, "one until counted");
    let want = discovery_kit::client::resolve_all("localhost:50051")
        .await
        .unwrap()
        .len() as u32;
    let stop = discovery_kit::CancellationToken::new();
    let follow = tokio::spawn({
        let (l, stop) = (limiter.clone(), stop.clone());
        async move { l.follow_replicas(stop).await }
    });
    while limiter.replicas() != want {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    follow.await.unwrap();
    // A name without a port, or a number that is not one, is refused.
    for bad in ["dns://gateway-headless", "three"] {
        let env = Env::from_pairs([("DISCOVERY_GATEWAY_REPLICAS", bad)]);
        let e = LimitConfig::from_env(&env).unwrap_err().to_string();
        assert!(e.contains("DISCOVERY_GATEWAY_REPLICAS"), "{e}");
    }
    assert_eq!(
        LimitConfig::from_env(&Env::from_pairs([("DISCOVERY_GATEWAY_REPLICAS", "4")]))
            .unwrap()
            .replicas,
        4
    );
}

#[test]
fn rates_parse_with_clear_defaults() {
    assert_eq!(
        Rate::parse("100/m"),
        Some(Rate {
            per_second: 100.0 / 60.0,
            burst: 100
        })
    );
    assert_eq!(
        Rate::parse("1000/s:2000"),
        Some(Rate {
            per_second: 1000.0,
            burst: 2000
        })
    );
    assert_eq!(Rate::parse("10/h").unwrap().burst, 10);
    for bad in ["", "10", "10/d", "-1/s", "x/s", "10/s:x", "0/s"] {
        assert_eq!(Rate::parse(bad), None, "{bad}");
    }
    let env = Env::from_pairs([
        ("DISCOVERY_LIMIT_ANONYMOUS", "30/m,face=off"),
        ("DISCOVERY_LIMIT_GLOBAL", "off"),
    ]);
    let c = LimitConfig::from_env(&env).unwrap();
    assert_eq!(c.global, None);
    assert_eq!(c.anonymous.face, None);
    assert_eq!(c.anonymous.all, Rate::parse("30/m"));
    let bad = Env::from_pairs([("DISCOVERY_LIMIT_AUTHENTICATED", "100/m,faces=1/h")]);
    let e = LimitConfig::from_env(&bad).unwrap_err().to_string();
    assert!(
        e.contains("DISCOVERY_LIMIT_AUTHENTICATED") && e.contains("faces"),
        "{e}"
    );
}

#[test]
fn gcra_allows_the_burst_then_the_rate() {
    let r = Rate::parse("60/m:3").unwrap(); // one a second, three at once
    let mut tat = None;
    for _ in 0..3 {
        tat = Some(gcra(tat, 0.0, &r).expect("burst"));
    }
    let wait = gcra(tat, 0.0, &r).unwrap_err();
    assert!((wait - 1000.0).abs() < 1e-6, "{wait}");
    assert!(gcra(tat, 999.0, &r).is_err());
    assert!(gcra(tat, 1000.0, &r).is_ok());
}

fn principal(tier: Tier, requester: &str) -> Principal {
    Principal {
        key: Arc::new(ApiKey::for_tests("shop", tier)),
        tier,
        requester: requester.into(),
    }
}

#[tokio::test(start_paused = true)]
async fn local_limits_refuse_with_retry_after_and_recover_with_time() {
    let limiter = Limiter::new(Arc::new(LimitConfig::default()), None);
    let alice = principal(Tier::Authenticated, "u:alice");
    let bob = principal(Tier::Authenticated, "u:bob");
    // Authenticated: 20 Recommend calls a minute (burst 20).
    for i in 0..20 {
        limiter
            .admit(&alice, Class::Recommend)
            .await
            .unwrap_or_else(|r| panic!("call {i}: {r:?}"));
    }
    let refused = limiter.admit(&alice, Class::Recommend).await.unwrap_err();
    assert!(
        refused.limit.contains("u:alice") && refused.limit.ends_with("recommend"),
        "{refused:?}"
    );
    assert!(
        (refused.retry_after.as_secs_f64() - 3.0).abs() < 0.01,
        "{refused:?}"
    );
    // Other requesters and other methods are not affected.
    limiter.admit(&bob, Class::Recommend).await.unwrap();
    limiter.admit(&alice, Class::Other).await.unwrap();
    // One interval later one more call fits.
    tokio::time::advance(Duration::from_secs(3)).await;
    limiter.admit(&alice, Class::Recommend).await.unwrap();
    assert!(limiter.admit(&alice, Class::Recommend).await.is_err());

    // Anonymous: 3 face analyses an hour.
    let anon = principal(Tier::Anonymous, "ip:10.0.0.9");
    for _ in 0..3 {
        limiter.admit(&anon, Class::Face).await.unwrap();
    }
    let r = limiter.admit(&anon, Class::Face).await.unwrap_err();
    assert_eq!(r.retry_after.as_secs(), 1200);
    // Partners have no per-user limits: only global and per-method ones.
    let partner = principal(Tier::Partner, "k:p");
    for _ in 0..47 {
        limiter.admit(&partner, Class::Face).await.unwrap();
    }
    let r = limiter.admit(&partner, Class::Face).await.unwrap_err();
    assert!(
        r.limit.contains("m:face"),
        "50/min for AnalyzeFace, 3 used above: {r:?}"
    );
}

#[test]
fn in_flight_bounds_fail_fast_and_release_on_drop() {
    let c = LimitConfig {
        face_concurrency: 2,
        max_in_flight: 3,
        ..LimitConfig::default()
    };
    let f = InFlight::new(&c);
    let a = f.enter(Class::Face).unwrap();
    let _b = f.enter(Class::Face).unwrap();
    assert_eq!(f.enter(Class::Face).unwrap_err(), Busy::Method(2));
    let _c = f.enter(Class::Other).unwrap();
    assert_eq!(f.enter(Class::Other).unwrap_err(), Busy::Overloaded(3));
    drop(a);
    assert_eq!(f.current(), 2);
    f.enter(Class::Face).unwrap();
}

#[test]
fn one_client_holds_at_most_its_share_of_the_gateway() {
    let c = LimitConfig {
        max_in_flight: 10,
        client_share: 0.5,
        ..LimitConfig::default()
    };
    let f = InFlight::new(&c);
    let greedy = Arc::new(ApiKey::for_tests("greedy", Tier::Partner));
    let other = Arc::new(ApiKey::for_tests("other", Tier::Partner));
    let held: Vec<_> = (0..5)
        .map(|_| f.enter_for(Class::Other, &greedy).unwrap())
        .collect();
    assert_eq!(
        f.enter_for(Class::Other, &greedy).unwrap_err(),
        Busy::Client(5)
    );
    // The rest is there for everyone else.
    let others: Vec<_> = (0..5)
        .map(|_| f.enter_for(Class::Other, &other).unwrap())
        .collect();
    drop(held);
    assert!(f.enter_for(Class::Other, &greedy).is_ok());
    drop(others);
    assert!(
        f.per_client.lock().len() <= 1,
        "released clients leave the map"
    );
    // The rate share rides in the global slot, under a brace-free key.
    let who = Principal {
        key: Arc::new(ApiKey::for_tests("evil}{client", Tier::Anonymous)),
        tier: Tier::Anonymous,
        requester: "u:{x}".into(),
    };
    let checks = c.checks(&who, Class::Other);
    let share = checks.iter().find(|k| k.1.contains(":c:")).unwrap();
    assert_eq!(share.0, 0);
    assert_eq!(share.1, "rl:{rl:g}:c:evil__client");
    assert!((share.2.per_second - 500.0).abs() < 1e-9);
    assert!(
        checks
            .iter()
            .filter(|k| k.0 == 1)
            .all(|k| k.1.matches('{').count() == 1)
    );
}
