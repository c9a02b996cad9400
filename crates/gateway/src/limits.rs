//! Rate limits (GCRA), concurrency limits and load shedding.
//!
//! # Rate limits
//!
//! Generic cell rate algorithm: each limit keeps one number per key, the
//! theoretical arrival time (TAT). A call at `now` is allowed when
//! `max(TAT, now) - now <= τ` and then moves TAT on by `T`, where `T` is
//! the interval between calls at the sustained rate and `τ = T × (burst -
//! 1)` lets `burst` calls through at once. A refused call learns exactly
//! when to retry (`retry-after`).
//!
//! Limits that apply to a call, checked together:
//! - global: every call (1,000/s, burst 2,000);
//! - per method: AnalyzeFace 50/min, Recommend 200/min (all callers);
//! - per requester and tier: authenticated users 100/min with AnalyzeFace
//!   10/h and Recommend 20/min; anonymous requesters (per address) 20/min,
//!   3/h and 5/min; partner keys none.
//!
//! Shared across gateway replicas through Redis Cluster: one Lua script per
//! hash slot checks every limit of its slot and commits only if all pass
//! (the global and per-method limits share the slot `{rl:g}`, a requester's
//! limits share `{rl:<requester>}`, so requesters spread over the cluster).
//! The two scripts run concurrently (one round trip); when one refuses and
//! the other committed, that commit is refunded. Redis's own clock is used,
//! so replicas agree. If Redis fails or is slower than the limiter timeout,
//! each replica falls back to local state with the limits divided by the
//! configured replica count.
//!
//! # Concurrency and shedding
//!
//! Per-method in-flight bounds (AnalyzeFace 10, Recommend 50) and a
//! gateway-wide bound are local to each replica and fail fast with
//! RESOURCE_EXHAUSTED (`retry-after`, `grpc-retry-pushback-ms`) instead of
//! queueing: accepted calls keep their latency, the excess is refused in
//! microseconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use discovery_kit::config::{ConfigError, Env};
use fred::prelude::*;
use fred::types::scripts::Script;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::auth::{Principal, Tier};
use crate::routes::Class;

/// A sustained rate with a burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Calls per second.
    pub per_second: f64,
    /// Calls allowed at once.
    pub burst: u32,
}

impl Rate {
    /// Parses `N/s`, `N/m`, `N/h` with an optional `:BURST` (default: N,
    /// one period's worth).
    pub fn parse(s: &str) -> Option<Rate> {
        let (rate, burst) = match s.split_once(':') {
            Some((r, b)) => (r, Some(b.trim().parse::<u32>().ok()?)),
            None => (s, None),
        };
        let (n, unit) = rate.trim().split_once('/')?;
        let n: f64 = n.trim().parse().ok()?;
        let period = match unit.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        if !(n.is_finite() && n > 0.0) {
            return None;
        }
        let burst = burst.unwrap_or(n.ceil() as u32).max(1);
        Some(Rate {
            per_second: n / period,
            burst,
        })
    }

    /// Interval between calls, ms.
    fn t_ms(&self) -> f64 {
        1000.0 / self.per_second
    }

    /// Tolerance, ms.
    fn tau_ms(&self) -> f64 {
        self.t_ms() * (self.burst.saturating_sub(1)) as f64
    }

    /// A share of this rate (at least one call of burst).
    fn scaled(&self, share: f64) -> Rate {
        Rate {
            per_second: self.per_second * share,
            burst: ((self.burst as f64 * share).floor() as u32).max(1),
        }
    }

    /// This rate shared by `n` replicas.
    fn divided(&self, n: u32) -> Rate {
        let n = n.max(1);
        Rate {
            per_second: self.per_second / n as f64,
            burst: (self.burst / n).max(1),
        }
    }
}

/// A key part with the hash-tag braces of Redis Cluster replaced.
fn tag_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['{', '}']) {
        std::borrow::Cow::Owned(s.replace(['{', '}'], "_"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// One GCRA step: the new TAT, or how long to wait (ms).
pub fn gcra(tat: Option<f64>, now: f64, rate: &Rate) -> Result<f64, f64> {
    let tat = tat.unwrap_or(now).max(now);
    let wait = tat - now - rate.tau_ms();
    if wait > 0.0 {
        Err(wait)
    } else {
        Ok(tat + rate.t_ms())
    }
}

/// Limits per requester for one tier.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TierLimits {
    /// Every call.
    pub all: Option<Rate>,
    /// AnalyzeFace.
    pub face: Option<Rate>,
    /// Recommend.
    pub recommend: Option<Rate>,
}

/// All limits.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitConfig {
    /// Off: no rate or concurrency limits (benchmarks).
    pub enabled: bool,
    /// Every call.
    pub global: Option<Rate>,
    /// Per method, all callers.
    pub face: Option<Rate>,
    /// Per method, all callers.
    pub recommend: Option<Rate>,
    /// Per tier.
    pub authenticated: TierLimits,
    /// Per tier.
    pub anonymous: TierLimits,
    /// Per tier (per key).
    pub partner: TierLimits,
    /// In-flight AnalyzeFace calls per replica.
    pub face_concurrency: usize,
    /// In-flight Recommend calls per replica.
    pub recommend_concurrency: usize,
    /// In-flight calls per replica before shedding.
    pub max_in_flight: usize,
    /// Gateway replicas (divides limits in the local fallback).
    pub replicas: u32,
    /// Where to count them instead: `host:port` of a headless Service whose
    /// addresses are the ready gateway replicas (`DISCOVERY_GATEWAY_REPLICAS`
    /// given as `dns://host:port`), resolved again as they scale.
    pub replicas_from: Option<String>,
    /// Redis answer time before falling back to local limits.
    pub redis_timeout: Duration,
    /// A unary request body must arrive whole within this (four times as
    /// long for a photo); a stream must send a frame at least this often.
    pub body_timeout: Duration,
    /// The largest share of the global rate and of the in-flight bound one
    /// client (an API key's client) may take, so that one tenant cannot
    /// starve the others (1.0: no share).
    pub client_share: f64,
}

impl Default for LimitConfig {
    fn default() -> Self {
        let r = |s| Rate::parse(s);
        Self {
            enabled: true,
            global: r("1000/s:2000"),
            face: r("50/m"),
            recommend: r("200/m"),
            authenticated: TierLimits {
                all: r("100/m"),
                face: r("10/h"),
                recommend: r("20/m"),
            },
            anonymous: TierLimits {
                all: r("20/m"),
                face: r("3/h"),
                recommend: r("5/m"),
            },
            partner: TierLimits::default(),
            face_concurrency: 10,
            recommend_concurrency: 50,
            max_in_flight: 2000,
            replicas: 1,
            replicas_from: None,
            redis_timeout: Duration::from_millis(50),
            body_timeout: Duration::from_secs(10),
            client_share: 0.5,
        }
    }
}

fn rate_var(env: &Env, var: &str, default: Option<Rate>) -> Result<Option<Rate>, ConfigError> {
    match env.raw(var) {
        None => Ok(default),
        Some(s) if s.trim() == "off" => Ok(None),
        Some(s) => Rate::parse(&s).map(Some).ok_or_else(|| {
            ConfigError::new(
                var,
                format!("{s:?} is not a rate (examples: 100/m, 1000/s:2000, 10/h, off)"),
            )
        }),
    }
}

fn tier_var(env: &Env, var: &str, default: TierLimits) -> Result<TierLimits, ConfigError> {
    let Some(s) = env.raw(var) else {
        return Ok(default);
    };
    let mut t = TierLimits::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (slot, value) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), v),
            None => ("all", part),
        };
        let rate = if value.trim() == "off" {
            None
        } else {
            Some(Rate::parse(value).ok_or_else(|| {
                ConfigError::new(
                    var,
                    format!("{value:?} is not a rate (examples: 100/m, 10/h)"),
                )
            })?)
        };
        match slot {
            "all" => t.all = rate,
            "face" => t.face = rate,
            "recommend" => t.recommend = rate,
            other => {
                return Err(ConfigError::new(
                    var,
                    format!(
                        "{other:?}: use all, face or recommend (e.g. 100/m,face=10/h,recommend=20/m)"
                    ),
                ));
            }
        }
    }
    Ok(t)
}

impl LimitConfig {
    /// Reads the `DISCOVERY_LIMIT_*` variables (defaults from the spec).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            enabled: env.bool("DISCOVERY_LIMITS", true)?,
            global: rate_var(env, "DISCOVERY_LIMIT_GLOBAL", d.global)?,
            face: rate_var(env, "DISCOVERY_LIMIT_FACE", d.face)?,
            recommend: rate_var(env, "DISCOVERY_LIMIT_RECOMMEND", d.recommend)?,
            authenticated: tier_var(env, "DISCOVERY_LIMIT_AUTHENTICATED", d.authenticated)?,
            anonymous: tier_var(env, "DISCOVERY_LIMIT_ANONYMOUS", d.anonymous)?,
            partner: tier_var(env, "DISCOVERY_LIMIT_PARTNER", d.partner)?,
            face_concurrency: env.parse(
                "DISCOVERY_CONCURRENCY_FACE",
                d.face_concurrency,
                "a number of calls",
            )?,
            recommend_concurrency: env.parse(
                "DISCOVERY_CONCURRENCY_RECOMMEND",
                d.recommend_concurrency,
                "a number of calls",
            )?,
            max_in_flight: env.parse(
                "DISCOVERY_GATEWAY_MAX_IN_FLIGHT",
                d.max_in_flight,
                "a number of calls",
            )?,
            replicas: match env.raw("DISCOVERY_GATEWAY_REPLICAS") {
                Some(v) if v.trim().starts_with("dns://") => d.replicas,
                _ => env.parse(
                    "DISCOVERY_GATEWAY_REPLICAS",
                    d.replicas,
                    "a number of replicas, or dns://host:port of the gateway's headless Service",
                )?,
            },
            replicas_from: match env.raw("DISCOVERY_GATEWAY_REPLICAS") {
                Some(v) => match v.trim().strip_prefix("dns://") {
                    Some(hp)
                        if hp
                            .rsplit_once(':')
                            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
                    {
                        Some(hp.to_string())
                    }
                    Some(_) => {
                        return Err(ConfigError::new(
                            "DISCOVERY_GATEWAY_REPLICAS",
                            format!("{v:?}: give dns://host:port (the gateway's headless Service)"),
                        ));
                    }
                    None => None,
                },
                None => None,
            },
            redis_timeout: env.duration("DISCOVERY_LIMIT_REDIS_TIMEOUT", d.redis_timeout)?,
            body_timeout: env.duration("DISCOVERY_GATEWAY_BODY_TIMEOUT", d.body_timeout)?,
            client_share: match env.raw("DISCOVERY_LIMIT_CLIENT_SHARE") {
                None => d.client_share,
                Some(v) if v.trim() == "off" => 1.0,
                Some(v) => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| *x > 0.0 && *x <= 1.0)
                    .ok_or_else(|| {
                        ConfigError::new(
                            "DISCOVERY_LIMIT_CLIENT_SHARE",
                            format!(
                                "{v:?} is not a share above 0 and at most 1 (e.g. 0.5), or off"
                            ),
                        )
                    })?,
            },
        })
    }

    fn tier(&self, t: Tier) -> &TierLimits {
        match t {
            Tier::Anonymous => &self.anonymous,
            Tier::Authenticated => &self.authenticated,
            Tier::Partner => &self.partner,
        }
    }

    /// The limits a call counts against, as (slot group, key, rate).
    /// Group 0 is global, group 1 the requester's.
    pub fn checks(&self, who: &Principal, class: Class) -> Vec<(usize, String, Rate)> {
        let mut out = Vec::with_capacity(5);
        if let Some(r) = self.global {
            out.push((0, "rl:{rl:g}:all".to_string(), r));
            if self.client_share < 1.0 {
                out.push((
                    0,
                    format!("rl:{{rl:g}}:c:{}", tag_safe(&who.key.client)),
                    r.scaled(self.client_share),
                ));
            }
        }
        let method = match class {
            Class::Face => self.face.map(|r| ("face", r)),
            Class::Recommend => self.recommend.map(|r| ("recommend", r)),
            Class::Other => None,
        };
        if let Some((name, r)) = method {
            out.push((0, format!("rl:{{rl:g}}:m:{name}"), r));
        }
        let tier = self.tier(who.tier);
        // Braces would change the key's hash slot (and split one
        // script's keys over two slots): never from caller input.
        let tag = format!(
            "{{rl:{}:{}}}",
            tag_safe(&who.key.client),
            tag_safe(&who.requester)
        );
        if let Some(r) = tier.all {
            out.push((1, format!("rl:{tag}:{}:all", who.tier.name()), r));
        }
        let per_class = match class {
            Class::Face => tier.face.map(|r| ("face", r)),
            Class::Recommend => tier.recommend.map(|r| ("recommend", r)),
            Class::Other => None,
        };
        if let Some((name, r)) = per_class {
            out.push((1, format!("rl:{tag}:{}:{name}", who.tier.name()), r));
        }
        out
    }
}

/// A refused call.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// Which limit (its key, for logs and metrics).
    pub limit: String,
    /// When to retry.
    pub retry_after: Duration,
}

/// In-process GCRA state (the fallback, and the only state without Redis).
#[derive(Debug)]
pub struct LocalLimiter {
    start: Instant,
    tats: Mutex<HashMap<String, f64>>,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            tats: Mutex::default(),
        }
    }
}

impl LocalLimiter {
    fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }

    /// Checks all limits; commits only if all pass.
    pub fn check(&self, checks: &[(usize, String, Rate)]) -> Result<(), Refused> {
        let now = self.now_ms();
        let mut tats = self.tats.lock();
        if tats.len() > 100_000 {
            // Keys whose TAT has passed hold no information: drop them.
            tats.retain(|_, tat| *tat > now);
        }
        let mut next = Vec::with_capacity(checks.len());
        let mut refused: Option<Refused> = None;
        for (_, key, rate) in checks {
            match gcra(tats.get(key).copied(), now, rate) {
                Ok(tat) => next.push(tat),
                Err(wait) => {
                    let wait = Duration::from_secs_f64(wait / 1000.0);
                    if refused.as_ref().is_none_or(|r| r.retry_after < wait) {
                        refused = Some(Refused {
                            limit: key.clone(),
                            retry_after: wait,
                        });
                    }
                }
            }
        }
        if let Some(r) = refused {
            return Err(r);
        }
        for ((_, key, _), tat) in checks.iter().zip(next) {
            tats.insert(key.clone(), tat);
        }
        Ok(())
    }
}

/// Checks and commits a slot's limits atomically. KEYS: limit keys; ARGV:
/// `T` and `τ` (ms) per key. Returns `{1, ""}` or `{0, wait_ms, index}`.
const CHECK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local new = {}
local wait, worst = 0, 0
for i, key in ipairs(KEYS) do
  local period, tau = tonumber(ARGV[2*i-1]), tonumber(ARGV[2*i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  if tat - now > tau then
    if tat - now - tau > wait then wait = tat - now - tau; worst = i end
  else
    new[i] = tat + period
  end
end
if wait > 0 then return {0, tostring(wait), worst} end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, tostring(new[i]), 'PX', math.ceil(new[i] - now) + 1000)
end
return {1, '0', 0}
"#;

/// Gives back one call's worth of each key (its check passed, another slot refused).
const REFUND: &str = r#"
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key))
  if tat then redis.call('SET', key, tostring(tat - tonumber(ARGV[i])), 'KEEPTTL') end
end
return 1
"#;

/// Rate limiter: Redis Cluster when configured, local otherwise or on failure.
#[derive(Clone)]
pub struct Limiter {
    config: Arc<LimitConfig>,
    /// Gateway replicas now (the fallback divides limits by it).
    replicas: Arc<std::sync::atomic::AtomicU32>,
    redis: Option<Pool>,
    local: Arc<LocalLimiter>,
    check: Arc<Script>,
    refund: Arc<Script>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

enum SlotResult {
    Allowed,
    Refused(Refused),
}

impl Limiter {
    /// A limiter over `redis` (None: local only).
    pub fn new(config: Arc<LimitConfig>, redis: Option<Pool>) -> Self {
        Self {
            replicas: Arc::new(std::sync::atomic::AtomicU32::new(config.replicas.max(1))),
            config,
            redis,
            local: Arc::default(),
            check: Arc::new(Script::from_lua(CHECK)),
            refund: Arc::new(Script::from_lua(REFUND)),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LimitConfig {
        &self.config
    }

    /// Gateway replicas the local fallback divides limits by.
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed)
    }

    /// Counts the gateway replicas from `replicas_from` now and every
    /// [`discovery_kit::client::DNS_REFRESH`] until `shutdown` (nothing to do
    /// with a fixed count). While a name does not resolve, the last count
    /// stays.
    pub async fn follow_replicas(&self, shutdown: discovery_kit::CancellationToken) {
        let Some(hostport) = self.config.replicas_from.clone() else {
            return;
        };
        loop {
            match discovery_kit::client::resolve_all(&hostport).await {
                Ok(addrs) if !addrs.is_empty() => {
                    let n = addrs.len() as u32;
                    if self.replicas.swap(n, Ordering::Relaxed) != n {
                        tracing::info!(replicas = n, name = %hostport, "gateway replicas counted");
                    }
                    metrics::gauge!("discovery_gateway_replicas").set(n as f64);
                }
                Ok(_) => tracing::debug!(name = %hostport, "no ready gateway replica listed yet"),
                Err(e) => {
                    tracing::warn!(name = %hostport, error = %e, "cannot count gateway replicas; keeping the last count")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(discovery_kit::client::DNS_REFRESH) => {}
            }
        }
    }

    async fn slot(
        &self,
        pool: &Pool,
        checks: &[&(usize, String, Rate)],
    ) -> Result<SlotResult, Error> {
        if checks.is_empty() {
            return Ok(SlotResult::Allowed);
        }
        let keys: Vec<String> = checks.iter().map(|c| c.1.clone()).collect();
        let args: Vec<String> = checks
            .iter()
            .flat_map(|c| [c.2.t_ms().to_string(), c.2.tau_ms().to_string()])
            .collect();
        let (ok, wait, worst): (i64, String, i64) = self
            .check
            .evalsha_with_reload(pool.next(), keys, args)
            .await?;
        if ok == 1 {
            return Ok(SlotResult::Allowed);
        }
        let wait: f64 = wait.parse().unwrap_or(1000.0);
        let limit = checks
            .get((worst.max(1) - 1) as usize)
            .map_or_else(String::new, |c| c.1.clone());
        Ok(SlotResult::Refused(Refused {
            limit,
            retry_after: Duration::from_secs_f64(wait / 1000.0),
        }))
    }

    /// Admits a call or says when to retry.
    pub async fn admit(&self, who: &Principal, class: Class) -> Result<(), Refused> {
        let checks = self.config.checks(who, class);
        if checks.is_empty() {
            return Ok(());
        }
        let Some(pool) = &self.redis else {
            return self.local.check(&checks);
        };
        let groups: [Vec<&(usize, String, Rate)>; 2] = [
            checks.iter().filter(|c| c.0 == 0).collect(),
            checks.iter().filter(|c| c.0 == 1).collect(),
        ];
        let both = tokio::time::timeout(self.config.redis_timeout, async {
            tokio::join!(self.slot(pool, &groups[0]), self.slot(pool, &groups[1]))
        })
        .await;
        match both {
            Ok((Ok(a), Ok(b))) => {
                let refused = match (&a, &b) {
                    (SlotResult::Refused(r), _) | (_, SlotResult::Refused(r)) => Some(r.clone()),
                    _ => None,
                };
                let Some(refused) = refused else {
                    return Ok(());
                };
                // Give back what the other slot committed.
                for (result, group) in [(&a, &groups[0]), (&b, &groups[1])] {
                    if matches!(result, SlotResult::Allowed) && !group.is_empty() {
                        let keys: Vec<String> = group.iter().map(|c| c.1.clone()).collect();
                        let args: Vec<String> =
                            group.iter().map(|c| c.2.t_ms().to_string()).collect();
                        let (script, client) = (self.refund.clone(), pool.next().clone());
                        tokio::spawn(async move {
                            let _: Result<i64, _> =
                                script.evalsha_with_reload(&client, keys, args).await;
                        });
                    }
                }
                Err(refused)
            }
            failed => {
                let reason = match failed {
                    Err(_) => "timeout".to_string(),
                    Ok((Err(e), _)) | Ok((_, Err(e))) => e.to_string(),
                    Ok(_) => unreachable!("both succeeded above"),
                };
                metrics::counter!("discovery_gateway_limiter_fallbacks_total").increment(1);
                tracing::debug!(%reason, "rate limiter: Redis unavailable, using local limits");
                let n = self.replicas();
                let local: Vec<_> = checks
                    .iter()
                    .map(|(g, k, r)| (*g, k.clone(), r.divided(n)))
                    .collect();
                self.local.check(&local)
            }
        }
    }
}

/// Per-method and gateway-wide in-flight bounds (local, fail fast).
#[derive(Debug)]
pub struct InFlight {
    face: AtomicUsize,
    recommend: AtomicUsize,
    all: AtomicUsize,
    limits: (usize, usize, usize),
    /// Calls in flight per client, and the most one client may hold.
    per_client: Mutex<HashMap<String, usize>>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ApiKey;

    #[tokio::test]
    async fn replicas_are_counted_from_the_headless_service_name() {
        let env = Env::from_pairs([("DISCOVERY_GATEWAY_REPLICAS", "dns://localhost:50051")]);
        let config = LimitConfig::from_env(&env).unwrap();
        assert_eq!(config.replicas_from.as_deref(), Some("localhost:50051"));
        let limiter = Limiter::new(Arc::new(config), None);
        assert_eq!(limiter.replicas(), 1, "one until counted");
        let want = discovery_kit::client::resolve_all("localhost:50051")
            .await
            .unwrap()
            .len() as u32;
        let stop = discovery_kit::CancellationToken::new();
        let follow = tokio::spawn({
            let (l, stop) = (limiter.clone(), stop.clone());
            async move { l.follow_replicas(stop).await }
        });
        while limiter.replicas() != want {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        follow.await.unwrap();
        // A name without a port, or a number that is not one, is refused.
        for bad in ["dns://gateway-headless", "three"] {
            let env = Env::from_pairs([("DISCOVERY_GATEWAY_REPLICAS", bad)]);
            let e = LimitConfig::from_env(&env).unwrap_err().to_string();
            assert!(e.contains("DISCOVERY_GATEWAY_REPLICAS"), "{e}");
        }
        assert_eq!(
            LimitConfig::from_env(&Env::from_pairs([("DISCOVERY_GATEWAY_REPLICAS", "4")]))
                .unwrap()
                .replicas,
            4
        );
    }

    #[test]
    fn rates_parse_with_clear_defaults() {
        assert_eq!(
            Rate::parse("100/m"),
            Some(Rate {
                per_second: 100.0 / 60.0,
                burst: 100
            })
        );
        assert_eq!(
            Rate::parse("1000/s:2000"),
            Some(Rate {
                per_second: 1000.0,
                burst: 2000
            })
        );
        assert_eq!(Rate::parse("10/h").unwrap().burst, 10);
        for bad in ["", "10", "10/d", "-1/s", "x/s", "10/s:x", "0/s"] {
            assert_eq!(Rate::parse(bad), None, "{bad}");
        }
        let env = Env::from_pairs([
            ("DISCOVERY_LIMIT_ANONYMOUS", "30/m,face=off"),
            ("DISCOVERY_LIMIT_GLOBAL", "off"),
        ]);
        let c = LimitConfig::from_env(&env).unwrap();
        assert_eq!(c.global, None);
        assert_eq!(c.anonymous.face, None);
        assert_eq!(c.anonymous.all, Rate::parse("30/m"));
        let bad = Env::from_pairs([("DISCOVERY_LIMIT_AUTHENTICATED", "100/m,faces=1/h")]);
        let e = LimitConfig::from_env(&bad).unwrap_err().to_string();
        assert!(
            e.contains("DISCOVERY_LIMIT_AUTHENTICATED") && e.contains("faces"),
            "{e}"
        );
    }

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let r = Rate::parse("60/m:3").unwrap(); // one a second, three at once
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(gcra(tat, 0.0, &r).expect("burst"));
        }
        let wait = gcra(tat, 0.0, &r).unwrap_err();
        assert!((wait - 1000.0).abs() < 1e-6, "{wait}");
        assert!(gcra(tat, 999.0, &r).is_err());
        assert!(gcra(tat, 1000.0, &r).is_ok());
    }

    fn principal(tier: Tier, requester: &str) -> Principal {
        Principal {
            key: Arc::new(ApiKey::for_tests("shop", tier)),
            tier,
            requester: requester.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn local_limits_refuse_with_retry_after_and_recover_with_time() {
        let limiter = Limiter::new(Arc::new(LimitConfig::default()), None);
        let alice = principal(Tier::Authenticated, "u:alice");
        let bob = principal(Tier::Authenticated, "u:bob");
        // Authenticated: 20 Recommend calls a minute (burst 20).
        for i in 0..20 {
            limiter
                .admit(&alice, Class::Recommend)
                .await
                .unwrap_or_else(|r| panic!("call {i}: {r:?}"));
        }
        let refused = limiter.admit(&alice, Class::Recommend).await.unwrap_err();
        assert!(
            refused.limit.contains("u:alice") && refused.limit.ends_with("recommend"),
            "{refused:?}"
        );
        assert!(
            (refused.retry_after.as_secs_f64() - 3.0).abs() < 0.01,
            "{refused:?}"
        );
        // Other requesters and other methods are not affected.
        limiter.admit(&bob, Class::Recommend).await.unwrap();
        limiter.admit(&alice, Class::Other).await.unwrap();
        // One interval later one more call fits.
        tokio::time::advance(Duration::from_secs(3)).await;
        limiter.admit(&alice, Class::Recommend).await.unwrap();
        assert!(limiter.admit(&alice, Class::Recommend).await.is_err());

        // Anonymous: 3 face analyses an hour.
        let anon = principal(Tier::Anonymous, "ip:10.0.0.9");
        for _ in 0..3 {
            limiter.admit(&anon, Class::Face).await.unwrap();
        }
        let r = limiter.admit(&anon, Class::Face).await.unwrap_err();
        assert_eq!(r.retry_after.as_secs(), 1200);
        // Partners have no per-user limits: only global and per-method ones.
        let partner = principal(Tier::Partner, "k:p");
        for _ in 0..47 {
            limiter.admit(&partner, Class::Face).await.unwrap();
        }
        let r = limiter.admit(&partner, Class::Face).await.unwrap_err();
        assert!(
            r.limit.contains("m:face"),
            "50/min for AnalyzeFace, 3 used above: {r:?}"
        );
    }

    #[test]
    fn in_flight_bounds_fail_fast_and_release_on_drop() {
        let c = LimitConfig {
            face_concurrency: 2,
            max_in_flight: 3,
            ..LimitConfig::default()
        };
        let f = InFlight::new(&c);
        let a = f.enter(Class::Face).unwrap();
        let _b = f.enter(Class::Face).unwrap();
        assert_eq!(f.enter(Class::Face).unwrap_err(), Busy::Method(2));
        let _c = f.enter(Class::Other).unwrap();
        assert_eq!(f.enter(Class::Other).unwrap_err(), Busy::Overloaded(3));
        drop(a);
        assert_eq!(f.current(), 2);
        f.enter(Class::Face).unwrap();
    }

    #[test]
    fn one_client_holds_at_most_its_share_of_the_gateway() {
        let c = LimitConfig {
            max_in_flight: 10,
            client_share: 0.5,
            ..LimitConfig::default()
        };
        let f = InFlight::new(&c);
        let greedy = Arc::new(ApiKey::for_tests("greedy", Tier::Partner));
        let other = Arc::new(ApiKey::for_tests("other", Tier::Partner));
        let held: Vec<_> = (0..5)
            .map(|_| f.enter_for(Class::Other, &greedy).unwrap())
            .collect();
        assert_eq!(
            f.enter_for(Class::Other, &greedy).unwrap_err(),
            Busy::Client(5)
        );
        // The rest is there for everyone else.
        let others: Vec<_> = (0..5)
            .map(|_| f.enter_for(Class::Other, &other).unwrap())
            .collect();
        drop(held);
        assert!(f.enter_for(Class::Other, &greedy).is_ok());
        drop(others);
        assert!(
            f.per_client.lock().len() <= 1,
            "released clients leave the map"
        );
        // The rate share rides in the global slot, under a brace-free key.
        let who = Principal {
            key: Arc::new(ApiKey::for_tests("evil}{client", Tier::Anonymous)),
            tier: Tier::Anonymous,
            requester: "u:{x}".into(),
        };
        let checks = c.checks(&who, Class::Other);
        let share = checks.iter().find(|k| k.1.contains(":c:")).unwrap();
        assert_eq!(share.0, 0);
        assert_eq!(share.1, "rl:{rl:g}:c:evil__client");
        assert!((share.2.per_second - 500.0).abs() < 1e-9);
        assert!(
            checks
                .iter()
                .filter(|k| k.0 == 1)
                .all(|k| k.1.matches('{').count() == 1)
        );
    }
}
