//! A small message bus between replicas over Redis Cluster pub/sub.
//!
//! Used for what every replica must hear about soon (cache invalidations,
//! catalogue changes), not for what must never be lost: pub/sub is
//! fire-and-forget, and a replica that is disconnected while a message is
//! published misses it. Consumers therefore keep their own safety net (the
//! recommendation service validates cached results against its snapshot and
//! refreshes the snapshot periodically).
//!
//! - Each message carries the sending [`Bus`]'s origin id; a bus never delivers
//!   its own messages back to its subscribers (the sender applied it already).
//! - Without Redis, [`Bus::publish`] is a no-op: there is nobody else to tell.
//! - Subscriptions are re-issued after every reconnect (failover of the node the
//!   subscriber is connected to).
//! - A message carries the publisher's trace context (W3C `traceparent`), so
//!   what a receiver does with it joins the publisher's trace
//!   ([`Message::follow`]).
//!
//! Frame: the origin id (u64, little-endian; its top bit says a trace
//! context follows), then, if flagged, one length byte and the
//! `traceparent`, then the payload. A frame without the flag is read as
//! before the flag existed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::Value as RedisValue;
use parking_lot::Mutex;
use tokio::sync::broadcast;

/// Messages buffered per channel for slow local subscribers.
const LOCAL_BUFFER: usize = 4096;

/// The origin's top bit: a trace context follows.
const TRACED: u64 = 1 << 63;

/// A message from another replica.
#[derive(Debug, Clone)]
pub struct Message {
    /// What the other replica published.
    pub payload: Bytes,
    /// The publisher's span, if it was traced.
    pub traceparent: Option<Arc<str>>,
}

impl Message {
    /// Makes `span` (not yet entered) part of the publisher's trace.
    pub fn follow(&self, span: &tracing::Span) {
        if let Some(sc) = self
            .traceparent
            .as_deref()
            .and_then(crate::telemetry::parse_traceparent)
        {
            crate::telemetry::follow(span, [sc]);
        }
    }
}

/// Encodes a frame (see the module docs).
fn frame(origin: u64, traceparent: Option<&str>, payload: &[u8]) -> Bytes {
    let tp = traceparent.filter(|t| t.len() <= u8::MAX as usize);
    let mut msg = BytesMut::with_capacity(9 + tp.map_or(0, str::len) + payload.len());
    match tp {
        Some(tp) => {
            msg.put_u64_le(origin | TRACED);
            msg.put_u8(tp.len() as u8);
            msg.put_slice(tp.as_bytes());
        }
        None => msg.put_u64_le(origin),
    }
    msg.put_slice(payload);
    msg.freeze()
}

/// A decoded frame: origin, trace context, payload.
type Unframed<'a> = (u64, Option<Arc<str>>, &'a [u8]);

/// Decodes a frame (`None` if truncated).
fn unframe(raw: &[u8]) -> Option<Unframed<'_>> {
    let (origin, rest) = raw.split_at_checked(8)?;
    let origin = u64::from_le_bytes(origin.try_into().ok()?);
    if origin & TRACED == 0 {
        return Some((origin, None, rest));
    }
    let (&n, rest) = rest.split_first()?;
    let (tp, payload) = rest.split_at_checked(n as usize)?;
    let tp = std::str::from_utf8(tp).ok().map(Arc::from);
    Some((origin & !TRACED, tp, payload))
}

/// See the module docs.
pub struct Bus {
    origin: u64,
    publisher: Option<Pool>,
    subscriber: Option<SubscriberClient>,
    topics: Mutex<HashMap<String, broadcast::Sender<Message>>>,
    wanted: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("origin", &self.origin)
            .field("redis", &self.publisher.is_some())
            .finish()
    }
}

fn new_origin() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish() & !TRACED
}

impl Bus {
    /// A bus with no Redis: publishing reaches nobody.
    pub fn local() -> Arc<Self> {
        Arc::new(Self {
            origin: new_origin(),
            publisher: None,
            subscriber: None,
            topics: Mutex::default(),
            wanted: Mutex::default(),
        })
    }

    /// A bus over Redis: `publisher` sends, `subscriber` (a dedicated
    /// connection) receives. Connects in the background.
    pub(crate) fn redis(publisher: Pool, subscriber: SubscriberClient) -> Arc<Self> {
        let bus = Arc::new(Self {
            origin: new_origin(),
            publisher: Some(publisher),
            subscriber: Some(subscriber.clone()),
            topics: Mutex::default(),
            wanted: Mutex::default(),
        });
        let weak = Arc::downgrade(&bus);
        let mut messages = subscriber.message_rx();
        let mut reconnects = subscriber.reconnect_rx();
        tokio::spawn(async move {
            let _ = subscriber.init().await;
            if let Some(bus) = weak.upgrade() {
                bus.resubscribe().await;
            }
            loop {
                tokio::select! {
                    m = messages.recv() => match m {
                        Ok(m) => match weak.upgrade() {
                            Some(bus) => bus.deliver(&m.channel, m.value),
                            None => break,
                        },
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            metrics::counter!("discovery_bus_dropped_total").increment(n);
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    r = reconnects.recv() => match (r, weak.upgrade()) {
                        (Ok(_), Some(bus)) => bus.resubscribe().await,
                        (Err(broadcast::error::RecvError::Lagged(_)), Some(bus)) => bus.resubscribe().await,
                        _ => break,
                    },
                }
            }
            let _ = subscriber.quit().await;
        });
        bus
    }

    /// This bus's origin id (unique per process instance).
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// Whether messages can reach other replicas right now.
    pub fn connected(&self) -> bool {
        self.subscriber.as_ref().is_some_and(|s| s.is_connected())
            && self.publisher.as_ref().is_some_and(|p| p.is_connected())
    }

    async fn resubscribe(&self) {
        let Some(sub) = &self.subscriber else { return };
        let channels: Vec<String> = self.wanted.lock().iter().cloned().collect();
        for _ in 0..50 {
            if channels.is_empty() {
                return;
            }
            match sub.subscribe(channels.clone()).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "bus subscribe failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tracing::warn!(
            "bus could not subscribe to {channels:?}; invalidations from other replicas will be missed until it reconnects"
        );
    }

    fn deliver(&self, channel: &str, value: RedisValue) {
        let Some(raw) = value.as_bytes() else { return };
        let Some((origin, traceparent, payload)) = unframe(raw) else {
            return;
        };
        if origin == self.origin {
            return;
        }
        if let Some(tx) = self.topics.lock().get(channel) {
            let _ = tx.send(Message {
                payload: Bytes::copy_from_slice(payload),
                traceparent,
            });
        }
    }

    /// Receives messages other replicas publish on `channel`.
    pub fn subscribe(self: &Arc<Self>, channel: &str) -> broadcast::Receiver<Message> {
        let rx = self
            .topics
            .lock()
            .entry(channel.to_string())
            .or_insert_with(|| broadcast::channel(LOCAL_BUFFER).0)
            .subscribe();
        let new = self.wanted.lock().insert(channel.to_string());
        if new && self.subscriber.is_some() {
            let bus = self.clone();
            tokio::spawn(async move { bus.resubscribe().await });
        }
        rx
    }

    /// Sends `payload` to every other replica subscribed to `channel`, with
    /// the current span's trace context. Returns whether Redis accepted it
    /// (false without Redis).
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> bool {
        let Some(pool) = &self.publisher else {
            return false;
        };
        let tp = crate::telemetry::traceparent(&tracing::Span::current());
        let msg = frame(self.origin, tp.as_deref(), payload);
        match pool.next().publish::<i64, _, _>(channel, msg).await {
            Ok(_) => true,
            Err(e) => {
                metrics::counter!("discovery_bus_publish_errors_total").increment(1);
                tracing::warn!(channel, error = %e, "bus publish failed; other replicas rely on their periodic refresh");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_carries_origin_trace_and_payload() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let origin = new_origin();
        assert_eq!(origin & TRACED, 0, "an origin never has the flag bit");
        let f = frame(origin, Some(tp), b"payload");
        let (o, t, p) = unframe(&f).unwrap();
        assert_eq!((o, t.as_deref(), p), (origin, Some(tp), &b"payload"[..]));
        // Untraced, and the frame of a build before trace contexts: the same.
        let f = frame(origin, None, b"x");
        assert_eq!(f.len(), 9);
        let (o, t, p) = unframe(&f).unwrap();
        assert_eq!((o, t, p), (origin, None, &b"x"[..]));
        // Truncated frames are dropped, not misread.
        assert!(unframe(&[1, 2, 3]).is_none());
        let mut cut = frame(origin, Some(tp), b"").to_vec();
        cut.truncate(20);
        assert!(unframe(&cut).is_none());
    }
}
