//! The log's worker: takes the queue every [`FLUSH`], writes impressions,
//! attributes outcomes (by impression id, or the shopper's latest page),
//! and keeps this replica's rollups.

use super::*;
use discovery_kit::store::{Document, FindOptions, doc};

type Key = (&'static str, i64, Dims);
/// A batch's group: assignment (by address), placement, face shape, fine bucket.
type BatchKey = (usize, String, &'static str, i64);

pub(super) struct Worker {
    pub(super) store: Store,
    pub(super) cache: Arc<Cache>,
    pub(super) replica: String,
    pub(super) stats: Arc<Stats>,
    pub(super) totals: HashMap<Key, Totals>,
    pub(super) dirty: HashSet<Key>,
    /// Outcomes to attribute, with when they arrived.
    pub(super) pending: Vec<(i64, Outcome)>,
    pub(super) placements: HashSet<String>,
    /// Ids written to the embedded store, oldest first ([`MEMORY_KEEP`]).
    pub(super) in_memory: std::collections::VecDeque<String>,
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
    pub(super) async fn run(
        mut self,
        queue: Arc<parking_lot::Mutex<Queue>>,
        shutdown: CancellationToken,
    ) {
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
