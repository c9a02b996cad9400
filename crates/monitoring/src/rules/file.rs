//! `alert-rules.toml`: reading and checking the rules file.
//!
//! TOML (the `toml` crate) rather than YAML: `serde_yaml` is no longer
//! maintained, and TOML's parser gives every error a position, which is
//! what an operator editing the file needs. Every mistake is refused with
//! the line and the reason; nothing in a refused file is used.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Comparison, Remediation, Rule, Severity, Signal};

/// A refused rules file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct RulesError {
    /// 1-based line of the mistake.
    pub line: usize,
    /// What is wrong, for a person.
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: Spanned<u32>,
    #[serde(rename = "rule", default)]
    rules: Vec<Spanned<RuleDef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    name: Spanned<String>,
    prometheus: Spanned<String>,
    summary: String,
    signal: Signal,
    select: Option<Spanned<BTreeMap<String, String>>>,
    above: Option<Spanned<Tiers>>,
    below: Option<Spanned<Tiers>>,
    #[serde(rename = "for")]
    for_: Spanned<String>,
    remediation: Option<Spanned<Remediation>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tiers {
    info: Option<f64>,
    warning: Option<f64>,
    critical: Option<f64>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// `30s`, `5m`, `1h` (whole numbers; at most a day).
pub fn duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (say 30s, 5m or 1h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?} is not a duration (say 30s, 5m or 1h)")),
    };
    if secs > 24 * 3600 {
        return Err(format!("{text:?} is longer than a day"));
    }
    Ok(Duration::from_secs(secs))
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric())
        && n.len() <= 64
}

/// Reads a rules file: every tier of every rule, in file order.
pub fn parse(text: &str) -> Result<Vec<Rule>, RulesError> {
    let at = |offset: usize, reason: String| RulesError {
        line: line_of(text, offset),
        reason,
    };
    let file: File = toml::from_str(text).map_err(|e| {
        at(
            e.span().map_or(0, |s| s.start),
            e.message().trim().to_string(),
        )
    })?;
    if *file.version.get_ref() != 1 {
        return Err(at(
            file.version.span().start,
            format!(
                "version {} is not one this monitoring reads (1)",
                file.version.get_ref()
            ),
        ));
    }
    if file.rules.is_empty() {
        return Err(at(
            0,
            "no [[rule]]: a file without rules alerts on nothing".into(),
        ));
    }
    let mut out = Vec::new();
    let (mut names, mut prom) = (BTreeSet::new(), BTreeSet::new());
    for spanned in &file.rules {
        let def = spanned.get_ref();
        let name = def.name.get_ref();
        let here =
            |s: &std::ops::Range<usize>, why: String| at(s.start, format!("rule {name}: {why}"));
        if !valid_name(name) {
            return Err(at(
                def.name.span().start,
                format!("{name:?}: a rule's name is letters and digits, starting with a letter"),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(here(
                &def.name.span(),
                "a second rule with this name".into(),
            ));
        }
        let p = def.prometheus.get_ref();
        if !valid_name(p) {
            return Err(here(
                &def.prometheus.span(),
                format!("prometheus = {p:?}: letters and digits, starting with a letter"),
            ));
        }
        if !prom.insert(p.clone()) {
            return Err(here(
                &def.prometheus.span(),
                format!("prometheus = {p:?} is another rule's already"),
            ));
        }
        let select = def.select.as_ref();
        for key in select.iter().flat_map(|s| s.get_ref().keys()) {
            if !def.signal.labels().contains(&key.as_str()) {
                return Err(here(
                    &select.map_or(0..0, |s| s.span()),
                    format!(
                        "select names {key:?}, which {:?} series do not carry (they carry {})",
                        def.signal,
                        def.signal.labels().join(", ")
                    ),
                ));
            }
        }
        let (comparison, tiers) = match (&def.above, &def.below) {
            (Some(t), None) => (Comparison::Above, t),
            (None, Some(t)) => (Comparison::Below, t),
            _ => {
                return Err(here(
                    &spanned.span(),
                    "say either `above` or `below` (one of them) with thresholds per severity"
                        .into(),
                ));
            }
        };
        let levels: Vec<(Severity, f64)> = [
            (Severity::Info, tiers.get_ref().info),
            (Severity::Warning, tiers.get_ref().warning),
            (Severity::Critical, tiers.get_ref().critical),
        ]
        .into_iter()
        .filter_map(|(s, t)| t.map(|t| (s, t)))
        .collect();
        if levels.is_empty() {
            return Err(here(
                &tiers.span(),
                "no threshold: give info, warning or critical".into(),
            ));
        }
        let (lo, hi) = def.signal.range();
        for (sev, t) in &levels {
            if !t.is_finite() || *t < lo || *t > hi {
                return Err(here(
                    &tiers.span(),
                    format!(
                        "{} = {t} is outside what {:?} can be ({lo} to {hi})",
                        sev.name(),
                        def.signal
                    ),
                ));
            }
        }
        for w in levels.windows(2) {
            let ordered = match comparison {
                Comparison::Above => w[0].1 < w[1].1,
                Comparison::Below => w[0].1 > w[1].1,
            };
            if !ordered {
                return Err(here(
                    &tiers.span(),
                    format!(
                        "{} ({}) must be {} than {} ({}): a worse tier is further past the line",
                        w[1].0.name(),
                        w[1].1,
                        if comparison == Comparison::Above {
                            "higher"
                        } else {
                            "lower"
                        },
                        w[0].0.name(),
                        w[0].1
                    ),
                ));
            }
        }
        let for_ = duration(def.for_.get_ref()).map_err(|e| here(&def.for_.span(), e))?;
        let remediation = def.remediation.as_ref().map(|r| *r.get_ref());
        if let Some(r) = &def.remediation
            && def.signal != Signal::CacheHitRate
        {
            return Err(here(
                &r.span(),
                "warm_caches only helps a cache_hit_rate rule".into(),
            ));
        }
        let (name, prometheus, summary): (Arc<str>, Arc<str>, Arc<str>) = (
            name.as_str().into(),
            p.as_str().into(),
            def.summary.as_str().into(),
        );
        for (severity, threshold) in levels {
            out.push(Rule {
                name: name.clone(),
                prometheus: prometheus.clone(),
                summary: summary.clone(),
                signal: def.signal,
                select: select.map(|s| s.get_ref().clone()).unwrap_or_default(),
                comparison,
                threshold,
                for_,
                severity,
                remediation,
            });
        }
    }
    Ok(out)
}

/// The rules in force come from here: the built-in file, or one on disk
/// read again at every evaluation and used when its text changed.
#[derive(Debug)]
pub struct Watched {
    path: Option<std::path::PathBuf>,
    seen: Option<String>,
}

impl Watched {
    /// Rules from `path` (`None`: the built-in ones).
    pub fn new(path: Option<std::path::PathBuf>) -> Self {
        Self { path, seen: None }
    }

    /// Where they come from, for logs.
    pub fn origin(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "built-in".to_string(), |p| p.display().to_string())
    }

    /// The file's rules when its text changed since the last call (the
    /// first call: whatever it holds), or why they are refused; `None`
    /// when nothing changed. A file that cannot be read is refused once
    /// until it can.
    pub fn changed(&mut self) -> Option<Result<Vec<Rule>, RulesError>> {
        let text = match &self.path {
            None => super::DEFAULT_RULES.to_string(),
            Some(p) => match std::fs::read_to_string(p) {
                Ok(t) => t,
                Err(e) => {
                    let marker = format!("\0unreadable: {e}");
                    if self.seen.as_deref() == Some(marker.as_str()) {
                        return None;
                    }
                    self.seen = Some(marker);
                    return Some(Err(RulesError {
                        line: 0,
                        reason: format!("cannot read it: {e}"),
                    }));
                }
            },
        };
        if self.seen.as_deref() == Some(text.as_str()) {
            return None;
        }
        let parsed = parse(&text);
        self.seen = Some(text);
        Some(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_file_reads_with_the_spec_tiers() {
        let rules = parse(super::super::DEFAULT_RULES).expect("valid");
        let tier = |name: &str, sev: Severity| {
            rules
                .iter()
                .find(|r| &*r.name == name && r.severity == sev)
                .map(|r| r.threshold)
        };
        // Seed 000's SLA tiers.
        assert_eq!(tier("ApiLatencyP95", Severity::Warning), Some(300.0));
        assert_eq!(tier("ApiLatencyP95", Severity::Critical), Some(1000.0));
        assert_eq!(
            tier("FaceAnalysisLatencyP95", Severity::Warning),
            Some(1500.0)
        );
        assert_eq!(
            tier("FaceAnalysisLatencyP95", Severity::Critical),
            Some(5000.0)
        );
        assert_eq!(
            tier("RecommendationLatencyP95", Severity::Warning),
            Some(800.0)
        );
        assert_eq!(
            tier("RecommendationLatencyP95", Severity::Critical),
            Some(2000.0)
        );
        assert_eq!(tier("LowAvailability", Severity::Warning), Some(0.999));
        assert_eq!(tier("LowAvailability", Severity::Critical), Some(0.995));
        assert_eq!(tier("LowThroughput", Severity::Warning), Some(0.5));
        assert_eq!(tier("HighDiskUsage", Severity::Warning), Some(0.8));
        let throughput = rules.iter().find(|r| &*r.name == "LowThroughput").unwrap();
        assert_eq!(throughput.for_, Duration::from_secs(600));
    }

    /// The built-in file with `from` replaced by `to`: the error.
    fn broken(from: &str, to: &str) -> RulesError {
        let text = super::super::DEFAULT_RULES;
        assert!(text.contains(from), "{from}");
        parse(&text.replacen(from, to, 1)).expect_err(to)
    }

    #[test]
    fn every_mistake_is_refused_with_its_line_and_reason() {
        let cases = [
            // TOML itself.
            ("for = \"2m\"", "for = \"2m", "for = \"2m", "string"),
            // Unknown fields and signals.
            (
                "for = \"10m\"",
                "for = \"10m\"\nthreshold = 3",
                "threshold = 3",
                "unknown field",
            ),
            (
                "signal = \"cpu\"",
                "signal = \"gpu\"",
                "signal = \"gpu\"",
                "unknown variant",
            ),
            // Tiers out of order, out of range, missing, both directions.
            (
                "above = { warning = 300, critical = 1000 }",
                "above = { warning = 300, critical = 200 }",
                "above = { warning = 300, critical = 200 }",
                "must be higher",
            ),
            (
                "below = { warning = 0.999, critical = 0.995 }",
                "below = { warning = 1.5 }",
                "below = { warning = 1.5 }",
                "outside",
            ),
            (
                "above = { critical = 0.05 }",
                "above = { }",
                "above = { }",
                "no threshold",
            ),
            (
                "above = { critical = 0.85 }",
                "above = { critical = 0.85 }\nbelow = { warning = 0.1 }",
                "name = \"HighMemory\"",
                "either",
            ),
            // Durations, names, selectors, remediations.
            (
                "for = \"5m\"",
                "for = \"5 minutes\"",
                "for = \"5 minutes\"",
                "duration",
            ),
            (
                "for = \"10m\"",
                "for = \"48h\"",
                "for = \"48h\"",
                "longer than a day",
            ),
            (
                "name = \"HighCpu\"",
                "name = \"HighErrorRate\"",
                "prometheus = \"DiscoveryCpuHigh\"",
                "second rule",
            ),
            (
                "select = { service = \"gateway\" }",
                "select = { kind = \"gateway\" }",
                "select = { kind = \"gateway\" }",
                "do not carry",
            ),
            (
                "name = \"Api",
                "name = \"Api Latency",
                "name = \"Api Latency",
                "letters and digits",
            ),
            (
                "signal = \"memory\"",
                "signal = \"memory\"\nremediation  = \"warm_caches\"",
                "remediation  = \"warm_caches\"",
                "only helps",
            ),
            ("version = 1", "version = 2", "version = 2", "version 2"),
        ];
        for (from, to, at, why) in cases {
            let e = broken(from, to);
            assert!(e.reason.contains(why), "{to:?}: {e}");
            let text = super::super::DEFAULT_RULES.replacen(from, to, 1);
            let want = text
                .lines()
                .position(|l| l.contains(at.lines().next().unwrap()))
                .unwrap()
                + 1;
            // The rule's own span starts at its first key for a missing
            // direction; a duplicate name points at the rule's name.
            if why == "second rule" || why == "either" {
                assert!(
                    e.line >= want.saturating_sub(8) && e.line <= want,
                    "{to:?}: {e}"
                );
            } else {
                assert_eq!(e.line, want, "{to:?}: {e}");
            }
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        assert!(duration("5").is_err());
        assert!(duration("m").is_err());
        assert!(duration("-5m").is_err());
    }
}
