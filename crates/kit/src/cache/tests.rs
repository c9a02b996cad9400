use super::config::parse_node;
use super::*;

static TEST_KIND: CacheKind = CacheKind::new("test", Duration::from_secs(60), false);
static SWR_KIND: CacheKind = CacheKind::new("swr", Duration::from_secs(60), false)
    .stale_while_revalidate(Duration::from_millis(0));

#[test]
fn codec_round_trips_and_compresses() {
    let tags: Vec<Arc<str>> = vec![Arc::from("product:p1"), Arc::from("brand:x")];
    let small = b"hello".to_vec();
    let e = decode(&encode(&small, 42, &tags), &TEST_KIND).unwrap();
    assert_eq!(e.value, small);
    assert_eq!(e.stored_at_ms, 42);
    assert_eq!(&*e.tags, &tags[..]);
    let big = vec![7u8; 10_000];
    let enc = encode(&big, 1, &[]);
    assert!(enc.len() < 200, "{}", enc.len());
    assert_eq!(decode(&enc, &TEST_KIND).unwrap().value, big);
    assert!(decode(&[9, 1, 2], &TEST_KIND).is_none());
    // Truncated headers are misses, not panics.
    let full = encode(b"abc", 1, &tags);
    for n in 0..full.len() {
        let _ = decode(&full[..n], &TEST_KIND);
    }
}

#[test]
fn nodes_parse() {
    assert_eq!(
        parse_node("redis://10.0.0.1:7000"),
        Some(("10.0.0.1".into(), 7000))
    );
    assert_eq!(parse_node("h:1"), Some(("h".into(), 1)));
    assert_eq!(parse_node("nope"), None);
}

#[test]
fn globs_match_like_redis() {
    assert!(glob_match(
        "recommendations:*",
        "recommendations:anon:oval:12"
    ));
    assert!(glob_match("*:oval:*", "recommendations:anon:oval:12"));
    assert!(glob_match("product:?:1", "product:a:1"));
    assert!(!glob_match("product:?:1", "product:ab:1"));
    assert!(!glob_match("search:*", "recommendations:x"));
    assert!(glob_match("*", ""));
}

fn loaded(v: &'static str, tags: &[&str]) -> Result<Loaded, String> {
    Ok(Loaded::new(
        Bytes::from_static(v.as_bytes()),
        tags.iter().map(|t| t.to_string()).collect(),
    ))
}

#[tokio::test]
async fn single_flight_runs_loader_once() {
    let cache = Cache::new(&CacheConfig::l1_only(1 << 20)).await.unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..16 {
        let cache = cache.clone();
        let calls = calls.clone();
        handles.push(tokio::spawn(async move {
            cache
                .get_or_load(&TEST_KIND, "k", move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    loaded("v", &[])
                })
                .await
                .unwrap()
        }));
    }
    let mut origins = 0;
    for h in handles {
        let l = h.await.unwrap();
        assert_eq!(l.value, Bytes::from_static(b"v"));
        origins += usize::from(l.source == Source::Origin);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(origins, 1, "one caller loaded, the others waited for it");
    assert_eq!(cache.get(&TEST_KIND, "k").await.unwrap(), "v");
    cache.delete("k").await;
    assert!(cache.get(&TEST_KIND, "k").await.is_none());
}

#[tokio::test]
async fn first_is_true_once_per_key() {
    let cache = Cache::new(&CacheConfig::l1_only(1 << 20)).await.unwrap();
    let ttl = Duration::from_secs(60);
    assert!(cache.first("impression:1:click", ttl).await);
    assert!(!cache.first("impression:1:click", ttl).await);
    assert!(cache.first("impression:1:purchase", ttl).await);
}

#[tokio::test]
async fn tags_drop_exactly_the_tagged_entries() {
    let cache = Cache::new(&CacheConfig::l1_only(1 << 20)).await.unwrap();
    cache
        .set(
            &TEST_KIND,
            "a",
            Bytes::from_static(b"1"),
            &["product:1".into()],
        )
        .await;
    cache
        .set(
            &TEST_KIND,
            "b",
            Bytes::from_static(b"2"),
            &["product:1".into(), "brand:x".into()],
        )
        .await;
    let l = cache
        .get_or_load(&TEST_KIND, "c", || async { loaded("3", &["brand:y"]) })
        .await
        .unwrap();
    assert_eq!(l.source, Source::Origin);
    assert_eq!(cache.invalidate_tags(&["product:1".into()]).await, 2);
    assert!(cache.get(&TEST_KIND, "a").await.is_none());
    assert!(cache.get(&TEST_KIND, "b").await.is_none());
    assert!(cache.get(&TEST_KIND, "c").await.is_some());
    assert_eq!(cache.invalidate_tags(&["brand:y".into()]).await, 1);
    assert!(cache.get(&TEST_KIND, "c").await.is_none());
    cache
        .set(&TEST_KIND, "recommendations:1", Bytes::new(), &[])
        .await;
    cache.set(&TEST_KIND, "search:1", Bytes::new(), &[]).await;
    assert_eq!(cache.invalidate_pattern("recommendations:*").await, 1);
    assert!(cache.get(&TEST_KIND, "search:1").await.is_some());
}

#[tokio::test]
async fn stale_entries_are_served_while_one_refresh_runs() {
    let cache = Cache::new(&CacheConfig::l1_only(1 << 20)).await.unwrap();
    let first = cache
        .get_or_load(&SWR_KIND, "k", || async { loaded("old", &[]) })
        .await
        .unwrap();
    assert_eq!(first.value, "old");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = cache
        .get_or_load(&SWR_KIND, "k", || async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            loaded("new", &[])
        })
        .await
        .unwrap();
    assert_eq!(second.value, "old", "stale value served at once");
    assert!(second.stale);
    let mut seen_new = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if cache.get(&SWR_KIND, "k").await.unwrap() == "new" {
            seen_new = true;
            break;
        }
    }
    assert!(seen_new, "background refresh replaced the entry");
}

#[tokio::test]
async fn uncacheable_results_are_returned_not_stored() {
    let cache = Cache::new(&CacheConfig::l1_only(1 << 20)).await.unwrap();
    let l = cache
        .get_or_load(&TEST_KIND, "k", || async {
            Ok::<_, String>(Loaded {
                cacheable: false,
                ..Loaded::new(Bytes::from_static(b"v"), vec![])
            })
        })
        .await
        .unwrap();
    assert_eq!(l.value, "v");
    assert!(cache.get(&TEST_KIND, "k").await.is_none());
}
