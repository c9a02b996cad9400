//! Every rule kind and tier of the built-in rules, on a paused clock: the
//! metrics a service exposes go into the history as scrapes would put them,
//! `sla::observations` measures them as monitoring does, and the engine
//! fires each tier only after its duration, never without traffic. Then the
//! rules file reloaded: a new threshold applies, a bad file is refused and
//! the rules in force stay.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use discovery_monitoring::rules::file::Watched;
use discovery_monitoring::rules::{
    Engine, Observation, Phase, Severity, Signal, Transition, default_rules,
};
use discovery_monitoring::sla;
use discovery_monitoring::window::{History, Key, Snapshot};
use tokio::time::Instant;

fn key(name: &str, labels: &[(&str, &str)]) -> Key {
    Arc::new((
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    ))
}

/// Cumulative counters of one service, as its /metrics shows them.
#[derive(Default, Clone)]
struct Service {
    calls: f64,
    faults: f64,
    /// Calls at or under each latency bound (seconds), cumulative.
    buckets: Vec<(f64, f64)>,
}

impl Service {
    fn new() -> Self {
        Self {
            buckets: [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
                .iter()
                .map(|le| (*le, 0.0))
                .collect(),
            ..Default::default()
        }
    }

    /// `n` calls taking `secs` each, `faults` of them server faults.
    fn serve(&mut self, n: f64, secs: f64, faults: f64) {
        self.calls += n;
        self.faults += faults;
        for (le, c) in &mut self.buckets {
            if secs <= *le {
                *c += n;
            }
        }
    }

    fn series(&self, name: &str, out: &mut HashMap<Key, f64>) {
        let svc = [("service", name)];
        let method = "/discovery.v1.Discovery/Recommend";
        out.insert(
            key(
                "discovery_rpc_server_requests_total",
                &[("service", name), ("method", method), ("code", "OK")],
            ),
            self.calls - self.faults,
        );
        out.insert(
            key(
                "discovery_rpc_server_requests_total",
                &[
                    ("service", name),
                    ("method", method),
                    ("code", "UNAVAILABLE"),
                ],
            ),
            self.faults,
        );
        for (le, c) in &self.buckets {
            let le = le.to_string();
            out.insert(
                key(
                    "discovery_rpc_server_duration_seconds_bucket",
                    &[svc[0], ("method", method), ("le", &le)],
                ),
                *c,
            );
        }
        out.insert(
            key(
                "discovery_rpc_server_duration_seconds_bucket",
                &[svc[0], ("method", method), ("le", "+Inf")],
            ),
            self.calls,
        );
    }
}

/// A scenario: services served as `each` says every 10 s for `secs`,
/// evaluated against the built-in rules; the transitions with the time.
struct Run {
    history: History,
    engine: Engine,
    start: Instant,
    gateway: Service,
    db: (f64, f64),
    out: Vec<(u64, Transition)>,
}

impl Run {
    fn new() -> Self {
        Self {
            history: History::default(),
            engine: Engine::new(default_rules()),
            start: Instant::now(),
            gateway: Service::new(),
            db: (0.0, 0.0),
            out: Vec::new(),
        }
    }

    /// Every 10 s for `secs`: `f` serves (or not), then a scrape and an
    /// evaluation, with `extra` observations (what monitoring adds itself).
    async fn during(
        &mut self,
        secs: u64,
        mut f: impl FnMut(&mut Service, &mut (f64, f64)),
        extra: &[Observation],
    ) {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_secs(10)).await;
            f(&mut self.gateway, &mut self.db);
            let mut values = HashMap::new();
            self.gateway.series("gateway", &mut values);
            values.insert(
                key("discovery_db_operation_duration_seconds_count", &[]),
                self.db.0,
            );
            values.insert(
                key(
                    "discovery_db_operation_duration_seconds_bucket",
                    &[("le", "1")],
                ),
                self.db.1,
            );
            let now = Instant::now();
            self.history.push(Snapshot { at: now, values });
            let mut obs = sla::observations(&self.history);
            obs.extend(extra.iter().cloned());
            for t in self.engine.evaluate(now, &obs) {
                self.out.push((now.duration_since(self.start).as_secs(), t));
            }
        }
    }

    /// (rule, severity, phase) of what happened, in order.
    fn what(&self) -> Vec<(String, Severity, Phase)> {
        self.out
            .iter()
            .map(|(_, t)| (t.rule.name.to_string(), t.rule.severity, t.phase))
            .collect()
    }

    fn fired(&self, rule: &str) -> Vec<(u64, Severity)> {
        self.out
            .iter()
            .filter(|(_, t)| &*t.rule.name == rule && t.phase == Phase::Firing)
            .map(|(s, t)| (*s, t.rule.severity))
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn api_latency_fires_each_tier_after_five_minutes_and_not_without_traffic() {
    let mut r = Run::new();
    // A call every 20 s at 2 s (15 in 5 minutes: under the 20 needed).
    r.during(900, |g, _| g.serve(0.5, 2.0, 0.0), &[]).await;
    assert!(r.out.is_empty(), "no alert on a trickle: {:?}", r.what());
    // Real traffic at 400 ms: the warning tier (300 ms) only, after 5 min.
    r.during(600, |g, _| g.serve(50.0, 0.4, 0.0), &[]).await;
    let fired = r.fired("ApiLatencyP95");
    assert_eq!(fired.len(), 1, "{:?}", r.what());
    assert_eq!(fired[0].1, Severity::Warning);
    // Its 5 minutes counted from the first breach the window shows.
    assert!((1200..=1260).contains(&fired[0].0), "{fired:?}");
    // At 2 s both tiers: critical fires 5 minutes into it.
    r.during(600, |g, _| g.serve(50.0, 2.0, 0.0), &[]).await;
    let fired = r.fired("ApiLatencyP95");
    assert_eq!(fired.len(), 2, "{:?}", r.what());
    assert_eq!(fired[1].1, Severity::Critical);
    // Fast again: both resolve, once each.
    r.during(600, |g, _| g.serve(50.0, 0.05, 0.0), &[]).await;
    let resolved: Vec<Severity> = r
        .out
        .iter()
        .filter(|(_, t)| t.phase == Phase::Resolved)
        .map(|(_, t)| t.rule.severity)
        .collect();
    assert_eq!(resolved.len(), 2, "{:?}", r.what());
}

#[tokio::test(start_paused = true)]
async fn availability_over_the_day_warns_then_goes_critical() {
    let mut r = Run::new();
    // 0.3 % server faults: below 99.9 % (warning), above 99.5 % (critical).
    r.during(1200, |g, _| g.serve(100.0, 0.05, 0.3), &[]).await;
    let fired = r.fired("LowAvailability");
    assert_eq!(
        fired.iter().map(|f| f.1).collect::<Vec<_>>(),
        [Severity::Warning],
        "{:?}",
        r.what()
    );
    // 5 % faults for a while: the day's availability falls under 99.5 %.
    r.during(1200, |g, _| g.serve(100.0, 0.05, 5.0), &[]).await;
    assert!(
        r.fired("LowAvailability")
            .iter()
            .any(|f| f.1 == Severity::Critical),
        "{:?}",
        r.what()
    );
    // The 5-minute error rate fired too (5 % is its line: above it).
    let mut r2 = Run::new();
    r2.during(600, |g, _| g.serve(100.0, 0.05, 8.0), &[]).await;
    assert_eq!(r2.fired("HighErrorRate").len(), 1, "{:?}", r2.what());
}

#[tokio::test(start_paused = true)]
async fn throughput_falling_to_a_third_of_the_day_before_warns_after_ten_minutes() {
    let mut r = Run::new();
    // An hour and a half at 10 calls/s: the baseline.
    r.during(5400, |g, _| g.serve(100.0, 0.05, 0.0), &[]).await;
    assert!(r.fired("LowThroughput").is_empty());
    // Then 3 calls/s.
    r.during(1800, |g, _| g.serve(30.0, 0.05, 0.0), &[]).await;
    let fired = r.fired("LowThroughput");
    assert_eq!(fired.len(), 1, "{:?}", r.what());
    // The ratio crosses 0.5 within a few minutes of the drop (the 10-minute
    // rate falls gradually), then must hold 10 minutes.
    assert!(
        (5400 + 600..=5400 + 1200).contains(&fired[0].0),
        "{fired:?}"
    );
    // A quiet service has no baseline to fall from: nothing fires.
    let mut quiet = Run::new();
    quiet
        .during(5400, |g, _| g.serve(0.5, 0.05, 0.0), &[])
        .await;
    quiet.during(1800, |_, _| {}, &[]).await;
    assert!(
        quiet.fired("LowThroughput").is_empty(),
        "{:?}",
        quiet.what()
    );
}

#[tokio::test(start_paused = true)]
async fn slow_database_operations_and_a_filling_disk_fire_their_tiers() {
    let mut r = Run::new();
    // 20 operations every 10 s, 2 of them over 1 s: 12 a minute (> 1).
    r.during(
        600,
        |g, db| {
            g.serve(50.0, 0.05, 0.0);
            db.0 += 20.0;
            db.1 += 18.0;
        },
        &[],
    )
    .await;
    assert_eq!(r.fired("SlowDatabaseOperations").len(), 1, "{:?}", r.what());

    let disk = |v: f64| Observation {
        signal: Signal::DiskUsedRatio,
        labels: Default::default(),
        value: v,
    };
    let mut r = Run::new();
    r.during(240, |_, _| {}, &[disk(0.85)]).await;
    assert!(r.fired("HighDiskUsage").is_empty(), "not before 5 minutes");
    r.during(120, |_, _| {}, &[disk(0.85)]).await;
    assert_eq!(
        r.fired("HighDiskUsage"),
        // Pending from the first evaluation (10 s), firing 5 minutes on.
        [(310, Severity::Warning)],
        "{:?}",
        r.what()
    );
    r.during(600, |_, _| {}, &[disk(0.95)]).await;
    assert!(
        r.fired("HighDiskUsage")
            .iter()
            .any(|f| f.1 == Severity::Critical)
    );
}

#[tokio::test(start_paused = true)]
async fn cpu_memory_and_cache_rules_fire_after_their_durations() {
    let labels =
        |k: &str, v: &str| -> BTreeMap<String, String> { [(k.to_string(), v.to_string())].into() };
    for (rule, obs, needs) in [
        (
            "HighCpu",
            Observation {
                signal: Signal::Cpu,
                labels: labels("service", "recommendation"),
                value: 0.95,
            },
            600,
        ),
        (
            "HighMemory",
            Observation {
                signal: Signal::Memory,
                labels: labels("instance", "10.0.0.7:9090"),
                value: 0.9,
            },
            300,
        ),
        (
            "LowCacheHitRate",
            Observation {
                signal: Signal::CacheHitRate,
                labels: labels("kind", "recommendations"),
                value: 0.5,
            },
            300,
        ),
    ] {
        let mut r = Run::new();
        r.during(needs - 20, |_, _| {}, std::slice::from_ref(&obs))
            .await;
        assert!(r.fired(rule).is_empty(), "{rule} before its duration");
        r.during(30, |_, _| {}, std::slice::from_ref(&obs)).await;
        assert_eq!(r.fired(rule).len(), 1, "{rule}: {:?}", r.what());
    }
}

#[tokio::test(start_paused = true)]
async fn a_changed_rules_file_applies_a_bad_one_is_refused_and_a_removed_rule_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alert-rules.toml");
    let built_in = discovery_monitoring::rules::DEFAULT_RULES;
    std::fs::write(&path, built_in).unwrap();
    let mut watched = Watched::new(Some(path.clone()));
    let mut engine = Engine::new(watched.changed().unwrap().unwrap().rules);
    assert!(watched.changed().is_none(), "nothing changed");

    let disk = [Observation {
        signal: Signal::DiskUsedRatio,
        labels: Default::default(),
        value: 0.75,
    }];
    let start = Instant::now();
    let mut fired = Vec::new();
    let tick = |engine: &mut Engine| engine.evaluate(Instant::now(), &disk);
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        fired.extend(tick(&mut engine));
    }
    assert!(fired.is_empty(), "75 % is under the built-in 80 %");

    // The operator lowers the line to 70 %: it applies without a restart.
    std::fs::write(
        &path,
        built_in.replace(
            "above = { warning = 0.80, critical = 0.90 }",
            "above = { warning = 0.70, critical = 0.90 }",
        ),
    )
    .unwrap();
    let new = watched.changed().expect("changed").expect("valid");
    assert!(engine.set_rules(new.rules).is_empty());
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        fired.extend(tick(&mut engine));
    }
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].phase, Phase::Firing);
    assert!(Instant::now().duration_since(start) >= Duration::from_secs(700));

    // A broken file: refused with its line; the rules in force stay.
    std::fs::write(&path, "version = 1\n[[rule]]\nname = \"X\"\n").unwrap();
    let refused = watched.changed().expect("changed").unwrap_err();
    assert_eq!(refused.line, 2, "{refused}");
    assert!(engine.rules().iter().any(|r| &*r.name == "HighDiskUsage"));
    assert!(watched.changed().is_none(), "refused once, not every tick");

    // A file without the rule: its firing alert resolves.
    let without: String = built_in
        .split("[[rule]]")
        .filter(|r| !r.contains("HighDiskUsage"))
        .collect::<Vec<_>>()
        .join("[[rule]]");
    std::fs::write(&path, without).unwrap();
    let gone = engine.set_rules(watched.changed().unwrap().unwrap().rules);
    assert_eq!(gone.len(), 1);
    assert_eq!(
        (&*gone[0].rule.name, gone[0].phase),
        ("HighDiskUsage", Phase::Resolved)
    );
}
