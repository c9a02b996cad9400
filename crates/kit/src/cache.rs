//! The two-level cache: L1 in-process, L2 Redis Cluster, then the origin.
//!
//! - L1 is a `moka` cache (TinyLFU admission, LRU eviction) bounded in bytes
//!   (`DISCOVERY_CACHE_L1_BYTES`), with each entry expiring at its kind's TTL.
//! - L2 is a `fred` connection pool to a Redis Cluster; values over
//!   [`COMPRESS_ABOVE`] bytes are zstd-compressed; every key gets its kind's TTL.
//! - [`Cache::get_or_load`] is single-flight per key (concurrent misses on one
//!   key run the loader once) and stale-while-revalidate: past its kind's
//!   `fresh_for`, an entry is still served while one background refresh
//!   replaces it.
//! - Tags (`product:{id}`, `brand:{name}`, `face_shape:{shape}`) are attached
//!   to entries when stored. [`Cache::invalidate_tags`] drops the tagged
//!   entries from this replica's L1 (an in-process tag index), from L2 (a Redis
//!   sorted set `tagz:{tag}` of keys per tag, scored by when each key
//!   expires) and, through the [`Bus`], from the L1 of every other replica.
//!   Every add prunes the members that have expired (one script, one round
//!   trip), so a hot tag's set holds only live keys: it is bounded by the
//!   keys alive at once, not by every key ever tagged.
//! - A failing or absent L2 never fails a call: errors are logged, counted in
//!   `discovery_cache_l2_errors_total`, and the lookup falls through to the
//!   origin (degraded to L1 + origin).
//! - Kinds marked `shared` (sessions) hold state rather than derived data:
//!   with an L2 they skip L1, so every replica reads the same value.
//!
//! Each service declares its own kinds (key pattern and TTL from the seed
//! spec) as `static CacheKind`s: the kit knows none of them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fred::prelude::*;
use futures::StreamExt;
use parking_lot::Mutex;

use crate::bus::Bus;
use crate::config::{ConfigError, Env};

/// The L2 key of a tag's set of keys.
fn tag_set(tag: &str) -> String {
    format!("tagz:{tag}")
}

/// Adds a key to a tag's set (score: when it expires, ms), drops the
/// members already expired, and keeps the set as long as its newest
/// member. KEYS: the set; ARGV: expiry, key, now, TTL (ms).
static TAG_ADD: std::sync::LazyLock<fred::types::scripts::Script> =
    std::sync::LazyLock::new(|| {
        fred::types::scripts::Script::from_lua(
            r#"
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('ZCARD', KEYS[1])
"#,
        )
    });

/// Values larger than this are zstd-compressed in L2.
pub const COMPRESS_ABOVE: usize = 1024;

/// Bus channel carrying invalidations between replicas.
pub const INVALIDATION_CHANNEL: &str = "discovery:cache:invalidate";

/// A kind of cached value: its name (metrics label, key prefix) and TTLs.
#[derive(Debug)]
pub struct CacheKind {
    /// Name, also the key prefix (`recommendations`, `product`...).
    pub name: &'static str,
    /// Time to live (hard expiry).
    pub ttl: Duration,
    /// Whether a read extends the TTL (sessions).
    pub sliding: bool,
    /// Served without refresh for this long; after that, served stale while one
    /// background refresh runs (`None`: fresh until the TTL).
    pub fresh_for: Option<Duration>,
    /// State shared between replicas: skip L1 when an L2 is configured.
    pub shared: bool,
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    l1_entries: AtomicI64,
    l1_bytes: AtomicI64,
}

impl CacheKind {
    /// A kind with a fixed TTL.
    pub const fn new(name: &'static str, ttl: Duration, sliding: bool) -> Self {
        Self {
            name,
            ttl,
            sliding,
            fresh_for: None,
            shared: false,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            l1_entries: AtomicI64::new(0),
            l1_bytes: AtomicI64::new(0),
        }
    }
    /// Serve stale after `fresh` while refreshing in the background.
    pub const fn stale_while_revalidate(mut self, fresh: Duration) -> Self {
        self.fresh_for = Some(fresh);
        self
    }
    /// State shared between replicas (see the module docs).
    pub const fn shared(mut self) -> Self {
        self.shared = true;
        self
    }
    /// Hits since start on this replica.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
    /// Misses since start on this replica.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
    /// Stale hits served (with a background refresh) since start.
    pub fn stale_hits(&self) -> u64 {
        self.stale.load(Ordering::Relaxed)
    }
    /// Entries and bytes of this kind in this replica's L1 (approximate:
    /// evictions are accounted when the cache runs its maintenance).
    pub fn l1_usage(&self) -> (u64, u64) {
        (
            self.l1_entries.load(Ordering::Relaxed).max(0) as u64,
            self.l1_bytes.load(Ordering::Relaxed).max(0) as u64,
        )
    }
}

/// L2 could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("DISCOVERY_REDIS_URLS: cannot configure the Redis Cluster client: {0}")]
pub struct CacheError(String);

type Tags = Arc<[Arc<str>]>;

#[derive(Clone)]
struct Entry {
    value: Bytes,
    stored_at_ms: i64,
    kind: &'static CacheKind,
    tags: Tags,
}

impl Entry {
    fn weight(&self, key: &str) -> u64 {
        (key.len() + self.value.len() + 96 + self.tags.iter().map(|t| t.len() + 16).sum::<usize>())
            as u64
    }
}

struct PerEntryTtl;

impl moka::Expiry<Arc<str>, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _k: &Arc<str>, v: &Entry, _now: Instant) -> Option<Duration> {
        Some(v.kind.ttl)
    }
    fn expire_after_update(
        &self,
        _k: &Arc<str>,
        v: &Entry,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.kind.ttl)
    }
    fn expire_after_read(
        &self,
        _k: &Arc<str>,
        v: &Entry,
        _now: Instant,
        current: Option<Duration>,
        _last_modified: Instant,
    ) -> Option<Duration> {
        if v.kind.sliding {
            Some(v.kind.ttl)
        } else {
            current
        }
    }
}

/// Tag -> keys in this replica's L1.
type TagIndex = Arc<Mutex<HashMap<Arc<str>, HashSet<Arc<str>>>>>;

/// Where a lookup was answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This replica's memory.
    L1,
    /// Redis Cluster.
    L2,
    /// The loader ran.
    Origin,
}

/// A lookup's answer.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The value.
    pub value: Bytes,
    /// Where it came from.
    pub source: Source,
    /// Past its kind's `fresh_for` (a background refresh was started).
    pub stale: bool,
}

/// What a loader returns.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The value.
    pub value: Bytes,
    /// Tags to attach.
    pub tags: Vec<String>,
    /// False to return the value without caching it (e.g. computed from a
    /// snapshot that changed meanwhile).
    pub cacheable: bool,
}

impl Loaded {
    /// A cacheable value with tags.
    pub fn new(value: Bytes, tags: Vec<String>) -> Self {
        Self {
            value,
            tags,
            cacheable: true,
        }
    }
}

enum LoadFailure<E> {
    Failed(E),
    Uncacheable(Bytes),
}

/// See the module docs.
#[derive(Clone)]
pub struct Cache {
    l1: moka::future::Cache<Arc<str>, Entry>,
    l2: Option<Pool>,
    tags: TagIndex,
    refreshing: Arc<Mutex<HashSet<Arc<str>>>>,
    bus: Arc<Bus>,
    /// [`Cache::count`]'s windows while Redis is unreachable.
    local_counts: moka::future::Cache<String, Arc<std::sync::atomic::AtomicU64>>,
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
        let tags: TagIndex = Arc::default();
        let index = tags.clone();
        let l1 = moka::future::Cache::builder()
            .max_capacity(config.l1_bytes)
            .weigher(|k: &Arc<str>, v: &Entry| v.weight(k).min(u32::MAX as u64) as u32)
            .expire_after(PerEntryTtl)
            .eviction_listener(move |k: Arc<Arc<str>>, v: Entry, cause| {
                v.kind.l1_entries.fetch_sub(1, Ordering::Relaxed);
                v.kind
                    .l1_bytes
                    .fetch_sub(v.weight(&k) as i64, Ordering::Relaxed);
                if cause != moka::notification::RemovalCause::Replaced && !v.tags.is_empty() {
                    let mut index = index.lock();
                    for t in v.tags.iter() {
                        if let Some(keys) = index.get_mut(t) {
                            keys.remove(&*k);
                            if keys.is_empty() {
                                index.remove(t);
                            }
                        }
                    }
                }
            })
            .build();
        let (l2, bus) = match redis_builder(config)? {
            None => (None, Bus::local()),
            Some(builder) => {
                let pool = builder
                    .build_pool(config.redis_pool.max(1))
                    .map_err(|e| CacheError(e.to_string()))?;
                let subscriber = builder
                    .build_subscriber_client()
                    .map_err(|e| CacheError(e.to_string()))?;
                init_in_background(&pool);
                let bus = Bus::redis(pool.clone(), subscriber);
                (Some(pool), bus)
            }
        };
        let cache = Self {
            l1,
            l2,
            tags,
            refreshing: Arc::default(),
            bus,
            local_counts: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
        };
        cache.listen_for_invalidations();
        cache.keep_house();
        Ok(cache)
    }

    fn listen_for_invalidations(&self) {
        let mut rx = self.bus.subscribe(INVALIDATION_CHANNEL);
        let weak_l1 = self.l1.clone();
        let tags = Arc::downgrade(&self.tags);
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(msg) => {
                        let Some(tags) = tags.upgrade() else { break };
                        let dropped = match Invalidation::decode(&msg.payload) {
                            Some(Invalidation::Tags(t)) => {
                                drop_tagged_l1(&weak_l1, &tags, &t).await
                            }
                            Some(Invalidation::Pattern(p)) => drop_matching_l1(&weak_l1, &p).await,
                            None => 0,
                        };
                        metrics::counter!("discovery_cache_remote_invalidations_total")
                            .increment(1);
                        tracing::debug!(dropped, "applied an invalidation from another replica");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // Missed invalidations: drop everything rather than serve stale.
                        tracing::warn!(missed = n, "invalidation backlog overflowed; clearing L1");
                        weak_l1.invalidate_all();
                    }
                    Err(_) => break,
                }
            }
        });
    }

    /// Runs L1's maintenance (admission, eviction, expiry bookkeeping) every
    /// 10 ms on a background task, so requests rarely have to run it inline
    /// (measured: inline maintenance is what made the L1-hit p99 3x its p50).
    fn keep_house(&self) {
        let l1 = self.l1.clone();
        let alive = Arc::downgrade(&self.tags);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while alive.strong_count() > 0 {
                tick.tick().await;
                l1.run_pending_tasks().await;
            }
        });
    }

    /// The bus this cache sends invalidations on (shared with its owner for
    /// other replica-wide messages).
    pub fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }

    /// Whether an L2 is configured and currently connected.
    pub fn l2_connected(&self) -> bool {
        self.l2.as_ref().is_some_and(|p| p.is_connected())
    }

    /// The L2 (Redis Cluster) pool, when one is configured.
    pub fn l2_pool(&self) -> Option<&Pool> {
        self.l2.as_ref()
    }

    /// Waits up to `timeout` for L2 (and the bus) to connect (for tests and readiness).
    pub async fn wait_l2(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.l2_connected() && self.bus.connected() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.l2_connected()
    }

    /// Entries and weighted bytes in L1, all kinds.
    pub fn l1_usage(&self) -> (u64, u64) {
        (self.l1.entry_count(), self.l1.weighted_size())
    }

    /// Runs L1's pending maintenance (evictions, listener calls) now.
    pub async fn run_pending_tasks(&self) {
        self.l1.run_pending_tasks().await;
    }

    fn use_l1(&self, kind: &CacheKind) -> bool {
        !(kind.shared && self.l2.is_some())
    }

    /// Looks `key` up in L1, then L2 (filling L1 on an L2 hit).
    pub async fn get(&self, kind: &'static CacheKind, key: &str) -> Option<Bytes> {
        async {
            let started = Instant::now();
            if self.use_l1(kind)
                && let Some(e) = self.l1.get(key).await
            {
                if kind.sliding {
                    self.touch_l2(kind, key).await;
                }
                record(kind, "l1", true, started);
                return Some(e.value);
            }
            if let Some(e) = self.l2_get(kind, key).await {
                if self.use_l1(kind) {
                    self.insert_l1(key, e.clone()).await;
                }
                record(kind, "l2", true, started);
                return Some(e.value);
            }
            record(kind, "all", false, started);
            None
        }
        .instrument(lookup_span(kind))
        .await
    }

    /// The value in this replica's L1 if present and fresh (no loader, no L2):
    /// the cheapest possible hit. Counted as a hit; `None` counts nothing, so
    /// follow it with [`Cache::get_or_load`].
    pub async fn get_fresh_l1(&self, kind: &'static CacheKind, key: &str) -> Option<Bytes> {
        if !self.use_l1(kind) {
            return None;
        }
        let started = Instant::now();
        let e = self.l1.get(key).await?;
        if self.is_stale(kind, &e) {
            return None;
        }
        record(kind, "l1", true, started);
        Some(e.value)
    }

    /// Stores `value` under `key` in both levels with the kind's TTL and `tags`.
    pub async fn set(&self, kind: &'static CacheKind, key: &str, value: Bytes, tags: &[String]) {
        let entry = Entry {
            value,
            stored_at_ms: crate::now_unix_ms(),
            kind,
            tags: tags.iter().map(|t| Arc::from(t.as_str())).collect(),
        };
        if self.use_l1(kind) {
            self.insert_l1(key, entry.clone()).await;
        }
        self.l2_set(key, &entry).await;
    }

    async fn insert_l1(&self, key: &str, entry: Entry) {
        let key: Arc<str> = Arc::from(key);
        self.index_l1(&key, &entry);
        self.l1.insert(key, entry).await;
    }

    fn index_l1(&self, key: &Arc<str>, entry: &Entry) {
        entry.kind.l1_entries.fetch_add(1, Ordering::Relaxed);
        entry
            .kind
            .l1_bytes
            .fetch_add(entry.weight(key) as i64, Ordering::Relaxed);
        if !entry.tags.is_empty() {
            let mut index = self.tags.lock();
            for t in entry.tags.iter() {
                index.entry(t.clone()).or_default().insert(key.clone());
            }
        }
    }

    /// Counts one event for `key` in the current fixed window of `window`
    /// (whole seconds) and returns the window's count so far: one count for
    /// every replica through Redis (`{key}:{window number}`, created with
    /// an expiry of two windows before it is incremented, so no counter
    /// outlives its window); this replica's own count while Redis is down.
    pub async fn count(&self, key: &str, window: Duration) -> u64 {
        let secs = window.as_secs().max(1);
        let slot = crate::now_unix_ms().max(0) as u64 / 1000 / secs;
        let k = format!("{key}:{slot}");
        if let Some(pool) = &self.l2
            && pool.is_connected()
        {
            let created: Result<Option<String>, _> = pool
                .set(
                    k.as_str(),
                    0,
                    Some(Expiration::EX(2 * secs as i64)),
                    Some(SetOptions::NX),
                    false,
                )
                .await;
            match created {
                Ok(_) => match pool.incr::<i64, _>(k.as_str()).await {
                    Ok(n) => return n.max(0) as u64,
                    Err(e) => l2_error("incr", &e),
                },
                Err(e) => l2_error("set", &e),
            }
        }
        let counter = self
            .local_counts
            .get_with(k, async { Arc::new(std::sync::atomic::AtomicU64::new(0)) })
            .await;
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    /// Whether this is the first time `key` is marked within `ttl`, for
    /// every replica through Redis (`SET key NX EX ttl`); this replica's own
    /// memory (the most recent 100,000 keys for at most 10 minutes idle)
    /// while Redis is down, when a repeat may then count twice.
    pub async fn first(&self, key: &str, ttl: Duration) -> bool {
        if let Some(pool) = &self.l2
            && pool.is_connected()
        {
            let set: Result<Option<String>, _> = pool
                .set(
                    key,
                    1,
                    Some(Expiration::EX(ttl.as_secs().max(1) as i64)),
                    Some(SetOptions::NX),
                    false,
                )
                .await;
            match set {
                Ok(v) => return v.is_some(),
                Err(e) => l2_error("set", &e),
            }
        }
        let entry = self
            .local_counts
            .entry(format!("first:{key}"))
            .or_insert_with(async { Arc::new(std::sync::atomic::AtomicU64::new(0)) })
            .await;
        entry.is_fresh()
    }

    /// Returns the cached value, or runs `load` once for all concurrent
    /// callers of the same key and caches its result with its tags.
    ///
    /// An entry older than its kind's `fresh_for` is returned with
    /// `stale: true` while `load` runs in the background to replace it.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        kind: &'static CacheKind,
        key: &str,
        load: F,
    ) -> Result<Lookup, E>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Loaded, E>> + Send + 'static,
        E: Clone + Send + Sync + 'static,
    {
        async {
            let started = Instant::now();
            let use_l1 = self.use_l1(kind);
            if use_l1 && let Some(e) = self.l1.get(key).await {
                let stale = self.is_stale(kind, &e);
                if stale {
                    self.refresh_in_background(kind, key, load);
                }
                record(kind, "l1", true, started);
                return Ok(Lookup {
                    value: e.value,
                    source: Source::L1,
                    stale,
                });
            }
            // Set by the init future when it runs: None means another caller's
            // load answered this one (coalesced).
            let source: Arc<Mutex<Option<Source>>> = Arc::default();
            let src = source.clone();
            let this = self.clone();
            let key_owned: Arc<str> = Arc::from(key);
            let init = async move {
                if let Some(e) = this.l2_get(kind, &key_owned).await {
                    *src.lock() = Some(Source::L2);
                    return Ok(e);
                }
                *src.lock() = Some(Source::Origin);
                match load().await {
                    Ok(l) if l.cacheable => {
                        let entry = Entry {
                            value: l.value,
                            stored_at_ms: crate::now_unix_ms(),
                            kind,
                            tags: l.tags.iter().map(|t| Arc::from(t.as_str())).collect(),
                        };
                        // Write-behind: the caller does not wait for Redis.
                        let (c, k, e) = (this.clone(), key_owned.clone(), entry.clone());
                        tokio::spawn(async move { c.l2_set(&k, &e).await });
                        Ok(entry)
                    }
                    Ok(l) => Err(LoadFailure::Uncacheable(l.value)),
                    Err(e) => Err(LoadFailure::Failed(e)),
                }
            };
            let result = if use_l1 {
                let key: Arc<str> = Arc::from(key);
                let r = self.l1.try_get_with(key.clone(), init).await;
                // Only the caller whose init ran (and inserted) indexes the entry.
                if let Ok(e) = &r
                    && source.lock().is_some()
                {
                    self.index_l1(&key, e);
                }
                r
            } else {
                init.await.map_err(Arc::new)
            };
            match result {
                Ok(e) => {
                    let s = source.lock().unwrap_or(Source::L1);
                    let stale = s == Source::L2 && self.is_stale(kind, &e);
                    match s {
                        Source::L1 => record(kind, "l1", true, started),
                        Source::L2 => record(kind, "l2", true, started),
                        Source::Origin => record(kind, "all", false, started),
                    }
                    Ok(Lookup {
                        value: e.value,
                        source: s,
                        stale,
                    })
                }
                Err(f) => {
                    record(kind, "all", false, started);
                    match &*f {
                        LoadFailure::Uncacheable(v) => Ok(Lookup {
                            value: v.clone(),
                            source: Source::Origin,
                            stale: false,
                        }),
                        LoadFailure::Failed(e) => Err(e.clone()),
                    }
                }
            }
        }
        .instrument(lookup_span(kind))
        .await
    }

    fn is_stale(&self, kind: &CacheKind, e: &Entry) -> bool {
        kind.fresh_for
            .is_some_and(|f| crate::now_unix_ms() - e.stored_at_ms > f.as_millis() as i64)
    }

    fn refresh_in_background<F, Fut, E>(&self, kind: &'static CacheKind, key: &str, load: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Loaded, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        let key: Arc<str> = Arc::from(key);
        if !self.refreshing.lock().insert(key.clone()) {
            return;
        }
        kind.stale.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        tokio::spawn(async move {
            if let Ok(l) = load().await
                && l.cacheable
            {
                this.set(kind, &key, l.value, &l.tags).await;
            }
            this.refreshing.lock().remove(&key);
        });
    }

    async fn l2_get(&self, kind: &'static CacheKind, key: &str) -> Option<Entry> {
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
            Ok(v) => v.and_then(|b| decode(&b, kind)),
            Err(e) => {
                l2_error("get", &e);
                None
            }
        }
    }

    async fn l2_set(&self, key: &str, e: &Entry) {
        let Some(pool) = &self.l2 else { return };
        if !pool.is_connected() {
            return;
        }
        let started = Instant::now();
        let ttl = e.kind.ttl.as_secs().max(1) as i64;
        let r: Result<(), _> = pool
            .set(
                key,
                encode(&e.value, e.stored_at_ms, &e.tags),
                Some(Expiration::EX(ttl)),
                None,
                false,
            )
            .await;
        if let Err(err) = r {
            l2_error("set", &err);
            return;
        }
        let now_ms = crate::now_unix_ms();
        let expires_ms = now_ms + ttl * 1000;
        let adds = e.tags.iter().map(|t| async move {
            let set = tag_set(t);
            let args = vec![
                expires_ms.to_string(),
                key.to_string(),
                now_ms.to_string(),
                (ttl * 1000).to_string(),
            ];
            TAG_ADD
                .evalsha_with_reload::<i64, _, _>(pool.next(), vec![set], args)
                .await
        });
        for r in futures::future::join_all(adds).await {
            if let Err(err) = r {
                l2_error("tag", &err);
            }
        }
        metrics::histogram!("discovery_cache_l2_duration_seconds", "kind" => e.kind.name, "op" => "set")
            .record(started.elapsed().as_secs_f64());
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

mod wire;
use wire::{decode, encode, l2_error, lookup_span, record};

mod invalidate;
pub use invalidate::glob_match;
use invalidate::{Invalidation, drop_matching_l1, drop_tagged_l1};

mod redis;
use redis::{init_in_background, redis_builder};
pub use redis::{ping_redis, redis_pool};

mod config;
pub use config::{CacheConfig, RedisAuth, RedisTls, secret};

#[cfg(test)]
mod tests;
