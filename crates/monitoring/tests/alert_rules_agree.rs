//! One set of alert rules: `crates/monitoring/alert-rules.toml` is the
//! source; monitoring runs it, and `alerts.yml` (loaded by compose's
//! Prometheus and the chart's PrometheusRule) is rendered from it. A change
//! to one without the other fails here.

use discovery_monitoring::rules::{DEFAULT_RULES, default_rules, prometheus};
use discovery_monitoring::window::SERVER_FAULTS;

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

#[test]
fn alerts_yml_is_rendered_from_the_rules_file() {
    let committed = std::fs::read_to_string(repo("helm/discovery/files/alerts.yml")).unwrap();
    let rendered = prometheus::render(&default_rules());
    assert!(
        committed == rendered,
        "helm/discovery/files/alerts.yml is not what crates/monitoring/alert-rules.toml says: \
         run `cargo run -p discovery -- rules render > helm/discovery/files/alerts.yml` \
         (and copy it to deploy/prometheus/alerts.yml)"
    );
    // Every tier of every rule is an alert there, with its threshold,
    // duration and severity.
    for rule in default_rules() {
        let at = rendered
            .split("      - alert: ")
            .skip(1)
            .find(|b| {
                b.starts_with(&format!("{}\n", rule.prometheus))
                    && b.contains(&format!("severity: {}", rule.severity.name()))
            })
            .unwrap_or_else(|| panic!("{} {:?} not rendered", rule.name, rule.severity));
        assert!(at.contains(&format!(" {}\n", rule.threshold)), "{at}");
        assert!(at.contains("        for: "), "{at}");
    }
    // The error rate's one definition is what the recorded series record.
    let codes = format!("code=~\"{}\"", SERVER_FAULTS.join("|"));
    for window in ["5m", "24h"] {
        let rec = format!("- record: discovery:server_errors:rate{window}");
        let block = rendered
            .split(&rec)
            .nth(1)
            .expect("recorded")
            .split("- record:")
            .next()
            .unwrap();
        assert!(block.contains(&codes), "{block}");
        assert!(
            block.contains("caller_deadline_total")
                && block.contains("discovery_gateway_shed_total")
        );
    }
}

#[test]
fn the_charts_rules_file_is_the_built_in_one() {
    let chart = std::fs::read_to_string(repo("helm/discovery/files/alert-rules.toml")).unwrap();
    assert!(
        chart == DEFAULT_RULES,
        "helm/discovery/files/alert-rules.toml differs from crates/monitoring/alert-rules.toml: copy it"
    );
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
