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
use discovery_kit::store::Store;

use crate::experiments::Assignment;
use crate::report::{Dims, Totals};

mod store;
pub use store::{
    RECOMMENDATIONS, ROLLUPS, impression_document, indexes, read_report, rollup_document,
};

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

mod worker;
use worker::Worker;

#[cfg(test)]
mod tests;
