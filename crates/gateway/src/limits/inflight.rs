//! In-flight bounds: per method class and gateway-wide, local to the
//! replica, failing fast (a slot is released when its call ends).

use super::*;

/// Per-method and gateway-wide in-flight bounds (local, fail fast).
#[derive(Debug)]
pub struct InFlight {
    face: AtomicUsize,
    recommend: AtomicUsize,
    all: AtomicUsize,
    limits: (usize, usize, usize),
    /// Calls in flight per client, and the most one client may hold.
    pub(super) per_client: Mutex<HashMap<String, usize>>,
    client_limit: usize,
}

/// A held slot; released on drop.
#[derive(Debug)]
pub struct Slot {
    counters: Arc<InFlight>,
    class: Class,
    client: Option<Arc<crate::auth::ApiKey>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counters.all.fetch_sub(1, Ordering::Relaxed);
        if let Some(c) = self.counters.counter(self.class) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(key) = &self.client {
            self.counters.leave_client(&key.client);
        }
    }
}

/// Why a call was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The gateway as a whole is at its bound (which this is).
    Overloaded(usize),
    /// The method is at its bound.
    Method(usize),
    /// The caller's client holds its share of the gateway.
    Client(usize),
}

impl InFlight {
    /// Bounds from the configuration (`usize::MAX` when limits are off,
    /// except the gateway-wide bound, which always applies).
    pub fn new(c: &LimitConfig) -> Arc<Self> {
        let m = |n: usize| if c.enabled { n } else { usize::MAX };
        Arc::new(Self {
            face: AtomicUsize::new(0),
            recommend: AtomicUsize::new(0),
            all: AtomicUsize::new(0),
            limits: (
                m(c.face_concurrency),
                m(c.recommend_concurrency),
                c.max_in_flight,
            ),
            per_client: Mutex::default(),
            client_limit: if c.enabled && c.client_share < 1.0 {
                ((c.max_in_flight as f64 * c.client_share).ceil() as usize).max(1)
            } else {
                usize::MAX
            },
        })
    }

    fn enter_client(&self, client: &str) -> Result<(), Busy> {
        if self.client_limit == usize::MAX {
            return Ok(());
        }
        let mut m = self.per_client.lock();
        let n = match m.get_mut(client) {
            Some(n) => n,
            None => m.entry(client.to_string()).or_insert(0),
        };
        if *n >= self.client_limit {
            return Err(Busy::Client(self.client_limit));
        }
        *n += 1;
        Ok(())
    }

    fn leave_client(&self, client: &str) {
        if self.client_limit == usize::MAX {
            return;
        }
        let mut m = self.per_client.lock();
        if let Some(n) = m.get_mut(client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(client);
            }
        }
    }

    fn counter(&self, class: Class) -> Option<&AtomicUsize> {
        match class {
            Class::Face => Some(&self.face),
            Class::Recommend => Some(&self.recommend),
            Class::Other => None,
        }
    }

    /// Calls in flight now.
    pub fn current(&self) -> usize {
        self.all.load(Ordering::Relaxed)
    }

    /// Takes a slot for a call of `client` (the principal's key), or fails
    /// at once.
    pub fn enter_for(
        self: &Arc<Self>,
        class: Class,
        key: &Arc<crate::auth::ApiKey>,
    ) -> Result<Slot, Busy> {
        self.enter_client(&key.client)?;
        match self.enter(class) {
            Ok(mut slot) => {
                slot.client = Some(key.clone());
                Ok(slot)
            }
            Err(busy) => {
                self.leave_client(&key.client);
                Err(busy)
            }
        }
    }

    /// Takes a slot or fails at once.
    pub fn enter(self: &Arc<Self>, class: Class) -> Result<Slot, Busy> {
        if self.all.fetch_add(1, Ordering::Relaxed) >= self.limits.2 {
            self.all.fetch_sub(1, Ordering::Relaxed);
            return Err(Busy::Overloaded(self.limits.2));
        }
        if let Some(c) = self.counter(class) {
            let limit = if class == Class::Face {
                self.limits.0
            } else {
                self.limits.1
            };
            if c.fetch_add(1, Ordering::Relaxed) >= limit {
                c.fetch_sub(1, Ordering::Relaxed);
                self.all.fetch_sub(1, Ordering::Relaxed);
                return Err(Busy::Method(limit));
            }
        }
        Ok(Slot {
            counters: self.clone(),
            class,
            client: None,
        })
    }
}
