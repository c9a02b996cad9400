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

/// See the module docs.
pub struct Bus {
    origin: u64,
    publisher: Option<Pool>,
    subscriber: Option<SubscriberClient>,
    topics: Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
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
    h.finish()
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
        if raw.len() < 8 {
            return;
        }
        let (origin, payload) = raw.split_at(8);
        let origin = u64::from_le_bytes(origin.try_into().unwrap_or([0; 8]));
        if origin == self.origin {
            return;
        }
        if let Some(tx) = self.topics.lock().get(channel) {
            let _ = tx.send(Bytes::copy_from_slice(payload));
        }
    }

    /// Receives messages other replicas publish on `channel`.
    pub fn subscribe(self: &Arc<Self>, channel: &str) -> broadcast::Receiver<Bytes> {
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

    /// Sends `payload` to every other replica subscribed to `channel`.
    /// Returns whether Redis accepted it (false without Redis).
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> bool {
        let Some(pool) = &self.publisher else {
            return false;
        };
        let mut msg = BytesMut::with_capacity(8 + payload.len());
        msg.put_u64_le(self.origin);
        msg.put_slice(payload);
        match pool
            .next()
            .publish::<i64, _, _>(channel, msg.freeze())
            .await
        {
            Ok(_) => true,
            Err(e) => {
                metrics::counter!("discovery_bus_publish_errors_total").increment(1);
                tracing::warn!(channel, error = %e, "bus publish failed; other replicas rely on their periodic refresh");
                false
            }
        }
    }
}
