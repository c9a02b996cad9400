//! Alert rules as data, and the state machine that runs them.
//!
//! A [`Rule`] compares one observed signal ([`Signal`]) per series (a
//! label set: service, cache kind...) with a threshold. Each series moves
//! through `inactive → pending → firing → resolved → inactive`:
//! - the condition turns true: **pending** (nothing is sent);
//! - still true once it has held for the rule's `for_` duration:
//!   **firing** (one notification);
//! - false while pending: back to inactive, silently (a breach shorter
//!   than the duration never fires);
//! - false while firing: **resolved** (one notification), then inactive.
//!
//! [`Engine::evaluate`] takes the time as an argument, so tests drive it
//! with a paused tokio clock and nothing here sleeps.
//!
//! The rules are data read from `alert-rules.toml` ([`file`]), which also
//! renders Prometheus' copy ([`prometheus`]).

pub mod file;
pub mod prometheus;
pub mod reports;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// What a rule looks at (`alert-rules.toml` names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
pub enum Signal {
    /// p95 latency of a service's calls, milliseconds (5-minute window).
    #[serde(rename = "latency_p95_ms")]
    LatencyP95Ms,
    /// Server-fault calls / all calls (5-minute window).
    #[serde(rename = "error_rate")]
    ErrorRate,
    /// 1 - server-fault calls / all calls over the last 24 hours.
    #[serde(rename = "availability_24h")]
    Availability24h,
    /// Calls per second over the last 10 minutes / over the 24 hours
    /// before them.
    #[serde(rename = "throughput_ratio")]
    ThroughputRatio,
    /// Cache hits / lookups for one cache kind (5-minute window).
    #[serde(rename = "cache_hit_rate")]
    CacheHitRate,
    /// Process CPU, fraction of one core.
    #[serde(rename = "cpu")]
    Cpu,
    /// Resident memory / memory limit.
    #[serde(rename = "memory")]
    Memory,
    /// The database's volume: used / size.
    #[serde(rename = "disk_used_ratio")]
    DiskUsedRatio,
    /// Database operations slower than 1 s, per minute, all services
    /// together (5-minute window).
    #[serde(rename = "db_slow_ops_per_min")]
    DbSlowOpsPerMin,
}

impl Signal {
    /// The labels `select` may name: what its series carry both here and
    /// in Prometheus' copy (memory and disk come from the kubelet there,
    /// labelled by pod and volume, so they cannot be selected).
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            Signal::CacheHitRate => &["kind"],
            Signal::Cpu => &["service", "instance"],
            Signal::Memory | Signal::DiskUsedRatio | Signal::DbSlowOpsPerMin => &[],
            _ => &["service"],
        }
    }

    /// The range a threshold must be in.
    pub fn range(self) -> (f64, f64) {
        match self {
            Signal::ErrorRate
            | Signal::Availability24h
            | Signal::CacheHitRate
            | Signal::Memory
            | Signal::DiskUsedRatio => (0.0, 1.0),
            _ => (0.0, f64::MAX),
        }
    }
}

/// How the observed value compares with the threshold to breach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// Breach when above.
    Above,
    /// Breach when below.
    Below,
}

/// Severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// A remediation ran or a hint.
    Info,
    /// Soon.
    Warning,
    /// Now.
    Critical,
}

impl Severity {
    /// Its name in the rules file and Prometheus' `severity` label.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What the monitoring service does itself when a rule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Remediation {
    /// Ask recommendation to warm its caches.
    #[serde(rename = "warm_caches")]
    WarmCaches,
}

/// One rule at one severity (a tiered rule in the file is one of these
/// per tier).
#[derive(Debug, Clone)]
pub struct Rule {
    /// Name ("ApiLatencyP95"); with the severity, what identifies it.
    pub name: Arc<str>,
    /// The alert's name in Prometheus' copy.
    pub prometheus: Arc<str>,
    /// What is measured, for people ("the public API's p95 latency").
    pub summary: Arc<str>,
    /// Observed signal.
    pub signal: Signal,
    /// Only series with these labels.
    pub select: Labels,
    /// Breach direction.
    pub comparison: Comparison,
    /// Threshold in the signal's unit.
    pub threshold: f64,
    /// How long the breach must hold before firing (zero: at once).
    pub for_: Duration,
    /// Severity.
    pub severity: Severity,
    /// Action taken on firing.
    pub remediation: Option<Remediation>,
}

impl Rule {
    /// True when `value` breaches the rule.
    pub fn breached(&self, value: f64) -> bool {
        match self.comparison {
            Comparison::Above => value > self.threshold,
            Comparison::Below => value < self.threshold,
        }
    }

    /// True when the rule watches the series `labels`.
    pub fn selects(&self, labels: &Labels) -> bool {
        self.select.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// The rules built into the binary (`crates/monitoring/alert-rules.toml`).
pub const DEFAULT_RULES: &str = include_str!("../../alert-rules.toml");

/// The built-in rules.
pub fn default_rules() -> Vec<Rule> {
    file::parse(DEFAULT_RULES).expect("the built-in alert-rules.toml is valid (a test checks it)")
}

/// Cache kinds whose hit rate `LowCacheHitRate` watches: the ones serving
/// repeated lookups (the same products, pages and queries), where warming
/// helps. `alerts.yml` selects the same kinds (checked by a test).
pub const CACHE_HIT_RATE_KINDS: &[&str] = &["product", "recommendations", "search"];

/// Lookups of one cache kind in the 5-minute window below which its hit
/// rate is not observed (no traffic, or a trickle at boot, is no signal).
pub const MIN_CACHE_LOOKUPS: u64 = 100;

/// Labels of a series ("service" => "gateway").
pub type Labels = BTreeMap<String, String>;

/// One observed value.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Which signal.
    pub signal: Signal,
    /// Which series.
    pub labels: Labels,
    /// The value.
    pub value: f64,
}

/// Where an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Breached, not yet for long enough.
    Pending,
    /// Breached for at least the rule's duration.
    Firing,
    /// Was firing; the condition is false again.
    Resolved,
}

/// A change worth telling someone about.
#[derive(Debug, Clone)]
pub struct Transition {
    /// The rule.
    pub rule: Rule,
    /// Its series.
    pub labels: Labels,
    /// New phase (firing or resolved: pending is not announced).
    pub phase: Phase,
    /// Value observed at the change.
    pub value: f64,
    /// When the condition became true.
    pub active_since: Instant,
    /// When it fired (firing and resolved).
    pub fired_at: Option<Instant>,
}

#[derive(Debug, Clone)]
struct State {
    phase: Phase,
    since: Instant,
    fired_at: Option<Instant>,
}

/// A series of a rule: (rule name, severity, labels).
type SeriesKey = (Arc<str>, Severity, Labels);

/// Runs rules over observations.
#[derive(Debug)]
pub struct Engine {
    rules: Vec<Rule>,
    states: HashMap<SeriesKey, State>,
}

impl Engine {
    /// An engine for `rules`.
    pub fn new(rules: Vec<Rule>) -> Self {
        Self {
            rules,
            states: HashMap::new(),
        }
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Puts `rules` in force (a reloaded file). A series keeps its state
    /// when its rule (name and severity) is still there, with the new
    /// threshold and duration from the next evaluation; a firing series
    /// of a rule that is gone resolves (returned), a pending one is
    /// forgotten.
    pub fn set_rules(&mut self, rules: Vec<Rule>) -> Vec<Transition> {
        let old = std::mem::replace(&mut self.rules, rules);
        let mut out = Vec::new();
        let kept: std::collections::HashSet<(Arc<str>, Severity)> = self
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.severity))
            .collect();
        let gone: Vec<SeriesKey> = self
            .states
            .keys()
            .filter(|(n, s, _)| !kept.contains(&(n.clone(), *s)))
            .cloned()
            .collect();
        for key in gone {
            if let Some(mut s) = self.states.remove(&key)
                && s.phase == Phase::Firing
                && let Some(rule) = old.iter().find(|r| r.name == key.0 && r.severity == key.1)
            {
                s.phase = Phase::Resolved;
                out.push(transition(rule, &key.2, &s, f64::NAN));
            }
        }
        out
    }

    /// Series currently pending or firing: (rule, severity, labels, phase).
    pub fn active(&self) -> Vec<(Arc<str>, Severity, Labels, Phase)> {
        self.states
            .iter()
            .map(|((n, sev, l), s)| (n.clone(), *sev, l.clone(), s.phase))
            .collect()
    }

    /// Applies one round of observations at `now`; returns the firing and
    /// resolved transitions. A series not observed this round is treated
    /// as not breaching (its service stopped reporting it, or its traffic
    /// fell below what the signal needs).
    pub fn evaluate(&mut self, now: Instant, observations: &[Observation]) -> Vec<Transition> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for rule in &self.rules {
            for o in observations
                .iter()
                .filter(|o| o.signal == rule.signal && rule.selects(&o.labels))
            {
                let key = (rule.name.clone(), rule.severity, o.labels.clone());
                seen.insert(key.clone());
                let breached = rule.breached(o.value);
                match (self.states.get_mut(&key), breached) {
                    (None, false) => {}
                    (None, true) => {
                        let mut s = State {
                            phase: Phase::Pending,
                            since: now,
                            fired_at: None,
                        };
                        if rule.for_.is_zero() {
                            s.phase = Phase::Firing;
                            s.fired_at = Some(now);
                            out.push(transition(rule, &o.labels, &s, o.value));
                        }
                        self.states.insert(key, s);
                    }
                    (Some(s), true) => {
                        if s.phase == Phase::Pending && now.duration_since(s.since) >= rule.for_ {
                            s.phase = Phase::Firing;
                            s.fired_at = Some(now);
                            out.push(transition(rule, &o.labels, s, o.value));
                        }
                    }
                    (Some(s), false) => {
                        if s.phase == Phase::Firing {
                            s.phase = Phase::Resolved;
                            out.push(transition(rule, &o.labels, s, o.value));
                        }
                        self.states.remove(&key);
                    }
                }
            }
        }
        // Series that disappeared resolve (firing) or are forgotten (pending).
        let gone: Vec<SeriesKey> = self
            .states
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(mut s) = self.states.remove(&key)
                && s.phase == Phase::Firing
                && let Some(rule) = self
                    .rules
                    .iter()
                    .find(|r| r.name == key.0 && r.severity == key.1)
            {
                s.phase = Phase::Resolved;
                out.push(transition(rule, &key.2, &s, f64::NAN));
            }
        }
        out
    }
}

fn transition(rule: &Rule, labels: &Labels, s: &State, value: f64) -> Transition {
    Transition {
        rule: rule.clone(),
        labels: labels.clone(),
        phase: s.phase,
        value,
        active_since: s.since,
        fired_at: s.fired_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(ms: f64) -> Vec<Observation> {
        vec![Observation {
            signal: Signal::LatencyP95Ms,
            labels: [("service".to_string(), "gateway".to_string())].into(),
            value: ms,
        }]
    }

    /// Evaluates every 15 s (the scrape interval) over `minutes` of values.
    async fn run(engine: &mut Engine, values: &[(u64, f64)]) -> Vec<(u64, Phase)> {
        let start = Instant::now();
        let mut out = Vec::new();
        for &(secs, ms) in values {
            tokio::time::sleep_until(start + Duration::from_secs(secs)).await;
            for t in engine.evaluate(Instant::now(), &latency(ms)) {
                out.push((secs, t.phase));
            }
        }
        out
    }

    fn series(from: u64, to: u64, ms: f64) -> Vec<(u64, f64)> {
        (from..to).step_by(15).map(|s| (s, ms)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_breach_shorter_than_its_duration_never_fires() {
        let mut e = Engine::new(default_rules());
        // 4 min 45 s above 300 ms (the warning tier needs 5 min), then fine.
        let mut v = series(0, 285, 900.0);
        v.extend(series(285, 900, 120.0));
        assert!(run(&mut e, &v).await.is_empty());
        assert!(e.active().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_breach_fires_once_and_resolves_once() {
        let mut e = Engine::new(default_rules());
        let mut v = series(0, 600, 900.0);
        v.extend(series(600, 900, 120.0));
        let got = run(&mut e, &v).await;
        assert_eq!(got, vec![(300, Phase::Firing), (600, Phase::Resolved)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rule_without_duration_fires_at_once_and_a_vanished_series_resolves() {
        let mut rule = default_rules()
            .into_iter()
            .find(|r| &*r.name == "LowCacheHitRate")
            .unwrap();
        rule.for_ = Duration::ZERO;
        let mut e = Engine::new(vec![rule]);
        let hit = |v: f64| Observation {
            signal: Signal::CacheHitRate,
            labels: [("kind".to_string(), "recommendations".to_string())].into(),
            value: v,
        };
        let t = e.evaluate(Instant::now(), &[hit(0.5)]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].phase, Phase::Firing);
        assert_eq!(t[0].rule.remediation, Some(Remediation::WarmCaches));
        assert!(e.evaluate(Instant::now(), &[hit(0.6)]).is_empty());
        let t = e.evaluate(Instant::now(), &[]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].phase, Phase::Resolved);
    }
}
