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

mod inflight;
pub use inflight::{Busy, InFlight, Slot};

#[cfg(test)]
mod tests;
