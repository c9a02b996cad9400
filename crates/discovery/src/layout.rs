//! The workspace's dependency rules (docs/architecture.md, "Code map"),
//! checked over `cargo metadata`:
//!
//! - the shared crates (`proto`, `kit`, `catalog`) know no service: none
//!   depends, in any way, on a service crate, the tools or the launcher;
//! - no service crate depends on another (they ship apart and talk over
//!   gRPC); a dev-dependency only where a benchmark measures two services
//!   together, listed in [`DEV_EXCEPTIONS`] with its reason;
//! - `catalog` is the one home of the product model: sync and
//!   recommendation both use it.

use std::collections::{BTreeMap, BTreeSet};

const SHARED: &[&str] = &["discovery-proto", "discovery-kit", "discovery-catalog"];
const SERVICES: &[&str] = &[
    "discovery-gateway",
    "discovery-face-analysis",
    "discovery-recommendation",
    "discovery-sync",
    "discovery-monitoring",
];
/// The load tool, the launcher and the test harness may use anything.
const ABOVE: &[&str] = &["discovery-loadgen", "discovery", "discovery-harness"];
/// (crate, dev-dependency, why).
const DEV_EXCEPTIONS: &[(&str, &str, &str)] = &[(
    "discovery-sync",
    "discovery-recommendation",
    "benches/ingest.rs (c): a product written to the database until a \
     recommendation replica serves it",
)];

/// Workspace crate -> (dependency, kind: "normal", "dev" or "build").
fn workspace_edges() -> BTreeMap<String, BTreeSet<(String, String)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let mut edges = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().unwrap_or_default().to_string();
        let deps: BTreeSet<(String, String)> = p["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| {
                let n = d["name"].as_str()?;
                n.starts_with("discovery").then(|| {
                    let kind = d["kind"].as_str().unwrap_or("normal").to_string();
                    (n.to_string(), kind)
                })
            })
            .collect();
        edges.insert(name, deps);
    }
    edges
}

#[test]
fn every_crate_is_one_of_the_known_kinds() {
    let edges = workspace_edges();
    for name in edges.keys() {
        assert!(
            SHARED.contains(&name.as_str())
                || SERVICES.contains(&name.as_str())
                || ABOVE.contains(&name.as_str()),
            "{name}: a new crate; say in layout.rs (and docs/architecture.md) \
             whether it is shared, a service or a tool"
        );
    }
}

#[test]
fn shared_crates_know_no_service_and_services_not_each_other() {
    let edges = workspace_edges();
    let mut broken = Vec::new();
    for (name, deps) in &edges {
        for (dep, kind) in deps {
            let ok = if SHARED.contains(&name.as_str()) {
                SHARED.contains(&dep.as_str())
            } else if SERVICES.contains(&name.as_str()) {
                SHARED.contains(&dep.as_str())
                    || (kind == "dev"
                        && (dep == "discovery-harness"
                            || DEV_EXCEPTIONS.iter().any(|(c, d, _)| c == name && d == dep)))
            } else {
                true
            };
            if !ok {
                broken.push(format!("{name} -> {dep} ({kind})"));
            }
        }
    }
    assert!(broken.is_empty(), "dependency rules broken: {broken:?}");
    for service in ["discovery-sync", "discovery-recommendation"] {
        assert!(
            edges[service].contains(&("discovery-catalog".into(), "normal".into())),
            "{service} takes the product model from discovery-catalog"
        );
    }
}
