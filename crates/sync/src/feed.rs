//! The catalogue change feed: the `products` change stream turned into
//! catalogue changes for every recommendation replica and for
//! `WatchCatalogChanges` subscribers.
//!
//! Delivery is at least once and resumable:
//! 1. read the checkpoint (`sync_checkpoints/products`: resume token and the
//!    last sequence number) and open the change stream after it;
//! 2. collect events into a batch (up to [`MAX_BATCH`] or [`LINGER`]);
//! 3. deliver the batch with `ApplyCatalogChange` to a recommendation replica
//!    (which applies it and fans it out to the others over the bus), retrying
//!    with backoff until it is accepted;
//! 4. only then store the new checkpoint.
//!
//! A crash between 3 and 4 re-delivers that batch after restart with the same
//! sequence numbers. Replicas ignore an upsert identical to what they hold,
//! so a re-delivery invalidates nothing; watchers can drop sequences they
//! have seen. Nothing is skipped: the checkpoint never passes an undelivered
//! event.

use std::time::Duration;

use discovery_catalog::{Embedding, Frame, PRODUCTS};
use discovery_kit::CancellationToken;
use discovery_kit::client::TracedChannel;
use discovery_kit::store::{ChangeOp, ResumeToken, Store, StoreError};
use discovery_proto::v1 as pb;
use discovery_proto::v1::cache_admin_client::CacheAdminClient;
use futures::StreamExt;
use prost::Message;
use tokio::sync::broadcast;
use tracing::Instrument;

use crate::SYNC_CHECKPOINTS;

/// The field of a product document that names the span that wrote it
/// (W3C `traceparent`, stamped by ingestion): a delivery joins the trace of
/// the ingest call whose records it carries, through the change stream.
pub const TRACE_FIELD: &str = "trace_parent";

/// Most changes per delivery.
pub const MAX_BATCH: usize = 500;
/// Largest `ApplyCatalogChange` request: a gRPC server takes 4 MiB by
/// default; 500 products with long descriptions pass that, and a batch
/// refused for its size would be retried, and refused, for ever. Batches are
/// delivered in parts under this many bytes, in order.
pub const MAX_DELIVERY_BYTES: usize = 3 << 20;
/// How long a partial batch waits for more changes.
pub const LINGER: Duration = Duration::from_millis(10);
const CHECKPOINT_ID: &str = "products";

/// Where the feed stands.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    /// Resume after this.
    pub token: Option<ResumeToken>,
    /// Sequence number of the last delivered change.
    pub sequence: u64,
}

/// Reads the stored checkpoint.
pub async fn load_checkpoint(store: &Store) -> Result<Checkpoint, StoreError> {
    Ok(match store.get(SYNC_CHECKPOINTS, CHECKPOINT_ID).await? {
        Some(d) => Checkpoint {
            token: d.get("token").cloned().map(ResumeToken),
            sequence: d.get_i64("sequence").unwrap_or(0).max(0) as u64,
        },
        None => Checkpoint::default(),
    })
}

async fn save_checkpoint(store: &Store, cp: &Checkpoint) -> Result<(), StoreError> {
    let d = crate::store::checkpoint_document(
        CHECKPOINT_ID,
        cp.sequence,
        cp.token.as_ref().map(|t| &t.0),
    );
    store.put(SYNC_CHECKPOINTS, d).await
}

/// Follows the change stream until `shutdown`; restarts the stream after
/// errors (from the last checkpoint).
pub async fn follow(
    store: Store,
    recommendation: Option<CacheAdminClient<TracedChannel>>,
    watchers: std::sync::Arc<Watchers>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match run(&store, recommendation.clone(), &watchers, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "change feed interrupted; resuming from the checkpoint");
                metrics::counter!("discovery_sync_feed_restarts_total").increment(1);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn run(
    store: &Store,
    mut recommendation: Option<CacheAdminClient<TracedChannel>>,
    watchers: &Watchers,
    shutdown: &CancellationToken,
) -> Result<(), StoreError> {
    let mut cp = load_checkpoint(store).await?;
    let mut stream = match store.watch(PRODUCTS, cp.token.clone()).await {
        Err(StoreError::ResumeLost { reason, .. }) => {
            // History gone: replicas fall back to their periodic full reload.
            tracing::error!(
                reason,
                "change stream cannot resume; following from now (replicas reconcile on their periodic reload)"
            );
            metrics::counter!("discovery_sync_feed_resume_lost_total").increment(1);
            store.watch(PRODUCTS, None).await?
        }
        other => other?,
    };
    tracing::info!(
        after_sequence = cp.sequence,
        "following the products change stream"
    );
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            e = stream.next() => e,
        };
        let Some(first) = first else {
            return Err(StoreError::Filter("change stream ended".into()));
        };
        let mut events = vec![first?];
        let deadline = tokio::time::Instant::now() + LINGER;
        while events.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(e)) => events.push(e?),
                Ok(None) | Err(_) => break,
            }
        }
        let now = discovery_kit::now_unix_ms();
        let mut changes = Vec::with_capacity(events.len());
        let mut origins = Vec::with_capacity(events.len());
        let mut last_token = None;
        for ev in events {
            last_token = Some(ev.token.clone());
            let origin = ev
                .document
                .as_ref()
                .and_then(|d| d.get_str(TRACE_FIELD).ok())
                .and_then(discovery_kit::telemetry::parse_traceparent);
            let change = match (ev.op, ev.document) {
                (ChangeOp::Delete, _) => Some(pb::CatalogChange {
                    kind: pb::ChangeKind::Delete as i32,
                    product_id: ev.id.clone(),
                    product: None,
                    sequence: 0,
                    committed_at_unix_ms: now,
                    embedding: None,
                }),
                (_, Some(d)) => match Frame::from_document(d) {
                    Ok(f) => Some(pb::CatalogChange {
                        kind: pb::ChangeKind::Upsert as i32,
                        product_id: f.id.clone(),
                        product: Some(f.to_proto()),
                        sequence: 0,
                        committed_at_unix_ms: now,
                        embedding: f.embedding.as_ref().map(Embedding::to_proto),
                    }),
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping an undecodable product change");
                        None
                    }
                },
                (_, None) => None,
            };
            if let Some(mut c) = change {
                cp.sequence += 1;
                c.sequence = cp.sequence;
                changes.push(c);
                origins.push(origin);
            }
        }
        if !changes.is_empty() {
            let mut at = 0;
            for part in parts(&changes, MAX_DELIVERY_BYTES) {
                let from = &origins[at..at + part.len()];
                at += part.len();
                if part.len() == 1 && part[0].encoded_len() > MAX_DELIVERY_BYTES {
                    // One product larger than a request may be: no replica
                    // can take it; they pick it up on their periodic reload.
                    tracing::error!(product = %part[0].product_id, bytes = part[0].encoded_len(), "a product change is too large to deliver; replicas get it on their next full reload");
                    metrics::counter!("discovery_sync_feed_oversized_total").increment(1);
                    continue;
                }
                // Under the ingest call that wrote these records (or linked
                // to each, when a delivery carries several calls' records).
                let span = tracing::info_span!(
                    "sync.feed.deliver",
                    changes = part.len(),
                    first_sequence = part[0].sequence,
                );
                discovery_kit::telemetry::follow(&span, from.iter().flatten().cloned());
                if !deliver(&mut recommendation, part, shutdown)
                    .instrument(span)
                    .await
                {
                    // Shutting down undelivered: keep the checkpoint where it is.
                    return Ok(());
                }
            }
            watchers.publish(&changes);
            metrics::counter!("discovery_sync_feed_changes_total").increment(changes.len() as u64);
        }
        cp.token = last_token;
        save_checkpoint(store, &cp).await?;
    }
}

/// `changes` cut, in order, into runs whose encoded size stays under `max`
/// bytes (a change larger than `max` is a run of its own).
pub fn parts(changes: &[pb::CatalogChange], max: usize) -> Vec<&[pb::CatalogChange]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, c) in changes.iter().enumerate() {
        // The field's tag and length prefix: at most 6 bytes.
        let n = c.encoded_len() + 6;
        if i > start && bytes + n > max {
            out.push(&changes[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += n;
    }
    if start < changes.len() {
        out.push(&changes[start..]);
    }
    out
}

/// Sends changes to a recommendation replica until one accepts them; false
/// only if shutdown came first.
async fn deliver(
    client: &mut Option<CacheAdminClient<TracedChannel>>,
    changes: &[pb::CatalogChange],
    shutdown: &CancellationToken,
) -> bool {
    let Some(client) = client else { return true };
    let mut backoff = Duration::from_millis(50);
    loop {
        let req = pb::ApplyCatalogChangeRequest {
            changes: changes.to_vec(),
        };
        match client.apply_catalog_change(req).await {
            Ok(_) => return true,
            Err(s) => {
                tracing::warn!(code = ?s.code(), message = s.message(), "delivering catalogue changes failed; retrying");
                metrics::counter!("discovery_sync_feed_delivery_retries_total").increment(1);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Recent changes for `WatchCatalogChanges`: a window to resume from, and
/// live delivery.
#[derive(Debug)]
pub struct Watchers {
    recent: parking_lot::Mutex<std::collections::VecDeque<pb::CatalogChange>>,
    live: broadcast::Sender<pb::CatalogChange>,
}

/// Changes kept for watchers resuming by sequence.
pub const WINDOW: usize = 10_000;

impl Default for Watchers {
    fn default() -> Self {
        Self {
            recent: Default::default(),
            live: broadcast::channel(WINDOW).0,
        }
    }
}

impl Watchers {
    fn publish(&self, changes: &[pb::CatalogChange]) {
        let mut recent = self.recent.lock();
        for c in changes {
            if recent.len() == WINDOW {
                recent.pop_front();
            }
            recent.push_back(c.clone());
            let _ = self.live.send(c.clone());
        }
    }

    /// Changes after `after` still in the window, and the live receiver;
    /// `Err(oldest)` when `after` is older than the window.
    pub fn subscribe(
        &self,
        after: u64,
    ) -> Result<
        (
            Vec<pb::CatalogChange>,
            broadcast::Receiver<pb::CatalogChange>,
        ),
        u64,
    > {
        let recent = self.recent.lock();
        let rx = self.live.subscribe();
        if after == 0 {
            return Ok((Vec::new(), rx));
        }
        let oldest = recent.front().map_or(u64::MAX, |c| c.sequence);
        let newest = recent.back().map_or(0, |c| c.sequence);
        if after + 1 < oldest && after < newest {
            return Err(oldest);
        }
        Ok((
            recent
                .iter()
                .filter(|c| c.sequence > after)
                .cloned()
                .collect(),
            rx,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(i: u64, description: usize) -> pb::CatalogChange {
        pb::CatalogChange {
            kind: pb::ChangeKind::Upsert as i32,
            product_id: format!("p{i}"),
            product: Some(pb::Product {
                id: format!("p{i}"),
                description: "x".repeat(description),
                ..Default::default()
            }),
            sequence: i,
            committed_at_unix_ms: 0,
            embedding: None,
        }
    }

    #[test]
    fn a_batch_is_delivered_in_parts_under_the_request_limit_in_order() {
        // 500 products of 12 KB: 6 MB, over the 4 MiB a server takes.
        let changes: Vec<_> = (1..=500).map(|i| change(i, 12_000)).collect();
        let whole = pb::ApplyCatalogChangeRequest {
            changes: changes.clone(),
        }
        .encoded_len();
        assert!(whole > 4 << 20, "{whole}");
        let parts = parts(&changes, MAX_DELIVERY_BYTES);
        assert!(parts.len() >= 2);
        for p in &parts {
            let req = pb::ApplyCatalogChangeRequest {
                changes: p.to_vec(),
            };
            assert!(
                req.encoded_len() <= MAX_DELIVERY_BYTES,
                "{}",
                req.encoded_len()
            );
        }
        let seqs: Vec<u64> = parts
            .iter()
            .flat_map(|p| p.iter().map(|c| c.sequence))
            .collect();
        assert_eq!(
            seqs,
            (1..=500).collect::<Vec<_>>(),
            "every change, once, in order"
        );
        // A change larger than the limit is a part of its own.
        let big = vec![change(1, 10), change(2, 4 << 20), change(3, 10)];
        let p = super::parts(&big, MAX_DELIVERY_BYTES);
        assert_eq!(p.iter().map(|p| p.len()).collect::<Vec<_>>(), [1, 1, 1]);
        assert!(super::parts(&[], MAX_DELIVERY_BYTES).is_empty());
    }
}
