//! Hostile callers, performed against the real system: the gateway and the
//! services (recommendation, sync, monitoring) on a 3-master Redis Cluster
//! and the MongoDB-compatible server, with internal authentication on, as
//! the chart runs them (`common::rig`). The breaker, metrics and SLA attacks
//! are in `hostile_metrics.rs` (a binary of their own: they measure
//! process-wide figures). Each attack runs while a legitimate caller works,
//! and each test prints what the attacker sent and what the others saw,
//! then asserts that the others saw no failure and no forged or stale data
//! and that memory and series stayed bounded. The threat model is in
//! `docs/security.md`.

mod common;

use common::rig::*;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use discovery_gateway::auth::Tier;
use discovery_gateway::routes::Scope;
use discovery_harness::RedisCluster;
use discovery_kit::CancellationToken;
use discovery_kit::config::Env;
use discovery_kit::store::{FindOptions, doc};
use discovery_loadgen::CallError;
use discovery_loadgen::grpc::frame;
use discovery_proto::v1 as pb;
use tonic::Code;
use tonic::transport::Channel;

/// A request whose body the caller sends slowly (or never finishes).
async fn stalled_call(
    addr: std::net::SocketAddr,
    key: &str,
    path: &str,
    prefix: Bytes,
) -> (Code, String, Duration) {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(4);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-api-key", key)
        .body(body)
        .unwrap();
    let started = Instant::now();
    // The first bytes, then nothing: the sender keeps the stream open.
    tx.send(Ok(http_body::Frame::data(prefix))).await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let trailers = if parts.headers.contains_key("grpc-status") {
        parts.headers
    } else {
        body.collect()
            .await
            .ok()
            .and_then(|c| c.trailers().cloned())
            .unwrap_or_default()
    };
    drop(tx);
    match tonic::Status::from_header_map(&trailers) {
        Some(s) => (s.code(), s.message().to_string(), started.elapsed()),
        None => (Code::Unknown, String::new(), started.elapsed()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_oversized_bodies_hold_nothing_others_need() {
    // A small in-flight bound so that held slots would show at once.
    let rig = Rig::start(
        "hostile_bodies",
        &[
            ("DISCOVERY_LIMITS", "off"),
            ("DISCOVERY_GATEWAY_MAX_IN_FLIGHT", "16"),
            ("DISCOVERY_GATEWAY_BODY_TIMEOUT", "1s"),
        ],
    )
    .await;
    let shop = rig
        .key("shop-bff", Tier::Authenticated, &[Scope::Public], &[])
        .await;
    let ids = rig.product_ids(&shop).await;
    let bystander = Bystander::start(Arc::new(rig.target(&shop, 1).await), ids.clone());

    // 64 slow-loris streams, each sending 3 bytes of a frame and stalling:
    // four times the gateway's in-flight bound.
    let stalled: Vec<_> = (0..64)
        .map(|_| {
            let (addr, key) = (rig.gateway.addr, shop.clone());
            tokio::spawn(async move {
                stalled_call(addr, &key, GET, Bytes::from_static(&[0, 0, 0])).await
            })
        })
        .collect();
    let stalled = futures::future::join_all(stalled).await;
    let mut worst = Duration::ZERO;
    for r in &stalled {
        let (code, message, took) = r.as_ref().unwrap();
        assert_eq!(*code, Code::Cancelled, "{message}");
        assert!(message.contains("read timeout"), "{message}");
        worst = worst.max(*took);
    }
    println!(
        "64 stalled GetProduct bodies (in-flight bound 16): each cut after at most {worst:?} with CANCELLED, naming the read timeout"
    );

    // Oversized bodies: refused naming the limit, photos only on AnalyzeFace.
    let t = rig.target(&shop, 1).await;
    let big = frame(&pb::GetProductRequest {
        id: "x".repeat(2 << 20),
    });
    let r = t.call_with(GET, big, &[]).await;
    match &r {
        Err(CallError::Status(8, m)) => {
            println!("a 2 MiB GetProduct: RESOURCE_EXHAUSTED: {m}");
            assert!(m.contains("limited to 1048576 bytes"), "{m}");
        }
        other => panic!("a 2 MiB GetProduct: {other:?}"),
    }
    let breaker = rig.parts.breaker_state("GetProduct");
    assert_eq!(breaker, Some("closed"));
    bystander.finish("slow and oversized bodies").await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn internal_ports_refuse_strangers_and_only_sync_writes_the_catalogue() {
    let rig = Rig::start("hostile_internal", &[]).await;
    let shop = rig
        .key("shop-bff", Tier::Authenticated, &[Scope::Public], &[])
        .await;
    let ids = rig.product_ids(&shop).await;
    let victim = ids[0].clone();
    let mut gw = client(rig.gateway.addr, &[("x-api-key", &shop)]).await;
    let before = gw
        .get_product(pb::GetProductRequest { id: victim.clone() })
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();

    // A forged price with a huge version, sent straight to the
    // recommendation port from the pod network.
    let mut forged = before.clone();
    forged.price = Some(pb::Money {
        currency: "EUR".into(),
        amount_minor: 1,
    });
    forged.version = i64::MAX;
    let change = pb::ApplyCatalogChangeRequest {
        changes: vec![pb::CatalogChange {
            sequence: 1,
            product_id: victim.clone(),
            kind: pb::ChangeKind::Upsert as i32,
            product: Some(forged),
            ..Default::default()
        }],
    };
    let plain = Channel::from_shared(format!("http://{}", rig.reco.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut stranger =
        discovery_proto::v1::cache_admin_client::CacheAdminClient::new(plain.clone());
    let e = stranger
        .apply_catalog_change(change.clone())
        .await
        .unwrap_err();
    println!(
        "ApplyCatalogChange without a token: {:?}: {}",
        e.code(),
        e.message()
    );
    assert_eq!(e.code(), Code::Unauthenticated);
    // Another service's identity is not enough either.
    let mut gateway_signed = discovery_proto::v1::cache_admin_client::CacheAdminClient::new(
        common::internal_channel(rig.reco.addr, "gateway"),
    );
    let e = gateway_signed
        .apply_catalog_change(change.clone())
        .await
        .unwrap_err();
    println!(
        "ApplyCatalogChange signed as the gateway: {:?}: {}",
        e.code(),
        e.message()
    );
    assert_eq!(e.code(), Code::PermissionDenied);
    // A wrong token for sync's name.
    let wrong = discovery_kit::internal::InternalAuth::new(b"not the secret, guessed".to_vec());
    let mut guessed = discovery_proto::v1::cache_admin_client::CacheAdminClient::new(
        discovery_kit::client::connect_as(
            "T",
            &format!("http://{}", rig.reco.addr),
            Some(&wrong),
            "sync",
        )
        .unwrap(),
    );
    let e = guessed.apply_catalog_change(change).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // Reads on the internal port are refused too; health is not (the
    // kubelet's probes carry no token); reflection is off.
    let mut catalog = discovery_proto::v1::catalog_client::CatalogClient::new(plain.clone());
    let e = catalog
        .get_product(pb::GetProductRequest { id: victim.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut health = tonic_health::pb::health_client::HealthClient::new(plain.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "discovery.v1.Recommendation".into(),
        })
        .await
        .expect("health needs no token")
        .into_inner();
    assert_eq!(h.status, 1);
    let reflection = reflection_code(common::internal_channel(rig.reco.addr, "gateway")).await;
    assert_eq!(
        reflection,
        Code::Unimplemented,
        "reflection is off on internal ports"
    );

    // Identity headers a public caller forges are replaced by the gateway.
    let mut forger = client(
        rig.gateway.addr,
        &[
            ("x-api-key", &shop),
            ("x-discovery-caller", "sync"),
            ("x-discovery-token", "00"),
            ("x-discovery-client", "someone-else"),
        ],
    )
    .await;
    forger
        .get_product(pb::GetProductRequest { id: victim.clone() })
        .await
        .expect("the call itself is fine");

    // Nothing changed: the price every caller sees is the stored one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = gw
        .get_product(pb::GetProductRequest { id: victim.clone() })
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    println!(
        "price of {victim}: {:?} before, {:?} after the attacks",
        before.price, after.price
    );
    assert_eq!(after.price, before.price);
    rig.stop().await;
}

/// The reflection service's answer code on `channel`.
async fn reflection_code(channel: discovery_kit::client::TracedChannel) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<pb::GetProductRequest, pb::GetProductResponse>::default();
    let path = http::uri::PathAndQuery::from_static(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    );
    match grpc
        .unary(
            tonic::Request::new(pb::GetProductRequest::default()),
            path,
            codec,
        )
        .await
    {
        Ok(_) => Code::Ok,
        Err(e) => e.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_and_shoppers_belong_to_the_key_that_proves_them() {
    let rig = Rig::start("hostile_sessions", &[("DISCOVERY_LIMITS", "off")]).await;
    let bff_a = rig
        .key("shop-a", Tier::Authenticated, &[Scope::Public], &[])
        .await;
    let bff_b = rig
        .key("shop-b", Tier::Authenticated, &[Scope::Public], &[])
        .await;
    let browser = rig
        .key("shop-a-browser", Tier::Anonymous, &[Scope::Public], &[])
        .await;
    let ids = rig.product_ids(&bff_a).await;
    let mut a = client(
        rig.gateway.addr,
        &[("x-api-key", &bff_a), ("x-user-id", "alice")],
    )
    .await;
    let mut b = client(
        rig.gateway.addr,
        &[("x-api-key", &bff_b), ("x-user-id", "alice")],
    )
    .await;
    let mut anon = client(
        rig.gateway.addr,
        &[("x-api-key", &browser), ("x-user-id", "alice")],
    )
    .await;

    let session = pb::SessionContext {
        session_id: "sess-1".into(),
        user_id: "mallory".into(),
        recently_viewed: vec![ids[0].clone()],
        ..Default::default()
    };
    let made = a
        .update_session(pb::UpdateSessionRequest {
            session: Some(session.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(
        made.user_id, "alice",
        "the user comes from the key's tier, not the body"
    );
    // Another client (even naming the same user) and a browser key of the
    // same shop do not see it.
    for (who, c) in [("shop-b", &mut b), ("browser", &mut anon)] {
        let e = c
            .get_session(pb::GetSessionRequest {
                session_id: "sess-1".into(),
            })
            .await
            .unwrap_err();
        println!("GetSession of shop-a's session by {who}: {:?}", e.code());
        assert_eq!(e.code(), Code::NotFound);
    }
    // B writing the same id makes B's own session; A's is unchanged.
    b.update_session(pb::UpdateSessionRequest {
        session: Some(pb::SessionContext {
            session_id: "sess-1".into(),
            recently_viewed: vec![ids[1].clone()],
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    let mine = a
        .get_session(pb::GetSessionRequest {
            session_id: "sess-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(mine.recently_viewed, vec![ids[0].clone()]);

    // Every list is bounded.
    let e = a
        .update_session(pb::UpdateSessionRequest {
            session: Some(pb::SessionContext {
                session_id: "sess-1".into(),
                recently_viewed: (0..10_000).map(|i| format!("p{i}")).collect(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    println!(
        "10,000 recently_viewed entries: {:?}: {}",
        e.code(),
        e.message()
    );
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("recently_viewed"));

    // A browser claiming to be alice in the body records an anonymous
    // interaction: popularity for alice cannot be inflated by others.
    anon.record_interaction(pb::RecordInteractionRequest {
        product_id: ids[2].clone(),
        kind: pb::InteractionKind::Purchase as i32,
        requester: Some(pb::Requester {
            user_id: "alice".into(),
            session_id: "x".into(),
        }),
        at_unix_ms: 0,
        impression_id: String::new(),
    })
    .await
    .unwrap();
    let stored = rig
        .store
        .find(
            "interactions",
            doc! {"productId": &ids[2]},
            FindOptions::default(),
        )
        .await
        .unwrap();
    println!(
        "interaction stored for a browser naming alice: userId {:?}",
        stored[0].get_str("userId")
    );
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].get_str("userId").unwrap(), "");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feeds_are_scoped_to_their_sources_and_cannot_pin_the_future() {
    let rig = Rig::start("hostile_feeds", &[("DISCOVERY_LIMITS", "off")]).await;
    let a = rig
        .key(
            "feeds-a",
            Tier::Partner,
            &[Scope::Ingest, Scope::Public],
            &["shopify:a"],
        )
        .await;
    let b = rig
        .key("feeds-b", Tier::Partner, &[Scope::Ingest], &["shopify:b"])
        .await;
    let addr = rig.gateway.addr;

    // B writing A's source: refused, nothing written.
    let e = feed(
        addr,
        &b,
        "shopify:a",
        shopify_line(1, "2026-01-01T00:00:00Z", "10.00"),
    )
    .await
    .unwrap_err();
    println!("feeds-b writing shopify:a: {:?}: {}", e.code(), e.message());
    assert_eq!(e.code(), Code::PermissionDenied);

    // A's feed: one good record, one dated in year 9999.
    let now = "2026-01-01T00:00:00Z";
    let job = feed(
        addr,
        &a,
        "shopify:a",
        shopify_line(1, now, "100.00") + &shopify_line(2, "9999-01-01T00:00:00Z", "1.00"),
    )
    .await
    .unwrap();
    println!(
        "feeds-a: received {}, upserted {}, rejected {}",
        job.received, job.upserted, job.rejected
    );
    assert_eq!((job.upserted, job.rejected), (1, 1));
    let mut ca = client(addr, &[("x-api-key", &a)]).await;
    let letters = ca
        .list_dead_letters(pb::ListDeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    assert_eq!(letters.len(), 1);
    println!("dead letter: {}", letters[0].reason);
    assert!(
        letters[0].reason.contains("updated_at"),
        "{}",
        letters[0].reason
    );
    assert!(
        letters[0].reason.contains("future"),
        "{}",
        letters[0].reason
    );
    // The far-future record was not stored: a later correction is free.
    let stored = rig.store.get("products", "shopify:a:2").await.unwrap();
    assert!(
        stored.is_none(),
        "the year-9999 record is not in the catalogue"
    );

    // B sees none of A's jobs or dead letters.
    let mut cb = client(addr, &[("x-api-key", &b)]).await;
    let e = cb
        .get_sync_job(pb::GetSyncJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let theirs = cb
        .list_dead_letters(pb::ListDeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner();
    println!(
        "feeds-b listing dead letters: {} (A has {})",
        theirs.dead_letters.len(),
        letters.len()
    );
    assert!(theirs.dead_letters.is_empty());
    let e = cb
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            ids: vec![letters[0].id.clone()],
            job_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refuses_strangers_and_the_services_bring_the_password_from_a_file() {
    const PASSWORD: &str = "redis-test-password-9f3c";
    let redis = tokio::task::spawn_blocking(|| RedisCluster::start_with_password(3, 0, PASSWORD))
        .await
        .unwrap()
        .expect("start a password-protected redis cluster");
    let port = redis.ports()[0];
    // Anyone on the network without the password: refused.
    let stranger = discovery_harness::redis_command(port, "KEYS *").unwrap();
    println!("KEYS * without the password: {}", stranger.trim());
    assert!(stranger.starts_with("-NOAUTH"), "{stranger}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();

    let shutdown = CancellationToken::new();
    let base = Env::from_pairs([
        ("DISCOVERY_RECOMMENDATION_PORT", "0"),
        ("DISCOVERY_METRICS_PORT", "0"),
        ("DISCOVERY_SHUTDOWN_GRACE", "0s"),
        ("DISCOVERY_DEMO_CATALOG", "50"),
        ("DISCOVERY_WARM_INTERVAL", "0s"),
    ])
    .with("DISCOVERY_REDIS_URLS", redis.urls().join(","));
    let good = discovery_recommendation::spawn(
        discovery_recommendation::Config::from_env(
            &base
                .clone()
                .with("DISCOVERY_REDIS_PASSWORD_FILE", file.display().to_string()),
        )
        .unwrap(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let wrong = discovery_recommendation::spawn(
        discovery_recommendation::Config::from_env(
            &base.clone().with("DISCOVERY_REDIS_PASSWORD", "guessed"),
        )
        .unwrap(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let status = |addr: std::net::SocketAddr| async move {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        discovery_proto::v1::cache_admin_client::CacheAdminClient::new(ch)
            .get_cache_status(pb::GetCacheStatusRequest {})
            .await
            .unwrap()
            .into_inner()
    };
    let connected = discovery_harness::eventually(Duration::from_secs(10), async || {
        status(good.addr).await.l2_connected
    })
    .await;
    let refused = status(wrong.addr).await;
    println!(
        "recommendation with the password file: L2 connected {connected}; with a wrong password: L2 connected {}, catalogue {} frames served",
        refused.l2_connected, refused.catalog_size
    );
    assert!(connected, "the right password connects");
    assert!(!refused.l2_connected, "a wrong password does not");
    assert_eq!(refused.catalog_size, 50, "and the replica still serves");
    // The config never shows the password.
    let config = discovery_kit::cache::CacheConfig::from_env(
        &base.with("DISCOVERY_REDIS_PASSWORD_FILE", file.display().to_string()),
    )
    .unwrap();
    assert!(!format!("{config:?}").contains(PASSWORD));
    shutdown.cancel();
    let _ = good.wait().await;
    let _ = wrong.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_address_limits_count_the_shopper_behind_the_balancer_not_what_a_caller_claims() {
    // The gateway sits behind a balancer at 127.0.0.0/8 (the tests' own
    // connections come from there): it appends the shopper's address.
    let rig = Rig::start(
        "hostile_addresses",
        &[
            ("DISCOVERY_TRUSTED_PROXIES", "127.0.0.0/8"),
            ("DISCOVERY_LIMIT_ANONYMOUS", "10/m"),
            ("DISCOVERY_LIMIT_GLOBAL", "off"),
            ("DISCOVERY_LIMIT_CLIENT_SHARE", "off"),
        ],
    )
    .await;
    let browser = rig
        .key("browser", Tier::Anonymous, &[Scope::Public], &[])
        .await;
    let id = rig.product_ids(&browser).await[0].clone();
    let t = rig.target(&browser, 1).await;
    let x = codes_of(&t, &id, 12, &[("x-forwarded-for", "203.0.113.7")]).await;
    let y = codes_of(&t, &id, 10, &[("x-forwarded-for", "198.51.100.9")]).await;
    println!("shopper 203.0.113.7, 12 calls: {x:?}; shopper 198.51.100.9, 10 calls: {y:?}");
    assert_eq!(x.get(&0), Some(&10), "10/m each");
    assert_eq!(x.get(&8), Some(&2));
    assert_eq!(
        y.get(&0),
        Some(&10),
        "another shopper has a bucket of its own"
    );
    // Prepending another address does not escape the bucket: the balancer's
    // entry (the right-most) is the one believed.
    let spoof = codes_of(&t, &id, 5, &[("x-forwarded-for", "6.6.6.6, 203.0.113.7")]).await;
    println!("shopper 203.0.113.7 prepending 6.6.6.6: {spoof:?}");
    assert_eq!(spoof.get(&8), Some(&5));
    // Rotating IPv6 addresses within one /64: one bucket.
    let mut v6 = std::collections::BTreeMap::new();
    for i in 1..=30 {
        let addr = format!("2001:db8:1:2::{i:x}");
        for (c, n) in codes_of(&t, &id, 1, &[("x-forwarded-for", &addr)]).await {
            *v6.entry(c).or_insert(0) += n;
        }
    }
    println!("30 calls from 30 addresses of one IPv6 /64: {v6:?}");
    assert_eq!(v6.get(&0), Some(&10));
    assert_eq!(v6.get(&8), Some(&20));
    rig.stop().await;

    // Without trusted proxies, the header is ignored: a caller cannot
    // become a new shopper by naming one.
    let rig = Rig::start(
        "hostile_addresses_direct",
        &[
            ("DISCOVERY_LIMIT_ANONYMOUS", "10/m"),
            ("DISCOVERY_LIMIT_GLOBAL", "off"),
            ("DISCOVERY_LIMIT_CLIENT_SHARE", "off"),
        ],
    )
    .await;
    let browser = rig
        .key("browser", Tier::Anonymous, &[Scope::Public], &[])
        .await;
    let id = rig.product_ids(&browser).await[0].clone();
    let t = rig.target(&browser, 1).await;
    let mut rotated = std::collections::BTreeMap::new();
    for i in 0..20 {
        let fake = format!("198.51.100.{i}");
        for (c, n) in codes_of(&t, &id, 1, &[("x-forwarded-for", &fake)]).await {
            *rotated.entry(c).or_insert(0) += n;
        }
    }
    println!("20 calls each claiming a new X-Forwarded-For, no trusted proxy: {rotated:?}");
    // The search above used one call of this address's 10.
    assert_eq!(rotated.get(&0), Some(&9));
    assert_eq!(rotated.get(&8), Some(&11));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_tenant_cannot_take_the_whole_global_budget() {
    let rig = Rig::start(
        "hostile_share",
        &[
            ("DISCOVERY_LIMIT_GLOBAL", "40/m:40"),
            ("DISCOVERY_LIMIT_CLIENT_SHARE", "0.5"),
        ],
    )
    .await;
    let greedy = rig
        .key("greedy-shop", Tier::Partner, &[Scope::Public], &[])
        .await;
    let modest = rig
        .key("modest-shop", Tier::Partner, &[Scope::Public], &[])
        .await;
    let id = rig.product_ids(&modest).await[0].clone();
    let g = rig.target(&greedy, 1).await;
    let burst = codes_of(&g, &id, 60, &[]).await;
    let refusal = g
        .call_with(GET, frame(&pb::GetProductRequest { id: id.clone() }), &[])
        .await;
    println!("greedy tenant, 60 calls against a global 40: {burst:?}; then: {refusal:?}");
    assert_eq!(burst.get(&0), Some(&20), "half of the global budget");
    match refusal {
        Err(CallError::Status(8, m)) => assert!(m.contains("share of the global rate"), "{m}"),
        other => panic!("{other:?}"),
    }
    let m = rig.target(&modest, 1).await;
    let others = codes_of(&m, &id, 15, &[]).await;
    println!("the other tenant, right after: {others:?}");
    assert_eq!(
        others.get(&0),
        Some(&15),
        "the rest of the budget is there for others"
    );
    rig.stop().await;
}

/// A PNG of a few dozen bytes whose header claims `w` x `h` RGBA pixels.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    discovery_face_analysis::image::testing::png_claiming(w, h, 6, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tiny_photo_describing_a_huge_image_is_refused_before_decoding() {
    let rig = Rig::start_full("hostile_photo", &[("DISCOVERY_LIMITS", "off")], true).await;
    let shop = rig
        .key("shop-bff", Tier::Authenticated, &[Scope::Public], &[])
        .await;
    let ids = rig.product_ids(&shop).await;
    let bystander = Bystander::start(Arc::new(rig.target(&shop, 1).await), ids);
    let mut c = client(rig.gateway.addr, &[("x-api-key", &shop)]).await;
    // 6,000 x 6,000 RGBA: 36 MP, under the 40 MP cap, ~250 MB to decode.
    let bomb = png_claiming(6000, 6000);
    let mut refused = 0;
    for i in 0..20 {
        let e = c
            .analyze_face(pb::AnalyzeFaceRequest {
                requester: Some(pb::Requester {
                    user_id: String::new(),
                    session_id: format!("s{i}"),
                }),
                input: Some(pb::analyze_face_request::Input::Image(bomb.clone())),
                include_landmarks: false,
            })
            .await
            .unwrap_err();
        if i == 0 {
            println!(
                "a {}-byte PNG claiming 6000x6000: {:?}: {}",
                bomb.len(),
                e.code(),
                e.message()
            );
        }
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("to decode"), "{}", e.message());
        refused += 1;
    }
    println!("{refused} such photos refused from their header");
    bystander.finish("decompression bombs").await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_made_up_search_words_leaves_other_callers_served() {
    let rig = Rig::start("hostile_search", &[("DISCOVERY_LIMITS", "off")]).await;
    let shop = rig
        .key("shop-bff", Tier::Authenticated, &[Scope::Public], &[])
        .await;
    let ids = rig.product_ids(&shop).await;
    let bystander = Bystander::start(Arc::new(rig.target(&shop, 1).await), ids);
    let attacker = Arc::new(rig.target(&shop, 4).await);
    let mut rng = discovery_kit::rng::SplitMix(11);
    let letters: Vec<char> = "abcdefghijklmnopqrstuvwxyz".chars().collect();
    let mut codes = std::collections::BTreeMap::new();
    let started = std::time::Instant::now();
    for _ in 0..10 {
        let batch: Vec<_> = (0..40)
            .map(|_| {
                // 12 words of 8 letters: each one scans the vocabulary for typos.
                let query = (0..12)
                    .map(|_| (0..8).map(|_| *rng.pick(&letters)).collect::<String>())
                    .collect::<Vec<_>>()
                    .join(" ");
                let t = attacker.clone();
                tokio::spawn(async move {
                    code_of(
                        &t.call_with(
                            "/discovery.v1.Discovery/SearchProducts",
                            frame(&pb::SearchProductsRequest {
                                query,
                                ..Default::default()
                            }),
                            &[],
                        )
                        .await,
                    )
                })
            })
            .collect();
        for c in futures::future::join_all(batch).await {
            *codes.entry(c.unwrap()).or_insert(0) += 1;
        }
    }
    println!(
        "400 searches of 12 made-up words, 40 at a time: codes {codes:?} in {:?}",
        started.elapsed()
    );
    assert_eq!(codes.get(&0), Some(&400), "answered (nothing matches)");
    bystander.finish("search flood").await;
    rig.stop().await;
}
