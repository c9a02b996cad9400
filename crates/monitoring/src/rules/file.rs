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
    #[serde(rename = "channel", default)]
    channels: Vec<Spanned<ChannelDef>>,
    route: Option<Spanned<RouteDef>>,
    escalation: Option<Spanned<EscalationDef>>,
    #[serde(rename = "report", default)]
    reports: Vec<Spanned<super::reports::ReportDef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelDef {
    name: Spanned<String>,
    kind: ChannelKindName,
    url_env: Option<String>,
    url: Option<String>,
    routing_key_env: Option<String>,
    smtp_env: Option<String>,
    from: Option<String>,
    to: Option<Vec<String>>,
    to_env: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ChannelKindName {
    Slack,
    Pagerduty,
    Email,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RouteDef {
    #[serde(default)]
    info: Vec<String>,
    #[serde(default)]
    warning: Vec<String>,
    #[serde(default)]
    critical: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EscalationDef {
    after: Spanned<String>,
    severities: Vec<String>,
    to: Vec<String>,
}

/// A channel as the file describes it (secrets are variable names).
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelSpec {
    /// A Slack-compatible webhook; the URL is in the variable.
    Slack {
        /// Variable holding the URL.
        url_env: String,
    },
    /// PagerDuty Events API v2 (or a compatible service at `url`).
    PagerDuty {
        /// The events endpoint.
        url: String,
        /// Variable holding the routing key.
        routing_key_env: String,
    },
    /// Email over SMTP.
    Email {
        /// Variable holding the SMTP URL (with credentials).
        smtp_env: String,
        /// Sender address.
        from: String,
        /// Recipients, or the variable holding them (comma-separated).
        to: Result<Vec<String>, String>,
    },
}

/// When an unacknowledged alert is escalated, and to whom.
#[derive(Debug, Clone, PartialEq)]
pub struct Escalation {
    /// How long a firing alert may go unacknowledged.
    pub after: Duration,
    /// Which severities.
    pub severities: Vec<Severity>,
    /// Channels it goes to.
    pub to: Vec<String>,
}

/// Everything the file says: rules, channels, routes, escalation.
#[derive(Debug, Clone, Default)]
pub struct Alerting {
    /// Every tier of every rule.
    pub rules: Vec<Rule>,
    /// Channels by name, in file order.
    pub channels: Vec<(String, ChannelSpec)>,
    /// Channel names per severity.
    pub routes: BTreeMap<Severity, Vec<String>>,
    /// The escalation policy, if any.
    pub escalation: Option<Escalation>,
    /// Scheduled reports.
    pub reports: Vec<super::reports::ReportSpec>,
}

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_EVENTS: &str = "https://events.pagerduty.com/v2/enqueue";

fn env_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn severity_named(n: &str) -> Option<Severity> {
    match n {
        "info" => Some(Severity::Info),
        "warning" => Some(Severity::Warning),
        "critical" => Some(Severity::Critical),
        _ => None,
    }
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

/// `30s`, `5m`, `6h`, `2d` (whole numbers).
pub fn span(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (say 30s, 5m, 1h or 2d)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(format!(
                "{text:?} is not a duration (say 30s, 5m, 1h or 2d)"
            ));
        }
    };
    Ok(Duration::from_secs(secs))
}

/// A rule's or policy's duration: a [`span`] of at most a day.
pub fn duration(text: &str) -> Result<Duration, String> {
    let d = span(text)?;
    if d > Duration::from_secs(24 * 3600) {
        return Err(format!("{text:?} is longer than a day"));
    }
    Ok(d)
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric())
        && n.len() <= 64
}

/// Reads a rules file: every tier of every rule, in file order.
pub fn parse(text: &str) -> Result<Vec<Rule>, RulesError> {
    parse_alerting(text).map(|a| a.rules)
}

/// Reads a rules file whole: rules, channels, routes and escalation.
pub fn parse_alerting(text: &str) -> Result<Alerting, RulesError> {
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
    let mut channels: Vec<(String, ChannelSpec)> = Vec::new();
    for c in &file.channels {
        let def = c.get_ref();
        let name = def.name.get_ref().clone();
        let here = |why: String| at(c.span().start, format!("channel {name}: {why}"));
        if !name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
            || name.is_empty()
        {
            return Err(here(
                "a channel's name is letters, digits and dashes".into(),
            ));
        }
        if channels.iter().any(|(n, _)| *n == name) {
            return Err(here("a second channel with this name".into()));
        }
        let env = |field: &str, v: &Option<String>| -> Result<String, RulesError> {
            match v {
                Some(n) if env_name_ok(n) => Ok(n.clone()),
                Some(n) => Err(here(format!(
                    "{field} = {n:?}: an environment variable's name (A-Z, 0-9, _)"
                ))),
                None => Err(here(format!(
                    "needs {field} (the variable holding the secret)"
                ))),
            }
        };
        let extra = |fields: &[(&str, bool)]| -> Result<(), RulesError> {
            match fields.iter().find(|(_, set)| *set) {
                Some((f, _)) => Err(here(format!(
                    "{f} is not a setting of this kind of channel"
                ))),
                None => Ok(()),
            }
        };
        let spec = match def.kind {
            ChannelKindName::Slack => {
                extra(&[
                    ("url", def.url.is_some()),
                    ("routing_key_env", def.routing_key_env.is_some()),
                    ("smtp_env", def.smtp_env.is_some()),
                    ("from", def.from.is_some()),
                    ("to", def.to.is_some() || def.to_env.is_some()),
                ])?;
                ChannelSpec::Slack {
                    url_env: env("url_env", &def.url_env)?,
                }
            }
            ChannelKindName::Pagerduty => {
                extra(&[
                    ("url_env", def.url_env.is_some()),
                    ("smtp_env", def.smtp_env.is_some()),
                    ("from", def.from.is_some()),
                    ("to", def.to.is_some() || def.to_env.is_some()),
                ])?;
                let url = def
                    .url
                    .clone()
                    .unwrap_or_else(|| PAGERDUTY_EVENTS.to_string());
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(here(format!("url = {url:?}: http(s)://host/path")));
                }
                ChannelSpec::PagerDuty {
                    url,
                    routing_key_env: env("routing_key_env", &def.routing_key_env)?,
                }
            }
            ChannelKindName::Email => {
                extra(&[
                    ("url", def.url.is_some()),
                    ("url_env", def.url_env.is_some()),
                    ("routing_key_env", def.routing_key_env.is_some()),
                ])?;
                let from = def
                    .from
                    .clone()
                    .filter(|f| f.contains('@'))
                    .ok_or_else(|| here("needs from = an address".into()))?;
                let to = match (&def.to, &def.to_env) {
                    (Some(list), None)
                        if !list.is_empty() && list.iter().all(|a| a.contains('@')) =>
                    {
                        Ok(list.clone())
                    }
                    (None, Some(_)) => Err(env("to_env", &def.to_env)?),
                    _ => {
                        return Err(here(
                            "needs to = [addresses] or to_env = the variable holding them".into(),
                        ));
                    }
                };
                ChannelSpec::Email {
                    smtp_env: env("smtp_env", &def.smtp_env)?,
                    from,
                    to,
                }
            }
        };
        channels.push((name, spec));
    }
    let known = |n: &String| channels.iter().any(|(c, _)| c == n);
    let mut routes = BTreeMap::new();
    if let Some(r) = &file.route {
        for (sev, names) in [
            (Severity::Info, &r.get_ref().info),
            (Severity::Warning, &r.get_ref().warning),
            (Severity::Critical, &r.get_ref().critical),
        ] {
            if let Some(n) = names.iter().find(|n| !known(n)) {
                return Err(at(
                    r.span().start,
                    format!("route {}: no channel named {n:?}", sev.name()),
                ));
            }
            routes.insert(sev, names.clone());
        }
    }
    let escalation = match &file.escalation {
        None => None,
        Some(e) => {
            let def = e.get_ref();
            let here = |why: String| at(e.span().start, format!("escalation: {why}"));
            let after = duration(def.after.get_ref()).map_err(|w| at(def.after.span().start, w))?;
            if after.is_zero() {
                return Err(here("after must be longer than 0s".into()));
            }
            let severities = def
                .severities
                .iter()
                .map(|n| {
                    severity_named(n)
                        .ok_or_else(|| here(format!("{n:?} is not info, warning or critical")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(n) = def.to.iter().find(|n| !known(n)) {
                return Err(here(format!("no channel named {n:?}")));
            }
            if def.to.is_empty() || severities.is_empty() {
                return Err(here("needs severities and to (channels)".into()));
            }
            Some(Escalation {
                after,
                severities,
                to: def.to.clone(),
            })
        }
    };
    let reports = super::reports::validate(&file.reports, |n| {
        match channels.iter().find(|(c, _)| c == n) {
            None => Err(format!("no channel named {n:?}")),
            Some((_, ChannelSpec::PagerDuty { .. })) => Err(format!(
                "{n:?} is a pager: reports go to a webhook or email"
            )),
            Some(_) => Ok(()),
        }
    })
    .map_err(|(offset, why)| at(offset, why))?;
    Ok(Alerting {
        rules: out,
        channels,
        routes,
        escalation,
        reports,
    })
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
    pub fn changed(&mut self) -> Option<Result<Alerting, RulesError>> {
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
        let parsed = parse_alerting(&text);
        self.seen = Some(text);
        Some(parsed)
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
