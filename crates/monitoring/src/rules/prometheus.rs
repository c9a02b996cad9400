//! Prometheus' copy of the rules: `discovery alerts render` writes
//! `helm/discovery/files/alerts.yml` from `alert-rules.toml`.
//!
//! Each signal is the PromQL that measures what monitoring measures from
//! the same metrics (error rate from the recorded series defined once
//! below; latency from the same histogram; the same traffic minimums), so
//! the two alert on the same thing. Each tier of a rule is one alert, told
//! apart by its `severity` label.

use std::fmt::Write;

use super::{Comparison, Rule, Signal};
use crate::window::SERVER_FAULTS;

/// Calls in 5 minutes below which latency and error rate are not observed.
pub const MIN_CALLS_5M: u64 = 20;
/// Calls in 24 hours below which availability is not observed.
pub const MIN_CALLS_24H: u64 = 100;
/// Baseline calls per second below which throughput is not compared.
pub const MIN_BASELINE_RATE: f64 = 0.1;

/// `{a="b",c="d"}` with `extra` matchers first; empty when there are none.
fn selector(rule: &Rule, extra: &[&str]) -> String {
    let mut parts: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    for (k, v) in &rule.select {
        parts.push(format!(
            "{k}=\"{}\"",
            v.replace('\\', "\\\\").replace('"', "\\\"")
        ));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// The value PromQL and, when the signal needs traffic, its guard.
fn expression(rule: &Rule) -> (String, Option<String>) {
    let sel = selector(rule, &[]);
    let calls_5m = format!(
        "sum by (service) (increase(discovery_rpc_server_requests_total{sel}[5m])) >= {MIN_CALLS_5M}"
    );
    match rule.signal {
        Signal::LatencyP95Ms => (
            format!(
                "histogram_quantile(0.95, sum by (le, service) (rate(discovery_rpc_server_duration_seconds_bucket{sel}[5m]))) * 1000"
            ),
            Some(calls_5m),
        ),
        Signal::ErrorRate => (
            format!("discovery:server_errors:rate5m{sel} / discovery:requests:rate5m{sel}"),
            Some(calls_5m),
        ),
        Signal::Availability24h => (
            format!("1 - discovery:server_errors:rate24h{sel} / discovery:requests:rate24h{sel}"),
            Some(format!(
                "discovery:requests:rate24h{sel} * 86400 >= {MIN_CALLS_24H}"
            )),
        ),
        Signal::ThroughputRatio => (
            format!(
                "sum by (service) (rate(discovery_rpc_server_requests_total{sel}[10m])) / sum by (service) (rate(discovery_rpc_server_requests_total{sel}[1d] offset 10m))"
            ),
            Some(format!(
                "sum by (service) (rate(discovery_rpc_server_requests_total{sel}[1d] offset 10m)) >= {MIN_BASELINE_RATE}"
            )),
        ),
        Signal::CacheHitRate => {
            let kinds = format!("kind=~\"{}\"", super::CACHE_HIT_RATE_KINDS.join("|"));
            let hit = selector(rule, &[&kinds, "result=\"hit\""]);
            let looked = selector(rule, &[&kinds, "result=~\"hit|miss\""]);
            (
                format!(
                    "sum by (kind) (rate(discovery_cache_requests_total{hit}[5m])) / sum by (kind) (rate(discovery_cache_requests_total{looked}[5m]))"
                ),
                Some(format!(
                    "sum by (kind) (increase(discovery_cache_requests_total{looked}[5m])) >= {}",
                    super::MIN_CACHE_LOOKUPS
                )),
            )
        }
        Signal::Cpu => (
            format!(
                "rate(process_cpu_seconds_total{}[5m])",
                selector(rule, &["job=\"discovery\""])
            ),
            None,
        ),
        // Working set against the container limit (kubelet/cAdvisor).
        Signal::Memory => (
            "max by (namespace, pod, container) (container_memory_working_set_bytes{container=~\"gateway|face-analysis|recommendation|sync|monitoring\"}) / max by (namespace, pod, container) (container_spec_memory_limit_bytes > 0)".into(),
            None,
        ),
        // The volumes' fill (kubelet): the database's among them.
        Signal::DiskUsedRatio => (
            "max by (namespace, persistentvolumeclaim) (kubelet_volume_stats_used_bytes / kubelet_volume_stats_capacity_bytes)".into(),
            None,
        ),
        Signal::DbSlowOpsPerMin => (
            "(sum(rate(discovery_db_operation_duration_seconds_count[5m])) - sum(rate(discovery_db_operation_duration_seconds_bucket{le=\"1\"}[5m]))) * 60".into(),
            None,
        ),
    }
}

/// What a series of the signal is called in a summary.
fn who(signal: Signal) -> &'static str {
    match signal {
        Signal::CacheHitRate => "cache {{ $labels.kind }}",
        Signal::Memory => "{{ $labels.pod }}",
        Signal::DiskUsedRatio => "volume {{ $labels.persistentvolumeclaim }}",
        Signal::DbSlowOpsPerMin => "the database",
        _ => "{{ $labels.service }}",
    }
}

fn minutes(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(3600) && s > 0 {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The error rate, defined once: server-fault codes, less the deadlines
/// callers set too short themselves, plus calls the gateway shed; over all
/// calls. Recorded over 5 minutes and 24 hours.
fn recording_rules(out: &mut String) {
    let faults = SERVER_FAULTS.join("|");
    let f = "rate";
    for window in ["5m", "24h"] {
        let _ = write!(
            out,
            r#"      - record: discovery:server_errors:{f}{window}
        expr: |
          sum by (service) ({f}(discovery_rpc_server_requests_total{{code=~"{faults}"}}[{window}]))
          - (sum by (service) ({f}(discovery_rpc_server_caller_deadline_total[{window}])) or sum by (service) ({f}(discovery_rpc_server_requests_total[{window}])) * 0)
          + (sum by (service) ({f}(discovery_gateway_shed_total[{window}])) or sum by (service) ({f}(discovery_rpc_server_requests_total[{window}])) * 0)
      - record: discovery:requests:{f}{window}
        expr: |
          sum by (service) ({f}(discovery_rpc_server_requests_total[{window}]))
"#
        );
    }
}

/// `alerts.yml` for `rules`.
pub fn render(rules: &[Rule]) -> String {
    let mut out = String::from(
        "# Generated from crates/monitoring/alert-rules.toml by `discovery rules render`;\n\
         # do not edit: make test fails when this file is not what the rules say.\n\
         # The chart's PrometheusRule and compose's Prometheus (deploy/prometheus/alerts.yml,\n\
         # a copy checked identical by scripts/check-deploy.sh) load it.\n\
         groups:\n  - name: discovery-error-rate\n    rules:\n",
    );
    recording_rules(&mut out);
    out.push_str("  - name: discovery-alerts\n    rules:\n");
    for rule in rules {
        let (value, guard) = expression(rule);
        let op = match rule.comparison {
            Comparison::Above => ">",
            Comparison::Below => "<",
        };
        let _ = writeln!(out, "      - alert: {}", rule.prometheus);
        out.push_str("        expr: |\n");
        match guard {
            Some(g) => {
                let _ = writeln!(out, "          ({value}) {op} {}", rule.threshold);
                let _ = writeln!(out, "          and {g}");
            }
            None => {
                let _ = writeln!(out, "          {value} {op} {}", rule.threshold);
            }
        }
        let _ = writeln!(out, "        for: {}", minutes(rule.for_));
        out.push_str("        labels:\n");
        let _ = writeln!(out, "          severity: {}", rule.severity.name());
        let _ = writeln!(out, "          rule: {}", rule.name);
        if rule.remediation.is_some() {
            out.push_str("          remediation: cache-warming\n");
        }
        out.push_str("        annotations:\n");
        let _ = writeln!(
            out,
            "          summary: \"{}: {} {} {} for {}\"",
            who(rule.signal),
            rule.summary.replace('"', "'"),
            if op == ">" { "above" } else { "below" },
            rule.threshold,
            minutes(rule.for_)
        );
    }
    out
}
