//! Replicas of one upstream service: power-of-two-choices balancing on
//! load, active health checks, passive ejection, several HTTP/2
//! connections per replica, static lists or DNS.
//!
//! - **Load** of a replica is `EWMA latency × (in-flight + 1)`; a call goes
//!   to the less loaded of two replicas drawn at random among those that
//!   are healthy and not ejected (all of them if none is).
//! - **Active checks** call `grpc.health.v1.Health/Check` for the upstream's
//!   service every interval (10 s): a replica turns unhealthy after 3
//!   failed checks in a row and healthy again after 2 good ones (spec).
//! - **Passive ejection**: 3 transport failures or UNAVAILABLE answers in
//!   a row take a replica out for 10 s (doubling while it keeps failing,
//!   up to 2 min); a success resets it.
//! - **Connections**: each replica has `connections` HTTP/2 connections
//!   (default 1) per server worker, used in turn, plus a set for callers
//!   that are not workers. A worker only uses its own: the connection's
//!   task runs on the worker's thread, so a proxied call never wakes
//!   another thread ([`discovery_kit::server::serve_on_workers`]).
//! - **In-process**: when the replica is a service of this very process
//!   (`discovery up`), its routes are called directly
//!   ([`discovery_kit::inproc`]), with the same balancing, health checks,
//!   breakers and deadlines around the call.
//! - **Discovery**: `http://host:port` entries are used as given;
//!   `dns://host:port` is resolved every interval and each address becomes
//!   a replica (Kubernetes headless services).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use discovery_kit::CancellationToken;
use discovery_kit::server::BoxError;
use http::{Request, Response, Uri};
use parking_lot::Mutex;
use rand::Rng;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::Channel;

use crate::routes::Upstream;

mod conn;
use conn::{Conn, KeepAlive};

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// HTTP/2 connections per replica and server worker.
    pub connections: usize,
    /// Server workers (each gets its own connections).
    pub workers: usize,
    /// Health check interval.
    pub check_interval: Duration,
    /// Health check timeout.
    pub check_timeout: Duration,
    /// Failed checks before unhealthy.
    pub unhealthy_after: u32,
    /// Good checks before healthy again.
    pub healthy_after: u32,
    /// Passive failures in a row before ejection.
    pub eject_after: u32,
    /// First ejection period.
    pub eject_for: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            connections: 1,
            workers: 1,
            check_interval: Duration::from_secs(10),
            check_timeout: Duration::from_secs(5),
            unhealthy_after: 3,
            healthy_after: 2,
            eject_after: 3,
            eject_for: Duration::from_secs(10),
        }
    }
}

/// Health check state (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthState {
    /// Current verdict.
    pub healthy: bool,
    run: u32,
}

impl Default for HealthState {
    /// Replicas start healthy: traffic flows before the first check.
    fn default() -> Self {
        Self {
            healthy: true,
            run: 0,
        }
    }
}

impl HealthState {
    /// Applies one check result; true when the verdict changed.
    pub fn observe(&mut self, ok: bool, unhealthy_after: u32, healthy_after: u32) -> bool {
        if ok == self.healthy {
            self.run = 0;
            return false;
        }
        self.run += 1;
        let needed = if self.healthy {
            unhealthy_after
        } else {
            healthy_after
        };
        if self.run >= needed {
            self.healthy = ok;
            self.run = 0;
            return true;
        }
        false
    }
}

/// One replica.
#[derive(Debug)]
pub struct Replica {
    /// `http://host:port`.
    pub url: String,
    authority: http::uri::Authority,
    /// The address, when it is a literal one a service of this process may
    /// serve ([`discovery_kit::inproc`]).
    local_addr: Option<std::net::SocketAddr>,
    /// `per_slot` connections for each worker, then for other callers.
    conns: Vec<Conn>,
    per_slot: usize,
    health_channel: Channel,
    next: AtomicUsize,
    in_flight: AtomicUsize,
    ewma_us: AtomicU64,
    healthy: AtomicBool,
    health: Mutex<HealthState>,
    failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    /// Calls sent here.
    pub calls: AtomicU64,
}

impl Replica {
    /// A replica at `url` (for tests of the layers that handle replicas).
    #[cfg(test)]
    pub(crate) fn for_tests(url: &str, config: &PoolConfig) -> Self {
        Self::new(url.to_string(), config).expect("a valid URL")
    }

    fn new(url: String, config: &PoolConfig) -> Result<Self, String> {
        let endpoint =
            discovery_kit::client::endpoint("upstream", &url).map_err(|e| e.to_string())?;
        let authority = url
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.authority().cloned())
            .ok_or_else(|| format!("{url:?} has no host:port"))?;
        let per_slot = config.connections.max(1);
        let slots = config.workers.max(1) + 1;
        let conns = (0..per_slot * slots)
            .map(|_| Conn::new(authority.to_string(), KeepAlive::default()))
            .collect();
        Ok(Self {
            url,
            local_addr: authority.as_str().parse().ok(),
            authority,
            conns,
            per_slot,
            health_channel: endpoint.connect_lazy(),
            next: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            ewma_us: AtomicU64::new(1000f64.to_bits()),
            healthy: AtomicBool::new(true),
            health: Mutex::new(HealthState::default()),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            calls: AtomicU64::new(0),
        })
    }

    /// Sends a request on the calling worker's next connection, in turn;
    /// `path` is the upstream method path.
    pub async fn send(
        &self,
        mut req: Request<Body>,
        path: &'static str,
    ) -> Result<Response<Body>, BoxError> {
        *req.uri_mut() = Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()?;
        // A service of this process (`discovery up`): call its routes.
        if let Some(local) = self
            .local_addr
            .as_ref()
            .and_then(discovery_kit::inproc::lookup)
        {
            use tower::ServiceExt;
            let Ok(resp) = local.oneshot(req).await;
            return Ok(resp);
        }
        let slots = self.conns.len() / self.per_slot;
        let slot = discovery_kit::server::worker().map_or(slots - 1, |w| w % (slots - 1).max(1));
        let i = slot * self.per_slot + self.next.fetch_add(1, Ordering::Relaxed) % self.per_slot;
        self.conns[i].call(req).await
    }

    fn load(&self) -> f64 {
        f64::from_bits(self.ewma_us.load(Ordering::Relaxed))
            * (self.in_flight.load(Ordering::Relaxed) + 1) as f64
    }

    /// Healthy by the active checks.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Taken out by passive ejection now.
    pub fn is_ejected(&self) -> bool {
        self.ejected_until
            .lock()
            .is_some_and(|t| Instant::now() < t)
    }

    fn usable(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    /// A call starts; the returned guard ends it.
    pub fn start(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            replica: self.clone(),
        }
    }

    /// Latency to the response headers.
    pub fn observe_latency(&self, d: Duration) {
        let sample = d.as_secs_f64() * 1e6;
        let old = f64::from_bits(self.ewma_us.load(Ordering::Relaxed));
        let new = old + 0.3 * (sample - old);
        self.ewma_us.store(new.to_bits(), Ordering::Relaxed);
    }

    /// A call succeeded (the replica answered).
    pub fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.ejections.store(0, Ordering::Relaxed);
    }

    /// A transport failure or UNAVAILABLE; ejects after enough in a row.
    pub fn failed(&self, config: &PoolConfig) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= config.eject_after {
            let times = self.ejections.fetch_add(1, Ordering::Relaxed);
            let period = config
                .eject_for
                .saturating_mul(1 << times.min(4))
                .min(Duration::from_secs(120));
            *self.ejected_until.lock() = Some(Instant::now() + period);
            self.failures.store(0, Ordering::Relaxed);
            metrics::counter!("discovery_gateway_ejections_total").increment(1);
            tracing::warn!(replica = %self.url, ?period, "replica ejected after {n} failures in a row");
        }
    }

    fn checked(&self, ok: bool, config: &PoolConfig) {
        let mut h = self.health.lock();
        if h.observe(ok, config.unhealthy_after, config.healthy_after) {
            self.healthy.store(h.healthy, Ordering::Relaxed);
            if h.healthy {
                // Back from the dead: forget the passive record too.
                *self.ejected_until.lock() = None;
                self.failures.store(0, Ordering::Relaxed);
                tracing::info!(replica = %self.url, "replica healthy again");
            } else {
                tracing::warn!(replica = %self.url, "replica unhealthy (health checks failing)");
            }
        }
    }
}

/// Ends a call on drop.
#[derive(Debug)]
pub struct InFlightGuard {
    replica: Arc<Replica>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.replica.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The replicas of one upstream.
#[derive(Debug)]
pub struct Pool {
    /// Which upstream.
    pub upstream: Upstream,
    config: PoolConfig,
    sources: Vec<String>,
    replicas: RwLock<Arc<Vec<Arc<Replica>>>>,
}

impl Pool {
    /// A pool over `sources` (`http://` URLs used as given, `dns://`
    /// resolved by [`Pool::run`]).
    pub fn new(
        upstream: Upstream,
        sources: Vec<String>,
        config: PoolConfig,
    ) -> Result<Arc<Self>, String> {
        let mut replicas = Vec::new();
        for s in &sources {
            if !s.starts_with("dns://") {
                replicas.push(Arc::new(Replica::new(s.clone(), &config)?));
            }
        }
        Ok(Arc::new(Self {
            upstream,
            config,
            sources,
            replicas: RwLock::new(Arc::new(replicas)),
        }))
    }

    /// Pool settings.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// The current replicas.
    pub fn replicas(&self) -> Arc<Vec<Arc<Replica>>> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Power of two choices among usable replicas, avoiding `exclude`
    /// (the replica a retry is leaving) when there is another.
    pub fn pick(&self, exclude: Option<&Arc<Replica>>) -> Option<Arc<Replica>> {
        let all = self.replicas();
        let not_excluded = |r: &&Arc<Replica>| exclude.is_none_or(|e| !Arc::ptr_eq(r, e));
        let mut candidates: Vec<&Arc<Replica>> = all
            .iter()
            .filter(|r| r.usable())
            .filter(not_excluded)
            .collect();
        if candidates.is_empty() {
            // Nothing usable: try the others rather than fail outright.
            candidates = all.iter().filter(not_excluded).collect();
        }
        if candidates.is_empty() {
            return all.first().cloned();
        }
        if candidates.len() == 1 {
            return Some(candidates[0].clone());
        }
        let mut rng = rand::rng();
        let a = rng.random_range(0..candidates.len());
        let mut b = rng.random_range(0..candidates.len() - 1);
        if b >= a {
            b += 1;
        }
        let (x, y) = (candidates[a], candidates[b]);
        Some(if x.load() <= y.load() {
            x.clone()
        } else {
            y.clone()
        })
    }

    async fn probe(&self, replica: &Replica) -> bool {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let mut client = HealthClient::new(replica.health_channel.clone());
        let call = client.check(HealthCheckRequest {
            service: self.upstream.health_service().to_string(),
        });
        matches!(
            tokio::time::timeout(self.config.check_timeout, call).await,
            Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
        )
    }

    /// Checks every replica once.
    pub async fn check_all(&self) {
        let replicas = self.replicas();
        let results = futures::future::join_all(replicas.iter().map(|r| self.probe(r))).await;
        for (r, ok) in replicas.iter().zip(results) {
            r.checked(ok, &self.config);
        }
    }

    async fn resolve(&self) {
        let mut urls = Vec::new();
        for s in &self.sources {
            match s.strip_prefix("dns://") {
                None => urls.push(s.clone()),
                Some(hostport) => match discovery_kit::client::resolve_all(hostport).await {
                    Ok(addrs) => urls.extend(addrs.iter().map(|a| format!("http://{a}"))),
                    Err(e) => {
                        tracing::warn!(source = %s, error = %e, "DNS lookup failed; keeping the last replicas")
                    }
                },
            }
        }
        urls.sort();
        urls.dedup();
        let current = self.replicas();
        let same =
            current.len() == urls.len() && current.iter().zip(&urls).all(|(r, u)| &r.url == u);
        if same || urls.is_empty() {
            return;
        }
        let next: Vec<Arc<Replica>> = urls
            .iter()
            .filter_map(|u| {
                current
                    .iter()
                    .find(|r| &r.url == u)
                    .cloned()
                    .or_else(|| Replica::new(u.clone(), &self.config).ok().map(Arc::new))
            })
            .collect();
        tracing::info!(
            upstream = self.upstream.name(),
            replicas = next.len(),
            "upstream replicas changed"
        );
        *self.replicas.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
    }

    /// Resolves DNS sources and health-checks replicas every interval
    /// until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.sources.iter().any(|s| s.starts_with("dns://")) {
                self.resolve().await;
            }
            self.check_all().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_turns_after_3_failures_and_back_after_2_successes() {
        let mut h = HealthState::default();
        assert!(h.healthy);
        assert!(!h.observe(false, 3, 2));
        assert!(!h.observe(true, 3, 2), "a success resets the run");
        assert!(!h.observe(false, 3, 2));
        assert!(!h.observe(false, 3, 2));
        assert!(h.observe(false, 3, 2));
        assert!(!h.healthy);
        assert!(!h.observe(true, 3, 2));
        assert!(h.observe(true, 3, 2));
        assert!(h.healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_prefers_the_less_loaded_and_skips_ejected_replicas() {
        let pool = Pool::new(
            Upstream::Recommendation,
            vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            PoolConfig::default(),
        )
        .unwrap();
        let reps = pool.replicas();
        let (a, b) = (reps[0].clone(), reps[1].clone());
        a.observe_latency(Duration::from_millis(50));
        for _ in 0..20 {
            assert!(Arc::ptr_eq(&pool.pick(None).unwrap(), &b), "b is faster");
        }
        // Busy b: 100 calls in flight make it the more loaded.
        let guards: Vec<_> = (0..100).map(|_| b.start()).collect();
        assert!(Arc::ptr_eq(&pool.pick(None).unwrap(), &a));
        drop(guards);
        // Ejection: three failures take b out for 10 s.
        for _ in 0..3 {
            b.failed(pool.config());
        }
        assert!(b.is_ejected());
        for _ in 0..20 {
            assert!(Arc::ptr_eq(&pool.pick(None).unwrap(), &a));
        }
        // A retry leaving a goes to b even though b is ejected (nothing else).
        assert!(Arc::ptr_eq(&pool.pick(Some(&a)).unwrap(), &b));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!b.is_ejected());
        assert!(
            Arc::ptr_eq(&pool.pick(None).unwrap(), &b),
            "back, and faster"
        );
        // Failing again doubles the period.
        for _ in 0..3 {
            b.failed(pool.config());
        }
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(b.is_ejected(), "20 s the second time");
        // Unhealthy by checks: out until two good checks.
        for _ in 0..3 {
            a.checked(false, pool.config());
        }
        assert!(!a.is_healthy());
        tokio::time::advance(Duration::from_secs(10)).await;
        a.checked(true, pool.config());
        a.checked(true, pool.config());
        assert!(a.is_healthy());
    }
}
