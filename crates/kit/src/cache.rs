//! The two-level cache: L1 in-process, L2 Redis Cluster, then the origin.
//!
//! - L1 is a `moka` cache (TinyLFU admission, LRU eviction) bounded in bytes
//!   (`DISCOVERY_CACHE_L1_BYTES`), with each entry expiring at its kind's TTL.
//! - L2 is a `fred` connection pool to a Redis Cluster; values over
//!   [`COMPRESS_ABOVE`] bytes are zstd-compressed; every key gets its kind's TTL.
//! - [`Cache::get_or_load`] is single-flight per key: concurrent misses on
//!   one key run the loader once and share its result.
//! - A failing or absent L2 never fails a call: errors are logged, counted in
//!   `discovery_cache_l2_errors_total`, and the lookup falls through to the
//!   origin (degraded to L1 + origin).
//!
//! Key patterns and TTLs per kind come from the seed spec (see [`kinds`]).
//! Tags, cross-replica invalidation, stale-while-revalidate and warming are
//! built on this by the recommendation issue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::*;

use crate::config::{ConfigError, Env};

/// Values larger than this are zstd-compressed in L2.
pub const COMPRESS_ABOVE: usize = 1024;

/// A kind of cached value: its name (metrics label, key prefix) and TTL.
#[derive(Debug)]
pub struct CacheKind {
    /// Name, also the key prefix (`recommendations`, `product`...).
    pub name: &'static str,
    /// Time to live.
    pub ttl: Duration,
    /// Whether a read extends the TTL (sessions).
    pub sliding: bool,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CacheKind {
    /// A kind with a fixed TTL.
    pub const fn new(name: &'static str, ttl: Duration, sliding: bool) -> Self {
        Self {
            name,
            ttl,
            sliding,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }
    /// Hits since start on this replica.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
    /// Misses since start on this replica.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

/// The kinds from the seed spec.
pub mod kinds {
    use super::CacheKind;
    use std::time::Duration;
    /// `recommendations:{user_id}:{face_shape}:{preferences_hash}`, 15 min.
    pub static RECOMMENDATIONS: CacheKind =
        CacheKind::new("recommendations", Duration::from_secs(15 * 60), false);
    /// `product:{product_id}:{version}`, 6 h.
    pub static PRODUCT: CacheKind = CacheKind::new("product", Duration::from_secs(6 * 3600), false);
    /// `search:{query_hash}`, 30 min.
    pub static SEARCH: CacheKind = CacheKind::new("search", Duration::from_secs(30 * 60), false);
    /// `conversation:{session_id}`, 30 min sliding.
    pub static SESSION: CacheKind =
        CacheKind::new("conversation", Duration::from_secs(30 * 60), true);
    /// `face_analysis:{session_id}:{hash}`, 1 h.
    pub static FACE_ANALYSIS: CacheKind =
        CacheKind::new("face_analysis", Duration::from_secs(3600), false);
}

/// Cache settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// L1 budget in bytes.
    pub l1_bytes: u64,
    /// Redis Cluster seed nodes (`host:port`); empty means no L2.
    pub redis_nodes: Vec<(String, u16)>,
    /// Connections per node.
    pub redis_pool: usize,
    /// Per-command timeout for L2 (a slow Redis degrades, it does not stall).
    pub redis_timeout: Duration,
}

impl CacheConfig {
    /// Reads `DISCOVERY_CACHE_L1_BYTES`, `DISCOVERY_REDIS_URLS`, `DISCOVERY_REDIS_POOL`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut nodes = Vec::new();
        for url in env.list("DISCOVERY_REDIS_URLS", &[]) {
            nodes.push(parse_node(&url).ok_or_else(|| {
                ConfigError::new(
                    "DISCOVERY_REDIS_URLS",
                    format!("{url:?} is not a Redis node (redis://host:port or host:port)"),
                )
            })?);
        }
        Ok(Self {
            l1_bytes: env.parse("DISCOVERY_CACHE_L1_BYTES", 256 << 20, "a number of bytes")?,
            redis_nodes: nodes,
            redis_pool: env.parse("DISCOVERY_REDIS_POOL", 4usize, "a whole number")?,
            redis_timeout: Duration::from_millis(250),
        })
    }

    /// L1 only, with `bytes` of budget.
    pub fn l1_only(bytes: u64) -> Self {
        Self {
            l1_bytes: bytes,
            redis_nodes: Vec::new(),
            redis_pool: 1,
            redis_timeout: Duration::from_millis(250),
        }
    }
}

fn parse_node(url: &str) -> Option<(String, u16)> {
    let rest = url
        .trim()
        .trim_start_matches("redis://")
        .trim_start_matches("redis-cluster://");
    let rest = rest.split('/').next()?;
    let (host, port) = rest.rsplit_once(':')?;
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

/// L2 could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("DISCOVERY_REDIS_URLS: cannot configure the Redis Cluster client: {0}")]
pub struct CacheError(String);

#[derive(Clone)]
struct Entry {
    value: Bytes,
    ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<Arc<str>, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _k: &Arc<str>, v: &Entry, _now: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
    fn expire_after_update(
        &self,
        _k: &Arc<str>,
        v: &Entry,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct Cache {
    l1: moka::future::Cache<Arc<str>, Entry>,
    l2: Option<Pool>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("l1_entries", &self.l1.entry_count())
            .field("l2", &self.l2.is_some())
            .finish()
    }
}

impl Cache {
    /// Builds the cache; connects L2 in the background (it never blocks start-up:
    /// until Redis answers, lookups degrade to L1 + origin).
    pub async fn new(config: &CacheConfig) -> Result<Self, CacheError> {
        let l1 = moka::future::Cache::builder()
            .max_capacity(config.l1_bytes)
            .weigher(|k: &Arc<str>, v: &Entry| {
                (k.len() + v.value.len() + 64).min(u32::MAX as usize) as u32
            })
            .expire_after(PerEntryTtl)
            .build();
        let l2 = if config.redis_nodes.is_empty() {
            None
        } else {
            let mut cfg = Config {
                server: ServerConfig::new_clustered(config.redis_nodes.clone()),
                fail_fast: true,
                ..Default::default()
            };
            cfg.version = fred::types::RespVersion::RESP3;
            let timeout = config.redis_timeout;
            let pool = Builder::from_config(cfg)
                .with_connection_config(|c| {
                    c.connection_timeout = Duration::from_secs(2);
                    c.max_command_attempts = 2;
                })
                .with_performance_config(|p| {
                    p.default_command_timeout = timeout;
                })
                .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
                .build_pool(config.redis_pool.max(1))
                .map_err(|e| CacheError(e.to_string()))?;
            let p = pool.clone();
            tokio::spawn(async move {
                if let Err(e) = p.init().await {
                    tracing::warn!(error = %e, "Redis Cluster not reachable yet; serving from L1 + origin");
                }
            });
            Some(pool)
        };
        Ok(Self { l1, l2 })
    }

    /// Whether an L2 is configured and currently connected.
    pub fn l2_connected(&self) -> bool {
        self.l2.as_ref().is_some_and(|p| p.is_connected())
    }

    /// Waits up to `timeout` for L2 to connect (for tests and readiness).
    pub async fn wait_l2(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.l2_connected() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.l2_connected()
    }

    /// Entries and weighted bytes in L1.
    pub fn l1_usage(&self) -> (u64, u64) {
        (self.l1.entry_count(), self.l1.weighted_size())
    }

    /// Looks `key` up in L1, then L2 (filling L1 on an L2 hit).
    pub async fn get(&self, kind: &'static CacheKind, key: &str) -> Option<Bytes> {
        if let Some(e) = self.l1.get(key).await {
            if kind.sliding {
                self.touch_l2(kind, key).await;
            }
            record(kind, "l1", true);
            return Some(e.value);
        }
        if let Some(v) = self.l2_get(kind, key).await {
            self.l1
                .insert(
                    Arc::from(key),
                    Entry {
                        value: v.clone(),
                        ttl: kind.ttl,
                    },
                )
                .await;
            record(kind, "l2", true);
            return Some(v);
        }
        record(kind, "all", false);
        None
    }

    /// Stores `value` under `key` in both levels with the kind's TTL.
    pub async fn set(&self, kind: &'static CacheKind, key: &str, value: Bytes) {
        self.l1
            .insert(
                Arc::from(key),
                Entry {
                    value: value.clone(),
                    ttl: kind.ttl,
                },
            )
            .await;
        self.l2_set(kind, key, &value).await;
    }

    /// Removes `key` from both levels.
    pub async fn delete(&self, key: &str) {
        self.l1.invalidate(key).await;
        if let Some(pool) = &self.l2
            && let Err(e) = pool.del::<i64, _>(key).await
        {
            l2_error("del", &e);
        }
    }

    /// Removes `key` from this replica's L1 only.
    pub async fn delete_local(&self, key: &str) {
        self.l1.invalidate(key).await;
    }

    /// Returns the cached value or runs `load` once for all concurrent callers
    /// of the same key, caching its `Ok` result.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        kind: &'static CacheKind,
        key: &str,
        load: F,
    ) -> Result<Bytes, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Bytes, E>>,
        E: Send + Sync + 'static,
    {
        if let Some(e) = self.l1.get(key).await {
            record(kind, "l1", true);
            return Ok(e.value);
        }
        let entry = self
            .l1
            .try_get_with(Arc::from(key), async {
                if let Some(v) = self.l2_get(kind, key).await {
                    record(kind, "l2", true);
                    return Ok(Entry {
                        value: v,
                        ttl: kind.ttl,
                    });
                }
                record(kind, "all", false);
                let v = load().await?;
                self.l2_set(kind, key, &v).await;
                Ok(Entry {
                    value: v,
                    ttl: kind.ttl,
                })
            })
            .await?;
        Ok(entry.value)
    }

    async fn l2_get(&self, kind: &'static CacheKind, key: &str) -> Option<Bytes> {
        let pool = self.l2.as_ref()?;
        if !pool.is_connected() {
            return None;
        }
        let started = Instant::now();
        let r: Result<Option<Bytes>, _> = pool.get(key).await;
        if kind.sliding && matches!(r, Ok(Some(_))) {
            self.touch_l2(kind, key).await;
        }
        metrics::histogram!("discovery_cache_l2_duration_seconds", "kind" => kind.name, "op" => "get")
            .record(started.elapsed().as_secs_f64());
        match r {
            Ok(v) => v.and_then(|b| decode(&b)),
            Err(e) => {
                l2_error("get", &e);
                None
            }
        }
    }

    async fn l2_set(&self, kind: &'static CacheKind, key: &str, value: &Bytes) {
        let Some(pool) = &self.l2 else { return };
        if !pool.is_connected() {
            return;
        }
        let started = Instant::now();
        let r: Result<(), _> = pool
            .set(
                key,
                Bytes::from(encode(value)),
                Some(Expiration::EX(kind.ttl.as_secs().max(1) as i64)),
                None,
                false,
            )
            .await;
        metrics::histogram!("discovery_cache_l2_duration_seconds", "kind" => kind.name, "op" => "set")
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = r {
            l2_error("set", &e);
        }
    }

    async fn touch_l2(&self, kind: &'static CacheKind, key: &str) {
        if let Some(pool) = &self.l2
            && pool.is_connected()
            && let Err(e) = pool
                .expire::<i64, _>(key, kind.ttl.as_secs() as i64, None)
                .await
        {
            l2_error("expire", &e);
        }
    }
}

fn record(kind: &'static CacheKind, level: &'static str, hit: bool) {
    if hit {
        kind.hits.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("discovery_cache_requests_total", "kind" => kind.name, "result" => "hit", "level" => level).increment(1);
    } else {
        kind.misses.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("discovery_cache_requests_total", "kind" => kind.name, "result" => "miss", "level" => level).increment(1);
    }
}

fn l2_error(op: &'static str, e: &fred::error::Error) {
    metrics::counter!("discovery_cache_l2_errors_total", "op" => op).increment(1);
    tracing::debug!(op, error = %e, "L2 cache error; degrading to L1 + origin");
}

const RAW: u8 = 0;
const ZSTD: u8 = 1;

/// L2 wire format: one header byte (0 raw, 1 zstd) then the payload.
fn encode(value: &[u8]) -> Vec<u8> {
    if value.len() > COMPRESS_ABOVE
        && let Ok(c) = zstd::bulk::compress(value, 3)
        && c.len() < value.len()
    {
        let mut out = Vec::with_capacity(c.len() + 1);
        out.push(ZSTD);
        out.extend_from_slice(&c);
        return out;
    }
    let mut out = Vec::with_capacity(value.len() + 1);
    out.push(RAW);
    out.extend_from_slice(value);
    out
}

/// Decodes [`encode`]'s format; `None` for anything else (treated as a miss).
fn decode(b: &[u8]) -> Option<Bytes> {
    match b.split_first()? {
        (&RAW, rest) => Some(Bytes::copy_from_slice(rest)),
        // Bounded: cached values are at most a few MiB.
        (&ZSTD, rest) => zstd::bulk::decompress(rest, 64 << 20).ok().map(Bytes::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trips_and_compresses() {
        let small = b"hello".to_vec();
        assert_eq!(decode(&encode(&small)).unwrap(), small);
        let big = vec![7u8; 10_000];
        let enc = encode(&big);
        assert!(enc.len() < 200, "{}", enc.len());
        assert_eq!(decode(&enc).unwrap(), big);
        assert!(decode(&[9, 1, 2]).is_none());
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

    static TEST_KIND: CacheKind = CacheKind::new("test", Duration::from_secs(60), false);

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
                    .get_or_load(&TEST_KIND, "k", || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, std::io::Error>(Bytes::from_static(b"v"))
                    })
                    .await
                    .unwrap()
            }));
        }
        for h in handles {
            assert_eq!(h.await.unwrap(), Bytes::from_static(b"v"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get(&TEST_KIND, "k").await.unwrap(), "v");
        cache.delete("k").await;
        assert!(cache.get(&TEST_KIND, "k").await.is_none());
    }
}
