//! Tests of `file.rs`: every mistake refused with its line.

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
fn channels_routes_and_escalation_read_and_refuse_mistakes() {
    let a = parse_alerting(super::super::DEFAULT_RULES).unwrap();
    let names: Vec<&str> = a.channels.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["webhook", "email", "pager"]);
    assert_eq!(a.routes[&Severity::Critical], ["webhook", "email"]);
    let e = a.escalation.unwrap();
    assert_eq!(
        (e.after, e.to.as_slice()),
        (Duration::from_secs(900), ["pager".to_string()].as_slice())
    );
    assert_eq!(e.severities, [Severity::Critical]);
    for (from, to, why) in [
        (
            "critical = [\"webhook\", \"email\"]",
            "critical = [\"webhook\", \"sms\"]",
            "no channel named \"sms\"",
        ),
        ("to = [\"pager\"]", "to = [\"nobody\"]", "no channel named"),
        ("after = \"15m\"", "after = \"0s\"", "longer than 0s"),
        (
            "url_env = \"DISCOVERY_ALERT_WEBHOOK_URL\"",
            "url_env = \"https://hooks.slack.com/x\"",
            "environment variable",
        ),
        ("kind = \"pagerduty\"", "kind = \"sms\"", "unknown variant"),
        (
            "from = \"discovery@localhost\"",
            "from = \"nobody\"",
            "needs from",
        ),
        (
            "severities = [\"critical\"]",
            "severities = [\"urgent\"]",
            "not info, warning or critical",
        ),
    ] {
        let text = super::super::DEFAULT_RULES.replacen(from, to, 1);
        let e = parse_alerting(&text).expect_err(to);
        assert!(e.reason.contains(why), "{to}: {e}");
        assert!(e.line > 100, "{to}: {e}");
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
