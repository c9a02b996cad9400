//! The kit's two-level cache against a real Redis Cluster.

use std::time::Duration;

use bytes::Bytes;
use discovery_harness::RedisCluster;
use discovery_kit::cache::{Cache, CacheConfig, CacheKind, Loaded};

fn config(cluster: &RedisCluster) -> CacheConfig {
    CacheConfig {
        redis_nodes: cluster.seeds(),
        redis_pool: 2,
        ..CacheConfig::l1_only(8 << 20)
    }
}

static TEST: CacheKind = CacheKind::new("itest", Duration::from_secs(60), false);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_l2_is_shared_between_replicas() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
        .await
        .unwrap()
        .expect("start cluster");
    let a = Cache::new(&config(&cluster)).await.unwrap();
    let b = Cache::new(&config(&cluster)).await.unwrap();
    assert!(
        a.wait_l2(Duration::from_secs(10)).await && b.wait_l2(Duration::from_secs(10)).await,
        "L2 connects"
    );

    // Keys spread over the cluster's hash slots; values over 1 KiB are compressed.
    let big = Bytes::from(vec![b'x'; 50_000]);
    for i in 0..30 {
        a.set(
            &TEST,
            &format!("product:p{i}:1"),
            if i == 0 {
                big.clone()
            } else {
                Bytes::from(format!("v{i}"))
            },
            &[format!("product:p{i}"), "brand:acme".to_string()],
        )
        .await;
    }
    // Replica b has an empty L1: every hit must come from Redis.
    for i in 0..30 {
        let got = b
            .get(&TEST, &format!("product:p{i}:1"))
            .await
            .expect("L2 hit on the other replica");
        if i == 0 {
            assert_eq!(got, big);
        } else {
            assert_eq!(got, format!("v{i}"));
        }
    }
    // The key really is in Redis with the kind's TTL.
    let masters = cluster.master_ports();
    assert_eq!(masters.len(), 3);
    let mut found_ttl = false;
    for p in &masters {
        let r = discovery_harness::redis_command(*p, "TTL product:p1:1").unwrap();
        if let Some(n) = r
            .trim()
            .strip_prefix(':')
            .and_then(|s| s.parse::<i64>().ok())
            && (1..=60).contains(&n)
        {
            found_ttl = true;
        }
    }
    assert!(
        found_ttl,
        "product:p1:1 has a TTL of at most 60 s on its master"
    );

    a.delete("product:p3:1").await;
    // A third replica (empty L1) sees the delete.
    let c = Cache::new(&config(&cluster)).await.unwrap();
    assert!(c.wait_l2(Duration::from_secs(10)).await);
    assert!(
        c.get(&TEST, "product:p3:1").await.is_none(),
        "delete reaches L2"
    );
    assert!(c.get(&TEST, "product:p4:1").await.is_some());

    // Tag invalidation on one replica reaches L2 and the L1 of the others
    // (b filled its L1 from L2 above, tags included).
    let started = std::time::Instant::now();
    a.invalidate_tags(&["product:p5".to_string()]).await;
    let mut gone_on_b = None;
    for _ in 0..200 {
        if b.get(&TEST, "product:p5:1").await.is_none() {
            gone_on_b = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delay = gone_on_b.expect("invalidation reached replica b's L1");
    assert!(
        b.get(&TEST, "product:p6:1").await.is_some(),
        "untagged entries stay"
    );
    assert!(
        c.get(&TEST, "product:p5:1").await.is_none(),
        "L2 copy dropped"
    );
    // By brand: every entry on every replica.
    b.invalidate_tags(&["brand:acme".to_string()]).await;
    let mut all_gone = false;
    for _ in 0..200 {
        let mut any = false;
        for i in 6..30 {
            any |= a.get(&TEST, &format!("product:p{i}:1")).await.is_some();
        }
        if !any {
            all_gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(all_gone, "brand tag dropped every entry on replica a");
    eprintln!(
        "redis cluster: 30 keys shared across replicas via L2, TTL, delete and tag invalidation verified; \
         cross-replica L1 invalidation delay {delay:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_degrades_to_l1_and_origin() {
    // A port nothing listens on: L2 never connects, calls still succeed.
    let cfg = CacheConfig {
        redis_nodes: vec![("127.0.0.1".into(), 1)],
        ..CacheConfig::l1_only(1 << 20)
    };
    let cache = Cache::new(&cfg).await.unwrap();
    let v = cache
        .get_or_load(
            &discovery_recommendation::kinds::PRODUCT,
            "product:x:1",
            || async { Ok::<_, String>(Loaded::new(Bytes::from_static(b"origin"), vec![])) },
        )
        .await
        .unwrap();
    assert_eq!(v.value, "origin");
    assert_eq!(
        cache
            .get(&discovery_recommendation::kinds::PRODUCT, "product:x:1")
            .await
            .unwrap(),
        "origin"
    );
    assert!(!cache.l2_connected());
}

/// Long enough that writing 500 keys on a loaded CI machine (debug build, tests
/// running side by side) finishes well before the first of them expires: a 1 s
/// TTL made the count before expiry depend on the machine's speed.
const SHORT_TTL: Duration = Duration::from_secs(5);
static SHORT: CacheKind = CacheKind::new("itest_short", SHORT_TTL, false);

/// Where a key lives in the cluster: the master whose slots hold it.
fn node_of(cluster: &RedisCluster, key: &str) -> u16 {
    for port in cluster.master_ports() {
        let r = discovery_harness::redis_command(port, &format!("ZCARD {key}")).unwrap();
        if !r.starts_with("-MOVED") {
            return port;
        }
    }
    panic!("no master holds {key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_tag_set_holds_only_live_keys() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
        .await
        .unwrap()
        .expect("start cluster");
    let cache = Cache::new(&config(&cluster)).await.unwrap();
    assert!(cache.wait_l2(Duration::from_secs(10)).await);
    let tag = "face_shape:oval".to_string();
    let started = std::time::Instant::now();
    for i in 0..500 {
        cache
            .set(
                &SHORT,
                &format!("recommendations:k{i}"),
                Bytes::from_static(b"v"),
                std::slice::from_ref(&tag),
            )
            .await;
    }
    let set = "tagz:face_shape:oval";
    let port = node_of(&cluster, set);
    let card = |port: u16| {
        discovery_harness::redis_command(port, &format!("ZCARD {set}"))
            .unwrap()
            .trim()
            .trim_start_matches(':')
            .parse::<u64>()
            .unwrap()
    };
    let before = card(port);
    let writing = started.elapsed();
    assert_eq!(
        before, 500,
        "every key written is live (written in {writing:?}, TTL {SHORT_TTL:?})"
    );
    // The keys expire; the next add prunes them from the set.
    tokio::time::sleep(SHORT_TTL + Duration::from_millis(1100)).await;
    cache
        .set(
            &SHORT,
            "recommendations:fresh",
            Bytes::from_static(b"v"),
            std::slice::from_ref(&tag),
        )
        .await;
    let after = card(port);
    println!(
        "tag set of a hot tag: {before} members, {after} after its keys expired and one more was added"
    );
    assert_eq!(after, 1, "only the live key is left");
    // Invalidation still finds the live key.
    cache.invalidate_tags(std::slice::from_ref(&tag)).await;
    assert_eq!(card(port), 0);
}
