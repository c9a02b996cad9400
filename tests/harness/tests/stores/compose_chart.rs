//! Compose and the chart run the same services: this test says where their
//! configurations differ and why. Each side's effective environment is the
//! image's (`Dockerfile` ENV) under what the platform sets: compose's
//! `environment` as `docker-compose config` resolves it; the chart's
//! ConfigMap, Secrets and Deployment env as `helm template` renders them
//! with default values.
//!
//! - A variable only one side sets is fine when its value is the variable's
//!   documented default (what the other side gets by not setting it), or
//!   when it is listed below with the reason.
//! - A variable both set has the same value, except service lists (compose:
//!   `http://service:port`; the chart: `dns://` names of headless Services,
//!   every replica), which must name the same services on the same ports
//!   and paths, and secrets, whose values neither file holds.
//! - A listed difference that no longer differs fails too: the list stays
//!   true.

use std::collections::{BTreeMap, BTreeSet};

use discovery_harness::cluster::{Chart, compose_services};
use discovery_harness::workspace_root;

/// Set by the chart only, and why.
const ONLY_IN_CHART: &[(&str, &str)] = &[
    (
        "DISCOVERY_GATEWAY_REPLICAS",
        "the chart counts gateway replicas from their headless Service; compose runs one (the default)",
    ),
    (
        "DISCOVERY_SHUTDOWN_DELAY",
        "a Service keeps sending new connections to a terminating pod until every node drops its endpoint; compose stops a container nothing balances to",
    ),
    ("POD_NAME", "a Kubernetes pod field, for the trace resource"),
    (
        "POD_NAMESPACE",
        "a Kubernetes pod field, for the trace resource",
    ),
    (
        "OTEL_RESOURCE_ATTRIBUTES",
        "names the pod and namespace in every span; compose's container is the host name (the default instance id)",
    ),
    (
        "DISCOVERY_INTERNAL_SECRET",
        "from a Kubernetes Secret; compose gives the same secret as a file (DISCOVERY_INTERNAL_SECRET_FILE)",
    ),
];

/// Set by compose only, and why.
const ONLY_IN_COMPOSE: &[(&str, &str)] = &[
    (
        "DISCOVERY_DASHBOARD_TOKEN_FILE",
        "compose publishes monitoring's dashboard on the host, where the connection is not loopback; the chart's is reached with kubectl port-forward (loopback)",
    ),
    (
        "DISCOVERY_DASHBOARD_GATEWAY_URL",
        "compose's gateway is http://localhost:50051 on the operator's machine; the chart's public URL is the operator's to give (services.monitoring.dashboardGatewayUrl)",
    ),
    (
        "DISCOVERY_INTERNAL_SECRET_FILE",
        "compose secrets are files; the chart uses a Secret (DISCOVERY_INTERNAL_SECRET)",
    ),
    (
        "DISCOVERY_MONGO_USERNAME",
        "compose's MongoDB has a user; the chart's credentials are in the URI Secret or mongodb.auth.*",
    ),
    (
        "DISCOVERY_MONGO_PASSWORD_FILE",
        "compose's MongoDB password file; the chart: the URI Secret or mongodb.auth.existingSecret",
    ),
    (
        "DISCOVERY_REDIS_URLS",
        "compose runs its own Redis Cluster; the chart sets it when the operator names one (redis.urls)",
    ),
    (
        "DISCOVERY_REDIS_PASSWORD_FILE",
        "compose's Redis password file; the chart: redis.auth.existingSecret",
    ),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "compose runs Jaeger; the chart exports when otlp.endpoint is given",
    ),
];

/// Read by one service only: the chart's one ConfigMap gives them to every
/// pod, compose to that service; compared there only.
const READ_BY: &[(&str, &str)] = &[
    ("DISCOVERY_MONITORING_SCRAPE", "monitoring"),
    ("DISCOVERY_GATEWAY_REPLICAS", "gateway"),
];

/// Whose values differ by design (secrets: neither file holds them).
const SECRET_VALUES: &[&str] = &["DISCOVERY_MONGO_URI"];

/// Variables whose value is a list of service URLs.
fn is_service_list(var: &str) -> bool {
    (var.ends_with("_URLS") && var != "DISCOVERY_REDIS_URLS")
        || var == "DISCOVERY_MONITORING_SCRAPE"
}

/// `http://gateway:50051` and `dns://discovery-gateway-headless.shop.svc:50051`
/// both as `gateway:50051` (with the path, if any).
fn services_named(list: &str) -> BTreeSet<String> {
    list.split(',')
        .map(|u| {
            // Monitoring's own registry, read in-process: the series its
            // /metrics serves.
            if u.trim() == "local" {
                return "monitoring:9090/metrics".to_string();
            }
            let rest = u.trim().split_once("://").map_or(u, |(_, r)| r);
            let (host, tail) = rest.split_once(':').unwrap_or((rest, ""));
            let host = host.split('.').next().unwrap_or(host);
            let host = host
                .strip_prefix("discovery-")
                .unwrap_or(host)
                .trim_end_matches("-headless");
            format!("{host}:{tail}")
        })
        .collect()
}

/// The image's ENV for `service` (the runtime stage's, then its own stage's).
fn image_env(service: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(workspace_root().join("Dockerfile")).expect("Dockerfile");
    let mut stage = String::new();
    let mut envs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let joined = text.replace("\\\n", " ");
    for line in joined.lines() {
        let line = line.trim();
        if let Some(from) = line.strip_prefix("FROM ") {
            stage = from
                .split_once(" AS ")
                .map_or(String::new(), |(_, s)| s.trim().to_string());
        } else if let Some(vars) = line.strip_prefix("ENV ") {
            for kv in vars.split_whitespace() {
                if let Some((k, v)) = kv.split_once('=')
                    && !v.contains("${")
                {
                    envs.entry(stage.clone())
                        .or_default()
                        .insert(k.to_string(), v.to_string());
                }
            }
        }
    }
    let own = if service == "face-analysis" {
        "face-analysis"
    } else {
        "service"
    };
    let mut env = envs.remove("runtime").unwrap_or_default();
    env.extend(envs.remove(own).unwrap_or_default());
    env
}

fn default_of(var: &str) -> Option<&'static str> {
    discovery::variables::all()
        .into_iter()
        .find(|v| v.name == var)
        .map(|v| v.default)
}

#[test]
fn compose_and_the_chart_configure_the_services_alike() {
    let chart = Chart::render("shop", &[]).unwrap_or_else(|e| panic!("{e}"));
    let compose = compose_services().unwrap_or_else(|e| panic!("{e}"));
    let config = chart.config_map();
    let secrets = chart.secret_keys();
    let mut problems = Vec::new();
    let mut explained = BTreeSet::new();
    let deployments = chart.deployments();
    assert_eq!(deployments.len(), 5, "the chart deploys five services");
    for d in &deployments {
        let service = d.service.as_str();
        let mut in_chart = image_env(service);
        in_chart.extend(config.clone());
        for k in &secrets {
            in_chart.insert(k.clone(), "(secret)".into());
        }
        in_chart.extend(d.env.clone());
        for (k, _) in &d.field_env {
            in_chart.insert(k.clone(), "(pod field)".into());
        }
        for k in &d.secret_env {
            in_chart.insert(k.clone(), "(secret)".into());
        }
        let mut in_compose = image_env(service);
        in_compose.extend(
            compose
                .get(service)
                .unwrap_or_else(|| panic!("compose has no {service} service"))
                .clone(),
        );
        let names: BTreeSet<&String> = in_chart.keys().chain(in_compose.keys()).collect();
        for var in names {
            if READ_BY
                .iter()
                .any(|(v, reader)| v == var && *reader != service)
            {
                continue;
            }
            let (c, k) = (in_chart.get(var), in_compose.get(var));
            match (c, k) {
                (Some(v), None) | (None, Some(v)) if default_of(var) == Some(v.as_str()) => {}
                (Some(_), None) => match ONLY_IN_CHART.iter().find(|(n, _)| n == var) {
                    Some((_, why)) => {
                        explained.insert(var.clone());
                        println!("{service:<15} {var}: chart only ({why})");
                    }
                    None => problems.push(format!(
                        "{service}: {var} is set by the chart, not by compose (nor is it the default)"
                    )),
                },
                (None, Some(_)) => match ONLY_IN_COMPOSE.iter().find(|(n, _)| n == var) {
                    Some((_, why)) => {
                        explained.insert(var.clone());
                        println!("{service:<15} {var}: compose only ({why})");
                    }
                    None => problems.push(format!(
                        "{service}: {var} is set by compose, not by the chart (nor is it the default)"
                    )),
                },
                (Some(a), Some(b)) => {
                    if SECRET_VALUES.contains(&var.as_str()) {
                        continue;
                    }
                    let same = if is_service_list(var) {
                        services_named(a) == services_named(b)
                    } else {
                        match (a.parse::<f64>(), b.parse::<f64>()) {
                            (Ok(x), Ok(y)) => x == y,
                            _ => a == b,
                        }
                    };
                    if !same {
                        problems.push(format!(
                            "{service}: {var} is {a:?} in the chart, {b:?} in compose"
                        ));
                    }
                }
                (None, None) => unreachable!(),
            }
        }
        // Both name every service's endpoints alike.
        for var in [
            "DISCOVERY_GATEWAY_URLS",
            "DISCOVERY_FACE_ANALYSIS_URLS",
            "DISCOVERY_RECOMMENDATION_URLS",
            "DISCOVERY_SYNC_URLS",
            "DISCOVERY_MONITORING_URLS",
        ] {
            assert!(
                in_chart.contains_key(var) && in_compose.contains_key(var),
                "{service}: {var} missing on one side"
            );
        }
    }
    for (var, _) in ONLY_IN_CHART.iter().chain(ONLY_IN_COMPOSE) {
        if !explained.contains(*var) {
            problems.push(format!(
                "{var} is listed as a difference but no longer differs"
            ));
        }
    }
    let monitoring = compose.get("monitoring").expect("compose monitoring");
    println!(
        "monitoring scrapes {:?} (compose) and the same services (chart)",
        services_named(&monitoring["DISCOVERY_MONITORING_SCRAPE"])
    );
    assert!(
        problems.is_empty(),
        "compose and the chart differ:\n{}",
        problems.join("\n")
    );
}

#[test]
fn service_lists_compare_by_service_port_and_path() {
    assert_eq!(
        services_named("http://gateway:50051,http://sync:9090/metrics"),
        services_named(
            "dns://discovery-gateway-headless.shop.svc:50051,dns://discovery-sync-headless.shop.svc:9090/metrics"
        )
    );
    assert_eq!(
        services_named("http://monitoring:9090/metrics"),
        services_named("local")
    );
    assert_ne!(
        services_named("http://gateway:50051"),
        services_named("dns://discovery-gateway-headless.shop.svc:50052")
    );
}
