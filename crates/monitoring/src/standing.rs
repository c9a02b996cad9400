//! Where each watched series stands against its rule's tiers right now,
//! and which way it is going: the dashboard's coloured tiles.
//!
//! Fed by the evaluation loop with the rules in force and the same
//! observations the rules see, so a tile is red exactly when the value
//! breaches the critical tier (the alert fires once the breach has lasted
//! the rule's duration). Each series keeps its last hour of values for its
//! trend; a series not observed for [`STALE`] (its traffic stopped) drops
//! off.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::rules::{Comparison, Labels, Observation, Rule, Severity, Signal};
use crate::trends::{self, Trend};

/// Values kept per series for its trend.
pub const KEEP_MS: i64 = 3_600_000;
/// The span a trend is read over.
pub const TREND_MS: i64 = 30 * 60_000;
/// A series not observed for this long is no longer shown.
pub const STALE_MS: i64 = 5 * 60_000;

/// One series against one rule's tiers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Standing {
    /// Rule name ("ApiLatencyP95").
    pub rule: String,
    /// What it measures, for people.
    pub summary: String,
    /// The signal (serialised with its name in the rules file).
    pub signal: Signal,
    /// Which series.
    pub labels: Labels,
    /// `above` or `below`: which side of a threshold is bad.
    pub comparison: &'static str,
    /// The newest value.
    pub value: f64,
    /// Thresholds by tier (`warning` → 300).
    pub tiers: BTreeMap<&'static str, f64>,
    /// The highest tier the value breaches now (`None`: within all).
    pub reached: Option<&'static str>,
    /// Over the last [`TREND_MS`].
    pub trend: Trend,
    /// Whether the trend moves towards the thresholds.
    pub worsening: bool,
}

type SeriesKey = (Arc<str>, Labels);

/// The standings, updated at each evaluation.
#[derive(Debug, Default)]
pub struct Standings {
    series: HashMap<SeriesKey, VecDeque<(i64, f64)>>,
    current: Vec<Standing>,
}

impl Standings {
    /// Records one evaluation's observations against `rules`.
    pub fn record(&mut self, now_ms: i64, rules: &[Rule], observations: &[Observation]) {
        // A rule's tiers share its name.
        let mut by_name: BTreeMap<&str, Vec<&Rule>> = BTreeMap::new();
        for r in rules {
            by_name.entry(&r.name).or_default().push(r);
        }
        let mut current = Vec::new();
        for (name, tiers) in by_name {
            let first = tiers[0];
            for o in observations
                .iter()
                .filter(|o| o.signal == first.signal && first.selects(&o.labels))
            {
                let key: SeriesKey = (first.name.clone(), o.labels.clone());
                let points = self.series.entry(key).or_default();
                points.push_back((now_ms, o.value));
                while points.front().is_some_and(|p| now_ms - p.0 > KEEP_MS) {
                    points.pop_front();
                }
                let recent: Vec<(i64, f64)> = points
                    .iter()
                    .filter(|p| now_ms - p.0 <= TREND_MS)
                    .copied()
                    .collect();
                // Against the nearer of the value and its distance to a
                // threshold: 20 -> 30 ms is a rise, and so is 99.95 % ->
                // 99.9 % availability with a 99.9 % tier.
                let mean = recent.iter().map(|p| p.1).sum::<f64>() / recent.len().max(1) as f64;
                let scale = tiers
                    .iter()
                    .map(|r| (mean - r.threshold).abs())
                    .fold(mean.abs(), f64::min);
                let trend = trends::trend_against(&recent, Some(scale));
                let reached = tiers
                    .iter()
                    .filter(|r| r.breached(o.value))
                    .map(|r| r.severity)
                    .max();
                let worsening = match first.comparison {
                    Comparison::Above => trend.direction == trends::Direction::Rising,
                    Comparison::Below => trend.direction == trends::Direction::Falling,
                };
                current.push(Standing {
                    rule: name.to_string(),
                    summary: first.summary.to_string(),
                    signal: first.signal,
                    labels: o.labels.clone(),
                    comparison: match first.comparison {
                        Comparison::Above => "above",
                        Comparison::Below => "below",
                    },
                    value: o.value,
                    tiers: tiers
                        .iter()
                        .map(|r| (r.severity.name(), r.threshold))
                        .collect(),
                    reached: reached.map(Severity::name),
                    trend,
                    worsening,
                });
            }
        }
        // Series gone quiet, and rules no longer in force, drop off.
        self.series
            .retain(|_, p| p.back().is_some_and(|l| now_ms - l.0 <= STALE_MS));
        let live: std::collections::HashSet<&str> = rules.iter().map(|r| &*r.name).collect();
        self.series.retain(|(rule, _), _| live.contains(&**rule));
        self.current = current;
    }

    /// The latest standings, one per rule and series.
    pub fn current(&self) -> &[Standing] {
        &self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::file::parse;

    const RULES: &str = r#"
version = 1

[[rule]]
name = "ApiLatencyP95"
prometheus = "ApiLatency"
summary = "the API's p95 latency"
signal = "latency_p95_ms"
select = { service = "gateway" }
above = { warning = 300, critical = 1000 }
for = "5m"

[[rule]]
name = "Availability"
prometheus = "Availability"
summary = "availability over 24 h"
signal = "availability_24h"
below = { warning = 0.999, critical = 0.995 }
for = "5m"
"#;

    fn obs(signal: Signal, service: &str, value: f64) -> Observation {
        Observation {
            signal,
            labels: [("service".to_string(), service.to_string())].into(),
            value,
        }
    }

    #[test]
    fn each_series_shows_the_highest_tier_it_breaches_and_its_trend() {
        let rules = parse(RULES).expect("rules");
        let mut s = Standings::default();
        // Latency climbing from 200 to 650 ms over 10 minutes; availability
        // steady above both tiers; another service's latency is not the
        // API rule's.
        for i in 0..11 {
            s.record(
                i * 60_000,
                &rules,
                &[
                    obs(Signal::LatencyP95Ms, "gateway", 200.0 + 45.0 * i as f64),
                    obs(Signal::LatencyP95Ms, "sync", 5000.0),
                    obs(Signal::Availability24h, "gateway", 0.9995),
                ],
            );
        }
        let now = s.current();
        assert_eq!(now.len(), 2, "{now:#?}");
        let api = now.iter().find(|x| x.rule == "ApiLatencyP95").unwrap();
        assert_eq!(api.value, 650.0);
        assert_eq!(api.reached, Some("warning"));
        assert_eq!(api.tiers["critical"], 1000.0);
        // The page formats a value by the signal's name in the rules file.
        assert_eq!(
            serde_json::to_value(api).unwrap()["signal"],
            "latency_p95_ms"
        );
        assert_eq!(api.trend.direction, trends::Direction::Rising);
        assert!(api.worsening, "rising latency is worse");
        let av = now.iter().find(|x| x.rule == "Availability").unwrap();
        assert_eq!(av.reached, None);
        assert_eq!(av.comparison, "below");
        assert!(!av.worsening);
        // Below the critical tier: red.
        s.record(
            11 * 60_000,
            &rules,
            &[obs(Signal::Availability24h, "gateway", 0.99)],
        );
        let av = s
            .current()
            .iter()
            .find(|x| x.rule == "Availability")
            .unwrap();
        assert_eq!(av.reached, Some("critical"));
        assert!(av.worsening, "falling availability is worse");
    }

    #[test]
    fn quiet_series_and_removed_rules_drop_off() {
        let rules = parse(RULES).expect("rules");
        let mut s = Standings::default();
        s.record(0, &rules, &[obs(Signal::LatencyP95Ms, "gateway", 100.0)]);
        assert_eq!(s.current().len(), 1);
        assert_eq!(s.series.len(), 1);
        // No traffic (no observation): not shown; history kept a while.
        s.record(60_000, &rules, &[]);
        assert!(s.current().is_empty());
        assert_eq!(s.series.len(), 1);
        s.record(STALE_MS + 1, &rules, &[]);
        assert!(s.series.is_empty());
        // A rule taken out of the file takes its series with it.
        s.record(0, &rules, &[obs(Signal::LatencyP95Ms, "gateway", 100.0)]);
        s.record(1, &[], &[]);
        assert!(s.series.is_empty());
    }
}
