//! The workspace's dependency rules (docs/architecture.md, "Code map"),
//! checked over `cargo metadata`:
//!
//! - the shared crates (`proto`, `kit`, `catalog`, `embed`) know no service: none
//!   depends, in any way, on a service crate, the tools or the launcher;
//! - no service crate depends on another (they ship apart and talk over
//!   gRPC); a dev-dependency only where a benchmark measures two services
//!   together, listed in [`DEV_EXCEPTIONS`] with its reason;
//! - `catalog` is the one home of the product model: sync and
//!   recommendation both use it.

use std::collections::{BTreeMap, BTreeSet};

const SHARED: &[&str] = &[
    "discovery-proto",
    "discovery-kit",
    "discovery-catalog",
    "discovery-embed",
];
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

/// Longest source file outside tests (issue 18: a file that does seven
/// jobs is split by job; a test module lives in its own `tests.rs`).
const MAX_LINES: usize = 800;

fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every source file of every crate's `src/`, test modules (`tests.rs`)
/// left out.
fn crate_sources() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for c in std::fs::read_dir(root.join("crates"))
        .expect("crates/")
        .flatten()
    {
        sources(&c.path().join("src"), &mut files);
    }
    files.retain(|f| f.file_name().is_none_or(|n| n != "tests.rs"));
    files
}

#[test]
fn no_source_file_is_over_800_lines_and_no_lib_rs_holds_handlers() {
    let files = crate_sources();
    assert!(files.len() > 50, "found the sources ({})", files.len());
    let mut long = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("readable source");
        let n = text.lines().count();
        if n > MAX_LINES {
            long.push(format!("{} ({n} lines)", f.display()));
        }
        let is_lib = f.file_name().is_some_and(|n| n == "lib.rs");
        let service = SERVICES.iter().any(|s| {
            f.to_string_lossy().contains(&format!(
                "crates/{}/src",
                s.trim_start_matches("discovery-")
            ))
        });
        assert!(
            !(is_lib && service && text.contains("#[tonic::async_trait]")),
            "{}: gRPC handlers belong in the crate's api module, not lib.rs",
            f.display()
        );
    }
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

#[test]
fn every_variable_the_code_reads_is_documented_and_the_topology_agrees() {
    let vars = crate::variables::all();
    let documented = |name: &str| {
        vars.iter()
            .any(|v| v.name == name || v.name == format!("{name}_FILE"))
    };
    let files = crate_sources();
    let mut missing = BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("readable source");
        for (i, _) in text.match_indices("\"DISCOVERY_") {
            let name: String = text[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            // A prefix being built (`format!("DISCOVERY_{x}_PORT")`) is not a name.
            let whole = text[i + 1 + name.len()..].starts_with('"');
            if whole && !name.ends_with('_') && !documented(&name) {
                missing.insert(format!("{name} ({})", f.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "read but not in any crate's VARIABLES (crate::variables::all, and the README): {missing:?}"
    );
    let default_of = |name: &str| {
        vars.iter()
            .find(|v| v.name == name)
            .map(|v| v.default)
            .unwrap_or_else(|| panic!("{name} undocumented"))
    };
    for s in discovery_proto::topology::ALL {
        assert_eq!(default_of(s.port_var), s.port.to_string(), "{}", s.name);
        assert_eq!(default_of(s.urls_var), s.default_url, "{}", s.name);
    }
}

/// The domain services (the gateway is a byte-level proxy: no proto
/// conversions, and its one collection is the keys' own module).
const DOMAIN_SERVICES: &[&str] = &["face-analysis", "recommendation", "sync", "monitoring"];

/// Every domain service crate has the same five files (docs/architecture.md,
/// "Entry points"), each with its job.
#[test]
fn every_service_has_the_same_layout() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for s in DOMAIN_SERVICES {
        let src = root.join("crates").join(s).join("src");
        for (file, must_hold) in [
            ("config.rs", "pub const VARIABLES"),
            ("config.rs", "pub fn from_env"),
            ("api.rs", "#[tonic::async_trait]"),
            ("convert.rs", "pb::"),
            ("store.rs", "IndexSpec"),
            ("error.rs", "thiserror::Error"),
            ("error.rs", "for Status"),
        ] {
            let text = std::fs::read_to_string(src.join(file))
                .unwrap_or_else(|_| panic!("crates/{s}/src/{file}: every service has one"));
            assert!(
                text.contains(must_hold),
                "crates/{s}/src/{file} does not hold {must_hold:?}"
            );
        }
    }
}

/// Modules of the domain services that still build or read BSON outside
/// a `store.rs`, with what they do. The list may only shrink: move the
/// query or document into the crate's `store.rs` and delete the line.
const BSON_OUTSIDE_STORE: &[(&str, &str)] = &[
    (
        "recommendation/src/impressions/worker.rs",
        "attribution lookups and the rollup flush",
    ),
    (
        "sync/src/ingest.rs",
        "the job's write batches hold documents",
    ),
];

#[test]
fn bson_is_built_in_store_modules_only() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bson = |t: &str| t.contains("doc!") || t.contains("Document") || t.contains("bson::");
    let mut outside = BTreeSet::new();
    for s in DOMAIN_SERVICES {
        let mut files = Vec::new();
        sources(&root.join("crates").join(s).join("src"), &mut files);
        for f in files {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name == "store.rs" || name == "tests.rs" {
                continue;
            }
            let text = std::fs::read_to_string(&f).expect("readable source");
            // Unit tests may build documents to feed the code under test.
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            if bson(code) {
                let rel = f.to_string_lossy();
                let rel = rel.split("crates/").last().unwrap_or_default().to_string();
                outside.insert(rel);
            }
        }
    }
    let allowed: BTreeSet<String> = BSON_OUTSIDE_STORE
        .iter()
        .map(|(f, _)| f.to_string())
        .collect();
    let new: Vec<_> = outside.difference(&allowed).collect();
    assert!(
        new.is_empty(),
        "BSON built outside store.rs in {new:?}: put the document or query in the crate's store.rs"
    );
    let done: Vec<_> = allowed.difference(&outside).collect();
    assert!(
        done.is_empty(),
        "{done:?} no longer build BSON: delete their lines from BSON_OUTSIDE_STORE"
    );
}

/// Modules of the domain services that speak gRPC by their job (a client
/// of another service, or the wire-level fast path): they use the API's
/// types for good, as `api.rs` and `convert.rs` do.
const GRPC_EDGES: &[(&str, &str)] = &[
    (
        "recommendation/src/faces.rs",
        "a client of face-analysis (GetFaceAnalysis)",
    ),
    (
        "recommendation/src/fast.rs",
        "answers a cached Recommend from the request bytes, before any handler",
    ),
    (
        "sync/src/feed.rs",
        "fans catalogue changes out to the recommendation replicas",
    ),
    (
        "monitoring/src/probe.rs",
        "gRPC health checks of every service",
    ),
];

/// Domain modules that still take or build the API's types (tonic, prost,
/// `discovery_proto::v1`), with what they do. The list may only shrink:
/// give the module a domain type, map it in the crate's `convert.rs`, and
/// delete the line.
const PROTO_IN_DOMAIN: &[(&str, &str)] = &[
    (
        "face-analysis/src/store.rs",
        "keeps the result in its API encoding (the same bytes the cache holds)",
    ),
    (
        "recommendation/src/search.rs",
        "takes SearchProductsRequest, builds the facets",
    ),
    (
        "recommendation/src/rank.rs",
        "takes RecommendRequest, builds the ScoreBreakdown",
    ),
    (
        "recommendation/src/rank/filter.rs",
        "compiles the request's ProductFilter",
    ),
    (
        "recommendation/src/store.rs",
        "the session document from SessionContext",
    ),
    (
        "sync/src/store.rs",
        "jobs and dead letters are stored from their API views",
    ),
    (
        "sync/src/ingest.rs",
        "job states are SyncJobState; the typed feed's header",
    ),
    ("monitoring/src/sla.rs", "builds GetSlaReportResponse"),
    (
        "monitoring/src/hub.rs",
        "alerts are the API's Alert; asks recommendation to warm its cache",
    ),
    (
        "monitoring/src/dashboard.rs",
        "renders the reports from their API types",
    ),
    (
        "monitoring/src/store.rs",
        "reads alerts back as the API's Alert",
    ),
    (
        "monitoring/src/notify.rs",
        "formats the API's Alert for webhooks",
    ),
    (
        "monitoring/src/channels.rs",
        "formats the API's Alert for Slack, PagerDuty and email, as notify.rs does for webhooks",
    ),
];

#[test]
fn domain_modules_take_no_api_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let api = |t: &str| {
        ["pb::", "tonic::", "prost::", "discovery_proto::v1"]
            .iter()
            .any(|p| t.contains(p))
    };
    // The adapters: the handlers, the conversions, errors to Status, and
    // the crate root that wires the server.
    let adapter = |rel: &str| {
        rel.contains("/src/api/")
            || ["/api.rs", "/convert.rs", "/error.rs", "/lib.rs", "/main.rs"]
                .iter()
                .any(|e| rel.ends_with(e))
    };
    let mut found = BTreeSet::new();
    for s in DOMAIN_SERVICES {
        let mut files = Vec::new();
        sources(&root.join("crates").join(s).join("src"), &mut files);
        for f in files {
            let rel = f.to_string_lossy();
            let rel = rel.split("crates/").last().unwrap_or_default().to_string();
            if adapter(&rel) || rel.ends_with("/tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&f).expect("readable source");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            if api(code) {
                found.insert(rel);
            }
        }
    }
    let allowed: BTreeSet<String> = GRPC_EDGES
        .iter()
        .chain(PROTO_IN_DOMAIN)
        .map(|(f, _)| f.to_string())
        .collect();
    let new: Vec<_> = found.difference(&allowed).collect();
    assert!(
        new.is_empty(),
        "API types in domain modules {new:?}: take a domain type and map it in the crate's convert.rs"
    );
    let done: Vec<_> = allowed.difference(&found).collect();
    assert!(
        done.is_empty(),
        "{done:?} no longer use API types: delete their lines from PROTO_IN_DOMAIN"
    );
}
