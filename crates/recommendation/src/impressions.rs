//! Impressions and outcomes: what was shown, what it sold.
//!
//! Every served `Recommend` page is an impression: its id goes back to the
//! caller, and the page (products in order, ranking variant, placement, face
//! shape, catalogue version) is queued here. The request path only copies
//! ~100 bytes into a locked buffer, bounded at [`QUEUE`] events (when full
//! the impression is dropped and counted, never waited for), and reads no
//! clock of its own ([`Clock`]). A background worker takes the buffer every
//! [`FLUSH`], writes impressions to `recommendations` in batches and keeps
//! rollups.
//!
//! Interactions (`RecordInteraction`) come back with the impression id, or
//! without one, when the worker attributes them to the shopper's latest page
//! showing the product within [`ATTRIBUTION_WINDOW_MS`]. An impression counts
//! once as clicked, added to cart or purchased however many such events it
//! gets (deduplicated for every replica through Redis, [`Cache::first`]);
//! revenue counts once per (impression, product) purchased.
//!
//! **Rollups** (`recommendation_rollups`): each replica keeps totals per
//! bucket (5 minutes, 1 hour, 1 day) and [`Dims`], and writes its own documents
//! (id starting with its origin) with the full totals: a flush replaces, so
//! a retried flush cannot double count and no `$inc` is needed. The report
//! sums every replica's documents of the window; it reads at most buckets ×
//! groups × replicas small documents however many impressions there were.
//!
//! Invariants: the request path never waits on the log; an impression's
//! outcomes are counted in the bucket of the impression (so a rate's
//! numerator and denominator are the same impressions).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use discovery_kit::CancellationToken;
use discovery_kit::cache::Cache;
use discovery_kit::store::{Bson, Document, FindOptions, IndexSpec, Store, bson, doc};

use crate::experiments::Assignment;
use crate::report::{self, Dims, Totals};

/// Collection of served pages (seed spec `recommendations`).
pub const RECOMMENDATIONS: &str = "recommendations";
/// Collection of per-replica rollups.
pub const ROLLUPS: &str = "recommendation_rollups";
/// Impressions and outcomes waiting for the worker; more are dropped.
pub const QUEUE: usize = 20_000;
/// Interactions without an impression id go to the shopper's latest page
/// showing the product this long before.
pub const ATTRIBUTION_WINDOW_MS: i64 = 24 * 3_600_000;
/// An interaction naming an impression counts up to this long after it
/// (and impressions are kept this long).
pub const RETENTION_MS: i64 = 8 * 24 * 3_600_000;
/// How long an interaction waits for its impression to be written (by
/// another replica's worker) before it counts as unattributed.
pub const PENDING_MS: i64 = 30_000;
/// An interaction without an impression id is attributed this long after
/// it arrived (one lookup, once the page it came from is surely written).
pub const FALLBACK_AFTER_MS: i64 = 5_000;
/// Most distinct placements one replica reports; others count as "other"
/// (a caller cannot grow the rollups without bound).
pub const MAX_PLACEMENTS: usize = 32;
/// Impressions kept in the embedded store (no TTL there; `discovery up`
/// must not grow without bound): the newest 20,000.
pub const MEMORY_KEEP: usize = 20_000;
/// Worker period: the queue is taken, written and rolled up this often.
const FLUSH: Duration = Duration::from_millis(250);
/// Bucket granularities (name, width, how long kept), one per report
/// window: 5 minutes for the last hour, hours for the last day, days for
/// the last week. A window is read from its start rounded down to its
/// granularity, so a report reads at most 13, 25 or 8 buckets per group
/// and replica however many impressions there were.
const FINE: (&str, i64, i64) = ("5m", 300_000, 2 * 3_600_000);
const MID: (&str, i64, i64) = ("1h", 3_600_000, 26 * 3_600_000);
const COARSE: (&str, i64, i64) = ("1d", 86_400_000, RETENTION_MS);
const GRANULARITIES: [(&str, i64, i64); 3] = [FINE, MID, COARSE];

/// Indexes on `recommendations` (the seed's, and a TTL) and the rollups.
pub fn indexes() -> Vec<(&'static str, Vec<IndexSpec>)> {
    vec![
        (
            RECOMMENDATIONS,
            vec![
                IndexSpec::new(
                    "userId_1_timestamp_-1_relevanceScore_-1",
                    doc! {"userId": 1, "timestamp": -1, "relevanceScore": -1},
                ),
                // Serves the fallback attribution of anonymous shoppers
                // (`productId` is the page's array of products).
                IndexSpec::new(
                    "sessionId_1_productId_1",
                    doc! {"sessionId": 1, "productId": 1},
                ),
                IndexSpec::new(
                    "context.faceShape_1_context.stylePreferences_1",
                    doc! {"context.faceShape": 1, "context.stylePreferences": 1},
                ),
                IndexSpec::new("userId_sparse", doc! {"userId": 1}).sparse(),
                IndexSpec::new("createdAt_ttl", doc! {"createdAt": 1})
                    .ttl(Duration::from_millis(RETENTION_MS as u64)),
            ],
        ),
        (
            ROLLUPS,
            vec![
                IndexSpec::new("gran_1_bucket_1", doc! {"gran": 1, "bucket": 1}),
                IndexSpec::new("expireAt_ttl", doc! {"expireAt": 1}).ttl(Duration::ZERO),
            ],
        ),
    ]
}

/// One served page.
#[derive(Debug)]
pub struct Impression {
    /// Random id, returned to the caller.
    pub id: u128,
    /// When, ms since the epoch.
    pub at: i64,
    /// The page's products as the cache envelope lists them
    /// ([`page_section_ids`]): shared, not copied, on the hit path.
    pub page: Bytes,
    /// Variant.
    pub assignment: Arc<Assignment>,
    /// Placement ("" = default).
    pub placement: String,
    /// Face shape label.
    pub face_shape: &'static str,
    /// Shopper.
    pub user_id: String,
    /// Shopper's session.
    pub session_id: String,
    /// API key's client.
    pub client: Option<String>,
    /// Catalogue version.
    pub catalog_version: i64,
}

/// What an interaction did, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Click.
    Click,
    /// Cart add.
    AddToCart,
    /// Purchase.
    Purchase,
}

impl OutcomeKind {
    fn name(self) -> &'static str {
        match self {
            Self::Click => "click",
            Self::AddToCart => "add_to_cart",
            Self::Purchase => "purchase",
        }
    }
}

/// A recorded interaction to attribute.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The impression the caller named.
    pub impression: Option<u128>,
    /// Shopper.
    pub user_id: String,
    /// Session.
    pub session_id: String,
    /// Product.
    pub product_id: String,
    /// Kind.
    pub kind: OutcomeKind,
    /// When.
    pub at: i64,
    /// Currency and price in minor units (purchases).
    pub value: Option<(String, i64)>,
}

/// A served page as the request path hands it over: borrowed, copied into
/// the queue's buffer (no string of the request outlives the call).
#[derive(Debug, Clone, Copy)]
pub struct ImpressionRef<'a> {
    /// Random id.
    pub id: u128,
    /// When, ms since the epoch.
    pub at: i64,
    /// Variant.
    pub assignment: &'a Arc<Assignment>,
    /// Placement ("" = default).
    pub placement: &'a str,
    /// Face shape label.
    pub face_shape: &'static str,
    /// Shopper.
    pub user_id: &'a str,
    /// Shopper's session.
    pub session_id: &'a str,
    /// API key's client.
    pub client: Option<&'a str>,
    /// Catalogue version.
    pub catalog_version: i64,
}

/// The queue between the handlers and the worker: impressions encoded back
/// to back in one buffer (a push copies ~100 bytes and keeps no allocation
/// of the request alive), their pages (shared slices of cache entries), the
/// few distinct assignments they name, and outcomes.
#[derive(Debug, Default)]
pub struct Queue {
    bytes: Vec<u8>,
    pages: Vec<Bytes>,
    assignments: Vec<Arc<Assignment>>,
    outcomes: Vec<Outcome>,
}

impl Queue {
    fn with_capacity() -> Self {
        Self {
            bytes: Vec::with_capacity(64 << 10),
            pages: Vec::with_capacity(1024),
            assignments: Vec::new(),
            outcomes: Vec::new(),
        }
    }

    /// Events queued.
    pub fn len(&self) -> usize {
        self.pages.len() + self.outcomes.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, i: ImpressionRef<'_>, page: Bytes) {
        let a = match self
            .assignments
            .iter()
            .position(|x| Arc::ptr_eq(x, i.assignment))
        {
            Some(a) => a,
            None => {
                self.assignments.push(i.assignment.clone());
                self.assignments.len() - 1
            }
        };
        let b = &mut self.bytes;
        b.extend_from_slice(&i.id.to_le_bytes());
        b.extend_from_slice(&i.at.to_le_bytes());
        b.extend_from_slice(&i.catalog_version.to_le_bytes());
        b.extend_from_slice(&(a as u16).to_le_bytes());
        let client = i.client.unwrap_or("");
        for s in [i.placement, i.face_shape, i.user_id, i.session_id, client] {
            // Every one is bounded far below 64 KiB on the way in.
            let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
            b.extend_from_slice(&(s.len() as u16).to_le_bytes());
            b.extend_from_slice(s);
        }
        b.push(u8::from(i.client.is_some()));
        self.pages.push(page);
    }

    /// The queued events, impressions decoded (in order), then outcomes;
    /// the queue is left empty with its memory kept (the worker hands it
    /// back to the handlers: no fresh pages to fault in per round).
    pub fn drain_events(&mut self) -> Vec<Event> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> &'a [u8] {
            let (head, rest) = b.split_at(n.min(b.len()));
            *b = rest;
            head
        }
        fn num<const N: usize>(b: &mut &[u8]) -> [u8; N] {
            let mut out = [0u8; N];
            let h = take(b, N);
            out[..h.len()].copy_from_slice(h);
            out
        }
        let mut out = Vec::with_capacity(self.len());
        let mut b = self.bytes.as_slice();
        for page in self.pages.drain(..) {
            let id = u128::from_le_bytes(num(&mut b));
            let at = i64::from_le_bytes(num(&mut b));
            let catalog_version = i64::from_le_bytes(num(&mut b));
            let a = u16::from_le_bytes(num(&mut b)) as usize;
            let mut text = || {
                let n = u16::from_le_bytes(num(&mut b)) as usize;
                String::from_utf8_lossy(take(&mut b, n)).into_owned()
            };
            let (placement, face_shape, user_id, session_id, client) =
                (text(), text(), text(), text(), text());
            let has_client = take(&mut b, 1) == [1];
            out.push(Event::Impression(Impression {
                id,
                at,
                page,
                assignment: self.assignments[a.min(self.assignments.len() - 1)].clone(),
                placement,
                face_shape: discovery_catalog::FACE_SHAPES
                    .iter()
                    .copied()
                    .find(|s| *s == face_shape)
                    .unwrap_or("any"),
                user_id,
                session_id,
                client: has_client.then_some(client),
                catalog_version,
            }));
        }
        out.extend(self.outcomes.drain(..).map(Event::Outcome));
        self.bytes.clear();
        self.assignments.clear();
        out
    }

    /// Empties the queue, keeping its memory; how many events it held.
    fn clear(&mut self) -> usize {
        let n = self.len();
        self.bytes.clear();
        self.pages.clear();
        self.assignments.clear();
        self.outcomes.clear();
        n
    }
}

/// What the queue holds, decoded for the worker.
#[derive(Debug)]
pub enum Event {
    /// A served page.
    Impression(Impression),
    /// An interaction.
    Outcome(Outcome),
}

/// The queue's sending side, shared by the handlers.
#[derive(Clone)]
pub struct Log {
    /// A plain locked vector, taken whole by the worker every [`FLUSH`]: a
    /// push is a short uncontended lock and no wake-up (a channel would
    /// wake the worker's task, and with it a parked thread, per page).
    queue: Arc<parking_lot::Mutex<Queue>>,
    stats: Arc<Stats>,
    dropped: metrics::Counter,
}

#[derive(Default)]
struct Stats {
    dropped: AtomicU64,
    unattributed: AtomicU64,
    clock: Clock,
}

/// Wall-clock milliseconds of a monotonic instant the handler has already
/// read (a page's time is its request's start): an anchor the worker
/// renews every [`FLUSH`], so a served page costs no clock read of its own
/// and a step of the wall clock is taken in within one round.
pub struct Clock {
    base: Instant,
    /// Unix milliseconds at `base`, as of the last renewal.
    unix_at_base: AtomicI64,
}

impl Default for Clock {
    fn default() -> Self {
        let c = Self {
            base: Instant::now(),
            unix_at_base: AtomicI64::new(0),
        };
        c.renew();
        c
    }
}

impl Clock {
    /// Re-reads the wall clock.
    pub fn renew(&self) {
        let since = self.base.elapsed().as_millis() as i64;
        self.unix_at_base
            .store(discovery_kit::now_unix_ms() - since, Ordering::Relaxed);
    }

    /// Unix milliseconds at `t`.
    pub fn unix_ms(&self, t: Instant) -> i64 {
        self.unix_at_base.load(Ordering::Relaxed)
            + t.saturating_duration_since(self.base).as_millis() as i64
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("queued", &self.queued())
            .finish()
    }
}

/// An impression id as sent to callers: 32 lower-case hex digits.
pub fn format_id(id: u128) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = HEX[((id >> (124 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// Reads an id back ([`format_id`]'s form only).
pub fn parse_id(s: &str) -> Option<u128> {
    (s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| u128::from_str_radix(s, 16).ok())
        .flatten()
}

fn id_string(id: u128) -> String {
    String::from_utf8_lossy(&format_id(id)).into_owned()
}

impl Log {
    /// Starts the worker; it drains the queue and flushes when `shutdown`
    /// fires.
    pub fn start(
        store: Store,
        cache: Arc<Cache>,
        origin: u64,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (log, queue) = Self::detached();
        let stats = log.stats.clone();
        let worker = Worker {
            store,
            cache,
            replica: format!("{origin:016x}"),
            stats: stats.clone(),
            totals: HashMap::new(),
            dirty: HashSet::new(),
            pending: Vec::new(),
            placements: HashSet::new(),
            in_memory: Default::default(),
        };
        let task = tokio::spawn(worker.run(queue, shutdown));
        (log, task)
    }

    /// A log nobody drains (benchmarks of the request path: empty it with
    /// [`Log::discard`]), and its queue.
    pub fn detached() -> (Self, Arc<parking_lot::Mutex<Queue>>) {
        let queue = Arc::new(parking_lot::Mutex::new(Queue::with_capacity()));
        let log = Self {
            queue: queue.clone(),
            stats: Arc::default(),
            dropped: metrics::counter!("discovery_recommendation_impressions_dropped_total"),
        };
        (log, queue)
    }

    /// Queues a served page showing `page` (the rows section of its cache
    /// envelope); false (and counted) when the queue is full.
    pub fn impression(&self, i: ImpressionRef<'_>, page: Bytes) -> bool {
        let queued = {
            let mut q = self.queue.lock();
            let room = q.len() < QUEUE;
            if room {
                q.push(i, page);
            }
            room
        };
        if !queued {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped.increment(1);
        }
        queued
    }

    /// Queues an interaction to attribute (dropped and counted as
    /// unattributed when the queue is full).
    pub fn outcome(&self, o: Outcome) {
        let mut q = self.queue.lock();
        if q.len() < QUEUE {
            q.outcomes.push(o);
        } else {
            drop(q);
            self.stats.unattributed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Unix milliseconds at `t` (an instant the caller read anyway).
    pub fn unix_ms(&self, t: Instant) -> i64 {
        self.stats.clock.unix_ms(t)
    }

    /// Events waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue.lock().len()
    }

    /// Empties the queue unprocessed; how many events it held.
    pub fn discard(&self) -> usize {
        self.queue.lock().clear()
    }

    /// Impressions dropped since start.
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }

    /// Interactions not attributed since start.
    pub fn unattributed(&self) -> u64 {
        self.stats.unattributed.load(Ordering::Relaxed)
    }
}

type Key = (&'static str, i64, Dims);
/// A batch's group: assignment (by address), placement, face shape, fine bucket.
type BatchKey = (usize, String, &'static str, i64);

struct Worker {
    store: Store,
    cache: Arc<Cache>,
    replica: String,
    stats: Arc<Stats>,
    totals: HashMap<Key, Totals>,
    dirty: HashSet<Key>,
    /// Outcomes to attribute, with when they arrived.
    pending: Vec<(i64, Outcome)>,
    placements: HashSet<String>,
    /// Ids written to the embedded store, oldest first ([`MEMORY_KEEP`]).
    in_memory: std::collections::VecDeque<String>,
}

/// What the worker needs of a stored impression.
struct Shown {
    at: i64,
    dims: Dims,
    products: Vec<String>,
}

fn shown_from(d: &Document) -> Option<(u128, Shown)> {
    let id = parse_id(d.get_str("_id").ok()?)?;
    let ctx = d.get_document("context").ok();
    Some((
        id,
        Shown {
            at: d.get_i64("timestamp").ok()?,
            dims: Dims {
                experiment: d.get_str("experiment").unwrap_or("").into(),
                variant: d.get_str("variant").unwrap_or("default").into(),
                placement: d.get_str("placement").unwrap_or("default").into(),
                face_shape: ctx
                    .and_then(|c| c.get_str("faceShape").ok())
                    .unwrap_or("any")
                    .into(),
            },
            products: d
                .get_array("productId")
                .ok()?
                .iter()
                .filter_map(|b| b.as_str().map(str::to_string))
                .collect(),
        },
    ))
}

impl Worker {
    async fn run(mut self, queue: Arc<parking_lot::Mutex<Queue>>, shutdown: CancellationToken) {
        let mut spare = Queue::with_capacity();
        let mut tick = tokio::time::interval(FLUSH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Whatever is queued at shutdown still goes out.
            let stop = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tick.tick() => false,
            };
            // Swapped with the last round's (emptied) queue: its memory is
            // already there, so a push rarely grows a vector.
            std::mem::swap(&mut *queue.lock(), &mut spare);
            self.stats.clock.renew();
            let events = spare.drain_events();
            for chunk in chunks(events, 1_000) {
                self.take(chunk).await;
            }
            self.resolve(stop).await;
            self.flush().await;
            if stop {
                return;
            }
        }
    }

    /// Writes a batch of impressions; sets outcomes aside for [`resolve`].
    async fn take(&mut self, events: Vec<Event>) {
        let mut docs = Vec::new();
        // Counted per batch: one rollup update and one metric increment per
        // group of the batch, not per impression. The assignment is told
        // apart by its address (its `Arc` is held in the value).
        let mut batch: HashMap<BatchKey, (Arc<Assignment>, u64)> = HashMap::new();
        for e in events {
            match e {
                Event::Impression(i) => {
                    let placement = self.placement(&i.placement);
                    let a = &i.assignment;
                    let d = impression_document(&i, &placement);
                    docs.push(d);
                    let fine = i.at - i.at.rem_euclid(FINE.1);
                    batch
                        .entry((Arc::as_ptr(a) as usize, placement, i.face_shape, fine))
                        .or_insert_with(|| (a.clone(), 0))
                        .1 += 1;
                }
                Event::Outcome(o) => self.pending.push((discovery_kit::now_unix_ms(), o)),
            }
        }
        for ((_, placement, face_shape, fine), (a, n)) in batch {
            let dims = Dims {
                experiment: a.experiment.clone(),
                variant: a.variant.clone(),
                placement,
                face_shape: face_shape.into(),
            };
            // A fine bucket lies inside one coarse bucket.
            self.count(fine, &dims, |t| t.impressions += n);
            metrics::counter!("discovery_recommendation_impressions_total", "variant" => a.label.clone())
                .increment(n);
        }
        if docs.is_empty() {
            return;
        }
        let n = docs.len();
        if self.store.kind() == "memory" {
            // The embedded store (`discovery up`) has no TTL and keeps
            // everything in this process: only the newest impressions stay.
            self.in_memory.extend(
                docs.iter()
                    .filter_map(|d| d.get_str("_id").ok().map(String::from)),
            );
            while self.in_memory.len() > MEMORY_KEEP {
                if let Some(id) = self.in_memory.pop_front() {
                    let _ = self.store.delete(RECOMMENDATIONS, &id).await;
                }
            }
        }
        if let Err(e) = self.store.bulk_upsert(RECOMMENDATIONS, docs).await {
            // Rollups counted them; only the attribution of their outcomes
            // is lost. Not retried: the queue must keep moving.
            tracing::warn!(error = %e, impressions = n, "writing impressions failed");
            metrics::counter!("discovery_recommendation_impressions_unwritten_total")
                .increment(n as u64);
        }
    }

    fn placement(&mut self, p: &str) -> String {
        let p = if p.is_empty() { "default" } else { p };
        if self.placements.contains(p) {
            return p.to_string();
        }
        if self.placements.len() < MAX_PLACEMENTS {
            self.placements.insert(p.to_string());
            return p.to_string();
        }
        "other".into()
    }

    fn count(&mut self, at: i64, dims: &Dims, f: impl Fn(&mut Totals)) {
        for (gran, bucket) in buckets(at) {
            let key = (gran, bucket, dims.clone());
            f(self.totals.entry(key.clone()).or_default());
            self.dirty.insert(key);
        }
    }

    /// Attributes the outcomes set aside: by impression id (one read for
    /// all), else the shopper's latest page with the product.
    async fn resolve(&mut self, last: bool) {
        if self.pending.is_empty() {
            return;
        }
        let now = discovery_kit::now_unix_ms();
        let pending = std::mem::take(&mut self.pending);
        let ids: Vec<String> = pending
            .iter()
            .filter_map(|(_, o)| o.impression.map(id_string))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut shown: HashMap<u128, Shown> = HashMap::new();
        if !ids.is_empty() {
            match self
                .store
                .find(
                    RECOMMENDATIONS,
                    doc! {"_id": {"$in": ids}},
                    FindOptions::default(),
                )
                .await
            {
                Ok(docs) => shown.extend(docs.iter().filter_map(shown_from)),
                Err(e) => {
                    tracing::warn!(error = %e, "reading impressions failed; retrying");
                    self.pending = pending;
                    return;
                }
            }
        }
        for (arrived, o) in pending {
            let found = match o.impression {
                Some(id) => match shown.remove(&id) {
                    Some(s) => Some((id, s)),
                    // Perhaps not written yet by the replica that served
                    // it; bounded, so made-up ids cannot pile up.
                    None if !last && now - arrived < PENDING_MS && self.pending.len() < QUEUE => {
                        self.pending.push((arrived, o));
                        continue;
                    }
                    None => None,
                },
                // Without an id, looked up once the page it came from has
                // had time to be written (by whichever replica served it).
                None if !last
                    && now - arrived < FALLBACK_AFTER_MS
                    && self.pending.len() < QUEUE =>
                {
                    self.pending.push((arrived, o));
                    continue;
                }
                None => self.latest_showing(&o).await,
            };
            let Some((id, s)) = found else {
                self.unattributed();
                continue;
            };
            let window = if o.impression.is_some() {
                RETENTION_MS
            } else {
                ATTRIBUTION_WINDOW_MS
            };
            if !s.products.contains(&o.product_id) || o.at < s.at || o.at - s.at > window {
                self.unattributed();
                shown_back(&mut shown, id, s);
                continue;
            }
            let hex = id_string(id);
            let ttl = Duration::from_millis(RETENTION_MS as u64);
            let first = self
                .cache
                .first(&format!("impression:{hex}:{}", o.kind.name()), ttl)
                .await;
            let revenue = match (&o.kind, &o.value) {
                (OutcomeKind::Purchase, Some((cur, v)))
                    if self
                        .cache
                        .first(&format!("impression:{hex}:purchase:{}", o.product_id), ttl)
                        .await =>
                {
                    Some((cur.clone(), *v))
                }
                _ => None,
            };
            let kind = o.kind;
            self.count(s.at, &s.dims, |t| {
                if first {
                    match kind {
                        OutcomeKind::Click => t.clicked += 1,
                        OutcomeKind::AddToCart => t.added_to_cart += 1,
                        OutcomeKind::Purchase => t.purchased += 1,
                    }
                }
                if let Some((cur, v)) = &revenue {
                    *t.revenue_minor.entry(cur.clone()).or_default() += v;
                }
            });
            metrics::counter!("discovery_recommendation_outcomes_total", "kind" => kind.name(), "variant" => s.dims.variant_label())
                .increment(1);
            shown_back(&mut shown, id, s);
        }
    }

    fn unattributed(&self) {
        self.stats.unattributed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("discovery_recommendation_outcomes_unattributed_total").increment(1);
    }

    /// The shopper's latest impression showing the product within the
    /// attribution window.
    async fn latest_showing(&self, o: &Outcome) -> Option<(u128, Shown)> {
        let mut filter = if o.user_id.is_empty() {
            doc! {"sessionId": &o.session_id}
        } else {
            doc! {"userId": &o.user_id}
        };
        filter.insert("productId", &o.product_id);
        filter.insert(
            "timestamp",
            doc! {"$gte": o.at - ATTRIBUTION_WINDOW_MS, "$lte": o.at},
        );
        let found = self
            .store
            .find(
                RECOMMENDATIONS,
                filter,
                FindOptions {
                    sort: Some(doc! {"timestamp": -1}),
                    limit: 1,
                    ..Default::default()
                },
            )
            .await;
        match found {
            Ok(docs) => docs.first().and_then(shown_from),
            Err(e) => {
                tracing::warn!(error = %e, "attribution lookup failed");
                None
            }
        }
    }

    /// Writes this replica's changed rollups (full totals: idempotent) and
    /// forgets buckets past their retention.
    async fn flush(&mut self) {
        let now = discovery_kit::now_unix_ms();
        self.totals
            .retain(|(gran, bucket, _), _| bucket + kept_for(gran) > now);
        if self.dirty.is_empty() {
            return;
        }
        let dirty: Vec<Key> = self.dirty.drain().collect();
        let docs: Vec<Document> = dirty
            .iter()
            .filter_map(|(gran, bucket, d)| {
                let t = self.totals.get(&(*gran, *bucket, d.clone()))?;
                Some(rollup_document(&self.replica, gran, *bucket, d, t))
            })
            .collect();
        if let Err(e) = self.store.bulk_upsert(ROLLUPS, docs).await {
            tracing::warn!(error = %e, "writing rollups failed; retrying");
            self.dirty.extend(dirty);
        }
    }
}

/// The stored form of an impression (seed field names; `productId` is the
/// page's products in order).
pub fn impression_document(i: &Impression, placement: &str) -> Document {
    let a = &i.assignment;
    let mut d = doc! {
        "_id": id_string(i.id),
        "timestamp": i.at,
        "createdAt": bson::DateTime::from_millis(i.at),
        "sessionId": &i.session_id,
        "client": i.client.as_deref().unwrap_or(""),
        "placement": placement,
        "experiment": &a.experiment,
        "variant": &a.variant,
        "context": {"faceShape": i.face_shape},
        "productId": page_section_ids(&i.page),
        "catalogVersion": i.catalog_version,
    };
    if !i.user_id.is_empty() {
        d.insert("userId", &i.user_id);
    }
    d
}

/// The buckets an event at `at` counts in: (granularity, bucket start).
pub fn buckets(at: i64) -> [(&'static str, i64); 3] {
    GRANULARITIES.map(|(gran, width, _)| (gran, at - at.rem_euclid(width)))
}

/// How long a granularity's buckets are kept.
pub fn kept_for(gran: &str) -> i64 {
    GRANULARITIES
        .iter()
        .find(|g| g.0 == gran)
        .map_or(RETENTION_MS, |g| g.2)
}

/// One replica's rollup document: the full totals of a bucket and group
/// (replaced on every flush), expiring after the granularity's retention.
pub fn rollup_document(replica: &str, gran: &str, bucket: i64, d: &Dims, t: &Totals) -> Document {
    let keep = kept_for(gran);
    let revenue: Document = t
        .revenue_minor
        .iter()
        .map(|(c, v)| (c.clone(), Bson::Int64(*v)))
        .collect();
    doc! {
        "_id": format!(
            "{replica}|{gran}|{bucket}|{}|{}|{}|{}",
            d.experiment, d.variant, d.placement, d.face_shape
        ),
        "replica": replica,
        "gran": gran,
        "bucket": bucket,
        "expireAt": bson::DateTime::from_millis(bucket + keep),
        "experiment": &d.experiment,
        "variant": &d.variant,
        "placement": &d.placement,
        "faceShape": &d.face_shape,
        "impressions": t.impressions as i64,
        "clicked": t.clicked as i64,
        "addedToCart": t.added_to_cart as i64,
        "purchased": t.purchased as i64,
        "revenue": revenue,
    }
}

fn shown_back(shown: &mut HashMap<u128, Shown>, id: u128, s: Shown) {
    // Several outcomes may name one impression.
    shown.insert(id, s);
}

/// `v` in pieces of at most `n` (store writes of bounded size).
fn chunks<T>(mut v: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    while v.len() > n {
        let rest = v.split_off(n);
        out.push(std::mem::replace(&mut v, rest));
    }
    out.push(v);
    out
}

/// Report windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Last hour.
    Hour,
    /// Last 24 hours.
    Day,
    /// Last 7 days.
    Week,
}

/// Reads every replica's rollups of the window and builds the report;
/// returns it with the window's start.
pub async fn read_report(
    store: &Store,
    window: Window,
    experiment: &str,
    now: i64,
) -> Result<(report::Report, i64), discovery_kit::store::StoreError> {
    let ((gran, width, _), span) = match window {
        Window::Hour => (FINE, 3_600_000),
        Window::Day => (MID, 24 * 3_600_000),
        Window::Week => (COARSE, 7 * 24 * 3_600_000),
    };
    let from = (now - span) - (now - span).rem_euclid(width);
    let mut filter = doc! {"gran": gran, "bucket": {"$gte": from}};
    if !experiment.is_empty() {
        filter.insert("experiment", experiment);
    }
    let docs = store.find(ROLLUPS, filter, FindOptions::default()).await?;
    let rows: Vec<(Dims, Totals)> = docs.iter().map(rollup_from).collect();
    Ok((report::build(rows.iter().map(|(d, t)| (d, t))), from))
}

fn rollup_from(d: &Document) -> (Dims, Totals) {
    let s = |k: &str| d.get_str(k).unwrap_or("").to_string();
    let n = |k: &str| match d.get(k) {
        Some(Bson::Int64(v)) => (*v).max(0) as u64,
        Some(Bson::Int32(v)) => (*v).max(0) as u64,
        Some(Bson::Double(v)) => v.max(0.0) as u64,
        _ => 0,
    };
    let revenue = d
        .get_document("revenue")
        .map(|r| {
            r.iter()
                .filter_map(|(c, v)| match v {
                    Bson::Int64(v) => Some((c.clone(), *v)),
                    Bson::Int32(v) => Some((c.clone(), *v as i64)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (
        Dims {
            experiment: s("experiment"),
            variant: s("variant"),
            placement: s("placement"),
            face_shape: s("faceShape"),
        },
        Totals {
            impressions: n("impressions"),
            clicked: n("clicked"),
            added_to_cart: n("addedToCart"),
            purchased: n("purchased"),
            revenue_minor: revenue,
        },
    )
}

/// The products of a cache envelope's rows section (the format is
/// `crate::api`'s envelope): a u16 count, then per product a length byte,
/// the id and an 8-byte stamp.
pub fn page_section_ids(mut b: &[u8]) -> Vec<String> {
    if b.remaining() < 2 {
        return Vec::new();
    }
    let n = b.get_u16_le() as usize;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if b.remaining() < 1 {
            break;
        }
        let len = b.get_u8() as usize;
        if b.remaining() < len + 8 {
            break;
        }
        out.push(String::from_utf8_lossy(&b[..len]).into_owned());
        b.advance(len + 8);
    }
    out
}

#[cfg(test)]
mod tests {
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
}
