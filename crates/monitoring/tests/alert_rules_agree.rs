//! One set of alert rules: the Rust rules monitoring runs are the source;
//! `alerts.yml` (loaded by compose's Prometheus and the chart's
//! PrometheusRule, the same file) must agree on every name, threshold,
//! duration and selector. A change to one without the other fails here.

use discovery_monitoring::rules::{
    CACHE_HIT_RATE_KINDS, Comparison, MIN_CACHE_LOOKUPS, Signal, prometheus_name, spec_rules,
};
use discovery_monitoring::window::SERVER_FAULTS;

/// `alert name -> (for, expr)` from the file, read as text (no YAML crate
/// for one test): each rule is a `- alert:` line, an `expr:` (inline or a
/// `|` block) and a `for:` line.
fn rules_in(text: &str) -> Vec<(String, String, String)> {
    blocks(text, "- alert: ")
}

/// `record name -> expr` of the file's recording rules.
fn records_in(text: &str) -> Vec<(String, String)> {
    blocks(&text.replace("- alert: ", "- record: -"), "- record: ")
        .into_iter()
        .filter(|(n, _, _)| !n.starts_with('-'))
        .map(|(n, _, e)| (n, e))
        .collect()
}

fn blocks(text: &str, start: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for block in text.split(start).skip(1) {
        let name = block.lines().next().unwrap_or("").trim().to_string();
        let mut expr = String::new();
        let mut duration = String::new();
        let mut in_expr = false;
        for line in block.lines().skip(1) {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix("expr:") {
                in_expr = true;
                expr.push_str(rest.trim().trim_start_matches('|'));
                continue;
            }
            if in_expr
                && (t.starts_with("for:")
                    || t.starts_with("labels:")
                    || t.starts_with("- record:")
                    || t.starts_with("- name:")
                    || t.starts_with("rules:")
                    || t.starts_with('#'))
            {
                in_expr = false;
            }
            if in_expr {
                expr.push(' ');
                expr.push_str(t);
            }
            if let Some(rest) = t.strip_prefix("for:") {
                duration = rest.trim().to_string();
            }
        }
        out.push((name, duration, expr));
    }
    out
}

fn minutes(d: std::time::Duration) -> String {
    format!("{}m", d.as_secs() / 60)
}

#[test]
fn alerts_yml_says_what_the_rust_rules_do() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../helm/discovery/files/alerts.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let yml = rules_in(&text);
    let rules = spec_rules();
    assert_eq!(
        yml.len(),
        rules.len(),
        "one Prometheus rule per Rust rule: {yml:?}"
    );
    for rule in &rules {
        let name = prometheus_name(rule.name).expect("every rule has a Prometheus name");
        let (_, duration, expr) = yml
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("{name} ({}) missing from alerts.yml", rule.name));
        assert_eq!(duration, &minutes(rule.for_), "{name}: duration");
        let threshold = match rule.signal {
            Signal::LatencyP95Ms => rule.threshold / 1000.0,
            _ => rule.threshold,
        };
        let op = match rule.comparison {
            Comparison::Above => ">",
            Comparison::Below => "<",
        };
        assert!(
            expr.contains(&format!("{op} {threshold}")),
            "{name}: expected `{op} {threshold}` in {expr}"
        );
        match rule.signal {
            Signal::ErrorRate => {
                // The alert divides the two recorded series; what they
                // record is the definition checked here.
                assert!(
                    expr.contains("discovery:server_errors:rate5m / discovery:requests:rate5m"),
                    "{name}: not the recorded error rate: {expr}"
                );
                let records = records_in(&text);
                let recorded = |n: &str| {
                    records
                        .iter()
                        .find(|(r, _)| r == n)
                        .map(|(_, e)| e.clone())
                        .unwrap_or_else(|| panic!("alerts.yml records no {n}"))
                };
                let expr = &format!(
                    "({}) / {}",
                    recorded("discovery:server_errors:rate5m"),
                    recorded("discovery:requests:rate5m")
                );
                let codes = format!("code=~\"{}\"", SERVER_FAULTS.join("|"));
                assert!(expr.contains(&codes), "{name}: fault codes differ: {expr}");
                for part in [
                    "caller_deadline_total",
                    "discovery_gateway_shed_total",
                    "[5m]",
                ] {
                    assert!(expr.contains(part), "{name}: lacks {part}: {expr}");
                }
            }
            Signal::CacheHitRate => {
                let kinds = format!("kind=~\"{}\"", CACHE_HIT_RATE_KINDS.join("|"));
                assert!(
                    expr.matches(&kinds).count() >= 3,
                    "{name}: kinds differ: {expr}"
                );
                assert!(
                    expr.contains(&format!(">= {MIN_CACHE_LOOKUPS}")),
                    "{name}: no minimum of {MIN_CACHE_LOOKUPS} lookups: {expr}"
                );
            }
            Signal::Cpu => {
                // The chart's ServiceMonitor and compose's Prometheus both
                // name the job `discovery` (scripts/check-deploy.sh).
                assert!(expr.contains("job=\"discovery\""), "{name}: {expr}");
            }
            Signal::LatencyP95Ms | Signal::Memory => {}
        }
        println!("{} = {name}: {op} {threshold} for {duration}", rule.name);
    }
}

#[test]
fn the_dashboard_error_rate_is_the_recorded_one() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/grafana/dashboards/discovery.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("sum(discovery:server_errors:rate5m) / sum(discovery:requests:rate5m)"),
        "the Grafana error rate divides the recorded series"
    );
    // Nobody spells the server-fault codes again (a panel listing every
    // non-OK code is not an error rate and is fine).
    let faults = format!("code=~\\\"{}", SERVER_FAULTS[0]);
    assert!(
        !text.contains(&faults),
        "a Grafana panel defines server faults itself; use discovery:server_errors:rate5m"
    );
}
